//! Entry names from a layer, normalized and bounded before any filesystem call sees them: the
//! rootfs crate's [`cidboot_rootfs::path`].

pub use cidboot_rootfs::path::*;
