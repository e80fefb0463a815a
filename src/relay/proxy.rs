//! The egress proxy: HTTP CONNECT (and plain HTTP with absolute URIs), an allowlist that denies
//! by default, and bounds on the request head, connections and time. The parent runs it with
//! TCP as its dialer; inside the enclave the workload's proxy runs it with the parent's proxy
//! (over vsock) as its dialer, so the enclave's measured policy is enforced inside too.
//!
//! Request heads are parsed with `httparse` from a buffer capped before parsing
//! (`transport::head`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::allow::{Allowlist, Decision};
use super::splice::splice;
use crate::transport::addr::{accept_shedding, Accepted, FdReserve, Listener};
use crate::transport::head::{read_head, Head, HeadError};
use crate::transport::{BoxIo, Connector};

/// Bounds of the proxy (documented in docs/operating.md).
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Clients served at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Request line plus headers.
    pub max_head: usize,
    /// Time a client gets to send its whole request head (slowloris bound).
    pub head_timeout: Duration,
    /// Time the dialer gets to reach an allowed target; past it the client is answered 504.
    pub connect_timeout: Duration,
    /// A tunnel with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// A tunnel open this long is closed, busy or not.
    pub max_lifetime: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_connections: 512,
            max_head: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// One egress proxy: the parent's, or the enclave's own in front of it.
pub struct Proxy {
    /// "parent" or "enclave", for the logs.
    pub name: &'static str,
    /// Which targets may be reached; any other is answered 403.
    pub allow: Allowlist,
    /// The size, count and time bounds.
    pub limits: ProxyLimits,
    /// How an allowed target is reached: guarded TCP on the parent, the parent's proxy from
    /// inside the enclave.
    pub dialer: Arc<dyn Connector>,
}

/// The longest the accept loop spends answering a refused client.
const REFUSE_TIMEOUT: Duration = Duration::from_millis(200);

fn count(c: &std::sync::atomic::AtomicU64) {
    crate::host::metrics::inc(c);
}

async fn respond(io: &mut BoxIo, status: &str, msg: &str) {
    let body = format!("{msg}\n");
    let _ = io
        .write_all(format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
        .await;
    let _ = io.shutdown().await;
}

struct Target {
    host: String,
    port: u16,
    /// For plain HTTP: the head to send upstream.
    forward: Option<Vec<u8>>,
}

fn parse_authority(a: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (h, p) = rest.split_once(']')?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if p.is_empty() => default_port,
            None => return None,
        };
        return Some((h.to_string(), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) => Some((h.to_string(), p.parse().ok()?)),
        None => Some((a.to_string(), default_port)),
    }
}

/// Parses a request head into the target `host:port` it asks for (the proxy's only parser of
/// client input; public for fuzzing).
pub fn parse_request_target(head: &[u8]) -> Result<(String, u16), String> {
    parse_request(head).map(|t| (t.host, t.port))
}

fn parse_request(head: &[u8]) -> Result<Target, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".into()),
        Err(e) => return Err(format!("malformed request: {e}")),
    }
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    if method == "CONNECT" {
        let (host, port) = parse_authority(path, 443)
            .filter(|(h, _)| !h.is_empty())
            .ok_or("CONNECT needs host:port")?;
        return Ok(Target {
            host,
            port,
            forward: None,
        });
    }
    let rest = path
        .strip_prefix("http://")
        .ok_or("only CONNECT and absolute http:// URIs are proxied")?;
    let (authority, origin) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = parse_authority(authority, 80)
        .filter(|(h, _)| !h.is_empty())
        .ok_or("bad authority in the URI")?;
    let mut fwd = format!("{method} {origin} HTTP/1.1\r\n").into_bytes();
    for h in req.headers.iter() {
        let n = h.name.to_ascii_lowercase();
        if n.starts_with("proxy-") || n == "connection" || n == "keep-alive" {
            continue;
        }
        fwd.extend_from_slice(h.name.as_bytes());
        fwd.extend_from_slice(b": ");
        fwd.extend_from_slice(h.value);
        fwd.extend_from_slice(b"\r\n");
    }
    // One upstream per client connection: ask the origin to close after this request.
    fwd.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Target {
        host,
        port,
        forward: Some(fwd),
    })
}

impl Proxy {
    /// Serves until the listener fails. Every client gets an answer: over
    /// `max_connections` a 503, and when the process is out of descriptors (EMFILE), one
    /// descriptor kept in reserve is let go to accept the client, answer it 503 and close it,
    /// so it is neither left waiting in the backlog nor accepted in a busy loop.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let mut reserve = FdReserve::new();
        let service = format!("{} egress proxy", self.name);
        loop {
            let (mut io, peer) = match accept_shedding(&listener, &service, &mut reserve).await {
                Accepted::Serve(c) => c,
                Accepted::Shed((mut io, _)) => {
                    count(&crate::host::metrics::COUNTERS.egress_refused);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        respond(
                            &mut io,
                            "503 Service Unavailable",
                            "out of file descriptors",
                        ),
                    )
                    .await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                count(&crate::host::metrics::COUNTERS.egress_refused);
                warn!(proxy = self.name, client = %peer, decision = "refuse", reason = "connection limit", "egress");
                // Answered here rather than in a task: a fresh socket takes the short answer
                // at once, and a burst of refusals then holds one descriptor at a time, not
                // one each (which would starve the tunnels' own connects).
                let _ = tokio::time::timeout(
                    REFUSE_TIMEOUT,
                    respond(&mut io, "503 Service Unavailable", "too many connections"),
                )
                .await;
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.handle(io, &peer).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, mut io: BoxIo, peer: &str) {
        let started = Instant::now();
        let head = match tokio::time::timeout(
            self.limits.head_timeout,
            read_head(&mut io, self.limits.max_head),
        )
        .await
        {
            Err(_) => {
                warn!(proxy = self.name, client = %peer, decision = "refuse", reason = "request head too slow", "egress");
                return respond(
                    &mut io,
                    "408 Request Timeout",
                    "the request head took too long",
                )
                .await;
            }
            Ok(Err(HeadError::TooLarge(_))) => {
                warn!(proxy = self.name, client = %peer, decision = "refuse", reason = "request head too large", "egress");
                return respond(
                    &mut io,
                    "431 Request Header Fields Too Large",
                    "request head over the limit",
                )
                .await;
            }
            Ok(Err(_)) => return,
            Ok(Ok(h)) => h,
        };
        let Head { head, rest: early } = head;
        let target = match parse_request(&head) {
            Ok(t) => t,
            Err(e) => {
                warn!(proxy = self.name, client = %peer, decision = "refuse", reason = %e, "egress");
                return respond(&mut io, "400 Bad Request", &e).await;
            }
        };
        let tgt = format!("{}:{}", target.host, target.port);
        match self.allow.check(&target.host, target.port) {
            Decision::Deny(why) => {
                count(&crate::host::metrics::COUNTERS.egress_denied);
                warn!(proxy = self.name, client = %peer, target = %tgt, decision = "deny", reason = %why, "egress");
                return respond(
                    &mut io,
                    "403 Forbidden",
                    &format!("egress to {tgt} denied: {why}"),
                )
                .await;
            }
            Decision::Allow(why) => {
                count(&crate::host::metrics::COUNTERS.egress_allowed);
                info!(proxy = self.name, client = %peer, target = %tgt, decision = "allow", reason = %why, "egress")
            }
        }
        let dial = tokio::time::timeout(
            self.limits.connect_timeout,
            self.dialer.connect(&target.host, target.port),
        )
        .await;
        let mut up = match dial {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(proxy = self.name, client = %peer, target = %tgt, error = %e, "egress connect failed");
                return respond(
                    &mut io,
                    "502 Bad Gateway",
                    &format!("connecting to {tgt}: {e}"),
                )
                .await;
            }
            Err(_) => {
                return respond(
                    &mut io,
                    "504 Gateway Timeout",
                    &format!("connecting to {tgt} timed out"),
                )
                .await
            }
        };
        let sent = match &target.forward {
            None => {
                io.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
            }
            Some(fwd) => up.write_all(fwd).await,
        };
        if sent.is_err() {
            return;
        }
        if !early.is_empty() && up.write_all(&early).await.is_err() {
            return;
        }
        match splice(io, up, self.limits.idle_timeout, self.limits.max_lifetime).await {
            Ok(m) => {
                let c = &crate::host::metrics::COUNTERS;
                c.egress_bytes_up.fetch_add(
                    m.a_to_b + early.len() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                c.egress_bytes_down
                    .fetch_add(m.b_to_a, std::sync::atomic::Ordering::Relaxed);
                info!(proxy = self.name, client = %peer, target = %tgt, up = m.a_to_b + early.len() as u64, down = m.b_to_a, secs = started.elapsed().as_secs_f32(), "egress closed")
            }
            Err(e) => {
                info!(proxy = self.name, client = %peer, target = %tgt, error = %e, secs = started.elapsed().as_secs_f32(), "egress ended")
            }
        }
    }
}
