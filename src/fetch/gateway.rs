//! The trustless gateway client: verified blocks and verified file streams, with retries,
//! failover across gateways, and resumption of large files by `entity-bytes`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cid::Cid;
use tokio::io::AsyncRead;
use tracing::{debug, info, warn};

use super::car::CarReader;
use super::unixfs::{Directory, FileNode};
use super::{BlobSink, FetchError, MAX_DAG_DEPTH};
use crate::reference::{verify_block, VerifiedBlock, CODEC_RAW, MAX_BLOCK_SIZE};
use crate::transport::http::{HttpClient, Origin};

pub(super) const ACCEPT_RAW: &str = "application/vnd.ipld.raw";
pub(super) const ACCEPT_CAR: &str = "application/vnd.ipld.car; version=1; order=dfs; dups=y";

/// Retry and failover policy. Every number here is documented in docs/limits.md.
#[derive(Debug, Clone)]
pub struct GatewayPolicy {
    /// Tries per gateway for one object before failing over.
    pub attempts_per_gateway: u32,
    /// First backoff; doubles per try, with jitter.
    pub backoff_base: Duration,
    /// Longest backoff between tries.
    pub backoff_max: Duration,
    /// A Retry-After longer than this fails over instead of waiting.
    pub max_retry_after: Duration,
    /// Longest time spent on one object across all gateways and tries.
    pub object_deadline: Duration,
    /// How large files are fetched in ranges from several gateways at once.
    pub parallel: super::parallel::ParallelPolicy,
}

impl Default for GatewayPolicy {
    fn default() -> Self {
        GatewayPolicy {
            attempts_per_gateway: 3,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(30),
            object_deadline: Duration::from_secs(30 * 60),
            parallel: super::parallel::ParallelPolicy::default(),
        }
    }
}

pub(super) struct Gateway {
    pub(super) origin: Origin,
    pub(super) prefix: String,
    pub(super) label: String,
    /// The formats it refused (see `fetch::formats`).
    pub(super) refused: AtomicU8,
    /// Its figures for this run, liveness and quarantine.
    pub(super) score: super::score::Score,
}

/// A set of gateways tried in order, the last healthy one first.
pub struct Gateways {
    client: HttpClient,
    pub(super) gateways: Vec<Gateway>,
    pub(super) policy: GatewayPolicy,
    preferred: AtomicUsize,
    /// The most bytes of ranges one blob's parallel fetch held at once in this run.
    pub(super) peak_held: std::sync::atomic::AtomicU64,
}

/// What the caller knows about a file's size before fetching it.
#[derive(Debug, Clone, Copy)]
pub enum SizeRule {
    /// The descriptor's size: the file must be exactly this long.
    Exact(u64),
    /// Only a cap: the file may be at most this long; the text names the cap in the error.
    AtMost(u64, &'static str),
}

impl Gateways {
    /// `urls` are gateway base URLs such as `https://ipfs.io`; order is preference.
    pub fn new(
        client: HttpClient,
        urls: &[String],
        policy: GatewayPolicy,
    ) -> Result<Arc<Self>, FetchError> {
        let mut gateways = Vec::new();
        for u in urls {
            let (origin, prefix) = Origin::parse(u)?;
            // `https://ipfs.io/ipfs/` is a common paste of a gateway's base URL: requests add
            // `/ipfs/<cid>` themselves, so a trailing `/ipfs` segment is taken off.
            let prefix = match prefix.strip_suffix("/ipfs") {
                Some(base) => {
                    info!(gateway = %u, base = %format!("{origin}{base}"), "gateway URL ends in /ipfs: using its base URL");
                    base.to_string()
                }
                None => prefix,
            };
            if !origin.tls {
                warn!(gateway = %u, "gateway is plain HTTP: content is still verified, but requests are visible");
            }
            let label = format!("{origin}{prefix}");
            if gateways.iter().any(|g: &Gateway| g.label == label) {
                continue;
            }
            gateways.push(Gateway {
                origin,
                prefix,
                label,
                refused: AtomicU8::new(0),
                score: Default::default(),
            });
        }
        if gateways.is_empty() {
            return Err(FetchError::Unsupported(
                "no gateway configured (give at least one --gateway)".into(),
            ));
        }
        Ok(Arc::new(Gateways {
            client,
            gateways,
            policy,
            preferred: AtomicUsize::new(0),
            peak_held: Default::default(),
        }))
    }

    pub(super) fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The most bytes of ranges (in flight, verified and waiting, being written) that one
    /// blob's parallel fetch held at once in this run: the memory bound, observed.
    /// The most bytes of parallel ranges held at once so far (what the memory bound caps).
    pub fn peak_range_bytes(&self) -> u64 {
        self.peak_held.load(Ordering::Relaxed)
    }

    /// The gateways' names as logs and errors show them, in configured order.
    pub fn labels(&self) -> Vec<String> {
        self.gateways.iter().map(|g| g.label.clone()).collect()
    }

    fn order(&self) -> Vec<usize> {
        let n = self.gateways.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        (0..n).map(|i| (first + i) % n).collect()
    }

    /// Fetches one block with `?format=raw` and verifies it against `cid`.
    pub async fn block(&self, cid: &Cid) -> Result<VerifiedBlock, FetchError> {
        self.block_spread(cid, None).await
    }

    /// [`Gateways::block`], starting with gateway `first` (modulo their number) instead of
    /// the last one that answered: many blocks fetched at once with different `first`s spread
    /// over every gateway, past each one's per-client limit.
    pub async fn block_spread(
        &self,
        cid: &Cid,
        first: Option<usize>,
    ) -> Result<VerifiedBlock, FetchError> {
        crate::reference::check_cid(cid)?;
        let mut tries = Tries::new(self, cid);
        if let Some(f) = first {
            let n = self.gateways.len();
            tries.order = (0..n).map(|i| (f + i) % n).collect();
        }
        while let Some(gw) = tries.next()? {
            match tries.bounded(self.block_any(gw, cid)).await? {
                Ok(b) => return Ok(tries.succeeded(b)),
                Err(e) => tries.failed(e).await?,
            }
        }
        Err(tries.exhausted())
    }

    pub(super) async fn block_once(
        &self,
        gw: &Gateway,
        cid: &Cid,
    ) -> Result<VerifiedBlock, FetchError> {
        let path = format!("{}/ipfs/{cid}?format=raw", gw.prefix);
        let resp = self
            .get_following(gw, &path, &[("accept", ACCEPT_RAW)])
            .await?;
        check_status(&resp)?;
        check_content_type(&resp, ACCEPT_RAW, "raw block")?;
        let data = resp
            .bytes_limited(MAX_BLOCK_SIZE)
            .await
            .map_err(FetchError::from_io)?
            .map_err(|size| FetchError::BlockTooLarge {
                size: size as u64,
                max: MAX_BLOCK_SIZE as u64,
            })?;
        Ok(verify_block(cid, &data)?)
    }

    /// Reads a UnixFS directory, plain or HAMT-sharded.
    pub async fn directory(&self, cid: &Cid) -> Result<Directory, FetchError> {
        let block = self.block(cid).await?;
        self.directory_from(block).await
    }

    /// Reads a UnixFS directory whose first block is already here.
    pub async fn directory_from(&self, block: VerifiedBlock) -> Result<Directory, FetchError> {
        if super::hamt::is_shard(&block) {
            return super::hamt::read_directory(self, block).await;
        }
        Ok(Directory::parse(&block)?)
    }

    /// Streams the UnixFS file (or raw block) `cid` into `sink`, verifying every block on the
    /// way, and returns its size. A broken transfer resumes where verified data ended.
    pub async fn file<S: BlobSink>(
        &self,
        cid: &Cid,
        rule: SizeRule,
        sink: &mut S,
    ) -> Result<u64, FetchError> {
        crate::reference::check_cid(cid)?;
        if cid.codec() == CODEC_RAW {
            let data = self.block(cid).await?;
            check_size(cid, rule, data.len() as u64)?;
            sink.write(&data).await.map_err(FetchError::Sink)?;
            return Ok(data.len() as u64);
        }
        let mut delivered = 0u64;
        // One deadline for the object: a stream that continues after the parallel ranges gave
        // up has only what is left of it.
        let started = Instant::now();
        if let SizeRule::Exact(total) = rule {
            let p = &self.policy.parallel;
            if total >= p.min_file && p.total > 1 && p.window > 1 {
                match tokio::time::timeout(
                    self.policy.object_deadline,
                    self.file_parallel(cid, total, sink, &mut delivered),
                )
                .await
                {
                    Err(_) => return Err(self.deadline(cid)),
                    Ok(Ok(true)) => {
                        info!(%cid, bytes = total, ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "fetched in parallel ranges");
                        return Ok(total);
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => return Err(e),
                }
            }
        }
        let mut size = None;
        let mut tries = Tries::new(self, cid);
        tries.started = started;
        while let Some(gw) = tries.next()? {
            let before = delivered;
            match tries
                .bounded(self.file_any(gw, cid, rule, &mut delivered, &mut size, sink))
                .await?
            {
                Ok(()) => return Ok(tries.succeeded(delivered)),
                Err(e) => {
                    if delivered > before {
                        info!(gateway = %gw.label, %cid, verified = delivered, "transfer broke; will resume from the verified offset");
                    }
                    tries.failed(e).await?
                }
            }
        }
        Err(tries.exhausted())
    }

    pub(super) async fn file_once<S: BlobSink>(
        &self,
        gw: &Gateway,
        cid: &Cid,
        rule: SizeRule,
        delivered: &mut u64,
        size: &mut Option<u64>,
        sink: &mut S,
    ) -> Result<(), FetchError> {
        // A resumed transfer asks for the rest only, unless this gateway has shown that it
        // ignores entity-bytes: then the whole file is read again and what already verified
        // is skipped (deliver() never hands the sink a byte twice).
        let ranged = *delivered > 0 && !gw.refused(super::formats::NO_RANGES);
        let from = if ranged { *delivered } else { 0 };
        let resumed_at = *delivered;
        let mut path = format!("{}/ipfs/{cid}?format=car&dag-scope=entity", gw.prefix);
        if ranged {
            path.push_str(&format!("&entity-bytes={from}:*"));
        }
        debug!(gateway = %gw.label, %cid, from, "requesting CAR");
        let resp = self
            .get_following(gw, &path, &[("accept", ACCEPT_CAR)])
            .await?;
        check_status(&resp)?;
        check_content_type(&resp, "application/vnd.ipld.car", "CAR")?;
        let car = CarReader::new(resp.into_reader()).await?;
        let mut walk = Walk {
            car,
            lookahead: None,
            seen: HashSet::new(),
        };
        // DFS pre-order stack of (cid, byte offset of its content, expected size, depth).
        let mut stack: Vec<(Cid, u64, Option<u64>, usize)> = vec![(*cid, 0, *size, 0)];
        while let Some((c, start, expect, depth)) = stack.pop() {
            if depth > MAX_DAG_DEPTH {
                return Err(FetchError::TooDeep {
                    cid: cid.to_string(),
                    max: MAX_DAG_DEPTH,
                });
            }
            let block = match walk.expect(&c, |g| stack.iter().any(|p| p.0 == *g)).await {
                Ok(Some(b)) => b,
                // The stream omitted a block it had already sent (dups=n): fetch it alone.
                Ok(None) => self.block(&c).await?,
                // Right after the root of a resumed transfer, a block from before the range:
                // the gateway is sending the whole file. Read it whole from this gateway.
                Err(FetchError::UnexpectedBlock { .. } | FetchError::OutOfOrder { .. })
                    if ranged && depth > 0 && *delivered == resumed_at =>
                {
                    gw.remember(super::formats::NO_RANGES, 0);
                    drop(walk);
                    return Box::pin(self.file_once(gw, cid, rule, delivered, size, sink)).await;
                }
                Err(e) => return Err(e),
            };
            let node = FileNode::parse(&block)?;
            let actual = node.size();
            if depth == 0 {
                check_size(cid, rule, actual)?;
                *size = Some(actual);
            }
            if let Some(e) = expect {
                if e != actual {
                    return Err(FetchError::SizeMismatch {
                        cid: c.to_string(),
                        expected: e,
                        actual,
                    });
                }
            }
            match node {
                FileNode::Leaf(data) => deliver(sink, &data, start, delivered).await?,
                FileNode::Node {
                    inline, children, ..
                } => {
                    deliver(sink, &inline, start, delivered).await?;
                    let mut offset = start + inline.len() as u64;
                    let mut kids = Vec::with_capacity(children.len());
                    for (child, len) in children {
                        if in_range(offset, len, from) {
                            if stack.len() + kids.len() >= super::walk::MAX_PENDING_LINKS {
                                return Err(super::walk::too_wide(cid));
                            }
                            kids.push((child, offset, Some(len), depth + 1));
                        }
                        offset += len;
                    }
                    stack.extend(kids.into_iter().rev());
                }
            }
        }
        if let Some(extra) = walk.next().await? {
            return Err(FetchError::ExtraBlock(extra.0.to_string()));
        }
        Ok(())
    }

    fn check_deadline(&self, cid: &Cid, started: Instant) -> Result<(), FetchError> {
        if started.elapsed() >= self.policy.object_deadline {
            return Err(self.deadline(cid));
        }
        Ok(())
    }

    fn deadline(&self, cid: &Cid) -> FetchError {
        FetchError::Deadline {
            cid: cid.to_string(),
            secs: self.policy.object_deadline.as_secs(),
        }
    }

    /// Logs a failed try and sleeps before the next; returns false to fail over now.
    /// A gateway that was too slow is left at once while another remains: it will likely be
    /// slow on the next try too, and the object deadline is shared.
    async fn pause(
        &self,
        gw: &Gateway,
        cid: &Cid,
        attempt: u32,
        e: &FetchError,
        others_left: bool,
    ) -> bool {
        let last_try = attempt + 1 >= self.policy.attempts_per_gateway;
        if !e.is_transient() || last_try || (others_left && e.is_slow()) {
            warn!(gateway = %gw.label, %cid, error = %e, "gateway failed; trying the next one");
            return false;
        }
        let backoff = self
            .policy
            .backoff_base
            .saturating_mul(1 << attempt.min(16))
            .min(self.policy.backoff_max);
        let jitter = backoff.mul_f64(fastrand::f64() * 0.5);
        let wait = match e {
            FetchError::Status {
                retry_after: Some(ra),
                ..
            } => {
                if *ra > self.policy.max_retry_after {
                    warn!(gateway = %gw.label, %cid, retry_after = ra.as_secs(), "Retry-After too long; trying the next gateway");
                    return false;
                }
                (*ra).max(backoff)
            }
            _ => backoff + jitter,
        };
        warn!(gateway = %gw.label, %cid, error = %e, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "retrying");
        tokio::time::sleep(wait).await;
        true
    }
}

/// The retry and failover schedule of one object: each gateway in turn (the last healthy one
/// first), transient failures retried with backoff, content faults final, and everything
/// bounded by the object deadline.
struct Tries<'a> {
    gw: &'a Gateways,
    cid: &'a Cid,
    order: Vec<usize>,
    pos: usize,
    attempt: u32,
    started: Instant,
    failures: Vec<(String, FetchError)>,
}

impl<'a> Tries<'a> {
    fn new(gw: &'a Gateways, cid: &'a Cid) -> Self {
        Tries {
            gw,
            cid,
            order: gw.order(),
            pos: 0,
            attempt: 0,
            started: Instant::now(),
            failures: Vec::new(),
        }
    }

    /// Time left before the object deadline.
    fn remaining(&self) -> Duration {
        self.gw
            .policy
            .object_deadline
            .saturating_sub(self.started.elapsed())
    }

    /// Runs one try, cut off at the object deadline however the gateway behaves.
    async fn bounded<T>(
        &self,
        attempt: impl std::future::Future<Output = Result<T, FetchError>>,
    ) -> Result<Result<T, FetchError>, FetchError> {
        tokio::time::timeout(self.remaining(), attempt)
            .await
            .map_err(|_| {
                warn!(%self.cid, secs = self.gw.policy.object_deadline.as_secs(), "object deadline reached during a transfer");
                self.gw.deadline(self.cid)
            })
    }

    /// The gateway to try next, or `None` when every one has failed.
    fn next(&mut self) -> Result<Option<&'a Gateway>, FetchError> {
        self.gw.check_deadline(self.cid, self.started)?;
        // A gateway quarantined earlier in the run is passed over (and named in the error).
        while let Some(gi) = self.order.get(self.pos) {
            let gw = &self.gw.gateways[*gi];
            if !gw.score.is_quarantined() {
                return Ok(Some(gw));
            }
            if self.attempt == 0 {
                self.failures
                    .push((gw.label.clone(), FetchError::Quarantined));
            }
            self.pos += 1;
            self.attempt = 0;
        }
        Ok(None)
    }

    fn succeeded<T>(&self, v: T) -> T {
        if let Some(gi) = self.order.get(self.pos) {
            self.gw.preferred.store(*gi, Ordering::Relaxed);
            // It just answered: no probe needed before ranges go to it.
            self.gw.gateways[*gi].score.mark_alive();
        }
        v
    }

    /// Records a failure: pauses before a retry, or moves on to the next gateway.
    async fn failed(&mut self, e: FetchError) -> Result<(), FetchError> {
        if e.is_content_fault() {
            return Err(e);
        }
        let Some(gi) = self.order.get(self.pos) else {
            return Err(e);
        };
        let gw = &self.gw.gateways[*gi];
        if super::score::is_hostile(&e) {
            gw.score.quarantine(&gw.label, &e);
        }
        // A pause never outlasts the deadline; `next` then reports it.
        let pause = tokio::time::timeout(
            self.remaining(),
            self.gw.pause(
                gw,
                self.cid,
                self.attempt,
                &e,
                self.pos + 1 < self.order.len(),
            ),
        )
        .await
        .unwrap_or(true);
        if pause {
            self.attempt += 1;
        } else {
            self.failures.push((gw.label.clone(), e));
            self.pos += 1;
            self.attempt = 0;
        }
        Ok(())
    }

    fn exhausted(self) -> FetchError {
        FetchError::AllGatewaysFailed {
            cid: self.cid.to_string(),
            failures: self.failures,
        }
    }
}

pub use crate::fetch::unixfs::in_range;

pub(super) async fn deliver<S: BlobSink>(
    sink: &mut S,
    data: &[u8],
    start: u64,
    delivered: &mut u64,
) -> Result<(), FetchError> {
    let end = start + data.len() as u64;
    if end <= *delivered {
        return Ok(());
    }
    // Pieces arrive in file order and are contiguous, so a piece never starts past the end of
    // what has been delivered; if it did, the sizes in the DAG were inconsistent.
    let skip = delivered
        .checked_sub(start)
        .ok_or_else(|| FetchError::BadUnixfs {
            cid: "(file)".into(),
            reason: format!("gap in file content at byte {}", *delivered),
        })?;
    sink.write(
        data.get(usize::try_from(skip).unwrap_or(usize::MAX)..)
            .unwrap_or_default(),
    )
    .await
    .map_err(FetchError::Sink)?;
    *delivered = end;
    Ok(())
}

pub(super) fn check_size(cid: &Cid, rule: SizeRule, actual: u64) -> Result<(), FetchError> {
    match rule {
        SizeRule::Exact(e) if e != actual => Err(FetchError::SizeMismatch {
            cid: cid.to_string(),
            expected: e,
            actual,
        }),
        SizeRule::AtMost(max, what) if actual > max => Err(FetchError::TooLarge {
            cid: cid.to_string(),
            size: actual,
            max,
            what,
        }),
        _ => Ok(()),
    }
}

pub(super) fn check_status(resp: &crate::transport::http::Response) -> Result<(), FetchError> {
    if resp.status == http::StatusCode::OK {
        return Ok(());
    }
    let retry_after = resp.header("retry-after").and_then(parse_retry_after);
    Err(FetchError::Status {
        status: resp.status.as_u16(),
        retry_after,
    })
}

fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

pub(super) fn check_content_type(
    resp: &crate::transport::http::Response,
    want: &str,
    what: &'static str,
) -> Result<(), FetchError> {
    let ct = resp.header("content-type").unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    let want_base = want.split(';').next().unwrap_or("").trim();
    if base.eq_ignore_ascii_case(want_base) {
        Ok(())
    } else {
        Err(FetchError::ContentType(ct.to_string(), what))
    }
}

/// The block stream of one CAR response, checked against the traversal's expectations.
pub(super) struct Walk<R> {
    car: CarReader<R>,
    lookahead: Option<(Cid, Bytes)>,
    seen: HashSet<Cid>,
}

impl<R: AsyncRead + Unpin> Walk<R> {
    pub(super) fn new(car: CarReader<R>) -> Self {
        Walk {
            car,
            lookahead: None,
            seen: HashSet::new(),
        }
    }

    async fn next(&mut self) -> Result<Option<(Cid, Bytes)>, FetchError> {
        if let Some(b) = self.lookahead.take() {
            return Ok(Some(b));
        }
        self.car.next_block().await
    }

    /// Takes the next block, which must be `want`. `Ok(None)` means the stream legitimately
    /// skipped a block it had already sent. `pending` tells whether a block is still to come
    /// in the walk (asked only when the stream sent something else, to name the error).
    pub(super) async fn expect(
        &mut self,
        want: &Cid,
        pending: impl Fn(&Cid) -> bool,
    ) -> Result<Option<VerifiedBlock>, FetchError> {
        let next = self.next().await?;
        let (got, data) = match next {
            Some(b) => b,
            None if self.seen.contains(want) => return Ok(None),
            None => return Err(FetchError::Truncated(format!("CAR before block {want}"))),
        };
        if got != *want {
            if self.seen.contains(want) {
                self.lookahead = Some((got, data));
                return Ok(None);
            }
            if self.seen.contains(&got) {
                return Err(FetchError::DuplicateBlock(got.to_string()));
            }
            if pending(&got) {
                return Err(FetchError::OutOfOrder {
                    expected: want.to_string(),
                    got: got.to_string(),
                });
            }
            return Err(FetchError::UnexpectedBlock {
                expected: want.to_string(),
                got: got.to_string(),
            });
        }
        let block = verify_block(want, &data)?;
        self.seen.insert(*want);
        Ok(Some(block))
    }
}
