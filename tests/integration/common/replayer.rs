//! The real Traffic Replayer (OpenSearch Migration Assistant) as a test oracle: started
//! through `scripts/java-peers.sh`, fed a capture, replaying it against a recording target
//! ([`super::Origin`], which keeps every byte per connection), with its own tuple output and
//! log read back; plus the comparisons the oracle makes (target bytes, tuples, log).
//!
//! May depend on: the parent harness (`Origin`, `Response`, `Trace`, `decode`), base64, prost,
//! serde_json, libc (kill), std. The Replayer runs as a child process (Java); nothing of it is
//! linked.
//!
//! Invariant: every Replayer run is bounded ([`Replayer::run`]'s bound: killed and a panic
//! past it); its logs and tuples go to a per-run directory given through our own log4j2
//! configuration ([`LOG4J2_CONFIG`]), never to the repository.
//!
//! What the Replayer does to a request before sending it (TrafficReplayer 3.3.5, read from
//! its source; these are the only differences [`expected_target_bytes`] allows):
//! - `Host`: its value is replaced by the target URI's host, without the port
//!   (`TransformationLoader.HostTransformer`, always installed with `--target-uri`). Only an
//!   existing Host header is replaced; none is added.
//! - Because a header changed, the request head is re-serialized from its parsed form
//!   (`NettyJsonToByteBufHandler`): `METHOD SP target SP version CRLF`, then each header as
//!   `Name: value CRLF` in the original order and letter case (values as Netty's decoder
//!   trimmed them; repeated names grouped at their first occurrence), then CRLF. The body is
//!   sent as the original bytes (chunked framing included).
//! - Other rewrites happen only when asked for: auth (`--auth-header-value`,
//!   `--remove-auth-header`, `--sigv4-auth-header-service-region`, basic auth), `--user-agent`
//!   (appended to User-Agent), `--transformer-config`. The tests use none of them.
//! - A target answer worse than the source's (status ≥ 300 where the source had < 300, no
//!   answer, or a `_bulk` 429/5xx or retryable item error) is retried, up to 4 more times:
//!   retries would show as repeated requests on the target.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use capture_proxy::capture::proto::TrafficStream;
use serde_json::Value;

use super::{kind, read_trace_values, ConnTrace, Response};

/// Set (to anything) in CI: a missing Replayer fails the test instead of skipping it.
pub const REQUIRE_ENV: &str = "CAPTURE_PROXY_REQUIRE_JAVA_PEERS";

/// Host the Replayer writes into `Host` headers for a `--target-uri http://127.0.0.1:PORT`.
pub const TARGET_HOST: &str = "127.0.0.1";

/// Most time `scripts/java-peers.sh resolve` may take when CI requires the peers.
const RESOLVE_BOUND: Duration = Duration::from_secs(600);

/// Our log4j2 configuration for the Replayer: its whole log to `replayer.log`, the tuple
/// logger (`OutputTupleJsonLogger`, one JSON object per replayed request) to `tuples.log`,
/// both in the directory named by the `replayer.logDir` system property.
pub const LOG4J2_CONFIG: &str = "\
# capture-proxy tests: the Replayer's log and its tuples in one directory per run.
status = warn
appender.main.type = File
appender.main.name = MAIN
appender.main.fileName = ${sys:replayer.logDir}/replayer.log
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = [%-5level] %d{ISO8601}{UTC} [%t] %c{1} - %msg%n%throwable
appender.tuples.type = File
appender.tuples.name = TUPLES
appender.tuples.fileName = ${sys:replayer.logDir}/tuples.log
appender.tuples.layout.type = PatternLayout
appender.tuples.layout.pattern = %m%n
rootLogger.level = info
rootLogger.appenderRef.main.ref = MAIN
logger.tuples.name = OutputTupleJsonLogger
logger.tuples.level = info
logger.tuples.additivity = false
logger.tuples.appenderRef.t.ref = TUPLES
logger.kafka.name = org.apache.kafka
logger.kafka.level = warn
";

/// WARN/ERROR lines every Replayer run logs whatever it is fed (matched as substrings).
const BENIGN_WARNINGS: &[&str] = &[
    // No OpenTelemetry collector configured.
    "Collector endpoints are not configured",
    // End of a file input.
    "Got an EOF on the stream.  Done reading traffic streams.",
    // Its orderly shutdown after the input ended.
    "TrafficReplayerTopLevel - Shutting down",
    "Shutdown setup has been initiated",
    "Running TrafficReplayer Shutdown.",
    "Done shutting down TrafficReplayer",
    // Its JVM shutdown hook, run after the replay already shut it down.
    "Shutdown was already signaled by null.  Ignoring this shutdown request due to null.",
];

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/java-peers.sh")
}

fn script_command(args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(script()).args(args).stdin(Stdio::null());
    c
}

/// Whether `scripts/java-peers.sh available` says the Replayer and a JDK are there.
fn available() -> bool {
    script_command(&["available"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Replayer, or `None` (after saying so) when it is not installed and [`REQUIRE_ENV`] is
/// unset. With [`REQUIRE_ENV`] set, a missing Replayer is resolved once
/// (`scripts/java-peers.sh resolve`) and the test fails if that does not bring it.
pub fn replayer_or_skip(test: &str) -> Option<Replayer> {
    if available() {
        return Some(Replayer);
    }
    if std::env::var_os(REQUIRE_ENV).is_none() {
        eprintln!(
            "{test}: SKIPPED: the Java Traffic Replayer is not installed \
             (scripts/java-peers.sh resolve, or build-from-source); set {REQUIRE_ENV}=1 to require it"
        );
        return None;
    }
    let out = run_bounded(
        script_command(&["resolve"]),
        RESOLVE_BOUND,
        "java-peers.sh resolve",
    );
    if available() {
        return Some(Replayer);
    }
    panic!(
        "{REQUIRE_ENV} is set but the Java Traffic Replayer is not available; \
         scripts/java-peers.sh resolve said (exit {:?}):\n{}{}",
        out.0.code(),
        out.1,
        out.2
    );
}

/// Runs `cmd` to completion within `bound` (killed and a panic past it): (status, stdout,
/// stderr).
fn run_bounded(mut cmd: Command, bound: Duration, what: &str) -> (ExitStatus, String, String) {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => {
            let out = out.unwrap_or_else(|e| panic!("wait for {what}: {e}"));
            (
                out.status,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
        Err(_) => {
            // SAFETY: kill(2) of our own child (not yet reaped: the waiting thread still
            // waits for it). `java-peers.sh replayer` execs java, so this is the JVM itself.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{what} did not finish within {bound:?}");
        }
    }
}

/// What the Replayer reads. Today a file of base64 `TrafficStream` lines (its `--input`);
/// a Kafka topic (`--kafkaTrafficBrokers/--kafkaTrafficTopic/--kafkaTrafficGroupId`) is the
/// other source it has, to be added here when the Kafka capture tests need it.
pub enum ReplayInput {
    /// One base64 `TrafficStream` per line, as our trace files hold them.
    File(PathBuf),
}

impl ReplayInput {
    fn args(&self) -> Vec<String> {
        match self {
            ReplayInput::File(p) => vec!["--input".into(), p.display().to_string()],
        }
    }

    /// Every record of the trace directory `dir`, in file order, as one input file at `out`.
    pub fn from_trace_dir(dir: &Path, out: &Path) -> ReplayInput {
        ReplayInput::from_values(&read_trace_values(dir, true), out)
    }

    /// Serialized records as an input file at `out` (e.g. a deliberately corrupted capture).
    pub fn from_values(values: &[Vec<u8>], out: &Path) -> ReplayInput {
        let mut f = std::fs::File::create(out).expect("create replayer input");
        for v in values {
            writeln!(f, "{}", base64::engine::general_purpose::STANDARD.encode(v))
                .expect("write replayer input");
        }
        ReplayInput::File(out.to_path_buf())
    }

    /// Records as an input file at `out`.
    pub fn from_records(records: &[TrafficStream], out: &Path) -> ReplayInput {
        let values: Vec<Vec<u8>> = records.iter().map(prost::Message::encode_to_vec).collect();
        ReplayInput::from_values(&values, out)
    }
}

/// The installed Replayer (see [`replayer_or_skip`]).
pub struct Replayer;

/// One finished Replayer run.
pub struct ReplayerRun {
    pub status: ExitStatus,
    /// Every line of its log (our log4j2 configuration: `[LEVEL] time [thread] logger - msg`).
    pub log: Vec<String>,
    /// Its stdout and stderr (JVM warnings, uncaught exceptions).
    pub stdout: String,
    pub stderr: String,
    /// Its tuple output: one JSON object per replayed request.
    pub tuples: Vec<Value>,
    pub elapsed: Duration,
    /// Where the log and tuples are (kept for failure messages until the run is dropped).
    pub dir: PathBuf,
}

impl Replayer {
    /// Replays `input` against `target` (`--target-uri http://TARGET`) with
    /// `--speedup-factor speedup` and `extra` flags; waits for the Replayer to exit by itself
    /// after the input ended (bounded by `bound`).
    pub fn run(
        &self,
        input: &ReplayInput,
        target: SocketAddr,
        speedup: f64,
        extra: &[&str],
        dir: &Path,
        bound: Duration,
    ) -> ReplayerRun {
        std::fs::create_dir_all(dir).expect("replayer dir");
        let config = dir.join("log4j2.properties");
        std::fs::write(&config, LOG4J2_CONFIG).expect("write log4j2 config");
        let mut args: Vec<String> = vec![
            "replayer".into(),
            "--target-uri".into(),
            format!("http://{target}"),
            "--speedup-factor".into(),
            speedup.to_string(),
        ];
        args.extend(input.args());
        args.extend(extra.iter().map(|a| a.to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = script_command(&arg_refs);
        cmd.current_dir(dir).env(
            "JAVA_PEERS_JVM_OPTS",
            format!(
                "-Dlog4j2.configurationFile={} -Dreplayer.logDir={}",
                config.display(),
                dir.display()
            ),
        );
        let t0 = Instant::now();
        let (status, stdout, stderr) = run_bounded(cmd, bound, "the Traffic Replayer");
        let elapsed = t0.elapsed();
        let read_lines = |name: &str| -> Vec<String> {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        let tuples = read_lines("tuples.log")
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("tuple line is not JSON ({e}): {l:.300}"))
            })
            .collect();
        ReplayerRun {
            status,
            log: read_lines("replayer.log"),
            stdout,
            stderr,
            tuples,
            elapsed,
            dir: dir.to_path_buf(),
        }
    }
}

impl ReplayerRun {
    /// WARN and ERROR lines of the log (with their continuation lines: stack traces) that are
    /// not in [`BENIGN_WARNINGS`], plus uncaught exceptions on stderr.
    pub fn problems_in_log(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut current: Option<String> = None;
        for l in &self.log {
            if l.starts_with('[') {
                if let Some(c) = current.take() {
                    out.push(c);
                }
                let level = l.get(1..6).unwrap_or("");
                if (level.starts_with("WARN") || level.starts_with("ERROR"))
                    && !BENIGN_WARNINGS.iter().any(|b| l.contains(b))
                {
                    current = Some(l.clone());
                }
            } else if let Some(c) = current.as_mut() {
                if c.lines().count() < 12 {
                    c.push('\n');
                    c.push_str(l);
                }
            }
        }
        if let Some(c) = current {
            out.push(c);
        }
        for l in self.stderr.lines() {
            // Its request feeder thread is interrupted at every shutdown.
            if l.starts_with("Exception in thread")
                && !l.contains("\"requestFeederThread\" java.lang.InterruptedException")
            {
                out.push(format!("stderr: {l}"));
            }
        }
        out
    }

    /// Tuples of source connection `conn_id`, by source request index (the `connectionId`
    /// field is `<connectionId>.<index>`).
    pub fn tuples_of(&self, conn_id: &str) -> BTreeMap<u64, Vec<&Value>> {
        let mut out: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
        for t in &self.tuples {
            let Some(id) = t["connectionId"].as_str() else {
                continue;
            };
            if let Some((c, idx)) = id.rsplit_once('.') {
                if c == conn_id {
                    if let Ok(i) = idx.parse() {
                        out.entry(i).or_default().push(t);
                    }
                }
            }
        }
        out
    }

    /// A summary for failure messages: exit status, time, tuple count, log problems, where.
    pub fn summary(&self) -> String {
        format!(
            "replayer exit {:?} after {:.1?}, {} tuples, files in {}; log problems:\n{}\nstderr tail:\n{}",
            self.status.code(),
            self.elapsed,
            self.tuples.len(),
            self.dir.display(),
            self.problems_in_log().join("\n"),
            self.stderr
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

// ----------------------------------------------------------------------------------------
// The oracle's comparisons
// ----------------------------------------------------------------------------------------

/// One client connection of a scenario as the source side saw it.
#[derive(Clone)]
pub struct SourceConn {
    /// Scenario name; also the value of the `X-Oracle-Conn` header of each of its requests,
    /// by which the target's connections are told apart.
    pub name: String,
    /// The requests in the order sent (bytes exactly as the client wrote them).
    pub requests: Vec<Vec<u8>>,
    /// The final (non-1xx) response the client got to each request.
    pub responses: Vec<Response>,
    /// Its connectionId in the capture.
    pub conn_id: String,
}

/// Header naming the scenario connection a request belongs to.
pub const CONN_HEADER: &str = "X-Oracle-Conn";

/// `request` as the Replayer should send it to a target at [`TARGET_HOST`]: the Host value
/// replaced; everything else byte for byte (the tests' requests are written in the canonical
/// `Name: value` form the Replayer re-serializes heads in, so a re-serialized head is
/// identical apart from Host).
pub fn expected_target_bytes(request: &[u8]) -> Vec<u8> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("request has a complete head")
        + 4;
    let head = std::str::from_utf8(&request[..head_end]).expect("ASCII head");
    let mut out = String::new();
    for line in head.split_inclusive("\r\n") {
        match line.split_once(':') {
            Some((name, _)) if name.eq_ignore_ascii_case("host") => {
                out.push_str(&format!("{name}: {TARGET_HOST}\r\n"))
            }
            _ => out.push_str(line),
        }
    }
    let mut v = out.into_bytes();
    v.extend_from_slice(&request[head_end..]);
    v
}

/// The scenario name of a target connection: the first `X-Oracle-Conn` header in its bytes.
fn target_conn_name(bytes: &[u8]) -> Option<String> {
    let needle = format!("{CONN_HEADER}: ");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?
        + needle.len();
    let end = bytes[at..].windows(2).position(|w| w == b"\r\n")? + at;
    Some(String::from_utf8_lossy(&bytes[at..end]).into_owned())
}

/// Per source connection: the target received, on exactly one connection, exactly the
/// connection's requests in order, each as [`expected_target_bytes`]. Returns the problems
/// (empty when it holds), keyed by connection name.
pub fn check_target(
    conns: &[SourceConn],
    target_received: &[Vec<u8>],
) -> BTreeMap<String, Vec<String>> {
    let mut by_name: BTreeMap<String, Vec<&Vec<u8>>> = BTreeMap::new();
    for bytes in target_received.iter().filter(|b| !b.is_empty()) {
        let name = target_conn_name(bytes).unwrap_or_else(|| "(unnamed)".into());
        by_name.entry(name).or_default().push(bytes);
    }
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in conns {
        let want: Vec<u8> = c
            .requests
            .iter()
            .flat_map(|r| expected_target_bytes(r))
            .collect();
        let got = by_name.remove(&c.name).unwrap_or_default();
        let p = problems.entry(c.name.clone()).or_default();
        match got.as_slice() {
            [] => p.push("the target received nothing for this connection".into()),
            [one] => {
                if one.as_slice() != want.as_slice() {
                    p.push(describe_difference(one, &want));
                }
            }
            many => p.push(format!(
                "the target received this connection's requests on {} connections ({} bytes in all, want {})",
                many.len(),
                many.iter().map(|b| b.len()).sum::<usize>(),
                want.len()
            )),
        }
    }
    for (name, got) in by_name {
        problems.entry(name).or_default().push(format!(
            "the target received {} connection(s) belonging to no source connection",
            got.len()
        ));
    }
    problems.retain(|_, p| !p.is_empty());
    problems
}

fn describe_difference(got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let show = |v: &[u8]| {
        let from = at.saturating_sub(60);
        let to = (at + 120).min(v.len());
        String::from_utf8_lossy(&v[from.min(to)..to]).into_owned()
    };
    format!(
        "target bytes differ: got {} bytes, want {}; first difference at byte {at}\n  got:  {:?}\n  want: {:?}",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}

/// The request line's method and target of a raw request.
fn method_and_target(request: &[u8]) -> (String, String) {
    let line_end = request
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(request.len());
    let line = String::from_utf8_lossy(&request[..line_end]).into_owned();
    let mut parts = line.split(' ');
    (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    )
}

/// Whether a tuple `payload` object (the Replayer's parsed body) holds `body`.
fn payload_matches(payload: &Value, body: &[u8]) -> Result<(), String> {
    if payload.is_null() {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(format!("no payload, want {} body bytes", body.len()))
        };
    }
    if let Some(j) = payload.get("inlinedJsonBody") {
        let want: Value = serde_json::from_slice(body)
            .map_err(|e| format!("payload parsed as JSON but the body is not JSON: {e}"))?;
        return if *j == want {
            Ok(())
        } else {
            Err("inlinedJsonBody differs from the body".into())
        };
    }
    if let Some(seq) = payload.get("inlinedJsonSequenceBodies") {
        let want: Vec<Value> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(serde_json::from_slice)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("payload parsed as NDJSON but the body is not: {e}"))?;
        return if seq.as_array() == Some(&want) {
            Ok(())
        } else {
            Err("inlinedJsonSequenceBodies differ from the body".into())
        };
    }
    if let Some(t) = payload.get("inlinedTextBody").and_then(Value::as_str) {
        return if t.as_bytes() == body {
            Ok(())
        } else {
            Err(format!(
                "inlinedTextBody ({} bytes) differs from the body ({} bytes)",
                t.len(),
                body.len()
            ))
        };
    }
    if let Some(b) = payload.get("inlinedBase64Body").and_then(Value::as_str) {
        let got = base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("inlinedBase64Body is not base64: {e}"))?;
        return if got == body {
            Ok(())
        } else {
            Err(format!(
                "inlinedBase64Body ({} bytes) differs from the body ({} bytes)",
                got.len(),
                body.len()
            ))
        };
    }
    Err(format!(
        "payload of an unknown form: {:.200}",
        payload.to_string()
    ))
}

/// The decoded body of a raw request (Content-Length or chunked).
fn request_body(request: &[u8]) -> Vec<u8> {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete head")
        + 4;
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let raw = &request[head_end..];
    if !head.contains("transfer-encoding: chunked") {
        return raw.to_vec();
    }
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let e = raw[pos..].windows(2).position(|w| w == b"\r\n").unwrap() + pos;
        let size_txt = String::from_utf8_lossy(&raw[pos..e]).into_owned();
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap().trim(), 16).unwrap();
        pos = e + 2;
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[pos..pos + size]);
        pos += size + 2;
    }
}

/// Per source connection: the Replayer's tuples pair every request, in order (indices 0..n),
/// with the request as sent and the response the client got (status and body), the target
/// answered each with the same status, and no tuple reports an error. Returns the problems,
/// keyed by connection name.
pub fn check_tuples(run: &ReplayerRun, conns: &[SourceConn]) -> BTreeMap<String, Vec<String>> {
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in conns {
        let p = problems.entry(c.name.clone()).or_default();
        let tuples = run.tuples_of(&c.conn_id);
        let want_idx: Vec<u64> = (0..c.requests.len() as u64).collect();
        let got_idx: Vec<u64> = tuples.keys().copied().collect();
        if got_idx != want_idx {
            p.push(format!(
                "tuple indices {got_idx:?}, want {want_idx:?} (one per request, in order)"
            ));
        }
        for (i, (req, resp)) in c.requests.iter().zip(&c.responses).enumerate() {
            let Some(ts) = tuples.get(&(i as u64)) else {
                continue;
            };
            if ts.len() != 1 {
                p.push(format!("request {i}: {} tuples, want 1", ts.len()));
            }
            let t = ts[0];
            let (method, target) = method_and_target(req);
            let sreq = &t["sourceRequest"];
            if sreq["Method"] != method.as_str() || sreq["Request-URI"] != target.as_str() {
                p.push(format!(
                    "request {i}: sourceRequest is {} {}, the client sent {method} {target}",
                    sreq["Method"], sreq["Request-URI"]
                ));
            } else if let Err(e) = payload_matches(&sreq["payload"], &request_body(req)) {
                p.push(format!(
                    "request {i} ({method} {target}): sourceRequest {e}"
                ));
            }
            let sresp = &t["sourceResponse"];
            if sresp["Status-Code"] != resp.status {
                p.push(format!(
                    "request {i} ({method} {target}): sourceResponse status {}, the client got {}",
                    sresp["Status-Code"], resp.status
                ));
            } else if let Err(e) = payload_matches(&sresp["payload"], &resp.body) {
                p.push(format!(
                    "request {i} ({method} {target}): sourceResponse {e}"
                ));
            }
            let tresps = t["targetResponses"].as_array().cloned().unwrap_or_default();
            match tresps.last() {
                None => p.push(format!(
                    "request {i} ({method} {target}): no target response"
                )),
                Some(last) if last["Status-Code"] != resp.status => p.push(format!(
                    "request {i} ({method} {target}): target answered {}, the source {}",
                    last["Status-Code"], resp.status
                )),
                _ => {}
            }
            if tresps.len() > 1 {
                p.push(format!(
                    "request {i} ({method} {target}): sent {} times to the target (retried)",
                    tresps.len()
                ));
            }
            if let Some(e) = t.get("error") {
                p.push(format!("request {i} ({method} {target}): tuple error {e}"));
            }
            if t["numErrors"].as_u64() != Some(0) {
                p.push(format!(
                    "request {i} ({method} {target}): numErrors {}",
                    t["numErrors"]
                ));
            }
        }
    }
    problems.retain(|_, p| !p.is_empty());
    problems
}

/// Capture-order rules the Replayer depends on and `ConnTrace::check` does not cover: a
/// connection's first observation is a read (the Replayer treats any other first
/// observation as a connection resumed mid-stream), and observations are in capture order,
/// so their timestamps never decrease (the Replayer pairs each read run with the writes
/// after it and paces by the timestamps).
pub fn capture_order_problems(conn: &ConnTrace) -> Vec<String> {
    let mut out = Vec::new();
    let obs: Vec<_> = conn.observations().collect();
    if let Some(first) = obs.first() {
        if !matches!(kind(first), "read" | "readSegment" | "close") {
            out.push(format!(
                "the connection's first observation is {}, not a read",
                kind(first)
            ));
        }
    }
    let ts = |o: &capture_proxy::capture::proto::TrafficObservation| {
        o.ts.map(|t| (t.seconds, t.nanos)).unwrap_or_default()
    };
    for w in obs.windows(2) {
        if ts(w[1]) < ts(w[0]) {
            out.push(format!(
                "{} at {:?} is recorded after {} at {:?} (observations out of capture order)",
                kind(w[1]),
                ts(w[1]),
                kind(w[0]),
                ts(w[0])
            ));
        }
    }
    out
}

/// Formats the problems of [`check_target`] / [`check_tuples`] for a failure message.
pub fn format_problems(title: &str, problems: &BTreeMap<String, Vec<String>>) -> String {
    let mut s = format!("{title}:");
    for (name, ps) in problems {
        for p in ps {
            s.push_str(&format!("\n  [{name}] {p}"));
        }
    }
    s
}
