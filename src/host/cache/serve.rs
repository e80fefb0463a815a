//! The cache's answers, in bounded memory per connection and in all.
//!
//! A response is written as the client reads it: its body is a channel of one piece of at most
//! [`PIECE`] bytes, so a client that stops reading stops the walk behind it, and the connection
//! holds a few pieces (its own, the channel's and the HTTP writer's). A block on disk is sent
//! in pieces as it is read and hashed, its last piece held back until the whole block matched
//! its CID, so a client never receives a corrupted block whole. What must be in memory (a
//! dag-pb node being decoded or sent, a block the disk did not keep, the links a walk keeps
//! waiting) is taken from the budget shared by all responses first. A client that reads
//! nothing for [`WRITE_STALL_TIMEOUT`] is dropped, and with it everything its response held.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cid::Cid;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tracing::warn;

use super::budget::{Busy, Share};
use super::{Cache, MAX_BLOCKS};
use crate::fetch::car;
use crate::fetch::unixfs::{in_range, FileNode};
use crate::fetch::walk::MAX_PENDING_LINKS;
use crate::fetch::{FetchError, MAX_DAG_DEPTH};
use crate::reference::{VerifiedBlock, CODEC_DAG_PB, MAX_BLOCK_SIZE, MH_SHA2_256};

/// Most bytes in one piece of a response body.
pub const PIECE: usize = 64 << 10;
/// A client that takes no byte of its response for this long is dropped.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Memory counted for each link a walk keeps waiting (its CID and offset).
const LINK_COST: usize = 112;
/// Memory counted for decoding a dag-pb node, per byte of the block: each link (at least 38
/// bytes of the block) is decoded as a dag-pb link, in a vector that may have grown to twice
/// its length, then as a UnixFS child (a unit test checks the sizes).
const DECODE_COST: usize = 11;

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;
type Tx = mpsc::Sender<Result<Bytes, std::io::Error>>;

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

/// What ends a response early: a fetch or content error, the budget, or the client.
#[derive(Debug, thiserror::Error)]
enum Cut {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Busy(#[from] Busy),
    #[error("corrupted cache entry {0}: removed (it will be fetched again)")]
    Corrupted(Cid),
    #[error("{0} has more than {MAX_BLOCKS} blocks in one response (the limit)")]
    TooMany(Cid),
    #[error("the client went away")]
    Gone,
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

/// Answers one request.
pub(super) async fn handle(cache: Arc<Cache>, req: Request<Incoming>) -> Response<Body> {
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
    // The root is fetched before the status is chosen: a failure upstream is a 502 the
    // client can act on, not a broken body.
    if let Err(e) = cache.warm(&cid).await {
        return failed(&e);
    }
    let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let length = cache.store.size(&cid);
    let raw = !q.car;
    tokio::spawn(async move {
        let r = if raw {
            send_block(&cache, &tx, &cid, false).await
        } else {
            match send(&tx, Bytes::from(car::encode_header(&cid))).await {
                Ok(()) if q.block_scope => send_block(&cache, &tx, &cid, true).await,
                Ok(()) => walk(&cache, &tx, cid, q.range).await,
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) | Err(Cut::Gone) => {}
            Err(e) => {
                // The body ends with an error: the client sees a broken stream and goes
                // elsewhere (or asks again).
                warn!(%cid, error = %e, "cache: response cut short");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    let stream =
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(|r| r.map(Frame::data));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    if raw {
        set_headers(&mut r, "application/vnd.ipld.raw", &cid);
        let inline = VerifiedBlock::inline(&cid).map(|b| b.len() as u64);
        if let Some(len) = length.or(inline) {
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
    } else {
        set_headers(
            &mut r,
            "application/vnd.ipld.car; version=1; order=dfs; dups=y",
            &cid,
        );
    }
    r
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

async fn send(tx: &Tx, data: Bytes) -> Result<(), Cut> {
    tx.send(Ok(data)).await.map_err(|_| Cut::Gone)
}

/// Sends bytes already in memory, in pieces (slices of the same buffer).
async fn send_pieces(tx: &Tx, data: &Bytes) -> Result<(), Cut> {
    let mut at = 0;
    while at < data.len() {
        let end = (at + PIECE).min(data.len());
        send(tx, data.slice(at..end)).await?;
        at = end;
    }
    Ok(())
}

/// Sends one block (as a CAR section if `section`): from disk, or else (not there, or
/// corrupted there) fetched into memory under the budget.
async fn send_block(cache: &Cache, tx: &Tx, cid: &Cid, section: bool) -> Result<(), Cut> {
    if cid.hash().code() == MH_SHA2_256 {
        for again in [false, true] {
            if let Some((file, len)) = cache.store.open_block(cid).await {
                if send_from_disk(cache, tx, cid, file, len, section).await? {
                    return Ok(());
                }
            }
            // Evicted, or corrupted and removed: fetched and stored again, then read again.
            if !again {
                cache.warm(cid).await?;
            }
        }
    }
    // Not kept on disk (a cache smaller than its blocks, a disk that refuses writes).
    let mut share = cache.budget.take(MAX_BLOCK_SIZE).await?;
    let block = cache.block(cid).await?;
    share.resize(block.len()).await?;
    send_block_in_memory(tx, &block, section).await
}

async fn send_block_in_memory(tx: &Tx, block: &VerifiedBlock, section: bool) -> Result<(), Cut> {
    if section {
        send(
            tx,
            Bytes::from(car::section_head(block.cid(), block.len() as u64)),
        )
        .await?;
    }
    send_pieces(tx, block.data()).await
}

/// Sends a block from disk in pieces, after a first pass that hashed the whole file against
/// its CID: a corrupted entry is removed before any byte of it is sent (`Ok(false)`: fetch it
/// again). Files are renamed into place whole and never written again, so the second pass
/// reads what the first hashed; its length is checked all the same.
async fn send_from_disk(
    cache: &Cache,
    tx: &Tx,
    cid: &Cid,
    mut file: tokio::fs::File,
    len: u64,
    section: bool,
) -> Result<bool, Cut> {
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut read = 0u64;
    let hashed = async {
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            read += n as u64;
            if read > len {
                break;
            }
            hasher.update(&buf[..n]);
        }
        file.seek(std::io::SeekFrom::Start(0)).await.map(drop)
    }
    .await;
    drop(buf);
    if hashed.is_err() || read != len || hasher.finalize()[..] != *cid.hash().digest() {
        warn!(%cid, "corrupted cache entry: removed, fetching it again");
        cache.store.drop_entry(cid).await;
        return Ok(false);
    }
    if section {
        send(tx, Bytes::from(car::section_head(cid, len))).await?;
    }
    let mut sent = 0u64;
    loop {
        let mut piece = BytesMut::with_capacity(PIECE);
        let n = file
            .read_buf(&mut piece)
            .await
            .map_err(|_| Cut::Corrupted(*cid))?;
        if n == 0 {
            break;
        }
        sent += n as u64;
        if sent > len {
            break;
        }
        send(tx, piece.freeze()).await?;
    }
    if sent != len {
        cache.store.drop_entry(cid).await;
        return Err(Cut::Corrupted(*cid));
    }
    Ok(true)
}

enum Warm {
    Running,
    Done,
    Failed(FetchError),
}

/// Blocks made sure of (on disk) ahead of a walk, a few at a time; they hold no memory once
/// stored.
struct Warming<'a> {
    limit: usize,
    running: FuturesUnordered<BoxFuture<'a, (Cid, Result<(), FetchError>)>>,
    state: HashMap<Cid, Warm>,
}

impl<'a> Warming<'a> {
    fn start(&mut self, cache: &'a Cache, cid: Cid) -> bool {
        if self.state.contains_key(&cid) {
            return true;
        }
        if self.running.len() >= self.limit {
            return false;
        }
        self.state.insert(cid, Warm::Running);
        self.running
            .push(Box::pin(async move { (cid, cache.warm(&cid).await) }));
        true
    }

    /// Waits until `cid`, if it is being made sure of, is done; forgets it.
    async fn wait(&mut self, cid: &Cid) -> Result<(), FetchError> {
        while matches!(self.state.get(cid), Some(Warm::Running)) {
            let Some((c, r)) = self.running.next().await else {
                break;
            };
            self.state.insert(
                c,
                match r {
                    Ok(()) => Warm::Done,
                    Err(e) => Warm::Failed(e),
                },
            );
        }
        match self.state.remove(cid) {
            Some(Warm::Failed(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

/// One node's children still to send: `(child, offset of its content)`, and the share of the
/// budget they hold.
struct Waiting {
    children: VecDeque<(Cid, u64)>,
    /// How many of the first `children` are being warmed.
    warmed: usize,
    _share: Share,
}

/// Sends a file's blocks in depth-first order, those of `[from, to]` only: dag-pb nodes from
/// memory (they are decoded for their links), leaves from disk, a few blocks made sure of
/// ahead of the one being sent.
async fn walk(cache: &Cache, tx: &Tx, root: Cid, range: (u64, Option<u64>)) -> Result<(), Cut> {
    let mut warming = Warming {
        limit: cache.walk_ahead,
        running: FuturesUnordered::new(),
        state: HashMap::new(),
    };
    let mut frames: Vec<Waiting> = Vec::new();
    let mut sent = 0usize;
    let mut pending = 0usize;
    let mut next = Some((root, 0u64));
    while let Some((cid, start)) = next.take() {
        sent += 1;
        if sent > MAX_BLOCKS {
            return Err(Cut::TooMany(root));
        }
        if frames.len() > MAX_DAG_DEPTH {
            return Err(FetchError::TooDeep {
                cid: root.to_string(),
                max: MAX_DAG_DEPTH,
            }
            .into());
        }
        if cid.codec() == CODEC_DAG_PB {
            if let Some(f) = visit_node(cache, tx, &root, cid, start, range, &mut pending).await? {
                frames.push(f);
            }
        } else {
            send_block(cache, tx, &cid, true).await?;
        }
        // The next block in walk order, the innermost frame first.
        while let Some(f) = frames.last_mut() {
            if let Some(c) = f.children.pop_front() {
                f.warmed = f.warmed.saturating_sub(1);
                pending -= 1;
                next = Some(c);
                break;
            }
            frames.pop();
        }
        // Make sure of the next few ahead, in walk order.
        'ahead: for f in frames.iter_mut().rev() {
            while let Some((c, _)) = f.children.get(f.warmed) {
                if !warming.start(cache, *c) {
                    break 'ahead;
                }
                f.warmed += 1;
            }
        }
        if let Some((c, _)) = &next {
            warming.wait(c).await?;
        }
    }
    Ok(())
}

/// Sends a dag-pb node of the walk and returns its wanted children as a frame (none if it is
/// not a file node: a directory's entity is its own block).
async fn visit_node(
    cache: &Cache,
    tx: &Tx,
    root: &Cid,
    cid: Cid,
    start: u64,
    (from, to): (u64, Option<u64>),
    pending: &mut usize,
) -> Result<Option<Waiting>, Cut> {
    // Fetched and stored first, holding nothing while upstream answers; then read back at its
    // known size.
    cache.warm(&cid).await?;
    let known = cache
        .store
        .size(&cid)
        .and_then(|s| usize::try_from(s).ok())
        .unwrap_or(MAX_BLOCK_SIZE);
    let mut share = cache
        .budget
        .take(known.saturating_mul(DECODE_COST + 1))
        .await?;
    let block = cache.block(&cid).await?;
    share
        .resize(block.len().saturating_mul(DECODE_COST + 1))
        .await?;
    let mut wanted = VecDeque::new();
    if let Ok(FileNode::Node {
        inline, children, ..
    }) = FileNode::parse(&block)
    {
        let mut offset = start + inline.len() as u64;
        for (child, len) in children {
            if in_range(offset, len, from) && to.is_none_or(|t| offset <= t) {
                if *pending >= MAX_PENDING_LINKS {
                    return Err(crate::fetch::walk::too_wide(root).into());
                }
                *pending += 1;
                wanted.push_back((child, offset));
            }
            offset += len;
        }
    }
    // What stays while the node is sent: the block; then its frame.
    share.resize(block.len()).await?;
    send_block_in_memory(tx, &block, true).await?;
    drop(block);
    if wanted.is_empty() {
        return Ok(None);
    }
    share.resize(wanted.len().saturating_mul(LINK_COST)).await?;
    Ok(Some(Waiting {
        children: wanted,
        warmed: 0,
        _share: share,
    }))
}

/// A connection whose writes fail once they have made no progress for a while: a client that
/// stops reading its response is dropped, and its response with it.
pub(super) struct StallIo<T> {
    io: T,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallIo<T> {
    pub(super) fn new(io: T, timeout: Duration) -> Self {
        StallIo {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After a write that could not proceed: the error once the stall has lasted too long.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {}s: dropped",
                    timeout.as_secs()
                ),
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending => self.check(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending => self.check(cx).map(Err),
            done => {
                self.stalled = None;
                done
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_counted_covers_what_is_held() {
        use crate::fetch::dagpb::PbLink;
        assert!(std::mem::size_of::<(Cid, u64)>() + 8 <= LINK_COST);
        // The smallest link: a CIDv0 (34 bytes) with its two tags and lengths.
        let per_link = 2 * std::mem::size_of::<PbLink>()
            + std::mem::size_of::<(Cid, u64)>()
            + 2 * std::mem::size_of::<u64>();
        assert!(per_link <= DECODE_COST * 38, "{per_link}");
    }

    #[test]
    fn queries_are_read_as_the_client_sends_them() {
        let q = parse_query("format=car&dag-scope=entity&entity-bytes=10:19", "").unwrap();
        assert!(q.car && !q.block_scope);
        assert_eq!(q.range, (10, Some(19)));
        assert!(parse_query("entity-bytes=5:1", "application/vnd.ipld.car").is_err());
        assert!(parse_query("", "text/html").is_err());
    }
}
