//! "When in doubt, do not forward" (issue 13): the requests whose framing the source's Netty
//! and RFC 9112 could read differently are answered by the proxy and never reach the
//! destination; after a connection-ending request nothing more is forwarded or captured; a
//! destination that answers before a body is complete gets no more of it; no synthetic 502
//! lands behind a response. Each test checks what the client saw, what the origin received
//! (byte for byte) and the decoded capture. The differential tests against real Netty origins
//! are in `framing_parity.rs`.

use crate::common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use capture_proxy::stats::Counter;
use common::*;

/// Bound of the waits on the origin's progress.
const WAIT: Duration = Duration::from_secs(5);

/// A request the proxy refuses: the client gets `status` and a close, the origin receives
/// not one byte of it, the capture has the read and a `connectionException`, no EOM.
fn refused(req: &[u8], status: u16, counter: Counter) {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let mut c = proxy.client();
    c.send(req);
    let r = c.read_response(false);
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.raw));
    assert!(c.closed_by_peer());
    assert_eq!(proxy.handle().counter(counter), 1);
    let trace = proxy.stop();
    assert!(
        origin.received_all().is_empty(),
        "the origin received {:?}",
        String::from_utf8_lossy(&origin.received_all())
    );
    let conn = trace.single();
    conn.check();
    assert!(!conn.kinds().contains(&"eom"), "{}", conn.dump());
    assert!(
        conn.kinds().contains(&"connectionException"),
        "{}",
        conn.dump()
    );
}

/// Issue 13 case 1: a coding list ending in chunked (Netty 4.1.4x frames no body), with a
/// chunk line that Netty reads as the last chunk: 501, and the smuggled DELETE never runs.
#[test]
fn transfer_coding_list_is_not_forwarded() {
    refused(
        b"POST /te HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0 /x HTTP/1.1\r\nHost: o\r\nContent-Length: 55\r\n\r\nGET /harmless HTTP/1.1\r\nHost: o\r\nContent-Length: 47\r\n\r\nDELETE /hidden HTTP/1.1\r\nHost: o\r\n\r\n",
        501,
        Counter::NotImplemented,
    );
}

/// Issue 13 case 2: an expectation the source cannot meet: 417 from the proxy.
#[test]
fn unknown_expectation_is_not_forwarded() {
    refused(
        b"POST /echo HTTP/1.1\r\nHost: o\r\nExpect: x-anything\r\nContent-Length: 36\r\n\r\nDELETE /hidden HTTP/1.1\r\nHost: o\r\n\r\n",
        417,
        Counter::ExpectationFailed,
    );
}

/// A chunk line outside RFC 9112's grammar, after the head went upstream: 400, and the origin
/// never receives the line (so it never ends the body its way).
#[test]
fn junk_after_a_chunk_size_is_a_bad_request() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let head = b"POST /echo HTTP/1.1\r\nHost: o\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut c = proxy.client();
    c.send(head);
    // The head is forwarded as it arrives (it is complete and valid).
    let got_head = wait_for(|| origin.received_all().len() >= head.len());
    assert!(got_head, "head forwarded");
    c.send(b"0 /x HTTP/1.1\r\nHost: o\r\n\r\n");
    let r = c.read_response(false);
    assert_eq!(r.status, 400);
    assert!(c.closed_by_peer());
    assert_eq!(proxy.handle().counter(Counter::Malformed), 1);
    assert_eq!(proxy.handle().counter(Counter::UpstreamReset), 0);
    proxy.stop();
    assert_bytes_eq("origin received", &origin.received_all(), head);
    assert_eq!(origin.request_count(), 0);
}

/// Issue 13 case 3: `PRI * HTTP/2.0` at a later request boundary is not a preface: 400, the
/// earlier request keeps its response.
#[test]
fn http2_preface_mid_connection_is_a_bad_request() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let first = get("/small?first");
    let mut c = proxy.client();
    c.send(&[&first[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"].concat());
    let ok = c.read_response(false);
    assert_eq!(ok.status, 200);
    let bad = c.read_response(false);
    assert_eq!(bad.status, 400);
    assert!(c.closed_by_peer());
    assert_eq!(proxy.handle().counter(Counter::Http2Passthrough), 0);
    let trace = proxy.stop();
    assert_bytes_eq("origin received", &origin.received_all(), &first);
    let conn = trace.single();
    conn.check();
    assert_bytes_eq(
        "captured reads",
        &conn.reads(),
        &[&first[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"].concat(),
    );
    assert_eq!(conn.kinds().iter().filter(|k| **k == "eom").count(), 1);
}

/// Issue 13 case 4: requests pipelined behind `Connection: close` are neither forwarded nor
/// captured; the client gets the one response, then the close — no 502.
#[test]
fn nothing_after_a_connection_ending_request() {
    for (closing, label) in [
        (
            &b"GET /small?last HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n"[..],
            "Connection: close",
        ),
        (
            &b"GET /small?last HTTP/1.0\r\nHost: o\r\n\r\n"[..],
            "HTTP/1.0",
        ),
    ] {
        let origin = Origin::start();
        let proxy = Proxy::start(origin.addr(), |_| {});
        let after = b"DELETE /hidden HTTP/1.1\r\nHost: o\r\n\r\n";
        let mut c = proxy.client();
        c.send(&[closing, &after[..]].concat());
        let r = c.read_response(false);
        assert_eq!(r.status, 200, "{label}");
        assert!(c.closed_by_peer(), "{label}");
        assert!(
            !String::from_utf8_lossy(&c.received).contains("502"),
            "{label}: {:?}",
            String::from_utf8_lossy(&c.received)
        );
        assert_eq!(
            proxy.handle().counter(Counter::BytesAfterClose),
            after.len() as u64,
            "{label}"
        );
        let trace = proxy.stop();
        assert_bytes_eq(label, &origin.received_all(), closing);
        let conn = trace.single();
        conn.check();
        assert_bytes_eq(label, &conn.reads(), closing);
    }
}

/// A one-connection origin that answers the first head it reads with `answer` at once (before
/// any body) and records every byte it receives until the client side closes.
struct EarlyAnswerOrigin {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
}

impl EarlyAnswerOrigin {
    fn start(answer: &'static [u8]) -> EarlyAnswerOrigin {
        Self::start_with(answer, false)
    }

    /// `close_after`: close the connection right after the answer (a close-delimited one).
    fn start_with(answer: &'static [u8], close_after: bool) -> EarlyAnswerOrigin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = [0u8; 4096];
            let mut answered = false;
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut all = g.lock().unwrap();
                        all.extend_from_slice(&buf[..n]);
                        if !answered && all.windows(4).any(|w| w == b"\r\n\r\n") {
                            answered = true;
                            let _ = s.write_all(answer);
                            if close_after {
                                break;
                            }
                        }
                    }
                }
            }
        });
        EarlyAnswerOrigin { addr, got }
    }

    fn received(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }
}

/// Issue 13 case 2b: `Expect: 100-continue` with a body the source refuses (413 at the head,
/// as Netty's aggregator does, keeping the connection and reading what follows as new
/// requests): the body is never forwarded, the client gets the 413 and a close.
#[test]
fn a_final_answer_to_an_expect_head_stops_the_body() {
    let origin = EarlyAnswerOrigin::start(
        b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\n\r\n",
    );
    let proxy = Proxy::start(origin.addr, |_| {});
    let head =
        b"POST /big HTTP/1.1\r\nHost: o\r\nExpect: 100-continue\r\nContent-Length: 36\r\n\r\n";
    let body = b"DELETE /hidden HTTP/1.1\r\nHost: o\r\n\r\n";
    let mut c = proxy.client();
    // A client that does not wait for 100 Continue: head and body in one write.
    c.send(&[&head[..], &body[..]].concat());
    let r = c.read_response(false);
    assert_eq!(r.status, 413);
    assert!(c.closed_by_peer());
    assert_eq!(proxy.handle().counter(Counter::BodyNotForwarded), 1);
    let trace = proxy.stop();
    assert_bytes_eq("origin received", &origin.received(), head);
    let conn = trace.single();
    conn.check();
    assert!(!conn.kinds().contains(&"eom"), "{}", conn.dump());
    assert!(
        conn.exceptions()
            .iter()
            .any(|e| e.contains("before the request body was complete")),
        "{}",
        conn.dump()
    );
}

/// The destination answers (413) while a body without `Expect` is still arriving: the rest
/// of the body is not forwarded, the connection ends after the response.
#[test]
fn a_final_answer_mid_body_stops_the_rest_of_it() {
    let origin = EarlyAnswerOrigin::start(
        b"HTTP/1.1 413 Request Entity Too Large\r\ncontent-length: 0\r\n\r\n",
    );
    let proxy = Proxy::start(origin.addr, |_| {});
    let head = b"POST /big HTTP/1.1\r\nHost: o\r\nContent-Length: 1000\r\n\r\n";
    let mut c = proxy.client();
    c.send(head);
    let r = c.read_response(false);
    assert_eq!(r.status, 413);
    // Sent after the answer: must not reach the origin.
    let _ = c
        .stream
        .write_all(b"DELETE /hidden HTTP/1.1\r\nHost: o\r\n\r\n");
    assert!(c.closed_by_peer());
    assert_eq!(proxy.handle().counter(Counter::BodyNotForwarded), 1);
    proxy.stop();
    assert_bytes_eq("origin received", &origin.received(), head);
}

/// Issue 13 case 4b: an HTTP/1.0 close-delimited response followed by the destination's
/// close while a pipelined request is outstanding: the client's stream is the response and
/// then the close — no 502 appended to it.
#[test]
fn no_synthetic_502_behind_a_close_delimited_response() {
    let answer = b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nclose-delimited body";
    let origin = EarlyAnswerOrigin::start_with(answer, true);
    let proxy = Proxy::start(origin.addr, |_| {});
    let mut c = proxy.client();
    c.send(&[get("/a"), get("/b")].concat());
    assert!(c.closed_by_peer());
    assert_bytes_eq("client received", &c.received, answer);
    assert_eq!(proxy.handle().counter(Counter::UnansweredAtClose), 1);
    let trace = proxy.stop();
    let conn = trace.single();
    conn.check();
    assert!(
        conn.exceptions()
            .iter()
            .any(|e| e.contains("1 forwarded request(s) unanswered")),
        "{}",
        conn.dump()
    );
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// Issue 13 case 5: a client stuck in the middle of a body does not pin the connection for
/// ever: after `--request-body-timeout` without a byte it gets 408 and the close, the
/// destination's connection is cut (so it never runs a half request), the capture says why.
#[test]
fn a_client_stuck_mid_body_times_out() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.request_body_timeout = Some(Duration::from_millis(300))
    });
    let mut c = proxy.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: o\r\nContent-Length: 10\r\n\r\nabc");
    let t0 = std::time::Instant::now();
    let r = c.read_response(false);
    assert_eq!(r.status, 408);
    assert!(c.closed_by_peer());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(proxy.handle().counter(Counter::BodyTimeout), 1);
    assert_eq!(proxy.handle().counter(Counter::UpstreamReset), 0);
    let trace = proxy.stop();
    assert_eq!(origin.request_count(), 0);
    let conn = trace.single();
    conn.check();
    assert!(
        conn.exceptions()
            .iter()
            .any(|e| e.contains("request body timeout")),
        "{}",
        conn.dump()
    );
}
