//! The single sink thread: takes whole batches from the workers, commits each record to the
//! configured sink (file, or Kafka in `kafka.rs`), and sends one ack per record back to the
//! owning worker together with the emptied buffers.
//!
//! May depend on: `handoff`, `capture` types, the sink back-ends. Never runs on a worker.
//!
//! Invariant: every record received is acknowledged exactly once; on shutdown everything
//! received before `SinkMsg::Shutdown` is committed (or failed) and the sink is synced.

pub mod file;
pub mod kafka;
pub mod msk_iam;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::handoff::{Ack, BatchReceiver, FailKind, Inbox, Outcome, Record, SinkMsg};

/// Counters the sink thread publishes (read by the admin endpoint and tests).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub records_committed: AtomicU64,
    pub bytes_committed: AtomicU64,
    pub records_failed: AtomicU64,
    pub batches: AtomicU64,
    /// 1 while the sink can take records, 0 when it is failing.
    pub healthy: AtomicU64,
}

/// The configured back-end, opened before the thread starts so start-up errors surface.
pub enum Backend {
    /// `--noCapture`: workers produce no records; the thread only answers shutdown.
    Null,
    File(file::FileSink),
    Kafka(Box<kafka::KafkaSink>),
}

impl kafka::TokenProvider for msk_iam::MskIamTokenProvider {
    fn token(&self) -> Result<(String, i64, String), String> {
        msk_iam::MskIamTokenProvider::token(self)
    }
}

/// How long the sink thread waits for a batch before doing periodic work. 50 ms keeps
/// shutdown and health reporting prompt without busy waiting.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Longest single wait for Kafka delivery reports while records are unacknowledged (ms):
/// bounds the extra latency a held request sees beyond the broker round trip.
const KAFKA_POLL_SLICE: Duration = Duration::from_millis(1);
/// At shutdown, most time to wait for Kafka to acknowledge what it holds (s). Within the
/// systemd unit's TimeoutStopSec (60 s) after the 30 s drain.
const KAFKA_CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct SinkThread {
    backend: Backend,
    rx: BatchReceiver,
    inboxes: Vec<Arc<Inbox>>,
    stats: Arc<SinkStats>,
    acks: Vec<Vec<Ack>>,
    bufs: Vec<Vec<Vec<u8>>>,
    warn: crate::stats::RateLimit,
    /// Per-record append results of the current batch (reused).
    ok: Vec<bool>,
}

impl SinkThread {
    pub fn new(
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
            acks: (0..n).map(|_| Vec::new()).collect(),
            bufs: (0..n).map(|_| Vec::new()).collect(),
            warn: crate::stats::RateLimit::new(Duration::from_secs(60)),
            ok: Vec::new(),
        }
    }

    /// Runs until `SinkMsg::Shutdown`.
    pub fn run(mut self) {
        loop {
            let busy = self.kafka_unacked() > 0;
            // While Kafka holds unacknowledged records, keep serving its delivery reports
            // (in ≤1 ms slices) between batches; otherwise sleep on the queue.
            let msg = if busy {
                self.rx.try_recv()
            } else {
                self.rx.recv_timeout(IDLE_WAIT)
            };
            let got = msg.is_some();
            match msg {
                None => {}
                Some(SinkMsg::Batch(b)) => self.handle_batch(b.worker, b.records),
                Some(SinkMsg::Shutdown) => {
                    while let Some(SinkMsg::Batch(b)) = self.rx.try_recv() {
                        self.handle_batch(b.worker, b.records);
                    }
                    self.shutdown();
                    return;
                }
            }
            self.poll_kafka(if busy && !got {
                KAFKA_POLL_SLICE
            } else {
                Duration::ZERO
            });
        }
    }

    fn kafka_unacked(&self) -> usize {
        match &self.backend {
            Backend::Kafka(k) => k.unacked().0,
            _ => 0,
        }
    }

    /// Serves Kafka delivery reports and hands the resolved acks to their workers.
    fn poll_kafka(&mut self, timeout: Duration) {
        let Backend::Kafka(k) = &mut self.backend else {
            return;
        };
        let (acks, bufs, stats) = (&mut self.acks, &mut self.bufs, &self.stats);
        let mut done = |ack: Ack, buf: Vec<u8>| resolve(acks, bufs, stats, ack, buf);
        k.poll(timeout, &mut done);
        stats
            .healthy
            .store(u64::from(k.healthy()), Ordering::Relaxed);
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

/// Starts the sink thread, pinned to `cpu` when given.
pub fn spawn(
    thread: SinkThread,
    cpu: Option<usize>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("cp-sink".into())
        .spawn(move || {
            if let Some(c) = cpu {
                crate::runtime::pin_current_thread(c);
            }
            thread.run()
        })
}
