//! End-to-end tests of the admin endpoint: the proxy in-process (`tests/common` harness) with
//! `--admin-listen 127.0.0.1:0`, scripted traffic through it, then `/metrics` scraped over
//! HTTP and compared with what the clients actually sent and received and with the trace the
//! proxy wrote; `/ready` answering 503 while the proxy drains and while its Kafka sink cannot
//! reach a broker (an rdkafka mock cluster taken down and brought back).
//!
//! May depend on: the crate's public API (`start`, `config`, `stats`), `tests/common`,
//! rdkafka's mock cluster, std.
//!
//! Invariant: every wait is bounded (socket timeouts, `SETTLE` for counters that trail the
//! client's view, `KAFKA_WAIT` for broker state); the proxy only listens on and talks to
//! 127.0.0.1.

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::config::SinkConfig;
use capture_proxy::stats::Counter;
use common::admin::{admin_get, wait_ready, with_admin};
use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// Bound (s) of the waits for counters that are updated just after the client sees its
/// answer (the connection's final record, its ack) and for `/ready` to change.
const SETTLE: Duration = Duration::from_secs(10);
/// Bound (s) of the waits for the Kafka producer to notice a broker going down or coming back
/// (librdkafka reconnects with a backoff of up to a few seconds; health is sampled once a
/// second).
const KAFKA_WAIT: Duration = Duration::from_secs(30);
/// Body size (bytes) of each mutating request: several TCP segments, well under one record.
const BODY_BYTES: usize = 10_000;

// ----------------------------------------------------------------------------------------
// Scraping
// ----------------------------------------------------------------------------------------

/// Every sample of `/metrics`, by name with labels (`x_bucket{le="1"}`).
struct Metrics {
    samples: HashMap<String, f64>,
    text: String,
}

impl Metrics {
    fn scrape(addr: SocketAddr) -> Metrics {
        let (status, text) = admin_get(addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').expect("sample line");
                (k.to_string(), v.parse::<f64>().expect("sample value"))
            })
            .collect();
        Metrics { samples, text }
    }

    #[track_caller]
    fn get(&self, name: &str) -> u64 {
        match self.samples.get(name) {
            Some(v) => *v as u64,
            None => panic!("no sample {name} in\n{}", self.text),
        }
    }

    fn counter(&self, c: Counter) -> u64 {
        self.get(&format!("{}_total", c.name()))
    }
}

/// Scrapes until `done` holds (bounded by `SETTLE`); the last scrape either way.
fn scrape_until(addr: SocketAddr, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + SETTLE;
    loop {
        let m = Metrics::scrape(addr);
        if done(&m) || Instant::now() >= deadline {
            return m;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ----------------------------------------------------------------------------------------
// Scripted traffic
// ----------------------------------------------------------------------------------------

/// What a script sent, by method class.
#[derive(Default, Debug)]
struct Sent {
    get_head: u64,
    mutating: u64,
    other: u64,
}

impl Sent {
    fn requests(&self) -> u64 {
        self.get_head + self.mutating + self.other
    }
}

/// One keep-alive connection: GETs, a HEAD, POST/PUT with bodies, an OPTIONS, and (when
/// `pipelined`) three GETs in one write; each answer read before the next request except in
/// the pipelined batch. Closes and waits for the proxy's close.
fn session(proxy: &Proxy, pipelined: bool, sent: &mut Sent) -> Client {
    let mut c = proxy.client();
    for i in 0..4 {
        c.send(&get(&format!("/small?i={i}")));
        assert_eq!(c.read_response(false).status, 200);
    }
    c.send(b"HEAD /small HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    assert_eq!(c.read_response(true).status, 200);
    sent.get_head += 5;
    for (i, method) in ["POST", "POST", "PUT"].into_iter().enumerate() {
        let body = vec![b'a' + i as u8; BODY_BYTES];
        c.send(&with_body(method, "/echo", &body));
        let r = c.read_response(false);
        assert_eq!((r.status, r.body.len()), (200, BODY_BYTES));
    }
    sent.mutating += 3;
    c.send(b"OPTIONS /small HTTP/1.1\r\nHost: origin.test\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    sent.other += 1;
    if pipelined {
        let mut batch = Vec::new();
        for i in 0..3 {
            batch.extend_from_slice(&get(&format!("/small?p={i}")));
        }
        c.send(&batch);
        for r in c.read_n(3) {
            assert_eq!(r.status, 200);
        }
        sent.get_head += 3;
    }
    c.shutdown_write();
    assert!(c.closed_by_peer(), "proxy did not close the connection");
    c
}

// ----------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------

/// Counters after scripted traffic equal what the clients sent and received, and what the
/// trace holds; the latency histograms have one sample per request / held request.
#[test]
fn metrics_match_scripted_traffic() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        with_admin(cfg);
        // Two workers: the endpoint must sum them.
        cfg.num_threads = 2;
    });
    let admin = proxy.handle().admin_addr().expect("admin endpoint");
    let before = Metrics::scrape(admin);
    assert_eq!(before.counter(Counter::Requests), 0);
    assert_eq!(before.get("activeConnection"), 0);
    assert_eq!(before.get("sinkHealthy"), 1);
    assert_eq!(before.get("draining"), 0);

    let mut sent = Sent::default();
    let conns = 3;
    let clients: Vec<Client> = (0..conns)
        .map(|i| session(&proxy, i == 0, &mut sent))
        .collect();
    let bytes_sent: usize = clients.iter().map(|c| c.sent.len()).sum();
    let bytes_received: usize = clients.iter().map(|c| c.received.len()).sum();

    // The final records are handed over just after the proxy closes the connection, their
    // acks a moment later.
    let m = scrape_until(admin, |m| {
        m.get("activeConnection") == 0
            && m.counter(Counter::RecordsEmitted) > 0
            && m.counter(Counter::RecordsCommitted) == m.counter(Counter::RecordsEmitted)
            && m.get("sinkQueueBytes") == 0
    });
    let n = sent.requests();
    let c = |c: Counter| m.counter(c);
    assert_eq!(c(Counter::ConnAccepted), conns, "{}", m.text);
    assert_eq!(c(Counter::ConnClosed), conns);
    assert_eq!(c(Counter::ConnClosedClient), conns);
    assert_eq!(m.get("activeConnection"), 0);
    assert_eq!(c(Counter::Requests), n);
    assert_eq!(c(Counter::RequestsGetHead), sent.get_head);
    assert_eq!(c(Counter::RequestsMutating), sent.mutating);
    assert_eq!(c(Counter::RequestsOtherMethod), sent.other);
    assert_eq!(c(Counter::BytesRead), bytes_sent as u64);
    assert_eq!(c(Counter::BytesWritten), bytes_received as u64);
    assert_eq!(c(Counter::FullRequest), n);
    assert_eq!(c(Counter::BlockingRequest), sent.mutating);
    assert_eq!(c(Counter::CaptureSuppressed), 0);
    for zero in [
        Counter::RecordsLost,
        Counter::HoldFailed,
        Counter::UpstreamConnectFailed,
        Counter::UpstreamReset,
        Counter::ClientErrors,
        Counter::Malformed,
        Counter::TlsHandshakeFailed,
    ] {
        assert_eq!(c(zero), 0, "{}", zero.name());
    }
    let records = c(Counter::RecordsEmitted);
    assert_eq!(c(Counter::RecordsCommitted), records);
    assert_eq!(m.get("sinkRecordsCommitted_total"), records);
    assert_eq!(m.get("sinkRecordsFailed_total"), 0);
    assert_eq!(
        m.get("sinkBytesCommitted_total"),
        c(Counter::RecordBytes),
        "file sink commits exactly the bytes handed to it"
    );
    // One upstream response time per request (pipelined ones included), one hold time per
    // mutating request; no Kafka here.
    assert_eq!(m.get("upstreamResponseDuration_milliseconds_count"), n);
    assert_eq!(
        m.get("upstreamResponseDuration_milliseconds_bucket{le=\"+Inf\"}"),
        n
    );
    assert_eq!(m.get("blockedDuration_milliseconds_count"), sent.mutating);
    assert_eq!(m.get("kafkaCommitDuration_milliseconds_count"), 0);
    // Loopback answers come well within 10 s.
    assert_eq!(
        m.get("upstreamResponseDuration_milliseconds_bucket{le=\"10000\"}"),
        n
    );

    // The trace holds exactly the records (and bytes) the counters say were handed over.
    let trace = proxy.stop();
    assert_eq!(trace.records.len() as u64, records);
    assert_eq!(
        trace
            .records
            .iter()
            .map(|(_, size)| *size as u64)
            .sum::<u64>(),
        c(Counter::RecordBytes)
    );
    let captured = trace.connections();
    assert_eq!(captured.len() as u64, conns);
    for conn in &captured {
        conn.check();
    }
}

/// `/ready` answers 503 ("draining") as soon as shutdown begins, while a request is still in
/// flight, and `/health` stays 200; the in-flight request still completes.
#[test]
fn ready_flips_to_503_while_draining() {
    let origin = Origin::start();
    let mut proxy = Proxy::start(origin.addr(), with_admin);
    let admin = proxy.handle().admin_addr().expect("admin endpoint");
    assert_eq!(admin_get(admin, "/ready"), (200, "ready\n".to_string()));

    let mut c = proxy.client();
    c.send(&get("/slow?ms=1500"));
    assert!(
        origin.wait_requests(1, FORWARD_WAIT),
        "request not forwarded"
    );
    let handle = proxy.take_handle();
    let stats = handle.worker_stats.clone();
    let stopper = thread::spawn(move || handle.shutdown());

    let body = wait_ready(admin, 503, SETTLE);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(admin_get(admin, "/health").0, 200);
    assert_eq!(Metrics::scrape(admin).get("draining"), 1);
    assert!(
        !stopper.is_finished(),
        "shutdown finished before the in-flight request did"
    );

    let r = c.read_response(false);
    assert_eq!(
        r.status, 200,
        "the in-flight request completes during the drain"
    );
    assert!(c.closed_by_peer(), "the drained connection is closed");
    stopper.join().expect("shutdown");
    assert_eq!(
        capture_proxy::stats::total(&stats, Counter::ConnClosedDrain),
        1
    );
    assert_eq!(capture_proxy::stats::total(&stats, Counter::Requests), 1);
}

/// A Kafka sink with no reachable broker: `/ready` 503 naming the sink, `sinkHealthy` 0.
#[test]
fn ready_503_when_kafka_is_unreachable() {
    let origin = Origin::start();
    // A port nothing listens on: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        with_admin(cfg);
        cfg.sink = kafka_sink(&dead.to_string());
    });
    let admin = proxy.handle().admin_addr().expect("admin endpoint");
    let body = wait_ready(admin, 503, SETTLE);
    assert!(body.contains("capture sink unavailable"), "{body}");
    assert_eq!(Metrics::scrape(admin).get("sinkHealthy"), 0);
    assert_eq!(admin_get(admin, "/health").0, 200);
}

/// With Kafka: `kafkaCommitDuration` has one sample per committed record, the held requests
/// are in `blockedDuration`, and `/ready` follows the brokers going down and coming back.
#[test]
fn kafka_commit_histogram_and_ready_follow_the_brokers() {
    const TOPIC: &str = "logging-traffic-topic";
    let mock: MockCluster<'static, DefaultProducerContext> =
        MockCluster::new(1).expect("mock cluster");
    mock.create_topic(TOPIC, 1, 1).expect("create topic");
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |cfg| {
        with_admin(cfg);
        cfg.sink = kafka_sink(&mock.bootstrap_servers());
    });
    let admin = proxy.handle().admin_addr().expect("admin endpoint");

    let mut c = proxy.client();
    for i in 0..2 {
        let body = vec![b'k'; 100 + i];
        c.send(&with_body("POST", "/echo", &body));
        assert_eq!(c.read_response(false).status, 200);
    }
    c.shutdown_write();
    assert!(c.closed_by_peer());
    wait_ready(admin, 200, KAFKA_WAIT);

    let m = scrape_until(admin, |m| {
        m.get("activeConnection") == 0
            && m.counter(Counter::RecordsCommitted) == m.counter(Counter::RecordsEmitted)
            && m.get("kafkaCommitDuration_milliseconds_count")
                == m.counter(Counter::RecordsCommitted)
    });
    let committed = m.counter(Counter::RecordsCommitted);
    // Two held POSTs (one record each when held) and the connection's final record.
    assert!(committed >= 3, "{}", m.text);
    assert_eq!(m.counter(Counter::RecordsEmitted), committed);
    assert_eq!(m.get("sinkRecordsCommitted_total"), committed);
    assert_eq!(m.get("kafkaCommitDuration_milliseconds_count"), committed);
    assert_eq!(
        m.get("kafkaCommitDuration_milliseconds_bucket{le=\"10000\"}"),
        committed,
        "every ack within the 10 s delivery timeout"
    );
    assert_eq!(m.counter(Counter::BlockingRequest), 2);
    assert_eq!(m.get("blockedDuration_milliseconds_count"), 2);
    assert_eq!(m.get("upstreamResponseDuration_milliseconds_count"), 2);

    mock.broker_down(1).expect("broker down");
    let body = wait_ready(admin, 503, KAFKA_WAIT);
    assert!(body.contains("capture sink unavailable"), "{body}");
    assert_eq!(Metrics::scrape(admin).get("sinkHealthy"), 0);
    mock.broker_up(1).expect("broker up");
    wait_ready(admin, 200, KAFKA_WAIT);
    drop(proxy);
}

/// A Kafka sink to `brokers` as this file's client.
fn kafka_sink(brokers: &str) -> SinkConfig {
    kafka::kafka_sink(brokers, "capture-proxy-admin-test")
}
