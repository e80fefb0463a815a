//! Writing OCI image layouts atomically: a layout appears at its path complete, or not at all.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::OciError;
use crate::fetch::BlobSink;
use crate::scratch::PrivateDir;

/// A directory under construction inside a hidden private sibling of its target
/// (`.NAME.partial-…`, mode 0700 from its creation: see [`crate::scratch`]), renamed into
/// place only when complete; removed, with its private parent, if dropped before. The
/// directory itself is made with the usual mode (the umask's), which it keeps at its target.
pub struct Staging {
    target: PathBuf,
    tmp: PathBuf,
    _private: PrivateDir,
}

fn werr(path: &Path, source: io::Error) -> OciError {
    OciError::Write {
        path: path.display().to_string(),
        source,
    }
}

impl Staging {
    /// Starts a directory at `target`, which must not exist (or be an empty directory).
    pub fn create(target: &Path) -> Result<Self, OciError> {
        if target.exists() {
            let empty = target.is_dir()
                && std::fs::read_dir(target)
                    .map_err(|e| werr(target, e))?
                    .next()
                    .is_none();
            if !empty {
                let why = if target.is_dir() {
                    "exists and is not empty"
                } else {
                    "exists and is not a directory"
                };
                return Err(werr(
                    target,
                    io::Error::new(io::ErrorKind::AlreadyExists, why),
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
        std::fs::create_dir_all(&parent).map_err(|e| werr(&parent, e))?;
        let private = PrivateDir::create(&parent, &format!(".{name}.partial-")).map_err(|e| {
            let (path, source) = e.into_io();
            OciError::Write { path, source }
        })?;
        let tmp = private.path().join(&name);
        std::fs::create_dir(&tmp).map_err(|e| werr(&tmp, e))?;
        Ok(Staging {
            target: target.to_path_buf(),
            tmp,
            _private: private,
        })
    }

    /// The directory being filled.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// Renames the directory into place.
    pub fn commit(self) -> Result<PathBuf, OciError> {
        if self.target.is_dir() {
            // Only an empty directory gets here (checked in create).
            std::fs::remove_dir(&self.target).map_err(|e| werr(&self.target, e))?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| werr(&self.target, e))?;
        Ok(self.target.clone())
    }
}

/// An OCI layout under construction in a hidden sibling directory.
pub struct LayoutWriter {
    dir: Staging,
}

impl LayoutWriter {
    /// Starts a layout at `target`, which must not exist (or be an empty directory).
    pub fn create(target: &Path) -> Result<Self, OciError> {
        let dir = Staging::create(target)?;
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(|e| werr(&blobs, e))?;
        Ok(LayoutWriter { dir })
    }

    /// Where the blob with this sha256 hex goes.
    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.path().join("blobs/sha256").join(hex)
    }

    /// Writes a small blob that is already in memory, returning its sha256 hex.
    pub fn write_blob(&self, data: &[u8]) -> Result<String, OciError> {
        let hex = hex::encode(Sha256::digest(data));
        let p = self.blob_path(&hex);
        std::fs::write(&p, data).map_err(|e| werr(&p, e))?;
        Ok(hex)
    }

    /// A sink for a streamed blob whose digest is checked by the caller before commit.
    pub async fn blob_sink(&self, hex: &str) -> Result<FileSink, OciError> {
        FileSink::create(&self.blob_path(hex)).await
    }

    /// Writes `oci-layout` and `index.json`, then renames the whole layout into place.
    pub fn commit(self, index_json: &[u8]) -> Result<PathBuf, OciError> {
        let marker = self.dir.path().join("oci-layout");
        std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .map_err(|e| werr(&marker, e))?;
        let index = self.dir.path().join("index.json");
        std::fs::write(&index, index_json).map_err(|e| werr(&index, e))?;
        self.dir.commit()
    }
}

/// A blob streamed to a new file on disk, for `cidboot pull`.
pub struct FileSink {
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl FileSink {
    /// Creates the file (it must not exist).
    pub async fn create(path: &Path) -> Result<FileSink, OciError> {
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .await
            .map_err(|e| werr(path, e))?;
        Ok(FileSink {
            file: tokio::io::BufWriter::with_capacity(1 << 20, f),
        })
    }

    /// Flushes the file and syncs it to disk, so that a complete return means a complete file.
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
