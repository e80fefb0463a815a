//! Filesystem operations confined to a root directory.
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` from the root's
//! directory fd, so symlinks (absolute or relative, planted by any earlier entry) resolve as
//! they will for the chrooted workload: inside the root. The last component of an entry is
//! then handled with `*at` calls on the parent fd that never follow it.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::path::RelPath;
use crate::RootfsError;

/// Deepest directory tree removed recursively (a whiteout or a replaced directory).
pub const MAX_REMOVE_DEPTH: usize = 512;

/// An image's root directory, held open: every path below it is resolved from this fd.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(path: &RelPath, op: &'static str, e: Errno) -> RootfsError {
    RootfsError::Fs {
        path: path.display(),
        op,
        source: std::io::Error::from(e),
    }
}

/// A name as a C string for the `*at` calls; one with a NUL byte is refused.
pub fn cname(name: &[u8]) -> Result<CString, RootfsError> {
    CString::new(name).map_err(|_| RootfsError::BadName(String::from_utf8_lossy(name).into_owned()))
}

impl Root {
    /// Opens the directory `path` as a root.
    pub fn open(path: &Path) -> Result<Root, RootfsError> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RootfsError::Fs {
            path: path.display().to_string(),
            op: "open root",
            source: e.into(),
        })?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Where the root is, for messages and mounts.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's directory fd.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Opens `rel` (a directory) with in-root resolution.
    pub fn open_dir(&self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        openat2(self.fd.as_fd(), OsStr::from_bytes(&rel.as_bytes()), how)
    }

    /// Opens the directory `rel`, creating missing components (mode 0755) along the way.
    /// A missing component that is a dangling symlink is refused rather than created
    /// through: that is how a write through a symlink aimed outside the root shows up.
    pub fn ensure_dir(&self, rel: &RelPath) -> Result<OwnedFd, RootfsError> {
        match self.open_dir(rel) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.classify(rel, e)),
        }
        let mut cur = self.dup_root()?;
        let mut prefix = RelPath::default();
        for comp in &rel.0 {
            prefix = prefix.join(comp);
            match self.open_dir(&prefix) {
                Ok(fd) => {
                    cur = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.classify(&prefix, e)),
            }
            let name = cname(comp)?;
            match fstatat(
                cur.as_fd(),
                name.as_c_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) if is_type(&st, SFlag::S_IFLNK) => {
                    return Err(RootfsError::SymlinkOutside(prefix.display()))
                }
                Ok(_) => return Err(RootfsError::NotADirectory(prefix.display())),
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err(&prefix, "stat", e)),
            }
            mkdirat(
                cur.as_fd(),
                name.as_c_str(),
                Mode::from_bits_truncate(0o755),
            )
            .map_err(|e| io_err(&prefix, "mkdir", e))?;
            cur = openat(
                cur.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(&prefix, "open", e))?;
        }
        Ok(cur)
    }

    fn classify(&self, rel: &RelPath, e: Errno) -> RootfsError {
        match e {
            Errno::ELOOP => RootfsError::SymlinkLoop(rel.display()),
            Errno::ENOTDIR => RootfsError::NotADirectory(rel.display()),
            Errno::EXDEV => RootfsError::SymlinkOutside(rel.display()),
            e => io_err(rel, "resolve", e),
        }
    }
}

/// Whether `st` is of the file type `t`.
pub fn is_type(st: &FileStat, t: SFlag) -> bool {
    (st.st_mode & SFlag::S_IFMT.bits()) == t.bits()
}

/// `fstatat` without following, `None` if absent.
pub fn lstat_at(
    dir: &OwnedFd,
    name: &CString,
    rel: &RelPath,
) -> Result<Option<FileStat>, RootfsError> {
    match fstatat(
        dir.as_fd(),
        name.as_c_str(),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(io_err(rel, "stat", e)),
    }
}

/// Removes `name` under `dir`, recursively, without following any symlink.
pub fn remove_all(
    dir: &OwnedFd,
    name: &[u8],
    rel: &RelPath,
    depth: usize,
) -> Result<(), RootfsError> {
    if depth > MAX_REMOVE_DEPTH {
        return Err(RootfsError::PathTooDeep {
            path: rel.display(),
            max: MAX_REMOVE_DEPTH,
        });
    }
    let c = cname(name)?;
    let Some(st) = lstat_at(dir, &c, rel)? else {
        return Ok(());
    };
    if is_type(&st, SFlag::S_IFDIR) {
        let sub = openat(
            dir.as_fd(),
            c.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(rel, "open", e))?;
        for child in list_dir(&sub, rel)? {
            remove_all(&sub, &child, &rel.join(&child), depth + 1)?;
        }
        unlinkat(dir.as_fd(), c.as_c_str(), UnlinkatFlags::RemoveDir)
            .map_err(|e| io_err(rel, "rmdir", e))
    } else {
        unlinkat(dir.as_fd(), c.as_c_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(|e| io_err(rel, "unlink", e))
    }
}

/// The names in a directory, without `.` and `..`.
pub fn list_dir(dir: &OwnedFd, rel: &RelPath) -> Result<Vec<Vec<u8>>, RootfsError> {
    // A fresh open file description, so that listing never moves another fd's offset.
    let fd = openat(
        dir.as_fd(),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(rel, "open", e))?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| io_err(rel, "opendir", e))?;
    let mut names = Vec::new();
    for ent in d.iter() {
        let ent = ent.map_err(|e| io_err(rel, "readdir", e))?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

impl Root {
    /// Reads a regular file inside the root (in-root resolution), refusing more than `max`
    /// bytes. `Ok(None)` if it does not exist.
    pub fn read_file(&self, rel: &RelPath, max: u64) -> Result<Option<Vec<u8>>, RootfsError> {
        use std::io::Read;
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = match openat2(self.fd.as_fd(), OsStr::from_bytes(&rel.as_bytes()), how) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(self.classify(rel, e)),
        };
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| io_err(rel, "stat", e))?;
        if !is_type(&st, SFlag::S_IFREG) {
            return Err(RootfsError::Fs {
                path: rel.display(),
                op: "read",
                source: std::io::Error::other("not a regular file"),
            });
        }
        let mut buf = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|source| RootfsError::Fs {
                path: rel.display(),
                op: "read",
                source,
            })?;
        if buf.len() as u64 > max {
            return Err(RootfsError::Fs {
                path: rel.display(),
                op: "read",
                source: std::io::Error::other(format!("larger than {max} bytes")),
            });
        }
        Ok(Some(buf))
    }

    /// Replaces whatever is at `rel` with a regular file holding `data` (root-owned).
    pub fn write_file(&self, rel: &RelPath, data: &[u8], mode: u32) -> Result<(), RootfsError> {
        let (parent, name) = rel
            .split_last()
            .ok_or_else(|| RootfsError::RootType("file".into()))?;
        let dir = self.ensure_dir(&parent)?;
        write_at(&dir, name, rel, data, mode)
    }

    /// Opens the directory `rel` following no symlink at all, creating missing components
    /// (root-owned, 0755). A component that is a symlink or not a directory is refused:
    /// this is where measured files go, so nothing the image planted may redirect them.
    pub fn ensure_real_dir(&self, rel: &RelPath) -> Result<OwnedFd, RootfsError> {
        self.real_dir(rel, true)?
            .ok_or_else(|| RootfsError::Internal(format!("{} vanished", rel.display())))
    }

    /// A descriptor of the root of its own, for a walk that moves down from it.
    fn dup_root(&self) -> Result<OwnedFd, RootfsError> {
        self.fd.try_clone().map_err(|e| RootfsError::Fs {
            path: "/".into(),
            op: "dup",
            source: e,
        })
    }

    /// Opens the directory `rel` following no symlink, or `None` if a component is missing.
    pub fn open_real_dir(&self, rel: &RelPath) -> Result<Option<OwnedFd>, RootfsError> {
        self.real_dir(rel, false)
    }

    fn real_dir(&self, rel: &RelPath, create: bool) -> Result<Option<OwnedFd>, RootfsError> {
        let mut cur = self.dup_root()?;
        let mut prefix = RelPath::default();
        for comp in &rel.0 {
            prefix = prefix.join(comp);
            let name = cname(comp)?;
            match lstat_at(&cur, &name, &prefix)? {
                Some(st) if is_type(&st, SFlag::S_IFLNK) => {
                    return Err(RootfsError::SymlinkRefused(prefix.display()))
                }
                Some(st) if !is_type(&st, SFlag::S_IFDIR) => {
                    return Err(RootfsError::NotADirectory(prefix.display()))
                }
                Some(_) => {}
                None if !create => return Ok(None),
                None => mkdirat(
                    cur.as_fd(),
                    name.as_c_str(),
                    Mode::from_bits_truncate(0o755),
                )
                .map_err(|e| io_err(&prefix, "mkdir", e))?,
            }
            cur = openat(
                cur.as_fd(),
                name.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => RootfsError::SymlinkRefused(prefix.display()),
                e => io_err(&prefix, "open", e),
            })?;
        }
        Ok(Some(cur))
    }
}

/// Replaces `name` in `dir` with a root-owned regular file holding `data`.
pub fn write_at(
    dir: &OwnedFd,
    name: &[u8],
    rel: &RelPath,
    data: &[u8],
    mode: u32,
) -> Result<(), RootfsError> {
    use std::io::Write;
    remove_all(dir, name, rel, 0)?;
    let c = cname(name)?;
    let fd = openat(
        dir.as_fd(),
        c.as_c_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| io_err(rel, "create", e))?;
    nix::unistd::fchown(
        fd.as_fd(),
        Some(nix::unistd::Uid::from_raw(0)),
        Some(nix::unistd::Gid::from_raw(0)),
    )
    .map_err(|e| io_err(rel, "chown", e))?;
    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
        .map_err(|e| io_err(rel, "chmod", e))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(data).map_err(|source| RootfsError::Fs {
        path: rel.display(),
        op: "write",
        source,
    })
}

impl Root {
    /// Makes `rel` a real directory (not a symlink), replacing anything else there.
    pub fn make_real_dir(&self, rel: &RelPath, mode: u32) -> Result<(), RootfsError> {
        let (parent, name) = rel
            .split_last()
            .ok_or_else(|| RootfsError::RootType("directory".into()))?;
        let dir = self.ensure_dir(&parent)?;
        let c = cname(name)?;
        match lstat_at(&dir, &c, rel)? {
            Some(st) if is_type(&st, SFlag::S_IFDIR) => return Ok(()),
            Some(_) => remove_all(&dir, name, rel, 0)?,
            None => {}
        }
        mkdirat(dir.as_fd(), c.as_c_str(), Mode::from_bits_truncate(mode))
            .map_err(|e| io_err(rel, "mkdir", e))
    }

    /// Removes `rel` if present (without following a final symlink).
    pub fn remove(&self, rel: &RelPath) -> Result<(), RootfsError> {
        let Some((parent, name)) = rel.split_last() else {
            return Err(RootfsError::RootType("nothing".into()));
        };
        match self.open_dir(&parent) {
            Ok(dir) => remove_all(&dir, name, rel, 0),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.classify(&parent, e)),
        }
    }

    /// Whether `rel` resolves (in the root) to a regular file with an execute bit.
    pub fn is_executable(&self, rel: &RelPath) -> bool {
        self.stat(rel)
            .is_some_and(|st| is_type(&st, SFlag::S_IFREG) && st.st_mode & 0o111 != 0)
    }

    /// What `rel` resolves to in the root (following symlinks inside it), if anything.
    pub fn stat(&self, rel: &RelPath) -> Option<FileStat> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let fd = openat2(self.fd.as_fd(), OsStr::from_bytes(&rel.as_bytes()), how).ok()?;
        nix::sys::stat::fstat(fd.as_fd()).ok()
    }
}
