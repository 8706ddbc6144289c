//! The systemd notify protocol of the real binary, against a fake service manager: the test
//! binds a unix datagram socket, starts `capture-proxy` with `NOTIFY_SOCKET` pointing at it
//! (as `Type=notify` does) and checks what arrives: `READY=1` (with `MAINPID`) only once the
//! port accepts connections and `/ready` says so, `WATCHDOG=1` pings at half of
//! `WATCHDOG_USEC` (none when `WATCHDOG_PID` names another process), `STOPPING=1` after
//! SIGTERM while a request is in flight, then exit status 0; nothing but the exit status when
//! start-up fails; on reload (SIGUSR2) the new process's own `READY=1` + `MAINPID=`.
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`), `tests/common` (origin, raw
//! client), libc (SIGTERM, SIGUSR2, waitpid), tempfile, std.
//!
//! Invariant: every wait is bounded; the proxy only listens on and talks to 127.0.0.1.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::admin::admin_get;
use common::binary::{parse_listening, proxy_command, Listening};
use common::{get, Client, Origin, FORWARD_WAIT};

/// Most time (s) from spawning the proxy to `READY=1`: it binds at once; generous because
/// test binaries run in parallel on a small shared machine.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most time (s) from SIGTERM to exit: the 10 s `--drain-timeout` given below plus the sink's
/// final flush.
const EXIT_TIMEOUT: Duration = Duration::from_secs(40);
/// `WATCHDOG_USEC` the tests set (µs): pings every 200 ms, so a few arrive within a second.
const WATCHDOG_USEC: u64 = 400_000;
/// How long (s) the tests collect watchdog pings.
const WATCHDOG_WINDOW: Duration = Duration::from_millis(1500);

/// The fake service manager's end of `NOTIFY_SOCKET`.
struct NotifySocket {
    sock: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            sock,
            path,
            _dir: dir,
        }
    }

    /// The next message, or `None` after `timeout`.
    fn recv(&self, timeout: Duration) -> Option<String> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Every message within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
        let end = Instant::now() + window;
        let mut v = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return v;
            }
            if let Some(m) = self.recv(left) {
                v.push(m);
            }
        }
    }

    /// Skips watchdog pings until a message containing `want` arrives (bounded).
    fn wait_for(&self, want: &str, bound: Duration) -> String {
        let end = Instant::now() + bound;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Some(m) if m.lines().any(|l| l == want) => return m,
                Some(m) if m == "WATCHDOG=1" => continue,
                Some(m) => panic!("unexpected notify message {m:?} while waiting for {want}"),
                None => panic!("no {want} within {bound:?}"),
            }
        }
    }
}

/// A running proxy binary with its stderr collected.
struct ProxyProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    _trace: tempfile::TempDir,
}

impl ProxyProcess {
    fn spawn(notify: &NotifySocket, origin: SocketAddr, extra_env: &[(&str, String)]) -> Self {
        Self::spawn_args(
            notify,
            &[
                "--destinationUri",
                &format!("http://{origin}"),
                "--listenPort",
                "0",
            ],
            extra_env,
        )
    }

    fn spawn_args(notify: &NotifySocket, args: &[&str], extra_env: &[(&str, String)]) -> Self {
        let trace = tempfile::tempdir().unwrap();
        let mut cmd = proxy_command();
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("WATCHDOG_") {
                cmd.env_remove(&k);
            }
        }
        cmd.args(args)
            .args(["--listen-address", "127.0.0.1"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--drain-timeout", "10s"])
            .args(["--traceDirectory", trace.path().to_str().unwrap()])
            .env("NOTIFY_SOCKET", &notify.path)
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn capture-proxy");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        ProxyProcess {
            child,
            lines,
            log: Vec::new(),
            _trace: trace,
        }
    }

    /// The address of the first `listening` line of the admin endpoint (`admin`) or of the
    /// client-facing listener, waiting for it (bounded).
    fn listening_addr(&mut self, admin: bool) -> SocketAddr {
        let end = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(a) = self.log.iter().find_map(|l| match parse_listening(l)? {
                Listening::Admin(a) if admin => Some(a),
                Listening::Proxy { addr, .. } if !admin => Some(addr),
                _ => None,
            }) {
                return a;
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.log.push(l),
                Err(_) => panic!(
                    "no listening line (admin: {admin}):\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let end = Instant::now() + bound;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                while let Ok(l) = self.lines.try_recv() {
                    self.log.push(l);
                }
                return st;
            }
            assert!(
                Instant::now() < end,
                "capture-proxy still running after {bound:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn ready_then_watchdog_then_stopping_and_exit_0() {
    let origin = Origin::start();
    let notify = NotifySocket::bind();
    let mut p = ProxyProcess::spawn(
        &notify,
        origin.addr(),
        &[("WATCHDOG_USEC", WATCHDOG_USEC.to_string())],
    );

    // READY=1 is the first message, names the main PID, and means what it says: the port
    // accepts and serves connections and /ready answers 200.
    let ready = notify
        .recv(STARTUP_TIMEOUT)
        .expect("no READY=1 within the start-up bound");
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "first message {ready:?}");
    assert!(
        lines.contains(&format!("MAINPID={}", p.child.id()).as_str()),
        "{ready:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("STATUS=")), "{ready:?}");
    let addr = p.listening_addr(false);
    let admin = p.listening_addr(true);
    let mut c = Client::connect(addr);
    c.send(&get("/small"));
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(admin_get(admin, "/ready").0, 200);

    // Watchdog pings at WATCHDOG_USEC / 2, and nothing else while running.
    let msgs = notify.collect(WATCHDOG_WINDOW);
    assert!(msgs.iter().all(|m| m == "WATCHDOG=1"), "{msgs:?}");
    assert!(
        msgs.len() >= 3,
        "{} watchdog pings in {WATCHDOG_WINDOW:?} at a {} ms interval",
        msgs.len(),
        WATCHDOG_USEC / 2000
    );

    // SIGTERM with a request in flight: STOPPING=1, the request still answered, exit 0.
    c.send(&get("/slow?ms=1000"));
    assert!(
        origin.wait_requests(2, FORWARD_WAIT),
        "request not forwarded"
    );
    p.sigterm();
    let stopping = notify.wait_for("STOPPING=1", EXIT_TIMEOUT);
    assert!(stopping.starts_with("STOPPING=1"), "{stopping:?}");
    assert_eq!(c.read_response(false).status, 200);
    let st = p.wait_exit(EXIT_TIMEOUT);
    assert_eq!(st.code(), Some(0), "exit {st:?}:\n{}", p.log.join("\n"));
    // Nothing after STOPPING=1 but (at most) late pings.
    while let Some(m) = notify.recv(Duration::from_millis(100)) {
        assert_eq!(m, "WATCHDOG=1", "after STOPPING=1");
    }
}

#[test]
fn no_watchdog_pings_when_watchdog_pid_is_another_process() {
    let origin = Origin::start();
    let notify = NotifySocket::bind();
    let mut p = ProxyProcess::spawn(
        &notify,
        origin.addr(),
        &[
            ("WATCHDOG_USEC", WATCHDOG_USEC.to_string()),
            // PID 1 is never the proxy.
            ("WATCHDOG_PID", "1".to_string()),
        ],
    );
    let ready = notify.recv(STARTUP_TIMEOUT).expect("no READY=1");
    assert!(ready.starts_with("READY=1"), "{ready:?}");
    let msgs = notify.collect(WATCHDOG_WINDOW);
    assert!(msgs.is_empty(), "{msgs:?}");
    p.sigterm();
    notify.wait_for("STOPPING=1", EXIT_TIMEOUT);
    assert_eq!(p.wait_exit(EXIT_TIMEOUT).code(), Some(0));
}

#[test]
fn failed_start_sends_nothing_and_exits_1() {
    let origin = Origin::start();
    let notify = NotifySocket::bind();
    // The port is taken (by a socket without SO_REUSEPORT): binding it fails.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut p = ProxyProcess::spawn_args(
        &notify,
        &[
            "--destinationUri",
            &format!("http://{}", origin.addr()),
            "--listenPort",
            &port,
        ],
        &[("WATCHDOG_USEC", WATCHDOG_USEC.to_string())],
    );
    let st = p.wait_exit(STARTUP_TIMEOUT);
    assert_eq!(st.code(), Some(1), "{}", p.log.join("\n"));
    assert_eq!(notify.recv(Duration::from_millis(200)), None);
    drop(taken);
}

/// `systemctl reload` (SIGUSR2): the new process names itself the main process with its own
/// `READY=1` (`NotifyAccess=all` in the unit), pings the watchdog from then on, the old one
/// sends no `STOPPING=1` (the service is not stopping) and exits 0; the port and `/ready`
/// keep answering; SIGTERM to the new main process then stops the service as usual.
#[test]
fn reload_hands_over_and_the_new_process_becomes_the_main_pid() {
    // The new process outlives its parent (our child): adopt it to collect its exit status.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a flag of this process.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let origin = Origin::start();
    let notify = NotifySocket::bind();
    let mut p = ProxyProcess::spawn(
        &notify,
        origin.addr(),
        &[("WATCHDOG_USEC", WATCHDOG_USEC.to_string())],
    );
    let old = p.child.id();
    let ready = notify.recv(STARTUP_TIMEOUT).expect("no READY=1");
    assert!(ready.contains(&format!("MAINPID={old}")), "{ready:?}");
    let addr = p.listening_addr(false);
    let admin = p.listening_addr(true);

    // SAFETY: kill(2) of our own child, not yet reaped.
    assert_eq!(unsafe { libc::kill(old as libc::pid_t, libc::SIGUSR2) }, 0);
    let handed = notify.wait_for("READY=1", STARTUP_TIMEOUT);
    let new: u32 = handed
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MAINPID in {handed:?}"));
    assert_ne!(new, old, "{handed:?}");
    let st = p.wait_exit(EXIT_TIMEOUT);
    assert_eq!(
        st.code(),
        Some(0),
        "old process: {st:?}:\n{}",
        p.log.join("\n")
    );
    // The old one sent nothing but (at most) watchdog pings; the new one pings too.
    let msgs = notify.collect(WATCHDOG_WINDOW);
    assert!(msgs.iter().all(|m| m == "WATCHDOG=1"), "{msgs:?}");
    assert!(
        msgs.len() >= 2,
        "watchdog pings after the handover: {msgs:?}"
    );
    let mut c = Client::connect(addr);
    c.send(&get("/small"));
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(admin_get(admin, "/ready").0, 200);

    // SAFETY: kill(2) of the process the handover started (the test's grandchild).
    assert_eq!(unsafe { libc::kill(new as libc::pid_t, libc::SIGTERM) }, 0);
    notify.wait_for("STOPPING=1", EXIT_TIMEOUT);
    let end = Instant::now() + EXIT_TIMEOUT;
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid on the orphan this process adopted (PR_SET_CHILD_SUBREAPER below).
        let r = unsafe { libc::waitpid(new as libc::pid_t, &mut status, libc::WNOHANG) };
        if r == new as libc::pid_t {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{status}"
            );
            break;
        }
        assert!(Instant::now() < end, "new process still running");
        thread::sleep(Duration::from_millis(10));
    }
}
