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
    Limits, OciError, Platform,
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
    pub desc: Descriptor,
    pub cid: Cid,
}

/// A verified image: everything but the layer contents, which stream later.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub root: Cid,
    pub kind: RootKind,
    pub platform: Platform,
    pub manifest_desc: Descriptor,
    pub manifest_bytes: Bytes,
    pub manifest: ImageManifest,
    pub config: Blob,
    pub config_bytes: Bytes,
    pub image_config: ImageConfiguration,
    pub layers: Vec<Blob>,
}

impl Resolved {
    pub fn total_compressed(&self) -> u64 {
        self.layers.iter().map(|l| l.desc.size()).sum()
    }

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

/// Resolves `root` to a verified manifest and config for `platform`.
pub async fn resolve(
    gw: &Gateways,
    root: &Cid,
    platform: &Platform,
    limits: &Limits,
) -> Result<Resolved, OciError> {
    crate::reference::check_cid(root).map_err(FetchError::from)?;
    let r = Resolver {
        gw,
        platform,
        limits,
    };
    let (kind, locator, doc) = r.root(root).await?;
    let (manifest_desc, manifest_bytes) = match doc {
        RootDoc::Index(desc, bytes) => r.select(&locator, &desc, bytes, 0).await?,
        RootDoc::Manifest(desc, bytes) => (desc, bytes),
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
    platform: &'a Platform,
    limits: &'a Limits,
}

impl Resolver<'_> {
    async fn root(&self, root: &Cid) -> Result<(RootKind, Locator, RootDoc), OciError> {
        if root.codec() == CODEC_DAG_PB {
            let block = self.gw.block(root).await?;
            let node = dagpb::decode(&block).map_err(OciError::from)?;
            let kind = node
                .data
                .as_ref()
                .map(unixfs::Data::decode)
                .transpose()?
                .map(|d| d.kind);
            if kind == Some(unixfs::Kind::Directory) || kind == Some(unixfs::Kind::HamtShard) {
                let dir = Directory::parse(root, &block)?;
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
        let layout_cid = need("oci-layout")?;
        let index_cid = need("index.json")?;
        let blobs_cid = need("blobs")?;
        let marker = self
            .fetch_capped(&layout_cid, self.limits.max_small_doc, "oci-layout")
            .await?;
        let marker: serde_json::Value = parse_json("oci-layout", &marker)?;
        match marker.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => {}
            other => {
                return Err(OciError::Layout(format!(
                    "unsupported imageLayoutVersion {other:?} (1.x only)"
                )))
            }
        }
        let blobs = self.gw.directory(&blobs_cid).await?;
        let sha_cid = blobs
            .get("sha256")
            .ok_or_else(|| OciError::Layout(format!("{root}: blobs has no sha256 directory")))?;
        let sha_dir = self.gw.directory(&sha_cid).await?;
        let index = self
            .fetch_capped(&index_cid, self.limits.max_index, "index.json")
            .await?;
        let desc = synthetic(&index, MediaType::ImageIndex)?;
        info!(%root, blobs = sha_dir.entries.len(), "found an OCI image layout");
        Ok((
            RootKind::OciLayout,
            Locator::Layout(sha_dir),
            RootDoc::Index(desc, index),
        ))
    }

    /// Picks the manifest for the platform, following nested indexes.
    async fn select(
        &self,
        locator: &Locator,
        desc: &Descriptor,
        bytes: Bytes,
        depth: usize,
    ) -> Result<(Descriptor, Bytes), OciError> {
        if depth > self.limits.max_index_depth {
            return Err(OciError::Layout(format!(
                "image indexes nested deeper than {}",
                self.limits.max_index_depth
            )));
        }
        let index: ImageIndex = parse_json("image index", &bytes)?;
        check_doc_media_type(desc, index.media_type().as_ref(), "image index")?;
        let candidates: Vec<&Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| !is_attestation(d))
            .collect();
        let with_platform: Vec<&Descriptor> = candidates
            .iter()
            .copied()
            .filter(|d| {
                d.platform()
                    .as_ref()
                    .is_some_and(|p| self.platform.matches(p))
            })
            .collect();
        let chosen = match with_platform.first() {
            Some(d) => *d,
            None if candidates.len() == 1 && candidates[0].platform().is_none() => candidates[0],
            None => {
                let available: Vec<String> = candidates
                    .iter()
                    .map(|d| match d.platform() {
                        Some(p) => format!("{}/{}", p.os(), p.architecture()),
                        None => "unspecified".into(),
                    })
                    .collect();
                return Err(OciError::Platform(format!(
                    "no manifest for {} in the index (available: {})",
                    self.platform,
                    if available.is_empty() {
                        "none".into()
                    } else {
                        available.join(", ")
                    }
                )));
            }
        };
        let cid = locator.locate(chosen)?;
        if is_index(chosen.media_type()) {
            let b = self
                .doc(chosen, cid, "image index", self.limits.max_index)
                .await?;
            return Box::pin(self.select(locator, chosen, b, depth + 1)).await;
        }
        if !is_manifest(chosen.media_type()) {
            return Err(OciError::MediaType {
                what: "index entry",
                media_type: chosen.media_type().to_string(),
                reason: "must be an OCI or Docker v2 image manifest or index",
            });
        }
        let b = self
            .doc(chosen, cid, "manifest", self.limits.max_manifest)
            .await?;
        Ok((chosen.clone(), b))
    }

    async fn finish(
        &self,
        root: &Cid,
        kind: RootKind,
        locator: &Locator,
        manifest_desc: Descriptor,
        manifest_bytes: Bytes,
    ) -> Result<Resolved, OciError> {
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
        if !is_config(config_desc.media_type()) {
            return Err(OciError::MediaType {
                what: "config",
                media_type: config_desc.media_type().to_string(),
                reason: "must be an OCI or Docker image config",
            });
        }
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
            layer_compression(l.media_type())?;
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
        let image_config: ImageConfiguration = parse_json("image config", &config_bytes)?;
        let (os, arch) = (
            image_config.os().to_string(),
            image_config.architecture().to_string(),
        );
        if os != self.platform.os || arch != self.platform.arch {
            return Err(OciError::Platform(format!(
                "the image is {os}/{arch}, not {}",
                self.platform
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
        Ok(Resolved {
            root: *root,
            kind,
            platform: self.platform.clone(),
            manifest_desc,
            manifest_bytes,
            manifest,
            config: Blob {
                desc: config_desc,
                cid: config_cid,
            },
            config_bytes,
            image_config,
            layers: blobs,
        })
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
        let mut buf = Vec::with_capacity(desc.size() as usize);
        self.gw
            .file(&cid, SizeRule::Exact(desc.size()), &mut buf)
            .await?;
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
            .await?;
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
