//! Launching the workload: its process from the image config, its user from the image's own
//! databases, the pinned helpers, and the sandbox they run in (namespaces, pivot_root,
//! capabilities, seccomp).

pub mod confine;
pub mod exec;
pub mod helpers;
pub mod mounts;
pub mod sandbox;
pub mod spec;
pub mod user;

use crate::apply::ApplyError;

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
    #[error("executable {prog:?} not found in the image{}", if path.is_empty() { String::new() } else { format!(" (PATH={path})") })]
    NotFound { prog: String, path: String },
    #[error("helper {name}: {reason}")]
    Helper { name: String, reason: String },
    #[error("starting the workload: {0}")]
    Spawn(String),
    #[error("the sandbox for {prog:?} failed before its exec: {reason}")]
    Sandbox { prog: String, reason: String },
    #[error("sandbox policy: {0}")]
    Policy(#[from] confine::ConfineError),
    #[error(transparent)]
    Root(#[from] ApplyError),
}
