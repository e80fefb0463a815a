//! `cidboot verify`, `cidboot expect`, the attestation API, and the round trip through
//! `cidboot run`.

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

#[test]
fn verify_exits_zero_only_when_every_check_passes() {
    let doc = fixture("nitro-attest-2025-01-06.cose");
    let d = doc.to_str().unwrap();
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
    // A pinned PCR that differs fails.
    let bad = run(&[
        "verify",
        d,
        "--at",
        "doc",
        "--pcr",
        &format!("0={}", "00".repeat(48)),
    ]);
    assert!(!bad.ok && bad.stdout.contains("FAIL pcr0"));
    for neg in [
        "NEGATIVE-nitrite-selfsigned.cose",
        "NEGATIVE-oyster-custom-root.cose",
    ] {
        assert!(
            !run(&["verify", fixture(neg).to_str().unwrap(), "--at", "doc"]).ok,
            "{neg}"
        );
    }
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
        ])
        .arg("--nsm-root-out")
        .arg(&root)
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
    let ok = run(&[
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
    ]);
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
    let eif = work.path().join("eif.json");
    std::fs::write(&eif, json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "aa", "PCR1": "bb", "PCR2": "cc"}}).to_string()).unwrap();
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
    assert_eq!(v["pcrs"]["PCR0"], "aa");
    let pcr16 = v["pcrs"]["PCR16"].as_str().unwrap().to_string();
    assert!(run(&["verify", f, "--root", r, "--expect-pcr16", &pcr16]).ok);
    // And the event log replays to it, naming the manifest.
    let log = work.path().join("log.json");
    std::fs::write(&log, v["measurements"].to_string()).unwrap();
    assert!(
        run(&[
            "verify",
            f,
            "--root",
            r,
            "--expect-manifest",
            &img.manifest.digest,
            "--measurements",
            log.to_str().unwrap()
        ])
        .ok
    );
    assert!(
        !run(&[
            "verify",
            f,
            "--root",
            r,
            "--expect-manifest",
            &other.manifest.digest,
            "--measurements",
            log.to_str().unwrap()
        ])
        .ok
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
        helpers: vec![],
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
