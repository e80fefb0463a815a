//! `cidboot publish` against real servers on loopback: moto's S3 (SigV4 checked, the
//! object's metadata read back), and servers that import the CAR and serve it back as a
//! trustless gateway, through which `cidboot check` then fetches and verifies the CID.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::kms::{moto_python, Tls};
use common::*;

/// moto's S3 over TLS, with one bucket; stopped when dropped.
struct S3 {
    url: String,
    region: String,
    id: String,
    secret: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl S3 {
    fn start(tls: &Tls, bucket: &str) -> S3 {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/publish/moto_s3.py");
        let mut child = Command::new(moto_python())
            .arg(script)
            .arg(&tls.cert)
            .arg(&tls.key)
            .args(["--bucket", bucket])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("moto said {line:?}: {e}"));
        let s = |k: &str| v[k].as_str().unwrap().to_string();
        S3 {
            url: format!("https://127.0.0.1:{}", v["port"]),
            region: s("region"),
            id: s("access_key_id"),
            secret: s("secret_access_key"),
            child,
            stdin,
            stdout,
        }
    }

    /// What the bucket holds under `key`, as moto itself stored it.
    fn object(&mut self, key: &str) -> serde_json::Value {
        writeln!(self.stdin, "{key}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image layout in `work`, and the CID and CAR ipfs-car makes of it.
fn layout(work: &Path) -> (PathBuf, String, PathBuf) {
    let img = image(
        "amd64",
        &[
            vec![("bin/app", noise(300_000, 3))],
            vec![("etc/conf", b"published".to_vec())],
        ],
    );
    let dir = work.join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.join("ipfs-car.car");
    let cid = ipfs_car_pack(&dir, &car, false);
    (dir, cid, car)
}

/// `cidboot publish` with exactly `env` (and PATH, HOME) in its environment.
fn publish(args: &[&str], env: &[(&str, &str)], home: &Path) -> (Option<i32>, String, String) {
    let o = cidboot()
        .arg("publish")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home)
        .env("CIDBOOT_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn publish_puts_the_car_in_an_s3_bucket_that_imports_cars() {
    let work = tempfile::tempdir().unwrap();
    let tls = Tls::make(work.path());
    let (dir, cid, car) = layout(work.path());
    let mut s3 = S3::start(&tls, "cidboot-images");
    let ca = tls.ca.to_str().unwrap();
    let (id, region, url) = (s3.id.clone(), s3.region.clone(), s3.url.clone());
    let env = |secret: &str| {
        vec![
            ("AWS_ACCESS_KEY_ID", id.clone()),
            ("AWS_SECRET_ACCESS_KEY", secret.to_string()),
            ("AWS_REGION", region.clone()),
            ("AWS_ENDPOINT_URL_S3", url.clone()),
            ("AWS_CA_BUNDLE", ca.to_string()),
        ]
    };
    let secret = s3.secret.clone();
    let owned = env(&secret);
    let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr) = publish(
        &[
            dir.to_str().unwrap(),
            "--to",
            "s3://cidboot-images/releases/",
            "--json",
        ],
        &pairs,
        work.path(),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["cid"], cid.as_str(), "{j:#}");
    let key = format!("releases/{cid}.car");
    assert_eq!(
        j["uploads"][0]["location"],
        format!("{url}/cidboot-images/{key}")
    );
    // moto checked the signature; what it stored is the CAR ipfs-car makes, marked for import.
    let o = s3.object(&key);
    assert_eq!(o["found"], true, "{o}");
    assert_eq!(o["metadata"]["x-amz-meta-import"], "car", "{o}");
    assert_eq!(
        o["metadata"]["content-type"], "application/vnd.ipld.car",
        "{o}"
    );
    let want = std::fs::read(&car).unwrap();
    assert_eq!(o["size"].as_u64(), Some(want.len() as u64));
    assert_eq!(o["sha256"].as_str(), Some(sha256_hex(&want).as_str()));

    // A wrong secret: moto's signature check refuses it, and the error says so.
    let owned = env("not-the-secret");
    let pairs: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr) = publish(
        &[dir.to_str().unwrap(), "--to", "s3://cidboot-images/other/"],
        &pairs,
        work.path(),
    );
    assert_eq!(code, Some(125), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("s3://cidboot-images/other/: HTTP 403: SignatureDoesNotMatch"),
        "{stderr}"
    );
    assert!(stderr.contains("the credentials were refused"), "{stderr}");
    assert_eq!(s3.object(&format!("other/{cid}.car"))["found"], false);

    // No credentials at all: named before anything is sent.
    let (code, _, stderr) = publish(
        &[dir.to_str().unwrap(), "--to", "s3://cidboot-images"],
        &[("AWS_ENDPOINT_URL_S3", &url), ("AWS_CA_BUNDLE", ca)],
        work.path(),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(stderr.contains("AWS credentials: "), "{stderr}");
}
