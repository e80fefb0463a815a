//! Byte-stream transports. Everything above this module sees only [`Connector`], so the same
//! HTTP client runs over TCP on a developer machine and over the vsock tunnel in an enclave.

pub mod addr;
pub mod connect;
pub mod http;
pub mod tls;

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

pub type BoxIo = Box<dyn Io>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens a byte stream to `host:port`. Implementations decide how: directly, or tunnelled.
pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxIo>>;
}

/// Plain TCP, for developer machines and the parent instance.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect((host, port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("connecting to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("{phase} timed out after {secs}s talking to {addr}")]
    Timeout {
        phase: &'static str,
        addr: String,
        secs: u64,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls { addr: String, source: io::Error },
    #[error("TLS with {addr} failed: {source}; a private gateway, or one behind an intercepting proxy, needs its CA certificate given with --ca FILE (or CIDBOOT_CA; in an enclave, [tls] extra_ca)")]
    Certificate { addr: String, source: io::Error },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("building the request failed: {0}")]
    Request(#[from] ::http::Error),
    #[error("CA file {path}: {reason}")]
    BadCa { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

impl TransportError {
    /// True when trying again cannot help: a certificate that does not verify, or a proxy or
    /// route that refused the destination.
    pub fn is_final(&self) -> bool {
        match self {
            TransportError::Certificate { .. } => true,
            TransportError::Connect { source, .. } => {
                source.kind() == io::ErrorKind::PermissionDenied
            }
            _ => false,
        }
    }
}

/// Whether a TLS handshake failed on the peer's certificate (rather than the network).
pub(crate) fn is_certificate_error(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
            )
        })
}
