//! The Kafka back-end of the single sink thread: hands serialized `TrafficStream` records to
//! librdkafka (rdkafka `BaseProducer`, bundled librdkafka) and turns delivery reports into one
//! [`Ack`] per record.
//!
//! May depend on: `kafka` (the settings every client shares, librdkafka logging, the
//! OAUTHBEARER glue), `rdkafka`, `config` (`KafkaConfig`), `handoff` (`Record`, `Ack`,
//! `Outcome`, `FailKind`, `ConnRef`). The producer's own settings live here. Of the sink, only
//! this file touches rdkafka; it runs on the sink thread, never on a worker, and nothing in it
//! blocks longer than the timeout its caller passes.
//!
//! Invariants:
//! - Every record given to [`KafkaSink::send`] is resolved exactly once through `done` (at once
//!   when refused, otherwise from a delivery report, a local time-out or [`KafkaSink::close`]),
//!   together with its emptied buffer (capacity kept).
//! - Per-connection order: records reach librdkafka in the order `send` received them; a record
//!   never overtakes one waiting in the internal FIFO. With `enable.idempotence=true` librdkafka
//!   keeps that order on the partition, across retries.
//! - At most `max_unacked_bytes` of record values are unresolved at any time (FIFO included).
//! - Values are produced without a copy: a value handed to librdkafka stays in this sink's
//!   slab, unchanged, until librdkafka reports that record or the producer is dropped — also
//!   when a purge gave up waiting for the report and acked the record already (its buffer then
//!   goes back as a fresh empty one). The `rd_kafka_producev` call and the event callback's
//!   set-up ([`enable_wake`], [`main_queue_len`]) are this file's only `unsafe` outside tests.
//! - With a waker set ([`KafkaSink::set_waker`]), librdkafka wakes the sink thread when an
//!   event lands in its empty main queue, so the sink may sleep until then
//!   ([`KafkaSink::next_poll_in`]) — provided every poll pass drains that queue or says it
//!   did not (`backlog`).

use std::collections::VecDeque;
use std::ffi::{c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext, PurgeConfig};
use rdkafka::statistics::Statistics;

use crate::config::{KafkaConfig, KAFKA_MESSAGE_OVERHEAD_BYTES};
use crate::handoff::{Ack, ConnRef, FailKind, Outcome, Record, SinkWaker};
use crate::kafka::ClientSpec;
// Re-exported for callers that still name it here (`runtime`); it lives in `kafka`.
pub use crate::kafka::TokenProvider;

/// `request.timeout.ms`: the Java proxy's hard-coded producer value (reference §1.3).
const REQUEST_TIMEOUT_MS: u32 = 5000;
/// `linger.ms`: 1 ms. Mutating requests are held until their record is acknowledged, so every
/// millisecond of linger is a millisecond of client latency; Java's kafka-clients default is 5.
/// 0 would let librdkafka's broker thread wake on the first record of a worker batch and send
/// it alone; 1 ms lets the whole batch (handed over in one `send` loop) go in one request.
const LINGER_MS: &str = "1";
/// `compression.type`: lz4. Values are HTTP heads and (mostly JSON) bodies, which lz4 shrinks
/// several-fold at the lowest CPU cost of Kafka's codecs; it is built into librdkafka (no extra
/// C library) and every Kafka consumer, the Java Replayer included, reads it. It cuts broker
/// network and disk, and the broker's size limit applies to the compressed batch.
const COMPRESSION: &str = "lz4";
/// `statistics.interval.ms`: the statistics document tells whether any broker connection is
/// up (for `/ready`). Once a second keeps readiness fresh; parsing one document a second is a
/// negligible share of the sink core.
const STATS_INTERVAL_MS: &str = "1000";
/// `debug`: librdkafka's idempotent-producer state machine (`eos`). A broker restarted without
/// its state (tansu keeps none) answers UNKNOWN_PRODUCER_ID; librdkafka then either raises a
/// fatal error or bumps the epoch and retries, which such a broker never accepts, so the
/// records silently ran into their deadline (the real-broker fault matrix lost 24 records of
/// a 3.5 s outage). Its `UNKPID` debug line is the only sign; the sink replaces the producer
/// on it. The `eos` lines come only with producer-id events (acquire, bump, drain), not per
/// record, and go to `tracing::debug!` (off unless asked for).
const DEBUG_CONTEXTS: &str = "eos";
/// `reconnect.backoff.max.ms`: librdkafka's default lets the reconnect backoff to a broker grow
/// to 10 s, so after an outage a partition leader may stay unreachable for seconds after the
/// brokers are back, and held mutating requests run into `--kafka-ack-timeout`. 1 s caps that
/// wait (the backoff still starts at 100 ms and is jittered, so a dead broker costs one
/// connection attempt per second).
const RECONNECT_BACKOFF_MAX_MS: &str = "1000";
/// `BaseProducer::poll(timeout)` in rdkafka 0.39 keeps polling until its whole timeout has
/// passed and hands librdkafka the remaining time truncated to whole milliseconds, so every
/// call busy-spins through its last sub-millisecond (perf: 27 % of the sink thread in
/// `clock_gettime`, the sink using more CPU than the worker on 4 KiB POSTs). [`KafkaSink::poll`]
/// therefore only polls with a zero timeout and sleeps in slices of this length between
/// polls: 200 µs bounds the extra ack latency and costs at most 5 000 cheap wake-ups a second,
/// only while the caller asks to wait.
const POLL_SLICE: Duration = Duration::from_micros(200);
/// Most librdkafka events served by one [`KafkaSink::poll`] pass (each zero-timeout poll
/// serves one event, e.g. the delivery reports of one produce response): keeps a pass short so
/// the sink loop gets back to the workers' batches.
const EVENTS_PER_POLL: usize = 64;
/// How long [`KafkaSink::close`] keeps collecting the reports of purged records before
/// resolving the rest itself.
const PURGE_COLLECT: Duration = Duration::from_millis(200);
/// How long [`KafkaSink::pull_back_queued`] keeps collecting purge reports (in-flight ones
/// come from the broker threads, a little later than the queued ones). 50 ms: a loopback or
/// in-VPC broker thread answers in well under that; the sink thread blocks that long once
/// per outage.
const PULL_BACK_COLLECT: Duration = Duration::from_millis(50);
/// Most commit durations kept for [`KafkaSink::take_commit_durations`] (16 B each = 1 MiB);
/// beyond this, durations are dropped until someone takes them.
const MAX_COMMIT_DURATIONS: usize = 65_536;
/// With a waker, how soon the sink looks again while a producer rebuild waits for its turn
/// (see [`FATAL_REBUILD_INTERVAL`]): 10 ms, a negligible cost during a rare fault.
const FATAL_RETRY_POLL: Duration = Duration::from_millis(10);
/// Least time between two rebuilds of the producer after fatal errors, so a fatal error that
/// repeats at once (e.g. an authorization failure) does not turn into a rebuild loop.
const FATAL_REBUILD_INTERVAL: Duration = Duration::from_secs(5);
/// Least time between two warnings about failed deliveries; the rest are counted.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// librdkafka's bounds for `message.max.bytes`.
const MESSAGE_MAX_BYTES_RANGE: (usize, usize) = (1000, 1_000_000_000);

/// Tunables of the Kafka sink (from the CLI; see `cli.md`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Largest record value accepted (`--maxTrafficBufferSize` − 500).
    pub max_record_bytes: usize,
    /// Most bytes of records handed to librdkafka and not yet resolved (the internal FIFO
    /// included). Must be at least `max_record_bytes`.
    pub max_unacked_bytes: usize,
    /// `message.timeout.ms`: how long librdkafka retries a record (10 s like Java's
    /// `delivery.timeout.ms`); also bounds a record's wait in the internal FIFO.
    pub delivery_timeout: Duration,
}

#[derive(thiserror::Error, Debug)]
pub enum KafkaSinkError {
    #[error("invalid Kafka producer setting {key}: {reason}")]
    Config { key: String, reason: String },
    #[error("cannot create the Kafka producer: {0}")]
    Client(String),
}

impl From<crate::kafka::ConfigError> for KafkaSinkError {
    fn from(e: crate::kafka::ConfigError) -> Self {
        KafkaSinkError::Config {
            key: e.key,
            reason: e.reason,
        }
    }
}

/// Counters for metrics (cumulative since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KafkaCounters {
    pub committed: u64,
    /// Value bytes of committed records.
    pub committed_bytes: u64,
    /// Failed records by [`FailKind`], indexed by [`fail_index`].
    pub failed: [u64; 5],
    /// Times the producer was replaced by a new one (fatal librdkafka error, or records
    /// taken back for the spool): `kafkaProducerRestarts_total`.
    pub rebuilds: u64,
    /// Records librdkafka failed that were handed back to the spool instead of lost.
    pub returned: u64,
}

impl KafkaCounters {
    pub fn failed_of(&self, kind: FailKind) -> u64 {
        self.failed.get(fail_index(kind)).copied().unwrap_or(0)
    }
}

/// Index of `kind` in [`KafkaCounters::failed`].
pub fn fail_index(kind: FailKind) -> usize {
    match kind {
        FailKind::TooLarge => 0,
        FailKind::Timeout => 1,
        FailKind::Overloaded => 2,
        FailKind::SinkError => 3,
        FailKind::Shutdown => 4,
    }
}

/// One delivery report, as the context records it for the sink to resolve.
#[derive(Debug)]
struct Delivery {
    slot: usize,
    err: Option<RDKafkaErrorCode>,
    /// The record was purged by [`KafkaSink::pull_back_queued`] (its key and value are still
    /// in our slab: librdkafka never copied them).
    pulled: bool,
}

/// The producer context: librdkafka callbacks land here (all from within `poll`, on the sink
/// thread). The mutex is therefore never contended; it only satisfies `Sync`.
struct Ctx {
    deliveries: Mutex<Vec<Delivery>>,
    /// A broker is known to be up: statistics showed one, or a record was committed. False
    /// until then — at start too, when nothing is known yet (readiness waits for it).
    healthy: AtomicBool,
    /// Every broker is known to be down: librdkafka reported `AllBrokersDown`, and no broker
    /// was seen up (statistics, a commit) since. Unlike `!healthy` it is false at start,
    /// before the first connection: "not yet known" is not "down" (see
    /// [`KafkaSink::known_down`]).
    down: AtomicBool,
    /// Set on every global error: the sink then checks whether the producer became fatal.
    check_fatal: AtomicBool,
    token: Option<Arc<dyn TokenProvider>>,
    /// Last global error logged and when (rdkafka 0.39 reports each error event twice).
    last_error: Mutex<Option<(RDKafkaErrorCode, Instant)>>,
    /// Set while [`KafkaSink::pull_back_queued`] purges: the purge reports keep key and value.
    keep_purged: AtomicBool,
    /// A broker answered UNKNOWN_PRODUCER_ID (librdkafka's `UNKPID` debug line; see
    /// [`DEBUG_CONTEXTS`]): the producer is replaced, as after a fatal error.
    unknown_pid: AtomicBool,
}

impl Ctx {
    fn new(token: Option<Arc<dyn TokenProvider>>) -> Ctx {
        Ctx {
            deliveries: Mutex::new(Vec::new()),
            healthy: AtomicBool::new(false),
            down: AtomicBool::new(false),
            check_fatal: AtomicBool::new(false),
            token,
            last_error: Mutex::new(None),
            keep_purged: AtomicBool::new(false),
            unknown_pid: AtomicBool::new(false),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl ClientContext for Ctx {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        if fac == "UNKPID" {
            self.unknown_pid.store(true, Ordering::Relaxed);
        }
        crate::kafka::log(level, fac, msg);
    }

    fn stats(&self, s: Statistics) {
        let up = s
            .brokers
            .values()
            .any(|b| b.source != "internal" && (b.state == "UP" || b.state == "UPDATE"));
        self.healthy.store(up, Ordering::Relaxed);
        if up {
            self.down.store(false, Ordering::Relaxed);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.healthy.store(false, Ordering::Relaxed);
            self.down.store(true, Ordering::Relaxed);
        }
        // A fatal error arrives with its underlying code (rdkafka does not pass on
        // `rd_kafka_event_error_is_fatal`): let the sink ask `rd_kafka_fatal_error`.
        self.check_fatal.store(true, Ordering::Relaxed);
        let key = code.unwrap_or(RDKafkaErrorCode::Fail);
        let mut last = lock(&self.last_error);
        let repeat =
            matches!(*last, Some((c, t)) if c == key && t.elapsed() < Duration::from_secs(1));
        if !repeat {
            *last = Some((key, Instant::now()));
            tracing::warn!(error = %error, reason, "kafka producer error");
        }
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        crate::kafka::oauth_token(
            self.token.as_deref(),
            |e| tracing::warn!(error = %e, "kafka OAUTHBEARER token provider failed"),
        )
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;

    fn delivery(&self, r: &DeliveryResult<'_>, slot: usize) {
        let mut pulled = false;
        let err = match r {
            Ok(_) => {
                self.healthy.store(true, Ordering::Relaxed);
                self.down.store(false, Ordering::Relaxed);
                None
            }
            Err((e, _)) => {
                let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                if code == RDKafkaErrorCode::Fatal {
                    self.check_fatal.store(true, Ordering::Relaxed);
                }
                let purged = matches!(
                    code,
                    RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight
                );
                pulled = purged && self.keep_purged.load(Ordering::Relaxed);
                Some(code)
            }
        };
        lock(&self.deliveries).push(Delivery { slot, err, pulled });
    }
}

/// A record inside librdkafka: what is needed to ack it, plus its value, which librdkafka
/// reads in place (produced without a copy) until it reports the record's delivery.
struct Inflight {
    conn: ConnRef,
    key: Arc<str>,
    number: u32,
    is_final: bool,
    /// The record's value (its length is what the record counts in `unacked_bytes`). Must not
    /// be freed, moved out or changed while librdkafka may read
    /// it: until the record's delivery report, or until the producer that took it is dropped.
    buf: Vec<u8>,
    started: Instant,
    /// Already acked (failed) by a purge whose report did not come in time: the slot and the
    /// value stay reserved until the late report or the producer's end.
    resolved: bool,
}

/// A record waiting for room in librdkafka's queue.
struct Waiting {
    rec: Record,
    started: Instant,
}

impl Inflight {
    /// The record again, value intact (only once librdkafka no longer reads the value).
    fn into_waiting(self) -> Waiting {
        Waiting {
            rec: Record {
                conn: self.conn,
                key: self.key,
                number: self.number,
                is_final: self.is_final,
                value: self.buf,
            },
            started: self.started,
        }
    }
}

/// Result of offering one record to librdkafka.
enum Offer {
    Accepted,
    QueueFull(Record),
    Refused(Record, FailKind, RDKafkaErrorCode),
}

pub struct KafkaSink {
    /// Declared first so it is dropped first: dropping it purges and destroys librdkafka,
    /// after which nothing reads the record values in `slab` any more.
    producer: BaseProducer<Ctx>,
    client_config: ClientConfig,
    token: Option<Arc<dyn TokenProvider>>,
    /// The topic, as a C string, made once (librdkafka takes the name on every produce).
    topic_c: CString,
    settings: KafkaSettings,
    /// In-flight metadata, indexed by the delivery opaque.
    slab: Vec<Option<Inflight>>,
    free: Vec<usize>,
    fifo: VecDeque<Waiting>,
    unacked_records: usize,
    unacked_bytes: usize,
    /// Reused to take the context's delivery reports without holding its lock.
    reports: Vec<Delivery>,
    counters: KafkaCounters,
    commit_durations: Vec<Duration>,
    /// Set by `close` before it purges: purge reports then mean Shutdown; otherwise a purge
    /// comes from a fatal error (librdkafka's own or our rebuild) and means SinkError.
    closing: bool,
    last_rebuild: Option<Instant>,
    /// The reason of a fatal librdkafka error not yet recovered from by a rebuild.
    fatal: Option<String>,
    closed: bool,
    /// When a record was last committed, and when the unresolved records last went from none
    /// to some: together they tell how long Kafka has held records without committing any.
    last_commit: Option<Instant>,
    busy_since: Option<Instant>,
    /// Collects the records [`KafkaSink::reclaim`] takes back while it serves the purge
    /// reports.
    pulled: Option<Vec<Waiting>>,
    /// Records that failed because of the producer's own state at the broker (see
    /// [`producer_state_error`]), still counted in `unacked`: produced again, in order,
    /// through a replacement producer by [`KafkaSink::rebuild_producer`].
    again: Vec<Waiting>,
    /// With a spool behind this sink ([`KafkaSink::return_failures`]): records librdkafka
    /// failed for a reason that is not the record's own (time-out, broker or producer state)
    /// wait here, intact, for [`KafkaSink::take_returned`] instead of being acked as lost.
    returned: Option<Vec<Record>>,
    warn_last: Option<Instant>,
    warn_suppressed: u64,
    /// Last warning about a record handed back for the spool.
    return_warn_last: Option<Instant>,
    /// Wakes the sink thread from librdkafka's event callback; its address is the callback's
    /// opaque, so it lives (here, dropped after `producer`) as long as any producer using it.
    waker: Option<Arc<SinkWaker>>,
    /// The last poll pass left events in librdkafka's main queue (no callback comes for
    /// those until it is empty again): poll again without sleeping.
    backlog: bool,
}

/// The librdkafka configuration for `cfg` (pure: nothing is created or contacted): the
/// producer's own settings below, and what every client shares (`kafka::ClientSpec`: the
/// property file's settings override the producer's, the auth type overrides both).
/// `has_token` tells whether a [`TokenProvider`] is available (required for MSK IAM).
pub fn producer_config(
    cfg: &KafkaConfig,
    s: &KafkaSettings,
    has_token: bool,
) -> Result<ClientConfig, KafkaSinkError> {
    let config_err = |key: &str, reason: String| KafkaSinkError::Config {
        key: key.to_string(),
        reason,
    };
    if cfg.topic.is_empty() {
        return Err(config_err("topic", "the topic name is empty".into()));
    }
    if s.max_record_bytes == 0 || s.max_unacked_bytes < s.max_record_bytes {
        return Err(config_err(
            "max_unacked_bytes",
            format!(
                "must be at least max_record_bytes ({}) and that must be > 0; got {}",
                s.max_record_bytes, s.max_unacked_bytes
            ),
        ));
    }
    let message_max = s
        .max_record_bytes
        .checked_add(KAFKA_MESSAGE_OVERHEAD_BYTES)
        .filter(|m| *m <= MESSAGE_MAX_BYTES_RANGE.1)
        .ok_or_else(|| {
            config_err(
                "message.max.bytes",
                format!(
                    "record limit {} is above librdkafka's maximum",
                    s.max_record_bytes
                ),
            )
        })?
        .max(MESSAGE_MAX_BYTES_RANGE.0);
    // librdkafka: 0 means "no timeout", which we never want.
    let timeout_ms = s.delivery_timeout.as_millis().clamp(1, i32::MAX as u128);
    // librdkafka's own byte bound, a little above ours (it counts keys too), so that normally
    // only its message-count bound sends records to our FIFO. Its range is 1..=i32::MAX KiB.
    let queue_kib = (s.max_unacked_bytes / 1024)
        .saturating_add(s.max_unacked_bytes / 8192)
        .saturating_add(1)
        .min(i32::MAX as usize);

    let spec = ClientSpec {
        brokers: &cfg.brokers,
        client_id: &cfg.client_id,
        properties: &cfg.extra_properties,
        auth: &cfg.auth,
    };
    let c = spec.client_config(has_token, |c| {
        c.set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", message_max.to_string())
            .set("message.timeout.ms", timeout_ms.to_string())
            .set("request.timeout.ms", REQUEST_TIMEOUT_MS.to_string())
            .set("linger.ms", LINGER_MS)
            .set("compression.type", COMPRESSION)
            .set("queue.buffering.max.kbytes", queue_kib.to_string())
            .set("statistics.interval.ms", STATS_INTERVAL_MS)
            .set("debug", DEBUG_CONTEXTS)
            // rdkafka derives the level from the `log` crate, which this binary does not set
            // up: without this the `eos` debug lines never reach `Ctx::log`.
            .set_log_level(RDKafkaLogLevel::Debug)
            .set("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS);
    })?;
    Ok(c)
}

/// Errors about the producer's own state at the broker (its id, epoch or sequence), which say
/// nothing about the record: a replacement producer produces it again. librdkafka raises
/// some of them as fatal, reports others per record ("unable to retry without risking
/// duplication/reordering"), e.g. UNKNOWN_PRODUCER_ID from a broker restarted without its
/// state.
fn producer_state_error(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnknownProducerId
            | RDKafkaErrorCode::OutOfOrderSequenceNumber
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::GaplessGuarantee
            | RDKafkaErrorCode::Fatal
    )
}

/// `now + d`, saturating far in the future instead of overflowing.
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

/// Hands one record to librdkafka without copying its value (`msgflags` 0, neither
/// `RD_KAFKA_MSG_F_COPY` nor `_FREE`): librdkafka reads `value` in place until it reports the
/// record's delivery, with `slot` as the delivery opaque. rdkafka's `BaseProducer::send`
/// always copies; perf of 64 KiB responses captured to Kafka showed that copy at 7 % of the
/// proxy's CPU (the sink thread's `memmove`), plus a malloc/free of every value. The key is
/// copied by librdkafka in any case. Always the partitioner's choice (`RD_KAFKA_PARTITION_UA`).
///
/// # Safety
/// `value`'s bytes must stay valid and unchanged until the delivery report carrying `slot`
/// has been served by `producer`'s context, or until `producer` has been dropped
/// (`KafkaSink` keeps them in `Inflight::buf`).
unsafe fn produce_in_place(
    producer: &BaseProducer<Ctx>,
    topic: &CStr,
    key: &[u8],
    value: &[u8],
    slot: usize,
) -> Result<(), RDKafkaErrorCode> {
    use rdkafka::bindings::rd_kafka_resp_err_t as Resp;
    use rdkafka::bindings::rd_kafka_vtype_t::*;
    use rdkafka::IntoOpaque as _;
    /// `RD_KAFKA_PARTITION_UA`: let the partitioner choose (by key).
    const PARTITION_UNASSIGNED: i32 = -1;
    const NO_FLAGS: i32 = 0;
    let err = rdkafka::bindings::rd_kafka_producev(
        producer.client().native_ptr(),
        RD_KAFKA_VTYPE_TOPIC,
        topic.as_ptr(),
        RD_KAFKA_VTYPE_PARTITION,
        PARTITION_UNASSIGNED,
        RD_KAFKA_VTYPE_MSGFLAGS,
        NO_FLAGS,
        RD_KAFKA_VTYPE_VALUE,
        value.as_ptr() as *mut c_void,
        value.len(),
        RD_KAFKA_VTYPE_KEY,
        key.as_ptr() as *mut c_void,
        key.len(),
        RD_KAFKA_VTYPE_OPAQUE,
        slot.into_ptr(),
        RD_KAFKA_VTYPE_END,
    );
    if err == Resp::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(err.into())
    }
}

/// librdkafka's event callback: runs on one of its threads, under its queue lock, whenever an
/// event lands in the empty main queue. Only wakes the sink thread (never blocks).
unsafe extern "C" fn on_queue_event(_rk: *mut rdkafka::bindings::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` is the address of the `SinkWaker` inside the sink's `Arc`, which the
    // sink keeps until after every producer that got it is destroyed (`enable_wake`).
    if let Some(w) = unsafe { opaque.cast::<SinkWaker>().as_ref() } {
        w.wake();
    }
}

/// Makes librdkafka call [`on_queue_event`] with `w` when an event lands in `p`'s empty main
/// queue (delivery reports, errors, statistics and logs all go there). The caller must keep
/// `w` alive until `p` is dropped.
fn enable_wake(p: &BaseProducer<Ctx>, w: &Arc<SinkWaker>) {
    let rk = p.client().native_ptr();
    // SAFETY: `rk` is a live client. `rd_kafka_queue_get_main` returns a new handle on its main
    // queue, released at once below; the callback setting stays on the queue itself. The
    // opaque outlives the client (see above).
    unsafe {
        let q = rdkafka::bindings::rd_kafka_queue_get_main(rk);
        if q.is_null() {
            return;
        }
        rdkafka::bindings::rd_kafka_queue_cb_event_enable(
            q,
            Some(on_queue_event),
            Arc::as_ptr(w).cast_mut().cast::<c_void>(),
        );
        rdkafka::bindings::rd_kafka_queue_destroy(q);
    }
}

/// Events waiting in `p`'s main queue.
fn main_queue_len(p: &BaseProducer<Ctx>) -> usize {
    // SAFETY: as in `enable_wake`: a new handle on the live client's main queue, released at
    // once.
    unsafe {
        let q = rdkafka::bindings::rd_kafka_queue_get_main(p.client().native_ptr());
        if q.is_null() {
            return 0;
        }
        let n = rdkafka::bindings::rd_kafka_queue_length(q);
        rdkafka::bindings::rd_kafka_queue_destroy(q);
        n
    }
}

fn create_producer(
    c: &ClientConfig,
    token: Option<Arc<dyn TokenProvider>>,
) -> Result<BaseProducer<Ctx>, KafkaSinkError> {
    c.create_with_context(Ctx::new(token)).map_err(|e| match e {
        KafkaError::ClientConfig(_, reason, key, _) => KafkaSinkError::Config { key, reason },
        other => KafkaSinkError::Client(other.to_string()),
    })
}

impl KafkaSink {
    /// Builds the producer. Does not wait for brokers: the proxy must start and forward even
    /// when Kafka is down (records then wait in librdkafka up to `delivery_timeout`).
    pub fn new(
        cfg: &KafkaConfig,
        s: KafkaSettings,
        token: Option<Arc<dyn TokenProvider>>,
    ) -> Result<Self, KafkaSinkError> {
        let client_config = producer_config(cfg, &s, token.is_some())?;
        let producer = create_producer(&client_config, token.clone())?;
        let topic_c = CString::new(cfg.topic.as_str()).map_err(|_| KafkaSinkError::Config {
            key: "topic".into(),
            reason: "contains a NUL byte".into(),
        })?;
        Ok(KafkaSink {
            producer,
            client_config,
            token,
            topic_c,
            settings: s,
            slab: Vec::new(),
            free: Vec::new(),
            fifo: VecDeque::new(),
            unacked_records: 0,
            unacked_bytes: 0,
            reports: Vec::new(),
            counters: KafkaCounters::default(),
            commit_durations: Vec::new(),
            closing: false,
            last_rebuild: None,
            fatal: None,
            closed: false,
            last_commit: None,
            busy_since: None,
            pulled: None,
            again: Vec::new(),
            returned: None,
            warn_last: None,
            warn_suppressed: 0,
            return_warn_last: None,
            waker: None,
            backlog: false,
        })
    }

    /// From now on librdkafka wakes the sink thread through `w` whenever an event (a delivery
    /// report, an error, statistics, a log line) lands in its empty main queue — also for
    /// every producer that replaces this one — so the thread may sleep for
    /// [`KafkaSink::next_poll_in`].
    pub fn set_waker(&mut self, w: SinkWaker) {
        let w = Arc::new(w);
        enable_wake(&self.producer, &w);
        self.waker = Some(w);
        // Events queued before now bring no callback: the next turn must poll.
        self.backlog = true;
    }

    /// How long the sink thread may wait before the next [`KafkaSink::poll`] (a waker wakes
    /// it earlier). Without a waker: [`POLL_SLICE`] while records are unresolved.
    pub fn next_poll_in(&self) -> Duration {
        if self.waker.is_none() {
            return if self.unacked_records > 0 {
                POLL_SLICE
            } else {
                Duration::MAX
            };
        }
        if self.backlog {
            return Duration::ZERO;
        }
        if self.fatal.is_some() || !self.again.is_empty() {
            // A producer rebuild waits for its turn (FATAL_REBUILD_INTERVAL): look again soon.
            return FATAL_RETRY_POLL;
        }
        if self.fifo.is_empty() {
            return Duration::MAX;
        }
        // Parked on a full librdkafka queue: delivery reports make the room, and they wake
        // us; the slice also catches the FIFO's own deadlines.
        POLL_SLICE
    }

    /// Non-blocking: hands one record over (key = `rec.key`, the configured topic, no
    /// headers). A full librdkafka queue parks it in the FIFO (retried by `poll`); a record
    /// over `max_record_bytes` fails as TooLarge and one that would take the unresolved bytes
    /// over `max_unacked_bytes` fails as Overloaded, both at once through `done`.
    /// librdkafka reads the value in place (no copy) until the record's delivery report; the
    /// emptied buffer (capacity kept) comes back through `done` with the record's ack.
    pub fn send(&mut self, rec: Record, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        let len = rec.value.len();
        if self.closed {
            self.refuse(rec, FailKind::Shutdown, done);
            return;
        }
        if len > self.settings.max_record_bytes {
            self.refuse(rec, FailKind::TooLarge, done);
            return;
        }
        if !self.has_room_for(len) {
            self.refuse(rec, FailKind::Overloaded, done);
            return;
        }
        let now = Instant::now();
        if self.unacked_records == 0 {
            self.busy_since = Some(now);
        }
        self.unacked_records += 1;
        self.unacked_bytes += len;
        let w = Waiting { rec, started: now };
        if self.fifo.is_empty() {
            self.offer_and_handle(w, done);
        } else {
            self.fifo.push_back(w);
            self.drain_fifo(done);
        }
    }

    /// Serves delivery reports (and librdkafka's other events) for up to `timeout`, returning
    /// early after the first slice that resolved a record. `Duration::ZERO` = one pass without
    /// waiting. Call it regularly even when idle: token refresh and health run through it.
    pub fn poll(&mut self, timeout: Duration, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        let deadline = deadline_after(timeout);
        loop {
            let mut resolved = 0;
            for _ in 0..EVENTS_PER_POLL {
                // Zero timeout: serves at most one queued event, never spins (see POLL_SLICE).
                self.producer.poll(Duration::ZERO);
                let n = self.take_reports(done);
                if n == 0 {
                    break;
                }
                resolved += n;
            }
            resolved += self.drain_fifo(done);
            if self
                .producer
                .context()
                .check_fatal
                .swap(false, Ordering::Relaxed)
            {
                if let Some((code, reason)) = self.producer.client().fatal_error() {
                    self.fatal = Some(format!("{code}: {reason}"));
                }
            }
            if self
                .producer
                .context()
                .unknown_pid
                .swap(false, Ordering::Relaxed)
                && self.fatal.is_none()
            {
                self.fatal =
                    Some("a broker no longer knows the producer id (UNKNOWN_PRODUCER_ID)".into());
            }
            if self.fatal.is_some() {
                resolved += self.rebuild_producer(done);
            }
            // Only a waker's sleep depends on it; without one the caller polls on a timer.
            self.backlog = self.waker.is_some() && main_queue_len(&self.producer) > 0;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if resolved > 0 || remaining.is_zero() {
                return;
            }
            std::thread::sleep(remaining.min(POLL_SLICE));
        }
    }

    /// `(records, bytes)` handed over and not yet resolved (FIFO included).
    pub fn unacked(&self) -> (usize, usize) {
        (self.unacked_records, self.unacked_bytes)
    }

    /// Could `bytes` more of records be taken without any failing as Overloaded?
    pub fn has_room_for(&self, bytes: usize) -> bool {
        self.unacked_bytes
            .checked_add(bytes)
            .is_some_and(|total| total <= self.settings.max_unacked_bytes)
    }

    /// Is Kafka making progress: nothing unresolved, or a record committed within `window`,
    /// or records outstanding for less than `window` (a first round trip under way)?
    pub fn making_progress(&self, window: Duration) -> bool {
        // The later of the two (`None` sorts first).
        let since = self.last_commit.max(self.busy_since);
        self.unacked_records == 0 || since.is_none_or(|t| t.elapsed() <= window)
    }

    /// The largest record value taken (`KafkaSettings::max_record_bytes`).
    pub fn max_record_bytes(&self) -> usize {
        self.settings.max_record_bytes
    }

    /// Kafka just became unreachable: takes back every record librdkafka holds — queued, and
    /// in flight to the unreachable brokers — and those in the FIFO, into `out` in per-key
    /// record order, so the caller can spool them instead of letting them time out, and
    /// replaces the producer with a new one (see [`KafkaSink::reclaim`]: no fencing, nothing
    /// lost). A record in flight may have reached a broker that failed before answering:
    /// spooled and produced again later, it then appears twice in the topic (the price of
    /// never losing it; README "Kafka"). Returns how many were taken back.
    pub fn pull_back_queued(
        &mut self,
        out: &mut Vec<Record>,
        done: &mut dyn FnMut(Ack, Vec<u8>),
    ) -> usize {
        let before = out.len();
        let Some(back) = self.reclaim("kafka unreachable: records moved to the spool", done) else {
            return 0;
        };
        // FIFO records are newer than everything librdkafka held.
        let fifo = std::mem::take(&mut self.fifo);
        for w in back.into_iter().chain(fifo) {
            self.unacked_records = self.unacked_records.saturating_sub(1);
            self.unacked_bytes = self.unacked_bytes.saturating_sub(w.rec.value.len());
            out.push(w.rec);
        }
        out.len() - before
    }

    /// A spool stands behind this sink: from now on a record librdkafka fails for any reason
    /// but its own (time-out, broker, transport or producer state) is not acked as lost but
    /// handed back through [`KafkaSink::take_returned`], value intact, to be spooled.
    /// Too-large records and shutdown still fail as before.
    pub fn return_failures(&mut self) {
        self.returned.get_or_insert_with(Vec::new);
    }

    /// Moves the records handed back since the last call (see
    /// [`KafkaSink::return_failures`]) into `out`, oldest first. They no longer count in
    /// [`KafkaSink::unacked`]; the caller now owns their acks.
    pub fn take_returned(&mut self, out: &mut Vec<Record>) {
        if let Some(r) = self.returned.as_mut() {
            out.append(r);
        }
    }

    pub fn healthy(&self) -> bool {
        !self.unusable() && self.producer.context().healthy.load(Ordering::Relaxed)
    }

    /// Closed, or the producer failed fatally (until it is replaced): whatever the brokers do.
    fn unusable(&self) -> bool {
        self.closed || self.fatal.is_some()
    }

    /// Kafka is known to be unusable: closed, fatally failed, or every broker reported down
    /// and none seen up since. False while nothing is known yet (at start, before the first
    /// connection answered), where [`KafkaSink::healthy`] is false too: the back-pressure
    /// (`SinkThread::kafka_behind`) must hold the clients then, or a fast start fills the
    /// unacknowledged-bytes bound before the first delivery report and loses records as
    /// Overloaded (seen in the loadtest: 64 KiB responses, 256 MiB filled in ~0.5 s while a
    /// fresh broker created its topic).
    pub fn known_down(&self) -> bool {
        self.unusable() || self.producer.context().down.load(Ordering::Relaxed)
    }

    pub fn counters(&self) -> KafkaCounters {
        self.counters
    }

    /// Moves the send-to-ack durations of records committed since the last call into `out`.
    pub fn take_commit_durations(&mut self, out: &mut Vec<Duration>) {
        out.append(&mut self.commit_durations);
    }

    /// At shutdown: keeps polling until everything is resolved or `timeout` has passed, then
    /// resolves the rest as Failed(Shutdown). Later `send`s fail as Shutdown at once.
    pub fn close(&mut self, timeout: Duration, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        let deadline = deadline_after(timeout);
        while self.unacked_records > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            self.poll(remaining.min(Duration::from_millis(10)), done);
        }
        if self.unacked_records > 0 && self.returned.is_some() {
            // A spool stands behind: what Kafka did not take goes there, not lost.
            if let Some(back) = self.reclaim("shutdown: records moved to the spool", done) {
                let fifo = std::mem::take(&mut self.fifo);
                for w in back.into_iter().chain(fifo) {
                    self.give_back(w, FailKind::Shutdown, RDKafkaErrorCode::PurgeQueue);
                }
            }
        }
        if self.unacked_records > 0 {
            self.closing = true;
            // Waiting for a replacement producer that will not come now: older than the FIFO.
            for w in std::mem::take(&mut self.again).into_iter().rev() {
                self.fifo.push_front(w);
            }
            self.purge_all(FailKind::Shutdown, done);
        }
        self.closed = true;
        self.producer
            .context()
            .healthy
            .store(false, Ordering::Relaxed);
    }

    // ----- internals -----

    fn refuse(&mut self, mut rec: Record, kind: FailKind, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        self.count_failure(kind, None);
        rec.value.clear();
        done(
            Ack {
                conn: rec.conn,
                number: rec.number,
                is_final: rec.is_final,
                outcome: Outcome::Failed(kind),
            },
            rec.value,
        );
    }

    /// Offers `w` to librdkafka; returns false (and keeps `w` at the FIFO's front) when the
    /// queue is full. Other refusals resolve the record.
    fn offer_and_handle(&mut self, w: Waiting, done: &mut dyn FnMut(Ack, Vec<u8>)) -> bool {
        let started = w.started;
        match self.offer(w.rec, started) {
            Offer::Accepted => true,
            Offer::QueueFull(rec) => {
                self.fifo.push_front(Waiting { rec, started });
                false
            }
            Offer::Refused(rec, kind, code) if self.returns(kind) => {
                self.give_back(Waiting { rec, started }, kind, code);
                true
            }
            Offer::Refused(rec, kind, code) => {
                self.count_failure(kind, Some(code));
                self.finish(
                    rec.conn,
                    rec.number,
                    rec.is_final,
                    rec.value.len(),
                    rec.value,
                    started,
                    Outcome::Failed(kind),
                    done,
                );
                true
            }
        }
    }

    fn offer(&mut self, rec: Record, started: Instant) -> Offer {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slab.push(None);
                self.slab.len() - 1
            }
        };
        // SAFETY: the value is moved into `slab[slot]` below when librdkafka accepts it and
        // stays there, unchanged and not freed, until the slot's delivery report or the
        // producer's drop (see `Inflight::buf`); on refusal librdkafka keeps no reference.
        let res = unsafe {
            produce_in_place(
                &self.producer,
                &self.topic_c,
                rec.key.as_bytes(),
                &rec.value,
                slot,
            )
        };
        let code = res.err();
        match code {
            None => {
                if let Some(s) = self.slab.get_mut(slot) {
                    *s = Some(Inflight {
                        conn: rec.conn,
                        key: rec.key,
                        number: rec.number,
                        is_final: rec.is_final,
                        buf: rec.value,
                        started,
                        resolved: false,
                    });
                } else {
                    // Unreachable (the slot was just made); librdkafka holds a pointer into
                    // the value, so it must never be freed: leak it rather than risk that.
                    std::mem::forget(rec.value);
                }
                Offer::Accepted
            }
            Some(code) => {
                self.free.push(slot);
                match code {
                    RDKafkaErrorCode::QueueFull => Offer::QueueFull(rec),
                    RDKafkaErrorCode::MessageSizeTooLarge
                    | RDKafkaErrorCode::MessageBatchTooLarge => {
                        Offer::Refused(rec, FailKind::TooLarge, code)
                    }
                    RDKafkaErrorCode::Fatal => {
                        // The producer died: the record waits in the FIFO for its successor
                        // (see `rebuild_after_fatal`) instead of being lost with it.
                        self.producer
                            .context()
                            .check_fatal
                            .store(true, Ordering::Relaxed);
                        Offer::QueueFull(rec)
                    }
                    _ => Offer::Refused(rec, FailKind::SinkError, code),
                }
            }
        }
    }

    /// Acks a FIFO record (counted in `unacked`, never handed to librdkafka) as failed.
    fn fail_waiting(&mut self, w: Waiting, kind: FailKind, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        let r = w.rec;
        let len = r.value.len();
        self.finish(
            r.conn,
            r.number,
            r.is_final,
            len,
            r.value,
            w.started,
            Outcome::Failed(kind),
            done,
        );
    }

    /// Retries FIFO records in order; fails those that waited past the delivery timeout.
    /// Returns how many records it resolved.
    fn drain_fifo(&mut self, done: &mut dyn FnMut(Ack, Vec<u8>)) -> usize {
        let mut resolved = 0;
        while let Some(w) = self.fifo.pop_front() {
            if w.started.elapsed() >= self.settings.delivery_timeout {
                if self.returns(FailKind::Timeout) {
                    self.give_back(w, FailKind::Timeout, RDKafkaErrorCode::QueueFull);
                } else {
                    self.count_failure(FailKind::Timeout, Some(RDKafkaErrorCode::QueueFull));
                    self.fail_waiting(w, FailKind::Timeout, done);
                }
                resolved += 1;
                continue;
            }
            if !self.offer_and_handle(w, done) {
                break;
            }
        }
        resolved
    }

    /// Resolves the delivery reports collected by the context. Returns how many.
    fn take_reports(&mut self, done: &mut dyn FnMut(Ack, Vec<u8>)) -> usize {
        {
            let mut d = lock(&self.producer.context().deliveries);
            std::mem::swap(&mut *d, &mut self.reports);
        }
        let mut reports = std::mem::take(&mut self.reports);
        let mut n = 0;
        for d in reports.drain(..) {
            let Some(f) = self.slab.get_mut(d.slot).and_then(Option::take) else {
                continue; // not ours any more (a rebuild released it)
            };
            self.free.push(d.slot);
            if f.resolved {
                // Acked already by a purge that gave up waiting; librdkafka is done with the
                // value only now. Freed here (rare path).
                continue;
            }
            if let (true, Some(out)) = (d.pulled, self.pulled.as_mut()) {
                // Taken back by `reclaim`: still counted in `unacked`, the value intact.
                out.push(f.into_waiting());
                continue;
            }
            let outcome = match d.err {
                None => Outcome::Committed,
                Some(code) if producer_state_error(code) && !self.closing => {
                    // Not the record's fault, nor the broker's: the producer's id or sequence
                    // is unknown to the broker (a restarted in-memory broker, an expired
                    // producer id). A new producer produces it again; nothing is lost.
                    if self.fatal.is_none() {
                        self.fatal = Some(format!("{code} from the broker"));
                    }
                    self.again.push(f.into_waiting());
                    continue;
                }
                Some(code) => {
                    let kind = self.fail_kind(code);
                    if self.returns(kind) {
                        self.give_back(f.into_waiting(), kind, code);
                        n += 1;
                        continue;
                    }
                    self.count_failure(kind, Some(code));
                    Outcome::Failed(kind)
                }
            };
            self.finish(
                f.conn,
                f.number,
                f.is_final,
                f.buf.len(),
                f.buf,
                f.started,
                outcome,
                done,
            );
            n += 1;
        }
        self.reports = reports;
        n
    }

    fn fail_kind(&self, code: RDKafkaErrorCode) -> FailKind {
        match code {
            RDKafkaErrorCode::MessageTimedOut => FailKind::Timeout,
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => {
                FailKind::TooLarge
            }
            RDKafkaErrorCode::PurgeQueue | RDKafkaErrorCode::PurgeInflight => {
                if self.closing {
                    FailKind::Shutdown
                } else {
                    FailKind::SinkError
                }
            }
            _ => FailKind::SinkError,
        }
    }

    /// Acks one accepted record (it was counted in `unacked`).
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        conn: ConnRef,
        number: u32,
        is_final: bool,
        bytes: usize,
        mut buf: Vec<u8>,
        started: Instant,
        outcome: Outcome,
        done: &mut dyn FnMut(Ack, Vec<u8>),
    ) {
        self.unacked_records = self.unacked_records.saturating_sub(1);
        self.unacked_bytes = self.unacked_bytes.saturating_sub(bytes);
        if outcome == Outcome::Committed {
            let now = Instant::now();
            self.last_commit = Some(now);
            self.counters.committed += 1;
            self.counters.committed_bytes += bytes as u64;
            if self.commit_durations.len() < MAX_COMMIT_DURATIONS {
                self.commit_durations
                    .push(now.saturating_duration_since(started));
            }
        }
        buf.clear();
        done(
            Ack {
                conn,
                number,
                is_final,
                outcome,
            },
            buf,
        );
    }

    fn count_failure(&mut self, kind: FailKind, code: Option<RDKafkaErrorCode>) {
        if let Some(c) = self.counters.failed.get_mut(fail_index(kind)) {
            *c += 1;
        }
        if matches!(kind, FailKind::Shutdown) {
            return;
        }
        let now = Instant::now();
        match self.warn_last {
            Some(t) if now.duration_since(t) < WARN_INTERVAL => self.warn_suppressed += 1,
            _ => {
                let err = code.map(|c| c.to_string()).unwrap_or_default();
                tracing::warn!(
                    kind = kind.as_str(),
                    error = %err,
                    suppressed = self.warn_suppressed,
                    "kafka record not committed; its capture is lost"
                );
                self.warn_last = Some(now);
                self.warn_suppressed = 0;
            }
        }
    }

    /// Purges everything librdkafka holds (queued and in flight) and serves the reports until
    /// every record is resolved or `collect` has passed.
    fn purge_and_collect(&mut self, collect: Duration, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        self.producer
            .purge(PurgeConfig::default().queue().inflight());
        let until = Instant::now() + collect;
        loop {
            self.producer.poll(Duration::ZERO);
            self.take_reports(done);
            if !self.slab.iter().flatten().any(|f| !f.resolved) || Instant::now() >= until {
                break;
            }
            std::thread::sleep(POLL_SLICE);
        }
    }

    /// Purges librdkafka's queues, collects the purge reports for a short while, then resolves
    /// whatever is left (FIFO included) as `kind`.
    fn purge_all(&mut self, kind: FailKind, done: &mut dyn FnMut(Ack, Vec<u8>)) {
        self.purge_and_collect(PURGE_COLLECT, done);
        for i in 0..self.slab.len() {
            // The value stays in the slot (librdkafka may still read it until the report);
            // the record is acked now, with a fresh empty buffer for the worker's pool.
            let Some((conn, number, is_final, bytes, started)) = self
                .slab
                .get_mut(i)
                .and_then(Option::as_mut)
                .filter(|f| !f.resolved)
                .map(|f| {
                    f.resolved = true;
                    (f.conn, f.number, f.is_final, f.buf.len(), f.started)
                })
            else {
                continue;
            };
            self.count_failure(kind, None);
            self.finish(
                conn,
                number,
                is_final,
                bytes,
                Vec::new(),
                started,
                Outcome::Failed(kind),
                done,
            );
        }
        if kind == FailKind::Shutdown {
            while let Some(w) = self.fifo.pop_front() {
                self.count_failure(kind, None);
                self.fail_waiting(w, kind, done);
            }
        }
    }

    /// With a spool behind, a failure of `kind` hands the record back instead of losing it:
    /// every failure but the record's own fault (too large) and shutdown.
    fn returns(&self, kind: FailKind) -> bool {
        self.returned.is_some()
            && !self.closing
            && matches!(kind, FailKind::Timeout | FailKind::SinkError)
    }

    /// Hands a failed record back for the spool (see [`KafkaSink::return_failures`]).
    fn give_back(&mut self, w: Waiting, kind: FailKind, code: RDKafkaErrorCode) {
        self.unacked_records = self.unacked_records.saturating_sub(1);
        self.unacked_bytes = self.unacked_bytes.saturating_sub(w.rec.value.len());
        self.counters.returned += 1;
        let now = Instant::now();
        match self.return_warn_last {
            Some(t) if now.duration_since(t) < WARN_INTERVAL => {}
            _ => {
                self.return_warn_last = Some(now);
                tracing::warn!(
                    kind = kind.as_str(),
                    error = %code,
                    returned = self.counters.returned,
                    "kafka did not take a record; it goes to the spool instead"
                );
            }
        }
        if let Some(r) = self.returned.as_mut() {
            r.push(w.rec);
        }
    }

    /// Takes back every record librdkafka holds, values intact, and replaces the producer
    /// with a new one. The old producer is purged (queued and in flight) and dropped: it
    /// never talks to a broker again, so neither its purge nor its time-outs can make it bump
    /// its epoch or re-initialise its producer id at a broker that would fence it (tansu
    /// answers such an InitProducerId with PRODUCER_FENCED, which is fatal in librdkafka);
    /// the new producer gets a producer id of its own when it first connects. Once the old
    /// producer is dropped nothing reads the values in the slab, so every record whose purge
    /// report did not arrive is taken back too. Returns the records in per-key record order,
    /// still counted in `unacked`, or `None` (nothing changed) when no new producer can be
    /// made. One log line with `cause`; counted in [`KafkaCounters::rebuilds`].
    fn reclaim(&mut self, cause: &str, done: &mut dyn FnMut(Ack, Vec<u8>)) -> Option<Vec<Waiting>> {
        let fresh = match create_producer(&self.client_config, self.token.clone()) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, cause, "cannot create a new kafka producer");
                return None;
            }
        };
        self.producer
            .context()
            .keep_purged
            .store(true, Ordering::Relaxed);
        self.pulled = Some(Vec::new());
        self.purge_and_collect(PULL_BACK_COLLECT, done);
        let mut back = self.pulled.take().unwrap_or_default();
        // Records the old producer's state failed are produced again too.
        back.append(&mut self.again);
        // Dropping the old producer purges and destroys it; its late reports go to its own,
        // discarded context. The new one starts without the old one's fatal state.
        self.producer = fresh;
        if let Some(w) = &self.waker {
            enable_wake(&self.producer, w);
        }
        self.fatal = None;
        for (i, slot) in self.slab.iter_mut().enumerate() {
            if let Some(f) = slot.take() {
                self.free.push(i);
                if !f.resolved {
                    back.push(f.into_waiting());
                }
            }
        }
        back.sort_by(|a, b| {
            a.rec
                .key
                .cmp(&b.rec.key)
                .then(a.rec.number.cmp(&b.rec.number))
        });
        self.counters.rebuilds += 1;
        tracing::warn!(
            cause,
            records = back.len(),
            restarts = self.counters.rebuilds,
            "kafka producer replaced by a new one"
        );
        Some(back)
    }

    /// After a fatal librdkafka error (the producer accepts nothing more), or records failed
    /// for the producer's own state at the broker: replace the producer and produce
    /// everything it held — and those records — again through the new one, in
    /// per-connection order, ahead of the FIFO (whose records are newer). Nothing is lost
    /// because a producer died; each record keeps its delivery deadline.
    fn rebuild_producer(&mut self, done: &mut dyn FnMut(Ack, Vec<u8>)) -> usize {
        if matches!(self.last_rebuild, Some(t) if t.elapsed() < FATAL_REBUILD_INTERVAL) {
            return 0;
        }
        self.last_rebuild = Some(Instant::now());
        let reason = self.fatal.clone().unwrap_or_else(|| "unknown".into());
        tracing::error!(reason, "kafka producer unusable");
        let cause = "producer unusable (fatal error or unknown producer state)";
        let Some(back) = self.reclaim(cause, done) else {
            return 0;
        };
        for w in back.into_iter().rev() {
            self.fifo.push_front(w);
        }
        self.drain_fifo(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaAuth;
    use rdkafka::bindings::rd_kafka_resp_err_t as RespErr;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::types::RDKafkaApiKey;
    use rdkafka::{Message, Offset, TopicPartitionList};
    use std::sync::atomic::AtomicUsize;

    const TOPIC: &str = "logging-traffic-topic";

    fn kcfg(brokers: &str) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.to_string(),
            topic: TOPIC.to_string(),
            client_id: "test-producer".to_string(),
            extra_properties: Vec::new(),
            auth: KafkaAuth::None,
        }
    }

    fn settings() -> KafkaSettings {
        KafkaSettings {
            max_record_bytes: 1024 * 1024 - 500,
            max_unacked_bytes: 64 * 1024 * 1024,
            delivery_timeout: Duration::from_secs(10),
        }
    }

    fn mock(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
        let m = MockCluster::new(1).unwrap();
        m.create_topic(TOPIC, partitions, 1).unwrap();
        m
    }

    fn conn(slot: u32) -> ConnRef {
        ConnRef {
            worker: 0,
            slot,
            generation: 7,
        }
    }

    fn rec(slot: u32, number: u32, value: Vec<u8>) -> Record {
        Record {
            conn: conn(slot),
            key: Arc::from(format!("conn-{slot}").as_str()),
            number,
            is_final: false,
            value,
        }
    }

    fn value(slot: u32, number: u32) -> Vec<u8> {
        format!("value of {slot}/{number}").into_bytes()
    }

    /// Polls until `n` acks arrived or `limit` passed.
    fn poll_until(sink: &mut KafkaSink, acks: &mut Vec<Ack>, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while acks.len() < n && Instant::now() < deadline {
            sink.poll(Duration::from_millis(20), &mut |a, b| {
                assert!(b.is_empty());
                acks.push(a)
            });
        }
    }

    fn send(sink: &mut KafkaSink, r: Record, acks: &mut Vec<Ack>) {
        sink.send(r, &mut |a, _| acks.push(a));
    }

    struct Got {
        partition: i32,
        key: Vec<u8>,
        value: Vec<u8>,
        has_headers: bool,
    }

    /// Reads `n` records of TOPIC (all partitions, from the beginning), waiting at most `limit`,
    /// then a little longer to catch duplicates.
    fn consume(bootstrap: &str, partitions: i32, n: usize, limit: Duration) -> Vec<Got> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + limit;
        let mut extra_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= deadline || extra_until.is_some_and(|t| now >= t) {
                break;
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(50)) {
                out.push(Got {
                    partition: m.partition(),
                    key: m.key().unwrap_or_default().to_vec(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    has_headers: m.headers().is_some(),
                });
            }
            if out.len() >= n && extra_until.is_none() {
                extra_until = Some(Instant::now() + Duration::from_millis(300));
            }
        }
        out
    }

    /// Makes the sink's producer fatally failed, as librdkafka would on a fatal broker error.
    fn make_fatal(sink: &KafkaSink) {
        let reason = std::ffi::CString::new("test fatal").unwrap();
        // SAFETY: a valid client handle and NUL-terminated reason; test-only librdkafka API.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                sink.producer.client().native_ptr(),
                RespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    fn assert_committed_in_order(acks: &[Ack], slots: &[u32], per_slot: u32) {
        for s in slots {
            let nums: Vec<u32> = acks
                .iter()
                .filter(|a| a.conn == conn(*s))
                .map(|a| {
                    assert_eq!(a.outcome, Outcome::Committed, "{a:?}");
                    a.number
                })
                .collect();
            assert_eq!(nums, (1..=per_slot).collect::<Vec<_>>(), "conn {s}");
        }
    }

    /// Sends records and waits — without polling — for librdkafka's event callback to wake
    /// the sink's queue; returns the wakes seen and the acks a poll then resolves.
    fn wakes_without_polling(with_waker: bool) -> (usize, Vec<Ack>) {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let mut sink = KafkaSink::new(&kcfg(&bs), settings(), None).unwrap();
        let (tx, rx) = crate::handoff::channel();
        if with_waker {
            sink.set_waker(tx.waker());
            // Events queued before the waker (logs) bring no callback: drain them first, as
            // the sink thread's first turn does.
            assert_eq!(
                sink.next_poll_in(),
                Duration::ZERO,
                "first turn: poll at once"
            );
            let mut none = |_: Ack, _: Vec<u8>| panic!("nothing sent yet");
            sink.poll(Duration::ZERO, &mut none);
            while sink.next_poll_in() == Duration::ZERO {
                sink.poll(Duration::ZERO, &mut none);
            }
            assert_eq!(sink.next_poll_in(), Duration::MAX, "nothing to wait for");
        }
        let mut acks = Vec::new();
        let mut wakes = 0;
        for round in 1..=3u32 {
            send(&mut sink, rec(1, round, value(1, round)), &mut acks);
            if with_waker {
                // In flight, nothing parked: sleep until woken (no timer).
                assert_eq!(sink.next_poll_in(), Duration::MAX);
            } else {
                assert_eq!(sink.next_poll_in(), POLL_SLICE);
            }
            // The delivery report lands in librdkafka's queue; only the callback tells us.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut woken = false;
            while !woken && Instant::now() < deadline {
                if let Some(crate::handoff::SinkMsg::Wake) =
                    rx.recv_timeout(Duration::from_millis(50))
                {
                    woken = true;
                }
                if !with_waker && main_queue_len(&sink.producer) > 0 {
                    break; // the report is queued: a wake would have come with it
                }
            }
            wakes += usize::from(woken);
            let before = acks.len();
            while acks.len() == before && Instant::now() < deadline {
                sink.poll(Duration::ZERO, &mut |a, _| acks.push(a));
            }
        }
        (wakes, acks)
    }

    #[test]
    fn librdkafka_wakes_the_sink_for_each_delivery_report() {
        let (wakes, acks) = wakes_without_polling(true);
        assert_eq!(wakes, 3, "one wake per report, without any poll");
        assert_committed_in_order(&acks, &[1], 3);
        // The oracle can fail: without the waker no wake ever comes (the sink would have to
        // poll on a timer, as it does with a spool).
        let (wakes, acks) = wakes_without_polling(false);
        assert_eq!(wakes, 0);
        assert_committed_in_order(&acks, &[1], 3);
    }

    #[test]
    fn delivers_records_with_key_value_and_no_headers_in_order() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let mut sink = KafkaSink::new(&kcfg(&bs), settings(), None).unwrap();
        let mut acks = Vec::new();
        for n in 1..=10 {
            for s in [1, 2] {
                send(&mut sink, rec(s, n, value(s, n)), &mut acks);
            }
        }
        // One record of the full default size (1 MiB - 500) fits message.max.bytes.
        let big: Vec<u8> = (0..settings().max_record_bytes)
            .map(|i| (i % 251) as u8)
            .collect();
        send(&mut sink, rec(3, 1, big.clone()), &mut acks);
        assert!(acks.is_empty(), "nothing resolved before delivery");
        assert_eq!(sink.unacked().0, 21);
        poll_until(&mut sink, &mut acks, 21, Duration::from_secs(10));
        assert_eq!(acks.len(), 21);
        assert_committed_in_order(&acks, &[1, 2], 10);
        assert_eq!(sink.unacked(), (0, 0));
        let c = sink.counters();
        assert_eq!(c.committed, 21);
        assert_eq!(c.failed, [0; 5]);
        let mut d = Vec::new();
        sink.take_commit_durations(&mut d);
        assert_eq!(d.len(), 21);

        let got = consume(&bs, 1, 21, Duration::from_secs(10));
        assert_eq!(got.len(), 21, "exactly once");
        for s in [1u32, 2] {
            let key = format!("conn-{s}").into_bytes();
            let vals: Vec<&Vec<u8>> = got
                .iter()
                .filter(|g| g.key == key)
                .map(|g| &g.value)
                .collect();
            let want: Vec<Vec<u8>> = (1..=10).map(|n| value(s, n)).collect();
            assert_eq!(vals, want.iter().collect::<Vec<_>>());
        }
        assert!(got.iter().any(|g| g.key == b"conn-3" && g.value == big));
        assert!(got.iter().all(|g| !g.has_headers));
    }

    /// Kafka's Java `murmur2` (our own implementation of the published algorithm), to check
    /// that librdkafka's `murmur2_random` places keys where the Java client would.
    fn java_murmur2(data: &[u8]) -> i32 {
        let m: u32 = 0x5bd1_e995;
        let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
        let mut chunks = data.chunks_exact(4);
        for c in &mut chunks {
            let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            k = k.wrapping_mul(m);
            k ^= k >> 24;
            k = k.wrapping_mul(m);
            h = h.wrapping_mul(m);
            h ^= k;
        }
        let rest = chunks.remainder();
        if rest.len() >= 3 {
            h ^= u32::from(rest[2]) << 16;
        }
        if rest.len() >= 2 {
            h ^= u32::from(rest[1]) << 8;
        }
        if !rest.is_empty() {
            h ^= u32::from(rest[0]);
            h = h.wrapping_mul(m);
        }
        h ^= h >> 13;
        h = h.wrapping_mul(m);
        h ^= h >> 15;
        h as i32
    }

    #[test]
    fn one_key_one_partition_in_order_java_placement() {
        const PARTS: i32 = 4;
        let m = mock(PARTS);
        let bs = m.bootstrap_servers();
        let mut sink = KafkaSink::new(&kcfg(&bs), settings(), None).unwrap();
        let mut acks = Vec::new();
        let slots: Vec<u32> = (1..=8).collect();
        for n in 1..=10 {
            for s in &slots {
                send(&mut sink, rec(*s, n, value(*s, n)), &mut acks);
            }
        }
        poll_until(&mut sink, &mut acks, 80, Duration::from_secs(10));
        assert_committed_in_order(&acks, &slots, 10);
        let got = consume(&bs, PARTS, 80, Duration::from_secs(10));
        assert_eq!(got.len(), 80);
        let mut used = std::collections::HashSet::new();
        for s in &slots {
            let key = format!("conn-{s}").into_bytes();
            let mine: Vec<&Got> = got.iter().filter(|g| g.key == key).collect();
            let p = mine[0].partition;
            assert!(
                mine.iter().all(|g| g.partition == p),
                "conn {s} split over partitions"
            );
            assert_eq!(
                p,
                (java_murmur2(&key) & 0x7fff_ffff) % PARTS,
                "Java placement"
            );
            let vals: Vec<Vec<u8>> = mine.iter().map(|g| g.value.clone()).collect();
            assert_eq!(vals, (1..=10).map(|n| value(*s, n)).collect::<Vec<_>>());
            used.insert(p);
        }
        assert!(used.len() > 1, "keys spread over partitions");
    }

    #[test]
    fn broker_down_then_up_delivers_in_order() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let mut sink = KafkaSink::new(&kcfg(&bs), settings(), None).unwrap();
        let mut acks = Vec::new();
        send(&mut sink, rec(1, 1, value(1, 1)), &mut acks);
        poll_until(&mut sink, &mut acks, 1, Duration::from_secs(5));
        assert_eq!(acks.len(), 1);

        m.broker_down(1).unwrap();
        for n in 2..=6 {
            send(&mut sink, rec(1, n, value(1, n)), &mut acks);
        }
        poll_until(&mut sink, &mut acks, 6, Duration::from_millis(1500));
        assert_eq!(
            acks.len(),
            1,
            "nothing acked while the broker is down: {acks:?}"
        );
        m.broker_up(1).unwrap();
        poll_until(&mut sink, &mut acks, 6, Duration::from_secs(8));
        assert_committed_in_order(&acks, &[1], 6);
        let got = consume(&bs, 1, 6, Duration::from_secs(10));
        let vals: Vec<Vec<u8>> = got.into_iter().map(|g| g.value).collect();
        assert_eq!(vals, (1..=6).map(|n| value(1, n)).collect::<Vec<_>>());
    }

    #[test]
    fn ack_latency_follows_broker_rtt() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let mut sink = KafkaSink::new(&kcfg(&bs), settings(), None).unwrap();
        let mut acks = Vec::new();
        send(&mut sink, rec(1, 1, value(1, 1)), &mut acks);
        poll_until(&mut sink, &mut acks, 1, Duration::from_secs(5));
        assert_eq!(acks.len(), 1);
        let mut d = Vec::new();
        sink.take_commit_durations(&mut d);

        m.broker_round_trip_time(1, Duration::from_millis(50))
            .unwrap();
        let t0 = Instant::now();
        send(&mut sink, rec(1, 2, value(1, 2)), &mut acks);
        poll_until(&mut sink, &mut acks, 2, Duration::from_secs(5));
        let took = t0.elapsed();
        assert_eq!(acks.len(), 2);
        assert_eq!(acks[1].outcome, Outcome::Committed);
        assert!(took >= Duration::from_millis(40), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        d.clear();
        sink.take_commit_durations(&mut d);
        assert_eq!(d.len(), 1);
        assert!(d[0] >= Duration::from_millis(40) && d[0] <= took, "{d:?}");
    }

    /// Record 1 committed, then produce errors `errs` injected while records 2..=`n` go out:
    /// every record must be committed once, in order, and be in the topic once.
    fn commit_through_produce_errors(errs: &[RespErr], n: u32) -> KafkaSink {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let mut sink = KafkaSink::new(&kcfg(&bs), settings(), None).unwrap();
        let mut acks = Vec::new();
        send(&mut sink, rec(1, 1, value(1, 1)), &mut acks);
        poll_until(&mut sink, &mut acks, 1, Duration::from_secs(5));
        m.request_errors(RDKafkaApiKey::Produce, errs);
        for i in 2..=n {
            send(&mut sink, rec(1, i, value(1, i)), &mut acks);
        }
        poll_until(&mut sink, &mut acks, n as usize, Duration::from_secs(15));
        assert_committed_in_order(&acks, &[1], n);
        let got = consume(&bs, 1, n as usize, Duration::from_secs(10));
        let vals: Vec<Vec<u8>> = got.into_iter().map(|g| g.value).collect();
        assert_eq!(
            vals,
            (1..=n).map(|i| value(1, i)).collect::<Vec<_>>(),
            "no duplicates"
        );
        sink
    }

    #[test]
    fn retriable_produce_errors_commit_once_in_order() {
        commit_through_produce_errors(&[RespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 4], 10);
    }

    /// A broker that no longer knows the producer answers UNKNOWN_PRODUCER_ID: no record is
    /// lost, in order. (The mock answers so that librdkafka recovers by itself; the path where
    /// it gives up — tansu restarted without its state — and the producer is replaced runs in
    /// tests/integration/kafka_real_faults.rs, row "broker killed and restarted", against tansu.)
    #[test]
    fn unknown_producer_id_loses_nothing() {
        let sink =
            commit_through_produce_errors(&[RespErr::RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID; 2], 6);
        assert_eq!(sink.counters().failed, [0; 5]);
    }

    #[test]
    fn undeliverable_record_times_out() {
        let m = mock(1);
        m.broker_down(1).unwrap();
        let s = KafkaSettings {
            delivery_timeout: Duration::from_secs(1),
            ..settings()
        };
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), s, None).unwrap();
        let mut acks = Vec::new();
        let t0 = Instant::now();
        send(&mut sink, rec(1, 1, value(1, 1)), &mut acks);
        poll_until(&mut sink, &mut acks, 1, Duration::from_secs(5));
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].outcome, Outcome::Failed(FailKind::Timeout));
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(sink.counters().failed_of(FailKind::Timeout), 1);
        assert_eq!(sink.unacked(), (0, 0));
        assert!(!sink.healthy());
    }

    #[test]
    fn too_large_records_fail() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let s = KafkaSettings {
            max_record_bytes: 1000,
            ..settings()
        };
        let mut sink = KafkaSink::new(&kcfg(&bs), s, None).unwrap();
        let mut acks = Vec::new();
        send(&mut sink, rec(1, 1, vec![0; 1001]), &mut acks);
        assert_eq!(acks.len(), 1, "refused at once");
        assert_eq!(acks[0].outcome, Outcome::Failed(FailKind::TooLarge));
        assert_eq!(sink.unacked(), (0, 0));
        send(&mut sink, rec(1, 2, vec![0; 1000]), &mut acks);
        poll_until(&mut sink, &mut acks, 2, Duration::from_secs(5));
        assert_eq!(acks[1].outcome, Outcome::Committed);

        // The broker refuses the next one as too large.
        m.request_errors(
            RDKafkaApiKey::Produce,
            &[RespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        send(&mut sink, rec(1, 3, vec![1; 900]), &mut acks);
        poll_until(&mut sink, &mut acks, 3, Duration::from_secs(5));
        assert_eq!(acks.len(), 3);
        assert_eq!(acks[2].outcome, Outcome::Failed(FailKind::TooLarge));
        assert_eq!(sink.counters().failed_of(FailKind::TooLarge), 2);
        // And the producer goes on.
        send(&mut sink, rec(1, 4, vec![2; 10]), &mut acks);
        poll_until(&mut sink, &mut acks, 4, Duration::from_secs(5));
        assert_eq!(acks[3].outcome, Outcome::Committed);
    }

    #[test]
    fn unacked_byte_bound_overloads() {
        let m = mock(1);
        m.broker_down(1).unwrap();
        let s = KafkaSettings {
            max_record_bytes: 4000,
            max_unacked_bytes: 10_000,
            ..settings()
        };
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), s, None).unwrap();
        let mut acks = Vec::new();
        for n in 1..=3 {
            send(&mut sink, rec(1, n, vec![n as u8; 3000]), &mut acks);
        }
        assert!(acks.is_empty());
        assert_eq!(sink.unacked(), (3, 9000));
        send(&mut sink, rec(2, 1, vec![0; 3000]), &mut acks);
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].conn, conn(2));
        assert_eq!(acks[0].outcome, Outcome::Failed(FailKind::Overloaded));
        send(&mut sink, rec(2, 2, vec![0; 1000]), &mut acks);
        assert_eq!(acks.len(), 1, "still fits exactly");
        assert_eq!(sink.unacked(), (4, 10_000));
        m.broker_up(1).unwrap();
        poll_until(&mut sink, &mut acks, 5, Duration::from_secs(8));
        assert_eq!(acks.len(), 5);
        assert!(
            acks[1..].iter().all(|a| a.outcome == Outcome::Committed),
            "{acks:?}"
        );
        assert_eq!(sink.unacked(), (0, 0));
        assert_eq!(sink.counters().failed_of(FailKind::Overloaded), 1);
    }

    #[test]
    fn close_resolves_everything() {
        // Reachable broker: close waits for the acks.
        let m = mock(1);
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), settings(), None).unwrap();
        let mut acks = Vec::new();
        for n in 1..=5 {
            send(&mut sink, rec(1, n, value(1, n)), &mut acks);
        }
        sink.close(Duration::from_secs(5), &mut |a, _| acks.push(a));
        assert_committed_in_order(&acks, &[1], 5);
        assert_eq!(sink.unacked(), (0, 0));

        // Broker down: close gives up after its timeout and fails the rest as Shutdown.
        let m2 = mock(1);
        m2.broker_down(1).unwrap();
        let mut sink = KafkaSink::new(&kcfg(&m2.bootstrap_servers()), settings(), None).unwrap();
        let mut acks = Vec::new();
        for n in 1..=4 {
            send(&mut sink, rec(1, n, value(1, n)), &mut acks);
        }
        let t0 = Instant::now();
        sink.close(Duration::from_millis(300), &mut |a, _| acks.push(a));
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert_eq!(acks.len(), 4);
        assert!(acks
            .iter()
            .all(|a| a.outcome == Outcome::Failed(FailKind::Shutdown)));
        assert_eq!(sink.unacked(), (0, 0));
        send(&mut sink, rec(1, 5, value(1, 5)), &mut acks);
        assert_eq!(acks[4].outcome, Outcome::Failed(FailKind::Shutdown));
        assert!(!sink.healthy());
    }

    #[test]
    fn full_librdkafka_queue_parks_records_in_fifo_in_order() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let mut cfg = kcfg(&bs);
        cfg.extra_properties = vec![("queue.buffering.max.messages".into(), "4".into())];
        let mut sink = KafkaSink::new(&cfg, settings(), None).unwrap();
        let mut acks = Vec::new();
        for n in 1..=40 {
            send(&mut sink, rec(1 + n % 2, n, value(1, n)), &mut acks);
        }
        assert!(acks.is_empty());
        assert!(sink.fifo.len() >= 30, "fifo {}", sink.fifo.len());
        assert_eq!(sink.unacked().0, 40);
        poll_until(&mut sink, &mut acks, 40, Duration::from_secs(10));
        assert_eq!(acks.len(), 40);
        let nums: Vec<u32> = acks.iter().map(|a| a.number).collect();
        assert_eq!(
            nums,
            (1..=40).collect::<Vec<_>>(),
            "one partition: global order kept"
        );
        assert!(acks.iter().all(|a| a.outcome == Outcome::Committed));
        let got = consume(&bs, 1, 40, Duration::from_secs(10));
        let vals: Vec<Vec<u8>> = got.into_iter().map(|g| g.value).collect();
        assert_eq!(vals, (1..=40).map(|n| value(1, n)).collect::<Vec<_>>());
    }

    #[test]
    fn fatal_error_rebuilds_the_producer() {
        let m = mock(1);
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), settings(), None).unwrap();
        let mut acks = Vec::new();
        send(&mut sink, rec(1, 1, value(1, 1)), &mut acks);
        poll_until(&mut sink, &mut acks, 1, Duration::from_secs(5));
        // Record 2 is held by librdkafka (broker down) when the producer turns fatal.
        m.broker_down(1).unwrap();
        send(&mut sink, rec(1, 2, value(1, 2)), &mut acks);
        sink.poll(Duration::from_millis(50), &mut |a, _| acks.push(a));
        assert_eq!(acks.len(), 1);
        make_fatal(&sink);
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink.counters().rebuilds == 0 && Instant::now() < deadline {
            sink.poll(Duration::from_millis(20), &mut |a, _| acks.push(a));
        }
        assert_eq!(sink.counters().rebuilds, 1);
        // Record 2 did not die with the producer: the new one holds it.
        assert_eq!(acks.len(), 1, "{acks:?}");
        assert_eq!(sink.unacked().0, 1);
        m.broker_up(1).unwrap();
        send(&mut sink, rec(1, 3, value(1, 3)), &mut acks);
        poll_until(&mut sink, &mut acks, 3, Duration::from_secs(8));
        assert_committed_in_order(&acks, &[1], 3);
        assert_eq!(sink.unacked(), (0, 0));
        assert_eq!(sink.counters().failed, [0; 5]);
    }

    #[test]
    fn records_sent_to_a_dead_producer_wait_for_its_successor() {
        let m = mock(1);
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), settings(), None).unwrap();
        let mut acks = Vec::new();
        make_fatal(&sink);
        // The producer is dead before `poll` noticed: these must not fail with it.
        for n in 1..=3 {
            send(&mut sink, rec(1, n, value(1, n)), &mut acks);
        }
        assert!(acks.is_empty(), "{acks:?}");
        poll_until(&mut sink, &mut acks, 3, Duration::from_secs(8));
        assert_committed_in_order(&acks, &[1], 3);
        assert_eq!(sink.counters().rebuilds, 1);
    }

    #[test]
    fn with_a_spool_behind_failures_come_back_instead_of_being_lost() {
        let m = mock(1);
        let mut s = settings();
        s.delivery_timeout = Duration::from_millis(300);
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), s, None).unwrap();
        sink.return_failures();
        m.broker_down(1).unwrap();
        let mut acks = Vec::new();
        for n in 1..=3 {
            send(&mut sink, rec(1, n, value(1, n)), &mut acks);
        }
        let mut back = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while back.len() < 3 && Instant::now() < deadline {
            sink.poll(Duration::from_millis(20), &mut |a, _| acks.push(a));
            sink.take_returned(&mut back);
        }
        assert!(acks.is_empty(), "nothing acked as lost: {acks:?}");
        let got: Vec<(u32, Vec<u8>)> = back.into_iter().map(|r| (r.number, r.value)).collect();
        assert_eq!(
            got,
            (1..=3).map(|n| (n, value(1, n))).collect::<Vec<_>>(),
            "intact, in order"
        );
        assert_eq!(sink.unacked(), (0, 0));
        assert_eq!(sink.counters().returned, 3);
        assert_eq!(sink.counters().failed, [0; 5]);
    }

    #[test]
    fn health_follows_broker_reachability() {
        let m = mock(1);
        let mut sink = KafkaSink::new(&kcfg(&m.bootstrap_servers()), settings(), None).unwrap();
        let wait = |sink: &mut KafkaSink, want: bool| {
            let deadline = Instant::now() + Duration::from_secs(6);
            while sink.healthy() != want && Instant::now() < deadline {
                sink.poll(Duration::from_millis(20), &mut |_, _| {});
            }
            sink.healthy()
        };
        assert!(wait(&mut sink, true), "healthy without any record sent");
        m.broker_down(1).unwrap();
        assert!(!wait(&mut sink, false), "unhealthy once the broker is down");
        m.broker_up(1).unwrap();
        assert!(wait(&mut sink, true), "healthy again");
    }

    struct CountingProvider(AtomicUsize);
    impl TokenProvider for CountingProvider {
        fn token(&self) -> Result<(String, i64, String), String> {
            self.0.fetch_add(1, Ordering::SeqCst);
            let now = rdkafka::util::current_time_millis();
            Ok(("token-value".into(), now + 900_000, "principal".into()))
        }
    }

    #[test]
    fn msk_iam_requires_and_calls_the_token_provider() {
        // Nothing listens there: the sink must start anyway and ask for a token.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = kcfg(&format!("127.0.0.1:{port}"));
        cfg.auth = KafkaAuth::MskIam;
        match KafkaSink::new(&cfg, settings(), None) {
            Err(KafkaSinkError::Config { key, .. }) => assert_eq!(key, "sasl.mechanisms"),
            other => panic!("expected a config error, got {:?}", other.err()),
        }
        let p = Arc::new(CountingProvider(AtomicUsize::new(0)));
        let mut sink = KafkaSink::new(&cfg, settings(), Some(p.clone())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        while p.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            sink.poll(Duration::from_millis(20), &mut |_, _| {});
        }
        assert!(p.0.load(Ordering::SeqCst) >= 1, "token provider called");
        sink.close(Duration::ZERO, &mut |_, _| {});
    }

    fn props(c: &ClientConfig) -> std::collections::BTreeMap<String, String> {
        c.config_map()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn property_mapping_per_auth_type() {
        let s = settings();
        let mut cfg = kcfg("b1:9092,b2:9092");
        cfg.extra_properties = vec![
            ("linger.ms".into(), "7".into()),
            ("security.protocol".into(), "plaintext".into()),
            ("ssl.ca.location".into(), "/ca.pem".into()),
        ];
        let base = props(&producer_config(&cfg, &s, false).unwrap());
        let expect = [
            ("bootstrap.servers", "b1:9092,b2:9092"),
            ("client.id", "test-producer"),
            ("partitioner", "murmur2_random"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("message.max.bytes", "1048576"),
            ("message.timeout.ms", "10000"),
            ("request.timeout.ms", "5000"),
            ("compression.type", "lz4"),
            ("linger.ms", "7"),
            ("security.protocol", "plaintext"),
            ("ssl.ca.location", "/ca.pem"),
        ];
        for (k, v) in expect {
            assert_eq!(base.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!base.contains_key("sasl.mechanisms"));

        cfg.auth = KafkaAuth::Ssl;
        let p = props(&producer_config(&cfg, &s, false).unwrap());
        assert_eq!(
            p["security.protocol"], "ssl",
            "auth wins over the property file"
        );
        assert!(!p.contains_key("sasl.mechanisms"));

        cfg.auth = KafkaAuth::ScramSha512 {
            username: Some("u".into()),
            password: Some("p".into()),
        };
        let c = producer_config(&cfg, &s, false).unwrap();
        assert_eq!(
            c.get("sasl.password"),
            Some("p"),
            "config_map() hides it; get() does not"
        );
        let p = props(&c);
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "u");
        cfg.auth = KafkaAuth::ScramSha512 {
            username: None,
            password: None,
        };
        let p = props(&producer_config(&cfg, &s, false).unwrap());
        assert!(!p.contains_key("sasl.username") && !p.contains_key("sasl.password"));

        cfg.auth = KafkaAuth::MskIam;
        assert!(matches!(
            producer_config(&cfg, &s, false),
            Err(KafkaSinkError::Config { .. })
        ));
        let p = props(&producer_config(&cfg, &s, true).unwrap());
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanisms"], "OAUTHBEARER");

        // Every auth type builds a real (not connecting) producer with the bundled librdkafka.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = kcfg(&format!("127.0.0.1:{port}"));
        for auth in [
            KafkaAuth::None,
            KafkaAuth::Ssl,
            KafkaAuth::ScramSha512 {
                username: Some("u".into()),
                password: Some("p".into()),
            },
        ] {
            cfg.auth = auth;
            let sink = KafkaSink::new(&cfg, settings(), None);
            assert!(sink.is_ok(), "{:?}: {:?}", cfg.auth, sink.err());
        }
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let mut cfg = kcfg("127.0.0.1:1");
        cfg.extra_properties = vec![("no.such.property".into(), "1".into())];
        match KafkaSink::new(&cfg, settings(), None) {
            Err(KafkaSinkError::Config { key, .. }) => assert_eq!(key, "no.such.property"),
            other => panic!("{:?}", other.err()),
        }
        let cfg = kcfg("127.0.0.1:1");
        let s = KafkaSettings {
            max_unacked_bytes: 10,
            ..settings()
        };
        assert!(matches!(
            KafkaSink::new(&cfg, s, None),
            Err(KafkaSinkError::Config { .. })
        ));
        let s = KafkaSettings {
            max_record_bytes: 2_000_000_000,
            max_unacked_bytes: usize::MAX,
            ..settings()
        };
        assert!(matches!(
            KafkaSink::new(&cfg, s, None),
            Err(KafkaSinkError::Config { .. })
        ));
    }
}
