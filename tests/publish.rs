//! `cidboot publish` against real servers on loopback: moto's S3 (SigV4 checked, the
//! object's metadata read back), and servers that import the CAR (checked by ipfs-car) and
//! serve it back as a trustless gateway written in JavaScript, through which `cidboot check`
//! then fetches and verifies the CID.
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

/// An IPFS node's HTTP face for the tests: kubo's `dag/import`, the Pinning Service API, and
/// a trustless gateway of what it holds. What it takes in is checked by ipfs-car, an
/// independent implementation (`ipfs-car unpack` verifies every block against its CID, and
/// `ipfs-car roots` names the root), then served by a gateway written in JavaScript over the
/// CARs it holds (tests/publish/js_gateway.mjs, raw blocks only), to which its `/ipfs/`
/// requests are relayed byte for byte.
struct Node {
    url: String,
    state: Arc<Mutex<NodeState>>,
    _work: tempfile::TempDir,
}

struct NodeState {
    token: String,
    max_body: usize,
    work: PathBuf,
    cars: Vec<PathBuf>,
    gateway: Option<JsGateway>,
    pins: std::collections::HashMap<String, serde_json::Value>,
    /// Every request line, in order.
    log: Vec<String>,
}

use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// Imports a CAR as a node would: every block verified by ipfs-car, the root it names returned.
fn import(state: &Arc<Mutex<NodeState>>, car: &Path) -> Result<String, String> {
    let out = car.with_extension("unpacked");
    let o = Command::new(ipfs_car())
        .arg("unpack")
        .arg(car)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    if !o.status.success() {
        return Err(format!(
            "ipfs-car unpack: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let o = Command::new(ipfs_car())
        .arg("roots")
        .arg(car)
        .output()
        .unwrap();
    let root = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let mut s = state.lock().unwrap();
    s.cars.push(car.to_path_buf());
    let cars = s.cars.clone();
    // The old gateway stops when it is replaced.
    s.gateway = Some(JsGateway::start(&cars));
    Ok(root)
}

/// tests/publish/js_gateway.mjs: a raw-only trustless gateway in JavaScript, which checks
/// every block of the CARs it is given; killed on drop.
struct JsGateway {
    url: String,
    child: Child,
}

impl JsGateway {
    fn start(cars: &[PathBuf]) -> JsGateway {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/publish/js_gateway.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .args(cars)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "js_gateway said {url:?}"
        );
        JsGateway { url, child }
    }
}

impl Drop for JsGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

fn json_reply(s: &mut TcpStream, status: u16, v: &serde_json::Value) {
    respond(s, status, "application/json", v.to_string().as_bytes());
}

/// The pin's provider fetches the CID from its origins (`/ip4/IP/tcp/PORT/http`: a trustless
/// gateway), as a CAR, and imports it.
fn fetch_pin(state: Arc<Mutex<NodeState>>, id: String, cid: String, origins: Vec<String>) {
    std::thread::sleep(std::time::Duration::from_millis(300));
    state.lock().unwrap().pins.get_mut(&id).unwrap()["status"] = "pinning".into();
    let work = state.lock().unwrap().work.clone();
    let mut why = format!("no origin had {cid}");
    for (i, o) in origins.iter().enumerate() {
        let parts: Vec<&str> = o.split('/').collect();
        let ["", "ip4", ip, "tcp", port, "http"] = parts[..] else {
            why = format!("origin {o}: not an /ip4/…/tcp/…/http address");
            continue;
        };
        let car = work.join(format!("{id}-{i}.car"));
        let ok = Command::new("curl")
            .args(["-sf", "-H", "accept: application/vnd.ipld.car", "-o"])
            .arg(&car)
            .arg(format!(
                "http://{ip}:{port}/ipfs/{cid}?format=car&dag-scope=all"
            ))
            .status()
            .unwrap()
            .success();
        if !ok {
            why = format!("origin {o} did not serve {cid}");
            continue;
        }
        match import(&state, &car) {
            Ok(root) if root == cid => {
                let mut s = state.lock().unwrap();
                s.pins.get_mut(&id).unwrap()["status"] = "pinned".into();
                return;
            }
            Ok(root) => why = format!("origin {o} served {root}"),
            Err(e) => why = e,
        }
    }
    let mut s = state.lock().unwrap();
    let p = s.pins.get_mut(&id).unwrap();
    p["status"] = "failed".into();
    p["info"] = serde_json::json!({ "status_details": why });
}

fn serve_one(state: Arc<Mutex<NodeState>>, mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 || buf.len() > 65536 {
            return;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_string();
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut words = request.split(' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default().to_string(),
    );
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    let (token, max_body) = {
        let mut st = state.lock().unwrap();
        st.log.push(request.clone());
        (st.token.clone(), st.max_body)
    };
    if path.starts_with("/ipfs/") {
        let gw = state
            .lock()
            .unwrap()
            .gateway
            .as_ref()
            .map(|g| g.url.clone());
        let Some(gw) = gw else {
            return respond(&mut s, 404, "text/plain", b"nothing pinned here");
        };
        let mut up = TcpStream::connect(gw.trim_start_matches("http://")).unwrap();
        let accept = headers.get("accept").cloned().unwrap_or_default();
        write!(
            up,
            "GET {path} HTTP/1.0\r\nhost: gw\r\naccept: {accept}\r\n\r\n"
        )
        .unwrap();
        let _ = std::io::copy(&mut up, &mut s);
        return;
    }
    if headers.get("authorization") != Some(&format!("Bearer {token}")) {
        if path.starts_with("/pins") {
            return json_reply(
                &mut s,
                401,
                &serde_json::json!({"error": {"reason": "UNAUTHORIZED", "details": "the access token is not valid"}}),
            );
        }
        return json_reply(
            &mut s,
            401,
            &serde_json::json!({"Message": "invalid bearer token", "Code": 0, "Type": "error"}),
        );
    }
    if len > max_body {
        return json_reply(
            &mut s,
            413,
            &serde_json::json!({"Message": format!("request body of {len} bytes exceeds the {max_body}-byte limit"), "Code": 0, "Type": "error"}),
        );
    }
    match (method, path.split('?').next().unwrap_or_default()) {
        ("POST", "/api/v0/dag/import") => {
            let boundary = headers["content-type"]
                .split("boundary=")
                .nth(1)
                .unwrap()
                .to_string();
            let start = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let end_marker = format!("\r\n--{boundary}--");
            let end = body
                .windows(end_marker.len())
                .rposition(|w| w == end_marker.as_bytes())
                .unwrap();
            let work = state.lock().unwrap().work.clone();
            let car = work.join(format!("import-{}.car", fastrand::u32(..)));
            std::fs::write(&car, &body[start..end]).unwrap();
            match import(&state, &car) {
                Ok(root) => {
                    let line = serde_json::json!({"Root": {"Cid": {"/": root}, "PinErrorMsg": ""}});
                    respond(
                        &mut s,
                        200,
                        "application/json",
                        format!("{line}\n").as_bytes(),
                    )
                }
                Err(e) => json_reply(
                    &mut s,
                    500,
                    &serde_json::json!({"Message": e, "Code": 0, "Type": "error"}),
                ),
            }
        }
        ("POST", "/pins") => {
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = format!("pin-{}", fastrand::u32(..));
            let cid = req["cid"].as_str().unwrap().to_string();
            let status = serde_json::json!({
                "requestid": id, "status": "queued", "created": "2026-01-01T00:00:00Z",
                "pin": req, "delegates": [], "info": null
            });
            state
                .lock()
                .unwrap()
                .pins
                .insert(id.clone(), status.clone());
            let origins: Vec<String> = req["origins"]
                .as_array()
                .map(|a| a.iter().map(|o| o.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            let st = state.clone();
            std::thread::spawn(move || fetch_pin(st, id, cid, origins));
            json_reply(&mut s, 202, &status)
        }
        ("GET", p) if p.starts_with("/pins/") => {
            let id = p.trim_start_matches("/pins/");
            let status = state.lock().unwrap().pins.get(id).cloned();
            match status {
                Some(v) => json_reply(&mut s, 200, &v),
                None => json_reply(
                    &mut s,
                    404,
                    &serde_json::json!({"error": {"reason": "NOT_FOUND"}}),
                ),
            }
        }
        _ => respond(&mut s, 404, "text/plain", b"no such endpoint"),
    }
}

impl Node {
    fn start(token: &str, max_body: usize) -> Node {
        let work = tempfile::tempdir().unwrap();
        let state = Arc::new(Mutex::new(NodeState {
            token: token.into(),
            max_body,
            work: work.path().to_path_buf(),
            cars: Vec::new(),
            gateway: None,
            pins: Default::default(),
            log: Vec::new(),
        }));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let st = state.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve_one(st, s));
            }
        });
        Node {
            url,
            state,
            _work: work,
        }
    }
}

impl Drop for Node {
    /// The listener's thread lives on; the gateway process must not.
    fn drop(&mut self) {
        if let Ok(mut s) = self.state.lock() {
            s.gateway = None;
        }
    }
}

#[test]
fn publish_imports_into_an_rpc_endpoint_and_checks_the_cid_through_its_gateway() {
    let work = tempfile::tempdir().unwrap();
    let (dir, cid, _) = layout(work.path());
    let node = Node::start("node-token", 64 << 20);
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
    // ipfs-car verified the import; the CID is then fetched back through the node, verified.
    let g = &j["check"]["gateways"][0];
    assert_eq!(g["result"], "verified", "{g:#}");
    assert_eq!(g["blobs"], 2, "{g:#}");
    // Served block by block by the JavaScript gateway, which refuses CARs.
    assert_eq!(g["formats"]["raw"], "served", "{g:#}");
    assert_eq!(g["formats"]["car"], "refused (HTTP 406)", "{g:#}");
    assert_eq!(j["check"]["ok"], true);
    let log = node.state.lock().unwrap().log.clone();
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST /api/v0/dag/import?pin-roots=true ")),
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
    let small = Node::start("node-token", 1000);
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
    let node = Node::start("pin-token", 64 << 20);
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
    let pinned = node.state.lock().unwrap().pins.clone();
    let p = pinned.values().next().unwrap();
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
}
