//! The destination→client direction of one connection: reads responses, frames them against
//! the requests awaiting them (the exchange's one queue), captures them cut at response
//! boundaries and writes them to the client unchanged.
//!
//! Its dependencies are its parent `conn`'s (it is the parent's code, split).
//!
//! Invariant (besides the parent's): a response is captured unless the request it answers was
//! suppressed; an unsolicited one (no request awaiting) is captured.

use monoio::buf::IoBuf;

use super::{
    body_not_forwarded, Exchange, ReadBufs, U2cEnd, IDLE_READ_BYTES_UPSTREAM,
    RECORD_SOFT_FLUSH_BYTES,
};
use crate::capture::encode::Timestamp;
use crate::http1::REvent;
use crate::stats::Counter;
use crate::tls::{StreamRead, StreamWrite};
use crate::worker::{ConnState, Ctx, StopReason};

pub(super) async fn upstream_to_client<UR: StreamRead, CW: StreamWrite>(
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
        buf = bufs.choose(&ctx.bufs, buf, x.awaiting() == 0 && !last_full, last_full);
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
                if unanswered(x) > 0 {
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
                    Some(REvent::MessageComplete { id, .. }) => {
                        if capturing && captured(id) {
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
                    Some(REvent::Upgraded { id }) => {
                        if capturing && captured(id) {
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
                        if x.on_response_head(interim) && !x.c2u_done.get() {
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
        if x.c2u_done.get() && x.awaiting() == 0 {
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

/// Forwarded requests whose response has not started (a started one that breaks off is
/// reported as such by the caller).
fn unanswered(x: &Exchange) -> usize {
    x.awaiting()
        .saturating_sub(usize::from(x.resp_started.get()))
}

/// Notes in the capture what ended the destination connection (`what`) and how many forwarded
/// requests it left unanswered (counted).
fn unanswered_at_close(ctx: &Ctx, st: &ConnState, x: &Exchange, what: &str) {
    let n = unanswered(x);
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

/// Is the response in progress captured? (A response with no forwarded request, i.e.
/// unsolicited, is.)
fn current_response_captured(x: &Exchange) -> bool {
    x.resp.borrow_mut().front_mut().is_none_or(|a| a.capture)
}

/// Is the response that just completed (answering the request with this value) captured?
fn captured(id: Option<super::Awaiting>) -> bool {
    id.is_none_or(|a| a.capture)
}

/// The first byte of the oldest unanswered request's response arrived: time it (once per
/// request; an interim response's first byte counts).
fn response_first_byte(ctx: &Ctx, x: &Exchange) {
    let sent = x
        .resp
        .borrow_mut()
        .front_mut()
        .and_then(|a| a.sent_at.take());
    if let Some(t) = sent {
        ctx.stats
            .record(&ctx.stats.upstream_response_us, t.elapsed());
    }
}

/// A final response completed (the framer dropped its request from the queue).
fn response_done(st: &ConnState, x: &Exchange) {
    x.publish(st);
    x.resp_started.set(false);
}
