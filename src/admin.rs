//! The admin HTTP endpoint (`--admin-listen`, default 127.0.0.1:9901): `/metrics` (Prometheus
//! text format), `/health` (process alive) and `/ready` (listening, sink usable, not
//! draining). Runs on its own small OS thread with blocking sockets — never on a worker.
//!
//! May depend on: `stats`, `sink::SinkStats`. Reads counters the workers publish (relaxed
//! atomics) and merges their histograms here, off the hot path.
//!
//! Invariant: a slow or malicious admin client can only delay other admin clients (one
//! request per connection, bounded read, short timeouts), never the data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sink::SinkStats;
use crate::stats::{Counter, WorkerStats};

/// What the endpoint reports on.
#[derive(Clone)]
pub struct AdminState {
    pub workers: Vec<Arc<WorkerStats>>,
    pub sink: Arc<SinkStats>,
    /// Set once shutdown has begun: `/ready` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    pub node_id: Arc<str>,
}

/// Most bytes read of an admin request head; admin requests are tiny.
const MAX_REQUEST_BYTES: usize = 4096;
/// Socket timeouts for admin clients (s): keeps one stuck client from blocking the others long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds and serves on a background thread. Returns the bound address.
pub fn start(addr: SocketAddr, state: AdminState) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("cp-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => serve(s, &state),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })?;
    Ok(bound)
}

fn serve(mut s: TcpStream, state: &AdminState) {
    let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut buf = [0u8; MAX_REQUEST_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match s.read(buf.get_mut(len..).unwrap_or(&mut [])) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                len += n;
                if buf
                    .get(..len)
                    .is_some_and(|b| b.windows(4).any(|w| w == b"\r\n\r\n"))
                {
                    break;
                }
            }
        }
    }
    let head = buf.get(..len).unwrap_or(&[]);
    let path = head
        .split(|b| *b == b' ')
        .nth(1)
        .map(|p| p.split(|b| *b == b'?').next().unwrap_or(p))
        .unwrap_or(b"");
    let (status, ctype, body) = match path {
        b"/metrics" => ("200 OK", "text/plain; version=0.0.4", render_metrics(state)),
        b"/health" => ("200 OK", "text/plain", "ok\n".to_string()),
        b"/ready" => {
            let (ready, why) = readiness(state);
            if ready {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready: {why}\n"),
                )
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
}

fn readiness(state: &AdminState) -> (bool, &'static str) {
    if state.draining.load(Ordering::Acquire) {
        return (false, "draining");
    }
    if state.sink.healthy.load(Ordering::Relaxed) == 0 {
        return (false, "capture sink unavailable");
    }
    (true, "")
}

/// Prometheus text exposition of every counter (summed over workers), the derived gauges and
/// the merged histograms.
pub fn render_metrics(state: &AdminState) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(8192);
    for c in Counter::ALL {
        let v = crate::stats::total(&state.workers, *c);
        let _ = writeln!(out, "# HELP {}_total {}", c.name(), c.help());
        let _ = writeln!(out, "# TYPE {}_total counter", c.name());
        let _ = writeln!(out, "{}_total {}", c.name(), v);
    }
    let accepted = crate::stats::total(&state.workers, Counter::ConnAccepted);
    let closed = crate::stats::total(&state.workers, Counter::ConnClosed);
    let _ = writeln!(
        out,
        "# HELP activeConnection client connections currently open"
    );
    let _ = writeln!(out, "# TYPE activeConnection gauge");
    let _ = writeln!(out, "activeConnection {}", accepted.saturating_sub(closed));
    let waited = crate::stats::total(&state.workers, Counter::FinalRecordWaited);
    let ended = crate::stats::total(&state.workers, Counter::FinalRecordWaitEnded);
    let _ = writeln!(
        out,
        "# HELP captureFinalRecordsAwaitingAcks closed connections whose final record waits for earlier records' acks"
    );
    let _ = writeln!(out, "# TYPE captureFinalRecordsAwaitingAcks gauge");
    let _ = writeln!(
        out,
        "captureFinalRecordsAwaitingAcks {}",
        waited.saturating_sub(ended)
    );
    let s = &state.sink;
    let sink_metrics: [(&str, &str, u64); 4] = [
        (
            "sinkRecordsCommitted_total",
            "records committed by the sink thread",
            s.records_committed.load(Ordering::Relaxed),
        ),
        (
            "sinkBytesCommitted_total",
            "bytes committed by the sink thread",
            s.bytes_committed.load(Ordering::Relaxed),
        ),
        (
            "sinkRecordsFailed_total",
            "records the sink thread failed",
            s.records_failed.load(Ordering::Relaxed),
        ),
        (
            "sinkBatches_total",
            "batches received by the sink thread",
            s.batches.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in sink_metrics {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP sinkHealthy 1 when the capture sink accepts records"
    );
    let _ = writeln!(out, "# TYPE sinkHealthy gauge");
    let _ = writeln!(out, "sinkHealthy {}", s.healthy.load(Ordering::Relaxed));
    render_spool_metrics(&mut out, s);
    let _ = writeln!(
        out,
        "# HELP sinkQueueBytes bytes of records queued between the workers and the sink thread"
    );
    let _ = writeln!(out, "# TYPE sinkQueueBytes gauge");
    let _ = writeln!(
        out,
        "sinkQueueBytes {}",
        s.queued_bytes.load(Ordering::Relaxed)
    );
    let _ = writeln!(out, "# HELP draining 1 while the proxy shuts down");
    let _ = writeln!(out, "# TYPE draining gauge");
    let _ = writeln!(
        out,
        "draining {}",
        u8::from(state.draining.load(Ordering::Acquire))
    );
    let _ = writeln!(
        out,
        "# HELP captureProxyInfo constant 1, labelled with this process's capture node id and version"
    );
    let _ = writeln!(out, "# TYPE captureProxyInfo gauge");
    let _ = writeln!(
        out,
        "captureProxyInfo{{node_id=\"{}\",version=\"{}\"}} 1",
        LabelValue(&state.node_id),
        env!("CARGO_PKG_VERSION")
    );
    render_histogram(
        &mut out,
        "upstreamResponseDuration",
        "time from a request's head going to the destination (a held request: its release) to the first byte of its response (ms)",
        state.workers.iter().map(|w| &w.upstream_response_us),
    );
    render_histogram(
        &mut out,
        "blockedDuration",
        "time a mutating request was held until its record was committed or failed (ms)",
        state.workers.iter().map(|w| &w.hold_us),
    );
    render_histogram(
        &mut out,
        "kafkaCommitDuration",
        "time from handing a record to the Kafka producer to its acknowledgement (ms)",
        std::iter::once(&state.sink.commit_us),
    );
    out
}

/// A Prometheus label value, escaped (`\`, `"` and newlines).
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Bucket upper bounds (ms) of every exported histogram: from 0.1 ms (a loopback round trip)
/// through the 10 s Kafka ack timeout to 60 s (a slow search on the destination); longer
/// values land in `+Inf` only.
const BUCKETS_MS: [f64; 18] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0, 30000.0, 60000.0,
];

fn render_histogram<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    hists: impl Iterator<Item = &'a std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
) {
    use std::fmt::Write as _;
    let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
    for h in hists {
        if let Ok(g) = h.lock() {
            match merged.as_mut() {
                Some(m) => {
                    let _ = m.add(&*g);
                }
                None => merged = Some(g.clone()),
            }
        }
    }
    let _ = writeln!(out, "# HELP {name}_milliseconds {help}");
    let _ = writeln!(out, "# TYPE {name}_milliseconds histogram");
    let Some(h) = merged else { return };
    for b in BUCKETS_MS {
        let us = (b * 1000.0) as u64;
        let count = h.count_between(0, us);
        let _ = writeln!(out, "{name}_milliseconds_bucket{{le=\"{b}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_milliseconds_bucket{{le=\"+Inf\"}} {}", h.len());
    let sum_ms = h.mean() * h.len() as f64 / 1000.0;
    let _ = writeln!(out, "{name}_milliseconds_sum {sum_ms}");
    let _ = writeln!(out, "{name}_milliseconds_count {}", h.len());
}

/// The Kafka reachability gauge and the `--spool-dir` metrics (all 0 without a spool).
fn render_spool_metrics(out: &mut String, s: &SinkStats) {
    use std::fmt::Write as _;
    let rows: [(&str, &str, &str, &AtomicU64); 9] = [
        (
            "kafkaConnected",
            "gauge",
            "1 while a Kafka broker is reachable (with --spool-dir, records go to the spool while 0)",
            &s.kafka_connected,
        ),
        (
            "spoolBytes",
            "gauge",
            "bytes of spool files on disk (--spool-dir)",
            &s.spool_bytes,
        ),
        (
            "spoolRecordsSpooled_total",
            "counter",
            "records written to the spool and fsynced (acknowledged as committed)",
            &s.spool_records_spooled,
        ),
        (
            "spoolRecordsDrained_total",
            "counter",
            "spooled records Kafka has acknowledged since",
            &s.spool_records_drained,
        ),
        (
            "spoolRecordsRefused_total",
            "counter",
            "records the spool could not take (full or write error); they failed",
            &s.spool_records_refused,
        ),
        (
            "spoolCorruptSkipped_total",
            "counter",
            "torn or corrupt spool regions skipped during replay",
            &s.spool_corrupt_skipped,
        ),
        (
            "spoolRecordsDropped_total",
            "counter",
            "spooled records Kafka refused for their own sake (too large for the topic); lost",
            &s.spool_records_dropped,
        ),
        (
            "kafkaProducerRestarts_total",
            "counter",
            "times the Kafka producer was replaced by a new one (fatal error, or records taken back for the spool)",
            &s.kafka_producer_restarts,
        ),
        (
            "kafkaRecordsReturnedToSpool_total",
            "counter",
            "records the Kafka producer failed (time-out, broker or producer error) that went to the spool instead of being lost",
            &s.kafka_records_returned,
        ),
    ];
    for (name, kind, help, v) in rows {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> AdminState {
        AdminState {
            workers: vec![
                Arc::new(WorkerStats::default()),
                Arc::new(WorkerStats::default()),
            ],
            sink: Arc::new(SinkStats::default()),
            draining: Arc::new(AtomicBool::new(false)),
            node_id: Arc::from("n"),
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    }

    /// Every exported metric is documented in the README's metrics table.
    #[test]
    fn every_metric_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        let text = render_metrics(&state());
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap_or("");
            assert!(
                readme.contains(&format!("`{name}")),
                "{name} is not in README.md"
            );
        }
    }

    /// …and every metric the README's table names is exported (no stale rows).
    #[test]
    fn readme_metrics_table_lists_only_exported_metrics() {
        let readme = include_str!("../README.md");
        let text = render_metrics(&state());
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let section = readme
            .split("### Admin endpoint and metrics")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .unwrap();
        let mut rows = 0;
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or("");
            for name in first.split(',').map(|n| n.trim().trim_matches('`')) {
                if name.starts_with('/') {
                    continue; // the paths table
                }
                rows += 1;
                assert!(
                    exported.contains(&name),
                    "README lists {name}, not exported"
                );
            }
        }
        assert!(
            rows >= exported.len(),
            "{rows} rows for {} metrics",
            exported.len()
        );
    }

    #[test]
    fn metrics_sum_workers_and_ready_flips() {
        let st = state();
        st.workers[0].add(Counter::BytesRead, 5);
        st.workers[1].add(Counter::BytesRead, 7);
        st.workers[0].inc(Counter::ConnAccepted);
        st.sink.healthy.store(1, Ordering::Relaxed);
        let addr = start("127.0.0.1:0".parse().unwrap(), st.clone()).unwrap();
        let m = get(addr, "/metrics");
        assert!(m.contains("\nbytesRead_total 12\n"), "{m}");
        assert!(m.contains("\nactiveConnection 1\n"), "{m}");
        assert!(get(addr, "/health").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 200"));
        st.sink.healthy.store(0, Ordering::Relaxed);
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 503"));
        st.sink.healthy.store(1, Ordering::Relaxed);
        st.draining.store(true, Ordering::Release);
        let r = get(addr, "/ready");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("draining"),
            "{r}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    /// The value of the sample line `name` (exact name, labels included).
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn histograms_merge_workers_into_cumulative_buckets() {
        let st = state();
        let ms = Duration::from_millis;
        st.workers[0].record(&st.workers[0].upstream_response_us, ms(3));
        st.workers[1].record(&st.workers[1].upstream_response_us, ms(40));
        st.workers[1].record(&st.workers[1].upstream_response_us, ms(200_000));
        st.workers[0].record(&st.workers[0].hold_us, Duration::from_micros(50));
        crate::stats::record_into(&mut st.sink.commit_us.lock().unwrap(), ms(7));
        let m = render_metrics(&st);
        let h = "upstreamResponseDuration_milliseconds";
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"2.5\"}}")), 0.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"5\"}}")), 1.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"50\"}}")), 2.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"60000\"}}")), 2.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"+Inf\"}}")), 3.0);
        assert_eq!(sample(&m, &format!("{h}_count")), 3.0);
        let sum = sample(&m, &format!("{h}_sum"));
        assert!((sum - 200_043.0).abs() < 200_043.0 * 0.01, "{sum}");
        let b = "blockedDuration_milliseconds";
        assert_eq!(sample(&m, &format!("{b}_bucket{{le=\"0.1\"}}")), 1.0);
        assert_eq!(sample(&m, &format!("{b}_count")), 1.0);
        let k = "kafkaCommitDuration_milliseconds";
        assert_eq!(sample(&m, &format!("{k}_bucket{{le=\"5\"}}")), 0.0);
        assert_eq!(sample(&m, &format!("{k}_bucket{{le=\"10\"}}")), 1.0);
        assert_eq!(sample(&m, &format!("{k}_count")), 1.0);
    }

    #[test]
    fn gauges_and_info_line() {
        let mut st = state();
        st.node_id = Arc::from("a\"b\\c\nd");
        st.sink.queued_bytes.store(4096, Ordering::Relaxed);
        st.workers[0].add(Counter::ConnAccepted, 3);
        st.workers[1].add(Counter::ConnClosed, 2);
        st.workers[1].inc(Counter::RequestsGetHead);
        let m = render_metrics(&st);
        assert_eq!(sample(&m, "sinkQueueBytes"), 4096.0);
        assert_eq!(sample(&m, "activeConnection"), 1.0);
        assert_eq!(sample(&m, "requestsGetHead_total"), 1.0);
        assert_eq!(sample(&m, "draining"), 0.0);
        let info = format!(
            "captureProxyInfo{{node_id=\"a\\\"b\\\\c\\nd\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&m, &info), 1.0);
        // Every sample line belongs to a declared family.
        let families: Vec<&str> = m
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                families.iter().any(|f| name == *f
                    || name
                        .strip_prefix(f)
                        .is_some_and(|r| ["_bucket", "_sum", "_count"].contains(&r))),
                "{l}"
            );
        }
    }
}
