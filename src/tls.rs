//! TLS on both sides of a connection (rustls over monoio), and the stream-half traits the
//! connection code is generic over.
//!
//! Owns: building the client-facing `rustls::ServerConfig` (certificate chain, key, optional
//! client-certificate verification) once at start-up and swapping it on reload; building the
//! destination `rustls::ClientConfig` (system roots with a webpki-roots fallback, a private CA
//! file, or no verification under `--insecureDestination`); the handshake; and the TLS
//! stream halves that encrypt/decrypt around a monoio `TcpStream`'s halves.
//!
//! May depend on: `config` (TLS settings), `stats` (rate limiter). Nothing else of the crate.
//!
//! Invariants:
//! - [`StreamRead`] / [`StreamWrite`] are implemented by plain TCP halves as direct calls to
//!   monoio's cancellable operations (no extra cost on the plaintext path) and by the TLS
//!   halves, whose socket reads and writes take the same [`CancelHandle`], so the sweeper's
//!   cancellation (timeouts, drain) works the same for TLS.
//! - The two halves of a TLS stream share one `rustls::Connection` through a `RefCell` that
//!   is never borrowed across an `.await`.
//! - Peer bytes never panic: every slice is taken with `get`; rustls errors become I/O errors.

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use monoio::buf::IoBuf;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
    CancelableAsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::config::{ClientTrust, ServerTlsConfig};
use crate::stats::RateLimit;

/// Most time a TLS handshake may take, either side (s). Generous for a slow client on a bad
/// link, short enough that a client that opens a connection and sends nothing (or a port
/// scanner) holds a socket only briefly.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Capacity of the ciphertext read buffer of a TLS stream (bytes): two full TLS records
/// (16 KiB + overhead each), so one socket read usually yields whole records.
const CIPHER_READ_BYTES: usize = 2 * (16 * 1024 + 256);
/// Most time spent sending a `close_notify` when a TLS connection ends (ms): it is a few
/// dozen bytes that fit the socket buffer unless the peer stopped reading entirely.
const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Repeated warnings of one kind are logged at most once per this period.
const WARN_PERIOD: Duration = Duration::from_secs(60);
/// The only application protocol the proxy speaks (ALPN).
const ALPN_HTTP11: &[u8] = b"http/1.1";

thread_local! {
    static HANDSHAKE_WARN: RefCell<RateLimit> = RefCell::new(RateLimit::new(WARN_PERIOD));
}

/// Configuration failures: bad PEM, a certificate that does not match its key, an empty
/// trust bundle. Each names the file (or environment variable) at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {source_name}: {reason}")]
    Pem {
        what: &'static str,
        source_name: String,
        reason: String,
    },
    #[error("{what} {source_name}: no {item} found")]
    Empty {
        what: &'static str,
        source_name: String,
        item: &'static str,
    },
    #[error("{0}")]
    Config(String),
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer closed (or reset) before sending a single byte: a TCP health check or a
    /// port probe, not a TLS failure.
    #[error("peer closed the connection before the TLS handshake started")]
    Silent,
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("I/O error during the TLS handshake: {0}")]
    Io(io::Error),
    #[error("TLS handshake timed out")]
    Timeout,
}

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn file_name(p: &Path) -> String {
    p.display().to_string()
}

fn load_certs_file(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let name = file_name(path);
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| TlsError::Pem {
        what,
        source_name: name.clone(),
        reason: e.to_string(),
    })?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            source_name: name.clone(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            source_name: name,
            item: "certificate",
        });
    }
    Ok(certs)
}

fn load_certs_pem(
    pem: &[u8],
    source_name: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            source_name: source_name.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            source_name: source_name.to_string(),
            item: "certificate",
        });
    }
    Ok(certs)
}

fn load_key_file(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "--sslKeyFile",
        source_name: file_name(path),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key (PKCS#1 RSA, SEC1 EC or PKCS#8) found".to_string()
            }
            other => other.to_string(),
        },
    })
}

fn roots_from(
    certs: Vec<CertificateDer<'static>>,
    what: &'static str,
    source_name: &str,
) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| TlsError::Pem {
            what,
            source_name: source_name.to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// Builds the client-facing server configuration from the files (and trust source) named
/// in `cfg`: TLS 1.2 and 1.3, ALPN `http/1.1`, client certificates verified against the
/// trust source (required only with `--requireClientAuth`).
pub fn build_server_config(cfg: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = load_certs_file(&cfg.cert_chain_file, "--sslCertChainFile")?;
    let key = load_key_file(&cfg.key_file)?;
    let provider = crypto_provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(format!("TLS protocol versions: {e}")))?;
    let builder = match &cfg.client_trust {
        None => {
            if cfg.require_client_auth {
                return Err(TlsError::Config(
                    "--requireClientAuth needs --sslTrustCertFile or --sslTrustCertPemEnvVar"
                        .into(),
                ));
            }
            builder.with_no_client_auth()
        }
        Some(trust) => {
            let (what, name, certs) = match trust {
                ClientTrust::File(p) => {
                    let certs = load_certs_file(p, "--sslTrustCertFile")?;
                    ("--sslTrustCertFile", file_name(p), certs)
                }
                ClientTrust::EnvPem { var, pem } => {
                    let name = format!("environment variable {var}");
                    let certs = load_certs_pem(pem.as_bytes(), &name, "--sslTrustCertPemEnvVar")?;
                    ("--sslTrustCertPemEnvVar", name, certs)
                }
            };
            let roots = roots_from(certs, what, &name)?;
            let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !cfg.require_client_auth {
                vb = vb.allow_unauthenticated();
            }
            let verifier = vb.build().map_err(|e| TlsError::Pem {
                what,
                source_name: name,
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Pem {
            what: "--sslCertChainFile/--sslKeyFile",
            source_name: format!(
                "{} with {}",
                file_name(&cfg.cert_chain_file),
                file_name(&cfg.key_file)
            ),
            reason: e.to_string(),
        })?;
    sc.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(sc))
}

/// The client-facing TLS configuration, reloadable: workers read the current one once per
/// accepted connection; [`ServerTls::reload`] rebuilds it from the same files and swaps it.
pub struct ServerTls {
    files: ServerTlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub fn new(files: ServerTlsConfig) -> Result<ServerTls, TlsError> {
        let cfg = build_server_config(&files)?;
        Ok(ServerTls {
            files,
            current: RwLock::new(cfg),
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the configuration from the same files and swaps it in; on error the current
    /// one stays. Existing connections are not affected either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = build_server_config(&self.files)?;
        match self.current.write() {
            Ok(mut g) => *g = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

/// TLS toward an `https://` destination: the client configuration and the name to verify
/// (and send as SNI unless it is an IP address).
pub struct DestinationTls {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl std::fmt::Debug for DestinationTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl DestinationTls {
    /// `host` as written in the destination URI; `ca_file` adds a private CA to the system
    /// roots; `insecure` accepts any certificate (`--insecureDestination`).
    pub fn new(host: &str, ca_file: Option<&Path>, insecure: bool) -> Result<Self, TlsError> {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            TlsError::Config(format!(
                "destination host {host:?} is not a valid TLS server name: {e}"
            ))
        })?;
        let provider = crypto_provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .map_err(|e| TlsError::Config(format!("TLS protocol versions: {e}")))?;
        let mut config = if insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(provider)))
                .with_no_client_auth()
        } else {
            let mut roots = system_roots();
            if let Some(p) = ca_file {
                let certs = load_certs_file(p, "--destination-ca-file")?;
                let extra = roots_from(certs, "--destination-ca-file", &file_name(p))?;
                roots.roots.extend(extra.roots);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(DestinationTls {
            config: Arc::new(config),
            name,
        })
    }
}

/// TLS toward an `https://` OTLP collector: system roots (webpki-roots fallback), ALPN `h2`
/// (gRPC). Returns the configuration and the name to verify.
pub(crate) fn otlp_client_config(
    host: &str,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsError> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        TlsError::Config(format!(
            "OTLP collector host {host:?} is not a valid TLS server name: {e}"
        ))
    })?;
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| TlsError::Config(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(system_roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), name))
}

/// The system's trust anchors; the bundled webpki roots when the system has none.
fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::warn!(
            errors = found.errors.len(),
            "no system CA certificates found; using the bundled webpki roots"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

/// `--insecureDestination`: accepts any certificate for any name. Handshake signatures are
/// still checked (so the peer holds the key of the certificate it sent), which is all a
/// verifier without trust can do.
#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// ----------------------------------------------------------------------------------------
// Stream halves
// ----------------------------------------------------------------------------------------

/// The read side of a client or destination connection (plain TCP or TLS).
pub trait StreamRead {
    /// Reads into `buf` (cleared first, filled up to its capacity) and hands it back with
    /// the number of bytes read; `Ok(0)` is the end of the stream. `h` cancels the wait.
    fn recv(
        &mut self,
        buf: Vec<u8>,
        h: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, Vec<u8>>>;
}

/// The write side of a client or destination connection (plain TCP or TLS).
pub trait StreamWrite {
    /// Writes all of `buf`; `h` cancels the wait.
    fn send_all<T: IoBuf>(
        &mut self,
        buf: T,
        h: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>>;
    /// Half-closes: no more bytes from us (TLS: `close_notify`, then the TCP FIN).
    fn half_close(&mut self) -> impl Future<Output = io::Result<()>>;
    /// Called once before the connection is dropped: TLS sends `close_notify` (bounded, best
    /// effort); plain TCP does nothing (the close is the drop).
    fn close(&mut self, h: CancelHandle) -> impl Future<Output = ()>;
}

impl StreamRead for OwnedReadHalf<TcpStream> {
    #[inline]
    fn recv(
        &mut self,
        buf: Vec<u8>,
        h: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, Vec<u8>>> {
        self.cancelable_read(buf, h)
    }
}

impl StreamWrite for OwnedWriteHalf<TcpStream> {
    #[inline]
    fn send_all<T: IoBuf>(
        &mut self,
        buf: T,
        h: CancelHandle,
    ) -> impl Future<Output = BufResult<usize, T>> {
        CancelableAsyncWriteRentExt::write_all(self, buf, h)
    }
    #[inline]
    fn half_close(&mut self) -> impl Future<Output = io::Result<()>> {
        AsyncWriteRent::shutdown(self)
    }
    #[inline]
    fn close(&mut self, _h: CancelHandle) -> impl Future<Output = ()> {
        std::future::ready(())
    }
}

/// A TLS connection after its handshake, not yet split.
pub struct TlsStream {
    io: TcpStream,
    conn: rustls::Connection,
    /// Ciphertext read from the socket and not yet given to rustls: `cipher[pos..]`.
    cipher: Vec<u8>,
    pos: usize,
}

impl TlsStream {
    fn new(io: TcpStream, conn: rustls::Connection) -> TlsStream {
        TlsStream {
            io,
            conn,
            cipher: Vec::with_capacity(CIPHER_READ_BYTES),
            pos: 0,
        }
    }

    /// For a ready, unused connection: whether the peer still has it open. Reads whatever
    /// waits on the socket without blocking (kept for the session: nothing is lost) and
    /// lets rustls process it; `false` on EOF, a socket error, `close_notify` or another
    /// alert, or application data nobody asked for.
    pub fn still_open(&mut self) -> bool {
        let fd = self.io.as_raw_fd();
        let mut tmp = [0u8; 4096];
        loop {
            // SAFETY: `fd` is the open socket we own; `tmp` is a valid buffer of the length
            // given; MSG_DONTWAIT never blocks.
            let n =
                unsafe { libc::recv(fd, tmp.as_mut_ptr().cast(), tmp.len(), libc::MSG_DONTWAIT) };
            if n == 0 {
                return false;
            }
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => break,
                    _ => return false,
                }
            }
            let got = tmp.get(..n.unsigned_abs()).unwrap_or(&[]);
            let consumed = self.pos.min(self.cipher.len());
            self.cipher.drain(..consumed);
            self.pos = 0;
            self.cipher.extend_from_slice(got);
            if self.cipher.len() > CIPHER_READ_BYTES {
                // An idle connection does not receive this much.
                return false;
            }
        }
        while self.pos < self.cipher.len() {
            let mut pending = self.cipher.get(self.pos..).unwrap_or(&[]);
            match self.conn.read_tls(&mut pending) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.pos += n,
            }
            match self.conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() || state.plaintext_bytes_to_read() > 0 => {
                    return false
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Splits into a read and a write half sharing the TLS session.
    pub fn into_split(self) -> (TlsRead, TlsWrite) {
        let conn = Rc::new(RefCell::new(self.conn));
        let (r, w) = self.io.into_split();
        (
            TlsRead {
                io: r,
                conn: conn.clone(),
                cipher: self.cipher,
                pos: self.pos,
                eof: false,
            },
            TlsWrite {
                io: w,
                conn,
                out: Vec::new(),
                closed: false,
            },
        )
    }

    /// Drives the handshake to completion (bound it with a timeout at the caller).
    async fn handshake(&mut self) -> Result<(), HandshakeError> {
        let mut out: Vec<u8> = Vec::new();
        let mut received = false;
        loop {
            while self.conn.wants_write() {
                out.clear();
                self.conn.write_tls(&mut out).map_err(HandshakeError::Io)?;
                let (r, o) = AsyncWriteRentExt::write_all(&mut self.io, out).await;
                out = o;
                r.map_err(HandshakeError::Io)?;
            }
            if !self.conn.is_handshaking() {
                return Ok(());
            }
            if self.pos >= self.cipher.len() {
                let mut c = std::mem::take(&mut self.cipher);
                c.clear();
                let (r, c) = self.io.read(c).await;
                self.cipher = c;
                self.pos = 0;
                match r {
                    Ok(0) if !received => return Err(HandshakeError::Silent),
                    Ok(0) => {
                        return Err(HandshakeError::Io(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "peer closed the connection during the TLS handshake",
                        )))
                    }
                    Ok(_) => received = true,
                    Err(e) if !received && e.kind() == io::ErrorKind::ConnectionReset => {
                        return Err(HandshakeError::Silent)
                    }
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            let mut pending = self.cipher.get(self.pos..).unwrap_or(&[]);
            let n = self
                .conn
                .read_tls(&mut pending)
                .map_err(HandshakeError::Io)?;
            self.pos += n;
            if let Err(e) = self.conn.process_new_packets() {
                // Tell the peer why (best effort), then give up on this connection.
                out.clear();
                if self.conn.write_tls(&mut out).is_ok() && !out.is_empty() {
                    let _ = AsyncWriteRentExt::write_all(&mut self.io, out).await;
                }
                return Err(HandshakeError::Tls(e));
            }
        }
    }
}

/// Accepts a TLS client on `io` with `config`, bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn accept(io: TcpStream, config: Arc<ServerConfig>) -> Result<TlsStream, HandshakeError> {
    let conn = rustls::ServerConnection::new(config).map_err(HandshakeError::Tls)?;
    let mut s = TlsStream::new(io, rustls::Connection::Server(conn));
    match monoio::time::timeout(HANDSHAKE_TIMEOUT, s.handshake()).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Opens TLS toward the destination over the connected `io`, bounded by [`HANDSHAKE_TIMEOUT`].
pub async fn connect(io: TcpStream, d: &DestinationTls) -> Result<TlsStream, HandshakeError> {
    let conn = rustls::ClientConnection::new(d.config.clone(), d.name.clone())
        .map_err(HandshakeError::Tls)?;
    let mut s = TlsStream::new(io, rustls::Connection::Client(conn));
    match monoio::time::timeout(HANDSHAKE_TIMEOUT, s.handshake()).await {
        Ok(Ok(())) => Ok(s),
        Ok(Err(HandshakeError::Silent)) => Err(HandshakeError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "destination closed the connection during the TLS handshake",
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(HandshakeError::Timeout),
    }
}

/// Logs a failed client handshake (at most once per minute per worker, with the count of
/// the ones not logged).
pub fn warn_handshake_failed(peer: std::net::SocketAddr, e: &HandshakeError) {
    HANDSHAKE_WARN.with(|r| {
        if let Some(suppressed) = r.borrow_mut().allow() {
            tracing::warn!(peer = %peer, error = %e, suppressed, "client TLS handshake failed; connection closed");
        }
    });
}

/// What the plaintext buffer of a session gave.
enum Plain {
    /// Nothing (more) available now: feed more ciphertext.
    More,
    /// The peer closed (with or without `close_notify`): no more plaintext, ever.
    End,
}

/// Moves decrypted bytes from the session into `buf` (up to its capacity).
fn take_plaintext(conn: &mut rustls::Connection, buf: &mut Vec<u8>) -> io::Result<Plain> {
    loop {
        let room = buf.capacity().saturating_sub(buf.len());
        if room == 0 {
            return Ok(Plain::More);
        }
        let mut rd = conn.reader();
        let n = match rd.fill_buf() {
            Ok([]) => return Ok(Plain::End),
            Ok(chunk) => {
                let n = chunk.len().min(room);
                buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
                n
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Plain::More),
            // A TCP close without close_notify: HTTP/1.1 framing tells truncation apart, so
            // it is an end of stream like any other (many clients never send close_notify).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Plain::End),
            Err(e) => return Err(e),
        };
        rd.consume(n);
    }
}

/// The read half of a TLS stream.
pub struct TlsRead {
    io: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<rustls::Connection>>,
    cipher: Vec<u8>,
    pos: usize,
    /// The socket reached EOF (and rustls was told).
    eof: bool,
}

impl StreamRead for TlsRead {
    async fn recv(&mut self, mut buf: Vec<u8>, h: CancelHandle) -> BufResult<usize, Vec<u8>> {
        buf.clear();
        loop {
            {
                let mut conn = self.conn.borrow_mut();
                match take_plaintext(&mut conn, &mut buf) {
                    Ok(Plain::More) => {}
                    Ok(Plain::End) => return (Ok(buf.len()), buf),
                    Err(e) => return (Err(e), buf),
                }
                if buf.len() >= buf.capacity() {
                    return (Ok(buf.len()), buf);
                }
                if self.pos < self.cipher.len() {
                    let mut pending = self.cipher.get(self.pos..).unwrap_or(&[]);
                    match conn.read_tls(&mut pending) {
                        Ok(0) => {
                            return (
                                Err(io::Error::other("TLS session accepted no ciphertext")),
                                buf,
                            )
                        }
                        Ok(n) => self.pos += n,
                        Err(e) => return (Err(e), buf),
                    }
                    if let Err(e) = conn.process_new_packets() {
                        return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), buf);
                    }
                    continue;
                }
                if self.eof || !buf.is_empty() {
                    return (Ok(buf.len()), buf);
                }
            }
            let mut c = std::mem::take(&mut self.cipher);
            c.clear();
            let (r, c) = self.io.cancelable_read(c, h.clone()).await;
            self.cipher = c;
            self.pos = 0;
            match r {
                Ok(0) => {
                    self.eof = true;
                    let mut conn = self.conn.borrow_mut();
                    // An empty reader tells rustls the transport ended.
                    let mut empty: &[u8] = &[];
                    let _ = conn.read_tls(&mut empty);
                    if let Err(e) = conn.process_new_packets() {
                        return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), buf);
                    }
                }
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }
}

/// The write half of a TLS stream.
pub struct TlsWrite {
    io: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<rustls::Connection>>,
    /// Ciphertext on its way to the socket (reused).
    out: Vec<u8>,
    /// `close_notify` was queued.
    closed: bool,
}

impl TlsWrite {
    /// Moves every queued TLS record into `self.out`.
    fn collect_tls(&mut self) -> io::Result<()> {
        self.out.clear();
        let mut conn = self.conn.borrow_mut();
        while conn.wants_write() {
            if conn.write_tls(&mut self.out)? == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Writes `self.out` to the socket (with `h` when given).
    async fn flush_out(&mut self, h: Option<CancelHandle>) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        let (r, out) = match h {
            Some(h) => CancelableAsyncWriteRentExt::write_all(&mut self.io, out, h).await,
            None => AsyncWriteRentExt::write_all(&mut self.io, out).await,
        };
        self.out = out;
        r.map(|_| ())
    }

    fn queue_close_notify(&mut self) {
        if !self.closed {
            self.closed = true;
            self.conn.borrow_mut().send_close_notify();
        }
    }
}

impl StreamWrite for TlsWrite {
    async fn send_all<T: IoBuf>(&mut self, buf: T, h: CancelHandle) -> BufResult<usize, T> {
        let len = buf.bytes_init();
        let mut off = 0usize;
        loop {
            if off < len {
                // SAFETY: `IoBuf` guarantees `read_ptr` points at `bytes_init` initialized
                // bytes that stay valid while we own `buf` (it is not moved until returned).
                let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), len) };
                let rest = data.get(off..).unwrap_or(&[]);
                match self.conn.borrow_mut().writer().write(rest) {
                    Ok(n) => off += n,
                    Err(e) => return (Err(e), buf),
                }
            }
            if let Err(e) = self.collect_tls() {
                return (Err(e), buf);
            }
            if self.out.is_empty() {
                if off >= len {
                    return (Ok(len), buf);
                }
                return (
                    Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "TLS session accepts no more data",
                    )),
                    buf,
                );
            }
            if let Err(e) = self.flush_out(Some(h.clone())).await {
                return (Err(e), buf);
            }
            if off >= len {
                return (Ok(len), buf);
            }
        }
    }

    async fn half_close(&mut self) -> io::Result<()> {
        self.queue_close_notify();
        self.collect_tls()?;
        self.flush_out(None).await?;
        AsyncWriteRent::shutdown(&mut self.io).await
    }

    async fn close(&mut self, h: CancelHandle) {
        if self.closed {
            return;
        }
        self.queue_close_notify();
        if self.collect_tls().is_ok() {
            let _ = monoio::time::timeout(CLOSE_NOTIFY_TIMEOUT, self.flush_out(Some(h))).await;
        }
    }
}
