//! dag-pb: the block format of UnixFS files and directories, decoded strictly.

use bytes::Bytes;
use cid::Cid;

use crate::block::VerifiedBlock;

use crate::pb::{self, Reader, WIRE_LEN, WIRE_VARINT};
use crate::DecodeError;

/// One link of a dag-pb node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    /// The block it points to.
    pub cid: Cid,
    /// Its name (a directory entry's, a HAMT slot's), raw bytes as the format has them.
    pub name: Option<Vec<u8>>,
    /// The cumulative size of the DAG under it, as its writer claimed (never trusted).
    pub tsize: Option<u64>,
}

/// A dag-pb node: links, then opaque data (UnixFS's, for every node cidboot reads).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PbNode {
    /// The links, in the order the block has them.
    pub links: Vec<PbLink>,
    /// The Data field, a slice of the block.
    pub data: Option<Bytes>,
}

/// Decodes a verified dag-pb block, enforcing the canonical form from the dag-pb
/// specification: all Links (field 2) before Data (field 1), Data at most once, link fields
/// Hash, Name, Tsize in that order and each at most once, and nothing unknown.
pub fn decode(block: &VerifiedBlock) -> Result<PbNode, DecodeError> {
    decode_bytes(block.data())
}

fn decode_bytes(block: &Bytes) -> Result<PbNode, DecodeError> {
    let mut r = Reader::new(block, "dag-pb node");
    let mut node = PbNode::default();
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (2, WIRE_LEN) => {
                if node.data.is_some() {
                    return Err(r.err("link after Data"));
                }
                let raw = r.bytes()?;
                node.links.push(decode_link(raw)?);
            }
            (1, WIRE_LEN) => {
                if node.data.is_some() {
                    return Err(r.err("duplicate Data field"));
                }
                let raw = r.bytes()?;
                node.data = Some(block.slice_ref(raw));
            }
            (f, w) => return Err(r.err(format!("unexpected field {f} (wire type {w})"))),
        }
    }
    Ok(node)
}

fn decode_link(raw: &[u8]) -> Result<PbLink, DecodeError> {
    let mut r = Reader::new(raw, "dag-pb link");
    let mut cid = None;
    let mut name = None;
    let mut tsize = None;
    let mut last = 0;
    while !r.is_empty() {
        let (field, wire) = r.key()?;
        if field <= last {
            return Err(r.err(format!("field {field} out of order or repeated")));
        }
        last = field;
        match (field, wire) {
            (1, WIRE_LEN) => {
                let b = r.bytes()?;
                let c = Cid::try_from(b).map_err(|e| r.err(format!("bad link CID: {e}")))?;
                cid = Some(c);
            }
            (2, WIRE_LEN) => name = Some(r.bytes()?.to_vec()),
            (3, WIRE_VARINT) => tsize = Some(r.varint()?),
            (f, w) => return Err(r.err(format!("unexpected field {f} (wire type {w})"))),
        }
    }
    let cid = cid.ok_or_else(|| r.err("link without Hash"))?;
    Ok(PbLink { cid, name, tsize })
}

/// Encodes a node in canonical form (links in the order given; callers sort directory links).
pub fn encode(node: &PbNode) -> Vec<u8> {
    let mut out = Vec::new();
    for link in &node.links {
        let mut l = Vec::new();
        pb::put_bytes(&mut l, 1, &link.cid.to_bytes());
        if let Some(name) = &link.name {
            pb::put_bytes(&mut l, 2, name);
        }
        if let Some(t) = link.tsize {
            pb::put_uint(&mut l, 3, t);
        }
        pb::put_bytes(&mut out, 2, &l);
    }
    if let Some(d) = &node.data {
        pb::put_bytes(&mut out, 1, d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{cid_for, raw_cid, verify_block, CODEC_DAG_PB};

    fn decode(b: &Bytes) -> Result<PbNode, DecodeError> {
        super::decode(&verify_block(&cid_for(CODEC_DAG_PB, b), b).unwrap())
    }

    #[test]
    fn round_trips() {
        let node = PbNode {
            links: vec![PbLink {
                cid: raw_cid(b"a"),
                name: Some(b"a".to_vec()),
                tsize: Some(1),
            }],
            data: Some(Bytes::from_static(&[8, 1])),
        };
        let enc = Bytes::from(encode(&node));
        assert_eq!(decode(&enc).unwrap(), node);
    }

    #[test]
    fn rejects_non_canonical() {
        // Data before a link.
        let mut b = Vec::new();
        pb::put_bytes(&mut b, 1, &[8, 1]);
        let mut l = Vec::new();
        pb::put_bytes(&mut l, 1, &raw_cid(b"a").to_bytes());
        pb::put_bytes(&mut b, 2, &l);
        assert!(decode(&Bytes::from(b)).is_err());
        // Truncated length.
        assert!(decode(&Bytes::from_static(&[0x0a, 0x05, 1])).is_err());
        // Unknown field.
        assert!(decode(&Bytes::from_static(&[0x18, 0x01])).is_err());
    }
}
