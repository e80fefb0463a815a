//! The KMS proxy (`[kms_proxy]`): the AWS KMS JSON API on loopback, each call made to KMS with
//! the enclave's attestation as its `Recipient`. Against the test KMS of tests/kms/test_kms.py
//! (real TLS, SigV4 checked, the document verified, the very statement `cidboot expect
//! --kms-policy` printed evaluated): requests from inside the workload's sandbox and from boto3
//! (the AWS SDK for Python) under `cidboot run`, and hostile requests against the proxy itself.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use cidboot::kms::proxy::{self, Limits};
use cidboot::nsm::software::{SoftwareNsm, TestCa};
use cidboot::nsm::Nsm;
use common::kms::{moto_python, Server, Tls};
use common::*;
use serde_json::{json, Value};

const ROLE: &str = "arn:aws:iam::111122223333:role/enclave-parent";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

// --- Hostile requests, against a proxy in this process ----------------------------------

/// An HTTP exchange over a fresh connection: the status, the JSON body, how long it took.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // The proxy may answer before it has read everything (a body over the limit).
    let _ = s.write_all(raw);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    parse_response(&resp, started)
}

fn parse_response(resp: &[u8], started: Instant) -> (u16, Value, Duration) {
    let text = String::from_utf8_lossy(resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/x-amz-json-1.1"),
        "{head}"
    );
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
    (status, v, started.elapsed())
}

fn request(target: Option<&str>, body: &str) -> Vec<u8> {
    let mut r = String::from(
        "POST / HTTP/1.1\r\nHost: kms\r\nContent-Type: application/x-amz-json-1.1\r\n",
    );
    if let Some(t) = target {
        r.push_str(&format!("X-Amz-Target: {t}\r\n"));
    }
    // What an SDK adds: a signature the proxy ignores.
    r.push_str("Authorization: AWS4-HMAC-SHA256 Credential=dummy/20250101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=00\r\n");
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r.into_bytes()
}

fn post(addr: SocketAddr, target: &str, body: &str) -> (u16, Value, Duration) {
    exchange(addr, &request(Some(target), body))
}

/// An AWS-shaped error: the status, `__type`, and a message that says `says`.
#[track_caller]
fn refused(got: (u16, Value, Duration), status: u16, code: &str, says: &str) {
    let (s, v, _) = got;
    assert_eq!((s, v["__type"].as_str().unwrap()), (status, code), "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(m.contains(says), "{m}");
}

/// A test KMS (with `fault`, if any), an enclave's software NSM, and a proxy to it with
/// `limits`, served on `rt`.
struct Bed {
    _kms: Server,
    addr: SocketAddr,
    key: String,
}

fn bed(rt: &tokio::runtime::Runtime, dir: &Path, fault: Option<&str>, limits: Limits) -> Bed {
    let tls = Tls::make(dir);
    let ca = TestCa::generate().unwrap();
    let root = write(dir, "root.pem", ca.root_pem());
    // GenerateRandom needs no statement: it is the caller's own permission.
    let policy = write(dir, "deny.json", "{\"Effect\": \"Deny\"}");
    let kms = Server::test_kms(&tls, &root, &policy, ROLE, fault);
    let client = kms
        .client(&tls.ca, None)
        .with_timeout(Duration::from_secs(3));
    let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
    nsm.lock_pcrs(32).unwrap();
    let (addr, serve) = rt
        .block_on(proxy::bind("127.0.0.1:0", client, Arc::new(nsm), limits))
        .unwrap();
    rt.spawn(serve);
    Bed {
        key: kms.keys[0].clone(),
        _kms: kms,
        addr,
    }
}

#[test]
fn hostile_requests_get_kms_shaped_errors_and_the_proxy_keeps_serving() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let limits = Limits {
        read_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let b = bed(&rt, work.path(), None, limits);
    let addr = b.addr;
    let random = r#"{"NumberOfBytes":32}"#;

    let (status, v, _) = post(addr, "TrentService.GenerateRandom", random);
    assert_eq!(status, 200, "{v}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["Plaintext"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 32);
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "KMS's answer, no more: {v}"
    );

    // Other operations, by name, and no target at all.
    for t in ["TrentService.Encrypt", "TrentService.ScheduleKeyDeletion"] {
        let body = format!(r#"{{"KeyId":"{}","Plaintext":"eA=="}}"#, b.key);
        refused(
            post(addr, t, &body),
            400,
            "UnsupportedOperationException",
            t,
        );
    }
    refused(
        exchange(addr, &request(None, random)),
        400,
        "UnknownOperationException",
        "no X-Amz-Target header",
    );
    refused(
        exchange(addr, b"GET /v1/keys HTTP/1.1\r\nHost: kms\r\n\r\n"),
        404,
        "UnknownOperationException",
        "GET /v1/keys",
    );
    // Malformed JSON, a huge NumberOfBytes, a field KMS does not have, a Recipient.
    refused(
        post(addr, "TrentService.GenerateRandom", "{\"NumberOfBytes\":"),
        400,
        "SerializationException",
        "not JSON",
    );
    refused(
        post(
            addr,
            "TrentService.GenerateRandom",
            r#"{"NumberOfBytes":4294967297}"#,
        ),
        400,
        "ValidationException",
        "not 1 to 1024",
    );
    refused(
        post(
            addr,
            "TrentService.Decrypt",
            r#"{"CiphertextBlob":"AQID","Plaintext":"AQID"}"#,
        ),
        400,
        "ValidationException",
        "\"Plaintext\" is not a field of Decrypt",
    );
    refused(
        post(
            addr,
            "TrentService.GenerateRandom",
            r#"{"NumberOfBytes":8,"Recipient":{"KeyEncryptionAlgorithm":"RSAES_OAEP_SHA_256","AttestationDocument":"AQID"}}"#,
        ),
        400,
        "ValidationException",
        "Recipient is not accepted",
    );
    // An oversized body: by its Content-Length, and chunked without one.
    let big = format!(
        r#"{{"NumberOfBytes":8,"GrantTokens":["{}"]}}"#,
        "t".repeat(200 * 1024)
    );
    refused(
        post(addr, "TrentService.GenerateRandom", &big),
        413,
        "ValidationException",
        "over 131072 bytes",
    );
    let mut chunked = b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: TrentService.GenerateRandom\r\nContent-Type: application/x-amz-json-1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("1000\r\n{}\r\n", "x".repeat(4096)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    refused(
        exchange(addr, &chunked),
        413,
        "ValidationException",
        "over 131072 bytes",
    );
    // A head over the limit.
    let huge_head = format!(
        "POST / HTTP/1.1\r\nHost: kms\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(20 * 1024)
    );
    refused(
        exchange(addr, huge_head.as_bytes()),
        431,
        "ValidationException",
        "head is over 16384 bytes",
    );

    // A head that is not HTTP, and one with too many headers.
    refused(
        exchange(addr, b"HELLO KMS\r\n\r\n"),
        400,
        "SerializationException",
        "the request head is not HTTP/1.1",
    );
    let many: String = (0..65).map(|i| format!("X-H{i}: v\r\n")).collect();
    refused(
        exchange(addr, format!("POST / HTTP/1.1\r\n{many}\r\n").as_bytes()),
        431,
        "SerializationException",
        "at most 64 headers",
    );

    // Slow clients: a head that never ends, and a body that never comes. Each gets its answer
    // at the read deadline, and meanwhile others are served.
    let slow = |raw: &'static [u8]| {
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(raw).unwrap();
            let mut resp = Vec::new();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let _ = s.read_to_end(&mut resp);
            parse_response(&resp, started)
        })
    };
    let slow_head = slow(b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Tar");
    let slow_body = slow(b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: TrentService.GenerateRandom\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 20\r\n\r\n{\"Numbe");
    std::thread::sleep(Duration::from_millis(200));
    let (status, _, took) = post(addr, "TrentService.GenerateRandom", random);
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "{took:?}");
    for (t, says) in [
        (slow_head, "no complete request head within 2s"),
        (slow_body, "did not arrive within 2s"),
    ] {
        let got = t.join().unwrap();
        let took = got.2;
        refused(got, 408, "RequestTimeoutException", says);
        assert!(
            (Duration::from_millis(1500)..Duration::from_secs(10)).contains(&took),
            "{took:?}"
        );
    }

    // An AWS SDK's way of sending the same (a real SDK is below): what it gets is KMS's shape.
    let (status, v, _) = post(
        addr,
        "TrentService.GenerateDataKey",
        &format!(r#"{{"KeyId":"{}","KeySpec":"AES_128"}}"#, b.key),
    );
    // The deny-all statement: KMS's own refusal, passed on with the PCRs the document carried.
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["__type"], "AccessDeniedException");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("kms:GenerateDataKey") && m.contains("PCR16="),
        "{m}"
    );
    // Still serving.
    assert_eq!(post(addr, "TrentService.GenerateRandom", random).0, 200);
}

#[test]
fn calls_beyond_the_limit_are_throttled_and_a_stalled_kms_times_out() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_in_flight: 2,
        max_connections: 8,
        read_timeout: Duration::from_secs(2),
        call_deadline: Duration::from_secs(20),
        ..Limits::default()
    };
    // A KMS that never answers: each call holds its place until the client's 3 s limit.
    let b = bed(&rt, work.path(), Some("stall"), limits);
    let addr = b.addr;
    let random = r#"{"NumberOfBytes":16}"#;
    let stalled: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || post(addr, "TrentService.GenerateRandom", random)))
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    for _ in 0..4 {
        let got = post(addr, "TrentService.GenerateRandom", random);
        assert!(
            got.2 < Duration::from_secs(1),
            "throttled at once: {:?}",
            got.2
        );
        refused(got, 400, "ThrottlingException", "at most 2 calls at once");
    }
    for t in stalled {
        refused(
            t.join().unwrap(),
            503,
            "DependencyTimeoutException",
            "no complete answer from https://127.0.0.1:",
        );
    }
    // The places are free again: the next call reaches KMS (and waits for it again).
    refused(
        post(addr, "TrentService.GenerateRandom", random),
        503,
        "DependencyTimeoutException",
        "within 3s",
    );

    // Connections beyond the limit wait in the backlog, and are served when one ends.
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let got = exchange(addr, &request(Some("TrentService.Decrypt"), "{}"));
    assert!(got.2 >= Duration::from_millis(1500), "{:?}", got.2);
    refused(
        got,
        400,
        "ValidationException",
        "CiphertextBlob is required",
    );
    drop(idle);
}

// --- Under `cidboot run`, from the workload and from boto3 --------------------------------

/// An EIF's PCRs as eif_build prints them.
fn eif_pcrs(dir: &Path) -> PathBuf {
    let m = json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }",
        "PCR0": "a0".repeat(48), "PCR1": "b1".repeat(48), "PCR2": "c2".repeat(48)}});
    write(dir, "eif.json", &m.to_string())
}

/// A `cidboot run` in progress, its stdout collected line by line; stopped with SIGTERM when
/// dropped.
struct Booted {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Booted {
    fn start(args: &[&str], env: &[(String, String)]) -> Booted {
        let mut child = cidboot()
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CIDBOOT_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let e = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                e.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Booted {
            child,
            lines,
            stderr,
        }
    }

    /// The rest of the first line that starts with `prefix`, once it is there.
    fn wait_for(&mut self, prefix: &str) -> String {
        let until = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
            {
                return l.to_string();
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "cidboot run ended ({st}) before {prefix:?}:\n{}\n{}",
                    self.lines.lock().unwrap().join("\n"),
                    self.stderr.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < until,
                "no {prefix:?}: {}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn env(&mut self) -> Vec<String> {
        self.wait_for("probe: args=");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("probe: env "))
            .map(String::from)
            .collect()
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap().code()
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The AWS SDK for Python against the proxy at `url`, with dummy credentials: each call's
/// result (a hash of a plaintext) or the error the SDK raised.
const BOTO3: &str = r#"
import base64, hashlib, json, sys
import boto3, botocore.config, botocore.exceptions

ciphertext, key = base64.b64decode(sys.argv[1]), sys.argv[2]
context = {"purpose": "kms-proxy-test"}
# AWS_ENDPOINT_URL_KMS, set for the workload by cidboot, points the client at the proxy.
kms = boto3.client("kms", config=botocore.config.Config(retries={"max_attempts": 1}))

def call(f):
    try:
        return {"ok": f()}
    except botocore.exceptions.ClientError as e:
        return {"code": e.response["Error"]["Code"], "message": e.response["Error"]["Message"],
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}

def sha(b):
    return {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}

out = {
    "decrypt": call(lambda: sha(kms.decrypt(CiphertextBlob=ciphertext, EncryptionContext=context)["Plaintext"])),
    "random": call(lambda: sha(kms.generate_random(NumberOfBytes=64)["Plaintext"])),
    "encrypt": call(lambda: kms.encrypt(KeyId=key, Plaintext=b"x")),
    "delete": call(lambda: kms.schedule_key_deletion(KeyId=key)),
}
data_key = call(lambda: kms.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext=context))
if "ok" in data_key:
    dk = data_key["ok"]
    again = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=context)["Plaintext"]
    out["data_key"] = {"ok": {"bytes": len(dk["Plaintext"]), "same": again == dk["Plaintext"], "key": dk["KeyId"]}}
else:
    out["data_key"] = data_key
print(json.dumps(out))
"#;

fn boto3(dir: &Path, url: &str, ciphertext: &[u8], key: &str) -> Value {
    let script = write(dir, "sdk.py", BOTO3);
    let o = Command::new(moto_python())
        .arg(script)
        .arg(b64(ciphertext))
        .arg(key)
        .env_clear()
        .env("HOME", dir)
        .env("AWS_ACCESS_KEY_ID", "AKIDWORKLOADDUMMY000")
        .env("AWS_SECRET_ACCESS_KEY", "the-workload-signs-with-anything")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL_KMS", url)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn the_workload_and_an_aws_sdk_get_answers_through_the_proxy_under_cidboot_run() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"]}));
    let (reference, gw) = publish(&img, dir);
    let eif = eif_pcrs(dir);

    // The test KMS, the key policy to come, and a secret sealed under its key.
    let tls = Tls::make(dir);
    let ca = TestCa::generate().unwrap();
    let ca_cert = write(dir, "nsm-ca.pem", ca.root_pem());
    let ca_key = write(dir, "nsm-ca.key", &ca.key_pem());
    let policy = write(dir, "statement.json", "{\"Effect\": \"Deny\"}");
    let kms = Server::test_kms(&tls, &ca_cert, &policy, ROLE, None);
    let key = kms.keys[0].clone();
    let secret = b"the workload's database password";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sealed = rt
        .block_on(
            kms.client(&tls.ca, None).encrypt(
                &key,
                secret,
                &[("purpose".to_string(), "kms-proxy-test".to_string())]
                    .into_iter()
                    .collect(),
            ),
        )
        .unwrap();

    // The configuration: the proxy on a port of its own, KMS trusted through extra_ca, and a
    // workload that calls the proxy twice, then waits.
    let config = |port: u16, flavour: &str| {
        let decrypt = json!({"CiphertextBlob": b64(&sealed.ciphertext),
            "EncryptionContext": {"purpose": "kms-proxy-test"}})
        .to_string();
        format!(
            "[kms]\nregion = \"{}\"\nendpoint = \"{}\"\n\n[kms_proxy]\nlisten = \"127.0.0.1:{port}\"\n\n[tls]\nextra_ca = \"\"\"\n{}\"\"\"\n\n[workload]\nenv = [\"FLAVOUR={flavour}\"]\ncmd = [\"kms\", \"TrentService.GenerateRandom\", '{{\"NumberOfBytes\":32}}', \"kms\", \"TrentService.Decrypt\", '{decrypt}', \"sleep\", \"300000\"]\n",
            kms.region,
            kms.url,
            std::fs::read_to_string(&tls.ca).unwrap()
        )
    };
    let boot = |cfg: &Path| {
        let args = [
            "run",
            &reference,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--nsm",
            "software",
            "--nsm-ca-cert",
            ca_cert.to_str().unwrap(),
            "--nsm-ca-key",
            ca_key.to_str().unwrap(),
            "--nsm-pcrs",
            eif.to_str().unwrap(),
            "--attestation-listen",
            "127.0.0.1:0",
        ];
        let env = [
            ("HOME".to_string(), dir.display().to_string()),
            ("AWS_ACCESS_KEY_ID".to_string(), kms.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                kms.secret_access_key.clone(),
            ),
            // The AWS CLI's variables, which `cidboot seal` honours, pointing nowhere: the
            // proxy asks the measured [kms] only (and sets AWS_ENDPOINT_URL_KMS for the
            // workload itself).
            (
                "AWS_ENDPOINT_URL_KMS".to_string(),
                "https://127.0.0.1:9".to_string(),
            ),
            (
                "AWS_CA_BUNDLE".to_string(),
                "/nonexistent/ca.pem".to_string(),
            ),
        ];
        Booted::start(&args, &env)
    };
    let port = free_port();
    let cfg = write(dir, "cidboot.toml", &config(port, "prod"));

    // The operator installs the statement `expect --kms-policy` prints for this boot.
    let o = run(&[
        "expect",
        &reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--eif-pcrs",
        eif.to_str().unwrap(),
        "--kms-policy",
        "--principal",
        ROLE,
    ]);
    assert!(o.ok, "{}", o.stderr);
    std::fs::write(&policy, &o.stdout).unwrap();

    let mut booted = boot(&cfg);
    let url = format!("http://127.0.0.1:{port}");
    let env = booted.env();
    assert!(
        env.contains(&format!("AWS_ENDPOINT_URL_KMS={url}")),
        "{env:?}"
    );
    assert!(
        !env.iter()
            .any(|e| e.starts_with("AWS_SECRET_ACCESS_KEY") || e.starts_with("AWS_ACCESS_KEY_ID")),
        "cidboot's credentials never reach the workload: {env:?}"
    );
    // From inside the sandbox: random bytes, and the sealed value.
    let random = booted.wait_for("probe: kms TrentService.GenerateRandom ");
    assert!(
        random.starts_with("status=200 plaintext-bytes=32 plaintext-sha256="),
        "{random}"
    );
    let opened = booted.wait_for("probe: kms TrentService.Decrypt ");
    assert_eq!(
        opened,
        format!(
            "status=200 plaintext-bytes={} plaintext-sha256={}",
            secret.len(),
            sha256_hex(secret)
        )
    );
    // From the AWS SDK, unchanged, with dummy credentials.
    let sdk = boto3(dir, &url, &sealed.ciphertext, &key);
    assert_eq!(sdk["decrypt"]["ok"]["sha256"], sha256_hex(secret), "{sdk}");
    assert_eq!(sdk["random"]["ok"]["bytes"], 64, "{sdk}");
    assert_eq!(
        sdk["data_key"]["ok"],
        json!({"bytes": 32, "same": true, "key": key}),
        "{sdk}"
    );
    for (call, target) in [
        ("encrypt", "TrentService.Encrypt"),
        ("delete", "TrentService.ScheduleKeyDeletion"),
    ] {
        let e = &sdk[call];
        assert_eq!(e["code"], "UnsupportedOperationException", "{sdk}");
        assert_eq!(e["status"], 400, "{sdk}");
        assert!(e["message"].as_str().unwrap().contains(target), "{sdk}");
    }
    // What only cidboot opens stays cidboot's: the same key and statement admit this enclave,
    // but the workload cannot have the proxy open a sealed secret (here an image's decryption
    // key, which no `env` or `file` hands it), nor make a data key under a secret's name, whose
    // ciphertext a parent could serve back as that secret, its value known to the workload.
    let image_key = rt
        .block_on(kms.client(&tls.ca, None).encrypt(
            &key,
            b"-----BEGIN PRIVATE KEY-----",
            &cidboot::kms::sealed::context("image-key"),
        ))
        .unwrap();
    let proxy: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sealed_ctx = json!({"cidboot:secret": "image-key"});
    refused(
        post(
            proxy,
            "TrentService.Decrypt",
            &json!({"CiphertextBlob": b64(&image_key.ciphertext), "KeyId": key,
                "EncryptionContext": sealed_ctx})
            .to_string(),
        ),
        400,
        "ValidationException",
        "EncryptionContext name \"cidboot:secret\" is reserved",
    );
    refused(
        post(
            proxy,
            "TrentService.GenerateDataKey",
            &json!({"KeyId": key, "KeySpec": "AES_256",
                "EncryptionContext": {"purpose": "x", "cidboot:secret": "db-password"}})
            .to_string(),
        ),
        400,
        "ValidationException",
        "reserved",
    );
    // Its own contexts still work.
    assert_eq!(
        boto3(dir, &url, &sealed.ciphertext, &key)["decrypt"]["ok"]["sha256"],
        sha256_hex(secret)
    );
    assert_eq!(booted.stop(), Some(143));

    // One byte of the configuration: another PCR16, which the statement does not admit. KMS
    // refuses the Decrypt, and the SDK raises AccessDeniedException; GenerateRandom, the
    // caller's own permission, still works.
    let port = free_port();
    let other = write(dir, "other.toml", &config(port, "prof"));
    let mut booted = boot(&other);
    let url = format!("http://127.0.0.1:{port}");
    let denied = booted.wait_for("probe: kms TrentService.Decrypt ");
    assert_eq!(denied, "status=400 error=AccessDeniedException");
    let sdk = boto3(dir, &url, &sealed.ciphertext, &key);
    let e = &sdk["decrypt"];
    assert_eq!(e["code"], "AccessDeniedException", "{sdk}");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("kms:Decrypt")
            && m.contains("PCR16=")
            && m.contains(&format!("PCR0={}", "a0".repeat(48))),
        "{m}"
    );
    assert_eq!(sdk["data_key"]["code"], "AccessDeniedException", "{sdk}");
    assert_eq!(sdk["random"]["ok"]["bytes"], 64, "{sdk}");
    assert_eq!(booted.stop(), Some(143));
}

#[test]
fn a_run_without_credentials_or_with_a_busy_port_stops_before_anything_is_fetched() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let cfg = write(
        dir,
        "cidboot.toml",
        &format!("[kms]\nregion = \"us-east-1\"\n[kms_proxy]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    // No gateway answers there: a run that got as far as fetching would say so instead.
    let args = |c: &mut Command| {
        c.args([
            "run",
            "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "--gateway",
            "https://127.0.0.1:9",
            "--config",
        ])
        .arg(&cfg)
        .env_clear()
        .env("HOME", dir)
        .env("CIDBOOT_LOG", "warn");
    };
    let mut c = cidboot();
    args(&mut c);
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("KMS proxy: its KMS calls are signed with cidboot's own credentials")
            && err.contains("none found"),
        "{err}"
    );
    let mut c = cidboot();
    args(&mut c);
    let o = c
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains(&format!(
            "kms_proxy.listen: cannot listen on tcp:127.0.0.1:{port}"
        )),
        "{err}"
    );
    drop(busy);
}
