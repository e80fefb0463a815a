//! Image references and the CID policy.
//!
//! Everything that enters cidboot by name passes through here first: a CID that this module
//! accepts is one whose multihash we can recompute, so every byte fetched under it can be
//! checked. Identity multihashes are refused because they carry their content inline and so
//! prove nothing about where it came from.

use std::fmt;
use std::str::FromStr;

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

#[derive(Debug, thiserror::Error)]
pub enum RefError {
    #[error("image reference {0:?} must be ipfs://<CID> or https://<gateway>/ipfs/<CID>")]
    Syntax(String),
    #[error("{input:?} is not a valid CID: {reason}")]
    BadCid { input: String, reason: String },
    #[error("CID {0} uses the identity multihash: its content is inline and proves nothing")]
    Identity(String),
    #[error("CID {cid} uses multihash 0x{code:x}, which is not on the allow-list (sha2-256)")]
    HashNotAllowed { cid: String, code: u64 },
    #[error("CID {cid} has a sha2-256 digest of {len} bytes (expected 32)")]
    BadDigestLength { cid: String, len: usize },
    #[error("CID {cid} uses codec 0x{codec:x}; only raw (0x55) and dag-pb (0x70) are supported")]
    CodecNotSupported { cid: String, codec: u64 },
    #[error("block {cid} is {size} bytes, over the {max}-byte block limit")]
    BlockTooLarge {
        cid: String,
        size: usize,
        max: usize,
    },
    #[error("block {cid} does not hash to its CID (got sha2-256 {got})")]
    HashMismatch { cid: String, got: String },
}

/// Checks that `cid` is one cidboot will fetch and verify.
pub fn check_cid(cid: &Cid) -> Result<(), RefError> {
    let mh = cid.hash();
    match mh.code() {
        MH_SHA2_256 => {}
        MH_IDENTITY => return Err(RefError::Identity(cid.to_string())),
        code => {
            return Err(RefError::HashNotAllowed {
                cid: cid.to_string(),
                code,
            })
        }
    }
    if mh.digest().len() != 32 {
        return Err(RefError::BadDigestLength {
            cid: cid.to_string(),
            len: mh.digest().len(),
        });
    }
    match cid.codec() {
        CODEC_RAW | CODEC_DAG_PB => Ok(()),
        codec => Err(RefError::CodecNotSupported {
            cid: cid.to_string(),
            codec,
        }),
    }
}

/// Parses a CID string and applies [`check_cid`].
pub fn parse_cid(s: &str) -> Result<Cid, RefError> {
    let cid = Cid::from_str(s).map_err(|e| RefError::BadCid {
        input: s.to_string(),
        reason: e.to_string(),
    })?;
    check_cid(&cid)?;
    Ok(cid)
}

/// Verifies that `data` is exactly the block named by `cid`.
pub fn verify_block(cid: &Cid, data: &[u8]) -> Result<(), RefError> {
    check_cid(cid)?;
    if data.len() > MAX_BLOCK_SIZE {
        return Err(RefError::BlockTooLarge {
            cid: cid.to_string(),
            size: data.len(),
            max: MAX_BLOCK_SIZE,
        });
    }
    let got = Sha256::digest(data);
    if got[..] != *cid.hash().digest() {
        return Err(RefError::HashMismatch {
            cid: cid.to_string(),
            got: hex::encode(got),
        });
    }
    Ok(())
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

/// What the user names: a CID, and possibly the gateway it was quoted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub cid: Cid,
    /// `https://host[:port]` when the reference was a gateway URL; tried first.
    pub gateway: Option<String>,
}

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self, RefError> {
        let syntax = || RefError::Syntax(input.to_string());
        if let Some(rest) = input.strip_prefix("ipfs://") {
            let cid_str = rest.strip_suffix('/').unwrap_or(rest);
            if cid_str.is_empty() || cid_str.contains(['/', '?', '#']) {
                return Err(syntax());
            }
            return Ok(ImageRef {
                cid: parse_cid(cid_str)?,
                gateway: None,
            });
        }
        if let Some(rest) = input.strip_prefix("https://") {
            let (authority, path) = rest.split_once('/').ok_or_else(syntax)?;
            if authority.is_empty() || authority.contains(['@', '?', '#']) {
                return Err(syntax());
            }
            let cid_part = path.strip_prefix("ipfs/").ok_or_else(syntax)?;
            let cid_str = cid_part.strip_suffix('/').unwrap_or(cid_part);
            if cid_str.is_empty() || cid_str.contains(['/', '?', '#']) {
                return Err(syntax());
            }
            return Ok(ImageRef {
                cid: parse_cid(cid_str)?,
                gateway: Some(format!("https://{authority}")),
            });
        }
        Err(syntax())
    }

    /// The canonical `ipfs://` form, which is what gets measured.
    pub fn canonical(&self) -> String {
        format!("ipfs://{}", self.cid)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

impl FromStr for ImageRef {
    type Err = RefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let cid = raw_cid(b"hello");
        let r = ImageRef::parse(&format!("ipfs://{cid}")).unwrap();
        assert_eq!(r.cid, cid);
        assert_eq!(r.gateway, None);
        let r = ImageRef::parse(&format!("https://gw.example:8443/ipfs/{cid}/")).unwrap();
        assert_eq!(r.gateway.as_deref(), Some("https://gw.example:8443"));
        assert_eq!(r.canonical(), format!("ipfs://{cid}"));
    }

    #[test]
    fn rejects_bad_references() {
        let cid = raw_cid(b"x");
        for bad in [
            "docker.io/library/alpine".to_string(),
            format!("http://gw/ipfs/{cid}"),
            format!("ipfs://{cid}/blobs"),
            format!("https://gw/ipns/{cid}"),
            "ipfs://".to_string(),
            "ipfs://notacid".to_string(),
        ] {
            assert!(ImageRef::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn refuses_identity_and_unlisted_hashes() {
        // bafkqaaa: the empty identity CID used to probe gateways.
        let e = ImageRef::parse("ipfs://bafkqaaa").unwrap_err();
        assert!(matches!(e, RefError::Identity(_)), "{e}");
        // A sha2-512 raw CID.
        let mh = multihash::Multihash::<64>::wrap(0x13, &[7u8; 64]).unwrap();
        let cid = Cid::new_v1(CODEC_RAW, mh);
        assert!(matches!(
            check_cid(&cid),
            Err(RefError::HashNotAllowed { code: 0x13, .. })
        ));
    }

    #[test]
    fn verifies_blocks() {
        let cid = raw_cid(b"content");
        verify_block(&cid, b"content").unwrap();
        assert!(matches!(
            verify_block(&cid, b"contenT"),
            Err(RefError::HashMismatch { .. })
        ));
    }
}
