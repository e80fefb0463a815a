//! The content-addressed formats cidboot reads and writes, at the boundary where untrusted
//! bytes become trusted: the CID allow-list and block verification ([`block`]), the CARv1
//! stream format ([`car`]), dag-pb ([`dagpb`]), UnixFS files and directories ([`unixfs`]) and
//! HAMT-sharded directories ([`hamt`]).
//!
//! "Verified" is a type here: [`VerifiedBlock`] is made by [`verify_block`], after the bytes
//! hashed to their CID (or, for an identity CID only, from the CID itself), and the decoders of
//! a block's structure take one. The CAR
//! reader, which faces the stream before anything is verified, bounds every length before it
//! allocates. The crate has no async runtime, no HTTP and no system calls: fetching, serving
//! and caching blocks is the caller's.

#![warn(missing_docs)]

pub mod block;
pub mod car;
pub mod dagpb;
pub mod hamt;
mod pb;
pub mod unixfs;

pub use block::{verify_block, BlockError, VerifiedBlock};

/// What is wrong with bytes that do not decode: a CAR stream, a dag-pb node, its UnixFS data
/// or a HAMT shard.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A protobuf message (a dag-pb node or link, UnixFS data) breaks the wire format or the
    /// canonical form.
    #[error("malformed {what}: {reason}")]
    Decode {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A CAR stream's header or section is malformed.
    #[error("malformed CAR stream: {0}")]
    BadCar(String),
    /// A CAR section claims more bytes than a block may have.
    #[error("CAR section of {size} bytes exceeds the {max}-byte block limit")]
    SectionTooLarge {
        /// The length the section claimed.
        size: u64,
        /// The largest block accepted.
        max: u64,
    },
    /// A block read as part of a file is something else.
    #[error("{cid} is not a UnixFS file (it is {kind})")]
    NotAFile {
        /// The block.
        cid: String,
        /// What it is instead.
        kind: String,
    },
    /// A block read as a directory is something else.
    #[error("{cid} is not a UnixFS directory (it is {kind})")]
    NotADirectory {
        /// The block.
        cid: String,
        /// What it is instead.
        kind: String,
    },
    /// A UnixFS node (file, directory or shard) breaks the UnixFS specification.
    #[error("malformed UnixFS node {cid}: {reason}")]
    BadUnixfs {
        /// The block.
        cid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Well-formed, but outside what cidboot reads (another HAMT hash function or fanout, a
    /// sharded directory read as a plain one).
    #[error("not supported: {0}")]
    Unsupported(String),
}
