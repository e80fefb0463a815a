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
    let cid = cidboot::reference::raw_cid(b"cidboot example");
    let reference = format!("ipfs://{cid}");
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
    let config = b"image = \"x\"\n";
    let dep_cid = cidboot::reference::raw_cid(b"a dependency image");
    let dependency = cidboot::measure::HelperImage {
        reference: format!("ipfs://{dep_cid}"),
        pinned_digest: format!("sha256:{}", "5".repeat(64)),
        manifest_digest: format!("sha256:{}", "6".repeat(64)),
        helpers: vec![("attest-client".into(), format!("sha256:{}", "7".repeat(64)))],
    };
    let ours = EventLog::new(Inputs {
        reference: &reference,
        root_cid: &cid,
        manifest_digest: &m,
        config_digest: &c,
        helpers: helpers.clone(),
        helper_images: vec![dependency.clone()],
        runtime_config_digest: &cidboot::config::Loaded::parse(config.to_vec())
            .unwrap()
            .digest(),
    });
    let script = format!(
        "{code}\nprint(pcr16({reference:?}, bytes.fromhex({cid_hex:?}), {m:?}, {c:?}, {{{h0:?}: {d0:?}, {h1:?}: {d1:?}}}, {config:?}.encode(), [({dr:?}, {dp:?}, {dm:?}, {{{dh:?}: {dd:?}}})]))\n",
        dr = dependency.reference, dp = dependency.pinned_digest, dm = dependency.manifest_digest,
        dh = dependency.helpers[0].0, dd = dependency.helpers[0].1,
        cid_hex = hex::encode(cid.to_bytes()),
        h0 = helpers[0].0, d0 = helpers[0].1, h1 = helpers[1].0, d1 = helpers[1].1,
        config = std::str::from_utf8(config).unwrap(),
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
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), ours.pcr16);
}
