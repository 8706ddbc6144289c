//! systemd's notify protocol (`Type=notify`): `READY=1` once every worker listens and the
//! sink is set up, `STOPPING=1` when shutdown begins, `WATCHDOG=1` pings when `WatchdogSec=`
//! is set, and `STATUS=` lines. Implemented directly on the `NOTIFY_SOCKET` datagram socket.
//!
//! May depend on: std only. Invariant: without `NOTIFY_SOCKET` every call is a no-op.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager, if there is one.
pub struct Notifier {
    sock: Option<(UnixDatagram, String)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (and `WATCHDOG_PID`, which must be ours).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Notifier {
        let sock = env("NOTIFY_SOCKET").and_then(|path| {
            let d = UnixDatagram::unbound().ok()?;
            Some((d, path))
        });
        let pid_ok = env("WATCHDOG_PID")
            .map(|p| p.trim() == std::process::id().to_string())
            .unwrap_or(true);
        let watchdog = env("WATCHDOG_USEC")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|us| *us > 0 && pid_ok)
            .map(Duration::from_micros);
        Notifier { sock, watchdog }
    }

    /// How often to ping the watchdog (half its period), when enabled.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub(crate) fn send(&self, msg: &str) {
        if let Some((d, path)) = &self.sock {
            let r = if let Some(abstract_name) = path.strip_prefix('@') {
                send_abstract(d, abstract_name, msg)
            } else {
                d.send_to(msg.as_bytes(), path).map(|_| ())
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "sd_notify failed");
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ));
    }
    /// Names this process the service's main process again (after a failed handover, whose
    /// new process may have claimed it). Needs `NotifyAccess=all`.
    pub fn main_pid(&self) {
        self.send(&format!("MAINPID={}", std::process::id()));
    }
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining connections");
    }
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(d: &UnixDatagram, name: &str, msg: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    d.send_to_addr(msg.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_d: &UnixDatagram, _name: &str, _msg: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_stopping_and_watchdog_to_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let p = path.to_string_lossy().to_string();
        let pid = std::process::id().to_string();
        let env = move |k: &str| match k {
            "NOTIFY_SOCKET" => Some(p.clone()),
            "WATCHDOG_USEC" => Some("2000000".into()),
            "WATCHDOG_PID" => Some(pid.clone()),
            _ => None,
        };
        let n = Notifier::from_env(&env);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.ready("listening");
        n.watchdog();
        n.stopping();
        let mut buf = [0u8; 256];
        let k = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..k])
            .unwrap()
            .starts_with("READY=1\n"));
        let k = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
        let k = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..k])
            .unwrap()
            .starts_with("STOPPING=1"));
    }

    /// systemd may hand out an abstract socket (`@name`); so do containers' notify proxies.
    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("capture-proxy-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let env = move |k: &str| (k == "NOTIFY_SOCKET").then(|| format!("@{name}"));
        let n = Notifier::from_env(&env);
        assert_eq!(n.watchdog_interval(), None, "no WATCHDOG_USEC: no pings");
        n.stopping();
        let mut buf = [0u8; 256];
        let k = server.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..k])
            .unwrap()
            .starts_with("STOPPING=1\n"));
    }

    #[test]
    fn watchdog_needs_our_pid_and_a_positive_period() {
        let pid = std::process::id().to_string();
        let with = |usec: &'static str, wpid: Option<String>| {
            let env = move |k: &str| match k {
                "WATCHDOG_USEC" => Some(usec.to_string()),
                "WATCHDOG_PID" => wpid.clone(),
                _ => None,
            };
            Notifier::from_env(&env).watchdog_interval()
        };
        assert_eq!(with("30000000", None), Some(Duration::from_secs(15)));
        assert_eq!(with("30000000", Some(pid)), Some(Duration::from_secs(15)));
        assert_eq!(with("30000000", Some("1".into())), None);
        assert_eq!(with("0", None), None);
        assert_eq!(with("garbage", None), None);
    }

    #[test]
    fn no_socket_is_a_no_op() {
        let n = Notifier::from_env(&|_| None);
        assert_eq!(n.watchdog_interval(), None);
        n.ready("x");
    }
}
