//! Packs a directory into a CARv1 exactly as `ipfs-car pack` does, so that the CID printed
//! here is the CID any IPFS tool computes for the same directory: CIDv1, raw leaves, 1 MiB
//! chunks, balanced file DAGs 1024 links wide, directory links sorted by name, dotfiles
//! skipped, and directories of more than 1000 entries HAMT-sharded.

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
    if !dir.is_dir() {
        return Err(PackError::NotADirectory(dir.display().to_string()));
    }
    if std::fs::symlink_metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return pack_in_place(dir, out);
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
        };
        // The root of a directory is always a 36-byte CIDv1 dag-pb CID, so a placeholder
        // header of the same length can be rewritten in place once the root is known.
        let placeholder = cid_for(CODEC_DAG_PB, b"");
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
    if !dir.is_dir() {
        return Err(PackError::NotADirectory(dir.display().to_string()));
    }
    let mut w = CarOut {
        w: None,
        counted: 0,
        blocks: 0,
        path: PathBuf::new(),
    };
    w.header(&car::encode_header(&cid_for(CODEC_DAG_PB, b"")))?;
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
fn pack_in_place(dir: &Path, out: &Path) -> Result<Packed, PackError> {
    let staged = PrivateDir::create(&std::env::temp_dir(), "cidboot-pack-").map_err(|e| {
        let (path, source) = e.into_io();
        PackError::Io { path, source }
    })?;
    let tmp = staged.path().join("out.car");
    let packed = pack_dir(dir, &tmp)?;
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
/// `None` for a directory with nothing to pack: ipfs-car packs a list of files, so empty
/// directories below the root do not appear.
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
    if links.is_empty() && depth > 0 {
        return Ok(None);
    }
    if links.len() > MAX_DIR_ENTRIES {
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
    let block = dagpb::encode(&PbNode {
        links,
        data: Some(data.encode().into()),
    });
    let cid = cid_for(CODEC_DAG_PB, &block);
    w.put(&cid, &block)?;
    Ok(Some((cid, total + block.len() as u64)))
}

/// A directory of more than [`MAX_DIR_ENTRIES`] entries, as the HAMT ipfs-car writes.
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
    let built = hamt::build(entries, &mut |b| {
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
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let n = read_full(&mut f, &mut buf).map_err(ioe(path))?;
        if n == 0 && !parts.is_empty() {
            break;
        }
        let cid = raw_cid(&buf[..n]);
        w.put(&cid, &buf[..n])?;
        parts.push(Part {
            cid,
            content: n as u64,
            dag: n as u64,
        });
        if n < CHUNK_SIZE {
            break;
        }
    }
    // Balanced layout: group FILE_WIDTH parts per node, level by level, until one remains.
    while parts.len() > 1 {
        let mut next = Vec::with_capacity(parts.len().div_ceil(FILE_WIDTH));
        for group in parts.chunks(FILE_WIDTH) {
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
            let cid = cid_for(CODEC_DAG_PB, &block);
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
