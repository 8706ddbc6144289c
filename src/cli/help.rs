//! Help and version text: `--help` generated from the flag table (groups in order, aliases,
//! metavars, help and the default derived from each row's typed default), `inspect --help`,
//! `--version`.
//!
//! Owns: the layout (width, description column, wrapping) and the prose around the table.
//!
//! May depend on: `super::defs`.
//!
//! Invariant: every flag in the table appears under its group, with its default when it has
//! one; no line is wider than [`HELP_WIDTH`] (tested).

use super::defs::{FLAGS, GROUPS};

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

pub(super) fn help_text() -> String {
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
            if let Some(default) = s.default.shown() {
                desc.push_str(&format!(" [default: {default}]"));
            }
            wrap_into(&mut out, &desc, HELP_DESC_COL);
        }
    }
    out.push_str(
        "\nDurations: 250ms, 5s, 1m, 1h, 0 or ISO-8601 (PT30S). Sizes: 1000000, 64MiB, 1GiB.\n",
    );
    out
}

pub(super) fn inspect_help_text() -> String {
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

/// `capture-proxy --version` output.
pub(super) fn version_text() -> String {
    format!("capture-proxy {}\n", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;
    use crate::cli::Command;

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
                if let Some(default) = s.default.shown() {
                    assert!(
                        text.contains(&format!("[default: {default}]")),
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
}
