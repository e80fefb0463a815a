//! HAMT-sharded UnixFS directories ([`cidboot_ipld::hamt`]), and reading a whole one from
//! gateways.

pub use cidboot_ipld::hamt::*;

use super::FetchError;
use crate::reference::VerifiedBlock;

/// Shard blocks fetched at once while reading a sharded directory.
pub const SHARD_FETCH_CONCURRENCY: usize = 8;

/// Reads the whole sharded directory whose verified root shard is `root`: every shard, level by
/// level, a few blocks at a time, each verified against the CID its parent named.
pub async fn read_directory(
    gw: &super::Gateways,
    root: VerifiedBlock,
) -> Result<super::unixfs::Directory, FetchError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let cid = *root.cid();
    let too_big = |what: &str, max: usize| {
        FetchError::Unsupported(format!(
            "sharded directory {cid} has more than {max} {what} (the limit)"
        ))
    };
    let mut entries = Vec::new();
    let mut blocks = 1usize;
    let mut level = vec![(cid, Vec::new(), Some(root))];
    while !level.is_empty() {
        let fetched: Vec<(Vec<u8>, VerifiedBlock)> = stream::iter(level)
            .map(|(c, path, block)| async move {
                let block = match block {
                    Some(b) => b,
                    None => gw.block(&c).await?,
                };
                Ok::<_, FetchError>((path, block))
            })
            .buffered(SHARD_FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (path, block) in fetched {
            for (slot, link) in Shard::parse(&block, &path)?.links {
                match link {
                    ShardLink::Entry { name, cid } => {
                        if entries.len() >= MAX_DIR_ENTRIES {
                            return Err(too_big("entries", MAX_DIR_ENTRIES));
                        }
                        entries.push((name, cid));
                    }
                    ShardLink::Shard(s) => {
                        blocks += 1;
                        if blocks > MAX_SHARD_BLOCKS {
                            return Err(too_big("shard blocks", MAX_SHARD_BLOCKS));
                        }
                        let mut p = path.clone();
                        p.push(slot);
                        next.push((s, p, None));
                    }
                }
            }
        }
        level = next;
    }
    tracing::debug!(%cid, entries = entries.len(), shards = blocks, "read a HAMT-sharded directory");
    Ok(super::unixfs::Directory { entries })
}
