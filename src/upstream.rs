//! Destination connections: connect (with a bounded wait) to the configured destination,
//! TLS toward `https://` destinations, the per-worker pool of pre-connected destination
//! connections, socket options, and the rate-limited warnings for destination failures.
//!
//! May depend on: `tls` (the TLS client), `stats` (counters, rate limiter), `signal` (the
//! refiller's wake-up).
//!
//! Invariants: a connect never waits longer than `CONNECT_TIMEOUT` (plus
//! `tls::HANDSHAKE_TIMEOUT` for TLS); every failure is counted by the caller and logged here
//! at most once per `WARN_PERIOD` with a suppressed count. A pooled connection is handed to
//! exactly one client and never comes back to the pool.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::signal::Signal;
use crate::stats::{Counter, RateLimit, WorkerStats};
use crate::tls::{DestinationTls, HandshakeError, TlsStream};

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
/// The pool refiller looks at the pool at least this often (ms), to replace expired
/// connections and to notice a drain, even when no client takes a connection.
const POOL_CHECK_PERIOD: Duration = Duration::from_millis(1000);
/// After a failed pool connect the refiller waits this long (ms) before trying again,
/// doubling up to `POOL_RETRY_MAX` (s) while the destination keeps failing: a dead
/// destination costs one connect attempt per few seconds, not a busy loop.
const POOL_RETRY_MIN: Duration = Duration::from_millis(100);
const POOL_RETRY_MAX: Duration = Duration::from_secs(5);

thread_local! {
    static CONNECT_WARN: RefCell<RateLimit> = RefCell::new(RateLimit::new(WARN_PERIOD));
    static POOL_WARN: RefCell<RateLimit> = RefCell::new(RateLimit::new(WARN_PERIOD));
}

/// Why a destination connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Connect(std::io::Error),
    /// TCP connected but TLS failed (certificate verification, protocol, timeout).
    #[error("TLS with the destination failed: {0}")]
    Tls(HandshakeError),
}

/// A connected (and, for `https://`, TLS-established) destination connection.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Upstream {
    /// Whether a ready connection still looks usable: the destination has not closed it.
    /// Plain: a peek (EOF or an error means closed; unsolicited bytes mean the server is
    /// closing it, e.g. an idle-timeout 408). TLS: the waiting records are processed
    /// (session tickets are fine; `close_notify` or data are not).
    fn looks_alive(&mut self) -> bool {
        let s = match self {
            Upstream::Tls(t) => return t.still_open(),
            Upstream::Plain(s) => s,
        };
        let fd = s.as_raw_fd();
        let mut b = [0u8; 1];
        // SAFETY: `fd` is an open socket we own; `b` is a valid 1-byte buffer; MSG_PEEK leaves
        // the data in place and MSG_DONTWAIT never blocks.
        let n = unsafe {
            libc::recv(
                fd,
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            );
        }
        false
    }
}

/// The destination's addresses, re-resolved in the background (a cluster endpoint's DNS
/// name can move to new addresses, as managed OpenSearch domains do). Workers take a snapshot
/// per new destination connection (one uncontended lock, never per request).
#[derive(Debug)]
pub struct DestinationAddrs {
    addrs: std::sync::Mutex<std::sync::Arc<Vec<std::net::SocketAddr>>>,
}

impl DestinationAddrs {
    pub fn new(addrs: Vec<std::net::SocketAddr>) -> Self {
        DestinationAddrs {
            addrs: std::sync::Mutex::new(std::sync::Arc::new(addrs)),
        }
    }
    pub fn snapshot(&self) -> std::sync::Arc<Vec<std::net::SocketAddr>> {
        match self.addrs.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    /// Replaces the addresses; returns whether they changed.
    pub fn update(&self, new: Vec<std::net::SocketAddr>) -> bool {
        let mut g = match self.addrs.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if **g == new {
            return false;
        }
        *g = std::sync::Arc::new(new);
        true
    }
}

/// How often the destination name is resolved again (s): DNS TTLs of cluster endpoints are
/// typically 60 s; 30 s follows a move within one TTL or so at negligible cost.
pub const RESOLVE_PERIOD: Duration = Duration::from_secs(30);

/// Re-resolves `host:port` every `RESOLVE_PERIOD` on its own thread until `addrs` is dropped
/// (the proxy stopped). Failures keep the previous addresses and are logged (rate-limited).
pub fn spawn_resolver(
    host: String,
    port: u16,
    addrs: &std::sync::Arc<DestinationAddrs>,
) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let weak = std::sync::Arc::downgrade(addrs);
    std::thread::Builder::new().name("cp-resolve".into()).spawn(move || {
        let mut warn = RateLimit::new(WARN_PERIOD);
        loop {
            std::thread::sleep(RESOLVE_PERIOD);
            let Some(addrs) = weak.upgrade() else { return };
            match (host.as_str(), port).to_socket_addrs() {
                Ok(list) => {
                    let list: Vec<_> = list.collect();
                    if !list.is_empty() && addrs.update(list.clone()) {
                        tracing::info!(host = %host, addrs = ?list, "destination addresses changed");
                    }
                }
                Err(e) => {
                    if let Some(suppressed) = warn.allow() {
                        tracing::warn!(host = %host, error = %e, suppressed, "cannot re-resolve the destination; keeping its previous addresses");
                    }
                }
            }
        }
    })?;
    Ok(())
}

/// Where and how the workers connect to the destination: built once at start-up, shared by
/// every worker.
#[derive(Debug)]
pub struct Destination {
    /// `--destinationUri`'s host and port, resolved (and re-resolved in the background).
    pub addrs: Arc<DestinationAddrs>,
    /// TLS toward an `https://` destination; `None` for `http://`.
    pub tls: Option<DestinationTls>,
    /// `--tcp-keepalive` for destination connections.
    pub tcp_keepalive: Option<Duration>,
}

impl Destination {
    /// Connects to the first destination address that answers (TCP only).
    async fn connect_tcp(&self) -> std::io::Result<TcpStream> {
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no destination address");
        let addrs = self.addrs.snapshot();
        for addr in addrs.iter() {
            match monoio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect_addr(*addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    set_keepalive(&stream, self.tcp_keepalive);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                }
            }
        }
        Err(last)
    }

    /// Opens a new destination connection: TCP, then TLS for an `https://` destination.
    pub async fn connect(&self) -> Result<Upstream, ConnectError> {
        let tcp = self.connect_tcp().await.map_err(ConnectError::Connect)?;
        match &self.tls {
            None => Ok(Upstream::Plain(tcp)),
            Some(d) => match crate::tls::connect(tcp, d).await {
                Ok(t) => Ok(Upstream::Tls(Box::new(t))),
                Err(e) => Err(ConnectError::Tls(e)),
            },
        }
    }
}

/// One worker's destination connections: hands each new client one, from the ready ones
/// (oldest first) when `--destinationConnectionPoolSize` > 0, else a new one.
pub struct Pool {
    destination: Arc<Destination>,
    /// `--destinationConnectionPoolSize`: ready connections kept (0: no pool).
    destination_pool_size: usize,
    /// `--destinationConnectionPoolTimeout`: age after which an unused one is replaced.
    destination_pool_timeout: Duration,
    /// The owning worker's counters.
    stats: Arc<WorkerStats>,
    ready: RefCell<VecDeque<(Instant, Upstream)>>,
    /// Wakes the refiller (a connection was taken, or the pool closed).
    taken: Signal,
    /// The worker drains: no more refills.
    closed: Cell<bool>,
}

impl Pool {
    pub fn new(
        destination: Arc<Destination>,
        destination_pool_size: usize,
        destination_pool_timeout: Duration,
        stats: Arc<WorkerStats>,
    ) -> Pool {
        Pool {
            destination,
            destination_pool_size,
            destination_pool_timeout,
            stats,
            ready: RefCell::new(VecDeque::new()),
            taken: Signal::default(),
            closed: Cell::new(false),
        }
    }

    /// A destination connection for a new client: a ready one from the pool (hot) when there
    /// is one, else a new one (cold).
    pub async fn get(&self) -> Result<Upstream, ConnectError> {
        if self.destination_pool_size > 0 {
            let got = self.take();
            self.taken.notify();
            if let Some(u) = got {
                self.stats.inc(Counter::DestPoolHot);
                return Ok(u);
            }
            self.stats.inc(Counter::DestPoolCold);
        }
        self.destination.connect().await
    }

    /// Whether a refiller should run (`--destinationConnectionPoolSize` > 0).
    pub fn enabled(&self) -> bool {
        self.destination_pool_size > 0
    }

    /// The worker drains: drops every ready connection, and the refiller stops.
    pub fn close(&self) {
        self.closed.set(true);
        self.clear();
        self.taken.notify();
    }

    /// The oldest ready connection that is neither expired nor closed by the destination;
    /// the expired and closed ones met on the way are dropped (and counted).
    fn take(&self) -> Option<Upstream> {
        loop {
            let (since, mut u) = self.ready.borrow_mut().pop_front()?;
            if since.elapsed() >= self.destination_pool_timeout {
                self.stats.inc(Counter::DestPoolExpired);
                continue;
            }
            if !u.looks_alive() {
                self.stats.inc(Counter::DestPoolDiscarded);
                continue;
            }
            return Some(u);
        }
    }

    fn len(&self) -> usize {
        self.ready.borrow().len()
    }

    /// Drops every ready connection.
    fn clear(&self) {
        let drained: Vec<(Instant, Upstream)> = self.ready.borrow_mut().drain(..).collect();
        drop(drained);
    }

    /// Drops the ready connections older than `--destinationConnectionPoolTimeout` or closed
    /// by the destination.
    fn evict(&self) {
        let mut keep = VecDeque::new();
        let old = std::mem::take(&mut *self.ready.borrow_mut());
        for (since, mut u) in old {
            if since.elapsed() >= self.destination_pool_timeout {
                self.stats.inc(Counter::DestPoolExpired);
            } else if !u.looks_alive() {
                self.stats.inc(Counter::DestPoolDiscarded);
            } else {
                keep.push_back((since, u));
            }
        }
        let mut r = self.ready.borrow_mut();
        // Connections pushed meanwhile (none: no await above) would come after the kept ones.
        keep.append(&mut r);
        *r = keep;
    }

    /// Time until the oldest ready connection expires.
    fn next_expiry(&self) -> Option<Duration> {
        self.ready.borrow().front().map(|(since, _)| {
            self.destination_pool_timeout
                .saturating_sub(since.elapsed())
        })
    }
}

/// The worker's pool refiller: keeps `--destinationConnectionPoolSize` ready destination
/// connections, replaces the ones that expire, backs off while the destination fails, and
/// ends (emptying the pool) once the pool is closed (the worker drains).
pub async fn refill(pool: Rc<Pool>) {
    let mut backoff = POOL_RETRY_MIN;
    loop {
        if pool.closed.get() {
            pool.clear();
            return;
        }
        pool.evict();
        if pool.len() < pool.destination_pool_size {
            match pool.destination.connect().await {
                Ok(u) => {
                    if pool.closed.get() {
                        pool.clear();
                        return;
                    }
                    pool.ready.borrow_mut().push_back((Instant::now(), u));
                    backoff = POOL_RETRY_MIN;
                }
                Err(e) => {
                    pool.stats.inc(Counter::DestPoolConnectFailed);
                    POOL_WARN.with(|r| {
                        if let Some(suppressed) = r.borrow_mut().allow() {
                            tracing::warn!(error = %e, suppressed, "destination pool: connect failed; retrying");
                        }
                    });
                    monoio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(POOL_RETRY_MAX);
                }
            }
            continue;
        }
        let wait = pool
            .next_expiry()
            .unwrap_or(POOL_CHECK_PERIOD)
            .min(POOL_CHECK_PERIOD);
        let _ = monoio::time::timeout(wait, pool.taken.wait()).await;
    }
}

pub fn set_keepalive(s: &TcpStream, idle: Option<Duration>) {
    if let Some(idle) = idle {
        let _ = s.set_tcp_keepalive(Some(idle), Some(KEEPALIVE_INTERVAL), Some(KEEPALIVE_PROBES));
    }
}

pub fn warn_connect_failed(e: &ConnectError) {
    CONNECT_WARN.with(|r| {
        if let Some(suppressed) = r.borrow_mut().allow() {
            tracing::warn!(error = %e, suppressed, "destination connect failed; answering 502");
        }
    });
}

/// Splits a destination connection into its halves (plain or TLS).
pub fn into_halves(u: Upstream) -> Halves {
    match u {
        Upstream::Plain(s) => {
            let (r, w) = s.into_split();
            Halves::Plain(r, w)
        }
        Upstream::Tls(t) => {
            let (r, w) = (*t).into_split();
            Halves::Tls(r, w)
        }
    }
}

/// The split halves of an [`Upstream`].
pub enum Halves {
    Plain(
        monoio::io::OwnedReadHalf<TcpStream>,
        monoio::io::OwnedWriteHalf<TcpStream>,
    ),
    Tls(crate::tls::TlsRead, crate::tls::TlsWrite),
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    #[test]
    fn destination_addrs_update_only_on_change() {
        let a: std::net::SocketAddr = "127.0.0.1:9200".parse().unwrap();
        let b: std::net::SocketAddr = "127.0.0.2:9200".parse().unwrap();
        let d = DestinationAddrs::new(vec![a]);
        let before = d.snapshot();
        assert!(!d.update(vec![a]), "same addresses: no change");
        assert!(d.update(vec![b, a]));
        assert_eq!(*d.snapshot(), vec![b, a]);
        assert_eq!(*before, vec![a], "a snapshot taken earlier is unaffected");
    }

    #[test]
    fn resolver_thread_ends_with_the_proxy() {
        let d = std::sync::Arc::new(DestinationAddrs::new(vec![]));
        // An IP literal needs no resolver; a name starts one that exits once `d` is dropped.
        spawn_resolver("127.0.0.1".into(), 1, &d).unwrap();
        spawn_resolver("localhost".into(), 1, &d).unwrap();
        drop(d);
    }
}
