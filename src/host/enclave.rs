//! `[enclave]`: `cidboot host` launches the enclave, watches it, and applies a restart policy,
//! the way `enclaver run` does for its sleeve.
//!
//! A boot **failed** when the enclave's final status record reports anything but exit code 0
//! (a non-zero code, or none: a fatal error before or instead of the workload), or when the
//! enclave ended without sending a status at all, or could not be launched or watched.
//! `never` launches once; `on-failure` relaunches after a failed boot; `always` relaunches
//! after every boot. Relaunches wait `restart_backoff_secs`, doubled after each consecutive
//! relaunch up to `restart_backoff_max_secs`; a boot that ran for [`BACKOFF_RESET`] starts the
//! doubling again. `max_restarts` bounds the relaunches in all.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::launcher::{Launcher, NitroCli, Qemu};
use super::status::{self, StatusEvent, Watch};

/// Default first relaunch delay (`restart_backoff_secs`); docs/limits.md lists these defaults
/// and bounds of the `[enclave]` keys.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(1);
/// Default cap on the doubled relaunch delay (`restart_backoff_max_secs`).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Longest relaunch delay either backoff key may set.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Default interval between `describe-enclaves` calls (`poll_secs`).
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// Longest `poll_secs` accepted.
pub const MAX_POLL: Duration = Duration::from_secs(300);
/// Default time each `describe-enclaves` and `terminate-enclave` call gets
/// (`command_timeout_secs`).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time `run-enclave` gets, which returns only after the heartbeat (`run_timeout_secs`).
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest either timeout may be set to.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// A boot that ran this long resets the backoff to its first step.
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// After an enclave ended without a status, how long a status still in flight to the log
/// sink is waited for before the boot counts as "ended without a status".
pub const STATUS_GRACE: Duration = Duration::from_secs(5);
/// After its status, how long an enclave gets to power off before it is terminated.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(60);
/// Consecutive failed `describe-enclaves` calls after which the boot counts as failed and the
/// enclave is terminated.
pub const MAX_WATCH_ERRORS: u32 = 3;

/// What stops the enclave from being configured or supervised.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum EnclaveError {
    #[error("[enclave] {key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error("watching SIGTERM and SIGINT: {0}")]
    Signals(std::io::Error),
    /// What [`super::check::enclave`] found: the EIF, the launcher's programs and files.
    #[error("{}", .0.join("; "))]
    Files(Vec<String>),
}

/// `restart`: which ended boots are followed by a relaunch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Launch once.
    Never,
    /// Relaunch after a failed boot (the default).
    #[default]
    OnFailure,
    /// Relaunch after every boot, failed or not.
    Always,
}

/// `launcher`: what starts the enclave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum LauncherKind {
    /// `nitro-cli`, on a parent instance with Nitro Enclaves (the default).
    #[default]
    #[serde(rename = "nitro-cli")]
    NitroCli,
    /// QEMU's emulated `nitro-enclave` machine, configured in `[enclave.qemu]`.
    #[serde(rename = "qemu")]
    Qemu,
}

fn default_nitro_cli() -> PathBuf {
    PathBuf::from("nitro-cli")
}

/// The `[enclave]` section of host.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnclaveConfig {
    /// The enclave image file to boot.
    pub eif: PathBuf,
    /// The enclave's memory (at least 64); the image is unpacked into it, so leave room.
    pub memory_mib: u64,
    /// vCPUs given to the enclave (at least 1).
    pub cpu_count: u32,
    /// The enclave's vsock CID (at least 4; 0-3 are reserved).
    pub cid: u32,
    /// nitro-cli `--debug-mode`: the console is captured into the host log, and PCR0-2 read as
    /// zeros in attestation documents.
    #[serde(default)]
    pub debug_mode: bool,
    /// When a boot that ended is followed by a relaunch.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// First relaunch delay, doubled after each consecutive relaunch (default 1 s).
    pub restart_backoff_secs: Option<u64>,
    /// Cap on the doubled delay (default 60 s, at least `restart_backoff_secs`).
    pub restart_backoff_max_secs: Option<u64>,
    /// Relaunches in all before supervision stops; unset: no limit.
    pub max_restarts: Option<u32>,
    /// What starts the enclave.
    #[serde(default)]
    pub launcher: LauncherKind,
    /// The nitro-cli program (default: `nitro-cli` on PATH).
    #[serde(default = "default_nitro_cli")]
    pub nitro_cli: PathBuf,
    /// How often the running enclave is checked with `describe-enclaves` (default 5 s).
    pub poll_secs: Option<u64>,
    /// Time each `describe-enclaves` and `terminate-enclave` call gets (default 30 s).
    pub command_timeout_secs: Option<u64>,
    /// Time `run-enclave` gets, up to the enclave's heartbeat (default 300 s).
    pub run_timeout_secs: Option<u64>,
    /// The emulated machine, for `launcher = "qemu"` only.
    pub qemu: Option<QemuConfig>,
}

/// `[enclave.qemu]`: QEMU's `nitro-enclave` machine and its vhost-device-vsock backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// A qemu-system-x86_64 with the nitro-enclave machine (QEMU 9.2 or later).
    pub qemu: PathBuf,
    /// The `-L` directory with bios-microvm.bin and linuxboot_dma.bin.
    pub firmware: PathBuf,
    /// The vhost-device-vsock program that carries the enclave's vsock to Unix sockets.
    pub vhost_device_vsock: PathBuf,
    /// vhost-device-vsock's `--uds-path`: the enclave's connection to parent port P arrives on
    /// the Unix socket `{uds_path}_P`, so `[logs] listen = "unix:{uds_path}_8002"` and so on.
    pub uds_path: PathBuf,
    /// The vhost-user socket between QEMU and the backend; default `{uds_path}.vhost`.
    pub socket: Option<PathBuf>,
    /// Added to the EIF's kernel command line, unmeasured (e.g. `cidboot.parent_cid=2`).
    #[serde(default)]
    pub append: String,
    /// `-accel`; default `tcg`.
    pub accel: Option<String>,
}

fn secs(v: Option<u64>, d: Duration) -> Duration {
    v.map(Duration::from_secs).unwrap_or(d)
}

impl EnclaveConfig {
    /// The first relaunch delay.
    pub fn backoff(&self) -> Duration {
        secs(self.restart_backoff_secs, DEFAULT_BACKOFF)
    }
    /// The cap on the doubled relaunch delay, never below the first delay.
    pub fn backoff_max(&self) -> Duration {
        secs(
            self.restart_backoff_max_secs,
            DEFAULT_BACKOFF_MAX.max(self.backoff()),
        )
    }
    /// The interval between checks of the running enclave.
    pub fn poll(&self) -> Duration {
        secs(self.poll_secs, DEFAULT_POLL)
    }
    /// The time each `describe-enclaves` and `terminate-enclave` call gets.
    pub fn command_timeout(&self) -> Duration {
        secs(self.command_timeout_secs, DEFAULT_COMMAND_TIMEOUT)
    }
    /// The time `run-enclave` gets.
    pub fn run_timeout(&self) -> Duration {
        secs(self.run_timeout_secs, DEFAULT_RUN_TIMEOUT)
    }

    /// The checks that need no file system: the first problem.
    pub fn check(&self) -> Result<(), EnclaveError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The checks that need no file system: every problem, each naming its key.
    pub fn problems(&self) -> Vec<EnclaveError> {
        let mut out = Vec::new();
        let mut bad = |key, reason: &str| {
            out.push(EnclaveError::Config {
                key,
                reason: reason.to_string(),
            })
        };
        if self.memory_mib < 64 {
            bad("memory_mib", "at least 64 (MiB)");
        }
        if self.cpu_count == 0 {
            bad("cpu_count", "at least 1");
        }
        if self.cid < 4 || self.cid == u32::MAX {
            bad("cid", "4 to 4294967294 (0-3 are reserved, -1 is any)");
        }
        let b = self.backoff();
        if b.is_zero() || b > MAX_BACKOFF {
            bad("restart_backoff_secs", "1 to 3600");
        }
        let m = self.backoff_max();
        if m < b || m > MAX_BACKOFF {
            bad(
                "restart_backoff_max_secs",
                "at least restart_backoff_secs, at most 3600",
            );
        }
        if self.poll().is_zero() || self.poll() > MAX_POLL {
            bad("poll_secs", "1 to 300");
        }
        for (key, t) in [
            ("command_timeout_secs", self.command_timeout()),
            ("run_timeout_secs", self.run_timeout()),
        ] {
            if t.is_zero() || t > MAX_TIMEOUT {
                bad(key, "1 to 3600");
            }
        }
        match (self.launcher, &self.qemu) {
            (LauncherKind::Qemu, None) => bad("qemu", "launcher = \"qemu\" needs [enclave.qemu]"),
            (LauncherKind::NitroCli, Some(_)) => {
                bad("qemu", "[enclave.qemu] is only for launcher = \"qemu\"")
            }
            _ => {}
        }
        out
    }

    /// The delay before relaunch number `n` (0 for the first relaunch after a run of failures
    /// or successes): `restart_backoff_secs × 2^n`, at most `restart_backoff_max_secs`.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.min(31));
        self.backoff()
            .checked_mul(factor)
            .unwrap_or(MAX_BACKOFF)
            .min(self.backoff_max())
    }
}

/// How one boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The status reported exit code 0.
    Succeeded,
    /// It ran and ended otherwise; why, for the log.
    Failed(String),
    /// The launcher could not start it; why, for the log.
    NotStarted(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Succeeded => f.write_str("succeeded (exit code 0)"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            Outcome::NotStarted(why) => write!(f, "failed to start: {why}"),
        }
    }
}

/// The policy as host.toml spells it.
impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        })
    }
}

/// Why supervision ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The restart policy (or `max_restarts`) said not to relaunch; the last boot's outcome.
    Policy(Outcome),
    /// Shut down on request while an enclave ran: it was terminated.
    Terminated,
    /// Shut down on request while no enclave ran: during a launch (abandoned before the
    /// enclave started) or while waiting to relaunch after `last`.
    Stopped {
        /// A launch was under way.
        launching: bool,
        /// How the previous boot ended, if there was one.
        last: Option<Outcome>,
    },
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Policy(o) => write!(f, "the last boot {o}"),
            Ended::Terminated => f.write_str("the enclave was terminated"),
            Ended::Stopped {
                launching: true, ..
            } => f.write_str(
                "no enclave was running: its launch was abandoned before the enclave started",
            ),
            Ended::Stopped {
                launching: false,
                last: Some(o),
            } => write!(f, "no enclave was running: the last boot {o}"),
            Ended::Stopped {
                launching: false,
                last: None,
            } => f.write_str("no enclave was running"),
        }
    }
}

/// A configured launcher, checked and ready.
pub enum Supervisor {
    /// Launched with nitro-cli.
    NitroCli(EnclaveConfig, NitroCli),
    /// Launched as an emulated enclave under QEMU.
    Qemu(EnclaveConfig, Qemu),
}

impl Supervisor {
    /// Checks what needs the file system (the EIF is readable, the launcher's programs and
    /// files are there) and picks the launcher.
    pub fn new(c: &EnclaveConfig) -> Result<Supervisor, EnclaveError> {
        c.check()?;
        let problems = super::check::enclave(c);
        if !problems.is_empty() {
            return Err(EnclaveError::Files(problems));
        }
        Ok(match (&c.launcher, &c.qemu) {
            (LauncherKind::Qemu, Some(q)) => Supervisor::Qemu(
                c.clone(),
                Qemu {
                    qemu: q.qemu.clone(),
                    firmware: q.firmware.clone(),
                    vhost_device_vsock: q.vhost_device_vsock.clone(),
                    uds_path: q.uds_path.clone(),
                    socket: q.socket.clone().unwrap_or_else(|| {
                        let mut s = q.uds_path.clone().into_os_string();
                        s.push(".vhost");
                        PathBuf::from(s)
                    }),
                    append: q.append.clone(),
                    accel: q.accel.clone().unwrap_or_else(|| "tcg".into()),
                    eif: c.eif.clone(),
                    memory_mib: c.memory_mib,
                    cpu_count: c.cpu_count,
                    cid: c.cid,
                    debug_mode: c.debug_mode,
                },
            ),
            _ => Supervisor::NitroCli(c.clone(), NitroCli::from_config(c)),
        })
    }

    /// Supervises until the policy says stop or `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Ended {
        match self {
            Supervisor::NitroCli(c, l) => supervise(&c, &l, shutdown).await,
            Supervisor::Qemu(c, l) => supervise(&c, &l, shutdown).await,
        }
    }
}

enum Watched {
    Done(Outcome),
    Shutdown,
}

/// Watches one boot to its end.
async fn watch<L: Launcher>(
    c: &EnclaveConfig,
    l: &L,
    enclave: &mut L::Enclave,
    statuses: &mut Watch,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Watched {
    let id = L::id(enclave);
    statuses.set_pids(&L::peers(enclave));
    let mut status: Option<(StatusEvent, Instant)> = None;
    let mut errors = 0u32;
    let mut tick = tokio::time::interval(c.poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut *shutdown => return Watched::Shutdown,
            e = statuses.next(), if status.is_none() => {
                info!(enclave = %id, exit_code = ?e.exit_code, reason = %e.reason, "the enclave reported its status");
                status = Some((e, Instant::now()));
            }
            _ = tick.tick() => {
                match l.running(enclave).await {
                    Ok(true) => {
                        errors = 0;
                        if let Some((_, at)) = &status {
                            if at.elapsed() >= POWEROFF_GRACE {
                                warn!(enclave = %id, "still running {}s after its status; terminating it", POWEROFF_GRACE.as_secs());
                                break;
                            }
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        errors += 1;
                        warn!(enclave = %id, error = %e, errors, "cannot tell whether the enclave runs");
                        if errors >= MAX_WATCH_ERRORS {
                            return Watched::Done(Outcome::Failed(format!("watching it failed {errors} times in a row: {e}")));
                        }
                    }
                }
            }
        }
    }
    if status.is_none() {
        tokio::select! {
            () = &mut *shutdown => return Watched::Shutdown,
            e = statuses.next() => status = Some((e, Instant::now())),
            _ = tokio::time::sleep(STATUS_GRACE) => {}
        }
    }
    Watched::Done(match status {
        Some((e, _)) if e.exit_code == Some(0) => Outcome::Succeeded,
        Some((e, _)) => Outcome::Failed(match e.exit_code {
            Some(code) => format!("exit code {code}: {}", e.reason),
            None => format!("no exit code: {}", e.reason),
        }),
        None => Outcome::Failed("the enclave ended without a status".into()),
    })
}

async fn supervise<L: Launcher>(
    c: &EnclaveConfig,
    l: &L,
    shutdown: impl Future<Output = ()> + Send,
) -> Ended {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut restarts = 0u32;
    let mut step = 0u32;
    let mut last = None;
    loop {
        // A status published before this launch belongs to an earlier boot.
        let mut statuses = status::watch(c.cid);
        let started = Instant::now();
        info!(eif = %c.eif.display(), cid = c.cid, restarts, "launching the enclave");
        let launched = tokio::select! {
            () = &mut shutdown => return Ended::Stopped { launching: true, last },
            r = l.launch() => r,
        };
        let outcome = match launched {
            Ok(mut enclave) => {
                let id = L::id(&enclave);
                let w = watch(c, l, &mut enclave, &mut statuses, &mut shutdown).await;
                if let Err(e) = l.terminate(enclave).await {
                    warn!(enclave = %id, error = %e, "tearing the enclave down");
                }
                match w {
                    Watched::Shutdown => return Ended::Terminated,
                    Watched::Done(o) => {
                        info!(enclave = %id, outcome = %o, ran_secs = started.elapsed().as_secs(), "the enclave ended");
                        o
                    }
                }
            }
            Err(e) => {
                error!(error = %e, policy = %c.restart, "the enclave failed to start");
                Outcome::NotStarted(e.to_string())
            }
        };
        let again = match c.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => outcome != Outcome::Succeeded,
            RestartPolicy::Always => true,
        };
        if !again {
            info!(policy = %c.restart, outcome = %outcome, "not relaunching the enclave");
            return Ended::Policy(outcome);
        }
        if c.max_restarts.is_some_and(|m| restarts >= m) {
            warn!(
                restarts,
                outcome = %outcome,
                "max_restarts reached; not relaunching the enclave"
            );
            return Ended::Policy(outcome);
        }
        if started.elapsed() >= BACKOFF_RESET {
            step = 0;
        }
        let delay = c.delay(step);
        info!(delay_secs = delay.as_secs(), policy = %c.restart, "relaunching the enclave after a delay");
        last = Some(outcome);
        tokio::select! {
            () = &mut shutdown => return Ended::Stopped { launching: false, last },
            () = tokio::time::sleep(delay) => {}
        }
        step = step.saturating_add(1);
        restarts += 1;
        super::metrics::inc(&super::metrics::COUNTERS.restarts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<EnclaveConfig, String> {
        let text = format!("eif = \"/x.eif\"\nmemory_mib = 512\ncpu_count = 2\ncid = 16\n{extra}");
        let c: EnclaveConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.check().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let c = cfg("restart_backoff_secs = 2\nrestart_backoff_max_secs = 20").unwrap();
        let d: Vec<u64> = (0..8).map(|n| c.delay(n).as_secs()).collect();
        assert_eq!(d, [2, 4, 8, 16, 20, 20, 20, 20]);
        assert_eq!(c.delay(u32::MAX).as_secs(), 20);
        let c = cfg("").unwrap();
        assert_eq!((c.delay(0).as_secs(), c.delay(100).as_secs()), (1, 60));
        assert_eq!(c.restart, RestartPolicy::OnFailure);
        assert_eq!(c.launcher, LauncherKind::NitroCli);
    }

    #[test]
    fn out_of_bounds_values_are_refused_by_name() {
        for (extra, key) in [
            ("restart_backoff_secs = 0", "restart_backoff_secs"),
            (
                "restart_backoff_secs = 10\nrestart_backoff_max_secs = 5",
                "restart_backoff_max_secs",
            ),
            (
                "restart_backoff_max_secs = 7200",
                "restart_backoff_max_secs",
            ),
            ("poll_secs = 0", "poll_secs"),
            ("command_timeout_secs = 0", "command_timeout_secs"),
            ("run_timeout_secs = 99999", "run_timeout_secs"),
            ("launcher = \"qemu\"", "qemu"),
            ("restart = \"sometimes\"", "restart"),
            ("launcher = \"firecracker\"", "launcher"),
        ] {
            let e = cfg(extra).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let text = "eif = \"/x.eif\"\nmemory_mib = 512\ncpu_count = 2\ncid = 3\n";
        let c: EnclaveConfig = toml::from_str(text).unwrap();
        assert!(c.check().unwrap_err().to_string().contains("cid"));
    }

    #[test]
    fn nitro_cli_gets_the_documented_command_line() {
        let c = cfg("debug_mode = true").unwrap();
        assert_eq!(
            NitroCli::from_config(&c).run_args().join(" "),
            "run-enclave --eif-path /x.eif --memory 512 --cpu-count 2 --enclave-cid 16 --debug-mode"
        );
    }

    #[test]
    fn qemu_gets_the_emulated_machine() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let c = cfg(&format!("launcher = \"qemu\"\n[qemu]\nqemu = \"/bin/true\"\nfirmware = \"{d}\"\nvhost_device_vsock = \"/bin/true\"\nuds_path = \"{d}/vsock\"\nappend = \"cidboot.parent_cid=2\"")).unwrap();
        for f in crate::host::check::QEMU_FIRMWARE {
            std::fs::write(dir.path().join(f), b"fw").unwrap();
        }
        let eif = dir.path().join("x.eif");
        std::fs::write(&eif, b"eif").unwrap();
        let c = EnclaveConfig {
            eif: eif.clone(),
            ..c
        };
        let Ok(Supervisor::Qemu(_, q)) = Supervisor::new(&c) else {
            panic!("not a QEMU launcher")
        };
        assert_eq!(
            q.backend_args().join(" "),
            format!("--guest-cid=16 --socket={d}/vsock.vhost --uds-path={d}/vsock")
        );
        let a = q.qemu_args().join(" ");
        assert!(a.contains(&format!("-kernel {}", eif.display())), "{a}");
        assert!(a.contains("-M nitro-enclave,vsock=c0,"), "{a}");
        assert!(a.contains("-append cidboot.parent_cid=2 "), "{a}");
        assert!(a.contains("-m 512M -smp 2 -accel tcg -no-reboot"), "{a}");
        assert!(
            a.ends_with(&format!("-chardev socket,id=c0,path={d}/vsock.vhost")),
            "{a}"
        );
        let missing = EnclaveConfig {
            eif: dir.path().join("none.eif"),
            ..c
        };
        assert!(matches!(
            Supervisor::new(&missing),
            Err(EnclaveError::Files(_))
        ));
    }
}
