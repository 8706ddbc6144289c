//! Destination connections: connect (with a bounded wait) to the configured destination,
//! socket options, and the rate-limited warnings for destination failures.
//!
//! May depend on: `worker::Settings`, `stats`. (TLS toward the destination and the
//! pre-connected pool belong here too — issue 4.)
//!
//! Invariant: a connect never waits longer than `CONNECT_TIMEOUT`; every failure is counted
//! by the caller and logged here at most once per `WARN_PERIOD` with a suppressed count.

use std::cell::RefCell;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::handoff::FailKind;
use crate::stats::RateLimit;
use crate::worker::Settings;

/// Most time one destination connect may take (s). 10 s matches the Java proxy's Netty
/// default connect timeout order of magnitude and keeps a dead destination from pinning
/// client connections for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive probe interval (s) once probing has started, and probe count: a dead peer
/// is detected within keepalive + 6 × 10 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_PROBES: u32 = 6;
/// Repeated warnings of one kind are logged at most once per this period.
const WARN_PERIOD: Duration = Duration::from_secs(60);

thread_local! {
    static CONNECT_WARN: RefCell<RateLimit> = RefCell::new(RateLimit::new(WARN_PERIOD));
    static HOLD_WARN: RefCell<RateLimit> = RefCell::new(RateLimit::new(WARN_PERIOD));
}

/// Connects to the first destination address that answers.
pub async fn connect(s: &Settings) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no destination address");
    for addr in &s.destination {
        match monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect_addr(*addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                set_keepalive(&stream, s.tcp_keepalive);
                return Ok(stream);
            }
            Ok(Err(e)) => last = e,
            Err(_) => last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }
    }
    Err(last)
}

pub fn set_keepalive(s: &TcpStream, idle: Option<Duration>) {
    if let Some(idle) = idle {
        let _ = s.set_tcp_keepalive(Some(idle), Some(KEEPALIVE_INTERVAL), Some(KEEPALIVE_PROBES));
    }
}

pub fn warn_connect_failed(e: &std::io::Error) {
    CONNECT_WARN.with(|r| {
        if let Some(suppressed) = r.borrow_mut().allow() {
            tracing::warn!(error = %e, suppressed, "destination connect failed; answering 502");
        }
    });
}

pub fn warn_hold_failed(kind: FailKind) {
    HOLD_WARN.with(|r| {
        if let Some(suppressed) = r.borrow_mut().allow() {
            tracing::warn!(
                reason = kind.as_str(),
                suppressed,
                "mutating request's capture record was not committed; applying --capture-failure-policy"
            );
        }
    });
}
