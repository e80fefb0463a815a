//! `cidboot verify`, `cidboot expect`, the attestation API, and the round trip through
//! `cidboot run`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;

use common::*;
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/attestation")
        .join(name)
}

/// `--pcr N=HEX` for PCR0-2 of a document.
fn pins_of(doc: &std::path::Path) -> Vec<String> {
    use cidboot::nsm::document::{parse_cose, Document};
    let d = Document::parse(&parse_cose(&std::fs::read(doc).unwrap()).unwrap().payload).unwrap();
    (0..3)
        .flat_map(|i| {
            [
                "--pcr".to_string(),
                format!("{i}={}", hex::encode(&d.pcrs[&i])),
            ]
        })
        .collect()
}

/// `cidboot verify` with extra arguments after the given ones.
fn verify_with(args: &[&str], extra: &[String]) -> Out {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(extra.iter().map(String::as_str));
    run(&all)
}

#[test]
fn verify_exits_zero_only_when_every_check_passes() {
    let doc = fixture("nitro-attest-2025-01-06.cose");
    let d = doc.to_str().unwrap();
    let pins = pins_of(&doc);
    let run = |args: &[&str]| verify_with(args, &pins);
    let ok = run(&["verify", d, "--at", "doc"]);
    assert!(ok.ok, "{}", ok.stdout);
    assert!(ok.stdout.contains("PASS chain") && ok.stdout.trim_end().ends_with("verified"));
    let now = run(&["verify", d, "--json"]);
    assert!(!now.ok);
    let v = now.json();
    assert_eq!(v["ok"], false);
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"validity"), "{failed:?}");
    // An RFC 3339 instant inside the leaf's three hours.
    assert!(run(&["verify", d, "--at", "2025-01-06T17:00:00Z"]).ok);
    assert!(!run(&["verify", d, "--at", "2025-01-07T17:00:00Z"]).ok);
    // Base64 input and stdin.
    use base64::Engine;
    let work = tempfile::tempdir().unwrap();
    let b64 = work.path().join("doc.b64");
    std::fs::write(
        &b64,
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&doc).unwrap()),
    )
    .unwrap();
    assert!(run(&["verify", b64.to_str().unwrap(), "--at", "doc"]).ok);
    let mut child = cidboot()
        .args(["verify", "-", "--at", "doc"])
        .args(&pins)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&doc).unwrap())
        .unwrap();
    assert!(child.wait().unwrap().success());
    // A pinned PCR that differs fails (PCR1 and PCR2 pinned right).
    let bad = verify_with(
        &[
            "verify",
            d,
            "--at",
            "doc",
            "--pcr",
            &format!("0={}", "00".repeat(48)),
        ],
        &pins[2..],
    );
    assert!(
        !bad.ok && bad.stdout.contains("FAIL pcr0"),
        "{}",
        bad.stdout
    );
    assert!(bad.stdout.contains("PASS pcr1"), "{}", bad.stdout);
    for neg in [
        "NEGATIVE-nitrite-selfsigned.cose",
        "NEGATIVE-oyster-custom-root.cose",
    ] {
        let n = fixture(neg);
        assert!(
            !verify_with(
                &["verify", n.to_str().unwrap(), "--at", "doc"],
                &pins_of(&n)
            )
            .ok,
            "{neg}"
        );
    }
}

#[test]
fn an_unpinned_verify_fails_closed() {
    let doc = fixture("nitro-attest-2025-01-06.cose");
    let d = doc.to_str().unwrap();
    // A real, validly signed document, but nothing ties it to an EIF or an image.
    let o = common::run(&["verify", d, "--at", "doc"]);
    assert!(!o.ok, "{}", o.stdout);
    assert!(o.stdout.contains("FAIL pinned"), "{}", o.stdout);
    assert!(o.stderr.contains("NOTHING IS PINNED"), "{}", o.stderr);
    let j = common::run(&["verify", d, "--at", "doc", "--json"]);
    assert!(!j.ok);
    let v = j.json();
    let pinned = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "pinned")
        .unwrap();
    assert_eq!(pinned["status"], "fail");
    // A nonce alone pins nothing either.
    assert!(!common::run(&["verify", d, "--at", "doc", "--nonce", "00"]).ok);
    // Asked for explicitly, and said loudly.
    let o = common::run(&["verify", d, "--at", "doc", "--allow-unpinned"]);
    assert!(o.ok, "{}", o.stdout);
    assert!(o.stdout.contains("SKIP pinned: INSECURE"), "{}", o.stdout);
    assert!(o.stderr.contains("INSECURE"), "{}", o.stderr);
    // One PCR is a pin, and it must hold.
    assert!(verify_with(&["verify", d, "--at", "doc"], &pins_of(&doc)[..2]).ok);
}

#[test]
fn require_locked_refuses_a_real_document_without_pcr16_to_31() {
    // Real AWS documents list PCR0-15 only.
    let doc = fixture("qos-2022-07-06.cose");
    let d = doc.to_str().unwrap();
    let pins = pins_of(&doc);
    assert!(
        verify_with(
            &["verify", d, "--at", "doc", "--require-locked", "0-15"],
            &pins
        )
        .ok
    );
    let o = verify_with(
        &[
            "verify",
            d,
            "--at",
            "doc",
            "--require-locked",
            "16-31",
            "--json",
        ],
        &pins,
    );
    assert!(!o.ok);
    let v = o.json();
    let locked = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "locked")
        .unwrap()
        .clone();
    assert_eq!(locked["status"], "fail");
    let detail = locked["detail"].as_str().unwrap();
    assert!(
        detail.contains("PCR16,") && detail.contains("PCR31 "),
        "{detail}"
    );
    let o = verify_with(
        &["verify", d, "--at", "doc", "--require-locked", "3,16"],
        &pins,
    );
    assert!(
        !o.ok && o.stdout.contains("FAIL locked: PCR16 not"),
        "{}",
        o.stdout
    );
    for bad in ["16-32", "31-16", "x", "16,"] {
        let o = verify_with(
            &["verify", d, "--at", "doc", "--require-locked", bad],
            &pins,
        );
        assert!(
            !o.ok && o.stderr.contains("--require-locked"),
            "{bad}: {}",
            o.stderr
        );
    }
}

#[test]
fn pcr17_to_31_locked_by_the_enclave_must_be_zero_unless_pinned() {
    use cidboot::nsm::software::{SoftwareNsm, TestCa};
    use cidboot::nsm::Nsm;
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::generate().unwrap();
    let root = work.path().join("root.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    // What the boot does: extend and lock PCR16, then lock every PCR up to 31.
    let doc = |extend17: bool, lock_rest: bool| {
        let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
        nsm.extend_pcr(16, b"event").unwrap();
        if extend17 {
            nsm.extend_pcr(17, b"something else").unwrap();
        }
        nsm.lock_pcr(16).unwrap();
        if lock_rest {
            for i in 17..=31 {
                nsm.lock_pcr(i).unwrap();
            }
        }
        let pcr16 = hex::encode(nsm.describe_pcr(16).unwrap().1);
        let pcr17 = hex::encode(nsm.describe_pcr(17).unwrap().1);
        let path = work.path().join(format!("doc-{extend17}-{lock_rest}.cbor"));
        std::fs::write(&path, nsm.attestation(None, None, None).unwrap()).unwrap();
        (path, pcr16, pcr17)
    };
    let r = root.to_str().unwrap();
    let verify = |p: &PathBuf, extra: &[&str]| {
        let mut args = vec!["verify", p.to_str().unwrap(), "--root", r];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (locked, pcr16, _) = doc(false, true);
    let o = verify(
        &locked,
        &[
            "--expect-pcr16",
            &pcr16,
            "--require-locked",
            "16-31",
            "--json",
        ],
    );
    assert!(o.ok, "{}", o.stdout);
    let checks = o.json()["checks"].clone();
    for i in 17..=31 {
        let c = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == format!("pcr{i}"))
            .unwrap_or_else(|| panic!("no pcr{i} check"));
        assert_eq!(c["status"], "pass");
    }
    // Something extended PCR17 before it was locked: refused, unless pinned to that value.
    let (extended, pcr16, pcr17) = doc(true, true);
    let o = verify(&extended, &["--expect-pcr16", &pcr16]);
    assert!(!o.ok && o.stdout.contains("FAIL pcr17"), "{}", o.stdout);
    assert!(!o.stdout.contains("FAIL pcr18"), "{}", o.stdout);
    let pin17 = format!("17={pcr17}");
    assert!(verify(&extended, &["--expect-pcr16", &pcr16, "--pcr", &pin17]).ok);
    // PCR17 at the zeros every cidboot document has: no pin, and the answer says why.
    let zeros17 = format!("17={}", "00".repeat(48));
    let o = verify(&locked, &["--pcr", &zeros17]);
    assert!(!o.ok && o.stdout.contains("FAIL pinned"), "{}", o.stdout);
    assert!(o.stdout.contains("PASS pcr17"), "{}", o.stdout);
    assert!(
        o.stderr.contains("--pcr 17=zeros pins nothing: cidboot locks PCR17-31 without extending them, so every cidboot document has that value"),
        "{}",
        o.stderr
    );
    // The software NSM's PCR0-2 are zeros without an EIF's: pinning them pins nothing either.
    let mut args = vec![];
    let zero_pins: Vec<String> = (0..3).map(|i| format!("{i}={}", "00".repeat(48))).collect();
    for p in &zero_pins {
        args.extend(["--pcr", p.as_str()]);
    }
    let o = verify(&locked, &args);
    assert!(
        !o.ok
            && o.stderr
                .contains("--pcr 0=zeros pins nothing: a debug-mode enclave"),
        "{}",
        o.stderr
    );
    // Only PCR16 locked (a boot that does not lock the rest): fine, unless they are required.
    let (only16, pcr16, _) = doc(false, false);
    assert!(verify(&only16, &["--expect-pcr16", &pcr16]).ok);
    let o = verify(
        &only16,
        &["--expect-pcr16", &pcr16, "--require-locked", "16-31"],
    );
    assert!(
        !o.ok && o.stdout.contains("FAIL locked: PCR17, PCR18"),
        "{}",
        o.stdout
    );
}

fn probe_layer() -> Vec<u8> {
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
    ])
}

#[test]
fn round_trip_through_run_and_verify() {
    let work = tempfile::tempdir().unwrap();
    let nonce = "00112233445566778899aabbccddeeff";
    let img = image_from_tars(
        &[probe_layer()],
        json!({"Entrypoint": ["/bin/probe"], "Cmd": ["attest", nonce]}),
    );
    let (reference, gw) = publish(&img, work.path());
    let root = work.path().join("nsm-root.pem");
    let ca = gw.ca.to_str().unwrap();
    // The software NSM reports the EIF's PCR0-2, from eif_build's output, as the verifier and
    // `expect` take them.
    let eif = work.path().join("eif.json");
    let (p0, p1, p2) = ("aa".repeat(48), "BB".repeat(48), "cc".repeat(48));
    std::fs::write(&eif, json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": p0, "PCR1": p1, "PCR2": p2}}).to_string()).unwrap();
    let o = cidboot()
        .args([
            "run",
            &reference,
            "--gateway",
            &gw.url,
            "--ca",
            ca,
            "--nsm",
            "software",
            "--attestation-listen",
            "127.0.0.1:0",
            "--json",
        ])
        .arg("--nsm-root-out")
        .arg(&root)
        .arg("--nsm-pcrs")
        .arg(&eif)
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let doc = stdout
        .lines()
        .find_map(|l| l.strip_prefix("probe: attestation="))
        .expect("the workload got a document");
    let file = work.path().join("doc.b64");
    std::fs::write(&file, doc).unwrap();
    let (f, r) = (file.to_str().unwrap(), root.to_str().unwrap());
    // cidboot locks every PCR after measuring: PCR17-31 are in the document, all zero.
    let zero_pins: Vec<String> = (17..32)
        .flat_map(|i| ["--pcr".to_string(), format!("{i}={}", "00".repeat(48))])
        .collect();
    let mut args = vec![
        "verify",
        f,
        "--root",
        r,
        "--nonce",
        nonce,
        "--expect-image",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--json",
    ];
    args.extend(zero_pins.iter().map(String::as_str));
    let eif_pins = [format!("0={p0}"), format!("1={p1}"), format!("2={p2}")];
    for p in &eif_pins {
        args.extend(["--pcr", p.as_str()]);
    }
    let ok = run(&args);
    assert!(ok.ok, "{}\n{}", ok.stdout, ok.stderr);
    assert_eq!(
        ok.json()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "pcr16")
            .count(),
        1
    );
    // The same image named in base36 (`ipfs://k…`) is the same CID: the PCR16 expected for it
    // is the one the boot measured, as the docs' reimplementation computes from either form.
    let cid: cid::Cid = reference.strip_prefix("ipfs://").unwrap().parse().unwrap();
    let base36 = format!(
        "ipfs://{}",
        cid.to_string_of_base(cid::multibase::Base::Base36Lower)
            .unwrap()
    );
    assert!(base36.starts_with("ipfs://k"));
    let o = run(&[
        "verify",
        f,
        "--root",
        r,
        "--expect-image",
        &base36,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
    ]);
    assert!(
        o.ok && o.stdout.contains("PASS pcr16"),
        "{}\n{}",
        o.stdout,
        o.stderr
    );
    // The same document does not vouch for another image, another nonce or the AWS root.
    let other = image_from_tars(&[probe_layer()], json!({"Entrypoint": ["/bin/probe"]}));
    let (other_ref, other_gw) = publish(&other, work.path());
    let bad = run(&[
        "verify",
        f,
        "--root",
        r,
        "--expect-image",
        &other_ref,
        "--gateway",
        &other_gw.url,
        "--ca",
        other_gw.ca.to_str().unwrap(),
    ]);
    assert!(
        !bad.ok && bad.stdout.contains("FAIL pcr16"),
        "{}",
        bad.stdout
    );
    assert!(!run(&["verify", f, "--root", r, "--nonce", "00"]).ok);
    assert!(
        !run(&["verify", f]).ok,
        "a software NSM document must fail against the AWS root"
    );
    // `expect` prints the PCR16 the verifier pinned, and PCR0-2 from eif_build's output.
    let e = run(&[
        "expect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--eif-pcrs",
        eif.to_str().unwrap(),
        "--json",
    ]);
    assert!(e.ok, "{}", e.stderr);
    let v = e.json();
    assert_eq!(v["pcrs"]["PCR0"], p0);
    assert_eq!(v["pcrs"]["PCR1"], "bb".repeat(48), "lowercased");
    let pcr16 = v["pcrs"]["PCR16"].as_str().unwrap().to_string();
    // PCRs in numeric order, in the JSON as in the text.
    let at = |s: &str, k: &str| s.find(k).unwrap_or_else(|| panic!("{k} in {s}"));
    let order: Vec<usize> = ["\"PCR0\"", "\"PCR1\"", "\"PCR2\"", "\"PCR16\""]
        .iter()
        .map(|k| at(&e.stdout, k))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", e.stdout);
    let text = run(&[
        "expect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        ca,
        "--eif-pcrs",
        eif.to_str().unwrap(),
    ]);
    let names: Vec<&str> = text
        .stdout
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["PCR0", "PCR1", "PCR2", "PCR16"], "{}", text.stdout);
    assert!(text.stdout.contains(&format!("PCR16 {pcr16}")));
    // The KMS key-policy statement carries exactly the values `expect` prints.
    let expect_args = |extra: &[&str]| {
        let mut args = vec![
            "expect",
            reference.as_str(),
            "--gateway",
            gw.url.as_str(),
            "--ca",
            ca,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let role = "arn:aws:iam::111122223333:role/enclave-parent";
    let eif_arg = eif.to_str().unwrap();
    let k = expect_args(&["--eif-pcrs", eif_arg, "--kms-policy", "--principal", role]);
    assert!(k.ok, "{}", k.stderr);
    let s = k.json();
    assert_eq!(s["Effect"], "Allow");
    assert_eq!(s["Principal"], json!({"AWS": role}));
    assert_eq!(s["Action"], json!(["kms:Decrypt", "kms:GenerateDataKey*"]));
    let cond = &s["Condition"]["StringEqualsIgnoreCase"];
    assert_eq!(cond.as_object().unwrap().len(), 4, "{cond}");
    // In the page's order: PCR0 (ImageSha384), PCR1, PCR2, PCR16.
    let order: Vec<usize> = ["ImageSha384\"", "PCR1\"", "PCR2\"", "PCR16\""]
        .iter()
        .map(|name| at(&k.stdout, &format!("kms:RecipientAttestation:{name}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", k.stdout);
    for (key, pcr) in [
        ("ImageSha384", "PCR0"),
        ("PCR1", "PCR1"),
        ("PCR2", "PCR2"),
        ("PCR16", "PCR16"),
    ] {
        assert_eq!(
            cond[format!("kms:RecipientAttestation:{key}")],
            v["pcrs"][pcr],
            "{key}"
        );
    }
    // Refused without the EIF's PCRs, without a principal, and for a debug-mode EIF.
    let o = expect_args(&["--kms-policy", "--principal", role]);
    assert!(
        !o.ok && o.stderr.contains("--kms-policy needs --eif-pcrs"),
        "{}",
        o.stderr
    );
    let o = expect_args(&["--eif-pcrs", eif_arg, "--kms-policy"]);
    assert!(!o.ok && o.stderr.contains("--principal"), "{}", o.stderr);
    let o = expect_args(&["--eif-pcrs", eif_arg, "--kms-policy", "--principal", "root"]);
    assert!(!o.ok && o.stderr.contains("not an ARN"), "{}", o.stderr);
    let debug = work.path().join("debug.json");
    let zero = "0".repeat(96);
    std::fs::write(
        &debug,
        json!({"Measurements": {"PCR0": zero, "PCR1": zero, "PCR2": zero}}).to_string(),
    )
    .unwrap();
    let o = expect_args(&[
        "--eif-pcrs",
        debug.to_str().unwrap(),
        "--kms-policy",
        "--principal",
        role,
    ]);
    assert!(!o.ok && o.stderr.contains("debug-mode"), "{}", o.stderr);
    let short = work.path().join("short.json");
    std::fs::write(
        &short,
        json!({"PCR0": "aa", "PCR1": p1, "PCR2": p2}).to_string(),
    )
    .unwrap();
    let o = expect_args(&["--eif-pcrs", short.to_str().unwrap()]);
    assert!(
        !o.ok && o.stderr.contains("not 48 bytes of hex"),
        "{}",
        o.stderr
    );
    assert!(run(&["verify", f, "--root", r, "--expect-pcr16", &pcr16]).ok);
    // The event log of the real boot (what `cidboot run --json` and GET /v1/measurements
    // give) is recomputed, replayed to the document's PCR16, and only then read.
    let boot: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let real_log = boot["measurements"].clone();
    assert_eq!(
        real_log, v["measurements"],
        "expect predicts the boot's log"
    );
    let log = work.path().join("log.json");
    std::fs::write(&log, real_log.to_string()).unwrap();
    let l = log.to_str().unwrap();
    let good = run(&[
        "verify",
        f,
        "--root",
        r,
        "--measurements",
        l,
        "--expect-manifest",
        &img.manifest.digest,
        "--expect-cid",
        &reference,
        "--expect-config-digest",
        boot["config_digest"].as_str().unwrap(),
        "--expect-runtime-config",
        &format!("sha256:{}", sha256_hex(b"")),
        "--json",
    ]);
    assert!(good.ok, "{}\n{}", good.stdout, good.stderr);
    let g = good.json();
    let passed: Vec<&str> = g["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "pass")
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "measurements",
        "manifest",
        "cid",
        "config_digest",
        "runtime_config",
    ] {
        assert!(passed.contains(&name), "{name}: {passed:?}");
    }
    assert_eq!(g["measured"]["manifest_digest"], img.manifest.digest);
    assert_eq!(g["measured"]["cid"], boot["cid"]);
    assert_eq!(g["measured"]["config_digest"], boot["config_digest"]);
    assert_eq!(g["measured"]["reference"], reference);
    assert_eq!(g["measured"]["pcr16"], pcr16);
    assert_eq!(g["measured"]["helpers"], json!({}));
    // The sound log, but other expectations: each is its own named failure.
    let o = run(&[
        "verify",
        f,
        "--root",
        r,
        "--measurements",
        l,
        "--expect-manifest",
        &other.manifest.digest,
        "--expect-cid",
        &other_ref,
        "--expect-helper",
        &format!("kms-client=sha256:{}", "1".repeat(64)),
    ]);
    assert!(!o.ok);
    for want in [
        "PASS measurements",
        "FAIL manifest",
        "FAIL cid",
        "FAIL helper:kms-client: the log measures no helper named kms-client",
    ] {
        assert!(o.stdout.contains(want), "{want}: {}", o.stdout);
    }
    // Forgeries of the real log. The first is the lie the old check accepted: the manifest
    // event shows another image's digest, while its data and digest (and so the replay) are
    // the real boot's.
    let forge = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = real_log.clone();
        f(&mut v);
        let p = work.path().join(format!("{name}.json"));
        std::fs::write(&p, v.to_string()).unwrap();
        p
    };
    let other_manifest = other.manifest.digest.clone();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            forge("value", &|v| {
                v["events"][2]["value"] = other_manifest.clone().into()
            }),
            "event 3 (manifest-digest): value",
        ),
        (
            forge("digest", &|v| {
                v["events"][0]["digest"] = "11".repeat(48).into()
            }),
            "event 1 (image-reference): digest",
        ),
        (
            forge("kind", &|v| v["events"][1]["kind"] = "kernel".into()),
            "event 2: unknown kind \"kernel\"",
        ),
        (
            forge("hex", &|v| {
                let d = v["events"][3]["digest"].as_str().unwrap().to_string();
                v["events"][3]["digest"] = format!("zz{}", &d[2..]).into()
            }),
            "event 4 (config-digest): digest is not hex",
        ),
        (
            forge("version", &|v| v["version"] = 2.into()),
            "event log version 2 is not supported",
        ),
    ];
    for (p, want) in &cases {
        let o = run(&[
            "verify",
            f,
            "--root",
            r,
            "--measurements",
            p.to_str().unwrap(),
            "--expect-manifest",
            &other.manifest.digest,
            "--json",
        ]);
        assert!(!o.ok, "{want}: accepted");
        let v = o.json();
        let m = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "measurements")
            .unwrap()
            .clone();
        assert_eq!(m["status"], "fail");
        assert!(m["detail"].as_str().unwrap().contains(want), "{want}: {m}");
        assert!(
            v["measured"].is_null(),
            "{want}: fields read from a refused log"
        );
        let manifest = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "manifest")
            .unwrap()
            .clone();
        assert_eq!(manifest["status"], "fail", "{want}");
    }
    // Two "events" keys: another image's events, then the real boot's (which a reader that
    // keeps the last would replay to the document's PCR16). Refused, whichever comes last.
    let real_text = real_log.to_string();
    let events_of = |v: &serde_json::Value| v["events"].to_string();
    let other_events = {
        let oe = run(&[
            "expect",
            &other_ref,
            "--gateway",
            &other_gw.url,
            "--ca",
            other_gw.ca.to_str().unwrap(),
            "--json",
        ]);
        events_of(&oe.json()["measurements"])
    };
    for twice in [
        real_text.replacen('{', &format!("{{\"events\":{other_events},"), 1),
        format!(
            "{},\"events\":{other_events}}}",
            real_text.strip_suffix('}').unwrap()
        ),
    ] {
        let p = work.path().join("twice.json");
        std::fs::write(&p, &twice).unwrap();
        let o = run(&[
            "verify",
            f,
            "--root",
            r,
            "--measurements",
            p.to_str().unwrap(),
            "--expect-manifest",
            &img.manifest.digest,
        ]);
        assert!(
            !o.ok
                && o.stdout.contains(
                    "FAIL measurements: the event log is not the documented JSON: key \"events\" appears twice"
                ),
            "{}",
            o.stdout
        );
    }
    // The other image's real log is sound, but not the document's.
    let other_log = work.path().join("other-log.json");
    let oe = run(&[
        "expect",
        &other_ref,
        "--gateway",
        &other_gw.url,
        "--ca",
        other_gw.ca.to_str().unwrap(),
        "--json",
    ]);
    std::fs::write(&other_log, oe.json()["measurements"].to_string()).unwrap();
    let o = run(&[
        "verify",
        f,
        "--root",
        r,
        "--measurements",
        other_log.to_str().unwrap(),
        "--expect-manifest",
        &other.manifest.digest,
    ]);
    assert!(
        !o.ok
            && o.stdout
                .contains("FAIL measurements: the event log replays to PCR16"),
        "{}",
        o.stdout
    );
}

fn http(addr: &str, req: &str) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let pos = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    (status, out[pos + 4..].to_vec())
}

fn post(addr: &str, body: &str) -> (u16, Vec<u8>) {
    http(addr, &format!("POST /v1/attestation HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()))
}

#[test]
fn attestation_api_bounds_its_inputs() {
    use cidboot::nsm::software::{SoftwareNsm, TestCa};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::generate().unwrap();
    let nsm = std::sync::Arc::new(SoftwareNsm::new(&ca, &[]).unwrap());
    let cid = cidboot::reference::raw_cid(b"image");
    let log = cidboot::measure::EventLog::new(cidboot::measure::Inputs {
        reference: "ipfs://x",
        root_cid: &cid,
        manifest_digest: "sha256:m",
        config_digest: "sha256:c",
        encrypted_layers: None,
        helpers: vec![],
        helper_images: vec![],
        runtime_config_digest: "sha256:r",
    });
    let events: Vec<Vec<u8>> = log.events.iter().map(|e| e.digest_bytes()).collect();
    cidboot::nsm::measure_and_lock(nsm.as_ref(), 16, &events).unwrap();
    let (addr, serve) = rt
        .block_on(cidboot::api::bind("127.0.0.1:0", nsm, log.clone()))
        .unwrap();
    rt.spawn(serve);
    let addr = addr.to_string();
    let big = "ab".repeat(513);
    let cases = [
        (
            format!("{{\"nonce\":\"{big}\",\"encoding\":\"hex\"}}"),
            400,
            "over the 512-byte limit",
        ),
        (
            "{\"nonce\":\"zz\",\"encoding\":\"hex\"}".to_string(),
            400,
            "not hex",
        ),
        (
            "{\"nonce\":\"a\",\"encoding\":\"rot13\"}".to_string(),
            400,
            "use base64 or hex",
        ),
        ("{\"surprise\":1}".to_string(), 400, "unknown field"),
        ("not json".to_string(), 400, "JSON object"),
        ("x".repeat(9000), 413, "over 8192 bytes"),
    ];
    for (body, status, msg) in &cases {
        let (s, b) = post(&addr, body);
        assert_eq!(s, *status, "{}", String::from_utf8_lossy(&b));
        assert!(
            String::from_utf8_lossy(&b).contains(msg),
            "{}",
            String::from_utf8_lossy(&b)
        );
    }
    let (s, _) = http(
        &addr,
        "PUT /v1/attestation HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 405);
    let (s, b) = http(
        &addr,
        "GET /v1/measurements HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 200);
    let served: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(served["pcr16"], log.pcr16);
    // A good request: the document carries the nonce and the locked PCR16.
    let (s, doc) = post(&addr, "{\"nonce\":\"bm9uY2U=\"}");
    assert_eq!(s, 200);
    let policy = cidboot::verify::Policy {
        root_der: cidboot::verify::pem_cert(ca.root_pem()).unwrap(),
        at: cidboot::verify::At::Now,
        pcrs: [(16, hex::decode(&log.pcr16).unwrap())].into(),
        nonce: Some(b"nonce".to_vec()),
        user_data: None,
        insecure_unsigned: false,
        require_locked: Default::default(),
        measurements: None,
        allow_unpinned: false,
    };
    let r = cidboot::verify::verify(&doc, &policy);
    assert!(r.ok, "{:?}", r.checks);
}

/// `GET /v1/measurements` serves the boot's log as measured, the encrypted-layers event
/// included, and that log is what a verifier reads back against the document's PCR16.
#[test]
fn the_attestation_api_serves_the_encrypted_layers_event() {
    use cidboot::nsm::software::{SoftwareNsm, TestCa};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::generate().unwrap();
    let nsm = std::sync::Arc::new(SoftwareNsm::new(&ca, &[]).unwrap());
    let cid = cidboot::reference::raw_cid(b"an encrypted image");
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let encrypted = cidboot::measure::EncryptedLayers {
        key: "image-key".into(),
        layers: vec![d('1'), d('3')],
    };
    let log = cidboot::measure::EventLog::new(cidboot::measure::Inputs {
        reference: &format!("ipfs://{cid}"),
        root_cid: &cid,
        manifest_digest: &d('a'),
        config_digest: &d('c'),
        encrypted_layers: Some(encrypted.clone()),
        helpers: vec![],
        helper_images: vec![],
        runtime_config_digest: &d('e'),
    });
    let events: Vec<Vec<u8>> = log.events.iter().map(|e| e.digest_bytes()).collect();
    let pcr16 = cidboot::nsm::measure_and_lock(nsm.as_ref(), 16, &events).unwrap();
    assert_eq!(hex::encode(&pcr16), log.pcr16);
    let (addr, serve) = rt
        .block_on(cidboot::api::bind("127.0.0.1:0", nsm, log.clone()))
        .unwrap();
    rt.spawn(serve);
    let (s, b) = http(
        &addr.to_string(),
        "GET /v1/measurements HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(s, 200);
    let served: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(served["events"][4]["kind"], "encrypted-layers");
    assert_eq!(
        served["events"][4]["value"],
        format!("image-key {} {}", d('1'), d('3'))
    );
    let measured = cidboot::measure::check_log(&b, &pcr16).unwrap();
    assert_eq!(measured.encrypted_layers, Some(encrypted));
}

/// Clients that connect and stay (each a keep-alive request answered, then nothing) take at
/// most `MAX_CONNECTIONS` of the API's connections: one more is closed at once, unanswered,
/// and a connection let go makes room for the next.
#[test]
fn attestation_api_bounds_its_connections() {
    use cidboot::nsm::software::{SoftwareNsm, TestCa};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::generate().unwrap();
    let nsm = std::sync::Arc::new(SoftwareNsm::new(&ca, &[]).unwrap());
    let cid = cidboot::reference::raw_cid(b"image");
    let log = cidboot::measure::EventLog::new(cidboot::measure::Inputs {
        reference: "ipfs://x",
        root_cid: &cid,
        manifest_digest: "sha256:m",
        config_digest: "sha256:c",
        encrypted_layers: None,
        helpers: vec![],
        helper_images: vec![],
        runtime_config_digest: "sha256:r",
    });
    let (addr, serve) = rt
        .block_on(cidboot::api::bind("127.0.0.1:0", nsm, log))
        .unwrap();
    rt.spawn(serve);
    let addr = addr.to_string();
    let keep_alive = |addr: &str| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /v1/measurements HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut got = [0u8; 12];
        s.read_exact(&mut got).unwrap();
        (s, String::from_utf8_lossy(&got).into_owned())
    };
    let mut held = Vec::new();
    for _ in 0..cidboot::api::MAX_CONNECTIONS {
        let (s, status) = keep_alive(&addr);
        assert_eq!(status, "HTTP/1.1 200");
        held.push(s);
    }
    let mut one_more = std::net::TcpStream::connect(&addr).unwrap();
    one_more
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = one_more.write_all(b"GET /v1/measurements HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut got = Vec::new();
    // Closed (or reset, having unread bytes), never answered, and never left waiting.
    let closed = one_more.read_to_end(&mut got);
    assert!(
        got.is_empty()
            && closed.as_ref().map_or_else(
                |e| e.kind() == std::io::ErrorKind::ConnectionReset,
                |_| true
            ),
        "{closed:?}: {}",
        String::from_utf8_lossy(&got)
    );
    held.pop();
    // The API notices the closed connection at once; give it a moment all the same.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (_s, status) = keep_alive(&addr);
    assert_eq!(status, "HTTP/1.1 200");
}

#[test]
fn the_documented_challenge_and_verify_nonce_fit_together() {
    use base64::Engine;
    use cidboot::nsm::software::{SoftwareNsm, TestCa};
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ca = TestCa::generate().unwrap();
    let root = work.path().join("root.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    let nsm = std::sync::Arc::new(SoftwareNsm::new(&ca, &[]).unwrap());
    let cid = cidboot::reference::raw_cid(b"image");
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let log = cidboot::measure::EventLog::new(cidboot::measure::Inputs {
        reference: &format!("ipfs://{cid}"),
        root_cid: &cid,
        manifest_digest: &d('a'),
        config_digest: &d('c'),
        encrypted_layers: None,
        helpers: vec![],
        helper_images: vec![],
        runtime_config_digest: &d('e'),
    });
    let events: Vec<Vec<u8>> = log.events.iter().map(|e| e.digest_bytes()).collect();
    cidboot::nsm::measure_and_lock(nsm.as_ref(), 16, &events).unwrap();
    let (addr, serve) = rt
        .block_on(cidboot::api::bind("127.0.0.1:0", nsm, log.clone()))
        .unwrap();
    rt.spawn(serve);
    // The page's own example, as written, run by a shell in a scratch directory.
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/attestation.md"))
        .unwrap();
    let block = page
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("nonce=") && b.contains("/v1/attestation"))
        .expect("the attestation API's example");
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("set -e\n{block}printf '%s' \"$nonce\"\n"))
        .current_dir(work.path())
        .env("CIDBOOT_ATTESTATION_URL", format!("http://{addr}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let nonce = String::from_utf8(o.stdout).unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&nonce)
        .unwrap();
    assert_eq!(raw.len(), 16);
    let doc = work.path().join("doc.cbor");
    assert!(doc.exists(), "the example writes doc.cbor");
    let verify = |n: &str| {
        run(&[
            "verify",
            doc.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--expect-pcr16",
            &log.pcr16,
            &format!("--nonce={n}"),
        ])
    };
    // The nonce as sent (base64), in hex, and with its form said.
    for n in [
        nonce.clone(),
        hex::encode(&raw),
        format!("base64:{nonce}"),
        format!("hex:{}", hex::encode(&raw)),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw),
    ] {
        let o = verify(&n);
        assert!(o.ok, "{n}: {}\n{}", o.stdout, o.stderr);
        assert!(o
            .stdout
            .contains(&format!("PASS nonce: {}", hex::encode(&raw))));
    }
    let other = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
    let o = verify(&other);
    assert!(!o.ok && o.stdout.contains("FAIL nonce"), "{}", o.stdout);
    let o = verify("base64:***");
    assert!(
        !o.ok
            && o.stderr
                .contains("--nonce \"base64:***\": neither hex nor base64"),
        "{}",
        o.stderr
    );
}
