//! The spool's on-disk format, pure and file-level: the constants of segment files and
//! entries, CRC-32C, the entry codec ([`encode_entry`] / [`decode_entry`]) and the replay
//! reader of one segment file ([`scan_segment`]), which finds torn and corrupt entries and
//! resumes at the next one that checks out. The format itself is described in the parent's
//! docs (`sink/spool/mod.rs`, "On-disk format").
//!
//! Its dependencies are its parent's (std only, in fact).
//!
//! Invariant: nothing here panics on file contents: every length is checked against the
//! buffer or the file before it is used.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SpoolError;

/// First bytes of every segment file (format name and version).
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"CPSPOOL1";
/// Bytes of the segment header.
pub(crate) const SEGMENT_HEADER_BYTES: u64 = SEGMENT_MAGIC.len() as u64;
/// First bytes of every entry. Not ASCII and not a plausible protobuf prefix, so a search for
/// it after a corrupt entry rarely stops anywhere but at a real entry (the CRC decides).
pub(crate) const ENTRY_MAGIC: [u8; 4] = [0xC5, 0x70, 0x0F, 0xE1];
/// Entry header: magic, body length, CRC.
pub(crate) const ENTRY_HEADER_BYTES: usize = 12;
/// Fixed part of an entry body: key length (2), record number (4), flags (1).
pub(super) const BODY_FIXED_BYTES: usize = 7;
/// Flag bit: the connection's final record.
pub(super) const FLAG_FINAL: u8 = 1;
/// Bytes read at a time while searching for the next entry after a corrupt one (64 KiB).
pub(super) const SCAN_CHUNK_BYTES: usize = 64 * 1024;

pub(super) const CHECKPOINT_FILE: &str = "checkpoint";
pub(super) const CHECKPOINT_TMP: &str = "checkpoint.tmp";
pub(super) const CHECKPOINT_MAGIC: [u8; 8] = *b"CPSPCKP1";
pub(super) const CHECKPOINT_BYTES: usize = 28;
pub(super) const SEGMENT_PREFIX: &str = "segment-";
pub(super) const SEGMENT_SUFFIX: &str = ".spool";

// ---------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli), slicing-by-8.
// ---------------------------------------------------------------------------------------------

/// The reflected Castagnoli polynomial.
pub(super) const CRC32C_POLY: u32 = 0x82F6_3B78;

// Evaluated at compile time (`CRC_TABLES`): an index out of bounds would fail the build.
#[allow(clippy::indexing_slicing)]
pub(super) const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CRC32C_POLY
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

pub(super) static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

#[inline]
pub(super) fn tab(t: usize, b: u32) -> u32 {
    // `b as u8` is < 256 and `t` < 8 at every call site: never out of range.
    CRC_TABLES
        .get(t)
        .and_then(|row| row.get(usize::from(b as u8)))
        .copied()
        .unwrap_or(0)
}

/// Continues a CRC-32C: `crc32c_update(crc32c_update(0, a), b) == crc32c(a ++ b)`.
pub(crate) fn crc32c_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(ch);
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ c;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        c = tab(7, lo)
            ^ tab(6, lo >> 8)
            ^ tab(5, lo >> 16)
            ^ tab(4, lo >> 24)
            ^ tab(3, hi)
            ^ tab(2, hi >> 8)
            ^ tab(1, hi >> 16)
            ^ tab(0, hi >> 24);
    }
    for &b in chunks.remainder() {
        c = tab(0, c ^ u32::from(b)) ^ (c >> 8);
    }
    !c
}

/// CRC-32C of `data`.
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    crc32c_update(0, data)
}

// ---------------------------------------------------------------------------------------------
// Entry codec (pure).
// ---------------------------------------------------------------------------------------------

/// One decoded entry, borrowing from the buffer it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryRef<'a> {
    pub key: &'a [u8],
    pub number: u32,
    pub is_final: bool,
    pub value: &'a [u8],
}

/// What [`decode_entry`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole, valid entry of `len` bytes (header included).
    Entry { entry: EntryRef<'a>, len: usize },
    /// The buffer ends before the entry does (a torn tail when at the end of a file).
    Incomplete,
    /// Not an entry: wrong magic, impossible length or checksum mismatch.
    Corrupt,
}

/// Bytes the entry for `key`/`value` takes on disk.
pub(crate) fn entry_len(key: &[u8], value: &[u8]) -> usize {
    ENTRY_HEADER_BYTES + BODY_FIXED_BYTES + key.len() + value.len()
}

/// Appends one entry to `out`; returns its length. Fails only when the key is over 64 KiB or
/// the body over 4 GiB (nothing is appended then).
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    key: &[u8],
    number: u32,
    is_final: bool,
    value: &[u8],
) -> Result<usize, SpoolError> {
    let too_large = || SpoolError::TooLarge {
        key: key.len(),
        value: value.len(),
    };
    let key_len = u16::try_from(key.len()).map_err(|_| too_large())?;
    let body_len = BODY_FIXED_BYTES
        .checked_add(key.len())
        .and_then(|n| n.checked_add(value.len()))
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(too_large)?;
    let start = out.len();
    out.extend_from_slice(&ENTRY_MAGIC);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&number.to_le_bytes());
    out.push(if is_final { FLAG_FINAL } else { 0 });
    out.extend_from_slice(value);
    let crc = {
        let len_bytes = out.get(start + 4..start + 8).unwrap_or(&[]);
        let body = out.get(start + ENTRY_HEADER_BYTES..).unwrap_or(&[]);
        crc32c_update(crc32c(len_bytes), body)
    };
    if let Some(slot) = out.get_mut(start + 8..start + 12) {
        slot.copy_from_slice(&crc.to_le_bytes());
    }
    Ok(out.len() - start)
}

pub(super) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([
        *s.first()?,
        *s.get(1)?,
        *s.get(2)?,
        *s.get(3)?,
    ]))
}

pub(super) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

/// Decodes the entry at the start of `buf` (trailing bytes are ignored).
pub(crate) fn decode_entry(buf: &[u8]) -> Decoded<'_> {
    let Some(header) = buf.get(..ENTRY_HEADER_BYTES) else {
        let magic_so_far = ENTRY_MAGIC
            .get(..buf.len().min(ENTRY_MAGIC.len()))
            .is_some_and(|m| buf.starts_with(m));
        return if buf.is_empty() || magic_so_far {
            Decoded::Incomplete
        } else {
            Decoded::Corrupt
        };
    };
    if !header.starts_with(&ENTRY_MAGIC) {
        return Decoded::Corrupt;
    }
    let (Some(body_len), Some(crc)) = (le_u32(header, 4), le_u32(header, 8)) else {
        return Decoded::Corrupt;
    };
    let body_len = body_len as usize;
    if body_len < BODY_FIXED_BYTES {
        return Decoded::Corrupt;
    }
    let Some(len) = ENTRY_HEADER_BYTES.checked_add(body_len) else {
        return Decoded::Corrupt;
    };
    let Some(body) = buf.get(ENTRY_HEADER_BYTES..len) else {
        return Decoded::Incomplete;
    };
    let want = crc32c_update(crc32c(header.get(4..8).unwrap_or(&[])), body);
    if want != crc {
        return Decoded::Corrupt;
    }
    let Some(key_len) = le_u16(body, 0) else {
        return Decoded::Corrupt;
    };
    let key_end = 2 + usize::from(key_len);
    let (Some(key), Some(number), Some(&flags), Some(value)) = (
        body.get(2..key_end),
        le_u32(body, key_end),
        body.get(key_end + 4),
        body.get(key_end + 5..),
    ) else {
        return Decoded::Corrupt;
    };
    Decoded::Entry {
        entry: EntryRef {
            key,
            number,
            is_final: flags & FLAG_FINAL != 0,
            value,
        },
        len,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading segment files (replay).
// ---------------------------------------------------------------------------------------------

/// What [`probe`] found at one offset of a segment.
pub(super) enum Probe {
    /// A valid entry of `len` bytes; `buf` holds it.
    Valid { len: u64 },
    /// The file (or the readable part of it) ends inside the entry.
    Incomplete,
    /// Not a valid entry; `declared_end` is where its header says it ends, when that header
    /// looks sane and the end lies within the readable part.
    Corrupt { declared_end: Option<u64> },
}

/// Reads the entry at `off` of `file` (readable up to `end`) into `buf` and checks it.
pub(super) fn probe(file: &File, off: u64, end: u64, buf: &mut Vec<u8>) -> io::Result<Probe> {
    let avail = end.saturating_sub(off);
    let head = avail.min(ENTRY_HEADER_BYTES as u64) as usize;
    buf.clear();
    buf.resize(head, 0);
    file.read_exact_at(buf, off)?;
    if head < ENTRY_HEADER_BYTES {
        return Ok(match decode_entry(buf) {
            Decoded::Corrupt => Probe::Corrupt { declared_end: None },
            _ => Probe::Incomplete,
        });
    }
    if !buf.starts_with(&ENTRY_MAGIC) {
        return Ok(Probe::Corrupt { declared_end: None });
    }
    let body_len = u64::from(le_u32(buf, 4).unwrap_or(0));
    let total = ENTRY_HEADER_BYTES as u64 + body_len;
    if total > avail {
        return Ok(Probe::Incomplete);
    }
    let declared_end = Some(off + total);
    let Ok(total_usize) = usize::try_from(total) else {
        return Ok(Probe::Corrupt { declared_end });
    };
    buf.resize(total_usize, 0);
    if let Some(rest) = buf.get_mut(ENTRY_HEADER_BYTES..) {
        file.read_exact_at(rest, off + ENTRY_HEADER_BYTES as u64)?;
    }
    Ok(match decode_entry(buf) {
        Decoded::Entry { .. } => Probe::Valid { len: total },
        _ => Probe::Corrupt { declared_end },
    })
}

/// Finds the first offset in `[from, end)` where a valid entry starts.
pub(super) fn find_next(
    file: &File,
    from: u64,
    end: u64,
    buf: &mut Vec<u8>,
    scan: &mut Vec<u8>,
) -> io::Result<Option<u64>> {
    let mut at = from;
    while at < end {
        let n = (end - at).min(SCAN_CHUNK_BYTES as u64) as usize;
        scan.clear();
        scan.resize(n, 0);
        file.read_exact_at(scan, at)?;
        let hits: Vec<u64> = scan
            .windows(ENTRY_MAGIC.len())
            .enumerate()
            .filter(|(_, w)| *w == ENTRY_MAGIC)
            .map(|(i, _)| at + i as u64)
            .collect();
        for p in hits {
            if let Probe::Valid { .. } = probe(file, p, end, buf)? {
                return Ok(Some(p));
            }
        }
        if at + n as u64 >= end {
            break;
        }
        // Overlap so a magic split across two chunks is still seen.
        at += (n - (ENTRY_MAGIC.len() - 1)) as u64;
    }
    Ok(None)
}

/// One step of reading a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// A valid entry at `[start, end)`, in the buffer.
    Entry { start: u64, end: u64 },
    /// `[start, end)` is unusable; `torn` when it is an entry cut short at the end of the file.
    Skipped { start: u64, end: u64, torn: bool },
    /// Nothing more before `end`.
    End,
}

/// Reads what is at `off`: an entry, or the unusable bytes up to the next valid entry.
pub(super) fn step(
    file: &File,
    off: u64,
    end: u64,
    buf: &mut Vec<u8>,
    scan: &mut Vec<u8>,
) -> io::Result<Step> {
    if off >= end {
        return Ok(Step::End);
    }
    let incomplete = match probe(file, off, end, buf)? {
        Probe::Valid { len } => {
            return Ok(Step::Entry {
                start: off,
                end: off + len,
            })
        }
        Probe::Incomplete => true,
        Probe::Corrupt { declared_end } => {
            // A damaged body with an intact header: the next entry is where it says. (Trust
            // that before searching, so bytes inside the damaged value are not taken for
            // entries.)
            if let Some(d) = declared_end {
                if d >= end {
                    return Ok(Step::Skipped {
                        start: off,
                        end,
                        torn: false,
                    });
                }
                if let Probe::Valid { .. } = probe(file, d, end, buf)? {
                    return Ok(Step::Skipped {
                        start: off,
                        end: d,
                        torn: false,
                    });
                }
            }
            false
        }
    };
    Ok(match find_next(file, off + 1, end, buf, scan)? {
        Some(next) => Step::Skipped {
            start: off,
            end: next,
            torn: false,
        },
        None => Step::Skipped {
            start: off,
            end,
            torn: incomplete,
        },
    })
}

/// One item of a segment as [`scan_segment`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    Entry {
        offset: u64,
        len: u64,
        key: String,
        number: u32,
        is_final: bool,
        value: Vec<u8>,
    },
    /// Unusable bytes (a corrupt entry, or a torn tail when `torn`).
    Skipped { offset: u64, len: u64, torn: bool },
}

/// Every entry and every skipped region of one segment file, in file order — the same reading
/// the drain does (for tests and diagnosis).
pub fn scan_segment(path: &Path) -> io::Result<Vec<Scanned>> {
    let file = File::open(path)?;
    let end = file.metadata()?.len();
    let mut out = Vec::new();
    let (mut buf, mut scan) = (Vec::new(), Vec::new());
    let mut off = SEGMENT_HEADER_BYTES;
    loop {
        match step(&file, off, end, &mut buf, &mut scan)? {
            Step::End => return Ok(out),
            Step::Entry { start, end } => {
                if let Decoded::Entry { entry, .. } = decode_entry(&buf) {
                    out.push(Scanned::Entry {
                        offset: start,
                        len: end - start,
                        key: String::from_utf8_lossy(entry.key).into_owned(),
                        number: entry.number,
                        is_final: entry.is_final,
                        value: entry.value.to_vec(),
                    });
                }
                off = end;
            }
            Step::Skipped { start, end, torn } => {
                out.push(Scanned::Skipped {
                    offset: start,
                    len: end - start,
                    torn,
                });
                off = end;
            }
        }
    }
}

pub(super) fn segment_name(seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:016x}{SEGMENT_SUFFIX}")
}

pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// The segment files of `dir` in replay order, with their sequence numbers.
pub fn segment_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if let Some(seq) = e.file_name().to_str().and_then(parse_segment_name) {
            v.push((seq, e.path()));
        }
    }
    v.sort();
    Ok(v)
}
