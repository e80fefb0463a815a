//! Launching the workload: its process from the image config, its user from the image's own
//! databases, the pinned helpers, and the sandbox they run in (namespaces, pivot_root,
//! capabilities, seccomp).

pub mod cgroup;
pub mod confine;
pub mod exec;
pub mod helpers;
pub mod mounts;
pub mod sandbox;
pub mod secrets;
pub mod spec;
pub mod user;

use crate::apply::ApplyError;

/// Where a workload's `argv[0]` came from: what to change when it is not in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgvSource {
    /// The image config's `Entrypoint`.
    ImageEntrypoint,
    /// The image config's `Cmd`, the image having no `Entrypoint`.
    ImageCmd,
    /// `workload.entrypoint` in the runtime configuration.
    ConfigEntrypoint,
    /// `workload.cmd` in the runtime configuration, the image having no `Entrypoint`.
    ConfigCmd,
}

impl ArgvSource {
    fn hint(self) -> String {
        let (what, fix) = match self {
            ArgvSource::ImageEntrypoint => (
                "the image's Entrypoint",
                "set workload.entrypoint in the configuration to run another program",
            ),
            ArgvSource::ImageCmd => (
                "the image's Cmd (it has no Entrypoint)",
                "set workload.entrypoint (or workload.cmd) in the configuration to run another program",
            ),
            ArgvSource::ConfigEntrypoint => (
                "workload.entrypoint in the configuration",
                "correct it to a program present in the image",
            ),
            ArgvSource::ConfigCmd => (
                "workload.cmd in the configuration (the image has no Entrypoint)",
                "correct it, or set workload.entrypoint, to a program present in the image",
            ),
        };
        format!("; it comes from {what}: {fix}")
    }
}

/// What stops the workload from being prepared or started.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "the image defines no command (no Entrypoint or Cmd) and the configuration gives none"
    )]
    NoCommand,
    #[error("user {user:?}: {reason}")]
    User { user: String, reason: String },
    #[error("WorkingDir {dir:?} {reason}")]
    WorkingDir { dir: String, reason: &'static str },
    #[error("executable {prog:?} not found in the image{}{}", if path.is_empty() { String::new() } else { format!(" (PATH={path})") }, from.map(|f| f.hint()).unwrap_or_default())]
    NotFound {
        prog: String,
        path: String,
        /// Where the program name came from, when known.
        from: Option<ArgvSource>,
    },
    /// The file is there but is not something to execute (a directory, a file without an
    /// execute bit): what a shell reports as "Permission denied" (exit 126).
    #[error("{prog:?} in the image cannot be executed: {reason}{}", from.map(|f| f.hint()).unwrap_or_default())]
    NotExecutable {
        prog: String,
        reason: &'static str,
        /// Where the program name came from, when known.
        from: Option<ArgvSource>,
    },
    #[error("helper {name}: {reason}")]
    Helper { name: String, reason: String },
    #[error("starting the workload: {0}")]
    Spawn(String),
    #[error("the sandbox for {prog:?} failed before its exec: {reason}")]
    Sandbox { prog: String, reason: String },
    #[error("resource limits: {0}")]
    Limits(#[from] cgroup::CgroupError),
    /// The program's own `execve` failed, with this errno (sent over the sync pipe): ENOENT
    /// when it or its interpreter is missing, EACCES, ENOEXEC and the like when it cannot run.
    #[error("{prog:?} could not be executed: {reason}")]
    Exec {
        prog: String,
        errno: nix::errno::Errno,
        reason: String,
    },
    #[error("sandbox policy: {0}")]
    Policy(#[from] confine::ConfineError),
    #[error(transparent)]
    Root(#[from] ApplyError),
}

/// The confined filesystem's errors, as the applier names them.
impl From<cidboot_rootfs::RootfsError> for LaunchError {
    fn from(e: cidboot_rootfs::RootfsError) -> LaunchError {
        LaunchError::Root(e.into())
    }
}
