//! OTLP metrics export (`--otelMetricsCollectorEndpoint`) against a real OpenTelemetry
//! Collector (OTLP/gRPC receiver, file exporter writing one JSON line per export), built by
//! `scripts/otel-collector.sh build`. The real proxy binary runs scripted traffic through a
//! local origin; the test reads what the collector received and checks instrument names,
//! units, kinds, temporality, the resource, and values against the traffic and against the
//! proxy's own `/metrics`.
//!
//! Without a built collector the collector tests skip with a printed reason, unless
//! `CAPTURE_PROXY_REQUIRE_OTEL=1` (CI), where they fail. The unreachable-collector test needs
//! no collector and always runs.
//!
//! May depend on: the proxy binary and the harness in `common`, the collector binary, serde_json.
//!
//! Invariant: every wait is a bounded poll of an observable (the collector's output file, the
//! admin endpoint, the process), never a sleep standing in for synchronisation; only
//! 127.0.0.1 is contacted.

use crate::common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::admin::admin_get;
use common::binary::{proxy_command, ProxyProcess, STARTUP_TIMEOUT};
use common::{finish_client, get, post, Client, Origin};
use serde_json::Value;

/// Bound on the collector's start (it listens within a second; generous for a busy machine).
const COLLECTOR_START: Duration = Duration::from_secs(30);
/// Bound on seeing an export that reflects the traffic (several 200 ms intervals).
const EXPORT_WAIT: Duration = Duration::from_secs(30);
/// Bound on the proxy's exit after SIGTERM: drain, sink, and the bounded final export.
const EXIT_WAIT: Duration = Duration::from_secs(20);
/// Pause between polls of the collector's output file.
const POLL: Duration = Duration::from_millis(50);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The built collector, or why there is none (skip, or fail under CAPTURE_PROXY_REQUIRE_OTEL=1).
fn collector_binary() -> Option<PathBuf> {
    let out = Command::new(repo().join("scripts/otel-collector.sh"))
        .arg("path")
        .stderr(Stdio::piped())
        .output()
        .expect("run scripts/otel-collector.sh path");
    if out.status.success() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.is_file() {
            return Some(p);
        }
    }
    let reason = format!(
        "no OpenTelemetry Collector built ({}); run scripts/otel-collector.sh build",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if std::env::var("CAPTURE_PROXY_REQUIRE_OTEL").as_deref() == Ok("1") {
        panic!("CAPTURE_PROXY_REQUIRE_OTEL=1 but {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

/// A running collector writing every export it receives to `out` (JSON lines); killed on drop.
struct Collector {
    child: Child,
    port: u16,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    fn start(bin: &Path) -> Collector {
        Self::start_with(bin, None)
    }

    /// `tls`: PEM files (certificate chain, key) for the receiver's TLS.
    fn start_with(bin: &Path, tls: Option<(&Path, &Path)>) -> Collector {
        // A free port: the collector cannot report the port of `:0`.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(bin, port, tls)
    }

    fn start_on(bin: &Path, port: u16, tls: Option<(&Path, &Path)>) -> Collector {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("metrics.jsonl");
        let mut args = vec![
            "config".to_string(),
            port.to_string(),
            out.to_str().unwrap().to_string(),
        ];
        if let Some((cert, key)) = tls {
            args.push(cert.to_str().unwrap().to_string());
            args.push(key.to_str().unwrap().to_string());
        }
        let config = Command::new(repo().join("scripts/otel-collector.sh"))
            .args(&args)
            .output()
            .expect("collector config");
        assert!(config.status.success());
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, &config.stdout).unwrap();
        let log = std::fs::File::create(dir.path().join("collector.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(format!("file:{}", config_path.display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn collector");
        let mut c = Collector {
            child,
            port,
            out,
            _dir: dir,
        };
        let deadline = Instant::now() + COLLECTOR_START;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(st) = c.child.try_wait().unwrap() {
                panic!("collector exited ({st}):\n{}", c.log());
            }
            assert!(
                Instant::now() < deadline,
                "collector not listening on {addr} within {COLLECTOR_START:?}:\n{}",
                c.log()
            );
            thread::sleep(POLL);
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("collector.log")).unwrap_or_default()
    }

    /// Every export received so far (one JSON object per complete line).
    fn exports(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| serde_json::from_str(l.trim()).ok())
            .collect()
    }

    /// Polls until an export satisfies `pred` (bounded); returns it.
    fn wait_export(&self, what: &str, mut pred: impl FnMut(&Export) -> bool) -> Export {
        let deadline = Instant::now() + EXPORT_WAIT;
        loop {
            if let Some(e) = self
                .exports()
                .iter()
                .rev()
                .map(Export::parse)
                .find(|e| pred(e))
            {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no export with {what} within {EXPORT_WAIT:?}; last: {:?}\ncollector log:\n{}",
                self.exports().last().map(Export::parse).map(|e| e.points),
                self.log()
            );
            thread::sleep(POLL);
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One metric of an export, as the collector wrote it (protojson).
#[derive(Debug, Clone)]
struct Instrument {
    unit: String,
    /// `sum`, `gauge` or `histogram`.
    kind: String,
    monotonic: bool,
    temporality: i64,
    /// `asInt` of a sum or gauge; the count of a histogram.
    value: u64,
    start_ns: u64,
    time_ns: u64,
}

/// One received export: resource attributes, scope name, instruments by name.
#[derive(Debug, Clone)]
struct Export {
    resource: HashMap<String, String>,
    scope: String,
    metrics: HashMap<String, Instrument>,
    /// Name → value, for failure messages.
    points: Vec<(String, u64)>,
}

/// protojson writes 64-bit integers as strings.
fn num(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

impl Export {
    fn parse(v: &Value) -> Export {
        let rm = &v["resourceMetrics"][0];
        let resource = rm["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["key"].as_str().unwrap_or("").to_string(),
                    a["value"]["stringValue"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let sm = &rm["scopeMetrics"][0];
        let mut metrics = HashMap::new();
        let mut points = Vec::new();
        for m in sm["metrics"].as_array().into_iter().flatten() {
            let name = m["name"].as_str().unwrap_or("").to_string();
            let (kind, data) = ["sum", "gauge", "histogram"]
                .iter()
                .find_map(|k| m.get(*k).map(|d| (k.to_string(), d)))
                .unwrap_or_else(|| panic!("{name}: no sum, gauge or histogram: {m}"));
            let p = &data["dataPoints"][0];
            let value = if kind == "histogram" {
                num(&p["count"])
            } else {
                num(&p["asInt"])
            };
            points.push((name.clone(), value));
            metrics.insert(
                name,
                Instrument {
                    unit: m["unit"].as_str().unwrap_or("").to_string(),
                    kind,
                    monotonic: data["isMonotonic"].as_bool().unwrap_or(false),
                    temporality: data["aggregationTemporality"].as_i64().unwrap_or(0),
                    value,
                    start_ns: num(&p["startTimeUnixNano"]),
                    time_ns: num(&p["timeUnixNano"]),
                },
            );
        }
        Export {
            resource,
            scope: sm["scope"]["name"].as_str().unwrap_or("").to_string(),
            metrics,
            points,
        }
    }

    fn get(&self, name: &str) -> &Instrument {
        self.metrics
            .get(name)
            .unwrap_or_else(|| panic!("{name} not exported; got {:?}", self.points))
    }

    fn value(&self, name: &str) -> u64 {
        self.metrics.get(name).map_or(u64::MAX, |i| i.value)
    }
}

/// The proxy with metrics export to `endpoint` and the flags of every test here.
fn start_proxy(origin: &Origin, dir: &Path, endpoint: &str, interval: &str) -> ProxyProcess {
    start_proxy_with(proxy_command(), origin, dir, endpoint, interval)
}

fn start_proxy_with(
    mut cmd: Command,
    origin: &Origin,
    dir: &Path,
    endpoint: &str,
    interval: &str,
) -> ProxyProcess {
    cmd.args([
        "--destinationUri",
        &format!("http://{}", origin.addr()),
        "--listenPort",
        "0",
        "--listen-address",
        "127.0.0.1",
        "--traceDirectory",
        dir.to_str().unwrap(),
        "--numThreads",
        "1",
        "--admin-listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "2s",
        "--otelMetricsCollectorEndpoint",
        endpoint,
        "--otel-metrics-export-interval",
        interval,
        "--suppressCaptureForUriPath",
        "/skip",
    ]);
    ProxyProcess::start_with_admin(cmd, STARTUP_TIMEOUT)
}

/// Every `<name>_total` counter of a `/metrics` scrape (base name → value).
fn prometheus_counters(admin: SocketAddr) -> HashMap<String, u64> {
    let (status, text) = admin_get(admin, "/metrics");
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            let base = k.strip_suffix("_total")?;
            Some((base.to_string(), v.parse().ok()?))
        })
        .collect()
}

const GETS: usize = 5;
const POSTS: usize = 3;

#[test]
fn exports_java_instruments_with_the_traffic_values() {
    let Some(bin) = collector_binary() else {
        return;
    };
    let collector = Collector::start(&bin);
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    // No scheme: `http://` is prepended, as the Java proxy does.
    let mut proxy = start_proxy(
        &origin,
        dir.path(),
        &format!("127.0.0.1:{}", collector.port),
        "200ms",
    );

    // Scripted traffic on one connection: GETs, POSTs with known bodies, one suppressed GET.
    let mut c = Client::connect(proxy.addr);
    for i in 0..GETS {
        c.send(&get(&format!("/get/{i}")));
        c.read_response(false);
    }
    for i in 0..POSTS {
        c.send(&post(&format!("/post/{i}"), &vec![b'x'; 100 * (i + 1)]));
        c.read_response(false);
    }
    c.send(&get("/skip"));
    c.read_response(false);
    finish_client(&mut c);
    let sent = c.sent.len() as u64;
    let received = c.received.len() as u64;
    let requests = (GETS + POSTS + 1) as u64;

    let e = collector.wait_export("the traffic's counts", |e| {
        e.value("gatheringRequestCount") == requests
            && e.value("captureConnectionCount") == 1
            && e.value("activeConnection") == 0
            && e.value("kafkaCommitCount") >= 1
    });

    // Resource and scope: the Java proxy's.
    assert_eq!(
        e.resource.get("service.name").map(String::as_str),
        Some("capture")
    );
    assert_eq!(e.scope, "captureProxy");
    // The Java proxy's instruments: (name, unit, kind, monotonic).
    for (name, unit, kind, monotonic) in [
        ("bytesRead", "bytes", "sum", true),
        ("bytesWritten", "bytes", "sum", true),
        ("fullRequest", "count", "sum", true),
        ("captureSuppressed", "count", "sum", true),
        ("blockingRequest", "count", "sum", true),
        ("kafkaCommitCount", "", "sum", true),
        ("captureConnectionCount", "", "sum", true),
        ("gatheringRequestCount", "", "sum", true),
        ("blockedCount", "", "sum", true),
        ("activeConnection", "count", "sum", false),
        ("kafkaCommitDuration", "ms", "histogram", false),
        ("blockedDuration", "ms", "histogram", false),
    ] {
        let i = e.get(name);
        assert_eq!(i.unit, unit, "{name} unit");
        assert_eq!(i.kind, kind, "{name} kind");
        assert_eq!(i.monotonic, monotonic, "{name} monotonic");
        assert_eq!(i.temporality, 2, "{name}: cumulative temporality");
        assert!(i.start_ns > 0 && i.start_ns < i.time_ns, "{name}: {i:?}");
    }
    // Values against the traffic.
    assert_eq!(
        e.value("bytesRead"),
        sent,
        "bytesRead = bytes the client sent"
    );
    assert_eq!(
        e.value("bytesWritten"),
        received,
        "bytesWritten = bytes it received"
    );
    assert_eq!(
        e.value("fullRequest"),
        requests - 1,
        "all but the suppressed one"
    );
    assert_eq!(e.value("captureSuppressed"), 1);
    assert_eq!(e.value("requestsMutating"), POSTS as u64);
    assert_eq!(e.value("requestsGetHead"), GETS as u64 + 1);
    assert_eq!(e.value("blockedCount"), e.value("blockedDuration"));
    assert_eq!(e.get("sinkHealthy").kind, "gauge");
    assert_eq!(e.get("sinkHealthy").value, 1);
    // Every counter equals the proxy's own /metrics (traffic is over, values are settled),
    // except the ones the scrape and the exports themselves move.
    let prom = prometheus_counters(proxy.admin());
    for (name, v) in &prom {
        if name.starts_with("admin") || name.starts_with("otlp") {
            continue;
        }
        assert_eq!(e.value(name), *v, "{name}: OTLP vs /metrics");
        assert!(e.get(name).monotonic, "{name} is a counter");
    }
    assert!(prom.get("otlpExports").copied().unwrap_or(0) >= 1);
    assert_eq!(prom.get("otlpExportFailures").copied(), Some(0));
    // The trace collector flag: accepted, warned about once.
    proxy.stop_ok(EXIT_WAIT);
}

#[test]
fn shutdown_makes_one_final_export() {
    let Some(bin) = collector_binary() else {
        return;
    };
    let collector = Collector::start(&bin);
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    // An interval far beyond the test: the only export is the one at shutdown.
    let mut proxy = start_proxy(
        &origin,
        dir.path(),
        &format!("http://127.0.0.1:{}", collector.port),
        "1h",
    );
    let mut c = Client::connect(proxy.addr);
    for i in 0..2 {
        c.send(&get(&format!("/final/{i}")));
        c.read_response(false);
    }
    finish_client(&mut c);
    assert!(
        collector.exports().is_empty(),
        "no export before the interval"
    );
    proxy.stop_ok(EXIT_WAIT);
    let e = collector.wait_export("the final export", |_| true);
    assert_eq!(collector.exports().len(), 1, "exactly one export");
    assert_eq!(e.value("gatheringRequestCount"), 2);
    assert_eq!(e.value("draining"), 1, "taken during shutdown");
    // Taken after the sink thread committed everything (the workers, which count
    // kafkaCommitCount from acks, have stopped by then: the sink's own count is the total).
    assert_eq!(e.value("sinkRecordsCommitted"), e.value("captureRecords"));
    assert!(e.value("captureRecords") >= 1);
}

/// `https://`: TLS with ALPN h2 to a collector whose certificate a private CA signed; the CA
/// reaches the proxy as `SSL_CERT_FILE` (read by its system-roots loader).
#[test]
fn exports_over_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let Some(bin) = collector_binary() else {
        return;
    };
    let pki = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    let (ca_pem, cert_pem, key_pem) = (
        pki.path().join("ca.pem"),
        pki.path().join("cert.pem"),
        pki.path().join("key.pem"),
    );
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, leaf.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    let collector = Collector::start_with(&bin, Some((&cert_pem, &key_pem)));
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = proxy_command();
    cmd.env("SSL_CERT_FILE", &ca_pem);
    let mut proxy = start_proxy_with(
        cmd,
        &origin,
        dir.path(),
        &format!("https://localhost:{}", collector.port),
        "200ms",
    );
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/tls"));
    c.read_response(false);
    finish_client(&mut c);
    let e = collector.wait_export("the request", |e| e.value("gatheringRequestCount") == 1);
    assert_eq!(
        e.resource.get("service.name").map(String::as_str),
        Some("capture")
    );
    assert_eq!(e.value("bytesRead"), c.sent.len() as u64);
    assert_eq!(
        prometheus_counters(proxy.admin())
            .get("otlpExportFailures")
            .copied(),
        Some(0),
        "{}",
        proxy.stderr()
    );
    proxy.stop_ok(EXIT_WAIT);
}

/// The collector restarts (a new process on the same port): the exporter's kept connection is
/// dead; exports reach the new collector without restarting the proxy.
#[test]
fn reconnects_after_a_collector_restart() {
    let Some(bin) = collector_binary() else {
        return;
    };
    let first = Collector::start(&bin);
    let port = first.port;
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = start_proxy(&origin, dir.path(), &format!("127.0.0.1:{port}"), "200ms");
    first.wait_export("a first export", |_| true);
    drop(first);
    let second = Collector::start_on(&bin, port, None);
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/after-restart"));
    c.read_response(false);
    finish_client(&mut c);
    let e = second.wait_export("the request, after the restart", |e| {
        e.value("gatheringRequestCount") == 1
    });
    assert!(
        e.value("otlpExports") >= 1,
        "the count goes on: {:?}",
        e.points
    );
    proxy.assert_running();
    proxy.stop_ok(EXIT_WAIT);
}

#[test]
fn unreachable_collector_is_counted_not_fatal() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut proxy = start_proxy(&origin, dir.path(), &format!("127.0.0.1:{port}"), "100ms");
    let deadline = Instant::now() + EXPORT_WAIT;
    while prometheus_counters(proxy.admin())
        .get("otlpExportFailures")
        .copied()
        .unwrap_or(0)
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "failures not counted:\n{}",
            proxy.stderr()
        );
        thread::sleep(POLL);
    }
    // Traffic still flows.
    let mut c = Client::connect(proxy.addr);
    c.send(&get("/still-serving"));
    assert_eq!(c.read_response(false).status, 404);
    finish_client(&mut c);
    proxy.assert_running();
    // Warned once (rate-limited to one a minute), not once per export.
    let warnings = proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("OTLP metrics export failed"))
        .count();
    assert_eq!(warnings, 1, "{}", proxy.stderr());
    proxy.stop_ok(EXIT_WAIT);
}

/// A collector that accepts connections and never answers: each export fails at its 5 s
/// timeout, traffic is not delayed meanwhile, and shutdown still ends within its bound.
#[test]
fn silent_collector_times_out_without_delaying_traffic() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and keeps every connection open, reading nothing.
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held2 = held.clone();
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            held2.lock().unwrap().push(s);
        }
    });
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = start_proxy(&origin, dir.path(), &format!("127.0.0.1:{port}"), "100ms");
    let mut c = Client::connect(proxy.addr);
    let deadline = Instant::now() + EXPORT_WAIT;
    // Requests answered quickly while exports hang, until one export has timed out.
    while prometheus_counters(proxy.admin())
        .get("otlpExportFailures")
        .copied()
        .unwrap_or(0)
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "no timeout counted:\n{}",
            proxy.stderr()
        );
        let t = Instant::now();
        c.send(&get("/during-hang"));
        assert_eq!(c.read_response(false).status, 404);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request took {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(200));
    }
    finish_client(&mut c);
    assert!(
        proxy.stderr().contains("did not finish within 5s"),
        "{}",
        proxy.stderr()
    );
    // Shutdown: an export in flight (<= 5 s) plus the final one (<= 2 s), plus the drain.
    let t = Instant::now();
    proxy.stop_ok(EXIT_WAIT);
    assert!(
        t.elapsed() < Duration::from_secs(12),
        "exit took {:?}",
        t.elapsed()
    );
}

#[test]
fn trace_endpoint_is_accepted_with_a_warning() {
    let origin = Origin::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = proxy_command();
    cmd.args([
        "--destinationUri",
        &format!("http://{}", origin.addr()),
        "--listenPort",
        "0",
        "--listen-address",
        "127.0.0.1",
        "--traceDirectory",
        dir.path().to_str().unwrap(),
        "--admin-listen",
        "off",
        "--otelTraceCollectorEndpoint",
        "127.0.0.1:9",
    ]);
    let mut proxy = ProxyProcess::start(cmd, STARTUP_TIMEOUT);
    let warned: Vec<String> = proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("otelTraceCollectorEndpoint") && l.contains("no spans"))
        .map(str::to_string)
        .collect();
    assert_eq!(warned.len(), 1, "{}", proxy.stderr());
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    proxy.stop_ok(EXIT_WAIT);
}
