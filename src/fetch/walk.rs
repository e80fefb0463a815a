//! Depth-first walks of a file's DAG in bounded memory, whatever the DAG's shape.
//!
//! A hostile DAG can be wide (a 2 MiB dag-pb node holds about 49,000 links), deep (32 levels)
//! and repetitive (one huge node linked hundreds of times). A walk that collects a level before
//! looking at it holds all of that at once; these walks instead hold the path from the root to
//! where they are, the links still to visit along it ([`MAX_PENDING_LINKS`] at most, checked
//! before they are kept), and a window of blocks fetched ahead ([`Ahead`]) in which a block
//! that the walk will meet several times is fetched and held once.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use cid::Cid;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::unixfs::FileNode;
use super::{FetchError, MAX_DAG_DEPTH};
use crate::reference::VerifiedBlock;

/// Most links one walk keeps waiting (the siblings still to visit along its current path).
/// A balanced DAG of 1024-wide nodes keeps a few thousand; a wider or deeper one is refused
/// before its links are kept.
pub const MAX_PENDING_LINKS: usize = 1 << 18;

/// What fetches one verified block for a walk.
pub(crate) type Fetch<'a> =
    Box<dyn Fn(Cid) -> BoxFuture<'a, Result<VerifiedBlock, FetchError>> + Send + Sync + 'a>;

struct Slot {
    block: Option<VerifiedBlock>,
    /// How many times the walk has announced it will take this block and not yet taken it.
    uses: usize,
}

/// Blocks fetched ahead of a walk: at most `limit` distinct blocks in flight or held at once,
/// each fetched once however many times the walk will meet it.
pub(crate) struct Ahead<'a> {
    limit: usize,
    fetch: Fetch<'a>,
    running: FuturesUnordered<BoxFuture<'a, (Cid, Result<VerifiedBlock, FetchError>)>>,
    slots: HashMap<Cid, Slot>,
}

impl<'a> Ahead<'a> {
    pub(crate) fn new(limit: usize, fetch: Fetch<'a>) -> Self {
        Ahead {
            limit: limit.max(1),
            fetch,
            running: FuturesUnordered::new(),
            slots: HashMap::new(),
        }
    }

    fn start(&mut self, cid: Cid) {
        let fut = (self.fetch)(cid);
        self.running.push(Box::pin(async move { (cid, fut.await) }));
        self.slots.insert(
            cid,
            Slot {
                block: None,
                uses: 1,
            },
        );
    }

    /// Announces that the walk will take `cid`: fetched now if the window has room, or counted
    /// against the copy already fetched or on its way. `false`: no room, nothing was done.
    pub(crate) fn ask(&mut self, cid: &Cid) -> bool {
        if let Some(s) = self.slots.get_mut(cid) {
            s.uses += 1;
            return true;
        }
        if self.slots.len() >= self.limit {
            return false;
        }
        self.start(*cid);
        true
    }

    /// The block the walk needs now: announced before (`asked`), or fetched now, over the
    /// window's limit if it must be (the walk cannot go on without it).
    pub(crate) async fn take(
        &mut self,
        cid: &Cid,
        asked: bool,
    ) -> Result<VerifiedBlock, FetchError> {
        if !asked {
            match self.slots.get_mut(cid) {
                Some(s) => s.uses += 1,
                None => self.start(*cid),
            }
        }
        loop {
            if let Some(s) = self.slots.get_mut(cid) {
                if let Some(b) = &s.block {
                    let b = b.clone();
                    s.uses = s.uses.saturating_sub(1);
                    if s.uses == 0 {
                        self.slots.remove(cid);
                    }
                    return Ok(b);
                }
            }
            match self.running.next().await {
                Some((c, Ok(b))) => {
                    if let Some(s) = self.slots.get_mut(&c) {
                        s.block = Some(b);
                    }
                }
                Some((_, Err(e))) => return Err(e),
                None => {
                    return Err(FetchError::Truncated(format!(
                        "walk: block {cid} was never asked for"
                    )))
                }
            }
        }
    }
}

/// The error for a walk whose pending links would pass [`MAX_PENDING_LINKS`].
pub(crate) fn too_wide(root: &Cid) -> FetchError {
    FetchError::TooWide {
        cid: root.to_string(),
        max: MAX_PENDING_LINKS,
    }
}

struct Frame {
    /// `(child, offset of its content, its size)`, in file order.
    children: VecDeque<(Cid, u64, u64)>,
    /// How many of the first `children` were announced to [`Ahead`].
    asked: usize,
}

/// The content of a file DAG in file order, walked depth-first with its blocks fetched a few at
/// a time ahead of the walk: each piece (a leaf, or a node's inline bytes) with its offset.
/// Only children that `wanted(offset, len)` selects are visited.
pub(crate) struct FileWalk<'a> {
    root: Cid,
    frames: Vec<Frame>,
    ahead: Ahead<'a>,
    wanted: Box<dyn Fn(u64, u64) -> bool + Send + Sync + 'a>,
    pending: usize,
    next_piece: Option<(u64, Bytes)>,
}

impl<'a> FileWalk<'a> {
    /// A walk of the file whose verified root node is `node`, its content starting at `start`.
    pub(crate) fn new(
        root: Cid,
        node: FileNode,
        start: u64,
        window: usize,
        fetch: Fetch<'a>,
        wanted: Box<dyn Fn(u64, u64) -> bool + Send + Sync + 'a>,
    ) -> Result<Self, FetchError> {
        let mut w = FileWalk {
            root,
            frames: Vec::new(),
            ahead: Ahead::new(window, fetch),
            wanted,
            pending: 0,
            next_piece: None,
        };
        w.enter(node, start)?;
        Ok(w)
    }

    /// Takes in a verified node at `start`: a leaf is the next piece; a node's inline bytes
    /// are, and its wanted children become a frame.
    fn enter(&mut self, node: FileNode, start: u64) -> Result<(), FetchError> {
        match node {
            FileNode::Leaf(data) => self.next_piece = Some((start, data)),
            FileNode::Node {
                inline, children, ..
            } => {
                if self.frames.len() >= MAX_DAG_DEPTH {
                    return Err(FetchError::TooDeep {
                        cid: self.root.to_string(),
                        max: MAX_DAG_DEPTH,
                    });
                }
                let mut offset = start + inline.len() as u64;
                let mut kept = VecDeque::new();
                for (child, len) in children {
                    if (self.wanted)(offset, len) {
                        if self.pending >= MAX_PENDING_LINKS {
                            return Err(too_wide(&self.root));
                        }
                        self.pending += 1;
                        kept.push_back((child, offset, len));
                    }
                    offset += len;
                }
                self.frames.push(Frame {
                    children: kept,
                    asked: 0,
                });
                self.next_piece = Some((start, inline));
            }
        }
        Ok(())
    }

    /// Announces the next children in walk order (the innermost frame first) until the
    /// window is full.
    fn ask_ahead(&mut self) {
        for f in self.frames.iter_mut().rev() {
            while let Some((c, _, _)) = f.children.get(f.asked) {
                if !self.ahead.ask(c) {
                    return;
                }
                f.asked += 1;
            }
        }
    }

    /// The next piece of content with its offset, or `None` at the end of the walk.
    pub(crate) async fn next(&mut self) -> Result<Option<(u64, Bytes)>, FetchError> {
        loop {
            if let Some(p) = self.next_piece.take() {
                return Ok(Some(p));
            }
            let Some(f) = self.frames.last_mut() else {
                return Ok(None);
            };
            let Some((cid, offset, len)) = f.children.pop_front() else {
                self.frames.pop();
                continue;
            };
            let asked = f.asked > 0;
            f.asked = f.asked.saturating_sub(1);
            self.pending = self.pending.saturating_sub(1);
            self.ask_ahead();
            let block = self.ahead.take(&cid, asked).await?;
            let node = FileNode::parse(&block)?;
            drop(block);
            if node.size() != len {
                return Err(FetchError::SizeMismatch {
                    cid: cid.to_string(),
                    expected: len,
                    actual: node.size(),
                });
            }
            self.enter(node, offset)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::{cid_for, verify_block, CODEC_RAW};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_block_met_many_times_is_fetched_once_per_window() {
        let data = Bytes::from_static(b"leaf");
        let cid = cid_for(CODEC_RAW, &data);
        let calls = Arc::new(AtomicUsize::new(0));
        let c2 = calls.clone();
        let fetch: Fetch<'static> = Box::new(move |c| {
            let data = data.clone();
            c2.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { Ok(verify_block(&c, &data)?) })
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut a = Ahead::new(2, fetch);
            for _ in 0..100 {
                assert!(a.ask(&cid));
            }
            for _ in 0..100 {
                a.take(&cid, true).await.unwrap();
            }
            assert!(a.slots.is_empty());
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
