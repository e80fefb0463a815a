use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::json;

use super::signals::Interrupts;
use super::{CliError, FetchArgs};
use crate::boot::{self, BootError};
use crate::config::Loaded;
use crate::launch::LaunchError;
use crate::nsm::device::DeviceNsm;
#[cfg(feature = "software-nsm")]
use crate::nsm::software::{SoftwareNsm, TestCa};
use crate::nsm::Nsm;
use crate::relay::logs::{Kind as LogKind, LogSender};
use crate::scratch::{KeptDir, PrivateDir, ScratchError};
use crate::transport::addr::Addr;
use crate::transport::connect::ConnectProxy;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID> (default: the configuration's `image`)
    pub reference: Option<String>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    #[command(flatten)]
    pub layers: super::image::LayerLimitArgs,
    /// Runtime configuration (TOML); measured. Its `[fetch]`, `platform`, `tag` and `digest`
    /// apply where their flags are not given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The sealed secrets the configuration's [[secrets]] name (what `cidboot seal` prints);
    /// not measured. KMS is asked with the AWS environment variables and profile.
    #[arg(long, value_name = "FILE")]
    pub secrets: Option<PathBuf>,
    /// The PEM RSA private key that opens the image's encrypted (ocicrypt) layers; not
    /// measured. In an enclave the key comes as a sealed secret instead (`[image]
    /// decryption_key`).
    #[arg(long, value_name = "FILE")]
    pub decryption_key: Option<PathBuf>,
    /// Apply into this directory (must not exist, or be empty) and keep it afterwards; it must
    /// be inside a directory only root can enter. If the boot fails or the run is interrupted,
    /// it is emptied again (by the next run in the same place, if this one was killed).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// Directory holding the helper clients (default: the configuration's helpers.dir).
    #[arg(long)]
    pub helpers_dir: Option<PathBuf>,
    /// Which NSM measures and attests: the device (/dev/nsm), the software NSM, or auto
    /// (the device if present).
    #[arg(long, default_value = "auto", value_parser = NSM_KINDS)]
    pub nsm: String,
    /// Software NSM: the test CA certificate (PEM) to sign under; a fresh one if not given.
    #[cfg(feature = "software-nsm")]
    #[arg(long, requires = "nsm_ca_key")]
    pub nsm_ca_cert: Option<PathBuf>,
    /// Software NSM: the test CA's private key (PEM).
    #[cfg(feature = "software-nsm")]
    #[arg(long, requires = "nsm_ca_cert")]
    pub nsm_ca_key: Option<PathBuf>,
    /// Software NSM: write the root certificate (PEM) that verifies its documents here.
    #[cfg(feature = "software-nsm")]
    #[arg(long)]
    pub nsm_root_out: Option<PathBuf>,
    /// Software NSM: PCR0-2 of an EIF, from the JSON eif_build (or scripts/build-eif.sh, or
    /// nitro-cli build-enclave) printed, instead of zeros; so that what `cidboot expect
    /// --eif-pcrs` pins can be checked against its documents.
    #[cfg(feature = "software-nsm")]
    #[arg(long, value_name = "FILE")]
    pub nsm_pcrs: Option<PathBuf>,
    /// Where the attestation API listens, tcp:HOST:PORT or HOST:PORT (default: the
    /// configuration's, or 127.0.0.1:9393).
    #[arg(long, value_name = "ADDR")]
    pub attestation_listen: Option<String>,
    /// Reach gateways and the workload's egress through this HTTP CONNECT proxy (the parent's
    /// `cidboot host`), as an enclave does.
    #[arg(long, value_name = "ADDR")]
    pub parent_egress: Option<String>,
    /// Send the workload's output and the final status to this log sink (a `cidboot host`).
    #[arg(long, value_name = "ADDR")]
    pub log_sink: Option<String>,
    /// The name the log sink tags this run's records with (over unix or tcp; over vsock the
    /// sink uses the CID): 1 to 64 of A-Z a-z 0-9 . _ -.
    #[arg(long, value_name = "NAME", requires = "log_sink")]
    pub log_name: Option<String>,
    /// Print a JSON report as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// The `--nsm` choices: the enclave build has no software NSM to offer.
#[cfg(feature = "software-nsm")]
const NSM_KINDS: [&str; 3] = ["auto", "device", "software"];
#[cfg(not(feature = "software-nsm"))]
const NSM_KINDS: [&str; 2] = ["auto", "device"];

fn open_nsm(a: &RunArgs) -> Result<Arc<dyn Nsm>, CliError> {
    let device = std::path::Path::new("/dev/nsm").exists();
    if a.nsm == "device" || (a.nsm == "auto" && device) {
        #[cfg(feature = "software-nsm")]
        if a.nsm_pcrs.is_some() {
            return Err(CliError::Usage(
                "--nsm-pcrs sets the software NSM's PCR0-2, but this run uses /dev/nsm, which reports its own (give --nsm software)".into(),
            ));
        }
        return Ok(Arc::new(DeviceNsm::open()?));
    }
    software_nsm(a)
}

#[cfg(not(feature = "software-nsm"))]
fn software_nsm(_: &RunArgs) -> Result<Arc<dyn Nsm>, CliError> {
    Err(CliError::Usage(
        "there is no /dev/nsm, and this cidboot is built without the software NSM (the \
         `software-nsm` feature, in the default build)"
            .into(),
    ))
}

#[cfg(feature = "software-nsm")]
fn software_nsm(a: &RunArgs) -> Result<Arc<dyn Nsm>, CliError> {
    let ca = match (&a.nsm_ca_cert, &a.nsm_ca_key) {
        (Some(c), Some(k)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p)
                    .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))
            };
            TestCa::load(&read(c)?, &read(k)?)?
        }
        _ => TestCa::generate()?,
    };
    if let Some(out) = &a.nsm_root_out {
        std::fs::write(out, ca.root_pem())
            .map_err(|e| CliError::Usage(format!("{}: {e}", out.display())))?;
    }
    let boot_pcrs = match &a.nsm_pcrs {
        Some(p) => {
            use std::io::Read;
            let bad = |e: String| CliError::Usage(format!("--nsm-pcrs {}: {e}", p.display()));
            let mut buf = Vec::new();
            std::fs::File::open(p)
                .and_then(|f| {
                    f.take(crate::nsm::MAX_EIF_PCRS as u64 + 1)
                        .read_to_end(&mut buf)
                })
                .map_err(|e| bad(e.to_string()))?;
            crate::nsm::parse_eif_pcrs(&buf)
                .map_err(|e| bad(e.to_string()))?
                .to_vec()
        }
        None => Vec::new(),
    };
    tracing::warn!("using the SOFTWARE NSM: its documents are signed by a test CA and prove nothing about hardware");
    Ok(Arc::new(SoftwareNsm::new(&ca, &boot_pcrs)?))
}

/// How long `run` waits for its log sink to accept a connection.
const LOG_SINK_PATIENCE_SECS: u64 = 30;
/// How long `run` keeps sending until the sink has acknowledged every record and the status.
const STATUS_PATIENCE_SECS: u64 = 60;
/// The same after a signal: the run is ending at someone's request, and should not linger.
const STATUS_PATIENCE_INTERRUPTED_SECS: u64 = 5;
/// How long the workload has to end after cidboot passes on a SIGINT, SIGTERM or SIGHUP,
/// before it is killed (as `docker stop` waits 10 s); a second signal kills it at once.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(a: RunArgs, sig: Interrupts) -> Result<i32, CliError> {
    let sink = match &a.log_sink {
        Some(s) => {
            let addr: Addr = s
                .parse()
                .map_err(|e: crate::transport::addr::AddrError| CliError::Usage(e.to_string()))?;
            let patience = std::time::Duration::from_secs(LOG_SINK_PATIENCE_SECS);
            // Say at once what the run waits for, rather than after the patience is spent.
            if let Some(n) = &a.log_name {
                if !crate::relay::logs::valid_name(n) {
                    return Err(CliError::Usage(format!(
                        "--log-name {n:?}: use 1 to 64 of A-Z a-z 0-9 . _ -"
                    )));
                }
            }
            let connect = LogSender::connect(&addr, patience, a.log_name.as_deref());
            tokio::pin!(connect);
            let connected = match tokio::time::timeout(
                std::time::Duration::from_millis(500),
                &mut connect,
            )
            .await
            {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(
                            "waiting up to {LOG_SINK_PATIENCE_SECS}s for the log sink {addr} to accept a connection (a `cidboot host` with [logs] listen = \"{addr}\")"
                        );
                    let mut sig = sig.clone();
                    tokio::select! {
                        r = connect => r,
                        s = sig.first() => return Err(CliError::Interrupted(s)),
                    }
                }
            };
            let (sender, task) = connected.map_err(|e| {
                CliError::Usage(format!(
                    "log sink {addr}: {e} after {LOG_SINK_PATIENCE_SECS}s; start `cidboot host` with [logs] listen = \"{addr}\", or leave out --log-sink"
                ))
            })?;
            Some((sender, task))
        }
        None => None,
    };
    let sender = sink.as_ref().map(|(s, _)| s.clone());
    let mut late = sig.clone();
    let result = boot_and_run(&a, sender.clone(), sig).await;
    if let Some(s) = &sender {
        let status = match &result {
            Ok(code) => json!({"exit_code": code, "reason": "the workload exited"}),
            Err(e) => json!({"exit_code": null, "reason": e.to_string()}),
        };
        let _ = s
            .send(LogKind::Status, status.to_string().into_bytes())
            .await;
    }
    drop(sender);
    if let Some((s, task)) = sink {
        drop(s);
        let patience = if crate::scratch::interrupted() {
            STATUS_PATIENCE_INTERRUPTED_SECS
        } else {
            STATUS_PATIENCE_SECS
        };
        let delivered = tokio::time::timeout(std::time::Duration::from_secs(patience), task);
        // A signal while waiting for the sink (after the run ended) ends the wait.
        let delivered = tokio::select! {
            d = delivered => Some(d),
            s = late.first(), if !crate::scratch::interrupted() => {
                tracing::warn!("{}: not waiting for the log sink any longer", s.as_str());
                None
            }
        };
        match delivered {
            None | Some(Ok(Ok(Ok(())))) => {}
            Some(Ok(Ok(Err(e)))) => tracing::warn!("the log sender stopped: {e}"),
            Some(Ok(Err(e))) => tracing::warn!("the log sender failed: {e}"),
            Some(Err(_)) => {
                tracing::warn!("the log sink did not acknowledge every record within {patience}s")
            }
        }
    }
    result
}

/// Why other local users could reach `dir`, unless a directory above it is this user's (root's)
/// and closed to them (no search permission for others, nor for a group other than root's).
/// A root under `--rootfs` holds the image's setuid files and device nodes (and what the
/// workload writes), so only root may reach it. Anything that cannot be checked counts as
/// reachable.
fn reachable_by_others(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let unknown = |e: std::io::Error| Some(format!("{} cannot be checked: {e}", dir.display()));
    let abs = match std::path::absolute(dir) {
        Ok(a) => a,
        Err(e) => return unknown(e),
    };
    // The part of the path that exists, with its symlinks resolved: what really decides.
    let mut existing = abs.parent().unwrap_or(&abs).to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    let existing = match existing.canonicalize() {
        Ok(e) => e,
        Err(e) => return unknown(e),
    };
    let me = nix::unistd::geteuid().as_raw();
    for a in existing.ancestors() {
        let m = match std::fs::metadata(a) {
            Ok(m) => m,
            Err(e) => return unknown(e),
        };
        let mode = m.mode() & 0o7777;
        let group_ok = mode & 0o010 == 0 || m.gid() == 0;
        if m.uid() == me && mode & 0o001 == 0 && group_ok {
            return None;
        }
    }
    let mode = std::fs::metadata(&existing).map_or(0, |m| m.mode() & 0o7777);
    Some(format!(
        "other local users can reach it (through {}, mode {mode:04o}, and no directory above is closed to them)",
        existing.display()
    ))
}

/// Claims the root the user asked to keep: only where no other user can reach it, never one
/// that another run is using, and an interrupted run's leftover there is emptied first.
fn claim_rootfs(p: &Path) -> Result<KeptDir, CliError> {
    if let Some(why) = reachable_by_others(p) {
        return Err(CliError::Usage(format!(
            "--rootfs {}: {why}; the root holds the image's setuid files and device nodes, usable by whoever reaches them: keep it in a directory only root can enter (made with `mkdir -m 0700`), or leave out --rootfs",
            p.display()
        )));
    }
    // What cannot work is refused before anything is fetched.
    match std::fs::metadata(p) {
        Ok(m) if !m.is_dir() => {
            return Err(CliError::Usage(format!(
                "--rootfs {} exists and is not a directory",
                p.display()
            )))
        }
        Ok(_) => super::unpack_target::check_writable(p, p)?,
        Err(_) => {}
    }
    KeptDir::claim(p).map_err(|e| match e {
        ScratchError::NotEmpty { .. } => {
            CliError::Usage(format!("--rootfs {} exists and is not empty", p.display()))
        }
        e => e.into(),
    })
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> CliError {
    let what = what.to_string();
    move |source| CliError::Io { what, source }
}

async fn boot_and_run(
    a: &RunArgs,
    sender: Option<LogSender>,
    mut sig: Interrupts,
) -> Result<i32, CliError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(CliError::Usage(
            "cidboot run needs root: it applies ownership, chroots and changes users".into(),
        ));
    }
    let config = match &a.config {
        Some(p) => Loaded::load(p)?,
        None => Loaded::empty(),
    };
    let (sealed, credentials) =
        crate::secrets::for_run(&config.config, a.secrets.as_deref()).map_err(CliError::Usage)?;
    let decryption_key = super::image::decryption_key(a.decryption_key.as_deref())?;
    // The helpers' and the workload's cgroup, below cidboot's own; removed when it is dropped.
    let cgroup = crate::launch::cgroup::for_run(config.config.workload.limits.as_ref())
        .map_err(|e| boot::BootError::from(crate::launch::LaunchError::from(e)))?
        .map(Arc::new);
    let egress_dialer: Arc<dyn crate::transport::Connector> = match &a.parent_egress {
        Some(p) => Arc::new(ConnectProxy {
            proxy: p
                .parse()
                .map_err(|e: crate::transport::addr::AddrError| CliError::Usage(e.to_string()))?,
        }),
        None => Arc::new(crate::transport::TcpConnector),
    };
    // Everything the run makes is inside one private directory (0700 from its creation):
    // the root (whose own mode the image sets), the spill files and the sandbox's stage. No
    // other local user can reach the image's setuid files or device nodes through it.
    let work = PrivateDir::create(&std::env::temp_dir(), "cidboot-run-")?;
    // A root the user keeps is emptied again on a failure or a signal, unless the workload ran.
    let kept = a.rootfs.as_deref().map(claim_rootfs).transpose()?;
    let rootfs = match &a.rootfs {
        Some(p) => p.clone(),
        None => {
            let p = work.path().join("rootfs");
            std::fs::create_dir(&p).map_err(io_err(p.display()))?;
            p
        }
    };
    let scratch = work.path().join("spill");
    std::fs::create_dir(&scratch).map_err(io_err(scratch.display()))?;
    let helpers_dir =
        crate::launch::helpers::source_dir(&config.config.helpers, a.helpers_dir.as_deref());
    let stage = work.path().join("stage");
    crate::launch::exec::ensure_stage(&stage).map_err(|e| CliError::Io {
        what: "the sandbox's stage".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let overrides = boot::plan::Overrides {
        reference: a.reference.clone(),
        gateways: a.fetch.gateways.clone(),
        ca: a.fetch.ca.clone(),
        platform: a.fetch.platform.clone(),
        tag: a.fetch.tag.clone(),
        digest: a.fetch.digest.clone(),
        fetch: a.fetch.overrides(),
        attestation_listen: a.attestation_listen.clone(),
        layers: a.layers.layers()?,
    };
    // Everything up to the workload's exec, which a signal interrupts at any point: what it
    // started (a helper, the sandbox) is killed as its future is dropped.
    let booting = async {
        // The listen addresses are checked before the NSM is opened and anything is fetched.
        let listen = boot::plan::attestation_listen(&config.config, &overrides);
        crate::api::check_listen(&listen)
            .await
            .map_err(crate::boot::BootError::from)?;
        boot::check_listens(&config.config).await?;
        let machine = boot::plan::Machine {
            egress_dialer,
            nsm: open_nsm(a)?,
            helpers_dir,
            stage,
            observer: super::progress::layers(),
            sealed,
            credentials,
            decryption_key,
        };
        let mut plan = boot::plan::build(config, &overrides, machine)?;
        plan.sandbox.cgroup = cgroup.clone();
        let mut prepared =
            boot::by_deadline(&plan, boot::prepare(&plan, &rootfs, &scratch)).await?;
        let api = boot::serve_api(&plan, &mut prepared).await?;
        boot::start_kms_proxy(&plan, &mut prepared).await?;
        boot::start_relays(&plan, &mut prepared).await?;
        let cmd = boot::by_deadline(&plan, boot::prepare_launch(&plan, &mut prepared)).await?;
        let before = cgroup.as_ref().map(|c| c.counters()).unwrap_or_default();
        // The workload's own exec failing is its entrypoint's fault (126, 127), not cidboot's.
        let child = boot::by_deadline(&plan, async { Ok(cmd.spawn().await) })
            .await?
            .map_err(|e| match e {
                e @ LaunchError::Exec { .. } => CliError::Entrypoint(e),
                e => BootError::from(e).into(),
            })?;
        Ok::<_, CliError>((prepared, api, child, before))
    };
    let (prepared, api, mut child, before) = tokio::select! {
        r = booting => r?,
        s = sig.first() => return Err(CliError::Interrupted(s)),
    };
    let own = match sender {
        Some(_) => Vec::new(),
        None => crate::launch::exec::pump_to_own(&mut child),
    };
    let pumps = sender.map(|s| {
        let out = child.stdout.take();
        let err = child.stderr.take();
        let s2 = s.clone();
        (
            tokio::spawn(async move {
                if let Some(o) = out {
                    let _ = s.pump(o, LogKind::Stdout).await;
                }
            }),
            tokio::spawn(async move {
                if let Some(e) = err {
                    let _ = s2.pump(e, LogKind::Stderr).await;
                }
            }),
        )
    });
    let mut interrupted = None;
    let status = tokio::select! {
        s = child.wait() => s,
        s = sig.first() => {
            interrupted = Some(s);
            stop(&mut child, s, &mut sig).await
        }
    }
    .map_err(io_err("waiting for the workload"))?;
    if let Some((o, e)) = pumps {
        let _ = o.await;
        let _ = e.await;
    }
    crate::launch::exec::drain(own).await;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if let Some(s) = interrupted {
        tracing::warn!(exit_code = code, "the workload was stopped");
        return Err(CliError::Interrupted(s));
    }
    if let Some(k) = kept {
        k.keep();
    }
    let cause = cgroup.as_ref().and_then(|c| c.cause(before));
    let reason = match cause {
        Some(c) => format!("{c}; exit code {code}"),
        None => "the workload exited".to_string(),
    };
    if a.json {
        // Serialized directly, so that the keys keep this order (docs/json.md).
        let v = RunOut {
            cid: prepared.resolved.root.to_string(),
            manifest_digest: prepared.resolved.manifest_desc.digest().to_string(),
            config_digest: prepared.resolved.config.desc.digest().to_string(),
            pcr16: &prepared.log.pcr16,
            measurements: &prepared.log,
            apply: &prepared.report,
            process: &prepared.spec,
            attestation_api: api.to_string(),
            exit_code: code,
            reason: &reason,
            ended: "workload",
        };
        outln!("{}", serde_json::to_string(&v).unwrap_or_default())?;
    }
    match cause {
        Some(_) => tracing::warn!(exit_code = code, "the workload ended: {reason}"),
        None => tracing::info!(exit_code = code, "workload exited"),
    }
    Ok(code)
}

/// Passes the signal on to the workload (the sandbox forwards it to the program), and kills
/// it if it has not ended within [`STOP_TIMEOUT`] or at another signal.
async fn stop(
    child: &mut tokio::process::Child,
    s: nix::sys::signal::Signal,
    sig: &mut Interrupts,
) -> std::io::Result<std::process::ExitStatus> {
    tracing::warn!(
        "{}: stopping the workload (the signal is passed on; SIGKILL in {}s, or at a second signal)",
        s.as_str(),
        STOP_TIMEOUT.as_secs()
    );
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), s);
    }
    tokio::select! {
        st = child.wait() => return st,
        () = tokio::time::sleep(STOP_TIMEOUT) => {}
        () = sig.another() => {}
    }
    child.kill().await?;
    child.wait().await
}

/// `run --json`'s last line when the workload ran, in this order.
#[derive(serde::Serialize)]
struct RunOut<'a> {
    cid: String,
    manifest_digest: String,
    config_digest: String,
    pcr16: &'a str,
    measurements: &'a crate::measure::EventLog,
    apply: &'a crate::apply::ApplyReport,
    process: &'a crate::launch::spec::ProcessSpec,
    attestation_api: String,
    exit_code: i32,
    reason: &'a str,
    ended: &'static str,
}
