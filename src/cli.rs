//! The command-line and configuration front end: turns arguments, the environment
//! (`CAPTURE_PROXY_*`) and the Kubernetes JSON form (`---INLINE-JSON`, `---JSON-FILE`) into a
//! validated [`Config`], an `inspect` request, or help/version text (spec: `cli.md`).
//!
//! Owns: the one static flag table ([`FLAGS`]) that drives parsing, environment names, JSON
//! keys and `--help`; value parsers (URIs, durations, sizes, CPU lists, regexes); the Java
//! properties reader and its translation to librdkafka keys; `render_effective`.
//!
//! May depend on: `crate::config` (the types it builds), `regex`, `serde_json`, `base64`, the
//! file system (to check that named files exist and are readable). Never on the data path.
//!
//! Invariants: a `Config` is returned only after every value is validated; usage mistakes
//! (unknown, missing, conflicting flags) are `CliError::Usage` (exit 2), bad values are
//! `CliError::BadValue` (exit 3) naming the flag and the value; secrets (the Kafka password,
//! JSON arguments, password-like producer properties) never appear in errors or output.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{
    ClientTrust, Config, Destination, FailurePolicy, FileSinkConfig, IoDriver, KafkaAuth,
    KafkaConfig, LogFormat, ServerTlsConfig, SetHeader, SinkConfig, SuppressConfig,
};

/// What the binary should do.
pub enum Command {
    /// Run the proxy with this configuration.
    Run(Box<Config>),
    /// `--check-config`: print `render_effective` of this configuration and exit 0.
    CheckConfig(Box<Config>),
    /// `capture-proxy inspect …`.
    Inspect(InspectArgs),
    /// `--help` / `-h`: print this text and exit 0.
    Help(String),
    /// `--version`: print this text and exit 0.
    Version(String),
}

/// Arguments of `capture-proxy inspect`. Exactly one of `trace_directory` and
/// `kafka_connection` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InspectArgs {
    pub trace_directory: Option<PathBuf>,
    pub kafka_connection: Option<String>,
    pub kafka_topic: String,
    pub json: bool,
    pub from_offsets: Option<String>,
    pub kafka_property_file: Option<PathBuf>,
    /// `--summary`: print only the summary.
    pub quiet: bool,
}

#[derive(thiserror::Error, Debug)]
pub enum CliError {
    /// Unknown flag, missing required flag, conflicting flags: exit status 2.
    #[error("{0} (see --help)")]
    Usage(String),
    /// A flag with a bad value (unparsable URI, missing file, bad regex, bad number): exit 3;
    /// names the flag and the value (masked for secrets).
    #[error("invalid value '{value}' for {flag}: {reason}")]
    BadValue {
        flag: String,
        value: String,
        reason: String,
    },
}

impl CliError {
    /// Process exit status for this error (cli.md: 2 for usage, 3 for a bad value).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            CliError::BadValue { .. } => EXIT_BAD_VALUE,
        }
    }
}

/// Exit status for unknown, missing or conflicting flags (the Java proxy's usage exit).
pub const EXIT_USAGE: i32 = 2;
/// Exit status for a flag with a bad value (the Java proxy exits 3 on a bad URI).
pub const EXIT_BAD_VALUE: i32 = 3;

/// What is shown instead of a secret.
const MASK: &str = "****";
/// Prefix of every environment variable we read (the Java `EnvVarParameterPuller` prefix).
const ENV_PREFIX: &str = "CAPTURE_PROXY_";
/// Default `--kafkaTopic` (Java default).
pub const DEFAULT_KAFKA_TOPIC: &str = "logging-traffic-topic";
/// Default `--kafkaClientId` (Java default).
pub const DEFAULT_KAFKA_CLIENT_ID: &str = "HttpCaptureProxyProducer";
/// Smallest `--maxTrafficBufferSize`: a TrafficStream must hold more than the 500-byte Kafka
/// envelope reserve plus a useful observation; below 1 KiB every record would be all overhead.
pub const MIN_MAX_TRAFFIC_BUFFER_SIZE: usize = 1024;
/// Default `--trace-file-max-bytes`: 256 MiB (see `FileSinkConfig::max_file_bytes`).
pub const DEFAULT_TRACE_FILE_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default `--admin-listen`: loopback only, so metrics are not exposed by accident.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9901);
/// Default `--capture-flush-interval` (cli.md).
pub const DEFAULT_CAPTURE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Default `--kafka-ack-timeout`: the Java producer's `delivery.timeout.ms` (10 s).
pub const DEFAULT_KAFKA_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `--request-head-timeout` (cli.md).
pub const DEFAULT_REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--request-body-timeout`: 60 s without a byte in the middle of a request (head
/// or body) ends the connection (408). Long enough for any client that is still sending
/// (a stalled TCP flow retransmits within seconds), short enough that a client stuck mid-body
/// cannot pin its buffers for long (issue 13: 5 000 of them held 410 MB).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `--client-idle-timeout`: 10 minutes between requests. Above the idle timeouts of
/// the load balancers in front (ALB 60 s by default, NLB 350 s), so the balancer, not the
/// proxy, closes an idle connection it might reuse; frees the connections of clients that
/// vanished without a FIN.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default `--tcp-keepalive`: well under the 350 s after which load balancers drop idle flows.
pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Default `--drain-timeout` on SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--destinationConnectionPoolTimeout` (Java `PT30S`).
pub const DEFAULT_POOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Highest CPU number `--cpu-list` accepts: glibc's `CPU_SETSIZE` (1024) bits in a cpu_set_t.
pub const MAX_CPU_INDEX: usize = 1023;
/// Reason given for the OpenTelemetry flags, which are rejected rather than ignored.
const OTEL_UNSUPPORTED: &str = "OpenTelemetry export is not supported yet; scrape the \
                                Prometheus endpoint (--admin-listen) instead";

/// Identity of a flag; the table below gives each one its names, kind and help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
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
    MaxConnections,
    ClientIdleTimeout,
    RequestHeadTimeout,
    RequestBodyTimeout,
    TcpKeepalive,
    DrainTimeout,
    TraceFileMaxBytes,
    LogFormat,
    CheckConfig,
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No value; `--flag=true|false` also accepted.
    Bool,
    /// One value: `--flag v` or `--flag=v`.
    Value,
    /// Repeatable pair: `--flag name value`, or one `"name: value"` argument.
    Pair,
}

/// `--help` sections, in print order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    Required,
    Sink,
    Kafka,
    Tls,
    Rules,
    Tuning,
    Ours,
}

const GROUPS: [(Group, &str); 7] = [
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

/// One row of the flag table.
struct FlagSpec {
    id: Flag,
    /// Canonical name without dashes: camelCase for Java flags, kebab-case for ours.
    name: &'static str,
    /// Other Java names (camelCase); each also has its kebab-case spelling.
    aliases: &'static [&'static str],
    kind: Kind,
    group: Group,
    /// Placeholder for the value in `--help`.
    metavar: &'static str,
    help: &'static str,
    /// Default as shown in `--help`; empty when there is none.
    default: &'static str,
    /// One of our additions: kebab-case only.
    ours: bool,
    /// Value is never echoed.
    secret: bool,
}

const fn java(
    id: Flag,
    name: &'static str,
    kind: Kind,
    group: Group,
    metavar: &'static str,
    default: &'static str,
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
    default: &'static str,
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

use Group::{Kafka as GK, Required as GR, Rules as GRu, Sink as GS, Tls as GT, Tuning as GTu};
use Kind::{Bool as B, Pair as P, Value as V};

/// The flag table: the single source of names, kinds, defaults and help.
#[rustfmt::skip]
static FLAGS: &[FlagSpec] = &[
    java(Flag::DestinationUri, "destinationUri", V, GR, "URI", "",
        "source cluster, http:// or https:// (default ports 80/443); the path is ignored"),
    java(Flag::ListenPort, "listenPort", V, GR, "PORT", "",
        "client-facing port (0 picks a free port)"),
    with_aliases(java(Flag::KafkaConnection, "kafkaConnection", V, GS, "HOST:PORT,...", "",
        "bootstrap brokers; capture to Kafka"), &["kafkaBrokers"]),
    java(Flag::TraceDirectory, "traceDirectory", V, GS, "DIR", "",
        "capture to rotated local trace files in DIR"),
    java(Flag::NoCapture, "noCapture", B, GS, "", "", "forward only, capture nothing"),
    java(Flag::KafkaTopic, "kafkaTopic", V, GK, "NAME", DEFAULT_KAFKA_TOPIC,
        "topic for TrafficStream records"),
    java(Flag::KafkaClientId, "kafkaClientId", V, GK, "ID", DEFAULT_KAFKA_CLIENT_ID,
        "producer client.id"),
    with_aliases(java(Flag::KafkaPropertyFile, "kafkaPropertyFile", V, GK, "FILE", "",
        "Java properties file of producer settings (translated to librdkafka keys)"),
        &["kafkaConfigFile"]),
    java(Flag::KafkaAuthType, "kafkaAuthType", V, GK, "none|msk-iam|scram-sha-512|ssl", "none",
        "Kafka authentication"),
    java(Flag::EnableMskAuth, "enableMSKAuth", B, GK, "", "",
        "legacy alias of --kafkaAuthType msk-iam"),
    java(Flag::KafkaUserName, "kafkaUserName", V, GK, "NAME", "", "SCRAM user name"),
    secret(java(Flag::KafkaPassword, "kafkaPassword", V, GK, "SECRET", "",
        "SCRAM password (prefer the environment: CAPTURE_PROXY_KAFKA_PASSWORD)")),
    java(Flag::KafkaListenerName, "kafkaListenerName", V, GK, "NAME", "",
        "orchestration metadata; accepted and unused"),
    java(Flag::KafkaSecretName, "kafkaSecretName", V, GK, "NAME", "",
        "orchestration metadata; accepted and unused"),
    java(Flag::MaxTrafficBufferSize, "maxTrafficBufferSize", V, GTu, "BYTES", "1048576",
        "most bytes in one TrafficStream (record value <= this - 500); at least 1024"),
    java(Flag::NumThreads, "numThreads", V, GTu, "N", "0",
        "worker threads; 0 = one per available CPU"),
    java(Flag::DestinationConnectionPoolSize, "destinationConnectionPoolSize", V, GTu, "N", "0",
        "pre-connected destination sockets kept ready per worker"),
    java(Flag::DestinationConnectionPoolTimeout, "destinationConnectionPoolTimeout", V, GTu,
        "DURATION", "PT30S", "age (ISO-8601, e.g. PT30S) after which a ready socket is replaced"),
    java(Flag::InsecureDestination, "insecureDestination", B, GT, "", "off",
        "do not verify the destination's certificate"),
    java(Flag::SslCertChainFile, "sslCertChainFile", V, GT, "PEM", "",
        "certificate chain for client-facing TLS (needs --sslKeyFile)"),
    java(Flag::SslKeyFile, "sslKeyFile", V, GT, "PEM", "",
        "private key for client-facing TLS (needs --sslCertChainFile)"),
    java(Flag::SslTrustCertFile, "sslTrustCertFile", V, GT, "PEM", "",
        "CA bundle for client certificates"),
    java(Flag::SslTrustCertPemEnvVar, "sslTrustCertPemEnvVar", V, GT, "VAR", "",
        "environment variable holding the client CA bundle (not with --sslTrustCertFile)"),
    java(Flag::RequireClientAuth, "requireClientAuth", B, GT, "", "off",
        "require client certificates (needs a trust source)"),
    java(Flag::SetHeader, "setHeader", P, GRu, "NAME VALUE | \"NAME: VALUE\"", "",
        "replace or add a request header toward the destination (repeatable)"),
    java(Flag::SuppressCaptureForHeaderMatch, "suppressCaptureForHeaderMatch", P, GRu,
        "NAME REGEX", "", "do not capture requests whose header value fully matches (repeatable)"),
    java(Flag::SuppressCaptureForMethod, "suppressCaptureForMethod", V, GRu, "REGEX", "",
        "do not capture requests whose method fully matches"),
    java(Flag::SuppressCaptureForUriPath, "suppressCaptureForUriPath", V, GRu, "REGEX", "",
        "do not capture requests whose target fully matches"),
    java(Flag::SuppressMethodAndPath, "suppressMethodAndPath", V, GRu, "REGEX", "",
        "do not capture requests whose \"METHOD target\" fully matches"),
    java(Flag::OtelMetricsCollectorEndpoint, "otelMetricsCollectorEndpoint", V, GTu, "URL", "",
        "rejected: OpenTelemetry export is not supported yet (use --admin-listen)"),
    java(Flag::OtelTraceCollectorEndpoint, "otelTraceCollectorEndpoint", V, GTu, "URL", "",
        "rejected: OpenTelemetry export is not supported yet"),
    ours(Flag::ListenAddress, "listen-address", V, "IP", "0.0.0.0 and [::]",
        "bind address for the client-facing listener"),
    ours(Flag::DestinationCaFile, "destination-ca-file", V, "PEM", "system roots",
        "CA bundle for verifying an https:// destination"),
    ours(Flag::CpuList, "cpu-list", V, "LIST", "all allowed CPUs",
        "CPUs to pin workers to, e.g. 1-3,5"),
    ours(Flag::IoDriver, "io-driver", V, "auto|uring|legacy", "auto",
        "io_uring, epoll, or io_uring falling back to epoll"),
    ours(Flag::AdminListen, "admin-listen", V, "HOST:PORT|off", "127.0.0.1:9901",
        "/metrics, /health and /ready endpoint"),
    ours(Flag::CaptureFlushInterval, "capture-flush-interval", V, "DURATION", "5s",
        "flush a connection's unflushed observations after this long"),
    ours(Flag::KafkaAckTimeout, "kafka-ack-timeout", V, "DURATION", "10s",
        "most time a mutating request waits for its record's acknowledgement"),
    ours(Flag::CaptureFailurePolicy, "capture-failure-policy", V, "forward|reject", "forward",
        "what a held request does when its capture fails"),
    ours(Flag::SpoolDir, "spool-dir", V, "DIR", "", "durable spool for records Kafka cannot take"),
    ours(Flag::SpoolMaxBytes, "spool-max-bytes", V, "SIZE", "1GiB",
        "most bytes the spool holds; beyond it the failure policy applies"),
    ours(Flag::MaxConnections, "max-connections", V, "N", "unlimited",
        "beyond this, new connections wait in the accept backlog"),
    ours(Flag::ClientIdleTimeout, "client-idle-timeout", V, "DURATION", "10m",
        "close client connections idle this long between requests; 0 = off"),
    ours(Flag::RequestHeadTimeout, "request-head-timeout", V, "DURATION", "30s",
        "most time to receive a request head; 0 = off"),
    ours(Flag::RequestBodyTimeout, "request-body-timeout", V, "DURATION", "60s",
        "most time without a byte from the client inside a request; 0 = off"),
    ours(Flag::TcpKeepalive, "tcp-keepalive", V, "DURATION", "60s",
        "TCP keepalive idle time on both sides; 0 = off"),
    ours(Flag::DrainTimeout, "drain-timeout", V, "DURATION", "30s",
        "on SIGTERM, most time to let in-flight exchanges finish"),
    ours(Flag::TraceFileMaxBytes, "trace-file-max-bytes", V, "SIZE", "256MiB",
        "rotate a trace file at this size (e.g. 64MiB, 1GiB, 1000000)"),
    ours(Flag::LogFormat, "log-format", V, "text|json", "text", "log format on stderr"),
    ours(Flag::CheckConfig, "check-config", B, "", "",
        "validate, print the effective configuration (secrets masked), exit"),
];

fn spec(id: Flag) -> &'static FlagSpec {
    // Every `Flag` has a row (tested); the fallback only keeps this total.
    FLAGS.iter().find(|s| s.id == id).unwrap_or(&FLAGS[0])
}

fn index_of(id: Flag) -> usize {
    FLAGS.iter().position(|s| s.id == id).unwrap_or(0)
}

/// Splits a camelCase or kebab-case name into lower-case words:
/// `enableMSKAuth` → `enable msk auth`, `capture-flush-interval` → `capture flush interval`.
fn words(name: &str) -> Vec<String> {
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

fn kebab(name: &str) -> String {
    words(name).join("-")
}

/// `destinationUri` → `CAPTURE_PROXY_DESTINATION_URI`.
fn env_name(name: &str) -> String {
    format!("{ENV_PREFIX}{}", words(name).join("_").to_ascii_uppercase())
}

impl FlagSpec {
    /// Every name (without dashes) this flag answers to on the command line and in JSON.
    fn accepts(&self, given: &str) -> bool {
        if self.ours {
            return given == self.name;
        }
        std::iter::once(self.name)
            .chain(self.aliases.iter().copied())
            .any(|n| given == n || given == kebab(n))
    }

    /// Environment variable names, canonical first.
    fn env_names(&self) -> Vec<String> {
        std::iter::once(self.name)
            .chain(self.aliases.iter().copied())
            .map(env_name)
            .collect()
    }

    /// May come from `CAPTURE_PROXY_*`: scalar flags except `--check-config` (an action).
    fn env_allowed(&self) -> bool {
        self.kind != Kind::Pair && self.id != Flag::CheckConfig
    }
}

fn lookup(given: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|s| s.accepts(given))
}

// ---------------------------------------------------------------------------------------------
// Collecting raw values: environment first, then the command line or the JSON form on top.
// ---------------------------------------------------------------------------------------------

/// One raw value and where it came from (`--listenPort`, `CAPTURE_PROXY_LISTEN_PORT`,
/// `listenPort (JSON)`), for error messages.
#[derive(Debug, Clone)]
struct Raw {
    text: String,
    origin: String,
}

/// One `name value` pair of a repeatable flag.
#[derive(Debug, Clone)]
struct RawPair {
    name: String,
    value: String,
    origin: String,
}

/// Raw values by flag-table row.
struct Collected {
    scalars: Vec<Option<Raw>>,
    /// The value came from the command line or JSON (not the environment), so a second one
    /// is a conflict rather than an override.
    explicit: Vec<bool>,
    pairs: Vec<Vec<RawPair>>,
}

impl Collected {
    fn new() -> Collected {
        Collected {
            scalars: vec![None; FLAGS.len()],
            explicit: vec![false; FLAGS.len()],
            pairs: vec![Vec::new(); FLAGS.len()],
        }
    }

    fn set(&mut self, spec: &FlagSpec, raw: Raw, explicit: bool) -> Result<(), CliError> {
        let i = index_of(spec.id);
        if explicit {
            if self.explicit.get(i).copied().unwrap_or(false) {
                return Err(CliError::Usage(format!(
                    "--{} given more than once",
                    spec.name
                )));
            }
            if let Some(e) = self.explicit.get_mut(i) {
                *e = true;
            }
        }
        if let Some(slot) = self.scalars.get_mut(i) {
            *slot = Some(raw);
        }
        Ok(())
    }

    fn push_pair(&mut self, spec: &FlagSpec, pair: RawPair) {
        if let Some(v) = self.pairs.get_mut(index_of(spec.id)) {
            v.push(pair);
        }
    }

    fn get(&self, id: Flag) -> Option<&Raw> {
        self.scalars.get(index_of(id)).and_then(Option::as_ref)
    }

    fn pairs(&self, id: Flag) -> &[RawPair] {
        self.pairs.get(index_of(id)).map_or(&[], Vec::as_slice)
    }
}

/// Reads every scalar flag's `CAPTURE_PROXY_*` variable. Empty variables count as unset
/// (orchestrators often define a variable with no value).
fn collect_env(c: &mut Collected, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CliError> {
    for spec in FLAGS.iter().filter(|s| s.env_allowed()) {
        let mut found: Option<Raw> = None;
        for var in spec.env_names() {
            if let Some(text) = env(&var).filter(|t| !t.is_empty()) {
                if found.is_some() {
                    return Err(CliError::Usage(format!(
                        "both {} and {var} are set",
                        found.map(|r| r.origin).unwrap_or_default()
                    )));
                }
                found = Some(Raw { text, origin: var });
            }
        }
        if let Some(raw) = found {
            c.set(spec, raw, false)?;
        }
    }
    Ok(())
}

/// Splits `"Name: value"` at the first colon (header names cannot contain one); the value
/// loses surrounding whitespace as HTTP does.
fn split_colon_form(token: &str) -> Option<(String, String)> {
    let (name, value) = token.split_once(':')?;
    Some((name.trim().to_string(), value.trim().to_string()))
}

/// Reads one pair from `first` and, when `first` is not in colon form, the next token
/// (which must exist and must not be another flag).
fn take_pair(
    spec: &FlagSpec,
    origin: &str,
    first: &str,
    rest: &[String],
    i: &mut usize,
) -> Result<RawPair, CliError> {
    let (name, value) = match split_colon_form(first) {
        Some(nv) => nv,
        None => match rest.get(*i).filter(|t| !t.starts_with("--")) {
            Some(v) => {
                *i += 1;
                (first.to_string(), v.clone())
            }
            None => {
                return Err(CliError::Usage(format!(
                    "{origin} needs {} (or one \"NAME: VALUE\" argument)",
                    spec.metavar.split(" |").next().unwrap_or("NAME VALUE")
                )))
            }
        },
    };
    Ok(RawPair {
        name,
        value,
        origin: origin.to_string(),
    })
}

/// Names a command-line flag in a message without any `=value` part (it may be a secret).
fn flag_word(arg: &str) -> &str {
    arg.split('=').next().unwrap_or(arg)
}

fn collect_args(args: &[String], c: &mut Collected) -> Result<(), CliError> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        let Some(body) = arg.strip_prefix("--") else {
            if arg.starts_with('-') {
                return Err(CliError::Usage(format!("unknown flag {}", flag_word(arg))));
            }
            return Err(CliError::Usage(format!("unexpected argument '{arg}'")));
        };
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let spec = lookup(name).ok_or_else(|| CliError::Usage(format!("unknown flag --{name}")))?;
        let origin = format!("--{name}");
        match spec.kind {
            Kind::Bool => {
                let text = inline.unwrap_or("true").to_string();
                c.set(spec, Raw { text, origin }, true)?;
            }
            Kind::Value => {
                let text = match inline {
                    Some(v) => v.to_string(),
                    None => match args.get(i).filter(|t| !t.starts_with("--")) {
                        Some(v) => {
                            i += 1;
                            v.clone()
                        }
                        None => {
                            return Err(CliError::Usage(format!(
                                "{origin} needs a value ({})",
                                spec.metavar
                            )))
                        }
                    },
                };
                c.set(spec, Raw { text, origin }, true)?;
            }
            Kind::Pair => {
                let first = match inline {
                    Some(v) => v.to_string(),
                    None => match args.get(i).filter(|t| !t.starts_with("--")) {
                        Some(v) => {
                            i += 1;
                            v.clone()
                        }
                        None => {
                            return Err(CliError::Usage(format!("{origin} needs {}", spec.metavar)))
                        }
                    },
                };
                let pair = take_pair(spec, &origin, &first, args, &mut i)?;
                c.push_pair(spec, pair);
            }
        }
    }
    Ok(())
}

/// The Kubernetes form's two spellings.
const INLINE_JSON: &str = "---INLINE-JSON";
const JSON_FILE: &str = "---JSON-FILE";

fn is_json_flag(arg: &str) -> bool {
    let w = flag_word(arg);
    w == INLINE_JSON || w == JSON_FILE
}

/// `---INLINE-JSON x` / `---JSON-FILE p` (optionally with `--check-config`): the JSON object
/// replaces the other command-line flags.
fn collect_json_mode(args: &[String], c: &mut Collected) -> Result<(), CliError> {
    let mut object: Option<serde_json::Map<String, serde_json::Value>> = None;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        if is_json_flag(arg) {
            let word = flag_word(arg);
            let value = match arg.split_once('=') {
                Some((_, v)) => v.to_string(),
                None => {
                    i += 1;
                    args.get(i - 1)
                        .cloned()
                        .ok_or_else(|| CliError::Usage(format!("{word} needs a value")))?
                }
            };
            if object.is_some() {
                return Err(CliError::Usage(format!(
                    "only one of {INLINE_JSON} and {JSON_FILE}, once"
                )));
            }
            object = Some(if word == INLINE_JSON {
                json_from_inline(&value)?
            } else {
                json_from_file(&value)?
            });
        } else if lookup(flag_word(arg).trim_start_matches("--")).map(|s| s.id)
            == Some(Flag::CheckConfig)
            && arg.starts_with("--")
        {
            let spec = spec(Flag::CheckConfig);
            let text = arg.split_once('=').map_or("true", |(_, v)| v).to_string();
            c.set(
                spec,
                Raw {
                    text,
                    origin: flag_word(arg).to_string(),
                },
                true,
            )?;
        } else {
            return Err(CliError::Usage(format!(
                "{INLINE_JSON}/{JSON_FILE} replace the other flags; put {} in the JSON",
                flag_word(arg)
            )));
        }
    }
    let object = object.unwrap_or_default();
    collect_json(&object, c)
}

/// Describes a JSON argument without echoing it (it may hold a password).
fn json_mask(text: &str) -> String {
    format!("<{} bytes>", text.len())
}

/// Parses the inline JSON object, base64-decoding it first unless it starts with `{`/`[`.
fn json_from_inline(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    use base64::Engine as _;
    let trimmed = text.trim();
    let bad = |reason: String| CliError::BadValue {
        flag: INLINE_JSON.to_string(),
        value: json_mask(text),
        reason,
    };
    let decoded;
    let json_text: &str = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        trimmed
    } else {
        let compact: String = trimmed.chars().filter(|c| !c.is_whitespace()).collect();
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let bytes = engines
            .iter()
            .find_map(|e| e.decode(compact.as_bytes()).ok())
            .ok_or_else(|| bad("neither a JSON object nor base64".to_string()))?;
        decoded = String::from_utf8(bytes)
            .map_err(|_| bad("base64 does not decode to UTF-8 text".to_string()))?;
        &decoded
    };
    json_object(json_text).map_err(bad)
}

fn json_from_file(path: &str) -> Result<serde_json::Map<String, serde_json::Value>, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| CliError::BadValue {
        flag: JSON_FILE.to_string(),
        value: path.to_string(),
        reason: format!("cannot read: {e}"),
    })?;
    json_object(&text).map_err(|reason| CliError::BadValue {
        flag: JSON_FILE.to_string(),
        value: path.to_string(),
        reason,
    })
}

fn json_object(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err("expected a JSON object of flags".to_string()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// A JSON scalar as flag text; `None` for `null` (unset).
fn json_scalar(v: &serde_json::Value) -> Result<Option<String>, ()> {
    match v {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Number(n) => Ok(Some(n.to_string())),
        serde_json::Value::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(()),
    }
}

fn collect_json(
    object: &serde_json::Map<String, serde_json::Value>,
    c: &mut Collected,
) -> Result<(), CliError> {
    for (key, value) in object {
        let spec = lookup(key.trim_start_matches('-'))
            .ok_or_else(|| CliError::Usage(format!("unknown JSON key '{key}'")))?;
        let origin = format!("{key} (JSON)");
        let shown = |v: &serde_json::Value| {
            if spec.secret {
                MASK.to_string()
            } else {
                v.to_string()
            }
        };
        match spec.kind {
            Kind::Bool | Kind::Value => {
                if spec.kind == Kind::Value && value.is_boolean() {
                    return Err(CliError::BadValue {
                        flag: origin,
                        value: shown(value),
                        reason: "expected a string or a number".to_string(),
                    });
                }
                let text = json_scalar(value).map_err(|()| CliError::BadValue {
                    flag: origin.clone(),
                    value: shown(value),
                    reason: "expected a single value".to_string(),
                })?;
                if let Some(text) = text {
                    c.set(spec, Raw { text, origin }, true)?;
                }
            }
            Kind::Pair => {
                for pair in json_pairs(spec, &origin, value)? {
                    c.push_pair(spec, pair);
                }
            }
        }
    }
    Ok(())
}

/// A repeatable pair flag in JSON: an array whose elements are `["name", "value"]` pairs or
/// strings (read like command-line tokens: `"Name: value"`, or `"name", "value"` in turn);
/// also a single string, or an object `{"name": "value"}`.
fn json_pairs(
    spec: &FlagSpec,
    origin: &str,
    value: &serde_json::Value,
) -> Result<Vec<RawPair>, CliError> {
    use serde_json::Value;
    let bad = |v: &Value| CliError::BadValue {
        flag: origin.to_string(),
        value: v.to_string(),
        reason: format!("expected {} entries", spec.metavar),
    };
    let mut out = Vec::new();
    match value {
        Value::Null => {}
        Value::Object(m) => {
            for (name, v) in m {
                let text = json_scalar(v).ok().flatten().ok_or_else(|| bad(v))?;
                out.push(RawPair {
                    name: name.clone(),
                    value: text,
                    origin: origin.to_string(),
                });
            }
        }
        Value::String(s) => {
            let tokens = [s.clone()];
            let mut i = 0;
            out.push(take_pair(spec, origin, s, &tokens[1..], &mut i)?);
        }
        Value::Array(items) => {
            let mut tokens: Vec<String> = Vec::new();
            let flush = |tokens: &mut Vec<String>, out: &mut Vec<RawPair>| {
                let mut i = 0;
                while let Some(first) = tokens.get(i).cloned() {
                    i += 1;
                    out.push(take_pair(spec, origin, &first, tokens, &mut i)?);
                }
                tokens.clear();
                Ok::<(), CliError>(())
            };
            for item in items {
                match item {
                    Value::Array(pair) => {
                        flush(&mut tokens, &mut out)?;
                        match pair.as_slice() {
                            [n, v] => {
                                let n = n.as_str().ok_or_else(|| bad(item))?;
                                let v = json_scalar(v).ok().flatten().ok_or_else(|| bad(item))?;
                                out.push(RawPair {
                                    name: n.to_string(),
                                    value: v,
                                    origin: origin.to_string(),
                                });
                            }
                            _ => return Err(bad(item)),
                        }
                    }
                    Value::String(s) => tokens.push(s.clone()),
                    _ => return Err(bad(item)),
                }
            }
            flush(&mut tokens, &mut out)?;
        }
        _ => return Err(bad(value)),
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Value parsers. Each returns a one-line reason on failure; the caller names flag and value.
// ---------------------------------------------------------------------------------------------

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected true, false, 1 or 0".to_string()),
    }
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse::<T>()
        .map_err(|_| "expected a non-negative whole number".to_string())
}

/// `http[s]://HOST[:PORT][/path…]`: scheme decides TLS, ports default to 80/443, the path,
/// query and fragment are ignored; IPv6 literals must be bracketed.
fn parse_destination(s: &str) -> Result<Destination, String> {
    let s = s.trim();
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("expected http://HOST[:PORT] or https://HOST[:PORT]")?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err("the scheme must be http or https".to_string()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("user information in the URI is not supported".to_string());
    }
    let (host, port) = if let Some(after_bracket) = authority.strip_prefix('[') {
        let (inside, after) = after_bracket
            .split_once(']')
            .ok_or("unterminated IPv6 literal")?;
        inside
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("'{inside}' is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 literal")?),
        };
        (inside, port)
    } else {
        match authority.split_once(':') {
            Some((h, p)) => {
                if p.contains(':') {
                    return Err("an IPv6 literal must be in brackets: [::1]".to_string());
                }
                (h, Some(p))
            }
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    if !authority.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!("'{host}' is not a valid host name"));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("'{p}' is not a port (1-65535)")),
            Ok(n) => n,
        },
    };
    Ok(Destination {
        tls,
        host: host.to_string(),
        port,
    })
}

/// A bind address: an IP literal (IPv6 with or without brackets) or `localhost`.
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let inner = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    inner
        .parse::<IpAddr>()
        .map_err(|_| "expected an IP address such as 0.0.0.0, :: or 127.0.0.1".to_string())
}

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or("expected HOST:PORT, e.g. 127.0.0.1:9901")?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{port}' is not a port"))?;
    Ok(SocketAddr::new(parse_ip(host)?, port))
}

/// Nanoseconds of `int.frac` units of `unit_nanos` each, without floating point.
fn decimal_nanos(int: &str, frac: &str, unit_nanos: u128) -> Option<u128> {
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = whole.checked_mul(unit_nanos)?;
    let mut scale = unit_nanos;
    for d in frac.bytes() {
        scale /= 10;
        total = total.checked_add(u128::from(d - b'0').checked_mul(scale)?)?;
    }
    Some(total)
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

fn nanos_to_duration(n: u128) -> Option<Duration> {
    let secs = u64::try_from(n / NANOS_PER_SEC).ok()?;
    let nanos = u32::try_from(n % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, nanos))
}

/// ISO-8601 as Java's `Duration.parse` takes it: `PnDTnHnMn.nS` (days, hours, minutes,
/// seconds; a fraction only on seconds). Negative durations are refused.
fn parse_iso_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("'{s}' is not an ISO-8601 duration like PT30S, PT1M, PT0.5S or P1DT2H");
    let upper = s.trim().to_ascii_uppercase();
    let body = upper.strip_prefix('P').ok_or_else(err)?;
    let (date, time) = match body.split_once('T') {
        Some((d, t)) => {
            if t.is_empty() {
                return Err(err());
            }
            (d, t)
        }
        None => (body, ""),
    };
    if date.is_empty() && time.is_empty() {
        return Err(err());
    }
    let mut total: u128 = 0;
    let mut add = |n: Option<u128>| -> Result<(), String> {
        total = n.and_then(|n| total.checked_add(n)).ok_or_else(err)?;
        Ok(())
    };
    if !date.is_empty() {
        let days = date.strip_suffix('D').ok_or_else(err)?;
        add(decimal_nanos(days, "", 86_400 * NANOS_PER_SEC))?;
    }
    let mut rest = time;
    for (unit, nanos, fraction_ok) in [
        ('H', 3_600 * NANOS_PER_SEC, false),
        ('M', 60 * NANOS_PER_SEC, false),
        ('S', NANOS_PER_SEC, true),
    ] {
        if let Some((num, after)) = rest.split_once(unit) {
            let (int, frac) = match num.split_once('.') {
                Some((i, f)) if fraction_ok && !f.is_empty() => (i, f),
                Some(_) => return Err(err()),
                None => (num, ""),
            };
            if int.is_empty() {
                return Err(err());
            }
            add(decimal_nanos(int, frac, nanos))?;
            rest = after;
        }
    }
    if !rest.is_empty() {
        return Err(err());
    }
    nanos_to_duration(total).ok_or_else(err)
}

/// Humane durations: `250ms`, `5s`, `1.5s`, `1m`, `1h`, `0`; ISO-8601 (`PT30S`) also works.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.starts_with(['P', 'p']) {
        return parse_iso_duration(t);
    }
    let err = || format!("'{t}' is not a duration like 250ms, 5s, 1m, 1h, 0 or PT30S");
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit_nanos: u128 = match unit.trim() {
        "" if num.bytes().all(|b| b == b'0') && !num.is_empty() => return Ok(Duration::ZERO),
        "ms" => 1_000_000,
        "s" => NANOS_PER_SEC,
        "m" => 60 * NANOS_PER_SEC,
        "h" => 3_600 * NANOS_PER_SEC,
        _ => return Err(err()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    decimal_nanos(int, frac, unit_nanos)
        .and_then(nanos_to_duration)
        .ok_or_else(err)
}

/// Byte sizes: a whole number with an optional unit: `B`, binary `KiB` `MiB` `GiB` `TiB`,
/// decimal `KB` `MB` `GB` `TB` (units case-insensitive).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let err = || format!("'{t}' is not a size like 1000000, 64MiB or 1GiB");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

/// `1-3,5` → `[1, 2, 3, 5]` (sorted, without duplicates).
fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    let cpu = |t: &str| -> Result<usize, String> {
        let n: usize = t
            .trim()
            .parse()
            .map_err(|_| format!("'{t}' is not a CPU number (expected e.g. 1-3,5)"))?;
        if n > MAX_CPU_INDEX {
            return Err(format!(
                "CPU {n} is beyond the highest supported ({MAX_CPU_INDEX})"
            ));
        }
        Ok(n)
    };
    for part in s.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (cpu(lo)?, cpu(hi)?);
                if lo > hi {
                    return Err(format!("range {lo}-{hi} is backwards"));
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(cpu(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// Compiles `pattern` so that `is_match` means a match of the whole input (Java `matches()`).
/// The pattern must compile on its own first, so wrapping it cannot unbalance the anchors.
fn full_match_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
    let one_line = |e: regex::Error| {
        let text = e.to_string();
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!("not a valid regular expression: {}", lines.join(" "))
    };
    regex::bytes::Regex::new(pattern).map_err(one_line)?;
    regex::bytes::Regex::new(&format!("^(?:{pattern})$")).map_err(one_line)
}

/// An HTTP header name (RFC 9110 token).
fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks that `path` is a readable file; with `pem_label`, that it holds that PEM block
/// (e.g. `CERTIFICATE`, or `PRIVATE KEY` which also matches `RSA PRIVATE KEY`).
fn check_file(path: &Path, pem_label: Option<&str>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_string());
    }
    match pem_label {
        None => std::fs::File::open(path)
            .map(drop)
            .map_err(|e| format!("cannot read: {e}")),
        Some(label) => {
            let text = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
            check_pem(&String::from_utf8_lossy(&text), label)
        }
    }
}

fn check_pem(text: &str, label: &str) -> Result<(), String> {
    let has_block = text.lines().any(|l| {
        l.trim().starts_with("-----BEGIN ") && l.trim().ends_with(&format!("{label}-----"))
    });
    if has_block {
        Ok(())
    } else {
        Err(format!("no PEM '{label}' block found"))
    }
}

/// Checks a directory path: when it exists it must be a directory (it may be created later).
fn check_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("exists and is not a directory".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot use: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka producer properties: Java properties file → librdkafka keys.
// ---------------------------------------------------------------------------------------------

/// Producer settings read from a `--kafkaPropertyFile`, already in librdkafka terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties {
    /// librdkafka key/value pairs, in file order.
    pub properties: Vec<(String, String)>,
    /// The file configures AWS MSK IAM (`sasl.mechanism=AWS_MSK_IAM`, the `IAMLoginModule`
    /// JAAS line or the IAM callback handler); librdkafka needs none of those keys, the
    /// `msk-iam` auth type implies them.
    pub msk_iam: bool,
}

/// One `key=value` entry of a properties file, with the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PropEntry {
    key: String,
    value: String,
    line: usize,
}

/// Reads Java `.properties` text: `key=value`, `key: value` or `key value`; `#`/`!` comment
/// lines; a line ending in an odd number of backslashes continues on the next line; escapes
/// `\t \n \r \f \uXXXX` and `\x` → `x`. A repeated key keeps its first position and its last
/// value (Java `Properties` semantics for the value).
fn parse_java_properties(text: &str) -> Vec<PropEntry> {
    let mut out: Vec<PropEntry> = Vec::new();
    let mut lines = text.split('\n').enumerate();
    while let Some((n, raw)) = lines.next() {
        let first = raw
            .trim_end_matches('\r')
            .trim_start_matches([' ', '\t', '\x0c']);
        if first.is_empty() || first.starts_with(['#', '!']) {
            continue;
        }
        let mut logical = String::new();
        let mut piece = first.to_string();
        loop {
            let trailing = piece.len() - piece.trim_end_matches('\\').len();
            if trailing % 2 == 1 {
                piece.pop();
                logical.push_str(&piece);
                match lines.next() {
                    Some((_, next)) => {
                        piece = next
                            .trim_end_matches('\r')
                            .trim_start_matches([' ', '\t', '\x0c'])
                            .to_string();
                    }
                    None => break,
                }
            } else {
                logical.push_str(&piece);
                break;
            }
        }
        let (key, value) = split_property(&logical);
        let entry = PropEntry {
            key: unescape_property(key),
            value: unescape_property(value),
            line: n + 1,
        };
        match out.iter_mut().find(|e| e.key == entry.key) {
            Some(existing) => existing.value = entry.value,
            None => out.push(entry),
        }
    }
    out
}

/// Splits a logical line at the first unescaped `=`, `:` or whitespace (then skips
/// whitespace and one `=`/`:`).
fn split_property(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if matches!(c, '=' | ':' | ' ' | '\t' | '\x0c') {
            key_end = i;
            break;
        }
    }
    let key = line.get(..key_end).unwrap_or("");
    let rest = line.get(key_end..).unwrap_or("");
    let rest = rest.trim_start_matches([' ', '\t', '\x0c']);
    let rest = rest
        .strip_prefix(['=', ':'])
        .unwrap_or(rest)
        .trim_start_matches([' ', '\t', '\x0c']);
    (key, rest)
}

fn unescape_property(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) if hex.len() == 4 => out.push(ch),
                    _ => {
                        out.push('u');
                        out.push_str(&hex);
                    }
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// A producer property key whose value is a secret.
fn secret_property(key: &str) -> bool {
    key.contains("password") || key == "sasl.jaas.config"
}

/// Reads and translates a producer properties file (`--kafkaPropertyFile`). Also used by
/// `inspect` for its Kafka input.
pub fn load_kafka_properties(path: &Path) -> Result<KafkaProperties, CliError> {
    load_kafka_properties_as(path, "--kafkaPropertyFile")
}

fn load_kafka_properties_as(path: &Path, flag: &str) -> Result<KafkaProperties, CliError> {
    let bad = |reason: String| CliError::BadValue {
        flag: flag.to_string(),
        value: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    translate_properties(&parse_java_properties(&text)).map_err(bad)
}

/// Java producer keys → librdkafka keys. Unknown keys are refused, naming the key.
fn translate_properties(entries: &[PropEntry]) -> Result<KafkaProperties, String> {
    let mut out = KafkaProperties::default();
    let get = |key: &str| entries.iter().find(|e| e.key == key);
    for e in entries {
        let shown = if secret_property(&e.key) {
            MASK
        } else {
            e.value.as_str()
        };
        let bad = |why: &str| format!("line {}: {} = '{}': {why}", e.line, e.key, shown);
        let v = e.value.trim();
        let number = || {
            v.parse::<u64>()
                .map(|_| v.to_string())
                .map_err(|_| bad("expected a whole number"))
        };
        let one_of = |allowed: &[&str]| {
            allowed
                .iter()
                .find(|a| a.eq_ignore_ascii_case(v))
                .map(|a| a.to_string())
                .ok_or_else(|| bad(&format!("expected one of {}", allowed.join(", "))))
        };
        let (key, value): (&str, String) = match e.key.as_str() {
            // Superseded by --kafkaConnection / --kafkaClientId, which the Java proxy also
            // applies after the file; and serializers are fixed (string key, bytes value).
            "bootstrap.servers" | "client.id" | "key.serializer" | "value.serializer" => continue,
            "acks" => ("acks", one_of(&["all", "-1", "0", "1"])?),
            "linger.ms" => ("linger.ms", number()?),
            "batch.size" => ("batch.size", number()?),
            "compression.type" => (
                "compression.type",
                one_of(&["none", "gzip", "snappy", "lz4", "zstd"])?,
            ),
            "max.request.size" => ("message.max.bytes", number()?),
            "request.timeout.ms" => ("request.timeout.ms", number()?),
            "delivery.timeout.ms" => ("message.timeout.ms", number()?),
            "retries" => ("retries", number()?),
            "retry.backoff.ms" => ("retry.backoff.ms", number()?),
            "enable.idempotence" => ("enable.idempotence", one_of(&["true", "false"])?),
            "max.in.flight.requests.per.connection" => ("max.in.flight", number()?),
            "security.protocol" => (
                "security.protocol",
                one_of(&["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"])?,
            ),
            "sasl.mechanism" => {
                if v.eq_ignore_ascii_case("AWS_MSK_IAM") {
                    out.msk_iam = true;
                    continue;
                }
                (
                    "sasl.mechanisms",
                    one_of(&["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])?,
                )
            }
            "ssl.truststore.type" | "ssl.keystore.type" => continue,
            "ssl.truststore.location" => {
                let kind = get("ssl.truststore.type").map_or("JKS", |t| t.value.trim());
                if !kind.eq_ignore_ascii_case("PEM") {
                    return Err(bad(&format!(
                        "a {kind} truststore cannot be used: convert it to PEM \
                         (keytool -exportcert -rfc) and set ssl.truststore.type=PEM"
                    )));
                }
                check_file(Path::new(v), Some("CERTIFICATE")).map_err(|r| bad(&r))?;
                ("ssl.ca.location", v.to_string())
            }
            "ssl.keystore.location" => {
                let kind = get("ssl.keystore.type").map_or("JKS", |t| t.value.trim());
                if !kind.eq_ignore_ascii_case("PEM") {
                    return Err(bad(&format!(
                        "a {kind} keystore cannot be used: convert it to PEM (certificate \
                         chain and private key in one file) and set ssl.keystore.type=PEM"
                    )));
                }
                check_file(Path::new(v), Some("CERTIFICATE")).map_err(|r| bad(&r))?;
                check_file(Path::new(v), Some("PRIVATE KEY")).map_err(|r| bad(&r))?;
                out.properties
                    .push(("ssl.certificate.location".to_string(), v.to_string()));
                ("ssl.key.location", v.to_string())
            }
            "ssl.key.password" => ("ssl.key.password", e.value.clone()),
            "ssl.endpoint.identification.algorithm" => match v.to_ascii_lowercase().as_str() {
                "https" => ("ssl.endpoint.identification.algorithm", "https".to_string()),
                "" => ("ssl.endpoint.identification.algorithm", "none".to_string()),
                _ => return Err(bad("expected https or an empty value")),
            },
            "sasl.jaas.config" => {
                if v.contains("IAMLoginModule") {
                    out.msk_iam = true;
                    continue;
                }
                if !v.contains("ScramLoginModule") {
                    return Err(bad(
                        "only ScramLoginModule (or the MSK IAMLoginModule) is supported",
                    ));
                }
                let user = jaas_option(v, "username")
                    .ok_or_else(|| bad("ScramLoginModule needs username=\"…\""))?;
                let pass = jaas_option(v, "password")
                    .ok_or_else(|| bad("ScramLoginModule needs password=\"…\""))?;
                out.properties.push(("sasl.username".to_string(), user));
                ("sasl.password", pass)
            }
            "sasl.client.callback.handler.class" => {
                if v.contains("IAM") {
                    out.msk_iam = true;
                    continue;
                }
                return Err(bad(
                    "only the MSK IAM callback handler is supported (use --kafkaAuthType msk-iam)",
                ));
            }
            _ => {
                return Err(format!(
                    "line {}: unsupported producer property '{}' (supported: bootstrap.servers, \
                     client.id, acks, linger.ms, batch.size, compression.type, max.request.size, \
                     request.timeout.ms, delivery.timeout.ms, retries, retry.backoff.ms, \
                     enable.idempotence, max.in.flight.requests.per.connection, \
                     security.protocol, sasl.mechanism, sasl.jaas.config, ssl.truststore.*, \
                     ssl.keystore.*, ssl.key.password, ssl.endpoint.identification.algorithm)",
                    e.line, e.key
                ))
            }
        };
        out.properties.push((key.to_string(), value));
    }
    Ok(out)
}

/// The value of `name="…"` in a JAAS line (backslash escapes the next character).
fn jaas_option(jaas: &str, name: &str) -> Option<String> {
    let mut search = jaas;
    loop {
        let at = search.find(name)?;
        let before_ok = at == 0
            || search[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_whitespace() || c == ';');
        let after = search.get(at + name.len()..)?.trim_start();
        if before_ok {
            if let Some(rest) = after.strip_prefix('=') {
                let rest = rest.trim_start().strip_prefix('"')?;
                let mut value = String::new();
                let mut chars = rest.chars();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next()?),
                        '"' => return Some(value),
                        _ => value.push(c),
                    }
                }
                return None;
            }
        }
        search = search.get(at + name.len()..)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Validation: raw values → Config.
// ---------------------------------------------------------------------------------------------

/// A header whose value is treated as a secret when shown (`--setHeader Authorization …`).
fn sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "cookie", "token", "secret", "key", "password"]
        .iter()
        .any(|w| n.contains(w))
}

fn bad_raw(raw: &Raw, id: Flag, reason: String) -> CliError {
    CliError::BadValue {
        flag: raw.origin.clone(),
        value: if spec(id).secret {
            MASK.to_string()
        } else {
            raw.text.clone()
        },
        reason,
    }
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

impl Collected {
    /// The flag's value parsed by `f`, or `None` when unset.
    fn typed<T>(
        &self,
        id: Flag,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, CliError> {
        match self.get(id) {
            None => Ok(None),
            Some(raw) => f(&raw.text).map(Some).map_err(|r| bad_raw(raw, id, r)),
        }
    }

    fn text(&self, id: Flag) -> Option<String> {
        self.get(id).map(|r| r.text.clone())
    }

    /// A boolean flag: unset is `false`.
    fn on(&self, id: Flag) -> Result<bool, CliError> {
        Ok(self.typed(id, parse_bool)?.unwrap_or(false))
    }

    /// The name to use for `id` in a usage message: as the user gave it, else canonical.
    fn called(&self, id: Flag) -> String {
        self.get(id)
            .map(|r| r.origin.clone())
            .unwrap_or_else(|| format!("--{}", spec(id).name))
    }

    /// The flag's path value, checked by `check`.
    fn path(
        &self,
        id: Flag,
        check: impl FnOnce(&Path) -> Result<(), String>,
    ) -> Result<Option<PathBuf>, CliError> {
        self.typed(id, |t| {
            if t.is_empty() {
                return Err("empty path".to_string());
            }
            let p = PathBuf::from(t);
            check(&p).map(|()| p)
        })
    }
}

/// `0` means off for the slow-client and keepalive timeouts.
fn optional_duration(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn one_of<T: Copy>(s: &str, table: &[(&str, T)]) -> Result<T, String> {
    let t = s.trim();
    table
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(t))
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            format!("expected one of {}", names.join(", "))
        })
}

/// Kafka auth as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthType {
    None,
    MskIam,
    ScramSha512,
    Ssl,
}

const AUTH_TYPES: [(&str, AuthType); 4] = [
    ("none", AuthType::None),
    ("msk-iam", AuthType::MskIam),
    ("scram-sha-512", AuthType::ScramSha512),
    ("ssl", AuthType::Ssl),
];

/// Structural checks (presence and conflicts): all `Usage`.
fn check_structure(c: &Collected) -> Result<(), CliError> {
    for id in [Flag::DestinationUri, Flag::ListenPort] {
        if c.get(id).is_none() {
            return Err(usage(format!("missing required flag --{}", spec(id).name)));
        }
    }
    let sinks = [
        c.get(Flag::KafkaConnection).is_some(),
        c.get(Flag::TraceDirectory).is_some(),
        c.on(Flag::NoCapture)?,
    ];
    match sinks.iter().filter(|&&s| s).count() {
        1 => {}
        0 => {
            return Err(usage(
                "choose a capture sink: one of --kafkaConnection, --traceDirectory, --noCapture",
            ))
        }
        _ => {
            return Err(usage(
                "only one of --kafkaConnection, --traceDirectory, --noCapture may be given",
            ))
        }
    }
    let cert = c.get(Flag::SslCertChainFile).is_some();
    let key = c.get(Flag::SslKeyFile).is_some();
    if cert != key {
        return Err(usage(
            "--sslCertChainFile and --sslKeyFile go together (both or neither)",
        ));
    }
    let trust_file = c.get(Flag::SslTrustCertFile).is_some();
    let trust_env = c.get(Flag::SslTrustCertPemEnvVar).is_some();
    if trust_file && trust_env {
        return Err(usage(
            "--sslTrustCertFile and --sslTrustCertPemEnvVar are mutually exclusive",
        ));
    }
    if c.on(Flag::RequireClientAuth)? && !(trust_file || trust_env) {
        return Err(usage(
            "--requireClientAuth needs --sslTrustCertFile or --sslTrustCertPemEnvVar",
        ));
    }
    if (trust_file || trust_env) && !cert {
        return Err(usage(
            "a client trust source needs client-facing TLS (--sslCertChainFile, --sslKeyFile)",
        ));
    }
    if c.get(Flag::DestinationCaFile).is_some() && c.on(Flag::InsecureDestination)? {
        return Err(usage(
            "--destination-ca-file and --insecureDestination contradict each other",
        ));
    }
    Ok(())
}

fn build_auth(c: &Collected, props: &KafkaProperties) -> Result<KafkaAuth, CliError> {
    let named = c.typed(Flag::KafkaAuthType, |t| one_of(t, &AUTH_TYPES))?;
    let mut auth = named.unwrap_or(AuthType::None);
    if c.on(Flag::EnableMskAuth)? {
        match named {
            None | Some(AuthType::MskIam) => auth = AuthType::MskIam,
            Some(_) => {
                return Err(usage(format!(
                    "{} conflicts with {} (it means msk-iam)",
                    c.called(Flag::EnableMskAuth),
                    c.called(Flag::KafkaAuthType)
                )))
            }
        }
    }
    if props.msk_iam {
        match auth {
            AuthType::None | AuthType::MskIam => auth = AuthType::MskIam,
            _ => {
                return Err(usage(format!(
                    "the Kafka property file configures MSK IAM, which conflicts with {}",
                    c.called(Flag::KafkaAuthType)
                )))
            }
        }
    }
    Ok(match auth {
        AuthType::None => KafkaAuth::None,
        AuthType::Ssl => KafkaAuth::Ssl,
        AuthType::MskIam => KafkaAuth::MskIam,
        AuthType::ScramSha512 => KafkaAuth::ScramSha512 {
            username: c.text(Flag::KafkaUserName),
            password: c.text(Flag::KafkaPassword),
        },
    })
}

fn check_brokers(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty()
        || t.split(',')
            .any(|b| b.trim().is_empty() || b.contains(char::is_whitespace))
    {
        return Err("expected HOST:PORT[,HOST:PORT…]".to_string());
    }
    Ok(t.to_string())
}

/// Kafka's legal topic names: 1-249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err("a topic name is 1-249 characters of a-z A-Z 0-9 . _ -".to_string())
    }
}

fn build_kafka(c: &Collected) -> Result<Option<KafkaConfig>, CliError> {
    let topic = c
        .typed(Flag::KafkaTopic, check_topic)?
        .unwrap_or_else(|| DEFAULT_KAFKA_TOPIC.to_string());
    let client_id = c
        .typed(Flag::KafkaClientId, |t| {
            if t.trim().is_empty() {
                Err("empty client id".to_string())
            } else {
                Ok(t.trim().to_string())
            }
        })?
        .unwrap_or_else(|| DEFAULT_KAFKA_CLIENT_ID.to_string());
    let props = match c.get(Flag::KafkaPropertyFile) {
        Some(raw) => load_kafka_properties_as(Path::new(&raw.text), &raw.origin)?,
        None => KafkaProperties::default(),
    };
    let auth = build_auth(c, &props)?;
    let brokers = c.typed(Flag::KafkaConnection, check_brokers)?;
    Ok(brokers.map(|brokers| KafkaConfig {
        brokers,
        topic,
        client_id,
        extra_properties: props.properties,
        auth,
    }))
}

fn build_server_tls(
    c: &Collected,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ServerTlsConfig>, CliError> {
    let cert = c.path(Flag::SslCertChainFile, |p| {
        check_file(p, Some("CERTIFICATE"))
    })?;
    let key = c.path(Flag::SslKeyFile, |p| check_file(p, Some("PRIVATE KEY")))?;
    let trust_file = c.path(Flag::SslTrustCertFile, |p| {
        check_file(p, Some("CERTIFICATE"))
    })?;
    let trust_env = c.typed(Flag::SslTrustCertPemEnvVar, |var| {
        let var = var.trim();
        let pem = env(var)
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("environment variable {var} is not set or is empty"))?;
        check_pem(&pem, "CERTIFICATE").map_err(|r| format!("environment variable {var}: {r}"))?;
        Ok(ClientTrust::EnvPem {
            var: var.to_string(),
            pem,
        })
    })?;
    let client_trust = trust_file.map(ClientTrust::File).or(trust_env);
    let require_client_auth = c.on(Flag::RequireClientAuth)?;
    Ok(match (cert, key) {
        (Some(cert_chain_file), Some(key_file)) => Some(ServerTlsConfig {
            cert_chain_file,
            key_file,
            client_trust,
            require_client_auth,
        }),
        _ => None,
    })
}

fn build_rules(c: &Collected) -> Result<(Vec<SetHeader>, SuppressConfig), CliError> {
    let shown = |p: &RawPair| {
        let v = if sensitive_header(&p.name) {
            MASK
        } else {
            p.value.as_str()
        };
        format!("{} {}", p.name, v)
    };
    let mut set_headers = Vec::new();
    for p in c.pairs(Flag::SetHeader) {
        use crate::http1::RewriteError;
        let reason = match crate::http1::rewrite::check_entry(&p.name, &p.value) {
            Ok(()) => None,
            Err(RewriteError::InvalidName(_)) => {
                Some(format!("'{}' is not a valid header name", p.name))
            }
            Err(RewriteError::FramingHeader(_)) => Some(format!(
                "'{}' frames the request body; rewriting it would desynchronize the connection",
                p.name
            )),
            Err(_) => Some("the value contains a control byte (only tab is allowed)".to_string()),
        };
        if let Some(reason) = reason {
            return Err(CliError::BadValue {
                flag: p.origin.clone(),
                value: shown(p),
                reason,
            });
        }
        set_headers.push(SetHeader {
            name: p.name.clone(),
            value: p.value.clone(),
        });
    }
    let mut suppress = SuppressConfig::default();
    for p in c.pairs(Flag::SuppressCaptureForHeaderMatch) {
        let bad = |reason: String| CliError::BadValue {
            flag: p.origin.clone(),
            value: format!("{} {}", p.name, p.value),
            reason,
        };
        if !valid_header_name(&p.name) {
            return Err(bad(format!("'{}' is not a valid header name", p.name)));
        }
        let re = full_match_regex(&p.value).map_err(bad)?;
        suppress
            .header_matches
            .push((p.name.to_ascii_lowercase(), re));
    }
    suppress.method = c.typed(Flag::SuppressCaptureForMethod, full_match_regex)?;
    suppress.uri_path = c.typed(Flag::SuppressCaptureForUriPath, full_match_regex)?;
    suppress.method_and_path = c.typed(Flag::SuppressMethodAndPath, full_match_regex)?;
    Ok((set_headers, suppress))
}

fn build_config(c: &Collected, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, CliError> {
    check_structure(c)?;
    for id in [
        Flag::OtelMetricsCollectorEndpoint,
        Flag::OtelTraceCollectorEndpoint,
    ] {
        c.typed(id, |_| Err::<(), _>(OTEL_UNSUPPORTED.to_string()))?;
    }
    let destination = c
        .typed(Flag::DestinationUri, parse_destination)?
        .ok_or_else(|| usage("missing required flag --destinationUri"))?;
    let port = c
        .typed(Flag::ListenPort, |t| {
            t.trim()
                .parse::<u16>()
                .map_err(|_| "expected a port 0-65535".to_string())
        })?
        .ok_or_else(|| usage("missing required flag --listenPort"))?;
    let listen = match c.typed(Flag::ListenAddress, parse_ip)? {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        ],
    };

    let kafka = build_kafka(c)?;
    let trace_dir = c.path(Flag::TraceDirectory, check_dir)?;
    let max_file_bytes = c
        .typed(Flag::TraceFileMaxBytes, |t| {
            parse_size(t).and_then(|n| {
                if n == 0 {
                    Err("must be more than 0".to_string())
                } else {
                    Ok(n)
                }
            })
        })?
        .unwrap_or(DEFAULT_TRACE_FILE_MAX_BYTES);
    let sink = if let Some(k) = kafka {
        SinkConfig::Kafka(k)
    } else if let Some(dir) = trace_dir {
        SinkConfig::File(FileSinkConfig {
            dir,
            max_file_bytes,
        })
    } else {
        SinkConfig::None
    };

    let max_traffic_buffer_size = c
        .typed(Flag::MaxTrafficBufferSize, |t| {
            let n: usize = parse_number(t)?;
            if n < MIN_MAX_TRAFFIC_BUFFER_SIZE {
                return Err(format!("must be at least {MIN_MAX_TRAFFIC_BUFFER_SIZE}"));
            }
            Ok(n)
        })?
        .unwrap_or(crate::config::DEFAULT_MAX_TRAFFIC_BUFFER_SIZE);
    let num_threads = c.typed(Flag::NumThreads, parse_number)?.unwrap_or(0);
    let destination_pool_size = c
        .typed(Flag::DestinationConnectionPoolSize, parse_number)?
        .unwrap_or(0);
    let destination_pool_timeout = c
        .typed(Flag::DestinationConnectionPoolTimeout, parse_duration)?
        .unwrap_or(DEFAULT_POOL_TIMEOUT);

    let server_tls = build_server_tls(c, env)?;
    let insecure_destination = c.on(Flag::InsecureDestination)?;
    let destination_ca_file = c.path(Flag::DestinationCaFile, |p| {
        check_file(p, Some("CERTIFICATE"))
    })?;
    if destination_ca_file.is_some() && !destination.tls {
        return Err(usage(
            "--destination-ca-file needs an https:// --destinationUri",
        ));
    }
    let (set_headers, suppress) = build_rules(c)?;

    let admin_listen = c
        .typed(Flag::AdminListen, |t| {
            if t.trim().eq_ignore_ascii_case("off") {
                Ok(None)
            } else {
                parse_socket_addr(t).map(Some)
            }
        })?
        .unwrap_or(Some(DEFAULT_ADMIN_LISTEN));
    let max_connections = c.typed(Flag::MaxConnections, |t| {
        let n: usize = parse_number(t)?;
        if n == 0 {
            return Err("must be at least 1 (leave it out for no limit)".to_string());
        }
        Ok(n)
    })?;
    let spool_dir = c.path(Flag::SpoolDir, check_dir)?;
    let spool_max_bytes = c
        .typed(Flag::SpoolMaxBytes, |t| {
            parse_size(t).and_then(|n| {
                if n == 0 {
                    Err("must be more than 0".to_string())
                } else {
                    Ok(n)
                }
            })
        })?
        .unwrap_or(crate::config::DEFAULT_SPOOL_MAX_BYTES);
    // Orchestration metadata: accepted, never used (the Java proxy ignores them too).
    let _ = (c.get(Flag::KafkaListenerName), c.get(Flag::KafkaSecretName));

    Ok(Config {
        destination,
        listen,
        sink,
        max_traffic_buffer_size,
        num_threads,
        cpu_list: c.typed(Flag::CpuList, parse_cpu_list)?,
        io_driver: c
            .typed(Flag::IoDriver, |t| {
                one_of(
                    t,
                    &[
                        ("auto", IoDriver::Auto),
                        ("uring", IoDriver::Uring),
                        ("legacy", IoDriver::Legacy),
                        ("epoll", IoDriver::Legacy),
                    ],
                )
            })?
            .unwrap_or(IoDriver::Auto),
        admin_listen,
        capture_flush_interval: c
            .typed(Flag::CaptureFlushInterval, parse_duration)?
            .unwrap_or(DEFAULT_CAPTURE_FLUSH_INTERVAL),
        kafka_ack_timeout: c
            .typed(Flag::KafkaAckTimeout, parse_duration)?
            .unwrap_or(DEFAULT_KAFKA_ACK_TIMEOUT),
        capture_failure_policy: c
            .typed(Flag::CaptureFailurePolicy, |t| {
                one_of(
                    t,
                    &[
                        ("forward", FailurePolicy::Forward),
                        ("reject", FailurePolicy::Reject),
                    ],
                )
            })?
            .unwrap_or(FailurePolicy::Forward),
        max_connections,
        client_idle_timeout: c
            .typed(Flag::ClientIdleTimeout, parse_duration)?
            .unwrap_or(DEFAULT_CLIENT_IDLE_TIMEOUT)
            .pipe(optional_duration),
        request_body_timeout: c
            .typed(Flag::RequestBodyTimeout, parse_duration)?
            .unwrap_or(DEFAULT_REQUEST_BODY_TIMEOUT)
            .pipe(optional_duration),
        request_head_timeout: c
            .typed(Flag::RequestHeadTimeout, parse_duration)?
            .unwrap_or(DEFAULT_REQUEST_HEAD_TIMEOUT)
            .pipe(optional_duration),
        tcp_keepalive: c
            .typed(Flag::TcpKeepalive, parse_duration)?
            .unwrap_or(DEFAULT_TCP_KEEPALIVE)
            .pipe(optional_duration),
        drain_timeout: c
            .typed(Flag::DrainTimeout, parse_duration)?
            .unwrap_or(DEFAULT_DRAIN_TIMEOUT),
        log_format: c
            .typed(Flag::LogFormat, |t| {
                one_of(t, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
            })?
            .unwrap_or(LogFormat::Text),
        suppress,
        set_headers,
        server_tls,
        insecure_destination,
        destination_ca_file,
        destination_pool_size,
        destination_pool_timeout,
        spool_dir,
        spool_max_bytes,
    })
}

/// `x.pipe(f)` = `f(x)`, to keep the field list above readable.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for Duration {}

/// Parses the command line (without argv[0]) over a snapshot of the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> {
    if args.first().map(String::as_str) == Some("inspect") {
        return parse_inspect(args.get(1..).unwrap_or(&[]));
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help(help_text()));
    }
    if args.iter().any(|a| a == "--version") {
        return Ok(Command::Version(version_text()));
    }
    let mut c = Collected::new();
    collect_env(&mut c, env)?;
    if args.iter().any(|a| is_json_flag(a)) {
        collect_json_mode(args, &mut c)?;
    } else {
        collect_args(args, &mut c)?;
    }
    let check = c.on(Flag::CheckConfig)?;
    let cfg = Box::new(build_config(&c, env)?);
    Ok(if check {
        Command::CheckConfig(cfg)
    } else {
        Command::Run(cfg)
    })
}

/// `capture-proxy --version` output.
fn version_text() -> String {
    format!("capture-proxy {}\n", env!("CARGO_PKG_VERSION"))
}

// ---------------------------------------------------------------------------------------------
// `inspect` subcommand.
// ---------------------------------------------------------------------------------------------

/// Flags of `capture-proxy inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InspectFlag {
    TraceDirectory,
    KafkaConnection,
    KafkaTopic,
    FromOffsets,
    KafkaPropertyFile,
    Json,
    Summary,
}

fn inspect_flag(name: &str) -> Option<InspectFlag> {
    match name {
        "from-offsets" => return Some(InspectFlag::FromOffsets),
        "json" => return Some(InspectFlag::Json),
        "summary" => return Some(InspectFlag::Summary),
        _ => {}
    }
    match lookup(name)?.id {
        Flag::TraceDirectory => Some(InspectFlag::TraceDirectory),
        Flag::KafkaConnection => Some(InspectFlag::KafkaConnection),
        Flag::KafkaTopic => Some(InspectFlag::KafkaTopic),
        Flag::KafkaPropertyFile => Some(InspectFlag::KafkaPropertyFile),
        _ => None,
    }
}

fn parse_inspect(args: &[String]) -> Result<Command, CliError> {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help(inspect_help_text()));
    }
    let mut seen: Vec<InspectFlag> = Vec::new();
    let mut values: Vec<(InspectFlag, Raw)> = Vec::new();
    let mut json = false;
    let mut quiet = false;
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        i += 1;
        let body = arg
            .strip_prefix("--")
            .ok_or_else(|| usage(format!("inspect: unexpected argument '{}'", flag_word(arg))))?;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let f =
            inspect_flag(name).ok_or_else(|| usage(format!("inspect: unknown flag --{name}")))?;
        if seen.contains(&f) {
            return Err(usage(format!("inspect: --{name} given more than once")));
        }
        seen.push(f);
        let origin = format!("--{name}");
        match f {
            InspectFlag::Json | InspectFlag::Summary => {
                let on =
                    parse_bool(inline.unwrap_or("true")).map_err(|reason| CliError::BadValue {
                        flag: origin.clone(),
                        value: inline.unwrap_or("").to_string(),
                        reason,
                    })?;
                if f == InspectFlag::Json {
                    json = on;
                } else {
                    quiet = on;
                }
            }
            _ => {
                let text = match inline {
                    Some(v) => v.to_string(),
                    None => {
                        let v = args
                            .get(i)
                            .filter(|t| !t.starts_with("--"))
                            .ok_or_else(|| usage(format!("inspect: {origin} needs a value")))?;
                        i += 1;
                        v.clone()
                    }
                };
                values.push((f, Raw { text, origin }));
            }
        }
    }
    let get = |f: InspectFlag| values.iter().find(|(g, _)| *g == f).map(|(_, r)| r);
    let dir = get(InspectFlag::TraceDirectory);
    let brokers = get(InspectFlag::KafkaConnection);
    if dir.is_some() == brokers.is_some() {
        return Err(usage(
            "inspect needs exactly one input: --traceDirectory DIR or --kafkaConnection BROKERS",
        ));
    }
    if dir.is_some() {
        for f in [
            InspectFlag::KafkaTopic,
            InspectFlag::FromOffsets,
            InspectFlag::KafkaPropertyFile,
        ] {
            if let Some(r) = get(f) {
                return Err(usage(format!(
                    "inspect: {} only applies with --kafkaConnection",
                    r.origin
                )));
            }
        }
    }
    let bad = |r: &Raw, reason: String| CliError::BadValue {
        flag: r.origin.clone(),
        value: r.text.clone(),
        reason,
    };
    let trace_directory = match dir {
        Some(r) => {
            let p = PathBuf::from(&r.text);
            match std::fs::metadata(&p) {
                Ok(m) if m.is_dir() => Some(p),
                Ok(_) => return Err(bad(r, "not a directory".to_string())),
                Err(e) => return Err(bad(r, format!("cannot read: {e}"))),
            }
        }
        None => None,
    };
    let kafka_connection = match brokers {
        Some(r) => Some(check_brokers(&r.text).map_err(|e| bad(r, e))?),
        None => None,
    };
    let kafka_topic = match get(InspectFlag::KafkaTopic) {
        Some(r) => check_topic(&r.text).map_err(|e| bad(r, e))?,
        None => DEFAULT_KAFKA_TOPIC.to_string(),
    };
    let kafka_property_file = match get(InspectFlag::KafkaPropertyFile) {
        Some(r) => {
            let p = PathBuf::from(&r.text);
            check_file(&p, None).map_err(|e| bad(r, e))?;
            Some(p)
        }
        None => None,
    };
    let from_offsets = match get(InspectFlag::FromOffsets) {
        Some(r) if r.text.trim().is_empty() => {
            return Err(bad(r, "empty offset specification".to_string()))
        }
        Some(r) => Some(r.text.trim().to_string()),
        None => None,
    };
    Ok(Command::Inspect(InspectArgs {
        trace_directory,
        kafka_connection,
        kafka_topic,
        json,
        from_offsets,
        kafka_property_file,
        quiet,
    }))
}

// ---------------------------------------------------------------------------------------------
// Help text.
// ---------------------------------------------------------------------------------------------

/// `--help` fits this many columns.
const HELP_WIDTH: usize = 100;
/// Column where flag descriptions start.
const HELP_DESC_COL: usize = 38;

/// Appends `text` word-wrapped to `HELP_WIDTH`, continuation lines indented by `indent`;
/// the first line continues whatever `out`'s current line holds.
fn wrap_into(out: &mut String, text: &str, indent: usize) {
    let mut col = out.len() - out.rfind('\n').map_or(0, |p| p + 1);
    let mut first = true;
    for word in text.split_whitespace() {
        if !first && col + 1 + word.len() > HELP_WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(indent));
            col = indent;
        } else if !first {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
        first = false;
    }
    out.push('\n');
}

fn help_text() -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "capture-proxy {}: HTTP/1.1 capture proxy for the OpenSearch Migration Assistant\n\n",
        env!("CARGO_PKG_VERSION")
    ));
    out.push_str(
        "Usage:\n  capture-proxy --destinationUri URI --listenPort PORT\n                \
         (--kafkaConnection BROKERS | --traceDirectory DIR | --noCapture) [FLAGS]\n  \
         capture-proxy ---INLINE-JSON '<JSON object or its base64>' | ---JSON-FILE PATH\n  \
         capture-proxy inspect --help\n  capture-proxy --help | --version\n\n",
    );
    wrap_into(
        &mut out,
        "Every Java flag also has a kebab-case spelling (--destinationUri = --destination-uri). \
         Values may be given as --flag VALUE or --flag=VALUE. Every single-valued flag may come \
         from the environment as CAPTURE_PROXY_<UPPER_SNAKE_NAME> (e.g. CAPTURE_PROXY_LISTEN_PORT); \
         command-line flags override it. The JSON form takes the flag names without dashes as keys \
         and replaces the other command-line flags. Exit status: 2 for a usage error, 3 for a bad \
         value.",
        0,
    );
    for (group, title) in GROUPS {
        out.push('\n');
        out.push_str(title);
        out.push_str(":\n");
        for s in FLAGS.iter().filter(|s| s.group == group) {
            let mut left = format!("  --{}", s.name);
            for a in s.aliases {
                left.push_str(&format!(", --{a}"));
            }
            if !s.metavar.is_empty() {
                left.push(' ');
                left.push_str(s.metavar);
            }
            out.push_str(&left);
            if left.len() + 2 <= HELP_DESC_COL {
                out.push_str(&" ".repeat(HELP_DESC_COL - left.len()));
            } else {
                out.push('\n');
                out.push_str(&" ".repeat(HELP_DESC_COL));
            }
            let mut desc = s.help.to_string();
            if !s.default.is_empty() {
                desc.push_str(&format!(" [default: {}]", s.default));
            }
            wrap_into(&mut out, &desc, HELP_DESC_COL);
        }
    }
    out.push_str(
        "\nDurations: 250ms, 5s, 1m, 1h, 0 or ISO-8601 (PT30S). Sizes: 1000000, 64MiB, 1GiB.\n",
    );
    out
}

fn inspect_help_text() -> String {
    let mut out = String::from(
        "Usage: capture-proxy inspect (--traceDirectory DIR | --kafkaConnection BROKERS\n       \
         [--kafkaTopic TOPIC] [--from-offsets SPEC] [--kafkaPropertyFile FILE])\n       \
         [--json] [--summary]\n\n",
    );
    wrap_into(
        &mut out,
        "Reads captured records back, prints them decoded (text, or JSON lines with --json), \
         and verifies every connection: records numbered 1..N without gaps, one final record, \
         segments closed, request markers. --summary prints only the counts and problems. \
         Exit status 0 when everything checks out, 1 when a problem was found.",
        0,
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Effective configuration (`--check-config`).
// ---------------------------------------------------------------------------------------------

/// A duration the way our flags take it back: `0`, `250ms`, `5s`, `1m`, `1h`, `1.5s`.
fn fmt_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0".to_string();
    }
    for (unit, per) in [
        ("h", 3_600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
    ] {
        if nanos.checked_rem(per) == Some(0) {
            return format!("{}{unit}", nanos / per);
        }
    }
    let frac = format!("{:09}", d.subsec_nanos());
    format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
}

fn fmt_opt_duration(d: Option<Duration>) -> String {
    d.map_or_else(|| "off".to_string(), fmt_duration)
}

/// The pattern as the user wrote it (without the full-match wrapper).
fn regex_source(re: &regex::bytes::Regex) -> &str {
    let s = re.as_str();
    s.strip_prefix("^(?:")
        .and_then(|x| x.strip_suffix(")$"))
        .unwrap_or(s)
}

fn fmt_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// One `key = value` line per setting, in a fixed order; secrets are shown as `****`.
pub fn render_effective(cfg: &Config) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: String| lines.push((k.to_string(), v));
    let d = &cfg.destination;
    put(
        "destination-uri",
        format!(
            "{}://{}:{}",
            if d.tls { "https" } else { "http" },
            fmt_host(&d.host),
            d.port
        ),
    );
    let listen: Vec<String> = cfg.listen.iter().map(SocketAddr::to_string).collect();
    put("listen", listen.join(", "));
    match &cfg.sink {
        SinkConfig::None => put("sink", "none (--noCapture)".to_string()),
        SinkConfig::File(f) => {
            put("sink", "trace files".to_string());
            put("trace-directory", f.dir.display().to_string());
            put("trace-file-max-bytes", f.max_file_bytes.to_string());
        }
        SinkConfig::Kafka(k) => {
            put("sink", "kafka".to_string());
            put("kafka-connection", k.brokers.clone());
            put("kafka-topic", k.topic.clone());
            put("kafka-client-id", k.client_id.clone());
            let auth = match &k.auth {
                KafkaAuth::None => "none",
                KafkaAuth::Ssl => "ssl",
                KafkaAuth::MskIam => "msk-iam",
                KafkaAuth::ScramSha512 { .. } => "scram-sha-512",
            };
            put("kafka-auth-type", auth.to_string());
            if let KafkaAuth::ScramSha512 { username, password } = &k.auth {
                put(
                    "kafka-user-name",
                    username.clone().unwrap_or_else(|| "(unset)".to_string()),
                );
                put(
                    "kafka-password",
                    password.as_ref().map_or("(unset)", |_| MASK).to_string(),
                );
            }
            for (key, value) in &k.extra_properties {
                let shown = if secret_property(key) {
                    MASK.to_string()
                } else {
                    value.clone()
                };
                put(&format!("kafka-property.{key}"), shown);
            }
        }
    }
    put(
        "max-traffic-buffer-size",
        cfg.max_traffic_buffer_size.to_string(),
    );
    put("num-threads", cfg.num_threads.to_string());
    put(
        "cpu-list",
        cfg.cpu_list.as_ref().map_or_else(
            || "all allowed".to_string(),
            |l| l.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
        ),
    );
    let io = match cfg.io_driver {
        IoDriver::Auto => "auto",
        IoDriver::Uring => "uring",
        IoDriver::Legacy => "legacy",
    };
    put("io-driver", io.to_string());
    put(
        "admin-listen",
        cfg.admin_listen
            .map_or_else(|| "off".to_string(), |a| a.to_string()),
    );
    put(
        "capture-flush-interval",
        fmt_duration(cfg.capture_flush_interval),
    );
    put("kafka-ack-timeout", fmt_duration(cfg.kafka_ack_timeout));
    let policy = match cfg.capture_failure_policy {
        FailurePolicy::Forward => "forward",
        FailurePolicy::Reject => "reject",
    };
    put("capture-failure-policy", policy.to_string());
    put(
        "spool-dir",
        cfg.spool_dir
            .as_ref()
            .map_or_else(|| "none".to_string(), |p| p.display().to_string()),
    );
    put("spool-max-bytes", cfg.spool_max_bytes.to_string());
    put(
        "max-connections",
        cfg.max_connections
            .map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
    );
    put(
        "client-idle-timeout",
        fmt_opt_duration(cfg.client_idle_timeout),
    );
    put(
        "request-head-timeout",
        fmt_opt_duration(cfg.request_head_timeout),
    );
    put(
        "request-body-timeout",
        fmt_opt_duration(cfg.request_body_timeout),
    );
    put("tcp-keepalive", fmt_opt_duration(cfg.tcp_keepalive));
    put("drain-timeout", fmt_duration(cfg.drain_timeout));
    let log = match cfg.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    put("log-format", log.to_string());
    put("insecure-destination", cfg.insecure_destination.to_string());
    put(
        "destination-ca-file",
        cfg.destination_ca_file
            .as_ref()
            .map_or_else(|| "system roots".to_string(), |p| p.display().to_string()),
    );
    put(
        "destination-connection-pool-size",
        cfg.destination_pool_size.to_string(),
    );
    put(
        "destination-connection-pool-timeout",
        fmt_duration(cfg.destination_pool_timeout),
    );
    match &cfg.server_tls {
        None => put("client-tls", "off".to_string()),
        Some(t) => {
            put(
                "ssl-cert-chain-file",
                t.cert_chain_file.display().to_string(),
            );
            put("ssl-key-file", t.key_file.display().to_string());
            match &t.client_trust {
                None => put("client-trust", "none".to_string()),
                Some(ClientTrust::File(p)) => put("ssl-trust-cert-file", p.display().to_string()),
                Some(ClientTrust::EnvPem { var, .. }) => {
                    put("ssl-trust-cert-pem-env-var", var.clone())
                }
            }
            put("require-client-auth", t.require_client_auth.to_string());
        }
    }
    for h in &cfg.set_headers {
        let v = if sensitive_header(&h.name) {
            MASK
        } else {
            h.value.as_str()
        };
        put("set-header", format!("{}: {v}", h.name));
    }
    for (name, re) in &cfg.suppress.header_matches {
        put(
            "suppress-capture-for-header-match",
            format!("{name} {}", regex_source(re)),
        );
    }
    for (key, re) in [
        ("suppress-capture-for-method", &cfg.suppress.method),
        ("suppress-capture-for-uri-path", &cfg.suppress.uri_path),
        ("suppress-method-and-path", &cfg.suppress.method_and_path),
    ] {
        put(key, re.as_ref().map_or("none", regex_source).to_string());
    }
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&k);
        out.push_str(" = ");
        out.push_str(&v);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write as _;

    const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
    const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n";

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn run_env(a: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(&strings(a), &move |k: &str| map.get(k).cloned())
    }

    fn cfg_env(a: &[&str], env: &[(&str, &str)]) -> Config {
        match run_env(a, env) {
            Ok(Command::Run(c)) => *c,
            Ok(_) => panic!("not a Run command for {a:?}"),
            Err(e) => panic!("{a:?}: {e}"),
        }
    }

    fn cfg(a: &[&str]) -> Config {
        cfg_env(a, &[])
    }

    fn err_env(a: &[&str], env: &[(&str, &str)]) -> CliError {
        match run_env(a, env) {
            Ok(_) => panic!("{a:?} unexpectedly parsed"),
            Err(e) => e,
        }
    }

    fn err(a: &[&str]) -> CliError {
        err_env(a, &[])
    }

    /// A usage error (exit 2) whose message contains `needle`.
    fn usage_err(a: &[&str], needle: &str) {
        let e = err(a);
        assert_eq!(e.exit_code(), 2, "{a:?}: {e}");
        assert!(matches!(e, CliError::Usage(_)));
        assert!(
            e.to_string().contains(needle),
            "{a:?}: '{e}' lacks '{needle}'"
        );
    }

    /// A bad-value error (exit 3) naming `flag`.
    fn bad_err(a: &[&str], flag: &str) -> CliError {
        let e = err(a);
        assert_eq!(e.exit_code(), 3, "{a:?}: {e}");
        match &e {
            CliError::BadValue { flag: f, .. } => assert_eq!(f, flag, "{e}"),
            CliError::Usage(_) => panic!("{a:?}: expected BadValue, got {e}"),
        }
        e
    }

    const DEST: [&str; 4] = [
        "--destinationUri",
        "http://localhost:9200",
        "--listenPort",
        "9200",
    ];

    fn base(extra: &[&str]) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = DEST.to_vec();
        v.push("--noCapture");
        for e in extra {
            v.push(Box::leak(e.to_string().into_boxed_str()));
        }
        v
    }

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// Runs `args` once with each spelling of `flag` (camelCase, kebab-case and, when the
    /// flag takes one value, `--flag=value`), checking the result each time.
    fn both(flag: &str, values: &[&str], rest: &[&str], check: impl Fn(&Config)) {
        let spellings = [flag.to_string(), kebab(flag)];
        assert_ne!(
            spellings[0], spellings[1],
            "{flag} has no distinct kebab spelling"
        );
        for name in spellings {
            let mut a: Vec<String> = strings(rest);
            a.push(format!("--{name}"));
            a.extend(strings(values));
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            check(&cfg(&refs));
            if values.len() == 1 {
                let mut a: Vec<String> = strings(rest);
                a.push(format!("--{name}={}", values[0]));
                let refs: Vec<&str> = a.iter().map(String::as_str).collect();
                check(&cfg(&refs));
            }
        }
    }

    #[test]
    fn table_is_consistent() {
        assert_eq!(FLAGS.len(), 50);
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

    #[test]
    fn required_and_sink_flags_both_spellings() {
        both(
            "destinationUri",
            &["https://example.com/some/path"],
            &["--listenPort", "1", "--noCapture"],
            |c| {
                assert_eq!(
                    c.destination,
                    Destination {
                        tls: true,
                        host: "example.com".into(),
                        port: 443
                    }
                );
            },
        );
        both(
            "listenPort",
            &["0"],
            &["--destinationUri", "http://h", "--noCapture"],
            |c| {
                assert!(c.listen.iter().all(|a| a.port() == 0));
            },
        );
        for flag in ["kafkaConnection", "kafkaBrokers"] {
            both(flag, &["b1:9092,b2:9092"], &DEST, |c| match &c.sink {
                SinkConfig::Kafka(k) => {
                    assert_eq!(k.brokers, "b1:9092,b2:9092");
                    assert_eq!(k.topic, DEFAULT_KAFKA_TOPIC);
                    assert_eq!(k.client_id, DEFAULT_KAFKA_CLIENT_ID);
                    assert_eq!(k.auth, KafkaAuth::None);
                }
                other => panic!("{other:?}"),
            });
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        both("traceDirectory", &[dir], &DEST, |c| match &c.sink {
            SinkConfig::File(f) => {
                assert_eq!(f.dir, tmp.path());
                assert_eq!(f.max_file_bytes, DEFAULT_TRACE_FILE_MAX_BYTES);
            }
            other => panic!("{other:?}"),
        });
        both("noCapture", &[], &DEST, |c| {
            assert!(matches!(c.sink, SinkConfig::None))
        });
        let c = cfg(&[&DEST[..], &["--noCapture=true"]].concat());
        assert!(matches!(c.sink, SinkConfig::None));
    }

    fn kafka(c: &Config) -> &KafkaConfig {
        match &c.sink {
            SinkConfig::Kafka(k) => k,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kafka_flags_both_spellings() {
        let k = [&DEST[..], &["--kafkaConnection", "b:9092"]].concat();
        both("kafkaTopic", &["my-topic"], &k, |c| {
            assert_eq!(kafka(c).topic, "my-topic")
        });
        both("kafkaClientId", &["me"], &k, |c| {
            assert_eq!(kafka(c).client_id, "me")
        });
        let tmp = tempfile::tempdir().unwrap();
        let props = write(tmp.path(), "p.properties", "acks=1\nlinger.ms = 20\n");
        for flag in ["kafkaPropertyFile", "kafkaConfigFile"] {
            both(flag, &[&props], &k, |c| {
                assert_eq!(
                    kafka(c).extra_properties,
                    vec![
                        ("acks".into(), "1".into()),
                        ("linger.ms".into(), "20".into())
                    ]
                );
            });
        }
        for (v, want) in [
            ("none", KafkaAuth::None),
            ("ssl", KafkaAuth::Ssl),
            ("msk-iam", KafkaAuth::MskIam),
            (
                "scram-sha-512",
                KafkaAuth::ScramSha512 {
                    username: None,
                    password: None,
                },
            ),
        ] {
            both("kafkaAuthType", &[v], &k, |c| {
                assert_eq!(kafka(c).auth, want)
            });
        }
        both("enableMSKAuth", &[], &k, |c| {
            assert_eq!(kafka(c).auth, KafkaAuth::MskIam)
        });
        let c = cfg(&[&k[..], &["--enableMSKAuth", "--kafkaAuthType", "msk-iam"]].concat());
        assert_eq!(kafka(&c).auth, KafkaAuth::MskIam);
        let scram = [&k[..], &["--kafkaAuthType", "scram-sha-512"]].concat();
        both("kafkaUserName", &["alice"], &scram, |c| {
            assert_eq!(
                kafka(c).auth,
                KafkaAuth::ScramSha512 {
                    username: Some("alice".into()),
                    password: None
                }
            );
        });
        both("kafkaPassword", &["s3cret"], &scram, |c| {
            assert_eq!(
                kafka(c).auth,
                KafkaAuth::ScramSha512 {
                    username: None,
                    password: Some("s3cret".into())
                }
            );
        });
        both("kafkaListenerName", &["L"], &k, |_| {});
        both("kafkaSecretName", &["S"], &k, |_| {});
    }

    #[test]
    fn tuning_and_tls_flags_both_spellings() {
        let b = base(&[]);
        both("maxTrafficBufferSize", &["2048"], &b, |c| {
            assert_eq!(c.max_traffic_buffer_size, 2048);
            assert_eq!(c.max_record_bytes(), 1548);
        });
        both("numThreads", &["4"], &b, |c| assert_eq!(c.num_threads, 4));
        both("destinationConnectionPoolSize", &["3"], &b, |c| {
            assert_eq!(c.destination_pool_size, 3)
        });
        both("destinationConnectionPoolTimeout", &["PT1M"], &b, |c| {
            assert_eq!(c.destination_pool_timeout, Duration::from_secs(60))
        });
        both("insecureDestination", &[], &b, |c| {
            assert!(c.insecure_destination)
        });

        let tmp = tempfile::tempdir().unwrap();
        let cert = write(tmp.path(), "cert.pem", CERT_PEM);
        let key = write(tmp.path(), "key.pem", KEY_PEM);
        let ca = write(tmp.path(), "ca.pem", CERT_PEM);
        both(
            "sslCertChainFile",
            &[&cert],
            &base(&["--sslKeyFile", &key]),
            |c| {
                let t = c.server_tls.as_ref().unwrap();
                assert_eq!(t.cert_chain_file.to_str(), Some(cert.as_str()));
                assert_eq!(t.key_file.to_str(), Some(key.as_str()));
                assert!(t.client_trust.is_none() && !t.require_client_auth);
            },
        );
        let tls = base(&["--sslCertChainFile", &cert, "--sslKeyFile", &key]);
        both(
            "sslKeyFile",
            &[&key],
            &base(&["--sslCertChainFile", &cert]),
            |c| assert!(c.server_tls.is_some()),
        );
        both("sslTrustCertFile", &[&ca], &tls, |c| {
            let t = c.server_tls.as_ref().unwrap();
            assert!(
                matches!(&t.client_trust, Some(ClientTrust::File(p)) if p.to_str() == Some(ca.as_str()))
            );
        });
        for name in ["sslTrustCertPemEnvVar", "ssl-trust-cert-pem-env-var"] {
            let flag = format!("--{name}");
            let a = [&tls[..], &[flag.as_str(), "MY_CA"]].concat();
            let c = cfg_env(&a, &[("MY_CA", CERT_PEM)]);
            let t = c.server_tls.unwrap();
            match t.client_trust {
                Some(ClientTrust::EnvPem { var, pem }) => {
                    assert_eq!(var, "MY_CA");
                    assert_eq!(pem, CERT_PEM);
                }
                other => panic!("{other:?}"),
            }
        }
        both(
            "requireClientAuth",
            &[],
            &[&tls[..], &["--sslTrustCertFile", &ca]].concat(),
            |c| assert!(c.server_tls.as_ref().unwrap().require_client_auth),
        );
    }

    #[test]
    fn rule_flags_both_spellings() {
        let b = base(&[]);
        both("setHeader", &["Host", "example.com"], &b, |c| {
            assert_eq!(
                c.set_headers,
                vec![SetHeader {
                    name: "Host".into(),
                    value: "example.com".into()
                }]
            );
        });
        both("setHeader", &["X-Test: a b:c"], &b, |c| {
            assert_eq!(
                c.set_headers,
                vec![SetHeader {
                    name: "X-Test".into(),
                    value: "a b:c".into()
                }]
            );
        });
        both(
            "suppressCaptureForHeaderMatch",
            &["User-Agent", "ELB-HealthChecker/.*"],
            &b,
            |c| {
                let (name, re) = &c.suppress.header_matches[0];
                assert_eq!(name, "user-agent");
                assert!(re.is_match(b"ELB-HealthChecker/2.0"));
                assert!(!re.is_match(b"curl ELB-HealthChecker/2.0"));
            },
        );
        both("suppressCaptureForMethod", &["GET|HEAD"], &b, |c| {
            let re = c.suppress.method.as_ref().unwrap();
            assert!(re.is_match(b"GET") && re.is_match(b"HEAD") && !re.is_match(b"GETX"));
        });
        both("suppressCaptureForUriPath", &["/_cat/.*"], &b, |c| {
            let re = c.suppress.uri_path.as_ref().unwrap();
            assert!(re.is_match(b"/_cat/indices?v") && !re.is_match(b"/x/_cat/indices"));
        });
        both("suppressMethodAndPath", &["GET /health"], &b, |c| {
            let re = c.suppress.method_and_path.as_ref().unwrap();
            assert!(re.is_match(b"GET /health") && !re.is_match(b"GET /healthz"));
        });
    }

    #[test]
    fn setheader_forms_and_repeats() {
        let c = cfg(&base(&[
            "--setHeader",
            "Host",
            "a",
            "--setHeader",
            "X-A: 1",
            "--setHeader=X-B:2",
            "--noCapture=true",
        ])
        .into_iter()
        .filter(|a| *a != "--noCapture=true")
        .collect::<Vec<_>>());
        let got: Vec<(&str, &str)> = c
            .set_headers
            .iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect();
        assert_eq!(got, vec![("Host", "a"), ("X-A", "1"), ("X-B", "2")]);
        // A name followed by another flag (or nothing) needs the colon form.
        usage_err(
            &base(&["--setHeader", "Host", "--numThreads", "1"]),
            "--setHeader needs",
        );
        usage_err(&base(&["--setHeader", "Host"]), "--setHeader needs");
        // Values the destination could not parse, and framing headers, are refused (exit 3).
        for (args, needle) in [
            (
                &["--setHeader", "Content-Length: 5"][..],
                "frames the request body",
            ),
            (
                &["--setHeader", "transfer-encoding", "chunked"][..],
                "frames the request body",
            ),
            (&["--setHeader", "X-A", "a\u{1}b"][..], "control byte"),
        ] {
            let e = err(&base(args));
            assert_eq!(e.exit_code(), 3, "{args:?}: {e}");
            assert!(
                e.to_string().contains(needle),
                "{args:?}: '{e}' lacks '{needle}'"
            );
        }
        usage_err(&base(&["--setHeader"]), "--setHeader needs");
        bad_err(&base(&["--setHeader", "Bad Name", "v"]), "--setHeader");
        bad_err(
            &base(&["--setHeader", "X", "a\r\nInjected: 1"]),
            "--setHeader",
        );
        // Empty value in the colon form is allowed.
        assert_eq!(
            cfg(&base(&["--setHeader", "X-Empty:"])).set_headers[0].value,
            ""
        );
    }

    #[test]
    fn otel_flags_are_rejected_not_ignored() {
        for flag in [
            "--otelMetricsCollectorEndpoint",
            "--otel-metrics-collector-endpoint",
            "--otelTraceCollectorEndpoint",
            "--otel-trace-collector-endpoint",
        ] {
            let e = bad_err(&base(&[flag, "http://collector:4317"]), flag);
            assert!(e
                .to_string()
                .contains("OpenTelemetry export is not supported yet"));
            assert!(e.to_string().contains("--admin-listen"));
        }
    }

    /// Runs an addition (kebab-case only) and checks its camelCase spelling is refused.
    fn ours_flag(flag: &str, values: &[&str], rest: &[&str], check: impl Fn(&Config)) {
        let mut a = strings(rest);
        a.push(format!("--{flag}"));
        a.extend(strings(values));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        check(&cfg(&refs));
        if values.len() == 1 {
            let mut a = strings(rest);
            a.push(format!("--{flag}={}", values[0]));
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            check(&cfg(&refs));
        }
        let w = words(flag);
        let camel: String = w
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == 0 {
                    s.clone()
                } else {
                    s[..1].to_uppercase() + &s[1..]
                }
            })
            .collect();
        let mut a = strings(rest);
        a.push(format!("--{camel}"));
        a.extend(strings(values));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        usage_err(&refs, "unknown flag");
    }

    #[test]
    fn our_flags_kebab_only() {
        let b = base(&[]);
        ours_flag("listen-address", &["127.0.0.1"], &b, |c| {
            assert_eq!(c.listen, vec!["127.0.0.1:9200".parse().unwrap()]);
        });
        ours_flag("listen-address", &["::1"], &b, |c| {
            assert_eq!(c.listen, vec!["[::1]:9200".parse().unwrap()]);
        });
        let tmp = tempfile::tempdir().unwrap();
        let ca = write(tmp.path(), "ca.pem", CERT_PEM);
        let https = [
            "--destinationUri",
            "https://h",
            "--listenPort",
            "1",
            "--noCapture",
        ];
        ours_flag("destination-ca-file", &[&ca], &https, |c| {
            assert_eq!(
                c.destination_ca_file.as_ref().unwrap().to_str(),
                Some(ca.as_str())
            );
        });
        ours_flag("cpu-list", &["1-3,5"], &b, |c| {
            assert_eq!(c.cpu_list, Some(vec![1, 2, 3, 5]))
        });
        for (v, want) in [
            ("auto", IoDriver::Auto),
            ("uring", IoDriver::Uring),
            ("legacy", IoDriver::Legacy),
        ] {
            ours_flag("io-driver", &[v], &b, |c| assert_eq!(c.io_driver, want));
        }
        ours_flag("admin-listen", &["0.0.0.0:9000"], &b, |c| {
            assert_eq!(c.admin_listen, Some("0.0.0.0:9000".parse().unwrap()));
        });
        ours_flag("admin-listen", &["off"], &b, |c| {
            assert_eq!(c.admin_listen, None)
        });
        ours_flag("admin-listen", &["localhost:1"], &b, |c| {
            assert_eq!(c.admin_listen, Some("127.0.0.1:1".parse().unwrap()));
        });
        ours_flag("capture-flush-interval", &["250ms"], &b, |c| {
            assert_eq!(c.capture_flush_interval, Duration::from_millis(250))
        });
        ours_flag("kafka-ack-timeout", &["2s"], &b, |c| {
            assert_eq!(c.kafka_ack_timeout, Duration::from_secs(2))
        });
        ours_flag("capture-failure-policy", &["reject"], &b, |c| {
            assert_eq!(c.capture_failure_policy, FailurePolicy::Reject)
        });
        let spool = tmp.path().join("spool");
        let spool = spool.to_str().unwrap();
        ours_flag("spool-dir", &[spool], &b, |c| {
            assert_eq!(c.spool_dir.as_ref().unwrap().to_str(), Some(spool))
        });
        ours_flag("spool-max-bytes", &["64MiB"], &b, |c| {
            assert_eq!(c.spool_max_bytes, 64 << 20)
        });
        ours_flag("max-connections", &["1000"], &b, |c| {
            assert_eq!(c.max_connections, Some(1000))
        });
        ours_flag("client-idle-timeout", &["1m"], &b, |c| {
            assert_eq!(c.client_idle_timeout, Some(Duration::from_secs(60)))
        });
        ours_flag("client-idle-timeout", &["0"], &b, |c| {
            assert_eq!(c.client_idle_timeout, None)
        });
        ours_flag("request-head-timeout", &["0"], &b, |c| {
            assert_eq!(c.request_head_timeout, None)
        });
        ours_flag("request-head-timeout", &["5s"], &b, |c| {
            assert_eq!(c.request_head_timeout, Some(Duration::from_secs(5)))
        });
        ours_flag("request-body-timeout", &["0"], &b, |c| {
            assert_eq!(c.request_body_timeout, None)
        });
        ours_flag("request-body-timeout", &["2m"], &b, |c| {
            assert_eq!(c.request_body_timeout, Some(Duration::from_secs(120)))
        });
        ours_flag("tcp-keepalive", &["0"], &b, |c| {
            assert_eq!(c.tcp_keepalive, None)
        });
        ours_flag("tcp-keepalive", &["2m"], &b, |c| {
            assert_eq!(c.tcp_keepalive, Some(Duration::from_secs(120)))
        });
        ours_flag("drain-timeout", &["1h"], &b, |c| {
            assert_eq!(c.drain_timeout, Duration::from_secs(3600))
        });
        let dir = tmp.path().to_str().unwrap();
        ours_flag(
            "trace-file-max-bytes",
            &["64MiB"],
            &[&DEST[..], &["--traceDirectory", dir]].concat(),
            |c| match &c.sink {
                SinkConfig::File(f) => assert_eq!(f.max_file_bytes, 64 << 20),
                other => panic!("{other:?}"),
            },
        );
        ours_flag("log-format", &["json"], &b, |c| {
            assert_eq!(c.log_format, LogFormat::Json)
        });
        // --check-config returns the configuration instead of running.
        for a in [base(&["--check-config"]), base(&["--check-config=true"])] {
            assert!(matches!(run_env(&a, &[]), Ok(Command::CheckConfig(_))));
        }
        assert!(matches!(
            run_env(&base(&["--check-config=false"]), &[]),
            Ok(Command::Run(_))
        ));
        usage_err(&base(&["--checkConfig"]), "unknown flag --checkConfig");
    }

    #[test]
    fn defaults() {
        let c = cfg(&base(&[]));
        assert_eq!(
            c.listen,
            vec![
                "0.0.0.0:9200".parse::<SocketAddr>().unwrap(),
                "[::]:9200".parse().unwrap()
            ]
        );
        assert_eq!(
            c.destination,
            Destination {
                tls: false,
                host: "localhost".into(),
                port: 9200
            }
        );
        assert_eq!(c.max_traffic_buffer_size, 1_048_576);
        assert_eq!(c.num_threads, 0);
        assert_eq!(c.cpu_list, None);
        assert_eq!(c.io_driver, IoDriver::Auto);
        assert_eq!(c.admin_listen, Some("127.0.0.1:9901".parse().unwrap()));
        assert_eq!(c.capture_flush_interval, Duration::from_secs(5));
        assert_eq!(c.kafka_ack_timeout, Duration::from_secs(10));
        assert_eq!(c.capture_failure_policy, FailurePolicy::Forward);
        assert_eq!(c.max_connections, None);
        assert_eq!(c.client_idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.request_head_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.request_body_timeout, Some(Duration::from_secs(60)));
        assert_eq!(c.tcp_keepalive, Some(Duration::from_secs(60)));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.destination_pool_size, 0);
        assert_eq!(c.destination_pool_timeout, Duration::from_secs(30));
        assert!(!c.insecure_destination && c.server_tls.is_none() && c.spool_dir.is_none());
        assert!(c.set_headers.is_empty() && c.suppress.header_matches.is_empty());
        assert!(c.suppress.method.is_none());
    }

    #[test]
    fn environment_and_precedence() {
        let env = [
            ("CAPTURE_PROXY_DESTINATION_URI", "https://envhost:9443"),
            ("CAPTURE_PROXY_LISTEN_PORT", "1111"),
            ("CAPTURE_PROXY_NO_CAPTURE", "1"),
            ("CAPTURE_PROXY_CAPTURE_FLUSH_INTERVAL", "1s"),
            ("CAPTURE_PROXY_INSECURE_DESTINATION", "true"),
            ("CAPTURE_PROXY_SET_HEADER", "Host: ignored"),
        ];
        let c = cfg_env(&[], &env);
        assert_eq!(
            c.destination,
            Destination {
                tls: true,
                host: "envhost".into(),
                port: 9443
            }
        );
        assert_eq!(c.listen[0].port(), 1111);
        assert!(matches!(c.sink, SinkConfig::None));
        assert_eq!(c.capture_flush_interval, Duration::from_secs(1));
        assert!(c.insecure_destination);
        assert!(
            c.set_headers.is_empty(),
            "repeatable flags never come from the environment"
        );
        // The command line wins, including an explicit false for a boolean.
        let c = cfg_env(
            &["--listenPort", "2222", "--insecureDestination=false"],
            &env,
        );
        assert_eq!(c.listen[0].port(), 2222);
        assert!(!c.insecure_destination);
        // Aliases, secrets, and empty variables (treated as unset).
        let c = cfg_env(
            &DEST,
            &[
                ("CAPTURE_PROXY_KAFKA_BROKERS", "b:9092"),
                ("CAPTURE_PROXY_KAFKA_AUTH_TYPE", "scram-sha-512"),
                ("CAPTURE_PROXY_KAFKA_USER_NAME", "u"),
                ("CAPTURE_PROXY_KAFKA_PASSWORD", "pw"),
                ("CAPTURE_PROXY_KAFKA_TOPIC", ""),
            ],
        );
        let k = kafka(&c);
        assert_eq!(k.brokers, "b:9092");
        assert_eq!(k.topic, DEFAULT_KAFKA_TOPIC);
        assert_eq!(
            k.auth,
            KafkaAuth::ScramSha512 {
                username: Some("u".into()),
                password: Some("pw".into())
            }
        );
        // A bad environment value names the variable.
        let e = err_env(&DEST, &[("CAPTURE_PROXY_NO_CAPTURE", "maybe")]);
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("CAPTURE_PROXY_NO_CAPTURE"), "{e}");
        // The check-config action does not come from the environment.
        let r = run_env(&base(&[]), &[("CAPTURE_PROXY_CHECK_CONFIG", "true")]);
        assert!(matches!(r, Ok(Command::Run(_))));
        // Both spellings of one flag in the environment is ambiguous.
        let e = err_env(
            &DEST,
            &[
                ("CAPTURE_PROXY_KAFKA_BROKERS", "a:1"),
                ("CAPTURE_PROXY_KAFKA_CONNECTION", "b:1"),
            ],
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn inline_json_base64_and_file() {
        use base64::Engine as _;
        let json = r#"{"destinationUri":"http://j:9200","listenPort":9300,"noCapture":true,
            "setHeader":["Host: x", "X-A", "1"],
            "suppressCaptureForHeaderMatch":[["User-Agent","ELB.*"]],
            "capture-flush-interval":"2s","kafka-password":"unused","numThreads":"2"}"#;
        let check = |c: &Config| {
            assert_eq!(c.destination.host, "j");
            assert_eq!(c.listen[0].port(), 9300);
            assert!(matches!(c.sink, SinkConfig::None));
            let h: Vec<(&str, &str)> = c
                .set_headers
                .iter()
                .map(|h| (h.name.as_str(), h.value.as_str()))
                .collect();
            assert_eq!(h, vec![("Host", "x"), ("X-A", "1")]);
            assert_eq!(c.suppress.header_matches[0].0, "user-agent");
            assert_eq!(c.capture_flush_interval, Duration::from_secs(2));
            assert_eq!(c.num_threads, 2);
        };
        check(&cfg(&["---INLINE-JSON", json]));
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        check(&cfg(&["---INLINE-JSON", &b64]));
        check(&cfg(&[&format!("---INLINE-JSON={b64}")]));
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "args.json", json);
        check(&cfg(&["---JSON-FILE", &path]));
        // setHeader as an array of pairs, or an object; --check-config alongside.
        let r = run_env(
            &[
                "---INLINE-JSON",
                r#"{"destinationUri":"http://h","listenPort":1,"noCapture":true,
                   "setHeader":[["Host","x"]]}"#,
                "--check-config",
            ],
            &[],
        );
        match r {
            Ok(Command::CheckConfig(c)) => assert_eq!(c.set_headers[0].value, "x"),
            _ => panic!("expected CheckConfig"),
        }
        // The environment still applies underneath JSON.
        let c = cfg_env(
            &["---INLINE-JSON", r#"{"listenPort":5,"noCapture":true}"#],
            &[("CAPTURE_PROXY_DESTINATION_URI", "http://envhost")],
        );
        assert_eq!(c.destination.host, "envhost");
        assert_eq!(c.listen[0].port(), 5);
    }

    #[test]
    fn json_errors() {
        usage_err(
            &[
                "---INLINE-JSON",
                r#"{"destinationUri":"http://h","bogus":1}"#,
            ],
            "unknown JSON key 'bogus'",
        );
        usage_err(
            &["---INLINE-JSON", r#"{"listenPort":1}"#, "--noCapture"],
            "replace the other flags",
        );
        usage_err(&["---INLINE-JSON"], "needs a value");
        let e = err(&["---INLINE-JSON", r#"{"kafkaPassword":"hunter2", oops}"#]);
        assert_eq!(e.exit_code(), 3);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = err(&["---INLINE-JSON", "%%%not base64%%%"]);
        assert_eq!(e.exit_code(), 3);
        let e = err(&["---INLINE-JSON", "[1,2]"]);
        assert!(e.to_string().contains("JSON object"), "{e}");
        let e = err(&["---JSON-FILE", "/nonexistent/args.json"]);
        assert_eq!(e.exit_code(), 3);
        let e = err(&["---INLINE-JSON", r#"{"destinationUri":true}"#]);
        assert_eq!(e.exit_code(), 3);
        let e = err(&["---INLINE-JSON", r#"{"kafkaPassword":["pw"]}"#]);
        assert_eq!(e.exit_code(), 3);
        assert!(!e.to_string().contains("pw"), "{e}");
        usage_err(
            &[
                "---INLINE-JSON",
                r#"{"kafkaBrokers":"a:1","kafkaConnection":"b:1"}"#,
            ],
            "more than once",
        );
    }

    #[test]
    fn usage_errors_exit_2() {
        usage_err(&[], "missing required flag --destinationUri");
        usage_err(
            &["--listenPort", "1", "--noCapture"],
            "missing required flag --destinationUri",
        );
        usage_err(
            &["--destinationUri", "http://h", "--noCapture"],
            "missing required flag --listenPort",
        );
        usage_err(&DEST, "choose a capture sink");
        usage_err(&base(&["--traceDirectory", "/tmp"]), "only one of");
        usage_err(
            &[
                &DEST[..],
                &["--kafkaConnection", "b:1", "--traceDirectory", "/tmp"],
            ]
            .concat(),
            "only one of",
        );
        usage_err(&base(&["--bogus"]), "unknown flag --bogus");
        usage_err(&base(&["-x"]), "unknown flag -x");
        usage_err(&base(&["stray"]), "unexpected argument 'stray'");
        usage_err(&base(&["--listenPort", "2"]), "more than once");
        usage_err(&base(&["--listen-port", "2"]), "more than once");
        usage_err(&base(&["--kafkaTopic"]), "--kafkaTopic needs a value");
        usage_err(
            &base(&["--kafkaTopic", "--numThreads", "1"]),
            "--kafkaTopic needs a value",
        );
        usage_err(&base(&["--sslCertChainFile", "/c"]), "both or neither");
        usage_err(&base(&["--sslKeyFile", "/k"]), "both or neither");
        usage_err(
            &base(&[
                "--sslCertChainFile",
                "/c",
                "--sslKeyFile",
                "/k",
                "--sslTrustCertFile",
                "/t",
                "--sslTrustCertPemEnvVar",
                "V",
            ]),
            "mutually exclusive",
        );
        usage_err(
            &base(&[
                "--sslCertChainFile",
                "/c",
                "--sslKeyFile",
                "/k",
                "--requireClientAuth",
            ]),
            "needs --sslTrustCertFile",
        );
        usage_err(
            &base(&["--sslTrustCertFile", "/t"]),
            "needs client-facing TLS",
        );
        usage_err(
            &base(&["--enableMSKAuth", "--kafkaAuthType", "ssl"]),
            "conflicts with --kafkaAuthType",
        );
        usage_err(
            &base(&["--insecureDestination", "--destination-ca-file", "/ca"]),
            "contradict",
        );
        let tmp = tempfile::tempdir().unwrap();
        let ca = write(tmp.path(), "ca.pem", CERT_PEM);
        usage_err(&base(&["--destination-ca-file", &ca]), "needs an https://");
        // The value of an unknown flag (possibly a secret) is not echoed.
        let e = err(&base(&["--kafkaPasswrd=hunter2"]));
        assert_eq!(e.exit_code(), 2);
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // One line, with a pointer to --help.
        assert!(!e.to_string().contains('\n') && e.to_string().ends_with("(see --help)"));
    }

    #[test]
    fn bad_values_exit_3() {
        for uri in [
            "ftp://h",
            "localhost:9200",
            "http://",
            "http://h:0",
            "http://h:99999",
            "http://h:x",
            "http://u:p@h",
            "http://::1:9200",
            "http://[::1",
            "http://[zz]:1",
            "http://bad host",
        ] {
            bad_err(
                &["--destinationUri", uri, "--listenPort", "1", "--noCapture"],
                "--destinationUri",
            );
        }
        bad_err(
            &[
                "--destination-uri",
                "ftp://h",
                "--listenPort",
                "1",
                "--noCapture",
            ],
            "--destination-uri",
        );
        bad_err(
            &[
                "--destinationUri",
                "http://h",
                "--listenPort",
                "70000",
                "--noCapture",
            ],
            "--listenPort",
        );
        bad_err(
            &[
                "--destinationUri",
                "http://h",
                "--listenPort",
                "-1",
                "--noCapture",
            ],
            "--listenPort",
        );
        let e = bad_err(
            &base(&["--maxTrafficBufferSize", "1000"]),
            "--maxTrafficBufferSize",
        );
        assert!(e.to_string().contains("at least 1024"));
        bad_err(
            &base(&["--maxTrafficBufferSize", "1023"]),
            "--maxTrafficBufferSize",
        );
        assert_eq!(
            cfg(&base(&["--maxTrafficBufferSize", "1024"])).max_traffic_buffer_size,
            1024
        );
        bad_err(&base(&["--numThreads", "two"]), "--numThreads");
        bad_err(
            &base(&["--destinationConnectionPoolTimeout", "30"]),
            "--destinationConnectionPoolTimeout",
        );
        bad_err(&[&DEST[..], &["--noCapture=yes"]].concat(), "--noCapture");
        bad_err(&base(&["--kafkaAuthType", "plain"]), "--kafkaAuthType");
        bad_err(&base(&["--kafkaTopic", "bad topic"]), "--kafkaTopic");
        bad_err(
            &[&DEST[..], &["--kafkaConnection", ""]].concat(),
            "--kafkaConnection",
        );
        bad_err(
            &base(&["--kafkaPropertyFile", "/nonexistent.properties"]),
            "--kafkaPropertyFile",
        );
        bad_err(
            &base(&[
                "--sslCertChainFile",
                "/nonexistent/c.pem",
                "--sslKeyFile",
                "/nonexistent/k.pem",
            ]),
            "--sslCertChainFile",
        );
        let tmp = tempfile::tempdir().unwrap();
        let cert = write(tmp.path(), "cert.pem", CERT_PEM);
        let key = write(tmp.path(), "key.pem", KEY_PEM);
        // Swapped files are caught by their PEM labels.
        bad_err(
            &base(&["--sslCertChainFile", &key, "--sslKeyFile", &key]),
            "--sslCertChainFile",
        );
        bad_err(
            &base(&["--sslCertChainFile", &cert, "--sslKeyFile", &cert]),
            "--sslKeyFile",
        );
        let tls = base(&["--sslCertChainFile", &cert, "--sslKeyFile", &key]);
        bad_err(
            &[&tls[..], &["--sslTrustCertFile", "/nonexistent/ca.pem"]].concat(),
            "--sslTrustCertFile",
        );
        let e = bad_err(
            &[&tls[..], &["--sslTrustCertPemEnvVar", "NOPE"]].concat(),
            "--sslTrustCertPemEnvVar",
        );
        assert!(e.to_string().contains("NOPE"));
        let e = err_env(
            &[&tls[..], &["--sslTrustCertPemEnvVar", "CA"]].concat(),
            &[("CA", "  ")],
        );
        assert_eq!(e.exit_code(), 3);
        let e = err_env(
            &[&tls[..], &["--sslTrustCertPemEnvVar", "CA"]].concat(),
            &[("CA", "garbage-secret")],
        );
        assert_eq!(e.exit_code(), 3);
        assert!(!e.to_string().contains("garbage-secret"), "{e}");
        bad_err(
            &[&DEST[..], &["--traceDirectory", &cert]].concat(),
            "--traceDirectory",
        );
        bad_err(
            &base(&["--suppressCaptureForMethod", "(GET"]),
            "--suppressCaptureForMethod",
        );
        bad_err(
            &base(&["--suppressCaptureForUriPath", "a)|(b"]),
            "--suppressCaptureForUriPath",
        );
        bad_err(
            &base(&["--suppressMethodAndPath", "[z-a]"]),
            "--suppressMethodAndPath",
        );
        bad_err(
            &base(&["--suppressCaptureForHeaderMatch", "ua", "*x"]),
            "--suppressCaptureForHeaderMatch",
        );
        let e = bad_err(
            &base(&["--suppressCaptureForMethod", "(GET"]),
            "--suppressCaptureForMethod",
        );
        assert!(!e.to_string().contains('\n'), "{e}");
        bad_err(&base(&["--listen-address", "nowhere"]), "--listen-address");
        bad_err(
            &base(&["--destination-ca-file", "/nonexistent/ca.pem"]),
            "--destination-ca-file",
        );
        bad_err(&base(&["--cpu-list", "3-1"]), "--cpu-list");
        bad_err(&base(&["--io-driver", "kqueue"]), "--io-driver");
        bad_err(&base(&["--admin-listen", "9901"]), "--admin-listen");
        bad_err(
            &base(&["--capture-flush-interval", "5"]),
            "--capture-flush-interval",
        );
        bad_err(
            &base(&["--kafka-ack-timeout", "soon"]),
            "--kafka-ack-timeout",
        );
        bad_err(
            &base(&["--capture-failure-policy", "drop"]),
            "--capture-failure-policy",
        );
        bad_err(&base(&["--spool-dir", &cert]), "--spool-dir");
        bad_err(&base(&["--spool-max-bytes", "0"]), "--spool-max-bytes");
        bad_err(&base(&["--spool-max-bytes", "lots"]), "--spool-max-bytes");
        bad_err(&base(&["--max-connections", "0"]), "--max-connections");
        bad_err(
            &base(&["--client-idle-timeout", "-1s"]),
            "--client-idle-timeout",
        );
        bad_err(
            &base(&["--request-head-timeout", "1d"]),
            "--request-head-timeout",
        );
        bad_err(&base(&["--tcp-keepalive", "x"]), "--tcp-keepalive");
        bad_err(&base(&["--drain-timeout", ""]), "--drain-timeout");
        bad_err(
            &base(&["--trace-file-max-bytes", "0"]),
            "--trace-file-max-bytes",
        );
        bad_err(
            &base(&["--trace-file-max-bytes", "64Mb/s"]),
            "--trace-file-max-bytes",
        );
        bad_err(&base(&["--log-format", "xml"]), "--log-format");
        // The Kafka password is masked in errors.
        let e = bad_err(
            &base(&[
                "--kafkaPassword",
                "hunter2",
                "--otelTraceCollectorEndpoint",
                "x",
            ]),
            "--otelTraceCollectorEndpoint",
        );
        assert!(!e.to_string().contains("hunter2"));
        let e = bad_raw(
            &Raw {
                text: "hunter2".into(),
                origin: "--kafkaPassword".into(),
            },
            Flag::KafkaPassword,
            "r".into(),
        );
        assert_eq!(e.to_string(), "invalid value '****' for --kafkaPassword: r");
    }

    #[test]
    fn destination_uris() {
        let d = |s: &str| parse_destination(s).unwrap();
        assert_eq!(
            d("http://h"),
            Destination {
                tls: false,
                host: "h".into(),
                port: 80
            }
        );
        assert_eq!(
            d("HTTPS://h/"),
            Destination {
                tls: true,
                host: "h".into(),
                port: 443
            }
        );
        assert_eq!(
            d("https://h:9200/x?y#z"),
            Destination {
                tls: true,
                host: "h".into(),
                port: 9200
            }
        );
        assert_eq!(
            d("http://[::1]:9200"),
            Destination {
                tls: false,
                host: "::1".into(),
                port: 9200
            }
        );
        assert_eq!(
            d("https://[fe80::1]"),
            Destination {
                tls: true,
                host: "fe80::1".into(),
                port: 443
            }
        );
        assert_eq!(
            d("http://10.0.0.1:"),
            Destination {
                tls: false,
                host: "10.0.0.1".into(),
                port: 80
            }
        );
    }

    #[test]
    fn durations() {
        let ok = |s: &str, want: Duration| assert_eq!(parse_duration(s), Ok(want), "{s}");
        ok("PT30S", Duration::from_secs(30));
        ok("PT1M", Duration::from_secs(60));
        ok("PT0.5S", Duration::from_millis(500));
        ok("P1DT2H", Duration::from_secs(86_400 + 7_200));
        ok("P2D", Duration::from_secs(172_800));
        ok("pt1h30m5.25s", Duration::from_millis(5_405_250));
        ok("PT0S", Duration::ZERO);
        ok("5s", Duration::from_secs(5));
        ok("250ms", Duration::from_millis(250));
        ok("1m", Duration::from_secs(60));
        ok("1h", Duration::from_secs(3600));
        ok("1.5s", Duration::from_millis(1500));
        ok("0", Duration::ZERO);
        ok(" 10s ", Duration::from_secs(10));
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-PT1S",
            "PT",
            "P",
            "PT1.5M",
            "P1H",
            "PT1S2M",
            "PTS",
            "P1Y",
            "1.2.3s",
            "PT99999999999999999999999S",
            "99999999999999999999h",
            "1 2s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(90),
            Duration::from_micros(1500),
        ] {
            assert_eq!(parse_duration(&fmt_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(fmt_duration(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn cpu_lists_and_sizes() {
        assert_eq!(parse_cpu_list("1-3,5"), Ok(vec![1, 2, 3, 5]));
        assert_eq!(parse_cpu_list("5,0,2-2,1-3"), Ok(vec![0, 1, 2, 3, 5]));
        assert_eq!(parse_cpu_list(" 7 "), Ok(vec![7]));
        for bad in [
            "", "a", "1-", "-1", "3-1", "1,,2", "1-2-3", "1024", "0-5000",
        ] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_size("1000000"), Ok(1_000_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("2kib"), Ok(2048));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("10B"), Ok(10));
        for bad in ["", "MiB", "1.5GiB", "1XB", "-1", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn regexes_are_full_match() {
        let re = full_match_regex("GET").unwrap();
        assert!(re.is_match(b"GET"));
        assert!(!re.is_match(b"GETS") && !re.is_match(b"XGET"));
        let re = full_match_regex("a|b").unwrap();
        assert!(re.is_match(b"a") && re.is_match(b"b") && !re.is_match(b"ab"));
        assert!(full_match_regex("a)|(b").is_err());
        let c = cfg(&base(&["--suppressCaptureForUriPath", "/health"]));
        let re = c.suppress.uri_path.unwrap();
        assert!(
            re.is_match(b"/health") && !re.is_match(b"/health/deep") && !re.is_match(b"/x/health")
        );
    }

    #[test]
    fn properties_parse() {
        let text = "# comment\n! also comment\n  \nkey1=value1\nkey2 : value 2\nkey3 value3\n\
                    key4=a\\\n    b\\\n  c\nkey\\ 5=x\\ty\\u0041\nempty=\r\nkey1=again\n# tail \\\nkey6=z";
        let e = parse_java_properties(text);
        let kv: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("key1", "again"),
                ("key2", "value 2"),
                ("key3", "value3"),
                ("key4", "abc"),
                ("key 5", "x\tyA"),
                ("empty", ""),
                ("key6", "z"),
            ]
        );
        assert_eq!(e[1].line, 5);
    }

    fn translate(text: &str) -> Result<KafkaProperties, String> {
        translate_properties(&parse_java_properties(text))
    }

    #[test]
    fn properties_translate() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = write(tmp.path(), "ca.crt", CERT_PEM);
        let ks = write(tmp.path(), "client.pem", &format!("{CERT_PEM}{KEY_PEM}"));
        let text = format!(
            "bootstrap.servers=ignored:9092\nclient.id=ignored\nacks=all\nlinger.ms=5\n\
             batch.size=16384\ncompression.type=zstd\nmax.request.size=2097152\n\
             request.timeout.ms=5000\ndelivery.timeout.ms=10000\nretries=3\nretry.backoff.ms=100\n\
             enable.idempotence=true\nmax.in.flight.requests.per.connection=5\n\
             security.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
             ssl.truststore.type=PEM\nssl.truststore.location={ca}\n\
             ssl.keystore.type=PEM\nssl.keystore.location={ks}\nssl.key.password=kp\n\
             ssl.endpoint.identification.algorithm=\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"alice\" password=\"p\\\\\\\"w\";\n\
             key.serializer=org.apache.kafka.common.serialization.StringSerializer\n\
             value.serializer=org.apache.kafka.common.serialization.ByteArraySerializer\n"
        );
        let p = translate(&text).unwrap();
        assert!(!p.msk_iam);
        let want: Vec<(String, String)> = [
            ("acks", "all"),
            ("linger.ms", "5"),
            ("batch.size", "16384"),
            ("compression.type", "zstd"),
            ("message.max.bytes", "2097152"),
            ("request.timeout.ms", "5000"),
            ("message.timeout.ms", "10000"),
            ("retries", "3"),
            ("retry.backoff.ms", "100"),
            ("enable.idempotence", "true"),
            ("max.in.flight", "5"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanisms", "SCRAM-SHA-512"),
            ("ssl.ca.location", ca.as_str()),
            ("ssl.certificate.location", ks.as_str()),
            ("ssl.key.location", ks.as_str()),
            ("ssl.key.password", "kp"),
            ("ssl.endpoint.identification.algorithm", "none"),
            ("sasl.username", "alice"),
            ("sasl.password", "p\"w"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(p.properties, want);
        let p = translate("ssl.endpoint.identification.algorithm=https").unwrap();
        assert_eq!(p.properties[0].1, "https");
        // MSK IAM settings are accepted and imply the msk-iam auth type.
        let iam = "security.protocol=SASL_SSL\nsasl.mechanism=AWS_MSK_IAM\n\
                   sasl.jaas.config=software.amazon.msk.auth.iam.IAMLoginModule required;\n\
                   sasl.client.callback.handler.class=software.amazon.msk.auth.iam.IAMClientCallbackHandler\n";
        let p = translate(iam).unwrap();
        assert!(p.msk_iam);
        assert_eq!(
            p.properties,
            vec![("security.protocol".to_string(), "sasl_ssl".to_string())]
        );
        let file = write(tmp.path(), "iam.properties", iam);
        let k = [
            &DEST[..],
            &["--kafkaConnection", "b:1", "--kafkaPropertyFile", &file],
        ]
        .concat();
        assert_eq!(kafka(&cfg(&k)).auth, KafkaAuth::MskIam);
        usage_err(
            &[&k[..], &["--kafkaAuthType", "ssl"]].concat(),
            "configures MSK IAM",
        );
    }

    #[test]
    fn properties_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = write(tmp.path(), "ca.crt", CERT_PEM);
        let reject = |text: &str, needle: &str| {
            let e = translate(text).unwrap_err();
            assert!(e.contains(needle), "{text:?}: '{e}' lacks '{needle}'");
        };
        reject("foo.bar=1", "unsupported producer property 'foo.bar'");
        reject("acks=2", "expected one of");
        reject("linger.ms=soon", "whole number");
        reject(
            &format!("ssl.truststore.location={ca}"),
            "convert it to PEM",
        );
        reject(
            &format!("ssl.truststore.type=JKS\nssl.truststore.location={ca}"),
            "convert it to PEM",
        );
        reject(
            &format!("ssl.truststore.type=PKCS12\nssl.truststore.location={ca}"),
            "PKCS12",
        );
        reject(&format!("ssl.keystore.location={ca}"), "convert it to PEM");
        reject(
            &format!("ssl.keystore.type=PEM\nssl.keystore.location={ca}"),
            "PRIVATE KEY",
        );
        reject(
            "ssl.truststore.type=PEM\nssl.truststore.location=/nonexistent/ca.crt",
            "cannot read",
        );
        reject("ssl.endpoint.identification.algorithm=ldap", "https");
        reject("sasl.mechanism=GSSAPI", "expected one of");
        reject(
            "sasl.jaas.config=PlainLoginModule required username=\"a\" password=\"b\";",
            "ScramLoginModule",
        );
        reject(
            "sasl.client.callback.handler.class=com.example.Handler",
            "IAM",
        );
        // Secrets are masked in the message.
        let e = translate("sasl.jaas.config=x.PlainLoginModule required password=\"hunter2\";")
            .unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        // Through the flag: exit 3, naming the flag, the file and the key.
        let file = write(tmp.path(), "bad.properties", "acks=all\nfoo.bar=1\n");
        let e = bad_err(&base(&["--kafkaConfigFile", &file]), "--kafkaConfigFile");
        let text = e.to_string();
        assert!(
            text.contains("foo.bar") && text.contains("line 2") && text.contains(&file),
            "{text}"
        );
        assert!(load_kafka_properties(Path::new(&file)).is_err());
    }

    #[test]
    fn jaas_options() {
        let j = "ScramLoginModule required username=\"u\\\\x\" password = \"p w\";";
        assert_eq!(jaas_option(j, "username").as_deref(), Some("u\\x"));
        assert_eq!(jaas_option(j, "password").as_deref(), Some("p w"));
        assert_eq!(
            jaas_option("x required myusername=\"a\";", "username"),
            None
        );
        assert_eq!(jaas_option("username=\"unterminated", "username"), None);
    }

    #[test]
    fn render_masks_secrets() {
        let tmp = tempfile::tempdir().unwrap();
        let props = write(
            tmp.path(),
            "p.properties",
            "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
             username=\"alice\" password=\"jaaspw\";\nacks=all\n",
        );
        let cert = write(tmp.path(), "cert.pem", CERT_PEM);
        let key = write(tmp.path(), "key.pem", KEY_PEM);
        let a = [
            &DEST[..],
            &[
                "--kafkaConnection",
                "b:9092",
                "--kafkaAuthType",
                "scram-sha-512",
                "--kafkaUserName",
                "alice",
                "--kafkaPassword",
                "hunter2",
                "--kafkaPropertyFile",
                &props,
                "--setHeader",
                "Authorization: Basic c2VjcmV0",
                "--setHeader",
                "Host",
                "h",
                "--sslCertChainFile",
                &cert,
                "--sslKeyFile",
                &key,
                "--sslTrustCertPemEnvVar",
                "CA",
                "--requireClientAuth",
                "--suppressCaptureForHeaderMatch",
                "User-Agent",
                "ELB.*",
                "--cpu-list",
                "0-1",
                "--admin-listen",
                "off",
                "--client-idle-timeout",
                "90s",
            ],
        ]
        .concat();
        let c = cfg_env(&a, &[("CA", CERT_PEM)]);
        let out = render_effective(&c);
        for secret in ["hunter2", "jaaspw", "c2VjcmV0", "MIIBfake"] {
            assert!(!out.contains(secret), "{secret} leaked:\n{out}");
        }
        for line in out.lines() {
            assert!(line.contains(" = "), "{line}");
        }
        for want in [
            "destination-uri = http://localhost:9200",
            "listen = 0.0.0.0:9200, [::]:9200",
            "sink = kafka",
            "kafka-auth-type = scram-sha-512",
            "kafka-user-name = alice",
            "kafka-password = ****",
            "kafka-property.sasl.password = ****",
            "kafka-property.sasl.username = alice",
            "kafka-property.acks = all",
            "set-header = Authorization: ****",
            "set-header = Host: h",
            "ssl-trust-cert-pem-env-var = CA",
            "require-client-auth = true",
            "suppress-capture-for-header-match = user-agent ELB.*",
            "suppress-capture-for-method = none",
            "cpu-list = 0,1",
            "admin-listen = off",
            "client-idle-timeout = 90s",
            "request-head-timeout = 30s",
            "max-connections = unlimited",
        ] {
            assert!(
                out.contains(&format!("{want}\n")),
                "missing '{want}' in\n{out}"
            );
        }
        // Also the Debug form of the config (used in logs) hides secrets.
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("hunter2") && !dbg.contains("MIIBfake"),
            "{dbg}"
        );
        let ipv6 = cfg(&[
            "--destinationUri",
            "https://[::1]",
            "--listenPort",
            "1",
            "--noCapture",
        ]);
        assert!(render_effective(&ipv6).contains("destination-uri = https://[::1]:443\n"));
    }

    #[test]
    fn help_and_version() {
        for a in [&["--help"][..], &["-h"], &["--bogus", "--help"]] {
            let Ok(Command::Help(text)) = run_env(a, &[]) else {
                panic!("{a:?}")
            };
            for line in text.lines() {
                assert!(line.chars().count() <= HELP_WIDTH, "too wide: {line}");
            }
            let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
            for (_, title) in GROUPS {
                assert!(text.contains(&format!("{title}:")), "{title}");
            }
            for s in FLAGS {
                assert!(text.contains(&format!("--{}", s.name)), "{}", s.name);
                if !s.default.is_empty() {
                    assert!(
                        text.contains(&format!("[default: {}]", s.default)),
                        "{}",
                        s.name
                    );
                }
            }
            assert!(text.contains("--kafkaBrokers") && text.contains("CAPTURE_PROXY_"));
        }
        let Ok(Command::Version(v)) = run_env(&["--version"], &[]) else {
            panic!()
        };
        assert_eq!(v, format!("capture-proxy {}\n", env!("CARGO_PKG_VERSION")));
    }

    fn inspect(a: &[&str]) -> InspectArgs {
        let mut v = vec!["inspect"];
        v.extend_from_slice(a);
        match run_env(&v, &[]) {
            Ok(Command::Inspect(i)) => i,
            Ok(_) => panic!("not inspect"),
            Err(e) => panic!("{a:?}: {e}"),
        }
    }

    #[test]
    fn inspect_subcommand() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        let i = inspect(&["--traceDirectory", dir]);
        assert_eq!(
            i,
            InspectArgs {
                trace_directory: Some(tmp.path().to_path_buf()),
                kafka_connection: None,
                kafka_topic: DEFAULT_KAFKA_TOPIC.into(),
                json: false,
                from_offsets: None,
                kafka_property_file: None,
                quiet: false,
            }
        );
        let i = inspect(&["--trace-directory", dir, "--json", "--summary"]);
        assert!(i.json && i.quiet);
        let props = write(tmp.path(), "p.properties", "acks=all\n");
        let i = inspect(&[
            "--kafkaBrokers",
            "b:9092",
            "--kafka-topic",
            "t",
            "--from-offsets",
            "0:5,1:7",
            "--kafkaConfigFile",
            &props,
            "--json=false",
        ]);
        assert_eq!(i.kafka_connection.as_deref(), Some("b:9092"));
        assert_eq!(i.kafka_topic, "t");
        assert_eq!(i.from_offsets.as_deref(), Some("0:5,1:7"));
        assert_eq!(i.kafka_property_file.as_deref(), Some(Path::new(&props)));
        assert!(!i.json);
        let ierr = |a: &[&str]| {
            let mut v = vec!["inspect"];
            v.extend_from_slice(a);
            err(&v)
        };
        for a in [
            &[][..],
            &["--traceDirectory", dir, "--kafkaConnection", "b:1"],
            &["--traceDirectory", dir, "--kafkaTopic", "t"],
            &["--traceDirectory", dir, "--from-offsets", "0:1"],
            &["--traceDirectory", dir, "--bogus"],
            &["--traceDirectory", dir, "--json", "--json"],
            &["--traceDirectory"],
            &["stray"],
        ] {
            assert_eq!(ierr(a).exit_code(), 2, "{a:?}");
        }
        assert_eq!(
            ierr(&["--traceDirectory", "/nonexistent/dir"]).exit_code(),
            3
        );
        assert_eq!(
            ierr(&[
                "--kafkaConnection",
                "b:1",
                "--kafkaPropertyFile",
                "/nonexistent"
            ])
            .exit_code(),
            3
        );
        assert_eq!(
            ierr(&["--traceDirectory", dir, "--json=maybe"]).exit_code(),
            3
        );
        let Ok(Command::Help(h)) = run_env(&["inspect", "--help"], &[]) else {
            panic!()
        };
        assert!(h.contains("--from-offsets"));
    }
}
