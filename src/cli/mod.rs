//! The command-line and configuration front end: turns arguments, the environment
//! (`CAPTURE_PROXY_*`) and the Kubernetes JSON form (`---INLINE-JSON`, `---JSON-FILE`) into a
//! validated [`Config`], an `inspect` request, or help/version text (spec: `cli.md`).
//!
//! Owns: the public entry points ([`parse`], [`render_effective`], `load_kafka_properties`),
//! the [`Command`] and [`CliError`] they return, and how secrets are masked. The work is split
//! the way ripgrep splits `crates/core/flags/`:
//! - `defs`: the one flag table — names, kinds, help, typed defaults (`config::DEFAULT_*`);
//! - `parse`: environment, argv and JSON → raw values with their origins;
//! - `values`: value parsers and formatters (URIs, durations, sizes, CPU lists, regexes, words);
//! - `java_props`: Kafka producer properties and JAAS → librdkafka keys;
//! - `build`: raw values → validated `Config`;
//! - `inspect_args`: the `inspect` subcommand's flags;
//! - `help`: `--help`, `inspect --help`, `--version`;
//! - `effective`: `--check-config` output.
//!
//! To follow a flag, grep its name: its row in `defs.rs` gives every spelling, its default and
//! help; its `Flag::` variant leads to `build.rs` (the `Config` field) and `effective.rs`.
//!
//! May depend on: `crate::config` (the types it builds and the defaults), `crate::http1`
//! (the `--setHeader` entry check), `regex`, `serde_json`, `base64`, the file system (to check
//! that named files exist and are readable). Never on the data path.
//!
//! Invariants: a `Config` is returned only after every value is validated; usage mistakes
//! (unknown, missing, conflicting flags) are `CliError::Usage` (exit 2), bad values are
//! `CliError::BadValue` (exit 3) naming the flag and the value; secrets (the Kafka password,
//! JSON arguments, password-like producer properties) never appear in errors or output.

mod build;
mod defs;
mod effective;
mod help;
mod inspect_args;
mod java_props;
mod parse;
mod values;

#[cfg(test)]
mod test_support;

use crate::config::Config;

pub use effective::render_effective;
pub use inspect_args::InspectArgs;
pub(crate) use java_props::load_kafka_properties;

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
pub(crate) const EXIT_USAGE: i32 = 2;
/// Exit status for a flag with a bad value (the Java proxy exits 3 on a bad URI).
pub(crate) const EXIT_BAD_VALUE: i32 = 3;

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// What is shown instead of a secret.
const MASK: &str = "****";

/// A header whose value is treated as a secret when shown (`--setHeader Authorization …`).
fn sensitive_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["auth", "cookie", "token", "secret", "key", "password"]
        .iter()
        .any(|w| n.contains(w))
}

/// Parses the command line (without argv[0]) over a snapshot of the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, CliError> {
    if args.first().map(String::as_str) == Some("inspect") {
        return inspect_args::parse_inspect(args.get(1..).unwrap_or(&[]));
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help(help::help_text()));
    }
    if args.iter().any(|a| a == "--version") {
        return Ok(Command::Version(help::version_text()));
    }
    let mut c = parse::Collected::new();
    parse::collect_env(&mut c, env)?;
    if args.iter().any(|a| parse::is_json_flag(a)) {
        parse::collect_json_mode(args, &mut c)?;
    } else {
        parse::collect_args(args, &mut c)?;
    }
    let check = c.on(defs::Flag::CheckConfig)?;
    let cfg = Box::new(build::build_config(&c, env)?);
    Ok(if check {
        Command::CheckConfig(cfg)
    } else {
        Command::Run(cfg)
    })
}
