//! Decompression with every byte counted and hashed: the diff_id check and the size limits
//! that stop a decompression bomb.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::ApplyError;
use crate::oci::Compression;

/// What one layer may inflate to: its own limit, and its share of the image's, which the
/// layers inflating at once draw on together.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Uncompressed bytes of this layer.
    pub layer_max: u64,
    /// Uncompressed bytes of the whole image, counted across its layers as they inflate.
    pub image: Arc<ImageBudget>,
}

/// The uncompressed bytes an image's layers have produced so far, and the most they may.
#[derive(Debug)]
pub struct ImageBudget {
    used: AtomicU64,
    max: u64,
}

impl ImageBudget {
    /// A budget of `max` bytes, none used.
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(ImageBudget {
            used: AtomicU64::new(0),
            max,
        })
    }
}

impl Budget {
    /// A layer of its own, as if it were the whole image.
    pub fn single(layer_max: u64) -> Self {
        Budget {
            layer_max,
            image: ImageBudget::new(u64::MAX),
        }
    }
}

/// Reads `r` to its end through the decompressor, writing the tar stream to `out`, and
/// returns `(uncompressed bytes, sha256 hex)`. Fails as soon as the layer's or the image's
/// limit would be passed, before those bytes are written: a bomb costs at most the limit.
pub fn inflate<R: Read, W: Write>(
    mut r: R,
    compression: Compression,
    budget: &Budget,
    out: W,
) -> Result<(u64, String), ApplyError> {
    let mut sink = Guard {
        out,
        hasher: Sha256::new(),
        written: 0,
        budget,
        over: None,
    };
    let res = match compression {
        Compression::None => io::copy(&mut r, &mut sink),
        Compression::Gzip => io::copy(&mut flate2::read::MultiGzDecoder::new(&mut r), &mut sink),
        Compression::Zstd => match zstd::stream::read::Decoder::new(&mut r) {
            Ok(mut d) => io::copy(&mut d, &mut sink),
            Err(e) => Err(e),
        },
    };
    if let Some(e) = sink.over.take() {
        return Err(e);
    }
    res.map_err(ApplyError::Decompress)?;
    // Anything after the compressed stream would go unhashed into the diff_id: refuse it.
    let mut extra = [0u8; 1];
    if r.read(&mut extra).map_err(ApplyError::Decompress)? != 0 {
        return Err(ApplyError::Decompress(io::Error::new(
            io::ErrorKind::InvalidData,
            "data after the end of the compressed stream",
        )));
    }
    sink.out.flush().map_err(ApplyError::Decompress)?;
    Ok((sink.written, hex::encode(sink.hasher.finalize())))
}

struct Guard<'a, W> {
    out: W,
    hasher: Sha256,
    written: u64,
    budget: &'a Budget,
    /// The limit that stopped the stream, reported instead of the I/O error it caused.
    over: Option<ApplyError>,
}

impl<W: Write> Write for Guard<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        if self.written.saturating_add(n) > self.budget.layer_max {
            self.over = Some(ApplyError::LayerTooLarge {
                max: self.budget.layer_max,
            });
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "layer limit"));
        }
        let image = &self.budget.image;
        let before = image.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > image.max {
            self.over = Some(ApplyError::TotalTooLarge { max: image.max });
            return Err(io::Error::new(io::ErrorKind::FileTooLarge, "image limit"));
        }
        let written = self.out.write(buf)?;
        // Only what was written counts: give back the rest of what was reserved.
        image.used.fetch_sub(n - written as u64, Ordering::Relaxed);
        self.hasher.update(&buf[..written]);
        self.written += written as u64;
        Ok(written)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
