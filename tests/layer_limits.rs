//! The size limits on what layers inflate to (`[layers]`, `--max-image-mib`,
//! `--max-layer-mib`, `--max-layer-entries`): a 300 MiB file of zeros that umoci packs into
//! under a megabyte unpacks by default, 10 GiB gzip and zstd bombs stop at the default layer
//! limit without the memory or the disk being spent, and every refusal names its knob.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

/// A umoci layout whose one layer holds `/data/zeros`, a file of `size` zeros (written sparse,
/// as a preallocated file is, and read by umoci as zeros). Returns the layout.
fn umoci_zero_file_image(work: &Path, size: u64) -> PathBuf {
    let layout = work.join("umoci");
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::File::create(src.join("zeros"))
        .unwrap()
        .set_len(size)
        .unwrap();
    umoci(&[
        OsStr::new("init"),
        OsStr::new("--layout"),
        layout.as_os_str(),
    ]);
    let image = format!("{}:latest", layout.display());
    umoci(&[OsStr::new("new"), OsStr::new("--image"), OsStr::new(&image)]);
    umoci(&[
        OsStr::new("insert"),
        OsStr::new("--rootless"),
        OsStr::new("--image"),
        OsStr::new(&image),
        src.join("zeros").as_os_str(),
        OsStr::new("/data/zeros"),
    ]);
    layout
}

/// Packs a layout with ipfs-car and serves it.
fn serve(layout: &Path, work: &Path) -> (String, Gateway) {
    let car = work.join("image.car");
    let root = ipfs_car_pack(layout, &car, false);
    (format!("ipfs://{root}"), Gateway::start(&[car], work))
}

fn unpack(reference: &str, gw: &Gateway, rootfs: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "unpack",
        reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn a_300_mib_file_of_zeros_from_umoci_unpacks_by_default_and_a_lowered_limit_names_its_flag() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_zero_file_image(work.path(), 300 * MIB);
    let manifest = layout_manifest(&layout);
    let compressed = manifest["layers"][0]["size"].as_u64().unwrap();
    assert!(
        compressed < MIB,
        "the layer is {compressed} bytes: no longer a ratio past 300"
    );
    let (reference, gw) = serve(&layout, work.path());

    let rootfs = work.path().join("root");
    let out = unpack(&reference, &gw, &rootfs, &[]);
    assert!(out.ok, "{}", out.stderr);
    let zeros = rootfs.join("data/zeros");
    assert_eq!(std::fs::metadata(&zeros).unwrap().len(), 300 * MIB);
    let mut f = std::fs::File::open(&zeros).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0));
    }

    let lowered = work.path().join("lowered");
    let out = unpack(&reference, &gw, &lowered, &["--max-layer-mib", "100"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "the layer inflates past 100 MiB, the limit on one layer's uncompressed size \
             (raise it with --max-layer-mib, or max_layer_mib in the configuration's [layers])"
        ),
        "{}",
        out.stderr
    );
    assert!(!lowered.exists());

    let out = unpack(&reference, &gw, &lowered, &["--max-image-mib", "200"]);
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("the image inflates past 200 MiB in all")
            && out.stderr.contains("--max-image-mib"),
        "{}",
        out.stderr
    );
    let out = unpack(&reference, &gw, &lowered, &["--max-layer-mib", "0"]);
    assert!(
        !out.ok && out.stderr.contains("--max-layer-mib must be 1..=1048576"),
        "{}",
        out.stderr
    );
}

/// A tar+gzip (or tar+zstd) layer of one file said to hold 10 GiB of zeros: its stream is
/// 10,240 compressed members of 1 MiB each, about 10 MB of gzip or 300 KB of zstd.
fn bomb(zstd: bool) -> BlobInfo {
    let mut h = tar::Header::new_ustar();
    h.set_path("bomb").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(10 << 30);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    let mut first = h.as_bytes().to_vec();
    first.resize(MIB as usize, 0);
    let zeros = vec![0u8; MIB as usize];
    let pack = |b: &[u8]| {
        if zstd {
            zstd::encode_all(b, 19).unwrap()
        } else {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            e.write_all(b).unwrap();
            e.finish().unwrap()
        }
    };
    let mut bytes = pack(&first);
    let member = pack(&zeros);
    for _ in 1..10 * 1024 {
        bytes.extend_from_slice(&member);
    }
    let media_type = if zstd {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        MT_LAYER_GZ
    };
    blob(media_type, bytes)
}

fn blob(media_type: &str, bytes: Vec<u8>) -> BlobInfo {
    BlobInfo {
        digest: format!("sha256:{}", sha256_hex(&bytes)),
        size: bytes.len() as u64,
        media_type: media_type.into(),
        bytes,
    }
}

/// An image of one layer; its diff_id is never reached.
fn image_of(layer: BlobInfo) -> Image {
    let config = json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]},
    });
    let config = blob(MT_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": config.descriptor(), "layers": [layer.descriptor()],
    });
    let manifest = blob(MT_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    Image {
        layers: vec![layer],
        config,
        manifest,
    }
}

/// The largest resident set of any child process waited for so far, in bytes.
fn children_max_rss() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    assert_eq!(rc, 0);
    ru.ru_maxrss as u64 * 1024
}

#[test]
fn ten_gib_gzip_and_zstd_bombs_stop_at_the_default_layer_limit() {
    for zstd in [false, true] {
        let img = image_of(bomb(zstd));
        let work = tempfile::tempdir().unwrap();
        let (reference, gw) = publish(&img, work.path());
        let rootfs = work.path().join("root");
        let started = std::time::Instant::now();
        let out = unpack(&reference, &gw, &rootfs, &[]);
        assert!(!out.ok, "zstd={zstd}");
        assert!(
            out.stderr.contains(&format!(
                "layer 0 ({}): the layer inflates past 4096 MiB, the limit on one layer's \
                 uncompressed size (raise it with --max-layer-mib",
                img.layers[0].digest
            )),
            "zstd={zstd}: {}",
            out.stderr
        );
        assert!(!rootfs.exists());
        let left: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".cidboot-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        eprintln!(
            "zstd={zstd}: refused in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    // Neither bomb's 4 GiB went to memory: the file's zeros were holes, the stream passed
    // through a few MiB.
    let rss = children_max_rss();
    assert!(rss < 1 << 30, "a child reached {} MiB", rss >> 20);
}

#[test]
fn the_configuration_lowers_the_entry_limit_for_run_and_names_its_key() {
    let img = image_from_tars(
        &[tar_of(&[
            ("a", b"1".to_vec()),
            ("b", b"2".to_vec()),
            ("c", b"3".to_vec()),
        ])],
        json!({"Entrypoint": ["/bin/probe"]}),
    );
    let r = run_image(&img, Some("[layers]\nmax_layer_entries = 2\n"), None, &[]);
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains(
            "more than 2 entries in one layer, the limit on a layer's entries (raise it with \
             --max-layer-entries, or max_layer_entries in the configuration's [layers])"
        ),
        "{}",
        r.stderr
    );
    // The flag wins over the key; the configuration refuses a value out of bounds.
    let r = run_image(
        &img,
        Some("[layers]\nmax_layer_entries = 2\n"),
        None,
        &["--max-layer-entries", "10"],
    );
    assert!(!r.stderr.contains("more than"), "{}", r.stderr);
    assert!(r.stderr.contains("executable"), "{}", r.stderr);
    let r = run_image(&img, Some("[layers]\nmax_image_mib = 0\n"), None, &[]);
    assert!(
        r.stderr
            .contains("[layers] max_image_mib must be 1..=1048576"),
        "{}",
        r.stderr
    );
}
