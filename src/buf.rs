//! A worker's buffer pools: I/O buffers (64 KiB, one per direction with bytes in flight),
//! streaming buffers (1 MiB, for directions moving a large body) and record buffers (the
//! capture records handed to the sink come back emptied and are reused), so steady state
//! allocates nothing.
//!
//! May depend on: nothing of the crate (a leaf): std only.
//!
//! Invariant: every pool is bounded (the `*_MAX` constants below): a buffer given back to a
//! full pool is freed; at most [`STREAM_BUFS_MAX`] streaming buffers are leased at a time.
//! Owned by one worker thread (`RefCell`, `Cell`, `Rc`); no borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

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
/// exchanges up to 64 KiB end below 128 KiB, and the builder grows record buffers to powers of
/// two, so a record crossing 64 KiB lands in exactly 128 KiB (until 2026-12-07 it grew to
/// exactly what was needed, 128 KiB plus a few bytes, which this pool dropped: see
/// `capture::builder`'s `grown_capacity`). With a 64 KiB cap those buffers were freed and
/// regrown on every such record: perf of 64 KiB responses captured to files showed
/// `finish_grow`'s copy at 4.5 % of the proxy's CPU (and every keep-alive connection of small
/// requests reallocated once per 64 KiB of capture). Records of large bodies grow
/// toward `--maxTrafficBufferSize` (1 MiB); those are kept by the large pool only.
/// 256 × 128 KiB bounds this pool at 32 MiB per worker, reached only if that many records
/// were once in flight together.
const RECORD_BUF_POOLED_MAX_BYTES: usize = 128 * 1024;
/// Most larger record buffers a worker keeps (beyond that they are freed): enough for the
/// large records in flight under a stream of 1 MiB bulk requests (about two per request until
/// acknowledged), so they are not regrown by doubling each time (measured: regrowing cost ~4 %
/// of the worker's CPU on 1 MiB POSTs), while bounding the pool to 8 × 1 MiB.
const RECORD_POOL_LARGE_MAX: usize = 8;

/// A worker's read buffers: idle 64 KiB ones and the streaming ones.
#[derive(Default)]
pub struct IoBufs {
    io: RefCell<Vec<Vec<u8>>>,
    stream: StreamBufs,
}

impl IoBufs {
    /// An idle 64 KiB buffer, or a new one.
    pub fn take(&self) -> Vec<u8> {
        self.io
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(IO_BUF_BYTES))
    }

    /// Returns a 64 KiB or streaming buffer to its pool (smaller ones are dropped).
    pub fn put(&self, mut b: Vec<u8>) {
        if b.capacity() >= STREAM_BUF_BYTES {
            self.stream.put(b);
            return;
        }
        let mut p = self.io.borrow_mut();
        if p.len() < IO_POOL_MAX && b.capacity() >= IO_BUF_BYTES {
            b.clear();
            p.push(b);
        }
    }

    /// A streaming buffer and its lease, unless [`STREAM_BUFS_MAX`] are leased already (see
    /// [`StreamBufs::take`]).
    pub fn take_stream(&self) -> Option<(Vec<u8>, StreamLease)> {
        self.stream.take()
    }
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

/// A worker's idle record buffers: the ones up to [`RECORD_BUF_POOLED_MAX_BYTES`] (at most
/// [`RECORD_POOL_MAX`]) and the larger ones (at most [`RECORD_POOL_LARGE_MAX`]).
pub struct RecordBufs {
    small: Vec<Vec<u8>>,
    large: Vec<Vec<u8>>,
}

impl Default for RecordBufs {
    fn default() -> Self {
        RecordBufs {
            small: Vec::new(),
            large: Vec::with_capacity(RECORD_POOL_LARGE_MAX),
        }
    }
}

impl RecordBufs {
    /// A buffer for a new record: a large one first (it is already resident, and the record
    /// may well grow), else a small one, else a new empty one.
    pub fn take(&mut self) -> Vec<u8> {
        self.large
            .pop()
            .or_else(|| self.small.pop())
            .unwrap_or_default()
    }

    /// Keeps a buffer the sink gave back (emptied) while its pool has room.
    pub fn put(&mut self, buf: Vec<u8>) {
        if buf.capacity() > RECORD_BUF_POOLED_MAX_BYTES {
            if self.large.len() < RECORD_POOL_LARGE_MAX {
                self.large.push(buf);
            }
        } else if self.small.len() < RECORD_POOL_MAX {
            self.small.push(buf);
        }
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

    #[test]
    fn record_buffers_prefer_large_ones_and_stay_bounded() {
        let mut p = RecordBufs::default();
        p.put(Vec::with_capacity(1024));
        p.put(Vec::with_capacity(RECORD_BUF_POOLED_MAX_BYTES + 1));
        assert!(
            p.take().capacity() > RECORD_BUF_POOLED_MAX_BYTES,
            "the large one first"
        );
        assert_eq!(p.take().capacity(), 1024);
        assert_eq!(
            p.take().capacity(),
            0,
            "an empty pool gives a new empty buffer"
        );
        for _ in 0..RECORD_POOL_MAX + 5 {
            p.put(Vec::with_capacity(16));
        }
        for _ in 0..RECORD_POOL_LARGE_MAX + 5 {
            p.put(Vec::with_capacity(RECORD_BUF_POOLED_MAX_BYTES + 1));
        }
        assert_eq!(p.small.len(), RECORD_POOL_MAX);
        assert_eq!(p.large.len(), RECORD_POOL_LARGE_MAX);
    }

    #[test]
    fn io_buffers_go_back_to_their_own_pool() {
        let p = IoBufs::default();
        let mut b = p.take();
        assert!(b.capacity() >= IO_BUF_BYTES);
        b.extend_from_slice(b"x");
        let ptr = b.as_ptr();
        p.put(b);
        let again = p.take();
        assert_eq!(again.as_ptr(), ptr, "reused");
        assert!(again.is_empty(), "emptied");
        p.put(Vec::with_capacity(16));
        assert!(p.io.borrow().is_empty(), "a small buffer is not kept");
        p.put(Vec::with_capacity(STREAM_BUF_BYTES));
        assert_eq!(
            p.stream.idle.borrow().len(),
            1,
            "a streaming buffer goes to its pool"
        );
    }
}
