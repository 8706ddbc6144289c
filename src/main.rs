//! The `capture-proxy` binary: flags → configuration → running proxy; signals; exit codes.
//!
//! Signals: SIGTERM/SIGINT drain and exit; SIGHUP reloads the client-facing TLS certificate;
//! SIGUSR2 hands the listening sockets to a new process started from the binary on disk
//! (same arguments), waits for it to report ready, then drains and exits (`handover`).
//!
//! Exit status: 0 after a clean shutdown (SIGTERM/SIGINT, or a completed handover) or a
//! successful `--check-config` /
//! `inspect`; 1 when start-up fails (cannot bind, resolve, open the sink) or `inspect` finds
//! a problem; 2 for usage errors (unknown/missing/conflicting flags); 3 for a flag with a bad
//! value.

use std::io::Write;

use anyhow::Context;
use capture_proxy::cli::{self, Command};
use capture_proxy::config::LogFormat;
use capture_proxy::handover::Inherited;
use std::sync::atomic::Ordering;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = |k: &str| std::env::var(k).ok();
    let cmd = match cli::parse(&args, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("capture-proxy: {e}");
            return e.exit_code();
        }
    };
    match cmd {
        Command::Help(text) | Command::Version(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            0
        }
        Command::CheckConfig(cfg) => {
            let _ = std::io::stdout().write_all(cli::render_effective(&cfg).as_bytes());
            0
        }
        Command::Inspect(args) => {
            init_logging(LogFormat::Text);
            match capture_proxy::inspect::run(&args, &mut std::io::stdout().lock()) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("capture-proxy inspect: {e:#}");
                    1
                }
            }
        }
        Command::Run(cfg) => {
            init_logging(cfg.log_format);
            match run(*cfg) {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("capture-proxy: {e:#}");
                    1
                }
            }
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Text => b.with_ansi(false).try_init(),
    };
}

/// Blocks the shutdown signals in every thread (threads inherit the mask), so only
/// `sigwait` below sees them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a zeroed set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals; `None` when `timeout` passed first (watchdog ping).
fn wait_signal(set: &libc::sigset_t, timeout: Option<std::time::Duration>) -> Option<libc::c_int> {
    loop {
        let rc = match timeout {
            Some(t) => {
                let ts = libc::timespec {
                    tv_sec: t.as_secs() as libc::time_t,
                    tv_nsec: t.subsec_nanos() as libc::c_long,
                };
                // SAFETY: valid set and timespec; a null siginfo pointer is allowed.
                unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) }
            }
            None => {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` is a valid signal set; sigwait writes the signal number.
                match unsafe { libc::sigwait(set, &mut sig) } {
                    0 => sig,
                    _ => -1,
                }
            }
        };
        if rc > 0 {
            return Some(rc);
        }
        if timeout.is_some() && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
        {
            return None;
        }
    }
}

fn run(cfg: capture_proxy::config::Config) -> anyhow::Result<()> {
    let set = block_signals();
    let env = |k: &str| std::env::var(k).ok();
    // First, before anything opens descriptors: sockets passed by a predecessor or systemd.
    let mut inherited =
        Inherited::from_env(&env).context("cannot adopt the passed listening sockets")?;
    // The binary's path now, while it names the running file: a handover starts whatever
    // file is at this path then (an upgraded binary), not /proc/self/exe (the old inode).
    let exe = std::env::current_exe();
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let notifier = capture_proxy::notify::Notifier::from_env(&env);
    let handover_timeout = cfg.handover_timeout;
    let proxy_socks = std::mem::take(&mut inherited.proxy);
    let admin_sock = inherited.admin.take();
    if !proxy_socks.is_empty() {
        tracing::info!(
            sockets = proxy_socks.len(),
            admin = admin_sock.is_some(),
            from_pid = ?inherited.from,
            "adopting passed listening sockets"
        );
    }
    let handle =
        capture_proxy::start_with(cfg, proxy_socks, admin_sock).context("start-up failed")?;
    for a in handle.local_addrs() {
        tracing::info!(addr = %a, node_id = handle.node_id(), io = handle.io_driver(), "listening");
    }
    if let Some(a) = handle.admin_addr() {
        tracing::info!(addr = %a, "admin endpoint listening");
    }
    notifier.ready("listening");
    if let Some(from) = inherited.from {
        match inherited.report_ready() {
            Ok(()) => tracing::info!(
                from_pid = from,
                "handover: took over; the previous process drains"
            ),
            Err(e) => {
                tracing::error!(from_pid = from, error = %e, "handover: cannot report ready to the previous process (it will give up and keep serving)")
            }
        }
    }
    let mut handed_over = false;
    loop {
        let sig = match wait_signal(&set, notifier.watchdog_interval()) {
            Some(s) => s,
            None => {
                notifier.watchdog();
                continue;
            }
        };
        match sig {
            libc::SIGHUP => match handle.reload_tls() {
                Ok(true) => tracing::info!(
                    "SIGHUP: client-facing TLS certificate reloaded; new connections use it"
                ),
                Ok(false) => tracing::info!("SIGHUP: no client-facing TLS; nothing to reload"),
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: TLS reload failed; keeping the previous certificate"
                ),
            },
            libc::SIGUSR2 => match &exe {
                Ok(exe) => {
                    if handover(&handle, exe, &args, handover_timeout, &notifier) {
                        handed_over = true;
                        break;
                    }
                }
                Err(e) => {
                    handle.handover_stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "SIGUSR2: handover impossible: the binary's path is unknown; still serving");
                }
            },
            _ => {
                tracing::info!(signal = sig, "shutting down: draining connections");
                break;
            }
        }
    }
    if handed_over {
        handle.shutdown_handed_over();
        tracing::info!(
            pid = std::process::id(),
            "handover complete: drained; exiting"
        );
    } else {
        notifier.stopping();
        handle.shutdown();
        tracing::info!("shutdown complete");
    }
    Ok(())
}

/// SIGUSR2: starts the binary at `exe` with this process's arguments and listening sockets
/// and waits (bounded) for it to report ready. `true`: it serves, this process must drain and
/// exit; `false`: the handover failed (logged, counted) and this process keeps serving.
fn handover(
    handle: &capture_proxy::Handle,
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    timeout: std::time::Duration,
    notifier: &capture_proxy::notify::Notifier,
) -> bool {
    handle
        .handover_stats
        .started
        .fetch_add(1, Ordering::Relaxed);
    let (proxy, admin) = handle.handover_fds();
    tracing::info!(exe = %exe.display(), sockets = proxy.len(), admin = admin.is_some(), "SIGUSR2: handing the listening sockets to a new process");
    let started = std::time::Instant::now();
    let result = capture_proxy::handover::spawn_successor(exe, args, &proxy, admin).and_then(
        |mut s| match s.wait_ready(timeout, notifier.watchdog_interval(), &mut || {
            notifier.watchdog()
        }) {
            Ok(()) => Ok(s.pid()),
            Err(e) => {
                s.abandon();
                Err(e)
            }
        },
    );
    match result {
        Ok(pid) => {
            tracing::info!(
                new_pid = pid,
                pid = std::process::id(),
                ms = started.elapsed().as_millis() as u64,
                "handover: the new process serves; draining"
            );
            true
        }
        Err(e) => {
            handle.handover_stats.failed.fetch_add(1, Ordering::Relaxed);
            // The new process may have told the service manager it is the main process.
            notifier.main_pid();
            tracing::error!(error = %e, "handover failed; this process keeps serving");
            false
        }
    }
}
