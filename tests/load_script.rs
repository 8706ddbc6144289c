//! End-to-end test of the user load script `scripts/load/opensearch_load.py`: the real
//! `capture-proxy` binary (trace directory + admin endpoint, both on port 0) in front of a small
//! OpenSearch-like fake origin written here, the script run through it with `--check-capture`
//! against both the admin `/metrics` counter and `capture-proxy inspect` of the trace
//! directory; plus the script's failure exits (capture mismatch, error rate, setup failure).
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`), `python3` on PATH (Debian's, the
//! standard library only), `tests/common::binary` (spawning the proxy), serde_json, tempfile,
//! std.
//!
//! Invariant: every wait is bounded (a broken proxy or script fails a test, never hangs it);
//! readiness is the proxy's own `listening … addr=` log lines, never a sleep; all traffic stays
//! on 127.0.0.1; the fake origin validates every body it gets (JSON, NDJSON bulk) and answers
//! 400/404 to anything an OpenSearch cluster would reject, so a malformed script request shows
//! up as an error in the script's summary.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::binary::{proxy_command, ProxyProcess, STARTUP_TIMEOUT};
use serde_json::Value;

/// Most time (seconds) one script run may take: a few seconds of load, the setup requests and
/// the capture check's `inspect` runs, with wide margin for a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound (seconds) on the fake origin's reads of an idle connection: the proxy keeps pooled
/// connections open for the whole test; the origin's threads must end eventually anyway.
const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head (bytes) the fake origin accepts; the script's heads are ~300 bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Largest request body (bytes) the fake origin accepts; the tests' bulks are below 100 KiB.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

fn script() -> String {
    format!(
        "{}/scripts/load/opensearch_load.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

// ----------------------------------------------------------------------------------------
// Fake OpenSearch origin
// ----------------------------------------------------------------------------------------

/// What the fake origin received.
#[derive(Default, Debug)]
struct Seen {
    /// Requests per `"METHOD op"` (op: `index`, `bulk`, `search`, `count`, `doc`, `refresh`).
    by_op: HashMap<String, u64>,
    /// All requests.
    total: u64,
    /// Documents received in bulk bodies plus single-document PUTs.
    docs: u64,
    /// Shortest and longest document source line seen in a bulk body (bytes).
    doc_len_min: usize,
    doc_len_max: usize,
    /// Search bodies carrying `aggs`.
    searches_with_aggs: u64,
    /// Requests answered 400/404 (the script sent something a cluster would reject).
    rejected: Vec<String>,
}

/// A thread-per-connection HTTP/1.1 keep-alive server answering like OpenSearch would for the
/// paths the script uses. Indices whose name starts with `fail` answer 503.
struct FakeOpenSearch {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
}

impl FakeOpenSearch {
    fn start() -> FakeOpenSearch {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake origin");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen {
            doc_len_min: usize::MAX,
            ..Seen::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                thread::spawn(move || serve(conn, &seen));
            }
        });
        FakeOpenSearch { addr, seen, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap()
    }
}

impl Drop for FakeOpenSearch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // wake the accept loop so it sees the flag
        let _ = TcpStream::connect(self.addr);
    }
}

/// Serves one connection until EOF, error or `connection: close`.
fn serve(conn: TcpStream, seen: &Mutex<Seen>) {
    let _ = conn.set_read_timeout(Some(ORIGIN_IDLE_TIMEOUT));
    let _ = conn.set_nodelay(true);
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut rd = BufReader::new(conn);
    loop {
        let mut line = String::new();
        match rd.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_string(), target.to_string());
        let mut content_length = 0usize;
        let mut close = false;
        let mut head_bytes = line.len();
        loop {
            let mut h = String::new();
            match rd.read_line(&mut h) {
                Ok(0) | Err(_) => return,
                Ok(n) => head_bytes += n,
            }
            if head_bytes > MAX_HEAD_BYTES {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let Some((name, value)) = h.split_once(':') else {
                return;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => match value.parse() {
                    Ok(n) if n <= MAX_BODY_BYTES => content_length = n,
                    _ => return,
                },
                // the script never sends chunked bodies; a proxy that re-chunked would be a bug
                "transfer-encoding" => return,
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let mut body = vec![0u8; content_length];
        if rd.read_exact(&mut body).is_err() {
            return;
        }
        let (status, answer) = route(&method, &target, &body, seen);
        let resp = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json; charset=UTF-8\r\n\
             content-length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if out.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn json_ok(b: &[u8]) -> Option<Value> {
    serde_json::from_slice(b).ok()
}

/// The answer to one request; records it in `seen`.
fn route(method: &str, target: &str, body: &[u8], seen: &Mutex<Seen>) -> (u16, String) {
    let path = target.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut s = seen.lock().unwrap();
    s.total += 1;
    let op = match (method, segs.as_slice()) {
        ("PUT" | "DELETE", [_]) => "index",
        ("POST", [_, "_bulk"]) => "bulk",
        ("GET" | "POST", [_, "_search"]) => "search",
        ("GET" | "POST", [_, "_count"]) => "count",
        ("POST", [_, "_refresh"]) => "refresh",
        ("PUT" | "GET", [_, "_doc", _]) => "doc",
        _ => "unknown",
    };
    *s.by_op.entry(format!("{method} {op}")).or_default() += 1;
    let reject = |s: &mut Seen, status: u16, why: &str| {
        s.rejected.push(format!("{method} {target}: {why}"));
        (
            status,
            format!("{{\"error\":\"{why}\",\"status\":{status}}}"),
        )
    };
    if segs.first().is_some_and(|i| i.starts_with("fail")) {
        return (503, "{\"error\":\"unavailable\",\"status\":503}".into());
    }
    match op {
        "index" if method == "PUT" => {
            if json_ok(body).is_none() {
                return reject(&mut s, 400, "bad index settings");
            }
            (
                200,
                "{\"acknowledged\":true,\"shards_acknowledged\":true}".into(),
            )
        }
        "index" => (200, "{\"acknowledged\":true}".into()),
        "bulk" => {
            let Ok(text) = std::str::from_utf8(body) else {
                return reject(&mut s, 400, "bulk not utf-8");
            };
            if !text.ends_with('\n') {
                return reject(&mut s, 400, "bulk must end with a newline");
            }
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() || lines.len() % 2 != 0 {
                return reject(&mut s, 400, "bulk needs action/source pairs");
            }
            for pair in lines.chunks(2) {
                let action = json_ok(pair[0].as_bytes());
                if !action.is_some_and(|a| a["index"].is_object()) {
                    return reject(&mut s, 400, "bad bulk action line");
                }
                if json_ok(pair[1].as_bytes()).is_none_or(|d| !d.is_object()) {
                    return reject(&mut s, 400, "bad bulk source line");
                }
                s.docs += 1;
                s.doc_len_min = s.doc_len_min.min(pair[1].len());
                s.doc_len_max = s.doc_len_max.max(pair[1].len());
            }
            (200, "{\"took\":3,\"errors\":false,\"items\":[]}".into())
        }
        "search" | "count" => {
            if !body.is_empty() {
                let Some(q) = json_ok(body) else {
                    return reject(&mut s, 400, "bad query body");
                };
                if !q["query"].is_object() {
                    return reject(&mut s, 400, "no query");
                }
                if q.get("aggs").is_some() {
                    s.searches_with_aggs += 1;
                }
            }
            if op == "count" {
                (200, "{\"count\":42,\"_shards\":{\"total\":1}}".into())
            } else {
                (
                    200,
                    "{\"took\":2,\"timed_out\":false,\"hits\":{\"total\":{\"value\":0,\
                     \"relation\":\"eq\"},\"hits\":[]}}"
                        .into(),
                )
            }
        }
        "refresh" => (200, "{\"_shards\":{\"total\":1,\"successful\":1}}".into()),
        "doc" if method == "PUT" => {
            if json_ok(body).is_none_or(|d| !d.is_object()) {
                return reject(&mut s, 400, "bad document");
            }
            s.docs += 1;
            (201, "{\"result\":\"created\",\"_version\":1}".into())
        }
        "doc" => (200, "{\"found\":true,\"_source\":{}}".into()),
        _ => reject(&mut s, 404, "no such route"),
    }
}

// ----------------------------------------------------------------------------------------
// The proxy binary
// ----------------------------------------------------------------------------------------

/// A `capture-proxy` process with a trace directory and an admin endpoint (both listeners on
/// port 0); killed on drop.
fn start_proxy(origin: &FakeOpenSearch, trace_dir: &Path) -> ProxyProcess {
    let mut cmd = proxy_command();
    cmd.args(["--destinationUri", &origin.url()])
        .args(["--listenPort", "0", "--listen-address", "127.0.0.1"])
        .args(["--admin-listen", "127.0.0.1:0", "--drain-timeout", "10s"])
        .arg("--traceDirectory")
        .arg(trace_dir);
    ProxyProcess::start_with_admin(cmd, STARTUP_TIMEOUT)
}

// ----------------------------------------------------------------------------------------
// Running the script
// ----------------------------------------------------------------------------------------

struct ScriptRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The `--json` summary (the last stdout line that parses as a JSON object).
    summary: Value,
}

impl ScriptRun {
    fn context(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the script with `args` plus `--json` (bounded by [`SCRIPT_TIMEOUT`]).
fn run_script(args: &[String]) -> ScriptRun {
    let mut child = Command::new("python3")
        .arg(script())
        .args(args)
        .arg("--json")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 (is it on PATH?)");
    let reader = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "script still running after {SCRIPT_TIMEOUT:?}:\n{}",
                err.join().unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    let summary = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(Value::is_object)
        .unwrap_or(Value::Null);
    ScriptRun {
        code: status.code(),
        stdout,
        stderr,
        summary,
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The capture-check flags against `proxy` and its trace directory.
fn check_flags(proxy: &ProxyProcess, dir: &Path) -> Vec<String> {
    vec![
        "--check-capture".into(),
        "--admin".into(),
        proxy.admin_url(),
        "--trace-dir".into(),
        dir.to_str().unwrap().into(),
        "--proxy-bin".into(),
        env!("CARGO_BIN_EXE_capture-proxy").into(),
        "--capture-wait".into(),
        "20".into(),
    ]
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

/// Asserts a passing run: exit 0, nothing failed, both capture sources saw exactly the
/// requests that completed (no errors, so completed = sent), the origin too.
#[track_caller]
fn assert_clean_captured_run(r: &ScriptRun, origin: &FakeOpenSearch, proxy: &ProxyProcess) {
    let s = &r.summary;
    let ctx = || format!("{}\nproxy log:\n{}", r.context(), proxy.stderr());
    assert_eq!(r.code, Some(0), "{}", ctx());
    assert_eq!(s["passed"], true, "{}", ctx());
    assert!(u(&s["completed"]) > 0, "{}", ctx());
    assert_eq!(u(&s["errors"]), 0, "{}", ctx());
    assert_eq!(s["completed"], s["scheduled"], "{}", ctx());
    assert_eq!(s["completed"], s["sent"], "{}", ctx());
    let expected = u(&s["completed"]) + u(&s["setup"]["completed"]);
    assert_eq!(s["capture"]["ok"], true, "{}", ctx());
    let checks = s["capture"]["checks"].as_array().expect("checks");
    let sources: Vec<&str> = checks.iter().filter_map(|c| c["source"].as_str()).collect();
    assert_eq!(sources, ["admin", "inspect"], "{}", ctx());
    for c in checks {
        assert_eq!(c["ok"], true, "{c}\n{}", ctx());
        assert_eq!(u(&c["delta"]), expected, "{c}\n{}", ctx());
    }
    let seen = origin.seen();
    assert!(
        seen.rejected.is_empty(),
        "origin rejected: {:?}",
        seen.rejected
    );
    assert_eq!(seen.total, expected, "origin saw {seen:?}\n{}", ctx());
}

// ----------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------

/// Mixed workload on a burst shape, with index creation and preload, through the proxy: every
/// operation type runs, nothing fails, and the proxy's counter, its trace directory and the
/// origin all account for exactly the requests the script reports.
#[test]
fn mixed_burst_through_proxy_is_fully_captured() {
    let origin = FakeOpenSearch::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin, dir.path());
    let mut a = args(&[
        "--workload",
        "mixed",
        "--shape",
        "burst",
        "--rate",
        "20",
        "--burst-rate",
        "100",
        "--burst-length",
        "0.25",
        "--burst-period",
        "1",
        "--duration",
        "3",
        "--connections",
        "4",
        "--create-index",
        "--preload",
        "40",
        "--docs-per-request",
        "20",
        "--doc-size",
        "256",
        "--aggs-ratio",
        "0.5",
        "--seed",
        "7",
        "--report-interval",
        "1",
        "--max-error-rate",
        "0",
        "--index-prefix",
        "logs-load",
        "--url",
    ]);
    a.push(proxy.url());
    a.extend(check_flags(&proxy, dir.path()));
    let r = run_script(&a);
    assert_clean_captured_run(&r, &origin, &proxy);
    let s = &r.summary;
    // burst shape over 3 s: 3 × (100 × 0.25 + 20 × 0.75) = 120 requests scheduled
    assert_eq!(u(&s["scheduled"]), 120, "{}", r.context());
    for op in ["bulk", "search", "index", "get", "count"] {
        let o = &s["ops"][op];
        assert!(u(&o["completed"]) > 0, "no {op} completed: {}", r.context());
        let lat = &o["latency_ms"]["from_scheduled"];
        assert!(lat["max"].as_f64().unwrap() > 0.0, "{op}: {lat}");
        assert!(
            lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap(),
            "{op}: {lat}"
        );
    }
    // 4 setup requests: PUT index, 2 preload bulks of 20, refresh
    assert_eq!(u(&s["setup"]["completed"]), 4, "{}", r.context());
    assert!(
        r.stderr.contains("completed"),
        "no progress line: {}",
        r.stderr
    );
    let seen = origin.seen();
    assert_eq!(seen.by_op.get("PUT index"), Some(&1), "{seen:?}");
    assert_eq!(seen.by_op.get("POST refresh"), Some(&1), "{seen:?}");
    for k in [
        "GET search",
        "POST search",
        "GET doc",
        "PUT doc",
        "POST bulk",
    ] {
        assert!(
            seen.by_op.get(k).is_some_and(|n| *n > 0),
            "no {k}: {seen:?}"
        );
    }
    assert!(seen.searches_with_aggs > 0, "{seen:?}");
    assert_eq!(seen.docs, u(&s["docs_indexed"]) + 40, "{seen:?}");
}

/// Bulk on a steady shape: exactly rate × duration requests, every document of every bulk
/// arrives (NDJSON validated by the origin) at about `--doc-size` bytes, all captured.
#[test]
fn bulk_steady_counts_every_document() {
    let origin = FakeOpenSearch::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin, dir.path());
    let mut a = args(&[
        "--workload",
        "bulk",
        "--shape",
        "steady",
        "--rate",
        "10",
        "--duration",
        "1",
        "--connections",
        "2",
        "--docs-per-request",
        "50",
        "--doc-size",
        "300",
        "--max-error-rate",
        "0",
        "--url",
    ]);
    a.push(proxy.url());
    a.extend(check_flags(&proxy, dir.path()));
    let r = run_script(&a);
    assert_clean_captured_run(&r, &origin, &proxy);
    let s = &r.summary;
    assert_eq!(u(&s["scheduled"]), 10, "{}", r.context());
    assert_eq!(u(&s["ops"]["bulk"]["completed"]), 10, "{}", r.context());
    assert_eq!(u(&s["docs_indexed"]), 500, "{}", r.context());
    let seen = origin.seen();
    assert_eq!(seen.docs, 500, "{seen:?}");
    assert_eq!(seen.by_op.get("POST bulk"), Some(&10), "{seen:?}");
    assert!(
        seen.doc_len_min >= 250 && seen.doc_len_max <= 300,
        "document sizes {}..{} for --doc-size 300",
        seen.doc_len_min,
        seen.doc_len_max
    );
}

/// The failure exits: traffic that bypasses the proxy fails the capture check (exit 1, the
/// admin counter did not move); HTTP 5xx answers above `--max-error-rate` fail the run
/// (exit 1, counted as `http_5xx`); an index creation the cluster refuses fails the setup
/// (exit 2, no load sent).
#[test]
fn capture_mismatch_errors_and_setup_failure_exit_nonzero() {
    let origin = FakeOpenSearch::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = start_proxy(&origin, dir.path());

    // 1. straight to the origin, checked against the proxy's counter: nothing captured
    let mut a = args(&[
        "--workload",
        "search",
        "--shape",
        "ramp",
        "--ramp-from",
        "5",
        "--ramp-to",
        "40",
        "--duration",
        "1",
        "--connections",
        "2",
        "--check-capture",
        "--capture-wait",
        "1",
        "--admin",
    ]);
    a.push(proxy.admin_url());
    a.push("--url".into());
    a.push(origin.url());
    let r = run_script(&a);
    assert_eq!(r.code, Some(1), "{}", r.context());
    let s = &r.summary;
    assert_eq!(u(&s["errors"]), 0, "{}", r.context());
    // ramp 5 → 40 req/s over 1 s: N(1) = 5 + 35 / 2 = 22.5, so 23 requests (t < 1)
    assert_eq!(u(&s["scheduled"]), 23, "{}", r.context());
    assert_eq!(s["capture"]["ok"], false, "{}", r.context());
    assert_eq!(u(&s["capture"]["checks"][0]["delta"]), 0, "{}", r.context());
    assert_eq!(s["passed"], false, "{}", r.context());

    // 2. through the proxy to an index the origin answers 503 for
    let mut a = args(&[
        "--workload",
        "mixed",
        "--mix",
        "search=1,count=1",
        "--rate",
        "20",
        "--duration",
        "0.5",
        "--index-prefix",
        "failing",
        "--max-error-rate",
        "0.5",
        "--url",
    ]);
    a.push(proxy.url());
    let r = run_script(&a);
    assert_eq!(r.code, Some(1), "{}", r.context());
    let s = &r.summary;
    assert_eq!(u(&s["scheduled"]), 10, "{}", r.context());
    assert_eq!(u(&s["completed"]), 10, "{}", r.context());
    assert_eq!(u(&s["errors_by_kind"]["http_5xx"]), 10, "{}", r.context());
    assert_eq!(u(&s["status_classes"]["5xx"]), 10, "{}", r.context());

    // 3. index creation refused: setup fails before any load
    let before = origin.seen().total;
    let mut a = args(&[
        "--create-index",
        "--index-prefix",
        "failing",
        "--duration",
        "1",
        "--url",
    ]);
    a.push(proxy.url());
    let r = run_script(&a);
    assert_eq!(r.code, Some(2), "{}", r.context());
    assert!(r.stderr.contains("setup failed"), "{}", r.context());
    assert_eq!(origin.seen().total, before + 1, "only the PUT was sent");
}
