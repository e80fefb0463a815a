use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{image, CliError, FetchArgs};
use crate::apply::ApplyLimits;
use crate::boot::{self, Plan};
use crate::config::Loaded;
use crate::launch::exec::Sandbox;
use crate::oci::Limits;
use crate::reference::ImageRef;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID> (default: the configuration's `image`)
    pub reference: Option<String>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Runtime configuration (TOML); measured.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Apply into this directory (must not exist, or be empty) and keep it afterwards.
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Directory holding the helper clients (default: the configuration's helpers.dir).
    #[arg(long)]
    pub helpers_dir: Option<PathBuf>,
    /// Do not give the workload a private /proc and /dev (for hosts that forbid mounts).
    #[arg(long)]
    pub no_mounts: bool,
    /// Print a JSON report as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: RunArgs) -> Result<i32, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::Usage(
            "cidboot run needs root: it applies ownership, chroots and changes users".into(),
        ));
    }
    let config = match &a.config {
        Some(p) => Loaded::load(p)?,
        None => Loaded::empty(),
    };
    let reference = a
        .reference
        .clone()
        .or_else(|| config.config.image.clone())
        .ok_or_else(|| {
            CliError::Usage("no image: give REF or set `image` in the configuration".into())
        })?;
    let r = ImageRef::parse(&reference)?;
    let mut fetch = a.fetch.clone();
    fetch
        .gateways
        .extend(config.config.gateways.iter().cloned());
    let platform = match &config.config.platform {
        Some(p) if a.fetch.platform == "linux/amd64" => p.parse()?,
        _ => fetch.platform()?,
    };
    let gateways = image::gateways(&r, &fetch)?;
    let work = tempfile::Builder::new()
        .prefix("cidboot-run-")
        .tempdir()
        .map_err(|e| CliError::Usage(format!("temporary directory: {e}")))?;
    let rootfs = match &a.rootfs {
        Some(p) => {
            if p.exists()
                && std::fs::read_dir(p)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
            {
                return Err(CliError::Usage(format!(
                    "--rootfs {} exists and is not empty",
                    p.display()
                )));
            }
            std::fs::create_dir_all(p)
                .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
            p.clone()
        }
        None => {
            let p = work.path().join("rootfs");
            std::fs::create_dir(&p)
                .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
            p
        }
    };
    let scratch = work.path().join("spill");
    std::fs::create_dir(&scratch)
        .map_err(|e| CliError::Usage(format!("{}: {e}", scratch.display())))?;
    let helpers_dir =
        crate::launch::helpers::source_dir(&config.config.helpers, a.helpers_dir.as_deref());
    let plan = Plan {
        reference: r,
        config,
        platform,
        gateways,
        helpers_dir,
        sandbox: Sandbox {
            mounts: !a.no_mounts,
        },
        limits: Limits::default(),
        apply_limits: ApplyLimits::default(),
    };
    let mut prepared = boot::prepare(&plan, &rootfs, &scratch).await?;
    let mut child = boot::launch(&plan, &mut prepared).await?;
    let status = child
        .wait()
        .await
        .map_err(|e| CliError::Usage(format!("waiting for the workload: {e}")))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if a.json {
        let v = json!({
            "cid": prepared.resolved.root.to_string(),
            "manifest_digest": prepared.resolved.manifest_desc.digest().to_string(),
            "config_digest": prepared.resolved.config.desc.digest().to_string(),
            "pcr16": prepared.log.pcr16,
            "measurements": prepared.log,
            "apply": prepared.report,
            "process": prepared.spec,
            "exit_code": code,
        });
        println!("{v}");
    }
    tracing::info!(exit_code = code, "workload exited");
    Ok(code)
}
