//! A small BER reader (ITU-T X.690), bounded, for the one structure this crate opens.
//!
//! Hand-rolled because what AWS KMS sends is BER, not DER: indefinite lengths and the encrypted
//! content as a constructed string of chunks. RustCrypto's `der` refuses indefinite lengths by
//! design, and the general ASN.1 crates either do the same or build a tree of the whole input
//! before anything checks it. This reader is driven by the schema in [`crate::envelope`]: it
//! reads one element header at a time, checks every length against what remains of the input
//! and of the enclosing element before anything uses it, caps nesting at [`MAX_DEPTH`], and
//! never allocates from a length it read (a string is copied only chunk by chunk, each chunk
//! already in the input, against a caller's cap).

use crate::CmsError;

/// Deepest nesting of constructed elements read (EnvelopedData's own schema is 10 deep; the
/// rest is room for BER's constructed strings).
pub const MAX_DEPTH: usize = 16;

/// Tags used by CMS EnvelopedData (identifier octets: class, constructed bit and number).
pub(crate) mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[0]` primitive (an IMPLICIT string).
    pub const CONTEXT_0: u8 = 0x80;
    /// `[0]` constructed (EXPLICIT, or an IMPLICIT string in chunks).
    pub const CONTEXT_0_CONSTRUCTED: u8 = 0xA0;
    /// `[1]` constructed.
    pub const CONTEXT_1_CONSTRUCTED: u8 = 0xA1;
    /// `[2]` constructed.
    pub const CONTEXT_2_CONSTRUCTED: u8 = 0xA2;
    /// The constructed bit of an identifier octet.
    pub const CONSTRUCTED: u8 = 0x20;
}

/// Where an element was read: the schema path of its fields, for errors.
#[derive(Clone, Copy)]
pub(crate) struct Path {
    segments: [&'static str; MAX_DEPTH + 8],
    len: usize,
}

impl Path {
    /// The path of the outermost element.
    pub fn root(name: &'static str) -> Path {
        let mut segments = [""; MAX_DEPTH + 8];
        segments[0] = name;
        Path { segments, len: 1 }
    }

    /// The path of a field inside this element (past the array's room, the last segment
    /// stands for the deeper ones: nesting is capped before that matters).
    pub fn child(&self, name: &'static str) -> Path {
        let mut p = *self;
        if let Some(slot) = p.segments.get_mut(p.len) {
            *slot = name;
            p.len += 1;
        }
        p
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.segments.iter().take(self.len).enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(s)?;
        }
        Ok(())
    }
}

/// One element's header: its identifier octet, where it starts and where its contents are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Element {
    /// The identifier octet (low tag numbers only: CMS uses no other).
    pub tag: u8,
    /// Offset of the identifier octet in the input.
    pub offset: usize,
    /// Offset of the first content octet.
    pub body: usize,
    /// The content length, or `None` for an indefinite length (constructed only).
    pub len: Option<usize>,
}

impl Element {
    /// Whether the constructed bit is set.
    pub fn constructed(&self) -> bool {
        self.tag & tag::CONSTRUCTED != 0
    }
}

/// The contents of a constructed element (or the whole input): where they must end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Contents {
    /// Offset past which nothing of these contents may be: the end of a definite length, or
    /// for an indefinite one the end of the enclosing element.
    limit: usize,
    /// Ends at an end-of-contents marker rather than at `limit`.
    indefinite: bool,
    /// Constructed elements around these contents.
    depth: usize,
}

/// A cursor over the whole input; every offset it reports is from the input's start.
pub(crate) struct Reader<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `input`.
    pub fn new(input: &'a [u8]) -> Reader<'a> {
        Reader { input, pos: 0 }
    }

    /// The input as the outermost contents (one element, then nothing).
    pub fn top(&self) -> Contents {
        Contents {
            limit: self.input.len(),
            indefinite: false,
            depth: 0,
        }
    }

    /// The current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The input from `start` to `end` (offsets this reader reported; empty if they are not).
    pub fn input_slice(&self, start: usize, end: usize) -> &'a [u8] {
        self.input.get(start..end).unwrap_or_default()
    }

    /// The next element of `parent`, or `None` where `parent` ends (its end-of-contents marker
    /// consumed). `path` names what is being read, for errors.
    pub fn next(&mut self, parent: &Contents, path: &Path) -> Result<Option<Element>, CmsError> {
        if !parent.indefinite {
            if self.pos >= parent.limit {
                return Ok(None);
            }
        } else if self.input.get(self.pos..self.pos.saturating_add(2)) == Some(&[0, 0]) {
            // The end-of-contents marker is within `limit`: `limit` never exceeds the input
            // and the two bytes were read from the input below it.
            if self.pos + 2 > parent.limit {
                return Err(truncated(path, self.pos));
            }
            self.pos += 2;
            return Ok(None);
        }
        self.header(parent, path).map(Some)
    }

    /// The next element of `parent`, which must be there and carry `expected_tag`.
    pub fn expect(
        &mut self,
        parent: &Contents,
        expected_tag: u8,
        expected: &'static str,
        path: &Path,
    ) -> Result<Element, CmsError> {
        let at = self.pos;
        match self.next(parent, path)? {
            Some(e) if e.tag == expected_tag => Ok(e),
            Some(e) => Err(CmsError::UnexpectedTag {
                path: path.to_string(),
                offset: e.offset,
                expected,
                found: e.tag,
            }),
            None => Err(CmsError::Missing {
                path: path.to_string(),
                offset: at,
                expected,
            }),
        }
    }

    /// Reads an element header at the current position, inside `parent`.
    fn header(&mut self, parent: &Contents, path: &Path) -> Result<Element, CmsError> {
        let offset = self.pos;
        let limit = parent.limit;
        let id = self.byte(limit, path)?;
        if id & 0x1f == 0x1f {
            return Err(malformed(
                path,
                offset,
                format!("high tag number form (identifier 0x{id:02x}) is not used by CMS"),
            ));
        }
        if id == 0 {
            if self.pos >= limit {
                // The first octet of an end-of-contents marker, and the input ends.
                return Err(truncated(path, self.pos));
            }
            return Err(malformed(
                path,
                offset,
                "end-of-contents marker where an element was expected".into(),
            ));
        }
        let first = self.byte(limit, path)?;
        let claimed: Option<u64> = match first {
            0..=0x7f => Some(u64::from(first)),
            0x80 => {
                if id & tag::CONSTRUCTED == 0 {
                    return Err(CmsError::IndefinitePrimitive {
                        path: path.to_string(),
                        offset,
                        tag: id,
                    });
                }
                None
            }
            0xff => {
                return Err(malformed(
                    path,
                    offset,
                    "length octet 0xff is reserved".into(),
                ))
            }
            _ => {
                let n = first & 0x7f;
                if n > 4 {
                    return Err(malformed(
                        path,
                        offset,
                        format!("a length in {n} octets is longer than any accepted (4)"),
                    ));
                }
                let mut v: u64 = 0;
                for _ in 0..n {
                    v = (v << 8) | u64::from(self.byte(limit, path)?);
                }
                Some(v)
            }
        };
        // Checked against what is left of the enclosing element before anything uses it.
        let remaining = limit - self.pos;
        let len = match claimed {
            None => None,
            Some(v) => match usize::try_from(v) {
                Ok(l) if l <= remaining => Some(l),
                _ => {
                    return Err(CmsError::LengthOverrun {
                        path: path.to_string(),
                        offset,
                        length: v,
                        remaining,
                    })
                }
            },
        };
        Ok(Element {
            tag: id,
            offset,
            body: self.pos,
            len,
        })
    }

    /// One octet, which must be before `limit`.
    fn byte(&mut self, limit: usize, path: &Path) -> Result<u8, CmsError> {
        if self.pos >= limit {
            return Err(truncated(path, self.pos));
        }
        let b = self
            .input
            .get(self.pos)
            .copied()
            .ok_or_else(|| truncated(path, self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    /// The contents of constructed element `e` of `parent`, to read with [`Reader::next`]
    /// and close with [`Reader::finish`].
    pub fn enter(&self, e: &Element, parent: &Contents, path: &Path) -> Result<Contents, CmsError> {
        if !e.constructed() {
            return Err(malformed(
                path,
                e.offset,
                format!(
                    "expected a constructed element, found primitive tag 0x{:02x}",
                    e.tag
                ),
            ));
        }
        let depth = parent.depth + 1;
        if depth > MAX_DEPTH {
            return Err(CmsError::TooDeep {
                path: path.to_string(),
                offset: e.offset,
                max: MAX_DEPTH,
            });
        }
        Ok(match e.len {
            Some(l) => Contents {
                limit: e.body + l,
                indefinite: false,
                depth,
            },
            None => Contents {
                limit: parent.limit,
                indefinite: true,
                depth,
            },
        })
    }

    /// Closes `contents`: nothing may be left in them (for an indefinite length, the
    /// end-of-contents marker comes next and is consumed).
    pub fn finish(&mut self, contents: &Contents, path: &Path) -> Result<(), CmsError> {
        let at = self.pos;
        let ended = if contents.indefinite {
            match self.input.get(at..at.saturating_add(2)) {
                Some([0, 0]) if at + 2 <= contents.limit => {
                    self.pos += 2;
                    true
                }
                Some(_) if at + 2 <= contents.limit => false,
                _ => return Err(truncated(path, at)),
            }
        } else {
            at >= contents.limit
        };
        if ended {
            return Ok(());
        }
        Err(CmsError::TrailingData {
            path: path.to_string(),
            offset: at,
            tag: self.input.get(at).copied().unwrap_or_default(),
        })
    }

    /// The contents of primitive element `e` (its length was checked against the input).
    pub fn primitive(&mut self, e: &Element, path: &Path) -> Result<&'a [u8], CmsError> {
        let (false, Some(len)) = (e.constructed(), e.len) else {
            return Err(malformed(
                path,
                e.offset,
                format!(
                    "expected a primitive element, found constructed tag 0x{:02x}",
                    e.tag
                ),
            ));
        };
        let end = e.body + len;
        let bytes = self
            .input
            .get(e.body..end)
            .ok_or_else(|| truncated(path, e.body))?;
        self.pos = end;
        Ok(bytes)
    }

    /// Skips element `e` of `parent` whole, walking a constructed one (its nesting capped).
    pub fn skip(&mut self, e: &Element, parent: &Contents, path: &Path) -> Result<(), CmsError> {
        if !e.constructed() {
            self.primitive(e, path)?;
            return Ok(());
        }
        let inner = self.enter(e, parent, path)?;
        while let Some(child) = self.next(&inner, path)? {
            self.skip(&child, &inner, path)?;
        }
        Ok(())
    }

    /// The octets of string element `e` of `parent`, appended to `out`: primitive, or
    /// constructed from chunks (each an OCTET STRING, itself primitive or constructed), as BER
    /// allows. More than `max` octets in all is an error, raised before they are copied.
    pub fn octets(
        &mut self,
        e: &Element,
        parent: &Contents,
        max: usize,
        path: &Path,
        out: &mut Vec<u8>,
    ) -> Result<(), CmsError> {
        if !e.constructed() {
            let bytes = self.primitive(e, path)?;
            if bytes.len() > max.saturating_sub(out.len()) {
                return Err(CmsError::TooLarge {
                    path: path.to_string(),
                    offset: e.offset,
                    max,
                });
            }
            out.extend_from_slice(bytes);
            return Ok(());
        }
        let inner = self.enter(e, parent, path)?;
        let chunk_path = path.child("chunk");
        while let Some(chunk) = self.next(&inner, &chunk_path)? {
            if chunk.tag != tag::OCTET_STRING && chunk.tag != tag::OCTET_STRING_CONSTRUCTED {
                return Err(CmsError::UnexpectedTag {
                    path: chunk_path.to_string(),
                    offset: chunk.offset,
                    expected: "an OCTET STRING chunk",
                    found: chunk.tag,
                });
            }
            self.octets(&chunk, &inner, max, &chunk_path, out)?;
        }
        Ok(())
    }
}

fn truncated(path: &Path, offset: usize) -> CmsError {
    CmsError::Truncated {
        path: path.to_string(),
        offset,
    }
}

fn malformed(path: &Path, offset: usize, what: String) -> CmsError {
    CmsError::Malformed {
        path: path.to_string(),
        offset,
        what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one string element (primitive or chunked) that must be the whole input.
    fn string(input: &[u8]) -> Result<Vec<u8>, CmsError> {
        let mut r = Reader::new(input);
        let top = r.top();
        let path = Path::root("test");
        let e = r.next(&top, &path)?.ok_or(CmsError::Missing {
            path: "test".into(),
            offset: 0,
            expected: "an element",
        })?;
        let mut out = Vec::new();
        r.octets(&e, &top, 64, &path, &mut out)?;
        r.finish(&top, &path)?;
        Ok(out)
    }

    #[test]
    fn lengths_short_long_and_non_minimal() {
        assert_eq!(string(&[0x04, 0x02, 1, 2]).unwrap(), [1, 2]);
        assert_eq!(string(&[0x04, 0x81, 0x02, 1, 2]).unwrap(), [1, 2]);
        // BER allows more length octets than needed.
        assert_eq!(string(&[0x04, 0x84, 0, 0, 0, 0x02, 1, 2]).unwrap(), [1, 2]);
        assert!(matches!(
            string(&[0x04, 0x85, 0, 0, 0, 0, 0x02, 1, 2]),
            Err(CmsError::Malformed { .. })
        ));
        assert!(matches!(
            string(&[0x04, 0xff, 1]),
            Err(CmsError::Malformed { .. })
        ));
        assert!(matches!(
            string(&[0x04, 0x03, 1, 2]),
            Err(CmsError::LengthOverrun {
                length: 3,
                remaining: 2,
                ..
            })
        ));
    }

    #[test]
    fn chunks_concatenate_and_end_where_they_should() {
        let chunked = [0x24, 0x80, 0x04, 0x01, 1, 0x04, 0x02, 2, 3, 0, 0];
        assert_eq!(string(&chunked).unwrap(), [1, 2, 3]);
        // The same chunks in a definite constructed string.
        assert_eq!(
            string(&[0x24, 0x07, 0x04, 0x01, 1, 0x04, 0x02, 2, 3]).unwrap(),
            [1, 2, 3]
        );
        // A chunk that is not an OCTET STRING.
        assert!(matches!(
            string(&[0x24, 0x80, 0x02, 0x01, 1, 0, 0]),
            Err(CmsError::UnexpectedTag { found: 0x02, .. })
        ));
        // No end-of-contents marker.
        assert!(matches!(
            string(&[0x24, 0x80, 0x04, 0x01, 1]),
            Err(CmsError::Truncated { offset: 5, .. })
        ));
        // An end-of-contents marker in a definite-length element.
        assert!(matches!(
            string(&[0x24, 0x05, 0x04, 0x01, 1, 0, 0]),
            Err(CmsError::Malformed { offset: 5, .. })
        ));
        // An indefinite string inside a definite one may not run past it.
        assert!(matches!(
            string(&[0x24, 0x05, 0x24, 0x80, 0x04, 0x01, 1, 0, 0]),
            Err(CmsError::Truncated { .. } | CmsError::LengthOverrun { .. })
        ));
        // Over the cap, before the copy.
        let mut long = vec![0x24, 0x80];
        for _ in 0..3 {
            long.extend_from_slice(&[0x04, 30]);
            long.extend_from_slice(&[7; 30]);
        }
        long.extend_from_slice(&[0, 0]);
        assert!(matches!(
            string(&long),
            Err(CmsError::TooLarge { max: 64, .. })
        ));
    }

    #[test]
    fn identifiers_cms_does_not_use() {
        assert!(matches!(
            string(&[0x1f, 0x81, 0x00, 0x00]),
            Err(CmsError::Malformed { .. })
        ));
        assert!(matches!(
            string(&[0x00, 0x00]),
            Err(CmsError::Malformed { .. })
        ));
        assert!(matches!(
            string(&[0x04, 0x80, 0, 0]),
            Err(CmsError::IndefinitePrimitive { tag: 0x04, .. })
        ));
        assert!(matches!(
            string(&[0x04, 0x01, 1, 0x04]),
            Err(CmsError::TrailingData { offset: 3, .. })
        ));
    }

    #[test]
    fn paths_name_the_field() {
        let p = Path::root("ContentInfo")
            .child("content")
            .child("EnvelopedData");
        assert_eq!(p.to_string(), "ContentInfo.content.EnvelopedData");
        let mut deep = Path::root("a");
        for _ in 0..100 {
            deep = deep.child("b");
        }
        assert_eq!(deep.to_string().split('.').count(), MAX_DEPTH + 8);
    }
}
