//! The workload's TCP connections out. Each allowlisted port has a listener on every address
//! of the namespace; the ranges routed to `lo` (the resolver's and the allowlist's literals
//! and blocks) make a connection to any address of them land there, and the accepted
//! socket's own address is where the workload meant to go. An address the resolver handed
//! out is mapped back to its name, and the name (or the literal address) is checked against
//! the allowlist on that port and carried to the egress dialer (the parent's proxy, as
//! `CONNECT name:port`). Anything else is reset at once and logged.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::names::{is_fake, Names};
use super::Limits;
use crate::relay::allow::{Allowlist, Decision};
use crate::relay::splice::splice;
use crate::transport::Connector;

/// What the listeners share.
pub struct Intercept {
    /// The measured allowlist.
    pub allow: Arc<Allowlist>,
    /// The resolver's addresses.
    pub names: Arc<Names>,
    /// How an allowed connection leaves.
    pub dialer: Arc<dyn Connector>,
    /// Bounds.
    pub limits: Limits,
    /// One permit per connection open.
    pub permits: Arc<Semaphore>,
}

/// Closes `s` with a reset, which the workload sees as ECONNRESET at once.
fn reset(s: TcpStream) {
    use std::os::fd::AsFd;
    let _ = nix::sys::socket::setsockopt(
        &s.as_fd(),
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(s);
}

/// Where a connection to `dst` goes: the name (or literal) and why, or why not.
pub fn target(
    allow: &Allowlist,
    names: &Names,
    dst: SocketAddr,
) -> Result<(String, String), String> {
    let port = dst.port();
    let host = match dst.ip() {
        IpAddr::V4(a) if is_fake(a) => names
            .name_of(a)
            .ok_or_else(|| format!("{dst}: an address the resolver never handed out"))?,
        ip if ip.is_loopback() => return Err(format!("{dst}: loopback, not egress")),
        ip => ip.to_string(),
    };
    match allow.check(&host, port) {
        Decision::Allow(why) => Ok((host, why)),
        Decision::Deny(why) => Err(why),
    }
}

impl Intercept {
    /// Accepts on `l` until it fails.
    pub async fn serve(self: Arc<Self>, l: TcpListener) {
        loop {
            let (s, peer) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "egress: accepting a workload connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let dst = match s.local_addr() {
                Ok(d) => d,
                Err(_) => continue,
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                crate::host::metrics::inc(&crate::host::metrics::COUNTERS.egress_refused);
                warn!(client = %peer, destination = %dst, decision = "refuse", reason = "connection limit", max = self.limits.max_connections, "egress");
                reset(s);
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                me.handle(s, peer, dst).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, s: TcpStream, peer: SocketAddr, dst: SocketAddr) {
        let started = Instant::now();
        let port = dst.port();
        let (host, why) = match target(&self.allow, &self.names, dst) {
            Ok(t) => t,
            Err(why) => {
                crate::host::metrics::inc(&crate::host::metrics::COUNTERS.egress_denied);
                warn!(client = %peer, destination = %dst, decision = "deny", reason = %why, "egress");
                return reset(s);
            }
        };
        crate::host::metrics::inc(&crate::host::metrics::COUNTERS.egress_allowed);
        info!(client = %peer, destination = %dst, target = %format!("{host}:{port}"), decision = "allow", reason = %why, "egress");
        let _ = s.set_nodelay(true);
        let up = match tokio::time::timeout(
            self.limits.connect_timeout,
            self.dialer.connect(&host, port),
        )
        .await
        {
            Ok(Ok(up)) => up,
            Ok(Err(e)) => {
                warn!(client = %peer, target = %format!("{host}:{port}"), error = %e, "egress connect failed");
                return reset(s);
            }
            Err(_) => {
                warn!(client = %peer, target = %format!("{host}:{port}"), "egress connect timed out");
                return reset(s);
            }
        };
        match splice(s, up, self.limits.idle_timeout, self.limits.max_lifetime).await {
            Ok(m) => {
                info!(client = %peer, target = %format!("{host}:{port}"), up = m.a_to_b, down = m.b_to_a, secs = started.elapsed().as_secs_f32(), "egress closed")
            }
            Err(e) => {
                info!(client = %peer, target = %format!("{host}:{port}"), error = %e, secs = started.elapsed().as_secs_f32(), "egress ended")
            }
        }
    }
}

/// Carries connections to `l` (inside the namespace) to `to` (a loopback service of cidboot
/// outside it: the attestation API, the KMS proxy, the CONNECT proxy), at most `max` at once.
pub async fn mirror(l: TcpListener, to: SocketAddr, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (s, _) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, service = %to, "egress: accepting for a loopback service");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            reset(s);
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Ok(up) = TcpStream::connect(to).await {
                let _ = splice(s, up, limits.idle_timeout, limits.max_lifetime).await;
            }
        });
    }
}
