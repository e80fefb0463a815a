//! The range plan of one large file: byte ranges cut at the boundaries of its own DAG.
//!
//! The plan walks the DAG depth-first, in file order, opening only the dag-pb nodes larger than
//! a range (a smaller subtree, a leaf or a node's inline bytes is one piece), and cuts ranges as
//! the pieces go by. What it holds is bounded by the settings, never by the DAG's shape:
//!
//! - the pieces are counted when their parent is read, before they are kept: at
//!   [`MAX_PLAN_PIECES`] the plan stops and the file is fetched as one stream. A node that the
//!   DAG links many times counts its pieces each time (its cost), but is held once;
//! - along the current path it keeps each piece's size (8 bytes) and the CID of each node still
//!   to open (those are each larger than a range, and together no larger than the file);
//! - at most [`PLAN_CONCURRENCY`] distinct interior blocks are fetched or held ahead of the walk.

use std::collections::VecDeque;

use bytes::Bytes;
use cid::Cid;
use tracing::info;

use super::unixfs::FileNode;
use super::walk::{Ahead, Fetch};
use super::{FetchError, Gateways, MAX_DAG_DEPTH};
use crate::reference::{CODEC_DAG_PB, MAX_BLOCK_SIZE};

/// Most pieces (leaves and small subtrees) a file's range plan may hold. An 8 GiB layer of
/// 256 KiB leaves is 32,768; a plan larger than this falls back to one sequential stream.
pub const MAX_PLAN_PIECES: usize = 1 << 18;
/// Distinct interior blocks fetched or held ahead of the plan's walk.
pub const PLAN_CONCURRENCY: usize = 8;

/// One opened node's children, still to be planned.
struct Frame {
    /// Each child's size, in file order (a piece, or a node to open).
    sizes: VecDeque<u64>,
    /// The children to open, by their index among `sizes` (counted from the frame's start).
    open: VecDeque<(usize, Cid)>,
    /// Index (among the frame's children) of the front of `sizes`.
    at: usize,
    /// How many of the first `open` were announced to the window of blocks fetched ahead.
    asked: usize,
    /// Where the front of `sizes` starts in the file.
    offset: u64,
}

/// Ranges cut as pieces go by, in file order.
struct Cutter {
    range: u64,
    edge: u64,
    tail_from: u64,
    start: u64,
    end: u64,
    ranges: Vec<(u64, u64)>,
}

impl Cutter {
    fn push(&mut self, root: &Cid, offset: u64, len: u64) -> Result<(), FetchError> {
        // The first and the last ranges are cut smaller. At the start nothing is measured, so
        // every connection opens at once: smaller ranges hold less before the sink's rate says
        // how many are needed, and measure it sooner. At the end, connections go idle one by
        // one while the last ranges finish, each at one connection's speed.
        let range = if self.start < self.edge || self.end >= self.tail_from {
            self.range / 2
        } else {
            self.range
        };
        if offset != self.end {
            return Err(FetchError::BadUnixfs {
                cid: root.to_string(),
                reason: format!("gap in file content at byte {}", self.end),
            });
        }
        if self.end > self.start && self.end - self.start + len > range {
            self.ranges.push((self.start, self.end));
            self.start = self.end;
        }
        self.end = offset + len;
        Ok(())
    }

    fn finish(mut self) -> Vec<(u64, u64)> {
        if self.end > self.start {
            self.ranges.push((self.start, self.end));
        }
        self.ranges
    }
}

/// What a plan came to.
pub(super) enum Planned {
    /// The ranges, in file order.
    Ranges(Vec<(u64, u64)>),
    /// More pieces than [`MAX_PLAN_PIECES`]: fetch the file as one stream.
    TooFragmented,
}

impl Gateways {
    /// Splits the file under `root` (whose verified root node is `node`) into ranges at the
    /// boundaries of its own DAG, fetching (and verifying) interior nodes larger than a range.
    pub(super) async fn plan(&self, root: &Cid, node: FileNode) -> Result<Planned, FetchError> {
        let range = self.policy.parallel.range_bytes.max(1);
        let total = node.size();
        let edge = (self.policy.parallel.total as u64).saturating_mul(range) / 2;
        let mut cut = Cutter {
            range,
            edge,
            tail_from: total.saturating_sub(edge),
            start: 0,
            end: 0,
            ranges: Vec::new(),
        };
        let fetch: Fetch<'_> = Box::new(move |c| Box::pin(async move { self.block(&c).await }));
        let mut ahead = Ahead::new(PLAN_CONCURRENCY, fetch);
        let mut frames: Vec<Frame> = Vec::new();
        // Pieces counted so far: those cut into ranges and those waiting in the frames.
        let mut pieces = 0usize;
        if !open(root, &mut frames, &mut cut, &mut pieces, node, 0, range)? {
            return Ok(Planned::TooFragmented);
        }
        while let Some(f) = frames.last_mut() {
            let Some(len) = f.sizes.pop_front() else {
                frames.pop();
                continue;
            };
            let index = f.at;
            let offset = f.offset;
            f.at += 1;
            f.offset += len;
            let child = match f.open.front() {
                Some((i, c)) if *i == index => Some(*c),
                _ => None,
            };
            let Some(cid) = child else {
                cut.push(root, offset, len)?;
                continue;
            };
            f.open.pop_front();
            let asked = f.asked > 0;
            f.asked = f.asked.saturating_sub(1);
            if frames.len() >= MAX_DAG_DEPTH {
                return Err(FetchError::TooDeep {
                    cid: root.to_string(),
                    max: MAX_DAG_DEPTH,
                });
            }
            ask_ahead(&mut frames, &mut ahead);
            let block = ahead.take(&cid, asked).await?;
            let node = FileNode::parse(&block)?;
            drop(block);
            if node.size() != len {
                return Err(FetchError::SizeMismatch {
                    cid: cid.to_string(),
                    expected: len,
                    actual: node.size(),
                });
            }
            // The node stops being a piece; its children become pieces.
            pieces = pieces.saturating_sub(1);
            if !open(
                root,
                &mut frames,
                &mut cut,
                &mut pieces,
                node,
                offset,
                range,
            )? {
                return Ok(Planned::TooFragmented);
            }
        }
        Ok(Planned::Ranges(cut.finish()))
    }
}

/// Announces the next nodes to open, in walk order (the innermost frame first), until the
/// window of blocks fetched ahead is full.
fn ask_ahead(frames: &mut [Frame], ahead: &mut Ahead<'_>) {
    for f in frames.iter_mut().rev() {
        while let Some((_, c)) = f.open.get(f.asked) {
            if !ahead.ask(c) {
                return;
            }
            f.asked += 1;
        }
    }
}

/// Takes in an opened node at `start`: its inline bytes are a piece, cut at once; its children
/// are counted, then kept as a frame. `false`: the plan would pass [`MAX_PLAN_PIECES`].
fn open(
    root: &Cid,
    frames: &mut Vec<Frame>,
    cut: &mut Cutter,
    pieces: &mut usize,
    node: FileNode,
    start: u64,
    range: u64,
) -> Result<bool, FetchError> {
    let (inline, children) = match node {
        FileNode::Leaf(data) => (data, Vec::new()),
        FileNode::Node {
            inline, children, ..
        } => (inline, children),
    };
    let count = children.len() + usize::from(!inline.is_empty());
    *pieces = pieces.saturating_add(count);
    if *pieces > MAX_PLAN_PIECES {
        info!(%root, pieces = *pieces, max = MAX_PLAN_PIECES, "the file's DAG has more pieces than a range plan holds");
        return Ok(false);
    }
    cut_inline(root, cut, &inline, start)?;
    let mut sizes = VecDeque::with_capacity(children.len());
    let mut to_open = VecDeque::new();
    for (i, (cid, len)) in children.into_iter().enumerate() {
        if len > range && cid.codec() == CODEC_DAG_PB {
            to_open.push_back((i, cid));
        } else if cid.codec() != CODEC_DAG_PB && len > MAX_BLOCK_SIZE as u64 {
            // A raw leaf is one block: a parent that claims more for it is wrong, and the claim
            // must not size a buffer.
            return Err(FetchError::BadUnixfs {
                cid: root.to_string(),
                reason: format!("a raw leaf of {len} bytes, over the block limit"),
            });
        }
        sizes.push_back(len);
    }
    frames.push(Frame {
        sizes,
        open: to_open,
        at: 0,
        asked: 0,
        offset: start + inline.len() as u64,
    });
    Ok(true)
}

fn cut_inline(root: &Cid, cut: &mut Cutter, inline: &Bytes, start: u64) -> Result<(), FetchError> {
    if inline.is_empty() {
        return Ok(());
    }
    cut.push(root, start, inline.len() as u64)
}
