//! Tests of the real `capture-proxy` binary as an operator runs it (no Kafka): exit statuses
//! for bad command lines, `--help`, `--check-config` (secrets masked), configuration from the
//! environment and from `---INLINE-JSON`, a trace-directory capture checked by
//! `capture-proxy inspect` (and a damaged one rejected by it), SIGTERM under load, and the
//! epoll driver (`--io-driver legacy`).
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`), `tests/common` (origin, raw
//! client, trace reader and checks), libc (SIGTERM), serde_json, base64, tempfile, std.
//!
//! Invariant: every wait is bounded (a broken binary fails a test, never hangs it);
//! readiness is the proxy's own `listening … addr=` log line, never a sleep; the proxy only
//! ever listens on and talks to 127.0.0.1.

use crate::common;

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use base64::Engine as _;
use common::binary::{proxy_command, run_args, run_command, text, ProxyProcess, STARTUP_TIMEOUT};
use common::{
    assert_bytes_eq, eom_of, get, with_body, Client, ConnTrace, Origin, Response, Trace,
    FORWARD_WAIT,
};

/// Most time (seconds) from SIGTERM to exit: above the 10 s `--drain-timeout` the tests
/// pass, plus the sink's final flush.
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// `--drain-timeout` given to every run: bounds the shutdown if a test leaves a connection
/// open; far above what a drain of these small exchanges needs.
const DRAIN_TIMEOUT: &str = "10s";
/// Most time (seconds) a one-shot command (`--help`, `--check-config`, `inspect`) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

// ----------------------------------------------------------------------------------------
// Running the binary
// ----------------------------------------------------------------------------------------

/// `capture-proxy ARGS` run to completion (bounded by `COMMAND_TIMEOUT`).
fn run(args: &[&str]) -> Output {
    run_args(args, COMMAND_TIMEOUT)
}

#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status {:?}, want {code}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The flags every run gets: loopback only, no admin endpoint (parallel tests would fight
/// over its port), a bounded drain.
const BASE_FLAGS: [&str; 6] = [
    "--listen-address",
    "127.0.0.1",
    "--admin-listen",
    "off",
    "--drain-timeout",
    DRAIN_TIMEOUT,
];

/// A proxy capturing to `dir`, forwarding to `origin`, plus `extra` flags.
fn start_traced(origin: &Origin, dir: &Path, extra: &[&str]) -> ProxyProcess {
    let mut cmd = proxy_command();
    cmd.args([
        "--destinationUri",
        &format!("http://{}", origin.addr()),
        "--listenPort",
        "0",
        "--traceDirectory",
        dir.to_str().unwrap(),
    ])
    .args(BASE_FLAGS)
    .args(extra);
    ProxyProcess::start(cmd, STARTUP_TIMEOUT)
}

/// The `"type":"summary"` object of `capture-proxy inspect … --summary --json`, with the
/// command's output.
fn inspect_summary(args: &[&str]) -> (Output, Option<serde_json::Value>) {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--summary", "--json"]);
    let out = run(&all);
    let summary = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary");
    (out, summary)
}

/// Asserts `inspect --traceDirectory dir` exits 0 and returns its summary.
fn inspect_dir_ok(dir: &Path) -> serde_json::Value {
    let (out, summary) = inspect_summary(&["--traceDirectory", dir.to_str().unwrap()]);
    assert_exit(&out, 0);
    let s = summary.unwrap_or_else(|| panic!("no summary line:\n{}", text(&out.stdout)));
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["undecodableRecords"], 0, "{s}");
    assert_eq!(s["incompleteConnections"], 0, "{s}");
    s
}

/// One keep-alive connection: GET, POST, close; returns the client (all bytes seen).
fn simple_session(addr: SocketAddr, tag: &str) -> (Client, Vec<Vec<u8>>) {
    let mut c = Client::connect(addr);
    let reqs = vec![
        get(&format!("/small?s={tag}")),
        with_body("POST", &format!("/echo?s={tag}"), b"{\"k\":1}"),
    ];
    for r in &reqs {
        c.send(r);
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200);
    }
    finish(&mut c);
    (c, reqs)
}

/// Half-closes the client and reads until the proxy closes too, so the connection's final
/// record is written before the test goes on.
fn finish(c: &mut Client) {
    c.shutdown_write();
    let rest = c
        .read_to_eof()
        .expect("proxy closes after the client's FIN");
    assert!(rest.is_empty(), "unexpected bytes after the last response");
}

/// Asserts the trace holds exactly `sessions` (matched by their bytes), each checked
/// against the spec rules and with one marker per request.
#[track_caller]
fn assert_sessions_captured(trace: &Trace, sessions: &[(Client, Vec<Vec<u8>>)]) {
    let conns = trace.connections();
    assert_eq!(
        conns.len(),
        sessions.len(),
        "connections in the trace:{}",
        trace.dump()
    );
    for (client, reqs) in sessions {
        let conn = conns
            .iter()
            .find(|c| c.reads() == client.sent)
            .unwrap_or_else(|| {
                panic!(
                    "no captured connection read {:?}…{}",
                    text(&client.sent[..client.sent.len().min(60)]),
                    trace.dump()
                )
            });
        conn.check();
        assert_bytes_eq("captured writes", &conn.writes(), &client.received);
        assert_eq!(&conn.request_reads(), reqs);
        let want: Vec<_> = reqs.iter().map(|r| eom_of(r)).collect();
        assert_eq!(conn.eoms(), want);
    }
}

// ----------------------------------------------------------------------------------------
// Command line: exit statuses, help, --check-config
// ----------------------------------------------------------------------------------------

#[test]
fn unknown_flag_exits_2() {
    let out = run(&[
        "--destinationUri",
        "http://127.0.0.1:9",
        "--listenPort",
        "0",
        "--noCapture",
        "--noSuchFlag",
    ]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("noSuchFlag"), "{out:?}");
}

#[test]
fn missing_destination_exits_2() {
    let out = run(&["--listenPort", "0", "--noCapture"]);
    assert_exit(&out, 2);
    assert!(text(&out.stderr).contains("destinationUri"), "{out:?}");
}

#[test]
fn bad_uri_exits_3() {
    let out = run(&[
        "--destinationUri",
        "ftp//not a uri",
        "--listenPort",
        "0",
        "--noCapture",
    ]);
    assert_exit(&out, 3);
    let e = text(&out.stderr);
    assert!(
        e.contains("--destinationUri") && e.contains("ftp//not a uri"),
        "names the flag and the value: {e}"
    );
}

#[test]
fn bad_regex_exits_3() {
    let out = run(&[
        "--destinationUri",
        "http://127.0.0.1:9",
        "--listenPort",
        "0",
        "--noCapture",
        "--suppressCaptureForUriPath",
        "/(unclosed",
    ]);
    assert_exit(&out, 3);
    let e = text(&out.stderr);
    assert!(
        e.contains("--suppressCaptureForUriPath") && e.contains("/(unclosed"),
        "{e}"
    );
}

#[test]
fn help_exits_0() {
    let out = run(&["--help"]);
    assert_exit(&out, 0);
    let h = text(&out.stdout);
    for flag in [
        "--destinationUri",
        "--listenPort",
        "--kafkaConnection",
        "inspect",
    ] {
        assert!(h.contains(flag), "--help mentions {flag}:\n{h}");
    }
    let out = run(&["inspect", "--help"]);
    assert_exit(&out, 0);
    assert!(text(&out.stdout).contains("--traceDirectory"));
}

#[test]
fn check_config_prints_effective_config_with_password_masked() {
    const SECRET: &str = "hunter2-very-secret";
    let mut cmd = proxy_command();
    cmd.env("CAPTURE_PROXY_KAFKA_PASSWORD", SECRET).args([
        "--destinationUri",
        "http://127.0.0.1:9200",
        "--listenPort",
        "9300",
        "--kafkaConnection",
        "127.0.0.1:9092",
        "--kafkaTopic",
        "check-topic",
        "--kafkaAuthType",
        "scram-sha-512",
        "--kafkaUserName",
        "alice",
        "--check-config",
    ]);
    let out = run_command(cmd, COMMAND_TIMEOUT);
    assert_exit(&out, 0);
    let o = text(&out.stdout);
    let e = text(&out.stderr);
    assert!(
        !o.contains(SECRET) && !e.contains(SECRET),
        "secret echoed:\n{o}\n{e}"
    );
    for want in [
        "destination-uri = http://127.0.0.1:9200",
        "kafka-connection = 127.0.0.1:9092",
        "kafka-topic = check-topic",
        "kafka-auth-type = scram-sha-512",
        "kafka-user-name = alice",
        "kafka-password = ****",
    ] {
        assert!(o.contains(want), "--check-config prints {want:?}:\n{o}");
    }
    assert!(o.contains(":9300"), "listen port shown:\n{o}");

    // A bad value under --check-config still exits 3.
    let out = run(&[
        "--destinationUri",
        "http://127.0.0.1:9200",
        "--listenPort",
        "9300",
        "--noCapture",
        "--suppressCaptureForMethod",
        "[",
        "--check-config",
    ]);
    assert_exit(&out, 3);
}

// ----------------------------------------------------------------------------------------
// Configuration from the environment and from JSON
// ----------------------------------------------------------------------------------------

#[test]
fn environment_configuration() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = proxy_command();
    cmd.env(
        "CAPTURE_PROXY_DESTINATION_URI",
        format!("http://{}", origin.addr()),
    )
    .env("CAPTURE_PROXY_LISTEN_PORT", "0")
    .env("CAPTURE_PROXY_TRACE_DIRECTORY", dir.path())
    .env("CAPTURE_PROXY_LISTEN_ADDRESS", "127.0.0.1")
    .env("CAPTURE_PROXY_ADMIN_LISTEN", "off")
    .env("CAPTURE_PROXY_DRAIN_TIMEOUT", DRAIN_TIMEOUT);
    let mut p = ProxyProcess::start(cmd, STARTUP_TIMEOUT);
    assert!(p.addr.ip().is_loopback());
    let s = simple_session(p.addr, "env");
    p.stop_ok(EXIT_TIMEOUT);
    assert_eq!(origin.request_count(), 2);
    assert_sessions_captured(&Trace::load(dir.path()), &[s]);

    // The command line overrides the environment (here: an unusable environment value).
    let dir2 = tempfile::tempdir().unwrap();
    let mut cmd = proxy_command();
    cmd.env("CAPTURE_PROXY_DESTINATION_URI", "http://127.0.0.1:9")
        .env("CAPTURE_PROXY_TRACE_DIRECTORY", dir2.path())
        .args([
            "--destinationUri",
            &format!("http://{}", origin.addr()),
            "--listenPort",
            "0",
        ])
        .args(BASE_FLAGS);
    let mut p = ProxyProcess::start(cmd, STARTUP_TIMEOUT);
    let s = simple_session(p.addr, "env-override");
    p.stop_ok(EXIT_TIMEOUT);
    assert_sessions_captured(&Trace::load(dir2.path()), &[s]);
}

#[test]
fn inline_json_configuration() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({
        "destinationUri": format!("http://{}", origin.addr()),
        "listenPort": 0,
        "traceDirectory": dir.path().to_str().unwrap(),
        "listen-address": "127.0.0.1",
        "admin-listen": "off",
        "drain-timeout": DRAIN_TIMEOUT,
    })
    .to_string();

    // Plain JSON.
    let mut cmd = proxy_command();
    cmd.args(["---INLINE-JSON", &json]);
    let mut p = ProxyProcess::start(cmd, STARTUP_TIMEOUT);
    let s = simple_session(p.addr, "json");
    p.stop_ok(EXIT_TIMEOUT);
    assert_sessions_captured(&Trace::load(dir.path()), &[s]);

    // Its base64 (the Kubernetes form), checked with --check-config.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&json);
    let out = run(&["---INLINE-JSON", &b64, "--check-config"]);
    assert_exit(&out, 0);
    let o = text(&out.stdout);
    assert!(
        o.contains(&format!("destination-uri = http://{}", origin.addr())),
        "{o}"
    );
    assert!(o.contains("admin-listen = off"), "{o}");
}

// ----------------------------------------------------------------------------------------
// Trace-directory capture verified by `inspect`
// ----------------------------------------------------------------------------------------

#[test]
fn trace_directory_capture_inspected() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = start_traced(&origin, dir.path(), &[]);

    let mut sessions = Vec::new();
    // Keep-alive GETs and POSTs on three connections.
    for i in 0..3 {
        sessions.push(simple_session(p.addr, &format!("t{i}")));
    }
    // Pipelined GETs in one write.
    let mut c = Client::connect(p.addr);
    let reqs: Vec<Vec<u8>> = (0..3).map(|i| get(&format!("/small?pipe={i}"))).collect();
    c.send(&reqs.concat());
    for r in c.read_n(3) {
        assert_eq!(r.status, 200);
    }
    finish(&mut c);
    sessions.push((c, reqs));
    // A chunked PUT sent in pieces.
    let mut c = Client::connect(p.addr);
    let head =
        b"PUT /echo?s=chunked HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    let pieces: [&[u8]; 4] = [head, b"5\r\nhello\r\n", b"6\r\n world\r\n", b"0\r\n\r\n"];
    c.send_chunks(&pieces, Duration::ZERO);
    let r = c.read_response(false);
    assert_eq!(r.body, b"hello world");
    finish(&mut c);
    sessions.push((c, vec![pieces.concat()]));

    p.stop_ok(EXIT_TIMEOUT);
    let requests: usize = sessions.iter().map(|(_, r)| r.len()).sum();
    assert_eq!(origin.request_count(), requests);
    assert_sessions_captured(&Trace::load(dir.path()), &sessions);

    let s = inspect_dir_ok(dir.path());
    assert_eq!(s["connections"], sessions.len() as u64, "{s}");
    assert_eq!(s["completeConnections"], sessions.len() as u64, "{s}");
    assert_eq!(s["requests"], requests as u64, "{s}");
    let sent: usize = sessions.iter().map(|(c, _)| c.sent.len()).sum();
    let received: usize = sessions.iter().map(|(c, _)| c.received.len()).sum();
    assert_eq!(s["readsBytes"], sent as u64, "{s}");
    assert_eq!(s["writesBytes"], received as u64, "{s}");

    // The text form too.
    let out = run(&["inspect", "--traceDirectory", dir.path().to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout).lines().last(), Some("OK"));

    // A trace with one record deleted (a gap in a connection's numbering) fails inspect.
    let gap = tempfile::tempdir().unwrap();
    let files = common::trace_files(dir.path());
    let mut deleted = false;
    for f in &files {
        let body = std::fs::read_to_string(f).unwrap();
        let mut kept = String::new();
        for line in body.lines() {
            let non_final = !deleted && {
                let v = base64::engine::general_purpose::STANDARD
                    .decode(line)
                    .unwrap();
                matches!(
                    common::decode(&v).index,
                    Some(capture_proxy::capture::proto::traffic_stream::Index::Number(_))
                )
            };
            if non_final {
                deleted = true;
                continue;
            }
            kept.push_str(line);
            kept.push('\n');
        }
        std::fs::write(gap.path().join(f.file_name().unwrap()), kept).unwrap();
    }
    assert!(deleted, "the POSTs make non-final records");
    let (out, summary) = inspect_summary(&["--traceDirectory", gap.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    let s = summary.expect("summary printed for a failed check");
    assert_eq!(s["ok"], false, "{s}");
    assert!(s["errors"].as_u64().unwrap() >= 1, "{s}");
    let out = run(&["inspect", "--traceDirectory", gap.path().to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stdout).contains("FAILED"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn io_driver_legacy() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = start_traced(&origin, dir.path(), &["--io-driver", "legacy"]);
    assert_eq!(p.io, "epoll", "listening line: {}", p.stderr());
    let sessions = vec![
        simple_session(p.addr, "legacy-1"),
        simple_session(p.addr, "legacy-2"),
    ];
    p.stop_ok(EXIT_TIMEOUT);
    assert_sessions_captured(&Trace::load(dir.path()), &sessions);
    let s = inspect_dir_ok(dir.path());
    assert_eq!(s["connections"], 2, "{s}");
    assert_eq!(s["requests"], 4, "{s}");
}

// ----------------------------------------------------------------------------------------
// SIGTERM under load
// ----------------------------------------------------------------------------------------

/// Client threads looping requests while the proxy is told to stop.
const LOAD_THREADS: usize = 4;
/// Requests the origin must have served before SIGTERM: enough that the signal lands in
/// the middle of steady traffic on every connection.
const LOAD_REQUESTS_BEFORE_SIGNAL: usize = 1000;
/// Requests per client connection before it reconnects (so connections also open and close
/// around the signal).
const LOAD_REQUESTS_PER_CONN: usize = 25;

/// One client connection of the load test.
struct LoadConn {
    /// `t<thread>c<conn>`: in every request target, to match the capture.
    tag: String,
    /// Each request that got a complete response, and that response's bytes.
    answered: Vec<(Vec<u8>, Vec<u8>)>,
    client: Option<Client>,
}

/// How one exchange ended.
enum Exchange {
    Answered(Response),
    /// The proxy closed the connection before any byte of this response: a close between
    /// requests, expected once draining started.
    ClosedBetween,
    /// Anything else (partial response, timeout, garbage): a client error.
    Failed(String),
}

fn exchange(c: &mut Client, req: &[u8]) -> Exchange {
    let closed = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        )
    };
    if let Err(e) = c.try_send(req) {
        return if closed(&e) {
            Exchange::ClosedBetween
        } else {
            Exchange::Failed(format!("write: {e}"))
        };
    }
    let before = c.received.len();
    match c.try_read_response(false) {
        Ok(r) if r.status == 200 => Exchange::Answered(r),
        Ok(r) => Exchange::Failed(format!("status {}", r.status)),
        Err(e) if closed(&e) && c.received.len() == before => Exchange::ClosedBetween,
        Err(e) => Exchange::Failed(format!(
            "read after {} response bytes: {e}",
            c.received.len() - before
        )),
    }
}

/// One load thread: keep-alive connections of `LOAD_REQUESTS_PER_CONN` GET/POST requests
/// until a connection is closed after `signalled`. Returns its connections and its errors.
fn load_thread(
    t: usize,
    addr: SocketAddr,
    signalled: Arc<AtomicBool>,
    answered_total: Arc<AtomicUsize>,
) -> (Vec<LoadConn>, Vec<String>) {
    let mut conns = Vec::new();
    let mut errors = Vec::new();
    for ci in 0.. {
        if signalled.load(Ordering::Acquire) {
            break;
        }
        // Connecting may race the proxy closing its listener after the signal.
        let Ok(client) = catch_unwind(AssertUnwindSafe(|| Client::connect(addr))) else {
            if !signalled.load(Ordering::Acquire) {
                errors.push(format!("t{t}c{ci}: connect failed before the signal"));
            }
            break;
        };
        let mut lc = LoadConn {
            tag: format!("t{t}c{ci}"),
            answered: Vec::new(),
            client: Some(client),
        };
        let c = lc.client.as_mut().unwrap();
        let mut closed = false;
        for i in 0..LOAD_REQUESTS_PER_CONN {
            let tag = &lc.tag;
            let req = if i % 3 == 2 {
                with_body(
                    "POST",
                    &format!("/echo?c={tag}&i={i}"),
                    format!("{{\"doc\":{i},\"conn\":\"{tag}\"}}").as_bytes(),
                )
            } else {
                get(&format!("/small?c={tag}&i={i}"))
            };
            let started_before_signal = !signalled.load(Ordering::Acquire);
            match exchange(c, &req) {
                Exchange::Answered(r) => {
                    lc.answered.push((req, r.raw));
                    answered_total.fetch_add(1, Ordering::AcqRel);
                }
                Exchange::ClosedBetween => {
                    if !signalled.load(Ordering::Acquire) {
                        errors.push(format!("{tag} request {i}: closed before the signal"));
                    }
                    closed = true;
                    break;
                }
                Exchange::Failed(e) => {
                    errors.push(format!(
                        "{tag} request {i} (started {} the signal): {e}",
                        if started_before_signal {
                            "before"
                        } else {
                            "after"
                        }
                    ));
                    closed = true;
                    break;
                }
            }
        }
        if !closed {
            // Close cleanly; the proxy answers the FIN with its own (or is already gone).
            c.shutdown_write();
            let _ = c.read_to_eof();
        }
        conns.push(lc);
        if closed {
            break;
        }
    }
    (conns, errors)
}

#[test]
fn sigterm_under_load_loses_no_answered_request() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut p = start_traced(&origin, dir.path(), &[]);
    let signalled = Arc::new(AtomicBool::new(false));
    let answered_total = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..LOAD_THREADS)
        .map(|t| {
            let (s, a, addr) = (signalled.clone(), answered_total.clone(), p.addr);
            thread::spawn(move || load_thread(t, addr, s, a))
        })
        .collect();
    assert!(
        origin.wait_requests(LOAD_REQUESTS_BEFORE_SIGNAL, Duration::from_secs(60)),
        "load did not reach {LOAD_REQUESTS_BEFORE_SIGNAL} requests: {}",
        origin.request_count()
    );
    signalled.store(true, Ordering::Release);
    p.sigterm();
    let st = p.wait_exit(EXIT_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", p.stderr());

    let mut conns = Vec::new();
    let mut errors = Vec::new();
    for t in threads {
        let (c, e) = t.join().expect("load thread");
        conns.extend(c);
        errors.extend(e);
    }
    assert!(errors.is_empty(), "client errors: {errors:#?}");
    let answered: usize = conns.iter().map(|c| c.answered.len()).sum();
    assert!(answered >= LOAD_REQUESTS_BEFORE_SIGNAL, "{answered}");
    assert!(origin.wait_requests(answered, FORWARD_WAIT));

    // Every answered request is in the capture, with its response, on its connection.
    let trace = Trace::load(dir.path());
    let captured = trace.connections();
    let tag_of = |ct: &ConnTrace| -> Option<String> {
        let reads = ct.reads();
        let line = reads.split(|b| *b == b'\n').next()?;
        let s = String::from_utf8_lossy(line);
        let c = s.split("c=").nth(1)?;
        Some(c.split('&').next()?.to_string())
    };
    let mut matched = 0;
    for lc in &conns {
        let Some(ct) = captured
            .iter()
            .find(|ct| tag_of(ct).as_deref() == Some(lc.tag.as_str()))
        else {
            assert!(
                lc.answered.is_empty(),
                "connection {} ({} answered requests) missing from the capture",
                lc.tag,
                lc.answered.len()
            );
            continue;
        };
        matched += 1;
        ct.check();
        let n = lc.answered.len();
        let reqs = ct.request_reads();
        let resps = ct.response_writes();
        assert!(
            reqs.len() >= n,
            "{}: {} markers for {n} answered requests\n{}",
            lc.tag,
            reqs.len(),
            ct.dump()
        );
        for (i, (req, resp)) in lc.answered.iter().enumerate() {
            assert_bytes_eq(&format!("{} request {i}", lc.tag), &reqs[i], req);
            assert_bytes_eq(&format!("{} response {i}", lc.tag), &resps[i], resp);
        }
        let client = lc.client.as_ref().unwrap();
        assert!(
            client.sent.starts_with(&ct.reads()),
            "{}: captured reads are not what the client sent",
            lc.tag
        );
        assert!(
            ct.writes().starts_with(&client.received),
            "{}: the client received bytes the capture lacks",
            lc.tag
        );
    }
    // Captured connections without a request line: accepted, nothing read before the close.
    for ct in &captured {
        if tag_of(ct).is_none() {
            assert!(ct.reads().is_empty(), "unmatched connection\n{}", ct.dump());
        }
    }
    assert!(matched >= LOAD_THREADS);
    let closed_by_drain = conns
        .iter()
        .filter(|c| c.answered.len() < LOAD_REQUESTS_PER_CONN)
        .count();
    eprintln!(
        "load: {answered} answered requests on {} client connections ({closed_by_drain} cut \
         short by the drain), {} captured connections",
        conns.len(),
        captured.len()
    );
    let s = inspect_dir_ok(dir.path());
    assert_eq!(s["connections"], captured.len() as u64, "{s}");
    assert!(s["requests"].as_u64().unwrap() >= answered as u64, "{s}");
}
