//! The `capture-proxy` binary: flags → configuration → running proxy; signals; exit codes.
//!
//! Exit status: 0 after a clean shutdown (SIGTERM/SIGINT) or a successful `--check-config` /
//! `inspect`; 1 when start-up fails (cannot bind, resolve, open the sink) or `inspect` finds
//! a problem; 2 for usage errors (unknown/missing/conflicting flags); 3 for a flag with a bad
//! value.

use std::io::Write;

use anyhow::Context;
use capture_proxy::cli::{self, Command};
use capture_proxy::config::LogFormat;

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
    let notifier = capture_proxy::notify::Notifier::from_env(&env);
    let handle = capture_proxy::start(cfg).context("start-up failed")?;
    for a in handle.local_addrs() {
        tracing::info!(addr = %a, node_id = handle.node_id(), io = handle.io_driver(), "listening");
    }
    if let Some(a) = handle.admin_addr() {
        tracing::info!(addr = %a, "admin endpoint listening");
    }
    notifier.ready("listening");
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
            _ => {
                tracing::info!(signal = sig, "shutting down: draining connections");
                break;
            }
        }
    }
    notifier.stopping();
    handle.shutdown();
    tracing::info!("shutdown complete");
    Ok(())
}
