//! The test command's setup steps record success only after it: scripts/emulator-setup.sh run
//! against a stand-in apt whose update fails once, in a mount namespace whose apt sources
//! directory is a scratch one (the machine's apt is not touched), with a cache whose other
//! steps are done. A rerun after the failure must update again and get past it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// apt-get: every call logged; `update` fails while `update-fails` exists and otherwise
/// indexes the sources there are (whether the backports list is among them); `source` answers
/// as apt does without an indexed deb-src line, and fails the download otherwise (so that no
/// QEMU is built).
const APT_GET: &str = r#"#!/bin/bash
d=$(dirname "$(dirname "$0")")
echo "$*" >>"$d/apt-calls"
for a; do case $a in
update)
  if [ -e "$d/update-fails" ]; then echo "E: The repository is not signed." >&2; exit 100; fi
  if grep -qs '^deb-src .*bookworm-backports' "$d/sources/"*.list; then touch "$d/indexed"; else rm -f "$d/indexed"; fi
  exit 0 ;;
source)
  if [ ! -e "$d/indexed" ]; then echo "E: You must put some 'deb-src' URIs in your sources.list" >&2; exit 100; fi
  echo "E: Failed to fetch qemu_10.0.2.orig.tar.xz (stand-in)" >&2; exit 100 ;;
esac; done
exit 0
"#;

fn script(path: &Path, body: &str) {
    std::fs::write(path, body).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Run {
    ok: bool,
    stderr: String,
    apt_calls: Vec<String>,
}

/// Runs emulator-setup.sh with the stand-ins, the scratch apt sources and cache of `d`.
fn setup(d: &Path) -> Run {
    let _ = std::fs::remove_file(d.join("apt-calls"));
    let repo = env!("CARGO_MANIFEST_DIR");
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(
            "mount --bind \"$D/sources\" /etc/apt/sources.list.d && exec bash \"$REPO/scripts/emulator-setup.sh\"",
        )
        .env("D", d)
        .env("REPO", repo)
        .env("CIDBOOT_CACHE", d.join("cache"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                d.join("bin").display(),
                std::env::var("PATH").unwrap()
            ),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let apt_calls = std::fs::read_to_string(d.join("apt-calls"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    Run {
        ok: o.status.success(),
        stderr,
        apt_calls,
    }
}

#[test]
fn a_failed_apt_update_is_done_again_by_the_next_run() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, for a mount namespace over /etc/apt/sources.list.d"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in [
        "bin",
        "sources",
        "cache/emulator/firmware",
        "cache/emulator/kernel/modules",
        "cache/emulator/bin",
    ] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    script(&d.join("bin/apt-get"), APT_GET);
    // Every package wholly installed, nothing for dpkg to finish.
    script(&d.join("bin/dpkg-query"), "#!/bin/sh\nprintf 'ii '\n");
    script(&d.join("bin/dpkg"), "#!/bin/sh\nexit 0\n");
    // Every step but QEMU's done.
    let e = d.join("cache/emulator");
    for f in [
        ".firmware",
        "firmware/bios-microvm.bin",
        "firmware/linuxboot_dma.bin",
        ".kernel",
        "kernel/vmlinuz",
        "kernel/modules/nsm.ko",
    ] {
        std::fs::write(e.join(f), b"x").unwrap();
    }
    for b in ["bin/eif_build", "bin/vhost-device-vsock"] {
        script(&e.join(b), "#!/bin/sh\n");
    }
    let list = d.join("sources/cidboot-bookworm-backports.list");

    // The update fails: the list it was for is taken away again.
    std::fs::write(d.join("update-fails"), b"").unwrap();
    let r = setup(d);
    assert!(!r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("run this again to retry"), "{}", r.stderr);
    assert!(!list.exists(), "the list stayed after its update failed");
    assert!(!e.join(".qemu-10.0.2").exists());

    // The mirror works again: the next run writes the list, updates, and gets to the download.
    std::fs::remove_file(d.join("update-fails")).unwrap();
    let r = setup(d);
    assert!(!r.ok);
    assert!(
        r.apt_calls.iter().any(|c| c.contains("update")),
        "{:?}",
        r.apt_calls
    );
    assert!(r.stderr.contains("Failed to fetch"), "{}", r.stderr);
    assert!(!r.stderr.contains("deb-src"), "{}", r.stderr);
    assert!(std::fs::read_to_string(&list)
        .unwrap()
        .contains("deb-src http://deb.debian.org/debian bookworm-backports main"));

    // What an earlier version left: the list written, its update failed, never indexed. The
    // run updates before it uses the list.
    std::fs::remove_file(d.join("indexed")).unwrap();
    let r = setup(d);
    assert!(
        r.apt_calls.iter().any(|c| c.contains("update")),
        "{:?}",
        r.apt_calls
    );
    assert!(!r.stderr.contains("deb-src"), "{}", r.stderr);

    // A machine whose steps are all done is not touched: no apt at all.
    script(&e.join("qemu-system-x86_64"), "#!/bin/sh\n");
    std::fs::write(e.join(".qemu-10.0.2"), b"").unwrap();
    let r = setup(d);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.apt_calls.is_empty(), "{:?}", r.apt_calls);

    // A stamp whose files are gone is not believed: the firmware step runs again.
    std::fs::remove_file(e.join("firmware/linuxboot_dma.bin")).unwrap();
    let r = setup(d);
    assert!(!r.ok);
    assert!(
        r.apt_calls.iter().any(|c| c.contains("download seabios")),
        "{:?}",
        r.apt_calls
    );
    assert!(!e.join(".firmware").exists());
}
