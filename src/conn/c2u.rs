//! The client→destination direction of one connection as a state type: [`C2u`] owns the
//! request framer, the per-request facts and the destination's write half; one method per
//! framing event (head, message complete, frame error, HTTP/2 preface), one for the hold of a
//! captured mutating request, one for opaque passthrough. A read travels through them as a
//! [`Read`]: the buffer and its four cursors.
//!
//! Its dependencies are its parent `conn`'s (it is the parent's code, split).
//!
//! Invariants (besides the parent's):
//! - In a [`Read`], `fwd <= len`, `seg <= len` and `pos <= len`; bytes before `fwd` went
//!   upstream, bytes before `seg` are in the capture (or deliberately not captured).
//! - The framer is called until it reports no event: a call without an event consumed all of
//!   its input, and a bodiless request's `MessageComplete` comes on the call after its
//!   `HeadComplete`, even with no input left.
//! - Every method that ends the direction returns `Err(C2uEnd)`; nothing is written upstream
//!   after that.

use monoio::buf::IoBuf;

use super::{
    body_not_forwarded, count_and_note, warn_hold_failed, Awaiting, C2uEnd, Exchange, Gate,
    ReadBufs, IDLE_READ_BYTES_CLIENT, REJECTED_NOTE, RESP_400, RESP_408, RESP_417, RESP_431,
    RESP_501, RESP_503,
};
use crate::capture::encode::Timestamp;
use crate::config::FailurePolicy;
use crate::handoff::Outcome;
use crate::http1::request::Method;
use crate::http1::{
    BodyKind, Event, ExpectedResponse, FrameError, FramerLimits, HeadRewriter, RequestFramer,
};
use crate::stats::Counter;
use crate::tls::{StreamRead, StreamWrite};
use crate::worker::{ConnState, Ctx, StopReason};

/// Per-request facts of the request being read.
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

/// What a request head says, kept past the framer's borrow of the bytes.
#[derive(Clone, Copy)]
struct HeadFacts {
    head_len: usize,
    method: Method,
    closing: bool,
    has_body: bool,
    expect_continue: bool,
    suppressed: bool,
}

/// One read from the client, being framed, captured and forwarded.
pub(super) struct Read {
    pub(super) buf: Vec<u8>,
    /// Bytes read (`buf[..len]`).
    len: usize,
    /// Framed so far.
    pos: usize,
    /// Start of the not-yet-captured part of the current request.
    seg: usize,
    /// Forwarded so far.
    fwd: usize,
    /// Where the current request's bytes start in this read.
    req_start: usize,
    /// When the read arrived (observations of it carry this time).
    ts: Timestamp,
}

impl Read {
    pub(super) fn new(buf: Vec<u8>) -> Self {
        Read {
            buf,
            len: 0,
            pos: 0,
            seg: 0,
            fwd: 0,
            req_start: 0,
            ts: Timestamp::now(),
        }
    }

    /// A new read of `n` bytes into `buf` arrived at `ts`.
    fn arrived(&mut self, n: usize, ts: Timestamp) {
        self.len = n.min(self.buf.len());
        self.pos = 0;
        self.seg = 0;
        self.fwd = 0;
        self.req_start = 0;
        self.ts = ts;
    }

    /// `buf[from..to]`, clamped to the read.
    fn part(&self, from: usize, to: usize) -> &[u8] {
        self.buf.get(from..to.min(self.len)).unwrap_or(&[])
    }
}

/// The client→destination direction.
pub(super) struct C2u<'a, CR, UW> {
    ctx: &'a Ctx,
    st: &'a ConnState,
    x: &'a Exchange,
    cr: CR,
    uw: UW,
    framer: RequestFramer,
    rq: ReqState,
    capturing: bool,
    /// `--setHeader`: heads are held until complete, then their rewritten form goes upstream
    /// (the capture keeps the client's original bytes).
    rewriter: Option<HeadRewriter>,
    /// A rewritten head waiting to go upstream before the next forwarded bytes.
    pending_head: Option<Vec<u8>>,
    /// The spare buffer rewritten heads are built in.
    head_buf: Vec<u8>,
    bufs: ReadBufs,
    last_full: bool,
}

impl<'a, CR: StreamRead, UW: StreamWrite> C2u<'a, CR, UW> {
    pub(super) fn new(
        ctx: &'a Ctx,
        st: &'a ConnState,
        x: &'a Exchange,
        cr: CR,
        uw: UW,
        limits: FramerLimits,
    ) -> Self {
        C2u {
            ctx,
            st,
            x,
            cr,
            uw,
            framer: RequestFramer::new(limits),
            rq: ReqState::default(),
            capturing: ctx.settings.capture.is_some(),
            rewriter: ctx.settings.rewriter.clone(),
            pending_head: None,
            head_buf: Vec::new(),
            bufs: ReadBufs::new(IDLE_READ_BYTES_CLIENT),
            last_full: false,
        }
    }

    /// Reads, frames, captures and forwards until the direction ends; returns how.
    pub(super) async fn run(mut self) -> C2uEnd {
        let mut r = Read::new(Vec::with_capacity(IDLE_READ_BYTES_CLIENT));
        let end = loop {
            if let Err(end) = self.read(&mut r).await {
                break end;
            }
            let outcome = if self.x.opaque.get() {
                self.passthrough(&mut r).await
            } else {
                self.frame(&mut r).await
            };
            if let Err(end) = outcome {
                break end;
            }
        };
        self.ended(end, r).await
    }

    /// Waits for the next read (pausing while the sink is congested).
    async fn read(&mut self, r: &mut Read) -> Result<(), C2uEnd> {
        let (ctx, st) = (self.ctx, self.st);
        if let Some(why) = st.c2u_stop.get() {
            return Err(C2uEnd::Stopped(why));
        }
        if ctx.sink_congested() {
            ctx.wait_uncongested().await;
        }
        let idle = st.req_idle.get() && !self.last_full;
        let mut buf = self
            .bufs
            .choose(&ctx.bufs, std::mem::take(&mut r.buf), idle, self.last_full);
        buf.clear();
        let (res, buf) = self.cr.recv(buf, st.c2u_handle()).await;
        r.buf = buf;
        self.last_full = matches!(res, Ok(n) if n >= r.buf.capacity());
        let n = match res {
            Ok(0) => return Err(C2uEnd::ClientEof),
            Ok(n) => n,
            Err(e) => {
                if let Some(why) = st.c2u_stop.get() {
                    return Err(C2uEnd::Stopped(why));
                }
                ctx.stats.inc(Counter::ClientErrors);
                let ts = Timestamp::now();
                let msg = e.to_string();
                ctx.with_capture(st, |b, e| b.connection_exception(ts, &msg, e));
                return Err(C2uEnd::ClientError);
            }
        };
        if st.c2u_stop.get() == Some(StopReason::Drain) {
            // The client's next request came as the drain closed the idle connection: serve
            // it (the drain closes after its response) instead of dropping bytes already read.
            st.c2u_stop.set(None);
        }
        st.used.set(true);
        r.arrived(n, Timestamp::now());
        let now_ms = ctx.now_ms();
        st.last_activity.set(now_ms);
        st.last_client_read.set(now_ms);
        ctx.stats.add(Counter::BytesRead, n as u64);
        Ok(())
    }

    /// After an upgrade or the HTTP/2 preface: forward raw, capture nothing.
    async fn passthrough(&mut self, r: &mut Read) -> Result<(), C2uEnd> {
        let len = r.len;
        self.write_up(r, 0, len).await
    }

    /// Frames the read; captures it cut at request boundaries; forwards it, holding the final
    /// bytes of captured mutating requests until their record is committed.
    async fn frame(&mut self, r: &mut Read) -> Result<(), C2uEnd> {
        loop {
            let input = r.buf.get(r.pos..r.len).unwrap_or(&[]);
            let step = match self.framer.advance(input) {
                Ok(s) => s,
                Err(fe) => return Err(self.on_frame_error(r, fe).await),
            };
            r.pos += step.consumed;
            match step.event {
                None => break,
                Some(Event::HeadComplete(head)) => {
                    let facts = HeadFacts {
                        head_len: head.head_len as usize,
                        method: head.method,
                        closing: head.connection_close,
                        has_body: !matches!(head.body, BodyKind::None | BodyKind::ContentLength(0)),
                        expect_continue: head.expect_continue,
                        suppressed: self.capturing
                            && self.ctx.settings.suppress_any
                            && crate::http1::is_suppressed(&self.ctx.settings.suppress, &head),
                    };
                    // The rewritten head (if any) is built while the framer lends its bytes.
                    let rewritten = self.rewriter.as_mut().map(|rw| {
                        let mut out = std::mem::take(&mut self.head_buf);
                        out.clear();
                        // A head the rewriter does not understand goes on unchanged.
                        out.extend_from_slice(rw.rewrite(head.raw).unwrap_or(head.raw));
                        out
                    });
                    self.on_head(r, facts, rewritten).await?;
                }
                Some(Event::MessageComplete {
                    first_line_len,
                    headers_len,
                }) => {
                    self.on_message_complete(r, first_line_len, headers_len)
                        .await?
                }
                Some(Event::Http2Preface) => self.on_preface(r),
            }
        }
        self.end_of_read(r).await
    }

    /// A request head is complete: note the request as awaiting its response; with
    /// `--setHeader` forward what precedes it and hold its rewritten form; with
    /// `Expect: 100-continue` send the head and wait for the destination's word on the body.
    async fn on_head(
        &mut self,
        r: &mut Read,
        head: HeadFacts,
        rewritten: Option<Vec<u8>>,
    ) -> Result<(), C2uEnd> {
        let (ctx, st, x) = (self.ctx, self.st, self.x);
        self.rq.head_done = true;
        self.rq.closing = head.closing;
        self.rq.mutating = head.method.is_mutating();
        self.rq.get_head = matches!(head.method, Method::Get | Method::Head);
        self.rq.suppressed = head.suppressed;
        x.body_open.set(head.has_body);
        let gate = head.has_body && head.expect_continue;
        if gate {
            x.gate.set(Gate::Waiting);
        }
        st.head_started.set(None);
        x.awaiting_push(
            st,
            ExpectedResponse {
                id: Awaiting {
                    capture: !head.suppressed,
                    sent_at: Some(std::time::Instant::now()),
                },
                method_head: head.method == Method::Head,
                method_connect: head.method == Method::Connect,
            },
        );
        if head.suppressed {
            ctx.stats.inc(Counter::CaptureSuppressed);
            if self.rq.reads_written {
                ctx.stats.inc(Counter::RequestDropped);
                let ts = r.ts;
                ctx.with_capture(st, |b, e| b.request_dropped(ts, e));
            }
            // Nothing more of this request is captured.
            r.seg = r.pos;
        }
        if let Some(new_head) = rewritten {
            // Forward what precedes this head (and any earlier rewritten head) now; the
            // rewritten head is held until the next forward.
            let head_start = r.pos.saturating_sub(head.head_len).max(r.fwd);
            self.flush_up(r, head_start).await?;
            self.pending_head = Some(new_head);
            r.fwd = r.pos;
        }
        if gate {
            self.gate_body(r).await?;
        }
        Ok(())
    }

    /// `Expect: 100-continue`: the head goes now, the body once the destination said so (a
    /// final answer first means it never goes). Captured first, as every read is before its
    /// bytes are forwarded.
    async fn gate_body(&mut self, r: &mut Read) -> Result<(), C2uEnd> {
        let (ctx, st) = (self.ctx, self.st);
        if r.seg < r.pos && !self.rq.suppressed {
            let (part, ts) = (r.part(r.seg, r.pos), r.ts);
            ctx.with_capture(st, |b, e| b.read(ts, part, e));
            self.rq.reads_written = self.capturing;
            r.seg = r.pos;
        }
        let to = r.pos;
        self.flush_up(r, to).await?;
        if !self.x.wait_continue().await {
            body_not_forwarded(ctx, st);
            return Err(C2uEnd::Stopped(StopReason::PeerDone));
        }
        // The rest of this read is captured after the destination's 100 Continue (a write
        // observation by now): its timestamp must not go back before it.
        r.ts = Timestamp::now();
        Ok(())
    }

    /// A request is complete: count it, capture its last bytes and its end-of-message marker,
    /// hold it if it is a captured mutating one, and end the direction after a
    /// connection-ending one.
    async fn on_message_complete(
        &mut self,
        r: &mut Read,
        first_line_len: u32,
        headers_len: u32,
    ) -> Result<(), C2uEnd> {
        let (ctx, st) = (self.ctx, self.st);
        ctx.stats.inc(Counter::Requests);
        self.x.body_open.set(false);
        let this_start = r.req_start;
        r.req_start = r.pos;
        let rq = std::mem::take(&mut self.rq);
        if rq.mutating {
            ctx.stats.inc(Counter::RequestsMutating);
        } else if rq.get_head {
            ctx.stats.inc(Counter::RequestsGetHead);
        } else {
            ctx.stats.inc(Counter::RequestsOtherMethod);
        }
        let mut hold = false;
        if !rq.suppressed {
            let holds = self.capturing && rq.mutating;
            let (part, ts) = (r.part(r.seg, r.pos), r.ts);
            let flushed = ctx.with_capture(st, |b, e| {
                if !part.is_empty() {
                    b.read(ts, part, e);
                }
                b.end_of_message(ts, first_line_len, headers_len, e);
                if holds {
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
        r.seg = r.pos;
        if hold {
            self.hold(r, this_start).await?;
        }
        if rq.closing {
            // RFC 9112 §9.6: nothing after a connection-ending request is run by the
            // destination, so nothing after it is forwarded or captured.
            let to = r.pos;
            self.flush_up(r, to).await?;
            let rest = r.len.saturating_sub(r.pos);
            ctx.stats.add(Counter::BytesAfterClose, rest as u64);
            return Err(C2uEnd::ConnectionEnding);
        }
        Ok(())
    }

    /// A captured mutating request is complete: forward what precedes its final bytes (which
    /// start at `this_start`), then wait until its record is committed or the failure policy
    /// decides.
    async fn hold(&mut self, r: &mut Read, this_start: usize) -> Result<(), C2uEnd> {
        let (ctx, st, x) = (self.ctx, self.st, self.x);
        let this_req_start = this_start.max(r.fwd);
        if r.fwd < this_req_start {
            let from = r.fwd;
            self.write_up(r, from, this_req_start).await?;
            r.fwd = this_req_start;
        }
        ctx.stats.inc(Counter::BlockingRequest);
        ctx.urgent_flush();
        let started = std::time::Instant::now();
        let outcome = ctx.wait_hold(st).await;
        ctx.stats.record(&ctx.stats.hold_us, started.elapsed());
        // Its response cannot start before its last bytes go upstream: time the destination
        // from the release, not from the head.
        x.released(std::time::Instant::now());
        if let Outcome::Failed(kind) = outcome {
            ctx.stats.inc(Counter::HoldFailed);
            warn_hold_failed(kind);
            if ctx.settings.capture_failure_policy == FailurePolicy::Reject {
                ctx.stats.inc(Counter::HoldRejected);
                // The record may still be committed later (a broker that comes back): say in
                // the capture that this request was not forwarded, so the loss of consistency
                // is visible.
                let ts = Timestamp::now();
                ctx.with_capture(st, |b, e| b.connection_exception(ts, REJECTED_NOTE, e));
                // Earlier bytes of the request may have gone upstream: that connection is
                // unusable now; answer 503 and close both.
                st.stop_u2c(StopReason::PeerDone);
                return Err(C2uEnd::Respond(RESP_503));
            }
        }
        Ok(())
    }

    /// The client started HTTP/2 (the whole preface at the connection's start): from here on
    /// bytes are forwarded raw and nothing more is captured.
    fn on_preface(&mut self, r: &mut Read) {
        let (ctx, st) = (self.ctx, self.st);
        ctx.stats.inc(Counter::Http2Passthrough);
        ctx.stats.inc(Counter::CaptureSuppressed);
        if self.rq.reads_written {
            ctx.stats.inc(Counter::RequestDropped);
            let ts = r.ts;
            ctx.with_capture(st, |b, e| b.request_dropped(ts, e));
        }
        self.x.opaque.set(true);
        r.seg = r.len;
        r.pos = r.len;
    }

    /// The framer refused the request: capture what was read and the reason, forward the
    /// complete requests that preceded it, and answer 400/431/501/417.
    async fn on_frame_error(&mut self, r: &mut Read, fe: FrameError) -> C2uEnd {
        let (ctx, st) = (self.ctx, self.st);
        let (status, counter, what) = match fe {
            FrameError::HeadTooLarge => (RESP_431, Counter::HeadTooLarge, "request head too large"),
            FrameError::NotImplemented(_) => (RESP_501, Counter::NotImplemented, "request refused"),
            FrameError::ExpectationFailed => {
                (RESP_417, Counter::ExpectationFailed, "request refused")
            }
            FrameError::Malformed(_) => (RESP_400, Counter::Malformed, "malformed request"),
        };
        ctx.stats.inc(counter);
        if !self.rq.suppressed {
            let (part, ts) = (r.part(r.seg, r.len), r.ts);
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
        let to = r.seg;
        match self.flush_up(r, to).await {
            Ok(()) => C2uEnd::Respond(status),
            Err(end) => end,
        }
    }

    /// The framer consumed the whole read: capture the tail (it belongs to a request in
    /// progress) and forward what may go (with `--setHeader`, an incomplete head stays held:
    /// the framer keeps its bytes).
    async fn end_of_read(&mut self, r: &mut Read) -> Result<(), C2uEnd> {
        let (ctx, st) = (self.ctx, self.st);
        if r.seg < r.len && !self.rq.suppressed && !self.x.opaque.get() {
            let (part, ts) = (r.part(r.seg, r.len), r.ts);
            ctx.with_capture(st, |b, e| b.read(ts, part, e));
            self.rq.reads_written = self.capturing;
        }
        let in_msg = self.framer.in_message();
        st.req_idle.set(!in_msg);
        if in_msg && !self.rq.head_done && st.head_started.get().is_none() {
            st.head_started.set(Some(ctx.now_ms()));
        }
        let to = if self.rewriter.is_some() && in_msg && !self.rq.head_done {
            r.req_start.max(r.fwd)
        } else {
            r.len
        };
        self.flush_up(r, to).await
    }

    /// Writes a pending rewritten head (if any), then `buf[fwd..to]`, upstream; `fwd` moves
    /// to `to`.
    async fn flush_up(&mut self, r: &mut Read, to: usize) -> Result<(), C2uEnd> {
        if let Some(head) = self.pending_head.take() {
            let (res, mut head) = self.uw.send_all(head, self.st.c2u_handle()).await;
            head.clear();
            self.head_buf = head;
            if res.is_err() {
                return Err(C2uEnd::UpstreamWriteError);
            }
        }
        if r.fwd < to {
            let from = r.fwd;
            self.write_up(r, from, to).await?;
            r.fwd = to;
        }
        Ok(())
    }

    /// Writes `buf[from..to]` upstream (nothing once the direction was asked to stop: e.g.
    /// the destination answered before the body was complete).
    async fn write_up(&mut self, r: &mut Read, from: usize, to: usize) -> Result<(), C2uEnd> {
        if self.st.c2u_stop.get().is_some() {
            return Err(C2uEnd::UpstreamWriteError);
        }
        let buf = std::mem::take(&mut r.buf);
        let end = to.min(buf.len());
        let start = from.min(end);
        let (res, slice) = self
            .uw
            .send_all(buf.slice(start..end), self.st.c2u_handle())
            .await;
        r.buf = slice.into_inner();
        res.map(|_| ()).map_err(|_| C2uEnd::UpstreamWriteError)
    }

    /// The direction ended with `end`: linger after a connection-ending request, account for
    /// timeouts, tell the other direction, and turn a timeout into the answer it deserves.
    async fn ended(mut self, end: C2uEnd, mut r: Read) -> C2uEnd {
        let (ctx, st, x) = (self.ctx, self.st, self.x);
        if matches!(end, C2uEnd::ConnectionEnding) {
            // Keep reading (and dropping) what the client still sends until the responses are
            // out: closing with unread bytes would reset the connection under the response.
            x.c2u_done.set(true);
            if x.awaiting() == 0 {
                st.stop_u2c(StopReason::PeerDone);
            }
            let mut buf = self
                .bufs
                .choose(&ctx.bufs, std::mem::take(&mut r.buf), true, false);
            while st.c2u_stop.get().is_none() {
                buf.clear();
                let (res, b) = self.cr.recv(buf, st.c2u_handle()).await;
                buf = b;
                match res {
                    Ok(n) if n > 0 => ctx.stats.add(Counter::BytesAfterClose, n as u64),
                    _ => break,
                }
            }
            r.buf = buf;
        }
        ctx.bufs.put(std::mem::take(&mut r.buf));
        match &end {
            C2uEnd::ClientEof => {
                // Half-close toward the destination; responses keep flowing.
                let _ = self.uw.half_close().await;
            }
            C2uEnd::Stopped(StopReason::HeadTimeout) => {
                count_and_note(ctx, st, Counter::HeadTimeout, "request head timeout");
            }
            C2uEnd::Stopped(StopReason::IdleTimeout) => ctx.stats.inc(Counter::IdleTimeout),
            C2uEnd::Stopped(StopReason::BodyTimeout) => count_and_note(
                ctx,
                st,
                Counter::BodyTimeout,
                "request body timeout: the client stopped sending",
            ),
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
        if abort || x.awaiting() == 0 {
            st.stop_u2c(StopReason::PeerDone);
        }
        drop(self);
        match end {
            C2uEnd::Stopped(StopReason::HeadTimeout) if x.awaiting() == 0 => {
                C2uEnd::Respond(RESP_408)
            }
            // The request in progress is the only one outstanding and nothing of its answer
            // came: 408 (the destination's half of it is cut with this connection).
            C2uEnd::Stopped(StopReason::BodyTimeout)
                if x.awaiting() <= 1 && !x.resp_started.get() =>
            {
                C2uEnd::Respond(RESP_408)
            }
            other => other,
        }
    }
}
