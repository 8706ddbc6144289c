//! The effective configuration (`--check-config`): one `key = value` line per setting of a
//! built [`Config`], keys being the flags' kebab-case names taken from the flag table, in its
//! order.
//!
//! Owns: how each `Config` field is shown back (in a form its flag accepts, where one exists),
//! and which values are masked.
//!
//! May depend on: `super::defs` (names, order, the text of unset states), `super::values`
//! (formatters), `super::java_props` (which producer properties are secret), `super`
//! (`MASK`, `sensitive_header`), `crate::config`.
//!
//! Invariant: secrets (the Kafka password, secret producer properties, sensitive header
//! values, PEM text) are shown as `****`; every flag row is either shown or listed below as
//! shown through another line — the `match` is exhaustive, so a new flag must decide.

use std::net::SocketAddr;
use std::time::Duration;

use super::defs::{kebab, spec, Flag, FlagDefault, FLAGS};
use super::java_props::secret_property;
use super::values::{choice_name, fmt_duration, AuthType};
use super::{sensitive_header, MASK};
use crate::config::{ClientTrust, Config, KafkaAuth, SinkConfig};

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

/// How an unset optional flag is shown: the text its row shows in `--help`, else `none`.
fn unset(id: Flag) -> String {
    match spec(id).default {
        FlagDefault::Unset(text) => text.to_string(),
        _ => "none".to_string(),
    }
}

/// The output being built.
struct Lines(String);

impl Lines {
    fn line(&mut self, key: &str, value: &str) {
        self.0.push_str(key);
        self.0.push_str(" = ");
        self.0.push_str(value);
        self.0.push('\n');
    }

    /// A line keyed by the flag's kebab-case name.
    fn flag(&mut self, id: Flag, value: impl AsRef<str>) {
        self.line(&kebab(spec(id).name), value.as_ref());
    }
}

/// One `key = value` line per setting, in flag-table order; secrets are shown as `****`.
pub fn render_effective(cfg: &Config) -> String {
    let mut out = Lines(String::new());
    let kafka = match &cfg.sink {
        SinkConfig::Kafka(k) => Some(k),
        _ => None,
    };
    let file = match &cfg.sink {
        SinkConfig::File(f) => Some(f),
        _ => None,
    };
    let tls = cfg.server_tls.as_ref();
    let trust = tls.and_then(|t| t.client_trust.as_ref());
    for row in FLAGS {
        let id = row.id;
        match id {
            Flag::DestinationUri => {
                let d = &cfg.destination;
                let scheme = if d.tls { "https" } else { "http" };
                out.flag(id, format!("{scheme}://{}:{}", fmt_host(&d.host), d.port));
            }
            // `listen` is what --listen-address and --listenPort make together.
            Flag::ListenPort => {
                let listen: Vec<String> = cfg.listen.iter().map(SocketAddr::to_string).collect();
                out.line("listen", &listen.join(", "));
            }
            // `sink` is what --kafkaConnection, --traceDirectory and --noCapture choose.
            Flag::KafkaConnection => {
                let sink = match &cfg.sink {
                    SinkConfig::None => format!("none (--{})", spec(Flag::NoCapture).name),
                    SinkConfig::File(_) => "trace files".to_string(),
                    SinkConfig::Kafka(_) => "kafka".to_string(),
                };
                out.line("sink", &sink);
                if let Some(k) = kafka {
                    out.flag(id, &k.brokers);
                }
            }
            Flag::TraceDirectory => {
                if let Some(f) = file {
                    out.flag(id, f.dir.display().to_string());
                }
            }
            Flag::TraceFileMaxBytes => {
                if let Some(f) = file {
                    out.flag(id, f.max_file_bytes.to_string());
                }
            }
            Flag::KafkaTopic => {
                if let Some(k) = kafka {
                    out.flag(id, &k.topic);
                }
            }
            Flag::KafkaClientId => {
                if let Some(k) = kafka {
                    out.flag(id, &k.client_id);
                }
            }
            // One `kafka-property.KEY` line per translated producer property.
            Flag::KafkaPropertyFile => {
                for (key, value) in kafka.map_or(&[][..], |k| &k.extra_properties) {
                    let shown = if secret_property(key) { MASK } else { value };
                    out.line(&format!("kafka-property.{key}"), shown);
                }
            }
            Flag::KafkaAuthType => {
                if let Some(k) = kafka {
                    out.flag(id, choice_name(AuthType::of(&k.auth)));
                }
            }
            Flag::KafkaUserName => {
                if let Some(KafkaAuth::ScramSha512 { username, .. }) = kafka.map(|k| &k.auth) {
                    out.flag(id, username.as_deref().unwrap_or("(unset)"));
                }
            }
            Flag::KafkaPassword => {
                if let Some(KafkaAuth::ScramSha512 { password, .. }) = kafka.map(|k| &k.auth) {
                    out.flag(id, password.as_ref().map_or("(unset)", |_| MASK));
                }
            }
            Flag::MaxTrafficBufferSize => out.flag(id, cfg.max_traffic_buffer_size.to_string()),
            Flag::NumThreads => out.flag(id, cfg.num_threads.to_string()),
            Flag::DestinationConnectionPoolSize => {
                out.flag(id, cfg.destination_pool_size.to_string())
            }
            Flag::DestinationConnectionPoolTimeout => {
                out.flag(id, fmt_duration(cfg.destination_pool_timeout))
            }
            Flag::InsecureDestination => out.flag(id, cfg.insecure_destination.to_string()),
            // `client-tls = off` when there is no client-facing TLS.
            Flag::SslCertChainFile => match tls {
                None => out.line("client-tls", "off"),
                Some(t) => out.flag(id, t.cert_chain_file.display().to_string()),
            },
            Flag::SslKeyFile => {
                if let Some(t) = tls {
                    out.flag(id, t.key_file.display().to_string());
                }
            }
            // `client-trust = none` when client-facing TLS has no trust source.
            Flag::SslTrustCertFile => match (tls, trust) {
                (Some(_), None) => out.line("client-trust", "none"),
                (_, Some(ClientTrust::File(p))) => out.flag(id, p.display().to_string()),
                _ => {}
            },
            Flag::SslTrustCertPemEnvVar => {
                if let Some(ClientTrust::EnvPem { var, .. }) = trust {
                    out.flag(id, var);
                }
            }
            Flag::RequireClientAuth => {
                if let Some(t) = tls {
                    out.flag(id, t.require_client_auth.to_string());
                }
            }
            Flag::SetHeader => {
                for h in &cfg.set_headers {
                    let v = if sensitive_header(&h.name) {
                        MASK
                    } else {
                        h.value.as_str()
                    };
                    out.flag(id, format!("{}: {v}", h.name));
                }
            }
            Flag::SuppressCaptureForHeaderMatch => {
                for (name, re) in &cfg.suppress.header_matches {
                    out.flag(id, format!("{name} {}", regex_source(re)));
                }
            }
            Flag::SuppressCaptureForMethod => out.flag(id, shown_regex(&cfg.suppress.method, id)),
            Flag::SuppressCaptureForUriPath => {
                out.flag(id, shown_regex(&cfg.suppress.uri_path, id))
            }
            Flag::SuppressMethodAndPath => {
                out.flag(id, shown_regex(&cfg.suppress.method_and_path, id))
            }
            Flag::DestinationCaFile => out.flag(
                id,
                cfg.destination_ca_file
                    .as_ref()
                    .map_or_else(|| unset(id), |p| p.display().to_string()),
            ),
            Flag::CpuList => out.flag(
                id,
                cfg.cpu_list.as_ref().map_or_else(
                    || unset(id),
                    |l| l.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
                ),
            ),
            Flag::IoDriver => out.flag(id, choice_name(cfg.io_driver)),
            Flag::AdminListen => out.flag(
                id,
                cfg.admin_listen
                    .map_or_else(|| "off".to_string(), |a| a.to_string()),
            ),
            Flag::CaptureFlushInterval => out.flag(id, fmt_duration(cfg.capture_flush_interval)),
            Flag::KafkaAckTimeout => out.flag(id, fmt_duration(cfg.kafka_ack_timeout)),
            Flag::CaptureFailurePolicy => out.flag(id, choice_name(cfg.capture_failure_policy)),
            Flag::SpoolDir => out.flag(
                id,
                cfg.spool_dir
                    .as_ref()
                    .map_or_else(|| unset(id), |p| p.display().to_string()),
            ),
            Flag::SpoolMaxBytes => out.flag(id, cfg.spool_max_bytes.to_string()),
            Flag::KafkaMaxUnackedBytes => out.flag(id, cfg.kafka_max_unacked_bytes.to_string()),
            Flag::SourceMaxInitialLineLength => {
                out.flag(id, cfg.source_max_initial_line_length.to_string())
            }
            Flag::SourceMaxHeaderSize => out.flag(id, cfg.source_max_header_size.to_string()),
            Flag::MaxConnections => out.flag(
                id,
                cfg.max_connections
                    .map_or_else(|| unset(id), |n| n.to_string()),
            ),
            Flag::ClientIdleTimeout => out.flag(id, fmt_opt_duration(cfg.client_idle_timeout)),
            Flag::RequestHeadTimeout => out.flag(id, fmt_opt_duration(cfg.request_head_timeout)),
            Flag::RequestBodyTimeout => out.flag(id, fmt_opt_duration(cfg.request_body_timeout)),
            Flag::TcpKeepalive => out.flag(id, fmt_opt_duration(cfg.tcp_keepalive)),
            Flag::DrainTimeout => out.flag(id, fmt_duration(cfg.drain_timeout)),
            Flag::HandoverTimeout => out.flag(id, fmt_duration(cfg.handover_timeout)),
            Flag::LogFormat => out.flag(id, choice_name(cfg.log_format)),
            Flag::OtelMetricsCollectorEndpoint => out.flag(
                id,
                cfg.otel_metrics.as_ref().map_or_else(
                    || unset(id),
                    |m| {
                        let e = &m.endpoint;
                        let scheme = if e.tls { "https" } else { "http" };
                        if e.host.contains(':') {
                            format!("{scheme}://[{}]:{}", e.host, e.port)
                        } else {
                            format!("{scheme}://{}:{}", e.host, e.port)
                        }
                    },
                ),
            ),
            Flag::OtelMetricsExportInterval => {
                out.flag(id, fmt_duration(cfg.otel_metrics_export_interval))
            }
            Flag::OtelTraceCollectorEndpoint => out.flag(
                id,
                cfg.otel_trace_endpoint.as_ref().map_or_else(
                    || unset(id),
                    |t| format!("{t} (accepted; no spans are produced)"),
                ),
            ),
            // Shown through another line (`listen`, `sink`, `kafka-auth-type`), or nothing to
            // show: orchestration metadata, rejected flags, the --check-config action itself.
            Flag::ListenAddress
            | Flag::NoCapture
            | Flag::EnableMskAuth
            | Flag::KafkaListenerName
            | Flag::KafkaSecretName
            | Flag::CheckConfig => {}
        }
    }
    out.0
}

/// A suppression regex as written, or the flag's unset text.
fn shown_regex(re: &Option<regex::bytes::Regex>, id: Flag) -> String {
    re.as_ref()
        .map_or_else(|| unset(id), |re| regex_source(re).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;
    use crate::cli::values::{parse_duration, parse_size};
    use std::path::Path;

    /// The lines of `render_effective` as (key, value) pairs.
    fn effective(c: &Config) -> Vec<(String, String)> {
        render_effective(c)
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Arguments under which every flag with a default shows up in `--check-config`.
    fn context(id: Flag, dir: &Path) -> Vec<String> {
        let mut a: Vec<String> = DEST.iter().map(|s| s.to_string()).collect();
        match id {
            Flag::KafkaTopic | Flag::KafkaClientId | Flag::KafkaAuthType => {
                a.extend(["--kafkaConnection".to_string(), "b:9092".to_string()])
            }
            Flag::TraceFileMaxBytes => {
                a.extend(["--traceDirectory".to_string(), dir.display().to_string()])
            }
            Flag::RequireClientAuth => {
                a.push("--noCapture".to_string());
                for (flag, name, pem) in [
                    ("--sslCertChainFile", "cert.pem", CERT_PEM),
                    ("--sslKeyFile", "key.pem", KEY_PEM),
                ] {
                    a.extend([flag.to_string(), write(dir, name, pem)]);
                }
            }
            _ => a.push("--noCapture".to_string()),
        }
        a
    }

    /// The one table of defaults holds together: the default `--help` shows for a flag is
    /// what `--check-config` shows when the flag is unset, and giving that text explicitly
    /// builds the same configuration as leaving the flag out.
    #[test]
    fn help_defaults_are_what_an_unset_flag_builds() {
        let tmp = tempfile::tempdir().unwrap();
        let mut checked = 0;
        for row in FLAGS {
            let Some(shown) = row.default.shown() else {
                continue;
            };
            let args = context(row.id, tmp.path());
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let unset = effective(&cfg(&refs));
            let key = kebab(row.name);
            if row.id != Flag::ListenAddress {
                // (`listen` shows --listen-address and --listenPort together.)
                let got = unset
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_else(|| panic!("--check-config lacks {key}"));
                let same = match row.default {
                    FlagDefault::Off => got == "false",
                    FlagDefault::Size(_) => parse_size(&shown) == parse_size(got),
                    FlagDefault::Duration(_) | FlagDefault::IsoDuration(_) => {
                        parse_duration(&shown) == parse_duration(got)
                    }
                    _ => shown == got,
                };
                assert!(
                    same,
                    "--{}: --help shows {shown}, unset builds {got}",
                    row.name
                );
            }
            if !matches!(row.default, FlagDefault::Unset(_) | FlagDefault::Off) {
                let flag = format!("--{}", row.name);
                let given = [&refs[..], &[flag.as_str(), shown.as_str()]].concat();
                assert_eq!(effective(&cfg(&given)), unset, "--{} {shown}", row.name);
            }
            checked += 1;
        }
        assert_eq!(checked, 31, "rows with a default");
    }

    /// `Config::for_test` starts from the same defaults as the flags, except where it says so.
    #[test]
    fn for_test_starts_from_the_flag_defaults() {
        let built = cfg(&base(&[]));
        let test = Config::for_test("127.0.0.1:9200".parse().unwrap(), SinkConfig::None);
        let overridden = ["destination-uri", "listen", "num-threads", "admin-listen"];
        let keep = |c: &Config| -> Vec<(String, String)> {
            effective(c)
                .into_iter()
                .filter(|(k, _)| !overridden.contains(&k.as_str()))
                .collect()
        };
        assert_eq!(keep(&test), keep(&built));
        assert_eq!(test.num_threads, 1);
        assert_eq!(test.admin_listen, None);
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
}
