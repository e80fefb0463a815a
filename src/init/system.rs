//! The enclave's first moments as PID 1: filesystems, console, kernel modules, loopback,
//! hostname, entropy, and the way out (power-off). Every function here is a thin, checked
//! wrapper around system calls; none of them panics.

use std::fs::File;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, MsFlags};

use crate::nsm::device::DeviceNsm;
use crate::nsm::{Nsm, NsmError};
use crate::transport::addr::{parent_cid, Addr};

/// Where the kernel modules are in the initramfs.
pub const MODULE_DIR: &str = "/lib/modules/cidboot";
/// The modules, in the order they load (each needs the ones before it).
pub const MODULES: &[&str] = &[
    "virtio_mmio",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "nsm",
];

/// A system call that failed, and what it was for.
#[derive(Debug, thiserror::Error)]
pub enum SystemError {
    /// `what` names the call and its object.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its object, such as `tmpfs on /mnt/root`.
        what: String,
        /// The kernel's answer.
        source: std::io::Error,
    },
    /// The workload's cgroup could not be made as the configuration asks.
    #[error("resource limits: {0}")]
    Limits(#[from] crate::launch::cgroup::CgroupError),
}

/// Where PID 1 mounts cgroup v2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The helpers' and the workload's cgroup, below [`CGROUP_ROOT`].
pub const WORKLOAD_CGROUP: &str = "workload";

/// Keeps the OOM killer away from PID 1 (`oom_score_adj` -1000): if the enclave as a whole runs
/// short, the kernel kills in the workload, and PID 1 can still report and power off. Each
/// sandbox gets the default back (`launch::exec`).
pub fn shield_from_oom() -> Result<(), SystemError> {
    std::fs::write("/proc/self/oom_score_adj", "-1000").map_err(io("/proc/self/oom_score_adj"))
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> SystemError {
    let what = what.into();
    move |e| SystemError::Sys {
        what,
        source: e.into(),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SystemError {
    let what = what.into();
    move |source| SystemError::Sys { what, source }
}

/// Mounts the pseudo filesystems of the initramfs root.
pub fn mount_basics() -> Result<(), SystemError> {
    let table: &[(&str, &str, &str, MsFlags, Option<&str>)] = &[
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "proc",
            "/proc",
            "proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "sysfs",
            "/sys",
            "sysfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None,
        ),
    ];
    for (src, target, fstype, flags, data) in table {
        std::fs::create_dir_all(target).map_err(io(format!("mkdir {target}")))?;
        match mount(Some(*src), *target, Some(*fstype), *flags, *data) {
            Ok(()) => {}
            // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(sys(format!("mount {fstype} on {target}"))(e)),
        }
    }
    Ok(())
}

/// Makes /dev/console our stdin, stdout and stderr.
pub fn console() -> Result<(), SystemError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
        .map_err(io("open /dev/console"))?;
    let dup = |what: &str, r: nix::Result<()>| {
        r.map_err(|e| SystemError::Sys {
            what: format!("console as {what}"),
            source: e.into(),
        })
    };
    dup("stdin", nix::unistd::dup2_stdin(&f))?;
    dup("stdout", nix::unistd::dup2_stdout(&f))?;
    dup("stderr", nix::unistd::dup2_stderr(&f))?;
    // Opened with no standard descriptor open, the console is one of them itself: keep it.
    if f.as_raw_fd() <= 2 {
        let _ = f.into_raw_fd();
    }
    Ok(())
}

/// Loads the initramfs's modules in order; a module that is built in or already loaded is fine.
pub fn load_modules() -> Result<Vec<String>, SystemError> {
    let mut loaded = Vec::new();
    for m in MODULES {
        let path = Path::new(MODULE_DIR).join(format!("{m}.ko"));
        let Ok(f) = File::open(&path) else {
            continue;
        };
        match nix::kmod::finit_module(&f, c"", nix::kmod::ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => {
                return Err(SystemError::Sys {
                    what: format!("loading {}", path.display()),
                    source: e.into(),
                })
            }
        }
        loaded.push(m.to_string());
    }
    Ok(loaded)
}

/// Brings `lo` up; the kernel then gives it 127.0.0.1/8.
pub fn loopback_up() -> Result<(), SystemError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    // A plain datagram socket, used only for the interface ioctls; closed when dropped.
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| SystemError::Sys {
        what: "socket".into(),
        source: e.into(),
    })?;
    let s = sock.as_raw_fd();
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = libc::c_char::try_from(*src).unwrap_or(0);
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq we own.
    let r = unsafe {
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
            libc::ioctl(s, libc::SIOCSIFFLAGS, &req)
        }
    };
    let err = std::io::Error::last_os_error();
    drop(sock);
    if r < 0 {
        return Err(SystemError::Sys {
            what: "bringing lo up".into(),
            source: err,
        });
    }
    Ok(())
}

/// Sets the hostname (in PID 1's UTS namespace, which the sandboxes do not share).
pub fn hostname(name: &str) -> Result<(), SystemError> {
    nix::unistd::sethostname(name).map_err(sys("sethostname"))
}

/// Credits `seed` to the kernel's entropy pool (RNDADDENTROPY).
pub fn add_entropy(seed: &[u8]) -> Result<(), SystemError> {
    #[repr(C)]
    struct RandPoolInfo {
        entropy_count: libc::c_int,
        buf_size: libc::c_int,
        buf: [u8; 256],
    }
    let n = seed.len().min(256);
    let mut info = RandPoolInfo {
        // At most 2048 and 256: both fit.
        entropy_count: libc::c_int::try_from(n * 8).unwrap_or(0),
        buf_size: libc::c_int::try_from(n).unwrap_or(0),
        buf: [0; 256],
    };
    info.buf[..n].copy_from_slice(&seed[..n]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(io("open /dev/random"))?;
    // RNDADDENTROPY = _IOW('R', 0x03, int[2])
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: the ioctl reads a rand_pool_info header followed by buf_size bytes, all within
    // `info`, which lives across the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY, &info) };
    if r < 0 {
        return Err(SystemError::Sys {
            what: "RNDADDENTROPY".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Powers the enclave off. Never returns.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Not reached on a working kernel; PID 1 must still never exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// What PID 1 asks of the machine once its filesystems and console are up. [`Real`] is the
/// enclave: system calls, `/dev/nsm`, the parent over vsock. Tests drive the boot's failure
/// and power-off paths through one of their own.
pub trait System: Send + Sync {
    /// Loads the kernel modules; returns their names.
    fn load_modules(&self) -> Result<Vec<String>, SystemError>;
    /// Brings up the loopback interface.
    fn loopback_up(&self) -> Result<(), SystemError>;
    /// Sets the hostname.
    fn hostname(&self, name: &str) -> Result<(), SystemError>;
    /// Opens the NSM.
    fn open_nsm(&self) -> Result<Arc<dyn Nsm>, NsmError>;
    /// Credits `seed` to the kernel's entropy pool.
    fn add_entropy(&self, seed: &[u8]) -> Result<(), SystemError>;
    /// Where the parent's service on `port` listens.
    fn parent(&self, port: u32) -> Addr;
    /// The configuration baked into the image, if there is one.
    fn baked_config(&self) -> Option<PathBuf>;
    /// Mounts a fresh tmpfs on `dir`, creating it.
    fn tmpfs(&self, dir: &Path) -> Result<(), SystemError>;
    /// How long the final status may take to be acknowledged before the power-off.
    fn status_patience(&self) -> Duration;
    /// Shields PID 1 from the OOM killer and makes the cgroup the helpers and the workload
    /// run in, with the limits of `[workload.limits]` (or the defaults).
    fn workload_limits(
        &self,
        cfg: Option<&crate::config::Limits>,
    ) -> Result<Option<crate::launch::cgroup::Cgroup>, SystemError>;
}

/// Makes `dir` (and any missing directory above it) mode 0700: what is mounted under it (the
/// image root on `/mnt/root`, the spill files and the sandboxes' stage under `/run/cidboot`)
/// is PID 1's alone; a sandbox reaches its root only through its own bind mount. A `dir` the
/// initramfs already has is changed to 0700: nothing but PID 1 runs yet, so there is no
/// instant in which anything else could enter it.
pub fn private_dir(dir: &Path) -> Result<(), SystemError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let what = || format!("{}", dir.display());
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(what())(e)),
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(what()))
}

/// The enclave.
pub struct Real;

impl System for Real {
    fn load_modules(&self) -> Result<Vec<String>, SystemError> {
        load_modules()
    }
    fn loopback_up(&self) -> Result<(), SystemError> {
        loopback_up()
    }
    fn hostname(&self, name: &str) -> Result<(), SystemError> {
        hostname(name)
    }
    fn open_nsm(&self) -> Result<Arc<dyn Nsm>, NsmError> {
        Ok(Arc::new(DeviceNsm::open()?))
    }
    fn add_entropy(&self, seed: &[u8]) -> Result<(), SystemError> {
        add_entropy(seed)
    }
    fn parent(&self, port: u32) -> Addr {
        Addr::Vsock {
            cid: parent_cid(),
            port,
        }
    }
    fn baked_config(&self) -> Option<PathBuf> {
        let p = Path::new(super::BAKED_CONFIG);
        p.exists().then(|| p.to_path_buf())
    }
    fn tmpfs(&self, dir: &Path) -> Result<(), SystemError> {
        if let Some(parent) = dir.parent() {
            private_dir(parent)?;
        }
        std::fs::create_dir_all(dir).map_err(io(format!("{}", dir.display())))?;
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )
        .map_err(sys(format!("tmpfs on {}", dir.display())))
    }
    fn status_patience(&self) -> Duration {
        super::STATUS_PATIENCE
    }
    fn workload_limits(
        &self,
        cfg: Option<&crate::config::Limits>,
    ) -> Result<Option<crate::launch::cgroup::Cgroup>, SystemError> {
        shield_from_oom()?;
        let cg = crate::launch::cgroup::enclave(Path::new(CGROUP_ROOT), WORKLOAD_CGROUP, cfg)?;
        Ok(Some(cg))
    }
}
