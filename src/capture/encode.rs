//! Hand-written protobuf encoder for `TrafficStream` records (HOT path).
//!
//! Owns: varint/tag/length-delimited primitives, exact encoded sizes, and one append function
//! per observation kind, each writing one complete `subStream` entry (field 2 of
//! `TrafficStream`: tag, length, `TrafficObservation{ts, capture}`), plus the record header
//! (fields 1, 5, 6, 7) and the trailing index field (3 `number` / 4 `numberOfThisLastChunk`).
//! Field numbers and presence rules: `shared/spec/capture-format.md`.
//!
//! May depend on: `std` only. Knows nothing of records, flushing or numbering policy (that is
//! `capture::builder`).
//!
//! Invariants: every `*_len` function returns exactly the number of bytes its `put_*` twin
//! appends; `put_*` functions only append to the `Vec` (they never allocate anything else and
//! never panic); field 7 is never written as `false`, field 6 never as `0`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Protobuf wire type of varint-encoded scalars (int32, int64, bool).
pub(crate) const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of length-delimited fields (bytes, string, sub-messages).
pub(crate) const WIRE_LEN: u8 = 2;

/// Field numbers of `TrafficStream`.
pub(crate) mod stream_field {
    pub(crate) const CONNECTION_ID: u32 = 1;
    pub(crate) const SUB_STREAM: u32 = 2;
    pub(crate) const NUMBER: u32 = 3;
    pub(crate) const NUMBER_OF_THIS_LAST_CHUNK: u32 = 4;
    pub(crate) const NODE_ID: u32 = 5;
    pub(crate) const PRIOR_REQUESTS_RECEIVED: u32 = 6;
    pub(crate) const LAST_OBSERVATION_WAS_UNTERMINATED_READ: u32 = 7;
}

/// Field numbers of `TrafficObservation` (`ts` and the `Capture` oneof members we write).
pub(crate) mod observation_field {
    pub(crate) const TS: u32 = 1;
    pub(crate) const READ: u32 = 4;
    pub(crate) const READ_SEGMENT: u32 = 5;
    pub(crate) const WRITE: u32 = 8;
    pub(crate) const WRITE_SEGMENT: u32 = 9;
    pub(crate) const CLOSE: u32 = 11;
    pub(crate) const CONNECTION_EXCEPTION: u32 = 12;
    pub(crate) const SEGMENT_END: u32 = 14;
    pub(crate) const END_OF_MESSAGE_INDICATOR: u32 = 15;
    pub(crate) const REQUEST_DROPPED: u32 = 16;
}

/// Field number of `data` inside `read` / `write`.
const PLAIN_DATA_FIELD: u32 = 1;
/// Field number of `data` inside `readSegment` / `writeSegment` (note: 2, not 1).
const SEGMENT_DATA_FIELD: u32 = 2;
/// Field number of `message` inside `connectionException`.
const EXCEPTION_MESSAGE_FIELD: u32 = 1;
/// Field numbers inside `endOfMessageIndicator`.
const EOM_FIRST_LINE_FIELD: u32 = 1;
const EOM_HEADERS_FIELD: u32 = 2;
/// Field numbers inside `google.protobuf.Timestamp`.
const TS_SECONDS_FIELD: u32 = 1;
const TS_NANOS_FIELD: u32 = 2;

/// Largest valid `Timestamp.nanos` (protobuf requires 0..=999_999_999); larger inputs are clamped.
const MAX_NANOS: u32 = 999_999_999;

/// Worst-case size in bytes of the trailing index field: a 1-byte tag (field 3 or 4) plus a
/// 5-byte varint (the largest a non-negative int32 needs). Records reserve this much.
pub(crate) const INDEX_FIELD_MAX_LEN: usize = 1 + 5;

/// Number of bytes the varint encoding of `v` takes (1..=10).
#[inline]
pub(crate) const fn varint_len(v: u64) -> usize {
    // 7 payload bits per byte; `| 1` makes 0 take one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `v` as a base-128 varint.
#[inline]
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The varint value protobuf uses for an `int32` (negative values are sign-extended to 64 bits).
#[inline]
pub(crate) const fn int32_wire_value(v: i32) -> u64 {
    v as i64 as u64
}

/// Size of the key (tag) of field `field`.
#[inline]
pub(crate) const fn tag_len(field: u32) -> usize {
    varint_len((field as u64) << 3)
}

/// Appends the key of field `field` with wire type `wire_type`.
#[inline]
pub(crate) fn put_tag(buf: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(buf, ((field as u64) << 3) | u64::from(wire_type));
}

/// Size of a whole length-delimited field: tag + length varint + `payload_len` bytes.
#[inline]
pub(crate) const fn len_field_len(field: u32, payload_len: usize) -> usize {
    tag_len(field) + varint_len(payload_len as u64) + payload_len
}

/// Appends the tag and length prefix of a length-delimited field; the caller appends the
/// `payload_len` payload bytes next.
#[inline]
pub(crate) fn put_len_prefix(buf: &mut Vec<u8>, field: u32, payload_len: usize) {
    put_tag(buf, field, WIRE_LEN);
    put_varint(buf, payload_len as u64);
}

/// Appends a complete `bytes`/`string` field (always written, also when empty).
#[inline]
pub(crate) fn put_bytes_field(buf: &mut Vec<u8>, field: u32, data: &[u8]) {
    put_len_prefix(buf, field, data.len());
    buf.extend_from_slice(data);
}

/// Size of a complete varint field (tag + value).
#[inline]
pub(crate) const fn varint_field_len(field: u32, value: u64) -> usize {
    tag_len(field) + varint_len(value)
}

/// Appends a complete varint field (always written, also when 0).
#[inline]
pub(crate) fn put_varint_field(buf: &mut Vec<u8>, field: u32, value: u64) {
    put_tag(buf, field, WIRE_VARINT);
    put_varint(buf, value);
}

/// Wall-clock instant of an observation (`google.protobuf.Timestamp`).
///
/// `nanos` should be `< 1_000_000_000`; the encoder clamps larger values to 999_999_999.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    /// The realtime clock (UTC), nanosecond part included. Instants before 1970 are
    /// normalized the protobuf way (negative seconds, non-negative nanos).
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Self {
                secs: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => Self {
                        secs: secs.saturating_neg(),
                        nanos: 0,
                    },
                    n => Self {
                        secs: secs.saturating_neg().saturating_sub(1),
                        nanos: 1_000_000_000 - n,
                    },
                }
            }
        }
    }

    #[inline]
    const fn wire_nanos(&self) -> u64 {
        if self.nanos > MAX_NANOS {
            MAX_NANOS as u64
        } else {
            self.nanos as u64
        }
    }

    /// Size of the encoded `Timestamp` message body (zero fields omitted, as proto3 does).
    #[inline]
    pub(crate) const fn body_len(&self) -> usize {
        let secs = self.secs as u64;
        let nanos = self.wire_nanos();
        let s = if secs != 0 {
            varint_field_len(TS_SECONDS_FIELD, secs)
        } else {
            0
        };
        let n = if nanos != 0 {
            varint_field_len(TS_NANOS_FIELD, nanos)
        } else {
            0
        };
        s + n
    }

    /// Size of the whole `ts` field (field 1 of `TrafficObservation`).
    #[inline]
    pub(crate) const fn field_len(&self) -> usize {
        len_field_len(observation_field::TS, self.body_len())
    }

    /// Appends the `ts` field (always present, even when both members are 0).
    #[inline]
    pub(crate) fn put_field(&self, buf: &mut Vec<u8>) {
        put_len_prefix(buf, observation_field::TS, self.body_len());
        let secs = self.secs as u64;
        if secs != 0 {
            put_varint_field(buf, TS_SECONDS_FIELD, secs);
        }
        let nanos = self.wire_nanos();
        if nanos != 0 {
            put_varint_field(buf, TS_NANOS_FIELD, nanos);
        }
    }
}

/// Direction of captured data: client → proxy (`read`) or proxy → client (`write`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Read,
    Write,
}

impl Direction {
    #[inline]
    const fn plain_field(self) -> u32 {
        match self {
            Direction::Read => observation_field::READ,
            Direction::Write => observation_field::WRITE,
        }
    }

    #[inline]
    const fn segment_field(self) -> u32 {
        match self {
            Direction::Read => observation_field::READ_SEGMENT,
            Direction::Write => observation_field::WRITE_SEGMENT,
        }
    }
}

/// Size of a `subStream` entry whose observation holds `ts` and a capture member
/// `capture_field` with a body of `capture_body_len` bytes.
#[inline]
const fn entry_len(ts: &Timestamp, capture_field: u32, capture_body_len: usize) -> usize {
    let obs = ts.field_len() + len_field_len(capture_field, capture_body_len);
    len_field_len(stream_field::SUB_STREAM, obs)
}

/// Appends the `subStream` tag, the observation length, the `ts` field and the capture
/// member's tag and length; the caller appends `capture_body_len` body bytes next.
#[inline]
fn put_entry_prefix(
    buf: &mut Vec<u8>,
    ts: &Timestamp,
    capture_field: u32,
    capture_body_len: usize,
) {
    let obs = ts.field_len() + len_field_len(capture_field, capture_body_len);
    put_len_prefix(buf, stream_field::SUB_STREAM, obs);
    ts.put_field(buf);
    put_len_prefix(buf, capture_field, capture_body_len);
}

/// Size of a plain `read`/`write` entry carrying `data_len` bytes.
#[inline]
pub(crate) const fn data_entry_len(ts: &Timestamp, data_len: usize) -> usize {
    // Field numbers 4 (read) and 8 (write) have 1-byte tags, so the size is direction-free.
    entry_len(
        ts,
        observation_field::READ,
        len_field_len(PLAIN_DATA_FIELD, data_len),
    )
}

/// Appends a plain `read`/`write` observation (data in field 1).
#[inline]
pub(crate) fn put_data(buf: &mut Vec<u8>, dir: Direction, ts: &Timestamp, data: &[u8]) {
    let body = len_field_len(PLAIN_DATA_FIELD, data.len());
    put_entry_prefix(buf, ts, dir.plain_field(), body);
    put_bytes_field(buf, PLAIN_DATA_FIELD, data);
}

/// Size of a `readSegment`/`writeSegment` entry carrying `data_len` bytes.
#[inline]
pub(crate) const fn data_segment_entry_len(ts: &Timestamp, data_len: usize) -> usize {
    // Field numbers 5 and 9 both have 1-byte tags.
    entry_len(
        ts,
        observation_field::READ_SEGMENT,
        len_field_len(SEGMENT_DATA_FIELD, data_len),
    )
}

/// Appends a `readSegment`/`writeSegment` observation (data in field **2**).
#[inline]
pub(crate) fn put_data_segment(buf: &mut Vec<u8>, dir: Direction, ts: &Timestamp, data: &[u8]) {
    let body = len_field_len(SEGMENT_DATA_FIELD, data.len());
    put_entry_prefix(buf, ts, dir.segment_field(), body);
    put_bytes_field(buf, SEGMENT_DATA_FIELD, data);
}

/// The largest `n` with `data_segment_entry_len(ts, n) <= room` (exact), or 0 when not even a
/// 1-byte segment fits.
pub(crate) fn max_segment_payload(ts: &Timestamp, room: usize) -> usize {
    if data_segment_entry_len(ts, 1) > room {
        return 0;
    }
    // Binary search on a monotonic size function: invariant len(lo) <= room < len(hi).
    let (mut lo, mut hi) = (1usize, room.saturating_add(1));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if data_segment_entry_len(ts, mid) <= room {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Size of a `close` entry.
#[inline]
pub(crate) const fn close_entry_len(ts: &Timestamp) -> usize {
    entry_len(ts, observation_field::CLOSE, 0)
}

/// Size of a `segmentEnd` entry.
#[inline]
pub(crate) const fn segment_end_entry_len(ts: &Timestamp) -> usize {
    entry_len(ts, observation_field::SEGMENT_END, 0)
}

/// Size of a `requestDropped` entry.
#[inline]
pub(crate) const fn request_dropped_entry_len(ts: &Timestamp) -> usize {
    entry_len(ts, observation_field::REQUEST_DROPPED, 0)
}

/// Appends a `close` observation.
#[inline]
pub(crate) fn put_close(buf: &mut Vec<u8>, ts: &Timestamp) {
    put_entry_prefix(buf, ts, observation_field::CLOSE, 0);
}

/// Appends a `segmentEnd` observation.
#[inline]
pub(crate) fn put_segment_end(buf: &mut Vec<u8>, ts: &Timestamp) {
    put_entry_prefix(buf, ts, observation_field::SEGMENT_END, 0);
}

/// Appends a `requestDropped` observation.
#[inline]
pub(crate) fn put_request_dropped(buf: &mut Vec<u8>, ts: &Timestamp) {
    put_entry_prefix(buf, ts, observation_field::REQUEST_DROPPED, 0);
}

#[inline]
const fn eom_body_len(first_line_len: i32, headers_len: i32) -> usize {
    varint_field_len(EOM_FIRST_LINE_FIELD, int32_wire_value(first_line_len))
        + varint_field_len(EOM_HEADERS_FIELD, int32_wire_value(headers_len))
}

/// Size of an `endOfMessageIndicator` entry.
#[inline]
pub(crate) const fn end_of_message_entry_len(
    ts: &Timestamp,
    first_line_len: i32,
    headers_len: i32,
) -> usize {
    entry_len(
        ts,
        observation_field::END_OF_MESSAGE_INDICATOR,
        eom_body_len(first_line_len, headers_len),
    )
}

/// Appends an `endOfMessageIndicator` observation; both optional fields are always written
/// (also when 0), so the consumer sees them present.
#[inline]
pub(crate) fn put_end_of_message(
    buf: &mut Vec<u8>,
    ts: &Timestamp,
    first_line_len: i32,
    headers_len: i32,
) {
    let body = eom_body_len(first_line_len, headers_len);
    put_entry_prefix(buf, ts, observation_field::END_OF_MESSAGE_INDICATOR, body);
    put_varint_field(buf, EOM_FIRST_LINE_FIELD, int32_wire_value(first_line_len));
    put_varint_field(buf, EOM_HEADERS_FIELD, int32_wire_value(headers_len));
}

/// Size of a `connectionException` entry whose message is `message_len` bytes of UTF-8.
#[inline]
pub(crate) const fn connection_exception_entry_len(ts: &Timestamp, message_len: usize) -> usize {
    entry_len(
        ts,
        observation_field::CONNECTION_EXCEPTION,
        len_field_len(EXCEPTION_MESSAGE_FIELD, message_len),
    )
}

/// Appends a `connectionException{message}` observation (message written as given).
#[inline]
pub(crate) fn put_connection_exception(buf: &mut Vec<u8>, ts: &Timestamp, message: &str) {
    let body = len_field_len(EXCEPTION_MESSAGE_FIELD, message.len());
    put_entry_prefix(buf, ts, observation_field::CONNECTION_EXCEPTION, body);
    put_bytes_field(buf, EXCEPTION_MESSAGE_FIELD, message.as_bytes());
}

/// State written at the start of a record (fields 1, 5, 6, 7 of `TrafficStream`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordHeader<'a> {
    pub connection_id: &'a str,
    pub node_id: &'a str,
    /// `priorRequestsReceived`; written only when > 0.
    pub prior_requests_received: i32,
    /// `lastObservationWasUnterminatedRead`; written only when true.
    pub last_observation_was_unterminated_read: bool,
}

impl RecordHeader<'_> {
    /// Exact encoded size of the header fields.
    #[inline]
    pub(crate) const fn encoded_len(&self) -> usize {
        let mut n = len_field_len(stream_field::CONNECTION_ID, self.connection_id.len())
            + len_field_len(stream_field::NODE_ID, self.node_id.len());
        if self.prior_requests_received > 0 {
            n += varint_field_len(
                stream_field::PRIOR_REQUESTS_RECEIVED,
                int32_wire_value(self.prior_requests_received),
            );
        }
        if self.last_observation_was_unterminated_read {
            n += varint_field_len(stream_field::LAST_OBSERVATION_WAS_UNTERMINATED_READ, 1);
        }
        n
    }

    /// Appends the header fields: 1 and 5 always, 6 only when > 0, 7 only when true.
    #[inline]
    pub(crate) fn put(&self, buf: &mut Vec<u8>) {
        put_bytes_field(
            buf,
            stream_field::CONNECTION_ID,
            self.connection_id.as_bytes(),
        );
        put_bytes_field(buf, stream_field::NODE_ID, self.node_id.as_bytes());
        if self.prior_requests_received > 0 {
            put_varint_field(
                buf,
                stream_field::PRIOR_REQUESTS_RECEIVED,
                int32_wire_value(self.prior_requests_received),
            );
        }
        if self.last_observation_was_unterminated_read {
            put_varint_field(buf, stream_field::LAST_OBSERVATION_WAS_UNTERMINATED_READ, 1);
        }
    }
}

/// The `index` oneof closing a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordIndex {
    /// Field 3: every record of a connection but the last.
    Number(i32),
    /// Field 4: the connection's final record.
    NumberOfThisLastChunk(i32),
}

impl RecordIndex {
    #[inline]
    const fn field_and_value(self) -> (u32, i32) {
        match self {
            RecordIndex::Number(n) => (stream_field::NUMBER, n),
            RecordIndex::NumberOfThisLastChunk(n) => (stream_field::NUMBER_OF_THIS_LAST_CHUNK, n),
        }
    }

    /// Exact encoded size (at most [`INDEX_FIELD_MAX_LEN`] for non-negative values).
    #[inline]
    pub(crate) const fn encoded_len(self) -> usize {
        let (f, v) = self.field_and_value();
        varint_field_len(f, int32_wire_value(v))
    }

    /// Appends the index field (always written, also when 0).
    #[inline]
    pub(crate) fn put(self, buf: &mut Vec<u8>) {
        let (f, v) = self.field_and_value();
        put_varint_field(buf, f, int32_wire_value(v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proto::{self, traffic_observation::Capture, traffic_stream::Index};
    use prost::Message;

    const BOUNDARIES: [u64; 11] = [
        0,
        127,
        128,
        16_383,
        16_384,
        (1 << 21) - 1,
        1 << 21,
        (1 << 28) - 1,
        1 << 28,
        u32::MAX as u64,
        u64::MAX,
    ];

    fn timestamps() -> Vec<Timestamp> {
        vec![
            Timestamp { secs: 0, nanos: 0 },
            Timestamp { secs: 1, nanos: 0 },
            Timestamp { secs: 0, nanos: 1 },
            Timestamp {
                secs: 1_700_000_000,
                nanos: 123_456_789,
            },
            Timestamp {
                secs: -1,
                nanos: 999_999_999,
            },
            Timestamp {
                secs: i64::MAX,
                nanos: 5,
            },
        ]
    }

    fn proto_ts(ts: &Timestamp) -> proto::Timestamp {
        proto::Timestamp {
            seconds: ts.secs,
            nanos: ts.nanos as i32,
        }
    }

    /// Decodes a buffer holding only `subStream` entries; returns the single observation.
    fn decode_one(buf: &[u8]) -> proto::TrafficObservation {
        let s = proto::TrafficStream::decode(buf).unwrap();
        assert_eq!(s.sub_stream.len(), 1);
        assert_eq!(s.index, None);
        assert_eq!(s.prior_requests_received, None);
        assert_eq!(s.last_observation_was_unterminated_read, None);
        s.sub_stream.into_iter().next().unwrap()
    }

    #[test]
    fn varint_boundaries_round_trip() {
        let expected_lens = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 10];
        for (v, want) in BOUNDARIES.iter().zip(expected_lens) {
            let mut buf = Vec::new();
            put_varint(&mut buf, *v);
            assert_eq!(buf.len(), want, "len of {v}");
            assert_eq!(varint_len(*v), want, "varint_len of {v}");
            let mut slice = &buf[..];
            assert_eq!(prost::encoding::decode_varint(&mut slice).unwrap(), *v);
            assert!(slice.is_empty());
            // And against prost's own size function.
            assert_eq!(prost::encoding::encoded_len_varint(*v), want);
        }
    }

    #[test]
    fn varint_len_matches_prost_everywhere_near_powers_of_two() {
        for shift in 0..64u32 {
            for d in [-1i64, 0, 1] {
                let v = (1u64 << shift).wrapping_add(d as u64);
                assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v), "{v}");
            }
        }
    }

    #[test]
    fn tags_and_len_fields() {
        for field in [1u32, 2, 15, 16, 2047, 2048] {
            let mut buf = Vec::new();
            put_tag(&mut buf, field, WIRE_LEN);
            assert_eq!(buf.len(), tag_len(field));
            let mut slice = &buf[..];
            let (f, wt) = prost::encoding::decode_key(&mut slice).unwrap();
            assert_eq!(f, field);
            assert_eq!(wt, prost::encoding::WireType::LengthDelimited);
        }
        for len in [0usize, 1, 127, 128, 300] {
            let data = vec![7u8; len];
            let mut buf = Vec::new();
            put_bytes_field(&mut buf, 9, &data);
            assert_eq!(buf.len(), len_field_len(9, len));
        }
    }

    #[test]
    fn timestamp_zero_members_omitted_but_field_present() {
        let ts = Timestamp { secs: 0, nanos: 0 };
        assert_eq!(ts.body_len(), 0);
        let mut buf = Vec::new();
        put_close(&mut buf, &ts);
        let obs = decode_one(&buf);
        assert_eq!(
            obs.ts,
            Some(proto::Timestamp {
                seconds: 0,
                nanos: 0
            })
        );
        // Only seconds: no nanos field bytes.
        let ts = Timestamp { secs: 5, nanos: 0 };
        assert_eq!(ts.body_len(), 2);
        let ts = Timestamp { secs: 0, nanos: 5 };
        assert_eq!(ts.body_len(), 2);
    }

    #[test]
    fn timestamp_nanos_clamped() {
        let ts = Timestamp {
            secs: 3,
            nanos: u32::MAX,
        };
        let mut buf = Vec::new();
        put_close(&mut buf, &ts);
        assert_eq!(buf.len(), close_entry_len(&ts));
        let obs = decode_one(&buf);
        assert_eq!(
            obs.ts,
            Some(proto::Timestamp {
                seconds: 3,
                nanos: 999_999_999
            })
        );
    }

    #[test]
    fn timestamp_now_is_sane() {
        let ts = Timestamp::now();
        assert!(ts.secs > 1_600_000_000);
        assert!(ts.nanos < 1_000_000_000);
    }

    #[test]
    fn every_observation_kind_decodes() {
        let payloads: [&[u8]; 4] = [b"", b"x", b"GET / HTTP/1.1\r\n\r\n", &[0xAB; 300]];
        for ts in timestamps() {
            let pts = Some(proto_ts(&ts));
            for data in payloads {
                for dir in [Direction::Read, Direction::Write] {
                    let mut buf = Vec::new();
                    put_data(&mut buf, dir, &ts, data);
                    assert_eq!(buf.len(), data_entry_len(&ts, data.len()));
                    let obs = decode_one(&buf);
                    assert_eq!(obs.ts, pts);
                    let want = match dir {
                        Direction::Read => Capture::Read(proto::ReadObservation {
                            data: data.to_vec(),
                        }),
                        Direction::Write => Capture::Write(proto::WriteObservation {
                            data: data.to_vec(),
                        }),
                    };
                    assert_eq!(obs.capture, Some(want));

                    let mut buf = Vec::new();
                    put_data_segment(&mut buf, dir, &ts, data);
                    assert_eq!(buf.len(), data_segment_entry_len(&ts, data.len()));
                    let obs = decode_one(&buf);
                    assert_eq!(obs.ts, pts);
                    let seg = proto::SegmentObservation {
                        data: data.to_vec(),
                    };
                    let want = match dir {
                        Direction::Read => Capture::ReadSegment(seg),
                        Direction::Write => Capture::WriteSegment(seg),
                    };
                    assert_eq!(obs.capture, Some(want));
                }
            }
            // Segment data really is field 2: decoding as a plain read body finds nothing.
            let mut buf = Vec::new();
            put_data_segment(&mut buf, Direction::Read, &ts, b"abc");
            assert!(buf.windows(5).any(|w| w == [0x12, 3, b'a', b'b', b'c']));

            for (first, headers) in [(0, 0), (14, 711), (i32::MAX, 1), (-1, -1)] {
                let mut buf = Vec::new();
                put_end_of_message(&mut buf, &ts, first, headers);
                assert_eq!(buf.len(), end_of_message_entry_len(&ts, first, headers));
                let obs = decode_one(&buf);
                assert_eq!(obs.ts, pts);
                assert_eq!(
                    obs.capture,
                    Some(Capture::EndOfMessageIndicator(
                        proto::EndOfMessageIndication {
                            first_line_byte_length: Some(first),
                            headers_byte_length: Some(headers),
                        }
                    ))
                );
            }

            type Put = fn(&mut Vec<u8>, &Timestamp);
            type Len = fn(&Timestamp) -> usize;
            let empties: [(Put, Len, Capture); 3] = [
                (put_close, close_entry_len, Capture::Close(proto::Empty {})),
                (
                    put_segment_end,
                    segment_end_entry_len,
                    Capture::SegmentEnd(proto::Empty {}),
                ),
                (
                    put_request_dropped,
                    request_dropped_entry_len,
                    Capture::RequestDropped(proto::Empty {}),
                ),
            ];
            for (put, len, want) in empties {
                let mut buf = Vec::new();
                put(&mut buf, &ts);
                assert_eq!(buf.len(), len(&ts));
                let obs = decode_one(&buf);
                assert_eq!(obs.ts, pts);
                assert_eq!(obs.capture, Some(want));
            }

            for msg in ["", "Connection reset by peer", "ünïcödé ✓"] {
                let mut buf = Vec::new();
                put_connection_exception(&mut buf, &ts, msg);
                assert_eq!(buf.len(), connection_exception_entry_len(&ts, msg.len()));
                let obs = decode_one(&buf);
                assert_eq!(obs.ts, pts);
                assert_eq!(
                    obs.capture,
                    Some(Capture::ConnectionException(proto::ConnectionException {
                        message: msg.to_string()
                    }))
                );
            }
        }
    }

    #[test]
    fn header_and_index_decode() {
        for (prior, unterminated) in [(0, false), (1, false), (0, true), (i32::MAX, true)] {
            for index in [
                RecordIndex::Number(1),
                RecordIndex::Number(i32::MAX),
                RecordIndex::NumberOfThisLastChunk(1),
                RecordIndex::NumberOfThisLastChunk(300),
            ] {
                let h = RecordHeader {
                    connection_id: "conn-1",
                    node_id: "node-uuid",
                    prior_requests_received: prior,
                    last_observation_was_unterminated_read: unterminated,
                };
                let ts = Timestamp { secs: 9, nanos: 9 };
                let mut buf = Vec::new();
                h.put(&mut buf);
                assert_eq!(buf.len(), h.encoded_len());
                put_close(&mut buf, &ts);
                let before = buf.len();
                index.put(&mut buf);
                assert_eq!(buf.len() - before, index.encoded_len());
                assert!(index.encoded_len() <= INDEX_FIELD_MAX_LEN);

                let s = proto::TrafficStream::decode(&buf[..]).unwrap();
                assert_eq!(s.connection_id, "conn-1");
                assert_eq!(s.node_id, "node-uuid");
                assert_eq!(
                    s.prior_requests_received,
                    if prior > 0 { Some(prior) } else { None }
                );
                assert_eq!(
                    s.last_observation_was_unterminated_read,
                    if unterminated { Some(true) } else { None }
                );
                assert_eq!(s.sub_stream.len(), 1);
                let want = match index {
                    RecordIndex::Number(n) => Index::Number(n),
                    RecordIndex::NumberOfThisLastChunk(n) => Index::NumberOfThisLastChunk(n),
                };
                assert_eq!(s.index, Some(want));
            }
        }
    }

    #[test]
    fn header_never_writes_false_or_zero() {
        let h = RecordHeader {
            connection_id: "c",
            node_id: "n",
            prior_requests_received: 0,
            last_observation_was_unterminated_read: false,
        };
        let mut buf = Vec::new();
        h.put(&mut buf);
        assert_eq!(buf, [0x0A, 1, b'c', 0x2A, 1, b'n']);
        // Negative prior counts are never written either.
        let h = RecordHeader {
            prior_requests_received: -3,
            ..h
        };
        let mut buf2 = Vec::new();
        h.put(&mut buf2);
        assert_eq!(buf2, buf);
    }

    #[test]
    fn max_segment_payload_is_exact() {
        for ts in timestamps() {
            let one = data_segment_entry_len(&ts, 1);
            assert_eq!(max_segment_payload(&ts, 0), 0);
            assert_eq!(max_segment_payload(&ts, one - 1), 0);
            assert_eq!(max_segment_payload(&ts, one), 1);
            // Rooms around every varint boundary of the data length and of the lengths
            // that wrap it.
            let mut rooms = Vec::new();
            for b in BOUNDARIES.iter().take(9) {
                let b = *b as usize;
                for d in 0..40usize {
                    rooms.push((b + d).saturating_sub(20));
                }
            }
            for room in rooms {
                let n = max_segment_payload(&ts, room);
                if n == 0 {
                    assert!(data_segment_entry_len(&ts, 1) > room);
                    continue;
                }
                assert!(data_segment_entry_len(&ts, n) <= room, "room {room} n {n}");
                assert!(
                    data_segment_entry_len(&ts, n + 1) > room,
                    "room {room} n {n}"
                );
            }
        }
    }

    #[test]
    fn bytes_equal_prost_canonical_encoding() {
        // prost writes fields in tag order, like we do inside an observation; it omits empty
        // bytes, so use non-empty payloads here.
        let ts = Timestamp {
            secs: 1_700_000_000,
            nanos: 42,
        };
        let pts = Some(proto_ts(&ts));
        let cases: Vec<(Vec<u8>, Capture)> = {
            let mut v = Vec::new();
            let mut b = Vec::new();
            put_data(&mut b, Direction::Read, &ts, b"abc");
            v.push((
                b,
                Capture::Read(proto::ReadObservation {
                    data: b"abc".to_vec(),
                }),
            ));
            let mut b = Vec::new();
            put_data_segment(&mut b, Direction::Write, &ts, b"xyz");
            v.push((
                b,
                Capture::WriteSegment(proto::SegmentObservation {
                    data: b"xyz".to_vec(),
                }),
            ));
            let mut b = Vec::new();
            put_end_of_message(&mut b, &ts, 0, 711);
            v.push((
                b,
                Capture::EndOfMessageIndicator(proto::EndOfMessageIndication {
                    first_line_byte_length: Some(0),
                    headers_byte_length: Some(711),
                }),
            ));
            let mut b = Vec::new();
            put_request_dropped(&mut b, &ts);
            v.push((b, Capture::RequestDropped(proto::Empty {})));
            v
        };
        for (ours, capture) in cases {
            let s = proto::TrafficStream {
                sub_stream: vec![proto::TrafficObservation {
                    ts: pts,
                    capture: Some(capture),
                }],
                ..Default::default()
            };
            assert_eq!(ours, s.encode_to_vec());
        }
    }

    #[test]
    fn put_functions_only_append() {
        let ts = Timestamp { secs: 1, nanos: 2 };
        let mut buf = vec![1, 2, 3];
        put_data(&mut buf, Direction::Read, &ts, b"abc");
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(buf.len(), 3 + data_entry_len(&ts, 3));
    }
}
