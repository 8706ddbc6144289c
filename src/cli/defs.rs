//! The flag table: one row per flag gives its names (camelCase Java name, kebab-case
//! spelling, aliases), how it takes a value, its `--help` group, metavar, help text and typed
//! default. Parsing, environment names, JSON keys, `--help` and `--check-config` all read it.
//!
//! Owns: [`FLAGS`], the [`Flag`] identities, the name conversions (`kebab`, `env_name`) and
//! [`FlagDefault`], through which `--help` shows the same `config::DEFAULT_*` constants the
//! build step falls back to.
//!
//! May depend on: `crate::config` (the default constants and their types), `super::values`
//! (to show a typed default). Nothing else in `cli` — everything else depends on this.
//!
//! Invariant: every [`Flag`] has exactly one row, every spelling names one row (tested), and
//! a row's default is never spelled as text when a typed constant exists.

use std::net::SocketAddr;
use std::time::Duration;

use super::values::{choice_name, fmt_duration, fmt_iso_duration, fmt_size, AuthType};
use crate::config::{
    FailurePolicy, IoDriver, LogFormat, DEFAULT_ADMIN_LISTEN, DEFAULT_CAPTURE_FAILURE_POLICY,
    DEFAULT_CAPTURE_FLUSH_INTERVAL, DEFAULT_CLIENT_IDLE_TIMEOUT,
    DEFAULT_DESTINATION_CONNECTION_POOL_SIZE, DEFAULT_DESTINATION_CONNECTION_POOL_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDOVER_TIMEOUT, DEFAULT_IO_DRIVER, DEFAULT_KAFKA_ACK_TIMEOUT,
    DEFAULT_KAFKA_CLIENT_ID, DEFAULT_KAFKA_MAX_UNACKED_BYTES, DEFAULT_KAFKA_TOPIC,
    DEFAULT_LOG_FORMAT, DEFAULT_MAX_TRAFFIC_BUFFER_SIZE, DEFAULT_NUM_THREADS,
    DEFAULT_OTEL_METRICS_EXPORT_INTERVAL, DEFAULT_REQUEST_BODY_TIMEOUT,
    DEFAULT_REQUEST_HEAD_TIMEOUT, DEFAULT_SOURCE_MAX_HEADER_SIZE,
    DEFAULT_SOURCE_MAX_INITIAL_LINE_LENGTH, DEFAULT_SPOOL_MAX_BYTES, DEFAULT_TCP_KEEPALIVE,
    DEFAULT_TRACE_FILE_MAX_BYTES,
};

/// Prefix of every environment variable we read (the Java `EnvVarParameterPuller` prefix).
const ENV_PREFIX: &str = "CAPTURE_PROXY_";

/// Identity of a flag; the table below gives each one its names, kind and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flag {
    DestinationUri,
    ListenPort,
    KafkaConnection,
    TraceDirectory,
    NoCapture,
    KafkaTopic,
    KafkaClientId,
    KafkaPropertyFile,
    KafkaAuthType,
    EnableMskAuth,
    KafkaUserName,
    KafkaPassword,
    KafkaListenerName,
    KafkaSecretName,
    MaxTrafficBufferSize,
    NumThreads,
    DestinationConnectionPoolSize,
    DestinationConnectionPoolTimeout,
    InsecureDestination,
    SslCertChainFile,
    SslKeyFile,
    SslTrustCertFile,
    SslTrustCertPemEnvVar,
    RequireClientAuth,
    SetHeader,
    SuppressCaptureForHeaderMatch,
    SuppressCaptureForMethod,
    SuppressCaptureForUriPath,
    SuppressMethodAndPath,
    OtelMetricsCollectorEndpoint,
    OtelTraceCollectorEndpoint,
    ListenAddress,
    DestinationCaFile,
    CpuList,
    IoDriver,
    AdminListen,
    CaptureFlushInterval,
    KafkaAckTimeout,
    CaptureFailurePolicy,
    SpoolDir,
    SpoolMaxBytes,
    KafkaMaxUnackedBytes,
    MaxConnections,
    ClientIdleTimeout,
    RequestHeadTimeout,
    RequestBodyTimeout,
    SourceMaxInitialLineLength,
    SourceMaxHeaderSize,
    TcpKeepalive,
    DrainTimeout,
    HandoverTimeout,
    TraceFileMaxBytes,
    LogFormat,
    OtelMetricsExportInterval,
    CheckConfig,
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// No value; `--flag=true|false` also accepted.
    Bool,
    /// One value: `--flag v` or `--flag=v`.
    Value,
    /// Repeatable pair: `--flag name value`, or one `"name: value"` argument.
    Pair,
}

/// `--help` sections, in print order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Group {
    Required,
    Sink,
    Kafka,
    Tls,
    Rules,
    Tuning,
    Ours,
}

pub(super) const GROUPS: [(Group, &str); 7] = [
    (Group::Required, "Required"),
    (Group::Sink, "Capture sink (exactly one)"),
    (Group::Kafka, "Kafka"),
    (Group::Tls, "TLS"),
    (Group::Rules, "Header rewriting and capture rules"),
    (
        Group::Tuning,
        "Threads, buffers, destination pool, telemetry",
    ),
    (Group::Ours, "Additions of this proxy (kebab-case only)"),
];

/// A flag's default. The typed variants hold the `config::DEFAULT_*` constant the build step
/// falls back to, so `--help` derives its text from the value instead of spelling it again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum FlagDefault {
    /// None shown: a required flag, an action, or unset means "not configured".
    None,
    /// Unset is a state no value spells; `--help` and `--check-config` show this text.
    Unset(&'static str),
    /// A boolean flag: off unless given.
    Off,
    Text(&'static str),
    Count(usize),
    Size(u64),
    Duration(Duration),
    /// A duration shown in the ISO-8601 form the Java flags document (`PT30S`).
    IsoDuration(Duration),
    Addr(SocketAddr),
    AuthType(AuthType),
    IoDriver(IoDriver),
    FailurePolicy(FailurePolicy),
    LogFormat(LogFormat),
}

impl FlagDefault {
    /// The default as `--help` shows it, in a form the flag accepts back (except `Unset`
    /// and `Off`, which describe the unset state); `None` when there is none.
    pub(super) fn shown(self) -> Option<String> {
        Some(match self {
            FlagDefault::None => return None,
            FlagDefault::Unset(text) | FlagDefault::Text(text) => text.to_string(),
            FlagDefault::Off => "off".to_string(),
            FlagDefault::Count(n) => n.to_string(),
            FlagDefault::Size(n) => fmt_size(n),
            FlagDefault::Duration(d) => fmt_duration(d),
            FlagDefault::IsoDuration(d) => fmt_iso_duration(d),
            FlagDefault::Addr(a) => a.to_string(),
            FlagDefault::AuthType(v) => choice_name(v).to_string(),
            FlagDefault::IoDriver(v) => choice_name(v).to_string(),
            FlagDefault::FailurePolicy(v) => choice_name(v).to_string(),
            FlagDefault::LogFormat(v) => choice_name(v).to_string(),
        })
    }
}

/// One row of the flag table.
pub(super) struct FlagSpec {
    pub(super) id: Flag,
    /// Canonical name without dashes: camelCase for Java flags, kebab-case for ours.
    pub(super) name: &'static str,
    /// Other Java names (camelCase); each also has its kebab-case spelling.
    pub(super) aliases: &'static [&'static str],
    pub(super) kind: Kind,
    pub(super) group: Group,
    /// Placeholder for the value in `--help`.
    pub(super) metavar: &'static str,
    pub(super) help: &'static str,
    /// Default, typed (see [`FlagDefault`]).
    pub(super) default: FlagDefault,
    /// One of our additions: kebab-case only.
    pub(super) ours: bool,
    /// Value is never echoed.
    pub(super) secret: bool,
}

const fn java(
    id: Flag,
    name: &'static str,
    kind: Kind,
    group: Group,
    metavar: &'static str,
    default: FlagDefault,
    help: &'static str,
) -> FlagSpec {
    FlagSpec {
        id,
        name,
        aliases: &[],
        kind,
        group,
        metavar,
        help,
        default,
        ours: false,
        secret: false,
    }
}

const fn ours(
    id: Flag,
    name: &'static str,
    kind: Kind,
    metavar: &'static str,
    default: FlagDefault,
    help: &'static str,
) -> FlagSpec {
    FlagSpec {
        id,
        name,
        aliases: &[],
        kind,
        group: Group::Ours,
        metavar,
        help,
        default,
        ours: true,
        secret: false,
    }
}

const fn with_aliases(mut s: FlagSpec, aliases: &'static [&'static str]) -> FlagSpec {
    s.aliases = aliases;
    s
}

const fn secret(mut s: FlagSpec) -> FlagSpec {
    s.secret = true;
    s
}

use FlagDefault as D;
use Group::{Kafka as GK, Required as GR, Rules as GRu, Sink as GS, Tls as GT, Tuning as GTu};
use Kind::{Bool as B, Pair as P, Value as V};

/// The flag table: the single source of names, kinds, defaults and help. Each row is the one
/// place a flag is defined; grep its `Flag::` variant to follow it: `build.rs` reads it into a
/// `Config` field, `effective.rs` shows that field. A typed default is the `config::DEFAULT_*`
/// constant the build step falls back to; `--help` derives its `[default: …]` text from it.
#[rustfmt::skip]
pub(super) static FLAGS: &[FlagSpec] = &[
    java(Flag::DestinationUri, "destinationUri", V, GR, "URI", D::None,
        "source cluster, http:// or https:// (default ports 80/443); the path is ignored"),
    java(Flag::ListenPort, "listenPort", V, GR, "PORT", D::None,
        "client-facing port (0 picks a free port)"),
    with_aliases(java(Flag::KafkaConnection, "kafkaConnection", V, GS, "HOST:PORT,...", D::None,
        "bootstrap brokers; capture to Kafka"), &["kafkaBrokers"]),
    java(Flag::TraceDirectory, "traceDirectory", V, GS, "DIR", D::None,
        "capture to rotated local trace files in DIR"),
    java(Flag::NoCapture, "noCapture", B, GS, "", D::None, "forward only, capture nothing"),
    java(Flag::KafkaTopic, "kafkaTopic", V, GK, "NAME", D::Text(DEFAULT_KAFKA_TOPIC),
        "topic for TrafficStream records"),
    java(Flag::KafkaClientId, "kafkaClientId", V, GK, "ID", D::Text(DEFAULT_KAFKA_CLIENT_ID),
        "producer client.id"),
    with_aliases(java(Flag::KafkaPropertyFile, "kafkaPropertyFile", V, GK, "FILE", D::None,
        "Java properties file of producer settings (translated to librdkafka keys)"),
        &["kafkaConfigFile"]),
    java(Flag::KafkaAuthType, "kafkaAuthType", V, GK, "none|msk-iam|scram-sha-512|ssl",
        D::AuthType(AuthType::DEFAULT), "Kafka authentication"),
    java(Flag::EnableMskAuth, "enableMSKAuth", B, GK, "", D::None,
        "legacy alias of --kafkaAuthType msk-iam"),
    java(Flag::KafkaUserName, "kafkaUserName", V, GK, "NAME", D::None, "SCRAM user name"),
    secret(java(Flag::KafkaPassword, "kafkaPassword", V, GK, "SECRET", D::None,
        "SCRAM password (prefer the environment: CAPTURE_PROXY_KAFKA_PASSWORD)")),
    java(Flag::KafkaListenerName, "kafkaListenerName", V, GK, "NAME", D::None,
        "orchestration metadata; accepted and unused"),
    java(Flag::KafkaSecretName, "kafkaSecretName", V, GK, "NAME", D::None,
        "orchestration metadata; accepted and unused"),
    java(Flag::MaxTrafficBufferSize, "maxTrafficBufferSize", V, GTu, "BYTES",
        D::Count(DEFAULT_MAX_TRAFFIC_BUFFER_SIZE),
        "most bytes in one TrafficStream (record value <= this - 500); at least 1024"),
    java(Flag::NumThreads, "numThreads", V, GTu, "N", D::Count(DEFAULT_NUM_THREADS),
        "worker threads; 0 = one per available CPU"),
    java(Flag::DestinationConnectionPoolSize, "destinationConnectionPoolSize", V, GTu, "N",
        D::Count(DEFAULT_DESTINATION_CONNECTION_POOL_SIZE),
        "pre-connected destination sockets kept ready per worker"),
    java(Flag::DestinationConnectionPoolTimeout, "destinationConnectionPoolTimeout", V, GTu,
        "DURATION", D::IsoDuration(DEFAULT_DESTINATION_CONNECTION_POOL_TIMEOUT),
        "age (ISO-8601, e.g. PT30S) after which a ready socket is replaced"),
    java(Flag::InsecureDestination, "insecureDestination", B, GT, "", D::Off,
        "do not verify the destination's certificate"),
    java(Flag::SslCertChainFile, "sslCertChainFile", V, GT, "PEM", D::None,
        "certificate chain for client-facing TLS (needs --sslKeyFile)"),
    java(Flag::SslKeyFile, "sslKeyFile", V, GT, "PEM", D::None,
        "private key for client-facing TLS (needs --sslCertChainFile)"),
    java(Flag::SslTrustCertFile, "sslTrustCertFile", V, GT, "PEM", D::None,
        "CA bundle for client certificates"),
    java(Flag::SslTrustCertPemEnvVar, "sslTrustCertPemEnvVar", V, GT, "VAR", D::None,
        "environment variable holding the client CA bundle (not with --sslTrustCertFile)"),
    java(Flag::RequireClientAuth, "requireClientAuth", B, GT, "", D::Off,
        "require client certificates (needs a trust source)"),
    java(Flag::SetHeader, "setHeader", P, GRu, "NAME VALUE | \"NAME: VALUE\"", D::None,
        "replace or add a request header toward the destination (repeatable)"),
    java(Flag::SuppressCaptureForHeaderMatch, "suppressCaptureForHeaderMatch", P, GRu,
        "NAME REGEX", D::None,
        "do not capture requests whose header value fully matches (repeatable)"),
    java(Flag::SuppressCaptureForMethod, "suppressCaptureForMethod", V, GRu, "REGEX", D::None,
        "do not capture requests whose method fully matches"),
    java(Flag::SuppressCaptureForUriPath, "suppressCaptureForUriPath", V, GRu, "REGEX", D::None,
        "do not capture requests whose target fully matches"),
    java(Flag::SuppressMethodAndPath, "suppressMethodAndPath", V, GRu, "REGEX", D::None,
        "do not capture requests whose \"METHOD target\" fully matches"),
    java(Flag::OtelMetricsCollectorEndpoint, "otelMetricsCollectorEndpoint", V, GTu, "URL",
        D::None, "OTLP/gRPC collector for metrics (http:// assumed without a scheme)"),
    java(Flag::OtelTraceCollectorEndpoint, "otelTraceCollectorEndpoint", V, GTu, "URL", D::None,
        "accepted, but no spans are produced (warned at start)"),
    ours(Flag::ListenAddress, "listen-address", V, "IP", D::Unset("0.0.0.0 and [::]"),
        "bind address for the client-facing listener"),
    ours(Flag::DestinationCaFile, "destination-ca-file", V, "PEM", D::Unset("system roots"),
        "CA bundle for verifying an https:// destination"),
    ours(Flag::CpuList, "cpu-list", V, "LIST", D::Unset("all allowed CPUs"),
        "CPUs to pin workers to, e.g. 1-3,5"),
    ours(Flag::IoDriver, "io-driver", V, "auto|uring|legacy", D::IoDriver(DEFAULT_IO_DRIVER),
        "io_uring, epoll, or io_uring falling back to epoll"),
    ours(Flag::AdminListen, "admin-listen", V, "HOST:PORT|off", D::Addr(DEFAULT_ADMIN_LISTEN),
        "/metrics, /health and /ready endpoint"),
    ours(Flag::CaptureFlushInterval, "capture-flush-interval", V, "DURATION",
        D::Duration(DEFAULT_CAPTURE_FLUSH_INTERVAL),
        "flush a connection's unflushed observations after this long"),
    ours(Flag::KafkaAckTimeout, "kafka-ack-timeout", V, "DURATION",
        D::Duration(DEFAULT_KAFKA_ACK_TIMEOUT),
        "most time a mutating request waits for its record's acknowledgement"),
    ours(Flag::CaptureFailurePolicy, "capture-failure-policy", V, "forward|reject",
        D::FailurePolicy(DEFAULT_CAPTURE_FAILURE_POLICY),
        "what a held request does when its capture fails"),
    ours(Flag::SpoolDir, "spool-dir", V, "DIR", D::None,
        "durable spool for records Kafka cannot take"),
    ours(Flag::SpoolMaxBytes, "spool-max-bytes", V, "SIZE", D::Size(DEFAULT_SPOOL_MAX_BYTES),
        "most bytes the spool holds; beyond it the failure policy applies"),
    ours(Flag::KafkaMaxUnackedBytes, "kafka-max-unacked-bytes", V, "SIZE",
        D::Size(DEFAULT_KAFKA_MAX_UNACKED_BYTES),
        "most record bytes Kafka may hold unacknowledged; beyond it clients are slowed"),
    ours(Flag::MaxConnections, "max-connections", V, "N", D::Unset("unlimited"),
        "beyond this, new connections wait in the accept backlog"),
    ours(Flag::ClientIdleTimeout, "client-idle-timeout", V, "DURATION",
        D::Duration(DEFAULT_CLIENT_IDLE_TIMEOUT),
        "close client connections idle this long between requests; 0 = off"),
    ours(Flag::RequestHeadTimeout, "request-head-timeout", V, "DURATION",
        D::Duration(DEFAULT_REQUEST_HEAD_TIMEOUT),
        "most time to receive a request head; 0 = off"),
    ours(Flag::RequestBodyTimeout, "request-body-timeout", V, "DURATION",
        D::Duration(DEFAULT_REQUEST_BODY_TIMEOUT),
        "most time without a byte from the client inside a request; 0 = off"),
    ours(Flag::SourceMaxInitialLineLength, "source-max-initial-line-length", V, "SIZE",
        D::Size(DEFAULT_SOURCE_MAX_INITIAL_LINE_LENGTH),
        "the source's http.max_initial_line_length: longer request lines are refused (431)"),
    ours(Flag::SourceMaxHeaderSize, "source-max-header-size", V, "SIZE",
        D::Size(DEFAULT_SOURCE_MAX_HEADER_SIZE),
        "the source's http.max_header_size: larger header sections are refused (431)"),
    ours(Flag::TcpKeepalive, "tcp-keepalive", V, "DURATION", D::Duration(DEFAULT_TCP_KEEPALIVE),
        "TCP keepalive idle time on both sides; 0 = off"),
    ours(Flag::DrainTimeout, "drain-timeout", V, "DURATION", D::Duration(DEFAULT_DRAIN_TIMEOUT),
        "on SIGTERM, most time to let in-flight exchanges finish"),
    ours(Flag::HandoverTimeout, "handover-timeout", V, "DURATION",
        D::Duration(DEFAULT_HANDOVER_TIMEOUT),
        "on SIGUSR2, most time the new process may take to become ready; past it the handover is abandoned and this process keeps serving"),
    ours(Flag::TraceFileMaxBytes, "trace-file-max-bytes", V, "SIZE",
        D::Size(DEFAULT_TRACE_FILE_MAX_BYTES),
        "rotate a trace file at this size (e.g. 64MiB, 1GiB, 1000000)"),
    ours(Flag::LogFormat, "log-format", V, "text|json", D::LogFormat(DEFAULT_LOG_FORMAT),
        "log format on stderr"),
    ours(Flag::OtelMetricsExportInterval, "otel-metrics-export-interval", V, "DURATION",
        D::Duration(DEFAULT_OTEL_METRICS_EXPORT_INTERVAL),
        "time between OTLP metrics exports (with --otelMetricsCollectorEndpoint)"),
    ours(Flag::CheckConfig, "check-config", B, "", D::None,
        "validate, print the effective configuration (secrets masked), exit"),
];

pub(super) fn spec(id: Flag) -> &'static FlagSpec {
    // Every `Flag` has a row (tested); the fallback only keeps this total.
    FLAGS.iter().find(|s| s.id == id).unwrap_or(&FLAGS[0])
}

pub(super) fn index_of(id: Flag) -> usize {
    FLAGS.iter().position(|s| s.id == id).unwrap_or(0)
}

/// Splits a camelCase or kebab-case name into lower-case words:
/// `enableMSKAuth` → `enable msk auth`, `capture-flush-interval` → `capture flush interval`.
pub(super) fn words(name: &str) -> Vec<String> {
    let chars: Vec<char> = name.chars().collect();
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' || c == '_' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if c.is_ascii_uppercase() && !cur.is_empty() {
            let prev = chars.get(i.wrapping_sub(1)).copied().unwrap_or('a');
            let next = chars.get(i + 1).copied().unwrap_or('A');
            if !prev.is_ascii_uppercase() || next.is_ascii_lowercase() {
                out.push(std::mem::take(&mut cur));
            }
        }
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) fn kebab(name: &str) -> String {
    words(name).join("-")
}

/// `destinationUri` → `CAPTURE_PROXY_DESTINATION_URI`.
pub(super) fn env_name(name: &str) -> String {
    format!("{ENV_PREFIX}{}", words(name).join("_").to_ascii_uppercase())
}

impl FlagSpec {
    /// Every name (without dashes) this flag answers to on the command line and in JSON.
    pub(super) fn accepts(&self, given: &str) -> bool {
        if self.ours {
            return given == self.name;
        }
        std::iter::once(self.name)
            .chain(self.aliases.iter().copied())
            .any(|n| given == n || given == kebab(n))
    }

    /// Environment variable names, canonical first.
    pub(super) fn env_names(&self) -> Vec<String> {
        std::iter::once(self.name)
            .chain(self.aliases.iter().copied())
            .map(env_name)
            .collect()
    }

    /// May come from `CAPTURE_PROXY_*`: scalar flags except `--check-config` (an action).
    pub(super) fn env_allowed(&self) -> bool {
        self.kind != Kind::Pair && self.id != Flag::CheckConfig
    }
}

pub(super) fn lookup(given: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|s| s.accepts(given))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(FLAGS.len(), 55);
        for (i, s) in FLAGS.iter().enumerate() {
            assert_eq!(index_of(s.id), i, "{} appears twice", s.name);
            assert!(std::ptr::eq(lookup(s.name).unwrap(), s));
            if s.ours {
                assert_eq!(kebab(s.name), s.name, "{} must be kebab-case", s.name);
                assert_eq!(s.group, Group::Ours);
            } else {
                assert!(std::ptr::eq(lookup(&kebab(s.name)).unwrap(), s));
                assert_ne!(s.group, Group::Ours);
            }
            for a in s.aliases {
                assert!(std::ptr::eq(lookup(a).unwrap(), s));
                assert!(std::ptr::eq(lookup(&kebab(a)).unwrap(), s));
            }
        }
    }

    #[test]
    fn names_convert() {
        assert_eq!(kebab("destinationUri"), "destination-uri");
        assert_eq!(kebab("enableMSKAuth"), "enable-msk-auth");
        assert_eq!(kebab("sslTrustCertPemEnvVar"), "ssl-trust-cert-pem-env-var");
        assert_eq!(env_name("destinationUri"), "CAPTURE_PROXY_DESTINATION_URI");
        assert_eq!(env_name("enableMSKAuth"), "CAPTURE_PROXY_ENABLE_MSK_AUTH");
        assert_eq!(
            env_name("capture-flush-interval"),
            "CAPTURE_PROXY_CAPTURE_FLUSH_INTERVAL"
        );
        assert_eq!(env_name("kafkaPassword"), "CAPTURE_PROXY_KAFKA_PASSWORD");
    }
}
