//! File sink: writes `TrafficStream` records to local trace files, one record per line, the
//! line being the standard base64 (with padding) of the serialized record followed by `\n`
//! (capture-format.md, "Other encodings"; the Replayer's file input reads exactly this).
//! Also the read side of that format (`list_trace_files`, `read_trace_lines`) for `inspect`.
//!
//! Owns: trace file naming (`capture-<node_id>-<seq:06>.log`), size-based rotation, the write
//! buffer and the commit/fsync points. Runs on the single sink thread, never on a worker.
//!
//! May depend on: nothing of the crate: std, `libc` (`sync_file_range`, `posix_fadvise`,
//! `O_DIRECT`), `base64` (decoding), `base64-simd` (encoding), `thiserror` and `tracing`.
//!
//! Invariants:
//! - An existing file is never overwritten or appended to: every file is created with
//!   `create_new`, and a new `FileSink` starts after the highest sequence number already in the
//!   directory for its node id.
//! - A file only ever contains whole lines written by one sink, in append order; after an I/O
//!   error the sink abandons the file (it may end in a torn line) and continues in a new one,
//!   so a torn line can never merge with a later record.
//! - Once `commit` returns `Ok`, every record appended so far is in the kernel (survives a
//!   process crash); once `sync` (or a rotation) returns `Ok`, it is on disk.
//! - Steady state allocates nothing per record: lines are base64-encoded straight into one
//!   reused write buffer, which `write(2)` takes from (no copy between an encoding buffer and
//!   a write buffer); it keeps the size of the largest record seen, at most about 4/3 of
//!   `--maxTrafficBufferSize`, or [`WRITE_BUFFER_BYTES`] when that is larger.
//! - Write-behind: at most about two windows (`WRITE_BEHIND_WINDOW_BYTES`) of the current file
//!   stay in the page cache. Behind that, every committed byte has been written to the storage
//!   device and its pages handed back to the kernel (`sync_file_range` +
//!   `POSIX_FADV_DONTNEED`), so a sustained capture reuses a few recently freed pages instead of
//!   growing the page cache and its dirty backlog (which the kernel would later make the writer
//!   wait for all at once). File systems that cannot (tmpfs keeps its pages, which are the data;
//!   others refuse `sync_file_range`) keep the plain write path.
//! - Direct writes: where the file system takes `O_DIRECT`, a write of at least
//!   [`DIRECT_MIN_BYTES`] sends its whole blocks ([`DIRECT_ALIGN`]) from the write buffer to
//!   the device without the page cache, and only the partial last block goes through the page
//!   cache; that block stays at the front of the write buffer so the next direct write starts
//!   block-aligned (it rewrites those same bytes). A file's bytes are identical either way.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Size of the write buffer the lines are encoded into, in bytes: its lines are written out
/// once the next line would take it past this size, and at `commit`. A batch of typical
/// records (a few KiB each) is pushed with a handful of `write(2)` calls; a line larger than
/// this is written alone (the buffer grows to hold it), so it bounds memory, not record size.
/// 256 KiB keeps syscalls rare without holding much uncommitted data.
pub(crate) const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Write-behind window, in bytes of the current file: once this much more has been committed,
/// its writeback to the device is started (without waiting), and the window before it, whose
/// writeback was started one window earlier, is waited for and dropped from the page cache.
/// 8 MiB: two windows (16 MiB) bound the file's pages in memory; a device writing 1 GB/s
/// needs ~8 ms per window, which is usually over by the time the next window is committed, so
/// the wait rarely blocks; and three syscalls per 8 MiB are nothing against the writes.
pub(crate) const WRITE_BEHIND_WINDOW_BYTES: u64 = 8 * 1024 * 1024;

/// Block size of direct writes, in bytes: their file offset, length and buffer address are
/// multiples of it. 4 KiB is the page size and the block size of ext4 and XFS as usually
/// made, and a multiple of every device's logical block (512 B or 4 KiB); a file system that
/// needs more refuses the write (EINVAL) and the sink falls back to the page cache.
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// Least bytes a write must have for its whole blocks to go to the device directly, in bytes.
/// A direct write waits for the device, and on a virtual machine each request to the device
/// costs an exit to the host: small direct writes cost more CPU and time than copying into
/// the page cache and letting the kernel write back large runs (64 KiB responses captured to
/// ext4 on this project's test VM, writes of ~176 KiB: 6.0k against 8.7-10.1k responses a
/// second, the same sink CPU; held 4 KiB POSTs 42.6k against 49.0k req/s). Large records are
/// where the page cache's per-page work dominates (1 MiB POSTs: 892 against 736 req/s, 931
/// against 1 143 CPU-µs each). 1 MiB: only such records' lines (values of 768 KiB and more)
/// go direct; commits of ordinary batches stay in the page cache.
pub(crate) const DIRECT_MIN_BYTES: usize = 1024 * 1024;

/// How many successive sequence numbers `open`/rotation try when the chosen file name already
/// exists (only possible if another process writes the same node id into the same directory).
/// Small because a collision is already a misconfiguration; we fail loudly rather than scan.
const MAX_CREATE_ATTEMPTS: u32 = 16;

/// Width of the zero-padded sequence number in file names (`capture-<node>-000001.log`) so
/// that names of one node sort lexically in order up to a million files.
const SEQ_WIDTH: usize = 6;

const FILE_PREFIX: &str = "capture-";
const FILE_SUFFIX: &str = ".log";

/// Errors of the writer side.
#[derive(thiserror::Error, Debug)]
pub enum FileSinkError {
    #[error("trace file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "trace file {}: an append failed since the last commit; those records are not committed",
        .path.display()
    )]
    AppendFailed { path: PathBuf },
    #[error(
        "node id {0:?} cannot be used in a trace file name (allowed: ASCII letters, digits, '-', '_', '.')"
    )]
    InvalidNodeId(String),
    #[error(
        "no free trace file name for node {node_id} in {} after {attempts} attempts \
         (is another process writing the same node id here?)",
        .dir.display()
    )]
    NoFreeName {
        dir: PathBuf,
        node_id: String,
        attempts: u32,
    },
}

fn io_err(path: &Path, source: io::Error) -> FileSinkError {
    FileSinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file currently being appended to.
struct CurrentFile {
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT` (module doc), None where the file system or an
    /// earlier refusal rules direct writes out.
    direct: Option<File>,
    /// File offset of the write buffer's first byte (block-aligned while `direct` is Some).
    out_pos: u64,
    /// Bytes appended to this file so far (in the write buffer or written).
    bytes: u64,
    /// Write-behind: writeback has been started for `..started_to`, and `..dropped_to` has
    /// been written to the device and dropped from the page cache.
    started_to: u64,
    dropped_to: u64,
    /// Tests: the error the write-behind's wait for a window's writeback reports instead of
    /// asking the kernel (a device error cannot be provoked on the test machines).
    #[cfg(test)]
    fail_writeback_wait: Option<i32>,
}

/// Appends base64 lines to `capture-<node_id>-<seq>.log` files in one directory, rotating by
/// size. The first file is opened eagerly by `open`, so an unwritable directory is reported at
/// startup rather than at the first record.
pub(crate) struct FileSink {
    dir: PathBuf,
    node_id: String,
    max_file_bytes: u64,
    /// Sequence number of the current file, or of the last file used when `current` is None.
    seq: u64,
    current: Option<CurrentFile>,
    /// The write buffer: lines of the current file appended since they were last written
    /// out are `out[..out_len]`, each encoded here directly. Only ever grown (zero-filled
    /// once), never re-zeroed: `resize` per record cost a memset of every line (1.3 % of the
    /// proxy's CPU capturing 64 KiB responses, perf). Lines used to be encoded into a line
    /// buffer and copied into a `BufWriter`: capturing 64 KiB responses (88 KiB lines, out of
    /// cache) that copy cost the sink thread 3-4 µs of its 53-55 µs per response (three
    /// alternations, 2026-12-07). Block-aligned for direct writes (module doc); while the
    /// file is written directly, `out[..out_written]` is the file's partial last block, already
    /// written through the page cache and kept for the next direct write.
    out: AlignedBuf,
    out_len: usize,
    out_written: usize,
    bytes_written: u64,
    records_written: u64,
    files_rotated: u64,
    /// Set when an `append` failed since the last `commit`: that `commit` must fail so the
    /// caller never counts as committed a record whose buffered bytes were discarded.
    failed_since_commit: Option<PathBuf>,
    /// Write-behind window in bytes (`WRITE_BEHIND_WINDOW_BYTES`); None once the file system
    /// refused `sync_file_range` (then every file keeps the plain write path).
    write_behind: Option<u64>,
    /// Whether new files are opened for direct writes too; false once the file system
    /// refused `O_DIRECT` (at open or at a write).
    direct: bool,
}

impl FileSink {
    /// Creates `dir` if missing and opens the first file eagerly, named
    /// `capture-<node_id>-<seq:06>.log` with `seq` one above the highest existing sequence
    /// number for this node id in `dir` (1 when there is none). Never overwrites a file.
    pub(crate) fn open(
        dir: &Path,
        node_id: &str,
        max_file_bytes: u64,
    ) -> Result<Self, FileSinkError> {
        if !valid_node_id(node_id) {
            return Err(FileSinkError::InvalidNodeId(node_id.to_owned()));
        }
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut highest = 0u64;
        for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let name = entry.file_name();
            if let Some((node, Some(seq))) = name.to_str().and_then(parse_trace_file_name) {
                if node == node_id {
                    highest = highest.max(seq);
                }
            }
        }
        let mut sink = FileSink {
            dir: dir.to_path_buf(),
            node_id: node_id.to_owned(),
            max_file_bytes,
            seq: highest,
            current: None,
            out: AlignedBuf::default(),
            out_len: 0,
            out_written: 0,
            bytes_written: 0,
            records_written: 0,
            files_rotated: 0,
            failed_since_commit: None,
            write_behind: Some(WRITE_BEHIND_WINDOW_BYTES),
            direct: true,
        };
        sink.open_next()?;
        Ok(sink)
    }

    /// Appends one record as a base64 line. If the current file already holds data and the
    /// line would take it past `max_file_bytes`, rotates first (a record larger than the limit
    /// goes alone into its own file). The line sits in the write buffer until `commit`.
    ///
    /// On error the record is not written, the current file is abandoned (the sink continues
    /// in a new file on the next call) and the next `commit` fails too: every record appended
    /// since the last successful `commit` counts as not committed (some of them may still
    /// have reached a file, so a failure can over-report loss, never under-report it).
    pub(crate) fn append(&mut self, value: &[u8]) -> Result<(), FileSinkError> {
        let result = self.append_inner(value);
        if result.is_err() && self.failed_since_commit.is_none() {
            self.failed_since_commit = Some(match &result {
                Err(FileSinkError::Io { path, .. }) => path.clone(),
                _ => self.dir.clone(),
            });
        }
        result
    }

    fn append_inner(&mut self, value: &[u8]) -> Result<(), FileSinkError> {
        let line_len = line_len(value.len());
        let must_rotate = match &self.current {
            Some(cur) => {
                cur.bytes > 0 && cur.bytes.saturating_add(line_len as u64) > self.max_file_bytes
            }
            None => false,
        };
        if must_rotate {
            self.rotate()?;
        } else if self.current.is_none() {
            self.open_next()?;
        }
        if self.out_len > 0 && self.out_len.saturating_add(line_len) > WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        self.encode_line(value);
        if self.out_len >= WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        let Some(cur) = self.current.as_mut() else {
            // open_next/rotate returned Ok, so a file is open; keep the type system honest.
            return Err(io_err(
                &self.dir,
                io::Error::other("file sink has no open file"),
            ));
        };
        cur.bytes = cur.bytes.saturating_add(line_len as u64);
        self.bytes_written = self.bytes_written.saturating_add(line_len as u64);
        self.records_written = self.records_written.saturating_add(1);
        Ok(())
    }

    /// Writes the buffered lines to the current file and empties the buffer (but for a partial
    /// last block kept for direct writes, module doc): whole blocks of a large write go to the
    /// device directly, the rest through the page cache (`pwrite(2)`). On error the file is
    /// abandoned (its buffered lines are dropped with it).
    fn write_out(&mut self) -> Result<(), FileSinkError> {
        let (len, written) = (self.out_len, self.out_written);
        if len <= written {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut() else {
            // Lines are only buffered while a file is open (abandoning one drops them).
            self.out_len = 0;
            self.out_written = 0;
            return Err(io_err(
                &self.dir,
                io::Error::other("file sink has buffered lines but no open file"),
            ));
        };
        let buf = self.out.bytes().get(..len).unwrap_or(&[]);
        let mut done = written;
        let blocks_end = len - len % DIRECT_ALIGN;
        if len - written >= DIRECT_MIN_BYTES && blocks_end > written {
            if let (Some(direct), Some(blocks)) = (&cur.direct, buf.get(..blocks_end)) {
                match direct.write_all_at(blocks, cur.out_pos) {
                    Ok(()) => done = blocks_end,
                    Err(e) if direct_unsupported(&e) => {
                        // Nothing is lost: the same bytes go through the page cache below.
                        tracing::info!(
                            dir = %self.dir.display(),
                            error = %e,
                            "trace files: this file system refused a direct write; \
                             writing through the page cache"
                        );
                        cur.direct = None;
                        self.direct = false;
                    }
                    Err(e) => {
                        let path = cur.path.clone();
                        self.abandon_current();
                        return Err(io_err(&path, e));
                    }
                }
            }
        }
        if let Some(rest) = buf.get(done..len) {
            if let Err(e) = cur.file.write_all_at(rest, cur.out_pos + done as u64) {
                let path = cur.path.clone();
                self.abandon_current();
                return Err(io_err(&path, e));
            }
        }
        if cur.direct.is_some() {
            // Keep the partial last block at the front: the next direct write starts there.
            self.out.bytes_mut().copy_within(blocks_end..len, 0);
            cur.out_pos += blocks_end as u64;
            self.out_len = len - blocks_end;
        } else {
            cur.out_pos += len as u64;
            self.out_len = 0;
        }
        self.out_written = self.out_len;
        Ok(())
    }

    /// Pushes buffered bytes to the OS (`write(2)`). After `Ok`, every record appended since
    /// the previous `commit` survives a process crash (not a power loss: see `sync`). Called
    /// at the end of every batch. Fails (`AppendFailed`) when an `append` failed since the
    /// previous `commit`; either way the next batch starts clean.
    ///
    /// Also drives the write-behind (module doc): it may wait for the device to finish a
    /// window whose writeback was started one window earlier. A device error there fails the
    /// commit like a failed write (the file is abandoned).
    pub(crate) fn commit(&mut self) -> Result<(), FileSinkError> {
        let failed = self.failed_since_commit.take();
        self.write_out()?;
        if let Some(cur) = self.current.as_mut() {
            let pushed = match self.write_behind {
                Some(window) => write_behind(cur, window),
                None => Ok(WriteBehind::Done),
            };
            match pushed {
                Ok(WriteBehind::Done) => {}
                Ok(WriteBehind::Unsupported(e)) => {
                    tracing::info!(
                        dir = %self.dir.display(),
                        error = %e,
                        "trace files: this file system has no write-behind (sync_file_range); \
                         written pages stay in the page cache until the kernel writes them back"
                    );
                    self.write_behind = None;
                }
                Err(e) => {
                    let path = cur.path.clone();
                    self.abandon_current();
                    return Err(io_err(&path, e));
                }
            }
        }
        match failed {
            Some(path) => Err(FileSinkError::AppendFailed { path }),
            None => Ok(()),
        }
    }

    /// `commit`, then fsync the current file and the directory. Called at shutdown.
    pub(crate) fn sync(&mut self) -> Result<(), FileSinkError> {
        self.commit()?;
        if let Some(cur) = self.current.as_mut() {
            if let Err(e) = cur.file.sync_all() {
                let path = cur.path.clone();
                self.abandon_current();
                return Err(io_err(&path, e));
            }
        }
        sync_dir(&self.dir)
    }

    /// Path of the file currently appended to (None only after an I/O error, until the next
    /// `append` opens a new file).
    #[cfg(test)]
    pub(crate) fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.path.as_path())
    }

    /// Total bytes successfully appended (base64 lines including `\n`), over all files;
    /// includes bytes a later failed `commit` did not commit.
    #[cfg(test)]
    pub(crate) fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Total records successfully appended, over all files (same caveat).
    #[cfg(test)]
    pub(crate) fn records_written(&self) -> u64 {
        self.records_written
    }

    /// How many times a full file was closed (flushed + fsynced) and the next one opened.
    #[cfg(test)]
    pub(crate) fn files_rotated(&self) -> u64 {
        self.files_rotated
    }

    /// Encodes `value` as base64 + `\n` at the end of the write buffer (`out[..out_len]`
    /// grows by [`line_len`] bytes), growing the buffer if the line does not fit.
    fn encode_line(&mut self, value: &[u8]) {
        let engine = base64_simd::STANDARD;
        let b64_len = engine.encoded_length(value.len());
        let start = self.out_len;
        let end = start.saturating_add(b64_len);
        if self.out.len() <= end {
            self.out
                .grow(end.saturating_add(1).max(WRITE_BUFFER_BYTES), start);
        }
        let Some(dst) = self.out.bytes_mut().get_mut(start..end) else {
            return;
        };
        // The output is exactly `encoded_length` long, so the encoder cannot run short.
        let written = engine
            .encode(value, base64_simd::Out::from_slice(dst))
            .len();
        let nl = start.saturating_add(written);
        if let Some(b) = self.out.bytes_mut().get_mut(nl) {
            *b = b'\n';
            self.out_len = nl.saturating_add(1);
        }
    }

    /// Flushes and fsyncs the current file, then opens the next one.
    fn rotate(&mut self) -> Result<(), FileSinkError> {
        self.write_out()?;
        // A partial last block kept for direct writes is written; it belongs to this file.
        self.out_len = 0;
        self.out_written = 0;
        if let Some(cur) = self.current.take() {
            if let Err(e) = cur.file.sync_all() {
                // The file is abandoned.
                return Err(io_err(&cur.path, e));
            }
            // On the device now: none of its pages need to stay in the page cache.
            if self.write_behind.is_some() {
                drop_cached(&cur.file, 0, 0);
            }
            tracing::debug!(path = %cur.path.display(), bytes = cur.bytes, "trace file closed");
        }
        self.open_next()?;
        self.files_rotated = self.files_rotated.saturating_add(1);
        Ok(())
    }

    /// Creates the file with the next free sequence number and makes it current.
    fn open_next(&mut self) -> Result<(), FileSinkError> {
        for _ in 0..MAX_CREATE_ATTEMPTS {
            self.seq = self.seq.saturating_add(1);
            let path = self
                .dir
                .join(trace_file_name(&self.node_id, self.seq).as_str());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    // Make the new name durable (and with it the previous file's, on rotation).
                    sync_dir(&self.dir)?;
                    tracing::debug!(path = %path.display(), "trace file opened");
                    let direct = if self.direct {
                        self.open_direct(&path)
                    } else {
                        None
                    };
                    self.current = Some(CurrentFile {
                        path,
                        file,
                        direct,
                        out_pos: 0,
                        bytes: 0,
                        started_to: 0,
                        dropped_to: 0,
                        #[cfg(test)]
                        fail_writeback_wait: None,
                    });
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tracing::warn!(path = %path.display(), "trace file already exists; skipping");
                }
                Err(e) => return Err(io_err(&path, e)),
            }
        }
        Err(FileSinkError::NoFreeName {
            dir: self.dir.clone(),
            node_id: self.node_id.clone(),
            attempts: MAX_CREATE_ATTEMPTS,
        })
    }

    /// Opens `path` a second time for direct writes; None (and no more tries) where the file
    /// system refuses `O_DIRECT`.
    fn open_direct(&mut self, path: &Path) -> Option<File> {
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::info!(
                    dir = %self.dir.display(),
                    error = %e,
                    "trace files: this file system has no direct I/O (O_DIRECT); \
                     writing through the page cache"
                );
                self.direct = false;
                None
            }
        }
    }

    /// Drops the current file and its buffered lines (after an I/O error).
    fn abandon_current(&mut self) {
        self.out_len = 0;
        self.out_written = 0;
        if let Some(cur) = self.current.take() {
            tracing::warn!(path = %cur.path.display(), "abandoning trace file after an I/O error");
        }
    }
}

/// What [`write_behind`] did.
enum WriteBehind {
    Done,
    /// The file system refused `sync_file_range` (the error says how); nothing was changed.
    Unsupported(io::Error),
}

/// One step of the write-behind after a commit put `..cur.bytes` into the kernel: once a
/// window has been committed past `started_to`, starts its writeback and finishes the window
/// before it (waits for its writeback, drops its pages). An `Err` is a device error for bytes
/// already committed: they may not be on the device.
fn write_behind(cur: &mut CurrentFile, window: u64) -> io::Result<WriteBehind> {
    let committed = cur.bytes;
    if committed.saturating_sub(cur.started_to) < window {
        return Ok(WriteBehind::Done);
    }
    let file = &cur.file;
    if let Err(e) = sync_range(file, cur.started_to, committed, libc::SYNC_FILE_RANGE_WRITE) {
        return match e.raw_os_error() {
            Some(libc::EINVAL | libc::ESPIPE | libc::EOPNOTSUPP | libc::ENOSYS) => {
                Ok(WriteBehind::Unsupported(e))
            }
            _ => Err(e),
        };
    }
    let previous = cur.started_to;
    cur.started_to = committed;
    if previous > cur.dropped_to {
        #[cfg(test)]
        if let Some(errno) = cur.fail_writeback_wait {
            return Err(io::Error::from_raw_os_error(errno));
        }
        sync_range(
            file,
            cur.dropped_to,
            previous,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )?;
        drop_cached(file, cur.dropped_to, previous - cur.dropped_to);
        cur.dropped_to = previous;
    }
    Ok(WriteBehind::Done)
}

/// Length of `value`'s line in a trace file: its padded base64 and the `\n`.
fn line_len(value_len: usize) -> usize {
    base64_simd::STANDARD
        .encoded_length(value_len)
        .saturating_add(1)
}

/// A zero-filled byte buffer whose first byte is [`DIRECT_ALIGN`]-aligned, as direct writes
/// need. Only ever grown, never shrunk or re-zeroed.
#[derive(Default)]
struct AlignedBuf {
    raw: Vec<u8>,
    /// Offset of the first aligned byte in `raw`.
    start: usize,
}

impl AlignedBuf {
    /// Usable bytes.
    fn len(&self) -> usize {
        self.raw.len().saturating_sub(self.start)
    }

    fn bytes(&self) -> &[u8] {
        self.raw.get(self.start..).unwrap_or(&[])
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.raw.get_mut(self.start..).unwrap_or(&mut [])
    }

    /// Grows to at least `len` usable bytes, keeping the first `keep`.
    fn grow(&mut self, len: usize, keep: usize) {
        let mut raw = vec![0u8; len.saturating_add(DIRECT_ALIGN)];
        let start = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        if let (Some(dst), Some(src)) = (
            raw.get_mut(start..start.saturating_add(keep)),
            self.bytes().get(..keep),
        ) {
            dst.copy_from_slice(src);
        }
        self.raw = raw;
        self.start = start;
    }
}

/// True for the errors a file system answers a direct write it cannot do with (alignment it
/// does not accept, no direct I/O at all): not a device error, the bytes just go through the
/// page cache instead.
fn direct_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP))
}

/// `sync_file_range(2)` over the bytes `from..to` of `file`.
fn sync_range(file: &File, from: u64, to: u64, flags: libc::c_uint) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(from),
        libc::off64_t::try_from(to.saturating_sub(from)),
    ) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: a plain system call on a descriptor this `File` owns; no memory is passed.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Advises the kernel that the bytes `offset..offset + len` of `file` (`len` 0: to the end)
/// will not be read again, so their clean pages can be freed at once. Advisory: the kernel
/// keeps what it cannot drop (dirty pages, tmpfs pages), and an error changes nothing.
fn drop_cached(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: a plain system call on a descriptor this `File` owns; no memory is passed.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(errno = rc, "posix_fadvise(DONTNEED) on a trace file failed");
    }
}

fn sync_dir(dir: &Path) -> Result<(), FileSinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

fn valid_node_id(node_id: &str) -> bool {
    !node_id.is_empty()
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `capture-<node_id>-<seq:06>.log`.
pub(crate) fn trace_file_name(node_id: &str, seq: u64) -> String {
    format!("{FILE_PREFIX}{node_id}-{seq:0SEQ_WIDTH$}{FILE_SUFFIX}")
}

/// Splits a `capture-*.log` file name into (node id, sequence number). The sequence number is
/// the all-digit part after the last `-`; a `capture-*.log` name without one yields
/// `(whole middle part, None)`. Other names yield None.
fn parse_trace_file_name(name: &str) -> Option<(&str, Option<u64>)> {
    let middle = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if let Some((node, seq)) = middle.rsplit_once('-') {
        if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = seq.parse::<u64>() {
                return Some((node, Some(n)));
            }
        }
    }
    Some((middle, None))
}

/// All `capture-*.log` regular files of `dir`, sorted by node id, then sequence number (names
/// without a numeric sequence come first within their node id, then by name).
pub(crate) fn list_trace_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found: Vec<(String, Option<u64>, String, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some((node, seq)) = parse_trace_file_name(name) else {
            continue;
        };
        if !entry.file_type()?.is_file() {
            continue;
        }
        found.push((node.to_owned(), seq, name.to_owned(), entry.path()));
    }
    found.sort_by(|a, b| (&a.0, a.1, &a.2).cmp(&(&b.0, b.1, &b.2)));
    Ok(found.into_iter().map(|(_, _, _, p)| p).collect())
}

/// A line of a trace file that could not be read back. Displays as `path:line: reason`.
#[derive(thiserror::Error, Debug)]
pub enum TraceReadError {
    #[error("{}:{line}: read failed: {source}", .path.display())]
    Io {
        path: PathBuf,
        /// 0 when the file could not be opened.
        line: u64,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}: not valid base64: {source}", .path.display())]
    Base64 {
        path: PathBuf,
        line: u64,
        #[source]
        source: base64::DecodeError,
    },
    #[error("{}:{line}: empty line", .path.display())]
    EmptyLine { path: PathBuf, line: u64 },
    #[error(
        "{}:{line}: last line has no newline and is not valid base64 (torn write?): {source}",
        .path.display()
    )]
    TornLine {
        path: PathBuf,
        line: u64,
        #[source]
        source: base64::DecodeError,
    },
}

impl TraceReadError {
    /// The file and 1-based line number (0 = the file itself) the error is about.
    #[cfg(test)]
    pub(crate) fn location(&self) -> (&Path, u64) {
        match self {
            TraceReadError::Io { path, line, .. }
            | TraceReadError::Base64 { path, line, .. }
            | TraceReadError::EmptyLine { path, line }
            | TraceReadError::TornLine { path, line, .. } => (path, *line),
        }
    }

    /// The reason alone, without the `path:line: ` prefix of `Display`.
    pub(crate) fn reason(&self) -> String {
        match self {
            TraceReadError::Io { source, .. } => format!("read failed: {source}"),
            TraceReadError::Base64 { source, .. } => format!("not valid base64: {source}"),
            TraceReadError::EmptyLine { .. } => "empty line".to_owned(),
            TraceReadError::TornLine { source, .. } => {
                format!("last line has no newline and is not valid base64 (torn write?): {source}")
            }
        }
    }

    /// True for errors after which the iterator stops (I/O), false for a bad line that is
    /// skipped.
    pub(crate) fn is_fatal(&self) -> bool {
        matches!(self, TraceReadError::Io { .. })
    }
}

/// Iterator over the base64-decoded record values of one trace file, see `read_trace_lines`.
pub(crate) struct TraceLines {
    path: PathBuf,
    reader: Option<BufReader<File>>,
    open_error: Option<io::Error>,
    line_no: u64,
    buf: Vec<u8>,
}

impl TraceLines {
    /// 1-based line number of the item most recently returned (0 before the first).
    pub(crate) fn line_number(&self) -> u64 {
        self.line_no
    }
}

/// Reads `path` line by line, yielding each line's base64-decoded value. A line that does not
/// decode yields an `Err` naming file and line, and reading continues with the next line; an
/// I/O error (including failure to open the file) yields one `Err` and ends the iteration.
/// A trailing `\r` is tolerated; a final line without `\n` is accepted if it decodes.
pub(crate) fn read_trace_lines(path: &Path) -> TraceLines {
    let (reader, open_error) = match File::open(path) {
        Ok(f) => (Some(BufReader::new(f)), None),
        Err(e) => (None, Some(e)),
    };
    TraceLines {
        path: path.to_path_buf(),
        reader,
        open_error,
        line_no: 0,
        buf: Vec::new(),
    }
}

impl Iterator for TraceLines {
    type Item = Result<Vec<u8>, TraceReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(source) = self.open_error.take() {
            return Some(Err(TraceReadError::Io {
                path: self.path.clone(),
                line: 0,
                source,
            }));
        }
        let reader = self.reader.as_mut()?;
        self.buf.clear();
        let n = match reader.read_until(b'\n', &mut self.buf) {
            Ok(n) => n,
            Err(source) => {
                self.reader = None;
                return Some(Err(TraceReadError::Io {
                    path: self.path.clone(),
                    line: self.line_no.saturating_add(1),
                    source,
                }));
            }
        };
        if n == 0 {
            self.reader = None;
            return None;
        }
        self.line_no = self.line_no.saturating_add(1);
        let mut text: &[u8] = &self.buf;
        let terminated = text.last() == Some(&b'\n');
        if terminated {
            text = text.get(..text.len() - 1).unwrap_or_default();
        }
        if text.last() == Some(&b'\r') {
            text = text.get(..text.len() - 1).unwrap_or_default();
        }
        if text.is_empty() {
            return Some(Err(TraceReadError::EmptyLine {
                path: self.path.clone(),
                line: self.line_no,
            }));
        }
        Some(match STANDARD.decode(text) {
            Ok(v) => Ok(v),
            Err(source) if terminated => Err(TraceReadError::Base64 {
                path: self.path.clone(),
                line: self.line_no,
                source,
            }),
            Err(source) => Err(TraceReadError::TornLine {
                path: self.path.clone(),
                line: self.line_no,
                source,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The SIMD encoder writes exactly the standard padded base64 of every length (all tail
    /// cases, and lengths past the SIMD block sizes).
    #[test]
    fn line_encoding_is_standard_base64() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(tmp.path(), "node-1", 1 << 20).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for n in (0..200).chain([1023, 1024, 1025, 4095, 4999, 5000]) {
            sink.out_len = 0;
            sink.encode_line(&data[..n]);
            let mut want = STANDARD.encode(&data[..n]).into_bytes();
            want.push(b'\n');
            assert_eq!(want.len(), line_len(n), "length {n}");
            assert_eq!(&sink.out.bytes()[..sink.out_len], &want[..], "length {n}");
        }
        // Lines follow each other in the buffer, and one larger than the buffer grows it.
        sink.out_len = 0;
        sink.encode_line(b"ab");
        sink.encode_line(&data[..3]);
        let mut want = STANDARD.encode(b"ab").into_bytes();
        want.push(b'\n');
        want.extend_from_slice(STANDARD.encode(&data[..3]).as_bytes());
        want.push(b'\n');
        assert_eq!(&sink.out.bytes()[..sink.out_len], &want[..]);
        let big = vec![7u8; WRITE_BUFFER_BYTES];
        sink.encode_line(&big);
        assert_eq!(sink.out_len, want.len() + line_len(big.len()));
    }

    fn values(n: usize, size: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| (0..size).map(|j| (i * 31 + j * 7) as u8).collect())
            .collect()
    }

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for f in list_trace_files(dir).unwrap() {
            for v in read_trace_lines(&f) {
                out.push(v.unwrap());
            }
        }
        out
    }

    #[test]
    fn append_commit_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("traces/sub");
        let mut sink = FileSink::open(&dir, "node-1", 1 << 20).unwrap();
        let first = sink.current_path().unwrap().to_path_buf();
        assert_eq!(
            first.file_name().unwrap().to_str().unwrap(),
            "capture-node-1-000001.log"
        );
        let vals = values(20, 100);
        for v in &vals {
            sink.append(v).unwrap();
        }
        sink.append(b"").unwrap(); // empty value still a (padded-to-nothing) line? see below
        sink.commit().unwrap();
        // The empty value encodes to an empty line, which the reader reports.
        let mut lines = read_trace_lines(&first);
        for v in &vals {
            assert_eq!(&lines.next().unwrap().unwrap(), v);
        }
        let e = lines.next().unwrap().unwrap_err();
        assert!(
            matches!(e, TraceReadError::EmptyLine { line: 21, .. }),
            "{e}"
        );
        assert!(lines.next().is_none());
        assert_eq!(sink.records_written(), 21);
        assert_eq!(sink.files_rotated(), 0);
        let expected: u64 = vals
            .iter()
            .map(|v| v.len().div_ceil(3) as u64 * 4 + 1)
            .sum();
        assert_eq!(sink.bytes_written(), expected + 1);
        assert_eq!(fs::metadata(&first).unwrap().len(), expected + 1);
    }

    #[test]
    fn lines_are_standard_base64_with_padding() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(tmp.path(), "n", 1 << 20).unwrap();
        sink.append(&[0xfb, 0xff]).unwrap(); // needs '+'/'/' alphabet and padding
        sink.append(b"hello").unwrap();
        sink.sync().unwrap();
        let text = fs::read_to_string(sink.current_path().unwrap()).unwrap();
        assert_eq!(text, "+/8=\naGVsbG8=\n");
    }

    #[test]
    fn commit_makes_data_visible_without_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(tmp.path(), "n", 1 << 20).unwrap();
        sink.append(b"abc").unwrap();
        let path = sink.current_path().unwrap().to_path_buf();
        assert_eq!(fs::metadata(&path).unwrap().len(), 0, "still buffered");
        sink.commit().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "YWJj\n");
        drop(sink);
    }

    #[test]
    fn rotation_keeps_order_and_loses_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        // Each 90-byte value is a 121-byte line; 400-byte files hold 3 lines.
        let mut sink = FileSink::open(tmp.path(), "abc-def", 400).unwrap();
        let vals = values(10, 90);
        for v in &vals {
            sink.append(v).unwrap();
            sink.commit().unwrap();
        }
        sink.sync().unwrap();
        let files = list_trace_files(tmp.path()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "capture-abc-def-000001.log",
                "capture-abc-def-000002.log",
                "capture-abc-def-000003.log",
                "capture-abc-def-000004.log"
            ]
        );
        for f in &files[..3] {
            assert_eq!(fs::metadata(f).unwrap().len(), 363);
        }
        assert_eq!(sink.files_rotated(), 3);
        assert_eq!(read_all(tmp.path()), vals);
    }

    #[test]
    fn oversized_record_gets_its_own_file() {
        let tmp = tempfile::tempdir().unwrap();
        let mut sink = FileSink::open(tmp.path(), "n", 100).unwrap();
        let small = vec![1u8; 10];
        let big = vec![2u8; 300];
        sink.append(&big).unwrap(); // first file empty: goes in without rotating
        sink.append(&small).unwrap();
        sink.append(&big).unwrap();
        sink.append(&small).unwrap();
        sink.sync().unwrap();
        let files = list_trace_files(tmp.path()).unwrap();
        assert_eq!(files.len(), 4);
        let per_file: Vec<usize> = files.iter().map(|f| read_trace_lines(f).count()).collect();
        assert_eq!(per_file, [1, 1, 1, 1]);
        assert_eq!(
            read_all(tmp.path()),
            [big.clone(), small.clone(), big, small]
        );
    }

    #[test]
    fn reopen_continues_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let mut sink = FileSink::open(tmp.path(), "n1", 10).unwrap();
            sink.append(b"0123456789").unwrap();
            sink.append(b"0123456789").unwrap();
            sink.sync().unwrap();
        }
        // Another node's files and unrelated files do not matter.
        fs::write(tmp.path().join("capture-n2-000050.log"), "").unwrap();
        fs::write(tmp.path().join("other.txt"), "x").unwrap();
        let mut sink = FileSink::open(tmp.path(), "n1", 10).unwrap();
        assert_eq!(
            sink.current_path().unwrap().file_name().unwrap(),
            "capture-n1-000003.log"
        );
        sink.append(b"third").unwrap();
        sink.sync().unwrap();
        let names: Vec<_> = list_trace_files(tmp.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "capture-n1-000001.log",
                "capture-n1-000002.log",
                "capture-n1-000003.log",
                "capture-n2-000050.log"
            ]
        );
        // An existing later name is skipped, never overwritten.
        fs::write(tmp.path().join("capture-n1-000004.log"), "keep").unwrap();
        sink.append(b"0123456789").unwrap();
        sink.sync().unwrap();
        assert_eq!(
            sink.current_path().unwrap().file_name().unwrap(),
            "capture-n1-000005.log"
        );
        assert_eq!(
            fs::read_to_string(tmp.path().join("capture-n1-000004.log")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn sequence_beyond_six_digits_sorts_numerically() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("capture-n-999999.log"), "").unwrap();
        let sink = FileSink::open(tmp.path(), "n", 10).unwrap();
        assert_eq!(
            sink.current_path().unwrap().file_name().unwrap(),
            "capture-n-1000000.log"
        );
        let files = list_trace_files(tmp.path()).unwrap();
        assert_eq!(files.last().unwrap(), sink.current_path().unwrap());
    }

    #[test]
    fn invalid_node_id_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "a/b", "..\0", "a b"] {
            assert!(matches!(
                FileSink::open(tmp.path(), bad, 10),
                Err(FileSinkError::InvalidNodeId(_))
            ));
        }
    }

    #[test]
    fn unwritable_dir_reported_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        fs::write(&file, "x").unwrap();
        let err = FileSink::open(&file.join("sub"), "n", 10).err().unwrap();
        assert!(matches!(err, FileSinkError::Io { .. }), "{err}");
    }

    #[test]
    fn corrupt_line_reported_with_file_and_line() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("capture-n-000001.log");
        fs::write(&path, "aGVsbG8=\nnot base64!\n\r\nd29ybGQ=\r\nYWJj").unwrap();
        let items: Vec<_> = read_trace_lines(&path).collect();
        assert_eq!(items.len(), 5);
        assert_eq!(items[0].as_ref().unwrap(), b"hello");
        let e = items[1].as_ref().unwrap_err();
        assert_eq!(e.location(), (path.as_path(), 2));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}:2: not valid base64", path.display())),
            "{msg}"
        );
        assert!(matches!(
            items[2],
            Err(TraceReadError::EmptyLine { line: 3, .. })
        ));
        assert_eq!(items[3].as_ref().unwrap(), b"world");
        assert_eq!(
            items[4].as_ref().unwrap(),
            b"abc",
            "unterminated but decodable"
        );

        fs::write(&path, "aGVsbG8=\naGVsb").unwrap();
        let mut it = read_trace_lines(&path);
        assert!(it.next().unwrap().is_ok());
        let e = it.next().unwrap().unwrap_err();
        assert!(matches!(e, TraceReadError::TornLine { line: 2, .. }), "{e}");
        assert_eq!(it.line_number(), 2);
        assert!(it.next().is_none());
    }

    #[test]
    fn failed_append_fails_the_next_commit_then_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("t");
        let mut sink = FileSink::open(&dir, "n", 10).unwrap();
        sink.append(b"0123456789").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        // Needs a rotation, and the next file cannot be created.
        let e = sink.append(b"0123456789").unwrap_err();
        assert!(matches!(e, FileSinkError::Io { .. }), "{e}");
        assert!(sink.current_path().is_none());
        let e = sink.commit().unwrap_err();
        assert!(matches!(e, FileSinkError::AppendFailed { .. }), "{e}");
        sink.commit().unwrap(); // the next batch starts clean
        fs::create_dir_all(&dir).unwrap();
        sink.append(b"abc").unwrap();
        sink.commit().unwrap();
        assert_eq!(
            sink.current_path().unwrap().file_name().unwrap(),
            "capture-n-000003.log"
        );
        assert_eq!(read_all(&dir), [b"abc".to_vec()]);
    }

    #[test]
    fn missing_file_is_one_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut it = read_trace_lines(&tmp.path().join("nope.log"));
        let e = it.next().unwrap().unwrap_err();
        assert!(e.is_fatal());
        assert!(it.next().is_none());
    }

    /// A temporary directory on the checkout's own (disk) file system: the write-behind has
    /// nothing to do on tmpfs, where `tempfile::tempdir` may land.
    fn disk_tempdir() -> tempfile::TempDir {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let c = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statfs fills the zeroed struct it is given; the path is a valid C string.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        assert_ne!(
            st.f_type as i64,
            0x0102_1994, // TMPFS_MAGIC
            "{} is on tmpfs; this test needs a disk file system",
            dir.path().display()
        );
        dir
    }

    /// Pages of `path` in the page cache, in order (mincore over a read-only mapping).
    fn resident_pages(path: &Path) -> Vec<bool> {
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len() as usize;
        let page = 4096;
        let pages = len.div_ceil(page);
        // SAFETY: a shared read-only mapping of a file we hold open, unmapped below; mincore
        // writes one byte per page into a vector of exactly that many bytes.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED);
            let mut vec = vec![0u8; pages];
            assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0);
            libc::munmap(addr, len);
            vec.into_iter().map(|b| b & 1 == 1).collect()
        }
    }

    /// Write-behind: what lies more than two windows behind the last commit is on the device
    /// and out of the page cache; the newest part stays (it may still be in writeback); every
    /// record reads back intact.
    #[test]
    fn write_behind_leaves_only_the_newest_windows_in_the_page_cache() {
        let tmp = disk_tempdir();
        let mut sink = FileSink::open(tmp.path(), "n", 1 << 30).unwrap();
        let window = 256 * 1024;
        sink.write_behind = Some(window);
        let vals = values(400, 3000); // 400 lines of 4 000 bytes: 1.6 MB, six windows
        for chunk in vals.chunks(10) {
            for v in chunk {
                sink.append(v).unwrap();
            }
            sink.commit().unwrap();
        }
        let path = sink.current_path().unwrap().to_path_buf();
        let resident = resident_pages(&path);
        let total = sink.bytes_written();
        // Everything before the window whose writeback was started last has been dropped,
        // but for the page a window boundary falls in (half of it belongs to the next
        // window; the kernel drops whole pages only): at most one per window.
        let dropped_pages = (total - 2 * window) as usize / 4096;
        let stayed: Vec<usize> = (0..dropped_pages)
            .filter(|i| resident.get(*i) == Some(&true))
            .collect();
        let windows = (total / window) as usize;
        assert!(
            stayed.len() <= windows,
            "{} of the first {dropped_pages} pages of {} still in the page cache: {stayed:?}",
            stayed.len(),
            resident.len()
        );
        assert!(
            resident.last() == Some(&true),
            "the newest page was dropped too early"
        );
        let back: Vec<Vec<u8>> = read_trace_lines(&path).map(|l| l.unwrap()).collect();
        assert_eq!(back, vals);
    }

    /// Lines of `vals` as the file must hold them, byte for byte.
    fn expected_file(vals: &[Vec<u8>]) -> Vec<u8> {
        let mut want = Vec::new();
        for v in vals {
            want.extend_from_slice(STANDARD.encode(v).as_bytes());
            want.push(b'\n');
        }
        want
    }

    /// Records of 1 MiB and more go to the device directly: right after their commit, with
    /// the write-behind off, their whole blocks are not in the page cache (a page-cache write
    /// leaves every page resident until writeback), and the file is byte-identical to the
    /// lines, also where small records (through the page cache) sit between them and a
    /// direct write starts in a block a small record's line ended in.
    #[test]
    fn large_records_are_written_directly_and_byte_identical() {
        let tmp = disk_tempdir();
        let mut sink = FileSink::open(tmp.path(), "n", 1 << 30).unwrap();
        sink.write_behind = None;
        let big = |n: usize, seed: u8| -> Vec<u8> {
            (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect()
        };
        let mut vals = vec![big(1 << 20, 1)];
        sink.append(&vals[0]).unwrap();
        sink.commit().unwrap();
        let path = sink.current_path().unwrap().to_path_buf();
        let resident = resident_pages(&path);
        let blocks = line_len(1 << 20) / DIRECT_ALIGN;
        let cached = resident.iter().take(blocks).filter(|r| **r).count();
        assert_eq!(
            cached, 0,
            "{cached} of {blocks} directly written pages in the page cache"
        );
        // Small lines through the page cache, then a direct write from their last block on.
        for i in 0..5u8 {
            vals.push(big(3000 + usize::from(i), i));
        }
        vals.push(big(1_500_001, 7));
        vals.push(big(10, 8));
        for v in vals.iter().skip(1) {
            sink.append(v).unwrap();
            sink.commit().unwrap();
        }
        assert_eq!(fs::read(&path).unwrap(), expected_file(&vals));
    }

    /// A direct write the file system refuses (here: from a buffer that is not block-aligned,
    /// EINVAL) goes through the page cache instead, nothing lost, and the sink stops trying.
    #[test]
    fn a_refused_direct_write_falls_back_to_the_page_cache() {
        let tmp = disk_tempdir();
        let mut sink = FileSink::open(tmp.path(), "n", 1 << 30).unwrap();
        // The first record sizes the write buffer; the later ones fit in it (a buffer that
        // grows is aligned again), and their lines are over 1 MiB.
        let mut vals = values(1, 1 << 20);
        vals.extend(values(2, 900 << 10));
        sink.append(&vals[0]).unwrap();
        sink.commit().unwrap();
        assert!(sink.direct);
        // Misalign the write buffer (keeping its contents' meaning: it is empty but for the
        // kept partial block, moved along).
        let kept = sink.out_written;
        let copy = sink.out.bytes()[..kept].to_vec();
        sink.out.start += 1;
        sink.out.bytes_mut()[..kept].copy_from_slice(&copy);
        sink.append(&vals[1]).unwrap();
        sink.commit().unwrap();
        assert!(!sink.direct, "the refused direct write was not noticed");
        assert!(sink.current.as_ref().unwrap().direct.is_none());
        sink.append(&vals[2]).unwrap();
        sink.commit().unwrap();
        let path = sink.current_path().unwrap().to_path_buf();
        assert_eq!(fs::read(&path).unwrap(), expected_file(&vals));
    }

    /// A device error reported by the write-behind's wait (EIO, injected: the kernel gives it
    /// for a failed writeback) fails that commit like a failed write: the file is abandoned,
    /// the sink goes on in a new file, and the records committed before stay readable.
    #[test]
    fn a_device_error_in_the_writeback_fails_the_commit_and_abandons_the_file() {
        let tmp = disk_tempdir();
        let mut sink = FileSink::open(tmp.path(), "n", 1 << 30).unwrap();
        let window = 64 * 1024;
        sink.write_behind = Some(window);
        sink.current.as_mut().unwrap().fail_writeback_wait = Some(libc::EIO);
        let first = sink.current_path().unwrap().to_path_buf();
        let vals = values(60, 3000);
        let mut committed = Vec::new();
        let mut failed = None;
        for (i, v) in vals.iter().enumerate() {
            sink.append(v).unwrap();
            match sink.commit() {
                Ok(()) => committed.push(v.clone()),
                Err(e) => {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let (at, e) = failed.expect("the injected writeback error never surfaced");
        assert!(
            matches!(&e, FileSinkError::Io { source, .. } if source.raw_os_error() == Some(libc::EIO)),
            "{e}"
        );
        // The second window's commit is the first that waits for a writeback.
        assert!(
            at as u64 * 4001 >= 2 * window,
            "failed too early, at record {at}"
        );
        assert!(
            sink.current_path().is_none(),
            "the failed file is still in use"
        );
        sink.append(b"after").unwrap();
        sink.commit().unwrap();
        assert_ne!(sink.current_path().unwrap(), first);
        let back: Vec<Vec<u8>> = read_trace_lines(&first).map(|l| l.unwrap()).collect();
        assert_eq!(back[..committed.len()], committed[..]);
    }

    /// A file closed by rotation is on the device (fsynced), so none of it stays cached.
    #[test]
    fn a_rotated_file_leaves_the_page_cache() {
        let tmp = disk_tempdir();
        let mut sink = FileSink::open(tmp.path(), "n", 100_000).unwrap();
        let first = sink.current_path().unwrap().to_path_buf();
        for v in values(40, 3000) {
            sink.append(&v).unwrap();
            sink.commit().unwrap();
        }
        assert!(sink.files_rotated() >= 1);
        let resident = resident_pages(&first);
        assert!(!resident.is_empty());
        assert_eq!(resident.iter().filter(|r| **r).count(), 0, "{resident:?}");
    }

    /// A descriptor that refuses `sync_file_range` (a pipe: ESPIPE, as file systems without it
    /// answer EINVAL) is reported as unsupported, not as a write error.
    #[test]
    fn a_file_without_sync_file_range_keeps_the_plain_write_path() {
        let (rx, tx) = std::io::pipe().unwrap();
        let mut cur = CurrentFile {
            path: PathBuf::from("pipe"),
            file: File::from(std::os::fd::OwnedFd::from(tx)),
            direct: None,
            out_pos: 0,
            bytes: 0,
            started_to: 0,
            dropped_to: 0,
            fail_writeback_wait: None,
        };
        (&cur.file).write_all(&[b'x'; 100]).unwrap();
        cur.bytes = 100;
        assert!(matches!(
            write_behind(&mut cur, 1 << 20),
            Ok(WriteBehind::Done)
        ));
        match write_behind(&mut cur, 64) {
            Ok(WriteBehind::Unsupported(e)) => assert_eq!(e.raw_os_error(), Some(libc::ESPIPE)),
            Ok(WriteBehind::Done) => panic!("a pipe accepted sync_file_range"),
            Err(e) => panic!("reported as a write error: {e}"),
        }
        drop(rx);
    }

    #[test]
    fn parse_names() {
        assert_eq!(
            parse_trace_file_name("capture-a-b-c-000012.log"),
            Some(("a-b-c", Some(12)))
        );
        assert_eq!(parse_trace_file_name("capture-x.log"), Some(("x", None)));
        assert_eq!(parse_trace_file_name("capture-x-.log"), Some(("x-", None)));
        assert_eq!(parse_trace_file_name("capture-x-1.txt"), None);
        assert_eq!(parse_trace_file_name("trace-x-1.log"), None);
    }
}
