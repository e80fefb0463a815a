//! docs/attestation.md specifies PCR16 byte for byte; its Python reimplementation must agree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::process::Command;

use cidboot::measure::{EventLog, Inputs};

/// The PCR16 the documented Python program computes.
fn python_pcr16(
    code: &str,
    reference: &str,
    helpers: &[(String, String)],
    config: &str,
    dependency: &cidboot::measure::HelperImage,
    m: &str,
    c: &str,
) -> String {
    let script = format!(
        "{code}\nprint(pcr16({reference:?}, {m:?}, {c:?}, {{{h0:?}: {d0:?}, {h1:?}: {d1:?}}}, {config:?}.encode(), [({dr:?}, {dp:?}, {dm:?}, {{{dh:?}: {dd:?}}})]))\n",
        dr = dependency.reference, dp = dependency.pinned_digest, dm = dependency.manifest_digest,
        dh = dependency.helpers[0].0, dd = dependency.helpers[0].1,
        h0 = helpers[0].0, d0 = helpers[0].1, h1 = helpers[1].0, d1 = helpers[1].1,
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_documented_python_reimplementation_agrees() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/attestation.md"))
        .unwrap();
    let code = doc
        .split("```python\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let (m, c) = (
        format!("sha256:{}", "1".repeat(64)),
        format!("sha256:{}", "2".repeat(64)),
    );
    let helpers = vec![
        (
            "tls-client".to_string(),
            format!("sha256:{}", "4".repeat(64)),
        ),
        (
            "kms-client".to_string(),
            format!("sha256:{}", "3".repeat(64)),
        ),
    ];
    let config = "image = \"x\"\n";
    let cid = cidboot::reference::raw_cid(b"cidboot example");
    let dep_cid = cidboot::reference::raw_cid(b"a dependency image");
    let base36 = |c: &cid::Cid| {
        c.to_string_of_base(cid::multibase::Base::Base36Lower)
            .unwrap()
    };
    // A CIDv0 (dag-pb, sha2-256): written Qm…, measured so.
    let v0 = cid::Cid::new_v0(*cidboot::reference::raw_cid(b"a v0 root").hash()).unwrap();
    let mut pcrs = Vec::new();
    // The references as a publisher may write them: base32, base36, base58btc, base16, CIDv0.
    for (reference, dep_reference) in [
        (format!("ipfs://{cid}"), format!("ipfs://{dep_cid}")),
        (
            format!("ipfs://{}", base36(&cid)),
            format!("ipfs://{}", base36(&dep_cid)),
        ),
        (
            format!(
                "ipfs://{}",
                cid.to_string_of_base(cid::multibase::Base::Base58Btc)
                    .unwrap()
            ),
            format!("ipfs://{dep_cid}"),
        ),
        (
            format!(
                "ipfs://{}",
                cid.to_string_of_base(cid::multibase::Base::Base16Lower)
                    .unwrap()
            ),
            format!("ipfs://{dep_cid}"),
        ),
        (
            format!("ipfs://{v0}"),
            format!("ipfs://{}", base36(&dep_cid)),
        ),
    ] {
        // What the boot measures: the reference parsed, in its canonical form.
        let r = cidboot::reference::ImageRef::parse(&reference).unwrap();
        let dep = cidboot::reference::ImageRef::parse(&dep_reference).unwrap();
        let dependency = cidboot::measure::HelperImage {
            reference: dep.canonical(),
            pinned_digest: format!("sha256:{}", "5".repeat(64)),
            manifest_digest: format!("sha256:{}", "6".repeat(64)),
            helpers: vec![("attest-client".into(), format!("sha256:{}", "7".repeat(64)))],
        };
        let ours = EventLog::new(Inputs {
            reference: &r.canonical(),
            root_cid: &r.cid,
            manifest_digest: &m,
            config_digest: &c,
            encrypted_layers: None,
            helpers: helpers.clone(),
            helper_images: vec![dependency.clone()],
            runtime_config_digest: &cidboot::config::Loaded::parse(config.as_bytes().to_vec())
                .unwrap()
                .digest(),
        });
        // The verifier follows the docs with the references as written.
        let written = cidboot::measure::HelperImage {
            reference: dep_reference.clone(),
            ..dependency
        };
        let theirs = python_pcr16(code, &reference, &helpers, config, &written, &m, &c);
        assert_eq!(theirs, ours.pcr16, "{reference}");
        // And the log of that boot passes the verifier's own checks.
        let log = serde_json::to_vec(&ours).unwrap();
        cidboot::measure::check_log(&log, &hex::decode(&ours.pcr16).unwrap()).unwrap();
        pcrs.push(ours.pcr16);
    }
    // One CID, one PCR16, whatever base it is written in.
    assert!(pcrs[..4].iter().all(|p| *p == pcrs[0]), "{pcrs:?}");
    assert_ne!(pcrs[4], pcrs[0]);
}

/// What the documented Python program prints for `call`.
fn python_call(code: &str, call: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{code}\nprint({call})\n"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_documented_python_reimplementation_agrees_on_encrypted_layers() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/attestation.md"))
        .unwrap();
    let code = doc
        .split("```python\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let cid = cidboot::reference::raw_cid(b"an encrypted image");
    let reference = format!("ipfs://{cid}");
    // The configuration's exact bytes are measured, whether or not they would load.
    let config = "decryption_key = \"image-key\"\n";
    let runtime = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(config.as_bytes()))
    );
    let ours = |enc: Option<(&str, Vec<String>)>| {
        EventLog::new(Inputs {
            reference: &reference,
            root_cid: &cid,
            manifest_digest: &d('1'),
            config_digest: &d('2'),
            encrypted_layers: enc.map(|(key, layers)| cidboot::measure::EncryptedLayers {
                key: key.into(),
                layers,
            }),
            helpers: vec![("attest".into(), d('3'))],
            helper_images: vec![],
            runtime_config_digest: &runtime,
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    for enc in [
        None,
        Some(("image-key", vec![d('4')])),
        Some(("image-key", vec![d('4'), d('5')])),
        Some(("image-key", vec![d('5'), d('4')])),
        Some(("other.key_2", vec![d('4'), d('5')])),
        Some(("", vec![d('4'), d('5')])),
    ] {
        let arg = match &enc {
            None => "None".to_string(),
            Some((k, layers)) => format!("({k:?}, {layers:?})"),
        };
        let log = ours(enc.clone());
        let theirs = python_call(
            code,
            &format!(
                "pcr16({reference:?}, {m:?}, {c:?}, {{\"attest\": {h:?}}}, {config:?}.encode(), (), {arg})",
                m = d('1'),
                c = d('2'),
                h = d('3'),
            ),
        );
        assert_eq!(theirs, log.pcr16, "{arg}");
        if enc.is_none() {
            // An image without encrypted layers measures exactly as before the encrypted-layers
            // event existed: the value the previous version of the documented program gives.
            assert_eq!(
                log.pcr16,
                "fcd414ee94223b292580bb7017cafe95be0495bc1a57c23e6cc9c8a55a7b76d5045d508f457e319a834f9b74b199bf35"
            );
        }
        let f = cidboot::measure::check_log(
            &serde_json::to_vec(&log).unwrap(),
            &hex::decode(&log.pcr16).unwrap(),
        )
        .unwrap();
        assert_eq!(
            f.encrypted_layers.map(|e| (e.key, e.layers)),
            enc.map(|(k, l)| (k.to_string(), l))
        );
        // Every key name and every list of layers is its own PCR16.
        assert!(seen.insert(log.pcr16), "{arg}");
    }
}
