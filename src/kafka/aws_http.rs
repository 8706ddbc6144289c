//! The small blocking HTTP/1.1 client the AWS credential sources use (the EC2 instance
//! metadata service, the container credentials endpoint, STS): one request per fresh
//! connection, plain `http://` or `https://` over rustls, bounded by a connect timeout, an
//! overall I/O deadline and a response size cap; `Content-Length`, chunked and
//! read-to-close bodies.
//!
//! May depend on: std (blocking `TcpStream` I/O), `rustls`, `rustls-native-certs`,
//! `webpki-roots`, `thiserror`. Nothing of the crate.
//!
//! Invariants: no request outlives its [`Timeouts`]; a response larger than
//! [`MAX_RESPONSE_BYTES`] is an error; malformed responses give errors, never panics; header
//! values we send are checked for CR/LF by the caller's types (`Endpoint` and the sources
//! validate what they put in a request line or header); HTTPS verifies the server against the
//! system trust store (the bundled webpki roots when the system has none).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// `User-Agent` sent with every request.
pub(super) const USER_AGENT: &str = concat!("capture-proxy/", env!("CARGO_PKG_VERSION"));
/// Largest response accepted, in bytes: 64 KiB. The largest real answer (an STS response with
/// a ~1 KiB session token) is a few KiB.
pub(super) const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Read granularity, in bytes.
const READ_CHUNK_BYTES: usize = 4096;

/// How long one request may take: the TCP connect (per address), then the TLS handshake, the
/// request and the whole response, as one deadline (a server dribbling bytes cannot stretch it).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub connect: Duration,
    pub io: Duration,
}

/// Transport and framing failures.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve the endpoint address: {0}")]
    Resolve(std::io::Error),
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("malformed HTTP response: {0}")]
    BadHttp(&'static str),
}

/// A parsed `http://` or `https://` URL: where to connect and what to send as `Host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub https: bool,
    /// The host without brackets (an IPv6 literal is bare): for TLS names and address checks.
    pub host: String,
    /// `host[:port]` as written, for the `Host` header (and SigV4's `host`).
    pub authority: String,
    /// `host:port` (port defaulted by scheme) for `ToSocketAddrs`.
    pub connect_to: String,
    /// Path and query as written (`/` when absent).
    pub path: String,
    /// The URL without a trailing `/`, for messages.
    pub display: String,
}

impl Endpoint {
    /// Parses `http[s]://host[:port][/path[?query]]`. No user info, no fragment, visible
    /// ASCII only (so nothing of it can break a request line or header).
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let v = value.trim();
        let (https, rest) = if let Some(r) = strip_prefix_ci(v, "http://") {
            (false, r)
        } else if let Some(r) = strip_prefix_ci(v, "https://") {
            (true, r)
        } else {
            return Err("expected an http:// or https:// URL");
        };
        if !rest.bytes().all(|c| c.is_ascii_graphic()) {
            return Err("contains characters that are not allowed");
        }
        if rest.contains('#') {
            return Err("a fragment (#) is not allowed");
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("")),
            None => (rest, ""),
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if authority.is_empty() {
            return Err("missing host");
        }
        if authority.contains('@') {
            return Err("user info (user@host) is not allowed");
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let close = bracketed.find(']').ok_or("unterminated '[' in IPv6 host")?;
            let inner = bracketed.get(..close).unwrap_or("");
            let after = bracketed.get(close + 1..).unwrap_or("");
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or("junk after ']'")?),
            };
            if inner.is_empty() {
                return Err("missing host");
            }
            (inner.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if host.is_empty() || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
            return Err("malformed host");
        }
        let port: u16 = match port {
            None if https => 443,
            None => 80,
            Some(p) => p.parse().map_err(|_| "invalid port")?,
        };
        let connect_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        Ok(Self {
            https,
            connect_to: format!("{connect_host}:{port}"),
            host,
            authority: authority.to_string(),
            path,
            display: v.trim_end_matches('/').to_string(),
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// A response: status code and body.
#[derive(Debug)]
pub(super) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy: only for parsing and short error excerpts).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request: method, path (with query), extra headers and body. `Host`, `User-Agent`,
/// `Accept`, `Connection: close` and (unless `GET`) `Content-Length` are added.
pub(super) struct Request<'a> {
    pub method: &'static str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// One request on a fresh connection to `ep`, any status returned.
pub(super) fn call(ep: &Endpoint, req: &Request<'_>, t: Timeouts) -> Result<Response, HttpError> {
    call_with_tls(ep, req, t, None)
}

/// [`call`], with `tls` replacing the default HTTPS client configuration (tests trust their
/// own CA this way).
pub(super) fn call_with_tls(
    ep: &Endpoint,
    req: &Request<'_>,
    t: Timeouts,
    tls: Option<Arc<ClientConfig>>,
) -> Result<Response, HttpError> {
    let tcp = connect(ep, t.connect)?;
    let deadline = Instant::now() + t.io;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n",
        req.method, req.path, ep.authority
    );
    for (name, value) in req.headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if req.method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", req.body.len()));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(req.body);

    let (status, body) = if ep.https {
        let config = match tls {
            Some(c) => c,
            None => default_tls_config()?,
        };
        let name = ServerName::try_from(ep.host.clone())
            .map_err(|_| HttpError::Tls(format!("{:?} is not a valid TLS name", ep.host)))?;
        let conn =
            ClientConnection::new(config, name).map_err(|e| HttpError::Tls(e.to_string()))?;
        let mut stream = StreamOwned::new(conn, tcp);
        set_timeouts(&stream.sock, deadline, t.io)?;
        stream
            .write_all(&message)
            .map_err(|e| io_or_timeout(e, t.io))?;
        stream.flush().map_err(|e| io_or_timeout(e, t.io))?;
        read_response(&mut stream, deadline, t.io, |s, d| {
            set_timeouts(&s.sock, d, t.io)
        })?
    } else {
        let mut stream = tcp;
        set_timeouts(&stream, deadline, t.io)?;
        stream
            .write_all(&message)
            .map_err(|e| io_or_timeout(e, t.io))?;
        read_response(&mut stream, deadline, t.io, |s, d| set_timeouts(s, d, t.io))?
    };
    Ok(Response { status, body })
}

fn connect(ep: &Endpoint, timeout: Duration) -> Result<TcpStream, HttpError> {
    let addrs: Vec<_> = ep
        .connect_to
        .to_socket_addrs()
        .map_err(HttpError::Resolve)?
        .collect();
    let mut last_err = std::io::Error::new(ErrorKind::NotFound, "no address");
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last_err = e,
        }
    }
    Err(HttpError::Connect(last_err))
}

/// Read and write timeouts set to what is left of the deadline.
fn set_timeouts(s: &TcpStream, deadline: Instant, budget: Duration) -> Result<(), HttpError> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(HttpError::Timeout(budget));
    }
    s.set_read_timeout(Some(remaining)).map_err(HttpError::Io)?;
    s.set_write_timeout(Some(remaining)).map_err(HttpError::Io)
}

/// The HTTPS client configuration: system roots (webpki roots when there are none), TLS 1.2
/// and 1.3, built once per process.
fn default_tls_config() -> Result<Arc<ClientConfig>, HttpError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates found; using the bundled webpki roots");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            client_config(roots)
        })
        .clone()
        .map_err(HttpError::Tls)
}

/// A client configuration trusting `roots` (ring provider, TLS 1.2 and 1.3).
pub(super) fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn io_or_timeout(e: std::io::Error, budget: Duration) -> HttpError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => HttpError::Timeout(budget),
        _ if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            HttpError::Tls(e.to_string())
        }
        _ => HttpError::Io(e),
    }
}

fn read_response<S: Read>(
    stream: &mut S,
    deadline: Instant,
    budget: Duration,
    rearm: impl Fn(&S, Instant) -> Result<(), HttpError>,
) -> Result<(u16, Vec<u8>), HttpError> {
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    loop {
        if let Some(done) = parse_response(&buf, false)? {
            return Ok(done);
        }
        rearm(stream, deadline)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A TLS peer closing without close_notify: treat as EOF (the framing decides).
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io_or_timeout(e, budget)),
        };
        if n == 0 {
            return parse_response(&buf, true)?
                .ok_or(HttpError::BadHttp("connection closed mid-response"));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::BadHttp("response too large"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a buffered response. `Ok(None)`: incomplete, read more (only when `!eof`).
pub(super) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, HttpError> {
    let incomplete = |eof: bool| {
        if eof {
            Err(HttpError::BadHttp("connection closed mid-response"))
        } else {
            Ok(None)
        }
    };
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return incomplete(eof);
    };
    let head = std::str::from_utf8(buf.get(..head_end).unwrap_or_default())
        .map_err(|_| HttpError::BadHttp("header is not UTF-8"))?;
    let body = buf.get(head_end + 4..).unwrap_or_default();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::BadHttp("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::BadHttp("bad status code"))?;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::BadHttp("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse()
                .map_err(|_| HttpError::BadHttp("bad Content-Length"))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    if chunked {
        return match decode_chunked(body)? {
            Some(decoded) => Ok(Some((status, decoded))),
            None => incomplete(eof),
        };
    }
    match content_length {
        Some(n) => match body.get(..n) {
            Some(b) => Ok(Some((status, b.to_vec()))),
            None => incomplete(eof),
        },
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// Decodes a chunked body. `Ok(None)`: more bytes needed. Trailers are ignored.
fn decode_chunked(mut rest: &[u8]) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(rest.get(..line_end).unwrap_or_default())
            .map_err(|_| HttpError::BadHttp("bad chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| HttpError::BadHttp("bad chunk size"))?;
        let data_start = line_end + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        let data_end = data_start
            .checked_add(size)
            .ok_or(HttpError::BadHttp("bad chunk size"))?;
        let crlf_end = data_end
            .checked_add(2)
            .ok_or(HttpError::BadHttp("bad chunk size"))?;
        let (Some(data), Some(crlf)) =
            (rest.get(data_start..data_end), rest.get(data_end..crlf_end))
        else {
            return Ok(None);
        };
        if crlf != b"\r\n" {
            return Err(HttpError::BadHttp("chunk not followed by CRLF"));
        }
        out.extend_from_slice(data);
        rest = rest.get(crlf_end..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn endpoint_parsing() {
        let ep = Endpoint::parse("http://169.254.169.254").unwrap();
        assert_eq!(
            (
                ep.authority.as_str(),
                ep.connect_to.as_str(),
                ep.path.as_str()
            ),
            ("169.254.169.254", "169.254.169.254:80", "/")
        );
        let ep = Endpoint::parse("HTTP://127.0.0.1:8123/").unwrap();
        assert_eq!(ep.connect_to, "127.0.0.1:8123");
        assert_eq!(ep.authority, "127.0.0.1:8123");
        assert_eq!(ep.display, "HTTP://127.0.0.1:8123");
        let ep = Endpoint::parse("http://[fd00:ec2::254]").unwrap();
        assert_eq!(ep.connect_to, "[fd00:ec2::254]:80");
        assert_eq!(ep.host, "fd00:ec2::254");
        let ep = Endpoint::parse("http://[::1]:9/creds?x=1").unwrap();
        assert_eq!(ep.connect_to, "[::1]:9");
        assert_eq!(ep.path, "/creds?x=1");
        let ep = Endpoint::parse("https://sts.eu-west-1.amazonaws.com").unwrap();
        assert!(ep.https);
        assert_eq!(ep.connect_to, "sts.eu-west-1.amazonaws.com:443");
        assert_eq!(ep.host, "sts.eu-west-1.amazonaws.com");
        let ep = Endpoint::parse("http://h?q").unwrap();
        assert_eq!((ep.authority.as_str(), ep.path.as_str()), ("h", "/?q"));
        for bad in [
            "ftp://127.0.0.1",
            "127.0.0.1:80",
            "http://",
            "http:///x",
            "http://host:port",
            "http://host:99999",
            "http://[::1",
            "http://[::1]x",
            "http://::1",
            "http://u@host",
            "http://ho st",
            "http://host/a\r\nX: y",
            "http://host/#frag",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn response_parsing() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some((200, b"hello".to_vec()))
        );
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(r, false).unwrap(), Some((404, vec![])));
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(r, false).unwrap(),
            Some((200, b"abcde".to_vec()))
        );
        let r = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nuntil-eof";
        assert_eq!(parse_response(r, false).unwrap(), None);
        assert_eq!(
            parse_response(r, true).unwrap(),
            Some((200, b"until-eof".to_vec()))
        );
        for bad in [
            &b"SSH-2.0\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        ] {
            assert!(
                parse_response(bad, true).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Every truncation of valid responses: incomplete or error, never a panic.
        let full = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nffffffffffffffffff\r\n";
        for cut in 0..=full.len() {
            let _ = parse_response(&full[..cut], false);
            let _ = parse_response(&full[..cut], true);
        }
        // 0x...ed + 18 header bytes = usize::MAX: the CRLF end must not overflow.
        for size in [
            "ffffffffffffffed",
            "ffffffffffffffec",
            "fffffffffffffffe",
            "ffffffffffffffff",
        ] {
            let r = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nab");
            assert!(matches!(
                parse_response(r.as_bytes(), false),
                Ok(None) | Err(_)
            ));
        }
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        for cut in 0..full.len() {
            assert!(matches!(parse_response(&full[..cut], false), Ok(None)));
            assert!(parse_response(&full[..cut], true).is_err());
        }
    }

    /// The HTTPS path end to end against a 127.0.0.1 rustls server with a self-signed
    /// certificate for `localhost`: trusted when its certificate is the root, refused by the
    /// default (system) roots.
    #[test]
    fn https_request_verifies_the_server() {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = ck.cert.der().clone();
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert_der.clone()], key_der)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (tcp, _) = listener.accept().unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let conn = rustls::ServerConnection::new(server_config.clone()).unwrap();
                let mut tls = StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while find(&buf, b"\r\n\r\nping").is_none() {
                    match tls.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                if buf.is_empty() {
                    continue; // the refused handshake
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                assert!(head.starts_with("POST /x HTTP/1.1\r\n"), "{head}");
                assert!(head.contains(&format!("\r\nHost: localhost:{port}\r\n")));
                assert!(head.contains("\r\nContent-Length: 4\r\n"));
                let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong");
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        let ep = Endpoint::parse(&format!("https://localhost:{port}")).unwrap();
        let req = Request {
            method: "POST",
            path: "/x",
            headers: &[],
            body: b"ping",
        };
        let t = Timeouts {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(5),
        };
        // Unknown to the system roots: refused.
        let err = call(&ep, &req, t).unwrap_err();
        assert!(matches!(err, HttpError::Tls(_)), "{err:?}");
        let mut roots = RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let resp = call_with_tls(&ep, &req, t, Some(client_config(roots).unwrap())).unwrap();
        assert_eq!((resp.status, resp.text().as_str()), (200, "pong"));
        server.join().unwrap();
    }
}
