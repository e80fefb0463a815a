//! Parallel, multi-gateway fetch of one large UnixFS file.
//!
//! Public gateways limit each connection and each client, so one stream from one gateway is
//! as slow as the slowest of those limits. Here the file is cut into byte ranges at the
//! boundaries of its own DAG (leaves, or subtrees no larger than a range), and the ranges are
//! fetched concurrently from every live gateway with `entity-bytes`, several connections per
//! gateway. Each range's CAR is walked from the file's root exactly as a whole-file transfer
//! is: every block is verified against the CID its parent names before any byte of it is
//! kept. Verified ranges are handed to the sink strictly in file order.
//!
//! Memory is bounded: at most [`ParallelPolicy::window`] ranges are held at once (fetching,
//! or verified and waiting for their turn), plus the range the sink waits for when it has to
//! be fetched again, plus at most [`ParallelPolicy::max_hedges`] second copies of a stalled
//! range: [`ParallelPolicy::max_held_bytes`] in all, whatever the file's size. The sink gets
//! each range in writes of at most `WRITE_CHUNK` (256 KiB), so what it queues is a few of
//! those, not whole ranges. When the sink is slower than the gateways (a fast local gateway
//! feeding the inflater), far fewer ranges are held: until the sink's rate and a range's
//! time are measured, none starts while a verified one waits for the busy sink; after, the
//! ranges ahead of the sink are only as many as keep it fed (see `file_parallel`), one or
//! two instead of the window. Ranges are taken from one queue by whichever gateway has a free
//! connection, so a fast gateway takes more of them (work stealing); a gateway measured at
//! under a quarter of the best one's throughput keeps one connection only; and a range that
//! runs far longer than its expected time is hedged on another gateway, the first verified copy
//! winning.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cid::Cid;
use futures_util::future::{abortable, AbortHandle, Aborted};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, info, warn};

use super::car::CarReader;
use super::formats::{NO_CAR, NO_DFS, NO_RANGES, NO_RAW, RAW_CONCURRENCY};
use super::gateway::{check_content_type, check_status, Gateway, Walk, ACCEPT_CAR};
use super::plan::Planned;
pub use super::plan::MAX_PLAN_PIECES;
use super::score::{ewma, is_hostile, PROBE_CID, PROBE_TIMEOUT};
use super::unixfs::FileNode;
use super::walk::{too_wide, Fetch, FileWalk, MAX_PENDING_LINKS};
use super::{BlobSink, FetchError, Gateways, MAX_DAG_DEPTH};

/// Bytes per second over one connection above which a gateway gets at most two connections.
const FAST_CONNECTION: f64 = 32e6;
/// Most failures remembered for the error message.
const MAX_FAILURES_KEPT: usize = 16;
/// How often the scheduler looks for stalled ranges and gateways out of their backoff.
const TICK: Duration = Duration::from_millis(100);
/// Most bytes of a verified range handed to the sink in one write. The inflater's channel
/// queues four writes, each a copy: in pieces this size it holds 1 MiB per blob, not four
/// whole ranges.
const WRITE_CHUNK: usize = 256 * 1024;
/// Slack over the ranges a consumer-bound sink needs ahead of it (see `file_parallel`), for
/// the spread of range times.
const LOOKAHEAD_SLACK: f64 = 1.5;

/// How a large file is fetched in parallel. Every number is documented in docs/limits.md.
#[derive(Debug, Clone)]
pub struct ParallelPolicy {
    /// Files of at least this many bytes are fetched in ranges; smaller ones as one stream.
    pub min_file: u64,
    /// Target bytes per range (a single leaf larger than this is a range of its own).
    pub range_bytes: u64,
    /// Connections open at once to one gateway.
    pub per_gateway: usize,
    /// Connections open at once for one file, across gateways (hedges excepted).
    pub total: usize,
    /// Ranges held at once: being fetched, or verified and waiting for their turn.
    pub window: usize,
    /// A range is hedged after `hedge_factor` times its expected time, and never sooner than
    /// this.
    pub hedge_min: Duration,
    /// How many times its expected time a range may take before it is hedged.
    pub hedge_factor: f64,
    /// Second copies of stalled ranges in flight at once.
    pub max_hedges: usize,
}

impl ParallelPolicy {
    /// The most bytes one blob's ranges can hold at once: the window, the refetched head and
    /// the hedges, each a range (or a leaf of at most one block).
    pub fn max_held_bytes(&self) -> u64 {
        (self.window as u64 + 1 + self.max_hedges as u64).saturating_mul(
            self.range_bytes
                .max(crate::reference::MAX_BLOCK_SIZE as u64),
        )
    }
}

impl Default for ParallelPolicy {
    fn default() -> Self {
        ParallelPolicy {
            min_file: 8 << 20,
            range_bytes: 2 << 20,
            per_gateway: 4,
            total: 12,
            window: 16,
            hedge_min: Duration::from_secs(2),
            hedge_factor: 4.0,
            max_hedges: 2,
        }
    }
}

type RangeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Bytes, Duration), FetchError>> + Send + 'a>>;
type Running<'a> = FuturesUnordered<
    Pin<
        Box<
            dyn Future<Output = (u64, Result<Result<(Bytes, Duration), FetchError>, Aborted>)>
                + Send
                + 'a,
        >,
    >,
>;

struct Attempt {
    range: usize,
    gw: usize,
    started: Instant,
    abort: AbortHandle,
    hedge: bool,
}

/// What one file's fetch knows about each gateway.
#[derive(Default, Clone)]
struct Local {
    busy: usize,
    errors_in_a_row: u32,
    not_before: Option<Instant>,
    /// Out of this file's parallel work (too many failures, or a final one).
    benched: bool,
}

impl Gateways {
    /// Probes every gateway that needs it, at once: `/ipfs/bafkqaaa?format=raw` answers from
    /// the CID alone, so a gateway that cannot answer it in [`PROBE_TIMEOUT`] is down.
    pub(super) async fn probe_all(&self) {
        let probes = self
            .gateways
            .iter()
            .filter(|g| !g.score.is_quarantined() && g.score.needs_probe())
            .map(|g| self.probe(g));
        futures_util::future::join_all(probes).await;
    }

    async fn probe(&self, gw: &Gateway) {
        let path = format!("{}/ipfs/{PROBE_CID}?format=raw", gw.prefix);
        let t0 = Instant::now();
        let r = tokio::time::timeout(
            PROBE_TIMEOUT,
            self.get_following(gw, &path, &[("accept", "application/vnd.ipld.raw")]),
        )
        .await;
        let took = t0.elapsed();
        match r {
            // Any answer short of a server error shows that the gateway is up; what it says
            // about the identity CID does not matter.
            Ok(Ok(resp)) if resp.status.as_u16() < 500 => {
                gw.score.set_live(&gw.label, true, took, None)
            }
            Ok(Ok(resp)) => {
                let e = FetchError::Status {
                    status: resp.status.as_u16(),
                    retry_after: None,
                };
                gw.score.set_live(&gw.label, false, took, Some(&e))
            }
            Ok(Err(e)) => gw.score.set_live(&gw.label, false, took, Some(&e)),
            Err(_) => gw.score.set_live(
                &gw.label,
                false,
                took,
                Some(&FetchError::Read(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer to the probe in {}s", PROBE_TIMEOUT.as_secs()),
                ))),
            ),
        }
    }

    /// Whether a gateway can take ranges of this file now, and how many connections it may
    /// have open.
    fn slots(&self, gi: usize, local: &Local, best_rate: Option<f64>) -> usize {
        let gw = &self.gateways[gi];
        let p = &self.policy.parallel;
        if gw.score.is_quarantined()
            || local.benched
            || gw.refused(NO_RANGES)
            || (gw.refused(NO_CAR) && gw.refused(NO_RAW))
            || gw.score.liveness() != super::score::Liveness::Alive
            || local.not_before.is_some_and(|t| Instant::now() < t)
        {
            return 0;
        }
        match (gw.score.figures().rate, best_rate) {
            (Some(r), Some(best)) if r < best / 4.0 => 1,
            // One connection already this fast: more would only hold more ranges in memory.
            (Some(r), _) if r >= FAST_CONNECTION => p.per_gateway.clamp(1, 2),
            _ => p.per_gateway.max(1),
        }
    }

    /// The gateway with the most throughput to spare: its rate (or the best known, if not yet
    /// measured) times its reliability, shared among its open connections.
    fn pick(&self, locals: &[Local], best_rate: Option<f64>, not: Option<usize>) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (gi, local) in locals.iter().enumerate() {
            if Some(gi) == not || local.busy >= self.slots(gi, local, best_rate) {
                continue;
            }
            let s = &self.gateways[gi].score;
            let rate = s.figures().rate.or(best_rate).unwrap_or(1e9);
            let value = rate * s.reliability() / (local.busy + 1) as f64;
            if best.is_none_or(|(_, v)| value > v) {
                best = Some((gi, value));
            }
        }
        best.map(|(gi, _)| gi)
    }

    fn best_rate(&self) -> Option<f64> {
        self.gateways
            .iter()
            .filter(|g| !g.score.is_quarantined())
            .filter_map(|g| g.score.figures().rate)
            .reduce(f64::max)
    }

    /// Fetches `[from, to)` of the file `root` (of `size` bytes) from one gateway, verified.
    /// Returns the bytes and the time to the response headers.
    fn range<'a>(
        &'a self,
        gw: &'a Gateway,
        root: &'a Cid,
        size: u64,
        from: u64,
        to: u64,
    ) -> RangeFuture<'a> {
        Box::pin(async move {
            if gw.car_files() {
                match self.range_car(gw, root, size, from, to).await {
                    // Blocks in another order than depth-first: the range is asked for again
                    // block by block (see formats::NO_DFS).
                    Err(FetchError::OutOfOrder { .. }) => gw.remember(NO_DFS, 0),
                    r => return r,
                }
            }
            let t0 = Instant::now();
            let mut buf = BytesMut::with_capacity(usize::try_from(to - from).unwrap_or(0));
            let mut at = from;
            let node = FileNode::parse(&self.block_any(gw, root).await?)?;
            let ttfb = t0.elapsed();
            self.range_raw(gw, root, node, from, to, &mut at, &mut buf)
                .await?;
            finish(root, buf, at, to, ttfb)
        })
    }

    async fn range_car(
        &self,
        gw: &Gateway,
        root: &Cid,
        size: u64,
        from: u64,
        to: u64,
    ) -> Result<(Bytes, Duration), FetchError> {
        let path = format!(
            "{}/ipfs/{root}?format=car&dag-scope=entity&entity-bytes={from}:{}",
            gw.prefix,
            to - 1
        );
        debug!(gateway = %gw.label, %root, from, to, "requesting range");
        let t0 = Instant::now();
        let resp = self
            .get_following(gw, &path, &[("accept", ACCEPT_CAR)])
            .await?;
        let ttfb = t0.elapsed();
        check_status(&resp)?;
        check_content_type(&resp, "application/vnd.ipld.car", "CAR")?;
        let car = CarReader::new(resp.into_reader()).await?;
        let mut walk = Walk::new(car);
        let mut buf = BytesMut::with_capacity(usize::try_from(to - from).unwrap_or(0));
        let mut at = from;
        let mut stack: Vec<(Cid, u64, u64, usize)> = vec![(*root, 0, size, 0)];
        while let Some((c, start, expect, depth)) = stack.pop() {
            if depth > MAX_DAG_DEPTH {
                return Err(FetchError::TooDeep {
                    cid: root.to_string(),
                    max: MAX_DAG_DEPTH,
                });
            }
            let block = match walk.expect(&c, |g| stack.iter().any(|p| p.0 == *g)).await {
                Ok(Some(b)) => b,
                Ok(None) => self.block_any(gw, &c).await?,
                // A block from before the range, right after the root: the gateway ignores
                // entity-bytes and is sending the whole file.
                Err(FetchError::UnexpectedBlock { .. } | FetchError::OutOfOrder { .. })
                    if depth > 0 && at == from && from > 0 =>
                {
                    gw.remember(NO_RANGES, 0);
                    return Err(FetchError::RangesIgnored(gw.label.clone()));
                }
                Err(e) => return Err(e),
            };
            let node = FileNode::parse(&block)?;
            if node.size() != expect {
                return Err(FetchError::SizeMismatch {
                    cid: c.to_string(),
                    expected: expect,
                    actual: node.size(),
                });
            }
            match node {
                FileNode::Leaf(data) => keep(root, &mut buf, &data, start, to, &mut at)?,
                FileNode::Node {
                    inline, children, ..
                } => {
                    keep(root, &mut buf, &inline, start, to, &mut at)?;
                    let mut offset = start + inline.len() as u64;
                    let mut kids = Vec::with_capacity(children.len());
                    for (child, len) in children {
                        if overlaps(offset, len, from, to) {
                            if stack.len() + kids.len() >= MAX_PENDING_LINKS {
                                return Err(too_wide(root));
                            }
                            kids.push((child, offset, len, depth + 1));
                        }
                        offset += len;
                    }
                    stack.extend(kids.into_iter().rev());
                }
            }
        }
        // Blocks after the range (a gateway that ignores the range's end) are not read: the
        // connection is dropped with the rest of the response.
        finish(root, buf, at, to, ttfb)
    }

    /// The range walk for a gateway that only serves raw blocks, from its verified root node.
    #[allow(clippy::too_many_arguments)]
    async fn range_raw(
        &self,
        gw: &Gateway,
        root: &Cid,
        node: FileNode,
        from: u64,
        to: u64,
        at: &mut u64,
        buf: &mut BytesMut,
    ) -> Result<(), FetchError> {
        let fetch: Fetch<'_> =
            Box::new(move |c| Box::pin(async move { self.block_any(gw, &c).await }));
        let mut walk = FileWalk::new(
            *root,
            node,
            0,
            RAW_CONCURRENCY,
            fetch,
            Box::new(move |offset, len| overlaps(offset, len, from, to)),
        )?;
        while let Some((start, data)) = walk.next().await? {
            keep(root, buf, &data, start, to, at)?;
        }
        Ok(())
    }

    /// Streams the file `root` of exactly `size` bytes into `sink` in verified ranges from
    /// every usable gateway. `Ok(true)`: all of it was delivered. `Ok(false)`: the ranges
    /// could not be fetched in parallel (no gateway serves ranges, all are down, or the DAG is
    /// too fragmented); `*delivered` bytes were delivered and the caller continues with one
    /// stream from there.
    pub(super) async fn file_parallel<S: BlobSink>(
        &self,
        root: &Cid,
        size: u64,
        sink: &mut S,
        delivered: &mut u64,
    ) -> Result<bool, FetchError> {
        let p = self.policy.parallel.clone();
        // The probes run beside the root block, the plan and the ranges: a gateway takes
        // ranges once its probe has answered, and one whose probe times out delays nobody.
        let mut probes = std::pin::pin!(self.probe_all());
        let mut probing = true;
        let planned = async {
            let node = FileNode::parse(&self.block(root).await?)?;
            super::gateway::check_size(root, super::gateway::SizeRule::Exact(size), node.size())?;
            self.plan(root, node).await
        };
        let mut planned = std::pin::pin!(planned);
        let planned = loop {
            tokio::select! {
                r = &mut planned => break r,
                () = &mut probes, if probing => probing = false,
            }
        };
        let ranges = match planned? {
            Planned::Ranges(r) => r,
            Planned::TooFragmented => {
                info!(%root, max_pieces = MAX_PLAN_PIECES, "file DAG too fragmented to fetch in ranges: fetching it as one stream");
                return Ok(false);
            }
        };
        if ranges.len() < 2 {
            return Ok(false);
        }
        info!(%root, size, ranges = ranges.len(), "fetching in parallel ranges");
        let n = self.gateways.len();
        let mut locals = vec![Local::default(); n];
        let mut pending: BTreeSet<usize> = (0..ranges.len()).collect();
        let mut done: BTreeMap<usize, Bytes> = BTreeMap::new();
        let mut flying: HashMap<usize, Vec<u64>> = HashMap::new();
        let mut attempts: HashMap<u64, Attempt> = HashMap::new();
        let mut tries = vec![0u32; ranges.len()];
        let max_tries = u32::try_from(n)
            .unwrap_or(u32::MAX)
            .saturating_mul(self.policy.attempts_per_gateway.max(1))
            .max(2)
            .saturating_mul(2);
        let mut failures: Vec<(String, FetchError)> = Vec::new();
        let mut running: Running<'_> = FuturesUnordered::new();
        let mut next_id = 0u64;
        let mut next = 0usize; // the next range to hand to the sink
        let mut sink_slot = Some(sink);
        type Writing<'s, S> =
            Pin<Box<dyn Future<Output = (&'s mut S, std::io::Result<()>, u64)> + Send + 's>>;
        let mut writing: Option<Writing<'_, S>> = None;
        let mut hedges = 0usize;
        let mut writing_len = 0u64;
        // What bounds the lookahead when the sink is slower than the gateways: how fast the
        // sink takes bytes (all written over the time spent writing) and how long a range
        // takes to fetch, per byte of it (a moving average: the first ranges are smaller).
        let mut sink_bytes = 0u64;
        let mut sink_busy = Duration::ZERO;
        let mut write_started = Instant::now();
        let mut secs_per_byte: Option<f64> = None;

        loop {
            let held_bytes = done.values().map(|d| d.len() as u64).sum::<u64>()
                + flying
                    .iter()
                    .map(|(r, ids)| (ranges[*r].1 - ranges[*r].0) * ids.len() as u64)
                    .sum::<u64>()
                + if writing.is_some() { writing_len } else { 0 };
            self.peak_held
                .fetch_max(held_bytes, std::sync::atomic::Ordering::Relaxed);
            let best = self.best_rate();
            // Hand the next verified range to the sink.
            if writing.is_none() {
                if let Some(data) = done.remove(&next) {
                    if let Some(s) = sink_slot.take() {
                        let len = data.len() as u64;
                        writing_len = len;
                        write_started = Instant::now();
                        writing = Some(Box::pin(async move {
                            let r = write_chunked(s, &data).await;
                            (s, r, len)
                        }));
                    }
                }
            }
            if next == ranges.len() && writing.is_none() {
                return Ok(true);
            }
            // Start ranges while the limits allow. Before anything is measured, a verified
            // range waiting for a busy sink means the consumer is the bottleneck: fetching
            // further ahead would only use memory. Once the sink's rate and a range's time are
            // measured, the ranges held ahead of the sink (fetching or verified) are no more
            // than keep it fed (Little's law: its rate times a range's time, in ranges, with
            // some slack; a range of L bytes takes L times the seconds per byte, and the sink
            // takes L bytes in L over its rate, so L cancels), so that a fast local gateway
            // holds one range ahead where slow public ones get the whole window.
            let sink_rate = (sink_busy > Duration::ZERO && sink_bytes > 0)
                .then(|| sink_bytes as f64 / sink_busy.as_secs_f64());
            let needed = match (sink_rate, secs_per_byte) {
                (Some(c), Some(t)) => Some(LOOKAHEAD_SLACK * c * t),
                _ => None,
            };
            while let Some(&r) = pending.first() {
                let ahead = flying.len() + done.len();
                let held = ahead + usize::from(writing.is_some());
                let normal = attempts.values().filter(|a| !a.hedge).count();
                // Until the rates are measured: a verified range waiting for the busy sink.
                let consumer_bound =
                    needed.is_none() && writing.is_some() && done.contains_key(&(next + 1));
                let enough_ahead = needed.is_some_and(|n| ahead as f64 >= n);
                // The range the sink waits for always goes (one range over the window at most):
                // everything held is waiting for it.
                let head = r == next;
                if normal >= p.total
                    || (!head && (held >= p.window || consumer_bound || enough_ahead))
                {
                    break;
                }
                let Some(gi) = self.pick(&locals, best, None) else {
                    break;
                };
                pending.remove(&r);
                tries[r] += 1;
                let id = next_id;
                next_id += 1;
                self.launch(
                    &mut running,
                    &mut attempts,
                    &mut locals,
                    id,
                    r,
                    gi,
                    root,
                    size,
                    ranges[r],
                    false,
                );
                flying.entry(r).or_default().push(id);
            }
            // Hedge stalled ranges, the earliest first.
            if hedges < p.max_hedges {
                let mut stalled: Vec<(usize, usize)> = flying
                    .iter()
                    .filter(|(_, ids)| ids.len() == 1)
                    .filter_map(|(r, ids)| {
                        let a = attempts.get(&ids[0])?;
                        let (from, to) = ranges[*r];
                        let limit = self.hedge_after(a.gw, to - from);
                        (a.started.elapsed() > limit).then_some((*r, a.gw))
                    })
                    .collect();
                stalled.sort();
                for (r, slow) in stalled {
                    if hedges >= p.max_hedges {
                        break;
                    }
                    let Some(gi) = self.pick(&locals, best, Some(slow)) else {
                        break;
                    };
                    info!(%root, range = r, slow = %self.gateways[slow].label, to = %self.gateways[gi].label, "range stalled: hedging it on another gateway");
                    let id = next_id;
                    next_id += 1;
                    self.launch(
                        &mut running,
                        &mut attempts,
                        &mut locals,
                        id,
                        r,
                        gi,
                        root,
                        size,
                        ranges[r],
                        true,
                    );
                    hedges += 1;
                    flying.entry(r).or_default().push(id);
                }
            }
            // Nothing running and nothing can start: no gateway can serve ranges now.
            if running.is_empty() && writing.is_none() && !pending.is_empty() {
                // A probe still out may yet bring a gateway in.
                let waiting = probing
                    || locals.iter().enumerate().any(|(gi, l)| {
                        l.not_before.is_some_and(|t| Instant::now() < t)
                            && !l.benched
                            && !self.gateways[gi].score.is_quarantined()
                    });
                if !waiting {
                    // Deliver what is verified and contiguous, then continue as one stream.
                    let Some(sink) = sink_slot.take() else {
                        return Ok(false);
                    };
                    while let Some(data) = done.remove(&next) {
                        write_chunked(sink, &data).await.map_err(FetchError::Sink)?;
                        *delivered += data.len() as u64;
                        next += 1;
                    }
                    warn!(%root, verified = *delivered, "no gateway can serve ranges: continuing as one stream");
                    return Ok(false);
                }
            }
            tokio::select! {
                Some((id, out)) = running.next(), if !running.is_empty() => {
                    let Some(a) = attempts.remove(&id) else { continue };
                    locals[a.gw].busy = locals[a.gw].busy.saturating_sub(1);
                    if a.hedge {
                        hedges = hedges.saturating_sub(1);
                    }
                    if let Some(ids) = flying.get_mut(&a.range) {
                        ids.retain(|i| *i != id);
                    }
                    let gw = &self.gateways[a.gw];
                    let out = match out {
                        Ok(o) => o,
                        // Aborted: its twin won.
                        Err(Aborted) => continue,
                    };
                    match out {
                        Ok((data, ttfb)) => {
                            gw.score.success(data.len() as u64, ttfb, a.started.elapsed());
                            if !a.hedge && !data.is_empty() {
                                let t = a.started.elapsed().as_secs_f64() / data.len() as f64;
                                secs_per_byte = Some(ewma(secs_per_byte, t));
                            }
                            locals[a.gw].errors_in_a_row = 0;
                            // The first verified copy wins; a twin still running is cut.
                            for other in flying.remove(&a.range).unwrap_or_default() {
                                if let Some(o) = attempts.remove(&other) {
                                    o.abort.abort();
                                    locals[o.gw].busy = locals[o.gw].busy.saturating_sub(1);
                                    if o.hedge {
                                        hedges = hedges.saturating_sub(1);
                                    }
                                    self.gateways[o.gw].score.slow(0, o.started.elapsed());
                                    debug!(gateway = %self.gateways[o.gw].label, range = o.range, "cut: another gateway delivered the range first");
                                }
                            }
                            if a.range >= next {
                                done.insert(a.range, data);
                            }
                        }
                        Err(e) => {
                            if e.is_content_fault() {
                                return Err(e);
                            }
                            if is_hostile(&e) {
                                gw.score.quarantine(&gw.label, &e);
                                // Nothing more from it: its other transfers are cut and their
                                // ranges go back to the queue.
                                let mine: Vec<u64> = attempts
                                    .iter()
                                    .filter(|(_, o)| o.gw == a.gw)
                                    .map(|(id, _)| *id)
                                    .collect();
                                for other in mine {
                                    let Some(o) = attempts.remove(&other) else { continue };
                                    o.abort.abort();
                                    locals[o.gw].busy = locals[o.gw].busy.saturating_sub(1);
                                    if o.hedge {
                                        hedges = hedges.saturating_sub(1);
                                    }
                                    if let Some(ids) = flying.get_mut(&o.range) {
                                        ids.retain(|i| *i != other);
                                        if ids.is_empty() {
                                            flying.remove(&o.range);
                                            pending.insert(o.range);
                                        }
                                    }
                                }
                            } else {
                                gw.score.error();
                                let l = &mut locals[a.gw];
                                l.errors_in_a_row += 1;
                                let retry_after = match &e {
                                    FetchError::Status { retry_after: Some(ra), .. } => Some(*ra),
                                    _ => None,
                                };
                                if !e.is_transient()
                                    || l.errors_in_a_row >= self.policy.attempts_per_gateway
                                    || retry_after.is_some_and(|ra| ra > self.policy.max_retry_after)
                                {
                                    l.benched = true;
                                    warn!(gateway = %gw.label, %root, error = %e, "gateway failed on a range: no more ranges of this file from it");
                                } else {
                                    let backoff = self
                                        .policy
                                        .backoff_base
                                        .saturating_mul(1 << l.errors_in_a_row.min(16))
                                        .min(self.policy.backoff_max);
                                    let wait = retry_after.unwrap_or_default().max(backoff);
                                    l.not_before = Some(Instant::now() + wait);
                                    warn!(gateway = %gw.label, %root, error = %e, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "range failed; its range goes back to the queue");
                                }
                            }
                            if failures.len() >= MAX_FAILURES_KEPT {
                                failures.remove(0);
                            }
                            failures.push((gw.label.clone(), e));
                            let alive = flying.get(&a.range).is_some_and(|ids| !ids.is_empty());
                            if !alive && !done.contains_key(&a.range) && a.range >= next {
                                flying.remove(&a.range);
                                if tries[a.range] >= max_tries {
                                    return Err(FetchError::AllGatewaysFailed {
                                        cid: root.to_string(),
                                        failures,
                                    });
                                }
                                pending.insert(a.range);
                            }
                        }
                    }
                }
                (s, r, len) = async {
                    match writing.as_mut() {
                        Some(w) => w.await,
                        None => std::future::pending().await,
                    }
                } => {
                    writing = None;
                    r.map_err(FetchError::Sink)?;
                    sink_slot = Some(s);
                    sink_bytes += len;
                    sink_busy += write_started.elapsed();
                    *delivered += len;
                    next += 1;
                }
                () = &mut probes, if probing => probing = false,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// How long a range may run before a second copy is asked for elsewhere.
    fn hedge_after(&self, gi: usize, len: u64) -> Duration {
        let p = &self.policy.parallel;
        let f = self.gateways[gi].score.figures();
        let rate = self.best_rate().or(f.rate);
        let expected = match rate {
            Some(r) if r > 0.0 => {
                f.ttfb.unwrap_or_default() + Duration::from_secs_f64(len as f64 / r)
            }
            // Nothing measured yet: wait a good while before doubling the load.
            _ => p.hedge_min * 5,
        };
        expected.mul_f64(p.hedge_factor).max(p.hedge_min)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch<'a>(
        &'a self,
        running: &mut Running<'a>,
        attempts: &mut HashMap<u64, Attempt>,
        locals: &mut [Local],
        id: u64,
        range: usize,
        gi: usize,
        root: &'a Cid,
        size: u64,
        (from, to): (u64, u64),
        hedge: bool,
    ) {
        let gw = &self.gateways[gi];
        let (fut, abort) = abortable(self.range(gw, root, size, from, to));
        running.push(Box::pin(async move { (id, fut.await) }));
        locals[gi].busy += 1;
        attempts.insert(
            id,
            Attempt {
                range,
                gw: gi,
                started: Instant::now(),
                abort,
                hedge,
            },
        );
    }
}

/// Hands a verified range to the sink in pieces of at most `WRITE_CHUNK` bytes.
async fn write_chunked<S: BlobSink>(sink: &mut S, data: &[u8]) -> std::io::Result<()> {
    for piece in data.chunks(WRITE_CHUNK) {
        sink.write(piece).await?;
    }
    Ok(())
}

/// Whether a child covering `[offset, offset+len)` holds bytes of `[from, to)`. The dev
/// gateway's rule for an inclusive `entity-bytes=from:to-1` sends exactly these.
fn overlaps(offset: u64, len: u64, from: u64, to: u64) -> bool {
    offset < to && (offset.saturating_add(len) > from || (len == 0 && offset >= from))
}

/// Keeps the part of a verified piece at `start` that falls in `[*at, to)`.
fn keep(
    root: &Cid,
    buf: &mut BytesMut,
    data: &[u8],
    start: u64,
    to: u64,
    at: &mut u64,
) -> Result<(), FetchError> {
    let end = (start + data.len() as u64).min(to);
    if end <= *at {
        return Ok(());
    }
    let skip = at.checked_sub(start).ok_or_else(|| FetchError::BadUnixfs {
        cid: root.to_string(),
        reason: format!("gap in file content at byte {}", *at),
    })?;
    buf.extend_from_slice(
        data.get(
            usize::try_from(skip).unwrap_or(usize::MAX)
                ..usize::try_from(end - start).unwrap_or(usize::MAX),
        )
        .unwrap_or_default(),
    );
    *at = end;
    Ok(())
}

fn finish(
    root: &Cid,
    buf: BytesMut,
    at: u64,
    to: u64,
    ttfb: Duration,
) -> Result<(Bytes, Duration), FetchError> {
    if at != to {
        return Err(FetchError::Truncated(format!(
            "CAR of {root} bytes ..{to}: it ended at byte {at}"
        )));
    }
    Ok((buf.freeze(), ttfb))
}
