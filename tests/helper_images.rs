//! Helpers from dependency images pinned by digest (`[[helpers.images]]`), EigenCloud style.
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

/// A dependency image: the two helpers under /eigen/bin, a file beside them that a later
/// layer whites out, a symlink there (not a helper), and files elsewhere that must not reach
/// the workload's root.
fn dependency_image() -> Image {
    let bin = |n: &str| std::fs::read(sample_bin(n)).unwrap();
    let lower = tar_entries(&[
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
        TarEntry::File {
            path: "eigen/bin/fake-kms-client",
            data: bin("fake-kms-client"),
            mode: 0o755,
        },
        TarEntry::File {
            path: "eigen/bin/removed-later",
            data: b"gone".to_vec(),
            mode: 0o755,
        },
        TarEntry::Dir {
            path: "etc",
            mode: 0o755,
            uid: 0,
        },
        TarEntry::File {
            path: "etc/dependency-only",
            data: b"must not reach the workload".to_vec(),
            mode: 0o644,
        },
    ]);
    let upper = tar_entries(&[
        TarEntry::File {
            path: "eigen/bin/.wh.removed-later",
            data: vec![],
            mode: 0o644,
        },
        TarEntry::File {
            path: "eigen/bin/fake-tls-client",
            data: bin("fake-tls-client"),
            mode: 0o755,
        },
        TarEntry::Symlink {
            path: "eigen/bin/a-link",
            target: "/etc/dependency-only",
        },
    ]);
    image_from_tars(
        &[lower, upper],
        json!({"Entrypoint": ["/eigen/bin/fake-kms-client"]}),
    )
}

/// Packs a layout with ipfs-car; `tamper` may rewrite it first. Returns the root CID.
fn pack(img: &Image, work: &Path, tamper: impl FnOnce(&Path)) -> (String, PathBuf) {
    let dir = work.join(format!("layout-{}", fastrand::u32(..)));
    write_layout(&dir, &[("amd64", img)]);
    tamper(&dir);
    let car = dir.with_extension("car");
    let cid = ipfs_car_pack(&dir, &car, false);
    (cid, car)
}

struct Boot {
    ran: Ran,
    dep_cid: String,
    gateway: Gateway,
    workload: String,
    config: PathBuf,
    rootfs: PathBuf,
    _work: tempfile::TempDir,
}

/// Boots the probe workload with `config` (where `{dep}` is the dependency image's CID and
/// `{digest}` its manifest digest), one gateway serving both images.
fn boot(dep: &Image, tamper: impl FnOnce(&Path), config: &str) -> Boot {
    let workload = probe_image(json!({"Entrypoint": ["/bin/probe"], "User": "app"}));
    boot_workload(dep, tamper, config, &workload)
}

/// [`boot`] with a workload image of the caller's.
fn boot_workload(dep: &Image, tamper: impl FnOnce(&Path), config: &str, workload: &Image) -> Boot {
    boot_with(dep, tamper, config, workload, &[])
}

/// [`boot_workload`] with more arguments for `run`.
fn boot_with(
    dep: &Image,
    tamper: impl FnOnce(&Path),
    config: &str,
    workload: &Image,
    extra: &[&str],
) -> Boot {
    // Private: the kept root is under it.
    let work = private_tempdir();
    let (dep_cid, dep_car) = pack(dep, work.path(), tamper);
    let (cid, car) = pack(workload, work.path(), |_| {});
    let gateway = Gateway::start(&[car, dep_car], work.path());
    let cfg = config
        .replace("{dep}", &dep_cid)
        .replace("{digest}", &dep.manifest.digest);
    let config = work.path().join("cidboot.toml");
    std::fs::write(&config, cfg).unwrap();
    let rootfs = work.path().join("root");
    let o = cidboot()
        .args([
            "run",
            &format!("ipfs://{cid}"),
            "--gateway",
            &gateway.url,
            "--ca",
        ])
        .arg(&gateway.ca)
        .arg("--config")
        .arg(&config)
        .arg("--rootfs")
        .arg(&rootfs)
        .args(["--attestation-listen", "127.0.0.1:0", "--json"])
        .args(extra)
        .env("CIDBOOT_LOG", "info")
        .output()
        .unwrap();
    Boot {
        ran: Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        },
        dep_cid,
        gateway,
        workload: format!("ipfs://{cid}"),
        config,
        rootfs,
        _work: work,
    }
}

const CHAIN: &str = r#"
[[helpers.images]]
image = "ipfs://{dep}"
digest = "{digest}"

[[prestart]]
helper = "fake-kms-client"
args = ["/run/kms.env"]
env_file = "/run/kms.env"

[[prestart]]
helper = "fake-tls-client"
"#;

#[test]
fn helpers_from_a_pinned_dependency_image_run_and_are_measured() {
    let dep = dependency_image();
    let b = boot(&dep, |_| {}, CHAIN);
    let r = &b.ran;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let kms = r
        .stdout
        .find("fake-kms-client: wrote /run/kms.env")
        .expect("kms-client ran");
    let tls = r
        .stdout
        .find("fake-tls-client: have KMS secret")
        .expect("tls-client ran after it");
    assert!(kms < tls && tls < r.stdout.find("probe: uid=").unwrap());
    assert!(r
        .lines("probe: env ")
        .contains(&"KMS_SECRET=opensesame".to_string()));
    // Only the regular files of /eigen/bin, after the dependency image's own whiteouts.
    assert_eq!(r.line("probe: helpers="), "fake-kms-client,fake-tls-client");
    assert!(!b.rootfs.join("etc/dependency-only").exists());
    assert!(!b.rootfs.join("eigen/bin/a-link").exists());
    assert!(!b.rootfs.join("eigen/bin/removed-later").exists());

    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    let events = report["measurements"]["events"].as_array().unwrap();
    let image_events: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "helper-image")
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    let d = &dep.manifest.digest;
    assert_eq!(image_events, [format!("ipfs://{} {d} {d}", b.dep_cid)]);
    let digest_of = |n: &str| sha256_hex(&std::fs::read(sample_bin(n)).unwrap());
    let helpers: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "helper")
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        helpers,
        [
            format!(
                "fake-kms-client sha256:{} {d}",
                digest_of("fake-kms-client")
            ),
            format!(
                "fake-tls-client sha256:{} {d}",
                digest_of("fake-tls-client")
            ),
        ]
    );
    // A verifier computes the same PCR16 from the references and the configuration alone.
    let expect = run(&[
        "expect",
        &b.workload,
        "--gateway",
        &b.gateway.url,
        "--ca",
        b.gateway.ca.to_str().unwrap(),
        "--config",
        b.config.to_str().unwrap(),
        "--json",
    ]);
    assert!(expect.ok, "{}", expect.stderr);
    assert_eq!(expect.json()["pcrs"]["PCR16"], report["pcr16"]);
    // The verifier reads the boot's real log: the helper image and what came from it.
    let measured = cidboot::measure::check_log(
        report["measurements"].to_string().as_bytes(),
        &hex::decode(report["pcr16"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(measured.helper_images.len(), 1);
    assert_eq!(measured.helper_images[0].helpers.len(), 2);
    assert_eq!(
        measured.helper_images[0].reference,
        format!("ipfs://{}", b.dep_cid)
    );
}

/// `verify --measurements` prints what it read from the log, the helper images and where each
/// helper came from included, and the log's helper events carry the image's manifest as their
/// third field.
#[test]
fn verify_prints_the_helper_images_it_read_from_the_log() {
    let dep = dependency_image();
    let nonce = "00112233445566778899aabbccddeeff";
    let workload = probe_image(json!({"Entrypoint": ["/bin/probe"], "Cmd": ["attest", nonce]}));
    let root = private_tempdir();
    let root_pem = root.path().join("nsm-root.pem");
    let config = "[[helpers.images]]\nimage = \"ipfs://{dep}\"\ndigest = \"{digest}\"\n";
    let b = boot_with(
        &dep,
        |_| {},
        config,
        &workload,
        &[
            "--nsm",
            "software",
            "--nsm-root-out",
            root_pem.to_str().unwrap(),
        ],
    );
    let r = &b.ran;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let doc = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("probe: attestation="))
        .expect("the workload got a document");
    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    let work = root.path();
    std::fs::write(work.join("doc.b64"), doc).unwrap();
    std::fs::write(work.join("log.json"), report["measurements"].to_string()).unwrap();
    let d = &dep.manifest.digest;
    let kms = format!(
        "sha256:{}",
        sha256_hex(&std::fs::read(sample_bin("fake-kms-client")).unwrap())
    );
    let v = run(&[
        "verify",
        work.join("doc.b64").to_str().unwrap(),
        "--root",
        root_pem.to_str().unwrap(),
        "--measurements",
        work.join("log.json").to_str().unwrap(),
        "--expect-cid",
        &b.workload,
        "--expect-helper",
        &format!("fake-kms-client={kms}"),
        "--expect-helper",
        &format!(
            "fake-tls-client=sha256:{}",
            sha256_hex(&std::fs::read(sample_bin("fake-tls-client")).unwrap())
        ),
    ]);
    assert!(v.ok, "{}\n{}", v.stdout, v.stderr);
    for want in [
        format!(
            "measured: helper image ipfs://{} pinned {d} manifest {d}",
            b.dep_cid
        ),
        format!("measured: helper fake-kms-client {kms} from the helper image {d}"),
    ] {
        assert!(v.stdout.contains(&want), "{want:?} not in:\n{}", v.stdout);
    }
}

#[test]
fn an_image_index_digest_is_accepted_and_its_platform_manifest_taken() {
    let dep = dependency_image();
    // index.json names an image index (as `skopeo copy --all` writes), which names the manifest.
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST, "digest": dep.manifest.digest, "size": dep.manifest.size,
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    let nested_digest = format!("sha256:{}", sha256_hex(&nested));
    let b = boot(
        &dep,
        |dir| {
            std::fs::write(dir.join("blobs/sha256").join(&nested_digest[7..]), &nested).unwrap();
            let top = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [{
                "mediaType": MT_INDEX, "digest": nested_digest, "size": nested.len(),
            }]});
            std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
        },
        &CHAIN.replace("{digest}", &nested_digest),
    );
    assert_eq!(b.ran.code, Some(0), "{}", b.ran.stderr);
    assert!(b.ran.stdout.contains("fake-kms-client: wrote /run/kms.env"));
    let report: serde_json::Value =
        serde_json::from_str(b.ran.stdout.lines().last().unwrap()).unwrap();
    let image_event = report["measurements"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "helper-image")
        .unwrap()["value"]
        .clone();
    assert_eq!(
        image_event,
        format!(
            "ipfs://{} {nested_digest} {}",
            b.dep_cid, dep.manifest.digest
        )
    );
}

#[test]
fn a_wrong_digest_stops_the_boot_before_anything_runs() {
    let dep = dependency_image();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let b = boot(&dep, |_| {}, &CHAIN.replace("{digest}", &wrong));
    assert_eq!(b.ran.code, Some(125));
    assert!(
        b.ran.stderr.contains(&format!(
            "its manifest for linux/amd64 is {}, but the configuration pins {wrong}",
            dep.manifest.digest
        )),
        "{}",
        b.ran.stderr
    );
    assert!(b.ran.stderr.contains("helper image ipfs://"));
    assert!(!b.ran.stdout.contains("fake-kms-client:") && !b.ran.stdout.contains("probe:"));
}

#[test]
fn a_helper_image_with_no_helper_stops_the_boot() {
    // Its /eigen/bin holds only a symlink: nothing would be installed, and its event would
    // record nothing a verifier could check (the verifier refuses such a log too).
    let empty = image_from_tars(
        &[tar_entries(&[
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
                path: "eigen/bin/a-link",
                target: "/etc/passwd",
            },
        ])],
        json!({}),
    );
    let config = "[[helpers.images]]\nimage = \"ipfs://{dep}\"\ndigest = \"{digest}\"\n";
    let b = boot(&empty, |_| {}, config);
    assert_eq!(b.ran.code, Some(125), "{}", b.ran.stderr);
    assert!(
        b.ran.stderr.contains("has no regular files in /eigen/bin"),
        "{}",
        b.ran.stderr
    );
    assert!(!b.ran.stdout.contains("probe:"));
}

#[test]
fn a_prestart_helper_no_source_provides_stops_the_boot() {
    let dep = dependency_image();
    let b = boot(
        &dep,
        |_| {},
        &format!("{CHAIN}\n[[prestart]]\nhelper = \"ghost\"\n"),
    );
    assert_eq!(b.ran.code, Some(125));
    assert!(
        b.ran.stderr.contains(
            "helper ghost: the prestart chain names it, but neither [helpers.pins] nor any helper image provides it"
        ),
        "{}",
        b.ran.stderr
    );
    assert!(!b.ran.stdout.contains("fake-kms-client:") && !b.ran.stdout.contains("probe:"));
}

#[test]
fn a_tampered_dependency_image_stops_the_boot() {
    let dep = dependency_image();
    // The publisher's copy of the helper layer differs from what the manifest names.
    let layer = dep.layers[0].hex().to_string();
    let b = boot(
        &dep,
        |dir| {
            let p = dir.join("blobs/sha256").join(&layer);
            let mut bytes = std::fs::read(&p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 1;
            std::fs::write(&p, bytes).unwrap();
        },
        CHAIN,
    );
    assert_eq!(b.ran.code, Some(125));
    assert!(
        b.ran.stderr.contains("helper image ipfs://") && b.ran.stderr.contains(&layer),
        "{}",
        b.ran.stderr
    );
    assert!(!b.ran.stdout.contains("fake-kms-client:") && !b.ran.stdout.contains("probe:"));
}

#[test]
fn a_helper_name_from_two_sources_is_an_error() {
    let dep = dependency_image();
    let bytes = std::fs::read(sample_bin("fake-kms-client")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("eigen-bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("fake-kms-client"), &bytes).unwrap();
    let cfg = format!(
        "[helpers.pins]\nfake-kms-client = \"sha256:{}\"\n{CHAIN}",
        sha256_hex(&bytes)
    );
    // The boot image's helper directory is given on the command line.
    let (dep_cid, dep_car) = pack(&dep, work.path(), |_| {});
    let workload = probe_image(json!({"Entrypoint": ["/bin/probe"]}));
    let (cid, car) = pack(&workload, work.path(), |_| {});
    let gw = Gateway::start(&[car, dep_car], work.path());
    let config = work.path().join("cidboot.toml");
    std::fs::write(
        &config,
        cfg.replace("{dep}", &dep_cid)
            .replace("{digest}", &dep.manifest.digest),
    )
    .unwrap();
    let o = cidboot()
        .args([
            "run",
            &format!("ipfs://{cid}"),
            "--gateway",
            &gw.url,
            "--ca",
        ])
        .arg(&gw.ca)
        .arg("--config")
        .arg(&config)
        .arg("--helpers-dir")
        .arg(&dir)
        .args(["--attestation-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr.contains("helper fake-kms-client is provided by both [helpers.pins] and the helper image with manifest"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("probe:"));
}

/// The host's dash and the shared libraries it loads, as a layer (`/bin/sh` is dash): the
/// workload image then has the interpreter a script helper names.
fn shell_layer() -> Vec<u8> {
    let o = std::process::Command::new("ldd")
        .arg("/bin/dash")
        .output()
        .unwrap();
    let libs: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(String::from)
        .collect();
    assert!(!libs.is_empty(), "ldd /bin/dash: {o:?}");
    let mut dirs: Vec<String> = libs
        .iter()
        .filter_map(|l| Path::new(l.trim_start_matches('/')).parent())
        .map(|d| d.to_str().unwrap().to_string())
        .collect();
    dirs.sort();
    dirs.dedup();
    let mut entries: Vec<TarEntry> = Vec::new();
    let mut all_dirs: Vec<String> = Vec::new();
    for d in &dirs {
        let mut acc = String::new();
        for part in d.split('/') {
            acc = if acc.is_empty() {
                part.to_string()
            } else {
                format!("{acc}/{part}")
            };
            if !all_dirs.contains(&acc) {
                all_dirs.push(acc.clone());
            }
        }
    }
    for d in &all_dirs {
        entries.push(TarEntry::Dir {
            path: d,
            mode: 0o755,
            uid: 0,
        });
    }
    entries.push(TarEntry::Dir {
        path: "tmp",
        mode: 0o1777,
        uid: 0,
    });
    let lib_paths: Vec<String> = libs
        .iter()
        .map(|l| l.trim_start_matches('/').to_string())
        .collect();
    for (l, rel) in libs.iter().zip(&lib_paths) {
        entries.push(TarEntry::File {
            path: rel,
            data: std::fs::read(l).unwrap(),
            mode: 0o755,
        });
    }
    entries.push(TarEntry::File {
        path: "bin/sh",
        data: std::fs::read("/bin/dash").unwrap(),
        mode: 0o755,
    });
    tar_entries(&entries)
}

const SCRIPT: &[u8] = b"#!/bin/sh\n# A helper that is a shell script, run by the image's own /bin/sh.\necho \"script-helper: running from $0, args: $*\"\necho \"SCRIPT_SECRET=from-a-script\" >\"$1\"\n";

#[test]
fn a_script_helper_from_a_dependency_image_runs_from_its_hashed_bytes() {
    let dep = image_from_tars(
        &[tar_entries(&[
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
            TarEntry::File {
                path: "eigen/bin/script-helper",
                data: SCRIPT.to_vec(),
                mode: 0o755,
            },
        ])],
        json!({}),
    );
    let workload = image_from_tars(
        &[base_layer(), shell_layer()],
        json!({"Entrypoint": ["/bin/probe"], "User": "app"}),
    );
    let config = r#"
[[helpers.images]]
image = "ipfs://{dep}"
digest = "{digest}"

[[prestart]]
helper = "script-helper"
args = ["/tmp/script.env"]
env_file = "/tmp/script.env"
"#;
    let b = boot_workload(&dep, |_| {}, config, &workload);
    let r = &b.ran;
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    // The interpreter read the script from the sealed descriptor, not from a path in the root.
    let line = r.line("script-helper: running from ");
    assert!(line.starts_with("/dev/fd/"), "{line}");
    assert!(line.ends_with("args: /tmp/script.env"), "{line}");
    assert!(r
        .lines("probe: env ")
        .contains(&"SCRIPT_SECRET=from-a-script".to_string()));
    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    let helper = report["measurements"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "helper")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        helper,
        format!(
            "script-helper sha256:{} {}",
            sha256_hex(SCRIPT),
            dep.manifest.digest
        )
    );
}
