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

/// A source layout holding `img`, and the same image copied by skopeo with `args`.
fn encrypted(work: &Path, img: &Image, args: &[&str]) -> PathBuf {
    let src = work.join("src");
    write_layout(&src, &[("amd64", img)]);
    let dst = work.join(format!("enc-{}", fastrand::u32(..)));
    skopeo_copy(&src, &dst, args);
    dst
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
    let (_, public) = keypair(work.path(), "enclave");
    let (_, public2) = keypair(work.path(), "operator");
    let enc = format!("jwe:{}", public.display());
    let enc2 = format!("jwe:{}", public2.display());
    // The middle layer only, for two recipients.
    let layout = encrypted(
        work.path(),
        &three_layers(),
        &[
            "--encrypt-layer",
            "1",
            "--encryption-key",
            &enc,
            "--encryption-key",
            &enc2,
        ],
    );
    assert_eq!(
        media_types(&layout),
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ]
    );
    let (reference, gw) = serve(&layout, work.path());
    let out = run(&[
        "inspect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.ok, "{}", out.stderr);
    let layers = out.json()["layers"].clone();
    assert!(layers[0].get("encryption").is_none(), "{layers}");
    assert!(layers[2].get("encryption").is_none(), "{layers}");
    assert_eq!(
        layers[1]["encryption"],
        json!({"cipher": "AES_256_CTR_HMAC_SHA256", "recipients": ["jwe RSA-OAEP 2048-bit", "jwe RSA-OAEP 2048-bit"]})
    );
    let human = run(&[
        "inspect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
    ]);
    assert!(
        human
            .stdout
            .contains("encrypted: AES_256_CTR_HMAC_SHA256; recipients: jwe RSA-OAEP 2048-bit, jwe RSA-OAEP 2048-bit"),
        "{}",
        human.stdout
    );

    let rootfs = work.path().join("root");
    let out = unpack(&reference, &gw, &rootfs, &[]);
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
    rewrite_layer(&layout, 1, |d, _| {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let key = "org.opencontainers.image.enc.pubopts";
        let mut opts: Value =
            serde_json::from_slice(&b64.decode(d["annotations"][key].as_str().unwrap()).unwrap())
                .unwrap();
        opts["cipher"] = json!("\u{1b}[2J\u{9b}32mAES_256_CTR_HMAC_SHA256");
        d["annotations"][key] = json!(b64.encode(serde_json::to_vec(&opts).unwrap()));
    });
    let (reference, gw) = serve(&layout, work.path());
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
    let (private, public) = keypair(work.path(), "enclave");
    let enc = format!("jwe:{}", public.display());
    let layout = encrypted(
        work.path(),
        &three_layers(),
        &[
            "--encrypt-layer",
            "1",
            "--encrypt-layer",
            "2",
            "--encryption-key",
            &enc,
        ],
    );
    assert_eq!(
        media_types(&layout)[1..],
        [
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        ]
    );
    let (reference, gw) = serve(&layout, work.path());
    let rootfs = work.path().join("root");
    let out = unpack(
        &reference,
        &gw,
        &rootfs,
        &["--decryption-key", private.to_str().unwrap(), "--json"],
    );
    assert!(out.ok, "{}", out.stderr);
    assert_three_layers_applied(&rootfs);
    // The encrypted blobs' sizes as fetched are the ciphertexts'.
    let manifest = layout_manifest(&layout);
    let report = out.json()["apply"]["layers"].clone();
    for i in 0..3 {
        assert_eq!(report[i]["compressed_bytes"], manifest["layers"][i]["size"]);
    }

    // pull: the same blobs, byte for byte, still encrypted.
    let pulled = work.path().join("pulled");
    let out = run(&[
        "pull",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--oci-layout",
        pulled.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(layout_manifest(&pulled), manifest);
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(layout_blob(&pulled, d), layout_blob(&layout, d));
    }
}

#[test]
fn zstd_every_layer_encrypted_opens_with_either_recipients_key_in_pkcs1_or_pkcs8() {
    let work = tempfile::tempdir().unwrap();
    let (private, public) = keypair(work.path(), "enclave");
    let (private2, public2) = keypair(work.path(), "operator");
    let enc = format!("jwe:{}", public.display());
    let enc2 = format!("jwe:{}", public2.display());
    let layout = encrypted(
        work.path(),
        &three_layers(),
        &[
            "--dest-compress-format",
            "zstd",
            "--encryption-key",
            &enc,
            "--encryption-key",
            &enc2,
        ],
    );
    assert_eq!(
        media_types(&layout),
        ["application/vnd.oci.image.layer.v1.tar+zstd+encrypted"; 3]
    );
    let (reference, gw) = serve(&layout, work.path());
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
    for (n, key) in [&private, &pkcs1].into_iter().enumerate() {
        let rootfs = work.path().join(format!("root{n}"));
        let out = unpack(
            &reference,
            &gw,
            &rootfs,
            &["--decryption-key", key.to_str().unwrap()],
        );
        assert!(out.ok, "{}", out.stderr);
        assert_three_layers_applied(&rootfs);
    }
}

#[test]
fn another_key_is_refused_before_anything_is_applied() {
    let work = tempfile::tempdir().unwrap();
    let (_, public) = keypair(work.path(), "enclave");
    let (other, _) = keypair(work.path(), "other");
    let enc = format!("jwe:{}", public.display());
    let layout = encrypted(
        work.path(),
        &three_layers(),
        &["--encrypt-layer", "-1", "--encryption-key", &enc],
    );
    let digest = layout_manifest(&layout)["layers"][2]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let (reference, gw) = serve(&layout, work.path());
    let rootfs = work.path().join("root");
    let out = unpack(
        &reference,
        &gw,
        &rootfs,
        &["--decryption-key", other.to_str().unwrap()],
    );
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
    let out = unpack(
        &reference,
        &gw,
        &rootfs,
        &["--decryption-key", junk.to_str().unwrap()],
    );
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
    let (private, public) = keypair(work.path(), "enclave");
    let enc = format!("jwe:{}", public.display());
    let layout = encrypted(
        work.path(),
        &three_layers(),
        &["--encrypt-layer", "1", "--encryption-key", &enc],
    );
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
    let (private, public) = keypair(work.path(), "enclave");
    let enc = format!("jwe:{}", public.display());
    let model = noise(5000, 3);
    let img = image_from_tars(
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
                    data: model.clone(),
                },
            ]),
        ],
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["cat", "/opt/model"], "User": "app"}),
    );
    let layout = encrypted(
        work.path(),
        &img,
        &["--encrypt-layer", "1", "--encryption-key", &enc],
    );
    let (reference, gw) = serve(&layout, work.path());
    let boot = |extra: &[&str]| {
        let o = cidboot()
            .args([
                "run",
                &reference,
                "--gateway",
                &gw.url,
                "--ca",
                gw.ca.to_str().unwrap(),
                "--attestation-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("CIDBOOT_LOG", "warn")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = boot(&["--decryption-key", private.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("probe: cat /opt/model hex={}", hex(&model))),
        "{stdout}\n{stderr}"
    );
    let (code, stdout, stderr) = boot(&[]);
    assert_ne!(code, Some(0));
    assert!(!stdout.contains("probe:"), "{stdout}");
    assert!(
        stderr.contains("this image has a layer that is encrypted (layer 1 sha256:"),
        "{stderr}"
    );
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
    let (private, public) = keypair(work, "enclave");
    let enc = format!("jwe:{}", public.display());
    let model = noise(5000, 4);
    let img = image_from_tars(
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
                    data: model.clone(),
                },
            ]),
        ],
        json!({"Entrypoint": ["/bin/probe"], "User": "app"}),
    );
    let layout = encrypted(
        work,
        &img,
        &["--encrypt-layer", "1", "--encryption-key", &enc],
    );
    let (reference, gw) = serve(&layout, work);

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
        .write_all(&std::fs::read(&private).unwrap())
        .unwrap();
    let o = seal.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sealed = SecretsFile::parse(&o.stdout).unwrap();
    let secrets = work.join("secrets.toml");
    std::fs::write(&secrets, sealed.secrets[0].to_toml()).unwrap();

    let cmd = [
        "cat",
        "/opt/model",
        "open",
        "/run/secrets/image-key",
        "cat",
        "/proc/self/environ",
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
    let o = run(&[
        "expect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        "--eif-pcrs",
        eif.to_str().unwrap(),
        "--kms-policy",
        "--principal",
        ROLE,
    ]);
    assert!(o.ok, "expect: {}", o.stderr);
    std::fs::write(&policy, &o.stdout).unwrap();

    let boot = |config: &Path| {
        let o = cidboot()
            .args(["run", &reference, "--gateway", &gw.url, "--ca"])
            .arg(&gw.ca)
            .arg("--config")
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
    let (code, stdout, stderr) = boot(&config);
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

    // One byte more in the configuration: another PCR16, and KMS keeps the key.
    let edited = work.join("edited.toml");
    std::fs::write(&edited, format!("{text}#\n")).unwrap();
    let (code, stdout, stderr) = boot(&edited);
    assert_eq!(code, Some(125), "{stdout}\n{stderr}");
    assert!(!stdout.contains("probe:"), "{stdout}");
    let err = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
    assert!(
        err.contains("secret \"image-key\"") && err.contains("AccessDeniedException"),
        "{err}"
    );
    assert!(!stderr.contains("image applied"), "{stderr}");
}
