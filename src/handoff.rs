//! The only worker↔sink channel on the data path: whole batches of encoded records go from a
//! worker to the single sink thread; acknowledgements (and the emptied buffers, for reuse)
//! come back to the worker that owns each connection.
//!
//! May depend on: std only. Knows nothing of Kafka, files, sockets or HTTP.
//!
//! Invariants:
//! - Workers never block here: [`BatchSender::try_send`] fails fast when the queue is full and
//!   the worker keeps the batch (back-pressure on reading from its clients).
//! - Every record handed over gets exactly one [`Ack`] back (committed or failed), in the
//!   order the sink resolved it; buffers travel back with the acks so steady state allocates
//!   nothing.
//! - A worker is woken at most once per burst of acks: the sink writes one byte to the
//!   worker's wake socket only when the inbox goes from empty to non-empty.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which connection a record belongs to: the owning worker, the connection's slot in that
/// worker's table and the slot's generation (so a late ack for a closed connection whose slot
/// was reused is recognised and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub worker: u16,
    pub slot: u32,
    pub generation: u32,
}

/// One serialized `TrafficStream`, ready for the sink.
#[derive(Debug)]
pub struct Record {
    pub conn: ConnRef,
    /// The connection id: the Kafka key (the same for every record of a connection).
    pub key: Arc<str>,
    /// 1-based record number within the connection.
    pub number: u32,
    pub is_final: bool,
    /// The serialized record (a Kafka value / one file line before base64).
    pub value: Vec<u8>,
}

/// Why a record could not be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// Larger than the sink accepts.
    TooLarge,
    /// Not acknowledged before its delivery deadline.
    Timeout,
    /// The sink's memory bound for unacknowledged records was reached.
    Overloaded,
    /// The sink reported an error (I/O error, broker error).
    SinkError,
    /// The process is shutting down and the record could not be delivered in time.
    Shutdown,
}

impl FailKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailKind::TooLarge => "record too large",
            FailKind::Timeout => "delivery timed out",
            FailKind::Overloaded => "sink overloaded",
            FailKind::SinkError => "sink error",
            FailKind::Shutdown => "shutdown before delivery",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    Failed(FailKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub conn: ConnRef,
    pub number: u32,
    pub is_final: bool,
    pub outcome: Outcome,
}

/// A worker's batch: records of many connections, in the order they were finished.
#[derive(Debug, Default)]
pub struct Batch {
    pub worker: u16,
    pub records: Vec<Record>,
}

/// Messages to the sink thread.
#[derive(Debug)]
pub enum SinkMsg {
    Batch(Batch),
    /// Nothing to hand over: the sink has events to serve (see [`SinkWaker`]).
    Wake,
    /// Stop after everything before this message is resolved.
    Shutdown,
}

/// Wakes the sink thread from a thread that is not a worker — librdkafka's, when an event
/// (a delivery report) lands in its empty queue — so the sink sleeps on the queue instead of
/// polling on a timer. Never blocks: on a full queue the sink is busy anyway and polls
/// before it sleeps again.
#[derive(Clone)]
pub struct SinkWaker {
    tx: SyncSender<SinkMsg>,
}

impl SinkWaker {
    pub fn wake(&self) {
        let _ = self.tx.try_send(SinkMsg::Wake);
    }
}

/// What a worker receives back: acks plus emptied buffers for reuse.
#[derive(Debug, Default)]
pub struct Returned {
    pub acks: Vec<Ack>,
    /// Emptied record buffers (capacity kept).
    pub buffers: Vec<Vec<u8>>,
    /// Emptied `Batch::records` vectors (capacity kept).
    pub record_vecs: Vec<Vec<Record>>,
}

impl Returned {
    fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.buffers.is_empty() && self.record_vecs.is_empty()
    }
}

/// Most emptied buffers a worker's inbox keeps for return; more are freed. 256 × a typical
/// small record buffer (a few KiB) bounds what sits idle in the inbox.
const MAX_RETURNED_BUFFERS: usize = 256;
/// Most emptied batch vectors the inbox keeps for return: enough for the batches in flight
/// in steady state (a sink that keeps up holds a handful).
pub(crate) const MAX_RETURNED_RECORD_VECS: usize = 64;

/// The sink→worker inbox of one worker.
pub struct Inbox {
    returned: Mutex<Returned>,
    /// True while a wake byte is outstanding (set by the sink, cleared by the worker).
    wake_pending: AtomicBool,
    /// True when the worker should look at its control flags (drain, stop).
    control: AtomicBool,
    wake_tx: Mutex<UnixStream>,
}

impl Inbox {
    /// Creates the inbox and the worker's end of its wake socket.
    pub fn new() -> std::io::Result<(Arc<Inbox>, UnixStream)> {
        let (tx, rx) = UnixStream::pair()?;
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((
            Arc::new(Inbox {
                returned: Mutex::new(Returned::default()),
                wake_pending: AtomicBool::new(false),
                control: AtomicBool::new(false),
                wake_tx: Mutex::new(tx),
            }),
            rx,
        ))
    }

    /// Sink side: add acks and buffers, waking the worker if needed.
    pub fn deliver(
        &self,
        acks: &mut Vec<Ack>,
        buffers: &mut Vec<Vec<u8>>,
        recs: Option<Vec<Record>>,
    ) {
        {
            let mut r = match self.returned.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            r.acks.append(acks);
            for b in buffers.drain(..) {
                if r.buffers.len() < MAX_RETURNED_BUFFERS {
                    r.buffers.push(b);
                }
            }
            if let Some(v) = recs {
                if r.record_vecs.len() < MAX_RETURNED_RECORD_VECS {
                    r.record_vecs.push(v);
                }
            }
        }
        self.wake();
    }

    /// Ask the worker to look at its control flags.
    pub(crate) fn poke_control(&self) {
        self.control.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Ok(mut tx) = self.wake_tx.lock() {
                // A full socket buffer means a wake is already pending: nothing lost.
                let _ = tx.write(&[1u8]);
            }
        }
    }

    /// Worker side: take everything delivered so far, swapping in `spare` (emptied) so the
    /// vectors' capacity circulates. Clears the wake flag first so a delivery racing with
    /// this take wakes the worker again.
    pub fn take(&self, spare: &mut Returned) -> bool {
        self.wake_pending.store(false, Ordering::Release);
        let mut r = match self.returned.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if r.is_empty() {
            return false;
        }
        std::mem::swap(&mut *r, spare);
        true
    }

    /// Worker side: was a control change signalled since the last call?
    pub(crate) fn take_control(&self) -> bool {
        self.control.swap(false, Ordering::AcqRel)
    }
}

fn batch_bytes(b: &Batch) -> usize {
    b.records.iter().map(|r| r.value.len()).sum()
}

/// Worker side of the batch queue.
#[derive(Clone)]
pub struct BatchSender {
    tx: SyncSender<SinkMsg>,
    /// Bytes of records in the queue (all workers), bounded by `MAX_QUEUED_BYTES`.
    queued: Arc<AtomicUsize>,
}

impl BatchSender {
    /// Never blocks. On a full queue (by batches or by bytes) the batch is handed back.
    pub fn try_send(&self, batch: Batch) -> Result<(), Batch> {
        let bytes = batch_bytes(&batch);
        let now = self.queued.load(Ordering::Acquire);
        if now > 0 && now + bytes > MAX_QUEUED_BYTES {
            return Err(batch);
        }
        self.queued.fetch_add(bytes, Ordering::AcqRel);
        match self.tx.try_send(SinkMsg::Batch(batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(SinkMsg::Batch(b)))
            | Err(TrySendError::Disconnected(SinkMsg::Batch(b))) => {
                self.queued.fetch_sub(bytes, Ordering::AcqRel);
                Err(b)
            }
            Err(_) => Err(Batch::default()),
        }
    }
    /// A waker for this queue's sink. While one exists the queue never reports every sender
    /// gone: the sink then ends on [`SinkMsg::Shutdown`] only (as the runtime always sends).
    pub fn waker(&self) -> SinkWaker {
        SinkWaker {
            tx: self.tx.clone(),
        }
    }

    /// Used once, at shutdown, from a non-worker thread (may block).
    pub(crate) fn send_shutdown(&self) {
        let _ = self.tx.send(SinkMsg::Shutdown);
    }
}

/// Sink side of the batch queue.
pub struct BatchReceiver {
    rx: Receiver<SinkMsg>,
    queued: Arc<AtomicUsize>,
}

impl BatchReceiver {
    /// Waits up to `timeout`; `None` on timeout, `Some(Shutdown)` when every sender is gone.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<SinkMsg> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => Some(self.taken(m)),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(SinkMsg::Shutdown),
        }
    }

    pub(crate) fn try_recv(&self) -> Option<SinkMsg> {
        self.rx.try_recv().ok().map(|m| self.taken(m))
    }

    fn taken(&self, m: SinkMsg) -> SinkMsg {
        if let SinkMsg::Batch(b) = &m {
            self.queued.fetch_sub(batch_bytes(b), Ordering::AcqRel);
        }
        m
    }

    /// Bytes of records waiting in the queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// A worker hands its batch over once it holds this many bytes of records (bytes), so a batch
/// is at most this plus its last record. 256 KiB amortises the queue operation and the sink's
/// write over many records without delaying much.
pub(crate) const BATCH_MAX_BYTES: usize = 256 * 1024;

/// Batches the queue holds before workers see back-pressure. 1024 batches of up to
/// `BATCH_MAX_BYTES` each is far above what the sink drains per millisecond, so a full
/// queue means the sink is genuinely behind.
pub(crate) const QUEUE_BATCHES: usize = 1024;

/// Most bytes of records waiting in the queue (64 MiB): bounds the memory a slow sink can
/// pin (the queue alone would allow 1024 batches of ~1 MiB records); at the bound, workers
/// pause reading from their peers (back-pressure). A single batch larger than the bound is
/// still accepted when the queue is empty.
pub(crate) const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

pub fn channel() -> (BatchSender, BatchReceiver) {
    let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_BATCHES);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        BatchSender {
            tx,
            queued: queued.clone(),
        },
        BatchReceiver { rx, queued },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn rec(n: u32) -> Record {
        Record {
            conn: ConnRef {
                worker: 0,
                slot: 1,
                generation: 2,
            },
            key: Arc::from("c"),
            number: n,
            is_final: false,
            value: vec![1, 2, 3],
        }
    }

    #[test]
    fn batches_flow_and_queue_bounds() {
        let (tx, rx) = channel();
        for i in 0..QUEUE_BATCHES {
            assert!(tx
                .try_send(Batch {
                    worker: 0,
                    records: vec![rec(i as u32)]
                })
                .is_ok());
        }
        let back = tx.try_send(Batch {
            worker: 0,
            records: vec![rec(9)],
        });
        assert_eq!(
            back.unwrap_err().records[0].number,
            9,
            "full queue hands the batch back"
        );
        match rx.recv_timeout(Duration::from_millis(10)) {
            Some(SinkMsg::Batch(b)) => assert_eq!(b.records[0].number, 0),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn queue_is_bounded_by_bytes() {
        let (tx, rx) = channel();
        let big = |n: u32| Batch {
            worker: 0,
            records: vec![Record {
                value: vec![0u8; MAX_QUEUED_BYTES / 2 + 1],
                ..rec(n)
            }],
        };
        assert!(tx.try_send(big(1)).is_ok());
        assert!(tx.try_send(big(2)).is_err(), "over the byte bound");
        assert!(rx.try_recv().is_some());
        assert_eq!(rx.queued_bytes(), 0);
        assert!(
            tx.try_send(big(3)).is_ok(),
            "room again once the sink took the batch"
        );
    }

    #[test]
    fn inbox_wakes_once_per_burst() {
        let (inbox, mut rx) = Inbox::new().unwrap();
        let ack = Ack {
            conn: ConnRef {
                worker: 0,
                slot: 0,
                generation: 0,
            },
            number: 1,
            is_final: false,
            outcome: Outcome::Committed,
        };
        for _ in 0..3 {
            inbox.deliver(&mut vec![ack], &mut vec![vec![0u8; 4]], None);
        }
        let mut buf = [0u8; 16];
        assert_eq!(
            rx.read(&mut buf).unwrap(),
            1,
            "one wake byte for three deliveries"
        );
        let mut spare = Returned::default();
        assert!(inbox.take(&mut spare));
        assert_eq!(spare.acks.len(), 3);
        assert_eq!(spare.buffers.len(), 3);
        assert!(!inbox.take(&mut Returned::default()));
        inbox.deliver(&mut vec![ack], &mut vec![], None);
        assert_eq!(rx.read(&mut buf).unwrap(), 1, "woken again after take");
    }
}
