//! A trustless gateway over the blocks of CAR files (`cidboot gateway`).
//!
//! It answers the subset of the trustless gateway specification that verifying clients use:
//! `format=raw` and `format=car` (or the matching Accept headers), paths through plain UnixFS
//! directories, `dag-scope=block|entity|all`, `entity-bytes=from:to`, and `dups=y|n`.
//!
//! A development and publishing tool, never part of the enclave build (the `dev-gateway`
//! feature).
#![cfg(feature = "dev-gateway")]

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cid::Cid;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use crate::fetch::car::{self, CarReader};
use crate::fetch::hamt;
use crate::fetch::unixfs::{in_range, Directory, FileNode};
use crate::fetch::MAX_DAG_DEPTH;
use crate::reference::{verify_block, VerifiedBlock, MH_IDENTITY};
use crate::transport::addr::accept_retrying;

/// Connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to send its request headers (and to finish TLS).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocks one CAR response may carry.
pub const MAX_RESPONSE_BLOCKS: usize = 4 << 20;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ServeError {
    #[error("--listen: {0}")]
    Addr(#[from] crate::transport::addr::AddrError),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Car {
        path: String,
        source: crate::fetch::FetchError,
    },
    #[error("{path}: block {cid}: {source}")]
    Block {
        path: String,
        cid: String,
        source: crate::reference::BlockError,
    },
    #[error(transparent)]
    Tls(#[from] crate::transport::TransportError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Verified blocks, by CID.
#[derive(Default)]
pub struct BlockStore {
    /// Every block loaded: what is served.
    blocks: HashMap<Cid, Bytes>,
    /// The blocks that hashed to their CIDs (all of them unless verification is off): the
    /// only ones parsed to plan a response.
    verified: HashMap<Cid, VerifiedBlock>,
}

impl BlockStore {
    /// Loads every block of the CAR files, verifying each against its CID (unless `verify` is
    /// off, for a deliberately tampering test gateway).
    pub async fn load(paths: &[impl AsRef<Path>], verify: bool) -> Result<Self, ServeError> {
        let mut store = BlockStore::default();
        for p in paths {
            let p = p.as_ref();
            let path = p.display().to_string();
            let data = tokio::fs::read(p).await.map_err(|source| ServeError::Io {
                path: path.clone(),
                source,
            })?;
            let mut in_car = 0usize;
            let mut r = CarReader::new(&data[..])
                .await
                .map_err(|source| ServeError::Car {
                    path: path.clone(),
                    source,
                })?;
            while let Some((cid, block)) =
                r.next_block().await.map_err(|source| ServeError::Car {
                    path: path.clone(),
                    source,
                })?
            {
                let block = Bytes::copy_from_slice(&block);
                match verify_block(&cid, &block) {
                    Ok(v) => {
                        store.verified.insert(cid, v);
                    }
                    Err(source) if verify => {
                        return Err(ServeError::Block {
                            path: path.clone(),
                            cid: cid.to_string(),
                            source,
                        })
                    }
                    Err(_) => {}
                }
                store.blocks.insert(cid, block);
                in_car += 1;
            }
            // `blocks` is this CAR's; `total` counts distinct blocks of every CAR so far.
            info!(car = %path, blocks = in_car, total = store.blocks.len(), "loaded");
        }
        Ok(store)
    }

    /// Blocks loaded.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block was loaded.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn get(&self, cid: &Cid) -> Option<Bytes> {
        if cid.hash().code() == MH_IDENTITY {
            return Some(Bytes::copy_from_slice(cid.hash().digest()));
        }
        self.blocks.get(cid).cloned()
    }

    /// A block to parse: only one that hashed to its CID.
    fn verified(&self, cid: &Cid) -> Option<VerifiedBlock> {
        VerifiedBlock::inline(cid).or_else(|| self.verified.get(cid).cloned())
    }
}

/// Serves `store` on `listener` until the process ends.
pub async fn serve(
    listener: TcpListener,
    store: Arc<BlockStore>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = accept_retrying(&listener, "gateway").await;
        let store = store.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(a) => match tokio::time::timeout(HEADER_TIMEOUT, a.accept(stream)).await {
                    Ok(Ok(tls)) => conn(TokioIo::new(tls), store, peer).await,
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                },
                None => conn(TokioIo::new(stream), store, peer).await,
            }
        });
    }
}

async fn conn<I>(io: I, store: Arc<BlockStore>, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = service_fn(move |req: Request<Incoming>| {
        let store = store.clone();
        async move {
            let mut log = RequestLog::default();
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let r = handle(&store, req, &mut log);
            let bytes = hyper::body::Body::size_hint(r.body())
                .exact()
                .unwrap_or(log.bytes);
            info!(
                client = %peer,
                %method,
                cid = log.cid.as_deref().unwrap_or("-"),
                path = %path,
                format = log.format.unwrap_or("-"),
                status = r.status().as_u16(),
                bytes,
                "request"
            );
            Ok::<_, Infallible>(r)
        }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, svc)
        .await;
    if let Err(e) = r {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into() + "\n")).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A refused request: a status and a message for the client.
struct Reject(StatusCode, String);

impl Reject {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Reject(status, msg.into())
    }
    fn response(self) -> Response<Body> {
        text(self.0, self.1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Raw,
    Car,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Block,
    Entity,
    All,
}

struct Query {
    format: Option<Format>,
    scope: Scope,
    range: Option<(u64, Option<u64>)>,
    dups: bool,
}

fn parse_query(q: Option<&str>, accept: &str) -> Result<Query, String> {
    let mut query = Query {
        format: None,
        scope: Scope::All,
        range: None,
        dups: true,
    };
    let accept = accept.to_ascii_lowercase();
    if accept.contains("application/vnd.ipld.raw") {
        query.format = Some(Format::Raw);
    } else if accept.contains("application/vnd.ipld.car") {
        query.format = Some(Format::Car);
        if accept.contains("dups=n") {
            query.dups = false;
        }
    }
    for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "format" => {
                query.format = Some(match v {
                    "raw" => Format::Raw,
                    "car" => Format::Car,
                    other => return Err(format!("unsupported format {other:?}")),
                })
            }
            "dag-scope" => {
                query.scope = match v {
                    "block" => Scope::Block,
                    "entity" => Scope::Entity,
                    "all" => Scope::All,
                    other => return Err(format!("unknown dag-scope {other:?}")),
                }
            }
            "entity-bytes" => {
                let (from, to) = v
                    .split_once(':')
                    .ok_or_else(|| format!("bad entity-bytes {v:?}"))?;
                let from: u64 = from.parse().map_err(|_| {
                    format!("entity-bytes start {from:?} (negative ranges are not supported)")
                })?;
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
                query.range = Some((from, to));
            }
            "dups" => query.dups = v != "n",
            _ => {}
        }
    }
    Ok(query)
}

/// What a request's log line says beside its status: learnt as it is handled.
#[derive(Default)]
struct RequestLog {
    /// The CID asked for, once it parsed.
    cid: Option<String>,
    /// `raw` or `car`, once known.
    format: Option<&'static str>,
    /// The body's length, for a body that streams (a CAR).
    bytes: u64,
}

fn handle(store: &BlockStore, req: Request<Incoming>, log: &mut RequestLog) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD");
    }
    let head = req.method() == Method::HEAD;
    let path = req.uri().path().to_string();
    let Some(rest) = path.strip_prefix("/ipfs/") else {
        return text(StatusCode::NOT_FOUND, "only /ipfs/<cid> paths are served");
    };
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let Some(cid_str) = segs.next() else {
        return text(StatusCode::BAD_REQUEST, "missing CID");
    };
    let Ok(root) = cid_str.parse::<Cid>() else {
        return text(StatusCode::BAD_REQUEST, format!("invalid CID {cid_str:?}"));
    };
    log.cid = Some(root.to_string());
    let segments: Vec<String> = segs.map(percent_decode).collect();
    let accept = req
        .headers()
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let q = match parse_query(req.uri().query(), accept) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let Some(format) = q.format else {
        return text(
            StatusCode::NOT_ACCEPTABLE,
            "this is a trustless gateway: ask for format=raw or format=car",
        );
    };
    log.format = Some(match format {
        Format::Raw => "raw",
        Format::Car => "car",
    });
    match format {
        Format::Raw => {
            let cid = match resolve_path(store, &root, &segments, &mut Vec::new()) {
                Ok(c) => c,
                Err(r) => return r.response(),
            };
            let Some(block) = store.get(&cid) else {
                return text(StatusCode::NOT_FOUND, format!("block {cid} not found"));
            };
            let mut r = Response::new(if head {
                Full::new(Bytes::new()).boxed()
            } else {
                Full::new(block).boxed()
            });
            set_headers(&mut r, "application/vnd.ipld.raw", &cid);
            r
        }
        Format::Car => {
            let mut plan = Vec::new();
            let target = match resolve_path(store, &root, &segments, &mut plan) {
                Ok(c) => c,
                Err(r) => return r.response(),
            };
            if let Err(r) = plan_scope(store, &target, &q, &mut plan) {
                return r.response();
            }
            if !q.dups {
                let mut seen = HashSet::new();
                plan.retain(|c| seen.insert(*c));
            }
            let header = Bytes::from(car::encode_header(&root));
            let mut r = if head {
                Response::new(Full::new(Bytes::new()).boxed())
            } else {
                let (body, bytes) = car_body(store, header, plan);
                log.bytes = bytes;
                body
            };
            let ct = if q.dups {
                "application/vnd.ipld.car; version=1; order=dfs; dups=y"
            } else {
                "application/vnd.ipld.car; version=1; order=dfs; dups=n"
            };
            set_headers(&mut r, ct, &root);
            r
        }
    }
}

fn set_headers(r: &mut Response<Body>, ct: &'static str, cid: &Cid) {
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ct),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, max-age=29030400, immutable"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{cid}\"")) {
        h.insert(http::header::ETAG, v);
    }
    h.insert(
        "x-content-type-options",
        http::HeaderValue::from_static("nosniff"),
    );
}

/// Streams the planned blocks as CAR sections, a block at a time; and the body's length.
fn car_body(store: &BlockStore, header: Bytes, plan: Vec<Cid>) -> (Response<Body>, u64) {
    let blocks: Vec<(Cid, Bytes)> = plan
        .into_iter()
        .filter_map(|c| store.get(&c).map(|b| (c, b)))
        .collect();
    let section = |cid: &Cid, block: &Bytes| {
        let n = (cid.encoded_len() + block.len()) as u64;
        // The section's length prefix is an unsigned varint: 7 bits a byte.
        let prefix = (64 - n.max(1).leading_zeros()).div_ceil(7);
        n + u64::from(prefix)
    };
    let bytes = header.len() as u64 + blocks.iter().map(|(c, b)| section(c, b)).sum::<u64>();
    let sections = blocks.into_iter().map(|(cid, block)| {
        let mut out = Vec::with_capacity(block.len() + 48);
        // Writing into a Vec cannot fail.
        let _ = car::write_section(&mut out, &cid, &block);
        Ok::<_, Infallible>(Frame::data(Bytes::from(out)))
    });
    let stream =
        futures_util::stream::iter(std::iter::once(Ok(Frame::data(header))).chain(sections));
    (
        Response::new(BodyExt::boxed(StreamBody::new(stream))),
        bytes,
    )
}

fn resolve_path(
    store: &BlockStore,
    root: &Cid,
    segments: &[String],
    plan: &mut Vec<Cid>,
) -> Result<Cid, Reject> {
    let mut cur = *root;
    for seg in segments {
        let block = store
            .verified(&cur)
            .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("block {cur} not found")))?;
        if hamt::is_shard(&block) {
            let (found, shards) = hamt::lookup(&|c| store.verified(c), &cur, seg).map_err(|e| {
                Reject::new(
                    StatusCode::NOT_IMPLEMENTED,
                    format!("path through {cur}: {e}"),
                )
            })?;
            plan.extend(shards);
            cur = found.ok_or_else(|| {
                Reject::new(StatusCode::NOT_FOUND, format!("no {seg:?} in {cur}"))
            })?;
            continue;
        }
        let dir = Directory::parse(&block).map_err(|e| {
            Reject::new(
                StatusCode::NOT_IMPLEMENTED,
                format!("path through {cur}: {e}"),
            )
        })?;
        plan.push(cur);
        cur = dir
            .get(seg)
            .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("no {seg:?} in {cur}")))?;
    }
    Ok(cur)
}

fn plan_scope(
    store: &BlockStore,
    target: &Cid,
    q: &Query,
    plan: &mut Vec<Cid>,
) -> Result<(), Reject> {
    let block = store
        .verified(target)
        .ok_or_else(|| Reject::new(StatusCode::NOT_FOUND, format!("block {target} not found")))?;
    if q.scope == Scope::Block {
        plan.push(*target);
        return Ok(());
    }
    // A sharded directory's entity is all of its shards, in depth-first order.
    if hamt::is_shard(&block) {
        return plan_shard(store, target, &block, &[], q, plan);
    }
    // A directory's entity is its own block; a file's entity is its whole DAG (or a range).
    if Directory::parse(&block).is_ok() {
        plan.push(*target);
        if q.scope == Scope::All {
            let dir = Directory::parse(&block)
                .map_err(|e| Reject::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            for (_, c) in dir.entries {
                plan_scope(store, &c, q, plan)?;
            }
        }
        return Ok(());
    }
    let (from, to) = q.range.unwrap_or((0, None));
    plan_file(store, target, 0, from, to, 0, plan)
}

fn plan_shard(
    store: &BlockStore,
    cid: &Cid,
    block: &VerifiedBlock,
    path: &[u8],
    q: &Query,
    plan: &mut Vec<Cid>,
) -> Result<(), Reject> {
    if plan.len() >= MAX_RESPONSE_BLOCKS {
        return Err(Reject::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "DAG too deep or too large",
        ));
    }
    let shard = hamt::Shard::parse(block, path)
        .map_err(|e| Reject::new(StatusCode::NOT_IMPLEMENTED, format!("{cid}: {e}")))?;
    plan.push(*cid);
    for (slot, link) in shard.links {
        match link {
            hamt::ShardLink::Shard(sub) => {
                let b = store.verified(&sub).ok_or_else(|| {
                    Reject::new(StatusCode::NOT_FOUND, format!("block {sub} not found"))
                })?;
                let mut p = path.to_vec();
                p.push(slot);
                plan_shard(store, &sub, &b, &p, q, plan)?;
            }
            hamt::ShardLink::Entry { cid: c, .. } if q.scope == Scope::All => {
                plan_scope(store, &c, q, plan)?;
            }
            hamt::ShardLink::Entry { .. } => {}
        }
    }
    Ok(())
}

fn plan_file(
    store: &BlockStore,
    cid: &Cid,
    start: u64,
    from: u64,
    to: Option<u64>,
    depth: usize,
    plan: &mut Vec<Cid>,
) -> Result<(), Reject> {
    if depth > MAX_DAG_DEPTH || plan.len() >= MAX_RESPONSE_BLOCKS {
        return Err(Reject::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "DAG too deep or too large",
        ));
    }
    plan.push(*cid);
    let Some(block) = store.verified(cid) else {
        // A missing block ends the CAR early; the client sees a truncated stream.
        return Ok(());
    };
    match FileNode::parse(&block) {
        Ok(FileNode::Node {
            inline, children, ..
        }) => {
            let mut offset = start + inline.len() as u64;
            for (child, len) in children {
                let before_end = to.is_none_or(|t| offset <= t);
                if in_range(offset, len, from) && before_end {
                    plan_file(store, &child, offset, from, to, depth + 1, plan)?;
                }
                offset += len;
            }
            Ok(())
        }
        Ok(FileNode::Leaf(_)) => Ok(()),
        Err(e) => Err(Reject::new(StatusCode::NOT_IMPLEMENTED, e.to_string())),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Binds, announces the address on stdout, and serves forever.
pub async fn run(
    cars: &[impl AsRef<Path>],
    listen: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
    verify: bool,
) -> Result<(), ServeError> {
    let listen = &crate::transport::addr::Addr::tcp_only(listen)?;
    let store = Arc::new(BlockStore::load(cars, verify).await?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: listen.to_string(),
        source,
    })?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // The first line of stdout is the URL, for scripts and tests that bind port 0. A reader
    // that has gone (`| head -1` took the URL) does not stop the gateway, nor panic it.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{scheme}://{addr}").and_then(|()| out.flush());
    }
    info!(%addr, blocks = store.len(), "trustless gateway serving");
    serve(listener, store, tls).await;
    Ok(())
}
