//! One proxied connection, both directions (the HOT path).
//!
//! Client bytes are read into a pooled buffer, framed (`http1`), captured (`capture`) and the
//! same buffer is written upstream; response bytes come back the same way. The two directions
//! run as two futures of one task (`join!`) and share the connection's [`ConnState`].
//!
//! The connection code is generic over the stream halves ([`StreamRead`] / [`StreamWrite`]):
//! plain TCP or TLS on either side, monomorphised (no dynamic dispatch on the plaintext path).
//! A TLS client is registered (and so captured) only once its handshake succeeded.
//!
//! May depend on: `worker` (the per-core context this runs in, `ConnState`), `http1`,
//! `capture`, `upstream` (the destination connection), `tls` (stream halves, handshake),
//! `buf` (read buffers), `handoff` (ack outcomes), `config` (`FailurePolicy`), `stats`.
//!
//! Invariants:
//! - Bytes are forwarded unchanged, in order, from the buffer they were read into.
//! - A read observation is recorded before its bytes are forwarded; a write observation is
//!   recorded before its bytes are written to the client (so capture order follows causality).
//! - Reads are cut at request boundaries: every captured request gets its own read(s) and one
//!   end-of-message marker right after its last byte.
//! - The final bytes of a captured mutating request reach the destination only after its
//!   record is committed (or the failure policy decided).
//! - Peer bytes never panic: no unwrap/expect/indexing here; slices via `get`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use monoio::buf::IoBuf;
use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::buf::{IoBufs, StreamLease, IO_BUF_BYTES};
use crate::capture::encode::Timestamp;
use crate::config::FailurePolicy;
use crate::handoff::{FailKind, Outcome};
use crate::http1::{Event, FrameError, FramerLimits, RequestFramer};
use crate::http1::{ExpectedResponse, REvent, ResponseFramer};
use crate::stats::{Counter, RateLimit};
use crate::tls::{StreamRead, StreamWrite};
use crate::upstream::{ConnectError, Halves};
use crate::worker::{ConnState, Ctx, StopReason};

/// Synthetic answers. They are not captured (they did not come from the source cluster).
const RESP_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbad request\n";
const RESP_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\nconnection: close\r\n\r\nrequest timeout\n";
const RESP_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\ncontent-length: 24\r\nconnection: close\r\n\r\nrequest head too large\r\n";
const RESP_417: &[u8] = b"HTTP/1.1 417 Expectation Failed\r\ncontent-type: text/plain\r\ncontent-length: 39\r\nconnection: close\r\n\r\nonly Expect: 100-continue is supported\n";
const RESP_501: &[u8] = b"HTTP/1.1 501 Not Implemented\r\ncontent-type: text/plain\r\ncontent-length: 49\r\nconnection: close\r\n\r\nonly Transfer-Encoding: chunked alone is handled\n";
const RESP_502: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 37\r\nconnection: close\r\n\r\nbad gateway: destination unreachable\n";
const RESP_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 28\r\nconnection: close\r\n\r\ncapture unavailable, retry\r\n";

/// Capture note after a request answered 503 under `--capture-failure-policy reject`.
const REJECTED_NOTE: &str = "previous request rejected with 503 (--capture-failure-policy reject): not forwarded to the destination";

/// Bytes of the small read buffers the two directions use while their exchange is idle.
/// Idle keep-alive connections then hold these instead of two pooled 64 KiB buffers (the
/// per-connection memory target is 16 KiB; measured: 4 KiB + 4 KiB gave 17.6 KiB per idle
/// connection in all, 2 KiB + 1 KiB brings it under the target). 2 KiB takes a typical
/// search request's head in one read; a response's first 1 KiB is its head and the start of
/// its body. After a read the direction switches to a pooled 64 KiB buffer until idle again.
const IDLE_READ_BYTES_CLIENT: usize = 2 * 1024;
const IDLE_READ_BYTES_UPSTREAM: usize = 1024;

/// Record size (bytes) past which a connection's record is flushed as soon as its exchange is
/// complete (no request or response in progress), rather than at `--maxTrafficBufferSize`
/// (1 MiB) or the time-based flush. Bounds what a busy keep-alive connection holds to about
/// this plus one exchange (the Java proxy holds up to 1 MiB per connection), while Kafka
/// messages stay large enough to amortise per-message cost. Records stay valid for the
/// Replayer: they end between observations, at a request boundary.
const RECORD_SOFT_FLUSH_BYTES: usize = 64 * 1024;

/// Most time the body of an `Expect: 100-continue` request waits for the destination's
/// answer to its head (3 s). Elasticsearch/OpenSearch answer the head at once: 100 Continue,
/// or a final 413/417, after which Netty reads whatever follows as new requests — so the body
/// is not forwarded before the answer (a final one means it never is). An origin that never
/// sends 100 costs its clients this much once per such request; curl waits 1 s itself.
const EXPECT_CONTINUE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Full 64 KiB reads in a row after which a direction switches to a streaming buffer
/// (`buf::STREAM_BUF_BYTES`): two, so a 64 KiB response (one full read and a short one)
/// never takes one, while a large body does after its first 128 KiB.
const STREAM_AFTER_FULL_READS: u8 = 2;

/// A direction's read buffers: a spare small one for idle reads; a pooled 64 KiB one while
/// bytes move; a pooled streaming one (with its lease) while a large body keeps filling the
/// 64 KiB one. Only directions with bytes in flight hold a pooled buffer.
struct ReadBufs {
    small: Vec<u8>,
    small_bytes: usize,
    /// Consecutive reads that filled the 64 KiB buffer.
    full_reads: u8,
    lease: Option<StreamLease>,
}

impl ReadBufs {
    fn new(small_bytes: usize) -> Self {
        ReadBufs {
            small: Vec::new(),
            small_bytes,
            full_reads: 0,
            lease: None,
        }
    }

    /// The buffer for the next read: small while `idle` (pooled ones go back to their pool),
    /// 64 KiB otherwise, or a streaming one after [`STREAM_AFTER_FULL_READS`] full reads
    /// (`last_full`: the previous read filled its buffer). Inside a message too, a peer that
    /// trickles (the last read brought less than a small buffer holds) reads into the small
    /// buffer: a slow or stuck peer never pins a pooled one while its read waits.
    fn choose(&mut self, pool: &IoBufs, current: Vec<u8>, idle: bool, last_full: bool) -> Vec<u8> {
        let cap = current.capacity();
        let trickle = !last_full && current.len() < self.small_bytes;
        if idle || (trickle && self.lease.is_none()) {
            self.full_reads = 0;
            if cap < IO_BUF_BYTES {
                return current;
            }
            pool.put(current);
            self.lease = None;
            let mut small = std::mem::take(&mut self.small);
            if small.capacity() < self.small_bytes {
                small = Vec::with_capacity(self.small_bytes);
            }
            return small;
        }
        if cap < IO_BUF_BYTES {
            // The small buffer filled: bytes are flowing, take a pooled one.
            self.small = current;
            self.full_reads = 0;
            return pool.take();
        }
        if self.lease.is_some() {
            return current;
        }
        self.full_reads = if last_full {
            self.full_reads.saturating_add(1)
        } else {
            0
        };
        if self.full_reads >= STREAM_AFTER_FULL_READS {
            if let Some((big, lease)) = pool.take_stream() {
                pool.put(current);
                self.lease = Some(lease);
                return big;
            }
        }
        current
    }
}

/// How the client→upstream direction ended.
enum C2uEnd {
    /// The client half-closed after a complete exchange (or mid-request).
    ClientEof,
    ClientError,
    Stopped(StopReason),
    UpstreamWriteError,
    /// Answer the client with this synthetic response, then close.
    Respond(&'static [u8]),
    /// A connection-ending request was forwarded: nothing more goes upstream.
    ConnectionEnding,
}

/// How the upstream→client direction ended.
enum U2cEnd {
    UpstreamEof,
    UpstreamError,
    ClientWriteError,
    Stopped,
}

/// Where an `Expect: 100-continue` request's body is (see [`EXPECT_CONTINUE_WAIT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// No request waits for the destination's answer to its head.
    Open,
    /// The body waits: the destination has not answered the head yet.
    Waiting,
    /// The destination sent 100 Continue (or another interim response): forward the body.
    Continued,
    /// The destination sent a final response first: the body is never forwarded.
    Answered,
}

/// Per-exchange state shared by the two directions (beyond `ConnState`).
struct Exchange {
    resp: RefCell<ResponseFramer>,
    /// For each forwarded request awaiting its response, in order: capture its response?
    resp_capture: RefCell<VecDeque<bool>>,
    /// After an upgrade or HTTP/2 preface: forward raw, capture nothing more.
    opaque: Cell<bool>,
    /// The client→upstream direction has ended (u2c finishes outstanding responses, then stops).
    c2u_done: Cell<bool>,
    /// Bytes of the current (outstanding) response have reached the client.
    resp_started: Cell<bool>,
    /// For each forwarded request whose response has not started, in order: when its head
    /// went upstream (a held request: when it was released). Popped at the response's first
    /// byte into `WorkerStats::upstream_response_us`.
    sent_at: RefCell<VecDeque<std::time::Instant>>,
    /// The request being read has a body that is not complete yet.
    body_open: Cell<bool>,
    /// c2u ended with a synthetic answer (400, 431, 501, 417, 503): the destination closing
    /// its side afterwards is our doing, not a destination error.
    answering: Cell<bool>,
    gate: Cell<Gate>,
    gate_waker: Cell<Option<std::task::Waker>>,
}

impl Exchange {
    /// The destination answered the oldest outstanding request: if that is the request whose
    /// body is still being read, the rest of the body must not be forwarded (Netty would read
    /// it as new requests). Returns true when it cut the body (the caller stops c2u).
    fn on_response_head(&self, st: &ConnState, interim: bool) -> bool {
        if self.gate.get() == Gate::Waiting {
            self.gate.set(if interim {
                Gate::Continued
            } else {
                Gate::Answered
            });
            if let Some(w) = self.gate_waker.take() {
                w.wake();
            }
            // The waiting c2u direction acts on the answer itself.
            return false;
        }
        !interim && self.body_open.get() && st.outstanding.get() == 1
    }

    /// Waits until the destination answered the head of an `Expect: 100-continue` request
    /// (or [`EXPECT_CONTINUE_WAIT`] passed): true when the body may be forwarded.
    async fn wait_continue(&self) -> bool {
        let fut = std::future::poll_fn(|cx| match self.gate.get() {
            Gate::Waiting => {
                self.gate_waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            }
            g => std::task::Poll::Ready(g),
        });
        let g = monoio::time::timeout(EXPECT_CONTINUE_WAIT, fut)
            .await
            .unwrap_or(Gate::Continued);
        self.gate.set(Gate::Open);
        self.gate_waker.set(None);
        g != Gate::Answered
    }
}

/// Serves one accepted client connection until both directions end. With client-facing
/// TLS the handshake comes first (bounded by `tls::HANDSHAKE_TIMEOUT`); a failed handshake
/// closes this connection only, is counted and logged (rate-limited), and captures nothing.
pub async fn serve(ctx: Rc<Ctx>, client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    crate::upstream::set_keepalive(&client, ctx.settings.tcp_keepalive);
    let Some(tls) = ctx.settings.server_tls.as_ref() else {
        let (cr, cw) = client.into_split();
        return serve_client(ctx, cr, cw).await;
    };
    match crate::tls::accept(client, tls.current()).await {
        Ok(stream) => {
            let (cr, cw) = stream.into_split();
            serve_client(ctx, cr, cw).await
        }
        // A TCP connect-and-close (health check, port probe) is not a TLS failure.
        Err(crate::tls::HandshakeError::Silent) => {}
        Err(e) => {
            ctx.stats.inc(Counter::TlsHandshakeFailed);
            crate::tls::warn_handshake_failed(peer, &e);
        }
    }
}

/// Serves a client (plain or TLS, handshake done): registers it for capture, gets a
/// destination connection, and runs the exchange.
async fn serve_client<CR: StreamRead, CW: StreamWrite>(ctx: Rc<Ctx>, cr: CR, cw: CW) {
    let st = ctx.register();
    let upstream = match ctx.pool.get().await {
        Ok(u) => u,
        Err(e) => {
            ctx.stats.inc(Counter::UpstreamConnectFailed);
            crate::upstream::warn_connect_failed(&e);
            connect_failed(&ctx, &st, cr, cw, &e).await;
            finish(&ctx, &st);
            return;
        }
    };
    match crate::upstream::into_halves(upstream) {
        Halves::Plain(ur, uw) => run(&ctx, &st, cr, cw, ur, uw).await,
        Halves::Tls(ur, uw) => run(&ctx, &st, cr, cw, ur, uw).await,
    }
}

/// Runs both directions of a connection until they end, then writes its final record.
async fn run<CR, CW, UR, UW>(ctx: &Ctx, st: &ConnState, cr: CR, cw: CW, ur: UR, uw: UW)
where
    CR: StreamRead,
    CW: StreamWrite,
    UR: StreamRead,
    UW: StreamWrite,
{
    let limits = framer_limits(ctx);
    let x = Exchange {
        resp: RefCell::new(ResponseFramer::new(limits)),
        resp_capture: RefCell::new(VecDeque::with_capacity(4)),
        opaque: Cell::new(false),
        c2u_done: Cell::new(false),
        resp_started: Cell::new(false),
        sent_at: RefCell::new(VecDeque::with_capacity(4)),
        body_open: Cell::new(false),
        answering: Cell::new(false),
        gate: Cell::new(Gate::Open),
        gate_waker: Cell::new(None),
    };
    let (c_end, (u_end, cw)) = monoio::join!(
        client_to_upstream(ctx, st, &x, cr, uw, limits),
        upstream_to_client(ctx, st, &x, ur, cw)
    );
    let close_counter = match (&c_end, &u_end) {
        (C2uEnd::Stopped(StopReason::Drain), _) => Counter::ConnClosedDrain,
        (
            C2uEnd::Stopped(
                StopReason::IdleTimeout | StopReason::HeadTimeout | StopReason::BodyTimeout,
            ),
            _,
        ) => Counter::ConnClosedTimeout,
        (C2uEnd::ClientEof | C2uEnd::ConnectionEnding, _) => Counter::ConnClosedClient,
        (_, U2cEnd::UpstreamEof) => Counter::ConnClosedUpstream,
        _ => Counter::ConnClosedError,
    };
    ctx.stats.inc(close_counter);
    let mut cw = cw;
    if let (C2uEnd::Respond(resp), Some(cw)) = (c_end, cw.as_mut()) {
        if !matches!(u_end, U2cEnd::ClientWriteError) {
            let h = st.u2c_handle();
            let _ = cw.send_all(resp, h).await;
        }
    }
    if let Some(cw) = cw.as_mut() {
        if !matches!(u_end, U2cEnd::ClientWriteError) {
            cw.close(st.u2c_handle()).await;
        }
    }
    finish(ctx, st);
}

fn framer_limits(ctx: &Ctx) -> FramerLimits {
    FramerLimits {
        max_head_bytes: ctx.settings.max_head_bytes,
        max_request_line_bytes: ctx.settings.source_max_initial_line_length,
        max_header_bytes: ctx.settings.source_max_header_size,
        ..FramerLimits::default()
    }
}

/// Writes the connection's final record and releases its slot (or lets it linger until its
/// earlier records are acknowledged, see `Ctx::finish`).
fn finish(ctx: &Ctx, st: &ConnState) {
    ctx.finish(st, Timestamp::now());
}

/// The destination could not be reached: read the client's request head (bounded), answer
/// 502, and capture only a `connectionException` then `close` (nothing replayable).
async fn connect_failed<CR: StreamRead, CW: StreamWrite>(
    ctx: &Ctx,
    st: &ConnState,
    mut cr: CR,
    mut cw: CW,
    err: &ConnectError,
) {
    let ts = Timestamp::now();
    let mut msg = String::with_capacity(64);
    msg.push_str("destination unreachable: ");
    msg.push_str(&err.to_string());
    ctx.with_capture(st, |b, e| b.connection_exception(ts, &msg, e));
    let buf = ctx.bufs.take();
    // Give the client a moment to send its request so the 502 answers it (and the close does
    // not reset the connection under unread bytes); a silent client just gets closed.
    let wait = ctx
        .settings
        .request_head_timeout
        .unwrap_or(std::time::Duration::from_secs(5))
        .min(std::time::Duration::from_secs(5));
    let h = st.c2u_handle();
    let got = monoio::time::timeout(wait, cr.recv(buf, h)).await;
    let buf = match got {
        Ok((Ok(n), b)) if n > 0 => {
            ctx.stats.add(Counter::BytesRead, n as u64);
            let h = st.u2c_handle();
            let _ = cw.send_all(RESP_502, h).await;
            b
        }
        Ok((_, b)) => b,
        Err(_) => Vec::with_capacity(0),
    };
    ctx.bufs.put(buf);
    cw.close(st.u2c_handle()).await;
}

/// Per-request state of the client→upstream direction.
#[derive(Default)]
struct ReqState {
    /// Head complete for the current request.
    head_done: bool,
    suppressed: bool,
    mutating: bool,
    /// GET or HEAD (for the per-method-class request counters).
    get_head: bool,
    /// Reads of the current request were already written to the capture.
    reads_written: bool,
    /// The request ends the connection (`Connection: close`, HTTP/1.0 without keep-alive).
    closing: bool,
}

async fn client_to_upstream<CR: StreamRead, UW: StreamWrite>(
    ctx: &Ctx,
    st: &ConnState,
    x: &Exchange,
    mut cr: CR,
    mut uw: UW,
    limits: FramerLimits,
) -> C2uEnd {
    let mut framer = RequestFramer::new(limits);
    let mut bufs = ReadBufs::new(IDLE_READ_BYTES_CLIENT);
    let mut buf = Vec::with_capacity(IDLE_READ_BYTES_CLIENT);
    let mut last_full = false;
    let capturing = ctx.settings.capture.is_some();
    let holds = capturing;
    let mut rq = ReqState::default();
    // `--setHeader`: heads are held until complete, then their rewritten form goes upstream
    // (the capture keeps the client's original bytes).
    let mut rewriter = ctx.settings.rewriter.clone();
    let mut pending_head: Option<Vec<u8>> = None;
    let mut head_buf: Vec<u8> = Vec::new();
    let end = 'conn: loop {
        if let Some(why) = st.c2u_stop.get() {
            break C2uEnd::Stopped(why);
        }
        if ctx.sink_congested() {
            ctx.wait_uncongested().await;
        }
        buf = bufs.choose(&ctx.bufs, buf, st.req_idle.get() && !last_full, last_full);
        buf.clear();
        let (res, b) = cr.recv(buf, st.c2u_handle()).await;
        buf = b;
        last_full = matches!(res, Ok(n) if n >= buf.capacity());
        let n = match res {
            Ok(0) => break C2uEnd::ClientEof,
            Ok(n) => n,
            Err(e) => {
                if let Some(why) = st.c2u_stop.get() {
                    break C2uEnd::Stopped(why);
                }
                ctx.stats.inc(Counter::ClientErrors);
                let ts = Timestamp::now();
                let msg = e.to_string();
                ctx.with_capture(st, |b, e| b.connection_exception(ts, &msg, e));
                break C2uEnd::ClientError;
            }
        };
        if st.c2u_stop.get() == Some(StopReason::Drain) {
            // The client's next request came as the drain closed the idle connection: serve
            // it (the drain closes after its response) instead of dropping bytes already read.
            st.c2u_stop.set(None);
        }
        st.used.set(true);
        let mut ts = Timestamp::now();
        let now_ms = ctx.now_ms();
        st.last_activity.set(now_ms);
        st.last_client_read.set(now_ms);
        ctx.stats.add(Counter::BytesRead, n as u64);
        let data_len = n.min(buf.len());

        if x.opaque.get() {
            // Upgraded / HTTP/2: forward raw, capture nothing.
            match write_up(&mut uw, st, buf, 0, data_len).await {
                (Ok(()), b) => {
                    buf = b;
                    continue;
                }
                (Err(_), b) => {
                    buf = b;
                    break C2uEnd::UpstreamWriteError;
                }
            }
        }

        // Frame the read; capture it cut at request boundaries; forward, holding the final
        // bytes of captured mutating requests until their record is committed.
        let mut pos = 0usize; // framed so far
        let mut seg = 0usize; // start of the not-yet-captured part of the current request
        let mut fwd = 0usize; // forwarded so far
        let mut req_start = 0usize; // where the current request's bytes start in this read
                                    // Call the framer until it returns no event (it then consumed everything): a
                                    // bodiless request's MessageComplete comes on the call after its HeadComplete, even
                                    // when no input is left.
        loop {
            let input = buf.get(pos..data_len).unwrap_or(&[]);
            let step = match framer.advance(input) {
                Ok(s) => s,
                Err(fe) => {
                    // Capture what was read, then the exception; answer 400/431.
                    let (status, counter, what) = match fe {
                        FrameError::HeadTooLarge => {
                            (RESP_431, Counter::HeadTooLarge, "request head too large")
                        }
                        FrameError::NotImplemented(_) => {
                            (RESP_501, Counter::NotImplemented, "request refused")
                        }
                        FrameError::ExpectationFailed => {
                            (RESP_417, Counter::ExpectationFailed, "request refused")
                        }
                        FrameError::Malformed(_) => {
                            (RESP_400, Counter::Malformed, "malformed request")
                        }
                    };
                    ctx.stats.inc(counter);
                    if !rq.suppressed {
                        let part = buf.get(seg..data_len).unwrap_or(&[]);
                        let detail = fe.to_string();
                        ctx.with_capture(st, |b, e| {
                            if !part.is_empty() {
                                b.read(ts, part, e);
                            }
                            let mut m = String::with_capacity(what.len() + detail.len() + 2);
                            m.push_str(what);
                            m.push_str(": ");
                            m.push_str(&detail);
                            b.connection_exception(ts, &m, e);
                        });
                    }
                    // Forward the complete requests that preceded the bad one.
                    if fwd < seg || pending_head.is_some() {
                        let (r, b) =
                            flush_up(&mut uw, st, &mut pending_head, &mut head_buf, buf, fwd, seg)
                                .await;
                        buf = b;
                        if r.is_err() {
                            break 'conn C2uEnd::UpstreamWriteError;
                        }
                    }
                    break 'conn C2uEnd::Respond(status);
                }
            };
            pos += step.consumed;
            let mut after_head: Option<(usize, Vec<u8>)> = None;
            let mut gate = false;
            match step.event {
                None => break,
                Some(Event::HeadComplete(head)) => {
                    if let Some(rw) = rewriter.as_mut() {
                        // Forward what precedes this head (and any earlier rewritten head)
                        // after this event; the rewritten head is held until the next forward.
                        let head_start = pos.saturating_sub(head.head_len as usize).max(fwd);
                        let mut out = std::mem::take(&mut head_buf);
                        out.clear();
                        // A head the rewriter does not understand goes on unchanged.
                        out.extend_from_slice(rw.rewrite(head.raw).unwrap_or(head.raw));
                        after_head = Some((head_start, out));
                    }
                    rq.head_done = true;
                    rq.closing = head.connection_close;
                    let has_body = !matches!(
                        head.body,
                        crate::http1::BodyKind::None | crate::http1::BodyKind::ContentLength(0)
                    );
                    x.body_open.set(has_body);
                    if has_body && head.expect_continue {
                        x.gate.set(Gate::Waiting);
                        gate = true;
                    }
                    st.head_started.set(None);
                    rq.mutating = head.method.is_mutating();
                    rq.get_head = matches!(
                        head.method,
                        crate::http1::request::Method::Get | crate::http1::request::Method::Head
                    );
                    x.sent_at.borrow_mut().push_back(std::time::Instant::now());
                    rq.suppressed = capturing
                        && ctx.settings.suppress_any
                        && crate::http1::is_suppressed(&ctx.settings.suppress, &head);
                    let head_method = head.method;
                    x.resp.borrow_mut().expect(ExpectedResponse {
                        id: 0,
                        method_head: head_method == crate::http1::request::Method::Head,
                        method_connect: head_method == crate::http1::request::Method::Connect,
                    });
                    x.resp_capture.borrow_mut().push_back(!rq.suppressed);
                    st.outstanding.set(st.outstanding.get() + 1);
                    if rq.suppressed {
                        ctx.stats.inc(Counter::CaptureSuppressed);
                        if rq.reads_written {
                            ctx.stats.inc(Counter::RequestDropped);
                            ctx.with_capture(st, |b, e| b.request_dropped(ts, e));
                        }
                        // Nothing more of this request is captured.
                        seg = pos;
                    }
                }
                Some(Event::MessageComplete {
                    first_line_len,
                    headers_len,
                }) => {
                    ctx.stats.inc(Counter::Requests);
                    x.body_open.set(false);
                    let this_start = req_start;
                    req_start = pos;
                    let mut hold = false;
                    let closing = rq.closing;
                    if rq.mutating {
                        ctx.stats.inc(Counter::RequestsMutating);
                    } else if rq.get_head {
                        ctx.stats.inc(Counter::RequestsGetHead);
                    } else {
                        ctx.stats.inc(Counter::RequestsOtherMethod);
                    }
                    if !rq.suppressed {
                        let part = buf.get(seg..pos).unwrap_or(&[]);
                        let flushed = ctx.with_capture(st, |b, e| {
                            if !part.is_empty() {
                                b.read(ts, part, e);
                            }
                            b.end_of_message(ts, first_line_len, headers_len, e);
                            if holds && rq.mutating {
                                b.flush(e)
                            } else {
                                None
                            }
                        });
                        if flushed.is_some() {
                            ctx.stats.inc(Counter::FullRequest);
                        }
                        if let Some(Some(number)) = flushed {
                            st.hold.set(Some(number));
                            hold = true;
                        }
                    }
                    seg = pos;
                    rq = ReqState::default();
                    if hold {
                        // Forward what precedes this request's final bytes, then wait.
                        let this_req_start = this_start.max(fwd);
                        if fwd < this_req_start {
                            let (r, b) = write_up(&mut uw, st, buf, fwd, this_req_start).await;
                            buf = b;
                            if r.is_err() {
                                break 'conn C2uEnd::UpstreamWriteError;
                            }
                            fwd = this_req_start;
                        }
                        ctx.stats.inc(Counter::BlockingRequest);
                        ctx.urgent_flush();
                        let started = std::time::Instant::now();
                        let outcome = ctx.wait_hold(st).await;
                        ctx.stats.record(&ctx.stats.hold_us, started.elapsed());
                        // Its response cannot start before its last bytes go upstream: time
                        // the destination from the release, not from the head.
                        if let Some(t) = x.sent_at.borrow_mut().back_mut() {
                            *t = std::time::Instant::now();
                        }
                        if let Outcome::Failed(kind) = outcome {
                            ctx.stats.inc(Counter::HoldFailed);
                            warn_hold_failed(kind);
                            if ctx.settings.capture_failure_policy == FailurePolicy::Reject {
                                ctx.stats.inc(Counter::HoldRejected);
                                // The record may still be committed later (a broker that
                                // comes back): say in the capture that this request was not
                                // forwarded, so the loss of consistency is visible.
                                let ts = Timestamp::now();
                                ctx.with_capture(st, |b, e| {
                                    b.connection_exception(ts, REJECTED_NOTE, e)
                                });
                                // Earlier bytes of the request may have gone upstream: that
                                // connection is unusable now; answer 503 and close both.
                                st.stop_u2c(StopReason::PeerDone);
                                break 'conn C2uEnd::Respond(RESP_503);
                            }
                        }
                    }
                    if closing {
                        // RFC 9112 §9.6: nothing after a connection-ending request is run by
                        // the destination, so nothing after it is forwarded or captured.
                        let (r, b) =
                            flush_up(&mut uw, st, &mut pending_head, &mut head_buf, buf, fwd, pos)
                                .await;
                        buf = b;
                        if r.is_err() {
                            break 'conn C2uEnd::UpstreamWriteError;
                        }
                        let rest = data_len.saturating_sub(pos);
                        ctx.stats.add(Counter::BytesAfterClose, rest as u64);
                        break 'conn C2uEnd::ConnectionEnding;
                    }
                }
                Some(Event::Http2Preface) => {
                    ctx.stats.inc(Counter::Http2Passthrough);
                    ctx.stats.inc(Counter::CaptureSuppressed);
                    if rq.reads_written {
                        ctx.stats.inc(Counter::RequestDropped);
                        ctx.with_capture(st, |b, e| b.request_dropped(ts, e));
                    }
                    x.opaque.set(true);
                    seg = data_len;
                    pos = data_len;
                }
            }
            if let Some((head_start, new_head)) = after_head {
                let (r, b) = flush_up(
                    &mut uw,
                    st,
                    &mut pending_head,
                    &mut head_buf,
                    buf,
                    fwd,
                    head_start,
                )
                .await;
                buf = b;
                if r.is_err() {
                    break 'conn C2uEnd::UpstreamWriteError;
                }
                pending_head = Some(new_head);
                fwd = pos;
            }
            if gate {
                // `Expect: 100-continue`: the head goes now, the body once the destination
                // said so (a final answer first means it never goes). Captured first, as
                // every read is before its bytes are forwarded.
                if seg < pos && !rq.suppressed {
                    let part = buf.get(seg..pos).unwrap_or(&[]);
                    ctx.with_capture(st, |b, e| b.read(ts, part, e));
                    rq.reads_written = capturing;
                    seg = pos;
                }
                let (r, b) =
                    flush_up(&mut uw, st, &mut pending_head, &mut head_buf, buf, fwd, pos).await;
                buf = b;
                if r.is_err() {
                    break 'conn C2uEnd::UpstreamWriteError;
                }
                fwd = pos;
                if !x.wait_continue().await {
                    body_not_forwarded(ctx, st);
                    break 'conn C2uEnd::Stopped(StopReason::PeerDone);
                }
                // The rest of this read is captured after the destination's 100 Continue
                // (a write observation by now): its timestamp must not go back before it.
                ts = Timestamp::now();
            }
        }
        // The tail belongs to a request in progress.
        if seg < data_len && !rq.suppressed && !x.opaque.get() {
            let part = buf.get(seg..data_len).unwrap_or(&[]);
            ctx.with_capture(st, |b, e| b.read(ts, part, e));
            rq.reads_written = capturing;
        }
        let in_msg = framer.in_message();
        st.req_idle.set(!in_msg);
        if in_msg && !rq.head_done && st.head_started.get().is_none() {
            st.head_started.set(Some(ctx.now_ms()));
        }
        // With --setHeader, an incomplete head stays held (the framer keeps its bytes).
        let fwd_to = if rewriter.is_some() && in_msg && !rq.head_done {
            req_start.max(fwd)
        } else {
            data_len
        };
        if fwd < fwd_to || pending_head.is_some() {
            let (r, b) = flush_up(
                &mut uw,
                st,
                &mut pending_head,
                &mut head_buf,
                buf,
                fwd,
                fwd_to,
            )
            .await;
            buf = b;
            if r.is_err() {
                break C2uEnd::UpstreamWriteError;
            }
        }
    };
    if matches!(end, C2uEnd::ConnectionEnding) {
        // Keep reading (and dropping) what the client still sends until the responses are
        // out: closing with unread bytes would reset the connection under the response.
        x.c2u_done.set(true);
        if st.outstanding.get() == 0 {
            st.stop_u2c(StopReason::PeerDone);
        }
        buf = bufs.choose(&ctx.bufs, buf, true, false);
        while st.c2u_stop.get().is_none() {
            buf.clear();
            let (res, b) = cr.recv(buf, st.c2u_handle()).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => ctx.stats.add(Counter::BytesAfterClose, n as u64),
                _ => break,
            }
        }
    }
    ctx.bufs.put(buf);
    match &end {
        C2uEnd::ClientEof => {
            // Half-close toward the destination; responses keep flowing.
            let _ = uw.half_close().await;
        }
        C2uEnd::Stopped(StopReason::HeadTimeout) => {
            ctx.stats.inc(Counter::HeadTimeout);
            let ts = Timestamp::now();
            ctx.with_capture(st, |b, e| {
                b.connection_exception(ts, "request head timeout", e)
            });
        }
        C2uEnd::Stopped(StopReason::IdleTimeout) => ctx.stats.inc(Counter::IdleTimeout),
        C2uEnd::Stopped(StopReason::BodyTimeout) => {
            ctx.stats.inc(Counter::BodyTimeout);
            let ts = Timestamp::now();
            ctx.with_capture(st, |b, e| {
                b.connection_exception(ts, "request body timeout: the client stopped sending", e)
            });
        }
        _ => {}
    }
    x.answering.set(matches!(end, C2uEnd::Respond(_)));
    x.c2u_done.set(true);
    let abort = matches!(
        end,
        C2uEnd::ClientError
            | C2uEnd::Stopped(StopReason::Abort)
            | C2uEnd::Stopped(StopReason::BodyTimeout)
    );
    if abort || st.outstanding.get() == 0 {
        st.stop_u2c(StopReason::PeerDone);
    }
    drop(uw);
    match end {
        C2uEnd::Stopped(StopReason::HeadTimeout) if st.outstanding.get() == 0 => {
            C2uEnd::Respond(RESP_408)
        }
        // The request in progress is the only one outstanding and nothing of its answer
        // came: 408 (the destination's half of it is cut with this connection).
        C2uEnd::Stopped(StopReason::BodyTimeout)
            if st.outstanding.get() <= 1 && !x.resp_started.get() =>
        {
            C2uEnd::Respond(RESP_408)
        }
        other => other,
    }
}

/// Writes a pending rewritten head (if any), then `buf[from..to]`, upstream.
async fn flush_up<UW: StreamWrite>(
    uw: &mut UW,
    st: &ConnState,
    pending: &mut Option<Vec<u8>>,
    spare: &mut Vec<u8>,
    buf: Vec<u8>,
    from: usize,
    to: usize,
) -> (std::io::Result<()>, Vec<u8>) {
    if let Some(head) = pending.take() {
        let (r, mut head) = uw.send_all(head, st.c2u_handle()).await;
        head.clear();
        *spare = head;
        if let Err(e) = r {
            return (Err(e), buf);
        }
    }
    if from < to {
        write_up(uw, st, buf, from, to).await
    } else {
        (Ok(()), buf)
    }
}

/// Writes `buf[from..to]` upstream and hands the buffer back.
async fn write_up<UW: StreamWrite>(
    uw: &mut UW,
    st: &ConnState,
    buf: Vec<u8>,
    from: usize,
    to: usize,
) -> (std::io::Result<()>, Vec<u8>) {
    if st.c2u_stop.get().is_some() {
        // E.g. the destination answered before the body was complete: not one more byte.
        return (
            Err(std::io::Error::from(std::io::ErrorKind::Interrupted)),
            buf,
        );
    }
    let end = to.min(buf.len());
    let start = from.min(end);
    let (r, slice) = uw.send_all(buf.slice(start..end), st.c2u_handle()).await;
    (r.map(|_| ()), slice.into_inner())
}

async fn upstream_to_client<UR: StreamRead, CW: StreamWrite>(
    ctx: &Ctx,
    st: &ConnState,
    x: &Exchange,
    mut ur: UR,
    mut cw: CW,
) -> (U2cEnd, Option<CW>) {
    let mut bufs = ReadBufs::new(IDLE_READ_BYTES_UPSTREAM);
    let mut buf = Vec::with_capacity(IDLE_READ_BYTES_UPSTREAM);
    let mut last_full = false;
    let capturing = ctx.settings.capture.is_some();
    let end = 'conn: loop {
        if st.u2c_stop.get().is_some() {
            break U2cEnd::Stopped;
        }
        if capturing && ctx.sink_congested() {
            // Responses are captured too: pause reading them while the sink is behind.
            ctx.wait_uncongested().await;
        }
        buf = bufs.choose(
            &ctx.bufs,
            buf,
            st.outstanding.get() == 0 && !last_full,
            last_full,
        );
        buf.clear();
        let (res, b) = ur.recv(buf, st.u2c_handle()).await;
        buf = b;
        last_full = matches!(res, Ok(n) if n >= buf.capacity());
        let n = match res {
            Ok(0) => {
                // Close-delimited response ends here.
                let ev = x.resp.borrow_mut().on_eof();
                if let Some(REvent::MessageComplete { .. }) = ev {
                    response_done(st, x);
                }
                if st.u2c_stop.get().is_some() {
                    // The other direction ended the exchange (and answered the client, e.g.
                    // 503 under the reject policy); dropping its write half shut the
                    // destination's side, whose FIN can beat the cancellation of this read.
                    break U2cEnd::Stopped;
                }
                if x.answering.get() {
                    // We are answering the client ourselves and closed the destination's
                    // connection under its request: its close is the consequence.
                    break U2cEnd::Stopped;
                }
                if unanswered(st, x) > 0 {
                    // The destination closed without answering every forwarded request. No
                    // made-up answer (the request may have run, and a client reading a
                    // close-delimited response would take it as part of it): the client's
                    // connection is closed, and the capture says what went unanswered.
                    ctx.stats.inc(Counter::UpstreamReset);
                    unanswered_at_close(ctx, st, x, "destination closed the connection");
                }
                break U2cEnd::UpstreamEof;
            }
            Ok(n) => n,
            Err(e) => {
                if st.u2c_stop.get().is_some() || x.answering.get() {
                    break U2cEnd::Stopped;
                }
                ctx.stats.inc(Counter::UpstreamReset);
                let mut m = String::with_capacity(64);
                m.push_str("destination connection failed: ");
                m.push_str(&e.to_string());
                // One note: what failed, and what it left unanswered.
                unanswered_at_close(ctx, st, x, &m);
                break U2cEnd::UpstreamError;
            }
        };
        let ts = Timestamp::now();
        st.last_activity.set(ctx.now_ms());
        let data_len = n.min(buf.len());
        let mut broken = false;
        if x.opaque.get() {
            // Raw forwarding after an upgrade; nothing captured.
        } else {
            if !x.resp_started.get() && data_len > 0 {
                response_first_byte(ctx, x);
            }
            // Cut the writes at response boundaries so suppressed responses stay out.
            let mut pos = 0usize;
            let mut seg = 0usize;
            loop {
                let input = buf.get(pos..data_len).unwrap_or(&[]);
                let step = x.resp.borrow_mut().advance(input);
                let step = match step {
                    Ok(s) => s,
                    Err(fe) => {
                        ctx.stats.inc(Counter::UpstreamMalformed);
                        let msg = fe.to_string();
                        let cap_now = capturing && current_response_captured(x);
                        let part = buf.get(seg..data_len).unwrap_or(&[]);
                        ctx.with_capture(st, |b, e| {
                            if cap_now && !part.is_empty() {
                                b.write(ts, part, e);
                            }
                            let mut m = String::with_capacity(48 + msg.len());
                            m.push_str("malformed response from destination: ");
                            m.push_str(&msg);
                            b.connection_exception(ts, &m, e);
                        });
                        broken = true;
                        seg = data_len;
                        break;
                    }
                };
                pos += step.consumed;
                match step.event {
                    Some(REvent::MessageComplete { .. }) => {
                        if capturing && current_response_captured(x) {
                            let part = buf.get(seg..pos).unwrap_or(&[]);
                            if !part.is_empty() {
                                ctx.with_capture(st, |b, e| b.write(ts, part, e));
                            }
                        }
                        seg = pos;
                        response_done(st, x);
                        if pos < data_len {
                            // The next response starts in this same read.
                            response_first_byte(ctx, x);
                        }
                    }
                    Some(REvent::Upgraded { .. }) => {
                        if capturing && current_response_captured(x) {
                            let part = buf.get(seg..pos).unwrap_or(&[]);
                            if !part.is_empty() {
                                ctx.with_capture(st, |b, e| b.write(ts, part, e));
                            }
                        }
                        seg = data_len;
                        response_done(st, x);
                        x.opaque.set(true);
                        pos = data_len;
                    }
                    Some(REvent::HeadComplete { interim, .. }) => {
                        if x.on_response_head(st, interim) && !x.c2u_done.get() {
                            // Answered before its body was complete: the rest of the body
                            // is not forwarded, and the connection ends after this response.
                            body_not_forwarded(ctx, st);
                            st.stop_c2u(StopReason::PeerDone);
                        }
                    }
                    None => break,
                }
            }
            if seg < data_len && capturing && current_response_captured(x) {
                let part = buf.get(seg..data_len).unwrap_or(&[]);
                ctx.with_capture(st, |b, e| b.write(ts, part, e));
            }
            if seg < data_len {
                x.resp_started.set(true);
            }
            if capturing && st.is_exchange_idle() {
                // Between exchanges: hand a large record over now instead of letting a busy
                // keep-alive connection grow it toward `--maxTrafficBufferSize`.
                ctx.with_capture(st, |b, e| {
                    if b.buffered_len() >= RECORD_SOFT_FLUSH_BYTES {
                        b.flush(e);
                    }
                });
            }
        }
        ctx.stats.add(Counter::BytesWritten, data_len as u64);
        let (r, slice) = cw.send_all(buf.slice(0..data_len), st.u2c_handle()).await;
        buf = slice.into_inner();
        if r.is_err() {
            if st.u2c_stop.get().is_some() {
                break 'conn U2cEnd::Stopped;
            }
            ctx.stats.inc(Counter::ClientErrors);
            break U2cEnd::ClientWriteError;
        }
        if broken {
            break U2cEnd::UpstreamError;
        }
        if x.c2u_done.get() && st.outstanding.get() == 0 {
            break U2cEnd::Stopped;
        }
        if ctx.draining() && st.drain_may_close(ctx.now_ms()) {
            st.stop_c2u(StopReason::Drain);
        }
    };
    ctx.bufs.put(buf);
    // The destination is gone (or we stop): the client side ends too (also when it only
    // lingers after a connection-ending request).
    st.stop_c2u(StopReason::PeerDone);
    drop(ur);
    (end, Some(cw))
}

/// Counts and notes in the capture a request body (or its rest) that was not forwarded
/// because the destination answered first.
fn body_not_forwarded(ctx: &Ctx, st: &ConnState) {
    ctx.stats.inc(Counter::BodyNotForwarded);
    let ts = Timestamp::now();
    ctx.with_capture(st, |b, e| {
        b.connection_exception(
            ts,
            "destination answered before the request body was complete; the rest of the body was not forwarded and the connection was closed",
            e,
        )
    });
}

/// Forwarded requests whose response has not started (a started one that breaks off is
/// reported as such by the caller).
fn unanswered(st: &ConnState, x: &Exchange) -> usize {
    st.outstanding
        .get()
        .saturating_sub(usize::from(x.resp_started.get()))
}

/// Notes in the capture what ended the destination connection (`what`) and how many forwarded
/// requests it left unanswered (counted).
fn unanswered_at_close(ctx: &Ctx, st: &ConnState, x: &Exchange, what: &str) {
    let n = unanswered(st, x);
    ctx.stats.add(Counter::UnansweredAtClose, n as u64);
    let ts = Timestamp::now();
    let mut m = String::with_capacity(what.len() + 48);
    m.push_str(what);
    if n > 0 {
        m.push_str(" with ");
        m.push_str(&n.to_string());
        m.push_str(" forwarded request(s) unanswered");
    }
    ctx.with_capture(st, |b, e| b.connection_exception(ts, &m, e));
}

fn current_response_captured(x: &Exchange) -> bool {
    // A response with no forwarded request (unsolicited) is captured.
    x.resp_capture.borrow().front().copied().unwrap_or(true)
}

/// The first byte of the oldest unanswered request's response arrived: time it.
fn response_first_byte(ctx: &Ctx, x: &Exchange) {
    let sent = x.sent_at.borrow_mut().pop_front();
    if let Some(t) = sent {
        ctx.stats
            .record(&ctx.stats.upstream_response_us, t.elapsed());
    }
}

fn response_done(st: &ConnState, x: &Exchange) {
    x.resp_capture.borrow_mut().pop_front();
    st.outstanding.set(st.outstanding.get().saturating_sub(1));
    x.resp_started.set(false);
}

/// Least time between two "held request's record not committed" warnings (s); the rest are
/// counted (`holdFailed_total`) and reported as suppressed in the next warning.
const HOLD_WARN_PERIOD: std::time::Duration = std::time::Duration::from_secs(60);

thread_local! {
    static HOLD_WARN: RefCell<RateLimit> = RefCell::new(RateLimit::new(HOLD_WARN_PERIOD));
}

fn warn_hold_failed(kind: FailKind) {
    HOLD_WARN.with(|r| {
        if let Some(suppressed) = r.borrow_mut().allow() {
            tracing::warn!(
                reason = kind.as_str(),
                suppressed,
                "mutating request's capture record was not committed; applying --capture-failure-policy"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every synthetic answer's Content-Length is its body's length (a wrong one leaves a
    /// stray byte in the client's stream or cuts the body).
    #[test]
    fn synthetic_answers_declare_their_body_length() {
        for resp in [
            RESP_400, RESP_408, RESP_417, RESP_431, RESP_501, RESP_502, RESP_503,
        ] {
            let text = std::str::from_utf8(resp).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let declared: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, body.len(), "{head}");
        }
    }
}
