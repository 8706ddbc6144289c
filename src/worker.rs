//! Per-core state and the worker's background tasks: the accept loop, the batcher that hands
//! finished capture records to the sink, the ack router, and the sweeper (time-based capture
//! flush, idle/head timeouts, graceful drain).
//!
//! May depend on: `upstream` (the destination pool), `buf` (buffer pools), `signal`, `handoff`,
//! `capture` (the record builder), `http1` and `tls` (settings types), `config`
//! (`FailurePolicy`), `stats`. Not on `conn`: `runtime` passes the connection code in
//! (`run`'s `serve`), so the connection code depends on the worker and not the other way.
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
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::buf::{IoBufs, RecordBufs};
use crate::capture::builder::{CaptureSettings, FinishedRecord, RecordOut, StreamBuilder};
use crate::capture::encode::Timestamp;
use crate::config::FailurePolicy;
use crate::handoff::{Batch, BatchSender, ConnRef, FailKind, Inbox, Outcome, Record, Returned};
use crate::signal::Signal;
use crate::stats::{Counter, RateLimit, WorkerStats};
use crate::upstream::{Destination, Pool};

/// Immutable settings shared by every worker (built once from `Config`). A field set from a
/// flag has that flag's `Config` field name.
#[derive(Debug)]
pub struct Settings {
    pub node_id: Arc<str>,
    /// `None` under `--noCapture`.
    pub capture: Option<Arc<CaptureSettings>>,
    /// `--destinationUri` (resolved), its TLS, and `--tcp-keepalive`: how to connect.
    pub destination: Arc<Destination>,
    pub suppress: crate::http1::SuppressConfig,
    /// `suppress` has at least one rule.
    pub suppress_any: bool,
    pub capture_flush_interval: Duration,
    pub kafka_ack_timeout: Duration,
    pub capture_failure_policy: FailurePolicy,
    pub client_idle_timeout: Option<Duration>,
    pub request_head_timeout: Option<Duration>,
    pub request_body_timeout: Option<Duration>,
    pub tcp_keepalive: Option<Duration>,
    pub drain_timeout: Duration,
    /// Per-worker share of `--max-connections`.
    pub max_connections_per_worker: Option<usize>,
    /// Largest request head (`runtime::MAX_HEAD_BYTES`; no flag).
    pub max_head_bytes: usize,
    /// `--source-max-initial-line-length` (bytes).
    pub source_max_initial_line_length: usize,
    /// `--source-max-header-size` (bytes).
    pub source_max_header_size: usize,
    /// `--setHeader`: the validated rewriter (cloned per connection); `None` when unused.
    pub rewriter: Option<crate::http1::HeadRewriter>,
    /// Client-facing TLS (reloadable); `None` for plain HTTP.
    pub server_tls: Option<Arc<crate::tls::ServerTls>>,
    /// `--destinationConnectionPoolSize`: ready destination connections kept per worker.
    pub destination_pool_size: usize,
    /// `--destinationConnectionPoolTimeout`: age after which an unused one is replaced.
    pub destination_pool_timeout: Duration,
}

use crate::handoff::BATCH_MAX_BYTES;
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

/// How long a drain lets a connection that has not sent a byte yet wait for its first request
/// (ms): a client that connected just before the drain began sends within a round trip; one
/// that stays silent is closed after this (or at `--drain-timeout`).
pub const DRAIN_FIRST_REQUEST_GRACE_MS: u64 = 1000;

/// Drain/stop flags set from outside the worker (main thread on SIGTERM).
#[derive(Debug, Default)]
pub struct Control {
    pub drain: AtomicBool,
    pub abort: AtomicBool,
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
    pub capture: RefCell<Option<StreamBuilder>>,
    /// Tick (ms) of the oldest unflushed observation, if any.
    pub unflushed_since: Cell<Option<u64>>,
    pub last_activity: Cell<u64>,
    /// Tick of the last read from the client (for `--request-body-timeout`).
    pub last_client_read: Cell<u64>,
    /// Tick when the current request's first byte arrived while its head is incomplete.
    pub head_started: Cell<Option<u64>>,
    /// The request side is between requests.
    pub req_idle: Cell<bool>,
    /// The client has sent at least one byte (a drain closes an idle connection at once only
    /// then: a fresh one gets [`DRAIN_FIRST_REQUEST_GRACE_MS`] for its first request).
    pub used: Cell<bool>,
    /// Forwarded requests whose final response has not completed: the length of the
    /// connection's one request queue (the response framer's), published there by `conn` for
    /// the sweeper and the drain.
    pub outstanding: Cell<usize>,
    /// Record number a held request waits for, and its outcome once known.
    pub hold: Cell<Option<u32>>,
    pub hold_outcome: Cell<Option<Outcome>>,
    pub hold_waker: Cell<Option<std::task::Waker>>,
    pub c2u_cancel: RefCell<Canceller>,
    pub u2c_cancel: RefCell<Canceller>,
    pub c2u_stop: Cell<Option<StopReason>>,
    pub u2c_stop: Cell<Option<StopReason>>,
    /// Records of this connection handed towards the sink whose ack has not come back.
    pub unacked: Cell<u32>,
    /// The connection closed while records were unacknowledged: the close observation's time
    /// and the tick it closed at. Its final record waits until they are resolved (see
    /// [`Ctx::finish`]).
    pub closing: Cell<Option<(Timestamp, u64)>>,
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

    /// Whether a drain may close this connection now (tick `now`): between exchanges, and
    /// either it has served (a keep-alive connection between requests) or it has been open
    /// [`DRAIN_FIRST_REQUEST_GRACE_MS`] without a byte. A connection accepted just before the
    /// drain (its request on the way) is served, not closed under a client that cannot tell
    /// a close from a failure.
    pub fn drain_may_close(&self, now: u64) -> bool {
        self.is_exchange_idle()
            && (self.used.get()
                || now.saturating_sub(self.last_activity.get()) >= DRAIN_FIRST_REQUEST_GRACE_MS)
    }
}

struct Slot {
    generation: u32,
    conn: Option<Rc<ConnState>>,
}

/// The connection table: live connections by slot (a reused slot gets a new generation, so an
/// ack for a connection that is gone finds nothing) and the counts the accept loop and the
/// sweeper read.
struct Conns {
    slots: RefCell<Vec<Slot>>,
    free_slots: RefCell<Vec<u32>>,
    /// Connections accepted so far (numbers the connection ids).
    seq: Cell<u64>,
    /// Connections whose sockets are open.
    active: Cell<usize>,
    /// Highest `active` since memory was last returned (see `return_memory_after_bursts`).
    active_peak: Cell<usize>,
    /// Woken when a connection closes (the accept loop waits on it at the connection limit)
    /// and when the worker may be done.
    closed: Signal,
    /// Accept loops running. A drain is complete only once they have all returned: an
    /// accept in flight when the drain began may still complete with a connection (the
    /// listening sockets outlive this process after a handover), which is then served.
    accepting: Cell<usize>,
    /// Spawned connection tasks not yet ended, including those not registered yet (TLS
    /// handshake, or not yet polled): the worker must not end under them.
    serving: Cell<usize>,
}

/// Decrements one of the worker's task counts when dropped (the task ended, however).
struct TaskCount {
    ctx: Rc<Ctx>,
    which: fn(&Conns) -> &Cell<usize>,
}

impl TaskCount {
    fn new(ctx: &Rc<Ctx>, which: fn(&Conns) -> &Cell<usize>) -> TaskCount {
        let c = which(&ctx.conns);
        c.set(c.get() + 1);
        TaskCount {
            ctx: ctx.clone(),
            which,
        }
    }
}

impl Drop for TaskCount {
    fn drop(&mut self) {
        let c = (self.which)(&self.ctx.conns);
        c.set(c.get().saturating_sub(1));
        if self.ctx.draining() {
            self.ctx.drain.drained.notify();
        }
    }
}

/// Finished records waiting for hand-off, and the pools that make steady state allocation-free.
struct Batcher {
    records: Vec<Record>,
    bytes: usize,
    /// A held request waits on a record in `records`: hand over without lingering.
    urgent: bool,
    /// Batches the sink queue refused (full); retried first, in order.
    pending: VecDeque<Batch>,
    record_bufs: RecordBufs,
    record_vecs: Vec<Vec<Record>>,
}

/// Records on their way to the sink: the batch being filled and the queue it goes into.
struct Batching {
    sender: BatchSender,
    batch: RefCell<Batcher>,
    /// Wakes the flusher.
    flush: Signal,
}

/// What comes back from the sink: acks and buffers (through `inbox`), and drain/abort
/// requests (`control`, signalled through `inbox`).
struct Inbound {
    inbox: Arc<Inbox>,
    control: Arc<Control>,
    lost_warn: RefCell<RateLimit>,
}

/// Graceful drain and abort.
struct Drain {
    draining: Cell<bool>,
    /// Connections are being aborted: close without lingering.
    aborting: Cell<bool>,
    /// Woken when draining begins and on each sweep while draining.
    drained: Signal,
    accept_cancel: RefCell<Canceller>,
}

/// Coarse monotonic clock: ms since the worker started, refreshed by the sweeper and on
/// connection activity.
struct Clock {
    start: Instant,
    tick: Cell<u64>,
}

/// Per-worker context, shared by all tasks of the worker through `Rc`: settings and counters,
/// then one part per concern.
pub struct Ctx {
    pub id: u16,
    pub settings: Arc<Settings>,
    pub stats: Arc<WorkerStats>,
    /// Read buffers of the connections' directions.
    pub bufs: IoBufs,
    /// Destination connections (pre-connected ones when `--destinationConnectionPoolSize` > 0).
    pub pool: Rc<Pool>,
    conns: Conns,
    out: Batching,
    input: Inbound,
    drain: Drain,
    clock: Clock,
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
        let pool = Rc::new(Pool::new(
            settings.destination.clone(),
            settings.destination_pool_size,
            settings.destination_pool_timeout,
            stats.clone(),
        ));
        Rc::new(Ctx {
            id,
            settings,
            stats,
            bufs: IoBufs::default(),
            pool,
            conns: Conns {
                slots: RefCell::new(Vec::new()),
                free_slots: RefCell::new(Vec::new()),
                seq: Cell::new(0),
                active: Cell::new(0),
                active_peak: Cell::new(0),
                closed: Signal::default(),
                accepting: Cell::new(0),
                serving: Cell::new(0),
            },
            out: Batching {
                sender,
                batch: RefCell::new(Batcher {
                    records: Vec::with_capacity(256),
                    bytes: 0,
                    urgent: false,
                    pending: VecDeque::new(),
                    record_bufs: RecordBufs::default(),
                    record_vecs: Vec::new(),
                }),
                flush: Signal::default(),
            },
            input: Inbound {
                inbox,
                control,
                lost_warn: RefCell::new(RateLimit::new(Duration::from_secs(10))),
            },
            drain: Drain {
                draining: Cell::new(false),
                aborting: Cell::new(false),
                drained: Signal::default(),
                accept_cancel: RefCell::new(Canceller::new()),
            },
            clock: Clock {
                start: Instant::now(),
                tick: Cell::new(0),
            },
        })
    }

    /// Coarse monotonic clock (ms since the worker started), updated by the sweeper and on
    /// connection activity; cheap to read.
    pub fn now_ms(&self) -> u64 {
        self.clock.tick.get()
    }

    /// Refreshes the coarse clock (one clock read).
    pub fn refresh_now(&self) -> u64 {
        let t = self.clock.start.elapsed().as_millis() as u64;
        self.clock.tick.set(t);
        t
    }

    /// Whether the worker drains (stops accepting; connections end once idle).
    pub fn draining(&self) -> bool {
        self.drain.draining.get()
    }

    /// Registers a new connection and returns its shared state.
    pub fn register(&self) -> Rc<ConnState> {
        let seq = self.conns.seq.get() + 1;
        self.conns.seq.set(seq);
        let slot = self.conns.free_slots.borrow_mut().pop();
        let mut slots = self.conns.slots.borrow_mut();
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
            .map(|s| StreamBuilder::new(key.clone(), s.clone()));
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
            used: Cell::new(false),
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
        self.conns.active.set(self.conns.active.get() + 1);
        self.stats.inc(Counter::ConnAccepted);
        st
    }

    /// Ends a connection's capture: writes its final record (with the `close` observation at
    /// `ts`) and releases its slot. When earlier records of the connection are still
    /// unacknowledged, the final record waits for them ("lingers", slot kept) so that a record
    /// lost late — e.g. a Kafka delivery timing out after the client went away — is still
    /// named in a record of its connection: a gap is never silent. Bounded by
    /// [`LINGER_MAX_MS`], the drain deadline and shutdown.
    pub fn finish(&self, st: &ConnState, ts: Timestamp) {
        let capturing = st.capture.borrow().is_some();
        if capturing && st.unacked.get() > 0 && !self.drain.aborting.get() {
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
        self.conns.closed.notify();
    }

    /// Number of closed connections whose final record waits for acks.
    pub fn lingering(&self) -> usize {
        let waited = self.stats.get(Counter::FinalRecordWaited);
        let ended = self.stats.get(Counter::FinalRecordWaitEnded);
        waited.saturating_sub(ended) as usize
    }

    fn release_slot(&self, st: &ConnState) {
        if let Some(e) = self.conns.slots.borrow_mut().get_mut(st.conn.slot as usize) {
            if e.generation == st.conn.generation {
                e.conn = None;
                self.conns.free_slots.borrow_mut().push(st.conn.slot);
            }
        }
    }

    /// The connection's sockets are gone: it no longer counts as active.
    fn conn_gone(&self) {
        self.conns
            .active
            .set(self.conns.active.get().saturating_sub(1));
        self.stats.inc(Counter::ConnClosed);
        self.conns.closed.notify();
    }

    /// Runs `f` with the connection's capture builder and an emitter, if capturing.
    /// Returns `None` when this connection does not capture.
    pub fn with_capture<R>(
        &self,
        st: &ConnState,
        f: impl FnOnce(&mut StreamBuilder, &mut Emit<'_>) -> R,
    ) -> Option<R> {
        let mut cap = st.capture.borrow_mut();
        let b = cap.as_mut()?;
        let mut batch = self.out.batch.borrow_mut();
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
        let full = self.out.batch.borrow().bytes >= BATCH_MAX_BYTES;
        if full {
            self.hand_over();
        } else {
            self.out.flush.notify();
        }
    }

    /// Marks the current batch urgent (a held request waits on it) and wakes the flusher.
    pub fn urgent_flush(&self) {
        self.out.batch.borrow_mut().urgent = true;
        self.out.flush.notify();
    }

    /// Hands the current batch (and any refused ones) to the sink queue, without blocking.
    fn hand_over(&self) {
        let mut b = self.out.batch.borrow_mut();
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
            if let Err(back) = self.out.sender.try_send(batch) {
                b.pending.push_front(back);
                break;
            }
        }
    }

    /// Hands the current batch to the sink queue now (tests that drive a connection without
    /// the worker's flusher).
    #[cfg(test)]
    pub(crate) fn hand_over_now(&self) {
        self.hand_over();
    }

    /// True while batches are waiting because the sink queue is full.
    pub fn sink_congested(&self) -> bool {
        !self.out.batch.borrow().pending.is_empty()
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
        let r = match monoio::time::timeout(self.settings.kafka_ack_timeout, fut).await {
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
            let mut b = self.out.batch.borrow_mut();
            for buf in r.buffers.drain(..) {
                b.record_bufs.put(buf);
            }
            for v in r.record_vecs.drain(..) {
                if b.record_vecs.len() < crate::handoff::MAX_RETURNED_RECORD_VECS && v.is_empty() {
                    b.record_vecs.push(v);
                }
            }
        }
        for ack in r.acks.drain(..) {
            let st = {
                let slots = self.conns.slots.borrow();
                slots
                    .get(ack.conn.slot as usize)
                    .filter(|s| s.generation == ack.conn.generation)
                    .and_then(|s| s.conn.clone())
            };
            match ack.outcome {
                Outcome::Committed => self.stats.inc(Counter::RecordsCommitted),
                Outcome::Failed(kind) => {
                    self.stats.inc(Counter::RecordsLost);
                    if let Some(suppressed) = self.input.lost_warn.borrow_mut().allow() {
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
                let ts = Timestamp::now();
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
        let peak = self.conns.active_peak.get().max(active);
        if peak.saturating_sub(active) >= MEMORY_RETURN_MIN_DROP && active <= peak / 2 {
            // SAFETY: mi_collect has no preconditions; it only walks this thread's heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
            self.conns.active_peak.set(active);
        } else {
            self.conns.active_peak.set(peak);
        }
    }

    /// The sweeper's per-tick work.
    fn sweep(&self) {
        self.return_memory_after_bursts();
        let now = self.refresh_now();
        let s = &self.settings;
        let flush_ms = s.capture_flush_interval.as_millis() as u64;
        let idle_ms = s.client_idle_timeout.map(|d| d.as_millis() as u64);
        let head_ms = s.request_head_timeout.map(|d| d.as_millis() as u64);
        let body_ms = s.request_body_timeout.map(|d| d.as_millis() as u64);
        let draining = self.drain.draining.get();
        let n = self.conns.slots.borrow().len();
        for i in 0..n {
            let st = match self
                .conns
                .slots
                .borrow()
                .get(i)
                .and_then(|s| s.conn.clone())
            {
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
                if st.drain_may_close(now) {
                    st.stop_c2u(StopReason::Drain);
                }
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
            .conns
            .slots
            .borrow()
            .iter()
            .filter_map(|s| s.conn.clone())
            .collect();
        self.drain.aborting.set(true);
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
        if !self.drain.draining.replace(true) {
            let c = std::mem::take(&mut *self.drain.accept_cancel.borrow_mut());
            *self.drain.accept_cancel.borrow_mut() = c.cancel();
            self.pool.close();
            self.sweep();
            self.drain.drained.notify();
        }
    }

    pub fn active(&self) -> usize {
        self.conns.active.get()
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
        self.b.record_bufs.take()
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
        ctx.out.flush.wait().await;
        let urgent = ctx.out.batch.borrow().urgent;
        if urgent {
            // Let the other ready tasks add their records to this batch first.
            yield_once().await;
        } else {
            monoio::time::sleep(BATCH_LINGER).await;
        }
        ctx.hand_over();
        if ctx.sink_congested() {
            // Retry the refused batches soon.
            ctx.out.flush.notify();
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
        while ctx.input.inbox.take(&mut spare) {
            ctx.handle_returned(&mut spare);
            spare.acks.clear();
        }
        if ctx.input.inbox.take_control() {
            if ctx.input.control.abort.load(Ordering::Acquire) {
                ctx.begin_drain();
                ctx.abort_all();
            } else if ctx.input.control.drain.load(Ordering::Acquire) {
                ctx.begin_drain();
            }
        }
    }
}

async fn sweeper(ctx: Rc<Ctx>) {
    loop {
        monoio::time::sleep(Duration::from_millis(SWEEP_MS)).await;
        ctx.sweep();
        if ctx.draining() {
            ctx.drain.drained.notify();
        }
    }
}

/// Pause after a failed accept (ms): at the open-files limit (EMFILE) every accept fails at
/// once, so the loop must not spin; 10 ms keeps a recovered listener prompt.
const ACCEPT_RETRY_MS: u64 = 10;
/// Least time between two "accept failed" warnings of one worker (s); the rest are counted in
/// `acceptErrors_total` (at the open-files limit they came ~90 times a second).
const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts client connections and spawns `serve` for each, until the worker drains; at the
/// per-worker connection limit it waits for a connection to close first.
async fn accept_loop<S, F>(ctx: Rc<Ctx>, listener: monoio::net::TcpListener, serve: S)
where
    S: Fn(Rc<Ctx>, TcpStream, SocketAddr) -> F + Copy + 'static,
    F: Future<Output = ()> + 'static,
{
    let mut warn = RateLimit::new(ACCEPT_WARN_INTERVAL);
    let _running = TaskCount::new(&ctx, |c| &c.accepting);
    loop {
        if ctx.draining() {
            return;
        }
        if let Some(max) = ctx.settings.max_connections_per_worker {
            while ctx.active() >= max && !ctx.draining() {
                ctx.conns.closed.wait().await;
            }
        }
        let handle = ctx.drain.accept_cancel.borrow().handle();
        match listener.cancelable_accept(handle).await {
            Ok((stream, peer)) => {
                // Served even when the drain began meanwhile: dropping it would reset it.
                let c = ctx.clone();
                let task = TaskCount::new(&ctx, |c| &c.serving);
                // The connection's future is made inside the task, where it is stored once (in
                // the await slot); made outside and moved in, it would be stored twice (the
                // captured value and the await slot): +10 KiB per idle connection, measured.
                monoio::spawn(async move {
                    let _task = task;
                    serve(c, stream, peer).await
                });
            }
            Err(e) => {
                if ctx.draining() {
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
/// `serve` serves one accepted connection (`conn::serve`; passed in by `runtime`, so this
/// module does not depend on the connection code).
pub async fn run<S, F>(
    ctx: Rc<Ctx>,
    listeners: Vec<std::net::TcpListener>,
    wake: std::os::unix::net::UnixStream,
    ready: impl FnOnce(Result<(), String>),
    serve: S,
) where
    S: Fn(Rc<Ctx>, TcpStream, SocketAddr) -> F + Copy + 'static,
    F: Future<Output = ()> + 'static,
{
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
    if ctx.pool.enabled() {
        monoio::spawn(crate::upstream::refill(ctx.pool.clone()));
    }
    for l in ls {
        monoio::spawn(accept_loop(ctx.clone(), l, serve));
    }
    ctx.refresh_now();
    ready(Ok(()));
    // Wait for drain to start, then for the connections to finish (bounded).
    while !ctx.draining() {
        ctx.drain.drained.wait().await;
    }
    let deadline = Instant::now() + ctx.settings.drain_timeout;
    let mut aborted = false;
    loop {
        // Closed connections whose final record waits for acks count too: their final
        // record must be written before the last hand-over.
        let tasks_done = ctx.conns.accepting.get() == 0 && ctx.conns.serving.get() == 0;
        if ctx.active() == 0 && ctx.lingering() == 0 && (tasks_done || aborted) {
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
        ctx.drain.drained.wait().await;
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

    /// Takes record buffers from a worker's pool and keeps what the builder emits.
    struct PoolOut<'a> {
        pool: &'a mut RecordBufs,
        emitted: Vec<FinishedRecord>,
        /// Capacity of each buffer the pool gave, in order.
        taken: Vec<usize>,
    }

    impl RecordOut for PoolOut<'_> {
        fn take_buffer(&mut self) -> Vec<u8> {
            let b = self.pool.take();
            self.taken.push(b.capacity());
            b
        }
        fn emit(&mut self, rec: FinishedRecord) {
            self.emitted.push(rec);
        }
    }

    /// One keep-alive exchange with a 64 KiB response, captured and handed over as the
    /// connection code does once the exchange is complete (`RECORD_SOFT_FLUSH_BYTES`).
    fn capture_64k_exchange(b: &mut StreamBuilder, out: &mut PoolOut<'_>, i: i64) {
        let ts = Timestamp {
            secs: 1_700_000_000 + i,
            nanos: 0,
        };
        b.read(ts, b"GET /large.json HTTP/1.1\r\nHost: x\r\n\r\n", out);
        // Head and body (65 536 + 200 bytes) in two reads, 16 KiB and the rest, as perf saw
        // them arrive from a loopback socket.
        b.write(ts, &[b'x'; 16 * 1024], out);
        b.write(ts, &[b'x'; 48 * 1024 + 200], out);
        b.flush(out);
    }

    /// Records of 64 KiB responses, many in flight at once (a sink that is behind holds
    /// hundreds), come back into buffers the pool keeps and that hold the next such record
    /// without regrowing: after a first round, a second round of 64 connections allocates
    /// nothing. Before the builder grew to powers of two, such a record's buffer was 128 KiB
    /// plus a few bytes, which the pool kept only 8 of: 56 of the 64 records regrew a fresh
    /// buffer from 1 KiB.
    #[test]
    fn records_of_64k_responses_reuse_pooled_buffers_with_many_in_flight() {
        let settings = Arc::new(CaptureSettings::new("node".into(), 1_048_576 - 500).unwrap());
        let mut builders: Vec<StreamBuilder> = (0..64)
            .map(|c| StreamBuilder::new(format!("conn-{c}").into(), settings.clone()))
            .collect();
        let mut pool = RecordBufs::default();
        // Returns the emitted records and how many of them did not fit the buffer the pool
        // gave (a buffer allocated or grown here).
        let mut round = |pool: &mut RecordBufs, r: i64| {
            let mut out = PoolOut {
                pool,
                emitted: Vec::new(),
                taken: Vec::new(),
            };
            for b in builders.iter_mut() {
                capture_64k_exchange(b, &mut out, r);
            }
            assert_eq!(out.taken.len(), out.emitted.len(), "one buffer per record");
            let regrown = out
                .emitted
                .iter()
                .zip(&out.taken)
                .filter(|(rec, &cap)| rec.value.capacity() != cap)
                .count();
            (out.emitted, regrown)
        };
        let (first, _) = round(&mut pool, 0);
        assert_eq!(first.len(), 64);
        for rec in first {
            let mut v = rec.value;
            v.clear();
            pool.put(v);
        }
        let (second, regrown) = round(&mut pool, 1);
        assert_eq!(second.len(), 64);
        assert_eq!(
            regrown,
            0,
            "records that did not fit the pooled buffer they were given (capacities: {:?})",
            second
                .iter()
                .map(|r| r.value.capacity())
                .collect::<Vec<_>>()
        );
    }
}
