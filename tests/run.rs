//! `cidboot run`: the whole boot path on this machine, with the workload in its sandbox.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;
use serde_json::json;

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
    for (config, code, want) in [
        (
            json!({"Entrypoint": ["/bin/probe"], "User": "ghost"}),
            125,
            "no user \"ghost\" in the image's /etc/passwd",
        ),
        (
            json!({"Entrypoint": ["/bin/probe"], "User": "app:nogroup"}),
            125,
            "no group \"nogroup\"",
        ),
        (
            json!({"Entrypoint": ["missing"], "Env": ["PATH=/bin:/usr/bin"]}),
            127,
            "executable \"missing\" not found in the image (PATH=/bin:/usr/bin)",
        ),
        (json!({"Env": ["A=1"]}), 125, "defines no command"),
    ] {
        let r = run_image(&probe_image(config), None, None, &[]);
        assert_eq!(r.code, Some(code), "{}", r.stderr);
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
        assert!(!r.stdout.contains("probe:"), "the workload ran");
    }
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
    assert_eq!(r.code, Some(125));
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
    assert_eq!(r.code, Some(125));
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
    assert_eq!(r.code, Some(125));
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
    let keep = private_tempdir();
    let rootfs = keep.path().join("root");
    let r = run_image(&img, None, None, &["--rootfs", rootfs.to_str().unwrap()]);
    assert_eq!(r.code, Some(125), "{}", r.stderr);
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
    let work = private_tempdir();
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

#[test]
fn a_layer_from_umoci_insert_at_the_root_runs() {
    // The layer's first entry is `/`, mode 0755: the root stays searchable by the
    // workload's user, who reads what the layer put there.
    let work = tempfile::tempdir().unwrap();
    let tar = umoci_root_insert(&work.path().join("umoci"), 0o755);
    let img = image_from_tars(
        &[base_layer(), tar],
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["cat", "/etc/hello"], "User": "app"}),
    );
    let r = run_image(&img, None, None, &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        r.line("probe: cat /etc/hello hex="),
        hex::encode(b"hello from the root\n")
    );
}
