//! Entry names from a layer, normalized and bounded before any filesystem call sees them.

use crate::RootfsError;

/// A relative path inside the root: components with no `""`, `"."` or `".."`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath(pub Vec<Vec<u8>>);

impl RelPath {
    /// Normalizes an archive name. Absolute names and `..` components are refused: neither
    /// appears in a well-formed layer, and both are classic escape attempts. The one exception
    /// is the root's own entry, `/` (or `/.`, `//`): `umoci insert DIR /` writes it, and GNU
    /// tar and umoci apply it to the root as `./`. It names nothing outside the root.
    pub fn parse(raw: &[u8], max_len: usize, max_depth: usize) -> Result<RelPath, RootfsError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.len() > max_len {
            return Err(RootfsError::PathTooLong {
                path: shown(),
                max: max_len,
            });
        }
        if raw.first() == Some(&b'/')
            && !raw.split(|b| *b == b'/').all(|c| c.is_empty() || c == b".")
        {
            return Err(RootfsError::AbsolutePath(shown()));
        }
        let mut parts = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(RootfsError::DotDot(shown())),
                c => parts.push(c.to_vec()),
            }
        }
        if parts.len() > max_depth {
            return Err(RootfsError::PathTooDeep {
                path: shown(),
                max: max_depth,
            });
        }
        Ok(RelPath(parts))
    }

    /// Whether this is the root itself (no components).
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent path and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        let (last, parent) = self.0.split_last()?;
        Some((RelPath(parent.to_vec()), last))
    }

    /// This path with one more component.
    pub fn join(&self, name: &[u8]) -> RelPath {
        let mut p = self.0.clone();
        p.push(name.to_vec());
        RelPath(p)
    }

    /// The path as shown in messages: absolute, lossy UTF-8.
    pub fn display(&self) -> String {
        if self.0.is_empty() {
            return "/".into();
        }
        let mut s = String::new();
        for c in &self.0 {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(c));
        }
        s
    }

    /// The path as bytes for `openat2` (no leading slash; `.` for the root).
    pub fn as_bytes(&self) -> Vec<u8> {
        if self.0.is_empty() {
            return b".".to_vec();
        }
        self.0.join(&b'/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses() {
        let p = RelPath::parse(b"./a//b/./c/", 100, 10).unwrap();
        assert_eq!(p.display(), "/a/b/c");
        assert!(RelPath::parse(b"./", 100, 10).unwrap().is_root());
        for root in [&b"/"[..], b"//", b"/.", b"/./"] {
            assert!(RelPath::parse(root, 100, 10).unwrap().is_root());
        }
        for abs in [&b"/etc/x"[..], b"/./etc", b"//x", b"/.."] {
            assert!(matches!(
                RelPath::parse(abs, 100, 10),
                Err(RootfsError::AbsolutePath(_))
            ));
        }
        assert!(matches!(
            RelPath::parse(b"/etc/passwd", 100, 10),
            Err(RootfsError::AbsolutePath(_))
        ));
        assert!(matches!(
            RelPath::parse(b"a/../../x", 100, 10),
            Err(RootfsError::DotDot(_))
        ));
        assert!(matches!(
            RelPath::parse(&[b'a'; 101], 100, 10),
            Err(RootfsError::PathTooLong { .. })
        ));
        assert!(matches!(
            RelPath::parse(b"a/b/c", 100, 2),
            Err(RootfsError::PathTooDeep { .. })
        ));
    }
}
