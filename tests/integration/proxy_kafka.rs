//! End-to-end tests of the Kafka sink: the proxy in-process with `SinkConfig::Kafka` pointed
//! at an rdkafka mock cluster (created per test, topic with 3 partitions), a real origin and
//! raw clients. The topic is read back both raw (to decode values and compare bytes) and with
//! `inspect::inspect_kafka_detailed` (the operator's verification). Covers the wire contract
//! over Kafka (key = connectionId, one partition per connection, numbering), the reliability
//! hold of mutating requests, broker outages with both failure policies, retriable and
//! permanent produce errors, and graceful shutdown.
//!
//! Every wait is bounded (socket timeouts from the harness, `KAFKA_WAIT` for records to reach
//! the topic). The tests run one at a time (`serial`): several assert latencies, and the
//! machine is small.

use crate::common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::capture::proto::traffic_stream::Index;
use capture_proxy::config::{Config, FailurePolicy};
use capture_proxy::stats::Counter;
use common::kafka::*;
use common::*;
use rdkafka::bindings::rd_kafka_resp_err_t as RespErr;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaApiKey;

/// Bound of the waits for records to reach the topic (s). librdkafka reconnects to a broker
/// that came back with a backoff of up to a few seconds; records wait up to the sink's 10 s
/// delivery timeout.
const KAFKA_WAIT: Duration = Duration::from_secs(20);
/// The reader group of this file's raw reads of the topic.
const READER_GROUP: &str = "itest-reader";

/// A mock cluster for one test: records waited for up to `KAFKA_WAIT`.
fn start_kafka() -> Kafka {
    Kafka::start(READER_GROUP, KAFKA_WAIT)
}

/// A proxy to `origin` writing to the mock cluster; `tweak` adjusts the rest.
fn kafka_proxy(origin: &Origin, k: &Kafka, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let sink = kafka_sink(&k.bootstrap, "capture-proxy-itest");
    Proxy::start(origin.addr(), move |cfg| {
        cfg.sink = sink;
        tweak(cfg);
    })
}

/// One GET on a fresh connection, then close: connects the proxy's producer to the cluster
/// (metadata, producer id) and yields one final record.
fn warm_up(proxy: &Proxy) {
    let mut c = proxy.client();
    c.send(&get("/small?warm=1"));
    assert_eq!(c.read_response(false).status, 200);
    finish_client(&mut c);
}

/// (a) Keep-alive GETs and a POST on three connections, then close: every connection is in
/// the topic, complete, with the exact bytes exchanged, keyed by its connectionId.
#[test]
fn keep_alive_and_post_captured_completely() {
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let proxy = kafka_proxy(&origin, &k, |_| {});
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = proxy.client();
        for j in 0..2 {
            c.send(&get(&format!("/small?c={i}&r={j}")));
            assert_eq!(c.read_response(false).status, 200);
        }
        let body = format!("{{\"conn\":{i},\"doc\":\"{}\"}}", "x".repeat(100 * (i + 1)));
        c.send(&post(&format!("/echo?c={i}"), body.as_bytes()));
        let r = c.read_response(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body.as_bytes());
        c.send(&get(&format!("/large?bytes={}", 5000 * (i + 1))));
        assert_eq!(c.read_response(false).status, 200);
        finish_client(&mut c);
        clients.push(c);
    }
    let got = k.wait_finals(3);
    assert_placement_and_order(&got);
    let t = trace(&got);
    assert_eq!(t.connections().len(), 3, "{}", t.dump());
    for c in &clients {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
        // The POST's record ends with its marker (flushed for the hold).
        assert_eq!(conn.records.len(), 2, "{}", conn.dump());
        assert_eq!(conn.record_kinds(0).last(), Some(&"eom"));
        assert_eq!(conn.records[1].prior_requests_received, Some(3));
    }
    let (k_report, text) = k.inspect_detailed();
    let r = &k_report.report;
    assert!(r.ok(), "{text}");
    assert_eq!(r.connections, 3, "{text}");
    assert_eq!(r.complete_connections, 3, "{text}");
    assert_eq!(r.records, 6);
    assert_eq!(r.requests, 12);
    let sent: usize = clients.iter().map(|c| c.sent.len()).sum();
    let received: usize = clients.iter().map(|c| c.received.len()).sum();
    assert_eq!(r.reads_bytes, sent as u64);
    assert_eq!(r.writes_bytes, received as u64);
    let table_total: u64 = k_report.partitions.iter().map(|p| p.records).sum();
    assert_eq!(table_total, 6);
    assert_eq!(k_report.partitions.len(), PARTITIONS as usize);
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::BlockingRequest), 3);
    assert_eq!(h.counter(Counter::HoldFailed), 0);
    assert_eq!(h.counter(Counter::RecordsLost), 0);
    assert_eq!(h.counter(Counter::RecordsCommitted), 6);
    assert_bytes_eq(
        "origin received",
        &origin.received_all(),
        &clients
            .iter()
            .flat_map(|c| c.sent.clone())
            .collect::<Vec<_>>(),
    );
}

/// When the origin got a POST, and the high watermark of each partition then.
type PostSeen = (Instant, Vec<i64>);

/// (b) The reliability hold: with a 300 ms broker round trip, the origin gets a POST only
/// once its record is in the topic (the partition's high watermark, read by the origin's hook
/// at that moment, is past the record), ≥ 300 ms after it was sent; a GET on another
/// connection meanwhile is answered at once.
#[test]
fn post_reaches_origin_only_after_its_record_is_in_the_topic() {
    const RTT: Duration = Duration::from_millis(300);
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let proxy = kafka_proxy(&origin, &k, |_| {});
    warm_up(&proxy);
    k.wait_finals(1);
    let mut g = proxy.client();
    g.send(&get("/small?g=0"));
    assert_eq!(g.read_response(false).status, 200);

    k.rtt(RTT);
    let watcher: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &k.bootstrap)
            .create()
            .unwrap(),
    );
    let seen: Arc<Mutex<Vec<PostSeen>>> = Arc::default();
    {
        let (watcher, seen) = (watcher.clone(), seen.clone());
        origin.set_hook(move |req| {
            if req.method != "POST" {
                return;
            }
            let at = Instant::now();
            let hw = (0..PARTITIONS)
                .map(|p| {
                    watcher
                        .fetch_watermarks(TOPIC, p, Duration::from_secs(5))
                        .map_or(-1, |(_, hi)| hi)
                })
                .collect();
            seen.lock().unwrap().push((at, hw));
        });
    }

    let addr = proxy.addr;
    let body = br#"{"index":{"_id":"1"}}"#.to_vec();
    let poster = thread::spawn(move || {
        let mut c = Client::connect(addr);
        let t0 = Instant::now();
        c.send(&post("/echo?held=1", &body));
        let r = c.read_response(false);
        let took = t0.elapsed();
        finish_client(&mut c);
        (c, r.status, t0, took)
    });
    thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    g.send(&get("/small?g=1"));
    assert_eq!(g.read_response(false).status, 200);
    let get_took = t0.elapsed();
    let (pc, status, post_t0, post_took) = poster.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        get_took < Duration::from_millis(100),
        "GET during the hold took {get_took:?}"
    );
    assert!(post_took >= RTT, "POST answered after {post_took:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the origin got one POST");
    let (at, hw) = &seen[0];
    assert!(
        *at >= post_t0 + RTT - Duration::from_millis(20),
        "POST reached the origin {:?} after it was sent",
        at.duration_since(post_t0)
    );
    finish_client(&mut g);

    k.rtt(Duration::ZERO);
    let got = k.wait_finals(3);
    let t = trace(&got);
    let conn = conn_of(&t, &pc);
    conn.check();
    let rec1 = got
        .iter()
        .find(|x| x.ts.connection_id == conn.id && x.ts.index == Some(Index::Number(1)))
        .expect("the POST's record");
    assert_eq!(
        rec1.ts.sub_stream.last().map(kind),
        Some("eom"),
        "{}",
        conn.dump()
    );
    assert!(
        hw[rec1.partition as usize] > rec1.offset,
        "POST's record at {}/{} not yet in the topic when the origin got the POST (high \
         watermarks then: {hw:?})",
        rec1.partition,
        rec1.offset
    );
    assert_eq!(proxy.handle().counter(Counter::HoldFailed), 0);
    let (r, text) = k.inspect_detailed();
    assert!(r.report.ok(), "{text}");
}

/// (c) All brokers down: GETs are answered promptly; a POST is held for
/// `--kafka-ack-timeout` (1 s) and then forwarded (policy forward, counted) or answered 503
/// (policy reject, not forwarded). Once the brokers are back, the records queued meanwhile
/// and later ones arrive, in order, nothing lost.
#[test]
fn broker_down_forward_and_reject_policies() {
    const ACK_TIMEOUT: Duration = Duration::from_secs(1);
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let fwd = kafka_proxy(&origin, &k, |c| {
        c.kafka_ack_timeout = ACK_TIMEOUT;
        c.capture_failure_policy = FailurePolicy::Forward;
    });
    let rej = kafka_proxy(&origin, &k, |c| {
        c.kafka_ack_timeout = ACK_TIMEOUT;
        c.capture_failure_policy = FailurePolicy::Reject;
    });
    warm_up(&fwd);
    warm_up(&rej);
    k.wait_finals(2);
    let mut a = fwd.client();
    let mut b = rej.client();

    k.all_down();
    for i in 0..3 {
        let t0 = Instant::now();
        a.send(&get(&format!("/small?down={i}")));
        assert_eq!(a.read_response(false).status, 200);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "GET with the brokers down took {:?}",
            t0.elapsed()
        );
    }
    // Both POSTs at once: the outage stays short (the queued records must not time out).
    let rejected = thread::spawn(move || {
        let t0 = Instant::now();
        b.send(&post("/echo?policy=reject", b"{\"r\":1}"));
        let r = b.read_response(false);
        let took = t0.elapsed();
        assert!(b.closed_by_peer(), "reject closes the connection");
        (b, r.status, took)
    });
    let t0 = Instant::now();
    a.send(&post("/echo?policy=forward", b"{\"f\":1}"));
    let r = a.read_response(false);
    let a_took = t0.elapsed();
    let (b, b_status, b_took) = rejected.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"{\"f\":1}");
    assert!(
        a_took >= ACK_TIMEOUT - Duration::from_millis(50) && a_took < Duration::from_secs(3),
        "forwarded after {a_took:?}"
    );
    assert_eq!(b_status, 503);
    assert!(
        b_took >= ACK_TIMEOUT - Duration::from_millis(50) && b_took < Duration::from_secs(3),
        "503 after {b_took:?}"
    );
    assert_eq!(fwd.handle().counter(Counter::HoldFailed), 1);
    assert_eq!(fwd.handle().counter(Counter::HoldRejected), 0);
    assert_eq!(rej.handle().counter(Counter::HoldFailed), 1);
    assert_eq!(rej.handle().counter(Counter::HoldRejected), 1);
    finish_client(&mut a);
    assert!(
        !origin
            .requests()
            .iter()
            .any(|r| r.target.contains("policy=reject")),
        "a rejected POST must not reach the origin"
    );
    assert!(origin
        .requests()
        .iter()
        .any(|r| r.target.contains("policy=forward")));

    k.all_up();
    // What was queued during the outage arrives (a's and b's final records).
    k.wait_finals(4);
    // Later traffic: held POSTs commit again.
    let mut c = fwd.client();
    c.send(&get("/small?after=1"));
    assert_eq!(c.read_response(false).status, 200);
    c.send(&post("/echo?after=1", b"{\"after\":1}"));
    assert_eq!(c.read_response(false).status, 200);
    finish_client(&mut c);
    let got = k.wait_finals(5);
    assert_eq!(fwd.handle().counter(Counter::HoldFailed), 1);
    assert_eq!(fwd.handle().counter(Counter::RecordsLost), 0);
    assert_eq!(rej.handle().counter(Counter::RecordsLost), 0);
    assert_placement_and_order(&got);
    let t = trace(&got);
    for cl in [&a, &c] {
        let conn = conn_of(&t, cl);
        conn.check();
        assert_exchange(&conn, cl);
    }
    // The rejected connection: the POST is captured (its record was queued); the synthetic
    // 503 is not (like the proxy's other synthetic answers).
    let conn_b = conn_of(&t, &b);
    conn_b.check();
    assert!(conn_b.writes().is_empty(), "{}", conn_b.dump());
    let (r, text) = k.inspect_detailed();
    assert!(r.report.ok(), "{text}");
    assert_eq!(r.report.complete_connections, 5, "{text}");
}

/// (d) Retriable produce errors (NOT_ENOUGH_REPLICAS, several in a row): librdkafka retries;
/// every record ends up in the topic once, in order; held POSTs are answered normally.
#[test]
fn retriable_produce_errors_heal_without_gaps() {
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let proxy = kafka_proxy(&origin, &k, |_| {});
    warm_up(&proxy);
    k.wait_finals(1);
    k.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 5],
    );
    let mut clients: Vec<Client> = (0..3).map(|_| proxy.client()).collect();
    for round in 0..2 {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(&get(&format!("/small?c={i}&round={round}")));
            assert_eq!(c.read_response(false).status, 200);
            c.send(&post(
                &format!("/echo?c={i}&round={round}"),
                format!("{{\"c\":{i},\"round\":{round}}}").as_bytes(),
            ));
            assert_eq!(c.read_response(false).status, 200);
        }
    }
    for c in &mut clients {
        finish_client(c);
    }
    let got = k.wait_finals(4);
    assert_placement_and_order(&got);
    let t = trace(&got);
    for c in &clients {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
        assert_eq!(conn.records.len(), 3, "two POST records + final");
    }
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::HoldFailed), 0);
    assert_eq!(h.counter(Counter::RecordsLost), 0);
    assert_eq!(h.counter(Counter::BlockingRequest), 6);
    let (r, text) = k.inspect_detailed();
    assert!(r.report.ok(), "{text}");
    assert_eq!(r.report.records, 10, "no duplicates: {text}");
    assert_eq!(r.report.complete_connections, 4);
}

/// (e) A record the broker refuses for good (MSG_SIZE_TOO_LARGE): counted as lost, the held
/// POST is forwarded (policy forward), and the connection's next record carries a
/// connectionException naming the lost record; inspect reports the gap.
#[test]
fn permanently_failed_record_is_named_in_the_next_record() {
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let proxy = kafka_proxy(&origin, &k, |_| {});
    warm_up(&proxy);
    k.wait_finals(1);
    k.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let mut c = proxy.client();
    c.send(&post("/echo?lost=1", b"{\"lost\":1}"));
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::HoldFailed), 1);
    assert_eq!(h.counter(Counter::RecordsLost), 1);
    c.send(&get("/small?after=1"));
    assert_eq!(c.read_response(false).status, 200);
    finish_client(&mut c);

    let got = k.wait_finals(2);
    assert_placement_and_order(&got);
    let id = got
        .iter()
        .find(|g| {
            g.is_final()
                && g.ts
                    .sub_stream
                    .iter()
                    .any(|o| kind(o) == "connectionException")
        })
        .map(|g| g.ts.connection_id.clone())
        .unwrap_or_else(|| panic!("no record with the exception:{}", dump(&got)));
    let mine: Vec<&Got> = got.iter().filter(|g| g.ts.connection_id == id).collect();
    assert_eq!(
        mine.len(),
        1,
        "record 1 lost, record 2 final:{}",
        dump(&got)
    );
    assert_eq!(mine[0].ts.index, Some(Index::NumberOfThisLastChunk(2)));
    let conn = trace(&got)
        .connections()
        .into_iter()
        .find(|x| x.id == id)
        .unwrap();
    let ex = conn.exceptions();
    assert_eq!(ex.len(), 1, "{}", conn.dump());
    assert!(
        ex[0].contains("capture record 1 of this connection was lost"),
        "{ex:?}"
    );
    // The rest of the exchange is there: the POST's response, the GET and its response.
    assert_eq!(conn.record_kinds(0).first(), Some(&"connectionException"));
    assert_bytes_eq("captured writes", &conn.writes(), &c.received);
    assert_bytes_eq("captured reads", &conn.reads(), &get("/small?after=1"));
    assert_eq!(h.counter(Counter::RecordsLost), 1);

    k.assert_inspect_names_first_record_lost();
}

/// (f) Shutdown right after traffic (what SIGTERM does): connections still open are closed
/// and every connection's final record is in the topic when `shutdown` returns.
#[test]
fn shutdown_after_traffic_flushes_every_final_record() {
    let _s = serial();
    let k = start_kafka();
    let origin = Origin::start();
    let mut proxy = kafka_proxy(&origin, &k, |_| {});
    let mut clients = Vec::new();
    for i in 0..4 {
        let mut c = proxy.client();
        c.send(&get(&format!("/small?c={i}")));
        assert_eq!(c.read_response(false).status, 200);
        c.send(&post(
            &format!("/echo?c={i}"),
            format!("{{\"c\":{i}}}").as_bytes(),
        ));
        assert_eq!(c.read_response(false).status, 200);
        c.send(&get(&format!("/large?bytes={}", 2000 * (i + 1))));
        assert_eq!(c.read_response(false).status, 200);
        if i == 0 {
            c.shutdown_write();
        }
        clients.push(c);
    }
    let t0 = Instant::now();
    proxy.take_handle().shutdown();
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    for c in &mut clients {
        assert!(c.closed_by_peer(), "connection closed at shutdown");
    }
    // No waiting: everything must be there already.
    let got = k.records();
    assert_eq!(
        got.iter().filter(|g| g.is_final()).count(),
        4,
        "{}",
        dump(&got)
    );
    assert_placement_and_order(&got);
    let t = trace(&got);
    for c in &clients {
        let conn = conn_of(&t, c);
        conn.check();
        assert_exchange(&conn, c);
    }
    let (r, text) = k.inspect_detailed();
    assert!(r.report.ok(), "{text}");
    assert_eq!(r.report.complete_connections, 4, "{text}");
}
