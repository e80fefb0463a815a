//! Round trips through a real HTTPS `cidboot gateway` process serving CARs made by ipfs-car,
//! for the three ways an image can be published.

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
