//! The helper clients (EigenCloud-style `/eigen/bin/*`): pinned by sha256, layered into the
//! root at the same path, and run as a chain before the workload.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::exec::{self, Sandbox};
use super::spec::ProcessSpec;
use super::user::Identity;
use super::LaunchError;
use crate::apply::fs::write_at;
use crate::apply::fs::Root;
use crate::apply::path::RelPath;
use crate::config::{Helpers, Prestart};

/// Largest helper binary.
pub const MAX_HELPER_SIZE: u64 = 256 << 20;
/// Largest env file a helper may write.
pub const MAX_ENV_FILE: u64 = 64 << 10;

/// A helper whose bytes matched its pin, and the sealed memfd it runs from.
#[derive(Debug, Clone)]
pub struct Helper {
    /// Its file name, which it is installed under.
    pub name: String,
    /// `sha256:` digest of its bytes, equal to its pin.
    pub digest: String,
    /// The manifest digest of the dependency image it came from; `None` for a helper the
    /// boot image carries, pinned in `[helpers.pins]`.
    pub source: Option<String>,
    bytes: Vec<u8>,
    exe: Arc<OwnedFd>,
}

/// Most helpers one boot installs.
pub const MAX_HELPERS: usize = 256;

/// Takes every regular file directly in `dir_in_root` of a verified dependency image's root
/// as a helper (symlinks and anything else are left out), sealed like a pinned one.
/// `source` is the image's manifest digest.
pub fn collect(root: &Root, dir_in_root: &str, source: &str) -> Result<Vec<Helper>, LaunchError> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstatat, Mode, SFlag};
    let fail = |reason: String| LaunchError::Helper {
        name: format!("image {source}"),
        reason,
    };
    let rel = RelPath::parse(dir_in_root.trim_start_matches('/').as_bytes(), 4096, 64)?;
    let Some(dir) = root.open_real_dir(&rel)? else {
        return Err(fail(format!("has no {dir_in_root} directory")));
    };
    let mut names = crate::apply::fs::list_dir(&dir, &rel)?;
    names.sort();
    let mut out = Vec::new();
    for raw in names {
        let name = String::from_utf8_lossy(&raw).into_owned();
        let st = fstatat(
            &dir,
            raw.as_slice(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| fail(format!("{dir_in_root}/{name}: {e}")))?;
        if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            warn!(helper = %name, image = %source, "not a regular file: not taken as a helper");
            continue;
        }
        crate::config::check_helper_name(&name).map_err(|e| fail(e.to_string()))?;
        if out.len() >= MAX_HELPERS {
            return Err(fail(format!("more than {MAX_HELPERS} helpers")));
        }
        let fd = openat(
            &dir,
            raw.as_slice(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| fail(format!("{dir_in_root}/{name}: {e}")))?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(MAX_HELPER_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| fail(format!("{dir_in_root}/{name}: {e}")))?;
        if bytes.len() as u64 > MAX_HELPER_SIZE {
            return Err(fail(format!(
                "{dir_in_root}/{name} is larger than {MAX_HELPER_SIZE} bytes"
            )));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let exe =
            sealed(&name, &bytes, &digest).map_err(|e| fail(format!("sealing {name}: {e}")))?;
        out.push(Helper {
            name,
            digest,
            source: Some(source.to_string()),
            bytes,
            exe: Arc::new(exe),
        });
    }
    if out.is_empty() {
        return Err(fail(format!("has no regular files in {dir_in_root}")));
    }
    Ok(out)
}

/// Reads and checks every pinned helper from `dir` (the boot image's helper directory).
pub fn verify(cfg: &Helpers, dir: &Path) -> Result<Vec<Helper>, LaunchError> {
    let mut out = Vec::new();
    for (name, pin) in &cfg.pins {
        let path = dir.join(name);
        let bytes = read_capped(&path).map_err(|e| LaunchError::Helper {
            name: name.clone(),
            reason: format!("reading {}: {e}", path.display()),
        })?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if &digest != pin {
            return Err(LaunchError::Helper {
                name: name.clone(),
                reason: format!(
                    "{} is {digest}, but the configuration pins {pin}; refusing to start",
                    path.display()
                ),
            });
        }
        let exe = sealed(name, &bytes, &digest).map_err(|e| LaunchError::Helper {
            name: name.clone(),
            reason: format!("sealing its verified bytes: {e}"),
        })?;
        out.push(Helper {
            name: name.clone(),
            digest,
            source: None,
            bytes,
            exe: Arc::new(exe),
        });
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !cfg.pins.contains_key(&n) {
                warn!(helper = %n, "helper present but not pinned: not layered into the workload");
            }
        }
    }
    Ok(out)
}

/// The verified bytes in a memfd that can no longer change (sealed against writes, growth
/// and shrinking), hashed again as the kernel holds them, and reopened read-only so that it
/// can be exec'd. A helper runs from this, never from a path the image could redirect.
fn sealed(name: &str, bytes: &[u8], digest: &str) -> std::io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let cname = CString::new(format!("cidboot-helper-{name}"))?;
    let fd = memfd_create(
        cname.as_c_str(),
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    fcntl(
        &f,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    // A descriptor open for writing would make the exec fail (ETXTBSY): reopen read-only.
    let ro = std::fs::File::open(format!("/proc/self/fd/{}", f.as_raw_fd()))?;
    drop(f);
    let mut check = &ro;
    check.rewind()?;
    let mut h = Sha256::new();
    std::io::copy(&mut check.take(MAX_HELPER_SIZE + 1), &mut h)?;
    let again = format!("sha256:{}", hex::encode(h.finalize()));
    if again != digest {
        return Err(std::io::Error::other(format!(
            "the sealed copy hashes to {again}, not {digest}"
        )));
    }
    Ok(ro.into())
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_HELPER_SIZE + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_HELPER_SIZE {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_HELPER_SIZE} bytes"
        )));
    }
    Ok(buf)
}

/// Writes the verified bytes (not the file again) into the root at `dir_in_root/<name>`,
/// replacing whatever the image had there. No symlink is followed on the way: an image whose
/// helper directory (or a parent of it) is a symlink is refused.
pub fn install(root: &Root, helpers: &[Helper], dir_in_root: &str) -> Result<(), LaunchError> {
    if helpers.is_empty() {
        return Ok(());
    }
    let dir_rel = RelPath::parse(dir_in_root.trim_start_matches('/').as_bytes(), 4096, 64)?;
    let dir = root
        .ensure_real_dir(&dir_rel)
        .map_err(|e| LaunchError::Helper {
            name: helpers
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            reason: format!("installing into {dir_in_root}: {e}"),
        })?;
    for h in helpers {
        let rel = dir_rel.join(h.name.as_bytes());
        write_at(&dir, h.name.as_bytes(), &rel, &h.bytes, 0o755)?;
        info!(helper = %h.name, digest = %h.digest, path = %rel.display(), "helper layered in");
    }
    Ok(())
}

/// Runs the prestart chain in order. Each step runs as root inside the root with the
/// workload's environment so far; its env file, if any, is merged into `spec`.
pub async fn run_chain(
    root: &Root,
    chain: &[Prestart],
    dir_in_root: &str,
    helpers: &[Helper],
    spec: &mut ProcessSpec,
    sandbox: &Sandbox,
) -> Result<(), LaunchError> {
    for step in chain {
        let fail = |reason: String| LaunchError::Helper {
            name: step.helper.clone(),
            reason,
        };
        let helper = helpers
            .iter()
            .find(|h| h.name == step.helper)
            .ok_or_else(|| fail("is not among the verified helpers".into()))?;
        let exe = format!("{}/{}", dir_in_root.trim_end_matches('/'), step.helper);
        let helper_spec = ProcessSpec {
            argv: std::iter::once(exe.clone())
                .chain(step.args.iter().cloned())
                .collect(),
            env: spec.env.clone(),
            cwd: "/".into(),
            user: Identity {
                uid: 0,
                gid: 0,
                groups: vec![0],
                name: Some("root".into()),
                home: Some("/root".into()),
            },
        };
        info!(helper = %step.helper, "prestart");
        let before = sandbox.cgroup.as_ref().map(|c| c.counters());
        let mut child = exec::command(root, &helper_spec, sandbox, Some(helper.exe.clone()))?
            .spawn()
            .await?;
        let pumps = exec::pump_to_own(&mut child);
        let status = match tokio::time::timeout(
            Duration::from_secs(step.timeout_secs),
            child.wait(),
        )
        .await
        {
            Ok(s) => s.map_err(|e| fail(format!("waiting: {e}")))?,
            Err(_) => {
                let _ = child.kill().await;
                return Err(fail(format!(
                    "did not finish within {}s",
                    step.timeout_secs
                )));
            }
        };
        exec::drain(pumps).await;
        if !status.success() {
            let cause = sandbox
                .cgroup
                .as_ref()
                .zip(before)
                .and_then(|(c, b)| c.cause(b))
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            return Err(fail(format!("exited with {status}{cause}")));
        }
        if let Some(f) = &step.env_file {
            let rel = RelPath::parse(f.trim_start_matches('/').as_bytes(), 4096, 64)?;
            let data = root
                .read_file(&rel, MAX_ENV_FILE)?
                .ok_or_else(|| fail(format!("did not write its env file {f}")))?;
            let vars = parse_env_file(&String::from_utf8_lossy(&data))
                .map_err(|e| fail(format!("{f}: {e}")))?;
            info!(helper = %step.helper, vars = vars.len(), "merged env file");
            spec.merge_env(vars.iter().map(String::as_str));
        }
    }
    Ok(())
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped; an `export ` prefix and one pair
/// of matching quotes around the value allowed.
pub fn parse_env_file(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: not KEY=VALUE", i + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("line {}: bad key {k:?}", i + 1));
        }
        let v = v.trim();
        let v = ['"', '\'']
            .iter()
            .find_map(|q| v.strip_prefix(*q).and_then(|s| s.strip_suffix(*q)))
            .unwrap_or(v);
        out.push(format!("{k}={v}"));
    }
    Ok(out)
}

/// Where a helper directory lives on this machine (a test or `cidboot run` may override it).
pub fn source_dir(cfg: &Helpers, over: Option<&Path>) -> PathBuf {
    over.map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(&cfg.dir))
}
