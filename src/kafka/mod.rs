//! The Kafka client both the producer (`sink::kafka`) and `inspect`'s consumer use: the
//! librdkafka settings they share (brokers, client id, the property file's settings, and the
//! security protocol and SASL mechanism of a [`KafkaAuth`]), librdkafka's log lines as
//! `tracing` events, the SASL/OAUTHBEARER token plumbing ([`TokenProvider`],
//! [`oauth_token`]) with its one provider, AWS MSK IAM ([`msk_iam`]: the token), the AWS
//! credential chain it signs with ([`aws_creds`]; the shared files in `aws_profile`, each
//! endpoint's wire format in `aws_sources`, the blocking HTTP(S) client in `aws_http`, SigV4 in
//! `sigv4`), and the calendar arithmetic MSK IAM and `inspect` need (`date`).
//!
//! Owns: which librdkafka keys each [`KafkaAuth`] sets, and the precedence auth > property
//! file > the client's own settings; the `librdkafka` tracing target and its level mapping.
//! Producer tuning stays in `sink::kafka`, consumer settings in `inspect`; the Java property
//! file is read and translated by `cli` (`cli::load_kafka_properties`).
//!
//! May depend on: `config` (`KafkaAuth`), `rdkafka` (`ClientConfig`, `RDKafkaLogLevel`,
//! `OAuthToken`), `tracing`, `thiserror`, and what its submodules name. Never on `sink` or
//! `inspect` (they depend on this module).
//!
//! Invariants: building a configuration creates and contacts nothing (only a token provider
//! talks to the network: the configured AWS credential endpoints — IMDS, the container
//! endpoint, STS); MSK IAM is configured only together with a
//! token provider, otherwise it is a [`ConfigError`]; errors never carry a secret (the SASL
//! password, a token).

pub mod aws_creds;
mod aws_http;
mod aws_profile;
mod aws_sources;
pub(crate) mod date;
pub mod msk_iam;
mod sigv4;

use std::sync::Arc;

use rdkafka::client::OAuthToken;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};

use crate::config::KafkaAuth;

/// Supplies SASL/OAUTHBEARER tokens (the MSK IAM signer implements it). Called on the thread
/// that polls the client (the sink thread, or `inspect`'s), from inside its `poll`, whenever
/// librdkafka asks for a (new) token.
pub trait TokenProvider: Send + Sync {
    /// `(token, lifetime as milliseconds since the Unix epoch, principal name)`.
    fn token(&self) -> Result<(String, i64, String), String>;
}

impl TokenProvider for msk_iam::MskIamTokenProvider {
    fn token(&self) -> Result<(String, i64, String), String> {
        msk_iam::MskIamTokenProvider::token(self)
    }
}

/// The token provider `auth` needs: for MSK IAM one signing with the AWS credentials and
/// region of the process environment and shared config files (the region is looked up and the
/// credential configuration checked now; credentials are fetched on the first token); `None`
/// for every other auth type.
pub fn token_provider(
    auth: &KafkaAuth,
) -> Result<Option<Arc<dyn TokenProvider>>, aws_creds::AwsCredsError> {
    match auth {
        KafkaAuth::MskIam => {
            let chain = msk_iam::CredentialChain::from_process_env();
            let p = msk_iam::MskIamTokenProvider::new(None, chain)?;
            Ok(Some(Arc::new(p)))
        }
        KafkaAuth::None | KafkaAuth::Ssl | KafkaAuth::ScramSha512 { .. } => Ok(None),
    }
}

/// A librdkafka setting that cannot work, by key.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("invalid Kafka client setting {key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

/// What every client of the capture cluster shares: where it is, who connects, and how.
#[derive(Debug, Clone, Copy)]
pub struct ClientSpec<'a> {
    /// `bootstrap.servers`.
    pub brokers: &'a str,
    /// `client.id` (shows in broker logs and quotas).
    pub client_id: &'a str,
    /// librdkafka key/value pairs from the property file (already translated); they override
    /// the client's own settings.
    pub properties: &'a [(String, String)],
    /// Overrides the property file's `security.protocol` and SASL settings.
    pub auth: &'a KafkaAuth,
}

impl ClientSpec<'_> {
    /// The librdkafka configuration (pure: nothing is created or contacted): bootstrap servers
    /// and client id, then `own` (the producer's or consumer's own settings), then the
    /// property file's, then the security protocol and SASL settings of the auth type, each
    /// overriding the ones before. `has_token` tells whether a [`TokenProvider`] will serve
    /// the client's OAUTHBEARER callback (required for MSK IAM).
    pub fn client_config(
        &self,
        has_token: bool,
        own: impl FnOnce(&mut ClientConfig),
    ) -> Result<ClientConfig, ConfigError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers)
            .set("client.id", self.client_id);
        own(&mut c);
        for (k, v) in self.properties {
            c.set(k, v);
        }
        match self.auth {
            KafkaAuth::None => {}
            KafkaAuth::Ssl => {
                c.set("security.protocol", "ssl");
            }
            KafkaAuth::ScramSha512 { username, password } => {
                c.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanisms", "SCRAM-SHA-512");
                if let Some(u) = username {
                    c.set("sasl.username", u);
                }
                if let Some(p) = password {
                    c.set("sasl.password", p);
                }
            }
            KafkaAuth::MskIam => {
                if !has_token {
                    return Err(ConfigError {
                        key: "sasl.mechanisms".into(),
                        reason: "msk-iam authentication needs an MSK IAM token provider, none \
                                 was given"
                            .into(),
                    });
                }
                c.set("security.protocol", "sasl_ssl")
                    .set("sasl.mechanisms", "OAUTHBEARER");
            }
        }
        Ok(c)
    }
}

/// Whether [`log`] emits a line of `level` as an error (emergency, alert, critical, error).
pub fn is_error(level: RDKafkaLogLevel) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
    )
}

/// One librdkafka log line (`ClientContext::log`) as a `tracing` event with target
/// `librdkafka` and the facility as field `fac`: emergency to error → error, warning → warn,
/// notice and info → info, debug → debug.
pub fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{msg}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{msg}"),
    }
}

/// The body of `ClientContext::generate_oauth_token`: a token from `provider`. When the
/// provider fails, its message goes to `on_failure` (to log or keep it) and is returned as the
/// error (librdkafka retries later); without a provider it is an error too, `on_failure` not
/// called.
pub fn oauth_token(
    provider: Option<&dyn TokenProvider>,
    on_failure: impl FnOnce(&str),
) -> Result<OAuthToken, Box<dyn std::error::Error>> {
    let Some(p) = provider else {
        return Err("no OAUTHBEARER token provider configured".into());
    };
    match p.token() {
        Ok((token, lifetime_ms, principal_name)) => Ok(OAuthToken {
            token,
            principal_name,
            lifetime_ms,
        }),
        Err(e) => {
            on_failure(&e);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn props(c: &ClientConfig) -> BTreeMap<String, String> {
        c.config_map()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec<'a>(properties: &'a [(String, String)], auth: &'a KafkaAuth) -> ClientSpec<'a> {
        ClientSpec {
            brokers: "b1:9092,b2:9092",
            client_id: "me",
            properties,
            auth,
        }
    }

    #[test]
    fn auth_overrides_properties_which_override_own_settings() {
        let file = vec![
            ("linger.ms".to_string(), "7".to_string()),
            ("security.protocol".to_string(), "plaintext".to_string()),
            ("sasl.mechanisms".to_string(), "PLAIN".to_string()),
        ];
        let own = |c: &mut ClientConfig| {
            c.set("linger.ms", "1").set("group.id", "g");
        };
        let p = props(
            &spec(&file, &KafkaAuth::None)
                .client_config(false, own)
                .unwrap(),
        );
        let want: BTreeMap<String, String> = [
            ("bootstrap.servers", "b1:9092,b2:9092"),
            ("client.id", "me"),
            ("group.id", "g"),
            ("linger.ms", "7"),
            ("security.protocol", "plaintext"),
            ("sasl.mechanisms", "PLAIN"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(p, want);

        let p = props(
            &spec(&file, &KafkaAuth::Ssl)
                .client_config(false, own)
                .unwrap(),
        );
        assert_eq!(p["security.protocol"], "ssl");

        let scram = KafkaAuth::ScramSha512 {
            username: Some("u".into()),
            password: Some("secret".into()),
        };
        let c = spec(&file, &scram).client_config(false, own).unwrap();
        assert_eq!(c.get("sasl.password"), Some("secret"));
        let p = props(&c);
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(p["sasl.username"], "u");

        let e = spec(&file, &KafkaAuth::MskIam)
            .client_config(false, own)
            .unwrap_err();
        assert_eq!(e.key, "sasl.mechanisms");
        let p = props(
            &spec(&file, &KafkaAuth::MskIam)
                .client_config(true, own)
                .unwrap(),
        );
        assert_eq!(p["security.protocol"], "sasl_ssl");
        assert_eq!(p["sasl.mechanisms"], "OAUTHBEARER");
    }

    #[test]
    fn only_msk_iam_has_a_token_provider() {
        for auth in [
            KafkaAuth::None,
            KafkaAuth::Ssl,
            KafkaAuth::ScramSha512 {
                username: None,
                password: None,
            },
        ] {
            assert!(token_provider(&auth).unwrap().is_none(), "{auth:?}");
        }
    }

    #[test]
    fn log_levels() {
        use RDKafkaLogLevel::*;
        for l in [Emerg, Alert, Critical, Error] {
            assert!(is_error(l), "{l:?}");
        }
        for l in [Warning, Notice, Info, Debug] {
            assert!(!is_error(l), "{l:?}");
            log(l, "TEST", "a line"); // no subscriber: must not panic
        }
    }

    struct Fixed(Result<(String, i64, String), String>);
    impl TokenProvider for Fixed {
        fn token(&self) -> Result<(String, i64, String), String> {
            self.0.clone()
        }
    }

    #[test]
    fn oauth_token_glue() {
        let mut failures = Vec::new();
        let Err(e) = oauth_token(None, |e| failures.push(e.to_string())) else {
            panic!("a token without a provider");
        };
        assert_eq!(e.to_string(), "no OAUTHBEARER token provider configured");
        assert!(failures.is_empty());

        let ok = Fixed(Ok(("t".into(), 42, "p".into())));
        let t = oauth_token(Some(&ok), |e| failures.push(e.to_string())).unwrap();
        assert_eq!(
            (t.token.as_str(), t.lifetime_ms, t.principal_name.as_str()),
            ("t", 42, "p")
        );
        assert!(failures.is_empty());

        let bad = Fixed(Err("no credentials".into()));
        let Err(e) = oauth_token(Some(&bad), |e| failures.push(e.to_string())) else {
            panic!("a token from a failing provider");
        };
        assert_eq!(e.to_string(), "no credentials");
        assert_eq!(failures, ["no credentials"]);
    }
}
