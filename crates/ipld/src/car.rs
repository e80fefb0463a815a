//! CARv1: the stream format of trustless gateway responses and of `cidboot pack` output.
//!
//! Hand-rolled because the Rust CAR crates trust section lengths and header sizes from the
//! stream (allocating or panicking on hostile input). Here every length is bounded before
//! anything is allocated, and the header roots are parsed but never trusted: the caller knows
//! which CID it asked for. The format is here without I/O ([`Varint`], [`header_len`],
//! [`parse_header`], [`section_len`], [`split_section`]); a reader over a byte stream
//! reads a varint, checks it, reads exactly that many bytes and hands them back.

use std::io::{self, Write};

use bytes::Bytes;
use ciborium::value::Value;
use cid::Cid;

use crate::block::MAX_BLOCK_SIZE;
use crate::DecodeError;

/// Largest CAR header accepted (a header with a few roots is under 200 bytes).
pub const MAX_HEADER_SIZE: u64 = 64 * 1024;
/// Largest CID inside a section (version, codec, multihash code, length and a 64-byte digest).
pub const MAX_CID_LEN: u64 = 128;
/// Longest varint read (a u64 in LEB128).
pub const MAX_VARINT_LEN: usize = 10;

/// An unsigned LEB128 varint read one byte at a time, at most [`MAX_VARINT_LEN`] bytes.
#[derive(Debug, Default)]
pub struct Varint {
    buf: [u8; MAX_VARINT_LEN],
    len: usize,
}

impl Varint {
    /// A varint with no bytes yet.
    pub fn new() -> Varint {
        Varint::default()
    }

    /// Whether no byte has been pushed (an end of stream here is a clean one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Takes the next byte: `Some(value)` when it was the last one.
    pub fn push(&mut self, b: u8) -> Result<Option<u64>, DecodeError> {
        let Some(slot) = self.buf.get_mut(self.len) else {
            return Err(car_err("varint longer than 10 bytes"));
        };
        *slot = b;
        self.len += 1;
        if !unsigned_varint::decode::is_last(b) {
            return if self.len == MAX_VARINT_LEN {
                Err(car_err("varint longer than 10 bytes"))
            } else {
                Ok(None)
            };
        }
        let (v, _) = unsigned_varint::decode::u64(&self.buf[..self.len])
            .map_err(|e| car_err(format!("bad varint: {e}")))?;
        Ok(Some(v))
    }
}

/// Checks a header's claimed length, returning how many bytes to read for it.
pub fn header_len(len: u64) -> Result<usize, DecodeError> {
    if len == 0 || len > MAX_HEADER_SIZE {
        return Err(car_err(format!("header length {len} out of bounds")));
    }
    // Bounded by MAX_HEADER_SIZE above.
    usize::try_from(len).map_err(|_| car_err(format!("header length {len} out of bounds")))
}

/// Checks a section's claimed length (CID and block), returning how many bytes to read for it.
pub fn section_len(len: u64) -> Result<usize, DecodeError> {
    let max = MAX_BLOCK_SIZE as u64;
    if len > max + MAX_CID_LEN {
        return Err(DecodeError::SectionTooLarge { size: len, max });
    }
    // Bounded by MAX_BLOCK_SIZE above.
    usize::try_from(len).map_err(|_| DecodeError::SectionTooLarge { size: len, max })
}

/// Splits a section's bytes into its CID and its block, which is NOT verified here:
/// verification belongs to the caller, which knows which CID it expects next.
pub fn split_section(section: Bytes) -> Result<(Cid, Bytes), DecodeError> {
    let mut cursor = io::Cursor::new(&section[..]);
    let cid =
        Cid::read_bytes(&mut cursor).map_err(|e| car_err(format!("bad CID in section: {e}")))?;
    let at = usize::try_from(cursor.position()).unwrap_or(section.len());
    Ok((cid, section.slice(at..)))
}

/// Parses a CARv1 header, returning the roots the producer claimed (informational only).
pub fn parse_header(buf: &[u8]) -> Result<Vec<Cid>, DecodeError> {
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

fn car_err(reason: impl Into<String>) -> DecodeError {
    DecodeError::BadCar(reason.into())
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
    crate::pb::put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out
}

/// The start of a section (`varint(len) | cid`) for a block of `block_len` bytes, which follow
/// it.
pub fn section_head(cid: &Cid, block_len: u64) -> Vec<u8> {
    let cid_bytes = cid.to_bytes();
    let mut head = Vec::with_capacity(12 + cid_bytes.len());
    crate::pb::put_varint(&mut head, cid_bytes.len() as u64 + block_len);
    head.extend_from_slice(&cid_bytes);
    head
}

/// Writes one section (`varint(len) | cid | block`).
pub fn write_section<W: Write>(w: &mut W, cid: &Cid, block: &[u8]) -> io::Result<()> {
    w.write_all(&section_head(cid, block.len() as u64))?;
    w.write_all(block)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::raw_cid;

    fn next_varint(car: &mut &[u8]) -> Result<Option<u64>, DecodeError> {
        let mut v = Varint::new();
        loop {
            let Some((&b, rest)) = car.split_first() else {
                return if v.is_empty() {
                    Ok(None)
                } else {
                    Err(car_err("truncated varint"))
                };
            };
            *car = rest;
            if let Some(n) = v.push(b)? {
                return Ok(Some(n));
            }
        }
    }

    type Sections = Vec<(Cid, Bytes)>;

    /// Reads a whole CAR held in memory with the functions above.
    fn read(mut car: &[u8]) -> Result<(Vec<Cid>, Sections), DecodeError> {
        let len = header_len(next_varint(&mut car)?.ok_or_else(|| car_err("empty"))?)?;
        let roots = parse_header(car.get(..len).ok_or_else(|| car_err("truncated"))?)?;
        car = &car[len..];
        let mut blocks = Vec::new();
        while let Some(len) = next_varint(&mut car)? {
            let len = section_len(len)?;
            let section = car.get(..len).ok_or_else(|| car_err("truncated"))?;
            blocks.push(split_section(Bytes::copy_from_slice(section))?);
            car = &car[len..];
        }
        Ok((roots, blocks))
    }

    #[test]
    fn round_trip() {
        let cid = raw_cid(b"abc");
        let mut car = encode_header(&cid);
        write_section(&mut car, &cid, b"abc").unwrap();
        let (roots, blocks) = read(&car).unwrap();
        assert_eq!(roots, vec![cid]);
        assert_eq!(blocks, vec![(cid, Bytes::from_static(b"abc"))]);
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert!(matches!(
            section_len(1 << 40),
            Err(DecodeError::SectionTooLarge { .. })
        ));
        assert!(section_len(MAX_BLOCK_SIZE as u64 + MAX_CID_LEN).is_ok());
        assert!(matches!(header_len(1 << 30), Err(DecodeError::BadCar(_))));
        assert!(matches!(header_len(0), Err(DecodeError::BadCar(_))));
        let mut v = Varint::new();
        for _ in 0..MAX_VARINT_LEN - 1 {
            assert!(v.push(0x80).unwrap().is_none());
        }
        assert!(matches!(v.push(0x80), Err(DecodeError::BadCar(_))));
        assert!(matches!(
            split_section(Bytes::from_static(&[0x01])),
            Err(DecodeError::BadCar(_))
        ));
        assert!(matches!(parse_header(&[0xa0]), Err(DecodeError::BadCar(_))));
    }
}
