//! `cidboot host`: the daemon on the parent instance. It runs the egress proxy, the boot
//! configuration service, the log and status sink, ingress forwarders and, for emulated
//! enclaves, the heartbeat responder.

pub mod cache;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Loaded;
use crate::relay::allow::Allowlist;
use crate::relay::forward::{self, ForwardLimits};
use crate::relay::proxy::{Proxy, ProxyLimits};
use crate::relay::{bootcfg, logs};
use crate::transport::addr::{Addr, Listener};

/// The byte a Nitro enclave sends its parent once booted, and gets back.
pub const HEARTBEAT: u8 = 0xB7;
/// The vsock ports on the parent that an enclave uses by default.
pub const EGRESS_PORT: u32 = 8000;
pub const BOOT_PORT: u32 = 8001;
pub const LOGS_PORT: u32 = 8002;
pub const HEARTBEAT_PORT: u32 = 9000;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("host configuration {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{service}: binding {addr}: {source}")]
    Bind {
        service: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{service} stopped: {reason}")]
    Stopped {
        service: &'static str,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub egress: Option<Egress>,
    pub boot: Option<Boot>,
    pub logs: Option<Logs>,
    #[serde(default)]
    pub ingress: Vec<Ingress>,
    pub heartbeat: Option<Heartbeat>,
    /// A verified block cache served to the enclave as a trustless gateway (see cache.rs).
    pub cache: Option<cache::CacheConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    pub listen: Addr,
    /// `host:port` patterns; everything else is denied.
    pub allow: Vec<String>,
    pub max_connections: Option<usize>,
    pub max_head_bytes: Option<usize>,
    pub head_timeout_secs: Option<u64>,
    pub connect_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub max_lifetime_secs: Option<u64>,
    /// Let an allowed name that resolves to a loopback, private, link-local (the instance
    /// metadata service) or unique-local address be connected to. Off: an enclave's egress
    /// must not be steered into the parent's own network by a name's DNS.
    #[serde(default)]
    pub allow_private_destinations: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    pub listen: Addr,
    /// The enclave's runtime configuration (TOML), served byte for byte.
    pub config: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    pub listen: Addr,
    /// Also append every record here.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    pub listen: Addr,
    pub target: Addr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub listen: Addr,
}

impl Egress {
    pub fn limits(&self) -> ProxyLimits {
        let d = ProxyLimits::default();
        let secs = |v: Option<u64>, d: Duration| v.map(Duration::from_secs).unwrap_or(d);
        ProxyLimits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_head: self.max_head_bytes.unwrap_or(d.max_head),
            head_timeout: secs(self.head_timeout_secs, d.head_timeout),
            connect_timeout: secs(self.connect_timeout_secs, d.connect_timeout),
            idle_timeout: secs(self.idle_timeout_secs, d.idle_timeout),
            max_lifetime: secs(self.max_lifetime_secs, d.max_lifetime),
        }
    }
}

/// Reads and checks a host configuration, including the enclave configuration it serves.
pub fn load(path: &Path) -> Result<(HostConfig, Option<Vec<u8>>), HostError> {
    let bad = |reason: String| HostError::Config {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let cfg = parse(&text, &path.display().to_string())?;
    let boot = match &cfg.boot {
        Some(b) => {
            let loaded = Loaded::load(&b.config).map_err(|e| bad(format!("boot.config: {e}")))?;
            Some(loaded.bytes)
        }
        None => None,
    };
    Ok((cfg, boot))
}

/// Parses and checks the text of a host configuration (`origin` names it in errors):
/// everything [`load`] checks except the enclave configuration that `boot.config` names.
pub fn parse(text: &str, origin: &str) -> Result<HostConfig, HostError> {
    let bad = |reason: String| HostError::Config {
        path: origin.to_string(),
        reason,
    };
    let cfg: HostConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    if cfg.egress.is_none()
        && cfg.boot.is_none()
        && cfg.logs.is_none()
        && cfg.ingress.is_empty()
        && cfg.heartbeat.is_none()
        && cfg.cache.is_none()
    {
        return Err(bad(
            "no service configured ([egress], [boot], [logs], [[ingress]] or [heartbeat])".into(),
        ));
    }
    if let Some(c) = &cfg.cache {
        c.check().map_err(|e| bad(e.to_string()))?;
    }
    if let Some(e) = &cfg.egress {
        Allowlist::new(&e.allow).map_err(|e| bad(e.to_string()))?;
        if e.limits().max_connections == 0 {
            return Err(bad("egress.max_connections must be at least 1".into()));
        }
    }
    Ok(cfg)
}

async fn bind(service: &'static str, addr: &Addr) -> Result<Listener, HostError> {
    let l = addr.bind().await.map_err(|source| HostError::Bind {
        service,
        addr: addr.to_string(),
        source,
    })?;
    let local = l
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    info!("{service} listening on {local}");
    Ok(l)
}

async fn heartbeat(listener: Listener) {
    loop {
        let Ok((mut io, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let b = io.read_u8().await?;
                if b != HEARTBEAT {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("heartbeat byte 0x{b:02x}"),
                    ));
                }
                io.write_all(&[HEARTBEAT]).await
            })
            .await;
            match r {
                Ok(Ok(())) => info!(client = %peer, "enclave heartbeat"),
                Ok(Err(e)) => warn!(client = %peer, error = %e, "bad heartbeat"),
                Err(_) => warn!(client = %peer, "heartbeat timed out"),
            }
        });
    }
}

/// Runs every configured service until one of them fails.
pub async fn run(cfg: HostConfig, boot_config: Option<Vec<u8>>) -> Result<(), HostError> {
    let mut set: JoinSet<Result<(), HostError>> = JoinSet::new();
    if let Some(e) = &cfg.egress {
        let l = bind("egress proxy", &e.listen).await?;
        let allow = Allowlist::new(&e.allow).map_err(|err| HostError::Stopped {
            service: "egress proxy",
            reason: err.to_string(),
        })?;
        let proxy = Arc::new(Proxy {
            name: "parent",
            allow,
            limits: e.limits(),
            dialer: Arc::new(crate::transport::GuardedTcp {
                allow_private: e.allow_private_destinations,
            }),
        });
        set.spawn(async move {
            proxy.serve(l).await;
            Ok(())
        });
    }
    if let (Some(b), Some(bytes)) = (&cfg.boot, boot_config) {
        let l = bind("boot configuration", &b.listen).await?;
        set.spawn(async move {
            bootcfg::serve(l, Arc::new(bytes)).await;
            Ok(())
        });
    }
    if let Some(lg) = &cfg.logs {
        let l = bind("log sink", &lg.listen).await?;
        let file = lg.file.clone();
        set.spawn(async move {
            logs::sink(l, file.as_deref())
                .await
                .map_err(|e| HostError::Stopped {
                    service: "log sink",
                    reason: e.to_string(),
                })
        });
    }
    for ing in &cfg.ingress {
        let l = bind("ingress", &ing.listen).await?;
        info!(from = %ing.listen, to = %ing.target, "ingress forwarding");
        let target = ing.target.clone();
        set.spawn(async move {
            forward::forward(l, target, ForwardLimits::default()).await;
            Ok(())
        });
    }
    if let Some(h) = &cfg.heartbeat {
        let l = bind("heartbeat", &h.listen).await?;
        set.spawn(async move {
            heartbeat(l).await;
            Ok(())
        });
    }
    if let Some(c) = cfg.cache.clone() {
        let l = bind("gateway cache", &c.listen).await?;
        set.spawn(async move {
            cache::run(c, l).await.map_err(|e| HostError::Stopped {
                service: "gateway cache",
                reason: e.to_string(),
            })
        });
    }
    info!("cidboot host ready");
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => {
                return Err(HostError::Stopped {
                    service: "a service",
                    reason: e.to_string(),
                })
            }
        }
    }
    Ok(())
}
