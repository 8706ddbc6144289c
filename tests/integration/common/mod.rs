//! Shared harness for the end-to-end tests: a real HTTP/1.1 origin server, a raw HTTP client,
//! an in-process proxy started on port 0 with a file sink, and a reader/validator for the
//! trace files it writes.
//!
//! May depend on: the crate's public API (`start`, `config`, `capture::proto`), std, httparse,
//! prost, base64, regex, socket2, tempfile. Nothing here reads the proxy's internals.
//!
//! Invariant: every socket operation is bounded by a timeout ([`IO_TIMEOUT`]) so a broken proxy
//! makes a test fail, never hang; readiness is signalled by bound listeners, never by sleeps.
#![allow(dead_code)]

pub mod admin;
pub mod binary;
pub mod forwarder;
pub mod kafka;
pub mod origins;
pub mod replayer;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use capture_proxy::capture::proto::traffic_observation::Capture;
use capture_proxy::capture::proto::traffic_stream::Index;
use capture_proxy::capture::proto::{TrafficObservation, TrafficStream};
use capture_proxy::config::{Config, FileSinkConfig, IoDriver, SinkConfig};

/// Bound on every client socket read/write (seconds): far above any legitimate latency here,
/// low enough that a stuck proxy fails the test quickly.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the origin's reads of an idle upstream connection (seconds): the proxy may keep a
/// connection open for the whole test; the origin thread must end eventually anyway.
const ORIGIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of the waits for the origin to have received forwarded bytes (seconds).
pub const FORWARD_WAIT: Duration = Duration::from_secs(5);
/// Largest serialized record under the default `--maxTrafficBufferSize` (1 MiB − 500).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024 - 500;
/// Socket read buffer (bytes) for the origin and the client.
const READ_CHUNK: usize = 64 * 1024;

/// Routes logs to the test output when `RUST_LOG` is set (`RUST_LOG=debug cargo test ...`).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// `read` that retries `EINTR`: a blocking socket read with a timeout (SO_RCVTIMEO) fails with
/// EINTR whenever the thread is interrupted (signal, freezer), whatever SA_RESTART says.
pub fn read_retrying(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Origin server
// ----------------------------------------------------------------------------------------

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct OriginRequest {
    /// Index of the origin connection (accept order) it arrived on.
    pub conn: usize,
    pub method: String,
    pub target: String,
    /// The request's bytes exactly as received (head and body framing).
    pub raw: Vec<u8>,
    /// The decoded body (chunked framing removed).
    pub body: Vec<u8>,
}

/// Called by the origin with each complete request before it answers.
pub type OriginHook = Box<dyn Fn(&OriginRequest) + Send + Sync>;

#[derive(Default)]
struct OriginShared {
    requests: Mutex<Vec<OriginRequest>>,
    hook: Mutex<Option<OriginHook>>,
    /// Every byte received, per connection in accept order.
    conn_raw: Mutex<Vec<Vec<u8>>>,
    connections: AtomicUsize,
    stop: AtomicBool,
}

/// A real HTTP/1.1 origin on 127.0.0.1:0, one thread per connection, keep-alive.
///
/// Routes: `/small` (≈200-byte JSON), `/large?bytes=N`, `/echo` (body echoed), `/chunked`,
/// `/status/204`, `/status/304`, `/close` (answers with `Connection: close` and closes),
/// `/die` (half a response then close), `/slow?ms=N`, `/upgrade` (101, then echoes raw bytes), `/reset` (RST, no answer),
/// `/die-reset` (half a response then RST), `/garbage` (bytes that are no HTTP response, then
/// close), `/idle-close?ms=N` (answers, then closes the connection once idle N ms); anything else is a 404. HEAD answers
/// the GET's headers without a body. `Expect: 100-continue` gets an interim 100 first.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<OriginShared>,
}

impl Origin {
    /// Binds and starts accepting; the listener is bound when this returns.
    pub fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let shared = Arc::new(OriginShared::default());
        let sh = shared.clone();
        thread::Builder::new()
            .name("origin-accept".into())
            .spawn(move || {
                for s in listener.incoming() {
                    if sh.stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    let idx = {
                        let mut raw = sh.conn_raw.lock().unwrap();
                        raw.push(Vec::new());
                        raw.len() - 1
                    };
                    sh.connections.fetch_add(1, Ordering::AcqRel);
                    let sh2 = sh.clone();
                    thread::Builder::new()
                        .name(format!("origin-conn-{idx}"))
                        .spawn(move || {
                            let mut c = OriginConn {
                                stream: s,
                                buf: Vec::new(),
                                idx,
                                shared: sh2,
                            };
                            let _ = c.serve();
                        })
                        .expect("spawn origin conn");
                }
            })
            .expect("spawn origin");
        Origin { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Installs `hook`, called with each request once all its bytes arrived, before the
    /// origin answers (e.g. to look at the trace at the moment the origin got the request).
    pub fn set_hook(&self, hook: impl Fn(&OriginRequest) + Send + Sync + 'static) {
        *self.shared.hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<OriginRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Number of connections accepted.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Acquire)
    }

    /// All bytes received, per connection (accept order).
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.shared.conn_raw.lock().unwrap().clone()
    }

    /// All bytes received on all connections, concatenated in accept order.
    pub fn received_all(&self) -> Vec<u8> {
        self.received().concat()
    }

    /// Waits (bounded) until the origin has received exactly `bytes` in all (so the proxy has
    /// read and forwarded them: the next client write reaches the proxy as a separate read).
    pub fn wait_received(&self, bytes: &[u8], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.received_all() == bytes {
                return true;
            }
            thread::sleep(Duration::from_millis(1));
        }
        self.received_all() == bytes
    }

    /// Waits (bounded) until at least `n` requests have arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.request_count() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        self.request_count() >= n
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Unblock the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

struct OriginConn {
    stream: TcpStream,
    /// Received, not yet consumed bytes.
    buf: Vec<u8>,
    idx: usize,
    shared: Arc<OriginShared>,
}

/// Parsed request head (owned).
struct Head {
    len: usize,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl OriginConn {
    /// Reads more bytes; `Ok(false)` on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = [0u8; READ_CHUNK];
        let n = read_retrying(&mut self.stream, &mut tmp)?;
        if n == 0 {
            return Ok(false);
        }
        self.buf.extend_from_slice(&tmp[..n]);
        if let Some(r) = self.shared.conn_raw.lock().unwrap().get_mut(self.idx) {
            r.extend_from_slice(&tmp[..n]);
        }
        Ok(true)
    }

    fn need(&mut self, upto: usize) -> io::Result<()> {
        while self.buf.len() < upto {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Index of the CRLF ending the line that starts at `from` (reads more as needed).
    fn line_end(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(p) = self
                .buf
                .get(from..)
                .and_then(|s| s.windows(2).position(|w| w == b"\r\n"))
            {
                return Ok(from + p);
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// `Ok(None)` on a clean EOF between requests.
    fn read_head(&mut self) -> io::Result<Option<Head>> {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut hs);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => {
                    return Ok(Some(Head {
                        len,
                        method: req.method.unwrap_or("").to_string(),
                        target: req.path.unwrap_or("").to_string(),
                        headers: req
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                    }))
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill()? {
                        return if self.buf.is_empty() {
                            Ok(None)
                        } else {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        };
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        }
    }

    /// Reads the body that follows a head of `head.len` bytes; returns (end offset, body).
    fn read_body(&mut self, head: &Head) -> io::Result<(usize, Vec<u8>)> {
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let mut pos = head.len;
            let mut body = Vec::new();
            loop {
                let end = self.line_end(pos)?;
                let line = String::from_utf8_lossy(&self.buf[pos..end]).into_owned();
                let size_txt = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_txt, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
                pos = end + 2;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        let e = self.line_end(pos)?;
                        let empty = e == pos;
                        pos = e + 2;
                        if empty {
                            return Ok((pos, body));
                        }
                    }
                }
                self.need(pos + size + 2)?;
                body.extend_from_slice(&self.buf[pos..pos + size]);
                pos += size + 2;
            }
        }
        let cl = head
            .header("content-length")
            .map(|v| v.trim().parse::<usize>())
            .transpose()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?
            .unwrap_or(0);
        self.need(head.len + cl)?;
        Ok((head.len + cl, self.buf[head.len..head.len + cl].to_vec()))
    }

    fn serve(&mut self) -> io::Result<()> {
        self.stream.set_read_timeout(Some(ORIGIN_IDLE_TIMEOUT))?;
        self.stream.set_write_timeout(Some(ORIGIN_IDLE_TIMEOUT))?;
        self.stream.set_nodelay(true)?;
        loop {
            let Some(head) = self.read_head()? else {
                return Ok(());
            };
            if head
                .header("expect")
                .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
            {
                self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            }
            let (end, body) = self.read_body(&head)?;
            let raw: Vec<u8> = self.buf.drain(..end).collect();
            let req = OriginRequest {
                conn: self.idx,
                method: head.method.clone(),
                target: head.target.clone(),
                raw,
                body: body.clone(),
            };
            if let Some(h) = self.shared.hook.lock().unwrap().as_ref() {
                h(&req);
            }
            self.shared.requests.lock().unwrap().push(req);
            if head.target == "/reset" {
                // Abort: RST instead of an answer.
                socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
            if head.target == "/die-reset" {
                // Half a response, a pause so the proxy forwards it, then RST.
                self.stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n",
                )?;
                self.stream.write_all(&large_body(500))?;
                self.stream.flush()?;
                thread::sleep(Duration::from_millis(50));
                socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO))?;
                return Ok(());
            }
            if head.target == "/hangup" {
                // A clean close (FIN) without any answer.
                let _ = self.stream.shutdown(Shutdown::Both);
                return Ok(());
            }
            let client_close = head
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            let keep = self.respond(&head, &body)?;
            if !keep || client_close {
                let _ = self.stream.shutdown(Shutdown::Write);
                // Drain until the peer closes so our close does not reset unread bytes.
                let _ = self.stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut tmp = [0u8; 4096];
                while matches!(read_retrying(&mut self.stream, &mut tmp), Ok(n) if n > 0) {}
                return Ok(());
            }
        }
    }

    /// Writes the response; returns whether the connection stays open.
    fn respond(&mut self, head: &Head, body: &[u8]) -> io::Result<bool> {
        let is_head = head.method == "HEAD";
        let (path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (head.target.as_str(), ""),
        };
        let qnum = |key: &str| -> Option<usize> {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse().ok())
        };
        let s = &mut self.stream;
        match path {
            "/small" => {
                let b = small_body(&head.target);
                write_fixed(s, "200 OK", "application/json", &b, is_head, false)?;
            }
            "/large" => {
                let b = large_body(qnum("bytes").unwrap_or(0));
                write_fixed(s, "200 OK", "application/octet-stream", &b, is_head, false)?;
            }
            "/echo" => {
                write_fixed(
                    s,
                    "200 OK",
                    "application/octet-stream",
                    body,
                    is_head,
                    false,
                )?;
            }
            "/slow" => {
                thread::sleep(Duration::from_millis(qnum("ms").unwrap_or(100) as u64));
                let b = small_body(&head.target);
                write_fixed(s, "200 OK", "application/json", &b, is_head, false)?;
            }
            "/chunked" => {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")?;
                if !is_head {
                    for c in CHUNKS {
                        s.write_all(format!("{:x}\r\n", c.len()).as_bytes())?;
                        s.write_all(c)?;
                        s.write_all(b"\r\n")?;
                        s.flush()?;
                    }
                    s.write_all(b"0\r\n\r\n")?;
                }
            }
            "/status/204" => s.write_all(b"HTTP/1.1 204 No Content\r\nx-origin: yes\r\n\r\n")?,
            "/status/304" => s.write_all(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n")?,
            "/close" => {
                write_fixed(s, "200 OK", "text/plain", b"bye\n", is_head, true)?;
                return Ok(false);
            }
            "/upgrade" => {
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n")?;
                s.flush()?;
                // Opaque from here: echo raw bytes until EOF.
                let mut tmp = [0u8; 4096];
                let mut leftover = std::mem::take(&mut self.buf);
                loop {
                    if !leftover.is_empty() {
                        self.stream.write_all(&leftover)?;
                        leftover.clear();
                    }
                    let n = read_retrying(&mut self.stream, &mut tmp)?;
                    if n == 0 {
                        return Ok(false);
                    }
                    if let Some(r) = self.shared.conn_raw.lock().unwrap().get_mut(self.idx) {
                        r.extend_from_slice(&tmp[..n]);
                    }
                    leftover.extend_from_slice(&tmp[..n]);
                }
            }
            "/die" => {
                s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1000\r\n\r\n",
                )?;
                s.write_all(&large_body(500))?;
                s.flush()?;
                return Ok(false);
            }
            "/garbage" => {
                s.write_all(GARBAGE_RESPONSE)?;
                s.flush()?;
                return Ok(false);
            }
            "/idle-close" => {
                write_fixed(s, "200 OK", "text/plain", b"idle\n", is_head, false)?;
                // The next read times out after `ms` idle: `serve` ends and drops (closes) it.
                s.set_read_timeout(Some(
                    Duration::from_millis(qnum("ms").unwrap_or(200) as u64),
                ))?;
            }
            _ => write_fixed(
                s,
                "404 Not Found",
                "text/plain",
                b"not found\n",
                is_head,
                false,
            )?,
        }
        s.flush()?;
        Ok(true)
    }
}

/// What `/garbage` answers: not an HTTP response (an SSH banner and binary bytes).
pub const GARBAGE_RESPONSE: &[u8] = b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe not http \r\n\r\n";

/// The chunks of the `/chunked` response.
pub const CHUNKS: [&[u8]; 4] = [b"hello ", b"chunked ", b"world", &[b'z'; 1000]];

fn write_fixed(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    is_head: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !is_head {
        out.extend_from_slice(body);
    }
    s.write_all(&out)
}

/// The `/small` body: about 200 bytes of JSON naming the request target.
pub fn small_body(target: &str) -> Vec<u8> {
    let mut s = format!(
        "{{\"name\":\"origin-1\",\"cluster_name\":\"itest\",\"target\":\"{target}\",\"version\":{{\"number\":\"7.10.2\"}},\"tagline\":\"You Know, for Search\",\"pad\":\""
    );
    while s.len() < 190 {
        s.push('x');
    }
    s.push_str("\"}");
    s.into_bytes()
}

/// `n` deterministic printable bytes.
pub fn large_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

// ----------------------------------------------------------------------------------------
// Raw client
// ----------------------------------------------------------------------------------------

/// One response as the client parsed it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Decoded body (chunked framing removed).
    pub body: Vec<u8>,
    /// The response's bytes exactly as received.
    pub raw: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// A raw HTTP/1.1 client: writes exactly the bytes it is given, parses what comes back.
pub struct Client {
    pub stream: TcpStream,
    /// Received, not yet parsed bytes.
    pending: Vec<u8>,
    eof: bool,
    /// Every byte written.
    pub sent: Vec<u8>,
    /// Every byte received.
    pub received: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect to proxy");
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        Client {
            stream,
            pending: Vec::new(),
            eof: false,
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    /// Writes `bytes` in one write call.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("client write");
    }

    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        self.sent.extend_from_slice(bytes);
        Ok(())
    }

    /// Writes each chunk separately, pausing `pause` between chunks (only where the test
    /// needs the proxy to see separate reads).
    pub fn send_chunks(&mut self, chunks: &[&[u8]], pause: Duration) {
        for (i, c) in chunks.iter().enumerate() {
            if i > 0 && !pause.is_zero() {
                thread::sleep(pause);
            }
            self.send(c);
        }
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        let mut tmp = vec![0u8; READ_CHUNK];
        let n = read_retrying(&mut self.stream, &mut tmp)?;
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.pending.extend_from_slice(&tmp[..n]);
        self.received.extend_from_slice(&tmp[..n]);
        Ok(true)
    }

    fn need(&mut self, upto: usize) -> io::Result<()> {
        while self.pending.len() < upto {
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in response",
                ));
            }
        }
        Ok(())
    }

    fn line_end(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(p) = self
                .pending
                .get(from..)
                .and_then(|s| s.windows(2).position(|w| w == b"\r\n"))
            {
                return Ok(from + p);
            }
            if !self.fill()? {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in chunked body",
                ));
            }
        }
    }

    /// Reads one response (an interim 1xx counts as one). Panics on error or timeout.
    pub fn read_response(&mut self, head_request: bool) -> Response {
        self.try_read_response(head_request).expect("read response")
    }

    /// Reads one response per entry of `head_requests` (true = answer to a HEAD).
    pub fn read_responses(&mut self, head_requests: &[bool]) -> Vec<Response> {
        head_requests
            .iter()
            .map(|h| self.read_response(*h))
            .collect()
    }

    /// Reads `n` responses to non-HEAD requests.
    pub fn read_n(&mut self, n: usize) -> Vec<Response> {
        (0..n).map(|_| self.read_response(false)).collect()
    }

    pub fn try_read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let (head_len, status, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.pending) {
                Ok(httparse::Status::Complete(n)) => {
                    let headers: Vec<(String, Vec<u8>)> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.to_string(), h.value.to_vec()))
                        .collect();
                    break (n, r.code.unwrap_or(0), headers);
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill()? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "eof in response head",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        };
        let hdr = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        };
        let no_body =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let (end, body) = if no_body {
            (head_len, Vec::new())
        } else if hdr("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut pos = head_len;
            let mut body = Vec::new();
            loop {
                let e = self.line_end(pos)?;
                let line = String::from_utf8_lossy(&self.pending[pos..e]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
                pos = e + 2;
                if size == 0 {
                    loop {
                        let e = self.line_end(pos)?;
                        let empty = e == pos;
                        pos = e + 2;
                        if empty {
                            break;
                        }
                    }
                    break (pos, body);
                }
                self.need(pos + size + 2)?;
                body.extend_from_slice(&self.pending[pos..pos + size]);
                pos += size + 2;
            }
        } else if let Some(cl) = hdr("content-length") {
            let cl: usize = cl
                .trim()
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
            self.need(head_len + cl)?;
            (
                head_len + cl,
                self.pending[head_len..head_len + cl].to_vec(),
            )
        } else {
            // Close-delimited.
            while self.fill()? {}
            (self.pending.len(), self.pending[head_len..].to_vec())
        };
        let raw: Vec<u8> = self.pending.drain(..end).collect();
        Ok(Response {
            status,
            headers,
            body,
            raw,
        })
    }

    /// Reads until EOF (bounded by the read timeout); returns the bytes not yet parsed.
    pub fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? {}
        Ok(std::mem::take(&mut self.pending))
    }

    /// True when the peer closed (EOF) or reset the connection within the read timeout.
    pub fn closed_by_peer(&mut self) -> bool {
        match self.read_to_eof() {
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

/// `GET {path}` with a Host header, keep-alive.
pub fn get(path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: itest/1.0\r\nAccept: */*\r\n\r\n"
    )
    .into_bytes()
}

/// A request with a Content-Length body.
pub fn with_body(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "{method} {path} HTTP/1.1\r\nHost: origin.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// `POST {path}` with a Content-Length body.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    with_body("POST", path, body)
}

/// Half-closes the client and waits for the proxy to close the connection too.
#[track_caller]
pub fn finish_client(c: &mut Client) {
    c.shutdown_write();
    assert!(c.closed_by_peer(), "proxy did not close the connection");
}

/// Sends `req` and returns the response with how long it took.
pub fn timed(c: &mut Client, req: &[u8]) -> (Response, Duration) {
    let t0 = Instant::now();
    c.send(req);
    let r = c.read_response(false);
    (r, t0.elapsed())
}

/// A GET of `path` through a fresh connection is answered 200 with the origin's body, then the
/// connection is closed by both sides (the proxy keeps serving).
#[track_caller]
pub fn assert_serves_path(proxy: &Proxy, path: &str) -> Client {
    let mut c = proxy.client();
    c.send(&get(path));
    let r = c.read_response(false);
    assert_eq!(r.status, 200, "follow-up GET {path}");
    assert_eq!(r.body, small_body(path));
    c.shutdown_write();
    assert!(c.closed_by_peer());
    c
}

static SERIAL: Mutex<()> = Mutex::new(());

/// One test of the calling test file at a time (each test file is its own crate, so its own
/// lock); a failed test does not poison the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits (bounded by `bound`) until `pred` holds; panics naming `what` otherwise.
#[track_caller]
pub fn wait_until(what: &str, bound: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Expected EOM lengths of a request: (request line without CRLF, sum of header lines without
/// their CRLFs, not counting the empty line).
pub fn eom_lengths(request: &[u8]) -> (i32, i32) {
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("request has a complete head");
    let head = &request[..head_end];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let first = lines.next().unwrap_or(&[]).len() as i32;
    let headers: i32 = lines.map(|l| l.len() as i32).sum();
    (first, headers)
}

// ----------------------------------------------------------------------------------------
// Proxy under test
// ----------------------------------------------------------------------------------------

/// The driver tests use: always `Auto` (io_uring), which falls back to epoll when
/// `MONOIO_FORCE_LEGACY_DRIVER=1` is set — the suite is run once each way.
pub fn driver_from_env() -> IoDriver {
    IoDriver::Auto
}

/// Whether `MONOIO_FORCE_LEGACY_DRIVER` asks for epoll (the values monoio accepts).
pub fn legacy_forced() -> bool {
    std::env::var("MONOIO_FORCE_LEGACY_DRIVER")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
        .unwrap_or(false)
}

/// The test configuration: forward to `origin`, file sink in `dir`, driver from the env.
pub fn test_config(origin: SocketAddr, dir: &Path) -> Config {
    let mut cfg = Config::for_test(
        origin,
        SinkConfig::File(FileSinkConfig {
            dir: dir.to_path_buf(),
            max_file_bytes: 256 << 20,
        }),
    );
    cfg.io_driver = driver_from_env();
    // Bounded so a test that leaves a connection open cannot hang the shutdown for long.
    cfg.drain_timeout = Duration::from_secs(10);
    cfg
}

/// A running proxy with its trace directory.
pub struct Proxy {
    handle: Option<capture_proxy::Handle>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts a proxy to `origin`; `tweak` adjusts the test configuration first.
    pub fn start(origin: SocketAddr, tweak: impl FnOnce(&mut Config)) -> Proxy {
        init_logging();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = test_config(origin, dir.path());
        tweak(&mut cfg);
        let handle = capture_proxy::start(cfg).expect("start proxy");
        let addr = handle.local_addrs()[0];
        Proxy {
            handle: Some(handle),
            dir,
            addr,
        }
    }

    pub fn handle(&self) -> &capture_proxy::Handle {
        self.handle.as_ref().expect("proxy running")
    }

    /// Takes the handle (e.g. to shut down from another thread).
    pub fn take_handle(&mut self) -> capture_proxy::Handle {
        self.handle.take().expect("proxy running")
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Graceful shutdown, then the whole trace.
    pub fn stop(mut self) -> Trace {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
        Trace::load(self.dir.path())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
        }
    }
}

// ----------------------------------------------------------------------------------------
// Trace reading
// ----------------------------------------------------------------------------------------

/// `capture-*.log` files of `dir`, sorted by name.
pub fn trace_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read trace dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("capture-") && n.ends_with(".log"))
        })
        .collect();
    v.sort();
    v
}

/// Every record (serialized bytes) in file order. With `strict`, every line must be complete
/// and valid; without, an unterminated last line of a file (being written) is skipped.
pub fn read_trace_values(dir: &Path, strict: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in trace_files(dir) {
        let text = std::fs::read(&f).expect("read trace file");
        let complete = text.ends_with(b"\n");
        let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
        // The piece after the last '\n' is empty for a complete file.
        let last = lines.pop().unwrap_or(&[]);
        if strict {
            assert!(
                complete || text.is_empty(),
                "{}: last line not terminated",
                f.display()
            );
        }
        let _ = last;
        for (i, l) in lines.iter().enumerate() {
            let l = l.strip_suffix(b"\r").unwrap_or(l);
            if l.is_empty() {
                assert!(!strict, "{}: empty line {}", f.display(), i + 1);
                continue;
            }
            match base64::engine::general_purpose::STANDARD.decode(l) {
                Ok(v) => out.push(v),
                Err(e) => panic!("{}: line {}: bad base64: {e}", f.display(), i + 1),
            }
        }
    }
    out
}

/// Every record in the trace directory, decoded, in file order.
pub fn read_trace(dir: &Path) -> Vec<TrafficStream> {
    read_trace_values(dir, true)
        .iter()
        .map(|v| decode(v))
        .collect()
}

pub fn decode(v: &[u8]) -> TrafficStream {
    <TrafficStream as prost::Message>::decode(v).expect("TrafficStream decodes")
}

/// A decoded trace, records in file order, with their serialized sizes.
pub struct Trace {
    pub records: Vec<(TrafficStream, usize)>,
}

impl Trace {
    pub fn load(dir: &Path) -> Trace {
        Trace::from_values(read_trace_values(dir, true))
    }

    /// For polling while the proxy runs: ignores a partly written last line.
    pub fn load_partial(dir: &Path) -> Trace {
        Trace::from_values(read_trace_values(dir, false))
    }

    fn from_values(values: Vec<Vec<u8>>) -> Trace {
        Trace {
            records: values.iter().map(|v| (decode(v), v.len())).collect(),
        }
    }

    /// Connections in order of their first record.
    pub fn connections(&self) -> Vec<ConnTrace> {
        let mut order: Vec<String> = Vec::new();
        let mut map: HashMap<String, ConnTrace> = HashMap::new();
        for (r, size) in &self.records {
            let c = map.entry(r.connection_id.clone()).or_insert_with(|| {
                order.push(r.connection_id.clone());
                ConnTrace {
                    id: r.connection_id.clone(),
                    records: Vec::new(),
                    sizes: Vec::new(),
                }
            });
            c.records.push(r.clone());
            c.sizes.push(*size);
        }
        order.into_iter().filter_map(|id| map.remove(&id)).collect()
    }

    /// The only connection of the trace (panics unless there is exactly one).
    pub fn single(&self) -> ConnTrace {
        let mut c = self.connections();
        assert_eq!(
            c.len(),
            1,
            "expected one connection in the trace, got {}: {}",
            c.len(),
            self.dump()
        );
        c.remove(0)
    }

    /// One line per record, for failure messages.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        for (r, size) in &self.records {
            s.push_str(&format!(
                "\n  conn={} idx={:?} prior={:?} unterminated={:?} size={} obs={:?}",
                r.connection_id,
                r.index,
                r.prior_requests_received,
                r.last_observation_was_unterminated_read,
                size,
                r.sub_stream.iter().map(kind_detail).collect::<Vec<_>>()
            ));
        }
        s
    }
}

/// The records of one connection, in order.
#[derive(Clone)]
pub struct ConnTrace {
    pub id: String,
    pub records: Vec<TrafficStream>,
    pub sizes: Vec<usize>,
}

/// Name of an observation kind (the spec's field names; `eom` for the end-of-message marker).
pub fn kind(o: &TrafficObservation) -> &'static str {
    match &o.capture {
        None => "none",
        Some(Capture::Bind(_)) => "bind",
        Some(Capture::Connect(_)) => "connect",
        Some(Capture::Read(_)) => "read",
        Some(Capture::ReadSegment(_)) => "readSegment",
        Some(Capture::RequestReleasedDownstream(_)) => "requestReleasedDownstream",
        Some(Capture::Write(_)) => "write",
        Some(Capture::WriteSegment(_)) => "writeSegment",
        Some(Capture::Disconnect(_)) => "disconnect",
        Some(Capture::Close(_)) => "close",
        Some(Capture::ConnectionException(_)) => "connectionException",
        Some(Capture::SegmentEnd(_)) => "segmentEnd",
        Some(Capture::EndOfMessageIndicator(_)) => "eom",
        Some(Capture::RequestDropped(_)) => "requestDropped",
    }
}

fn kind_detail(o: &TrafficObservation) -> String {
    match &o.capture {
        Some(Capture::Read(r)) => format!("read({})", r.data.len()),
        Some(Capture::ReadSegment(r)) => format!("readSegment({})", r.data.len()),
        Some(Capture::Write(r)) => format!("write({})", r.data.len()),
        Some(Capture::WriteSegment(r)) => format!("writeSegment({})", r.data.len()),
        Some(Capture::EndOfMessageIndicator(e)) => format!(
            "eom({:?},{:?})",
            e.first_line_byte_length, e.headers_byte_length
        ),
        Some(Capture::ConnectionException(e)) => format!("connectionException({:?})", e.message),
        _ => kind(o).to_string(),
    }
}

impl ConnTrace {
    pub fn observations(&self) -> impl Iterator<Item = &TrafficObservation> {
        self.records.iter().flat_map(|r| r.sub_stream.iter())
    }

    /// Observation kinds in order, across records.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.observations().map(kind).collect()
    }

    /// Observation kinds of record `i` (0-based).
    pub fn record_kinds(&self, i: usize) -> Vec<&'static str> {
        self.records[i].sub_stream.iter().map(kind).collect()
    }

    /// Kinds with segments folded into their data kind (`readSegment…segmentEnd` → `read`)
    /// and consecutive runs of `read` / of `write` collapsed into one.
    pub fn shape(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        let mut last_data = "";
        for o in self.observations() {
            let k = match kind(o) {
                "read" | "readSegment" => "read",
                "write" | "writeSegment" => "write",
                "segmentEnd" => last_data,
                k => k,
            };
            if k == "read" || k == "write" {
                last_data = k;
                if out.last() == Some(&k) {
                    continue;
                }
            }
            out.push(k);
        }
        out
    }

    /// All read data (`read` + `readSegment`), concatenated in order.
    pub fn reads(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for o in self.observations() {
            match &o.capture {
                Some(Capture::Read(r)) => v.extend_from_slice(&r.data),
                Some(Capture::ReadSegment(r)) => v.extend_from_slice(&r.data),
                _ => {}
            }
        }
        v
    }

    /// All write data (`write` + `writeSegment`), concatenated in order.
    pub fn writes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for o in self.observations() {
            match &o.capture {
                Some(Capture::Write(r)) => v.extend_from_slice(&r.data),
                Some(Capture::WriteSegment(r)) => v.extend_from_slice(&r.data),
                _ => {}
            }
        }
        v
    }

    /// The data of each plain `read` observation.
    pub fn read_chunks(&self) -> Vec<Vec<u8>> {
        self.observations()
            .filter_map(|o| match &o.capture {
                Some(Capture::Read(r)) => Some(r.data.clone()),
                _ => None,
            })
            .collect()
    }

    /// Read bytes per captured request: the reads between consecutive EOM markers (one entry
    /// per EOM; bytes after the last EOM are not included).
    pub fn request_reads(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut cur = Vec::new();
        for o in self.observations() {
            match &o.capture {
                Some(Capture::Read(r)) => cur.extend_from_slice(&r.data),
                Some(Capture::ReadSegment(r)) => cur.extend_from_slice(&r.data),
                Some(Capture::EndOfMessageIndicator(_)) => out.push(std::mem::take(&mut cur)),
                Some(Capture::RequestDropped(_)) => cur.clear(),
                _ => {}
            }
        }
        out
    }

    /// Write bytes following each EOM, up to the next read (one entry per EOM).
    pub fn response_writes(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut open = false;
        for o in self.observations() {
            match &o.capture {
                Some(Capture::EndOfMessageIndicator(_)) => {
                    out.push(Vec::new());
                    open = true;
                }
                Some(Capture::Read(_)) | Some(Capture::ReadSegment(_)) => open = false,
                Some(Capture::Write(w)) if open => {
                    out.last_mut().unwrap().extend_from_slice(&w.data)
                }
                Some(Capture::WriteSegment(w)) if open => {
                    out.last_mut().unwrap().extend_from_slice(&w.data)
                }
                _ => {}
            }
        }
        out
    }

    /// (firstLineByteLength, headersByteLength) of every EOM, in order.
    pub fn eoms(&self) -> Vec<(Option<i32>, Option<i32>)> {
        self.observations()
            .filter_map(|o| match &o.capture {
                Some(Capture::EndOfMessageIndicator(e)) => {
                    Some((e.first_line_byte_length, e.headers_byte_length))
                }
                _ => None,
            })
            .collect()
    }

    pub fn count(&self, k: &str) -> usize {
        self.observations().filter(|o| kind(o) == k).count()
    }

    pub fn exceptions(&self) -> Vec<String> {
        self.observations()
            .filter_map(|o| match &o.capture {
                Some(Capture::ConnectionException(e)) => Some(e.message.clone()),
                _ => None,
            })
            .collect()
    }

    /// `number` / `numberOfThisLastChunk` of each record.
    pub fn indexes(&self) -> Vec<Index> {
        self.records
            .iter()
            .map(|r| r.index.expect("index set"))
            .collect()
    }

    /// Checks every connection-independent rule of the spec; panics with the trace on error:
    /// numbering 1..N with exactly one (last) final record; one node id; field 6 = EOMs
    /// before the record (absent when 0); field 7 present (true) exactly when the record
    /// starts mid-request; only the observation kinds the proxy writes, each with a
    /// timestamp; one `close`, last; segments terminated by `segmentEnd` with the original
    /// timestamp; EOM right after a read, same timestamp, both lengths set; sizes ≤ limit.
    /// Asserts the connection's observation shape ([`ConnTrace::shape`]) is `want`, dumping
    /// the connection otherwise.
    #[track_caller]
    pub fn assert_shape(&self, want: &[&str]) {
        assert_eq!(self.shape(), want, "{}", self.dump());
    }

    pub fn check(&self) {
        self.check_with_limit(MAX_RECORD_BYTES)
    }

    /// [`check`](Self::check) with records limited to `max_record_bytes`.
    pub fn check_with_limit(&self, max_record_bytes: usize) {
        let fail = |msg: String| -> ! { panic!("connection {}: {msg}\n{}", self.id, self.dump()) };
        let n = self.records.len();
        if n == 0 {
            fail("no records".into());
        }
        let node = &self.records[0].node_id;
        if node.is_empty() {
            fail("empty nodeId".into());
        }
        if self.id.is_empty() {
            fail("empty connectionId".into());
        }
        let mut eoms_before = 0i32;
        let mut in_request = false;
        // Open segment run: (kind, timestamp).
        let mut seg: Option<(
            &'static str,
            Option<capture_proxy::capture::proto::Timestamp>,
        )> = None;
        let mut prev: Option<&TrafficObservation> = None;
        let mut closes = 0;
        for (i, (r, size)) in self.records.iter().zip(&self.sizes).enumerate() {
            let want = if i + 1 == n {
                Index::NumberOfThisLastChunk(i as i32 + 1)
            } else {
                Index::Number(i as i32 + 1)
            };
            if r.index != Some(want) {
                fail(format!(
                    "record {} has index {:?}, want {:?}",
                    i + 1,
                    r.index,
                    want
                ));
            }
            if &r.node_id != node {
                fail(format!("record {} nodeId differs", i + 1));
            }
            if *size > max_record_bytes {
                fail(format!(
                    "record {} is {} bytes > {}",
                    i + 1,
                    size,
                    max_record_bytes
                ));
            }
            if r.prior_requests_received == Some(0) {
                fail(format!(
                    "record {} has explicit priorRequestsReceived=0",
                    i + 1
                ));
            }
            if r.last_observation_was_unterminated_read == Some(false) {
                fail(format!(
                    "record {} has explicit lastObservationWasUnterminatedRead=false",
                    i + 1
                ));
            }
            let want_prior = if eoms_before > 0 {
                Some(eoms_before)
            } else {
                None
            };
            if r.prior_requests_received != want_prior {
                fail(format!(
                    "record {}: priorRequestsReceived {:?}, want {:?}",
                    i + 1,
                    r.prior_requests_received,
                    want_prior
                ));
            }
            let want_unterm = if in_request { Some(true) } else { None };
            if r.last_observation_was_unterminated_read != want_unterm {
                fail(format!(
                    "record {}: lastObservationWasUnterminatedRead {:?}, want {:?}",
                    i + 1,
                    r.last_observation_was_unterminated_read,
                    want_unterm
                ));
            }
            if r.sub_stream.is_empty() {
                fail(format!("record {} has no observations", i + 1));
            }
            for o in &r.sub_stream {
                let k = kind(o);
                if o.ts.is_none() {
                    fail(format!("record {}: {k} without timestamp", i + 1));
                }
                if let Some((sk, sts)) = seg {
                    let ok = (sk == "readSegment" && k == "readSegment")
                        || (sk == "writeSegment" && k == "writeSegment")
                        || k == "segmentEnd";
                    if !ok {
                        fail(format!("record {}: {k} inside an open {sk} run", i + 1));
                    }
                    if o.ts != sts {
                        fail(format!(
                            "record {}: segment piece with a different timestamp",
                            i + 1
                        ));
                    }
                }
                match k {
                    "read" => in_request = true,
                    "readSegment" | "writeSegment" => {
                        if k == "readSegment" {
                            in_request = true;
                        }
                        if seg.is_none() {
                            seg = Some((k, o.ts));
                        }
                    }
                    "segmentEnd" => {
                        if seg.is_none() {
                            fail(format!("record {}: segmentEnd without segments", i + 1));
                        }
                        seg = None;
                    }
                    "write" | "connectionException" | "requestDropped" => {
                        if k == "requestDropped" {
                            in_request = false;
                        }
                        if let Some(Capture::ConnectionException(e)) = &o.capture {
                            if e.message.is_empty() {
                                fail(format!(
                                    "record {}: empty connectionException message",
                                    i + 1
                                ));
                            }
                        }
                    }
                    "eom" => {
                        let after_read = prev.is_some_and(|p| {
                            matches!(kind(p), "read" | "segmentEnd") && p.ts == o.ts
                        });
                        if !after_read {
                            fail(format!(
                                "record {}: eom not directly after a read with the same timestamp",
                                i + 1
                            ));
                        }
                        if let Some(Capture::EndOfMessageIndicator(e)) = &o.capture {
                            if e.first_line_byte_length.is_none() || e.headers_byte_length.is_none()
                            {
                                fail(format!("record {}: eom without both lengths", i + 1));
                            }
                        }
                        eoms_before += 1;
                        in_request = false;
                    }
                    "close" => closes += 1,
                    other => fail(format!(
                        "record {}: unexpected observation kind {other}",
                        i + 1
                    )),
                }
                prev = Some(o);
            }
        }
        if let Some((sk, _)) = seg {
            fail(format!("unterminated {sk} run"));
        }
        if closes != 1 {
            fail(format!("{closes} close observations, want 1"));
        }
        if self.kinds().last() != Some(&"close") {
            fail("close is not the last observation".into());
        }
    }

    pub fn dump(&self) -> String {
        Trace {
            records: self
                .records
                .iter()
                .cloned()
                .zip(self.sizes.iter().copied())
                .collect(),
        }
        .dump()
    }
}

/// Asserts the connection captured exactly the client's exchange: reads == every byte the
/// client sent, writes == every byte it received.
#[track_caller]
pub fn assert_exchange(conn: &ConnTrace, client: &Client) {
    assert_bytes_eq(
        "captured reads vs bytes the client sent",
        &conn.reads(),
        &client.sent,
    );
    assert_bytes_eq(
        "captured writes vs bytes the client received",
        &conn.writes(),
        &client.received,
    );
}

/// The captured connection whose reads are exactly what `client` sent.
#[track_caller]
pub fn conn_sent_by<'a>(conns: &'a [ConnTrace], client: &Client) -> &'a ConnTrace {
    conns
        .iter()
        .find(|c| c.reads() == client.sent)
        .unwrap_or_else(|| {
            panic!(
                "no captured connection read the client's {} bytes ({:?}…)",
                client.sent.len(),
                String::from_utf8_lossy(&client.sent[..client.sent.len().min(60)])
            )
        })
}

/// The connection of `t` whose captured reads are exactly what `client` sent.
#[track_caller]
pub fn conn_of(t: &Trace, client: &Client) -> ConnTrace {
    t.connections()
        .into_iter()
        .find(|c| c.reads() == client.sent)
        .unwrap_or_else(|| {
            panic!(
                "no connection captured the client's {} bytes:{}",
                client.sent.len(),
                t.dump()
            )
        })
}

/// (Some(first line), Some(headers)) as the EOM should carry them for `request`.
pub fn eom_of(request: &[u8]) -> (Option<i32>, Option<i32>) {
    let (a, b) = eom_lengths(request);
    (Some(a), Some(b))
}

/// Polls (bounded) until `pred` holds on the partially written trace; returns it if so.
pub fn poll_trace(
    dir: &Path,
    timeout: Duration,
    mut pred: impl FnMut(&Trace) -> bool,
) -> Option<Trace> {
    let deadline = Instant::now() + timeout;
    loop {
        let t = Trace::load_partial(dir);
        if pred(&t) {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts `a == b` for byte strings, printing a short, readable diff on failure.
#[track_caller]
pub fn assert_bytes_eq(what: &str, actual: &[u8], expected: &[u8]) {
    if actual != expected {
        let first_diff = actual
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(actual.len().min(expected.len()));
        let show = |v: &[u8]| {
            let from = first_diff.saturating_sub(40);
            let to = (first_diff + 80).min(v.len());
            String::from_utf8_lossy(&v[from.min(to)..to]).into_owned()
        };
        panic!(
            "{what}: {} bytes vs expected {} bytes; first difference at {first_diff}\n actual:   {:?}\n expected: {:?}",
            actual.len(),
            expected.len(),
            show(actual),
            show(expected)
        );
    }
}
