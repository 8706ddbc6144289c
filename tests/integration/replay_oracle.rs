//! The real Traffic Replayer judges our capture. A source origin behind the proxy binary
//! (`--traceDirectory`, a short `--capture-flush-interval`), one client connection per
//! scenario (keep-alive GETs, `_bulk`, single-document PUT/POST/DELETE, a chunked body sent in
//! pieces, a body of several MiB, `Expect: 100-continue`, pipelined GETs, a connection idle
//! past the time-based flush); then the Replayer (`scripts/java-peers.sh`, one run for the
//! whole set) replays the capture against a second origin that keeps every byte it receives.
//! Per connection: the target received exactly the source's requests, in order, byte for
//! byte but for the Replayer's documented rewrites (`common::replayer`); the Replayer's tuples
//! pair every request with the response the client got; its log has no warning or error
//! beyond its start/stop notices. A second run on a deliberately corrupted copy of the
//! capture (an explicit `lastObservationWasUnterminatedRead = false`, a record missing from a
//! connection) shows the same comparisons fail.
//!
//! Skips only when the Java peers are not installed and `CAPTURE_PROXY_REQUIRE_JAVA_PEERS`
//! is unset (CI sets it).

use crate::common;

use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::capture::proto::TrafficStream;
use common::binary::{proxy_command, ProxyProcess, STARTUP_TIMEOUT};
use common::replayer::{
    capture_order_problems, check_target, check_tuples, format_problems, replayer_or_skip,
    ReplayInput, ReplayerRun, SourceConn, CONN_HEADER,
};
use common::{conn_sent_by, Client, ConnTrace, Origin, Response, Trace};

/// The proxy's time-based flush for this test (short, so the idle scenario crosses it).
const FLUSH_INTERVAL: &str = "500ms";
/// How long the idle scenario's connection stays idle between its requests.
const IDLE: Duration = Duration::from_millis(1500);
/// Size of the large request body (bytes): several records of the default 1 MiB.
const LARGE_BODY: usize = 3 * 1024 * 1024 + 12_345;
/// Replay pacing: the capture's gaps (the idle second and a half, the chunked body's pauses)
/// replayed ten times faster.
const SPEEDUP: f64 = 10.0;
/// Bound of one Replayer run (JVM start, replay, its orderly shutdown: ~5 s here).
const REPLAY_BOUND: Duration = Duration::from_secs(180);
/// Bound of the proxy's drain at SIGTERM.
const STOP_BOUND: Duration = Duration::from_secs(20);

/// A request of scenario connection `conn`, in the canonical header form.
fn request(
    conn: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: replay-oracle/1.0\r\n{CONN_HEADER}: {conn}\r\n"
    );
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if !chunked && (!body.is_empty() || method == "POST" || method == "PUT") {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut v = head.into_bytes();
    v.extend_from_slice(body);
    v
}

/// The final (non-1xx) response to the request just sent.
fn final_response(c: &mut Client) -> Response {
    loop {
        let r = c.read_response(false);
        if !(100..200).contains(&r.status) {
            return r;
        }
    }
}

/// One scenario connection being driven: its requests and final responses so far.
struct Scenario {
    name: String,
    client: Client,
    requests: Vec<Vec<u8>>,
    responses: Vec<Response>,
}

impl Scenario {
    fn new(name: &str, proxy: &ProxyProcess) -> Scenario {
        Scenario {
            name: name.into(),
            client: Client::connect(proxy.addr),
            requests: Vec::new(),
            responses: Vec::new(),
        }
    }

    /// Sends `req` in one write and reads its final response.
    fn exchange(&mut self, req: Vec<u8>) {
        self.client.send(&req);
        let r = final_response(&mut self.client);
        self.requests.push(req);
        self.responses.push(r);
    }

    fn req(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        request(&self.name, method, target, headers, body)
    }

    /// Closes the client side and waits for the proxy to close too.
    fn finish(mut self) -> Done {
        self.client.shutdown_write();
        assert!(
            self.client.closed_by_peer(),
            "{}: proxy did not close",
            self.name
        );
        (self.name, self.client, self.requests, self.responses)
    }
}

/// A finished scenario connection: its name, client, requests and final responses.
type Done = (String, Client, Vec<Vec<u8>>, Vec<Response>);

/// An NDJSON `_bulk` body of `n` index actions.
fn bulk_body(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"index\":{{\"_index\":\"logs\",\"_id\":\"{i}\"}}}}\n"
        ));
        s.push_str(&format!(
            "{{\"@timestamp\":\"2026-12-07T00:00:{:02}Z\",\"message\":\"event {i}\",\"level\":\"info\"}}\n",
            i % 60
        ));
    }
    s.into_bytes()
}

/// A JSON document of about `n` bytes.
fn big_document(n: usize) -> Vec<u8> {
    let mut v = b"{\"blob\":\"".to_vec();
    let fill = n.saturating_sub(v.len() + 2);
    v.extend((0..fill).map(|i| b'a' + (i % 26) as u8));
    v.extend_from_slice(b"\"}");
    v
}

/// Drives every scenario through the proxy; returns the clients' view of each connection.
fn run_scenarios(proxy: &ProxyProcess) -> Vec<Done> {
    let mut done = Vec::new();

    // Keep-alive GETs: a small JSON answer, a 3000-byte answer, a chunked answer.
    let mut s = Scenario::new("keepalive-gets", proxy);
    for t in ["/small?i=1", "/large?bytes=3000", "/chunked"] {
        let r = s.req("GET", t, &[("Accept", "*/*")], b"");
        s.exchange(r);
    }
    done.push(s.finish());

    // _bulk with an NDJSON body.
    let mut s = Scenario::new("bulk", proxy);
    let r = s.req(
        "POST",
        "/logs/_bulk",
        &[("Content-Type", "application/x-ndjson")],
        &bulk_body(50),
    );
    s.exchange(r);
    done.push(s.finish());

    // Single documents: PUT, POST (to the echoing route: a 200 with a body), DELETE.
    let mut s = Scenario::new("documents", proxy);
    let doc = br#"{"user":"kimchy","message":"trying out the replayer","n":1}"#;
    let r = s.req(
        "PUT",
        "/logs/_doc/1",
        &[("Content-Type", "application/json")],
        doc,
    );
    s.exchange(r);
    let r = s.req(
        "POST",
        "/echo?index=logs",
        &[("Content-Type", "application/json")],
        doc,
    );
    s.exchange(r);
    let r = s.req("DELETE", "/logs/_doc/1", &[], b"");
    s.exchange(r);
    done.push(s.finish());

    // A chunked request body sent in three writes (head + first chunk, a middle chunk, the
    // last chunk), pausing so the proxy reads each separately.
    let mut s = Scenario::new("chunked", proxy);
    let head = s.req(
        "PUT",
        "/logs/_bulk",
        &[
            ("Content-Type", "application/x-ndjson"),
            ("Transfer-Encoding", "chunked"),
        ],
        b"",
    );
    let body = bulk_body(4);
    let (a, b) = body.split_at(body.len() / 2);
    let mut first = head.clone();
    first.extend_from_slice(format!("{:x}\r\n", a.len()).as_bytes());
    first.extend_from_slice(a);
    first.extend_from_slice(b"\r\n");
    let mut middle = format!("{:x};ext=1\r\n", b.len()).into_bytes();
    middle.extend_from_slice(b);
    middle.extend_from_slice(b"\r\n");
    let last = b"0\r\n\r\n".to_vec();
    s.client
        .send_chunks(&[&first, &middle, &last], Duration::from_millis(50));
    s.requests.push([first, middle, last].concat());
    let r = final_response(&mut s.client);
    s.responses.push(r);
    done.push(s.finish());

    // A body of several MiB: split across records (readSegment runs).
    let mut s = Scenario::new("large-body", proxy);
    let r = s.req(
        "POST",
        "/logs/_doc/big",
        &[("Content-Type", "application/json")],
        &big_document(LARGE_BODY),
    );
    s.exchange(r);
    done.push(s.finish());

    // Expect: 100-continue: the head, the interim 100, then the body.
    let mut s = Scenario::new("expect-continue", proxy);
    let full = s.req(
        "POST",
        "/echo?expect=1",
        &[
            ("Content-Type", "application/json"),
            ("Expect", "100-continue"),
        ],
        doc,
    );
    let head_len = full.len() - doc.len();
    s.client.send(&full[..head_len]);
    let interim = s.client.read_response(false);
    assert_eq!(interim.status, 100, "expect-continue: no interim 100");
    s.client.send(doc);
    let r = final_response(&mut s.client);
    s.requests.push(full);
    s.responses.push(r);
    done.push(s.finish());

    // Expect: 100-continue with the body sent at once (without waiting for the 100; clients
    // such as curl do after a timeout): the origin still answers 100, then 200.
    let mut s = Scenario::new("expect-continue-eager", proxy);
    let r = s.req(
        "POST",
        "/echo?expect=2",
        &[
            ("Content-Type", "application/json"),
            ("Expect", "100-continue"),
        ],
        doc,
    );
    s.exchange(r);
    done.push(s.finish());

    // Pipelined GETs: three requests in one write, then the three answers.
    let mut s = Scenario::new("pipelined", proxy);
    let reqs: Vec<Vec<u8>> = (1..=3)
        .map(|i| s.req("GET", &format!("/small?p={i}"), &[], b""))
        .collect();
    s.client.send(&reqs.concat());
    for r in reqs {
        let resp = final_response(&mut s.client);
        s.requests.push(r);
        s.responses.push(resp);
    }
    done.push(s.finish());

    // Idle past the time-based flush between two GETs (the first exchange is flushed as a
    // non-final record while the connection stays open).
    let mut s = Scenario::new("idle-flush", proxy);
    let r = s.req("GET", "/small?idle=1", &[], b"");
    s.exchange(r);
    thread::sleep(IDLE);
    let r = s.req("GET", "/small?idle=2", &[], b"");
    s.exchange(r);
    done.push(s.finish());

    done
}

/// The capture of each scenario connection, checked against the wire contract.
fn source_conns(trace: &Trace, done: Vec<Done>) -> (Vec<SourceConn>, Vec<ConnTrace>) {
    let conns = trace.connections();
    let mut out = Vec::new();
    let mut traces = Vec::new();
    for (name, client, requests, responses) in done {
        let ct = conn_sent_by(&conns, &client).clone();
        ct.check();
        traces.push(ct.clone());
        out.push(SourceConn {
            name,
            requests,
            responses,
            conn_id: ct.id.clone(),
        });
    }
    (out, traces)
}

/// A deviation the Replayer (3.3.5) shows on a scenario whatever proxy captured it, found
/// by this test and pinned: every `required` problem must be observed (as a substring of an
/// observed problem), and every observed problem must match `required` or `allowed`. The
/// target must still have received the scenario's requests byte for byte, and the capture
/// must still be in order. If the Replayer changes, the test fails and the pin is revisited.
struct KnownLimit {
    conn: &'static str,
    /// Substrings of tuple problems ([`check_tuples`]) and of WARN/ERROR log entries naming
    /// this connection that must appear.
    required: &'static [&'static str],
    /// Substrings of problems that may appear (they depend on how the capture cut the
    /// exchange, e.g. on TCP read boundaries).
    allowed: &'static [&'static str],
}

/// The Replayer's model is one response after each request. (1) It cannot parse two HTTP
/// messages in one response (an interim `100 Continue` and the final answer, or the answers
/// to pipelined requests, which all follow the last request's marker): the tuple gets a
/// `NullPointerException` ("accumulatedBody is null") instead of the response. This hits
/// the target's answer to every `Expect: 100-continue` request (or, depending on how the
/// target's bytes arrive, it takes the interim 100 for the whole answer), and the source's
/// answer when the 100 was captured after the request's end. (2) A write between a request's reads
/// (the 100 sent while the client waits for it) is logged as "unaccounted for observation
/// type" and ignored. (3) Pipelined requests: the first ones get no source response, the last
/// one all of them. (4) After (1), when the Replayer closes such a connection its target
/// session may still hold scheduled work for it, which it logs as "Work items are still
/// remaining ... won't be run" — timing-dependent (first seen in CI on the eager scenario,
/// 1 run in many), so allowed, never required, on both expect-continue scenarios; the target
/// must still have received the request byte for byte. Evidence: issue 12 notes.
const KNOWN_LIMITS: &[KnownLimit] = &[
    KnownLimit {
        conn: "expect-continue",
        required: &[
            "request 0 (POST /echo?expect=1): target answered ",
            "unaccounted for observation type",
        ],
        allowed: &[SESSION_WORK_DROPPED],
    },
    KnownLimit {
        conn: "expect-continue-eager",
        required: &["request 0 (POST /echo?expect=2): target answered "],
        allowed: &[
            "request 0 (POST /echo?expect=2): sourceResponse status null",
            "unaccounted for observation type",
            SESSION_WORK_DROPPED,
        ],
    },
    KnownLimit {
        conn: "pipelined",
        required: &[
            "request 0 (GET /small?p=1): sourceResponse status null",
            "request 1 (GET /small?p=2): sourceResponse status null",
            "request 2 (GET /small?p=3): sourceResponse status null",
        ],
        allowed: &[],
    },
];

/// The Replayer's warning when it closes a target connection that still has scheduled work
/// (see (4) on [`KNOWN_LIMITS`]).
const SESSION_WORK_DROPPED: &str = "Work items are still remaining for this connection session";

/// Compares observed problems with a [`KnownLimit`]. Returns the mismatches.
fn unpinned(observed: &[String], k: &KnownLimit) -> Vec<String> {
    let mut out: Vec<String> = observed
        .iter()
        .filter(|o| !k.required.iter().chain(k.allowed).any(|p| o.contains(p)))
        .map(|o| format!("unexpected: {o}"))
        .collect();
    out.extend(
        k.required
            .iter()
            .filter(|p| !observed.iter().any(|o| o.contains(*p)))
            .map(|p| format!("pinned but not observed (did the Replayer change?): {p}")),
    );
    out
}

/// Whether the run is faithful: exit 0; every connection captured in order; the target
/// received every connection's requests byte for byte (rewrites aside); tuples and log clean,
/// except the [`KNOWN_LIMITS`] deviations, which must be exactly as pinned. Returns the
/// failures (empty when faithful).
fn replay_failures(
    run: &ReplayerRun,
    conns: &[SourceConn],
    traces: &[ConnTrace],
    target: &Origin,
) -> Vec<String> {
    let mut failures = Vec::new();
    let mut order = std::collections::BTreeMap::new();
    for (c, t) in conns.iter().zip(traces) {
        let p = capture_order_problems(t);
        if !p.is_empty() {
            order.insert(c.name.clone(), p);
            failures.push(format!("{}: capture:{}", c.name, t.dump()));
        }
    }
    if !order.is_empty() {
        failures.insert(0, format_problems("capture order", &order));
    }
    if !run.status.success() {
        failures.push(format!("the Replayer exited with {:?}", run.status.code()));
    }
    let target_problems = check_target(conns, &target.received());
    if !target_problems.is_empty() {
        failures.push(format_problems("target bytes", &target_problems));
    }
    let mut log = run.problems_in_log();
    let mut tuple_problems = check_tuples(run, conns);
    for k in KNOWN_LIMITS {
        let c = conns
            .iter()
            .find(|c| c.name == k.conn)
            .expect("known-limit scenario ran");
        let tp = tuple_problems.remove(k.conn).unwrap_or_default();
        let (mine, rest): (Vec<String>, Vec<String>) =
            log.into_iter().partition(|l| l.contains(&c.conn_id));
        log = rest;
        let observed: Vec<String> = tp.iter().chain(&mine).cloned().collect();
        let bad = unpinned(&observed, k);
        if bad.is_empty() {
            eprintln!(
                "replay_oracle: known Replayer limit on {} (pinned):\n  {}",
                k.conn,
                tp.iter()
                    .chain(&mine)
                    .map(|l| l.lines().next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("\n  ")
            );
        } else {
            failures.push(format!(
                "{}: the known Replayer limit is not as pinned:\n  {}",
                k.conn,
                bad.join("\n  ")
            ));
        }
    }
    if !log.is_empty() {
        failures.push(format!(
            "the Replayer logged warnings/errors:\n{}",
            log.join("\n")
        ));
    }
    if !tuple_problems.is_empty() {
        failures.push(format_problems("replayer tuples", &tuple_problems));
    }
    if !failures.is_empty() {
        failures.push(run.summary());
    }
    failures
}

#[test]
fn real_replayer_replays_our_capture() {
    let Some(replayer) = replayer_or_skip("real_replayer_replays_our_capture") else {
        return;
    };
    let t0 = Instant::now();
    let source = Origin::start();
    // CAPTURE_PROXY_KEEP_REPLAY=1 keeps the capture, the Replayer's input, log and tuples.
    let dir = tempfile::Builder::new()
        .prefix("replay-oracle-")
        .disable_cleanup(std::env::var_os("CAPTURE_PROXY_KEEP_REPLAY").is_some())
        .tempdir()
        .expect("tempdir");
    eprintln!("replay_oracle: files in {}", dir.path().display());
    let trace_dir = dir.path().join("trace");
    std::fs::create_dir(&trace_dir).unwrap();
    let mut cmd = proxy_command();
    cmd.args([
        "--destinationUri",
        &format!("http://{}", source.addr()),
        "--listenPort",
        "0",
        "--listen-address",
        "127.0.0.1",
        "--admin-listen",
        "off",
        "--traceDirectory",
        trace_dir.to_str().unwrap(),
        "--capture-flush-interval",
        FLUSH_INTERVAL,
    ]);
    let mut proxy = ProxyProcess::start(cmd, STARTUP_TIMEOUT);
    let done = run_scenarios(&proxy);
    proxy.stop_ok(STOP_BOUND);
    let capture_time = t0.elapsed();

    let trace = Trace::load(&trace_dir);
    let (conns, traces) = source_conns(&trace, done);
    // The capture has the shapes the scenarios are for.
    let by_name = |n: &str| &traces[conns.iter().position(|c| c.name == n).unwrap()];
    assert!(
        by_name("idle-flush").records.len() >= 2,
        "idle-flush: the time-based flush did not cut a record:{}",
        by_name("idle-flush").dump()
    );
    assert!(
        by_name("large-body").count("readSegment") > 0,
        "large-body: no segments:{}",
        by_name("large-body").dump()
    );
    assert!(
        by_name("expect-continue").count("write") >= 2,
        "expect-continue: interim response not captured:{}",
        by_name("expect-continue").dump()
    );

    // One Replayer run for the whole set.
    let target = Origin::start();
    let input = ReplayInput::from_trace_dir(&trace_dir, &dir.path().join("input.txt"));
    let run = replayer.run(
        &input,
        target.addr(),
        SPEEDUP,
        &[],
        &dir.path().join("replay"),
        REPLAY_BOUND,
    );
    // Judged at the end, after the corrupted run (so one run reports everything).
    let failures = replay_failures(&run, &conns, &traces, &target);

    // The oracle can fail: a corrupted copy of two connections, replayed against a fresh
    // target, must be noticed by the same comparisons.
    let keepalive = &conns[0];
    let idle = conns.iter().find(|c| c.name == "idle-flush").unwrap();
    let mut corrupted: Vec<TrafficStream> = Vec::new();
    // (1) An explicit `lastObservationWasUnterminatedRead = false` (field 7 present) on the
    // keep-alive connection's first record: the consumer tests presence.
    for (i, r) in by_name("keepalive-gets").records.iter().enumerate() {
        let mut r = r.clone();
        if i == 0 {
            r.last_observation_was_unterminated_read = Some(false);
        }
        corrupted.push(r);
    }
    // (2) A gap: the idle connection's first record (its first exchange) is missing.
    let idle_trace = by_name("idle-flush");
    assert!(idle_trace.records.len() >= 2, "{}", idle_trace.dump());
    corrupted.extend(idle_trace.records.iter().skip(1).cloned());
    let bad_target = Origin::start();
    let bad_input = ReplayInput::from_records(&corrupted, &dir.path().join("corrupted.txt"));
    let bad = replayer.run(
        &bad_input,
        bad_target.addr(),
        SPEEDUP,
        // A request cut short by a gap would leave the target waiting for the rest of its
        // body: the Replayer gives up on it after this many seconds (default 150).
        &["--target-response-timeout", "2"],
        &dir.path().join("replay-corrupted"),
        REPLAY_BOUND,
    );
    let judged = [
        (keepalive, "explicit field 7 = false"),
        (idle, "record 1 of the connection missing"),
    ];
    let mut unnoticed = Vec::new();
    let both = [judged[0].0.clone(), judged[1].0.clone()];
    let target_all = check_target(&both, &bad_target.received());
    for (conn, what) in judged {
        let pick = |m: &std::collections::BTreeMap<String, Vec<String>>| {
            m.iter()
                .filter(|(n, _)| **n == conn.name)
                .map(|(n, p)| (n.clone(), p.clone()))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        let t = pick(&target_all);
        let u = check_tuples(&bad, std::slice::from_ref(conn));
        if t.is_empty() && u.is_empty() {
            unnoticed.push(format!("{what} on {}", conn.name));
        } else {
            eprintln!(
                "replay_oracle: corrupted capture ({what}) noticed:\n{}\n{}",
                format_problems("target bytes", &t),
                format_problems("replayer tuples", &u)
            );
        }
    }
    eprintln!(
        "replay_oracle: total {:.1?} (capture {capture_time:.1?}, replay {:.1?}, corrupted replay {:.1?})",
        t0.elapsed(),
        run.elapsed,
        bad.elapsed
    );
    assert!(
        failures.is_empty(),
        "the Replayer did not replay our capture faithfully:\n{}",
        failures.join("\n\n")
    );
    assert!(
        unnoticed.is_empty(),
        "the oracle did not notice a corrupted capture: {}\n{}",
        unnoticed.join("; "),
        bad.summary()
    );
}
