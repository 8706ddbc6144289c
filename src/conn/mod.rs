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

mod c2u;
mod u2c;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;

use monoio::io::Splitable;
use monoio::net::TcpStream;

use crate::buf::{IoBufs, StreamLease, IO_BUF_BYTES};
use crate::capture::encode::Timestamp;
use crate::handoff::FailKind;
use crate::http1::{ExpectedResponse, FramerLimits, ResponseFramer};
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
/// These are the starting sizes: see [`IDLE_READ_MAX_BYTES`].
const IDLE_READ_BYTES_CLIENT: usize = 2 * 1024;
const IDLE_READ_BYTES_UPSTREAM: usize = 1024;
/// Largest a direction's small read buffer grows (bytes). Each time a message's first read
/// fills the small buffer, the buffer doubles (up to this) for the next message: a connection
/// carrying 4 KiB `_bulk` POSTs read each one in two reads (2 KiB, then the rest), and so
/// forwarded it in two sends and captured it as two reads — one more receive, one more send
/// and one more framer pass per request: 4 KiB POSTs `--noCapture` 34.2k → 42.3k req/s and
/// 26 → 20 CPU-µs per request with an 8 KiB buffer (one run each, loadtest layout). 16 KiB
/// takes a typical search or small bulk request (or response head and start) in one read;
/// larger messages stream through pooled buffers anyway. Only connections that carried such
/// messages hold the larger buffer while idle (at most 16 KiB per direction); connections of
/// small requests keep the starting sizes (the idle-memory target).
const IDLE_READ_MAX_BYTES: usize = 16 * 1024;

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
            // The small buffer filled: bytes are flowing, take a pooled one; this connection's
            // messages outgrow the small buffer, so the next one starts in a larger one.
            if cap >= self.small_bytes {
                self.small_bytes = self.small_bytes.saturating_mul(2).min(IDLE_READ_MAX_BYTES);
            }
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

/// What the connection keeps per forwarded request until its final response completes: the
/// value of the request's entry in the response framer's queue, which is the connection's
/// only per-request queue.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    /// Capture its response (false: the request was suppressed).
    capture: bool,
    /// When its head went upstream (a held request: when it was released); taken at its
    /// response's first byte into `WorkerStats::upstream_response_us`.
    sent_at: Option<std::time::Instant>,
}

/// Per-exchange state shared by the two directions (beyond `ConnState`).
struct Exchange {
    /// Frames the responses; its queue holds the forwarded requests awaiting them.
    resp: RefCell<ResponseFramer<Awaiting>>,
    /// After an upgrade or HTTP/2 preface: forward raw, capture nothing more.
    opaque: Cell<bool>,
    /// The client→upstream direction has ended (u2c finishes outstanding responses, then stops).
    c2u_done: Cell<bool>,
    /// Bytes of the current (outstanding) response have reached the client.
    resp_started: Cell<bool>,
    /// The request being read has a body that is not complete yet.
    body_open: Cell<bool>,
    /// c2u ended with a synthetic answer (400, 431, 501, 417, 503): the destination closing
    /// its side afterwards is our doing, not a destination error.
    answering: Cell<bool>,
    gate: Cell<Gate>,
    gate_waker: Cell<Option<std::task::Waker>>,
}

impl Exchange {
    /// Forwarded requests whose final response has not completed.
    fn awaiting(&self) -> usize {
        self.resp.borrow().outstanding()
    }

    /// Publishes [`Exchange::awaiting`] to the connection's state, where the worker's sweeper
    /// reads it (`ConnState::is_exchange_idle`); the only writer of `ConnState::outstanding`.
    fn publish(&self, st: &ConnState) {
        st.outstanding.set(self.awaiting());
    }

    /// A request was forwarded: it awaits its response.
    fn awaiting_push(&self, st: &ConnState, req: ExpectedResponse<Awaiting>) {
        self.resp.borrow_mut().expect(req);
        self.publish(st);
    }

    /// The newest request's last bytes were released upstream after a hold: its response is
    /// timed from now (unless it already started).
    fn released(&self, now: std::time::Instant) {
        if let Some(a) = self.resp.borrow_mut().back_mut() {
            if a.sent_at.is_some() {
                a.sent_at = Some(now);
            }
        }
    }

    /// The destination answered the oldest outstanding request: if that is the request whose
    /// body is still being read, the rest of the body must not be forwarded (Netty would read
    /// it as new requests). Returns true when it cut the body (the caller stops c2u).
    fn on_response_head(&self, interim: bool) -> bool {
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
        !interim && self.body_open.get() && self.awaiting() == 1
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
///
/// Every idle connection holds this future, sized by its largest variant: the paths a plain
/// connection never takes (TLS handshake and client, TLS destination, connect failure) are
/// boxed, so they cost an allocation to the connections that take them and nothing to the
/// others (test `an_idle_connection_holds_only_the_plain_path_future`).
pub async fn serve(ctx: Rc<Ctx>, client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    crate::upstream::set_keepalive(&client, ctx.settings.tcp_keepalive);
    let Some(tls) = ctx.settings.server_tls.as_ref() else {
        let (cr, cw) = client.into_split();
        return serve_client(ctx, cr, cw).await;
    };
    match Box::pin(crate::tls::accept(client, tls.current())).await {
        Ok(stream) => {
            let (cr, cw) = stream.into_split();
            Box::pin(serve_client(ctx, cr, cw)).await
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
            Box::pin(connect_failed(&ctx, &st, cr, cw, &e)).await;
            finish(&ctx, &st);
            return;
        }
    };
    match crate::upstream::into_halves(upstream) {
        Halves::Plain(ur, uw) => run(&ctx, &st, cr, cw, ur, uw).await,
        Halves::Tls(ur, uw) => Box::pin(run(&ctx, &st, cr, cw, ur, uw)).await,
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
        opaque: Cell::new(false),
        c2u_done: Cell::new(false),
        resp_started: Cell::new(false),
        body_open: Cell::new(false),
        answering: Cell::new(false),
        gate: Cell::new(Gate::Open),
        gate_waker: Cell::new(None),
    };
    let (c_end, (u_end, cw)) = monoio::join!(
        c2u::C2u::new(ctx, st, &x, cr, uw, limits).run(),
        u2c::upstream_to_client(ctx, st, &x, ur, cw)
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

/// Counts and notes in the capture a request body (or its rest) that was not forwarded
/// because the destination answered first.
fn body_not_forwarded(ctx: &Ctx, st: &ConnState) {
    count_and_note(
        ctx,
        st,
        Counter::BodyNotForwarded,
        "destination answered before the request body was complete; the rest of the body was not forwarded and the connection was closed",
    );
}

/// Counts `counter` and notes `what` in the capture (a connection exception, now).
fn count_and_note(ctx: &Ctx, st: &ConnState, counter: Counter, what: &str) {
    ctx.stats.inc(counter);
    let ts = Timestamp::now();
    ctx.with_capture(st, |b, e| b.connection_exception(ts, what, e));
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
mod tests;
