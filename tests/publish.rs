//! `cidboot publish` against real servers on loopback: moto's S3 (SigV4 checked, the
//! object's metadata read back), and an IPFS node built on Helia (tests/publish/helia_node.mjs:
//! kubo's `dag/import`, the Pinning Service API, pin by CID from the origins) that imports the
//! CAR, verifying every block, and serves it back as a trustless gateway, through which
//! `cidboot check` then fetches and verifies the CID.
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

use common::helia::HeliaNode;
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
            vec![("bin/app", noise(3_000_000, 3))],
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

#[test]
fn publish_imports_into_an_rpc_endpoint_and_checks_the_cid_through_its_gateway() {
    let work = tempfile::tempdir().unwrap();
    let (dir, cid, _) = layout(work.path());
    let node = HeliaNode::start("node-token", 64 << 20);
    let rpc = format!("rpc:{}", node.url);
    let d = dir.to_str().unwrap();
    let (code, stdout, stderr) = publish(
        &[d, "--to", &rpc, "--check", "--gateway", &node.url, "--json"],
        &[("CIDBOOT_RPC_TOKEN", "node-token")],
        work.path(),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert_documented(&stdout, "`publish`", 0);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["cid"], cid.as_str());
    assert_eq!(j["uploads"][0]["to"], rpc.as_str());
    assert_eq!(j["uploads"][0]["cid"], cid.as_str());
    // Helia verified every block it imported; the CID is then fetched back through the node,
    // verified.
    let g = &j["check"]["gateways"][0];
    assert_eq!(g["result"], "verified", "{g:#}");
    assert_eq!(g["blobs"], 2, "{g:#}");
    // Helia's blockstore serves raw blocks, and @helia/car exports CARs, ranges included.
    assert_eq!(g["formats"]["raw"], "served", "{g:#}");
    assert_eq!(g["formats"]["car"], "served", "{g:#}");
    assert_eq!(g["formats"]["ranges"], "served", "{g:#}");
    assert_eq!(j["check"]["ok"], true);
    let log = node.log.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|l| l == "POST /api/v0/dag/import?pin-roots=true"),
        "{log:?}"
    );

    // The same from a publisher configuration; a token in it is refused.
    let config = work.path().join("publish.toml");
    std::fs::write(
        &config,
        format!(
            "to = [\"{rpc}\"]\n[check]\ngateways = [\"{}\"]\nmin = 1\n",
            node.url
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = publish(
        &[d, "--config", config.to_str().unwrap(), "--json"],
        &[("CIDBOOT_RPC_TOKEN", "node-token")],
        work.path(),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["uploads"][0]["to"], rpc.as_str());
    assert_eq!(j["check"]["min"], 1);
    assert_eq!(j["check"]["gateways"][0]["result"], "verified", "{j:#}");
    std::fs::write(&config, format!("to = [\"{rpc}\"]\ntoken = \"x\"\n")).unwrap();
    let (code, _, stderr) = publish(
        &[d, "--config", config.to_str().unwrap()],
        &[("CIDBOOT_RPC_TOKEN", "node-token")],
        work.path(),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("tokens are never kept in publish.toml"),
        "{stderr}"
    );

    // The token from a file; a wrong one is refused by the endpoint, and said so.
    let token = work.path().join("token");
    std::fs::write(&token, "not-the-token\n").unwrap();
    let (code, _, stderr) = publish(
        &[d, "--to", &rpc],
        &[("CIDBOOT_RPC_TOKEN_FILE", token.to_str().unwrap())],
        work.path(),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{rpc}: HTTP 401: invalid bearer token (the credentials were refused"
        )),
        "{stderr}"
    );
    // No token at all: named before anything is sent.
    let (code, _, stderr) = publish(&[d, "--to", &rpc], &[], work.path());
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("no token: set CIDBOOT_RPC_TOKEN, or CIDBOOT_RPC_TOKEN_FILE"),
        "{stderr}"
    );
    // An endpoint that takes smaller requests.
    let small = HeliaNode::start("node-token", 1000);
    let (code, _, stderr) = publish(
        &[d, "--to", &format!("rpc:{}", small.url)],
        &[("CIDBOOT_RPC_TOKEN", "node-token")],
        work.path(),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("HTTP 413: request body of")
            && stderr.contains("larger than this destination accepts"),
        "{stderr}"
    );
}

#[test]
fn publish_pins_by_cid_with_origins_and_reports_a_failed_pin() {
    let work = tempfile::tempdir().unwrap();
    let (dir, cid, car) = layout(work.path());
    // The node that has the content: a trustless gateway, announced by its HTTP multiaddr.
    let origin = Gateway::start_plain(&[car]);
    let port = origin.url.rsplit(':').next().unwrap();
    let maddr = format!("/ip4/127.0.0.1/tcp/{port}/http");
    let node = HeliaNode::start("pin-token", 64 << 20);
    let pins = format!("pins:{}", node.url);
    let (code, stdout, stderr) = publish(
        &[
            dir.to_str().unwrap(),
            "--to",
            &pins,
            "--origin",
            &maddr,
            "--name",
            "release-1",
            "--check",
            "--gateway",
            &node.url,
            "--json",
        ],
        &[("CIDBOOT_PINS_TOKEN", "pin-token")],
        work.path(),
    );
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["uploads"][0]["cid"], cid.as_str(), "{j:#}");
    assert!(
        j["uploads"][0]["location"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/pins/pin-", node.url)),
        "{j:#}"
    );
    assert_eq!(j["check"]["gateways"][0]["result"], "verified", "{j:#}");
    let pinned = node.pins("pin-token");
    let p = &pinned[0];
    assert_eq!(p["status"], "pinned", "{p:#}");
    assert_eq!(p["pin"]["name"], "release-1");
    assert_eq!(p["pin"]["origins"], serde_json::json!([maddr]));

    // Another image, which the origin does not have: the pin ends `failed`, with the
    // provider's own words.
    let other = work.path().join("other");
    write_layout(
        &other,
        &[("amd64", &image("amd64", &[vec![("etc/x", b"x".to_vec())]]))],
    );
    let (code, _, stderr) = publish(
        &[other.to_str().unwrap(), "--to", &pins, "--origin", &maddr],
        &[("CIDBOOT_PINS_TOKEN", "pin-token")],
        work.path(),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!("{pins}: the pin ended `failed`:"))
            && stderr.contains("did not serve"),
        "{stderr}"
    );
    // A wrong token: the provider's error document, read.
    let (code, _, stderr) = publish(
        &[dir.to_str().unwrap(), "--to", &pins],
        &[("CIDBOOT_PINS_TOKEN", "wrong")],
        work.path(),
    );
    assert_eq!(code, Some(125), "{stderr}");
    assert!(
        stderr.contains("HTTP 401: UNAUTHORIZED: the access token is not valid"),
        "{stderr}"
    );

    // `cidboot check` through the node that pinned it, and through one that does not have it.
    let empty = HeliaNode::start("other-token", 1 << 20);
    let o = cidboot()
        .args(["check", &format!("ipfs://{cid}")])
        .args(["--gateway", &node.url, "--gateway", &empty.url, "--json"])
        .env("CIDBOOT_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["ok"], false, "{j:#}");
    assert_eq!(j["gateways"][0]["result"], "verified", "{j:#}");
    let missing = &j["gateways"][1];
    assert_eq!(missing["result"], "missing", "{j:#}");
    assert!(
        missing["errors"][0]
            .as_str()
            .unwrap()
            .contains(&format!("it does not have {cid} (HTTP 404)")),
        "{j:#}"
    );
    // With --min 1, the one that has it is enough.
    let o = cidboot()
        .args(["check", &format!("ipfs://{cid}"), "--min", "1"])
        .args(["--gateway", &node.url, "--gateway", &empty.url])
        .env("CIDBOOT_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
}

/// What docs/limits.md allows `publish` whatever the CAR's size: the process (runtime, TLS,
/// HTTP), packing, and one upload's chunks and write buffers.
const PUBLISH_BOUND: u64 = 64 << 20;

/// An image layout whose one layer is `size` bytes from /dev/urandom, written and hashed in
/// pieces (never held), so that a layout of hundreds of MB takes seconds.
fn big_layout(dir: &Path, size: u64) {
    use sha2::Digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tmp = blobs.join("layer.partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    let mut rand = std::fs::File::open("/dev/urandom").unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        std::io::Read::read_exact(&mut rand, &mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
    let layer = hex::encode(h.finalize());
    std::fs::rename(&tmp, blobs.join(&layer)).unwrap();
    let put = |bytes: &[u8]| {
        let d = sha256_hex(bytes);
        std::fs::write(blobs.join(&d), bytes).unwrap();
        (format!("sha256:{d}"), bytes.len())
    };
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
        "config": {}
    });
    let (cd, cl) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cl},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer}"), "size": size}]
    });
    let (md, ml) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ml}]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// `cidboot publish ARGS` with exactly `env`: its exit code, stdout, stderr and peak resident
/// memory: the kernel's high-water mark of the process (`VmHWM`), read while it runs. (Its
/// `ru_maxrss` would not do here: a child spawned from this multi-threaded test process starts
/// with the test process's own peak.)
fn publish_peak(args: &[&str], env: &[(&str, &str)], home: &Path) -> (i32, String, String, u64) {
    let mut child = cidboot()
        .arg("publish")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home)
        .env("CIDBOOT_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut r, &mut s);
            s
        })
    };
    let o = read(Box::new(child.stdout.take().unwrap()));
    let e = read(Box::new(child.stderr.take().unwrap()));
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if let Some(kb) = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb * 1024);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    (
        status.code().unwrap_or(-1),
        o.join().unwrap(),
        e.join().unwrap(),
        peak,
    )
}

/// A CAR of 320 MiB goes to moto's S3 and to the Helia node's `dag/import` streamed from its
/// file: publish's peak memory stays within the bound docs/limits.md gives, far below the
/// CAR's size, and what arrived is the whole CAR.
#[test]
fn a_car_of_hundreds_of_megabytes_is_published_in_bounded_memory() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("big");
    let size: u64 = 320 << 20;
    big_layout(&dir, size);
    let car = work.path().join("big.car");

    let tls = Tls::make(work.path());
    let mut s3 = S3::start(&tls, "cidboot-images");
    let ca = tls.ca.to_str().unwrap();
    let (code, stdout, stderr, peak) = publish_peak(
        &[
            dir.to_str().unwrap(),
            "--to",
            "s3://cidboot-images",
            "--car",
            car.to_str().unwrap(),
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &s3.id.clone()),
            ("AWS_SECRET_ACCESS_KEY", &s3.secret.clone()),
            ("AWS_REGION", &s3.region.clone()),
            ("AWS_ENDPOINT_URL_S3", &s3.url.clone()),
            ("AWS_CA_BUNDLE", ca),
        ],
        work.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    eprintln!(
        "publish to S3 of a {} MiB CAR: peak {} MiB",
        std::fs::metadata(&car).unwrap().len() >> 20,
        peak >> 20
    );
    assert!(peak < PUBLISH_BOUND, "peak {} MiB", peak >> 20);
    let cid = stdout.lines().last().unwrap().trim().to_string();
    let o = s3.object(&format!("{cid}.car"));
    assert_eq!(
        o["size"].as_u64(),
        Some(std::fs::metadata(&car).unwrap().len()),
        "{o}"
    );
    drop(s3);

    let node = HeliaNode::start("node-token", 1 << 30);
    let (code, stdout, stderr, peak) = publish_peak(
        &[dir.to_str().unwrap(), "--to", &format!("rpc:{}", node.url)],
        &[("CIDBOOT_RPC_TOKEN", "node-token")],
        work.path(),
    );
    assert_eq!(code, 0, "{stderr}");
    eprintln!("publish to the Helia node: peak {} MiB", peak >> 20);
    assert_eq!(stdout.lines().last(), Some(cid.as_str()), "{stdout}");
    assert!(peak < PUBLISH_BOUND, "peak {} MiB", peak >> 20);
}

/// What a hostile endpoint answers a request (its path and body): status, type, body.
type Answer = fn(&str, &[u8]) -> (u16, &'static str, Vec<u8>);

/// A hostile publishing endpoint on loopback (plain HTTP, which destinations take with a
/// warning): reads each request whole, then answers what `answer` makes of its path and body.
struct Hostile {
    url: String,
}

impl Hostile {
    fn start(answer: Answer) -> Hostile {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 64 * 1024];
                let head_end = loop {
                    if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break req.len(),
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while req.len() < head_end + len {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let (status, ctype, body) = answer(&path, &req[head_end..]);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} Hostile\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            }
        });
        Hostile { url }
    }
}

/// What a hostile endpoint says: terminal controls (a title, a screen clear, the one-byte
/// CSI of C1) around a visible word, then 300 KB, within what an answer may be.
fn hostile_words() -> String {
    format!(
        "\u{1b}]0;owned\u{7}\u{1b}[2Jowned\u{9b}31m{}",
        "A".repeat(300_000)
    )
}

/// An error shows what the endpoint said, but nothing a terminal acts on and not all of it.
#[track_caller]
fn shown_defused(stderr: &str, says: &str) {
    assert!(stderr.contains(says), "{stderr:.2000}");
    assert!(stderr.contains("owned"), "{stderr:.2000}");
    assert!(
        !stderr.contains(['\u{1b}', '\u{7}', '\u{9b}']),
        "{:?}",
        &stderr[..stderr.len().min(2000)]
    );
    assert!(stderr.len() < 8 * 1024, "{} bytes of error", stderr.len());
}

#[test]
fn what_a_hostile_endpoint_says_reaches_the_terminal_defused_and_cut() {
    let work = tempfile::tempdir().unwrap();
    let (dir, _, _) = layout(work.path());
    let dir = dir.to_str().unwrap();
    let home = work.path();

    // A bucket's XML error, a kubo error document, a Pinning Service error document.
    let s3 = Hostile::start(|_, _| {
        let doc = format!(
            "<Error><Code>AccessDenied{}</Code><Message>{}</Message></Error>",
            "\u{1b}[2J",
            hostile_words()
        );
        (403, "application/xml", doc.into_bytes())
    });
    let (code, _, stderr) = publish(
        &[dir, "--to", "s3://bucket-1"],
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDHOSTILETEST00000"),
            ("AWS_SECRET_ACCESS_KEY", "hostile"),
            ("AWS_ENDPOINT_URL_S3", &s3.url),
        ],
        home,
    );
    assert_eq!(code, Some(125), "{stderr:.2000}");
    shown_defused(&stderr, "s3://bucket-1: HTTP 403: AccessDenied");

    let rpc = Hostile::start(|_, _| {
        let doc = serde_json::json!({"Message": hostile_words(), "Code": 0, "Type": "error"});
        (500, "application/json", doc.to_string().into_bytes())
    });
    let to = format!("rpc:{}", rpc.url);
    let (code, _, stderr) = publish(&[dir, "--to", &to], &[("CIDBOOT_RPC_TOKEN", "t")], home);
    assert_eq!(code, Some(125), "{stderr:.2000}");
    shown_defused(&stderr, &format!("{to}: HTTP 500: "));

    // An import that names the right root but says it could not pin it.
    let rpc = Hostile::start(|_, body| {
        let body = String::from_utf8_lossy(body);
        let cid = body
            .split("filename=\"")
            .nth(1)
            .and_then(|s| s.split(".car\"").next())
            .unwrap()
            .to_string();
        let line = serde_json::json!({"Root": {"Cid": {"/": cid}, "PinErrorMsg": hostile_words()}});
        (200, "application/json", format!("{line}\n").into_bytes())
    });
    let to = format!("rpc:{}", rpc.url);
    let (code, _, stderr) = publish(&[dir, "--to", &to], &[("CIDBOOT_RPC_TOKEN", "t")], home);
    assert_eq!(code, Some(125), "{stderr:.2000}");
    shown_defused(&stderr, "could not pin it: ");

    let pins = Hostile::start(|_, _| {
        let doc = serde_json::json!({"error": {"reason": "BAD_REQUEST\u{1b}[2J", "details": hostile_words()}});
        (400, "application/json", doc.to_string().into_bytes())
    });
    let to = format!("pins:{}", pins.url);
    let (code, _, stderr) = publish(&[dir, "--to", &to], &[("CIDBOOT_PINS_TOKEN", "t")], home);
    assert_eq!(code, Some(125), "{stderr:.2000}");
    shown_defused(&stderr, &format!("{to}: HTTP 400: BAD_REQUEST"));

    // A pin that fails at once, its info a large object of hostile strings.
    let pins = Hostile::start(|_, _| {
        let doc = serde_json::json!({"requestid": "r-1", "status": "failed",
            "info": {"why": hostile_words()}});
        (202, "application/json", doc.to_string().into_bytes())
    });
    let to = format!("pins:{}", pins.url);
    let (code, _, stderr) = publish(&[dir, "--to", &to], &[("CIDBOOT_PINS_TOKEN", "t")], home);
    assert_eq!(code, Some(125), "{stderr:.2000}");
    shown_defused(&stderr, "the pin ended `failed`: ");
}

#[test]
fn a_pin_reported_pinned_must_name_the_cid_that_was_asked_for() {
    let work = tempfile::tempdir().unwrap();
    let (dir, cid, _) = layout(work.path());
    let dir = dir.to_str().unwrap();
    // `pinned` at once, with no `pin` (which the Pinning Service API requires), then with
    // another CID's: neither says that this CID is pinned.
    let silent = Hostile::start(|_, _| {
        let doc = serde_json::json!({"requestid": "r-1", "status": "pinned"});
        (202, "application/json", doc.to_string().into_bytes())
    });
    let other = Hostile::start(|_, _| {
        let doc = serde_json::json!({"requestid": "r-1", "status": "pinned",
            "pin": {"cid": "bafkqaaa"}});
        (202, "application/json", doc.to_string().into_bytes())
    });
    for (pins, says) in [
        (
            &silent,
            "its pin status says `pinned` but names no CID (pin.cid)".to_string(),
        ),
        (&other, format!("it pinned bafkqaaa, not {cid}")),
    ] {
        let to = format!("pins:{}", pins.url);
        let (code, stdout, stderr) = publish(
            &[dir, "--to", &to, "--json"],
            &[("CIDBOOT_PINS_TOKEN", "t")],
            work.path(),
        );
        assert_eq!(code, Some(125), "{stdout}\n{stderr}");
        assert!(stderr.contains(&format!("{to}: {says}")), "{stderr}");
    }
}
