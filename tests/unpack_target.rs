//! `cidboot unpack`'s target: unpacked rootless by a user without root, filled in place when
//! it is an empty directory or a mount point (and emptied again on failure), and refused up
//! front when it cannot work.
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
use std::process::Command;

use common::*;
use serde_json::json;

const NOBODY: u32 = 65534;

/// The probe image's base (files of uid 1000, a device node) and a read-only directory that
/// the next layer writes into.
fn image_for_users() -> Image {
    image_from_tars(
        &[
            base_layer(),
            tar_entries(&[
                TarEntry::Dir {
                    path: "ro",
                    mode: 0o555,
                    uid: 0,
                },
                TarEntry::File {
                    path: "ro/a",
                    data: b"a".to_vec(),
                    mode: 0o444,
                },
            ]),
            tar_entries(&[TarEntry::File {
                path: "ro/b",
                data: b"b".to_vec(),
                mode: 0o644,
            }]),
        ],
        json!({"Entrypoint": ["/bin/probe"]}),
    )
}

/// `cidboot ARGS` as `nobody`, with no supplementary groups.
fn run_as_nobody(args: &[&str]) -> Out {
    let o = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--",
        ])
        .arg(env!("CARGO_BIN_EXE_cidboot"))
        .args(args)
        .env("HOME", "/nonexistent")
        .output()
        .unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

/// A directory `nobody` owns, holding a copy of the gateway's CA it can read.
fn nobodys_dir(work: &Path, gw: &Gateway) -> (PathBuf, PathBuf) {
    let dir = work.join("nobody");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    // The test's temporary directory is root's only: open it to others' search.
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o711)).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::copy(&gw.ca, &ca).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, ca)
}

#[test]
fn a_user_without_root_unpacks_rootless_and_is_told_so() {
    let img = image_for_users();
    let work = tempfile::tempdir().unwrap();
    let (reference, gw) = publish(&img, work.path());
    let (dir, ca) = nobodys_dir(work.path(), &gw);
    let rootfs = dir.join("root");
    let args = [
        "unpack",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        ca.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
    ];
    let out = run_as_nobody(&args);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "rootless (not run as root, as umoci unpack --rootless): ownership not applied, \
             everything belongs to uid 65534; 1 device node(s) left out"
        ),
        "{}",
        out.stdout
    );
    let m = |rel: &str| std::fs::symlink_metadata(rootfs.join(rel)).unwrap();
    assert_eq!(m("home/app").uid(), NOBODY, "no ownership applied");
    assert_eq!(m("bin/probe").uid(), NOBODY);
    assert!(
        std::fs::symlink_metadata(rootfs.join("dev/nsm")).is_err(),
        "the device node is left out"
    );
    assert_eq!(std::fs::read(rootfs.join("ro/a")).unwrap(), b"a");
    assert_eq!(std::fs::read(rootfs.join("ro/b")).unwrap(), b"b");
    assert_eq!(m("ro").mode() & 0o777, 0o755, "the owner keeps rwx");
    assert_eq!(m(".").mode() & 0o7777, 0o700);
    // The user can remove what it unpacked.
    let o = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg("rm")
        .arg("-rf")
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The JSON report says it too.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = run_as_nobody(&json_args);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json()["rootless"], true);
    assert_eq!(out.json()["devices_left_out"], 1);
}

/// A tmpfs mounted at `path` for the test's life.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(path: &Path, options: &str) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Mount(path.to_path_buf())
    }
    fn is_mounted(&self) -> bool {
        let here = std::fs::metadata(&self.0).unwrap().dev();
        here != std::fs::metadata(self.0.parent().unwrap()).unwrap().dev()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_mount_point_is_filled_in_place_and_emptied_again_on_failure() {
    let img = image_from_tars(
        &[tar_entries(&[TarEntry::File {
            path: "hello",
            data: b"hi".to_vec(),
            mode: 0o644,
        }])],
        json!({}),
    );
    let work = tempfile::tempdir().unwrap();
    let (reference, gw) = publish(&img, work.path());
    let unpack = |reference: &str, gw: &Gateway, rootfs: &Path| {
        run(&[
            "unpack",
            reference,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--rootfs",
            rootfs.to_str().unwrap(),
        ])
    };
    let mnt = Mount::tmpfs(&work.path().join("mnt"), "mode=0755");
    let out = unpack(&reference, &gw, &mnt.0);
    assert!(out.ok, "{}", out.stderr);
    assert!(mnt.is_mounted());
    assert_eq!(std::fs::read(mnt.0.join("hello")).unwrap(), b"hi");
    assert_eq!(std::fs::metadata(&mnt.0).unwrap().mode() & 0o7777, 0o700);
    let names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "left beside it: {names:?}");

    // A layer refused after the first was applied: the mount point is empty again, still
    // mounted, with its own mode back.
    let bad = image_from_tars(
        &[
            tar_of(&[("first", noise(1 << 20, 1))]),
            tar_entries(&[TarEntry::Hardlink {
                path: "x",
                target: "../../etc/passwd",
            }]),
        ],
        json!({}),
    );
    let (bad_ref, bad_gw) = publish(&bad, work.path());
    let mnt2 = Mount::tmpfs(&work.path().join("mnt2"), "mode=0755");
    let out = unpack(&bad_ref, &bad_gw, &mnt2.0);
    assert!(
        !out.ok && out.stderr.contains("layer 1 ("),
        "{}",
        out.stderr
    );
    assert!(mnt2.is_mounted());
    assert_eq!(std::fs::read_dir(&mnt2.0).unwrap().count(), 0);
    assert_eq!(std::fs::metadata(&mnt2.0).unwrap().mode() & 0o7777, 0o755);
}

#[test]
fn a_target_that_cannot_work_is_refused_before_anything_is_fetched() {
    // No gateway listens here: anything fetched would fail with a connection error instead.
    let nowhere = "http://127.0.0.1:9";
    let reference = "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi";
    let work = tempfile::tempdir().unwrap();
    let unpack = |rootfs: &Path| {
        run(&[
            "unpack",
            reference,
            "--gateway",
            nowhere,
            "--rootfs",
            rootfs.to_str().unwrap(),
        ])
    };
    let file = work.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let full = work.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("mine"), b"keep").unwrap();
    let ro = Mount::tmpfs(&work.path().join("ro"), "ro,mode=0755");
    let ro_parent = Mount::tmpfs(&work.path().join("ro-parent"), "ro,mode=0755");
    for (rootfs, want) in [
        (file.clone(), "exists and is not a directory".to_string()),
        (full.clone(), "exists and is not empty".into()),
        (
            ro.0.clone(),
            format!(
                "cannot be written: {} is on a read-only file system",
                ro.0.display()
            ),
        ),
        (
            ro_parent.0.join("new"),
            format!(
                "cannot be written: {} is on a read-only file system",
                ro_parent.0.display()
            ),
        ),
    ] {
        let out = unpack(&rootfs);
        assert!(
            !out.ok
                && out
                    .stderr
                    .contains(&format!("--rootfs {}", rootfs.display())),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(&want), "{want}: {}", out.stderr);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    assert_eq!(std::fs::read(full.join("mine")).unwrap(), b"keep");
    // A directory this user may not write in.
    let closed = work.path().join("closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let target = closed.join("root");
    let out = run_as_nobody(&[
        "unpack",
        reference,
        "--gateway",
        nowhere,
        "--rootfs",
        target.to_str().unwrap(),
    ]);
    assert!(
        !out.ok
            && out.stderr.contains(&format!(
                "cannot be written: {} does not let this user (uid 65534) create entries",
                closed.display()
            )),
        "{}",
        out.stderr
    );
}

#[test]
fn run_refuses_a_read_only_rootfs_before_anything_is_fetched() {
    let work = tempfile::tempdir().unwrap();
    // run keeps a root only where no other user can reach it.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ro = Mount::tmpfs(&work.path().join("ro"), "ro,mode=0700");
    let out = run(&[
        "run",
        "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "--gateway",
        "http://127.0.0.1:9",
        "--rootfs",
        ro.0.to_str().unwrap(),
    ]);
    assert!(
        !out.ok
            && out.stderr.contains(&format!(
                "--rootfs {} cannot be written: {} is on a read-only file system",
                ro.0.display(),
                ro.0.display()
            )),
        "{}",
        out.stderr
    );
}
