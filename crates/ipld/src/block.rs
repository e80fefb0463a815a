//! The CID allow-list and block verification: the only place a block becomes trusted.
//!
//! A CID on the allow-list is one whose multihash cidboot can recompute, so every byte fetched
//! under it can be checked. Identity multihashes are refused because they carry their content
//! inline and so prove nothing about where it came from. [`verify_block`] makes a
//! [`VerifiedBlock`] from fetched bytes, and the decoders of a block's structure take one; the
//! only other constructor, `VerifiedBlock::inline`, takes an identity CID, whose content is the
//! CID itself, for the gateways' liveness probe (content under an identity CID is refused).

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use cid::Cid;
use sha2::{Digest, Sha256};

/// Multicodec for raw bytes.
pub const CODEC_RAW: u64 = 0x55;
/// Multicodec for dag-pb (UnixFS).
pub const CODEC_DAG_PB: u64 = 0x70;
/// Multihash code for sha2-256, the only hash on the allow-list.
pub const MH_SHA2_256: u64 = 0x12;
/// Multihash code for identity, which is always refused.
pub const MH_IDENTITY: u64 = 0x00;
/// Largest block accepted from anywhere (the IPFS network's own block limit).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;

/// Why a CID is refused, or why bytes are not the block it names.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The CID's content is its own multihash.
    #[error("CID {0} uses the identity multihash: its content is inline and proves nothing")]
    Identity(String),
    /// The CID's hash function is not sha2-256.
    #[error("CID {cid} uses multihash 0x{code:x}, which is not on the allow-list (sha2-256)")]
    HashNotAllowed {
        /// The CID.
        cid: String,
        /// Its multihash code.
        code: u64,
    },
    /// The CID says sha2-256 but its digest is not 32 bytes.
    #[error("CID {cid} has a sha2-256 digest of {len} bytes (expected 32)")]
    BadDigestLength {
        /// The CID.
        cid: String,
        /// The digest's length.
        len: usize,
    },
    /// The CID's codec is neither raw nor dag-pb.
    #[error("CID {cid} uses codec 0x{codec:x}; only raw (0x55) and dag-pb (0x70) are supported")]
    CodecNotSupported {
        /// The CID.
        cid: String,
        /// Its codec.
        codec: u64,
    },
    /// The bytes are over [`MAX_BLOCK_SIZE`].
    #[error("block {cid} is {size} bytes, over the {max}-byte block limit")]
    BlockTooLarge {
        /// The CID the bytes came as.
        cid: String,
        /// Their length.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes do not hash to the CID's digest.
    #[error("block {cid} does not hash to its CID (got sha2-256 {got})")]
    HashMismatch {
        /// The CID the bytes came as.
        cid: String,
        /// The sha2-256 of what arrived, in hex.
        got: String,
    },
}

/// Checks that `cid` is one cidboot will fetch and verify.
pub fn check_cid(cid: &Cid) -> Result<(), BlockError> {
    let mh = cid.hash();
    match mh.code() {
        MH_SHA2_256 => {}
        MH_IDENTITY => return Err(BlockError::Identity(cid.to_string())),
        code => {
            return Err(BlockError::HashNotAllowed {
                cid: cid.to_string(),
                code,
            })
        }
    }
    if mh.digest().len() != 32 {
        return Err(BlockError::BadDigestLength {
            cid: cid.to_string(),
            len: mh.digest().len(),
        });
    }
    match cid.codec() {
        CODEC_RAW | CODEC_DAG_PB => Ok(()),
        codec => Err(BlockError::CodecNotSupported {
            cid: cid.to_string(),
            codec,
        }),
    }
}

/// Verifies that `data` is exactly the block named by `cid`, which must be on the allow-list.
/// The block keeps `data` itself (a reference count, not a copy).
pub fn verify_block(cid: &Cid, data: &Bytes) -> Result<VerifiedBlock, BlockError> {
    check_cid(cid)?;
    if data.len() > MAX_BLOCK_SIZE {
        return Err(BlockError::BlockTooLarge {
            cid: cid.to_string(),
            size: data.len(),
            max: MAX_BLOCK_SIZE,
        });
    }
    let got = Sha256::digest(data);
    if got[..] != *cid.hash().digest() {
        return Err(BlockError::HashMismatch {
            cid: cid.to_string(),
            got: hex::encode(got),
        });
    }
    Ok(VerifiedBlock {
        cid: *cid,
        data: data.clone(),
    })
}

/// A block whose bytes are exactly what its CID names.
///
/// Made by [`verify_block`] (and, for an identity CID, whose content is the CID itself, by
/// [`VerifiedBlock::inline`]); there is no other constructor, so a function that takes one
/// cannot be handed bytes that did not verify. It reads as the block's [`Bytes`].
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedBlock {
    cid: Cid,
    data: Bytes,
}

impl VerifiedBlock {
    /// The content an identity CID carries inline, which is what it names by construction.
    /// `None` for any other CID. A fetch never takes one ([`check_cid`] refuses identity:
    /// such a CID proves nothing about where the content came from); the gateways answer
    /// with it, as for the `bafkqaaa` liveness probe.
    pub fn inline(cid: &Cid) -> Option<VerifiedBlock> {
        (cid.hash().code() == MH_IDENTITY).then(|| VerifiedBlock {
            cid: *cid,
            data: Bytes::copy_from_slice(cid.hash().digest()),
        })
    }

    /// The CID the block verified against.
    pub fn cid(&self) -> &Cid {
        &self.cid
    }

    /// The block's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The block's bytes, leaving the guarantee behind.
    pub fn into_data(self) -> Bytes {
        self.data
    }
}

impl Deref for VerifiedBlock {
    type Target = Bytes;
    fn deref(&self) -> &Bytes {
        &self.data
    }
}

impl AsRef<[u8]> for VerifiedBlock {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl fmt::Debug for VerifiedBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedBlock")
            .field("cid", &self.cid.to_string())
            .field("len", &self.data.len())
            .finish()
    }
}

/// The CIDv1 of `data` as a raw sha2-256 block.
pub fn raw_cid(data: &[u8]) -> Cid {
    cid_for(CODEC_RAW, data)
}

/// The CIDv1 of `data` under `codec` with a sha2-256 multihash.
pub fn cid_for(codec: u64, data: &[u8]) -> Cid {
    let digest = Sha256::digest(data);
    cid_from_sha256(codec, digest.into())
}

/// A CIDv1 from a sha2-256 digest that is already known.
pub fn cid_from_sha256(codec: u64, digest: [u8; 32]) -> Cid {
    // A 32-byte digest always fits the 64-byte multihash, so wrap cannot fail; fall back to the
    // default (all-zero, identity) multihash only to stay panic-free, which check_cid refuses.
    let mh = multihash::Multihash::<64>::wrap(MH_SHA2_256, &digest).unwrap_or_default();
    Cid::new_v1(codec, mh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_identity_and_unlisted_hashes() {
        // A sha2-512 raw CID.
        let mh = multihash::Multihash::<64>::wrap(0x13, &[7u8; 64]).unwrap();
        let cid = Cid::new_v1(CODEC_RAW, mh);
        assert!(matches!(
            check_cid(&cid),
            Err(BlockError::HashNotAllowed { code: 0x13, .. })
        ));
        // bafkqaaa: the empty identity CID used to probe gateways.
        let mh = multihash::Multihash::<64>::wrap(MH_IDENTITY, &[]).unwrap();
        let probe = Cid::new_v1(CODEC_RAW, mh);
        assert_eq!(probe.to_string(), "bafkqaaa");
        assert!(matches!(check_cid(&probe), Err(BlockError::Identity(_))));
        assert!(matches!(
            verify_block(&probe, &Bytes::new()),
            Err(BlockError::Identity(_))
        ));
    }

    #[test]
    fn verifies_blocks() {
        let cid = raw_cid(b"content");
        let block = verify_block(&cid, &Bytes::from_static(b"content")).unwrap();
        assert_eq!((block.cid(), &block[..]), (&cid, &b"content"[..]));
        assert!(matches!(
            verify_block(&cid, &Bytes::from_static(b"contenT")),
            Err(BlockError::HashMismatch { .. })
        ));
        let big = Bytes::from(vec![0u8; MAX_BLOCK_SIZE + 1]);
        assert!(matches!(
            verify_block(&raw_cid(&big), &big),
            Err(BlockError::BlockTooLarge { .. })
        ));
    }

    #[test]
    fn only_identity_cids_are_inline() {
        assert!(VerifiedBlock::inline(&raw_cid(b"x")).is_none());
        let mh = multihash::Multihash::<64>::wrap(MH_IDENTITY, b"hi").unwrap();
        let cid = Cid::new_v1(CODEC_RAW, mh);
        let block = VerifiedBlock::inline(&cid).unwrap();
        assert_eq!(&block[..], b"hi");
    }
}
