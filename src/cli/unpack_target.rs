//! Where `cidboot unpack` applies an image, checked before anything is fetched.
//!
//! A `--rootfs` that does not exist is made by applying the image in a private directory
//! beside it (mode 0700 from its creation, see [`crate::scratch`]) and renaming it into place
//! once complete: a failure, a signal or a kill leaves nothing usable behind. One that exists
//! must be an empty directory, which may be a mount point (a tmpfs): a mount point cannot be
//! renamed over, so an existing directory is filled in place instead, claimed like `cidboot run
//! --rootfs` (emptied again on a failure, a signal, or by the next run after a kill). Anything
//! else (not a directory, not empty, read-only, not writable) is refused up front.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::CliError;
use crate::scratch::{KeptDir, PrivateDir};

/// The directory an unpack writes, and its scratch space.
pub(crate) struct UnpackTarget {
    rootfs: PathBuf,
    /// Where the layers go: the target itself, or a staging directory inside `work`.
    root: PathBuf,
    spill: PathBuf,
    _work: PrivateDir,
    /// The claim on an existing directory filled in place.
    kept: Option<KeptDir>,
    /// That directory's mode before it was filled, given back if it is emptied again.
    mode: Option<u32>,
}

fn usage(rootfs: &Path, why: &str) -> CliError {
    CliError::Usage(format!("--rootfs {} {why}", rootfs.display()))
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.display().to_string();
    move |source| CliError::Io { what, source }
}

/// Whether this user can create entries in `dir`: tried, as a read-only mount or an ACL is
/// only known by trying.
pub(crate) fn check_writable(rootfs: &Path, dir: &Path) -> Result<(), CliError> {
    let probe = dir.join(format!(".cidboot-probe-{}", std::process::id()));
    match std::fs::DirBuilder::new().mode(0o700).create(&probe) {
        Ok(()) => std::fs::remove_dir(&probe).map_err(io(&probe)),
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => Err(usage(
            rootfs,
            &format!(
                "cannot be written: {} is on a read-only file system",
                dir.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(usage(
            rootfs,
            &format!(
                "cannot be written: {} does not let this user (uid {}) create entries",
                dir.display(),
                nix::unistd::geteuid()
            ),
        )),
        Err(e) => Err(io(dir)(e)),
    }
}

impl UnpackTarget {
    /// Checks `rootfs` and makes what applying into it needs; refused with the reason when it
    /// cannot work.
    pub(crate) fn prepare(rootfs: &Path) -> Result<UnpackTarget, CliError> {
        let parent = match rootfs.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(rootfs) {
            Ok(m) if !m.is_dir() => Err(usage(rootfs, "exists and is not a directory")),
            Ok(m) => {
                if std::fs::read_dir(rootfs)
                    .map_err(io(rootfs))?
                    .next()
                    .is_some()
                {
                    return Err(usage(rootfs, "exists and is not empty"));
                }
                check_writable(rootfs, rootfs)?;
                let kept = KeptDir::claim(rootfs).map_err(|e| match e {
                    crate::scratch::ScratchError::NotEmpty { .. } => {
                        usage(rootfs, "exists and is not empty")
                    }
                    e => e.into(),
                })?;
                // Spill files beside it when there is room to, else in the temporary
                // directory: never inside the root, which must end up as the image only.
                let work = PrivateDir::create(&parent, ".cidboot-unpack-")
                    .or_else(|_| PrivateDir::create(&std::env::temp_dir(), "cidboot-unpack-"))?;
                let spill = work.path().join("spill");
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&spill)
                    .map_err(io(&spill))?;
                // Its owner's only from before the first entry (see `unpack`).
                std::fs::set_permissions(rootfs, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(rootfs))?;
                Ok(UnpackTarget {
                    rootfs: rootfs.to_path_buf(),
                    root: rootfs.to_path_buf(),
                    spill,
                    _work: work,
                    kept: Some(kept),
                    mode: Some(m.mode() & 0o7777),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&parent).map_err(io(&parent))?;
                check_writable(rootfs, &parent)?;
                let work = PrivateDir::create(&parent, ".cidboot-unpack-")?;
                let root = work.path().join("root");
                let spill = work.path().join("spill");
                for d in [&root, &spill] {
                    std::fs::DirBuilder::new()
                        .mode(0o700)
                        .create(d)
                        .map_err(io(d))?;
                }
                Ok(UnpackTarget {
                    rootfs: rootfs.to_path_buf(),
                    root,
                    spill,
                    _work: work,
                    kept: None,
                    mode: None,
                })
            }
            Err(e) => Err(io(rootfs)(e)),
        }
    }

    /// Where the layers are applied.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Where spill files go.
    pub(crate) fn spill(&self) -> &Path {
        &self.spill
    }

    /// The root is complete: it becomes `--rootfs`, mode 0700.
    pub(crate) fn commit(mut self) -> Result<(), CliError> {
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&self.root))?;
        match self.kept.take() {
            Some(kept) => {
                kept.keep();
                self.mode = None;
            }
            None => std::fs::rename(&self.root, &self.rootfs).map_err(io(&self.rootfs))?,
        }
        Ok(())
    }
}

impl Drop for UnpackTarget {
    fn drop(&mut self) {
        // Not committed: an existing directory is emptied again (by the claim) and gets its
        // mode back; a staged root goes with its private directory.
        if let Some(kept) = self.kept.take() {
            drop(kept);
            if let Some(mode) = self.mode {
                let _ =
                    std::fs::set_permissions(&self.rootfs, std::fs::Permissions::from_mode(mode));
            }
        }
    }
}
