//! Makes an EigenRuntime specification artifact as EigenLayer DevKit's artifact package
//! (`pkg/common/artifact`) describes and writes it, as an OCI image layout that `pack` turns
//! into a CAR: the manifest has `artifactType` `application/vnd.eigenruntime.manifest.v1`, a
//! config of media type `application/vnd.eigenruntime.manifest.config.v1+json` with DevKit's
//! fields, one `text/yaml` layer holding the specification, and DevKit's four annotations.
//! The config and the manifest are serialized as DevKit's Go code serializes them (keys in
//! byte order; the config indented by two spaces, the manifest compact), so that the same
//! inputs and the same time give the same digests.
//!
//! One addition: the layer carries `org.opencontainers.image.title`, the specification's file
//! name, so that `oras pull` and `cidboot pull --files` write it back as that file. DevKit's
//! readers take the `text/yaml` layer and ignore descriptor annotations.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::oci::layout::LayoutWriter;
use crate::oci::{OciError, ANN_REF_NAME, ANN_TITLE, MT_OCI_INDEX, MT_OCI_MANIFEST};

/// The manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.eigenruntime.manifest.v1";
/// The config's media type.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.eigenruntime.manifest.config.v1+json";
/// The specification layer's media type.
pub const SPEC_MEDIA_TYPE: &str = "text/yaml";
/// The annotation naming the EigenRuntime specification version.
pub const ANN_SPEC_VERSION: &str = "io.eigenruntime.spec.version";
/// What DevKit writes as `org.opencontainers.image.source`, the default here.
pub const DEVKIT_SOURCE: &str = "https://github.com/Layr-Labs/devkit-cli";
/// The largest specification packed (a runtime specification is a few kilobytes of YAML).
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Why an artifact could not be made.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum ArtifactError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Spec { path: String, reason: String },
    #[error("{what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Layout(#[from] OciError),
}

/// What the artifact says besides the specification.
#[derive(Debug, Clone)]
pub struct Options {
    /// The AVS's name (`avsName`, and the description).
    pub name: String,
    /// The release (`metadata.releaseVersion`, and the layout's tag).
    pub release: String,
    /// The EigenRuntime kind (`kind`, and the `validationSchema` it names).
    pub kind: String,
    /// `org.opencontainers.image.source`.
    pub source: String,
    /// When it was made, in whole seconds since the epoch (`createdAt`, and
    /// `org.opencontainers.image.created`).
    pub created: i64,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Made {
    /// The layout directory.
    pub oci_layout: String,
    /// The manifest's digest.
    pub manifest_digest: String,
    /// The config's digest.
    pub config_digest: String,
    /// The specification layer's digest.
    pub spec_digest: String,
}

/// Names DevKit's Go serialization would escape or a tag may not hold are refused, so that
/// the bytes written are the bytes DevKit writes for the same inputs.
fn check(what: &'static str, value: &str, max: usize) -> Result<(), ArtifactError> {
    let invalid = |reason: &str| ArtifactError::Invalid {
        what,
        value: value.to_string(),
        reason: reason.into(),
    };
    if value.is_empty() || value.len() > max {
        return Err(invalid(&format!("must be 1 to {max} characters")));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(
            "only letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    if value.starts_with(['.', '-']) {
        return Err(invalid("must start with a letter, a digit or '_'"));
    }
    Ok(())
}

/// RFC 3339 in UTC to the second, as Go's `time.RFC3339` formats a UTC time.
fn rfc3339(secs: i64) -> Result<String, ArtifactError> {
    let invalid = |reason: String| ArtifactError::Invalid {
        what: "creation time",
        value: secs.to_string(),
        reason,
    };
    let t = time::OffsetDateTime::from_unix_timestamp(secs).map_err(|e| invalid(e.to_string()))?;
    if !(0..=9999).contains(&t.year()) {
        return Err(invalid("not a year of four digits".into()));
    }
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The config blob: DevKit's fields, keys in byte order, indented by two spaces.
pub fn config_json(o: &Options, created: &str) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Metadata<'a> {
        created_at: &'a str,
        devkit_version: &'a str,
        release_version: &'a str,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Config<'a> {
        avs_name: &'a str,
        #[serde(rename = "eigenRuntimeAPIVersion")]
        eigen_runtime_api_version: &'a str,
        format_version: &'a str,
        kind: &'a str,
        metadata: Metadata<'a>,
        validation_schema: String,
    }
    let version = concat!("cidboot-", env!("CARGO_PKG_VERSION"));
    let c = Config {
        avs_name: &o.name,
        eigen_runtime_api_version: "v1",
        format_version: "1.0",
        kind: &o.kind,
        metadata: Metadata {
            created_at: created,
            devkit_version: version,
            release_version: &o.release,
        },
        validation_schema: format!(
            "https://eigenruntime.io/schemas/{}/v1/manifest.json",
            o.kind.to_ascii_lowercase()
        ),
    };
    serde_json::to_vec_pretty(&c).unwrap_or_default()
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<std::collections::BTreeMap<&'a str, &'a str>>,
    digest: String,
    media_type: &'a str,
    size: usize,
}

/// The manifest: DevKit's, keys in byte order, compact, and the layer titled `title`.
pub fn manifest_json(
    o: &Options,
    created: &str,
    config: &[u8],
    spec: &[u8],
    title: &str,
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        annotations: std::collections::BTreeMap<&'a str, &'a str>,
        artifact_type: &'a str,
        config: Descriptor<'a>,
        layers: Vec<Descriptor<'a>>,
        media_type: &'a str,
        schema_version: u32,
    }
    let description = format!("EigenRuntime specification for AVS {}", o.name);
    let m = Manifest {
        annotations: [
            (ANN_SPEC_VERSION, "v1"),
            ("org.opencontainers.image.created", created),
            ("org.opencontainers.image.description", &description),
            ("org.opencontainers.image.source", &o.source),
        ]
        .into_iter()
        .collect(),
        artifact_type: ARTIFACT_TYPE,
        config: Descriptor {
            annotations: None,
            digest: sha256(config),
            media_type: CONFIG_MEDIA_TYPE,
            size: config.len(),
        },
        layers: vec![Descriptor {
            annotations: Some([(ANN_TITLE, title)].into_iter().collect()),
            digest: sha256(spec),
            media_type: SPEC_MEDIA_TYPE,
            size: spec.len(),
        }],
        media_type: MT_OCI_MANIFEST,
        schema_version: 2,
    };
    serde_json::to_vec(&m).unwrap_or_default()
}

/// Reads the specification: a regular file of UTF-8 text, at most [`MAX_SPEC_BYTES`], its
/// size checked before it is read.
fn read_spec(path: &Path) -> Result<(Vec<u8>, String), ArtifactError> {
    let bad = |reason: String| ArtifactError::Spec {
        path: path.display().to_string(),
        reason,
    };
    let io = |source| ArtifactError::Io {
        path: path.display().to_string(),
        source,
    };
    let title = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad("names no file with a UTF-8 name".into()))?
        .to_string();
    check("specification file name", &title, 255)?;
    let f = std::fs::File::open(path).map_err(io)?;
    let m = f.metadata().map_err(io)?;
    if !m.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if m.len() > MAX_SPEC_BYTES {
        return Err(bad(format!(
            "{} bytes, over the {MAX_SPEC_BYTES} a specification may have",
            m.len()
        )));
    }
    let mut spec = Vec::new();
    f.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut spec)
        .map_err(io)?;
    if spec.len() as u64 > MAX_SPEC_BYTES {
        return Err(bad(format!(
            "grew over the {MAX_SPEC_BYTES} bytes a specification may have as it was read"
        )));
    }
    if spec.is_empty() {
        return Err(bad("empty".into()));
    }
    if std::str::from_utf8(&spec).is_err() {
        return Err(bad("not UTF-8 text (a YAML document)".into()));
    }
    Ok((spec, title))
}

/// Writes the artifact for the specification at `spec_path` as an OCI image layout at `out`
/// (which must not exist, or be empty), tagged with the release: built in a private sibling
/// directory and renamed into place, so that nothing is left at `out` on a failure.
pub fn make(spec_path: &Path, o: &Options, out: &Path) -> Result<Made, ArtifactError> {
    check("AVS name", &o.name, 128)?;
    check("release", &o.release, 128)?;
    check("kind", &o.kind, 64)?;
    if o.source.is_empty() || o.source.chars().any(char::is_control) {
        return Err(ArtifactError::Invalid {
            what: "source",
            value: o.source.clone(),
            reason: "must be a URL".into(),
        });
    }
    let created = rfc3339(o.created)?;
    let (spec, title) = read_spec(spec_path)?;
    let config = config_json(o, &created);
    let manifest = manifest_json(o, &created, &config, &spec, &title);
    let writer = LayoutWriter::create(out)?;
    writer.write_blob(&spec)?;
    writer.write_blob(&config)?;
    writer.write_blob(&manifest)?;
    let entry = serde_json::json!({
        "mediaType": MT_OCI_MANIFEST,
        "digest": sha256(&manifest),
        "size": manifest.len(),
        "artifactType": ARTIFACT_TYPE,
        "annotations": {ANN_REF_NAME: o.release},
    });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [entry],
    });
    let index = serde_json::to_vec_pretty(&index).unwrap_or_default();
    let path: PathBuf = writer.commit(&index)?;
    Ok(Made {
        oci_layout: path.display().to_string(),
        manifest_digest: sha256(&manifest),
        config_digest: sha256(&config),
        spec_digest: sha256(&spec),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            name: "my-avs".into(),
            release: "v1.2.0".into(),
            kind: "Hourglass".into(),
            source: DEVKIT_SOURCE.into(),
            created: 1_735_689_600,
        }
    }

    #[test]
    fn config_and_manifest_are_devkits_bytes() {
        let o = opts();
        let created = rfc3339(o.created).unwrap();
        assert_eq!(created, "2025-01-01T00:00:00Z");
        let config = config_json(&o, &created);
        // As Go's json.MarshalIndent(map, "", "  ") writes DevKit's config.
        let want = format!(
            "{{\n  \"avsName\": \"my-avs\",\n  \"eigenRuntimeAPIVersion\": \"v1\",\n  \"formatVersion\": \"1.0\",\n  \"kind\": \"Hourglass\",\n  \"metadata\": {{\n    \"createdAt\": \"2025-01-01T00:00:00Z\",\n    \"devkitVersion\": \"cidboot-{}\",\n    \"releaseVersion\": \"v1.2.0\"\n  }},\n  \"validationSchema\": \"https://eigenruntime.io/schemas/hourglass/v1/manifest.json\"\n}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(config.clone()).unwrap(), want);
        let spec = b"kind: Hourglass\n";
        let m = manifest_json(&o, &created, &config, spec, "spec.yaml");
        let want = format!(
            concat!(
                r#"{{"annotations":{{"io.eigenruntime.spec.version":"v1","org.opencontainers.image.created":"2025-01-01T00:00:00Z","#,
                r#""org.opencontainers.image.description":"EigenRuntime specification for AVS my-avs","#,
                r#""org.opencontainers.image.source":"https://github.com/Layr-Labs/devkit-cli"}},"#,
                r#""artifactType":"application/vnd.eigenruntime.manifest.v1","#,
                r#""config":{{"digest":"{}","mediaType":"application/vnd.eigenruntime.manifest.config.v1+json","size":{}}},"#,
                r#""layers":[{{"annotations":{{"org.opencontainers.image.title":"spec.yaml"}},"digest":"{}","mediaType":"text/yaml","size":16}}],"#,
                r#""mediaType":"application/vnd.oci.image.manifest.v1+json","schemaVersion":2}}"#
            ),
            sha256(&config),
            config.len(),
            sha256(spec)
        );
        assert_eq!(String::from_utf8(m).unwrap(), want);
    }

    #[test]
    fn names_go_would_escape_are_refused() {
        for bad in ["", "a<b", "a&b", "a b", "../x", "-x", "é"] {
            assert!(check("AVS name", bad, 128).is_err(), "{bad:?}");
        }
        check("AVS name", "my_avs-1.0", 128).unwrap();
    }
}
