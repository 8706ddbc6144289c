//! Restarts and binary upgrades that lose no connection: the running process hands its
//! listening sockets (client-facing and admin) to a new process started from the binary on
//! disk, waits until that one is ready, then drains and exits. As nginx and HAProxy reload:
//! the new process receives the *same* sockets, so their accept queues are shared and nothing
//! queued is ever reset (rebinding the port with SO_REUSEPORT instead loses the old sockets'
//! queues unless `net.ipv4.tcp_migrate_req=1`).
//!
//! May depend on: std, libc (fcntl, dup, poll, getsockopt), nothing of the crate.
//!
//! The descriptors travel as systemd's socket activation passes them (`LISTEN_FDS`,
//! `LISTEN_FDNAMES`, descriptors from 3 on), so real socket activation works too: a
//! descriptor named `admin` is the admin endpoint's listener, every other one a
//! client-facing listener. systemd names the receiving process in `LISTEN_PID`; a handing-over
//! process cannot know its child's pid before `exec`, so it names itself in
//! `CAPTURE_PROXY_HANDOVER_FROM` instead (checked against the parent pid) and passes the write
//! end of a pipe in `CAPTURE_PROXY_HANDOVER_READY_FD`: the new process writes `READY` there
//! once it serves (EOF without it: it failed).
//!
//! Invariants: [`Inherited::from_env`] takes ownership of the passed descriptors once per
//! process (a second call finds nothing); everything this module opens is close-on-exec
//! except the descriptors it places for the successor, and those only in the child.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `LISTEN_FDNAMES` name of the admin endpoint's listener.
pub const FD_NAME_ADMIN: &str = "admin";
/// `LISTEN_FDNAMES` name of a client-facing listener.
pub const FD_NAME_PROXY: &str = "proxy";
/// First passed descriptor (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;
/// Most passed descriptors taken (a sanity bound on `LISTEN_FDS`).
const MAX_FDS: usize = 4096;
/// The handing-over process's pid (in place of `LISTEN_PID`).
pub const ENV_FROM: &str = "CAPTURE_PROXY_HANDOVER_FROM";
/// The descriptor the new process reports readiness on.
pub const ENV_READY_FD: &str = "CAPTURE_PROXY_HANDOVER_READY_FD";
/// What the new process writes on the readiness pipe.
const READY_MSG: &[u8] = b"READY\n";

/// Set once the passed descriptors were taken (they must be owned once).
static TAKEN: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("LISTEN_FDS={0:?} is not a descriptor count (0..={MAX_FDS})")]
    BadCount(String),
    #[error("passed descriptor {fd} is not a listening TCP socket ({reason})")]
    BadFd { fd: RawFd, reason: String },
    #[error("cannot prepare the new process's descriptors: {0}")]
    Prepare(std::io::Error),
    #[error("cannot start {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process (pid {pid}) exited before it was ready ({status})")]
    Exited { pid: u32, status: String },
    #[error("the new process (pid {pid}) closed its readiness pipe without reporting ready")]
    NoReport { pid: u32 },
    #[error("the new process (pid {pid}) was not ready within {timeout:?}")]
    NotReady { pid: u32, timeout: Duration },
    #[error("waiting for the new process: {0}")]
    Wait(std::io::Error),
}

/// Listening sockets passed to this process (by a handing-over predecessor or by systemd).
#[derive(Default)]
pub struct Inherited {
    /// Client-facing listeners, in the order passed.
    pub proxy: Vec<TcpListener>,
    /// The admin endpoint's listener.
    pub admin: Option<TcpListener>,
    /// The predecessor's pid, when this is a handover.
    pub from: Option<u32>,
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// Takes the descriptors passed per `LISTEN_FDS` (when `LISTEN_PID` is this process, or
    /// `CAPTURE_PROXY_HANDOVER_FROM` is its parent). Nothing passed: empty. Call it before
    /// anything else opens descriptors; the second call always finds nothing.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Inherited, HandoverError> {
        let Some(count) = env("LISTEN_FDS") else {
            return Ok(Inherited::default());
        };
        let me = std::process::id();
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let from = env(ENV_FROM).and_then(|p| p.trim().parse::<u32>().ok());
        let for_us = match env("LISTEN_PID") {
            Some(p) => p.trim().parse::<u32>().ok() == Some(me),
            None => from.is_some() && from.and_then(|f| i32::try_from(f).ok()) == Some(parent),
        };
        if !for_us || TAKEN.swap(true, Ordering::AcqRel) {
            return Ok(Inherited::default());
        }
        let n: usize = count
            .trim()
            .parse()
            .ok()
            .filter(|n| *n <= MAX_FDS)
            .ok_or_else(|| HandoverError::BadCount(count.clone()))?;
        let names_var = env("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names_var.split(':');
        let mut out = Inherited {
            from: if env("LISTEN_PID").is_some() {
                None
            } else {
                from
            },
            ..Inherited::default()
        };
        for i in 0..n {
            let fd = LISTEN_FDS_START + i as RawFd;
            let name = names.next().unwrap_or("");
            check_listening_tcp(fd)?;
            // SAFETY: the protocol passed `fd` to this process for it to own; `TAKEN` makes
            // sure it is taken once, and nothing else in the process refers to it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            set_cloexec(&owned).map_err(|e| HandoverError::BadFd {
                fd,
                reason: e.to_string(),
            })?;
            let l = TcpListener::from(owned);
            l.set_nonblocking(true).map_err(|e| HandoverError::BadFd {
                fd,
                reason: e.to_string(),
            })?;
            if name == FD_NAME_ADMIN && out.admin.is_none() {
                out.admin = Some(l);
            } else {
                out.proxy.push(l);
            }
        }
        if out.from.is_some() {
            if let Some(fd) = env(ENV_READY_FD).and_then(|v| v.trim().parse::<RawFd>().ok()) {
                // SAFETY: fcntl F_GETFD only probes whether `fd` is open.
                if fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
                    // SAFETY: the predecessor placed this pipe end for us alone (see above).
                    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                    let _ = set_cloexec(&owned);
                    out.ready = Some(owned);
                }
            }
        }
        Ok(out)
    }

    /// Tells a handing-over predecessor that this process serves (a no-op otherwise).
    pub fn report_ready(&mut self) -> std::io::Result<()> {
        match self.ready.take() {
            Some(fd) => std::fs::File::from(fd).write_all(READY_MSG),
            None => Ok(()),
        }
    }
}

fn check_listening_tcp(fd: RawFd) -> Result<(), HandoverError> {
    let bad = |reason: String| HandoverError::BadFd { fd, reason };
    let int_opt = |level: libc::c_int, opt: libc::c_int| -> std::io::Result<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large.
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(v)
        }
    };
    let domain = int_opt(libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(|e| bad(e.to_string()))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(bad(format!("address family {domain}")));
    }
    let kind = int_opt(libc::SOL_SOCKET, libc::SO_TYPE).map_err(|e| bad(e.to_string()))?;
    if kind != libc::SOCK_STREAM {
        return Err(bad(format!("socket type {kind}")));
    }
    let listening =
        int_opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN).map_err(|e| bad(e.to_string()))?;
    if listening == 0 {
        return Err(bad("not listening".into()));
    }
    Ok(())
}

fn set_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
fn dup_at_least(fd: RawFd, min: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor; `fd` is borrowed by the caller.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if d < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `d` is new and owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1, -1];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [r, w] = fds;
    // SAFETY: both are new descriptors owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) })
}

/// A new process started with this one's listening sockets, not yet known to be ready.
pub struct Successor {
    child: Child,
    ready: std::fs::File,
}

/// Starts `exe` with `args` and the listening sockets `proxy` (and `admin`) as descriptors
/// 3, 4, … (named per `LISTEN_FDNAMES`), the readiness pipe's write end after them. The
/// environment is this process's, minus `LISTEN_PID` and `WATCHDOG_PID` (they name this
/// process).
pub fn spawn_successor(
    exe: &Path,
    args: &[OsString],
    proxy: &[BorrowedFd<'_>],
    admin: Option<BorrowedFd<'_>>,
) -> Result<Successor, HandoverError> {
    let mut sources: Vec<RawFd> = proxy.iter().map(AsRawFd::as_raw_fd).collect();
    let mut names: Vec<&str> = vec![FD_NAME_PROXY; sources.len()];
    if let Some(a) = admin {
        sources.push(a.as_raw_fd());
        names.push(FD_NAME_ADMIN);
    }
    let n = sources.len();
    let (read_end, write_end) = pipe().map_err(HandoverError::Prepare)?;
    sources.push(write_end.as_raw_fd());
    // Duplicates numbered above every target (3 ..= 3+n), so that placing one never closes
    // a source not yet placed. They are close-on-exec; `dup2` in the child clears that flag
    // on the placed copy only.
    let above = LISTEN_FDS_START + sources.len() as RawFd;
    let high: Vec<OwnedFd> = sources
        .iter()
        .map(|fd| dup_at_least(*fd, above))
        .collect::<Result<_, _>>()
        .map_err(HandoverError::Prepare)?;
    drop(write_end);
    let moves: Vec<(RawFd, RawFd)> = high
        .iter()
        .enumerate()
        .map(|(i, fd)| (fd.as_raw_fd(), LISTEN_FDS_START + i as RawFd))
        .collect();
    let ready_fd = LISTEN_FDS_START + n as RawFd;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .env("LISTEN_FDS", n.to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env(ENV_FROM, std::process::id().to_string())
        .env(ENV_READY_FD, ready_fd.to_string())
        .env_remove("LISTEN_PID")
        .env_remove("WATCHDOG_PID");
    // SAFETY: the closure runs in the forked child before exec and only calls dup2, which is
    // async-signal-safe; it reads `moves` without allocating. The targets (3 ..= 3+n) are
    // open in this process while it runs (listeners and rings are opened first), so the
    // descriptors std opens for the spawn itself are numbered above them.
    unsafe {
        cmd.pre_exec(move || {
            for (from, to) in &moves {
                if libc::dup2(*from, *to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| HandoverError::Spawn {
        path: exe.to_path_buf(),
        source,
    })?;
    drop(high);
    Ok(Successor {
        child,
        ready: std::fs::File::from(read_end),
    })
}

impl Successor {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `timeout`) for the new process to report ready, calling `tick` at least
    /// every `tick_every` meanwhile (the service manager's watchdog). On error the caller
    /// keeps serving and calls [`Successor::abandon`].
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        tick_every: Option<Duration>,
        tick: &mut dyn FnMut(),
    ) -> Result<(), HandoverError> {
        let pid = self.child.id();
        let deadline = Instant::now() + timeout;
        let mut got: Vec<u8> = Vec::with_capacity(READY_MSG.len());
        let mut buf = [0u8; 16];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(HandoverError::NotReady { pid, timeout });
            }
            let mut pfd = libc::pollfd {
                fd: self.ready.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let wait = tick_every.map_or(left, |t| t.min(left));
            let ms = libc::c_int::try_from(wait.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(HandoverError::Wait(e));
            }
            if r == 0 {
                if tick_every.is_some() {
                    tick();
                }
                continue;
            }
            match self.ready.read(&mut buf) {
                Ok(0) => {
                    return Err(match self.child.try_wait() {
                        Ok(Some(st)) => HandoverError::Exited {
                            pid,
                            status: st.to_string(),
                        },
                        // Closed without a word but still running: wait for it briefly to
                        // say why it ends (it exits when start-up failed).
                        _ => match wait_exit(&mut self.child, Duration::from_secs(2)) {
                            Some(status) => HandoverError::Exited { pid, status },
                            None => HandoverError::NoReport { pid },
                        },
                    });
                }
                Ok(k) => {
                    got.extend_from_slice(buf.get(..k).unwrap_or(&[]));
                    if got.starts_with(READY_MSG) {
                        return Ok(());
                    }
                    if got.len() >= READY_MSG.len() {
                        return Err(HandoverError::NoReport { pid });
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandoverError::Wait(e)),
            }
        }
    }

    /// Gives up on a new process that did not become ready: asks it to stop (SIGTERM: a
    /// process that did start drains what it accepted from the shared sockets, so nothing is
    /// lost) and reaps it on a background thread.
    pub fn abandon(mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let _ = std::thread::Builder::new()
            .name("cp-handover-reap".into())
            .spawn(move || {
                let _ = self.child.wait();
            });
    }
}

/// The exit status of `child` if it exits within `bound`.
fn wait_exit(child: &mut Child, bound: Duration) -> Option<String> {
    let end = Instant::now() + bound;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st.to_string());
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_passed_is_empty() {
        let i = Inherited::from_env(&|_| None).unwrap();
        assert!(i.proxy.is_empty() && i.admin.is_none() && i.from.is_none());
    }

    #[test]
    fn descriptors_for_another_process_are_left_alone() {
        let env = |k: &str| match k {
            "LISTEN_FDS" => Some("2".to_string()),
            "LISTEN_PID" => Some("1".to_string()),
            _ => None,
        };
        let i = Inherited::from_env(&env).unwrap();
        assert!(i.proxy.is_empty());
        // A handover from a process that is not our parent is not for us either.
        let env = |k: &str| match k {
            "LISTEN_FDS" => Some("2".to_string()),
            ENV_FROM => Some("1".to_string()),
            _ => None,
        };
        assert!(Inherited::from_env(&env).unwrap().proxy.is_empty());
    }

    #[test]
    fn a_non_socket_is_refused() {
        // fd 0 of the test process is no listening socket.
        assert!(matches!(
            check_listening_tcp(0),
            Err(HandoverError::BadFd { fd: 0, .. })
        ));
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        check_listening_tcp(l.as_raw_fd()).unwrap();
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&l);
        let e = spawn_successor(Path::new("/nonexistent/capture-proxy"), &[], &[fd], None)
            .err()
            .unwrap();
        assert!(matches!(e, HandoverError::Spawn { .. }), "{e}");
    }

    #[test]
    fn a_successor_that_exits_is_reported_and_one_that_hangs_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&l);
        let sh = Path::new("/bin/sh");
        let args = |s: &str| vec![OsString::from("-c"), OsString::from(s)];
        // It sees its descriptors where LISTEN_FDS says, and reports on the pipe.
        let mut ok = spawn_successor(
            sh,
            &args("[ \"$LISTEN_FDS\" = 1 ] && [ -e /proc/self/fd/3 ] && echo READY >&$CAPTURE_PROXY_HANDOVER_READY_FD"),
            &[fd],
            None,
        )
        .unwrap();
        ok.wait_ready(Duration::from_secs(10), None, &mut || {})
            .unwrap();
        let mut exits = spawn_successor(sh, &args("exit 3"), &[fd], None).unwrap();
        let e = exits
            .wait_ready(Duration::from_secs(10), None, &mut || {})
            .unwrap_err();
        assert!(matches!(e, HandoverError::Exited { .. }), "{e}");
        exits.abandon();
        let mut hangs = spawn_successor(sh, &args("exec sleep 30"), &[fd], None).unwrap();
        let mut ticks = 0;
        let e = hangs
            .wait_ready(
                Duration::from_millis(300),
                Some(Duration::from_millis(50)),
                &mut || ticks += 1,
            )
            .unwrap_err();
        assert!(matches!(e, HandoverError::NotReady { .. }), "{e}");
        assert!(ticks >= 3, "watchdog ticks while waiting: {ticks}");
        hangs.abandon();
    }
}
