//! Port forwarding: ingress from a host TCP port to an enclave vsock port, and inside the
//! enclave from that vsock port to 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::splice::splice;
use crate::transport::addr::{Addr, Listener};
use crate::transport::{BoxIo, Connector};

/// Bounds on one forwarder's connections, so that clients cannot exhaust the parent or the enclave.
#[derive(Debug, Clone)]
pub struct ForwardLimits {
    /// Connections forwarded at once; more are closed on accept (default 512).
    pub max_connections: usize,
    /// Time allowed to connect to the target (default 10 s).
    pub connect_timeout: Duration,
    /// A connection with no bytes either way for this long is closed (default 10 min).
    pub idle_timeout: Duration,
    /// A connection is closed this long after it opened, busy or not (default 24 h).
    pub max_lifetime: Duration,
}

impl Default for ForwardLimits {
    fn default() -> Self {
        ForwardLimits {
            max_connections: 512,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Accepts on `listener` and connects each connection to `target`.
pub async fn forward(listener: Listener, target: Addr, limits: ForwardLimits) {
    forward_with(listener, None, target, limits).await
}

/// [`forward`] to a TCP `target` reached through `via` (inside the workload's network
/// namespace, under transparent egress).
pub async fn forward_via(
    listener: Listener,
    via: Arc<dyn Connector>,
    target: Addr,
    limits: ForwardLimits,
) {
    forward_with(listener, Some(via), target, limits).await
}

async fn connect(via: Option<&Arc<dyn Connector>>, target: &Addr) -> std::io::Result<BoxIo> {
    match (via, target) {
        (Some(c), Addr::Tcp { host, port }) => c.connect(host, *port).await,
        _ => target.connect().await,
    }
}

async fn forward_with(
    listener: Listener,
    via: Option<Arc<dyn Connector>>,
    target: Addr,
    limits: ForwardLimits,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let target = Arc::new(target);
    loop {
        let (io, peer) = listener.accept_retrying("ingress").await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(client = %peer, "ingress connection limit reached; closing");
            continue;
        };
        let (target, limits, via) = (target.clone(), limits.clone(), via.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let up = match tokio::time::timeout(
                limits.connect_timeout,
                connect(via.as_ref(), &target),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return warn!(client = %peer, target = %target, error = %e, "ingress connect failed")
                }
                Err(_) => {
                    return warn!(client = %peer, target = %target, "ingress connect timed out")
                }
            };
            debug!(client = %peer, target = %target, "ingress connected");
            match splice(io, up, limits.idle_timeout, limits.max_lifetime).await {
                Ok(m) => {
                    info!(client = %peer, target = %target, up = m.a_to_b, down = m.b_to_a, "ingress closed")
                }
                Err(e) => info!(client = %peer, target = %target, error = %e, "ingress ended"),
            }
        });
    }
}
