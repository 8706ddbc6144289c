//! Process structure: binds the listeners (or adopts inherited ones: a handover, systemd socket
//! activation), plans CPUs, starts the pinned worker threads (each with its own monoio runtime
//! and SO_REUSEPORT listener) and the single sink thread, and shuts everything down in order
//! (drain workers → flush sink). Keeps a duplicate of every listening socket for a handover.
//!
//! May depend on: `worker` (runs it per core), `conn` (what each worker serves), `sink`, `admin`,
//! `cpu` (the pinning plan), `upstream` (the destination), `kafka` (the MSK IAM token
//! provider), `handoff`, `config`, `capture` (settings), `http1` (the `--setHeader` rewriter),
//! `stats`, `tls` (building the TLS configurations; `Handle::reload_tls`), `otlp` (the metrics
//! exporter thread).
//!
//! Invariant: `start` returns only when every worker listens (or fails with the reason);
//! `Handle::shutdown` returns only when every connection's final record has been handed to
//! the sink and the sink has committed and synced everything it received.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::capture::builder::CaptureSettings;
use crate::config::{Config, IoDriver, SinkConfig};
use crate::cpu::{allowed_cpus, cpu_ranges, pin_current_thread, plan_cpus, Topology, SYS_CPU_DIR};
use crate::handoff::{self, BatchSender, Inbox};
use crate::sink::{self, Backend, SinkStats, SinkThread};
use crate::stats::{HandoverStats, WorkerStats};
use crate::worker::{self, Control, Ctx, Settings};

/// Start-up failures (exit status 1 from `main`, except configuration errors found here,
/// which are reported like bad flag values). Each variant says what failed; the cause is its
/// typed `source()` (not flattened into the message), so `main` prints the whole chain and a
/// caller can match on it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot resolve destination {host}:{port}")]
    Resolve {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("io_uring was requested (--io-driver uring) but is not available on this kernel")]
    NoUring,
    #[error("{0}")]
    Unsupported(String),
    #[error("capture settings")]
    Capture(#[source] crate::capture::builder::CaptureError),
    #[error("capture sink (files)")]
    FileSink(#[source] crate::sink::file::FileSinkError),
    #[error("capture sink (Kafka)")]
    Kafka(#[source] crate::sink::kafka::KafkaSinkError),
    #[error("capture sink (Kafka): msk-iam credentials")]
    MskIam(#[source] crate::kafka::aws_creds::AwsCredsError),
    #[error("spool (--spool-dir)")]
    Spool(#[source] crate::sink::spool::SpoolError),
    #[error("worker {worker}: {reason}")]
    Worker { worker: usize, reason: String },
    #[error("cannot start thread")]
    Thread(#[source] std::io::Error),
    #[error("TLS")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    Otlp(crate::otlp::OtlpStartError),
}

/// Listen backlog (connections). Large so bursts wait in the kernel rather than being
/// refused; the kernel caps it at net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 4096;
/// io_uring submission queue entries per worker: room for ~2 in-flight ops per connection
/// for 1000 busy connections before monoio has to submit early.
const URING_ENTRIES: u32 = 2048;

/// A running proxy.
pub struct Handle {
    addrs: Vec<SocketAddr>,
    node_id: Arc<str>,
    workers: Vec<JoinHandle<()>>,
    controls: Vec<Arc<Control>>,
    inboxes: Vec<Arc<Inbox>>,
    sender: BatchSender,
    sink: Option<JoinHandle<()>>,
    pub worker_stats: Vec<Arc<WorkerStats>>,
    pub sink_stats: Arc<SinkStats>,
    driver: &'static str,
    draining: Arc<std::sync::atomic::AtomicBool>,
    admin_addr: Option<SocketAddr>,
    server_tls: Option<Arc<crate::tls::ServerTls>>,
    /// The OTLP metrics exporter (`--otelMetricsCollectorEndpoint`).
    otlp: Option<crate::otlp::Exporter>,
    /// Duplicates of every client-facing listening socket (each distinct socket once), for
    /// a handover: the new process gets these very sockets.
    listen_fds: Vec<OwnedFd>,
    /// Duplicate of the admin endpoint's listening socket.
    admin_fd: Option<OwnedFd>,
    /// Tells the admin endpoint to stop accepting (its listener was handed over).
    admin_handed_over: Arc<AtomicBool>,
    pub handover_stats: Arc<HandoverStats>,
}

impl Handle {
    /// The bound client-facing addresses (with the real port when `--listenPort 0`).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
    /// `"io_uring"` or `"epoll"`.
    pub fn io_driver(&self) -> &'static str {
        self.driver
    }

    /// The admin endpoint's bound address, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Rebuilds the client-facing TLS configuration from the same files and swaps it in:
    /// new connections use it, existing ones are untouched. `Ok(false)` when the proxy does
    /// not terminate TLS; on error the previous configuration stays in use.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.server_tls {
            None => Ok(false),
            Some(t) => t.reload().map(|()| true),
        }
    }

    /// Sum of one counter over all workers.
    pub fn counter(&self, c: crate::stats::Counter) -> u64 {
        crate::stats::total(&self.worker_stats, c)
    }

    /// The listening sockets to hand to a new process: the client-facing ones (every
    /// distinct socket of the SO_REUSEPORT group once) and the admin endpoint's.
    pub fn handover_fds(&self) -> (Vec<BorrowedFd<'_>>, Option<BorrowedFd<'_>>) {
        (
            self.listen_fds.iter().map(AsFd::as_fd).collect(),
            self.admin_fd.as_ref().map(AsFd::as_fd),
        )
    }

    /// Graceful shutdown: stop accepting, let in-flight exchanges finish (bounded by
    /// `--drain-timeout`), write every connection's final record, flush and sync the sink.
    pub fn shutdown(self) {
        self.draining.store(true, Ordering::Release);
        self.drain_and_stop();
    }

    /// Shutdown after a handover: as [`Handle::shutdown`], but the admin endpoint stops
    /// accepting instead of answering `/ready` 503 (the listener it shares with the new
    /// process must keep answering ready: the new process answers from now on).
    pub fn shutdown_handed_over(self) {
        self.admin_handed_over.store(true, Ordering::Release);
        self.drain_and_stop();
    }

    fn drain_and_stop(mut self) {
        for (c, i) in self.controls.iter().zip(&self.inboxes) {
            c.drain.store(true, std::sync::atomic::Ordering::Release);
            i.poke_control();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.sender.send_shutdown();
        if let Some(s) = self.sink.take() {
            let _ = s.join();
        }
        // Last, so the final export holds the final counts (bounded: see `otlp`).
        if let Some(o) = self.otlp.take() {
            o.shutdown();
        }
    }
}

fn resolve(cfg: &Config) -> Result<Vec<SocketAddr>, StartError> {
    let d = &cfg.destination;
    let err = |source: std::io::Error| StartError::Resolve {
        host: d.host.clone(),
        port: d.port,
        source,
    };
    let addrs: Vec<SocketAddr> = (d.host.as_str(), d.port)
        .to_socket_addrs()
        .map_err(err)?
        .collect();
    if addrs.is_empty() {
        return Err(err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no addresses",
        )));
    }
    Ok(addrs)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Client-facing sockets for `workers` workers.
struct Bound {
    per_worker: Vec<Vec<TcpListener>>,
    addrs: Vec<SocketAddr>,
    /// One duplicate of every distinct socket (for a handover).
    dups: Vec<OwnedFd>,
}

fn dup_listener(l: &TcpListener) -> Result<OwnedFd, StartError> {
    l.try_clone()
        .map(OwnedFd::from)
        .map_err(|source| StartError::Listen {
            addr: l
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            source,
        })
}

/// Adopts inherited listening sockets (a handover or systemd socket activation): socket `i`
/// goes to worker `i % workers`, so none is closed (closing one would reset the connections
/// in its accept queue); a worker left without one (fewer sockets than workers) accepts on a
/// duplicate of socket `w % n`, sharing its queue. The set handed on at the next handover is
/// the inherited one, unchanged.
fn adopt(
    inherited: Vec<TcpListener>,
    workers: usize,
    wanted: &[SocketAddr],
) -> Result<Bound, StartError> {
    let mut dups = Vec::with_capacity(inherited.len());
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for l in &inherited {
        dups.push(dup_listener(l)?);
        let a = l.local_addr().map_err(|source| StartError::Listen {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    for w in wanted {
        if w.port() != 0 && !addrs.iter().any(|a| a.port() == w.port()) {
            tracing::warn!(
                wanted = %w,
                inherited = ?addrs,
                "the configured listen port differs from the inherited sockets'; serving on the inherited ones"
            );
        }
    }
    let workers = workers.max(1);
    let n = inherited.len();
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, l) in inherited.into_iter().enumerate() {
        if let Some(w) = per_worker.get_mut(i % workers) {
            w.push(l);
        }
    }
    for (w, ls) in per_worker.iter_mut().enumerate() {
        if ls.is_empty() {
            if let Some(d) = dups.get(w % n.max(1)) {
                let l =
                    d.try_clone()
                        .map(TcpListener::from)
                        .map_err(|source| StartError::Listen {
                            addr: addrs
                                .first()
                                .copied()
                                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                            source,
                        })?;
                ls.push(l);
            }
        }
    }
    Ok(Bound {
        per_worker,
        addrs,
        dups,
    })
}

/// Binds `workers` SO_REUSEPORT sockets per listen address (all on the same port, so port
/// 0 resolves to one real port). Returns per-worker listener lists and the bound addresses.
fn bind_all(
    listen: &[SocketAddr],
    workers: usize,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), StartError> {
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let mut port: Option<u16> = None;
    for (i, want) in listen.iter().enumerate() {
        let mut addr = *want;
        if addr.port() == 0 {
            if let Some(p) = port {
                addr.set_port(p);
            }
        }
        let first = match bind_one(addr) {
            Ok(l) => l,
            Err(e) if addr.is_ipv6() && i > 0 && !bound.is_empty() => {
                tracing::warn!(addr = %addr, error = %e, "IPv6 listener not available; IPv4 only");
                continue;
            }
            Err(source) => return Err(StartError::Listen { addr, source }),
        };
        let real = first
            .local_addr()
            .map_err(|source| StartError::Listen { addr, source })?;
        port.get_or_insert(real.port());
        bound.push(real);
        if let Some(w) = per_worker.first_mut() {
            w.push(first);
        }
        for w in per_worker.iter_mut().skip(1) {
            w.push(bind_one(real).map_err(|source| StartError::Listen { addr: real, source })?);
        }
    }
    Ok((per_worker, bound))
}

/// Raises the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile` or the
/// Go runtime do): every proxied connection takes two descriptors, and the soft limit is often
/// 1024 outside systemd (`LimitNOFILE=` sets both). Returns the resulting soft limit; failures
/// only leave the limit as it was.
pub fn raise_nofile_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return Some(want.rlim_cur);
        }
    }
    Some(lim.rlim_cur)
}

/// Starts the proxy described by `cfg`, binding its listeners.
pub fn start(cfg: Config) -> Result<Handle, StartError> {
    start_with(cfg, Vec::new(), None)
}

/// Starts the proxy described by `cfg` on inherited listening sockets, where given
/// (`proxy` non-empty: those instead of binding `--listenPort`; `admin`: that one instead of
/// binding `--admin-listen`) — a handover or systemd socket activation.
pub fn start_with(
    cfg: Config,
    proxy: Vec<TcpListener>,
    admin: Option<TcpListener>,
) -> Result<Handle, StartError> {
    if let Some(n) = raise_nofile_limit() {
        // Two descriptors per proxied connection (client + destination).
        tracing::info!(
            open_files = n,
            max_connections = n / 2,
            "open-files limit (soft raised to hard)"
        );
    }
    let rewriter = if cfg.set_headers.is_empty() {
        None
    } else {
        Some(
            crate::http1::HeadRewriter::new(&cfg.set_headers)
                .map_err(|e| StartError::Unsupported(format!("--setHeader: {e}")))?,
        )
    };
    // TLS configurations are built (and their files checked) before anything starts.
    let server_tls = match &cfg.server_tls {
        Some(t) => Some(Arc::new(crate::tls::ServerTls::new(t.clone())?)),
        None => None,
    };
    let destination_tls = if cfg.destination.tls {
        Some(crate::tls::DestinationTls::new(
            &cfg.destination.host,
            cfg.destination_ca_file.as_deref(),
            cfg.insecure_destination,
        )?)
    } else {
        None
    };
    // The durable spool: opened (and locked) before anything starts; what earlier runs left
    // in it is replayed to Kafka by the sink thread once Kafka is reachable.
    let spool = open_spool(&cfg)?;
    let driver = match cfg.io_driver {
        IoDriver::Legacy => false,
        IoDriver::Uring => {
            if !monoio::utils::detect_uring() {
                return Err(StartError::NoUring);
            }
            true
        }
        IoDriver::Auto => {
            let ok = monoio::utils::detect_uring();
            if !ok {
                tracing::warn!(
                    "io_uring is not available (or MONOIO_FORCE_LEGACY_DRIVER is set); using epoll"
                );
            }
            ok
        }
    };
    let node_id: Arc<str> = Arc::from(uuid::Uuid::new_v4().to_string().as_str());
    let destination_addrs = Arc::new(crate::upstream::DestinationAddrs::new(resolve(&cfg)?));
    crate::upstream::spawn_resolver(
        cfg.destination.host.clone(),
        cfg.destination.port,
        &destination_addrs,
    )
    .map_err(StartError::Thread)?;
    let destination = Arc::new(crate::upstream::Destination {
        addrs: destination_addrs,
        tls: destination_tls,
        tcp_keepalive: cfg.tcp_keepalive,
    });
    let allowed = allowed_cpus();
    let mut known = allowed.clone();
    known.extend(cfg.cpu_list.iter().flatten());
    let topology = Topology::read(std::path::Path::new(SYS_CPU_DIR), &known);
    let plan = plan_cpus(
        cfg.num_threads,
        cfg.cpu_list.as_deref(),
        &allowed,
        &topology,
    );
    let nworkers = plan.workers.len();
    tracing::info!(
        workers = nworkers,
        cpus = ?plan.workers,
        sink_cpu = ?plan.sink,
        "cpu plan: {}",
        plan.describe(&allowed, &topology)
    );
    let outside = plan.outside(&allowed);
    if !outside.is_empty() {
        tracing::warn!(
            cpus = %cpu_ranges(&outside),
            allowed = %cpu_ranges(&allowed),
            "--cpu-list names CPUs this process may not run on (CPUAffinity=, cgroup cpuset): workers planned there float"
        );
    }
    let Bound {
        per_worker: listeners,
        addrs,
        dups: listen_fds,
    } = if proxy.is_empty() {
        let (per_worker, addrs) = bind_all(&cfg.listen, nworkers)?;
        // Address-major (all workers' sockets of the first address, then the next address's),
        // so that the successor's `adopt` gives each worker one socket of every address.
        let mut dups = Vec::new();
        let naddrs = per_worker.first().map_or(0, Vec::len);
        for j in 0..naddrs {
            for ls in &per_worker {
                if let Some(l) = ls.get(j) {
                    dups.push(dup_listener(l)?);
                }
            }
        }
        Bound {
            per_worker,
            addrs,
            dups,
        }
    } else {
        adopt(proxy, nworkers, &cfg.listen)?
    };

    let capture = match &cfg.sink {
        SinkConfig::None => None,
        _ => Some(Arc::new(
            CaptureSettings::new(node_id.clone(), cfg.max_record_bytes())
                .map_err(StartError::Capture)?,
        )),
    };
    let backend = match &cfg.sink {
        SinkConfig::None => Backend::Null,
        SinkConfig::File(f) => Backend::File(Box::new(
            crate::sink::file::FileSink::open(&f.dir, &node_id, f.max_file_bytes)
                .map_err(StartError::FileSink)?,
        )),
        SinkConfig::Kafka(k) => {
            let token = crate::kafka::token_provider(&k.auth).map_err(StartError::MskIam)?;
            let settings = crate::sink::kafka::KafkaSettings {
                max_record_bytes: cfg.max_record_bytes(),
                max_unacked_bytes: kafka_max_unacked(&cfg),
                delivery_timeout: KAFKA_DELIVERY_TIMEOUT,
            };
            Backend::Kafka(Box::new(
                crate::sink::kafka::KafkaSink::new(k, settings, token)
                    .map_err(StartError::Kafka)?,
            ))
        }
    };
    let suppress_any = cfg.suppress.method.is_some()
        || cfg.suppress.uri_path.is_some()
        || cfg.suppress.method_and_path.is_some()
        || !cfg.suppress.header_matches.is_empty();
    let settings = Arc::new(Settings {
        node_id: node_id.clone(),
        capture,
        destination,
        suppress: cfg.suppress.clone(),
        suppress_any,
        capture_flush_interval: cfg.capture_flush_interval,
        kafka_ack_timeout: cfg.kafka_ack_timeout,
        capture_failure_policy: cfg.capture_failure_policy,
        client_idle_timeout: cfg.client_idle_timeout,
        request_head_timeout: cfg.request_head_timeout,
        request_body_timeout: cfg.request_body_timeout,
        tcp_keepalive: cfg.tcp_keepalive,
        drain_timeout: cfg.drain_timeout,
        max_connections_per_worker: cfg.max_connections.map(|m| m.div_ceil(nworkers).max(1)),
        max_head_bytes: MAX_HEAD_BYTES,
        source_max_initial_line_length: usize::try_from(cfg.source_max_initial_line_length)
            .unwrap_or(usize::MAX),
        source_max_header_size: usize::try_from(cfg.source_max_header_size).unwrap_or(usize::MAX),
        rewriter,
        server_tls: server_tls.clone(),
        destination_pool_size: cfg.destination_pool_size,
        destination_pool_timeout: cfg.destination_pool_timeout,
    });

    let (sender, receiver) = handoff::channel();
    let mut inboxes = Vec::with_capacity(nworkers);
    let mut wakes = Vec::with_capacity(nworkers);
    for _ in 0..nworkers {
        let (i, w) = Inbox::new().map_err(StartError::Thread)?;
        inboxes.push(i);
        wakes.push(w);
    }
    let sink_stats = Arc::new(SinkStats::default());
    let mut sink_thread = SinkThread::new(backend, receiver, inboxes.clone(), sink_stats.clone());
    sink_thread.set_waker(sender.waker());
    if let Some(sp) = spool {
        sink_thread = sink_thread.with_spool(sp);
    }
    let sink = sink::spawn(sink_thread, plan.sink).map_err(StartError::Thread)?;

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, Result<(), String>)>();
    let mut workers = Vec::with_capacity(nworkers);
    let mut controls = Vec::with_capacity(nworkers);
    let mut worker_stats = Vec::with_capacity(nworkers);
    for (idx, (ls, wake)) in listeners.into_iter().zip(wakes).enumerate() {
        let control = Arc::new(Control::default());
        let stats = Arc::new(WorkerStats::default());
        controls.push(control.clone());
        worker_stats.push(stats.clone());
        let settings = settings.clone();
        let sender = sender.clone();
        let inbox = inboxes
            .get(idx)
            .cloned()
            .ok_or_else(|| StartError::Worker {
                worker: idx,
                reason: "no inbox".into(),
            })?;
        let cpu = plan.workers.get(idx).copied().flatten();
        let ready_tx = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("cp-worker-{idx}"))
            .spawn(move || {
                if let Some(c) = cpu {
                    pin_current_thread(c);
                }
                let ready = |r: Result<(), String>| {
                    let _ = ready_tx.send((idx, r));
                };
                let make_ctx =
                    move || Ctx::new(idx as u16, settings, stats, sender, inbox, control);
                let r = if driver {
                    run_uring(make_ctx, ls, wake, ready)
                } else {
                    run_legacy(make_ctx, ls, wake, ready)
                };
                if let Err(e) = r {
                    let _ = ready_tx.send((idx, Err(e)));
                }
            })
            .map_err(StartError::Thread)?;
        workers.push(h);
    }
    drop(ready_tx);
    let draining = Arc::new(AtomicBool::new(false));
    let admin_handed_over = Arc::new(AtomicBool::new(false));
    let handover_stats = Arc::new(HandoverStats::default());
    let admin_state = crate::admin::AdminState {
        workers: worker_stats.clone(),
        sink: sink_stats.clone(),
        draining: draining.clone(),
        node_id: node_id.clone(),
        stats: Default::default(),
        export: Default::default(),
        handover: handover_stats.clone(),
        handed_over: admin_handed_over.clone(),
    };
    let (admin_addr, admin_fd) = match cfg.admin_listen {
        Some(addr) => {
            let (a, fd) = crate::admin::start(addr, admin, admin_state.clone())
                .map_err(|source| StartError::Listen { addr, source })?;
            (Some(a), Some(fd))
        }
        None => {
            if admin.is_some() {
                tracing::warn!("an admin listener was passed in but the admin endpoint is off (--admin-listen none); closing it");
            }
            (None, None)
        }
    };
    if let Some(endpoint) = &cfg.otel_trace_endpoint {
        tracing::warn!(
            endpoint = %endpoint,
            "--otelTraceCollectorEndpoint is accepted but this proxy produces no spans; \
             nothing is sent there (metrics: --otelMetricsCollectorEndpoint)"
        );
    }
    let otlp = match &cfg.otel_metrics {
        Some(m) => Some(crate::otlp::start(m.clone(), admin_state).map_err(StartError::Otlp)?),
        None => None,
    };
    let handle = Handle {
        addrs,
        node_id,
        workers,
        controls,
        inboxes,
        sender,
        sink: Some(sink),
        worker_stats,
        sink_stats,
        driver: if driver { "io_uring" } else { "epoll" },
        draining,
        admin_addr,
        server_tls,
        otlp,
        listen_fds,
        admin_fd,
        admin_handed_over,
        handover_stats,
    };
    for _ in 0..nworkers {
        match ready_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((worker, Err(reason))) => {
                handle.shutdown();
                return Err(StartError::Worker { worker, reason });
            }
            Err(_) => {
                handle.shutdown();
                return Err(StartError::Worker {
                    worker: 0,
                    reason: "worker exited".into(),
                });
            }
        }
    }
    Ok(handle)
}

/// Opens the `--spool-dir` spool (Kafka sink only: it holds records Kafka cannot take).
fn open_spool(cfg: &Config) -> Result<Option<crate::sink::spool::Spool>, StartError> {
    let Some(dir) = &cfg.spool_dir else {
        return Ok(None);
    };
    if !matches!(cfg.sink, SinkConfig::Kafka(_)) {
        return Err(StartError::Unsupported(
            "--spool-dir needs --kafkaConnection (it holds records Kafka cannot take)".into(),
        ));
    }
    let settings = crate::sink::spool::SpoolSettings::new(dir.clone(), cfg.spool_max_bytes);
    crate::sink::spool::Spool::open(settings)
        .map(Some)
        .map_err(StartError::Spool)
}

/// `--kafka-max-unacked-bytes`, at least one record's worth.
fn kafka_max_unacked(cfg: &Config) -> usize {
    usize::try_from(cfg.kafka_max_unacked_bytes)
        .unwrap_or(usize::MAX)
        .max(cfg.max_record_bytes())
}
/// librdkafka's delivery deadline per record (s), as the Java producer's `delivery.timeout.ms`.
const KAFKA_DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest request head (bytes) before the proxy answers 431 (issue: "over 64 KiB").
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

type Listeners = Vec<TcpListener>;
type Wake = std::os::unix::net::UnixStream;

/// Builds one worker's io_uring runtime, with `IORING_SETUP_COOP_TASKRUN` when `coop`.
///
/// Ring flags, measured (small GET keep-alive, c=64, `--noCapture`, one worker on its own CPU,
/// eight interleaved 5 s runs, medians): defaults 36.8k req/s at 24.3 CPU-µs per request;
/// `COOP_TASKRUN` 40.9k at 22.1 µs. Without it, every completion that arrives while the
/// worker runs in user space (on loopback: whenever the peer's send is processed on the other
/// CPU) interrupts it with an IPI to run the completion's task work; with it, the task work
/// waits for the worker's next `io_uring_enter`, which monoio makes on every turn of its
/// loop. `DEFER_TASKRUN` (+ `SINGLE_ISSUER`) measured 38.7k / 23.4 µs, and in one of the eight
/// runs that proxy answered no request at all (not investigated: DEFER_TASKRUN delivers
/// completions only on `io_uring_enter` with `GETEVENTS`, which monoio's busy loop does not
/// pass); `SQPOLL` would take a whole vCPU per ring.
fn build_uring_runtime(
    coop: bool,
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut urb = io_uring::IoUring::builder();
    if coop {
        urb.setup_coop_taskrun();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(urb)
        .enable_timer()
        .build()
}

fn run_uring(
    make_ctx: impl FnOnce() -> std::rc::Rc<Ctx>,
    ls: Listeners,
    wake: Wake,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), String> {
    // COOP_TASKRUN first; a kernel older than 5.19 refuses the flag (EINVAL), then the ring is
    // built with the defaults.
    let mut rt = match build_uring_runtime(true) {
        Ok(rt) => rt,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!(
                "io_uring: kernel refuses IORING_SETUP_COOP_TASKRUN; using the defaults"
            );
            build_uring_runtime(false).map_err(|e| format!("cannot build io_uring runtime: {e}"))?
        }
        Err(e) => return Err(format!("cannot build io_uring runtime: {e}")),
    };
    rt.block_on(async move { worker::run(make_ctx(), ls, wake, ready, crate::conn::serve).await });
    Ok(())
}

fn run_legacy(
    make_ctx: impl FnOnce() -> std::rc::Rc<Ctx>,
    ls: Listeners,
    wake: Wake,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot build epoll runtime: {e}"))?;
    rt.block_on(async move { worker::run(make_ctx(), ls, wake, ready, crate::conn::serve).await });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uring_runtime_builds_with_and_without_coop_taskrun() {
        // The machines we run on (Linux >= 5.19) take COOP_TASKRUN; the fallback must work too.
        for coop in [true, false] {
            let mut rt = build_uring_runtime(coop).expect("io_uring runtime");
            let v = rt.block_on(async {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                7
            });
            assert_eq!(v, 7);
        }
    }

    /// Inherited sockets, address-major as a predecessor passes them: with the same worker
    /// count each worker gets one socket of each address; with fewer workers some take two;
    /// with more, the extra ones share a duplicate. None is dropped.
    #[test]
    fn adopt_spreads_inherited_sockets_over_the_workers() {
        let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (per_worker, addrs) = bind_all(&[a, "127.0.0.2:0".parse().unwrap()], 2).unwrap();
        assert_eq!(addrs.len(), 2);
        let mut passed = Vec::new();
        for j in 0..2 {
            for ls in &per_worker {
                passed.push(ls[j].try_clone().unwrap());
            }
        }
        let clone = |v: &[TcpListener]| -> Vec<TcpListener> {
            v.iter().map(|l| l.try_clone().unwrap()).collect()
        };
        let ip = |l: &TcpListener| l.local_addr().unwrap().ip();
        let same = adopt(clone(&passed), 2, &[]).unwrap();
        assert_eq!(same.addrs, addrs);
        assert_eq!(same.dups.len(), 4);
        for ls in &same.per_worker {
            let mut ips: Vec<_> = ls.iter().map(ip).collect();
            ips.sort();
            assert_eq!(ips, vec![addrs[0].ip(), addrs[1].ip()]);
        }
        let fewer = adopt(clone(&passed), 1, &[]).unwrap();
        assert_eq!(fewer.per_worker[0].len(), 4);
        let more = adopt(clone(&passed), 6, &[]).unwrap();
        assert!(more.per_worker.iter().all(|ls| !ls.is_empty()));
        assert_eq!(
            more.dups.len(),
            4,
            "the set handed on stays the inherited one"
        );
    }

    #[test]
    fn nofile_soft_limit_is_raised_to_the_hard_limit() {
        let n = raise_nofile_limit().expect("getrlimit works");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(n, lim.rlim_cur);
    }
}
