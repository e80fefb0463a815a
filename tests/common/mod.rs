//! Shared test support: OCI layouts, ipfs-car, and a real `cidboot gateway` process.
#![allow(dead_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::json;
use sha2::{Digest, Sha256};

pub mod helia;
pub mod kms;

pub fn cidboot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cidboot"))
}

/// The independent packer. CI installs it (scripts/test.sh); a missing tool is a failure.
pub fn ipfs_car() -> PathBuf {
    if let Ok(p) = std::env::var("CIDBOOT_IPFS_CAR") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/cidboot/tools/node_modules/.bin/ipfs-car");
    assert!(
        p.exists(),
        "ipfs-car not found at {} (run scripts/test.sh, which installs it)",
        p.display()
    );
    p
}

/// Runs `ipfs-car pack PATH` and returns the root CID it prints.
pub fn ipfs_car_pack(path: &Path, out: &Path, no_wrap: bool) -> String {
    let mut c = Command::new(ipfs_car());
    c.arg("pack").arg(path).arg("--output").arg(out);
    if no_wrap {
        c.arg("--no-wrap");
    }
    let o = c.output().expect("run ipfs-car");
    assert!(
        o.status.success(),
        "ipfs-car failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A tar archive of `(path, contents)` regular files.
pub fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// Deterministic pseudo-random bytes that gzip cannot shrink much.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A blob in an image, as written.
#[derive(Clone, Debug)]
pub struct BlobInfo {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl BlobInfo {
    fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        BlobInfo {
            digest: format!("sha256:{}", sha256_hex(&bytes)),
            size: bytes.len() as u64,
            media_type: media_type.into(),
            bytes,
        }
    }
    pub fn hex(&self) -> &str {
        &self.digest[7..]
    }
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// An image: layers, config and manifest, not yet placed anywhere.
#[derive(Clone, Debug)]
pub struct Image {
    pub layers: Vec<BlobInfo>,
    pub config: BlobInfo,
    pub manifest: BlobInfo,
}

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Builds an image from layers of files; `layer_urls` maps a layer to extra descriptor fields.
pub fn image(arch: &str, layers: &[Vec<(&str, Vec<u8>)>]) -> Image {
    image_with(arch, layers, |_, d| d)
}

pub fn image_with(
    arch: &str,
    layers: &[Vec<(&str, Vec<u8>)>],
    mut layer_desc: impl FnMut(&BlobInfo, serde_json::Value) -> serde_json::Value,
) -> Image {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for files in layers {
        let t = tar_of(files);
        diff_ids.push(format!("sha256:{}", sha256_hex(&t)));
        blobs.push(BlobInfo::new(MT_LAYER_GZ, gzip(&t)));
    }
    let config = json!({
        "architecture": arch, "os": "linux",
        "config": {"Entrypoint": ["/bin/hello"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = BlobInfo::new(MT_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": config.descriptor(),
        "layers": blobs.iter().map(|b| layer_desc(b, b.descriptor())).collect::<Vec<_>>(),
    });
    let manifest = BlobInfo::new(MT_MANIFEST, serde_json::to_vec_pretty(&manifest).unwrap());
    Image {
        layers: blobs,
        config,
        manifest,
    }
}

/// Writes an OCI image layout (a) holding the given images, each described in index.json
/// with its platform.
pub fn write_layout(dir: &Path, images: &[(&str, &Image)]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for (arch, img) in images {
        for b in img.layers.iter().chain([&img.config, &img.manifest]) {
            std::fs::write(blobs.join(b.hex()), &b.bytes).unwrap();
        }
        let mut d = img.manifest.descriptor();
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        manifests.push(d);
    }
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// A running `cidboot gateway` over HTTPS with a fresh CA; killed on drop.
pub struct Gateway {
    pub url: String,
    pub ca: PathBuf,
    child: Child,
}

impl Gateway {
    pub fn start(cars: &[PathBuf], work: &Path) -> Gateway {
        let ca = work.join(format!("ca-{}.pem", fastrand::u32(..)));
        let mut c = cidboot();
        c.arg("gateway")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--tls-self-signed")
            .arg(&ca);
        for car in cars {
            c.arg("--car").arg(car);
        }
        let mut child = c
            .env("CIDBOOT_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cidboot gateway");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(
            url.starts_with("https://127.0.0.1:"),
            "gateway said {url:?}"
        );
        Gateway { url, ca, child }
    }
}

impl Gateway {
    /// The same over plain HTTP (for test gateways of our own in front of it).
    pub fn start_plain(cars: &[PathBuf]) -> Gateway {
        let mut c = cidboot();
        c.arg("gateway").arg("--listen").arg("127.0.0.1:0");
        for car in cars {
            c.arg("--car").arg(car);
        }
        let mut child = c
            .env("CIDBOOT_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cidboot gateway");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(url.starts_with("http://127.0.0.1:"), "gateway said {url:?}");
        Gateway {
            url,
            ca: PathBuf::new(),
            child,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory only its owner can enter: where `cidboot run --rootfs` may keep a
/// root (it refuses a place other users can reach).
pub fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

/// Output of a cidboot command.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("bad JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

pub fn run(args: &[&str]) -> Out {
    let o = cidboot()
        .args(args)
        .env("CIDBOOT_LOG", "warn")
        .output()
        .expect("run cidboot");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Builds the static test programs of `sample/` once per test run.
pub fn sample_bin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = "x86_64-unknown-linux-gnu";
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--release",
                "--locked",
                "--target",
                target,
                "--manifest-path",
            ])
            .arg(repo.join("sample/Cargo.toml"))
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .status()
            .expect("build the sample programs");
        assert!(st.success(), "building sample programs failed");
        // Cargo puts them under CARGO_TARGET_DIR when it is set.
        std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("sample/target"))
            .join(target)
            .join("release")
    });
    dir.join(name)
}

/// A tar entry for [`tar_entries`].
pub enum TarEntry<'a> {
    File {
        path: &'a str,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: &'a str,
        mode: u32,
        uid: u64,
    },
    CharDev {
        path: &'a str,
        major: u32,
        minor: u32,
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
    Hardlink {
        path: &'a str,
        target: &'a str,
    },
}

pub fn tar_entries(entries: &[TarEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            TarEntry::File { path, data, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                h.set_cksum();
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            TarEntry::Dir { path, mode, uid } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_cksum();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            TarEntry::Symlink { path, target } | TarEntry::Hardlink { path, target } => {
                let kind = if matches!(e, TarEntry::Symlink { .. }) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_size(0);
                h.set_mode(0o777);
                h.set_link_name(target).unwrap();
                h.set_cksum();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
            TarEntry::CharDev { path, major, minor } => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_size(0);
                h.set_mode(0o666);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                h.set_cksum();
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// An image from raw (uncompressed) layer tars and an image `config` object.
pub fn image_from_tars(tars: &[Vec<u8>], config: serde_json::Value) -> Image {
    image_from_tars_with(tars, config, |_, d| d)
}

pub fn image_from_tars_with(
    tars: &[Vec<u8>],
    config: serde_json::Value,
    mut diff_id: impl FnMut(usize, String) -> String,
) -> Image {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        diff_ids.push(diff_id(i, format!("sha256:{}", sha256_hex(t))));
        blobs.push(BlobInfo::new(MT_LAYER_GZ, gzip(t)));
    }
    let config = json!({
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = BlobInfo::new(MT_CONFIG, serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": config.descriptor(),
        "layers": blobs.iter().map(|b| b.descriptor()).collect::<Vec<_>>(),
    });
    let manifest = BlobInfo::new(MT_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    Image {
        layers: blobs,
        config,
        manifest,
    }
}

/// Writes the layout, packs it with ipfs-car and serves it; returns the reference.
pub fn publish(img: &Image, work: &Path) -> (String, Gateway) {
    let dir = work.join(format!("layout-{}", fastrand::u32(..)));
    write_layout(&dir, &[("amd64", img)]);
    let car = dir.with_extension("car");
    let root = ipfs_car_pack(&dir, &car, false);
    (format!("ipfs://{root}"), Gateway::start(&[car], work))
}

/// What a `cidboot run` printed and how it ended.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(String::from)
            .collect()
    }
    pub fn line(&self, prefix: &str) -> String {
        self.lines(prefix)
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("no {prefix:?} in {}\n{}", self.stdout, self.stderr))
    }
}

/// Publishes `img` and boots it with `cidboot run` (a fresh gateway, its own API port).
pub fn run_image(img: &Image, config: Option<&str>, helpers: Option<&Path>, extra: &[&str]) -> Ran {
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

pub const PASSWD: &str =
    "root:x:0:0:root:/root:/bin/probe\napp:x:1000:1000:app:/home/app:/bin/probe\n";
pub const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app\naudio:x:29:someone,app\n";

/// The probe image's base: the probe, passwd and group, a home, and a hostile /dev/nsm.
pub fn base_layer() -> Vec<u8> {
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

pub fn probe_image(config: serde_json::Value) -> Image {
    image_from_tars(&[base_layer()], config)
}

/// A helper directory holding the named sample programs, and the `[helpers]` pins for it.
pub fn helper_dir(work: &Path, names: &[&str]) -> (std::path::PathBuf, String) {
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

/// Runs Debian's umoci (installed by scripts/setup-tools.sh); a failure fails the test.
pub fn umoci(args: &[&std::ffi::OsStr]) {
    let o = Command::new("umoci")
        .args(args)
        .output()
        .expect("umoci (installed by scripts/setup-tools.sh)");
    assert!(
        o.status.success(),
        "umoci {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Reads a JSON blob of an OCI layout by digest.
pub fn layout_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
}

/// The manifest of the first entry of a layout's index.json.
pub fn layout_manifest(layout: &Path) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let d = index["manifests"][0]["digest"].as_str().unwrap();
    serde_json::from_slice(&layout_blob(layout, d)).unwrap()
}

/// Layout files of one blob: writes it under `blobs/sha256` and returns its descriptor.
pub fn put_blob(layout: &Path, media_type: &str, bytes: &[u8]) -> serde_json::Value {
    let hex = sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
}

/// Appends an entry to a layout's index.json.
pub fn add_index_entry(layout: &Path, entry: serde_json::Value) {
    let p = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(&p, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The empty descriptor of image-spec 1.1, as `oras` writes it for an artifact's config.
pub const EMPTY_DIGEST: &str =
    "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

/// Attaches a referrer to `subject` the way `oras attach --oci-layout` does: an artifact
/// manifest with the empty config, one titled layer and `subject`, listed untagged in
/// index.json with its `artifactType`. Returns the referrer manifest's digest.
pub fn oras_attach(
    layout: &Path,
    subject: &serde_json::Value,
    artifact_type: &str,
    file: &str,
    bytes: &[u8],
) -> String {
    let config = put_blob(layout, "application/vnd.oci.empty.v1+json", b"{}");
    assert_eq!(config["digest"], EMPTY_DIGEST);
    let mut layer = put_blob(layout, artifact_type, bytes);
    layer["annotations"] = json!({"org.opencontainers.image.title": file});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": EMPTY_DIGEST, "size": 2, "data": "e30="},
        "layers": [layer],
        "subject": subject,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    });
    let mut d = put_blob(layout, MT_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    d["artifactType"] = json!(artifact_type);
    add_index_entry(layout, d.clone());
    d["digest"].as_str().unwrap().to_string()
}

/// A layout written by umoci: one image per tag, each with `/etc/greeting` saying
/// "hello from TAG". Returns each tag's index.json descriptor.
pub fn umoci_layout(layout: &Path, tags: &[&str]) -> Vec<serde_json::Value> {
    use std::ffi::OsStr;
    let src = layout.with_extension("src");
    std::fs::create_dir_all(&src).unwrap();
    umoci(&[
        OsStr::new("init"),
        OsStr::new("--layout"),
        layout.as_os_str(),
    ]);
    for tag in tags {
        let image = format!("{}:{tag}", layout.display());
        let file = src.join(tag);
        std::fs::write(&file, format!("hello from {tag}\n")).unwrap();
        umoci(&[OsStr::new("new"), OsStr::new("--image"), OsStr::new(&image)]);
        umoci(&[
            OsStr::new("insert"),
            OsStr::new("--rootless"),
            OsStr::new("--image"),
            OsStr::new(&image),
            file.as_os_str(),
            OsStr::new("/etc/greeting"),
        ]);
    }
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    tags.iter()
        .map(|t| {
            index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == *t)
                .unwrap_or_else(|| panic!("umoci wrote no entry for {t}"))
                .clone()
        })
        .collect()
}

/// A small test gateway of our own: answers every request with a redirect to `to` + the
/// request's path (or to itself, a loop, when `to` is None). Counts the requests.
pub struct Redirector {
    pub url: String,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Redirector {
    pub fn start(status: u16, to: Option<String>) -> Redirector {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (base, counter) = (to.unwrap_or_else(|| url.clone()), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} Moved\r\nLocation: {base}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Redirector { url, hits }
    }
}

/// Runs cidboot with info logging, so that what it did with gateways shows.
pub fn run_logged(args: &[&str]) -> Out {
    let o = cidboot()
        .args(args)
        .env("CIDBOOT_LOG", "info")
        .output()
        .expect("run cidboot");
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A small test gateway of our own in front of a plain-http `cidboot gateway`: answers 406 to
/// every request for the format it `refuses` ("car" or "raw") and passes the rest through.
/// Counts the refusals.
pub struct FormatFilter {
    pub url: String,
    pub refusals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FormatFilter {
    pub fn start(upstream: &str, refuses: &'static str) -> FormatFilter {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let refusals = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = refusals.clone();
        let upstream = upstream.trim_start_matches("http://").to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (upstream, counter) = (upstream.clone(), counter.clone());
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req).into_owned();
                    let path = head
                        .lines()
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let accept = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("accept:")
                                .then(|| l[7..].trim().to_string())
                        })
                        .unwrap_or_default();
                    if path.contains(&format!("format={refuses}")) {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = write!(
                            conn,
                            "HTTP/1.1 406 Not Acceptable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        return;
                    }
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = write!(
                        up,
                        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
                    );
                    let _ = std::io::copy(&mut up, &mut conn);
                });
            }
        });
        FormatFilter { url, refusals }
    }
}

/// A layout written by umoci whose one layer is `umoci insert --rootless DIR /`: its first
/// entry is named `/` and carries DIR's mode (`root_mode`). DIR holds `etc/hello`. Returns the
/// layer's tar, decompressed.
pub fn umoci_root_insert(layout: &Path, root_mode: u32) -> Vec<u8> {
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;
    let src = layout.with_extension("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hello"), b"hello from the root\n").unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(root_mode)).unwrap();
    umoci(&[
        OsStr::new("init"),
        OsStr::new("--layout"),
        layout.as_os_str(),
    ]);
    let image = format!("{}:latest", layout.display());
    umoci(&[OsStr::new("new"), OsStr::new("--image"), OsStr::new(&image)]);
    umoci(&[
        OsStr::new("insert"),
        OsStr::new("--rootless"),
        OsStr::new("--image"),
        OsStr::new(&image),
        src.as_os_str(),
        OsStr::new("/"),
    ]);
    let manifest = layout_manifest(layout);
    let digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let mut tar = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&layout_blob(layout, digest)[..]),
        &mut tar,
    )
    .unwrap();
    // The property the callers test: umoci named the root's own entry `/`.
    assert_eq!(&tar[..2], b"/\0", "umoci no longer names the root entry /");
    tar
}

/// The top-level fields docs/json.md lists in the `n`th table (from 0) of its `## `section``
/// section, in order.
pub fn documented_fields(section: &str, n: usize) -> Vec<String> {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json.md")).unwrap();
    let body = page
        .split("\n## ")
        .find(|s| s.starts_with(section))
        .unwrap_or_else(|| panic!("no section {section:?} in docs/json.md"));
    let mut tables: Vec<Vec<String>> = Vec::new();
    let mut in_table = false;
    for line in body.lines() {
        if line.starts_with("| field |") {
            tables.push(Vec::new());
            in_table = true;
        } else if in_table && line.starts_with("| `") {
            let name = line[3..].split('`').next().unwrap().to_string();
            tables.last_mut().unwrap().push(name);
        } else if !line.starts_with('|') {
            in_table = false;
        }
    }
    tables
        .get(n)
        .cloned()
        .unwrap_or_else(|| panic!("no table {n} in section {section:?}"))
}

/// The top-level keys of a JSON object, in the order written.
pub fn keys_in_order(text: &str) -> Vec<String> {
    struct Keys(Vec<String>);
    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Keys;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Keys, A::Error> {
                    let mut keys = Vec::new();
                    while let Some(k) = m.next_key::<String>()? {
                        m.next_value::<serde::de::IgnoredAny>()?;
                        keys.push(k);
                    }
                    Ok(Keys(keys))
                }
            }
            d.deserialize_map(V)
        }
    }
    serde_json::from_str::<Keys>(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .0
}

/// Asserts that `text` is a JSON object with exactly the fields docs/json.md lists, in order.
pub fn assert_documented(text: &str, section: &str, table: usize) {
    assert_eq!(
        keys_in_order(text),
        documented_fields(section, table),
        "`{section}` (table {table}): {text}"
    );
}
