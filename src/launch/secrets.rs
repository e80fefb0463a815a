//! The workload's secret files, from the supervisor into its sandbox, never through a disk.
//!
//! The supervisor writes the names and values into a memfd, seals it (no write, grow or
//! shrink) and hands it to the sandbox like the specification ([`memfd`]). The sandbox's PID 1
//! reads it ([`read`]) and, in the sandbox's own mount namespace, mounts a tmpfs on the image
//! root's `/run/secrets`, writes each file there owned by the workload's user with mode 0400,
//! gives the directory to that user with mode 0500 and remounts it read-only ([`install`]),
//! all before the program is forked. The tmpfs exists in that namespace only and goes with it:
//! under `cidboot run`, where the image root is on the host's disk, only the empty mount point
//! is there.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use zeroize::Zeroizing;

use super::sandbox::SandboxError;
use crate::secrets::SecretFile;

/// Largest value written to a secret file: the hex of KMS's largest plaintext (4096 bytes).
pub const MAX_VALUE: usize = 2 * crate::kms::MAX_PLAINTEXT;
/// Largest memfd read: every secret at its largest, with its name.
pub const MAX_PAYLOAD: usize =
    4 + crate::kms::sealed::MAX_SECRETS * (2 + crate::kms::sealed::MAX_NAME + 4 + MAX_VALUE);
/// The secrets directory inside the image root.
const REL_DIR: &str = "run/secrets";

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Sys {
        what,
        source: e.into(),
    }
}

fn bad(why: impl Into<String>) -> SandboxError {
    SandboxError::Spec(format!("the secret files: {}", why.into()))
}

/// The files in a sealed memfd: `count (u32)`, then per file `name length (u16), name, value
/// length (u32), value`, all big-endian.
pub fn memfd(files: &[SecretFile]) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let mut buf = Zeroizing::new(Vec::new());
    let count = u32::try_from(files.len()).map_err(std::io::Error::other)?;
    buf.extend_from_slice(&count.to_be_bytes());
    for f in files {
        let n = u16::try_from(f.name.len()).map_err(std::io::Error::other)?;
        let v = u32::try_from(f.value.len()).map_err(std::io::Error::other)?;
        buf.extend_from_slice(&n.to_be_bytes());
        buf.extend_from_slice(f.name.as_bytes());
        buf.extend_from_slice(&v.to_be_bytes());
        buf.extend_from_slice(&f.value);
    }
    let fd = memfd_create(
        "cidboot-secrets",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&buf)?;
    // The sandbox reads from the shared offset: from the start.
    std::io::Seek::rewind(&mut file)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(file.into())
}

/// Reads the files from the memfd the supervisor handed over (and closes it).
pub fn read(fd: RawFd) -> Result<Vec<SecretFile>, SandboxError> {
    if fd < 3 {
        return Err(bad(format!("bad descriptor {fd}")));
    }
    // SAFETY: the supervisor passes the number of the memfd it made for this sandbox alone;
    // it is open (its close-on-exec flag was cleared for this exec) and owned from here on.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_PAYLOAD as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| bad(e.to_string()))?;
    if buf.len() > MAX_PAYLOAD {
        return Err(bad(format!("over {MAX_PAYLOAD} bytes")));
    }
    decode(&buf)
}

fn decode(buf: &[u8]) -> Result<Vec<SecretFile>, SandboxError> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], SandboxError> {
        let end = at.checked_add(n).filter(|e| *e <= buf.len());
        let end = end.ok_or_else(|| bad("truncated"))?;
        let s = &buf[at..end];
        at = end;
        Ok(s)
    };
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let count = usize::try_from(be32(take(4)?)).map_err(|_| bad("count"))?;
    if count > crate::kms::sealed::MAX_SECRETS {
        return Err(bad(format!("{count} files")));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = take(2)?;
        let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
        let name = String::from_utf8(take(n)?.to_vec()).map_err(|_| bad("a name"))?;
        crate::kms::sealed::check_name(&name).map_err(|e| bad(e.to_string()))?;
        let v = usize::try_from(be32(take(4)?)).map_err(|_| bad("a length"))?;
        if v > MAX_VALUE {
            return Err(bad(format!("{name}: {v} bytes")));
        }
        out.push(SecretFile {
            name,
            value: Zeroizing::new(take(v)?.to_vec()),
        });
    }
    if take(1).is_ok() {
        return Err(bad("bytes after the last file"));
    }
    Ok(out)
}

/// A descriptor's own path, for a mount(2) that must act on exactly that directory.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Opens `root/run/secrets` without following any symlink on the way (the supervisor made it
/// a real directory, and nothing from the image has run in the root since).
fn open_dir(root: &Path, flags: OFlag) -> Result<OwnedFd, SandboxError> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(nix::fcntl::AT_FDCWD, &root.join(REL_DIR), how)
        .map_err(sys(format!("opening /{REL_DIR} in the root")))
}

/// Mounts the secrets tmpfs on `root/run/secrets` and writes `files` into it, for the user
/// `uid`:`gid`, then makes it read-only. Runs in the sandbox's PID 1, in its mount namespace.
pub fn install(root: &Path, files: &[SecretFile], uid: u32, gid: u32) -> Result<(), SandboxError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    // Room for every value and an inode each, rounded up to pages.
    let bytes: usize = files
        .iter()
        .map(|f| f.value.len().div_ceil(4096) * 4096)
        .sum();
    let opts = format!(
        "mode=0700,size={},nr_inodes={}",
        bytes + 4096,
        files.len() + 8
    );
    let point = open_dir(root, OFlag::O_PATH)?;
    mount(
        Some("tmpfs"),
        fd_path(&point).as_str(),
        Some("tmpfs"),
        flags,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("tmpfs on /{REL_DIR}")))?;
    drop(point);
    let dir = open_dir(root, OFlag::O_RDONLY)?;
    let fs = nix::sys::statfs::fstatfs(dir.as_fd()).map_err(sys("statfs /run/secrets"))?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(bad(format!("/{REL_DIR} is not the tmpfs just mounted")));
    }
    let owner = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    for f in files {
        let what = format!("/{REL_DIR}/{}", f.name);
        let fd = openat(
            &dir,
            f.name.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o400),
        )
        .map_err(sys(format!("creating {what}")))?;
        nix::unistd::fchown(&fd, owner.0, owner.1).map_err(sys(format!("chown {what}")))?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o400))
            .map_err(sys(format!("chmod {what}")))?;
        std::fs::File::from(fd)
            .write_all(&f.value)
            .map_err(|source| SandboxError::Io {
                what: format!("writing {what}"),
                source,
            })?;
    }
    nix::unistd::fchown(&dir, owner.0, owner.1).map_err(sys(format!("chown /{REL_DIR}")))?;
    nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(0o500))
        .map_err(sys(format!("chmod /{REL_DIR}")))?;
    mount(
        None::<&str>,
        fd_path(&dir).as_str(),
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
        None::<&str>,
    )
    .map_err(sys(format!("making /{REL_DIR} read-only")))
}

/// Readies the mount point `/run/secrets` in the root, from the supervisor: real directories
/// (a symlink or anything else the image put at `/run` or `/run/secrets` is replaced), so that
/// the sandbox's mount lands in the root and nowhere else.
pub fn mount_point(root: &crate::apply::fs::Root) -> Result<(), super::LaunchError> {
    let rel = |p: &str| crate::apply::path::RelPath::parse(p.as_bytes(), 64, 4);
    root.make_real_dir(&rel("run")?, 0o755)?;
    root.make_real_dir(&rel(REL_DIR)?, 0o700)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_cross_in_a_sealed_memfd_and_a_bad_one_is_refused() {
        let files = vec![
            SecretFile {
                name: "db".into(),
                value: Zeroizing::new(b"pw\0\xff".to_vec()),
            },
            SecretFile {
                name: "empty".into(),
                value: Zeroizing::new(Vec::new()),
            },
        ];
        let fd = memfd(&files).unwrap();
        // Sealed: it cannot be written to any more.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if let Ok(w) = w.as_mut() {
            assert!(w.write_all(b"x").is_err());
        }
        let got = read(std::os::fd::IntoRawFd::into_raw_fd(fd)).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].name.as_str(), got[0].value.as_slice()),
            ("db", &b"pw\0\xff"[..])
        );
        assert_eq!(got[1].value.len(), 0);
        for bad in [
            &b"\0\0\0\x01\0\x02db\0\0\0\x05pw"[..],
            &b"\0\0\0\x01\0\x03../\0\0\0\0"[..],
            &b"\0\0\0\0x"[..],
            &b"\0\0\x10\0"[..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
