//! The durable local spool (`--spool-dir`): an append-only log on local disk for records Kafka
//! cannot take right now, replayed to Kafka in order once it can (also after a restart).
//!
//! Owns: the on-disk format (segment files of checksummed entries), the fsync policy, the
//! replay reader that detects torn and corrupt data and skips it with a warning, truncation
//! (deleting fully drained segment files; a checkpoint of the drain position), and the drain
//! bookkeeping: which spooled entries are in flight to Kafka, which are to be retried, and
//! which connections (keys) still have records in the spool. It knows nothing of rdkafka:
//! `sink/mod.rs` decides what to spool and hands drained entries to `sink/kafka.rs`.
//!
//! May depend on: std, libc (`flock`), `handoff` (`Outcome`, `FailKind`), tracing. Used by the
//! sink thread only; never by a worker.
//!
//! # On-disk format
//! The directory holds `lock` (held with `flock` by the running proxy, so two processes never
//! share a spool), segment files `segment-<16 hex digits>.spool` (the hex number is the
//! segment's sequence number: replay order) and, optionally, `checkpoint` (how far the drain
//! got). A segment is an 8-byte header `CPSPOOL1` followed by entries back to back:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `C5 70 0F E1` (finds the next entry after a corrupt one) |
//! | 4 | body length, u32 little-endian |
//! | 4 | CRC-32C (Castagnoli), u32 LE, of the 4 length bytes and the body |
//! | 2 | body: key length, u16 LE |
//! | n | key: the connection id (UTF-8), the Kafka key |
//! | 4 | record number, u32 LE |
//! | 1 | flags: bit 0 = the connection's final record |
//! | rest | value: the serialized `TrafficStream` |
//!
//! # fsync policy
//! All records of one worker batch that go to the spool are written with one `write` and made
//! durable with one `fdatasync` before any of them is acknowledged (Committed) to its worker,
//! which may then release a held mutating request. Why: the reliability hold promises that a
//! change reaches the source cluster only after its record is stored safely; a spooled record
//! stands in for a replicated Kafka ack, so it must survive a power loss, not only a process
//! kill. One `fdatasync` per batch (not per record) spreads its cost (0.1–2 ms on SSDs) over
//! every record a worker handed over in its ~1 ms batch window. A new segment file also gets
//! its directory fsynced once, so its name survives a power loss. Not fsynced: the checkpoint
//! and segment deletions; losing those (power loss only) replays records Kafka already has —
//! duplicates, never losses.
//!
//! What a crash or SIGKILL can lose with a spool: nothing the spool acknowledged. Records not
//! yet handed to the sink thread, and records already handed to librdkafka (Kafka looked
//! healthy), are lost as they would be without a spool.
//!
//! # Replay and truncation
//! Entries are drained in log order: segments in sequence order (those of earlier runs first),
//! entries in file order. A drained entry stays in the log until Kafka acknowledges it; the
//! drain position (the first entry not yet acknowledged) is checkpointed at most once a second
//! and at shutdown; a segment file is deleted once the drain position has passed its end, and
//! when everything is drained every file goes (the next record starts a new segment). A torn
//! tail (an entry cut short by a crash) or a corrupt entry (checksum mismatch) is skipped with
//! a warning and counted; reading resumes at the next entry that checks out. If Kafka fails a
//! drained entry after it accepted a later entry of the same connection (it went away again
//! mid-drain), the retry lands after that one: the connection is out of order in Kafka (and
//! `inspect` says so), but nothing is lost.
//!
//! Invariants:
//! - An entry is acknowledged to its worker only after its bytes are fsynced.
//! - A key counted in `Spool::holds_key` has at least one entry in the spool that Kafka has
//!   not acknowledged yet; the caller sends every later record of that key to the spool too,
//!   so a connection's records reach Kafka in order.
//! - Entries are handed out by `Spool::next_drain` in log order; after a failure nothing
//!   new is handed out until every in-flight entry is resolved, then (after a short pause) the
//!   failed ones are handed out again, in log order, before anything newer (the pause doubles
//!   with each failed round, up to 16×). Only an entry Kafka refuses for its own sake (too
//!   large) is dropped, counted and logged; a broker, transport or producer error never drops
//!   an entry, however often it repeats.
//! - Nothing here panics on file contents: every length is checked against the file.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod format;

use format::*;
pub use format::{scan_segment, segment_files, Scanned};

use crate::handoff::{FailKind, Outcome};

/// Segment size is the bound divided by this: deleting whole segments means up to one
/// segment of already-drained bytes still counts against the bound; 1/16 keeps that small.
const SEGMENTS_PER_BOUND: u64 = 16;
/// Smallest segment (64 KiB): below this, rotation (a file creation and a directory fsync)
/// would come every few batches.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
/// Largest segment (64 MiB): truncation frees space in steps of at most this much.
const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most often the drain position is written to `checkpoint` (s). It only saves re-sending
/// (duplicates) after a crash, so once a second is plenty.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// After a read error, wait this long before reading the spool again (s), so a failing disk
/// does not turn the sink loop into an error loop.
const READ_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// Most emptied value buffers kept for drained entries (each up to one record).
const VALUE_POOL_MAX: usize = 256;
/// Default pause before re-sending drained entries that failed (500 ms): long enough that an
/// error Kafka returns at once does not become a tight loop, short next to an outage.
const DRAIN_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Each further failed round without a single acknowledgement doubles the pause, up to
/// 2^4 × the base (8 s with the default): a broker that keeps failing everything is asked
/// less often, and one acknowledgement brings the pause back to the base.
const MAX_RETRY_DOUBLINGS: u32 = 4;
/// Least time between two warnings about spooled records Kafka refused for good (s).
const WARN_INTERVAL: Duration = Duration::from_secs(10);
const LOCK_FILE: &str = "lock";

#[derive(thiserror::Error, Debug)]
pub enum SpoolError {
    #[error("spool directory {}: {source}", .dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("spool full: {bytes} bytes stored, bound {max} bytes (--spool-max-bytes)")]
    Full { bytes: u64, max: u64 },
    #[error("record too large for a spool entry (key {key} bytes, value {value} bytes)")]
    TooLarge { key: usize, value: usize },
    #[error("spool file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------------------------
// The spool.
// ---------------------------------------------------------------------------------------------

/// Where the spool lives and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpoolSettings {
    pub dir: PathBuf,
    /// `--spool-max-bytes`: most bytes of segment files (drained parts not yet deleted
    /// included); beyond this, [`Spool::append`] fails with [`SpoolError::Full`].
    pub max_bytes: u64,
    /// A new segment file is started once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// After drained entries failed, wait this long before sending them again.
    pub retry_backoff: Duration,
}

impl SpoolSettings {
    /// Settings for `dir` bounded by `max_bytes`; segments are 1/16 of that (64 KiB..64 MiB).
    pub(crate) fn new(dir: PathBuf, max_bytes: u64) -> SpoolSettings {
        SpoolSettings {
            dir,
            max_bytes,
            segment_bytes: (max_bytes / SEGMENTS_PER_BOUND)
                .clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES),
            retry_backoff: DRAIN_RETRY_BACKOFF,
        }
    }
}

/// Cumulative counters (since the spool was opened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SpoolCounters {
    /// Entries made durable (acknowledged to workers).
    pub spooled: u64,
    /// Entries Kafka acknowledged (the spool may forget them).
    pub drained: u64,
    /// Records not spooled: the spool was full or its write failed.
    pub refused: u64,
    /// Drained entries Kafka failed for a reason worth retrying (re-sent later).
    pub retried: u64,
    /// Drained entries Kafka refused for good (too large); dropped.
    pub dropped: u64,
    /// Torn or corrupt regions skipped while replaying.
    pub skipped_regions: u64,
    pub skipped_bytes: u64,
}

/// An entry handed out for sending to Kafka; report its outcome with [`Spool::drain_ack`]
/// under `id`, and give `value` back with [`Spool::recycle`].
#[derive(Debug)]
pub(crate) struct DrainEntry {
    pub id: u64,
    pub key: Arc<str>,
    pub number: u32,
    pub is_final: bool,
    pub value: Vec<u8>,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Bytes that are readable: the file size for earlier runs' segments, the fsynced end
    /// for the one being written.
    len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Handed to Kafka, no outcome yet.
    Pending,
    /// Acknowledged (or dropped for good): may be forgotten.
    Done,
    /// Failed; to be sent again.
    Retry,
}

/// A drained entry between [`Spool::next_drain`] and its final outcome.
#[derive(Debug)]
struct Slot {
    seq: u64,
    start: u64,
    end: u64,
    /// The key, when it is counted in `keys` (records spooled by this run).
    key: Option<Arc<str>>,
    bytes: usize,
    state: SlotState,
}

/// A position in the log: segment sequence number and byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    seq: u64,
    off: u64,
}

pub(crate) struct Spool {
    settings: SpoolSettings,
    /// Held (flock) while the spool is open.
    _lock: File,
    segments: VecDeque<Segment>,
    /// The segment appended to: always the last of `segments` when set.
    writer: Option<(u64, File)>,
    next_seq: u64,
    /// Sum of `segments[..].len`.
    bytes: u64,
    /// Entries of the batch being built (written by `commit`).
    wbuf: Vec<u8>,
    /// Keys of those entries (to undo their counts if the write fails).
    batch_keys: Vec<Arc<str>>,
    /// Per key (connection) spooled by this run: entries not yet acknowledged by Kafka.
    keys: HashMap<Arc<str>, u32>,
    /// Next entry to read for draining.
    read: Pos,
    /// Drained entries not yet forgotten, in log order; `inflight[i]` has id `base_id + i`.
    inflight: VecDeque<Slot>,
    base_id: u64,
    pending: usize,
    pending_bytes: usize,
    /// Some entry failed: hand out nothing new until nothing is pending, then replay.
    hold: bool,
    /// Failed drain rounds since the last acknowledgement (doubles the retry pause).
    failed_rounds: u32,
    /// After a failure: send nothing (again) before this.
    retry_at: Option<Instant>,
    /// While replaying failed entries: the next index of `inflight` to look at.
    replay: Option<usize>,
    reader: Option<(u64, File)>,
    rbuf: Vec<u8>,
    scan: Vec<u8>,
    values: Vec<Vec<u8>>,
    counters: SpoolCounters,
    /// The last commit failed (the spool does not take records until one succeeds).
    broken: bool,
    read_error_at: Option<Instant>,
    checkpoint_written: Option<Pos>,
    checkpoint_at: Option<Instant>,
    warn_at: Option<Instant>,
    retry_warn_at: Option<Instant>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            SpoolError::Locked(dir.to_path_buf())
        } else {
            SpoolError::Io { path, source: e }
        });
    }
    Ok(f)
}

fn read_checkpoint(dir: &Path) -> Option<Pos> {
    let b = std::fs::read(dir.join(CHECKPOINT_FILE)).ok()?;
    if b.len() != CHECKPOINT_BYTES || !b.starts_with(&CHECKPOINT_MAGIC) {
        return None;
    }
    let body = b.get(..24)?;
    if crc32c(body) != le_u32(&b, 24)? {
        return None;
    }
    let seq = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    let off = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
    Some(Pos { seq, off })
}

impl Spool {
    /// Opens (creating it if needed) and locks the spool directory, and takes stock of what
    /// earlier runs left there; that is drained before anything this run spools.
    pub(crate) fn open(settings: SpoolSettings) -> Result<Spool, SpoolError> {
        let dir = settings.dir.clone();
        let dir_err = |source| SpoolError::Dir {
            dir: dir.clone(),
            source,
        };
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(dir_err)?;
            // Make the new directory's name durable too (best effort).
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                let _ = sync_dir(parent);
            }
        }
        let lock = lock_dir(&dir)?;
        let checkpoint = read_checkpoint(&dir);
        let mut segments = VecDeque::new();
        let mut bytes = 0;
        let mut last_seq = checkpoint.map(|c| c.seq);
        for (seq, path) in segment_files(&dir).map_err(dir_err)? {
            last_seq = Some(last_seq.map_or(seq, |l| l.max(seq)));
            if checkpoint.is_some_and(|c| seq < c.seq) {
                // Drained before the checkpoint was written; its deletion was not.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let len = std::fs::metadata(&path).map_err(io_err(&path))?.len();
            bytes += len;
            segments.push_back(Segment { seq, path, len });
        }
        let next_seq = last_seq.map_or(0, |s| s.saturating_add(1));
        let read = match (checkpoint, segments.front()) {
            (Some(c), Some(first)) if c.seq == first.seq => Pos {
                seq: c.seq,
                off: if (SEGMENT_HEADER_BYTES..=first.len).contains(&c.off) {
                    c.off
                } else {
                    SEGMENT_HEADER_BYTES
                },
            },
            (_, Some(first)) => Pos {
                seq: first.seq,
                off: SEGMENT_HEADER_BYTES,
            },
            (_, None) => Pos {
                seq: next_seq,
                off: SEGMENT_HEADER_BYTES,
            },
        };
        if !segments.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                bytes,
                segments = segments.len(),
                "spool holds records from an earlier run; they go to Kafka once it is reachable"
            );
        }
        Ok(Spool {
            settings,
            _lock: lock,
            segments,
            writer: None,
            next_seq,
            bytes,
            wbuf: Vec::new(),
            batch_keys: Vec::new(),
            keys: HashMap::new(),
            read,
            inflight: VecDeque::new(),
            base_id: 0,
            pending: 0,
            pending_bytes: 0,
            hold: false,
            failed_rounds: 0,
            retry_at: None,
            replay: None,
            reader: None,
            rbuf: Vec::new(),
            scan: Vec::new(),
            values: Vec::new(),
            counters: SpoolCounters::default(),
            broken: false,
            read_error_at: None,
            checkpoint_written: checkpoint,
            checkpoint_at: None,
            warn_at: None,
            retry_warn_at: None,
        })
    }

    /// Bytes of segment files on disk (what counts against the bound).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn counters(&self) -> SpoolCounters {
        self.counters
    }

    /// True when nothing is stored: everything spooled was acknowledged by Kafka.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.wbuf.is_empty()
    }

    /// True while the spool can take records (below its bound, last write succeeded).
    pub(crate) fn accepting(&self) -> bool {
        !self.broken && self.bytes < self.settings.max_bytes
    }

    /// True when records of `key` are in the spool and not yet acknowledged by Kafka: later
    /// records of that connection must be spooled too (order).
    pub(crate) fn holds_key(&self, key: &str) -> bool {
        // The common case (nothing spooled) without hashing the key.
        !self.keys.is_empty() && self.keys.contains_key(key)
    }

    /// Value bytes of drained entries Kafka has not resolved yet.
    pub(crate) fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Adds one record to the current batch. Nothing is durable (or may be acknowledged)
    /// before [`Spool::commit`] succeeds. Fails when the bound would be passed.
    pub(crate) fn append(
        &mut self,
        key: &Arc<str>,
        number: u32,
        is_final: bool,
        value: &[u8],
    ) -> Result<(), SpoolError> {
        let len = entry_len(key.as_bytes(), value) as u64;
        let header = if self.needs_new_segment() {
            SEGMENT_HEADER_BYTES
        } else {
            0
        };
        let total = self
            .bytes
            .saturating_add(self.wbuf.len() as u64)
            .saturating_add(header)
            .saturating_add(len);
        if total > self.settings.max_bytes {
            self.counters.refused += 1;
            return Err(SpoolError::Full {
                bytes: self.bytes,
                max: self.settings.max_bytes,
            });
        }
        if let Err(e) = encode_entry(&mut self.wbuf, key.as_bytes(), number, is_final, value) {
            self.counters.refused += 1;
            return Err(e);
        }
        *self.keys.entry(key.clone()).or_insert(0) += 1;
        self.batch_keys.push(key.clone());
        Ok(())
    }

    fn needs_new_segment(&self) -> bool {
        match (&self.writer, self.segments.back()) {
            (Some((seq, _)), Some(last)) => {
                *seq != last.seq || last.len >= self.settings.segment_bytes
            }
            _ => true,
        }
    }

    /// Writes the batch built by [`Spool::append`] and fsyncs it (the fsync policy); returns
    /// how many entries became durable. On failure none of them counts as spooled: the
    /// segment is cut back to where the batch began (or abandoned if even that fails).
    pub(crate) fn commit(&mut self) -> Result<usize, SpoolError> {
        let n = self.batch_keys.len();
        if n == 0 {
            return Ok(0);
        }
        let res = self.write_batch();
        match res {
            Ok(()) => {
                self.counters.spooled += n as u64;
                self.broken = false;
            }
            Err(_) => {
                for k in self.batch_keys.drain(..) {
                    if let Some(c) = self.keys.get_mut(&k) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            self.keys.remove(&k);
                        }
                    }
                }
                self.counters.refused += n as u64;
                self.broken = true;
            }
        }
        self.batch_keys.clear();
        self.wbuf.clear();
        res.map(|()| n)
    }

    fn write_batch(&mut self) -> Result<(), SpoolError> {
        if self.needs_new_segment() {
            self.start_segment()?;
        }
        let mut abandon = false;
        let res = {
            let Some((seq, file)) = &self.writer else {
                return Err(SpoolError::Io {
                    path: self.settings.dir.clone(),
                    source: io::Error::other("no segment open"),
                });
            };
            let Some(seg) = self.segments.back_mut().filter(|s| s.seq == *seq) else {
                return Err(SpoolError::Io {
                    path: self.settings.dir.clone(),
                    source: io::Error::other("segment bookkeeping lost"),
                });
            };
            let written = file
                .write_all_at(&self.wbuf, seg.len)
                .and_then(|()| file.sync_data());
            match written {
                Ok(()) => {
                    seg.len += self.wbuf.len() as u64;
                    self.bytes += self.wbuf.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    // Cut off what may have reached the file, so a replay cannot resurrect
                    // records reported as failed; if even that fails, write elsewhere from
                    // now on (a replay after a restart may then send some of them anyway).
                    abandon = file
                        .set_len(seg.len)
                        .and_then(|()| file.sync_data())
                        .is_err();
                    Err(SpoolError::Io {
                        path: seg.path.clone(),
                        source: e,
                    })
                }
            }
        };
        if abandon {
            self.writer = None;
        }
        res
    }

    fn start_segment(&mut self) -> Result<(), SpoolError> {
        let seq = self.next_seq;
        let path = self.settings.dir.join(segment_name(seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.next_seq = seq.saturating_add(1);
        let header = file
            .write_all_at(&SEGMENT_MAGIC, 0)
            .and_then(|()| file.sync_data())
            .and_then(|()| sync_dir(&self.settings.dir));
        if let Err(e) = header {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(SpoolError::Io { path, source: e });
        }
        self.bytes += SEGMENT_HEADER_BYTES;
        self.segments.push_back(Segment {
            seq,
            path,
            len: SEGMENT_HEADER_BYTES,
        });
        self.writer = Some((seq, file));
        tracing::debug!(seq, "spool segment started");
        Ok(())
    }

    /// The next entry to send to Kafka, in log order: first failed entries due for another
    /// try, then the next unread one. `None` when nothing is due: all caught up, waiting for
    /// in-flight entries after a failure, or backing off after a read error.
    pub(crate) fn next_drain(&mut self) -> Option<DrainEntry> {
        if self.hold || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if self
            .read_error_at
            .is_some_and(|t| t.elapsed() < READ_ERROR_BACKOFF)
        {
            return None;
        }
        match self.next_drain_inner() {
            Ok(e) => e,
            Err((path, e)) => {
                tracing::error!(path = %path.display(), error = %e, "spool read failed; retrying in a second");
                self.read_error_at = Some(Instant::now());
                None
            }
        }
    }

    fn next_drain_inner(&mut self) -> Result<Option<DrainEntry>, (PathBuf, io::Error)> {
        while let Some(i) = self.replay {
            let Some(slot) = self.inflight.get(i) else {
                self.replay = None;
                break;
            };
            if slot.state != SlotState::Retry {
                self.replay = Some(i + 1);
                continue;
            }
            let (seq, start, end) = (slot.seq, slot.start, slot.end);
            let Some(entry) = self.read_entry(Pos { seq, off: start }, end)? else {
                // Cannot happen (it was read before); drop it rather than loop.
                if let Some(s) = self.inflight.get_mut(i) {
                    s.state = SlotState::Done;
                }
                self.replay = Some(i + 1);
                continue;
            };
            if let Some(s) = self.inflight.get_mut(i) {
                s.state = SlotState::Pending;
                self.pending += 1;
                self.pending_bytes += s.bytes;
            }
            self.replay = Some(i + 1);
            return Ok(Some(DrainEntry {
                id: self.base_id + i as u64,
                ..entry
            }));
        }
        loop {
            let Some(idx) = self.segments.iter().position(|s| s.seq >= self.read.seq) else {
                return Ok(None);
            };
            let Some(seg) = self.segments.get(idx) else {
                return Ok(None);
            };
            if seg.seq > self.read.seq {
                self.read = Pos {
                    seq: seg.seq,
                    off: SEGMENT_HEADER_BYTES,
                };
            }
            let (seq, len, path) = (seg.seq, seg.len, seg.path.clone());
            if self.read.off >= len {
                if idx + 1 < self.segments.len() {
                    self.read = Pos {
                        seq: seq.saturating_add(1),
                        off: SEGMENT_HEADER_BYTES,
                    };
                    continue;
                }
                return Ok(None);
            }
            let file = self.reader_for(seq, &path)?;
            let st = step(&file, self.read.off, len, &mut self.rbuf, &mut self.scan)
                .map_err(|e| (path.clone(), e))?;
            self.reader = Some((seq, file));
            match st {
                Step::End => {
                    self.read.off = len;
                }
                Step::Skipped { start, end, torn } => {
                    self.counters.skipped_regions += 1;
                    self.counters.skipped_bytes += end - start;
                    if torn {
                        tracing::warn!(path = %path.display(), offset = start, bytes = end - start,
                            "spool: torn entry at the end of a segment (cut short by a crash); skipped");
                    } else {
                        tracing::warn!(path = %path.display(), offset = start, bytes = end - start,
                            "spool: corrupt data (checksum mismatch); skipped to the next valid entry");
                    }
                    self.read.off = end;
                }
                Step::Entry { start, end } => {
                    self.read.off = end;
                    let Some(entry) = self.entry_from_rbuf() else {
                        continue;
                    };
                    let counted = self.keys.contains_key(&*entry.key);
                    let bytes = entry.value.len();
                    self.inflight.push_back(Slot {
                        seq,
                        start,
                        end,
                        key: counted.then(|| entry.key.clone()),
                        bytes,
                        state: SlotState::Pending,
                    });
                    self.pending += 1;
                    self.pending_bytes += bytes;
                    let id = self.base_id + (self.inflight.len() - 1) as u64;
                    return Ok(Some(DrainEntry { id, ..entry }));
                }
            }
        }
    }

    fn reader_for(&mut self, seq: u64, path: &Path) -> Result<File, (PathBuf, io::Error)> {
        match self.reader.take() {
            Some((s, f)) if s == seq => Ok(f),
            _ => File::open(path).map_err(|e| (path.to_path_buf(), e)),
        }
    }

    /// Re-reads the (valid) entry at `at` that ends at `end`.
    fn read_entry(
        &mut self,
        at: Pos,
        end: u64,
    ) -> Result<Option<DrainEntry>, (PathBuf, io::Error)> {
        let Some(seg) = self.segments.iter().find(|s| s.seq == at.seq) else {
            return Ok(None);
        };
        let path = seg.path.clone();
        let file = self.reader_for(at.seq, &path)?;
        let p = probe(&file, at.off, end, &mut self.rbuf).map_err(|e| (path.clone(), e))?;
        self.reader = Some((at.seq, file));
        Ok(match p {
            Probe::Valid { .. } => self.entry_from_rbuf(),
            _ => None,
        })
    }

    /// The entry in `rbuf` as a [`DrainEntry`] (id 0), its key shared with `keys` when this
    /// run spooled it.
    fn entry_from_rbuf(&mut self) -> Option<DrainEntry> {
        let Decoded::Entry { entry, .. } = decode_entry(&self.rbuf) else {
            return None;
        };
        let key: Arc<str> = match std::str::from_utf8(entry.key) {
            Ok(k) => match self.keys.get_key_value(k) {
                Some((arc, _)) => arc.clone(),
                None => Arc::from(k),
            },
            Err(_) => Arc::from(String::from_utf8_lossy(entry.key).as_ref()),
        };
        let mut value = self.values.pop().unwrap_or_default();
        value.clear();
        value.extend_from_slice(entry.value);
        Some(DrainEntry {
            id: 0,
            key,
            number: entry.number,
            is_final: entry.is_final,
            value,
        })
    }

    /// Gives a drained entry's value buffer back for reuse.
    pub(crate) fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && self.values.len() < VALUE_POOL_MAX {
            buf.clear();
            self.values.push(buf);
        }
    }

    /// Kafka's outcome for drained entry `id`. Committed (or refused for good: too large)
    /// lets the spool forget it; any other failure makes it due for another try once every
    /// in-flight entry is resolved.
    pub(crate) fn drain_ack(&mut self, id: u64, outcome: Outcome) {
        let Some(i) = id
            .checked_sub(self.base_id)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        let Some(slot) = self.inflight.get_mut(i) else {
            return;
        };
        if slot.state != SlotState::Pending {
            return;
        }
        self.pending = self.pending.saturating_sub(1);
        self.pending_bytes = self.pending_bytes.saturating_sub(slot.bytes);
        match outcome {
            Outcome::Committed => {
                slot.state = SlotState::Done;
                self.counters.drained += 1;
                self.failed_rounds = 0;
            }
            Outcome::Failed(kind) => {
                // Only an error about the record itself drops it. Anything else — a broker,
                // transport or producer-state error, a time-out, one we do not know — says
                // nothing about the record: it stays, and is sent again after a pause.
                if kind == FailKind::TooLarge {
                    slot.state = SlotState::Done;
                    self.counters.dropped += 1;
                    let now = Instant::now();
                    if self
                        .warn_at
                        .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL)
                    {
                        self.warn_at = Some(now);
                        tracing::warn!(
                            reason = kind.as_str(),
                            dropped = self.counters.dropped,
                            "Kafka refuses a spooled record for good; dropped from the spool, its capture is lost"
                        );
                    }
                } else {
                    slot.state = SlotState::Retry;
                    self.counters.retried += 1;
                    self.hold = true;
                    let now = Instant::now();
                    if self
                        .retry_warn_at
                        .is_none_or(|t| now.duration_since(t) >= WARN_INTERVAL)
                    {
                        self.retry_warn_at = Some(now);
                        tracing::warn!(
                            reason = kind.as_str(),
                            retried = self.counters.retried,
                            "Kafka failed a spooled record; it stays in the spool and is sent again"
                        );
                    }
                }
            }
        }
        if self.hold && self.pending == 0 {
            // Everything sent is resolved: after a pause, send the failed ones again, in log
            // order, before anything newer.
            self.hold = false;
            self.replay = Some(0);
            let pause = self
                .settings
                .retry_backoff
                .saturating_mul(1 << self.failed_rounds.min(MAX_RETRY_DOUBLINGS));
            self.failed_rounds = self.failed_rounds.saturating_add(1);
            self.retry_at = Some(Instant::now() + pause);
        }
        self.forget_done();
    }

    /// Drops resolved entries from the front of the in-flight list.
    fn forget_done(&mut self) {
        while let Some(front) = self.inflight.front() {
            if front.state != SlotState::Done {
                break;
            }
            if let Some(slot) = self.inflight.pop_front() {
                if let Some(k) = slot.key {
                    if let Some(c) = self.keys.get_mut(&k) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            self.keys.remove(&k);
                        }
                    }
                }
            }
            self.base_id += 1;
            if let Some(r) = self.replay.as_mut() {
                *r = r.saturating_sub(1);
            }
        }
    }

    /// The first position not yet acknowledged by Kafka.
    fn floor(&self) -> Pos {
        match self.inflight.front() {
            Some(s) => Pos {
                seq: s.seq,
                off: s.start,
            },
            None => self.read,
        }
    }

    /// Deletes drained segment files and, at most once a second, records the drain position.
    /// Call it regularly (the sink thread does after every poll).
    pub(crate) fn maintain(&mut self) {
        self.truncate();
        let due = self
            .checkpoint_at
            .is_none_or(|t| t.elapsed() >= CHECKPOINT_INTERVAL);
        if due && !self.segments.is_empty() && self.checkpoint_written != Some(self.floor()) {
            self.write_checkpoint();
        }
    }

    fn truncate(&mut self) {
        let floor = self.floor();
        let all_done = self.inflight.is_empty()
            && self.wbuf.is_empty()
            && self.segments.back().is_some_and(|last| {
                floor.seq > last.seq || (floor.seq == last.seq && floor.off >= last.len)
            });
        let writer_seq = self.writer.as_ref().map(|(s, _)| *s);
        while let Some(front) = self.segments.front() {
            let drained = front.seq < floor.seq || all_done;
            if !drained || (!all_done && Some(front.seq) == writer_seq) {
                break;
            }
            if let Some(seg) = self.segments.pop_front() {
                if Some(seg.seq) == writer_seq {
                    self.writer = None;
                }
                if self.reader.as_ref().is_some_and(|(s, _)| *s == seg.seq) {
                    self.reader = None;
                }
                match std::fs::remove_file(&seg.path) {
                    Ok(()) => tracing::debug!(seq = seg.seq, "spool segment drained and deleted"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %seg.path.display(), error = %e, "cannot delete a drained spool segment")
                    }
                }
                self.bytes = self.bytes.saturating_sub(seg.len);
            }
        }
        if all_done && self.segments.is_empty() {
            // Nothing is stored, so no key can have records in the spool.
            self.keys.clear();
            self.bytes = 0;
            self.read = Pos {
                seq: self.next_seq,
                off: SEGMENT_HEADER_BYTES,
            };
            if self.checkpoint_written.is_some() {
                let _ = std::fs::remove_file(self.settings.dir.join(CHECKPOINT_FILE));
                self.checkpoint_written = None;
            }
        }
    }

    fn write_checkpoint(&mut self) {
        let floor = self.floor();
        let mut b = Vec::with_capacity(CHECKPOINT_BYTES);
        b.extend_from_slice(&CHECKPOINT_MAGIC);
        b.extend_from_slice(&floor.seq.to_le_bytes());
        b.extend_from_slice(&floor.off.to_le_bytes());
        let crc = crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.settings.dir.join(CHECKPOINT_TMP);
        let res = std::fs::write(&tmp, &b)
            .and_then(|()| std::fs::rename(&tmp, self.settings.dir.join(CHECKPOINT_FILE)));
        self.checkpoint_at = Some(Instant::now());
        match res {
            Ok(()) => self.checkpoint_written = Some(floor),
            Err(e) => tracing::warn!(error = %e, "cannot write the spool checkpoint"),
        }
    }

    /// At shutdown: truncates what was drained and records the drain position. What is still
    /// stored stays for the next start.
    pub(crate) fn close(&mut self) {
        self.truncate();
        if !self.segments.is_empty() {
            if self.checkpoint_written != Some(self.floor()) {
                self.write_checkpoint();
            }
            tracing::info!(
                bytes = self.bytes,
                segments = self.segments.len(),
                "spool keeps records Kafka has not acknowledged; they are sent after the next start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    fn settings(dir: &Path, max: u64) -> SpoolSettings {
        SpoolSettings {
            retry_backoff: Duration::ZERO,
            ..SpoolSettings::new(dir.to_path_buf(), max)
        }
    }

    fn value(k: &str, n: u32, len: usize) -> Vec<u8> {
        let mut v = format!("{k}/{n}:").into_bytes();
        v.resize(len.max(v.len()), b'a' + (n % 26) as u8);
        v
    }

    /// Drains everything due, acking each entry with `outcome`; returns (key, number).
    fn drain_all(sp: &mut Spool, outcome: Outcome) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(e) = sp.next_drain() {
            out.push((e.key.to_string(), e.number, e.value.clone()));
            sp.drain_ack(e.id, outcome);
            sp.recycle(e.value);
        }
        out
    }

    #[test]
    fn crc32c_known_values() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 7, 8, 9, 500, 999, 1000] {
            assert_eq!(
                crc32c_update(crc32c(&data[..cut]), &data[cut..]),
                crc32c(&data),
                "cut {cut}"
            );
        }
        // Byte-at-a-time reference.
        let mut c = !0u32;
        for &b in &data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ CRC32C_POLY
                } else {
                    c >> 1
                };
            }
        }
        assert_eq!(crc32c(&data), !c);
    }

    #[test]
    fn entry_codec_round_trip_and_damage() {
        let mut buf = Vec::new();
        let n1 = encode_entry(&mut buf, b"conn-1", 7, false, b"hello").unwrap();
        let n2 = encode_entry(&mut buf, b"conn-2", 1, true, b"").unwrap();
        assert_eq!(n1, entry_len(b"conn-1", b"hello"));
        assert_eq!(buf.len(), n1 + n2);
        match decode_entry(&buf) {
            Decoded::Entry { entry, len } => {
                assert_eq!(len, n1);
                assert_eq!(
                    entry,
                    EntryRef {
                        key: b"conn-1",
                        number: 7,
                        is_final: false,
                        value: b"hello"
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        match decode_entry(&buf[n1..]) {
            Decoded::Entry { entry, .. } => {
                assert!(entry.is_final);
                assert_eq!(entry.number, 1);
                assert!(entry.value.is_empty());
            }
            other => panic!("{other:?}"),
        }
        // Every cut of the first entry is incomplete, never a panic or a false entry.
        for cut in 0..n1 {
            assert_eq!(decode_entry(&buf[..cut]), Decoded::Incomplete, "cut {cut}");
        }
        // Every single flipped bit is detected.
        for i in 0..n1 {
            for bit in 0..8 {
                let mut b = buf[..n1].to_vec();
                b[i] ^= 1 << bit;
                assert!(
                    !matches!(decode_entry(&b), Decoded::Entry { .. }),
                    "flip {i}:{bit} not detected"
                );
            }
        }
        assert_eq!(decode_entry(b"garbage garbage"), Decoded::Corrupt);
        let huge = vec![0u8; 70_000];
        assert!(matches!(
            encode_entry(&mut Vec::new(), &huge, 1, false, b""),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    #[test]
    fn entries_round_trip_in_order_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path(), 1 << 20);
        s.segment_bytes = 4096;
        let mut sp = Spool::open(s.clone()).unwrap();
        let (a, b) = (key("a"), key("b"));
        let mut want = Vec::new();
        for n in 1..=40u32 {
            for k in [&a, &b] {
                let v = value(k, n, 300);
                sp.append(k, n, n == 40, &v).unwrap();
                want.push((k.to_string(), n, v));
            }
            if n % 3 == 0 {
                assert_eq!(sp.commit().unwrap(), 6);
            }
        }
        sp.commit().unwrap();
        assert!(sp.holds_key("a") && sp.holds_key("b") && !sp.holds_key("c"));
        let files = segment_files(tmp.path()).unwrap();
        assert!(files.len() >= 5, "rotated: {} segments", files.len());
        let on_disk: u64 = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).unwrap().len())
            .sum();
        assert_eq!(on_disk, sp.bytes());
        assert_eq!(sp.counters().spooled, 80);

        let got = drain_all(&mut sp, Outcome::Committed);
        assert_eq!(got, want);
        sp.maintain();
        assert!(sp.is_empty());
        assert_eq!(sp.bytes(), 0);
        assert!(!sp.holds_key("a") && !sp.holds_key("b"));
        assert!(segment_files(tmp.path()).unwrap().is_empty(), "truncated");
        assert_eq!(sp.counters().drained, 80);

        // The spool is usable again afterwards (a new segment).
        sp.append(&a, 41, true, b"x").unwrap();
        sp.commit().unwrap();
        assert_eq!(segment_files(tmp.path()).unwrap().len(), 1);
        let got = drain_all(&mut sp, Outcome::Committed);
        assert_eq!(got, vec![("a".to_string(), 41, b"x".to_vec())]);
    }

    #[test]
    fn segments_are_deleted_as_acks_arrive() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path(), 1 << 20);
        s.segment_bytes = 2048;
        let mut sp = Spool::open(s).unwrap();
        let k = key("k");
        for n in 1..=30u32 {
            sp.append(&k, n, false, &value("k", n, 500)).unwrap();
            sp.commit().unwrap();
        }
        let segs = segment_files(tmp.path()).unwrap().len();
        let mut ids = Vec::new();
        while let Some(e) = sp.next_drain() {
            ids.push(e.id);
        }
        assert_eq!(ids.len(), 30);
        // Acks out of order: nothing can go before the first one is acknowledged.
        for id in ids.iter().skip(1) {
            sp.drain_ack(*id, Outcome::Committed);
        }
        sp.maintain();
        assert_eq!(segment_files(tmp.path()).unwrap().len(), segs);
        assert!(sp.holds_key("k"));
        sp.drain_ack(ids[0], Outcome::Committed);
        sp.maintain();
        assert!(segment_files(tmp.path()).unwrap().is_empty());
        assert!(!sp.holds_key("k"));
    }

    #[test]
    fn replay_after_reopen_in_order_then_new_records() {
        let tmp = tempfile::tempdir().unwrap();
        let s = settings(tmp.path(), 1 << 20);
        {
            let mut sp = Spool::open(s.clone()).unwrap();
            for n in 1..=5u32 {
                sp.append(&key("old"), n, n == 5, &value("old", n, 100))
                    .unwrap();
            }
            sp.commit().unwrap();
            // Two of them drained and acknowledged before the "crash"; the checkpoint is
            // written at close.
            for _ in 0..2 {
                let e = sp.next_drain().unwrap();
                sp.drain_ack(e.id, Outcome::Committed);
            }
            sp.close();
        }
        assert!(
            Spool::open(s.clone()).is_ok(),
            "the lock is released when the spool is dropped"
        );
        let mut sp = Spool::open(s.clone()).unwrap();
        assert!(matches!(Spool::open(s.clone()), Err(SpoolError::Locked(_))));
        assert!(!sp.holds_key("old"), "keys of earlier runs are not held");
        sp.append(&key("new"), 1, false, b"new-1").unwrap();
        sp.commit().unwrap();
        let got: Vec<(String, u32)> = drain_all(&mut sp, Outcome::Committed)
            .into_iter()
            .map(|(k, n, _)| (k, n))
            .collect();
        assert_eq!(
            got,
            vec![
                ("old".into(), 3),
                ("old".into(), 4),
                ("old".into(), 5),
                ("new".into(), 1)
            ],
            "resumes after the checkpoint; earlier runs' records first"
        );
        sp.maintain();
        assert!(segment_files(tmp.path()).unwrap().is_empty());
        assert!(!tmp.path().join(CHECKPOINT_FILE).exists());
    }

    /// Writes `n` entries of key `k` to a fresh spool in `dir` and closes it; returns the
    /// segment path.
    fn write_segment(dir: &Path, n: u32) -> PathBuf {
        let mut sp = Spool::open(settings(dir, 1 << 20)).unwrap();
        for i in 1..=n {
            sp.append(&key("k"), i, false, &value("k", i, 200 + i as usize))
                .unwrap();
        }
        sp.commit().unwrap();
        sp.close();
        let files = segment_files(dir).unwrap();
        assert_eq!(files.len(), 1);
        files[0].1.clone()
    }

    fn entry_offsets(path: &Path) -> Vec<(u64, u64)> {
        scan_segment(path)
            .unwrap()
            .into_iter()
            .filter_map(|s| match s {
                Scanned::Entry { offset, len, .. } => Some((offset, len)),
                Scanned::Skipped { .. } => None,
            })
            .collect()
    }

    #[test]
    fn torn_tail_is_detected_and_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_segment(tmp.path(), 6);
        let offs = entry_offsets(&path);
        assert_eq!(offs.len(), 6);
        let (last_off, last_len) = offs[5];
        let whole = std::fs::read(&path).unwrap();
        for cut in [1, 5, 11, 12, 13, last_len - 1] {
            std::fs::write(&path, &whole[..(last_off + cut) as usize]).unwrap();
            let scanned = scan_segment(&path).unwrap();
            assert_eq!(scanned.len(), 6, "cut {cut}: {scanned:?}");
            assert_eq!(
                scanned[5],
                Scanned::Skipped {
                    offset: last_off,
                    len: cut,
                    torn: true
                },
                "cut {cut}"
            );
        }
        let mut sp = Spool::open(settings(tmp.path(), 1 << 20)).unwrap();
        let got = drain_all(&mut sp, Outcome::Committed);
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(sp.counters().skipped_regions, 1);
        sp.maintain();
        assert!(segment_files(tmp.path()).unwrap().is_empty());
    }

    #[test]
    fn corrupt_entries_are_skipped_and_the_rest_replayed() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write_segment(tmp.path(), 8);
        let offs = entry_offsets(&path);
        let mut bytes = std::fs::read(&path).unwrap();
        // Entry 3: a flipped byte in its value. Entry 5: a flipped byte in its length.
        // Entry 8 (the last): a flipped byte in its magic.
        bytes[(offs[2].0 + offs[2].1 - 3) as usize] ^= 0x40;
        bytes[(offs[4].0 + 5) as usize] ^= 0x01;
        bytes[offs[7].0 as usize] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let scanned = scan_segment(&path).unwrap();
        let kinds: Vec<String> = scanned
            .iter()
            .map(|s| match s {
                Scanned::Entry { number, .. } => format!("e{number}"),
                Scanned::Skipped { len, torn, .. } => {
                    format!("skip{len}{}", if *torn { "t" } else { "" })
                }
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                "e1".to_string(),
                "e2".into(),
                format!("skip{}", offs[2].1),
                "e4".into(),
                format!("skip{}", offs[4].1),
                "e6".into(),
                "e7".into(),
                format!("skip{}", offs[7].1),
            ]
        );
        let mut sp = Spool::open(settings(tmp.path(), 1 << 20)).unwrap();
        let got = drain_all(&mut sp, Outcome::Committed);
        assert_eq!(
            got.iter().map(|g| g.1).collect::<Vec<_>>(),
            vec![1, 2, 4, 6, 7]
        );
        for (k, n, v) in &got {
            assert_eq!(v, &value(k, *n, 200 + *n as usize));
        }
        assert_eq!(sp.counters().skipped_regions, 3);
    }

    #[test]
    fn garbage_segment_and_bad_header_do_not_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let mut junk = b"NOTSPOOL".to_vec();
        junk.extend((0..5000u32).map(|i| (i * 31 % 251) as u8));
        // A valid entry hidden in the junk is still found.
        let mut e = Vec::new();
        encode_entry(&mut e, b"k", 9, true, b"found").unwrap();
        junk.extend_from_slice(&e);
        junk.extend_from_slice(&ENTRY_MAGIC);
        std::fs::write(tmp.path().join(segment_name(3)), &junk).unwrap();
        std::fs::write(tmp.path().join(segment_name(4)), b"CPSP").unwrap();
        let mut sp = Spool::open(settings(tmp.path(), 1 << 20)).unwrap();
        let got = drain_all(&mut sp, Outcome::Committed);
        assert_eq!(got, vec![("k".to_string(), 9, b"found".to_vec())]);
        sp.maintain();
        assert!(segment_files(tmp.path()).unwrap().is_empty());
    }

    #[test]
    fn bound_refuses_records_then_room_returns() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(settings(tmp.path(), 4096)).unwrap();
        let k = key("k");
        let v = vec![1u8; 1000];
        let mut ok = 0;
        loop {
            match sp.append(&k, ok + 1, false, &v) {
                Ok(()) => ok += 1,
                Err(SpoolError::Full { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            sp.commit().unwrap();
        }
        assert_eq!(ok, 4);
        assert!(sp.bytes() <= 4096);
        assert_eq!(sp.counters().refused, 1);
        assert!(sp.accepting(), "room for smaller records");
        drain_all(&mut sp, Outcome::Committed);
        sp.maintain();
        assert_eq!(sp.bytes(), 0);
        sp.append(&k, 6, false, &v).unwrap();
        sp.commit().unwrap();
    }

    #[test]
    fn failed_drains_are_retried_in_order_without_resending_committed_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(settings(tmp.path(), 1 << 20)).unwrap();
        for n in 1..=6u32 {
            sp.append(&key("k"), n, false, &value("k", n, 10)).unwrap();
        }
        sp.commit().unwrap();
        let sent: Vec<DrainEntry> = (0..4).map(|_| sp.next_drain().unwrap()).collect();
        // 2 times out, 1 and 3 commit, 4 is still in flight: nothing new until it resolves.
        sp.drain_ack(sent[1].id, Outcome::Failed(FailKind::Timeout));
        sp.drain_ack(sent[0].id, Outcome::Committed);
        sp.drain_ack(sent[2].id, Outcome::Committed);
        assert!(sp.next_drain().is_none(), "held while 4 is in flight");
        sp.drain_ack(sent[3].id, Outcome::Failed(FailKind::Shutdown));
        let again: Vec<u32> = std::iter::from_fn(|| {
            let e = sp.next_drain()?;
            let n = e.number;
            sp.drain_ack(e.id, Outcome::Committed);
            Some(n)
        })
        .collect();
        assert_eq!(again, vec![2, 4, 5, 6]);
        assert_eq!(sp.counters().retried, 2);
        assert_eq!(sp.counters().drained, 6);
        sp.maintain();
        assert!(sp.is_empty());
        // Too large: dropped, not retried.
        sp.append(&key("k"), 7, false, b"v").unwrap();
        sp.commit().unwrap();
        let e = sp.next_drain().unwrap();
        sp.drain_ack(e.id, Outcome::Failed(FailKind::TooLarge));
        assert!(sp.next_drain().is_none());
        assert_eq!(sp.counters().dropped, 1);
        assert!(!sp.holds_key("k"));
        // An error that is not the record's own, however often: never dropped, retried in
        // order until Kafka takes it (a fenced or dead producer, a broker that keeps failing).
        sp.append(&key("p"), 1, false, b"unlucky").unwrap();
        sp.append(&key("p"), 2, false, b"fine").unwrap();
        sp.commit().unwrap();
        for kind in (0..40).map(|i| {
            if i % 2 == 0 {
                FailKind::SinkError
            } else {
                FailKind::Timeout
            }
        }) {
            let e = sp.next_drain().unwrap();
            assert_eq!(e.number, 1);
            sp.drain_ack(e.id, Outcome::Failed(kind));
        }
        let got: Vec<u32> = drain_all(&mut sp, Outcome::Committed)
            .into_iter()
            .map(|g| g.1)
            .collect();
        assert_eq!(got, vec![1, 2], "kept, in order");
        assert_eq!(
            sp.counters().dropped,
            1,
            "only the too-large record was dropped"
        );
        sp.maintain();
        assert!(sp.is_empty());
    }

    #[test]
    fn retries_wait_for_the_backoff() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(tmp.path(), 1 << 20);
        s.retry_backoff = Duration::from_millis(200);
        let mut sp = Spool::open(s).unwrap();
        sp.append(&key("k"), 1, false, b"v").unwrap();
        sp.commit().unwrap();
        let e = sp.next_drain().unwrap();
        sp.drain_ack(e.id, Outcome::Failed(FailKind::Timeout));
        let t0 = Instant::now();
        assert!(sp.next_drain().is_none(), "backing off");
        while sp.next_drain().is_none() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t0.elapsed() >= Duration::from_millis(150));
    }

    #[test]
    fn failed_write_rolls_back_the_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sp = Spool::open(settings(tmp.path(), 1 << 20)).unwrap();
        sp.append(&key("a"), 1, false, b"one").unwrap();
        sp.commit().unwrap();
        // Swap the writer's file for a read-only handle: the next write fails.
        let (seq, _) = sp.writer.take().unwrap();
        let path = tmp.path().join(segment_name(seq));
        sp.writer = Some((seq, File::open(&path).unwrap()));
        sp.append(&key("a"), 2, false, b"two").unwrap();
        sp.append(&key("b"), 1, false, b"b-one").unwrap();
        assert!(sp.commit().is_err());
        assert!(!sp.accepting());
        assert!(sp.holds_key("a") && !sp.holds_key("b"));
        assert_eq!(sp.counters().refused, 2);
        // A later batch goes to a new segment and the spool works again.
        sp.append(&key("a"), 3, false, b"three").unwrap();
        sp.commit().unwrap();
        assert!(sp.accepting());
        let got: Vec<u32> = drain_all(&mut sp, Outcome::Committed)
            .into_iter()
            .map(|g| g.1)
            .collect();
        assert_eq!(got, vec![1, 3]);
    }

    #[test]
    fn segment_names_parse() {
        assert_eq!(parse_segment_name(&segment_name(0)), Some(0));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("segment-12.spool"), None);
        assert_eq!(parse_segment_name("lock"), None);
        assert!(segment_name(10) < segment_name(11));
    }
}
