//! Request framing: [`RequestFramer`] finds where each request of a client connection starts
//! and ends, and hands out its parsed head.
//!
//! May depend on: `httparse` and the shared primitives in `super`.
//!
//! Invariant: events are reported at exact byte positions independent of how the input was
//! split; a call without an event consumes all of its input; only head bytes of a head that
//! arrived split are ever copied (into a buffer that keeps its capacity).

use super::{
    has_token, heap_header_slots, httparse_error, known_header, leading_empty_lines, len_u32,
    merge_content_length, offset_in, trim_ows, Body, BodyKind, Chunk, FrameError, FramerLimits,
    HeadAccum, HeaderSlot, Known, Parsed, TransferCoding, INLINE_HEADER_SLOTS,
};

/// The start of the HTTP/2 prior-knowledge preface as far as it looks like an HTTP/1 head
/// (RFC 9113 §3.4).
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";
/// The whole 24-byte preface. Only this, as the very first bytes of a connection, turns it
/// into an opaque HTTP/2 stream; `PRI * HTTP/2.0` anywhere else is a malformed request.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Request method. Methods are case-sensitive; anything not listed is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Connect,
    Trace,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"PATCH" => Method::Patch,
            b"OPTIONS" => Method::Options,
            b"CONNECT" => Method::Connect,
            b"TRACE" => Method::Trace,
            _ => Method::Other,
        }
    }

    /// POST, PUT, DELETE and PATCH: the requests the proxy holds until their capture is
    /// committed (the Java proxy's hard-coded predicate).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            Method::Post | Method::Put | Method::Delete | Method::Patch
        )
    }
}

/// Byte ranges of one header line inside the head, value trimmed of surrounding whitespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeaderRange {
    name: (usize, usize),
    value: (usize, usize),
}

/// The headers of a parsed head, in the order sent.
#[derive(Clone, Copy)]
pub struct Headers<'a> {
    raw: &'a [u8],
    ranges: &'a [HeaderRange],
}

impl<'a> Headers<'a> {
    /// `(name, value)` pairs as sent (value without surrounding whitespace).
    pub fn iter(&self) -> HeaderIter<'a> {
        HeaderIter {
            raw: self.raw,
            ranges: self.ranges.iter(),
        }
    }
}

impl<'a> IntoIterator for Headers<'a> {
    type Item = (&'a [u8], &'a [u8]);
    type IntoIter = HeaderIter<'a>;
    fn into_iter(self) -> HeaderIter<'a> {
        self.iter()
    }
}

impl std::fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

/// Iterator over [`Headers`].
#[derive(Clone)]
pub struct HeaderIter<'a> {
    raw: &'a [u8],
    ranges: std::slice::Iter<'a, HeaderRange>,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let r = self.ranges.next()?;
        Some((
            self.raw.get(r.name.0..r.name.1).unwrap_or_default(),
            self.raw.get(r.value.0..r.value.1).unwrap_or_default(),
        ))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.ranges.size_hint()
    }
}

/// A complete request head, borrowed from the framer or the caller's input.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: Method,
    pub method_bytes: &'a [u8],
    /// The request target as sent (path and query, or authority form for CONNECT).
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    pub headers: Headers<'a>,
    /// Request line length without its line ending (`GET / HTTP/1.1` ⇒ 14).
    pub first_line_len: u32,
    /// Sum of the header lines' lengths without their line endings, not counting the empty
    /// line that ends the head.
    pub headers_len: u32,
    /// Head length from the request line's first byte through the empty line (leading empty
    /// lines excluded): the head starts `head_len` bytes before the event's offset.
    pub head_len: u32,
    pub body: BodyKind,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// HTTP/1.1 with `Connection: close`, or HTTP/1.0 without `Connection: keep-alive` (or
    /// a chunked HTTP/1.0 request, whose framing RFC 9112 §6.1 calls faulty).
    pub connection_close: bool,
    /// `Connection: upgrade` with an `Upgrade` header: if the response is 101 the connection
    /// becomes opaque (the caller stops framing it).
    pub upgrade: bool,
    /// The head bytes themselves (`head_len` bytes), e.g. for a header rewrite.
    pub raw: &'a [u8],
}

/// What a framer call reports.
#[derive(Debug)]
pub struct Step<'a> {
    pub consumed: usize,
    pub event: Option<Event<'a>>,
}

/// Something that happened exactly at the end of a call's consumed bytes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The request head is complete; its last byte is the last consumed byte.
    HeadComplete(RequestHead<'a>),
    /// The whole request ends at the last consumed byte. For a request without a body this
    /// comes from the call after `HeadComplete`, with `consumed == 0`.
    MessageComplete {
        first_line_len: u32,
        headers_len: u32,
    },
    /// The HTTP/2 prior-knowledge preface (`PRI * HTTP/2.0\r\n\r\n`, the last consumed byte
    /// is its end); from here on the connection is opaque.
    Http2Preface,
}

/// What the framer knows about the current request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReqMeta {
    method: Method,
    method_at: (usize, usize),
    target_at: (usize, usize),
    version_minor: u8,
    first_line_len: u32,
    headers_len: u32,
    head_len: u32,
    /// `head_len` as a slice length (equal unless a limit above 4 GiB was configured).
    head_bytes: usize,
    body: BodyKind,
    expect_continue: bool,
    connection_close: bool,
    upgrade: bool,
}

impl ReqMeta {
    const EMPTY: ReqMeta = ReqMeta {
        method: Method::Other,
        method_at: (0, 0),
        target_at: (0, 0),
        version_minor: 1,
        first_line_len: 0,
        headers_len: 0,
        head_len: 0,
        head_bytes: 0,
        body: BodyKind::None,
        expect_continue: false,
        connection_close: false,
        upgrade: false,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests (leading empty lines are skipped here).
    Idle,
    /// A head arrived split; its bytes so far are in `accum`.
    Head,
    /// Head reported; the request has no body, `MessageComplete` is due.
    NoBody,
    /// Inside the body.
    Body(Body),
    /// After the 18-byte preface head at connection start: this many bytes of the preface's
    /// tail `SM\r\n\r\n` matched so far.
    PrefaceTail(u8),
    /// After the HTTP/2 preface or `set_opaque`: no more framing.
    Opaque,
    Failed(FrameError),
}

/// What `advance_inner` found, without borrows.
enum Found {
    Nothing,
    Head { start: usize, in_buf: bool },
    MessageComplete,
    Http2Preface,
}

/// Frames the requests of one client connection; reused across its requests.
#[derive(Debug)]
pub struct RequestFramer {
    limits: FramerLimits,
    config: httparse::ParserConfig,
    state: State,
    accum: HeadAccum,
    meta: ReqMeta,
    /// Header ranges of the current head (capacity kept).
    ranges: Vec<HeaderRange>,
    /// Nothing has been consumed yet: the HTTP/2 preface is only recognised here.
    at_start: bool,
    /// The split head in `accum` began at connection start (may still be the preface).
    head_at_start: bool,
}

impl RequestFramer {
    /// `limits.max_head_bytes` is raised to at least the 24-byte HTTP/2 preface, so the
    /// preface is recognised (and a head that only starts like it is judged) the same way
    /// whether it arrives in one read or split (found by the `request_framer` fuzz target).
    pub fn new(mut limits: FramerLimits) -> Self {
        limits.max_head_bytes = limits.max_head_bytes.max(H2_PREFACE.len());
        // httparse's defaults: single spaces in the request line (Netty splits on any run of
        // them, RFC 9112 does not: refused, as everything the two read differently).
        let config = httparse::ParserConfig::default();
        RequestFramer {
            limits,
            config,
            state: State::Idle,
            accum: HeadAccum::default(),
            meta: ReqMeta::EMPTY,
            ranges: Vec::new(),
            at_start: true,
            head_at_start: false,
        }
    }

    /// Consumes a prefix of `input` and reports at most one event, which happened exactly at
    /// the end of the consumed prefix.
    ///
    /// A call without an event always consumes all of `input`. After an event, call again
    /// with the rest of the input *even if the rest is empty*: a request without a body
    /// reports `MessageComplete` on the call after `HeadComplete` (consuming 0 bytes). So the
    /// caller's loop is: advance, handle the event, stop when a call returns no event.
    ///
    /// After an error the framer stays failed and returns the same error.
    pub fn advance<'a>(&'a mut self, input: &'a [u8]) -> Result<Step<'a>, FrameError> {
        let res = self.advance_inner(input);
        if !input.is_empty() {
            self.at_start = false;
        }
        let (consumed, found) = match res {
            Ok(r) => r,
            Err(e) => {
                self.state = State::Failed(e);
                return Err(e);
            }
        };
        let event = match found {
            Found::Nothing => None,
            Found::MessageComplete => Some(Event::MessageComplete {
                first_line_len: self.meta.first_line_len,
                headers_len: self.meta.headers_len,
            }),
            Found::Http2Preface => Some(Event::Http2Preface),
            Found::Head { start, in_buf } => {
                let this: &'a RequestFramer = self;
                let raw: &'a [u8] = if in_buf {
                    &this.accum.buf
                } else {
                    let end = start.saturating_add(this.meta.head_bytes);
                    input.get(start..end).unwrap_or_default()
                };
                Some(Event::HeadComplete(this.head(raw)))
            }
        };
        Ok(Step { consumed, event })
    }

    /// True between a request's first byte (not counting leading empty lines) and its end.
    pub fn in_message(&self) -> bool {
        matches!(
            self.state,
            State::Head | State::NoBody | State::Body(_) | State::PrefaceTail(_)
        )
    }

    /// At a request boundary with nothing partial buffered (false once opaque or failed: the
    /// framer cannot tell where an opaque stream's messages end).
    pub fn is_idle(&self) -> bool {
        self.state == State::Idle
    }

    /// True after the HTTP/2 preface or [`set_opaque`](Self::set_opaque).
    #[cfg(test)]
    pub(crate) fn is_opaque(&self) -> bool {
        self.state == State::Opaque
    }

    /// Stops framing: every later `advance` consumes all input without events. (`conn`
    /// stops calling the framer instead once the response framer reports `Upgraded`.)
    #[cfg(test)]
    pub(crate) fn set_opaque(&mut self) {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Opaque;
        }
    }

    fn head<'a>(&'a self, raw: &'a [u8]) -> RequestHead<'a> {
        let m = &self.meta;
        RequestHead {
            method: m.method,
            method_bytes: raw.get(m.method_at.0..m.method_at.1).unwrap_or_default(),
            target: raw.get(m.target_at.0..m.target_at.1).unwrap_or_default(),
            version_minor: m.version_minor,
            headers: Headers {
                raw,
                ranges: &self.ranges,
            },
            first_line_len: m.first_line_len,
            headers_len: m.headers_len,
            head_len: m.head_len,
            body: m.body,
            expect_continue: m.expect_continue,
            connection_close: m.connection_close,
            upgrade: m.upgrade,
            raw,
        }
    }

    fn advance_inner(&mut self, input: &[u8]) -> Result<(usize, Found), FrameError> {
        let mut pos = 0usize;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.state {
                State::Failed(e) => return Err(e),
                State::Opaque => return Ok((input.len(), Found::Nothing)),
                State::PrefaceTail(matched) => {
                    let tail = H2_PREFACE.get(H2_PREFACE_HEAD.len()..).unwrap_or_default();
                    let want = tail.get(usize::from(matched)..).unwrap_or_default();
                    let n = want.len().min(rest.len());
                    if rest.get(..n) != want.get(..n) {
                        return Err(FrameError::Malformed("incomplete HTTP/2 preface"));
                    }
                    pos += n;
                    if n == want.len() {
                        self.state = State::Opaque;
                        return Ok((pos, Found::Http2Preface));
                    }
                    // `n` < the 6-byte tail, so it fits in u8.
                    self.state = State::PrefaceTail(matched.saturating_add(n as u8));
                    return Ok((input.len(), Found::Nothing));
                }
                State::NoBody => {
                    self.state = State::Idle;
                    return Ok((pos, Found::MessageComplete));
                }
                State::Body(mut body) => {
                    let (n, done) = body.advance(rest, &self.limits)?;
                    pos += n;
                    if done {
                        self.state = State::Idle;
                        return Ok((pos, Found::MessageComplete));
                    }
                    self.state = State::Body(body);
                    return Ok((input.len(), Found::Nothing));
                }
                State::Idle => {
                    let at_start = self.at_start && pos == 0;
                    let skip = leading_empty_lines(rest);
                    if skip > 0 {
                        // RFC 9112 §2.2 lets a server skip them; Netty 4.1.49 (Elasticsearch
                        // 7.10) refuses the request they precede when its request line arrives
                        // split across reads — how the bytes are split is not ours to know.
                        return Err(FrameError::Malformed("empty line before a request line"));
                    }
                    pos += skip;
                    let rest = rest.get(skip..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok((input.len(), Found::Nothing));
                    }
                    // Fast path: the whole head is usually in this input; parse it in place.
                    let window = rest
                        .get(..rest.len().min(self.limits.max_head_bytes))
                        .unwrap_or_default();
                    match parse_request(&self.config, &self.limits, window, &mut self.ranges)? {
                        Parsed::Complete { len, meta } => {
                            let start = pos;
                            pos += len;
                            return Ok((pos, self.head_parsed(meta, start, false)));
                        }
                        Parsed::Invalid(_)
                            if at_start && skip == 0 && rest.starts_with(H2_PREFACE_HEAD) =>
                        {
                            pos += H2_PREFACE_HEAD.len();
                            self.state = State::PrefaceTail(0);
                            continue;
                        }
                        Parsed::Invalid(_)
                            if at_start && skip == 0 && H2_PREFACE_HEAD.starts_with(rest) => {}
                        Parsed::Invalid(e) => return Err(httparse_error(e)),
                        Parsed::Partial if rest.len() > window.len() => {
                            return Err(FrameError::HeadTooLarge)
                        }
                        Parsed::Partial => {}
                    }
                    // Split head: collect its bytes until the empty line arrives.
                    self.head_at_start = at_start && skip == 0;
                    self.accum.start();
                    self.state = State::Head;
                }
                State::Head => {
                    let (n, done) = match self.accum.feed(rest, self.limits.max_head_bytes) {
                        Err(FrameError::HeadTooLarge) => {
                            // As in one call: the first `max_head_bytes` are judged by the
                            // parser first, so a malformed head is 400 however it was split.
                            return Err(self.too_large_verdict());
                        }
                        other => other?,
                    };
                    pos += n;
                    if !done {
                        if self.accum.start_line_ready() {
                            self.check_start_line()?;
                        }
                        return Ok((input.len(), Found::Nothing));
                    }
                    if self.head_at_start && self.accum.buf == H2_PREFACE_HEAD {
                        // Only reachable from a split head that began at connection start
                        // (elsewhere the start line fails at once, see `check_start_line`).
                        self.state = State::PrefaceTail(0);
                        continue;
                    }
                    match parse_request(
                        &self.config,
                        &self.limits,
                        &self.accum.buf,
                        &mut self.ranges,
                    )? {
                        Parsed::Complete { len, meta } if len == self.accum.buf.len() => {
                            return Ok((pos, self.head_parsed(meta, 0, true)));
                        }
                        Parsed::Invalid(e) => return Err(httparse_error(e)),
                        _ => return Err(FrameError::Malformed("inconsistent end of head")),
                    }
                }
            }
        }
    }

    /// Fails early on a split head whose request line is already invalid, instead of waiting
    /// for the rest of the head (one extra parse of the bytes so far, once per split head).
    fn check_start_line(&mut self) -> Result<(), FrameError> {
        let buf = &self.accum.buf;
        if self.head_at_start && H2_PREFACE_HEAD.starts_with(buf) {
            return Ok(());
        }
        match parse_request(&self.config, &self.limits, buf, &mut self.ranges)? {
            Parsed::Invalid(e) => Err(httparse_error(e)),
            _ => Ok(()),
        }
    }

    /// The error for a split head that outgrew `max_head_bytes`: what the parser says of its
    /// first `max_head_bytes` (kept in the accumulator) when they are already malformed, else
    /// [`FrameError::HeadTooLarge`] — the same verdict as for the head in one call.
    fn too_large_verdict(&mut self) -> FrameError {
        let buf = &self.accum.buf;
        if self.head_at_start && H2_PREFACE_HEAD.starts_with(buf) {
            return FrameError::HeadTooLarge;
        }
        match parse_request(&self.config, &self.limits, buf, &mut self.ranges) {
            Err(e) => e,
            Ok(Parsed::Invalid(e)) => httparse_error(e),
            Ok(_) => FrameError::HeadTooLarge,
        }
    }

    fn head_parsed(&mut self, meta: ReqMeta, start: usize, in_buf: bool) -> Found {
        self.meta = meta;
        self.state = match meta.body {
            BodyKind::None | BodyKind::ContentLength(0) => State::NoBody,
            BodyKind::ContentLength(n) => State::Body(Body::Length(n)),
            BodyKind::Chunked => State::Body(Body::Chunked(Chunk::START)),
        };
        Found::Head { start, in_buf }
    }
}

/// Request line and header line lengths of a complete head (request line through the empty
/// line, like [`RequestHead::raw`]), both without line endings: `(first_line_len,
/// headers_len)` as the capture format's end-of-message fields define them.
///
/// Assumes every CR in the head ends a line, which holds for any head the framer parsed
/// (httparse rejects a bare CR); the count is a branch-free pass the compiler vectorizes.
pub fn line_lengths(head: &[u8]) -> (u32, u32) {
    let Some(lf) = head.iter().position(|&b| b == b'\n') else {
        return (len_u32(head.strip_suffix(b"\r").unwrap_or(head).len()), 0);
    };
    let first = head.get(..lf).unwrap_or_default();
    let first = first.strip_suffix(b"\r").unwrap_or(first);
    let rest = head.get(lf.saturating_add(1)..).unwrap_or_default();
    // Drop the empty line that ends the head.
    let region = match rest {
        [] => rest,
        [b'\r', b'\n'] | [b'\n'] => &[],
        [r @ .., b'\n', b'\r', b'\n'] | [r @ .., b'\n', b'\n'] => {
            // Keep the last header line's own LF; it is counted out below.
            rest.get(..r.len().saturating_add(1)).unwrap_or_default()
        }
        _ => rest,
    };
    let endings: usize = region
        .iter()
        .map(|&b| usize::from(b == b'\n') + usize::from(b == b'\r'))
        .sum();
    (
        len_u32(first.len()),
        len_u32(region.len().saturating_sub(endings)),
    )
}

/// [`line_lengths`] for a head httparse accepted, in O(header count): every header line
/// starts at its name (no leading whitespace, no obs-fold in requests), so a line's content
/// runs from its name to the next line's start minus the LF and an optional CR.
fn parsed_line_lengths(head: &[u8], ranges: &[HeaderRange]) -> (u32, u32) {
    // The empty line that ends the head starts here.
    let empty_start = match head {
        [.., b'\n', b'\r', b'\n'] => head.len().saturating_sub(2),
        _ => head.len().saturating_sub(1),
    };
    let content = |start: usize, next: usize| -> usize {
        let cr = next >= 2 && head.get(next - 2) == Some(&b'\r');
        next.saturating_sub(start)
            .saturating_sub(1)
            .saturating_sub(usize::from(cr))
    };
    let starts = ranges.iter().map(|r| r.name.0);
    let mut next_starts = starts.clone().skip(1).chain(std::iter::once(empty_start));
    let first_next = ranges.first().map_or(empty_start, |r| r.name.0);
    let headers: usize = starts
        .map(|s| content(s, next_starts.next().unwrap_or(empty_start)))
        .sum();
    (len_u32(content(0, first_next)), len_u32(headers))
}

/// Parses a request head at the start of `raw` (which may continue past the head). Semantic
/// errors (framing headers) are `Err`; syntax errors are `Parsed::Invalid`.
fn parse_request(
    config: &httparse::ParserConfig,
    limits: &FramerLimits,
    raw: &[u8],
    ranges: &mut Vec<HeaderRange>,
) -> Result<Parsed<ReqMeta>, FrameError> {
    let mut slots = [const { HeaderSlot::uninit() }; INLINE_HEADER_SLOTS];
    match parse_request_with(config, limits, raw, &mut slots, ranges) {
        Ok(Parsed::Invalid(httparse::Error::TooManyHeaders)) => {
            let mut heap = heap_header_slots(raw);
            parse_request_with(config, limits, raw, &mut heap, ranges)
        }
        other => other,
    }
}

/// A LF not preceded by CR.
fn has_bare_lf(head: &[u8]) -> bool {
    head.first() == Some(&b'\n')
        || head
            .windows(2)
            .any(|w| matches!(w, [a, b'\n'] if *a != b'\r'))
}

fn parse_request_with<'b>(
    config: &httparse::ParserConfig,
    limits: &FramerLimits,
    raw: &'b [u8],
    slots: &mut [HeaderSlot<'b>],
    ranges: &mut Vec<HeaderRange>,
) -> Result<Parsed<ReqMeta>, FrameError> {
    let mut req = httparse::Request::new(&mut []);
    let len = match config.parse_request_with_uninit_headers(&mut req, raw, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Ok(Parsed::Invalid(e)),
    };
    let head = raw.get(..len).unwrap_or_default();
    let method_bytes = req.method.unwrap_or_default().as_bytes();
    let target = req.path.unwrap_or_default().as_bytes();
    let range_of =
        |part: &[u8]| offset_in(head, part).map_or((0, 0), |o| (o, o.saturating_add(part.len())));
    let version_minor = req.version.unwrap_or(1);

    ranges.clear();
    let mut content_length = None;
    let mut te = TransferCoding::default();
    let mut expect_continue = false;
    let mut expect_other = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut conn_upgrade = false;
    let mut has_upgrade = false;
    let mut hosts = 0usize;
    if limits.crlf_only && has_bare_lf(head) {
        return Err(FrameError::Malformed("bare LF in the request head"));
    }
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        ranges.push(HeaderRange {
            name: range_of(name),
            value: range_of(value),
        });
        match known_header(name) {
            Known::ContentLength => {
                // Netty refuses a repeated field and a list even of equal values (RFC 9110
                // §8.6 lets a recipient accept them): refused, like every disagreement.
                if content_length.is_some() || value.contains(&b',') {
                    return Err(FrameError::Malformed("more than one Content-Length"));
                }
                content_length = Some(merge_content_length(None, value)?)
            }
            Known::Host => hosts += 1,
            Known::TransferEncoding => te.add(value),
            Known::Connection => {
                conn_close |= has_token(value, b"close");
                conn_keep_alive |= has_token(value, b"keep-alive");
                conn_upgrade |= has_token(value, b"upgrade");
            }
            Known::Expect => {
                if value.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    expect_other = true;
                }
            }
            Known::Upgrade => has_upgrade = true,
            Known::Other => {}
        }
    }

    let body = match (te.present, content_length) {
        (true, Some(_)) => {
            return Err(FrameError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if version_minor == 0 => {
            // RFC 9112 §6.1: faulty framing; Netty would frame it, a strict origin would not.
            return Err(FrameError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (true, None) if !te.is_exactly_chunked() => {
            return Err(FrameError::NotImplemented(
                "Transfer-Encoding other than exactly chunked",
            ))
        }
        (true, None) => BodyKind::Chunked,
        (false, Some(n)) => BodyKind::ContentLength(n),
        (false, None) => BodyKind::None,
    };
    if expect_other {
        return Err(FrameError::ExpectationFailed);
    }
    if Method::from_bytes(method_bytes) == Method::Other {
        // Elasticsearch and OpenSearch serve exactly these methods (case-sensitive): any other
        // makes the node drop the request and close, after running what was pipelined behind
        // it (seen against a real OpenSearch 2.19 node). Refused, not forwarded.
        return Err(FrameError::NotImplemented(
            "a method Elasticsearch/OpenSearch do not serve",
        ));
    }
    if limits.require_host && (hosts > 1 || (version_minor == 1 && hosts == 0)) {
        return Err(FrameError::Malformed(
            "an HTTP/1.1 request needs exactly one Host field",
        ));
    }
    let (first_line_len, headers_len) = parsed_line_lengths(head, ranges);
    if first_line_len as usize > limits.max_request_line_bytes
        || headers_len as usize > limits.max_header_bytes
    {
        return Err(FrameError::HeadTooLarge);
    }
    let connection_close = if version_minor == 0 {
        !conn_keep_alive
    } else {
        conn_close
    };
    Ok(Parsed::Complete {
        len,
        meta: ReqMeta {
            method: Method::from_bytes(method_bytes),
            method_at: range_of(method_bytes),
            target_at: range_of(target),
            version_minor,
            first_line_len,
            headers_len,
            head_len: len_u32(len),
            head_bytes: len,
            body,
            expect_continue,
            connection_close,
            upgrade: conn_upgrade && has_upgrade,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned summary of an event, comparable across runs.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Head {
            method: Method,
            method_bytes: String,
            target: String,
            minor: u8,
            fl: u32,
            hl: u32,
            head_len: u32,
            body: BodyKind,
            expect: bool,
            close: bool,
            upgrade: bool,
            headers: Vec<(String, String)>,
        },
        Msg {
            fl: u32,
            hl: u32,
        },
        H2,
        Err(FrameError),
    }

    /// Offset recorded for an error (errors consume nothing and have no position).
    const ERR_AT: usize = usize::MAX;

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    /// Runs a fresh framer over `chunks` the way the proxy does and returns every event with
    /// its absolute offset. Checks the calling-convention invariants on the way.
    fn run(limits: FramerLimits, chunks: &[&[u8]]) -> Vec<(usize, Ev)> {
        let full: Vec<u8> = chunks.concat();
        let mut f = RequestFramer::new(limits);
        let mut abs = 0usize;
        let mut out = Vec::new();
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls < 10_000, "no progress");
                let step = match f.advance(rest) {
                    Ok(step) => step,
                    Err(e) => {
                        out.push((ERR_AT, Ev::Err(e)));
                        // Sticky.
                        assert_eq!(f.advance(b"x").map(|s| s.consumed), Err(e));
                        return out;
                    }
                };
                assert!(step.consumed <= rest.len());
                let consumed = step.consumed;
                let ev = match step.event {
                    None => {
                        assert_eq!(consumed, rest.len(), "no event but input left");
                        None
                    }
                    Some(Event::HeadComplete(h)) => {
                        let end = abs + consumed;
                        let start = end - h.head_len as usize;
                        assert_eq!(h.raw, &full[start..end], "raw head bytes");
                        assert_eq!(h.raw.len(), h.head_len as usize);
                        assert_eq!(line_lengths(h.raw), (h.first_line_len, h.headers_len));
                        Some(Ev::Head {
                            method: h.method,
                            method_bytes: s(h.method_bytes),
                            target: s(h.target),
                            minor: h.version_minor,
                            fl: h.first_line_len,
                            hl: h.headers_len,
                            head_len: h.head_len,
                            body: h.body,
                            expect: h.expect_continue,
                            close: h.connection_close,
                            upgrade: h.upgrade,
                            headers: h.headers.iter().map(|(n, v)| (s(n), s(v))).collect(),
                        })
                    }
                    Some(Event::MessageComplete {
                        first_line_len,
                        headers_len,
                    }) => Some(Ev::Msg {
                        fl: first_line_len,
                        hl: headers_len,
                    }),
                    Some(Event::Http2Preface) => Some(Ev::H2),
                };
                abs += consumed;
                rest = &rest[consumed..];
                match ev {
                    None => break,
                    Some(ev) => {
                        match ev {
                            Ev::Head { .. } => assert!(f.in_message() && !f.is_idle()),
                            Ev::Msg { .. } => assert!(!f.in_message() && f.is_idle()),
                            Ev::H2 => assert!(f.is_opaque() && !f.is_idle()),
                            Ev::Err(_) => unreachable!(),
                        }
                        out.push((abs, ev));
                    }
                }
            }
        }
        assert_eq!(abs, full.len());
        out
    }

    /// Runs `input` whole, split in two at every position, and one byte at a time; all must
    /// agree. Returns the events.
    fn agree(limits: FramerLimits, input: &[u8]) -> Vec<(usize, Ev)> {
        let whole = run(limits, &[input]);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(run(limits, &[a, b]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(limits, &bytes), whole, "byte by byte");
        whole
    }

    /// The defaults, but heads without Host (most cases here are about other things;
    /// `host_is_required` tests the rule).
    fn d() -> FramerLimits {
        FramerLimits {
            require_host: false,
            ..FramerLimits::default()
        }
    }

    fn offsets(evs: &[(usize, Ev)]) -> Vec<(usize, &'static str)> {
        evs.iter()
            .map(|(o, e)| {
                let k = match e {
                    Ev::Head { .. } => "head",
                    Ev::Msg { .. } => "msg",
                    Ev::H2 => "h2",
                    Ev::Err(_) => "err",
                };
                (*o, k)
            })
            .collect()
    }

    fn head_of(ev: &Ev) -> (&str, &str, u32, u32, BodyKind) {
        match ev {
            Ev::Head {
                method_bytes,
                target,
                fl,
                hl,
                body,
                ..
            } => (method_bytes, target, *fl, *hl, *body),
            other => panic!("not a head: {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let evs = agree(d(), req);
        assert_eq!(offsets(&evs), vec![(req.len(), "head"), (req.len(), "msg")]);
        assert_eq!(head_of(&evs[0].1), ("GET", "/", 14, 15, BodyKind::None));
        assert_eq!(evs[1].1, Ev::Msg { fl: 14, hl: 15 });
        match &evs[0].1 {
            Ev::Head {
                method,
                minor,
                close,
                headers,
                head_len,
                ..
            } => {
                assert_eq!(*method, Method::Get);
                assert_eq!(*minor, 1);
                assert!(!close);
                assert_eq!(*head_len as usize, req.len());
                assert_eq!(headers, &vec![("Host".into(), "localhost".into())]);
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn exact_line_lengths() {
        // Request line 14; headers "Host: a" (7) + "Content-Type: application/json" (30).
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\r\n";
        let evs = agree(d(), req);
        assert_eq!(evs[1].1, Ev::Msg { fl: 14, hl: 37 });
        // A bare LF ends no line of a request (Netty >= 4.1.139 refuses it).
        let lf = b"GET / HTTP/1.1\nHost: a\nContent-Type: application/json\n\n";
        assert!(matches!(malformed(lf), FrameError::Malformed(_)));
        // No headers at all.
        assert_eq!(
            agree(d(), b"GET /x HTTP/1.0\r\n\r\n")[1].1,
            Ev::Msg { fl: 15, hl: 0 }
        );
        assert_eq!(line_lengths(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"), (14, 4));
        assert_eq!(line_lengths(b"GET / HTTP/1.1\nA: b\nCc: d\n\n"), (14, 9));
        assert_eq!(line_lengths(b"GET / HTTP/1.1\r\n\r\n"), (14, 0));
        assert_eq!(line_lengths(b"GET / HTTP/1.1\n\n"), (14, 0));
        assert_eq!(line_lengths(b"GET / HTTP/1.1"), (14, 0));
    }

    #[test]
    fn keep_alive_sequence() {
        let a = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
        let b = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
        let c = b"DELETE /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut f = RequestFramer::new(d());
        let mut abs = 0;
        let mut got = Vec::new();
        for part in [&a[..], &b[..], &c[..]] {
            let mut rest = part;
            loop {
                let st = f.advance(rest).unwrap();
                abs += st.consumed;
                let ev = st.event.map(|e| match e {
                    Event::HeadComplete(h) => format!("head {}", s(h.method_bytes)),
                    Event::MessageComplete { .. } => "msg".to_string(),
                    Event::Http2Preface => "h2".to_string(),
                });
                rest = &rest[st.consumed..];
                match ev {
                    Some(e) => got.push((abs, e)),
                    None => break,
                }
            }
            assert!(f.is_idle());
        }
        let (la, lb, lc) = (a.len(), a.len() + b.len(), a.len() + b.len() + c.len());
        assert_eq!(
            got,
            vec![
                (la, "head GET".to_string()),
                (la, "msg".into()),
                (lb - 3, "head POST".into()),
                (lb, "msg".into()),
                (lc, "head DELETE".into()),
                (lc, "msg".into()),
            ]
        );
    }

    #[test]
    fn three_pipelined_gets() {
        let one = b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n";
        let input = [&one[..], one, one].concat();
        let evs = agree(d(), &input);
        let n = one.len();
        assert_eq!(
            offsets(&evs),
            vec![
                (n, "head"),
                (n, "msg"),
                (2 * n, "head"),
                (2 * n, "msg"),
                (3 * n, "head"),
                (3 * n, "msg")
            ]
        );
    }

    #[test]
    fn post_with_content_length() {
        let head = b"POST /i/_doc HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n";
        let input = [&head[..], b"{\"a\":\"hello\"}", b"GET / HTTP/1.1\r\n\r\n"].concat();
        let evs = agree(d(), &input);
        assert_eq!(
            offsets(&evs),
            vec![
                (head.len(), "head"),
                (head.len() + 13, "msg"),
                (input.len(), "head"),
                (input.len(), "msg")
            ]
        );
        assert_eq!(head_of(&evs[0].1).4, BodyKind::ContentLength(13));
        match &evs[0].1 {
            Ev::Head { method, .. } => assert!(method.is_mutating()),
            _ => unreachable!(),
        }
        // Content-Length: 0 completes right after the head.
        let zero = b"PUT /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            offsets(&agree(d(), zero)),
            vec![(zero.len(), "head"), (zero.len(), "msg")]
        );
        // Identical duplicates and lists are refused (Netty refuses them; RFC 9110 allows).
        for dup in [
            &b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"[..],
            b"PUT /x HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab",
        ] {
            assert!(matches!(malformed(dup), FrameError::Malformed(_)));
        }
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let head = b"POST /_bulk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = b"5;name=value\r\nhello\r\nA ; x=\"y\"\r\n0123456789\r\n0;last\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n";
        let input = [&head[..], body, b"GET / HTTP/1.1\r\n\r\n"].concat();
        let evs = agree(d(), &input);
        assert_eq!(
            offsets(&evs),
            vec![
                (head.len(), "head"),
                (head.len() + body.len(), "msg"),
                (input.len(), "head"),
                (input.len(), "msg")
            ]
        );
        assert_eq!(head_of(&evs[0].1).4, BodyKind::Chunked);
        // Upper-case hex, `Chunked` in any case.
        let upper = b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n1F\r\n0123456789012345678901234567890\r\n0\r\n\r\n";
        assert_eq!(offsets(&agree(d(), upper))[1], (upper.len(), "msg"));
        // A bare LF anywhere in the body's framing is refused.
        for lf in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
        ] {
            assert!(matches!(malformed(lf), FrameError::Malformed(_)));
        }
        // Extensions in the full grammar: BWS around `;` and `=`, quoted values with pairs.
        let ext = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1 ; a = b ;c;d=\"x\\\"; y\"\r\nz\r\n0;e=\"\"\r\n\r\n";
        assert_eq!(offsets(&agree(d(), ext))[1], (ext.len(), "msg"));
    }

    #[test]
    fn chunk_lines_outside_the_grammar_are_refused() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for line in [
            &b"0 /x HTTP/1.1\r\n"[..], // issue 13: Netty reads a last chunk, then a request
            b"5 \r\n",                 // whitespace without an extension
            b"5;\r\n",                 // `;` without a name
            b"5;a=\r\n",               // `=` without a value
            b"5;a=b c\r\n",            // junk after a value
            b"5;a=\"open\r\n",         // unterminated quoted string
            b"5;a\x01\r\n",            // control byte
            b" 5\r\n",                 // leading whitespace
            b"5\r\r\n",                // CR without LF
            b"0x5\r\n",                // not hex
        ] {
            let input = [&head[..], line, b"hello\r\n0\r\n\r\n"].concat();
            assert!(
                matches!(malformed(&input), FrameError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn trailers_outside_the_grammar_are_refused() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n";
        for trailer in [
            &b"Content-Length: 55\r\n\r\n"[..],
            b"transfer-encoding: chunked\r\n\r\n",
            b"Trailer: x\r\n\r\n",
            b"X-A: 1\r\n folded\r\n\r\n",
            b"X A: 1\r\n\r\n",
            b": empty name\r\n\r\n",
            b"X-A: a\x00b\r\n\r\n",
            b"X-A: 1\rX\r\n\r\n",
            b"no colon\r\n\r\n",
        ] {
            let input = [&head[..], trailer].concat();
            assert!(
                matches!(malformed(&input), FrameError::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(trailer)
            );
        }
        // A long name that merely starts like a framing field is fine.
        let ok = [&head[..], b"Content-Length-Hint: 5\r\nX-B:\r\n\r\n"].concat();
        assert_eq!(offsets(&agree(d(), &ok))[1], (ok.len(), "msg"));
    }

    #[test]
    fn transfer_codings_other_than_exactly_chunked_are_not_implemented() {
        for te in [
            &b"Transfer-Encoding: gzip, chunked\r\n"[..],
            b"Transfer-Encoding: chunked, chunked\r\n",
            b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: chunked, gzip\r\n",
            b"Transfer-Encoding: xchunked\r\n",
            b"Transfer-Encoding: identity\r\n",
        ] {
            let input = [
                &b"POST /te HTTP/1.1\r\nHost: o\r\n"[..],
                te,
                b"\r\n0\r\n\r\n",
            ]
            .concat();
            assert!(
                matches!(malformed(&input), FrameError::NotImplemented(_)),
                "{:?}",
                String::from_utf8_lossy(te)
            );
        }
        // HTTP/1.0 has no chunked framing to agree on.
        assert!(matches!(
            malformed(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
            FrameError::Malformed(_)
        ));
    }

    #[test]
    fn expectations_other_than_100_continue_fail() {
        assert_eq!(
            malformed(b"POST / HTTP/1.1\r\nExpect: x-anything\r\nContent-Length: 1\r\n\r\nx"),
            FrameError::ExpectationFailed
        );
        assert_eq!(
            malformed(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\nx"),
            FrameError::ExpectationFailed
        );
        let ok = b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(offsets(&agree(d(), ok))[1], (ok.len(), "msg"));
    }

    #[test]
    fn chunked_terminator_in_separate_chunk() {
        let first = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        let second = b"0\r\n\r\n";
        let evs = run(d(), &[first, second]);
        assert_eq!(
            offsets(&evs),
            vec![
                (first.len() - 8, "head"),
                (first.len() + second.len(), "msg")
            ]
        );
        // And with the terminator split inside.
        let evs2 = run(d(), &[first, b"0\r", b"\n\r", b"\n"]);
        assert_eq!(evs, evs2);
        assert_eq!(agree(d(), &[&first[..], second].concat()), evs);
    }

    #[test]
    fn bare_lf_request_is_refused() {
        for req in [
            &b"POST /x HTTP/1.1\nHost: a\nContent-Length: 2\n\nok"[..],
            b"POST /x HTTP/1.1\r\nHost: a\nContent-Length: 2\r\n\r\nok",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\nok",
        ] {
            assert!(matches!(malformed(req), FrameError::Malformed(_)));
        }
        // Responses keep accepting it (see `response.rs`).
        let lax = FramerLimits {
            crlf_only: false,
            ..d()
        };
        let req = b"POST /x HTTP/1.1\nHost: a\nContent-Length: 2\n\nok";
        assert_eq!(
            offsets(&agree(lax, req)),
            vec![(req.len() - 2, "head"), (req.len(), "msg")]
        );
    }

    #[test]
    fn unknown_methods_are_refused() {
        for m in ["get", "GeT", "FOO", "PRI", "PROPFIND", "GE_"] {
            let req = format!("{m} /x HTTP/1.1\r\n\r\n");
            assert!(
                matches!(malformed(req.as_bytes()), FrameError::NotImplemented(_)),
                "{m}"
            );
        }
    }

    #[test]
    fn host_is_required_exactly_once() {
        let strict = FramerLimits::default();
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(offsets(&agree(strict, ok))[1], (ok.len(), "msg"));
        let http10 = b"GET / HTTP/1.0\r\n\r\n";
        assert_eq!(offsets(&agree(strict, http10))[1], (http10.len(), "msg"));
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(
                    agree(strict, bad).last(),
                    Some((ERR_AT, Ev::Err(FrameError::Malformed(_))))
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_line_and_header_limits_are_the_sources() {
        // Netty counts the request line and the header lines without their line endings.
        let line = |n: usize| format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(n));
        let at_limit = line(FramerLimits::DEFAULT_MAX_REQUEST_LINE_BYTES - 14);
        assert_eq!(offsets(&agree(d(), at_limit.as_bytes()))[1].1, "msg");
        let over = line(FramerLimits::DEFAULT_MAX_REQUEST_LINE_BYTES - 13);
        assert_eq!(
            agree(d(), over.as_bytes()),
            vec![(ERR_AT, Ev::Err(FrameError::HeadTooLarge))]
        );
        // Headers: "X: " + value, summed.
        let headers =
            |n: usize| format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "v".repeat(n));
        let at_limit = headers(FramerLimits::DEFAULT_MAX_HEADER_BYTES - 7 - 3);
        assert_eq!(offsets(&agree(d(), at_limit.as_bytes()))[1].1, "msg");
        let over = headers(FramerLimits::DEFAULT_MAX_HEADER_BYTES - 7 - 2);
        assert_eq!(
            agree(d(), over.as_bytes()),
            vec![(ERR_AT, Ev::Err(FrameError::HeadTooLarge))]
        );
    }

    #[test]
    fn head_over_limit() {
        let small = FramerLimits {
            max_head_bytes: 40,
            ..d()
        };
        // 40 bytes exactly is fine.
        let ok = b"GET / HTTP/1.1\r\nHost: abcdefghijklmn\r\n\r\n";
        assert_eq!(ok.len(), 40);
        assert_eq!(offsets(&agree(small, ok)), vec![(40, "head"), (40, "msg")]);
        // 41 bytes is too large, also when the end never arrives.
        let big = b"GET / HTTP/1.1\r\nHost: abcdefghijklmno\r\n\r\n";
        assert_eq!(
            agree(small, big),
            vec![(ERR_AT, Ev::Err(FrameError::HeadTooLarge))]
        );
        assert_eq!(
            agree(small, &[&big[..big.len() - 2], b"Y: 1"].concat()),
            vec![(ERR_AT, Ev::Err(FrameError::HeadTooLarge))]
        );

        // The default limit: 64 KiB.
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(FramerLimits::DEFAULT_MAX_HEAD_BYTES)
        );
        let huge = huge.as_bytes();
        assert_eq!(
            run(d(), &[huge]),
            vec![(ERR_AT, Ev::Err(FrameError::HeadTooLarge))]
        );
        let (a, b) = huge.split_at(30_000);
        assert_eq!(
            run(d(), &[a, b]),
            vec![(ERR_AT, Ev::Err(FrameError::HeadTooLarge))]
        );
    }

    #[test]
    fn many_headers_use_the_heap_fallback() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..200 {
            req.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let evs = run(d(), &[&req]);
        match &evs[0].1 {
            Ev::Head { headers, .. } => {
                assert_eq!(headers.len(), 200);
                assert_eq!(headers[199], ("X-199".into(), "199".into()));
            }
            other => panic!("{other:?}"),
        }
        let (a, b) = req.split_at(1000);
        assert_eq!(run(d(), &[a, b]), evs);
    }

    fn malformed(input: &[u8]) -> FrameError {
        match agree(d(), input).last() {
            Some((ERR_AT, Ev::Err(e))) => *e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_request_line() {
        assert!(matches!(
            malformed(b"GET /a b HTTP/1.1\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        assert!(matches!(
            malformed(b"GET / HTTX/1.1\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        assert!(matches!(
            malformed(b"G\x01T / HTTP/1.1\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        assert!(matches!(
            malformed(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        // A TLS ClientHello on the plaintext port fails at once, without waiting for a
        // head end that never comes.
        let mut f = RequestFramer::new(d());
        assert!(f
            .advance(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
            .is_err());
        // Split: fails as soon as the request line is complete.
        let mut f = RequestFramer::new(d());
        assert_eq!(f.advance(b"GET /a").unwrap().consumed, 6);
        assert!(f.advance(b" b HTTP/1.1\r\nHost").is_err());
    }

    #[test]
    fn content_length_and_transfer_encoding_is_rejected() {
        let e = malformed(
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        assert_eq!(
            e,
            FrameError::Malformed("both Content-Length and Transfer-Encoding")
        );
        // A final coding other than chunked.
        assert!(matches!(
            malformed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            FrameError::NotImplemented(_)
        ));
        assert!(matches!(
            malformed(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            FrameError::NotImplemented(_)
        ));
    }

    #[test]
    fn bad_content_length() {
        for req in [
            &b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n",
        ] {
            assert!(
                matches!(malformed(req), FrameError::Malformed(_)),
                "{req:?}"
            );
        }
    }

    #[test]
    fn bad_chunk_size() {
        let head = &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..];
        for body in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";ext\r\n",
            b"10000000000000000\r\n",
            b"5\rX\n",
            b"3\r\nabcX\r\n",
        ] {
            let input = [head, body].concat();
            let evs = agree(d(), &input);
            assert_eq!(evs.len(), 2, "{body:?}: {evs:?}");
            assert!(
                matches!(evs[1].1, Ev::Err(FrameError::Malformed(_))),
                "{body:?}"
            );
        }
        // Largest size that fits: no overflow error (the body is just incomplete).
        let input = [head, b"FFFFFFFFFFFFFFFF\r\nabc"].concat();
        assert_eq!(agree(d(), &input).len(), 1);
        // Chunk-size line and trailer limits.
        let tight = FramerLimits {
            max_chunk_line_bytes: 8,
            max_trailer_bytes: 12,
            ..d()
        };
        let ok = [head, b"3;abcd\r\nabc\r\n0\r\nX: 12345\r\n\r\n"].concat();
        assert_eq!(offsets(&agree(tight, &ok))[1], (ok.len(), "msg"));
        let long_line = [head, b"3;abcde\r\nabc\r\n0\r\n\r\n"].concat();
        assert_eq!(
            agree(tight, &long_line)[1].1,
            Ev::Err(FrameError::Malformed("chunk-size line too long"))
        );
        let long_trailer = [head, b"0\r\nX: 123456\r\n\r\n"].concat();
        assert_eq!(
            agree(tight, &long_trailer)[1].1,
            Ev::Err(FrameError::Malformed("trailer section too large"))
        );
    }

    #[test]
    fn http_1_0() {
        let req = b"GET / HTTP/1.0\r\n\r\n";
        let evs = agree(d(), req);
        match &evs[0].1 {
            Ev::Head { minor, close, .. } => assert_eq!((*minor, *close), (0, true)),
            _ => unreachable!(),
        }
        let ka = b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
        match &agree(d(), ka)[0].1 {
            Ev::Head { minor, close, .. } => assert_eq!((*minor, *close), (0, false)),
            _ => unreachable!(),
        }
        let close11 = b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n";
        match &agree(d(), close11)[0].1 {
            Ev::Head { close, .. } => assert!(*close),
            _ => unreachable!(),
        }
    }

    #[test]
    fn expect_100_continue() {
        let head = b"PUT /i HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n";
        let input = [&head[..], b"data"].concat();
        let evs = agree(d(), &input);
        assert_eq!(
            offsets(&evs),
            vec![(head.len(), "head"), (input.len(), "msg")]
        );
        match &evs[0].1 {
            Ev::Head { expect, .. } => assert!(*expect),
            _ => unreachable!(),
        }
        // The client waits for 100 Continue: the body arrives in a later read.
        assert_eq!(run(d(), &[head, b"da", b"ta"]), evs);
    }

    #[test]
    fn leading_empty_lines_are_refused() {
        // Netty 4.1.49 (Elasticsearch 7.10) refuses the request they precede when its request
        // line arrives split: how TCP splits it decides, so the proxy refuses them always.
        assert!(matches!(
            malformed(b"\r\n\r\n\nGET / HTTP/1.1\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        // Between requests (a client that sends CRLF after a body): the first one is framed,
        // the empty line is refused.
        let two = b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\nGET / HTTP/1.1\r\n\r\n";
        let evs = agree(d(), two);
        assert_eq!(offsets(&evs)[1], (two.len() - 20, "msg"));
        assert!(matches!(
            evs.last(),
            Some((ERR_AT, Ev::Err(FrameError::Malformed(_))))
        ));
    }

    #[test]
    fn http2_preface() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00";
        let evs = agree(d(), preface);
        assert_eq!(evs, vec![(24, Ev::H2)]);
        // Only the whole 24-byte preface, and only as the connection's first bytes.
        assert!(matches!(
            malformed(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        assert!(matches!(
            malformed(b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        let later = b"GET / HTTP/1.1\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let evs = agree(d(), later);
        assert!(
            matches!(
                evs.last(),
                Some((ERR_AT, Ev::Err(FrameError::Malformed(_))))
            ),
            "{evs:?}"
        );
        // Split at the start: still the preface.
        let mut f = RequestFramer::new(d());
        assert!(f.advance(b"PRI * HT").unwrap().event.is_none());
        assert!(f.advance(b"TP/2.0\r\n\r\nS").unwrap().event.is_none());
        assert!(matches!(
            f.advance(b"M\r\n\r\n").unwrap().event,
            Some(Event::Http2Preface)
        ));
        // Anything else with an HTTP/2 version is malformed.
        assert!(matches!(
            malformed(b"GET / HTTP/2.0\r\n\r\n"),
            FrameError::Malformed(_)
        ));
        let mut f = RequestFramer::new(d());
        assert!(f.advance(b"PRI * HTTP/2.0\r\nX").is_err());
    }

    #[test]
    fn upgrade_and_opaque() {
        let req = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let mut f = RequestFramer::new(d());
        match f.advance(req).unwrap().event {
            Some(Event::HeadComplete(h)) => assert!(h.upgrade),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            f.advance(&[]).unwrap().event,
            Some(Event::MessageComplete { .. })
        ));
        f.set_opaque();
        let st = f.advance(b"\x81\x05hello garbage").unwrap();
        assert_eq!((st.consumed, st.event.is_none()), (15, true));
        assert!(f.is_opaque() && !f.is_idle() && !f.in_message());
        let connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
        match &agree(d(), connect)[0].1 {
            Ev::Head {
                method,
                target,
                upgrade,
                ..
            } => {
                assert_eq!(
                    (*method, target.as_str(), *upgrade),
                    (Method::Connect, "example.com:443", false)
                )
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn head_borrow_allows_next_advance() {
        // The caller inspects the head, then goes on with the same framer and input.
        let input = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let mut f = RequestFramer::new(d());
        let mut rest = &input[..];
        let mut targets = Vec::new();
        loop {
            let step = f.advance(rest).unwrap();
            if let Some(Event::HeadComplete(h)) = &step.event {
                targets.push(h.target.to_vec());
            }
            let done = step.event.is_none();
            rest = &rest[step.consumed..];
            if done {
                break;
            }
        }
        assert_eq!(targets, vec![b"/a".to_vec(), b"/b".to_vec()]);
    }

    #[test]
    fn split_head_buffer_keeps_capacity() {
        let req = b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: test\r\n\r\n";
        let (a, b) = req.split_at(20);
        let mut f = RequestFramer::new(d());
        for _ in 0..3 {
            assert!(f.advance(a).unwrap().event.is_none());
            assert!(f.advance(b).unwrap().event.is_some());
            assert!(f.advance(&[]).unwrap().event.is_some());
        }
        let cap = f.accum.buf.capacity();
        let ranges_cap = f.ranges.capacity();
        for _ in 0..100 {
            assert!(f.advance(a).unwrap().event.is_none());
            assert!(f.advance(b).unwrap().event.is_some());
            assert!(f.advance(&[]).unwrap().event.is_some());
        }
        assert_eq!(f.accum.buf.capacity(), cap);
        assert_eq!(f.ranges.capacity(), ranges_cap);
    }

    #[test]
    fn head_dribbled_byte_by_byte_stays_linear() {
        // A 60 KB request line sent one byte per read must not rescan the buffer per byte.
        let req = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(60_000));
        let bytes: Vec<&[u8]> = req.as_bytes().chunks(1).collect();
        let started = std::time::Instant::now();
        let long_lines = FramerLimits {
            max_request_line_bytes: 64 * 1024,
            ..d()
        };
        let evs = run(long_lines, &bytes);
        assert_eq!(offsets(&evs), vec![(req.len(), "head"), (req.len(), "msg")]);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    enum GenBody {
        None,
        Length(Vec<u8>),
        Chunked {
            sizes: Vec<usize>,
            ext: bool,
            trailers: bool,
        },
    }

    #[derive(Debug, Clone)]
    struct GenReq {
        method: &'static str,
        target: String,
        crlf: bool,
        leading: usize,
        headers: Vec<(String, String)>,
        body: GenBody,
    }

    impl GenReq {
        /// Bytes, plus (head end, message end) offsets relative to the start.
        fn render(&self, out: &mut Vec<u8>) -> (usize, usize, u32, u32) {
            let nl: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
            for _ in 0..self.leading {
                out.extend_from_slice(nl);
            }
            let line = format!("{} {} HTTP/1.1", self.method, self.target);
            let fl = line.len() as u32;
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(nl);
            let mut hl = 0u32;
            let mut header = |out: &mut Vec<u8>, l: String| {
                hl += l.len() as u32;
                out.extend_from_slice(l.as_bytes());
                out.extend_from_slice(nl);
            };
            for (n, v) in &self.headers {
                header(out, format!("{n}: {v}"));
            }
            match &self.body {
                GenBody::None => {}
                GenBody::Length(b) => header(out, format!("Content-Length: {}", b.len())),
                GenBody::Chunked { .. } => header(out, "Transfer-Encoding: chunked".into()),
            }
            out.extend_from_slice(nl);
            let head_end = out.len();
            match &self.body {
                GenBody::None => {}
                GenBody::Length(b) => out.extend_from_slice(b),
                GenBody::Chunked {
                    sizes,
                    ext,
                    trailers,
                } => {
                    for (i, &n) in sizes.iter().enumerate() {
                        out.extend_from_slice(format!("{n:x}").as_bytes());
                        if *ext {
                            out.extend_from_slice(b";e=1");
                        }
                        out.extend_from_slice(nl);
                        // Body bytes that look like framing on purpose.
                        out.extend((0..n).map(|j| b"\r\n0GET "[(i + j) % 7]));
                        out.extend_from_slice(nl);
                    }
                    out.extend_from_slice(b"0");
                    out.extend_from_slice(nl);
                    if *trailers {
                        out.extend_from_slice(b"X-T: 1");
                        out.extend_from_slice(nl);
                    }
                    out.extend_from_slice(nl);
                }
            }
            (head_end, out.len(), fl, hl)
        }
    }

    fn gen_req() -> impl Strategy<Value = GenReq> {
        // The methods the sources serve (others are refused: `unknown_methods_are_refused`).
        let method = prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "TRACE",
        ]);
        let body = prop_oneof![
            Just(GenBody::None),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(GenBody::Length),
            (
                prop::collection::vec(1usize..40, 0..5),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(sizes, ext, trailers)| GenBody::Chunked {
                    sizes,
                    ext,
                    trailers
                }),
        ];
        (
            method,
            "/[a-z0-9/?=&]{0,20}",
            any::<bool>(),
            0usize..3,
            prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..4),
            body,
        )
            // CRLF only, no leading empty lines: the framer refuses the rest.
            .prop_map(|(method, target, _crlf, _leading, headers, body)| GenReq {
                method,
                target,
                crlf: true,
                leading: 0,
                // Keep framing headers out of the random ones.
                headers: headers
                    .into_iter()
                    .filter(|(n, _)| {
                        let n = n.to_ascii_lowercase();
                        n != "content-length" && n != "transfer-encoding"
                    })
                    .map(|(n, v)| (n, v.trim().to_string()))
                    .collect(),
                body,
            })
    }

    fn cut(input: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut prev = 0;
        for p in points {
            chunks.push(input[prev..p].to_vec());
            prev = p;
        }
        chunks.push(input[prev..].to_vec());
        chunks
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_valid_requests_frame_exactly(
            reqs in prop::collection::vec(gen_req(), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut input = Vec::new();
            let mut want = Vec::new();
            for r in &reqs {
                let (head_end, end, fl, hl) = r.render(&mut input);
                want.push((head_end, "head"));
                want.push((end, "msg"));
                let _ = (fl, hl);
            }
            let chunks = cut(&input, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            let got = run(d(), &refs);
            prop_assert_eq!(offsets(&got), want);
            // Line lengths in MessageComplete match the generator's.
            let mut lens = Vec::new();
            let mut scratch = Vec::new();
            for r in &reqs {
                let (_, _, fl, hl) = r.render(&mut scratch);
                lens.push(Ev::Msg { fl, hl });
            }
            let msgs: Vec<Ev> = got.into_iter().map(|(_, e)| e).filter(|e| matches!(e, Ev::Msg { .. })).collect();
            prop_assert_eq!(msgs, lens);
        }

        #[test]
        fn random_bytes_never_panic(
            input in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let chunks = cut(&input, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            let _ = run(d(), &refs);
        }

        #[test]
        fn http_like_noise_never_panics(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"GET / HTTP/1.1"[..], b"POST /x HTTP/1.0", b"\r\n", b"\n", b"\r", b" ",
                b"Content-Length: 3", b"Content-Length: 99999999999999999999",
                b"Transfer-Encoding: chunked", b"0", b"5", b"ff", b";x=y", b"abc", b":",
                b"PRI * HTTP/2.0", b"\x00", b"\xff",
            ]), 0..40),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let input = parts.concat();
            let chunks = cut(&input, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(|c| c.as_slice()).collect();
            let got = run(d(), &refs);
            // Splitting never changes the events (errors aside, which have no offset).
            let whole = run(d(), &[&input]);
            let strip = |v: &[(usize, Ev)]| v.iter().filter(|(o, _)| *o != ERR_AT).cloned().collect::<Vec<_>>();
            let (g, w) = (strip(&got), strip(&whole));
            let n = g.len().min(w.len());
            prop_assert_eq!(&g[..n], &w[..n]);
        }
    }
}
