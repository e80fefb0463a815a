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

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use futures_util::stream::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn};

use crate::fetch::car;
use crate::fetch::unixfs::{in_range, FileNode};
use crate::fetch::{FetchError, GatewayPolicy, Gateways, MAX_DAG_DEPTH};
use crate::reference::{verify_block, VerifiedBlock, CODEC_DAG_PB, MAX_BLOCK_SIZE};
use crate::transport::addr::{Addr, Listener};
use crate::transport::http::{HttpClient, Timeouts};

/// Default cap on the blocks kept on disk.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks fetched from upstream at once for one response or one prefetch.
pub const FETCH_CONCURRENCY: usize = 8;
/// Upstream requests in flight at once, for all clients together: many enclave connections
/// missing at once must not become a flood on the public gateways.
pub const UPSTREAM_CONCURRENCY: usize = 16;
/// Blocks one CAR response may carry, and one prefetch may fetch.
pub const MAX_BLOCKS: usize = 4 << 20;
/// Deepest DAG a prefetch follows (directories, then a file's DAG).
pub const MAX_PREFETCH_DEPTH: usize = 64;
/// Verified sections queued between the walker and the connection.
const QUEUE: usize = 8;

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
    #[error("cache prefetch of {what}: {source}")]
    Prefetch { what: String, source: FetchError },
}

/// `[cache]` in host.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Where the enclave reaches the cache (`tcp:…`, `vsock:any:PORT`, `unix:…`).
    pub listen: Addr,
    /// Directory of the cached blocks (created if missing).
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

fn prefetch_cid(r: &str) -> Result<Cid, CacheError> {
    let s = r.strip_prefix("ipfs://").unwrap_or(r).trim_end_matches('/');
    let c: Cid = s
        .parse()
        .map_err(|e| CacheError::Config(format!("cache.prefetch {r:?}: {e}")))?;
    crate::reference::check_cid(&c)
        .map_err(|e| CacheError::Config(format!("cache.prefetch {r:?}: {e}")))?;
    Ok(c)
}

/// The blocks on disk, one file per block named by its CID, and their use order.
struct Store {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Cid, (u64, u64)>,
    order: BTreeMap<u64, Cid>,
    total: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, cid: &Cid) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.entries.get_mut(cid) {
            self.order.remove(&e.1);
            e.1 = t;
            self.order.insert(t, *cid);
        }
    }
    fn insert(&mut self, cid: Cid, size: u64) {
        if self.entries.contains_key(&cid) {
            return self.touch(&cid);
        }
        self.tick += 1;
        self.entries.insert(cid, (size, self.tick));
        self.order.insert(self.tick, cid);
        self.total += size;
    }
    fn remove(&mut self, cid: &Cid) {
        if let Some((size, t)) = self.entries.remove(cid) {
            self.order.remove(&t);
            self.total -= size;
        }
    }
}

impl Store {
    fn open(dir: &Path, max_bytes: u64) -> Result<Store, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io)? {
            let e = e.map_err(io)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let meta = e.metadata().map_err(io)?;
            match name.parse::<Cid>() {
                Ok(c) if meta.is_file() && meta.len() <= MAX_BLOCK_SIZE as u64 => {
                    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    found.push((mtime, c, meta.len()));
                }
                // Leftovers of an interrupted write, or anything else: not a block.
                _ if meta.is_file() => {
                    let _ = std::fs::remove_file(e.path());
                }
                _ => {}
            }
        }
        found.sort();
        let store = Store {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index::default()),
        };
        if let Ok(mut ix) = store.index.lock() {
            for (_, c, size) in found {
                ix.insert(c, size);
            }
            info!(dir = %dir.display(), blocks = ix.entries.len(), bytes = ix.total, "gateway cache opened");
        }
        store.evict(None);
        Ok(store)
    }

    fn path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(cid.to_string())
    }

    /// A cached block, verified again against its CID; a corrupted entry is removed.
    async fn get(&self, cid: &Cid) -> Option<VerifiedBlock> {
        let known = self.index.lock().ok()?.entries.contains_key(cid);
        if !known {
            return None;
        }
        let path = self.path(cid);
        let data = match tokio::fs::read(&path).await {
            Ok(d) if d.len() <= MAX_BLOCK_SIZE => Bytes::from(d),
            _ => {
                self.drop_entry(cid).await;
                return None;
            }
        };
        let block = match verify_block(cid, &data) {
            Ok(b) => b,
            Err(e) => {
                warn!(%cid, error = %e, "corrupted cache entry: removed, fetching it again");
                self.drop_entry(cid).await;
                return None;
            }
        };
        if let Ok(mut ix) = self.index.lock() {
            ix.touch(cid);
        }
        Some(block)
    }

    async fn drop_entry(&self, cid: &Cid) {
        if let Ok(mut ix) = self.index.lock() {
            ix.remove(cid);
        }
        let _ = tokio::fs::remove_file(self.path(cid)).await;
    }

    /// Stores a verified block (written to a temporary name, then renamed into place).
    async fn put(&self, cid: &Cid, data: &Bytes) {
        let tmp = self.dir.join(format!(".tmp-{}", fastrand::u64(..)));
        let r = async {
            tokio::fs::write(&tmp, data).await?;
            tokio::fs::rename(&tmp, self.path(cid)).await
        }
        .await;
        if let Err(e) = r {
            warn!(%cid, error = %e, "could not store a block in the cache");
            let _ = tokio::fs::remove_file(&tmp).await;
            return;
        }
        if let Ok(mut ix) = self.index.lock() {
            ix.insert(*cid, data.len() as u64);
        }
        self.evict(Some(cid));
    }

    /// Removes least recently used blocks until the total is under the cap.
    fn evict(&self, keep: Option<&Cid>) {
        let mut gone = Vec::new();
        if let Ok(mut ix) = self.index.lock() {
            while ix.total > self.max_bytes {
                let Some((_, c)) = ix
                    .order
                    .iter()
                    .find(|(_, c)| Some(*c) != keep)
                    .map(|(t, c)| (*t, *c))
                else {
                    break;
                };
                ix.remove(&c);
                gone.push(c);
            }
        }
        for c in &gone {
            let _ = std::fs::remove_file(self.path(c));
        }
        if !gone.is_empty() {
            debug!(blocks = gone.len(), "evicted from the gateway cache");
        }
    }
}

/// The cache: the store and the verifying client of its upstream gateways.
pub struct Cache {
    store: Store,
    upstream: Arc<Gateways>,
    upstream_permits: Semaphore,
    next_upstream: std::sync::atomic::AtomicUsize,
}

impl Cache {
    /// Checks the configuration, opens (or creates) the store on disk and builds the verifying
    /// upstream client.
    pub fn open(cfg: &CacheConfig) -> Result<Arc<Cache>, CacheError> {
        cfg.check()?;
        let store = Store::open(&cfg.dir, cfg.max_bytes.unwrap_or(DEFAULT_MAX_BYTES))?;
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
        self.store.put(cid, &b).await;
        Ok(b)
    }

    /// Fetches every block reachable from `root` into the cache.
    pub async fn prefetch(&self, root: &Cid) -> Result<(usize, u64), FetchError> {
        let mut frontier = vec![*root];
        let mut seen = std::collections::HashSet::new();
        seen.insert(*root);
        let (mut blocks, mut bytes) = (0usize, 0u64);
        for _ in 0..MAX_PREFETCH_DEPTH {
            if frontier.is_empty() {
                return Ok((blocks, bytes));
            }
            let fetched: Vec<Result<(Cid, VerifiedBlock), FetchError>> =
                futures_util::stream::iter(std::mem::take(&mut frontier))
                    .map(|c| async move { Ok((c, self.block(&c).await?)) })
                    .buffer_unordered(FETCH_CONCURRENCY)
                    .collect()
                    .await;
            for f in fetched {
                let (c, b) = f?;
                blocks += 1;
                bytes += b.len() as u64;
                if c.codec() == CODEC_DAG_PB {
                    for l in crate::fetch::dagpb::decode(&b)?.links {
                        if seen.len() >= MAX_BLOCKS {
                            return Err(FetchError::Unsupported(format!(
                                "{root} has more than {MAX_BLOCKS} blocks"
                            )));
                        }
                        if seen.insert(l.cid) {
                            frontier.push(l.cid);
                        }
                    }
                }
            }
        }
        if frontier.is_empty() {
            Ok((blocks, bytes))
        } else {
            Err(FetchError::TooDeep {
                cid: root.to_string(),
                max: MAX_PREFETCH_DEPTH,
            })
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
                async move { Ok::<_, Infallible>(handle(cache, req).await) }
            });
            let r = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(io), svc)
                .await;
            if let Err(e) = r {
                debug!(%peer, error = %e, "cache connection ended with an error");
            }
        });
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let body =
        Full::new(Bytes::from(msg.into() + "\n")).map_err(|never: Infallible| match never {});
    let mut r = Response::new(BodyExt::boxed(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn failed(e: &FetchError) -> Response<Body> {
    let status = if e.is_content_fault() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::BAD_GATEWAY
    };
    text(status, e.to_string())
}

struct Query {
    car: bool,
    block_scope: bool,
    range: (u64, Option<u64>),
}

fn parse_query(q: &str, accept: &str) -> Result<Query, String> {
    let accept = accept.to_ascii_lowercase();
    let mut car = if accept.contains("application/vnd.ipld.raw") {
        Some(false)
    } else if accept.contains("application/vnd.ipld.car") {
        Some(true)
    } else {
        None
    };
    let mut query = Query {
        car: false,
        block_scope: false,
        range: (0, None),
    };
    for pair in q.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (k, v) {
            ("format", "raw") => car = Some(false),
            ("format", "car") => car = Some(true),
            ("format", other) => return Err(format!("unsupported format {other:?}")),
            ("dag-scope", "block") => query.block_scope = true,
            ("dag-scope", "entity" | "all") => query.block_scope = false,
            ("dag-scope", other) => return Err(format!("unknown dag-scope {other:?}")),
            ("entity-bytes", v) => {
                let (from, to) = v
                    .split_once(':')
                    .ok_or_else(|| format!("bad entity-bytes {v:?}"))?;
                let from: u64 = from
                    .parse()
                    .map_err(|_| format!("entity-bytes start {from:?}"))?;
                let to = match to {
                    "*" => None,
                    t => Some(
                        t.parse::<u64>()
                            .map_err(|_| format!("entity-bytes end {t:?}"))?,
                    ),
                };
                if to.is_some_and(|t| t < from) {
                    return Err(format!("entity-bytes {v:?} ends before it starts"));
                }
                query.range = (from, to);
            }
            _ => {}
        }
    }
    query.car = car.ok_or("this is a trustless gateway: ask for format=raw or format=car")?;
    Ok(query)
}

async fn handle(cache: Arc<Cache>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    let Some(rest) = req.uri().path().strip_prefix("/ipfs/") else {
        return text(StatusCode::NOT_FOUND, "only /ipfs/<cid> is served");
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return text(
            StatusCode::NOT_IMPLEMENTED,
            "the cache does not serve paths",
        );
    }
    let Ok(cid) = rest.parse::<Cid>() else {
        return text(StatusCode::BAD_REQUEST, format!("invalid CID {rest:?}"));
    };
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let q = match parse_query(req.uri().query().unwrap_or(""), accept) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let root = match cache.block(&cid).await {
        Ok(b) => b,
        Err(e) => return failed(&e),
    };
    if !q.car {
        let body = Full::new(root.data().clone()).map_err(|never: Infallible| match never {});
        let mut r = Response::new(BodyExt::boxed(body));
        set_headers(&mut r, "application/vnd.ipld.raw", &cid);
        return r;
    }
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let header = Bytes::from(car::encode_header(&cid));
    let scope_block = q.block_scope;
    tokio::spawn(async move {
        let _ = tx.send(Ok(header)).await;
        let r = if scope_block {
            section(&tx, &cid, &root).await
        } else {
            let mut sent = 0usize;
            walk(&cache, &tx, cid, root, 0, q.range, 0, &mut sent).await
        };
        if let Err(e) = r {
            // The body ends with an error: the client sees a broken stream and goes elsewhere.
            warn!(%cid, error = %e, "cache: response cut short");
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    let stream =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(|r| r.map(Frame::data));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    set_headers(
        &mut r,
        "application/vnd.ipld.car; version=1; order=dfs; dups=y",
        &cid,
    );
    r
}

async fn section(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    cid: &Cid,
    block: &Bytes,
) -> Result<(), FetchError> {
    let mut out = Vec::with_capacity(block.len() + 48);
    car::write_section(&mut out, cid, block).map_err(FetchError::Sink)?;
    tx.send(Ok(Bytes::from(out)))
        .await
        .map_err(|_| FetchError::Sink(std::io::Error::other("client went away")))
}

/// Sends a file's blocks in depth-first order, those of `[from, to]` only, fetching the
/// children of each node a few at a time.
#[allow(clippy::too_many_arguments)]
fn walk<'a>(
    cache: &'a Cache,
    tx: &'a mpsc::Sender<Result<Bytes, std::io::Error>>,
    cid: Cid,
    block: VerifiedBlock,
    start: u64,
    range: (u64, Option<u64>),
    depth: usize,
    sent: &'a mut usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), FetchError>> + Send + 'a>> {
    Box::pin(async move {
        if depth > MAX_DAG_DEPTH || *sent >= MAX_BLOCKS {
            return Err(FetchError::TooDeep {
                cid: cid.to_string(),
                max: MAX_DAG_DEPTH,
            });
        }
        section(tx, &cid, &block).await?;
        *sent += 1;
        // Not a file (a directory, say): its entity is its own block.
        let Ok(FileNode::Node {
            inline, children, ..
        }) = FileNode::parse(&block)
        else {
            return Ok(());
        };
        let (from, to) = range;
        let mut offset = start + inline.len() as u64;
        let mut wanted = Vec::new();
        for (child, len) in children {
            if in_range(offset, len, from) && to.is_none_or(|t| offset <= t) {
                wanted.push((child, offset));
            }
            offset += len;
        }
        let mut blocks =
            futures_util::stream::iter(wanted)
                .map(|(c, offset)| async move {
                    Ok::<_, FetchError>((c, offset, cache.block(&c).await?))
                })
                .buffered(FETCH_CONCURRENCY);
        while let Some(next) = blocks.next().await {
            let (c, offset, b) = next?;
            walk(cache, tx, c, b, offset, range, depth + 1, sent).await?;
        }
        Ok(())
    })
}

fn set_headers(r: &mut Response<Body>, ct: &'static str, cid: &Cid) {
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{cid}\"")) {
        h.insert(http::header::ETAG, v);
    }
}
