//! AWS KMS for the tests: moto (the independent KMS implementation) and the test KMS of
//! tests/kms/test_kms.py (the attested calls), both real processes serving TLS on loopback
//! under a CA made here with openssl.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

use cidboot::kms::credentials::StaticCredentials;
use cidboot::kms::{AwsCredentials, Endpoint, KmsClient};

/// The python of the venv scripts/setup-tools.sh makes (moto, cbor2). A missing one fails.
pub fn moto_python() -> PathBuf {
    if let Ok(p) = std::env::var("CIDBOOT_MOTO_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let p = PathBuf::from(home).join(".cache/cidboot/moto/bin/python");
    assert!(
        p.exists(),
        "moto's python not found at {} (run scripts/setup-tools.sh, which installs it)",
        p.display()
    );
    p
}

fn openssl(args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA and a server certificate it issued for 127.0.0.1 and localhost.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub fn make(dir: &Path) -> Tls {
        let p = |n: &str| dir.join(n);
        let s = |p: &PathBuf| p.to_str().unwrap().to_string();
        let (ca, ca_key, csr, cert, key, ext) = (
            p("kms-ca.pem"),
            p("kms-ca.key"),
            p("kms.csr"),
            p("kms.pem"),
            p("kms.key"),
            p("kms.ext"),
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", &s(&ca_key), "-out", &s(&ca)],
                &["-days", "2", "-subj", "/CN=cidboot test KMS CA"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &s(&key),
                    "-out",
                    &s(&csr),
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&cert),
        ]);
        Tls { ca, cert, key }
    }
}

/// A KMS server process; stopped when dropped (its stdin closes, and it is killed).
pub struct Server {
    pub url: String,
    pub region: String,
    pub keys: Vec<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Server {
    fn spawn(mut c: Command, access: Option<(&str, &str)>) -> Server {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the KMS server");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the KMS server said {line:?}: {e}"));
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let (id, secret) = match access {
            Some((i, s)) => (i.to_string(), s.to_string()),
            None => (field("access_key_id"), field("secret_access_key")),
        };
        Server {
            url: format!("https://127.0.0.1:{}", v["port"]),
            region: field("region"),
            keys: v["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect(),
            access_key_id: id,
            secret_access_key: secret,
            child,
            stdin: Some(stdin),
        }
    }

    /// moto, with `keys` keys; `auth` turns on its SigV4 checks (an IAM user's key is made).
    pub fn moto(tls: &Tls, auth: bool, keys: usize) -> Server {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kms/moto_tls.py");
        let mut c = Command::new(moto_python());
        c.arg(script)
            .arg(&tls.cert)
            .arg(&tls.key)
            .args(["--keys", &keys.to_string()]);
        if auth {
            c.arg("--auth");
        }
        Server::spawn(c, None)
    }

    /// The test KMS of the attested calls, enforcing `policy` (a statement file) for
    /// `principal`, trusting documents under `root` (PEM).
    pub fn test_kms(
        tls: &Tls,
        root: &Path,
        policy: &Path,
        principal: &str,
        fault: Option<&str>,
    ) -> Server {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/kms/test_kms.py");
        let (id, secret) = ("AKIATESTKMS000000001", "test-kms-secret-key");
        let mut c = Command::new(moto_python());
        c.arg(script)
            .arg("--cert")
            .arg(&tls.cert)
            .arg("--key")
            .arg(&tls.key)
            .arg("--root")
            .arg(root)
            .arg("--policy")
            .arg(policy)
            .args(["--principal", principal])
            .args(["--access-key-id", id, "--secret-access-key", secret]);
        if let Some(f) = fault {
            c.args(["--fault", f]);
        }
        Server::spawn(c, Some((id, secret)))
    }

    /// A library client of this server, trusting `ca`, signing with `secret` (this server's
    /// own unless another is given).
    pub fn client(&self, ca: &Path, secret: Option<&str>) -> KmsClient {
        let tls = cidboot::transport::tls::client_config(Some(ca)).unwrap();
        let creds = AwsCredentials::new(
            &self.access_key_id,
            secret.unwrap_or(&self.secret_access_key),
            None,
        );
        KmsClient::new(
            Endpoint::new(&self.region, Some(&self.url)).unwrap(),
            Arc::new(cidboot::transport::TcpConnector),
            tls,
            Arc::new(StaticCredentials::new(creds, "the test")),
        )
    }

    /// The environment `cidboot seal` gets its credentials from (and nothing of the test's).
    pub fn env(&self, home: &Path) -> Vec<(String, String)> {
        vec![
            ("HOME".into(), home.display().to_string()),
            ("AWS_ACCESS_KEY_ID".into(), self.access_key_id.clone()),
            (
                "AWS_SECRET_ACCESS_KEY".into(),
                self.secret_access_key.clone(),
            ),
            ("AWS_REGION".into(), self.region.clone()),
        ]
    }
}

impl Drop for Server {
    /// Closes the server's stdin, its signal to clean up its scratch directory and end; kills
    /// it only if it has not ended within 5 s.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
