//! Decompression with every byte counted and hashed: the diff_id check and the bomb guards.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::ApplyError;
use crate::oci::Compression;

/// Reads `r` to its end through the decompressor, writing the tar stream to `out`, and
/// returns `(uncompressed bytes, sha256 hex)`. Fails as soon as more than `max_out` bytes
/// come out, so a bomb costs at most `max_out` of work.
pub fn inflate<R: Read, W: Write>(
    mut r: R,
    compression: Compression,
    max_out: u64,
    out: W,
) -> Result<(u64, String), ApplyError> {
    let mut sink = Guard {
        out,
        hasher: Sha256::new(),
        written: 0,
        max: max_out,
    };
    let res = match compression {
        Compression::None => io::copy(&mut r, &mut sink),
        Compression::Gzip => io::copy(&mut flate2::read::MultiGzDecoder::new(&mut r), &mut sink),
        Compression::Zstd => match zstd::stream::read::Decoder::new(&mut r) {
            Ok(mut d) => io::copy(&mut d, &mut sink),
            Err(e) => Err(e),
        },
    };
    match res {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
            return Err(ApplyError::Bomb { max: max_out })
        }
        Err(e) => return Err(ApplyError::Decompress(e)),
    }
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

struct Guard<W> {
    out: W,
    hasher: Sha256,
    written: u64,
    max: u64,
}

impl<W: Write> Write for Guard<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.max {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "decompression limit",
            ));
        }
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
