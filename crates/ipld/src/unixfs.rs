//! UnixFS: how files and directories sit on top of dag-pb and raw blocks.

use bytes::Bytes;
use cid::Cid;

use crate::block::{VerifiedBlock, CODEC_DAG_PB, CODEC_RAW};
use crate::dagpb::{self, PbNode};
use crate::pb::{self, Reader, WIRE_LEN, WIRE_VARINT};
use crate::DecodeError;

/// The UnixFS node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Raw data (read as file content).
    Raw,
    /// A plain directory: one block, its entries are the links.
    Directory,
    /// A file, or part of one.
    File,
    /// Metadata (not read).
    Metadata,
    /// A symbolic link (not read).
    Symlink,
    /// A shard of a HAMT-sharded directory ([`crate::hamt`]).
    HamtShard,
}

impl Kind {
    fn from_u64(v: u64) -> Option<Kind> {
        Some(match v {
            0 => Kind::Raw,
            1 => Kind::Directory,
            2 => Kind::File,
            3 => Kind::Metadata,
            4 => Kind::Symlink,
            5 => Kind::HamtShard,
            _ => return None,
        })
    }
    fn code(self) -> u64 {
        match self {
            Kind::Raw => 0,
            Kind::Directory => 1,
            Kind::File => 2,
            Kind::Metadata => 3,
            Kind::Symlink => 4,
            Kind::HamtShard => 5,
        }
    }
}

/// The UnixFS `Data` message. Mode and mtime are accepted and ignored: an OCI layout's meaning
/// does not depend on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The node's type.
    pub kind: Kind,
    /// Inline content (a file's), or a shard's bitfield.
    pub data: Option<Bytes>,
    /// A file's total size, when the writer gave it.
    pub filesize: Option<u64>,
    /// The size of each child's content, one per link.
    pub blocksizes: Vec<u64>,
    /// HAMT shards: the hash function (multicodec) and the fanout.
    pub hash_type: Option<u64>,
    /// HAMT shards: how many slots each shard has.
    pub fanout: Option<u64>,
}

impl Data {
    /// Decodes the `Data` field of a dag-pb node (a slice of a verified block, from
    /// [`crate::dagpb::decode`]).
    pub fn decode(buf: &Bytes) -> Result<Data, DecodeError> {
        let mut r = Reader::new(buf, "UnixFS data");
        let mut kind = None;
        let mut data = None;
        let mut filesize = None;
        let mut blocksizes = Vec::new();
        let mut hash_type = None;
        let mut fanout = None;
        while !r.is_empty() {
            let (field, wire) = r.key()?;
            match (field, wire) {
                (1, WIRE_VARINT) => {
                    let v = r.varint()?;
                    kind =
                        Some(Kind::from_u64(v).ok_or_else(|| r.err(format!("unknown type {v}")))?);
                }
                (2, WIRE_LEN) => data = Some(buf.slice_ref(r.bytes()?)),
                (3, WIRE_VARINT) => filesize = Some(r.varint()?),
                (4, WIRE_VARINT) => blocksizes.push(r.varint()?),
                (4, WIRE_LEN) => {
                    // Packed encoding, which some writers use for the repeated field.
                    let mut p = Reader::new(r.bytes()?, "UnixFS blocksizes");
                    while !p.is_empty() {
                        blocksizes.push(p.varint()?);
                    }
                }
                (5, WIRE_VARINT) => hash_type = Some(r.varint()?),
                (6, WIRE_VARINT) => fanout = Some(r.varint()?),
                // mode, mtime: an OCI layout's meaning does not depend on them.
                (5..=8, w) => r.skip(w)?,
                (f, w) => return Err(r.err(format!("unexpected field {f} (wire type {w})"))),
            }
        }
        let kind = kind.ok_or_else(|| r.err("missing Type"))?;
        Ok(Data {
            kind,
            data,
            filesize,
            blocksizes,
            hash_type,
            fanout,
        })
    }

    /// Encodes in the field order that go-unixfs and @ipld/unixfs both emit.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        pb::put_uint(&mut out, 1, self.kind.code());
        if let Some(d) = &self.data {
            pb::put_bytes(&mut out, 2, d);
        }
        if let Some(s) = self.filesize {
            pb::put_uint(&mut out, 3, s);
        }
        for b in &self.blocksizes {
            pb::put_uint(&mut out, 4, *b);
        }
        if let Some(h) = self.hash_type {
            pb::put_uint(&mut out, 5, h);
        }
        if let Some(f) = self.fanout {
            pb::put_uint(&mut out, 6, f);
        }
        out
    }
}

/// One verified block of a UnixFS file, interpreted.
#[derive(Debug)]
pub enum FileNode {
    /// A raw leaf: all of it is content.
    Leaf(Bytes),
    /// An interior (or single) dag-pb file node: inline content, then children.
    Node {
        /// Content held in the node itself, before the children's.
        inline: Bytes,
        /// Each child and the size of its content, in file order.
        children: Vec<(Cid, u64)>,
        /// The content's total size: inline plus the children's.
        size: u64,
    },
}

impl FileNode {
    /// Interprets a verified block as part of a file.
    pub fn parse(block: &VerifiedBlock) -> Result<FileNode, DecodeError> {
        let cid = block.cid();
        match cid.codec() {
            CODEC_RAW => Ok(FileNode::Leaf(block.data().clone())),
            CODEC_DAG_PB => {
                let node = dagpb::decode(block)?;
                let data = node_data(cid, &node)?;
                if !matches!(data.kind, Kind::File | Kind::Raw) {
                    return Err(DecodeError::NotAFile {
                        cid: cid.to_string(),
                        kind: format!("{:?}", data.kind),
                    });
                }
                if data.blocksizes.len() != node.links.len() {
                    return Err(bad(cid, "blocksizes do not match the links"));
                }
                let inline = data.data.unwrap_or_default();
                let mut size = inline.len() as u64;
                for b in &data.blocksizes {
                    size = size
                        .checked_add(*b)
                        .ok_or_else(|| bad(cid, "file size overflows"))?;
                }
                if let Some(fs) = data.filesize {
                    if fs != size {
                        return Err(bad(
                            cid,
                            &format!("filesize {fs} disagrees with its parts ({size})"),
                        ));
                    }
                }
                let children = node
                    .links
                    .iter()
                    .zip(data.blocksizes.iter())
                    .map(|(l, s)| (l.cid, *s))
                    .collect();
                Ok(FileNode::Node {
                    inline,
                    children,
                    size,
                })
            }
            other => Err(bad(cid, &format!("codec 0x{other:x} cannot be a file"))),
        }
    }

    /// The size of the content under this node.
    pub fn size(&self) -> u64 {
        match self {
            FileNode::Leaf(b) => b.len() as u64,
            FileNode::Node { size, .. } => *size,
        }
    }
}

/// A plain (unsharded) UnixFS directory: name to CID.
#[derive(Debug, Clone)]
pub struct Directory {
    /// Name and CID of each entry, in the block's order; names are distinct components.
    pub entries: Vec<(String, Cid)>,
}

impl Directory {
    /// Reads a verified block as a plain directory (a sharded one is read with
    /// [`crate::hamt`]).
    pub fn parse(block: &VerifiedBlock) -> Result<Directory, DecodeError> {
        let cid = block.cid();
        if cid.codec() != CODEC_DAG_PB {
            return Err(DecodeError::NotADirectory {
                cid: cid.to_string(),
                kind: "raw block".into(),
            });
        }
        let node = dagpb::decode(block)?;
        let data = node_data(cid, &node)?;
        match data.kind {
            Kind::Directory => {}
            Kind::HamtShard => {
                return Err(DecodeError::Unsupported(format!(
                    "directory {cid} is HAMT-sharded: its entries are in several blocks (read it with Gateways::directory)"
                )))
            }
            k => {
                return Err(DecodeError::NotADirectory {
                    cid: cid.to_string(),
                    kind: format!("{k:?}"),
                })
            }
        }
        let mut entries = Vec::with_capacity(node.links.len());
        for l in node.links {
            let name = l
                .name
                .ok_or_else(|| bad(cid, "directory entry without a name"))?;
            let name = String::from_utf8(name)
                .map_err(|_| bad(cid, "directory entry name is not UTF-8"))?;
            check_entry_name(&name).map_err(|r| bad(cid, &r))?;
            if entries.iter().any(|(n, _)| *n == name) {
                return Err(bad(cid, &format!("duplicate entry {name:?}")));
            }
            entries.push((name, l.cid));
        }
        Ok(Directory { entries })
    }

    /// The CID of the entry `name`.
    pub fn get(&self, name: &str) -> Option<Cid> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| *c)
    }
}

/// Whether a file's child covering `[offset, offset+len)` is needed when reading from byte
/// `from`: the one rule the client, the development gateway and the parent's cache use to
/// choose the blocks of an `entity-bytes` range.
pub fn in_range(offset: u64, len: u64, from: u64) -> bool {
    offset.saturating_add(len) > from || (len == 0 && offset >= from)
}

/// Longest directory entry name, in bytes (a path component, as in Linux's `NAME_MAX`): it
/// bounds what the 100,000 entries of a directory can hold.
pub const MAX_ENTRY_NAME: usize = 255;

/// A directory entry's name: one path component, of at most [`MAX_ENTRY_NAME`] bytes.
pub fn check_entry_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_ENTRY_NAME {
        return Err(format!(
            "entry name of {} bytes, over the {MAX_ENTRY_NAME}-byte limit",
            name.len()
        ));
    }
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(format!("invalid entry name {name:?}"));
    }
    Ok(())
}

fn node_data(cid: &Cid, node: &PbNode) -> Result<Data, DecodeError> {
    let raw = node
        .data
        .as_ref()
        .ok_or_else(|| bad(cid, "dag-pb node has no UnixFS data"))?;
    Data::decode(raw)
}

fn bad(cid: &Cid, reason: &str) -> DecodeError {
    DecodeError::BadUnixfs {
        cid: cid.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_one_component_of_at_most_255_bytes() {
        assert!(check_entry_name(&"a".repeat(255)).is_ok());
        let e = check_entry_name(&"a".repeat(256)).unwrap_err();
        assert!(e.contains("over the 255-byte limit"), "{e}");
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_entry_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn data_round_trip_and_packed() {
        let d = Data {
            kind: Kind::File,
            data: None,
            filesize: Some(3),
            blocksizes: vec![1, 2],
            hash_type: None,
            fanout: None,
        };
        let enc = Bytes::from(d.encode());
        assert_eq!(Data::decode(&enc).unwrap(), d);
        // Packed blocksizes decode to the same thing.
        let packed = Bytes::from_static(&[0x08, 0x02, 0x18, 0x03, 0x22, 0x02, 0x01, 0x02]);
        assert_eq!(Data::decode(&packed).unwrap(), d);
    }
}
