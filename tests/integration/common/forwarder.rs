//! Fault injection in front of a real Kafka broker: a Kafka-aware TCP [`Forwarder`] the tests
//! switch between modes at run time, and a [`Broker`] process (tansu or Apache Kafka) they can
//! stop, kill, restart, freeze (SIGSTOP) and thaw (SIGCONT).
//!
//! The forwarder listens on 127.0.0.1 and relays each accepted connection to the broker.
//! Kafka frames are a 4-byte big-endian length and that many bytes, so it relays whole frames
//! and counts, per connection, requests forwarded and responses returned:
//! - `pass`: relay.
//! - `refuse`: the listening socket is closed (connects get ECONNREFUSED); each open connection
//!   is closed (FIN both ways) as soon as it has no request outstanding and no partial frame
//!   either way, so no request or response is ever cut in half; one that never gets idle is
//!   closed after [`REFUSE_CLOSE_BOUND`] anyway (counted). `pass` re-binds the SAME port
//!   (SO_REUSEADDR), so the broker's advertised address stays valid.
//! - `slow(d)`: every broker→client frame is delivered `d` after it arrived (a delay line: the
//!   frames of a pipelined connection are not serialised).
//! - `reset_mid_produce`: the next Produce request (api key 0, the i16 after the length) on any
//!   connection is forwarded only half, then both sides of that connection are reset (RST:
//!   SO_LINGER 0 and a disconnect), and the mode goes back to `pass`.
//!
//! Brokers must advertise the forwarder's address (tansu `--advertised-listener-url`, Apache
//! Kafka `advertised.listeners`), or librdkafka connects past it after bootstrap. [`Broker`]
//! starts them through `scripts/kafka-local.sh start --impl tansu|apache --port B
//! --advertised-port F` (plus `stop`, `kill`, `pid`) when the script has that interface, and
//! tansu directly otherwise (`~/.cargo/bin/tansu broker … --storage-engine memory://`).
//!
//! May depend on: socket2 (SO_REUSEADDR, SO_LINGER), libc (signals, disconnect), std.
//!
//! Invariants: every socket operation is bounded (read/write timeouts of [`TICK`] /
//! [`WRITE_TIMEOUT`], so every thread notices a stop within a tick and the whole forwarder
//! stops on drop); nothing listens or connects anywhere but 127.0.0.1 (the broker address is
//! asserted loopback); a request frame is forwarded whole or (reset mode, once) exactly half.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// Granularity of every blocking wait in the forwarder: socket read timeouts, accept polls,
/// delay-line sleeps. Small against the faults' seconds, large enough to cost no CPU.
pub const TICK: Duration = Duration::from_millis(20);
/// Accept poll interval (the listener is non-blocking so `refuse` can close it at once).
const ACCEPT_POLL: Duration = Duration::from_millis(2);
/// Most time one write to either side may block (a frozen broker's full socket buffer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most time to connect to the broker for an accepted connection.
const BROKER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// `refuse`: most time an open connection may stay busy before it is closed anyway.
pub const REFUSE_CLOSE_BOUND: Duration = Duration::from_secs(5);
/// How often `refuse` looks for connections that became idle.
const CLOSER_POLL: Duration = Duration::from_millis(2);
/// Largest Kafka frame accepted (bytes); a larger length prefix is a protocol error that ends
/// the connection.
const MAX_FRAME: usize = 256 << 20;
/// Most time `pass` retries re-binding the port after `refuse`.
const REBIND_BOUND: Duration = Duration::from_secs(5);
/// Kafka api key of Produce.
const API_PRODUCE: i16 = 0;

/// What the forwarder does now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Refuse,
    Slow(Duration),
    ResetMidProduce,
}

/// Counters since the forwarder started (all monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Client connections accepted (and relayed to the broker).
    pub connections: u64,
    /// Accepted connections closed at once because the broker refused or did not answer.
    pub broker_connect_failed: u64,
    /// Request frames forwarded to the broker (whole, or the one halved by a reset).
    pub requests: u64,
    /// Of those, Produce requests.
    pub produce_requests: u64,
    /// Response frames delivered to clients.
    pub responses: u64,
    /// Resets done (`reset_mid_produce`).
    pub resets: u64,
    /// Connections `refuse` closed once idle.
    pub refuse_closed_idle: u64,
    /// Connections `refuse` closed past [`REFUSE_CLOSE_BOUND`] while still busy.
    pub refuse_closed_busy: u64,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    broker_connect_failed: AtomicU64,
    requests: AtomicU64,
    produce_requests: AtomicU64,
    responses: AtomicU64,
    resets: AtomicU64,
    refuse_closed_idle: AtomicU64,
    refuse_closed_busy: AtomicU64,
}

/// Per-connection state shared by its threads and `refuse`'s closer.
#[derive(Default)]
struct ConnState {
    /// Requests forwarded whose response has not been delivered yet.
    outstanding: u64,
    /// Part of a request frame has been read from the client.
    client_partial: bool,
    /// Part of a response frame has been read from the broker.
    broker_partial: bool,
    /// `refuse` decided to close: no further request is forwarded.
    closing: bool,
}

struct Conn {
    client: TcpStream,
    broker: TcpStream,
    state: Mutex<ConnState>,
    dead: AtomicBool,
}

impl Conn {
    fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Ends the connection with FIN both ways (threads exit within a tick).
    fn close(&self) {
        self.dead.store(true, Ordering::Release);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.broker.shutdown(Shutdown::Both);
    }

    /// Ends the connection with RST both ways: SO_LINGER 0 (for the final close) and a
    /// disconnect (connect to AF_UNSPEC), which resets an established TCP connection at once
    /// and wakes the threads blocked on it.
    fn reset(&self) {
        self.dead.store(true, Ordering::Release);
        for s in [&self.client, &self.broker] {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            disconnect(s);
        }
    }
}

/// connect(2) to AF_UNSPEC: Linux's tcp_disconnect sends RST on an established connection.
fn disconnect(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC, its size given; the fd is open (owned by
    // `s`, borrowed for the call).
    unsafe {
        let mut sa: libc::sockaddr = std::mem::zeroed();
        sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            s.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

struct Inner {
    target: SocketAddr,
    port: u16,
    mode: Mutex<Mode>,
    /// Set by `reset_mid_produce`; taken by exactly one connection's next Produce request.
    reset_armed: AtomicBool,
    listener: Mutex<Option<TcpListener>>,
    conns: Mutex<Vec<Weak<Conn>>>,
    stop: AtomicBool,
    stats: Stats,
    /// Threads started (connection threads included), for the drop's bounded join.
    threads_live: AtomicUsize,
}

impl Inner {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live_conns(&self) -> Vec<Arc<Conn>> {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        g.retain(|w| w.upgrade().is_some_and(|c| !c.is_dead()));
        g.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A Kafka-aware TCP forwarder on 127.0.0.1:PORT → the broker; see the module doc. Stops
/// (closing every connection) when dropped.
pub struct Forwarder {
    inner: Arc<Inner>,
}

/// Binds 127.0.0.1:port with SO_REUSEADDR, non-blocking.
fn bind_listener(port: u16) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    s.listen(1024)?;
    let l: TcpListener = s.into();
    l.set_nonblocking(true)?;
    Ok(l)
}

/// A port free on 127.0.0.1 right now (bound to :0 and released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

impl Forwarder {
    /// Listens on 127.0.0.1:0 (kept across `refuse`/`pass`) and relays to `target`, which must
    /// be a loopback address.
    pub fn start(target: SocketAddr) -> Forwarder {
        assert!(
            target.ip().is_loopback(),
            "forwarder target {target} not loopback"
        );
        let l = bind_listener(0).expect("bind forwarder");
        let port = l.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            target,
            port,
            mode: Mutex::new(Mode::Pass),
            reset_armed: AtomicBool::new(false),
            listener: Mutex::new(Some(l)),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            stats: Stats::default(),
            threads_live: AtomicUsize::new(0),
        });
        let i2 = inner.clone();
        spawn(&inner, "fwd-accept", move || accept_loop(i2));
        Forwarder { inner }
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.inner.port))
    }

    /// `127.0.0.1:PORT` as a bootstrap string.
    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    pub fn mode(&self) -> Mode {
        self.inner.mode()
    }

    /// Relays everything; after `refuse`, listens again on the same port (retried up to
    /// [`REBIND_BOUND`]; panics past it).
    pub fn pass(&self) {
        self.inner.reset_armed.store(false, Ordering::Release);
        {
            let mut l = self
                .inner
                .listener
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if l.is_none() {
                let deadline = Instant::now() + REBIND_BOUND;
                loop {
                    match bind_listener(self.inner.port) {
                        Ok(s) => {
                            *l = Some(s);
                            break;
                        }
                        Err(e) => {
                            assert!(
                                Instant::now() < deadline,
                                "re-binding forwarder port {}: {e}",
                                self.inner.port
                            );
                            thread::sleep(TICK);
                        }
                    }
                }
            }
        }
        *self.inner.mode.lock().unwrap_or_else(|p| p.into_inner()) = Mode::Pass;
    }

    /// Stops accepting (the listening socket is closed: ECONNREFUSED) and closes each open
    /// connection once it is idle (no request outstanding, no partial frame), or after
    /// [`REFUSE_CLOSE_BOUND`] if it never is. Returns at once; see [`Forwarder::wait_no_connections`].
    pub fn refuse(&self) {
        *self.inner.mode.lock().unwrap_or_else(|p| p.into_inner()) = Mode::Refuse;
        drop(
            self.inner
                .listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        let inner = self.inner.clone();
        spawn(&self.inner, "fwd-closer", move || closer_loop(inner));
    }

    /// Delays every broker→client frame by `d` from its arrival.
    pub fn slow(&self, d: Duration) {
        self.pass();
        *self.inner.mode.lock().unwrap_or_else(|p| p.into_inner()) = Mode::Slow(d);
    }

    /// Arms the reset: the next Produce request is forwarded half, then its connection is
    /// reset both ways and the mode goes back to `pass`.
    pub fn reset_mid_produce(&self) {
        self.pass();
        *self.inner.mode.lock().unwrap_or_else(|p| p.into_inner()) = Mode::ResetMidProduce;
        self.inner.reset_armed.store(true, Ordering::Release);
    }

    pub fn counters(&self) -> Counters {
        let s = &self.inner.stats;
        let g = |a: &AtomicU64| a.load(Ordering::Acquire);
        Counters {
            connections: g(&s.connections),
            broker_connect_failed: g(&s.broker_connect_failed),
            requests: g(&s.requests),
            produce_requests: g(&s.produce_requests),
            responses: g(&s.responses),
            resets: g(&s.resets),
            refuse_closed_idle: g(&s.refuse_closed_idle),
            refuse_closed_busy: g(&s.refuse_closed_busy),
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.inner.live_conns().len()
    }

    /// Waits (bounded) until no connection is open; whether that happened.
    pub fn wait_no_connections(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.open_connections() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(TICK);
        }
        true
    }

    /// Waits (bounded) until `pred(counters)` holds; whether it did.
    pub fn wait_counters(&self, bound: Duration, pred: impl Fn(&Counters) -> bool) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            if pred(&self.counters()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(TICK);
        }
    }

    /// Closes every open connection now (FIN), whatever the mode (e.g. after the broker
    /// process was replaced).
    pub fn close_all(&self) {
        for c in self.inner.live_conns() {
            c.close();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        drop(
            self.inner
                .listener
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        for c in self.inner.live_conns() {
            c.close();
        }
        // Every thread polls `stop`/`dead` each tick; bounded wait for them to leave.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.inner.threads_live.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            thread::sleep(TICK);
        }
    }
}

/// Spawns a named thread counted in `threads_live`.
fn spawn(inner: &Arc<Inner>, name: &str, f: impl FnOnce() + Send + 'static) {
    inner.threads_live.fetch_add(1, Ordering::AcqRel);
    let i2 = inner.clone();
    let r = thread::Builder::new().name(name.into()).spawn(move || {
        f();
        i2.threads_live.fetch_sub(1, Ordering::AcqRel);
    });
    if r.is_err() {
        inner.threads_live.fetch_sub(1, Ordering::AcqRel);
        panic!("spawn {name}");
    }
}

fn accept_loop(inner: Arc<Inner>) {
    while !inner.stop.load(Ordering::Acquire) {
        let accepted = {
            let g = inner.listener.lock().unwrap_or_else(|p| p.into_inner());
            match g.as_ref() {
                Some(l) => l.accept().ok(),
                None => None,
            }
        };
        let Some((client, _)) = accepted else {
            thread::sleep(ACCEPT_POLL);
            continue;
        };
        let _ = client.set_nonblocking(false);
        match TcpStream::connect_timeout(&inner.target, BROKER_CONNECT_TIMEOUT) {
            Ok(broker) => start_conn(&inner, client, broker),
            Err(_) => {
                // The broker is down: the client sees its connection reset at once, as close
                // to "refused" as an accepted connection gets.
                inner
                    .stats
                    .broker_connect_failed
                    .fetch_add(1, Ordering::AcqRel);
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
            }
        }
    }
}

fn start_conn(inner: &Arc<Inner>, client: TcpStream, broker: TcpStream) {
    for s in [&client, &broker] {
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(TICK));
        let _ = s.set_write_timeout(Some(WRITE_TIMEOUT));
    }
    inner.stats.connections.fetch_add(1, Ordering::AcqRel);
    let conn = Arc::new(Conn {
        client,
        broker,
        state: Mutex::new(ConnState::default()),
        dead: AtomicBool::new(false),
    });
    inner
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(&conn));
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let (i1, c1) = (inner.clone(), conn.clone());
    spawn(inner, "fwd-c2b", move || client_to_broker(&i1, &c1));
    let (i2, c2) = (inner.clone(), conn.clone());
    spawn(inner, "fwd-b2c-read", move || broker_reader(&i2, &c2, tx));
    let (i3, c3) = (inner.clone(), conn);
    spawn(inner, "fwd-b2c-write", move || client_writer(&i3, &c3, rx));
}

/// Splits complete frames (length prefix included) off the front of `buf`; `Err` on a length
/// that is negative or above [`MAX_FRAME`].
fn take_frames(buf: &mut Vec<u8>) -> Result<Vec<Vec<u8>>, ()> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= 4 {
        let len = i32::from_be_bytes(buf[at..at + 4].try_into().unwrap());
        if len < 0 || len as usize > MAX_FRAME {
            return Err(());
        }
        let end = at + 4 + len as usize;
        if buf.len() < end {
            break;
        }
        out.push(buf[at..end].to_vec());
        at = end;
    }
    buf.drain(..at);
    Ok(out)
}

/// The api key of a request frame (the i16 after the length), if it has one.
fn api_key(frame: &[u8]) -> Option<i16> {
    frame.get(4..6).map(|b| i16::from_be_bytes([b[0], b[1]]))
}

/// One read with the tick timeout: `Ok(None)` on timeout/EINTR, `Ok(Some(0))` on EOF.
fn read_tick(mut s: &TcpStream, buf: &mut [u8]) -> io::Result<Option<usize>> {
    match s.read(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn client_to_broker(inner: &Inner, conn: &Conn) {
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    'outer: while !conn.is_dead() && !inner.stop.load(Ordering::Acquire) {
        let n = match read_tick(&conn.client, &mut tmp) {
            Ok(None) => continue,
            Ok(Some(0)) | Err(_) => break,
            Ok(Some(n)) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        // Decide under the state lock which frames go out, so `refuse` never closes between
        // a request counted outstanding and its response.
        let mut to_send: Vec<Vec<u8>> = Vec::new();
        let mut halve_last = false;
        {
            let mut st = conn.state();
            if st.closing {
                break;
            }
            let Ok(frames) = take_frames(&mut buf) else {
                break;
            };
            for f in frames {
                let produce = api_key(&f) == Some(API_PRODUCE);
                inner.stats.requests.fetch_add(1, Ordering::AcqRel);
                if produce {
                    inner.stats.produce_requests.fetch_add(1, Ordering::AcqRel);
                    if inner
                        .reset_armed
                        .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        to_send.push(f);
                        halve_last = true;
                        break;
                    }
                }
                st.outstanding += 1;
                to_send.push(f);
            }
            st.client_partial = !buf.is_empty();
        }
        let count = to_send.len();
        for (i, f) in to_send.into_iter().enumerate() {
            if halve_last && i + 1 == count {
                let _ = (&conn.broker).write_all(&f[..f.len() / 2]);
                let _ = (&conn.broker).flush();
                // Let the half reach the broker before the reset overtakes it.
                thread::sleep(TICK);
                conn.reset();
                inner.stats.resets.fetch_add(1, Ordering::AcqRel);
                let mut m = inner.mode.lock().unwrap_or_else(|p| p.into_inner());
                if *m == Mode::ResetMidProduce {
                    *m = Mode::Pass;
                }
                break 'outer;
            }
            if (&conn.broker).write_all(&f).is_err() {
                break 'outer;
            }
        }
    }
    if !conn.is_dead() {
        conn.close();
    }
}

fn broker_reader(inner: &Inner, conn: &Conn, tx: mpsc::Sender<(Instant, Vec<u8>)>) {
    let mut buf = Vec::new();
    let mut tmp = vec![0u8; 64 * 1024];
    while !conn.is_dead() && !inner.stop.load(Ordering::Acquire) {
        let n = match read_tick(&conn.broker, &mut tmp) {
            Ok(None) => continue,
            Ok(Some(0)) | Err(_) => break,
            Ok(Some(n)) => n,
        };
        let arrived = Instant::now();
        buf.extend_from_slice(&tmp[..n]);
        let delay = match inner.mode() {
            Mode::Slow(d) => d,
            _ => Duration::ZERO,
        };
        let mut st = conn.state();
        let Ok(frames) = take_frames(&mut buf) else {
            break;
        };
        st.broker_partial = !buf.is_empty();
        drop(st);
        for f in frames {
            if tx.send((arrived + delay, f)).is_err() {
                break;
            }
        }
    }
    // The writer delivers what was read, then ends the connection (it sees the channel close).
}

fn client_writer(inner: &Inner, conn: &Conn, rx: mpsc::Receiver<(Instant, Vec<u8>)>) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut reader_done = false;
    while !conn.is_dead() && !inner.stop.load(Ordering::Acquire) {
        if queue.is_empty() {
            if reader_done {
                break;
            }
            match rx.recv_timeout(TICK) {
                Ok(x) => queue.push_back(x),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    reader_done = true;
                    continue;
                }
            }
        }
        let (release, _) = queue.front().unwrap();
        let now = Instant::now();
        if *release > now {
            thread::sleep((*release - now).min(TICK));
            continue;
        }
        let (_, f) = queue.pop_front().unwrap();
        if (&conn.client).write_all(&f).is_err() {
            break;
        }
        inner.stats.responses.fetch_add(1, Ordering::AcqRel);
        let mut st = conn.state();
        st.outstanding = st.outstanding.saturating_sub(1);
    }
    if !conn.is_dead() {
        conn.close();
    }
}

/// `refuse`'s closer: closes each connection once idle, or past the bound; ends when none is
/// left or the mode changed.
fn closer_loop(inner: Arc<Inner>) {
    let started = Instant::now();
    loop {
        if inner.stop.load(Ordering::Acquire) || inner.mode() != Mode::Refuse {
            return;
        }
        let conns = inner.live_conns();
        if conns.is_empty() {
            return;
        }
        let over = started.elapsed() >= REFUSE_CLOSE_BOUND;
        for c in conns {
            let idle = {
                let mut st = c.state();
                let idle = st.outstanding == 0 && !st.client_partial && !st.broker_partial;
                if idle || over {
                    st.closing = true;
                }
                idle
            };
            if idle {
                inner
                    .stats
                    .refuse_closed_idle
                    .fetch_add(1, Ordering::AcqRel);
                c.close();
            } else if over {
                inner
                    .stats
                    .refuse_closed_busy
                    .fetch_add(1, Ordering::AcqRel);
                c.close();
            }
        }
        thread::sleep(CLOSER_POLL);
    }
}

// ----------------------------------------------------------------------------------------
// The broker process
// ----------------------------------------------------------------------------------------

/// Which Kafka implementation a [`Broker`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerImpl {
    /// tansu (in-memory storage: a restart loses every topic and record).
    Tansu,
    /// Apache Kafka 4.x, KRaft, single node, logs on disk (kept across a restart).
    Apache,
}

impl BrokerImpl {
    pub fn parse(s: &str) -> Option<BrokerImpl> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tansu" => Some(BrokerImpl::Tansu),
            "apache" | "kafka" => Some(BrokerImpl::Apache),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BrokerImpl::Tansu => "tansu",
            BrokerImpl::Apache => "apache",
        }
    }

    /// Whether the broker keeps its records across a kill and restart.
    pub fn durable(self) -> bool {
        self == BrokerImpl::Apache
    }
}

/// Most time one `scripts/kafka-local.sh` call may take: the first Apache start downloads
/// the broker from Maven Central; later ones take seconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(900);
/// Most time for a directly started tansu to accept connections.
const DIRECT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Broker`] is run.
enum Backend {
    /// `scripts/kafka-local.sh … --impl I --port B --advertised-port F`.
    Script,
    /// tansu spawned by the test (until the script has `--impl`/`--advertised-port`).
    Direct { child: Option<Child>, log: PathBuf },
}

/// A broker on 127.0.0.1:`port`, advertising 127.0.0.1:`advertised_port` (the forwarder).
/// Stopped when dropped.
pub struct Broker {
    pub imp: BrokerImpl,
    pub port: u16,
    pub advertised_port: u16,
    backend: Backend,
    /// Directory of logs of directly started brokers.
    _logs: Option<tempfile::TempDir>,
}

fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-local.sh")
}

/// Whether `scripts/kafka-local.sh` has the `--impl` / `--advertised-port` / `kill` / `pid`
/// interface (`CAPTURE_PROXY_TEST_BROKER_DIRECT=1` forces tansu started directly).
pub fn script_supports_impls() -> bool {
    if std::env::var("CAPTURE_PROXY_TEST_BROKER_DIRECT").is_ok_and(|v| v == "1") {
        return false;
    }
    std::fs::read_to_string(script_path()).is_ok_and(|s| {
        s.contains("--advertised-port") && s.contains("--impl") && s.contains("pid)")
    })
}

/// Runs the script with `args`, bounded; `(success, stdout, stderr)`.
fn run_script(args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(script_path())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn kafka-local.sh");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(SCRIPT_TIMEOUT) {
        Ok(Ok(out)) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => panic!("kafka-local.sh {args:?}: {e}"),
        Err(_) => {
            // SAFETY: kill(2) of the child we spawned (not reaped: the waiter still runs).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("kafka-local.sh {args:?} did not finish within {SCRIPT_TIMEOUT:?}")
        }
    }
}

fn tansu_bin() -> PathBuf {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin/tansu")
}

impl Broker {
    /// Starts `imp` on a free port, advertising `advertised_port` (start the forwarder first).
    pub fn start(imp: BrokerImpl, advertised_port: u16) -> Broker {
        Broker::start_at(imp, free_port(), advertised_port)
    }

    /// Starts `imp` on 127.0.0.1:`port`, advertising 127.0.0.1:`advertised_port`.
    pub fn start_at(imp: BrokerImpl, port: u16, advertised_port: u16) -> Broker {
        let backend = if script_supports_impls() {
            Backend::Script
        } else {
            assert_eq!(
                imp,
                BrokerImpl::Tansu,
                "scripts/kafka-local.sh has no --impl/--advertised-port yet: only tansu can be \
                 started directly"
            );
            Backend::Direct {
                child: None,
                log: PathBuf::new(),
            }
        };
        let logs = matches!(backend, Backend::Direct { .. })
            .then(|| tempfile::tempdir().expect("log dir"));
        let mut b = Broker {
            imp,
            port,
            advertised_port,
            backend,
            _logs: logs,
        };
        b.launch();
        b
    }

    fn impl_args(&self) -> Vec<String> {
        vec![
            "--impl".into(),
            self.imp.name().into(),
            "--port".into(),
            self.port.to_string(),
        ]
    }

    fn script(&self, cmd: &str, extra: &[String]) -> (bool, String, String) {
        let mut args: Vec<String> = vec![cmd.to_string()];
        args.extend(self.impl_args());
        args.extend(extra.iter().cloned());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script(&refs)
    }

    /// Starts the broker process (again, after `stop`/`kill`: same ports; Apache keeps its
    /// data directory) and waits until it accepts connections on its own port.
    fn launch(&mut self) {
        let port = self.port;
        let adv = self.advertised_port;
        if matches!(self.backend, Backend::Script) {
            let (ok, out, err) =
                self.script("start", &["--advertised-port".into(), adv.to_string()]);
            assert!(ok, "kafka-local.sh start failed:\n{out}\n{err}");
        }
        match &mut self.backend {
            Backend::Script => {}
            Backend::Direct { child, log } => {
                let dir = self._logs.as_ref().unwrap().path();
                *log = dir.join(format!("tansu-{port}.log"));
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&*log)
                    .expect("tansu log");
                let c = Command::new(tansu_bin())
                    .args([
                        "broker",
                        "--listener-url",
                        &format!("tcp://127.0.0.1:{port}"),
                        "--advertised-listener-url",
                        &format!("tcp://127.0.0.1:{adv}"),
                        "--storage-engine",
                        "memory://tansu/",
                        "--cluster-id",
                        "capture-proxy-faults",
                    ])
                    .stdin(Stdio::null())
                    .stdout(f.try_clone().unwrap())
                    .stderr(f)
                    .spawn()
                    .expect("spawn tansu (cargo install tansu, or scripts/kafka-local.sh start)");
                *child = Some(c);
            }
        }
        let deadline = Instant::now() + DIRECT_READY_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} not accepting on {addr} within {DIRECT_READY_TIMEOUT:?}",
                self.imp.name()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's process id, while it runs.
    pub fn pid(&mut self) -> Option<i32> {
        match &mut self.backend {
            Backend::Script => {
                let (ok, out, _) = self.script("pid", &[]);
                if !ok {
                    return None;
                }
                out.split_whitespace().last().and_then(|p| p.parse().ok())
            }
            Backend::Direct { child, .. } => {
                let c = child.as_mut()?;
                match c.try_wait() {
                    Ok(None) => Some(c.id() as i32),
                    _ => None,
                }
            }
        }
    }

    /// Sends `sig` to the broker process; panics if it does not run.
    pub fn signal(&mut self, sig: libc::c_int) {
        let pid = self.pid().expect("broker process running");
        // SAFETY: kill(2) of the broker's pid, alive just now (a direct child is not reaped
        // until `stop`/`kill`, which take `&mut self`).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Freezes the broker (SIGSTOP): connections stay open, nothing is answered.
    pub fn sigstop(&mut self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn sigcont(&mut self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGKILL, and waits until the process is gone.
    pub fn kill(&mut self) {
        match &mut self.backend {
            Backend::Script => {
                let (ok, out, err) = self.script("kill", &[]);
                assert!(ok, "kafka-local.sh kill failed:\n{out}\n{err}");
            }
            Backend::Direct { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }

    /// Graceful stop (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        match &mut self.backend {
            Backend::Script => {
                // SIGCONT first: a frozen broker cannot handle SIGTERM.
                if let Some(pid) = self.pid() {
                    // SAFETY: kill(2) of the broker's pid, alive just now.
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }
                let _ = self.script("stop", &[]);
            }
            Backend::Direct { child, .. } => {
                if let Some(mut c) = child.take() {
                    // SAFETY: our unreaped child.
                    unsafe {
                        libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
                        libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
                    }
                    let deadline = Instant::now() + Duration::from_secs(10);
                    loop {
                        if let Ok(Some(_)) = c.try_wait() {
                            break;
                        }
                        if Instant::now() >= deadline {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// Starts the broker again after `kill` or `stop` (same ports).
    pub fn restart(&mut self) {
        self.launch();
    }

    /// The last lines of the broker's log (directly started brokers only; the script keeps
    /// its own log).
    pub fn log_tail(&self, lines: usize) -> String {
        match &self.backend {
            Backend::Direct { log, .. } => std::fs::read_to_string(log)
                .map(|s| {
                    let v: Vec<&str> = s.lines().collect();
                    v[v.len().saturating_sub(lines)..].join("\n")
                })
                .unwrap_or_default(),
            Backend::Script => String::new(),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if matches!(self.backend, Backend::Script) && self.imp == BrokerImpl::Apache {
            // The script keeps Apache's data per port (documented in its header); ports here
            // are random, so a test's data is never reused: remove it.
            let state = std::env::var("XDG_STATE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|_| {
                    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".local/state")
                });
            let _ = std::fs::remove_dir_all(
                state.join(format!("capture-proxy-kafka/apache-{}", self.port)),
            );
        }
    }
}
