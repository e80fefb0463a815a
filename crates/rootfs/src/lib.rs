//! The confined filesystem of an image's root: entry names normalized and bounded before any
//! filesystem call sees them ([`path`]), and every path resolved by the kernel inside the
//! root, so that nothing the image planted (a symlink, absolute or relative) reaches outside
//! it ([`fs`]).

#![warn(missing_docs)]

pub mod fs;
pub mod path;

/// What went wrong with a path or a filesystem operation in the root.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A name starts with `/`.
    #[error("entry {0:?} has an absolute name")]
    AbsolutePath(String),
    /// A name has a `..` component.
    #[error("entry {0:?} contains a \"..\" component")]
    DotDot(String),
    /// A name is over the length limit.
    #[error("entry {path:?} is longer than {max} bytes")]
    PathTooLong {
        /// The name.
        path: String,
        /// The limit, in bytes.
        max: usize,
    },
    /// A name, or a tree being removed, is nested over the depth limit.
    #[error("entry {path:?} is nested deeper than {max} levels")]
    PathTooDeep {
        /// The name.
        path: String,
        /// The limit, in components.
        max: usize,
    },
    /// A name has a NUL byte.
    #[error("entry name {0:?} contains a NUL byte")]
    BadName(String),
    /// An operation would replace the root directory itself.
    #[error("an entry would replace the root directory with a {0} entry")]
    RootType(String),
    /// A symlink on the path leads outside the root, or nowhere.
    #[error("{0}: a symlink in the path leads outside the root or to nothing")]
    SymlinkOutside(String),
    /// Too many symlinks on the path.
    #[error("{0}: too many levels of symbolic links")]
    SymlinkLoop(String),
    /// A component of the path is not a directory.
    #[error("{0}: a path component is not a directory")]
    NotADirectory(String),
    /// A symlink where the operation follows none.
    #[error("{0} is a symlink in the image, where cidboot follows none")]
    SymlinkRefused(String),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Fs {
        /// The path in the root.
        path: String,
        /// The operation.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Something that cannot happen did.
    #[error("internal: {0}")]
    Internal(String),
}
