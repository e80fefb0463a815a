//! Gateways that speak only one of the two trustless formats. One that refuses `format=car`
//! (406, 400 or 501) is used block by block with `format=raw`, the client walking the file DAG
//! itself a few blocks at a time; one that refuses `format=raw` is asked for single blocks as
//! CARs (`dag-scope=block`). What each gateway refused is remembered for the rest of the run.

use std::sync::atomic::Ordering;

use cid::Cid;
use tracing::{info, warn};

use super::car::CarReader;
use super::gateway::{
    check_content_type, check_size, check_status, deliver, in_range, Gateway, SizeRule, ACCEPT_CAR,
};
use super::unixfs::FileNode;
use super::walk::{Fetch, FileWalk};
use super::{BlobSink, FetchError, Gateways};
use crate::reference::{verify_block, VerifiedBlock};

/// Blocks fetched ahead of one file's walk from a raw-only gateway.
pub const RAW_CONCURRENCY: usize = 8;

/// The gateway refused `format=car`.
pub(super) const NO_CAR: u8 = 1;
/// The gateway refused `format=raw`.
pub(super) const NO_RAW: u8 = 2;
/// The gateway ignored `entity-bytes`: it resent a file from its start when asked to resume.
pub(super) const NO_RANGES: u8 = 4;
/// The gateway sent a file's CAR in another order than the depth-first one asked for
/// (`order=unk`, which the trustless gateway spec allows, e.g. breadth-first). Reading such a
/// stream would mean holding blocks until their turn, as many as the gateway chooses; instead
/// the gateway is asked again block by block (`format=raw`), the client walking the DAG in its
/// own order with the raw walk's few blocks ahead.
pub(super) const NO_DFS: u8 = 8;

/// The statuses with which a gateway says it does not serve a format.
fn refuses(e: &FetchError) -> Option<u16> {
    match e {
        FetchError::Status { status, .. } if matches!(status, 400 | 406 | 501) => Some(*status),
        _ => None,
    }
}

impl Gateway {
    pub(super) fn refused(&self, what: u8) -> bool {
        self.refused.load(Ordering::Relaxed) & what != 0
    }

    /// Whether this gateway's CARs of whole files can be walked as they arrive.
    pub(super) fn car_files(&self) -> bool {
        !self.refused(NO_CAR) && !self.refused(NO_DFS)
    }

    pub(super) fn remember(&self, what: u8, status: u16) {
        self.refused.fetch_or(what, Ordering::Relaxed);
        if what == NO_RANGES {
            warn!(gateway = %self.label, "the gateway ignored entity-bytes and resent the file from its start: resuming from it by reading whole files, skipping what has already verified");
        } else if what == NO_DFS {
            warn!(gateway = %self.label, "the gateway sent a CAR's blocks in another order than depth-first (order=unk, which the trustless gateway spec allows): fetching files from it block by block (format=raw) from the verified offset on");
        } else if what == NO_CAR {
            info!(gateway = %self.label, status, "the gateway refuses CAR responses: fetching from it block by block (format=raw)");
        } else {
            info!(gateway = %self.label, status, "the gateway refuses raw blocks: fetching from it by CAR requests (dag-scope=block)");
        }
    }
}

impl Gateways {
    /// One verified block from one gateway, in whichever format it speaks.
    pub(super) async fn block_any(
        &self,
        gw: &Gateway,
        cid: &Cid,
    ) -> Result<VerifiedBlock, FetchError> {
        if !gw.refused(NO_RAW) {
            match self.block_once(gw, cid).await {
                Err(e) => match refuses(&e) {
                    Some(status) => gw.remember(NO_RAW, status),
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
        self.block_via_car(gw, cid).await
    }

    /// One block as a CAR of exactly that block.
    pub(super) async fn block_via_car(
        &self,
        gw: &Gateway,
        cid: &Cid,
    ) -> Result<VerifiedBlock, FetchError> {
        let path = format!("{}/ipfs/{cid}?format=car&dag-scope=block", gw.prefix);
        let resp = self
            .get_following(gw, &path, &[("accept", ACCEPT_CAR)])
            .await?;
        check_status(&resp)?;
        check_content_type(&resp, "application/vnd.ipld.car", "CAR")?;
        let mut car = CarReader::new(resp.into_reader()).await?;
        let (got, data) = car
            .next_block()
            .await?
            .ok_or_else(|| FetchError::Truncated(format!("CAR before block {cid}")))?;
        if got != *cid {
            return Err(FetchError::UnexpectedBlock {
                expected: cid.to_string(),
                got: got.to_string(),
            });
        }
        let block = verify_block(cid, &data)?;
        if let Some((extra, _)) = car.next_block().await? {
            return Err(FetchError::ExtraBlock(extra.to_string()));
        }
        Ok(block)
    }

    /// A file from one gateway, from byte `*delivered` on, in whichever format it speaks.
    pub(super) async fn file_any<S: BlobSink>(
        &self,
        gw: &Gateway,
        cid: &Cid,
        rule: SizeRule,
        delivered: &mut u64,
        size: &mut Option<u64>,
        sink: &mut S,
    ) -> Result<(), FetchError> {
        if gw.car_files() {
            match self.file_once(gw, cid, rule, delivered, size, sink).await {
                // What verified so far stays delivered; the rest is asked for block by block.
                Err(FetchError::OutOfOrder { .. }) => gw.remember(NO_DFS, 0),
                Err(e) => match refuses(&e) {
                    Some(status) => gw.remember(NO_CAR, status),
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
        let from = *delivered;
        let root = FileNode::parse(&self.block_any(gw, cid).await?)?;
        let actual = root.size();
        check_size(cid, rule, actual)?;
        if let Some(e) = *size {
            if e != actual {
                return Err(FetchError::SizeMismatch {
                    cid: cid.to_string(),
                    expected: e,
                    actual,
                });
            }
        }
        *size = Some(actual);
        let fetch: Fetch<'_> =
            Box::new(move |c| Box::pin(async move { self.block_any(gw, &c).await }));
        let mut walk = FileWalk::new(
            *cid,
            root,
            0,
            RAW_CONCURRENCY,
            fetch,
            Box::new(move |offset, len| in_range(offset, len, from)),
        )?;
        while let Some((start, data)) = walk.next().await? {
            deliver(sink, &data, start, delivered).await?;
        }
        Ok(())
    }
}
