//! OCI 1.1 artifacts: described by `inspect`, fetched by `pull` (as a layout, or as files the
//! way `oras pull` writes them), refused by `run` and `unpack`.
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

const EIGEN_TYPE: &str = "application/vnd.eigenruntime.manifest.v1";
const EIGEN_CONFIG: &str = "application/vnd.eigenruntime.manifest.config.v1+json";
const SPEC: &[u8] = b"apiVersion: v1\nkind: Runtime\nname: demo\n";

/// A layout holding one artifact, as `oras push --oci-layout DIR:TAG` writes it: its config,
/// layers with their titles, and an index.json entry carrying `artifactType`.
fn artifact_layout(
    dir: &Path,
    config: (&str, &[u8]),
    layers: &[(&str, &[u8], Option<&str>)],
) -> String {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}))
            .unwrap(),
    )
    .unwrap();
    let config = put_blob(dir, config.0, config.1);
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|(mt, bytes, title)| {
            let mut d = put_blob(dir, mt, bytes);
            if let Some(t) = title {
                d["annotations"] = json!({"org.opencontainers.image.title": t});
            }
            d
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": EIGEN_TYPE,
        "config": config,
        "layers": layers,
        "annotations": {"org.opencontainers.image.created": "2025-01-01T00:00:00Z"},
    });
    let mut d = put_blob(dir, MT_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    d["artifactType"] = json!(EIGEN_TYPE);
    d["annotations"] = json!({"org.opencontainers.image.ref.name": "v1"});
    add_index_entry(dir, d.clone());
    d["digest"].as_str().unwrap().to_string()
}

struct Served {
    root: String,
    gw: Gateway,
    work: tempfile::TempDir,
    manifest: String,
}

impl Served {
    fn eigen(layers: &[(&str, &[u8], Option<&str>)]) -> Served {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("artifact");
        let manifest = artifact_layout(&dir, (EIGEN_CONFIG, br#"{"version":1}"#), layers);
        let car = work.path().join("artifact.car");
        let root = ipfs_car_pack(&dir, &car, false);
        let gw = Gateway::start(&[car], work.path());
        Served {
            root,
            gw,
            work,
            manifest,
        }
    }

    fn run(&self, cmd: &str, extra: &[&str]) -> Out {
        let r = format!("ipfs://{}", self.root);
        let mut args = vec![
            cmd,
            &r,
            "--gateway",
            &self.gw.url,
            "--ca",
            self.gw.ca.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }
}

#[test]
fn inspect_describes_an_artifact() {
    let s = Served::eigen(&[("text/yaml", SPEC, Some("spec.yaml"))]);
    let out = s.run("inspect", &["--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v = out.json();
    // The fields docs/json.md lists, in its order (this artifact has no subject).
    let mut fields = documented_fields("`inspect`", 1);
    fields.retain(|f| f != "subject");
    assert_eq!(keys_in_order(&out.stdout), fields, "{}", out.stdout);
    assert_eq!(v["kind"], "artifact");
    assert_eq!(v["artifact_type"], EIGEN_TYPE);
    assert_eq!(v["manifest_digest"], s.manifest);
    assert_eq!(v["config"]["media_type"], EIGEN_CONFIG);
    assert_eq!(v["layers"][0]["media_type"], "text/yaml");
    assert_eq!(v["layers"][0]["title"], "spec.yaml");
    assert_eq!(v["layers"][0]["size"], SPEC.len());
    assert_eq!(
        v["annotations"]["org.opencontainers.image.created"],
        "2025-01-01T00:00:00Z"
    );
    let human = s.run("inspect", &[]);
    assert!(
        human.ok && human.stdout.contains(EIGEN_TYPE) && human.stdout.contains("spec.yaml"),
        "{}",
        human.stdout
    );
}

#[test]
fn run_and_unpack_refuse_an_artifact_by_name() {
    let s = Served::eigen(&[("text/yaml", SPEC, Some("spec.yaml"))]);
    let rootfs = s.path("root");
    let out = s.run("unpack", &["--rootfs", rootfs.to_str().unwrap()]);
    let want = format!("this is an OCI artifact (artifactType {EIGEN_TYPE}), not a runnable image");
    assert!(!out.ok && out.stderr.contains(&want), "{}", out.stderr);
    assert!(!rootfs.exists());
    let out = s.run("expect", &[]);
    assert!(!out.ok && out.stderr.contains(&want), "{}", out.stderr);
}

#[test]
fn pull_writes_an_artifact_as_a_layout_other_tools_read() {
    let s = Served::eigen(&[("text/yaml", SPEC, Some("spec.yaml"))]);
    let dir = s.path("pulled");
    let out = s.run(
        "pull",
        &[
            "--tag",
            "v1",
            "--oci-layout",
            dir.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json()["kind"], "artifact");
    let mut fields = documented_fields("`inspect`", 1);
    fields.retain(|f| f != "subject");
    fields.extend(documented_fields("`pull`", 0));
    assert_eq!(keys_in_order(&out.stdout), fields, "{}", out.stdout);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], s.manifest);
    assert_eq!(entry["artifactType"], EIGEN_TYPE);
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "v1"
    );
    assert!(entry.get("platform").is_none(), "{entry}");
    assert_eq!(
        std::fs::read(dir.join("blobs/sha256").join(sha256_hex(SPEC))).unwrap(),
        SPEC
    );
    let o = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{}:v1", dir.display())])
        .output()
        .expect("skopeo (installed by scripts/setup-tools.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        format!("sha256:{}", sha256_hex(&o.stdout)),
        s.manifest,
        "skopeo reads the manifest as pulled"
    );
}

#[test]
fn pull_files_writes_titled_layers_like_oras_pull() {
    let notes: &[u8] = b"untitled";
    let s = Served::eigen(&[
        ("text/yaml", SPEC, Some("spec.yaml")),
        (
            "application/octet-stream",
            &noise(3 << 20, 7),
            Some("blob.bin"),
        ),
        ("text/plain", notes, None),
    ]);
    let dir = s.path("files");
    let out = s.run("pull", &["--files", dir.to_str().unwrap(), "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v = out.json();
    assert_documented(&out.stdout, "`pull`", 1);
    assert_eq!(v["manifest_digest"], s.manifest);
    assert_eq!(v["files"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["skipped_untitled"][0],
        format!("sha256:{}", sha256_hex(notes))
    );
    assert_eq!(std::fs::read(dir.join("spec.yaml")).unwrap(), SPEC);
    assert_eq!(
        std::fs::read(dir.join("blob.bin")).unwrap(),
        noise(3 << 20, 7)
    );
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["blob.bin", "spec.yaml"]);
}

#[test]
fn pull_files_refuses_unsafe_titles_and_writes_nothing() {
    for title in ["../escape", "/etc/passwd", "a/b", "..", "", "tab\there"] {
        let s = Served::eigen(&[
            ("text/yaml", SPEC, Some("spec.yaml")),
            ("text/plain", b"evil", Some(title)),
        ]);
        let dir = s.path("files");
        let out = s.run("pull", &["--files", dir.to_str().unwrap()]);
        assert!(
            !out.ok && out.stderr.contains("layer 1 (sha256:"),
            "{title:?}: {}",
            out.stderr
        );
        assert!(!dir.exists(), "{title:?}");
        assert!(!s.path("escape").exists());
        let leftovers: Vec<_> = std::fs::read_dir(s.work.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "{title:?}");
    }
}

#[test]
fn an_artifact_with_the_empty_config_is_described_and_pulled() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("sbom");
    let entries = umoci_layout(&layout, &["latest"]);
    let subject = json!({"mediaType": entries[0]["mediaType"], "digest": entries[0]["digest"], "size": entries[0]["size"]});
    let sbom = br#"{"spdxVersion":"SPDX-2.3"}"#;
    let d = oras_attach(
        &layout,
        &subject,
        "application/spdx+json",
        "sbom.spdx.json",
        sbom,
    );
    let car = work.path().join("sbom.car");
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let r = format!("ipfs://{root}");
    let ca = gw.ca.to_str().unwrap();
    let out = run(&[
        "inspect",
        &r,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--digest",
        &d,
        "--json",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["artifact_type"], "application/spdx+json");
    assert_eq!(
        v["config"]["media_type"],
        "application/vnd.oci.empty.v1+json"
    );
    assert_eq!(v["config"]["digest"], EMPTY_DIGEST);
    assert_eq!(v["subject"], entries[0]["digest"]);
    let files = work.path().join("files");
    let out = run(&[
        "pull",
        &r,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--digest",
        &d,
        "--files",
        files.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(std::fs::read(files.join("sbom.spdx.json")).unwrap(), sbom);
}

/// `cidboot artifact` with a fixed creation time: its output.
fn make_artifact(spec: &Path, layout: &Path, extra: &[&str]) -> std::process::Output {
    make_named(spec, layout, ("demo", "v1.0.0"), extra)
}

fn make_named(
    spec: &Path,
    layout: &Path,
    (name, release): (&str, &str),
    extra: &[&str],
) -> std::process::Output {
    cidboot()
        .arg("artifact")
        .arg(spec)
        .args(["--name", name, "--release", release, "--oci-layout"])
        .arg(layout)
        .args(extra)
        .env("SOURCE_DATE_EPOCH", "1735689600")
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn artifact_makes_devkits_eigenruntime_artifact_which_packs_and_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let spec_file = work.path().join("runtime.yaml");
    let spec = b"apiVersion: eigenruntime.io/v1\nkind: Hourglass\nname: demo\nspec:\n  aggregator:\n    registry: ghcr.io/example/aggregator\n    digest: sha256:00\n";
    std::fs::write(&spec_file, spec).unwrap();
    let layout = work.path().join("artifact");
    let o = make_artifact(&spec_file, &layout, &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_documented(&String::from_utf8_lossy(&o.stdout), "`artifact`", 0);
    let manifest_digest = made["manifest_digest"].as_str().unwrap().to_string();
    assert_eq!(made["spec_digest"], format!("sha256:{}", sha256_hex(spec)));

    // The manifest as DevKit's artifact package describes it (and with the title oras and
    // `pull --files` name the file by).
    let blob = |d: &str| std::fs::read(layout.join("blobs/sha256").join(&d[7..])).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(&manifest_digest)).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MT_MANIFEST);
    assert_eq!(manifest["artifactType"], EIGEN_TYPE);
    assert_eq!(manifest["config"]["mediaType"], EIGEN_CONFIG);
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "text/yaml");
    assert_eq!(manifest["layers"][0]["size"], spec.len());
    assert_eq!(
        manifest["layers"][0]["annotations"]["org.opencontainers.image.title"],
        "runtime.yaml"
    );
    assert_eq!(
        manifest["annotations"],
        json!({
            "io.eigenruntime.spec.version": "v1",
            "org.opencontainers.image.created": "2025-01-01T00:00:00Z",
            "org.opencontainers.image.description": "EigenRuntime specification for AVS demo",
            "org.opencontainers.image.source": "https://github.com/Layr-Labs/devkit-cli",
        })
    );
    let config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let mut keys: Vec<_> = config.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "avsName",
            "eigenRuntimeAPIVersion",
            "formatVersion",
            "kind",
            "metadata",
            "validationSchema"
        ]
    );
    assert_eq!(config["avsName"], "demo");
    assert_eq!(config["eigenRuntimeAPIVersion"], "v1");
    assert_eq!(config["formatVersion"], "1.0");
    assert_eq!(config["kind"], "Hourglass");
    assert_eq!(
        config["validationSchema"],
        "https://eigenruntime.io/schemas/hourglass/v1/manifest.json"
    );
    assert_eq!(config["metadata"]["createdAt"], "2025-01-01T00:00:00Z");
    assert_eq!(config["metadata"]["releaseVersion"], "v1.0.0");
    // The layout is one other tools read: skopeo finds the manifest under the release's tag.
    let o = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            &format!("oci:{}:v1.0.0", layout.display()),
        ])
        .output()
        .expect("skopeo (installed by scripts/setup-tools.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(format!("sha256:{}", sha256_hex(&o.stdout)), manifest_digest);
    // The same inputs and time give the same layout, so the same CID.
    let again = work.path().join("again");
    assert!(make_artifact(&spec_file, &again, &[]).status.success());
    let cid_of = |d: &Path| {
        let o = run(&["pack", d.to_str().unwrap()]);
        assert!(o.ok, "{}", o.stderr);
        o.stdout.trim().to_string()
    };
    assert_eq!(cid_of(&layout), cid_of(&again));

    // Packed, served, and read back as the tests above read an artifact oras wrote.
    let car = work.path().join("artifact.car");
    let o = run(&[
        "pack",
        layout.to_str().unwrap(),
        "--car",
        car.to_str().unwrap(),
    ]);
    assert!(o.ok, "{}", o.stderr);
    let root = o.stdout.trim().to_string();
    let gw = Gateway::start(&[car], work.path());
    let r = format!("ipfs://{root}");
    let ca = gw.ca.to_str().unwrap();
    let out = run(&["inspect", &r, "--gateway", &gw.url, "--ca", ca, "--json"]);
    assert!(out.ok, "{}", out.stderr);
    let v = out.json();
    let mut fields = documented_fields("`inspect`", 1);
    fields.retain(|f| f != "subject");
    assert_eq!(keys_in_order(&out.stdout), fields, "{}", out.stdout);
    assert_eq!(v["kind"], "artifact");
    assert_eq!(v["artifact_type"], EIGEN_TYPE);
    assert_eq!(v["manifest_digest"], manifest_digest);
    assert_eq!(v["config"]["media_type"], EIGEN_CONFIG);
    assert_eq!(v["layers"][0]["media_type"], "text/yaml");
    assert_eq!(v["layers"][0]["title"], "runtime.yaml");
    assert_eq!(v["layers"][0]["size"], spec.len());
    assert_eq!(v["annotations"], manifest["annotations"]);
    let files = work.path().join("files");
    let out = run(&[
        "pull",
        &r,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--files",
        files.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json()["manifest_digest"], manifest_digest);
    assert_eq!(std::fs::read(files.join("runtime.yaml")).unwrap(), spec);
    assert_eq!(std::fs::read_dir(&files).unwrap().count(), 1);
}

#[test]
fn artifact_refuses_bad_inputs_and_leaves_nothing() {
    let work = tempfile::tempdir().unwrap();
    let spec = work.path().join("spec.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let big = work.path().join("big.yaml");
    std::fs::write(&big, vec![b'a'; (1 << 20) + 1]).unwrap();
    let binary = work.path().join("bin.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
    let layout = work.path().join("out");
    for (file, names, want) in [
        (&spec, ("a<b", "v1"), "AVS name \"a<b\""),
        (&spec, ("demo", "v1 beta"), "release \"v1 beta\""),
        (&big, ("demo", "v1"), "over the 1048576"),
        (&binary, ("demo", "v1"), "not UTF-8"),
        (
            &work.path().join("missing.yaml"),
            ("demo", "v1"),
            "missing.yaml",
        ),
    ] {
        let o = make_named(file, &layout, names, &[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && stderr.contains(want),
            "{want}: {stderr}"
        );
        assert!(!layout.exists(), "{want}");
    }
    // A layout that is there already is not overwritten.
    std::fs::create_dir_all(&layout).unwrap();
    std::fs::write(layout.join("keep"), b"x").unwrap();
    let o = make_artifact(&spec, &layout, &[]);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(layout.join("keep")).unwrap(), b"x");
    let names: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains("partial")), "{names:?}");
}

#[test]
fn inspect_shows_what_a_hostile_artifact_says_without_its_control_characters() {
    // Anyone can publish a CID, and its strings are the publisher's: here terminal controls
    // (a title, a screen clear, the one-byte CSI) that would have `inspect` draw what it likes.
    let hostile = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}32mverified";
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("artifact");
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}))
            .unwrap(),
    )
    .unwrap();
    let config = put_blob(&dir, EIGEN_CONFIG, br#"{"version":1}"#);
    let mut layer = put_blob(&dir, "text/yaml", SPEC);
    layer["annotations"] = json!({"org.opencontainers.image.title": format!("{hostile}.yaml")});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": format!("application/x-{hostile}"),
        "config": config,
        "layers": [layer],
        "annotations": {"org.opencontainers.image.description": hostile, hostile: "key"},
    });
    let mut d = put_blob(&dir, MT_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    d["artifactType"] = json!(format!("application/x-{hostile}"));
    add_index_entry(&dir, d);
    let car = work.path().join("artifact.car");
    let root = ipfs_car_pack(&dir, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let out = run(&[
        "inspect",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        !out.stdout.contains(['\u{1b}', '\u{7}', '\u{9b}']),
        "{:?}",
        out.stdout
    );
    // Shown, escaped, so that a reader sees what the artifact holds.
    for shown in [
        "org.opencontainers.image.description: \\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}32mverified",
        "\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}32mverified: key",
        "  \\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}32mverified.yaml",
        "artifact_type:   application/x-\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}32mverified",
    ] {
        assert!(out.stdout.contains(shown), "{shown}\n{}", out.stdout);
    }
    // An error that quotes it (here unpack's, refusing an artifact) is shown the same way.
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
    ]);
    assert!(!out.ok);
    assert!(
        !out.stderr.contains(['\u{1b}', '\u{7}', '\u{9b}'])
            && out.stderr.contains(
                "error: this is an OCI artifact (artifactType application/x-\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{9b}32mverified), not a runnable image"
            ),
        "{:?}",
        out.stderr
    );
}
