//! Helpers the `cli` unit tests share (compiled for tests only): run `parse` over given
//! arguments and environment, and expect a configuration, a usage error (exit 2) or a bad
//! value naming a flag (exit 3); fake PEM files.
//!
//! May depend on: `super` (the public entry points only), `crate::config`, `tempfile` paths.
//!
//! Invariant: every helper goes through `cli::parse`, as the binary does, so a test that uses
//! them checks behaviour rather than a module's internals.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use super::{parse, CliError, Command};
use crate::config::{Config, KafkaConfig, SinkConfig};

pub(super) const CERT_PEM: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n";
pub(super) const KEY_PEM: &str =
    "-----BEGIN PRIVATE KEY-----\nMIIEfake\n-----END PRIVATE KEY-----\n";

pub(super) fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

pub(super) fn run_env(a: &[&str], env: &[(&str, &str)]) -> Result<Command, CliError> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse(&strings(a), &move |k: &str| map.get(k).cloned())
}

pub(super) fn cfg_env(a: &[&str], env: &[(&str, &str)]) -> Config {
    match run_env(a, env) {
        Ok(Command::Run(c)) => *c,
        Ok(_) => panic!("not a Run command for {a:?}"),
        Err(e) => panic!("{a:?}: {e}"),
    }
}

pub(super) fn cfg(a: &[&str]) -> Config {
    cfg_env(a, &[])
}

pub(super) fn err_env(a: &[&str], env: &[(&str, &str)]) -> CliError {
    match run_env(a, env) {
        Ok(_) => panic!("{a:?} unexpectedly parsed"),
        Err(e) => e,
    }
}

pub(super) fn err(a: &[&str]) -> CliError {
    err_env(a, &[])
}

/// A usage error (exit 2) whose message contains `needle`.
pub(super) fn usage_err(a: &[&str], needle: &str) {
    let e = err(a);
    assert_eq!(e.exit_code(), 2, "{a:?}: {e}");
    assert!(matches!(e, CliError::Usage(_)));
    assert!(
        e.to_string().contains(needle),
        "{a:?}: '{e}' lacks '{needle}'"
    );
}

/// A bad-value error (exit 3) naming `flag`.
pub(super) fn bad_err(a: &[&str], flag: &str) -> CliError {
    let e = err(a);
    assert_eq!(e.exit_code(), 3, "{a:?}: {e}");
    match &e {
        CliError::BadValue { flag: f, .. } => assert_eq!(f, flag, "{e}"),
        CliError::Usage(_) => panic!("{a:?}: expected BadValue, got {e}"),
    }
    e
}

pub(super) const DEST: [&str; 4] = [
    "--destinationUri",
    "http://localhost:9200",
    "--listenPort",
    "9200",
];

pub(super) fn base(extra: &[&str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = DEST.to_vec();
    v.push("--noCapture");
    for e in extra {
        v.push(Box::leak(e.to_string().into_boxed_str()));
    }
    v
}

pub(super) fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    p.to_str().unwrap().to_string()
}

pub(super) fn kafka(c: &Config) -> &KafkaConfig {
    match &c.sink {
        SinkConfig::Kafka(k) => k,
        other => panic!("{other:?}"),
    }
}
