//! cidboot as PID 1 in an enclave.
//!
//! It never exits and never panics: every fatal error is logged to the console, reported to
//! the parent as the final status, and followed by a power-off.

pub mod system;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{error, info, warn};

use crate::apply::ApplyLimits;
use crate::boot::{self, Plan};
use crate::config::Loaded;
use crate::fetch::{GatewayPolicy, Gateways};
use crate::host::{BOOT_PORT, EGRESS_PORT, HEARTBEAT, HEARTBEAT_PORT, LOGS_PORT};
use crate::launch::exec::Sandbox;
use crate::nsm::device::DeviceNsm;
use crate::nsm::Nsm;
use crate::oci::Limits;
use crate::reference::ImageRef;
use crate::relay::logs::{Kind, LogSender};
use crate::transport::addr::{parent_cid, Addr};
use crate::transport::connect::ConnectProxy;
use crate::transport::http::{HttpClient, Timeouts};

/// A configuration baked into the initramfs wins over the parent's boot service.
pub const BAKED_CONFIG: &str = "/etc/cidboot/config.toml";
pub const HELPER_DIR: &str = "/eigen/bin";
pub const NEW_ROOT: &str = "/mnt/root";
pub const SPILL: &str = "/run/cidboot/spill";
/// Where each sandbox stages its root (in its own mount namespace; empty in PID 1's view).
pub const STAGE: &str = "/run/cidboot/stage";
pub const HOSTNAME: &str = "cidboot-enclave";
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(60);
pub const CONFIG_TIMEOUT: Duration = Duration::from_secs(60);
/// Signals forwarded to the workload.
const FORWARDED: &[nix::sys::signal::Signal] = &[
    nix::sys::signal::Signal::SIGTERM,
    nix::sys::signal::Signal::SIGINT,
    nix::sys::signal::Signal::SIGHUP,
    nix::sys::signal::Signal::SIGQUIT,
];

#[derive(Debug, thiserror::Error)]
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
        eprintln!("cidboot: internal error (panic): {info}; powering off");
        system::power_off();
    }));
    // Blocked before any thread exists, so every thread inherits the mask and the signals
    // arrive only through the signalfd. Children get an empty mask back (launch::exec).
    let _ = forwarded_set().thread_block();
    if let Err(e) = system::mount_basics().and_then(|()| system::console()) {
        eprintln!("cidboot: fatal: {e}; powering off");
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
            eprintln!("cidboot: fatal: async runtime: {e}; powering off");
            system::power_off();
        }
    };
    rt.block_on(async {
        let mut sink: Option<(LogSender, tokio::task::JoinHandle<std::io::Result<()>>)> = None;
        let result = boot(&mut sink).await;
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
            let _ = sender
                .send(Kind::Status, status.to_string().into_bytes())
                .await;
            drop(sender);
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        eprintln!("cidboot: status {status}; powering off");
    });
    system::power_off();
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
    sink: &mut Option<(LogSender, tokio::task::JoinHandle<std::io::Result<()>>)>,
) -> Result<(i32, String), InitError> {
    let modules = system::load_modules()?;
    system::loopback_up()?;
    system::hostname(HOSTNAME)?;
    let nsm: Arc<dyn Nsm> = Arc::new(DeviceNsm::open()?);
    let seed = nsm.get_random()?;
    system::add_entropy(&seed)?;
    let parent = parent_cid();
    let at = |port: u32| Addr::Vsock { cid: parent, port };
    heartbeat(&at(HEARTBEAT_PORT)).await?;
    match LogSender::connect(&at(LOGS_PORT), Duration::from_secs(10)).await {
        Ok(s) => *sink = Some(s),
        Err(e) => warn!(
            "no log sink at {}: {e}; logging to the console only",
            at(LOGS_PORT)
        ),
    }
    note(sink, format!("cidboot {} as PID 1: modules {modules:?}, {} bytes of NSM entropy, heartbeat answered by CID {parent}", env!("CARGO_PKG_VERSION"), seed.len())).await;

    let (bytes, source) = if Path::new(BAKED_CONFIG).exists() {
        let b = std::fs::read(BAKED_CONFIG)
            .map_err(|e| InitError::Config(format!("{BAKED_CONFIG}: {e}")))?;
        (b, BAKED_CONFIG.to_string())
    } else {
        let a = at(BOOT_PORT);
        let b = crate::relay::bootcfg::fetch(&a, CONFIG_TIMEOUT)
            .await
            .map_err(|e| InitError::Config(e.to_string()))?;
        (b, format!("the parent's boot service ({a})"))
    };
    let config = Loaded::parse(bytes).map_err(|e| InitError::Config(e.to_string()))?;
    let deadline = boot::deadline_for(&config);
    note(
        sink,
        format!("configuration from {source}, {}", config.digest()),
    )
    .await;
    let image = config
        .config
        .image
        .clone()
        .ok_or_else(|| InitError::Config("no `image` in the configuration".into()))?;
    let reference = ImageRef::parse(&image).map_err(|e| InitError::Config(e.to_string()))?;
    let select = config
        .config
        .platform
        .as_deref()
        .unwrap_or("linux/amd64")
        .parse()
        .and_then(|p| {
            crate::oci::Selector::new(p, config.config.tag.clone(), config.config.digest.clone())
        })
        .map_err(|e: crate::oci::OciError| InitError::Config(e.to_string()))?;

    let egress: Arc<dyn crate::transport::Connector> = Arc::new(ConnectProxy {
        proxy: at(EGRESS_PORT),
    });
    let ca = match &config.config.tls.extra_ca {
        Some(pem) => {
            std::fs::create_dir_all("/run/cidboot").map_err(|e| InitError::Other(e.to_string()))?;
            std::fs::write("/run/cidboot/extra-ca.pem", pem)
                .map_err(|e| InitError::Other(e.to_string()))?;
            Some(std::path::PathBuf::from("/run/cidboot/extra-ca.pem"))
        }
        None => None,
    };
    let tls = crate::transport::tls::client_config(ca.as_deref())
        .map_err(|e| InitError::Config(e.to_string()))?;
    let mut urls: Vec<String> = reference.gateway.iter().cloned().collect();
    urls.extend(config.config.gateways.iter().cloned());
    let gateways = Gateways::new(
        HttpClient::new(egress.clone(), tls, Timeouts::default()),
        &urls,
        GatewayPolicy {
            parallel: config.config.fetch.policy(),
            ..GatewayPolicy::default()
        },
    )
    .map_err(|e| InitError::Config(e.to_string()))?;

    for dir in [NEW_ROOT, SPILL] {
        std::fs::create_dir_all(dir).map_err(|e| InitError::Other(format!("{dir}: {e}")))?;
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID,
            Some("mode=0755"),
        )
        .map_err(|e| InitError::Other(format!("tmpfs on {dir}: {e}")))?;
    }
    crate::launch::exec::ensure_stage(Path::new(STAGE))
        .map_err(|e| InitError::Other(e.to_string()))?;
    let config_policy = config.config.workload.policy();
    let attestation_listen = config
        .config
        .attestation
        .listen
        .clone()
        .unwrap_or_else(|| crate::api::DEFAULT_LISTEN.to_string());
    let plan = Plan {
        reference,
        config,
        select,
        gateways,
        helpers_dir: HELPER_DIR.into(),
        sandbox: Sandbox {
            stage: STAGE.into(),
            policy: config_policy,
        },
        limits: Limits::default(),
        apply_limits: ApplyLimits::default(),
        nsm,
        attestation_listen,
        egress_dialer: egress,
        deadline,
    };
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
    boot::measure(&plan, &prepared)?;
    note(
        sink,
        format!("PCR16 extended and locked: {}", prepared.log.pcr16),
    )
    .await;
    // PID 1 stays in the initramfs: each helper and the workload pivot into the image root
    // in a sandbox of their own (launch::sandbox).
    boot::serve_api(&plan, &mut prepared).await?;
    boot::start_relays(&plan, &mut prepared).await?;
    let cmd = boot::by_deadline(&plan, boot::prepare_launch(&plan, &mut prepared)).await?;
    supervise(cmd, sink).await
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
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
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
        while let Ok(Some(info)) = sfd.read_signal() {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(info.ssi_signo as i32) {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
    });
    // Reaping: every child, the workload's status kept.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        loop {
            match nix::sys::wait::waitpid(None, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(p, code)) if p == pid => {
                    if let Some(t) = tx.take() {
                        let _ = t.send((code, format!("the workload exited with status {code}")));
                    }
                }
                Ok(nix::sys::wait::WaitStatus::Signaled(p, sig, _)) if p == pid => {
                    if let Some(t) = tx.take() {
                        let _ = t.send((
                            128 + sig as i32,
                            format!("the workload was killed by {sig}"),
                        ));
                    }
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let _ = &child;
    let (code, reason) = rx
        .await
        .map_err(|_| InitError::Other("the reaper stopped".into()))?;
    for p in pumps {
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
    }
    let _ = std::process::ExitStatus::from_raw(0);
    Ok((code, reason))
}
