//! Layer application: OCI semantics, and every hostile layer refused without touching
//! anything outside the root.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cidboot::apply::fs::Root;
use cidboot::apply::layer::apply_tar;
use cidboot::apply::{inflate, ApplyError, ApplyLimits};
use cidboot::oci::Compression;

/// A tar writer that puts raw bytes in the name fields, as an attacker would.
struct RawTar(tar::Builder<Vec<u8>>);

impl RawTar {
    fn new() -> Self {
        RawTar(tar::Builder::new(Vec::new()))
    }
    fn header(name: &[u8], kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }
    fn push(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.push(
            Self::header(
                name.as_bytes(),
                tar::EntryType::Regular,
                data.len() as u64,
                0o644,
            ),
            data,
        )
    }
    fn file_mode(&mut self, name: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(
            name.as_bytes(),
            tar::EntryType::Regular,
            data.len() as u64,
            mode,
        );
        h.set_uid(uid);
        h.set_gid(gid);
        self.push(h, data)
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.push(
            Self::header(name.as_bytes(), tar::EntryType::Directory, 0, 0o755),
            b"",
        )
    }
    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, 0, 0o777);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        self.push(h, b"")
    }
    fn device(&mut self, kind: tar::EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(name.as_bytes(), kind, 0, 0o620);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.push(h, b"")
    }
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.push(
            Self::header(
                b"././@PaxHeader",
                tar::EntryType::XHeader,
                data.len() as u64,
                0o644,
            ),
            &data,
        )
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A root with a sentinel directory beside it that must never change.
struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"untouched").unwrap();
        Scene {
            _tmp: tmp,
            root,
            outside,
        }
    }
    fn apply(&self, tar: Vec<u8>) -> Result<cidboot::apply::LayerStats, ApplyError> {
        self.apply_with(tar, &ApplyLimits::default())
    }
    fn apply_with(
        &self,
        tar: Vec<u8>,
        limits: &ApplyLimits,
    ) -> Result<cidboot::apply::LayerStats, ApplyError> {
        apply_tar(&Root::open(&self.root).unwrap(), &tar[..], limits)
    }
    /// Applies a hostile layer: it must fail, and the outside must be as it was.
    fn refuse(&self, tar: Vec<u8>) -> String {
        let e = self.apply(tar).expect_err("hostile layer applied");
        self.assert_outside_intact();
        e.to_string()
    }
    fn assert_outside_intact(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("sentinel")],
            "something appeared outside the root"
        );
        assert_eq!(
            std::fs::read(self.outside.join("sentinel")).unwrap(),
            b"untouched"
        );
        assert_eq!(
            std::fs::metadata(self.outside.join("sentinel"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o644
        );
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn rel_to_outside(s: &Scene) -> String {
    // Enough ".." to climb out of any temporary directory, then down to the sentinel.
    format!(
        "{}{}",
        "../".repeat(20),
        s.outside.strip_prefix("/").unwrap().display()
    )
}

// ---- hostile layers ----

#[test]
fn dotdot_traversal() {
    let s = Scene::new();
    let name = format!("{}/pwned", rel_to_outside(&s));
    let e = s.refuse({
        let mut t = RawTar::new();
        t.file(&name, b"x");
        t.bytes()
    });
    assert!(e.contains("\"..\" component"), "{e}");
}

#[test]
fn absolute_name() {
    let s = Scene::new();
    let name = format!("{}/pwned", s.outside.display());
    let e = s.refuse({
        let mut t = RawTar::new();
        t.file(&name, b"x");
        t.bytes()
    });
    assert!(e.contains("absolute name"), "{e}");
}

#[test]
fn write_through_a_symlinked_parent_pointing_outside() {
    for target in [s_abs(), s_rel()] {
        let s = Scene::new();
        let target = target(&s);
        let e = s.refuse({
            let mut t = RawTar::new();
            t.link(tar::EntryType::Symlink, "escape", &target)
                .file("escape/sentinel", b"overwritten");
            t.bytes()
        });
        assert!(
            e.contains("symlink in the path leads outside the root"),
            "{e}"
        );
    }
}

fn s_abs() -> fn(&Scene) -> String {
    |s| s.outside.display().to_string()
}
fn s_rel() -> fn(&Scene) -> String {
    rel_to_outside
}

#[test]
fn hardlink_to_outside() {
    let s = Scene::new();
    for target in [
        format!("{}/sentinel", rel_to_outside(&s)),
        format!("{}/sentinel", s.outside.display()),
    ] {
        let e = s.refuse({
            let mut t = RawTar::new();
            t.link(tar::EntryType::Link, "link", &target);
            t.bytes()
        });
        assert!(e.contains("points outside the root"), "{e}");
    }
    // Through a symlink that, read naively, leads outside: resolved inside the root, the
    // target does not exist there.
    let e = s.refuse({
        let mut t = RawTar::new();
        t.link(
            tar::EntryType::Symlink,
            "out",
            &s.outside.display().to_string(),
        )
        .link(tar::EntryType::Link, "link", "out/sentinel");
        t.bytes()
    });
    assert!(e.contains("points outside the root"), "{e}");
}

#[test]
fn whiteout_escaping_its_directory() {
    let s = Scene::new();
    std::fs::create_dir_all(s.p("a")).unwrap();
    let e = s.refuse({
        let mut t = RawTar::new();
        t.file("a/.wh...", b"");
        t.bytes()
    });
    assert!(e.contains("escapes its directory"), "{e}");
    let e = s.refuse({
        let mut t = RawTar::new();
        t.file(&format!("{}/.wh.sentinel", rel_to_outside(&s)), b"");
        t.bytes()
    });
    assert!(e.contains("\"..\""), "{e}");
}

#[test]
fn change_of_the_root_type() {
    let s = Scene::new();
    let e = s.refuse({
        let mut t = RawTar::new();
        t.link(
            tar::EntryType::Symlink,
            "./",
            &s.outside.display().to_string(),
        );
        t.bytes()
    });
    assert!(e.contains("replace the root directory"), "{e}");
    let e = s.refuse({
        let mut t = RawTar::new();
        t.file(".", b"not a dir");
        t.bytes()
    });
    assert!(e.contains("replace the root directory"), "{e}");
    assert!(s.root.is_dir());
}

#[test]
fn the_root_entry_named_slash_by_umoci_insert_sets_the_root() {
    // `umoci insert DIR /` names the root's own entry `/`; as with `./`, its mode and
    // ownership are the root's. Any other absolute name is still refused (absolute_name).
    let s = Scene::new();
    let tar = common::umoci_root_insert(&s._tmp.path().join("umoci"), 0o751);
    std::fs::set_permissions(&s.root, std::fs::Permissions::from_mode(0o700)).unwrap();
    s.apply(tar).unwrap();
    let m = std::fs::metadata(&s.root).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o751);
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(
        std::fs::read(s.p("etc/hello")).unwrap(),
        b"hello from the root\n"
    );
    s.assert_outside_intact();
}

#[test]
fn device_number_overflow() {
    let s = Scene::new();
    let e = s.refuse({
        let mut t = RawTar::new();
        t.device(tar::EntryType::Char, "dev/evil", 5000, 1);
        t.bytes()
    });
    assert!(e.contains("out of range"), "{e}");
    // The largest value the octal field holds (2097151) is past Linux's 20-bit minor.
    let e = s.refuse({
        let mut t = RawTar::new();
        let mut h = RawTar::header(b"dev/evil", tar::EntryType::Block, 0, 0o600);
        h.as_gnu_mut().unwrap().dev_major = *b"0000010\0";
        h.as_gnu_mut().unwrap().dev_minor = *b"7777777\0";
        t.push(h, b"");
        t.bytes()
    });
    assert!(e.contains("out of range"), "{e}");
    // A field that is not a number at all.
    let e = s.refuse({
        let mut t = RawTar::new();
        let mut h = RawTar::header(b"dev/evil", tar::EntryType::Char, 0, 0o600);
        h.as_gnu_mut().unwrap().dev_major = *b"99999999";
        t.push(h, b"");
        t.bytes()
    });
    assert!(e.contains("bad device entry"), "{e}");
}

#[test]
fn inflation_stops_at_the_layer_and_the_image_limits() {
    // 64 MiB of zeros compress to about 64 KiB.
    let zeros = vec![0u8; 64 << 20];
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&zeros).unwrap();
        e.finish().unwrap()
    };
    let max = 6 << 20;
    let mut out = Vec::new();
    let e = inflate::inflate(
        &gz[..],
        Compression::Gzip,
        &inflate::Budget::single(max),
        &mut out,
    )
    .unwrap_err();
    assert!(matches!(e, ApplyError::LayerTooLarge { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("past 6 MiB, the limit on one layer's")
            && e.to_string().contains("--max-layer-mib"),
        "{e}"
    );
    assert!(out.len() as u64 <= max, "wrote past the limit");
    // Zstd is bounded the same way.
    let zst = zstd::encode_all(&zeros[..], 3).unwrap();
    let e = inflate::inflate(
        &zst[..],
        Compression::Zstd,
        &inflate::Budget::single(1 << 20),
        std::io::sink(),
    )
    .unwrap_err();
    assert!(matches!(e, ApplyError::LayerTooLarge { .. }), "{e}");
    // The image's limit is shared by its layers as they inflate: two layers of 40 MiB do not
    // fit in 64 MiB, though each fits in its own limit.
    let part = zstd::encode_all(&zeros[..40 << 20], 3).unwrap();
    let budget = inflate::Budget {
        layer_max: 1 << 30,
        image: inflate::ImageBudget::new(64 << 20),
    };
    let (n, _) = inflate::inflate(&part[..], Compression::Zstd, &budget, std::io::sink()).unwrap();
    assert_eq!(n, 40 << 20);
    let e = inflate::inflate(&part[..], Compression::Zstd, &budget, std::io::sink()).unwrap_err();
    assert!(matches!(e, ApplyError::TotalTooLarge { .. }), "{e}");
    assert!(e.to_string().contains("--max-image-mib"), "{e}");
}

#[test]
fn a_negative_pax_owner_is_refused_by_name() {
    let s = Scene::new();
    for key in ["uid", "gid"] {
        let e = s.refuse({
            let mut t = RawTar::new();
            t.pax(&[(key, b"-1")]).file("x", b"x");
            t.bytes()
        });
        assert!(e.contains(&format!("malformed PAX record {key}")), "{e}");
    }
}

#[test]
fn pax_bomb() {
    let s = Scene::new();
    let big = vec![b'a'; 2 << 20];
    let e = s.refuse({
        let mut t = RawTar::new();
        t.pax(&[("comment", &big)]).file("x", b"x");
        t.bytes()
    });
    assert!(e.contains("exceeds the 1048576-byte limit"), "{e}");
    // A GNU long name over the path limit, too.
    let e = s.refuse({
        let mut t = RawTar::new();
        let long = vec![b'n'; 8192];
        t.push(
            RawTar::header(
                b"././@LongLink",
                tar::EntryType::GNULongName,
                long.len() as u64,
                0o644,
            ),
            &long,
        )
        .file("x", b"x");
        t.bytes()
    });
    assert!(e.contains("exceeds"), "{e}");
}

#[test]
fn symlink_loop() {
    let s = Scene::new();
    let e = s.refuse({
        let mut t = RawTar::new();
        t.link(tar::EntryType::Symlink, "a", "b")
            .link(tar::EntryType::Symlink, "b", "a")
            .file("a/x", b"x");
        t.bytes()
    });
    assert!(e.contains("too many levels of symbolic links"), "{e}");
}

#[test]
fn entry_and_size_limits() {
    let s = Scene::new();
    let limits = ApplyLimits {
        max_entries: 3,
        ..ApplyLimits::default()
    };
    let mut t = RawTar::new();
    for i in 0..5 {
        t.file(&format!("f{i}"), b"");
    }
    let e = s.apply_with(t.bytes(), &limits).unwrap_err();
    assert!(e.to_string().contains("more than 3 entries"), "{e}");
    assert!(e.to_string().contains("--max-layer-entries"), "{e}");
    let deep = vec!["d"; 300].join("/");
    let e = s
        .apply({
            let mut t = RawTar::new();
            t.pax(&[("path", deep.as_bytes())]).file("short", b"");
            t.bytes()
        })
        .unwrap_err();
    assert!(e.to_string().contains("nested deeper than 256"), "{e}");
}

// ---- OCI semantics ----

#[test]
fn runs_of_zeros_become_holes_and_read_back_the_same() {
    let s = Scene::new();
    let mut tail = vec![0u8; 8 << 20];
    tail.extend_from_slice(b"end");
    let mut mid = vec![7u8; 3 << 20];
    mid.extend_from_slice(&vec![0u8; 4 << 20]);
    mid.extend_from_slice(&[7u8; 100]);
    s.apply({
        let mut t = RawTar::new();
        t.file("zeros", &vec![0u8; 16 << 20])
            .file("tail", &tail)
            .file("mid", &mid)
            .file("small", &[0u8; 10]);
        t.bytes()
    })
    .unwrap();
    let zeros = std::fs::metadata(s.p("zeros")).unwrap();
    assert_eq!(zeros.len(), 16 << 20);
    assert!(zeros.blocks() * 512 < 1 << 20, "{} blocks", zeros.blocks());
    assert!(std::fs::read(s.p("zeros")).unwrap().iter().all(|b| *b == 0));
    assert_eq!(std::fs::read(s.p("tail")).unwrap(), tail);
    assert_eq!(std::fs::read(s.p("mid")).unwrap(), mid);
    assert_eq!(std::fs::read(s.p("small")).unwrap(), [0u8; 10]);
}

#[test]
fn whiteouts_and_opaque_directories_in_any_order() {
    let s = Scene::new();
    s.apply({
        let mut t = RawTar::new();
        t.dir("etc")
            .file("etc/keep", b"1")
            .file("etc/gone", b"2")
            .dir("opq1")
            .file("opq1/lower", b"l")
            .dir("opq1/sub")
            .file("opq1/sub/lower", b"l")
            .dir("opq2")
            .file("opq2/lower", b"l");
        t.bytes()
    })
    .unwrap();
    s.apply({
        let mut t = RawTar::new();
        // Marker first, then new content.
        t.file("etc/.wh.gone", b"")
            .file("opq1/.wh..wh..opq", b"")
            .file("opq1/new", b"n")
            // New content first, then the marker: the layer's own entries stay.
            .file("opq2/new", b"n")
            .dir("opq2/sub")
            .file("opq2/sub/new", b"n")
            .file("opq2/.wh..wh..opq", b"");
        t.bytes()
    })
    .unwrap();
    assert!(s.p("etc/keep").exists() && !s.p("etc/gone").exists());
    assert!(
        !s.p("etc/.wh.gone").exists(),
        "whiteout markers are not materialized"
    );
    assert!(s.p("opq1/new").exists() && !s.p("opq1/lower").exists() && !s.p("opq1/sub").exists());
    assert!(
        s.p("opq2/new").exists() && s.p("opq2/sub/new").exists() && !s.p("opq2/lower").exists()
    );
}

#[test]
fn directories_and_files_replace_each_other() {
    let s = Scene::new();
    s.apply({
        let mut t = RawTar::new();
        t.dir("a").file("a/inner", b"x").file("b", b"file");
        t.bytes()
    })
    .unwrap();
    s.apply({
        let mut t = RawTar::new();
        t.file("a", b"now a file")
            .dir("b")
            .file("b/inner", b"y")
            .link(tar::EntryType::Symlink, "c", "b");
        t.bytes()
    })
    .unwrap();
    assert_eq!(std::fs::read(s.p("a")).unwrap(), b"now a file");
    assert_eq!(std::fs::read(s.p("b/inner")).unwrap(), b"y");
    s.apply({
        let mut t = RawTar::new();
        t.dir("c");
        t.bytes()
    })
    .unwrap();
    assert!(
        std::fs::symlink_metadata(s.p("c")).unwrap().is_dir(),
        "a symlink is replaced by a directory"
    );
}

#[test]
fn links_resolve_inside_the_root() {
    let s = Scene::new();
    s.apply({
        let mut t = RawTar::new();
        t.dir("usr")
            .dir("usr/lib")
            .file("usr/lib/libc.so", b"libc")
            .link(tar::EntryType::Symlink, "lib", "/usr/lib")
            // Written through an absolute symlink: lands in the root's /usr/lib.
            .file("lib/libm.so", b"libm")
            .link(tar::EntryType::Link, "hard", "usr/lib/libc.so")
            .link(tar::EntryType::Symlink, "abs", "/etc/passwd");
        t.bytes()
    })
    .unwrap();
    assert_eq!(std::fs::read(s.p("usr/lib/libm.so")).unwrap(), b"libm");
    assert_eq!(
        std::fs::metadata(s.p("hard")).unwrap().ino(),
        std::fs::metadata(s.p("usr/lib/libc.so")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(s.p("abs")).unwrap(),
        Path::new("/etc/passwd")
    );
    s.assert_outside_intact();
}

#[test]
fn ownership_modes_devices_xattrs_and_mtimes() {
    let s = Scene::new();
    s.apply({
        let mut t = RawTar::new();
        t.dir("bin")
            .file_mode("bin/su", b"su", 0o4755, 0, 0)
            .file_mode("bin/wall", b"wall", 0o2755, 0, 5)
            .file_mode("home-file", b"h", 0o640, 1000, 1000)
            .push(
                {
                    let mut h = RawTar::header(b"tmp", tar::EntryType::Directory, 0, 0o1777);
                    h.set_mtime(1_000_000);
                    h
                },
                b"",
            )
            .device(tar::EntryType::Char, "dev/null", 1, 3)
            .device(tar::EntryType::Fifo, "run/fifo", 0, 0)
            .pax(&[
                ("SCHILY.xattr.user.note", b"hello"),
                ("SCHILY.xattr.trusted.skip", b"no"),
            ])
            .file("noted", b"n")
            .push(
                {
                    let mut h = RawTar::header(b"bin/old", tar::EntryType::Regular, 1, 0o644);
                    h.set_mtime(1_234_567);
                    h
                },
                b"o",
            );
        t.bytes()
    })
    .unwrap();
    let m = |p: &str| std::fs::symlink_metadata(s.p(p)).unwrap();
    assert_eq!(m("bin/su").mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(m("bin/wall").mode() & 0o7777, 0o2755, "setgid kept");
    assert_eq!(m("bin/wall").gid(), 5);
    assert_eq!(
        (
            m("home-file").uid(),
            m("home-file").gid(),
            m("home-file").mode() & 0o777
        ),
        (1000, 1000, 0o640)
    );
    assert_eq!(m("tmp").mode() & 0o7777, 0o1777, "sticky kept");
    assert_eq!(m("tmp").mtime(), 1_000_000);
    use std::os::unix::fs::FileTypeExt;
    assert!(m("dev/null").file_type().is_char_device());
    assert_eq!(m("dev/null").rdev(), nix::sys::stat::makedev(1, 3));
    assert!(m("run/fifo").file_type().is_fifo());
    assert_eq!(m("bin/old").mtime(), 1_234_567);
    // bin's own entry came first, yet its mtime is the one from its header.
    assert_eq!(m("bin").mtime(), 1_600_000_000);
    let mut buf = [0u8; 16];
    let c = std::ffi::CString::new(s.p("noted").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"user.note".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n >= 0 {
        assert_eq!(&buf[..n as usize], b"hello");
    }
    // SAFETY: as above.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.skip".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n < 0, "trusted.* xattrs are never set");
}

// ---- streams without end-of-archive blocks (Debian's umoci 0.4.7 `insert`) ----

#[test]
fn a_stream_may_end_right_after_the_last_entry_data() {
    let mut t = RawTar::new();
    t.dir("etc").file("etc/a", b"first").file("etc/b", b"last!");
    let full = t.bytes();
    // Headers: etc, etc/a (+1 data block), etc/b, then 5 bytes of data: what umoci writes.
    let end = 512 * 4 + 5;
    assert!(full[end..].iter().all(|b| *b == 0));
    let s = Scene::new();
    s.apply(full[..end].to_vec())
        .expect("no end-of-archive blocks");
    assert_eq!(std::fs::read(s.p("etc/b")).unwrap(), b"last!");
    // Ending at a block boundary (padding kept, end blocks dropped) is fine too.
    let s = Scene::new();
    s.apply(full[..512 * 5].to_vec()).unwrap();
    assert_eq!(std::fs::read(s.p("etc/a")).unwrap(), b"first");
    // Anywhere else is a cut stream, even when the missing bytes would have been zeros.
    for cut in [end - 1, 512 * 4 - 3, 512 * 3 + 200, 512 + 7] {
        let s = Scene::new();
        let e = s.apply(full[..cut].to_vec()).unwrap_err().to_string();
        assert!(
            e.contains("cut short") || e.contains("inside a tar block"),
            "cut at {cut}: {e}"
        );
    }
    // A header whose tail of zeros is missing is not completed with made-up zeros.
    let mut t = RawTar::new();
    t.dir("etc").file("etc/empty", b"");
    let full = t.bytes();
    let s = Scene::new();
    let e = s.apply(full[..512 + 400].to_vec()).unwrap_err().to_string();
    assert!(e.contains("inside a tar block"), "{e}");
}
