//! `capture-proxy inspect`: reads captured records back, prints them decoded (text or JSON
//! lines), verifies every connection with `capture::verify` and prints a summary. Two inputs:
//! a trace directory, or a Kafka topic (every partition, from the beginning or from given
//! offsets, until each partition's end (librdkafka's partition EOF)). For Kafka the summary is preceded by a
//! per-partition table (records read, first/last offset, end offset).
//!
//! May depend on: `capture::proto` (decoding), `capture::verify` (checks), `sink::file`
//! (reading trace files), `kafka` (the settings every client shares, MSK IAM tokens for an MSK
//! IAM property file, librdkafka logging, the date helper), `config` (`KafkaAuth`), `cli`
//! (`InspectArgs`, `load_kafka_properties`; for `run` / `KafkaInput::from_args` only),
//! `rdkafka` (a `BaseConsumer`: explicit assignment, never commits; its settings live here),
//! `prost`, `base64`, `serde_json`. Off the hot path: allocates freely.
//!
//! Invariants: never panics on any record content (previews escape and truncate bytes,
//! timestamps out of range are printed raw); a record that does not decode is reported (as a
//! record line and as an `Error` problem) and reading goes on; only I/O errors, an unreachable
//! or stalled broker, or a bad input specification stop it. Every wait on Kafka is bounded
//! (`KafkaInput::timeout`). The Kafka reader never commits offsets or joins a group.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use prost::Message as _;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};

use crate::capture::proto::traffic_observation::Capture;
use crate::capture::proto::traffic_stream::Index;
use crate::capture::proto::{Timestamp, TrafficObservation, TrafficStream};
use crate::capture::verify::{Problem, Report, Verifier};
use crate::config::KafkaAuth;
use crate::kafka::date::civil_from_days;
use crate::kafka::{ClientSpec, TokenProvider};
use crate::sink::file::{list_trace_files, read_trace_lines, TraceReadError};

/// Bytes of read/write data shown in a text preview: enough for a request line and the
/// start of the headers, short enough to keep one observation per terminal line.
pub const PREVIEW_BYTES: usize = 80;

/// Bytes of a connectionException message shown in text form: messages are short, but a
/// hostile one must not flood the output.
pub const EXCEPTION_PREVIEW_BYTES: usize = 200;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InspectOptions {
    /// JSON lines instead of text.
    pub json: bool,
    /// Print only the summary, not every record.
    pub summary_only: bool,
}

#[derive(thiserror::Error, Debug)]
pub enum InspectError {
    #[error("cannot list trace directory {}: {source}", .dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no capture-*.log trace files in {}", .dir.display())]
    NoTraceFiles { dir: PathBuf },
    #[error(transparent)]
    Read(#[from] TraceReadError),
    #[error("writing inspect output: {0}")]
    Output(#[source] io::Error),
    #[error("inspect needs exactly one input: --traceDirectory or --kafkaConnection")]
    NoInput,
    #[error("invalid --from-offsets '{spec}': {reason} (expected PARTITION:OFFSET[,...], e.g. 0:15,1:0)")]
    FromOffsets { spec: String, reason: String },
    #[error(transparent)]
    KafkaProperties(#[from] crate::cli::CliError),
    #[error("cannot set up the Kafka consumer: {0}")]
    KafkaClient(String),
    #[error("cannot read topic '{topic}' metadata from {brokers} within {}s (is the broker reachable?): {reason}", .waited.as_secs_f32())]
    KafkaUnreachable {
        brokers: String,
        topic: String,
        waited: Duration,
        reason: String,
    },
    #[error("topic '{topic}' cannot be read: {reason}")]
    KafkaTopic { topic: String, reason: String },
    #[error("reading topic '{topic}' stalled: nothing received for {}s with partitions {partitions:?} not read to their end; last client errors: {last_error}", .waited.as_secs_f32())]
    KafkaStalled {
        topic: String,
        waited: Duration,
        partitions: Vec<i32>,
        last_error: String,
    },
}

/// Entry point of `capture-proxy inspect` (called by `main`): inspects the trace directory or
/// the Kafka topic (`--summary` = summary only) and returns whether the capture verified OK.
pub fn run(args: &crate::cli::InspectArgs, out: &mut dyn Write) -> Result<bool, InspectError> {
    let opts = InspectOptions {
        json: args.json,
        summary_only: args.quiet,
    };
    match (&args.trace_directory, &args.kafka_connection) {
        (Some(dir), None) => Ok(inspect_trace_dir(dir, &opts, out)?.ok()),
        (None, Some(_)) => {
            let input = KafkaInput::from_args(args)?;
            Ok(inspect_kafka(&input, &opts, out)?.ok())
        }
        _ => Err(InspectError::NoInput),
    }
}

/// Reads every trace file of `dir` in order (`list_trace_files`), decodes each line, prints
/// each record (unless `summary_only`) to `out`, verifies, prints the summary and returns the
/// report. Record sources are `<file name>:<line>`.
pub fn inspect_trace_dir(
    dir: &Path,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> Result<Report, InspectError> {
    let files = list_trace_files(dir).map_err(|source| InspectError::ListDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    if files.is_empty() {
        return Err(InspectError::NoTraceFiles {
            dir: dir.to_path_buf(),
        });
    }
    let mut verifier = Verifier::new();
    for file in &files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| file.display().to_string());
        let mut lines = read_trace_lines(file);
        while let Some(item) = lines.next() {
            let source = format!("{name}:{}", lines.line_number());
            match item {
                Ok(bytes) => match TrafficStream::decode(bytes.as_slice()) {
                    Ok(ts) => {
                        if !opts.summary_only {
                            print_record(&ts, &source, opts, out).map_err(InspectError::Output)?;
                        }
                        verifier.add(&ts, bytes.len(), &source, None, None);
                    }
                    Err(e) => {
                        let reason = format!("not a TrafficStream: {e}");
                        if !opts.summary_only {
                            print_undecodable(&source, &reason, opts, out)
                                .map_err(InspectError::Output)?;
                        }
                        verifier.add_undecodable(&source, bytes.len(), &reason);
                    }
                },
                Err(e) if e.is_fatal() => return Err(e.into()),
                Err(e) => {
                    let reason = e.reason();
                    if !opts.summary_only {
                        print_undecodable(&source, &reason, opts, out)
                            .map_err(InspectError::Output)?;
                    }
                    verifier.add_undecodable(&source, 0, &reason);
                }
            }
        }
    }
    let report = verifier.finish();
    print_summary(&report, opts, out).map_err(InspectError::Output)?;
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Kafka input
// ---------------------------------------------------------------------------------------------

/// Default bound on each wait on Kafka (s): the metadata and watermark requests, the MSK IAM
/// token, and any stretch without a record while partitions are not read to their end. Long
/// enough for a TLS + SASL handshake to a remote cluster under load, short enough that an
/// unreachable broker gives a prompt, clear error instead of a hang.
pub const DEFAULT_KAFKA_TIMEOUT: Duration = Duration::from_secs(15);

/// One `poll` of the consumer (ms): short so that the stall bound is checked often; the
/// consumer prefetches, so short polls cost no throughput.
const KAFKA_POLL: Duration = Duration::from_millis(100);

/// One metadata request attempt (ms). Between attempts the consumer's queue is served, so
/// librdkafka's log and error events (connection refused, authentication failed) reach the
/// error message; 500 ms keeps that cheap and the give-up prompt.
const METADATA_ATTEMPT: Duration = Duration::from_millis(500);

/// Most queued events served between two metadata attempts (a bound, not a tuning knob:
/// librdkafka queues a handful of log lines per attempt).
const MAX_EVENTS_SERVED: usize = 64;

/// Distinct client errors quoted in an error message: the cause (e.g. connection refused)
/// and its consequence (all brokers down) without repeating one line per attempt.
const ERRORS_KEPT: usize = 4;

/// Group id the consumer is created with. librdkafka needs one for `assign`; the reader never
/// subscribes, joins the group or commits, so the name only shows in broker logs.
const INSPECT_GROUP_ID: &str = "capture-proxy-inspect";

/// Client id of the consumer (shows in broker logs and quotas).
const INSPECT_CLIENT_ID: &str = "capture-proxy-inspect";

/// Where and how to read a Kafka topic for [`inspect_kafka`].
#[derive(Debug, Clone)]
pub struct KafkaInput {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// `(partition, first offset to read)`; partitions not listed are read from their
    /// beginning (low watermark). An offset below the low watermark starts there.
    pub from_offsets: Vec<(i32, i64)>,
    /// librdkafka client properties (security and authentication) set on the consumer.
    pub properties: Vec<(String, String)>,
    /// Authenticate with AWS MSK IAM (SASL/OAUTHBEARER tokens from the process environment).
    pub msk_iam: bool,
    /// Bound on each wait (see [`DEFAULT_KAFKA_TIMEOUT`]).
    pub timeout: Duration,
}

impl KafkaInput {
    /// Reads the whole topic, no extra properties, default timeout.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> KafkaInput {
        KafkaInput {
            brokers: brokers.into(),
            topic: topic.into(),
            from_offsets: Vec::new(),
            properties: Vec::new(),
            msk_iam: false,
            timeout: DEFAULT_KAFKA_TIMEOUT,
        }
    }

    /// From the `inspect` flags: `--kafkaConnection`, `--kafkaTopic`, `--from-offsets`
    /// (parsed by [`parse_from_offsets`]) and `--kafkaPropertyFile` (loaded with
    /// `cli::load_kafka_properties`; only its `security.*`, `sasl.*` and `ssl.*` settings apply
    /// to a consumer, the producer tuning keys are ignored).
    pub fn from_args(args: &crate::cli::InspectArgs) -> Result<KafkaInput, InspectError> {
        let brokers = args.kafka_connection.clone().ok_or(InspectError::NoInput)?;
        let mut input = KafkaInput::new(brokers, args.kafka_topic.clone());
        if let Some(spec) = &args.from_offsets {
            input.from_offsets = parse_from_offsets(spec)?;
        }
        if let Some(file) = &args.kafka_property_file {
            let props = crate::cli::load_kafka_properties(file)?;
            input.msk_iam = props.msk_iam;
            input.properties = consumer_properties(props.properties);
        }
        Ok(input)
    }
}

/// Keeps the settings that apply to a consumer (connection security and authentication) out
/// of translated producer properties.
fn consumer_properties(props: Vec<(String, String)>) -> Vec<(String, String)> {
    props
        .into_iter()
        .filter(|(k, _)| {
            let keep = ["security.", "sasl.", "ssl."]
                .iter()
                .any(|prefix| k.starts_with(prefix));
            if !keep {
                tracing::debug!(key = %k, "producer property ignored by inspect");
            }
            keep
        })
        .collect()
}

/// Parses `--from-offsets`: comma-separated `PARTITION:OFFSET` pairs (whitespace around the
/// pieces allowed), each partition at most once, both non-negative integers.
pub fn parse_from_offsets(spec: &str) -> Result<Vec<(i32, i64)>, InspectError> {
    let bad = |reason: String| InspectError::FromOffsets {
        spec: spec.to_owned(),
        reason,
    };
    let mut out: Vec<(i32, i64)> = Vec::new();
    for item in spec.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("empty item".into()));
        }
        let Some((p, o)) = item.split_once(':') else {
            return Err(bad(format!("'{item}' has no ':'")));
        };
        let p: i32 = p
            .trim()
            .parse()
            .ok()
            .filter(|p: &i32| *p >= 0)
            .ok_or_else(|| bad(format!("'{}' is not a partition number", p.trim())))?;
        let o: i64 = o
            .trim()
            .parse()
            .ok()
            .filter(|o: &i64| *o >= 0)
            .ok_or_else(|| bad(format!("'{}' is not an offset", o.trim())))?;
        if out.iter().any(|(q, _)| *q == p) {
            return Err(bad(format!("partition {p} given twice")));
        }
        out.push((p, o));
    }
    Ok(out)
}

/// What was read from one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionRecords {
    pub partition: i32,
    /// Records read (decodable or not).
    pub records: u64,
    /// Offsets of the first and last record read.
    pub first_offset: Option<i64>,
    pub last_offset: Option<i64>,
    /// Watermarks when reading started; the reader stops at `end_offset`.
    pub low_watermark: i64,
    pub end_offset: i64,
    /// Offset reading started at.
    pub start_offset: i64,
}

/// The verification report plus the per-partition table of a Kafka read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaReport {
    pub report: Report,
    /// One entry per partition of the topic, by partition number.
    pub partitions: Vec<PartitionRecords>,
}

/// Consumer callbacks: librdkafka logs to `tracing`, remembers the last error for messages,
/// and supplies MSK IAM tokens when configured.
struct InspectCtx {
    token: Option<Arc<dyn TokenProvider>>,
    token_set: AtomicBool,
    /// The latest distinct client errors (at most `ERRORS_KEPT`), for error messages.
    last_errors: Mutex<Vec<String>>,
}

impl InspectCtx {
    /// The distinct errors kept, oldest first, `; `-joined (`none` when there was none).
    fn last_error(&self) -> String {
        let g = match self.last_errors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.is_empty() {
            "none".to_owned()
        } else {
            g.join("; ")
        }
    }

    fn set_last_error(&self, e: String) {
        let mut g = match self.last_errors.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.retain(|x| *x != e);
        if g.len() >= ERRORS_KEPT {
            g.remove(0);
        }
        g.push(e);
    }
}

impl ClientContext for InspectCtx {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, msg: &str) {
        if crate::kafka::is_error(level) {
            // Connection failures are logged from librdkafka's threads while the reader
            // blocks in a metadata request: keep the latest for the error message.
            self.set_last_error(msg.to_owned());
        }
        crate::kafka::log(level, fac, msg);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The same errors reach `poll` (kept there); only trace them here.
        tracing::debug!(error = %error, reason, "kafka consumer error");
    }

    fn generate_oauth_token(
        &self,
        _oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let token = crate::kafka::oauth_token(self.token.as_deref(), |e| {
            self.set_last_error(format!("MSK IAM token: {e}"))
        })?;
        self.token_set.store(true, Ordering::Release);
        Ok(token)
    }
}

impl ConsumerContext for InspectCtx {}

/// The consumer for `input`, created but not yet connected: the consumer's own settings below,
/// and what every client shares (`kafka::ClientSpec`: the property file's security settings,
/// then MSK IAM's, override them).
fn create_consumer(input: &KafkaInput) -> Result<BaseConsumer<InspectCtx>, InspectError> {
    let auth = if input.msk_iam {
        KafkaAuth::MskIam
    } else {
        KafkaAuth::None
    };
    let token = crate::kafka::token_provider(&auth)
        .map_err(|e| InspectError::KafkaClient(format!("msk-iam: {e}")))?;
    let spec = ClientSpec {
        brokers: &input.brokers,
        client_id: INSPECT_CLIENT_ID,
        properties: &input.properties,
        auth: &auth,
    };
    let c = spec
        .client_config(token.is_some(), |c| {
            c.set("group.id", INSPECT_GROUP_ID)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("enable.partition.eof", "true")
                // A start offset already removed by retention reads from the oldest kept record.
                .set("auto.offset.reset", "earliest");
        })
        .map_err(|e| InspectError::KafkaClient(e.to_string()))?;
    let ctx = InspectCtx {
        token,
        token_set: AtomicBool::new(false),
        last_errors: Mutex::new(Vec::new()),
    };
    c.create_with_context(ctx)
        .map_err(|e| InspectError::KafkaClient(e.to_string()))
}

/// Serves queued events (logs, errors) without waiting; remembers the errors among them.
/// `poll` answers `None` both for an empty queue and for an event it handled itself (a log
/// line), so this polls a fixed number of times.
fn serve_events(consumer: &BaseConsumer<InspectCtx>) {
    for _ in 0..MAX_EVENTS_SERVED {
        if let Some(Err(e)) = consumer.poll(Duration::ZERO) {
            consumer.context().set_last_error(e.to_string());
        }
    }
}

/// Reads `input.topic` (see [`KafkaInput`]) up to the high watermarks read at start, prints
/// each record (source `partition/offset`, unless `summary_only`), verifies them (the Kafka
/// key must equal the connectionId, a connection's records must share one partition), prints
/// the per-partition table and the summary, and returns the verification report.
pub fn inspect_kafka(
    input: &KafkaInput,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> Result<Report, InspectError> {
    inspect_kafka_detailed(input, opts, out).map(|k| k.report)
}

/// [`inspect_kafka`], also returning the per-partition table.
pub fn inspect_kafka_detailed(
    input: &KafkaInput,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> Result<KafkaReport, InspectError> {
    let consumer = create_consumer(input)?;
    let topic = input.topic.as_str();

    // Connecting (token, metadata) shares one deadline; the watermark requests another.
    let deadline = Instant::now() + input.timeout;
    if input.msk_iam {
        // The token callback runs from `poll`: serve it before the blocking metadata call.
        while !consumer.context().token_set.load(Ordering::Acquire) && Instant::now() < deadline {
            let _ = consumer.poll(KAFKA_POLL);
        }
    }

    let unreachable = |reason: String| InspectError::KafkaUnreachable {
        brokers: input.brokers.clone(),
        topic: topic.to_owned(),
        waited: input.timeout,
        reason,
    };
    let metadata = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match consumer.fetch_metadata(Some(topic), METADATA_ATTEMPT.min(left)) {
            Ok(m) => break m,
            Err(e) => {
                serve_events(&consumer);
                if Instant::now() >= deadline {
                    return Err(unreachable(format!(
                        "{e} (last client errors: {})",
                        consumer.context().last_error()
                    )));
                }
            }
        }
    };
    let topic_err = |reason: String| InspectError::KafkaTopic {
        topic: topic.to_owned(),
        reason,
    };
    let Some(tmeta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(topic_err("not in the broker's metadata".into()));
    };
    if let Some(e) = tmeta.error() {
        return Err(topic_err(RDKafkaErrorCode::from(e).to_string()));
    }
    let mut partition_ids: Vec<i32> = tmeta.partitions().iter().map(|p| p.id()).collect();
    partition_ids.sort_unstable();
    if partition_ids.is_empty() {
        return Err(topic_err("the topic has no partitions".into()));
    }
    if let Some((p, _)) = input
        .from_offsets
        .iter()
        .find(|(p, _)| partition_ids.binary_search(p).is_err())
    {
        return Err(InspectError::FromOffsets {
            spec: format_offsets(&input.from_offsets),
            reason: format!(
                "topic '{topic}' has no partition {p} (it has {})",
                partition_ids.len()
            ),
        });
    }

    // Partition → its table row; the read range is [start_offset, end_offset).
    let mut parts: BTreeMap<i32, PartitionRecords> = BTreeMap::new();
    let deadline = Instant::now() + input.timeout;
    for &p in &partition_ids {
        let left = deadline.saturating_duration_since(Instant::now());
        let (low, high) = consumer
            .fetch_watermarks(topic, p, left.max(METADATA_ATTEMPT))
            .map_err(|e| unreachable(format!("watermarks of partition {p}: {e}")))?;
        let start = input
            .from_offsets
            .iter()
            .find(|(q, _)| *q == p)
            .map_or(low, |(_, o)| (*o).max(low));
        parts.insert(
            p,
            PartitionRecords {
                partition: p,
                low_watermark: low,
                end_offset: high,
                start_offset: start,
                ..PartitionRecords::default()
            },
        );
    }

    // Every partition is read until librdkafka reports partition EOF: the watermarks read at
    // start are only a lower bound (some Kafka-compatible brokers, e.g. tansu 0.6, report a
    // high watermark below the real end after multi-record batches).
    let mut pending: Vec<i32> = parts.values().map(|r| r.partition).collect();
    let mut verifier = Verifier::new();
    if !pending.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for p in &pending {
            if let Some(r) = parts.get(p) {
                tpl.add_partition_offset(topic, *p, Offset::Offset(r.start_offset))
                    .map_err(|e| InspectError::KafkaClient(e.to_string()))?;
            }
        }
        consumer
            .assign(&tpl)
            .map_err(|e| InspectError::KafkaClient(format!("assign: {e}")))?;
    }
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        if last_progress.elapsed() >= input.timeout {
            return Err(InspectError::KafkaStalled {
                topic: topic.to_owned(),
                waited: input.timeout,
                partitions: pending,
                last_error: consumer.context().last_error(),
            });
        }
        let Some(item) = consumer.poll(KAFKA_POLL) else {
            continue;
        };
        let msg = match item {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                // The fetch reached the partition's current end, which is at or past the end
                // read at start: nothing more of it to read.
                last_progress = Instant::now();
                pending.retain(|q| *q != p);
                continue;
            }
            Err(e) => {
                // Transient (a broker going away and back); the stall bound ends the wait.
                tracing::debug!(error = %e, "kafka consume error");
                consumer.context().set_last_error(e.to_string());
                continue;
            }
        };
        last_progress = Instant::now();
        let (p, offset) = (msg.partition(), msg.offset());
        let Some(row) = parts.get_mut(&p) else {
            continue;
        };
        if offset < row.start_offset {
            continue;
        }
        row.end_offset = row.end_offset.max(offset.saturating_add(1));
        row.records = row.records.saturating_add(1);
        row.first_offset.get_or_insert(offset);
        row.last_offset = Some(offset);
        let source = format!("{p}/{offset}");
        let Some(value) = msg.payload() else {
            let reason = "record has no value";
            if !opts.summary_only {
                print_undecodable(&source, reason, opts, out).map_err(InspectError::Output)?;
            }
            verifier.add_undecodable(&source, 0, reason);
            continue;
        };
        match TrafficStream::decode(value) {
            Ok(ts) => {
                if !opts.summary_only {
                    print_record(&ts, &source, opts, out).map_err(InspectError::Output)?;
                }
                // A record without a key is checked as an empty key (it differs).
                let key = msg.key().unwrap_or(&[]);
                verifier.add(&ts, value.len(), &source, Some(key), Some(p));
            }
            Err(e) => {
                let reason = format!("not a TrafficStream: {e}");
                if !opts.summary_only {
                    print_undecodable(&source, &reason, opts, out).map_err(InspectError::Output)?;
                }
                verifier.add_undecodable(&source, value.len(), &reason);
            }
        }
    }
    let report = verifier.finish();
    let partitions: Vec<PartitionRecords> = parts.into_values().collect();
    print_partitions(topic, &partitions, opts, out).map_err(InspectError::Output)?;
    print_summary(&report, opts, out).map_err(InspectError::Output)?;
    Ok(KafkaReport { report, partitions })
}

fn format_offsets(offsets: &[(i32, i64)]) -> String {
    offsets
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints the per-partition table (like the migration console's `kafka
/// describe-topic-records`, plus what this run read). Text:
///
/// ```text
/// topic logging-traffic-topic: 3 partitions, 12 records read
/// partition    records  first offset   last offset    end offset
///         0          5             0             4             5
///         1          0             -             -             0
/// ```
///
/// JSON: one line `{"type":"partitions","topic":…,"partitions":[{"partition","records",
/// "firstOffset","lastOffset","startOffset","lowWatermark","endOffset"}]}` (offsets of a
/// partition with no record read are null).
pub fn print_partitions(
    topic: &str,
    partitions: &[PartitionRecords],
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    let total: u64 = partitions.iter().map(|p| p.records).sum();
    if opts.json {
        let rows: Vec<Value> = partitions
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "records": p.records,
                    "firstOffset": p.first_offset,
                    "lastOffset": p.last_offset,
                    "startOffset": p.start_offset,
                    "lowWatermark": p.low_watermark,
                    "endOffset": p.end_offset,
                })
            })
            .collect();
        return write_json_line(
            out,
            &json!({"type": "partitions", "topic": topic, "records": total, "partitions": rows}),
        );
    }
    writeln!(
        out,
        "topic {topic}: {} partitions, {total} records read",
        partitions.len()
    )?;
    writeln!(
        out,
        "{:>9} {:>10} {:>13} {:>13} {:>13}",
        "partition", "records", "first offset", "last offset", "end offset"
    )?;
    let opt = |o: Option<i64>| o.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for p in partitions {
        writeln!(
            out,
            "{:>9} {:>10} {:>13} {:>13} {:>13}",
            p.partition,
            p.records,
            opt(p.first_offset),
            opt(p.last_offset),
            p.end_offset
        )?;
    }
    Ok(())
}

/// Prints a record that could not be decoded: `<source> UNDECODABLE: <reason>` or a JSON
/// object `{"type":"undecodable","source":…,"error":…}`.
pub fn print_undecodable(
    source: &str,
    reason: &str,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    if opts.json {
        write_json_line(
            out,
            &json!({"type": "undecodable", "source": source, "error": reason}),
        )
    } else {
        writeln!(out, "{source} UNDECODABLE: {reason}")
    }
}

/// Prints one decoded record.
///
/// Text: a header line `<source> conn=<id> node=<id> #N[ final][ prior=P][ unterminated]`
/// then one indented line per observation, `<ts> <kind> <details>`; data as `<len>B "<escaped
/// preview of the first PREVIEW_BYTES bytes>"` (`…` when cut).
///
/// JSON: one object per line: `type` = `record`, `source`, `connectionId`, `nodeId`, `number`
/// or `numberOfThisLastChunk`, `priorRequestsReceived` and
/// `lastObservationWasUnterminatedRead` only when present, and `observations`: an array of
/// `{ts, type, …}` with data as base64 `data` plus `length`.
pub fn print_record(
    ts: &TrafficStream,
    source: &str,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    if opts.json {
        return write_json_line(out, &record_json(ts, source));
    }
    write!(
        out,
        "{source} conn={} node={} ",
        escape(ts.connection_id.as_bytes(), EXCEPTION_PREVIEW_BYTES),
        escape(ts.node_id.as_bytes(), EXCEPTION_PREVIEW_BYTES)
    )?;
    match ts.index {
        Some(Index::Number(n)) => write!(out, "#{n}")?,
        Some(Index::NumberOfThisLastChunk(n)) => write!(out, "#{n} final")?,
        None => write!(out, "#? (no index)")?,
    }
    if let Some(p) = ts.prior_requests_received {
        write!(out, " prior={p}")?;
    }
    match ts.last_observation_was_unterminated_read {
        Some(true) => write!(out, " unterminated")?,
        Some(false) => write!(out, " unterminated=false")?,
        None => {}
    }
    writeln!(out)?;
    for obs in &ts.sub_stream {
        print_observation_text(obs, out)?;
    }
    Ok(())
}

fn print_observation_text(obs: &TrafficObservation, out: &mut dyn Write) -> io::Result<()> {
    write!(out, "  {} ", format_ts(obs.ts))?;
    let Some(cap) = obs.capture.as_ref() else {
        return writeln!(out, "(no capture member)");
    };
    match cap {
        Capture::Read(d) => data_line(out, "read", &d.data),
        Capture::ReadSegment(d) => data_line(out, "readSegment", &d.data),
        Capture::Write(d) => data_line(out, "write", &d.data),
        Capture::WriteSegment(d) => data_line(out, "writeSegment", &d.data),
        Capture::EndOfMessageIndicator(e) => writeln!(
            out,
            "endOfMessage firstLine={} headers={}",
            opt_i32(e.first_line_byte_length),
            opt_i32(e.headers_byte_length)
        ),
        Capture::ConnectionException(e) => writeln!(
            out,
            "connectionException \"{}\"",
            escape(e.message.as_bytes(), EXCEPTION_PREVIEW_BYTES)
        ),
        Capture::RequestReleasedDownstream(r) => {
            writeln!(out, "requestReleasedDownstream timedOut={}", r.timed_out)
        }
        Capture::SegmentEnd(_) => writeln!(out, "segmentEnd"),
        Capture::RequestDropped(_) => writeln!(out, "requestDropped"),
        Capture::Close(_) => writeln!(out, "close"),
        Capture::Connect(_) => writeln!(out, "connect"),
        Capture::Bind(_) => writeln!(out, "bind"),
        Capture::Disconnect(_) => writeln!(out, "disconnect"),
    }
}

fn data_line(out: &mut dyn Write, kind: &str, data: &[u8]) -> io::Result<()> {
    writeln!(
        out,
        "{kind} {}B \"{}\"",
        data.len(),
        escape(data, PREVIEW_BYTES)
    )
}

fn opt_i32(v: Option<i32>) -> String {
    v.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// Escapes the first `limit` bytes for a one-line preview: printable ASCII as is (`"` and `\`
/// backslashed), `\r` `\n` `\t`, other bytes as `\xNN`; `…` when cut.
pub fn escape(data: &[u8], limit: usize) -> String {
    let mut s = String::with_capacity(data.len().min(limit).saturating_add(8));
    for &b in data.iter().take(limit) {
        match b {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(char::from(b)),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                s.push_str("\\x");
                for nibble in [b >> 4, b & 0x0f] {
                    if let Some(&h) = HEX.get(usize::from(nibble)) {
                        s.push(char::from(h));
                    }
                }
            }
        }
    }
    if data.len() > limit {
        s.push('…');
    }
    s
}

/// RFC 3339 UTC with nanoseconds (`2024-05-01T12:00:00.000000123Z`); `-` when absent; raw
/// `<seconds>s+<nanos>ns` when nanos are out of range.
pub fn format_ts(ts: Option<Timestamp>) -> String {
    let Some(t) = ts else {
        return "-".to_owned();
    };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return format!("{}s+{}ns", t.seconds, t.nanos);
    }
    let days = t.seconds.div_euclid(86_400);
    let secs_of_day = t.seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
        t.nanos
    )
}

fn record_json(ts: &TrafficStream, source: &str) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "record".into());
    m.insert("source".into(), source.into());
    m.insert("connectionId".into(), ts.connection_id.as_str().into());
    m.insert("nodeId".into(), ts.node_id.as_str().into());
    match ts.index {
        Some(Index::Number(n)) => {
            m.insert("number".into(), n.into());
        }
        Some(Index::NumberOfThisLastChunk(n)) => {
            m.insert("numberOfThisLastChunk".into(), n.into());
        }
        None => {}
    }
    if let Some(p) = ts.prior_requests_received {
        m.insert("priorRequestsReceived".into(), p.into());
    }
    if let Some(u) = ts.last_observation_was_unterminated_read {
        m.insert("lastObservationWasUnterminatedRead".into(), u.into());
    }
    let observations: Vec<Value> = ts.sub_stream.iter().map(observation_json).collect();
    m.insert("observations".into(), Value::Array(observations));
    Value::Object(m)
}

fn observation_json(obs: &TrafficObservation) -> Value {
    let mut m = Map::new();
    m.insert(
        "ts".into(),
        match obs.ts {
            Some(_) => format_ts(obs.ts).into(),
            None => Value::Null,
        },
    );
    let data = |m: &mut Map<String, Value>, kind: &str, d: &[u8]| {
        m.insert("type".into(), kind.into());
        m.insert("length".into(), d.len().into());
        m.insert("data".into(), STANDARD.encode(d).into());
    };
    match obs.capture.as_ref() {
        None => {
            m.insert("type".into(), Value::Null);
        }
        Some(Capture::Read(d)) => data(&mut m, "read", &d.data),
        Some(Capture::ReadSegment(d)) => data(&mut m, "readSegment", &d.data),
        Some(Capture::Write(d)) => data(&mut m, "write", &d.data),
        Some(Capture::WriteSegment(d)) => data(&mut m, "writeSegment", &d.data),
        Some(Capture::EndOfMessageIndicator(e)) => {
            m.insert("type".into(), "endOfMessageIndicator".into());
            if let Some(f) = e.first_line_byte_length {
                m.insert("firstLineByteLength".into(), f.into());
            }
            if let Some(h) = e.headers_byte_length {
                m.insert("headersByteLength".into(), h.into());
            }
        }
        Some(Capture::ConnectionException(e)) => {
            m.insert("type".into(), "connectionException".into());
            m.insert("message".into(), e.message.as_str().into());
        }
        Some(Capture::RequestReleasedDownstream(r)) => {
            m.insert("type".into(), "requestReleasedDownstream".into());
            m.insert("timedOut".into(), r.timed_out.into());
        }
        Some(Capture::SegmentEnd(_)) => {
            m.insert("type".into(), "segmentEnd".into());
        }
        Some(Capture::RequestDropped(_)) => {
            m.insert("type".into(), "requestDropped".into());
        }
        Some(Capture::Close(_)) => {
            m.insert("type".into(), "close".into());
        }
        Some(Capture::Connect(_)) => {
            m.insert("type".into(), "connect".into());
        }
        Some(Capture::Bind(_)) => {
            m.insert("type".into(), "bind".into());
        }
        Some(Capture::Disconnect(_)) => {
            m.insert("type".into(), "disconnect".into());
        }
    }
    Value::Object(m)
}

fn write_json_line(out: &mut dyn Write, v: &Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, v).map_err(io::Error::from)?;
    out.write_all(b"\n")
}

/// Prints the summary. Text: counts, one line per kept problem, then `OK` or
/// `FAILED (<errors> problems)` as the last line. JSON: one object line with
/// `"type":"summary"`, the counts, `problems` (array of objects) and `ok`.
pub fn print_summary(
    report: &Report,
    opts: &InspectOptions,
    out: &mut dyn Write,
) -> io::Result<()> {
    let r = report;
    if opts.json {
        let problems: Vec<Value> = r.problems.iter().map(problem_json).collect();
        return write_json_line(
            out,
            &json!({
                "type": "summary",
                "records": r.records,
                "bytes": r.bytes,
                "undecodableRecords": r.undecodable_records,
                "connections": r.connections,
                "completeConnections": r.complete_connections,
                "incompleteConnections": r.incomplete_connections,
                "observations": r.observations,
                "requests": r.requests,
                "droppedRequests": r.dropped_requests,
                "exceptions": r.exceptions,
                "duplicateRecords": r.duplicate_records,
                "readsBytes": r.reads_bytes,
                "writesBytes": r.writes_bytes,
                "errors": r.errors,
                "warnings": r.warnings,
                "notes": r.notes,
                "problems": problems,
                "problemsOmitted": r.problems_omitted,
                "ok": r.ok(),
            }),
        );
    }
    writeln!(
        out,
        "records: {} ({} bytes), undecodable: {}",
        r.records, r.bytes, r.undecodable_records
    )?;
    writeln!(
        out,
        "connections: {} (complete {}, incomplete {})",
        r.connections, r.complete_connections, r.incomplete_connections
    )?;
    writeln!(
        out,
        "requests: {} (dropped {})",
        r.requests, r.dropped_requests
    )?;
    writeln!(out, "exceptions: {}", r.exceptions)?;
    if r.duplicate_records > 0 {
        writeln!(
            out,
            "duplicate records (identical copies, e.g. re-sent after a broker failed before \
             acknowledging): {}",
            r.duplicate_records
        )?;
    }
    writeln!(
        out,
        "read bytes: {}, write bytes: {}",
        r.reads_bytes, r.writes_bytes
    )?;
    writeln!(
        out,
        "problems: {} errors, {} warnings, {} notes",
        r.errors, r.warnings, r.notes
    )?;
    for p in &r.problems {
        writeln!(out, "  {p}")?;
    }
    if r.problems_omitted > 0 {
        writeln!(out, "  ... and {} more not shown", r.problems_omitted)?;
    }
    if r.ok() {
        writeln!(out, "OK")
    } else {
        writeln!(out, "FAILED ({} problems)", r.errors)
    }
}

fn problem_json(p: &Problem) -> Value {
    json!({
        "severity": p.severity.as_str(),
        "nodeId": p.node_id,
        "connectionId": p.connection_id,
        "source": p.source,
        "message": p.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::proto::{
        traffic_observation::Capture as C, Empty, EndOfMessageIndication, ReadObservation,
        WriteObservation,
    };
    use crate::sink::file::FileSink;

    const GET: &str = "GET /index HTTP/1.1\r\nHost: a\r\n\r\n";
    const RESP: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";

    fn o(s: i64, c: C) -> TrafficObservation {
        TrafficObservation {
            ts: Some(Timestamp {
                seconds: 1_700_000_000 + s,
                nanos: 5,
            }),
            capture: Some(c),
        }
    }

    fn conn_records(conn: &str, requests: i32) -> Vec<TrafficStream> {
        // One record per request (read, EOM, write), then a final [close].
        let mut out = Vec::new();
        for i in 0..requests {
            out.push(TrafficStream {
                connection_id: conn.into(),
                node_id: "node-a".into(),
                prior_requests_received: if i > 0 { Some(i) } else { None },
                last_observation_was_unterminated_read: None,
                sub_stream: vec![
                    o(i.into(), C::Read(ReadObservation { data: GET.into() })),
                    o(
                        i.into(),
                        C::EndOfMessageIndicator(EndOfMessageIndication {
                            first_line_byte_length: Some(19),
                            headers_byte_length: Some(7),
                        }),
                    ),
                    o(i.into(), C::Write(WriteObservation { data: RESP.into() })),
                ],
                index: Some(Index::Number(i + 1)),
            });
        }
        out.push(TrafficStream {
            connection_id: conn.into(),
            node_id: "node-a".into(),
            prior_requests_received: if requests > 0 { Some(requests) } else { None },
            last_observation_was_unterminated_read: None,
            sub_stream: vec![o(99, C::Close(Empty {}))],
            index: Some(Index::NumberOfThisLastChunk(requests + 1)),
        });
        out
    }

    /// Interleaves c1 (3 requests) and c2 (close only) and writes them with small files.
    fn write_capture(dir: &Path, skip: Option<usize>) -> usize {
        let mut recs = conn_records("c1", 3);
        recs.insert(1, conn_records("c2", 0).remove(0));
        let mut sink = FileSink::open(dir, "node-a", 400).unwrap();
        for (i, r) in recs.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            sink.append(&r.encode_to_vec()).unwrap();
        }
        sink.sync().unwrap();
        assert!(sink.files_rotated() > 0, "test wants several files");
        recs.len()
    }

    fn inspect_dir(dir: &Path, opts: InspectOptions) -> (Report, String) {
        let mut out = Vec::new();
        let r = inspect_trace_dir(dir, &opts, &mut out).unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn text_output_and_ok() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let (r, text) = inspect_dir(tmp.path(), InspectOptions::default());
        assert!(r.ok(), "{text}");
        assert!(
            text.contains("capture-node-a-000001.log:1 conn=c1 node=node-a #1\n"),
            "{text}"
        );
        assert!(text.contains(" conn=c2 node=node-a #1 final\n"), "{text}");
        assert!(
            text.contains(" conn=c1 node=node-a #4 final prior=3\n"),
            "{text}"
        );
        assert!(text.contains(
            "  2023-11-14T22:13:20.000000005Z read 32B \"GET /index HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n\"\n"
        ));
        assert!(text.contains(" endOfMessage firstLine=19 headers=7\n"));
        assert!(text.contains(" write 38B \"HTTP/1.1 200 OK\\r\\n"));
        assert!(text.contains(" close\n"));
        assert!(text.contains("records: 5 ("), "{text}");
        assert!(text.contains("connections: 2 (complete 2, incomplete 0)"));
        assert!(text.contains("requests: 3 (dropped 0)"));
        assert!(text.contains("read bytes: 96, write bytes: 114"));
        assert!(text.contains("problems: 0 errors, 0 warnings, 0 notes"));
        assert!(text.ends_with("\nOK\n"), "{text}");
        assert_eq!(r.records, 5);
        assert_eq!(r.requests, 3);
    }

    #[test]
    fn summary_only_prints_no_records() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let opts = InspectOptions {
            json: false,
            summary_only: true,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        assert!(!text.contains("conn="), "{text}");
        assert!(text.starts_with("records: 5"), "{text}");
        assert!(text.ends_with("OK\n"));
    }

    #[test]
    fn json_lines_parse() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let opts = InspectOptions {
            json: true,
            summary_only: false,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 6);
        let first = &lines[0];
        assert_eq!(first["type"], "record");
        assert_eq!(first["connectionId"], "c1");
        assert_eq!(first["number"], 1);
        assert!(first.get("priorRequestsReceived").is_none());
        let obs = first["observations"].as_array().unwrap();
        assert_eq!(obs[0]["type"], "read");
        assert_eq!(obs[0]["length"], GET.len());
        assert_eq!(
            STANDARD.decode(obs[0]["data"].as_str().unwrap()).unwrap(),
            GET.as_bytes()
        );
        assert_eq!(obs[0]["ts"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(obs[1]["type"], "endOfMessageIndicator");
        assert_eq!(obs[1]["firstLineByteLength"], 19);
        let final_c1 = &lines[4];
        assert_eq!(final_c1["numberOfThisLastChunk"], 4);
        assert_eq!(final_c1["priorRequestsReceived"], 3);
        let summary = &lines[5];
        assert_eq!(summary["type"], "summary");
        assert_eq!(summary["records"], 5);
        assert_eq!(summary["connections"], 2);
        assert_eq!(summary["completeConnections"], 2);
        assert_eq!(summary["requests"], 3);
        assert_eq!(summary["ok"], true);
        assert_eq!(summary["problems"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn missing_record_fails() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), Some(2)); // c1 #2
        let (r, text) = inspect_dir(tmp.path(), InspectOptions::default());
        assert!(!r.ok());
        assert!(text.contains("gap: record #2 missing"), "{text}");
        assert!(text.contains("connections: 2 (complete 1, incomplete 1)"));
        assert!(text.ends_with("\nFAILED (1 problems)\n"), "{text}");

        let opts = InspectOptions {
            json: true,
            summary_only: true,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["problems"][0]["connectionId"], "c1");
        assert_eq!(v["problems"][0]["severity"], "error");
    }

    #[test]
    fn corrupt_lines_reported_and_reading_continues() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        // A file of the same node sorting after the others: bad base64, then base64 of bytes
        // that are not a TrafficStream.
        let bad = tmp.path().join("capture-node-a-000999.log");
        std::fs::write(
            &bad,
            format!("@@@\n{}\n", STANDARD.encode([0xff, 0xff, 0xff])),
        )
        .unwrap();
        let (r, text) = inspect_dir(tmp.path(), InspectOptions::default());
        assert!(!r.ok());
        assert_eq!(r.undecodable_records, 2);
        assert_eq!(r.records, 5);
        assert!(
            text.contains("capture-node-a-000999.log:1 UNDECODABLE: not valid base64"),
            "{text}"
        );
        assert!(text.contains("capture-node-a-000999.log:2 UNDECODABLE: not a TrafficStream"));
        assert!(text.contains("at capture-node-a-000999.log:1: undecodable record"));
        assert!(text.ends_with("FAILED (2 problems)\n"));
        let opts = InspectOptions {
            json: true,
            summary_only: false,
        };
        let (_, text) = inspect_dir(tmp.path(), opts);
        for l in text.lines() {
            let _: Value = serde_json::from_str(l).unwrap();
        }
    }

    #[test]
    fn run_entry_point() {
        let tmp = tempfile::tempdir().unwrap();
        write_capture(tmp.path(), None);
        let mut args = crate::cli::InspectArgs {
            trace_directory: Some(tmp.path().to_path_buf()),
            kafka_connection: None,
            kafka_topic: "logging-traffic-topic".into(),
            json: false,
            from_offsets: None,
            kafka_property_file: None,
            quiet: true,
        };
        let mut out = Vec::new();
        assert!(run(&args, &mut out).unwrap());
        assert!(String::from_utf8(out).unwrap().starts_with("records: 5"));
        args.kafka_connection = Some("127.0.0.1:9092".into());
        assert!(matches!(
            run(&args, &mut Vec::new()),
            Err(InspectError::NoInput)
        ));
        args.trace_directory = None;
        // Kafka input: a bad --from-offsets is refused before any connection is tried.
        args.from_offsets = Some("0:1,x".into());
        assert!(matches!(
            run(&args, &mut Vec::new()),
            Err(InspectError::FromOffsets { .. })
        ));
        args.from_offsets = Some("0:1, 2:7".into());
        let input = KafkaInput::from_args(&args).unwrap();
        assert_eq!(input.brokers, "127.0.0.1:9092");
        assert_eq!(input.topic, "logging-traffic-topic");
        assert_eq!(input.from_offsets, vec![(0, 1), (2, 7)]);
        assert!(input.properties.is_empty() && !input.msk_iam);
        assert_eq!(input.timeout, DEFAULT_KAFKA_TIMEOUT);
    }

    #[test]
    fn empty_or_missing_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut out = Vec::new();
        let e = inspect_trace_dir(tmp.path(), &InspectOptions::default(), &mut out).unwrap_err();
        assert!(matches!(e, InspectError::NoTraceFiles { .. }), "{e}");
        let e = inspect_trace_dir(
            &tmp.path().join("nope"),
            &InspectOptions::default(),
            &mut out,
        )
        .unwrap_err();
        assert!(matches!(e, InspectError::ListDir { .. }), "{e}");
    }

    #[test]
    fn print_record_text_details() {
        let ts = TrafficStream {
            connection_id: "c\"9".into(),
            node_id: "n".into(),
            prior_requests_received: Some(2),
            last_observation_was_unterminated_read: Some(true),
            sub_stream: vec![
                TrafficObservation {
                    ts: None,
                    capture: None,
                },
                o(
                    0,
                    C::ReadSegment(crate::capture::proto::SegmentObservation {
                        data: vec![b'a'; 100],
                    }),
                ),
                o(0, C::SegmentEnd(Empty {})),
                o(
                    0,
                    C::EndOfMessageIndicator(EndOfMessageIndication {
                        first_line_byte_length: Some(3),
                        headers_byte_length: None,
                    }),
                ),
            ],
            index: None,
        };
        let mut out = Vec::new();
        print_record(&ts, "src:1", &InspectOptions::default(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let want = format!(
            "src:1 conn=c\\\"9 node=n #? (no index) prior=2 unterminated\n\
             \x20 - (no capture member)\n\
             \x20 2023-11-14T22:13:20.000000005Z readSegment 100B \"{}…\"\n\
             \x20 2023-11-14T22:13:20.000000005Z segmentEnd\n\
             \x20 2023-11-14T22:13:20.000000005Z endOfMessage firstLine=3 headers=?\n",
            "a".repeat(80)
        );
        assert_eq!(text, want);
    }

    #[test]
    fn escape_bytes() {
        assert_eq!(
            escape(b"a\"b\\c\r\n\t\x00\xff~", 80),
            "a\\\"b\\\\c\\r\\n\\t\\x00\\xff~"
        );
        assert_eq!(escape(b"abcdef", 3), "abc…");
        assert_eq!(escape(b"abc", 3), "abc");
        assert_eq!(escape(b"", 3), "");
    }

    #[test]
    fn timestamps() {
        let f = |seconds, nanos| format_ts(Some(Timestamp { seconds, nanos }));
        assert_eq!(f(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(f(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(
            f(951_868_799, 999_999_999),
            "2000-02-29T23:59:59.999999999Z"
        );
        assert_eq!(f(-1, 0), "1969-12-31T23:59:59.000000000Z");
        assert_eq!(f(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(f(1, -1), "1s+-1ns");
        assert_eq!(format_ts(None), "-");
        // extremes do not panic
        let _ = f(i64::MAX, 0);
        let _ = f(i64::MIN, 0);
    }

    // ---- Kafka input -------------------------------------------------------------------

    use rdkafka::bindings::rd_kafka_resp_err_t as RespErr;
    use rdkafka::config::ClientConfig;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
    use rdkafka::types::RDKafkaApiKey;

    const TOPIC: &str = "logging-traffic-topic";

    fn mock(partitions: i32) -> MockCluster<'static, DefaultProducerContext> {
        let m = MockCluster::new(1).unwrap();
        m.create_topic(TOPIC, partitions, 1).unwrap();
        m
    }

    /// Produces `(partition, key, value)` records (in order) and waits for all of them.
    /// `(partition, key, value)` of a record to produce.
    type ToProduce = (i32, Option<&'static [u8]>, Option<Vec<u8>>);

    fn produce(bootstrap: &str, recs: &[ToProduce]) {
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        for (part, key, value) in recs {
            let mut r: BaseRecord<'_, [u8], Vec<u8>> = BaseRecord::to(TOPIC).partition(*part);
            if let Some(k) = key {
                r = r.key(*k);
            }
            if let Some(v) = value {
                r = r.payload(v);
            }
            p.send(r).map_err(|(e, _)| e).unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
    }

    fn input(bootstrap: &str) -> KafkaInput {
        KafkaInput {
            timeout: Duration::from_secs(5),
            ..KafkaInput::new(bootstrap, TOPIC)
        }
    }

    fn read(input: &KafkaInput, opts: InspectOptions) -> (KafkaReport, String) {
        let mut out = Vec::new();
        let r = inspect_kafka_detailed(input, &opts, &mut out).unwrap();
        (r, String::from_utf8(out).unwrap())
    }

    /// c1 (3 requests, 4 records) on partition 2, c2 (1 record) on partition 0.
    fn two_conns() -> Vec<ToProduce> {
        let mut v = Vec::new();
        for r in conn_records("c1", 3) {
            v.push((2, Some(&b"c1"[..]), Some(r.encode_to_vec())));
        }
        for r in conn_records("c2", 0) {
            v.insert(1, (0, Some(&b"c2"[..]), Some(r.encode_to_vec())));
        }
        v
    }

    #[test]
    fn kafka_reads_every_partition_and_verifies() {
        let m = mock(3);
        let bs = m.bootstrap_servers();
        produce(&bs, &two_conns());
        let (k, text) = read(&input(&bs), InspectOptions::default());
        assert!(k.report.ok(), "{text}");
        assert_eq!(k.report.records, 5);
        assert_eq!(k.report.connections, 2);
        assert_eq!(k.report.complete_connections, 2);
        assert_eq!(k.report.requests, 3);
        type Row = (i32, u64, Option<i64>, Option<i64>, i64);
        let rows: Vec<Row> = k
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition,
                    p.records,
                    p.first_offset,
                    p.last_offset,
                    p.end_offset,
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (0, 1, Some(0), Some(0), 1),
                (1, 0, None, None, 0),
                (2, 4, Some(0), Some(3), 4)
            ]
        );
        assert!(text.contains("2/0 conn=c1 node=node-a #1\n"), "{text}");
        assert!(text.contains("2/3 conn=c1 node=node-a #4 final prior=3\n"));
        assert!(text.contains("0/0 conn=c2 node=node-a #1 final\n"));
        assert!(text.contains("topic logging-traffic-topic: 3 partitions, 5 records read\n"));
        assert!(text.contains(
            "partition    records  first offset   last offset    end offset\n\
             \x20       0          1             0             0             1\n\
             \x20       1          0             -             -             0\n\
             \x20       2          4             0             3             4\n"
        ));
        assert!(text.ends_with("\nOK\n"), "{text}");
        // Records come before the table, the table before the summary.
        let table = text.find("topic logging-traffic-topic:").unwrap();
        assert!(text.rfind(" conn=").unwrap() < table);
        assert!(table < text.find("records: 5 (").unwrap());

        let opts = InspectOptions {
            json: true,
            summary_only: false,
        };
        let (_, text) = read(&input(&bs), opts);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 7);
        assert!(lines[..5].iter().all(|l| l["type"] == "record"));
        let parts = &lines[5];
        assert_eq!(parts["type"], "partitions");
        assert_eq!(parts["records"], 5);
        assert_eq!(parts["partitions"][2]["lastOffset"], 3);
        assert_eq!(parts["partitions"][1]["firstOffset"], Value::Null);
        assert_eq!(parts["partitions"][1]["endOffset"], 0);
        assert_eq!(lines[6]["type"], "summary");
        assert_eq!(lines[6]["ok"], true);

        let opts = InspectOptions {
            json: false,
            summary_only: true,
        };
        let (_, text) = read(&input(&bs), opts);
        assert!(!text.contains("conn="), "{text}");
        assert!(text.starts_with("topic logging-traffic-topic: 3 partitions"));
    }

    #[test]
    fn kafka_key_and_partition_are_checked() {
        let m = mock(2);
        let bs = m.bootstrap_servers();
        let recs = conn_records("c1", 1);
        produce(
            &bs,
            &[
                (0, Some(&b"c1"[..]), Some(recs[0].encode_to_vec())),
                // the final record on another partition and with a foreign key
                (1, Some(&b"zz"[..]), Some(recs[1].encode_to_vec())),
                // no key at all
                (0, None, Some(conn_records("c3", 0)[0].encode_to_vec())),
            ],
        );
        let (k, text) = read(&input(&bs), InspectOptions::default());
        assert!(!k.report.ok());
        assert!(text.contains("differs from the connectionId"), "{text}");
        // Partitions are read interleaved: either record may come first.
        assert!(
            text.contains(", earlier records of the connection on "),
            "{text}"
        );
        assert!(text.contains("conn=c3"), "{text}");
        assert_eq!(k.report.records, 3);
    }

    #[test]
    fn kafka_undecodable_and_empty_values_are_reported() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        let good = conn_records("c2", 0)[0].encode_to_vec();
        produce(
            &bs,
            &[
                (0, Some(&b"x"[..]), Some(vec![0xff, 0xff, 0xff])),
                (0, Some(&b"y"[..]), None),
                (0, Some(&b"c2"[..]), Some(good)),
            ],
        );
        let (k, text) = read(&input(&bs), InspectOptions::default());
        assert_eq!(k.report.undecodable_records, 2);
        assert_eq!(k.report.records, 1);
        assert_eq!(k.report.complete_connections, 1);
        assert!(
            text.contains("0/0 UNDECODABLE: not a TrafficStream"),
            "{text}"
        );
        assert!(
            text.contains("0/1 UNDECODABLE: record has no value"),
            "{text}"
        );
        assert!(text.ends_with("FAILED (2 problems)\n"), "{text}");
        assert_eq!(k.partitions[0].records, 3);
    }

    #[test]
    fn kafka_from_offsets_and_empty_topic() {
        let m = mock(2);
        let bs = m.bootstrap_servers();
        // Nothing produced: every partition is already at its end.
        let (k, text) = read(&input(&bs), InspectOptions::default());
        assert!(k.report.ok(), "{text}");
        assert_eq!(k.report.records, 0);
        assert!(k.partitions.iter().all(|p| p.records == 0));

        let recs: Vec<_> = conn_records("c1", 3)
            .iter()
            .map(|r| (1, Some(&b"c1"[..]), Some(r.encode_to_vec())))
            .collect();
        produce(&bs, &recs);
        let mut i = input(&bs);
        i.from_offsets = vec![(1, 2), (0, 99)];
        let (k, text) = read(&i, InspectOptions::default());
        assert_eq!(k.report.records, 2, "{text}");
        assert_eq!(k.partitions[1].first_offset, Some(2));
        assert_eq!(k.partitions[1].start_offset, 2);
        assert_eq!(k.partitions[0].start_offset, 99);
        assert!(
            text.contains("1/2 conn=c1 node=node-a #3 prior=2\n"),
            "{text}"
        );
        // Records 1 and 2 were skipped: the connection shows a gap.
        assert_eq!(k.report.incomplete_connections, 1);

        i.from_offsets = vec![(5, 0)];
        let e = inspect_kafka(&i, &InspectOptions::default(), &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string().contains("has no partition 5 (it has 2)"),
            "{e}"
        );
    }

    #[test]
    fn kafka_unreachable_broker_is_a_prompt_error() {
        // Nothing listens on a port of a dropped listener.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut i = input(&format!("127.0.0.1:{port}"));
        i.timeout = Duration::from_millis(1500);
        let t0 = Instant::now();
        let e = inspect_kafka(&i, &InspectOptions::default(), &mut Vec::new()).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(matches!(e, InspectError::KafkaUnreachable { .. }), "{e}");
        assert!(e.to_string().contains("is the broker reachable?"), "{e}");
        assert!(e.to_string().contains("Connection refused"), "{e}");
    }

    #[test]
    fn kafka_failing_fetches_stall_with_an_error() {
        let m = mock(1);
        let bs = m.bootstrap_servers();
        produce(
            &bs,
            &[(
                0,
                Some(&b"c2"[..]),
                Some(conn_records("c2", 0)[0].encode_to_vec()),
            )],
        );
        // Metadata and watermarks answer; every fetch fails.
        m.request_errors(
            RDKafkaApiKey::Fetch,
            &[RespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 500],
        );
        let mut i = input(&bs);
        i.timeout = Duration::from_millis(1500);
        let t0 = Instant::now();
        let e = inspect_kafka(&i, &InspectOptions::default(), &mut Vec::new()).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());
        assert!(
            matches!(&e, InspectError::KafkaStalled { partitions, .. } if partitions == &[0]),
            "{e}"
        );
        m.clear_request_errors(RDKafkaApiKey::Fetch);
        let (k, _) = read(&input(&bs), InspectOptions::default());
        assert_eq!(k.report.records, 1);
        assert!(k.report.ok());
    }

    #[test]
    fn from_offsets_spec() {
        assert_eq!(parse_from_offsets("0:15").unwrap(), vec![(0, 15)]);
        assert_eq!(
            parse_from_offsets(" 0:15 , 1:0,2 : 3").unwrap(),
            vec![(0, 15), (1, 0), (2, 3)]
        );
        for bad in [
            "", "0", "0:", ":1", "a:1", "0:b", "-1:0", "0:-5", "0:1,", "0:1,0:2",
        ] {
            let e = parse_from_offsets(bad).unwrap_err();
            assert!(matches!(e, InspectError::FromOffsets { .. }), "{bad}: {e}");
        }
        let e = parse_from_offsets("0:1,0:2").unwrap_err();
        assert!(e.to_string().contains("partition 0 given twice"), "{e}");
    }

    #[test]
    fn only_security_properties_reach_the_consumer() {
        let kept = consumer_properties(vec![
            ("acks".into(), "all".into()),
            ("security.protocol".into(), "sasl_ssl".into()),
            ("sasl.mechanisms".into(), "SCRAM-SHA-512".into()),
            ("linger.ms".into(), "5".into()),
            ("ssl.ca.location".into(), "/x.pem".into()),
            ("message.max.bytes".into(), "2000000".into()),
        ]);
        let keys: Vec<&str> = kept.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            vec!["security.protocol", "sasl.mechanisms", "ssl.ca.location"]
        );
    }
}
