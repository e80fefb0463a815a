//! The boot configuration service: the parent hands the enclave its runtime configuration and
//! its sealed secrets. The enclave measures exactly the configuration it receives; the secrets
//! file is not measured (each ciphertext opens only in the attested enclave, under its own
//! name).
//!
//! One frame per connection, parent to enclave, then the parent closes:
//!
//! ```text
//! VERSION (1 byte, 2) || config length (u32 BE) || config || secrets length (u32 BE) || secrets
//! ```
//!
//! A length of 0 means none: no configuration (an enclave with one baked in asks only for its
//! secrets), or no secrets file. The parent and the enclave come from the same release; the
//! first byte of the earlier format (a bare length, at most 256 KiB) is always 0, so an
//! enclave reading it from an older parent says so instead of misreading it.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::config::MAX_CONFIG_SIZE;
use crate::kms::sealed::MAX_SECRETS_FILE;
use crate::transport::addr::{Addr, Listener};

/// The frame's first byte: its format.
pub const VERSION: u8 = 2;
/// Time to hand one enclave its configuration.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Boot configurations served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// One file served, as read at start or at the last SIGHUP.
#[derive(Debug, Clone)]
pub struct Part {
    /// The file it was read from, for the log.
    pub path: PathBuf,
    /// The bytes served, exactly as read (the enclave measures a configuration's).
    pub bytes: Arc<Vec<u8>>,
    /// `sha256:<hex>` of the bytes: for a configuration, the value `cidboot expect --config`
    /// computes.
    pub sha256: String,
}

impl Part {
    /// Computes the digest of `bytes`, once, for the log and for comparing with `cidboot expect`.
    pub fn new(path: PathBuf, bytes: Vec<u8>) -> Part {
        let sha256 = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Part {
            path,
            bytes: Arc::new(bytes),
            sha256,
        }
    }
}

/// What one enclave is handed: its configuration and its secrets file, each optional.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// The runtime configuration.
    pub config: Option<Part>,
    /// The secrets file (not measured).
    pub secrets: Option<Part>,
}

impl Served {
    /// The frame this enclave is sent (see the module documentation).
    pub fn frame(&self) -> Vec<u8> {
        let empty = Vec::new();
        let config = self.config.as_ref().map_or(&empty, |p| &*p.bytes);
        let secrets = self.secrets.as_ref().map_or(&empty, |p| &*p.bytes);
        let mut f = Vec::with_capacity(9 + config.len() + secrets.len());
        f.push(VERSION);
        // Both are capped far below 4 GiB when read (MAX_CONFIG_SIZE, MAX_SECRETS_FILE).
        for part in [config, secrets] {
            f.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            f.extend_from_slice(part);
        }
        f
    }
}

/// The configurations a parent serves: one per enclave CID, and one for every other enclave.
#[derive(Debug, Clone, Default)]
pub struct BootConfigs {
    /// For an enclave `by_cid` does not name, or a peer with no CID.
    pub default: Option<Served>,
    /// Per enclave vsock CID, from `[boot.enclaves]`: the entry wins whole (its secrets go
    /// with its configuration, never the default's).
    pub by_cid: BTreeMap<u32, Served>,
}

impl BootConfigs {
    /// What the enclave at `cid` is served (the default over unix or tcp).
    pub fn for_peer(&self, cid: Option<u32>) -> Option<&Served> {
        cid.and_then(|c| self.by_cid.get(&c))
            .or(self.default.as_ref())
    }
}

/// The CID of a peer printed as `vsock:CID:PORT`.
pub fn vsock_cid(peer: &str) -> Option<u32> {
    peer.strip_prefix("vsock:")?.split(':').next()?.parse().ok()
}

/// Serves each enclave its configuration and secrets; `configs` is replaced on SIGHUP.
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
        let Some(served) = current.for_peer(cid).cloned() else {
            warn!(client = %peer, "no boot configuration for this enclave (none for its CID, and no [boot] config)");
            continue;
        };
        tokio::spawn(async move {
            let _permit = permit;
            let frame = served.frame();
            let r = tokio::time::timeout(SERVE_TIMEOUT, async {
                io.write_all(&frame).await?;
                io.shutdown().await
            })
            .await;
            let none = || "-".to_string();
            let file = served
                .config
                .as_ref()
                .map_or_else(none, |p| p.path.display().to_string());
            let sha256 = served
                .config
                .as_ref()
                .map_or_else(none, |p| p.sha256.clone());
            let secrets = served
                .secrets
                .as_ref()
                .map_or_else(none, |p| p.path.display().to_string());
            match r {
                Ok(Ok(())) => {
                    info!(client = %peer, file = %file, bytes = frame.len(), sha256 = %sha256, secrets = %secrets, "boot configuration served")
                }
                Ok(Err(e)) => {
                    warn!(client = %peer, error = %e, "serving the boot configuration failed")
                }
                Err(_) => warn!(client = %peer, "serving the boot configuration timed out"),
            }
        });
    }
}

/// What the parent handed over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// The runtime configuration, exactly as sent (none: the parent serves none).
    pub config: Option<Vec<u8>>,
    /// The secrets file, exactly as sent (none: no secrets).
    pub secrets: Option<Vec<u8>>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Fetches the configuration and the secrets from the parent, within `timeout`.
pub async fn fetch(addr: &Addr, timeout: Duration) -> io::Result<Received> {
    tokio::time::timeout(timeout, async {
        let mut io = addr.connect().await?;
        let version = io.read_u8().await?;
        if version != VERSION {
            return Err(invalid(format!(
                "the parent's boot service speaks another format (first byte {version}, not {VERSION}): run the parent's `cidboot host` from the same release as the enclave's cidboot"
            )));
        }
        let mut part = async |what: &str, max: usize| -> io::Result<Option<Vec<u8>>> {
            let len = io.read_u32().await? as usize;
            if len > max {
                return Err(invalid(format!("{what} of {len} bytes (at most {max})")));
            }
            let mut buf = vec![0u8; len];
            io.read_exact(&mut buf).await?;
            Ok((len > 0).then_some(buf))
        };
        let config = part("a configuration", MAX_CONFIG_SIZE).await?;
        let secrets = part("a secrets file", MAX_SECRETS_FILE).await?;
        Ok(Received { config, secrets })
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

    fn served(config: &[u8], secrets: Option<&[u8]>) -> Served {
        Served {
            config: Some(Part::new("c.toml".into(), config.to_vec())),
            secrets: secrets.map(|s| Part::new("s.toml".into(), s.to_vec())),
        }
    }

    #[test]
    fn an_enclave_gets_its_own_configuration_or_the_default() {
        let mut c = BootConfigs {
            default: Some(served(b"d", Some(b"ds"))),
            ..Default::default()
        };
        c.by_cid.insert(16, served(b"sixteen", None));
        let got = |c: &BootConfigs, peer: &str| {
            c.for_peer(vsock_cid(peer))
                .map(|s| s.config.as_ref().unwrap().bytes.to_vec())
        };
        assert_eq!(got(&c, "vsock:16:1023"), Some(b"sixteen".to_vec()));
        assert!(
            c.for_peer(Some(16)).unwrap().secrets.is_none(),
            "an enclave's own entry wins whole: not the default's secrets"
        );
        assert_eq!(got(&c, "vsock:17:1023"), Some(b"d".to_vec()));
        assert_eq!(got(&c, "unix:/run/boot.sock"), Some(b"d".to_vec()));
        c.default = None;
        assert_eq!(got(&c, "vsock:17:1023"), None);
        assert_eq!(
            c.by_cid[&16].config.as_ref().unwrap().sha256,
            format!("sha256:{}", hex::encode(Sha256::digest(b"sixteen")))
        );
    }

    #[tokio::test]
    async fn the_frame_carries_both_parts_and_an_older_parent_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("boot.sock");
        let addr: Addr = format!("unix:{}", sock.display()).parse().unwrap();
        let l = addr.bind().await.unwrap();
        let frames = [
            served(b"image = 1", Some(b"[[secrets]]")).frame(),
            Served::default().frame(),
            // The earlier format: a bare length.
            [&9u32.to_be_bytes()[..], b"image = 1"].concat(),
            vec![VERSION, 0, 0x10, 0, 0],
        ];
        let sent = frames.clone();
        tokio::spawn(async move {
            for f in sent {
                let (mut io, _) = l.accept_retrying("test").await;
                io.write_all(&f).await.unwrap();
                io.shutdown().await.unwrap();
            }
        });
        let t = Duration::from_secs(5);
        assert_eq!(
            fetch(&addr, t).await.unwrap(),
            Received {
                config: Some(b"image = 1".to_vec()),
                secrets: Some(b"[[secrets]]".to_vec())
            }
        );
        assert_eq!(fetch(&addr, t).await.unwrap(), Received::default());
        let e = fetch(&addr, t).await.unwrap_err().to_string();
        assert!(e.contains("same release"), "{e}");
        let e = fetch(&addr, t).await.unwrap_err().to_string();
        assert!(e.contains("at most 262144"), "{e}");
    }
}
