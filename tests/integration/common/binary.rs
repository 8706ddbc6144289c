//! The real `capture-proxy` binary as the tests run it: a command with a clean configuration
//! environment, one-shot runs bounded in time, and a long-running [`ProxyProcess`] whose
//! addresses are learnt from its own `listening addr=…` / `admin endpoint listening addr=…`
//! log lines, with its stderr collected for failure messages, signals, and a bounded wait for
//! its exit.
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`), libc (signals), std.
//!
//! Invariant: every wait is bounded by the caller's bound (a broken binary fails a test, never
//! hangs it); readiness is the proxy's own log line, never a sleep; a [`ProxyProcess`] is
//! killed and reaped when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Most time (s) from spawning the proxy to its `listening` lines: it binds at once; generous
/// because the test binaries run in parallel on a shared 2-core machine.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two checks of whether the process exited (ms).
const EXIT_POLL: Duration = Duration::from_millis(10);

/// The binary with a clean configuration environment: no inherited `CAPTURE_PROXY_*`
/// variables (they would configure it), no `RUST_LOG` (the default `info` level is what
/// prints the `listening` lines the tests wait for), stdin closed.
pub fn proxy_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capture-proxy"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CAPTURE_PROXY_") {
            cmd.env_remove(&k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a one-shot invocation to completion (bounded by `bound`: killed and a panic past it)
/// and returns its output.
pub fn run_command(mut cmd: Command, bound: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let child = cmd.spawn().expect("spawn capture-proxy");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(out) => out.expect("wait for capture-proxy"),
        Err(_) => {
            // SAFETY: plain kill(2) of the child we spawned (not yet reaped: it is running).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("capture-proxy {what} did not finish within {bound:?}");
        }
    }
}

/// `capture-proxy ARGS` run to completion (bounded by `bound`).
pub fn run_args(args: &[&str], bound: Duration) -> Output {
    let mut cmd = proxy_command();
    cmd.args(args);
    run_command(cmd, bound)
}

/// Lossy text of a command's output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The value of ` name=` in a log line (quotes trimmed).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let v = line.get(at..)?.split_whitespace().next()?;
    Some(v.trim_matches('"').to_string())
}

/// What a `listening` log line announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listening {
    /// The client-facing listener: `listening addr=… node_id=… io="…"`.
    Proxy { addr: SocketAddr, io: String },
    /// The admin endpoint: `admin endpoint listening addr=…`.
    Admin(SocketAddr),
}

/// Parses a `listening` line of the proxy (`None` for any other line).
pub fn parse_listening(line: &str) -> Option<Listening> {
    if line.contains("admin endpoint listening") {
        return Some(Listening::Admin(log_field(line, "addr")?.parse().ok()?));
    }
    if !line.contains(" listening ") || line.contains("admin") {
        return None;
    }
    Some(Listening::Proxy {
        addr: log_field(line, "addr")?.parse().ok()?,
        io: log_field(line, "io").unwrap_or_default(),
    })
}

/// A proxy process started from the binary, with its stderr collected; killed on drop.
pub struct ProxyProcess {
    pub child: Child,
    /// Every stderr line so far, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    /// The client-facing address from the `listening` line.
    pub addr: SocketAddr,
    /// The admin endpoint's address, when started with [`ProxyProcess::start_with_admin`].
    admin: Option<SocketAddr>,
    /// The `io=` value of the `listening` line (`io_uring` or `epoll`).
    pub io: String,
}

impl ProxyProcess {
    /// Spawns `cmd` (stdout discarded, stderr collected) and waits (bounded by `startup`) for
    /// its client-facing `listening addr=…` line.
    pub fn start(cmd: Command, startup: Duration) -> ProxyProcess {
        Self::spawn(cmd, startup, false)
    }

    /// [`ProxyProcess::start`], and also waits for the admin endpoint's `listening` line.
    pub fn start_with_admin(cmd: Command, startup: Duration) -> ProxyProcess {
        Self::spawn(cmd, startup, true)
    }

    fn spawn(mut cmd: Command, startup: Duration, with_admin: bool) -> ProxyProcess {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn capture-proxy");
        let stderr = child.stderr.take().expect("stderr piped");
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
        let mut p = ProxyProcess {
            child,
            log,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
            io: String::new(),
        };
        let mut proxy_seen = false;
        let deadline = Instant::now() + startup;
        while !proxy_seen || (with_admin && p.admin.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => match parse_listening(&line) {
                    Some(Listening::Proxy { addr, io }) => {
                        p.addr = addr;
                        p.io = io;
                        proxy_seen = true;
                    }
                    Some(Listening::Admin(a)) => p.admin = Some(a),
                    None => {}
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    panic!("no `listening` line(s) within {startup:?}:\n{}", p.stderr())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = p.child.wait().ok();
                    panic!(
                        "capture-proxy exited ({status:?}) before listening:\n{}",
                        p.stderr()
                    )
                }
            }
        }
        p
    }

    /// The admin endpoint's address; panics if the process was not started waiting for it.
    #[track_caller]
    pub fn admin(&self) -> SocketAddr {
        self.admin
            .expect("started with ProxyProcess::start_with_admin")
    }

    /// `http://` URL of the client-facing listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://` URL of the admin endpoint.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin())
    }

    /// One unlabelled sample of the process's `/metrics` (see [`super::admin::metric`]).
    pub fn metric(&self, name: &str) -> u64 {
        super::admin::metric(self.admin(), name)
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) of our own child, which has not been reaped yet (only `wait_exit`
        // and drop reap it, and both take `&mut self`).
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Waits (bounded by `bound`) for the process to exit; past it, kills it and panics.
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "capture-proxy still running {bound:?} after the wait began:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// SIGTERM, then asserts a clean exit (status 0) within `bound`.
    pub fn stop_ok(&mut self, bound: Duration) {
        self.sigterm();
        let st = self.wait_exit(bound);
        assert_eq!(
            st.code(),
            Some(0),
            "exit status {st:?} after SIGTERM:\n{}",
            self.stderr()
        );
    }

    /// Panics (with the log) if the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(st) = self.child.try_wait().expect("try_wait") {
            panic!("capture-proxy exited ({st}):\n{}", self.stderr());
        }
    }

    /// VmRSS of the process (bytes).
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    /// VmHWM, the peak resident memory of the process (bytes).
    pub fn rss_peak(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// A `kB` field of /proc/<pid>/status.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {field} line in {status}"))
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
