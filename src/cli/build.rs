//! Validation: raw values → a typed, checked [`Config`]. Reads each flag's text from
//! [`Collected`], parses it with `super::values`, falls back to the `config::DEFAULT_*`
//! constant the flag table shows in `--help`, and checks presence and conflicts.
//!
//! Owns: which flags are required, which exclude or need each other, Kafka auth resolution
//! (`--kafkaAuthType`, `--enableMSKAuth`, the property file), `--setHeader` and suppression
//! rule checks, and the mapping from each flag to its `Config` field.
//!
//! May depend on: `super::defs`, `super::parse` (the raw values), `super::values`,
//! `super::java_props`, `super` (`CliError`, `MASK`), `crate::config`, `crate::http1::rewrite`
//! (the `--setHeader` entry check the framer applies), the file system (named files).
//!
//! Invariant: a `Config` is returned only after every value is validated; structural mistakes
//! are `CliError::Usage`, bad values `CliError::BadValue` naming the flag as given and the
//! value (masked for secrets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defs::{spec, Flag};
use super::java_props::{load_kafka_properties_as, KafkaProperties};
use super::parse::{Collected, Raw, RawPair};
use super::values::{
    check_brokers, check_dir, check_file, check_pem, check_topic, full_match_regex, parse_bool,
    parse_choice, parse_cpu_list, parse_destination, parse_duration, parse_ip, parse_number,
    parse_size, parse_socket_addr, valid_header_name, AuthType,
};
use super::{sensitive_header, usage, CliError, MASK};
use crate::config::{
    ClientTrust, Config, Destination, FileSinkConfig, KafkaAuth, KafkaConfig, OtelMetricsConfig,
    ServerTlsConfig, SetHeader, SinkConfig, SuppressConfig, DEFAULT_ADMIN_LISTEN,
    DEFAULT_CAPTURE_FAILURE_POLICY, DEFAULT_CAPTURE_FLUSH_INTERVAL, DEFAULT_CLIENT_IDLE_TIMEOUT,
    DEFAULT_DESTINATION_CONNECTION_POOL_SIZE, DEFAULT_DESTINATION_CONNECTION_POOL_TIMEOUT,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDOVER_TIMEOUT, DEFAULT_IO_DRIVER, DEFAULT_KAFKA_ACK_TIMEOUT,
    DEFAULT_KAFKA_CLIENT_ID, DEFAULT_KAFKA_MAX_UNACKED_BYTES, DEFAULT_KAFKA_TOPIC,
    DEFAULT_LOG_FORMAT, DEFAULT_MAX_TRAFFIC_BUFFER_SIZE, DEFAULT_NUM_THREADS,
    DEFAULT_OTEL_METRICS_EXPORT_INTERVAL, DEFAULT_REQUEST_BODY_TIMEOUT,
    DEFAULT_REQUEST_HEAD_TIMEOUT, DEFAULT_SOURCE_MAX_HEADER_SIZE,
    DEFAULT_SOURCE_MAX_INITIAL_LINE_LENGTH, DEFAULT_SPOOL_MAX_BYTES, DEFAULT_TCP_KEEPALIVE,
    DEFAULT_TRACE_FILE_MAX_BYTES,
};

/// Smallest `--maxTrafficBufferSize`: a TrafficStream must hold more than the 500-byte Kafka
/// envelope reserve plus a useful observation; below 1 KiB every record would be all overhead.
pub(crate) const MIN_MAX_TRAFFIC_BUFFER_SIZE: usize = 1024;

pub(super) fn bad_raw(raw: &Raw, id: Flag, reason: String) -> CliError {
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
    pub(super) fn on(&self, id: Flag) -> Result<bool, CliError> {
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
    let named = c.typed(Flag::KafkaAuthType, parse_choice)?;
    let mut auth = named.unwrap_or(AuthType::DEFAULT);
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

/// A size (`parse_size`) that must be more than 0.
fn positive_size(t: &str) -> Result<u64, String> {
    parse_size(t).and_then(|n| {
        if n == 0 {
            Err("must be more than 0".to_string())
        } else {
            Ok(n)
        }
    })
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

pub(super) fn build_config(
    c: &Collected,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, CliError> {
    check_structure(c)?;
    let (otel_metrics, otel_metrics_export_interval) = build_otel_metrics(c)?;
    let otel_trace_endpoint = c.typed(Flag::OtelTraceCollectorEndpoint, |t| {
        parse_otlp_endpoint(t).map(|_| t.trim().to_string())
    })?;
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
        .typed(Flag::TraceFileMaxBytes, positive_size)?
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
        .unwrap_or(DEFAULT_MAX_TRAFFIC_BUFFER_SIZE);
    let num_threads = c
        .typed(Flag::NumThreads, parse_number)?
        .unwrap_or(DEFAULT_NUM_THREADS);
    let destination_pool_size = c
        .typed(Flag::DestinationConnectionPoolSize, parse_number)?
        .unwrap_or(DEFAULT_DESTINATION_CONNECTION_POOL_SIZE);
    let destination_pool_timeout = c
        .typed(Flag::DestinationConnectionPoolTimeout, parse_duration)?
        .unwrap_or(DEFAULT_DESTINATION_CONNECTION_POOL_TIMEOUT);

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
    // Within the head buffer's bound (64 KiB, `runtime::MAX_HEAD_BYTES`), at least 64 bytes.
    let source_limit = |t: &str| {
        parse_size(t).and_then(|n| {
            if (64..=60 * 1024).contains(&n) {
                Ok(n)
            } else {
                Err("must be from 64 bytes to 60KiB".to_string())
            }
        })
    };
    let source_max_initial_line_length = c
        .typed(Flag::SourceMaxInitialLineLength, source_limit)?
        .unwrap_or(DEFAULT_SOURCE_MAX_INITIAL_LINE_LENGTH);
    let source_max_header_size = c
        .typed(Flag::SourceMaxHeaderSize, source_limit)?
        .unwrap_or(DEFAULT_SOURCE_MAX_HEADER_SIZE);
    let spool_max_bytes = c
        .typed(Flag::SpoolMaxBytes, positive_size)?
        .unwrap_or(DEFAULT_SPOOL_MAX_BYTES);
    let kafka_max_unacked_bytes = c
        .typed(Flag::KafkaMaxUnackedBytes, positive_size)?
        .unwrap_or(DEFAULT_KAFKA_MAX_UNACKED_BYTES);
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
            .typed(Flag::IoDriver, parse_choice)?
            .unwrap_or(DEFAULT_IO_DRIVER),
        admin_listen,
        capture_flush_interval: c
            .typed(Flag::CaptureFlushInterval, parse_duration)?
            .unwrap_or(DEFAULT_CAPTURE_FLUSH_INTERVAL),
        kafka_ack_timeout: c
            .typed(Flag::KafkaAckTimeout, parse_duration)?
            .unwrap_or(DEFAULT_KAFKA_ACK_TIMEOUT),
        capture_failure_policy: c
            .typed(Flag::CaptureFailurePolicy, parse_choice)?
            .unwrap_or(DEFAULT_CAPTURE_FAILURE_POLICY),
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
        handover_timeout: c
            .typed(Flag::HandoverTimeout, parse_duration)?
            .unwrap_or(DEFAULT_HANDOVER_TIMEOUT),
        log_format: c
            .typed(Flag::LogFormat, parse_choice)?
            .unwrap_or(DEFAULT_LOG_FORMAT),
        suppress,
        set_headers,
        server_tls,
        insecure_destination,
        destination_ca_file,
        destination_pool_size,
        destination_pool_timeout,
        spool_dir,
        spool_max_bytes,
        kafka_max_unacked_bytes,
        source_max_initial_line_length,
        source_max_header_size,
        otel_metrics,
        otel_metrics_export_interval,
        otel_trace_endpoint,
    })
}

/// `--otelMetricsCollectorEndpoint` as the Java proxy reads it: `http://` prepended when the
/// value has no scheme; then an `http://` or `https://` URL (default ports 80/443, path ignored).
fn parse_otlp_endpoint(t: &str) -> Result<Destination, String> {
    let t = t.trim();
    if t.contains("://") {
        parse_destination(t)
    } else {
        parse_destination(&format!("http://{t}"))
    }
}

/// The metrics export settings and the interval (also kept without an endpoint, so
/// `--check-config` shows it).
fn build_otel_metrics(c: &Collected) -> Result<(Option<OtelMetricsConfig>, Duration), CliError> {
    let interval = c
        .typed(Flag::OtelMetricsExportInterval, |t| {
            parse_duration(t).and_then(|d| {
                if d < Duration::from_millis(100) {
                    Err("must be at least 100ms".to_string())
                } else {
                    Ok(d)
                }
            })
        })?
        .unwrap_or(DEFAULT_OTEL_METRICS_EXPORT_INTERVAL);
    let metrics = c
        .typed(Flag::OtelMetricsCollectorEndpoint, parse_otlp_endpoint)?
        .map(|endpoint| OtelMetricsConfig {
            endpoint,
            export_interval: interval,
        });
    Ok((metrics, interval))
}

/// `x.pipe(f)` = `f(x)`, to keep the field list above readable.
trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for Duration {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::defs::{kebab, words};
    use crate::cli::test_support::*;
    use crate::cli::Command;
    use crate::config::{Destination, FailurePolicy, IoDriver, LogFormat};

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
    fn otel_flags_are_accepted() {
        for flag in [
            "--otelMetricsCollectorEndpoint",
            "--otel-metrics-collector-endpoint",
        ] {
            let c = cfg(&base(&[flag, "collector:4317"]));
            let m = c.otel_metrics.expect("metrics export configured");
            assert_eq!(
                m.endpoint,
                Destination {
                    tls: false,
                    host: "collector".into(),
                    port: 4317
                }
            );
            assert_eq!(m.export_interval, Duration::from_secs(1));
            let c = cfg(&base(&[flag, "https://collector"]));
            let m = c.otel_metrics.expect("metrics export configured");
            assert!(m.endpoint.tls);
            assert_eq!(m.endpoint.port, 443);
            bad_err(&base(&[flag, "ftp://collector"]), flag);
            bad_err(&base(&[flag, ""]), flag);
        }
        for flag in [
            "--otelTraceCollectorEndpoint",
            "--otel-trace-collector-endpoint",
        ] {
            let c = cfg(&base(&[flag, "http://collector:4317"]));
            assert_eq!(
                c.otel_trace_endpoint.as_deref(),
                Some("http://collector:4317")
            );
            assert!(c.otel_metrics.is_none());
        }
        assert!(cfg(&base(&[])).otel_metrics.is_none());
        let c = cfg(&base(&[
            "--otelMetricsCollectorEndpoint",
            "127.0.0.1:4317",
            "--otel-metrics-export-interval",
            "250ms",
        ]));
        assert_eq!(
            c.otel_metrics.unwrap().export_interval,
            Duration::from_millis(250)
        );
        bad_err(
            &base(&[
                "--otelMetricsCollectorEndpoint",
                "127.0.0.1:4317",
                "--otel-metrics-export-interval",
                "10ms",
            ]),
            "--otel-metrics-export-interval",
        );
        // Without an endpoint the interval is kept (shown by --check-config), nothing exported.
        let c = cfg(&base(&["--otel-metrics-export-interval", "5s"]));
        assert!(c.otel_metrics.is_none());
        assert_eq!(c.otel_metrics_export_interval, Duration::from_secs(5));
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
        ours_flag("kafka-max-unacked-bytes", &["8MiB"], &b, |c| {
            assert_eq!(c.kafka_max_unacked_bytes, 8 << 20)
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
                "ftp://x",
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
}
