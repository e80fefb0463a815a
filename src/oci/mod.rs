//! OCI: index, manifest and config, checked against their descriptors.
//!
//! Trust boundary: a document is parsed only after its bytes have matched the descriptor's
//! sha256 and exact size, and only documents under a size cap are fetched at all.

pub mod layout;
pub mod resolve;

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{Descriptor, DigestAlgorithm, MediaType};
use sha2::{Digest as _, Sha256};

pub use resolve::{resolve, resolve_any, Artifact, Blob, Resolved, RootKind, Target};

use crate::fetch::FetchError;

/// OCI image index.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker manifest list, taken as an image index.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, taken as an OCI manifest.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config, taken as an OCI config.
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's gzip layer, applied as an OCI tar+gzip layer.
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The empty descriptor's media type (image-spec 1.1): the 2-byte `{}`.
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The annotation that tags an entry of index.json.
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation that names an artifact's layer as a file (`oras push`/`oras pull`).
pub const ANN_TITLE: &str = "org.opencontainers.image.title";

/// Size and count caps for image resolution (see docs/limits.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest image index document.
    pub max_index: u64,
    /// Largest image manifest document.
    pub max_manifest: u64,
    /// Largest image config document.
    pub max_config: u64,
    /// The `oci-layout` file and a nerdctl root descriptor.
    pub max_small_doc: u64,
    /// Largest single layer blob.
    pub max_blob: u64,
    /// Largest image, all its compressed layers together.
    pub max_image: u64,
    /// Most layers an image may have.
    pub max_layers: usize,
    /// Image indexes nested inside image indexes.
    pub max_index_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_index: 4 << 20,
            max_manifest: 4 << 20,
            max_config: 8 << 20,
            max_small_doc: 64 << 10,
            max_blob: 8 << 30,
            max_image: 16 << 30,
            // An encrypted-layers event names at most this many (crate::measure).
            max_layers: crate::measure::MAX_LAYERS,
            max_index_depth: 4,
        }
    }
}

/// Which entry of an image index to take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// The platform an index's manifest must be for (default `linux/amd64`).
    pub platform: Platform,
    /// The `org.opencontainers.image.ref.name` of a top-level index entry.
    pub tag: Option<String>,
    /// The digest of a top-level index entry, `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Selector {
    /// Checks the tag and digest before anything is fetched, so that a typo fails at once.
    pub fn new(
        platform: Platform,
        tag: Option<String>,
        digest: Option<String>,
    ) -> Result<Selector, OciError> {
        if let Some(t) = &tag {
            if t.is_empty() || t.len() > MAX_TAG_LEN || t.chars().any(char::is_control) {
                return Err(OciError::Select(format!(
                    "tag {t:?} is not a tag name (1 to {MAX_TAG_LEN} printable characters)"
                )));
            }
        }
        if let Some(d) = &digest {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(OciError::Select(format!(
                    "digest {d:?} is not sha256:<64 lowercase hex digits>"
                )));
            }
        }
        Ok(Selector {
            platform,
            tag,
            digest,
        })
    }

    /// Selects by platform alone, with neither a tag nor a digest.
    pub fn platform(platform: Platform) -> Selector {
        Selector {
            platform,
            ..Selector::default()
        }
    }
}

/// Longest tag accepted for selection (the OCI distribution spec's tag limit is 128).
pub const MAX_TAG_LEN: usize = 256;

/// How a layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// tar+gzip.
    Gzip,
    /// tar+zstd.
    Zstd,
}

/// The layer media types cidboot applies; anything else is refused by name.
pub fn layer_compression(mt: &MediaType) -> Result<Compression, OciError> {
    // An ocicrypt layer is its base type's blob under encryption: the base says how the
    // decrypted blob inflates.
    if let MediaType::Other(s) = mt {
        if let Some(base) = s.strip_suffix(crate::ocicrypt::ENCRYPTED_SUFFIX) {
            if !base.ends_with(crate::ocicrypt::ENCRYPTED_SUFFIX) {
                return layer_compression(&MediaType::from(base));
            }
        }
    }
    match mt {
        MediaType::ImageLayer => Ok(Compression::None),
        MediaType::ImageLayerGzip => Ok(Compression::Gzip),
        MediaType::ImageLayerZstd => Ok(Compression::Zstd),
        MediaType::Other(s) if s == MT_DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => Err(OciError::MediaType {
            what: "layer",
            media_type: mt.to_string(),
            reason: "non-distributable (foreign) layers are not fetched",
        }),
        _ => Err(OciError::MediaType {
            what: "layer",
            media_type: mt.to_string(),
            reason: "supported: OCI tar, tar+gzip, tar+zstd (each also +encrypted) and Docker rootfs.diff.tar.gzip",
        }),
    }
}

pub(crate) fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex) || matches!(mt, MediaType::Other(s) if s == MT_DOCKER_LIST)
}

pub(crate) fn is_manifest(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageManifest)
        || matches!(mt, MediaType::Other(s) if s == MT_DOCKER_MANIFEST)
}

pub(crate) fn is_config(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageConfig)
        || matches!(mt, MediaType::Other(s) if s == MT_DOCKER_CONFIG)
}

/// The sha256 hex of a descriptor, refusing other algorithms by name.
pub fn sha256_hex(desc: &Descriptor) -> Result<&str, OciError> {
    match desc.digest().algorithm() {
        DigestAlgorithm::Sha256 => Ok(desc.digest().digest()),
        other => Err(OciError::DigestAlgorithm {
            digest: desc.digest().to_string(),
            algorithm: other.to_string(),
        }),
    }
}

/// Checks bytes against a descriptor's exact size and sha256.
pub fn check_bytes(desc: &Descriptor, what: &'static str, data: &[u8]) -> Result<(), OciError> {
    if data.len() as u64 != desc.size() {
        return Err(OciError::SizeMismatch {
            what,
            digest: desc.digest().to_string(),
            expected: desc.size(),
            actual: data.len() as u64,
        });
    }
    let want = sha256_hex(desc)?;
    let got = hex::encode(Sha256::digest(data));
    if got != want {
        return Err(OciError::DigestMismatch {
            what,
            expected: desc.digest().to_string(),
            actual: format!("sha256:{got}"),
        });
    }
    Ok(())
}

/// An `os/arch[/variant]` platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system, as in the image index (`linux`).
    pub os: String,
    /// CPU architecture, as in the image index (`amd64`, `arm64`).
    pub arch: String,
    /// CPU variant (`v8`); when unset, any variant matches.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            arch: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || OciError::Platform(format!("{s:?} is not OS/ARCH[/VARIANT]"));
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                arch: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Whether `p` (from an image's config) is this platform; a variant is compared only when
    /// this one sets it.
    pub fn matches_platform(&self, p: &Platform) -> bool {
        p.os == self.os
            && p.arch == self.arch
            && match (&self.variant, &p.variant) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }

    /// Whether an index entry's platform is this one; a variant is compared only when this one sets
    /// it.
    pub fn matches(&self, p: &oci_spec::image::Platform) -> bool {
        if p.os().to_string() != self.os || p.architecture().to_string() != self.arch {
            return false;
        }
        match (&self.variant, p.variant()) {
            (Some(want), Some(have)) => want == have,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }
}

/// What stops an image from being resolved, verified or written out.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum OciError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// A fetch that failed, with what was being fetched (a path in the layout or a descriptor).
    #[error("{what}: {source}")]
    Fetching {
        what: String,
        #[source]
        source: FetchError,
    },
    #[error("{what} {digest}: size mismatch: the descriptor says {expected} bytes, the content has {actual}")]
    SizeMismatch {
        what: &'static str,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: digest mismatch: the descriptor says {expected}, the content is {actual}")]
    DigestMismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{what} {digest} is {size} bytes, over the {max}-byte cap")]
    TooLarge {
        what: &'static str,
        digest: String,
        size: u64,
        max: u64,
    },
    #[error("{digest}: digest algorithm {algorithm} is not supported (sha256 only)")]
    DigestAlgorithm { digest: String, algorithm: String },
    #[error("{what} has media type {media_type}: {reason}")]
    MediaType {
        what: &'static str,
        media_type: String,
        reason: &'static str,
    },
    #[error("{what} is not valid JSON of its kind: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("platform: {0}")]
    Platform(String),
    /// The root is published in no way cidboot reads, or its OCI image layout is malformed.
    #[error("{0}")]
    Layout(String),
    /// A blob a descriptor names cannot be found in the layout or from its urls.
    #[error("{digest}: {reason}")]
    Location { digest: String, reason: String },
    #[error("the image has {count} layers, over the cap of {max}")]
    TooManyLayers { count: usize, max: usize },
    #[error("the image is {size} bytes compressed, over the {max}-byte cap")]
    ImageTooLarge { size: u64, max: u64 },
    /// The tag, digest or platform asked for names no single entry of the index.
    #[error("{0}")]
    Select(String),
    #[error("this is an OCI artifact (artifactType {artifact_type}), not a runnable image: `cidboot inspect` describes it, `cidboot pull --oci-layout DIR` or `--files DIR` fetches it")]
    Artifact { artifact_type: String },
    #[error("writing the OCI layout at {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}
