//! The admin endpoint under abuse, end to end: the proxy in-process (`tests/common` harness)
//! with `--admin-listen 127.0.0.1:0`. 1 000 slow clients (idle, half a head, a byte a second)
//! hold admin sockets while `/ready` is probed for latency, then are closed by the whole-request
//! deadline; more connections than the cap close the oldest; other methods get 405, garbage
//! 400, oversize heads 431.
//!
//! May depend on: the crate's public API (`start`, `config`, the `admin` limits),
//! `tests/common`, libc (`poll`, `setrlimit`), std.
//!
//! Invariant: every wait is bounded (`IO_TIMEOUT`, `SETTLE`, the deadline plus
//! `CLOSE_SLACK`); readiness comes from the endpoint's own gauges (`adminConnections`,
//! `adminConnectionsShed_total`), never from sleeps; only 127.0.0.1 is contacted; the tests of
//! this file run one at a time (`serial`) so latency is measured without each other's load.

use crate::common;

/// How much earlier than its own deadline a client may see the close: the server's clock
/// starts at accept, the client's after connect() returned (observed: 1.4 µs early).
const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_millis(20);

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::admin::{MAX_CONNECTIONS, REQUEST_DEADLINE};
use common::admin::{admin_get, metric, wait_metric, with_admin};
use common::*;

/// Slow clients held open at once (the figure).
const SLOW_CLIENTS: usize = 1000;
/// `/ready` probes timed while they are held.
const PROBES: usize = 50;
/// Bound on the probes' p99 (ms): a load balancer's health check times out at 2 s or more;
/// the issue asks for 100 ms.
const READY_P99: Duration = Duration::from_millis(100);
/// Connections opened past the cap in the shedding test.
const OVER_CAP: usize = 200;
/// Bound of the waits for the endpoint's gauges to show what the clients did (s).
const SETTLE: Duration = Duration::from_secs(10);
/// Slack past a connection's deadline for the admin thread to close it and for us to see the
/// close (s): generous for a loaded 2-core CI machine.
const CLOSE_SLACK: Duration = Duration::from_secs(1);
/// Pace of the dribbling clients: one byte each per second.
const DRIBBLE_PERIOD: Duration = Duration::from_secs(1);
/// What the "half a head" clients send, and what the dribbling ones send a byte at a time.
const HALF_HEAD: &[u8] = b"GET /ready HTTP/1.1\r\nHost: adm";
const FULL_HEAD: &[u8] = b"GET /ready HTTP/1.1\r\nHost: admin\r\n\r\n";

/// Raises the soft descriptor limit to at least `want` (up to the hard limit).
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the duration of each call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// How a slow client misbehaves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Connects and sends nothing.
    Idle,
    /// Sends part of a head at once, then nothing.
    HalfHead,
    /// Sends a head one byte per `DRIBBLE_PERIOD`.
    Dribble,
}

struct Slow {
    stream: TcpStream,
    kind: Kind,
    /// Just before the connect started.
    connected: Instant,
}

/// Opens `n` slow connections to `addr`, kinds in turn.
fn open_slow(addr: SocketAddr, n: usize, kinds: &[Kind]) -> Vec<Slow> {
    (0..n)
        .map(|i| {
            // Read before connecting: the proxy's accept (the deadline's start) comes after.
            let connected = Instant::now();
            let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
            let kind = kinds[i % kinds.len()];
            match kind {
                Kind::Idle => {}
                Kind::HalfHead => stream.write_all(HALF_HEAD).expect("half head"),
                Kind::Dribble => stream.write_all(&FULL_HEAD[..1]).expect("first byte"),
            }
            Slow {
                stream,
                kind,
                connected,
            }
        })
        .collect()
}

/// Sends the next byte of `FULL_HEAD` to each stream every `DRIBBLE_PERIOD` until `stop`
/// says so, each has failed a write (the proxy closed it), or the head is out (bounded).
fn dribble(streams: Vec<TcpStream>, stop: mpsc::Receiver<()>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut alive: Vec<bool> = vec![true; streams.len()];
        for next in 1..FULL_HEAD.len() {
            if stop.recv_timeout(DRIBBLE_PERIOD) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            for (s, ok) in streams.iter().zip(alive.iter_mut()).filter(|(_, ok)| **ok) {
                *ok = (&*s).write_all(&FULL_HEAD[next..next + 1]).is_ok();
            }
            if !alive.contains(&true) {
                return;
            }
        }
    })
}

/// Waits (bounded by `bound`) until every stream is readable — the proxy answered or closed
/// it — and returns when each became so, by index.
fn wait_all_readable(streams: &[&TcpStream], bound: Duration) -> Vec<Instant> {
    let deadline = Instant::now() + bound;
    let mut seen: Vec<Option<Instant>> = vec![None; streams.len()];
    let mut fds: Vec<libc::pollfd> = streams
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    let mut index: Vec<usize> = (0..streams.len()).collect();
    while !fds.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{} of {} slow clients still open {bound:?} later",
            fds.len(),
            streams.len()
        );
        let ms = left.as_millis().min(1000) as i32;
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        let now = Instant::now();
        let mut i = 0;
        while i < fds.len() {
            if fds[i].revents != 0 {
                seen[index[i]] = Some(now);
                fds.swap_remove(i);
                index.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    seen.into_iter().map(|t| t.expect("seen")).collect()
}

/// What the proxy sent a slow client before closing it (panics if it did not close).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("slow client not closed: {e}"),
    }
    out
}

/// Times `PROBES` sequential `GET /ready` (connect to end of answer); sorted.
fn probe_ready(admin: SocketAddr) -> Vec<Duration> {
    let mut lat: Vec<Duration> = (0..PROBES)
        .map(|_| {
            let t = Instant::now();
            let (status, body) = admin_get(admin, "/ready");
            let took = t.elapsed();
            assert_eq!((status, body.as_str()), (200, "ready\n"));
            took
        })
        .collect();
    lat.sort();
    lat
}

/// The p-th percentile (nearest rank) of sorted `lat`.
fn percentile(lat: &[Duration], p: usize) -> Duration {
    lat[(lat.len() * p).div_ceil(100).max(1) - 1]
}

/// `/ready` answers within 100 ms (p99 of 50 probes) while 1 000 slow clients — idle, half a
/// head, a byte a second — hold admin sockets; each slow client is closed by the deadline
/// counted from its accept (not from its last byte), those that sent something with a 408;
/// all are counted as timeouts and none was shed.
#[test]
fn ready_answers_while_1000_slow_clients_hold_sockets() {
    let _serial = serial();
    raise_nofile(8 * SLOW_CLIENTS as u64);
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), with_admin);
    let admin = proxy.handle().admin_addr().expect("admin endpoint");
    assert_eq!(admin_get(admin, "/ready").0, 200);
    let timeouts_before = metric(admin, "adminRequestTimeouts_total");

    let mut slow = open_slow(
        admin,
        SLOW_CLIENTS,
        &[Kind::Idle, Kind::HalfHead, Kind::Dribble],
    );
    let (stop_tx, stop_rx) = mpsc::channel();
    let dribbler = dribble(
        slow.iter()
            .filter(|s| s.kind == Kind::Dribble)
            .map(|s| s.stream.try_clone().expect("clone"))
            .collect(),
        stop_rx,
    );
    // Readiness: the endpoint holds all of them (the scrape counts itself).
    let held = wait_metric(admin, "adminConnections", SLOW_CLIENTS as u64 + 1, SETTLE);
    assert_eq!(
        held,
        SLOW_CLIENTS as u64 + 1,
        "slow clients not all accepted"
    );

    let lat = probe_ready(admin);
    // Still all held: the probes ran while the slow clients were there.
    assert_eq!(
        metric(admin, "adminConnections"),
        SLOW_CLIENTS as u64 + 1,
        "slow clients closed before the probes ended ({:?} after the first connect)",
        slow[0].connected.elapsed()
    );
    let (p50, p99, max) = (
        percentile(&lat, 50),
        percentile(&lat, 99),
        lat[lat.len() - 1],
    );
    eprintln!(
        "/ready with {SLOW_CLIENTS} slow clients held: p50 {p50:?}, p99 {p99:?}, max {max:?} over {PROBES} probes"
    );
    assert!(
        p99 < READY_P99,
        "/ready p99 {p99:?} (p50 {p50:?}) with {SLOW_CLIENTS} slow clients"
    );

    // Every slow client is closed at its deadline, counted from accept.
    let streams: Vec<&TcpStream> = slow.iter().map(|s| &s.stream).collect();
    let closed = wait_all_readable(&streams, REQUEST_DEADLINE + CLOSE_SLACK + SETTLE);
    let _ = stop_tx.send(());
    dribbler.join().expect("dribbler");
    let mut late = Duration::ZERO;
    for (s, at) in slow.iter_mut().zip(closed) {
        let after = at.duration_since(s.connected);
        assert!(
            // The deadline counts from the server's accept, which can complete a little
            // before the client's connect() returns and takes its timestamp.
            after + CLOCK_SLACK >= REQUEST_DEADLINE,
            "{:?} client closed after {after:?}, before the deadline",
            s.kind
        );
        late = late.max(after - REQUEST_DEADLINE);
        let got = read_until_closed(&mut s.stream);
        match s.kind {
            Kind::Idle => assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got)),
            Kind::HalfHead | Kind::Dribble => assert!(
                got.starts_with(b"HTTP/1.1 408 "),
                "{:?}: {:?}",
                s.kind,
                String::from_utf8_lossy(&got)
            ),
        }
    }
    eprintln!("slow clients closed at most {late:?} after their deadline");
    assert!(late < CLOSE_SLACK, "closed {late:?} after the deadline");
    assert_eq!(
        metric(admin, "adminRequestTimeouts_total") - timeouts_before,
        SLOW_CLIENTS as u64
    );
    assert_eq!(metric(admin, "adminConnectionsShed_total"), 0);
    assert_eq!(wait_metric(admin, "adminConnections", 1, SETTLE), 1);
}

/// Past `MAX_CONNECTIONS`, each new connection closes the oldest: idle sockets beyond the cap
/// cannot keep `/ready` out, the oldest are the ones closed, and every idle connection ends
/// either shed or timed out.
#[test]
fn connections_over_the_cap_close_the_oldest() {
    let _serial = serial();
    let total = MAX_CONNECTIONS + OVER_CAP;
    raise_nofile(4 * total as u64);
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), with_admin);
    let admin = proxy.handle().admin_addr().expect("admin endpoint");

    let mut idle = open_slow(admin, total, &[Kind::Idle]);
    // Readiness: the scrape itself is one more over the cap, so it sheds one more.
    wait_until("the oldest over-cap connections shed", SETTLE, || {
        metric(admin, "adminConnectionsShed_total") > OVER_CAP as u64
    });
    let lat = probe_ready(admin);
    let (p99, max) = (percentile(&lat, 99), lat[lat.len() - 1]);
    eprintln!(
        "/ready at the cap ({MAX_CONNECTIONS} idle held, {total} opened): p99 {p99:?}, max {max:?}"
    );
    assert!(p99 < READY_P99, "/ready p99 {p99:?} at the cap");

    // The shed ones are the oldest: closed now; the newest are still open (checked only while
    // none of them can have reached its deadline).
    let shed = metric(admin, "adminConnectionsShed_total") as usize;
    assert!(shed < total, "{shed}");
    let checked_at = Instant::now();
    let mut fds: Vec<libc::pollfd> = idle
        .iter()
        .map(|s| libc::pollfd {
            fd: s.stream.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    assert!(n >= 0);
    let readable: Vec<bool> = fds.iter().map(|f| f.revents != 0).collect();
    assert!(
        readable[..shed].iter().all(|r| *r),
        "an old connection was kept"
    );
    if checked_at.duration_since(idle[shed].connected) < REQUEST_DEADLINE {
        assert!(
            readable[shed..].iter().all(|r| !*r),
            "a new connection was closed while older ones were kept"
        );
    }

    let streams: Vec<&TcpStream> = idle.iter().map(|s| &s.stream).collect();
    wait_all_readable(&streams, REQUEST_DEADLINE + CLOSE_SLACK + SETTLE);
    for s in &mut idle {
        assert!(read_until_closed(&mut s.stream).is_empty());
    }
    let timeouts = metric(admin, "adminRequestTimeouts_total");
    let shed = metric(admin, "adminConnectionsShed_total");
    assert_eq!(
        timeouts + shed,
        total as u64,
        "timeouts {timeouts}, shed {shed}"
    );
    assert_eq!(wait_metric(admin, "adminConnections", 1, SETTLE), 1);
}

/// Sends `req` on a fresh admin connection, half-closes, reads the answer and the close.
fn raw(admin: SocketAddr, req: &[u8], head_request: bool) -> Response {
    let mut c = Client::connect(admin);
    c.send(req);
    c.shutdown_write();
    let r = c.read_response(head_request);
    assert!(c.closed_by_peer(), "admin connection left open");
    r
}

/// Methods other than GET/HEAD get 405 with `Allow: GET, HEAD`; HEAD gets the headers only;
/// anything that is not an HTTP/1.x head gets 400, an oversize head 431, an unknown path 404;
/// the rejections are counted and the endpoint keeps answering.
#[test]
fn methods_and_garbage_are_refused() {
    let _serial = serial();
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), with_admin);
    let admin = proxy.handle().admin_addr().expect("admin endpoint");
    let mut rejected = 0;

    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "get"] {
        let req =
            format!("{method} /ready HTTP/1.1\r\nHost: admin\r\nContent-Length: 5\r\n\r\nhello");
        let r = raw(admin, req.as_bytes(), false);
        assert_eq!(r.status, 405, "{method}");
        assert_eq!(r.header("allow"), Some(&b"GET, HEAD"[..]), "{method}");
        rejected += 1;
    }

    let r = raw(admin, b"HEAD /ready HTTP/1.1\r\nHost: admin\r\n\r\n", true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(&b"6"[..]));
    assert!(r.raw.ends_with(b"\r\n\r\n"), "HEAD answer has a body");
    let r = raw(admin, b"HEAD /metrics HTTP/1.1\r\n\r\n", true);
    assert_eq!(r.status, 200);
    assert!(r.raw.ends_with(b"\r\n\r\n"), "HEAD answer has a body");
    let (status, body) = admin_get(admin, "/ready?verbose=1");
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(admin_get(admin, "/nope").0, 404);
    assert_eq!(admin_get(admin, "/").0, 404);

    let garbage: [&[u8]; 8] = [
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", // a TLS ClientHello
        b"hello\r\n\r\n",
        b"GET /ready\r\n\r\n",          // no version
        b"GET /ready HTTP/2.0\r\n\r\n", // not HTTP/1.x
        b"GET /ready HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET /ready HTTP/1.1\r\nHost: adm", // the client ends inside the head
        b"\r\n\r\n\r\n\r\nGET",              // ends inside the head after blank lines
        GARBAGE_RESPONSE,
    ];
    for g in garbage {
        let r = raw(admin, g, false);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(g));
        rejected += 1;
    }

    let mut big = b"GET /ready HTTP/1.1\r\nx-big: ".to_vec();
    big.resize(3 * capture_proxy::admin::MAX_HEAD_BYTES, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(raw(admin, &big, false).status, 431);
    let mut many = b"GET /ready HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(raw(admin, &many, false).status, 431);
    rejected += 2;

    assert_eq!(metric(admin, "adminRequestsRejected_total"), rejected);
    assert_eq!(metric(admin, "adminRequestTimeouts_total"), 0);
    assert_eq!(admin_get(admin, "/ready").0, 200);
}
