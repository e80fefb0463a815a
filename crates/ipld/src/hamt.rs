//! HAMT-sharded UnixFS directories (the UnixFS specification's `HAMTShard`), read strictly and
//! written exactly as ipfs-car (`@ipld/unixfs`) and kubo write them.
//!
//! A shard is a dag-pb node whose UnixFS data has `Type = HAMTShard`, `hashType = 0x22`
//! (murmur3-x64-64: the first 64 bits of murmur3-x64-128 with seed 0, big-endian), `fanout =
//! 256` and, as `Data`, a bitfield of the occupied slots (a 256-bit big-endian number, bit `i`
//! for slot `i`, without leading zero bytes). At depth `d` an entry's slot is byte `d` of the
//! hash of its name. Links are in slot order and named by the slot as two upper-case hex
//! digits: followed by the entry's name for an entry, alone for a sub-shard holding every name
//! that shares the slot. A slot holds a sub-shard exactly when two or more names share it.

use bytes::Bytes;
use cid::Cid;

use crate::block::{VerifiedBlock, CODEC_DAG_PB};
use crate::dagpb::{self, PbLink, PbNode};
use crate::unixfs::{check_entry_name, Data, Kind};
use crate::DecodeError;

/// The multicodec of murmur3-x64-64, the only hash UnixFS shards use.
pub const HASH_MURMUR3_X64_64: u64 = 0x22;
/// The only fanout read and written (kubo's, ipfs-car's and Helia's).
pub const FANOUT: u64 = 256;
/// Deepest shard: each level consumes one byte of the 8-byte hash.
pub const MAX_SHARD_DEPTH: usize = 8;
/// Most entries in one directory, sharded or not.
pub const MAX_DIR_ENTRIES: usize = 100_000;
/// Most shard blocks in one directory.
pub const MAX_SHARD_BLOCKS: usize = 65_536;

/// The first 64 bits of MurmurHash3 x64 128 (seed 0) as UnixFS shards use it.
pub fn murmur3_x64_64(data: &[u8]) -> [u8; 8] {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let (mut h1, mut h2) = (0u64, 0u64);
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        let mut k1 = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let mut k2 = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(*b) << (8 * i);
        } else {
            k2 |= u64::from(*b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    }
    if !tail.is_empty() {
        h1 ^= k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h1.to_be_bytes()
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// What one link of a shard leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardLink {
    /// A directory entry: its name (without the slot prefix) and CID.
    Entry {
        /// The entry's name.
        name: String,
        /// What it names.
        cid: Cid,
    },
    /// A sub-shard one level down, for the names that share this slot.
    Shard(Cid),
}

/// One verified shard block, checked against where it sits in the HAMT.
#[derive(Debug, Clone)]
pub struct Shard {
    /// `(slot, link)` in slot order.
    pub links: Vec<(u8, ShardLink)>,
}

impl Shard {
    /// Whether it holds directory entries (and not only sub-shards): such a shard is valid at
    /// one place in the HAMT only, where its entries' hashes lead.
    pub fn has_entries(&self) -> bool {
        self.links
            .iter()
            .any(|(_, l)| matches!(l, ShardLink::Entry { .. }))
    }
}

/// Whether a block is a HAMT shard (without checking it).
pub fn is_shard(block: &VerifiedBlock) -> bool {
    block.cid().codec() == CODEC_DAG_PB
        && dagpb::decode(block)
            .ok()
            .and_then(|n| n.data)
            .and_then(|d| Data::decode(&d).ok())
            .is_some_and(|d| d.kind == Kind::HamtShard)
}

impl Shard {
    /// Parses the shard `cid` found at `path` (the slots leading to it from the root shard,
    /// so `path.len()` is its depth).
    pub fn parse(block: &VerifiedBlock, path: &[u8]) -> Result<Shard, DecodeError> {
        let cid = block.cid();
        let bad = |reason: String| DecodeError::BadUnixfs {
            cid: cid.to_string(),
            reason,
        };
        if cid.codec() != CODEC_DAG_PB {
            return Err(DecodeError::NotADirectory {
                cid: cid.to_string(),
                kind: "raw block".into(),
            });
        }
        if path.len() >= MAX_SHARD_DEPTH {
            return Err(bad(format!(
                "HAMT shard nested {} levels deep: the 64-bit hash allows {MAX_SHARD_DEPTH}",
                path.len() + 1
            )));
        }
        let node = dagpb::decode(block)?;
        let raw = node
            .data
            .as_ref()
            .ok_or_else(|| bad("dag-pb node has no UnixFS data".into()))?;
        let data = Data::decode(raw)?;
        if data.kind != Kind::HamtShard {
            return Err(bad(format!(
                "a HAMT shard was expected here, not a {:?} node",
                data.kind
            )));
        }
        match data.hash_type {
            Some(HASH_MURMUR3_X64_64) => {}
            other => {
                return Err(DecodeError::Unsupported(format!(
                    "HAMT shard {cid} uses hash function {other:?}; only murmur3-x64-64 (0x22) is defined for UnixFS"
                )))
            }
        }
        if data.fanout != Some(FANOUT) {
            return Err(DecodeError::Unsupported(format!(
                "HAMT shard {cid} has fanout {:?}; cidboot reads fanout 256 (what kubo, ipfs-car and Helia write)",
                data.fanout
            )));
        }
        if data.filesize.is_some() || !data.blocksizes.is_empty() {
            return Err(bad("a HAMT shard has file sizes".into()));
        }
        let bitfield = data.data.unwrap_or_default();
        if bitfield.len() > 32 || bitfield.first() == Some(&0) {
            return Err(bad(format!(
                "bitfield of {} bytes is not a 256-bit number without leading zeros",
                bitfield.len()
            )));
        }
        let occupied = |slot: u8| {
            let from_end = usize::from(slot / 8);
            from_end < bitfield.len()
                && bitfield[bitfield.len() - 1 - from_end] & (1 << (slot % 8)) != 0
        };
        let set_bits: u32 = bitfield.iter().map(|b| b.count_ones()).sum();
        if set_bits as usize != node.links.len() {
            return Err(bad(format!(
                "bitfield marks {set_bits} slots but the shard has {} links",
                node.links.len()
            )));
        }
        let mut links = Vec::with_capacity(node.links.len());
        let mut last: Option<u8> = None;
        for l in node.links {
            let name = l
                .name
                .ok_or_else(|| bad("HAMT link without a name".into()))?;
            let name =
                String::from_utf8(name).map_err(|_| bad("HAMT link name is not UTF-8".into()))?;
            let slot = name
                .get(..2)
                .filter(|p| {
                    p.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                })
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| {
                    bad(format!(
                        "HAMT link {name:?} does not start with its slot in upper-case hex"
                    ))
                })?;
            if last.is_some_and(|p| p >= slot) {
                return Err(bad(format!(
                    "HAMT link {name:?} is out of slot order or shares a slot"
                )));
            }
            last = Some(slot);
            if !occupied(slot) {
                return Err(bad(format!(
                    "HAMT link {name:?} is in slot {slot}, which the bitfield marks empty"
                )));
            }
            let rest = &name[2..];
            if rest.is_empty() {
                links.push((slot, ShardLink::Shard(l.cid)));
                continue;
            }
            check_entry_name(rest).map_err(&bad)?;
            let hash = murmur3_x64_64(rest.as_bytes());
            let depth = path.len();
            if hash[..depth] != *path || hash[depth] != slot {
                return Err(bad(format!(
                    "entry {rest:?} is in slot {slot} at depth {depth}, where its hash does not lead"
                )));
            }
            links.push((
                slot,
                ShardLink::Entry {
                    name: rest.to_string(),
                    cid: l.cid,
                },
            ));
        }
        Ok(Shard { links })
    }
}

/// Finds `name` in the sharded directory whose root shard is `root`, reading shard blocks
/// with `get` (a local block store). Returns the entry's CID, if there is one, and every shard
/// block read on the way, in order: the blocks a CAR for a path through the directory holds.
pub fn lookup(
    get: &dyn Fn(&Cid) -> Option<VerifiedBlock>,
    root: &Cid,
    name: &str,
) -> Result<(Option<Cid>, Vec<Cid>), DecodeError> {
    let hash = murmur3_x64_64(name.as_bytes());
    let mut path = Vec::new();
    let mut cur = *root;
    let mut read = Vec::new();
    loop {
        let block = get(&cur).ok_or_else(|| DecodeError::BadUnixfs {
            cid: root.to_string(),
            reason: format!("its shard block {cur} is not here"),
        })?;
        read.push(cur);
        let shard = Shard::parse(&block, &path)?;
        let slot = hash[path.len()];
        match shard.links.into_iter().find(|(s, _)| *s == slot) {
            None => return Ok((None, read)),
            Some((_, ShardLink::Entry { name: n, cid })) => {
                return Ok(((n == name).then_some(cid), read));
            }
            Some((_, ShardLink::Shard(next))) => {
                path.push(slot);
                cur = next;
            }
        }
    }
}

/// One entry to shard: its name, CID and cumulative DAG size.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's name (one path component).
    pub name: String,
    /// What it names.
    pub cid: Cid,
    /// The cumulative size of the DAG under it.
    pub tsize: u64,
}

/// A shard block built by [`build`], in the order ipfs-car writes them. Its CID is computed
/// from its bytes here; it is not a [`VerifiedBlock`], which only what was checked against a
/// CID from elsewhere becomes.
pub struct Built {
    /// The block's CID (dag-pb, sha2-256).
    pub cid: Cid,
    /// The block.
    pub block: Vec<u8>,
}

/// Builds the HAMT for `entries` (distinct names), calling `put` for every shard block,
/// sub-shards before the shard that links them, in slot order. Returns the root shard's CID
/// and cumulative DAG size.
pub fn build(
    entries: Vec<Entry>,
    put: &mut dyn FnMut(Built) -> Result<(), String>,
) -> Result<(Cid, u64), String> {
    build_with(entries, &|b| crate::block::cid_for(CODEC_DAG_PB, b), put)
}

/// [`build`], each shard block named by `cid` (a CIDv0 for the legacy UnixFS profile).
pub fn build_with(
    entries: Vec<Entry>,
    cid: &dyn Fn(&[u8]) -> Cid,
    put: &mut dyn FnMut(Built) -> Result<(), String>,
) -> Result<(Cid, u64), String> {
    let hashed = entries
        .into_iter()
        .map(|e| (murmur3_x64_64(e.name.as_bytes()), e))
        .collect();
    build_level(hashed, 0, cid, put)
}

fn build_level(
    entries: Vec<([u8; 8], Entry)>,
    depth: usize,
    make_cid: &dyn Fn(&[u8]) -> Cid,
    put: &mut dyn FnMut(Built) -> Result<(), String>,
) -> Result<(Cid, u64), String> {
    if depth >= MAX_SHARD_DEPTH {
        return Err("two names share all 64 bits of their murmur3 hash".into());
    }
    let mut slots: Vec<Vec<([u8; 8], Entry)>> = (0..FANOUT).map(|_| Vec::new()).collect();
    for (h, e) in entries {
        slots[usize::from(h[depth])].push((h, e));
    }
    let mut bitfield = [0u8; 32];
    let mut links = Vec::new();
    let mut total = 0u64;
    for (slot, mut group) in slots.into_iter().enumerate() {
        let prefix = format!("{slot:02X}");
        let (name, cid, tsize) = match group.len() {
            0 => continue,
            1 => {
                let (_, e) = group.remove(0);
                (format!("{prefix}{}", e.name), e.cid, e.tsize)
            }
            _ => {
                let (cid, tsize) = build_level(group, depth + 1, make_cid, put)?;
                (prefix, cid, tsize)
            }
        };
        bitfield[31 - slot / 8] |= 1 << (slot % 8);
        total += tsize;
        links.push(PbLink {
            cid,
            name: Some(name.into_bytes()),
            tsize: Some(tsize),
        });
    }
    let first = bitfield.iter().position(|b| *b != 0).unwrap_or(32);
    let data = Data {
        kind: Kind::HamtShard,
        data: (first < 32).then(|| Bytes::copy_from_slice(&bitfield[first..])),
        filesize: None,
        blocksizes: vec![],
        hash_type: Some(HASH_MURMUR3_X64_64),
        fanout: Some(FANOUT),
    };
    let block = dagpb::encode(&PbNode {
        links,
        data: Some(data.encode().into()),
    });
    let cid = make_cid(&block);
    let size = total + block.len() as u64;
    put(Built { cid, block })?;
    Ok((cid, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{raw_cid, verify_block};

    fn verified(cid: &Cid, block: &[u8]) -> VerifiedBlock {
        verify_block(cid, &Bytes::copy_from_slice(block)).unwrap()
    }

    #[test]
    fn murmur3_matches_the_reference_vectors() {
        // From @multiformats/murmur3's murmur364, which ipfs-car shards with.
        for (input, want) in [
            ("", "0000000000000000"),
            ("a", "85555565f6597889"),
            ("hello", "cbd8a7b341bd9b02"),
            ("index.json", "a13ad1bde6a2d186"),
            (
                "The quick brown fox jumps over the lazy dog",
                "e34bbc7bbc071b6c",
            ),
            ("0123456789abcdef", "4be06d94cf4ad1a7"),
            ("0123456789abcdef0", "eb24ae8785a5c075"),
            (
                "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                "8b39df54bfcb1e57",
            ),
        ] {
            assert_eq!(
                hex::encode(murmur3_x64_64(input.as_bytes())),
                want,
                "{input:?}"
            );
        }
    }

    fn built(n: usize) -> (Cid, Vec<Built>) {
        let entries = (0..n)
            .map(|i| Entry {
                name: format!("name-{i}"),
                cid: raw_cid(format!("{i}").as_bytes()),
                tsize: 1,
            })
            .collect();
        let mut blocks = Vec::new();
        let (root, _) = build(entries, &mut |b| {
            blocks.push(b);
            Ok(())
        })
        .unwrap();
        (root, blocks)
    }

    /// Walks a built HAMT with the reader and returns every name.
    fn read_back(root: Cid, blocks: &[Built]) -> Vec<String> {
        let get = |c: &Cid| verified(c, &blocks.iter().find(|b| b.cid == *c).unwrap().block);
        let mut names = Vec::new();
        let mut todo = vec![(root, Vec::new())];
        while let Some((c, path)) = todo.pop() {
            for (slot, l) in Shard::parse(&get(&c), &path).unwrap().links {
                match l {
                    ShardLink::Entry { name, .. } => names.push(name),
                    ShardLink::Shard(s) => {
                        let mut p = path.clone();
                        p.push(slot);
                        todo.push((s, p));
                    }
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn builds_what_it_reads() {
        let (root, blocks) = built(3000);
        assert!(blocks.len() > 1, "3000 names need sub-shards");
        let mut want: Vec<String> = (0..3000).map(|i| format!("name-{i}")).collect();
        want.sort();
        assert_eq!(read_back(root, &blocks), want);
    }

    #[test]
    fn looks_names_up_through_sub_shards() {
        let (root, blocks) = built(3000);
        let get = |c: &Cid| {
            blocks
                .iter()
                .find(|b| b.cid == *c)
                .map(|b| verified(c, &b.block))
        };
        let mut deepest = 0;
        for i in (0..3000).step_by(7) {
            let (found, read) = lookup(&get, &root, &format!("name-{i}")).unwrap();
            assert_eq!(found, Some(raw_cid(format!("{i}").as_bytes())));
            assert_eq!(read[0], root);
            deepest = deepest.max(read.len());
        }
        assert!(deepest >= 3, "3000 names nest sub-shards two deep");
        let (found, _) = lookup(&get, &root, "absent").unwrap();
        assert_eq!(found, None);
    }

    #[test]
    fn refuses_shards_that_are_not_canonical() {
        let (root, blocks) = built(300);
        let block = verified(&root, &blocks.iter().find(|b| b.cid == root).unwrap().block);
        let node = dagpb::decode(&block).unwrap();
        let reencode = |f: &dyn Fn(&mut PbNode, &mut Data)| {
            let mut n = node.clone();
            let mut d = Data::decode(n.data.as_ref().unwrap()).unwrap();
            f(&mut n, &mut d);
            n.data = Some(Bytes::from(d.encode()));
            let b = Bytes::from(dagpb::encode(&n));
            let c = crate::block::cid_for(CODEC_DAG_PB, &b);
            Shard::parse(&verified(&c, &b), &[])
                .unwrap_err()
                .to_string()
        };
        let e = reencode(&|_, d| d.fanout = Some(16));
        assert!(e.contains("fanout"), "{e}");
        let e = reencode(&|_, d| d.hash_type = Some(0x12));
        assert!(e.contains("hash function"), "{e}");
        let e = reencode(&|n, _| {
            n.links.swap(0, 1);
        });
        assert!(e.contains("out of slot order"), "{e}");
        let e = reencode(&|n, _| {
            n.links.pop();
        });
        assert!(e.contains("bitfield marks"), "{e}");
        let e = reencode(&|n, _| {
            let l = &mut n.links[0];
            let name = String::from_utf8(l.name.clone().unwrap()).unwrap();
            if name.len() > 2 {
                l.name = Some(format!("{}other", &name[..2]).into_bytes());
            } else {
                l.name = Some(format!("{}x", &name[..2]).into_bytes());
            }
        });
        assert!(e.contains("where its hash does not lead"), "{e}");
        let e = reencode(&|n, _| {
            let l = &mut n.links[0];
            let name = String::from_utf8(l.name.clone().unwrap()).unwrap();
            l.name = Some(format!("zz{}", &name[2..]).into_bytes());
        });
        assert!(e.contains("upper-case hex"), "{e}");
        // Too deep.
        let e = Shard::parse(&block, &[0; 8]).unwrap_err().to_string();
        assert!(e.contains("levels deep"), "{e}");
    }
}
