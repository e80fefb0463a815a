//! The runtime configuration: what to run and how. Its exact bytes are measured, so a
//! verifier can tell which configuration an enclave was given.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Largest configuration accepted.
pub const MAX_CONFIG_SIZE: usize = 256 * 1024;

/// Why a runtime configuration was refused.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the configuration is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("the configuration is not valid TOML for cidboot: {0}")]
    Parse(String),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// `cidboot.toml`. Unknown keys are errors, so a typo never silently changes what runs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `ipfs://<CID>` (required at boot; `cidboot run` takes it on the command line).
    pub image: Option<String>,
    /// Gateway base URLs (`https://host[:port]`), tried in order; the defaults without any.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// `os/arch[/variant]`; default linux/amd64.
    pub platform: Option<String>,
    /// Seconds from reading this configuration to the workload's start (fetch, verify, apply,
    /// measure, helpers); past it the boot fails and, in an enclave, powers off.
    pub boot_deadline_secs: Option<u64>,
    /// The index.json entry to take, by its `org.opencontainers.image.ref.name`.
    pub tag: Option<String>,
    /// The index.json entry to take, by digest (`sha256:<hex>`).
    pub digest: Option<String>,
    /// `[workload]`: overrides of the image's process, and the sandbox's opt-ins.
    #[serde(default)]
    pub workload: Workload,
    /// `[helpers]`: the pinned helpers and helper images.
    #[serde(default)]
    pub helpers: Helpers,
    /// `[[prestart]]`: helpers run, in order, before the workload.
    #[serde(default)]
    pub prestart: Vec<Prestart>,
    /// `[attestation]`: the workload's attestation API.
    #[serde(default)]
    pub attestation: Attestation,
    /// `[egress]`: the measured allowlist for the workload's outbound connections.
    #[serde(default)]
    pub egress: Egress,
    /// `[[ingress]]`: ports the parent forwards into the enclave.
    #[serde(default)]
    pub ingress: Vec<Ingress>,
    /// `[tls]`: extra trust for the gateways.
    #[serde(default)]
    pub tls: Tls,
    /// `[fetch]`: timeouts, retries and parallel ranges.
    #[serde(default)]
    pub fetch: Fetch,
    /// `[layers]`: how large the image may be once uncompressed.
    #[serde(default)]
    pub layers: Layers,
    /// `[kms]`: the AWS KMS the enclave asks for its secrets.
    pub kms: Option<Kms>,
    /// `[kms_proxy]`: the AWS KMS JSON API on loopback for the workload (needs `[kms]`).
    pub kms_proxy: Option<KmsProxy>,
    /// `[[secrets]]`: the sealed secrets the workload gets, and how (see [`crate::secrets`]).
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// The `[[secrets]]` entry whose value is the PEM private key that opens the image's
    /// encrypted (ocicrypt) layers. It is opened for cidboot itself, after PCR16 is locked and
    /// before the layers are applied, and reaches the workload only if that entry also says
    /// `env` or `file`.
    pub decryption_key: Option<String>,
}

/// `[kms_proxy]`: a loopback endpoint that speaks the AWS KMS JSON API to the workload and
/// makes each call to `[kms]` with an attestation document as its `Recipient`
/// ([`crate::kms::proxy`]). Its presence is the opt-in, and it is measured.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsProxy {
    /// A loopback address; default 127.0.0.1:9394.
    pub listen: Option<String>,
}

impl KmsProxy {
    /// Where the proxy listens, as `HOST:PORT`: the configured address or the default, which
    /// must be a loopback one (the answers carry plaintexts).
    pub fn listen(&self) -> Result<String, ConfigError> {
        let given = self
            .listen
            .as_deref()
            .unwrap_or(crate::kms::proxy::DEFAULT_LISTEN);
        let bad =
            |why: String| ConfigError::Invalid(format!("[kms_proxy] listen {given:?}: {why}"));
        let addr = crate::transport::addr::Addr::tcp_only(given).map_err(|e| bad(e.to_string()))?;
        let ip: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| bad("give an IP address and port, like 127.0.0.1:9394".into()))?;
        if !ip.ip().is_loopback() {
            return Err(bad(
                "only a loopback address (127.0.0.0/8 or [::1]): the proxy answers with plaintexts"
                    .into(),
            ));
        }
        Ok(addr)
    }
}

/// `[[secrets]]`: one sealed secret the workload gets. Its ciphertext is not here (it is not
/// measured): it comes with the boot, by name, and KMS opens it only for this enclave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// The name it was sealed under (`cidboot seal --name`), bound into its ciphertext.
    pub name: String,
    /// The KMS key that must open it (its ARN, best): `Decrypt` names it, so a ciphertext
    /// under any other key is refused by KMS.
    pub key_id: String,
    /// Deliver it in this environment variable of the workload.
    pub env: Option<String>,
    /// Deliver it in this file, `/run/secrets/NAME`: a tmpfs of the workload's own, the file
    /// owned by the workload's user, mode 0400.
    pub file: Option<String>,
    /// How the value is written: `raw` (default), `base64`, `hex`, or `mnemonic` (the 24-word
    /// BIP-39 phrase of a 32-byte value).
    #[serde(default)]
    pub format: crate::secrets::Format,
}

/// `[kms]`: which AWS KMS to ask, over HTTPS that ends in cidboot, trusted through the web
/// PKI roots and `[tls] extra_ca`. An `http://` endpoint is refused (see [`crate::kms`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kms {
    /// The AWS region (`us-east-1`): the scope requests are signed for.
    pub region: String,
    /// `https://host[:port]` instead of `https://kms.<region>.amazonaws.com` (a VPC endpoint,
    /// a FIPS endpoint, a test KMS).
    pub endpoint: Option<String>,
}

impl Kms {
    /// Where KMS is, checked: an https origin and a region name.
    pub fn endpoint(&self) -> Result<crate::kms::Endpoint, crate::kms::KmsError> {
        crate::kms::Endpoint::new(&self.region, self.endpoint.as_deref())
    }
}

/// How gateways are asked: timeouts, the throughput floor, tries, the deadline of one object,
/// and how large blobs are fetched in parallel ranges (docs/gateways.md). Every key is
/// optional (the defaults are in docs/limits.md); `cidboot run`'s flags of the same names
/// override the first group.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// Seconds to open a connection and finish the TLS handshake (default 10).
    pub connect_timeout_secs: Option<u64>,
    /// Seconds from the request to the response head (default 30).
    pub first_byte_timeout_secs: Option<u64>,
    /// Seconds without a byte of the body (default 30).
    pub idle_timeout_secs: Option<u64>,
    /// The slowest body accepted, bytes per second over `rate_window_secs` (default 16384).
    pub min_rate: Option<u64>,
    /// Seconds over which `min_rate` is measured (default 30).
    pub rate_window_secs: Option<u64>,
    /// Attempts on each gateway before the next (default 3).
    pub tries: Option<u32>,
    /// Seconds one object (a block, a file) may take across every gateway (default 1800).
    pub object_deadline_secs: Option<u64>,
    /// Connections open at once to one gateway, for one blob (1..=16).
    pub connections_per_gateway: Option<usize>,
    /// Connections open at once for one blob, across gateways (1..=64; 1 turns ranges off).
    pub connections: Option<usize>,
    /// Target bytes per range (256 KiB..=16 MiB).
    pub range_bytes: Option<u64>,
}

/// The longest timeout, window or object deadline `[fetch]` accepts, in seconds.
pub const MAX_FETCH_SECS: u64 = 86_400;
/// The most tries on one gateway `[fetch]` accepts.
pub const MAX_FETCH_TRIES: u32 = 10;
/// Most memory one blob's parallel ranges may hold, as `[fetch]` sets them (two blobs are
/// fetched at once).
pub const MAX_FETCH_HELD_BYTES: u64 = 128 << 20;

impl Fetch {
    /// The parallel policy these settings ask for; the window of held ranges grows with the
    /// connections so that each connection always has a range to fetch.
    pub fn parallel_policy(&self) -> crate::fetch::parallel::ParallelPolicy {
        let mut p = crate::fetch::parallel::ParallelPolicy::default();
        if let Some(n) = self.connections_per_gateway {
            p.per_gateway = n;
        }
        if let Some(n) = self.connections {
            p.total = n;
        }
        if let Some(b) = self.range_bytes {
            p.range_bytes = b;
            p.min_file = p.min_file.max(4 * b);
        }
        p.window = p.window.max(p.total + 4);
        p
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("first_byte_timeout_secs", self.first_byte_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("rate_window_secs", self.rate_window_secs),
            ("object_deadline_secs", self.object_deadline_secs),
        ] {
            if matches!(v, Some(v) if v == 0 || v > MAX_FETCH_SECS) {
                return Err(ConfigError::Invalid(format!(
                    "[fetch] {key} must be 1..={MAX_FETCH_SECS}"
                )));
            }
        }
        if matches!(self.tries, Some(t) if t == 0 || t > MAX_FETCH_TRIES) {
            return Err(ConfigError::Invalid(format!(
                "[fetch] tries must be 1..={MAX_FETCH_TRIES}"
            )));
        }
        let bad = |what: &str| ConfigError::Invalid(format!("[fetch] {what}"));
        if self
            .connections_per_gateway
            .is_some_and(|n| !(1..=16).contains(&n))
        {
            return Err(bad("connections_per_gateway must be 1..=16"));
        }
        if self.connections.is_some_and(|n| !(1..=64).contains(&n)) {
            return Err(bad("connections must be 1..=64"));
        }
        if self
            .range_bytes
            .is_some_and(|b| !(256 * 1024..=16 << 20).contains(&b))
        {
            return Err(bad("range_bytes must be 262144..=16777216"));
        }
        let held = self.parallel_policy().max_held_bytes();
        if held > MAX_FETCH_HELD_BYTES {
            return Err(ConfigError::Invalid(format!(
                "[fetch]: these connections and range_bytes may hold {} MiB per blob, over the limit of {} MiB",
                held >> 20,
                MAX_FETCH_HELD_BYTES >> 20
            )));
        }
        Ok(())
    }
}

/// `[layers]`: the uncompressed size of an image and of each layer, and a layer's entries.
/// Every key is optional (the defaults are in docs/limits.md); the flags of the same names of
/// `cidboot run` and `cidboot unpack` win over them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layers {
    /// MiB all layers may inflate to, together.
    pub max_image_mib: Option<u64>,
    /// MiB one layer may inflate to.
    pub max_layer_mib: Option<u64>,
    /// Tar entries in one layer.
    pub max_layer_entries: Option<u64>,
}

/// The most `[layers] max_image_mib` and `max_layer_mib` accept: 1 TiB.
pub const MAX_LAYERS_MIB: u64 = 1 << 20;
/// The most `[layers] max_layer_entries` accepts.
pub const MAX_LAYER_ENTRIES: u64 = 100_000_000;

impl Layers {
    /// These limits over `base`, each flag given in `flags` winning over this key.
    pub fn apply_to(
        &self,
        flags: &Layers,
        mut base: crate::apply::ApplyLimits,
    ) -> crate::apply::ApplyLimits {
        if let Some(m) = flags.max_image_mib.or(self.max_image_mib) {
            base.max_total_uncompressed = m << 20;
        }
        if let Some(m) = flags.max_layer_mib.or(self.max_layer_mib) {
            base.max_layer_uncompressed = m << 20;
        }
        if let Some(n) = flags.max_layer_entries.or(self.max_layer_entries) {
            base.max_entries = n;
        }
        base
    }

    /// Each value within its bounds; `name` gives a key's name as its source spells it.
    pub fn validate(&self, name: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        for (key, v, max) in [
            ("max_image_mib", self.max_image_mib, MAX_LAYERS_MIB),
            ("max_layer_mib", self.max_layer_mib, MAX_LAYERS_MIB),
            (
                "max_layer_entries",
                self.max_layer_entries,
                MAX_LAYER_ENTRIES,
            ),
        ] {
            if matches!(v, Some(v) if v == 0 || v > max) {
                return Err(ConfigError::Invalid(format!(
                    "{} must be 1..={max}",
                    name(key)
                )));
            }
        }
        Ok(())
    }
}

/// Trust for gateway TLS beyond the built-in web PKI roots.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM of extra CA certificates (for a private gateway); measured with the configuration.
    pub extra_ca: Option<String>,
}

/// The workload's way out: a proxy on loopback that enforces this (measured) allowlist and
/// tunnels through the parent.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// `host:port` patterns (see docs/operating.md); empty means no egress for the workload.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Where the workload's proxy listens; default 127.0.0.1:3128.
    pub listen: Option<String>,
    /// Transparent egress: the workload in a network namespace of its own, whose resolver
    /// answers only allowlisted names and whose TCP connections to them (and to the listed
    /// addresses and blocks) are carried out by name; everything else is refused. Default off.
    #[serde(default)]
    pub transparent: bool,
    /// Transparent egress: connections carried at once (default 512).
    pub max_connections: Option<usize>,
    /// Transparent egress: resolver queries answered a second (default 200).
    pub dns_queries_per_sec: Option<u32>,
    /// Transparent egress: seconds a connection may carry nothing before it is closed
    /// (default 120).
    pub idle_timeout_secs: Option<u64>,
}

/// The bounds `[egress]` accepts for transparent egress.
pub mod egress_limits {
    /// Most `max_connections`.
    pub const MAX_CONNECTIONS: usize = 65_536;
    /// Most `dns_queries_per_sec`.
    pub const MAX_DNS_QUERIES_PER_SEC: u32 = 100_000;
    /// Most `idle_timeout_secs` (a day).
    pub const MAX_IDLE_SECS: u64 = 86_400;
}

impl Egress {
    /// The transparent egress bounds: the defaults, with what the configuration sets.
    pub fn transparent_limits(&self) -> crate::transparent::Limits {
        let mut l = crate::transparent::Limits::default();
        if let Some(n) = self.max_connections {
            l.max_connections = n;
        }
        if let Some(n) = self.dns_queries_per_sec {
            l.dns_queries_per_sec = n;
        }
        if let Some(s) = self.idle_timeout_secs {
            l.idle_timeout = std::time::Duration::from_secs(s);
        }
        l
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |why: String| Err(ConfigError::Invalid(format!("[egress] {why}")));
        let set = self.max_connections.is_some()
            || self.dns_queries_per_sec.is_some()
            || self.idle_timeout_secs.is_some();
        if set && !self.transparent {
            return bad("max_connections, dns_queries_per_sec and idle_timeout_secs bound transparent egress: set transparent = true, or remove them".into());
        }
        if self
            .max_connections
            .is_some_and(|n| n == 0 || n > egress_limits::MAX_CONNECTIONS)
        {
            return bad(format!(
                "max_connections must be 1..={}",
                egress_limits::MAX_CONNECTIONS
            ));
        }
        if self
            .dns_queries_per_sec
            .is_some_and(|n| n == 0 || n > egress_limits::MAX_DNS_QUERIES_PER_SEC)
        {
            return bad(format!(
                "dns_queries_per_sec must be 1..={}",
                egress_limits::MAX_DNS_QUERIES_PER_SEC
            ));
        }
        if self
            .idle_timeout_secs
            .is_some_and(|n| n == 0 || n > egress_limits::MAX_IDLE_SECS)
        {
            return bad(format!(
                "idle_timeout_secs must be 1..={}",
                egress_limits::MAX_IDLE_SECS
            ));
        }
        Ok(())
    }
}

/// A port the parent forwards in: connections to `listen` reach 127.0.0.1:`port`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingress {
    /// `vsock:any:PORT` in an enclave (`tcp:…` for development).
    pub listen: String,
    /// The loopback port inside the enclave the connections are forwarded to.
    pub port: u16,
}

/// The attestation API served to the workload.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attestation {
    /// Loopback address; default 127.0.0.1:9393.
    pub listen: Option<String>,
}

/// `[workload]`: what replaces the image's own process settings, and what the sandbox allows.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Replaces the image's Entrypoint; the image's Cmd is then dropped unless `cmd` is set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's Cmd.
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE` entries merged over the image's Env.
    #[serde(default)]
    pub env: Vec<String>,
    /// Replaces the image's User.
    pub user: Option<String>,
    /// Replaces the image's WorkingDir.
    pub working_dir: Option<String>,
    /// Capabilities added to the sandbox's default set (Docker's without MKNOD), e.g.
    /// `["NET_ADMIN"]`. Each one is a power given to the workload: see docs/workload.md.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Let the workload and helpers open `AF_VSOCK` sockets (the parent's services directly,
    /// around the measured egress policy).
    #[serde(default)]
    pub allow_vsock: bool,
    /// Let setuid and file-capability binaries of the image raise privileges (the root is
    /// then not mounted `nosuid`, and `no_new_privs` is not set).
    #[serde(default)]
    pub allow_setuid: bool,
    /// `[workload.limits]`: the cgroup limits of the helpers and the workload. Absent, the
    /// defaults apply where the machine allows (docs/limits.md); present, even empty, `cidboot
    /// run` refuses to start where they cannot be applied.
    pub limits: Option<Limits>,
}

/// `[workload.limits]`: what the helpers and the workload may take, together, so that cidboot
/// keeps what it needs to report and power off. Every key is optional (docs/limits.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory in MiB (`memory.max`); default: what the machine has, less cidboot's reserve.
    pub memory_max_mib: Option<u64>,
    /// Swap in MiB (`memory.swap.max`); default 0.
    pub swap_max_mib: Option<u64>,
    /// Processes and threads (`pids.max`); default 4096.
    pub pids_max: Option<u64>,
    /// CPU weight against cidboot's own work (`cpu.weight`, 1..=10000); default 100.
    pub cpu_weight: Option<u64>,
}

/// The bounds `[workload.limits]` accepts; what a machine has bounds `memory_max_mib` again at
/// the boot.
pub mod limits {
    /// Least `memory_max_mib`.
    pub const MIN_MEMORY_MIB: u64 = 16;
    /// Most `memory_max_mib` and `swap_max_mib` (1 TiB).
    pub const MAX_MEMORY_MIB: u64 = 1 << 20;
    /// Least `pids_max`.
    pub const MIN_PIDS: u64 = 8;
    /// Most `pids_max` (the kernel's PID_MAX_LIMIT).
    pub const MAX_PIDS: u64 = 4_194_304;
    /// `pids_max` when unset.
    pub const DEFAULT_PIDS: u64 = 4096;
    /// `cpu_weight` when unset (the kernel's default weight).
    pub const DEFAULT_CPU_WEIGHT: u64 = 100;
    /// Most `cpu_weight`.
    pub const MAX_CPU_WEIGHT: u64 = 10_000;
}

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        let check = |key: &str, v: Option<u64>, lo: u64, hi: u64| match v {
            Some(v) if !(lo..=hi).contains(&v) => Err(ConfigError::Invalid(format!(
                "[workload.limits] {key} = {v} is out of bounds: {lo}..={hi}"
            ))),
            _ => Ok(()),
        };
        check(
            "memory_max_mib",
            self.memory_max_mib,
            MIN_MEMORY_MIB,
            MAX_MEMORY_MIB,
        )?;
        check("swap_max_mib", self.swap_max_mib, 0, MAX_MEMORY_MIB)?;
        check("pids_max", self.pids_max, MIN_PIDS, MAX_PIDS)?;
        check("cpu_weight", self.cpu_weight, 1, MAX_CPU_WEIGHT)
    }
}

impl Workload {
    /// The sandbox policy these settings ask for.
    pub fn policy(&self) -> crate::launch::confine::Policy {
        crate::launch::confine::Policy {
            capabilities: self.capabilities.clone(),
            allow_vsock: self.allow_vsock,
            allow_setuid: self.allow_setuid,
        }
    }
}

/// `[helpers]`: executables pinned by digest, from the boot image or from helper images.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Helpers {
    /// Where the boot image keeps the helpers; they appear at the same path in the root.
    #[serde(default = "default_helper_dir")]
    pub dir: String,
    /// Helper name to `sha256:<hex>`. Only pinned helpers are layered in.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// Dependency images whose regular files under `dir` become helpers.
    #[serde(default)]
    pub images: Vec<HelperImage>,
}

/// A dependency image (EigenCloud style), pinned by its manifest digest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelperImage {
    /// Any reference form cidboot accepts (`ipfs://<CID>`, a gateway URL).
    pub image: String,
    /// `sha256:<hex>` of the image's manifest, as a release table publishes it.
    pub digest: String,
}

/// Most dependency images one configuration may name.
pub use crate::measure::MAX_HELPER_IMAGES;

impl Default for Helpers {
    fn default() -> Self {
        Helpers {
            dir: default_helper_dir(),
            pins: BTreeMap::new(),
            images: Vec::new(),
        }
    }
}

fn default_helper_dir() -> String {
    "/eigen/bin".into()
}

/// One step of the chain run before the workload, in order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prestart {
    /// A pinned helper's name.
    pub helper: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// A file (path inside the root) the helper writes as `KEY=VALUE` lines; merged into the
    /// workload's environment.
    pub env_file: Option<String>,
    /// Seconds the helper may run.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    120
}

/// A configuration together with the exact bytes it was parsed from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What the bytes say.
    pub config: RuntimeConfig,
    /// The bytes as read: these, not a re-serialisation, are measured into PCR16.
    pub bytes: Vec<u8>,
}

impl Loaded {
    /// Parses and validates; refuses more than [`MAX_CONFIG_SIZE`] bytes, non-UTF-8 text and
    /// unknown keys.
    pub fn parse(bytes: Vec<u8>) -> Result<Loaded, ConfigError> {
        if bytes.len() > MAX_CONFIG_SIZE {
            return Err(ConfigError::TooLarge {
                size: bytes.len(),
                max: MAX_CONFIG_SIZE,
            });
        }
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ConfigError::Parse(format!("not UTF-8: {e}")))?;
        let config: RuntimeConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(Loaded { config, bytes })
    }

    /// Reads `path` (at most [`MAX_CONFIG_SIZE`] bytes) and parses it.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let bytes = read_capped(path)?;
        Loaded::parse(bytes)
    }

    /// The empty configuration (all defaults), measured as zero bytes.
    pub fn empty() -> Loaded {
        Loaded {
            config: RuntimeConfig::default(),
            bytes: Vec::new(),
        }
    }

    /// `sha256:<hex>` of the exact bytes.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.bytes)))
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let err = |source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    };
    let f = std::fs::File::open(path).map_err(err)?;
    let mut buf = Vec::new();
    f.take(MAX_CONFIG_SIZE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() > MAX_CONFIG_SIZE {
        return Err(ConfigError::TooLarge {
            size: buf.len(),
            max: MAX_CONFIG_SIZE,
        });
    }
    Ok(buf)
}

/// The boot deadline when the configuration sets none.
pub const DEFAULT_BOOT_DEADLINE_SECS: u64 = 3600;
/// The longest boot deadline accepted.
pub const MAX_BOOT_DEADLINE_SECS: u64 = 86_400;

impl RuntimeConfig {
    /// How long the boot may take to reach the workload.
    pub fn boot_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.boot_deadline_secs
                .unwrap_or(DEFAULT_BOOT_DEADLINE_SECS),
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.fetch.validate()?;
        self.layers.validate(|k| format!("[layers] {k}"))?;
        if let Some(k) = &self.kms {
            k.endpoint()
                .map_err(|e| ConfigError::Invalid(format!("[kms] {e}")))?;
        }
        if let Some(p) = &self.kms_proxy {
            if self.kms.is_none() {
                return Err(ConfigError::Invalid(
                    "[kms_proxy] needs [kms]: the region and endpoint its calls go to".into(),
                ));
            }
            p.listen()?;
        }
        crate::secrets::check_config(self).map_err(ConfigError::Invalid)?;
        if let Some(d) = self.boot_deadline_secs {
            if d == 0 || d > MAX_BOOT_DEADLINE_SECS {
                return Err(ConfigError::Invalid(format!(
                    "boot_deadline_secs must be 1..={MAX_BOOT_DEADLINE_SECS}"
                )));
            }
        }
        for e in &self.workload.env {
            check_env(e)?;
        }
        if let Some(l) = &self.workload.limits {
            l.validate()?;
        }
        self.workload
            .policy()
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("workload.capabilities: {e}")))?;
        check_helper_dir(&self.helpers.dir)?;
        for (name, pin) in &self.helpers.pins {
            check_helper_name(name)?;
            let hex = pin.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid(format!(
                    "helper {name}: pin {pin:?} is not sha256:<64 hex digits>"
                )));
            }
        }
        if self.helpers.images.len() > MAX_HELPER_IMAGES {
            return Err(ConfigError::Invalid(format!(
                "[[helpers.images]]: {} images, over the limit of {MAX_HELPER_IMAGES}",
                self.helpers.images.len()
            )));
        }
        for (i, img) in self.helpers.images.iter().enumerate() {
            crate::reference::ImageRef::parse(&img.image)
                .map_err(|e| ConfigError::Invalid(format!("helpers.images[{i}].image: {e}")))?;
            if !crate::measure::is_sha256(&img.digest) {
                return Err(ConfigError::Invalid(format!(
                    "helpers.images[{i}].digest {:?} is not sha256:<64 lowercase hex digits>",
                    img.digest
                )));
            }
        }
        for p in &self.prestart {
            // A helper from a dependency image is known only once the image has verified;
            // the boot checks those names before it fetches the workload.
            if !self.helpers.pins.contains_key(&p.helper) && self.helpers.images.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "prestart helper {:?} is not pinned in [helpers.pins] (and there is no [[helpers.images]])",
                    p.helper
                )));
            }
            if p.timeout_secs == 0 || p.timeout_secs > 3600 {
                return Err(ConfigError::Invalid(format!(
                    "prestart {}: timeout_secs must be 1..=3600",
                    p.helper
                )));
            }
            if let Some(f) = &p.env_file {
                if !f.starts_with('/') {
                    return Err(ConfigError::Invalid(format!(
                        "prestart {}: env_file must be an absolute path in the root",
                        p.helper
                    )));
                }
            }
        }
        crate::relay::allow::Allowlist::new(&self.egress.allow)
            .map_err(|e| ConfigError::Invalid(format!("egress.allow: {e}")))?;
        self.egress.check()?;
        if let Some(l) = &self.egress.listen {
            l.parse::<crate::transport::addr::Addr>()
                .map_err(|e| ConfigError::Invalid(format!("egress.listen: {e}")))?;
        }
        if let Some(l) = &self.attestation.listen {
            crate::transport::addr::Addr::tcp_only(l)
                .map_err(|e| ConfigError::Invalid(format!("attestation.listen: {e}")))?;
        }
        for i in &self.ingress {
            i.listen
                .parse::<crate::transport::addr::Addr>()
                .map_err(|e| ConfigError::Invalid(format!("ingress.listen: {e}")))?;
        }
        if let Some(ep) = &self.workload.entrypoint {
            if ep.is_empty() {
                return Err(ConfigError::Invalid("workload.entrypoint is empty".into()));
            }
        }
        Ok(())
    }
}

/// Checks one `KEY=VALUE` environment entry: a non-empty key and no NUL anywhere.
pub fn check_env(e: &str) -> Result<(), ConfigError> {
    match e.split_once('=') {
        Some((k, _)) if !k.is_empty() && !k.contains('\0') && !e.contains('\0') => Ok(()),
        _ => Err(ConfigError::Invalid(format!(
            "environment entry {e:?} is not KEY=VALUE"
        ))),
    }
}

/// Helpers are installed and found by this path: a plain absolute path outside the
/// directories the sandbox provides itself.
fn check_helper_dir(dir: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("helpers.dir {dir:?}: {why}"));
    let rel = dir
        .strip_prefix('/')
        .ok_or_else(|| bad("must be an absolute path"))?;
    let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    if parts.is_empty() || parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(bad("must name a directory below / without `.` or `..`"));
    }
    if ["proc", "sys", "dev"].contains(&parts[0]) {
        return Err(bad("may not be inside /proc, /sys or /dev"));
    }
    Ok(())
}

pub(crate) fn check_helper_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!("helper name {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transparent_egress_bounds_are_checked() {
        let ok = Loaded::parse(
            b"[egress]\ntransparent = true\nallow = [\"a.test:443\", \"10.0.0.0/8:5432\"]\nmax_connections = 8\ndns_queries_per_sec = 5\nidle_timeout_secs = 30\n".to_vec(),
        )
        .unwrap();
        let l = ok.config.egress.transparent_limits();
        assert_eq!(
            (
                l.max_connections,
                l.dns_queries_per_sec,
                l.idle_timeout.as_secs()
            ),
            (8, 5, 30)
        );
        for (text, want) in [
            ("[egress]\nmax_connections = 8\n", "set transparent = true"),
            (
                "[egress]\ntransparent = true\nmax_connections = 0\n",
                "max_connections must be 1..=65536",
            ),
            (
                "[egress]\ntransparent = true\ndns_queries_per_sec = 0\n",
                "dns_queries_per_sec must be",
            ),
            (
                "[egress]\ntransparent = true\nidle_timeout_secs = 100000\n",
                "idle_timeout_secs must be",
            ),
            (
                "[egress]\nallow = [\"10.0.0.1/8:1\"]\n",
                "bits set past the prefix length",
            ),
        ] {
            let e = Loaded::parse(text.as_bytes().to_vec())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn parses_and_validates() {
        let pin = format!("sha256:{}", "ab".repeat(32));
        let text = format!(
            "image = \"ipfs://x\"\n[workload]\nenv = [\"A=1\"]\n[helpers.pins]\nkms-client = \"{pin}\"\n[[prestart]]\nhelper = \"kms-client\"\nenv_file = \"/run/kms.env\"\n"
        );
        let l = Loaded::parse(text.into_bytes()).unwrap();
        assert_eq!(l.config.prestart[0].timeout_secs, 120);
        assert_eq!(l.config.fetch.parallel_policy().range_bytes, 2 << 20);
        let f =
            Loaded::parse(b"[fetch]\nconnections = 24\nrange_bytes = 1048576".to_vec()).unwrap();
        let p = f.config.fetch.parallel_policy();
        assert_eq!((p.total, p.range_bytes, p.window), (24, 1 << 20, 28));
        assert!(l.digest().starts_with("sha256:"));
        let k = Loaded::parse(
            b"[kms]\nregion = \"eu-central-1\"\nendpoint = \"https://vpce.example:8443\"".to_vec(),
        )
        .unwrap();
        let e = k.config.kms.unwrap().endpoint().unwrap();
        assert_eq!(
            (e.region(), e.to_string().as_str()),
            ("eu-central-1", "https://vpce.example:8443")
        );
        let http = Loaded::parse(
            b"[kms]\nregion = \"us-east-1\"\nendpoint = \"http://10.0.0.1\"".to_vec(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            http.contains("[kms]") && http.contains("AES-CBC without a MAC"),
            "{http}"
        );
        let kms = "[kms]\nregion = \"us-east-1\"\n";
        let p = Loaded::parse(format!("{kms}[kms_proxy]\n").into_bytes()).unwrap();
        assert_eq!(
            p.config.kms_proxy.unwrap().listen().unwrap(),
            "127.0.0.1:9394"
        );
        let p =
            Loaded::parse(format!("{kms}[kms_proxy]\nlisten = \"[::1]:0\"").into_bytes()).unwrap();
        assert_eq!(p.config.kms_proxy.unwrap().listen().unwrap(), "[::1]:0");
        for (bad, says) in [
            ("[kms_proxy]\n", "[kms_proxy] needs [kms]"),
            (
                "[kms_proxy]\nlisten = \"0.0.0.0:9394\"",
                "only a loopback address",
            ),
            (
                "[kms_proxy]\nlisten = \"localhost:9394\"",
                "an IP address and port",
            ),
            ("[kms_proxy]\nlisten = \"vsock:any:9394\"", "only TCP"),
            ("[kms_proxy]\nport = 9394", "unknown field"),
        ] {
            let text = if says.contains("needs") {
                bad.to_string()
            } else {
                format!("{kms}{bad}")
            };
            let e = Loaded::parse(text.into_bytes()).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(l.config.workload.limits.is_none());
        let lim = Loaded::parse(b"[workload.limits]\n".to_vec()).unwrap();
        assert!(
            lim.config.workload.limits.is_some(),
            "an empty section asks for the defaults"
        );
        let lim = Loaded::parse(
            b"[workload.limits]\nmemory_max_mib = 16\nswap_max_mib = 0\npids_max = 8\ncpu_weight = 10000\n"
                .to_vec(),
        )
        .unwrap();
        assert_eq!(lim.config.workload.limits.unwrap().pids_max, Some(8));
        for bad in [
            "typo = 1",
            "[workload]\nenv = [\"NOEQUALS\"]",
            "[[prestart]]\nhelper = \"unpinned\"",
            "[helpers.pins]\nx = \"md5:00\"",
            "[workload]\ncapabilities = [\"FLY\"]",
            "[helpers]\ndir = \"/proc/self/cwd\"",
            "[helpers]\ndir = \"/eigen/../bin\"",
            "[fetch]\ntries = 0",
            "[fetch]\ntries = 11",
            "[fetch]\nconnect_timeout_secs = 0",
            "[fetch]\nobject_deadline_secs = 100000",
            "[fetch]\nretries = 3",
            "boot_deadline_secs = 0",
            "boot_deadline_secs = 100000",
            "[fetch]\nconnections = 0",
            "[fetch]\nconnections_per_gateway = 17",
            "[fetch]\nrange_bytes = 1024",
            "[fetch]\nconnections = 32\nrange_bytes = 16777216",
            "[kms]\nendpoint = \"https://kms.example\"",
            "[kms]\nregion = \"us-east-1\"\nendpoint = \"http://kms.example\"",
            "[kms]\nregion = \"Mars\"",
            "[workload.limits]\nmemory_max_mib = 15",
            "[workload.limits]\nmemory_max_mib = 1048577",
            "[workload.limits]\npids_max = 7",
            "[workload.limits]\npids_max = 4194305",
            "[workload.limits]\ncpu_weight = 0",
            "[workload.limits]\ncpu_weight = 10001",
            "[workload.limits]\nswap_max_mib = 1048577",
            "[workload.limits]\nmemory = 1",
        ] {
            assert!(Loaded::parse(bad.as_bytes().to_vec()).is_err(), "{bad}");
        }
    }
}
