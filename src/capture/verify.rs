//! "Did we capture it all?": checks decoded `TrafficStream` records against the wire contract
//! of capture-format.md, per connection, and counts what was captured. Sans-IO: the caller
//! (`inspect`, tests, the Kafka reader later) decodes records and feeds them in the order they
//! were read; `finish` returns a `Report`.
//!
//! May depend on: `capture::proto` (decoding structs) and std. What prost cannot show is not
//! checked: an observation with two `Capture` members decodes as the last one, and segment
//! data wrongly put in field 1 decodes as an empty segment (reported as such).
//!
//! Invariants:
//! - Never panics on any input (all arithmetic is saturating/checked, no indexing).
//! - Memory is bounded by the number of connections (a few small fields each) plus at most
//!   `MAX_PROBLEMS_KEPT` problems; observations are not retained.
//! - Problem severities: `Error` means the Replayer would lose or misread traffic, or the
//!   contract is broken (makes `Report::ok` false); `Warning` is a contract deviation the
//!   Replayer tolerates (deprecated observation kinds, timestamp mismatches); `Note` is
//!   legitimate but unusual traffic (a response written before its request was fully read).
//!
//! Records of one connection are expected in number order (the contract requires record N to
//! be committed before N+1, and one Kafka partition / one trace file sequence preserves that).
//! After a gap the per-connection state that spans records (EOM count, unterminated read,
//! open segment run) is re-learned from the next record instead of producing cascades;
//! duplicates and out-of-order records are reported and otherwise ignored for that state.
//! Counts (`requests`, `reads_bytes`, …) include every decoded record, duplicates too.

use std::collections::HashMap;
use std::fmt;

use crate::capture::proto::traffic_observation::Capture;
use crate::capture::proto::traffic_stream::Index;
use crate::capture::proto::{Timestamp, TrafficObservation, TrafficStream};

/// Most problems kept in `Report::problems`; the rest are only counted (`problems_omitted`
/// and the per-severity counters). 1000 lines is as much as an operator reads, and bounds
/// memory when a capture is broken everywhere.
pub(crate) const MAX_PROBLEMS_KEPT: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Unusual but legitimate; never fails the report.
    Note,
    /// Contract deviation the Replayer tolerates; does not fail the report.
    Warning,
    /// Lost or unreadable traffic or a broken contract; fails the report.
    Error,
}

impl Severity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding, about one connection (empty ids for a record that could not be decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub node_id: String,
    pub connection_id: String,
    /// Where the record came from (`file:line`, `partition/offset`), as given to `add`.
    pub source: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} conn={} node={} at {}: {}",
            self.severity, self.connection_id, self.node_id, self.source, self.message
        )
    }
}

/// Totals and findings of one verification run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Decoded records fed to `add`.
    pub records: u64,
    /// Serialized bytes of those records (the `raw_len`s).
    pub bytes: u64,
    /// Records that could not be decoded (`add_undecodable`).
    pub undecodable_records: u64,
    /// Distinct (nodeId, connectionId) pairs.
    pub connections: u64,
    /// Connections with a final record and records 1..N each seen exactly once, in order.
    pub complete_connections: u64,
    /// `connections - complete_connections`.
    pub incomplete_connections: u64,
    pub observations: u64,
    /// End-of-message markers.
    pub requests: u64,
    /// `requestDropped` observations.
    pub dropped_requests: u64,
    /// Data bytes of `read` + `readSegment`.
    pub reads_bytes: u64,
    /// Data bytes of `write` + `writeSegment`.
    pub writes_bytes: u64,
    /// `connectionException` observations.
    pub exceptions: u64,
    /// Records seen a second time with identical bytes (not counted against completeness).
    pub duplicate_records: u64,
    pub errors: u64,
    pub warnings: u64,
    pub notes: u64,
    /// The first `MAX_PROBLEMS_KEPT` problems, in the order found.
    pub problems: Vec<Problem>,
    /// Problems found beyond `MAX_PROBLEMS_KEPT`.
    pub problems_omitted: u64,
}

impl Report {
    /// True when no `Error` was found (warnings and notes do not fail a capture).
    pub fn ok(&self) -> bool {
        self.errors == 0
    }

    fn push(&mut self, problem: Problem) {
        match problem.severity {
            Severity::Error => self.errors = self.errors.saturating_add(1),
            Severity::Warning => self.warnings = self.warnings.saturating_add(1),
            Severity::Note => self.notes = self.notes.saturating_add(1),
        }
        if self.problems.len() < MAX_PROBLEMS_KEPT {
            self.problems.push(problem);
        } else {
            self.problems_omitted = self.problems_omitted.saturating_add(1);
        }
    }
}

/// What a segment run looks like at a point of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SegState {
    /// No run open.
    Closed,
    /// A `readSegment` (`read == true`) or `writeSegment` run is open; its timestamp.
    Open { read: bool, ts: Option<Timestamp> },
    /// Unknown (after a gap).
    Unknown,
}

/// The observation before the current one, for "EOM right after its read".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prev {
    /// Start of the connection or unknown (after a gap): no check.
    Unknown,
    /// A whole `read`, or `segmentEnd` closing a `readSegment` run.
    ReadDone(Option<Timestamp>),
    Other,
}

/// Per-connection state.
#[derive(Debug)]
struct Conn {
    /// Number the next in-order record must carry.
    expected: i64,
    /// Number of the final record, once seen.
    final_number: Option<i64>,
    /// False after any gap, duplicate, missing index or record after the final one.
    numbering_ok: bool,
    partition: Option<i32>,
    /// The first observation of record #1 has not been checked yet.
    first_pending: bool,
    /// EOMs in in-order records so far (None = unknown after a gap).
    eoms: Option<i64>,
    /// Reads seen since the last EOM / requestDropped (None = unknown after a gap).
    in_request: Option<bool>,
    seg: SegState,
    prev: Prev,
    /// Fingerprint of each in-order record, by number - 1 (see [`fingerprint`]), so that a
    /// record delivered twice is told apart from an out-of-order or conflicting one.
    seen: Vec<u64>,
}

fn report_duplicate(cx: &mut Ctx<'_>) {
    cx.report.duplicate_records = cx.report.duplicate_records.saturating_add(1);
}

/// A hash of the whole record (its re-encoded bytes).
fn fingerprint(ts: &TrafficStream) -> u64 {
    use prost::Message as _;
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ts.encode_to_vec().hash(&mut h);
    h.finish()
}

impl Conn {
    fn new() -> Self {
        Conn {
            expected: 1,
            final_number: None,
            numbering_ok: true,
            partition: None,
            first_pending: true,
            eoms: Some(0),
            in_request: Some(false),
            seg: SegState::Closed,
            prev: Prev::Unknown,
            seen: Vec::new(),
        }
    }

    /// Forget cross-record state after a gap: re-learn it from the next record.
    fn lose_continuity(&mut self) {
        self.first_pending = false;
        self.eoms = None;
        self.in_request = None;
        self.seg = SegState::Unknown;
        self.prev = Prev::Unknown;
    }
}

/// Problem context for one record.
struct Ctx<'a> {
    report: &'a mut Report,
    node_id: &'a str,
    connection_id: &'a str,
    source: &'a str,
    /// `#n` / `#n(final)` / `#?`, prefixed to messages.
    record: &'a str,
}

impl Ctx<'_> {
    fn push(&mut self, severity: Severity, message: fmt::Arguments<'_>) {
        self.report.push(Problem {
            severity,
            node_id: self.node_id.to_owned(),
            connection_id: self.connection_id.to_owned(),
            source: self.source.to_owned(),
            message: format!("record {}: {}", self.record, message),
        });
    }
}

/// Accumulates records and checks them; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct Verifier {
    /// nodeId → connectionId → state (two levels so lookups need no key allocation).
    conns: HashMap<String, HashMap<String, Conn>>,
    report: Report,
}

fn kind_name(c: &Capture) -> &'static str {
    match c {
        Capture::Bind(_) => "bind",
        Capture::Connect(_) => "connect",
        Capture::Read(_) => "read",
        Capture::ReadSegment(_) => "readSegment",
        Capture::RequestReleasedDownstream(_) => "requestReleasedDownstream",
        Capture::Write(_) => "write",
        Capture::WriteSegment(_) => "writeSegment",
        Capture::Disconnect(_) => "disconnect",
        Capture::Close(_) => "close",
        Capture::ConnectionException(_) => "connectionException",
        Capture::SegmentEnd(_) => "segmentEnd",
        Capture::EndOfMessageIndicator(_) => "endOfMessageIndicator",
        Capture::RequestDropped(_) => "requestDropped",
    }
}

/// `HTTP/1.x 1..`: an interim (1xx) response such as `100 Continue`.
fn looks_like_1xx(data: &[u8]) -> bool {
    data.starts_with(b"HTTP/1.") && data.get(9) == Some(&b'1')
}

fn fmt_ts(ts: Option<Timestamp>) -> String {
    match ts {
        Some(t) => format!("{}.{:09}", t.seconds, t.nanos),
        None => "none".to_owned(),
    }
}

impl Verifier {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Feeds one decoded record. `raw_len` is its serialized size; `source` says where it came
    /// from (used in messages); `key` is the Kafka key if any (must equal the connectionId);
    /// `partition` is the Kafka partition if any (one per connection).
    pub(crate) fn add(
        &mut self,
        ts: &TrafficStream,
        raw_len: usize,
        source: &str,
        key: Option<&[u8]>,
        partition: Option<i32>,
    ) {
        let report = &mut self.report;
        report.records = report.records.saturating_add(1);
        report.bytes = report.bytes.saturating_add(raw_len as u64);

        if !self.conns.contains_key(ts.node_id.as_str()) {
            self.conns.insert(ts.node_id.clone(), HashMap::new());
        }
        let Some(node_map) = self.conns.get_mut(ts.node_id.as_str()) else {
            return; // just inserted
        };
        if !node_map.contains_key(ts.connection_id.as_str()) {
            node_map.insert(ts.connection_id.clone(), Conn::new());
            report.connections = report.connections.saturating_add(1);
        }
        let Some(conn) = node_map.get_mut(ts.connection_id.as_str()) else {
            return; // just inserted
        };

        let record_label = match ts.index {
            Some(Index::Number(n)) => format!("#{n}"),
            Some(Index::NumberOfThisLastChunk(n)) => format!("#{n}(final)"),
            None => "#?".to_owned(),
        };
        let mut cx = Ctx {
            report,
            node_id: &ts.node_id,
            connection_id: &ts.connection_id,
            source,
            record: &record_label,
        };
        check_record(conn, ts, key, partition, &mut cx);
    }

    /// Counts a record that could not be decoded (bad base64 or protobuf) as an error.
    pub(crate) fn add_undecodable(&mut self, source: &str, raw_len: usize, message: &str) {
        let r = &mut self.report;
        r.undecodable_records = r.undecodable_records.saturating_add(1);
        r.bytes = r.bytes.saturating_add(raw_len as u64);
        r.push(Problem {
            severity: Severity::Error,
            node_id: String::new(),
            connection_id: String::new(),
            source: source.to_owned(),
            message: format!("undecodable record: {message}"),
        });
    }

    /// Ends the run: reports connections without a final record and returns the totals.
    pub(crate) fn finish(mut self) -> Report {
        let mut nodes: Vec<_> = self.conns.into_iter().collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        for (node_id, conns) in nodes {
            let mut conns: Vec<_> = conns.into_iter().collect();
            conns.sort_by(|a, b| a.0.cmp(&b.0));
            for (connection_id, c) in conns {
                if c.final_number.is_some() && c.numbering_ok {
                    self.report.complete_connections =
                        self.report.complete_connections.saturating_add(1);
                } else {
                    self.report.incomplete_connections =
                        self.report.incomplete_connections.saturating_add(1);
                }
                if c.final_number.is_none() {
                    let last = c.expected.saturating_sub(1);
                    self.report.push(Problem {
                        severity: Severity::Error,
                        node_id: node_id.clone(),
                        connection_id,
                        source: "end of input".to_owned(),
                        message: format!(
                            "incomplete connection: no final record (numberOfThisLastChunk); \
                             last in-order record #{last}"
                        ),
                    });
                }
            }
        }
        self.report
    }
}

fn check_record(
    conn: &mut Conn,
    ts: &TrafficStream,
    key: Option<&[u8]>,
    partition: Option<i32>,
    cx: &mut Ctx<'_>,
) {
    use Severity::{Error, Warning};

    if ts.connection_id.is_empty() {
        cx.push(Error, format_args!("connectionId is empty"));
    }
    if ts.node_id.is_empty() {
        cx.push(Error, format_args!("nodeId is empty"));
    }
    if let Some(k) = key {
        if k != ts.connection_id.as_bytes() {
            cx.push(
                Error,
                format_args!(
                    "Kafka key {:?} differs from the connectionId",
                    String::from_utf8_lossy(k)
                ),
            );
        }
    }
    if let Some(p) = partition {
        match conn.partition {
            None => conn.partition = Some(p),
            Some(first) if first != p => cx.push(
                Error,
                format_args!("on partition {p}, earlier records of the connection on {first}"),
            ),
            Some(_) => {}
        }
    }
    if ts.last_observation_was_unterminated_read == Some(false) {
        cx.push(
            Error,
            format_args!("lastObservationWasUnterminatedRead present as false (must be omitted)"),
        );
    }
    match ts.prior_requests_received {
        Some(0) => cx.push(
            Error,
            format_args!("priorRequestsReceived present as 0 (must be omitted)"),
        ),
        Some(n) if n < 0 => cx.push(
            Error,
            format_args!("priorRequestsReceived is negative ({n})"),
        ),
        _ => {}
    }

    // Numbering.
    let (number, is_final) = match ts.index {
        Some(Index::Number(n)) => (Some(i64::from(n)), false),
        Some(Index::NumberOfThisLastChunk(n)) => (Some(i64::from(n)), true),
        None => (None, false),
    };
    let in_order = match number {
        None => {
            cx.push(
                Error,
                format_args!("record lacks its index (neither number nor numberOfThisLastChunk)"),
            );
            conn.numbering_ok = false;
            // Assume it is the record expected here (no gap reported for the next one).
            let in_place = conn.final_number.is_none();
            if in_place {
                conn.expected = conn.expected.saturating_add(1);
            }
            in_place
        }
        Some(n) => {
            let identical_copy = n >= 1
                && n < conn.expected
                && usize::try_from(n - 1)
                    .ok()
                    .and_then(|i| conn.seen.get(i))
                    .is_some_and(|f| *f == fingerprint(ts));
            if identical_copy {
                // The same record again, byte for byte: a broker wrote it, failed before
                // acknowledging, and it was produced again (it may arrive after later records,
                // the final one included, when those were in flight with it). Nothing is
                // missing; said, not counted against the connection.
                cx.push(
                    Warning,
                    format_args!("record #{n} delivered twice (identical copies)"),
                );
                report_duplicate(cx);
                false
            } else if let Some(f) = conn.final_number {
                conn.numbering_ok = false;
                if is_final {
                    cx.push(Error, format_args!("second final record (first was #{f})"));
                } else {
                    cx.push(Error, format_args!("record after the final record #{f}"));
                }
                false
            } else if n < 1 {
                conn.numbering_ok = false;
                cx.push(
                    Error,
                    format_args!("invalid record number {n} (numbers start at 1)"),
                );
                false
            } else if n == conn.expected {
                true
            } else if n > conn.expected {
                conn.numbering_ok = false;
                let missing_to = n.saturating_sub(1);
                if missing_to == conn.expected {
                    cx.push(Error, format_args!("gap: record #{missing_to} missing"));
                } else {
                    cx.push(
                        Error,
                        format_args!("gap: records #{}..#{missing_to} missing", conn.expected),
                    );
                }
                conn.lose_continuity();
                true
            } else {
                conn.numbering_ok = false;
                cx.push(
                    Error,
                    format_args!(
                        "duplicate or out-of-order record (expected #{})",
                        conn.expected
                    ),
                );
                false
            }
        }
    };
    if in_order {
        if let Some(n) = number {
            if usize::try_from(n - 1).is_ok_and(|i| i == conn.seen.len()) {
                conn.seen.push(fingerprint(ts));
            }
            conn.expected = n.saturating_add(1);
            if is_final {
                conn.final_number = Some(n);
            }
        }
    }

    // Cross-record state at the start of this record.
    if in_order {
        let prior = i64::from(ts.prior_requests_received.unwrap_or(0));
        match conn.eoms {
            Some(e) if e != prior => cx.push(
                Error,
                format_args!(
                    "priorRequestsReceived is {prior}, but earlier records hold {e} end-of-message markers"
                ),
            ),
            Some(_) => {}
            None => conn.eoms = Some(prior),
        }
        let unterminated = ts.last_observation_was_unterminated_read == Some(true);
        match conn.in_request {
            Some(true) if !unterminated => cx.push(
                Error,
                format_args!(
                    "lastObservationWasUnterminatedRead missing, but the previous record ended in the middle of a request"
                ),
            ),
            Some(false) if unterminated => cx.push(
                Error,
                format_args!(
                    "lastObservationWasUnterminatedRead set, but the previous record ended between requests"
                ),
            ),
            Some(_) => {}
            None => conn.in_request = Some(unterminated),
        }
    }

    if ts.sub_stream.is_empty() && !is_final {
        cx.push(Warning, format_args!("record has no observations"));
    }
    let last_index = ts.sub_stream.len().saturating_sub(1);
    for (i, obs) in ts.sub_stream.iter().enumerate() {
        let is_last_obs = i == last_index;
        check_observation(conn, obs, i, in_order, is_final && is_last_obs, cx);
    }
    if is_final {
        let ends_with_close = matches!(
            ts.sub_stream.last().and_then(|o| o.capture.as_ref()),
            Some(Capture::Close(_))
        );
        if !ends_with_close {
            cx.push(Error, format_args!("final record does not end with close"));
        }
    }
}

fn check_observation(
    conn: &mut Conn,
    obs: &TrafficObservation,
    i: usize,
    in_order: bool,
    last_of_final: bool,
    cx: &mut Ctx<'_>,
) {
    use Severity::{Error, Warning};

    let r = &mut *cx.report;
    r.observations = r.observations.saturating_add(1);
    let Some(cap) = obs.capture.as_ref() else {
        cx.push(Error, format_args!("observation {i} has no capture member"));
        if in_order {
            conn.prev = Prev::Other;
        }
        return;
    };
    let kind = kind_name(cap);
    if obs.ts.is_none() {
        cx.push(
            Error,
            format_args!("observation {i} ({kind}) has no timestamp"),
        );
    }

    // Context-free checks and counters.
    match cap {
        Capture::Read(d) => r_add(&mut cx.report.reads_bytes, d.data.len()),
        Capture::ReadSegment(d) => {
            r_add(&mut cx.report.reads_bytes, d.data.len());
            empty_segment(&d.data, i, kind, cx);
        }
        Capture::Write(d) => r_add(&mut cx.report.writes_bytes, d.data.len()),
        Capture::WriteSegment(d) => {
            r_add(&mut cx.report.writes_bytes, d.data.len());
            empty_segment(&d.data, i, kind, cx);
        }
        Capture::EndOfMessageIndicator(e) => {
            r_add(&mut cx.report.requests, 1);
            match (e.first_line_byte_length, e.headers_byte_length) {
                (Some(f), Some(h)) => {
                    if f <= 0 {
                        cx.push(
                            Error,
                            format_args!("observation {i}: endOfMessageIndicator firstLineByteLength is {f} (must be > 0)"),
                        );
                    }
                    if h < 0 {
                        cx.push(
                            Error,
                            format_args!("observation {i}: endOfMessageIndicator headersByteLength is negative ({h})"),
                        );
                    }
                }
                (f, h) => cx.push(
                    Error,
                    format_args!(
                        "observation {i}: endOfMessageIndicator lacks {}",
                        match (f, h) {
                            (None, None) => "both lengths",
                            (None, _) => "firstLineByteLength",
                            _ => "headersByteLength",
                        }
                    ),
                ),
            }
        }
        Capture::RequestDropped(_) => r_add(&mut cx.report.dropped_requests, 1),
        Capture::ConnectionException(e) => {
            r_add(&mut cx.report.exceptions, 1);
            if e.message.is_empty() {
                cx.push(
                    Warning,
                    format_args!("observation {i}: connectionException with an empty message"),
                );
            }
        }
        Capture::Connect(_)
        | Capture::Bind(_)
        | Capture::Disconnect(_)
        | Capture::RequestReleasedDownstream(_) => cx.push(
            Warning,
            format_args!("observation {i}: {kind} observation (the proxy never writes it)"),
        ),
        Capture::Close(_) => {
            if !last_of_final {
                cx.push(
                    Error,
                    format_args!("observation {i}: close that is not the last observation of the final record"),
                );
            }
        }
        Capture::SegmentEnd(_) => {}
    }

    if !in_order {
        return;
    }

    // First observation of the connection.
    if conn.first_pending {
        conn.first_pending = false;
        if !matches!(
            cap,
            Capture::Read(_)
                | Capture::ReadSegment(_)
                | Capture::Close(_)
                | Capture::ConnectionException(_)
        ) {
            cx.push(
                Error,
                format_args!(
                    "first observation of the connection is {kind} (must be a read, close or connectionException)"
                ),
            );
        }
    }

    // Segment runs.
    let mut continues_run = false;
    let (seg_read, is_segment) = match cap {
        Capture::ReadSegment(_) => (true, true),
        Capture::WriteSegment(_) => (false, true),
        _ => (false, false),
    };
    match conn.seg {
        SegState::Open { read, ts } => {
            if is_segment && seg_read == read {
                continues_run = true;
                if obs.ts != ts {
                    cx.push(
                        Warning,
                        format_args!(
                            "observation {i}: {kind} timestamp {} differs from its run's {}",
                            fmt_ts(obs.ts),
                            fmt_ts(ts)
                        ),
                    );
                }
            } else if matches!(cap, Capture::SegmentEnd(_)) {
                if obs.ts != ts {
                    cx.push(
                        Warning,
                        format_args!(
                            "observation {i}: segmentEnd timestamp {} differs from its run's {}",
                            fmt_ts(obs.ts),
                            fmt_ts(ts)
                        ),
                    );
                }
                conn.seg = SegState::Closed;
                conn.prev = if read {
                    Prev::ReadDone(ts)
                } else {
                    Prev::Other
                };
                return;
            } else {
                cx.push(
                    Error,
                    format_args!(
                        "observation {i}: {kind} before segmentEnd closed the {} run",
                        if read { "readSegment" } else { "writeSegment" }
                    ),
                );
                conn.seg = SegState::Closed;
            }
        }
        SegState::Unknown => {
            conn.seg = SegState::Closed;
            if matches!(cap, Capture::SegmentEnd(_)) {
                // Closes a run that started in a missing record.
                conn.prev = Prev::Unknown;
                return;
            }
            if is_segment {
                // May continue a run from a missing record: adopt it.
                continues_run = true;
                conn.seg = SegState::Open {
                    read: seg_read,
                    ts: obs.ts,
                };
            }
        }
        SegState::Closed => {
            if matches!(cap, Capture::SegmentEnd(_)) {
                cx.push(
                    Error,
                    format_args!(
                        "observation {i}: segmentEnd without an open readSegment/writeSegment run"
                    ),
                );
                conn.prev = Prev::Other;
                return;
            }
        }
    }
    if is_segment && !continues_run {
        conn.seg = SegState::Open {
            read: seg_read,
            ts: obs.ts,
        };
    }

    // Requests: reads, markers, responses.
    match cap {
        Capture::Read(_) | Capture::ReadSegment(_) => conn.in_request = Some(true),
        Capture::EndOfMessageIndicator(_) => {
            if conn.in_request == Some(false) {
                cx.push(
                    Error,
                    format_args!(
                        "observation {i}: endOfMessageIndicator without a read since the previous marker/requestDropped"
                    ),
                );
            } else {
                match conn.prev {
                    Prev::ReadDone(read_ts) => {
                        if read_ts != obs.ts {
                            cx.push(
                                Warning,
                                format_args!(
                                    "observation {i}: endOfMessageIndicator timestamp {} differs from its read's {}",
                                    fmt_ts(obs.ts),
                                    fmt_ts(read_ts)
                                ),
                            );
                        }
                    }
                    Prev::Other => cx.push(
                        Error,
                        format_args!(
                            "observation {i}: endOfMessageIndicator not directly after the read that completes the request"
                        ),
                    ),
                    Prev::Unknown => {}
                }
            }
            conn.in_request = Some(false);
            conn.eoms = conn.eoms.map(|e| e.saturating_add(1));
        }
        Capture::RequestDropped(_) => {
            if conn.in_request == Some(false) {
                cx.push(
                    Error,
                    format_args!(
                        "observation {i}: requestDropped without a read of the request since the previous marker"
                    ),
                );
            }
            conn.in_request = Some(false);
        }
        Capture::Write(w) => note_early_write(conn, &w.data, i, cx),
        Capture::WriteSegment(w) if !continues_run => note_early_write(conn, &w.data, i, cx),
        _ => {}
    }
    conn.prev = match cap {
        Capture::Read(_) => Prev::ReadDone(obs.ts),
        _ => Prev::Other,
    };
}

/// Segment data must be in field 2; data written in field 1 (as for `read`) decodes as an
/// unknown field, i.e. an empty segment.
fn empty_segment(data: &[u8], i: usize, kind: &str, cx: &mut Ctx<'_>) {
    if data.is_empty() {
        cx.push(
            Severity::Error,
            format_args!(
                "observation {i}: {kind} has no data (segment data belongs in field 2, not 1)"
            ),
        );
    }
}

fn note_early_write(conn: &Conn, data: &[u8], i: usize, cx: &mut Ctx<'_>) {
    if conn.in_request == Some(true) && !looks_like_1xx(data) {
        cx.push(
            Severity::Note,
            format_args!(
                "observation {i}: response bytes written while a request was still being read (before its end-of-message)"
            ),
        );
    }
}

fn r_add(counter: &mut u64, n: usize) {
    *counter = counter.saturating_add(n as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proto::{
        traffic_observation::Capture as C, ConnectionException, Empty, EndOfMessageIndication,
        ReadObservation, RequestReleasedDownstream, SegmentObservation, WriteObservation,
    };

    fn t(s: i64) -> Option<Timestamp> {
        Some(Timestamp {
            seconds: 1_700_000_000 + s,
            nanos: 123,
        })
    }
    fn o(s: i64, c: C) -> TrafficObservation {
        TrafficObservation {
            ts: t(s),
            capture: Some(c),
        }
    }
    fn read(s: i64, d: &str) -> TrafficObservation {
        o(s, C::Read(ReadObservation { data: d.into() }))
    }
    fn write(s: i64, d: &str) -> TrafficObservation {
        o(s, C::Write(WriteObservation { data: d.into() }))
    }
    fn rseg(s: i64, d: &str) -> TrafficObservation {
        o(s, C::ReadSegment(SegmentObservation { data: d.into() }))
    }
    fn wseg(s: i64, d: &str) -> TrafficObservation {
        o(s, C::WriteSegment(SegmentObservation { data: d.into() }))
    }
    fn seg_end(s: i64) -> TrafficObservation {
        o(s, C::SegmentEnd(Empty {}))
    }
    fn eom(s: i64, f: i32, h: i32) -> TrafficObservation {
        o(
            s,
            C::EndOfMessageIndicator(EndOfMessageIndication {
                first_line_byte_length: Some(f),
                headers_byte_length: Some(h),
            }),
        )
    }
    fn close(s: i64) -> TrafficObservation {
        o(s, C::Close(Empty {}))
    }
    fn rec(
        conn: &str,
        index: Option<Index>,
        prior: Option<i32>,
        unterminated: Option<bool>,
        obs: Vec<TrafficObservation>,
    ) -> TrafficStream {
        TrafficStream {
            connection_id: conn.into(),
            node_id: "node-a".into(),
            prior_requests_received: prior,
            last_observation_was_unterminated_read: unterminated,
            sub_stream: obs,
            index,
        }
    }
    fn num(n: i32) -> Option<Index> {
        Some(Index::Number(n))
    }
    fn last(n: i32) -> Option<Index> {
        Some(Index::NumberOfThisLastChunk(n))
    }

    /// A correct 4-record connection: GET, 100-continue POST whose body is split across
    /// records 2 and 3 as a segment run, response, close.
    fn good() -> Vec<TrafficStream> {
        vec![
            rec(
                "c1",
                num(1),
                None,
                None,
                vec![
                    read(1, "GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
                    eom(1, 14, 7),
                    write(2, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
                    read(3, "POST /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n"),
                    write(3, "HTTP/1.1 100 Continue\r\n\r\n"),
                ],
            ),
            rec(
                "c1",
                num(2),
                Some(1),
                Some(true),
                vec![rseg(4, "body-part-1")],
            ),
            rec(
                "c1",
                num(3),
                Some(1),
                Some(true),
                vec![rseg(4, "body-part-2"), seg_end(4), eom(4, 16, 20)],
            ),
            rec(
                "c1",
                last(4),
                Some(2),
                None,
                vec![
                    wseg(5, "HTTP/1.1 201 Created\r\n"),
                    wseg(5, "\r\n"),
                    seg_end(5),
                    close(6),
                ],
            ),
            rec("c2", last(1), None, None, vec![close(7)]),
        ]
    }

    fn run(recs: &[TrafficStream]) -> Report {
        let mut v = Verifier::new();
        for (i, r) in recs.iter().enumerate() {
            v.add(r, 100, &format!("test:{}", i + 1), None, None);
        }
        v.finish()
    }

    fn find<'a>(r: &'a Report, sev: Severity, needle: &str) -> &'a Problem {
        r.problems
            .iter()
            .find(|p| p.severity == sev && p.message.contains(needle))
            .unwrap_or_else(|| panic!("no {sev} containing {needle:?} in {:#?}", r.problems))
    }

    /// Asserts an error containing `needle`, naming connection c1.
    fn assert_error(recs: &[TrafficStream], needle: &str) -> Report {
        let r = run(recs);
        assert!(!r.ok());
        let p = find(&r, Severity::Error, needle);
        assert_eq!(p.connection_id, "c1");
        assert_eq!(p.node_id, "node-a");
        r
    }

    #[test]
    fn correct_connections_are_ok() {
        let r = run(&good());
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert!(r.ok());
        assert_eq!(r.records, 5);
        assert_eq!(r.bytes, 500);
        assert_eq!(r.connections, 2);
        assert_eq!(r.complete_connections, 2);
        assert_eq!(r.incomplete_connections, 0);
        assert_eq!(r.requests, 2);
        assert_eq!(r.dropped_requests, 0);
        assert_eq!(r.observations, 14);
        assert_eq!(
            r.reads_bytes,
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n".len()
                + "POST /x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".len()
                + 22) as u64
        );
        assert_eq!(
            r.writes_bytes,
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".len()
                + "HTTP/1.1 100 Continue\r\n\r\n".len()
                + "HTTP/1.1 201 Created\r\n\r\n".len()) as u64
        );
    }

    #[test]
    fn kafka_key_and_partition_ok_when_consistent() {
        let mut v = Verifier::new();
        for r in good() {
            let key = r.connection_id.clone();
            let part = if key == "c1" { 3 } else { 0 };
            v.add(&r, 10, "p/o", Some(key.as_bytes()), Some(part));
        }
        assert!(v.finish().problems.is_empty());
    }

    #[test]
    fn gap_is_reported_once_without_cascade() {
        let mut recs = good();
        recs.remove(1);
        let r = assert_error(&recs, "gap: record #2 missing");
        assert_eq!(r.errors, 1, "{:#?}", r.problems);
        assert_eq!(r.complete_connections, 1);
        assert_eq!(r.incomplete_connections, 1);
    }

    #[test]
    fn gap_of_several() {
        let mut recs = good();
        recs.drain(0..3);
        assert_error(&recs, "gap: records #1..#3 missing");
    }

    #[test]
    fn identical_duplicate_is_a_warning_not_a_hole() {
        // A broker that wrote a record and failed before acknowledging it: the record comes
        // again, byte for byte. Nothing is missing.
        let mut recs = good();
        let dup = recs[1].clone();
        recs.insert(2, dup);
        let r = run(&recs);
        assert!(r.ok(), "{:#?}", r.problems);
        find(&r, Severity::Warning, "record #2 delivered twice");
        assert_eq!(r.duplicate_records, 1);
        assert_eq!(r.incomplete_connections, 0);
    }

    #[test]
    fn identical_copies_after_the_final_record_are_warnings() {
        // Records in flight together (the final one among them) were written by a broker that
        // died before answering and produced again: the copies arrive after the final record.
        let mut recs = good(); // c1: #1..#4 (final), then c2
        let (second, final_c1) = (recs[1].clone(), recs[3].clone());
        recs.push(second);
        recs.push(final_c1);
        let r = run(&recs);
        assert!(r.ok(), "{:#?}", r.problems);
        find(&r, Severity::Warning, "record #2 delivered twice");
        find(&r, Severity::Warning, "record #4 delivered twice");
        assert_eq!(r.duplicate_records, 2);
        assert_eq!(r.complete_connections, 2);
        assert_eq!(r.incomplete_connections, 0);
    }

    #[test]
    fn a_different_record_after_the_final_is_still_an_error() {
        let mut recs = good();
        let mut other = recs[1].clone();
        other.sub_stream.pop();
        recs.push(other);
        assert_error(&recs, "record after the final record #4");
        assert_eq!(run(&recs).duplicate_records, 0);
    }

    #[test]
    fn conflicting_record_with_a_seen_number_is_an_error() {
        let mut recs = good();
        let mut other = recs[1].clone();
        // Same number, different contents (an observation less).
        other.sub_stream.pop();
        recs.insert(2, other);
        assert_error(&recs, "duplicate or out-of-order record (expected #3)");
        let r = run(&recs);
        assert_eq!(r.duplicate_records, 0);
        assert_eq!(r.incomplete_connections, 1);
    }

    #[test]
    fn two_final_records() {
        let mut recs = good();
        recs[2].index = last(3);
        let r = assert_error(&recs, "second final record (first was #3)");
        find(&r, Severity::Error, "final record does not end with close");
    }

    #[test]
    fn final_record_not_highest() {
        let mut recs = good();
        recs.swap(2, 3); // 1, 2, 4(final), 3
        let r = assert_error(&recs, "record after the final record #4");
        find(&r, Severity::Error, "gap: record #3 missing");
    }

    #[test]
    fn final_record_without_close() {
        let mut recs = good();
        recs[3].sub_stream.pop();
        assert_error(&recs, "final record does not end with close");
    }

    #[test]
    fn close_not_last() {
        let mut recs = good();
        recs[0].sub_stream.insert(2, close(1));
        assert_error(
            &recs,
            "close that is not the last observation of the final record",
        );
    }

    #[test]
    fn missing_index() {
        let mut recs = good();
        recs[1].index = None;
        let r = assert_error(&recs, "record lacks its index");
        // the record is taken where it arrived: no other error
        assert_eq!(r.errors, 1, "{:#?}", r.problems);
    }

    #[test]
    fn explicit_false_unterminated() {
        let mut recs = good();
        recs[3].last_observation_was_unterminated_read = Some(false);
        assert_error(&recs, "lastObservationWasUnterminatedRead present as false");
    }

    #[test]
    fn explicit_zero_prior() {
        let mut recs = good();
        recs[0].prior_requests_received = Some(0);
        assert_error(&recs, "priorRequestsReceived present as 0");
    }

    #[test]
    fn wrong_prior() {
        let mut recs = good();
        recs[3].prior_requests_received = Some(1);
        assert_error(
            &recs,
            "priorRequestsReceived is 1, but earlier records hold 2 end-of-message markers",
        );
    }

    #[test]
    fn unterminated_missing() {
        let mut recs = good();
        recs[1].last_observation_was_unterminated_read = None;
        assert_error(&recs, "lastObservationWasUnterminatedRead missing");
    }

    #[test]
    fn unterminated_wrongly_set() {
        let mut recs = good();
        recs[3].last_observation_was_unterminated_read = Some(true);
        assert_error(&recs, "lastObservationWasUnterminatedRead set, but");
    }

    #[test]
    fn segment_run_not_closed() {
        let mut recs = good();
        recs[2].sub_stream.remove(1); // drop segmentEnd
        assert_error(
            &recs,
            "endOfMessageIndicator before segmentEnd closed the readSegment run",
        );
    }

    #[test]
    fn segment_run_interrupted_by_write() {
        let mut recs = good();
        recs[1].sub_stream.push(write(4, "HTTP/1.1 500 x\r\n\r\n"));
        assert_error(&recs, "write before segmentEnd closed the readSegment run");
    }

    #[test]
    fn segment_data_in_field_1_is_detected() {
        // A writeSegment whose data went into field 1 (tag 0x0a) instead of field 2.
        let bytes = [0x0a, 0x03, b'a', b'b', b'c'];
        let seg = <SegmentObservation as prost::Message>::decode(&bytes[..]).unwrap();
        assert!(seg.data.is_empty());
        let mut recs = good();
        recs[3].sub_stream[1] = o(5, C::WriteSegment(seg));
        assert_error(
            &recs,
            "observation 1: writeSegment has no data (segment data belongs in field 2",
        );
    }

    #[test]
    fn segment_end_without_run() {
        let mut recs = good();
        recs[3].sub_stream.insert(3, seg_end(5));
        assert_error(&recs, "segmentEnd without an open");
    }

    #[test]
    fn segment_timestamp_mismatch_is_warning() {
        let mut recs = good();
        recs[2].sub_stream[0].ts = t(9);
        let r = run(&recs);
        assert!(r.ok());
        find(&r, Severity::Warning, "readSegment timestamp");
    }

    #[test]
    fn observation_without_timestamp() {
        let mut recs = good();
        recs[0].sub_stream[2].ts = None;
        assert_error(&recs, "observation 2 (write) has no timestamp");
    }

    #[test]
    fn observation_without_capture() {
        let mut recs = good();
        recs[0].sub_stream[2].capture = None;
        assert_error(&recs, "observation 2 has no capture member");
    }

    #[test]
    fn first_observation_not_a_read() {
        let mut recs = good();
        recs[0]
            .sub_stream
            .insert(0, write(0, "HTTP/1.1 200 OK\r\n\r\n"));
        assert_error(&recs, "first observation of the connection is write");
    }

    #[test]
    fn connect_first_is_error_and_warning() {
        let mut recs = good();
        recs[0].sub_stream.insert(0, o(0, C::Connect(Empty {})));
        let r = assert_error(&recs, "first observation of the connection is connect");
        find(&r, Severity::Warning, "connect observation");
    }

    #[test]
    fn deprecated_kinds_are_warnings() {
        for c in [
            C::Bind(Empty {}),
            C::Disconnect(Empty {}),
            C::RequestReleasedDownstream(RequestReleasedDownstream { timed_out: false }),
            C::Connect(Empty {}),
        ] {
            let mut recs = good();
            recs[0].sub_stream.insert(3, o(2, c.clone()));
            let r = run(&recs);
            assert!(r.ok(), "{:#?}", r.problems);
            let p = find(
                &r,
                Severity::Warning,
                "observation (the proxy never writes it)",
            );
            assert_eq!(p.connection_id, "c1");
            assert_eq!(r.warnings, 1);
        }
    }

    #[test]
    fn eom_missing_lengths() {
        let mut recs = good();
        recs[0].sub_stream[1] = o(
            1,
            C::EndOfMessageIndicator(EndOfMessageIndication {
                first_line_byte_length: Some(14),
                headers_byte_length: None,
            }),
        );
        assert_error(&recs, "endOfMessageIndicator lacks headersByteLength");
        recs[0].sub_stream[1] = o(
            1,
            C::EndOfMessageIndicator(EndOfMessageIndication {
                first_line_byte_length: None,
                headers_byte_length: None,
            }),
        );
        assert_error(&recs, "endOfMessageIndicator lacks both lengths");
    }

    #[test]
    fn eom_zero_first_line() {
        let mut recs = good();
        recs[0].sub_stream[1] = eom(1, 0, 7);
        assert_error(&recs, "firstLineByteLength is 0 (must be > 0)");
    }

    #[test]
    fn eom_without_read() {
        let mut recs = good();
        recs[3].sub_stream.insert(3, eom(5, 14, 0));
        assert_error(&recs, "endOfMessageIndicator without a read since");
    }

    #[test]
    fn eom_not_directly_after_read() {
        let mut recs = good();
        recs[0]
            .sub_stream
            .insert(1, write(1, "HTTP/1.1 100 Continue\r\n\r\n"));
        assert_error(&recs, "endOfMessageIndicator not directly after the read");
    }

    #[test]
    fn eom_timestamp_mismatch_is_warning() {
        let mut recs = good();
        recs[0].sub_stream[1] = eom(2, 14, 7);
        let r = run(&recs);
        assert!(r.ok());
        find(&r, Severity::Warning, "endOfMessageIndicator timestamp");
    }

    #[test]
    fn request_dropped() {
        let mut recs = good();
        // replace the GET's marker by requestDropped: fine, counts, and prior for later drops by one
        recs[0].sub_stream[1] = o(1, C::RequestDropped(Empty {}));
        let r = run(&recs);
        assert_eq!(r.dropped_requests, 1);
        assert_eq!(r.requests, 1);
        find(
            &r,
            Severity::Error,
            "priorRequestsReceived is 1, but earlier records hold 0",
        );
        // a requestDropped with no read before it
        let mut recs = good();
        recs[3]
            .sub_stream
            .insert(3, o(5, C::RequestDropped(Empty {})));
        assert_error(&recs, "requestDropped without a read");
    }

    #[test]
    fn early_response_is_a_note() {
        let mut recs = good();
        recs[1]
            .sub_stream
            .insert(0, write(3, "HTTP/1.1 413 Too Large\r\n\r\n"));
        recs[1].sub_stream.insert(0, rseg(3, "x"));
        recs[1].sub_stream.insert(1, seg_end(3));
        let r = run(&recs);
        assert!(r.ok(), "{:#?}", r.problems);
        let p = find(&r, Severity::Note, "response bytes written while a request");
        assert_eq!(p.connection_id, "c1");
        assert_eq!(r.notes, 1);
    }

    #[test]
    fn connection_exception_counts() {
        let mut recs = good();
        recs[4].sub_stream.insert(
            0,
            o(
                7,
                C::ConnectionException(ConnectionException {
                    message: "reset".into(),
                }),
            ),
        );
        let r = run(&recs);
        assert!(r.ok(), "{:#?}", r.problems);
        assert_eq!(r.exceptions, 1);
    }

    #[test]
    fn kafka_key_mismatch() {
        let mut v = Verifier::new();
        for r in good() {
            v.add(&r, 10, "p/o", Some(b"other"), None);
        }
        let r = v.finish();
        assert!(!r.ok());
        find(&r, Severity::Error, "Kafka key \"other\" differs");
    }

    #[test]
    fn partition_split() {
        let mut v = Verifier::new();
        for (i, r) in good().iter().enumerate() {
            v.add(r, 10, "p/o", None, Some(i as i32 % 2));
        }
        let r = v.finish();
        find(
            &r,
            Severity::Error,
            "on partition 1, earlier records of the connection on 0",
        );
    }

    #[test]
    fn incomplete_connection() {
        let mut recs = good();
        recs.remove(3);
        let r = run(&recs);
        assert!(!r.ok());
        let p = find(
            &r,
            Severity::Error,
            "incomplete connection: no final record",
        );
        assert_eq!(p.connection_id, "c1");
        assert!(p.message.contains("last in-order record #3"));
        assert_eq!(r.incomplete_connections, 1);
        assert_eq!(r.errors, 1);
    }

    #[test]
    fn same_connection_id_on_two_nodes_is_two_connections() {
        let mut recs = good();
        let mut other = recs[4].clone();
        other.node_id = "node-b".into();
        recs.push(other);
        let r = run(&recs);
        assert!(r.ok());
        assert_eq!(r.connections, 3);
    }

    #[test]
    fn empty_ids() {
        let mut recs = good();
        recs[4].connection_id.clear();
        recs[4].node_id.clear();
        let r = run(&recs);
        find(&r, Severity::Error, "connectionId is empty");
        find(&r, Severity::Error, "nodeId is empty");
    }

    #[test]
    fn undecodable_counts_as_error() {
        let mut v = Verifier::new();
        v.add_undecodable("f.log:3", 12, "bad base64");
        let r = v.finish();
        assert_eq!(r.undecodable_records, 1);
        assert_eq!(r.records, 0);
        assert!(!r.ok());
        assert_eq!(r.problems[0].source, "f.log:3");
    }

    #[test]
    fn problem_list_is_bounded() {
        let mut v = Verifier::new();
        for i in 0..1500 {
            let r = rec(&format!("c{i}"), num(1), None, None, vec![read(1, "G")]);
            v.add(&r, 1, "x", None, None);
        }
        let r = v.finish();
        assert_eq!(r.errors, 1500);
        assert_eq!(r.problems.len(), MAX_PROBLEMS_KEPT);
        assert_eq!(r.problems_omitted, 500);
        assert_eq!(r.incomplete_connections, 1500);
    }

    #[test]
    fn garbage_never_panics() {
        let mut v = Verifier::new();
        let weird = rec(
            "w",
            Some(Index::Number(i32::MAX)),
            Some(i32::MIN),
            Some(false),
            vec![
                TrafficObservation {
                    ts: None,
                    capture: None,
                },
                seg_end(0),
                eom(0, i32::MIN, i32::MIN),
            ],
        );
        v.add(&weird, usize::MAX, "", Some(b"\xff"), Some(-1));
        v.add(&weird, usize::MAX, "", None, Some(i32::MAX));
        let mut w2 = weird.clone();
        w2.index = Some(Index::NumberOfThisLastChunk(i32::MIN));
        v.add(&w2, 0, "", None, None);
        let r = v.finish();
        assert!(!r.ok());
        assert_eq!(r.bytes, u64::MAX);
    }
}
