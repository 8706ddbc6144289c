//! The pre-connected destination pool (`--destinationConnectionPoolSize`): hot gets (a
//! ready connection) and cold gets (the pool was empty), counted; refill after the
//! destination comes back; ready connections older than the timeout replaced; ready
//! connections the destination closed discarded; a connection serves exactly one client and
//! never returns to the pool.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::stats::Counter;
use common::*;

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    f()
}

fn pooled(size: usize, timeout: Duration) -> impl FnOnce(&mut capture_proxy::config::Config) {
    move |cfg| {
        cfg.destination_pool_size = size;
        cfg.destination_pool_timeout = timeout;
    }
}

#[test]
fn hot_gets_use_ready_connections() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), pooled(2, Duration::from_secs(30)));
    assert!(wait_for(Duration::from_secs(5), || origin.connections() == 2));
    thread::sleep(Duration::from_millis(50));
    for i in 0..3 {
        let mut c = proxy.client();
        c.send(&get(&format!("/small?{i}")));
        assert_eq!(c.read_response(false).status, 200);
        c.shutdown_write();
        assert!(c.closed_by_peer());
        // The refiller replaces what was taken before the next client comes (the origin
        // counts the connection at accept; give the refiller a moment to add it).
        assert!(wait_for(Duration::from_secs(5), || origin.connections() == 3 + i));
        thread::sleep(Duration::from_millis(50));
    }
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::DestPoolHot), 3);
    assert_eq!(h.counter(Counter::DestPoolCold), 0);
    // Each client's request arrived on its own destination connection.
    let conns: BTreeSet<usize> = origin.requests().iter().map(|r| r.conn).collect();
    assert_eq!(conns.len(), 3);
    let trace = proxy.stop();
    assert_eq!(trace.connections().len(), 3);
    for c in trace.connections() {
        c.check();
        assert_eq!(c.count("eom"), 1);
    }
}

#[test]
fn cold_get_while_the_pool_is_empty_then_refilled() {
    // Reserve a port with nothing listening on it: the pool cannot fill.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dest: SocketAddr = ([127, 0, 0, 1], port).into();
    let proxy = Proxy::start(dest, pooled(1, Duration::from_secs(30)));
    let h = proxy.handle();
    // Refill attempts back off (0.1 s, 0.2 s, 0.4 s, 0.8 s, then 1.6 s between them).
    assert!(wait_for(Duration::from_secs(10), || h
        .counter(Counter::DestPoolConnectFailed)
        >= 5));
    // The destination comes up while the refiller waits: this client connects cold.
    let served = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(dest).expect("rebind the reserved port");
    let s2 = served.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let served = s2.clone();
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        served.fetch_add(1, Ordering::AcqRel);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            });
        }
    });
    let mut c = proxy.client();
    c.send(&get("/cold"));
    let r = c.read_response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(h.counter(Counter::DestPoolCold), 1);
    assert_eq!(h.counter(Counter::DestPoolHot), 0);
    drop(c);
    // The refiller recovers; the next client is hot.
    thread::sleep(Duration::from_millis(2500));
    let mut c = proxy.client();
    c.send(&get("/hot"));
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(h.counter(Counter::DestPoolHot), 1);
    assert_eq!(h.counter(Counter::DestPoolCold), 1);
    assert_eq!(served.load(Ordering::Acquire), 2);
}

#[test]
fn expired_ready_connections_are_replaced() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), pooled(1, Duration::from_millis(300)));
    let h = proxy.handle();
    assert!(wait_for(Duration::from_secs(5), || origin.connections() >= 1));
    // Over ~1.2 s a 300 ms timeout replaces the ready connection several times.
    assert!(wait_for(Duration::from_secs(5), || h
        .counter(Counter::DestPoolExpired)
        >= 3));
    // The third replacement is counted when the proxy opens it; the origin's accept thread
    // may count it a moment later.
    assert!(wait_for(Duration::from_secs(5), || origin.connections() >= 4));
    // None of them carried anything.
    assert_eq!(origin.request_count(), 0);
    let mut c = proxy.client();
    c.send(&get("/small"));
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(
        h.counter(Counter::DestPoolHot) + h.counter(Counter::DestPoolCold),
        1
    );
}

#[test]
fn ready_connections_closed_by_the_destination_are_discarded() {
    // A destination that closes the first connection it accepts and serves the others.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dest = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            if acc.fetch_add(1, Ordering::AcqRel) == 0 {
                drop(s);
                continue;
            }
            thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    while let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(dest, pooled(1, Duration::from_secs(30)));
    let h = proxy.handle();
    assert!(wait_for(Duration::from_secs(5), || h
        .counter(Counter::DestPoolDiscarded)
        == 1));
    assert!(wait_for(Duration::from_secs(5), || accepted
        .load(Ordering::Acquire)
        == 2));
    thread::sleep(Duration::from_millis(50));
    let mut c = proxy.client();
    c.send(&get("/x"));
    let r = c.read_response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(h.counter(Counter::DestPoolHot), 1);
}

#[test]
fn connections_are_never_shared_or_returned() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), pooled(2, Duration::from_secs(30)));
    assert!(wait_for(Duration::from_secs(5), || origin.connections() == 2));
    thread::sleep(Duration::from_millis(50));
    // Three clients at once, each with several requests, interleaved.
    let mut clients: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    for round in 0..3 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&get(&format!("/small?client={i}&round={round}")));
        }
        for c in clients.iter_mut() {
            assert_eq!(c.read_response(false).status, 200);
        }
    }
    for c in &clients {
        c.shutdown_write();
    }
    for c in clients.iter_mut() {
        assert!(c.closed_by_peer());
    }
    // Then more clients, one after the other.
    for i in 3..6 {
        let mut c = proxy.client();
        c.send(&get(&format!("/small?client={i}&round=0")));
        assert_eq!(c.read_response(false).status, 200);
        c.shutdown_write();
        assert!(c.closed_by_peer());
    }
    // Each destination connection carried one client's requests only, and each client used
    // one destination connection of its own.
    let mut by_conn: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for r in origin.requests() {
        let client = r
            .target
            .split(['?', '&'])
            .find_map(|kv| kv.strip_prefix("client="))
            .unwrap()
            .to_string();
        by_conn.entry(r.conn).or_default().insert(client);
    }
    assert_eq!(by_conn.len(), 6, "{by_conn:?}");
    assert!(by_conn.values().all(|c| c.len() == 1), "{by_conn:?}");
    let clients_seen: BTreeSet<&String> = by_conn.values().flatten().collect();
    assert_eq!(clients_seen.len(), 6);
    let h = proxy.handle();
    assert_eq!(
        h.counter(Counter::DestPoolHot) + h.counter(Counter::DestPoolCold),
        6
    );
    assert!(h.counter(Counter::DestPoolHot) >= 2);
    let trace = proxy.stop();
    assert_eq!(trace.connections().len(), 6);
    for c in trace.connections() {
        c.check();
    }
}
