//! `cidboot run`: the whole boot path on this machine, with the workload chrooted.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/probe\napp:x:1000:1000:app:/home/app:/bin/probe\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app\naudio:x:29:someone,app\n";

fn base_layer() -> Vec<u8> {
    tar_entries(&[
        TarEntry::Dir {
            path: "bin",
            mode: 0o755,
            uid: 0,
        },
        TarEntry::File {
            path: "bin/probe",
            data: std::fs::read(sample_bin("probe")).unwrap(),
            mode: 0o755,
        },
        TarEntry::Dir {
            path: "etc",
            mode: 0o755,
            uid: 0,
        },
        TarEntry::File {
            path: "etc/passwd",
            data: PASSWD.into(),
            mode: 0o644,
        },
        TarEntry::File {
            path: "etc/group",
            data: GROUP.into(),
            mode: 0o644,
        },
        TarEntry::Dir {
            path: "home/app",
            mode: 0o750,
            uid: 1000,
        },
        // A hostile image shipping the NSM device node.
        TarEntry::Dir {
            path: "dev",
            mode: 0o755,
            uid: 0,
        },
        TarEntry::CharDev {
            path: "dev/nsm",
            major: 10,
            minor: 144,
        },
    ])
}

fn probe_image(config: serde_json::Value) -> Image {
    image_from_tars(&[base_layer()], config)
}

struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn lines(&self, prefix: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(String::from)
            .collect()
    }
    fn line(&self, prefix: &str) -> String {
        self.lines(prefix)
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("no {prefix:?} in {}\n{}", self.stdout, self.stderr))
    }
}

fn run_image(img: &Image, config: Option<&str>, helpers: Option<&Path>, extra: &[&str]) -> Ran {
    let work = tempfile::tempdir().unwrap();
    let (reference, gw) = publish(img, work.path());
    let mut c = cidboot();
    c.args([
        "run",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
    ]);
    if let Some(cfg) = config {
        let p = work.path().join("cidboot.toml");
        std::fs::write(&p, cfg).unwrap();
        c.arg("--config").arg(p);
    }
    if let Some(h) = helpers {
        c.arg("--helpers-dir").arg(h);
    }
    // Tests run in parallel: each workload's attestation API gets its own port.
    c.args(["--attestation-listen", "127.0.0.1:0"]);
    c.args(extra);
    let o = c.env("CIDBOOT_LOG", "info").output().unwrap();
    Ran {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

#[test]
fn runs_the_image_config_as_its_user_and_exits_with_its_status() {
    let img = probe_image(json!({
        "Entrypoint": ["probe"], "Cmd": ["exit", "7"],
        "Env": ["PATH=/bin", "A=1", "B=2"], "WorkingDir": "/home/app", "User": "app",
    }));
    let r = run_image(&img, None, None, &["--json"]);
    assert_eq!(r.code, Some(7), "{}", r.stderr);
    assert_eq!(r.line("probe: uid="), "1000 1000 1000 1000");
    assert_eq!(r.line("probe: gid="), "1000 1000 1000 1000");
    assert_eq!(r.line("probe: groups="), "10 29 1000");
    assert_eq!(r.line("probe: cwd="), "/home/app");
    assert_eq!(r.line("probe: args="), "exit 7");
    let env = r.lines("probe: env ");
    for want in ["A=1", "B=2", "HOME=/home/app", "PATH=/bin"] {
        assert!(
            env.contains(&want.to_string()),
            "{want} missing from {env:?}"
        );
    }
    assert_eq!(
        r.line("probe: nsm="),
        "absent",
        "the image's /dev/nsm must not reach the workload"
    );
    assert_eq!(r.line("probe: devnull="), "true");
    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["exit_code"], 7);
    assert_eq!(report["manifest_digest"], img.manifest.digest);
    assert_eq!(report["pcr16"].as_str().unwrap().len(), 96);
}

#[test]
fn configuration_overrides_and_merges() {
    let img = probe_image(
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["exit", "9"], "Env": ["A=1", "B=2"]}),
    );
    let cfg = r#"
[workload]
cmd = ["exit", "0", "extra"]
env = ["B=3", "C=4"]
user = "1000:10"
working_dir = "/created/on/demand"
"#;
    let r = run_image(&img, Some(cfg), None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.line("probe: args="), "exit 0 extra");
    let env = r.lines("probe: env ");
    for want in ["A=1", "B=3", "C=4"] {
        assert!(
            env.contains(&want.to_string()),
            "{want} missing from {env:?}"
        );
    }
    assert_eq!(r.line("probe: uid="), "1000 1000 1000 1000");
    assert_eq!(r.line("probe: gid="), "10 10 10 10");
    assert_eq!(r.line("probe: cwd="), "/created/on/demand");
    // A new entrypoint drops the image's Cmd.
    let r = run_image(
        &img,
        Some("[workload]\nentrypoint = [\"/bin/probe\"]\n"),
        None,
        &[],
    );
    assert_eq!((r.code, r.line("probe: args=")), (Some(0), String::new()));
}

#[test]
fn a_missing_user_or_executable_fails_before_anything_runs() {
    for (config, want) in [
        (
            json!({"Entrypoint": ["/bin/probe"], "User": "ghost"}),
            "no user \"ghost\" in the image's /etc/passwd",
        ),
        (
            json!({"Entrypoint": ["/bin/probe"], "User": "app:nogroup"}),
            "no group \"nogroup\"",
        ),
        (
            json!({"Entrypoint": ["missing"], "Env": ["PATH=/bin:/usr/bin"]}),
            "executable \"missing\" not found in the image (PATH=/bin:/usr/bin)",
        ),
        (json!({"Env": ["A=1"]}), "defines no command"),
    ] {
        let r = run_image(&probe_image(config), None, None, &[]);
        assert_eq!(r.code, Some(1));
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert!(!r.stdout.contains("probe:"), "the workload ran");
    }
}

fn helper_dir(work: &Path, names: &[&str]) -> (std::path::PathBuf, String) {
    let dir = work.join("eigen-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let mut pins = String::from("[helpers]\ndir = \"/eigen/bin\"\n[helpers.pins]\n");
    for n in names {
        let bytes = std::fs::read(sample_bin(n)).unwrap();
        std::fs::write(dir.join(n), &bytes).unwrap();
        pins.push_str(&format!("{n} = \"sha256:{}\"\n", sha256_hex(&bytes)));
    }
    (dir, pins)
}

#[test]
fn helper_chain_runs_in_order_and_feeds_the_workload() {
    let work = tempfile::tempdir().unwrap();
    let (dir, pins) = helper_dir(work.path(), &["fake-kms-client", "fake-tls-client"]);
    let cfg = format!(
        "{pins}\n[[prestart]]\nhelper = \"fake-kms-client\"\nargs = [\"/run/kms.env\"]\nenv_file = \"/run/kms.env\"\n\n[[prestart]]\nhelper = \"fake-tls-client\"\n"
    );
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"], "User": "app"}));
    let r = run_image(&img, Some(&cfg), Some(&dir), &["--json"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let kms = r
        .stdout
        .find("fake-kms-client: wrote")
        .expect("kms-client ran");
    let tls = r
        .stdout
        .find("fake-tls-client: have KMS secret")
        .expect("tls-client ran after it");
    let app = r.stdout.find("probe: uid").unwrap();
    assert!(kms < tls && tls < app);
    let env = r.lines("probe: env ");
    assert!(
        env.contains(&"KMS_SECRET=opensesame".to_string())
            && env.contains(&"KMS_KEY_ID=key-1".to_string()),
        "{env:?}"
    );
    assert_eq!(r.line("probe: helpers="), "fake-kms-client,fake-tls-client");
    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    let helpers: Vec<&str> = report["measurements"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "helper")
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(helpers.len(), 2, "each helper is measured");
}

#[test]
fn a_helper_that_does_not_match_its_pin_refuses_to_start() {
    let work = tempfile::tempdir().unwrap();
    let (dir, pins) = helper_dir(work.path(), &["fake-kms-client"]);
    std::fs::write(dir.join("fake-kms-client"), b"#!/bin/sh\necho tampered\n").unwrap();
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"]}));
    let r = run_image(&img, Some(&pins), Some(&dir), &[]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("helper fake-kms-client")
            && r.stderr.contains("but the configuration pins"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("probe:"));
}

#[test]
fn a_failing_helper_is_named_and_the_workload_never_runs() {
    let work = tempfile::tempdir().unwrap();
    let (dir, pins) = helper_dir(work.path(), &["fail-helper"]);
    let cfg = format!("{pins}\n[[prestart]]\nhelper = \"fail-helper\"\n");
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"]}));
    let r = run_image(&img, Some(&cfg), Some(&dir), &[]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr
            .contains("helper fail-helper: exited with exit status: 3"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("probe:"));
}

#[test]
fn a_layer_whose_diff_id_does_not_match_never_runs() {
    let img = image_from_tars_with(
        &[base_layer()],
        json!({"Entrypoint": ["/bin/probe"]}),
        |_, _| format!("sha256:{}", "0".repeat(64)),
    );
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("but the config's diff_id is sha256:000"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("probe:"));
}

#[test]
fn a_kept_root_is_left_empty_when_a_layer_does_not_verify() {
    let img = image_from_tars_with(
        &[base_layer()],
        json!({"Entrypoint": ["/bin/probe"]}),
        |_, _| format!("sha256:{}", "0".repeat(64)),
    );
    let keep = tempfile::tempdir().unwrap();
    let rootfs = keep.path().join("root");
    let r = run_image(&img, None, None, &["--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("diff_id"), "{}", r.stderr);
    let left: Vec<_> = std::fs::read_dir(&rootfs).unwrap().collect();
    assert!(left.is_empty(), "partly applied root left behind: {left:?}");
}

#[test]
fn layers_apply_in_order_with_whiteouts() {
    let upper = tar_entries(&[
        TarEntry::File {
            path: "etc/.wh.group",
            data: vec![],
            mode: 0o644,
        },
        TarEntry::File {
            path: "etc/motd",
            data: b"second layer".to_vec(),
            mode: 0o644,
        },
    ]);
    let img = image_from_tars(
        &[base_layer(), upper],
        json!({"Entrypoint": ["/bin/probe"]}),
    );
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("kept");
    let r = run_image(&img, None, None, &["--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!rootfs.join("etc/group").exists());
    assert_eq!(
        std::fs::read(rootfs.join("etc/motd")).unwrap(),
        b"second layer"
    );
    assert!(!rootfs.join("dev/nsm").exists());
}
