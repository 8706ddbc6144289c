//! Decoding structs for the `TrafficStream` wire format (capture-format.md), derived with
//! prost. Used only off the hot path: by `inspect`, tests and benches. The hot path encodes by
//! hand in `capture::encode`.
//!
//! Invariant: field numbers and presence rules match `../shared/spec/capture-format.md`
//! exactly (proto3, no package; `optional` fields keep presence).

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// One Kafka record value / one file-sink line.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TrafficStream {
    #[prost(string, tag = "1")]
    pub connection_id: String,
    #[prost(string, tag = "5")]
    pub node_id: String,
    #[prost(int32, optional, tag = "6")]
    pub prior_requests_received: Option<i32>,
    #[prost(bool, optional, tag = "7")]
    pub last_observation_was_unterminated_read: Option<bool>,
    #[prost(message, repeated, tag = "2")]
    pub sub_stream: Vec<TrafficObservation>,
    #[prost(oneof = "traffic_stream::Index", tags = "3, 4")]
    pub index: Option<traffic_stream::Index>,
}

pub mod traffic_stream {
    /// The `index` oneof: `number` on every record but the last.
    #[derive(Clone, Copy, PartialEq, Eq, prost::Oneof)]
    pub enum Index {
        #[prost(int32, tag = "3")]
        Number(i32),
        #[prost(int32, tag = "4")]
        NumberOfThisLastChunk(i32),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TrafficObservation {
    #[prost(message, optional, tag = "1")]
    pub ts: Option<Timestamp>,
    #[prost(
        oneof = "traffic_observation::Capture",
        tags = "2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 14, 15, 16"
    )]
    pub capture: Option<traffic_observation::Capture>,
}

pub mod traffic_observation {
    use super::*;
    /// The `Capture` oneof: exactly one member per observation.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Capture {
        #[prost(message, tag = "2")]
        Bind(Empty),
        #[prost(message, tag = "3")]
        Connect(Empty),
        #[prost(message, tag = "4")]
        Read(ReadObservation),
        #[prost(message, tag = "5")]
        ReadSegment(SegmentObservation),
        #[prost(message, tag = "6")]
        RequestReleasedDownstream(RequestReleasedDownstream),
        #[prost(message, tag = "8")]
        Write(WriteObservation),
        #[prost(message, tag = "9")]
        WriteSegment(SegmentObservation),
        #[prost(message, tag = "10")]
        Disconnect(Empty),
        #[prost(message, tag = "11")]
        Close(Empty),
        #[prost(message, tag = "12")]
        ConnectionException(ConnectionException),
        #[prost(message, tag = "14")]
        SegmentEnd(Empty),
        #[prost(message, tag = "15")]
        EndOfMessageIndicator(EndOfMessageIndication),
        #[prost(message, tag = "16")]
        RequestDropped(Empty),
    }
}

/// Any of the empty observation messages (bind, connect, disconnect, close, segmentEnd,
/// requestDropped).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ReadObservation {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct WriteObservation {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
}

/// `readSegment` / `writeSegment`: note the data is field **2**.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SegmentObservation {
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RequestReleasedDownstream {
    #[prost(bool, tag = "1")]
    pub timed_out: bool,
}

#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConnectionException {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct EndOfMessageIndication {
    #[prost(int32, optional, tag = "1")]
    pub first_line_byte_length: Option<i32>,
    #[prost(int32, optional, tag = "2")]
    pub headers_byte_length: Option<i32>,
}
