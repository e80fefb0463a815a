//! Starting a process inside the root: a private mount namespace with its own /proc and a
//! minimal /dev, chroot, then the identity, in that order.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, setgid, setgroups, setuid, Gid, Uid};

use super::spec::ProcessSpec;
use super::LaunchError;
use crate::apply::fs::Root;
use crate::apply::path::RelPath;

/// The device nodes of the workload's /dev. There is deliberately no `nsm`: the workload
/// reaches the NSM only through cidboot's attestation API.
const DEV_NODES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// How much of a sandbox to build around the process.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox {
    /// Mount a fresh /proc and a minimal /dev in a private mount namespace.
    pub mounts: bool,
}

fn c(bytes: &[u8]) -> Result<CString, LaunchError> {
    CString::new(bytes).map_err(|_| LaunchError::Spawn("a path contains a NUL byte".into()))
}

/// Builds the command. Everything the child needs is allocated here, before the fork:
/// between fork and exec only system calls run.
pub fn command(
    root: &Root,
    spec: &ProcessSpec,
    sandbox: Sandbox,
) -> Result<tokio::process::Command, LaunchError> {
    let rel = |p: &str| RelPath::parse(p.trim_start_matches('/').as_bytes(), 4096, 256);
    root.ensure_dir(&rel(&spec.cwd)?)?;
    if sandbox.mounts {
        root.make_real_dir(&rel("proc")?, 0o555)?;
        root.make_real_dir(&rel("dev")?, 0o755)?;
    }
    let root_c = c(root.path().as_os_str().as_bytes())?;
    let proc_c = c(root.path().join("proc").as_os_str().as_bytes())?;
    let dev_c = c(root.path().join("dev").as_os_str().as_bytes())?;
    let nodes: Vec<(CString, u64, u64)> = DEV_NODES
        .iter()
        .map(|(n, ma, mi)| {
            Ok((
                c(root.path().join("dev").join(n).as_os_str().as_bytes())?,
                *ma,
                *mi,
            ))
        })
        .collect::<Result<_, LaunchError>>()?;
    let cwd_c = c(spec.cwd.as_bytes())?;
    let slash = c(b"/")?;
    let proc_fs = c(b"proc")?;
    let tmpfs = c(b"tmpfs")?;
    let dev_opts = c(b"mode=755,size=64k")?;
    let uid = Uid::from_raw(spec.user.uid);
    let gid = Gid::from_raw(spec.user.gid);
    let groups: Vec<Gid> = spec.user.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    let mounts = sandbox.mounts;

    let mut cmd = tokio::process::Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]).env_clear().kill_on_drop(true);
    for e in &spec.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    let child_setup = move || -> std::io::Result<()> {
        // PID 1 blocks the signals it forwards; the workload gets a clean mask.
        nix::sys::signal::SigSet::empty().thread_set_mask()?;
        // SAFETY: prctl with PR_SET_PDEATHSIG takes an integer signal number; no memory is
        // passed. It makes the process die with cidboot rather than outlive it.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if mounts {
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&std::ffi::CStr>,
                slash.as_c_str(),
                None::<&std::ffi::CStr>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&std::ffi::CStr>,
            )?;
            mount(
                Some(proc_fs.as_c_str()),
                proc_c.as_c_str(),
                Some(proc_fs.as_c_str()),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&std::ffi::CStr>,
            )?;
            mount(
                Some(tmpfs.as_c_str()),
                dev_c.as_c_str(),
                Some(tmpfs.as_c_str()),
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some(dev_opts.as_c_str()),
            )?;
            nix::sys::stat::umask(Mode::empty());
            for (path, major, minor) in &nodes {
                mknod(
                    path.as_c_str(),
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o666),
                    makedev(*major, *minor),
                )?;
            }
            nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
        }
        chroot(root_c.as_c_str())?;
        chdir(cwd_c.as_c_str())?;
        setgroups(&groups)?;
        setgid(gid)?;
        setuid(uid)?;
        Ok(())
    };
    // SAFETY: the closure only makes system calls on values prepared before the fork; it
    // allocates nothing and takes no locks, so it is safe to run between fork and exec.
    unsafe {
        cmd.pre_exec(child_setup);
    }
    Ok(cmd)
}
