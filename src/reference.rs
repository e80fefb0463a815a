//! Image references, and the CID policy and block verification of the IPLD crate
//! ([`cidboot_ipld::block`]).
//!
//! Everything that enters cidboot by name passes through here first: a CID that this module
//! accepts is one whose multihash we can recompute, so every byte fetched under it can be
//! checked. Identity multihashes are refused because they carry their content inline and so
//! prove nothing about where it came from.

use std::fmt;
use std::str::FromStr;

use cid::Cid;

pub use cidboot_ipld::block::{
    check_cid, cid_for, cid_from_sha256, raw_cid, verify_block, BlockError, VerifiedBlock,
    CODEC_DAG_PB, CODEC_RAW, MAX_BLOCK_SIZE, MH_IDENTITY, MH_SHA2_256,
};

/// Why an image reference or CID was refused.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum RefError {
    #[error("image reference {0:?} must be ipfs://<CID> or https://<gateway>/ipfs/<CID>")]
    Syntax(String),
    /// A CID alone (or `/ipfs/<CID>`) where a reference is expected.
    #[error("image reference {input:?} must be ipfs://<CID> or https://<gateway>/ipfs/<CID>: did you mean ipfs://{cid}?")]
    BareCid { input: String, cid: String },
    #[error("{input:?} is not a valid CID: {reason}")]
    BadCid { input: String, reason: String },
    /// A well-formed CID that is not on the allow-list.
    #[error(transparent)]
    Cid(#[from] BlockError),
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

/// What the user names: a CID, and possibly the gateway it was quoted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The image's root: a layout directory, index, manifest or descriptor.
    pub cid: Cid,
    /// `https://host[:port]` when the reference was a gateway URL; tried first.
    pub gateway: Option<String>,
}

impl ImageRef {
    /// Parses `ipfs://<CID>` or `https://<gateway>/ipfs/<CID>`; the CID must be on the
    /// allow-list.
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
        let bare = input
            .trim_start_matches("/ipfs/")
            .trim_start_matches("ipfs/")
            .trim_end_matches('/');
        if !bare.is_empty() && Cid::from_str(bare).is_ok() {
            return Err(RefError::BareCid {
                input: input.to_string(),
                cid: bare.to_string(),
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
        assert!(matches!(e, RefError::Cid(BlockError::Identity(_))), "{e}");
        // A sha2-512 raw CID.
        let mh = multihash::Multihash::<64>::wrap(0x13, &[7u8; 64]).unwrap();
        let cid = Cid::new_v1(CODEC_RAW, mh);
        assert!(matches!(
            check_cid(&cid),
            Err(BlockError::HashNotAllowed { code: 0x13, .. })
        ));
    }
}
