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
    /// the document is fresh, not replayed.
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    /// Expect exactly this user_data in the document (what the workload bound to it, such as a
    /// hash of its TLS public key).
    #[arg(long, value_name = "HEX")]
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
            .map(|v| hex_arg("--nonce", v))
            .transpose()?,
        user_data: a
            .user_data
            .as_deref()
            .map(|v| hex_arg("--user-data", v))
            .transpose()?,
        insecure_unsigned: a.insecure_unsigned,
        require_locked: match &a.require_locked {
            Some(r) => parse_pcr_set(r)?,
            None => BTreeSet::new(),
        },
        measurements,
        allow_unpinned: a.allow_unpinned,
    };
    if policy.is_pinned() && !(0..=2).all(|i| policy.pcrs.contains_key(&i)) {
        notes.push("PCR0, PCR1 and PCR2 are not all pinned: PCR16 and the event log prove what was measured only if the EIF that measured it is pinned too".into());
    }
    let report = verify::verify(&doc, &policy);
    if !policy.is_pinned() {
        if policy.allow_unpinned {
            errln!("WARNING: INSECURE VERIFICATION: nothing is pinned (--allow-unpinned): the document is not tied to any EIF or image.");
        } else {
            errln!("error: NOTHING IS PINNED: without --pcr, --expect-image, --expect-pcr16 or --expect-* with --measurements the document is not tied to any EIF or image, so it is refused (--allow-unpinned to check only its signature and chain).");
        }
    }
    if report.insecure {
        errln!("WARNING: INSECURE VERIFICATION: the document is unsigned (an emulated NSM); its signature and certificate chain were NOT checked, and it proves nothing about hardware.");
    }
    if a.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["notes"] = json!(notes);
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

/// The key-policy statement for `expect --kms-policy`: the principal may decrypt and generate
/// data keys only for a request whose attestation document carries exactly these PCRs. KMS
/// names PCR0 `ImageSha384`; its values are hex, compared ignoring case.
fn kms_statement(
    principal: &str,
    pcrs: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, CliError> {
    let mut condition = serde_json::Map::new();
    for (pcr, key) in [
        ("PCR0", "kms:RecipientAttestation:ImageSha384"),
        ("PCR1", "kms:RecipientAttestation:PCR1"),
        ("PCR2", "kms:RecipientAttestation:PCR2"),
        ("PCR16", "kms:RecipientAttestation:PCR16"),
    ] {
        let v = pcrs.get(pcr).and_then(|v| v.as_str()).ok_or_else(|| {
            CliError::Usage(format!("--kms-policy needs {pcr} (give --eif-pcrs)"))
        })?;
        condition.insert(key.into(), json!(v));
    }
    if ["PCR0", "PCR1", "PCR2"].iter().any(|k| {
        pcrs.get(*k)
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.bytes().all(|b| b == b'0'))
    }) {
        return Err(CliError::Usage(
            "--kms-policy: PCR0, PCR1 or PCR2 is all zeros, as in a debug-mode enclave, which anyone can run with any code: no key policy may trust it".into(),
        ));
    }
    Ok(json!({
        "Sid": "DecryptOnlyInTheAttestedEnclave",
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
        "Resource": "*",
        "Condition": {"StringEqualsIgnoreCase": condition},
    }))
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
    let mut pcrs = serde_json::Map::new();
    if let Some(p) = &a.eif_pcrs {
        let eif = crate::nsm::parse_eif_pcrs(&read_input(p)?)
            .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
        for (i, v) in eif {
            pcrs.insert(format!("PCR{i}"), json!(hex::encode(v)));
        }
    }
    let log = expected_log(&a.reference, &a.fetch, a.config.as_ref()).await?;
    pcrs.insert("PCR16".into(), json!(log.pcr16));
    if let Some(principal) = principal {
        let statement = kms_statement(&principal, &pcrs)?;
        outln!(
            "{}",
            serde_json::to_string_pretty(&statement).unwrap_or_default()
        )?;
    } else if a.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({"pcrs": pcrs, "measurements": log}))
                .unwrap_or_default()
        )?;
    } else {
        for (k, v) in &pcrs {
            outln!("{k} {}", v.as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}
