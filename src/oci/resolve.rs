//! From a root CID to a verified manifest and config, whatever the publishing layout.

use std::io;

use bytes::Bytes;
use cid::Cid;
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use super::{
    check_bytes, is_config, is_index, is_manifest, layer_compression, sha256_hex, Compression,
    Limits, OciError, Platform, Selector, ANN_REF_NAME,
};
use crate::fetch::gateway::SizeRule;
use crate::fetch::unixfs::{self, Directory};
use crate::fetch::{dagpb, BlobSink, FetchError, Gateways};
use crate::reference::{parse_cid, CODEC_DAG_PB, CODEC_RAW};

/// How the root CID was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootKind {
    /// (a) A UnixFS directory holding an OCI image layout.
    OciLayout,
    /// (b) An image index stored as one document; blobs located by `ipfs://` urls.
    Index,
    /// (b) An image manifest stored as one document; blobs located by `ipfs://` urls.
    Manifest,
    /// (c) nerdctl `ipfs push`: a descriptor of the index; blobs located by `ipfs://` urls.
    Descriptor,
}

/// A blob, its descriptor, and the CID it is fetched by.
#[derive(Debug, Clone)]
pub struct Blob {
    /// The blob's descriptor, whose size and digest its bytes must match.
    pub desc: Descriptor,
    /// Where the blob is fetched: from the layout's `blobs/sha256` directory or a descriptor's
    /// `ipfs://` url.
    pub cid: Cid,
}

/// A verified image: everything but the layer contents, which stream later.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The CID the image was resolved from.
    pub root: Cid,
    /// How that CID was published.
    pub kind: RootKind,
    /// The platform the manifest is for.
    pub platform: Platform,
    /// The manifest's descriptor, checked against its bytes.
    pub manifest_desc: Descriptor,
    /// The manifest as fetched, byte for byte.
    pub manifest_bytes: Bytes,
    /// The manifest, parsed after its bytes matched its descriptor.
    pub manifest: ImageManifest,
    /// The config blob.
    pub config: Blob,
    /// The config as fetched, byte for byte.
    pub config_bytes: Bytes,
    /// The config, parsed after its bytes matched its descriptor.
    pub image_config: ImageConfiguration,
    /// The layer blobs, bottom first.
    pub layers: Vec<Blob>,
}

impl Resolved {
    /// The size of all layers as fetched, before decompression.
    pub fn total_compressed(&self) -> u64 {
        self.layers.iter().map(|l| l.desc.size()).sum()
    }

    /// How layer `i` is compressed, refusing a media type that is not applied; panics if `i` is out
    /// of range.
    pub fn layer_compression(&self, i: usize) -> Result<Compression, OciError> {
        layer_compression(self.layers[i].desc.media_type())
    }

    /// Streams one layer blob into `sink`, verifying its exact size and sha256 on the way.
    pub async fn fetch_blob<S: BlobSink>(
        gateways: &Gateways,
        blob: &Blob,
        sink: &mut S,
    ) -> Result<(), OciError> {
        let mut v = DigestSink {
            inner: sink,
            hasher: Sha256::new(),
        };
        gateways
            .file(&blob.cid, SizeRule::Exact(blob.desc.size()), &mut v)
            .await?;
        let got = hex::encode(v.hasher.finalize());
        if got != sha256_hex(&blob.desc)? {
            return Err(OciError::DigestMismatch {
                what: "blob",
                expected: blob.desc.digest().to_string(),
                actual: format!("sha256:{got} (from ipfs://{})", blob.cid),
            });
        }
        Ok(())
    }
}

/// A verified OCI artifact (image-spec 1.1): a manifest whose config is not an image config
/// or that declares an `artifactType`. Its layers may be of any media type.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The CID the artifact was resolved from.
    pub root: Cid,
    /// How that CID was published.
    pub kind: RootKind,
    /// The manifest's `artifactType`, or else its config's media type.
    pub artifact_type: String,
    /// The manifest's descriptor, checked against its bytes.
    pub manifest_desc: Descriptor,
    /// The manifest as fetched, byte for byte.
    pub manifest_bytes: Bytes,
    /// The manifest, parsed after its bytes matched its descriptor.
    pub manifest: ImageManifest,
    /// The config blob (for many artifacts the 2-byte empty `{}`).
    pub config: Blob,
    /// The config as fetched, byte for byte.
    pub config_bytes: Bytes,
    /// The artifact's files, in manifest order.
    pub layers: Vec<Blob>,
}

impl Artifact {
    /// The size of all layers, as fetched.
    pub fn total_size(&self) -> u64 {
        self.layers.iter().map(|l| l.desc.size()).sum()
    }
}

/// What a reference resolved to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A runnable image.
    Image(Box<Resolved>),
    /// An artifact, which `cidboot pull` fetches but cannot boot.
    Artifact(Box<Artifact>),
}

struct DigestSink<'a, S> {
    inner: &'a mut S,
    hasher: Sha256,
}

impl<S: BlobSink> BlobSink for DigestSink<'_, S> {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.hasher.update(data);
        self.inner.write(data).await
    }
}

/// Where blobs live: in the layout's `blobs/sha256` directory, or wherever `urls` point.
enum Locator {
    Layout(Directory),
    Urls,
}

impl Locator {
    fn locate(&self, desc: &Descriptor) -> Result<Cid, OciError> {
        let hex = sha256_hex(desc)?;
        match self {
            Locator::Layout(dir) => dir.get(hex).ok_or_else(|| OciError::Location {
                digest: desc.digest().to_string(),
                reason: "missing from the layout's blobs/sha256 directory".into(),
            }),
            Locator::Urls => {
                let url = desc
                    .urls()
                    .iter()
                    .flatten()
                    .find(|u| u.starts_with("ipfs://"))
                    .ok_or_else(|| OciError::Location {
                        digest: desc.digest().to_string(),
                        reason: "descriptor has no ipfs:// url".into(),
                    })?;
                let cid_str = url.trim_start_matches("ipfs://").trim_end_matches('/');
                let cid = parse_cid(cid_str).map_err(FetchError::from)?;
                // A raw CID's digest is the blob's sha256: a mismatch is provable before
                // fetching a byte.
                if cid.codec() == CODEC_RAW && hex::encode(cid.hash().digest()) != hex {
                    return Err(OciError::DigestMismatch {
                        what: "blob url",
                        expected: desc.digest().to_string(),
                        actual: format!(
                            "sha256:{} (named by {url})",
                            hex::encode(cid.hash().digest())
                        ),
                    });
                }
                Ok(cid)
            }
        }
    }
}

/// Resolves `root` to a verified image manifest and config. An artifact is refused by name.
pub async fn resolve(
    gw: &Gateways,
    root: &Cid,
    sel: &Selector,
    limits: &Limits,
) -> Result<Resolved, OciError> {
    match resolve_any(gw, root, sel, limits).await? {
        Target::Image(r) => Ok(*r),
        Target::Artifact(a) => Err(OciError::Artifact {
            artifact_type: a.artifact_type,
        }),
    }
}

/// Resolves `root` to a verified image or artifact, selecting from an index by `sel`.
pub async fn resolve_any(
    gw: &Gateways,
    root: &Cid,
    sel: &Selector,
    limits: &Limits,
) -> Result<Target, OciError> {
    crate::reference::check_cid(root).map_err(FetchError::from)?;
    let r = Resolver {
        gw,
        sel,
        limits,
        in_layout: Default::default(),
    };
    let (kind, locator, doc) = r.root(root).await?;
    let what = if kind == RootKind::OciLayout {
        "index.json"
    } else {
        "the image index"
    };
    let (manifest_desc, manifest_bytes) = match doc {
        RootDoc::Index(desc, bytes) => r.select(&locator, &desc, bytes, 0, what).await?,
        RootDoc::Manifest(desc, bytes) => {
            if sel.tag.is_some() {
                return Err(OciError::Select(format!(
                    "{root} names a single manifest, which has no tags: leave out --tag"
                )));
            }
            if let Some(d) = &sel.digest {
                if *d != desc.digest().to_string() {
                    return Err(OciError::Select(format!(
                        "{root} names the single manifest {}, not {d}",
                        desc.digest()
                    )));
                }
            }
            (desc, bytes)
        }
    };
    r.finish(root, kind, &locator, manifest_desc, manifest_bytes)
        .await
}

enum RootDoc {
    Index(Descriptor, Bytes),
    Manifest(Descriptor, Bytes),
}

struct Resolver<'a> {
    gw: &'a Gateways,
    sel: &'a Selector,
    limits: &'a Limits,
    /// Set once the root is known to be a layout: errors then name `blobs/sha256/<hex>`.
    in_layout: std::sync::atomic::AtomicBool,
}

/// Most manifests (and their images' configs) read to tell index entries without a platform
/// apart: referrers from images, and images by the platform their configs give.
pub const MAX_PROBED_ENTRIES: usize = 16;

/// An index entry without a platform, as its manifest and config describe it.
struct Probed<'d> {
    desc: &'d Descriptor,
    /// Its manifest, kept when it may be the one chosen.
    manifest: Option<Bytes>,
    /// Whether its config's platform is the one selected (`None`: not an image).
    fits: Option<bool>,
    /// What it is, for messages.
    platform: String,
}

impl Resolver<'_> {
    async fn root(&self, root: &Cid) -> Result<(RootKind, Locator, RootDoc), OciError> {
        if root.codec() == CODEC_DAG_PB {
            let block = self.gw.block(root).await?;
            let node = dagpb::decode(&block).map_err(FetchError::from)?;
            let kind = node
                .data
                .as_ref()
                .map(unixfs::Data::decode)
                .transpose()
                .map_err(FetchError::from)?
                .map(|d| d.kind);
            if kind == Some(unixfs::Kind::Directory) || kind == Some(unixfs::Kind::HamtShard) {
                let dir = self.gw.directory_from(block).await?;
                return self.layout(root, dir).await;
            }
        }
        // A single JSON document: an index, a manifest, or a nerdctl descriptor.
        let bytes = self
            .fetch_capped(
                root,
                self.limits.max_manifest.max(self.limits.max_index),
                "root document",
            )
            .await?;
        let probe: serde_json::Value = parse_json("root document", &bytes)?;
        if probe.get("manifests").is_some() {
            Ok((
                RootKind::Index,
                Locator::Urls,
                RootDoc::Index(synthetic(&bytes, MediaType::ImageIndex)?, bytes),
            ))
        } else if probe.get("layers").is_some() {
            Ok((
                RootKind::Manifest,
                Locator::Urls,
                RootDoc::Manifest(synthetic(&bytes, MediaType::ImageManifest)?, bytes),
            ))
        } else if probe.get("digest").is_some() {
            if bytes.len() as u64 > self.limits.max_small_doc {
                return Err(OciError::TooLarge {
                    what: "root descriptor",
                    digest: root.to_string(),
                    size: bytes.len() as u64,
                    max: self.limits.max_small_doc,
                });
            }
            let target: Descriptor = parse_json("root descriptor", &bytes)?;
            let cid = Locator::Urls.locate(&target)?;
            if is_index(target.media_type()) {
                let b = self
                    .doc(&target, cid, "index", self.limits.max_index)
                    .await?;
                Ok((
                    RootKind::Descriptor,
                    Locator::Urls,
                    RootDoc::Index(target, b),
                ))
            } else if is_manifest(target.media_type()) {
                let b = self
                    .doc(&target, cid, "manifest", self.limits.max_manifest)
                    .await?;
                Ok((
                    RootKind::Descriptor,
                    Locator::Urls,
                    RootDoc::Manifest(target, b),
                ))
            } else {
                Err(OciError::MediaType {
                    what: "root descriptor target",
                    media_type: target.media_type().to_string(),
                    reason: "must be an image index or manifest",
                })
            }
        } else {
            Err(OciError::Layout(format!(
                "{root} is neither an OCI layout directory, an index, a manifest nor a descriptor"
            )))
        }
    }

    async fn layout(
        &self,
        root: &Cid,
        dir: Directory,
    ) -> Result<(RootKind, Locator, RootDoc), OciError> {
        let need = |name: &str| {
            dir.get(name).ok_or_else(|| {
                OciError::Layout(format!(
                    "directory {root} is not an OCI image layout: it has no {name:?}"
                ))
            })
        };
        self.in_layout
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let layout_cid = need("oci-layout")?;
        let index_cid = need("index.json")?;
        let blobs_cid = need("blobs")?;
        // The marker, the blobs directory and index.json are fetched at once: each is a round
        // trip, and through a gateway far away those add up before the first layer starts.
        let marker = async {
            let marker = self
                .fetch_capped(&layout_cid, self.limits.max_small_doc, "oci-layout")
                .await?;
            let marker: serde_json::Value = parse_json("oci-layout", &marker)?;
            match marker.get("imageLayoutVersion").and_then(|v| v.as_str()) {
                Some(v) if v.starts_with("1.") => Ok(()),
                other => Err(OciError::Layout(format!(
                    "unsupported imageLayoutVersion {other:?} (1.x only)"
                ))),
            }
        };
        let sha_dir = async {
            let blobs =
                self.gw
                    .directory(&blobs_cid)
                    .await
                    .map_err(|source| OciError::Fetching {
                        what: "the layout's blobs directory".into(),
                        source,
                    })?;
            let sha_cid = blobs.get("sha256").ok_or_else(|| {
                OciError::Layout(format!("{root}: blobs has no sha256 directory"))
            })?;
            self.gw
                .directory(&sha_cid)
                .await
                .map_err(|source| OciError::Fetching {
                    what: "the layout's blobs/sha256 directory".into(),
                    source,
                })
        };
        let index = self.fetch_capped(&index_cid, self.limits.max_index, "index.json");
        let ((), sha_dir, index) = tokio::try_join!(marker, sha_dir, index)?;
        let desc = synthetic(&index, MediaType::ImageIndex)?;
        info!(%root, blobs = sha_dir.entries.len(), "found an OCI image layout");
        Ok((
            RootKind::OciLayout,
            Locator::Layout(sha_dir),
            RootDoc::Index(desc, index),
        ))
    }

    /// Picks the manifest: by tag or digest (top level only), skipping referrers when neither
    /// is given, then by platform; nested indexes are followed.
    async fn select(
        &self,
        locator: &Locator,
        desc: &Descriptor,
        bytes: Bytes,
        depth: usize,
        what: &str,
    ) -> Result<(Descriptor, Bytes), OciError> {
        if depth > self.limits.max_index_depth {
            return Err(OciError::Layout(format!(
                "image indexes nested deeper than {}",
                self.limits.max_index_depth
            )));
        }
        let index: ImageIndex = parse_json("image index", &bytes)?;
        check_doc_media_type(desc, index.media_type().as_ref(), "image index")?;
        // `subject` on an index entry is not in the OCI descriptor type: read it raw.
        let raw: serde_json::Value = parse_json("image index", &bytes)?;
        let with_subject = |i: usize| {
            raw.get("manifests")
                .and_then(|m| m.get(i))
                .and_then(|e| e.get("subject"))
                .is_some()
        };
        let all: Vec<&Descriptor> = index.manifests().iter().collect();
        let top = depth == 0;
        let (tag, digest) = if top {
            (self.sel.tag.as_deref(), self.sel.digest.as_deref())
        } else {
            (None, None)
        };
        let auto = tag.is_none() && digest.is_none();
        let chosen_from: Vec<&Descriptor> = if let Some(d) = digest {
            let m: Vec<&Descriptor> = all
                .iter()
                .copied()
                .filter(|e| e.digest().to_string() == d)
                .collect();
            if m.is_empty() {
                return Err(OciError::Select(format!(
                    "{what} has no entry {d}; it lists:{}",
                    list_entries(&all)
                )));
            }
            m
        } else if let Some(t) = tag {
            let m: Vec<&Descriptor> = all
                .iter()
                .copied()
                .filter(|e| ref_name(e) == Some(t))
                .collect();
            if m.is_empty() {
                return Err(OciError::Select(format!(
                    "{what} has no entry tagged {t:?}; it lists:{}",
                    list_entries(&all)
                )));
            }
            m
        } else {
            // Referrers (SBOMs, signatures: `oras attach`) and Docker attestations are never
            // the image meant; other artifacts are, when nothing else is there.
            let not_referrers: Vec<&Descriptor> = all
                .iter()
                .enumerate()
                .filter(|(i, e)| !is_attestation(e) && !with_subject(*i))
                .map(|(_, e)| *e)
                .collect();
            let images: Vec<&Descriptor> = not_referrers
                .iter()
                .copied()
                .filter(|e| !is_artifact_entry(e))
                .collect();
            if images.is_empty() {
                not_referrers
            } else {
                images
            }
        };
        let matching: Vec<&Descriptor> = dedup(
            chosen_from
                .iter()
                .copied()
                .filter(|d| {
                    d.platform()
                        .as_ref()
                        .is_some_and(|p| self.sel.platform.matches(p))
                })
                .collect(),
        );
        let unplatformed: Vec<&Descriptor> = dedup(
            chosen_from
                .iter()
                .copied()
                .filter(|d| d.platform().is_none())
                .collect(),
        );
        let ambiguous = |c: &[&Descriptor]| {
            OciError::Select(format!(
                "{what} lists {} images{}; choose one with --tag NAME or --digest DIGEST \
                 (`tag` or `digest` in the runtime configuration):{}",
                c.len(),
                if matching.is_empty() {
                    String::new()
                } else {
                    format!(" for {}", self.sel.platform)
                },
                list_entries(c)
            ))
        };
        let mut prefetched = None;
        let chosen: &Descriptor = if matching.len() == 1 {
            matching[0]
        } else if matching.len() > 1 {
            return Err(ambiguous(&matching));
        } else if unplatformed.len() == 1 {
            unplatformed[0]
        } else if unplatformed.len() > 1 {
            if unplatformed.len() > MAX_PROBED_ENTRIES {
                return Err(ambiguous(&unplatformed));
            }
            let probed = self.probe(locator, &unplatformed, auto).await?;
            // One runnable image: the one meant (its platform is checked against its config
            // when it is resolved). Several: their configs tell them apart, as containerd
            // does for entries that carry tags but no platform.
            let fitting: Vec<&Probed> = if probed.len() == 1 {
                probed.iter().collect()
            } else {
                probed.iter().filter(|p| p.fits == Some(true)).collect()
            };
            match fitting.as_slice() {
                [p] => {
                    prefetched = p.manifest.clone();
                    p.desc
                }
                [] if !probed.is_empty() && probed.iter().all(|p| p.fits == Some(false)) => {
                    return Err(OciError::Platform(format!(
                        "no manifest for {} in the index (available, from the images' configs: {})",
                        self.sel.platform,
                        probed
                            .iter()
                            .map(|p| p.platform.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                _ => {
                    let c: Vec<&Descriptor> = if fitting.is_empty() {
                        unplatformed.clone()
                    } else {
                        fitting.iter().map(|p| p.desc).collect()
                    };
                    return Err(ambiguous(&c));
                }
            }
        } else {
            let available: Vec<String> = chosen_from
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => "unspecified".into(),
                })
                .collect();
            return Err(OciError::Platform(format!(
                "no manifest for {} in the index (available: {})",
                self.sel.platform,
                if available.is_empty() {
                    "none".into()
                } else {
                    available.join(", ")
                }
            )));
        };
        let cid = locator.locate(chosen)?;
        if is_index(chosen.media_type()) {
            let b = self
                .doc(chosen, cid, "image index", self.limits.max_index)
                .await?;
            return Box::pin(self.select(locator, chosen, b, depth + 1, "the nested image index"))
                .await;
        }
        if !is_manifest(chosen.media_type()) {
            return Err(OciError::MediaType {
                what: "index entry",
                media_type: chosen.media_type().to_string(),
                reason: "must be an OCI or Docker v2 image manifest or index",
            });
        }
        let b = match prefetched {
            Some(b) => b,
            None => {
                self.doc(chosen, cid, "manifest", self.limits.max_manifest)
                    .await?
            }
        };
        Ok((chosen.clone(), b))
    }

    async fn finish(
        &self,
        root: &Cid,
        kind: RootKind,
        locator: &Locator,
        manifest_desc: Descriptor,
        manifest_bytes: Bytes,
    ) -> Result<Target, OciError> {
        let manifest: ImageManifest = parse_json("image manifest", &manifest_bytes)?;
        check_doc_media_type(
            &manifest_desc,
            manifest.media_type().as_ref(),
            "image manifest",
        )?;
        if manifest.schema_version() != 2 {
            return Err(OciError::Parse {
                what: "image manifest",
                reason: format!("schemaVersion {} (2 expected)", manifest.schema_version()),
            });
        }
        let config_desc = manifest.config().clone();
        let artifact_type = match manifest.artifact_type() {
            Some(t) if !is_config(t) => Some(t.to_string()),
            _ if !is_config(config_desc.media_type()) => Some(config_desc.media_type().to_string()),
            _ => None,
        };
        let layers = manifest.layers();
        if layers.len() > self.limits.max_layers {
            return Err(OciError::TooManyLayers {
                count: layers.len(),
                max: self.limits.max_layers,
            });
        }
        let mut total = 0u64;
        let mut blobs = Vec::with_capacity(layers.len());
        for l in layers {
            if artifact_type.is_none() {
                layer_compression(l.media_type())?;
            }
            sha256_hex(l)?;
            if l.size() > self.limits.max_blob {
                return Err(too_large("layer", l, self.limits.max_blob));
            }
            total = total.saturating_add(l.size());
            blobs.push(Blob {
                desc: l.clone(),
                cid: locator.locate(l)?,
            });
        }
        if total > self.limits.max_image {
            return Err(OciError::ImageTooLarge {
                size: total,
                max: self.limits.max_image,
            });
        }
        let config_cid = locator.locate(&config_desc)?;
        let config_bytes = self
            .doc(&config_desc, config_cid, "config", self.limits.max_config)
            .await?;
        let config = Blob {
            desc: config_desc,
            cid: config_cid,
        };
        if let Some(artifact_type) = artifact_type {
            debug!(manifest = %manifest_desc.digest(), %artifact_type, layers = blobs.len(), "artifact resolved");
            return Ok(Target::Artifact(Box::new(Artifact {
                root: *root,
                kind,
                artifact_type,
                manifest_desc,
                manifest_bytes,
                manifest,
                config,
                config_bytes,
                layers: blobs,
            })));
        }
        let image_config: ImageConfiguration = parse_json("image config", &config_bytes)?;
        let (os, arch) = (
            image_config.os().to_string(),
            image_config.architecture().to_string(),
        );
        let platform = &self.sel.platform;
        if os != platform.os || arch != platform.arch {
            return Err(OciError::Platform(format!(
                "the image is {os}/{arch}, not {platform}"
            )));
        }
        let diff_ids = image_config.rootfs().diff_ids().len();
        if diff_ids != blobs.len() {
            return Err(OciError::Parse {
                what: "image config",
                reason: format!("{diff_ids} diff_ids for {} layers", blobs.len()),
            });
        }
        debug!(manifest = %manifest_desc.digest(), layers = blobs.len(), "image resolved");
        Ok(Target::Image(Box::new(Resolved {
            root: *root,
            kind,
            platform: platform.clone(),
            manifest_desc,
            manifest_bytes,
            manifest,
            config,
            config_bytes,
            image_config,
            layers: blobs,
        })))
    }

    /// Reads the manifests of index entries without a platform, and each image's config, to
    /// learn what each is: referrers and artifacts are left out when `skip_referrers`, and
    /// each image is compared with the selected platform by its config's os, architecture
    /// and variant. At most [`MAX_PROBED_ENTRIES`] entries, each document within its cap, one
    /// held at a time (only the manifests of matching images are kept).
    async fn probe<'d>(
        &self,
        locator: &Locator,
        entries: &[&'d Descriptor],
        skip_referrers: bool,
    ) -> Result<Vec<Probed<'d>>, OciError> {
        let mut out = Vec::new();
        for d in entries {
            if !is_manifest(d.media_type()) {
                // A nested index: what it holds is chosen inside it.
                out.push(Probed {
                    desc: d,
                    manifest: None,
                    fits: None,
                    platform: "an index".into(),
                });
                continue;
            }
            let cid = locator.locate(d)?;
            let b = self
                .doc(d, cid, "manifest", self.limits.max_manifest)
                .await?;
            let m: serde_json::Value = parse_json("image manifest", &b)?;
            if manifest_is_referrer_or_artifact(&m) {
                if skip_referrers {
                    continue;
                }
                out.push(Probed {
                    desc: d,
                    manifest: Some(b),
                    fits: None,
                    platform: "an artifact".into(),
                });
                continue;
            }
            let manifest: ImageManifest = parse_json("image manifest", &b)?;
            let config_desc = manifest.config();
            let config_cid = locator.locate(config_desc)?;
            let config = self
                .doc(config_desc, config_cid, "config", self.limits.max_config)
                .await?;
            let config: ImageConfiguration = parse_json("image config", &config)?;
            let platform = Platform {
                os: config.os().to_string(),
                arch: config.architecture().to_string(),
                variant: config.variant().clone(),
            };
            let fits = self.sel.platform.matches_platform(&platform);
            debug!(manifest = %d.digest(), %platform, fits, "index entry without a platform, read from its config");
            out.push(Probed {
                desc: d,
                manifest: fits.then_some(b),
                fits: Some(fits),
                platform: platform.to_string(),
            });
        }
        Ok(out)
    }

    /// Fetches a document named by a descriptor, refusing it before fetching if over `cap`.
    async fn doc(
        &self,
        desc: &Descriptor,
        cid: Cid,
        what: &'static str,
        cap: u64,
    ) -> Result<Bytes, OciError> {
        sha256_hex(desc)?;
        if desc.size() > cap {
            return Err(too_large(what, desc, cap));
        }
        let mut buf = Vec::with_capacity(usize::try_from(desc.size()).unwrap_or(0));
        self.gw
            .file(&cid, SizeRule::Exact(desc.size()), &mut buf)
            .await
            .map_err(|source| {
                let place = if self.in_layout.load(std::sync::atomic::Ordering::Relaxed) {
                    format!(" (blobs/sha256/{})", desc.digest().digest())
                } else {
                    format!(" (ipfs://{cid})")
                };
                OciError::Fetching {
                    what: format!("{what} {}{place}", desc.digest()),
                    source,
                }
            })?;
        check_bytes(desc, what, &buf)?;
        Ok(Bytes::from(buf))
    }

    async fn fetch_capped(
        &self,
        cid: &Cid,
        cap: u64,
        what: &'static str,
    ) -> Result<Bytes, OciError> {
        let mut buf = Vec::new();
        self.gw
            .file(cid, SizeRule::AtMost(cap, what), &mut buf)
            .await
            .map_err(|source| OciError::Fetching {
                what: what.to_string(),
                source,
            })?;
        Ok(Bytes::from(buf))
    }
}

/// A descriptor for a document that no parent descriptor names (a root or index.json): its
/// media type is the one the document declares, or `default`.
fn synthetic(bytes: &[u8], default: MediaType) -> Result<Descriptor, OciError> {
    use std::str::FromStr;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    let digest = oci_spec::image::Digest::from_str(&digest).map_err(|e| OciError::Parse {
        what: "digest",
        reason: e.to_string(),
    })?;
    let declared = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(MediaType::from));
    Ok(Descriptor::new(
        declared.unwrap_or(default),
        bytes.len() as u64,
        digest,
    ))
}

fn too_large(what: &'static str, desc: &Descriptor, max: u64) -> OciError {
    OciError::TooLarge {
        what,
        digest: desc.digest().to_string(),
        size: desc.size(),
        max,
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &'static str, b: &[u8]) -> Result<T, OciError> {
    serde_json::from_slice(b).map_err(|e| OciError::Parse {
        what,
        reason: e.to_string(),
    })
}

fn check_doc_media_type(
    desc: &Descriptor,
    doc: Option<&MediaType>,
    what: &'static str,
) -> Result<(), OciError> {
    match doc {
        Some(mt) if mt != desc.media_type() => Err(OciError::MediaType {
            what,
            media_type: mt.to_string(),
            reason: "does not match the media type of the descriptor that named it",
        }),
        _ => Ok(()),
    }
}

fn is_attestation(d: &Descriptor) -> bool {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get("vnd.docker.reference.type"))
        .is_some_and(|t| t == "attestation-manifest")
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(ANN_REF_NAME))
        .map(String::as_str)
}

/// An index entry that says it is an artifact (an `artifactType` that is not an image's).
fn is_artifact_entry(d: &Descriptor) -> bool {
    d.artifact_type()
        .as_ref()
        .is_some_and(|t| !is_config(t) && !is_manifest(t) && !is_index(t))
}

/// A manifest that refers to another (`subject`) or is an artifact.
fn manifest_is_referrer_or_artifact(m: &serde_json::Value) -> bool {
    let image_type = |t: &str| {
        let mt = MediaType::from(t);
        is_config(&mt) || is_manifest(&mt)
    };
    m.get("subject").is_some()
        || m.get("artifactType")
            .and_then(|t| t.as_str())
            .is_some_and(|t| !image_type(t))
        || m.get("config")
            .and_then(|c| c.get("mediaType"))
            .and_then(|t| t.as_str())
            .is_some_and(|t| !is_config(&MediaType::from(t)))
}

/// Entries with distinct digests, in order.
fn dedup(v: Vec<&Descriptor>) -> Vec<&Descriptor> {
    let mut out: Vec<&Descriptor> = Vec::with_capacity(v.len());
    for d in v {
        if !out.iter().any(|o| o.digest() == d.digest()) {
            out.push(d);
        }
    }
    out
}

/// Most entries listed in an error; the rest are counted.
const MAX_LISTED: usize = 32;

/// The entries of an index, one a line: tag, digest, platform, artifact type.
fn list_entries(entries: &[&Descriptor]) -> String {
    let mut out = String::new();
    for d in entries.iter().take(MAX_LISTED) {
        out.push_str("\n  - ");
        match ref_name(d) {
            Some(t) => out.push_str(&format!("--tag {t:?}  ")),
            None => out.push_str("(untagged)  "),
        }
        out.push_str(&format!("--digest {}", d.digest()));
        if let Some(p) = d.platform() {
            out.push_str(&format!("  {}/{}", p.os(), p.architecture()));
        }
        if let Some(t) = d.artifact_type() {
            out.push_str(&format!("  artifactType {t}"));
        }
    }
    if entries.len() > MAX_LISTED {
        out.push_str(&format!("\n  … and {} more", entries.len() - MAX_LISTED));
    }
    if entries.is_empty() {
        out.push_str(" nothing");
    }
    out
}
