//! End-to-end test of the user load script `scripts/load/opensearch_load.py`: the real
//! `capture-proxy` binary (trace directory + admin endpoint, both on port 0) in front of a small
//! OpenSearch-like fake origin written here, the script run through it with `--check-capture`
//! against both the admin `/metrics` counter and `capture-proxy inspect` of the trace
//! directory; plus the script's failure exits (capture mismatch, error rate, setup failure).
//! Also the pictures of `scripts/loadtest.sh`: `scripts/load/plot.py` and `publish.sh` on the
//! committed raw records `tests/fixtures/loadtest/results.{raw.tsv,meta}`.
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`), `python3` on PATH (Debian's, the
//! standard library only; matplotlib for the pictures, which are skipped without it unless
//! `CAPTURE_PROXY_REQUIRE_PLOTS=1`), `bash`, `tests/common::binary` (spawning the proxy),
//! serde_json, tempfile, std.
//!
//! Invariant: every wait is bounded (a broken proxy or script fails a test, never hangs it);
//! readiness is the proxy's own `listening … addr=` log lines, never a sleep; all traffic stays
//! on 127.0.0.1; the fake origin validates every body it gets (JSON, NDJSON bulk) and answers
//! 400/404 to anything an OpenSearch cluster would reject, so a malformed script request shows
//! up as an error in the script's summary.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
    let child = Command::new("python3")
        .arg(script())
        .args(args)
        .arg("--json")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3 (is it on PATH?)");
    let (status, stdout, stderr) = wait_bounded(child);
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

/// Waits for `child` (stdout and stderr piped) for at most [`SCRIPT_TIMEOUT`], killing it
/// after that; its status and output.
fn wait_bounded(mut child: Child) -> (ExitStatus, String, String) {
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
    (status, out.join().unwrap(), err.join().unwrap())
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

// ----------------------------------------------------------------------------------------
// scripts/loadtest.sh's pictures: scripts/load/plot.py and publish.sh on a committed fixture
// ----------------------------------------------------------------------------------------

/// plot.py's exit status when matplotlib is missing (nothing drawn).
const PLOT_NO_MATPLOTLIB: i32 = 3;
/// Smallest believable chart (bytes): the fixture's four panels draw to ~100 KB; a blank
/// canvas of the same size compresses to a few KB.
const MIN_PNG_BYTES: usize = 20 * 1024;
/// Smallest believable chart size (pixels): three 5.2-inch panels across at 100 dpi.
const MIN_PNG_WIDTH: u32 = 1000;
const MIN_PNG_HEIGHT: u32 = 500;

fn load_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/load")
        .join(name)
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/loadtest")
        .join(name)
}

/// Runs `program` (python3 or bash) on `args` (bounded by [`SCRIPT_TIMEOUT`]); stdout and
/// stderr in the returned [`ScriptRun`], no JSON summary.
fn run_tool(program: &str, args: &[&Path]) -> ScriptRun {
    let child = Command::new(program)
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let (status, stdout, stderr) = wait_bounded(child);
    ScriptRun {
        code: status.code(),
        stdout,
        stderr,
        summary: Value::Null,
    }
}

/// plot.py on `raw` with the fixture's meta, drawing to `prefix`.
fn run_plot(raw: &Path, prefix: &Path) -> ScriptRun {
    run_tool(
        "python3",
        &[
            &load_file("plot.py"),
            Path::new("--raw"),
            raw,
            Path::new("--meta"),
            &fixture("results.meta"),
            Path::new("--out-prefix"),
            prefix,
        ],
    )
}

/// report.py on the fixture, embedding `charts`.
fn run_report(charts: &[&str]) -> ScriptRun {
    let report = load_file("report.py");
    let (raw, meta) = (fixture("results.raw.tsv"), fixture("results.meta"));
    let mut args = vec![
        report.as_path(),
        Path::new("--raw"),
        &raw,
        Path::new("--meta"),
        &meta,
    ];
    if !charts.is_empty() {
        args.push(Path::new("--charts"));
        args.extend(charts.iter().map(Path::new));
    }
    run_tool("python3", &args)
}

/// Whether plot.py can draw here. Without matplotlib the picture tests are skipped with the
/// reason printed, unless `CAPTURE_PROXY_REQUIRE_PLOTS=1` (scripts/test.sh, which installs
/// python3-matplotlib) makes that a failure.
fn plots_available() -> bool {
    let r = run_tool("python3", &[&load_file("plot.py"), Path::new("--check")]);
    match r.code {
        Some(0) => true,
        Some(PLOT_NO_MATPLOTLIB) => {
            assert_ne!(
                std::env::var("CAPTURE_PROXY_REQUIRE_PLOTS").as_deref(),
                Ok("1"),
                "CAPTURE_PROXY_REQUIRE_PLOTS=1 but plot.py cannot draw:\n{}",
                r.context()
            );
            eprintln!(
                "SKIPPED (set CAPTURE_PROXY_REQUIRE_PLOTS=1 to fail instead): {}",
                r.stderr.trim()
            );
            false
        }
        _ => panic!("plot.py --check: {}", r.context()),
    }
}

/// `path` is a whole PNG (signature, IHDR first, IEND last) of a believable size.
#[track_caller]
fn assert_png(path: &Path) {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let p = path.display();
    assert!(b.starts_with(b"\x89PNG\r\n\x1a\n"), "{p}: no PNG signature");
    assert_eq!(&b[12..16], b"IHDR", "{p}: IHDR is not the first chunk");
    assert!(
        b.ends_with(b"IEND\xaeB`\x82"),
        "{p}: truncated (no IEND at the end)"
    );
    let width = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(b[20..24].try_into().unwrap());
    assert!(
        width >= MIN_PNG_WIDTH && height >= MIN_PNG_HEIGHT,
        "{p}: {width}×{height} px"
    );
    assert!(b.len() >= MIN_PNG_BYTES, "{p}: only {} bytes", b.len());
}

/// plot.py's `PREFIX.figures.tsv`: "scenario/kind/target" → column → cell.
fn read_figures(path: &Path) -> HashMap<String, HashMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    lines
        .map(|l| {
            let row: HashMap<String, String> = header
                .iter()
                .zip(l.split('\t'))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (
                format!("{}/{}/{}", row["scenario"], row["kind"], row["target"]),
                row,
            )
        })
        .collect()
}

/// The cell `column` of row `key` (`scenario/kind/target`) of `figs`.
#[track_caller]
fn cell<'a>(
    figs: &'a HashMap<String, HashMap<String, String>>,
    key: &str,
    column: &str,
) -> &'a str {
    let row = figs
        .get(key)
        .unwrap_or_else(|| panic!("no row {key} in {figs:?}"));
    &row[column]
}

/// The fixture run drawn: both PNGs are whole charts; the medians drawn are the fixture's
/// (per-repetition added latency over direct, the discarded noisy run and the failed run left
/// out) and the same as report.py's table; report.py embeds the pictures it is given, and
/// publish.sh writes a run as latest.* whose report links its own pictures.
#[test]
fn plot_draws_the_fixture_run_with_the_reports_figures() {
    if !plots_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("run");
    let r = run_plot(&fixture("results.raw.tsv"), &prefix);
    assert_eq!(r.code, Some(0), "{}", r.context());
    assert_png(&dir.path().join("run.rps.png"));
    assert_png(&dir.path().join("run.latency.png"));

    let figs = read_figures(&dir.path().join("run.figures.tsv"));
    // cp-file, small: added p50 300, 350, 300 µs → 300; p99 1400, 1300, 1200 → 1300
    assert_eq!(cell(&figs, "small//cp-file", "rps"), "33600.0");
    assert_eq!(cell(&figs, "small//cp-file", "added_p50_us"), "300.0");
    assert_eq!(cell(&figs, "small//cp-file", "added_p99_us"), "1300.0");
    assert_eq!(
        cell(&figs, "small//direct", "added_p50_us"),
        "",
        "direct adds nothing to itself"
    );
    // haproxy, small: rep 2's noisy attempt (1 000 req/s, kept=0) left out, rep 3 failed
    assert_eq!(cell(&figs, "small//haproxy", "runs"), "2");
    assert_eq!(cell(&figs, "small//haproxy", "failed"), "1");
    assert_eq!(cell(&figs, "small//haproxy", "rps"), "28850.0");
    assert_eq!(cell(&figs, "small-half//cp-file", "added_p50_us"), "75.0");
    // kafka-slow: one panel per request kind
    assert_eq!(
        cell(&figs, "kafka-slow/POST/cp-kafka-slow", "added_p50_us"),
        "101200.0"
    );
    assert_eq!(
        cell(&figs, "kafka-slow/GET/cp-kafka-slow", "added_p99_us"),
        "6200.0"
    );
    assert_eq!(figs.len(), 16, "{figs:?}");

    // report.py's small table shows the same medians (req/s, +p50 ms, +p99 ms)
    let plain = run_report(&[]);
    assert_eq!(plain.code, Some(0), "{}", plain.context());
    assert!(!plain.stdout.contains("## Charts"), "{}", plain.stdout);
    let small_rows = plain
        .stdout
        .split("## small: ")
        .nth(1)
        .expect("small section")
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2); // header and alignment rows
    let mut compared = 0;
    for row in small_rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let key = format!("small//{}", cells[1]);
        // the table's median, which report.py rounds: to 1 req/s, to 0.01 ms
        let median = |c: &str| -> f64 {
            let m = c.split(" (").next().unwrap().replace(' ', "");
            m.parse().unwrap_or_else(|_| panic!("{c:?} in {row}"))
        };
        let rps: f64 = cell(&figs, &key, "rps").parse().unwrap();
        assert!(
            (median(cells[2]) - rps).abs() <= 0.5,
            "req/s {rps} drawn for {row}"
        );
        for (col, name) in [(7, "added_p50_us"), (8, "added_p99_us")] {
            let drawn = cell(&figs, &key, name);
            if drawn.is_empty() {
                assert_eq!(cells[col], "–", "{name} of {row}");
                continue;
            }
            let ms = drawn.parse::<f64>().unwrap() / 1000.0;
            assert!(
                (median(cells[col]) - ms).abs() <= 0.005 + 1e-9,
                "{name} {ms} ms drawn for {row}"
            );
        }
        compared += 1;
    }
    assert_eq!(compared, 6, "targets compared in report.py's small table");

    let with_charts = run_report(&["a.rps.png", "a.latency.png"]);
    assert_eq!(with_charts.code, Some(0), "{}", with_charts.context());
    assert!(
        with_charts.stdout.contains("## Charts")
            && with_charts.stdout.contains("(a.rps.png)")
            && with_charts.stdout.contains("(a.latency.png)"),
        "{}",
        with_charts.stdout
    );

    // publish.sh: the run as DIR/latest.*, its report linking pictures that exist beside it
    let publish = dir.path().join("docs");
    let r = run_tool(
        "bash",
        &[&load_file("publish.sh"), &fixture("results.md"), &publish],
    );
    assert_eq!(r.code, Some(0), "{}", r.context());
    let md = std::fs::read_to_string(publish.join("latest.md")).unwrap();
    for png in ["latest.rps.png", "latest.latency.png"] {
        assert!(
            md.contains(&format!("]({png})")),
            "latest.md does not embed {png}"
        );
        assert_png(&publish.join(png));
    }
    for f in ["latest.raw.tsv", "latest.meta", "latest.figures.tsv"] {
        assert!(publish.join(f).is_file(), "publish wrote no {f}");
    }
}

/// Records with a target missing from a scenario, a scenario without its direct runs and a
/// target whose every run failed still draw (those bars left out, marked n/a or failed); raw
/// records with no kept run, or a record without its scenario, fail with exit 1, say why and
/// draw nothing.
#[test]
fn plot_handles_missing_targets_and_rejects_unusable_records() {
    if !plots_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fixture_raw = std::fs::read_to_string(fixture("results.raw.tsv")).unwrap();
    let holey: String = fixture_raw
        .lines()
        .filter(|l| !(l.starts_with("scenario=small-half\t") && l.contains("\ttarget=direct\t")))
        .filter(|l| !(l.starts_with("scenario=small\t") && l.contains("\ttarget=cp-kafka\t")))
        .map(|l| {
            if l.contains("\ttarget=haproxy\t") {
                l.replace("\tstatus=ok\t", "\tstatus=failed\t")
            } else {
                l.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let raw = dir.path().join("holey.raw.tsv");
    std::fs::write(&raw, holey).unwrap();
    let r = run_plot(&raw, &dir.path().join("holey"));
    assert_eq!(r.code, Some(0), "{}", r.context());
    assert_png(&dir.path().join("holey.rps.png"));
    assert_png(&dir.path().join("holey.latency.png"));
    let figs = read_figures(&dir.path().join("holey.figures.tsv"));
    assert!(!figs.contains_key("small//cp-kafka"), "{figs:?}");
    assert!(!figs.contains_key("small-half//direct"), "{figs:?}");
    assert_eq!(cell(&figs, "small-half//cp-file", "rps"), "10789.0");
    assert_eq!(
        cell(&figs, "small-half//cp-file", "added_p50_us"),
        "",
        "no direct to add to"
    );
    assert_eq!(cell(&figs, "small//haproxy", "runs"), "0");
    assert_eq!(cell(&figs, "small//haproxy", "failed"), "3");
    assert_eq!(cell(&figs, "small//haproxy", "rps"), "");

    for (name, content, why) in [
        ("empty", "", "no kept run"),
        (
            "discarded",
            "scenario=small\trep=1\ttarget=direct\tkept=0\tstatus=ok\trps=1\n",
            "no kept run",
        ),
        (
            "unnamed",
            "rep=1\ttarget=direct\tkept=1\tstatus=ok\trps=1\n",
            "line 1: no scenario",
        ),
    ] {
        let raw = dir.path().join(format!("{name}.raw.tsv"));
        std::fs::write(&raw, content).unwrap();
        let prefix = dir.path().join(name);
        let r = run_plot(&raw, &prefix);
        assert_eq!(r.code, Some(1), "{name}: {}", r.context());
        assert!(r.stderr.contains(why), "{name}: {}", r.context());
        assert!(
            !dir.path().join(format!("{name}.rps.png")).exists(),
            "{name}: drew anyway"
        );
    }
}
