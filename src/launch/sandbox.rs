//! Inside the sandbox: the processes between the supervisor and the program it runs.
//!
//! The supervisor re-executes cidboot itself (`cidboot __sandbox FD`, a fresh single-threaded
//! process) with a specification on a memfd. That process (stage 1) unshares mount, PID, IPC
//! and UTS namespaces and forks the sandbox's PID 1, which builds the filesystem
//! ([`super::mounts`]), pivots into the image root and forks the program. The program's
//! process drops capabilities, sets `no_new_privs`, loads the seccomp filter and execs, in
//! that order ([`super::confine`]). PID 1 forwards signals to it and reaps everything in the
//! namespace; stage 1 forwards the supervisor's signals to PID 1 and ends as the program
//! ended (the same exit code, or killed by the same signal).
//!
//! Any failure before the exec is written to the sync pipe, whose last write end closes at
//! the exec: the supervisor reports it as a launch error, never as the program's exit code.

use std::convert::Infallible;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, setgid, setgroups, setuid, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use super::confine::{self, ConfineError, Policy};
use super::mounts;

/// The hidden first argument that makes cidboot a sandbox's stage 1.
pub const ARG: &str = "__sandbox";
/// Largest specification read.
pub const MAX_SPEC: u64 = 4 << 20;
/// Stage 1's exit code when the sandbox could not be built (also reported on the sync pipe).
pub const EXIT_SETUP_FAILED: i32 = 125;
/// Signals passed on to the program.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// What fails in the sandbox's processes before the program's exec; sent to the supervisor over
/// the sync pipe.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A system call (namespaces, mounts, fork, signals) failed.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: std::io::Error,
    },
    /// A file operation while building the sandbox's filesystem failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Confine(#[from] ConfineError),
    #[error("the sandbox specification: {0}")]
    Spec(String),
    #[error("WorkingDir {dir:?}: {source}")]
    WorkingDir { dir: String, source: std::io::Error },
    #[error("exec {prog:?}: {source}")]
    Exec {
        prog: String,
        source: std::io::Error,
    },
}

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> SandboxError {
    move |e| SandboxError::Sys {
        what: what.into(),
        source: e.into(),
    }
}

/// Everything the sandbox needs, prepared by the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The applied image root (a path in the supervisor's view).
    pub root: PathBuf,
    /// An empty directory for the staging mount.
    pub stage: PathBuf,
    /// The command line the program gets.
    pub argv: Vec<String>,
    /// The complete environment, as `NAME=value`.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
    /// User the process runs as.
    pub uid: u32,
    /// Primary group the process runs as.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Exec this descriptor (a sealed helper) instead of `argv[0]`.
    pub exec_fd: Option<RawFd>,
    /// The write end of the sync pipe.
    pub sync_fd: RawFd,
    /// Capabilities, vsock and setuid, as the runtime configuration allows.
    pub policy: Policy,
    /// A sealed memfd of the workload's secret files, for its `/run/secrets`
    /// ([`super::secrets`]).
    #[serde(default)]
    pub secrets_fd: Option<RawFd>,
}

/// How the program ended, as stage 1 reproduces it.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl Ended {
    fn encode(self) -> [u8; 5] {
        let (k, v) = match self {
            Ended::Exited(c) => (b'E', c),
            Ended::Signaled(s) => (b'S', s),
        };
        let mut out = [k, 0, 0, 0, 0];
        out[1..].copy_from_slice(&v.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Ended> {
        let v = i32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
        match b.first()? {
            b'E' => Some(Ended::Exited(v)),
            b'S' => Some(Ended::Signaled(v)),
            _ => None,
        }
    }
}

fn signal_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// The first byte of a sync-pipe report of a failed `execve`, followed by its errno (four
/// bytes, big-endian) and the message. Any other report is the message alone, which never
/// starts with a NUL.
const SYNC_EXEC_FAILED: u8 = 0;

/// A report read from the sync pipe: the errno of the program's failed `execve`, if that is
/// what failed, and the message.
pub fn decode_report(b: &[u8]) -> (Option<i32>, String) {
    match b {
        [SYNC_EXEC_FAILED, e0, e1, e2, e3, msg @ ..] => (
            Some(i32::from_be_bytes([*e0, *e1, *e2, *e3])),
            String::from_utf8_lossy(msg).into_owned(),
        ),
        _ => (None, String::from_utf8_lossy(b).into_owned()),
    }
}

/// Writes a setup failure to the sync pipe (the supervisor shows it) and to stderr. A failed
/// exec carries its errno, so that the supervisor can tell a missing program from one that
/// cannot run without matching the message.
fn report(sync_fd: RawFd, e: &SandboxError) {
    let msg = format!("{e}");
    let mut rec = Vec::with_capacity(msg.len() + 5);
    if let SandboxError::Exec { source, .. } = e {
        rec.push(SYNC_EXEC_FAILED);
        rec.extend_from_slice(&source.raw_os_error().unwrap_or(0).to_be_bytes());
    }
    rec.extend_from_slice(msg.as_bytes());
    // SAFETY: `sync_fd` is the sync pipe's write end, inherited open from the supervisor and
    // not closed by this process before the exec; it is only borrowed here.
    let fd = unsafe { BorrowedFd::borrow_raw(sync_fd) };
    let _ = nix::unistd::write(fd, &rec);
    let _ = writeln!(std::io::stderr(), "cidboot sandbox: {msg}");
}

fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process at once without running exit handlers, which a forked
    // child must not run twice.
    unsafe { libc::_exit(code) }
}

/// The entry point of `cidboot __sandbox FD`. Never returns.
pub fn main(args: &[String]) -> ! {
    let spec = match args.get(2).and_then(|a| a.parse::<RawFd>().ok()) {
        Some(fd) => read_spec(fd),
        None => Err(SandboxError::Spec(
            "usage: cidboot __sandbox FD (started by cidboot only)".into(),
        )),
    };
    let spec = match spec {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "cidboot sandbox: {e}");
            exit_now(EXIT_SETUP_FAILED);
        }
    };
    match stage1(&spec) {
        Ok(ended) => reproduce(ended),
        Err(e) => {
            report(spec.sync_fd, &e);
            exit_now(EXIT_SETUP_FAILED)
        }
    }
}

fn read_spec(fd: RawFd) -> Result<Spec, SandboxError> {
    if fd < 3 {
        return Err(SandboxError::Spec(format!("bad descriptor {fd}")));
    }
    // SAFETY: the supervisor passes the number of the memfd it made for this process alone;
    // it is open (its close-on-exec flag was cleared for this exec) and owned from here on.
    let f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = Vec::new();
    f.take(MAX_SPEC + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SandboxError::Spec(e.to_string()))?;
    if buf.len() as u64 > MAX_SPEC {
        return Err(SandboxError::Spec(format!("over {MAX_SPEC} bytes")));
    }
    serde_json::from_slice(&buf).map_err(|e| SandboxError::Spec(e.to_string()))
}

/// Ends this process the way the program ended.
fn reproduce(ended: Ended) -> ! {
    match ended {
        Ended::Exited(code) => exit_now(code),
        Ended::Signaled(sig) => {
            if let Ok(s) = Signal::try_from(sig) {
                // SAFETY: restoring the default action of a signal installs no handler code.
                let _ =
                    unsafe { nix::sys::signal::signal(s, nix::sys::signal::SigHandler::SigDfl) };
                let mut one = SigSet::empty();
                one.add(s);
                let _ = one.thread_unblock();
                let _ = nix::sys::signal::raise(s);
            }
            exit_now(128 + sig)
        }
    }
}

/// Closes every descriptor above stderr except `keep`: whatever the supervisor left open
/// without close-on-exec (the NSM device, say) must not reach the sandbox.
fn close_others(keep: &[RawFd]) -> Result<(), SandboxError> {
    let mut keep: Vec<u32> = keep.iter().filter_map(|f| u32::try_from(*f).ok()).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for k in keep.into_iter().filter(|k| *k >= 3) {
        if k > from {
            close_range(from, k - 1)?;
        }
        from = k.saturating_add(1);
    }
    close_range(from, u32::MAX)
}

fn close_range(first: u32, last: u32) -> Result<(), SandboxError> {
    // SAFETY: close_range takes integers only; the caller keeps what it still needs out of
    // the range, so no descriptor in use by this process is closed.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) } != 0 {
        return Err(SandboxError::Sys {
            what: "close_range".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn stage1(spec: &Spec) -> Result<Ended, SandboxError> {
    let keep: Vec<RawFd> = std::iter::once(spec.sync_fd)
        .chain(spec.exec_fd)
        .chain(spec.secrets_fd)
        .collect();
    close_others(&keep)?;
    // A session of its own: no controlling terminal to inject input into (TIOCSTI).
    nix::unistd::setsid().map_err(sys("setsid"))?;
    prctl::set_dumpable(false).map_err(sys("PR_SET_DUMPABLE"))?;
    let set = signal_set();
    set.thread_block().map_err(sys("blocking signals"))?;
    let sfd = SignalFd::new(&set).map_err(sys("signalfd"))?;
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(sys("unshare (mount, PID, IPC, UTS namespaces)"))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: this process is a fresh exec of cidboot that has started no thread, so the
    // child may run ordinary code.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(status_r);
            drop(sfd);
            let e = match pid1(spec, status_w) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            report(spec.sync_fd, &e);
            exit_now(EXIT_SETUP_FAILED)
        }
        ForkResult::Parent { child } => {
            close_raw(spec.sync_fd);
            drop(status_w);
            relay(child, &sfd, status_r)
        }
    }
}

fn close_raw(fd: RawFd) {
    // SAFETY: `fd` is a descriptor this process inherited and no longer uses; taking
    // ownership closes it exactly once.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
}

/// Stage 1's loop: the supervisor's signals go to the sandbox's PID 1; when it ends, so
/// does stage 1, as the program did.
fn relay(pid1: Pid, sfd: &SignalFd, status: OwnedFd) -> Result<Ended, SandboxError> {
    loop {
        let Some(info) = read_signal(sfd)? else {
            continue;
        };
        let Some(sig) = i32::try_from(info)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
        else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(pid1, sig);
            continue;
        }
        match waitpid(pid1, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                let mut buf = Vec::new();
                let _ = std::fs::File::from(status).take(16).read_to_end(&mut buf);
                return Ok(Ended::decode(&buf).unwrap_or(Ended::Exited(code)));
            }
            Ok(WaitStatus::Signaled(_, s, _)) => return Ok(Ended::Signaled(s as i32)),
            _ => {}
        }
    }
}

fn read_signal(sfd: &SignalFd) -> Result<Option<u32>, SandboxError> {
    match sfd.read_signal() {
        Ok(Some(info)) => Ok(Some(info.ssi_signo)),
        Ok(None) | Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(sys("reading signals")(e)),
    }
}

/// The sandbox's PID 1: builds the root, starts the program, forwards signals to it, reaps
/// every process of the namespace, and tells stage 1 how the program ended.
fn pid1(spec: &Spec, status: OwnedFd) -> Result<Infallible, SandboxError> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
    let secrets = spec.secrets_fd.map(super::secrets::read).transpose()?;
    mounts::enter(
        &spec.root,
        &spec.stage,
        spec.policy.allow_setuid,
        secrets.as_deref().map(|f| (f, spec.uid, spec.gid)),
    )?;
    // The values now exist on the tmpfs alone; this copy is wiped as it goes.
    drop(secrets);
    let sfd = SignalFd::new(&signal_set()).map_err(sys("signalfd"))?;
    // SAFETY: single-threaded, as stage 1 was.
    let program = match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(sfd);
            let e = match program(spec) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            report(spec.sync_fd, &e);
            exit_now(127)
        }
        ForkResult::Parent { child } => child,
    };
    close_raw(spec.sync_fd);
    loop {
        let Some(info) = read_signal(&sfd)? else {
            continue;
        };
        let Some(sig) = i32::try_from(info)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
        else {
            continue;
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(program, sig);
            continue;
        }
        loop {
            let ended = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(p, code)) if p == program => Ended::Exited(code),
                Ok(WaitStatus::Signaled(p, s, _)) if p == program => Ended::Signaled(s as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            let _ = nix::unistd::write(status.as_fd(), &ended.encode());
            // The rest of the namespace dies with its PID 1.
            exit_now(0);
        }
    }
}

/// A helper that is a script (`#!`) runs its interpreter, which the kernel hands the script
/// as `/dev/fd/N`: the sealed memfd must then stay open across the exec, or the interpreter
/// has nothing to open. It reads exactly the bytes that were hashed, since the memfd is sealed
/// and read-only; `/dev/fd` is the sandbox's own link to `/proc/self/fd`. A binary helper
/// keeps no such descriptor.
fn keep_open_for_interpreter(fd: BorrowedFd<'_>) -> Result<(), SandboxError> {
    let mut magic = [0u8; 2];
    let n = rustix::io::pread(fd, &mut magic, 0).map_err(|e| SandboxError::Sys {
        what: "reading the helper's first bytes".into(),
        source: e.into(),
    })?;
    if n == 2 && &magic == b"#!" {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map_err(sys("keeping the script helper open for its interpreter"))?;
    }
    Ok(())
}

fn cstrings(v: &[String]) -> Result<Vec<CString>, SandboxError> {
    v.iter()
        .map(|s| {
            CString::new(s.as_bytes())
                .map_err(|_| SandboxError::Spec(format!("{s:?} contains a NUL byte")))
        })
        .collect()
}

/// The program's process: identity, capabilities, `no_new_privs`, seccomp, exec.
fn program(spec: &Spec) -> Result<Infallible, SandboxError> {
    SigSet::empty()
        .thread_set_mask()
        .map_err(sys("clearing the signal mask"))?;
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("PR_SET_PDEATHSIG"))?;
    // SAFETY: close_range takes integers only; it marks every inherited descriptor above
    // stderr close-on-exec (the sealed helper is exec'd through execveat, which is fine).
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        return Err(SandboxError::Sys {
            what: "close_range".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    chdir(spec.cwd.as_str()).map_err(|e| SandboxError::WorkingDir {
        dir: spec.cwd.clone(),
        source: e.into(),
    })?;
    let argv = cstrings(&spec.argv)?;
    let env = cstrings(&spec.env)?;
    let prog = argv
        .first()
        .ok_or_else(|| SandboxError::Spec("empty argv".into()))?;
    let keep = spec.policy.capabilities()?;
    let filters = confine::filters(&spec.policy)?;
    let nnp = !spec.policy.allow_setuid;
    if !nnp {
        // Without no_new_privs a filter can only be loaded with CAP_SYS_ADMIN: load it now.
        confine::load(&filters)?;
    }
    confine::limit_bounding(&keep)?;
    let groups: Vec<Gid> = spec.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(sys("setgroups"))?;
    setgid(Gid::from_raw(spec.gid)).map_err(sys("setgid"))?;
    setuid(Uid::from_raw(spec.uid)).map_err(sys("setuid"))?;
    confine::set_process_caps(spec.uid, &keep)?;
    if nnp {
        prctl::set_no_new_privs().map_err(sys("PR_SET_NO_NEW_PRIVS"))?;
        confine::load(&filters)?;
    }
    let err = match spec.exec_fd {
        Some(fd) => {
            // SAFETY: the sealed helper's descriptor, inherited open for this exec.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            keep_open_for_interpreter(fd)?;
            nix::unistd::fexecve(fd, &argv, &env)
        }
        None => nix::unistd::execve(prog.as_c_str(), &argv, &env),
    };
    let e = match err {
        Ok(never) => match never {},
        Err(e) => e,
    };
    Err(SandboxError::Exec {
        prog: spec.argv[0].clone(),
        source: e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_failure_report_carries_its_errno() {
        let e = SandboxError::Exec {
            prog: "/bin/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOEXEC),
        };
        let (r, w) = nix::unistd::pipe().unwrap();
        report(std::os::fd::AsRawFd::as_raw_fd(&w), &e);
        drop(w);
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).unwrap();
        let (errno, msg) = decode_report(&got);
        assert_eq!(errno, Some(libc::ENOEXEC));
        assert!(msg.starts_with("exec \"/bin/x\": "), "{msg}");
        assert_eq!(
            decode_report(b"mount: EPERM"),
            (None, "mount: EPERM".into())
        );
    }

    #[test]
    fn endings_round_trip() {
        for e in [Ended::Exited(7), Ended::Exited(0), Ended::Signaled(9)] {
            let d = Ended::decode(&e.encode()).unwrap();
            assert_eq!(format!("{d:?}"), format!("{e:?}"));
        }
        assert!(Ended::decode(b"X0000").is_none());
        assert!(Ended::decode(b"E").is_none());
    }
}
