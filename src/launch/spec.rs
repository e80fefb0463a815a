//! From the image config and the runtime configuration to one process description.

use oci_spec::image::ImageConfiguration;
use serde::Serialize;

use super::user::{self, Identity};
use super::{ArgvSource, LaunchError};
use crate::apply::fs::Root;
use crate::apply::path::RelPath;
use crate::config::Workload;

/// Docker's PATH for images that set none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to execute, as whom, where and with what environment.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSpec {
    /// `argv`; `argv[0]` is resolved to an absolute path inside the root.
    pub argv: Vec<String>,
    /// The complete environment, as `NAME=value`: the image's, the configuration's, then defaults
    /// for `PATH` and `HOME`.
    pub env: Vec<String>,
    /// Working directory inside the root (`/` when neither the image nor the configuration sets
    /// one).
    pub cwd: String,
    /// Who the process runs as.
    pub user: Identity,
}

impl ProcessSpec {
    /// Sets or replaces `KEY=VALUE` entries, keeping first-seen order.
    pub fn merge_env<'a>(&mut self, entries: impl IntoIterator<Item = &'a str>) {
        merge(&mut self.env, entries);
    }
}

pub(crate) fn merge<'a>(env: &mut Vec<String>, entries: impl IntoIterator<Item = &'a str>) {
    for e in entries {
        let Some((k, _)) = e.split_once('=') else {
            continue;
        };
        match env
            .iter_mut()
            .find(|x| x.split_once('=').map(|p| p.0) == Some(k))
        {
            Some(slot) => *slot = e.to_string(),
            None => env.push(e.to_string()),
        }
    }
}

/// Builds the process: Entrypoint and Cmd (the configuration may replace either), Env merged
/// (image, then configuration), WorkingDir, and User resolved inside the image.
pub fn build(
    root: &Root,
    image: &ImageConfiguration,
    wl: &Workload,
) -> Result<ProcessSpec, LaunchError> {
    let ic = image.config().clone().unwrap_or_default();
    let image_ep = ic.entrypoint().as_ref().is_some_and(|e| !e.is_empty());
    let from = match (&wl.entrypoint, &wl.cmd) {
        (Some(ep), _) if !ep.is_empty() => ArgvSource::ConfigEntrypoint,
        (Some(_), _) => ArgvSource::ConfigCmd,
        (None, Some(_)) if !image_ep => ArgvSource::ConfigCmd,
        (None, _) if image_ep => ArgvSource::ImageEntrypoint,
        (None, _) => ArgvSource::ImageCmd,
    };
    let (entrypoint, cmd) = match (&wl.entrypoint, &wl.cmd) {
        // A new entrypoint drops the image's Cmd, as `docker run --entrypoint` does.
        (Some(ep), cmd) => (ep.clone(), cmd.clone().unwrap_or_default()),
        (None, Some(cmd)) => (ic.entrypoint().clone().unwrap_or_default(), cmd.clone()),
        (None, None) => (
            ic.entrypoint().clone().unwrap_or_default(),
            ic.cmd().clone().unwrap_or_default(),
        ),
    };
    let mut argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        return Err(LaunchError::NoCommand);
    }
    let mut env = Vec::new();
    merge(&mut env, ic.env().iter().flatten().map(String::as_str));
    merge(&mut env, wl.env.iter().map(String::as_str));
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    let user_spec = wl
        .user
        .clone()
        .or_else(|| ic.user().clone())
        .unwrap_or_default();
    let user = user::resolve(root, &user_spec)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!(
            "HOME={}",
            user.home.clone().unwrap_or_else(|| "/".into())
        ));
    }
    let cwd = wl
        .working_dir
        .clone()
        .or_else(|| ic.working_dir().clone())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    check_working_dir(&cwd)?;
    argv[0] = resolve_exe(root, &argv[0], &env).map_err(|e| match e {
        LaunchError::NotFound { prog, path, .. } => LaunchError::NotFound {
            prog,
            path,
            from: Some(from),
        },
        LaunchError::NotExecutable { prog, reason, .. } => LaunchError::NotExecutable {
            prog,
            reason,
            from: Some(from),
        },
        e => e,
    })?;
    Ok(ProcessSpec {
        argv,
        env,
        cwd,
        user,
    })
}

/// The sandbox mounts its own /proc, /dev and nothing at /sys: a working directory there is
/// either meaningless or an attempt to start inside another process's view.
fn check_working_dir(cwd: &str) -> Result<(), LaunchError> {
    let err = |reason| LaunchError::WorkingDir {
        dir: cwd.to_string(),
        reason,
    };
    if !cwd.starts_with('/') {
        return Err(err("is not an absolute path"));
    }
    let rel = RelPath::parse(cwd.trim_start_matches('/').as_bytes(), 4096, 256)
        .map_err(|_| err("is not a plain path inside the root (no `..`, at most 4096 bytes)"))?;
    if let Some(first) = rel.0.first() {
        if [&b"proc"[..], b"sys", b"dev"].contains(&first.as_slice()) {
            return Err(err(
                "is inside /proc, /sys or /dev, which the sandbox provides itself",
            ));
        }
    }
    Ok(())
}

const IS_A_DIRECTORY: &str = "it is a directory";

/// Why a file that is there cannot be executed, if it cannot.
fn not_executable(root: &Root, rel: &RelPath) -> Option<&'static str> {
    let st = root.stat(rel)?;
    let kind = st.st_mode & libc::S_IFMT;
    Some(if kind == libc::S_IFDIR {
        IS_A_DIRECTORY
    } else if kind != libc::S_IFREG {
        "it is not a regular file"
    } else if st.st_mode & 0o111 == 0 {
        "it has no execute permission"
    } else {
        return None;
    })
}

/// Finds `prog` inside the root: as given if it has a slash, else along the workload's PATH.
/// Nothing there is [`LaunchError::NotFound`]; something there that cannot be executed (and,
/// along PATH, nothing executable after it) is [`LaunchError::NotExecutable`], as a shell
/// tells "command not found" (127) from "Permission denied" (126).
pub fn resolve_exe(root: &Root, prog: &str, env: &[String]) -> Result<String, LaunchError> {
    let rel = |p: &str| RelPath::parse(p.trim_start_matches('/').as_bytes(), 4096, 256);
    let cannot = |reason| LaunchError::NotExecutable {
        prog: prog.to_string(),
        reason,
        from: None,
    };
    if prog.contains('/') {
        let abs = if prog.starts_with('/') {
            prog.to_string()
        } else {
            format!("/{prog}")
        };
        let r = rel(&abs)?;
        if root.is_executable(&r) {
            return Ok(abs);
        }
        if let Some(reason) = not_executable(root, &r) {
            return Err(cannot(reason));
        }
        return Err(LaunchError::NotFound {
            prog: prog.to_string(),
            path: String::new(),
            from: None,
        });
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let mut first_unusable = None;
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{}/{prog}", dir.trim_end_matches('/'));
        if let Ok(r) = rel(&candidate) {
            if root.is_executable(&r) {
                return Ok(candidate);
            }
            // A shell passes over directories along PATH, but not over files it may not run.
            if first_unusable.is_none() {
                first_unusable = not_executable(root, &r).filter(|r| *r != IS_A_DIRECTORY);
            }
        }
    }
    match first_unusable {
        Some(reason) => Err(cannot(reason)),
        None => Err(LaunchError::NotFound {
            prog: prog.to_string(),
            path: path.to_string(),
            from: None,
        }),
    }
}
