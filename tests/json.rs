//! Every command's `--json` prints exactly the fields docs/json.md lists, in its order.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn each_command_prints_the_documented_fields_in_order() {
    let work = private_tempdir();
    let w = |name: &str| work.path().join(name).to_str().unwrap().to_string();
    let nonce = "00112233445566778899aabbccddeeff";
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"], "Cmd": ["attest", nonce]}));

    // pack, with and without a CAR.
    let layout = work.path().join("layout");
    write_layout(&layout, &[("amd64", &img)]);
    let car = w("image.car");
    let o = run(&["pack", layout.to_str().unwrap(), "--car", &car, "--json"]);
    assert!(o.ok, "{}", o.stderr);
    assert_documented(&o.stdout, "`pack`", 0);
    let cid = o.json()["cid"].as_str().unwrap().to_string();
    assert_eq!(o.json()["car"], car);
    let o = run(&["pack", layout.to_str().unwrap(), "--json"]);
    assert_documented(&o.stdout, "`pack`", 0);
    assert_eq!(
        (o.json()["cid"].as_str(), o.json()["car"].is_null()),
        (Some(cid.as_str()), true)
    );

    let gw = Gateway::start(&[car.into()], work.path());
    let reference = format!("ipfs://{cid}");
    let ca = gw.ca.to_str().unwrap().to_string();
    let with = |cmd: &str, extra: &[&str]| {
        let mut args = vec![
            cmd,
            reference.as_str(),
            "--gateway",
            gw.url.as_str(),
            "--ca",
            ca.as_str(),
        ];
        args.extend_from_slice(extra);
        run(&args)
    };

    let o = with("inspect", &["--json"]);
    assert!(o.ok, "{}", o.stderr);
    assert_documented(&o.stdout, "`inspect`", 0);
    let inspected = keys_in_order(&o.stdout);

    let o = with("pull", &["--oci-layout", &w("pulled"), "--json"]);
    assert!(o.ok, "{}", o.stderr);
    let mut want = inspected.clone();
    want.extend(documented_fields("`pull`", 0));
    assert_eq!(keys_in_order(&o.stdout), want, "{}", o.stdout);
    assert_eq!(o.json()["cid"], cid);

    let rootfs = w("root");
    let o = with("unpack", &["--rootfs", &rootfs, "--json"]);
    assert!(o.ok, "{}", o.stderr);
    assert_documented(&o.stdout, "`unpack`", 0);
    let v = o.json();
    assert_eq!(
        (v["cid"].as_str(), v["rootfs"].as_str()),
        (Some(cid.as_str()), Some(rootfs.as_str()))
    );
    assert_eq!(v["manifest_digest"], img.manifest.digest);
    assert_eq!(v["apply"]["layers"].as_array().unwrap().len(), 1);

    // A failure: the same root again, which is no longer empty.
    let o = with("unpack", &["--rootfs", &rootfs, "--json"]);
    assert!(!o.ok);
    assert_documented(o.stdout.lines().last().unwrap(), "A failure", 0);

    let nsm_root = w("nsm-root.pem");
    let o = with(
        "run",
        &[
            "--nsm",
            "software",
            "--nsm-root-out",
            &nsm_root,
            "--attestation-listen",
            "127.0.0.1:0",
            "--json",
        ],
    );
    assert!(o.ok, "{}\n{}", o.stdout, o.stderr);
    let last = o.stdout.lines().last().unwrap();
    assert_documented(last, "`run`", 0);
    let ran: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(
        (ran["cid"].as_str(), ran["exit_code"].as_i64()),
        (Some(cid.as_str()), Some(0))
    );
    let doc = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("probe: attestation="))
        .unwrap();
    std::fs::write(w("doc.b64"), doc).unwrap();
    std::fs::write(w("log.json"), ran["measurements"].to_string()).unwrap();

    // run failing before its workload: `ended` says so.
    let o = run(&["run", "ipfs://bafkqaaa", "--json"]);
    assert!(!o.ok);
    let last = o.stdout.lines().last().unwrap();
    assert_documented(last, "A failure", 1);

    let o = run(&[
        "verify",
        &w("doc.b64"),
        "--root",
        &nsm_root,
        "--nonce",
        nonce,
        "--measurements",
        &w("log.json"),
        "--expect-cid",
        &reference,
        "--json",
    ]);
    assert!(o.ok, "{}\n{}", o.stdout, o.stderr);
    assert_documented(&o.stdout, "`verify`", 0);
    assert_eq!(o.json()["measured"]["cid"], cid);

    let o = with("expect", &["--json"]);
    assert!(o.ok, "{}", o.stderr);
    assert_documented(&o.stdout, "`expect`", 0);
    let v = o.json();
    assert_eq!(
        (v["cid"].as_str(), &v["manifest_digest"]),
        (Some(cid.as_str()), &ran["manifest_digest"])
    );
    assert_eq!(v["config_digest"], ran["config_digest"]);
    assert_eq!(v["pcrs"]["PCR16"], ran["pcr16"]);
}
