//! The few protobuf wire-format primitives that dag-pb and UnixFS need.
//!
//! Hand-rolled on purpose: dag-pb's specification requires decoders to reject encodings that
//! generic protobuf crates accept silently (fields out of order, repeated singular fields,
//! unknown fields, non-minimal varints), and every length here must be checked against the
//! block it came from before anything is allocated. Blocks are at most 2 MiB, so every
//! allocation below is bounded by the input.

use crate::DecodeError;

pub(crate) const WIRE_VARINT: u8 = 0;
pub(crate) const WIRE_LEN: u8 = 2;

/// A cursor over one protobuf message.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn err(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::Decode {
            what: self.what,
            reason: reason.into(),
        }
    }

    pub fn varint(&mut self) -> Result<u64, DecodeError> {
        let (v, rest) = unsigned_varint::decode::u64(self.buf)
            .map_err(|e| self.err(format!("bad varint: {e}")))?;
        self.buf = rest;
        Ok(v)
    }

    /// Reads a field key, returning `(field number, wire type)`.
    pub fn key(&mut self) -> Result<(u64, u8), DecodeError> {
        let k = self.varint()?;
        Ok((k >> 3, (k & 7) as u8))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| self.err("length overflows"))?;
        if len > self.buf.len() {
            return Err(self.err(format!(
                "length {len} runs past the end ({} bytes left)",
                self.buf.len()
            )));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// Skips a field of the given wire type (used only where the format allows unknown fields).
    pub fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_LEN => self.bytes().map(|_| ()),
            1 => self.advance(8),
            5 => self.advance(4),
            w => Err(self.err(format!("unsupported wire type {w}"))),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(self.err("fixed-width field runs past the end"));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(v, &mut buf));
}

pub(crate) fn put_key(out: &mut Vec<u8>, field: u64, wire: u8) {
    put_varint(out, (field << 3) | u64::from(wire));
}

pub(crate) fn put_bytes(out: &mut Vec<u8>, field: u64, data: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

pub(crate) fn put_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    put_key(out, field, WIRE_VARINT);
    put_varint(out, v);
}
