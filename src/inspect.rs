//! `capture-proxy inspect`: reads captured records back, prints them decoded (text or JSON
//! lines), verifies every connection with `capture::verify` and prints a summary. This module
//! does the trace-directory input; the record and summary printers are public so the Kafka
//! input can reuse them.
//!
//! Depends on `capture::proto` (decoding), `capture::verify` (checks), `sink::file` (reading
//! trace files), `cli::InspectArgs` (for `run` only), `prost`, `base64`, `serde_json`. Off the
//! hot path: allocates freely.
//!
//! Invariants: never panics on any record content (previews escape and truncate bytes,
//! timestamps out of range are printed raw); a line that does not decode is reported (as a
//! record line and as an `Error` problem) and reading goes on; only I/O errors stop it.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost::Message as _;
use serde_json::{json, Map, Value};

use crate::capture::proto::traffic_observation::Capture;
use crate::capture::proto::traffic_stream::Index;
use crate::capture::proto::{Timestamp, TrafficObservation, TrafficStream};
use crate::capture::verify::{Problem, Report, Verifier};
use crate::sink::file::{list_trace_files, read_trace_lines, TraceReadError};

/// Bytes of read/write data shown in a text preview: enough for a request line and the
/// start of the headers, short enough to keep one observation per terminal line.
pub const PREVIEW_BYTES: usize = 80;

/// Bytes of a connectionException message shown in text form: messages are short, but a
/// hostile one must not flood the output.
pub const EXCEPTION_PREVIEW_BYTES: usize = 200;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InspectOptions {
    /// JSON lines instead of text.
    pub json: bool,
    /// Print only the summary, not every record.
    pub summary_only: bool,
}

#[derive(thiserror::Error, Debug)]
pub enum InspectError {
    #[error("cannot list trace directory {}: {source}", .dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no capture-*.log trace files in {}", .dir.display())]
    NoTraceFiles { dir: PathBuf },
    #[error(transparent)]
    Read(#[from] TraceReadError),
    #[error("writing inspect output: {0}")]
    Output(#[source] io::Error),
    #[error("inspect needs exactly one input: --traceDirectory or --kafkaConnection")]
    NoInput,
    #[error("inspect from Kafka is not implemented yet; use --traceDirectory")]
    KafkaNotImplemented,
}

/// Entry point of `capture-proxy inspect` (called by `main`): inspects the trace directory
/// (`--quiet` = summary only) and returns whether the capture verified OK.
pub fn run(args: &crate::cli::InspectArgs, out: &mut dyn Write) -> Result<bool, InspectError> {
    let opts = InspectOptions {
        json: args.json,
        summary_only: args.quiet,
    };
    match (&args.trace_directory, &args.kafka_connection) {
        (Some(dir), None) => Ok(inspect_trace_dir(dir, &opts, out)?.ok()),
        (None, Some(_)) => Err(InspectError::KafkaNotImplemented),
        _ => Err(InspectError::NoInput),
    }
}

/// Reads every trace file of `dir` in order (`list_trace_files`), decodes each line, prints
/// each record (unless `summary_only`) to `out`, verifies, prints the summary and returns the
/// report. Record sources are `<file name>:<line>`.
pub fn inspect_trace_dir(
    dir: &Path,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> Result<Report, InspectError> {
    let files = list_trace_files(dir).map_err(|source| InspectError::ListDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    if files.is_empty() {
        return Err(InspectError::NoTraceFiles {
            dir: dir.to_path_buf(),
        });
    }
    let mut verifier = Verifier::new();
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        let mut lines = read_trace_lines(file);
        while let Some(item) = lines.next() {
            let source = format!("{name}:{}", lines.line_number());
            match item {
                Ok(bytes) => match TrafficStream::decode(bytes.as_slice()) {
                    Ok(ts) => {
                        if !opts.summary_only {
                            print_record(&ts, &source, opts, out).map_err(InspectError::Output)?;
                        }
                        verifier.add(&ts, bytes.len(), &source, None, None);
                    }
                    Err(e) => {
                        let reason = format!("not a TrafficStream: {e}");
                        if !opts.summary_only {
                            print_undecodable(&source, &reason, opts, out)
                                .map_err(InspectError::Output)?;
                        }
                        verifier.add_undecodable(&source, bytes.len(), &reason);
                    }
                },
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => {
                    let reason = e.reason();
                    if !opts.summary_only {
                        print_undecodable(&source, &reason, opts, out)
                            .map_err(InspectError::Output)?;
                    }
                    verifier.add_undecodable(&source, 0, &reason);
                }
            }
        }
    }
    let report = verifier.finish();
    print_summary(&report, opts, out).map_err(InspectError::Output)?;
    Ok(report)
}

/// Prints a record that could not be decoded: `<source> UNDECODABLE: <reason>` or a JSON
/// object `{"type":"undecodable","source":…,"error":…}`.
pub fn print_undecodable(
    source: &str,
    reason: &str,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    if opts.json {
        write_json_line(
            out,
            &json!({"type": "undecodable", "source": source, "error": reason}),
        )
    } else {
        writeln!(out, "{source} UNDECODABLE: {reason}")
    }
}

/// Prints one decoded record.
///
/// Text: a header line `<source> conn=<id> node=<id> #N[ final][ prior=P][ unterminated]`
/// then one indented line per observation, `<ts> <kind> <details>`; data as `<len>B "<escaped
/// preview of the first PREVIEW_BYTES bytes>"` (`…` when cut).
///
/// JSON: one object per line: `type` = `record`, `source`, `connectionId`, `nodeId`, `number`
/// or `numberOfThisLastChunk`, `priorRequestsReceived` and
/// `lastObservationWasUnterminatedRead` only when present, and `observations`: an array of
/// `{ts, type, …}` with data as base64 `data` plus `length`.
pub fn print_record(
    ts: &TrafficStream,
    source: &str,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    if opts.json {
        return write_json_line(out, &record_json(ts, source));
    }
    write!(
        out,
        "{source} conn={} node={} ",
        escape(ts.connection_id.as_bytes(), EXCEPTION_PREVIEW_BYTES),
        escape(ts.node_id.as_bytes(), EXCEPTION_PREVIEW_BYTES)
    )?;
    match ts.index {
        Some(Index::Number(n)) => write!(out, "#{n}")?,
        Some(Index::NumberOfThisLastChunk(n)) => write!(out, "#{n} final")?,
        None => write!(out, "#? (no index)")?,
    }
    if let Some(p) = ts.prior_requests_received {
        write!(out, " prior={p}")?;
    }
    match ts.last_observation_was_unterminated_read {
        Some(true) => write!(out, " unterminated")?,
        Some(false) => write!(out, " unterminated=false")?,
        None => {}
    }
    writeln!(out)?;
    for obs in &ts.sub_stream {
        print_observation_text(obs, out)?;
    }
    Ok(())
}

fn print_observation_text(obs: &TrafficObservation, out: &mut dyn Write) -> io::Result<()> {
    write!(out, "  {} ", format_ts(obs.ts))?;
    let Some(cap) = obs.capture.as_ref() else {
        return writeln!(out, "(no capture member)");
    };
    match cap {
        Capture::Read(d) => data_line(out, "read", &d.data),
        Capture::ReadSegment(d) => data_line(out, "readSegment", &d.data),
        Capture::Write(d) => data_line(out, "write", &d.data),
        Capture::WriteSegment(d) => data_line(out, "writeSegment", &d.data),
        Capture::EndOfMessageIndicator(e) => writeln!(
            out,
            "endOfMessage firstLine={} headers={}",
            opt_i32(e.first_line_byte_length),
            opt_i32(e.headers_byte_length)
        ),
        Capture::ConnectionException(e) => writeln!(
            out,
            "connectionException \"{}\"",
            escape(e.message.as_bytes(), EXCEPTION_PREVIEW_BYTES)
        ),
        Capture::RequestReleasedDownstream(r) => {
            writeln!(out, "requestReleasedDownstream timedOut={}", r.timed_out)
        }
        Capture::SegmentEnd(_) => writeln!(out, "segmentEnd"),
        Capture::RequestDropped(_) => writeln!(out, "requestDropped"),
        Capture::Close(_) => writeln!(out, "close"),
        Capture::Connect(_) => writeln!(out, "connect"),
        Capture::Bind(_) => writeln!(out, "bind"),
        Capture::Disconnect(_) => writeln!(out, "disconnect"),
    }
}

fn data_line(out: &mut dyn Write, kind: &str, data: &[u8]) -> io::Result<()> {
    writeln!(
        out,
        "{kind} {}B \"{}\"",
        data.len(),
        escape(data, PREVIEW_BYTES)
    )
}

fn opt_i32(v: Option<i32>) -> String {
    v.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// Escapes the first `limit` bytes for a one-line preview: printable ASCII as is (`"` and `\`
/// backslashed), `\r` `\n` `\t`, other bytes as `\xNN`; `…` when cut.
pub fn escape(data: &[u8], limit: usize) -> String {
    let mut s = String::with_capacity(data.len().min(limit).saturating_add(8));
    for &b in data.iter().take(limit) {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                s.push_str("\\x");
                for nibble in [b >> 4, b & 0x0f] {
                    if let Some(&h) = HEX.get(usize::from(nibble)) {
                        s.push(char::from(h));
                    }
                }
            }
        }
    }
    if data.len() > limit {
        s.push('…');
    }
    s
}

/// RFC 3339 UTC with nanoseconds (`2024-05-01T12:00:00.000000123Z`); `-` when absent; raw
/// `<seconds>s+<nanos>ns` when nanos are out of range.
pub fn format_ts(ts: Option<Timestamp>) -> String {
    let Some(t) = ts else {
        return "-".to_owned();
    };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return format!("{}s+{}ns", t.seconds, t.nanos);
    }
    let days = t.seconds.div_euclid(86_400);
    let secs_of_day = t.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
        t.nanos
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, using 400-year
/// eras of 146097 days (March-based years so leap days come last). Total for any i64 that
/// `div_euclid(86400)` yields.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days.saturating_add(719_468); // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let month = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let year = era
        .saturating_mul(400)
        .saturating_add(yoe)
        .saturating_add(i64::from(month <= 2));
    (year, month as u32, day as u32)
}

fn record_json(ts: &TrafficStream, source: &str) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "record".into());
    m.insert("source".into(), source.into());
    m.insert("connectionId".into(), ts.connection_id.as_str().into());
    m.insert("nodeId".into(), ts.node_id.as_str().into());
    match ts.index {
        Some(Index::Number(n)) => {
            m.insert("number".into(), n.into());
        }
        Some(Index::NumberOfThisLastChunk(n)) => {
            m.insert("numberOfThisLastChunk".into(), n.into());
        }
        None => {}
    }
    if let Some(p) = ts.prior_requests_received {
        m.insert("priorRequestsReceived".into(), p.into());
    }
    if let Some(u) = ts.last_observation_was_unterminated_read {
        m.insert("lastObservationWasUnterminatedRead".into(), u.into());
    }
    let observations: Vec<Value> = ts.sub_stream.iter().map(observation_json).collect();
    m.insert("observations".into(), Value::Array(observations));
    Value::Object(m)
}

fn observation_json(obs: &TrafficObservation) -> Value {
    let mut m = Map::new();
    m.insert(
        "ts".into(),
        match obs.ts {
            Some(_) => format_ts(obs.ts).into(),
            None => Value::Null,
        },
    );
    let data = |m: &mut Map<String, Value>, kind: &str, d: &[u8]| {
        m.insert("type".into(), kind.into());
        m.insert("length".into(), d.len().into());
        m.insert("data".into(), STANDARD.encode(d).into());
    };
    match obs.capture.as_ref() {
        None => {
            m.insert("type".into(), Value::Null);
        }
        Some(Capture::Read(d)) => data(&mut m, "read", &d.data),
        Some(Capture::ReadSegment(d)) => data(&mut m, "readSegment", &d.data),
        Some(Capture::Write(d)) => data(&mut m, "write", &d.data),
        Some(Capture::WriteSegment(d)) => data(&mut m, "writeSegment", &d.data),
        Some(Capture::EndOfMessageIndicator(e)) => {
            m.insert("type".into(), "endOfMessageIndicator".into());
            if let Some(f) = e.first_line_byte_length {
                m.insert("firstLineByteLength".into(), f.into());
            }
            if let Some(h) = e.headers_byte_length {
                m.insert("headersByteLength".into(), h.into());
            }
        }
        Some(Capture::ConnectionException(e)) => {
            m.insert("type".into(), "connectionException".into());
            m.insert("message".into(), e.message.as_str().into());
        }
        Some(Capture::RequestReleasedDownstream(r)) => {
            m.insert("type".into(), "requestReleasedDownstream".into());
            m.insert("timedOut".into(), r.timed_out.into());
        }
        Some(Capture::SegmentEnd(_)) => {
            m.insert("type".into(), "segmentEnd".into());
        }
        Some(Capture::RequestDropped(_)) => {
            m.insert("type".into(), "requestDropped".into());
        }
        Some(Capture::Close(_)) => {
            m.insert("type".into(), "close".into());
        }
        Some(Capture::Connect(_)) => {
            m.insert("type".into(), "connect".into());
        }
        Some(Capture::Bind(_)) => {
            m.insert("type".into(), "bind".into());
        }
        Some(Capture::Disconnect(_)) => {
            m.insert("type".into(), "disconnect".into());
        }
    }
    Value::Object(m)
}

fn write_json_line(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// Prints the summary. Text: counts, one line per kept problem, then `OK` or
/// `FAILED (<errors> problems)` as the last line. JSON: one object line with
/// `"type":"summary"`, the counts, `problems` (array of objects) and `ok`.
pub fn print_summary(
    report: &Report,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    let r = report;
    if opts.json {
        let problems: Vec<Value> = r.problems.iter().map(problem_json).collect();
        return write_json_line(
            out,
            &json!({
                "type": "summary",
                "records": r.records,
                "bytes": r.bytes,
                "undecodableRecords": r.undecodable_records,
                "connections": r.connections,
                "completeConnections": r.complete_connections,
                "incompleteConnections": r.incomplete_connections,
                "observations": r.observations,
                "requests": r.requests,
                "droppedRequests": r.dropped_requests,
                "exceptions": r.exceptions,
                "readsBytes": r.reads_bytes,
                "writesBytes": r.writes_bytes,
                "errors": r.errors,
                "warnings": r.warnings,
                "notes": r.notes,
                "problems": problems,
                "problemsOmitted": r.problems_omitted,
                "ok": r.ok(),
            }),
        );
    }
    writeln!(
        out,
        "records: {} ({} bytes), undecodable: {}",
        r.records, r.bytes, r.undecodable_records
    )?;
    writeln!(
        out,
        "connections: {} (complete {}, incomplete {})",
        r.connections, r.complete_connections, r.incomplete_connections
    )?;
    writeln!(
        out,
        "requests: {} (dropped {})",
        r.requests, r.dropped_requests
    )?;
    writeln!(out, "exceptions: {}", r.exceptions)?;
    writeln!(
        out,
        "read bytes: {}, write bytes: {}",
        r.reads_bytes, r.writes_bytes
    )?;
    writeln!(
        out,
        "problems: {} errors, {} warnings, {} notes",
        r.errors, r.warnings, r.notes
    )?;
    for p in &r.problems {
        writeln!(out, "  {p}")?;
    }
    if r.problems_omitted > 0 {
        writeln!(out, "  ... and {} more not shown", r.problems_omitted)?;
    }
    if r.ok() {
        writeln!(out, "OK")
    } else {
        writeln!(out, "FAILED ({} problems)", r.errors)
    }
}

fn problem_json(p: &Problem) -> Value {
    json!({
        "severity": p.severity.as_str(),
        "nodeId": p.node_id,
        "connectionId": p.connection_id,
        "source": p.source,
        "message": p.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proto::{
        traffic_observation::Capture as C, Empty, EndOfMessageIndication, ReadObservation,
        WriteObservation,
    };
    use crate::sink::file::FileSink;

    const GET: &str = "GET /index HTTP/1.1\r\nHost: a\r\n\r\n";
    const RESP: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    fn o(s: i64, c: C) -> TrafficObservation {
        TrafficObservation {
            ts: Some(Timestamp {
                seconds: 1_700_000_000 + s,
                nanos: 5,
            }),
            capture: Some(c),
        }
    }

    fn conn_records(conn: &str, requests: i32) -> Vec<TrafficStream> {
        // One record per request (read, EOM, write), then a final [close].
        let mut out = Vec::new();
        for i in 0..requests {
            out.push(TrafficStream {
                connection_id: conn.into(),
                node_id: "node-a".into(),
                prior_requests_received: if i > 0 { Some(i) } else { None },
                last_observation_was_unterminated_read: None,
                sub_stream: vec![
                    o(i.into(), C::Read(ReadObservation { data: GET.into() })),
                    o(
                        i.into(),
                        C::EndOfMessageIndicator(EndOfMessageIndication {
                            first_line_byte_length: Some(19),
                            headers_byte_length: Some(7),
                        }),
                    ),
                    o(i.into(), C::Write(WriteObservation { data: RESP.into() })),
                ],
                index: Some(Index::Number(i + 1)),
            });
        }
        out.push(TrafficStream {
            connection_id: conn.into(),
            node_id: "node-a".into(),
            prior_requests_received: if requests > 0 { Some(requests) } else { None },
            last_observation_was_unterminated_read: None,
            sub_stream: vec![o(99, C::Close(Empty {}))],
            index: Some(Index::NumberOfThisLastChunk(requests + 1)),
        });
        out
    }

    /// Interleaves c1 (3 requests) and c2 (close only) and writes them with small files.
    fn write_capture(dir: &Path, skip: Option<usize>) -> usize {
        let mut recs = conn_records("c1", 3);
        recs.insert(1, conn_records("c2", 0).remove(0));
        let mut sink = FileSink::open(dir, "node-a", 400).unwrap();
        for (i, r) in recs.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            sink.append(&r.encode_to_vec()).unwrap();
        }
        sink.sync().unwrap();
        assert!(sink.files_rotated() > 0, "test wants several files");
        recs.len()
    }

    fn inspect_dir(dir: &Path, opts: InspectOptions) -> (Report, String) {
        let mut out = Vec::new();
        let r = inspect_trace_dir(dir, &opts, &mut out).unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn text_output_and_ok() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let (r, text) = inspect_dir(tmp.path(), InspectOptions::default());
        assert!(r.ok(), "{text}");
        assert!(
            text.contains("capture-node-a-000001.log:1 conn=c1 node=node-a #1\n"),
            "{text}"
        );
        assert!(text.contains(" conn=c2 node=node-a #1 final\n"), "{text}");
        assert!(
            text.contains(" conn=c1 node=node-a #4 final prior=3\n"),
            "{text}"
        );
        assert!(text.contains(
            "  2023-11-14T22:13:20.000000005Z read 32B \"GET /index HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n\"\n"
        ));
        assert!(text.contains(" endOfMessage firstLine=19 headers=7\n"));
        assert!(text.contains(" write 38B \"HTTP/1.1 200 OK\\r\\n"));
        assert!(text.contains(" close\n"));
        assert!(text.contains("records: 5 ("), "{text}");
        assert!(text.contains("connections: 2 (complete 2, incomplete 0)"));
        assert!(text.contains("requests: 3 (dropped 0)"));
        assert!(text.contains("read bytes: 96, write bytes: 114"));
        assert!(text.contains("problems: 0 errors, 0 warnings, 0 notes"));
        assert!(text.ends_with("\nOK\n"), "{text}");
        assert_eq!(r.records, 5);
        assert_eq!(r.requests, 3);
    }

    #[test]
    fn summary_only_prints_no_records() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let opts = InspectOptions {
            json: false,
            summary_only: true,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        assert!(!text.contains("conn="), "{text}");
        assert!(text.starts_with("records: 5"), "{text}");
        assert!(text.ends_with("OK\n"));
    }

    #[test]
    fn json_lines_parse() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let opts = InspectOptions {
            json: true,
            summary_only: false,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        let first = &lines[0];
        assert_eq!(first["type"], "record");
        assert_eq!(first["connectionId"], "c1");
        assert_eq!(first["number"], 1);
        assert!(first.get("priorRequestsReceived").is_none());
        let obs = first["observations"].as_array().unwrap();
        assert_eq!(obs[0]["type"], "read");
        assert_eq!(obs[0]["length"], GET.len());
        assert_eq!(
            STANDARD.decode(obs[0]["data"].as_str().unwrap()).unwrap(),
            GET.as_bytes()
        );
        assert_eq!(obs[0]["ts"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(obs[1]["type"], "endOfMessageIndicator");
        assert_eq!(obs[1]["firstLineByteLength"], 19);
        let final_c1 = &lines[4];
        assert_eq!(final_c1["numberOfThisLastChunk"], 4);
        assert_eq!(final_c1["priorRequestsReceived"], 3);
        let summary = &lines[5];
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["records"], 5);
        assert_eq!(summary["connections"], 2);
        assert_eq!(summary["completeConnections"], 2);
        assert_eq!(summary["requests"], 3);
        assert_eq!(summary["ok"], true);
        assert_eq!(summary["problems"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn missing_record_fails() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), Some(2)); // c1 #2
        let (r, text) = inspect_dir(tmp.path(), InspectOptions::default());
        assert!(!r.ok());
        assert!(text.contains("gap: record #2 missing"), "{text}");
        assert!(text.contains("connections: 2 (complete 1, incomplete 1)"));
        assert!(text.ends_with("\nFAILED (1 problems)\n"), "{text}");

        let opts = InspectOptions {
            json: true,
            summary_only: true,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["problems"][0]["connectionId"], "c1");
        assert_eq!(v["problems"][0]["severity"], "error");
    }

    #[test]
    fn corrupt_lines_reported_and_reading_continues() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        // A file of the same node sorting after the others: bad base64, then base64 of bytes
        // that are not a TrafficStream.
        let bad = tmp.path().join("capture-node-a-000999.log");
        std::fs::write(
            &bad,
            format!("@@@\n{}\n", STANDARD.encode([0xff, 0xff, 0xff])),
        )
        .unwrap();
        let (r, text) = inspect_dir(tmp.path(), InspectOptions::default());
        assert!(!r.ok());
        assert_eq!(r.undecodable_records, 2);
        assert_eq!(r.records, 5);
        assert!(
            text.contains("capture-node-a-000999.log:1 UNDECODABLE: not valid base64"),
            "{text}"
        );
        assert!(text.contains("capture-node-a-000999.log:2 UNDECODABLE: not a TrafficStream"));
        assert!(text.contains("at capture-node-a-000999.log:1: undecodable record"));
        assert!(text.ends_with("FAILED (2 problems)\n"));
        let opts = InspectOptions {
            json: true,
            summary_only: false,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        for l in text.lines() {
            let _: Value = serde_json::from_str(l).unwrap();
        }
    }

    #[test]
    fn run_entry_point() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let mut args = crate::cli::InspectArgs {
            trace_directory: Some(tmp.path().to_path_buf()),
            kafka_connection: None,
            kafka_topic: "logging-traffic-topic".into(),
            json: false,
            from_offsets: None,
            kafka_property_file: None,
            quiet: true,
        };
        let mut out = Vec::new();
        assert!(run(&args, &mut out).unwrap());
        assert!(String::from_utf8(out).unwrap().starts_with("records: 5"));
        args.kafka_connection = Some("127.0.0.1:9092".into());
        assert!(matches!(
            run(&args, &mut Vec::new()),
            Err(InspectError::NoInput)
        ));
        args.trace_directory = None;
        assert!(matches!(
            run(&args, &mut Vec::new()),
            Err(InspectError::KafkaNotImplemented)
        ));
    }

    #[test]
    fn empty_or_missing_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let e = inspect_trace_dir(tmp.path(), &InspectOptions::default(), &mut out).unwrap_err();
        assert!(matches!(e, InspectError::NoTraceFiles { .. }), "{e}");
        let e = inspect_trace_dir(
            &tmp.path().join("nope"),
            &InspectOptions::default(),
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(e, InspectError::ListDir { .. }), "{e}");
    }

    #[test]
    fn print_record_text_details() {
        let ts = TrafficStream {
            connection_id: "c\"9".into(),
            node_id: "n".into(),
            prior_requests_received: Some(2),
            last_observation_was_unterminated_read: Some(true),
            sub_stream: vec![
                TrafficObservation {
                    ts: None,
                    capture: None,
                },
                o(
                    0,
                    C::ReadSegment(crate::capture::proto::SegmentObservation {
                        data: vec![b'a'; 100],
                    }),
                ),
                o(0, C::SegmentEnd(Empty {})),
                o(
                    0,
                    C::EndOfMessageIndicator(EndOfMessageIndication {
                        first_line_byte_length: Some(3),
                        headers_byte_length: None,
                    }),
                ),
            ],
            index: None,
        };
        let mut out = Vec::new();
        print_record(&ts, "src:1", &InspectOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let want = format!(
            "src:1 conn=c\\\"9 node=n #? (no index) prior=2 unterminated\n\
             \x20 - (no capture member)\n\
             \x20 2023-11-14T22:13:20.000000005Z readSegment 100B \"{}…\"\n\
             \x20 2023-11-14T22:13:20.000000005Z segmentEnd\n\
             \x20 2023-11-14T22:13:20.000000005Z endOfMessage firstLine=3 headers=?\n",
            "a".repeat(80)
        );
        assert_eq!(text, want);
    }

    #[test]
    fn escape_bytes() {
        assert_eq!(
            escape(b"a\"b\\c\r\n\t\x00\xff~", 80),
            "a\\\"b\\\\c\\r\\n\\t\\x00\\xff~"
        );
        assert_eq!(escape(b"abcdef", 3), "abc…");
        assert_eq!(escape(b"abc", 3), "abc");
        assert_eq!(escape(b"", 3), "");
    }

    #[test]
    fn timestamps() {
        let f = |seconds, nanos| format_ts(Some(Timestamp { seconds, nanos }));
        assert_eq!(f(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(f(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(
            f(951_868_799, 999_999_999),
            "2000-02-29T23:59:59.999999999Z"
        );
        assert_eq!(f(-1, 0), "1969-12-31T23:59:59.000000000Z");
        assert_eq!(f(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(f(1, -1), "1s+-1ns");
        assert_eq!(format_ts(None), "-");
        // extremes do not panic
        let _ = f(i64::MAX, 0);
        let _ = f(i64::MIN, 0);
    }
}
