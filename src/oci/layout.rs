//! Writing OCI image layouts atomically: a layout appears at its path complete, or not at all.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::OciError;
use crate::fetch::BlobSink;

/// An OCI layout under construction in a hidden sibling directory.
pub struct LayoutWriter {
    target: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

impl LayoutWriter {
    /// Starts a layout at `target`, which must not exist (or be an empty directory).
    pub fn create(target: &Path) -> Result<Self, OciError> {
        let werr = |path: &Path, source: io::Error| OciError::Write {
            path: path.display().to_string(),
            source,
        };
        if target.exists() {
            let empty = target.is_dir()
                && std::fs::read_dir(target)
                    .map_err(|e| werr(target, e))?
                    .next()
                    .is_none();
            if !empty {
                return Err(werr(
                    target,
                    io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not empty"),
                ));
            }
        }
        let name = target
            .file_name()
            .ok_or_else(|| werr(target, io::Error::other("no file name")))?
            .to_string_lossy()
            .into_owned();
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = parent.join(format!(
            ".{name}.partial-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(tmp.join("blobs/sha256")).map_err(|e| werr(&tmp, e))?;
        Ok(LayoutWriter {
            target: target.to_path_buf(),
            tmp,
            committed: false,
        })
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.tmp.join("blobs/sha256").join(hex)
    }

    /// Writes a small blob that is already in memory, returning its sha256 hex.
    pub fn write_blob(&self, data: &[u8]) -> Result<String, OciError> {
        let hex = hex::encode(Sha256::digest(data));
        let p = self.blob_path(&hex);
        std::fs::write(&p, data).map_err(|source| OciError::Write {
            path: p.display().to_string(),
            source,
        })?;
        Ok(hex)
    }

    /// A sink for a streamed blob whose digest is checked by the caller before commit.
    pub async fn blob_sink(&self, hex: &str) -> Result<FileSink, OciError> {
        let p = self.blob_path(hex);
        let f = tokio::fs::File::create(&p)
            .await
            .map_err(|source| OciError::Write {
                path: p.display().to_string(),
                source,
            })?;
        Ok(FileSink {
            file: tokio::io::BufWriter::with_capacity(1 << 20, f),
        })
    }

    /// Writes `oci-layout` and `index.json`, then renames the whole layout into place.
    pub fn commit(mut self, index_json: &[u8]) -> Result<PathBuf, OciError> {
        let werr = |p: &Path, source| OciError::Write {
            path: p.display().to_string(),
            source,
        };
        let marker = self.tmp.join("oci-layout");
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| werr(&marker, e))?;
        let index = self.tmp.join("index.json");
        std::fs::write(&index, index_json).map_err(|e| werr(&index, e))?;
        if self.target.is_dir() {
            // Only an empty directory gets here (checked in create).
            std::fs::remove_dir(&self.target).map_err(|e| werr(&self.target, e))?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| werr(&self.target, e))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for LayoutWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

pub struct FileSink {
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl FileSink {
    pub async fn finish(mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.file.get_mut().sync_all().await
    }
}

impl BlobSink for FileSink {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data).await
    }
}
