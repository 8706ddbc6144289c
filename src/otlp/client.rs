//! The OTLP/gRPC client: one unary `MetricsService/Export` call over HTTP/2 (h2; cleartext by
//! prior knowledge for `http://`, TLS with ALPN `h2` for `https://`), keeping the connection
//! between calls, reconnecting after any failure (and retrying once at once when a kept
//! connection turns out to be closed).
//!
//! May depend on: `config` (the endpoint), `tls` (the collector's TLS configuration),
//! `super::proto` (the response), h2, tokio, tokio-rustls.
//!
//! Invariant: runs only inside the exporter thread's current-thread tokio runtime; the
//! address is resolved with the standard library on that same thread, so tokio never starts
//! a blocking-pool thread. A failed call drops the connection.

use std::net::{SocketAddr, ToSocketAddrs};

use bytes::Bytes;
use h2::client::SendRequest;
use prost::Message;

use super::proto::ExportMetricsServiceResponse;
use crate::config::Destination;

/// The gRPC method of `opentelemetry.proto.collector.metrics.v1.MetricsService`.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// Most bytes of a response body read (a response is a few bytes: an optional partial success).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0} resolved to no address")]
    NoAddress(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("TLS handshake: {0}")]
    TlsHandshake(std::io::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("request: {0}")]
    Request(#[from] http::Error),
    #[error("message of {0} bytes is too large for gRPC")]
    TooLarge(usize),
    #[error("collector answered HTTP {0}")]
    HttpStatus(u16),
    #[error("collector answered gRPC status {code}: {message}")]
    Grpc { code: String, message: String },
    #[error("collector answered without a gRPC status")]
    NoGrpcStatus,
    #[error("did not finish within {0:?}")]
    Timeout(std::time::Duration),
}

/// What the collector said about an accepted export.
#[derive(Debug, Default, PartialEq)]
pub struct Accepted {
    /// Data points the collector rejected (partial success); 0 when all were taken.
    pub rejected: i64,
    pub message: String,
}

pub struct Client {
    endpoint: Destination,
    /// `scheme://authority` of the request URI.
    base: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    conn: Option<SendRequest<Bytes>>,
}

impl Client {
    pub fn new(endpoint: Destination) -> Result<Client, ExportError> {
        let host = if endpoint.host.contains(':') {
            format!("[{}]", endpoint.host)
        } else {
            endpoint.host.clone()
        };
        let scheme = if endpoint.tls { "https" } else { "http" };
        let base = format!("{scheme}://{host}:{}", endpoint.port);
        let tls = if endpoint.tls {
            let (config, name) = crate::tls::otlp_client_config(&endpoint.host)?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        Ok(Client {
            endpoint,
            base,
            tls,
            conn: None,
        })
    }

    /// One export of an encoded `ExportMetricsServiceRequest`. Must run inside the exporter's
    /// tokio runtime. On error the connection is dropped; the next call reconnects.
    pub async fn export(&mut self, message: &[u8]) -> Result<Accepted, ExportError> {
        let (send, reused) = match self.conn.take() {
            Some(c) => (c, true),
            None => (self.connect().await?, false),
        };
        let mut result = self.call(send.clone(), message).await;
        let mut send = send;
        // A kept connection the collector has since closed (idle timeout, restart, GOAWAY)
        // fails at the HTTP/2 layer: one more try on a new connection.
        if reused && matches!(result, Err(ExportError::H2(_))) {
            send = self.connect().await?;
            result = self.call(send.clone(), message).await;
        }
        if result.is_ok() {
            self.conn = Some(send);
        }
        result
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, ExportError> {
        let host = self.endpoint.host.as_str();
        let addrs: Vec<SocketAddr> = (host, self.endpoint.port)
            .to_socket_addrs()
            .map_err(|source| ExportError::Resolve {
                host: host.to_string(),
                source,
            })?
            .collect();
        let mut last = ExportError::NoAddress(host.to_string());
        for addr in addrs {
            let tcp = match tokio::net::TcpStream::connect(addr).await {
                Ok(t) => t,
                Err(source) => {
                    last = ExportError::Connect { addr, source };
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let send = match &self.tls {
                None => {
                    let (send, conn) = h2::client::handshake(tcp).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    send
                }
                Some((connector, name)) => {
                    let stream = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(ExportError::TlsHandshake)?;
                    let (send, conn) = h2::client::handshake(stream).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    send
                }
            };
            return Ok(send);
        }
        Err(last)
    }

    async fn call(
        &self,
        send: SendRequest<Bytes>,
        message: &[u8],
    ) -> Result<Accepted, ExportError> {
        let len = u32::try_from(message.len()).map_err(|_| ExportError::TooLarge(message.len()))?;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("{}{EXPORT_PATH}", self.base))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(
                "user-agent",
                concat!("capture-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .body(())?;
        let mut send = send.ready().await?;
        let (response, mut body_out) = send.send_request(request, false)?;
        // gRPC length-prefixed message: not compressed, big-endian length.
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(0);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(message);
        body_out.send_data(Bytes::from(framed), true)?;
        let (parts, mut body) = response.await?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(ExportError::HttpStatus(parts.status.as_u16()));
        }
        // A trailers-only answer carries the status in the headers.
        if let Some(status) = grpc_status(&parts.headers) {
            status?;
        }
        let mut data = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if data.len() + chunk.len() <= MAX_RESPONSE_BYTES {
                data.extend_from_slice(&chunk);
            }
        }
        let trailers = body.trailers().await?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => status?,
            None if parts.headers.contains_key("grpc-status") => {}
            None => return Err(ExportError::NoGrpcStatus),
        }
        let response = data
            .get(5..)
            .and_then(|m| ExportMetricsServiceResponse::decode(m).ok())
            .and_then(|r| r.partial_success)
            .map(|p| Accepted {
                rejected: p.rejected_data_points,
                message: p.error_message,
            })
            .unwrap_or_default();
        Ok(response)
    }
}

/// `grpc-status` (and `grpc-message`) of a header map: `Ok` for 0.
fn grpc_status(h: &http::HeaderMap) -> Option<Result<(), ExportError>> {
    let code = h.get("grpc-status")?.to_str().unwrap_or("?");
    if code == "0" {
        return Some(Ok(()));
    }
    let message = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some(Err(ExportError::Grpc {
        code: code.to_string(),
        message,
    }))
}
