//! Filesystem operations confined to a root directory: the rootfs crate's [`cidboot_rootfs::fs`].
//!
//! Every path is resolved by the kernel with `openat2(RESOLVE_IN_ROOT)` from the root's
//! directory fd, so symlinks (absolute or relative, planted by any earlier entry) resolve as
//! they will for the chrooted workload: inside the root.

pub use cidboot_rootfs::fs::*;
