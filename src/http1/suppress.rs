//! Capture suppression predicate: decides from a complete request head whether the request
//! (and its response) is forwarded without being captured (`--suppressCaptureFor*`).
//!
//! Owns: [`SuppressConfig`], the compiled rules (`cli` builds them from the flags, `Config`
//! holds them).
//!
//! May depend on: `regex`, `super::request`.
//!
//! Invariant: every rule is a *full* match (the config builder anchors each regex, so
//! `is_match` means the whole text matched); no rules ⇒ `false` without looking at the head;
//! no allocation unless `METHOD target` exceeds [`METHOD_AND_PATH_STACK_BYTES`].

use super::request::RequestHead;

/// Compiled suppression rules (`Config::suppress`). Each regex is anchored so `is_match` is a *full* match.
#[derive(Debug, Clone, Default)]
pub struct SuppressConfig {
    /// (lower-cased header name, anchored value regex)
    pub header_matches: Vec<(String, regex::bytes::Regex)>,
    pub method: Option<regex::bytes::Regex>,
    pub uri_path: Option<regex::bytes::Regex>,
    pub method_and_path: Option<regex::bytes::Regex>,
}

/// Stack scratch for the `"METHOD target"` text matched by `--suppressMethodAndPath`. 2 KiB
/// holds the method and target of practically every request (Elasticsearch URIs are usually
/// well under 1 KiB); a longer one costs one allocation.
const METHOD_AND_PATH_STACK_BYTES: usize = 2048;

/// True when capture of the request with this head is suppressed: its method, target,
/// `"METHOD target"`, or any header (name compared case-insensitively, value fully matched)
/// matches a rule.
///
/// The Java proxy also always suppresses versions matching `HTTP/2.*`; such a request cannot
/// reach here (httparse only accepts HTTP/1.x, and the h2c preface is
/// [`Event::Http2Preface`](super::Event::Http2Preface), which the caller never captures).
pub(crate) fn is_suppressed(rules: &SuppressConfig, head: &RequestHead<'_>) -> bool {
    if rules.method.is_none()
        && rules.uri_path.is_none()
        && rules.method_and_path.is_none()
        && rules.header_matches.is_empty()
    {
        return false;
    }
    if rules
        .method
        .as_ref()
        .is_some_and(|re| re.is_match(head.method_bytes))
    {
        return true;
    }
    if rules
        .uri_path
        .as_ref()
        .is_some_and(|re| re.is_match(head.target))
    {
        return true;
    }
    if let Some(re) = &rules.method_and_path {
        if matches_method_and_path(re, head.method_bytes, head.target) {
            return true;
        }
    }
    if !rules.header_matches.is_empty() {
        for (name, value) in head.headers.iter() {
            for (rule_name, re) in &rules.header_matches {
                if name.eq_ignore_ascii_case(rule_name.as_bytes()) && re.is_match(value) {
                    return true;
                }
            }
        }
    }
    false
}

fn matches_method_and_path(re: &regex::bytes::Regex, method: &[u8], target: &[u8]) -> bool {
    let len = method.len().saturating_add(1).saturating_add(target.len());
    let mut stack = [0u8; METHOD_AND_PATH_STACK_BYTES];
    if let Some(buf) = stack.get_mut(..len) {
        let (m, rest) = buf.split_at_mut(method.len());
        m.copy_from_slice(method);
        if let Some((space, t)) = rest.split_first_mut() {
            *space = b' ';
            t.copy_from_slice(target);
        }
        return re.is_match(buf);
    }
    let mut heap = Vec::with_capacity(len);
    heap.extend_from_slice(method);
    heap.push(b' ');
    heap.extend_from_slice(target);
    re.is_match(&heap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::{Event, FramerLimits, RequestFramer};
    use regex::bytes::Regex;

    /// Anchors like the config builder does.
    fn full(re: &str) -> Regex {
        Regex::new(&format!(r"\A(?:{re})\z")).unwrap()
    }

    fn check(rules: &SuppressConfig, request: &[u8]) -> bool {
        // Relaxed where these cases are about something else (a 5 000-byte target).
        let mut f = RequestFramer::new(FramerLimits {
            require_host: false,
            max_request_line_bytes: 64 * 1024,
            ..FramerLimits::default()
        });
        match f.advance(request).unwrap().event {
            Some(Event::HeadComplete(head)) => is_suppressed(rules, &head),
            other => panic!("no head: {other:?}"),
        }
    }

    const REQ: &[u8] =
        b"GET /_cat/indices?v HTTP/1.1\r\nHost: x\r\nUser-Agent: elastic-java/7.17.0 (Java)\r\n\r\n";

    #[test]
    fn empty_rules_never_suppress() {
        assert!(!check(&SuppressConfig::default(), REQ));
    }

    #[test]
    fn method_rule_is_full_match() {
        let mut rules = SuppressConfig {
            method: Some(full("GET")),
            ..Default::default()
        };
        assert!(check(&rules, REQ));
        rules.method = Some(full("GE"));
        assert!(!check(&rules, REQ));
        rules.method = Some(full("POST|PUT"));
        assert!(!check(&rules, REQ));
    }

    #[test]
    fn uri_rule_matches_target_with_query() {
        let mut rules = SuppressConfig {
            uri_path: Some(full("/_cat/.*")),
            ..Default::default()
        };
        assert!(check(&rules, REQ));
        rules.uri_path = Some(full("/_cat/indices"));
        assert!(!check(&rules, REQ), "partial match (query not covered)");
        rules.uri_path = Some(full("/_cat/indices\\?v"));
        assert!(check(&rules, REQ));
    }

    #[test]
    fn method_and_path_rule() {
        let mut rules = SuppressConfig {
            method_and_path: Some(full("GET /_cat/.*")),
            ..Default::default()
        };
        assert!(check(&rules, REQ));
        rules.method_and_path = Some(full("GET /_cat"));
        assert!(!check(&rules, REQ));
        rules.method_and_path = Some(full("POST /_cat/.*"));
        assert!(!check(&rules, REQ));
        // A target longer than the stack scratch uses the heap fallback.
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
        rules.method_and_path = Some(full("GET /a+"));
        assert!(check(&rules, long.as_bytes()));
        rules.method_and_path = Some(full("GET /a"));
        assert!(!check(&rules, long.as_bytes()));
    }

    #[test]
    fn header_rule_name_case_insensitive_value_full_match() {
        let mut rules = SuppressConfig {
            header_matches: vec![("user-agent".into(), full(".*elastic-java/7.17.0.*"))],
            ..Default::default()
        };
        assert!(check(&rules, REQ));
        rules.header_matches = vec![("user-agent".into(), full("elastic-java"))];
        assert!(!check(&rules, REQ), "partial value match");
        rules.header_matches = vec![("host".into(), full("y"))];
        assert!(!check(&rules, REQ));
        rules.header_matches = vec![("x-other".into(), full(".*")), ("host".into(), full("x"))];
        assert!(check(&rules, REQ));
        // The rule's value regex must not match another header's value.
        rules.header_matches = vec![("host".into(), full("elastic-java.*"))];
        assert!(!check(&rules, REQ));
    }
}
