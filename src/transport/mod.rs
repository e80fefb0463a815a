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
    #[error("TLS with {addr} failed: {source}; {hint}")]
    Certificate {
        addr: String,
        source: io::Error,
        hint: &'static str,
    },
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

/// What to do about a certificate that did not verify.
const HINT_CA: &str = "a private gateway, or one behind an intercepting proxy, needs its CA certificate given with --ca FILE (or CIDBOOT_CA; in an enclave, [tls] extra_ca)";
const HINT_NAME: &str = "the certificate is for another name: check the host in the gateway URL";
const HINT_TIME: &str =
    "the certificate is outside its validity period: check this machine's clock, or renew it";
const HINT_OTHER: &str = "the certificate cannot be trusted; if the gateway is private, give its CA with --ca FILE (or CIDBOOT_CA; in an enclave, [tls] extra_ca)";

/// When a TLS handshake failed on the peer's certificate (rather than the network), what to
/// do about it.
pub(crate) fn certificate_hint(e: &io::Error) -> Option<&'static str> {
    use rustls::CertificateError as C;
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(c) => Some(match c {
            C::UnknownIssuer | C::BadSignature => HINT_CA,
            C::NotValidForName | C::NotValidForNameContext { .. } => HINT_NAME,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => HINT_TIME,
            _ => HINT_OTHER,
        }),
        rustls::Error::NoCertificatesPresented => Some(HINT_OTHER),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_error(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn a_certificate_failure_says_what_to_do_and_is_final() {
        use rustls::CertificateError as C;
        for (e, want) in [
            (C::UnknownIssuer, "--ca FILE (or CIDBOOT_CA"),
            (C::NotValidForName, "check the host in the gateway URL"),
            (C::Expired, "check this machine's clock"),
        ] {
            let source = tls_error(rustls::Error::InvalidCertificate(e));
            let hint = certificate_hint(&source).unwrap();
            let err = TransportError::Certificate {
                addr: "https://gw".into(),
                source,
                hint,
            };
            assert!(err.to_string().contains(want), "{err}");
            assert!(err.is_final());
        }
        let handshake = tls_error(rustls::Error::HandshakeNotComplete);
        assert_eq!(certificate_hint(&handshake), None);
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(certificate_hint(&reset), None);
        let refused = TransportError::Connect {
            addr: "proxy".into(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "403"),
        };
        assert!(refused.is_final());
        let down = TransportError::Connect {
            addr: "gw".into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "down"),
        };
        assert!(!down.is_final());
    }
}
