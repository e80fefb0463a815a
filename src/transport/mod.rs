//! Byte-stream transports. Everything above this module sees only [`Connector`], so the same
//! HTTP client runs over TCP on a developer machine and over the vsock tunnel in an enclave.

pub mod addr;
pub mod body;
pub mod connect;
pub mod head;
pub mod http;
pub mod tls;

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A boxed [`Io`]: what every [`Connector`] and [`addr::Listener`] hands out, whatever the
/// transport underneath.
pub type BoxIo = Box<dyn Io>;
/// A boxed, sendable future, which keeps [`Connector`] usable as `Arc<dyn Connector>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens a byte stream to `host:port`. Implementations decide how: directly, or tunnelled.
pub trait Connector: Send + Sync + 'static {
    /// A raw stream to `host:port`; TLS, if any, is started over it by the caller.
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

/// Direct TCP for the parent's egress proxy. After name resolution it refuses destinations an
/// enclave's egress must not be steered to by a name's DNS: loopback, private, link-local
/// (169.254.169.254, the instance metadata service), shared (100.64/10), unique-local,
/// unspecified and multicast addresses. An IP literal is taken as given: the allowlist had to
/// name it explicitly.
pub struct GuardedTcp {
    /// Let names resolve to internal addresses too (`[egress] allow_private_destinations`).
    pub allow_private: bool,
}

/// Whether `ip` is inside the parent's own networks rather than out on the internet.
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let s0 = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s0 & 0xfe00) == 0xfc00
                || (s0 & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

impl Connector for GuardedTcp {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let literal = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok();
            if self.allow_private || literal {
                return TcpConnector.connect(host, port).await;
            }
            let all: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host, port)).await?.collect();
            let public: Vec<&std::net::SocketAddr> =
                all.iter().filter(|a| !is_internal(a.ip())).collect();
            if public.is_empty() {
                let shown: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "{host} resolves only to internal addresses ({}): refused ([egress] allow_private_destinations = true allows them)",
                        shown.join(", ")
                    ),
                ));
            }
            let mut last = None;
            for a in public {
                match tokio::net::TcpStream::connect(a).await {
                    Ok(s) => {
                        s.set_nodelay(true)?;
                        return Ok(Box::new(s) as BoxIo);
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address to connect to")))
        })
    }
}

/// Why a request to an HTTP(S) origin failed, or its TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
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

#[cfg(test)]
mod internal_address_tests {
    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
        ] {
            assert!(super::is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "100.128.0.1"] {
            assert!(!super::is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
