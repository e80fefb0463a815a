//! Trustless retrieval: the gateway client over the formats of the IPLD crate (CAR, dag-pb,
//! UnixFS, HAMT).
//!
//! Trust boundary: bytes from a gateway are untrusted until [`crate::reference::verify_block`]
//! has matched them to the CID that the traversal expected at that position and made them a
//! [`VerifiedBlock`](crate::reference::VerifiedBlock). Only verified bytes leave this module.

pub mod car;
pub mod check;
/// dag-pb, decoded strictly (the IPLD crate).
pub use cidboot_ipld::dagpb;
pub mod formats;
pub mod gateway;
pub mod hamt;
pub mod parallel;
pub mod plan;
pub mod redirect;
pub mod score;
pub mod walk;
/// UnixFS files and directories (the IPLD crate).
pub use cidboot_ipld::unixfs;

use std::future::Future;
use std::io;
use std::time::Duration;

pub use gateway::{GatewayPolicy, Gateways};

use cidboot_ipld::DecodeError;

use crate::reference::{BlockError, RefError};
use crate::transport::TransportError;

/// Deepest file or directory DAG followed. A balanced DAG of 1024-wide nodes over 1 MiB
/// chunks needs depth 3 for a petabyte, so 32 only ever stops hostile chains.
pub const MAX_DAG_DEPTH: usize = 32;

/// Where verified bytes go, in order.
pub trait BlobSink: Send {
    /// Takes the next verified bytes; an error stops the fetch.
    fn write(&mut self, data: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
}

/// A sink that collects into memory; used only for documents already capped by size.
impl BlobSink for Vec<u8> {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }
}

/// Why a fetch failed; failover keeps one per gateway and reports them all.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum FetchError {
    #[error(transparent)]
    Ref(#[from] RefError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("malformed {what}: {reason}")]
    Decode { what: &'static str, reason: String },
    #[error("malformed CAR stream: {0}")]
    BadCar(String),
    #[error("CAR section of {size} bytes exceeds the {max}-byte block limit")]
    BlockTooLarge { size: u64, max: u64 },
    #[error("truncated stream: {0} ended early")]
    Truncated(String),
    #[error("unexpected block {got}: the traversal expected {expected}, and {got} is not part of this DAG")]
    UnexpectedBlock { expected: String, got: String },
    #[error(
        "blocks out of order: expected {expected} next but got {got}, which comes later in the DAG"
    )]
    OutOfOrder { expected: String, got: String },
    #[error("duplicate block {0} in the stream")]
    DuplicateBlock(String),
    #[error("unexpected extra block {0} after the DAG was complete")]
    ExtraBlock(String),
    #[error("{cid} is not a UnixFS file (it is {kind})")]
    NotAFile { cid: String, kind: String },
    #[error("{cid} is not a UnixFS directory (it is {kind})")]
    NotADirectory { cid: String, kind: String },
    #[error("malformed UnixFS node {cid}: {reason}")]
    BadUnixfs { cid: String, reason: String },
    #[error("DAG under {cid} is deeper than {max} levels")]
    TooDeep { cid: String, max: usize },
    #[error(
        "DAG under {cid} is too wide to walk: more than {max} links would wait at once (the limit)"
    )]
    TooWide { cid: String, max: usize },
    #[error("size mismatch: {cid} holds {actual} bytes but {expected} were expected")]
    SizeMismatch {
        cid: String,
        expected: u64,
        actual: u64,
    },
    #[error("{cid} holds {size} bytes, over the {max}-byte cap for {what}")]
    TooLarge {
        cid: String,
        size: u64,
        max: u64,
        what: &'static str,
    },
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{path:?} not found in directory {cid}")]
    NotFound { cid: String, path: String },
    #[error("HTTP {status}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("redirect {0}")]
    Redirect(String),
    #[error("answered with content type {0:?} where a {1} was requested")]
    ContentType(String, &'static str),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("reading the response failed: {0}")]
    Read(io::Error),
    #[error("storing verified data failed: {0}")]
    Sink(io::Error),
    #[error("gave up on {cid} after {secs}s (deadline)")]
    Deadline { cid: String, secs: u64 },
    #[error("the gateway {0} ignores entity-bytes: it cannot serve one range of a file")]
    RangesIgnored(String),
    #[error(
        "not used: it served a block that failed verification earlier in this run (quarantined)"
    )]
    Quarantined,
    #[error("no gateway could serve {cid}:{}", summarize(cid, failures))]
    AllGatewaysFailed {
        cid: String,
        failures: Vec<(String, FetchError)>,
    },
}

/// The decoders' errors, as the fetch side has always named them.
impl From<DecodeError> for FetchError {
    fn from(e: DecodeError) -> FetchError {
        match e {
            DecodeError::Decode { what, reason } => FetchError::Decode { what, reason },
            DecodeError::BadCar(reason) => FetchError::BadCar(reason),
            DecodeError::SectionTooLarge { size, max } => FetchError::BlockTooLarge { size, max },
            DecodeError::NotAFile { cid, kind } => FetchError::NotAFile { cid, kind },
            DecodeError::NotADirectory { cid, kind } => FetchError::NotADirectory { cid, kind },
            DecodeError::BadUnixfs { cid, reason } => FetchError::BadUnixfs { cid, reason },
            DecodeError::Unsupported(what) => FetchError::Unsupported(what),
        }
    }
}

fn summarize(cid: &str, failures: &[(String, FetchError)]) -> String {
    failures
        .iter()
        .map(|(gw, e)| match e {
            // The trustless gateway answer for content it does not hold (or cannot find).
            FetchError::Status { status: 404, .. } => format!(
                "\n  - {gw}: HTTP 404: {} does not have {cid} (publish the CAR there, or give a gateway that has it)",
                gateway_host(gw)
            ),
            e => format!("\n  - {gw}: {e}"),
        })
        .collect()
}

/// The host (and port) of a gateway's label (`https://host:port/prefix`).
fn gateway_host(label: &str) -> &str {
    let rest = label.split_once("://").map_or(label, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

impl FetchError {
    pub(crate) fn from_io(e: io::Error) -> FetchError {
        FetchError::Read(e)
    }

    /// True when the fault lies in content that hashed correctly: every gateway would serve
    /// the same bytes, so trying another one cannot help.
    pub fn is_content_fault(&self) -> bool {
        matches!(
            self,
            FetchError::NotAFile { .. }
                | FetchError::NotADirectory { .. }
                | FetchError::BadUnixfs { .. }
                | FetchError::TooDeep { .. }
                | FetchError::TooWide { .. }
                | FetchError::SizeMismatch { .. }
                | FetchError::TooLarge { .. }
                | FetchError::Unsupported(_)
                | FetchError::NotFound { .. }
                | FetchError::Sink(_)
                | FetchError::Decode { .. }
        ) || matches!(self, FetchError::Ref(r) if !matches!(r, RefError::Cid(BlockError::HashMismatch{..} | BlockError::BlockTooLarge{..})))
            || matches!(self, FetchError::Block(b) if !matches!(b, BlockError::HashMismatch{..} | BlockError::BlockTooLarge{..}))
    }

    /// True when a response body came too slowly: a silence over the idle timeout, or less
    /// than the throughput floor over a window.
    pub fn is_slow(&self) -> bool {
        matches!(self, FetchError::Read(e) if e.kind() == io::ErrorKind::TimedOut)
    }

    /// True when the same gateway may do better on a second try (after a pause).
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status == 429 || *status >= 500,
            FetchError::Transport(t) => !t.is_final(),
            FetchError::Read(_) | FetchError::Truncated(_) => true,
            _ => false,
        }
    }
}
