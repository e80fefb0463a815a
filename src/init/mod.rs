//! cidboot as PID 1 in an enclave.
//!
//! It never exits and never panics: every fatal error is logged to the console, reported to
//! the parent as the final status, and followed by a power-off.

pub mod supervise;
pub mod system;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{error, info, warn};

use crate::boot;
use crate::config::Loaded;
use crate::nsm::Nsm;
use crate::relay::logs::{Kind, LogSender};
use crate::relay::{BOOT_PORT, EGRESS_PORT, HEARTBEAT, HEARTBEAT_PORT, LOGS_PORT};
use crate::transport::addr::Addr;
use crate::transport::connect::ConnectProxy;

/// A configuration baked into the initramfs wins over the parent's boot service.
pub const BAKED_CONFIG: &str = "/etc/cidboot/config.toml";
/// Where the boot image keeps the pinned helpers.
pub const HELPER_DIR: &str = "/eigen/bin";
/// The tmpfs the image's layers are applied to.
pub const NEW_ROOT: &str = "/mnt/root";
/// The tmpfs that holds each layer's inflated tar stream while it is applied.
pub const SPILL: &str = "/run/cidboot/spill";
/// Where each sandbox stages its root (in its own mount namespace; empty in PID 1's view).
pub const STAGE: &str = "/run/cidboot/stage";
/// The enclave's hostname.
pub const HOSTNAME: &str = "cidboot-enclave";
/// How long the parent has to answer the boot heartbeat.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the parent's boot service has to hand over the configuration.
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the final status (and every record before it) is sent again until the parent's
/// sink acknowledges it, before the power-off.
pub const STATUS_PATIENCE: Duration = Duration::from_secs(60);
/// Signals forwarded to the workload.
const FORWARDED: &[nix::sys::signal::Signal] = &[
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
];

/// Why PID 1's boot stopped; reported to the parent as the final status.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum InitError {
    #[error(transparent)]
    System(#[from] system::SystemError),
    #[error("heartbeat to the parent ({addr}): {reason}")]
    Heartbeat { addr: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    Nsm(#[from] crate::nsm::NsmError),
    #[error("{0}")]
    Other(String),
}

fn forwarded_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set
}

/// The PID 1 entry point.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| {
        console(format_args!("internal error (panic): {info}; powering off"));
        system::power_off();
    }));
    // Blocked before any thread exists, so every thread inherits the mask and the signals
    // arrive only through the signalfd. Children get an empty mask back (launch::exec).
    let _ = forwarded_set().thread_block();
    if let Err(e) = system::mount_basics().and_then(|()| system::console()) {
        console(format_args!("fatal: {e}; powering off"));
        system::power_off();
    }
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            console(format_args!("fatal: async runtime: {e}; powering off"));
            system::power_off();
        }
    };
    let status = rt.block_on(lifecycle(&system::Real));
    console(format_args!("status {status}; powering off"));
    system::power_off();
}

/// A line on the console that cannot panic (`eprintln!` does when the write fails), so that
/// nothing on the way to the power-off can end PID 1.
fn console(msg: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "cidboot: {msg}");
}

/// Everything between the runtime's start and the power-off: the boot, the workload's run,
/// and the final status, which reaches the parent's sink (if one answered) within
/// [`system::System::status_patience`]. Returns the status; every path ends here, so the
/// caller's power-off follows every outcome.
pub async fn lifecycle(sys: &dyn system::System) -> serde_json::Value {
    let mut sink: Option<(LogSender, tokio::task::JoinHandle<std::io::Result<()>>)> = None;
    let result = boot(sys, &mut sink).await;
    let status = match &result {
        Ok((code, reason)) => {
            info!(exit_code = code, "{reason}");
            json!({"exit_code": code, "reason": reason})
        }
        Err(e) => {
            error!("fatal: {e}");
            json!({"exit_code": null, "reason": format!("fatal: {e}")})
        }
    };
    if let Some((sender, task)) = sink {
        let payload = status.to_string().into_bytes();
        match sender
            .finish(task, Kind::Status, payload, sys.status_patience())
            .await
        {
            Ok(()) => info!("the parent acknowledged every record and the status"),
            Err(e) => warn!("the status may not have reached the parent: {e}"),
        }
    }
    status
}

async fn note(
    sink: &Option<(LogSender, tokio::task::JoinHandle<std::io::Result<()>>)>,
    msg: String,
) {
    info!("{msg}");
    if let Some((s, _)) = sink {
        let _ = s.send(Kind::Init, msg.into_bytes()).await;
    }
}

async fn heartbeat(addr: &Addr) -> Result<(), InitError> {
    let fail = |reason: String| InitError::Heartbeat {
        addr: addr.to_string(),
        reason,
    };
    let r = tokio::time::timeout(HEARTBEAT_TIMEOUT, async {
        let mut s = addr.connect().await?;
        s.write_all(&[HEARTBEAT]).await?;
        s.read_u8().await
    })
    .await
    .map_err(|_| fail(format!("no answer within {}s", HEARTBEAT_TIMEOUT.as_secs())))?
    .map_err(|e| fail(e.to_string()))?;
    if r != HEARTBEAT {
        return Err(fail(format!("answered 0x{r:02x}")));
    }
    Ok(())
}

/// Boots, runs and supervises the workload; returns its exit code and a reason.
async fn boot(
    sys: &dyn system::System,
    sink: &mut Option<(LogSender, tokio::task::JoinHandle<std::io::Result<()>>)>,
) -> Result<(i32, String), InitError> {
    let modules = sys.load_modules()?;
    sys.loopback_up()?;
    sys.hostname(HOSTNAME)?;
    let nsm: Arc<dyn Nsm> = sys.open_nsm()?;
    let seed = nsm.get_random()?;
    sys.add_entropy(&seed)?;
    let at = |port: u32| sys.parent(port);
    heartbeat(&at(HEARTBEAT_PORT)).await?;
    match LogSender::connect(&at(LOGS_PORT), Duration::from_secs(10), None).await {
        Ok(s) => *sink = Some(s),
        Err(e) => warn!(
            "no log sink at {}: {e}; logging to the console only",
            at(LOGS_PORT)
        ),
    }
    note(sink, format!("cidboot {} as PID 1: modules {modules:?}, {} bytes of NSM entropy, heartbeat answered by {}", env!("CARGO_PKG_VERSION"), seed.len(), at(HEARTBEAT_PORT))).await;

    let (bytes, source, mut from_parent) = if let Some(baked) = sys.baked_config() {
        let b = std::fs::read(&baked)
            .map_err(|e| InitError::Config(format!("{}: {e}", baked.display())))?;
        (b, baked.display().to_string(), None)
    } else {
        let a = at(BOOT_PORT);
        let r = crate::relay::bootcfg::fetch(&a, CONFIG_TIMEOUT)
            .await
            .map_err(|e| InitError::Config(e.to_string()))?;
        let b = r.config.ok_or_else(|| {
            InitError::Config(format!(
                "the parent's boot service ({a}) serves no configuration for this enclave (its [boot] config)"
            ))
        })?;
        (
            b,
            format!("the parent's boot service ({a})"),
            Some(r.secrets),
        )
    };
    let config = Loaded::parse(bytes).map_err(|e| InitError::Config(e.to_string()))?;
    note(
        sink,
        format!("configuration from {source}, {}", config.digest()),
    )
    .await;
    // The sealed secrets come from the parent (never measured), only when the configuration
    // names some; the secrets and the KMS proxy ask KMS with the parent's credentials.
    let credentials: Option<Arc<dyn crate::kms::Credentials>> =
        (!config.config.secrets.is_empty() || config.config.kms_proxy.is_some()).then(|| {
            Arc::new(crate::relay::credentials::FromParent::new(at(
                crate::relay::CREDENTIALS_PORT,
            ))) as Arc<dyn crate::kms::Credentials>
        });
    let sealed = if config.config.secrets.is_empty() {
        None
    } else {
        let a = at(BOOT_PORT);
        let raw = match from_parent.take() {
            Some(raw) => raw,
            None => {
                crate::relay::bootcfg::fetch(&a, CONFIG_TIMEOUT)
                    .await
                    .map_err(|e| InitError::Config(format!("the secrets: {e}")))?
                    .secrets
            }
        };
        let sealed = raw
            .map(|b| crate::kms::sealed::SecretsFile::parse(&b))
            .transpose()
            .map_err(|e| InitError::Config(format!("the secrets from {a}: {e}")))?;
        if let Some(f) = &sealed {
            let names: Vec<&str> = f.secrets.iter().map(|s| s.name.as_str()).collect();
            note(sink, format!("secrets file from {a}: {}", names.join(", "))).await;
        }
        sealed
    };
    for dir in [NEW_ROOT, SPILL] {
        sys.tmpfs(Path::new(dir))?;
    }
    crate::launch::exec::ensure_stage(Path::new(STAGE))
        .map_err(|e| InitError::Other(e.to_string()))?;
    let cgroup = sys
        .workload_limits(config.config.workload.limits.as_ref())?
        .map(Arc::new);
    if let Some(c) = &cgroup {
        let s = c.settings();
        note(
            sink,
            format!(
                "helpers and workload limited ({}): memory {} MiB, swap {} MiB, {} processes, cpu weight {}",
                c.kind(),
                s.memory_max >> 20,
                s.swap_max >> 20,
                s.pids_max,
                s.cpu_weight
            ),
        )
        .await;
    }
    // Everything from the measured configuration, nothing from anywhere else.
    let mut plan = boot::plan::build(
        config,
        &boot::plan::Overrides::default(),
        boot::plan::Machine {
            egress_dialer: Arc::new(ConnectProxy {
                proxy: at(EGRESS_PORT),
            }),
            nsm,
            helpers_dir: HELPER_DIR.into(),
            stage: STAGE.into(),
            observer: Arc::new(crate::apply::Unobserved),
            sealed,
            credentials,
            decryption_key: None,
        },
    )
    .map_err(|e| InitError::Config(e.to_string()))?;
    plan.sandbox.cgroup = cgroup.clone();
    // A busy listen address fails the boot now, not after the whole fetch.
    crate::api::check_listen(&plan.attestation_listen)
        .await
        .map_err(boot::BootError::from)?;
    boot::check_listens(&plan.config.config).await?;
    note(sink, format!("fetching and verifying {}", plan.reference)).await;
    let mut prepared = boot::by_deadline(
        &plan,
        boot::prepare(&plan, Path::new(NEW_ROOT), Path::new(SPILL)),
    )
    .await?;
    // PCR16 was extended and locked before the layers were applied (boot::prepare).
    note(
        sink,
        format!("PCR16 extended and locked: {}", prepared.log.pcr16),
    )
    .await;
    note(
        sink,
        format!(
            "verified and applied {} ({} layers, {} bytes)",
            prepared.resolved.manifest_desc.digest(),
            prepared.report.layers.len(),
            prepared.report.uncompressed_bytes
        ),
    )
    .await;
    // PID 1 stays in the initramfs: each helper and the workload pivot into the image root
    // in a sandbox of their own (launch::sandbox).
    boot::serve_api(&plan, &mut prepared).await?;
    if let Some(addr) = boot::start_kms_proxy(&plan, &mut prepared).await? {
        note(sink, format!("KMS proxy listening on {addr}")).await;
    }
    boot::start_relays(&plan, &mut prepared).await?;
    let before = cgroup.as_ref().map(|c| c.counters()).unwrap_or_default();
    let cmd = boot::by_deadline(&plan, boot::prepare_launch(&plan, &mut prepared)).await?;
    let (code, reason) = supervise(cmd, sink).await?;
    // What the cgroup saw says why, where the exit status alone cannot.
    Ok(match cgroup.as_ref().and_then(|c| c.cause(before)) {
        Some(cause) => (code, format!("{cause}; {reason}")),
        None => (code, reason),
    })
}

/// Starts the workload, forwards signals to it, reaps every child, and returns when the
/// workload has exited.
async fn supervise(
    cmd: crate::launch::exec::Sandboxed,
    sink: &Option<(LogSender, tokio::task::JoinHandle<std::io::Result<()>>)>,
) -> Result<(i32, String), InitError> {
    // Spawned through std so that no other reaper competes with the one below.
    let mut child = cmd
        .spawn_std()
        .await
        .map_err(|e| InitError::Boot(e.into()))?;
    let pid = nix::unistd::Pid::from_raw(
        i32::try_from(child.id())
            .map_err(|_| InitError::Other(format!("pid {} out of range", child.id())))?,
    );
    note(sink, format!("workload started (pid {pid})")).await;
    let mut pumps = Vec::new();
    if let Some((s, _)) = sink {
        if let Some(out) = child
            .stdout
            .take()
            .and_then(|o| tokio::process::ChildStdout::from_std(o).ok())
        {
            let s = s.clone();
            pumps.push(tokio::spawn(async move { s.pump(out, Kind::Stdout).await }));
        }
        if let Some(err) = child
            .stderr
            .take()
            .and_then(|e| tokio::process::ChildStderr::from_std(e).ok())
        {
            let s = s.clone();
            pumps.push(tokio::spawn(async move { s.pump(err, Kind::Stderr).await }));
        }
    } else {
        // No log sink: the output goes to the console, copied by cidboot (the sandbox never
        // holds the console itself).
        for (fd, to_stderr) in [
            (child.stdout.take().map(std::os::fd::OwnedFd::from), false),
            (child.stderr.take().map(std::os::fd::OwnedFd::from), true),
        ] {
            if let Some(fd) = fd {
                if let Ok(mut r) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
                    pumps.push(tokio::spawn(async move {
                        if to_stderr {
                            tokio::io::copy(&mut r, &mut tokio::io::stderr()).await
                        } else {
                            tokio::io::copy(&mut r, &mut tokio::io::stdout()).await
                        }
                    }));
                }
            }
        }
    }
    // Signals: read from a signalfd and forwarded to the workload.
    std::thread::spawn(move || {
        let Ok(sfd) = nix::sys::signalfd::SignalFd::new(&forwarded_set()) else {
            return;
        };
        let signals = std::iter::from_fn(|| match sfd.read_signal() {
            Ok(Some(info)) => Some(info.ssi_signo),
            _ => None,
        });
        supervise::forward(&supervise::Real, pid, signals);
    });
    // Reaping: every child, the workload's end kept, orphans reaped until the power-off.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut real = supervise::Real;
        let _ = tx.send(supervise::reap_until(&mut real, pid));
        supervise::reap_forever(&mut real)
    });
    let _ = &child;
    let supervise::Ended { code, reason } = rx
        .await
        .map_err(|_| InitError::Other("the reaper stopped".into()))?;
    // A pump still held open (by a daemon the workload left, or by a sink that stopped
    // acknowledging) is stopped, so the final status is the last record and the sender can end.
    for mut p in pumps {
        if tokio::time::timeout(Duration::from_secs(10), &mut p)
            .await
            .is_err()
        {
            p.abort();
        }
    }
    Ok((code, reason))
}
