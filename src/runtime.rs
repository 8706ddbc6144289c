//! Process structure: binds the listeners, plans CPUs, starts the pinned worker threads (each
//! with its own monoio runtime and SO_REUSEPORT listener) and the single sink thread, and
//! shuts everything down in order (drain workers → flush sink).
//!
//! May depend on: `worker`, `sink`, `handoff`, `config`, `capture` (settings), `stats`, `tls`
//! (building the TLS configurations; `Handle::reload_tls`).
//!
//! Invariant: `start` returns only when every worker listens (or fails with the reason);
//! `Handle::shutdown` returns only when every connection's final record has been handed to
//! the sink and the sink has committed and synced everything it received.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::capture::builder::CaptureSettings;
use crate::config::{Config, IoDriver, SinkConfig};
use crate::handoff::{self, BatchSender, Inbox};
use crate::sink::{self, Backend, SinkStats, SinkThread};
use crate::stats::WorkerStats;
use crate::worker::{self, Control, Ctx, Settings};

/// Start-up failures (exit status 1 from `main`, except configuration errors found here,
/// which are reported like bad flag values).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot resolve destination {host}:{port}: {reason}")]
    Resolve {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("io_uring was requested (--io-driver uring) but is not available on this kernel")]
    NoUring,
    #[error("{0}")]
    Unsupported(String),
    #[error("capture sink: {0}")]
    Sink(String),
    #[error("worker {worker}: {reason}")]
    Worker { worker: usize, reason: String },
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
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

    /// Graceful shutdown: stop accepting, let in-flight exchanges finish (bounded by
    /// `--drain-timeout`), write every connection's final record, flush and sync the sink.
    pub fn shutdown(mut self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
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
    }
}

/// Pins the calling thread to one CPU (best effort; logs on failure).
pub fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds-checks against CPU_SETSIZE below.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, error = %std::io::Error::last_os_error(), "cannot pin thread");
        }
    }
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let v: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|c| libc::CPU_ISSET(*c, &set))
                .collect();
            if !v.is_empty() {
                return v;
            }
        }
    }
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n).collect()
}

/// Which CPU each worker runs on, and where the sink thread goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    pub workers: Vec<Option<usize>>,
    pub sink: Option<usize>,
}

/// Plans CPUs: with `--cpu-list`, or with `--numThreads 0` (one worker per allowed CPU),
/// workers are pinned round-robin over the list; the sink thread takes the first allowed
/// CPU no worker uses, if any, and otherwise floats. An explicit `--numThreads N` without a
/// CPU list leaves placement to the kernel.
pub fn plan_cpus(num_threads: usize, cpu_list: Option<&[usize]>, allowed: &[usize]) -> CpuPlan {
    let pin_list: Option<Vec<usize>> = match cpu_list {
        Some(l) if !l.is_empty() => Some(l.to_vec()),
        _ if num_threads == 0 => Some(allowed.to_vec()),
        _ => None,
    };
    let n = if num_threads == 0 {
        pin_list.as_ref().map_or(1, |l| l.len().max(1))
    } else {
        num_threads
    };
    match pin_list {
        Some(list) if !list.is_empty() => {
            let workers: Vec<Option<usize>> =
                (0..n).map(|i| list.get(i % list.len()).copied()).collect();
            let sink = allowed
                .iter()
                .copied()
                .find(|c| !workers.contains(&Some(*c)));
            CpuPlan { workers, sink }
        }
        _ => CpuPlan {
            workers: vec![None; n],
            sink: None,
        },
    }
}

fn resolve(cfg: &Config) -> Result<Vec<SocketAddr>, StartError> {
    let d = &cfg.destination;
    let err = |reason: String| StartError::Resolve {
        host: d.host.clone(),
        port: d.port,
        reason,
    };
    let addrs: Vec<SocketAddr> = (d.host.as_str(), d.port)
        .to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .collect();
    if addrs.is_empty() {
        return Err(err("no addresses".into()));
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

/// Starts the proxy described by `cfg`.
pub fn start(cfg: Config) -> Result<Handle, StartError> {
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
    if cfg.spool_dir.is_some() {
        return Err(StartError::Unsupported(
            "--spool-dir is not supported yet".into(),
        ));
    }
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
    let destination = Arc::new(crate::upstream::DestinationAddrs::new(resolve(&cfg)?));
    crate::upstream::spawn_resolver(
        cfg.destination.host.clone(),
        cfg.destination.port,
        &destination,
    )
    .map_err(StartError::Thread)?;
    let allowed = allowed_cpus();
    let plan = plan_cpus(cfg.num_threads, cfg.cpu_list.as_deref(), &allowed);
    let nworkers = plan.workers.len();
    tracing::info!(workers = nworkers, cpus = ?plan.workers, sink_cpu = ?plan.sink, "cpu plan");
    let (listeners, addrs) = bind_all(&cfg.listen, nworkers)?;

    let capture = match &cfg.sink {
        SinkConfig::None => None,
        _ => Some(Arc::new(
            CaptureSettings::new(node_id.clone(), cfg.max_record_bytes())
                .map_err(|e| StartError::Sink(e.to_string()))?,
        )),
    };
    let backend = match &cfg.sink {
        SinkConfig::None => Backend::Null,
        SinkConfig::File(f) => Backend::File(
            crate::sink::file::FileSink::open(&f.dir, &node_id, f.max_file_bytes)
                .map_err(|e| StartError::Sink(e.to_string()))?,
        ),
        SinkConfig::Kafka(k) => {
            let token: Option<Arc<dyn crate::sink::kafka::TokenProvider>> =
                if k.auth == crate::config::KafkaAuth::MskIam {
                    let chain = crate::sink::msk_iam::CredentialChain::from_process_env();
                    let p = crate::sink::msk_iam::MskIamTokenProvider::new(None, chain)
                        .map_err(|e| StartError::Sink(format!("msk-iam: {e}")))?;
                    Some(Arc::new(p))
                } else {
                    None
                };
            let settings = crate::sink::kafka::KafkaSettings {
                max_record_bytes: cfg.max_record_bytes(),
                max_unacked_bytes: KAFKA_MAX_UNACKED_BYTES.max(cfg.max_record_bytes()),
                delivery_timeout: KAFKA_DELIVERY_TIMEOUT,
            };
            Backend::Kafka(Box::new(
                crate::sink::kafka::KafkaSink::new(k, settings, token)
                    .map_err(|e| StartError::Sink(e.to_string()))?,
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
        flush_interval: cfg.capture_flush_interval,
        ack_timeout: cfg.kafka_ack_timeout,
        failure_policy: cfg.capture_failure_policy,
        client_idle_timeout: cfg.client_idle_timeout,
        request_head_timeout: cfg.request_head_timeout,
        tcp_keepalive: cfg.tcp_keepalive,
        drain_timeout: cfg.drain_timeout,
        max_connections_per_worker: cfg.max_connections.map(|m| m.div_ceil(nworkers).max(1)),
        max_head_bytes: MAX_HEAD_BYTES,
        rewriter,
        server_tls: server_tls.clone(),
        destination_tls,
        pool_size: cfg.destination_pool_size,
        pool_timeout: cfg.destination_pool_timeout,
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
    let sink_thread = SinkThread::new(backend, receiver, inboxes.clone(), sink_stats.clone());
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
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin_addr = match cfg.admin_listen {
        Some(addr) => Some(
            crate::admin::start(
                addr,
                crate::admin::AdminState {
                    workers: worker_stats.clone(),
                    sink: sink_stats.clone(),
                    draining: draining.clone(),
                    node_id: node_id.clone(),
                },
            )
            .map_err(|source| StartError::Listen { addr, source })?,
        ),
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

/// Most bytes of records handed to Kafka and not yet acknowledged (256 MiB): about 25 s of
/// capture at 10 MB/s, enough to ride out a broker failover; beyond it records fail as
/// "overloaded" (and the failure policy applies) instead of growing memory without bound.
const KAFKA_MAX_UNACKED_BYTES: usize = 256 * 1024 * 1024;
/// librdkafka's delivery deadline per record (s), as the Java producer's `delivery.timeout.ms`.
const KAFKA_DELIVERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest request head (bytes) before the proxy answers 431 (issue: "over 64 KiB").
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

type Listeners = Vec<TcpListener>;
type Wake = std::os::unix::net::UnixStream;

fn run_uring(
    make_ctx: impl FnOnce() -> std::rc::Rc<Ctx>,
    ls: Listeners,
    wake: Wake,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot build io_uring runtime: {e}"))?;
    rt.block_on(async move { worker::run(make_ctx(), ls, wake, ready).await });
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
    rt.block_on(async move { worker::run(make_ctx(), ls, wake, ready).await });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_plan_one_per_cpu_with_spare_for_sink() {
        let p = plan_cpus(0, Some(&[1]), &[0, 1]);
        assert_eq!(p.workers, vec![Some(1)]);
        assert_eq!(p.sink, Some(0));
        let p = plan_cpus(0, None, &[0, 1]);
        assert_eq!(p.workers, vec![Some(0), Some(1)]);
        assert_eq!(p.sink, None);
        let p = plan_cpus(3, None, &[0, 1]);
        assert_eq!(p.workers, vec![None, None, None]);
        let p = plan_cpus(3, Some(&[2, 3]), &[0, 1, 2, 3]);
        assert_eq!(p.workers, vec![Some(2), Some(3), Some(2)]);
        assert_eq!(p.sink, Some(0));
    }
}
