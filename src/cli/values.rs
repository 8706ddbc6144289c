//! Value parsers and formatters: flag text ↔ typed values (URIs, addresses, durations, sizes,
//! CPU lists, regexes, enumerated words), and the checks on named files and directories.
//!
//! Owns: every spelling a flag value may take, both ways: `parse_*` read a value, `fmt_*` and
//! [`choice_name`] write it back in a form the parser takes (`--help` defaults and
//! `--check-config` use them).
//!
//! May depend on: `crate::config` (the value types), `regex`, the file system (to check that
//! named files exist and are readable). Knows nothing of flag names or the flag table.
//!
//! Invariant: each parser returns a one-line reason on failure, never naming the flag or
//! echoing the value — the caller adds both (masking secrets); every `fmt_*` output parses back
//! to the same value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::config::{Destination, FailurePolicy, IoDriver, KafkaAuth, LogFormat};

/// Highest CPU number `--cpu-list` accepts: glibc's `CPU_SETSIZE` (1024) bits in a cpu_set_t.
pub(crate) const MAX_CPU_INDEX: usize = 1023;

// ---------------------------------------------------------------------------------------------
// Enumerated values (`--io-driver auto|uring|legacy`, …).
// ---------------------------------------------------------------------------------------------

/// A value spelled as one of a fixed set of words.
pub(super) trait Choice: Copy + PartialEq + 'static {
    /// Every accepted spelling (matched case-insensitively); a value's first spelling is how
    /// it is shown.
    const NAMES: &'static [(&'static str, Self)];
}

/// Reads a [`Choice`] value.
pub(super) fn parse_choice<T: Choice>(s: &str) -> Result<T, String> {
    let t = s.trim();
    T::NAMES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(t))
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let names: Vec<&str> = T::NAMES.iter().map(|(n, _)| *n).collect();
            format!("expected one of {}", names.join(", "))
        })
}

/// How a [`Choice`] value is shown: its first spelling (every value has one; tested).
pub(super) fn choice_name<T: Choice>(v: T) -> &'static str {
    T::NAMES
        .iter()
        .find(|(_, x)| *x == v)
        .map_or("?", |&(n, _)| n)
}

impl Choice for IoDriver {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("auto", IoDriver::Auto),
        ("uring", IoDriver::Uring),
        ("legacy", IoDriver::Legacy),
        ("epoll", IoDriver::Legacy),
    ];
}

impl Choice for FailurePolicy {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("forward", FailurePolicy::Forward),
        ("reject", FailurePolicy::Reject),
    ];
}

impl Choice for LogFormat {
    const NAMES: &'static [(&'static str, Self)] =
        &[("text", LogFormat::Text), ("json", LogFormat::Json)];
}

/// Kafka auth as named by `--kafkaAuthType` (`KafkaAuth` without its SCRAM credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthType {
    None,
    MskIam,
    ScramSha512,
    Ssl,
}

impl Choice for AuthType {
    const NAMES: &'static [(&'static str, Self)] = &[
        ("none", AuthType::None),
        ("msk-iam", AuthType::MskIam),
        ("scram-sha-512", AuthType::ScramSha512),
        ("ssl", AuthType::Ssl),
    ];
}

impl AuthType {
    /// `--kafkaAuthType` when the flag is unset (and neither `--enableMSKAuth` nor the
    /// property file asks for MSK IAM). The one default that is not in `config`: its type is
    /// this module's.
    pub(super) const DEFAULT: AuthType = AuthType::None;

    /// The auth type a built `KafkaAuth` came from.
    pub(super) fn of(auth: &KafkaAuth) -> AuthType {
        match auth {
            KafkaAuth::None => AuthType::None,
            KafkaAuth::Ssl => AuthType::Ssl,
            KafkaAuth::MskIam => AuthType::MskIam,
            KafkaAuth::ScramSha512 { .. } => AuthType::ScramSha512,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formatters: typed value → text the matching parser reads back.
// ---------------------------------------------------------------------------------------------

/// A duration the way our flags take it back: `0`, `250ms`, `5s`, `1m`, `1h`, `1.5s`.
pub(super) fn fmt_duration(d: Duration) -> String {
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

/// A duration in the ISO-8601 form the Java flags document: `PT30S`, `PT0.25S`.
pub(super) fn fmt_iso_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        return format!("PT{}S", d.as_secs());
    }
    let frac = format!("{:09}", d.subsec_nanos());
    format!("PT{}.{}S", d.as_secs(), frac.trim_end_matches('0'))
}

/// A byte size in the largest binary unit that divides it: `256MiB`, `1GiB`, else bytes.
pub(super) fn fmt_size(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        let per = 1u64 << shift;
        if n >= per && n % per == 0 {
            return format!("{}{unit}", n / per);
        }
    }
    n.to_string()
}

// ---------------------------------------------------------------------------------------------
// Parsers. Each returns a one-line reason on failure; the caller names flag and value.
// ---------------------------------------------------------------------------------------------

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err("expected true, false, 1 or 0".to_string()),
    }
}

pub(super) fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse::<T>()
        .map_err(|_| "expected a non-negative whole number".to_string())
}

/// `http[s]://HOST[:PORT][/path…]`: scheme decides TLS, ports default to 80/443, the path,
/// query and fragment are ignored; IPv6 literals must be bracketed.
pub(super) fn parse_destination(s: &str) -> Result<Destination, String> {
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
pub(super) fn parse_ip(s: &str) -> Result<IpAddr, String> {
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
pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
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
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
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
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
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
pub(super) fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
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
pub(super) fn full_match_regex(pattern: &str) -> Result<regex::bytes::Regex, String> {
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
pub(super) fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Checks that `path` is a readable file; with `pem_label`, that it holds that PEM block
/// (e.g. `CERTIFICATE`, or `PRIVATE KEY` which also matches `RSA PRIVATE KEY`).
pub(super) fn check_file(path: &Path, pem_label: Option<&str>) -> Result<(), String> {
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

pub(super) fn check_pem(text: &str, label: &str) -> Result<(), String> {
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
pub(super) fn check_dir(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err("exists and is not a directory".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot use: {e}")),
    }
}

pub(super) fn check_brokers(s: &str) -> Result<String, String> {
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
pub(super) fn check_topic(s: &str) -> Result<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::*;

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
    fn formatters_parse_back() {
        for n in [
            0,
            1,
            1000,
            1024,
            1536,
            64 << 20,
            256 << 20,
            1 << 30,
            3 << 40,
            u64::MAX,
        ] {
            assert_eq!(parse_size(&fmt_size(n)), Ok(n), "{n}");
        }
        assert_eq!(fmt_size(256 << 20), "256MiB");
        assert_eq!(fmt_size(1 << 30), "1GiB");
        assert_eq!(fmt_size(1_000_000), "1000000");
        for d in [
            Duration::ZERO,
            Duration::from_secs(30),
            Duration::from_millis(250),
            Duration::from_nanos(1_000_000_001),
        ] {
            assert_eq!(parse_duration(&fmt_iso_duration(d)), Ok(d), "{d:?}");
        }
        assert_eq!(fmt_iso_duration(Duration::from_secs(30)), "PT30S");
        assert_eq!(fmt_iso_duration(Duration::from_millis(1500)), "PT1.5S");
    }

    /// Every value of each enumerated flag has a name, and the name reads back as the value.
    #[test]
    fn choices_round_trip() {
        fn check<T: Choice + std::fmt::Debug>(all: &[T]) {
            for &v in all {
                assert_ne!(choice_name(v), "?", "{v:?} has no name");
                assert_eq!(parse_choice::<T>(choice_name(v)), Ok(v));
                assert_eq!(parse_choice::<T>(&choice_name(v).to_uppercase()), Ok(v));
            }
            assert!(parse_choice::<T>("bogus")
                .unwrap_err()
                .starts_with("expected one of"));
        }
        check(&[IoDriver::Auto, IoDriver::Uring, IoDriver::Legacy]);
        check(&[FailurePolicy::Forward, FailurePolicy::Reject]);
        check(&[LogFormat::Text, LogFormat::Json]);
        check(&[
            AuthType::None,
            AuthType::MskIam,
            AuthType::ScramSha512,
            AuthType::Ssl,
        ]);
        assert_eq!(parse_choice::<IoDriver>("epoll"), Ok(IoDriver::Legacy));
        assert_eq!(choice_name(IoDriver::Legacy), "legacy");
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
}
