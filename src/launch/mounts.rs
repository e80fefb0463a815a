//! The sandbox's filesystem, built inside its own mount namespace by its PID 1.
//!
//! The image root is bind-mounted `nodev` (and `nosuid` unless the policy allows setuid), so
//! no device node the image ships works. `/dev` is a fresh tmpfs with only the usual nodes
//! (never the NSM), `/proc` is a fresh instance of the sandbox's own PID namespace with
//! Docker's masked and read-only paths, and the process then pivots into the root.
//!
//! `pivot_root` needs the current root to be a mount with a parent, which the initramfs an
//! enclave boots from is not. So the root is first staged: a small tmpfs holding the image
//! root's bind mount is moved onto `/` and chrooted into (as switch_root does), every other
//! mount of the supervisor's view is detached, and the pivot from the staging tmpfs into the
//! image root then detaches the staging mount too. The same path runs on every machine.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, pivot_root};

use super::sandbox::SandboxError;

/// The device nodes of the sandbox's /dev. There is deliberately no `nsm`: the workload
/// reaches the NSM only through cidboot's attestation API.
pub const DEV_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Hidden behind an empty read-only mount (Docker's masked paths).
const MASKED: &[&str] = &[
    "proc/asound",
    "proc/acpi",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
];

/// Read-only (Docker's read-only paths): sysctls, the SysRq trigger, IRQ and bus settings.
const READ_ONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    let what = what.into();
    move |e| SandboxError::Sys {
        what,
        source: e.into(),
    }
}

const NONE: Option<&str> = None;

/// The workload's secret files and their owner, for the tmpfs at `/run/secrets`.
pub type Secrets<'a> = (&'a [crate::secrets::SecretFile], u32, u32);

/// Builds the root at `image` (through the empty directory `stage`) and enters it: on
/// return the process's root and working directory are the image root. With `secrets`, the
/// root's `/run/secrets` is a tmpfs of this namespace holding them ([`super::secrets`]).
pub fn enter(
    image: &Path,
    stage: &Path,
    allow_setuid: bool,
    secrets: Option<Secrets<'_>>,
) -> Result<(), SandboxError> {
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(sys("making every mount private"))?;
    mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=64k"),
    )
    .map_err(sys(format!("staging tmpfs on {}", stage.display())))?;
    let new = stage.join("root");
    std::fs::create_dir(&new).map_err(|source| SandboxError::Io {
        what: format!("mkdir {}", new.display()),
        source,
    })?;
    mount(
        Some(image),
        &new,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys(format!("bind-mounting the root {}", image.display())))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NODEV;
    if !allow_setuid {
        flags |= MsFlags::MS_NOSUID;
    }
    mount(NONE, &new, NONE, flags, NONE).map_err(sys("remounting the root nodev"))?;
    dev(&new.join("dev"))?;
    proc(&new)?;
    if let Some((files, uid, gid)) = secrets {
        super::secrets::install(&new, files, uid, gid)?;
    }

    let others = mount_points()?;
    chdir(stage).map_err(sys("chdir to the staging mount"))?;
    mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE)
        .map_err(sys("moving the staging mount onto /"))?;
    // Everything else the supervisor had mounted leaves this namespace. Deepest first, and a
    // mount already gone with its parent is fine.
    for p in others.iter().rev() {
        if p != Path::new("/") && !p.starts_with(stage) {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
    }
    chroot(".").map_err(sys("chroot into the staging mount"))?;
    chdir("/root").map_err(sys("chdir to the root"))?;
    pivot_root(".", ".").map_err(sys("pivot_root into the root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
    chdir("/").map_err(sys("chdir /"))
}

/// Mount points of this namespace, shortest first, from `/proc/self/mountinfo`.
fn mount_points() -> Result<Vec<PathBuf>, SandboxError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|source| SandboxError::Io {
            what: "reading /proc/self/mountinfo".into(),
            source,
        })?;
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect();
    out.sort_by_key(|p| p.components().count());
    out.dedup();
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        let value = octal.map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')));
        if let (b'\\', Some(v)) = (b[i], value.and_then(|v| u8::try_from(v).ok())) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cpath(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| SandboxError::Sys {
        what: format!("{}: NUL in path", p.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// A fresh tmpfs /dev: the usual nodes, ptys of its own, shared memory, the fd links.
fn dev(dev: &Path) -> Result<(), SandboxError> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=64k"),
    )
    .map_err(sys("tmpfs on /dev"))?;
    let old = nix::sys::stat::umask(Mode::empty());
    for (name, major, minor) in DEV_NODES {
        let p = cpath(&dev.join(name))?;
        mknod(
            p.as_c_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(sys(format!("mknod /dev/{name}")))?;
    }
    nix::sys::stat::umask(old);
    let io = |what: String| move |source| SandboxError::Io { what, source };
    for d in ["pts", "shm"] {
        std::fs::create_dir(dev.join(d)).map_err(io(format!("mkdir /dev/{d}")))?;
    }
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(sys("devpts on /dev/pts"))?;
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(sys("tmpfs on /dev/shm"))?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link)).map_err(io(format!("/dev/{link}")))?;
    }
    Ok(())
}

/// The sandbox's own /proc, with the masked and read-only paths in place.
fn proc(root: &Path) -> Result<(), SandboxError> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &root.join("proc"), Some("proc"), flags, NONE)
        .map_err(sys("proc on /proc"))?;
    for m in MASKED {
        let p = root.join(m);
        let Ok(st) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        let r = if st.is_dir() {
            mount(
                Some("tmpfs"),
                &p,
                Some("tmpfs"),
                flags | MsFlags::MS_RDONLY,
                Some("size=0"),
            )
        } else {
            mount(
                Some(&root.join("dev/null")),
                &p,
                NONE,
                MsFlags::MS_BIND,
                NONE,
            )
        };
        r.map_err(sys(format!("masking /{m}")))?;
    }
    for m in READ_ONLY {
        let p = root.join(m);
        if std::fs::symlink_metadata(&p).is_err() {
            continue;
        }
        mount(Some(&p), &p, NONE, MsFlags::MS_BIND | MsFlags::MS_REC, NONE)
            .map_err(sys(format!("binding /{m}")))?;
        mount(
            NONE,
            &p,
            NONE,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | flags,
            NONE,
        )
        .map_err(sys(format!("making /{m} read-only")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(super::unescape(r"/a\040b/c\134d"), "/a b/c\\d");
        assert_eq!(super::unescape(r"/plain"), "/plain");
        assert_eq!(super::unescape(r"/trail\04"), r"/trail\04");
    }
}
