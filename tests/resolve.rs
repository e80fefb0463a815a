//! Round trips through a real HTTPS `cidboot gateway` process serving CARs made by ipfs-car,
//! for the three ways an image can be published.
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

struct Published {
    root: String,
    cars: Vec<PathBuf>,
}

fn two_arch_layout(work: &Path) -> (Image, Image, PathBuf) {
    let amd = image(
        "amd64",
        &[
            vec![
                ("bin/hello", noise(1_500_000, 1)),
                ("etc/greeting", b"hi\n".to_vec()),
            ],
            vec![("etc/motd", b"layer two\n".to_vec())],
        ],
    );
    let arm = image("arm64", &[vec![("bin/hello", noise(1000, 2))]]);
    let dir = work.join("layout");
    write_layout(&dir, &[("amd64", &amd), ("arm64", &arm)]);
    (amd, arm, dir)
}

/// (a) The OCI layout directory, packed by ipfs-car.
fn publish_layout(work: &Path) -> (Image, Image, Published) {
    let (amd, arm, dir) = two_arch_layout(work);
    let car = work.join("layout.car");
    let root = ipfs_car_pack(&dir, &car, false);
    (
        amd,
        arm,
        Published {
            root,
            cars: vec![car],
        },
    )
}

/// Adds one file with ipfs-car --no-wrap and returns its CID and CAR.
fn add_blob(work: &Path, name: &str, bytes: &[u8]) -> (String, PathBuf) {
    let f = work.join(name);
    std::fs::write(&f, bytes).unwrap();
    let car = work.join(format!("{name}.car"));
    (ipfs_car_pack(&f, &car, true), car)
}

/// (b) and (c): every blob added alone, descriptors carrying `urls: ["ipfs://<cid>"]`.
/// Returns the manifest, index and nerdctl-descriptor root CIDs.
fn publish_by_urls(work: &Path) -> (Image, Published, Published, Published) {
    let mut cars = Vec::new();
    let mut urls = std::collections::HashMap::new();
    let base = image(
        "amd64",
        &[
            vec![("bin/hello", noise(1_200_000, 3))],
            vec![("a", b"a".to_vec())],
        ],
    );
    for b in base.layers.iter().chain([&base.config]) {
        let (cid, car) = add_blob(work, b.hex(), &b.bytes);
        urls.insert(b.digest.clone(), cid);
        cars.push(car);
    }
    let with_url = |b: &BlobInfo| {
        let mut d = b.descriptor();
        d["urls"] = json!([format!("ipfs://{}", urls[&b.digest])]);
        d
    };
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": with_url(&base.config),
        "layers": base.layers.iter().map(with_url).collect::<Vec<_>>(),
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let (manifest_cid, car) = add_blob(work, "manifest.json", &manifest_bytes);
    cars.push(car);
    let mut mdesc = json!({
        "mediaType": MT_MANIFEST,
        "digest": format!("sha256:{}", sha256_hex(&manifest_bytes)),
        "size": manifest_bytes.len(),
        "urls": [format!("ipfs://{manifest_cid}")],
    });
    mdesc["platform"] = json!({"architecture": "amd64", "os": "linux"});
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [mdesc]});
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let (index_cid, car) = add_blob(work, "index.json", &index_bytes);
    cars.push(car);
    let desc = json!({
        "mediaType": MT_INDEX,
        "digest": format!("sha256:{}", sha256_hex(&index_bytes)),
        "size": index_bytes.len(),
        "urls": [format!("ipfs://{index_cid}")],
    });
    let (desc_cid, car) = add_blob(work, "descriptor.json", &serde_json::to_vec(&desc).unwrap());
    cars.push(car);
    let mut img = base.clone();
    img.manifest.digest = format!("sha256:{}", sha256_hex(&manifest_bytes));
    let p = |root: String| Published {
        root,
        cars: cars.clone(),
    };
    (img, p(manifest_cid), p(index_cid), p(desc_cid))
}

fn inspect(gw: &Gateway, root: &str, extra: &[&str]) -> Out {
    let r = format!("ipfs://{root}");
    let ca = gw.ca.to_str().unwrap();
    let mut args = vec!["inspect", &r, "--gateway", &gw.url, "--ca", ca, "--json"];
    args.extend_from_slice(extra);
    run(&args)
}

fn assert_describes(out: &Out, img: &Image, layout: &str) {
    assert!(out.ok, "inspect failed: {}", out.stderr);
    let v = out.json();
    assert_eq!(v["layout"], layout);
    assert_eq!(v["manifest_digest"], img.manifest.digest);
    assert_eq!(v["config_digest"], img.config.digest);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), img.layers.len());
    for (l, want) in layers.iter().zip(&img.layers) {
        assert_eq!(l["digest"], want.digest);
        assert_eq!(l["size"], want.size);
        assert_eq!(l["media_type"], MT_LAYER_GZ);
    }
    let total: u64 = img.layers.iter().map(|l| l.size).sum();
    assert_eq!(v["total_compressed_size"], total);
}

#[test]
fn layout_directory_resolves_per_platform() {
    let work = tempfile::tempdir().unwrap();
    let (amd, arm, p) = publish_layout(work.path());
    let gw = Gateway::start(&p.cars, work.path());
    assert_describes(&inspect(&gw, &p.root, &[]), &amd, "oci-layout");
    assert_describes(
        &inspect(&gw, &p.root, &["--platform", "linux/arm64"]),
        &arm,
        "oci-layout",
    );
    let out = inspect(&gw, &p.root, &["--platform", "linux/s390x"]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("no manifest for linux/s390x") && out.stderr.contains("linux/arm64"),
        "{}",
        out.stderr
    );
}

#[test]
fn gateway_url_reference_is_tried_first() {
    let work = tempfile::tempdir().unwrap();
    let (amd, _, p) = publish_layout(work.path());
    let gw = Gateway::start(&p.cars, work.path());
    let r = format!("{}/ipfs/{}", gw.url, p.root);
    let out = run(&["inspect", &r, "--ca", gw.ca.to_str().unwrap(), "--json"]);
    assert_describes(&out, &amd, "oci-layout");
}

#[test]
fn manifest_index_and_nerdctl_descriptor_resolve_by_urls() {
    let work = tempfile::tempdir().unwrap();
    let (img, manifest, index, desc) = publish_by_urls(work.path());
    let gw = Gateway::start(&manifest.cars, work.path());
    assert_describes(&inspect(&gw, &manifest.root, &[]), &img, "manifest");
    assert_describes(&inspect(&gw, &index.root, &[]), &img, "index");
    assert_describes(&inspect(&gw, &desc.root, &[]), &img, "descriptor");
}

#[test]
fn pull_writes_a_verified_layout_atomically() {
    let work = tempfile::tempdir().unwrap();
    let (amd, _, p) = publish_layout(work.path());
    let gw = Gateway::start(&p.cars, work.path());
    let out_dir = work.path().join("pulled");
    let r = format!("ipfs://{}", p.root);
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
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json()["manifest_digest"], amd.manifest.digest);
    for b in amd.layers.iter().chain([&amd.config, &amd.manifest]) {
        let got = std::fs::read(out_dir.join("blobs/sha256").join(b.hex())).unwrap();
        assert_eq!(got, b.bytes, "blob {}", b.digest);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], amd.manifest.digest);
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );
    // No partial directories are left beside it.
    let leftovers: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty());
    // Other OCI tools accept the layout as it is.
    let unpacked = work.path().join("unpacked");
    let o = std::process::Command::new("umoci")
        .args([
            "unpack",
            "--image",
            &format!("{}:latest", out_dir.display()),
        ])
        .arg(&unpacked)
        .output()
        .expect("umoci (installed by scripts/setup-tools.sh)");
    assert!(
        o.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read(unpacked.join("rootfs/etc/greeting")).unwrap(),
        b"hi\n"
    );
    let o = std::process::Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:latest", out_dir.display())])
        .output()
        .expect("skopeo (installed by scripts/setup-tools.sh)");
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["Digest"], amd.manifest.digest);
    // A second pull into the same, now complete, layout is refused.
    let again = run(&[
        "pull",
        &r,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        !again.ok && again.stderr.contains("not empty"),
        "{}",
        again.stderr
    );
}

#[test]
fn fails_over_from_a_dead_gateway() {
    let work = tempfile::tempdir().unwrap();
    let (amd, _, p) = publish_layout(work.path());
    let gw = Gateway::start(&p.cars, work.path());
    // A port that was just free: connections to it are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}", l.local_addr().unwrap())
    };
    let r = format!("ipfs://{}", p.root);
    let o = common::cidboot()
        .args([
            "inspect",
            &r,
            "--gateway",
            &dead,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--json",
        ])
        .env("CIDBOOT_LOG", "info")
        .output()
        .unwrap();
    let out = Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    };
    assert_describes(&out, &amd, "oci-layout");
    assert!(
        out.stderr.contains(&dead) && out.stderr.contains("trying the next one"),
        "{}",
        out.stderr
    );
}

#[test]
fn gateway_answers_the_probe_and_refuses_non_trustless_requests() {
    let work = tempfile::tempdir().unwrap();
    let (_, _, p) = publish_layout(work.path());
    let gw = Gateway::start(&p.cars, work.path());
    // Reuse cidboot's own client through `inspect` would hide the status; use a raw TLS GET.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use cidboot::transport::{
            http::{HttpClient, Origin, Timeouts},
            tls, TcpConnector,
        };
        let client = HttpClient::new(
            std::sync::Arc::new(TcpConnector),
            tls::client_config(Some(&gw.ca)).unwrap(),
            Timeouts::default(),
        );
        let (origin, _) = Origin::parse(&gw.url).unwrap();
        let r = client
            .get(&origin, "/ipfs/bafkqaaa?format=raw", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes_limited(10).await.unwrap().unwrap().len(), 0);
        let r = client
            .get(&origin, &format!("/ipfs/{}/index.json", p.root), &[])
            .await
            .unwrap();
        assert_eq!(
            r.status, 406,
            "plain (deserialized) responses are not trustless"
        );
        let r = client
            .get(
                &origin,
                &format!("/ipfs/{}/index.json?format=car&dag-scope=entity", p.root),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("application/vnd.ipld.car"));
    });
}

/// A umoci layout with two tags, packed by ipfs-car and served.
fn two_tags(work: &Path) -> (Vec<serde_json::Value>, PathBuf, PathBuf) {
    let layout = work.join("tags");
    let entries = umoci_layout(&layout, &["v1", "v2"]);
    (entries, layout.clone(), layout.with_extension("car"))
}

fn subject_of(entry: &serde_json::Value) -> serde_json::Value {
    json!({"mediaType": entry["mediaType"], "digest": entry["digest"], "size": entry["size"]})
}

#[test]
fn an_index_with_two_tags_is_selected_by_tag_or_digest() {
    let work = tempfile::tempdir().unwrap();
    let (entries, layout, car) = two_tags(work.path());
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let (v1, v2) = (
        entries[0]["digest"].as_str().unwrap(),
        entries[1]["digest"].as_str().unwrap(),
    );
    // With neither, the choice is the user's: the error lists what to choose from.
    let out = inspect(&gw, &root, &[]);
    assert!(!out.ok);
    for want in [
        "index.json lists 2 images",
        "--tag \"v1\"",
        "--tag \"v2\"",
        &format!("--digest {v1}"),
        &format!("--digest {v2}"),
    ] {
        assert!(out.stderr.contains(want), "{want:?} in {}", out.stderr);
    }
    for (args, want) in [
        (vec!["--tag", "v1"], v1),
        (vec!["--tag", "v2"], v2),
        (vec!["--digest", v2], v2),
        (vec!["--digest", v1], v1),
    ] {
        let out = inspect(&gw, &root, &args);
        assert!(out.ok, "{args:?}: {}", out.stderr);
        assert_eq!(out.json()["manifest_digest"], want, "{args:?}");
    }
    let out = inspect(&gw, &root, &["--tag", "v3"]);
    assert!(
        !out.ok
            && out.stderr.contains("no entry tagged \"v3\"")
            && out.stderr.contains("--tag \"v2\""),
        "{}",
        out.stderr
    );
    let missing = format!("sha256:{}", "ab".repeat(32));
    let out = inspect(&gw, &root, &["--digest", &missing]);
    assert!(
        !out.ok && out.stderr.contains(&format!("no entry {missing}")),
        "{}",
        out.stderr
    );
    let out = inspect(&gw, &root, &["--digest", "sha256:XYZ"]);
    assert!(
        !out.ok
            && out
                .stderr
                .contains("is not sha256:<64 lowercase hex digits>"),
        "{}",
        out.stderr
    );
    // unpack takes the same options, and applies the tag asked for.
    let rootfs = work.path().join("root");
    let out = run(&[
        "unpack",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--tag",
        "v2",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        std::fs::read(rootfs.join("etc/greeting")).unwrap(),
        b"hello from v2\n"
    );
    // pull records the tag it selected, and umoci reads the result by that tag.
    let pulled = work.path().join("pulled");
    let out = run(&[
        "pull",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--digest",
        v1,
        "--ref-name",
        "first",
        "--oci-layout",
        pulled.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    let o = std::process::Command::new("umoci")
        .args(["stat", "--image", &format!("{}:first", pulled.display())])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_runtime_configuration_selects_by_tag_as_the_command_line_does() {
    let work = tempfile::tempdir().unwrap();
    let (entries, layout, car) = two_tags(work.path());
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let (d1, d2) = (
        entries[0]["digest"].as_str().unwrap(),
        entries[1]["digest"].as_str().unwrap(),
    );
    let r = format!("ipfs://{root}");
    let expect = |extra: &[&str]| {
        let mut args = vec![
            "expect",
            &r,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run(&args);
        assert!(out.ok, "{extra:?}: {}", out.stderr);
        out.json()
    };
    let cfg = |name: &str, text: &str| {
        let p = work.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let empty = cfg("empty.toml", "");
    let by_flag = expect(&["--config", &empty, "--tag", "v2"]);
    let by_config = expect(&["--config", &cfg("v2.toml", "tag = \"v2\"\n")]);
    let by_digest = expect(&["--config", &cfg("d1.toml", &format!("digest = \"{d1}\"\n"))]);
    // What was measured names the manifest that was selected.
    let measured = |v: &serde_json::Value| v["measurements"].to_string();
    assert!(measured(&by_flag).contains(d2) && !measured(&by_flag).contains(d1));
    assert!(measured(&by_config).contains(d2) && !measured(&by_config).contains(d1));
    assert!(measured(&by_digest).contains(d1) && !measured(&by_digest).contains(d2));
    // The command line wins over the configuration.
    let over = expect(&[
        "--config",
        &cfg("v2b.toml", "tag = \"v2\"\n"),
        "--tag",
        "v1",
    ]);
    assert!(measured(&over).contains(d1), "{over}");
    // The configuration's tag is honoured: without it, the same configuration fails.
    let out = run(&[
        "expect",
        &r,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--config",
        &cfg("none.toml", "platform = \"linux/amd64\"\n"),
    ]);
    assert!(
        !out.ok && out.stderr.contains("choose one with --tag"),
        "{}",
        out.stderr
    );
    let bad = cfg("typo.toml", "tag = \"\"\n");
    let out = run(&["expect", &r, "--gateway", &gw.url, "--config", &bad]);
    assert!(
        !out.ok && out.stderr.contains("is not a tag name"),
        "{}",
        out.stderr
    );
}

#[test]
fn referrers_beside_the_image_are_skipped() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("signed");
    let entries = umoci_layout(&layout, &["latest"]);
    let subject = subject_of(&entries[0]);
    // An SBOM the way `oras attach` lists it (untagged, `artifactType` only), and a signature
    // whose entry carries `subject` too.
    oras_attach(
        &layout,
        &subject,
        "application/spdx+json",
        "sbom.spdx.json",
        br#"{"spdxVersion":"SPDX-2.3"}"#,
    );
    // A third whose entry says nothing about itself: only its manifest's `subject` tells.
    let bare = oras_attach(
        &layout,
        &subject,
        "application/vnd.example.provenance+json",
        "provenance.json",
        b"{}\n",
    );
    let sig = oras_attach(
        &layout,
        &subject,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "signature.json",
        br#"{"sig":"..."}"#,
    );
    let p = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    for e in index["manifests"].as_array_mut().unwrap() {
        if e["digest"] == sig.as_str() {
            e["subject"] = subject.clone();
            e.as_object_mut().unwrap().remove("artifactType");
        }
        if e["digest"] == bare.as_str() {
            e.as_object_mut().unwrap().remove("artifactType");
        }
    }
    std::fs::write(&p, serde_json::to_vec(&index).unwrap()).unwrap();
    let car = work.path().join("signed.car");
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    let out = inspect(&gw, &root, &[]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json()["manifest_digest"], entries[0]["digest"]);
    assert_eq!(out.json()["kind"], "image");
    // A referrer can still be asked for by digest; it is an artifact.
    let out = inspect(&gw, &root, &["--digest", &sig]);
    assert!(out.ok, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["kind"], "artifact");
    assert_eq!(v["subject"], entries[0]["digest"]);
}

#[test]
fn gateway_redirects_are_followed_and_what_arrives_is_verified() {
    let work = tempfile::tempdir().unwrap();
    let (amd, _, p) = publish_layout(work.path());
    let gw = Gateway::start(&p.cars, work.path());
    let ca = gw.ca.to_str().unwrap();
    let r = format!("ipfs://{}", p.root);
    // Cross origin, from plain http to https, as dweb.link and ipfs.io redirect.
    for status in [301, 302, 307, 308] {
        let hop = Redirector::start(status, Some(gw.url.clone()));
        let out = run_logged(&["inspect", &r, "--gateway", &hop.url, "--ca", ca, "--json"]);
        assert_describes(&out, &amd, "oci-layout");
        assert!(out.stderr.contains("gateway redirected"), "{}", out.stderr);
        assert!(hop.hits.load(std::sync::atomic::Ordering::SeqCst) > 0);
    }
    // Two hops, and whole layers through CAR requests.
    let second = Redirector::start(301, Some(gw.url.clone()));
    let first = Redirector::start(302, Some(second.url.clone()));
    let dir = work.path().join("pulled");
    let out = run_logged(&[
        "pull",
        &r,
        "--gateway",
        &first.url,
        "--ca",
        ca,
        "--oci-layout",
        dir.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    for b in amd.layers.iter().chain([&amd.config, &amd.manifest]) {
        assert_eq!(
            std::fs::read(dir.join("blobs/sha256").join(b.hex())).unwrap(),
            b.bytes
        );
    }
    // A redirect loop ends after 5 hops, and the next gateway is tried.
    let looping = Redirector::start(302, None);
    let out = run_logged(&[
        "inspect",
        &r,
        "--gateway",
        &looping.url,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--json",
    ]);
    assert_describes(&out, &amd, "oci-layout");
    assert!(
        out.stderr.contains("more than 5 redirects"),
        "{}",
        out.stderr
    );
}

#[test]
fn raw_only_and_car_only_gateways_are_used_in_the_format_they_speak() {
    let work = tempfile::tempdir().unwrap();
    let (amd, _, p) = publish_layout(work.path());
    let upstream = Gateway::start_plain(&p.cars);
    let r = format!("ipfs://{}", p.root);
    for (refuses, said) in [
        ("car", "refuses CAR responses"),
        ("raw", "refuses raw blocks"),
    ] {
        let filter = FormatFilter::start(&upstream.url, refuses);
        let dir = work.path().join(format!("pulled-{refuses}"));
        let out = run_logged(&[
            "pull",
            &r,
            "--gateway",
            &filter.url,
            "--oci-layout",
            dir.to_str().unwrap(),
        ]);
        assert!(out.ok, "{refuses}: {}", out.stderr);
        // The 1.5 MB layer is a file DAG of several blocks: it arrived whole and verified.
        for b in amd.layers.iter().chain([&amd.config, &amd.manifest]) {
            assert_eq!(
                std::fs::read(dir.join("blobs/sha256").join(b.hex())).unwrap(),
                b.bytes,
                "{refuses}: {}",
                b.digest
            );
        }
        assert!(out.stderr.contains(said), "{refuses}: {}", out.stderr);
        // Refused once, then remembered for the rest of the run.
        assert_eq!(
            filter.refusals.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{refuses}: {}",
            out.stderr
        );
    }
}

#[test]
fn a_failed_fetch_names_the_file_in_the_layout() {
    let work = tempfile::tempdir().unwrap();
    let (amd, _, dir) = two_arch_layout(work.path());
    let car = work.path().join("layout.car");
    let root = ipfs_car_pack(&dir, &car, false);
    // A gateway that has every block of the layout but the manifest's.
    let full = std::fs::read(&car).unwrap();
    let manifest_cid = cidboot::reference::raw_cid(&amd.manifest.bytes);
    let short = work.path().join("short.car");
    std::fs::write(&short, without_block(&full, &manifest_cid)).unwrap();
    let gw = Gateway::start(&[short], work.path());
    let out = inspect(&gw, &root, &[]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&format!(
            "manifest {} (blobs/sha256/{})",
            amd.manifest.digest,
            amd.manifest.hex()
        )),
        "{}",
        out.stderr
    );
}

/// A CARv1 with one block left out.
fn without_block(car: &[u8], cid: &cid::Cid) -> Vec<u8> {
    let want = cid.to_bytes();
    let section = |pos: usize| {
        let (len, after) = unsigned_varint::decode::usize(&car[pos..]).unwrap();
        let body = car.len() - after.len();
        (body, body + len)
    };
    let (_, mut pos) = section(0);
    let mut out = car[..pos].to_vec();
    while pos < car.len() {
        let (body, end) = section(pos);
        if !car[body..end].starts_with(&want) {
            out.extend_from_slice(&car[pos..end]);
        }
        pos = end;
    }
    assert!(out.len() < car.len(), "the block was not in the CAR");
    out
}

#[test]
fn platform_chooses_among_entries_without_one_by_their_configs() {
    use std::ffi::OsStr;
    // Two single-platform images written by umoci, whose index.json entries carry a tag and
    // no platform; the second is made arm64 in its config only.
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("platforms");
    umoci_layout(&layout, &["amd", "arm"]);
    umoci(&[
        OsStr::new("config"),
        OsStr::new("--image"),
        OsStr::new(&format!("{}:arm", layout.display())),
        OsStr::new("--architecture"),
        OsStr::new("arm64"),
    ]);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{index}");
    assert!(
        entries.iter().all(|e| e.get("platform").is_none()),
        "{index}"
    );
    let digest_of = |tag: &str| {
        entries
            .iter()
            .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()["digest"]
            .clone()
    };
    let car = layout.with_extension("car");
    let root = ipfs_car_pack(&layout, &car, false);
    let gw = Gateway::start(&[car], work.path());
    for (platform, tag) in [("linux/arm64", "arm"), ("linux/amd64", "amd")] {
        let out = inspect(&gw, &root, &["--platform", platform]);
        assert!(out.ok, "{platform}: {}", out.stderr);
        assert_eq!(out.json()["manifest_digest"], digest_of(tag), "{platform}");
        assert_eq!(out.json()["platform"], platform);
    }
    let out = inspect(&gw, &root, &["--platform", "linux/s390x"]);
    assert!(
        !out.ok
            && out.stderr.contains(
                "no manifest for linux/s390x in the index (available, from the images' configs: \
                 linux/amd64, linux/arm64)"
            ),
        "{}",
        out.stderr
    );
    // unpack applies the image the platform chose.
    let rootfs = work.path().join("root");
    let out = run(&[
        "unpack",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--platform",
        "linux/arm64",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        std::fs::read(rootfs.join("etc/greeting")).unwrap(),
        b"hello from arm\n"
    );
}
