//! End-to-end capture tests: a real origin, the proxy in-process on port 0 with a file sink,
//! raw clients; each test decodes the trace and checks it against the bytes exchanged
//! (capture-format.md): reads == what the client sent, writes == what it received, markers,
//! numbering, EOM lengths, flush points, and that the origin got exactly what the client sent.

use crate::common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use capture_proxy::capture::proto::traffic_stream::Index;
use common::*;

/// Bound of the polls on the live trace directory (seconds).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// The header rule of the suppression tests: `--suppressCaptureForHeaderMatch user-agent
/// ELB-HealthChecker/.*`, compiled anchored as `config` does.
fn health_check_rule() -> (String, regex::bytes::Regex) {
    (
        "user-agent".into(),
        regex::bytes::Regex::new("^(?:ELB-HealthChecker/.*)$").unwrap(),
    )
}

const HEALTH_CHECK: &[u8] =
    b"GET /small?hc=1 HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: ELB-HealthChecker/2.0\r\nAccept: */*\r\n\r\n";

#[test]
fn io_driver_follows_env() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let want = if legacy_forced() { "epoll" } else { "io_uring" };
    assert_eq!(proxy.handle().io_driver(), want);
    proxy.stop();
}

/// (1) Three keep-alive GETs, then close: one record, numberOfThisLastChunk 1.
#[test]
fn keep_alive_gets_single_record() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let reqs = [get("/small?i=1"), get("/large?bytes=3000"), get("/chunked")];
    let mut c = proxy.client();
    for r in &reqs {
        c.send(r);
        assert_eq!(c.read_response(false).status, 200);
    }
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.indexes(),
        vec![Index::NumberOfThisLastChunk(1)],
        "{}",
        conn.dump()
    );
    conn.assert_shape(&[
        "read", "eom", "write", "read", "eom", "write", "read", "eom", "write", "close",
    ]);
    assert_eq!(conn.read_chunks(), reqs.to_vec(), "one read per request");
    assert_eq!(
        conn.eoms(),
        reqs.iter().map(|r| eom_of(r)).collect::<Vec<_>>()
    );
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// A busy keep-alive connection does not grow its record toward `--maxTrafficBufferSize`:
/// once a record holds 64 KiB and the exchange is complete, it is flushed (here after the
/// second 40 KB response), and the next exchange starts record 2. Nothing is lost or reordered.
#[test]
fn busy_keep_alive_record_flushed_between_exchanges_past_64k() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let reqs = [
        get("/large?bytes=40000"),
        get("/large?bytes=40000"),
        get("/small?after=1"),
    ];
    let mut c = proxy.client();
    for r in &reqs {
        c.send(r);
        assert_eq!(c.read_response(false).status, 200);
    }
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.indexes(),
        vec![Index::Number(1), Index::NumberOfThisLastChunk(2)],
        "{}",
        conn.dump()
    );
    assert_eq!(conn.eoms().len(), 3);
    assert_exchange(&conn, &c);
}

/// (2) Three pipelined GETs in one write: three read+EOM pairs, each read one request.
#[test]
fn pipelined_gets_cut_at_request_boundaries() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let reqs = [
        get("/small?p=1"),
        get("/small?p=2"),
        get("/large?bytes=100"),
    ];
    let mut c = proxy.client();
    c.send(&reqs.concat());
    let resps = c.read_n(3);
    assert!(resps.iter().all(|r| r.status == 200));
    assert_eq!(resps[0].body, small_body("/small?p=1"));
    assert_eq!(resps[1].body, small_body("/small?p=2"));
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.indexes(), vec![Index::NumberOfThisLastChunk(1)]);
    conn.assert_shape(&[
        "read", "eom", "read", "eom", "read", "eom", "write", "close",
    ]);
    assert_eq!(
        conn.read_chunks(),
        reqs.to_vec(),
        "each read holds exactly one request"
    );
    assert_eq!(
        conn.eoms(),
        reqs.iter().map(|r| eom_of(r)).collect::<Vec<_>>()
    );
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
    assert_eq!(origin.request_count(), 3);
}

/// (2b) Mutating requests pipelined with a GET in one write: cut per request, a record
/// flushed at each mutating request's EOM.
#[test]
fn pipelined_mutating_requests_flush_at_each_eom() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let reqs = [
        with_body("POST", "/echo?p=1", b"{\"one\":1}"),
        get("/small?p=2"),
        with_body("PUT", "/echo?p=3", b"{\"three\":3}"),
    ];
    let mut c = proxy.client();
    c.send(&reqs.concat());
    let resps = c.read_n(3);
    assert_eq!(resps[0].body, b"{\"one\":1}");
    assert_eq!(resps[2].body, b"{\"three\":3}");
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.read_chunks(), reqs.to_vec(), "{}", conn.dump());
    assert_eq!(
        conn.eoms(),
        reqs.iter().map(|r| eom_of(r)).collect::<Vec<_>>()
    );
    assert_eq!(
        conn.indexes(),
        vec![
            Index::Number(1),
            Index::Number(2),
            Index::NumberOfThisLastChunk(3)
        ],
        "{}",
        conn.dump()
    );
    assert_eq!(conn.record_kinds(0), ["read", "eom"]);
    assert_eq!(conn.record_kinds(1), ["read", "eom", "read", "eom"]);
    assert_eq!(conn.records[2].prior_requests_received, Some(3));
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// A small deterministic PRNG (xorshift64) for reproducible cut points.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// (2c) Many mixed requests (GET, HEAD, Content-Length and chunked POSTs) pipelined and cut at
/// pseudo-random points, written while responses are read: every request gets exactly its
/// own reads and EOM, in order, across many records.
#[test]
fn pipelined_random_cuts_many_requests() {
    const REQUESTS: usize = 600;
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut reqs: Vec<(Vec<u8>, bool)> = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let r = match i % 5 {
            0 => (get(&format!("/small?i={i}")), false),
            1 => (
                with_body(
                    "POST",
                    &format!("/echo?i={i}"),
                    &large_body(rng.below(3000)),
                ),
                false,
            ),
            2 => (
                format!("HEAD /large?bytes={i} HTTP/1.1\r\nHost: origin.test\r\n\r\n").into_bytes(),
                true,
            ),
            3 => {
                let mut v = format!(
                    "POST /echo?i={i} HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                )
                .into_bytes();
                for _ in 0..rng.below(4) {
                    let n = 1 + rng.below(700);
                    v.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    v.extend_from_slice(&large_body(n));
                    v.extend_from_slice(b"\r\n");
                }
                v.extend_from_slice(b"0\r\n\r\n");
                (v, false)
            }
            _ => (get(&format!("/large?bytes={}", rng.below(5000))), false),
        };
        reqs.push(r);
    }
    let all: Vec<u8> = reqs.iter().flat_map(|(r, _)| r.iter().copied()).collect();
    let mut c = proxy.client();
    let mut w = c.stream.try_clone().unwrap();
    let mut cuts = vec![0usize];
    while *cuts.last().unwrap() < all.len() {
        let next = (cuts.last().unwrap() + 1 + rng.below(4000)).min(all.len());
        cuts.push(next);
    }
    let all2 = all.clone();
    let writer = thread::spawn(move || {
        use std::io::Write;
        for win in cuts.windows(2) {
            w.write_all(&all2[win[0]..win[1]]).unwrap();
        }
    });
    let heads: Vec<bool> = reqs.iter().map(|(_, h)| *h).collect();
    let resps = c.read_responses(&heads);
    writer.join().unwrap();
    c.sent = all.clone();
    assert!(resps.iter().all(|r| r.status == 200));
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    let want: Vec<Vec<u8>> = reqs.iter().map(|(r, _)| r.clone()).collect();
    let got = conn.request_reads();
    assert_eq!(got.len(), want.len(), "one EOM per request");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_bytes_eq(&format!("request {i}"), g, w);
    }
    assert_eq!(
        conn.eoms(),
        want.iter().map(|r| eom_of(r)).collect::<Vec<_>>()
    );
    assert_exchange(&conn, &c);
    assert!(
        origin.received_all() == all,
        "origin received different bytes"
    );
}

/// (3) Chunked POST whose terminator arrives in its own read: one EOM after that read; the
/// record is flushed ending in the EOM; the response and close follow in the final record.
#[test]
fn chunked_post_terminator_in_separate_read() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let head = b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunks = b"5\r\nhello\r\n6\r\n world\r\n";
    let term = b"0\r\n\r\n";
    let mut c = proxy.client();
    let first = [&head[..], &chunks[..]].concat();
    c.send(&first);
    // The proxy forwards what it read: once the origin has it, the terminator is a new read.
    assert!(
        origin.wait_received(&first, FORWARD_WAIT),
        "first part forwarded"
    );
    c.send(term);
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"hello world");
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.records.len(), 2, "{}", conn.dump());
    assert_eq!(
        conn.indexes(),
        vec![Index::Number(1), Index::NumberOfThisLastChunk(2)]
    );
    let r1 = conn.record_kinds(0);
    assert_eq!(
        r1.last(),
        Some(&"eom"),
        "record 1 ends with the EOM: {}",
        conn.dump()
    );
    assert!(
        r1[..r1.len() - 1].iter().all(|k| *k == "read"),
        "{}",
        conn.dump()
    );
    assert!(
        r1.len() >= 3,
        "the terminator is its own read: {}",
        conn.dump()
    );
    assert_eq!(
        conn.read_chunks().last().map(Vec::as_slice),
        Some(&term[..])
    );
    assert_eq!(conn.records[1].prior_requests_received, Some(1));
    let r2 = conn.record_kinds(1);
    assert_eq!(r2.last(), Some(&"close"));
    assert!(
        r2[..r2.len() - 1].iter().all(|k| *k == "write"),
        "{}",
        conn.dump()
    );
    assert_eq!(conn.eoms(), vec![eom_of(&first)]);
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (3b) The reliability hold: when the origin has received all of a captured mutating
/// request, its record (ending in its EOM) is already committed to the trace file.
#[test]
fn mutating_requests_reach_origin_after_their_record() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let dir = proxy.dir.path().to_path_buf();
    // (method, EOMs in the committed trace when the origin got the whole request)
    let seen: Arc<Mutex<Vec<(String, usize)>>> = Arc::default();
    let seen2 = seen.clone();
    origin.set_hook(move |req| {
        let t = Trace::load_partial(&dir);
        let eoms = t
            .records
            .iter()
            .flat_map(|(r, _)| r.sub_stream.iter())
            .filter(|o| kind(o) == "eom")
            .count();
        seen2.lock().unwrap().push((req.method.clone(), eoms));
    });
    let reqs = [
        with_body("POST", "/echo?m=post", b"{\"a\":1}"),
        with_body("PUT", "/echo?m=put", b"{\"b\":2}"),
        get("/small?m=get"),
        with_body("PATCH", "/echo?m=patch", b"{\"c\":3}"),
        b"DELETE /echo?m=delete HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec(),
    ];
    let mut c = proxy.client();
    for r in &reqs {
        c.send(r);
        assert_eq!(c.read_response(false).status, 200);
    }
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    let seen = seen.lock().unwrap().clone();
    let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(methods, ["POST", "PUT", "GET", "PATCH", "DELETE"]);
    for (i, (m, eoms)) in seen.iter().enumerate() {
        if m != "GET" {
            assert_eq!(
                *eoms,
                i + 1,
                "{m}: its EOM was not committed when the origin got it"
            );
        }
    }
    // Each mutating request's record ends at its EOM.
    let ends: Vec<&str> = conn
        .records
        .iter()
        .map(|r| kind(r.sub_stream.last().unwrap()))
        .collect();
    assert_eq!(
        ends.iter().filter(|k| **k == "eom").count(),
        4,
        "{}",
        conn.dump()
    );
    assert_eq!(conn.read_chunks(), reqs.to_vec());
    assert_exchange(&conn, &c);
}

/// (3c) A chunked POST with chunk extensions and a trailer, sent a few bytes per write: one
/// EOM right after the read holding the final CRLF of the trailer section.
#[test]
fn chunked_post_with_trailer_in_small_pieces() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = b"POST /echo HTTP/1.1\r\nHost: origin.test\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: yes\r\n\r\n".to_vec();
    let pieces: Vec<&[u8]> = req.chunks(7).collect();
    let mut c = proxy.client();
    c.send_chunks(&pieces, Duration::from_millis(3));
    let resp = c.read_response(false);
    assert_eq!(resp.body, b"Wikipedia in\r\n\r\nchunks.");
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.count("eom"), 1);
    assert_eq!(conn.request_reads(), vec![req.clone()]);
    assert_eq!(conn.eoms(), vec![eom_of(&req)]);
    assert_eq!(conn.records[0].index, Some(Index::Number(1)));
    assert_eq!(conn.record_kinds(0).last(), Some(&"eom"));
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (4) A 5 MiB POST echoed back: everything captured across several records with segments,
/// every record within the size limit, the body intact both ways.
#[test]
fn large_post_split_across_records() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let body = large_body(5 << 20);
    let req = with_body("POST", "/echo", &body);
    let mut c = proxy.client();
    c.send(&req);
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    assert!(resp.body == body, "echoed body differs");
    finish_client(&mut c);
    let trace = proxy.stop();
    let conn = trace.single();
    conn.check(); // includes: every record ≤ 1 MiB − 500 bytes, segments terminated
    assert!(
        conn.records.len() >= 10,
        "10 MiB in ≥ 10 records, got {}",
        conn.records.len()
    );
    assert!(conn.count("readSegment") >= 1, "{}", conn.dump());
    assert!(conn.count("writeSegment") >= 1, "{}", conn.dump());
    assert_eq!(conn.count("eom"), 1);
    assert_eq!(conn.eoms(), vec![eom_of(&req)]);
    // The mutating request's record is flushed at its EOM.
    let eom_rec = conn
        .records
        .iter()
        .position(|r| r.sub_stream.iter().any(|o| kind(o) == "eom"))
        .unwrap();
    assert_eq!(
        conn.record_kinds(eom_rec).last(),
        Some(&"eom"),
        "{}",
        conn.dump()
    );
    assert!(
        conn.record_kinds(eom_rec + 1)
            .iter()
            .all(|k| *k != "read" && *k != "readSegment"),
        "no reads after the request"
    );
    assert_exchange(&conn, &c);
    assert!(
        origin.received_all() == c.sent,
        "origin received different bytes"
    );
}

/// (4b) A small `--maxTrafficBufferSize` (2 KiB): a 100 KB POST and its echo span many
/// records, each within the limit, numbered without gaps, field 7 set on every record that
/// starts mid-request.
#[test]
fn small_record_limit_many_segments() {
    const BUFFER: usize = 2048;
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| cfg.max_traffic_buffer_size = BUFFER);
    let body = large_body(100_000);
    let req = with_body("POST", "/echo", &body);
    let mut c = proxy.client();
    c.send(&req);
    let resp = c.read_response(false);
    assert!(resp.body == body);
    c.send(&get("/small?after=big"));
    c.read_response(false);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check_with_limit(BUFFER - 500);
    assert!(conn.records.len() > 130, "{} records", conn.records.len());
    assert!(
        conn.records
            .iter()
            .filter(|r| r.last_observation_was_unterminated_read == Some(true))
            .count()
            > 50,
        "records starting mid-request carry field 7"
    );
    assert_eq!(conn.count("eom"), 2);
    assert_exchange(&conn, &c);
}

/// (5) PUT then DELETE on one connection: each record flushed at its EOM.
#[test]
fn put_then_delete_flush_at_each_eom() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let put = with_body("PUT", "/echo", br#"{"doc":1}"#);
    let del = b"DELETE /echo HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec();
    let mut c = proxy.client();
    c.send(&put);
    assert_eq!(c.read_response(false).body, br#"{"doc":1}"#);
    c.send(&del);
    assert_eq!(c.read_response(false).status, 200);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.indexes(),
        vec![
            Index::Number(1),
            Index::Number(2),
            Index::NumberOfThisLastChunk(3)
        ],
        "{}",
        conn.dump()
    );
    assert_eq!(conn.record_kinds(0), ["read", "eom"], "{}", conn.dump());
    let r2 = conn.record_kinds(1);
    assert_eq!(&r2[r2.len() - 2..], ["read", "eom"], "{}", conn.dump());
    assert!(r2[..r2.len() - 2].iter().all(|k| *k == "write") && r2.len() > 2);
    let r3 = conn.record_kinds(2);
    assert_eq!(r3.last(), Some(&"close"));
    assert!(r3[..r3.len() - 1].iter().all(|k| *k == "write") && r3.len() > 1);
    assert_eq!(conn.records[1].prior_requests_received, Some(1));
    assert_eq!(conn.records[2].prior_requests_received, Some(2));
    assert_eq!(conn.read_chunks(), vec![put.clone(), del.clone()]);
    assert_eq!(conn.eoms(), vec![eom_of(&put), eom_of(&del)]);
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (6) A connection that sends nothing: one record holding only `close`.
#[test]
fn empty_connection_single_close_record() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let mut c = proxy.client();
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.kinds(), ["close"]);
    assert_eq!(conn.indexes(), vec![Index::NumberOfThisLastChunk(1)]);
    assert!(conn.records[0].prior_requests_received.is_none());
    assert!(conn.records[0]
        .last_observation_was_unterminated_read
        .is_none());
    assert!(c.received.is_empty());
}

/// (7) A GET head split over 40 writes: the reads concatenated are the head, one EOM.
#[test]
fn head_split_over_many_reads() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = format!(
        "GET /small?split=40 HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: itest/1.0\r\nAccept: application/json\r\nX-Opaque-Id: {}\r\n\r\n",
        "q".repeat(60)
    )
    .into_bytes();
    let cuts: Vec<usize> = (0..=40).map(|i| i * req.len() / 40).collect();
    let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &req[w[0]..w[1]]).collect();
    let mut c = proxy.client();
    c.send_chunks(&pieces, Duration::from_millis(5));
    assert_eq!(c.read_response(false).status, 200);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert!(
        conn.count("read") > 1,
        "the proxy saw several reads: {}",
        conn.dump()
    );
    assert_eq!(conn.request_reads(), vec![req.clone()]);
    assert_eq!(conn.eoms(), vec![eom_of(&req)]);
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (8) A suppressed health check whose head arrives in one read leaves no trace at all; the
/// next request is captured normally; the origin gets both.
#[test]
fn suppressed_health_check_not_captured() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.suppress.header_matches = vec![health_check_rule()]
    });
    let normal = get("/small?after=hc");
    let mut c = proxy.client();
    c.send(HEALTH_CHECK);
    let hc_resp = c.read_response(false);
    assert_eq!(hc_resp.status, 200);
    c.send(&normal);
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_bytes_eq("reads", &conn.reads(), &normal);
    assert_bytes_eq("writes", &conn.writes(), &resp.raw);
    assert_eq!(conn.eoms(), vec![eom_of(&normal)]);
    assert_eq!(origin.request_count(), 2);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (8b) The health check's head split over two reads: the first read is captured, then
/// `requestDropped`, no EOM, no response writes; the next request is normal.
#[test]
fn suppressed_after_partial_capture_request_dropped() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.suppress.header_matches = vec![health_check_rule()]
    });
    let cut = HEALTH_CHECK
        .windows(12)
        .position(|w| w == b"User-Agent: ")
        .unwrap();
    let (a, b) = HEALTH_CHECK.split_at(cut);
    let normal = get("/small?after=hc2");
    let mut c = proxy.client();
    c.send(a);
    // The proxy forwards what it read: once the origin has it, the rest is a new read.
    assert!(
        origin.wait_received(a, FORWARD_WAIT),
        "first part forwarded"
    );
    c.send(b);
    assert_eq!(c.read_response(false).status, 200);
    c.send(&normal);
    let resp = c.read_response(false);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.kinds()[..2],
        ["read", "requestDropped"],
        "requestDropped right after the first read: {}",
        conn.dump()
    );
    conn.assert_shape(&["read", "requestDropped", "read", "eom", "write", "close"]);
    assert_bytes_eq("reads", &conn.reads(), &[a, &normal[..]].concat());
    assert_eq!(conn.request_reads(), vec![normal.clone()]);
    assert_bytes_eq("writes", &conn.writes(), &resp.raw);
    assert_eq!(conn.eoms(), vec![eom_of(&normal)]);
    assert_eq!(origin.request_count(), 2);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (8c) A health check pipelined with a normal request in one write: only the normal
/// request and its response are captured (the proxy cuts reads and responses).
#[test]
fn suppressed_pipelined_with_normal_request() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.suppress.header_matches = vec![health_check_rule()]
    });
    let normal = get("/small?after=hc3");
    let mut c = proxy.client();
    c.send(&[HEALTH_CHECK, &normal[..]].concat());
    let resps = c.read_n(2);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_bytes_eq("reads", &conn.reads(), &normal);
    assert_bytes_eq("writes", &conn.writes(), &resps[1].raw);
    assert_eq!(origin.request_count(), 2);
}

/// (9) `Expect: 100-continue`: the interim 100 reaches the client and is captured as a
/// write between the head's read and the body's read.
#[test]
fn expect_100_continue() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let body = br#"{"expect":"continue"}"#;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: origin.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .into_bytes();
    let mut c = proxy.client();
    c.send(&head);
    let interim = c.read_response(false);
    assert_eq!(interim.status, 100);
    c.send(body);
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, body);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.kinds()[..4],
        ["read", "write", "read", "eom"],
        "{}",
        conn.dump()
    );
    assert_eq!(conn.read_chunks(), vec![head.clone(), body.to_vec()]);
    assert_eq!(
        conn.records[0].index,
        Some(Index::Number(1)),
        "flushed at the POST's EOM"
    );
    assert_eq!(conn.record_kinds(0).last(), Some(&"eom"));
    assert_bytes_eq(
        "first write",
        &conn.records[0]
            .sub_stream
            .iter()
            .find_map(|o| match &o.capture {
                Some(capture_proxy::capture::proto::traffic_observation::Capture::Write(w)) => {
                    Some(w.data.clone())
                }
                _ => None,
            })
            .unwrap(),
        b"HTTP/1.1 100 Continue\r\n\r\n",
    );
    assert_eq!(conn.eoms(), vec![eom_of(&head)]);
    assert_exchange(&conn, &c);
    assert_bytes_eq("origin received", &origin.received_all(), &c.sent);
}

/// (10) HEAD: headers only (Content-Length but no body); a GET after it on the same
/// connection is framed and captured correctly.
#[test]
fn head_request_then_get() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let head_req = b"HEAD /large?bytes=5000 HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec();
    let get_req = get("/small?after=head");
    let mut c = proxy.client();
    c.send(&head_req);
    let h = c.read_response(true);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(&b"5000"[..]));
    assert!(h.body.is_empty());
    c.send(&get_req);
    let g = c.read_response(false);
    assert_eq!(g.body, small_body("/small?after=head"));
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "read", "eom", "write", "close"]);
    assert_eq!(conn.read_chunks(), vec![head_req.clone(), get_req.clone()]);
    assert_eq!(conn.response_writes(), vec![h.raw.clone(), g.raw.clone()]);
    assert_eq!(conn.eoms(), vec![eom_of(&head_req), eom_of(&get_req)]);
    assert_exchange(&conn, &c);
}

/// (10b) No-body statuses (204, 304), a chunked response and a HEAD of a chunked resource,
/// on one connection.
#[test]
fn no_body_statuses_and_chunked_responses() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let reqs = [
        (get("/status/204"), false, 204),
        (get("/status/304"), false, 304),
        (get("/chunked"), false, 200),
        (
            b"HEAD /chunked HTTP/1.1\r\nHost: origin.test\r\n\r\n".to_vec(),
            true,
            200,
        ),
        (get("/small"), false, 200),
    ];
    let mut c = proxy.client();
    let mut raws = Vec::new();
    for (r, is_head, status) in &reqs {
        c.send(r);
        let resp = c.read_response(*is_head);
        assert_eq!(resp.status, *status);
        raws.push(resp.raw);
    }
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.read_chunks(),
        reqs.iter().map(|r| r.0.clone()).collect::<Vec<_>>()
    );
    assert_eq!(conn.response_writes(), raws);
    assert_exchange(&conn, &c);
}

/// (10c) The origin answers `Connection: close` and closes: the capture ends with the
/// response and `close`.
#[test]
fn origin_closes_after_response() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = get("/close");
    let mut c = proxy.client();
    c.send(&req);
    let resp = c.read_response(false);
    assert_eq!(resp.body, b"bye\n");
    assert!(
        c.closed_by_peer(),
        "the proxy closes the client after the origin closed"
    );
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_exchange(&conn, &c);
}

/// (10d) The client half-closes right after its request: the response still arrives whole
/// and is captured, then the connection closes.
#[test]
fn client_half_close_after_request() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = get("/large?bytes=20000");
    let mut c = proxy.client();
    c.send(&req);
    c.shutdown_write();
    let resp = c.read_response(false);
    assert_eq!(resp.body, large_body(20_000));
    assert!(c.closed_by_peer());
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_exchange(&conn, &c);
}

/// (10e) An upgrade (101): the request and the 101 are captured; the opaque stream after it
/// is forwarded both ways but not captured.
#[test]
fn upgrade_then_opaque_stream() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let req = b"GET /upgrade HTTP/1.1\r\nHost: origin.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n".to_vec();
    let mut c = proxy.client();
    c.send(&req);
    let r = c.read_response(false);
    assert_eq!(r.status, 101);
    c.send(b"opaque-ping-1");
    let mut got = Vec::new();
    while got.len() < 13 {
        let mut tmp = [0u8; 64];
        let n = read_retrying(&mut c.stream, &mut tmp).unwrap();
        assert!(n > 0, "eof before the echo");
        got.extend_from_slice(&tmp[..n]);
    }
    assert_eq!(got, b"opaque-ping-1");
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    conn.assert_shape(&["read", "eom", "write", "close"]);
    assert_bytes_eq("reads", &conn.reads(), &req);
    assert_bytes_eq("writes", &conn.writes(), &r.raw);
}

/// (11) An idle keep-alive connection's observations are flushed after the flush interval,
/// while the connection is still open.
#[test]
fn idle_connection_flushed_after_interval() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        cfg.capture_flush_interval = Duration::from_millis(200)
    });
    let req = get("/small?idle=1");
    let mut c = proxy.client();
    c.send(&req);
    let resp = c.read_response(false);
    let live = poll_trace(proxy.dir.path(), POLL_TIMEOUT, |t| {
        let kinds: Vec<&str> = t
            .records
            .iter()
            .filter(|(r, _)| matches!(r.index, Some(Index::Number(_))))
            .flat_map(|(r, _)| r.sub_stream.iter().map(kind))
            .collect();
        kinds.contains(&"read") && kinds.contains(&"eom") && kinds.contains(&"write")
    });
    let live = live.unwrap_or_else(|| {
        panic!(
            "no flushed non-final record with read+eom+write within {POLL_TIMEOUT:?}: {}",
            Trace::load_partial(proxy.dir.path()).dump()
        )
    });
    assert!(
        live.records
            .iter()
            .all(|(r, _)| matches!(r.index, Some(Index::Number(_)))),
        "no final record while the connection is open"
    );
    // The connection is still usable.
    c.send(&req);
    let resp2 = c.read_response(false);
    assert_eq!(resp2.body, resp.body);
    finish_client(&mut c);
    let conn = proxy.stop().single();
    conn.check();
    assert!(conn.records.len() >= 2, "{}", conn.dump());
    conn.assert_shape(&["read", "eom", "write", "read", "eom", "write", "close"]);
    assert_exchange(&conn, &c);
}

/// (12) Three concurrent connections with several requests each: complete, independent
/// traces with distinct connection ids.
#[test]
fn concurrent_connections_independent() {
    const CONNS: usize = 3;
    const REQS: usize = 6;
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    let addr = proxy.addr;
    let workers: Vec<_> = (0..CONNS)
        .map(|ci| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for ri in 0..REQS {
                    let r = if ri % 3 == 2 {
                        with_body(
                            "POST",
                            &format!("/echo?c={ci}&r={ri}"),
                            format!("body-{ci}-{ri}").as_bytes(),
                        )
                    } else {
                        get(&format!("/small?c={ci}&r={ri}"))
                    };
                    c.send(&r);
                    assert_eq!(c.read_response(false).status, 200);
                }
                finish_client(&mut c);
                (c.sent.clone(), c.received.clone())
            })
        })
        .collect();
    let exchanges: Vec<(Vec<u8>, Vec<u8>)> =
        workers.into_iter().map(|h| h.join().unwrap()).collect();
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(conns.len(), CONNS, "{}", trace.dump());
    let mut ids: Vec<&str> = conns.iter().map(|c| c.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), CONNS, "distinct connection ids");
    for (sent, received) in &exchanges {
        let conn = conns
            .iter()
            .find(|c| c.reads() == *sent)
            .unwrap_or_else(|| panic!("no connection captured these reads: {}", trace.dump()));
        conn.check();
        assert_eq!(conn.count("eom"), REQS);
        assert_bytes_eq("writes", &conn.writes(), received);
    }
    assert_eq!(origin.connections(), CONNS);
    assert_eq!(origin.request_count(), CONNS * REQS);
}
