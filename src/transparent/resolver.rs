//! The workload's resolver, on UDP and TCP port 53 of its namespace's loopback: a name the
//! allowlist has gets an address from [`Names`], any other NXDOMAIN; every answer is logged
//! with the name. Queries are rate-limited (all clients together) before they are read.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::dns::{self, Rcode, MAX_QUERY};
use super::names::Names;
use crate::relay::allow::Allowlist;

/// TCP clients served at once.
pub const MAX_TCP_CLIENTS: usize = 16;
/// A TCP client sending nothing for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// The resolver's state, shared by its UDP and TCP loops.
pub struct Resolver {
    /// Which names are answered.
    pub allow: Arc<Allowlist>,
    /// The addresses handed out.
    pub names: Arc<Names>,
    rate: Mutex<Bucket>,
}

/// A token bucket: `per_sec` queries a second, as many in a burst.
struct Bucket {
    per_sec: f64,
    tokens: f64,
    last: Instant,
    dropped: u64,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.per_sec);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

impl Resolver {
    /// A resolver for `allow`, answering at most `per_sec` queries a second.
    pub fn new(allow: Arc<Allowlist>, names: Arc<Names>, per_sec: u32) -> Resolver {
        let per_sec = f64::from(per_sec.max(1));
        Resolver {
            allow,
            names,
            rate: Mutex::new(Bucket {
                per_sec,
                tokens: per_sec,
                last: Instant::now(),
                dropped: 0,
            }),
        }
    }

    /// Whether the rate allows one more query; past it, the first refusal of each hundred
    /// is logged.
    fn admit(&self) -> bool {
        let mut b = self.rate.lock().unwrap_or_else(|p| p.into_inner());
        let ok = b.take();
        if !ok && b.dropped % 100 == 1 {
            warn!(
                dropped = b.dropped,
                per_sec = b.per_sec,
                "dns: over the query rate; refusing"
            );
        }
        ok
    }

    /// The answer to one query, or nothing for one that must not be answered.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let q = match dns::parse(query) {
            Ok(q) => q,
            Err(e) => {
                warn!(rcode = ?e.rcode, "dns: an unreadable query");
                return e.id.map(|id| dns::refusal(id, e.rcode));
            }
        };
        if !self.admit() {
            return Some(q.answer(Rcode::Refused, None));
        }
        let Some(name) = q.name.clone().filter(|_| q.is_in()) else {
            warn!(
                qtype = q.qtype,
                "dns: a name that is not a host name, or not class IN: NXDOMAIN"
            );
            return Some(q.answer(Rcode::NxDomain, None));
        };
        if !self.allow.names(&name) {
            warn!(name = %name, qtype = q.qtype, decision = "deny", "dns: not on the allowlist: NXDOMAIN");
            return Some(q.answer(Rcode::NxDomain, None));
        }
        if !q.wants_a() {
            // AAAA and the rest: the name exists, with no record of that type, so clients
            // go on to A.
            return Some(q.answer(Rcode::NoError, None));
        }
        let addr: Option<Ipv4Addr> = self.names.address_of(&name);
        match addr {
            Some(a) => {
                info!(name = %name, address = %a, decision = "allow", "dns: answered");
                Some(q.answer(Rcode::NoError, Some(a)))
            }
            None => {
                warn!(name = %name, names = self.names.len(), "dns: no address left to hand out: SERVFAIL");
                Some(q.answer(Rcode::ServFail, None))
            }
        }
    }

    /// Answers UDP queries until the socket fails.
    pub async fn serve_udp(self: Arc<Self>, sock: UdpSocket) {
        let mut buf = vec![0u8; MAX_QUERY + 1];
        loop {
            let (n, peer) = match sock.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "dns: receiving a query");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Some(a) = self.answer(buf.get(..n).unwrap_or(&[])) {
                let _ = sock.send_to(&a, peer).await;
            }
        }
    }

    /// Answers queries over TCP (each framed by its 2-byte length), a few clients at once.
    pub async fn serve_tcp(self: Arc<Self>, l: TcpListener) {
        let permits = Arc::new(Semaphore::new(MAX_TCP_CLIENTS));
        loop {
            let (mut s, _) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "dns: accepting a TCP client");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                warn!("dns: too many TCP clients; closing one");
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                loop {
                    let mut len = [0u8; 2];
                    match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut len)).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                    let n = usize::from(u16::from_be_bytes(len));
                    if n > MAX_QUERY {
                        return;
                    }
                    let mut q = vec![0u8; n];
                    match tokio::time::timeout(TCP_IDLE, s.read_exact(&mut q)).await {
                        Ok(Ok(_)) => {}
                        _ => return,
                    }
                    let Some(a) = me.answer(&q) else { return };
                    let Ok(alen) = u16::try_from(a.len()) else {
                        return;
                    };
                    let mut out = alen.to_be_bytes().to_vec();
                    out.extend_from_slice(&a);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
}
