//! Applying verified layers onto a root.
//!
//! Trust boundary: a layer is applied only after its compressed digest and size matched the
//! manifest and its uncompressed digest matched the config's diff_id. Layers are fetched and
//! inflated in parallel into spill files, and applied strictly in order.

pub mod fs;
pub mod inflate;
pub mod layer;
pub mod path;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, Semaphore};
use tracing::info;

pub use layer::LayerStats;

use crate::fetch::{BlobSink, Gateways};
use crate::oci::{OciError, Resolved};

/// Bounds on what layers may do (see docs/limits.md).
#[derive(Debug, Clone)]
pub struct ApplyLimits {
    /// Uncompressed bytes across all layers.
    pub max_total_uncompressed: u64,
    /// A layer may inflate to `max_ratio` times its compressed size ...
    pub max_ratio: u64,
    /// ... or to this, whichever is larger (small layers of zeros are legitimate).
    pub ratio_floor: u64,
    /// Entries in one layer.
    pub max_entries: u64,
    pub max_path_len: usize,
    pub max_path_depth: usize,
    /// One PAX extended header (the records before one entry).
    pub max_pax_size: u64,
    /// Layers fetched and inflated at once.
    pub parallelism: usize,
}

impl Default for ApplyLimits {
    fn default() -> Self {
        ApplyLimits {
            max_total_uncompressed: 32 << 30,
            max_ratio: 100,
            ratio_floor: 256 << 20,
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_path_depth: 256,
            max_pax_size: 1 << 20,
            parallelism: 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
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
    #[error("decompression bomb: the layer inflates past {max} bytes (the limit for its size)")]
    Bomb { max: u64 },
    #[error("decompressing the layer failed: {0}")]
    Decompress(io::Error),
    #[error("malformed tar stream: {0}")]
    Tar(io::Error),
    #[error("entry {0:?} has an absolute name")]
    AbsolutePath(String),
    #[error("entry {0:?} contains a \"..\" component")]
    DotDot(String),
    #[error("entry {path:?} is longer than {max} bytes")]
    PathTooLong { path: String, max: usize },
    #[error("entry {path:?} is nested deeper than {max} levels")]
    PathTooDeep { path: String, max: usize },
    #[error("entry name {0:?} contains a NUL byte")]
    BadName(String),
    #[error("more than {0} entries in one layer")]
    TooManyEntries(u64),
    #[error("PAX or long-name header of {size} bytes exceeds the {max}-byte limit")]
    PaxTooLarge { size: u64, max: u64 },
    #[error("malformed PAX record {0}")]
    Pax(String),
    #[error("an entry would replace the root directory with a {0} entry")]
    RootType(String),
    #[error("{0}: a symlink in the path leads outside the root or to nothing")]
    SymlinkOutside(String),
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
    #[error("{0}: a path component is not a directory")]
    NotADirectory(String),
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
    #[error("the image inflates past {max} bytes in all")]
    TotalTooLarge { max: u64 },
    #[error("{op} {path}: {source}")]
    Fs {
        path: String,
        op: &'static str,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("internal: {0}")]
    Internal(String),
}

/// What applying an image did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub layers: Vec<LayerStats>,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub seconds: f64,
}

/// A channel-fed reader: verified chunks arrive from the fetch side, in order.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

struct ChannelSink(mpsc::Sender<Bytes>);

impl BlobSink for ChannelSink {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.0
            .send(Bytes::copy_from_slice(data))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the inflater stopped"))
    }
}

/// Fetches, verifies, inflates and checks one layer into `spill`; returns its size.
async fn stage_layer(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    index: usize,
    spill: PathBuf,
    max_out: u64,
) -> Result<u64, ApplyError> {
    let blob = resolved.layers[index].clone();
    let compression = resolved.layer_compression(index)?;
    let expected = resolved.image_config.rootfs().diff_ids()[index].clone();
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let spill2 = spill.clone();
    let inflater = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::create(&spill2).map_err(|source| ApplyError::Io {
            what: format!("creating {}", spill2.display()),
            source,
        })?;
        let reader = ChannelReader {
            rx,
            cur: Bytes::new(),
        };
        inflate::inflate(
            reader,
            compression,
            max_out,
            io::BufWriter::with_capacity(1 << 20, f),
        )
    });
    let mut sink = ChannelSink(tx);
    let fetched = Resolved::fetch_blob(&gw, &blob, &mut sink).await;
    drop(sink);
    let inflated = inflater
        .await
        .map_err(|e| ApplyError::Internal(format!("inflater: {e}")))?;
    fetched?;
    let (size, diff) = inflated?;
    if format!("sha256:{diff}") != expected {
        return Err(ApplyError::DiffId {
            index,
            digest: blob.desc.digest().to_string(),
            expected,
            actual: diff,
        });
    }
    Ok(size)
}

/// Applies every layer of `resolved` onto the directory `rootfs`, using `scratch` for spill
/// files. On error the root is left partly written: callers discard it (nothing from it has
/// run).
pub async fn apply_image(
    gw: Arc<Gateways>,
    resolved: Arc<Resolved>,
    rootfs: &Path,
    scratch: &Path,
    limits: &ApplyLimits,
) -> Result<ApplyReport, ApplyError> {
    let started = Instant::now();
    let root = Arc::new(fs::Root::open(rootfs)?);
    let permits = Arc::new(Semaphore::new(limits.parallelism.max(1)));
    let mut jobs = Vec::new();
    for (i, layer) in resolved.layers.iter().enumerate() {
        let spill = scratch.join(format!("layer-{i}.tar"));
        let max_out = limits
            .ratio_floor
            .max(layer.desc.size().saturating_mul(limits.max_ratio))
            .min(limits.max_total_uncompressed);
        let (gw, resolved, permits, spill2) =
            (gw.clone(), resolved.clone(), permits.clone(), spill.clone());
        let job = tokio::spawn(async move {
            let _permit = permits
                .acquire_owned()
                .await
                .map_err(|_| ApplyError::Internal("semaphore closed".into()))?;
            stage_layer(gw, resolved, i, spill2, max_out).await
        });
        jobs.push((spill, job));
    }
    let mut report = ApplyReport::default();
    let mut total = 0u64;
    let mut jobs = jobs.into_iter().enumerate();
    while let Some((i, (spill, job))) = jobs.next() {
        let staged = job
            .await
            .map_err(|e| ApplyError::Internal(format!("layer task: {e}")));
        let size = match staged.and_then(|r| r) {
            Ok(s) => s,
            Err(e) => {
                for (_, (_, j)) in jobs {
                    j.abort();
                }
                return Err(e);
            }
        };
        total += size;
        if total > limits.max_total_uncompressed {
            return Err(ApplyError::TotalTooLarge {
                max: limits.max_total_uncompressed,
            });
        }
        let (root2, limits2, spill2) = (root.clone(), limits.clone(), spill.clone());
        let stats = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&spill2).map_err(|source| ApplyError::Io {
                what: format!("opening {}", spill2.display()),
                source,
            })?;
            let r = layer::apply_tar(&root2, io::BufReader::with_capacity(1 << 20, f), &limits2);
            let _ = std::fs::remove_file(&spill2);
            r
        })
        .await
        .map_err(|e| ApplyError::Internal(format!("applier: {e}")))??;
        info!(layer = i, digest = %resolved.layers[i].desc.digest(), entries = stats.entries, bytes = size, "layer applied");
        report.compressed_bytes += resolved.layers[i].desc.size();
        report.layers.push(stats);
    }
    report.uncompressed_bytes = total;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
