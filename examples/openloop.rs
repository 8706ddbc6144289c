//! An open-loop HTTP/1.1 load generator with microsecond pacing, for `scripts/loadtest.sh`
//! (scenario small-half), where wrk's whole-millisecond timers sent requests in bursts.
//!
//! Request i is due at t0 + i / rate (an absolute CLOCK_MONOTONIC schedule; a timerfd armed at
//! each due time with TFD_TIMER_ABSTIME wakes the loop, so there is no drift and no busy
//! spinning). A due request goes to the free keep-alive connection that has been free longest;
//! when none is free it waits in a FIFO (counted as `late`). Latency is taken from the request's
//! *scheduled* time to the end of its response (coordinated-omission corrected), so a late
//! request, or a wake-up of this process that came late, counts in full. Requests scheduled in
//! the warm-up are sent but not recorded. One thread, non-blocking sockets, epoll
//! (edge-triggered), responses framed by Content-Length, chunked encoding or connection close.
//!
//! CLI: `openloop --url http://127.0.0.1:PORT/PATH --rate R [--connections N] [--duration S]
//! [--warmup S] [--method M] [--body-file F] [--timeout S]` (defaults: 64 connections, 10 s,
//! no warm-up, GET, or POST with `Content-Type: application/x-ndjson` when --body-file is
//! given, 5 s timeout). Prints a human summary and one machine-readable line:
//! `LT_RESULT requests= duration_us= bytes= err_connect= err_read= err_write= err_status=
//! err_timeout= p50_us= p90_us= p99_us= max_us= late= rate= lag_p50_us= lag_p99_us=
//! svc_p50_us= svc_p99_us=` — the fields of `scripts/load/wrk.lua` (same names and units), plus
//! `late` (requests that found no free connection when due), `rate` (asked, req/s), `lag_*`
//! (send time − scheduled time) and `svc_*` (service time: response end − send time).
//! `requests` counts complete responses to measured requests, whatever their status;
//! `duration_us` runs from the first measured due time to the later of the last measured due
//! time and the last measured response, so req/s falls below the asked rate when the target or
//! this generator cannot keep up. `err_status` counts responses that are not 2xx.
//!
//! Limits: plain HTTP to 127.0.0.1 (or `localhost`) only; one request in flight per connection
//! (no pipelining), so at most --connections requests are outstanding; the request is built
//! once (fixed method, path, headers and body); a request unanswered after --timeout is counted
//! as `err_timeout` and its connection is reopened; when the schedule ends, requests still
//! queued or in flight get until the last due time + --timeout, then count as `err_timeout`.
//! Wake-up lag (timer expiry to this process running, tens of µs on a shared CPU) is part of
//! every latency; `lag_*` shows it.

use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Keep-alive connections opened up front, as `scripts/loadtest.sh` runs wrk (`-c64`).
const DEFAULT_CONNECTIONS: usize = 64;
/// Measured seconds when --duration is not given.
const DEFAULT_DURATION_S: f64 = 10.0;
/// Per-request timeout in seconds, as loadtest.sh's WRK_TIMEOUT.
const DEFAULT_TIMEOUT_S: f64 = 5.0;
/// Bytes read per read(2): a 64 KiB response in one call; a read that fills less than this
/// drained the socket, so no second read (returning EAGAIN) is needed under edge triggering.
const READ_SCRATCH_BYTES: usize = 64 * 1024;
/// Longest response head (status line + headers) accepted, in bytes; longer is a parse error.
const HEAD_MAX_BYTES: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted, in bytes.
const LINE_MAX_BYTES: usize = 8 * 1024;
/// After a failed connect, wait this long (ns) before the next attempt: 10 ms keeps a dead
/// target from turning the loop into a busy spin.
const RECONNECT_BACKOFF_NS: u64 = 10_000_000;
/// How often (ns) in-flight requests are checked against --timeout: 10 ms, far below any
/// useful timeout and only 100 extra wake-ups per second.
const TIMEOUT_CHECK_NS: u64 = 10_000_000;
/// How long (ns) the up-front connections may take before the schedule starts anyway.
const CONNECT_WAIT_NS: u64 = 5_000_000_000;
/// epoll events taken per epoll_wait: more than the connections of any sensible run.
const EPOLL_EVENTS_MAX: usize = 256;
/// Highest latency the histograms record, in µs (1 h); larger values are clamped to it.
const HIST_MAX_US: u64 = 3_600_000_000;
/// Significant digits of the latency histograms: 3 = 0.1 % resolution, as wrk's.
const HIST_SIGFIG: u8 = 3;
/// epoll token of the timerfd (connection tokens are generation << 32 | index).
const TOKEN_TIMER: u64 = u64::MAX;
const NS_PER_S: f64 = 1e9;

// ------------------------------------------------------------------------------ response parser

/// A complete response: its status and whether the server closes the connection after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Response {
    status: u16,
    close: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    NeedMore,
    Done(Response),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseError {
    HeadTooLong,
    StatusLine,
    Header,
    ContentLength,
    Chunk,
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Head,
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailer,
    UntilClose,
}

/// Incremental HTTP/1.x response framing. The caller keeps unconsumed bytes: `advance` is given
/// everything received and not yet consumed, returns how many bytes it consumed and whether a
/// response ended there; after `Done` it is ready for the next response. Bodies are counted,
/// never stored. Never panics on any input.
#[derive(Debug)]
struct ResponseParser {
    framing: Framing,
    /// Head state: bytes of the buffer already searched for the blank line.
    scanned: usize,
    status: u16,
    close: bool,
    head_request: bool,
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = s.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(a), Some(b)) => s.get(a..=b).unwrap_or_default(),
        _ => &[],
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn parse_hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = (b as char).to_digit(16)?;
        acc.checked_mul(16)?.checked_add(u64::from(d))
    })
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

impl ResponseParser {
    /// `head_request`: the requests are HEAD, so responses have no body whatever they say.
    fn new(head_request: bool) -> Self {
        ResponseParser {
            framing: Framing::Head,
            scanned: 0,
            status: 0,
            close: false,
            head_request,
        }
    }

    fn reset(&mut self) {
        self.framing = Framing::Head;
        self.scanned = 0;
        self.status = 0;
        self.close = false;
    }

    fn finish(&mut self, consumed: usize) -> (usize, Step) {
        let r = Response {
            status: self.status,
            close: self.close,
        };
        self.reset();
        (consumed, Step::Done(r))
    }

    /// The connection ended: a body framed by the close is complete, anything else is not.
    fn eof(&mut self) -> Option<Response> {
        if self.framing == Framing::UntilClose {
            let r = Response {
                status: self.status,
                close: true,
            };
            self.reset();
            Some(r)
        } else {
            None
        }
    }

    fn advance(&mut self, buf: &[u8]) -> Result<(usize, Step), ParseError> {
        let mut pos = 0usize;
        loop {
            let rest = buf.get(pos..).unwrap_or_default();
            match self.framing {
                Framing::Head => {
                    let Some(i) = find(rest, b"\r\n\r\n", self.scanned.saturating_sub(3)) else {
                        if rest.len() > HEAD_MAX_BYTES {
                            return Err(ParseError::HeadTooLong);
                        }
                        self.scanned = rest.len();
                        return Ok((pos, Step::NeedMore));
                    };
                    let head = rest.get(..i).unwrap_or_default();
                    self.scanned = 0;
                    pos += i + 4;
                    self.parse_head(head)?;
                }
                Framing::Length(0) => return Ok(self.finish(pos)),
                Framing::Length(n) => {
                    let take = n.min(rest.len() as u64);
                    pos += take as usize;
                    self.framing = Framing::Length(n - take);
                    if n > take {
                        return Ok((pos, Step::NeedMore));
                    }
                }
                Framing::ChunkSize => {
                    let Some(end) = find(rest, b"\r\n", 0) else {
                        return self.need_line(rest, pos);
                    };
                    let line = rest.get(..end).unwrap_or_default();
                    let size_part = line.split(|&b| b == b';').next().unwrap_or_default();
                    let size = parse_hex(trim(size_part)).ok_or(ParseError::Chunk)?;
                    pos += end + 2;
                    self.framing = if size == 0 {
                        Framing::Trailer
                    } else {
                        Framing::ChunkData(size)
                    };
                }
                Framing::ChunkData(n) => {
                    let take = n.min(rest.len() as u64);
                    pos += take as usize;
                    if n > take {
                        self.framing = Framing::ChunkData(n - take);
                        return Ok((pos, Step::NeedMore));
                    }
                    self.framing = Framing::ChunkEnd;
                }
                Framing::ChunkEnd => match rest.get(..2) {
                    None => return Ok((pos, Step::NeedMore)),
                    Some(b"\r\n") => {
                        pos += 2;
                        self.framing = Framing::ChunkSize;
                    }
                    Some(_) => return Err(ParseError::Chunk),
                },
                Framing::Trailer => {
                    let Some(end) = find(rest, b"\r\n", 0) else {
                        return self.need_line(rest, pos);
                    };
                    pos += end + 2;
                    if end == 0 {
                        return Ok(self.finish(pos));
                    }
                }
                Framing::UntilClose => return Ok((pos + rest.len(), Step::NeedMore)),
            }
        }
    }

    fn need_line(&self, rest: &[u8], pos: usize) -> Result<(usize, Step), ParseError> {
        if rest.len() > LINE_MAX_BYTES {
            Err(ParseError::LineTooLong)
        } else {
            Ok((pos, Step::NeedMore))
        }
    }

    /// Status line and headers (without the blank line); sets the body framing. An interim
    /// (1xx other than 101) response leaves the parser waiting for the next head.
    fn parse_head(&mut self, head: &[u8]) -> Result<(), ParseError> {
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next().unwrap_or_default();
        let minor = match status_line.get(..8) {
            Some(b"HTTP/1.1") => 1,
            Some(b"HTTP/1.0") => 0,
            _ => return Err(ParseError::StatusLine),
        };
        if status_line.get(8) != Some(&b' ') {
            return Err(ParseError::StatusLine);
        }
        let code = status_line.get(9..12).ok_or(ParseError::StatusLine)?;
        let status = parse_decimal(code)
            .filter(|s| (100..=999).contains(s))
            .ok_or(ParseError::StatusLine)? as u16;
        if !matches!(status_line.get(12), None | Some(b' ')) {
            return Err(ParseError::StatusLine);
        }
        let (mut length, mut chunked, mut close, mut keep_alive) = (None, false, false, false);
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or(ParseError::Header)?;
            let name = line.get(..colon).unwrap_or_default();
            let value = trim(line.get(colon + 1..).unwrap_or_default());
            if name.eq_ignore_ascii_case(b"content-length") {
                let n = parse_decimal(value).ok_or(ParseError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(ParseError::ContentLength);
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = value.split(|&b| b == b',').next_back().unwrap_or_default();
                chunked = trim(last).eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= has_token(value, b"close");
                keep_alive |= has_token(value, b"keep-alive");
            }
        }
        if (100..200).contains(&status) && status != 101 {
            return Ok(()); // interim: the final response's head follows
        }
        self.status = status;
        self.close = close || (minor == 0 && !keep_alive);
        self.framing = if self.head_request || status == 204 || status == 304 {
            Framing::Length(0)
        } else if chunked {
            Framing::ChunkSize
        } else if let Some(n) = length {
            Framing::Length(n)
        } else {
            self.close = true;
            Framing::UntilClose
        };
        Ok(())
    }
}

// ------------------------------------------------------------------------------ command line

struct Args {
    addr: SocketAddrV4,
    host_header: String,
    path: String,
    connections: usize,
    rate: f64,
    duration_s: f64,
    warmup_s: f64,
    method: String,
    body: Option<Vec<u8>>,
    timeout_s: f64,
}

fn usage(msg: &str) -> ! {
    eprintln!("openloop: {msg}");
    eprintln!(
        "usage: openloop --url http://127.0.0.1:PORT/PATH --rate R [--connections N] \
         [--duration S] [--warmup S] [--method M] [--body-file F] [--timeout S]"
    );
    std::process::exit(2);
}

fn parse_url(url: &str) -> Result<(SocketAddrV4, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| "bad port")?),
        None => (authority, 80),
    };
    if host != "127.0.0.1" && host != "localhost" {
        return Err("only 127.0.0.1 (or localhost) is allowed".into());
    }
    Ok((
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        format!("{host}:{port}"),
        path.to_string(),
    ))
}

fn parse_args() -> Args {
    let mut url = None;
    let mut rate = None;
    let mut connections = DEFAULT_CONNECTIONS;
    let mut duration_s = DEFAULT_DURATION_S;
    let mut warmup_s = 0.0;
    let mut method = None;
    let mut body_file = None;
    let mut timeout_s = DEFAULT_TIMEOUT_S;
    let mut it = std::env::args().skip(1);
    let secs = |v: &str, what: &str| -> f64 {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or_else(|| usage(&format!("{what}: not a number of seconds: {v}")))
    };
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            usage("help");
        }
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--url" => url = Some(v),
            "--rate" => {
                rate = v.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0);
                if rate.is_none() {
                    usage("--rate must be > 0");
                }
            }
            "--connections" => {
                connections = v
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0 && n < u32::MAX as usize)
                    .unwrap_or_else(|| usage("--connections must be a positive integer"))
            }
            "--duration" => duration_s = secs(&v, "--duration"),
            "--warmup" => warmup_s = secs(&v, "--warmup"),
            "--timeout" => timeout_s = secs(&v, "--timeout"),
            "--method" => method = Some(v),
            "--body-file" => body_file = Some(v),
            _ => usage(&format!("unknown option {flag}")),
        }
    }
    let url = url.unwrap_or_else(|| usage("--url is required"));
    let (addr, host_header, path) = parse_url(&url).unwrap_or_else(|e| usage(&e));
    let rate = rate.unwrap_or_else(|| usage("--rate is required"));
    let body = body_file.map(|f| {
        std::fs::read(&f).unwrap_or_else(|e| usage(&format!("reading --body-file {f}: {e}")))
    });
    let method = method.unwrap_or_else(|| if body.is_some() { "POST" } else { "GET" }.into());
    Args {
        addr,
        host_header,
        path,
        connections,
        rate,
        duration_s,
        warmup_s,
        method,
        body,
        timeout_s,
    }
}

fn build_request(a: &Args) -> Vec<u8> {
    let mut r = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        a.method, a.path, a.host_header
    );
    if let Some(b) = &a.body {
        r.push_str("Content-Type: application/x-ndjson\r\n");
        r.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if let Some(b) = &a.body {
        bytes.extend_from_slice(b);
    }
    bytes
}

// ------------------------------------------------------------------------------ OS helpers

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned from here on.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: both fds are open; ev lives across the call.
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    fn wait(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        // SAFETY: the kernel writes at most events.len() entries into the slice.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                -1,
            )
        };
        match cvt(n) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A timerfd armed at absolute CLOCK_MONOTONIC times (one shot).
struct Timer {
    fd: OwnedFd,
    armed_at: u64,
}

impl Timer {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned from here on.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        Ok(Timer {
            // SAFETY: fd is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed_at: 0,
        })
    }

    fn arm(&mut self, at_ns: u64) -> io::Result<()> {
        if at_ns == self.armed_at {
            return Ok(());
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the fd is ours; spec lives across the call; old value not wanted.
        cvt(unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        })?;
        self.armed_at = at_ns;
        Ok(())
    }
}

/// Starts a non-blocking connect; `true` when it completed at once.
fn start_connect(addr: SocketAddrV4) -> io::Result<(TcpStream, bool)> {
    // SAFETY: plain syscall; the fd goes straight into a TcpStream that owns it.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd is a fresh TCP socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    stream.set_nodelay(true)?;
    let sa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sa is a valid sockaddr_in of the size given.
    let r = unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r == 0 {
        return Ok((stream, true));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok((stream, false))
    } else {
        Err(e)
    }
}

/// CPU seconds (user, system) this process used so far.
fn cpu_seconds() -> (f64, f64) {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

// ------------------------------------------------------------------------------ the client

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No socket; the next connect attempt is due at this time (ns).
    Down(u64),
    Connecting,
    Idle,
    Busy,
}

struct Conn {
    stream: Option<TcpStream>,
    /// Bumped on every new socket, so that events of a closed one are recognised as stale.
    generation: u32,
    state: State,
    /// Received bytes the parser has not consumed yet (capacity kept).
    buf: Vec<u8>,
    parser: ResponseParser,
    /// Busy: the request's scheduled time, when it was written, how much of it was written,
    /// and the response bytes received so far.
    sched: u64,
    sent_at: u64,
    written: usize,
    resp_bytes: u64,
}

#[derive(Default)]
struct Errors {
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

struct Client {
    addr: SocketAddrV4,
    request: Vec<u8>,
    epoll: Epoll,
    conns: Vec<Conn>,
    /// Connections ready for a request, longest-free first (every connection gets traffic).
    free: VecDeque<usize>,
    /// Due requests (their scheduled times) waiting for a free connection.
    pending: VecDeque<u64>,
    /// Scheduled times from this one on are measured; before it, warm-up.
    measure_from: u64,
    errors: Errors,
    /// Responses to measured requests, responses in all (warm-up included), response bytes
    /// and late requests (measured requests), when the last measured response ended (ns).
    requests: u64,
    completed_all: u64,
    bytes: u64,
    late: u64,
    last_done: u64,
    latency: Histogram<u64>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
}

fn ns_to_us(ns: u64) -> u64 {
    (ns + 500) / 1000
}

fn token(idx: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | idx as u64
}

impl Client {
    fn measured(&self, sched: u64) -> bool {
        sched >= self.measure_from
    }

    /// Drops the socket (removing it from epoll) and schedules a reconnect at `retry_at`.
    fn close(&mut self, idx: usize, retry_at: u64) {
        if let Some(c) = self.conns.get_mut(idx) {
            let was_idle = c.state == State::Idle;
            c.stream = None;
            c.state = State::Down(retry_at);
            c.buf.clear();
            c.parser.reset();
            if was_idle {
                self.free.retain(|&i| i != idx);
            }
        }
    }

    /// A request in flight on `idx` failed: counts the error when the request is measured.
    fn fail(&mut self, idx: usize, now: u64, kind: fn(&mut Errors) -> &mut u64) {
        let Some(c) = self.conns.get(idx) else { return };
        if c.state == State::Busy && self.measured(c.sched) {
            *kind(&mut self.errors) += 1;
        }
        self.close(idx, now);
    }

    fn connect(&mut self, idx: usize, now: u64) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        match start_connect(self.addr) {
            Ok((stream, done)) => {
                c.generation = c.generation.wrapping_add(1);
                let ev = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
                if self
                    .epoll
                    .add(stream.as_raw_fd(), ev, token(idx, c.generation))
                    .is_err()
                {
                    c.state = State::Down(now + RECONNECT_BACKOFF_NS);
                    self.errors.connect += 1;
                    return;
                }
                c.stream = Some(stream);
                if done {
                    c.state = State::Idle;
                    self.free.push_back(idx);
                } else {
                    c.state = State::Connecting;
                }
            }
            Err(_) => {
                c.state = State::Down(now + RECONNECT_BACKOFF_NS);
                self.errors.connect += 1;
            }
        }
    }

    fn finish_connect(&mut self, idx: usize, now: u64) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let ok = matches!(c.stream.as_ref().map(|s| s.take_error()), Some(Ok(None)));
        if ok {
            c.state = State::Idle;
            self.free.push_back(idx);
        } else {
            self.errors.connect += 1;
            self.close(idx, now + RECONNECT_BACKOFF_NS);
        }
    }

    fn send(&mut self, idx: usize, sched: u64, now: u64) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        c.state = State::Busy;
        c.sched = sched;
        c.sent_at = now;
        c.written = 0;
        c.resp_bytes = 0;
        if self.measured(sched) {
            self.lag
                .saturating_record(ns_to_us(now - sched.min(now)).max(1));
        }
        self.write_more(idx, now);
    }

    fn write_more(&mut self, idx: usize, now: u64) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let Some(stream) = c.stream.as_ref() else {
            return;
        };
        let mut out = stream;
        while c.written < self.request.len() {
            match out.write(self.request.get(c.written..).unwrap_or_default()) {
                Ok(0) => return self.fail(idx, now, |e| &mut e.write),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.fail(idx, now, |e| &mut e.write),
            }
        }
    }

    fn on_readable(&mut self, idx: usize, scratch: &mut [u8], now: u64) {
        loop {
            let Some(c) = self.conns.get_mut(idx) else {
                return;
            };
            let Some(stream) = c.stream.as_ref() else {
                return;
            };
            let mut input = stream;
            match input.read(scratch) {
                Ok(0) => {
                    if c.state == State::Busy {
                        match c.parser.eof() {
                            Some(r) => self.complete(idx, r, now),
                            None => return self.fail(idx, now, |e| &mut e.read),
                        }
                    }
                    return self.close(idx, now);
                }
                Ok(n) => {
                    c.buf
                        .extend_from_slice(scratch.get(..n).unwrap_or_default());
                    c.resp_bytes += n as u64;
                    if !self.parse(idx, now) || n < scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let busy = c.state == State::Busy;
                    if busy {
                        return self.fail(idx, now, |e| &mut e.read);
                    }
                    return self.close(idx, now);
                }
            }
        }
    }

    /// Frames what `idx` received; false when the connection was closed.
    fn parse(&mut self, idx: usize, now: u64) -> bool {
        let Some(c) = self.conns.get_mut(idx) else {
            return false;
        };
        if c.state != State::Busy {
            // bytes nobody asked for: the connection is out of step
            self.close(idx, now);
            return false;
        }
        match c.parser.advance(&c.buf) {
            Ok((used, Step::NeedMore)) => {
                c.buf.drain(..used.min(c.buf.len()));
                true
            }
            Ok((used, Step::Done(r))) => {
                c.buf.drain(..used.min(c.buf.len()));
                let extra = !c.buf.is_empty();
                self.complete(idx, r, now);
                if extra || r.close {
                    self.close(idx, now);
                    return false;
                }
                true
            }
            Err(_) => {
                self.fail(idx, now, |e| &mut e.read);
                false
            }
        }
    }

    /// The response to the request in flight on `idx` ended: records it; the connection
    /// becomes free (the caller closes it when the response said so).
    fn complete(&mut self, idx: usize, r: Response, now: u64) {
        let Some(c) = self.conns.get_mut(idx) else {
            return;
        };
        let (sched, sent_at, bytes) = (c.sched, c.sent_at, c.resp_bytes);
        c.state = State::Idle;
        self.free.push_back(idx);
        self.completed_all += 1;
        if sched >= self.measure_from {
            self.requests += 1;
            self.bytes += bytes;
            self.last_done = now;
            if !(200..300).contains(&r.status) {
                self.errors.status += 1;
            }
            self.latency
                .saturating_record(ns_to_us(now.saturating_sub(sched)).max(1));
            self.service
                .saturating_record(ns_to_us(now.saturating_sub(sent_at)).max(1));
        }
    }

    fn on_event(&mut self, tok: u64, events: u32, scratch: &mut [u8], now: u64) {
        let idx = (tok & 0xffff_ffff) as usize;
        let generation = (tok >> 32) as u32;
        let Some(c) = self.conns.get(idx) else {
            return;
        };
        if c.generation != generation || c.stream.is_none() {
            return; // an event of a socket closed earlier in this batch
        }
        let out = events & (libc::EPOLLOUT as u32) != 0;
        let err = events & ((libc::EPOLLERR | libc::EPOLLHUP) as u32) != 0;
        let readable = events & ((libc::EPOLLIN | libc::EPOLLRDHUP) as u32) != 0;
        match c.state {
            State::Connecting if out || err => self.finish_connect(idx, now),
            State::Connecting | State::Down(_) => {}
            State::Idle | State::Busy => {
                if out && c.state == State::Busy && c.written < self.request.len() {
                    self.write_more(idx, now);
                }
                if readable || err {
                    self.on_readable(idx, scratch, now);
                }
            }
        }
    }

    /// Due reconnects and timed-out requests.
    fn maintain(&mut self, now: u64, timeout_ns: u64, check_timeouts: bool) {
        for idx in 0..self.conns.len() {
            let Some(c) = self.conns.get(idx) else {
                continue;
            };
            match c.state {
                State::Down(at) if at <= now => self.connect(idx, now),
                State::Busy if check_timeouts && now.saturating_sub(c.sent_at) > timeout_ns => {
                    self.fail(idx, now, |e| &mut e.timeout)
                }
                _ => {}
            }
        }
    }

    fn next_retry(&self) -> Option<u64> {
        self.conns
            .iter()
            .filter_map(|c| match c.state {
                State::Down(at) => Some(at),
                _ => None,
            })
            .min()
    }

    fn busy(&self) -> usize {
        self.conns.iter().filter(|c| c.state == State::Busy).count()
    }
}

fn percentile(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn run(a: &Args) -> io::Result<()> {
    let hist = || {
        Histogram::<u64>::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG)
            .map_err(|e| io::Error::other(format!("histogram: {e:?}")))
    };
    let epoll = Epoll::new()?;
    let mut timer = Timer::new()?;
    epoll.add(
        timer.fd.as_raw_fd(),
        (libc::EPOLLIN | libc::EPOLLET) as u32,
        TOKEN_TIMER,
    )?;
    let mut client = Client {
        addr: a.addr,
        request: build_request(a),
        epoll,
        conns: (0..a.connections)
            .map(|_| Conn {
                stream: None,
                generation: 0,
                state: State::Down(0),
                buf: Vec::with_capacity(READ_SCRATCH_BYTES),
                parser: ResponseParser::new(a.method.eq_ignore_ascii_case("HEAD")),
                sched: 0,
                sent_at: 0,
                written: 0,
                resp_bytes: 0,
            })
            .collect(),
        free: VecDeque::with_capacity(a.connections),
        pending: VecDeque::with_capacity(1024),
        measure_from: u64::MAX,
        errors: Errors::default(),
        requests: 0,
        completed_all: 0,
        bytes: 0,
        late: 0,
        last_done: 0,
        latency: hist()?,
        service: hist()?,
        lag: hist()?,
    };
    let mut scratch = vec![0u8; READ_SCRATCH_BYTES];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EPOLL_EVENTS_MAX];
    let timeout_ns = (a.timeout_s * NS_PER_S) as u64;

    // Open every connection before the schedule starts.
    let start = now_ns();
    client.maintain(start, timeout_ns, false);
    while client.free.len() < a.connections {
        let now = now_ns();
        if now - start > CONNECT_WAIT_NS {
            eprintln!(
                "openloop: only {} of {} connections open after {} s; starting anyway",
                client.free.len(),
                a.connections,
                CONNECT_WAIT_NS / 1_000_000_000
            );
            break;
        }
        client.maintain(now, timeout_ns, false);
        timer.arm(
            client
                .next_retry()
                .unwrap_or(now + RECONNECT_BACKOFF_NS)
                .max(now + 1),
        )?;
        let n = client.epoll.wait(&mut events)?;
        let now = now_ns();
        for ev in events.iter().take(n) {
            let (tok, bits) = (ev.u64, ev.events);
            if tok != TOKEN_TIMER {
                client.on_event(tok, bits, &mut scratch, now);
            }
        }
    }

    let period_ns = NS_PER_S / a.rate;
    let t0 = now_ns();
    client.measure_from = t0 + (a.warmup_s * NS_PER_S) as u64;
    let end = client.measure_from + (a.duration_s * NS_PER_S) as u64;
    let sched = |i: u64| t0 + (i as f64 * period_ns) as u64;
    let mut next_i = 0u64;
    let mut next_check = t0 + TIMEOUT_CHECK_NS;
    let cpu0 = cpu_seconds();
    let mut last_sched = t0;
    loop {
        let now = now_ns();
        let check = now >= next_check;
        if check {
            next_check = now + TIMEOUT_CHECK_NS;
        }
        client.maintain(now, timeout_ns, check);
        // A due request goes out at once on a free connection; when none is free (or earlier
        // ones are still waiting) it joins the FIFO, which drains onto connections as they
        // come free.
        loop {
            let s = sched(next_i);
            if s >= end || s > now {
                break;
            }
            last_sched = s;
            next_i += 1;
            if client.pending.is_empty() {
                if let Some(idx) = client.free.pop_front() {
                    client.send(idx, s, now);
                    continue;
                }
            }
            if client.measured(s) {
                client.late += 1;
            }
            client.pending.push_back(s);
        }
        while !client.pending.is_empty() {
            let Some(idx) = client.free.pop_front() else {
                break;
            };
            let Some(s) = client.pending.pop_front() else {
                break;
            };
            client.send(idx, s, now);
        }
        let schedule_done = sched(next_i) >= end;
        let busy = client.busy();
        if schedule_done && client.pending.is_empty() && busy == 0 {
            break;
        }
        let drain_deadline = end + timeout_ns;
        if schedule_done && now >= drain_deadline {
            let left = client
                .conns
                .iter()
                .filter(|c| c.state == State::Busy && c.sched >= client.measure_from)
                .count() as u64;
            client.errors.timeout += left
                + client
                    .pending
                    .iter()
                    .filter(|&&s| s >= client.measure_from)
                    .count() as u64;
            break;
        }
        let mut wake = if schedule_done {
            drain_deadline
        } else {
            sched(next_i)
        };
        if let Some(r) = client.next_retry() {
            wake = wake.min(r);
        }
        if busy > 0 {
            wake = wake.min(next_check);
        }
        if wake <= now_ns() {
            continue;
        }
        timer.arm(wake)?;
        let n = client.epoll.wait(&mut events)?;
        let now = now_ns();
        for ev in events.iter().take(n) {
            let (tok, bits) = (ev.u64, ev.events);
            if tok != TOKEN_TIMER {
                client.on_event(tok, bits, &mut scratch, now);
            }
        }
    }
    let cpu1 = cpu_seconds();

    let window_end = client.last_done.max(last_sched).max(client.measure_from);
    let duration_ns = window_end - client.measure_from;
    let duration_ns = duration_ns.max((a.duration_s * NS_PER_S) as u64).max(1);
    let rps = client.requests as f64 / (duration_ns as f64 / NS_PER_S);
    let (user, sys) = (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1);
    let wall = (now_ns() - t0) as f64 / NS_PER_S;
    let (l, s, g) = (&client.latency, &client.service, &client.lag);
    let e = &client.errors;
    println!(
        "openloop: {} http://{}{}, {} connections, rate {} req/s, {} s measured after {} s warm-up",
        a.method, a.host_header, a.path, a.connections, a.rate, a.duration_s, a.warmup_s
    );
    println!(
        "  measured: {} responses in {:.3} s = {:.1} req/s; {} late (no free connection when due); \
         {} responses in all (warm-up included)",
        client.requests,
        duration_ns as f64 / NS_PER_S,
        rps,
        client.late,
        client.completed_all
    );
    println!(
        "  errors: connect {}, read {}, write {}, status {} (non-2xx), timeout {}",
        e.connect, e.read, e.write, e.status, e.timeout
    );
    for (name, h) in [
        ("latency from scheduled time", l),
        ("service time from send", s),
        ("send lag behind schedule", g),
    ] {
        println!(
            "  {name:28} µs: p50 {} p90 {} p99 {} p99.9 {} max {}",
            percentile(h, 0.5),
            percentile(h, 0.9),
            percentile(h, 0.99),
            percentile(h, 0.999),
            h.max()
        );
    }
    println!(
        "  cpu: user {user:.3} s, sys {sys:.3} s = {:.1} % of one core over {wall:.2} s, {:.1} µs per response",
        (user + sys) / wall * 100.0,
        if client.completed_all > 0 {
            (user + sys) * 1e6 / client.completed_all as f64
        } else {
            0.0
        }
    );
    println!(
        "LT_RESULT requests={} duration_us={} bytes={} err_connect={} err_read={} err_write={} \
         err_status={} err_timeout={} p50_us={} p90_us={} p99_us={} max_us={} late={} rate={} \
         lag_p50_us={} lag_p99_us={} svc_p50_us={} svc_p99_us={}",
        client.requests,
        duration_ns / 1000,
        client.bytes,
        e.connect,
        e.read,
        e.write,
        e.status,
        e.timeout,
        percentile(l, 0.5),
        percentile(l, 0.9),
        percentile(l, 0.99),
        l.max(),
        client.late,
        a.rate,
        percentile(g, 0.5),
        percentile(g, 0.99),
        percentile(s, 0.5),
        percentile(s, 0.99),
    );
    Ok(())
}

fn main() {
    let args = parse_args();
    if let Err(e) = run(&args) {
        eprintln!("openloop: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in parts ending at the offsets in `parts` (as a connection would receive
    /// it), parsing after each; returns the responses framed, the bytes left unconsumed, and
    /// the parser.
    fn feed(
        data: &[u8],
        parts: &[usize],
        head_request: bool,
    ) -> (Vec<Response>, Vec<u8>, ResponseParser) {
        let mut p = ResponseParser::new(head_request);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut from = 0;
        for &to in parts.iter().chain(std::iter::once(&data.len())) {
            buf.extend_from_slice(&data[from..to]);
            from = to;
            loop {
                let (used, step) = p.advance(&buf).unwrap();
                buf.drain(..used);
                match step {
                    Step::Done(r) => out.push(r),
                    Step::NeedMore => break,
                }
            }
        }
        (out, buf, p)
    }

    fn ok(status: u16, close: bool) -> Response {
        Response { status, close }
    }

    /// Every split position, and one byte at a time, give the same responses.
    fn check_all_splits(data: &[u8], head_request: bool, want: &[Response], want_eof: bool) {
        for split in 0..=data.len() {
            let (got, left, mut p) = feed(data, &[split], head_request);
            assert_eq!(got, want, "split at {split}");
            if !want_eof {
                assert!(left.is_empty(), "split at {split}: left {left:?}");
            }
            assert_eq!(p.eof().is_some(), want_eof, "split at {split}");
        }
        let every: Vec<usize> = (1..data.len()).collect();
        let (got, _, _) = feed(data, &every, head_request);
        assert_eq!(got, want, "byte at a time");
    }

    #[test]
    fn content_length() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"a\":\"bcd\"}";
        check_all_splits(r, false, &[ok(200, false)], false);
    }

    #[test]
    fn pipelined_and_mixed_case_headers() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 3\r\n\r\nabcHTTP/1.1 503 Busy\r\nContent-Length:0\r\nConnection: keep-alive, Close\r\n\r\n";
        check_all_splits(r, false, &[ok(200, false), ok(503, true)], false);
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n";
        check_all_splits(r, false, &[ok(200, false)], false);
        let r = b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        check_all_splits(r, false, &[ok(201, false)], false);
    }

    #[test]
    fn interim_then_final() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        check_all_splits(r, false, &[ok(200, false)], false);
    }

    #[test]
    fn no_body_statuses_and_head() {
        let r = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";
        check_all_splits(r, false, &[ok(204, false), ok(304, false)], false);
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n";
        check_all_splits(r, true, &[ok(200, false)], false);
    }

    #[test]
    fn body_until_close() {
        let r = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
        check_all_splits(r, false, &[], true);
        let (_, _, mut p) = feed(r, &[], false);
        assert_eq!(p.eof(), Some(ok(200, true)));
        // HTTP/1.0 with a length and keep-alive stays open; without keep-alive it closes
        let r = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nxHTTP/1.0 404 NF\r\nContent-Length: 0\r\n\r\n";
        check_all_splits(r, false, &[ok(200, false), ok(404, true)], false);
    }

    #[test]
    fn incomplete_is_not_eof_complete() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
        let (got, _, mut p) = feed(r, &[], false);
        assert!(got.is_empty());
        assert_eq!(p.eof(), None);
    }

    #[test]
    fn errors() {
        let bad: &[&[u8]] = &[
            b"HTTX/1.1 200 OK\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        ];
        for data in bad {
            let res = ResponseParser::new(false).advance(data);
            assert!(res.is_err(), "{:?}: {res:?}", String::from_utf8_lossy(data));
        }
        let mut p = ResponseParser::new(false);
        let long = vec![b'a'; HEAD_MAX_BYTES + 10];
        assert_eq!(p.advance(&long), Err(ParseError::HeadTooLong));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // a small deterministic generator over a vocabulary of HTTP fragments
        let frags: &[&[u8]] = &[
            b"HTTP/1.1 ",
            b"200 OK",
            b"\r\n",
            b"Content-Length: 3",
            b"Transfer-Encoding: chunked",
            b"5",
            b"0",
            b"abc",
            b";x",
            b":",
            b"\n",
            b"\xff",
        ];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..2000 {
            let mut data = Vec::new();
            for _ in 0..12 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(frags[(x % frags.len() as u64) as usize]);
            }
            let mut p = ResponseParser::new(false);
            let mut buf = data.clone();
            while let Ok((used, step)) = p.advance(&buf) {
                buf.drain(..used);
                if step == Step::NeedMore {
                    break;
                }
            }
            let _ = p.eof();
        }
    }

    #[test]
    fn url_and_request() {
        let (addr, host, path) = parse_url("http://127.0.0.1:18000/small").unwrap();
        assert_eq!(addr, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 18000));
        assert_eq!(host, "127.0.0.1:18000");
        assert_eq!(path, "/small");
        assert_eq!(parse_url("http://localhost:1").unwrap().2, "/");
        assert!(parse_url("http://10.0.0.1:80/").is_err());
        assert!(parse_url("https://127.0.0.1:80/").is_err());
        let a = Args {
            addr,
            host_header: host,
            path,
            connections: 1,
            rate: 1.0,
            duration_s: 1.0,
            warmup_s: 0.0,
            method: "POST".into(),
            body: Some(b"{}\n".to_vec()),
            timeout_s: 1.0,
        };
        assert_eq!(
            build_request(&a),
            b"POST /small HTTP/1.1\r\nHost: 127.0.0.1:18000\r\nContent-Type: application/x-ndjson\r\nContent-Length: 3\r\n\r\n{}\n"
        );
    }
}
