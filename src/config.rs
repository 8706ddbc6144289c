//! Validated, typed configuration. Built once at start-up by `cli` (from flags, the
//! environment and inline JSON); the data path only reads these values and never parses.
//! Also owns every flag's default value (the `DEFAULT_*` constants at the end), so `cli` and
//! tests read the same ones.
//!
//! May depend on: `http1` (the rule types `SetHeader` and `SuppressConfig`, which it owns).
//! Invariant: every `Config` that exists has passed validation — addresses resolved, regexes
//! compiled, files readable, mutually exclusive options resolved into enums.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where captured records go. Exactly one is configured (cli.md: "exactly one of the three").
#[derive(Debug, Clone)]
pub enum SinkConfig {
    /// `--noCapture`: forward only, capture nothing.
    None,
    /// `--traceDirectory DIR`: base64 lines, rotated files.
    File(FileSinkConfig),
    /// `--kafkaConnection`: the Kafka producer thread (issue 3).
    Kafka(KafkaConfig),
}

#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    pub dir: PathBuf,
    /// `--trace-file-max-bytes` (ours): rotate the current file once it reaches this many bytes.
    /// Default 256 MiB: large enough that rotation (an fsync) is rare, small enough to ship.
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub client_id: String,
    /// Producer properties from `--kafkaPropertyFile`, already translated to librdkafka keys.
    pub extra_properties: Vec<(String, String)>,
    pub auth: KafkaAuth,
}

#[derive(Clone, PartialEq, Eq)]
pub enum KafkaAuth {
    None,
    Ssl,
    ScramSha512 {
        username: Option<String>,
        password: Option<String>,
    },
    MskIam,
}

impl std::fmt::Debug for KafkaAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KafkaAuth::None => f.write_str("none"),
            KafkaAuth::Ssl => f.write_str("ssl"),
            KafkaAuth::ScramSha512 { username, .. } => {
                write!(f, "scram-sha-512(user={:?}, password=****)", username)
            }
            KafkaAuth::MskIam => f.write_str("msk-iam"),
        }
    }
}

/// `--destinationUri`, parsed: scheme decides TLS, default ports 80/443, path ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub tls: bool,
    /// Host as written in the URI (name or IP literal, without brackets); used for SNI.
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring, falling back to epoll with one warning.
    Auto,
    Uring,
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Send the held request on; count and log the lost capture.
    Forward,
    /// Answer 503 and do not forward.
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The `--setHeader` entries and the `--suppressCaptureFor*` rules: `http1` owns these types
/// (it applies them); a `Config` holds them.
pub use crate::http1::{SetHeader, SuppressConfig};

/// Client-facing TLS (issue 4). Paths are validated at start-up.
#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    pub cert_chain_file: PathBuf,
    pub key_file: PathBuf,
    pub client_trust: Option<ClientTrust>,
    pub require_client_auth: bool,
}

#[derive(Clone)]
pub enum ClientTrust {
    File(PathBuf),
    /// The PEM text read from the named environment variable.
    EnvPem {
        var: String,
        pem: String,
    },
}

impl std::fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientTrust::File(p) => write!(f, "file:{}", p.display()),
            ClientTrust::EnvPem { var, .. } => write!(f, "env:{var}"),
        }
    }
}

/// Everything the runtime needs. Built by `cli::parse` and validated there.
#[derive(Debug, Clone)]
pub struct Config {
    pub destination: Destination,
    /// Bind addresses for the client-facing listener (`--listen-address` + `--listenPort`).
    /// The default is `0.0.0.0:PORT` and, when the host has IPv6, `[::]:PORT` (v6-only).
    pub listen: Vec<SocketAddr>,
    pub sink: SinkConfig,
    /// `--maxTrafficBufferSize`: most bytes in one TrafficStream before the 500-byte Kafka
    /// overhead is taken off; records are at most `max_traffic_buffer_size - 500` bytes.
    pub max_traffic_buffer_size: usize,
    /// `--numThreads`: 0 = one worker per allowed CPU.
    pub num_threads: usize,
    /// `--cpu-list`: CPUs to pin workers to; `None` = all allowed CPUs.
    pub cpu_list: Option<Vec<usize>>,
    pub io_driver: IoDriver,
    /// `--admin-listen`; `None` when disabled (`--admin-listen off`).
    pub admin_listen: Option<SocketAddr>,
    /// `--capture-flush-interval`: flush a connection's unflushed observations after this long.
    pub capture_flush_interval: Duration,
    /// `--kafka-ack-timeout`: most time a mutating request is held waiting for its record.
    pub kafka_ack_timeout: Duration,
    pub capture_failure_policy: FailurePolicy,
    /// `--max-connections`: beyond this many open client connections per process, new ones
    /// wait in the accept backlog. `None` = unlimited.
    pub max_connections: Option<usize>,
    /// `--client-idle-timeout`: close a client connection idle (no request in progress, no
    /// response outstanding) this long. `None` = off.
    pub client_idle_timeout: Option<Duration>,
    /// `--request-head-timeout`: most time from a request's first byte to its complete head.
    pub request_head_timeout: Option<Duration>,
    /// `--request-body-timeout`: most time without a byte from the client while a request
    /// is in progress.
    pub request_body_timeout: Option<Duration>,
    /// `--source-max-initial-line-length`: the source's `http.max_initial_line_length`
    /// (bytes); longer request lines are refused (431) rather than forwarded.
    pub source_max_initial_line_length: u64,
    /// `--source-max-header-size`: the source's `http.max_header_size` (bytes).
    pub source_max_header_size: u64,
    /// `--tcp-keepalive`: idle time before TCP keepalive probes, both sides. `None` = off.
    pub tcp_keepalive: Option<Duration>,
    /// `--drain-timeout` (ours): on SIGTERM, most time to let in-flight exchanges finish.
    pub drain_timeout: Duration,
    /// `--handover-timeout` (ours): on SIGUSR2, most time the new process may take to report
    /// ready before the handover is abandoned.
    pub handover_timeout: Duration,
    pub log_format: LogFormat,
    pub suppress: SuppressConfig,
    pub set_headers: Vec<SetHeader>,
    pub server_tls: Option<ServerTlsConfig>,
    pub insecure_destination: bool,
    pub destination_ca_file: Option<PathBuf>,
    pub destination_pool_size: usize,
    pub destination_pool_timeout: Duration,
    pub spool_dir: Option<PathBuf>,
    /// `--spool-max-bytes`: most bytes of spool files; beyond it records Kafka cannot take
    /// fail (the failure policy applies).
    pub spool_max_bytes: u64,
    /// `--kafka-max-unacked-bytes`: most bytes of records handed to Kafka and not yet
    /// acknowledged; at the bound a reachable Kafka slows the capture (back-pressure), an
    /// unreachable one fails records as overloaded (or the spool takes them).
    pub kafka_max_unacked_bytes: u64,
    /// `--otelMetricsCollectorEndpoint`: the OTLP/gRPC collector metrics are exported to;
    /// `None` when the flag is unset (no export).
    pub otel_metrics: Option<OtelMetricsConfig>,
    /// `--otel-metrics-export-interval`: time between exports (the Java proxy's is 1 s); the
    /// same value as `otel_metrics.export_interval`, kept when there is no endpoint.
    pub otel_metrics_export_interval: Duration,
    /// `--otelTraceCollectorEndpoint`, as given: accepted, but no spans are produced (one
    /// warning at start).
    pub otel_trace_endpoint: Option<String>,
}

/// OTLP metrics export (`--otelMetricsCollectorEndpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelMetricsConfig {
    /// The collector: `http://` (h2c) or `https://` (TLS, ALPN h2); `http://` is assumed when
    /// the flag has no scheme, as the Java proxy does. Default ports 80/443; the path is ignored.
    pub endpoint: Destination,
    /// `--otel-metrics-export-interval`: time between exports (the Java proxy's is 1 s).
    pub export_interval: Duration,
}

impl Config {
    /// Largest serialized TrafficStream this process writes (capture-format.md: "A record's
    /// value is at most --maxTrafficBufferSize minus 500 bytes").
    pub(crate) fn max_record_bytes(&self) -> usize {
        self.max_traffic_buffer_size
            .saturating_sub(KAFKA_MESSAGE_OVERHEAD_BYTES)
    }

    /// A configuration for tests and benches: forward to `destination`, listen on
    /// 127.0.0.1:0, one worker, no admin endpoint, given sink, everything else at its default
    /// (the `DEFAULT_*` constants below, which the flags also use).
    pub fn for_test(destination: SocketAddr, sink: SinkConfig) -> Config {
        Config {
            destination: Destination {
                tls: false,
                host: destination.ip().to_string(),
                port: destination.port(),
            },
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            sink,
            max_traffic_buffer_size: DEFAULT_MAX_TRAFFIC_BUFFER_SIZE,
            // Not DEFAULT_NUM_THREADS (one per CPU): tests want one worker.
            num_threads: 1,
            cpu_list: None,
            io_driver: DEFAULT_IO_DRIVER,
            // Not DEFAULT_ADMIN_LISTEN: parallel tests cannot share its port.
            admin_listen: None,
            capture_flush_interval: DEFAULT_CAPTURE_FLUSH_INTERVAL,
            kafka_ack_timeout: DEFAULT_KAFKA_ACK_TIMEOUT,
            capture_failure_policy: DEFAULT_CAPTURE_FAILURE_POLICY,
            max_connections: None,
            client_idle_timeout: Some(DEFAULT_CLIENT_IDLE_TIMEOUT),
            request_head_timeout: Some(DEFAULT_REQUEST_HEAD_TIMEOUT),
            request_body_timeout: Some(DEFAULT_REQUEST_BODY_TIMEOUT),
            source_max_initial_line_length: DEFAULT_SOURCE_MAX_INITIAL_LINE_LENGTH,
            source_max_header_size: DEFAULT_SOURCE_MAX_HEADER_SIZE,
            tcp_keepalive: Some(DEFAULT_TCP_KEEPALIVE),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            handover_timeout: DEFAULT_HANDOVER_TIMEOUT,
            log_format: DEFAULT_LOG_FORMAT,
            suppress: SuppressConfig::default(),
            set_headers: Vec::new(),
            server_tls: None,
            insecure_destination: false,
            destination_ca_file: None,
            destination_pool_size: DEFAULT_DESTINATION_CONNECTION_POOL_SIZE,
            destination_pool_timeout: DEFAULT_DESTINATION_CONNECTION_POOL_TIMEOUT,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            kafka_max_unacked_bytes: DEFAULT_KAFKA_MAX_UNACKED_BYTES,
            otel_metrics: None,
            otel_metrics_export_interval: DEFAULT_OTEL_METRICS_EXPORT_INTERVAL,
            otel_trace_endpoint: None,
        }
    }
}

/// Bytes reserved for the Kafka record envelope (the Java proxy's `KAFKA_MESSAGE_OVERHEAD_BYTES`).
pub(crate) const KAFKA_MESSAGE_OVERHEAD_BYTES: usize = 500;

// ---------------------------------------------------------------------------------------------
// Flag defaults: the one table. Each is named `DEFAULT_` + the flag's environment name
// without `CAPTURE_PROXY_`: `--tcp-keepalive` → `CAPTURE_PROXY_TCP_KEEPALIVE` →
// `DEFAULT_TCP_KEEPALIVE`. The flag table (`cli/defs.rs`) shows each in `--help`,
// `cli/build.rs` falls back to it when the flag is unset, and `Config::for_test` starts from
// it. Flags whose unset state is "off" or "none" (a bool, an `Option`) have no constant:
// unset is that state.
// ---------------------------------------------------------------------------------------------

/// `--kafkaTopic` (Java default).
pub(crate) const DEFAULT_KAFKA_TOPIC: &str = "logging-traffic-topic";
/// `--kafkaClientId` (Java default).
pub(crate) const DEFAULT_KAFKA_CLIENT_ID: &str = "HttpCaptureProxyProducer";
/// `--maxTrafficBufferSize` (Java default, 1 MiB).
pub(crate) const DEFAULT_MAX_TRAFFIC_BUFFER_SIZE: usize = 1024 * 1024;
/// `--numThreads`: 0 = one worker per allowed CPU.
pub(crate) const DEFAULT_NUM_THREADS: usize = 0;
/// `--destinationConnectionPoolSize`: no pre-connected sockets (Java default).
pub(crate) const DEFAULT_DESTINATION_CONNECTION_POOL_SIZE: usize = 0;
/// `--destinationConnectionPoolTimeout` (Java `PT30S`).
pub(crate) const DEFAULT_DESTINATION_CONNECTION_POOL_TIMEOUT: Duration = Duration::from_secs(30);
/// `--trace-file-max-bytes`: 256 MiB (see `FileSinkConfig::max_file_bytes`).
pub(crate) const DEFAULT_TRACE_FILE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// `--io-driver`: io_uring, falling back to epoll.
pub(crate) const DEFAULT_IO_DRIVER: IoDriver = IoDriver::Auto;
/// `--otel-metrics-export-interval`: the Java proxy's periodic metric reader interval (1 s).
pub(crate) const DEFAULT_OTEL_METRICS_EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// `--admin-listen`: loopback only, so metrics are not exposed by accident.
pub(crate) const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9901);
/// `--capture-flush-interval` (cli.md).
pub(crate) const DEFAULT_CAPTURE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// `--kafka-ack-timeout`: the Java producer's `delivery.timeout.ms` (10 s).
pub(crate) const DEFAULT_KAFKA_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// `--capture-failure-policy`: a lost capture never blocks traffic.
pub(crate) const DEFAULT_CAPTURE_FAILURE_POLICY: FailurePolicy = FailurePolicy::Forward;
/// `--spool-max-bytes`: 1 GiB, about 100 s of capture at 10 MB/s — longer than a typical
/// broker failover — while small next to the disks proxies run on.
pub(crate) const DEFAULT_SPOOL_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// `--kafka-max-unacked-bytes`: 256 MiB of records handed to Kafka and not yet acknowledged:
/// about 25 s of capture at 10 MB/s, enough to ride out a broker failover; the bound keeps
/// memory from growing without limit behind a slow or unreachable broker.
pub(crate) const DEFAULT_KAFKA_MAX_UNACKED_BYTES: u64 = 256 * 1024 * 1024;
/// `--client-idle-timeout`: 10 minutes between requests. Above the idle timeouts of the load
/// balancers in front (ALB 60 s by default, NLB 350 s), so the balancer, not the proxy, closes
/// an idle connection it might reuse; frees the connections of clients that vanished without
/// a FIN.
pub(crate) const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// `--request-head-timeout` (cli.md).
pub(crate) const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// `--request-body-timeout`: 60 s without a byte in the middle of a request (head or body)
/// ends the connection (408). Long enough for any client that is still sending (a stalled TCP
/// flow retransmits within seconds), short enough that a client stuck mid-body cannot pin its
/// buffers for long (issue 13: 5 000 of them held 410 MB).
pub(crate) const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--source-max-initial-line-length`: 4 KiB, Elasticsearch's and OpenSearch's
/// `http.max_initial_line_length` default (their Netty decoder's limit).
pub(crate) const DEFAULT_SOURCE_MAX_INITIAL_LINE_LENGTH: u64 = 4 * 1024;
/// Default `--source-max-header-size`: 8 KiB, Elasticsearch's and OpenSearch's
/// `http.max_header_size` default.
pub(crate) const DEFAULT_SOURCE_MAX_HEADER_SIZE: u64 = 8 * 1024;
/// `--tcp-keepalive`: well under the 350 s after which load balancers drop idle flows.
pub(crate) const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// `--drain-timeout` on SIGTERM.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// `--handover-timeout`: start-up takes well under a second, a Kafka sink's first metadata a
/// few; a minute is far beyond either.
pub(crate) const DEFAULT_HANDOVER_TIMEOUT: Duration = Duration::from_secs(60);
/// `--log-format`.
pub(crate) const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Text;
