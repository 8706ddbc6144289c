//! `--setHeader` end to end: the destination receives rewritten heads (every line of the named
//! headers removed, `name: value` first), bodies untouched even when a body line looks like a
//! header, for keep-alive and pipelined requests and heads split at any byte; the capture keeps
//! the client's original bytes; suppression rules match the original head.

use crate::common;

use std::time::Duration;

use capture_proxy::config::SetHeader;
use common::*;

fn rules(cfg: &mut capture_proxy::config::Config) {
    cfg.set_headers = vec![
        SetHeader {
            name: "Host".into(),
            value: "source.internal:9200".into(),
        },
        SetHeader {
            name: "Authorization".into(),
            value: "Basic c2VjcmV0".into(),
        },
    ];
}

/// What the proxy should send upstream for `req` (CRLF style): the rewrite done by hand.
fn expected_upstream(req: &[u8]) -> Vec<u8> {
    let text = req.to_vec();
    let head_end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let (head, body) = text.split_at(head_end);
    let head = std::str::from_utf8(head).unwrap();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap();
    let mut out =
        format!("{first}\r\nHost: source.internal:9200\r\nAuthorization: Basic c2VjcmV0\r\n");
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("host:") || lower.starts_with("authorization:") {
            continue;
        }
        if l.is_empty() {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut v = out.into_bytes();
    v.extend_from_slice(body);
    v
}

fn body_with_fake_headers() -> Vec<u8> {
    b"{\"a\":1}\nHost: evil.example\r\nAuthorization: Bearer x\r\n\r\nX: y\n".to_vec()
}

#[test]
fn rewritten_toward_destination_original_in_capture() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), rules);
    let r1 = b"GET /small HTTP/1.1\r\nhost: client.example\r\nAuthorization: Basic b3JpZw==\r\naccept: */*\r\n\r\n".to_vec();
    let r2 = with_body("POST", "/echo", &body_with_fake_headers());
    // Any case of the name is rewritten. (Two Host fields are refused with 400 before any
    // rewrite: tests/integration/framing_rules.rs.)
    let r3 = b"GET /small?3 HTTP/1.1\r\nHOST: a\r\nAuthorization: x\r\n\r\n".to_vec();
    let mut c = proxy.client();
    let mut got = Vec::new();
    for r in [&r1, &r2, &r3] {
        c.send(r);
        got.push(c.read_response(false));
    }
    assert!(got.iter().all(|r| r.status == 200));
    c.shutdown_write();
    assert!(c.closed_by_peer());
    let want: Vec<u8> = [&r1, &r2, &r3]
        .iter()
        .flat_map(|r| expected_upstream(r))
        .collect();
    assert!(
        origin.wait_received(&want, Duration::from_secs(5)),
        "origin got {:?}",
        String::from_utf8_lossy(&origin.received_all())
    );
    // The echoed body (fake header lines included) is exactly the client's body.
    assert_eq!(got[1].body, body_with_fake_headers());
    let conn = proxy.stop().single();
    conn.check();
    let sent: Vec<u8> = [&r1, &r2, &r3].iter().flat_map(|r| r.to_vec()).collect();
    assert_bytes_eq("capture keeps the original bytes", &conn.reads(), &sent);
    assert_eq!(conn.count("eom"), 3);
}

#[test]
fn pipelined_and_split_at_every_position() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), rules);
    let a = with_body("PUT", "/echo", &body_with_fake_headers());
    let b = b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let both: Vec<u8> = [a.clone(), b.clone()].concat();
    let want_one = [expected_upstream(&a), expected_upstream(&b)].concat();
    // Split the pipelined pair at a spread of positions (each a new connection).
    let positions: Vec<usize> = (1..both.len()).step_by(7).collect();
    let mut conns = 0;
    for cut in &positions {
        let mut c = proxy.client();
        c.send(&both[..*cut]);
        // A short pause makes the rest a separate read most of the time; correctness does
        // not depend on it (the result must be the same for any split the kernel makes).
        std::thread::sleep(Duration::from_millis(2));
        c.send(&both[*cut..]);
        let rs = c.read_n(2);
        assert!(rs.iter().all(|r| r.status == 200));
        c.shutdown_write();
        assert!(c.closed_by_peer());
        conns += 1;
        assert!(origin.wait_requests(conns * 2, Duration::from_secs(5)));
    }
    let received = origin.received();
    assert_eq!(received.len(), positions.len());
    for (i, r) in received.iter().enumerate() {
        assert_bytes_eq(
            &format!("connection {i} (cut {})", positions[i]),
            r,
            &want_one,
        );
    }
    let trace = proxy.stop();
    for conn in trace.connections() {
        conn.check();
        assert_bytes_eq("capture", &conn.reads(), &both);
        assert_eq!(conn.count("eom"), 2);
    }
}

#[test]
fn one_byte_at_a_time() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), rules);
    let req = with_body("POST", "/echo", b"Host: not-a-header\r\n\r\n");
    let mut c = proxy.client();
    for byte in &req {
        c.send(std::slice::from_ref(byte));
    }
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Host: not-a-header\r\n\r\n");
    c.shutdown_write();
    assert!(c.closed_by_peer());
    assert!(origin.wait_received(&expected_upstream(&req), Duration::from_secs(5)));
    let conn = proxy.stop().single();
    conn.check();
    assert_bytes_eq("capture", &conn.reads(), &req);
}

#[test]
fn bodyless_delete_is_still_held_and_rewritten() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), rules);
    let dir = proxy.dir.path().to_path_buf();
    let req = b"DELETE /small HTTP/1.1\r\nHost: c\r\n\r\n".to_vec();
    // When the origin sees the request, its record (ending in the EOM) is already committed.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let s2 = seen.clone();
    origin.set_hook(move |_r| {
        let t = Trace::load_partial(&dir);
        *s2.lock().unwrap() = Some(
            t.connections()
                .iter()
                .map(|c| c.count("eom"))
                .sum::<usize>(),
        );
    });
    let mut c = proxy.client();
    c.send(&req);
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(
        *seen.lock().unwrap(),
        Some(1),
        "record committed before the origin got the request"
    );
    c.shutdown_write();
    assert!(c.closed_by_peer());
    assert!(origin.wait_received(&expected_upstream(&req), Duration::from_secs(5)));
    proxy.stop().single().check();
}

#[test]
fn suppression_matches_the_original_head() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        rules(cfg);
        // The rule matches the client's Host, which the rewrite replaces upstream.
        cfg.suppress.header_matches = vec![(
            "host".into(),
            regex::bytes::Regex::new("^(?:health\\.check)$").unwrap(),
        )];
    });
    let hc = b"GET /small HTTP/1.1\r\nHost: health.check\r\n\r\n".to_vec();
    let normal = b"GET /small?n HTTP/1.1\r\nHost: app\r\n\r\n".to_vec();
    let mut c = proxy.client();
    c.send(&hc);
    c.read_response(false);
    c.send(&normal);
    let r = c.read_response(false);
    c.shutdown_write();
    assert!(c.closed_by_peer());
    let conn = proxy.stop().single();
    conn.check();
    assert_bytes_eq("only the normal request captured", &conn.reads(), &normal);
    assert_bytes_eq("only its response", &conn.writes(), &r.raw);
}
