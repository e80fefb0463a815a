//! Applying verified layers onto a root.
//!
//! Trust boundary: every byte that reaches the applier came out of a block verified against the
//! CID before it was inflated, so a gateway cannot put anything into the root. A layer counts as
//! applied only once its compressed digest and size matched the manifest and its uncompressed
//! digest matched the config's diff_id; any mismatch fails the whole image, and callers discard
//! the root before anything in it runs. Layers are fetched and inflated in parallel into spill
//! files and applied strictly in order, the applier following the current layer's inflater.

mod decrypt;
pub mod fs;
pub mod inflate;
pub mod layer;
pub mod path;
pub mod spill;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tracing::info;

pub use layer::LayerStats;

use crate::fetch::{BlobSink, FetchError, Gateways};
use crate::oci::{OciError, Resolved};

/// Bounds on what layers may do (see docs/limits.md). The three sizes a user may need to
/// raise (an image's and a layer's uncompressed bytes, a layer's entries) are plain numbers,
/// not ratios: a layer of zeros compresses a thousandfold and is still a legitimate layer, and
/// a bomb is stopped by the same numbers before it has cost more than them.
#[derive(Debug, Clone)]
pub struct ApplyLimits {
    /// Uncompressed bytes across all layers (`[layers] max_image_mib`).
    pub max_total_uncompressed: u64,
    /// Uncompressed bytes of one layer (`[layers] max_layer_mib`).
    pub max_layer_uncompressed: u64,
    /// Entries in one layer (`[layers] max_layer_entries`).
    pub max_entries: u64,
    /// Bytes in one entry's path (or link target).
    pub max_path_len: usize,
    /// Components in one entry's path.
    pub max_path_depth: usize,
    /// One PAX extended header (the records before one entry).
    pub max_pax_size: u64,
    /// Layers fetched and inflated at once.
    pub parallelism: usize,
    /// Leave out device nodes, setuid and setgid bits and file capabilities
    /// (`security.capability` xattrs): for a root that is not then mounted `nodev,nosuid`.
    pub no_special_files: bool,
    /// Applied without root, as `umoci unpack --rootless`: ownership is not applied (all
    /// belongs to the user applying), device nodes are left out (only root may make them),
    /// and directories keep their owner's rwx (so that later entries and layers can be
    /// written into them, and the user can remove the tree).
    pub rootless: bool,
    /// The mode the root's own entry (`./`, `/`) gives the root, instead of the image's:
    /// `unpack` keeps its root its owner's only from the first instant. The entry's ownership
    /// is still applied.
    pub root_mode: Option<u32>,
    /// The keys of the image's encrypted (ocicrypt) layers, opened before anything is fetched;
    /// an encrypted layer without one is refused.
    pub layer_keys: Arc<crate::ocicrypt::LayerKeys>,
}

/// Default of `[layers] max_image_mib`: 16 GiB.
pub const DEFAULT_IMAGE_MIB: u64 = 16 << 10;
/// Default of `[layers] max_layer_mib`: 4 GiB.
pub const DEFAULT_LAYER_MIB: u64 = 4 << 10;
/// Default of `[layers] max_layer_entries`.
pub const DEFAULT_LAYER_ENTRIES: u64 = 1_000_000;

/// A size in the unit its knob takes: MiB when whole, bytes otherwise.
fn mib(bytes: &u64) -> String {
    if bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

impl Default for ApplyLimits {
    fn default() -> Self {
        ApplyLimits {
            max_total_uncompressed: DEFAULT_IMAGE_MIB << 20,
            max_layer_uncompressed: DEFAULT_LAYER_MIB << 20,
            max_entries: DEFAULT_LAYER_ENTRIES,
            max_path_len: 4096,
            max_path_depth: 256,
            max_pax_size: 1 << 20,
            parallelism: 2,
            no_special_files: false,
            rootless: false,
            root_mode: None,
            layer_keys: Arc::default(),
        }
    }
}

/// Why a layer was not applied; the root is then discarded.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ApplyError {
    #[error(transparent)]
    Oci(#[from] OciError),
    #[error("layer {index} ({digest}): the uncompressed content is sha256:{actual}, but the config's diff_id is {expected}")]
    DiffId {
        index: usize,
        digest: String,
        expected: String,
        actual: String,
    },
    /// Anything that went wrong with one layer, named by its position in the manifest
    /// (counting from 0) and its digest.
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        index: usize,
        digest: String,
        #[source]
        source: Box<ApplyError>,
    },
    #[error("the layer inflates past {}, the limit on one layer's uncompressed size (raise it with --max-layer-mib, or max_layer_mib in the configuration's [layers])", mib(.max))]
    LayerTooLarge { max: u64 },
    #[error("decompressing the layer failed: {0}")]
    Decompress(io::Error),
    #[error("malformed tar stream: {0}")]
    Tar(io::Error),
    #[error("entry {path:?} is longer than {max} bytes")]
    PathTooLong { path: String, max: usize },
    #[error("more than {0} entries in one layer, the limit on a layer's entries (raise it with --max-layer-entries, or max_layer_entries in the configuration's [layers])")]
    TooManyEntries(u64),
    #[error("PAX or long-name header of {size} bytes exceeds the {max}-byte limit")]
    PaxTooLarge { size: u64, max: u64 },
    #[error("malformed PAX record {0}")]
    Pax(String),
    #[error("an entry would replace the root directory with a {0} entry")]
    RootType(String),
    #[error("hard link {0} points outside the root")]
    HardlinkOutside(String),
    #[error("bad link entry {0}")]
    BadLink(String),
    #[error("whiteout {0} escapes its directory")]
    BadWhiteout(String),
    #[error("bad device entry {0}")]
    Device(String),
    #[error("bad owner {0}")]
    Owner(String),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("the image inflates past {} in all, the limit on an image's uncompressed size (raise it with --max-image-mib, or max_image_mib in the configuration's [layers])", mib(.max))]
    TotalTooLarge { max: u64 },
    #[error("{op} {path}: {source}")]
    Fs {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// This side stopped because the other failed; the other reports the cause.
    #[error("interrupted: {0}")]
    Interrupted(String),
    #[error("internal: {0}")]
    Internal(String),
    #[error("the layer is encrypted, and no key opened it")]
    NoLayerKey,
    #[error("the encrypted blob fails its HMAC-SHA256 (the layer's authentication tag): it is not the ciphertext its key was made for; nothing of it was decrypted")]
    LayerAuth,
    #[error("decrypting the layer failed: {0}")]
    Decrypt(String),

    /// A path or file operation the confined filesystem refused or that failed there.
    #[error(transparent)]
    Rootfs(#[from] cidboot_rootfs::RootfsError),
}

impl ApplyError {
    /// Names the layer an error came from, unless the error already does (or only echoes the
    /// other end of a pipe, which [`cause`] discards).
    fn in_layer(self, index: usize, digest: &str) -> Self {
        match self {
            e @ (ApplyError::DiffId { .. }
            | ApplyError::Layer { .. }
            | ApplyError::Interrupted(_)) => e,
            e => ApplyError::Layer {
                index,
                digest: digest.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// Marks an error that only echoes the other end of a pipe failing (it saw the pipe close)
    /// as [`ApplyError::Interrupted`], so that [`cause`] reports the other end's error instead.
    fn echo(self) -> Self {
        match self {
            ApplyError::Decompress(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                ApplyError::Interrupted(e.to_string())
            }
            ApplyError::Oci(OciError::Fetch(FetchError::Sink(e))) => {
                ApplyError::Interrupted(e.to_string())
            }
            other => other,
        }
    }
}

/// Both ends' results, or the error that is a cause rather than an echo (the first end's
/// when both are causes).
fn cause<A, B>(a: Result<A, ApplyError>, b: Result<B, ApplyError>) -> Result<(A, B), ApplyError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(ApplyError::Interrupted(_)), Err(e)) | (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

/// What applying an image did. One vocabulary everywhere (this report, the logs, the CLI's
/// summary): `compressed_bytes` is the blob as fetched, `uncompressed_bytes` the tar stream it
/// inflates to, `file_bytes` the regular files' content that stream carried.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyReport {
    /// Each layer, in the order applied.
    pub layers: Vec<LayerReport>,
    /// The layers' blobs as fetched, in all.
    pub compressed_bytes: u64,
    /// Their tar streams, in all.
    pub uncompressed_bytes: u64,
    /// Tar entries, in all.
    pub entries: u64,
    /// Regular files' content, in all.
    pub file_bytes: u64,
    /// Device nodes (and hard links to them) left out: `--no-special-files`, or no root.
    pub devices_left_out: u64,
    /// Wall-clock seconds the whole apply took: fetch, verification, inflation and writing.
    pub seconds: f64,
}

/// What applying one layer did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct LayerReport {
    /// The layer blob's digest (`sha256:…`).
    pub digest: String,
    /// The blob as fetched.
    pub compressed_bytes: u64,
    /// The tar stream it inflated to.
    pub uncompressed_bytes: u64,
    /// Tar entries applied.
    pub entries: u64,
    /// Regular files' content written.
    pub file_bytes: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
}

/// Watches an image being applied (a terminal's progress bars). It is called from the fetch
/// and apply tasks, so it must be cheap and must never block.
pub trait Observer: Send + Sync {
    /// An image's layers (digest, compressed size), before any is fetched.
    fn begin(&self, _layers: &[(String, u64)]) {}
    /// `bytes` more of layer `layer`'s blob arrived verified.
    fn fetched(&self, _layer: usize, _bytes: u64) {}
    /// Layer `layer` is in the root, every digest matched.
    fn applied(&self, _layer: usize, _report: &LayerReport) {}
    /// The image is applied, or failed (`report` then holds the layers that were).
    fn end(&self, _report: &ApplyReport) {}
}

/// The observer that watches nothing.
pub struct Unobserved;
impl Observer for Unobserved {}

/// A channel-fed reader: verified chunks arrive from the fetch side, in order. An empty chunk
/// marks the end of a blob whose digest matched; a channel closed without it means the fetch
/// stopped, which the inflater must not take for the end of the stream.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    ended: bool,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(b) if b.is_empty() => self.ended = true,
                Some(b) => self.cur = b,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the layer's fetch stopped",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

struct ChannelSink {
    tx: mpsc::Sender<Bytes>,
    observer: Arc<dyn Observer>,
    index: usize,
}

impl ChannelSink {
    async fn finish(self) {
        // The inflater may already have stopped on its own error, which it reports itself.
        let _ = self.tx.send(Bytes::new()).await;
    }
}

impl BlobSink for ChannelSink {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Bytes::copy_from_slice(data))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the inflater stopped"))?;
        self.observer.fetched(self.index, data.len() as u64);
        Ok(())
    }
}

/// Fetches, verifies, inflates and checks one layer into `spill`; returns its size. The spill
/// is declared good only after the diff_id matched, so its reader never sees an unchecked end.
async fn stage_layer(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    index: usize,
    spill: spill::SpillWriter,
    budget: inflate::Budget,
    observer: Arc<dyn Observer>,
    keys: (Arc<crate::ocicrypt::LayerKeys>, std::path::PathBuf),
) -> Result<u64, ApplyError> {
    if crate::ocicrypt::is_encrypted(&resolved.layers[index].desc) {
        let (keys, path) = keys;
        return decrypt::stage_encrypted(gw, resolved, index, spill, budget, observer, keys, path)
            .await;
    }
    let blob = resolved.layers[index].clone();
    let compression = resolved.layer_compression(index)?;
    let expected = resolved.image_config.rootfs().diff_ids()[index].clone();
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let digest = blob.desc.digest().to_string();
    let inflater = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
            ended: false,
        };
        let mut out = io::BufWriter::with_capacity(1 << 20, spill);
        // `inflate` flushes on success; on failure the unflushed rest is of no use.
        let result =
            inflate::inflate(reader, compression, &budget, &mut out).and_then(|(size, diff)| {
                if format!("sha256:{diff}") == expected {
                    Ok(size)
                } else {
                    Err(ApplyError::DiffId {
                        index,
                        digest,
                        expected,
                        actual: diff,
                    })
                }
            });
        let (spill, _) = out.into_parts();
        match result {
            Ok(size) => Ok((size, spill)),
            Err(e) => {
                spill.fail(e.to_string());
                Err(e)
            }
        }
    });
    let mut sink = ChannelSink {
        tx,
        observer,
        index,
    };
    let fetched = Resolved::fetch_blob(&gw, &blob, &mut sink).await;
    if fetched.is_ok() {
        sink.finish().await;
    } else {
        drop(sink);
    }
    let inflated = inflater
        .await
        .map_err(|e| ApplyError::Internal(format!("inflater: {e}")))
        .and_then(|r| r);
    let ((), (size, spill)) = cause(
        fetched.map_err(|e| ApplyError::from(e).echo()),
        inflated.map_err(ApplyError::echo),
    )?;
    // Only now, with the blob's sha256 checked too, may the applier see the end of the layer.
    spill.finish();
    Ok(size)
}

/// Applies every layer of `resolved` onto the directory `rootfs`, using `scratch` for spill
/// files. Layers are fetched and inflated `parallelism` at a time; the applier follows the
/// current layer's inflater. On error the root is left partly written: callers discard it
/// (nothing from it has run).
pub async fn apply_image(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    rootfs: &Path,
    scratch: &Path,
    limits: &ApplyLimits,
) -> Result<ApplyReport, ApplyError> {
    apply_observed(gw, resolved, rootfs, scratch, limits, Arc::new(Unobserved)).await
}

/// [`apply_image`], reporting progress to `observer`.
pub async fn apply_observed(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    rootfs: &Path,
    scratch: &Path,
    limits: &ApplyLimits,
    observer: Arc<dyn Observer>,
) -> Result<ApplyReport, ApplyError> {
    let layers: Vec<(String, u64)> = resolved
        .layers
        .iter()
        .map(|l| (l.desc.digest().to_string(), l.desc.size()))
        .collect();
    observer.begin(&layers);
    let mut report = ApplyReport::default();
    let result = apply_layers(
        gw,
        resolved,
        rootfs,
        scratch,
        limits,
        &observer,
        &mut report,
    )
    .await;
    observer.end(&report);
    result.map(|()| report)
}

async fn apply_layers(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    rootfs: &Path,
    scratch: &Path,
    limits: &ApplyLimits,
    observer: &Arc<dyn Observer>,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let started = Instant::now();
    let root = Arc::new(fs::Root::open(rootfs)?);
    let permits = Arc::new(Semaphore::new(limits.parallelism.max(1)));
    let image_budget = inflate::ImageBudget::new(limits.max_total_uncompressed);
    let mut jobs = Vec::new();
    for i in 0..resolved.layers.len() {
        let path = scratch.join(format!("layer-{i}.tar"));
        let (writer, reader) = spill::create(&path).map_err(|source| ApplyError::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        let budget = inflate::Budget {
            layer_max: limits.max_layer_uncompressed,
            image: image_budget.clone(),
        };
        let (gw, resolved, permits) = (gw.clone(), resolved.clone(), permits.clone());
        let observer = observer.clone();
        let keys = (
            limits.layer_keys.clone(),
            scratch.join(format!("layer-{i}.enc")),
        );
        let job = tokio::spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| ApplyError::Internal("semaphore closed".into()))?;
            stage_layer(gw, resolved, i, writer, budget, observer, keys).await
        });
        jobs.push((reader, job));
    }
    let mut total = 0u64;
    let mut jobs = jobs.into_iter().enumerate();
    while let Some((i, (reader, job))) = jobs.next() {
        let (root2, limits2) = (root.clone(), limits.clone());
        let applier = tokio::task::spawn_blocking(move || {
            let mut r = io::BufReader::with_capacity(1 << 20, reader);
            let stats = layer::apply_tar(&root2, &mut r, &limits2)?;
            // Past the end-of-archive blocks: read to the verified end, so that the layer's
            // diff_id covers everything and its end is known good.
            io::copy(&mut r, &mut io::sink()).map_err(ApplyError::Tar)?;
            Ok(stats)
        });
        let staged = job
            .await
            .map_err(|e| ApplyError::Internal(format!("layer task: {e}")))
            .and_then(|r| r);
        let applied = applier
            .await
            .map_err(|e| ApplyError::Internal(format!("applier: {e}")))
            .and_then(|r| r);
        // When both failed, the stage's error is the cause (the applier saw a failed stream)
        // unless the stage was only interrupted by the applier's own failure.
        let digest = resolved.layers[i].desc.digest().to_string();
        let (size, stats) = match cause(staged, applied) {
            Ok(v) => v,
            Err(e) => {
                let e = e.in_layer(i, &digest);
                for (_, (_, j)) in jobs {
                    j.abort();
                }
                return Err(e);
            }
        };
        total += size;
        let layer = LayerReport {
            digest,
            compressed_bytes: resolved.layers[i].desc.size(),
            uncompressed_bytes: size,
            entries: stats.entries,
            file_bytes: stats.file_bytes,
            whiteouts: stats.whiteouts,
        };
        info!(
            layer = i,
            digest = %layer.digest,
            compressed_bytes = layer.compressed_bytes,
            uncompressed_bytes = layer.uncompressed_bytes,
            entries = layer.entries,
            file_bytes = layer.file_bytes,
            "layer applied"
        );
        observer.applied(i, &layer);
        report.compressed_bytes += layer.compressed_bytes;
        report.entries += layer.entries;
        report.file_bytes += layer.file_bytes;
        report.devices_left_out += stats.devices_left_out;
        report.layers.push(layer);
    }
    report.uncompressed_bytes = total;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(())
}
