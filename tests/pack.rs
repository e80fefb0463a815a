//! `cidboot pack` must compute the same CID as the independent npm tool ipfs-car.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::path::Path;

use common::*;

fn both(dir: &Path, work: &Path) -> (String, String) {
    let theirs = ipfs_car_pack(dir, &work.join("theirs.car"), false);
    let ours_car = work.join("ours.car");
    let out = run(&[
        "pack",
        dir.to_str().unwrap(),
        "--car",
        ours_car.to_str().unwrap(),
        "--any-dir",
        "--json",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let ours = out.json()["cid"].as_str().unwrap().to_string();
    // ipfs-car itself can read our CAR back and agrees on the root.
    let o = std::process::Command::new(ipfs_car())
        .arg("roots")
        .arg(&ours_car)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), ours);
    (ours, theirs)
}

#[test]
fn matches_ipfs_car_on_an_oci_layout() {
    let work = tempfile::tempdir().unwrap();
    let img = image(
        "amd64",
        &[
            vec![("bin/x", noise(3_300_000, 5))],
            vec![("y", b"y".to_vec())],
        ],
    );
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let (ours, theirs) = both(&dir, work.path());
    assert_eq!(ours, theirs);
    // The CAR bytes are identical too.
    assert_eq!(
        std::fs::read(work.path().join("ours.car")).unwrap(),
        std::fs::read(work.path().join("theirs.car")).unwrap()
    );
}

#[test]
fn matches_ipfs_car_on_chunk_edges_empty_files_nesting_and_dotfiles() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("tree");
    std::fs::create_dir_all(dir.join("a/b/c")).unwrap();
    std::fs::create_dir_all(dir.join("empty/inner")).unwrap();
    std::fs::write(dir.join("exact"), noise(1 << 20, 1)).unwrap();
    std::fs::write(dir.join("one-more"), noise((1 << 20) + 1, 2)).unwrap();
    std::fs::write(dir.join("zero"), b"").unwrap();
    std::fs::write(dir.join(".hidden"), b"skipped").unwrap();
    std::fs::write(dir.join("a/b/c/deep"), b"deep").unwrap();
    std::fs::write(dir.join("a/Z-upper"), b"sorting is by bytes").unwrap();
    std::fs::write(dir.join("a/\u{e9}t\u{e9}"), b"utf-8 name").unwrap();
    let (ours, theirs) = both(&dir, work.path());
    assert_eq!(ours, theirs);
}

#[test]
fn refuses_what_it_cannot_pack_faithfully() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("links");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
    let car = work.path().join("x.car");
    let out = run(&[
        "pack",
        dir.to_str().unwrap(),
        "--car",
        car.to_str().unwrap(),
        "--any-dir",
    ]);
    assert!(
        !out.ok && out.stderr.contains("only regular files and directories"),
        "{}",
        out.stderr
    );
    assert!(!car.exists(), "a failed pack left a CAR");
}

/// A layout whose `blobs/sha256` holds the image and `extra` more blobs.
fn layout_with_blobs(dir: &Path, extra: usize) -> Image {
    let img = image("amd64", &[vec![("bin/x", noise(200_000, 9))]]);
    write_layout(dir, &[("amd64", &img)]);
    for i in 0..extra {
        let data = format!("blob {i}\n").into_bytes();
        std::fs::write(dir.join("blobs/sha256").join(sha256_hex(&data)), data).unwrap();
    }
    img
}

#[test]
fn shards_a_directory_of_more_than_1000_entries_as_ipfs_car_does() {
    let work = tempfile::tempdir().unwrap();
    // 1000 entries stay a plain directory; 1001 and more are HAMT-sharded. Names that share
    // their first hash byte go to sub-shards, and those sharing two bytes (6 pairs among these
    // 1001 names, 115 among 4000) to sub-shards of sub-shards.
    for (entries, name) in [(1000, "at"), (1001, "over"), (4000, "many")] {
        let dir = work.path().join(name);
        let img = layout_with_blobs(&dir, entries - 3);
        assert_eq!(
            std::fs::read_dir(dir.join("blobs/sha256")).unwrap().count(),
            entries
        );
        let sub = work.path().join(format!("{name}-cars"));
        std::fs::create_dir_all(&sub).unwrap();
        let (ours, theirs) = both(&dir, &sub);
        assert_eq!(ours, theirs, "{entries} entries");
        let car = sub.join("ours.car");
        assert_eq!(
            std::fs::read(&car).unwrap(),
            std::fs::read(sub.join("theirs.car")).unwrap(),
            "{entries} entries"
        );
        // And cidboot reads its blobs back through the HAMT, verified.
        let gw = Gateway::start(&[car], work.path());
        let r = format!("ipfs://{ours}");
        let out = run(&[
            "inspect",
            &r,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.ok, "{entries}: {}", out.stderr);
        assert_eq!(out.json()["manifest_digest"], img.manifest.digest);
        // The development gateway resolves paths through the shards too.
        let (status, body) = get(
            &gw,
            &format!(
                "/ipfs/{ours}/blobs/sha256/{}?format=car&dag-scope=entity",
                img.manifest.hex()
            ),
        );
        assert_eq!(status, 200, "{entries}");
        assert!(
            body.windows(img.manifest.bytes.len())
                .any(|w| w == img.manifest.bytes),
            "{entries}: the CAR holds the manifest"
        );
        let (status, _) = get(
            &gw,
            &format!("/ipfs/{ours}/blobs/sha256/{}?format=car", "0".repeat(64)),
        );
        assert_eq!(status, 404, "{entries}");
    }
}

/// A GET to a test gateway: status and body.
fn get(gw: &Gateway, path: &str) -> (u16, Vec<u8>) {
    use cidboot::transport::{
        http::{HttpClient, Origin, Timeouts},
        tls, TcpConnector,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = HttpClient::new(
            std::sync::Arc::new(TcpConnector),
            tls::client_config(Some(&gw.ca)).unwrap(),
            Timeouts::default(),
        );
        let (origin, _) = Origin::parse(&gw.url).unwrap();
        let r = client.get(&origin, path, &[]).await.unwrap();
        let status = r.status.as_u16();
        (
            status,
            r.bytes_limited(64 << 20).await.unwrap().unwrap().to_vec(),
        )
    })
}

/// The file type of `p` itself (not of what a symlink names).
fn kind_of(p: &Path) -> std::fs::FileType {
    std::fs::symlink_metadata(p).unwrap().file_type()
}

#[test]
fn without_car_only_the_cid_is_printed_and_nothing_is_written() {
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", &[vec![("bin/x", noise(1_500_000, 7))]]);
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let theirs = ipfs_car_pack(&dir, &work.path().join("theirs.car"), false);
    let cwd = work.path().join("cwd");
    let tmp = work.path().join("tmp");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let o = cidboot()
        .arg("pack")
        .arg(&dir)
        .current_dir(&cwd)
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), theirs);
    for d in [&cwd, &tmp, &dir] {
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let expected = usize::from(d == &dir) * 3; // the layout's own blobs, oci-layout, index.json
        assert_eq!(names.len(), expected, "{}: {names:?}", d.display());
    }
}

#[test]
fn a_device_a_fifo_or_a_symlink_is_written_in_place_never_replaced() {
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", &[vec![("bin/x", noise(300_000, 8))]]);
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let theirs_car = work.path().join("theirs.car");
    let theirs = ipfs_car_pack(&dir, &theirs_car, false);
    let want = std::fs::read(&theirs_car).unwrap();
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let pack_to = |target: &Path| {
        let o = run(&[
            "pack",
            dir.to_str().unwrap(),
            "--car",
            target.to_str().unwrap(),
        ]);
        assert!(o.ok, "{}: {}", target.display(), o.stderr);
        assert_eq!(o.stdout.trim(), theirs);
    };
    // A character device with /dev/null's numbers: it must still be one afterwards.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let null = std::fs::metadata("/dev/null").unwrap().rdev();
    let dev = out.join("null");
    let mk = std::process::Command::new("mknod")
        .arg(&dev)
        .arg("c")
        .arg(((null >> 8) & 0xfff).to_string())
        .arg((null & 0xff).to_string())
        .status()
        .unwrap();
    assert!(mk.success(), "mknod (the tests run as root)");
    assert!(kind_of(&dev).is_char_device());
    pack_to(&dev);
    assert!(kind_of(&dev).is_char_device(), "the device was replaced");
    assert_eq!(std::fs::metadata(&dev).unwrap().rdev(), null);
    // A FIFO: its reader gets the whole CAR, and it stays a FIFO.
    let fifo = out.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    pack_to(&fifo);
    assert_eq!(reader.join().unwrap(), want);
    assert!(kind_of(&fifo).is_fifo(), "the FIFO was replaced");
    // A symlink (as /dev/stdout is): written through, and still a symlink.
    let target = out.join("target.car");
    std::fs::write(&target, vec![b'x'; want.len() * 2]).unwrap();
    let link = out.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    pack_to(&link);
    assert!(kind_of(&link).is_symlink(), "the symlink was replaced");
    assert_eq!(
        std::fs::read(&target).unwrap(),
        want,
        "written whole, truncated"
    );
    // Nothing staged is left beside them.
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["fifo", "link", "null", "target.car"]);
}

/// The IPIP-0499 profiles `pack --profile` takes.
const PROFILES: [&str; 2] = ["unixfs-v1-2025", "unixfs-v0-2015"];

/// The root CID Helia's UnixFS importer (ipfs-unixfs-importer, which scripts/setup-tools.sh
/// installs) makes for `dir` under `profile`, dotfiles left out and empty directories kept.
fn helia_cid(dir: &Path, profile: &str) -> String {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let index = Path::new(&home).join(
        ".cache/cidboot/tools/unixfs-importer/node_modules/ipfs-unixfs-importer/dist/src/index.js",
    );
    assert!(
        index.exists(),
        "ipfs-unixfs-importer not found at {} (run scripts/setup-tools.sh)",
        index.display()
    );
    let o = std::process::Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/unixfs_import.mjs"))
        .arg(&index)
        .arg(dir)
        .arg(profile)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the importer failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// `cidboot pack --profile` into `car`: the CID it prints.
fn ours_as(dir: &Path, profile: &str, car: &Path) -> String {
    let out = run(&[
        "pack",
        dir.to_str().unwrap(),
        "--car",
        car.to_str().unwrap(),
        "--any-dir",
        "--profile",
        profile,
        "--json",
    ]);
    assert!(out.ok, "{profile}: {}", out.stderr);
    assert_eq!(out.json()["profile"], profile);
    let cid = out.json()["cid"].as_str().unwrap().to_string();
    // Without --car the CID is the same.
    let o = run(&[
        "pack",
        dir.to_str().unwrap(),
        "--any-dir",
        "--profile",
        profile,
    ]);
    assert!(o.ok, "{profile}: {}", o.stderr);
    assert_eq!(o.stdout.trim(), cid, "{profile}: without --car");
    cid
}

#[test]
fn profiles_match_helias_importer_on_a_layout_and_on_chunk_edges_widths_and_empty_directories() {
    let work = tempfile::tempdir().unwrap();
    let img = image(
        "amd64",
        &[
            vec![("bin/x", noise(3_300_000, 5))],
            vec![("y", b"y".to_vec())],
        ],
    );
    let layout = work.path().join("layout");
    write_layout(&layout, &[("amd64", &img)]);
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::create_dir_all(tree.join("empty/inner")).unwrap();
    std::fs::create_dir_all(tree.join("only-hidden")).unwrap();
    std::fs::write(tree.join("only-hidden/.x"), b"skipped").unwrap();
    std::fs::write(tree.join("exact"), noise(1 << 20, 1)).unwrap();
    std::fs::write(tree.join("one-more"), noise((1 << 20) + 1, 2)).unwrap();
    std::fs::write(tree.join("exact-256k"), noise(256 << 10, 3)).unwrap();
    std::fs::write(tree.join("one-more-256k"), noise((256 << 10) + 1, 4)).unwrap();
    // 175 chunks of 256 KiB: one more than a legacy file node links, so a second level.
    std::fs::write(tree.join("wide"), noise(174 * (256 << 10) + 1, 6)).unwrap();
    std::fs::write(tree.join("zero"), b"").unwrap();
    std::fs::write(tree.join(".hidden"), b"skipped").unwrap();
    std::fs::write(tree.join("a/b/c/deep"), b"deep").unwrap();
    std::fs::write(tree.join("a/Z-upper"), b"sorting is by bytes").unwrap();
    std::fs::write(tree.join("a/\u{e9}t\u{e9}"), b"utf-8 name").unwrap();
    let default_tree = {
        let o = run(&["pack", tree.to_str().unwrap(), "--any-dir"]);
        assert!(o.ok, "{}", o.stderr);
        o.stdout.trim().to_string()
    };
    let mut cars = Vec::new();
    for profile in PROFILES {
        for (name, dir) in [("layout", &layout), ("tree", &tree)] {
            let car = work.path().join(format!("{name}-{profile}.car"));
            let ours = ours_as(dir, profile, &car);
            assert_eq!(ours, helia_cid(dir, profile), "{name}, {profile}");
            assert_eq!(ours.starts_with("Qm"), profile == "unixfs-v0-2015");
            cars.push((profile, name, car, ours));
        }
    }
    // ipfs-car leaves empty directories out, the IPIP-0499 profiles keep them; for a layout
    // (no empty directory, fewer than 1001 blobs) ipfs-car's CID is unixfs-v1-2025's.
    assert_ne!(cars[1].3, default_tree);
    let default_layout = run(&["pack", layout.to_str().unwrap()]);
    assert_eq!(default_layout.stdout.trim(), cars[0].3);

    // The layouts read back through a gateway, verified, with every blob as it was written:
    // the legacy one is CIDv0 and dag-pb leaves throughout.
    let layout_cars: Vec<_> = cars.iter().filter(|c| c.1 == "layout").collect();
    let gw = Gateway::start(
        &layout_cars.iter().map(|c| c.2.clone()).collect::<Vec<_>>(),
        work.path(),
    );
    for (profile, _, _, cid) in layout_cars {
        let out_dir = work.path().join(format!("pulled-{profile}"));
        let r = format!("ipfs://{cid}");
        let out = run(&[
            "pull",
            &r,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--oci-layout",
            out_dir.to_str().unwrap(),
            "--json",
        ]);
        assert!(out.ok, "{profile}: {}", out.stderr);
        assert_eq!(
            out.json()["manifest_digest"],
            img.manifest.digest,
            "{profile}"
        );
        for blob in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            assert_eq!(
                std::fs::read(out_dir.join("blobs/sha256").join(blob.file_name())).unwrap(),
                std::fs::read(blob.path()).unwrap(),
                "{profile}: {:?}",
                blob.file_name()
            );
        }
    }
}

#[test]
fn profiles_give_ipip_0499s_empty_directory_cids() {
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (profile, want) in [
        (
            "unixfs-v1-2025",
            "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354",
        ),
        (
            "unixfs-v0-2015",
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn",
        ),
    ] {
        let car = work.path().join(format!("{profile}.car"));
        assert_eq!(ours_as(&empty, profile, &car), want);
    }
}

#[test]
fn profiles_shard_directories_where_helias_importer_does() {
    let work = tempfile::tempdir().unwrap();
    // 1001 blobs: sharded by ipfs-car (over 1000 entries), one node under both profiles (well
    // under 256 KiB). 4000: over 256 KiB both as a node and as names and CIDs, so sharded
    // under both, sub-shards of sub-shards included.
    for (entries, name) in [(1001, "over"), (4000, "many")] {
        let dir = work.path().join(name);
        layout_with_blobs(&dir, entries - 3);
        let default = {
            let o = run(&["pack", dir.to_str().unwrap()]);
            assert!(o.ok, "{}", o.stderr);
            o.stdout.trim().to_string()
        };
        for profile in PROFILES {
            let car = work.path().join(format!("{name}-{profile}.car"));
            let ours = ours_as(&dir, profile, &car);
            assert_eq!(
                ours,
                helia_cid(&dir, profile),
                "{entries} entries, {profile}"
            );
            if entries == 1001 {
                assert_ne!(ours, default, "{profile}: ipfs-car shards 1001 entries");
            }
        }
    }
}
