use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::{CliError, FetchArgs};
use crate::fetch::{BlobSink, Gateways};
use crate::oci::layout::LayoutWriter;
use crate::oci::{self, sha256_hex, Limits, Resolved};
use crate::reference::ImageRef;
use crate::transport::http::HttpClient;
use crate::transport::{tls, TcpConnector};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Directory to create as an OCI image layout (must not exist, or be empty).
    #[arg(long)]
    pub oci_layout: PathBuf,
    /// Tag recorded in the layout's index.json.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Builds the gateway client for a reference: its own gateway first, then --gateway ones.
pub(crate) fn gateways(r: &ImageRef, f: &FetchArgs) -> Result<Arc<Gateways>, CliError> {
    gateways_via(r, f, Arc::new(TcpConnector))
}

/// The same, over a given connector (the parent's egress proxy in an enclave).
pub(crate) fn gateways_via(
    r: &ImageRef,
    f: &FetchArgs,
    connector: Arc<dyn crate::transport::Connector>,
) -> Result<Arc<Gateways>, CliError> {
    let mut urls: Vec<String> = r.gateway.iter().cloned().collect();
    urls.extend(f.gateways.iter().cloned());
    if urls.is_empty() {
        return Err(CliError::Usage(
            "no gateway: give --gateway URL or a https://<gateway>/ipfs/<CID> reference".into(),
        ));
    }
    let tls = tls::client_config(f.ca.as_deref())?;
    let client = HttpClient::new(connector, tls, f.timeouts());
    Ok(Gateways::new(client, &urls, f.policy())?)
}

#[derive(Serialize)]
struct LayerOut {
    digest: String,
    size: u64,
    media_type: String,
    cid: String,
}

#[derive(Serialize)]
struct ImageOut {
    cid: String,
    layout: oci::RootKind,
    platform: String,
    manifest_digest: String,
    manifest_media_type: String,
    config_digest: String,
    layers: Vec<LayerOut>,
    total_compressed_size: u64,
}

fn describe(r: &Resolved) -> ImageOut {
    ImageOut {
        cid: r.root.to_string(),
        layout: r.kind,
        platform: r.platform.to_string(),
        manifest_digest: r.manifest_desc.digest().to_string(),
        manifest_media_type: r.manifest_desc.media_type().to_string(),
        config_digest: r.config.desc.digest().to_string(),
        layers: r
            .layers
            .iter()
            .map(|l| LayerOut {
                digest: l.desc.digest().to_string(),
                size: l.desc.size(),
                media_type: l.desc.media_type().to_string(),
                cid: l.cid.to_string(),
            })
            .collect(),
        total_compressed_size: r.total_compressed(),
    }
}

fn print_human(o: &ImageOut) {
    println!("cid:             {}", o.cid);
    println!(
        "layout:          {}",
        serde_json::to_string(&o.layout)
            .unwrap_or_default()
            .trim_matches('"')
    );
    println!("platform:        {}", o.platform);
    println!("manifest_digest: {}", o.manifest_digest);
    println!("config_digest:   {}", o.config_digest);
    println!("layers:");
    for l in &o.layers {
        println!("  {}  {:>12}  {}", l.digest, l.size, l.media_type);
    }
    println!("total_compressed_size: {}", o.total_compressed_size);
}

async fn resolve(reference: &str, f: &FetchArgs) -> Result<(Arc<Gateways>, Resolved), CliError> {
    let r = ImageRef::parse(reference)?;
    let gw = gateways(&r, f)?;
    let resolved = oci::resolve(&gw, &r.cid, &f.platform()?, &Limits::default()).await?;
    Ok((gw, resolved))
}

pub async fn inspect(a: InspectArgs) -> Result<(), CliError> {
    let (_, resolved) = resolve(&a.reference, &a.fetch).await?;
    let out = describe(&resolved);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_human(&out);
    }
    Ok(())
}

struct Progress<'a, S> {
    inner: S,
    bar: Option<&'a indicatif::ProgressBar>,
}

impl<S: BlobSink> BlobSink for Progress<'_, S> {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(data).await?;
        if let Some(b) = self.bar {
            b.inc(data.len() as u64);
        }
        Ok(())
    }
}

pub async fn pull(a: PullArgs) -> Result<(), CliError> {
    let (gw, resolved) = resolve(&a.reference, &a.fetch).await?;
    let writer = LayoutWriter::create(&a.oci_layout)?;
    writer.write_blob(&resolved.manifest_bytes)?;
    writer.write_blob(&resolved.config_bytes)?;
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(resolved.total_compressed());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    for (i, layer) in resolved.layers.iter().enumerate() {
        let hex = sha256_hex(&layer.desc)?;
        if let Some(b) = &bar {
            b.set_message(format!("layer {}/{}", i + 1, resolved.layers.len()));
        }
        let mut sink = Progress {
            inner: writer.blob_sink(hex).await?,
            bar: bar.as_ref(),
        };
        Resolved::fetch_blob(&gw, layer, &mut sink).await?;
        sink.inner
            .finish()
            .await
            .map_err(|source| oci::OciError::Write {
                path: a.oci_layout.display().to_string(),
                source,
            })?;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut desc = resolved.manifest_desc.clone();
    desc.set_urls(None);
    let mut ann = std::collections::HashMap::new();
    ann.insert(
        "org.opencontainers.image.ref.name".to_string(),
        a.tag.clone(),
    );
    desc.set_annotations(Some(ann));
    if desc.platform().is_none() {
        let p = oci_spec::image::PlatformBuilder::default()
            .os(resolved.platform.os.as_str())
            .architecture(resolved.platform.arch.as_str())
            .build()
            .ok();
        desc.set_platform(p);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MT_OCI_INDEX,
        "manifests": [desc],
    });
    let index = serde_json::to_vec_pretty(&index).map_err(|e| CliError::Usage(e.to_string()))?;
    let path = writer.commit(&index)?;
    let out = describe(&resolved);
    if a.json {
        let mut v = serde_json::to_value(&out).unwrap_or_default();
        v["oci_layout"] = serde_json::Value::String(path.display().to_string());
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!(
            "verified {} ({} layers, {} bytes) into {}",
            out.cid,
            out.layers.len(),
            out.total_compressed_size,
            path.display()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct UnpackArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Directory to apply the image into (must not exist, or be empty; ownership needs root).
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Fetches, verifies and applies an image into a directory, like `umoci unpack` but from a
/// CID: the boot path without the measurement and the workload.
pub async fn unpack(a: UnpackArgs) -> Result<(), CliError> {
    let (gw, resolved) = resolve(&a.reference, &a.fetch).await?;
    let usage = |e: std::io::Error| CliError::Usage(format!("{}: {e}", a.rootfs.display()));
    if a.rootfs.exists()
        && std::fs::read_dir(&a.rootfs)
            .map_err(usage)?
            .next()
            .is_some()
    {
        return Err(CliError::Usage(format!(
            "--rootfs {} exists and is not empty",
            a.rootfs.display()
        )));
    }
    // Apply beside the target and rename into place at the end, so that a failure leaves
    // nothing behind: neither a half-applied root nor one whose last layer did not verify.
    let parent = match a.rootfs.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(usage)?;
    let staging = tempfile::Builder::new()
        .prefix(".cidboot-unpack-")
        .tempdir_in(&parent)
        .map_err(usage)?;
    std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
        .map_err(usage)?;
    let scratch = tempfile::Builder::new()
        .prefix(".cidboot-spill-")
        .tempdir_in(&parent)
        .map_err(usage)?;
    let report = crate::apply::apply_image(
        gw,
        Arc::new(resolved),
        staging.path(),
        scratch.path(),
        &crate::apply::ApplyLimits::default(),
    )
    .await?;
    if a.rootfs.exists() {
        std::fs::remove_dir(&a.rootfs).map_err(usage)?;
    }
    std::fs::rename(staging.path(), &a.rootfs).map_err(usage)?;
    let _ = staging.keep();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!(
            "applied {} layers ({} bytes) into {} in {:.2}s",
            report.layers.len(),
            report.uncompressed_bytes,
            a.rootfs.display(),
            report.seconds
        );
    }
    Ok(())
}
