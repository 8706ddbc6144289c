//! OTLP metrics export (`--otelMetricsCollectorEndpoint`), as the Java proxy sends them:
//! OTLP/gRPC `MetricsService/Export` every `--otel-metrics-export-interval` (default 1 s, the
//! Java proxy's periodic reader), cumulative temporality, resource `service.name=capture`.
//!
//! Owns: the exporter thread (`cp-otlp`) with its current-thread tokio runtime, the export
//! schedule, the final export at shutdown, and the failure policy (count, warn at most once a
//! minute, go on). What is exported is the admin endpoint's [`snapshot`](crate::admin::snapshot)
//! (`metrics` turns it into the OTLP messages of `proto`; `client` sends them).
//!
//! May depend on: `admin` (the snapshot), `config` (the endpoint), `stats` (the exporter's
//! counters and the rate limiter), `tls` (the collector's TLS configuration).
//!
//! Invariant: exports run only on this module's one thread, never on a worker or the sink
//! thread, and read only what `/metrics` reads (relaxed atomics, histogram merges), so no
//! per-request work is added on the data path. A collector that is down, refuses or is slow
//! costs a failed export (counted, rate-limited warning), never an exit or a blocked worker.
//! An export takes at most [`EXPORT_TIMEOUT`]; `Exporter::shutdown` returns within
//! `EXPORT_TIMEOUT + FINAL_EXPORT_TIMEOUT` (plus a DNS lookup).

mod client;
mod metrics;
mod proto;

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;

pub use client::ExportError;

use crate::admin::AdminState;
use crate::config::OtelMetricsConfig;
use crate::stats::RateLimit;

/// Most time one periodic export may take (connect, TLS, the call), in seconds. 5 s is far
/// beyond a collector in the same region; an export that takes longer fails (and is counted)
/// so that shutdown is never held longer than this plus the final export.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most time the final export at shutdown may take.
pub const FINAL_EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two warnings about failed exports.
const WARN_PERIOD: Duration = Duration::from_secs(60);

/// Start-up failures of the exporter (the collector is not contacted at start).
#[derive(Debug, thiserror::Error)]
pub enum OtlpStartError {
    #[error("OTLP exporter runtime: {0}")]
    Runtime(std::io::Error),
    #[error("OTLP collector: {0}")]
    Client(#[from] ExportError),
    #[error("cannot start the OTLP exporter thread: {0}")]
    Thread(std::io::Error),
}

/// The running exporter.
pub(crate) struct Exporter {
    stop: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Makes the final export (bounded by [`FINAL_EXPORT_TIMEOUT`]) and stops the thread.
    pub(crate) fn shutdown(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the exporter thread; its first export is one interval after start.
pub(crate) fn start(cfg: OtelMetricsConfig, state: AdminState) -> Result<Exporter, OtlpStartError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(OtlpStartError::Runtime)?;
    let client = client::Client::new(cfg.endpoint.clone())?;
    let (stop, stopped) = mpsc::channel();
    let endpoint = endpoint_text(&cfg);
    tracing::info!(
        endpoint = %endpoint,
        interval_ms = cfg.export_interval.as_millis() as u64,
        "exporting OTLP metrics"
    );
    let mut task = Task {
        rt,
        client,
        state,
        endpoint,
        start_ns: unix_ns(),
        warn: RateLimit::new(WARN_PERIOD),
        failing: false,
    };
    let interval = cfg.export_interval;
    let thread = std::thread::Builder::new()
        .name("cp-otlp".into())
        .spawn(move || task.run(interval, stopped))
        .map_err(OtlpStartError::Thread)?;
    Ok(Exporter {
        stop,
        thread: Some(thread),
    })
}

fn endpoint_text(cfg: &OtelMetricsConfig) -> String {
    let e = &cfg.endpoint;
    let scheme = if e.tls { "https" } else { "http" };
    if e.host.contains(':') {
        format!("{scheme}://[{}]:{}", e.host, e.port)
    } else {
        format!("{scheme}://{}:{}", e.host, e.port)
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

struct Task {
    rt: tokio::runtime::Runtime,
    client: client::Client,
    state: AdminState,
    endpoint: String,
    /// Start of every cumulative series: when the exporter started.
    start_ns: u64,
    warn: RateLimit,
    /// The last export failed (the next success is logged once).
    failing: bool,
}

impl Task {
    fn run(&mut self, interval: Duration, stopped: mpsc::Receiver<()>) {
        let mut next = Instant::now() + interval;
        loop {
            let wait = next.saturating_duration_since(Instant::now());
            match stopped.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                    self.export(FINAL_EXPORT_TIMEOUT);
                    return;
                }
            }
            self.export(EXPORT_TIMEOUT);
            next += interval;
            let now = Instant::now();
            if next < now {
                // An export overran whole intervals: skip them rather than export in a burst.
                next = now + interval;
            }
        }
    }

    fn export(&mut self, timeout: Duration) {
        let snapshot = crate::admin::snapshot(&self.state);
        let request = metrics::request(&snapshot, &self.state.node_id, self.start_ns, unix_ns());
        let bytes = request.encode_to_vec();
        let client = &mut self.client;
        let result = self.rt.block_on(async {
            match tokio::time::timeout(timeout, client.export(&bytes)).await {
                Ok(r) => r,
                Err(_) => Err(ExportError::Timeout(timeout)),
            }
        });
        let stats = &self.state.export;
        match result {
            Ok(accepted) => {
                stats.exports.fetch_add(1, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    tracing::info!(endpoint = %self.endpoint, "OTLP metrics export works again");
                }
                if accepted.rejected > 0 {
                    if let Some(suppressed) = self.warn.allow() {
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            rejected = accepted.rejected,
                            message = %accepted.message,
                            suppressed,
                            "OTLP collector rejected some data points"
                        );
                    }
                }
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                self.failing = true;
                if let Some(suppressed) = self.warn.allow() {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        error = %e,
                        suppressed,
                        "OTLP metrics export failed (counted in otlpExportFailures; retried next interval)"
                    );
                }
            }
        }
    }
}
