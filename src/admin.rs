//! The admin HTTP endpoint (`--admin-listen`, default 127.0.0.1:9901): `/metrics` (Prometheus
//! text format), `/health` (process alive) and `/ready` (listening, sink usable, not
//! draining). Runs on its own small OS thread — never on a worker — as one nonblocking epoll
//! loop serving many connections at once: one request per connection, [`REQUEST_DEADLINE`]
//! from accept to the answer sent, at most [`MAX_CONNECTIONS`] open (one more closes the
//! oldest), `GET`/`HEAD` only (other methods 405), garbage 400, oversize heads 431.
//!
//! May depend on: `stats`, `sink::SinkStats`, libc (epoll), socket2, httparse. Reads counters
//! the workers publish (relaxed atomics) and merges their histograms here, off the hot path.
//!
//! Invariant: the thread blocks only in `epoll_wait`; a slow or malicious admin client holds
//! one connection for at most `REQUEST_DEADLINE` and delays the others by no more than the
//! loop's own work, never the data path. Memory is bounded: `MAX_CONNECTIONS` slots, and a
//! head buffer (`MAX_HEAD_BYTES`) only for a connection whose head did not come in one read.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sink::SinkStats;
use crate::stats::{Counter, ExportStats, HandoverStats, RateLimit, WorkerStats};

/// What the endpoint reports on.
#[derive(Clone)]
pub(crate) struct AdminState {
    pub workers: Vec<Arc<WorkerStats>>,
    pub sink: Arc<SinkStats>,
    /// Set once shutdown has begun: `/ready` answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    pub node_id: Arc<str>,
    /// The endpoint's own counters (`admin*` metrics).
    pub stats: Arc<AdminStats>,
    /// The OTLP exporter's counters (`otlp*` metrics; 0 without one).
    pub export: Arc<ExportStats>,
    /// `SIGUSR2` handovers (`handovers*` metrics).
    pub handover: Arc<HandoverStats>,
    /// Set when the listener was handed to a new process: stop accepting on it (the new
    /// process answers from then on; this one drains), without `/ready` turning 503.
    pub handed_over: Arc<AtomicBool>,
}

/// The endpoint's own counters; only its thread writes them.
#[derive(Debug, Default)]
pub(crate) struct AdminStats {
    /// Admin connections open now.
    pub open: AtomicU64,
    /// Connections closed at [`REQUEST_DEADLINE`] before their answer was sent.
    pub timeouts: AtomicU64,
    /// Requests answered 400, 405 or 431.
    pub rejected: AtomicU64,
    /// Unanswered connections closed because [`MAX_CONNECTIONS`] were open.
    pub shed: AtomicU64,
}

/// Most bytes of an admin request head (bytes): admin requests are tiny (curl ~80, a
/// Prometheus scrape or an ELB health check ~200); past it the answer is 431.
pub const MAX_HEAD_BYTES: usize = 4096;
/// Most header lines of an admin request head; past it the answer is 431.
const MAX_HEADERS: usize = 64;
/// Whole-exchange deadline (s), counted from accept: the request head must have arrived and
/// the answer been written by then, or the connection is closed (408 when part of a head had
/// come). Not per read: a client sending a byte a second gets no longer than an idle one.
/// 2 s is hundreds of round trips for a health check or a scrape in the same region.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// Most admin connections open at once (connections). One more accepted closes the oldest
/// (the nearest its deadline, and — since an honest client sends its head within a round
/// trip — almost surely a slow or idle one), so a fresh `/ready` probe is always served;
/// refusing new connections instead would let any N idle sockets take the load balancer's
/// health check down for good. 1024 holds the 1 000 slow clients without shedding
/// any, costs at most 1024 descriptors (of `LimitNOFILE=1048576`) and 4 MiB of head
/// buffers, and each is gone within `REQUEST_DEADLINE` anyway.
pub const MAX_CONNECTIONS: usize = 1024;
/// Listen backlog (connections): a burst of connects waits in the kernel, not in SYN retries.
const LISTEN_BACKLOG: i32 = 1024;
/// Pause of accepting (ms) after an accept error that shedding cannot cure (no descriptors
/// left and no admin connection to close): keeps a full backlog from spinning the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Period of the rate-limited warnings (accept errors, shedding).
const WARN_PERIOD: Duration = Duration::from_secs(60);
/// Events taken per `epoll_wait`.
const MAX_EVENTS: usize = 256;
/// Connections accepted per listener event before the others' events are served.
const ACCEPT_BATCH: usize = 64;
/// The listener's epoll token; a connection's is `generation << 32 | slot`.
const LISTENER_TOKEN: u64 = u64::MAX;
/// Interest of a connection reading its head or lingering after its answer.
const READ_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
/// Interest of a connection whose answer did not fit the socket buffer.
const WRITE_INTEREST: u32 = libc::EPOLLOUT as u32;
/// Sent (best effort) to a connection closed at the deadline with part of a head.
const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";

/// Binds (or, with `inherited`, adopts that listener) and serves on a background thread.
/// Returns the bound address and a duplicate of the listener (for a handover).
pub(crate) fn start(
    addr: SocketAddr,
    inherited: Option<TcpListener>,
    state: AdminState,
) -> std::io::Result<(SocketAddr, OwnedFd)> {
    let listener = match inherited {
        Some(l) => l,
        None => bind(addr)?,
    };
    let bound = listener.local_addr()?;
    let dup = OwnedFd::from(listener.try_clone()?);
    let server = Server::new(listener, state)?;
    std::thread::Builder::new()
        .name("cp-admin".into())
        .spawn(move || server.run())?;
    Ok((bound, dup))
}

/// A nonblocking listener with `SO_REUSEADDR` (as std's) and a [`LISTEN_BACKLOG`] backlog.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// An epoll instance (level-triggered).
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Epoll> {
        // SAFETY: a plain syscall; on success the descriptor is new and owned by nothing else.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a valid descriptor nothing else owns (checked above).
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> std::io::Result<usize> {
        let max = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `max` entries into `events`, which has that many.
        let n =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), max, timeout_ms) };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }
}

/// Where one connection is.
enum Phase {
    /// Reading the request head.
    Reading,
    /// Writing the answer: `out[sent..]` is left; `armed` once the connection waits for
    /// `EPOLLOUT` (the answer did not fit the socket buffer at once).
    Writing {
        out: Vec<u8>,
        sent: usize,
        armed: bool,
    },
    /// Answered and write side shut: reading (discarding) until the client closes, so that
    /// unread bytes it sent do not turn our close into a reset that destroys the answer.
    Lingering,
}

struct Conn {
    stream: TcpStream,
    generation: u32,
    deadline: Instant,
    /// The head so far, only when it did not come in one read (capacity `MAX_HEAD_BYTES`).
    head: Vec<u8>,
    phase: Phase,
}

/// What one event on a connection leads to (decided while it is borrowed).
enum Step {
    Wait,
    Close,
    Answer { out: Vec<u8>, rejected: bool },
}

/// The event loop's state; lives on the admin thread.
struct Server {
    epoll: Epoll,
    listener: TcpListener,
    state: AdminState,
    /// Connections by slot; a slot's epoll token carries its generation so that an event
    /// for a closed connection never reaches the one that took its slot.
    slots: Vec<Option<Conn>>,
    free: Vec<u32>,
    /// `(slot, generation)` in accept order, which is also deadline order (one fixed
    /// deadline per connection); entries of closed connections are skipped lazily.
    order: VecDeque<(u32, u32)>,
    next_generation: u32,
    live: usize,
    /// Accepting paused until then (see `ACCEPT_BACKOFF`).
    accept_paused_until: Option<Instant>,
    accept_warn: RateLimit,
    shed_warn: RateLimit,
    /// The listener was handed over and taken out of the epoll set.
    listener_dropped: bool,
    /// Every read lands here first; a head that comes whole is parsed from here.
    scratch: Box<[u8; MAX_HEAD_BYTES]>,
}

impl Server {
    fn new(listener: TcpListener, state: AdminState) -> std::io::Result<Server> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            libc::EPOLL_CTL_ADD,
            listener.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER_TOKEN,
        )?;
        Ok(Server {
            epoll,
            listener,
            state,
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            next_generation: 0,
            live: 0,
            accept_paused_until: None,
            accept_warn: RateLimit::new(WARN_PERIOD),
            shed_warn: RateLimit::new(WARN_PERIOD),
            listener_dropped: false,
            scratch: Box::new([0; MAX_HEAD_BYTES]),
        })
    }

    fn run(mut self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
        loop {
            let timeout = self.next_timeout(Instant::now());
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => 0,
                Err(e) => {
                    tracing::error!(error = %e, "admin endpoint: epoll_wait failed");
                    std::thread::sleep(ACCEPT_BACKOFF);
                    0
                }
            };
            let now = Instant::now();
            for ev in events.iter().take(n) {
                let token = ev.u64;
                if token == LISTENER_TOKEN {
                    self.accept(now);
                } else {
                    self.on_event(token);
                }
            }
            self.expire(now);
            self.resume_accept(now);
        }
    }

    /// Milliseconds until the oldest connection's deadline or the end of an accept pause
    /// (rounded up); -1 (wait for events only) when neither is pending.
    fn next_timeout(&mut self, now: Instant) -> i32 {
        let deadline = self
            .oldest()
            .and_then(|slot| self.conn(slot))
            .map(|c| c.deadline);
        let until = match (deadline, self.accept_paused_until) {
            (Some(a), Some(b)) => a.min(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => return -1,
        };
        let ms = until
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000);
        i32::try_from(ms).unwrap_or(i32::MAX)
    }

    /// The slot of the oldest open connection (dropping stale entries from the front of
    /// `order`).
    fn oldest(&mut self) -> Option<usize> {
        loop {
            let &(slot, generation) = self.order.front()?;
            let slot = slot as usize;
            if matches!(self.slots.get(slot), Some(Some(c)) if c.generation == generation) {
                return Some(slot);
            }
            self.order.pop_front();
        }
    }

    fn conn(&self, slot: usize) -> Option<&Conn> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    fn accept(&mut self, now: Instant) {
        if self.state.handed_over.load(Ordering::Acquire) {
            // The new process accepts from the shared listener now; leave its queue alone.
            if !self.listener_dropped {
                let _ = self.epoll.ctl(
                    libc::EPOLL_CTL_DEL,
                    self.listener.as_raw_fd(),
                    0,
                    LISTENER_TOKEN,
                );
                self.listener_dropped = true;
                self.accept_paused_until = None;
            }
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            // SAFETY: a plain syscall on our listener; no address is asked for.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED) => continue,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                        if self.shed_oldest() =>
                    {
                        continue
                    }
                    _ => {
                        if let Some(suppressed) = self.accept_warn.allow() {
                            tracing::warn!(error = %e, suppressed, "admin endpoint: accept failed; pausing accepts");
                        }
                        self.pause_accept(now);
                        return;
                    }
                }
            }
            // SAFETY: accept4 returned a new connected socket that nothing else owns.
            let stream = unsafe { TcpStream::from_raw_fd(fd) };
            if self.live >= MAX_CONNECTIONS {
                self.shed_oldest();
                if let Some(suppressed) = self.shed_warn.allow() {
                    tracing::warn!(
                        max = MAX_CONNECTIONS,
                        suppressed,
                        "admin endpoint: too many connections; closing the oldest"
                    );
                }
            }
            self.insert(stream, now);
        }
    }

    fn insert(&mut self, stream: TcpStream, now: Instant) {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let generation = self.next_generation;
        self.next_generation = generation.wrapping_add(1);
        let token = (u64::from(generation) << 32) | u64::from(slot);
        let added = self.epoll.ctl(
            libc::EPOLL_CTL_ADD,
            stream.as_raw_fd(),
            READ_INTEREST,
            token,
        );
        let Some(entry) = self.slots.get_mut(slot as usize) else {
            return;
        };
        if added.is_err() {
            self.free.push(slot);
            return; // dropping `stream` closes it
        }
        *entry = Some(Conn {
            stream,
            generation,
            deadline: now + REQUEST_DEADLINE,
            head: Vec::new(),
            phase: Phase::Reading,
        });
        self.order.push_back((slot, generation));
        self.live += 1;
        self.state
            .stats
            .open
            .store(self.live as u64, Ordering::Relaxed);
    }

    /// Closes a connection (the descriptor leaves the epoll set with it).
    fn close(&mut self, slot: usize) {
        if let Some(entry) = self.slots.get_mut(slot) {
            if entry.take().is_some() {
                self.free.push(u32::try_from(slot).unwrap_or(u32::MAX));
                self.live -= 1;
                self.state
                    .stats
                    .open
                    .store(self.live as u64, Ordering::Relaxed);
            }
        }
    }

    /// Closes the oldest connection, counting it as shed unless it was answered. False when
    /// there is none.
    fn shed_oldest(&mut self) -> bool {
        let Some(slot) = self.oldest() else {
            return false;
        };
        if self
            .conn(slot)
            .is_some_and(|c| !matches!(c.phase, Phase::Lingering))
        {
            self.state.stats.shed.fetch_add(1, Ordering::Relaxed);
        }
        self.order.pop_front();
        self.close(slot);
        true
    }

    /// Closes every connection past its deadline; those not yet answered count as timeouts
    /// and, when part of a head had come, get a best-effort 408 first.
    fn expire(&mut self, now: Instant) {
        while let Some(slot) = self.oldest() {
            let Some(conn) = self.conn(slot) else {
                return;
            };
            if conn.deadline > now {
                return;
            }
            match conn.phase {
                Phase::Lingering => {}
                Phase::Reading => {
                    self.state.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    if !conn.head.is_empty() {
                        let _ = (&conn.stream).write(TIMEOUT_RESPONSE);
                    }
                }
                Phase::Writing { .. } => {
                    self.state.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.order.pop_front();
            self.close(slot);
        }
    }

    fn pause_accept(&mut self, now: Instant) {
        let fd = self.listener.as_raw_fd();
        if self
            .epoll
            .ctl(libc::EPOLL_CTL_MOD, fd, 0, LISTENER_TOKEN)
            .is_ok()
        {
            self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
        }
    }

    fn resume_accept(&mut self, now: Instant) {
        if self.listener_dropped {
            return;
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            let fd = self.listener.as_raw_fd();
            let interest = libc::EPOLLIN as u32;
            if self
                .epoll
                .ctl(libc::EPOLL_CTL_MOD, fd, interest, LISTENER_TOKEN)
                .is_ok()
            {
                self.accept_paused_until = None;
            }
        }
    }

    fn on_event(&mut self, token: u64) {
        let slot = (token & u64::from(u32::MAX)) as usize;
        let generation = (token >> 32) as u32;
        let Some(Some(conn)) = self.slots.get_mut(slot) else {
            return;
        };
        if conn.generation != generation {
            return;
        }
        let step = match &mut conn.phase {
            Phase::Reading => read_head(conn, &mut self.scratch[..], &self.state),
            Phase::Writing { .. } => {
                self.write_out(slot);
                return;
            }
            Phase::Lingering => match (&conn.stream).read(&mut self.scratch[..]) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    Step::Wait
                }
                Ok(n) if n > 0 => Step::Wait,
                _ => Step::Close,
            },
        };
        match step {
            Step::Wait => {}
            Step::Close => self.close(slot),
            Step::Answer { out, rejected } => {
                if rejected {
                    self.state.stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(Some(conn)) = self.slots.get_mut(slot) {
                    conn.head = Vec::new();
                    conn.phase = Phase::Writing {
                        out,
                        sent: 0,
                        armed: false,
                    };
                }
                self.write_out(slot);
            }
        }
    }

    /// Writes what is left of the answer; once all of it is out, shuts the write side and
    /// lingers; on a full socket buffer, waits for `EPOLLOUT`.
    fn write_out(&mut self, slot: usize) {
        let Some(Some(conn)) = self.slots.get_mut(slot) else {
            return;
        };
        let Phase::Writing { out, sent, armed } = &mut conn.phase else {
            return;
        };
        let was_armed = *armed;
        let result = loop {
            match (&conn.stream).write(out.get(*sent..).unwrap_or(&[])) {
                Ok(0) => break Err(()),
                Ok(n) => {
                    *sent += n;
                    if *sent >= out.len() {
                        break Ok(true);
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(false),
                Err(_) => break Err(()),
            }
        };
        let fd = conn.stream.as_raw_fd();
        let token = (u64::from(conn.generation) << 32) | slot as u64;
        let rearm = match result {
            Ok(true) => {
                let _ = conn.stream.shutdown(Shutdown::Write);
                conn.phase = Phase::Lingering;
                was_armed.then_some(READ_INTEREST)
            }
            Ok(false) => {
                *armed = true;
                (!was_armed).then_some(WRITE_INTEREST)
            }
            Err(()) => {
                self.close(slot);
                return;
            }
        };
        if let Some(interest) = rearm {
            if self
                .epoll
                .ctl(libc::EPOLL_CTL_MOD, fd, interest, token)
                .is_err()
            {
                self.close(slot);
            }
        }
    }
}

/// Reads what the client sent of its head and decides what to do.
fn read_head(conn: &mut Conn, scratch: &mut [u8], state: &AdminState) -> Step {
    let room = MAX_HEAD_BYTES.saturating_sub(conn.head.len()).max(1);
    let Some(buf) = scratch.get_mut(..room) else {
        return Step::Close;
    };
    let n = match (&conn.stream).read(buf) {
        Ok(0) if conn.head.is_empty() => return Step::Close, // connect-and-close (a TCP check)
        Ok(0) => return answer(state, Parsed::Malformed),    // the client ended inside a head
        Ok(n) => n,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
            return Step::Wait
        }
        Err(_) => return Step::Close,
    };
    let got = buf.get(..n).unwrap_or(&[]);
    let whole = conn.head.is_empty();
    if !whole {
        conn.head.extend_from_slice(got);
    }
    let parsed = parse_head(if whole { got } else { &conn.head });
    if parsed == Parsed::Partial {
        if whole {
            conn.head.reserve_exact(MAX_HEAD_BYTES);
            conn.head.extend_from_slice(got);
        }
        return Step::Wait;
    }
    answer(state, parsed)
}

/// What a request head (so far) asks for.
#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    /// Well-formed so far, not complete.
    Partial,
    /// `GET` (or `HEAD`: headers only) of `path`, query string dropped.
    Get { path: &'a str, head_only: bool },
    /// A well-formed request with another method: 405.
    OtherMethod,
    /// Not an HTTP/1.x request head (bad request line, no or another version, bad header
    /// syntax, the client closed inside it): 400.
    Malformed,
    /// Over `MAX_HEAD_BYTES` or `MAX_HEADERS`: 431.
    TooLarge,
}

fn parse_head(buf: &[u8]) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            match req.method {
                Some("GET") => Parsed::Get {
                    path,
                    head_only: false,
                },
                Some("HEAD") => Parsed::Get {
                    path,
                    head_only: true,
                },
                _ => Parsed::OtherMethod,
            }
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => Parsed::TooLarge,
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::TooLarge,
        Err(_) => Parsed::Malformed,
    }
}

/// The whole answer to a complete (or rejected) head; whether it counts as rejected.
fn answer(state: &AdminState, parsed: Parsed<'_>) -> Step {
    const PLAIN: &str = "text/plain";
    let rejected = !matches!(parsed, Parsed::Get { .. });
    let (status, ctype, body, head_only) = match parsed {
        Parsed::Get { path, head_only } => {
            let (status, ctype, body) = route(state, path);
            (status, ctype, body, head_only)
        }
        Parsed::OtherMethod => (
            "405 Method Not Allowed",
            PLAIN,
            "method not allowed\n".to_string(),
            false,
        ),
        Parsed::Malformed | Parsed::Partial => {
            ("400 Bad Request", PLAIN, "bad request\n".to_string(), false)
        }
        Parsed::TooLarge => (
            "431 Request Header Fields Too Large",
            PLAIN,
            "request head too large\n".to_string(),
            false,
        ),
    };
    let allow = if status.starts_with("405") {
        "allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{allow}connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    Step::Answer { out, rejected }
}

/// Status line, content type and body of `GET path`.
fn route(state: &AdminState, path: &str) -> (&'static str, &'static str, String) {
    match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", render_metrics(state)),
        "/health" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/ready" => {
            let (ready, why) = readiness(state);
            if ready {
                ("200 OK", "text/plain", "ready\n".to_string())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready: {why}\n"),
                )
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    }
}
fn readiness(state: &AdminState) -> (bool, &'static str) {
    if state.draining.load(Ordering::Acquire) {
        return (false, "draining");
    }
    if state.sink.healthy.load(Ordering::Relaxed) == 0 {
        return (false, "capture sink unavailable");
    }
    (true, "")
}

/// How a [`Scalar`] behaves over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    /// Only increases (Prometheus `<name>_total`, OTLP monotonic cumulative sum).
    Counter,
    /// A current value (Prometheus gauge, OTLP gauge or non-monotonic sum).
    Gauge,
}

/// One counter or gauge of a [`Snapshot`]. `name` is the base name: the Prometheus text adds
/// `_total` to counters; OTLP uses it as is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scalar {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: ScalarKind,
    pub value: u64,
}

/// One latency histogram of a [`Snapshot`], merged over its writers (microseconds).
pub(crate) struct HistogramSnapshot {
    /// Base name; exported in milliseconds (Prometheus: `<name>_milliseconds`).
    pub name: &'static str,
    pub help: &'static str,
    /// `None` when no writer's histogram could be read.
    pub merged: Option<hdrhistogram::Histogram<u64>>,
}

/// Every metric the process exports, read at one moment off the hot path: the `/metrics`
/// text and the OTLP exporter both render this one list, so they never disagree.
pub(crate) struct Snapshot {
    pub scalars: Vec<Scalar>,
    pub histograms: Vec<HistogramSnapshot>,
}

/// Reads every counter (summed over workers), the derived gauges and the merged histograms.
pub(crate) fn snapshot(state: &AdminState) -> Snapshot {
    use ScalarKind::{Counter as C, Gauge as G};
    let mut scalars = Vec::with_capacity(Counter::ALL.len() + 40);
    for c in Counter::ALL {
        scalars.push(Scalar {
            name: c.name(),
            help: c.help(),
            kind: C,
            value: crate::stats::total(&state.workers, *c),
        });
    }
    let total = |c| crate::stats::total(&state.workers, c);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let s = &state.sink;
    let a = &state.stats;
    let e = &state.export;
    let rows: [(&'static str, ScalarKind, &'static str, u64); 27] = [
        (
            "activeConnection",
            G,
            "client connections currently open",
            total(Counter::ConnAccepted).saturating_sub(total(Counter::ConnClosed)),
        ),
        (
            "captureFinalRecordsAwaitingAcks",
            G,
            "closed connections whose final record waits for earlier records' acks",
            total(Counter::FinalRecordWaited).saturating_sub(total(Counter::FinalRecordWaitEnded)),
        ),
        ("sinkRecordsCommitted", C, "records committed by the sink thread", load(&s.records_committed)),
        ("sinkBytesCommitted", C, "bytes committed by the sink thread", load(&s.bytes_committed)),
        ("sinkRecordsFailed", C, "records the sink thread failed", load(&s.records_failed)),
        ("sinkBatches", C, "batches received by the sink thread", load(&s.batches)),
        ("sinkHealthy", G, "1 when the capture sink accepts records", load(&s.healthy)),
        (
            "kafkaConnected",
            G,
            "1 while a Kafka broker is reachable (with --spool-dir, records go to the spool while 0)",
            load(&s.kafka_connected),
        ),
        ("spoolBytes", G, "bytes of spool files on disk (--spool-dir)", load(&s.spool_bytes)),
        (
            "spoolRecordsSpooled",
            C,
            "records written to the spool and fsynced (acknowledged as committed)",
            load(&s.spool_records_spooled),
        ),
        (
            "spoolRecordsDrained",
            C,
            "spooled records Kafka has acknowledged since",
            load(&s.spool_records_drained),
        ),
        (
            "spoolRecordsRefused",
            C,
            "records the spool could not take (full or write error); they failed",
            load(&s.spool_records_refused),
        ),
        (
            "spoolCorruptSkipped",
            C,
            "torn or corrupt spool regions skipped during replay",
            load(&s.spool_corrupt_skipped),
        ),
        (
            "spoolRecordsDropped",
            C,
            "spooled records Kafka refused for their own sake (too large for the topic); lost",
            load(&s.spool_records_dropped),
        ),
        (
            "kafkaProducerRestarts",
            C,
            "times the Kafka producer was replaced by a new one (fatal error, or records taken back for the spool)",
            load(&s.kafka_producer_restarts),
        ),
        (
            "kafkaRecordsReturnedToSpool",
            C,
            "records the Kafka producer failed (time-out, broker or producer error) that went to the spool instead of being lost",
            load(&s.kafka_records_returned),
        ),
        (
            "kafkaBackpressure",
            C,
            "times the sink stopped taking records because a reachable Kafka held as many unacknowledged bytes as it may (clients are slowed, nothing is lost)",
            load(&s.kafka_backpressure),
        ),
        (
            "sinkQueueBytes",
            G,
            "bytes of records queued between the workers and the sink thread",
            load(&s.queued_bytes),
        ),
        (
            "draining",
            G,
            "1 while the proxy shuts down",
            u64::from(state.draining.load(Ordering::Acquire)),
        ),
        (
            "adminConnections",
            G,
            "admin endpoint connections open now (this scrape's included)",
            load(&a.open),
        ),
        (
            "adminRequestTimeouts",
            C,
            "admin connections closed at the 2 s deadline (from accept) before their answer was sent",
            load(&a.timeouts),
        ),
        (
            "adminRequestsRejected",
            C,
            "admin requests answered 400 (malformed), 405 (method other than GET/HEAD) or 431 (head too large)",
            load(&a.rejected),
        ),
        (
            "adminConnectionsShed",
            C,
            "unanswered admin connections closed because 1024 were open (the oldest first)",
            load(&a.shed),
        ),
        (
            "otlpExports",
            C,
            "OTLP metrics exports the collector accepted (--otelMetricsCollectorEndpoint)",
            load(&e.exports),
        ),
        (
            "otlpExportFailures",
            C,
            "OTLP metrics exports that failed (collector unreachable, refused or too slow; warned at most once a minute)",
            load(&e.failures),
        ),
        (
            "handovers",
            C,
            "SIGUSR2 handovers begun (a new process started with this one's listening sockets)",
            load(&state.handover.started),
        ),
        (
            "handoverFailures",
            C,
            "handovers that failed (the new process did not start or did not become ready); this process kept serving",
            load(&state.handover.failed),
        ),
    ];
    for (name, kind, help, value) in rows {
        scalars.push(Scalar {
            name,
            help,
            kind,
            value,
        });
    }
    let histograms = vec![
        merged_histogram(
            "upstreamResponseDuration",
            "time from a request's head going to the destination (a held request: its release) to the first byte of its response (ms)",
            state.workers.iter().map(|w| &w.upstream_response_us),
        ),
        merged_histogram(
            "blockedDuration",
            "time a mutating request was held until its record was committed or failed (ms)",
            state.workers.iter().map(|w| &w.hold_us),
        ),
        merged_histogram(
            "kafkaCommitDuration",
            "time from handing a record to the Kafka producer to its acknowledgement (ms)",
            std::iter::once(&state.sink.commit_us),
        ),
    ];
    Snapshot {
        scalars,
        histograms,
    }
}

fn merged_histogram<'a>(
    name: &'static str,
    help: &'static str,
    hists: impl Iterator<Item = &'a std::sync::Mutex<hdrhistogram::Histogram<u64>>>,
) -> HistogramSnapshot {
    let mut merged: Option<hdrhistogram::Histogram<u64>> = None;
    for h in hists {
        if let Ok(g) = h.lock() {
            match merged.as_mut() {
                Some(m) => {
                    let _ = m.add(&*g);
                }
                None => merged = Some(g.clone()),
            }
        }
    }
    HistogramSnapshot { name, help, merged }
}

/// Prometheus text exposition of the [`snapshot`].
pub(crate) fn render_metrics(state: &AdminState) -> String {
    use std::fmt::Write as _;
    let snap = snapshot(state);
    let mut out = String::with_capacity(8192);
    for s in &snap.scalars {
        let (suffix, kind) = match s.kind {
            ScalarKind::Counter => ("_total", "counter"),
            ScalarKind::Gauge => ("", "gauge"),
        };
        let _ = writeln!(out, "# HELP {}{suffix} {}", s.name, s.help);
        let _ = writeln!(out, "# TYPE {}{suffix} {kind}", s.name);
        let _ = writeln!(out, "{}{suffix} {}", s.name, s.value);
    }
    let _ = writeln!(
        out,
        "# HELP captureProxyInfo constant 1, labelled with this process's capture node id and version"
    );
    let _ = writeln!(out, "# TYPE captureProxyInfo gauge");
    let _ = writeln!(
        out,
        "captureProxyInfo{{node_id=\"{}\",version=\"{}\"}} 1",
        LabelValue(&state.node_id),
        env!("CARGO_PKG_VERSION")
    );
    for h in &snap.histograms {
        render_histogram(&mut out, h);
    }
    out
}

/// A Prometheus label value, escaped (`\`, `"` and newlines).
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Bucket upper bounds (ms) of every exported histogram: from 0.1 ms (a loopback round trip)
/// through the 10 s Kafka ack timeout to 60 s (a slow search on the destination); longer
/// values land in `+Inf` only.
const BUCKETS_MS: [f64; 18] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0, 30000.0, 60000.0,
];

/// Bucket upper bounds (ms) as `hdrhistogram` values (µs), with the bound itself.
pub(crate) fn bucket_bounds_us() -> impl Iterator<Item = (f64, u64)> {
    BUCKETS_MS.into_iter().map(|b| (b, (b * 1000.0) as u64))
}

/// Sum of a histogram's samples in milliseconds, derived from it (within its 1 % precision).
pub(crate) fn sum_ms(h: &hdrhistogram::Histogram<u64>) -> f64 {
    h.mean() * h.len() as f64 / 1000.0
}

fn render_histogram(out: &mut String, hs: &HistogramSnapshot) {
    use std::fmt::Write as _;
    let name = hs.name;
    let _ = writeln!(out, "# HELP {name}_milliseconds {}", hs.help);
    let _ = writeln!(out, "# TYPE {name}_milliseconds histogram");
    let Some(h) = &hs.merged else { return };
    for (b, us) in bucket_bounds_us() {
        let count = h.count_between(0, us);
        let _ = writeln!(out, "{name}_milliseconds_bucket{{le=\"{b}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_milliseconds_bucket{{le=\"+Inf\"}} {}", h.len());
    let _ = writeln!(out, "{name}_milliseconds_sum {}", sum_ms(h));
    let _ = writeln!(out, "{name}_milliseconds_count {}", h.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn state() -> AdminState {
        AdminState {
            workers: vec![
                Arc::new(WorkerStats::default()),
                Arc::new(WorkerStats::default()),
            ],
            sink: Arc::new(SinkStats::default()),
            draining: Arc::new(AtomicBool::new(false)),
            node_id: Arc::from("n"),
            stats: Arc::default(),
            export: Arc::default(),
            handover: Arc::default(),
            handed_over: Arc::default(),
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    }

    /// Every exported metric is documented in the README's metrics table.
    #[test]
    fn every_metric_is_documented_in_the_readme() {
        let readme = include_str!("../README.md");
        let text = render_metrics(&state());
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap_or("");
            assert!(
                readme.contains(&format!("`{name}")),
                "{name} is not in README.md"
            );
        }
    }

    /// …and every metric the README's table names is exported (no stale rows).
    #[test]
    fn readme_metrics_table_lists_only_exported_metrics() {
        let readme = include_str!("../README.md");
        let text = render_metrics(&state());
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let section = readme
            .split("### Admin endpoint and metrics")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .unwrap();
        let mut rows = 0;
        for line in section.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or("");
            for name in first.split(',').map(|n| n.trim().trim_matches('`')) {
                if name.starts_with('/') {
                    continue; // the paths table
                }
                rows += 1;
                assert!(
                    exported.contains(&name),
                    "README lists {name}, not exported"
                );
            }
        }
        assert!(
            rows >= exported.len(),
            "{rows} rows for {} metrics",
            exported.len()
        );
    }

    #[test]
    fn metrics_sum_workers_and_ready_flips() {
        let st = state();
        st.workers[0].add(Counter::BytesRead, 5);
        st.workers[1].add(Counter::BytesRead, 7);
        st.workers[0].inc(Counter::ConnAccepted);
        st.sink.healthy.store(1, Ordering::Relaxed);
        let (addr, _dup) = start("127.0.0.1:0".parse().unwrap(), None, st.clone()).unwrap();
        let m = get(addr, "/metrics");
        assert!(m.contains("\nbytesRead_total 12\n"), "{m}");
        assert!(m.contains("\nactiveConnection 1\n"), "{m}");
        assert!(get(addr, "/health").starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 200"));
        st.sink.healthy.store(0, Ordering::Relaxed);
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 503"));
        st.sink.healthy.store(1, Ordering::Relaxed);
        st.draining.store(true, Ordering::Release);
        let r = get(addr, "/ready");
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("draining"),
            "{r}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn heads_are_classified() {
        let get = |path, head_only| Parsed::Get { path, head_only };
        let cases: [(&[u8], Parsed<'_>); 14] = [
            (
                b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n",
                get("/ready", false),
            ),
            (b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n", get("/metrics", true)),
            (b"GET /ready HTTP/1.1\r\nHo", Parsed::Partial),
            (b"G", Parsed::Partial),
            (b"POST /ready HTTP/1.1\r\n\r\n", Parsed::OtherMethod),
            (b"get /ready HTTP/1.1\r\n\r\n", Parsed::OtherMethod),
            (b"GET /ready\r\n\r\n", Parsed::Malformed),
            (b"GET /ready HTTP/2.0\r\n\r\n", Parsed::Malformed),
            (b"hello world\r\n", Parsed::Malformed),
            (b"\x16\x03\x01\x02\x00\x01", Parsed::Malformed),
            (
                b"GET /ready HTTP/1.1\r\nno colon\r\n\r\n",
                Parsed::Malformed,
            ),
            (b"GET / ready HTTP/1.1\r\n\r\n", Parsed::Malformed),
            (&[b'G'; MAX_HEAD_BYTES], Parsed::TooLarge),
            (b"", Parsed::Partial),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse_head(head),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let mut long = b"GET / HTTP/1.1\r\nx: ".to_vec();
        long.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(parse_head(&long), Parsed::TooLarge);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Parsed::TooLarge);
    }

    #[test]
    fn answers_name_their_length_and_head_has_no_body() {
        let st = state();
        let (head, body) = std::str::from_utf8(TIMEOUT_RESPONSE)
            .unwrap()
            .split_once("\r\n\r\n")
            .unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let text = |p: Parsed<'_>| match answer(&st, p) {
            Step::Answer { out, rejected } => (String::from_utf8(out).unwrap(), rejected),
            _ => unreachable!(),
        };
        let (r, rejected) = text(Parsed::OtherMethod);
        assert!(r.starts_with("HTTP/1.1 405 ") && r.contains("\r\nallow: GET, HEAD\r\n"));
        assert!(rejected);
        let (r, rejected) = text(Parsed::Get {
            path: "/health",
            head_only: true,
        });
        assert!(!rejected);
        assert!(
            r.starts_with("HTTP/1.1 200 ")
                && r.ends_with("content-length: 3\r\nconnection: close\r\n\r\n"),
            "{r}"
        );
        assert!(text(Parsed::Malformed).0.starts_with("HTTP/1.1 400 "));
        assert!(text(Parsed::TooLarge).0.starts_with("HTTP/1.1 431 "));
        let (r, rejected) = text(Parsed::Get {
            path: "/x",
            head_only: false,
        });
        assert!(r.starts_with("HTTP/1.1 404 ") && !rejected);
    }

    /// An idle connection and one dribbling its head do not delay another client, and are
    /// answered/closed by the deadline.
    #[test]
    fn slow_clients_do_not_block_and_are_closed_at_the_deadline() {
        let st = state();
        st.sink.healthy.store(1, Ordering::Relaxed);
        let (addr, _dup) = start("127.0.0.1:0".parse().unwrap(), None, st.clone()).unwrap();
        let t0 = Instant::now();
        let mut idle = TcpStream::connect(addr).unwrap();
        let mut half = TcpStream::connect(addr).unwrap();
        half.write_all(b"GET /ready HTTP/1.1\r\nHo").unwrap();
        let t = Instant::now();
        assert!(get(addr, "/ready").starts_with("HTTP/1.1 200"));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        for s in [&mut idle, &mut half] {
            s.set_read_timeout(Some(REQUEST_DEADLINE * 5)).unwrap();
            let mut r = Vec::new();
            let _ = s.read_to_end(&mut r);
            let waited = t0.elapsed();
            assert!(
                // The server's clock starts at accept, a little before connect() returns.
                waited + Duration::from_millis(20) >= REQUEST_DEADLINE
                    && waited < REQUEST_DEADLINE * 3,
                "{waited:?}"
            );
            assert!(r.is_empty() || r.starts_with(b"HTTP/1.1 408 "), "{r:?}");
        }
        assert_eq!(st.stats.timeouts.load(Ordering::Relaxed), 2);
        // The loop counts a connection closed just after the close the client saw (the CI
        // run read 1 here once): wait for it, bounded.
        let settle = Instant::now();
        while st.stats.open.load(Ordering::Relaxed) != 0
            && settle.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(st.stats.open.load(Ordering::Relaxed), 0);
    }

    /// The value of the sample line `name` (exact name, labels included).
    fn sample(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn histograms_merge_workers_into_cumulative_buckets() {
        let st = state();
        let ms = Duration::from_millis;
        st.workers[0].record(&st.workers[0].upstream_response_us, ms(3));
        st.workers[1].record(&st.workers[1].upstream_response_us, ms(40));
        st.workers[1].record(&st.workers[1].upstream_response_us, ms(200_000));
        st.workers[0].record(&st.workers[0].hold_us, Duration::from_micros(50));
        crate::stats::record_into(&mut st.sink.commit_us.lock().unwrap(), ms(7));
        let m = render_metrics(&st);
        let h = "upstreamResponseDuration_milliseconds";
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"2.5\"}}")), 0.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"5\"}}")), 1.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"50\"}}")), 2.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"60000\"}}")), 2.0);
        assert_eq!(sample(&m, &format!("{h}_bucket{{le=\"+Inf\"}}")), 3.0);
        assert_eq!(sample(&m, &format!("{h}_count")), 3.0);
        let sum = sample(&m, &format!("{h}_sum"));
        assert!((sum - 200_043.0).abs() < 200_043.0 * 0.01, "{sum}");
        let b = "blockedDuration_milliseconds";
        assert_eq!(sample(&m, &format!("{b}_bucket{{le=\"0.1\"}}")), 1.0);
        assert_eq!(sample(&m, &format!("{b}_count")), 1.0);
        let k = "kafkaCommitDuration_milliseconds";
        assert_eq!(sample(&m, &format!("{k}_bucket{{le=\"5\"}}")), 0.0);
        assert_eq!(sample(&m, &format!("{k}_bucket{{le=\"10\"}}")), 1.0);
        assert_eq!(sample(&m, &format!("{k}_count")), 1.0);
    }

    #[test]
    fn gauges_and_info_line() {
        let mut st = state();
        st.node_id = Arc::from("a\"b\\c\nd");
        st.sink.queued_bytes.store(4096, Ordering::Relaxed);
        st.workers[0].add(Counter::ConnAccepted, 3);
        st.workers[1].add(Counter::ConnClosed, 2);
        st.workers[1].inc(Counter::RequestsGetHead);
        let m = render_metrics(&st);
        assert_eq!(sample(&m, "sinkQueueBytes"), 4096.0);
        assert_eq!(sample(&m, "activeConnection"), 1.0);
        assert_eq!(sample(&m, "requestsGetHead_total"), 1.0);
        assert_eq!(sample(&m, "draining"), 0.0);
        let info = format!(
            "captureProxyInfo{{node_id=\"a\\\"b\\\\c\\nd\",version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&m, &info), 1.0);
        // Every sample line belongs to a declared family.
        let families: Vec<&str> = m
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        for l in m.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(
                families.iter().any(|f| name == *f
                    || name
                        .strip_prefix(f)
                        .is_some_and(|r| ["_bucket", "_sum", "_count"].contains(&r))),
                "{l}"
            );
        }
    }
}
