//! Launching the workload: its process from the image config, its user from the image's own
//! databases, the pinned helpers, and the sandboxed exec.

pub mod exec;
pub mod helpers;
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
    #[error("WorkingDir {0:?} is not an absolute path")]
    WorkingDir(String),
    #[error("executable {prog:?} not found in the image{}", if path.is_empty() { String::new() } else { format!(" (PATH={path})") })]
    NotFound { prog: String, path: String },
    #[error("helper {name}: {reason}")]
    Helper { name: String, reason: String },
    #[error("starting the workload: {0}")]
    Spawn(String),
    #[error(transparent)]
    Root(#[from] ApplyError),
}
