//! The one place a boot's [`Plan`] is made, for PID 1 and for `cidboot run` alike. Everything
//! comes from the measured runtime configuration; `cidboot run` may add to it from its
//! command line ([`Overrides`]), the enclave never does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{BootError, Plan};
use crate::apply::{ApplyLimits, Observer};
use crate::config::{Fetch, Loaded, RuntimeConfig};
use crate::fetch::{GatewayPolicy, Gateways};
use crate::launch::exec::Sandbox;
use crate::nsm::Nsm;
use crate::oci::{Limits, Platform, Selector};
use crate::reference::ImageRef;
use crate::transport::http::{HttpClient, Timeouts};
use crate::transport::Connector;

/// The platform taken from an index when neither the configuration nor a flag names one.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

/// What `cidboot run`'s command line adds to the configuration. The enclave passes none.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The image, instead of the configuration's `image`.
    pub reference: Option<String>,
    /// Gateways tried before the configuration's.
    pub gateways: Vec<String>,
    /// A CA file trusted beside the configuration's `[tls] extra_ca`.
    pub ca: Option<PathBuf>,
    /// The index entry's platform, over the configuration's `platform`.
    pub platform: Option<String>,
    /// The index entry's tag, over the configuration's `tag`.
    pub tag: Option<String>,
    /// The index entry's manifest digest, over the configuration's `digest`.
    pub digest: Option<String>,
    /// Fetch flags, each of which wins over the configuration's `[fetch]` key of that name
    /// (the command line sets no parallel-range key).
    pub fetch: Fetch,
    /// Where the attestation API listens, over the configuration's `[attestation] listen`.
    pub attestation_listen: Option<String>,
    /// Layer limits, each of which wins over the configuration's `[layers]` key of that name.
    pub layers: crate::config::Layers,
}

/// What the machine the boot runs on provides.
pub struct Machine {
    /// How gateways (and the workload's egress) are reached.
    pub egress_dialer: Arc<dyn Connector>,
    /// The NSM: the device in an enclave, the software one under `cidboot run`.
    pub nsm: Arc<dyn Nsm>,
    /// Where the pinned helpers are.
    pub helpers_dir: PathBuf,
    /// Where each sandbox stages its root.
    pub stage: PathBuf,
    /// Who watches the layers arrive.
    pub observer: Arc<dyn Observer>,
    /// The sealed secrets that came with the boot (the parent's, or `cidboot run --secrets`).
    pub sealed: Option<crate::kms::sealed::SecretsFile>,
    /// What signs the KMS calls that open them: the parent's credentials in an enclave, the
    /// AWS environment and profile under `cidboot run`.
    pub credentials: Option<Arc<dyn crate::kms::Credentials>>,
    /// The private key that opens the image's encrypted layers (`cidboot run
    /// --decryption-key`); not measured, like the sealed secrets.
    pub decryption_key: Option<Arc<crate::ocicrypt::DecryptionKey>>,
}

/// Which index entry: the flags, else the configuration, else linux/amd64 and no tag.
pub fn selector(
    cfg: &RuntimeConfig,
    platform: Option<&str>,
    tag: Option<&str>,
    digest: Option<&str>,
) -> Result<Selector, crate::oci::OciError> {
    let platform: Platform = platform
        .or(cfg.platform.as_deref())
        .unwrap_or(DEFAULT_PLATFORM)
        .parse()?;
    let (tag, digest) = if tag.is_some() || digest.is_some() {
        (tag.map(String::from), digest.map(String::from))
    } else {
        (cfg.tag.clone(), cfg.digest.clone())
    };
    Selector::new(platform, tag, digest)
}

/// The HTTP timeouts and the gateway policy: the flags, else `[fetch]`, else the defaults.
pub fn fetch_policy(cfg: &Fetch, o: &Fetch) -> (Timeouts, GatewayPolicy) {
    let t = Timeouts::default();
    let p = GatewayPolicy::default();
    let secs = |flag: Option<u64>, key: Option<u64>, default: Duration| {
        flag.or(key)
            .map_or(default, |s| Duration::from_secs(s.max(1)))
    };
    (
        Timeouts {
            connect: secs(o.connect_timeout_secs, cfg.connect_timeout_secs, t.connect),
            first_byte: secs(
                o.first_byte_timeout_secs,
                cfg.first_byte_timeout_secs,
                t.first_byte,
            ),
            idle: secs(o.idle_timeout_secs, cfg.idle_timeout_secs, t.idle),
            min_rate: o.min_rate.or(cfg.min_rate).unwrap_or(t.min_rate),
            rate_window: secs(o.rate_window_secs, cfg.rate_window_secs, t.rate_window),
        },
        GatewayPolicy {
            attempts_per_gateway: o
                .tries
                .or(cfg.tries)
                .unwrap_or(p.attempts_per_gateway)
                .max(1),
            object_deadline: secs(
                o.object_deadline_secs,
                cfg.object_deadline_secs,
                p.object_deadline,
            ),
            parallel: cfg.parallel_policy(),
            ..p
        },
    )
}

/// The gateways for `r`: the reference's own, then `extra`, then the configuration's.
pub fn gateways(
    r: &ImageRef,
    extra: &[String],
    cfg: &RuntimeConfig,
    ca: Option<&std::path::Path>,
    fetch: &Fetch,
    dialer: Arc<dyn Connector>,
) -> Result<Arc<Gateways>, BootError> {
    let mut urls: Vec<String> = r.gateway.iter().cloned().collect();
    urls.extend(extra.iter().cloned());
    urls.extend(cfg.gateways.iter().cloned());
    if urls.is_empty() {
        return Err(BootError::Plan(
            "no gateway: give --gateway URL, a https://<gateway>/ipfs/<CID> reference, or `gateways` in the configuration".into(),
        ));
    }
    let tls = crate::transport::tls::client_config_with(ca, cfg.tls.extra_ca.as_deref())
        .map_err(|e| BootError::Plan(e.to_string()))?;
    let (timeouts, policy) = fetch_policy(&cfg.fetch, fetch);
    Gateways::new(HttpClient::new(dialer, tls, timeouts), &urls, policy)
        .map_err(|e| BootError::Plan(e.to_string()))
}

/// Where the attestation API listens: the flag, else the configuration's, else the default.
pub fn attestation_listen(cfg: &RuntimeConfig, o: &Overrides) -> String {
    o.attestation_listen
        .clone()
        .or_else(|| cfg.attestation.listen.clone())
        .unwrap_or_else(|| crate::api::DEFAULT_LISTEN.to_string())
}

/// Makes the plan of a boot that starts now (its deadline runs from here).
pub fn build(config: Loaded, o: &Overrides, m: Machine) -> Result<Plan, BootError> {
    let cfg = &config.config;
    let image = o
        .reference
        .clone()
        .or_else(|| cfg.image.clone())
        .ok_or_else(|| {
            BootError::Plan(
                "no image: set `image` in the configuration (`cidboot run` also takes it as REF)"
                    .into(),
            )
        })?;
    let reference = ImageRef::parse(&image).map_err(|e| BootError::Plan(e.to_string()))?;
    // A secret that did not come with the boot stops it now, not after the whole fetch.
    crate::secrets::check_present(&cfg.secrets, m.sealed.as_ref())?;
    let select = selector(
        cfg,
        o.platform.as_deref(),
        o.tag.as_deref(),
        o.digest.as_deref(),
    )?;
    let gateways = gateways(
        &reference,
        &o.gateways,
        cfg,
        o.ca.as_deref(),
        &o.fetch,
        m.egress_dialer.clone(),
    )?;
    let attestation_listen = attestation_listen(cfg, o);
    let sandbox = Sandbox {
        stage: m.stage,
        policy: cfg.workload.policy(),
        cgroup: None,
        netns: None,
    };
    let deadline = super::deadline_for(&config);
    let apply_limits = cfg.layers.apply_to(&o.layers, ApplyLimits::default());
    Ok(Plan {
        reference,
        config,
        select,
        gateways,
        helpers_dir: m.helpers_dir,
        sandbox,
        limits: Limits::default(),
        apply_limits,
        nsm: m.nsm,
        attestation_listen,
        egress_dialer: m.egress_dialer,
        deadline,
        observer: m.observer,
        sealed: m.sealed,
        credentials: m.credentials,
        decryption_key: m.decryption_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> RuntimeConfig {
        Loaded::parse(toml.as_bytes().to_vec()).unwrap().config
    }

    #[test]
    fn fetch_settings_come_from_the_flags_then_the_configuration_then_the_defaults() {
        let c = cfg("[fetch]\nconnect_timeout_secs = 4\ntries = 7\nmin_rate = 0\n");
        let (t, p) = fetch_policy(&c.fetch, &Fetch::default());
        assert_eq!(t.connect, Duration::from_secs(4));
        assert_eq!(t.min_rate, 0);
        assert_eq!(p.attempts_per_gateway, 7);
        assert_eq!(t.idle, Timeouts::default().idle, "unset: the default");
        assert_eq!(p.object_deadline, GatewayPolicy::default().object_deadline);

        let flags = Fetch {
            connect_timeout_secs: Some(2),
            tries: Some(1),
            object_deadline_secs: Some(60),
            ..Fetch::default()
        };
        let (t, p) = fetch_policy(&c.fetch, &flags);
        assert_eq!(t.connect, Duration::from_secs(2));
        assert_eq!(p.attempts_per_gateway, 1);
        assert_eq!(p.object_deadline, Duration::from_secs(60));
        assert_eq!(t.min_rate, 0, "the configuration's, no flag given");
    }

    #[test]
    fn the_platform_and_entry_come_from_the_flags_then_the_configuration() {
        let c = cfg("platform = \"linux/arm64\"\ntag = \"v2\"\n");
        let s = selector(&c, None, None, None).unwrap();
        assert_eq!(s.platform.to_string(), "linux/arm64");
        assert_eq!(s.tag.as_deref(), Some("v2"));
        let s = selector(
            &c,
            Some("linux/amd64"),
            None,
            Some(&format!("sha256:{}", "a".repeat(64))),
        )
        .unwrap();
        assert_eq!(s.platform.to_string(), "linux/amd64");
        assert_eq!(
            s.tag, None,
            "a flag's digest replaces the configuration's tag"
        );
        let s = selector(&RuntimeConfig::default(), None, None, None).unwrap();
        assert_eq!(s.platform.to_string(), DEFAULT_PLATFORM);
    }
}
