//! Response framing: [`ResponseFramer`] follows the destination's responses on one connection,
//! matching each to the forwarded request it answers (in order), so the caller knows when an
//! exchange is complete, whether a response is interim (1xx) and when the connection turns
//! opaque (101, or 2xx to CONNECT).
//!
//! May depend on: `httparse` and the shared primitives in `super`.
//!
//! Invariant: body framing follows RFC 9112 §6.3; events are reported at exact byte positions
//! independent of how the input was split; a call without an event consumes all of its
//! input; the expected-request queue and the head buffer keep their capacity.

use std::collections::VecDeque;

use super::{
    has_token, heap_header_slots, httparse_error, known_header, leading_empty_lines,
    merge_content_length, trim_ows, Body, Chunk, FrameError, FramerLimits, HeadAccum, HeaderSlot,
    Known, Parsed, TransferCoding, INLINE_HEADER_SLOTS,
};

/// A forwarded request, as far as its response's framing depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectedResponse<T = u64> {
    /// The caller's value for this request, returned with its response events (the
    /// connection keeps its per-request facts here, so this queue is its only one).
    pub id: T,
    /// The request was HEAD: its response has no body whatever its headers say.
    pub method_head: bool,
    /// The request was CONNECT: a 2xx response turns the connection into a tunnel.
    pub method_connect: bool,
}

/// What a [`ResponseFramer`] call reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RStep<T = u64> {
    pub consumed: usize,
    pub event: Option<REvent<T>>,
}

/// Something that happened exactly at the end of a call's consumed bytes. `id` is the
/// [`ExpectedResponse::id`] of the request being answered, `None` when the response came with
/// no request outstanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum REvent<T = u64> {
    /// A response head is complete. `interim` = 1xx other than 101: another head follows for
    /// the same request, and no `MessageComplete` is reported for the interim one.
    HeadComplete {
        id: Option<T>,
        status: u16,
        interim: bool,
    },
    /// The final response is fully received (for a response without a body, on the call
    /// after `HeadComplete`, with `consumed == 0`).
    MessageComplete { id: Option<T>, keep_alive: bool },
    /// 101 Switching Protocols, or 2xx to CONNECT (reported on the call after its
    /// `HeadComplete`, with `consumed == 0`): the connection is opaque from here on, every
    /// later `advance` consumes all input without events.
    Upgraded { id: Option<T> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    /// Expecting a head (leading empty lines are skipped here).
    Idle,
    /// A head arrived split; its bytes so far are in `accum`.
    Head,
    /// Head reported; the response has no body, `MessageComplete` is due.
    NoBody,
    /// Head reported; `Upgraded` is due.
    UpgradeDue,
    Body(Body),
    Opaque,
    Failed(FrameError),
}

/// The response in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current<T> {
    id: Option<T>,
    /// It answers the queue's front entry (popped when the final response completes).
    matched: bool,
    keep_alive: bool,
}

/// What a response head says about framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RespMeta {
    status: u16,
    version_minor: u8,
    content_length: Option<u64>,
    te: TransferCoding,
    conn_close: bool,
    conn_keep_alive: bool,
}

/// Frames the responses of one destination connection.
#[derive(Debug)]
pub struct ResponseFramer<T = u64> {
    limits: FramerLimits,
    config: httparse::ParserConfig,
    state: RState,
    accum: HeadAccum,
    expected: VecDeque<ExpectedResponse<T>>,
    cur: Current<T>,
}

impl<T: Copy> ResponseFramer<T> {
    pub fn new(mut limits: FramerLimits) -> Self {
        // A response's bytes go to the client unchanged: a bare LF ends a line here.
        limits.crlf_only = false;
        let mut config = httparse::ParserConfig::default();
        // Be as lenient with the destination as its clients are likely to be: the bytes go
        // to the client unchanged, the framer only needs the framing headers.
        config
            .allow_spaces_after_header_name_in_responses(true)
            .allow_obsolete_multiline_headers_in_responses(true)
            .allow_multiple_spaces_in_response_status_delimiters(true)
            .ignore_invalid_headers_in_responses(true);
        ResponseFramer {
            limits,
            config,
            state: RState::Idle,
            accum: HeadAccum::default(),
            expected: VecDeque::new(),
            cur: Current {
                id: None,
                matched: false,
                keep_alive: true,
            },
        }
    }

    /// Records that a request was forwarded; call in forwarding order.
    pub fn expect(&mut self, req: ExpectedResponse<T>) {
        self.expected.push_back(req);
    }

    /// Forwarded requests whose final response is not complete yet.
    pub(crate) fn outstanding(&self) -> usize {
        self.expected.len()
    }

    /// The caller's value of the oldest forwarded request whose final response is not complete
    /// (the one the response in progress answers, if any).
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.expected.front_mut().map(|e| &mut e.id)
    }

    /// The caller's value of the newest forwarded request whose final response is not complete.
    pub(crate) fn back_mut(&mut self) -> Option<&mut T> {
        self.expected.back_mut().map(|e| &mut e.id)
    }

    /// No request outstanding and nothing partial (false once opaque or failed).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.expected.is_empty() && self.state == RState::Idle
    }

    /// True after `Upgraded`.
    #[cfg(test)]
    pub(crate) fn is_opaque(&self) -> bool {
        self.state == RState::Opaque
    }

    /// Consumes a prefix of `input` and reports at most one event, which happened exactly at
    /// the end of the consumed prefix. Same calling convention as
    /// [`RequestFramer::advance`](super::RequestFramer::advance): a call without an event
    /// consumes everything; after an event call again, even with an empty rest.
    pub fn advance(&mut self, input: &[u8]) -> Result<RStep<T>, FrameError> {
        match self.advance_inner(input) {
            Ok((consumed, event)) => Ok(RStep { consumed, event }),
            Err(e) => {
                self.state = RState::Failed(e);
                Err(e)
            }
        }
    }

    /// The destination closed its side. Completes a close-delimited response (reporting
    /// `MessageComplete` with `keep_alive: false`); otherwise `None` (a message cut short
    /// stays incomplete).
    pub(crate) fn on_eof(&mut self) -> Option<REvent<T>> {
        if self.state != RState::Body(Body::CloseDelimited) {
            return None;
        }
        self.state = RState::Idle;
        self.cur.keep_alive = false;
        Some(self.complete())
    }

    fn complete(&mut self) -> REvent<T> {
        if self.cur.matched {
            self.expected.pop_front();
        }
        REvent::MessageComplete {
            id: self.cur.id,
            keep_alive: self.cur.keep_alive,
        }
    }

    fn advance_inner(&mut self, input: &[u8]) -> Result<(usize, Option<REvent<T>>), FrameError> {
        let mut pos = 0usize;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.state {
                RState::Failed(e) => return Err(e),
                RState::Opaque => return Ok((input.len(), None)),
                RState::NoBody => {
                    self.state = RState::Idle;
                    return Ok((pos, Some(self.complete())));
                }
                RState::UpgradeDue => {
                    self.state = RState::Opaque;
                    if self.cur.matched {
                        self.expected.pop_front();
                    }
                    return Ok((pos, Some(REvent::Upgraded { id: self.cur.id })));
                }
                RState::Body(mut body) => {
                    let (n, done) = body.advance(rest, &self.limits)?;
                    pos += n;
                    if done {
                        self.state = RState::Idle;
                        return Ok((pos, Some(self.complete())));
                    }
                    self.state = RState::Body(body);
                    return Ok((input.len(), None));
                }
                RState::Idle => {
                    let skip = leading_empty_lines(rest);
                    pos += skip;
                    let rest = rest.get(skip..).unwrap_or_default();
                    if rest.is_empty() {
                        return Ok((input.len(), None));
                    }
                    let window = rest
                        .get(..rest.len().min(self.limits.max_head_bytes))
                        .unwrap_or_default();
                    match parse_response(&self.config, window)? {
                        Parsed::Complete { len, meta } => {
                            pos += len;
                            return Ok((pos, Some(self.head_parsed(meta))));
                        }
                        Parsed::Invalid(e) => return Err(httparse_error(e)),
                        Parsed::Partial if rest.len() > window.len() => {
                            return Err(FrameError::HeadTooLarge)
                        }
                        Parsed::Partial => {}
                    }
                    self.accum.start();
                    self.state = RState::Head;
                }
                RState::Head => {
                    let (n, done) = self.accum.feed(rest, self.limits.max_head_bytes)?;
                    pos += n;
                    if !done {
                        if self.accum.start_line_ready() {
                            if let Parsed::Invalid(e) =
                                parse_response(&self.config, &self.accum.buf)?
                            {
                                return Err(httparse_error(e));
                            }
                        }
                        return Ok((input.len(), None));
                    }
                    match parse_response(&self.config, &self.accum.buf)? {
                        Parsed::Complete { len, meta } if len == self.accum.buf.len() => {
                            return Ok((pos, Some(self.head_parsed(meta))));
                        }
                        Parsed::Invalid(e) => return Err(httparse_error(e)),
                        _ => return Err(FrameError::Malformed("inconsistent end of head")),
                    }
                }
            }
        }
    }

    /// Decides the framing of the response whose head was just parsed (RFC 9112 §6.3).
    fn head_parsed(&mut self, m: RespMeta) -> REvent<T> {
        let front = self.expected.front().copied();
        let id = front.map(|e| e.id);
        let method_head = front.is_some_and(|e| e.method_head);
        let method_connect = front.is_some_and(|e| e.method_connect);
        let status = m.status;
        let interim = (100..200).contains(&status) && status != 101;
        let head = REvent::HeadComplete {
            id,
            status,
            interim,
        };
        if interim {
            // Another head follows for the same request.
            self.state = RState::Idle;
            return head;
        }
        let persistent = if m.version_minor == 0 {
            m.conn_keep_alive && !m.conn_close
        } else {
            !m.conn_close
        };
        self.cur = Current {
            id,
            matched: front.is_some(),
            keep_alive: persistent,
        };
        if status == 101 || (method_connect && (200..300).contains(&status)) {
            self.state = RState::UpgradeDue;
            return head;
        }
        self.state = if method_head || status == 204 || status == 304 {
            RState::NoBody
        } else if m.te.present {
            // Transfer-Encoding overrides Content-Length; a response with both may be an
            // attempt at response splitting, so do not reuse the connection after it.
            if m.content_length.is_some() {
                self.cur.keep_alive = false;
            }
            if m.te.chunked_last && !m.te.chunked_misplaced {
                RState::Body(Body::Chunked(Chunk::START))
            } else {
                self.cur.keep_alive = false;
                RState::Body(Body::CloseDelimited)
            }
        } else {
            match m.content_length {
                Some(0) => RState::NoBody,
                Some(n) => RState::Body(Body::Length(n)),
                None => {
                    self.cur.keep_alive = false;
                    RState::Body(Body::CloseDelimited)
                }
            }
        };
        head
    }
}

/// Parses a response head at the start of `raw` (which may continue past the head).
fn parse_response(
    config: &httparse::ParserConfig,
    raw: &[u8],
) -> Result<Parsed<RespMeta>, FrameError> {
    let mut slots = [const { HeaderSlot::uninit() }; INLINE_HEADER_SLOTS];
    match parse_response_with(config, raw, &mut slots) {
        Ok(Parsed::Invalid(httparse::Error::TooManyHeaders)) => {
            let mut heap = heap_header_slots(raw);
            parse_response_with(config, raw, &mut heap)
        }
        other => other,
    }
}

fn parse_response_with<'b>(
    config: &httparse::ParserConfig,
    raw: &'b [u8],
    slots: &mut [HeaderSlot<'b>],
) -> Result<Parsed<RespMeta>, FrameError> {
    let mut resp = httparse::Response::new(&mut []);
    let len = match config.parse_response_with_uninit_headers(&mut resp, raw, slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Ok(Parsed::Invalid(e)),
    };
    let mut meta = RespMeta {
        status: resp.code.unwrap_or(0),
        version_minor: resp.version.unwrap_or(1),
        content_length: None,
        te: TransferCoding::default(),
        conn_close: false,
        conn_keep_alive: false,
    };
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = trim_ows(h.value);
        match known_header(name) {
            Known::ContentLength => {
                meta.content_length = Some(merge_content_length(meta.content_length, value)?)
            }
            Known::TransferEncoding => meta.te.add(value),
            Known::Connection => {
                meta.conn_close |= has_token(value, b"close");
                meta.conn_keep_alive |= has_token(value, b"keep-alive");
            }
            _ => {}
        }
    }
    Ok(Parsed::Complete { len, meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Ok(REvent),
        Err(FrameError),
        Eof(Option<REvent>),
    }

    const AT_END: usize = usize::MAX;

    fn get(id: u64) -> ExpectedResponse {
        ExpectedResponse {
            id,
            method_head: false,
            method_connect: false,
        }
    }

    /// Runs a fresh framer that expects `reqs` over `chunks`, then signals EOF when `eof`.
    fn run(reqs: &[ExpectedResponse], chunks: &[&[u8]], eof: bool) -> Vec<(usize, Ev)> {
        let mut f = ResponseFramer::new(FramerLimits::default());
        for r in reqs {
            f.expect(*r);
        }
        let mut abs = 0usize;
        let mut out = Vec::new();
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            let mut calls = 0;
            loop {
                calls += 1;
                assert!(calls < 10_000, "no progress");
                match f.advance(rest) {
                    Err(e) => {
                        out.push((AT_END, Ev::Err(e)));
                        assert_eq!(f.advance(b"x"), Err(e));
                        return out;
                    }
                    Ok(RStep { consumed, event }) => {
                        assert!(consumed <= rest.len());
                        abs += consumed;
                        rest = &rest[consumed..];
                        match event {
                            None => {
                                assert!(rest.is_empty(), "no event but input left");
                                break;
                            }
                            Some(ev) => out.push((abs, Ev::Ok(ev))),
                        }
                    }
                }
            }
        }
        if eof {
            out.push((AT_END, Ev::Eof(f.on_eof())));
        }
        out
    }

    fn agree(reqs: &[ExpectedResponse], input: &[u8], eof: bool) -> Vec<(usize, Ev)> {
        let whole = run(reqs, &[input], eof);
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(run(reqs, &[a, b], eof), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(reqs, &bytes, eof), whole, "byte by byte");
        whole
    }

    fn head(id: Option<u64>, status: u16, interim: bool) -> Ev {
        Ev::Ok(REvent::HeadComplete {
            id,
            status,
            interim,
        })
    }

    fn done(id: Option<u64>, keep_alive: bool) -> Ev {
        Ev::Ok(REvent::MessageComplete { id, keep_alive })
    }

    #[test]
    fn ok_with_content_length() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n";
        let input = [&h[..], b"{}"].concat();
        assert_eq!(
            agree(&[get(7)], &input, false),
            vec![
                (h.len(), head(Some(7), 200, false)),
                (input.len(), done(Some(7), true))
            ]
        );
    }

    #[test]
    fn chunked_response() {
        let h = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = b"4\r\nwiki\r\n5;x=y\r\npedia\r\n0\r\nX-T: v\r\n\r\n";
        let input = [&h[..], body].concat();
        assert_eq!(
            agree(&[get(1)], &input, false),
            vec![
                (h.len(), head(Some(1), 200, false)),
                (input.len(), done(Some(1), true))
            ]
        );
    }

    #[test]
    fn head_response_has_no_body() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        let next = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        let input = [&h[..], next].concat();
        let reqs = [
            ExpectedResponse {
                id: 1,
                method_head: true,
                method_connect: false,
            },
            get(2),
        ];
        assert_eq!(
            agree(&reqs, &input, false),
            vec![
                (h.len(), head(Some(1), 200, false)),
                (h.len(), done(Some(1), true)),
                (input.len(), head(Some(2), 404, false)),
                (input.len(), done(Some(2), true)),
            ]
        );
    }

    #[test]
    fn no_content_and_not_modified_have_no_body() {
        for status in [204u16, 304] {
            let h = format!("HTTP/1.1 {status} X\r\nContent-Length: 10\r\n\r\n");
            let input = [
                h.as_bytes(),
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            ]
            .concat();
            let evs = agree(&[get(1), get(2)], &input, false);
            assert_eq!(evs[0], (h.len(), head(Some(1), status, false)));
            assert_eq!(evs[1], (h.len(), done(Some(1), true)));
            assert_eq!(evs[3], (input.len(), done(Some(2), true)));
        }
    }

    #[test]
    fn continue_then_ok() {
        let c = b"HTTP/1.1 100 Continue\r\n\r\n";
        let ok = b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc";
        let input = [&c[..], ok].concat();
        assert_eq!(
            agree(&[get(5)], &input, false),
            vec![
                (c.len(), head(Some(5), 100, true)),
                (input.len() - 3, head(Some(5), 201, false)),
                (input.len(), done(Some(5), true)),
            ]
        );
        // Interim responses do not complete the exchange.
        let mut f = ResponseFramer::new(FramerLimits::default());
        f.expect(get(5));
        assert!(f.advance(c).unwrap().event.is_some());
        assert_eq!(f.advance(&[]).unwrap().event, None);
        assert_eq!(f.outstanding(), 1);
        assert!(!f.is_idle());
    }

    #[test]
    fn switching_protocols_upgrades() {
        let h = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        let input = [&h[..], b"\x81\x02hi"].concat();
        let evs = agree(&[get(3)], &input, false);
        assert_eq!(
            evs,
            vec![
                (h.len(), head(Some(3), 101, false)),
                (h.len(), Ev::Ok(REvent::Upgraded { id: Some(3) })),
            ]
        );
        let mut f = ResponseFramer::new(FramerLimits::default());
        f.expect(get(3));
        f.advance(&input).unwrap();
        f.advance(&input[h.len()..]).unwrap();
        assert!(f.is_opaque() && f.outstanding() == 0 && !f.is_idle());
        // CONNECT: 2xx tunnels, other statuses are framed normally.
        let connect = ExpectedResponse {
            id: 9,
            method_head: false,
            method_connect: true,
        };
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01";
        assert_eq!(
            agree(&[connect], ok, false)[1],
            (ok.len() - 3, Ev::Ok(REvent::Upgraded { id: Some(9) }))
        );
        let denied = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(
            agree(&[connect], denied, false)[1],
            (denied.len(), done(Some(9), true))
        );
    }

    #[test]
    fn close_delimited_until_eof() {
        let h = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
        let input = [
            &h[..],
            b"everything until the end\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        ]
        .concat();
        assert_eq!(
            agree(&[get(1)], &input, true),
            vec![
                (h.len(), head(Some(1), 200, false)),
                (
                    AT_END,
                    Ev::Eof(Some(REvent::MessageComplete {
                        id: Some(1),
                        keep_alive: false
                    }))
                ),
            ]
        );
        // A non-chunked Transfer-Encoding is close-delimited too.
        let te = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz";
        assert_eq!(
            agree(&[get(1)], te, true)[1],
            (
                AT_END,
                Ev::Eof(Some(REvent::MessageComplete {
                    id: Some(1),
                    keep_alive: false
                }))
            )
        );
        // EOF in the middle of a Content-Length body completes nothing.
        let cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(agree(&[get(1)], cut, true)[1], (AT_END, Ev::Eof(None)));
    }

    #[test]
    fn keep_alive_rules() {
        let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(agree(&[get(1)], close, false)[1].1, done(Some(1), false));
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(agree(&[get(1)], old, false)[1].1, done(Some(1), false));
        let old_ka = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(agree(&[get(1)], old_ka, false)[1].1, done(Some(1), true));
    }

    #[test]
    fn pipelined_responses_match_ids_in_order() {
        let a = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
        let b = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nb\r\n0\r\n\r\n";
        let c = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n";
        let input = [&a[..], b, c].concat();
        let evs = agree(&[get(10), get(11), get(12)], &input, false);
        let ids: Vec<(usize, Ev)> = evs
            .into_iter()
            .filter(|(_, e)| matches!(e, Ev::Ok(REvent::MessageComplete { .. })))
            .collect();
        assert_eq!(
            ids,
            vec![
                (a.len(), done(Some(10), true)),
                (a.len() + b.len(), done(Some(11), true)),
                (input.len(), done(Some(12), true)),
            ]
        );
        let mut f = ResponseFramer::new(FramerLimits::default());
        for id in 10..13 {
            f.expect(get(id));
        }
        let mut rest = &input[..];
        while let Some(ev) = {
            let st = f.advance(rest).unwrap();
            rest = &rest[st.consumed..];
            st.event
        } {
            let _ = ev;
        }
        assert!(f.is_idle() && f.outstanding() == 0);
    }

    #[test]
    fn unexpected_response_has_no_id() {
        let r = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            agree(&[], r, false),
            vec![
                (r.len(), head(None, 408, false)),
                (r.len(), done(None, false))
            ]
        );
        // It does not consume a request expected later.
        let mut f = ResponseFramer::new(FramerLimits::default());
        f.advance(r).unwrap();
        f.expect(get(1));
        assert_eq!(
            f.advance(&[]).unwrap().event,
            Some(REvent::MessageComplete {
                id: None,
                keep_alive: false
            })
        );
        assert_eq!(f.outstanding(), 1);
    }

    #[test]
    fn malformed_responses() {
        for r in [
            &b"HTTP/1.1 2x0 OK\r\n\r\n"[..],
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n",
        ] {
            let evs = agree(&[get(1)], r, false);
            assert!(
                matches!(
                    evs.last(),
                    Some((AT_END, Ev::Err(FrameError::Malformed(_))))
                ),
                "{r:?}: {evs:?}"
            );
        }
    }

    #[test]
    fn lenient_response_heads() {
        // Bare LF, obs-fold, no reason phrase, leading empty line.
        let r = b"\r\nHTTP/1.1 200\nX-Long: a\n  b\nContent-Length: 1\n\nz";
        assert_eq!(
            agree(&[get(1)], r, false),
            vec![
                (r.len() - 1, head(Some(1), 200, false)),
                (r.len(), done(Some(1), true))
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum GenResp {
        Length(u16, Vec<u8>),
        Chunked(Vec<usize>),
        NoBody(u16),
        ContinueThenLength(Vec<u8>),
    }

    fn gen_resp() -> impl Strategy<Value = (GenResp, bool)> {
        let resp = prop_oneof![
            (
                prop::sample::select(vec![200u16, 201, 404, 500]),
                prop::collection::vec(any::<u8>(), 0..50)
            )
                .prop_map(|(s, b)| GenResp::Length(s, b)),
            prop::collection::vec(1usize..30, 0..4).prop_map(GenResp::Chunked),
            prop::sample::select(vec![204u16, 304]).prop_map(GenResp::NoBody),
            prop::collection::vec(any::<u8>(), 0..20).prop_map(GenResp::ContinueThenLength),
        ];
        (resp, any::<bool>())
    }

    /// Renders a response; returns the offset where its final response ends.
    fn render(r: &GenResp, crlf: bool, out: &mut Vec<u8>) -> usize {
        let nl = if crlf { "\r\n" } else { "\n" };
        let mut text = |s: String| out.extend_from_slice(s.as_bytes());
        match r {
            GenResp::Length(status, body) => {
                text(format!(
                    "HTTP/1.1 {status} X{nl}Content-Length: {}{nl}{nl}",
                    body.len()
                ));
                out.extend_from_slice(body);
            }
            GenResp::Chunked(sizes) => {
                text(format!(
                    "HTTP/1.1 200 OK{nl}Transfer-Encoding: chunked{nl}{nl}"
                ));
                for &n in sizes {
                    text(format!(
                        "{n:x}{nl}{}{nl}",
                        "\r\n0".repeat(n).get(..n).unwrap_or("")
                    ));
                }
                text(format!("0{nl}{nl}"));
            }
            GenResp::NoBody(status) => {
                text(format!("HTTP/1.1 {status} X{nl}Content-Length: 99{nl}{nl}"));
            }
            GenResp::ContinueThenLength(body) => {
                text(format!("HTTP/1.1 100 Continue{nl}{nl}"));
                text(format!(
                    "HTTP/1.1 200 OK{nl}Content-Length: {}{nl}{nl}",
                    body.len()
                ));
                out.extend_from_slice(body);
            }
        }
        out.len()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_valid_responses_complete_exactly(
            resps in prop::collection::vec(gen_resp(), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut input = Vec::new();
            let mut want = Vec::new();
            let mut reqs = Vec::new();
            for (i, (r, crlf)) in resps.iter().enumerate() {
                let end = render(r, *crlf, &mut input);
                want.push((end, done(Some(i as u64), true)));
                reqs.push(get(i as u64));
            }
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                chunks.push(&input[prev..p]);
                prev = p;
            }
            chunks.push(&input[prev..]);
            let got: Vec<(usize, Ev)> = run(&reqs, &chunks, false)
                .into_iter()
                .filter(|(_, e)| !matches!(e, Ev::Ok(REvent::HeadComplete { .. })))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn random_bytes_never_panic(
            input in prop::collection::vec(any::<u8>(), 0..600),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
            head_req: bool,
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(input.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut prev = 0;
            for p in points {
                chunks.push(&input[prev..p]);
                prev = p;
            }
            chunks.push(&input[prev..]);
            let req = ExpectedResponse { id: 1, method_head: head_req, method_connect: false };
            let _ = run(&[req], &chunks, true);
        }

        #[test]
        fn http_like_noise_never_panics(
            parts in prop::collection::vec(prop::sample::select(vec![
                &b"HTTP/1.1 200 OK"[..], b"HTTP/1.0 100 Continue", b"HTTP/1.1 101 S",
                b"\r\n", b"\n", b"\r", b" ", b"Content-Length: 3",
                b"Transfer-Encoding: chunked", b"0", b"5", b";x", b"abc", b":", b"\xff",
            ]), 0..40),
            split: prop::sample::Index,
        ) {
            let input = parts.concat();
            let (a, b) = input.split_at(split.index(input.len() + 1));
            let _ = run(&[get(1), get(2)], &[a, b], true);
        }
    }
}
