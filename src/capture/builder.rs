//! Per-connection `TrafficStream` builder (sans-IO, HOT path).
//!
//! Owns: turning one connection's capture events (reads, writes, end-of-message markers,
//! requestDropped, exceptions, close) into a numbered sequence of serialized records, following
//! `shared/spec/capture-format.md`: record header written at record start (fields 6/7 reflect
//! the state at that moment), size limit including the trailing index field, splitting of data
//! that does not fit into `readSegment`/`writeSegment` + `segmentEnd`, numbering 1, 2, 3, … with
//! `number` on every record but the last and `numberOfThisLastChunk` on the last.
//!
//! May depend on: `capture::encode` (the wire writer) and `std`. Knows nothing of sockets,
//! threads, Kafka, flags or clocks: timestamps come in with each call, empty buffers come from
//! and finished records go to the owner through [`RecordOut`].
//!
//! Invariants: with settings accepted by [`CaptureSettings::new`] and a connection id of at most
//! [`MAX_CONNECTION_ID_BYTES`] bytes, every emitted record is at most `max_record_bytes` long,
//! holds at least one observation, and records are numbered 1..=N with exactly one final record
//! (N), emitted by [`StreamBuilder::close`]. Field 7 is never written as false, field 6 never
//! as 0. Nothing here panics on any input.

use std::mem;
use std::sync::Arc;

use super::encode::{self, Direction, RecordHeader, RecordIndex, Timestamp, INDEX_FIELD_MAX_LEN};

/// Longest connection id (bytes) for which [`CaptureSettings::new`] guarantees that every record
/// fits in `max_record_bytes`. Netty's ids (the Java proxy) are 60 bytes; ours are shorter; 128
/// leaves headroom while keeping the smallest legal record size a few hundred bytes.
pub const MAX_CONNECTION_ID_BYTES: usize = 128;

/// Largest accepted `max_record_bytes`: protobuf messages must stay below 2 GiB (lengths are
/// int32 on the consumer side).
pub(crate) const MAX_RECORD_BYTES_LIMIT: usize = i32::MAX as usize;

/// Written as the `connectionException` message when the caller has none: the spec requires a
/// non-empty message.
pub const EMPTY_EXCEPTION_MESSAGE: &str = "connection error (no message)";

/// First capacity (bytes) asked for when a record starts, unless the buffer from the pool is
/// already larger or `max_record_bytes` is smaller: one small request or response plus the
/// header fits without regrowing, while an idle connection holds only 1 KiB.
pub(crate) const INITIAL_RECORD_CAPACITY_BYTES: usize = 1024;

/// The worst-case timestamp for size bounds: a 10-byte seconds varint (negative) and the
/// largest nanos value.
const WORST_TS: Timestamp = Timestamp {
    secs: i64::MIN,
    nanos: 999_999_999,
};

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "maximum record size {max_record_bytes} bytes is too small: at least {min} bytes are needed \
         (record header for a {MAX_CONNECTION_ID_BYTES}-byte connection id and this node id, the \
         largest fixed-size observation and the index field)"
    )]
    RecordTooSmall { max_record_bytes: usize, min: usize },
    #[error(
        "maximum record size {max_record_bytes} bytes exceeds the protobuf message limit of \
         {MAX_RECORD_BYTES_LIMIT} bytes"
    )]
    RecordTooLarge { max_record_bytes: usize },
}

/// Process-wide capture settings shared by all builders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSettings {
    /// `nodeId` written in every record.
    pub node_id: Arc<str>,
    /// Largest serialized record, index field included (spec: `--maxTrafficBufferSize` − 500).
    pub max_record_bytes: usize,
}

impl CaptureSettings {
    /// Validates that every record can hold its header (for connection ids up to
    /// [`MAX_CONNECTION_ID_BYTES`]), any single fixed-size observation (or a 1-byte data
    /// segment) and the index field.
    pub fn new(node_id: Arc<str>, max_record_bytes: usize) -> Result<Self, CaptureError> {
        let min = min_record_bytes(MAX_CONNECTION_ID_BYTES, node_id.len());
        if max_record_bytes < min {
            return Err(CaptureError::RecordTooSmall {
                max_record_bytes,
                min,
            });
        }
        if max_record_bytes > MAX_RECORD_BYTES_LIMIT {
            return Err(CaptureError::RecordTooLarge { max_record_bytes });
        }
        Ok(Self {
            node_id,
            max_record_bytes,
        })
    }
}

/// Smallest `max_record_bytes` with which a connection id of `connection_id_len` bytes and a
/// node id of `node_id_len` bytes always produce records within the limit: the largest header
/// (fields 6 and 7 present), the largest fixed-size observation with the worst-case timestamp
/// (an end-of-message marker; a 1-byte segment and a 1-character exception are smaller), and
/// the worst-case index field.
pub fn min_record_bytes(connection_id_len: usize, node_id_len: usize) -> usize {
    let header = encode::len_field_len(encode::stream_field::CONNECTION_ID, connection_id_len)
        + encode::len_field_len(encode::stream_field::NODE_ID, node_id_len)
        + encode::varint_field_len(
            encode::stream_field::PRIOR_REQUESTS_RECEIVED,
            encode::int32_wire_value(i32::MAX),
        )
        + encode::varint_field_len(
            encode::stream_field::LAST_OBSERVATION_WAS_UNTERMINATED_READ,
            1,
        );
    let observation = [
        encode::end_of_message_entry_len(&WORST_TS, i32::MAX, i32::MAX),
        encode::data_segment_entry_len(&WORST_TS, 1),
        encode::segment_end_entry_len(&WORST_TS),
        encode::close_entry_len(&WORST_TS),
        encode::request_dropped_entry_len(&WORST_TS),
        // One character of at most 4 UTF-8 bytes: longer messages are truncated to fit.
        encode::connection_exception_entry_len(&WORST_TS, 4),
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    header
        .saturating_add(observation)
        .saturating_add(INDEX_FIELD_MAX_LEN)
}

/// A finished, serialized record handed to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRecord {
    /// One serialized `TrafficStream`.
    pub value: Vec<u8>,
    /// Its index: `number` (not final) or `numberOfThisLastChunk` (final).
    pub number: u32,
    /// True for the connection's last record.
    pub is_final: bool,
}

/// What the builder needs from its owner: empty buffers (pooled) and a place for finished
/// records.
pub trait RecordOut {
    /// An empty Vec, maybe with capacity (the builder clears it anyway).
    fn take_buffer(&mut self) -> Vec<u8>;
    /// Receives each finished record, in order.
    fn emit(&mut self, rec: FinishedRecord);
}

/// Builds the records of one connection. See the module doc for the rules.
pub struct StreamBuilder {
    connection_id: Arc<str>,
    settings: Arc<CaptureSettings>,
    /// The open record (header + observations), empty when no record is open.
    buf: Vec<u8>,
    /// A record is open: its header is in `buf`.
    open: bool,
    /// Observations in the open record.
    observations: u32,
    /// Timestamp of the first observation of the open record.
    oldest_unflushed: Option<Timestamp>,
    /// Records emitted so far (= number of the last emitted record).
    records_emitted: u32,
    /// End-of-message markers written so far.
    eoms: u32,
    /// Reads were written since the last end-of-message / requestDropped.
    reads_since_eom: bool,
    /// The final record was emitted; every later call is ignored.
    finished: bool,
}

impl StreamBuilder {
    /// A builder for one connection. Allocates nothing until the first observation.
    pub fn new(connection_id: Arc<str>, settings: Arc<CaptureSettings>) -> Self {
        Self {
            connection_id,
            settings,
            buf: Vec::new(),
            open: false,
            observations: 0,
            oldest_unflushed: None,
            records_emitted: 0,
            eoms: 0,
            reads_since_eom: false,
            finished: false,
        }
    }

    /// Bytes received from the client (`read`, or `readSegment…` + `segmentEnd` when it does not
    /// fit). Empty data is ignored.
    pub fn read(&mut self, ts: Timestamp, data: &[u8], out: &mut impl RecordOut) {
        self.add_data(Direction::Read, ts, data, out);
    }

    /// Bytes sent to the client (`write`, or `writeSegment…` + `segmentEnd`). Empty data is
    /// ignored.
    pub fn write(&mut self, ts: Timestamp, data: &[u8], out: &mut impl RecordOut) {
        self.add_data(Direction::Write, ts, data, out);
    }

    /// `endOfMessageIndicator` after the read that completed a captured request. Lengths above
    /// `i32::MAX` are written as `i32::MAX`.
    pub fn end_of_message(
        &mut self,
        ts: Timestamp,
        first_line_len: u32,
        headers_len: u32,
        out: &mut impl RecordOut,
    ) {
        if self.finished {
            return;
        }
        let first = i32::try_from(first_line_len).unwrap_or(i32::MAX);
        let headers = i32::try_from(headers_len).unwrap_or(i32::MAX);
        let len = encode::end_of_message_entry_len(&ts, first, headers);
        self.push_observation(ts, len, out, |buf| {
            encode::put_end_of_message(buf, &ts, first, headers)
        });
        self.eoms = self.eoms.saturating_add(1);
        self.reads_since_eom = false;
    }

    /// `requestDropped`: a suppressed request of which reads were already written.
    pub fn request_dropped(&mut self, ts: Timestamp, out: &mut impl RecordOut) {
        if self.finished {
            return;
        }
        let len = encode::request_dropped_entry_len(&ts);
        self.push_observation(ts, len, out, |buf| encode::put_request_dropped(buf, &ts));
        self.reads_since_eom = false;
    }

    /// `connectionException{message}`. An empty message is replaced by
    /// [`EMPTY_EXCEPTION_MESSAGE`]; a message too long for an empty record is truncated (at a
    /// character boundary) to fit.
    pub fn connection_exception(&mut self, ts: Timestamp, message: &str, out: &mut impl RecordOut) {
        if self.finished {
            return;
        }
        let message = if message.is_empty() {
            EMPTY_EXCEPTION_MESSAGE
        } else {
            message
        };
        let message = fit_message(&ts, message, self.fresh_room());
        let len = encode::connection_exception_entry_len(&ts, message.len());
        self.push_observation(ts, len, out, |buf| {
            encode::put_connection_exception(buf, &ts, message)
        });
    }

    /// Non-final flush: if the current record has observations, close it with `number = N`
    /// and emit it; return `Some(N)`. Nothing buffered (or finished) ⇒ `None` (no empty
    /// records).
    pub fn flush(&mut self, out: &mut impl RecordOut) -> Option<u32> {
        if self.finished || !self.has_unflushed() {
            return None;
        }
        Some(self.emit(false, out))
    }

    /// Appends `close` and emits the final record (`numberOfThisLastChunk = N`); returns N.
    /// A connection that captured nothing yields one record `[close]` with N = 1. Afterwards
    /// the builder is finished: every call is ignored, and `close` returns 0 (no record).
    pub fn close(&mut self, ts: Timestamp, out: &mut impl RecordOut) -> u32 {
        if self.finished {
            return 0;
        }
        let len = encode::close_entry_len(&ts);
        self.push_observation(ts, len, out, |buf| encode::put_close(buf, &ts));
        let n = self.emit(true, out);
        self.finished = true;
        n
    }

    /// The current record holds observations not yet emitted.
    pub fn has_unflushed(&self) -> bool {
        self.open && self.observations > 0
    }

    /// Timestamp (as passed in by the caller) of the first observation of the current, not yet
    /// emitted record; `None` when nothing is buffered. The owner compares it with its own
    /// clock for the time-based flush. Segments of a split read/write carry the original
    /// timestamp, so a record started by a continuation reports that read's timestamp.
    #[cfg(test)]
    pub(crate) fn unflushed_since(&self) -> Option<Timestamp> {
        if self.has_unflushed() {
            self.oldest_unflushed
        } else {
            None
        }
    }

    /// Records emitted so far; after `close` this is the final record's number.
    pub fn records_emitted(&self) -> u32 {
        self.records_emitted
    }

    /// End-of-message markers written so far.
    pub fn requests_completed(&self) -> u32 {
        self.eoms
    }

    /// Reads were written since the last end-of-message marker or requestDropped.
    #[cfg(test)]
    pub(crate) fn read_since_last_eom(&self) -> bool {
        self.reads_since_eom
    }

    /// The final record was emitted.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Bytes in the current, not yet emitted record (0 when none is open).
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    fn header(&self) -> RecordHeader<'_> {
        RecordHeader {
            connection_id: &self.connection_id,
            node_id: &self.settings.node_id,
            prior_requests_received: i32::try_from(self.eoms).unwrap_or(i32::MAX),
            last_observation_was_unterminated_read: self.reads_since_eom,
        }
    }

    /// Bytes the record limit leaves for observations, after the reserved index field.
    fn observation_budget(&self) -> usize {
        self.settings
            .max_record_bytes
            .saturating_sub(INDEX_FIELD_MAX_LEN)
    }

    /// Space left for observations in the open record.
    fn room(&self) -> usize {
        self.observation_budget().saturating_sub(self.buf.len())
    }

    /// Space an empty record started now would have for observations.
    fn fresh_room(&self) -> usize {
        self.observation_budget()
            .saturating_sub(self.header().encoded_len())
    }

    /// Makes sure a record is open and, if it already holds observations, that `needed` bytes
    /// fit (otherwise emits it with `number` and opens a new one). A fresh record is never
    /// emitted, so with degenerate settings an observation may overflow a fresh record.
    /// `hint` is the size expected to be written next, for the first reservation.
    fn ensure_room(&mut self, needed: usize, hint: usize, out: &mut impl RecordOut) {
        if self.has_unflushed() && self.room() < needed {
            self.emit(false, out);
        }
        if !self.open {
            self.start_record(hint.max(needed), out);
        }
    }

    fn start_record(&mut self, hint: usize, out: &mut impl RecordOut) {
        let header_len = self.header().encoded_len();
        let mut buf = out.take_buffer();
        buf.clear();
        let max = self.settings.max_record_bytes;
        let wanted = header_len
            .saturating_add(hint)
            .saturating_add(INDEX_FIELD_MAX_LEN)
            .max(INITIAL_RECORD_CAPACITY_BYTES);
        let wanted = power_of_two_within(wanted, max).max(header_len);
        if buf.capacity() < wanted {
            buf.reserve_exact(wanted);
        }
        self.header().put(&mut buf);
        self.buf = buf;
        self.open = true;
        self.observations = 0;
        self.oldest_unflushed = None;
    }

    /// Grows the record buffer for `additional` more bytes: to a power of two, at least double,
    /// but never past the record limit (a 1 MiB record never allocates 2 MiB).
    fn reserve(&mut self, additional: usize) {
        let need = self.buf.len().saturating_add(additional);
        let cap = self.buf.capacity();
        if need <= cap {
            return;
        }
        let limit = self.settings.max_record_bytes.max(need);
        let target = grown_capacity(cap, need, limit);
        self.buf.reserve_exact(target - self.buf.len());
    }

    fn note_observation(&mut self, ts: Timestamp) {
        self.observations = self.observations.saturating_add(1);
        if self.oldest_unflushed.is_none() {
            self.oldest_unflushed = Some(ts);
        }
    }

    /// Writes one fixed-size observation of `len` bytes, flushing first if it does not fit.
    fn push_observation(
        &mut self,
        ts: Timestamp,
        len: usize,
        out: &mut impl RecordOut,
        put: impl FnOnce(&mut Vec<u8>),
    ) {
        self.ensure_room(len, len, out);
        self.reserve(len);
        put(&mut self.buf);
        self.note_observation(ts);
    }

    fn add_data(&mut self, dir: Direction, ts: Timestamp, data: &[u8], out: &mut impl RecordOut) {
        if self.finished || data.is_empty() {
            return;
        }
        let whole = encode::data_entry_len(&ts, data.len());
        let seg1 = encode::data_segment_entry_len(&ts, 1);
        // If the current record cannot hold even a 1-byte segment, flush first.
        self.ensure_room(seg1, whole, out);
        let room = self.room();
        // Fits whole ⇒ plain read/write. Also when a fresh record cannot hold even one segment
        // byte (degenerate settings): one oversized record beats endless empty ones.
        if whole <= room || (self.observations == 0 && room < seg1) {
            self.reserve(whole);
            encode::put_data(&mut self.buf, dir, &ts, data);
            self.note_data(dir, ts);
            return;
        }
        let mut rest = data;
        let mut first_piece = true;
        while !rest.is_empty() {
            if !first_piece {
                let hint = encode::data_segment_entry_len(&ts, rest.len());
                self.ensure_room(seg1, hint, out);
            }
            first_piece = false;
            let fit = encode::max_segment_payload(&ts, self.room());
            // fit == 0 only in a fresh record with degenerate settings: take the rest at once.
            let take = if fit == 0 {
                rest.len()
            } else {
                fit.min(rest.len())
            };
            let (piece, tail) = rest.split_at_checked(take).unwrap_or((rest, &[]));
            self.reserve(encode::data_segment_entry_len(&ts, piece.len()));
            encode::put_data_segment(&mut self.buf, dir, &ts, piece);
            self.note_data(dir, ts);
            rest = tail;
        }
        let end = encode::segment_end_entry_len(&ts);
        self.push_observation(ts, end, out, |buf| encode::put_segment_end(buf, &ts));
    }

    fn note_data(&mut self, dir: Direction, ts: Timestamp) {
        self.note_observation(ts);
        if dir == Direction::Read {
            self.reads_since_eom = true;
        }
    }

    /// Closes the open record with its index field and hands it to `out`; returns its number.
    fn emit(&mut self, is_final: bool, out: &mut impl RecordOut) -> u32 {
        let number = self.records_emitted.saturating_add(1).min(i32::MAX as u32);
        let wire = i32::try_from(number).unwrap_or(i32::MAX);
        let index = if is_final {
            RecordIndex::NumberOfThisLastChunk(wire)
        } else {
            RecordIndex::Number(wire)
        };
        self.reserve(index.encoded_len());
        index.put(&mut self.buf);
        let value = mem::take(&mut self.buf);
        self.open = false;
        self.observations = 0;
        self.oldest_unflushed = None;
        self.records_emitted = number;
        out.emit(FinishedRecord {
            value,
            number,
            is_final,
        });
        number
    }
}

impl std::fmt::Debug for StreamBuilder {
    /// Summary only: the record bytes are not printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBuilder")
            .field("connection_id", &self.connection_id)
            .field("buffered_len", &self.buf.len())
            .field("observations", &self.observations)
            .field("records_emitted", &self.records_emitted)
            .field("eoms", &self.eoms)
            .field("reads_since_eom", &self.reads_since_eom)
            .field("finished", &self.finished)
            .finish()
    }
}

/// The capacity a record buffer of capacity `cap` grows to when it must hold `need` bytes
/// (`need > cap`): the next power of two of at least twice `cap`, at most `limit` (the record
/// limit), never below `need`. Powers of two matter beyond amortising the copies: a record
/// crossing 64 KiB lands in a buffer of exactly 128 KiB, the largest size the worker's record
/// pool keeps by the hundred (`buf::RecordBufs`). Growing to exactly what was needed (as this
/// did before) made such a record's buffer 128 KiB plus a few bytes, which the pool dropped:
/// every 64 KiB response then regrew a fresh buffer from 1 KiB, three copies and fresh pages
/// (perf of 64 KiB responses captured to files: ≈9.5 % of the proxy's samples in that
/// regrowth, its copies and the first touch of fresh pages).
fn grown_capacity(cap: usize, need: usize, limit: usize) -> usize {
    power_of_two_within(cap.saturating_mul(2).max(need), limit).max(need)
}

/// `n` rounded up to a power of two (`n` itself past the largest one), at most `limit`: the
/// capacities record buffers are given (see [`grown_capacity`]).
fn power_of_two_within(n: usize, limit: usize) -> usize {
    n.checked_next_power_of_two().unwrap_or(n).min(limit)
}

/// `message`, truncated at a character boundary so that its `connectionException` entry fits
/// in `room` bytes; at least one character is kept (non-empty per spec) even if that does not
/// fit (only possible with degenerate settings).
fn fit_message<'m>(ts: &Timestamp, message: &'m str, room: usize) -> &'m str {
    if encode::connection_exception_entry_len(ts, message.len()) <= room {
        return message;
    }
    // Largest byte length that fits (the size is monotonic in the length).
    let (mut lo, mut hi) = (0usize, message.len());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if encode::connection_exception_entry_len(ts, mid) <= room {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mut cut = lo;
    while cut > 0 && !message.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut == 0 {
        cut = message.chars().next().map_or(0, char::len_utf8);
    }
    message.get(..cut).unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proto::{self, traffic_observation::Capture, traffic_stream::Index};
    use proptest::prelude::*;
    use prost::Message;

    const CONN: &str = "conn-42";
    const NODE: &str = "node-1";
    /// The spec's default record limit: `--maxTrafficBufferSize` 1048576 − 500.
    const DEFAULT_MAX: usize = 1_048_576 - 500;

    #[derive(Default)]
    struct Collect {
        recs: Vec<FinishedRecord>,
        taken: usize,
    }

    impl RecordOut for Collect {
        fn take_buffer(&mut self) -> Vec<u8> {
            self.taken += 1;
            Vec::new()
        }
        fn emit(&mut self, rec: FinishedRecord) {
            self.recs.push(rec);
        }
    }

    /// Settings built directly, bypassing `CaptureSettings::new`'s check (tests choose sizes
    /// that are legal for their own short ids).
    fn settings(max: usize) -> Arc<CaptureSettings> {
        Arc::new(CaptureSettings {
            node_id: NODE.into(),
            max_record_bytes: max,
        })
    }

    fn builder(max: usize) -> StreamBuilder {
        StreamBuilder::new(CONN.into(), settings(max))
    }

    fn ts(i: i64) -> Timestamp {
        Timestamp {
            secs: 1_700_000_000 + i,
            nanos: (i as u32).wrapping_mul(1_000_003) % 1_000_000_000,
        }
    }

    fn pts(t: Timestamp) -> Option<proto::Timestamp> {
        Some(proto::Timestamp {
            seconds: t.secs,
            nanos: t.nanos as i32,
        })
    }

    #[test]
    fn record_buffers_grow_to_powers_of_two_within_the_limit() {
        // At least double, a power of two, never below what is needed.
        assert_eq!(grown_capacity(1024, 16_572, DEFAULT_MAX), 32_768);
        assert_eq!(grown_capacity(32_768, 65_992, DEFAULT_MAX), 131_072);
        assert_eq!(grown_capacity(65_536, 65_540, DEFAULT_MAX), 131_072);
        assert_eq!(grown_capacity(65_993, 65_996, DEFAULT_MAX), 262_144);
        assert_eq!(grown_capacity(0, 1, DEFAULT_MAX), 1);
        // Capped at the record limit (not a power of two itself), but never below the need.
        assert_eq!(grown_capacity(524_288, 600_000, DEFAULT_MAX), DEFAULT_MAX);
        assert_eq!(grown_capacity(1000, 5000, 3000), 5000);
        assert_eq!(
            grown_capacity(usize::MAX / 2 + 2, usize::MAX, usize::MAX),
            usize::MAX
        );
        // A record of one 64 KiB response, from an empty buffer: exactly 128 KiB at the end.
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.read(
            ts(0),
            b"GET /large.json HTTP/1.1\r\nHost: x\r\n\r\n",
            &mut out,
        );
        // Head and body in two reads (16 KiB, then the rest), as perf saw them on loopback.
        b.write(ts(1), &[b'x'; 16 * 1024], &mut out);
        b.write(ts(1), &[b'x'; 48 * 1024 + 200], &mut out);
        b.flush(&mut out);
        assert_eq!(out.recs.len(), 1);
        assert_eq!(out.recs[0].value.capacity(), 128 * 1024);
    }

    /// Decodes every record and checks the per-connection invariants: ids, numbering 1..=N
    /// with exactly one (last) final record, sizes within `max`, no empty record.
    fn check_records(recs: &[FinishedRecord], max: usize) -> Vec<proto::TrafficStream> {
        assert!(!recs.is_empty());
        let mut out = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let n = i as u32 + 1;
            let last = i + 1 == recs.len();
            assert_eq!(r.number, n);
            assert_eq!(r.is_final, last, "record {n}");
            assert!(
                r.value.len() <= max,
                "record {n} is {} bytes > {max}",
                r.value.len()
            );
            // Stricter: observations stay within the budget left after the reserved index.
            let index_len = if last {
                RecordIndex::NumberOfThisLastChunk(n as i32)
            } else {
                RecordIndex::Number(n as i32)
            }
            .encoded_len();
            assert!(r.value.len() - index_len <= max - INDEX_FIELD_MAX_LEN);
            let s = proto::TrafficStream::decode(&r.value[..]).unwrap();
            assert_eq!(s.connection_id, CONN);
            assert_eq!(s.node_id, NODE);
            assert!(!s.sub_stream.is_empty(), "record {n} empty");
            let want = if last {
                Index::NumberOfThisLastChunk(n as i32)
            } else {
                Index::Number(n as i32)
            };
            assert_eq!(s.index, Some(want));
            assert_ne!(s.last_observation_was_unterminated_read, Some(false));
            assert_ne!(s.prior_requests_received, Some(0));
            for o in &s.sub_stream {
                assert!(o.ts.is_some());
                assert!(o.capture.is_some());
            }
            out.push(s);
        }
        out
    }

    /// One capture event as seen by the consumer, with split reads/writes reassembled.
    #[derive(Debug, Clone, PartialEq)]
    enum Ev {
        Read(Timestamp, Vec<u8>),
        Write(Timestamp, Vec<u8>),
        Eom(Timestamp, i32, i32),
        Dropped(Timestamp),
        Exception(Timestamp, String),
        Close(Timestamp),
    }

    fn to_ts(t: Option<proto::Timestamp>) -> Timestamp {
        let t = t.unwrap();
        Timestamp {
            secs: t.seconds,
            nanos: t.nanos as u32,
        }
    }

    /// Flattens the records into events; returns also, per event, whether it was split.
    /// Asserts segment structure: segments of one buffer are contiguous, share one timestamp
    /// and one direction, and are terminated by segmentEnd before anything else.
    fn events(streams: &[proto::TrafficStream]) -> Vec<(Ev, bool)> {
        let mut evs = Vec::new();
        let mut pending: Option<(bool, Timestamp, Vec<u8>)> = None;
        for o in streams.iter().flat_map(|s| s.sub_stream.iter()) {
            let t = to_ts(o.ts);
            let c = o.capture.clone().unwrap();
            match c {
                Capture::ReadSegment(s) | Capture::WriteSegment(s) => {
                    let is_read = matches!(o.capture, Some(Capture::ReadSegment(_)));
                    assert!(!s.data.is_empty(), "empty segment");
                    match &mut pending {
                        None => pending = Some((is_read, t, s.data)),
                        Some((r, pt, d)) => {
                            assert_eq!(*r, is_read, "segments of both directions mixed");
                            assert_eq!(*pt, t, "segment timestamp changed");
                            d.extend_from_slice(&s.data);
                        }
                    }
                    continue;
                }
                Capture::SegmentEnd(_) => {
                    let (r, pt, d) = pending.take().expect("segmentEnd without segments");
                    assert_eq!(pt, t, "segmentEnd timestamp");
                    evs.push((if r { Ev::Read(pt, d) } else { Ev::Write(pt, d) }, true));
                    continue;
                }
                _ => {}
            }
            assert!(pending.is_none(), "segments not terminated by segmentEnd");
            let ev = match c {
                Capture::Read(r) => Ev::Read(t, r.data),
                Capture::Write(w) => Ev::Write(t, w.data),
                Capture::EndOfMessageIndicator(e) => Ev::Eom(
                    t,
                    e.first_line_byte_length.unwrap(),
                    e.headers_byte_length.unwrap(),
                ),
                Capture::RequestDropped(_) => Ev::Dropped(t),
                Capture::ConnectionException(e) => Ev::Exception(t, e.message),
                Capture::Close(_) => Ev::Close(t),
                other => panic!("unexpected observation {other:?}"),
            };
            evs.push((ev, false));
        }
        assert!(pending.is_none(), "segments not terminated at the end");
        evs
    }

    fn kinds(s: &proto::TrafficStream) -> Vec<&'static str> {
        s.sub_stream
            .iter()
            .map(|o| match o.capture.as_ref().unwrap() {
                Capture::Read(_) => "read",
                Capture::ReadSegment(_) => "readSegment",
                Capture::Write(_) => "write",
                Capture::WriteSegment(_) => "writeSegment",
                Capture::EndOfMessageIndicator(_) => "eom",
                Capture::RequestDropped(_) => "requestDropped",
                Capture::ConnectionException(_) => "exception",
                Capture::SegmentEnd(_) => "segmentEnd",
                Capture::Close(_) => "close",
                _ => "other",
            })
            .collect()
    }

    /// Checks fields 6 and 7 of every record against the observations of the records before.
    fn check_header_state(streams: &[proto::TrafficStream]) {
        let mut eoms = 0i32;
        let mut reads_pending = false;
        for s in streams {
            let want6 = if eoms > 0 { Some(eoms) } else { None };
            let want7 = if reads_pending { Some(true) } else { None };
            assert_eq!(s.prior_requests_received, want6);
            assert_eq!(s.last_observation_was_unterminated_read, want7);
            for o in &s.sub_stream {
                match o.capture.as_ref().unwrap() {
                    Capture::Read(_) | Capture::ReadSegment(_) => reads_pending = true,
                    Capture::EndOfMessageIndicator(_) => {
                        eoms += 1;
                        reads_pending = false
                    }
                    Capture::RequestDropped(_) => reads_pending = false,
                    _ => {}
                }
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn three_gets_keep_alive_one_record() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        for i in 0..3 {
            b.read(ts(i * 3), req, &mut out);
            b.end_of_message(ts(i * 3), 14, 7, &mut out);
            b.write(ts(i * 3 + 1), resp, &mut out);
        }
        assert!(out.recs.is_empty());
        assert!(b.has_unflushed());
        assert_eq!(b.unflushed_since(), Some(ts(0)));
        assert_eq!(b.requests_completed(), 3);
        assert!(!b.read_since_last_eom());
        assert_eq!(b.close(ts(20), &mut out), 1);
        let streams = check_records(&out.recs, DEFAULT_MAX);
        assert_eq!(streams.len(), 1);
        let s = &streams[0];
        assert_eq!(
            kinds(s),
            ["read", "eom", "write", "read", "eom", "write", "read", "eom", "write", "close"]
        );
        assert_eq!(s.index, Some(Index::NumberOfThisLastChunk(1)));
        assert_eq!(s.prior_requests_received, None);
        assert_eq!(s.last_observation_was_unterminated_read, None);
        let evs: Vec<Ev> = events(&streams).into_iter().map(|e| e.0).collect();
        assert_eq!(evs[0], Ev::Read(ts(0), req.to_vec()));
        assert_eq!(evs[1], Ev::Eom(ts(0), 14, 7));
        assert_eq!(evs[2], Ev::Write(ts(1), resp.to_vec()));
        assert_eq!(evs[9], Ev::Close(ts(20)));
        assert_eq!(b.records_emitted(), 1);
        assert!(b.is_finished());
        assert_eq!(out.taken, 1);
    }

    #[test]
    fn post_then_flush_then_close_two_records() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.read(
            ts(1),
            b"POST /i/_doc HTTP/1.1\r\ncontent-length: 2\r\n\r\n",
            &mut out,
        );
        assert!(b.read_since_last_eom());
        b.read(ts(2), b"{}", &mut out);
        b.end_of_message(ts(2), 21, 18, &mut out);
        assert_eq!(b.flush(&mut out), Some(1));
        assert_eq!(b.flush(&mut out), None, "no empty records");
        assert!(!b.has_unflushed());
        assert_eq!(b.unflushed_since(), None);
        b.write(ts(3), b"HTTP/1.1 201 Created\r\n\r\n", &mut out);
        assert_eq!(b.close(ts(4), &mut out), 2);
        let streams = check_records(&out.recs, DEFAULT_MAX);
        assert_eq!(streams.len(), 2);
        assert_eq!(kinds(&streams[0]), ["read", "read", "eom"]);
        assert_eq!(streams[0].index, Some(Index::Number(1)));
        assert_eq!(streams[0].prior_requests_received, None);
        assert_eq!(kinds(&streams[1]), ["write", "close"]);
        assert_eq!(streams[1].index, Some(Index::NumberOfThisLastChunk(2)));
        assert_eq!(streams[1].prior_requests_received, Some(1));
        assert_eq!(streams[1].last_observation_was_unterminated_read, None);
        check_header_state(&streams);
    }

    #[test]
    fn empty_connection_yields_close_only() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        assert_eq!(b.flush(&mut out), None);
        b.read(ts(0), b"", &mut out); // empty data is ignored
        assert!(!b.has_unflushed());
        assert_eq!(b.close(ts(5), &mut out), 1);
        let streams = check_records(&out.recs, DEFAULT_MAX);
        assert_eq!(streams.len(), 1);
        assert_eq!(kinds(&streams[0]), ["close"]);
        assert_eq!(streams[0].sub_stream[0].ts, pts(ts(5)));
        assert_eq!(streams[0].index, Some(Index::NumberOfThisLastChunk(1)));
    }

    #[test]
    fn calls_after_close_are_ignored() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.read(ts(0), b"abc", &mut out);
        assert_eq!(b.close(ts(1), &mut out), 1);
        b.read(ts(2), b"x", &mut out);
        b.write(ts(2), b"x", &mut out);
        b.end_of_message(ts(2), 1, 1, &mut out);
        b.request_dropped(ts(2), &mut out);
        b.connection_exception(ts(2), "late", &mut out);
        assert_eq!(b.flush(&mut out), None);
        assert_eq!(b.close(ts(3), &mut out), 0);
        assert_eq!(out.recs.len(), 1);
        assert_eq!(b.records_emitted(), 1);
        assert!(!b.has_unflushed());
        assert_eq!(b.buffered_len(), 0);
    }

    #[test]
    fn large_read_is_split_over_three_records() {
        let len = 2 * 1024 * 1024 + 209_716; // 2.2 MiB
        let data = pattern(len, 3);
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.read(ts(7), &data, &mut out);
        assert_eq!(out.recs.len(), 2, "two full records emitted by size");
        assert!(b.read_since_last_eom());
        assert_eq!(b.close(ts(8), &mut out), 3);
        let streams = check_records(&out.recs, DEFAULT_MAX);
        assert_eq!(streams.len(), 3);
        assert_eq!(kinds(&streams[0]), ["readSegment"]);
        assert_eq!(kinds(&streams[1]), ["readSegment"]);
        assert_eq!(kinds(&streams[2]), ["readSegment", "segmentEnd", "close"]);
        assert_eq!(streams[0].last_observation_was_unterminated_read, None);
        assert_eq!(
            streams[1].last_observation_was_unterminated_read,
            Some(true)
        );
        assert_eq!(
            streams[2].last_observation_was_unterminated_read,
            Some(true)
        );
        for r in &out.recs[..2] {
            // Full: at most the unused part of the reserved index field and varint slack.
            assert!(DEFAULT_MAX - r.value.len() <= 7, "{}", r.value.len());
            // Grown without overshooting the record limit.
            assert!(r.value.capacity() <= DEFAULT_MAX);
        }
        let evs = events(&streams);
        assert_eq!(evs[0], (Ev::Read(ts(7), data), true));
        assert_eq!(evs[1], (Ev::Close(ts(8)), false));
        check_header_state(&streams);
        assert_eq!(out.taken, 3);
    }

    #[test]
    fn small_record_stays_small() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.read(ts(0), &[b'x'; 100], &mut out);
        assert!(b.buf.capacity() <= INITIAL_RECORD_CAPACITY_BYTES);
        b.write(ts(1), &[b'y'; 3000], &mut out);
        assert!(b.buf.capacity() < 8 * 1024);
        assert_eq!(out.taken, 1);
    }

    #[test]
    fn uses_pooled_buffer_capacity() {
        struct Pool(Vec<Vec<u8>>, Vec<FinishedRecord>);
        impl RecordOut for Pool {
            fn take_buffer(&mut self) -> Vec<u8> {
                self.0.pop().unwrap_or_default()
            }
            fn emit(&mut self, rec: FinishedRecord) {
                self.1.push(rec);
            }
        }
        let mut pool = Pool(vec![Vec::with_capacity(64 * 1024)], Vec::new());
        let mut b = builder(DEFAULT_MAX);
        b.read(ts(0), &[1; 5000], &mut pool);
        let ptr = b.buf.as_ptr();
        b.write(ts(0), &[2; 20_000], &mut pool);
        assert_eq!(
            b.buf.as_ptr(),
            ptr,
            "no regrowth inside the pooled capacity"
        );
        b.flush(&mut pool);
        assert_eq!(pool.1[0].value.capacity(), 64 * 1024);
    }

    /// Whether `data_len` bytes read after an optional 5-byte prefix read should be split.
    fn expect_split(max: usize, prefix: bool, data_len: usize, t: &Timestamp) -> bool {
        let header = |unterminated| {
            RecordHeader {
                connection_id: CONN,
                node_id: NODE,
                prior_requests_received: 0,
                last_observation_was_unterminated_read: unterminated,
            }
            .encoded_len()
        };
        let whole = encode::data_entry_len(t, data_len);
        let seg1 = encode::data_segment_entry_len(t, 1);
        let budget = max - INDEX_FIELD_MAX_LEN;
        if !prefix {
            return header(false) + whole > budget;
        }
        let used = header(false) + encode::data_entry_len(t, 5);
        if used + seg1 > budget {
            header(true) + whole > budget
        } else {
            used + whole > budget
        }
    }

    #[test]
    fn segmenting_table() {
        let t = ts(11);
        let min = min_record_bytes(CONN.len(), NODE.len());
        let mut maxes: Vec<usize> = (min..=300).collect();
        for b in [128usize, 16_384, 2_097_152] {
            for d in 0..12 {
                maxes.push(b + d);
                maxes.push(b - d);
            }
        }
        let lens = [
            1usize, 2, 10, 50, 100, 126, 127, 128, 129, 200, 1000, 16_383, 16_384, 16_385,
        ];
        for &max in &maxes {
            for &len in &lens {
                for prefix in [false, true] {
                    let data = pattern(len, len as u8);
                    let mut b = builder(max);
                    let mut out = Collect::default();
                    if prefix {
                        b.read(t, b"12345", &mut out);
                    }
                    b.read(t, &data, &mut out);
                    b.close(ts(12), &mut out);
                    let streams = check_records(&out.recs, max);
                    check_header_state(&streams);
                    let evs = events(&streams);
                    let mut want = Vec::new();
                    if prefix {
                        want.push((Ev::Read(t, b"12345".to_vec()), false));
                    }
                    let split = expect_split(max, prefix, len, &t);
                    want.push((Ev::Read(t, data.clone()), split));
                    want.push((Ev::Close(ts(12)), false));
                    assert_eq!(evs, want, "max {max} len {len} prefix {prefix}");
                    // A record whose last segment continues in the next record is full
                    // (largest slice taken).
                    for (i, (r, s)) in out.recs.iter().zip(&streams).enumerate() {
                        let last = s.sub_stream.last().unwrap().capture.as_ref().unwrap();
                        let continues = streams.get(i + 1).is_some_and(|n| {
                            matches!(n.sub_stream[0].capture, Some(Capture::ReadSegment(_)))
                        });
                        if matches!(last, Capture::ReadSegment(_)) && continues {
                            assert!(max - r.value.len() <= 7, "max {max} len {len}");
                        }
                    }
                    assert_eq!(out.taken, out.recs.len());
                }
            }
        }
    }

    #[test]
    fn one_byte_per_record_extreme() {
        let t = ts(1);
        let header_with_7 = RecordHeader {
            connection_id: CONN,
            node_id: NODE,
            prior_requests_received: 0,
            last_observation_was_unterminated_read: true,
        }
        .encoded_len();
        let max = header_with_7 + encode::data_segment_entry_len(&t, 1) + INDEX_FIELD_MAX_LEN;
        let data = pattern(40, 9);
        let mut b = builder(max);
        let mut out = Collect::default();
        b.read(t, &data, &mut out);
        b.close(ts(2), &mut out);
        let streams = check_records(&out.recs, max);
        // The first record has no field 7, so 2 more bytes of room: 3 data bytes.
        let sizes: Vec<usize> = streams
            .iter()
            .filter_map(|s| match s.sub_stream[0].capture.as_ref().unwrap() {
                Capture::ReadSegment(seg) => Some(seg.data.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sizes[0], 3);
        assert!(sizes[1..].iter().all(|&n| n == 1), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        let evs = events(&streams);
        assert_eq!(evs[0], (Ev::Read(t, data), true));
        check_header_state(&streams);
    }

    #[test]
    fn settings_reject_too_small_and_smallest_legal_works() {
        let node: Arc<str> = "0f8fad5b-d9cb-469f-a165-70867728950e".into();
        let min = min_record_bytes(MAX_CONNECTION_ID_BYTES, node.len());
        assert_eq!(
            CaptureSettings::new(node.clone(), min - 1),
            Err(CaptureError::RecordTooSmall {
                max_record_bytes: min - 1,
                min
            })
        );
        assert!(CaptureSettings::new(node.clone(), MAX_RECORD_BYTES_LIMIT + 1).is_err());
        assert!(CaptureSettings::new(node.clone(), DEFAULT_MAX).is_ok());
        let settings = Arc::new(CaptureSettings::new(node.clone(), min).unwrap());
        let conn: Arc<str> = "c".repeat(MAX_CONNECTION_ID_BYTES).into();
        let worst = WORST_TS;
        let mut b = StreamBuilder::new(conn.clone(), settings);
        let mut out = Collect::default();
        for i in 0..200u32 {
            b.read(worst, &pattern(i as usize % 37 + 1, 1), &mut out);
            if i % 3 == 0 {
                b.end_of_message(worst, u32::MAX, u32::MAX, &mut out);
            }
            if i % 5 == 0 {
                b.write(worst, &pattern(i as usize % 300, 2), &mut out);
            }
            if i % 7 == 0 {
                b.request_dropped(worst, &mut out);
            }
            if i % 11 == 0 {
                b.connection_exception(worst, &"é".repeat(200), &mut out);
                b.connection_exception(worst, "", &mut out);
            }
        }
        b.close(worst, &mut out);
        for (i, r) in out.recs.iter().enumerate() {
            assert!(
                r.value.len() <= min,
                "record {i}: {} > {min}",
                r.value.len()
            );
            let s = proto::TrafficStream::decode(&r.value[..]).unwrap();
            assert_eq!(&*s.connection_id, &*conn);
            assert!(!s.sub_stream.is_empty());
            for o in &s.sub_stream {
                if let Some(Capture::EndOfMessageIndicator(e)) = &o.capture {
                    assert_eq!(e.first_line_byte_length, Some(i32::MAX));
                }
                if let Some(Capture::ConnectionException(e)) = &o.capture {
                    assert!(!e.message.is_empty());
                    assert!(
                        "é".repeat(200).starts_with(&e.message)
                            || EMPTY_EXCEPTION_MESSAGE.starts_with(&e.message)
                    );
                }
            }
        }
        assert_eq!(out.recs.last().unwrap().number as usize, out.recs.len());
    }

    #[test]
    fn exception_messages() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.connection_exception(ts(1), "", &mut out);
        b.connection_exception(ts(2), "Connection reset by peer", &mut out);
        b.close(ts(3), &mut out);
        let streams = check_records(&out.recs, DEFAULT_MAX);
        let evs: Vec<Ev> = events(&streams).into_iter().map(|e| e.0).collect();
        assert_eq!(
            evs,
            [
                Ev::Exception(ts(1), EMPTY_EXCEPTION_MESSAGE.to_string()),
                Ev::Exception(ts(2), "Connection reset by peer".to_string()),
                Ev::Close(ts(3)),
            ]
        );
        // Too long for a small record: truncated at a char boundary, then fits.
        let max = 120;
        let mut b = builder(max);
        let mut out = Collect::default();
        b.read(ts(1), b"GET", &mut out);
        let long = "ü".repeat(500);
        b.connection_exception(ts(1), &long, &mut out);
        b.close(ts(2), &mut out);
        let streams = check_records(&out.recs, max);
        let evs: Vec<Ev> = events(&streams).into_iter().map(|e| e.0).collect();
        match &evs[1] {
            Ev::Exception(_, m) => {
                assert!(!m.is_empty() && long.starts_with(m.as_str()));
                assert!(m.len() > 20);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn field7_presence() {
        let mut b = builder(DEFAULT_MAX);
        let mut out = Collect::default();
        b.read(ts(1), b"GET / HTTP/1.1\r\n", &mut out);
        b.flush(&mut out); // record 2 starts mid-request
        b.read(ts(2), b"\r\n", &mut out);
        b.end_of_message(ts(2), 14, 0, &mut out);
        b.flush(&mut out); // record 3 starts after an EOM
        b.write(ts(3), b"HTTP/1.1 200 OK\r\n\r\n", &mut out);
        b.read(ts(4), b"GET /x HTTP/1.1\r\n", &mut out);
        b.flush(&mut out); // record 4 starts mid-request
        b.request_dropped(ts(5), &mut out);
        b.flush(&mut out); // record 5 starts after requestDropped
        b.write(ts(6), b"x", &mut out);
        b.flush(&mut out);
        b.close(ts(7), &mut out); // record 6: writes don't set the flag
        let streams = check_records(&out.recs, DEFAULT_MAX);
        let f7: Vec<Option<bool>> = streams
            .iter()
            .map(|s| s.last_observation_was_unterminated_read)
            .collect();
        assert_eq!(f7, [None, Some(true), None, Some(true), None, None]);
        let f6: Vec<Option<i32>> = streams.iter().map(|s| s.prior_requests_received).collect();
        assert_eq!(f6, [None, None, Some(1), Some(1), Some(1), Some(1)]);
        check_header_state(&streams);
        // The raw bytes never hold field 7 = false (0x38 0x00) in a header.
        for r in &out.recs {
            let h_end = 2 + CONN.len() + 2 + NODE.len();
            let rest = &r.value[h_end..];
            assert!(!rest.starts_with(&[0x38, 0x00]));
        }
    }

    #[test]
    fn segment_end_may_land_in_next_record_and_write_split() {
        // Find a max where the split write's last piece fills the record exactly, so that the
        // segmentEnd opens a new record; and check writes split like reads.
        let t = ts(3);
        let mut seen_alone = false;
        for max in 80..400 {
            let data = pattern(500, 4);
            let mut b = builder(max);
            let mut out = Collect::default();
            b.write(t, &data, &mut out);
            b.close(ts(4), &mut out);
            let streams = check_records(&out.recs, max);
            if streams
                .iter()
                .any(|s| kinds(s).first() == Some(&"segmentEnd"))
            {
                seen_alone = true;
            }
            assert!(streams
                .iter()
                .all(|s| s.last_observation_was_unterminated_read.is_none()));
            let evs = events(&streams);
            assert_eq!(evs[0], (Ev::Write(t, data), true));
        }
        assert!(seen_alone);
    }

    #[test]
    fn degenerate_settings_make_progress_without_panic() {
        for max in [0usize, 1, 10, 20, 30, 40] {
            let mut b = builder(max);
            let mut out = Collect::default();
            b.read(ts(1), &pattern(100, 1), &mut out);
            b.end_of_message(ts(1), 3, 4, &mut out);
            b.write(ts(1), &pattern(50, 2), &mut out);
            b.connection_exception(ts(1), "boom", &mut out);
            b.request_dropped(ts(1), &mut out);
            let n = b.close(ts(2), &mut out);
            assert_eq!(n as usize, out.recs.len());
            assert!(out.recs.len() < 20);
            let mut reads = Vec::new();
            for r in &out.recs {
                let s = proto::TrafficStream::decode(&r.value[..]).unwrap();
                assert!(!s.sub_stream.is_empty());
                for o in s.sub_stream {
                    match o.capture.unwrap() {
                        Capture::Read(d) => reads.extend(d.data),
                        Capture::ReadSegment(d) => reads.extend(d.data),
                        _ => {}
                    }
                }
            }
            assert_eq!(reads, pattern(100, 1));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Read(usize),
        Write(usize),
        Eom(u32, u32),
        Dropped,
        Exception(String),
        Flush,
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..600).prop_map(Op::Read),
            4 => (0usize..600).prop_map(Op::Write),
            2 => (0u32..200, 0u32..5000).prop_map(|(a, b)| Op::Eom(a, b)),
            1 => Just(Op::Dropped),
            1 => "\\PC{0,30}".prop_map(Op::Exception),
            1 => Just(Op::Flush),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn random_operation_sequences(
            ops in prop::collection::vec(op_strategy(), 0..40),
            extra in 0usize..300,
        ) {
            let max = min_record_bytes(CONN.len(), NODE.len()) + extra;
            let mut b = builder(max);
            let mut out = Collect::default();
            let mut want = Vec::new();
            let mut eoms = 0u32;
            let mut flushes_with_data = 0usize;
            for (i, op) in ops.iter().enumerate() {
                let t = ts(i as i64);
                match op {
                    Op::Read(n) => {
                        let d = pattern(*n, i as u8);
                        b.read(t, &d, &mut out);
                        if !d.is_empty() {
                            want.push(Ev::Read(t, d));
                        }
                    }
                    Op::Write(n) => {
                        let d = pattern(*n, i as u8);
                        b.write(t, &d, &mut out);
                        if !d.is_empty() {
                            want.push(Ev::Write(t, d));
                        }
                    }
                    Op::Eom(a, h) => {
                        b.end_of_message(t, *a, *h, &mut out);
                        eoms += 1;
                        want.push(Ev::Eom(t, *a as i32, *h as i32));
                    }
                    Op::Dropped => {
                        b.request_dropped(t, &mut out);
                        want.push(Ev::Dropped(t));
                    }
                    Op::Exception(m) => {
                        b.connection_exception(t, m, &mut out);
                        want.push(Ev::Exception(t, m.clone()));
                    }
                    Op::Flush => {
                        let had = b.has_unflushed();
                        let before = out.recs.len();
                        let r = b.flush(&mut out);
                        prop_assert_eq!(r.is_some(), had);
                        if let Some(n) = r {
                            prop_assert_eq!(n as usize, before + 1);
                            flushes_with_data += 1;
                        }
                    }
                }
                prop_assert_eq!(b.requests_completed(), eoms);
                prop_assert_eq!(b.records_emitted() as usize, out.recs.len());
            }
            let last = ops.len() as i64;
            let n = b.close(ts(last), &mut out);
            want.push(Ev::Close(ts(last)));
            prop_assert_eq!(n as usize, out.recs.len());
            prop_assert!(out.recs.len() > flushes_with_data);
            let streams = check_records(&out.recs, max);
            check_header_state(&streams);
            let got: Vec<Ev> = events(&streams).into_iter().map(|e| e.0).collect();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                match (g, w) {
                    (Ev::Exception(gt, gm), Ev::Exception(wt, wm)) => {
                        prop_assert_eq!(gt, wt);
                        prop_assert!(!gm.is_empty());
                        if wm.is_empty() {
                            prop_assert!(EMPTY_EXCEPTION_MESSAGE.starts_with(gm.as_str()));
                        } else {
                            prop_assert!(wm.starts_with(gm.as_str()));
                        }
                    }
                    _ => prop_assert_eq!(g, w),
                }
            }
            // Reads and writes concatenated equal the inputs.
            let cat = |read: bool, evs: &[Ev]| -> Vec<u8> {
                evs.iter()
                    .flat_map(|e| match e {
                        Ev::Read(_, d) if read => d.clone(),
                        Ev::Write(_, d) if !read => d.clone(),
                        _ => Vec::new(),
                    })
                    .collect()
            };
            prop_assert_eq!(cat(true, &got), cat(true, &want));
            prop_assert_eq!(cat(false, &got), cat(false, &want));
            let eom_count = got.iter().filter(|e| matches!(e, Ev::Eom(..))).count();
            prop_assert_eq!(eom_count, eoms as usize);
            prop_assert_eq!(out.taken, out.recs.len());
        }
    }
}
