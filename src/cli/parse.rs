//! Collecting raw values: the environment (`CAPTURE_PROXY_*`) first, then the command line or
//! the Kubernetes JSON form (`---INLINE-JSON`, `---JSON-FILE`) on top, into one [`Collected`]
//! holding each flag's text and where it came from. Nothing is interpreted here.
//!
//! Owns: argument and JSON tokenizing (`--flag v`, `--flag=v`, `--pair NAME VALUE` or
//! `"NAME: VALUE"`, JSON scalars, arrays and objects), and the precedence and repetition rules
//! (a command-line or JSON value overrides the environment; given twice is a usage error).
//!
//! May depend on: `super::defs` (names, kinds), `super` (`CliError`, `MASK`), `serde_json`,
//! `base64`, reading the `---JSON-FILE`; its tests on `crate::config`.
//!
//! Invariant: every raw value carries its origin (`--listenPort`, `CAPTURE_PROXY_LISTEN_PORT`,
//! `listenPort (JSON)`) for error messages, and no error here echoes a value that may be a
//! secret (an unknown flag's `=value`, the JSON text, a secret flag's value).

use super::defs::{index_of, lookup, spec, Flag, FlagSpec, Kind, FLAGS};
use super::{CliError, MASK};

/// One raw value and where it came from (`--listenPort`, `CAPTURE_PROXY_LISTEN_PORT`,
/// `listenPort (JSON)`), for error messages.
#[derive(Debug, Clone)]
pub(super) struct Raw {
    pub(super) text: String,
    pub(super) origin: String,
}

/// One `name value` pair of a repeatable flag.
#[derive(Debug, Clone)]
pub(super) struct RawPair {
    pub(super) name: String,
    pub(super) value: String,
    pub(super) origin: String,
}

/// Raw values by flag-table row.
pub(super) struct Collected {
    scalars: Vec<Option<Raw>>,
    /// The value came from the command line or JSON (not the environment), so a second one
    /// is a conflict rather than an override.
    explicit: Vec<bool>,
    pairs: Vec<Vec<RawPair>>,
}

impl Collected {
    pub(super) fn new() -> Collected {
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

    pub(super) fn get(&self, id: Flag) -> Option<&Raw> {
        self.scalars.get(index_of(id)).and_then(Option::as_ref)
    }

    pub(super) fn pairs(&self, id: Flag) -> &[RawPair] {
        self.pairs.get(index_of(id)).map_or(&[], Vec::as_slice)
    }
}

/// Reads every scalar flag's `CAPTURE_PROXY_*` variable. Empty variables count as unset
/// (orchestrators often define a variable with no value).
pub(super) fn collect_env(
    c: &mut Collected,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CliError> {
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
pub(super) fn flag_word(arg: &str) -> &str {
    arg.split('=').next().unwrap_or(arg)
}

pub(super) fn collect_args(args: &[String], c: &mut Collected) -> Result<(), CliError> {
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

pub(super) fn is_json_flag(arg: &str) -> bool {
    let w = flag_word(arg);
    w == INLINE_JSON || w == JSON_FILE
}

/// `---INLINE-JSON x` / `---JSON-FILE p` (optionally with `--check-config`): the JSON object
/// replaces the other command-line flags.
pub(super) fn collect_json_mode(args: &[String], c: &mut Collected) -> Result<(), CliError> {
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

#[cfg(test)]
mod tests {
    use crate::cli::test_support::*;
    use crate::cli::Command;
    use crate::config::{Config, Destination, KafkaAuth, SinkConfig, DEFAULT_KAFKA_TOPIC};
    use std::time::Duration;

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
}
