//! Encrypted (ocicrypt) layers, as Debian's skopeo makes them (`skopeo copy --encryption-key
//! jwe:PUB.pem`): shown by `inspect`, copied as they are by `pull`, refused by `unpack` and
//! `run` without their key (naming them) or with another, opened with it; a ciphertext or an
//! authentication tag changed by the publisher is refused before anything of the layer is
//! decrypted, and the root is left empty.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// An RSA key pair made by openssl: (private PEM, public PEM).
fn keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl genrsa");
    let ok = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(ok.status.success(), "openssl rsa -pubout");
    (private, public)
}

/// `skopeo copy ARGS oci:SRC oci:DST` (Debian's skopeo, from scripts/setup-tools.sh).
fn skopeo_copy(src: &Path, dst: &Path, args: &[&str]) {
    let o = Command::new("skopeo")
        .arg("copy")
        .arg("-q")
        .args(args)
        .arg(format!("oci:{}", src.display()))
        .arg(format!("oci:{}", dst.display()))
        .output()
        .expect("skopeo (installed by scripts/setup-tools.sh)");
    assert!(
        o.status.success(),
        "skopeo copy {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `img` copied by skopeo with `args` (which layers, what compression) and encrypted for a
/// fresh key pair, the enclave's, then for each of the `more` recipients' public keys: the
/// enclave's private key and the encrypted layout.
fn encrypt(work: &Path, img: &Image, args: &[&str], more: &[&Path]) -> (PathBuf, PathBuf) {
    let (private, public) = keypair(work, "enclave");
    let src = work.join("src");
    write_layout(&src, &[("amd64", img)]);
    let dst = work.join(format!("enc-{}", fastrand::u32(..)));
    let keys: Vec<String> = std::iter::once(public.as_path())
        .chain(more.iter().copied())
        .flat_map(|k| {
            [
                "--encryption-key".to_string(),
                format!("jwe:{}", k.display()),
            ]
        })
        .collect();
    let all: Vec<&str> = args
        .iter()
        .copied()
        .chain(keys.iter().map(String::as_str))
        .collect();
    skopeo_copy(&src, &dst, &all);
    (private, dst)
}

/// An image encrypted by skopeo (see [`encrypt`]), packed by ipfs-car and served by a real
/// HTTPS gateway: where every test starts.
struct Encrypted {
    /// The enclave's private key (PEM), which opens every encrypted layer.
    private: PathBuf,
    /// The layout skopeo wrote.
    layout: PathBuf,
    /// `ipfs://<root CID>` of its CAR.
    reference: String,
    gw: Gateway,
}

impl Encrypted {
    fn new(work: &Path, img: &Image, args: &[&str], more: &[&Path]) -> Encrypted {
        let (private, layout) = encrypt(work, img, args, more);
        let (reference, gw) = serve(&layout, work);
        Encrypted {
            private,
            layout,
            reference,
            gw,
        }
    }

    /// The enclave's private key, as `--decryption-key` takes it.
    fn key(&self) -> &str {
        self.private.to_str().unwrap()
    }

    /// `REF --gateway URL --ca CA`, for any command that fetches the image.
    fn source(&self) -> [&str; 5] {
        [
            &self.reference,
            "--gateway",
            &self.gw.url,
            "--ca",
            self.gw.ca.to_str().unwrap(),
        ]
    }

    /// `cidboot unpack` of the image into `rootfs`.
    fn unpack(&self, rootfs: &Path, extra: &[&str]) -> Out {
        unpack(&self.reference, &self.gw, rootfs, extra)
    }

    /// `cidboot run` of the image, its attestation API on a free port, with `extra` flags:
    /// (exit code, stdout, stderr).
    fn boot(&self, extra: &[&str]) -> (Option<i32>, String, String) {
        let o = cidboot()
            .arg("run")
            .args(self.source())
            .args(["--attestation-listen", "127.0.0.1:0"])
            .args(extra)
            .env("CIDBOOT_LOG", "warn")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
}

/// The media types of a layout's layers.
fn media_types(layout: &Path) -> Vec<String> {
    layout_manifest(layout)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

/// Packs a layout with ipfs-car and serves it.
fn serve(layout: &Path, work: &Path) -> (String, Gateway) {
    let car = layout.with_extension("car");
    let root = ipfs_car_pack(layout, &car, false);
    (format!("ipfs://{root}"), Gateway::start(&[car], work))
}

fn unpack(reference: &str, gw: &Gateway, rootfs: &Path, extra: &[&str]) -> Out {
    let mut args = vec![
        "unpack",
        reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Rewrites layer `i` of a layout's (only) manifest as a publisher could: `f` changes its
/// descriptor and blob, and the manifest and index.json are rewritten to match, so that
/// every digest the CID roots is right.
fn rewrite_layer(layout: &Path, i: usize, f: impl FnOnce(&mut Value, &mut Vec<u8>)) {
    let mut manifest = layout_manifest(layout);
    let desc = &mut manifest["layers"][i];
    let mut blob = layout_blob(layout, desc["digest"].as_str().unwrap());
    f(desc, &mut blob);
    let new = put_blob(layout, "", &blob);
    desc["digest"] = new["digest"].clone();
    desc["size"] = new["size"].clone();
    let m = put_blob(layout, MT_MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    let p = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    index["manifests"][0]["digest"] = m["digest"].clone();
    index["manifests"][0]["size"] = m["size"].clone();
    std::fs::write(&p, serde_json::to_vec(&index).unwrap()).unwrap();
}

fn three_layers() -> Image {
    image(
        "amd64",
        &[
            vec![("etc/greeting", b"hello\n".to_vec())],
            vec![("opt/model/weights", noise(300_000, 7))],
            vec![
                ("etc/greeting", b"hello again\n".to_vec()),
                ("opt/model/config", b"{\"layers\": 3}".to_vec()),
            ],
        ],
    )
}

fn assert_three_layers_applied(rootfs: &Path) {
    assert_eq!(
        std::fs::read(rootfs.join("etc/greeting")).unwrap(),
        b"hello again\n"
    );
    assert_eq!(
        std::fs::read(rootfs.join("opt/model/weights")).unwrap(),
        noise(300_000, 7)
    );
    assert_eq!(
        std::fs::read(rootfs.join("opt/model/config")).unwrap(),
        b"{\"layers\": 3}"
    );
}

/// Nothing of the image reached the root: it was never made, or is left empty.
fn assert_nothing_applied(rootfs: &Path) {
    if rootfs.exists() {
        assert_eq!(
            std::fs::read_dir(rootfs).unwrap().count(),
            0,
            "root left non-empty"
        );
    }
}

#[test]
fn inspect_shows_the_encrypted_layers_and_unpack_without_the_key_names_them() {
    let work = tempfile::tempdir().unwrap();
    let (_, public2) = keypair(work.path(), "operator");
    // The middle layer only, for two recipients.
    let img = Encrypted::new(
        work.path(),
        &three_layers(),
        &["--encrypt-layer", "1"],
        &[&public2],
    );
    assert_eq!(
        media_types(&img.layout),
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ]
    );
    let out = run(&[&["inspect"], &img.source()[..], &["--json"]].concat());
    assert!(out.ok, "{}", out.stderr);
    let layers = out.json()["layers"].clone();
    assert!(layers[0].get("encryption").is_none(), "{layers}");
    assert!(layers[2].get("encryption").is_none(), "{layers}");
    assert_eq!(
        layers[1]["encryption"],
        json!({"cipher": "AES_256_CTR_HMAC_SHA256", "recipients": ["jwe RSA-OAEP 2048-bit", "jwe RSA-OAEP 2048-bit"]})
    );
    let human = run(&[&["inspect"], &img.source()[..]].concat());
    assert!(
        human
            .stdout
            .contains("encrypted: AES_256_CTR_HMAC_SHA256; recipients: jwe RSA-OAEP 2048-bit, jwe RSA-OAEP 2048-bit"),
        "{}",
        human.stdout
    );

    let rootfs = work.path().join("root");
    let out = img.unpack(&rootfs, &[]);
    assert!(!out.ok);
    let digest = layers[1]["digest"].as_str().unwrap();
    assert!(
        out.stderr.contains(&format!(
            "this image has a layer that is encrypted (layer 1 {digest}); give the private key that opens them (--decryption-key FILE"
        )),
        "{}",
        out.stderr
    );
    assert_nothing_applied(&rootfs);

    // The public options are the publisher's text: a cipher named with terminal controls is
    // shown escaped, never acted on.
    rewrite_layer(&img.layout, 1, |d, _| {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let key = "org.opencontainers.image.enc.pubopts";
        let mut opts: Value =
            serde_json::from_slice(&b64.decode(d["annotations"][key].as_str().unwrap()).unwrap())
                .unwrap();
        opts["cipher"] = json!("\u{1b}[2J\u{9b}32mAES_256_CTR_HMAC_SHA256");
        d["annotations"][key] = json!(b64.encode(serde_json::to_vec(&opts).unwrap()));
    });
    let (reference, gw) = serve(&img.layout, work.path());
    let human = run(&[
        "inspect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
    ]);
    assert!(human.ok, "{}", human.stderr);
    assert!(
        !human.stdout.contains(['\u{1b}', '\u{9b}'])
            && human
                .stdout
                .contains("encrypted: \\u{1b}[2J\\u{9b}32mAES_256_CTR_HMAC_SHA256; recipients: "),
        "{:?}",
        human.stdout
    );
}

#[test]
fn gzip_layers_some_clear_unpack_with_the_key_and_pull_copies_them_as_they_are() {
    let work = tempfile::tempdir().unwrap();
    let img = Encrypted::new(
        work.path(),
        &three_layers(),
        &["--encrypt-layer", "1", "--encrypt-layer", "2"],
        &[],
    );
    assert_eq!(
        media_types(&img.layout)[1..],
        [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        ]
    );
    let rootfs = work.path().join("root");
    let out = img.unpack(&rootfs, &["--decryption-key", img.key(), "--json"]);
    assert!(out.ok, "{}", out.stderr);
    assert_three_layers_applied(&rootfs);
    // The encrypted blobs' sizes as fetched are the ciphertexts'.
    let manifest = layout_manifest(&img.layout);
    let report = out.json()["apply"]["layers"].clone();
    for i in 0..3 {
        assert_eq!(report[i]["compressed_bytes"], manifest["layers"][i]["size"]);
    }

    // pull: the same blobs, byte for byte, still encrypted.
    let pulled = work.path().join("pulled");
    let out = run(&[
        &["pull"],
        &img.source()[..],
        &["--oci-layout", pulled.to_str().unwrap()],
    ]
    .concat());
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(layout_manifest(&pulled), manifest);
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(layout_blob(&pulled, d), layout_blob(&img.layout, d));
    }
}

#[test]
fn zstd_every_layer_encrypted_opens_with_either_recipients_key_in_pkcs1_or_pkcs8() {
    let work = tempfile::tempdir().unwrap();
    let (private2, public2) = keypair(work.path(), "operator");
    let img = Encrypted::new(
        work.path(),
        &three_layers(),
        &["--dest-compress-format", "zstd"],
        &[&public2],
    );
    assert_eq!(
        media_types(&img.layout),
        ["application/vnd.oci.image.layer.v1.tar+zstd+encrypted"; 3]
    );
    // The second recipient's key, in the traditional PKCS#1 form.
    let pkcs1 = work.path().join("operator.pkcs1.pem");
    let o = Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&private2)
        .arg("-out")
        .arg(&pkcs1)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    for (n, key) in [&img.private, &pkcs1].into_iter().enumerate() {
        let rootfs = work.path().join(format!("root{n}"));
        let out = img.unpack(&rootfs, &["--decryption-key", key.to_str().unwrap()]);
        assert!(out.ok, "{}", out.stderr);
        assert_three_layers_applied(&rootfs);
    }
}

#[test]
fn another_key_is_refused_before_anything_is_applied() {
    let work = tempfile::tempdir().unwrap();
    let (other, _) = keypair(work.path(), "other");
    let img = Encrypted::new(
        work.path(),
        &three_layers(),
        &["--encrypt-layer", "-1"],
        &[],
    );
    let digest = layout_manifest(&img.layout)["layers"][2]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let rootfs = work.path().join("root");
    let out = img.unpack(&rootfs, &["--decryption-key", other.to_str().unwrap()]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains(&format!(
            "layer 2 ({digest}) is encrypted, but none of its 1 recipient(s) is this key"
        )),
        "{}",
        out.stderr
    );
    assert_nothing_applied(&rootfs);
    // Something that is not a key at all is named as such.
    let junk = work.path().join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let out = img.unpack(&rootfs, &["--decryption-key", junk.to_str().unwrap()]);
    assert!(!out.ok);
    assert!(
        out.stderr.contains("has no PEM private key block"),
        "{}",
        out.stderr
    );
    assert_nothing_applied(&rootfs);
}

/// A publisher's ciphertext or tag that does not match: every digest the CID roots is right
/// (the manifest names the changed blob), so only the layer's HMAC can tell.
#[test]
fn a_changed_ciphertext_or_tag_is_refused_before_anything_is_decrypted() {
    let work = tempfile::tempdir().unwrap();
    let (private, layout) = encrypt(work.path(), &three_layers(), &["--encrypt-layer", "1"], &[]);
    let copy = |name: &str| {
        let to = work.path().join(name);
        let o = Command::new("cp")
            .arg("-a")
            .arg(&layout)
            .arg(&to)
            .output()
            .unwrap();
        assert!(o.status.success());
        to
    };
    // One bit of the ciphertext, deep inside the layer.
    let blob = copy("blob");
    rewrite_layer(&blob, 1, |_, b| {
        let at = b.len() / 2;
        b[at] ^= 1;
    });
    // One bit of the HMAC in the public options.
    let tag = copy("tag");
    rewrite_layer(&tag, 1, |d, _| {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let key = "org.opencontainers.image.enc.pubopts";
        let mut opts: Value =
            serde_json::from_slice(&b64.decode(d["annotations"][key].as_str().unwrap()).unwrap())
                .unwrap();
        let mut mac = b64.decode(opts["hmac"].as_str().unwrap()).unwrap();
        mac[0] ^= 0x80;
        opts["hmac"] = json!(b64.encode(mac));
        d["annotations"][key] = json!(b64.encode(serde_json::to_vec(&opts).unwrap()));
    });
    for layout in [blob, tag] {
        let (reference, gw) = serve(&layout, work.path());
        let rootfs = work.path().join(format!("root-{}", fastrand::u32(..)));
        let out = unpack(
            &reference,
            &gw,
            &rootfs,
            &["--decryption-key", private.to_str().unwrap()],
        );
        assert!(!out.ok, "{}", layout.display());
        let digest = layout_manifest(&layout)["layers"][1]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            out.stderr.contains(&format!("layer 1 ({digest}): the encrypted blob fails its HMAC-SHA256 (the layer's authentication tag)")),
            "{}",
            out.stderr
        );
        assert_nothing_applied(&rootfs);
    }
}

#[test]
fn run_opens_the_layers_with_its_key_and_refuses_without_it() {
    let work = tempfile::tempdir().unwrap();
    let model = noise(5000, 3);
    let img = model_image(
        &model,
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["cat", "/opt/model"], "User": "app"}),
    );
    let img = Encrypted::new(work.path(), &img, &["--encrypt-layer", "1"], &[]);
    let (code, stdout, stderr) = img.boot(&["--decryption-key", img.key(), "--json"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("probe: cat /opt/model hex={}", hex(&model))),
        "{stdout}\n{stderr}"
    );
    // The log names the encrypted layer and a key from outside the configuration ("-"), and
    // `expect` (without a configuration, so naming no key either) predicts that very log.
    let boot: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let layer = layout_manifest(&img.layout)["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let events = boot["measurements"]["events"].as_array().unwrap();
    assert_eq!(events[4]["kind"], "encrypted-layers", "{events:?}");
    assert_eq!(events[4]["value"], format!("- {layer}"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["kind"] == "encrypted-layers")
            .count(),
        1
    );
    let expect = run(&[&["expect"], &img.source()[..], &["--json"]].concat());
    assert!(expect.ok, "{}", expect.stderr);
    assert_eq!(expect.json()["measurements"], boot["measurements"]);
    assert_eq!(expect.json()["pcrs"]["PCR16"], boot["pcr16"]);
    let (code, stdout, stderr) = img.boot(&[]);
    assert_ne!(code, Some(0));
    assert!(!stdout.contains("probe:"), "{stdout}");
    assert!(
        stderr.contains("this image has a layer that is encrypted (layer 1 sha256:"),
        "{stderr}"
    );
}

/// The probe, and `model` at /opt/model in a layer of its own (the one the tests encrypt).
fn model_image(model: &[u8], config: Value) -> Image {
    image_from_tars(
        &[
            base_layer(),
            tar_entries(&[
                TarEntry::Dir {
                    path: "opt",
                    mode: 0o755,
                    uid: 0,
                },
                TarEntry::File {
                    path: "opt/model",
                    mode: 0o644,
                    data: model.to_vec(),
                },
            ]),
        ],
        config,
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const ROLE: &str = "arn:aws:iam::111122223333:role/enclave-parent";

/// The image's key as a sealed secret: opened by the test KMS (tests/kms/test_kms.py: SigV4,
/// the software NSM's attestation verified against its root, the very statement `cidboot
/// expect --kms-policy` printed for this image and configuration) only for the boot whose
/// PCR16 that statement names; kept from the workload; refused under another configuration.
#[test]
fn the_configurations_sealed_key_opens_the_layers_for_the_attested_boot_only() {
    use cidboot::kms::sealed::SecretsFile;
    use cidboot::nsm::software::TestCa;
    use common::kms::{Server, Tls};
    use std::io::Write;
    use std::process::Stdio;

    let dir = private_tempdir();
    let work = dir.path();
    let model = noise(5000, 4);
    let img = model_image(&model, json!({"Entrypoint": ["/bin/probe"], "User": "app"}));
    let img = Encrypted::new(work, &img, &["--encrypt-layer", "1"], &[]);

    let tls = Tls::make(work);
    let ca = TestCa::generate().unwrap();
    let ca_cert = work.join("nsm-root.pem");
    std::fs::write(&ca_cert, ca.root_pem()).unwrap();
    let ca_key = work.join("nsm-root.key");
    std::fs::write(&ca_key, ca.key_pem()).unwrap();
    let policy = work.join("statement.json");
    std::fs::write(&policy, "{\"Effect\": \"Deny\"}").unwrap();
    let kms = Server::test_kms(&tls, &ca_cert, &policy, ROLE, None);
    let eif = work.join("eif.json");
    let m = json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "a0".repeat(48), "PCR1": "b1".repeat(48), "PCR2": "c2".repeat(48)}});
    std::fs::write(&eif, m.to_string()).unwrap();

    // `cidboot seal` of the private key's PEM, as the operator does.
    let mut seal = cidboot()
        .args([
            "seal",
            "--key-id",
            &kms.keys[0],
            "--name",
            "image-key",
            "--kms-endpoint",
        ])
        .arg(&kms.url)
        .arg("--ca")
        .arg(&tls.ca)
        .env_clear()
        .env("CIDBOOT_LOG", "warn")
        .envs(kms.env(work))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    seal.stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&img.private).unwrap())
        .unwrap();
    let o = seal.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sealed = SecretsFile::parse(&o.stdout).unwrap();
    let secrets = work.join("secrets.toml");
    std::fs::write(&secrets, sealed.secrets[0].to_toml()).unwrap();

    let nonce = "5eed".repeat(8);
    let cmd = [
        "cat",
        "/opt/model",
        "open",
        "/run/secrets/image-key",
        "cat",
        "/proc/self/environ",
        "attest",
        &nonce,
    ];
    let text = format!(
        r#"decryption_key = "image-key"

[kms]
region = "{region}"
endpoint = "{url}"

[tls]
extra_ca = """
{ca}"""

[workload]
cmd = {cmd}

[[secrets]]
name = "image-key"
key_id = "{key}"
"#,
        region = kms.region,
        url = kms.url,
        ca = std::fs::read_to_string(&tls.ca).unwrap(),
        key = kms.keys[0],
        cmd = serde_json::to_string(&cmd).unwrap(),
    );
    let config = work.join("cidboot.toml");
    std::fs::write(&config, &text).unwrap();
    let expect = |config: &Path, extra: &[&str]| {
        let o = run(&[
            &["expect"],
            &img.source()[..],
            &["--config", config.to_str().unwrap()],
            &["--eif-pcrs", eif.to_str().unwrap()],
            extra,
        ]
        .concat());
        assert!(o.ok, "expect: {}", o.stderr);
        o
    };
    let o = expect(&config, &["--kms-policy", "--principal", ROLE]);
    std::fs::write(&policy, &o.stdout).unwrap();
    let expected = expect(&config, &["--json"]).json();

    let boot = |config: &Path, extra: &[&str]| {
        let o = cidboot()
            .arg("run")
            .args(img.source())
            .args(["--json", "--config"])
            .arg(config)
            .arg("--secrets")
            .arg(&secrets)
            .args(["--nsm", "software", "--nsm-pcrs"])
            .arg(&eif)
            .arg("--nsm-ca-cert")
            .arg(&ca_cert)
            .arg("--nsm-ca-key")
            .arg(&ca_key)
            .args(["--attestation-listen", "127.0.0.1:0"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CIDBOOT_LOG", "info")
            .envs(kms.env(work))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = boot(&config, &[]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("probe: cat /opt/model hex={}", hex(&model))),
        "{stdout}\n{stderr}"
    );
    // The key is cidboot's: not in the workload's files, nor in its environment.
    assert!(
        stdout.contains("probe: open /run/secrets/image-key ENOENT"),
        "{stdout}"
    );
    let environ = stdout
        .lines()
        .find(|l| l.starts_with("probe: cat /proc/self/environ hex="))
        .unwrap();
    assert!(!environ.contains(&hex(b"PRIVATE KEY")), "{environ}");
    // PCR16 was locked before the layers were applied, and the log names the key.
    let locked = stderr.find("PCR16 extended and locked").unwrap();
    let opened = stderr
        .find("encrypted layers opened with the sealed decryption key")
        .unwrap();
    let applied = stderr.find("image applied").unwrap();
    assert!(locked < opened && opened < applied, "{stderr}");
    assert!(stderr.contains("key=image-key"), "{stderr}");

    // The boot measured what `expect` predicted, event for event: the encrypted-layers event
    // right after the config names the encrypted layer and the key name that opened it.
    let layer = layout_manifest(&img.layout)["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let booted: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let log = &booted["measurements"];
    assert_eq!(log, &expected["measurements"]);
    assert_eq!(booted["pcr16"], expected["pcrs"]["PCR16"]);
    let events = log["events"].as_array().unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "image-reference",
            "root-cid",
            "manifest-digest",
            "config-digest",
            "encrypted-layers",
            "runtime-config"
        ]
    );
    assert_eq!(events[4]["value"], format!("image-key {layer}"));
    // The workload's document and that log pass `verify`, which shows the event.
    let doc = stdout
        .lines()
        .find_map(|l| l.strip_prefix("probe: attestation="))
        .expect("the workload got a document");
    let (doc_file, log_file) = (work.join("doc.b64"), work.join("log.json"));
    std::fs::write(&doc_file, doc).unwrap();
    std::fs::write(&log_file, log.to_string()).unwrap();
    let verify = |extra: &[&str]| {
        run(&[
            &[
                "verify",
                doc_file.to_str().unwrap(),
                "--root",
                ca_cert.to_str().unwrap(),
                "--nonce",
                &nonce,
                "--measurements",
                log_file.to_str().unwrap(),
                "--expect-pcr16",
                expected["pcrs"]["PCR16"].as_str().unwrap(),
            ],
            extra,
        ]
        .concat())
    };
    let v = verify(&[]);
    assert!(v.ok, "{}\n{}", v.stdout, v.stderr);
    assert!(
        v.stdout.contains(&format!(
            "measured: encrypted layers {layer} opened with the sealed secret image-key"
        )),
        "{}",
        v.stdout
    );
    let v = verify(&["--json"]);
    assert!(v.ok, "{}\n{}", v.stdout, v.stderr);
    assert_eq!(
        v.json()["measured"]["encrypted_layers"],
        json!({"key": "image-key", "layers": [layer]})
    );

    // The same configuration, but the key from a file: the layers open without KMS, and the
    // log says the key came from outside the configuration. Only that event differs, so
    // PCR16 is not the one `expect` (and the key policy) name.
    let (code, stdout, stderr) = boot(&config, &["--decryption-key", img.key()]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("encrypted layers opened with the sealed decryption key"));
    let given: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let given_events = given["measurements"]["events"].as_array().unwrap();
    assert_eq!(given_events.len(), events.len());
    for (i, (a, b)) in events.iter().zip(given_events).enumerate() {
        if i == 4 {
            assert_eq!(b["value"], format!("- {layer}"));
            assert_ne!(a["digest"], b["digest"]);
        } else {
            assert_eq!(a, b, "event {i}");
        }
    }
    assert_ne!(given["pcr16"], booted["pcr16"]);

    // Another key name (the same key sealed under it): `expect` predicts another
    // encrypted-layers event, and so another PCR16.
    let renamed = work.join("renamed.toml");
    std::fs::write(&renamed, text.replace("image-key", "image-key-2")).unwrap();
    let other = expect(&renamed, &["--json"]).json();
    assert_eq!(
        other["measurements"]["events"][4]["value"],
        format!("image-key-2 {layer}")
    );
    assert_ne!(other["pcrs"]["PCR16"], expected["pcrs"]["PCR16"]);

    // One byte more in the configuration: another PCR16, and KMS keeps the key.
    let edited = work.join("edited.toml");
    std::fs::write(&edited, format!("{text}#\n")).unwrap();
    let (code, stdout, stderr) = boot(&edited, &[]);
    assert_eq!(code, Some(125), "{stdout}\n{stderr}");
    assert!(!stdout.contains("probe:"), "{stdout}");
    let err = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        err.contains("secret \"image-key\"") && err.contains("AccessDeniedException"),
        "{err}"
    );
    assert!(!stderr.contains("image applied"), "{stderr}");
}
