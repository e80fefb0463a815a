//! The sandbox around helpers and the workload: each test is an escape a hostile image or a
//! root workload tried, checked from outside the root.
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

/// A path outside every root, unique to this test run.
fn outside(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("cidboot-escape-{tag}-{}", fastrand::u64(..)))
}

/// Docker's default capability set without CAP_MKNOD and CAP_NET_RAW, as /proc/self/status
/// shows it.
const DEFAULT_CAPS: &str = "00000000a00405fb";

fn image_with_extra(extra: Vec<u8>, config: serde_json::Value) -> Image {
    image_from_tars(&[base_layer(), extra], config)
}

#[test]
fn a_root_workload_cannot_write_through_proc_pid_root() {
    let target = outside("proc-root");
    let img = probe_image(json!({
        "Entrypoint": ["/bin/probe"],
        "Cmd": ["escape-proc", target.to_str().unwrap()],
    }));
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // Its own PID namespace: the sandbox's PID 1 and the probe, nothing of the machine.
    assert_eq!(r.line("probe: pids="), "1,2");
    assert_eq!(r.line("probe: PPid:"), "1");
    assert_eq!(r.lines("probe: escape ").len(), 2, "{}", r.stdout);
    assert!(!target.exists(), "the workload wrote {}", target.display());
}

#[test]
fn a_working_dir_through_proc_is_refused_and_nothing_runs() {
    let name = format!("cidboot-escape-cwd-{}", fastrand::u64(..));
    let img = probe_image(json!({
        "Entrypoint": ["/bin/probe"], "Cmd": ["write", format!("tmp/{name}")],
        "WorkingDir": "/proc/2/root", "User": "app",
    }));
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr
            .contains("WorkingDir \"/proc/2/root\" is inside /proc, /sys or /dev"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("probe:"), "the workload ran");
    assert!(!Path::new("/tmp").join(&name).exists());
}

#[test]
fn a_working_dir_symlinked_through_proc_stays_inside_the_root() {
    // /work -> /proc/1/root: in the sandbox, PID 1 is the sandbox's own, rooted in the image.
    // (The image ships proc/1/root as directories so that the link is not dangling.)
    let mut entries = vec![TarEntry::Symlink {
        path: "work",
        target: "/proc/1/root",
    }];
    for d in ["proc", "proc/1", "proc/1/root"] {
        entries.push(TarEntry::Dir {
            path: d,
            mode: 0o755,
            uid: 0,
        });
    }
    let extra = tar_entries(&entries);
    let name = format!("cidboot-escape-link-{}", fastrand::u64(..));
    let img = image_with_extra(
        extra,
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["write", &name], "WorkingDir": "/work"}),
    );
    let keep = private_tempdir();
    let rootfs = keep.path().join("root");
    let r = run_image(&img, None, None, &["--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // The kernel names the directory the link led to: the sandbox's own root.
    assert_eq!(r.line("probe: cwd="), "/");
    assert!(!Path::new("/").join(&name).exists(), "written on the host");
    assert!(rootfs.join(&name).exists(), "not written inside the root");
}

fn hostile_nodes() -> Vec<u8> {
    tar_entries(&[
        TarEntry::Dir {
            path: "opt",
            mode: 0o755,
            uid: 0,
        },
        // The NSM's numbers outside /dev, a device anyone could use, and a hard link to the
        // image's own /dev/nsm (which cidboot removes; the link would survive).
        TarEntry::CharDev {
            path: "opt/nsm",
            major: 10,
            minor: 144,
        },
        TarEntry::CharDev {
            path: "opt/null",
            major: 1,
            minor: 3,
        },
        TarEntry::Hardlink {
            path: "opt/nsm-link",
            target: "dev/nsm",
        },
        TarEntry::Dir {
            path: "tmp",
            mode: 0o1777,
            uid: 0,
        },
    ])
}

#[test]
fn a_root_workload_has_no_device_mknod_mount_or_extra_capability() {
    let img = image_with_extra(
        hostile_nodes(),
        json!({"Entrypoint": ["/bin/probe"], "Cmd": [
            "open", "/opt/nsm", "open", "/opt/null", "open", "/opt/nsm-link", "open", "/dev/null",
            "mknod", "/tmp/nsm", "10", "144", "mknod", "/tmp/null", "1", "3",
            "mount-devtmpfs", "/tmp/devtmpfs",
        ]}),
    );
    let keep = private_tempdir();
    let rootfs = keep.path().join("root");
    let r = run_image(&img, None, None, &["--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    // The root is mounted nodev: the image's nodes do not open, whatever their mode.
    assert_eq!(r.line("probe: open /opt/nsm "), "EACCES");
    assert_eq!(r.line("probe: open /opt/null "), "EACCES");
    assert_eq!(r.line("probe: open /opt/nsm-link "), "EACCES");
    assert_eq!(r.line("probe: open /dev/null "), "ok");
    assert_eq!(r.line("probe: nsm="), "absent");
    // No CAP_MKNOD, no CAP_SYS_ADMIN, and seccomp refuses mount anyway.
    assert_eq!(r.line("probe: mknod /tmp/nsm "), "EPERM");
    assert_eq!(r.line("probe: mknod /tmp/null "), "EPERM");
    assert_eq!(r.line("probe: mount-devtmpfs /tmp/devtmpfs "), "EPERM");
    assert_eq!(r.line("probe: CapEff:"), DEFAULT_CAPS);
    assert_eq!(r.line("probe: CapPrm:"), DEFAULT_CAPS);
    assert_eq!(r.line("probe: CapBnd:"), DEFAULT_CAPS);
    assert_eq!(r.line("probe: CapInh:"), "0000000000000000");
    assert_eq!(r.line("probe: NoNewPrivs:"), "1");
    assert_eq!(r.line("probe: Seccomp:"), "2");
    assert!(!rootfs.join("tmp/nsm").exists() && !rootfs.join("tmp/null").exists());
}

#[test]
fn a_non_root_workload_has_no_capabilities_and_no_devices() {
    let img = image_with_extra(
        hostile_nodes(),
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["open", "/opt/null"], "User": "app"}),
    );
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.line("probe: open /opt/null "), "EACCES");
    assert_eq!(r.line("probe: CapEff:"), "0000000000000000");
    assert_eq!(r.line("probe: CapPrm:"), "0000000000000000");
    assert_eq!(r.line("probe: CapBnd:"), DEFAULT_CAPS);
}

#[test]
fn vsock_is_refused_unless_the_configuration_allows_it() {
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"], "Cmd": ["vsock"]}));
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.line("probe: vsock "), "EPERM");
    let r = run_image(&img, Some("[workload]\nallow_vsock = true\n"), None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_ne!(r.line("probe: vsock "), "EPERM", "the opt-in did not apply");
}

#[test]
fn capability_and_setuid_opt_ins_come_only_from_the_configuration() {
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"]}));
    let cfg =
        "[workload]\ncapabilities = [\"SYS_PTRACE\", \"CAP_NET_ADMIN\"]\nallow_setuid = true\n";
    let r = run_image(&img, Some(cfg), None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let want = 0xa004_05fb_u64 | (1 << 19) | (1 << 12);
    assert_eq!(r.line("probe: CapEff:"), format!("{want:016x}"));
    assert_eq!(r.line("probe: NoNewPrivs:"), "0");
    assert_eq!(r.line("probe: Seccomp:"), "2");
    let r = run_image(
        &img,
        Some("[workload]\ncapabilities = [\"FLY\"]\n"),
        None,
        &[],
    );
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr.contains("unknown capability \"FLY\""),
        "{}",
        r.stderr
    );
}

/// The image's impostor: the probe, which announces itself when run.
fn impostor_layer(entries: Vec<TarEntry<'_>>) -> Vec<u8> {
    let mut all = vec![
        TarEntry::Dir {
            path: "fake",
            mode: 0o755,
            uid: 0,
        },
        TarEntry::Dir {
            path: "fake/bin",
            mode: 0o755,
            uid: 0,
        },
        TarEntry::File {
            path: "fake/bin/fake-kms-client",
            data: std::fs::read(sample_bin("probe")).unwrap(),
            mode: 0o755,
        },
    ];
    all.extend(entries);
    tar_entries(&all)
}

fn helper_config(pins: &str) -> String {
    format!("{pins}\n[[prestart]]\nhelper = \"fake-kms-client\"\nargs = [\"/run/kms.env\"]\n")
}

#[test]
fn an_image_whose_helper_directory_is_a_symlink_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let (dir, pins) = helper_dir(work.path(), &["fake-kms-client"]);
    for (entries, named) in [
        (
            vec![TarEntry::Symlink {
                path: "eigen",
                target: "/proc/self/cwd/fake",
            }],
            "/eigen",
        ),
        (
            vec![
                TarEntry::Dir {
                    path: "eigen",
                    mode: 0o755,
                    uid: 0,
                },
                TarEntry::Symlink {
                    path: "eigen/bin",
                    target: "/proc/self/root/fake/bin",
                },
            ],
            "/eigen/bin",
        ),
    ] {
        let img = image_with_extra(
            impostor_layer(entries),
            json!({"Entrypoint": ["/bin/probe"]}),
        );
        let r = run_image(&img, Some(&helper_config(&pins)), Some(&dir), &[]);
        assert_eq!(r.code, Some(125), "{}", r.stdout);
        assert!(
            r.stderr
                .contains(&format!("{named} is a symlink in the image")),
            "{named}: {}",
            r.stderr
        );
        assert!(
            !r.stdout.contains("probe:"),
            "the impostor or the workload ran"
        );
        assert!(!r.stdout.contains("fake-kms-client:"));
    }
}

#[test]
fn the_helper_that_runs_is_the_one_measured() {
    let work = tempfile::tempdir().unwrap();
    let (dir, pins) = helper_dir(work.path(), &["fake-kms-client"]);
    // The image puts its impostor where the helper goes, as a symlink and as a file.
    let img = image_with_extra(
        impostor_layer(vec![
            TarEntry::Dir {
                path: "eigen",
                mode: 0o755,
                uid: 0,
            },
            TarEntry::Dir {
                path: "eigen/bin",
                mode: 0o755,
                uid: 0,
            },
            TarEntry::Symlink {
                path: "eigen/bin/fake-kms-client",
                target: "/fake/bin/fake-kms-client",
            },
        ]),
        json!({"Entrypoint": ["/bin/probe"]}),
    );
    let r = run_image(&img, Some(&helper_config(&pins)), Some(&dir), &["--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("fake-kms-client: wrote /run/kms.env"));
    assert_eq!(
        r.lines("probe: uid=").len(),
        1,
        "the impostor ran: {}",
        r.stdout
    );
    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    let genuine = sha256_hex(&std::fs::read(sample_bin("fake-kms-client")).unwrap());
    let measured: Vec<&str> = report["measurements"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "helper")
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(measured, [format!("fake-kms-client sha256:{genuine}")]);
}

#[test]
fn a_root_workload_cannot_reach_the_files_behind_cidboots_own_stdio() {
    // cidboot's stdout and stderr are a host file owned by an ordinary user; its stdin is the
    // host's /dev/null. The workload gets pipes, so reopening its descriptors through
    // /proc/self/fd reaches nothing of the host.
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"], "Cmd": ["reopen-stdio"]}));
    let work = tempfile::tempdir().unwrap();
    let (reference, gw) = publish(&img, work.path());
    let out = work.path().join("out.log");
    let file = std::fs::File::create(&out).unwrap();
    std::os::unix::fs::chown(&out, Some(1000), Some(1000)).unwrap();
    let null_before = std::fs::metadata("/dev/null").unwrap();
    let st = cidboot()
        .args(["run", &reference, "--gateway", &gw.url, "--ca"])
        .arg(&gw.ca)
        .args(["--attestation-listen", "127.0.0.1:0"])
        .env("CIDBOOT_LOG", "warn")
        .stdin(std::fs::File::open("/dev/null").unwrap())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(st.success(), "{text}");
    // The probe's output arrived through cidboot (so the pipes were copied out).
    assert_eq!(text.matches("probe: reopen-stdio").count(), 3, "{text}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{text}");
    assert_eq!(meta.permissions().mode() & 0o7000, 0, "{text}");
    let null_after = std::fs::metadata("/dev/null").unwrap();
    assert_eq!(null_after.mode(), null_before.mode());
    assert_eq!(
        (null_after.uid(), null_after.gid()),
        (null_before.uid(), null_before.gid())
    );
}

#[test]
fn a_dangling_working_dir_symlink_is_refused() {
    let extra = tar_entries(&[TarEntry::Symlink {
        path: "work",
        target: "/proc/self/root/nowhere",
    }]);
    let img = image_with_extra(
        extra,
        json!({"Entrypoint": ["/bin/probe"], "WorkingDir": "/work"}),
    );
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(125));
    assert!(
        r.stderr
            .contains("/work: a symlink in the path leads outside the root or to nothing"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("probe:"));
}

#[test]
fn a_sandbox_failure_is_a_launch_error_not_an_exit_code() {
    // An Entrypoint that is not an executable the kernel can run.
    let extra = tar_entries(&[TarEntry::File {
        path: "bin/not-elf",
        data: b"\x7fELF-but-not-really".to_vec(),
        mode: 0o755,
    }]);
    let img = image_with_extra(extra, json!({"Entrypoint": ["/bin/not-elf"]}));
    let r = run_image(&img, None, None, &[]);
    // The kernel's ENOEXEC, carried over the sync pipe: the entrypoint cannot be executed.
    assert_eq!(r.code, Some(126), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("\"/bin/not-elf\" could not be executed: exec \"/bin/not-elf\""),
        "{}",
        r.stderr
    );
}
