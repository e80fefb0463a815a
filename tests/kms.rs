//! The AWS KMS client and `cidboot seal`, against real KMS servers on loopback over TLS:
//! moto (an independent implementation of the KMS API, which checks SigV4 in its
//! authentication mode) for the operator's calls, and the test KMS of tests/kms/test_kms.py for
//! the enclave's attested calls, which only AWS answers: it verifies the signature, the
//! attestation document against the software NSM's root, and evaluates the very statement
//! `cidboot expect --kms-policy` printed.
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
use std::time::Duration;

use cidboot::kms::sealed::{context, SecretsFile};
use cidboot::kms::{KmsClient, KmsError};
use cidboot::nsm::software::{SoftwareNsm, TestCa};
use cidboot::nsm::Nsm;
use common::kms::{Server, Tls};
use common::*;
use serde_json::json;

const ROLE: &str = "arn:aws:iam::111122223333:role/enclave-parent";

/// `cidboot seal ARGS` with `stdin`, in exactly the environment `env` (HOME included).
fn seal(args: &[&str], stdin: &[u8], env: &[(String, String)]) -> Out {
    let mut c = cidboot();
    c.arg("seal")
        .args(args)
        .env_clear()
        .env("CIDBOOT_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn seal_args<'a>(s: &'a Server, ca: &'a Path, key: &'a str, name: &'a str) -> Vec<&'a str> {
    vec![
        "--key-id",
        key,
        "--name",
        name,
        "--kms-endpoint",
        &s.url,
        "--ca",
        ca.to_str().unwrap(),
    ]
}

fn code(e: &KmsError) -> &str {
    e.code().unwrap_or_else(|| panic!("not KMS's refusal: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn seal_binds_the_name_and_moto_checks_every_signature() {
    let work = tempfile::tempdir().unwrap();
    let tls = Tls::make(work.path());
    let moto = Server::moto(&tls, true, 1);
    let key = moto.keys[0].as_str();
    let env = moto.env(work.path());
    let value = b"correct horse\0battery \xff staple\n";

    let o = seal(&seal_args(&moto, &tls.ca, key, "db-password"), value, &env);
    assert!(o.ok, "{}", o.stderr);
    let file = SecretsFile::parse(o.stdout.as_bytes()).unwrap();
    assert_eq!(file.secrets.len(), 1);
    let entry = &file.secrets[0];
    assert_eq!(
        (entry.name.as_str(), entry.key_id.as_str()),
        ("db-password", key)
    );
    assert_eq!(o.stdout, entry.to_toml(), "nothing else on stdout");
    // --json: the same entry, with the fields docs/json.md lists.
    let mut args = seal_args(&moto, &tls.ca, key, "db-password");
    args.push("--json");
    let j = seal(&args, value, &env);
    assert!(j.ok, "{}", j.stderr);
    assert_documented(&j.stdout, "`seal`", 0);
    let v = j.json();
    assert_eq!(
        (v["name"].as_str(), v["key_id"].as_str()),
        (Some("db-password"), Some(key))
    );
    let opened = moto
        .client(&tls.ca, None)
        .decrypt(
            Some(key),
            &base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                v["ciphertext"].as_str().unwrap(),
            )
            .unwrap(),
            &context("db-password"),
        )
        .await
        .unwrap();
    assert_eq!(opened.as_slice(), value);

    // moto opens it, with the same signed credentials, only under its own name.
    let client = moto.client(&tls.ca, None);
    let ct = entry.ciphertext_bytes().unwrap();
    let opened = client
        .decrypt(Some(key), &ct, &context("db-password"))
        .await
        .unwrap();
    assert_eq!(opened.as_slice(), value);
    let e = client
        .decrypt(Some(key), &ct, &context("api-token"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidCiphertextException", "{e}");

    // --generate: 32 bytes nobody saw, different each time.
    let g = |name: &str| {
        let o = seal(
            &[&seal_args(&moto, &tls.ca, key, name)[..], &["--generate"]].concat(),
            b"",
            &env,
        );
        assert!(o.ok, "{}", o.stderr);
        SecretsFile::parse(o.stdout.as_bytes()).unwrap().secrets[0].clone()
    };
    let (a, b) = (g("app-key"), g("app-key"));
    assert_ne!(a.ciphertext, b.ciphertext);
    let ka = client
        .decrypt(
            Some(key),
            &a.ciphertext_bytes().unwrap(),
            &context("app-key"),
        )
        .await
        .unwrap();
    let kb = client
        .decrypt(
            Some(key),
            &b.ciphertext_bytes().unwrap(),
            &context("app-key"),
        )
        .await
        .unwrap();
    assert_eq!((ka.len(), kb.len()), (32, 32));
    assert_ne!(ka.as_slice(), kb.as_slice());

    // A wrong secret key signs wrongly, and moto says so: the signature is really checked.
    let mut wrong = env.clone();
    wrong[2].1 = "not-the-secret-key".into();
    let o = seal(
        &seal_args(&moto, &tls.ca, key, "db-password"),
        value,
        &wrong,
    );
    assert!(!o.ok && o.stdout.is_empty(), "{}", o.stdout);
    assert!(
        o.stderr.contains("KMS Encrypt with key")
            && o.stderr.contains(key)
            && o.stderr
                .contains("HTTP 403 SignatureDoesNotMatch: The request signature"),
        "{}",
        o.stderr
    );
    let e = moto
        .client(&tls.ca, Some("not-the-secret-key"))
        .decrypt(Some(key), &ct, &context("db-password"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("KMS Decrypt with key"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plain_calls_round_trip_through_moto() {
    let work = tempfile::tempdir().unwrap();
    let tls = Tls::make(work.path());
    let moto = Server::moto(&tls, false, 2);
    let (k1, k2) = (moto.keys[0].as_str(), moto.keys[1].as_str());
    let c = moto.client(&tls.ca, None);
    let ctx = context("x");

    let sealed = c.encrypt(k1, b"plain", &ctx).await.unwrap();
    assert_eq!(sealed.key_id, k1);
    assert_eq!(
        c.decrypt(None, &sealed.ciphertext, &ctx)
            .await
            .unwrap()
            .as_slice(),
        b"plain"
    );
    let e = c
        .decrypt(Some(k2), &sealed.ciphertext, &ctx)
        .await
        .unwrap_err();
    assert!(e.code().is_some(), "the other key is refused by KMS: {e}");

    let dk = c.generate_data_key(k1, 32, &ctx).await.unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert_eq!(
        c.decrypt(Some(k1), &dk.ciphertext, &ctx)
            .await
            .unwrap()
            .as_slice(),
        dk.plaintext.as_slice()
    );
    let hidden = c
        .generate_data_key_without_plaintext(k1, 16, &ctx)
        .await
        .unwrap();
    assert_eq!(
        c.decrypt(Some(k1), &hidden.ciphertext, &ctx)
            .await
            .unwrap()
            .len(),
        16
    );
    assert_eq!(c.generate_random(1024).await.unwrap().len(), 1024);

    // Every failure names the operation, the key and KMS's code; bad input never leaves.
    let missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    let e = c.encrypt(missing, b"p", &ctx).await.unwrap_err();
    assert_eq!(code(&e), "NotFoundException");
    let s = e.to_string();
    assert!(
        s.contains("KMS Encrypt with key") && s.contains(missing),
        "{s}"
    );
    for e in [
        c.encrypt(k1, &[0; 4097], &ctx).await.unwrap_err(),
        c.encrypt(k1, b"", &ctx).await.unwrap_err(),
        c.generate_random(0).await.unwrap_err(),
        c.generate_random(1025).await.unwrap_err(),
        c.decrypt(None, &[], &ctx).await.unwrap_err(),
    ] {
        assert!(matches!(e, KmsError::Input { .. }), "{e}");
    }
}

#[test]
fn seal_refuses_what_it_cannot_do_safely() {
    let work = tempfile::tempdir().unwrap();
    let tls = Tls::make(work.path());
    let moto = Server::moto(&tls, false, 1);
    let key = moto.keys[0].as_str();
    let env = moto.env(work.path());
    let args = seal_args(&moto, &tls.ca, key, "n");
    let refused = |args: &[&str], stdin: &[u8], env: &[(String, String)], want: &str| {
        let o = seal(args, stdin, env);
        assert!(!o.ok, "{args:?} passed");
        assert!(o.stdout.is_empty(), "{args:?}: stdout {:?}", o.stdout);
        assert!(o.stderr.contains(want), "{args:?}: {}", o.stderr);
    };
    // An http endpoint, with the reason.
    refused(
        &[
            "--key-id",
            key,
            "--name",
            "n",
            "--kms-endpoint",
            &moto.url.replace("https", "http"),
        ],
        b"v",
        &env,
        "only https:// is accepted",
    );
    refused(
        &[
            "--key-id",
            key,
            "--name",
            "../n",
            "--kms-endpoint",
            &moto.url,
        ],
        b"v",
        &env,
        "secret name \"../n\"",
    );
    refused(&args, b"", &env, "nothing on stdin");
    refused(&args, &[b'x'; 4097], &env, "over 4096 bytes");
    // The KMS's certificate is trusted only through the web PKI roots or --ca.
    refused(
        &["--key-id", key, "--name", "n", "--kms-endpoint", &moto.url],
        b"v",
        &env,
        "UnknownIssuer; KMS is trusted only through the web PKI roots, or a CA given with --ca or AWS_CA_BUNDLE",
    );
    let no_region: Vec<_> = env
        .iter()
        .filter(|(k, _)| k != "AWS_REGION")
        .cloned()
        .collect();
    refused(&args, b"v", &no_region, "no AWS region");
    let no_keys: Vec<_> = env
        .iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET"))
        .cloned()
        .collect();
    refused(&args, b"v", &no_keys, "AWS credentials: none found");
    // The same from a profile file works.
    let aws = work.path().join(".aws");
    std::fs::create_dir(&aws).unwrap();
    std::fs::write(
        aws.join("credentials"),
        format!(
            "[ops]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            moto.access_key_id, moto.secret_access_key
        ),
    )
    .unwrap();
    std::fs::write(aws.join("config"), "[profile ops]\nregion = us-east-1\n").unwrap();
    let profile = vec![
        ("HOME".to_string(), work.path().display().to_string()),
        ("AWS_PROFILE".to_string(), "ops".to_string()),
    ];
    let o = seal(&args, b"v", &profile);
    assert!(o.ok, "{}", o.stderr);
}

/// The AWS CLI's variables for the endpoint and its CA: `seal` with neither flag goes where
/// `aws kms` would, and the flags win over the variables.
#[test]
fn seal_takes_the_endpoint_and_ca_from_the_aws_cli_variables() {
    let work = tempfile::tempdir().unwrap();
    let tls = Tls::make(work.path());
    let moto = Server::moto(&tls, true, 1);
    let key = moto.keys[0].as_str();
    let ca = tls.ca.to_str().unwrap();
    let with = |vars: &[(&str, &str)]| {
        let mut env = moto.env(work.path());
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let sealed = |o: &Out| {
        assert!(o.ok, "{}", o.stderr);
        let e = SecretsFile::parse(o.stdout.as_bytes()).unwrap().secrets[0].clone();
        assert_eq!(e.key_id, key);
    };
    let plain = ["--key-id", key, "--name", "n"];
    // No flag: AWS_ENDPOINT_URL_KMS and AWS_CA_BUNDLE, as `aws kms` reads them; signed, so
    // moto's authentication mode checks the signature made for that endpoint.
    let env = with(&[("AWS_ENDPOINT_URL_KMS", &moto.url), ("AWS_CA_BUNDLE", ca)]);
    sealed(&seal(&plain, b"v", &env));
    // AWS_ENDPOINT_URL, for every service, when the service's own is not set.
    sealed(&seal(
        &plain,
        b"v",
        &with(&[("AWS_ENDPOINT_URL", &moto.url), ("AWS_CA_BUNDLE", ca)]),
    ));
    // The service's own wins over AWS_ENDPOINT_URL, and the flags over both.
    let dead = "https://127.0.0.1:9";
    sealed(&seal(
        &plain,
        b"v",
        &with(&[
            ("AWS_ENDPOINT_URL", dead),
            ("AWS_ENDPOINT_URL_KMS", &moto.url),
            ("AWS_CA_BUNDLE", ca),
        ]),
    ));
    let missing = work.path().join("no-such-ca.pem");
    let elsewhere = with(&[
        ("AWS_ENDPOINT_URL_KMS", dead),
        ("AWS_CA_BUNDLE", missing.to_str().unwrap()),
    ]);
    sealed(&seal(
        &seal_args(&moto, &tls.ca, key, "n"),
        b"v",
        &elsewhere,
    ));
    // Without AWS_CA_BUNDLE the private CA is not trusted; with one that does not exist, it
    // is named.
    let o = seal(&plain, b"v", &with(&[("AWS_ENDPOINT_URL_KMS", &moto.url)]));
    assert!(
        !o.ok && o.stderr.contains("UnknownIssuer") && o.stderr.contains("AWS_CA_BUNDLE"),
        "{}",
        o.stderr
    );
    let o = seal(
        &plain,
        b"v",
        &with(&[
            ("AWS_ENDPOINT_URL_KMS", &moto.url),
            ("AWS_CA_BUNDLE", missing.to_str().unwrap()),
        ]),
    );
    assert!(
        !o.ok && o.stderr.contains(missing.to_str().unwrap()),
        "{}",
        o.stderr
    );
    // http:// from the variable is refused like the flag's, naming the variable.
    let o = seal(
        &plain,
        b"v",
        &with(&[("AWS_ENDPOINT_URL_KMS", &moto.url.replace("https", "http"))]),
    );
    assert!(
        !o.ok
            && o.stderr.contains("only https:// is accepted")
            && o.stderr.contains("AWS_ENDPOINT_URL_KMS"),
        "{}",
        o.stderr
    );
}

/// An EIF's PCRs as eif_build prints them.
fn eif_pcrs(dir: &Path, name: &str, pcrs: [&str; 3]) -> PathBuf {
    let p = dir.join(name);
    let m = json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcrs[0], "PCR1": pcrs[1], "PCR2": pcrs[2]}});
    std::fs::write(&p, m.to_string()).unwrap();
    p
}

/// What `cidboot expect` says of an image: `--json`, and with `extra` flags.
fn expect(reference: &str, gw: &Gateway, config: Option<&Path>, extra: &[&str]) -> Out {
    let mut args = vec![
        "expect",
        reference,
        "--gateway",
        &gw.url,
        "--ca",
        gw.ca.to_str().unwrap(),
    ];
    if let Some(c) = config {
        args.extend(["--config", c.to_str().unwrap()]);
    }
    args.extend(extra);
    let o = run(&args);
    assert!(o.ok, "expect: {}", o.stderr);
    o
}

/// A software NSM as the enclave would be after boot: PCR0-2 from `eif`, PCR16 extended with
/// every event of the log `expect` computed, every PCR locked.
fn enclave(ca: &TestCa, eif: &Path, expected: &serde_json::Value) -> SoftwareNsm {
    let pcrs = cidboot::nsm::parse_eif_pcrs(&std::fs::read(eif).unwrap()).unwrap();
    let nsm = SoftwareNsm::new(ca, &pcrs).unwrap();
    let events: Vec<Vec<u8>> = expected["measurements"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| hex::decode(e["digest"].as_str().unwrap()).unwrap())
        .collect();
    let pcr16 = cidboot::nsm::measure_and_lock(&nsm, 16, &events).unwrap();
    assert_eq!(
        hex::encode(pcr16),
        expected["pcrs"]["PCR16"].as_str().unwrap()
    );
    nsm
}

fn config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A `Decrypt` from `nsm` is refused by the policy, and the error shows the document's PCR0
/// and `pcr` (`PCRn=HEX`).
async fn denied(client: &KmsClient, key: &str, ct: &[u8], nsm: SoftwareNsm, pcr0: &str, pcr: &str) {
    let e = client
        .decrypt_attested(&nsm, Some(key), ct, &context("db-password"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, KmsError::AccessDenied { .. }), "{s}");
    assert!(
        s.contains(pcr) && s.contains(&format!("PCR0={pcr0}")),
        "{s}"
    );
    assert!(s.contains("KMS Decrypt with key") && s.contains(key), "{s}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_printed_policy_admits_exactly_this_enclave() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let img = image("amd64", &[vec![("bin/hello", b"hello, enclave".to_vec())]]);
    let (reference, gw) = publish(&img, dir);
    let (p0, p1, p2) = ("a0".repeat(48), "b1".repeat(48), "c2".repeat(48));
    let eif = eif_pcrs(dir, "eif.json", [&p0, &p1, &p2]);
    let pin = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let cfg = config(
        dir,
        "cidboot.toml",
        &format!(
            "[workload]\nenv = [\"MODE=prod\"]\n[helpers.pins]\nkms-client = \"{}\"\n",
            pin('1')
        ),
    );

    // The operator: the statement to install, and the secret sealed under the key.
    let statement = expect(
        &reference,
        &gw,
        Some(&cfg),
        &[
            "--eif-pcrs",
            eif.to_str().unwrap(),
            "--kms-policy",
            "--principal",
            ROLE,
        ],
    );
    let policy = config(dir, "statement.json", &statement.stdout);
    let ca = TestCa::generate().unwrap();
    let root = config(dir, "nsm-root.pem", ca.root_pem());
    let tls = Tls::make(dir);
    let kms = Server::test_kms(&tls, &root, &policy, ROLE, None);
    let key = kms.keys[0].as_str();
    let client = kms.client(&tls.ca, None);
    let secret = client
        .encrypt(key, b"the database password", &context("db-password"))
        .await
        .unwrap();

    // The enclave that booted this EIF, image and configuration gets it, and only it sees it.
    let measured = expect(
        &reference,
        &gw,
        Some(&cfg),
        &["--eif-pcrs", eif.to_str().unwrap(), "--json"],
    )
    .json();
    let nsm = enclave(&ca, &eif, &measured);
    let opened = client
        .decrypt_attested(&nsm, Some(key), &secret.ciphertext, &context("db-password"))
        .await
        .unwrap();
    assert_eq!(opened.as_slice(), b"the database password");
    let dk = client
        .generate_data_key_attested(&nsm, key, 32, &context("app-key"))
        .await
        .unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    let again = client
        .decrypt_attested(&nsm, Some(key), &dk.ciphertext, &context("app-key"))
        .await
        .unwrap();
    assert_eq!(again.as_slice(), dk.plaintext.as_slice());
    let r = client.generate_random_attested(&nsm, 48).await.unwrap();
    assert_eq!(r.len(), 48);
    // The name is bound: the same ciphertext under another name does not open.
    let e = client
        .decrypt_attested(&nsm, Some(key), &secret.ciphertext, &context("api-token"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidCiphertextException", "{e}");
    // Without a Recipient, the same principal gets nothing: the statement's conditions need
    // an attestation document.
    let e = client
        .decrypt(Some(key), &secret.ciphertext, &context("db-password"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), "AccessDeniedException", "{e}");

    // One byte of the image, a helper, or the configuration: another PCR16, refused, and the
    // error shows the PCRs the document carried.
    let tampered = image("amd64", &[vec![("bin/hello", b"hello, enclavf".to_vec())]]);
    let (tref, tgw) = publish(&tampered, dir);
    let other_helper = config(
        dir,
        "helper.toml",
        &format!(
            "[workload]\nenv = [\"MODE=prod\"]\n[helpers.pins]\nkms-client = \"{}\"\n",
            pin('2')
        ),
    );
    let other_config = config(
        dir,
        "config.toml",
        &format!(
            "[workload]\nenv = [\"MODE=dev\"]\n[helpers.pins]\nkms-client = \"{}\"\n",
            pin('1')
        ),
    );
    for (r, g, c) in [
        (&tref, &tgw, &cfg),
        (&reference, &gw, &other_helper),
        (&reference, &gw, &other_config),
    ] {
        let m = expect(
            r,
            g,
            Some(c),
            &["--eif-pcrs", eif.to_str().unwrap(), "--json"],
        )
        .json();
        let pcr16 = m["pcrs"]["PCR16"].as_str().unwrap().to_string();
        assert_ne!(pcr16, measured["pcrs"]["PCR16"]);
        denied(
            &client,
            key,
            &secret.ciphertext,
            enclave(&ca, &eif, &m),
            &p0,
            &format!("PCR16={pcr16}"),
        )
        .await;
    }
    // Another EIF (PCR1), same image and configuration.
    let other_eif = eif_pcrs(dir, "other.json", [&p0, &"b2".repeat(48), &p2]);
    denied(
        &client,
        key,
        &secret.ciphertext,
        enclave(&ca, &other_eif, &measured),
        &p0,
        &format!("PCR1={}", "b2".repeat(48)),
    )
    .await;

    // A document under another root is not an attestation at all; a wrong key does not sign.
    let stranger = enclave(&TestCa::generate().unwrap(), &eif, &measured);
    let e = client
        .decrypt_attested(
            &stranger,
            Some(key),
            &secret.ciphertext,
            &context("db-password"),
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "ValidationException", "{e}");
    let e = kms
        .client(&tls.ca, Some("wrong"))
        .generate_random_attested(&nsm, 8)
        .await
        .unwrap_err();
    assert_eq!(code(&e), "InvalidSignatureException", "{e}");
}

/// A test KMS that misbehaves as `fault` says, and an enclave to call it.
fn faulty(dir: &Path, fault: &str) -> (Server, KmsClient, SoftwareNsm) {
    let tls = Tls::make(dir);
    let ca = TestCa::generate().unwrap();
    let root = config(dir, "root.pem", ca.root_pem());
    let policy = config(dir, "deny.json", "{\"Effect\": \"Deny\"}");
    let kms = Server::test_kms(&tls, &root, &policy, ROLE, Some(fault));
    let client = kms
        .client(&tls.ca, None)
        .with_timeout(Duration::from_secs(2));
    let nsm = SoftwareNsm::new(&ca, &[]).unwrap();
    nsm.lock_pcrs(32).unwrap();
    (kms, client, nsm)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_oversized_or_late_answer_is_refused() {
    let work = tempfile::tempdir().unwrap();

    let (_kms, c, nsm) = faulty(work.path(), "truncated-cfr");
    let e = c.generate_random_attested(&nsm, 32).await.unwrap_err();
    assert!(matches!(e, KmsError::Recipient { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("KMS GenerateRandom: opening CiphertextForRecipient"),
        "{e}"
    );

    let (_kms, c, nsm) = faulty(work.path(), "with-plaintext");
    let e = c.generate_random_attested(&nsm, 32).await.unwrap_err();
    assert!(e.to_string().contains("a Plaintext in the answer"), "{e}");

    let (_kms, c, nsm) = faulty(work.path(), "oversize");
    let e = c.generate_random_attested(&nsm, 32).await.unwrap_err();
    assert!(matches!(e, KmsError::TooLarge { max: 65536, .. }), "{e}");

    let (_kms, c, nsm) = faulty(work.path(), "stall");
    let started = std::time::Instant::now();
    let e = c
        .decrypt_attested(&nsm, Some("alias/k"), b"ciphertext", &context("n"))
        .await
        .unwrap_err();
    assert!(matches!(e, KmsError::Timeout { secs: 2, .. }), "{e}");
    assert!(
        e.to_string().contains("KMS Decrypt with key alias/k"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `cidboot host` with an egress proxy that allows `allow`; killed when dropped.
struct Parent {
    child: std::process::Child,
    proxy: String,
}

impl Parent {
    fn start(dir: &Path, allow: &str) -> Parent {
        use std::io::BufRead;
        let cfg = config(
            dir,
            "host.toml",
            &format!("[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"{allow}\"]\n"),
        );
        let mut child = cidboot()
            .args(["host", "--config"])
            .arg(&cfg)
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let proxy = loop {
            let line = lines.next().expect("the host ended").unwrap();
            if let Some(a) = line.split("egress proxy listening on ").nth(1) {
                break a.trim().to_string();
            }
        };
        // Keep reading, so that the host never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Parent { child, proxy }
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In an enclave the client connects through the parent's egress proxy, as the gateways do:
/// the tunnel carries TLS that ends in the client, and the parent's allowlist still decides.
#[tokio::test(flavor = "multi_thread")]
async fn calls_go_through_the_parents_proxy_with_tls_ending_in_the_client() {
    use cidboot::kms::credentials::StaticCredentials;
    use cidboot::kms::{AwsCredentials, Endpoint};
    use cidboot::transport::connect::ConnectProxy;
    use std::sync::Arc;

    let work = tempfile::tempdir().unwrap();
    let tls = Tls::make(work.path());
    let moto = Server::moto(&tls, true, 1);
    let port = moto.url.rsplit(':').next().unwrap().to_string();
    let parent = Parent::start(work.path(), &format!("127.0.0.1:{port}"));
    let through = |url: &str| {
        KmsClient::new(
            Endpoint::new(&moto.region, Some(url)).unwrap(),
            Arc::new(ConnectProxy {
                proxy: parent.proxy.parse().unwrap(),
            }),
            cidboot::transport::tls::client_config(Some(&tls.ca)).unwrap(),
            Arc::new(StaticCredentials::new(
                AwsCredentials::new(&moto.access_key_id, &moto.secret_access_key, None),
                "the test",
            )),
        )
    };
    let c = through(&moto.url);
    let key = moto.keys[0].as_str();
    let sealed = c
        .encrypt(key, b"via the parent", &context("p"))
        .await
        .unwrap();
    let opened = c
        .decrypt(Some(key), &sealed.ciphertext, &context("p"))
        .await
        .unwrap();
    assert_eq!(opened.as_slice(), b"via the parent");
    // An endpoint the parent's allowlist does not name is refused by the proxy.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let e = through(&format!(
        "https://127.0.0.1:{}",
        other.local_addr().unwrap().port()
    ))
    .generate_random(8)
    .await
    .unwrap_err();
    assert!(matches!(e, KmsError::Transport { .. }), "{e}");
    let s = e.to_string();
    assert!(
        s.contains("KMS GenerateRandom") && s.contains("egress proxy refused"),
        "{s}"
    );
}
