//! Per-core state and the worker's background tasks: the accept loop, the batcher that hands
//! finished capture records to the sink, the ack router, and the sweeper (time-based capture
//! flush, idle/head timeouts, graceful drain).
//!
//! May depend on: `conn` (spawned per connection), `upstream` (the destination pool), `tls`
//! (settings), `handoff`, `capture::builder`, `stats`.
//! Everything here is owned by one thread (`Rc`, `Cell`, `RefCell`); the only cross-thread
//! edges are the batch queue out and the inbox (acks + returned buffers) in.
//!
//! Invariants: no borrow of a `RefCell` here is held across an `.await`; a record handed to
//! `Emit` reaches the sink in order per connection (one FIFO batch per worker, one FIFO queue);
//! a connection's final record is written only once its earlier records are acknowledged (or
//! the linger bound, drain deadline or shutdown passes), so every loss is named in a record of
//! its connection (`Ctx::finish`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, Canceller};

use crate::capture::builder::{CaptureSettings, FinishedRecord, RecordOut};
use crate::config::{FailurePolicy, SuppressConfig};
use crate::handoff::{Batch, BatchSender, ConnRef, FailKind, Inbox, Outcome, Record, Returned};
use crate::stats::{Counter, RateLimit, WorkerStats};

/// Immutable settings shared by every worker (built once from `Config`).
#[derive(Debug)]
pub struct Settings {
    pub node_id: Arc<str>,
    /// `None` under `--noCapture`.
    pub capture: Option<Arc<CaptureSettings>>,
    pub destination: Arc<crate::upstream::DestinationAddrs>,
    pub suppress: SuppressConfig,
    pub suppress_any: bool,
    pub flush_interval: Duration,
    pub ack_timeout: Duration,
    pub failure_policy: FailurePolicy,
    pub client_idle_timeout: Option<Duration>,
    pub request_head_timeout: Option<Duration>,
    pub request_body_timeout: Option<Duration>,
    pub tcp_keepalive: Option<Duration>,
    pub drain_timeout: Duration,
    /// Per-worker share of `--max-connections`.
    pub max_connections_per_worker: Option<usize>,
    pub max_head_bytes: usize,
    /// `--source-max-initial-line-length` (bytes).
    pub max_request_line_bytes: usize,
    /// `--source-max-header-size` (bytes).
    pub max_header_bytes: usize,
    /// `--setHeader`: the validated rewriter (cloned per connection); `None` when unused.
    pub rewriter: Option<crate::http1::HeadRewriter>,
    /// Client-facing TLS (reloadable); `None` for plain HTTP.
    pub server_tls: Option<Arc<crate::tls::ServerTls>>,
    /// TLS toward an `https://` destination; `None` for `http://`.
    pub destination_tls: Option<crate::tls::DestinationTls>,
    /// `--destinationConnectionPoolSize`: ready destination connections kept per worker.
    pub pool_size: usize,
    /// `--destinationConnectionPoolTimeout`: age after which an unused one is replaced.
    pub pool_timeout: Duration,
}

/// Size of one I/O buffer (bytes), for each direction of a connection. 64 KiB: large enough
/// that a 1 MiB body moves in 16 reads (syscall cost amortised) and a typical search
/// response in one; small enough that a pool of a few hundred stays in L2/L3-friendly sizes.
pub const IO_BUF_BYTES: usize = 64 * 1024;
/// Size of a streaming read buffer (bytes): a direction that keeps filling its 64 KiB buffer
/// (a large body moving) switches to one of these. Measured with 1 MiB `_bulk` POSTs, c=64,
/// `--noCapture` (req/s, one run each, same setup): 64 KiB 830, 256 KiB 1 380, 512 KiB
/// 1 680, 1 MiB 1 760; nginx 1 360–1 480. Larger reads mean fewer wake-ups and larger
/// writes for both peers: the load generator + origin CPU spent 920–1 245 µs per request
/// behind 64 KiB reads, 570 µs behind 1 MiB ones (nginx: 560–575). Kept for streams only:
/// 256 KiB buffers for every read made 64 KiB responses slower (7.0k → 4.0k req/s).
pub const STREAM_BUF_BYTES: usize = 1024 * 1024;
/// Most streaming buffers in use at once per worker (64 MiB); beyond that a stream keeps
/// reading into 64 KiB buffers. Also the most kept idle for reuse, so a steady stream of large
/// bodies on up to this many connections allocates nothing.
pub const STREAM_BUFS_MAX: usize = 64;
/// Most idle I/O buffers a worker keeps for reuse (beyond that they are freed): 512 × 64 KiB
/// = 32 MiB per worker at most.
const IO_POOL_MAX: usize = 512;
/// Most idle record buffers a worker keeps: far above the records in flight between a worker
/// and the sink (a batch per millisecond, acks within a few), so steady state reuses them.
const RECORD_POOL_MAX: usize = 256;
/// Largest record buffer (capacity, bytes) kept in the main pool. A connection's record is
/// handed over at the first exchange boundary past 64 KiB (`conn`'s soft flush), so records of
/// exchanges up to 64 KiB end below 128 KiB, and the builder's doubling takes a 64 KiB buffer
/// to exactly 128 KiB the moment a record crosses 64 KiB. With a 64 KiB cap those buffers
/// were freed and regrown on every such record: perf of 64 KiB responses captured to files
/// showed `finish_grow`'s copy at 4.5 % of the proxy's CPU (and every keep-alive connection
/// of small requests reallocated once per 64 KiB of capture). Records of large bodies grow
/// toward `--maxTrafficBufferSize` (1 MiB); those are kept by the large pool only.
/// 256 × 128 KiB bounds this pool at 32 MiB per worker, reached only if that many records
/// were once in flight together.
const RECORD_BUF_POOLED_MAX_BYTES: usize = 128 * 1024;
/// Most larger record buffers a worker keeps (beyond that they are freed): enough for the
/// large records in flight under a stream of 1 MiB bulk requests (about two per request until
/// acknowledged), so they are not regrown by doubling each time (measured: regrowing cost ~4 %
/// of the worker's CPU on 1 MiB POSTs), while bounding the pool to 8 × 1 MiB.
const RECORD_POOL_LARGE_MAX: usize = 8;
/// Hand a batch over once it holds this many bytes of records (bytes). 256 KiB amortises
/// the queue operation and the sink's write over many records without delaying much.
pub const BATCH_MAX_BYTES: usize = 256 * 1024;
/// Otherwise hand it over within this time (µs), per the design ("about a millisecond").
const BATCH_LINGER: Duration = Duration::from_micros(1000);
/// Sweeper period (ms): granularity of the time-based flush and of timeouts.
const SWEEP_MS: u64 = 100;
/// Connections by which a worker's active count must have fallen from its peak (and to at
/// most half of it) before the sweeper returns freed memory to the OS: 256 connections are
/// ~1 MiB of buffers at the least, and a collection is a walk of the heap, so it runs only
/// after real bursts, not on ordinary churn.
const MEMORY_RETURN_MIN_DROP: usize = 256;
/// Longest a closed connection's final record waits for the acks of its earlier records (ms).
/// Every record is acknowledged within the sink's delivery deadline (Kafka:
/// `runtime::KAFKA_DELIVERY_TIMEOUT`, seconds; files: at once); this is only a safety net
/// against an ack that never comes, far above that so it never cuts a real wait short.
const LINGER_MAX_MS: u64 = 120_000;

/// Drain/stop flags set from outside the worker (main thread on SIGTERM).
#[derive(Debug, Default)]
pub struct Control {
    pub drain: AtomicBool,
    pub abort: AtomicBool,
}

/// Single-waiter local notification (no allocation, no cross-thread use).
#[derive(Default)]
pub struct Signal {
    flag: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    pub fn notify(&self) {
        self.flag.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.flag.replace(false) {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

/// Why a connection was asked to stop from outside its own loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Drain,
    IdleTimeout,
    HeadTimeout,
    /// No byte from the client for `--request-body-timeout` inside a request.
    BodyTimeout,
    Abort,
    /// The other direction ended; this one should finish.
    PeerDone,
}

/// State of one connection shared by its two directions and the worker (sweeper, acks).
pub struct ConnState {
    pub conn: ConnRef,
    pub key: Arc<str>,
    pub capture: RefCell<Option<crate::capture::builder::StreamBuilder>>,
    /// Tick (ms) of the oldest unflushed observation, if any.
    pub unflushed_since: Cell<Option<u64>>,
    pub last_activity: Cell<u64>,
    /// Tick of the last read from the client (for `--request-body-timeout`).
    pub last_client_read: Cell<u64>,
    /// Tick when the current request's first byte arrived while its head is incomplete.
    pub head_started: Cell<Option<u64>>,
    /// The request side is between requests.
    pub req_idle: Cell<bool>,
    /// Forwarded requests whose final response has not completed.
    pub outstanding: Cell<usize>,
    /// Record number a held request waits for, and its outcome once known.
    pub hold: Cell<Option<u32>>,
    pub hold_outcome: Cell<Option<Outcome>>,
    pub hold_waker: Cell<Option<Waker>>,
    pub c2u_cancel: RefCell<Canceller>,
    pub u2c_cancel: RefCell<Canceller>,
    pub c2u_stop: Cell<Option<StopReason>>,
    pub u2c_stop: Cell<Option<StopReason>>,
    /// Records of this connection handed towards the sink whose ack has not come back.
    pub unacked: Cell<u32>,
    /// The connection closed while records were unacknowledged: the close observation's time
    /// and the tick it closed at. Its final record waits until they are resolved (see
    /// [`Ctx::finish`]).
    pub closing: Cell<Option<(crate::capture::encode::Timestamp, u64)>>,
}

impl ConnState {
    /// Stops the client→upstream direction (its in-flight and future cancellable ops).
    pub fn stop_c2u(&self, why: StopReason) {
        if self.c2u_stop.get().is_none() {
            self.c2u_stop.set(Some(why));
        }
        let c = std::mem::take(&mut *self.c2u_cancel.borrow_mut());
        *self.c2u_cancel.borrow_mut() = c.cancel();
    }
    pub fn stop_u2c(&self, why: StopReason) {
        if self.u2c_stop.get().is_none() {
            self.u2c_stop.set(Some(why));
        }
        let c = std::mem::take(&mut *self.u2c_cancel.borrow_mut());
        *self.u2c_cancel.borrow_mut() = c.cancel();
    }
    pub fn c2u_handle(&self) -> monoio::io::CancelHandle {
        self.c2u_cancel.borrow().handle()
    }
    pub fn u2c_handle(&self) -> monoio::io::CancelHandle {
        self.u2c_cancel.borrow().handle()
    }
    pub fn is_exchange_idle(&self) -> bool {
        self.req_idle.get() && self.outstanding.get() == 0 && self.hold.get().is_none()
    }
}

struct Slot {
    generation: u32,
    conn: Option<Rc<ConnState>>,
}

/// Finished records waiting for hand-off, and the pools that make steady state allocation-free.
struct Batcher {
    records: Vec<Record>,
    bytes: usize,
    /// A held request waits on a record in `records`: hand over without lingering.
    urgent: bool,
    /// Batches the sink queue refused (full); retried first, in order.
    pending: VecDeque<Batch>,
    record_bufs: Vec<Vec<u8>>,
    /// Returned record buffers over [`RECORD_BUF_POOLED_MAX_BYTES`], at most
    /// [`RECORD_POOL_LARGE_MAX`].
    record_bufs_large: Vec<Vec<u8>>,
    record_vecs: Vec<Vec<Record>>,
}

/// A worker's streaming buffers ([`STREAM_BUF_BYTES`]): the idle ones, and how many are
/// leased out. At most [`STREAM_BUFS_MAX`] leases at a time, and at most that many kept idle.
#[derive(Default)]
struct StreamBufs {
    idle: RefCell<Vec<Vec<u8>>>,
    leases: Rc<Cell<usize>>,
}

impl StreamBufs {
    /// An idle buffer (or a new one) and its lease, unless [`STREAM_BUFS_MAX`] are leased.
    /// The lease counts one direction as holding a streaming buffer until it is dropped,
    /// wherever the buffer itself ends up (it comes back through `put`).
    fn take(&self) -> Option<(Vec<u8>, StreamLease)> {
        if self.leases.get() >= STREAM_BUFS_MAX {
            return None;
        }
        let b = self
            .idle
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(STREAM_BUF_BYTES));
        self.leases.set(self.leases.get() + 1);
        Some((
            b,
            StreamLease {
                leases: self.leases.clone(),
            },
        ))
    }

    /// Keeps `b` (emptied) for reuse while fewer than [`STREAM_BUFS_MAX`] are idle.
    fn put(&self, mut b: Vec<u8>) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < STREAM_BUFS_MAX {
            b.clear();
            idle.push(b);
        }
    }
}

/// One direction's right to a streaming buffer; gives it back when dropped.
pub struct StreamLease {
    leases: Rc<Cell<usize>>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        self.leases.set(self.leases.get().saturating_sub(1));
    }
}

/// Per-worker context, shared by all tasks of the worker through `Rc`.
pub struct Ctx {
    pub id: u16,
    pub settings: Arc<Settings>,
    pub stats: Arc<WorkerStats>,
    sender: BatchSender,
    inbox: Arc<Inbox>,
    control: Arc<Control>,
    slots: RefCell<Vec<Slot>>,
    free_slots: RefCell<Vec<u32>>,
    batch: RefCell<Batcher>,
    flush_signal: Signal,
    io_pool: RefCell<Vec<Vec<u8>>>,
    stream_bufs: StreamBufs,
    start: Instant,
    tick: Cell<u64>,
    pub draining: Cell<bool>,
    active: Cell<usize>,
    /// Highest `active` since memory was last returned (see `return_memory_after_bursts`).
    active_peak: Cell<usize>,
    /// Connections are being aborted: close without lingering.
    aborting: Cell<bool>,
    conn_seq: Cell<u64>,
    /// Woken when a connection closes (accept loop waits on it at the connection limit) and
    /// when the worker may be done.
    conn_closed: Signal,
    lost_warn: RefCell<RateLimit>,
    drained: Signal,
    accept_cancel: RefCell<Canceller>,
    /// Pre-connected destination connections (empty unless `pool_size` > 0).
    pub pool: crate::upstream::Pool,
}

impl Ctx {
    pub fn new(
        id: u16,
        settings: Arc<Settings>,
        stats: Arc<WorkerStats>,
        sender: BatchSender,
        inbox: Arc<Inbox>,
        control: Arc<Control>,
    ) -> Rc<Ctx> {
        Rc::new(Ctx {
            id,
            settings,
            stats,
            sender,
            inbox,
            control,
            slots: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            batch: RefCell::new(Batcher {
                records: Vec::with_capacity(256),
                bytes: 0,
                urgent: false,
                pending: VecDeque::new(),
                record_bufs: Vec::new(),
                record_bufs_large: Vec::with_capacity(RECORD_POOL_LARGE_MAX),
                record_vecs: Vec::new(),
            }),
            flush_signal: Signal::default(),
            io_pool: RefCell::new(Vec::new()),
            stream_bufs: StreamBufs::default(),
            start: Instant::now(),
            tick: Cell::new(0),
            draining: Cell::new(false),
            active: Cell::new(0),
            active_peak: Cell::new(0),
            aborting: Cell::new(false),
            conn_seq: Cell::new(0),
            conn_closed: Signal::default(),
            lost_warn: RefCell::new(RateLimit::new(Duration::from_secs(10))),
            drained: Signal::default(),
            accept_cancel: RefCell::new(Canceller::new()),
            pool: crate::upstream::Pool::default(),
        })
    }

    /// Coarse monotonic clock (ms since the worker started), updated by the sweeper and on
    /// connection activity; cheap to read.
    pub fn now_ms(&self) -> u64 {
        self.tick.get()
    }

    /// Refreshes the coarse clock (one clock read).
    pub fn refresh_now(&self) -> u64 {
        let t = self.start.elapsed().as_millis() as u64;
        self.tick.set(t);
        t
    }

    pub fn take_io_buf(&self) -> Vec<u8> {
        self.io_pool
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(IO_BUF_BYTES))
    }

    /// Returns a 64 KiB or streaming buffer to its pool (smaller ones are dropped).
    pub fn put_io_buf(&self, mut b: Vec<u8>) {
        if b.capacity() >= STREAM_BUF_BYTES {
            self.stream_bufs.put(b);
            return;
        }
        let mut p = self.io_pool.borrow_mut();
        if p.len() < IO_POOL_MAX && b.capacity() >= IO_BUF_BYTES {
            b.clear();
            p.push(b);
        }
    }

    /// A streaming buffer and its lease, unless [`STREAM_BUFS_MAX`] are leased already (see
    /// [`StreamBufs::take`]).
    pub fn take_stream_buf(&self) -> Option<(Vec<u8>, StreamLease)> {
        self.stream_bufs.take()
    }

    /// Registers a new connection and returns its shared state.
    pub fn register(&self) -> Rc<ConnState> {
        let seq = self.conn_seq.get() + 1;
        self.conn_seq.set(seq);
        let slot = self.free_slots.borrow_mut().pop();
        let mut slots = self.slots.borrow_mut();
        let (slot, generation) = match slot.and_then(|s| slots.get(s as usize).map(|e| (s, e))) {
            Some((s, e)) => (s, e.generation.wrapping_add(1)),
            None => {
                slots.push(Slot {
                    generation: 0,
                    conn: None,
                });
                ((slots.len() - 1) as u32, 0)
            }
        };
        let conn = ConnRef {
            worker: self.id,
            slot,
            generation,
        };
        let key: Arc<str> = Arc::from(connection_id(&self.settings.node_id, self.id, seq).as_str());
        let capture = self
            .settings
            .capture
            .as_ref()
            .map(|s| crate::capture::builder::StreamBuilder::new(key.clone(), s.clone()));
        let now = self.now_ms();
        let st = Rc::new(ConnState {
            conn,
            key,
            capture: RefCell::new(capture),
            unflushed_since: Cell::new(None),
            last_activity: Cell::new(now),
            last_client_read: Cell::new(now),
            head_started: Cell::new(None),
            req_idle: Cell::new(true),
            outstanding: Cell::new(0),
            hold: Cell::new(None),
            hold_outcome: Cell::new(None),
            hold_waker: Cell::new(None),
            c2u_cancel: RefCell::new(Canceller::new()),
            u2c_cancel: RefCell::new(Canceller::new()),
            c2u_stop: Cell::new(None),
            u2c_stop: Cell::new(None),
            unacked: Cell::new(0),
            closing: Cell::new(None),
        });
        if let Some(e) = slots.get_mut(slot as usize) {
            e.generation = generation;
            e.conn = Some(st.clone());
        }
        self.active.set(self.active.get() + 1);
        self.stats.inc(Counter::ConnAccepted);
        st
    }

    /// Ends a connection's capture: writes its final record (with the `close` observation at
    /// `ts`) and releases its slot. When earlier records of the connection are still
    /// unacknowledged, the final record waits for them ("lingers", slot kept) so that a record
    /// lost late — e.g. a Kafka delivery timing out after the client went away — is still
    /// named in a record of its connection: a gap is never silent. Bounded by
    /// [`LINGER_MAX_MS`], the drain deadline and shutdown.
    pub fn finish(&self, st: &ConnState, ts: crate::capture::encode::Timestamp) {
        let capturing = st.capture.borrow().is_some();
        if capturing && st.unacked.get() > 0 && !self.aborting.get() {
            st.closing.set(Some((ts, self.now_ms())));
            self.stats.inc(Counter::FinalRecordWaited);
            self.conn_gone();
            return;
        }
        self.with_capture(st, |b, e| {
            b.close(ts, e);
        });
        self.conn_gone();
        self.release_slot(st);
    }

    /// Writes a lingering connection's final record now and releases its slot.
    fn finish_lingering(&self, st: &ConnState) {
        let Some((ts, _)) = st.closing.take() else {
            return;
        };
        self.stats.inc(Counter::FinalRecordWaitEnded);
        self.with_capture(st, |b, e| {
            b.close(ts, e);
        });
        self.release_slot(st);
        self.conn_closed.notify();
    }

    /// Number of closed connections whose final record waits for acks.
    pub fn lingering(&self) -> usize {
        let waited = self.stats.get(Counter::FinalRecordWaited);
        let ended = self.stats.get(Counter::FinalRecordWaitEnded);
        waited.saturating_sub(ended) as usize
    }

    fn release_slot(&self, st: &ConnState) {
        if let Some(e) = self.slots.borrow_mut().get_mut(st.conn.slot as usize) {
            if e.generation == st.conn.generation {
                e.conn = None;
                self.free_slots.borrow_mut().push(st.conn.slot);
            }
        }
    }

    /// The connection's sockets are gone: it no longer counts as active.
    fn conn_gone(&self) {
        self.active.set(self.active.get().saturating_sub(1));
        self.stats.inc(Counter::ConnClosed);
        self.conn_closed.notify();
    }

    /// Runs `f` with the connection's capture builder and an emitter, if capturing.
    /// Returns `None` when this connection does not capture.
    pub fn with_capture<R>(
        &self,
        st: &ConnState,
        f: impl FnOnce(&mut crate::capture::builder::StreamBuilder, &mut Emit<'_>) -> R,
    ) -> Option<R> {
        let mut cap = st.capture.borrow_mut();
        let b = cap.as_mut()?;
        let mut batch = self.batch.borrow_mut();
        let mut e = Emit {
            b: &mut batch,
            conn: st.conn,
            key: &st.key,
            stats: &self.stats,
            emitted: 0,
        };
        let r = f(b, &mut e);
        let emitted = e.emitted;
        drop(batch);
        st.unacked
            .set(st.unacked.get().saturating_add(emitted as u32));
        if b.has_unflushed() {
            if st.unflushed_since.get().is_none() {
                st.unflushed_since.set(Some(self.now_ms()));
            }
        } else {
            st.unflushed_since.set(None);
        }
        drop(cap);
        if emitted > 0 {
            self.records_added();
        }
        Some(r)
    }

    fn records_added(&self) {
        let full = self.batch.borrow().bytes >= BATCH_MAX_BYTES;
        if full {
            self.hand_over();
        } else {
            self.flush_signal.notify();
        }
    }

    /// Marks the current batch urgent (a held request waits on it) and wakes the flusher.
    pub fn urgent_flush(&self) {
        self.batch.borrow_mut().urgent = true;
        self.flush_signal.notify();
    }

    /// Hands the current batch (and any refused ones) to the sink queue, without blocking.
    fn hand_over(&self) {
        let mut b = self.batch.borrow_mut();
        if !b.records.is_empty() {
            let fresh = b
                .record_vecs
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(256));
            let records = std::mem::replace(&mut b.records, fresh);
            b.bytes = 0;
            b.pending.push_back(Batch {
                worker: self.id,
                records,
            });
        }
        b.urgent = false;
        while let Some(batch) = b.pending.pop_front() {
            if let Err(back) = self.sender.try_send(batch) {
                b.pending.push_front(back);
                break;
            }
        }
    }

    /// True while batches are waiting because the sink queue is full.
    pub fn sink_congested(&self) -> bool {
        !self.batch.borrow().pending.is_empty()
    }

    /// Waits until the sink queue takes our batches again (polling every millisecond).
    pub async fn wait_uncongested(&self) {
        self.stats.inc(Counter::SinkBackpressure);
        while self.sink_congested() {
            monoio::time::sleep(BATCH_LINGER).await;
            self.hand_over();
        }
    }

    /// Waits for the ack of record `number` of `st` (set as `st.hold` by the caller).
    pub async fn wait_hold(&self, st: &ConnState) -> Outcome {
        let fut = poll_fn(|cx| match st.hold_outcome.take() {
            Some(o) => Poll::Ready(o),
            None => {
                st.hold_waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        });
        let r = match monoio::time::timeout(self.settings.ack_timeout, fut).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed(FailKind::Timeout),
        };
        st.hold.set(None);
        st.hold_outcome.set(None);
        st.hold_waker.set(None);
        r
    }

    fn handle_returned(&self, r: &mut Returned) {
        {
            let mut b = self.batch.borrow_mut();
            for buf in r.buffers.drain(..) {
                if buf.capacity() > RECORD_BUF_POOLED_MAX_BYTES {
                    if b.record_bufs_large.len() < RECORD_POOL_LARGE_MAX {
                        b.record_bufs_large.push(buf);
                    }
                } else if b.record_bufs.len() < RECORD_POOL_MAX {
                    b.record_bufs.push(buf);
                }
            }
            for v in r.record_vecs.drain(..) {
                if b.record_vecs.len() < crate::handoff::MAX_RETURNED_RECORD_VECS && v.is_empty() {
                    b.record_vecs.push(v);
                }
            }
        }
        for ack in r.acks.drain(..) {
            let st = {
                let slots = self.slots.borrow();
                slots
                    .get(ack.conn.slot as usize)
                    .filter(|s| s.generation == ack.conn.generation)
                    .and_then(|s| s.conn.clone())
            };
            match ack.outcome {
                Outcome::Committed => self.stats.inc(Counter::RecordsCommitted),
                Outcome::Failed(kind) => {
                    self.stats.inc(Counter::RecordsLost);
                    if let Some(suppressed) = self.lost_warn.borrow_mut().allow() {
                        tracing::warn!(
                            record = ack.number,
                            reason = kind.as_str(),
                            suppressed,
                            "capture record lost"
                        );
                    }
                }
            }
            let Some(st) = st else { continue };
            st.unacked.set(st.unacked.get().saturating_sub(1));
            if let Outcome::Failed(kind) = ack.outcome {
                // Never silent: the connection's next record names the lost one.
                let mut msg = [0u8; 96];
                let text = lost_message(&mut msg, ack.number, kind);
                let ts = crate::capture::encode::Timestamp::now();
                self.with_capture(&st, |b, e| b.connection_exception(ts, text, e));
            }
            if st.hold.get() == Some(ack.number) {
                st.hold_outcome.set(Some(ack.outcome));
                if let Some(w) = st.hold_waker.take() {
                    w.wake();
                }
            }
            if st.unacked.get() == 0 && st.closing.get().is_some() {
                self.finish_lingering(&st);
            }
        }
    }

    /// After a burst of connections has ended, hands this thread's freed allocator pages back
    /// to the OS (`mi_collect`): without it the memory of thousands of closed connections
    /// stayed resident (issue 13). Runs on the sweeper's tick, on this worker's thread.
    fn return_memory_after_bursts(&self) {
        let active = self.active();
        let peak = self.active_peak.get().max(active);
        if peak.saturating_sub(active) >= MEMORY_RETURN_MIN_DROP && active <= peak / 2 {
            // SAFETY: mi_collect has no preconditions; it only walks this thread's heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
            self.active_peak.set(active);
        } else {
            self.active_peak.set(peak);
        }
    }

    /// The sweeper's per-tick work.
    fn sweep(&self) {
        self.return_memory_after_bursts();
        let now = self.refresh_now();
        let s = &self.settings;
        let flush_ms = s.flush_interval.as_millis() as u64;
        let idle_ms = s.client_idle_timeout.map(|d| d.as_millis() as u64);
        let head_ms = s.request_head_timeout.map(|d| d.as_millis() as u64);
        let body_ms = s.request_body_timeout.map(|d| d.as_millis() as u64);
        let draining = self.draining.get();
        let n = self.slots.borrow().len();
        for i in 0..n {
            let st = match self.slots.borrow().get(i).and_then(|s| s.conn.clone()) {
                Some(c) => c,
                None => continue,
            };
            if let Some((_, closed_at)) = st.closing.get() {
                // Lingering: nothing to flush or time out but the linger itself.
                if now.saturating_sub(closed_at) >= LINGER_MAX_MS {
                    self.finish_lingering(&st);
                }
                continue;
            }
            if let Some(since) = st.unflushed_since.get() {
                if now.saturating_sub(since) >= flush_ms {
                    self.with_capture(&st, |b, e| b.flush(e));
                }
            }
            if draining && st.is_exchange_idle() {
                st.stop_c2u(StopReason::Drain);
                continue;
            }
            if let (Some(limit), Some(started)) = (head_ms, st.head_started.get()) {
                if now.saturating_sub(started) >= limit {
                    st.stop_c2u(StopReason::HeadTimeout);
                    continue;
                }
            }
            if let Some(limit) = body_ms {
                // Inside a request (not held: a held request waits on Kafka, not the client).
                if !st.req_idle.get()
                    && st.hold.get().is_none()
                    && now.saturating_sub(st.last_client_read.get()) >= limit
                {
                    st.stop_c2u(StopReason::BodyTimeout);
                    continue;
                }
            }
            if let Some(limit) = idle_ms {
                if st.is_exchange_idle() && now.saturating_sub(st.last_activity.get()) >= limit {
                    st.stop_c2u(StopReason::IdleTimeout);
                }
            }
        }
    }

    fn abort_all(&self) {
        let conns: Vec<Rc<ConnState>> = self
            .slots
            .borrow()
            .iter()
            .filter_map(|s| s.conn.clone())
            .collect();
        self.aborting.set(true);
        for st in conns {
            if st.closing.get().is_some() {
                self.finish_lingering(&st);
                continue;
            }
            st.stop_c2u(StopReason::Abort);
            st.stop_u2c(StopReason::Abort);
        }
    }

    fn begin_drain(&self) {
        if !self.draining.replace(true) {
            let c = std::mem::take(&mut *self.accept_cancel.borrow_mut());
            *self.accept_cancel.borrow_mut() = c.cancel();
            self.sweep();
            self.drained.notify();
        }
    }

    pub fn active(&self) -> usize {
        self.active.get()
    }
}

fn lost_message(buf: &mut [u8; 96], number: u32, kind: FailKind) -> &str {
    use std::io::Write;
    let len = {
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(
            cur,
            "capture record {number} of this connection was lost: {}",
            kind.as_str()
        );
        cur.position() as usize
    };
    std::str::from_utf8(buf.get(..len).unwrap_or(&[])).unwrap_or("capture record lost")
}

/// Connection ids: unique within a node id (the process run). Worker and sequence make them
/// unique; the node id prefix makes them readable in logs next to other nodes' ids.
fn connection_id(node_id: &str, worker: u16, seq: u64) -> String {
    let prefix = node_id.get(..8).unwrap_or(node_id);
    format!("{prefix}-{worker:04x}-{seq:012x}")
}

/// The builder's view of the worker: buffers from the pool, finished records into the batch.
pub struct Emit<'a> {
    b: &'a mut Batcher,
    conn: ConnRef,
    key: &'a Arc<str>,
    stats: &'a WorkerStats,
    emitted: usize,
}

impl RecordOut for Emit<'_> {
    fn take_buffer(&mut self) -> Vec<u8> {
        // A large one first: it is already resident, and the record may well grow.
        self.b
            .record_bufs_large
            .pop()
            .or_else(|| self.b.record_bufs.pop())
            .unwrap_or_default()
    }
    fn emit(&mut self, rec: FinishedRecord) {
        self.stats.inc(Counter::RecordsEmitted);
        self.stats.add(Counter::RecordBytes, rec.value.len() as u64);
        self.b.bytes += rec.value.len();
        self.b.records.push(Record {
            conn: self.conn,
            key: self.key.clone(),
            number: rec.number,
            is_final: rec.is_final,
            value: rec.value,
        });
        self.emitted += 1;
    }
}

/// The flusher: hands the batch over when records wait, after at most `BATCH_LINGER`, or
/// right after the current round of ready tasks when a held request waits on it.
async fn flusher(ctx: Rc<Ctx>) {
    loop {
        ctx.flush_signal.wait().await;
        let urgent = ctx.batch.borrow().urgent;
        if urgent {
            // Let the other ready tasks add their records to this batch first.
            yield_once().await;
        } else {
            monoio::time::sleep(BATCH_LINGER).await;
        }
        ctx.hand_over();
        if ctx.sink_congested() {
            // Retry the refused batches soon.
            ctx.flush_signal.notify();
        }
    }
}

/// Lets every other ready task of this worker run once before continuing.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Reads the wake socket and processes acks, returned buffers and control changes.
async fn ack_router(ctx: Rc<Ctx>, wake: std::os::unix::net::UnixStream) {
    let mut sock = match monoio::net::UnixStream::from_std(wake) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, worker = ctx.id, "cannot register the wake socket");
            return;
        }
    };
    let mut buf = vec![0u8; 64];
    let mut spare = Returned::default();
    loop {
        let (res, b) = sock.read(buf).await;
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while ctx.inbox.take(&mut spare) {
            ctx.handle_returned(&mut spare);
            spare.acks.clear();
        }
        if ctx.inbox.take_control() {
            if ctx.control.abort.load(Ordering::Acquire) {
                ctx.begin_drain();
                ctx.abort_all();
            } else if ctx.control.drain.load(Ordering::Acquire) {
                ctx.begin_drain();
            }
        }
    }
}

async fn sweeper(ctx: Rc<Ctx>) {
    loop {
        monoio::time::sleep(Duration::from_millis(SWEEP_MS)).await;
        ctx.sweep();
        if ctx.draining.get() {
            ctx.drained.notify();
        }
    }
}

/// Pause after a failed accept (ms): at the open-files limit (EMFILE) every accept fails at
/// once, so the loop must not spin; 10 ms keeps a recovered listener prompt.
const ACCEPT_RETRY_MS: u64 = 10;
/// Least time between two "accept failed" warnings of one worker (s); the rest are counted in
/// `acceptErrors_total` (at the open-files limit they came ~90 times a second).
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);

async fn accept_loop(ctx: Rc<Ctx>, listener: monoio::net::TcpListener) {
    let mut warn = crate::stats::RateLimit::new(ACCEPT_WARN_INTERVAL);
    loop {
        if ctx.draining.get() {
            return;
        }
        if let Some(max) = ctx.settings.max_connections_per_worker {
            while ctx.active() >= max && !ctx.draining.get() {
                ctx.conn_closed.wait().await;
            }
        }
        let handle = ctx.accept_cancel.borrow().handle();
        match listener.cancelable_accept(handle).await {
            Ok((stream, peer)) => {
                let c = ctx.clone();
                monoio::spawn(crate::conn::serve(c, stream, peer));
            }
            Err(e) => {
                if ctx.draining.get() {
                    return;
                }
                // EMFILE and friends: back off briefly instead of spinning.
                ctx.stats.inc(Counter::AcceptErrors);
                if let Some(suppressed) = warn.allow() {
                    tracing::warn!(error = %e, worker = ctx.id, suppressed, "accept failed");
                }
                monoio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            }
        }
    }
}

/// Runs the worker until it has drained: spawns the background tasks, accepts, and returns
/// once draining has finished (all connections closed, every record handed to the sink).
pub async fn run(
    ctx: Rc<Ctx>,
    listeners: Vec<std::net::TcpListener>,
    wake: std::os::unix::net::UnixStream,
    ready: impl FnOnce(Result<(), String>),
) {
    let mut ls = Vec::new();
    for l in listeners {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => ls.push(l),
            Err(e) => {
                ready(Err(format!("cannot register listener: {e}")));
                return;
            }
        }
    }
    monoio::spawn(flusher(ctx.clone()));
    monoio::spawn(ack_router(ctx.clone(), wake));
    monoio::spawn(sweeper(ctx.clone()));
    if ctx.settings.pool_size > 0 {
        monoio::spawn(crate::upstream::refill(ctx.clone()));
    }
    for l in ls {
        monoio::spawn(accept_loop(ctx.clone(), l));
    }
    ctx.refresh_now();
    ready(Ok(()));
    // Wait for drain to start, then for the connections to finish (bounded).
    while !ctx.draining.get() {
        ctx.drained.wait().await;
    }
    ctx.pool.clear();
    let deadline = Instant::now() + ctx.settings.drain_timeout;
    let mut aborted = false;
    loop {
        // Closed connections whose final record waits for acks count too: their final
        // record must be written before the last hand-over.
        if ctx.active() == 0 && ctx.lingering() == 0 {
            break;
        }
        if !aborted && Instant::now() >= deadline {
            tracing::warn!(
                worker = ctx.id,
                open = ctx.active(),
                awaiting_acks = ctx.lingering(),
                "drain timeout: closing connections"
            );
            ctx.abort_all();
            aborted = true;
        }
        ctx.drained.wait().await;
    }
    // Every connection wrote its final record; hand everything over.
    ctx.hand_over();
    while ctx.sink_congested() {
        monoio::time::sleep(BATCH_LINGER).await;
        ctx.hand_over();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_buffers_are_leased_up_to_the_limit_and_reused() {
        let bufs = StreamBufs::default();
        let mut held = Vec::new();
        for _ in 0..STREAM_BUFS_MAX {
            let (b, lease) = bufs.take().expect("under the limit");
            assert!(b.capacity() >= STREAM_BUF_BYTES);
            held.push((b, lease));
        }
        assert!(bufs.take().is_none(), "no lease past STREAM_BUFS_MAX");
        // Dropping a lease frees its slot even if the buffer went elsewhere.
        let (b, lease) = held.pop().expect("held");
        drop(lease);
        assert_eq!(bufs.leases.get(), STREAM_BUFS_MAX - 1);
        // A returned buffer is reused (same allocation), emptied.
        let ptr = b.as_ptr();
        let mut b = b;
        b.extend_from_slice(b"data");
        bufs.put(b);
        let (again, _lease) = bufs.take().expect("a lease is free again");
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
        // The idle pool keeps at most STREAM_BUFS_MAX buffers.
        for (b, _) in held.drain(..) {
            bufs.put(b);
        }
        for _ in 0..4 {
            bufs.put(Vec::with_capacity(STREAM_BUF_BYTES));
        }
        assert_eq!(bufs.idle.borrow().len(), STREAM_BUFS_MAX);
    }
}
