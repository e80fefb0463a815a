//! CARv1: the stream format of trustless gateway responses and of `cidboot pack` output.
//!
//! Hand-rolled because the Rust CAR crates trust section lengths and header sizes from the
//! stream (allocating or panicking on hostile input). Here every length is bounded before
//! anything is allocated, and the header roots are parsed but never trusted: the caller knows
//! which CID it asked for.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use ciborium::value::Value;
use cid::Cid;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::FetchError;
use crate::reference::MAX_BLOCK_SIZE;

/// Largest CAR header accepted (a header with a few roots is under 200 bytes).
pub const MAX_HEADER_SIZE: u64 = 64 * 1024;
/// Largest CID inside a section (version, codec, multihash code, length and a 64-byte digest).
const MAX_CID_LEN: u64 = 128;

/// A streaming CARv1 reader over any byte stream.
pub struct CarReader<R> {
    r: R,
    roots: Vec<Cid>,
}

impl<R: AsyncRead + Unpin> CarReader<R> {
    pub async fn new(mut r: R) -> Result<Self, FetchError> {
        let len = match read_varint(&mut r).await? {
            Some(l) => l,
            None => return Err(FetchError::Truncated("CAR header".into())),
        };
        if len == 0 || len > MAX_HEADER_SIZE {
            return Err(car_err(format!("header length {len} out of bounds")));
        }
        // Bounded by MAX_HEADER_SIZE above.
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
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
        if len > MAX_BLOCK_SIZE as u64 + MAX_CID_LEN {
            return Err(FetchError::BlockTooLarge {
                size: len,
                max: MAX_BLOCK_SIZE as u64,
            });
        }
        // Bounded by MAX_BLOCK_SIZE above.
        let mut buf = BytesMut::zeroed(usize::try_from(len).unwrap_or(0));
        read_exact(&mut self.r, &mut buf, "CAR section").await?;
        let buf = buf.freeze();
        let mut cursor = io::Cursor::new(&buf[..]);
        let cid = Cid::read_bytes(&mut cursor)
            .map_err(|e| car_err(format!("bad CID in section: {e}")))?;
        let at = usize::try_from(cursor.position()).unwrap_or(buf.len());
        Ok(Some((cid, buf.slice(at..))))
    }
}

fn parse_header(buf: &[u8]) -> Result<Vec<Cid>, FetchError> {
    let v: Value =
        ciborium::de::from_reader(buf).map_err(|e| car_err(format!("header is not CBOR: {e}")))?;
    let map = match v {
        Value::Map(m) => m,
        _ => return Err(car_err("header is not a map")),
    };
    let mut version = None;
    let mut roots = Vec::new();
    for (k, v) in map {
        match (k.as_text(), v) {
            (Some("version"), Value::Integer(i)) => version = Some(i128::from(i)),
            (Some("roots"), Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::Tag(42, inner) => match *inner {
                            Value::Bytes(b) if b.first() == Some(&0) => {
                                let c = Cid::try_from(&b[1..])
                                    .map_err(|e| car_err(format!("bad root CID: {e}")))?;
                                roots.push(c);
                            }
                            _ => return Err(car_err("root is not a CID")),
                        },
                        _ => return Err(car_err("root is not a CID")),
                    }
                }
            }
            _ => {}
        }
    }
    match version {
        Some(1) => Ok(roots),
        Some(v) => Err(car_err(format!(
            "CAR version {v} is not supported (only CARv1)"
        ))),
        None => Err(car_err("header has no version")),
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
    let mut buf = [0u8; 10];
    for i in 0..buf.len() {
        let b = match r.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return if i == 0 {
                    Ok(None)
                } else {
                    Err(FetchError::Truncated("CAR varint".into()))
                };
            }
            Err(e) => return Err(FetchError::from_io(e)),
        };
        buf[i] = b;
        if unsigned_varint::decode::is_last(b) {
            let (v, _) = unsigned_varint::decode::u64(&buf[..=i])
                .map_err(|e| car_err(format!("bad varint: {e}")))?;
            return Ok(Some(v));
        }
    }
    Err(car_err("varint longer than 10 bytes"))
}

fn car_err(reason: impl Into<String>) -> FetchError {
    FetchError::BadCar(reason.into())
}

/// Encodes a CARv1 header naming `root`.
pub fn encode_header(root: &Cid) -> Vec<u8> {
    let mut cid_bytes = vec![0u8];
    cid_bytes.extend_from_slice(&root.to_bytes());
    // dag-cbor orders map keys by length first: "roots" before "version".
    let header = Value::Map(vec![
        (
            Value::Text("roots".into()),
            Value::Array(vec![Value::Tag(42, Box::new(Value::Bytes(cid_bytes)))]),
        ),
        (Value::Text("version".into()), Value::Integer(1.into())),
    ]);
    let mut body = Vec::new();
    // Serializing a Value into a Vec cannot fail.
    let _ = ciborium::ser::into_writer(&header, &mut body);
    let mut out = Vec::new();
    super::pb::put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// Writes one section (`varint(len) | cid | block`).
pub fn write_section<W: Write>(w: &mut W, cid: &Cid, block: &[u8]) -> io::Result<()> {
    let cid_bytes = cid.to_bytes();
    let mut head = Vec::with_capacity(12 + cid_bytes.len());
    super::pb::put_varint(&mut head, (cid_bytes.len() + block.len()) as u64);
    head.extend_from_slice(&cid_bytes);
    w.write_all(&head)?;
    w.write_all(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::raw_cid;

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
        super::super::pb::put_varint(&mut car, 1 << 40);
        let mut r = CarReader::new(&car[..]).await.unwrap();
        assert!(matches!(
            r.next_block().await,
            Err(FetchError::BlockTooLarge { .. })
        ));
        // A header claiming 1 GiB.
        let mut bad = Vec::new();
        super::super::pb::put_varint(&mut bad, 1 << 30);
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
