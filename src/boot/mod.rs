//! The boot path shared by `cidboot run` and PID 1: resolve, verify, measure, apply, launch.
//!
//! Order matters: every helper pin is checked before anything is fetched; PCR16 is extended
//! and locked once, when everything it names has verified and before KMS is asked for a key
//! or any layer is applied; every layer is verified as it is applied into a root nothing runs
//! from; and the first program from the image starts after all of it.

pub mod helper_images;
pub mod plan;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::info;

use crate::apply::path::RelPath;
use crate::apply::{self, ApplyError, ApplyLimits, ApplyReport};
use crate::config::Loaded;
use crate::fetch::Gateways;
use crate::launch::exec::{Sandbox, Sandboxed};
use crate::launch::spec::ProcessSpec;
use crate::launch::{helpers, spec, LaunchError};
use crate::measure::{EncryptedLayers, EventLog, Inputs, PCR_INDEX};
use crate::nsm::Nsm;
use crate::oci::{self, Limits, OciError, Resolved, Selector};
use crate::ocicrypt::LayerKeys;
use crate::reference::ImageRef;

/// Why a boot stopped before the workload ran.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum BootError {
    #[error("{0}")]
    Plan(String),
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Crypt(#[from] crate::ocicrypt::CryptError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("measuring into PCR16: {0}")]
    Measure(String),
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
    #[error("relays: {0}")]
    Relay(String),
    #[error("the boot did not reach the workload within {0}s (boot_deadline_secs)")]
    Deadline(u64),
    #[error("helper image {image}: {reason}")]
    HelperImage { image: String, reason: String },
    #[error("KMS proxy: {0}")]
    KmsProxy(String),
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
}

/// The confined filesystem's errors, as the applier names them.
impl From<cidboot_rootfs::RootfsError> for BootError {
    fn from(e: cidboot_rootfs::RootfsError) -> BootError {
        BootError::Apply(e.into())
    }
}

/// Everything a boot needs to know.
pub struct Plan {
    /// The image to boot, as the configuration (or the command line) names it.
    pub reference: ImageRef,
    /// The runtime configuration, with the exact bytes that are measured.
    pub config: Loaded,
    /// Which entry of an index: platform, tag, digest.
    pub select: Selector,
    /// The trustless gateway client every fetch of this boot goes through.
    pub gateways: Arc<Gateways>,
    /// Where the helpers are on this machine (the boot image's `/eigen/bin`).
    pub helpers_dir: PathBuf,
    /// The staging directory and the policy (from the measured configuration).
    pub sandbox: Sandbox,
    /// Caps on the image's documents (index, manifest, config).
    pub limits: Limits,
    /// Caps on what the layers may write into the root.
    pub apply_limits: ApplyLimits,
    /// Extends PCR16, locks the PCRs and serves the attestation API.
    pub nsm: Arc<dyn Nsm>,
    /// Where the attestation API listens (the configuration's, or the default).
    pub attestation_listen: String,
    /// How the workload's egress leaves: through the parent's proxy in an enclave.
    pub egress_dialer: Arc<dyn crate::transport::Connector>,
    /// When the boot must have started the workload (see [`by_deadline`]).
    pub deadline: tokio::time::Instant,
    /// Who watches the layers arrive (a terminal's progress bars under `cidboot run`).
    pub observer: Arc<dyn apply::Observer>,
    /// The sealed secrets that came with the boot (not measured): the parent's, or
    /// `cidboot run --secrets`.
    pub sealed: Option<crate::kms::sealed::SecretsFile>,
    /// What signs the KMS calls that open them (needed only with `[[secrets]]`).
    pub credentials: Option<Arc<dyn crate::kms::Credentials>>,
    /// The private key that opens the image's encrypted layers, if it came with the boot.
    pub decryption_key: Option<Arc<crate::ocicrypt::DecryptionKey>>,
}

/// The instant a boot that starts now must reach the workload by.
pub fn deadline_for(config: &Loaded) -> tokio::time::Instant {
    tokio::time::Instant::now() + config.config.boot_deadline()
}

/// Runs one step of the boot, failing it at the plan's deadline.
pub async fn by_deadline<T>(
    plan: &Plan,
    step: impl std::future::Future<Output = Result<T, BootError>>,
) -> Result<T, BootError> {
    match tokio::time::timeout_at(plan.deadline, step).await {
        Ok(r) => r,
        Err(_) => Err(BootError::Deadline(
            plan.config.config.boot_deadline().as_secs(),
        )),
    }
}

/// The default address of the workload's egress proxy.
pub const DEFAULT_EGRESS_LISTEN: &str = "127.0.0.1:3128";

/// A verified, applied and measured root, ready to launch.
pub struct Prepared {
    /// The image's verified manifest, config and index entry.
    pub resolved: Arc<Resolved>,
    /// The applied root the workload runs in.
    pub root: apply::fs::Root,
    /// The workload's process, from the image config and the runtime configuration.
    pub spec: ProcessSpec,
    /// The event log PCR16 was extended with and locked to; a verifier replays it.
    pub log: EventLog,
    /// What the layers put into the root.
    pub report: ApplyReport,
    /// The pinned helpers, verified, each sealed in the memfd it runs from.
    pub helpers: Vec<helpers::Helper>,
    /// cidboot's own loopback services for the workload (attestation API, KMS proxy,
    /// CONNECT proxy), mirrored into its namespace under transparent egress.
    pub loopback: Vec<std::net::SocketAddr>,
    /// The workload's network namespace, under transparent egress.
    pub netns: Option<crate::transparent::ns::Netns>,
}

/// Resolves and verifies the image, measures it into PCR16 and locks it, then applies it into
/// `rootfs`.
pub async fn prepare(plan: &Plan, rootfs: &Path, scratch: &Path) -> Result<Prepared, BootError> {
    let helper_cfg = &plan.config.config.helpers;
    let pinned = helpers::verify(helper_cfg, &plan.helpers_dir)?;
    let from_images = helper_images::fetch_all(
        helper_cfg,
        &plan.gateways,
        &plan.select.platform,
        &plan.limits,
        &plan.apply_limits,
        &scratch.join("helper-images"),
        plan.observer.clone(),
    )
    .await?;
    let verified_helpers = helper_images::merge(pinned, &from_images)?;
    // Every prestart step names a helper that verified, before the workload is fetched.
    for step in &plan.config.config.prestart {
        if !verified_helpers.iter().any(|h| h.name == step.helper) {
            return Err(LaunchError::Helper {
                name: step.helper.clone(),
                reason: "the prestart chain names it, but neither [helpers.pins] nor any helper image provides it".into(),
            }
            .into());
        }
    }
    let resolved = Arc::new(
        oci::resolve(
            &plan.gateways,
            &plan.reference.cid,
            &plan.select,
            &plan.limits,
        )
        .await?,
    );
    info!(cid = %resolved.root, manifest = %resolved.manifest_desc.digest(), layers = resolved.layers.len(), "image resolved and verified");
    let key = LayerKeySource::of(plan, &resolved)?;
    // The event log names nothing the layers hold: it is complete before they are applied.
    let log = EventLog::new(Inputs {
        reference: &plan.reference.canonical(),
        root_cid: &resolved.root,
        manifest_digest: resolved.manifest_desc.digest().as_ref(),
        config_digest: resolved.config.desc.digest().as_ref(),
        encrypted_layers: encrypted_layers(&resolved, key.measured_name()),
        helpers: verified_helpers
            .iter()
            .filter(|h| h.source.is_none())
            .map(|h| (h.name.clone(), h.digest.clone()))
            .collect(),
        helper_images: from_images.into_iter().map(|f| f.measured).collect(),
        runtime_config_digest: &plan.config.digest(),
    });
    // The one place PCR16 is extended and locked: after everything it names has verified (the
    // pins, the helper images, the image's documents), before KMS is asked for anything (it
    // opens keys only for the final PCR16), before a byte of a layer reaches the root, and
    // long before anything from the image runs.
    measure(plan, &log)?;
    let layer_keys = key.open(plan, &resolved).await?;
    let apply_limits = ApplyLimits {
        layer_keys: Arc::new(layer_keys),
        ..plan.apply_limits.clone()
    };
    let report = apply::apply_observed(
        plan.gateways.clone(),
        resolved.clone(),
        rootfs,
        scratch,
        &apply_limits,
        plan.observer.clone(),
    )
    .await?;
    info!(
        layers = report.layers.len(),
        compressed_bytes = report.compressed_bytes,
        uncompressed_bytes = report.uncompressed_bytes,
        seconds = report.seconds,
        "image applied"
    );
    let root = apply::fs::Root::open(rootfs)?;
    // The workload reaches the NSM only through the attestation API, never a device node.
    root.remove(&RelPath::parse(b"dev/nsm", 16, 4)?)?;
    helpers::install(&root, &verified_helpers, &helper_cfg.dir)?;
    let spec = spec::build(&root, &resolved.image_config, &plan.config.config.workload)?;
    Ok(Prepared {
        resolved,
        root,
        spec,
        log,
        report,
        helpers: verified_helpers,
        loopback: Vec::new(),
        netns: None,
    })
}

/// Where the keys of the image's encrypted layers come from. Settled before PCR16 is
/// extended: an image with encrypted layers and no key is refused, naming them, before
/// anything is measured or any layer fetched.
enum LayerKeySource<'a> {
    /// The image has no encrypted layers.
    Clear,
    /// `cidboot run --decryption-key FILE`: a key from outside the configuration.
    Given(&'a crate::ocicrypt::DecryptionKey),
    /// The `[[secrets]]` entry the configuration's `decryption_key` names, which KMS opens
    /// only for an attestation of the final PCR16.
    Sealed(&'a crate::config::Secret),
}

impl<'a> LayerKeySource<'a> {
    fn of(plan: &'a Plan, resolved: &Resolved) -> Result<LayerKeySource<'a>, BootError> {
        let encrypted: Vec<(usize, String)> = resolved
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| crate::ocicrypt::is_encrypted(&l.desc))
            .map(|(i, l)| (i, l.desc.digest().to_string()))
            .collect();
        if encrypted.is_empty() {
            return Ok(LayerKeySource::Clear);
        }
        if let Some(k) = plan.decryption_key.as_deref() {
            return Ok(LayerKeySource::Given(k));
        }
        let cfg = &plan.config.config;
        let Some(name) = &cfg.decryption_key else {
            return Err(crate::ocicrypt::CryptError::NoKey(encrypted).into());
        };
        let secret = cfg
            .secrets
            .iter()
            .find(|s| s.name == *name)
            .ok_or_else(|| {
                BootError::Plan(format!(
                    "decryption_key {name:?} names no [[secrets]] entry"
                ))
            })?;
        Ok(LayerKeySource::Sealed(secret))
    }

    /// The key name the `encrypted-layers` event measures: the `[[secrets]]` name, or empty
    /// for a key from outside the configuration.
    fn measured_name(&self) -> &str {
        match self {
            LayerKeySource::Sealed(s) => &s.name,
            LayerKeySource::Clear | LayerKeySource::Given(_) => "",
        }
    }

    /// The keys of the encrypted layers (after the measurement: KMS opens a sealed key only
    /// for the locked PCR16), kept in memory only.
    async fn open(&self, plan: &Plan, resolved: &Resolved) -> Result<LayerKeys, BootError> {
        use crate::ocicrypt::{open_layers, DecryptionKey};
        let descs = resolved.layers.iter().map(|l| &l.desc);
        let secret = match self {
            LayerKeySource::Clear => return Ok(open_layers(descs, None)?),
            LayerKeySource::Given(k) => return Ok(open_layers(descs, Some(k))?),
            LayerKeySource::Sealed(s) => s,
        };
        let cfg = &plan.config.config;
        let credentials = plan.credentials.clone().ok_or_else(|| {
            BootError::Plan("decryption_key: no AWS credentials to sign the KMS call with".into())
        })?;
        let client = crate::secrets::client(cfg, plan.egress_dialer.clone(), credentials)
            .map_err(BootError::Plan)?;
        let pem =
            crate::secrets::open_one(&client, plan.nsm.as_ref(), secret, plan.sealed.as_ref())
                .await?;
        let key = DecryptionKey::from_pem(&pem, &format!("sealed as {:?}", secret.name))?;
        let keys = open_layers(descs, Some(&key))?;
        let layers: Vec<usize> = (0..resolved.layers.len())
            .filter(|i| keys.get(*i).is_some())
            .collect();
        info!(?layers, key = %secret.name, "encrypted layers opened with the sealed decryption key");
        Ok(keys)
    }
}

/// What the `encrypted-layers` event measures of an image: its encrypted layers' digests in
/// manifest order and the key name (see [`crate::measure::EncryptedLayers`]); `None` when it
/// has none, so that such an image measures no such event. The boot and `cidboot expect`
/// both measure with this.
pub fn encrypted_layers(resolved: &Resolved, key: &str) -> Option<EncryptedLayers> {
    let layers: Vec<String> = resolved
        .layers
        .iter()
        .filter(|l| crate::ocicrypt::is_encrypted(&l.desc))
        .map(|l| l.desc.digest().to_string())
        .collect();
    (!layers.is_empty()).then(|| EncryptedLayers {
        key: key.to_string(),
        layers,
    })
}

/// Extends PCR16 with every event, locks it, and checks the NSM agrees with the replay.
fn measure(plan: &Plan, log: &EventLog) -> Result<(), BootError> {
    let events: Vec<Vec<u8>> = log.events.iter().map(|e| e.digest_bytes()).collect();
    let value = crate::nsm::measure_and_lock(plan.nsm.as_ref(), PCR_INDEX, &events)
        .map_err(|e| BootError::Measure(e.to_string()))?;
    if hex::encode(&value) != log.pcr16 {
        return Err(BootError::Measure(format!(
            "the NSM's PCR16 is {}, but the event log replays to {} (was PCR16 extended before cidboot?)",
            hex::encode(&value),
            log.pcr16
        )));
    }
    info!(pcr16 = %log.pcr16, events = events.len(), "PCR16 extended and locked");
    Ok(())
}

/// Starts the attestation API and tells the workload where it is.
pub async fn serve_api(plan: &Plan, p: &mut Prepared) -> Result<std::net::SocketAddr, BootError> {
    let (addr, serve) =
        crate::api::bind(&plan.attestation_listen, plan.nsm.clone(), p.log.clone()).await?;
    tokio::spawn(serve);
    p.loopback.push(addr);
    let url = format!("CIDBOOT_ATTESTATION_URL=http://{addr}");
    p.spec.merge_env([url.as_str()]);
    Ok(addr)
}

/// Starts the KMS proxy of `[kms_proxy]`, if the configuration has one, and tells the
/// workload where it is (`AWS_ENDPOINT_URL_KMS`). Its calls go to `[kms]` through the boot's
/// egress path, trusting the web PKI roots and `[tls] extra_ca`, signed with the plan's
/// credentials (the parent's in an enclave, the AWS environment's under `cidboot run`).
pub async fn start_kms_proxy(
    plan: &Plan,
    p: &mut Prepared,
) -> Result<Option<std::net::SocketAddr>, BootError> {
    let cfg = &plan.config.config;
    let (Some(proxy), Some(kms)) = (&cfg.kms_proxy, &cfg.kms) else {
        return Ok(None);
    };
    let fail = |e: String| BootError::KmsProxy(e);
    let credentials = plan
        .credentials
        .clone()
        .ok_or_else(|| fail("no AWS credentials to sign its calls with".into()))?;
    let endpoint = kms.endpoint().map_err(|e| fail(e.to_string()))?;
    let tls = crate::transport::tls::client_config_with(None, cfg.tls.extra_ca.as_deref())
        .map_err(|e| fail(e.to_string()))?;
    let client = crate::kms::KmsClient::new(endpoint, plan.egress_dialer.clone(), tls, credentials);
    let listen = proxy.listen().map_err(|e| fail(e.to_string()))?;
    let (addr, serve) = crate::kms::proxy::bind(
        &listen,
        client,
        plan.nsm.clone(),
        crate::kms::proxy::Limits::default(),
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    tokio::spawn(serve);
    p.loopback.push(addr);
    let var = format!("{}=http://{addr}", crate::kms::proxy::ENDPOINT_VAR);
    p.spec.merge_env([var.as_str()]);
    Ok(Some(addr))
}

/// Checks, before anything is fetched, that transparent egress can make the workload's
/// network namespace, and that the workload's egress proxy and the ingress listeners will be
/// able to listen on their TCP addresses: a busy port should fail the boot at
/// once, not after the whole image has been fetched.
pub async fn check_listens(cfg: &crate::config::RuntimeConfig) -> Result<(), BootError> {
    use crate::transport::addr::Addr;
    if cfg.egress.transparent {
        // What the kernel must have for it (network namespaces, local routes) is tried here,
        // on a namespace made and dropped, so that a kernel without it fails the boot before
        // anything is fetched.
        crate::transparent::ns::Netns::create(vec![(
            crate::transparent::names::FAKE_NET,
            crate::transparent::names::FAKE_LEN,
        )])
        .map_err(|e| BootError::Relay(format!("[egress] transparent: {e}")))?;
    }
    let mut listens = Vec::new();
    if !cfg.egress.allow.is_empty() {
        let l = cfg
            .egress
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_EGRESS_LISTEN);
        listens.push(("egress.listen", l));
    }
    listens.extend(
        cfg.ingress
            .iter()
            .map(|i| ("ingress.listen", i.listen.as_str())),
    );
    let kms_proxy = match &cfg.kms_proxy {
        Some(k) => Some(k.listen().map_err(|e| BootError::KmsProxy(e.to_string()))?),
        None => None,
    };
    listens.extend(kms_proxy.as_deref().map(|l| ("kms_proxy.listen", l)));
    for (key, listen) in listens {
        let addr: Addr = listen
            .parse()
            .map_err(|e| BootError::Relay(format!("{key}: {e}")))?;
        // Only TCP is tried: binding a Unix socket would leave its file behind.
        if let Addr::Tcp { .. } = addr {
            addr.bind().await.map(drop).map_err(|e| {
                BootError::Relay(format!(
                    "{key}: cannot listen on {addr}: {e}; free the port or choose another {key} in the configuration"
                ))
            })?;
        }
    }
    Ok(())
}

/// Starts the workload's egress proxy (enforcing the configuration's allowlist) and the
/// ingress listeners, and points the workload at the proxy.
pub async fn start_relays(plan: &Plan, p: &mut Prepared) -> Result<(), BootError> {
    use crate::relay::allow::Allowlist;
    use crate::relay::proxy::{Proxy, ProxyLimits};
    use crate::transport::addr::Addr;
    let cfg = &plan.config.config;
    let relay_err = |what: String| BootError::Relay(what);
    if !cfg.egress.allow.is_empty() {
        let listen = cfg
            .egress
            .listen
            .clone()
            .unwrap_or_else(|| DEFAULT_EGRESS_LISTEN.to_string());
        let addr: Addr = listen
            .parse()
            .map_err(|e| relay_err(format!("egress.listen: {e}")))?;
        let l = addr
            .bind()
            .await
            .map_err(|e| relay_err(format!("egress proxy on {listen}: {e}")))?;
        let bound = l.local_addr().map_err(|e| relay_err(e.to_string()))?;
        let allow = Allowlist::new(&cfg.egress.allow).map_err(|e| relay_err(e.to_string()))?;
        let proxy = Arc::new(Proxy {
            name: "enclave",
            allow,
            limits: ProxyLimits::default(),
            dialer: plan.egress_dialer.clone(),
        });
        tokio::spawn(proxy.serve(l));
        if let Addr::Tcp { host, port } = &bound {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                p.loopback.push(std::net::SocketAddr::new(ip, *port));
            }
        }
        let url = match &bound {
            Addr::Tcp { host, port } => format!("http://{host}:{port}"),
            other => other.to_string(),
        };
        info!(proxy = %url, allow = ?cfg.egress.allow, "workload egress proxy listening");
        let vars = [
            format!("HTTP_PROXY={url}"),
            format!("HTTPS_PROXY={url}"),
            format!("http_proxy={url}"),
            format!("https_proxy={url}"),
            "NO_PROXY=localhost,127.0.0.1,::1".to_string(),
            "no_proxy=localhost,127.0.0.1,::1".to_string(),
        ];
        p.spec.merge_env(vars.iter().map(String::as_str));
    }
    if cfg.egress.transparent {
        start_transparent(plan, p).await?;
    }
    for ing in &cfg.ingress {
        let listen: Addr = ing
            .listen
            .parse()
            .map_err(|e| relay_err(format!("ingress.listen: {e}")))?;
        let l = listen
            .bind()
            .await
            .map_err(|e| relay_err(format!("ingress on {listen}: {e}")))?;
        let target = Addr::Tcp {
            host: "127.0.0.1".into(),
            port: ing.port,
        };
        info!(from = %listen, to = %target, "ingress listening");
        match &p.netns {
            // The workload listens in its own namespace: connect to it there.
            Some(ns) => tokio::spawn(crate::relay::forward::forward_via(
                l,
                Arc::new(crate::transparent::NetnsConnector(ns.clone())),
                target,
                Default::default(),
            )),
            None => tokio::spawn(crate::relay::forward::forward(
                l,
                target,
                Default::default(),
            )),
        };
    }
    Ok(())
}

/// Starts transparent egress: the workload's network namespace, its resolver (written into
/// the root's `/etc/resolv.conf`) and listeners, and the mirrors of cidboot's loopback
/// services; every sandbox from here on joins the namespace.
async fn start_transparent(plan: &Plan, p: &mut Prepared) -> Result<(), BootError> {
    let cfg = &plan.config.config;
    let fail = |e: String| BootError::Relay(format!("[egress] transparent: {e}"));
    let allow =
        crate::relay::allow::Allowlist::new(&cfg.egress.allow).map_err(|e| fail(e.to_string()))?;
    let t = crate::transparent::start(
        allow,
        cfg.egress.transparent_limits(),
        plan.egress_dialer.clone(),
        &p.loopback,
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    write_resolv_conf(&p.root).map_err(|e| fail(format!("the root's /etc/resolv.conf: {e}")))?;
    p.netns = Some(t.netns);
    Ok(())
}

/// Replaces the root's `/etc/resolv.conf` (whatever the image put there: a file, a link)
/// with one naming the namespace's resolver.
fn write_resolv_conf(root: &apply::fs::Root) -> Result<(), String> {
    let rel = |s: &str| {
        crate::apply::path::RelPath::parse(s.as_bytes(), 4096, 256).map_err(|e| e.to_string())
    };
    root.write_file(
        &rel("etc/resolv.conf")?,
        crate::transparent::RESOLV_CONF.as_bytes(),
        0o644,
    )
    .map_err(|e| e.to_string())
}

/// Runs the prestart chain, then starts the workload. Its stdout and stderr are pipes, for
/// the log sender or [`crate::launch::exec::pump_to_own`].
pub async fn launch(plan: &Plan, p: &mut Prepared) -> Result<tokio::process::Child, BootError> {
    let cmd = prepare_launch(plan, p).await?;
    Ok(cmd.spawn().await?)
}

/// Opens the secrets the configuration names (see [`crate::secrets`]): after the measurement
/// (KMS checks the PCRs it locked), before anything from the image runs.
pub async fn open_secrets(plan: &Plan) -> Result<crate::secrets::Opened, BootError> {
    let cfg = &plan.config.config;
    if cfg.secrets.is_empty() {
        return Ok(crate::secrets::Opened::default());
    }
    let credentials = plan.credentials.clone().ok_or_else(|| {
        BootError::Plan("[[secrets]]: no AWS credentials to sign the KMS calls with".into())
    })?;
    let client = crate::secrets::client(cfg, plan.egress_dialer.clone(), credentials)
        .map_err(BootError::Plan)?;
    info!(count = cfg.secrets.len(), kms = %client.endpoint(), "opening the workload's secrets");
    let opened = crate::secrets::open(
        &client,
        plan.nsm.as_ref(),
        &cfg.secrets,
        plan.sealed.as_ref(),
    )
    .await?;
    Ok(opened)
}

/// Opens the secrets, runs the prestart chain and returns the workload's sandboxed command,
/// ready to spawn, with its secrets.
pub async fn prepare_launch(plan: &Plan, p: &mut Prepared) -> Result<Sandboxed, BootError> {
    let secrets = open_secrets(plan).await?;
    let sandbox = crate::launch::exec::Sandbox {
        netns: p.netns.as_ref().map(|n| n.shared_fd()),
        ..plan.sandbox.clone()
    };
    helpers::run_chain(
        &p.root,
        &plan.config.config.prestart,
        &plan.config.config.helpers.dir,
        &p.helpers,
        &mut p.spec,
        &sandbox,
    )
    .await?;
    info!(argv = ?p.spec.argv, uid = p.spec.user.uid, gid = p.spec.user.gid, cwd = %p.spec.cwd, secrets = ?secrets, "starting the workload");
    Ok(crate::launch::exec::command_with_secrets(
        &p.root,
        &p.spec,
        &sandbox,
        None,
        Some(&secrets),
    )?)
}
