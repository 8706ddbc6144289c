//! TLS end to end. Client-facing TLS: a rustls client, `curl` and Python's `http.client`
//! (keep-alive, chunked uploads) with the capture holding the decrypted bytes exactly; mTLS
//! required and optional (accepted, no certificate, a certificate from another CA);
//! plaintext to the TLS port (closed, counted, not captured, the proxy keeps serving); key
//! formats (RSA PKCS#1 and PKCS#8, ECDSA SEC1 and PKCS#8); bad PEM at start-up; certificate
//! reload (new connections see the new certificate, an old connection keeps working, a
//! failed reload keeps the old one). TLS toward the destination: verified with a private
//! CA, rejected (502) on a wrong name, accepted with `insecure_destination`; TLS on both
//! sides with suppression and `--setHeader`; the destination pool over TLS.
//!
//! Certificates are generated per test with rcgen (the RSA key is a fixed test-only key:
//! ring cannot generate RSA keys).

use crate::common;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use capture_proxy::config::{ClientTrust, Config, Destination, ServerTlsConfig, SetHeader};
use capture_proxy::stats::Counter;
use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A fixed RSA-2048 key (PKCS#8), for tests only: ring (rcgen's backend) cannot generate RSA.
const TEST_RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCbJR0NmG9Dx8oe
KG7WbA5rSuciR+uiGKklkKYpcgw/p+Cwk1215dLApOCYUX+5Jo5GX7rfwtvk6Zkn
ggZmoSWBwQeStratJ9axtC2CwIg9sc8Zy2nte/fK+A4ThZeZCPSdzwep1Gj2po91
ML4T6biWK2JN2dVhJRbeU66sGzHdy7/8ZN8qWRD0l/yDVNL1K44rQRYlx9ECBCfU
5UZO0QLkHkmESVl/yGWGy078J9DCGSZoAa7YDrIMCAaocBoDpD7SAlTeJZIyTTM8
1wvjh0XCNbILVsDsmhIYghJ5wq1xKPPk4Lc7O6c0xJJXaR/A9NwtY6kQ9FevqJ8p
UrpVNpMTAgMBAAECggEAJI7bSL/ZwBwNCYw3iflOcIPm8RIHeVvcR8jNDskcD8fs
T096boloXxK7Bcl2kld+gSC/tUiCbm+JMmEWRwrD/s5QjYbWhvjzQ06UxtG9iOQk
TAy9ukNTAZXwIzOApIQSuDj3slImJbDb7x58O88AOwqgEH47JLgLqnoHl/CUkJG7
ecTZkhs2l0TNxsMvXq1MelRQWjyqjHxPJe5X8rULvUgGkbXA/Jn4MgHpZKweJT9q
hOZvbcnWsDejDUbHM3MaxJzNb2XNeg0eriKOsHsy/SvyEuz3Jlg2SBFT3tOh/npx
F04Ta/mOt7TVYJ8dJGH/c5GI4XedH+KSTxcT24jRoQKBgQDQI5upTe8liQamEAXs
L5NOQHWXOl3xkTMcdfm4QzJn/48hmd8D64ZOt3xCQRu72+5h6a2RZ/kcDi9eF9Zc
XSLK+PdEODRZ06F4W4ID3GnDY9Qi4eF5IWEYQIKEgtP+AsZhRnoorEdzZV1/TTLl
cB3T3wJCmT6Y0jfj9xgwkUUrQwKBgQC+0e8qkp26YI3SljydXuv2H0PNDgr0uSDR
xypRVtizSfLWIPLaBjF3NLnEMjpeLisrVR5iGK96zeInFSdeGKaD6mxScHoqZdJ9
305Jkq38xIv51nB9CMisIC5vgolJQ8ZTAAU0Qx0z30H9cvAPlqCQGKeDj3TrWYIi
S3Pc0rOz8QKBgQCYXFiIWNpk2aeaTERpnnHwaFMr/rfiK24EuX+xmM7/Ph4idKbC
EdjhKoO1ZD/PBrG7zvkVZcz+8otOD5kFR9A+UH2A3LvFvZuHpUTJWsG5HAyf9EW/
C+YtgJuKMNLKMHHTp2mo+GPdXyhQFczaE3ZiL+9RnSgrakcrgyeb9dtyTQKBgFk8
Y9RM7GYUcT5h88bEdSSMSnDCeG0phieUND4FlyGBG4b3sZoz+z378kPGGXWhsZ56
F9NYJ/gOAAy238opTPWz0yRaZUcehulGXJ4bcjIa2DrmBYTzbqTQB+ct7HXOtBhs
kgJ2wFlZtsqHzav8jOnWHcBwfgTxvuG611wVTOSBAoGBAJTxoiIXAQbX2Kg8tjXi
lexy2xpUjbfmIpmupvGjr+ayU1z38QF2CpmSirA5mF8BTwV6OoNUWVKJZQTge1P9
H7AgmyXfM86sOYieFgtdGGLyI/VAY9vTkrjWhvrxw/D6QB0RchvZHxiBP/W79VwO
T4DKg5tWzucThfOngfPJEr45
-----END PRIVATE KEY-----
";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ----------------------------------------------------------------------------------------
// Test PKI
// ----------------------------------------------------------------------------------------

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
    der: CertificateDer<'static>,
}

fn make_ca(cn: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        der: cert.der().clone(),
        params,
        key,
    }
}

/// A leaf certificate and its key.
struct Leaf {
    cert_pem: String,
    der: CertificateDer<'static>,
    /// PKCS#8 PEM.
    key_pem: String,
}

impl Leaf {
    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

fn make_leaf_with(ca: &Ca, names: &[&str], client: bool, key: KeyPair) -> Leaf {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("test"));
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        der: cert.der().clone(),
        key_pem: key.serialize_pem(),
    }
}

fn make_leaf(ca: &Ca, names: &[&str], client: bool) -> Leaf {
    make_leaf_with(ca, names, client, KeyPair::generate().unwrap())
}

/// Reads one DER TLV: (tag, content, rest).
fn der_tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = b[0];
    let (len, hdr) = match b[1] {
        l if l < 0x80 => (l as usize, 2),
        l => {
            let n = (l & 0x7f) as usize;
            let len = b[2..2 + n]
                .iter()
                .fold(0usize, |a, x| (a << 8) | *x as usize);
            (len, 2 + n)
        }
    };
    (tag, &b[hdr..hdr + len], &b[hdr + len..])
}

/// The inner key of a PKCS#8 `PrivateKeyInfo` (PKCS#1 for RSA, SEC1 for EC).
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    let (_, info, _) = der_tlv(pkcs8);
    let (_, _version, rest) = der_tlv(info);
    let (_, _alg, rest) = der_tlv(rest);
    let (tag, key, _) = der_tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    key.to_vec()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap());
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// `key_pem` (PKCS#8) re-encoded as PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
fn traditional_key_pem(key_pem: &str, label: &str) -> String {
    let der = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap() {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        _ => panic!("expected PKCS#8"),
    };
    pem_encode(label, &pkcs8_inner(&der))
}

/// The server side of the test PKI, written to files.
struct ServerPki {
    dir: tempfile::TempDir,
    ca: Ca,
    leaf: Leaf,
}

impl ServerPki {
    fn new() -> ServerPki {
        let ca = make_ca("capture-proxy test server CA");
        let leaf = make_leaf(&ca, &["localhost", "127.0.0.1"], false);
        let dir = tempfile::tempdir().unwrap();
        let p = ServerPki { dir, ca, leaf };
        p.write(&p.leaf.cert_pem, &p.leaf.key_pem);
        std::fs::write(p.ca_file(), &p.ca.pem).unwrap();
        p
    }
    fn chain_file(&self) -> PathBuf {
        self.dir.path().join("server-chain.pem")
    }
    fn key_file(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }
    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("server-ca.pem")
    }
    /// Writes a certificate chain (leaf then CA) and key to the configured paths.
    fn write(&self, leaf_pem: &str, key_pem: &str) {
        std::fs::write(self.chain_file(), format!("{leaf_pem}{}", self.ca.pem)).unwrap();
        std::fs::write(self.key_file(), key_pem).unwrap();
    }
    fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig {
            cert_chain_file: self.chain_file(),
            key_file: self.key_file(),
            client_trust: None,
            require_client_auth: false,
        }
    }
}

// ----------------------------------------------------------------------------------------
// Clients
// ----------------------------------------------------------------------------------------

fn client_config(
    ca: &CertificateDer<'static>,
    client_cert: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some(l) => b
            .with_client_auth_cert(vec![l.der.clone()], l.key_der())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

type TlsClient = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, name: &str) -> TlsClient {
    let sock = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    sock.set_nodelay(true).unwrap();
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from(name.to_string()).unwrap())
        .unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// HTTP/1.1 over any byte stream: records what was sent and received.
struct Http<S: Read + Write> {
    s: S,
    pending: Vec<u8>,
    sent: Vec<u8>,
    received: Vec<u8>,
}

struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl<S: Read + Write> Http<S> {
    fn new(s: S) -> Self {
        Http {
            s,
            pending: Vec::new(),
            sent: Vec::new(),
            received: Vec::new(),
        }
    }

    fn send(&mut self, b: &[u8]) -> io::Result<()> {
        self.s.write_all(b)?;
        self.s.flush()?;
        self.sent.extend_from_slice(b);
        Ok(())
    }

    fn fill(&mut self) -> io::Result<bool> {
        let mut tmp = vec![0u8; 64 * 1024];
        match self.s.read(&mut tmp) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.pending.extend_from_slice(&tmp[..n]);
                self.received.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn need(&mut self, n: usize) -> io::Result<()> {
        while self.pending.len() < n {
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    fn line_end(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(p) = self.pending[from..].windows(2).position(|w| w == b"\r\n") {
                return Ok(from + p);
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// One response to a non-HEAD request (Content-Length or chunked).
    fn read_response(&mut self) -> io::Result<Resp> {
        let (head_len, status, cl, chunked) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.pending) {
                Ok(httparse::Status::Complete(n)) => {
                    let hv = |name: &str| {
                        r.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
                    };
                    let cl = hv("content-length").map(|v| v.trim().parse::<usize>().unwrap());
                    let chunked = hv("transfer-encoding").is_some_and(|v| v.contains("chunked"));
                    break (n, r.code.unwrap_or(0), cl, chunked);
                }
                Ok(httparse::Status::Partial) => {
                    if !self.fill()? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        };
        let (end, body) = if chunked {
            let mut pos = head_len;
            let mut body = Vec::new();
            loop {
                let e = self.line_end(pos)?;
                let line = String::from_utf8_lossy(&self.pending[pos..e]).into_owned();
                let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
                pos = e + 2;
                if size == 0 {
                    let e = self.line_end(pos)?;
                    break (e + 2, body);
                }
                self.need(pos + size + 2)?;
                body.extend_from_slice(&self.pending[pos..pos + size]);
                pos += size + 2;
            }
        } else {
            let cl = cl.unwrap_or(0);
            self.need(head_len + cl)?;
            (
                head_len + cl,
                self.pending[head_len..head_len + cl].to_vec(),
            )
        };
        self.pending.drain(..end);
        Ok(Resp { status, body })
    }

    /// Sends `req` and reads its response.
    fn exchange(&mut self, req: &[u8]) -> io::Result<Resp> {
        self.send(req)?;
        self.read_response()
    }
}

/// A chunked upload of `parts`.
fn chunked_post(path: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: origin.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for p in parts {
        v.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
        v.extend_from_slice(p);
        v.extend_from_slice(b"\r\n");
    }
    v.extend_from_slice(b"0\r\n\r\n");
    v
}

/// Waits (bounded) until `f` holds.
fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    f()
}

/// True when a request over a TLS client that the proxy should reject gets no response
/// (the handshake, or the first read after it, fails or sees the connection end).
fn rejected(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> bool {
    let mut h = Http::new(tls_connect(addr, cfg, "localhost"));
    match h.send(&get("/small")) {
        Err(_) => true,
        Ok(()) => h.read_response().is_err(),
    }
}

fn tls_proxy(origin: SocketAddr, pki: &ServerPki, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let st = pki.server_tls();
    Proxy::start(origin, move |cfg| {
        cfg.server_tls = Some(st);
        tweak(cfg);
    })
}

// ----------------------------------------------------------------------------------------
// A TLS origin (HTTPS destination)
// ----------------------------------------------------------------------------------------

/// An HTTPS origin on 127.0.0.1:0, one thread per connection, keep-alive; answers every
/// request with `tls-origin METHOD TARGET ` followed by the request body.
struct TlsOrigin {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl TlsOrigin {
    fn start(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> TlsOrigin {
        Self::start_with(chain, key, false)
    }

    /// With `close_first`, the first connection is ended with `close_notify` right after its
    /// handshake (the TCP connection stays open a while), as a server closing an idle
    /// connection would.
    fn start_with(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        close_first: bool,
    ) -> TlsOrigin {
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let rec = received.clone();
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let idx = {
                    let mut r = rec.lock().unwrap();
                    r.push(Vec::new());
                    r.len() - 1
                };
                let (cfg, rec) = (cfg.clone(), rec.clone());
                thread::spawn(move || {
                    if close_first && idx == 0 {
                        let _ = close_after_handshake(s, cfg);
                    } else {
                        let _ = serve_tls_origin(s, cfg, idx, rec);
                    }
                });
            }
        });
        TlsOrigin { addr, received }
    }

    fn connections(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

fn close_after_handshake(mut s: TcpStream, cfg: Arc<rustls::ServerConfig>) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut s)?;
    }
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut s)?;
    }
    thread::sleep(Duration::from_secs(5));
    Ok(())
}

fn serve_tls_origin(
    s: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    idx: usize,
    rec: Arc<Mutex<Vec<Vec<u8>>>>,
) -> io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let conn = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, s);
    let mut buf: Vec<u8> = Vec::new();
    let fill = |tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
                buf: &mut Vec<u8>|
     -> io::Result<bool> {
        let mut tmp = [0u8; 16384];
        match tls.read(&mut tmp) {
            Ok(0) => Ok(false),
            Ok(n) => {
                rec.lock().unwrap()[idx].extend_from_slice(&tmp[..n]);
                buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    };
    loop {
        let (head_len, method, target, cl) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Request::new(&mut hs);
            if let httparse::Status::Complete(n) = r
                .parse(&buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?
            {
                let cl = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| String::from_utf8_lossy(h.value).trim().parse().unwrap())
                    .unwrap_or(0usize);
                break (
                    n,
                    r.method.unwrap().to_string(),
                    r.path.unwrap().to_string(),
                    cl,
                );
            }
            if !fill(&mut tls, &mut buf)? {
                return Ok(());
            }
        };
        while buf.len() < head_len + cl {
            if !fill(&mut tls, &mut buf)? {
                return Ok(());
            }
        }
        let mut body = format!("tls-origin {method} {target} ").into_bytes();
        body.extend_from_slice(&buf[head_len..head_len + cl]);
        buf.drain(..head_len + cl);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(&body);
        tls.write_all(&out)?;
        tls.flush()?;
    }
}

/// A proxy (plain in front) toward the HTTPS origin `o`, named `host`.
fn https_dest(cfg: &mut Config, o: &TlsOrigin, host: &str) {
    cfg.destination = Destination {
        tls: true,
        host: host.to_string(),
        port: o.addr.port(),
    };
}

// ----------------------------------------------------------------------------------------
// Client-facing TLS
// ----------------------------------------------------------------------------------------

#[test]
fn rustls_client_keep_alive_chunked_upload_capture_is_plaintext() {
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let origin = Origin::start();
        let pki = ServerPki::new();
        let proxy = tls_proxy(origin.addr(), &pki, |_| {});
        let cfg = client_config(&pki.ca.der, None, versions);
        let mut h = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
        let r1 = get("/small");
        let r2 = chunked_post("/echo", &[b"{\"a\":", b"[1,2,3]", b"}"]);
        let r3 = get("/large?bytes=300000");
        let r4 = get("/chunked");
        let a = h.exchange(&r1).unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, small_body("/small"));
        let b = h.exchange(&r2).unwrap();
        assert_eq!(
            (b.status, b.body.as_slice()),
            (200, &b"{\"a\":[1,2,3]}"[..])
        );
        let c = h.exchange(&r3).unwrap();
        assert_eq!(c.body, large_body(300000));
        let d = h.exchange(&r4).unwrap();
        assert_eq!(d.body, CHUNKS.concat());
        assert_eq!(h.s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            h.s.conn.protocol_version(),
            Some(versions[0].version),
            "negotiated version"
        );
        h.s.conn.send_close_notify();
        let _ = h.s.flush();
        let _ = h.s.sock.shutdown(std::net::Shutdown::Write);
        let (sent, received) = (h.sent.clone(), h.received.clone());
        let trace = proxy.stop();
        let conn = trace.single();
        conn.check();
        assert_bytes_eq("captured reads (plaintext)", &conn.reads(), &sent);
        assert_bytes_eq("captured writes (plaintext)", &conn.writes(), &received);
        assert_eq!(conn.count("eom"), 4);
        assert_eq!(conn.request_reads(), vec![r1, r2, r3, r4]);
    }
}

#[test]
fn curl_keep_alive_and_chunked_upload() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let proxy = tls_proxy(origin.addr(), &pki, |_| {});
    let body_file = pki.dir.path().join("upload.json");
    let upload = b"{\"index\":{\"_id\":\"1\"}}\n{\"field\":\"value\"}\n".repeat(50);
    std::fs::write(&body_file, &upload).unwrap();
    let base = format!("https://127.0.0.1:{}", proxy.addr.port());
    let ca = pki.ca_file();
    for tls12 in [false, true] {
        let mut cmd = Command::new("curl");
        let common_args = |cmd: &mut Command| {
            cmd.args(["-sS", "--fail", "--http1.1", "--max-time", "10", "--cacert"])
                .arg(&ca);
            if tls12 {
                cmd.args(["--tlsv1.2", "--tls-max", "1.2"]);
            }
        };
        common_args(&mut cmd);
        cmd.arg(format!("{base}/small"));
        cmd.arg("--next");
        common_args(&mut cmd);
        cmd.args([
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/x-ndjson",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", body_file.display()))
        .arg(format!("{base}/echo"));
        let out = cmd
            .output()
            .expect("run curl (scripts/install-deps.sh installs it)");
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = [small_body("/small"), upload.clone()].concat();
        assert_bytes_eq("curl output", &out.stdout, &want);
    }
    assert!(origin.wait_requests(4, FORWARD_WAIT));
    let received = origin.received();
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(
        conns.len(),
        2,
        "curl reuses its connection: {}",
        trace.dump()
    );
    for (c, up) in conns.iter().zip(&received) {
        c.check();
        assert_eq!(c.count("eom"), 2);
        // No --setHeader: the destination got exactly the client's (decrypted) bytes.
        assert_bytes_eq("captured reads vs bytes forwarded", &c.reads(), up);
        let writes = c.writes();
        assert!(writes.starts_with(b"HTTP/1.1 200"));
        assert!(writes.ends_with(&upload));
        let reqs = c.request_reads();
        assert!(reqs[1]
            .windows(26)
            .any(|w| w.eq_ignore_ascii_case(b"transfer-encoding: chunked")));
    }
}

#[test]
fn python_http_client_keep_alive_and_chunked_upload() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let proxy = tls_proxy(origin.addr(), &pki, |_| {});
    let script = r#"
import http.client, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
c.request("GET", "/small")
r = c.getresponse()
sys.stdout.write("%d %d\n" % (r.status, len(r.read())))
def parts():
    yield b'{"doc":'
    yield b'"chunked"'
    yield b'}'
c.request("PUT", "/echo", body=parts(), headers={"Content-Type": "application/json"}, encode_chunked=True)
r = c.getresponse()
sys.stdout.write("%d %s\n" % (r.status, r.read().decode()))
c.close()
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(proxy.addr.port().to_string())
        .arg(pki.ca_file())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        text,
        format!(
            "200 {}\n200 {{\"doc\":\"chunked\"}}\n",
            small_body("/small").len()
        )
    );
    assert!(origin.wait_requests(2, FORWARD_WAIT));
    let up = origin.received_all();
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.count("eom"), 2);
    assert_bytes_eq("captured reads vs bytes forwarded", &conn.reads(), &up);
    assert!(String::from_utf8_lossy(&conn.request_reads()[1])
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked"));
}

#[test]
fn mtls_required_accepts_and_rejects() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let clients_ca = make_ca("client CA");
    let other_ca = make_ca("another CA");
    let trust = pki.dir.path().join("clients-ca.pem");
    std::fs::write(&trust, &clients_ca.pem).unwrap();
    let good = make_leaf(&clients_ca, &["client-1"], true);
    let bad = make_leaf(&other_ca, &["client-2"], true);
    let proxy = tls_proxy(origin.addr(), &pki, |cfg| {
        let t = cfg.server_tls.as_mut().unwrap();
        t.client_trust = Some(ClientTrust::File(trust.clone()));
        t.require_client_auth = true;
    });
    let v13 = &[&rustls::version::TLS13][..];
    let v12 = &[&rustls::version::TLS12][..];
    for v in [v13, v12] {
        let mut h = Http::new(tls_connect(
            proxy.addr,
            client_config(&pki.ca.der, Some(&good), v),
            "localhost",
        ));
        let r = h.exchange(&get("/small")).unwrap();
        assert_eq!(r.status, 200);
        drop(h);
        assert!(
            rejected(proxy.addr, client_config(&pki.ca.der, None, v)),
            "no client certificate"
        );
        assert!(
            rejected(proxy.addr, client_config(&pki.ca.der, Some(&bad), v)),
            "certificate from another CA"
        );
    }
    let handle = proxy.handle();
    assert!(wait_for(Duration::from_secs(5), || handle
        .counter(Counter::TlsHandshakeFailed)
        == 4));
    // The proxy keeps serving.
    let mut h = Http::new(tls_connect(
        proxy.addr,
        client_config(&pki.ca.der, Some(&good), v13),
        "localhost",
    ));
    assert_eq!(h.exchange(&get("/small?after")).unwrap().status, 200);
    drop(h);
    let trace = proxy.stop();
    let conns = trace.connections();
    assert_eq!(
        conns.len(),
        3,
        "only accepted connections are captured: {}",
        trace.dump()
    );
    for c in &conns {
        c.check();
        assert_eq!(c.count("eom"), 1);
    }
}

#[test]
fn mtls_optional_with_trust_from_environment() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let clients_ca = make_ca("client CA");
    let other_ca = make_ca("another CA");
    let good = make_leaf(&clients_ca, &["client-1"], true);
    let bad = make_leaf(&other_ca, &["client-2"], true);
    let pem = clients_ca.pem.clone();
    let proxy = tls_proxy(origin.addr(), &pki, |cfg| {
        let t = cfg.server_tls.as_mut().unwrap();
        t.client_trust = Some(ClientTrust::EnvPem {
            var: "TEST_TRUST_PEM".into(),
            pem,
        });
        t.require_client_auth = false;
    });
    let v = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    for cert in [None, Some(&good)] {
        let mut h = Http::new(tls_connect(
            proxy.addr,
            client_config(&pki.ca.der, cert, v),
            "localhost",
        ));
        assert_eq!(h.exchange(&get("/small")).unwrap().status, 200);
    }
    assert!(rejected(
        proxy.addr,
        client_config(&pki.ca.der, Some(&bad), v)
    ));
    let handle = proxy.handle();
    assert!(wait_for(Duration::from_secs(5), || handle
        .counter(Counter::TlsHandshakeFailed)
        == 1));
    assert_eq!(proxy.stop().connections().len(), 2);
}

#[test]
fn plaintext_to_tls_port_is_closed_counted_and_not_captured() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let proxy = tls_proxy(origin.addr(), &pki, |_| {});
    let mut c = proxy.client();
    let _ = c.try_send(&get("/small"));
    assert!(c.closed_by_peer());
    assert!(!String::from_utf8_lossy(&c.received).contains("HTTP/1.1"));
    let handle = proxy.handle();
    assert!(wait_for(Duration::from_secs(5), || handle
        .counter(Counter::TlsHandshakeFailed)
        == 1));
    // A TCP connect-and-close (a load balancer's TCP check) is not a TLS failure.
    drop(TcpStream::connect(proxy.addr).unwrap());
    // The proxy keeps serving.
    let cfg = client_config(&pki.ca.der, None, &[&rustls::version::TLS13]);
    let mut h = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
    assert_eq!(h.exchange(&get("/small")).unwrap().status, 200);
    drop(h);
    assert_eq!(
        origin.request_count(),
        1,
        "nothing of the plaintext request forwarded"
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(handle.counter(Counter::TlsHandshakeFailed), 1);
    let trace = proxy.stop();
    let conn = trace.single();
    conn.check();
    assert_eq!(conn.count("eom"), 1);
}

#[test]
fn key_formats_rsa_and_ecdsa_pkcs1_sec1_pkcs8() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let rsa = KeyPair::from_pem(TEST_RSA_PKCS8).unwrap();
    let rsa_leaf = make_leaf_with(&pki.ca, &["localhost"], false, rsa);
    let ec_leaf = make_leaf(&pki.ca, &["localhost"], false);
    let cases = [
        (
            "RSA PKCS#1",
            &rsa_leaf,
            traditional_key_pem(&rsa_leaf.key_pem, "RSA PRIVATE KEY"),
        ),
        ("RSA PKCS#8", &rsa_leaf, rsa_leaf.key_pem.clone()),
        (
            "ECDSA SEC1",
            &ec_leaf,
            traditional_key_pem(&ec_leaf.key_pem, "EC PRIVATE KEY"),
        ),
        ("ECDSA PKCS#8", &ec_leaf, ec_leaf.key_pem.clone()),
    ];
    for (what, leaf, key_pem) in cases {
        pki.write(&leaf.cert_pem, &key_pem);
        let proxy = tls_proxy(origin.addr(), &pki, |cfg| {
            cfg.capture_flush_interval = Duration::from_secs(5)
        });
        for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let cfg = client_config(&pki.ca.der, None, &[v]);
            let mut h = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
            let r = h
                .exchange(&get("/small"))
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(r.status, 200, "{what}");
            assert_eq!(h.s.conn.peer_certificates().unwrap()[0], leaf.der, "{what}");
        }
        drop(proxy);
    }
}

#[test]
fn bad_pem_is_a_start_error_naming_the_file() {
    let pki = ServerPki::new();
    let dir = tempfile::tempdir().unwrap();
    let start = |st: ServerTlsConfig| {
        let mut cfg = test_config("127.0.0.1:9".parse().unwrap(), dir.path());
        cfg.server_tls = Some(st);
        match capture_proxy::start(cfg) {
            Ok(h) => {
                h.shutdown();
                panic!("start succeeded")
            }
            Err(e) => error_chain(&e),
        }
    };
    // No key in the key file.
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let mut st = pki.server_tls();
    st.key_file = garbage.clone();
    let msg = start(st);
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
    // No certificate in the chain file.
    let mut st = pki.server_tls();
    st.cert_chain_file = garbage.clone();
    let msg = start(st);
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
    // A key that does not belong to the certificate.
    let other = make_leaf(&pki.ca, &["localhost"], false);
    let wrong_key = pki.dir.path().join("wrong-key.pem");
    std::fs::write(&wrong_key, &other.key_pem).unwrap();
    let mut st = pki.server_tls();
    st.key_file = wrong_key.clone();
    let msg = start(st);
    assert!(msg.contains(&wrong_key.display().to_string()), "{msg}");
    // A trust bundle with no certificate.
    let mut st = pki.server_tls();
    st.client_trust = Some(ClientTrust::File(garbage.clone()));
    let msg = start(st);
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
    // A private CA file for the destination that holds no certificate.
    let mut cfg = test_config("127.0.0.1:9".parse().unwrap(), dir.path());
    cfg.destination = Destination {
        tls: true,
        host: "localhost".into(),
        port: 9,
    };
    cfg.destination_ca_file = Some(garbage.clone());
    let msg = error_chain(&capture_proxy::start(cfg).err().expect("start fails"));
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
}

/// A start-up error as `main` prints it: what failed, then its typed causes.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

#[test]
fn certificate_reload_new_connections_only() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let proxy = tls_proxy(origin.addr(), &pki, |_| {});
    let cfg = client_config(&pki.ca.der, None, &[&rustls::version::TLS13]);
    let mut old = Http::new(tls_connect(proxy.addr, cfg.clone(), "localhost"));
    assert_eq!(old.exchange(&get("/small?1")).unwrap().status, 200);
    assert_eq!(old.s.conn.peer_certificates().unwrap()[0], pki.leaf.der);

    // Swap the files, reload: new connections see the new certificate.
    let next = make_leaf(&pki.ca, &["localhost", "127.0.0.1"], false);
    pki.write(&next.cert_pem, &next.key_pem);
    assert!(proxy.handle().reload_tls().unwrap());
    let mut new = Http::new(tls_connect(proxy.addr, cfg.clone(), "localhost"));
    assert_eq!(new.exchange(&get("/small?2")).unwrap().status, 200);
    assert_eq!(new.s.conn.peer_certificates().unwrap()[0], next.der);
    // The old connection keeps working, on its old session.
    assert_eq!(old.exchange(&get("/small?3")).unwrap().status, 200);
    assert_eq!(old.s.conn.peer_certificates().unwrap()[0], pki.leaf.der);

    // A failed reload keeps the current certificate.
    std::fs::write(pki.key_file(), "garbage\n").unwrap();
    let err = proxy.handle().reload_tls().unwrap_err().to_string();
    assert!(err.contains(&pki.key_file().display().to_string()), "{err}");
    let mut third = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
    assert_eq!(third.exchange(&get("/small?4")).unwrap().status, 200);
    assert_eq!(third.s.conn.peer_certificates().unwrap()[0], next.der);
    drop((old, new, third));
    let trace = proxy.stop();
    assert_eq!(trace.connections().len(), 3);
    for c in trace.connections() {
        c.check();
    }
}

#[test]
fn timeouts_and_drain_cancel_tls_reads() {
    let origin = Origin::start();
    let pki = ServerPki::new();
    let proxy = tls_proxy(origin.addr(), &pki, |cfg| {
        cfg.client_idle_timeout = Some(Duration::from_millis(300));
        cfg.request_head_timeout = Some(Duration::from_millis(300));
    });
    let cfg = client_config(&pki.ca.der, None, &[&rustls::version::TLS13]);
    // Idle between requests: closed after the timeout, with close_notify (a clean end).
    let mut h = Http::new(tls_connect(proxy.addr, cfg.clone(), "localhost"));
    assert_eq!(h.exchange(&get("/small")).unwrap().status, 200);
    let started = Instant::now();
    let mut tmp = [0u8; 64];
    assert_eq!(h.s.read(&mut tmp).unwrap(), 0, "clean TLS close");
    assert!(started.elapsed() < Duration::from_secs(5));
    // An incomplete head: 408 over TLS, then closed.
    let mut h = Http::new(tls_connect(proxy.addr, cfg.clone(), "localhost"));
    h.send(b"GET /small HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert_eq!(h.read_response().unwrap().status, 408);
    let handle = proxy.handle();
    assert!(wait_for(Duration::from_secs(5), || handle
        .counter(Counter::IdleTimeout)
        == 1
        && handle.counter(Counter::HeadTimeout) == 1));
    drop(proxy);

    // Drain: an idle keep-alive TLS connection is closed at once, not at the drain timeout.
    let proxy = tls_proxy(origin.addr(), &pki, |_| {});
    let mut h = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
    assert_eq!(h.exchange(&get("/small")).unwrap().status, 200);
    let started = Instant::now();
    let trace = proxy.stop();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drain waited {:?}",
        started.elapsed()
    );
    assert_eq!(h.s.read(&mut tmp).unwrap(), 0);
    let conn = trace.single();
    conn.check();
    assert_eq!(conn.count("eom"), 1);
}

#[test]
fn large_bodies_through_tls_on_both_sides() {
    let (_ca, leaf, _dir, ca_file) = dest_pki(&["localhost"]);
    let o = TlsOrigin::start(vec![leaf.der.clone()], leaf.key_der());
    let pki = ServerPki::new();
    let st = pki.server_tls();
    let proxy = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "localhost");
        cfg.destination_ca_file = Some(ca_file.clone());
        cfg.server_tls = Some(st);
    });
    let cfg = client_config(&pki.ca.der, None, &[&rustls::version::TLS12]);
    let mut h = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
    let body = large_body(3 * 1024 * 1024 + 17);
    let req = with_body("POST", "/big", &body);
    let r = h.exchange(&req).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), "tls-origin POST /big ".len() + body.len());
    assert!(r.body.ends_with(&body));
    let small = get("/after");
    assert_eq!(h.exchange(&small).unwrap().body, b"tls-origin GET /after ");
    let (sent, received) = (h.sent.clone(), h.received.clone());
    drop(h);
    assert_bytes_eq("destination got the bytes", &o.received()[0], &sent);
    let conn = proxy.stop().single();
    conn.check();
    assert_bytes_eq("captured reads", &conn.reads(), &sent);
    assert_bytes_eq("captured writes", &conn.writes(), &received);
    assert_eq!(conn.request_reads(), vec![req, small]);
}

#[test]
fn plain_proxy_reload_reports_nothing_to_do() {
    let origin = Origin::start();
    let proxy = Proxy::start(origin.addr(), |_| {});
    assert!(!proxy.handle().reload_tls().unwrap());
}

// ----------------------------------------------------------------------------------------
// TLS toward the destination
// ----------------------------------------------------------------------------------------

fn dest_pki(names: &[&str]) -> (Ca, Leaf, tempfile::TempDir, PathBuf) {
    let ca = make_ca("capture-proxy test origin CA");
    let leaf = make_leaf(&ca, names, false);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("origin-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    (ca, leaf, dir, ca_file)
}

#[test]
fn https_destination_verified_with_private_ca() {
    let (_ca, leaf, _dir, ca_file) = dest_pki(&["localhost"]);
    let o = TlsOrigin::start(vec![leaf.der.clone()], leaf.key_der());
    let proxy = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "localhost");
        cfg.destination_ca_file = Some(ca_file.clone());
    });
    let mut c = proxy.client();
    let req = with_body("POST", "/doc", b"{\"x\":1}");
    c.send(&get("/a"));
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"tls-origin GET /a "[..])
    );
    c.send(&req);
    let r = c.read_response(false);
    assert_eq!(r.body, b"tls-origin POST /doc {\"x\":1}");
    c.shutdown_write();
    assert!(c.closed_by_peer());
    assert_eq!(o.connections(), 1);
    assert_bytes_eq("destination got the bytes", &o.received()[0], &c.sent);
    let conn = proxy.stop().single();
    conn.check();
    assert_exchange(&conn, &c);
}

#[test]
fn https_destination_wrong_name_is_502() {
    // The origin's certificate is only for another name.
    let (_ca, leaf, _dir, ca_file) = dest_pki(&["other.example"]);
    let o = TlsOrigin::start(vec![leaf.der.clone()], leaf.key_der());
    let proxy = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "localhost");
        cfg.destination_ca_file = Some(ca_file.clone());
    });
    let mut c = proxy.client();
    c.send(&get("/a"));
    let r = c.read_response(false);
    assert_eq!(r.status, 502);
    assert!(c.closed_by_peer());
    assert_eq!(proxy.handle().counter(Counter::UpstreamConnectFailed), 1);
    // By IP literal: the certificate has no IP address either.
    let proxy2 = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "127.0.0.1");
        cfg.destination_ca_file = Some(ca_file.clone());
    });
    let mut c2 = proxy2.client();
    c2.send(&get("/b"));
    assert_eq!(c2.read_response(false).status, 502);
    drop(proxy2);
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(conn.count("read"), 0, "nothing replayable");
    let ex = conn.exceptions();
    assert_eq!(ex.len(), 1);
    assert!(
        ex[0].contains("TLS") && ex[0].contains("certificate"),
        "{ex:?}"
    );
}

#[test]
fn https_destination_unknown_ca_is_502_and_insecure_accepts() {
    let (_ca, leaf, _dir, _ca_file) = dest_pki(&["other.example"]);
    let o = TlsOrigin::start(vec![leaf.der.clone()], leaf.key_der());
    // System roots only: the private CA is unknown.
    let proxy = Proxy::start(o.addr, |cfg| https_dest(cfg, &o, "localhost"));
    let mut c = proxy.client();
    c.send(&get("/a"));
    assert_eq!(c.read_response(false).status, 502);
    drop(proxy);
    // --insecureDestination: any certificate, any name.
    for host in ["localhost", "127.0.0.1"] {
        let proxy = Proxy::start(o.addr, |cfg| {
            https_dest(cfg, &o, host);
            cfg.insecure_destination = true;
        });
        let mut c = proxy.client();
        c.send(&get("/insecure"));
        let r = c.read_response(false);
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"tls-origin GET /insecure "[..])
        );
    }
}

#[test]
fn tls_both_sides_with_suppression_and_set_header() {
    let (_ca, leaf, _dir, ca_file) = dest_pki(&["localhost"]);
    let o = TlsOrigin::start(vec![leaf.der.clone()], leaf.key_der());
    let pki = ServerPki::new();
    let st = pki.server_tls();
    let proxy = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "localhost");
        cfg.destination_ca_file = Some(ca_file.clone());
        cfg.server_tls = Some(st);
        cfg.set_headers = vec![SetHeader {
            name: "Host".into(),
            value: "source.internal:9200".into(),
        }];
        cfg.suppress.uri_path = Some(regex::bytes::Regex::new("^(?:/_health)$").unwrap());
    });
    let cfg = client_config(&pki.ca.der, None, &[&rustls::version::TLS13]);
    let mut h = Http::new(tls_connect(proxy.addr, cfg, "localhost"));
    let r1 = get("/a");
    let r2 = get("/_health");
    let r3 = with_body("PUT", "/idx/_doc/1", b"{\"v\":2}");
    assert_eq!(h.exchange(&r1).unwrap().body, b"tls-origin GET /a ");
    assert_eq!(h.exchange(&r2).unwrap().body, b"tls-origin GET /_health ");
    assert_eq!(
        h.exchange(&r3).unwrap().body,
        b"tls-origin PUT /idx/_doc/1 {\"v\":2}"
    );
    drop(h);
    let up = String::from_utf8(o.received()[0].clone()).unwrap();
    assert_eq!(
        up.matches("Host: source.internal:9200\r\n").count(),
        3,
        "{up}"
    );
    assert!(!up.contains("origin.test"), "{up}");
    let conn = proxy.stop().single();
    conn.check();
    assert_eq!(
        conn.request_reads(),
        vec![r1, r3],
        "original bytes, suppressed one left out"
    );
    assert_eq!(conn.count("eom"), 2);
}

#[test]
fn pool_over_tls_destination_is_hot() {
    let (_ca, leaf, _dir, ca_file) = dest_pki(&["localhost"]);
    let o = TlsOrigin::start(vec![leaf.der.clone()], leaf.key_der());
    let proxy = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "localhost");
        cfg.destination_ca_file = Some(ca_file.clone());
        cfg.destination_pool_size = 2;
    });
    assert!(wait_for(Duration::from_secs(5), || o.connections() >= 2));
    // Let the pooled handshakes finish (the origin counts a connection at accept).
    thread::sleep(Duration::from_millis(200));
    let mut c = proxy.client();
    c.send(&get("/pooled"));
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"tls-origin GET /pooled "[..])
    );
    let h = proxy.handle();
    assert_eq!(h.counter(Counter::DestPoolHot), 1);
    assert_eq!(h.counter(Counter::DestPoolCold), 0);
}

#[test]
fn pool_discards_tls_connections_the_destination_closed() {
    let (_ca, leaf, _dir, ca_file) = dest_pki(&["localhost"]);
    let o = TlsOrigin::start_with(vec![leaf.der.clone()], leaf.key_der(), true);
    let proxy = Proxy::start(o.addr, |cfg| {
        https_dest(cfg, &o, "localhost");
        cfg.destination_ca_file = Some(ca_file.clone());
        cfg.destination_pool_size = 1;
    });
    let h = proxy.handle();
    // The refiller notices the close_notify (the TCP connection is still open) and replaces it.
    assert!(wait_for(Duration::from_secs(5), || h
        .counter(Counter::DestPoolDiscarded)
        == 1));
    assert!(wait_for(Duration::from_secs(5), || o.connections() == 2));
    thread::sleep(Duration::from_millis(200));
    let mut c = proxy.client();
    c.send(&get("/fresh"));
    let r = c.read_response(false);
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, &b"tls-origin GET /fresh "[..])
    );
    assert_eq!(h.counter(Counter::DestPoolHot), 1);
    assert_eq!(h.counter(Counter::DestPoolDiscarded), 1);
}
