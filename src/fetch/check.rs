//! What one gateway does with a CID, asked kind by kind: a raw block (timed to its response
//! headers), a one-block CAR, and a range of a file (`entity-bytes`). Every answer is
//! verified as a fetch would verify it; `cidboot check` reports them beside a full fetch.

use std::time::{Duration, Instant};

use cid::Cid;

use super::formats::{NO_CAR, NO_RANGES};
use super::gateway::{check_content_type, check_status, Gateway, SizeRule, ACCEPT_RAW};
use super::{BlobSink, FetchError, Gateways};
use crate::reference::{verify_block, CODEC_RAW, MAX_BLOCK_SIZE};

/// How a gateway answered one kind of request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Served, and what it served verified.
    Served,
    /// Said it does not serve this kind (HTTP 400, 406 or 501).
    Refused(u16),
    /// Answered a range request with the whole file (which verified).
    Ignored,
    /// Failed otherwise: the error.
    Failed(String),
    /// Not asked: the reason.
    NotAsked(&'static str),
}

/// What one gateway served of one CID.
#[derive(Debug, Clone)]
pub struct Formats {
    /// `format=raw` of the root block.
    pub raw: Answer,
    /// `format=car&dag-scope=block` of the root block.
    pub car: Answer,
    /// `format=car&dag-scope=entity&entity-bytes=HALF:*` of a file.
    pub ranges: Answer,
    /// From the raw request to its response headers.
    pub ttfb: Option<Duration>,
}

/// Discards verified bytes.
struct Discard;

impl BlobSink for Discard {
    async fn write(&mut self, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

fn answer(r: Result<(), FetchError>) -> Answer {
    match r {
        Ok(()) => Answer::Served,
        Err(FetchError::Status { status, .. }) if matches!(status, 400 | 406 | 501) => {
            Answer::Refused(status)
        }
        Err(e) => Answer::Failed(e.to_string()),
    }
}

impl Gateways {
    /// Whether the first gateway served a block that failed verification in this run.
    pub fn first_quarantined(&self) -> bool {
        self.gateways
            .first()
            .is_some_and(|g| g.score.is_quarantined())
    }

    /// The raw root block from the first gateway, timed to its headers: whether it answers
    /// at all, and how fast.
    pub async fn probe_raw(&self, root: &Cid) -> Formats {
        let mut f = Formats {
            raw: Answer::NotAsked("no gateway"),
            car: Answer::NotAsked("the full fetch failed"),
            ranges: Answer::NotAsked("the full fetch failed"),
            ttfb: None,
        };
        let Some(gw) = self.gateways.first() else {
            return f;
        };
        let started = Instant::now();
        let path = format!("{}/ipfs/{root}?format=raw", gw.prefix);
        let r = async {
            let resp = self
                .get_following(gw, &path, &[("accept", ACCEPT_RAW)])
                .await?;
            f.ttfb = Some(started.elapsed());
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
            verify_block(root, &data)?;
            Ok(())
        }
        .await;
        f.raw = answer(r);
        f
    }

    /// Completes `f` with the CAR kinds from the first gateway: the root block as a CAR, and
    /// the second half of `file` (the image's largest file, with its size) by `entity-bytes`.
    pub async fn probe_car(&self, root: &Cid, file: Option<(&Cid, u64)>, f: &mut Formats) {
        let Some(gw) = self.gateways.first() else {
            return;
        };
        f.car = if gw.refused(NO_CAR) {
            Answer::NotAsked("it refused CAR responses during the fetch")
        } else {
            answer(self.block_via_car(gw, root).await.map(|_| ()))
        };
        f.ranges = match file {
            _ if f.car != Answer::Served => Answer::NotAsked("ranges are CAR requests"),
            Some((cid, size)) if cid.codec() != CODEC_RAW && size >= 2 => {
                self.probe_range(gw, cid, size).await
            }
            _ => Answer::NotAsked("no file of more than one block"),
        };
    }

    async fn probe_range(&self, gw: &Gateway, cid: &Cid, size: u64) -> Answer {
        let mut delivered = size / 2;
        let mut known = Some(size);
        let r = self
            .file_once(
                gw,
                cid,
                SizeRule::Exact(size),
                &mut delivered,
                &mut known,
                &mut Discard,
            )
            .await;
        match answer(r) {
            Answer::Served if gw.refused(NO_RANGES) => Answer::Ignored,
            Answer::Served if delivered != size => {
                Answer::Failed(format!("the range ended at byte {delivered} of {size}"))
            }
            a => a,
        }
    }
}
