//! `cidboot host`: the daemon on the parent instance. It runs the egress proxy, the boot
//! configuration service, the log and status sink, ingress forwarders and, for emulated
//! enclaves, the heartbeat responder, and `/metrics`.
//!
//! Everything is checked before anything listens ([`load`], also `cidboot host --check`);
//! SIGTERM lets the log sink write and acknowledge what it has read before the daemon exits;
//! SIGHUP reopens the log file and re-reads the boot configurations.

pub mod imds;
pub mod metrics;

use std::collections::BTreeMap;
pub mod cache;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Loaded;
use crate::reference::ImageRef;
use crate::relay::allow::Allowlist;
use crate::relay::bootcfg::{BootConfigs, Part, Served};
use crate::relay::forward::{self, ForwardLimits};
use crate::relay::logs::{Sink, SinkConfig};
use crate::relay::proxy::{Proxy, ProxyLimits};
use crate::relay::{bootcfg, logs};
use crate::transport::addr::{Addr, Listener, SocketPerms};

pub mod check;
pub mod enclave;
pub mod launcher;
pub mod status;

/// The ports and the heartbeat byte are the enclave-parent contract, in [`crate::relay`].
pub use crate::relay::{
    BOOT_PORT, CREDENTIALS_PORT, EGRESS_PORT, HEARTBEAT, HEARTBEAT_PORT, LOGS_PORT,
};
/// Descriptors kept out of the egress tunnels' share of RLIMIT_NOFILE.
pub const FD_MARGIN: u64 = 64;

/// What stops the daemon from being configured or from running.
#[allow(missing_docs)] // each variant's #[error] message is its documentation
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("host configuration {path}: {reason}")]
    Config { path: String, reason: String },
    /// Every problem a check found, one per line when there are several.
    #[error("host configuration {path}: {}", problem_list(.problems))]
    Problems { path: String, problems: Vec<String> },
    #[error("{service}: binding {addr}: {source}")]
    Bind {
        service: &'static str,
        addr: String,
        source: std::io::Error,
    },
    /// A signal the daemon acts on (SIGTERM, SIGINT, SIGHUP) could not be watched.
    #[error("{service}: {reason}")]
    Signal {
        service: &'static str,
        reason: String,
    },
    #[error("{service} stopped: {reason}")]
    Stopped {
        service: &'static str,
        reason: String,
    },
}

fn problem_list(problems: &[String]) -> String {
    match problems {
        [one] => one.clone(),
        many => {
            let mut s = format!("{} problems:", many.len());
            for p in many {
                s.push_str("\n  - ");
                s.push_str(p);
            }
            s
        }
    }
}

/// An error for `problems` (one is reported as it is, several as a list).
fn problems_error(path: &str, problems: Vec<String>) -> HostError {
    HostError::Problems {
        path: path.to_string(),
        problems,
    }
}

/// host.toml. Each section is optional and checked on its own in [`parse`] and [`load`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The egress proxy the enclave's outbound connections go through.
    pub egress: Option<Egress>,
    /// Serves the enclave its runtime configuration and its sealed secrets.
    pub boot: Option<Boot>,
    /// Serves the enclave AWS credentials for its KMS calls.
    pub credentials: Option<HostCredentials>,
    /// Receives the enclave's log records and final status.
    pub logs: Option<Logs>,
    /// Forwarders from the parent into the enclave, one per listener.
    #[serde(default)]
    pub ingress: Vec<Ingress>,
    /// Answers an emulated enclave's boot heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// The Prometheus endpoint for the daemon's counters.
    pub metrics: Option<Metrics>,
    /// Launch and supervise the enclave (see docs/launching.md).
    #[serde(default)]
    pub enclave: Option<enclave::EnclaveConfig>,
    /// A verified block cache served to the enclave as a trustless gateway (see cache.rs).
    pub cache: Option<cache::CacheConfig>,
    /// Who may connect to the daemon's Unix sockets (default: only its own user).
    pub sockets: Option<Sockets>,
}

/// `[sockets]`: the mode and group of every Unix socket the daemon listens on. Unset, a
/// socket is `0600`: only the daemon's user can connect.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sockets {
    /// Permission bits, `0o600` to `0o777` (TOML takes `0o660`).
    pub mode: Option<u32>,
    /// A group (a name in /etc/group, or a number) to give each socket, so that
    /// `mode = 0o660` admits its members.
    pub group: Option<String>,
}

impl Sockets {
    /// The mode, checked without the file system.
    fn mode(&self) -> Result<u32, String> {
        let mode = self.mode.unwrap_or(SocketPerms::default().mode);
        if mode & !0o777 != 0 || mode & 0o600 != 0o600 {
            return Err(format!(
                "sockets.mode {mode:#o}: use 0o600 to 0o777 (the daemon's user keeps read and write)"
            ));
        }
        Ok(mode)
    }

    /// The mode and the group (looked up by name unless it is a number).
    pub fn perms(&self) -> Result<SocketPerms, String> {
        let mode = self.mode()?;
        let group = match self.group.as_deref() {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_id(g, Path::new("/etc/group"))
                    .map_err(|e| format!("sockets.group {g:?}: {e}"))?,
            }),
        };
        Ok(SocketPerms { mode, group })
    }
}

/// A group's id from the group file (`name:password:gid:members` lines). Read directly: the
/// static binary cannot rely on the C library's name service, and the parent's groups that
/// matter here are local ones.
fn group_id(name: &str, file: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 3 && f[0] == name)
        .map(|f| {
            f[2].parse::<u32>()
                .map_err(|_| format!("{}: its gid is not a number", file.display()))
        })
        .unwrap_or_else(|| Err(format!("no such group in {}", file.display())))
}

/// The mode and group of the daemon's Unix sockets, from `[sockets]`, set before anything
/// binds.
static SOCKET_PERMS: RwLock<SocketPerms> = RwLock::new(SocketPerms {
    mode: 0o600,
    group: None,
});

/// `[egress]`: the HTTP CONNECT proxy that is the enclave's only way out; unset limits take
/// [`ProxyLimits::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// Where the proxy listens; cidboot as PID 1 dials parent port [`EGRESS_PORT`].
    pub listen: Addr,
    /// `host:port` patterns; everything else is denied.
    pub allow: Vec<String>,
    /// Tunnels open at once; more get 503 (default 512, also bounded by RLIMIT_NOFILE).
    pub max_connections: Option<usize>,
    /// Longest CONNECT request line plus headers (default 8 KiB).
    pub max_head_bytes: Option<usize>,
    /// Time a client gets to send its whole request head (default 10 s).
    pub head_timeout_secs: Option<u64>,
    /// Time allowed to connect to the destination (default 10 s).
    pub connect_timeout_secs: Option<u64>,
    /// A tunnel with no bytes either way for this long is closed (default 120 s).
    pub idle_timeout_secs: Option<u64>,
    /// A tunnel is closed this long after it opened, busy or not (default 1 h).
    pub max_lifetime_secs: Option<u64>,
    /// Let an allowed name that resolves to a loopback, private, link-local (the instance
    /// metadata service) or unique-local address be connected to. Off: an enclave's egress
    /// must not be steered into the parent's own network by a name's DNS.
    #[serde(default)]
    pub allow_private_destinations: bool,
}

/// `[boot]`: the service the enclave asks for its runtime configuration (and its sealed
/// secrets) at boot.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Where the service listens; cidboot as PID 1 asks parent port [`BOOT_PORT`].
    pub listen: Addr,
    /// The enclave's runtime configuration (TOML), served byte for byte to every enclave
    /// that `enclaves` does not name.
    pub config: Option<PathBuf>,
    /// The secrets file (what `cidboot seal` prints) served with it: not measured.
    pub secrets: Option<PathBuf>,
    /// Per enclave: its vsock CID (as given to `nitro-cli run-enclave --enclave-cid`) to its
    /// configuration, or to `{ config = PATH, secrets = PATH }`.
    #[serde(default)]
    pub enclaves: BTreeMap<String, EnclaveBoot>,
}

/// What `[boot.enclaves]` gives one enclave: `CID = "PATH"` (a configuration alone) or
/// `CID = { config = "PATH", secrets = "PATH" }`.
#[derive(Debug, Default)]
pub struct EnclaveBoot {
    /// Its runtime configuration.
    pub config: Option<PathBuf>,
    /// Its secrets file.
    pub secrets: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnclaveBootTable {
    config: Option<PathBuf>,
    secrets: Option<PathBuf>,
}

impl<'de> Deserialize<'de> for EnclaveBoot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EnclaveBoot;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a configuration's path, or { config = PATH, secrets = PATH }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnclaveBoot, E> {
                Ok(EnclaveBoot {
                    config: Some(PathBuf::from(v)),
                    secrets: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<EnclaveBoot, A::Error> {
                let t =
                    EnclaveBootTable::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(EnclaveBoot {
                    config: t.config,
                    secrets: t.secrets,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `[credentials]`: AWS credentials for the enclave's KMS calls (they authorize the calls;
/// the key policy's attestation conditions release the secrets).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCredentials {
    /// Where the service listens; cidboot as PID 1 asks parent port [`CREDENTIALS_PORT`].
    pub listen: Addr,
    /// `imds`: the instance role's, from the instance metadata service (IMDSv2);
    /// `environment`: this daemon's own AWS environment variables and profile (development).
    pub source: CredentialSource,
    /// The instance metadata service (default `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
}

/// Where `[credentials]` takes what it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialSource {
    /// The instance role, from IMDSv2.
    Imds,
    /// The daemon's AWS environment variables and profile.
    Environment,
}

impl HostCredentials {
    /// The source, checked: the service's address, or credentials present now.
    pub fn source(&self) -> Result<Arc<dyn crate::relay::credentials::Source>, String> {
        match self.source {
            CredentialSource::Imds => Ok(Arc::new(imds::Imds::new(
                self.imds_endpoint
                    .as_deref()
                    .unwrap_or(imds::DEFAULT_ENDPOINT),
            )?)),
            CredentialSource::Environment => {
                if self.imds_endpoint.is_some() {
                    return Err("credentials.imds_endpoint is for source = \"imds\"".into());
                }
                let env = crate::kms::credentials::Environment::process();
                crate::kms::credentials::from_environment(&env)
                    .map_err(|e| format!("credentials (source = \"environment\"): {e}"))?;
                Ok(Arc::new(crate::relay::credentials::HostEnvironment))
            }
        }
    }
}

/// `[logs]`: the sink for the enclave's log records and final status.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    /// Where the sink listens; cidboot as PID 1 sends to parent port [`LOGS_PORT`].
    pub listen: Addr,
    /// Also append every record here.
    pub file: Option<PathBuf>,
    /// Where the last record written per boot is kept, for exactly-once delivery across
    /// restarts (default: `.NAME.state` beside `file`).
    pub state: Option<PathBuf>,
    /// After its hello, a connection that sends nothing (a sender sends a keepalive every
    /// 5 s) for this long is closed (default 60 s, 15 s to 3600 s).
    pub idle_timeout_secs: Option<u64>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// A loopback `HOST:PORT` for the Prometheus `/metrics` endpoint.
    pub listen: String,
}

/// `[[ingress]]`: one way in, from a listener on the parent to a port the enclave listens on.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// Where clients connect on the parent, usually `tcp:HOST:PORT`.
    pub listen: Addr,
    /// The enclave's listener each connection is forwarded to, usually `vsock:CID:PORT`.
    pub target: Addr,
}

/// `[heartbeat]`: the responder an emulated enclave needs in place of Nitro's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Where the heartbeat arrives, and is echoed back.
    pub listen: Addr,
}

impl Egress {
    /// The proxy's limits: the configured ones, and the defaults for the rest.
    pub fn limits(&self) -> ProxyLimits {
        let d = ProxyLimits::default();
        let secs = |v: Option<u64>, d: Duration| v.map(Duration::from_secs).unwrap_or(d);
        ProxyLimits {
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            max_head: self.max_head_bytes.unwrap_or(d.max_head),
            head_timeout: secs(self.head_timeout_secs, d.head_timeout),
            connect_timeout: secs(self.connect_timeout_secs, d.connect_timeout),
            idle_timeout: secs(self.idle_timeout_secs, d.idle_timeout),
            max_lifetime: secs(self.max_lifetime_secs, d.max_lifetime),
        }
    }
}

/// A host configuration that passed every check, with the boot configurations it serves.
#[derive(Debug)]
pub struct Checked {
    /// The file it was read from, re-read for the boot configurations on SIGHUP.
    pub path: PathBuf,
    /// The configuration itself.
    pub cfg: HostConfig,
    /// The checked boot configurations `[boot]` serves, if it is set.
    pub boot: Option<BootConfigs>,
}

/// Reads and checks a host configuration completely: its own keys, each boot configuration
/// (with the enclave's parser and the checks the enclave makes before fetching), that the log
/// file and state file can be written, that every listen address can be listened on, and the
/// enclave's EIF and launcher programs. Nothing is created or bound. Every problem found is
/// reported, not only the first.
pub fn load(path: &Path) -> Result<Checked, HostError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| HostError::Read {
        path: origin.clone(),
        source,
    })?;
    let cfg = deserialize(&text, &origin)?;
    let mut problems = text_problems(&cfg);
    let boot = match &cfg.boot {
        Some(b) => match load_boot_configs_all(b) {
            Ok(c) => Some(c),
            Err(e) => {
                problems.extend(e);
                None
            }
        },
        None => None,
    };
    if let Some(l) = &cfg.logs {
        if let Some(f) = &l.file {
            if let Err(e) = check_writable(f) {
                problems.push(format!("logs.file {}: {e}", f.display()));
            }
        }
        let sc = sink_config(l, false);
        if let Some(st) = sc.state_path() {
            if let Err(e) = check_writable(&st) {
                problems.push(format!("logs.state {}: {e}", st.display()));
            }
        }
    }
    if let Some(s) = &cfg.sockets {
        if let (Ok(_), Err(e)) = (s.mode(), s.perms()) {
            problems.push(e);
        }
    }
    problems.extend(check::listeners(&cfg));
    // The cache's directory: usable, and its own (it removes files there); its CA file.
    if let Some(c) = &cfg.cache {
        if c.check().is_ok() {
            problems.extend(c.file_problems());
        }
    }
    if let Some(c) = &cfg.credentials {
        if let Err(e) = c.source() {
            if !problems.contains(&e) {
                problems.push(e);
            }
        }
    }
    // The enclave's EIF and launcher, as a start needs them.
    if let Some(e) = &cfg.enclave {
        problems.extend(check::enclave(e));
    }
    if !problems.is_empty() {
        return Err(problems_error(&origin, problems));
    }
    Ok(Checked {
        path: path.to_path_buf(),
        cfg,
        boot,
    })
}

fn sink_config(l: &Logs, json: bool) -> SinkConfig {
    SinkConfig {
        file: l.file.clone(),
        state: l.state.clone(),
        json,
        idle_timeout: l.idle_timeout_secs.map(Duration::from_secs),
    }
}

/// Whether a file can be appended to (or created) without creating it now, in a directory no
/// other user can change the way to: one who could would plant a symlink where the daemon
/// writes (the file, or the state file's temporary copy) and have it overwrite what that
/// names.
fn check_writable(p: &Path) -> Result<(), String> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Some(why) = crate::scratch::others_can_change(parent) {
        return Err(format!(
            "{why}: another user could put a symlink where the daemon writes; use a directory only root and the daemon's user can change"
        ));
    }
    match std::fs::metadata(p) {
        Ok(m) if !m.is_file() => return Err("not a regular file".into()),
        Ok(_) => {
            return std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .map(drop)
                .map_err(|e| e.to_string())
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.to_string()),
        Err(_) => {}
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK)
            .map_err(|e| format!("its directory {} is not writable: {e}", dir.display())),
        Ok(_) => Err(format!("{} is not a directory", dir.display())),
        Err(e) => Err(format!("its directory {}: {e}", dir.display())),
    }
}

/// Reads and checks every boot configuration and secrets file `[boot]` names; errors name the
/// key and file (the first problem; [`load`] reports them all).
pub fn load_boot_configs(b: &Boot) -> Result<BootConfigs, String> {
    load_boot_configs_all(b).map_err(|e| e.join("; "))
}

/// Every boot configuration and secrets file `[boot]` names, or every problem with them.
fn load_boot_configs_all(b: &Boot) -> Result<BootConfigs, Vec<String>> {
    let mut out = BootConfigs::default();
    let mut problems = Vec::new();
    if b.config.is_some() || b.secrets.is_some() {
        match load_served(b.config.as_deref(), b.secrets.as_deref(), "boot") {
            Ok(s) => out.default = Some(s),
            Err(e) => problems.push(e),
        }
    }
    for (key, e) in &b.enclaves {
        let Ok(cid) = key.parse::<u32>() else {
            problems.push(format!("boot.enclaves.{key}: the key is an enclave CID (a number, as given to nitro-cli run-enclave --enclave-cid)"));
            continue;
        };
        let at = format!("boot.enclaves.{key}");
        if e.config.is_none() && e.secrets.is_none() {
            problems.push(format!("{at}: give config = PATH and/or secrets = PATH"));
            continue;
        }
        match load_served(e.config.as_deref(), e.secrets.as_deref(), &at) {
            Ok(s) => {
                out.by_cid.insert(cid, s);
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() && out.default.is_none() && out.by_cid.is_empty() {
        problems.push("[boot] needs config = FILE, or [boot.enclaves] CID = FILE".into());
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// One enclave's configuration and secrets file, each checked as the enclave would check it,
/// and every secret the configuration names present in the file (the boot would stop
/// otherwise). `at` is the key that names them (`boot`, `boot.enclaves.16`).
fn load_served(config: Option<&Path>, secrets: Option<&Path>, at: &str) -> Result<Served, String> {
    let (config, loaded) = match config {
        Some(p) => {
            let (part, loaded) =
                check_enclave_config(p).map_err(|e| format!("{at}.config: {e}"))?;
            (Some(part), Some(loaded))
        }
        None => (None, None),
    };
    let (secrets, file) = match secrets {
        Some(p) => {
            let (bytes, file) = crate::kms::sealed::SecretsFile::load(p).map_err(|e| match e {
                crate::kms::sealed::SealedError::Read { .. } => format!("{at}.secrets: {e}"),
                e => format!("{at}.secrets: {}: {e}", p.display()),
            })?;
            (Some(Part::new(p.to_path_buf(), bytes)), Some(file))
        }
        None => (None, None),
    };
    if let Some(l) = &loaded {
        crate::secrets::check_present(&l.config.secrets, file.as_ref()).map_err(|e| {
            let cfg = config
                .as_ref()
                .map(|c| c.path.display().to_string())
                .unwrap_or_default();
            format!("{at}: {cfg}: {e}")
        })?;
    }
    Ok(Served { config, secrets })
}

/// Reads an enclave configuration and refuses what the enclave would refuse at boot: a file
/// its parser rejects, no `image`, or an image reference that does not parse (such as a
/// placeholder CID).
pub fn check_enclave_config(p: &Path) -> Result<(Part, Loaded), String> {
    let loaded = Loaded::load(p).map_err(|e| {
        let e = e.to_string();
        let name = p.display().to_string();
        if e.contains(&name) {
            e
        } else {
            format!("{name}: {e}")
        }
    })?;
    let image = loaded.config.image.as_deref().ok_or_else(|| {
        format!(
            "{}: no `image`; the enclave would have nothing to boot",
            p.display()
        )
    })?;
    if image.contains('<') || image.contains("...") || image.contains('…') {
        return Err(format!(
            "{}: image {image:?} is a placeholder; put the image's CID there",
            p.display()
        ));
    }
    ImageRef::parse(image).map_err(|e| format!("{}: image: {e}", p.display()))?;
    if loaded.config.workload.allow_vsock {
        warn!(
            config = %p.display(),
            "workload.allow_vsock: this enclave's workload can reach the log sink, where its records and status cannot be told from PID 1's"
        );
    }
    Ok((Part::new(p.to_path_buf(), loaded.bytes.clone()), loaded))
}

/// Parses and checks the text of a host configuration (`origin` names it in errors):
/// everything [`load`] checks except the files it names.
pub fn parse(text: &str, origin: &str) -> Result<HostConfig, HostError> {
    let cfg = deserialize(text, origin)?;
    let problems = text_problems(&cfg);
    if !problems.is_empty() {
        return Err(problems_error(origin, problems));
    }
    Ok(cfg)
}

/// The TOML itself: its syntax, its keys and their types (the first error).
fn deserialize(text: &str, origin: &str) -> Result<HostConfig, HostError> {
    toml::from_str(text).map_err(|e| HostError::Config {
        path: origin.to_string(),
        reason: e.to_string(),
    })
}

/// Every problem that the text alone shows.
fn text_problems(cfg: &HostConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if cfg.egress.is_none()
        && cfg.boot.is_none()
        && cfg.credentials.is_none()
        && cfg.logs.is_none()
        && cfg.ingress.is_empty()
        && cfg.heartbeat.is_none()
        && cfg.enclave.is_none()
        && cfg.cache.is_none()
    {
        problems.push(
            "no service configured ([egress], [boot], [credentials], [logs], [[ingress]], [heartbeat], [cache] or [enclave])".into(),
        );
    }
    if let Some(c) = &cfg.cache {
        if let Err(e) = c.check() {
            problems.push(e.to_string());
        }
    }
    if let Some(e) = &cfg.egress {
        if let Err(e) = Allowlist::new(&e.allow) {
            problems.push(format!("egress.allow: {e}"));
        }
        if e.limits().max_connections == 0 {
            problems.push("egress.max_connections must be at least 1".into());
        }
    }
    if let Some(b) = &cfg.boot {
        if b.config.is_none() && b.secrets.is_none() && b.enclaves.is_empty() {
            problems.push("[boot] needs config = FILE, or [boot.enclaves] CID = FILE".into());
        }
    }
    if let Some(c) = &cfg.credentials {
        if c.source == CredentialSource::Imds {
            if let Err(e) =
                imds::Imds::new(c.imds_endpoint.as_deref().unwrap_or(imds::DEFAULT_ENDPOINT))
            {
                problems.push(format!("credentials: {e}"));
            }
        } else if c.imds_endpoint.is_some() {
            problems.push("credentials.imds_endpoint is for source = \"imds\"".into());
        }
    }
    if let Some(m) = &cfg.metrics {
        if let Err(e) = metrics::loopback(&m.listen) {
            problems.push(format!("metrics.listen: {e}"));
        }
    }
    if let Some(t) = cfg.logs.as_ref().and_then(|l| l.idle_timeout_secs) {
        let (lo, hi) = (
            logs::MIN_IDLE_TIMEOUT.as_secs(),
            logs::MAX_IDLE_TIMEOUT.as_secs(),
        );
        if !(lo..=hi).contains(&t) {
            problems.push(format!("logs.idle_timeout_secs {t}: {lo} to {hi}"));
        }
    }
    if let Some(s) = &cfg.sockets {
        if let Err(e) = s.mode() {
            problems.push(e);
        }
    }
    if let Some(e) = &cfg.enclave {
        problems.extend(e.problems().iter().map(ToString::to_string));
    }
    problems
}

/// Raises the soft descriptor limit to the hard one: each tunnel holds two descriptors, and
/// systemd's default soft limit of 1024 would run out before 512 tunnels.
pub fn raise_fd_limit() -> Option<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        return Some((soft, hard));
    }
    getrlimit(Resource::RLIMIT_NOFILE).ok()
}

/// Tells systemd (`Type=notify`) the daemon's state: a datagram to `$NOTIFY_SOCKET`.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = r {
        warn!(error = %e, "sd_notify {state:?} to $NOTIFY_SOCKET failed");
    }
}

async fn bind(service: &'static str, addr: &Addr) -> Result<Listener, HostError> {
    let perms = SOCKET_PERMS.read().map(|p| *p).unwrap_or_default();
    let l = addr
        .bind_with(&perms)
        .await
        .map_err(|source| HostError::Bind {
            service,
            addr: addr.to_string(),
            source,
        })?;
    let local = l
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| addr.to_string());
    info!("{service} listening on {local}");
    Ok(l)
}

async fn heartbeat(listener: Listener) {
    loop {
        let (mut io, peer) = listener.accept_retrying("heartbeat").await;
        tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let b = io.read_u8().await?;
                if b != HEARTBEAT {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("heartbeat byte 0x{b:02x}"),
                    ));
                }
                io.write_all(&[HEARTBEAT]).await
            })
            .await;
            match r {
                Ok(Ok(())) => info!(client = %peer, "enclave heartbeat"),
                Ok(Err(e)) => warn!(client = %peer, error = %e, "bad heartbeat"),
                Err(_) => warn!(client = %peer, "heartbeat timed out"),
            }
        });
    }
}

/// Runs every configured service until one of them fails or SIGTERM (SIGINT) arrives.
/// `json`: enclave records as JSON lines.
pub async fn run(checked: Checked, json: bool) -> Result<(), HostError> {
    use tokio::signal::unix::{signal, SignalKind};
    let Checked { path, cfg, boot } = checked;
    // The enclave's EIF and launcher are checked before anything binds.
    let supervisor = cfg
        .enclave
        .as_ref()
        .map(enclave::Supervisor::new)
        .transpose()
        .map_err(|e| HostError::Stopped {
            service: "enclave",
            reason: e.to_string(),
        })?;
    let sig = |kind: SignalKind, name: &'static str| {
        signal(kind).map_err(|e| HostError::Signal {
            service: name,
            reason: e.to_string(),
        })
    };
    // Installed first: a SIGHUP during start must not kill the daemon.
    let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
    let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
    // Each tunnel holds two descriptors; FD_MARGIN is left for everything else (listeners,
    // log files, name lookups, 503 answers), so that a client beyond what the limit allows
    // is refused with a 503 instead of waiting in the backlog for a descriptor.
    let mut tunnel_cap = usize::MAX;
    if let Some((soft, hard)) = raise_fd_limit() {
        info!(soft, hard, "descriptor limit (RLIMIT_NOFILE)");
        tunnel_cap = (soft.saturating_sub(FD_MARGIN) / 2) as usize;
        if let Some(e) = &cfg.egress {
            let want = e.limits().max_connections;
            if tunnel_cap < want {
                warn!(soft, max_connections = want, tunnels = tunnel_cap, "the descriptor limit is below what egress.max_connections tunnels need; raise LimitNOFILE");
            }
        }
    }
    let perms = match &cfg.sockets {
        Some(s) => s.perms().map_err(|reason| HostError::Config {
            path: path.display().to_string(),
            reason,
        })?,
        None => SocketPerms::default(),
    };
    if let Ok(mut p) = SOCKET_PERMS.write() {
        *p = perms;
    }
    // Opened before anything binds: a log file that cannot be written stops the start.
    let sink = match &cfg.logs {
        Some(l) => Some(Arc::new(Sink::open(sink_config(l, json)).map_err(|e| {
            HostError::Config {
                path: path.display().to_string(),
                reason: e.to_string(),
            }
        })?)),
        None => None,
    };
    // Every listener is bound before any service starts.
    let egress = match &cfg.egress {
        Some(e) => Some((bind("egress proxy", &e.listen).await?, e)),
        None => None,
    };
    let bootl = match &cfg.boot {
        Some(b) => Some(bind("boot configuration", &b.listen).await?),
        None => None,
    };
    let credl = match &cfg.credentials {
        Some(c) => {
            let source = c.source().map_err(|reason| HostError::Config {
                path: path.display().to_string(),
                reason,
            })?;
            Some((bind("credentials", &c.listen).await?, source))
        }
        None => None,
    };
    let logl = match &cfg.logs {
        Some(l) => Some(bind("log sink", &l.listen).await?),
        None => None,
    };
    let mut ingress = Vec::new();
    for ing in &cfg.ingress {
        ingress.push((bind("ingress", &ing.listen).await?, ing.target.clone()));
    }
    let hb = match &cfg.heartbeat {
        Some(h) => Some(bind("heartbeat", &h.listen).await?),
        None => None,
    };
    let cachel = match &cfg.cache {
        Some(c) => Some(bind("gateway cache", &c.listen).await?),
        None => None,
    };
    let metl = match &cfg.metrics {
        Some(m) => Some(metrics::bind(&m.listen).await?),
        None => None,
    };

    let mut set: JoinSet<Result<(), HostError>> = JoinSet::new();
    if let Some((l, e)) = egress {
        let allow = Allowlist::new(&e.allow).map_err(|err| HostError::Stopped {
            service: "egress proxy",
            reason: err.to_string(),
        })?;
        let mut limits = e.limits();
        limits.max_connections = limits.max_connections.min(tunnel_cap).max(1);
        let proxy = Arc::new(Proxy {
            name: "parent",
            allow,
            limits,
            dialer: Arc::new(crate::transport::GuardedTcp {
                allow_private: e.allow_private_destinations,
            }),
        });
        set.spawn(async move {
            proxy.serve(l).await;
            Ok(())
        });
    }
    let boot_configs = Arc::new(RwLock::new(Arc::new(boot.unwrap_or_default())));
    if let Some(l) = bootl {
        log_boot_configs(&boot_configs);
        let c = boot_configs.clone();
        set.spawn(async move {
            bootcfg::serve(l, c).await;
            Ok(())
        });
    }
    if let Some((l, source)) = credl {
        info!(source = %source.describe(), "AWS credentials for the enclave's KMS calls");
        set.spawn(async move {
            crate::relay::credentials::serve(l, source).await;
            Ok(())
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sink_task = None;
    if let (Some(l), Some(s)) = (logl, &sink) {
        sink_task = Some(tokio::spawn(s.clone().serve(l, stop_rx)));
    }
    for (l, target) in ingress {
        if let Ok(from) = l.local_addr() {
            info!(from = %from, to = %target, "ingress forwarding");
        }
        set.spawn(async move {
            forward::forward(l, target, ForwardLimits::default()).await;
            Ok(())
        });
    }
    if let Some(l) = hb {
        set.spawn(async move {
            heartbeat(l).await;
            Ok(())
        });
    }
    if let Some(l) = metl {
        let s = sink.clone();
        set.spawn(async move {
            metrics::serve(l, s).await;
            Ok(())
        });
    }
    if let (Some(c), Some(l)) = (cfg.cache.clone(), cachel) {
        // A cache that fails stops alone: the log sink, the egress proxy and the boot
        // configuration go on (the enclave fails over to its other gateways).
        set.spawn(async move {
            if let Err(e) = cache::run(c, l).await {
                error!(error = %e, "the gateway cache stopped; the other services keep running");
            }
            Ok(())
        });
    }
    info!("cidboot host ready");
    // The enclave is launched last, once every service it needs is listening.
    let (enclave_stop, mut enclave_stopped) = tokio::sync::watch::channel(false);
    let enclave_task = supervisor.map(|sup| {
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = enclave_stopped.wait_for(|stop| *stop).await;
            };
            match sup.run(shutdown).await {
                enclave::Ended::Policy(outcome) => info!(
                    outcome = %outcome,
                    "enclave supervision ended; the other services keep running"
                ),
                ended => info!("enclave supervision stopped: {ended}"),
            }
        })
    });
    sd_notify("READY=1");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                info!("SIGHUP: reopening the log file and re-reading the boot configurations");
                if let Some(s) = &sink {
                    if let Err(e) = s.reopen().await {
                        error!("reopening the log file: {e}; still writing to the old one");
                    }
                }
                if let Some(b) = &cfg.boot {
                    match load_boot_configs(b) {
                        Ok(c) => {
                            if let Ok(mut w) = boot_configs.write() {
                                *w = Arc::new(c);
                            }
                            log_boot_configs(&boot_configs);
                        }
                        Err(e) => error!("{}: {e}; still serving the previous boot configurations", path.display()),
                    }
                }
            }
            Some(r) = set.join_next(), if !set.is_empty() => match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(e) => {
                    return Err(HostError::Stopped {
                        service: "a service",
                        reason: e.to_string(),
                    })
                }
            },
        }
    }
    sd_notify("STOPPING=1");
    if let Some(t) = enclave_task {
        info!("stopping: ending the enclave's supervision (terminating the enclave if one runs)");
        let _ = enclave_stop.send(true);
        let _ = tokio::time::timeout(ENCLAVE_STOP_TIMEOUT, t).await;
    }
    info!("stopping: the log sink writes and acknowledges what it has read");
    let _ = stop_tx.send(true);
    if let Some(t) = sink_task {
        let _ = tokio::time::timeout(logs::DRAIN_TIMEOUT + Duration::from_secs(1), t).await;
    }
    info!("cidboot host stopped");
    Ok(())
}

/// How long a stop waits for the enclave's teardown (each launcher call has its own timeout).
const ENCLAVE_STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn log_boot_configs(c: &RwLock<Arc<BootConfigs>>) {
    let Ok(c) = c.read() else { return };
    let files = |s: &Served| {
        let none = || "-".to_string();
        (
            s.config
                .as_ref()
                .map_or_else(none, |p| p.path.display().to_string()),
            s.config.as_ref().map_or_else(none, |p| p.sha256.clone()),
            s.secrets
                .as_ref()
                .map_or_else(none, |p| p.path.display().to_string()),
        )
    };
    if let Some(d) = &c.default {
        let (file, sha256, secrets) = files(d);
        info!(
            file = %file,
            sha256 = %sha256,
            secrets = %secrets,
            "boot configuration for every other enclave"
        );
    }
    for (cid, s) in &c.by_cid {
        let (file, sha256, secrets) = files(s);
        info!(
            cid,
            file = %file,
            sha256 = %sha256,
            secrets = %secrets,
            "boot configuration for the enclave at this CID"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_group_is_found_by_name_in_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("group");
        std::fs::write(&f, "root:x:0:\ncidboot:x:991:alice,bob\nodd:x:nope:\n").unwrap();
        assert_eq!(group_id("cidboot", &f), Ok(991));
        assert_eq!(group_id("root", &f), Ok(0));
        assert!(group_id("odd", &f).unwrap_err().contains("not a number"));
        assert!(group_id("cid", &f).unwrap_err().contains("no such group"));
        let s = Sockets {
            mode: Some(0o660),
            group: Some("0".into()),
        };
        assert_eq!(
            s.perms(),
            Ok(SocketPerms {
                mode: 0o660,
                group: Some(0)
            })
        );
        let s = Sockets {
            mode: Some(0o060),
            group: None,
        };
        assert!(s.perms().unwrap_err().contains("sockets.mode"));
    }
}
