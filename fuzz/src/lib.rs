//! The fuzzed invariants of capture-proxy's sans-IO core, shared by the cargo-fuzz targets
//! (`fuzz_targets/*.rs`, one line each) and the proptest suite (`tests/integration/props.rs` includes this
//! file with `#[path]`), so both check exactly the same properties.
//!
//! Owns: the input decoders that turn fuzzer bytes into test cases ([`ByteSource`] and the
//! `*_case` functions), the reference runs and the checks, one `fuzz_*` entry point per target:
//!
//! - [`fuzz_request_framer`]: arbitrary bytes split at fuzzer-chosen points never panic the
//!   [`RequestFramer`], and give the same events at the same offsets as one whole-input call.
//! - [`fuzz_head_rewriter`]: the `--setHeader` rewrite never panics; its output is the request
//!   line, the injected lines, the other header lines without the named ones, the empty line
//!   and the untouched bytes after the head; a head the framer accepts stays one it accepts.
//! - [`fuzz_capture_builder`]: any sequence of builder calls with a small `max_record_bytes`
//!   yields records that decode (prost) back to exactly the calls made: reads and writes
//!   byte for byte, one end-of-message per `end_of_message`, numbered 1..=N with one final
//!   record, each within the limit, header fields 6/7 as the spec says.
//! - [`fuzz_pipeline`]: valid request streams split at any points, framed and captured the
//!   way `conn.rs` does it, decode back to the stream with one end-of-message per request,
//!   each right after the request's last byte.
//!
//! May depend on: `capture_proxy`'s public API and `prost`; nothing fuzz-specific, so the
//! normal test suite can compile it. Invariant: a check fails only by panicking, with a
//! message that says which property broke; decoding fuzzer bytes never panics.

use capture_proxy::capture::builder::{
    min_record_bytes, CaptureSettings, FinishedRecord, RecordOut, StreamBuilder,
    EMPTY_EXCEPTION_MESSAGE,
};
use capture_proxy::capture::encode::Timestamp;
use capture_proxy::capture::proto::{self, traffic_observation::Capture, traffic_stream::Index};
use capture_proxy::config::SetHeader;
use capture_proxy::http1::{
    line_lengths, BodyKind, Event, FrameError, FramerLimits, HeadRewriter, Method, RequestFramer,
};
use prost::Message;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Fuzzer bytes → structured values

/// Reads structured values off the fuzzer's bytes; past the end every read yields zeros, so
/// any input decodes to some case.
#[derive(Debug, Clone)]
pub struct ByteSource<'a> {
    data: &'a [u8],
}

impl<'a> ByteSource<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        ByteSource { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A number in `0..n` (`0` when `n == 0`), reading as few bytes as `n` needs.
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let raw = if n <= 1 << 8 {
            usize::from(self.u8())
        } else if n <= 1 << 16 {
            usize::from(self.u16())
        } else {
            self.u32() as usize
        };
        raw % n
    }

    /// One of `items` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        let i = self.below(items.len());
        items[i]
    }

    /// A length-prefixed byte string of at most `max` bytes (shorter when the input ends).
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max.saturating_add(1)).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Sorted cut points inside `0..=len` from arbitrary numbers.
pub fn cut_points(len: usize, raw: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.iter().map(|&c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// `input` split at the (sorted) cut points; empty pieces included.
pub fn split_at_cuts<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut prev = 0;
    for &c in cuts {
        let c = c.clamp(prev, input.len());
        pieces.push(&input[prev..c]);
        prev = c;
    }
    pieces.push(&input[prev..]);
    pieces
}

/// Framer limits from four fuzzer numbers: mostly the defaults, sometimes small enough that the
/// limit errors are reached.
pub fn limits_from(mode: u8, head: u16, chunk_line: u16, trailer: u16) -> FramerLimits {
    match mode % 4 {
        0 | 1 => FramerLimits::default(),
        2 => FramerLimits {
            max_head_bytes: 1 + usize::from(head % 512),
            max_chunk_line_bytes: 1 + usize::from(chunk_line % 64),
            max_trailer_bytes: 1 + usize::from(trailer % 256),
            ..FramerLimits::default()
        },
        _ => FramerLimits {
            max_head_bytes: 1 + usize::from(head % 40),
            max_chunk_line_bytes: 1 + usize::from(chunk_line % 8),
            max_trailer_bytes: 1 + usize::from(trailer % 16),
            ..FramerLimits::default()
        },
    }
}

/// Strips leading and trailing SP / HTAB (the framer's header value trimming).
pub fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// request_framer

/// One framer event, owned, with the absolute stream offset at which it was reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameEv {
    Head {
        at: usize,
        method: Vec<u8>,
        target: Vec<u8>,
        version_minor: u8,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        first_line_len: u32,
        headers_len: u32,
        head_len: u32,
        body: BodyKind,
        expect_continue: bool,
        connection_close: bool,
        upgrade: bool,
    },
    Msg {
        at: usize,
        first_line_len: u32,
        headers_len: u32,
    },
    H2 {
        at: usize,
    },
}

/// What one framing run of a stream saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRun {
    pub events: Vec<FrameEv>,
    pub error: Option<FrameError>,
    /// `in_message()` at the end (or at the error).
    pub in_message: bool,
}

/// Frames `input` fed in the pieces the cut points make, the way a connection does (call
/// `advance` until it reports no event), checking each step's own contract on the way.
pub fn frame_run(limits: FramerLimits, input: &[u8], cuts: &[usize]) -> FrameRun {
    let mut framer = RequestFramer::new(limits);
    let mut events = Vec::new();
    let mut base = 0usize;
    for piece in split_at_cuts(input, cuts) {
        let mut pos = 0usize;
        loop {
            let rest = &piece[pos..];
            let step = match framer.advance(rest) {
                Ok(step) => step,
                Err(e) => {
                    let in_message = framer.in_message();
                    assert_eq!(
                        framer.advance(b"GET / HTTP/1.1\r\n\r\n").err(),
                        Some(e),
                        "a failed framer must keep returning its error"
                    );
                    return FrameRun {
                        events,
                        error: Some(e),
                        in_message,
                    };
                }
            };
            assert!(step.consumed <= rest.len(), "consumed more than given");
            pos += step.consumed;
            let at = base + pos;
            let Some(event) = step.event else {
                assert_eq!(pos, piece.len(), "a call without event must consume all");
                break;
            };
            events.push(match event {
                Event::HeadComplete(h) => {
                    let head_len = h.head_len as usize;
                    assert_eq!(h.raw.len(), head_len, "raw head length");
                    assert!(head_len <= at, "head starts before the stream");
                    assert_eq!(
                        h.raw,
                        &input[at - head_len..at],
                        "raw head differs from the stream bytes before the event"
                    );
                    // `RequestFramer::new` raises the limit to the 24-byte HTTP/2 preface.
                    let limit = limits
                        .max_head_bytes
                        .max(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".len());
                    assert!(head_len <= limit, "head over the limit");
                    assert_eq!(
                        line_lengths(h.raw),
                        (h.first_line_len, h.headers_len),
                        "line lengths of the raw head"
                    );
                    assert_eq!(Method::from_bytes(h.method_bytes), h.method);
                    FrameEv::Head {
                        at,
                        method: h.method_bytes.to_vec(),
                        target: h.target.to_vec(),
                        version_minor: h.version_minor,
                        headers: h
                            .headers
                            .iter()
                            .map(|(n, v)| (n.to_vec(), v.to_vec()))
                            .collect(),
                        first_line_len: h.first_line_len,
                        headers_len: h.headers_len,
                        head_len: h.head_len,
                        body: h.body,
                        expect_continue: h.expect_continue,
                        connection_close: h.connection_close,
                        upgrade: h.upgrade,
                    }
                }
                Event::MessageComplete {
                    first_line_len,
                    headers_len,
                } => FrameEv::Msg {
                    at,
                    first_line_len,
                    headers_len,
                },
                Event::Http2Preface => FrameEv::H2 { at },
            });
        }
        base += piece.len();
    }
    check_event_order(&events);
    FrameRun {
        in_message: framer.in_message(),
        events,
        error: None,
    }
}

/// Heads and message ends alternate, offsets never go back, a message end repeats its head's
/// line lengths, and nothing follows the HTTP/2 preface.
fn check_event_order(events: &[FrameEv]) {
    let mut last_at = 0usize;
    let mut open: Option<(u32, u32)> = None;
    for (i, ev) in events.iter().enumerate() {
        let at = match ev {
            FrameEv::Head {
                at,
                first_line_len,
                headers_len,
                ..
            } => {
                assert!(open.is_none(), "event {i}: head while a message is open");
                open = Some((*first_line_len, *headers_len));
                *at
            }
            FrameEv::Msg {
                at,
                first_line_len,
                headers_len,
            } => {
                assert_eq!(
                    open.take(),
                    Some((*first_line_len, *headers_len)),
                    "event {i}: message end without its head, or other line lengths"
                );
                *at
            }
            FrameEv::H2 { at } => {
                assert!(open.is_none(), "event {i}: HTTP/2 preface inside a message");
                assert_eq!(i + 1, events.len(), "events after the HTTP/2 preface");
                *at
            }
        };
        assert!(at >= last_at, "event {i}: offset went back");
        last_at = at;
    }
}

/// The split-independence invariant: framing `input` in the given pieces reports the same
/// events at the same offsets as framing it in one call. Errors: when both runs fail they fail
/// alike; one run may only have failed where the other still waits inside a message for more
/// bytes (an early check of a split head has not run yet, or ran earlier).
pub fn check_framer_splits(limits: FramerLimits, input: &[u8], cuts: &[usize]) {
    let whole = frame_run(limits, input, &[]);
    let split = frame_run(limits, input, cuts);
    assert_eq!(
        split.events, whole.events,
        "events differ between one call and pieces cut at {cuts:?}"
    );
    match (whole.error, split.error) {
        (Some(a), Some(b)) => assert_eq!(b, a, "errors differ (pieces cut at {cuts:?})"),
        (Some(e), None) => assert!(
            split.in_message,
            "one call fails ({e:?}) but the pieces (cut at {cuts:?}) are done without error"
        ),
        (None, Some(e)) => assert!(
            whole.in_message,
            "the pieces (cut at {cuts:?}) fail ({e:?}) but one call is done without error"
        ),
        (None, None) => assert_eq!(split.in_message, whole.in_message),
    }
}

/// Fuzz input: limits, up to 16 cut points, then the stream.
pub fn fuzz_request_framer(data: &[u8]) {
    let mut src = ByteSource::new(data);
    let limits = limits_from(src.u8(), src.u16(), src.u16(), src.u16());
    let n = src.below(17);
    let raw: Vec<usize> = (0..n).map(|_| usize::from(src.u16())).collect();
    let input = src.rest();
    check_framer_splits(limits, input, &cut_points(input.len(), &raw));
}

// ---------------------------------------------------------------------------------------------
// head_rewriter

/// RFC 9110 `tchar`.
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `HeadRewriter::new` must accept the entries (the documented validation).
pub fn set_is_valid(set: &[SetHeader]) -> bool {
    set.iter().all(|h| {
        !h.name.is_empty()
            && h.name.bytes().all(is_tchar)
            && !h.name.eq_ignore_ascii_case("content-length")
            && !h.name.eq_ignore_ascii_case("transfer-encoding")
            && is_valid_field_value(h.value.as_bytes())
    })
}

/// The entries that take effect: for a name listed more than once the last one, in the order
/// of their last occurrence.
pub fn effective_set(set: &[SetHeader]) -> Vec<&SetHeader> {
    let mut kept: Vec<&SetHeader> = Vec::new();
    for h in set {
        kept.retain(|k| !k.name.eq_ignore_ascii_case(&h.name));
        kept.push(h);
    }
    kept
}

/// The lines (each with its LF) of `bytes` up to and including the first empty line after the
/// first line, and the bytes after it; `None` when there is no such empty line.
fn head_lines(head: &[u8]) -> Option<(Vec<&[u8]>, &[u8])> {
    let mut lines = Vec::new();
    let mut rest = head;
    loop {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let (line, tail) = rest.split_at(end + 1);
        rest = tail;
        let empty = matches!(line, b"\n" | b"\r\n");
        lines.push(line);
        if empty && lines.len() > 1 {
            return Some((lines, rest));
        }
    }
}

/// The documented rewrite of `head`, computed independently: the request line, the injected
/// lines in its line-ending style, every other header line not named in the set (continuation
/// lines follow their header line), the empty line, then the rest unchanged. `None` = not a
/// complete head.
pub fn model_rewrite(set: &[SetHeader], head: &[u8]) -> Option<Vec<u8>> {
    let (lines, tail) = head_lines(head)?;
    let set = effective_set(set);
    let (request_line, lines) = lines.split_first()?;
    let crlf = request_line.ends_with(b"\r\n");
    let mut out = request_line.to_vec();
    for h in &set {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.as_bytes());
        out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
    }
    let mut dropping = false;
    for line in lines {
        let empty = matches!(*line, b"\n" | b"\r\n");
        if !empty && !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            dropping = set
                .iter()
                .any(|h| h.name.as_bytes().eq_ignore_ascii_case(name));
        }
        if empty || !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(tail);
    Some(out)
}

/// The head at the start of `bytes` as the framer (default limits, one call) sees it: its end
/// offset and headers, or `None` when the framer does not report a head there (error, partial,
/// leading empty lines skipped, or the HTTP/2 preface).
pub fn framed_head(bytes: &[u8]) -> Option<FramedHead> {
    let mut f = RequestFramer::new(FramerLimits::default());
    let step = f.advance(bytes).ok()?;
    match step.event {
        Some(Event::HeadComplete(h)) if h.head_len as usize == step.consumed => Some(FramedHead {
            end: step.consumed,
            headers: h
                .headers
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            body: h.body,
        }),
        _ => None,
    }
}

/// A head as [`framed_head`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedHead {
    /// Offset just past the empty line.
    pub end: usize,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// How the request's body is framed.
    pub body: BodyKind,
}

/// Whether httparse (hence the framer, and every strict HTTP/1 parser) accepts `v` inside a
/// header value: HTAB, SP, VCHAR and obs-text, no other control byte.
pub fn is_valid_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The rewrite invariant for one set of entries and one head.
pub fn check_rewrite(set: &[SetHeader], head: &[u8]) {
    let valid = set_is_valid(set);
    let mut rw = match HeadRewriter::new(set) {
        Ok(rw) => {
            assert!(valid, "accepted invalid --setHeader entries {set:?}");
            rw
        }
        Err(e) => {
            assert!(!valid, "rejected valid --setHeader entries {set:?}: {e}");
            return;
        }
    };
    assert_eq!(rw.is_noop(), set.is_empty());
    let want = model_rewrite(set, head);
    let got = rw.rewrite(head).map(<[u8]>::to_vec);
    match (&got, &want) {
        (Ok(g), Some(w)) => assert!(
            g == w,
            "rewrite differs from the model:\n got  {:?}\n want {:?}",
            String::from_utf8_lossy(g),
            String::from_utf8_lossy(w)
        ),
        (Err(_), None) => return,
        _ => panic!("rewrite {got:?} but the model says {want:?}"),
    }
    let Ok(out) = got else { return };
    // Rewriting again with the same rewriter gives the same bytes (the buffer is reused).
    assert_eq!(
        rw.rewrite(head).ok(),
        Some(&out[..]),
        "second rewrite differs"
    );

    // A head the framer accepts stays a head it accepts, framed the same way (body), with the
    // injected headers first and no other header of their names; the framer and the rewriter
    // agree where the head ends.
    let Some(FramedHead {
        end: head_end,
        headers,
        body,
    }) = framed_head(head)
    else {
        return;
    };
    let (lines, _) = head_lines(head).expect("the model found a head");
    let model_end: usize = lines.iter().map(|l| l.len()).sum();
    assert_eq!(
        head_end, model_end,
        "framer and rewriter disagree where the head ends"
    );
    let set = effective_set(set);
    let tail_len = head.len() - head_end;
    let out_head_end = out.len() - tail_len;
    let Some(rewritten) = framed_head(&out) else {
        panic!(
            "the framer rejects the rewritten head {:?} of the accepted head {:?}",
            String::from_utf8_lossy(&out[..out_head_end]),
            String::from_utf8_lossy(&head[..head_end])
        )
    };
    assert_eq!(rewritten.end, out_head_end, "rewritten head ends elsewhere");
    assert_eq!(rewritten.body, body, "the rewrite changed the body framing");
    let mut want_headers: Vec<(Vec<u8>, Vec<u8>)> = set
        .iter()
        .map(|h| {
            (
                h.name.as_bytes().to_vec(),
                trim_ows(h.value.as_bytes()).to_vec(),
            )
        })
        .collect();
    want_headers.extend(headers.into_iter().filter(|(n, _)| {
        !set.iter()
            .any(|h| h.name.as_bytes().eq_ignore_ascii_case(n))
    }));
    assert_eq!(
        rewritten.headers, want_headers,
        "headers of the rewritten head"
    );
}

/// Header names the rewriter fuzzing uses, so that set names and head names collide often.
pub const HEADER_NAME_POOL: &[&str] = &[
    "Host",
    "host",
    "HOST",
    "X-A",
    "x-a",
    "X-A-B",
    "Authorization",
    "authorization",
    "Content-Length",
    "Transfer-Encoding",
    "Accept",
    "X",
];

/// A `--setHeader` entry from the fuzzer: mostly pool names, sometimes raw bytes (the
/// validation), values raw (lossy UTF-8).
fn set_header_from(src: &mut ByteSource<'_>) -> SetHeader {
    let sel = src.u8();
    let name = match HEADER_NAME_POOL.get(usize::from(sel) % 16) {
        Some(n) if sel < 240 => (*n).to_string(),
        _ => String::from_utf8_lossy(src.bytes(8)).into_owned(),
    };
    let value = String::from_utf8_lossy(src.bytes(16)).into_owned();
    SetHeader { name, value }
}

/// A head from the fuzzer: raw bytes, or built from lines so that it is often valid.
fn head_from(src: &mut ByteSource<'_>) -> Vec<u8> {
    if src.u8() % 4 == 0 {
        return src.rest().to_vec();
    }
    let endings: [&[u8]; 4] = [b"\r\n", b"\r\n", b"\n", b"\r\r\n"];
    let mut head = Vec::new();
    head.extend_from_slice(src.pick(&[&b"GET"[..], b"POST", b"PUT", b"X", b""]));
    head.push(b' ');
    head.extend_from_slice(src.pick(&[&b"/"[..], b"/a?b=c", b"*"]));
    head.extend_from_slice(src.pick(&[&b" HTTP/1.1"[..], b" HTTP/1.0", b""]));
    let ending = src.pick(&endings[..3]);
    head.extend_from_slice(ending);
    for _ in 0..src.below(9) {
        match src.u8() % 8 {
            0 => head.extend_from_slice(src.bytes(12)),
            1 => head.extend_from_slice(b" folded"),
            _ => {
                let sel = src.u8();
                match HEADER_NAME_POOL.get(usize::from(sel) % 16) {
                    Some(n) => head.extend_from_slice(n.as_bytes()),
                    None => head.extend_from_slice(src.bytes(6)),
                }
                head.extend_from_slice(src.pick(&[&b": "[..], b":", b":\t", b" :"]));
                let value = src.bytes(12);
                if src.bool() {
                    head.extend(value.iter().map(|&b| b'!' + b % 94));
                } else {
                    head.extend_from_slice(value);
                }
            }
        }
        head.extend_from_slice(if src.u8() < 224 {
            ending
        } else {
            src.pick(&endings)
        });
    }
    head.extend_from_slice(if src.u8() < 224 {
        ending
    } else {
        src.pick(&endings)
    });
    head.extend_from_slice(src.rest());
    head
}

/// Fuzz input: up to 4 `--setHeader` entries, then a head (raw or built).
pub fn fuzz_head_rewriter(data: &[u8]) {
    let mut src = ByteSource::new(data);
    let n = src.below(5);
    let set: Vec<SetHeader> = (0..n).map(|_| set_header_from(&mut src)).collect();
    let head = head_from(&mut src);
    check_rewrite(&set, &head);
}

// ---------------------------------------------------------------------------------------------
// capture_builder

/// One call on a [`StreamBuilder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuilderOp {
    Read(Vec<u8>),
    Write(Vec<u8>),
    EndOfMessage(u32, u32),
    RequestDropped,
    Exception(String),
    Flush,
    Close,
}

/// A builder test case: ids, the record limit above the smallest legal one, and the calls.
#[derive(Debug, Clone)]
pub struct BuilderCase {
    pub connection_id: String,
    pub node_id: String,
    /// `max_record_bytes = min_record_bytes(ids) + extra`.
    pub extra: usize,
    /// Buffers handed to the builder are recycled records (stale bytes, capacity kept).
    pub recycle: bool,
    pub ops: Vec<(Timestamp, BuilderOp)>,
}

/// A consumer-side observation, split reads/writes reassembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obs {
    Read(Timestamp, Vec<u8>),
    Write(Timestamp, Vec<u8>),
    Eom(Timestamp, i32, i32),
    Dropped(Timestamp),
    Exception(Timestamp, String),
    Close(Timestamp),
}

/// Collects records; optionally hands emitted records back as the next buffers.
#[derive(Debug, Default)]
pub struct Collect {
    pub records: Vec<FinishedRecord>,
    pub recycle: bool,
}

impl RecordOut for Collect {
    fn take_buffer(&mut self) -> Vec<u8> {
        match self.records.last() {
            Some(r) if self.recycle => r.value.clone(),
            _ => Vec::new(),
        }
    }

    fn emit(&mut self, rec: FinishedRecord) {
        self.records.push(rec);
    }
}

/// What the encoder writes for a timestamp (nanos clamped to 999 999 999).
pub fn wire_ts(t: Timestamp) -> Timestamp {
    Timestamp {
        secs: t.secs,
        nanos: t.nanos.min(999_999_999),
    }
}

fn decoded_ts(t: Option<proto::Timestamp>, where_: &str) -> Timestamp {
    let t = t.unwrap_or_else(|| panic!("{where_}: observation without timestamp"));
    assert!(
        (0..1_000_000_000).contains(&t.nanos),
        "{where_}: nanos out of range"
    );
    Timestamp {
        secs: t.seconds,
        nanos: t.nanos as u32,
    }
}

/// Decodes a connection's records and checks everything the spec says per record: numbering
/// 1..=N with only the last final, size within `max`, the ids, no empty record, close only as
/// the very last observation, fields 6/7 from the state when the record started, segments
/// contiguous, one direction and timestamp, ended by segmentEnd. Returns the observations.
pub fn decode_records(
    records: &[FinishedRecord],
    max: usize,
    connection_id: &str,
    node_id: &str,
) -> Vec<Obs> {
    assert!(!records.is_empty(), "no record at all");
    let mut obs = Vec::new();
    let mut eoms = 0i32;
    let mut reads_since_eom = false;
    let mut pending: Option<(bool, Timestamp, Vec<u8>)> = None;
    for (i, r) in records.iter().enumerate() {
        let n = i as u32 + 1;
        let last = i + 1 == records.len();
        let w = format!("record {n}");
        assert_eq!(r.number, n, "{w}: number");
        assert_eq!(r.is_final, last, "{w}: only the last record is final");
        assert!(
            r.value.len() <= max,
            "{w}: {} bytes > max {max}",
            r.value.len()
        );
        let s = proto::TrafficStream::decode(&r.value[..])
            .unwrap_or_else(|e| panic!("{w}: does not decode: {e}"));
        assert_eq!(s.connection_id, connection_id, "{w}: connection id");
        assert_eq!(s.node_id, node_id, "{w}: node id");
        let index = if last {
            Index::NumberOfThisLastChunk(n as i32)
        } else {
            Index::Number(n as i32)
        };
        assert_eq!(s.index, Some(index), "{w}: index");
        assert_eq!(
            s.prior_requests_received,
            (eoms > 0).then_some(eoms),
            "{w}: priorRequestsReceived"
        );
        assert_eq!(
            s.last_observation_was_unterminated_read,
            reads_since_eom.then_some(true),
            "{w}: lastObservationWasUnterminatedRead"
        );
        assert!(!s.sub_stream.is_empty(), "{w}: empty record");
        for (j, o) in s.sub_stream.into_iter().enumerate() {
            let w = format!("record {n} observation {j}");
            let t = decoded_ts(o.ts, &w);
            let c = o
                .capture
                .unwrap_or_else(|| panic!("{w}: observation without capture"));
            if let Some(Obs::Close(_)) = obs.last() {
                panic!("{w}: observation after close");
            }
            let (is_read, data) = match c {
                Capture::ReadSegment(d) => (true, d.data),
                Capture::WriteSegment(d) => (false, d.data),
                Capture::SegmentEnd(_) => {
                    let (r, pt, d) = pending
                        .take()
                        .unwrap_or_else(|| panic!("{w}: segmentEnd without segments"));
                    assert_eq!(pt, t, "{w}: segmentEnd timestamp");
                    obs.push(if r {
                        Obs::Read(pt, d)
                    } else {
                        Obs::Write(pt, d)
                    });
                    continue;
                }
                c => {
                    assert!(pending.is_none(), "{w}: segments not ended by segmentEnd");
                    obs.push(observation(c, t, last, &w, &mut eoms, &mut reads_since_eom));
                    continue;
                }
            };
            assert!(!data.is_empty(), "{w}: empty segment");
            reads_since_eom |= is_read;
            match &mut pending {
                None => pending = Some((is_read, t, data)),
                Some((r, pt, d)) => {
                    assert_eq!(*r, is_read, "{w}: segments of both directions mixed");
                    assert_eq!(*pt, t, "{w}: segment timestamp changed");
                    d.extend_from_slice(&data);
                }
            }
        }
    }
    assert!(pending.is_none(), "segments not ended at the end");
    assert!(
        matches!(obs.last(), Some(Obs::Close(_))),
        "the final record does not end with close"
    );
    obs
}

/// One observation that is not part of a segmented read/write, updating the connection state
/// that fields 6/7 of the next record reflect.
fn observation(
    c: Capture,
    t: Timestamp,
    last: bool,
    w: &str,
    eoms: &mut i32,
    reads_since_eom: &mut bool,
) -> Obs {
    match c {
        Capture::Read(d) => {
            assert!(!d.data.is_empty(), "{w}: empty read");
            *reads_since_eom = true;
            Obs::Read(t, d.data)
        }
        Capture::Write(d) => {
            assert!(!d.data.is_empty(), "{w}: empty write");
            Obs::Write(t, d.data)
        }
        Capture::EndOfMessageIndicator(e) => {
            *eoms = eoms.saturating_add(1);
            *reads_since_eom = false;
            Obs::Eom(
                t,
                e.first_line_byte_length
                    .unwrap_or_else(|| panic!("{w}: EOM without first line length")),
                e.headers_byte_length
                    .unwrap_or_else(|| panic!("{w}: EOM without headers length")),
            )
        }
        Capture::RequestDropped(_) => {
            *reads_since_eom = false;
            Obs::Dropped(t)
        }
        Capture::ConnectionException(e) => Obs::Exception(t, e.message),
        Capture::Close(_) => {
            assert!(last, "{w}: close in a record that is not final");
            Obs::Close(t)
        }
        other => panic!("{w}: unexpected observation {other:?}"),
    }
}

/// Runs the case's calls on a builder and checks the records: they decode (see
/// [`decode_records`]) to exactly the calls made, in order (empty reads/writes leave nothing,
/// exception messages may be cut to fit), the return values agree, and nothing happens after
/// `close` (one is added at the end when the case has none).
pub fn check_builder(case: &BuilderCase) {
    let max = min_record_bytes(case.connection_id.len(), case.node_id.len()) + case.extra;
    let settings = Arc::new(CaptureSettings {
        node_id: case.node_id.as_str().into(),
        max_record_bytes: max,
    });
    let mut b = StreamBuilder::new(case.connection_id.as_str().into(), settings);
    let mut out = Collect {
        records: Vec::new(),
        recycle: case.recycle,
    };
    let mut want = Vec::new();
    let mut eoms = 0u32;
    let mut closed = false;
    let mut last_ts = Timestamp::default();
    for (t, op) in &case.ops {
        let t = *t;
        last_ts = t;
        let before = out.records.len();
        match op {
            BuilderOp::Read(d) => {
                b.read(t, d, &mut out);
                if !d.is_empty() && !closed {
                    want.push(Obs::Read(wire_ts(t), d.clone()));
                }
            }
            BuilderOp::Write(d) => {
                b.write(t, d, &mut out);
                if !d.is_empty() && !closed {
                    want.push(Obs::Write(wire_ts(t), d.clone()));
                }
            }
            BuilderOp::EndOfMessage(first, headers) => {
                b.end_of_message(t, *first, *headers, &mut out);
                if !closed {
                    eoms += 1;
                    let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
                    want.push(Obs::Eom(wire_ts(t), clamp(*first), clamp(*headers)));
                }
            }
            BuilderOp::RequestDropped => {
                b.request_dropped(t, &mut out);
                if !closed {
                    want.push(Obs::Dropped(wire_ts(t)));
                }
            }
            BuilderOp::Exception(m) => {
                b.connection_exception(t, m, &mut out);
                if !closed {
                    want.push(Obs::Exception(wire_ts(t), m.clone()));
                }
            }
            BuilderOp::Flush => {
                let had = b.has_unflushed();
                let r = b.flush(&mut out);
                assert_eq!(r.is_some(), had && !closed, "flush result");
                if let Some(n) = r {
                    assert_eq!(n as usize, before + 1, "flush number");
                }
            }
            BuilderOp::Close => {
                let n = b.close(t, &mut out);
                if closed {
                    assert_eq!(n, 0, "second close");
                } else {
                    want.push(Obs::Close(wire_ts(t)));
                    assert_eq!(n as usize, out.records.len(), "close number");
                    closed = true;
                }
                assert!(b.is_finished());
            }
        }
        if closed && !matches!(op, BuilderOp::Close) {
            assert_eq!(out.records.len(), before, "a record after close");
        }
        assert_eq!(b.requests_completed(), eoms, "requests_completed");
        assert_eq!(
            b.records_emitted() as usize,
            out.records.len(),
            "records_emitted"
        );
        assert!(
            b.buffered_len() <= max,
            "buffered {} > max {max}",
            b.buffered_len()
        );
    }
    if !closed {
        b.close(last_ts, &mut out);
        want.push(Obs::Close(wire_ts(last_ts)));
    }
    let got = decode_records(&out.records, max, &case.connection_id, &case.node_id);
    assert_eq!(got.len(), want.len(), "observation count: got {got:?}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        match (g, w) {
            (Obs::Exception(gt, gm), Obs::Exception(wt, wm)) => {
                assert_eq!(gt, wt, "observation {i}: exception timestamp");
                let wm = if wm.is_empty() {
                    EMPTY_EXCEPTION_MESSAGE
                } else {
                    wm.as_str()
                };
                assert!(
                    !gm.is_empty() && wm.starts_with(gm.as_str()),
                    "observation {i}: exception message {gm:?} is not a non-empty prefix of {wm:?}"
                );
            }
            _ => assert_eq!(g, w, "observation {i}"),
        }
    }
    let concat = |read: bool, obs: &[Obs]| -> Vec<u8> {
        obs.iter()
            .flat_map(|o| match o {
                Obs::Read(_, d) if read => d.as_slice(),
                Obs::Write(_, d) if !read => d.as_slice(),
                _ => &[],
            })
            .copied()
            .collect()
    };
    assert_eq!(
        concat(true, &got),
        concat(true, &want),
        "concatenated reads"
    );
    assert_eq!(
        concat(false, &got),
        concat(false, &want),
        "concatenated writes"
    );
}

/// A timestamp from the fuzzer: realistic, extreme or out of range (nanos ≥ 10⁹ are clamped).
fn timestamp_from(src: &mut ByteSource<'_>) -> Timestamp {
    let secs = match src.u8() % 8 {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => -1,
        3 => 0,
        4 => src.u64() as i64,
        _ => 1_700_000_000 + i64::from(src.u16()),
    };
    let nanos = match src.u8() % 6 {
        0 => 0,
        1 => 999_999_999,
        2 => u32::MAX,
        3 => src.u32(),
        _ => src.u32() % 1_000_000_000,
    };
    Timestamp { secs, nanos }
}

/// `len` bytes that differ with `seed` and position, so misplaced bytes are noticed.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8).wrapping_mul(7))
        .collect()
}

/// A data length from the fuzzer: mostly small, sometimes several records' worth.
fn data_len_from(src: &mut ByteSource<'_>) -> usize {
    match src.u8() % 8 {
        0 => 0,
        1..=4 => src.below(64),
        5 | 6 => src.below(1024),
        _ => src.below(8192),
    }
}

/// Fuzz input: ids, limit, recycling, then up to 64 calls (the timestamp is reused until the
/// fuzzer asks for a new one).
pub fn builder_case_from(data: &[u8]) -> BuilderCase {
    let mut src = ByteSource::new(data);
    let cid_len = src.below(129);
    let connection_id: String = (0..cid_len)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let node_len = src.below(33);
    let node_id: String = (0..node_len)
        .map(|i| (b'A' + (i % 26) as u8) as char)
        .collect();
    let extra = match src.u8() % 4 {
        0 => src.below(16),
        1 | 2 => src.below(512),
        _ => src.below(4096),
    };
    let recycle = src.bool();
    let mut ts = timestamp_from(&mut src);
    let mut ops = Vec::new();
    while !src.is_empty() && ops.len() < 64 {
        let sel = src.u8();
        if sel & 0x80 != 0 {
            ts = timestamp_from(&mut src);
        }
        let op = match sel % 16 {
            0..=4 => BuilderOp::Read(pattern(data_len_from(&mut src), ops.len() as u8)),
            5..=7 => BuilderOp::Write(pattern(data_len_from(&mut src), ops.len() as u8)),
            8 | 9 => {
                let mut len = || match src.u8() % 4 {
                    0 => src.u32(),
                    _ => u32::from(src.u16()),
                };
                BuilderOp::EndOfMessage(len(), len())
            }
            10 => BuilderOp::RequestDropped,
            11 => BuilderOp::Exception(String::from_utf8_lossy(src.bytes(600)).into_owned()),
            12..=14 => BuilderOp::Flush,
            _ => BuilderOp::Close,
        };
        ops.push((ts, op));
    }
    BuilderCase {
        connection_id,
        node_id,
        extra,
        recycle,
        ops,
    }
}

pub fn fuzz_capture_builder(data: &[u8]) {
    check_builder(&builder_case_from(data));
}

// ---------------------------------------------------------------------------------------------
// pipeline

/// How a generated request's body is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GenBody {
    None,
    /// `Content-Length` and these bytes (also `Content-Length: 0`).
    Length(Vec<u8>),
    /// `Transfer-Encoding: chunked`: chunk sizes (data is generated), extensions on the size
    /// lines, trailer fields.
    Chunked {
        sizes: Vec<usize>,
        ext: bool,
        trailers: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// A valid HTTP/1.x request, rendered by [`GenRequest::render`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest {
    pub method: Vec<u8>,
    pub target: Vec<u8>,
    pub version_minor: u8,
    /// CRLF line endings (else bare LF).
    pub crlf: bool,
    /// Empty lines before the request line.
    pub leading: usize,
    /// Never `Content-Length` / `Transfer-Encoding` (the body adds those).
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub body: GenBody,
}

/// Where a rendered request ends and what its end-of-message marker must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendered {
    pub end: usize,
    pub first_line_len: u32,
    pub headers_len: u32,
}

impl GenRequest {
    /// Appends the request to `out`.
    pub fn render(&self, out: &mut Vec<u8>) -> Rendered {
        let nl: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        for _ in 0..self.leading {
            out.extend_from_slice(nl);
        }
        let line_start = out.len();
        out.extend_from_slice(&self.method);
        out.push(b' ');
        out.extend_from_slice(&self.target);
        out.extend_from_slice(if self.version_minor == 0 {
            b" HTTP/1.0"
        } else {
            b" HTTP/1.1"
        });
        let first_line_len = (out.len() - line_start) as u32;
        out.extend_from_slice(nl);
        let mut headers_len = 0u32;
        let mut line = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
            let start = out.len();
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            headers_len += (out.len() - start) as u32;
            out.extend_from_slice(nl);
        };
        for (n, v) in &self.headers {
            line(out, n, v);
        }
        match &self.body {
            GenBody::None => {}
            GenBody::Length(b) => line(out, b"Content-Length", b.len().to_string().as_bytes()),
            GenBody::Chunked { .. } => line(out, b"Transfer-Encoding", b"chunked"),
        }
        out.extend_from_slice(nl);
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
                    // Data that looks like framing on purpose.
                    out.extend((0..n).map(|j| b"\r\n0GET \n"[(i + j) % 8]));
                    out.extend_from_slice(nl);
                }
                out.extend_from_slice(b"0");
                if *ext {
                    out.extend_from_slice(b";last");
                }
                out.extend_from_slice(nl);
                for (n, v) in trailers {
                    out.extend_from_slice(n);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(v);
                    out.extend_from_slice(nl);
                }
                out.extend_from_slice(nl);
            }
        }
        Rendered {
            end: out.len(),
            first_line_len,
            headers_len,
        }
    }
}

/// What happens between two reads: a response write or a flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Between {
    Write(Vec<u8>),
    Flush,
}

/// A pipeline test case.
#[derive(Debug, Clone)]
pub struct PipelineCase {
    pub requests: Vec<GenRequest>,
    /// `max_record_bytes = min_record_bytes(ids) + extra`.
    pub extra: usize,
    /// Read sizes: a fixed buffer size when `Some`, else the cut points.
    pub buffer: Option<usize>,
    pub cuts: Vec<usize>,
    /// After which read (index, clamped) something else happens.
    pub between: Vec<(usize, Between)>,
}

/// Connection and node ids of the pipeline runs.
pub const PIPELINE_CONN: &str = "pipeline-conn";
pub const PIPELINE_NODE: &str = "node-1";

/// Frames the case's stream read by read and captures it the way `conn.rs` does (each read cut
/// at `MessageComplete`, the part before it captured, then its end-of-message marker, the rest
/// of the read captured after the loop), then checks: the decoded reads are the stream, one
/// end-of-message per request with its line lengths, each right after the request's last
/// byte, the writes come back too, and the framer ends idle.
pub fn check_pipeline(case: &PipelineCase) {
    let mut stream = Vec::new();
    let rendered: Vec<Rendered> = case
        .requests
        .iter()
        .map(|r| r.render(&mut stream))
        .collect();
    let reads: Vec<&[u8]> = match case.buffer {
        Some(size) => stream.chunks(size.max(1)).collect(),
        None => split_at_cuts(&stream, &cut_points(stream.len(), &case.cuts)),
    };
    let max = min_record_bytes(PIPELINE_CONN.len(), PIPELINE_NODE.len()) + case.extra;
    let settings = Arc::new(CaptureSettings {
        node_id: PIPELINE_NODE.into(),
        max_record_bytes: max,
    });
    let mut b = StreamBuilder::new(PIPELINE_CONN.into(), settings);
    let mut out = Collect::default();
    let mut framer = RequestFramer::new(FramerLimits::default());
    let mut writes = Vec::new();
    let mut heads = 0usize;
    for (i, read) in reads.iter().enumerate() {
        let ts = Timestamp {
            secs: 1_700_000_000 + i as i64,
            nanos: 0,
        };
        let mut pos = 0usize;
        let mut seg = 0usize;
        loop {
            let step = framer
                .advance(&read[pos..])
                .unwrap_or_else(|e| panic!("read {i}: valid stream rejected: {e}"));
            pos += step.consumed;
            match step.event {
                None => break,
                Some(Event::HeadComplete(_)) => heads += 1,
                Some(Event::MessageComplete {
                    first_line_len,
                    headers_len,
                }) => {
                    let part = &read[seg..pos];
                    if !part.is_empty() {
                        b.read(ts, part, &mut out);
                    }
                    b.end_of_message(ts, first_line_len, headers_len, &mut out);
                    seg = pos;
                }
                Some(Event::Http2Preface) => panic!("read {i}: HTTP/2 preface in HTTP/1 stream"),
            }
        }
        if seg < read.len() {
            b.read(ts, &read[seg..], &mut out);
        }
        for (_, what) in case
            .between
            .iter()
            .filter(|(after, _)| *after % reads.len() == i)
        {
            match what {
                Between::Write(d) => {
                    b.write(ts, d, &mut out);
                    writes.extend_from_slice(d);
                }
                Between::Flush => {
                    b.flush(&mut out);
                }
            }
        }
    }
    assert!(framer.is_idle(), "framer not idle after complete requests");
    assert_eq!(heads, case.requests.len(), "heads framed");
    assert_eq!(
        b.requests_completed() as usize,
        case.requests.len(),
        "requests completed"
    );
    b.close(
        Timestamp {
            secs: 1_700_000_000,
            nanos: 1,
        },
        &mut out,
    );
    let obs = decode_records(&out.records, max, PIPELINE_CONN, PIPELINE_NODE);
    let mut read_bytes = Vec::new();
    let mut write_bytes = Vec::new();
    let mut eoms = Vec::new();
    for o in &obs {
        match o {
            Obs::Read(_, d) => read_bytes.extend_from_slice(d),
            Obs::Write(_, d) => write_bytes.extend_from_slice(d),
            Obs::Eom(_, first, headers) => eoms.push(Rendered {
                end: read_bytes.len(),
                first_line_len: *first as u32,
                headers_len: *headers as u32,
            }),
            Obs::Close(_) => {}
            other => panic!("unexpected observation {other:?}"),
        }
    }
    assert!(read_bytes == stream, "decoded reads differ from the stream");
    assert!(write_bytes == writes, "decoded writes differ");
    assert_eq!(
        eoms, rendered,
        "end-of-message markers (offset, line lengths)"
    );
}

/// Bytes a request target may hold here (RFC 3986 pchar / query without `%`-escapes).
const TARGET_CHARS: &[u8] = b"abcXYZ0189/?=&-._~:@!$'()*+,;";
/// Header field value bytes (VCHAR, obs-text, inner SP / HTAB).
const VALUE_CHARS: &[u8] = b"aZ09 \t!\"#~:;,=\x80\xff";
/// Header names the pipeline uses besides random tokens (never the framing ones).
const PIPELINE_NAMES: &[&[u8]] = &[
    b"Host",
    b"Connection",
    b"Expect",
    b"Upgrade",
    b"User-Agent",
    b"Content-Type",
];
const PIPELINE_VALUES: &[&[u8]] = &[
    b"close",
    b"keep-alive",
    b"Upgrade",
    b"100-continue",
    b"websocket",
    b"application/json",
];
const TCHARS: &[u8] =
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// A token of 1..=8 tchars that is not a framing header name.
fn token_from(src: &mut ByteSource<'_>) -> Vec<u8> {
    let len = 1 + src.below(8);
    let t: Vec<u8> = (0..len).map(|_| src.pick(TCHARS)).collect();
    if t.eq_ignore_ascii_case(b"content-length")
        || t.eq_ignore_ascii_case(b"transfer-encoding")
        || t.eq_ignore_ascii_case(b"trailer")
        || t.eq_ignore_ascii_case(b"expect")
    {
        return b"X-T".to_vec();
    }
    t
}

/// A header value: no leading / trailing whitespace (the framer trims it).
fn value_from(src: &mut ByteSource<'_>) -> Vec<u8> {
    if src.bool() {
        return src.pick(PIPELINE_VALUES).to_vec();
    }
    let len = src.below(12);
    let v: Vec<u8> = (0..len).map(|_| src.pick(VALUE_CHARS)).collect();
    trim_ows(&v).to_vec()
}

/// Exactly one `Host` field first (the framer requires it of HTTP/1.1 requests and refuses a
/// second one), the generated ones after it.
pub fn with_one_host(headers: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    std::iter::once((b"Host".to_vec(), b"origin.test".to_vec()))
        .chain(
            headers
                .into_iter()
                .filter(|(n, _)| !n.eq_ignore_ascii_case(b"host")),
        )
        .collect()
}

fn header_from(src: &mut ByteSource<'_>) -> (Vec<u8>, Vec<u8>) {
    let name = if src.bool() {
        src.pick(PIPELINE_NAMES).to_vec()
    } else {
        token_from(src)
    };
    let value = value_from(src);
    // The framer refuses every other expectation (417).
    if name.eq_ignore_ascii_case(b"expect") {
        return (name, b"100-continue".to_vec());
    }
    (name, value)
}

fn request_from(src: &mut ByteSource<'_>) -> GenRequest {
    let method = match src.u8() % 10 {
        0 => b"GET".to_vec(),
        1 => b"POST".to_vec(),
        2 => b"PUT".to_vec(),
        3 => b"DELETE".to_vec(),
        4 => b"HEAD".to_vec(),
        5 => b"PATCH".to_vec(),
        6 => b"OPTIONS".to_vec(),
        7 => b"TRACE".to_vec(),
        // Only the methods the sources serve: the framer refuses the others (501).
        _ => b"GET".to_vec(),
    };
    let tlen = src.below(24);
    let mut target = vec![b'/'];
    target.extend((0..tlen).map(|_| src.pick(TARGET_CHARS)));
    let flags = src.u8();
    let headers = (0..src.below(5)).map(|_| header_from(src)).collect();
    let body = match src.u8() % 5 {
        0 | 1 => GenBody::None,
        2 => GenBody::Length(Vec::new()),
        3 => {
            let len = if src.bool() {
                src.below(64)
            } else {
                src.below(5000)
            };
            GenBody::Length(pattern(len, src.u8()))
        }
        _ => GenBody::Chunked {
            sizes: (0..src.below(5)).map(|_| 1 + src.below(300)).collect(),
            ext: src.bool(),
            // No Host in trailers (refused, as the framing fields are).
            trailers: (0..src.below(3))
                .map(|_| header_from(src))
                .filter(|(n, _)| !n.eq_ignore_ascii_case(b"host"))
                .collect(),
        },
    };
    // HTTP/1.0 has no chunked framing (RFC 9112 §6.1): the framer refuses it.
    let version_minor = if matches!(body, GenBody::Chunked { .. }) {
        1
    } else {
        flags & 1
    };
    GenRequest {
        method,
        target,
        version_minor,
        // CRLF only, no empty lines before the request line: the framer refuses the rest.
        crlf: true,
        leading: 0,
        headers: with_one_host(headers),
        body,
    }
}

/// Fuzz input: up to 8 requests, the limit, how the stream is read, what happens in between.
pub fn pipeline_case_from(data: &[u8]) -> PipelineCase {
    let mut src = ByteSource::new(data);
    let requests = (0..1 + src.below(8))
        .map(|_| request_from(&mut src))
        .collect();
    let extra = match src.u8() % 3 {
        0 => src.below(64),
        1 => src.below(1024),
        _ => src.below(1 << 16),
    };
    let buffer = match src.u8() % 3 {
        0 => Some(1 + src.below(64)),
        1 => Some(1 + src.below(8192)),
        _ => None,
    };
    let cuts = (0..src.below(17)).map(|_| src.u16() as usize).collect();
    let between = (0..src.below(6))
        .map(|_| {
            let after = usize::from(src.u8());
            let what = if src.bool() {
                Between::Flush
            } else {
                Between::Write(pattern(src.below(600), src.u8()))
            };
            (after, what)
        })
        .collect();
    PipelineCase {
        requests,
        extra,
        buffer,
        cuts,
        between,
    }
}

pub fn fuzz_pipeline(data: &[u8]) {
    check_pipeline(&pipeline_case_from(data));
}
