//! A minimal HTTP/1.1 client: TLS by rustls, every phase timed, connections kept alive.
//!
//! Resolving an image is a chain of small sequential requests (layout, index, manifest,
//! config) and a blob is fetched as parallel ranges, so a new TCP (or tunnel) connection and
//! TLS handshake per request would cost a few round trips each. A connection is therefore
//! kept in a small idle pool per origin once its response is done, under these rules:
//!
//! - It goes back only after its body was read to the end, from an HTTP/1.1 response that
//!   did not say `Connection: close`, and once hyper reports it ready for the next request.
//!   A body dropped early, an error or a timeout drops the connection instead, so what is
//!   left of one response is never read as the next (hyper frames each response by its
//!   `Content-Length` or chunking; a peer sending bytes nobody asked for on an idle
//!   connection gets that connection closed).
//! - A pooled connection hyper reports closed or not ready is discarded, never waited on;
//!   one idle for [`POOL_IDLE`] is closed. At most [`POOL_PER_ORIGIN`] wait per origin and
//!   [`POOL_TOTAL`] in all.
//! - A request on a reused connection that fails before a response head arrives (the server
//!   closed it meanwhile) is sent once more on a fresh connection; nothing else is retried.
//!
//! The pool belongs to one [`HttpClient`] (and its clones), so a connection is only reused
//! with the connector and TLS configuration that opened it, and the origin key includes the
//! scheme: a plain connection never serves an `https` request.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::{HeaderMap, Request, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncRead;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

use super::body::{FileBody, Progress};
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

    /// `host[:port]` as the `Host` header carries it: the port only when not the scheme's
    /// default, an IPv6 literal in brackets.
    pub fn authority(&self) -> String {
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

/// Most idle connections kept for one origin.
pub const POOL_PER_ORIGIN: usize = 8;
/// Most idle connections kept in all, per client.
pub const POOL_TOTAL: usize = 32;
/// How long an idle connection is kept: below the usual server keep-alive timeouts, so
/// that cidboot, not the server, is usually the side that closes.
pub const POOL_IDLE: Duration = Duration::from_secs(20);
/// How long a finished connection may take to become ready for another request before it
/// is dropped rather than pooled. The reader sees the end of a body only after that wait
/// (microseconds, normally), so that a request made right after finds the connection pooled.
const SETTLE: Duration = Duration::from_millis(100);

/// A request body: in memory, or streamed from a file ([`FileBody`]).
type ReqBody = UnsyncBoxBody<Bytes, io::Error>;
type Sender = SendRequest<ReqBody>;

/// A connection waiting for its next request.
struct Idle {
    sender: Sender,
    since: Instant,
}

/// Idle keep-alive connections, by origin.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<Origin, Vec<Idle>>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Origin, Vec<Idle>>> {
        // The map is consistent after every statement, so a panic elsewhere cannot poison it.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection to `origin` that is ready now.
    fn checkout(&self, origin: &Origin) -> Option<Sender> {
        let mut map = self.lock();
        let list = map.get_mut(origin)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(idle) = list.pop() {
            if now.duration_since(idle.since) < POOL_IDLE
                && !idle.sender.is_closed()
                && idle.sender.is_ready()
            {
                found = Some(idle.sender);
                break;
            }
        }
        if list.is_empty() {
            map.remove(origin);
        }
        found
    }

    /// Keeps `sender` for a later request to `origin`, unless the caps are reached.
    fn put(self: &Arc<Self>, origin: Origin, sender: Sender) {
        {
            let mut map = self.lock();
            let total: usize = map.values().map(Vec::len).sum();
            let here = map.get(&origin).map_or(0, Vec::len);
            if total >= POOL_TOTAL || here >= POOL_PER_ORIGIN {
                return;
            }
            map.entry(origin.clone()).or_default().push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(POOL_IDLE).await;
            expire(&pool, &origin);
        });
    }
}

/// Closes the connections to `origin` idle for [`POOL_IDLE`] or found closed.
fn expire(pool: &Weak<Pool>, origin: &Origin) {
    let Some(pool) = pool.upgrade() else { return };
    let mut map = pool.lock();
    if let Some(list) = map.get_mut(origin) {
        let now = Instant::now();
        list.retain(|i| now.duration_since(i.since) < POOL_IDLE && !i.sender.is_closed());
        if list.is_empty() {
            map.remove(origin);
        }
    }
}

/// A connection lent to one response: back to the pool when its body ends, closed if
/// dropped before.
struct Lease {
    sender: Sender,
    origin: Origin,
    pool: Arc<Pool>,
}

impl Lease {
    /// Pools the connection once hyper has it ready for the next request, which it does
    /// just after delivering the end of the body; dropped if that takes over [`SETTLE`].
    async fn release(self) {
        let Lease {
            mut sender,
            origin,
            pool,
        } = self;
        if let Ok(Ok(())) = timeout(SETTLE, sender.ready()).await {
            pool.put(origin, sender);
        }
    }
}

/// Whether a response lets its connection carry another request.
fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && !headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Whether a request failed because its reused connection had been closed by the peer
/// before the response head arrived: the keep-alive race, worth one fresh attempt.
fn is_stale(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_incomplete_message() || e.is_closed() {
        return true;
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        cause = c.source();
    }
    false
}

/// An HTTP/1.1 client over any [`Connector`], with rustls for `https` origins and
/// keep-alive connections (see the module documentation for when one is reused).
#[derive(Clone)]
pub struct HttpClient {
    connector: Arc<dyn Connector>,
    tls: Arc<rustls::ClientConfig>,
    pool: Arc<Pool>,
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
    lease: Option<Lease>,
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
            pool: Arc::default(),
            timeouts,
        }
    }

    /// Sends `GET path_and_query` to `origin`, on an idle connection to it if one is ready.
    pub async fn get(
        &self,
        origin: &Origin,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, TransportError> {
        self.request(Method::GET, origin, path_and_query, headers, Bytes::new())
            .await
    }

    /// Sends `POST path` with `body` to `origin`, under the same rules as [`HttpClient::get`]
    /// (a request that found its reused connection closed before any answer is sent once
    /// more on a fresh one). `headers` must carry what the server needs to read the body,
    /// such as `Content-Type`; the length is set from `body`.
    pub async fn post(
        &self,
        origin: &Origin,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, TransportError> {
        self.request(Method::POST, origin, path, headers, body)
            .await
    }

    /// Sends `PUT path` with `body` to `origin`, as [`HttpClient::post`] does.
    pub async fn put(
        &self,
        origin: &Origin,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, TransportError> {
        self.request(Method::PUT, origin, path, headers, body).await
    }

    async fn request(
        &self,
        method: Method,
        origin: &Origin,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, TransportError> {
        let addr = origin.to_string();
        let build = || {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(path_and_query)
                .header(http::header::HOST, origin.authority())
                .header(
                    http::header::USER_AGENT,
                    concat!("cidboot/", env!("CARGO_PKG_VERSION")),
                );
            if method == Method::POST || method == Method::PUT {
                req = req.header(http::header::CONTENT_LENGTH, body.len());
            }
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.body(
                Full::new(body.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
        };
        if let Some(sender) = self.pool.checkout(origin) {
            match self.send(sender, build()?, origin, &addr, None).await {
                Err(Failure::Stale(_)) => {}
                other => return other.map_err(Failure::into_inner),
            }
        }
        let sender = self.handshake(origin, &addr).await?;
        self.send(sender, build()?, origin, &addr, None)
            .await
            .map_err(Failure::into_inner)
    }

    /// Sends `method path` with `body` streamed from its file, always on a fresh connection
    /// (a streamed body cannot be sent twice). While the body goes out, the request fails
    /// only when no chunk has left for the idle timeout; once it is all sent, the answer
    /// has the first-byte timeout.
    pub async fn send_file(
        &self,
        method: Method,
        origin: &Origin,
        path: &str,
        headers: &[(&str, &str)],
        body: FileBody,
    ) -> Result<Response, TransportError> {
        let addr = origin.to_string();
        let progress = body.progress();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, origin.authority())
            .header(
                http::header::USER_AGENT,
                concat!("cidboot/", env!("CARGO_PKG_VERSION")),
            )
            .header(http::header::CONTENT_LENGTH, body.len());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body.boxed_unsync())?;
        let sender = self.handshake(origin, &addr).await?;
        self.send(sender, req, origin, &addr, Some(progress))
            .await
            .map_err(Failure::into_inner)
    }

    /// A fresh connection to `origin`, ready for a request.
    async fn handshake(&self, origin: &Origin, addr: &str) -> Result<Sender, TransportError> {
        let io = self.open(origin, addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|source| TransportError::Http {
                addr: addr.to_string(),
                source,
            })?;
        // The connection task ends when its sender is dropped (the pool let it go, or the
        // response was abandoned) or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends `req` on `sender` and waits for the response head.
    async fn send(
        &self,
        mut sender: Sender,
        req: Request<ReqBody>,
        origin: &Origin,
        addr: &str,
        upload: Option<Arc<Progress>>,
    ) -> Result<Response, Failure> {
        let answer = match upload {
            None => timeout(self.timeouts.first_byte, sender.send_request(req))
                .await
                .map_err(|_| "waiting for the response"),
            Some(p) => self.wait_upload(sender.send_request(req), &p).await,
        };
        let resp = match answer {
            Err(phase) => {
                let secs = if phase == SENDING {
                    self.timeouts.idle.as_secs()
                } else {
                    self.timeouts.first_byte.as_secs()
                };
                return Err(Failure::Other(TransportError::Timeout {
                    phase,
                    addr: addr.to_string(),
                    secs,
                }));
            }
            Ok(Err(source)) => {
                let stale = is_stale(&source);
                let e = TransportError::Http {
                    addr: addr.to_string(),
                    source,
                };
                return Err(if stale {
                    Failure::Stale(e)
                } else {
                    Failure::Other(e)
                });
            }
            Ok(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        let lease = keeps_alive(parts.version, &parts.headers).then(|| Lease {
            sender,
            origin: origin.clone(),
            pool: self.pool.clone(),
        });
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
            timeouts: self.timeouts,
            addr: addr.to_string(),
            lease,
        })
    }

    /// Waits for the answer to a streamed upload: silence while sending is judged by the
    /// idle timeout, the wait after the last byte by the first-byte timeout.
    async fn wait_upload<F: std::future::Future>(
        &self,
        answer: F,
        p: &Progress,
    ) -> Result<F::Output, &'static str> {
        let mut answer = std::pin::pin!(answer);
        let mut sent_at: Option<Instant> = None;
        loop {
            if let Ok(r) = timeout(Duration::from_millis(250), answer.as_mut()).await {
                return Ok(r);
            }
            if p.done() {
                let at = *sent_at.get_or_insert_with(Instant::now);
                if at.elapsed() >= self.timeouts.first_byte {
                    return Err("waiting for the response");
                }
            } else if p.silent() >= self.timeouts.idle {
                return Err(SENDING);
            }
        }
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

/// The phase of a streamed upload that the idle timeout judges.
const SENDING: &str = "sending the request body, which stalled,";

/// How a request failed: `Stale` only for a connection closed before the response head.
enum Failure {
    Stale(TransportError),
    Other(TransportError),
}

impl Failure {
    fn into_inner(self) -> TransportError {
        match self {
            Failure::Stale(e) | Failure::Other(e) => e,
        }
    }
}

impl Response {
    /// The first value of header `name`, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a reader. A silence longer than the idle timeout, or less than the
    /// throughput floor over a window, is an `io::ErrorKind::TimedOut`. Once the body has
    /// been read to its end the connection may carry another request; a reader dropped
    /// before that, or failed, closes it.
    pub fn into_reader(self) -> impl AsyncRead + Send + Unpin {
        let Response {
            body,
            timeouts,
            addr,
            lease,
            ..
        } = self;
        let idle = timeouts.idle;
        let floor = Floor {
            min_rate: timeouts.min_rate,
            window: timeouts.rate_window.max(Duration::from_secs(1)),
            waited: Duration::ZERO,
            bytes: 0,
        };
        let stream = futures_util::stream::unfold(Some((body, floor, lease)), move |state| {
            let addr = addr.clone();
            async move {
                let (mut body, mut floor, mut lease) = state?;
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
                        Ok(None) => {
                            if let Some(lease) = lease.take() {
                                lease.release().await;
                            }
                            return None;
                        }
                        Ok(Some(Err(e))) => {
                            return fail(io::Error::other(format!("reading from {addr}: {e}")));
                        }
                        Ok(Some(Ok(frame))) => {
                            silent = Duration::ZERO;
                            if let Ok(data) = frame.into_data() {
                                if let Err(e) = floor.account(waited, data.len() as u64, &addr) {
                                    return fail(e);
                                }
                                // A reader that stops at the known length still frees the
                                // connection: hyper has read the whole body by then.
                                if body.is_end_stream() {
                                    if let Some(lease) = lease.take() {
                                        lease.release().await;
                                    }
                                }
                                return Some((Ok(data), Some((body, floor, lease))));
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
    fn only_an_http11_response_without_close_keeps_its_connection() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(Version::HTTP_11, &h));
        assert!(!keeps_alive(Version::HTTP_10, &h));
        h.insert(http::header::CONNECTION, "keep-alive".parse().unwrap());
        assert!(keeps_alive(Version::HTTP_11, &h));
        h.append(http::header::CONNECTION, "Upgrade, CLOSE".parse().unwrap());
        assert!(!keeps_alive(Version::HTTP_11, &h));
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
