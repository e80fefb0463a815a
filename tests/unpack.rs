//! `cidboot unpack`: layers streamed from a real HTTPS gateway into a root, applied in order
//! while later layers are still inflating, and all or nothing.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

/// An image served by a real gateway, and a directory to unpack it into.
struct Published {
    reference: String,
    gw: Gateway,
    work: tempfile::TempDir,
}

impl Published {
    fn new(img: &Image) -> Self {
        let work = tempfile::tempdir().unwrap();
        let (reference, gw) = publish(img, work.path());
        Published {
            reference,
            gw,
            work,
        }
    }

    /// Runs `cidboot unpack` into `rel` below the work directory.
    fn unpack(&self, rel: &str) -> (PathBuf, Out) {
        self.unpack_with(rel, &[])
    }

    /// The same, with extra arguments.
    fn unpack_with(&self, rel: &str, extra: &[&str]) -> (PathBuf, Out) {
        let rootfs = self.work.path().join(rel);
        let mut args = vec![
            "unpack",
            &self.reference,
            "--gateway",
            &self.gw.url,
            "--ca",
            self.gw.ca.to_str().unwrap(),
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        (rootfs, out)
    }
}

/// Names in `dir` that cidboot created beside the root and should have removed.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cidboot-"))
        .collect()
}

/// A tar whose entry names are written raw, as a hostile publisher would.
fn raw_tar(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn large_layers_stream_into_the_root_in_order() {
    // Incompressible layers of tens of MB: the applier follows each layer's inflater, and the
    // later layer's changes land on top of the earlier one's.
    let big0 = noise(24 << 20, 1);
    let big1 = noise(20 << 20, 2);
    let lower = tar_of(&[
        ("data/big", big0.clone()),
        ("data/replaced", b"old".to_vec()),
        ("data/gone", b"x".to_vec()),
    ]);
    let upper = tar_of(&[
        ("data/replaced", b"new".to_vec()),
        ("data/.wh.gone", vec![]),
        ("data/big1", big1.clone()),
    ]);
    let img = image_from_tars(&[lower.clone(), upper.clone()], json!({}));
    let p = Published::new(&img);
    let (rootfs, out) = p.unpack("root");
    assert!(out.ok, "{}", out.stderr);
    let report = out.json();
    assert_eq!(
        report["uncompressed_bytes"],
        (lower.len() + upper.len()) as u64
    );
    assert_eq!(report["layers"].as_array().unwrap().len(), 2);
    assert!(std::fs::read(rootfs.join("data/big")).unwrap() == big0);
    assert!(std::fs::read(rootfs.join("data/big1")).unwrap() == big1);
    assert_eq!(std::fs::read(rootfs.join("data/replaced")).unwrap(), b"new");
    assert!(!rootfs.join("data/gone").exists());
    assert!(
        leftovers(p.work.path()).is_empty(),
        "{:?}",
        leftovers(p.work.path())
    );
}

#[test]
fn a_diff_id_mismatch_in_the_last_layer_leaves_nothing_behind() {
    let img = image_from_tars_with(
        &[
            tar_of(&[("a", noise(8 << 20, 3))]),
            tar_of(&[("b", noise(8 << 20, 4))]),
        ],
        json!({}),
        |i, d| {
            if i == 1 {
                format!("sha256:{}", "0".repeat(64))
            } else {
                d
            }
        },
    );
    let p = Published::new(&img);
    let (rootfs, out) = p.unpack("root");
    assert!(!out.ok);
    assert!(
        out.stderr.contains("layer 1 (")
            && out
                .stderr
                .contains("but the config's diff_id is sha256:000"),
        "{}",
        out.stderr
    );
    assert!(!rootfs.exists(), "a partly applied root was left behind");
    assert!(
        leftovers(p.work.path()).is_empty(),
        "{:?}",
        leftovers(p.work.path())
    );
}

#[test]
fn a_hostile_entry_is_reported_as_the_cause_while_its_layer_still_streams() {
    // The applier refuses the entry while megabytes of the same layer are still being fetched
    // and inflated: the error names the entry, not the interrupted inflater.
    let hostile = raw_tar(&[(b"../escape", b"pwned"), (b"after", &noise(16 << 20, 5))]);
    let img = image_from_tars(
        &[tar_of(&[("base", noise(4 << 20, 6))]), hostile],
        json!({}),
    );
    let p = Published::new(&img);
    let (rootfs, out) = p.unpack("sub/root");
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("\"../escape\" contains a \"..\" component"),
        "{}",
        out.stderr
    );
    // The error names the layer: its index in the manifest and its digest.
    assert!(
        out.stderr
            .contains(&format!("layer 1 ({}): ", img.layers[1].digest)),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("interrupted"), "{}", out.stderr);
    assert!(!rootfs.exists());
    assert!(!p.work.path().join("sub/escape").exists() && !p.work.path().join("escape").exists());
    assert!(leftovers(&p.work.path().join("sub")).is_empty());
}

#[test]
fn a_non_empty_target_is_refused_untouched() {
    let img = image_from_tars(&[tar_of(&[("a", b"1".to_vec())])], json!({}));
    let p = Published::new(&img);
    let rootfs = p.work.path().join("root");
    std::fs::create_dir(&rootfs).unwrap();
    std::fs::write(rootfs.join("mine"), b"keep").unwrap();
    let (_, out) = p.unpack("root");
    assert!(
        !out.ok && out.stderr.contains("not empty"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(rootfs.join("mine")).unwrap(), b"keep");
    assert!(!rootfs.join("a").exists());
}

#[test]
fn a_layer_from_umoci_insert_without_end_of_archive_blocks_unpacks() {
    use std::ffi::OsStr;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("umoci");
    std::fs::create_dir_all(work.path().join("src/tree/sub")).unwrap();
    std::fs::write(work.path().join("src/greeting"), b"hello from umoci\n").unwrap();
    std::fs::write(work.path().join("src/tree/sub/leaf"), b"leaf").unwrap();
    let w = |p: &str| work.path().join(p).into_os_string();
    umoci(&[
        OsStr::new("init"),
        OsStr::new("--layout"),
        layout.as_os_str(),
    ]);
    let image_arg = format!("{}:latest", layout.display());
    let image_arg = OsStr::new(&image_arg);
    umoci(&[OsStr::new("new"), OsStr::new("--image"), image_arg]);
    for (src, dst) in [("src/tree", "/opt/tree"), ("src/greeting", "/etc/greeting")] {
        umoci(&[
            OsStr::new("insert"),
            OsStr::new("--rootless"),
            OsStr::new("--image"),
            image_arg,
            &w(src),
            OsStr::new(dst),
        ]);
    }
    // The property under test: the tool wrote a layer that stops right after the last entry's
    // data, with neither its padding nor the end-of-archive blocks.
    let manifest = layout_manifest(&layout);
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let last = layers[1]["digest"].as_str().unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&layout_blob(&layout, last)[..]),
        &mut tar,
    )
    .unwrap();
    assert_ne!(tar.len() % 512, 0, "umoci {last} now ends its tar normally");
    let car = work.path().join("umoci.car");
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let rootfs = work.path().join("root");
    let out = run(&[
        "unpack",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        std::fs::read(rootfs.join("etc/greeting")).unwrap(),
        b"hello from umoci\n"
    );
    assert_eq!(
        std::fs::read(rootfs.join("opt/tree/sub/leaf")).unwrap(),
        b"leaf"
    );
}

#[test]
fn a_layer_from_umoci_insert_at_the_root_unpacks_as_umoci_unpack_does() {
    use std::ffi::OsStr;
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("umoci");
    umoci_root_insert(&layout, 0o755);
    // umoci itself accepts its layer.
    let by_umoci = work.path().join("by-umoci");
    umoci(&[
        OsStr::new("unpack"),
        OsStr::new("--rootless"),
        OsStr::new("--image"),
        OsStr::new(&format!("{}:latest", layout.display())),
        by_umoci.as_os_str(),
    ]);
    assert_eq!(
        std::fs::read(by_umoci.join("rootfs/etc/hello")).unwrap(),
        b"hello from the root\n"
    );
    let car = work.path().join("umoci.car");
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let rootfs = work.path().join("root");
    let out = run(&[
        "unpack",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        std::fs::read(rootfs.join("etc/hello")).unwrap(),
        b"hello from the root\n"
    );
}

/// A version 2 `security.capability` value: effective, with CAP_NET_BIND_SERVICE permitted.
const NET_BIND_CAP: [u8; 20] = [
    0x01, 0, 0, 0x02, 0, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// A layer with a root entry of mode 0755, a world-usable device node and a hard link to it,
/// a setuid-root and a
/// setgid binary, a file with a file capability, and a setgid directory.
fn special_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, size: usize, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(size as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    };
    let mut add = |h: &mut tar::Header, path: &str, data: &[u8]| {
        b.append_data(h, path, data).unwrap();
    };
    add(&mut header(tar::EntryType::Directory, 0, 0o755), "./", &[]);
    add(&mut header(tar::EntryType::Directory, 0, 0o755), "dev", &[]);
    let mut dev = header(tar::EntryType::Char, 0, 0o666);
    dev.set_device_major(1).unwrap();
    dev.set_device_minor(3).unwrap();
    add(&mut dev, "dev/mynull", &[]);
    let mut link = header(tar::EntryType::Link, 0, 0o666);
    link.set_link_name("dev/mynull").unwrap();
    add(&mut link, "dev/alias", &[]);
    add(&mut header(tar::EntryType::Directory, 0, 0o755), "bin", &[]);
    add(
        &mut header(tar::EntryType::Regular, 2, 0o4755),
        "bin/su",
        b"su",
    );
    add(
        &mut header(tar::EntryType::Regular, 4, 0o2755),
        "bin/wall",
        b"wall",
    );
    add(
        &mut header(tar::EntryType::Directory, 0, 0o2775),
        "shared",
        &[],
    );
    // PAX records for the next entry: its file capability.
    let key = "SCHILY.xattr.security.capability";
    let body = key.len() + NET_BIND_CAP.len() + 3;
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len += 1;
    }
    let mut pax = format!("{len} {key}=").into_bytes();
    pax.extend_from_slice(&NET_BIND_CAP);
    pax.push(b'\n');
    add(
        &mut header(tar::EntryType::XHeader, pax.len(), 0o644),
        "PaxHeader/ping",
        &pax,
    );
    add(
        &mut header(tar::EntryType::Regular, 4, 0o755),
        "bin/ping",
        b"ping",
    );
    b.into_inner().unwrap()
}

/// `security.capability` of `path`, if it has one.
fn file_capability(path: &Path) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn the_unpacked_root_is_private_and_special_files_are_kept_by_default() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let img = image_from_tars(&[special_layer()], json!({}));
    let p = Published::new(&img);
    let (rootfs, out) = p.unpack("root");
    assert!(out.ok, "{}", out.stderr);
    let m = |rel: &str| std::fs::symlink_metadata(rootfs.join(rel)).unwrap();
    // The image's `./` entry says 0755; the root is still its owner's only.
    assert_eq!(m(".").mode() & 0o7777, 0o700);
    assert!(m("dev/mynull").file_type().is_char_device());
    assert_eq!(m("dev/mynull").mode() & 0o777, 0o666);
    assert_eq!(
        m("dev/alias").ino(),
        m("dev/mynull").ino(),
        "hard link to the device"
    );
    assert_eq!(m("bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(m("bin/wall").mode() & 0o7777, 0o2755);
    assert_eq!(m("shared").mode() & 0o7777, 0o2775);
    assert_eq!(
        file_capability(&rootfs.join("bin/ping")).as_deref(),
        Some(&NET_BIND_CAP[..]),
        "the file capability is applied"
    );
}

#[test]
fn no_special_files_leaves_out_devices_setuid_setgid_and_file_capabilities() {
    use std::os::unix::fs::MetadataExt;
    let img = image_from_tars(&[special_layer()], json!({}));
    let p = Published::new(&img);
    let (rootfs, out) = p.unpack_with("root", &["--no-special-files"]);
    assert!(out.ok, "{}", out.stderr);
    let m = |rel: &str| std::fs::symlink_metadata(rootfs.join(rel)).unwrap();
    assert_eq!(m(".").mode() & 0o7777, 0o700);
    assert!(
        std::fs::symlink_metadata(rootfs.join("dev/mynull")).is_err(),
        "no device node"
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("dev/alias")).is_err(),
        "no hard link to it either"
    );
    assert!(m("dev").is_dir());
    assert_eq!(m("bin/su").mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(rootfs.join("bin/su")).unwrap(), b"su");
    assert_eq!(m("bin/wall").mode() & 0o7777, 0o755);
    // A setgid directory only makes new files inherit its group: kept.
    assert_eq!(m("shared").mode() & 0o7777, 0o2775);
    assert_eq!(file_capability(&rootfs.join("bin/ping")), None);
    assert_eq!(std::fs::read(rootfs.join("bin/ping")).unwrap(), b"ping");
}
