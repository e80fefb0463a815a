//! Sealed secrets delivered to the workload by `cidboot run`, end to end with real parts: the
//! secrets sealed with `cidboot seal` by the test KMS (tests/kms/test_kms.py: it checks SigV4,
//! verifies the software NSM's attestation document against its root and evaluates the very
//! statement `cidboot expect --kms-policy --eif-pcrs` printed for this image and
//! configuration, then answers with `openssl cms`), served over TLS trusted through the
//! configuration's `[tls] extra_ca`. The workload (the sample probe, as the image's user)
//! reports what it got: each variable, each file's bytes, owner and mode.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use cidboot::kms::sealed::{SealedSecret, SecretsFile};
use cidboot::nsm::software::TestCa;
use common::kms::{Server, Tls};
use common::*;
use serde_json::json;

const ROLE: &str = "arn:aws:iam::111122223333:role/enclave-parent";
const DB_PASSWORD: &[u8] = b"correct horse battery staple";
const API_TOKEN: &[u8] = b"tok\0en\xff";
/// The published BIP-39 vector for 32 bytes of 0x7f.
const LEGAL: &str = "legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth useful legal winner thank year wave sausage worth title";

/// Everything a boot needs: the image, the gateway, the EIF's PCRs, the software NSM's CA and
/// the test KMS, whose statement is written once the configuration is known.
struct Bed {
    dir: tempfile::TempDir,
    reference: String,
    gw: Gateway,
    tls: Tls,
    kms: Server,
    eif: PathBuf,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    policy: PathBuf,
}

fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn probe(extra: &[TarEntry]) -> Image {
    let tars = if extra.is_empty() {
        vec![base_layer()]
    } else {
        vec![base_layer(), tar_entries(extra)]
    };
    image_from_tars(&tars, json!({"Entrypoint": ["/bin/probe"], "User": "app"}))
}

impl Bed {
    fn new() -> Bed {
        let dir = private_tempdir();
        let (reference, gw) = publish(&probe(&[]), dir.path());
        let tls = Tls::make(dir.path());
        let ca = TestCa::generate().unwrap();
        let root = write(dir.path(), "nsm-root.pem", ca.root_pem());
        let ca_cert = root.clone();
        let ca_key = write(dir.path(), "nsm-root.key", ca.key_pem());
        // Denies everything until the statement for the configuration is written.
        let policy = write(dir.path(), "statement.json", "{\"Effect\": \"Deny\"}");
        let kms = Server::test_kms(&tls, &root, &policy, ROLE, None);
        let m = json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": "a0".repeat(48), "PCR1": "b1".repeat(48), "PCR2": "c2".repeat(48)}});
        let eif = write(dir.path(), "eif.json", m.to_string());
        Bed {
            dir,
            reference,
            gw,
            tls,
            kms,
            eif,
            ca_cert,
            ca_key,
            policy,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn key(&self) -> &str {
        &self.kms.keys[0]
    }

    /// `cidboot seal` against the test KMS, with its credentials.
    fn seal(&self, name: &str, value: Option<&[u8]>) -> SealedSecret {
        let mut c = cidboot();
        c.args([
            "seal",
            "--key-id",
            self.key(),
            "--name",
            name,
            "--kms-endpoint",
        ])
        .arg(&self.kms.url)
        .arg("--ca")
        .arg(&self.tls.ca)
        .env_clear()
        .env("CIDBOOT_LOG", "warn")
        .envs(self.kms.env(self.path()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if value.is_none() {
            c.arg("--generate");
        }
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.unwrap_or_default())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        SecretsFile::parse(&o.stdout).unwrap().secrets.remove(0)
    }

    /// The runtime configuration: `[kms]` at the test KMS, its CA in `[tls] extra_ca`, the
    /// probe reporting each secret, a prestart helper (the probe too) that looks for them.
    fn config(&self, helper_pins: &str) -> String {
        let ca = std::fs::read_to_string(&self.tls.ca).unwrap();
        let key = self.key();
        let probe_args = [
            "secret",
            "DB_PASSWORD",
            "secret",
            "API_TOKEN",
            "secret",
            "SEED_PHRASE",
            "cat",
            "/run/secrets/db-password",
            "secret",
            "/run/secrets/db-password",
            "cat",
            "/run/secrets/api-token",
            "cat",
            "/run/secrets/app-key",
            "secret",
            "/run/secrets/app-key",
            "open",
            "/run/secrets/db-password",
            "create",
            "/run/secrets/new",
        ];
        format!(
            r#"{helper_pins}
[[prestart]]
helper = "probe"
args = ["secret", "DB_PASSWORD", "secret", "/run/secrets/db-password", "print", "prestart done"]

[kms]
region = "{region}"
endpoint = "{url}"

[tls]
extra_ca = """
{ca}"""

[workload]
cmd = {cmd}

[[secrets]]
name = "db-password"
key_id = "{key}"
env = "DB_PASSWORD"
file = "/run/secrets/db-password"

[[secrets]]
name = "api-token"
key_id = "{key}"
env = "API_TOKEN"
file = "/run/secrets/api-token"
format = "base64"

[[secrets]]
name = "seed"
key_id = "{key}"
env = "SEED_PHRASE"
format = "mnemonic"

[[secrets]]
name = "app-key"
key_id = "{key}"
file = "/run/secrets/app-key"
format = "hex"
"#,
            region = self.kms.region,
            url = self.kms.url,
            cmd = serde_json::to_string(&probe_args).unwrap(),
        )
    }

    /// Writes the statement `cidboot expect --kms-policy --eif-pcrs` prints for `config` as the
    /// test KMS's key policy.
    fn admit(&self, config: &Path) {
        let o = run(&[
            "expect",
            &self.reference,
            "--gateway",
            &self.gw.url,
            "--ca",
            self.gw.ca.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--eif-pcrs",
            self.eif.to_str().unwrap(),
            "--kms-policy",
            "--principal",
            ROLE,
        ]);
        assert!(o.ok, "expect: {}", o.stderr);
        std::fs::write(&self.policy, &o.stdout).unwrap();
    }

    /// `cidboot run` of `reference` (served by `gw`) with `config` and `secrets`, the software
    /// NSM reporting the EIF's PCR0-2, KMS asked with the test KMS's credentials.
    fn run(
        &self,
        reference: &str,
        gw: &Gateway,
        config: &Path,
        secrets: &Path,
        extra: &[&str],
    ) -> Ran {
        let mut c = cidboot();
        c.args(["run", reference, "--gateway", &gw.url, "--ca"])
            .arg(&gw.ca)
            .arg("--config")
            .arg(config)
            .arg("--secrets")
            .arg(secrets)
            .args(["--nsm", "software", "--nsm-pcrs"])
            .arg(&self.eif)
            .arg("--nsm-ca-cert")
            .arg(&self.ca_cert)
            .arg("--nsm-ca-key")
            .arg(&self.ca_key)
            .args(["--attestation-listen", "127.0.0.1:0"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CIDBOOT_LOG", "info")
            .envs(self.kms.env(self.path()))
            .envs(OPERATORS_ENDPOINT);
        let o = c.output().unwrap();
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }
}

/// The AWS CLI's endpoint and CA variables, which `cidboot seal` honours, pointing nowhere:
/// a run asks the measured `[kms]` only, so it never reads them.
const OPERATORS_ENDPOINT: [(&str, &str); 3] = [
    ("AWS_ENDPOINT_URL_KMS", "https://127.0.0.1:9"),
    ("AWS_ENDPOINT_URL", "https://127.0.0.1:9"),
    ("AWS_CA_BUNDLE", "/nonexistent/ca.pem"),
];

fn secrets_file(dir: &Path, name: &str, entries: &[&SealedSecret]) -> PathBuf {
    let text: String = entries.iter().map(|e| e.to_toml() + "\n").collect();
    write(dir, name, text)
}

/// The boot stopped before anything ran, with cidboot's own exit status, naming the secret
/// and saying `want`.
fn stopped(r: &Ran, secret: &str, want: &str) {
    assert_eq!(r.code, Some(125), "{}\n{}", r.stdout, r.stderr);
    assert!(
        !r.stdout.contains("probe:") && !r.stdout.contains("prestart done"),
        "something ran: {}",
        r.stdout
    );
    let err = r
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {}", r.stderr));
    assert!(
        err.contains(&format!("secret {secret:?}")) && err.contains(want),
        "{err}"
    );
}

#[test]
fn each_secret_reaches_the_workload_as_configured_and_nothing_else_gets_it() {
    let bed = Bed::new();
    let db = bed.seal("db-password", Some(DB_PASSWORD));
    let api = bed.seal("api-token", Some(API_TOKEN));
    let seed = bed.seal("seed", Some(&[0x7f; 32]));
    let app = bed.seal("app-key", None);
    let secrets = secrets_file(bed.path(), "secrets.toml", &[&db, &api, &seed, &app]);
    let (helpers, pins) = helper_dir(bed.path(), &["probe"]);
    let text = bed.config(&pins);
    let config = write(bed.path(), "cidboot.toml", &text);
    bed.admit(&config);
    let kept = private_tempdir();
    let rootfs = kept.path().join("root");
    let r = bed.run(
        &bed.reference,
        &bed.gw,
        &config,
        &secrets,
        &[
            "--helpers-dir",
            helpers.to_str().unwrap(),
            "--rootfs",
            rootfs.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    let line = |p: &str| r.line(&format!("probe: {p}"));

    // The environment: raw as sealed, base64, the BIP-39 phrase.
    assert_eq!(
        line("env DB_PASSWORD="),
        String::from_utf8_lossy(DB_PASSWORD)
    );
    let b64 = base64_of(API_TOKEN);
    assert_eq!(line("env API_TOKEN="), b64);
    assert_eq!(line("env SEED_PHRASE="), LEGAL);
    // The files: the same bytes (raw keeps the NUL and the 0xff), the app key as hex.
    assert_eq!(
        line("cat /run/secrets/db-password hex="),
        hex::encode(DB_PASSWORD)
    );
    assert_eq!(
        line("cat /run/secrets/api-token hex="),
        hex::encode(b64.as_bytes())
    );
    let app_hex = hex::decode(line("cat /run/secrets/app-key hex=")).unwrap();
    assert_eq!(app_hex.len(), 64, "32 bytes, as hex");
    assert!(app_hex
        .iter()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    // Owned by the workload's user (app, 1000:1000), 0400, in a 0500 directory of its own;
    // read-only, even to its owner.
    for f in ["db-password", "app-key"] {
        let l = r
            .lines(&format!("probe: secret file /run/secrets/{f} "))
            .into_iter()
            .find(|l| l.starts_with("sha256="))
            .unwrap_or_else(|| panic!("{f}: {}", r.stdout));
        assert!(
            l.ends_with("owner=1000:1000 mode=0400 dir owner=1000:1000 mode=0500"),
            "{l}"
        );
    }
    let open = line("open /run/secrets/db-password ");
    assert!(open == "EACCES" || open == "EROFS", "{open}");
    let create = line("create /run/secrets/new ");
    assert!(create == "EACCES" || create == "EROFS", "{create}");
    assert_eq!(
        r.lines("probe: uid=").last().unwrap(),
        "1000 1000 1000 1000",
        "the workload ran as the image's user"
    );

    // The prestart helper ran first, and saw none of them.
    assert!(r.stdout.contains("prestart done"), "{}", r.stdout);
    assert_eq!(
        r.lines("probe: secret env DB_PASSWORD unset").len(),
        1,
        "{}",
        r.stdout
    );
    assert_eq!(
        r.lines("probe: secret file /run/secrets/db-password ENOENT")
            .len(),
        1,
        "{}",
        r.stdout
    );

    // No value in cidboot's own output: not in its log, not in the JSON report (whose process
    // is the workload's without its secrets).
    let report: serde_json::Value = serde_json::from_str(r.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["exit_code"], 0);
    let env = report["process"]["env"].to_string();
    assert!(
        !env.contains("DB_PASSWORD") && !env.contains("SEED_PHRASE"),
        "{env}"
    );
    for v in [
        String::from_utf8_lossy(DB_PASSWORD).into_owned(),
        b64.clone(),
        "legal winner".into(),
    ] {
        assert!(!r.stderr.contains(&v), "{v} in the log: {}", r.stderr);
        assert!(!r.stdout.lines().last().unwrap().contains(&v));
    }
    assert!(
        r.stderr.contains("secret opened by KMS for the workload"),
        "{}",
        r.stderr
    );
    // The image root was on this disk; the secrets never were: only the empty mount point.
    let dir = rootfs.join("run/secrets");
    assert!(dir.is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[test]
fn another_image_or_configuration_a_swapped_or_missing_ciphertext_stops_the_boot() {
    let bed = Bed::new();
    let db = bed.seal("db-password", Some(DB_PASSWORD));
    let api = bed.seal("api-token", Some(API_TOKEN));
    let seed = bed.seal("seed", Some(&[0x7f; 32]));
    let app = bed.seal("app-key", None);
    let good = secrets_file(bed.path(), "secrets.toml", &[&db, &api, &seed, &app]);
    let (helpers, pins) = helper_dir(bed.path(), &["probe"]);
    let text = bed.config(&pins);
    let config = write(bed.path(), "cidboot.toml", &text);
    bed.admit(&config);
    let h = ["--helpers-dir", helpers.to_str().unwrap()];

    // Another image (one file more), the same configuration: KMS refuses, and the error shows
    // the PCRs the document carried.
    let other = probe(&[TarEntry::File {
        path: "etc/motd",
        data: b"x".to_vec(),
        mode: 0o644,
    }]);
    let (oref, ogw) = publish(&other, bed.path());
    let r = bed.run(&oref, &ogw, &config, &good, &h);
    stopped(&r, "db-password", "AccessDeniedException");
    assert!(
        r.stderr.contains(&format!("PCR0={}", "a0".repeat(48))) && r.stderr.contains("PCR16="),
        "{}",
        r.stderr
    );

    // One byte more in the configuration (a comment): another PCR16, refused the same way.
    let edited = write(bed.path(), "edited.toml", format!("{text}#\n"));
    let r = bed.run(&bed.reference, &bed.gw, &edited, &good, &h);
    stopped(&r, "db-password", "AccessDeniedException");

    // The parent hands api-token's ciphertext over as db-password's: it does not open under
    // that name.
    let mut swapped = api.clone();
    swapped.name = "db-password".into();
    let s = secrets_file(bed.path(), "swapped.toml", &[&swapped, &api, &seed, &app]);
    let r = bed.run(&bed.reference, &bed.gw, &config, &s, &h);
    stopped(&r, "db-password", "InvalidCiphertextException");

    // A ciphertext withheld: the boot stops before anything is fetched.
    let s = secrets_file(bed.path(), "missing.toml", &[&db, &api, &app]);
    let r = bed.run(&bed.reference, &bed.gw, &config, &s, &h);
    stopped(&r, "seed", "no ciphertext for it");
    assert!(!r.stderr.contains("image resolved"), "{}", r.stderr);

    // Values the format cannot take: a mnemonic of 5 bytes, a NUL into a variable.
    let short = bed.seal("seed", Some(b"short"));
    let s = secrets_file(bed.path(), "short.toml", &[&db, &api, &short, &app]);
    let r = bed.run(&bed.reference, &bed.gw, &config, &s, &h);
    stopped(&r, "seed", "needs a 32-byte value");
    let nul = bed.seal("db-password", Some(b"pass\0word"));
    let s = secrets_file(bed.path(), "nul.toml", &[&nul, &api, &seed, &app]);
    let r = bed.run(&bed.reference, &bed.gw, &config, &s, &h);
    stopped(&r, "db-password", "NUL byte");
}

#[test]
fn a_run_without_what_its_secrets_need_is_refused_before_the_fetch() {
    let bed = Bed::new();
    let db = bed.seal("db-password", Some(DB_PASSWORD));
    let (_, pins) = helper_dir(bed.path(), &["probe"]);
    let config = write(bed.path(), "cidboot.toml", bed.config(&pins));
    let s = secrets_file(bed.path(), "secrets.toml", &[&db]);
    // No AWS credentials at all.
    let o = cidboot()
        .args([
            "run",
            &bed.reference,
            "--attestation-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--secrets")
        .arg(&s)
        .env_clear()
        .env("HOME", bed.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(err.contains("AWS credentials: none found"), "{err}");
    // No --secrets.
    let o = cidboot()
        .args([
            "run",
            &bed.reference,
            "--attestation-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .env_clear()
        .envs(bed.kms.env(bed.path()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("secret \"db-password\"")
            && err.contains("no secrets file came with the boot"),
        "{err}"
    );
    // A secrets file that does not parse.
    let bad = write(bed.path(), "bad.toml", "[[secrets]]\nname = \"../x\"\n");
    let o = cidboot()
        .args([
            "run",
            &bed.reference,
            "--attestation-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--secrets")
        .arg(&bad)
        .env_clear()
        .envs(bed.kms.env(bed.path()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{err}");
    assert!(
        err.contains("--secrets: the secrets file is not valid"),
        "{err}"
    );
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A `cidboot host` of the test's, its log kept; killed when dropped.
struct Host {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Host {
    fn start(config: &Path, env: &[(String, String)]) -> Host {
        use std::io::BufRead;
        let mut child = cidboot()
            .args(["host", "--config"])
            .arg(config)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (l, err) = (lines.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let h = Host { child, lines };
        h.wait_for("cidboot host ready", 1);
        h
    }

    /// Waits (10 s at most) until `needle` has appeared `n` times in the log.
    fn wait_for(&self, needle: &str, n: usize) {
        let start = std::time::Instant::now();
        while self.count(needle) < n {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{needle:?} not {n} times in {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The IMDSv2 double of tests/kms/imds.py; stopped when dropped.
struct Imds {
    url: String,
    child: std::process::Child,
    _stdin: std::process::ChildStdin,
}

impl Imds {
    fn start(args: &[&str]) -> Imds {
        use std::io::BufRead;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kms/imds.py");
        let mut child = std::process::Command::new(common::kms::moto_python())
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Imds {
            url: format!("http://127.0.0.1:{}", v["port"]),
            child,
            _stdin: stdin,
        }
    }

    /// The status of one raw request to the double.
    fn status(&self, head: &str) -> String {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(self.url.trim_start_matches("http://")).unwrap();
        s.write_all(
            format!("{head}\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r.split_whitespace().nth(1).unwrap_or_default().to_string()
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr(p: &Path) -> cidboot::transport::addr::Addr {
    format!("unix:{}", p.display()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parent_serves_the_secrets_file_and_the_instance_roles_credentials() {
    use cidboot::kms::Credentials;
    use cidboot::relay::credentials::{fetch, FromParent};
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    // What AWS documents, enforced: a token needs its TTL, a read needs a token.
    // Credentials that live 303 s and are replaced 300 s before they expire (AWS: at least five
    // minutes), so that they are due for a refresh after 3 s; every token expires after 2 s.
    let imds = Imds::start(&[
        "--lifetime",
        "303",
        "--rotate-before",
        "300",
        "--token-cap",
        "2",
    ]);
    assert_eq!(imds.status("PUT /latest/api/token HTTP/1.1"), "400");
    assert_eq!(
        imds.status("GET /latest/meta-data/iam/security-credentials/ HTTP/1.1"),
        "401"
    );

    let key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let enclave = write(
        dir,
        "enclave.toml",
        format!(
            "image = \"ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy\"\n[kms]\nregion = \"us-east-1\"\n[[secrets]]\nname = \"db-password\"\nkey_id = \"{key}\"\nenv = \"DB_PASSWORD\"\n"
        ),
    );
    let entry = |ct: &[u8]| SealedSecret::new("db-password", key, ct).unwrap();
    let secrets = secrets_file(dir, "secrets.toml", &[&entry(b"first ciphertext")]);
    let (boot, creds) = (dir.join("boot.sock"), dir.join("creds.sock"));
    let host_toml = write(
        dir,
        "host.toml",
        format!(
            "[boot]\nlisten = \"unix:{}\"\nconfig = \"{}\"\nsecrets = \"{}\"\n[credentials]\nlisten = \"unix:{}\"\nsource = \"imds\"\nimds_endpoint = \"{}\"\n",
            boot.display(),
            enclave.display(),
            secrets.display(),
            creds.display(),
            imds.url
        ),
    );
    let o = cidboot()
        .args(["host", "--check", "--config"])
        .arg(&host_toml)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let host = Host::start(&host_toml, &[]);

    // The boot configuration and the secrets file, each byte for byte.
    let got = cidboot::relay::bootcfg::fetch(&addr(&boot), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.config.unwrap(), std::fs::read(&enclave).unwrap());
    assert_eq!(got.secrets.unwrap(), std::fs::read(&secrets).unwrap());

    // The instance role's credentials, with their expiration.
    let first = fetch(&addr(&creds)).await.unwrap();
    assert_eq!(first.creds.access_key_id, "ASIAIMDSTEST00000001");
    assert!(first
        .creds
        .session_token
        .as_ref()
        .is_some_and(|t| t.len() > 100));
    let exp = first.expiration.unwrap();
    let left = exp.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left > std::time::Duration::from_secs(290), "{left:?}");
    host.wait_for("credentials served", 1);

    // The enclave's client keeps them until five minutes before they expire: 3 s here.
    let client = FromParent::new(addr(&creds));
    let a = client.credentials().await.unwrap();
    let b = client.credentials().await.unwrap();
    assert_eq!(
        (a.access_key_id.as_str(), b.access_key_id.as_str()),
        ("ASIAIMDSTEST00000001", "ASIAIMDSTEST00000001")
    );
    // The host logs each answer after sending it: the first call's line may still be on its
    // way. Once it is there, a third line (the second call asking again) would follow it.
    host.wait_for("credentials served", 2);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        host.count("credentials served"),
        2,
        "the second call used the kept ones"
    );
    // Then both sides take new ones (the host's token expired meanwhile: it takes another).
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    let c = client.credentials().await.unwrap();
    assert_eq!(c.access_key_id, "ASIAIMDSTEST00000002");
    assert_ne!(*c.secret_access_key, *a.secret_access_key);

    // SIGHUP reads the secrets file again: a rotated value is served at once.
    std::fs::write(&secrets, entry(b"second ciphertext").to_toml()).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(host.child.id() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    host.wait_for("boot configuration for every other enclave", 2);
    let got = cidboot::relay::bootcfg::fetch(&addr(&boot), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.secrets.unwrap(), std::fs::read(&secrets).unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_parent_can_serve_its_own_credentials_and_checks_what_it_would_serve() {
    use cidboot::relay::credentials::fetch;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let creds = dir.join("creds.sock");
    let host_toml = write(
        dir,
        "host.toml",
        format!(
            "[credentials]\nlisten = \"unix:{}\"\nsource = \"environment\"\n",
            creds.display()
        ),
    );
    let env = vec![
        ("HOME".to_string(), dir.display().to_string()),
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            "AKIAHOSTENV000000001".to_string(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            "host-secret".to_string(),
        ),
    ];
    let _host = Host::start(&host_toml, &env);
    let got = fetch(&addr(&creds)).await.unwrap();
    assert_eq!(got.creds.access_key_id, "AKIAHOSTENV000000001");
    assert_eq!(got.creds.secret_access_key.as_str(), "host-secret");
    assert!(got.expiration.is_none());

    // --check refuses what the daemon (or the enclave) could not use, saying what and where.
    let check = |text: String, env: &[(String, String)]| {
        let p = write(dir, "check.toml", text);
        let o = cidboot()
            .args(["host", "--check", "--config"])
            .arg(&p)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let home = vec![("HOME".to_string(), dir.display().to_string())];
    let (code, e) = check(
        format!(
            "[credentials]\nlisten = \"unix:{}\"\nsource = \"environment\"\n",
            creds.display()
        ),
        &home,
    );
    assert_eq!(code, Some(1));
    assert!(
        e.contains("source = \"environment\"") && e.contains("none found"),
        "{e}"
    );
    let (_, e) = check(
        "[credentials]\nlisten = \"tcp:127.0.0.1:0\"\nsource = \"imds\"\nimds_endpoint = \"https://169.254.169.254\"\n".into(),
        &home,
    );
    assert!(e.contains("imds_endpoint"), "{e}");
    let (_, e) = check(
        "[credentials]\nlisten = \"tcp:127.0.0.1:0\"\nsource = \"vault\"\n".into(),
        &home,
    );
    assert!(e.contains("unknown variant `vault`"), "{e}");

    let key = "arn:aws:kms:us-east-1:111122223333:key/k";
    let enclave = write(
        dir,
        "enclave.toml",
        format!(
            "image = \"ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy\"\n[kms]\nregion = \"us-east-1\"\n[[secrets]]\nname = \"db-password\"\nkey_id = \"{key}\"\nenv = \"DB_PASSWORD\"\n[[secrets]]\nname = \"app-key\"\nkey_id = \"{key}\"\nfile = \"/run/secrets/app-key\"\nformat = \"hex\"\n"
        ),
    );
    let only_db = secrets_file(
        dir,
        "only-db.toml",
        &[&SealedSecret::new("db-password", key, b"ct").unwrap()],
    );
    let bad = write(dir, "bad.toml", "[[secrets]]\nname = \"db-password\"\n");
    let boot = |rest: &str| format!("[boot]\nlisten = \"tcp:127.0.0.1:0\"\n{rest}\n");
    let (code, e) = check(
        boot(&format!(
            "config = \"{}\"\nsecrets = \"{}\"",
            enclave.display(),
            only_db.display()
        )),
        &home,
    );
    assert_eq!(code, Some(1));
    assert!(
        e.contains("boot: ")
            && e.contains("secret \"app-key\"")
            && e.contains("no ciphertext for it"),
        "{e}"
    );
    let (_, e) = check(boot(&format!("config = \"{}\"", enclave.display())), &home);
    assert!(
        e.contains("secret \"db-password\"") && e.contains("no secrets file"),
        "{e}"
    );
    let (_, e) = check(
        boot(&format!(
            "config = \"{}\"\nsecrets = \"{}\"",
            enclave.display(),
            bad.display()
        )),
        &home,
    );
    assert!(
        e.contains(&format!(
            "boot.secrets: {}: the secrets file is not valid",
            bad.display()
        )),
        "{e}"
    );
    // Per enclave, a configuration alone or with its secrets; unknown keys refused.
    let (code, e) = check(
        boot(&format!(
            "[boot.enclaves]\n16 = {{ config = \"{}\", secrets = \"{}\" }}\n17 = {{ secrets = \"{}\" }}",
            enclave.display(),
            only_db.display(),
            only_db.display()
        )),
        &home,
    );
    assert_eq!(code, Some(1));
    assert!(
        e.contains("boot.enclaves.16: ") && e.contains("secret \"app-key\""),
        "{e}"
    );
    let (code, e) = check(
        boot(&format!(
            "[boot.enclaves]\n17 = {{ secret = \"{}\" }}",
            only_db.display()
        )),
        &home,
    );
    assert_eq!(code, Some(1));
    assert!(e.contains("unknown field `secret`"), "{e}");
    let (code, e) = check(
        boot(&format!(
            "[boot.enclaves]\n17 = {{ secrets = \"{}\" }}\n18 = \"{}\"",
            only_db.display(),
            enclave.display()
        )),
        &home,
    );
    assert_eq!(code, Some(1), "{e}");
    assert!(
        e.contains("boot.enclaves.18: ") && e.contains("no secrets file"),
        "{e}"
    );
}
