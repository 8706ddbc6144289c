//! The admin endpoint as the tests see it over HTTP (in-process proxy or real binary alike):
//! one request, one `/metrics` sample, and bounded polls of `/metrics` and `/ready`.
//!
//! May depend on: the crate's public API (`config`), the parent harness (`IO_TIMEOUT`), std.
//!
//! Invariant: every request and every poll is bounded (`IO_TIMEOUT`, the caller's bound); only
//! the address given (the proxy's admin endpoint on 127.0.0.1) is contacted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use super::IO_TIMEOUT;

/// Pause between two polls of the admin endpoint (ms).
const POLL_PAUSE: Duration = Duration::from_millis(20);

/// Enables the admin endpoint on an ephemeral loopback port (`--admin-listen 127.0.0.1:0`).
pub fn with_admin(cfg: &mut capture_proxy::config::Config) {
    cfg.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
}

/// `(status code, body)` of `GET path` on the admin endpoint; panics on an answer that is not
/// HTTP.
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to admin");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read admin answer");
    let status = r
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad admin answer: {r:?}"));
    let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

/// One unlabelled sample of `/metrics` (a counter is `<name>_total`).
pub fn metric(admin: SocketAddr, name: &str) -> u64 {
    let (status, text) = admin_get(admin, "/metrics");
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// Polls `/metrics` until `name` equals `want` (bounded by `bound`); its last value.
pub fn wait_metric(admin: SocketAddr, name: &str, want: u64, bound: Duration) -> u64 {
    let deadline = Instant::now() + bound;
    loop {
        let v = metric(admin, name);
        if v == want || Instant::now() >= deadline {
            return v;
        }
        thread::sleep(POLL_PAUSE);
    }
}

/// Polls `/ready` until it answers `want` (bounded by `bound`: panics past it); the last
/// body.
pub fn wait_ready(admin: SocketAddr, want: u16, bound: Duration) -> String {
    let deadline = Instant::now() + bound;
    loop {
        let (status, body) = admin_get(admin, "/ready");
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready still {status} ({body:?}) after {bound:?}, want {want}"
        );
        thread::sleep(POLL_PAUSE);
    }
}
