//! `[cache]` of `cidboot host`: a verified block cache on the parent, served to the enclave as
//! a trustless gateway.
//!
//! It fetches from its own upstream gateways with cidboot's verifying client, stores each
//! verified block on the parent's disk under its CID (a size cap, least recently used out),
//! and checks every block again against its CID each time it reads one back: a corrupted
//! entry is dropped and fetched again. The cache is still untrusted from the enclave's side,
//! which verifies every block it receives exactly as from any public gateway.
//!
//! It answers the requests cidboot's client makes: `format=raw` blocks, and `format=car`
//! with `dag-scope=block` or `dag-scope=entity` (a file, optionally `entity-bytes`), plus
//! the identity-CID probe. Paths are not served.
//!
//! It runs in the daemon beside the log sink and the egress proxy, so it must never take them
//! down: its directory is its own and it removes nothing else ([`store`]); what it holds in
//! memory is bounded before it is spent, per connection and for all responses together
//! ([`serve`], [`budget`]), whatever the DAGs and the clients do; and a cache that fails stops
//! alone.

mod budget;
mod serve;
mod store;

pub use budget::{BUDGET_WAIT, RESPONSE_MEMORY};
pub use serve::{PIECE, WRITE_STALL_TIMEOUT};
pub use store::{check_dir, MAX_CACHED_BLOCKS, TAG};

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cid::Cid;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::fetch::walk::{too_wide, MAX_PENDING_LINKS};
use crate::fetch::{FetchError, GatewayPolicy, Gateways};
use crate::reference::{VerifiedBlock, CODEC_DAG_PB};
use crate::transport::addr::{Addr, Listener};
use crate::transport::http::{HttpClient, Timeouts};

/// Default cap on the blocks kept on disk.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks fetched from upstream at once for one response (made sure of ahead of the walk) or
/// one prefetch.
pub const FETCH_CONCURRENCY: usize = 8;
/// Upstream requests in flight at once, for all clients together: many enclave connections
/// missing at once must not become a flood on the public gateways.
pub const UPSTREAM_CONCURRENCY: usize = 16;
/// Blocks one CAR response may carry, and one prefetch may visit (a block linked many times
/// counts each time).
pub const MAX_BLOCKS: usize = 4 << 20;
/// Deepest DAG a prefetch follows (directories, then a file's DAG).
pub const MAX_PREFETCH_DEPTH: usize = 64;
/// The bytes of cache per block a response fetches ahead of the one it sends: with a cache
/// smaller than eight times this, blocks fetched ahead would only push each other out.
const AHEAD_CACHE_BYTES: u64 = 8 << 20;

/// What stops the cache from being configured, opened or prefetched.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cache: {0}")]
    Config(String),
    #[error("cache.dir {path}: {reason}")]
    Dir { path: String, reason: String },
    #[error("cache prefetch of {what}: {source}")]
    Prefetch { what: String, source: FetchError },
}

/// `[cache]` in host.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Where the enclave reaches the cache (`tcp:…`, `vsock:any:PORT`, `unix:…`).
    pub listen: Addr,
    /// The cache's own directory (created if missing): it must hold nothing but the cache's
    /// files.
    pub dir: PathBuf,
    /// Bytes of blocks kept; least recently used go first.
    pub max_bytes: Option<u64>,
    /// Upstream gateway base URLs, in order of preference.
    pub gateways: Vec<String>,
    /// PEM of extra CAs for the upstream gateways.
    pub ca: Option<PathBuf>,
    /// `ipfs://<CID>` references fetched whole into the cache when the host starts.
    #[serde(default)]
    pub prefetch: Vec<String>,
}

impl CacheConfig {
    /// Refuses a configuration that could not serve anything: no gateways, a zero size cap, or a
    /// prefetch that is not an `ipfs://<CID>`.
    pub fn check(&self) -> Result<(), CacheError> {
        if self.gateways.is_empty() {
            return Err(CacheError::Config("cache.gateways is empty".into()));
        }
        if self.max_bytes == Some(0) {
            return Err(CacheError::Config("cache.max_bytes must be above 0".into()));
        }
        for p in &self.prefetch {
            prefetch_cid(p)?;
        }
        Ok(())
    }
}

impl CacheConfig {
    /// What [`CacheConfig::check`] cannot see from the text: that the directory can be the
    /// cache's own and the upstream CA file reads. Creates nothing (`cidboot host --check`).
    pub fn check_files(&self) -> Result<(), CacheError> {
        match self.file_problems().into_iter().next() {
            Some(p) => Err(CacheError::Config(p)),
            None => Ok(()),
        }
    }

    /// Every problem [`CacheConfig::check_files`] looks for.
    pub fn file_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = check_dir(&self.dir) {
            out.push(e.to_string());
        }
        if let Err(e) = crate::transport::tls::client_config(self.ca.as_deref()) {
            out.push(format!("cache.ca: {e}"));
        }
        out
    }
}

fn prefetch_cid(r: &str) -> Result<Cid, CacheError> {
    let s = r.strip_prefix("ipfs://").unwrap_or(r).trim_end_matches('/');
    let c: Cid = s
        .parse()
        .map_err(|e| CacheError::Config(format!("cache.prefetch {r:?}: {e}")))?;
    crate::reference::check_cid(&c)
        .map_err(|e| CacheError::Config(format!("cache.prefetch {r:?}: {e}")))?;
    Ok(c)
}

/// The cache: the store and the verifying client of its upstream gateways.
pub struct Cache {
    store: store::Store,
    upstream: Arc<Gateways>,
    upstream_permits: Semaphore,
    next_upstream: std::sync::atomic::AtomicUsize,
    budget: budget::Budget,
    /// Blocks one response makes sure of ahead of the one it sends.
    walk_ahead: usize,
}

impl Cache {
    /// Checks the configuration, opens (or creates) the store on disk and builds the verifying
    /// upstream client.
    pub fn open(cfg: &CacheConfig) -> Result<Arc<Cache>, CacheError> {
        cfg.check()?;
        let max_bytes = cfg.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        let store = store::Store::open(&cfg.dir, max_bytes)?;
        let tls = crate::transport::tls::client_config(cfg.ca.as_deref())
            .map_err(|e| CacheError::Config(format!("cache.ca: {e}")))?;
        let client = HttpClient::new(
            Arc::new(crate::transport::TcpConnector),
            tls,
            Timeouts::default(),
        );
        let upstream = Gateways::new(client, &cfg.gateways, GatewayPolicy::default())
            .map_err(|e| CacheError::Config(format!("cache.gateways: {e}")))?;
        Ok(Arc::new(Cache {
            store,
            upstream,
            upstream_permits: Semaphore::new(UPSTREAM_CONCURRENCY),
            next_upstream: Default::default(),
            budget: budget::Budget::new(RESPONSE_MEMORY),
            walk_ahead: usize::try_from(max_bytes / AHEAD_CACHE_BYTES)
                .unwrap_or(usize::MAX)
                .min(FETCH_CONCURRENCY),
        }))
    }

    /// One verified block: from disk, or else from upstream (then stored).
    pub async fn block(&self, cid: &Cid) -> Result<VerifiedBlock, FetchError> {
        if let Some(b) = VerifiedBlock::inline(cid) {
            return Ok(b);
        }
        if let Some(b) = self.store.get(cid).await {
            return Ok(b);
        }
        let _permit = self.upstream_permits.acquire().await;
        // Another request may have stored it while this one waited.
        if let Some(b) = self.store.get(cid).await {
            return Ok(b);
        }
        // Misses are spread over the upstream gateways, so that a cold cache fetches at the
        // speed of all of them.
        let first = self
            .next_upstream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let b = self.upstream.block_spread(cid, Some(first)).await?;
        self.store.put(cid, b.data()).await;
        Ok(b)
    }

    /// Makes sure a block is on disk (fetched and stored if it is not), holding nothing after.
    async fn warm(&self, cid: &Cid) -> Result<(), FetchError> {
        if VerifiedBlock::inline(cid).is_some() || self.store.size(cid).is_some() {
            return Ok(());
        }
        self.block(cid).await.map(drop)
    }

    /// Fetches every block reachable from `root` into the cache: depth-first, a few blocks at
    /// once, holding only the dag-pb nodes being read for their links and the links still to
    /// visit (at most [`MAX_PENDING_LINKS`]); a leaf already on disk is not even read.
    pub async fn prefetch(&self, root: &Cid) -> Result<(usize, u64), FetchError> {
        let mut stack: Vec<(Cid, usize)> = vec![(*root, 0)];
        let mut running = FuturesUnordered::new();
        let (mut visits, mut blocks, mut bytes) = (0usize, 0usize, 0u64);
        loop {
            while running.len() < FETCH_CONCURRENCY {
                let Some((c, depth)) = stack.pop() else { break };
                visits += 1;
                if visits > MAX_BLOCKS {
                    return Err(FetchError::Unsupported(format!(
                        "{root} has more than {MAX_BLOCKS} blocks to prefetch (the limit)"
                    )));
                }
                if c.codec() != CODEC_DAG_PB {
                    if let Some(size) = self.store.size(&c) {
                        blocks += 1;
                        bytes += size;
                        continue;
                    }
                }
                running.push(async move { (c, depth, self.block(&c).await) });
            }
            let Some((c, depth, r)) = running.next().await else {
                return Ok((blocks, bytes));
            };
            let b = r?;
            blocks += 1;
            bytes += b.len() as u64;
            if c.codec() != CODEC_DAG_PB {
                continue;
            }
            let links = crate::fetch::dagpb::decode(&b)?.links;
            drop(b);
            if !links.is_empty() && depth + 1 >= MAX_PREFETCH_DEPTH {
                return Err(FetchError::TooDeep {
                    cid: root.to_string(),
                    max: MAX_PREFETCH_DEPTH,
                });
            }
            if stack.len() + links.len() > MAX_PENDING_LINKS {
                return Err(too_wide(root));
            }
            stack.extend(links.into_iter().rev().map(|l| (l.cid, depth + 1)));
        }
    }
}

/// Opens the cache, warms it with the configured prefetches, and serves it on `listener`.
pub async fn run(cfg: CacheConfig, listener: Listener) -> Result<(), CacheError> {
    let cache = Cache::open(&cfg)?;
    for r in &cfg.prefetch {
        let c = prefetch_cid(r)?;
        let t0 = std::time::Instant::now();
        match cache.prefetch(&c).await {
            Ok((blocks, bytes)) => {
                info!(%c, blocks, bytes, ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX), "gateway cache prefetched")
            }
            // A failed prefetch leaves the cache working: the enclave's requests fill it.
            Err(source) => {
                warn!(error = %CacheError::Prefetch { what: r.clone(), source }, "prefetch failed")
            }
        }
    }
    info!("gateway cache ready");
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let (io, peer) = listener.accept_retrying("cache").await;
        let cache = cache.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| {
                let cache = cache.clone();
                async move { Ok::<_, Infallible>(serve::handle(cache, req).await) }
            });
            let r = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(PIECE)
                .serve_connection(
                    TokioIo::new(serve::StallIo::new(io, WRITE_STALL_TIMEOUT)),
                    svc,
                )
                .await;
            if let Err(e) = r {
                let stalled = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                if stalled {
                    info!(%peer, secs = WRITE_STALL_TIMEOUT.as_secs(), "a cache client read nothing of its response for too long: dropped");
                } else {
                    debug!(%peer, error = %e, "cache connection ended with an error");
                }
            }
        });
    }
}
