//! End-to-end error-path tests: unreachable destination, malformed and oversized requests,
//! client resets, an origin dying mid-response, graceful shutdown with a request in flight.
//! Each checks what the client sees, that the proxy keeps serving, and the decoded trace.

use crate::common;

use std::io;
use std::net::TcpListener;
use std::thread;
use std::time::Duration;

use capture_proxy::stats::Counter;
use common::*;

/// Bound of the waits on the origin's progress (seconds).
const WAIT: Duration = Duration::from_secs(5);

/// A GET through a fresh connection succeeds (the proxy keeps serving).
fn assert_serves(proxy: &Proxy) -> Client {
    assert_serves_path(proxy, "/small?still=serving")
}

/// (a) The destination refuses connections: the client gets a 502; the trace holds a
/// `connectionException` then `close`, and no reads.
#[test]
fn destination_refused_gives_502() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(closed, |_| {});
    let mut c = proxy.client();
    c.send(&get("/small"));
    let r = c.read_response(false);
    assert_eq!(r.status, 502);
    assert!(c.closed_by_peer());
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.kinds(),
        ["connectionException", "close"],
        "{}",
        conn.dump()
    );
    assert!(conn.reads().is_empty());
    assert!(conn.writes().is_empty());
}

/// (b) A malformed request: 400, the read bytes and a `connectionException` are captured,
/// nothing reaches the origin.
#[test]
fn malformed_request_gives_400() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let mut c = proxy.client();
    c.send(b"GARBAGE\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 400);
    assert!(c.closed_by_peer());
    assert_serves(&proxy);
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(conns.len(), 2, "{}", trace.dump());
    let conn = conns
        .iter()
        .find(|c| c.reads() == b"GARBAGE\r\n\r\n")
        .expect("bad request captured");
    conn.check();
    assert_eq!(
        conn.kinds(),
        ["read", "connectionException", "close"],
        "{}",
        conn.dump()
    );
    assert!(
        conn.writes().is_empty(),
        "the synthetic 400 is not captured"
    );
    assert_eq!(
        origin.request_count(),
        1,
        "only the follow-up GET reached the origin"
    );
    assert_eq!(origin.requests()[0].target, "/small?still=serving");
}

/// (c) A request head over 64 KiB (one 70000-byte header): 431 and close.
#[test]
fn oversized_head_gives_431() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let mut req = b"GET /small HTTP/1.1\r\nHost: origin.test\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 70_000));
    req.extend_from_slice(b"\r\n\r\n");
    let mut c = proxy.client();
    // The proxy may stop reading before all of it is written; a failed write is fine.
    let _ = c.try_send(&req);
    let r = c.try_read_response(false);
    match r {
        Ok(r) => assert_eq!(r.status, 431),
        Err(e) => panic!(
            "client did not get the 431 ({e}); received {} bytes: {:?}",
            c.received.len(),
            String::from_utf8_lossy(&c.received)
        ),
    }
    assert!(c.closed_by_peer());
    // Keep serving.
    assert_serves(&proxy);
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(conns.len(), 2, "{}", trace.dump());
    let big = &conns[0];
    big.check();
    assert_eq!(big.count("connectionException"), 1, "{}", big.dump());
    assert_eq!(big.count("eom"), 0);
    let reads = big.reads();
    assert!(
        !reads.is_empty() && req.starts_with(&reads),
        "reads are a prefix of what was sent"
    );
    assert_eq!(
        origin.request_count(),
        1,
        "only the follow-up GET reached the origin"
    );
}

/// (d) The client resets mid-request (SO_LINGER 0): the partial request is captured, the
/// connection closed, and the proxy keeps serving.
#[test]
fn client_reset_mid_request() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let partial =
        b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 100\r\n\r\n0123456789";
    {
        let mut c = proxy.client();
        c.send(partial);
        // Synchronise on the proxy having read (and forwarded) the bytes before the reset.
        assert!(
            origin.wait_received(partial, FORWARD_WAIT),
            "partial request forwarded"
        );
        socket2::SockRef::from(&c.stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    } // dropped: RST
    let c2 = assert_serves(&proxy);
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(conns.len(), 2, "{}", trace.dump());
    let reset = conns
        .iter()
        .find(|c| c.reads() == partial)
        .expect("reset connection captured");
    reset.check();
    assert_eq!(reset.count("eom"), 0);
    assert!(reset.writes().is_empty());
    let other = conns.iter().find(|c| c.id != reset.id).unwrap();
    other.check();
    assert_exchange(other, &c2);
}

/// (e) The origin closes mid-response: the client sees the truncation (or the trace has a
/// `connectionException`); what was forwarded is captured; the proxy keeps serving.
#[test]
fn upstream_dies_mid_response() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = get("/die");
    let mut c = proxy.client();
    c.send(&req);
    let r = c.try_read_response(false);
    let truncated = match &r {
        Err(e) => {
            e.kind() == io::ErrorKind::UnexpectedEof || e.kind() == io::ErrorKind::ConnectionReset
        }
        Ok(_) => false,
    };
    assert!(c.closed_by_peer());
    let c2 = assert_serves(&proxy);
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(conns.len(), 2, "{}", trace.dump());
    let died = conns
        .iter()
        .find(|c| c.reads() == req)
        .expect("connection captured");
    died.check();
    assert!(
        truncated || died.count("connectionException") > 0,
        "neither truncation seen by the client ({r:?}) nor a connectionException: {}",
        died.dump()
    );
    assert_eq!(died.count("eom"), 1);
    assert_exchange(died, &c);
    let other = conns.iter().find(|x| x.id != died.id).unwrap();
    other.check();
    assert_exchange(other, &c2);
}

/// (e2) The origin resets the connection before answering: the client gets a 502, the trace
/// has the request, its EOM and a `connectionException`; the proxy keeps serving.
#[test]
fn upstream_reset_before_response_closes_the_client() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = get("/reset");
    let mut c = proxy.client();
    c.send(&req);
    // No made-up 502: the request may have run (issue 13); the connection just closes.
    assert!(c.closed_by_peer());
    assert!(
        c.received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&c.received)
    );
    assert_eq!(proxy.handle().counter(Counter::UnansweredAtClose), 1);
    assert_serves(&proxy);
    let trace = proxy.stop();
    let conn = trace
        .connections()
        .into_iter()
        .find(|x| x.reads() == req)
        .expect("captured");
    conn.check();
    assert_eq!(
        conn.kinds(),
        ["read", "eom", "connectionException", "close"],
        "{}",
        conn.dump()
    );
}

/// The destination closes cleanly (FIN) without answering: the client's connection is closed
/// (no synthetic 502: the request may have run) and the capture says what went unanswered.
#[test]
fn upstream_closes_without_answer_closes_the_client() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = get("/hangup");
    let mut c = proxy.client();
    c.send(&req);
    assert!(c.closed_by_peer());
    assert!(
        c.received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&c.received)
    );
    assert_eq!(proxy.handle().counter(Counter::UnansweredAtClose), 1);
    assert_serves(&proxy);
    let trace = proxy.stop();
    let conn = trace
        .connections()
        .into_iter()
        .find(|x| x.reads() == req)
        .expect("captured");
    conn.check();
    assert_eq!(
        conn.kinds(),
        ["read", "eom", "connectionException", "close"],
        "{}",
        conn.dump()
    );
}

/// (f) Graceful shutdown with a request in flight: the client still gets the whole
/// response and the trace has the complete connection with its final record.
#[test]
fn graceful_shutdown_completes_in_flight_request() {
    let origin = Origin::start();
    let mut proxy = Proxy::start(origin.addr(), |_| {});
    let req = get("/slow?ms=500");
    let mut c = proxy.client();
    c.send(&req);
    assert!(origin.wait_requests(1, WAIT), "request reached the origin");
    let handle = proxy.take_handle();
    let stopper = thread::spawn(move || handle.shutdown());
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, small_body("/slow?ms=500"));
    assert!(c.closed_by_peer(), "the drained connection is closed");
    stopper.join().unwrap();
    let conn = Trace::load(proxy.dir.path()).single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_exchange(&conn, &c);
}

/// (g) A request head that does not complete within `--request-head-timeout`: 408, close,
/// and a `connectionException` after the partial read.
#[test]
fn request_head_timeout_gives_408() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.request_head_timeout = Some(Duration::from_millis(300))
    });
    let partial = b"GET /small HTTP/1.1\r\nHost: origin.test\r\n";
    let mut c = proxy.client();
    c.send(partial);
    let r = c.read_response(false);
    assert_eq!(r.status, 408);
    assert!(c.closed_by_peer());
    let conn = proxy.stop().single();
    conn.check();
    assert_bytes_eq("reads", &conn.reads(), partial);
    assert_eq!(
        conn.kinds(),
        ["read", "connectionException", "close"],
        "{}",
        conn.dump()
    );
}

/// (h) `--client-idle-timeout`: an idle keep-alive connection is closed; the capture is
/// complete.
#[test]
fn client_idle_timeout_closes() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.client_idle_timeout = Some(Duration::from_millis(300))
    });
    let mut c = proxy.client();
    c.send(&get("/small"));
    assert_eq!(c.read_response(false).status, 200);
    let t0 = std::time::Instant::now();
    assert!(c.closed_by_peer(), "closed when idle");
    assert!(t0.elapsed() < Duration::from_secs(5));
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_exchange(&conn, &c);
}
