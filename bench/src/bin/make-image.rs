//! Generates the pull-and-apply reference image from real files on this machine: three layers
//! (about 180, 100 and 50 MB of files), as an OCI layout and a CAR.
//! Usage: make-image OUT_DIR [SCALE [gzip|zstd]]  (SCALE multiplies the layer budgets; 1 and
//! gzip by default)

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Where real files come from, in order; symlinks and special files are skipped.
const SOURCES: &[&str] = &[
    "/usr/lib",
    "/usr/share",
    "/usr/bin",
    "/root/.rustup/toolchains",
    "/usr/libexec",
];

fn files(budget: u64, skip: &mut u64) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = SOURCES.iter().rev().map(PathBuf::from).collect();
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            let Ok(rd) = std::fs::read_dir(&p) else {
                continue;
            };
            let mut kids: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            kids.sort();
            stack.extend(kids.into_iter().rev());
        } else if m.is_file() && m.len() > 0 {
            // Skip the files earlier layers took.
            if *skip > 0 {
                *skip = skip.saturating_sub(m.len());
                continue;
            }
            total += m.len();
            out.push(p);
            if total >= budget {
                break;
            }
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Compression {
    Gzip,
    Zstd,
}

fn layer(paths: &[PathBuf], compression: Compression) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    tar.mode(tar::HeaderMode::Deterministic);
    for p in paths {
        let name = p.strip_prefix("/").unwrap_or(p);
        if tar.append_path_with_name(p, name).is_err() {
            continue;
        }
    }
    let raw = tar.into_inner().expect("tar in memory");
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
    let compressed = match compression {
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&raw).expect("gzip in memory");
            gz.finish().expect("gzip in memory")
        }
        // Level 3 is zstd's and containerd's default.
        Compression::Zstd => zstd::bulk::compress(&raw, 3).expect("zstd in memory"),
    };
    (compressed, diff_id)
}

fn blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).expect("write blob");
    (format!("sha256:{hex}"), data.len())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().expect("usage: make-image OUT_DIR [SCALE]"));
    let scale: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let (compression, media_type) = match args.next().as_deref() {
        None | Some("gzip") => (
            Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        Some("zstd") => (
            Compression::Zstd,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        Some(other) => panic!("unknown compression {other}"),
    };
    let layout = out.join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).expect("mkdir");
    let mut skip = 0u64;
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_files = Vec::new();
    for budget_mb in [180.0, 100.0, 50.0] {
        let budget = (budget_mb * scale * 1e6) as u64;
        let paths = files(budget, &mut skip);
        skip += paths
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>();
        let (compressed, diff_id) = layer(&paths, compression);
        let (digest, size) = blob(&layout, &compressed);
        layer_files.push(layout.join("blobs/sha256").join(&digest[7..]));
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
        diff_ids.push(diff_id);
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = blob(&layout, &serde_json::to_vec(&config).expect("json"));
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs}, "layers": layers});
    let (md, ms) = blob(&layout, &serde_json::to_vec(&manifest).expect("json"));
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "platform": {"architecture": "amd64", "os": "linux"}, "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("write");
    let car = out.join("image.car");
    let packed = cidboot::publish::pack::pack_dir(&layout, &car).expect("pack");
    println!(
        "{}",
        serde_json::json!({"cid": packed.root_cid, "car": car, "layout": layout, "layers": layer_files})
    );
}
