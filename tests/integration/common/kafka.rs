//! Kafka side of the test harness: an rdkafka mock cluster per test (the topic the proxy
//! writes to by default, several partitions, several brokers), the topic read back raw
//! ([`Got`]) and through `inspect` (the operator's view), and the wire-contract checks every
//! Kafka test makes (key = connectionId, one partition per connection, numbering in offset
//! order).
//!
//! May depend on: the crate's public API (`config`, `inspect`, `capture::proto`,
//! `capture::verify`, `sink::spool`), the parent harness (`decode`, `kind`, `Trace`), rdkafka
//! (mock cluster, consumer), std.
//!
//! Invariant: every read of the topic and every wait is bounded ([`READ_TIMEOUT`], the wait
//! each [`Kafka`] is started with); the mock cluster listens on 127.0.0.1 only (asserted).

use std::collections::HashMap;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use capture_proxy::capture::proto::traffic_stream::Index;
use capture_proxy::capture::proto::TrafficStream;
use capture_proxy::capture::verify::Report;
use capture_proxy::config::{KafkaAuth, KafkaConfig, SinkConfig};
use capture_proxy::inspect::{inspect_kafka_detailed, InspectOptions, KafkaInput, KafkaReport};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{decode, kind, Trace};

/// The test topic: the proxy's default `--kafkaTopic`.
pub const TOPIC: &str = "logging-traffic-topic";
/// Partitions of the test topic: several, so connections spread over them and the "one
/// partition per connection" check means something.
pub const PARTITIONS: i32 = 3;
/// Brokers of each mock cluster (ids 1..=BROKERS); partition leaders spread over them.
pub const BROKERS: i32 = 2;
/// Bound of one read of the topic (s): raw, and through `inspect`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two reads of the topic while waiting for records (ms).
const POLL_PAUSE: Duration = Duration::from_millis(100);

/// One record as read back from the topic.
#[derive(Clone)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub ts: TrafficStream,
}

impl Got {
    pub fn is_final(&self) -> bool {
        matches!(self.ts.index, Some(Index::NumberOfThisLastChunk(_)))
    }

    /// The record's number; panics (naming its place) if it has none.
    pub fn number(&self) -> i32 {
        match self.ts.index {
            Some(Index::Number(n)) | Some(Index::NumberOfThisLastChunk(n)) => n,
            None => panic!("record without index at {}/{}", self.partition, self.offset),
        }
    }
}

/// The mock cluster of one test (kept alive as long as the test runs), with [`TOPIC`].
pub struct Kafka {
    pub mock: MockCluster<'static, DefaultProducerContext>,
    pub bootstrap: String,
    /// `group.id` of the raw reader (never committed; distinct per test file).
    reader_group: &'static str,
    /// Bound of [`Kafka::wait_records`].
    wait: Duration,
}

impl Kafka {
    /// A cluster of [`BROKERS`] brokers with [`TOPIC`] ([`PARTITIONS`] partitions); the topic
    /// is read back with `reader_group`, and waits for records are bounded by `wait`.
    pub fn start(reader_group: &'static str, wait: Duration) -> Kafka {
        let mock = MockCluster::new(BROKERS).expect("mock cluster");
        mock.create_topic(TOPIC, PARTITIONS, 1)
            .expect("create topic");
        let bootstrap = mock.bootstrap_servers();
        assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap}");
        Kafka {
            mock,
            bootstrap,
            reader_group,
            wait,
        }
    }

    pub fn all_down(&self) {
        for b in 1..=BROKERS {
            self.mock.broker_down(b).unwrap();
        }
    }

    pub fn all_up(&self) {
        for b in 1..=BROKERS {
            self.mock.broker_up(b).unwrap();
        }
    }

    /// Sets the round trip time of every broker.
    pub fn rtt(&self, d: Duration) {
        for b in 1..=BROKERS {
            self.mock.broker_round_trip_time(b, d).unwrap();
        }
    }

    /// Every record now in the topic, by (partition, offset).
    pub fn records(&self) -> Vec<Got> {
        read_topic(&self.bootstrap, self.reader_group)
    }

    /// Polls the topic (bounded by the cluster's wait) until `pred` holds; panics with a dump
    /// of the topic if it does not.
    pub fn wait_records(&self, what: &str, pred: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let deadline = Instant::now() + self.wait;
        loop {
            let got = self.records();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the topic holds {} records:{}",
                got.len(),
                dump(&got)
            );
            thread::sleep(POLL_PAUSE);
        }
    }

    /// Waits until the topic holds `n` final records (one per finished connection).
    pub fn wait_finals(&self, n: usize) -> Vec<Got> {
        self.wait_records(&format!("{n} final records"), |g| {
            g.iter().filter(|r| r.is_final()).count() >= n
        })
    }

    /// The operator's view: `inspect` over the whole topic (per-partition report and printed
    /// text).
    pub fn inspect_detailed(&self) -> (KafkaReport, String) {
        let input = KafkaInput {
            timeout: READ_TIMEOUT,
            ..KafkaInput::new(self.bootstrap.clone(), TOPIC)
        };
        let mut out = Vec::new();
        let r = inspect_kafka_detailed(&input, &InspectOptions::default(), &mut out)
            .expect("inspect the topic");
        (r, String::from_utf8(out).unwrap())
    }

    /// `inspect` reports exactly one lost record, the first of one connection: an error, one
    /// incomplete connection, one exception, and the gap named.
    #[track_caller]
    pub fn assert_inspect_names_first_record_lost(&self) {
        let (r, text) = self.inspect();
        assert!(!r.ok(), "a lost record is an error: {text}");
        assert_eq!(r.incomplete_connections, 1, "{text}");
        assert_eq!(r.exceptions, 1, "{text}");
        assert!(text.contains("gap: record #1 missing"), "{text}");
    }

    /// [`Kafka::inspect_detailed`] without the per-partition part.
    pub fn inspect(&self) -> (Report, String) {
        let (r, text) = self.inspect_detailed();
        (r.report, text)
    }
}

/// Every record of [`TOPIC`], from each partition's low to its high watermark, by
/// (partition, offset), read with consumer group `group` (offsets never committed).
pub fn read_topic(bootstrap: &str, group: &str) -> Vec<Got> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for p in 0..PARTITIONS {
        let (lo, hi) = c
            .fetch_watermarks(TOPIC, p, READ_TIMEOUT)
            .expect("watermarks");
        if hi > lo {
            tpl.add_partition_offset(TOPIC, p, Offset::Offset(lo))
                .unwrap();
            ends.insert(p, hi);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + READ_TIMEOUT;
    while !ends.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading the topic timed out; partitions left {ends:?}"
        );
        let Some(Ok(m)) = c.poll(Duration::from_millis(50)) else {
            continue;
        };
        let Some(&end) = ends.get(&m.partition()) else {
            continue;
        };
        if m.offset() < end {
            let value = m.payload().unwrap_or_default().to_vec();
            out.push(Got {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                ts: decode(&value),
                value,
            });
        }
        if m.offset() + 1 >= end {
            ends.remove(&m.partition());
        }
    }
    out.sort_by_key(|g| (g.partition, g.offset));
    out
}

/// One line per record: place, key, index and observation kinds (for failure messages).
pub fn dump(got: &[Got]) -> String {
    let mut s = String::new();
    for g in got {
        s.push_str(&format!(
            "\n  {}/{} key={} idx={:?} obs={:?}",
            g.partition,
            g.offset,
            String::from_utf8_lossy(&g.key),
            g.ts.index,
            g.ts.sub_stream.iter().map(kind).collect::<Vec<_>>()
        ));
    }
    s
}

/// The records as a harness `Trace` (partition by partition, each in offset order: one
/// connection's records keep their order).
pub fn trace(got: &[Got]) -> Trace {
    Trace {
        records: got.iter().map(|g| (g.ts.clone(), g.value.len())).collect(),
    }
}

/// Keys equal connection ids, a connection stays on one partition, and its records follow
/// their numbers in offset order (no duplicates); every record has a number.
pub fn assert_placement_and_order(got: &[Got]) {
    let mut seen: HashMap<&str, (i32, i64, i32)> = HashMap::new();
    for g in got {
        assert_eq!(
            g.key,
            g.ts.connection_id.as_bytes(),
            "key != connectionId at {}/{}",
            g.partition,
            g.offset
        );
        let n = g.number();
        if let Some((p, off, prev)) = seen.get(g.ts.connection_id.as_str()) {
            assert_eq!(*p, g.partition, "connection {} split", g.ts.connection_id);
            assert!(
                g.offset > *off && n > *prev,
                "connection {}: record {n} at offset {} after record {prev} at {off}",
                g.ts.connection_id,
                g.offset
            );
        }
        seen.insert(&g.ts.connection_id, (g.partition, g.offset, n));
    }
}

/// A Kafka sink to [`TOPIC`] on `brokers` (no authentication), as client `client_id`.
pub fn kafka_sink(brokers: &str, client_id: &str) -> SinkConfig {
    SinkConfig::Kafka(KafkaConfig {
        brokers: brokers.to_string(),
        topic: TOPIC.to_string(),
        client_id: client_id.to_string(),
        extra_properties: Vec::new(),
        auth: KafkaAuth::None,
    })
}

/// Spool segment files in `dir` (0 if it cannot be listed).
pub fn segments(dir: &Path) -> usize {
    capture_proxy::sink::spool::segment_files(dir).map_or(0, |v| v.len())
}
