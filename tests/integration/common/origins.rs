//! Origins for the framing-parity tests (tests/integration/framing_parity.rs) and the rig that runs one
//! case through the proxy: the request list the capture holds against the request list the
//! origin executed.
//!
//! Origins, all logging the same JSON shape (one event per line: `open`, `request` for each
//! executed request, `rejected`, `discarded`, `exception`, `close`; see
//! tests/netty-origin/.../NettyOrigin.java):
//! - [`JavaOrigin`]: the Netty origin of tests/netty-origin/ built for one pinned Netty
//!   version (`scripts/netty-origins.sh run`), i.e. the source's real HTTP stack;
//! - [`StrictOrigin`]: an in-process RFC 9112 origin that executes only unambiguous requests and
//!   answers everything else with a 4xx/5xx and closes.
//!
//! The capture side is read back with the harness's trace reader ([`super::Trace`], the crate's
//! own record decoding): the read bytes between two end-of-message markers are one captured
//! request, parsed here as a replayer reads them ([`parse_captured`]). Both sides are compared as
//! [`Req`]: method, target, version, header fields (names lower-cased, values trimmed; the
//! framing fields Content-Length and Transfer-Encoding left out because the body they frame is
//! compared byte for byte) and the de-chunked body.
//!
//! May depend on: the parent harness (Proxy, Trace), serde_json, base64, tempfile, std.
//!
//! Invariant: every wait is bounded; origins are killed (Java) or stopped (strict) on drop.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{kind, Proxy, Trace};

/// Most time a Java origin may take from spawn to printing its port (s): a JVM starts in ~1 s;
/// generous for a loaded 2-core machine. Builds are done beforehand by [`build_netty_origins`].
const JAVA_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Most time `scripts/netty-origins.sh build` may take (s): a cold build of all four versions
/// (Maven plugins and Netty jars into ~/.m2) took ~35 s here.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);
/// After the last byte the client received, how long it waits for more before closing (ms).
const CLIENT_IDLE: Duration = Duration::from_millis(300);
/// Longest a case's client reads (s).
const CLIENT_MAX: Duration = Duration::from_secs(5);
/// Pause between two writes of one case (ms): long enough for the proxy and origin to have
/// handled the first piece, so a split lands as a separate read.
const WRITE_PAUSE: Duration = Duration::from_millis(40);
/// Bound of the waits for the capture and the origin log to settle after a case (s).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(8);
/// Strict origin: the source's decoder limits, so both kinds of origin reject the same sizes.
const STRICT_MAX_REQUEST_LINE: usize = 4096;
const STRICT_MAX_HEAD: usize = 4096 + 8192;
const STRICT_MAX_BODY: u64 = 100 * 1024 * 1024;
/// Strict origin: read timeout of an idle connection (s); the proxy closes first in the tests.
const STRICT_IDLE: Duration = Duration::from_secs(60);

// ----------------------------------------------------------------------------------------
// Events and requests
// ----------------------------------------------------------------------------------------

/// One request as compared: what a server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    pub method: String,
    pub target: String,
    /// Upper-cased (`http/1.1` on the wire is HTTP/1.1 to both sides).
    pub version: String,
    /// (lower-cased name, trimmed value) in order, without Content-Length / Transfer-Encoding.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    fn new(
        method: &str,
        target: &str,
        version: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Req {
        Req {
            method: method.to_string(),
            target: target.to_string(),
            version: version.to_ascii_uppercase(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .filter(|(n, _)| n != "content-length" && n != "transfer-encoding")
                .collect(),
            body,
        }
    }

    /// One line: `METHOD target VERSION [n headers] body=N bytes "…"`.
    pub fn short(&self) -> String {
        format!(
            "{} {} {} [{} hdr] body={}B {}",
            esc(self.method.as_bytes(), 24),
            esc(self.target.as_bytes(), 40),
            esc(self.version.as_bytes(), 12),
            self.headers.len(),
            self.body.len(),
            if self.body.is_empty() {
                String::new()
            } else {
                format!("\"{}\"", esc(&self.body, 48))
            }
        )
    }
}

/// What differs between two requests, briefly.
pub fn req_diff(a: &Req, b: &Req) -> String {
    let mut d = Vec::new();
    if a.method != b.method || a.target != b.target || a.version != b.version {
        d.push("request line".to_string());
    }
    if a.headers != b.headers {
        let only_a: Vec<_> = a
            .headers
            .iter()
            .filter(|h| !b.headers.contains(h))
            .collect();
        let only_b: Vec<_> = b
            .headers
            .iter()
            .filter(|h| !a.headers.contains(h))
            .collect();
        d.push(format!(
            "headers (capture only {only_a:?}, origin only {only_b:?})"
        ));
    }
    if a.body != b.body {
        d.push(format!("body ({} vs {} bytes)", a.body.len(), b.body.len()));
    }
    d.join(", ")
}

/// One line of an origin log.
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub conn: u64,
    pub seq: u64,
    pub proto: String,
    pub error: String,
    pub reason: String,
    /// Present for request / rejected / discarded events that carry a request head.
    pub req: Option<Req>,
}

impl Event {
    pub fn short(&self) -> String {
        let mut s = format!("{}#{}.{}", self.event, self.conn, self.seq);
        if let Some(r) = &self.req {
            let _ = write!(s, " {}", r.short());
        }
        if !self.error.is_empty() {
            let _ = write!(s, " error={}", esc(self.error.as_bytes(), 120));
        }
        if !self.reason.is_empty() {
            let _ = write!(s, " ({})", self.reason);
        }
        s
    }
}

fn parse_event(line: &str) -> Event {
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("origin log line is no JSON ({e}): {line}"));
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    let req = v.get("method").and_then(|m| m.as_str()).map(|m| {
        let headers: Vec<(String, String)> = v
            .get("headers")
            .and_then(|h| h.as_array())
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p.get(0).and_then(|x| x.as_str()).unwrap_or("").to_string(),
                            p.get(1).and_then(|x| x.as_str()).unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let body = base64::engine::general_purpose::STANDARD
            .decode(s("body"))
            .expect("origin log body is base64");
        // Both kinds of origin log one char per wire byte (Latin-1), as the capture side reads.
        Req::new(m, &s("uri"), &s("version"), &headers, body)
    });
    Event {
        event: s("event"),
        conn: n("conn"),
        seq: n("seq"),
        proto: s("proto"),
        error: s("error"),
        reason: s("reason"),
        req,
    }
}

/// Bytes as Latin-1 text (one char per byte), as Netty's decoder and the strict origin see them.
pub fn bytes_text(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

/// Printable escape of `b`, cut at `limit` bytes.
pub fn esc(b: &[u8], limit: usize) -> String {
    let mut s = String::new();
    for &c in b.iter().take(limit) {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            b'"' => s.push_str("\\\""),
            0x20..=0x7e => s.push(c as char),
            _ => {
                let _ = write!(s, "\\x{c:02x}");
            }
        }
    }
    if b.len() > limit {
        let _ = write!(s, "…(+{})", b.len() - limit);
    }
    s
}

/// The origin's log from line `from` on (0-based), and the number of lines read in total.
/// A last line without its newline (being written) is left for the next call.
pub fn read_log(path: &Path, from: usize) -> (Vec<Event>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
    let lines: Vec<&str> = complete.lines().collect();
    let n = lines.len();
    let events = lines
        .iter()
        .skip(from)
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_event(l))
        .collect();
    (events, n)
}

// ----------------------------------------------------------------------------------------
// Captured requests
// ----------------------------------------------------------------------------------------

/// A captured request (the bytes between two EOMs) as a replayer reads it: leading blank lines
/// skipped; head up to the first empty line (CRLF or bare LF); request line split on
/// whitespace; header lines split at the first ':' with both sides trimmed, obs-fold lines
/// appended to the previous value; body = the rest, de-chunked when the last transfer coding
/// is `chunked` (leniently: the hex digits of the size line, data, line end).
pub fn parse_captured(seg: &[u8]) -> Req {
    let mut i = 0;
    while i < seg.len() && (seg[i] == b'\r' || seg[i] == b'\n') {
        i += 1;
    }
    let rest = &seg[i..];
    let (head, body) = match find_head_end(rest) {
        Some((h, b)) => (&rest[..h], &rest[b..]),
        None => (rest, &rest[rest.len()..]),
    };
    let mut lines = head
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or(b"");
    let mut parts = first
        .split(|c| c.is_ascii_whitespace())
        .filter(|p| !p.is_empty());
    let method = bytes_text(parts.next().unwrap_or(b""));
    let target = bytes_text(parts.next().unwrap_or(b""));
    let version = bytes_text(parts.next().unwrap_or(b""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for l in lines {
        if (l.starts_with(b" ") || l.starts_with(b"\t")) && !headers.is_empty() {
            let last = headers.last_mut().unwrap();
            let add = bytes_text(l);
            last.1 = format!("{} {}", last.1.trim(), add.trim())
                .trim()
                .to_string();
            continue;
        }
        match l.iter().position(|&c| c == b':') {
            Some(p) => headers.push((
                bytes_text(&l[..p]).trim().to_string(),
                bytes_text(&l[p + 1..]).trim().to_string(),
            )),
            None => headers.push((bytes_text(l).trim().to_string(), String::new())),
        }
    }
    let chunked = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| {
            v.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .rfind(|c| !c.is_empty())
        .is_some_and(|c| c == "chunked");
    let body = if chunked {
        dechunk_lenient(body).unwrap_or_else(|| body.to_vec())
    } else {
        body.to_vec()
    };
    Req::new(&method, &target, &version, &headers, body)
}

/// (end of head, start of body) for the first empty line (CRLF CRLF, LF LF, LF CRLF).
fn find_head_end(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

fn dechunk_lenient(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.iter().position(|&c| c == b'\n')?;
        let line = &b[..nl];
        let hex: Vec<u8> = line
            .iter()
            .copied()
            .skip_while(|c| *c == b' ')
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        // Leading zeros are no part of the size's magnitude (Netty parses "0005" as 5).
        let significant: &[u8] = {
            let z = hex.iter().take_while(|c| **c == b'0').count();
            if z == hex.len() {
                b"0"
            } else {
                &hex[z..]
            }
        };
        if hex.is_empty() || significant.len() > 15 {
            return None;
        }
        let size = usize::from_str_radix(std::str::from_utf8(significant).ok()?, 16).ok()?;
        b = &b[nl + 1..];
        if size == 0 {
            return Some(out);
        }
        if b.len() < size {
            out.extend_from_slice(b);
            return Some(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size..];
        if b.starts_with(b"\r\n") {
            b = &b[2..];
        } else if b.starts_with(b"\n") {
            b = &b[1..];
        }
    }
}

/// Requests of a captured connection, in order.
pub fn captured_requests(conn: &super::ConnTrace) -> Vec<Req> {
    conn.request_reads()
        .iter()
        .map(|s| parse_captured(s))
        .collect()
}

// ----------------------------------------------------------------------------------------
// Origins
// ----------------------------------------------------------------------------------------

/// An origin that logs what it executed.
pub trait TestOrigin: Send {
    fn name(&self) -> &str;
    fn addr(&self) -> SocketAddr;
    fn log_path(&self) -> &Path;
    /// Called by the rig once the case's capture has settled, before it reads the log: an
    /// origin that cannot log its connections' open and close waits here until it is idle and
    /// brings its log up to date.
    fn settle(&mut self, _deadline: Instant) -> Result<(), String> {
        Ok(())
    }
    /// Whether the log knows only the request line's method and target (no version, header
    /// fields or body): both sides are then compared on those two.
    fn request_line_only(&self) -> bool {
        false
    }
}

/// Root of the repository (scripts/ lives there).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `LABEL NETTY_VERSION PROFILE` lines of `scripts/netty-origins.sh versions`.
pub fn netty_origins() -> Vec<(String, String, String)> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/netty-origins.sh"))
        .arg("versions")
        .output()
        .expect("run scripts/netty-origins.sh versions");
    assert!(
        out.status.success(),
        "netty-origins.sh versions failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].to_string(), f[1].to_string(), f[2].to_string()))
        })
        .collect()
}

static BUILD: Mutex<Option<Result<(), String>>> = Mutex::new(None);

/// Builds (or finds cached) every pinned Netty origin, once per test process.
pub fn build_netty_origins() {
    let mut g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        let mut child = Command::new("bash")
            .arg(repo_root().join("scripts/netty-origins.sh"))
            .arg("build")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netty-origins.sh build");
        let deadline = Instant::now() + BUILD_TIMEOUT;
        let r = loop {
            match child.try_wait().expect("wait for build") {
                Some(st) if st.success() => break Ok(()),
                Some(st) => {
                    let mut e = String::new();
                    let _ = child.stderr.take().map(|mut s| s.read_to_string(&mut e));
                    break Err(format!("netty-origins.sh build: {st}\n{e}"));
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "netty-origins.sh build took over {BUILD_TIMEOUT:?}"
                    ));
                }
                None => thread::sleep(Duration::from_millis(100)),
            }
        };
        *g = Some(r);
    }
    if let Some(Err(e)) = g.as_ref() {
        panic!("{e}");
    }
}

/// The Netty origin built for one pinned release (label such as `es-7.10.2`); killed on drop.
pub struct JavaOrigin {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
    stderr: Arc<Mutex<String>>,
}

impl JavaOrigin {
    pub fn start(label: &str) -> JavaOrigin {
        build_netty_origins();
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("origin.jsonl");
        let mut child = Command::new("bash")
            .arg(repo_root().join("scripts/netty-origins.sh"))
            .arg("run")
            .arg(label)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn netty-origins.sh run");
        let stderr = Arc::new(Mutex::new(String::new()));
        let se = child.stderr.take().unwrap();
        let se_buf = stderr.clone();
        thread::spawn(move || {
            for l in BufReader::new(se).lines().map_while(Result::ok) {
                let mut g = se_buf.lock().unwrap();
                g.push_str(&l);
                g.push('\n');
            }
        });
        let so = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(so).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            for _ in lines {}
        });
        let port: u16 = match rx.recv_timeout(JAVA_START_TIMEOUT) {
            Ok(l) => l
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("origin {label} printed {l:?}, not a port")),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "origin {label} printed no port within {JAVA_START_TIMEOUT:?}: {}",
                    stderr.lock().unwrap()
                );
            }
        };
        JavaOrigin {
            name: label.to_string(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
            _dir: dir,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl TestOrigin for JavaOrigin {
    fn name(&self) -> &str {
        &self.name
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for JavaOrigin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real OpenSearch node (scripts/opensearch-node.sh: the server and its transport-netty4
/// module from Maven Central, started by the server's own bootstrap), stopped on drop.
///
/// The node cannot log what it executed as the Netty origins do; its HTTP tracer
/// (`org.opensearch.http.HttpTracer`) logs one line per request its REST layer received, with
/// the exception when the request was bad (answered 400, nothing executed), and gives method
/// and target only. [`TestOrigin::settle`] waits until the node has no HTTP connection open
/// but the poll's own (`GET /_nodes/_local/stats/http`, not traced), then turns the new trace
/// lines into the common log: `request` (or `rejected` with the error) with method and uri.
pub struct NodeOrigin {
    name: String,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    trace: PathBuf,
    log: PathBuf,
    /// Complete trace lines already turned into log lines.
    trace_done: usize,
    seq: u64,
}

/// Most time `scripts/opensearch-node.sh start` may take, resolving included (it bounds
/// itself: Maven 600 s, start 180 s).
const NODE_START_TIMEOUT: Duration = Duration::from_secs(900);

impl NodeOrigin {
    pub fn start() -> NodeOrigin {
        let script = repo_root().join("scripts/opensearch-node.sh");
        let version = Command::new("bash")
            .arg(&script)
            .arg("version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .expect("run scripts/opensearch-node.sh version");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn opensearch-node.sh start");
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let out_t = thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let err_t = thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        let status = loop {
            match child.try_wait().expect("wait for opensearch-node.sh start") {
                Some(st) => break Some(st),
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => thread::sleep(Duration::from_millis(100)),
            }
        };
        let out = out_t.join().unwrap_or_default();
        let err = err_t.join().unwrap_or_default();
        let port: Option<u16> = out.lines().last().and_then(|l| l.trim().parse().ok());
        let port = match (status, port) {
            (Some(st), Some(p)) if st.success() => p,
            _ => {
                let _ = Command::new("bash")
                    .arg(&script)
                    .arg("stop")
                    .arg(dir.path())
                    .status();
                panic!("opensearch-node.sh start failed ({status:?}): {out}\n{err}");
            }
        };
        eprint!("{err}");
        let trace = dir.path().join("logs/http-trace.log");
        let log = dir.path().join("origin.jsonl");
        std::fs::write(&log, b"").expect("node origin log");
        NodeOrigin {
            name: format!("opensearch-node-{version}"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            trace,
            log,
            trace_done: 0,
            seq: 0,
        }
    }

    /// The node's count of open HTTP connections (the poll's own included).
    fn open_http_connections(&self) -> Result<u64, String> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        s.write_all(
            b"GET /_nodes/_local/stats/http?filter_path=**.current_open HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n",
        )
        .map_err(|e| format!("write: {e}"))?;
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        let text = String::from_utf8_lossy(&b);
        let at = text
            .find("\"current_open\":")
            .ok_or_else(|| format!("no current_open in {}", esc(&b, 300)))?;
        let digits: String = text[at + 15..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        digits
            .parse()
            .map_err(|_| format!("bad current_open in {}", esc(&b, 300)))
    }

    /// Turns the trace lines written since the last call into log lines.
    fn convert_trace(&mut self) {
        let bytes = std::fs::read(&self.trace).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let complete = text.rfind('\n').map(|i| &text[..=i]).unwrap_or("");
        let lines: Vec<&str> = complete.lines().collect();
        let mut out = String::new();
        for l in lines.iter().skip(self.trace_done) {
            if let Some(v) = self.trace_event(l) {
                out.push_str(&v.to_string());
                out.push('\n');
            }
        }
        self.trace_done = lines.len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("node origin log");
        f.write_all(out.as_bytes()).expect("write node origin log");
    }

    /// `[ID][OPAQUE_ID][METHOD][URI] received request from [CHANNEL]<TAB>EXCEPTION` as an event;
    /// None for other lines (responses).
    fn trace_event(&mut self, line: &str) -> Option<serde_json::Value> {
        let (msg, error) = line.split_once('\t').unwrap_or((line, ""));
        let head = &msg[..msg.rfind("] received request from [")? + 1];
        // [ID][OPAQUE_ID][METHOD][URI]: the method is a token; the URI is the rest.
        let mut rest = head;
        for _ in 0..2 {
            rest = &rest[rest.find("][")? + 1..];
        }
        let rest = rest.strip_prefix('[')?.strip_suffix(']')?;
        let (method, uri) = rest.split_once("][")?;
        self.seq += 1;
        let mut v = serde_json::json!({
            "event": if error.is_empty() { "request" } else { "rejected" },
            "conn": 0, "seq": self.seq, "proto": "h1",
            "method": method, "uri": uri, "version": "", "headers": [], "body": "",
        });
        if !error.is_empty() {
            v["error"] = error.into();
        }
        Some(v)
    }
}

impl TestOrigin for NodeOrigin {
    fn name(&self) -> &str {
        &self.name
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log_path(&self) -> &Path {
        &self.log
    }
    fn settle(&mut self, deadline: Instant) -> Result<(), String> {
        let r = loop {
            match self.open_http_connections() {
                Ok(n) if n <= 1 => break Ok(()),
                Ok(n) if Instant::now() >= deadline => {
                    break Err(format!("{} HTTP connection(s) still open", n - 1))
                }
                Err(e) if Instant::now() >= deadline => break Err(e),
                _ => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.convert_trace();
        r
    }
    fn request_line_only(&self) -> bool {
        true
    }
}

impl Drop for NodeOrigin {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/opensearch-node.sh"))
            .arg("stop")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .status();
    }
}

/// Appends JSON lines to the strict origin's log.
struct JsonLog(Mutex<std::fs::File>);

impl JsonLog {
    fn line(&self, v: serde_json::Value) {
        let mut f = self.0.lock().unwrap();
        let _ = writeln!(f, "{v}");
        let _ = f.flush();
    }
}

/// A strict RFC 9112 origin on 127.0.0.1:0: executes only requests whose framing is
/// unambiguous and answers everything else with an error status and `Connection: close`, then
/// closes. Rejected (anything else is executed):
/// - bare LF line ends, obs-fold, whitespace before a field's colon, a control character in a
///   field value, a field name that is no token, a request line that is not exactly
///   `token SP target SP HTTP/1.x` (505 for another HTTP version), a target form the method
///   does not allow; request line over 4 KiB (414), head over 12 KiB (431);
/// - HTTP/1.1 without exactly one Host;
/// - Content-Length with anything but digits, or more than one Content-Length value (even
///   equal ones), or over 100 MiB (413);
/// - Transfer-Encoding together with Content-Length; in HTTP/1.0; or other than exactly
///   `chunked` (case-insensitive): 501 when `chunked` is last, else 400;
/// - chunk sizes that are not 1*HEXDIG or over 15 significant hex digits, chunk extensions outside RFC 9112 §7.1.1's
///   grammar, chunk data not followed by CRLF, trailer fields that are framing, routing or
///   connection control (Content-Length, Transfer-Encoding, Host, Connection, TE, Trailer,
///   Expect, Upgrade, Keep-Alive);
/// - an Expect other than `100-continue` (417). `100-continue` gets an interim 100 once the
///   head is read and the body has not fully arrived.
///
/// After a request with `Connection: close` (or HTTP/1.0 without keep-alive) it answers and
/// closes without reading further. Absolute-form targets are accepted (RFC 9112 §3.2.2).
pub struct StrictOrigin {
    addr: SocketAddr,
    log: PathBuf,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl StrictOrigin {
    pub fn start() -> StrictOrigin {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("origin.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("strict origin log");
        let jlog = Arc::new(JsonLog(Mutex::new(file)));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind strict origin");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let ids = Arc::new(AtomicU64::new(0));
        thread::Builder::new()
            .name("strict-origin".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if stop2.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    let id = ids.fetch_add(1, Ordering::Relaxed) + 1;
                    let jlog = jlog.clone();
                    let _ = thread::Builder::new()
                        .name(format!("strict-{id}"))
                        .spawn(move || strict_serve(s, id, &jlog));
                }
            })
            .expect("spawn strict origin");
        StrictOrigin {
            addr,
            log,
            stop,
            _dir: dir,
        }
    }
}

impl TestOrigin for StrictOrigin {
    fn name(&self) -> &str {
        "strict-rfc9112"
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn log_path(&self) -> &Path {
        &self.log
    }
}

impl Drop for StrictOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// A request the strict origin accepted.
struct StrictReq {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

enum StrictParse {
    /// More bytes needed; `expect_continue` once the head is complete and asks for 100.
    Incomplete {
        expect_continue: bool,
    },
    Done(StrictReq, usize),
    Reject(u16, String, Option<StrictReq>),
}

fn req_json(
    event: &str,
    id: u64,
    seq: u64,
    r: Option<&StrictReq>,
    error: &str,
) -> serde_json::Value {
    let mut v = serde_json::json!({"event": event, "conn": id, "seq": seq, "proto": "h1"});
    if let Some(r) = r {
        v["method"] = r.method.clone().into();
        v["uri"] = r.target.clone().into();
        v["version"] = r.version.clone().into();
        v["headers"] = serde_json::Value::Array(
            r.headers
                .iter()
                .map(|(n, x)| serde_json::json!([n, x]))
                .collect(),
        );
        v["body"] = base64::engine::general_purpose::STANDARD
            .encode(&r.body)
            .into();
    }
    if !error.is_empty() {
        v["error"] = error.into();
    }
    v
}

fn strict_serve(mut s: TcpStream, id: u64, log: &JsonLog) {
    log.line(serde_json::json!({"event": "open", "conn": id}));
    let _ = s.set_read_timeout(Some(STRICT_IDLE));
    let _ = s.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::new();
    let mut seq = 0u64;
    let mut continued = false;
    let mut chunk = vec![0u8; 64 * 1024];
    'conn: loop {
        match strict_parse(&buf) {
            StrictParse::Done(r, used) => {
                seq += 1;
                continued = false;
                log.line(req_json("request", id, seq, Some(&r), ""));
                let body = format!(
                    "{{\"method\":{:?},\"uri\":{:?},\"conn\":{id},\"seq\":{seq}}}",
                    r.method, r.target
                );
                let _ = s.write_all(&strict_response(
                    200,
                    "OK",
                    &body,
                    r.close,
                    r.method == "HEAD",
                ));
                buf.drain(..used);
                if r.close {
                    break 'conn;
                }
                continue;
            }
            StrictParse::Reject(status, why, head) => {
                seq += 1;
                log.line(req_json("rejected", id, seq, head.as_ref(), &why));
                let body = format!("{{\"status\":{status},\"error\":{why:?}}}");
                let _ = s.write_all(&strict_response(status, "Rejected", &body, true, false));
                break 'conn;
            }
            StrictParse::Incomplete { expect_continue } => {
                if expect_continue && !continued {
                    continued = true;
                    let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = s.shutdown(Shutdown::Both);
    log.line(serde_json::json!({"event": "close", "conn": id}));
}

fn strict_response(status: u16, reason: &str, body: &str, close: bool, head: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if close {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    if !head {
        r.push_str(body);
    }
    r.into_bytes()
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| is_tchar(c))
}

/// Parses one request at the start of `b` (RFC 9112, strictly; see [`StrictOrigin`]).
fn strict_parse(b: &[u8]) -> StrictParse {
    let reject = |s: u16, why: &str| StrictParse::Reject(s, why.to_string(), None);
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line (CRLF) before the request line.
    let mut start = 0;
    while b[start..].starts_with(b"\r\n") {
        start += 2;
    }
    let b = &b[start..];
    // Every LF of the head must follow a CR; find the end of the head.
    let mut head_end = None;
    let mut line_start = 0;
    for i in 0..b.len() {
        if b[i] == b'\n' {
            if i == 0 || b[i - 1] != b'\r' {
                return reject(400, "bare LF");
            }
            if line_start == 0 && i + 1 > STRICT_MAX_REQUEST_LINE {
                return reject(414, "request line too long");
            }
            if i == line_start + 1 && line_start > 0 {
                head_end = Some(i + 1);
                break;
            }
            line_start = i + 1;
        } else if b[i] == b'\r' && i + 1 < b.len() && b[i + 1] != b'\n' {
            return reject(400, "bare CR");
        }
    }
    let Some(head_end) = head_end else {
        if line_start == 0 && b.len() > STRICT_MAX_REQUEST_LINE {
            return reject(414, "request line too long");
        }
        if b.len() > STRICT_MAX_HEAD {
            return reject(431, "head too large");
        }
        return StrictParse::Incomplete {
            expect_continue: false,
        };
    };
    if head_end > STRICT_MAX_HEAD {
        return reject(431, "head too large");
    }
    let head = &b[..head_end - 4];
    let mut lines = head
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let rl = lines.next().unwrap_or(b"");
    let parts: Vec<&[u8]> = rl.split(|&c| c == b' ').collect();
    if parts.len() != 3 {
        return reject(400, "request line is not method SP target SP version");
    }
    let (method, target, version) = (parts[0], parts[1], parts[2]);
    if !is_token(method) {
        return reject(400, "method is no token");
    }
    if target.is_empty() || !target.iter().all(|&c| (0x21..=0x7e).contains(&c)) {
        return reject(400, "bad request target");
    }
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        v if v.len() == 8
            && v.starts_with(b"HTTP/")
            && v[5].is_ascii_digit()
            && v[6] == b'.'
            && v[7].is_ascii_digit() =>
        {
            return reject(505, "HTTP version not supported")
        }
        _ => return reject(400, "bad HTTP version"),
    };
    let form_ok = if method == b"CONNECT" {
        !target.starts_with(b"/") && target.contains(&b':')
    } else if target == b"*" {
        method == b"OPTIONS"
    } else {
        target.starts_with(b"/")
            || target.starts_with(b"http://")
            || target.starts_with(b"https://")
    };
    if !form_ok {
        return reject(400, "request target form not allowed for the method");
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for l in lines {
        if l.starts_with(b" ") || l.starts_with(b"\t") {
            return reject(400, "obs-fold");
        }
        let Some(colon) = l.iter().position(|&c| c == b':') else {
            return reject(400, "field line without colon");
        };
        let name = &l[..colon];
        if !is_token(name) {
            return reject(400, "field name is no token (whitespace before colon?)");
        }
        let value = &l[colon + 1..];
        if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
            return reject(400, "control character in field value");
        }
        let v = bytes_text(value);
        headers.push((bytes_text(name), v.trim_matches([' ', '\t']).to_string()));
    }
    fn all<'a>(headers: &'a [(String, String)], n: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    }
    let partial = StrictReq {
        method: bytes_text(method),
        target: bytes_text(target),
        version: bytes_text(version),
        headers: headers.clone(),
        body: Vec::new(),
        close: true,
    };
    let reject_h =
        |s: u16, why: &str, r: StrictReq| StrictParse::Reject(s, why.to_string(), Some(r));
    if !http10 && all(&headers, "host").count() != 1 {
        return reject_h(400, "HTTP/1.1 needs exactly one Host", partial);
    }
    let cls: Vec<&str> = all(&headers, "content-length").collect();
    let tes: Vec<&str> = all(&headers, "transfer-encoding").collect();
    let expect: Vec<&str> = all(&headers, "expect").collect();
    let expect_ok =
        expect.is_empty() || (expect.len() == 1 && expect[0].eq_ignore_ascii_case("100-continue"));
    if !expect_ok {
        return reject_h(417, "expectation other than 100-continue", partial);
    }
    let conn_tokens: Vec<String> = all(&headers, "connection")
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .collect();
    let close = conn_tokens.iter().any(|t| t == "close")
        || (http10 && !conn_tokens.iter().any(|t| t == "keep-alive"));
    enum Framing {
        None,
        Length(u64),
        Chunked,
    }
    let framing = if !tes.is_empty() {
        if http10 {
            return reject_h(400, "Transfer-Encoding in HTTP/1.0", partial);
        }
        if !cls.is_empty() {
            return reject_h(400, "Transfer-Encoding with Content-Length", partial);
        }
        let codings: Vec<String> = tes
            .iter()
            .flat_map(|v| v.split(',').map(|c| c.trim().to_ascii_lowercase()))
            .collect();
        if codings.len() == 1 && codings[0] == "chunked" {
            Framing::Chunked
        } else if codings.last().is_some_and(|c| c == "chunked")
            && codings.iter().all(|c| is_token(c.as_bytes()))
        {
            return reject_h(501, "transfer coding other than chunked", partial);
        } else {
            return reject_h(400, "chunked is not the last transfer coding", partial);
        }
    } else if !cls.is_empty() {
        if cls.len() != 1
            || cls[0].is_empty()
            || !cls[0].bytes().all(|c| c.is_ascii_digit())
            || cls[0].len() > 18
        {
            return reject_h(400, "bad or repeated Content-Length", partial);
        }
        let n: u64 = cls[0].parse().unwrap();
        if n > STRICT_MAX_BODY {
            return reject_h(413, "body over the limit", partial);
        }
        Framing::Length(n)
    } else {
        Framing::None
    };
    let want_continue = !expect.is_empty();
    let rest = &b[head_end..];
    let (body, used) = match framing {
        Framing::None => (Vec::new(), 0),
        Framing::Length(n) => {
            if (rest.len() as u64) < n {
                return StrictParse::Incomplete {
                    expect_continue: want_continue,
                };
            }
            (rest[..n as usize].to_vec(), n as usize)
        }
        Framing::Chunked => match strict_dechunk(rest) {
            Ok(Some(x)) => x,
            Ok(None) => {
                return StrictParse::Incomplete {
                    expect_continue: want_continue,
                }
            }
            Err(why) => return reject_h(400, &why, partial),
        },
    };
    StrictParse::Done(
        StrictReq {
            method: bytes_text(method),
            target: bytes_text(target),
            version: bytes_text(version),
            headers,
            body,
            close,
        },
        start + head_end + used,
    )
}

/// RFC 9112 §7.1 chunked body at the start of `b`: Ok(None) when incomplete.
fn strict_dechunk(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        let Some(nl) = b[i..].iter().position(|&c| c == b'\n') else {
            if b.len() - i > 4096 {
                return Err("chunk size line too long".into());
            }
            return Ok(None);
        };
        let line = &b[i..i + nl];
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err("bare LF after chunk size".into());
        };
        let hex_len = line.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        let zeros = line[..hex_len]
            .iter()
            .take_while(|c| **c == b'0')
            .count()
            .min(hex_len.saturating_sub(1));
        if hex_len == 0 || hex_len - zeros > 15 {
            return Err("chunk size is not 1*HEXDIG with at most 15 significant digits".into());
        }
        let size =
            u64::from_str_radix(std::str::from_utf8(&line[zeros..hex_len]).unwrap(), 16).unwrap();
        if !chunk_ext_ok(&line[hex_len..]) {
            return Err("bad chunk extension".into());
        }
        i += nl + 1;
        if size == 0 {
            // trailer section
            loop {
                let Some(nl) = b[i..].iter().position(|&c| c == b'\n') else {
                    return Ok(None);
                };
                let l = &b[i..i + nl];
                let Some(l) = l.strip_suffix(b"\r") else {
                    return Err("bare LF in trailer".into());
                };
                i += nl + 1;
                if l.is_empty() {
                    return Ok(Some((out, i)));
                }
                if l.starts_with(b" ") || l.starts_with(b"\t") {
                    return Err("obs-fold in trailer".into());
                }
                let Some(colon) = l.iter().position(|&c| c == b':') else {
                    return Err("trailer line without colon".into());
                };
                if !is_token(&l[..colon]) {
                    return Err("trailer field name is no token".into());
                }
                if l[colon + 1..]
                    .iter()
                    .any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
                {
                    return Err("control character in trailer value".into());
                }
                let name = bytes_text(&l[..colon]).to_ascii_lowercase();
                const FORBIDDEN: [&str; 9] = [
                    "content-length",
                    "transfer-encoding",
                    "host",
                    "connection",
                    "te",
                    "trailer",
                    "expect",
                    "upgrade",
                    "keep-alive",
                ];
                if FORBIDDEN.contains(&name.as_str()) {
                    return Err(format!("forbidden trailer field {name}"));
                }
            }
        }
        if size > STRICT_MAX_BODY || out.len() as u64 + size > STRICT_MAX_BODY {
            return Err("chunked body over the limit".into());
        }
        let size = size as usize;
        if b.len() < i + size + 2 {
            if b.len() >= i + size && !b"\r\n".starts_with(&b[i + size..]) {
                return Err("chunk data not followed by CRLF".into());
            }
            return Ok(None);
        }
        if &b[i + size..i + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        out.extend_from_slice(&b[i..i + size]);
        i += size + 2;
    }
}

/// `*( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )` with ext-val = token / quoted-string.
fn chunk_ext_ok(mut e: &[u8]) -> bool {
    let bws = |x: &[u8]| -> usize { x.iter().take_while(|c| **c == b' ' || **c == b'\t').count() };
    loop {
        e = &e[bws(e)..];
        if e.is_empty() {
            return true;
        }
        if e[0] != b';' {
            return false;
        }
        e = &e[1..];
        e = &e[bws(e)..];
        let n = e.iter().take_while(|c| is_tchar(**c)).count();
        if n == 0 {
            return false;
        }
        e = &e[n..];
        let w = bws(e);
        if e.get(w) == Some(&b'=') {
            e = &e[w + 1..];
            e = &e[bws(e)..];
            if e.first() == Some(&b'"') {
                let mut j = 1;
                loop {
                    match e.get(j) {
                        None => return false,
                        Some(b'"') => break,
                        Some(b'\\') => {
                            if e.get(j + 1).is_none_or(|c| *c < 0x20 && *c != b'\t') {
                                return false;
                            }
                            j += 2;
                        }
                        Some(&c) if (c < 0x20 && c != b'\t') || c == 0x7f => return false,
                        Some(_) => j += 1,
                    }
                }
                e = &e[j + 1..];
            } else {
                let n = e.iter().take_while(|c| is_tchar(**c)).count();
                if n == 0 {
                    return false;
                }
                e = &e[n..];
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// The rig: one proxy in front of one origin, cases run one after the other
// ----------------------------------------------------------------------------------------

/// Fields HTTP/2 does not carry (RFC 9113 §8.2.2) plus the upgrade's own.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "upgrade",
    "http2-settings",
    "keep-alive",
    "proxy-connection",
    "te",
];

/// What one case produced.
pub struct Outcome {
    /// Requests of the capture's connection for this case, in order.
    pub captured: Vec<Req>,
    /// Requests the origin executed during the case, in log order.
    pub executed: Vec<Req>,
    /// Every origin event of the case (open/close/rejected/discarded too).
    pub events: Vec<Event>,
    /// Bytes the client received.
    pub received: Vec<u8>,
    /// Whether capture and origin log settled within the bound (else the case is reported).
    pub settled: Result<(), String>,
    /// One line per capture record of the case's connection(s).
    pub capture_dump: String,
}

impl Outcome {
    pub fn diverges(&self) -> bool {
        self.captured != self.executed || self.settled.is_err()
    }

    /// A multi-line account: what the origin executed vs what the capture holds.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Err(e) = &self.settled {
            let _ = writeln!(s, "    NOT SETTLED: {e}");
        }
        let _ = writeln!(s, "    origin executed {}:", self.executed.len());
        for r in &self.executed {
            let _ = writeln!(s, "      {}", r.short());
        }
        let _ = writeln!(s, "    capture holds {}:", self.captured.len());
        for r in &self.captured {
            let _ = writeln!(s, "      {}", r.short());
        }
        let n = self.captured.len().max(self.executed.len());
        for i in 0..n {
            match (self.captured.get(i), self.executed.get(i)) {
                (Some(a), Some(b)) if a != b => {
                    let _ = writeln!(s, "    #{}: differs in {}", i + 1, req_diff(a, b));
                }
                _ => {}
            }
        }
        let other: Vec<String> = self
            .events
            .iter()
            .filter(|e| e.event != "request" && e.event != "open" && e.event != "close")
            .map(|e| e.short())
            .collect();
        if !other.is_empty() {
            let _ = writeln!(s, "    origin also: {}", other.join(" | "));
        }
        let _ = writeln!(s, "    client got: {}", status_lines(&self.received));
        s
    }
}

/// The status lines found in a response stream (`HTTP/1.1 200`, …), for reports.
pub fn status_lines(b: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(p) = b[i..].windows(5).position(|w| w == b"HTTP/") {
        let at = i + p;
        let end = b[at..]
            .iter()
            .position(|&c| c == b'\r' || c == b'\n')
            .map(|e| at + e)
            .unwrap_or(b.len());
        out.push(esc(&b[at..end.min(at + 40)], 40));
        i = end;
        if i >= b.len() {
            break;
        }
    }
    if out.is_empty() {
        format!("{} bytes, no status line", b.len())
    } else {
        format!("{} ({} bytes)", out.join(", "), b.len())
    }
}

/// A proxy (in-process, trace files) in front of one origin.
pub struct Rig {
    pub origin: Box<dyn TestOrigin>,
    pub proxy: Proxy,
    seen_conns: HashSet<String>,
    log_lines: usize,
}

impl Rig {
    pub fn new(origin: Box<dyn TestOrigin>) -> Rig {
        let proxy = Proxy::start(origin.addr(), |_| {});
        Rig {
            origin,
            proxy,
            seen_conns: HashSet::new(),
            log_lines: 0,
        }
    }

    pub fn name(&self) -> &str {
        self.origin.name()
    }

    /// Sends `writes` on one new client connection (a pause between writes), reads until the
    /// connection closes or stays idle, closes it, waits for the capture to hold the
    /// connection's close and for every origin connection opened meanwhile to be closed, and
    /// returns both request lists.
    pub fn run(&mut self, writes: &[Vec<u8>]) -> Outcome {
        let mut received = Vec::new();
        match TcpStream::connect_timeout(&self.proxy.addr, Duration::from_secs(5)) {
            Ok(mut c) => {
                let _ = c.set_nodelay(true);
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                for (i, w) in writes.iter().enumerate() {
                    if i > 0 {
                        thread::sleep(WRITE_PAUSE);
                    }
                    if c.write_all(w).is_err() {
                        break;
                    }
                }
                let start = Instant::now();
                let mut last = Instant::now();
                let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            received.extend_from_slice(&buf[..n]);
                            last = Instant::now();
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock
                                    | io::ErrorKind::TimedOut
                                    | io::ErrorKind::Interrupted
                            ) => {}
                        Err(_) => break,
                    }
                    if last.elapsed() >= CLIENT_IDLE || start.elapsed() >= CLIENT_MAX {
                        break;
                    }
                }
                let _ = c.shutdown(Shutdown::Both);
            }
            Err(e) => panic!("connect to the proxy: {e}"),
        }
        // Capture: a connection not seen before whose close is recorded.
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut settled = Ok(());
        let mut new_conns;
        loop {
            let t = Trace::load_partial(self.proxy.dir.path());
            new_conns = t
                .connections()
                .into_iter()
                .filter(|c| !self.seen_conns.contains(&c.id))
                .collect::<Vec<_>>();
            if !new_conns.is_empty() && new_conns.iter().all(|c| c.kinds().contains(&"close")) {
                break;
            }
            if Instant::now() >= deadline {
                settled = Err(format!(
                    "capture: {} new connection(s), not all closed",
                    new_conns.len()
                ));
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        for c in &new_conns {
            self.seen_conns.insert(c.id.clone());
        }
        // Origin: idle (for an origin that cannot log connections), then every connection
        // opened during the case has closed.
        if let Err(e) = self.origin.settle(deadline) {
            if settled.is_ok() {
                settled = Err(format!("origin: {e}"));
            }
        }
        let events = loop {
            let (ev, _) = read_log(self.origin.log_path(), self.log_lines);
            let opened: HashSet<u64> = ev
                .iter()
                .filter(|e| e.event == "open")
                .map(|e| e.conn)
                .collect();
            let closed: HashSet<u64> = ev
                .iter()
                .filter(|e| e.event == "close")
                .map(|e| e.conn)
                .collect();
            if opened.is_subset(&closed) {
                break ev;
            }
            if Instant::now() >= deadline {
                if settled.is_ok() {
                    settled = Err(format!(
                        "origin: connection(s) {:?} still open",
                        opened.difference(&closed).collect::<Vec<_>>()
                    ));
                }
                break ev;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let (_, n) = read_log(self.origin.log_path(), self.log_lines);
        self.log_lines = n;
        let mut captured: Vec<Req> = new_conns.iter().flat_map(captured_requests).collect();
        let mut executed: Vec<Req> = Vec::new();
        let line_only = self.origin.request_line_only();
        for e in events.iter().filter(|e| e.event == "request") {
            let Some(mut r) = e.req.clone() else { continue };
            if r.method == "PRI" && (r.version == "HTTP/2.0" || (line_only && r.target == "*")) {
                // The HTTP/2 preface, which a classic (HTTP/1-only) Netty pipeline hands on as
                // a request: Elasticsearch's and OpenSearch's REST layer answers it 405 and
                // runs nothing. The proxy passes the whole preface at connection start through
                // uncaptured (README "Framing and smuggling").
                continue;
            }
            if e.proto == "h2" {
                // An HTTP/1.1 request upgraded to HTTP/2 (h2c) reaches the handler converted:
                // hop-by-hop fields dropped, x-http2-* added. Compare it on the same footing.
                r.headers.retain(|(n, _)| !n.starts_with("x-http2-"));
                if let Some(c) = captured.get_mut(executed.len()) {
                    c.headers.retain(|(n, _)| !HOP_BY_HOP.contains(&n.as_str()));
                }
                r.version = r.version.replace("HTTP/2.0", "HTTP/1.1");
            }
            executed.push(r);
        }
        if line_only {
            for r in captured.iter_mut().chain(executed.iter_mut()) {
                *r = Req::new(&r.method, &r.target, "", &[], Vec::new());
            }
        }
        let mut capture_dump = String::new();
        for c in &new_conns {
            capture_dump.push_str(&c.dump());
        }
        Outcome {
            captured,
            executed,
            events,
            received,
            settled,
            capture_dump,
        }
    }
}

/// Kinds of observation of a capture connection, for reports.
pub fn kinds_of(c: &super::ConnTrace) -> Vec<&'static str> {
    c.observations().map(kind).collect()
}
