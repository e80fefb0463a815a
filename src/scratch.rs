//! Private scratch and staging directories, and what is left of them after a signal or a kill.
//!
//! Whatever cidboot stages (a root being applied, spill files, a layout or a CAR being written,
//! a scratch root for `cidboot run`) lives in a [`PrivateDir`]: made by `mkdir` with mode 0700,
//! so it is private from the instant it exists (the umask can only narrow a mode), and never
//! shaped by the image. An image sets the mode of the root it is applied to (its `./` entry),
//! so a root is always made *inside* a private directory, and renamed out of it only once it is
//! complete (and, for `cidboot unpack`, private itself).
//!
//! **Leftovers.** A process that is killed (SIGKILL, a crash, the power) removes nothing.
//! Each private directory is locked with `flock(2)` for as long as its process lives, and every
//! new one first sweeps its siblings of the same prefix: one whose lock can be taken belongs to
//! no live process and is removed; one that is locked belongs to a concurrent cidboot and is
//! left alone. A lock rather than a PID file: a PID can be reused by an unrelated process after
//! a crash, and checking one races with it; a lock cannot outlive the descriptors that hold it,
//! needs no clean-up of its own, and tells a dead leftover from a live one in one call. The
//! lock's descriptor is close-on-exec, so the sandboxes cidboot starts never hold it.
//!
//! **Signals.** Every live directory (and every kept root of `cidboot run --rootfs`) is in a
//! registry until it is committed or removed. After a signal the CLI stops the work, then
//! [`clean_up_interrupted`] removes (or empties) everything still registered: a task that was
//! still writing when its guard was dropped cannot leave anything behind.

use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Random characters in a private directory's name.
const NAME_RANDOM: usize = 12;
/// Tries to make a fresh name before giving up (each collides only with a live directory).
const CREATE_TRIES: usize = 16;
/// Passes over a tree being removed: a writer that has not yet noticed may add an entry.
const REMOVE_TRIES: usize = 5;

/// Why a private directory or a kept root could not be made or claimed.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ScratchError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is in use by another cidboot run (its lock {marker} is held)")]
    InUse { path: String, marker: String },
    #[error("{marker} is not a file of this user: refusing to use it as the lock of {path}")]
    NotOurs { path: String, marker: String },
    #[error("{path} exists and is not empty")]
    NotEmpty { path: String },
    #[error("refusing to stage anything in {path}: {why}; another user could swap what is staged there for a symlink while it is written, and make this process write (as root: overwrite files) where they choose. Use a directory that only root and you can change (sticky ones such as /tmp are fine)")]
    Exposed { path: String, why: String },
}

impl ScratchError {
    /// The path the error is about, and the error as an I/O error: for callers whose own
    /// errors carry both.
    pub fn into_io(self) -> (String, io::Error) {
        match self {
            ScratchError::Io { path, source } => (path, source),
            other => {
                let (path, kind) = match &other {
                    ScratchError::InUse { path, .. } => (path.clone(), io::ErrorKind::ResourceBusy),
                    ScratchError::NotEmpty { path } => {
                        (path.clone(), io::ErrorKind::DirectoryNotEmpty)
                    }
                    ScratchError::NotOurs { path, .. }
                    | ScratchError::Exposed { path, .. }
                    | ScratchError::Io { path, .. } => {
                        (path.clone(), io::ErrorKind::PermissionDenied)
                    }
                };
                (path, io::Error::new(kind, other.to_string()))
            }
        }
    }
}

fn ioe(path: &Path) -> impl FnOnce(io::Error) -> ScratchError + '_ {
    move |source| ScratchError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What happens to a registered path after a signal.
#[derive(Debug, Clone)]
enum Cleanup {
    /// The whole directory is removed.
    Remove,
    /// The directory (the user's) is emptied and kept; then its lock file is removed.
    Empty { marker: PathBuf },
}

struct Entry {
    id: u64,
    path: PathBuf,
    cleanup: Cleanup,
}

static LIVE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn live() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    // A panic elsewhere while holding the lock leaves the list as consistent as it was.
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn register(path: &Path, cleanup: Cleanup) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    live().push(Entry {
        id,
        path: path.to_path_buf(),
        cleanup,
    });
    id
}

/// Forgets an entry that was cleaned up, except after a signal: then
/// [`clean_up_interrupted`] goes over it again once the work has stopped.
fn unregister(id: u64) {
    if !interrupted() {
        forget(id);
    }
}

/// Forgets an entry whose path is no longer this process's to clean up (committed, kept).
fn forget(id: u64) {
    live().retain(|e| e.id != id);
}

/// Marks the process as interrupted: guards dropped from now on leave their entries for
/// [`clean_up_interrupted`].
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Removes every registered directory and empties every registered kept root; returns what
/// it did (`removed PATH`, `emptied PATH`) and what it could not do (with the reason).
pub fn clean_up_interrupted() -> (Vec<String>, Vec<String>) {
    let entries: Vec<(PathBuf, Cleanup)> = live().drain(..).map(|e| (e.path, e.cleanup)).collect();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (path, cleanup) in entries {
        let (verb, r) = match &cleanup {
            Cleanup::Remove => ("removed", remove_tree(&path)),
            Cleanup::Empty { marker } => (
                "emptied",
                empty_dir(&path).and_then(|()| remove_file(marker)),
            ),
        };
        match r {
            Ok(()) => done.push(format!("{verb} {}", path.display())),
            Err(e) => failed.push(format!("{}: {e}", path.display())),
        }
    }
    (done, failed)
}

/// A directory of this process, mode 0700 from its creation and locked while it lives;
/// removed with everything in it when dropped (see the module's documentation).
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
    _lock: Flock<File>,
    id: u64,
}

impl PrivateDir {
    /// Makes `parent/PREFIX<random>`, after removing the dead leftovers (see [`sweep`]) of
    /// earlier processes in `parent` with the same prefix. Refused where another user could
    /// change the way to it ([`others_can_change`]).
    pub fn create(parent: &Path, prefix: &str) -> Result<PrivateDir, ScratchError> {
        if let Some(why) = others_can_change(parent) {
            return Err(ScratchError::Exposed {
                path: parent.display().to_string(),
                why,
            });
        }
        let swept = sweep(parent, prefix);
        if !swept.is_empty() {
            tracing::info!(
                removed = ?swept,
                "removed what an interrupted cidboot left behind"
            );
        }
        let mut last = None;
        for _ in 0..CREATE_TRIES {
            let name: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(NAME_RANDOM)
                .collect();
            let path = parent.join(format!("{prefix}{name}"));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ioe(&path)(e)),
            }
            match lock_dir(&path) {
                // Another process's sweep may have taken this directory for a dead one in the
                // instant between the mkdir and the lock; then it is gone, and another name
                // is tried.
                Ok(Some(lock)) if same_file(&lock, &path) => {
                    let id = register(&path, Cleanup::Remove);
                    return Ok(PrivateDir {
                        path,
                        _lock: lock,
                        id,
                    });
                }
                Ok(_) => last = Some(io::Error::other("removed as it was being made")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => last = Some(e),
                Err(e) => {
                    let _ = std::fs::remove_dir(&path);
                    return Err(ioe(&path)(e));
                }
            }
        }
        Err(ioe(parent)(last.unwrap_or_else(|| {
            io::Error::other("no free name for a private directory")
        })))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(dir = %self.path.display(), "could not remove: {e}");
        }
        unregister(self.id);
    }
}

/// Symlinks followed on the way to a directory before it counts as unresolvable (Linux's own
/// limit).
const MAX_SYMLINKS: usize = 40;

/// Why another local user could change what a path under `dir` leads to: a directory on the
/// way to it (every component, each symlink followed from where it is) that is owned by
/// neither root nor this user, or that its group (other than root's) or others may write to
/// without the sticky bit. What cidboot stages is written by path, so a user who can rename
/// entries in one of those directories could swap the staging directory, or one above it, for
/// a symlink to a directory of theirs while it is written. `None` when nobody else can; a path
/// that cannot be checked counts as changeable.
pub fn others_can_change(dir: &Path) -> Option<String> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::path::Component;
    let me = nix::unistd::geteuid().as_raw();
    let abs = match std::path::absolute(dir) {
        Ok(a) => a,
        Err(e) => return Some(format!("it cannot be checked: {e}")),
    };
    let parts = |p: &Path| -> VecDeque<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let exposed = |p: &Path, m: &std::fs::Metadata| -> Option<String> {
        let mode = m.mode() & 0o7777;
        let sticky = mode & 0o1000 != 0;
        if m.uid() != 0 && m.uid() != me {
            return Some(format!("{} is owned by uid {}", p.display(), m.uid()));
        }
        let group_writes = mode & 0o020 != 0 && m.gid() != 0;
        if (group_writes || mode & 0o002 != 0) && !sticky {
            return Some(format!(
                "{} (mode {mode:04o}) may be written to by other users and is not sticky",
                p.display()
            ));
        }
        None
    };
    let mut todo = parts(&abs);
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    match std::fs::metadata(&cur) {
        Ok(m) => {
            if let Some(why) = exposed(&cur, &m) {
                return Some(why);
            }
        }
        Err(e) => return Some(format!("/ cannot be checked: {e}")),
    }
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            // `cur` has no symlink in it: its parent is the real one.
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        let m = match std::fs::symlink_metadata(&next) {
            Ok(m) => m,
            // Not there yet: it will be made by this process, inside `cur`.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => return Some(format!("{} cannot be checked: {e}", next.display())),
        };
        if m.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Some(format!("{} has too many symlinks", abs.display()));
            }
            // The link itself is in `cur`, which was checked: follow it from there.
            let target = match std::fs::read_link(&next) {
                Ok(t) => t,
                Err(e) => return Some(format!("{} cannot be checked: {e}", next.display())),
            };
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            let mut rest = parts(&target);
            rest.extend(todo);
            todo = rest;
            continue;
        }
        if !m.is_dir() {
            return Some(format!("{} is not a directory", next.display()));
        }
        if let Some(why) = exposed(&next, &m) {
            return Some(why);
        }
        cur = next;
    }
    None
}

/// Opens `path` as a directory (never through a symlink) and tries to lock it: `None` when
/// another process holds the lock.
fn lock_dir(path: &Path) -> io::Result<Option<Flock<File>>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    lock_file(f)
}

fn lock_file(f: File) -> io::Result<Option<Flock<File>>> {
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// Whether the open file and `path` are the same file (by device and inode).
fn same_file(f: &File, path: &Path) -> bool {
    match (f.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Removes the directories `parent/PREFIX…` of this user that no live process holds (the
/// leftovers of a cidboot that was killed) and returns them. A symlink, a file, another user's
/// directory, or one whose lock is held is left alone; so is anything that cannot be read.
pub fn sweep(parent: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let me = nix::unistd::geteuid().as_raw();
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(prefix) || name.len() <= prefix.len() {
            continue;
        }
        let path = e.path();
        let Ok(Some(lock)) = lock_dir(&path) else {
            continue;
        };
        let ours = lock.metadata().is_ok_and(|m| m.uid() == me);
        if ours && same_file(&lock, &path) && remove_tree(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Removes a directory and everything in it, never following a symlink (std's
/// `remove_dir_all` opens each directory relative to its parent with `O_NOFOLLOW`). A
/// directory without write permission for its owner (an image may ship one; it only matters
/// when not running as root) is made writable first. Gone already is success.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let mut last = None;
    for _ in 0..REMOVE_TRIES {
        match std::fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    make_writable(path);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not remove")))
}

/// Removes everything inside `dir`, keeping `dir`; symlinks are removed, never followed.
pub fn empty_dir(dir: &Path) -> io::Result<()> {
    let mut last = None;
    for _ in 0..REMOVE_TRIES {
        match empty_once(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("could not empty")))
}

fn empty_once(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => remove_tree(&path)?,
            Ok(_) => remove_file(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn remove_file(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Gives the owner full access to every directory under `path` (inclusive), walking real
/// directories only. Only ever called on a tree inside a private directory of this process,
/// where nothing else can swap a directory for a symlink.
fn make_writable(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        match std::fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {
                if m.mode() & 0o700 != 0o700 {
                    let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
                }
            }
            _ => continue,
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
}

/// A directory the user named to keep a root in (`cidboot run --rootfs DIR`), claimed for
/// this process. A hidden sibling lock file (`.NAME.cidboot-partial`) exists, locked, from the
/// claim until the root is kept: a lock file that is there but not locked when the next run
/// claims the same directory means a run was killed there, and the directory is emptied again.
/// Dropped without [`KeptDir::keep`], the directory is emptied and the lock file removed.
#[derive(Debug)]
pub struct KeptDir {
    dir: PathBuf,
    marker: PathBuf,
    lock: Option<Flock<File>>,
    id: u64,
    /// Whether the claim found (and emptied) the leftover of a killed run.
    pub reclaimed: bool,
}

impl KeptDir {
    /// Claims `dir` and creates it: refused while another run holds it, and when it holds
    /// anything but the leftover of a killed run (which is emptied).
    pub fn claim(dir: &Path) -> Result<KeptDir, ScratchError> {
        let name = dir
            .file_name()
            .ok_or_else(|| ioe(dir)(io::Error::other("names no directory")))?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(ioe(&parent))?;
        let marker = parent.join(format!(".{name}.cidboot-partial"));
        let (f, existed) = match open_marker(&marker, true) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                (open_marker(&marker, false).map_err(ioe(&marker))?, true)
            }
            Err(e) => return Err(ioe(&marker)(e)),
        };
        let m = f.metadata().map_err(ioe(&marker))?;
        if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() {
            return Err(ScratchError::NotOurs {
                path: dir.display().to_string(),
                marker: marker.display().to_string(),
            });
        }
        let lock = lock_file(f)
            .map_err(ioe(&marker))?
            .ok_or_else(|| ScratchError::InUse {
                path: dir.display().to_string(),
                marker: marker.display().to_string(),
            })?;
        if existed {
            empty_dir(dir).map_err(ioe(dir))?;
            tracing::info!(rootfs = %dir.display(), "emptied the root an interrupted cidboot run left behind");
        } else if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) || dir.is_file() {
            // Not ours to empty: let go of the claim without touching it.
            let _ = remove_file(&marker);
            drop(lock);
            return Err(ScratchError::NotEmpty {
                path: dir.display().to_string(),
            });
        }
        std::fs::create_dir_all(dir).map_err(ioe(dir))?;
        let id = register(
            dir,
            Cleanup::Empty {
                marker: marker.clone(),
            },
        );
        Ok(KeptDir {
            dir: dir.to_path_buf(),
            marker,
            lock: Some(lock),
            id,
            reclaimed: existed,
        })
    }

    /// Keeps the root as it is: the lock file goes, and a signal no longer empties it.
    pub fn keep(mut self) {
        forget(self.id);
        let _ = remove_file(&self.marker);
        self.lock = None;
    }
}

fn open_marker(p: &Path, new: bool) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if new {
        o.create_new(true);
    }
    o.open(p)
}

impl Drop for KeptDir {
    fn drop(&mut self) {
        if self.lock.is_none() {
            return;
        }
        match empty_dir(&self.dir) {
            Ok(()) => {
                let _ = remove_file(&self.marker);
            }
            Err(e) => {
                tracing::warn!(rootfs = %self.dir.display(), "could not empty the partly applied root: {e}");
            }
        }
        unregister(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_private_dir_is_0700_and_removed_when_dropped() {
        let parent = tempfile::tempdir().unwrap();
        let d = PrivateDir::create(parent.path(), "x-").unwrap();
        assert_eq!(mode(d.path()), 0o700);
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"x").unwrap();
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn a_sweep_removes_dead_leftovers_and_leaves_live_ones() {
        let parent = tempfile::tempdir().unwrap();
        let live = PrivateDir::create(parent.path(), "x-").unwrap();
        // A leftover of a killed process: the directory, with nothing holding its lock.
        let dead = parent.path().join("x-deadbeef0000");
        std::fs::create_dir(&dead).unwrap();
        std::fs::create_dir(dead.join("ro")).unwrap();
        std::fs::write(dead.join("ro/f"), b"x").unwrap();
        // Other names, a symlink and a file are never touched.
        let other = parent.path().join("y-deadbeef0000");
        std::fs::create_dir(&other).unwrap();
        std::os::unix::fs::symlink(&other, parent.path().join("x-link")).unwrap();
        std::fs::write(parent.path().join("x-file"), b"x").unwrap();
        let removed = sweep(parent.path(), "x-");
        assert_eq!(removed, vec![dead.clone()]);
        assert!(!dead.exists());
        assert!(live.path().exists() && other.exists());
        assert!(parent.path().join("x-link").exists() && parent.path().join("x-file").exists());
    }

    #[test]
    fn a_directory_another_user_can_change_is_refused_for_staging() {
        use std::os::unix::fs::chown;
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        assert_eq!(others_can_change(p), None);
        assert_eq!(others_can_change(&p.join("not/yet/made")), None);
        // Another user's directory, and one above the target.
        let theirs = p.join("theirs");
        std::fs::create_dir_all(theirs.join("mine")).unwrap();
        chown(&theirs, Some(1000), Some(1000)).unwrap();
        let why = others_can_change(&theirs.join("mine")).unwrap();
        assert!(why.contains("is owned by uid 1000"), "{why}");
        assert!(matches!(
            PrivateDir::create(&theirs, "x-"),
            Err(ScratchError::Exposed { .. })
        ));
        assert!(
            std::fs::read_dir(&theirs).unwrap().count() == 1,
            "nothing made"
        );
        // Writable by others: refused unless sticky.
        let open = p.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(others_can_change(&open).unwrap().contains("not sticky"));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(others_can_change(&open), None);
        // A symlink is followed from where it is, and what it leads to is checked too.
        std::os::unix::fs::symlink(&theirs, p.join("link")).unwrap();
        assert!(others_can_change(&p.join("link/mine")).is_some());
        std::os::unix::fs::symlink("open", p.join("rel")).unwrap();
        assert_eq!(others_can_change(&p.join("rel")), None);
        // A symlink inside another user's directory, to a safe one, is theirs to change.
        std::os::unix::fs::symlink(&open, theirs.join("to-open")).unwrap();
        assert!(others_can_change(&theirs.join("to-open")).is_some());
    }

    #[test]
    fn a_kept_dir_is_emptied_unless_kept_and_a_killed_claim_is_reclaimed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("root");
        let marker = parent.path().join(".root.cidboot-partial");
        let k = KeptDir::claim(&dir).unwrap();
        assert!(!k.reclaimed && marker.exists());
        assert!(matches!(
            KeptDir::claim(&dir),
            Err(ScratchError::InUse { .. })
        ));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        drop(k);
        // Something that is not a leftover of ours is refused and left as it is.
        std::fs::write(dir.join("theirs"), b"x").unwrap();
        assert!(matches!(
            KeptDir::claim(&dir),
            Err(ScratchError::NotEmpty { .. })
        ));
        assert!(dir.join("theirs").exists() && !marker.exists());
        std::fs::remove_file(dir.join("theirs")).unwrap();
        assert!(dir.exists() && std::fs::read_dir(&dir).unwrap().next().is_none());
        assert!(!marker.exists());
        // A killed run: the lock file is there, nothing holds it.
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(&marker, b"").unwrap();
        let k = KeptDir::claim(&dir).unwrap();
        assert!(k.reclaimed);
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
        std::fs::write(dir.join("kept"), b"x").unwrap();
        k.keep();
        assert!(dir.join("kept").exists() && !marker.exists());
    }
}
