use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{image, CliError, FetchArgs};
use crate::config::Loaded;
use crate::measure::{EventLog, Inputs};
use crate::oci::{self, Limits};
use crate::reference::ImageRef;
use crate::verify::{self, At, Policy, Status};

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
    #[arg(long, value_name = "REF", conflicts_with_all = ["expect_manifest", "expect_pcr16"])]
    pub expect_image: Option<String>,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The runtime configuration the enclave was given (for --expect-image; default: none).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Expect this manifest digest in the event log given with --measurements.
    #[arg(
        long,
        value_name = "sha256:HEX",
        requires = "measurements",
        conflicts_with = "expect_pcr16"
    )]
    pub expect_manifest: Option<String>,
    /// The event log served by the enclave's GET /v1/measurements.
    #[arg(long)]
    pub measurements: Option<PathBuf>,
    /// Expect this PCR16 value.
    #[arg(long, value_name = "HEX")]
    pub expect_pcr16: Option<String>,
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    #[arg(long, value_name = "HEX")]
    pub user_data: Option<String>,
    /// Accept an emulated NSM's UNSIGNED document (PCRs, nonce and user_data still checked).
    /// Never turns a signed document's failure into a pass.
    #[arg(long)]
    pub insecure_unsigned: bool,
    #[arg(long)]
    pub json: bool,
}

fn hex_arg(what: &str, v: &str) -> Result<Vec<u8>, CliError> {
    hex::decode(v.trim_start_matches("0x"))
        .map_err(|e| CliError::Usage(format!("{what}: not hex: {e}")))
}

fn read_input(p: &PathBuf) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    let cap = (crate::nsm::document::MAX_DOCUMENT * 2) as u64;
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
    let mut fetch = fetch.clone();
    fetch.gateways.extend(cfg.config.gateways.iter().cloned());
    let gw = image::gateways(&r, &fetch)?;
    let resolved = oci::resolve(
        &gw,
        &r.cid,
        &fetch.selector(&cfg.config)?,
        &Limits::default(),
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
        runtime_config_digest: &cfg.digest(),
    }))
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
                    + std::time::Duration::from_secs(dt.unix_timestamp().max(0) as u64),
            )
        }
    })
}

pub async fn verify(a: VerifyArgs) -> Result<i32, CliError> {
    let raw = read_input(&a.document)?;
    let doc = verify::decode_input(&raw).map_err(|e| CliError::Usage(e.to_string()))?;
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
    if let Some(want) = &a.expect_manifest {
        let p = a
            .measurements
            .as_ref()
            .ok_or_else(|| CliError::Usage("--expect-manifest needs --measurements".into()))?;
        let log: serde_json::Value = serde_json::from_slice(&read_input(p)?)
            .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
        let events = log["events"].as_array().cloned().unwrap_or_default();
        let manifest = events
            .iter()
            .find(|e| e["kind"] == "manifest-digest")
            .and_then(|e| e["value"].as_str())
            .unwrap_or("");
        if manifest != want {
            return Err(CliError::Usage(format!(
                "the event log measures manifest {manifest:?}, not {want}"
            )));
        }
        let digests = events
            .iter()
            .map(|e| hex::decode(e["digest"].as_str().unwrap_or("")).unwrap_or_default());
        let replayed = hex::encode(crate::measure::replay(digests));
        notes.push(format!("PCR16 replayed from the event log: {replayed}"));
        pcrs.insert(16, hex::decode(&replayed).unwrap_or_default());
    }
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
    };
    let report = verify::verify(&doc, &policy);
    if report.insecure {
        eprintln!("WARNING: INSECURE VERIFICATION: the document is unsigned (an emulated NSM); its signature and certificate chain were NOT checked, and it proves nothing about hardware.");
    }
    if a.json {
        let mut v = serde_json::to_value(&report).unwrap_or_default();
        v["notes"] = json!(notes);
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for n in &notes {
            println!("note: {n}");
        }
        for c in &report.checks {
            let s = match c.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skipped => "SKIP",
            };
            println!("{s} {}: {}", c.name, c.detail);
        }
        println!(
            "{}",
            if report.ok {
                "verified"
            } else {
                "NOT verified"
            }
        );
    }
    Ok(if report.ok { 0 } else { 1 })
}

#[derive(Args, Debug)]
pub struct ExpectArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// The runtime configuration the enclave will be given (default: none).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The JSON that eif_build (or nitro-cli build-enclave) printed, for PCR0-2.
    #[arg(long)]
    pub eif_pcrs: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

pub async fn expect(a: ExpectArgs) -> Result<(), CliError> {
    let log = expected_log(&a.reference, &a.fetch, a.config.as_ref()).await?;
    let mut pcrs = serde_json::Map::new();
    if let Some(p) = &a.eif_pcrs {
        let v: serde_json::Value = serde_json::from_slice(&read_input(p)?)
            .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
        let m = v.get("Measurements").unwrap_or(&v);
        for k in ["PCR0", "PCR1", "PCR2"] {
            let val = m
                .get(k)
                .and_then(|x| x.as_str())
                .ok_or_else(|| CliError::Usage(format!("{}: no {k}", p.display())))?;
            pcrs.insert(k.into(), json!(val));
        }
    }
    pcrs.insert("PCR16".into(), json!(log.pcr16));
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"pcrs": pcrs, "measurements": log}))
                .unwrap_or_default()
        );
    } else {
        for (k, v) in &pcrs {
            println!("{k} {}", v.as_str().unwrap_or(""));
        }
    }
    Ok(())
}
