//! Kafka producer properties: a Java `.properties` file (`--kafkaPropertyFile`) read and
//! translated to librdkafka keys, including the JAAS line of SCRAM credentials and the MSK IAM
//! settings (which become the `msk-iam` auth type). `inspect` reads its Kafka input's file
//! through [`load_kafka_properties`] too.
//!
//! Owns: the properties syntax (separators, continuation lines, escapes, repeated keys), the
//! Java-key → librdkafka-key mapping, which keys are refused, and which values are secrets.
//!
//! May depend on: `super::values` (file checks), `super` (`CliError`, `MASK`), the file system;
//! its tests on `crate::config` (`KafkaAuth`).
//!
//! Invariant: an unknown or unsupported key is an error naming the key and its line, never
//! silently dropped; a secret value (passwords, the JAAS line) never appears in an error.

use std::path::Path;

use super::values::check_file;
use super::{CliError, MASK};

/// Producer settings read from a `--kafkaPropertyFile`, already in librdkafka terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KafkaProperties {
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
pub(super) fn secret_property(key: &str) -> bool {
    key.contains("password") || key == "sasl.jaas.config"
}

/// Reads and translates a producer properties file (`--kafkaPropertyFile`). Also used by
/// `inspect` for its Kafka input.
pub(crate) fn load_kafka_properties(path: &Path) -> Result<KafkaProperties, CliError> {
    load_kafka_properties_as(path, "--kafkaPropertyFile")
}

pub(super) fn load_kafka_properties_as(
    path: &Path,
    flag: &str,
) -> Result<KafkaProperties, CliError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;
    use crate::config::KafkaAuth;

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
}
