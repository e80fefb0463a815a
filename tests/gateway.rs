//! The development gateway as a publisher runs it: a log line per request, a block count per
//! CAR, a CA kept across restarts, the certificate docs/gateways.md makes with openssl; and
//! the hints a client gets for a bare CID and for a gateway that does not have a CID.
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
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A `cidboot gateway` with its log (stderr) collected line by line.
struct Gw {
    url: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Gw {
    fn start(args: &[&str]) -> Result<Gw, String> {
        let mut child = cidboot()
            .arg("gateway")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let mut url = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut url)
            .unwrap();
        if url.trim().is_empty() {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            return Err(log.lock().unwrap().join("\n"));
        }
        Ok(Gw {
            url: url.trim().to_string(),
            child,
            log,
        })
    }

    fn wait_for(&self, pred: impl Fn(&str) -> bool, what: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| pred(l)) {
                return l.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {what} in the gateway's log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self) -> String {
        self.url.split("://").nth(1).unwrap().to_string()
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain-HTTP GET: the status and the body's length.
fn get(addr: &str, target: &str) -> (u16, usize) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..head_end]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = &all[head_end + 4..];
    // A chunked body: its chunks' sizes add up to its length.
    let len = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut n = 0;
        let mut rest = body;
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            if size == 0 {
                break n;
            }
            n += size;
            rest = &rest[line_end + 2 + size + 2..];
        }
    } else {
        body.len()
    };
    (status, len)
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len()
        + 2;
    line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches('"')
}

/// Two real CARs from ipfs-car: an image layout and a file; their roots and block counts
/// (as `ipfs-car blocks` lists them).
fn two_cars(work: &Path) -> [(std::path::PathBuf, String, usize); 2] {
    let img = image("amd64", &[vec![("etc/hello", b"hello".to_vec())]]);
    let layout = work.join("layout");
    write_layout(&layout, &[("amd64", &img)]);
    let file = work.join("big.bin");
    std::fs::write(&file, noise(3_000_000, 7)).unwrap();
    [(layout, false), (file, true)].map(|(p, no_wrap)| {
        let car = p.with_extension("car");
        let root = ipfs_car_pack(&p, &car, no_wrap);
        let o = Command::new(ipfs_car())
            .arg("blocks")
            .arg(&car)
            .output()
            .unwrap();
        let n = String::from_utf8_lossy(&o.stdout).lines().count();
        assert!(n > 1, "{}", String::from_utf8_lossy(&o.stderr));
        (car, root, n)
    })
}

#[test]
fn each_request_is_logged_and_each_car_counts_its_own_blocks() {
    let work = tempfile::tempdir().unwrap();
    let [(car_a, root_a, n_a), (car_b, root_b, n_b)] = two_cars(work.path());
    let gw = Gw::start(&[
        "--car",
        car_a.to_str().unwrap(),
        "--car",
        car_b.to_str().unwrap(),
    ])
    .unwrap();
    let loaded_a = gw.wait_for(
        |l| l.contains("loaded") && l.contains("layout.car"),
        "loaded A",
    );
    let loaded_b = gw.wait_for(
        |l| l.contains("loaded") && l.contains("big.car"),
        "loaded B",
    );
    assert_eq!(field(&loaded_a, "blocks"), n_a.to_string(), "{loaded_a}");
    assert_eq!(field(&loaded_b, "blocks"), n_b.to_string(), "{loaded_b}");
    assert_eq!(
        field(&loaded_b, "total"),
        (n_a + n_b).to_string(),
        "{loaded_b}"
    );

    let addr = gw.addr();
    let missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for (target, cid, format, status) in [
        (
            format!("/ipfs/{root_b}?format=car"),
            root_b.as_str(),
            "car",
            200,
        ),
        (
            format!("/ipfs/{root_a}?format=raw"),
            root_a.as_str(),
            "raw",
            200,
        ),
        (format!("/ipfs/{missing}?format=raw"), missing, "raw", 404),
        (format!("/ipfs/{root_a}"), root_a.as_str(), "-", 406),
    ] {
        let (got, len) = get(&addr, &target);
        assert_eq!(got, status, "{target}");
        let line = gw.wait_for(
            |l| {
                l.contains(" request ")
                    && l.contains(&format!("path={}", target.split('?').next().unwrap()))
                    && l.contains(&format!("status={status}"))
            },
            &target,
        );
        assert_eq!(field(&line, "cid"), cid, "{line}");
        assert_eq!(field(&line, "format"), format, "{line}");
        assert_eq!(field(&line, "bytes"), len.to_string(), "{line}");
    }
}

#[test]
fn the_self_signed_ca_is_kept_private_and_reused_across_restarts() {
    let work = tempfile::tempdir().unwrap();
    let [(car, root, _), _] = two_cars(work.path());
    let dir = work.path().join("ca-dir");
    let ca = dir.join("ca.pem");
    let key = dir.join("ca.pem.key");
    let args = [
        "--car",
        car.to_str().unwrap(),
        "--tls-self-signed",
        ca.to_str().unwrap(),
    ];
    let first = Gw::start(&args).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&ca), 0o600);
    assert_eq!(mode(&key), 0o600);
    let pem = std::fs::read(&ca).unwrap();
    let trusted = work.path().join("trusted.pem");
    std::fs::write(&trusted, &pem).unwrap();
    let inspect = |url: &str| {
        run(&[
            "inspect",
            &format!("ipfs://{root}"),
            "--gateway",
            url,
            "--ca",
            trusted.to_str().unwrap(),
        ])
    };
    let o = inspect(&first.url);
    assert!(o.ok, "{}", o.stderr);
    drop(first);

    // Restarted: the same CA, so what the client trusts still works.
    let second = Gw::start(&args).unwrap();
    assert_eq!(std::fs::read(&ca).unwrap(), pem, "the CA changed");
    second.wait_for(|l| l.contains("kept development CA"), "the kept CA");
    let o = inspect(&second.url);
    assert!(o.ok, "{}", o.stderr);

    // A gateway that does not have a CID: the client names the gateway and the CID.
    let missing = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    let o = run(&[
        "inspect",
        &format!("ipfs://{missing}"),
        "--gateway",
        &second.url,
        "--ca",
        trusted.to_str().unwrap(),
    ]);
    assert!(!o.ok);
    assert!(
        o.stderr.contains(&format!(
            "HTTP 404: {} does not have {missing}",
            second.addr()
        )),
        "{}",
        o.stderr
    );
    drop(second);

    // A key others can read is refused, and named.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = Gw::start(&args)
        .err()
        .expect("started with a readable CA key");
    assert!(e.contains("ca.pem.key") && e.contains("chmod 600"), "{e}");
}

#[test]
fn a_bare_cid_gets_a_did_you_mean() {
    let cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    for given in [cid.to_string(), format!("/ipfs/{cid}")] {
        let o = run(&["inspect", &given, "--gateway", "https://127.0.0.1:9"]);
        assert!(!o.ok);
        assert!(
            o.stderr.contains(&format!("did you mean ipfs://{cid}?")),
            "{}",
            o.stderr
        );
    }
    let o = run(&["inspect", "not-a-cid", "--gateway", "https://127.0.0.1:9"]);
    assert!(!o.ok && !o.stderr.contains("did you mean"), "{}", o.stderr);
}

/// docs/gateways.md's openssl commands make a certificate the gateway serves and a client
/// trusts through the CA they make.
#[test]
fn the_documented_tls_cert_works() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gateways.md")).unwrap();
    let at = text.find("--tls-cert cert.pem").unwrap();
    let start = text[..at].rfind("```sh\n").unwrap() + "```sh\n".len();
    let block = &text[start..at];
    // Up to the gateway's own line, which the test runs itself on a free port.
    let openssl = &block[..block.rfind("cidboot gateway").unwrap()];
    let work = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", openssl])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let [(car, root, _), _] = two_cars(work.path());
    let w = |n: &str| work.path().join(n).to_str().unwrap().to_string();
    let gw = Gw::start(&[
        "--car",
        car.to_str().unwrap(),
        "--tls-cert",
        &w("cert.pem"),
        "--tls-key",
        &w("key.pem"),
    ])
    .unwrap();
    let o = run(&[
        "inspect",
        &format!("ipfs://{root}"),
        "--gateway",
        &gw.url,
        "--ca",
        &w("ca.pem"),
    ]);
    assert!(o.ok, "{}", o.stderr);
}
