//! End-to-end tests of the real `capture-proxy` binary capturing to a real Kafka-compatible
//! broker (tansu, started by `scripts/kafka-local.sh start`): scripted client sessions go
//! through the proxy to a real origin; after SIGTERM the topic is checked two ways — by the
//! binary's own `capture-proxy inspect --kafkaConnection` and by reading every record back
//! with an rdkafka consumer and matching each connection's bytes to what its client sent and
//! received. The consumer reads each partition to its end as the Fetch responses report it:
//! tansu 0.6.0 answers ListOffsets(latest) with the base offset of the partition's last
//! stored batch + 1 (too low after a multi-record batch), so a reader that stops at
//! ListOffsets misses records; when that happens `inspect`'s counts cannot match and only its
//! per-partition reading is checked (and the test says so).
//!
//! The tests are `#[ignore]`d because they need the broker; run them with
//! `CAPTURE_PROXY_TEST_KAFKA=127.0.0.1:9092 cargo test --test integration kafka_e2e:: -- --ignored`
//! (`scripts/test.sh` does). Run without that variable they fail, they do not skip.
//!
//! May depend on: the binary (`CARGO_BIN_EXE_capture-proxy`), `tests/common` (origin, raw
//! client, trace checks), rdkafka (admin client to create topics, `BaseConsumer` to read
//! them back), libc (SIGTERM), serde_json, std.
//!
//! Invariant: every wait is bounded; readiness is the proxy's own `listening … addr=` log
//! line, never a sleep; nothing talks to any address but 127.0.0.1 (the bootstrap address is
//! checked to be loopback); each test uses its own fresh topic.

use crate::common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::process::Output;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use capture_proxy::capture::proto::TrafficStream;
use common::binary::{proxy_command, run_args, text, ProxyProcess};
use common::{
    assert_bytes_eq, eom_of, get, large_body, with_body, Client, ConnTrace, Origin, Trace,
    MAX_RECORD_BYTES,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// The environment variable naming the broker's bootstrap address.
const KAFKA_ENV: &str = "CAPTURE_PROXY_TEST_KAFKA";
/// Partitions of each test topic: several, so the key → partition placement is exercised.
const TOPIC_PARTITIONS: i32 = 3;
/// Most time (seconds) for one admin or metadata request to the local broker.
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Most time (seconds) to read a whole test topic back.
const CONSUME_TIMEOUT: Duration = Duration::from_secs(60);
/// Most time (seconds) from spawning the proxy to its `listening` line (it creates the
/// Kafka producer first; generous for a loaded 2-core CI machine).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Most time (seconds) from SIGTERM to exit: the 10 s `--drain-timeout` given below plus the
/// producer's final flush (bounded by the 10 s ack timeout).
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// `--drain-timeout`: bounds the shutdown if a test leaves a connection open.
const DRAIN_TIMEOUT: &str = "10s";
/// Most time (seconds) a one-shot `capture-proxy inspect` may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Size of the large POST body (2 MiB): twice the largest record, so its capture is split
/// into `readSegment` runs across records, as is the echoed response's.
const LARGE_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Concurrent client connections.
const CONCURRENT_CONNECTIONS: usize = 6;
/// Request pairs (GET + POST) per concurrent connection.
const CONCURRENT_ROUNDS: usize = 4;
/// What `inspect` says while Kafka input is not implemented in the binary yet; while it does,
/// the test reports the missing check instead of failing on it (the consumer-based checks
/// still run). Remove once `inspect --kafkaConnection` has landed everywhere.
const INSPECT_KAFKA_PENDING: &str = "inspect from Kafka is not implemented yet";

// ----------------------------------------------------------------------------------------
// Broker access
// ----------------------------------------------------------------------------------------

/// The broker's bootstrap address from `CAPTURE_PROXY_TEST_KAFKA`; panics (fails the test)
/// when it is unset or not a loopback address.
fn bootstrap() -> String {
    let boot = match std::env::var(KAFKA_ENV) {
        Ok(b) if !b.trim().is_empty() => b.trim().to_string(),
        _ => panic!(
            "{KAFKA_ENV} is not set: start a broker with `scripts/kafka-local.sh start` and run \
             `{KAFKA_ENV}=127.0.0.1:9092 cargo test --test integration kafka_e2e:: -- --ignored`"
        ),
    };
    for b in boot.split(',') {
        let host = b.rsplit_once(':').map_or(b, |(h, _)| h);
        assert!(
            matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
            "{KAFKA_ENV}={boot}: these tests only talk to a local broker"
        );
    }
    boot
}

/// Polls `fut` to completion on this thread (rdkafka's admin futures are driven by its own
/// background thread; they only need a waker).
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park_timeout(Duration::from_millis(100));
    }
}

/// A topic name no other test or run uses.
fn unique_topic(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("capture-proxy-e2e-{label}-{}-{nanos}", std::process::id())
}

/// Creates `topic` (tansu does not create topics on produce) and waits until its partitions
/// show in the metadata.
fn create_topic(boot: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", boot)
        .create()
        .expect("admin client");
    let opts = AdminOptions::new().operation_timeout(Some(KAFKA_REQUEST_TIMEOUT));
    let new = NewTopic::new(topic, TOPIC_PARTITIONS, TopicReplication::Fixed(1));
    let results = block_on(admin.create_topics([&new], &opts)).expect("CreateTopics");
    for r in results {
        if let Err((t, e)) = r {
            panic!("creating topic {t}: {e}");
        }
    }
    let deadline = Instant::now() + KAFKA_REQUEST_TIMEOUT;
    loop {
        let md = admin
            .inner()
            .fetch_metadata(Some(topic), KAFKA_REQUEST_TIMEOUT)
            .expect("metadata");
        if md
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.partitions().len() == TOPIC_PARTITIONS as usize)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {topic} not in the metadata"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// One record as read back from the topic.
struct KafkaRecord {
    partition: i32,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: usize,
}

/// Reads every record of `topic` from the beginning to the end of each partition, each
/// partition in offset order.
///
/// The end of a partition is librdkafka's partition-EOF event, which comes from the high
/// watermark of the Fetch responses. `fetch_watermarks` (ListOffsets) is only used as a lower
/// bound: tansu 0.6.0 answers ListOffsets(latest) with the base offset of the last stored
/// batch + 1, ignoring the batch's other records, so it is too low after a multi-record
/// batch.
fn consume_all(boot: &str, topic: &str) -> Vec<KafkaRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", boot)
        .set("group.id", format!("{topic}-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let md = consumer
        .fetch_metadata(Some(topic), KAFKA_REQUEST_TIMEOUT)
        .expect("metadata");
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default();
    assert!(!parts.is_empty(), "topic {topic} has no partitions");
    // Next offset wanted per partition, at least where to stop, and whether its end was seen.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut at_least: HashMap<i32, i64> = HashMap::new();
    let mut eof: HashMap<i32, bool> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, KAFKA_REQUEST_TIMEOUT)
            .expect("watermarks");
        assert_eq!(low, 0, "partition {p} starts at offset {low}");
        next.insert(p, 0);
        at_least.insert(p, high);
        eof.insert(p, false);
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut by_part: HashMap<i32, Vec<KafkaRecord>> = HashMap::new();
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while parts.iter().any(|p| !eof[p] || next[p] < at_least[p]) {
        assert!(
            Instant::now() < deadline,
            "topic {topic} not read within {CONSUME_TIMEOUT:?}: at {next:?}, eof {eof:?}, \
             ListOffsets {at_least:?}"
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                eof.insert(p, true);
                continue;
            }
            Err(e) => panic!("consuming {topic}: {e}"),
        };
        let p = m.partition();
        assert_eq!(
            m.offset(),
            next[&p],
            "partition {p}: offsets must be consecutive (compaction or loss?)"
        );
        next.insert(p, m.offset() + 1);
        eof.insert(p, false);
        by_part.entry(p).or_default().push(KafkaRecord {
            partition: p,
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            headers: m.headers().map_or(0, |h| h.count()),
        });
    }
    let mut out = Vec::new();
    for p in parts {
        out.extend(by_part.remove(&p).unwrap_or_default());
    }
    out
}

/// Decodes the records into a [`Trace`] (partition by partition, so each connection's
/// records stay in order) after checking the Kafka-level contract: key = connectionId, no
/// headers, value ≤ the record limit, one partition per connection.
fn records_to_trace(records: &[KafkaRecord]) -> Trace {
    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut out = Vec::new();
    for r in records {
        let ts: TrafficStream = common::decode(&r.value);
        assert_eq!(
            r.key.as_deref(),
            Some(ts.connection_id.as_bytes()),
            "record key must be the connectionId"
        );
        assert_eq!(r.headers, 0, "records carry no headers");
        assert!(
            r.value.len() <= MAX_RECORD_BYTES,
            "record of {} bytes",
            r.value.len()
        );
        let p = *partition_of
            .entry(ts.connection_id.clone())
            .or_insert(r.partition);
        assert_eq!(
            p, r.partition,
            "connection {} spread over partitions",
            ts.connection_id
        );
        out.push((ts, r.value.len()));
    }
    Trace { records: out }
}

// ----------------------------------------------------------------------------------------
// Running the binary
// ----------------------------------------------------------------------------------------

/// `capture-proxy ARGS` run to completion (bounded by `COMMAND_TIMEOUT`).
fn run(args: &[&str]) -> Output {
    run_args(args, COMMAND_TIMEOUT)
}

/// The proxy capturing to `topic` on `boot`, forwarding to `origin`.
fn start_kafka_proxy(boot: &str, topic: &str, origin: &Origin) -> ProxyProcess {
    let mut cmd = proxy_command();
    cmd.args([
        "--kafkaConnection",
        boot,
        "--kafkaTopic",
        topic,
        "--listenPort",
        "0",
        "--listen-address",
        "127.0.0.1",
        "--admin-listen",
        "off",
        "--drain-timeout",
        DRAIN_TIMEOUT,
        "--destinationUri",
        &format!("http://{}", origin.addr()),
    ]);
    ProxyProcess::start(cmd, STARTUP_TIMEOUT)
}

// ----------------------------------------------------------------------------------------
// Scripted sessions
// ----------------------------------------------------------------------------------------

/// A finished client connection: every byte it sent and received, and each request.
struct Session {
    name: String,
    client: Client,
    requests: Vec<Vec<u8>>,
}

/// Half-closes and reads until the proxy closes too, so the connection's final record is
/// produced before the test goes on.
fn finish(name: &str, mut client: Client, requests: Vec<Vec<u8>>) -> Session {
    client.shutdown_write();
    let rest = client
        .read_to_eof()
        .expect("proxy closes after the client's FIN");
    assert!(rest.is_empty(), "{name}: bytes after the last response");
    Session {
        name: name.to_string(),
        client,
        requests,
    }
}

fn keep_alive_gets(addr: SocketAddr) -> Session {
    let mut c = Client::connect(addr);
    let mut reqs = Vec::new();
    for i in 0..5 {
        let r = get(&format!("/small?s=keepalive&i={i}"));
        c.send(&r);
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200);
        reqs.push(r);
    }
    finish("keep-alive GETs", c, reqs)
}

fn pipelined_gets(addr: SocketAddr) -> Session {
    let mut c = Client::connect(addr);
    let reqs: Vec<Vec<u8>> = (0..4)
        .map(|i| get(&format!("/small?s=pipelined&i={i}")))
        .collect();
    c.send(&reqs.concat());
    for r in c.read_n(reqs.len()) {
        assert_eq!(r.status, 200);
    }
    finish("pipelined GETs", c, reqs)
}

fn posts(addr: SocketAddr) -> Session {
    let mut c = Client::connect(addr);
    let mut reqs = Vec::new();
    for i in 0..3 {
        let body = format!("{{\"index\":{{\"_id\":\"{i}\"}},\"field\":\"value {i}\"}}");
        let r = with_body("POST", &format!("/echo?s=posts&i={i}"), body.as_bytes());
        c.send(&r);
        let resp = c.read_response(false);
        assert_eq!(resp.body, body.as_bytes());
        reqs.push(r);
    }
    finish("POSTs", c, reqs)
}

fn chunked_put(addr: SocketAddr) -> Session {
    let mut c = Client::connect(addr);
    let pieces: [&[u8]; 5] = [
        b"PUT /echo?s=chunked HTTP/1.1\r\nHost: origin.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"7\r\n{\"a\":1,\r\n",
        b"8\r\n\"b\":\"xy\"\r\n",
        b"1\r\n}\r\n",
        b"0\r\n\r\n",
    ];
    c.send_chunks(&pieces, Duration::ZERO);
    let resp = c.read_response(false);
    assert_eq!(resp.body, b"{\"a\":1,\"b\":\"xy\"}");
    finish("chunked PUT", c, vec![pieces.concat()])
}

fn large_post(addr: SocketAddr) -> Session {
    let mut c = Client::connect(addr);
    let body = large_body(LARGE_BODY_BYTES);
    let r = with_body("POST", "/echo?s=large", &body);
    c.send(&r);
    let resp = c.read_response(false);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "large echo differs");
    finish("large POST", c, vec![r])
}

fn concurrent(addr: SocketAddr) -> Vec<Session> {
    let threads: Vec<_> = (0..CONCURRENT_CONNECTIONS)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut reqs = Vec::new();
                for i in 0..CONCURRENT_ROUNDS {
                    let g = get(&format!("/small?s=concurrent&t={t}&i={i}"));
                    c.send(&g);
                    assert_eq!(c.read_response(false).status, 200);
                    let body = format!("{{\"t\":{t},\"i\":{i}}}");
                    let p = with_body(
                        "POST",
                        &format!("/echo?s=concurrent&t={t}&i={i}"),
                        body.as_bytes(),
                    );
                    c.send(&p);
                    assert_eq!(c.read_response(false).body, body.as_bytes());
                    reqs.push(g);
                    reqs.push(p);
                }
                finish(&format!("concurrent #{t}"), c, reqs)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect()
}

/// Asserts the captured connections are exactly the sessions: each matched by its bytes,
/// valid per the spec, reads == bytes sent, writes == bytes received, one marker per
/// request with the right lengths and each request's bytes before its marker.
fn assert_sessions_captured(conns: &[ConnTrace], sessions: &[Session], dump: &dyn Fn() -> String) {
    assert_eq!(
        conns.len(),
        sessions.len(),
        "captured connections vs client connections{}",
        dump()
    );
    let mut used = vec![false; conns.len()];
    for s in sessions {
        let i = conns
            .iter()
            .position(|c| c.reads() == s.client.sent)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no captured connection read its bytes{}",
                    s.name,
                    dump()
                )
            });
        assert!(!used[i], "{}: matched twice", s.name);
        used[i] = true;
        let conn = &conns[i];
        conn.check();
        common::assert_exchange(conn, &s.client);
        assert_eq!(
            conn.request_reads().len(),
            s.requests.len(),
            "{}: markers",
            s.name
        );
        for (k, (got, want)) in conn.request_reads().iter().zip(&s.requests).enumerate() {
            assert_bytes_eq(&format!("{} request {k}", s.name), got, want);
        }
        let want: Vec<_> = s.requests.iter().map(|r| eom_of(r)).collect();
        assert_eq!(conn.eoms(), want, "{}: marker lengths", s.name);
    }
}

/// How much of `inspect`'s output could be checked.
#[derive(Debug, PartialEq, Eq)]
enum InspectCheck {
    /// Exit status 0 and every summary count equal to the sessions'.
    Full,
    /// The broker's ListOffsets reported a partition end below the records really there
    /// (tansu 0.6.0 after a multi-record batch), so `inspect`, which reads up to those ends,
    /// saw less than the topic holds: checked that it read exactly up to them.
    BrokerEndsTooLow,
    /// This build's `inspect` has no Kafka input yet.
    NotImplemented,
}

/// Runs `capture-proxy inspect` on the topic and checks its output against the sessions.
/// `per_partition[p]` = the records our own consumer found in partition `p`.
fn check_inspect(
    boot: &str,
    topic: &str,
    sessions: &[Session],
    per_partition: &HashMap<i32, u64>,
) -> InspectCheck {
    let args = [
        "inspect",
        "--kafkaConnection",
        boot,
        "--kafkaTopic",
        topic,
        "--summary",
        "--json",
    ];
    let out = run(&args);
    let stderr = text(&out.stderr);
    if out.status.code() != Some(0) && stderr.contains(INSPECT_KAFKA_PENDING) {
        return InspectCheck::NotImplemented;
    }
    let stdout = text(&out.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect();
    let of_type = |t: &str| lines.iter().find(|v| v["type"] == t);
    let summary = of_type("summary")
        .unwrap_or_else(|| panic!("no summary line in inspect output:\n{stdout}\n{stderr}"));

    // Per partition: (end the broker reported, records inspect read).
    let mut ends: HashMap<i32, (u64, u64)> = HashMap::new();
    if let Some(parts) = of_type("partitions").and_then(|v| v["partitions"].as_array()) {
        for p in parts {
            let id = p["partition"].as_i64().expect("partition id") as i32;
            let end = p["endOffset"].as_u64().expect("endOffset");
            let read = p["records"].as_u64().expect("records");
            ends.insert(id, (end, read));
        }
    }
    let short = per_partition
        .iter()
        .any(|(p, n)| ends.get(p).is_some_and(|(end, _)| end < n));
    if short {
        for (p, (end, read)) in &ends {
            assert_eq!(
                read, end,
                "partition {p}: inspect read {read} records of the {end} the broker reported\n{stdout}"
            );
        }
        return InspectCheck::BrokerEndsTooLow;
    }

    assert_eq!(
        out.status.code(),
        Some(0),
        "inspect {args:?} failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    for (p, n) in per_partition {
        let (end, read) = ends.get(p).copied().unwrap_or((0, 0));
        assert_eq!(
            (end, read),
            (*n, *n),
            "partition {p}: inspect's end and count"
        );
    }
    let n_conns = sessions.len() as u64;
    let n_reqs: usize = sessions.iter().map(|s| s.requests.len()).sum();
    let sent: usize = sessions.iter().map(|s| s.client.sent.len()).sum();
    let received: usize = sessions.iter().map(|s| s.client.received.len()).sum();
    let records: u64 = per_partition.values().sum();
    let s = summary;
    assert_eq!(s["ok"], true, "{s}");
    assert_eq!(s["records"], records, "{s}");
    assert_eq!(s["connections"], n_conns, "{s}");
    assert_eq!(s["completeConnections"], n_conns, "{s}");
    assert_eq!(s["incompleteConnections"], 0, "{s}");
    assert_eq!(s["requests"], n_reqs as u64, "{s}");
    assert_eq!(s["undecodableRecords"], 0, "{s}");
    assert_eq!(s["readsBytes"], sent as u64, "{s}");
    assert_eq!(s["writesBytes"], received as u64, "{s}");

    // The text form agrees.
    let out = run(&args[..5]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().last(), Some("OK"));
    InspectCheck::Full
}

// ----------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------

/// Every kind of session through the real binary to a real broker; the topic holds exactly
/// those connections, byte for byte.
#[test]
#[ignore = "needs a Kafka broker: CAPTURE_PROXY_TEST_KAFKA=127.0.0.1:9092 (scripts/kafka-local.sh start)"]
fn scripted_sessions_captured_to_kafka() {
    let boot = bootstrap();
    let topic = unique_topic("sessions");
    create_topic(&boot, &topic);
    let origin = Origin::start();
    let mut proxy = start_kafka_proxy(&boot, &topic, &origin);
    let addr = proxy.addr;

    let t0 = Instant::now();
    let mut sessions = vec![
        keep_alive_gets(addr),
        pipelined_gets(addr),
        posts(addr),
        chunked_put(addr),
        large_post(addr),
    ];
    sessions.extend(concurrent(addr));
    let traffic_time = t0.elapsed();

    proxy.sigterm();
    let st = proxy.wait_exit(EXIT_TIMEOUT);
    assert_eq!(st.code(), Some(0), "{st:?}\n{}", proxy.stderr());
    let log = proxy.stderr();
    assert!(
        !log.contains("not committed") && !log.contains("capture record lost"),
        "the proxy lost records:\n{log}"
    );
    let n_reqs: usize = sessions.iter().map(|s| s.requests.len()).sum();
    assert_eq!(origin.request_count(), n_reqs);

    // Read the topic back ourselves.
    let records = consume_all(&boot, &topic);
    let trace = records_to_trace(&records);
    let conns = trace.connections();
    assert_sessions_captured(&conns, &sessions, &|| trace.dump());
    // The 2 MiB request and its echo were cut into segments across several records.
    let large = conns
        .iter()
        .find(|c| c.reads() == sessions[4].client.sent)
        .unwrap();
    assert!(large.records.len() >= 4, "{}", large.dump());
    assert!(large.count("readSegment") >= 2 && large.count("writeSegment") >= 2);

    // And with the binary's own inspector.
    let mut per_partition: HashMap<i32, u64> = HashMap::new();
    for r in &records {
        *per_partition.entry(r.partition).or_default() += 1;
    }
    let inspected = check_inspect(&boot, &topic, &sessions, &per_partition);
    eprintln!(
        "kafka e2e: {} connections, {n_reqs} requests, {} records {per_partition:?} in \
         {traffic_time:?}; inspect check: {inspected:?}",
        sessions.len(),
        records.len()
    );
    // inspect reads each partition to its end (partition EOF), so its counts are always
    // compared in full.
    assert!(
        matches!(inspected, InspectCheck::Full),
        "inspect's summary could not be compared in full"
    );
}

/// The harness against the broker alone: topic creation, metadata, watermarks, and reading
/// an empty topic back (so a failure here points at the broker, not at the proxy).
#[test]
#[ignore = "needs a Kafka broker: CAPTURE_PROXY_TEST_KAFKA=127.0.0.1:9092 (scripts/kafka-local.sh start)"]
fn fresh_topic_reads_back_empty() {
    let boot = bootstrap();
    let topic = unique_topic("empty");
    create_topic(&boot, &topic);
    assert!(consume_all(&boot, &topic).is_empty());
}
