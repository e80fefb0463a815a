//! `cidboot check`: whether each gateway serves an image, fetched whole and verified (never a
//! HEAD), how fast, and in which response formats; the answer is yes when enough of them do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::{exit, CliError, FetchArgs};
use crate::fetch::check::{Answer, Formats};
use crate::fetch::{BlobSink, FetchError, Gateways};
use crate::oci::{self, Limits, OciError, Resolved, Selector, Target};
use crate::reference::ImageRef;
use crate::transport::TcpConnector;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID> (that gateway is checked too).
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// How many gateways must serve the image, verified, for the exit status to be 0
    /// [default: every one given].
    #[arg(long, value_name = "N")]
    pub min: Option<usize>,
    /// Print JSON (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

/// The answer for every gateway, in the order given.
#[derive(Serialize)]
pub struct Report {
    pub cid: String,
    pub min: usize,
    pub verified: usize,
    pub ok: bool,
    pub gateways: Vec<GatewayReport>,
}

/// What one gateway did.
#[derive(Serialize)]
pub struct GatewayReport {
    pub gateway: String,
    /// `verified`, `missing` (it answered 404), `tampered` (it served a block that fails
    /// verification) or `failed`.
    pub result: &'static str,
    pub ttfb_ms: Option<u64>,
    pub blobs: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub bytes_per_sec: Option<u64>,
    pub formats: FormatsOut,
    pub errors: Vec<String>,
}

#[derive(Serialize)]
pub struct FormatsOut {
    pub raw: String,
    pub car: String,
    pub ranges: String,
}

fn said(a: &Answer) -> String {
    match a {
        Answer::Served => "served".into(),
        Answer::Refused(s) => format!("refused (HTTP {s})"),
        Answer::Ignored => "ignored (it sent the whole file)".into(),
        Answer::Failed(e) => format!("failed: {e}"),
        Answer::NotAsked(why) => format!("not asked: {why}"),
    }
}

/// Counts verified bytes and keeps none of them.
struct Count(u64);

impl BlobSink for Count {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0 += data.len() as u64;
        Ok(())
    }
}

/// What a full fetch from one gateway got: the blobs' count and bytes, the time they took,
/// and the largest file (for the range request).
struct Fetched {
    blobs: usize,
    bytes: u64,
    took: Duration,
    largest: Option<(cid::Cid, u64)>,
}

/// Resolves the image and fetches every blob from `gw`, each verified (CIDs, sizes, digests).
async fn fetch_all(gw: &Gateways, root: &cid::Cid, sel: &Selector) -> Result<Fetched, CliError> {
    let target = oci::resolve_any(gw, root, sel, &Limits::default()).await?;
    let (layers, config) = match &target {
        Target::Image(r) => (&r.layers, &r.config),
        Target::Artifact(a) => (&a.layers, &a.config),
    };
    let started = Instant::now();
    let mut done: Vec<&oci::Blob> = Vec::new();
    let mut sink = Count(0);
    for blob in layers {
        if done.iter().any(|b| b.desc.digest() == blob.desc.digest()) {
            continue;
        }
        Resolved::fetch_blob(gw, blob, &mut sink)
            .await
            .map_err(|e| match e {
                OciError::Fetch(source) => OciError::Fetching {
                    what: format!("{} {}", blob.desc.media_type(), blob.desc.digest()),
                    source,
                },
                other => other,
            })?;
        done.push(blob);
    }
    let largest = done
        .iter()
        .chain(std::iter::once(&config))
        .max_by_key(|b| b.desc.size())
        .map(|b| (b.cid, b.desc.size()));
    Ok(Fetched {
        blobs: done.len(),
        bytes: sink.0,
        took: started.elapsed(),
        largest,
    })
}

/// The HTTP status a fetch error ends with, when it is one.
fn status_of(e: &CliError) -> Option<u16> {
    fn of(e: &FetchError) -> Option<u16> {
        match e {
            FetchError::Status { status, .. } => Some(*status),
            FetchError::AllGatewaysFailed { failures, .. } => {
                failures.iter().find_map(|f| of(&f.1))
            }
            _ => None,
        }
    }
    match e {
        CliError::Fetch(f)
        | CliError::Oci(OciError::Fetch(f))
        | CliError::Oci(OciError::Fetching { source: f, .. }) => of(f),
        _ => None,
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn check_one(
    root: &ImageRef,
    url: &str,
    f: &FetchArgs,
    sel: &Selector,
) -> Result<GatewayReport, CliError> {
    let none = crate::config::RuntimeConfig::default();
    let gw = crate::boot::plan::gateways(
        root,
        &[url.to_string()],
        &none,
        f.ca.as_deref(),
        &f.overrides(),
        Arc::new(TcpConnector),
    )
    .map_err(|e| CliError::Usage(e.to_string()))?;
    let label = gw.labels().into_iter().next().unwrap_or_else(|| url.into());
    let started = Instant::now();
    let mut formats: Formats = gw.probe_raw(&root.cid).await;
    let fetched = fetch_all(&gw, &root.cid, sel).await;
    let mut errors = Vec::new();
    let (result, blobs, bytes, rate) = match &fetched {
        Ok(x) => {
            let largest = x.largest.as_ref().map(|(c, s)| (c, *s));
            gw.probe_car(&root.cid, largest, &mut formats).await;
            let micros = x.took.as_micros().max(1);
            let rate = (x.bytes > 0).then(|| {
                u64::try_from(u128::from(x.bytes) * 1_000_000 / micros).unwrap_or(u64::MAX)
            });
            ("verified", x.blobs, x.bytes, rate)
        }
        Err(e) => {
            let result = if gw.first_quarantined() {
                errors.push(format!(
                    "it served content that fails verification (do not use it): {e}"
                ));
                "tampered"
            } else if status_of(e) == Some(404) {
                errors.push(format!(
                    "it does not have {} (HTTP 404): pin it where this gateway finds it, or wait for it to be announced",
                    root.cid
                ));
                "missing"
            } else {
                errors.push(e.to_string());
                "failed"
            };
            (result, 0, 0, None)
        }
    };
    for (kind, a) in [
        ("raw", &formats.raw),
        ("car", &formats.car),
        ("ranges", &formats.ranges),
    ] {
        if let Answer::Failed(e) = a {
            if result == "verified" {
                errors.push(format!("{kind}: {e}"));
            }
        }
    }
    Ok(GatewayReport {
        gateway: label,
        result,
        ttfb_ms: formats.ttfb.map(ms),
        blobs,
        bytes,
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        bytes_per_sec: rate,
        formats: FormatsOut {
            raw: said(&formats.raw),
            car: said(&formats.car),
            ranges: said(&formats.ranges),
        },
        errors,
    })
}

/// Checks every gateway at once: the reference's own, then `f.gateways`.
pub(crate) async fn check_gateways(
    reference: &str,
    f: &FetchArgs,
    min: Option<usize>,
) -> Result<Report, CliError> {
    let r = ImageRef::parse(reference)?;
    let mut urls: Vec<String> = Vec::new();
    for u in r.gateway.iter().chain(&f.gateways) {
        if !urls.contains(u) {
            urls.push(u.clone());
        }
    }
    if urls.is_empty() {
        return Err(CliError::Usage(
            "no gateway to check: give --gateway URL (repeatable) or a https://<gateway>/ipfs/<CID> reference".into(),
        ));
    }
    let min = min.unwrap_or(urls.len());
    if min == 0 || min > urls.len() {
        return Err(CliError::Usage(format!(
            "--min {min}: give a number from 1 to the {} gateway(s) checked",
            urls.len()
        )));
    }
    let none = crate::config::RuntimeConfig::default();
    let sel = f.selector(&none)?;
    let bare = ImageRef {
        cid: r.cid,
        gateway: None,
    };
    let _spinner = super::progress::Spinner::new(format!(
        "checking {} on {} gateway(s)",
        bare.canonical(),
        urls.len()
    ));
    let reports =
        futures_util::future::join_all(urls.iter().map(|u| check_one(&bare, u, f, &sel))).await;
    let gateways = reports.into_iter().collect::<Result<Vec<_>, _>>()?;
    let verified = gateways.iter().filter(|g| g.result == "verified").count();
    Ok(Report {
        cid: r.cid.to_string(),
        min,
        verified,
        ok: verified >= min,
        gateways,
    })
}

/// Prints the report: one paragraph per gateway, then the verdict.
pub(crate) fn print(report: &Report, json: bool) -> Result<(), CliError> {
    if json {
        return outln!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    }
    for g in &report.gateways {
        let ttfb = g
            .ttfb_ms
            .map(|t| format!("first byte {t} ms"))
            .unwrap_or_else(|| "no answer".into());
        match g.bytes_per_sec {
            Some(rate) => outln!(
                "{}  {}  {ttfb}, {} blob(s), {} bytes at {}/s",
                g.gateway,
                g.result.to_uppercase(),
                g.blobs,
                g.bytes,
                indicatif::HumanBytes(rate)
            )?,
            None => outln!("{}  {}  {ttfb}", g.gateway, g.result.to_uppercase())?,
        }
        if g.result == "verified" {
            outln!(
                "  raw: {}; car: {}; ranges: {}",
                g.formats.raw,
                g.formats.car,
                g.formats.ranges
            )?;
        }
        for e in &g.errors {
            outln!("  error: {e}")?;
        }
    }
    outln!(
        "{} of {} gateway(s) serve ipfs://{}, verified ({} required): {}",
        report.verified,
        report.gateways.len(),
        report.cid,
        report.min,
        if report.ok { "ok" } else { "NOT ENOUGH" }
    )
}

pub async fn check(a: CheckArgs) -> Result<i32, CliError> {
    let report = check_gateways(&a.reference, &a.fetch, a.min).await?;
    print(&report, a.json)?;
    Ok(i32::from(if report.ok { exit::OK } else { exit::NO }))
}
