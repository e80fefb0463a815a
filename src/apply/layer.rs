//! Applying one layer's tar stream to a root with OCI semantics.
//!
//! The `tar` crate is used in raw mode as a header parser only: PAX records and GNU long
//! names arrive as their own entries, so their sizes are checked before they are read.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::CString;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};
use tar::EntryType;
use tracing::{debug, warn};

use super::fs::{cname, is_type, list_dir, lstat_at, remove_all, Root};
use super::path::RelPath;
use super::{ApplyError, ApplyLimits};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
/// Largest device major and minor numbers Linux can represent.
const MAX_MAJOR: u32 = (1 << 12) - 1;
const MAX_MINOR: u32 = (1 << 20) - 1;
const MAX_XATTRS: usize = 128;

/// What applying a layer did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LayerStats {
    /// Tar entries applied, whiteouts included.
    pub entries: u64,
    /// Bytes of regular files' content written (less than the tar stream: headers, padding).
    pub file_bytes: u64,
    /// Whiteouts (`.wh.` entries) that removed something from a lower layer.
    pub whiteouts: u64,
    /// Device nodes, and hard links to them, left out (`no_special_files`, `rootless`).
    pub devices_left_out: u64,
}

/// Metadata gathered for one entry from its header and any PAX records before it.
#[derive(Clone)]
struct Meta {
    path: Vec<u8>,
    link: Option<Vec<u8>>,
    uid: u64,
    gid: u64,
    mode: u32,
    mtime: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The tar block size: every header and every entry's padded data is a multiple of it.
const BLOCK: u64 = 512;

/// A reader that lets a layer end right after an entry's data. Debian's umoci 0.4.7 `insert`
/// writes layers with neither the last entry's padding nor the end-of-archive blocks; the
/// `tar` crate would fail skipping the padding. At the end of the stream this pads with zeros
/// to the next block boundary (never further, so no end-of-archive block is made up) and
/// records where the real stream ended, which [`apply_tar`] then requires to be exactly the
/// end of the last entry's data: a stream cut anywhere else is still an error.
struct PadToBlock<R> {
    inner: R,
    pos: u64,
    /// Where the real stream ended, once it has ended off a block boundary.
    ended_at: Option<u64>,
}

impl<R: Read> Read for PadToBlock<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.ended_at.is_none() {
            let n = self.inner.read(buf)?;
            if n > 0 {
                self.pos += n as u64;
                return Ok(n);
            }
            if self.pos % BLOCK == 0 {
                return Ok(0);
            }
            self.ended_at = Some(self.pos);
        }
        let pad = (BLOCK - self.pos % BLOCK) % BLOCK;
        let n = usize::try_from(pad).unwrap_or(0).min(buf.len());
        buf[..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Applies a tar stream to `root`. The stream may end with the end-of-archive blocks, at a
/// block boundary, or right after the last entry's data (see `PadToBlock`).
pub fn apply_tar<R: Read>(
    root: &Root,
    reader: R,
    limits: &ApplyLimits,
) -> Result<LayerStats, ApplyError> {
    let mut archive = tar::Archive::new(PadToBlock {
        inner: reader,
        pos: 0,
        ended_at: None,
    });
    let mut data_end = 0u64;
    let result = apply_entries(root, &mut archive, limits, &mut data_end);
    // A stream cut inside a block is the cause of whatever the entries then looked like.
    if let Some(at) = archive.into_inner().ended_at {
        if at != data_end {
            return Err(ApplyError::Tar(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the stream ends at byte {at}, inside a tar block and not at the end of an \
                     entry's data"
                ),
            )));
        }
        if result.is_ok() {
            debug!(
                at,
                "the layer ends right after its last entry's data, without end-of-archive blocks"
            );
        }
    }
    result
}

fn apply_entries<R: Read>(
    root: &Root,
    archive: &mut tar::Archive<R>,
    limits: &ApplyLimits,
    data_end: &mut u64,
) -> Result<LayerStats, ApplyError> {
    let entries = archive.entries().map_err(ApplyError::Tar)?.raw(true);
    let mut stats = LayerStats::default();
    let copy_buf = RefCell::new(Vec::new());
    let mut touched: HashSet<RelPath> = HashSet::new();
    // Device nodes left out by `no_special_files`: hard links to them are left out too.
    let mut left_out: HashSet<RelPath> = HashSet::new();
    let mut dir_times: Vec<(RelPath, i64)> = Vec::new();
    let mut pax: Option<Vec<u8>> = None;
    let mut long_name: Option<Vec<u8>> = None;
    let mut long_link: Option<Vec<u8>> = None;
    for entry in entries {
        let mut entry = entry.map_err(ApplyError::Tar)?;
        stats.entries += 1;
        if stats.entries > limits.max_entries {
            return Err(ApplyError::TooManyEntries(limits.max_entries));
        }
        let kind = entry.header().entry_type();
        let size = entry.header().entry_size().map_err(ApplyError::Tar)?;
        *data_end = entry.raw_file_position().saturating_add(size);
        match kind {
            EntryType::XHeader | EntryType::XGlobalHeader => {
                if size > limits.max_pax_size {
                    return Err(ApplyError::PaxTooLarge {
                        size,
                        max: limits.max_pax_size,
                    });
                }
                let data = read_bounded(&mut entry, size)?;
                if kind == EntryType::XHeader {
                    pax = Some(data);
                } else {
                    debug!("ignoring a global PAX header");
                }
                continue;
            }
            EntryType::GNULongName | EntryType::GNULongLink => {
                if size > limits.max_path_len as u64 + 1 {
                    return Err(ApplyError::PaxTooLarge {
                        size,
                        max: limits.max_path_len as u64 + 1,
                    });
                }
                let mut data = read_bounded(&mut entry, size)?;
                while data.last() == Some(&0) {
                    data.pop();
                }
                if kind == EntryType::GNULongName {
                    long_name = Some(data);
                } else {
                    long_link = Some(data);
                }
                continue;
            }
            _ => {}
        }
        let h = entry.header();
        let mut meta = Meta {
            path: long_name
                .take()
                .unwrap_or_else(|| h.path_bytes().into_owned()),
            link: long_link
                .take()
                .or_else(|| h.link_name_bytes().map(|l| l.into_owned())),
            uid: h.uid().map_err(ApplyError::Tar)?,
            gid: h.gid().map_err(ApplyError::Tar)?,
            mode: h.mode().map_err(ApplyError::Tar)?,
            mtime: i64::try_from(h.mtime().map_err(ApplyError::Tar)?).unwrap_or(i64::MAX),
            xattrs: Vec::new(),
        };
        if let Some(records) = pax.take() {
            apply_pax(&mut meta, &records, size)?;
        }
        if limits.no_special_files {
            if kind != EntryType::Directory {
                meta.mode &= !0o6000;
            }
            meta.xattrs
                .retain(|(name, _)| name != b"security.capability");
        }
        let rel = RelPath::parse(&meta.path, limits.max_path_len, limits.max_path_depth)?;
        let ctx = Ctx {
            root,
            limits,
            buf: &copy_buf,
        };
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link
            | EntryType::Char
            | EntryType::Block
            | EntryType::Fifo => {}
            EntryType::GNUSparse => {
                return Err(ApplyError::Unsupported(format!(
                    "{}: sparse files",
                    rel.display()
                )))
            }
            other => {
                return Err(ApplyError::Unsupported(format!(
                    "{}: tar entry type {:?}",
                    rel.display(),
                    other
                )))
            }
        }
        if rel.is_root() {
            if kind != EntryType::Directory {
                return Err(ApplyError::RootType(format!("{kind:?}")));
            }
            let fd = root.fd().try_clone().map_err(|e| ApplyError::Fs {
                path: "/".into(),
                op: "dup",
                source: e,
            })?;
            if let Some(m) = limits.root_mode {
                meta.mode = m;
            }
            set_owner_mode(&fd, &rel, &meta, limits.rootless)?;
            dir_times.push((rel, meta.mtime));
            continue;
        }
        let Some((parent, name)) = rel.split_last() else {
            continue;
        };
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            stats.whiteouts += 1;
            let dir = root.ensure_dir(&parent)?;
            if name == OPAQUE {
                opaque(&dir, &parent, &touched, 0)?;
            } else if hidden.is_empty()
                || hidden == b"."
                || hidden == b".."
                || hidden.starts_with(WHITEOUT_PREFIX)
            {
                return Err(ApplyError::BadWhiteout(rel.display()));
            } else {
                remove_all(&dir, hidden, &parent.join(hidden), 0)?;
            }
            continue;
        }
        let dir = root.ensure_dir(&parent)?;
        let cn = cname(name)?;
        let mut left_out_here = false;
        match kind {
            EntryType::Directory => {
                ctx.directory(&dir, &cn, &rel, &meta)?;
                dir_times.push((rel.clone(), meta.mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                stats.file_bytes += ctx.regular(&dir, &cn, &rel, &meta, &mut entry, size)?;
            }
            EntryType::Symlink => ctx.symlink(&dir, &cn, &rel, &meta)?,
            EntryType::Char | EntryType::Block if limits.no_special_files || limits.rootless => {
                // Left out, and whatever a lower layer had at this path goes, as the device
                // node would have replaced it.
                remove_all(&dir, name, &rel, 0)?;
                left_out.insert(rel.clone());
                left_out_here = true;
            }
            EntryType::Link
                if (limits.no_special_files || limits.rootless)
                    && meta
                        .link
                        .as_deref()
                        .and_then(|l| {
                            RelPath::parse(l, limits.max_path_len, limits.max_path_depth).ok()
                        })
                        .is_some_and(|t| left_out.contains(&t)) =>
            {
                remove_all(&dir, name, &rel, 0)?;
                left_out.insert(rel.clone());
                left_out_here = true;
            }
            EntryType::Link => ctx.hardlink(&dir, &cn, &rel, &meta)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (major, minor) = if kind == EntryType::Fifo {
                    (0, 0)
                } else {
                    let h = entry.header();
                    let major = h
                        .device_major()
                        .map_err(|e| ApplyError::Device(format!("{}: {e}", rel.display())))?
                        .unwrap_or(0);
                    let minor = h
                        .device_minor()
                        .map_err(|e| ApplyError::Device(format!("{}: {e}", rel.display())))?
                        .unwrap_or(0);
                    (major, minor)
                };
                ctx.special(&dir, &cn, &rel, &meta, kind, major, minor)?;
            }
            _ => {}
        }
        if left_out_here {
            stats.devices_left_out += 1;
        } else {
            // Whatever this entry wrote at a path replaced a device left out there.
            left_out.remove(&rel);
        }
        touched.insert(rel);
    }
    // Directory mtimes last: every entry written inside a directory changed its mtime.
    for (rel, mtime) in dir_times.into_iter().rev() {
        if let Ok(fd) = root.open_dir(&rel) {
            let t = TimeSpec::new(mtime, 0);
            let _ = nix::sys::stat::futimens(fd.as_fd(), &t, &t);
        }
    }
    Ok(stats)
}

fn read_bounded<R: Read>(r: &mut R, size: u64) -> Result<Vec<u8>, ApplyError> {
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    r.take(size)
        .read_to_end(&mut data)
        .map_err(ApplyError::Tar)?;
    if data.len() as u64 != size {
        return Err(ApplyError::Tar(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "extended header cut short",
        )));
    }
    Ok(data)
}

fn apply_pax(meta: &mut Meta, records: &[u8], header_size: u64) -> Result<(), ApplyError> {
    for ext in tar::PaxExtensions::new(records) {
        let ext = ext.map_err(ApplyError::Tar)?;
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        let num = || {
            std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.split('.').next()?.parse::<i64>().ok())
                .ok_or_else(|| ApplyError::Pax(String::from_utf8_lossy(key).into_owned()))
        };
        let unsigned = || {
            u64::try_from(num()?)
                .map_err(|_| ApplyError::Pax(String::from_utf8_lossy(key).into_owned()))
        };
        match key {
            b"path" => meta.path = value.to_vec(),
            b"linkpath" => meta.link = Some(value.to_vec()),
            b"uid" => meta.uid = unsigned()?,
            b"gid" => meta.gid = unsigned()?,
            b"mtime" => meta.mtime = num()?,
            b"size" if unsigned()? != header_size => {
                return Err(ApplyError::Unsupported(
                    "a PAX size record that differs from the header".into(),
                ));
            }
            k if k.starts_with(b"GNU.sparse.") => {
                return Err(ApplyError::Unsupported("sparse files".into()))
            }
            k if k.starts_with(b"SCHILY.xattr.") => {
                if meta.xattrs.len() >= MAX_XATTRS {
                    return Err(ApplyError::Pax(format!("more than {MAX_XATTRS} xattrs")));
                }
                meta.xattrs
                    .push((k[b"SCHILY.xattr.".len()..].to_vec(), value.to_vec()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Opaque directory: hides everything below `dir` that this layer has not written, whatever
/// the order in which the marker and this layer's own entries arrive.
fn opaque(
    dir: &OwnedFd,
    rel: &RelPath,
    touched: &HashSet<RelPath>,
    depth: usize,
) -> Result<(), ApplyError> {
    for child in list_dir(dir, rel)? {
        let child_rel = rel.join(&child);
        if !touched.contains(&child_rel) {
            remove_all(dir, &child, &child_rel, 0)?;
            continue;
        }
        let c = cname(&child)?;
        if lstat_at(dir, &c, &child_rel)?.is_some_and(|st| is_type(&st, SFlag::S_IFDIR))
            && depth < super::fs::MAX_REMOVE_DEPTH
        {
            let sub = openat(
                dir.as_fd(),
                c.as_c_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fs_err(&child_rel, "open", e))?;
            opaque(&sub, &child_rel, touched, depth + 1)?;
        }
    }
    Ok(())
}

fn fs_err(rel: &RelPath, op: &'static str, e: nix::errno::Errno) -> ApplyError {
    ApplyError::Fs {
        path: rel.display(),
        op,
        source: io::Error::from(e),
    }
}

struct Ctx<'a> {
    root: &'a Root,
    limits: &'a ApplyLimits,
    /// Reused for file contents: large writes keep the system call count down.
    buf: &'a RefCell<Vec<u8>>,
}

/// The largest single write of file contents.
const COPY_CHUNK: usize = 1 << 20;
/// A chunk of zeros to compare file contents with (a slice comparison is one `memcmp`).
static ZEROS: [u8; COPY_CHUNK] = [0; COPY_CHUNK];

impl Ctx<'_> {
    /// Removes whatever is at `name` unless it is a directory and `keep_dir` is set.
    fn clear(
        &self,
        dir: &OwnedFd,
        name: &CString,
        rel: &RelPath,
        keep_dir: bool,
    ) -> Result<bool, ApplyError> {
        match lstat_at(dir, name, rel)? {
            Some(st) if keep_dir && is_type(&st, SFlag::S_IFDIR) => Ok(true),
            Some(_) => {
                remove_all(dir, name.as_bytes(), rel, 0)?;
                Ok(false)
            }
            None => Ok(false),
        }
    }

    fn directory(
        &self,
        dir: &OwnedFd,
        name: &CString,
        rel: &RelPath,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        if !self.clear(dir, name, rel, true)? {
            nix::sys::stat::mkdirat(
                dir.as_fd(),
                name.as_c_str(),
                Mode::from_bits_truncate(0o700),
            )
            .map_err(|e| fs_err(rel, "mkdir", e))?;
        }
        let fd = openat(
            dir.as_fd(),
            name.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fs_err(rel, "open", e))?;
        if self.limits.rootless {
            let mut meta = meta.clone();
            meta.mode |= 0o700;
            set_owner_mode(&fd, rel, &meta, true)?;
        } else {
            set_owner_mode(&fd, rel, meta, false)?;
        }
        set_xattrs(&fd, rel, meta)
    }

    fn regular<R: Read>(
        &self,
        dir: &OwnedFd,
        name: &CString,
        rel: &RelPath,
        meta: &Meta,
        data: &mut R,
        size: u64,
    ) -> Result<u64, ApplyError> {
        self.clear(dir, name, rel, false)?;
        let fd = openat(
            dir.as_fd(),
            name.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| fs_err(rel, "create", e))?;
        let mut file = std::fs::File::from(fd);
        let mut buf = self.buf.borrow_mut();
        let want = usize::try_from(size).unwrap_or(COPY_CHUNK).min(COPY_CHUNK);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut copied = 0u64;
        // Runs of zeros become holes: a preallocated or sparse file of hundreds of MiB of
        // zeros (common in images) then costs no memory in the enclave's tmpfs root, and
        // reads back the same.
        let mut holes = false;
        while copied < size {
            let room = buf
                .len()
                .min(usize::try_from(size - copied).unwrap_or(usize::MAX));
            let n = match data.read(&mut buf[..room]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ApplyError::Tar(e)),
            };
            let wrote = if buf[..n] == ZEROS[..n] {
                holes = true;
                file.seek(io::SeekFrom::Start(copied + n as u64))
                    .map(|_| ())
            } else {
                file.write_all(&buf[..n])
            };
            wrote.map_err(|e| ApplyError::Fs {
                path: rel.display(),
                op: "write",
                source: e,
            })?;
            copied += n as u64;
        }
        drop(buf);
        if copied != size {
            return Err(ApplyError::Tar(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: file data cut short", rel.display()),
            )));
        }
        if holes {
            // A file that ends in zeros ends in a hole: its size is set, not written.
            file.set_len(size).map_err(|e| ApplyError::Fs {
                path: rel.display(),
                op: "truncate",
                source: e,
            })?;
        }
        let fd = OwnedFd::from(file);
        set_owner_mode(&fd, rel, meta, self.limits.rootless)?;
        set_xattrs(&fd, rel, meta)?;
        let t = TimeSpec::new(meta.mtime, 0);
        nix::sys::stat::futimens(fd.as_fd(), &t, &t).map_err(|e| fs_err(rel, "utimens", e))?;
        Ok(copied)
    }

    fn symlink(
        &self,
        dir: &OwnedFd,
        name: &CString,
        rel: &RelPath,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        let target = meta
            .link
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApplyError::BadLink(rel.display()))?;
        if target.len() > self.limits.max_path_len {
            return Err(ApplyError::PathTooLong {
                path: rel.display(),
                max: self.limits.max_path_len,
            });
        }
        self.clear(dir, name, rel, false)?;
        let t = cname(target)?;
        symlinkat(t.as_c_str(), dir.as_fd(), name.as_c_str())
            .map_err(|e| fs_err(rel, "symlink", e))?;
        if !self.limits.rootless {
            owner_nofollow(dir, name, rel, meta)?;
        }
        mtime_nofollow(dir, name, rel, meta)
    }

    /// Hard links: the target is another entry's path, resolved inside the root.
    fn hardlink(
        &self,
        dir: &OwnedFd,
        name: &CString,
        rel: &RelPath,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        let raw = meta
            .link
            .as_deref()
            .ok_or_else(|| ApplyError::BadLink(rel.display()))?;
        let target = RelPath::parse(raw, self.limits.max_path_len, self.limits.max_path_depth)
            .map_err(|e| {
                ApplyError::HardlinkOutside(format!(
                    "{} -> {}: {e}",
                    rel.display(),
                    String::from_utf8_lossy(raw)
                ))
            })?;
        let (tparent, tname) = target
            .split_last()
            .ok_or_else(|| ApplyError::HardlinkOutside(format!("{} -> /", rel.display())))?;
        let tdir = self.root.open_dir(&tparent).map_err(|e| {
            ApplyError::HardlinkOutside(format!("{} -> {}: {e}", rel.display(), target.display()))
        })?;
        let tc = cname(tname)?;
        match lstat_at(&tdir, &tc, &target)? {
            None => {
                return Err(ApplyError::HardlinkOutside(format!(
                    "{} -> {}: no such entry in the root",
                    rel.display(),
                    target.display()
                )))
            }
            Some(st) if is_type(&st, SFlag::S_IFDIR) => {
                return Err(ApplyError::BadLink(format!(
                    "{} -> {} is a directory",
                    rel.display(),
                    target.display()
                )))
            }
            Some(st) => {
                if let Some(existing) = lstat_at(dir, name, rel)? {
                    if existing.st_ino == st.st_ino && existing.st_dev == st.st_dev {
                        return Ok(());
                    }
                }
            }
        }
        self.clear(dir, name, rel, false)?;
        linkat(
            tdir.as_fd(),
            tc.as_c_str(),
            dir.as_fd(),
            name.as_c_str(),
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| fs_err(rel, "link", e))
    }

    #[allow(clippy::too_many_arguments)]
    fn special(
        &self,
        dir: &OwnedFd,
        name: &CString,
        rel: &RelPath,
        meta: &Meta,
        kind: EntryType,
        major: u32,
        minor: u32,
    ) -> Result<(), ApplyError> {
        if major > MAX_MAJOR || minor > MAX_MINOR {
            return Err(ApplyError::Device(format!("{}: device {major}:{minor} out of range (major <= {MAX_MAJOR}, minor <= {MAX_MINOR})", rel.display())));
        }
        let sflag = match kind {
            EntryType::Char => SFlag::S_IFCHR,
            EntryType::Block => SFlag::S_IFBLK,
            _ => SFlag::S_IFIFO,
        };
        self.clear(dir, name, rel, false)?;
        mknodat(
            dir.as_fd(),
            name.as_c_str(),
            sflag,
            Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(major.into(), minor.into()),
        )
        .map_err(|e| fs_err(rel, "mknod", e))?;
        if !self.limits.rootless {
            owner_nofollow(dir, name, rel, meta)?;
        }
        // The node was just created by mknodat, so it is not a symlink: following is safe,
        // and nothing from the image runs while layers are applied.
        fchmodat(
            dir.as_fd(),
            name.as_c_str(),
            Mode::from_bits_truncate(meta.mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| fs_err(rel, "chmod", e))?;
        mtime_nofollow(dir, name, rel, meta)
    }
}

/// Ownership of the last component itself (never what a symlink points to).
fn owner_nofollow(
    dir: &OwnedFd,
    name: &CString,
    rel: &RelPath,
    meta: &Meta,
) -> Result<(), ApplyError> {
    fchownat(
        dir.as_fd(),
        name.as_c_str(),
        Some(uid(meta, rel)?),
        Some(gid(meta, rel)?),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| fs_err(rel, "chown", e))
}

/// The mtime of the last component itself (never what a symlink points to).
fn mtime_nofollow(
    dir: &OwnedFd,
    name: &CString,
    rel: &RelPath,
    meta: &Meta,
) -> Result<(), ApplyError> {
    let ts = TimeSpec::new(meta.mtime, 0);
    utimensat(
        dir.as_fd(),
        name.as_c_str(),
        &ts,
        &ts,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| fs_err(rel, "utimens", e))
}

fn uid(meta: &Meta, rel: &RelPath) -> Result<Uid, ApplyError> {
    u32::try_from(meta.uid)
        .map(Uid::from_raw)
        .map_err(|_| ApplyError::Owner(format!("{}: uid {}", rel.display(), meta.uid)))
}

fn gid(meta: &Meta, rel: &RelPath) -> Result<Gid, ApplyError> {
    u32::try_from(meta.gid)
        .map(Gid::from_raw)
        .map_err(|_| ApplyError::Owner(format!("{}: gid {}", rel.display(), meta.gid)))
}

/// Ownership first, then mode: chown clears setuid and setgid bits, so the reverse order
/// would lose them. Both act on an fd, never through a symlink. `rootless`: no ownership.
fn set_owner_mode(
    fd: &OwnedFd,
    rel: &RelPath,
    meta: &Meta,
    rootless: bool,
) -> Result<(), ApplyError> {
    if !rootless {
        fchown(fd.as_fd(), Some(uid(meta, rel)?), Some(gid(meta, rel)?))
            .map_err(|e| fs_err(rel, "chown", e))?;
    }
    fchmod(fd.as_fd(), Mode::from_bits_truncate(meta.mode & 0o7777))
        .map_err(|e| fs_err(rel, "chmod", e))
}

fn set_xattrs(fd: &OwnedFd, rel: &RelPath, meta: &Meta) -> Result<(), ApplyError> {
    for (name, value) in &meta.xattrs {
        if name.starts_with(b"trusted.") {
            continue;
        }
        let n = cname(name)?;
        if let Err(e) =
            rustix::fs::fsetxattr(fd, n.as_c_str(), value, rustix::fs::XattrFlags::empty())
        {
            let e = io::Error::from(e);
            if matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::EPERM)) {
                warn!(path = %rel.display(), xattr = %String::from_utf8_lossy(name), error = %e, "xattr not supported here; skipped");
                continue;
            }
            return Err(ApplyError::Fs {
                path: rel.display(),
                op: "setxattr",
                source: e,
            });
        }
    }
    Ok(())
}
