//! Per-worker counters and histograms, and the rate limiter used for repeated warnings.
//!
//! May depend on: std, hdrhistogram. Each worker owns one [`WorkerStats`]; only that worker
//! writes it (relaxed atomics on its own cache lines, so no contention and no locks on the
//! hot path); readers (the admin endpoint, tests) sum the workers' values off the hot path.
//!
//! Invariant: a counter only ever increases; gauges are derived (e.g. active connections =
//! accepted − closed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Handover counters of the process (not per worker): `SIGUSR2` handovers begun and those
/// that failed (the process kept serving). Written by the main thread only.
#[derive(Debug, Default)]
pub struct HandoverStats {
    pub started: AtomicU64,
    pub failed: AtomicU64,
}

macro_rules! counters {
    ($( $variant:ident => $name:literal, $help:literal; )*) => {
        /// Every counter a worker keeps. The Prometheus name is the Java proxy's where one
        /// exists, so dashboards carry over.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $( $variant, )* }
        impl Counter {
            pub(crate) const ALL: &'static [Counter] = &[ $( Counter::$variant, )* ];
            pub fn name(self) -> &'static str { match self { $( Counter::$variant => $name, )* } }
            pub(crate) fn help(self) -> &'static str { match self { $( Counter::$variant => $help, )* } }
        }
    };
}

counters! {
    ConnAccepted => "connectionsAccepted", "client connections accepted";
    AcceptErrors => "acceptErrors", "failed accepts (e.g. at the open-files limit; warned at most every 10 s per worker)";
    ConnClosed => "connectionsClosed", "client connections closed (any reason)";
    ConnClosedClient => "connectionsClosedByClient", "connections the client ended (FIN)";
    ConnClosedUpstream => "connectionsClosedByUpstream", "connections the destination ended";
    ConnClosedError => "connectionsClosedOnError", "connections ended by an I/O or protocol error";
    ConnClosedTimeout => "connectionsClosedOnTimeout", "connections ended by an idle or head timeout";
    ConnClosedDrain => "connectionsClosedOnDrain", "connections closed by graceful shutdown";
    BytesRead => "bytesRead", "bytes received from clients";
    BytesWritten => "bytesWritten", "bytes sent to clients";
    Requests => "requests", "complete requests received";
    RequestsMutating => "requestsMutating", "complete POST/PUT/DELETE/PATCH requests";
    RequestsGetHead => "requestsGetHead", "complete GET/HEAD requests";
    RequestsOtherMethod => "requestsOtherMethod", "complete requests with any other method (OPTIONS, TRACE, CONNECT, unknown)";
    FullRequest => "fullRequest", "captured requests (end-of-message markers written)";
    CaptureSuppressed => "captureSuppressed", "requests forwarded but not captured";
    RequestDropped => "requestDropped", "suppressed requests that left a requestDropped marker";
    BlockingRequest => "blockingRequest", "mutating requests held until their record was committed";
    HoldFailed => "holdFailed", "held requests whose record failed or timed out";
    HoldRejected => "holdRejected", "held requests answered 503 under --capture-failure-policy reject";
    RecordsEmitted => "captureRecords", "TrafficStream records handed to the sink";
    RecordBytes => "captureRecordBytes", "bytes of TrafficStream records handed to the sink";
    RecordsCommitted => "kafkaCommitCount", "records acknowledged by the sink";
    RecordsLost => "captureRecordsLost", "records the sink could not commit";
    FinalRecordWaited => "captureFinalRecordsWaited", "closed connections whose final record waited for earlier records' acks (so a late loss is still named)";
    FinalRecordWaitEnded => "captureFinalRecordsWaitEnded", "of those, final records written since";
    UpstreamConnectFailed => "upstreamConnectFailed", "destination connects that failed (502)";
    UpstreamReset => "upstreamErrors", "destination I/O errors in mid-exchange";
    UpstreamMalformed => "upstreamMalformedResponses", "responses the framer rejected";
    ClientErrors => "clientErrors", "client I/O errors (resets)";
    Malformed => "malformedRequests", "requests answered 400";
    NotImplemented => "requestsNotImplemented", "requests answered 501 (a Transfer-Encoding other than exactly chunked)";
    ExpectationFailed => "requestsExpectationFailed", "requests answered 417 (an Expect other than 100-continue)";
    BytesAfterClose => "bytesIgnoredAfterClose", "client bytes after a connection-ending request (neither forwarded nor captured)";
    BodyNotForwarded => "requestBodiesNotForwarded", "request bodies (or their rest) not forwarded because the destination answered first; connection closed";
    UnansweredAtClose => "requestsUnansweredAtClose", "forwarded requests the destination closed or failed without answering (marked in the capture; the client connection is closed)";
    HeadTooLarge => "requestHeadTooLarge", "requests answered 431";
    HeadTimeout => "requestHeadTimeouts", "requests answered 408 (slow head)";
    BodyTimeout => "requestBodyTimeouts", "connections closed (408 when nothing was answered yet) after --request-body-timeout without a byte inside a request";
    IdleTimeout => "clientIdleTimeouts", "connections closed as idle";
    Http2Passthrough => "http2Passthrough", "connections that sent the HTTP/2 preface (forwarded, not captured)";
    SinkBackpressure => "sinkBackpressureWaits", "times a connection paused reading because the sink queue was full";
    TlsHandshakeFailed => "tlsHandshakeFailed", "client TLS handshakes that failed (connection closed, nothing captured)";
    DestPoolHot => "destinationPoolHot", "client connections given a ready pre-connected destination connection";
    DestPoolCold => "destinationPoolCold", "client connections that found the destination pool empty and connected";
    DestPoolExpired => "destinationPoolExpired", "ready destination connections dropped unused after --destinationConnectionPoolTimeout";
    DestPoolDiscarded => "destinationPoolDiscarded", "ready destination connections dropped because the destination had closed them";
    DestPoolConnectFailed => "destinationPoolConnectFailed", "destination pool refill connects that failed";
}

const N_COUNTERS: usize = Counter::ALL.len();

/// One worker's counters.
#[derive(Debug)]
pub struct WorkerStats {
    values: [AtomicU64; N_COUNTERS],
    /// Histograms (microseconds), written by the owner, merged by readers.
    /// Time from a request's head being forwarded (a held request: from its release) to the
    /// first byte of its response.
    pub upstream_response_us: Mutex<hdrhistogram::Histogram<u64>>,
    /// Time a mutating request was held waiting for its record's outcome.
    pub hold_us: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            values: std::array::from_fn(|_| AtomicU64::new(0)),
            upstream_response_us: Mutex::new(new_histogram()),
            hold_us: Mutex::new(new_histogram()),
        }
    }
}

/// A latency histogram in microseconds: 1 µs .. 1 hour at 2 significant digits (~1 % error,
/// ~20 KiB). One hour bounds every latency the proxy measures (the longest is a slow upstream
/// response); larger values are clamped to it by [`record_into`].
pub(crate) fn new_histogram() -> hdrhistogram::Histogram<u64> {
    match hdrhistogram::Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 2) {
        Ok(h) => h,
        Err(_) => hdrhistogram::Histogram::new(2).unwrap_or_else(|_| unreachable_hist()),
    }
}

fn unreachable_hist() -> hdrhistogram::Histogram<u64> {
    // new(2) only fails for sigfig > 5; kept total for the no-panic rule.
    hdrhistogram::Histogram::new(3).unwrap_or_else(|_| std::process::abort())
}

impl WorkerStats {
    #[inline]
    pub(crate) fn add(&self, c: Counter, n: u64) {
        if let Some(v) = self.values.get(c as usize) {
            v.fetch_add(n, Ordering::Relaxed);
        }
    }
    #[inline]
    pub(crate) fn inc(&self, c: Counter) {
        self.add(c, 1)
    }
    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.values
            .get(c as usize)
            .map_or(0, |v| v.load(Ordering::Relaxed))
    }
    /// Records a duration in a histogram without blocking: if a reader holds it (the admin
    /// endpoint merging, for microseconds), this one sample is dropped.
    pub(crate) fn record(&self, h: &Mutex<hdrhistogram::Histogram<u64>>, d: Duration) {
        if let Ok(mut g) = h.try_lock() {
            record_into(&mut g, d);
        }
    }
}

/// Highest value (µs) [`new_histogram`] tracks: one hour.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// Records `d` (µs) in `h`, clamped to the histogram's range so no sample is lost.
pub(crate) fn record_into(h: &mut hdrhistogram::Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let _ = h.record(us.min(HISTOGRAM_MAX_US));
}

/// Sums a counter over workers.
pub fn total(workers: &[std::sync::Arc<WorkerStats>], c: Counter) -> u64 {
    workers.iter().map(|w| w.get(c)).sum()
}

/// The OTLP metrics exporter's counters; only its thread writes them.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Exports the collector accepted.
    pub exports: AtomicU64,
    /// Exports that failed (connect, TLS, HTTP/2 or gRPC error, or the timeout).
    pub failures: AtomicU64,
}

/// Allows one event per `period`, counting the ones it suppressed.
#[derive(Debug)]
pub(crate) struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(period: Duration) -> Self {
        RateLimit {
            period,
            last: None,
            suppressed: 0,
        }
    }
    /// `Some(number suppressed since the last allowed one)` when this one may be logged.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.period => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_and_names_unique() {
        let s = WorkerStats::default();
        s.inc(Counter::Requests);
        s.add(Counter::BytesRead, 10);
        assert_eq!(s.get(Counter::Requests), 1);
        assert_eq!(s.get(Counter::BytesRead), 10);
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }

    #[test]
    fn histogram_samples_are_clamped_not_lost() {
        let s = WorkerStats::default();
        s.record(&s.upstream_response_us, Duration::from_micros(250));
        s.record(&s.upstream_response_us, Duration::from_secs(10 * 3600));
        s.record(&s.upstream_response_us, Duration::ZERO);
        let h = s.upstream_response_us.lock().unwrap();
        assert_eq!(h.len(), 3);
        assert!(h.max() >= HISTOGRAM_MAX_US * 99 / 100, "{}", h.max());
        assert_eq!(h.count_between(200, 300), 1);
    }

    #[test]
    fn rate_limit_counts_suppressed() {
        let mut r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        r.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(r.allow(), Some(2));
    }
}
