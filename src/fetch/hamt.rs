//! HAMT-sharded UnixFS directories ([`cidboot_ipld::hamt`]), and reading a whole one from
//! gateways.

pub use cidboot_ipld::hamt::*;

use cid::Cid;

use super::FetchError;
use crate::reference::VerifiedBlock;

/// Shard blocks fetched at once while reading a sharded directory.
pub const SHARD_FETCH_CONCURRENCY: usize = 8;

/// Reads the whole sharded directory whose verified root shard is `root`: level by level, each
/// distinct shard block fetched once (a few at a time) and read as it arrives, each verified
/// against the CID its parent named and checked against every place it sits. What is held is
/// bounded before it is spent: the next level's shard links (at most [`MAX_SHARD_BLOCKS`],
/// counted before they are kept), [`SHARD_FETCH_CONCURRENCY`] blocks, and the entries (at most
/// [`MAX_DIR_ENTRIES`], each name at most 255 bytes).
pub async fn read_directory(
    gw: &super::Gateways,
    root: VerifiedBlock,
) -> Result<super::unixfs::Directory, FetchError> {
    use futures_util::stream::{self, StreamExt};
    use std::collections::HashMap;
    let cid = *root.cid();
    let too_big = |what: &str, max: usize| {
        FetchError::Unsupported(format!(
            "sharded directory {cid} has more than {max} {what} (the limit)"
        ))
    };
    let mut entries = Vec::new();
    let mut blocks = 1usize;
    let mut first = Some(root);
    // Each distinct shard block of the level, with every path (slots from the root) at which
    // the level links it: a shard linked many times is fetched once and counted each time.
    let mut level: Vec<(Cid, Vec<Vec<u8>>)> = vec![(cid, vec![Vec::new()])];
    while !level.is_empty() {
        let mut next: Vec<(Cid, Vec<Vec<u8>>)> = Vec::new();
        let mut index: HashMap<Cid, usize> = HashMap::new();
        let mut fetched = stream::iter(level)
            .map(|(c, paths)| {
                let given = first.take();
                async move {
                    let block = match given {
                        Some(b) => b,
                        None => gw.block(&c).await?,
                    };
                    Ok::<_, FetchError>((block, paths))
                }
            })
            .buffered(SHARD_FETCH_CONCURRENCY);
        while let Some(r) = fetched.next().await {
            let (block, paths) = r?;
            let mut parsed: Option<Shard> = None;
            for path in paths {
                // A shard holding entries fits one place only (their hashes lead there), so
                // it is checked again at each; one of sub-shards only reads the same anywhere.
                let shard = match &parsed {
                    Some(s) if !s.has_entries() => s.clone(),
                    _ => Shard::parse(&block, &path)?,
                };
                for (slot, link) in &shard.links {
                    match link {
                        ShardLink::Entry { name, cid } => {
                            if entries.len() >= MAX_DIR_ENTRIES {
                                return Err(too_big("entries", MAX_DIR_ENTRIES));
                            }
                            entries.push((name.clone(), *cid));
                        }
                        ShardLink::Shard(s) => {
                            blocks += 1;
                            if blocks > MAX_SHARD_BLOCKS {
                                return Err(too_big("shard blocks", MAX_SHARD_BLOCKS));
                            }
                            let mut p = path.clone();
                            p.push(*slot);
                            match index.get(s) {
                                Some(i) => next[*i].1.push(p),
                                None => {
                                    index.insert(*s, next.len());
                                    next.push((*s, vec![p]));
                                }
                            }
                        }
                    }
                }
                parsed = Some(shard);
            }
        }
        level = next;
    }
    tracing::debug!(%cid, entries = entries.len(), shards = blocks, "read a HAMT-sharded directory");
    Ok(super::unixfs::Directory { entries })
}
