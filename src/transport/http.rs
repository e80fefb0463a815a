//! A minimal HTTP/1.1 client: one connection per request, TLS by rustls, every phase timed.
//!
//! One connection per request keeps failure handling simple (a broken connection never
//! poisons a pool) and costs little: cidboot makes a few dozen large requests per boot.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncRead;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

use super::{BoxIo, Connector, TransportError};

/// Per-request time limits.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP (or tunnel) connect plus TLS handshake.
    pub connect: Duration,
    /// From sending the request to the response headers.
    pub first_byte: Duration,
    /// Longest silence between two chunks of the body.
    pub idle: Duration,
    /// Least bytes per second a body must average over each [`Timeouts::rate_window`] of
    /// waiting on the network: a peer that trickles just inside the idle timeout is cut. 0
    /// turns the floor off.
    pub min_rate: u64,
    /// How long the reader waits on the network before it compares the bytes received with
    /// the floor. Time the caller spends between reads does not count.
    pub rate_window: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            min_rate: 16 * 1024,
            rate_window: Duration::from_secs(30),
        }
    }
}

/// The throughput floor of one body: bytes received over time spent waiting for them.
struct Floor {
    min_rate: u64,
    window: Duration,
    waited: Duration,
    bytes: u64,
}

impl Floor {
    /// How long the next wait may last before the window closes.
    fn left(&self) -> Duration {
        self.window.saturating_sub(self.waited)
    }

    /// Accounts for one wait; at the end of a window, an error if too little arrived.
    fn account(&mut self, waited: Duration, bytes: u64, addr: &str) -> io::Result<()> {
        self.waited += waited;
        self.bytes += bytes;
        if self.min_rate == 0 || self.waited < self.window {
            return Ok(());
        }
        let need = self.min_rate.saturating_mul(self.window.as_secs().max(1));
        if self.bytes < need {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{addr} sent {} bytes in {}s, under the floor of {} bytes/s (too slow)",
                    self.bytes,
                    self.waited.as_secs(),
                    self.min_rate
                ),
            ));
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }
}

/// The parts of an `http(s)://host[:port]` URL that a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `https`: the stream is wrapped in TLS, and the certificate verified for `host`.
    pub tls: bool,
    /// The name or IP to connect to (an IPv6 literal without brackets), also sent as `Host`.
    pub host: String,
    /// The URL's port, or the scheme's default (443 or 80).
    pub port: u16,
}

impl Origin {
    /// Splits an `http(s)://` URL into its origin and its path, the query dropped and trailing
    /// slashes trimmed so that request paths can be appended to it.
    pub fn parse(url: &str) -> Result<(Origin, String), TransportError> {
        let bad = |reason: &str| TransportError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("scheme must be https or http")),
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let path = uri.path().trim_end_matches('/').to_string();
        Ok((Origin { tls, host, port }, path))
    }

    fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// An HTTP/1.1 client over any [`Connector`], with rustls for `https` origins and a fresh
/// connection per request.
#[derive(Clone)]
pub struct HttpClient {
    connector: Arc<dyn Connector>,
    tls: Arc<rustls::ClientConfig>,
    /// The limits on every request of this client and on reading its response body.
    pub timeouts: Timeouts,
}

/// A response whose head has arrived; the body is read through [`Response::into_reader`],
/// under the client's timeouts.
pub struct Response {
    /// The status; what a non-success means is the caller's to decide.
    pub status: StatusCode,
    /// The response headers, as received.
    pub headers: HeaderMap,
    body: Incoming,
    timeouts: Timeouts,
    addr: String,
}

impl HttpClient {
    /// A client that opens its streams through `connector` and verifies servers with `tls`.
    pub fn new(
        connector: Arc<dyn Connector>,
        tls: Arc<rustls::ClientConfig>,
        timeouts: Timeouts,
    ) -> Self {
        HttpClient {
            connector,
            tls,
            timeouts,
        }
    }

    /// Sends `GET path_and_query` to `origin`.
    pub async fn get(
        &self,
        origin: &Origin,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, TransportError> {
        let addr = origin.to_string();
        let io = self.open(origin, &addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| TransportError::Http {
                addr: addr.clone(),
                source,
            })?;
        // The connection task ends when the response body is dropped or finished.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::get(path_and_query)
            .header(http::header::HOST, origin.authority())
            .header(
                http::header::USER_AGENT,
                concat!("cidboot/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Empty::<Bytes>::new())?;
        let resp = timeout(self.timeouts.first_byte, sender.send_request(req))
            .await
            .map_err(|_| TransportError::Timeout {
                phase: "waiting for the response",
                addr: addr.clone(),
                secs: self.timeouts.first_byte.as_secs(),
            })?
            .map_err(|source| TransportError::Http {
                addr: addr.clone(),
                source,
            })?;
        let (parts, body) = resp.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
            timeouts: self.timeouts,
            addr,
        })
    }

    async fn open(&self, origin: &Origin, addr: &str) -> Result<BoxIo, TransportError> {
        let secs = self.timeouts.connect.as_secs();
        let fut = async {
            let io = self
                .connector
                .connect(&origin.host, origin.port)
                .await
                .map_err(|source| TransportError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
            if !origin.tls {
                return Ok(io);
            }
            let name =
                ServerName::try_from(origin.host.clone()).map_err(|e| TransportError::BadUrl {
                    url: addr.to_string(),
                    reason: e.to_string(),
                })?;
            let tls = TlsConnector::from(self.tls.clone())
                .connect(name, io)
                .await
                .map_err(|source| {
                    let addr = addr.to_string();
                    match super::certificate_hint(&source) {
                        Some(hint) => TransportError::Certificate { addr, source, hint },
                        None => TransportError::Tls { addr, source },
                    }
                })?;
            Ok(Box::new(tls) as BoxIo)
        };
        timeout(self.timeouts.connect, fut)
            .await
            .map_err(|_| TransportError::Timeout {
                phase: "connecting",
                addr: addr.to_string(),
                secs,
            })?
    }
}

impl Response {
    /// The first value of header `name`, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a reader. A silence longer than the idle timeout, or less than the
    /// throughput floor over a window, is an `io::ErrorKind::TimedOut`.
    pub fn into_reader(self) -> impl AsyncRead + Send + Unpin {
        let Response {
            body,
            timeouts,
            addr,
            ..
        } = self;
        let idle = timeouts.idle;
        let floor = Floor {
            min_rate: timeouts.min_rate,
            window: timeouts.rate_window.max(Duration::from_secs(1)),
            waited: Duration::ZERO,
            bytes: 0,
        };
        let stream = futures_util::stream::unfold(Some((body, floor)), move |state| {
            let addr = addr.clone();
            async move {
                let (mut body, mut floor) = state?;
                let fail = |e: io::Error| Some((Err(e), None));
                // The silence so far, across waits cut short by the end of a window.
                let mut silent = Duration::ZERO;
                loop {
                    let wait = idle.saturating_sub(silent).min(floor.left());
                    let started = tokio::time::Instant::now();
                    let next = timeout(wait, body.frame()).await;
                    let waited = started.elapsed();
                    match next {
                        Err(_) => {
                            silent += waited;
                            if silent >= idle {
                                let msg = format!(
                                    "no data from {addr} for {}s (idle timeout)",
                                    idle.as_secs()
                                );
                                return fail(io::Error::new(io::ErrorKind::TimedOut, msg));
                            }
                            if let Err(e) = floor.account(waited, 0, &addr) {
                                return fail(e);
                            }
                        }
                        Ok(None) => return None,
                        Ok(Some(Err(e))) => {
                            return fail(io::Error::other(format!("reading from {addr}: {e}")));
                        }
                        Ok(Some(Ok(frame))) => {
                            silent = Duration::ZERO;
                            if let Ok(data) = frame.into_data() {
                                if let Err(e) = floor.account(waited, data.len() as u64, &addr) {
                                    return fail(e);
                                }
                                return Some((Ok(data), Some((body, floor))));
                            }
                            if let Err(e) = floor.account(waited, 0, &addr) {
                                return fail(e);
                            }
                        }
                    }
                }
            }
        });
        tokio_util::io::StreamReader::new(Box::pin(stream))
    }

    /// Reads the whole body, refusing more than `max` bytes.
    pub async fn bytes_limited(self, max: usize) -> io::Result<Result<Bytes, usize>> {
        use tokio::io::AsyncReadExt;
        let mut r = self.into_reader().take(max as u64 + 1);
        let mut buf = Vec::new();
        r.read_to_end(&mut buf).await?;
        if buf.len() > max {
            return Ok(Err(buf.len()));
        }
        Ok(Ok(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floor(min_rate: u64, secs: u64) -> Floor {
        Floor {
            min_rate,
            window: Duration::from_secs(secs),
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    #[test]
    fn the_floor_is_judged_at_the_end_of_each_window() {
        let s = Duration::from_secs(1);
        let mut f = floor(100, 2);
        // One byte a second: fine until the window closes, then cut.
        assert!(f.account(s, 1, "gw").is_ok());
        assert_eq!(f.left(), s);
        let e = f.account(s, 1, "gw").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("sent 2 bytes in 2s"), "{e}");
        // Enough bytes: the window starts over, and each window is judged alone.
        let mut f = floor(100, 2);
        assert!(f.account(s * 2, 200, "gw").is_ok());
        assert_eq!((f.waited, f.bytes), (Duration::ZERO, 0));
        assert!(f.account(s * 2, 199, "gw").is_err());
        // Off.
        let mut f = floor(0, 1);
        assert!(f.account(s * 10, 0, "gw").is_ok());
    }
}
