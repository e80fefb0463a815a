//! The boot configuration service: the parent hands the enclave its runtime configuration as
//! `length (4 bytes, big-endian) || bytes`. The enclave measures exactly what it receives.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::MAX_CONFIG_SIZE;
use crate::transport::addr::{Addr, Listener};

/// Time to hand one enclave its configuration.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Boot configurations served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// One configuration, as read at start or at the last SIGHUP.
#[derive(Debug, Clone)]
pub struct Served {
    /// The file it was read from, for the log.
    pub path: PathBuf,
    /// The bytes served, exactly as read: the enclave measures them.
    pub bytes: Arc<Vec<u8>>,
    /// `sha256:<hex>` of the bytes: the value `cidboot expect --config` computes.
    pub sha256: String,
}

impl Served {
    /// Computes the digest of `bytes`, once, for the log and for comparing with `cidboot expect`.
    pub fn new(path: PathBuf, bytes: Vec<u8>) -> Served {
        let sha256 = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Served {
            path,
            bytes: Arc::new(bytes),
            sha256,
        }
    }
}

/// The configurations a parent serves: one per enclave CID, and one for every other enclave.
#[derive(Debug, Clone, Default)]
pub struct BootConfigs {
    /// For an enclave `by_cid` does not name, or a peer with no CID.
    pub default: Option<Served>,
    /// Per enclave vsock CID, from `[boot.enclaves]`.
    pub by_cid: BTreeMap<u32, Served>,
}

impl BootConfigs {
    /// The configuration for the enclave at `cid` (none over unix or tcp).
    pub fn for_peer(&self, cid: Option<u32>) -> Option<&Served> {
        cid.and_then(|c| self.by_cid.get(&c))
            .or(self.default.as_ref())
    }
}

/// The CID of a peer printed as `vsock:CID:PORT`.
pub fn vsock_cid(peer: &str) -> Option<u32> {
    peer.strip_prefix("vsock:")?.split(':').next()?.parse().ok()
}

/// Serves each enclave its configuration; `configs` is replaced on SIGHUP.
pub async fn serve(listener: Listener, configs: Arc<RwLock<Arc<BootConfigs>>>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut io, peer) = listener.accept_retrying("boot config").await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(client = %peer, "boot configuration: {MAX_CONNECTIONS} connections already; closing this one");
            continue;
        };
        let current = match configs.read() {
            Ok(c) => c.clone(),
            Err(_) => continue,
        };
        let cid = vsock_cid(&peer);
        let Some(config) = current.for_peer(cid).cloned() else {
            warn!(client = %peer, "no boot configuration for this enclave (none for its CID, and no [boot] config)");
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            // A boot configuration is at most MAX_CONFIG bytes, far below 4 GiB.
            let mut frame = u32::try_from(config.bytes.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes()
                .to_vec();
            frame.extend_from_slice(&config.bytes);
            let r = tokio::time::timeout(SERVE_TIMEOUT, async {
                io.write_all(&frame).await?;
                io.shutdown().await
            })
            .await;
            match r {
                Ok(Ok(())) => {
                    info!(client = %peer, file = %config.path.display(), bytes = config.bytes.len(), sha256 = %config.sha256, "boot configuration served")
                }
                Ok(Err(e)) => {
                    warn!(client = %peer, error = %e, "serving the boot configuration failed")
                }
                Err(_) => warn!(client = %peer, "serving the boot configuration timed out"),
            }
        });
    }
}

/// Fetches the configuration from the parent.
pub async fn fetch(addr: &Addr, timeout: Duration) -> io::Result<Vec<u8>> {
    tokio::time::timeout(timeout, async {
        let mut io = addr.connect().await?;
        let len = io.read_u32().await? as usize;
        if len > MAX_CONFIG_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a configuration of {len} bytes (at most {MAX_CONFIG_SIZE})"),
            ));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no boot configuration from {addr} within {}s",
                timeout.as_secs()
            ),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_enclave_gets_its_own_configuration_or_the_default() {
        let mut c = BootConfigs {
            default: Some(Served::new("d.toml".into(), b"d".to_vec())),
            ..Default::default()
        };
        c.by_cid
            .insert(16, Served::new("16.toml".into(), b"sixteen".to_vec()));
        let got =
            |c: &BootConfigs, peer: &str| c.for_peer(vsock_cid(peer)).map(|s| s.bytes.to_vec());
        assert_eq!(got(&c, "vsock:16:1023"), Some(b"sixteen".to_vec()));
        assert_eq!(got(&c, "vsock:17:1023"), Some(b"d".to_vec()));
        assert_eq!(got(&c, "unix:/run/boot.sock"), Some(b"d".to_vec()));
        c.default = None;
        assert_eq!(got(&c, "vsock:17:1023"), None);
        assert_eq!(
            c.by_cid[&16].sha256,
            format!("sha256:{}", hex::encode(Sha256::digest(b"sixteen")))
        );
    }
}
