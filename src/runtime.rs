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

/// Where sysfs describes each CPU (`cpuN/topology/{physical_package_id,core_id}`).
pub const SYS_CPU_DIR: &str = "/sys/devices/system/cpu";

/// Which physical core (and package) each CPU belongs to: CPUs sharing a core are SMT
/// siblings (on EC2, the two vCPUs of one core). A CPU sysfs says nothing about counts as a
/// core of its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// `(cpu, (package, core))`, sorted by CPU.
    cores: Vec<(usize, (usize, usize))>,
}

impl Topology {
    /// Reads the package and core ids of `cpus` under `sys_cpu_dir` (normally
    /// [`SYS_CPU_DIR`]); unreadable or malformed files leave that CPU unknown.
    pub fn read(sys_cpu_dir: &std::path::Path, cpus: &[usize]) -> Topology {
        let id = |cpu: usize, file: &str| -> Option<usize> {
            let path = sys_cpu_dir.join(format!("cpu{cpu}/topology/{file}"));
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        };
        let mut cores: Vec<(usize, (usize, usize))> = cpus
            .iter()
            .filter_map(|&c| Some((c, (id(c, "physical_package_id")?, id(c, "core_id")?))))
            .collect();
        cores.sort_unstable();
        cores.dedup_by_key(|(c, _)| *c);
        Topology { cores }
    }

    /// A topology from known `(cpu, (package, core))` places (tests, tools).
    pub fn from_places(places: &[(usize, (usize, usize))]) -> Topology {
        let mut cores = places.to_vec();
        cores.sort_unstable();
        cores.dedup_by_key(|(c, _)| *c);
        Topology { cores }
    }

    /// The physical core of `cpu`; an unknown CPU is its own core (a key no real core has).
    pub fn core_of(&self, cpu: usize) -> (usize, usize) {
        match self.cores.binary_search_by_key(&cpu, |(c, _)| *c) {
            Ok(i) => self.cores.get(i).map_or((usize::MAX, cpu), |(_, k)| *k),
            Err(_) => (usize::MAX, cpu),
        }
    }

    /// How many distinct physical cores `cpus` span.
    pub fn count_cores(&self, cpus: &[usize]) -> usize {
        let mut keys: Vec<(usize, (usize, usize))> =
            cpus.iter().map(|c| (0, self.core_of(*c))).collect();
        keys.sort_unstable();
        keys.dedup();
        keys.len()
    }
}

/// Which CPU each worker runs on, and where the sink (Kafka producer) thread goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    pub workers: Vec<Option<usize>>,
    pub sink: Option<usize>,
}

/// Plans CPUs. By default (`--numThreads 0`, no `--cpu-list`) one worker per allowed CPU;
/// with `--cpu-list` the workers (one per listed CPU, or `--numThreads` of them) are pinned
/// round-robin over the list. When workers are pinned, the sink thread takes a spare allowed
/// CPU if there is one — preferring a physical core no worker runs on over an SMT sibling of a
/// busy core, then the lowest number — and otherwise floats. An explicit `--numThreads N`
/// without a CPU list leaves placement to the kernel.
pub fn plan_cpus(
    num_threads: usize,
    cpu_list: Option<&[usize]>,
    allowed: &[usize],
    topology: &Topology,
) -> CpuPlan {
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
            let used: Vec<usize> = workers.iter().flatten().copied().collect();
            let busy_core = |cpu: usize| {
                let core = topology.core_of(cpu);
                used.iter().any(|w| topology.core_of(*w) == core)
            };
            let sink = allowed
                .iter()
                .copied()
                .filter(|c| !used.contains(c))
                .min_by_key(|c| (busy_core(*c), *c));
            CpuPlan { workers, sink }
        }
        _ => CpuPlan {
            workers: vec![None; n],
            sink: None,
        },
    }
}

impl CpuPlan {
    /// CPUs the plan pins a worker to that the process may not run on (pinning them fails;
    /// those workers float).
    pub fn outside(&self, allowed: &[usize]) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .workers
            .iter()
            .flatten()
            .copied()
            .filter(|c| !allowed.contains(c))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// One line for the start-up log: where the workers and the sink thread run, and the
    /// allowed CPUs with their physical cores.
    pub fn describe(&self, allowed: &[usize], topology: &Topology) -> String {
        let n = self.workers.len();
        let mut pinned: Vec<usize> = self.workers.iter().flatten().copied().collect();
        pinned.sort_unstable();
        pinned.dedup();
        let workers = if pinned.is_empty() {
            format!("{n} worker(s) unpinned")
        } else if pinned.len() < n {
            format!(
                "{n} workers pinned round-robin to CPUs {} ({} physical cores)",
                cpu_ranges(&pinned),
                topology.count_cores(&pinned)
            )
        } else {
            format!(
                "{n} worker(s) pinned one per CPU to CPUs {} ({} physical cores)",
                cpu_ranges(&pinned),
                topology.count_cores(&pinned)
            )
        };
        let sink = match self.sink {
            Some(c) => {
                let core = topology.core_of(c);
                if pinned.iter().any(|w| topology.core_of(*w) == core) {
                    format!("sink thread on spare CPU {c} (SMT sibling of a worker's CPU)")
                } else {
                    format!("sink thread on spare CPU {c} (a core no worker uses)")
                }
            }
            None if pinned.is_empty() => "sink thread unpinned".to_string(),
            None => "sink thread unpinned (no spare allowed CPU)".to_string(),
        };
        let cores = topology.count_cores(allowed);
        format!(
            "{workers}; {sink}; allowed CPUs {} = {cores} physical cores ({} per core)",
            cpu_ranges(allowed),
            if cores > 0 && allowed.len() > cores {
                format!("{} threads", allowed.len().div_ceil(cores))
            } else {
                "1 thread".to_string()
            }
        )
    }
}

/// `0-3,5`-style list of `cpus` (sorted and deduplicated first).
pub fn cpu_ranges(cpus: &[usize]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&lo) = v.get(i) {
        let mut hi = lo;
        while v.get(i + 1) == Some(&(hi + 1)) {
            hi += 1;
            i += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if hi == lo {
            out.push_str(&lo.to_string());
        } else {
            out.push_str(&format!("{lo}-{hi}"));
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
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

/// Starts the proxy described by `cfg`.
pub fn start(cfg: Config) -> Result<Handle, StartError> {
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
    let destination = Arc::new(crate::upstream::DestinationAddrs::new(resolve(&cfg)?));
    crate::upstream::spawn_resolver(
        cfg.destination.host.clone(),
        cfg.destination.port,
        &destination,
    )
    .map_err(StartError::Thread)?;
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
        request_body_timeout: cfg.request_body_timeout,
        tcp_keepalive: cfg.tcp_keepalive,
        drain_timeout: cfg.drain_timeout,
        max_connections_per_worker: cfg.max_connections.map(|m| m.div_ceil(nworkers).max(1)),
        max_head_bytes: MAX_HEAD_BYTES,
        max_request_line_bytes: usize::try_from(cfg.source_max_initial_line_length)
            .unwrap_or(usize::MAX),
        max_header_bytes: usize::try_from(cfg.source_max_header_size).unwrap_or(usize::MAX),
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
    let mut sink_thread = SinkThread::new(backend, receiver, inboxes.clone(), sink_stats.clone());
    if let Some(sp) = spool {
        sink_thread = sink_thread.with_spool(
            sp,
            KAFKA_MAX_UNACKED_BYTES.max(cfg.max_record_bytes()),
            cfg.max_record_bytes(),
        );
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
                    stats: Default::default(),
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
        .map_err(|e| StartError::Sink(e.to_string()))
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

    #[test]
    fn cpu_plan_one_per_cpu_with_spare_for_sink() {
        let flat = Topology::default();
        let p = plan_cpus(0, Some(&[1]), &[0, 1], &flat);
        assert_eq!(p.workers, vec![Some(1)]);
        assert_eq!(p.sink, Some(0));
        let p = plan_cpus(0, None, &[0, 1], &flat);
        assert_eq!(p.workers, vec![Some(0), Some(1)]);
        assert_eq!(p.sink, None);
        let p = plan_cpus(3, None, &[0, 1], &flat);
        assert_eq!(p.workers, vec![None, None, None]);
        assert_eq!(p.sink, None);
        let p = plan_cpus(3, Some(&[2, 3]), &[0, 1, 2, 3], &flat);
        assert_eq!(p.workers, vec![Some(2), Some(3), Some(2)]);
        assert_eq!(p.sink, Some(0));
    }

    /// EC2 numbering: vCPU n and n + cores/2... share a core (c6i.2xlarge: 0/4, 1/5, 2/6, 3/7).
    fn ec2_8_vcpus() -> Topology {
        Topology::from_places(&(0..8).map(|c| (c, (0, c % 4))).collect::<Vec<_>>())
    }

    #[test]
    fn cpu_plan_prefers_a_core_no_worker_uses_for_the_sink() {
        let all: Vec<usize> = (0..8).collect();
        // Adjacent siblings (0/1, 2/3, ...): after workers on 1 and 2, CPU 0 and 3 are
        // siblings of busy cores; 4 is a whole idle core.
        let adjacent = Topology::from_places(&(0..8).map(|c| (c, (0, c / 2))).collect::<Vec<_>>());
        let p = plan_cpus(0, Some(&[1, 2]), &all, &adjacent);
        assert_eq!(p.sink, Some(4));
        // Without topology the lowest spare CPU wins.
        assert_eq!(
            plan_cpus(0, Some(&[1, 2]), &all, &Topology::default()).sink,
            Some(0)
        );
        // EC2: workers on cores 1-3 (both threads): core 0 (CPUs 0, 4) is left for the sink
        // and the NIC interrupts.
        let p = plan_cpus(0, Some(&[1, 2, 3, 5, 6, 7]), &all, &ec2_8_vcpus());
        assert_eq!(p.workers.len(), 6);
        assert_eq!(p.sink, Some(0));
        // Only siblings of busy cores are spare: take the lowest.
        let p = plan_cpus(0, Some(&[0, 1, 2, 3]), &all, &ec2_8_vcpus());
        assert_eq!(p.sink, Some(4));
        // The sink only goes where the process may run.
        let p = plan_cpus(0, Some(&[1, 2, 3]), &[1, 2, 3, 6], &ec2_8_vcpus());
        assert_eq!(p.sink, Some(6));
        assert!(p.outside(&[1, 2, 3, 6]).is_empty());
        assert_eq!(
            plan_cpus(0, Some(&[9]), &[0, 1], &ec2_8_vcpus()).outside(&[0, 1]),
            vec![9]
        );
    }

    #[test]
    fn describe_names_workers_sink_and_cores() {
        let all: Vec<usize> = (0..8).collect();
        let t = ec2_8_vcpus();
        let d = plan_cpus(0, Some(&[1, 2, 3, 5, 6, 7]), &all, &t).describe(&all, &t);
        assert_eq!(
            d,
            "6 worker(s) pinned one per CPU to CPUs 1-3,5-7 (3 physical cores); \
             sink thread on spare CPU 0 (a core no worker uses); \
             allowed CPUs 0-7 = 4 physical cores (2 threads per core)"
        );
        let d = plan_cpus(0, None, &all, &t).describe(&all, &t);
        assert!(
            d.contains("sink thread unpinned (no spare allowed CPU)"),
            "{d}"
        );
        let d = plan_cpus(0, Some(&[0, 1, 2, 3]), &all, &t).describe(&all, &t);
        assert!(
            d.contains("spare CPU 4 (SMT sibling of a worker's CPU)"),
            "{d}"
        );
        let d = plan_cpus(2, None, &[0], &Topology::default()).describe(&[0], &Topology::default());
        assert_eq!(
            d,
            "2 worker(s) unpinned; sink thread unpinned; allowed CPUs 0 = 1 physical cores (1 thread per core)"
        );
        let d = plan_cpus(3, Some(&[5]), &[5], &t).describe(&[5], &t);
        assert!(
            d.starts_with("3 workers pinned round-robin to CPUs 5 "),
            "{d}"
        );
    }

    #[test]
    fn cpu_ranges_compacts() {
        assert_eq!(cpu_ranges(&[5, 0, 1, 2, 3, 7, 8]), "0-3,5,7-8");
        assert_eq!(cpu_ranges(&[4]), "4");
        assert_eq!(cpu_ranges(&[]), "none");
    }

    #[test]
    fn topology_from_sysfs_files() {
        let dir = tempfile::tempdir().unwrap();
        let put = |cpu: usize, file: &str, v: &str| {
            let d = dir.path().join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(file), v).unwrap();
        };
        for (cpu, core) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
            put(cpu, "physical_package_id", "0\n");
            put(cpu, "core_id", &format!("{core}\n"));
        }
        put(4, "physical_package_id", "0\n");
        put(4, "core_id", "garbage\n");
        let t = Topology::read(dir.path(), &[3, 2, 1, 0, 4, 5]);
        assert_eq!(t.core_of(0), t.core_of(2));
        assert_eq!(t.core_of(1), t.core_of(3));
        assert_ne!(t.core_of(0), t.core_of(1));
        // Unknown CPUs (malformed, missing) are cores of their own.
        assert_ne!(t.core_of(4), t.core_of(5));
        assert_eq!(t.count_cores(&[0, 1, 2, 3, 4, 5]), 4);
        // This machine's own topology reads without error and covers its CPUs.
        let allowed = allowed_cpus();
        let here = Topology::read(std::path::Path::new(SYS_CPU_DIR), &allowed);
        assert!(here.count_cores(&allowed) >= 1);
    }
}
