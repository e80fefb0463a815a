use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{image, CliError, FetchArgs};
use crate::config::Loaded;
use crate::measure::{EventLog, Inputs};
use crate::oci::{self, Limits};
use crate::reference::ImageRef;
use crate::verify::{self, At, Measurements, Policy, Status};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The document: a file (raw CBOR or base64), or - for stdin.
    pub document: PathBuf,
    /// Root certificate (PEM) instead of the embedded AWS Nitro root G1 (for tests).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Instant at which certificates must be valid: doc (the document's timestamp), now, or RFC 3339.
    #[arg(long, default_value = "now")]
    pub at: String,
    /// A PCR the document must hold: N=HEX (repeatable).
    #[arg(long = "pcr", value_name = "N=HEX")]
    pub pcrs: Vec<String>,
    /// Expect PCR16 as measured for this image (resolved through --gateway) and --config.
    #[arg(long, value_name = "REF", conflicts_with = "expect_pcr16")]
    pub expect_image: Option<String>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The runtime configuration the enclave was given (for --expect-image; default: none).
    /// Its `[fetch]`, `platform`, `tag` and `digest` apply where their flags are not given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The event log served by the enclave's GET /v1/measurements (or `cidboot run --json`'s
    /// "measurements"): every event is recomputed and replayed to the document's PCR16.
    #[arg(long, value_name = "LOG")]
    pub measurements: Option<PathBuf>,
    /// Expect this manifest digest in the event log.
    #[arg(long, value_name = "sha256:HEX", requires = "measurements")]
    pub expect_manifest: Option<String>,
    /// Expect this root CID in the event log (`CID` or `ipfs://CID`).
    #[arg(long, value_name = "CID", requires = "measurements")]
    pub expect_cid: Option<String>,
    /// Expect this image config digest in the event log.
    #[arg(long, value_name = "sha256:HEX", requires = "measurements")]
    pub expect_config_digest: Option<String>,
    /// Expect this runtime configuration digest (sha256 of the exact TOML bytes) in the event log.
    #[arg(long, value_name = "sha256:HEX", requires = "measurements")]
    pub expect_runtime_config: Option<String>,
    /// Expect this helper in the event log (repeatable); the log must measure exactly these.
    #[arg(
        long = "expect-helper",
        value_name = "NAME=sha256:HEX",
        requires = "measurements"
    )]
    pub expect_helpers: Vec<String>,
    /// Expect this PCR16 value.
    #[arg(long, value_name = "HEX")]
    pub expect_pcr16: Option<String>,
    /// Expect exactly this nonce in the document (the one sent to POST /v1/attestation): proves
    /// the document is fresh, not replayed. Hex or base64, as sent: a value that is hex is read
    /// as hex; write hex:… or base64:… to say which.
    #[arg(long, value_name = "HEX|BASE64")]
    pub nonce: Option<String>,
    /// Expect exactly this user_data in the document (what the workload bound to it, such as a
    /// hash of its TLS public key). Hex or base64, as for --nonce.
    #[arg(long, value_name = "HEX|BASE64")]
    pub user_data: Option<String>,
    /// PCRs the document must list, that is, that must be locked: a range or a list (16-31, 16,17).
    #[arg(long, value_name = "RANGE")]
    pub require_locked: Option<String>,
    /// Pass a document although nothing is pinned (no --pcr, --expect-*): INSECURE, it then
    /// proves only that some enclave produced it.
    #[arg(long)]
    pub allow_unpinned: bool,
    /// Accept an emulated NSM's UNSIGNED document (PCRs, nonce and user_data still checked).
    /// Never turns a signed document's failure into a pass.
    #[arg(long)]
    pub insecure_unsigned: bool,
    /// Print the result as JSON (exit status 0 only when the document passes).
    #[arg(long)]
    pub json: bool,
}

fn hex_arg(what: &str, v: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(v.trim_start_matches("0x"))
        .map_err(|e| CliError::Usage(format!("{what}: not hex: {e}")))
}

/// A nonce or user_data as the attestation API takes them: hex or base64 (standard, or
/// URL-safe; padded or not). `hex:` or `base64:` says which; otherwise a value of hex digits
/// (even in number, `0x` allowed) is hex, anything else base64.
fn bytes_arg(what: &str, v: &str) -> Result<Vec<u8>, CliError> {
    use base64::Engine;
    let b64 = |t: &str| {
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|e| e.decode(t).ok())
            .ok_or_else(|| CliError::Usage(format!("{what} {v:?}: neither hex nor base64")))
    };
    if let Some(h) = v.strip_prefix("hex:") {
        return hex_arg(what, h);
    }
    if let Some(b) = v.strip_prefix("base64:") {
        return b64(b);
    }
    let digits = v.strip_prefix("0x").unwrap_or(v);
    if digits.len() % 2 == 0 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex_arg(what, digits);
    }
    b64(v)
}

fn read_input(p: &PathBuf) -> Result<Vec<u8>, CliError> {
    read_capped(p, crate::nsm::document::MAX_DOCUMENT * 2)
}

/// Reads at most `cap + 1` bytes, so that the reader sees an input over its limit.
fn read_capped(p: &PathBuf, cap: usize) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    let cap = cap as u64 + 1;
    let r: Box<dyn Read> = if p.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(p).map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?,
        )
    };
    r.take(cap)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
    Ok(buf)
}

/// The measurement an image produces under a configuration.
async fn expected_log(
    reference: &str,
    fetch: &FetchArgs,
    config: Option<&PathBuf>,
) -> Result<EventLog, CliError> {
    let r = ImageRef::parse(reference)?;
    let cfg = match config {
        Some(p) => Loaded::load(p)?,
        None => Loaded::empty(),
    };
    let gw = image::gateways(&r, fetch, &cfg.config)?;
    let selector = fetch.selector(&cfg.config)?;
    let spinner = super::progress::Spinner::new(format!("resolving {}", r.canonical()));
    let resolved = oci::resolve(&gw, &r.cid, &selector, &Limits::default()).await?;
    drop(spinner);
    // Helpers from dependency images are measured by their content: fetch and verify them.
    let scratch = crate::scratch::PrivateDir::create(&std::env::temp_dir(), "cidboot-expect-")?;
    let from_images = crate::boot::helper_images::fetch_all(
        &cfg.config.helpers,
        &gw,
        &selector.platform,
        &Limits::default(),
        &cfg.config.layers.apply_to(
            &crate::config::Layers::default(),
            crate::apply::ApplyLimits::default(),
        ),
        scratch.path(),
        super::progress::layers(),
    )
    .await?;
    Ok(EventLog::new(Inputs {
        reference: &r.canonical(),
        root_cid: &resolved.root,
        manifest_digest: resolved.manifest_desc.digest().as_ref(),
        config_digest: resolved.config.desc.digest().as_ref(),
        // As the enclave measures them: opened by the key the configuration names (empty
        // when it names none, as for `cidboot run --decryption-key`).
        encrypted_layers: crate::boot::encrypted_layers(
            &resolved,
            cfg.config.decryption_key.as_deref().unwrap_or_default(),
        ),
        helpers: cfg
            .config
            .helpers
            .pins
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect(),
        helper_images: from_images.into_iter().map(|f| f.measured).collect(),
        runtime_config_digest: &cfg.digest(),
    }))
}

/// The event log and the values expected in it.
fn measurements(p: &PathBuf, a: &VerifyArgs) -> Result<Measurements, CliError> {
    let digest = |flag: &str, v: &Option<String>| -> Result<Option<String>, CliError> {
        match v {
            Some(d) if crate::measure::is_sha256(d) => Ok(Some(d.clone())),
            Some(d) => Err(CliError::Usage(format!(
                "{flag} {d:?} is not sha256:<64 lowercase hex>"
            ))),
            None => Ok(None),
        }
    };
    let mut helpers = BTreeMap::new();
    for h in &a.expect_helpers {
        let (name, d) = h
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--expect-helper {h:?} is not NAME=DIGEST")))?;
        let d = digest("--expect-helper", &Some(d.to_string()))?.unwrap_or_default();
        if helpers.insert(name.to_string(), d).is_some() {
            return Err(CliError::Usage(format!(
                "--expect-helper {name} given twice"
            )));
        }
    }
    let cid = a
        .expect_cid
        .as_deref()
        .map(|c| crate::reference::parse_cid(c.strip_prefix("ipfs://").unwrap_or(c)))
        .transpose()?;
    Ok(Measurements {
        log: read_capped(p, crate::measure::MAX_LOG)?,
        manifest_digest: digest("--expect-manifest", &a.expect_manifest)?,
        cid,
        config_digest: digest("--expect-config-digest", &a.expect_config_digest)?,
        runtime_config_digest: digest("--expect-runtime-config", &a.expect_runtime_config)?,
        helpers,
    })
}

/// `16-31`, `16,17,20-25`: PCR indexes below 32.
fn parse_pcr_set(s: &str) -> Result<BTreeSet<u16>, CliError> {
    let bad = || {
        CliError::Usage(format!(
            "--require-locked {s:?}: not a list or range of PCRs 0-31 (e.g. 16-31)"
        ))
    };
    let index = |t: &str| -> Result<u16, CliError> {
        let i: u16 = t
            .trim()
            .trim_start_matches("PCR")
            .parse()
            .map_err(|_| bad())?;
        if i >= crate::nsm::PCR_COUNT {
            return Err(bad());
        }
        Ok(i)
    };
    let mut set = BTreeSet::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (index(lo)?, index(hi)?);
                if lo > hi {
                    return Err(bad());
                }
                set.extend(lo..=hi);
            }
            None => {
                set.insert(index(part)?);
            }
        }
    }
    Ok(set)
}

fn parse_at(s: &str) -> Result<At, CliError> {
    Ok(match s {
        "doc" => At::Document,
        "now" => At::Now,
        t => {
            let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| CliError::Usage(format!("--at {t:?}: {e}")))?;
            At::Time(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(
                        u64::try_from(dt.unix_timestamp()).unwrap_or(0),
                    ),
            )
        }
    })
}

pub async fn verify(a: VerifyArgs) -> Result<i32, CliError> {
    let raw = read_input(&a.document)?;
    // Not an attestation document at all: the answer is no, as for one that fails a check.
    let doc =
        verify::decode_input(&raw).map_err(|e| CliError::Rejected(format!("NOT verified: {e}")))?;
    let root_der = match &a.root {
        Some(p) => verify::pem_cert(
            &std::fs::read_to_string(p)
                .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?,
        )
        .map_err(|e| CliError::Usage(e.to_string()))?,
        None => verify::aws_root().map_err(|e| CliError::Usage(e.to_string()))?,
    };
    let mut pcrs = BTreeMap::new();
    for p in &a.pcrs {
        let (n, v) = p
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--pcr {p:?} is not N=HEX")))?;
        let n: u16 = n
            .trim_start_matches("PCR")
            .parse()
            .map_err(|_| CliError::Usage(format!("--pcr {p:?}: bad index")))?;
        pcrs.insert(n, hex_arg("--pcr", v)?);
    }
    let mut notes = Vec::new();
    if let Some(r) = &a.expect_image {
        let log = expected_log(r, &a.fetch, a.config.as_ref()).await?;
        notes.push(format!("PCR16 expected for {r}: {}", log.pcr16));
        pcrs.insert(16, hex_arg("pcr16", &log.pcr16)?);
    }
    let measurements = match &a.measurements {
        Some(p) => Some(measurements(p, &a)?),
        None => None,
    };
    if let Some(v) = &a.expect_pcr16 {
        pcrs.insert(16, hex_arg("--expect-pcr16", v)?);
    }
    let policy = Policy {
        root_der,
        at: parse_at(&a.at)?,
        pcrs,
        nonce: a
            .nonce
            .as_deref()
            .map(|v| bytes_arg("--nonce", v))
            .transpose()?,
        user_data: a
            .user_data
            .as_deref()
            .map(|v| bytes_arg("--user-data", v))
            .transpose()?,
        insecure_unsigned: a.insecure_unsigned,
        require_locked: match &a.require_locked {
            Some(r) => parse_pcr_set(r)?,
            None => BTreeSet::new(),
        },
        measurements,
        allow_unpinned: a.allow_unpinned,
    };
    if policy.is_pinned()
        && !(0..=2).all(|i| {
            policy
                .pcrs
                .get(&i)
                .is_some_and(|v| verify::void_pin(i, v).is_none())
        })
    {
        notes.push("PCR0, PCR1 and PCR2 are not all pinned: PCR16 and the event log prove what was measured only if the EIF that measured it is pinned too".into());
    }
    let report = verify::verify(&doc, &policy);
    if !policy.is_pinned() {
        if policy.allow_unpinned {
            errln!("WARNING: INSECURE VERIFICATION: nothing is pinned (--allow-unpinned): the document is not tied to any EIF or image.");
        } else {
            errln!("error: NOTHING IS PINNED: without --pcr, --expect-image, --expect-pcr16, or --expect-cid, --expect-manifest or --expect-config-digest with --measurements, the document is not tied to any EIF or image, so it is refused (--allow-unpinned to check only its signature and chain).");
        }
        for v in policy.void_pins() {
            errln!("error: {v}");
        }
    }
    if report.insecure {
        errln!("WARNING: INSECURE VERIFICATION: the document is unsigned (an emulated NSM); its signature and certificate chain were NOT checked, and it proves nothing about hardware.");
    }
    if a.json {
        /// The report and its notes, in this order (docs/json.md).
        #[derive(serde::Serialize)]
        struct VerifyOut<'a> {
            #[serde(flatten)]
            report: &'a verify::Report,
            notes: &'a [String],
        }
        let v = VerifyOut {
            report: &report,
            notes: &notes,
        };
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default())?;
    } else {
        for n in &notes {
            outln!("note: {n}")?;
        }
        if let Some(f) = &report.measured {
            outln!("measured: reference {}", f.reference)?;
            outln!("measured: cid {}", f.cid)?;
            outln!("measured: manifest {}", f.manifest_digest)?;
            outln!("measured: config {}", f.config_digest)?;
            if let Some(e) = &f.encrypted_layers {
                let key = match e.key.as_str() {
                    "" => "a key from outside the configuration".to_string(),
                    k => format!("the sealed secret {k}"),
                };
                outln!(
                    "measured: encrypted layers {} opened with {key}",
                    e.layers.join(" ")
                )?;
            }
            for i in &f.helper_images {
                outln!(
                    "measured: helper image {} pinned {} manifest {}",
                    i.reference,
                    i.pinned_digest,
                    i.manifest_digest
                )?;
            }
            for (n, d) in &f.helpers {
                match f.helper_sources.get(n) {
                    Some(m) => outln!("measured: helper {n} {d} from the helper image {m}")?,
                    None => outln!("measured: helper {n} {d}")?,
                }
            }
            outln!("measured: runtime config {}", f.runtime_config_digest)?;
        }
        for c in &report.checks {
            let s = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skipped => "SKIP",
            };
            outln!("{s} {}: {}", c.name, c.detail)?;
        }
        outln!(
            "{}",
            if report.ok {
                "verified"
            } else {
                "NOT verified"
            }
        )?;
    }
    Ok(if report.ok { 0 } else { 1 })
}

#[derive(Args, Debug)]
pub struct ExpectArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The runtime configuration the enclave will be given (default: none). Its `[fetch]`,
    /// `platform`, `tag` and `digest` apply where their flags are not given.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The JSON that eif_build (or nitro-cli build-enclave) printed, for PCR0-2.
    #[arg(long)]
    pub eif_pcrs: Option<PathBuf>,
    /// Print an AWS KMS key-policy statement that lets --principal decrypt only from an
    /// enclave with these PCR0, PCR1, PCR2 and PCR16 (needs --eif-pcrs).
    #[arg(long, requires = "principal")]
    pub kms_policy: bool,
    /// The IAM principal (ARN) of the parent instance's role, for --kms-policy.
    #[arg(long, value_name = "ARN", requires = "kms_policy")]
    pub principal: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// PCR values by index, hex: printed as `PCR<n>` in numeric order (PCR2 before PCR16).
#[derive(Default)]
struct Pcrs(BTreeMap<u16, String>);

impl Pcrs {
    /// The value of `PCR<n>`.
    fn get(&self, name: &str) -> Option<&str> {
        let i: u16 = name.strip_prefix("PCR")?.parse().ok()?;
        self.0.get(&i).map(String::as_str)
    }
}

impl serde::Serialize for Pcrs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (i, v) in &self.0 {
            m.serialize_entry(&format!("PCR{i}"), v)?;
        }
        m.end()
    }
}

/// `expect --json`, serialized directly so that its keys keep this order.
#[derive(serde::Serialize)]
struct ExpectOut<'a> {
    cid: &'a str,
    manifest_digest: &'a str,
    config_digest: &'a str,
    pcrs: &'a Pcrs,
    measurements: &'a EventLog,
}

/// The key-policy statement for `expect --kms-policy`: the principal may decrypt and generate
/// data keys only for a request whose attestation document carries exactly these PCRs. KMS
/// names PCR0 `ImageSha384`; its values are hex, compared ignoring case.
fn kms_statement(principal: &str, pcrs: &Pcrs) -> Result<Statement, CliError> {
    let mut condition = Vec::new();
    for (pcr, key) in [
        ("PCR0", "kms:RecipientAttestation:ImageSha384"),
        ("PCR1", "kms:RecipientAttestation:PCR1"),
        ("PCR2", "kms:RecipientAttestation:PCR2"),
        ("PCR16", "kms:RecipientAttestation:PCR16"),
    ] {
        let v = pcrs.get(pcr).ok_or_else(|| {
            CliError::Usage(format!("--kms-policy needs {pcr} (give --eif-pcrs)"))
        })?;
        condition.push((key, v.to_string()));
    }
    if ["PCR0", "PCR1", "PCR2"]
        .iter()
        .any(|k| pcrs.get(k).is_some_and(|v| v.bytes().all(|b| b == b'0')))
    {
        return Err(CliError::Usage(
            "--kms-policy: PCR0, PCR1 or PCR2 is all zeros, as in a debug-mode enclave, which anyone can run with any code: no key policy may trust it".into(),
        ));
    }
    Ok(Statement {
        sid: "DecryptOnlyInTheAttestedEnclave",
        effect: "Allow",
        principal: json!({ "AWS": principal }),
        action: ["kms:Decrypt", "kms:GenerateDataKey*"],
        resource: "*",
        condition: Condition {
            string_equals_ignore_case: Ordered(condition),
        },
    })
}

/// The key-policy statement, serialized in the order docs/attestation.md shows it (PCR0-2,
/// then PCR16).
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Statement {
    sid: &'static str,
    effect: &'static str,
    principal: serde_json::Value,
    action: [&'static str; 2],
    resource: &'static str,
    condition: Condition,
}

#[derive(serde::Serialize)]
struct Condition {
    #[serde(rename = "StringEqualsIgnoreCase")]
    string_equals_ignore_case: Ordered,
}

/// A JSON object with its keys in this order.
struct Ordered(Vec<(&'static str, String)>);

impl serde::Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

pub async fn expect(a: ExpectArgs) -> Result<(), CliError> {
    let principal = match (&a.principal, a.kms_policy, &a.eif_pcrs) {
        (_, true, None) => {
            return Err(CliError::Usage(
                "--kms-policy needs --eif-pcrs: a key policy without PCR0-2 would release the key to any EIF that extends the same PCR16".into(),
            ))
        }
        (Some(p), true, Some(_)) if p.starts_with("arn:") => Some(p.clone()),
        (Some(p), true, Some(_)) => {
            return Err(CliError::Usage(format!("--principal {p:?} is not an ARN")))
        }
        _ => None,
    };
    // The EIF's PCRs are checked before anything is fetched.
    let mut pcrs = Pcrs::default();
    if let Some(p) = &a.eif_pcrs {
        let eif = crate::nsm::parse_eif_pcrs(&read_input(p)?)
            .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
        for (i, v) in eif {
            pcrs.0.insert(i, hex::encode(v));
        }
    }
    let log = expected_log(&a.reference, &a.fetch, a.config.as_ref()).await?;
    pcrs.0.insert(crate::measure::PCR_INDEX, log.pcr16.clone());
    if let Some(principal) = principal {
        let statement = kms_statement(&principal, &pcrs)?;
        outln!(
            "{}",
            serde_json::to_string_pretty(&statement).unwrap_or_default()
        )?;
    } else if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&ExpectOut {
                cid: log.events.get(1).map_or("", |e| e.value.as_str()),
                manifest_digest: log.events.get(2).map_or("", |e| e.value.as_str()),
                config_digest: log.events.get(3).map_or("", |e| e.value.as_str()),
                pcrs: &pcrs,
                measurements: &log
            })
            .unwrap_or_default()
        )?;
    } else {
        for (i, v) in &pcrs.0 {
            outln!("PCR{i} {v}")?;
        }
    }
    Ok(())
}
