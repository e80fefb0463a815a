//! The cache's blocks on disk: one file per verified block, named by its CID, in a directory
//! that is the cache's own.
//!
//! The cache removes files in its directory (least recently used blocks, corrupted entries,
//! leftovers of interrupted writes), so it must never share one: a directory it uses holds
//! only `CACHEDIR.TAG` (the standard cache-directory tag, which also tells backup tools to skip
//! it), files named by a CID, and its own `.tmp-<digits>` files. Anything else there (a log
//! file, a configuration) stops the cache before it touches anything. A directory from an
//! earlier version (blocks and temporaries, no tag) is adopted: the tag is written.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use cid::Cid;
use tracing::{debug, info, warn};

use super::CacheError;
use crate::reference::{verify_block, VerifiedBlock, MAX_BLOCK_SIZE};

/// The cache-directory tag (<https://bford.info/cachedir/>): the directory is the cache's.
pub const TAG: &str = "CACHEDIR.TAG";
const TAG_TEXT: &str = "Signature: 8a477f597d28d172789f06886806bc55\n\
# This directory is the gateway cache of cidboot host: one file per verified block, named by\n\
# its CID. cidboot removes files here; keep nothing else in it.\n\
# For information about cache directory tags, see https://bford.info/cachedir/\n";
const TMP_PREFIX: &str = ".tmp-";
/// Most blocks indexed at once (each costs about 300 bytes of the daemon's memory): beyond it
/// the least recently used go, as beyond `max_bytes`.
pub const MAX_CACHED_BLOCKS: usize = 1 << 18;
/// Foreign entries named in the error that refuses a directory.
const NAMED: usize = 3;

/// What one directory entry is to the cache.
enum Entry {
    Tag,
    Block(Cid),
    Temp,
    Foreign,
}

fn classify(name: &OsStr, is_file: bool) -> Entry {
    let Some(name) = name.to_str() else {
        return Entry::Foreign;
    };
    if !is_file {
        return Entry::Foreign;
    }
    if name == TAG {
        return Entry::Tag;
    }
    if name
        .strip_prefix(TMP_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Entry::Temp;
    }
    match name.parse::<Cid>() {
        Ok(c) if c.to_string() == name => Entry::Block(c),
        _ => Entry::Foreign,
    }
}

/// A directory's entries as the cache sees them (symlinks and subdirectories are foreign).
struct Scan {
    tag: bool,
    blocks: Vec<(std::time::SystemTime, Cid, u64, PathBuf)>,
    temps: Vec<PathBuf>,
    foreign: Vec<String>,
    foreign_count: usize,
}

fn scan(dir: &Path) -> Result<Scan, CacheError> {
    let io = |source| CacheError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut s = Scan {
        tag: false,
        blocks: Vec::new(),
        temps: Vec::new(),
        foreign: Vec::new(),
        foreign_count: 0,
    };
    for e in std::fs::read_dir(dir).map_err(io)? {
        let e = e.map_err(io)?;
        let is_file = e.file_type().map_err(io)?.is_file();
        match classify(&e.file_name(), is_file) {
            Entry::Tag => s.tag = true,
            Entry::Temp => s.temps.push(e.path()),
            Entry::Block(c) => {
                let meta = e.metadata().map_err(io)?;
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                s.blocks.push((mtime, c, meta.len(), e.path()));
            }
            Entry::Foreign => {
                s.foreign_count += 1;
                if s.foreign.len() < NAMED {
                    s.foreign.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    s.foreign.sort();
    Ok(s)
}

fn dir_error(dir: &Path, reason: String) -> CacheError {
    CacheError::Dir {
        path: dir.display().to_string(),
        reason,
    }
}

/// Whether `dir` can be the cache's directory, without creating or changing anything: a
/// writable directory holding only the cache's files, or a missing one whose parent is a
/// writable directory. `cidboot host --check` runs this.
pub fn check_dir(dir: &Path) -> Result<(), CacheError> {
    use nix::unistd::{access, AccessFlags};
    // The cache writes and removes files there by name: nobody else may change the way to it.
    if let Some(why) = crate::scratch::others_can_change(dir) {
        return Err(dir_error(
            dir,
            format!("{why}: another user could redirect what the cache writes and removes there"),
        ));
    }
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => return Err(dir_error(dir, "is not a directory".into())),
        Ok(_) => {}
        Err(e) if is_missing(&e) => {
            // Created at start, with its missing parents: the nearest existing one must let us.
            let mut up = dir.parent();
            while let Some(p) = up {
                let p = if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                };
                match std::fs::metadata(p) {
                    Ok(m) if m.is_dir() => {
                        return access(p, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
                            dir_error(
                                dir,
                                format!("cannot be created: {} is not writable: {e}", p.display()),
                            )
                        })
                    }
                    Ok(_) => {
                        return Err(dir_error(
                            dir,
                            format!("cannot be created: {} is not a directory", p.display()),
                        ))
                    }
                    Err(e) if is_missing(&e) => up = p.parent(),
                    Err(e) => return Err(dir_error(dir, format!("{}: {e}", p.display()))),
                }
            }
            return Ok(());
        }
        Err(e) => return Err(dir_error(dir, e.to_string())),
    }
    access(
        dir,
        AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK,
    )
    .map_err(|e| dir_error(dir, format!("is not writable: {e}")))?;
    let s = scan(dir)?;
    if s.foreign_count > 0 {
        return Err(foreign(dir, &s));
    }
    Ok(())
}

fn foreign(dir: &Path, s: &Scan) -> CacheError {
    let more = s.foreign_count - s.foreign.len();
    dir_error(
        dir,
        format!(
            "holds {}{} that the cache did not write: the cache removes files in its \
             directory, so it needs one of its own (a new or empty directory)",
            s.foreign
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    )
}

/// Not there: missing, or under something that is not a directory (which the walk up to the
/// nearest existing parent then names).
fn is_missing(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// The blocks on disk and their use order.
pub(super) struct Store {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    entries: HashMap<Cid, (u64, u64)>,
    order: BTreeMap<u64, Cid>,
    total: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, cid: &Cid) {
        self.tick += 1;
        let t = self.tick;
        if let Some(e) = self.entries.get_mut(cid) {
            self.order.remove(&e.1);
            e.1 = t;
            self.order.insert(t, *cid);
        }
    }
    fn insert(&mut self, cid: Cid, size: u64) {
        if self.entries.contains_key(&cid) {
            return self.touch(&cid);
        }
        self.tick += 1;
        self.entries.insert(cid, (size, self.tick));
        self.order.insert(self.tick, cid);
        self.total += size;
    }
    fn remove(&mut self, cid: &Cid) {
        if let Some((size, t)) = self.entries.remove(cid) {
            self.order.remove(&t);
            self.total -= size;
        }
    }
}

impl Store {
    /// Opens the cache's directory (created, private, if missing), adopting one that holds
    /// only the cache's files and refusing any other; removes the leftovers of interrupted
    /// writes and indexes the blocks.
    pub(super) fn open(dir: &Path, max_bytes: u64) -> Result<Store, CacheError> {
        let io = |source| CacheError::Io {
            path: dir.display().to_string(),
            source,
        };
        check_dir(dir)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let s = scan(dir)?;
        if s.foreign_count > 0 {
            // It changed since the check above: still nothing is touched.
            return Err(foreign(dir, &s));
        }
        if !s.tag {
            write_tag(dir).map_err(io)?;
            if !s.blocks.is_empty() {
                info!(dir = %dir.display(), blocks = s.blocks.len(), "gateway cache: adopted a directory of blocks (written by an earlier version) and tagged it");
            }
        }
        for t in &s.temps {
            let _ = std::fs::remove_file(t);
        }
        let mut found = Vec::with_capacity(s.blocks.len());
        for (mtime, c, len, path) in s.blocks {
            if len <= MAX_BLOCK_SIZE as u64 {
                found.push((mtime, c, len));
            } else {
                // Named as a block but larger than any block can be: a corrupted entry.
                let _ = std::fs::remove_file(path);
            }
        }
        found.sort();
        let store = Store {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index::default()),
        };
        if let Ok(mut ix) = store.index.lock() {
            for (_, c, size) in found {
                ix.insert(c, size);
            }
            info!(dir = %dir.display(), blocks = ix.entries.len(), bytes = ix.total, "gateway cache opened");
        }
        store.evict(None);
        Ok(store)
    }

    fn path(&self, cid: &Cid) -> PathBuf {
        self.dir.join(cid.to_string())
    }

    /// The size of a block on disk, if it is there.
    pub(super) fn size(&self, cid: &Cid) -> Option<u64> {
        self.index.lock().ok()?.entries.get(cid).map(|e| e.0)
    }

    /// A cached block, read whole and verified again against its CID; a corrupted entry is
    /// removed.
    pub(super) async fn get(&self, cid: &Cid) -> Option<VerifiedBlock> {
        self.size(cid)?;
        let path = self.path(cid);
        let data = match tokio::fs::read(&path).await {
            Ok(d) if d.len() <= MAX_BLOCK_SIZE => Bytes::from(d),
            _ => {
                self.drop_entry(cid).await;
                return None;
            }
        };
        let block = match verify_block(cid, &data) {
            Ok(b) => b,
            Err(e) => {
                warn!(%cid, error = %e, "corrupted cache entry: removed, fetching it again");
                self.drop_entry(cid).await;
                return None;
            }
        };
        if let Ok(mut ix) = self.index.lock() {
            ix.touch(cid);
        }
        Some(block)
    }

    /// A cached block opened for reading in pieces, with its size (the reader verifies it).
    pub(super) async fn open_block(&self, cid: &Cid) -> Option<(tokio::fs::File, u64)> {
        self.size(cid)?;
        let opened = async {
            let f = tokio::fs::File::open(self.path(cid)).await?;
            let len = f.metadata().await?.len();
            Ok::<_, std::io::Error>((f, len))
        }
        .await;
        match opened {
            Ok((f, len)) if len <= MAX_BLOCK_SIZE as u64 => {
                if let Ok(mut ix) = self.index.lock() {
                    ix.touch(cid);
                }
                Some((f, len))
            }
            _ => {
                self.drop_entry(cid).await;
                None
            }
        }
    }

    /// Forgets a block and removes its file (a corrupted or vanished entry).
    pub(super) async fn drop_entry(&self, cid: &Cid) {
        if let Ok(mut ix) = self.index.lock() {
            ix.remove(cid);
        }
        let _ = tokio::fs::remove_file(self.path(cid)).await;
    }

    /// Stores a verified block (written to a temporary name, then renamed into place).
    pub(super) async fn put(&self, cid: &Cid, data: &Bytes) {
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}", fastrand::u64(1_000_000..)));
        let r = async {
            tokio::fs::write(&tmp, data).await?;
            tokio::fs::rename(&tmp, self.path(cid)).await
        }
        .await;
        if let Err(e) = r {
            warn!(%cid, error = %e, "could not store a block in the cache");
            let _ = tokio::fs::remove_file(&tmp).await;
            return;
        }
        if let Ok(mut ix) = self.index.lock() {
            ix.insert(*cid, data.len() as u64);
        }
        self.evict(Some(cid));
    }

    /// Removes least recently used blocks until the total is under the cap (in bytes and in
    /// blocks).
    fn evict(&self, keep: Option<&Cid>) {
        let mut gone = Vec::new();
        if let Ok(mut ix) = self.index.lock() {
            while ix.total > self.max_bytes || ix.entries.len() > MAX_CACHED_BLOCKS {
                let Some((_, c)) = ix
                    .order
                    .iter()
                    .find(|(_, c)| Some(*c) != keep)
                    .map(|(t, c)| (*t, *c))
                else {
                    break;
                };
                ix.remove(&c);
                gone.push(c);
            }
        }
        for c in &gone {
            let _ = std::fs::remove_file(self.path(c));
        }
        if !gone.is_empty() {
            debug!(blocks = gone.len(), "evicted from the gateway cache");
        }
    }
}

/// Writes the tag through a temporary file, so that a crash leaves the tag whole or absent.
fn write_tag(dir: &Path) -> std::io::Result<()> {
    let tmp = dir.join(format!("{TMP_PREFIX}{}", fastrand::u64(1_000_000..)));
    let r = std::fs::write(&tmp, TAG_TEXT).and_then(|()| std::fs::rename(&tmp, dir.join(TAG)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}
