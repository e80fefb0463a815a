//! The CARv1 stream reader: the format ([`cidboot_ipld::car`]) over an async byte stream.
//!
//! Every length is bounded by the format's checks before anything is allocated, and the
//! header roots are parsed but never trusted: the caller knows which CID it asked for.

use std::io;

use bytes::{Bytes, BytesMut};
use cid::Cid;
use tokio::io::{AsyncRead, AsyncReadExt};

pub use cidboot_ipld::car::*;

use super::FetchError;

/// A streaming CARv1 reader over any byte stream.
pub struct CarReader<R> {
    r: R,
    roots: Vec<Cid>,
}

impl<R: AsyncRead + Unpin> CarReader<R> {
    /// Reads and checks the CARv1 header (its length bounded before it is read).
    pub async fn new(mut r: R) -> Result<Self, FetchError> {
        let len = match read_varint(&mut r).await? {
            Some(l) => l,
            None => return Err(FetchError::Truncated("CAR header".into())),
        };
        let mut buf = vec![0u8; header_len(len)?];
        read_exact(&mut r, &mut buf, "CAR header").await?;
        let roots = parse_header(&buf)?;
        Ok(CarReader { r, roots })
    }

    /// The roots the producer claimed; informational only.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// Reads the next `(cid, block)` section, or `None` at a clean end of stream.
    /// The block is NOT verified here: verification belongs to the caller, which knows which
    /// CID it expects next.
    pub async fn next_block(&mut self) -> Result<Option<(Cid, Bytes)>, FetchError> {
        let len = match read_varint(&mut self.r).await? {
            Some(l) => l,
            None => return Ok(None),
        };
        let mut buf = BytesMut::zeroed(section_len(len)?);
        read_exact(&mut self.r, &mut buf, "CAR section").await?;
        Ok(Some(split_section(buf.freeze())?))
    }
}

async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    what: &str,
) -> Result<(), FetchError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(FetchError::Truncated(what.to_string()))
        }
        Err(e) => Err(FetchError::from_io(e)),
    }
}

/// Reads an unsigned LEB128 varint; `None` on EOF before the first byte.
async fn read_varint<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<u64>, FetchError> {
    let mut v = Varint::new();
    loop {
        let b = match r.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return if v.is_empty() {
                    Ok(None)
                } else {
                    Err(FetchError::Truncated("CAR varint".into()))
                };
            }
            Err(e) => return Err(FetchError::from_io(e)),
        };
        if let Some(n) = v.push(b)? {
            return Ok(Some(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::raw_cid;

    fn put_varint(out: &mut Vec<u8>, v: u64) {
        let mut buf = unsigned_varint::encode::u64_buffer();
        out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
    }

    #[tokio::test]
    async fn round_trip() {
        let cid = raw_cid(b"abc");
        let mut car = encode_header(&cid);
        write_section(&mut car, &cid, b"abc").unwrap();
        let mut r = CarReader::new(&car[..]).await.unwrap();
        assert_eq!(r.roots(), &[cid]);
        let (c, b) = r.next_block().await.unwrap().unwrap();
        assert_eq!((c, &b[..]), (cid, &b"abc"[..]));
        assert!(r.next_block().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn hostile_lengths_are_refused_before_allocation() {
        let cid = raw_cid(b"abc");
        let mut car = encode_header(&cid);
        // A section claiming 1 TiB.
        put_varint(&mut car, 1 << 40);
        let mut r = CarReader::new(&car[..]).await.unwrap();
        assert!(matches!(
            r.next_block().await,
            Err(FetchError::BlockTooLarge { .. })
        ));
        // A header claiming 1 GiB.
        let mut bad = Vec::new();
        put_varint(&mut bad, 1 << 30);
        assert!(matches!(
            CarReader::new(&bad[..]).await,
            Err(FetchError::BadCar(_))
        ));
        // A truncated section.
        let mut car = encode_header(&cid);
        write_section(&mut car, &cid, b"abc").unwrap();
        car.pop();
        let mut r = CarReader::new(&car[..]).await.unwrap();
        assert!(matches!(
            r.next_block().await,
            Err(FetchError::Truncated(_))
        ));
    }
}
