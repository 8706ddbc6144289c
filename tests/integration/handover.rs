//! Restart and binary upgrade under load, end to end with the real binary: client threads
//! (keep-alive and connection-per-request, every request tagged) and an `/ready` prober run
//! against a proxy capturing to files while it is told (SIGUSR2) to hand its listening
//! sockets to a new process — twice, the second time after the binary on disk was replaced
//! (a new inode, as an upgrade installs it). Asserted: no client request fails, `/ready`
//! answers 200 throughout, each old process exits 0, the last process runs the replaced
//! file, and every tag appears exactly once in the union of all processes' capture records
//! (and once at the origin). Keep-alive clients behave as pooled HTTP clients do: a
//! connection found closed before reuse is replaced, and a request on a reused connection
//! that closes before any byte of its response is resent once on a new one (the keep-alive
//! race; counted and printed, and the capture proves the first attempt was never forwarded).
//! Fault cases: a replacement binary that exits, one that never
//! becomes ready, and a missing one — the running process keeps serving, logs an error and
//! counts `handoverFailures_total`. Also: a second process sharing the port by plain
//! SO_REUSEPORT, and real systemd socket activation (`systemd-socket-activate`) followed by a
//! handover.
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`, run from a copy the tests may
//! replace), `tests/common` (origin, admin client, trace reader), libc (signals, waitpid,
//! PR_SET_CHILD_SUBREAPER), tempfile, std.
//!
//! Invariant: every wait is bounded; readiness comes from the processes' own log lines and
//! exits, never from sleeps; everything listens on and connects to 127.0.0.1 only.
//!
//! The oracle is shown failing by the ignored tests: a process killed (no drain) or replaced
//! by plain rebinding (`--listenPort <same port>` + SIGTERM of the old one) under the same
//! load (`cargo test --test integration handover:: -- --ignored --nocapture`).

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::capture::proto::traffic_observation::Capture;
use common::admin::admin_get;
use common::binary::{log_field, parse_listening, Listening};
use common::{Origin, Trace};

/// Bound on start-up, a handover and an exit (s): generous, the machine is small and shared.
const BOUND: Duration = Duration::from_secs(40);
/// `--drain-timeout` of the processes (s): each old process must have exited well within it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the clients keep sending (s).
const LOAD_FOR: Duration = Duration::from_secs(4);
/// Client threads of each kind.
const KEEPALIVE_CLIENTS: usize = 3;
const PER_REQUEST_CLIENTS: usize = 3;
/// Requests per keep-alive connection before the client opens a new one.
const KEEPALIVE_REQUESTS: usize = 50;
/// Per-socket-operation bound of the clients (s).
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Orphans (the handed-over-to processes, grandchildren of this test) are re-parented to this
/// process, so their exit statuses can be collected with `waitpid`.
fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Waits (bounded) for process `pid` (a child or an adopted orphan) to exit; its exit code.
fn wait_pid(pid: i32, bound: Duration) -> Option<i32> {
    let end = Instant::now() + bound;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid on a pid that is ours to reap (child or adopted orphan).
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) {
                Some(libc::WEXITSTATUS(status))
            } else {
                Some(-libc::WTERMSIG(status))
            };
        }
        assert!(r >= 0 || Instant::now() < end, "waitpid({pid}) failed");
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) of a process this test started (directly or through a handover).
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// The binary copied into a directory the test owns (so it can replace it, as an upgrade).
struct Binary {
    dir: tempfile::TempDir,
}

impl Binary {
    fn new() -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let b = Binary { dir };
        b.install_copy();
        b
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("capture-proxy")
    }
    /// Installs a fresh copy by rename (a new inode at the same path, as `install` does).
    fn install_copy(&self) {
        let tmp = self.dir.path().join(".capture-proxy.new");
        std::fs::copy(env!("CARGO_BIN_EXE_capture-proxy"), &tmp).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
    /// Replaces the binary by a shell script (fault cases).
    fn install_script(&self, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.dir.path().join(".capture-proxy.new");
        std::fs::write(&tmp, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
    fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).unwrap().ino()
    }
}

/// The first proxy process and every log line of it and its successors (they inherit its
/// stderr).
struct Fleet {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn clean_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k2 = k.to_string_lossy();
        if k2.starts_with("CAPTURE_PROXY_")
            || k2.starts_with("LISTEN_")
            || k2.starts_with("WATCHDOG_")
            || k2 == "NOTIFY_SOCKET"
            || k2 == "RUST_LOG"
        {
            cmd.env_remove(&k);
        }
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

impl Fleet {
    fn start(bin: &Path, origin: SocketAddr, trace: &Path, extra: &[&str]) -> Fleet {
        let mut cmd = clean_command(bin);
        cmd.args(["--destinationUri", &format!("http://{origin}")])
            .args(["--listenPort", "0", "--listen-address", "127.0.0.1"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--numThreads", "2"])
            .args(["--drain-timeout", &format!("{}s", DRAIN_TIMEOUT.as_secs())])
            .args(["--traceDirectory", trace.to_str().unwrap()])
            .args(extra)
            .stderr(Stdio::piped());
        Self::spawn(cmd)
    }

    fn spawn(cmd: Command) -> Fleet {
        Self::spawn_hook(cmd, &mut |_| {})
    }

    /// [`Fleet::spawn`], calling `hook` with every line seen before the `listening` lines.
    fn spawn_hook(mut cmd: Command, hook: &mut dyn FnMut(&str)) -> Fleet {
        let mut child = cmd.spawn().expect("spawn capture-proxy");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let log2 = log.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut f = Fleet {
            child,
            lines,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let (mut proxy, mut admin) = (None, None);
        while proxy.is_none() || admin.is_none() {
            let line = f.next_line("the `listening` lines");
            hook(&line);
            match parse_listening(&line) {
                Some(Listening::Proxy { addr, .. }) => proxy = Some(addr),
                Some(Listening::Admin(a)) => admin = Some(a),
                None => {}
            }
        }
        f.addr = proxy.unwrap();
        f.admin = admin.unwrap();
        f
    }

    fn next_line(&self, what: &str) -> String {
        match self.lines.recv_timeout(BOUND) {
            Ok(l) => l,
            Err(_) => panic!("no log line ({what}) within {BOUND:?}:\n{}", self.log()),
        }
    }

    /// Waits for a log line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        loop {
            let l = self.next_line(needle);
            if l.contains(needle) {
                return l;
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for the first process (our child) to exit; its exit code. Through
    /// `Child`, so that its drop never signals a reaped (maybe reused) pid.
    fn wait_child(&mut self) -> Option<i32> {
        let end = Instant::now() + BOUND;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            if Instant::now() >= end {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGUSR2 to `pid`; waits for its "the new process serves" line; the new pid.
    fn handover(&self, pid: i32) -> i32 {
        kill(pid, libc::SIGUSR2);
        let line = self.wait_line("handover: the new process serves");
        assert_eq!(
            log_field(&line, "pid").and_then(|p| p.parse::<i32>().ok()),
            Some(pid),
            "{line}"
        );
        log_field(&line, "new_pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no new_pid in {line:?}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests resent on a new connection because a reused idle keep-alive connection was
    /// closed before any byte of the response (the stale-connection rule every HTTP client
    /// applies; RFC 9112 §9.3.1). The capture shows they were never forwarded the first time.
    stale_retries: AtomicU64,
    /// Keep-alive connections found closed by the server before reuse (nothing resent).
    closed_between: AtomicU64,
    failures: Mutex<Vec<String>>,
    /// Tags of requests that got their response.
    answered: Mutex<Vec<String>>,
    ready_ok: AtomicU64,
    ready_bad: Mutex<Vec<String>>,
}

enum Attempt {
    Answered,
    /// Closed before any response byte.
    ClosedBeforeResponse(String),
    Failed(String),
}

/// Reads one response with a Content-Length body; checks it names `tag`.
fn read_response(s: &mut TcpStream, tag: &str, buf: &mut Vec<u8>) -> Attempt {
    buf.clear();
    let mut tmp = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut tmp) {
            Ok(0) if buf.is_empty() => return Attempt::ClosedBeforeResponse("eof".into()),
            Ok(0) => return Attempt::Failed(format!("eof in response head ({} bytes)", buf.len())),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) if buf.is_empty() && e.kind() != std::io::ErrorKind::WouldBlock => {
                return Attempt::ClosedBeforeResponse(e.to_string())
            }
            Err(e) => return Attempt::Failed(format!("read: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Attempt::Failed(format!("status: {}", head.lines().next().unwrap_or("")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut tmp) {
            Ok(0) => return Attempt::Failed("eof in response body".into()),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Attempt::Failed(format!("read body: {e}")),
        }
    }
    let body = &buf[head_end..head_end + len];
    if !body.windows(tag.len()).any(|w| w == tag.as_bytes()) {
        return Attempt::Failed(format!("response body does not name {tag}"));
    }
    Attempt::Answered
}

/// Whether the peer has closed `s` (EOF or reset pending), without blocking.
fn peer_closed(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let r = s.peek(&mut b);
    let _ = s.set_nonblocking(false);
    match r {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// A keep-alive client: up to `KEEPALIVE_REQUESTS` requests per connection, alternating
/// `GET /slow` (an exchange in flight when a drain begins) and `POST /echo`.
fn keepalive_client(id: usize, addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut buf = Vec::new();
    let mut n = 0usize;
    'conns: while !stop.load(Ordering::Acquire) {
        let mut s = match connect(addr) {
            Ok(s) => s,
            Err(e) => {
                t.failures
                    .lock()
                    .unwrap()
                    .push(format!("k{id}: connect: {e}"));
                return;
            }
        };
        let mut used = 0;
        while used < KEEPALIVE_REQUESTS && !stop.load(Ordering::Acquire) {
            n += 1;
            let tag = format!("k{id}x{n}z");
            let req = if n % 2 == 0 {
                format!("GET /slow?ms=5&tag={tag} HTTP/1.1\r\nHost: x\r\nX-Req: {tag}\r\n\r\n")
            } else {
                format!(
                    "POST /echo HTTP/1.1\r\nHost: x\r\nX-Req: {tag}\r\nContent-Length: {}\r\n\r\n{tag}",
                    tag.len()
                )
            };
            if used > 0 && peer_closed(&s) {
                // As pooled HTTP clients check before reusing a connection (urllib3, …): the
                // server closed it between responses; take a new one, nothing was sent.
                t.closed_between.fetch_add(1, Ordering::Relaxed);
                n -= 1;
                continue 'conns;
            }
            let sent = s.write_all(req.as_bytes());
            let r = match sent {
                Ok(()) => read_response(&mut s, &tag, &mut buf),
                Err(e) => Attempt::ClosedBeforeResponse(format!("write: {e}")),
            };
            match r {
                Attempt::Answered => {
                    used += 1;
                    t.ok.fetch_add(1, Ordering::Relaxed);
                    t.answered.lock().unwrap().push(tag);
                    let closing = String::from_utf8_lossy(&buf)
                        .to_ascii_lowercase()
                        .contains("\r\nconnection: close");
                    if closing {
                        continue 'conns;
                    }
                }
                Attempt::ClosedBeforeResponse(why) if used > 0 => {
                    // Stale keep-alive connection: resend the same request on a new one.
                    t.stale_retries.fetch_add(1, Ordering::Relaxed);
                    let mut s2 = match connect(addr) {
                        Ok(s) => s,
                        Err(e) => {
                            t.failures
                                .lock()
                                .unwrap()
                                .push(format!("{tag}: reconnect: {e}"));
                            return;
                        }
                    };
                    match s2
                        .write_all(req.as_bytes())
                        .map(|()| read_response(&mut s2, &tag, &mut buf))
                    {
                        Ok(Attempt::Answered) => {
                            t.ok.fetch_add(1, Ordering::Relaxed);
                            t.answered.lock().unwrap().push(tag);
                            s = s2;
                            used = 1;
                        }
                        _ => {
                            t.failures
                                .lock()
                                .unwrap()
                                .push(format!("{tag}: failed after a stale retry ({why})"));
                            continue 'conns;
                        }
                    }
                }
                Attempt::ClosedBeforeResponse(why) | Attempt::Failed(why) => {
                    t.failures.lock().unwrap().push(format!("{tag}: {why}"));
                    continue 'conns;
                }
            }
        }
    }
}

/// A connection-per-request client (`Connection: close`).
fn per_request_client(id: usize, addr: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let mut buf = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) {
        n += 1;
        let tag = format!("c{id}x{n}z");
        let req = format!(
            "GET /small?tag={tag} HTTP/1.1\r\nHost: x\r\nX-Req: {tag}\r\nConnection: close\r\n\r\n"
        );
        let r = match connect(addr) {
            Ok(mut s) => match s.write_all(req.as_bytes()) {
                Ok(()) => read_response(&mut s, &tag, &mut buf),
                Err(e) => Attempt::Failed(format!("write: {e}")),
            },
            Err(e) => Attempt::Failed(format!("connect: {e}")),
        };
        match r {
            Attempt::Answered => {
                t.ok.fetch_add(1, Ordering::Relaxed);
                t.answered.lock().unwrap().push(tag);
            }
            Attempt::ClosedBeforeResponse(why) | Attempt::Failed(why) => {
                t.failures.lock().unwrap().push(format!("{tag}: {why}"));
            }
        }
    }
}

/// Probes `/ready` every 20 ms, as a load balancer's health check (much faster).
fn ready_prober(admin: SocketAddr, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    while !stop.load(Ordering::Acquire) {
        let r = std::panic::catch_unwind(|| admin_get(admin, "/ready"));
        match r {
            Ok((200, _)) => {
                t.ready_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok((status, body)) => t
                .ready_bad
                .lock()
                .unwrap()
                .push(format!("{status} {}", body.trim())),
            Err(_) => t.ready_bad.lock().unwrap().push("no answer".into()),
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The load: client threads and the prober, stopped after `LOAD_FOR` or by `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<thread::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    fn start(addr: SocketAddr, admin: Option<SocketAddr>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut threads = Vec::new();
        for i in 0..KEEPALIVE_CLIENTS {
            let (s, t) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || keepalive_client(i, addr, s, t)));
        }
        for i in 0..PER_REQUEST_CLIENTS {
            let (s, t) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || per_request_client(i, addr, s, t)));
        }
        if let Some(a) = admin {
            let (s, t) = (stop.clone(), tally.clone());
            threads.push(thread::spawn(move || ready_prober(a, s, t)));
        }
        Load {
            stop,
            tally,
            threads,
            started: Instant::now(),
        }
    }

    /// Waits (bounded) until `n` more requests were answered.
    fn wait_answered(&self, n: u64) {
        let target = self.tally.ok.load(Ordering::Relaxed) + n;
        let end = Instant::now() + BOUND;
        while self.tally.ok.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < end, "load made no progress");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> Arc<Tally> {
        let left = LOAD_FOR.saturating_sub(self.started.elapsed());
        thread::sleep(left);
        self.stop.store(true, Ordering::Release);
        for t in self.threads {
            t.join().unwrap();
        }
        self.tally
    }
}

/// Each tag's occurrences in the captured client→proxy bytes of every record in `dir`, and
/// checks each connection id belongs to one process (node id).
fn captured_tags(dir: &Path, strict: bool) -> HashMap<String, usize> {
    let trace = if strict {
        Trace::load(dir)
    } else {
        Trace::load_partial(dir)
    };
    let mut node_of: HashMap<String, String> = HashMap::new();
    let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
    for (r, _) in &trace.records {
        let n = node_of
            .entry(r.connection_id.clone())
            .or_insert_with(|| r.node_id.clone());
        assert_eq!(
            *n, r.node_id,
            "connection id {} used by two processes",
            r.connection_id
        );
        let b = bytes.entry(r.connection_id.clone()).or_default();
        for o in &r.sub_stream {
            match &o.capture {
                Some(Capture::Read(x)) => b.extend_from_slice(&x.data),
                Some(Capture::ReadSegment(x)) => b.extend_from_slice(&x.data),
                _ => {}
            }
        }
    }
    let mut out = HashMap::new();
    for b in bytes.values() {
        let text = String::from_utf8_lossy(b);
        for part in text.split("X-Req: ").skip(1) {
            let tag = part.split("\r\n").next().unwrap_or("").to_string();
            *out.entry(tag).or_insert(0) += 1;
        }
    }
    out
}

/// Every answered tag captured exactly once, nothing captured twice; the mismatches.
fn capture_mismatches(dir: &Path, answered: &[String], strict: bool) -> Vec<String> {
    let got = captured_tags(dir, strict);
    let mut bad = Vec::new();
    for tag in answered {
        match got.get(tag) {
            Some(1) => {}
            other => bad.push(format!("{tag}: captured {other:?} times")),
        }
    }
    for (tag, n) in &got {
        if *n > 1 {
            bad.push(format!("{tag}: captured {n} times"));
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

fn node_ids(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = Trace::load(dir)
        .records
        .iter()
        .map(|(r, _)| r.node_id.clone())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn two_handovers_under_load_lose_and_duplicate_nothing() {
    become_subreaper();
    let bin = Binary::new();
    let origin = Origin::start();
    let trace = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(
        &bin.path(),
        origin.addr(),
        trace.path(),
        &["--handover-timeout", "20s"],
    );
    let pid1 = fleet.child.id() as i32;
    let load = Load::start(fleet.addr, Some(fleet.admin));
    load.wait_answered(200);

    // Handover 1: same binary.
    let pid2 = fleet.handover(pid1);
    let drain1 = Instant::now();
    let first = fleet.wait_child();
    let drain1 = drain1.elapsed();
    assert_eq!(first, Some(0), "old process exit:\n{}", fleet.log());
    assert!(drain1 < DRAIN_TIMEOUT, "first drain took {drain1:?}");
    load.wait_answered(200);

    // Handover 2: after an upgrade (a new file at the binary's path).
    bin.install_copy();
    let new_inode = bin.inode();
    let pid3 = fleet.handover(pid2);
    let drain2 = Instant::now();
    assert_eq!(
        wait_pid(pid2, BOUND),
        Some(0),
        "second old process exit:\n{}",
        fleet.log()
    );
    let drain2 = drain2.elapsed();
    assert!(drain2 < DRAIN_TIMEOUT, "second drain took {drain2:?}");
    let running = std::fs::metadata(format!("/proc/{pid3}/exe"))
        .unwrap()
        .ino();
    assert_eq!(
        running, new_inode,
        "the last process runs the replaced binary"
    );
    load.wait_answered(200);

    let t = load.finish();
    kill(pid3, libc::SIGTERM);
    assert_eq!(
        wait_pid(pid3, BOUND),
        Some(0),
        "last process exit:\n{}",
        fleet.log()
    );

    let failures = t.failures.lock().unwrap().clone();
    let answered = t.answered.lock().unwrap().clone();
    let ready_bad = t.ready_bad.lock().unwrap().clone();
    let mismatches = capture_mismatches(trace.path(), &answered, true);
    let at_origin = origin.requests().len();
    eprintln!(
        "handover test: drains {drain1:?} and {drain2:?}; {} requests answered, {} failed, {} keep-alive connections closed between requests, {} stale keep-alive retries, {} /ready 200 and {} other, {} requests at the origin, {} capture mismatches, {} node ids",
        answered.len(),
        failures.len(),
        t.closed_between.load(Ordering::Relaxed),
        t.stale_retries.load(Ordering::Relaxed),
        t.ready_ok.load(Ordering::Relaxed),
        ready_bad.len(),
        at_origin,
        mismatches.len(),
        node_ids(trace.path()).len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}; capture mismatches: {mismatches:?}"
    );
    assert!(
        ready_bad.is_empty(),
        "/ready not 200 during the handovers: {ready_bad:?}"
    );
    assert!(
        mismatches.is_empty(),
        "capture mismatches: {:?}",
        &mismatches[..mismatches.len().min(20)]
    );
    assert_eq!(
        at_origin,
        answered.len(),
        "each request reached the origin once"
    );
    assert_eq!(
        node_ids(trace.path()).len(),
        3,
        "three processes, three node ids"
    );
}

/// A replacement binary that exits, one that never reports ready, and none at all: each
/// handover fails, is logged and counted, and the process keeps serving.
#[test]
fn failed_handovers_keep_the_old_process_serving() {
    become_subreaper();
    let bin = Binary::new();
    let origin = Origin::start();
    let trace = tempfile::tempdir().unwrap();
    let mut fleet = Fleet::start(
        &bin.path(),
        origin.addr(),
        trace.path(),
        &["--handover-timeout", "1s"],
    );
    let pid = fleet.child.id() as i32;
    let serves = |what: &str| {
        let mut s = connect(fleet.addr).unwrap();
        let tag = format!("f{}z", what.len());
        s.write_all(
            format!("GET /small?tag={tag} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut buf = Vec::new();
        assert!(
            matches!(read_response(&mut s, &tag, &mut buf), Attempt::Answered),
            "{what}: the old process no longer serves:\n{}",
            fleet.log()
        );
    };
    let cases: [(&str, Option<&str>, &str); 3] = [
        ("exits", Some("exit 3"), "exited before it was ready"),
        ("hangs", Some("exec sleep 30"), "was not ready within"),
        ("missing", None, "cannot start"),
    ];
    for (i, (what, script, error)) in cases.iter().enumerate() {
        match script {
            Some(body) => bin.install_script(body),
            None => std::fs::remove_file(bin.path()).unwrap(),
        }
        kill(pid, libc::SIGUSR2);
        let line = fleet.wait_line("handover failed");
        assert!(line.contains(error), "{what}: {line}");
        assert_eq!(
            common::admin::metric(fleet.admin, "handoverFailures_total"),
            i as u64 + 1
        );
        serves(what);
        assert_eq!(admin_get(fleet.admin, "/ready").0, 200);
    }
    assert_eq!(common::admin::metric(fleet.admin, "handovers_total"), 3);
    kill(pid, libc::SIGTERM);
    let code = fleet.wait_child();
    assert_eq!(code, Some(0), "{}", fleet.log());
}

/// Plain SO_REUSEPORT co-existence: a second process started on the same port serves
/// alongside the first.
#[test]
fn a_second_process_can_share_the_port() {
    become_subreaper();
    let bin = Binary::new();
    let origin = Origin::start();
    let trace = tempfile::tempdir().unwrap();
    let mut a = Fleet::start(&bin.path(), origin.addr(), trace.path(), &[]);
    let port = a.addr.port().to_string();
    let mut cmd = clean_command(&bin.path());
    cmd.args(["--destinationUri", &format!("http://{}", origin.addr())])
        .args(["--listenPort", &port, "--listen-address", "127.0.0.1"])
        .args(["--admin-listen", "127.0.0.1:0", "--numThreads", "1"])
        .args(["--traceDirectory", trace.path().to_str().unwrap()])
        .stderr(Stdio::piped());
    let mut b = Fleet::spawn(cmd);
    assert_eq!(b.addr, a.addr);
    let load = Load::start(a.addr, None);
    load.wait_answered(100);
    let t = load.finish();
    assert!(t.failures.lock().unwrap().is_empty());
    for f in [&mut a, &mut b] {
        assert!(
            common::admin::metric(f.admin, "connectionsAccepted_total") > 0,
            "both processes accept"
        );
        kill(f.child.id() as i32, libc::SIGTERM);
        assert_eq!(f.wait_child(), Some(0));
    }
}

/// The oracle, shown failing: the same load while the process is replaced without a
/// handover. `kill`: SIGKILL (no drain); `rebind`: a second process binds the port
/// (SO_REUSEPORT) and the first gets SIGTERM (its listeners' queues are lost unless
/// `net.ipv4.tcp_migrate_req=1`).
fn replace_without_handover(kill_old: bool) -> (usize, usize, usize) {
    become_subreaper();
    let bin = Binary::new();
    let origin = Origin::start();
    let trace = tempfile::tempdir().unwrap();
    let mut a = Fleet::start(&bin.path(), origin.addr(), trace.path(), &[]);
    let load = Load::start(a.addr, None);
    load.wait_answered(200);
    let mut cmd = clean_command(&bin.path());
    cmd.args(["--destinationUri", &format!("http://{}", origin.addr())])
        .args(["--listenPort", &a.addr.port().to_string()])
        .args(["--listen-address", "127.0.0.1", "--numThreads", "2"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--traceDirectory", trace.path().to_str().unwrap()])
        .stderr(Stdio::piped());
    let mut b = Fleet::spawn(cmd);
    let pid = a.child.id() as i32;
    kill(
        pid,
        if kill_old {
            libc::SIGKILL
        } else {
            libc::SIGTERM
        },
    );
    let _ = a.wait_child();
    load.wait_answered(200);
    let t = load.finish();
    kill(b.child.id() as i32, libc::SIGTERM);
    let _ = b.wait_child();
    let failures = t.failures.lock().unwrap().clone();
    let answered = t.answered.lock().unwrap().clone();
    // A killed process may leave a partly written last line: read what is whole.
    let mismatches = capture_mismatches(trace.path(), &answered, !kill_old);
    eprintln!(
        "{}: {} answered, {} failed (e.g. {:?}), {} capture mismatches (e.g. {:?})",
        if kill_old {
            "SIGKILL"
        } else {
            "rebind + SIGTERM"
        },
        answered.len(),
        failures.len(),
        failures.first(),
        mismatches.len(),
        mismatches.first()
    );
    (answered.len(), failures.len(), mismatches.len())
}

#[test]
#[ignore = "demonstration: the oracle fails when the old process is killed"]
fn oracle_fails_when_the_old_process_is_killed() {
    let (_, failures, _) = replace_without_handover(true);
    assert!(failures > 0, "SIGKILL under load must fail requests");
}

#[test]
#[ignore = "demonstration: plain rebinding; failures depend on the accept queues at the moment"]
fn oracle_on_plain_rebind() {
    let (_, failures, mismatches) = replace_without_handover(false);
    eprintln!("rebind: {failures} failures, {mismatches} mismatches");
}

/// Real systemd socket activation (`systemd-socket-activate`, as a `.socket` unit passes
/// sockets: `LISTEN_PID`, `LISTEN_FDS`, one socket for all workers): the proxy serves on the
/// passed socket, and a handover from it passes that socket on. Skipped (with a note) where
/// the tool is not installed.
#[test]
fn socket_activation_then_handover() {
    let Some(tool) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists()) else {
        eprintln!("systemd-socket-activate not installed: skipped");
        return;
    };
    become_subreaper();
    let bin = Binary::new();
    let origin = Origin::start();
    let trace = tempfile::tempdir().unwrap();
    // A free port: bind, note, release (the tool binds it again at once).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = clean_command(Path::new(tool));
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=proxy"])
        .arg(bin.path())
        .args(["--destinationUri", &format!("http://{}", origin.addr())])
        .args(["--listenPort", "0", "--listen-address", "127.0.0.1"])
        .args(["--admin-listen", "127.0.0.1:0", "--numThreads", "2"])
        .args(["--traceDirectory", trace.path().to_str().unwrap()])
        .stderr(Stdio::piped());
    // The tool starts the proxy on the first connection (as a `.socket` unit does).
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut first: Option<thread::JoinHandle<bool>> = None;
    let mut fleet = Fleet::spawn_hook(cmd, &mut |line| {
        if line.starts_with("Listening on") && first.is_none() {
            first = Some(thread::spawn(move || {
                let mut s = connect(addr).unwrap();
                s.write_all(
                    b"GET /small?tag=first0z HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .unwrap();
                let mut buf = Vec::new();
                matches!(
                    read_response(&mut s, "first0z", &mut buf),
                    Attempt::Answered
                )
            }));
        }
    });
    assert!(
        first.expect("the tool listened").join().unwrap(),
        "first request"
    );
    assert_eq!(fleet.addr.port(), port, "serves on the passed socket");
    let load = Load::start(fleet.addr, None);
    load.wait_answered(100);
    let pid = fleet.child.id() as i32;
    let next = fleet.handover(pid);
    assert_eq!(fleet.wait_child(), Some(0), "{}", fleet.log());
    load.wait_answered(100);
    let t = load.finish();
    kill(next, libc::SIGTERM);
    assert_eq!(wait_pid(next, BOUND), Some(0), "{}", fleet.log());
    let failures = t.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:?}");
    let answered = t.answered.lock().unwrap().clone();
    let mismatches = capture_mismatches(trace.path(), &answered, true);
    assert!(mismatches.is_empty(), "{mismatches:?}");
}
