//! Starting a process in the sandbox, from the supervisor's side.
//!
//! The process is cidboot itself re-executed as the sandbox's stage 1 (see
//! [`super::sandbox`]), given its specification on a memfd and a sync pipe. A launch has
//! succeeded only once the sync pipe closes with nothing written: then the program's exec
//! has happened. Anything written there is the sandbox's own error.

use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::confine::Policy;
use super::sandbox::{Spec, ARG};
use super::spec::ProcessSpec;
use super::LaunchError;
use crate::apply::fs::Root;
use crate::apply::path::RelPath;

/// How long the sandbox may take to reach the program's exec.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest error message read from the sync pipe.
const MAX_SETUP_ERROR: u64 = 4096;

/// Where and how to sandbox.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// An empty directory the sandbox stages its root on (its own mount namespace's tmpfs;
    /// nothing is written to it in the supervisor's view).
    pub stage: std::path::PathBuf,
    /// What the sandboxed process may do beyond the defaults.
    pub policy: Policy,
    /// The cgroup every sandbox joins before its stage 1 runs (none: no limits).
    pub cgroup: Option<Arc<super::cgroup::Cgroup>>,
    /// The network namespace every sandbox joins before its stage 1 runs (transparent
    /// egress); none: the supervisor's own.
    pub netns: Option<Arc<OwnedFd>>,
}

/// A sandboxed process, ready to spawn.
pub struct Sandboxed {
    cmd: tokio::process::Command,
    sync_r: OwnedFd,
    sync_w: OwnedFd,
    _spec: OwnedFd,
    _exe: Option<Arc<OwnedFd>>,
    _secrets: Option<OwnedFd>,
    prog: String,
}

fn spawn_err(what: &str, e: impl std::fmt::Display) -> LaunchError {
    LaunchError::Spawn(format!("{what}: {e}"))
}

/// Prepares `spec` to run in the sandbox over `root`. With `exe`, the process execs that
/// descriptor (a sealed helper) rather than a path the image could redirect.
pub fn command(
    root: &Root,
    spec: &ProcessSpec,
    sandbox: &Sandbox,
    exe: Option<Arc<OwnedFd>>,
) -> Result<Sandboxed, LaunchError> {
    command_with_secrets(root, spec, sandbox, exe, None)
}

/// [`command`] for the workload with its opened secrets: their variables merged over its
/// environment (for this process only: `spec` keeps none of them), their files on a tmpfs its
/// sandbox mounts at `/run/secrets` ([`super::secrets`]).
pub fn command_with_secrets(
    root: &Root,
    spec: &ProcessSpec,
    sandbox: &Sandbox,
    exe: Option<Arc<OwnedFd>>,
    secrets: Option<&crate::secrets::Opened>,
) -> Result<Sandboxed, LaunchError> {
    use zeroize::Zeroize;
    let rel = |p: &str| RelPath::parse(p.trim_start_matches('/').as_bytes(), 4096, 256);
    root.ensure_dir(&rel(&spec.cwd)?)?;
    // Mount points for the sandbox's own /proc and /dev: real directories, whatever the
    // image put there.
    root.make_real_dir(&rel("proc")?, 0o555)?;
    root.make_real_dir(&rel("dev")?, 0o755)?;
    let secrets_fd = match secrets.filter(|s| !s.files.is_empty()) {
        Some(s) => {
            super::secrets::mount_point(root)?;
            Some(
                super::secrets::memfd(&s.files)
                    .map_err(|e| spawn_err("the secret files' memfd", e))?,
            )
        }
        None => None,
    };
    let mut env = spec.env.clone();
    if let Some(s) = secrets {
        super::spec::merge(&mut env, s.env.iter().map(|e| e.as_str()));
    }
    let (sync_r, sync_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err("pipe", e))?;
    let mut full = Spec {
        root: root.path().to_path_buf(),
        stage: sandbox.stage.clone(),
        argv: spec.argv.clone(),
        env,
        cwd: spec.cwd.clone(),
        uid: spec.user.uid,
        gid: spec.user.gid,
        groups: spec.user.groups.clone(),
        exec_fd: exe.as_ref().map(|f| f.as_raw_fd()),
        sync_fd: sync_w.as_raw_fd(),
        policy: sandbox.policy.clone(),
        secrets_fd: secrets_fd.as_ref().map(|f| f.as_raw_fd()),
    };
    let spec_fd = spec_memfd(&full);
    // The environment may hold secrets: this copy is wiped once it is in the memfd.
    full.env.zeroize();
    let spec_fd = spec_fd?;
    let inherit: Vec<RawFd> = [
        Some(spec_fd.as_raw_fd()),
        Some(sync_w.as_raw_fd()),
        full.exec_fd,
        full.secrets_fd,
    ]
    .into_iter()
    .flatten()
    .collect();
    // None of the supervisor's own descriptors reach the sandbox, not even its stdio: a root
    // process could reopen one through /proc/self/fd and chown or chmod the file (or device)
    // behind it, or use a terminal. stdin is a pipe with no writer; stdout and stderr are
    // pipes the caller copies out (see `pump_to_own`).
    let join = sandbox
        .cgroup
        .as_ref()
        .map(|c| c.join_fds())
        .unwrap_or_default();
    // PID 1 keeps the OOM killer off itself (init::system); the sandbox gets the default back.
    let netns = sandbox.netns.as_ref().map(|f| f.as_raw_fd());
    let reset_oom_score = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(|v| v < 0);
    let (stdin_r, stdin_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err("pipe", e))?;
    drop(stdin_w);
    let mut cmd = tokio::process::Command::new("/proc/self/exe");
    cmd.arg(ARG)
        .arg(spec_fd.as_raw_fd().to_string())
        .env_clear()
        .stdin(std::process::Stdio::from(stdin_r))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child_setup = move || -> std::io::Result<()> {
        // PID 1 blocks the signals it forwards; the sandbox gets a clean mask.
        nix::sys::signal::SigSet::empty().thread_set_mask()?;
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
        if let Some(fd) = netns {
            // SAFETY: setns(2) on a descriptor the supervisor holds open; it changes this
            // process's network namespace only.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Into the workload's cgroup before stage 1 is exec'd: everything the sandbox starts
        // is inside it from its first instruction.
        for fd in &join {
            // SAFETY: write(2) of a static buffer to a descriptor the supervisor holds open.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        if reset_oom_score {
            // SAFETY: open(2) of a static NUL-terminated path, write(2) of a static buffer and
            // close(2) of the descriptor just opened.
            unsafe {
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
        }
        for fd in &inherit {
            // SAFETY: fcntl(F_SETFD) on a descriptor this process holds open; it clears
            // close-on-exec so that exactly these descriptors reach stage 1.
            if unsafe { libc::fcntl(*fd, libc::F_SETFD, 0) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure makes system calls only, on values prepared before the fork; it
    // allocates nothing and takes no locks, so it is safe between fork and exec.
    unsafe {
        cmd.pre_exec(child_setup);
    }
    Ok(Sandboxed {
        cmd,
        sync_r,
        sync_w,
        _spec: spec_fd,
        _exe: exe,
        _secrets: secrets_fd,
        prog: spec.argv.first().cloned().unwrap_or_default(),
    })
}

fn spec_memfd(spec: &Spec) -> Result<OwnedFd, LaunchError> {
    // The workload's environment may hold secrets: the serialized copy is wiped when dropped.
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec(spec).map_err(|e| spawn_err("sandbox specification", e))?,
    );
    let fd = nix::sys::memfd::memfd_create(
        "cidboot-sandbox-spec",
        nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
    )
    .map_err(|e| spawn_err("memfd", e))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&json)
        .and_then(|()| f.rewind())
        .map_err(|e| spawn_err("writing the sandbox specification", e))?;
    Ok(f.into())
}

impl Sandboxed {
    /// Spawns and waits until the program has been exec'd.
    pub async fn spawn(mut self) -> Result<tokio::process::Child, LaunchError> {
        let spawned = self.cmd.spawn();
        let mut child = self.check_spawned(spawned)?;
        match self.wait_exec().await {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }

    /// [`Sandboxed::spawn`] through std, for a caller that reaps every child itself (PID 1).
    pub async fn spawn_std(mut self) -> Result<std::process::Child, LaunchError> {
        let spawned = self.cmd.as_std_mut().spawn();
        let mut child = self.check_spawned(spawned)?;
        match self.wait_exec().await {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    fn check_spawned<C>(&self, spawned: std::io::Result<C>) -> Result<C, LaunchError> {
        spawned.map_err(|e| spawn_err(&format!("starting the sandbox for {}", self.prog), e))
    }

    /// Closes this side's write end of the sync pipe and reads the pipe to its end.
    async fn wait_exec(self) -> Result<(), LaunchError> {
        drop(self.sync_w);
        started(self.sync_r)
            .await
            .map_err(|(errno, reason)| match errno {
                Some(errno) => LaunchError::Exec {
                    prog: self.prog,
                    errno: nix::errno::Errno::from_raw(errno),
                    reason,
                },
                None => LaunchError::Sandbox {
                    prog: self.prog,
                    reason,
                },
            })
    }
}

/// Reads the sync pipe to its end: nothing means the exec happened; otherwise the failed
/// exec's errno (when that is what failed) and the message.
async fn started(r: OwnedFd) -> Result<(), (Option<i32>, String)> {
    let read = tokio::task::spawn_blocking(move || {
        let mut s = Vec::new();
        std::fs::File::from(r)
            .take(MAX_SETUP_ERROR)
            .read_to_end(&mut s)
            .map(|_| s)
    });
    match tokio::time::timeout(SETUP_TIMEOUT, read).await {
        Err(_) => Err((
            None,
            format!(
                "the sandbox did not reach the exec within {}s",
                SETUP_TIMEOUT.as_secs()
            ),
        )),
        Ok(Err(e)) => Err((None, format!("waiting for the sandbox: {e}"))),
        Ok(Ok(Err(e))) => Err((None, format!("reading the sandbox's sync pipe: {e}"))),
        Ok(Ok(Ok(s))) if s.is_empty() => Ok(()),
        Ok(Ok(Ok(s))) => Err(super::sandbox::decode_report(&s)),
    }
}

/// Copies a sandboxed child's stdout and stderr to this process's own, until both end.
pub fn pump_to_own(child: &mut tokio::process::Child) -> Vec<tokio::task::JoinHandle<()>> {
    let mut pumps = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        pumps.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut out, &mut tokio::io::stdout()).await;
        }));
    }
    if let Some(mut err) = child.stderr.take() {
        pumps.push(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut err, &mut tokio::io::stderr()).await;
        }));
    }
    pumps
}

/// Waits for the pumps of a child that has exited (bounded: a process it left behind may
/// still hold the pipes).
pub async fn drain(pumps: Vec<tokio::task::JoinHandle<()>>) {
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(5), p).await;
    }
}

/// Whether `dir` exists, for callers that create the staging directory.
pub fn ensure_stage(dir: &Path) -> Result<(), LaunchError> {
    std::fs::create_dir_all(dir).map_err(|e| spawn_err(&format!("{}", dir.display()), e))
}
