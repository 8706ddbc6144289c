//! The single sink thread: takes whole batches from the workers, commits each record to the
//! configured sink (file, or Kafka in `kafka.rs` — with `--spool-dir`, the durable spool of
//! `spool.rs` for records Kafka cannot take right now), and sends one ack per record back to
//! the owning worker together with the emptied buffers.
//!
//! May depend on: `handoff`, `stats` (histograms, rate limiter), `cpu` (pinning the thread), the
//! back-ends (`file.rs`, `kafka.rs`, `spool.rs`); its tests also `config` (a Kafka
//! configuration). Never runs on a worker.
//!
//! Invariant: every record received is acknowledged exactly once; on shutdown everything
//! received before `SinkMsg::Shutdown` is committed (or failed) and the sink is synced.

pub(crate) mod file;
pub mod kafka;
pub mod spool;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::handoff::{
    Ack, BatchReceiver, FailKind, Inbox, Outcome, Record, SinkMsg, BATCH_MAX_BYTES,
};

/// Counters the sink thread publishes (read by the admin endpoint and tests).
#[derive(Debug)]
pub struct SinkStats {
    pub records_committed: AtomicU64,
    pub bytes_committed: AtomicU64,
    pub records_failed: AtomicU64,
    pub batches: AtomicU64,
    /// 1 while the sink can take records, 0 when it is failing.
    pub healthy: AtomicU64,
    /// Bytes of records queued between the workers and the sink thread (the hand-off
    /// queue's `BatchReceiver::queued_bytes`), refreshed on every turn of the sink loop.
    pub queued_bytes: AtomicU64,
    /// Kafka send-to-acknowledgement time of each committed record (µs), written only by the
    /// sink thread; the admin endpoint renders it as `kafkaCommitDuration`.
    pub commit_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// `--spool-dir`: bytes of spool segment files on disk (gauge).
    pub spool_bytes: AtomicU64,
    /// Records made durable in the spool (and acknowledged to their workers as committed).
    pub spool_records_spooled: AtomicU64,
    /// Spooled records Kafka has acknowledged since (drained).
    pub spool_records_drained: AtomicU64,
    /// Records the spool could not take (full, or its write failed): they failed.
    pub spool_records_refused: AtomicU64,
    /// Torn or corrupt spool regions skipped while replaying.
    pub spool_corrupt_skipped: AtomicU64,
    /// Spooled records Kafka refused for good (dropped from the spool: lost).
    pub spool_records_dropped: AtomicU64,
    /// Kafka sink: 1 while a broker is reachable (with a spool, records go there while 0).
    pub kafka_connected: AtomicU64,
    /// Kafka producer replaced by a new one (`KafkaCounters::rebuilds`).
    pub kafka_producer_restarts: AtomicU64,
    /// Records Kafka failed that went to the spool instead (`KafkaCounters::returned`).
    pub kafka_records_returned: AtomicU64,
    /// Times the sink stopped taking batches because a reachable Kafka held as many
    /// unacknowledged bytes as it may (see `SinkThread::kafka_behind`).
    pub kafka_backpressure: AtomicU64,
}

impl Default for SinkStats {
    fn default() -> Self {
        SinkStats {
            records_committed: AtomicU64::new(0),
            bytes_committed: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            healthy: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            commit_us: Mutex::new(crate::stats::new_histogram()),
            spool_bytes: AtomicU64::new(0),
            spool_records_spooled: AtomicU64::new(0),
            spool_records_drained: AtomicU64::new(0),
            spool_records_refused: AtomicU64::new(0),
            spool_corrupt_skipped: AtomicU64::new(0),
            spool_records_dropped: AtomicU64::new(0),
            kafka_connected: AtomicU64::new(0),
            kafka_producer_restarts: AtomicU64::new(0),
            kafka_records_returned: AtomicU64::new(0),
            kafka_backpressure: AtomicU64::new(0),
        }
    }
}

/// The configured back-end, opened before the thread starts so start-up errors surface.
pub(crate) enum Backend {
    /// `--noCapture`: workers produce no records; the thread only answers shutdown.
    Null,
    File(Box<file::FileSink>),
    Kafka(Box<kafka::KafkaSink>),
}

/// How long the sink thread waits for a batch before doing periodic work. 50 ms keeps
/// shutdown and health reporting prompt without busy waiting.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// With a spool, while Kafka holds unacknowledged records, the sink thread waits at most this
/// long for a batch before polling Kafka's delivery reports again (µs): bounds the extra
/// latency a held request sees beyond the broker round trip and paces the spool's drain.
/// Without a spool the thread sleeps until librdkafka's event callback wakes it (`kafka.rs`,
/// `set_waker`): these ≤ 5 000 wake-ups a second, each a context switch on a worker's CPU,
/// cost 15 % of that CPU behind a broker 50 ms away (measured, issue 15).
const KAFKA_POLL_SLICE: Duration = Duration::from_micros(200);
/// Kafka counts as making progress unless it has held records this long (s) without
/// committing any: the back-pressure of `SinkThread::kafka_behind` holds the clients only for
/// a Kafka that is slow, not for one that takes nothing. 2 s is ten round trips of a broker
/// 200 ms away and well inside the 10 s record deadline.
const KAFKA_PROGRESS_WINDOW: Duration = Duration::from_secs(2);
/// While Kafka is behind (`SinkThread::kafka_behind`), the longest the sink waits for a
/// delivery report before looking at the queue's state again (ms); a report ends it at once.
const KAFKA_BEHIND_POLL: Duration = Duration::from_millis(10);
/// At shutdown, most time to wait for Kafka to acknowledge what it holds (s). Within the
/// systemd unit's TimeoutStopSec (60 s) after the 30 s drain.
const KAFKA_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

pub(crate) struct SinkThread {
    backend: Backend,
    rx: BatchReceiver,
    inboxes: Vec<Arc<Inbox>>,
    stats: Arc<SinkStats>,
    /// Per worker, plus one last slot where `resolve` collects the acks (and buffers) of
    /// drained spool entries for `spool_step`; `deliver_all` never delivers that slot.
    acks: Vec<Vec<Ack>>,
    bufs: Vec<Vec<Vec<u8>>>,
    /// `--spool-dir` (Kafka only): see `spool.rs` and the spool functions below.
    spool: Option<Box<SpoolLink>>,
    warn: crate::stats::RateLimit,
    /// Per-record append results of the current batch (reused).
    ok: Vec<bool>,
    /// Kafka commit durations taken from the producer, before they go into the histogram
    /// (reused).
    durations: Vec<Duration>,
    /// The sink is leaving batches in the hand-off queue until Kafka has room
    /// (`kafka_behind`).
    kafka_paused: bool,
}

impl SinkThread {
    pub(crate) fn new(
        backend: Backend,
        rx: BatchReceiver,
        inboxes: Vec<Arc<Inbox>>,
        stats: Arc<SinkStats>,
    ) -> Self {
        let n = inboxes.len();
        stats.healthy.store(1, Ordering::Relaxed);
        SinkThread {
            backend,
            rx,
            inboxes,
            stats,
            acks: (0..=n).map(|_| Vec::new()).collect(),
            bufs: (0..=n).map(|_| Vec::new()).collect(),
            spool: None,
            warn: crate::stats::RateLimit::new(Duration::from_secs(60)),
            ok: Vec::new(),
            durations: Vec::new(),
            kafka_paused: false,
        }
    }

    /// Runs until `SinkMsg::Shutdown`.
    pub(crate) fn run(mut self) {
        loop {
            if self.kafka_behind() {
                // Leave the batches in the queue until delivery reports make room (the poll
                // returns as soon as one resolved a record).
                self.poll_kafka(KAFKA_BEHIND_POLL);
                self.publish();
                continue;
            }
            let wait = self.wait_time();
            let msg = self.rx.recv_timeout(wait);
            match msg {
                None | Some(SinkMsg::Wake) => {}
                Some(SinkMsg::Batch(b)) => self.handle_batch(b.worker, b.records),
                Some(SinkMsg::Shutdown) => {
                    while let Some(m) = self.rx.try_recv() {
                        if let SinkMsg::Batch(b) = m {
                            self.handle_batch(b.worker, b.records);
                        }
                    }
                    self.shutdown();
                    self.spool_close();
                    self.publish();
                    return;
                }
            }
            self.poll_kafka(Duration::ZERO);
            self.spool_step();
            self.publish();
        }
    }

    /// Publishes what the admin endpoint reads beyond the counters: the hand-off queue's
    /// depth and the Kafka commit durations of the records resolved since the last turn.
    fn publish(&mut self) {
        self.stats
            .queued_bytes
            .store(self.rx.queued_bytes() as u64, Ordering::Relaxed);
        let Backend::Kafka(k) = &mut self.backend else {
            return;
        };
        let c = k.counters();
        self.stats
            .kafka_producer_restarts
            .store(c.rebuilds, Ordering::Relaxed);
        self.stats
            .kafka_records_returned
            .store(c.returned, Ordering::Relaxed);
        k.take_commit_durations(&mut self.durations);
        if self.durations.is_empty() {
            return;
        }
        // Not a worker: waiting the few microseconds a scrape holds the lock is fine.
        if let Ok(mut h) = self.stats.commit_us.lock() {
            for d in &self.durations {
                crate::stats::record_into(&mut h, *d);
            }
        }
        self.durations.clear();
    }

    /// Lets librdkafka wake this thread when it has events (Kafka only), so it can sleep on
    /// the queue instead of polling every KAFKA_POLL_SLICE.
    pub(crate) fn set_waker(&mut self, w: crate::handoff::SinkWaker) {
        if let Backend::Kafka(k) = &mut self.backend {
            k.set_waker(w);
        }
    }

    /// How long to wait for a batch before the periodic work. Kafka with a waker: until the
    /// producer needs a look (a record parked on a full queue, a rebuild) — its events wake
    /// us. With a spool, while Kafka holds unacknowledged records, every KAFKA_POLL_SLICE as
    /// before: the spool's drain and commits are paced by this loop.
    fn wait_time(&mut self) -> Duration {
        let spooled = self.spool.is_some();
        match &mut self.backend {
            Backend::Kafka(k) if spooled => {
                if k.unacked().0 > 0 {
                    KAFKA_POLL_SLICE
                } else {
                    IDLE_WAIT
                }
            }
            Backend::Kafka(k) => k.next_poll_in().min(IDLE_WAIT),
            _ => IDLE_WAIT,
        }
    }

    /// Kafka is reachable (or not yet known to be down: at start, before the first connection
    /// answered) and committing, but holds so many unacknowledged bytes that the
    /// next batch might not fit (`KafkaSettings::max_unacked_bytes`, 256 MiB): the sink then
    /// takes no more batches until delivery reports make room. The hand-off queue fills and
    /// the workers pause reading from their clients (back-pressure, as with a slow file
    /// system) instead of records failing as Overloaded — a broker slower than the capture
    /// slows the capture, it does not lose it. Not when Kafka makes no progress — every broker
    /// reported down, or records held for [`KAFKA_PROGRESS_WINDOW`] without one committed (a
    /// hung broker, a missing topic): what it holds then fails by its deadline whatever the
    /// clients do, so the source's clients are not held for it — nor with a spool (records
    /// Kafka has no room for go there). One warning when it starts (rate-limited), counted in
    /// `kafkaBackpressure_total`.
    fn kafka_behind(&mut self) -> bool {
        let behind = match &self.backend {
            // With nothing unacknowledged a batch is always taken (progress, whatever the
            // bound).
            Backend::Kafka(k) if self.spool.is_none() => {
                !k.known_down()
                    && k.making_progress(KAFKA_PROGRESS_WINDOW)
                    && k.unacked().0 > 0
                    && !k.has_room_for(BATCH_MAX_BYTES.saturating_add(k.max_record_bytes()))
            }
            _ => false,
        };
        if behind && !self.kafka_paused {
            self.stats
                .kafka_backpressure
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = self.warn.allow() {
                tracing::warn!(
                    suppressed,
                    "kafka is behind the capture: records wait in the hand-off queue and \
                     clients are slowed until it catches up"
                );
            }
        }
        self.kafka_paused = behind;
        behind
    }

    /// Serves Kafka delivery reports and hands the resolved acks to their workers.
    fn poll_kafka(&mut self, timeout: Duration) {
        let spool_ok = self.spool_accepting();
        let Backend::Kafka(k) = &mut self.backend else {
            return;
        };
        let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
        let mut done = |ack: Ack, buf: Vec<u8>| resolve(acks, bufs, stats, ack, buf);
        k.poll(timeout, &mut done);
        stats
            .healthy
            .store(u64::from(k.healthy() || spool_ok), Ordering::Relaxed);
        self.deliver_all();
    }

    fn deliver_all(&mut self) {
        for ((inbox, acks), bufs) in self
            .inboxes
            .iter()
            .zip(self.acks.iter_mut())
            .zip(self.bufs.iter_mut())
        {
            if !acks.is_empty() || !bufs.is_empty() {
                inbox.deliver(acks, bufs, None);
            }
        }
    }

    fn handle_batch(&mut self, worker: u16, mut records: Vec<Record>) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let w = usize::from(worker);
        if self.spool.is_some() && matches!(self.backend, Backend::Kafka(_)) {
            self.handle_batch_spooled(w, records);
            return;
        }
        let mut results: [usize; 2] = [0, 0];
        match &mut self.backend {
            Backend::Null => {
                for r in records.drain(..) {
                    push_ack(&mut self.acks, &mut self.bufs, w, r, Outcome::Committed);
                }
            }
            Backend::Kafka(k) => {
                let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
                let mut done = |ack: Ack, buf: Vec<u8>| resolve(acks, bufs, stats, ack, buf);
                for r in records.drain(..) {
                    k.send(r, &mut done);
                }
                k.poll(Duration::ZERO, &mut done);
                // Acks of other workers' records may have resolved too.
                self.deliver_all();
                if let Some(inbox) = self.inboxes.get(w) {
                    inbox.deliver(&mut Vec::new(), &mut Vec::new(), Some(records));
                }
                return;
            }
            Backend::File(f) => {
                // Append everything, then make it reach the OS once; a record counts as
                // committed only after that `commit`.
                let mut first_err: Option<String> = None;
                let ok = &mut self.ok;
                ok.clear();
                for r in records.iter() {
                    match f.append(&r.value) {
                        Ok(()) => ok.push(true),
                        Err(e) => {
                            if first_err.is_none() {
                                first_err = Some(e.to_string());
                            }
                            ok.push(false)
                        }
                    }
                }
                let commit = f.commit();
                if let Err(e) = &commit {
                    first_err.get_or_insert_with(|| e.to_string());
                }
                for (r, good) in records.drain(..).zip(ok.iter()) {
                    let out = if *good && commit.is_ok() {
                        results[0] += 1;
                        self.stats
                            .bytes_committed
                            .fetch_add(r.value.len() as u64, Ordering::Relaxed);
                        Outcome::Committed
                    } else {
                        results[1] += 1;
                        Outcome::Failed(FailKind::SinkError)
                    };
                    push_ack(&mut self.acks, &mut self.bufs, w, r, out);
                }
                if let Some(e) = first_err {
                    self.stats.healthy.store(0, Ordering::Relaxed);
                    if let Some(suppressed) = self.warn.allow() {
                        tracing::warn!(error = %e, suppressed, "trace file write failed; records lost");
                    }
                } else {
                    self.stats.healthy.store(1, Ordering::Relaxed);
                }
            }
        }
        self.stats
            .records_committed
            .fetch_add(results[0] as u64, Ordering::Relaxed);
        self.stats
            .records_failed
            .fetch_add(results[1] as u64, Ordering::Relaxed);
        if let (Some(inbox), Some(acks), Some(bufs)) = (
            self.inboxes.get(w),
            self.acks.get_mut(w),
            self.bufs.get_mut(w),
        ) {
            inbox.deliver(acks, bufs, Some(records));
        }
    }

    fn shutdown(&mut self) {
        match &mut self.backend {
            Backend::File(f) => {
                if let Err(e) = f.sync() {
                    tracing::error!(error = %e, "final fsync of the trace file failed");
                }
            }
            Backend::Kafka(k) => {
                let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
                let mut done = |ack: Ack, buf: Vec<u8>| resolve(acks, bufs, stats, ack, buf);
                k.close(KAFKA_CLOSE_TIMEOUT, &mut done);
                let (left, _) = k.unacked();
                if left > 0 {
                    tracing::error!(records = left, "records not delivered to Kafka at shutdown");
                }
                self.deliver_all();
            }
            Backend::Null => {}
        }
    }
}

/// Records one resolved Kafka record: counters, the ack and the buffer for its worker.
fn resolve(
    acks: &mut [Vec<Ack>],
    bufs: &mut [Vec<Vec<u8>>],
    stats: &SinkStats,
    ack: Ack,
    mut buf: Vec<u8>,
) {
    if ack.conn.worker == SPOOL_DRAIN_WORKER {
        // A drained spool entry: no worker waits for it; `spool_step` takes it from the
        // extra last slot.
        if let (Some(a), Some(b)) = (acks.last_mut(), bufs.last_mut()) {
            a.push(ack);
            b.push(buf);
        }
        return;
    }
    match ack.outcome {
        Outcome::Committed => {
            stats.records_committed.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Failed(_) => {
            stats.records_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let w = usize::from(ack.conn.worker);
    if let Some(a) = acks.get_mut(w) {
        a.push(ack);
    }
    if buf.capacity() > 0 {
        if let Some(b) = bufs.get_mut(w) {
            buf.clear();
            b.push(buf);
        }
    }
}

fn push_ack(
    acks: &mut [Vec<Ack>],
    bufs: &mut [Vec<Vec<u8>>],
    w: usize,
    mut r: Record,
    outcome: Outcome,
) {
    if let Some(a) = acks.get_mut(w) {
        a.push(Ack {
            conn: r.conn,
            number: r.number,
            is_final: r.is_final,
            outcome,
        });
    }
    if let Some(b) = bufs.get_mut(w) {
        r.value.clear();
        b.push(r.value);
    }
}

// ----- The durable spool (`--spool-dir`, Kafka only; the log itself is in `spool.rs`) -----
//
// When a record goes to the spool instead of Kafka: Kafka is not reachable (`healthy()` is
// false: no broker connection up, also in the first second after start until librdkafka's
// first statistics), or the record would take Kafka's unresolved bytes past their bound (it
// would fail as Overloaded), or its connection already has records in the spool that Kafka
// has not acknowledged (so the connection's records stay in order). A spooled record is
// acknowledged Committed to its worker once the batch's fsync returns. When Kafka turns
// unreachable, the records librdkafka still holds (queued, or in flight to the dead brokers)
// are taken back at once — before any newer record is routed — and spooled in per-connection
// order (`pull_back_on_outage`), so they neither wait out the delivery deadline nor get lost;
// a record in flight may have been written by a broker that died before answering and then
// appears twice. Reports arriving after the short collection window resolve as usual (a loss
// is then named in the connection's next record, or its final record, which waits for them).
//
// Draining: while Kafka is reachable, spooled entries are produced in log order through the
// same producer (acks come back under `SPOOL_DRAIN_WORKER`), at most `SPOOL_DRAIN_WINDOW_BYTES`
// in flight; an acknowledgement lets the spool truncate; a failure is retried from the spool.

/// `ConnRef::worker` of drained spool entries: no worker has this index (workers are counted
/// in CPUs), so `resolve` recognises their acks; the entry's drain id travels in slot and
/// generation.
const SPOOL_DRAIN_WORKER: u16 = u16::MAX;
/// Most value bytes of drained entries in flight to Kafka (16 MiB): enough to keep a broker
/// busy (hundreds of records per round trip), small next to the Kafka bound (256 MiB) that
/// live records share, and what has to be re-sent after a failure is bounded by it.
const SPOOL_DRAIN_WINDOW_BYTES: usize = 16 * 1024 * 1024;
/// Most entries drained per turn of the sink loop: keeps a turn short (≈1 ms of reading and
/// handing over) so worker batches and delivery reports are served in between.
const SPOOL_DRAIN_STEP_RECORDS: usize = 512;
/// Most value bytes drained per turn of the sink loop (4 MiB), for the same reason.
const SPOOL_DRAIN_STEP_BYTES: usize = 4 * 1024 * 1024;

/// The spool and what the sink thread keeps for it.
struct SpoolLink {
    spool: spool::Spool,
    /// Records of the current batch appended to the spool, acknowledged after its commit.
    batch: Vec<Record>,
    warn: crate::stats::RateLimit,
    /// Kafka was reachable at the last check (see `SinkThread::pull_back_on_outage`).
    kafka_was_healthy: bool,
    /// Reused to take the records Kafka handed back (see `spool_returned`).
    returned: Vec<Record>,
}

impl SpoolLink {
    /// Appends `r` to the spool, to be acknowledged by [`SpoolLink::commit_batch`]; a record
    /// the spool cannot take fails at once (full: Overloaded, else SinkError).
    fn append(
        &mut self,
        r: Record,
        acks: &mut [Vec<Ack>],
        bufs: &mut [Vec<Vec<u8>>],
        stats: &SinkStats,
        first_err: &mut Option<spool::SpoolError>,
    ) {
        match self.spool.append(&r.key, r.number, r.is_final, &r.value) {
            Ok(()) => self.batch.push(r),
            Err(e) => {
                let kind = if matches!(e, spool::SpoolError::Full { .. }) {
                    FailKind::Overloaded
                } else {
                    FailKind::SinkError
                };
                stats.records_failed.fetch_add(1, Ordering::Relaxed);
                let w = usize::from(r.conn.worker);
                push_ack(acks, bufs, w, r, Outcome::Failed(kind));
                first_err.get_or_insert(e);
            }
        }
    }

    /// Fsyncs what `append` wrote and acknowledges those records to their workers (Committed,
    /// or SinkError when the fsync failed); logs the first error (rate-limited).
    fn commit_batch(
        &mut self,
        acks: &mut [Vec<Ack>],
        bufs: &mut [Vec<Vec<u8>>],
        stats: &SinkStats,
        mut first_err: Option<spool::SpoolError>,
    ) {
        if !self.batch.is_empty() {
            let n = self.batch.len() as u64;
            let outcome = match self.spool.commit() {
                Ok(_) => {
                    stats.records_committed.fetch_add(n, Ordering::Relaxed);
                    Outcome::Committed
                }
                Err(e) => {
                    stats.records_failed.fetch_add(n, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                    Outcome::Failed(FailKind::SinkError)
                }
            };
            for r in self.batch.drain(..) {
                let w = usize::from(r.conn.worker);
                push_ack(acks, bufs, w, r, outcome);
            }
        }
        if let Some(e) = first_err {
            if let Some(suppressed) = self.warn.allow() {
                tracing::warn!(error = %e, suppressed, "record not spooled (Kafka unreachable or full); its capture is lost");
            }
        }
    }
}

fn spool_drain_conn(id: u64) -> crate::handoff::ConnRef {
    crate::handoff::ConnRef {
        worker: SPOOL_DRAIN_WORKER,
        slot: id as u32,
        generation: (id >> 32) as u32,
    }
}

fn spool_drain_id(c: crate::handoff::ConnRef) -> u64 {
    u64::from(c.slot) | (u64::from(c.generation) << 32)
}

/// Hands the drained entries' outcomes (collected by `resolve` in the last slot) to the spool.
fn spool_take_acks(acks: &mut [Vec<Ack>], bufs: &mut [Vec<Vec<u8>>], sp: &mut spool::Spool) {
    if let Some(a) = acks.last_mut() {
        for ack in a.drain(..) {
            sp.drain_ack(spool_drain_id(ack.conn), ack.outcome);
        }
    }
    if let Some(b) = bufs.last_mut() {
        for buf in b.drain(..) {
            sp.recycle(buf);
        }
    }
}

/// Appends records taken back from Kafka to the spool, in the given order (per-connection
/// record order), to be acknowledged by the next `commit_batch`. A drained spool entry among
/// them is still in the spool: its drain attempt is marked failed, so it is sent again later.
fn spool_taken_back(
    records: impl IntoIterator<Item = Record>,
    link: &mut SpoolLink,
    acks: &mut [Vec<Ack>],
    bufs: &mut [Vec<Vec<u8>>],
    stats: &SinkStats,
    first_err: &mut Option<spool::SpoolError>,
) {
    for r in records {
        if r.conn.worker == SPOOL_DRAIN_WORKER {
            let ack = Ack {
                conn: r.conn,
                number: r.number,
                is_final: r.is_final,
                outcome: Outcome::Failed(FailKind::Timeout),
            };
            resolve(acks, bufs, stats, ack, r.value);
            continue;
        }
        link.append(r, acks, bufs, stats, first_err);
    }
    spool_take_acks(acks, bufs, &mut link.spool);
}

/// Spools the records Kafka handed back since the last call (`KafkaSink::take_returned`).
fn spool_returned(
    k: &mut kafka::KafkaSink,
    link: &mut SpoolLink,
    acks: &mut [Vec<Ack>],
    bufs: &mut [Vec<Vec<u8>>],
    stats: &SinkStats,
    first_err: &mut Option<spool::SpoolError>,
) {
    let mut back = std::mem::take(&mut link.returned);
    k.take_returned(&mut back);
    if !back.is_empty() {
        spool_taken_back(back.drain(..), link, acks, bufs, stats, first_err);
    }
    link.returned = back;
}

fn spool_publish(stats: &SinkStats, sp: &spool::Spool) {
    let c = sp.counters();
    stats.spool_bytes.store(sp.bytes(), Ordering::Relaxed);
    stats
        .spool_records_spooled
        .store(c.spooled, Ordering::Relaxed);
    stats
        .spool_records_drained
        .store(c.drained, Ordering::Relaxed);
    stats
        .spool_records_refused
        .store(c.refused, Ordering::Relaxed);
    stats
        .spool_corrupt_skipped
        .store(c.skipped_regions, Ordering::Relaxed);
    stats
        .spool_records_dropped
        .store(c.dropped, Ordering::Relaxed);
}

impl SinkThread {
    /// Adds the durable spool (Kafka back-end only; ignored otherwise).
    pub(crate) fn with_spool(mut self, spool: spool::Spool) -> Self {
        spool_publish(&self.stats, &spool);
        if let Backend::Kafka(k) = &mut self.backend {
            // Records Kafka fails come back to be spooled instead of being lost.
            k.return_failures();
        }
        self.spool = Some(Box::new(SpoolLink {
            spool,
            batch: Vec::new(),
            warn: crate::stats::RateLimit::new(Duration::from_secs(10)),
            kafka_was_healthy: false,
            returned: Vec::new(),
        }));
        self
    }

    fn spool_accepting(&self) -> bool {
        self.spool.as_ref().is_some_and(|l| l.spool.accepting())
    }

    /// A worker batch with a spool: each record goes to Kafka or to the spool (see above);
    /// the spooled ones are fsynced together and then acknowledged.
    fn handle_batch_spooled(&mut self, w: usize, mut records: Vec<Record>) {
        // Older records of these connections may still wait in librdkafka: spool them first.
        self.pull_back_on_outage();
        let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
        let (Backend::Kafka(k), Some(link)) = (&mut self.backend, self.spool.as_deref_mut()) else {
            for r in records.drain(..) {
                stats.records_failed.fetch_add(1, Ordering::Relaxed);
                push_ack(acks, bufs, w, r, Outcome::Failed(FailKind::SinkError));
            }
            self.deliver_all();
            return;
        };
        // Records Kafka failed since the last turn are older than this batch: spool them first.
        let mut first_err: Option<spool::SpoolError> = None;
        spool_returned(k, link, acks, bufs, stats, &mut first_err);
        let healthy = k.healthy();
        for r in records.drain(..) {
            let kafka_full = !k.has_room_for(r.value.len());
            if healthy && !kafka_full && !link.spool.holds_key(&r.key) {
                k.send(r, &mut |a, b| resolve(acks, bufs, stats, a, b));
                continue;
            }
            link.append(r, acks, bufs, stats, &mut first_err);
        }
        link.commit_batch(acks, bufs, stats, first_err);
        k.poll(Duration::ZERO, &mut |a, b| resolve(acks, bufs, stats, a, b));
        let mut first_err = None;
        spool_returned(k, link, acks, bufs, stats, &mut first_err);
        link.commit_batch(acks, bufs, stats, first_err);
        spool_publish(stats, &link.spool);
        self.deliver_all();
        if let Some(inbox) = self.inboxes.get(w) {
            inbox.deliver(&mut Vec::new(), &mut Vec::new(), Some(records));
        }
    }

    /// Once per turn of the sink loop: publishes Kafka reachability; with a spool, takes the
    /// drained entries' outcomes, drains more while Kafka is reachable, truncates.
    fn spool_step(&mut self) {
        if let Backend::Kafka(k) = &self.backend {
            self.stats
                .kafka_connected
                .store(u64::from(k.healthy()), Ordering::Relaxed);
        }
        self.pull_back_on_outage();
        let Backend::Kafka(k) = &mut self.backend else {
            return;
        };
        let Some(link) = self.spool.as_deref_mut() else {
            return;
        };
        let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
        let mut first_err = None;
        spool_returned(k, link, acks, bufs, stats, &mut first_err);
        link.commit_batch(acks, bufs, stats, first_err);
        spool_take_acks(acks, bufs, &mut link.spool);
        if k.healthy() {
            let (mut n, mut bytes) = (0usize, 0usize);
            while n < SPOOL_DRAIN_STEP_RECORDS
                && bytes < SPOOL_DRAIN_STEP_BYTES
                && link.spool.pending_bytes() < SPOOL_DRAIN_WINDOW_BYTES
                // Leave room for one live record under Kafka's bound.
                && k.has_room_for(k.max_record_bytes())
            {
                let Some(e) = link.spool.next_drain() else {
                    break;
                };
                n += 1;
                bytes += e.value.len();
                let rec = Record {
                    conn: spool_drain_conn(e.id),
                    key: e.key,
                    number: e.number,
                    is_final: e.is_final,
                    value: e.value,
                };
                k.send(rec, &mut |a, b| resolve(acks, bufs, stats, a, b));
                // A refusal comes back at once: the spool must know before anything newer.
                spool_take_acks(acks, bufs, &mut link.spool);
            }
        }
        link.spool.maintain();
        spool_publish(stats, &link.spool);
        stats.healthy.store(
            u64::from(k.healthy() || link.spool.accepting()),
            Ordering::Relaxed,
        );
        self.deliver_all();
    }

    /// When Kafka has just become unreachable: the records still queued in librdkafka (not yet
    /// sent) are taken back and spooled, in order, before anything newer of their connections
    /// — instead of waiting out their delivery deadline and being lost. Their workers get
    /// Committed once the spool's fsync returns, like any spooled record. Drained spool
    /// entries taken back just stay in the spool (retried later).
    fn pull_back_on_outage(&mut self) {
        let Backend::Kafka(k) = &mut self.backend else {
            return;
        };
        let Some(link) = self.spool.as_deref_mut() else {
            return;
        };
        let healthy = k.healthy();
        let was = std::mem::replace(&mut link.kafka_was_healthy, healthy);
        if healthy || !was || !link.spool.accepting() {
            return;
        }
        let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
        let mut pulled = Vec::new();
        let n = k.pull_back_queued(&mut pulled, &mut |a, b| resolve(acks, bufs, stats, a, b));
        if n == 0 {
            return;
        }
        tracing::warn!(
            records = n,
            "kafka unreachable: the records librdkafka held are moved to the spool"
        );
        let mut first_err: Option<spool::SpoolError> = None;
        // Records Kafka failed just before are older still.
        spool_returned(k, link, acks, bufs, stats, &mut first_err);
        spool_taken_back(pulled, link, acks, bufs, stats, &mut first_err);
        link.commit_batch(acks, bufs, stats, first_err);
        spool_publish(stats, &link.spool);
        self.deliver_all();
    }

    /// At shutdown, after Kafka was closed: the drained entries' last outcomes, then the
    /// spool records its drain position; what Kafka did not acknowledge stays for next time.
    fn spool_close(&mut self) {
        if let (Backend::Kafka(k), Some(link)) = (&mut self.backend, self.spool.as_deref_mut()) {
            // What Kafka did not take before it closed goes to the spool, for next time.
            let mut first_err = None;
            let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
            spool_returned(k, link, acks, bufs, stats, &mut first_err);
            link.commit_batch(acks, bufs, stats, first_err);
        }
        self.deliver_all();
        let Some(link) = self.spool.as_deref_mut() else {
            return;
        };
        spool_take_acks(&mut self.acks, &mut self.bufs, &mut link.spool);
        link.spool.close();
        spool_publish(&self.stats, &link.spool);
    }
}

/// Starts the sink thread, pinned to `cpu` when given.
pub(crate) fn spawn(
    thread: SinkThread,
    cpu: Option<usize>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cp-sink".into())
        .spawn(move || {
            if let Some(c) = cpu {
                crate::cpu::pin_current_thread(c);
            }
            thread.run()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KafkaAuth, KafkaConfig};
    use crate::handoff::{channel, Batch, ConnRef, Returned};
    use kafka::{KafkaSettings, KafkaSink};
    use rdkafka::mocking::MockCluster;
    use std::time::Instant;

    const TOPIC: &str = "logging-traffic-topic";
    const VALUE_BYTES: usize = 8 * 1024;

    fn record(slot: u32, number: u32) -> Record {
        Record {
            conn: ConnRef {
                worker: 0,
                slot,
                generation: 0,
            },
            key: Arc::from(format!("conn-{slot}")),
            number,
            is_final: false,
            value: vec![b'v'; VALUE_BYTES],
        }
    }

    /// Acks taken from the inbox until `n` arrived or `limit` passed.
    fn take_acks(inbox: &Inbox, acks: &mut Vec<Ack>, n: usize, limit: Duration) {
        let end = Instant::now() + limit;
        let mut spare = Returned::default();
        while acks.len() < n && Instant::now() < end {
            if inbox.take(&mut spare) {
                acks.append(&mut spare.acks);
                spare.buffers.clear();
                spare.record_vecs.clear();
            } else {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// With `warm`, sends one record and waits for its commit (the producer then sees its
    /// broker) before making the mock broker answer `rtt` late; without, the broker answers
    /// late from the start and nothing is known of it yet. Then hands 40 records of 8 KiB
    /// (four connections) to a sink whose unacknowledged bound is 240 KiB. Returns the 40
    /// records' acks.
    fn run_behind(rtt: Duration, warm: bool) -> (Vec<Ack>, Arc<SinkStats>) {
        let m = MockCluster::new(1).unwrap();
        m.create_topic(TOPIC, 1, 1).unwrap();
        if !warm {
            m.broker_round_trip_time(1, rtt).unwrap();
        }
        let cfg = KafkaConfig {
            brokers: m.bootstrap_servers(),
            topic: TOPIC.to_string(),
            client_id: "sink-test".to_string(),
            extra_properties: Vec::new(),
            auth: KafkaAuth::None,
        };
        let settings = KafkaSettings {
            max_record_bytes: VALUE_BYTES,
            max_unacked_bytes: 30 * VALUE_BYTES,
            delivery_timeout: Duration::from_secs(30),
        };
        let k = KafkaSink::new(&cfg, settings, None).unwrap();
        let (tx, rx) = channel();
        let (inbox, _wake) = Inbox::new().unwrap();
        let stats = Arc::new(SinkStats::default());
        let mut sink = SinkThread::new(
            Backend::Kafka(Box::new(k)),
            rx,
            vec![inbox.clone()],
            stats.clone(),
        );
        sink.set_waker(tx.waker());
        let thread = std::thread::spawn(move || sink.run());

        if warm {
            let mut first = Vec::new();
            let b = Batch {
                worker: 0,
                records: vec![record(0, 1)],
            };
            assert!(tx.try_send(b).is_ok());
            take_acks(&inbox, &mut first, 1, Duration::from_secs(10));
            assert_eq!(first.len(), 1);
            assert_eq!(first[0].outcome, Outcome::Committed);
            m.broker_round_trip_time(1, rtt).unwrap();
        }
        let mut next = [1u32; 5];
        for i in 0..40u32 {
            let slot = 1 + i % 4;
            let n = &mut next[slot as usize];
            let b = Batch {
                worker: 0,
                records: vec![record(slot, *n)],
            };
            *n += 1;
            assert!(
                tx.try_send(b).is_ok(),
                "the hand-off queue takes 1024 batches"
            );
        }
        let mut acks = Vec::new();
        take_acks(&inbox, &mut acks, 40, Duration::from_secs(60));
        tx.send_shutdown();
        thread.join().unwrap();
        assert_eq!(acks.len(), 40, "every record resolved");
        (acks, stats)
    }

    /// A reachable broker slower than the capture (its answers 100 ms late): the sink stops
    /// taking batches at the bound and the worker's batches wait in the hand-off queue; every
    /// record is committed, none fails as Overloaded (40 records of 8 KiB against a 240 KiB
    /// bound: without the pause the last ten would).
    #[test]
    fn a_kafka_behind_the_capture_slows_the_capture_instead_of_losing_it() {
        let (acks, stats) = run_behind(Duration::from_millis(100), true);
        assert_all_committed_in_order(&acks, &stats);
    }

    /// The same from the first record: a sink that has not yet heard from its broker (not
    /// healthy, not known down) and fills its bound before the first delivery report pauses
    /// too. Before `known_down`, the not-yet-healthy sink took the batches and failed the
    /// last ten records as Overloaded — the loadtest's loss at the start of 64 KiB responses.
    #[test]
    fn a_kafka_not_yet_heard_from_slows_the_capture_instead_of_losing_it() {
        let (acks, stats) = run_behind(Duration::from_millis(100), false);
        assert_all_committed_in_order(&acks, &stats);
    }

    fn assert_all_committed_in_order(acks: &[Ack], stats: &SinkStats) {
        for a in acks {
            assert_eq!(a.outcome, Outcome::Committed, "{a:?}");
        }
        for slot in 1..=4u32 {
            let nums: Vec<u32> = acks
                .iter()
                .filter(|a| a.conn.slot == slot)
                .map(|a| a.number)
                .collect();
            assert_eq!(nums, (1..=10).collect::<Vec<_>>(), "conn {slot} in order");
        }
        assert!(stats.kafka_backpressure.load(Ordering::Relaxed) >= 1);
        assert_eq!(stats.records_failed.load(Ordering::Relaxed), 0);
    }

    /// A broker that takes nothing for longer than KAFKA_PROGRESS_WINDOW (answers 3 s late)
    /// does not hold the clients: once nothing was committed for 2 s the sink takes the
    /// batches again and what does not fit the bound fails as Overloaded (counted; the
    /// records it held are committed when the broker answers).
    #[test]
    fn a_kafka_that_takes_nothing_does_not_hold_the_capture() {
        let (acks, stats) = run_behind(Duration::from_secs(3), true);
        let overloaded = acks
            .iter()
            .filter(|a| a.outcome == Outcome::Failed(FailKind::Overloaded))
            .count();
        let committed = acks
            .iter()
            .filter(|a| a.outcome == Outcome::Committed)
            .count();
        assert!(overloaded > 0, "the batches were taken again: {acks:?}");
        assert_eq!(overloaded + committed, 40, "{acks:?}");
        // Within the window the sink had paused.
        assert!(stats.kafka_backpressure.load(Ordering::Relaxed) >= 1);
    }
}
