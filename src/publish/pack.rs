//! Packs a directory into a CARv1 under a named [`Profile`], so that the CID printed here is
//! the CID any IPFS tool computes for the same directory with the same parameters. The
//! default, [`Profile::IpfsCar`], is exactly what `ipfs-car pack` writes, byte for byte:
//! CIDv1, raw leaves, 1 MiB chunks, balanced file DAGs 1024 links wide, directory links sorted
//! by name, dotfiles and empty directories skipped, and directories of more than 1000 entries
//! HAMT-sharded. The UnixFS CID profiles of IPIP-0499 (`unixfs-v1-2025`, and
//! `unixfs-v0-2015`, kubo's CIDv0 defaults until 0.39) differ in where a directory is sharded,
//! whether empty directories are kept and, for the legacy one, in everything else.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use cid::Cid;

use crate::fetch::car;
use crate::fetch::dagpb::{self, PbLink, PbNode};
use crate::fetch::hamt;
use crate::fetch::unixfs::{Data, Kind};
use crate::reference::{cid_for, raw_cid, CODEC_DAG_PB};
use crate::scratch::PrivateDir;

/// Bytes per leaf of a file: ipfs-car's chunk size, so the CIDs match.
pub const CHUNK_SIZE: usize = 1024 * 1024;
/// Links per node of a file's balanced DAG: ipfs-car's width, so the CIDs match.
pub const FILE_WIDTH: usize = 1024;
/// Above this many entries a directory is written HAMT-sharded, as ipfs-car does.
pub const MAX_DIR_ENTRIES: usize = 1000;
/// The IPIP-0499 profiles' HAMT threshold: a directory whose estimated node size is over it is
/// sharded (each profile estimates the size its own way).
pub const SHARD_THRESHOLD_BYTES: usize = 256 * 1024;

/// A named set of the parameters that decide a UnixFS CID (IPIP-0499), so that a CID made
/// here can be made again, and checked, by any implementation that has the same profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Profile {
    /// What `ipfs-car pack` (3.x) writes: CIDv1, raw leaves, 1 MiB chunks, 1024 links per
    /// file node, HAMT over 1000 entries, empty directories left out. It is none of the
    /// IPIP-0499 profiles: storacha's column of that IPIP's table.
    #[default]
    #[value(name = "ipfs-car")]
    #[serde(rename = "ipfs-car")]
    IpfsCar,
    /// IPIP-0499's `unixfs-v1-2025`: as ipfs-car, except that a directory is sharded when its
    /// dag-pb node would be over 256 KiB, and empty directories are kept.
    #[value(name = "unixfs-v1-2025")]
    #[serde(rename = "unixfs-v1-2025")]
    UnixfsV1,
    /// IPIP-0499's `unixfs-v0-2015`, kubo's CIDv0 defaults until 0.39: CIDv0, dag-pb leaves,
    /// 256 KiB chunks, 174 links per file node, HAMT when the links' names and CIDs add up to
    /// over 256 KiB, empty directories kept.
    #[value(name = "unixfs-v0-2015")]
    #[serde(rename = "unixfs-v0-2015")]
    UnixfsV0,
}

/// When a directory is written as a HAMT instead of one node.
#[derive(Debug, Clone, Copy)]
enum ShardWhen {
    /// More links than this.
    LinksCount(usize),
    /// The links' names and CIDs, in bytes, add up to more than this (boxo's estimate).
    LinksBytes(usize),
    /// The directory's dag-pb node, encoded, is larger than this.
    BlockBytes(usize),
}

/// A profile's parameters.
#[derive(Debug, Clone, Copy)]
struct Params {
    cid_v0: bool,
    chunk: usize,
    width: usize,
    raw_leaves: bool,
    shard: ShardWhen,
    empty_dirs: bool,
}

impl Profile {
    /// The profile's name, as `--profile` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Profile::IpfsCar => "ipfs-car",
            Profile::UnixfsV1 => "unixfs-v1-2025",
            Profile::UnixfsV0 => "unixfs-v0-2015",
        }
    }

    fn params(self) -> Params {
        match self {
            Profile::IpfsCar => Params {
                cid_v0: false,
                chunk: CHUNK_SIZE,
                width: FILE_WIDTH,
                raw_leaves: true,
                shard: ShardWhen::LinksCount(MAX_DIR_ENTRIES),
                empty_dirs: false,
            },
            Profile::UnixfsV1 => Params {
                cid_v0: false,
                chunk: 1024 * 1024,
                width: 1024,
                raw_leaves: true,
                shard: ShardWhen::BlockBytes(SHARD_THRESHOLD_BYTES),
                empty_dirs: true,
            },
            Profile::UnixfsV0 => Params {
                cid_v0: true,
                chunk: 256 * 1024,
                width: 174,
                raw_leaves: false,
                shard: ShardWhen::LinksBytes(SHARD_THRESHOLD_BYTES),
                empty_dirs: true,
            },
        }
    }
}

impl Params {
    /// The CID of a dag-pb block: CIDv0 (a bare sha2-256 multihash) or CIDv1.
    fn dag_cid(&self, block: &[u8]) -> Cid {
        let v1 = cid_for(CODEC_DAG_PB, block);
        if self.cid_v0 {
            // A sha2-256 dag-pb CID always has a CIDv0 form; keep v1 only to stay panic-free.
            Cid::new_v0(*v1.hash()).unwrap_or(v1)
        } else {
            v1
        }
    }
}
/// Most entries packed into one directory (what cidboot reads back).
pub const MAX_PACKED_ENTRIES: usize = crate::fetch::hamt::MAX_DIR_ENTRIES;
/// Deepest directory nesting packed (an OCI layout needs 3).
pub const MAX_DIR_DEPTH: usize = 64;

/// Why a directory could not be packed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum PackError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    /// The process got a signal ([`crate::scratch::interrupt`]): packing stops at the next
    /// block, and the partial CAR goes with its private directory.
    #[error("interrupted")]
    Interrupted,
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What was packed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Packed {
    /// The root CID: the image's reference is `ipfs://` followed by it.
    pub root_cid: String,
    /// Blocks written to the CAR.
    pub blocks: u64,
    /// Bytes of the CAR.
    pub bytes: u64,
}

/// Packs `dir` into a CAR at `out`, atomically: the CAR is written inside a hidden private
/// sibling directory (`.NAME.partial-…`, see [`crate::scratch`]) and renamed into place when
/// complete; on an error, or if the process is interrupted or killed, nothing is left at `out`
/// and the sibling is removed (by this process, or by the next pack into the same directory).
///
/// An `out` that exists and is neither a regular file nor a directory (a device such as
/// `/dev/null`, a FIFO, a socket, or a symlink such as `/dev/stdout`) is written in place,
/// never renamed over: see [`pack_in_place`].
pub fn pack_dir(dir: &Path, out: &Path) -> Result<Packed, PackError> {
    pack_dir_as(dir, out, Profile::default())
}

/// [`pack_dir`] under `profile`.
pub fn pack_dir_as(dir: &Path, out: &Path, profile: Profile) -> Result<Packed, PackError> {
    if !dir.is_dir() {
        return Err(PackError::NotADirectory(dir.display().to_string()));
    }
    if std::fs::symlink_metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return pack_in_place(dir, out, profile);
    }
    let name = out
        .file_name()
        .ok_or_else(|| PackError::Unsupported {
            path: out.display().to_string(),
            reason: "names no file".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = PrivateDir::create(&parent, &format!(".{name}.partial-")).map_err(|e| {
        let (path, source) = e.into_io();
        PackError::Io { path, source }
    })?;
    let tmp = private.path().join(&name);
    let result = (|| {
        let f = File::create(&tmp).map_err(ioe(&tmp))?;
        let mut w = CarOut {
            w: Some(BufWriter::with_capacity(1 << 20, f)),
            counted: 0,
            blocks: 0,
            path: tmp.clone(),
            p: profile.params(),
        };
        // The root of a directory is always a dag-pb CID of the profile's version (36 bytes
        // for a CIDv1, 34 for a CIDv0), so a placeholder header of the same length can be
        // rewritten in place once the root is known.
        let placeholder = w.p.dag_cid(b"");
        let header = car::encode_header(&placeholder);
        w.header(&header)?;
        let root = pack_root(&mut w, dir)?;
        let Some(buffered) = w.w else {
            return Err(PackError::Unsupported {
                path: tmp.display().to_string(),
                reason: "no output".into(),
            });
        };
        let mut f = buffered.into_inner().map_err(|e| PackError::Io {
            path: tmp.display().to_string(),
            source: e.into_error(),
        })?;
        let real = car::encode_header(&root);
        if real.len() != header.len() {
            return Err(PackError::Unsupported {
                path: dir.display().to_string(),
                reason: "root CID length changed".into(),
            });
        }
        f.seek(SeekFrom::Start(0)).map_err(ioe(&tmp))?;
        f.write_all(&real).map_err(ioe(&tmp))?;
        f.sync_all().map_err(ioe(&tmp))?;
        let bytes = f.metadata().map_err(ioe(&tmp))?.len();
        Ok(Packed {
            root_cid: root.to_string(),
            blocks: w.blocks,
            bytes,
        })
    })();
    // Either way the private directory goes when `private` is dropped.
    let packed = result?;
    // A signal during the last block's write, the header or the sync: the CAR is complete,
    // but the command is ending as interrupted, so it must not appear. (The caller waits for
    // this function, so a signal after this check finds the CAR committed and says so.)
    if crate::scratch::interrupted() {
        return Err(PackError::Interrupted);
    }
    std::fs::rename(&tmp, out).map_err(ioe(out))?;
    Ok(packed)
}

/// Packs `dir` for its root CID alone: every block is made and hashed as for a CAR, and
/// counted, but nothing is written anywhere.
pub fn pack_cid(dir: &Path) -> Result<Packed, PackError> {
    pack_cid_as(dir, Profile::default())
}

/// [`pack_cid`] under `profile`.
pub fn pack_cid_as(dir: &Path, profile: Profile) -> Result<Packed, PackError> {
    if !dir.is_dir() {
        return Err(PackError::NotADirectory(dir.display().to_string()));
    }
    let mut w = CarOut {
        w: None,
        counted: 0,
        blocks: 0,
        path: PathBuf::new(),
        p: profile.params(),
    };
    let placeholder = w.p.dag_cid(b"");
    w.header(&car::encode_header(&placeholder))?;
    let root = pack_root(&mut w, dir)?;
    if crate::scratch::interrupted() {
        return Err(PackError::Interrupted);
    }
    Ok(Packed {
        root_cid: root.to_string(),
        blocks: w.blocks,
        bytes: w.counted,
    })
}

/// A CAR for an `out` that is not a regular file or a directory: built in a private directory
/// under the system's temporary directory (its header is rewritten once the root is known, so
/// it cannot be streamed), then copied into `out` opened for writing as it is. Renaming a file
/// over `/dev/null` would turn the device into a regular file for every other program.
fn pack_in_place(dir: &Path, out: &Path, profile: Profile) -> Result<Packed, PackError> {
    let staged = PrivateDir::create(&std::env::temp_dir(), "cidboot-pack-").map_err(|e| {
        let (path, source) = e.into_io();
        PackError::Io { path, source }
    })?;
    let tmp = staged.path().join("out.car");
    let packed = pack_dir_as(dir, &tmp, profile)?;
    // A symlink to a regular file is written through and truncated; a device or a FIFO is
    // written as it is.
    let regular = std::fs::metadata(out).is_ok_and(|m| m.is_file());
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(regular)
        .open(out)
        .map_err(ioe(out))?;
    let mut from = File::open(&tmp).map_err(ioe(&tmp))?;
    io::copy(&mut from, &mut to)
        .and_then(|_| to.flush())
        .map_err(ioe(out))?;
    Ok(packed)
}

/// The root of `dir`, every block below it put first.
fn pack_root(w: &mut CarOut, dir: &Path) -> Result<Cid, PackError> {
    let (root, _) = pack_entry(w, dir, 0)?.ok_or_else(|| PackError::Unsupported {
        path: dir.display().to_string(),
        reason: "nothing to pack".into(),
    })?;
    Ok(root)
}

struct CarOut {
    /// None: the CID alone is wanted, and the bytes are only counted.
    w: Option<BufWriter<File>>,
    counted: u64,
    blocks: u64,
    path: PathBuf,
    p: Params,
}

/// Counts what would be written.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl CarOut {
    fn header(&mut self, header: &[u8]) -> Result<(), PackError> {
        match &mut self.w {
            Some(w) => w.write_all(header).map_err(ioe(&self.path)),
            None => {
                self.counted += header.len() as u64;
                Ok(())
            }
        }
    }

    fn put(&mut self, cid: &Cid, block: &[u8]) -> Result<(), PackError> {
        if crate::scratch::interrupted() {
            return Err(PackError::Interrupted);
        }
        self.blocks += 1;
        match &mut self.w {
            Some(w) => car::write_section(w, cid, block).map_err(ioe(&self.path)),
            None => {
                let mut c = Count(0);
                car::write_section(&mut c, cid, block).map_err(ioe(&self.path))?;
                self.counted += c.0;
                Ok(())
            }
        }
    }
}

/// Returns the entry's CID and its cumulative DAG size (the `Tsize` its parent records), or
/// `None` for a directory with nothing to pack under a profile that leaves empty directories
/// out: ipfs-car packs a list of files, so empty directories below the root do not appear.
fn pack_entry(w: &mut CarOut, path: &Path, depth: usize) -> Result<Option<(Cid, u64)>, PackError> {
    let meta = std::fs::symlink_metadata(path).map_err(ioe(path))?;
    if meta.is_dir() {
        if depth > MAX_DIR_DEPTH {
            return Err(PackError::Unsupported {
                path: path.display().to_string(),
                reason: format!("nested deeper than {MAX_DIR_DEPTH} directories"),
            });
        }
        pack_dir_node(w, path, depth)
    } else if meta.is_file() {
        pack_file(w, path).map(Some)
    } else {
        Err(PackError::Unsupported {
            path: path.display().to_string(),
            reason: "only regular files and directories can be packed".into(),
        })
    }
}

fn pack_dir_node(
    w: &mut CarOut,
    path: &Path,
    depth: usize,
) -> Result<Option<(Cid, u64)>, PackError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(path).map_err(ioe(path))? {
        let e = e.map_err(ioe(path))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|_| PackError::Unsupported {
                path: e.path().display().to_string(),
                reason: "name is not UTF-8".into(),
            })?;
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    if names.len() > MAX_PACKED_ENTRIES {
        return Err(PackError::Unsupported {
            path: path.display().to_string(),
            reason: format!(
                "{} entries, over the {MAX_PACKED_ENTRIES} a directory may hold",
                names.len()
            ),
        });
    }
    names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut links = Vec::with_capacity(names.len());
    let mut total = 0u64;
    for name in names {
        let Some((cid, size)) = pack_entry(w, &path.join(&name), depth + 1)? else {
            continue;
        };
        total += size;
        links.push(PbLink {
            cid,
            name: Some(name.into_bytes()),
            tsize: Some(size),
        });
    }
    if links.is_empty() && depth > 0 && !w.p.empty_dirs {
        return Ok(None);
    }
    let sharded = match w.p.shard {
        ShardWhen::LinksCount(n) => links.len() > n,
        // Every link counts, a subdirectory's as a file's, as boxo (kubo) estimates it.
        ShardWhen::LinksBytes(n) => {
            links
                .iter()
                .map(|l| l.name.as_ref().map_or(0, Vec::len) + l.cid.encoded_len())
                .sum::<usize>()
                > n
        }
        // Known only once the node is encoded, below.
        ShardWhen::BlockBytes(_) => false,
    };
    if sharded {
        return pack_sharded(w, path, links).map(Some);
    }
    let data = Data {
        kind: Kind::Directory,
        data: None,
        filesize: None,
        blocksizes: vec![],
        hash_type: None,
        fanout: None,
    };
    let node = PbNode {
        links,
        data: Some(data.encode().into()),
    };
    let block = dagpb::encode(&node);
    if let ShardWhen::BlockBytes(n) = w.p.shard {
        if block.len() > n {
            return pack_sharded(w, path, node.links).map(Some);
        }
    }
    let cid = w.p.dag_cid(&block);
    w.put(&cid, &block)?;
    Ok(Some((cid, total + block.len() as u64)))
}

/// A directory over its profile's threshold, as the HAMT ipfs-car (and every UnixFS
/// implementation: 256 slots, murmur3-x64-64 of the names) writes.
fn pack_sharded(w: &mut CarOut, path: &Path, links: Vec<PbLink>) -> Result<(Cid, u64), PackError> {
    let entries = links
        .into_iter()
        .map(|l| hamt::Entry {
            name: String::from_utf8(l.name.unwrap_or_default()).unwrap_or_default(),
            cid: l.cid,
            tsize: l.tsize.unwrap_or(0),
        })
        .collect();
    let mut err = None;
    let p = w.p;
    let built = hamt::build_with(entries, &|b| p.dag_cid(b), &mut |b| {
        w.put(&b.cid, &b.block).map_err(|e| {
            let msg = e.to_string();
            err = Some(e);
            msg
        })
    });
    match (built, err) {
        (Ok(r), _) => Ok(r),
        (Err(_), Some(e)) => Err(e),
        (Err(reason), None) => Err(PackError::Unsupported {
            path: path.display().to_string(),
            reason,
        }),
    }
}

/// One node of a file DAG: its CID, content size and cumulative DAG size.
#[derive(Clone, Copy)]
struct Part {
    cid: Cid,
    content: u64,
    dag: u64,
}

fn pack_file(w: &mut CarOut, path: &Path) -> Result<(Cid, u64), PackError> {
    let mut f = File::open(path).map_err(ioe(path))?;
    let mut parts = Vec::new();
    let chunk = w.p.chunk;
    let width = w.p.width;
    let mut buf = vec![0u8; chunk];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(ioe(path))?;
        if n == 0 && !parts.is_empty() {
            break;
        }
        let content = &buf[..n];
        if w.p.raw_leaves {
            let cid = raw_cid(content);
            w.put(&cid, content)?;
            parts.push(Part {
                cid,
                content: n as u64,
                dag: n as u64,
            });
        } else {
            // A dag-pb leaf: a UnixFS File node holding the chunk (none for an empty file).
            let data = Data {
                kind: Kind::File,
                data: (n > 0).then(|| bytes::Bytes::copy_from_slice(content)),
                filesize: Some(n as u64),
                blocksizes: vec![],
                hash_type: None,
                fanout: None,
            };
            let block = dagpb::encode(&PbNode {
                links: vec![],
                data: Some(data.encode().into()),
            });
            let cid = w.p.dag_cid(&block);
            w.put(&cid, &block)?;
            parts.push(Part {
                cid,
                content: n as u64,
                dag: block.len() as u64,
            });
        }
        if n < chunk {
            break;
        }
    }
    // Balanced layout: group `width` parts per node, level by level, until one remains.
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(width));
        for group in parts.chunks(width) {
            let data = Data {
                kind: Kind::File,
                data: None,
                filesize: Some(group.iter().map(|p| p.content).sum()),
                blocksizes: group.iter().map(|p| p.content).collect(),
                hash_type: None,
                fanout: None,
            };
            let links = group
                .iter()
                .map(|p| PbLink {
                    cid: p.cid,
                    name: Some(Vec::new()),
                    tsize: Some(p.dag),
                })
                .collect();
            let block = dagpb::encode(&PbNode {
                links,
                data: Some(data.encode().into()),
            });
            let cid = w.p.dag_cid(&block);
            w.put(&cid, &block)?;
            next.push(Part {
                cid,
                content: group.iter().map(|p| p.content).sum(),
                dag: block.len() as u64 + group.iter().map(|p| p.dag).sum::<u64>(),
            });
        }
        parts = next;
    }
    // parts always holds exactly one element here.
    let p = parts
        .first()
        .copied()
        .ok_or_else(|| PackError::Unsupported {
            path: path.display().to_string(),
            reason: "empty DAG".into(),
        })?;
    Ok((p.cid, p.dag))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
