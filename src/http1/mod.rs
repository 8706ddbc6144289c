//! Sans-IO HTTP/1.x framing: where each request and response starts and ends in a byte
//! stream, what its head says (method, target, headers, body framing), whether capture of a
//! request is suppressed, and the `--setHeader` head rewrite.
//!
//! Owns: [`RequestFramer`] (client → destination), [`ResponseFramer`] (destination → client),
//! `is_suppressed` and its rules ([`SuppressConfig`]), [`HeadRewriter`] and its entries
//! ([`SetHeader`]), and the primitives they share (limits, errors, the empty-line scanner, the
//! split-head accumulator and the body decoder), which live here. `config` holds the rule
//! types; `cli` builds them from the flags.
//!
//! May depend on: nothing of the crate: `httparse` (head parsing), `regex` (suppression).
//! Nothing here does I/O or knows sockets, threads, capture formats or flags.
//!
//! Invariant: the framers never copy body bytes and never allocate per message in steady
//! state; they only observe the bytes the caller forwards unchanged. A framer's answer never
//! depends on how the caller split the stream into calls: the same bytes give the same events
//! at the same absolute offsets. Peer bytes can make a framer return an error, never panic.

pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod rewrite;
pub(crate) mod suppress;

pub use request::{
    line_lengths, Event, HeaderIter, Headers, Method, RequestFramer, RequestHead, Step,
};
pub use response::{ExpectedResponse, REvent, RStep, ResponseFramer};
pub use rewrite::{HeadRewriter, RewriteError, SetHeader};
pub(crate) use suppress::is_suppressed;
pub use suppress::SuppressConfig;

/// Size limits shared by both framers. They bound memory (heads are the only bytes a framer
/// ever buffers) and stop a peer from streaming endless framing metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerLimits {
    /// Most bytes of one message head (start line + header lines + the empty line, without
    /// leading empty lines). Exceeding it is [`FrameError::HeadTooLarge`] (the proxy answers
    /// 431).
    pub max_head_bytes: usize,
    /// Most bytes of one chunk-size line, extensions and line ending included.
    pub max_chunk_line_bytes: usize,
    /// Most bytes of a chunked body's trailer section, the final empty line included.
    pub max_trailer_bytes: usize,
    /// Requests: most bytes of the request line, without its line ending — the source's
    /// `http.max_initial_line_length` (Netty's `maxInitialLineLength`). Over it:
    /// [`FrameError::HeadTooLarge`] (the source would answer 400 and run nothing).
    pub max_request_line_bytes: usize,
    /// Requests: most bytes of all header lines together, without line endings — the
    /// source's `http.max_header_size` (Netty's `maxHeaderSize`, counted the same way).
    pub max_header_bytes: usize,
    /// Requests: an HTTP/1.1 request must carry exactly one Host field, and no request more
    /// than one (RFC 9112 §3.2: a server answers 400). Off only in framer unit tests.
    pub require_host: bool,
    /// Only CRLF ends a line (heads, chunk-size lines, chunk data, trailers). Requests: Netty
    /// from 4.1.139 (OpenSearch 2.19, 3.x) refuses a bare LF, older ones accept it, so the
    /// proxy refuses it. Responses: bare LF is accepted (set by the response framer).
    pub crlf_only: bool,
}

impl FramerLimits {
    /// 64 KiB: eight times Netty's 8 KiB header default that the Java proxy parsed with, so
    /// anything a real Elasticsearch/OpenSearch client sends fits, while one connection's head
    /// buffer stays small.
    pub(crate) const DEFAULT_MAX_HEAD_BYTES: usize = 64 * 1024;
    /// 4 KiB: Netty's initial-line limit, which it also applies to chunk-size lines; real
    /// chunk-size lines are a few hex digits, extensions are practically never sent.
    pub(crate) const DEFAULT_MAX_CHUNK_LINE_BYTES: usize = 4 * 1024;
    /// 64 KiB: the same budget as a head. Trailers are never buffered (only scanned), so the
    /// limit only stops an endless trailer section.
    pub(crate) const DEFAULT_MAX_TRAILER_BYTES: usize = 64 * 1024;
    /// 4 KiB: `http.max_initial_line_length`'s default in Elasticsearch 7.10 and OpenSearch
    /// 1.x–3.x (their Netty decoder is built with it).
    pub(crate) const DEFAULT_MAX_REQUEST_LINE_BYTES: usize = 4 * 1024;
    /// 8 KiB: `http.max_header_size`'s default in Elasticsearch 7.10 and OpenSearch 1.x–3.x.
    pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 8 * 1024;
}

impl Default for FramerLimits {
    fn default() -> Self {
        FramerLimits {
            max_head_bytes: Self::DEFAULT_MAX_HEAD_BYTES,
            max_chunk_line_bytes: Self::DEFAULT_MAX_CHUNK_LINE_BYTES,
            max_trailer_bytes: Self::DEFAULT_MAX_TRAILER_BYTES,
            max_request_line_bytes: Self::DEFAULT_MAX_REQUEST_LINE_BYTES,
            max_header_bytes: Self::DEFAULT_MAX_HEADER_BYTES,
            require_host: true,
            crlf_only: true,
        }
    }
}

/// Why a byte stream cannot be framed. Once a framer has returned an error it returns the same
/// error for every later call: the connection's framing is lost.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The head did not end within [`FramerLimits::max_head_bytes`].
    #[error("message head exceeds the size limit")]
    HeadTooLarge,
    /// The bytes are not HTTP/1.x as this framer accepts it; the text says what was wrong.
    #[error("malformed HTTP/1.x message: {0}")]
    Malformed(&'static str),
    /// A request framing feature the proxy does not forward because the source's HTTP stack
    /// may frame it differently (a transfer coding other than exactly `chunked`): 501.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    /// An `Expect` other than `100-continue` (RFC 9110 §10.1.1): 417.
    #[error("expectation not supported: only 100-continue is")]
    ExpectationFailed,
}

/// How a message's body is delimited (requests: from the head alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    ContentLength(u64),
    Chunked,
}

/// Capacity the split-head buffer keeps between messages. A head larger than this that
/// arrived split makes the buffer grow once; it is shrunk back to this when the next head
/// starts, so an occasional huge head does not pin 64 KiB on an idle connection. 16 KiB is
/// far above typical client heads (well under 2 KiB), so steady state never reallocates.
const HEAD_BUF_RETAINED_BYTES: usize = 16 * 1024;

/// Header slots parsed on the stack before falling back to a heap array sized from the head's
/// line count. 64 slots (2 KiB of stack) cover every real client; the fallback costs one
/// allocation for a head with more header lines.
const INLINE_HEADER_SLOTS: usize = 64;

/// Converts a length that is bounded by a limit to the `u32` the capture format uses,
/// saturating instead of wrapping when a limit was configured above 4 GiB.
fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Byte offset of `part` inside `base`, when `part` really points into `base`.
fn offset_in(base: &[u8], part: &[u8]) -> Option<usize> {
    let off = (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
    let end = off.checked_add(part.len())?;
    (end <= base.len()).then_some(off)
}

/// Strips leading and trailing optional whitespace (SP / HTAB).
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// True when the comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim_ows(t).eq_ignore_ascii_case(token))
}

/// Parses one Content-Length field value (which may be a list of identical values, RFC 9110
/// §8.6) and merges it with a value seen earlier in the same head.
fn merge_content_length(prev: Option<u64>, value: &[u8]) -> Result<u64, FrameError> {
    let mut merged = prev;
    for part in value.split(|&b| b == b',') {
        let digits = trim_ows(part);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(FrameError::Malformed("invalid Content-Length"));
        }
        let mut n: u64 = 0;
        for &d in digits {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(FrameError::Malformed("Content-Length overflows"))?;
        }
        match merged {
            Some(m) if m != n => {
                return Err(FrameError::Malformed("conflicting Content-Length values"))
            }
            _ => merged = Some(n),
        }
    }
    merged.ok_or(FrameError::Malformed("invalid Content-Length"))
}

/// What the Transfer-Encoding fields of one head add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TransferCoding {
    /// At least one Transfer-Encoding field was present.
    present: bool,
    /// The last coding listed is `chunked`.
    chunked_last: bool,
    /// `chunked` is listed more than once or not last.
    chunked_misplaced: bool,
    /// Transfer-Encoding fields seen (saturating).
    fields: u8,
    /// Codings listed over all fields (saturating).
    codings: u8,
}

impl TransferCoding {
    fn add(&mut self, value: &[u8]) {
        self.present = true;
        self.fields = self.fields.saturating_add(1);
        for coding in value.split(|&b| b == b',').map(trim_ows) {
            if coding.is_empty() {
                continue;
            }
            self.codings = self.codings.saturating_add(1);
            if self.chunked_last {
                // Something follows an earlier `chunked`.
                self.chunked_misplaced = true;
            }
            self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
        }
    }

    /// Exactly one field holding exactly one coding, `chunked` (any case): the only request
    /// transfer coding every version of the source's Netty and RFC 9112 frame alike (Netty
    /// 4.1.4x frames `gzip, chunked` as a request without a body).
    fn is_exactly_chunked(&self) -> bool {
        self.fields == 1 && self.codings == 1 && self.chunked_last
    }
}

/// Finds the end of a section that ends with an empty line (a head or a trailer section),
/// across calls. Line endings are LF or CRLF; the empty line is "\n" or "\r\n".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LineScan {
    /// Bytes of the current line seen so far (saturating).
    line_len: usize,
    /// The current line's first byte is CR (meaningful when `line_len > 0`).
    first_is_cr: bool,
}

impl LineScan {
    /// Scans `input`, which continues the section; returns the index just past the LF that
    /// ends the empty line, or `None` when `input` ran out first (state kept for the next call).
    fn find_section_end(&mut self, input: &[u8]) -> Option<usize> {
        let mut pos = 0usize;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match rest.iter().position(|&b| b == b'\n') {
                None => {
                    if let Some(&first) = rest.first() {
                        if self.line_len == 0 {
                            self.first_is_cr = first == b'\r';
                        }
                        self.line_len = self.line_len.saturating_add(rest.len());
                    }
                    return None;
                }
                Some(off) => {
                    let seg = rest.get(..off).unwrap_or_default();
                    let empty = match (self.line_len, seg) {
                        (0, []) | (0, [b'\r']) => true,
                        (1, []) => self.first_is_cr,
                        _ => false,
                    };
                    *self = LineScan::default();
                    pos = pos.saturating_add(off).saturating_add(1);
                    if empty {
                        return Some(pos);
                    }
                }
            }
        }
    }
}

/// Collects the bytes of a head that arrived split across calls. The buffer keeps its
/// capacity between heads (see [`HEAD_BUF_RETAINED_BYTES`]).
#[derive(Debug, Default)]
struct HeadAccum {
    buf: Vec<u8>,
    scan: LineScan,
    /// An LF has been appended: the start line is complete.
    saw_lf: bool,
    /// The start line has been validated (once it was complete) while accumulating.
    start_line_checked: bool,
}

impl HeadAccum {
    fn start(&mut self) {
        self.buf.clear();
        self.buf.shrink_to(HEAD_BUF_RETAINED_BYTES);
        self.scan = LineScan::default();
        self.saw_lf = false;
        self.start_line_checked = false;
    }

    /// Appends the head bytes at the start of `input`, up to and including the empty line
    /// when it is there. Returns `(consumed, head_complete)`.
    fn feed(&mut self, input: &[u8], max_head: usize) -> Result<(usize, bool), FrameError> {
        let room = max_head.saturating_sub(self.buf.len());
        let window = input.get(..input.len().min(room)).unwrap_or_default();
        match self.scan.find_section_end(window) {
            Some(n) => {
                self.buf
                    .extend_from_slice(window.get(..n).unwrap_or_default());
                Ok((n, true))
            }
            None if input.len() > room => {
                // Keep the bytes that fit: the caller checks whether they are malformed
                // anyway, so the verdict does not depend on how the head was split.
                self.buf.extend_from_slice(window);
                Err(FrameError::HeadTooLarge)
            }
            None => {
                // Only the new bytes are searched: a head dribbled in byte by byte stays
                // linear.
                self.saw_lf |= window.contains(&b'\n');
                self.buf.extend_from_slice(window);
                Ok((window.len(), false))
            }
        }
    }

    /// True once per head: the start line is complete in the buffer and was not yet checked.
    fn start_line_ready(&mut self) -> bool {
        if !self.start_line_checked && self.saw_lf {
            self.start_line_checked = true;
            return true;
        }
        false
    }
}

/// Number of leading CR/LF bytes (empty lines before a start line, RFC 9112 §2.2).
fn leading_empty_lines(input: &[u8]) -> usize {
    input
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(input.len())
}

/// Where a chunked body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line.
    Size {
        size: u64,
        digits: u32,
        phase: SizePhase,
        line_len: usize,
    },
    /// Inside chunk data; bytes left.
    Data(u64),
    /// After chunk data, expecting its CRLF (or bare LF).
    DataEnd { saw_cr: bool },
    /// In the trailer section after the last chunk.
    Trailers { check: TrailerCheck, bytes: usize },
}

/// Where a chunk-size line is, in RFC 9112 §7.1's grammar:
/// `chunk-size [ chunk-ext ] CRLF`, `chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS
/// ext-val ] )`, `ext-val = token / quoted-string`. Anything else fails the message: Netty
/// reads the size up to the first `;` or whitespace and ignores the rest of the line, so
/// `0 /x HTTP/1.1` is a last chunk to it; where the two readings could differ the proxy does
/// not forward (a bare LF line end is accepted, as both Netty and we read it alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SizePhase {
    Digits,
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeBws,
    /// After `;`: optional whitespace, then an extension name.
    ExtBws,
    ExtName,
    /// Whitespace after a name: `=` or `;` must follow.
    AfterName,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ValBws,
    ValToken,
    Quoted,
    /// After a backslash inside a quoted string.
    QuotedPair,
    /// Right after a closing quote: the line may end here.
    AfterQuote,
    /// Whitespace after a value: only more whitespace or `;` may follow.
    AfterValBws,
    /// After a CR: only LF may follow.
    Cr,
}

/// RFC 9110 `tchar`: the bytes a token (header name, extension name) may consist of.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One step of a chunk-size line after its first byte: the next phase, `Ok(None)` at the LF
/// that ends the line. `b` is never the first digit (handled by the caller).
fn size_line_step(
    phase: SizePhase,
    b: u8,
    crlf_only: bool,
) -> Result<Option<SizePhase>, FrameError> {
    use SizePhase::*;
    let ws = b == b' ' || b == b'\t';
    let next = match (phase, b) {
        (Cr, b'\n') => return Ok(None),
        (_, b'\n') if crlf_only => return Err(FrameError::Malformed("bare LF in chunk-size line")),
        (Cr, _) => return Err(FrameError::Malformed("CR without LF in chunk-size line")),
        (Digits | ExtName | ValToken | AfterQuote, b'\n') => return Ok(None),
        (Digits | ExtName | ValToken | AfterQuote, b'\r') => Cr,
        (Digits | SizeBws, _) if ws => SizeBws,
        (Digits | SizeBws | ExtName | AfterName | ValToken | AfterQuote | AfterValBws, b';') => {
            ExtBws
        }
        (ExtBws, _) if ws => ExtBws,
        (ExtBws | ExtName, _) if is_tchar(b) => ExtName,
        (ExtName | AfterName, _) if ws => AfterName,
        (ExtName | AfterName, b'=') => ValBws,
        (ValBws, _) if ws => ValBws,
        (ValBws, b'"') => Quoted,
        (ValBws | ValToken, _) if is_tchar(b) => ValToken,
        (ValToken | AfterQuote | AfterValBws, _) if ws => AfterValBws,
        (Quoted, b'"') => AfterQuote,
        (Quoted, b'\\') => QuotedPair,
        // qdtext: HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
        (Quoted, 0x09 | 0x20 | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF) => Quoted,
        (QuotedPair, 0x09 | 0x20..=0x7E | 0x80..=0xFF) => Quoted,
        (Digits, _) => return Err(FrameError::Malformed("invalid chunk size")),
        _ => return Err(FrameError::Malformed("invalid chunk extension")),
    };
    Ok(Some(next))
}

/// Checks a chunked body's trailer section line by line (RFC 9112 §7.1.2, field lines as
/// RFC 9112 §5): `name ":" value`, a `tchar` name, a value of visible characters, spaces and
/// tabs; no obs-fold; and none of the framing fields (Content-Length, Transfer-Encoding,
/// Trailer), which the source's Netty silently drops and a strict origin may refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TrailerCheck {
    phase: TrailerPhase,
    /// The current field name, lower-cased, as far as it fits (longer names are not framing
    /// fields).
    name: [u8; TRAILER_NAME_KEPT],
    name_len: usize,
}

/// Bytes of a trailer field name kept for the framing-field check: the longest such name,
/// `transfer-encoding`, has 17.
const TRAILER_NAME_KEPT: usize = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrailerPhase {
    LineStart,
    Name,
    Value,
    /// CR inside a field line: LF must follow.
    ValueCr,
    /// CR at a line start: LF must follow, and ends the section.
    EndCr,
}

impl TrailerCheck {
    const START: TrailerCheck = TrailerCheck {
        phase: TrailerPhase::LineStart,
        name: [0; TRAILER_NAME_KEPT],
        name_len: 0,
    };

    /// Scans `input`; returns the index just past the section's final LF, or `None` when
    /// `input` ran out first (state kept for the next call).
    fn scan(&mut self, input: &[u8], crlf_only: bool) -> Result<Option<usize>, FrameError> {
        use TrailerPhase::*;
        for (i, &b) in input.iter().enumerate() {
            self.phase = match (self.phase, b) {
                (LineStart | Value, b'\n') if crlf_only => {
                    return Err(FrameError::Malformed("bare LF in trailer section"))
                }
                (LineStart, b'\n') | (EndCr, b'\n') => return Ok(Some(i + 1)),
                (LineStart, b'\r') => EndCr,
                (LineStart, b' ' | b'\t') => {
                    return Err(FrameError::Malformed("obs-fold in trailer section"))
                }
                (LineStart | Name, _) if is_tchar(b) => {
                    if self.phase == LineStart {
                        self.name_len = 0;
                    }
                    if let Some(slot) = self.name.get_mut(self.name_len) {
                        *slot = b.to_ascii_lowercase();
                    }
                    self.name_len = self.name_len.saturating_add(1);
                    Name
                }
                (Name, b':') => {
                    let name = self.name.get(..self.name_len).unwrap_or_default();
                    if self.name_len <= TRAILER_NAME_KEPT
                        && matches!(
                            name,
                            b"content-length" | b"transfer-encoding" | b"trailer" | b"host"
                        )
                    {
                        return Err(FrameError::Malformed("framing field in trailer section"));
                    }
                    Value
                }
                (Value, b'\r') => ValueCr,
                (Value | ValueCr, b'\n') => LineStart,
                (Value, 0x09 | 0x20..=0x7E | 0x80..=0xFF) => Value,
                _ => return Err(FrameError::Malformed("invalid trailer field line")),
            };
        }
        Ok(None)
    }
}

impl Chunk {
    const START: Chunk = Chunk::Size {
        size: 0,
        digits: 0,
        phase: SizePhase::Digits,
        line_len: 0,
    };
}

/// Body framing state of the message in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Content-Length bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes (responses only).
    CloseDelimited,
}

impl Body {
    /// Consumes body bytes from the start of `input`. Returns `(consumed, complete)`; when not
    /// complete, all of `input` was consumed. Body bytes are never copied.
    fn advance(
        &mut self,
        input: &[u8],
        limits: &FramerLimits,
    ) -> Result<(usize, bool), FrameError> {
        match self {
            Body::CloseDelimited => Ok((input.len(), false)),
            Body::Length(left) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                // `take` fits in u64 because it is at most `*left`.
                *left -= take as u64;
                Ok((take, *left == 0))
            }
            Body::Chunked(chunk) => advance_chunked(chunk, input, limits),
        }
    }
}

fn advance_chunked(
    chunk: &mut Chunk,
    input: &[u8],
    limits: &FramerLimits,
) -> Result<(usize, bool), FrameError> {
    let mut pos = 0usize;
    loop {
        let rest = input.get(pos..).unwrap_or_default();
        match chunk {
            Chunk::Size {
                size,
                digits,
                phase,
                line_len,
            } => {
                let mut line_done = false;
                for &b in rest {
                    pos += 1;
                    *line_len = line_len.saturating_add(1);
                    if *line_len > limits.max_chunk_line_bytes {
                        return Err(FrameError::Malformed("chunk-size line too long"));
                    }
                    if *phase == SizePhase::Digits && b.is_ascii_hexdigit() {
                        let d = char::from(b).to_digit(16).unwrap_or(0);
                        *size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(d)))
                            .ok_or(FrameError::Malformed("chunk size overflows"))?;
                        *digits = digits.saturating_add(1);
                        continue;
                    }
                    if *digits == 0 {
                        return Err(FrameError::Malformed("missing chunk size"));
                    }
                    match size_line_step(*phase, b, limits.crlf_only)? {
                        Some(next) => *phase = next,
                        None => {
                            line_done = true;
                            break;
                        }
                    }
                }
                if !line_done {
                    return Ok((input.len(), false));
                }
                if *digits == 0 {
                    return Err(FrameError::Malformed("missing chunk size"));
                }
                *chunk = if *size == 0 {
                    Chunk::Trailers {
                        check: TrailerCheck::START,
                        bytes: 0,
                    }
                } else {
                    Chunk::Data(*size)
                };
            }
            Chunk::Data(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(rest.len());
                *left -= take as u64;
                pos += take;
                if *left > 0 {
                    return Ok((input.len(), false));
                }
                *chunk = Chunk::DataEnd { saw_cr: false };
            }
            Chunk::DataEnd { saw_cr } => match rest.first() {
                None => return Ok((input.len(), false)),
                Some(b'\r') if !*saw_cr => {
                    *saw_cr = true;
                    pos += 1;
                }
                Some(b'\n') if *saw_cr || !limits.crlf_only => {
                    pos += 1;
                    *chunk = Chunk::START;
                }
                Some(_) => return Err(FrameError::Malformed("chunk data not followed by CRLF")),
            },
            Chunk::Trailers { check, bytes } => {
                let room = limits.max_trailer_bytes.saturating_sub(*bytes);
                let window = rest.get(..rest.len().min(room)).unwrap_or_default();
                match check.scan(window, limits.crlf_only)? {
                    Some(n) => return Ok((pos + n, true)),
                    None if rest.len() > room => {
                        return Err(FrameError::Malformed("trailer section too large"))
                    }
                    None => {
                        *bytes += window.len();
                        return Ok((input.len(), false));
                    }
                }
            }
        }
    }
}

/// Maps an `httparse` error to a stable description.
fn httparse_error(e: httparse::Error) -> FrameError {
    FrameError::Malformed(match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid response status",
        httparse::Error::Token => "invalid token in start line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    })
}

/// Result of trying to parse a head with `httparse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parsed<T> {
    /// Parsed; the head is the first `len` bytes.
    Complete { len: usize, meta: T },
    /// A valid prefix of a head.
    Partial,
    /// Not a head.
    Invalid(httparse::Error),
}

/// An uninitialised header slot for httparse (filled by the parse, no zeroing up front).
type HeaderSlot<'b> = std::mem::MaybeUninit<httparse::Header<'b>>;

/// Heap header slots for a head with more header lines than [`INLINE_HEADER_SLOTS`]: one per
/// line, which is always enough.
fn heap_header_slots<'b>(raw: &[u8]) -> Vec<HeaderSlot<'b>> {
    let lines = raw.iter().filter(|&&b| b == b'\n').count();
    vec![HeaderSlot::uninit(); lines.saturating_add(1)]
}

/// The framing-relevant header names, recognised by length first so most headers cost one
/// integer comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    ContentLength,
    Host,
    TransferEncoding,
    Connection,
    Expect,
    Upgrade,
    Other,
}

fn known_header(name: &[u8]) -> Known {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        14 if is(b"content-length") => Known::ContentLength,
        4 if is(b"host") => Known::Host,
        17 if is(b"transfer-encoding") => Known::TransferEncoding,
        10 if is(b"connection") => Known::Connection,
        6 if is(b"expect") => Known::Expect,
        7 if is(b"upgrade") => Known::Upgrade,
        _ => Known::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_scan_finds_empty_line_across_splits() {
        let cases: &[(&[u8], usize)] = &[
            (b"a\r\n\r\nrest", 5),
            (b"a\n\nrest", 3),
            (b"a\r\n\nrest", 4),
            (b"a\n\r\nrest", 4),
            (b"ab\rc\n\n", 6),
        ];
        for &(input, end) in cases {
            let mut s = LineScan::default();
            assert_eq!(s.find_section_end(input), Some(end));
            for split in 0..input.len() {
                let mut s = LineScan::default();
                let (a, b) = input.split_at(split);
                let got = match s.find_section_end(a) {
                    Some(n) => Some(n),
                    None => s.find_section_end(b).map(|n| n + a.len()),
                };
                assert_eq!(got, Some(end), "{input:?} split {split}");
            }
        }
        let mut s = LineScan::default();
        assert_eq!(s.find_section_end(b"a\r\rb\n"), None);
    }

    #[test]
    fn content_length_merging() {
        assert_eq!(merge_content_length(None, b"42"), Ok(42));
        assert_eq!(merge_content_length(None, b"42, 42"), Ok(42));
        assert_eq!(merge_content_length(Some(42), b"42"), Ok(42));
        assert!(merge_content_length(Some(41), b"42").is_err());
        assert!(merge_content_length(None, b"4 2").is_err());
        assert!(merge_content_length(None, b"").is_err());
        assert!(merge_content_length(None, b"+4").is_err());
        assert!(merge_content_length(None, b"99999999999999999999999").is_err());
    }

    #[test]
    fn transfer_coding_rules() {
        let mut t = TransferCoding::default();
        t.add(b"gzip, chunked");
        assert!(t.chunked_last && !t.chunked_misplaced);
        let mut t = TransferCoding::default();
        t.add(b"chunked");
        t.add(b"gzip");
        assert!(!t.chunked_last && t.chunked_misplaced);
        let mut t = TransferCoding::default();
        t.add(b"chunked, chunked");
        assert!(t.chunked_misplaced);
    }
}
