//! `--setHeader` head rewrite: [`HeadRewriter`] removes every header line of each configured
//! name from a complete request head and inserts `name: value` lines right after the request
//! line, keeping the request's line-ending style (CRLF or bare LF).
//!
//! May depend on: nothing outside `http1` (std, thiserror).
//!
//! Invariant: only the head is rewritten, into an output buffer that keeps its capacity (no
//! allocation per request in steady state); the configured lines are validated once, in
//! [`HeadRewriter::new`], so a rewrite cannot inject a line break.

/// One `--setHeader` entry (issue 4): name as given, value as given (`Config::set_headers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetHeader {
    pub name: String,
    pub value: String,
}

/// Why a `--setHeader` entry or a head cannot be used.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RewriteError {
    #[error("--setHeader name {0:?} is not a valid header name")]
    InvalidName(String),
    #[error("--setHeader value for {0:?} contains a control byte (only HTAB is allowed)")]
    InvalidValue(String),
    /// `Content-Length` / `Transfer-Encoding`: the proxy frames each request by the client's
    /// head, so the destination must frame it the same way; a rewritten framing header would
    /// desynchronize the connection.
    #[error("--setHeader cannot set {0:?}: it changes how the request body is framed")]
    FramingHeader(String),
    #[error("not a complete request head")]
    NotAHead,
}

/// Rewrites request heads for a fixed list of `--setHeader` entries.
#[derive(Debug, Clone)]
pub struct HeadRewriter {
    /// Names whose lines are removed, as configured (compared case-insensitively).
    names: Vec<Vec<u8>>,
    /// The inserted lines, each ending in CRLF.
    lines_crlf: Vec<u8>,
    /// The inserted lines, each ending in LF.
    lines_lf: Vec<u8>,
    out: Vec<u8>,
}

use super::is_tchar;

/// Validates one `--setHeader` entry: a `tchar` name other than the framing headers, and a
/// value any strict HTTP/1 parser accepts (RFC 9110 §5.5: HTAB, SP, VCHAR, obs-text; no other
/// control byte). The CLI and [`HeadRewriter::new`] share it.
pub(crate) fn check_entry(name: &str, value: &str) -> Result<(), RewriteError> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(RewriteError::InvalidName(name.to_string()));
    }
    if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding")
    {
        return Err(RewriteError::FramingHeader(name.to_string()));
    }
    if !value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
    {
        return Err(RewriteError::InvalidValue(name.to_string()));
    }
    Ok(())
}

impl HeadRewriter {
    /// Validates the entries once. When a name is listed more than once the last value wins,
    /// as with the Java proxy, whose handlers each removed the name before inserting it.
    pub fn new(set: &[SetHeader]) -> Result<Self, RewriteError> {
        let mut kept: Vec<&SetHeader> = Vec::with_capacity(set.len());
        for h in set {
            check_entry(&h.name, &h.value)?;
            kept.retain(|k| !k.name.eq_ignore_ascii_case(&h.name));
            kept.push(h);
        }
        let mut names = Vec::with_capacity(kept.len());
        let mut lines_crlf = Vec::new();
        let mut lines_lf = Vec::new();
        for h in kept {
            names.push(h.name.as_bytes().to_vec());
            for (lines, ending) in [(&mut lines_crlf, &b"\r\n"[..]), (&mut lines_lf, &b"\n"[..])] {
                lines.extend_from_slice(h.name.as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(h.value.as_bytes());
                lines.extend_from_slice(ending);
            }
        }
        Ok(HeadRewriter {
            names,
            lines_crlf,
            lines_lf,
            out: Vec::new(),
        })
    }

    /// No entries: heads pass unchanged, the caller need not rewrite.
    pub fn is_noop(&self) -> bool {
        self.names.is_empty()
    }

    /// Rewrites `head` (request line through the empty line, e.g.
    /// [`RequestHead::raw`](super::RequestHead::raw)) into the internal buffer and returns it.
    /// Continuation lines (obs-fold) follow their header line. Bytes after the empty line,
    /// if any, are copied unchanged.
    pub fn rewrite(&mut self, head: &[u8]) -> Result<&[u8], RewriteError> {
        self.out.clear();
        let first_end = head
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(RewriteError::NotAHead)?;
        let crlf = first_end > 0 && head.get(first_end - 1) == Some(&b'\r');
        let (request_line, mut rest) = head.split_at(first_end + 1);
        self.out.extend_from_slice(request_line);
        self.out.extend_from_slice(if crlf {
            &self.lines_crlf
        } else {
            &self.lines_lf
        });
        let mut dropping = false;
        loop {
            let line_end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or(RewriteError::NotAHead)?;
            let (line, tail) = rest.split_at(line_end + 1);
            rest = tail;
            if matches!(line, b"\n" | b"\r\n") {
                self.out.extend_from_slice(line);
                self.out.extend_from_slice(rest);
                return Ok(&self.out);
            }
            if matches!(line.first(), Some(b' ' | b'\t')) {
                // obs-fold: belongs to the previous header line.
            } else {
                let name = line.split(|&b| b == b':').next().unwrap_or_default();
                dropping = self.names.iter().any(|n| n.eq_ignore_ascii_case(name));
            }
            if !dropping {
                self.out.extend_from_slice(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Vec<SetHeader> {
        pairs
            .iter()
            .map(|(n, v)| SetHeader {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    #[test]
    fn replaces_and_inserts_first_crlf() {
        let mut r = HeadRewriter::new(&set(&[("Host", "dest:9200"), ("X-A", "1")])).unwrap();
        let head = b"GET / HTTP/1.1\r\nhost: a\r\nAccept: */*\r\nHOST: b\r\nx-a: 0\r\n\r\n";
        assert_eq!(
            r.rewrite(head).unwrap(),
            &b"GET / HTTP/1.1\r\nHost: dest:9200\r\nX-A: 1\r\nAccept: */*\r\n\r\n"[..]
        );
    }

    #[test]
    fn keeps_bare_lf_style_and_reuses_buffer() {
        let mut r = HeadRewriter::new(&set(&[("Authorization", "Basic eA==")])).unwrap();
        let head = b"POST /i/_doc HTTP/1.1\nauthorization: old\nContent-Length: 2\n\n";
        let want = &b"POST /i/_doc HTTP/1.1\nAuthorization: Basic eA==\nContent-Length: 2\n\n"[..];
        assert_eq!(r.rewrite(head).unwrap(), want);
        let cap = r.out.capacity();
        assert_eq!(r.rewrite(head).unwrap(), want);
        assert_eq!(r.out.capacity(), cap);
    }

    #[test]
    fn last_duplicate_wins_and_folds_follow_their_line() {
        let mut r = HeadRewriter::new(&set(&[("a", "1"), ("A", "2")])).unwrap();
        let head = b"GET / HTTP/1.1\r\nA: x\r\n  folded\r\nB: y\r\n\r\n";
        assert_eq!(
            r.rewrite(head).unwrap(),
            &b"GET / HTTP/1.1\r\nA: 2\r\nB: y\r\n\r\n"[..]
        );
    }

    #[test]
    fn rejects_bad_config_and_incomplete_heads() {
        assert!(HeadRewriter::new(&set(&[("Bad Name", "v")])).is_err());
        assert!(HeadRewriter::new(&set(&[("", "v")])).is_err());
        assert!(HeadRewriter::new(&set(&[("X", "a\r\nInjected: 1")])).is_err());
        let mut r = HeadRewriter::new(&set(&[("X", "1")])).unwrap();
        assert_eq!(
            r.rewrite(b"GET / HTTP/1.1\r\nA: b\r\n"),
            Err(RewriteError::NotAHead)
        );
        assert_eq!(r.rewrite(b"GET / HTTP/1.1"), Err(RewriteError::NotAHead));
        assert!(HeadRewriter::new(&[]).unwrap().is_noop());
    }
}
