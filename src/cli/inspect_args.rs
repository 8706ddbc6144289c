//! `capture-proxy inspect …`: its own small flag set (`--traceDirectory` or
//! `--kafkaConnection` with `--kafkaTopic`, `--from-offsets`, `--kafkaPropertyFile`; `--json`,
//! `--summary`) parsed into [`InspectArgs`] for `crate::inspect`.
//!
//! Owns: which flags `inspect` takes and how they combine. The shared ones keep the main
//! table's names and spellings (looked up there); environment and JSON do not apply.
//!
//! May depend on: `super::defs` (name lookup), `super::parse` (`Raw`, `flag_word`),
//! `super::values` (value checks), `super::help` (its help text), `super` (`Command`,
//! `CliError`), `crate::config` (the default topic), the file system.
//!
//! Invariant: exactly one input is set in a returned `InspectArgs`, and named paths existed
//! when parsed.

use std::path::PathBuf;

use super::defs::{lookup, Flag};
use super::help::inspect_help_text;
use super::parse::{flag_word, Raw};
use super::values::{check_brokers, check_file, check_topic, parse_bool};
use super::{usage, CliError, Command};
use crate::config::DEFAULT_KAFKA_TOPIC;

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

pub(super) fn parse_inspect(args: &[String]) -> Result<Command, CliError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;
    use std::path::Path;

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
