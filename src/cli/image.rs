use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use serde::Serialize;

use super::{CliError, FetchArgs};
use crate::fetch::{BlobSink, Gateways};
use crate::oci::layout::{FileSink, LayoutWriter};
use crate::oci::{self, sha256_hex, Artifact, Limits, Resolved, Target};
use crate::reference::ImageRef;
use crate::transport::TcpConnector;

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
#[command(group(clap::ArgGroup::new("out").required(true).args(["oci_layout", "files"])))]
pub struct PullArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Directory to create as an OCI image layout (must not exist, or be empty).
    #[arg(long)]
    pub oci_layout: Option<PathBuf>,
    /// Directory to create with the layers as files named by their
    /// `org.opencontainers.image.title` annotations, as `oras pull` writes an artifact (must
    /// not exist, or be empty).
    #[arg(long)]
    pub files: Option<PathBuf>,
    /// Tag recorded in the written layout's index.json (default: the --tag selected, or
    /// latest).
    #[arg(long, value_name = "NAME")]
    pub ref_name: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Builds the gateway client for a reference: its own gateway first, then --gateway ones, then
/// the configuration's, with the configuration's `[fetch]` and `[tls]` under the flags.
pub(crate) fn gateways(
    r: &ImageRef,
    f: &FetchArgs,
    cfg: &crate::config::RuntimeConfig,
) -> Result<Arc<Gateways>, CliError> {
    gateways_via(r, f, cfg, Arc::new(TcpConnector))
}

/// The same, over a given connector (the parent's egress proxy in an enclave).
pub(crate) fn gateways_via(
    r: &ImageRef,
    f: &FetchArgs,
    cfg: &crate::config::RuntimeConfig,
    connector: Arc<dyn crate::transport::Connector>,
) -> Result<Arc<Gateways>, CliError> {
    crate::boot::plan::gateways(
        r,
        &f.gateways,
        cfg,
        f.ca.as_deref(),
        &f.overrides(),
        connector,
    )
    .map_err(|e| CliError::Usage(e.to_string()))
}

#[derive(Serialize)]
struct LayerOut {
    digest: String,
    size: u64,
    media_type: String,
    cid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    /// Present only for an encrypted (ocicrypt) layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption: Option<crate::ocicrypt::Encryption>,
}

fn layer_out(l: &oci::Blob) -> LayerOut {
    LayerOut {
        encryption: crate::ocicrypt::describe(&l.desc),
        digest: l.desc.digest().to_string(),
        size: l.desc.size(),
        media_type: l.desc.media_type().to_string(),
        cid: l.cid.to_string(),
        title: title(&l.desc).map(String::from),
    }
}

fn title(d: &oci_spec::image::Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(oci::ANN_TITLE))
        .map(String::as_str)
}

#[derive(Serialize)]
struct ImageOut {
    cid: String,
    layout: oci::RootKind,
    kind: &'static str,
    platform: String,
    manifest_digest: String,
    manifest_media_type: String,
    config_digest: String,
    layers: Vec<LayerOut>,
    total_compressed_size: u64,
}

/// `pull --oci-layout --json`: inspect's fields, then the layout written.
#[derive(Serialize)]
struct PullOut<T> {
    #[serde(flatten)]
    target: T,
    oci_layout: String,
}

/// `unpack --json`, in this order (docs/json.md).
#[derive(Serialize)]
struct UnpackOut<'a> {
    cid: String,
    manifest_digest: String,
    config_digest: String,
    platform: String,
    rootfs: String,
    rootless: bool,
    apply: &'a crate::apply::ApplyReport,
}

#[derive(Serialize)]
struct ConfigOut {
    digest: String,
    size: u64,
    media_type: String,
}

#[derive(Serialize)]
struct ArtifactOut {
    cid: String,
    layout: oci::RootKind,
    kind: &'static str,
    artifact_type: String,
    manifest_digest: String,
    manifest_media_type: String,
    config: ConfigOut,
    layers: Vec<LayerOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    annotations: std::collections::BTreeMap<String, String>,
    total_size: u64,
}

fn describe(r: &Resolved) -> ImageOut {
    ImageOut {
        cid: r.root.to_string(),
        layout: r.kind,
        kind: "image",
        platform: r.platform.to_string(),
        manifest_digest: r.manifest_desc.digest().to_string(),
        manifest_media_type: r.manifest_desc.media_type().to_string(),
        config_digest: r.config.desc.digest().to_string(),
        layers: r.layers.iter().map(layer_out).collect(),
        total_compressed_size: r.total_compressed(),
    }
}

fn describe_artifact(a: &Artifact) -> ArtifactOut {
    ArtifactOut {
        cid: a.root.to_string(),
        layout: a.kind,
        kind: "artifact",
        artifact_type: a.artifact_type.clone(),
        manifest_digest: a.manifest_desc.digest().to_string(),
        manifest_media_type: a.manifest_desc.media_type().to_string(),
        config: ConfigOut {
            digest: a.config.desc.digest().to_string(),
            size: a.config.desc.size(),
            media_type: a.config.desc.media_type().to_string(),
        },
        layers: a.layers.iter().map(layer_out).collect(),
        subject: a
            .manifest
            .subject()
            .as_ref()
            .map(|s| s.digest().to_string()),
        annotations: a
            .manifest
            .annotations()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        total_size: a.total_size(),
    }
}

fn layout_name(k: oci::RootKind) -> String {
    serde_json::to_string(&k)
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

/// A string from the image or artifact, fit for a terminal: its publisher chose it, so its
/// control characters (which a terminal acts on: titles, colours, clearing the screen, the
/// one-byte CSI) and line separators are shown as `\u{..}` escapes.
fn plain(s: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(unsafe_char) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out.into()
}

fn print_human(o: &ImageOut) -> Result<(), CliError> {
    outln!("cid:             {}", o.cid)?;
    outln!("layout:          {}", layout_name(o.layout))?;
    outln!("platform:        {}", plain(&o.platform))?;
    outln!("manifest_digest: {}", o.manifest_digest)?;
    outln!("config_digest:   {}", o.config_digest)?;
    outln!("layers:")?;
    for l in &o.layers {
        outln!("  {}  {:>12}  {}", l.digest, l.size, plain(&l.media_type))?;
        if let Some(e) = &l.encryption {
            outln!(
                "    encrypted: {}; recipients: {}",
                plain(e.cipher.as_deref().unwrap_or("cipher not named")),
                if e.recipients.is_empty() {
                    "none".to_string()
                } else {
                    plain(&e.recipients.join(", ")).into_owned()
                }
            )?;
        }
    }
    outln!("total_compressed_size: {}", o.total_compressed_size)
}

fn print_artifact(o: &ArtifactOut) -> Result<(), CliError> {
    outln!("cid:             {}", o.cid)?;
    outln!("layout:          {}", layout_name(o.layout))?;
    outln!("artifact_type:   {}", plain(&o.artifact_type))?;
    outln!("manifest_digest: {}", o.manifest_digest)?;
    outln!(
        "config:          {}  {}  {}",
        o.config.digest,
        o.config.size,
        plain(&o.config.media_type)
    )?;
    if let Some(s) = &o.subject {
        outln!("subject:         {s}")?;
    }
    outln!("layers:")?;
    for l in &o.layers {
        outln!(
            "  {}  {:>12}  {}{}",
            l.digest,
            l.size,
            plain(&l.media_type),
            l.title
                .as_deref()
                .map(|t| format!("  {}", plain(t)))
                .unwrap_or_default()
        )?;
    }
    if !o.annotations.is_empty() {
        outln!("annotations:")?;
        for (k, v) in &o.annotations {
            outln!("  {}: {}", plain(k), plain(v))?;
        }
    }
    outln!("total_size:      {}", o.total_size)
}

/// Resolves a runnable image; an artifact is refused by name.
async fn resolve(reference: &str, f: &FetchArgs) -> Result<(Arc<Gateways>, Resolved), CliError> {
    match resolve_any(reference, f).await? {
        (gw, Target::Image(r)) => Ok((gw, *r)),
        (_, Target::Artifact(a)) => Err(oci::OciError::Artifact {
            artifact_type: a.artifact_type,
        }
        .into()),
    }
}

async fn resolve_any(reference: &str, f: &FetchArgs) -> Result<(Arc<Gateways>, Target), CliError> {
    let r = ImageRef::parse(reference)?;
    let none = crate::config::RuntimeConfig::default();
    let gw = gateways(&r, f, &none)?;
    let sel = f.selector(&none)?;
    let _spinner = super::progress::Spinner::new(format!("resolving {}", r.canonical()));
    let target = oci::resolve_any(&gw, &r.cid, &sel, &Limits::default()).await?;
    Ok((gw, target))
}

pub async fn inspect(a: InspectArgs) -> Result<(), CliError> {
    let (_, target) = resolve_any(&a.reference, &a.fetch).await?;
    match (&target, a.json) {
        (Target::Image(r), true) => outln!(
            "{}",
            serde_json::to_string_pretty(&describe(r)).unwrap_or_default()
        ),
        (Target::Image(r), false) => print_human(&describe(r)),
        (Target::Artifact(x), true) => outln!(
            "{}",
            serde_json::to_string_pretty(&describe_artifact(x)).unwrap_or_default()
        ),
        (Target::Artifact(x), false) => print_artifact(&describe_artifact(x)),
    }
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

fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    let b = super::progress::bytes_bar(total)?;
    b.set_prefix("fetching");
    Some(b)
}

/// Streams blobs into files, each verified (exact size and sha256) before it counts.
async fn fetch_into(
    gw: &Gateways,
    blobs: &[(&oci::Blob, PathBuf)],
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), CliError> {
    for (i, (blob, path)) in blobs.iter().enumerate() {
        if let Some(b) = bar {
            let d = blob.desc.digest().to_string();
            let short = d.strip_prefix("sha256:").unwrap_or(&d);
            b.set_message(format!(
                "blob {}/{} {}",
                i + 1,
                blobs.len(),
                short.get(..12).unwrap_or(short)
            ));
        }
        let mut sink = Progress {
            inner: FileSink::create(path).await?,
            bar,
        };
        Resolved::fetch_blob(gw, blob, &mut sink)
            .await
            .map_err(|e| match e {
                oci::OciError::Fetch(source) => oci::OciError::Fetching {
                    what: format!("{} {}", blob.desc.media_type(), blob.desc.digest()),
                    source,
                },
                other => other,
            })?;
        sink.inner
            .finish()
            .await
            .map_err(|source| oci::OciError::Write {
                path: path.display().to_string(),
                source,
            })?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}

pub async fn pull(a: PullArgs) -> Result<(), CliError> {
    let (gw, target) = resolve_any(&a.reference, &a.fetch).await?;
    if let Some(dir) = &a.files {
        return pull_files(&gw, &target, dir, a.json).await;
    }
    let Some(out_dir) = &a.oci_layout else {
        return Err(CliError::Usage(
            "give --oci-layout DIR or --files DIR".into(),
        ));
    };
    let (manifest_desc, manifest_bytes, config_bytes, layers, platform) = match &target {
        Target::Image(r) => (
            &r.manifest_desc,
            &r.manifest_bytes,
            &r.config_bytes,
            &r.layers,
            Some(&r.platform),
        ),
        Target::Artifact(x) => (
            &x.manifest_desc,
            &x.manifest_bytes,
            &x.config_bytes,
            &x.layers,
            None,
        ),
    };
    let writer = LayoutWriter::create(out_dir)?;
    writer.write_blob(manifest_bytes)?;
    let config_hex = writer.write_blob(config_bytes)?;
    let mut blobs = Vec::with_capacity(layers.len());
    for l in layers {
        // The same blob twice, or a layer that is the config (an artifact may use the empty
        // blob for both): written once, verified each time it was fetched.
        if blobs
            .iter()
            .any(|(b, _): &(&oci::Blob, _)| b.desc.digest() == l.desc.digest())
            || sha256_hex(&l.desc)? == config_hex
        {
            continue;
        }
        blobs.push((l, writer.blob_path(sha256_hex(&l.desc)?)));
    }
    let total = blobs.iter().map(|(b, _)| b.desc.size()).sum();
    let bar = progress_bar(total);
    fetch_into(&gw, &blobs, bar.as_ref()).await?;
    let mut desc = manifest_desc.clone();
    desc.set_urls(None);
    let mut ann = std::collections::HashMap::new();
    let ref_name = a
        .ref_name
        .clone()
        .or_else(|| a.fetch.tag.clone())
        .unwrap_or_else(|| "latest".into());
    ann.insert(oci::ANN_REF_NAME.to_string(), ref_name);
    desc.set_annotations(Some(ann));
    match (&target, platform) {
        (Target::Artifact(x), _) => {
            desc.set_platform(None);
            desc.set_artifact_type(x.manifest.artifact_type().clone());
        }
        (Target::Image(_), Some(p)) if desc.platform().is_none() => {
            let p = oci_spec::image::PlatformBuilder::default()
                .os(p.os.as_str())
                .architecture(p.arch.as_str())
                .build()
                .ok();
            desc.set_platform(p);
        }
        _ => {}
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MT_OCI_INDEX,
        "manifests": [desc],
    });
    let index = serde_json::to_vec_pretty(&index).map_err(|e| CliError::Io {
        what: "index.json".into(),
        source: e.into(),
    })?;
    let path = writer.commit(&index)?;
    let oci_layout = path.display().to_string();
    // What inspect prints, in its order, and then where it was written.
    let (json, cid, what, count, size) = match &target {
        Target::Image(r) => {
            let o = describe(r);
            let (n, s) = (o.layers.len(), o.total_compressed_size);
            let cid = o.cid.clone();
            let out = PullOut {
                target: o,
                oci_layout,
            };
            (serde_json::to_string_pretty(&out), cid, "image", n, s)
        }
        Target::Artifact(x) => {
            let o = describe_artifact(x);
            let (n, s) = (o.layers.len(), o.total_size);
            let cid = o.cid.clone();
            let out = PullOut {
                target: o,
                oci_layout,
            };
            (serde_json::to_string_pretty(&out), cid, "artifact", n, s)
        }
    };
    if a.json {
        outln!("{}", json.unwrap_or_default())?;
    } else {
        outln!(
            "verified {what} {cid} ({count} layers, {size} bytes fetched) into {}",
            path.display()
        )?;
    }
    Ok(())
}

/// Most bytes in a file name written by `pull --files` (the usual file system limit).
const MAX_TITLE_LEN: usize = 255;

/// A layer title that is safe as a file name: one plain path component.
fn safe_title(t: &str) -> Result<&str, String> {
    if t.is_empty() || t == "." || t == ".." {
        return Err(format!("{t:?} is not a file name"));
    }
    if t.len() > MAX_TITLE_LEN {
        return Err(format!("{t:?} is longer than {MAX_TITLE_LEN} bytes"));
    }
    if t.contains(['/', '\\']) || t.chars().any(char::is_control) {
        return Err(format!(
            "{t:?} is not a single plain file name (no slashes, backslashes or control characters)"
        ));
    }
    Ok(t)
}

/// `oras pull`: the titled layers as files, verified, in a directory that appears complete
/// or not at all.
async fn pull_files(
    gw: &Gateways,
    target: &Target,
    dir: &std::path::Path,
    json: bool,
) -> Result<(), CliError> {
    let (layers, what) = match target {
        Target::Image(r) => (&r.layers, format!("image {}", r.manifest_desc.digest())),
        Target::Artifact(x) => (
            &x.layers,
            format!(
                "artifact {} ({})",
                x.manifest_desc.digest(),
                x.artifact_type
            ),
        ),
    };
    let mut named: Vec<(&oci::Blob, String)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let Some(t) = title(&l.desc) else {
            skipped.push(l.desc.digest().to_string());
            continue;
        };
        let t = safe_title(t).map_err(|e| {
            CliError::Usage(format!(
                "layer {i} ({}) of the {what}: its title {e}",
                l.desc.digest()
            ))
        })?;
        let unpack = l
            .desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get("io.deis.oras.content.unpack"))
            .is_some_and(|v| v == "true");
        if unpack {
            return Err(CliError::Usage(format!(
                "layer {i} ({}) of the {what} is a packed directory (io.deis.oras.content.unpack), which --files does not unpack; use --oci-layout",
                l.desc.digest()
            )));
        }
        if named.iter().any(|(_, n)| n == t) {
            return Err(CliError::Usage(format!(
                "two layers of the {what} are titled {t:?}"
            )));
        }
        named.push((l, t.to_string()));
    }
    if named.is_empty() {
        return Err(CliError::Usage(format!(
            "no layer of the {what} has an {} annotation, so there are no files to write; use --oci-layout DIR",
            oci::ANN_TITLE
        )));
    }
    let staging = crate::oci::layout::Staging::create(dir)?;
    let blobs: Vec<(&oci::Blob, PathBuf)> = named
        .iter()
        .map(|(b, n)| (*b, staging.path().join(n)))
        .collect();
    let total = blobs.iter().map(|(b, _)| b.desc.size()).sum();
    let bar = progress_bar(total);
    fetch_into(gw, &blobs, bar.as_ref()).await?;
    let path = staging.commit()?;
    let files: Vec<serde_json::Value> = named
        .iter()
        .map(|(b, n)| {
            serde_json::json!({"name": n, "digest": b.desc.digest().to_string(), "size": b.desc.size(), "media_type": b.desc.media_type().to_string()})
        })
        .collect();
    if json {
        /// `pull --files --json`, in this order (docs/json.md).
        #[derive(Serialize)]
        struct FilesOut<'a> {
            cid: String,
            manifest_digest: String,
            files: &'a [serde_json::Value],
            skipped_untitled: &'a [String],
            dir: String,
        }
        let (cid, manifest) = match target {
            Target::Image(r) => (r.root, r.manifest_desc.digest().to_string()),
            Target::Artifact(x) => (x.root, x.manifest_desc.digest().to_string()),
        };
        outln!(
            "{}",
            serde_json::to_string_pretty(&FilesOut {
                cid: cid.to_string(),
                manifest_digest: manifest,
                files: &files,
                skipped_untitled: &skipped,
                dir: path.display().to_string(),
            })
            .unwrap_or_default()
        )?;
    } else {
        for (b, n) in &named {
            outln!("{}  {:>12}  {n}", b.desc.digest(), b.desc.size())?;
        }
        if !skipped.is_empty() {
            errln!(
                "skipped {} untitled layer(s): {}",
                skipped.len(),
                skipped.join(", ")
            );
        }
        outln!("verified {} file(s) into {}", named.len(), path.display())?;
    }
    Ok(())
}

/// The layer limits of `run` and `unpack`; each wins over the configuration's `[layers]` key of
/// the same name. `pull` writes the compressed blobs as they are and inflates nothing, so
/// these do not apply to it.
#[derive(Args, Debug, Clone, Default)]
pub struct LayerLimitArgs {
    /// MiB all layers may inflate to together [default: 16384, or `run`'s [layers] max_image_mib].
    #[arg(long, value_name = "MIB")]
    pub max_image_mib: Option<u64>,
    /// MiB one layer may inflate to [default: 4096, or `run`'s [layers] max_layer_mib].
    #[arg(long, value_name = "MIB")]
    pub max_layer_mib: Option<u64>,
    /// Tar entries in one layer [default: 1000000, or `run`'s [layers] max_layer_entries].
    #[arg(long, value_name = "N")]
    pub max_layer_entries: Option<u64>,
}

impl LayerLimitArgs {
    /// The flags given, checked against the bounds the configuration's keys have.
    pub fn layers(&self) -> Result<crate::config::Layers, CliError> {
        let l = crate::config::Layers {
            max_image_mib: self.max_image_mib,
            max_layer_mib: self.max_layer_mib,
            max_layer_entries: self.max_layer_entries,
        };
        l.validate(|k| format!("--{}", k.replace('_', "-")))
            .map_err(|e| match e {
                crate::config::ConfigError::Invalid(m) => CliError::Usage(m),
                e => CliError::Usage(e.to_string()),
            })?;
        Ok(l)
    }
}

#[derive(Args, Debug)]
pub struct UnpackArgs {
    /// ipfs://<CID> or https://<gateway>/ipfs/<CID>
    pub reference: String,
    #[command(flatten)]
    pub fetch: FetchArgs,
    /// Directory to apply the image into: one to create, or an empty directory or mount point,
    /// filled in place (and emptied again on failure). It is left mode 0700, whatever mode the
    /// image gives `/`. Without root, the image is unpacked rootless: ownership is not applied
    /// and device nodes are left out.
    #[arg(long)]
    pub rootfs: PathBuf,
    /// Leave out device nodes, setuid and setgid bits, and file capabilities
    /// (`security.capability` xattrs), so that no local user can use them through the root.
    #[arg(long)]
    pub no_special_files: bool,
    #[command(flatten)]
    pub layers: LayerLimitArgs,
    /// The PEM RSA private key that opens the image's encrypted (ocicrypt) layers: the key
    /// whose public half they were encrypted for (`skopeo copy --encryption-key jwe:PUB.pem`).
    #[arg(long, value_name = "FILE")]
    pub decryption_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Reads a `--decryption-key` file (bounded; the key stays in memory only).
pub(crate) fn decryption_key(
    path: Option<&std::path::Path>,
) -> Result<Option<Arc<crate::ocicrypt::DecryptionKey>>, CliError> {
    let Some(path) = path else { return Ok(None) };
    let io = |source| CliError::Io {
        what: format!("reading the decryption key {}", path.display()),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut pem = zeroize::Zeroizing::new(Vec::new());
    std::io::Read::read_to_end(
        &mut std::io::Read::take(f, crate::ocicrypt::MAX_KEY_FILE + 1),
        &mut pem,
    )
    .map_err(io)?;
    if pem.len() as u64 > crate::ocicrypt::MAX_KEY_FILE {
        return Err(CliError::Usage(format!(
            "the decryption key {} is larger than {} bytes",
            path.display(),
            crate::ocicrypt::MAX_KEY_FILE
        )));
    }
    let key = crate::ocicrypt::DecryptionKey::from_pem(&pem, &path.display().to_string())?;
    Ok(Some(Arc::new(key)))
}

/// Fetches, verifies and applies an image into a directory, like `umoci unpack` but from a
/// CID: the boot path without the measurement and the workload.
pub async fn unpack(a: UnpackArgs) -> Result<(), CliError> {
    let layers = a.layers.layers()?;
    let key = decryption_key(a.decryption_key.as_deref())?;
    // What cannot work is refused before anything is fetched.
    let target = super::unpack_target::UnpackTarget::prepare(&a.rootfs)?;
    // Without root, ownership cannot be applied nor device nodes made: the image is unpacked
    // as `umoci unpack --rootless` does, and the output says so.
    let rootless = !nix::unistd::geteuid().is_root();
    let (gw, resolved) = resolve(&a.reference, &a.fetch).await?;
    // Encrypted layers without their key are refused before any layer is fetched.
    let layer_keys = Arc::new(crate::ocicrypt::open_layers(
        resolved.layers.iter().map(|l| &l.desc),
        key.as_deref(),
    )?);
    let described = (
        resolved.root.to_string(),
        resolved.manifest_desc.digest().to_string(),
        resolved.config.desc.digest().to_string(),
        resolved.platform.to_string(),
    );
    let report = crate::apply::apply_observed(
        gw,
        Arc::new(resolved),
        target.root(),
        target.spill(),
        &layers.apply_to(
            &crate::config::Layers::default(),
            crate::apply::ApplyLimits {
                no_special_files: a.no_special_files,
                rootless,
                // Only its owner may enter the root, whatever mode the image gives `/`: an
                // image's device nodes and setuid binaries are then of no use to any other
                // local user, at any instant.
                root_mode: Some(0o700),
                layer_keys,
                ..crate::apply::ApplyLimits::default()
            },
        ),
        super::progress::layers(),
    )
    .await?;
    target.commit()?;
    if a.json {
        let (cid, manifest_digest, config_digest, platform) = described;
        let out = UnpackOut {
            cid,
            manifest_digest,
            config_digest,
            platform,
            rootfs: a.rootfs.display().to_string(),
            rootless,
            apply: &report,
        };
        outln!("{}", serde_json::to_string_pretty(&out).unwrap_or_default())?;
    } else {
        if rootless {
            outln!(
                "rootless (not run as root, as umoci unpack --rootless): ownership not applied, everything belongs to uid {}; {} device node(s) left out; directories keep their owner's rwx",
                nix::unistd::geteuid(),
                report.devices_left_out
            )?;
        }
        outln!("{}", super::progress::summary(&report, &a.rootfs))?;
    }
    Ok(())
}
