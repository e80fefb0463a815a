//! A tampering gateway for each attack: a man in the middle between cidboot and a real
//! gateway process, rewriting responses. Every attack must fail with its own clear error and
//! leave no complete-looking output.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cidboot::fetch::car::{encode_header, write_section, CarReader};
use cidboot::reference::raw_cid;
use cidboot::transport::http::{HttpClient, Origin, Timeouts};
use cidboot::transport::{tls, TcpConnector};
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: Bytes) -> Body {
    BodyExt::boxed(Full::new(b))
}
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Attack {
    FlipByte,
    SwapBlock,
    ExtraBlock,
    Truncate,
    /// Truncates only the first response: the client must resume, not restart.
    TruncateOnce,
    /// Truncates the first response, and forwards every request without its `entity-bytes`
    /// (a gateway that ignores ranges and resends the whole file).
    TruncateOnceIgnoringRanges,
    /// Sends a file's blocks in another order than depth-first (its leaves reversed), which
    /// the trustless gateway spec allows (`order=unk`): not an attack, but an order the
    /// client cannot walk as it arrives.
    OtherOrder,
    /// Sends a file's blocks breadth-first (`order=unk`): every node of a level before the
    /// next level's.
    BreadthFirst,
    /// Answers the first request with 429 and `Retry-After: 1`.
    RateLimitOnce,
    /// Sends half of every multi-block CAR, then stalls.
    Stall,
    /// Answers every request 504.
    Always504,
}

static LIMITED_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static TRUNCATED_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static TRUNCATED_IGNORING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The request without its `entity-bytes` parameter.
fn without_range(pq: &str) -> String {
    let Some((path, query)) = pq.split_once('?') else {
        return pq.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.starts_with("entity-bytes="))
        .collect();
    format!("{path}?{}", kept.join("&"))
}

/// Applies the attack to CAR responses of multi-block files (the large layer).
async fn tamper(attack: Attack, body: Bytes) -> Bytes {
    let mut r = CarReader::new(&body[..]).await.unwrap();
    let root = r.roots()[0];
    let mut blocks = Vec::new();
    while let Some(b) = r.next_block().await.unwrap() {
        blocks.push((b.0, b.1.to_vec()));
    }
    let truncate = match attack {
        Attack::Truncate => blocks.len() >= 2,
        Attack::TruncateOnce => {
            blocks.len() >= 3 && !TRUNCATED_ONCE.swap(true, std::sync::atomic::Ordering::SeqCst)
        }
        Attack::TruncateOnceIgnoringRanges => {
            blocks.len() >= 3 && !TRUNCATED_IGNORING.swap(true, std::sync::atomic::Ordering::SeqCst)
        }
        _ => false,
    };
    if blocks.len() < 3 && !truncate {
        return body;
    }
    match attack {
        Attack::FlipByte => blocks[1].1[100] ^= 0x01,
        Attack::SwapBlock => {
            let evil = b"not the block you are looking for".to_vec();
            blocks[1] = (raw_cid(&evil), evil);
        }
        Attack::ExtraBlock => {
            let extra = b"one more".to_vec();
            blocks.push((raw_cid(&extra), extra));
        }
        Attack::OtherOrder => blocks[1..].reverse(),
        Attack::BreadthFirst => blocks = breadth_first(&root, blocks),
        Attack::Truncate
        | Attack::TruncateOnce
        | Attack::TruncateOnceIgnoringRanges
        | Attack::RateLimitOnce
        | Attack::Stall
        | Attack::Always504 => {}
    }
    let mut out = encode_header(&root);
    for (cid, data) in &blocks {
        write_section(&mut out, cid, data).unwrap();
    }
    if truncate {
        out.truncate(out.len() - 1000);
    }
    Bytes::from(out)
}

/// The blocks of a DAG rooted at `root`, reordered level by level.
fn breadth_first(root: &cid::Cid, blocks: Vec<(cid::Cid, Vec<u8>)>) -> Vec<(cid::Cid, Vec<u8>)> {
    let by_cid: std::collections::HashMap<cid::Cid, Vec<u8>> = blocks.into_iter().collect();
    let mut queue = std::collections::VecDeque::from([*root]);
    let mut out = Vec::new();
    while let Some(c) = queue.pop_front() {
        let data = by_cid[&c].clone();
        if c.codec() == cidboot_ipld::block::CODEC_DAG_PB {
            let block = cidboot_ipld::block::verify_block(&c, &Bytes::from(data.clone())).unwrap();
            let node = cidboot_ipld::dagpb::decode(&block).unwrap();
            queue.extend(node.links.iter().map(|l| l.cid));
        }
        out.push((c, data));
    }
    out
}

/// Starts the tampering proxy in its own runtime; returns its URL and CA.
fn start_proxy(
    upstream: &Gateway,
    attack: Attack,
    work: &Path,
) -> (String, PathBuf, Arc<std::sync::Mutex<Vec<String>>>) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    let ca = work.join("mitm-ca.pem");
    let tls_cfg = tls::self_signed(&ca).unwrap();
    let client = HttpClient::new(
        Arc::new(TcpConnector),
        tls::client_config(Some(&upstream.ca)).unwrap(),
        Timeouts::default(),
    );
    let (origin, _) = Origin::parse(&upstream.url).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls_cfg);
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let (acceptor, client, origin) = (acceptor.clone(), client.clone(), origin.clone());
                let log = log2.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (client, origin, log) = (client.clone(), origin.clone(), log.clone());
                        async move {
                            let pq = req.uri().path_and_query().unwrap().to_string();
                            log.lock().unwrap().push(pq.clone());
                            if matches!(attack, Attack::RateLimitOnce)
                                && !LIMITED_ONCE.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                let mut resp =
                                    hyper::Response::new(full(Bytes::from_static(b"slow down")));
                                *resp.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
                                resp.headers_mut()
                                    .insert("retry-after", "1".parse().unwrap());
                                return Ok::<_, Infallible>(resp);
                            }
                            let accept = req
                                .headers()
                                .get("accept")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            if matches!(attack, Attack::Always504) {
                                let mut resp = hyper::Response::new(full(Bytes::from_static(
                                    b"gateway timeout",
                                )));
                                *resp.status_mut() = hyper::StatusCode::GATEWAY_TIMEOUT;
                                return Ok::<_, Infallible>(resp);
                            }
                            let forwarded = if matches!(attack, Attack::TruncateOnceIgnoringRanges)
                            {
                                without_range(&pq)
                            } else {
                                pq.clone()
                            };
                            let up = client
                                .get(&origin, &forwarded, &[("accept", &accept)])
                                .await
                                .unwrap();
                            let status = up.status;
                            let ct = up.header("content-type").unwrap_or("").to_string();
                            let mut body = up.bytes_limited(64 << 20).await.unwrap().unwrap();
                            let car = ct.starts_with("application/vnd.ipld.car");
                            if car {
                                body = tamper(attack, body).await;
                            }
                            let stall =
                                car && matches!(attack, Attack::Stall) && body.len() > 1 << 20;
                            let mut resp = hyper::Response::new(if stall {
                                // Half the stream, then silence: the client's idle timeout must fire.
                                let half = body.slice(..body.len() / 2);
                                let s = futures_util::stream::iter([Ok::<_, Infallible>(
                                    hyper::body::Frame::data(half),
                                )])
                                .chain(futures_util::stream::pending());
                                BodyExt::boxed(http_body_util::StreamBody::new(s))
                            } else {
                                full(body)
                            });
                            *resp.status_mut() = status;
                            resp.headers_mut()
                                .insert("content-type", ct.parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
    });
    (url, ca, log)
}

struct Fixture {
    work: tempfile::TempDir,
    root: String,
    gateway: Gateway,
}

fn fixture() -> Fixture {
    fixture_of(2_500_000)
}

/// The fixture with a large layer of `size` bytes of noise.
fn fixture_of(size: usize) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let img = image(
        "amd64",
        &[
            vec![("bin/big", noise(size, 7))],
            vec![("etc/small", b"x".to_vec())],
        ],
    );
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.path().join("image.car");
    let root = ipfs_car_pack(&dir, &car, false);
    let gateway = Gateway::start(&[car], work.path());
    Fixture {
        work,
        root,
        gateway,
    }
}

/// Pulls through `gateway_url`, expecting failure; checks that nothing was left behind.
fn pull_fails(work: &Path, reference: &str, gateway_url: &str, ca: &Path) -> String {
    let out_dir = work.join("out");
    let out = run(&[
        "pull",
        reference,
        "--gateway",
        gateway_url,
        "--ca",
        ca.to_str().unwrap(),
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.ok, "pull succeeded through an attack");
    assert!(
        !out_dir.exists(),
        "a failed pull left {}",
        out_dir.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(work)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".partial-"))
        .collect();
    assert!(leftovers.is_empty(), "partial output left: {leftovers:?}");
    out.stderr
}

fn attacked(attack: Attack) -> String {
    let f = fixture();
    let (url, ca, _) = start_proxy(&f.gateway, attack, f.work.path());
    pull_fails(f.work.path(), &format!("ipfs://{}", f.root), &url, &ca)
}

#[test]
fn flipped_byte_in_a_block() {
    let e = attacked(Attack::FlipByte);
    assert!(e.contains("does not hash to its CID"), "{e}");
    // The error names the blob by its descriptor, not only by a CID.
    assert!(
        e.contains("application/vnd.oci.image.layer.v1.tar+gzip sha256:"),
        "{e}"
    );
}

#[test]
fn swapped_block() {
    let e = attacked(Attack::SwapBlock);
    assert!(e.contains("is not part of this DAG"), "{e}");
}

#[test]
fn extra_block() {
    let e = attacked(Attack::ExtraBlock);
    assert!(e.contains("unexpected extra block"), "{e}");
}

#[test]
fn truncated_stream() {
    let e = attacked(Attack::Truncate);
    assert!(e.contains("truncated stream"), "{e}");
}

#[test]
fn broken_transfer_resumes_from_the_verified_offset() {
    let f = fixture();
    let (url, ca, log) = start_proxy(&f.gateway, Attack::TruncateOnce, f.work.path());
    let out_dir = f.work.path().join("out");
    let reference = format!("ipfs://{}", f.root);
    let out = run(&[
        "pull",
        &reference,
        "--gateway",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    // Two whole 1 MiB leaves were verified before the cut: the retry starts after them.
    let log = log.lock().unwrap();
    assert!(
        log.iter().any(|p| p.contains("entity-bytes=2097152:*")),
        "no resumed request in {log:?}"
    );
}

#[test]
fn a_gateway_that_ignores_entity_bytes_is_read_whole_once_skipping_what_verified() {
    let f = fixture();
    let (url, ca, log) = start_proxy(
        &f.gateway,
        Attack::TruncateOnceIgnoringRanges,
        f.work.path(),
    );
    let out_dir = f.work.path().join("out");
    let reference = format!("ipfs://{}", f.root);
    let out = run(&[
        "pull",
        &reference,
        "--gateway",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("the gateway ignored entity-bytes"),
        "{}",
        out.stderr
    );
    let log = log.lock().unwrap();
    let resumed = log
        .iter()
        .position(|p| p.contains("entity-bytes=2097152:*"))
        .unwrap_or_else(|| panic!("no resumed request in {log:?}"));
    // Then the same file again, whole, from the same gateway.
    let path = log[resumed].split('?').next().unwrap();
    assert!(
        log[resumed + 1..]
            .iter()
            .any(|p| p.starts_with(path) && !p.contains("entity-bytes")),
        "no whole-file request after the ignored range: {log:?}"
    );
    // Every blob of the written layout verified against its digest on the way (pull checks
    // sizes and sha256), so the layout holds the image exactly.
    assert!(out_dir.join("index.json").exists());
}

#[test]
fn rate_limit_is_honoured_then_retried() {
    let f = fixture();
    let (url, ca, log) = start_proxy(&f.gateway, Attack::RateLimitOnce, f.work.path());
    let reference = format!("ipfs://{}", f.root);
    let started = std::time::Instant::now();
    let o = common::cidboot()
        .args([
            "inspect",
            &reference,
            "--gateway",
            &url,
            "--ca",
            ca.to_str().unwrap(),
        ])
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After ignored"
    );
    assert!(stderr.contains("HTTP 429 (Retry-After 1s)"), "{stderr}");
    let log = log.lock().unwrap();
    assert_eq!(log[0], log[1], "the same request is retried");
}

#[test]
fn a_car_in_another_order_is_asked_for_again_block_by_block() {
    // 2.5 MB: one CAR for the whole blob; 40 MB: parallel ranges, each a CAR (those in the
    // middle of two leaves and more).
    for size in [2_500_000, 40_000_000] {
        another_order(size);
    }
}

fn another_order(size: usize) {
    let f = fixture_of(size);
    let (url, ca, log) = start_proxy(&f.gateway, Attack::OtherOrder, f.work.path());
    let out_dir = f.work.path().join("out");
    let out = run(&[
        "pull",
        &format!("ipfs://{}", f.root),
        "--gateway",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    // pull checks every blob's size and sha256: the layout holds the image exactly.
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the gateway sent a CAR's blocks in another order than depth-first"),
        "{}",
        out.stderr
    );
    let log = log.lock().unwrap();
    let car = log
        .iter()
        .position(|p| p.contains("format=car&dag-scope=entity"))
        .unwrap();
    assert!(
        log[car..].iter().any(|p| p.contains("format=raw")),
        "no block asked for alone after the CAR: {log:?}"
    );
    if size > 8 << 20 {
        assert!(
            log.iter().any(|p| p.contains("entity-bytes=")),
            "no ranges: {log:?}"
        );
    }
}

#[test]
fn identity_cid_root() {
    let f = fixture();
    let e = pull_fails(
        f.work.path(),
        "ipfs://bafkqaaa",
        &f.gateway.url,
        &f.gateway.ca,
    );
    assert!(e.contains("identity multihash"), "{e}");
}

/// Publishes a layout whose manifest was rewritten by `edit` (digests kept consistent).
fn publish_edited(
    work: &Path,
    edit: impl FnOnce(&Image, &mut serde_json::Value),
) -> (String, PathBuf) {
    let mut img = image(
        "amd64",
        &[
            vec![("bin/big", noise(1_300_000, 9))],
            vec![("etc/small", b"y".to_vec())],
        ],
    );
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest.bytes).unwrap();
    edit(&img, &mut m);
    let bytes = serde_json::to_vec(&m).unwrap();
    img.manifest.digest = format!("sha256:{}", sha256_hex(&bytes));
    img.manifest.size = bytes.len() as u64;
    img.manifest.bytes = bytes;
    let dir = work.join("layout-edited");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.join("edited.car");
    (ipfs_car_pack(&dir, &car, false), car)
}

#[test]
fn descriptor_whose_size_lies() {
    let work = tempfile::tempdir().unwrap();
    let mut claimed = 0;
    let (root, car) = publish_edited(work.path(), |img, m| {
        claimed = img.layers[0].size + 1;
        m["layers"][0]["size"] = json!(claimed);
    });
    let gw = Gateway::start(&[car], work.path());
    let e = pull_fails(work.path(), &format!("ipfs://{root}"), &gw.url, &gw.ca);
    let want = format!(
        "size mismatch: {{}} holds {} bytes but {claimed} were expected",
        claimed - 1
    );
    let (head, tail) = want.split_once("{}").unwrap();
    assert!(e.contains(head) && e.contains(tail), "{e}");
}

#[test]
fn manifest_over_the_cap() {
    let work = tempfile::tempdir().unwrap();
    let (root, car) = publish_edited(work.path(), |_, m| {
        m["annotations"] = json!({"padding": "x".repeat(5 << 20)});
    });
    let gw = Gateway::start(&[car], work.path());
    let e = pull_fails(work.path(), &format!("ipfs://{root}"), &gw.url, &gw.ca);
    assert!(
        e.contains("manifest") && e.contains("over the 4194304-byte cap"),
        "{e}"
    );
}

/// A manifest whose layer `urls` name other content than the descriptor's digest.
fn urls_image(work: &Path, other: &[u8]) -> (String, Vec<PathBuf>) {
    let img = image("amd64", &[vec![("bin/big", noise(1_100_000, 11))]]);
    let add = |name: &str, bytes: &[u8]| {
        let f = work.join(name);
        std::fs::write(&f, bytes).unwrap();
        let car = work.join(format!("{name}.car"));
        (ipfs_car_pack(&f, &car, true), car)
    };
    let (other_cid, c1) = add("other", other);
    let (config_cid, c2) = add("config", &img.config.bytes);
    let mut layer = img.layers[0].descriptor();
    layer["urls"] = json!([format!("ipfs://{other_cid}")]);
    let mut config = img.config.descriptor();
    config["urls"] = json!([format!("ipfs://{config_cid}")]);
    let m =
        json!({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": [layer]});
    let (root, c3) = add("manifest", &serde_json::to_vec(&m).unwrap());
    (root, vec![c1, c2, c3])
}

#[test]
fn urls_cid_naming_other_content() {
    let work = tempfile::tempdir().unwrap();
    // A raw CID: refused before a byte is fetched.
    let (root, cars) = urls_image(work.path(), b"something else");
    let gw = Gateway::start(&cars, work.path());
    let e = pull_fails(work.path(), &format!("ipfs://{root}"), &gw.url, &gw.ca);
    assert!(
        e.contains("digest mismatch") && e.contains("named by ipfs://"),
        "{e}"
    );
}

#[test]
fn urls_cid_naming_other_content_of_the_same_size() {
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", &[vec![("bin/big", noise(1_100_000, 11))]]);
    // A multi-block UnixFS file of exactly the layer's size but other bytes: caught only
    // once streamed, and nothing is kept.
    let (root, cars) = urls_image(work.path(), &noise(img.layers[0].size as usize, 99));
    let gw = Gateway::start(&cars, work.path());
    let e = pull_fails(work.path(), &format!("ipfs://{root}"), &gw.url, &gw.ca);
    assert!(e.contains("digest mismatch") && e.contains("blob"), "{e}");
}

/// Publishes the fixture's image and starts a healthy gateway plus a faulty one in front of it.
fn two_gateways(attack: Attack) -> (Fixture, String, PathBuf, Arc<std::sync::Mutex<Vec<String>>>) {
    let f = fixture();
    let (url, ca, log) = start_proxy(&f.gateway, attack, f.work.path());
    (f, url, ca, log)
}

/// Pulls with the faulty gateway first and the healthy one second; both CAs trusted.
fn pull_with_failover(
    f: &Fixture,
    faulty: &str,
    faulty_ca: &Path,
    extra: &[&str],
) -> (bool, String, std::time::Duration) {
    let bundle = f.work.path().join("both-ca.pem");
    let mut pem = std::fs::read(faulty_ca).unwrap();
    pem.extend(std::fs::read(&f.gateway.ca).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let out_dir = f.work.path().join(format!("out-{}", fastrand::u32(..)));
    let reference = format!("ipfs://{}", f.root);
    let started = std::time::Instant::now();
    let o = common::cidboot()
        .args([
            "pull",
            &reference,
            "--gateway",
            faulty,
            "--gateway",
            &f.gateway.url,
            "--ca",
            bundle.to_str().unwrap(),
        ])
        .args(["--oci-layout", out_dir.to_str().unwrap()])
        .args(extra)
        .env("CIDBOOT_LOG", "info")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn a_stalling_gateway_is_abandoned_and_the_blob_resumes_from_the_healthy_one() {
    let (f, url, ca, log) = two_gateways(Attack::Stall);
    let (ok, stderr, took) =
        pull_with_failover(&f, &url, &ca, &["--idle-timeout", "2", "--tries", "1"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("idle timeout") && stderr.contains("trying the next one"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resume from the verified offset"),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    assert!(log.lock().unwrap().iter().any(|p| p.contains("format=car")));
}

#[test]
fn a_gateway_answering_504_is_retried_then_failed_over() {
    let (f, url, ca, log) = two_gateways(Attack::Always504);
    let (ok, stderr, took) = pull_with_failover(&f, &url, &ca, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("HTTP 504")
            && stderr.contains("retrying")
            && stderr.contains("trying the next one"),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
    // Three tries on the faulty gateway for the first object, then the healthy one is preferred.
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[test]
fn a_gateway_serving_wrong_content_is_abandoned_for_the_healthy_one() {
    let (f, url, ca, _) = two_gateways(Attack::FlipByte);
    let (ok, stderr, _) = pull_with_failover(&f, &url, &ca, &[]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("does not hash to its CID") && stderr.contains("trying the next one"),
        "{stderr}"
    );
}

/// A dag-pb UnixFS file node over `children` (CID, content size).
fn file_node(children: &[(cid::Cid, u64)]) -> (cid::Cid, Vec<u8>) {
    use cidboot_ipld::dagpb::{PbLink, PbNode};
    use cidboot_ipld::unixfs::{Data, Kind};
    let sizes: Vec<u64> = children.iter().map(|c| c.1).collect();
    let data = Data {
        kind: Kind::File,
        data: None,
        filesize: Some(sizes.iter().sum()),
        blocksizes: sizes,
        hash_type: None,
        fanout: None,
    };
    let node = PbNode {
        links: children
            .iter()
            .map(|(c, _)| PbLink {
                cid: *c,
                name: None,
                tsize: None,
            })
            .collect(),
        data: Some(Bytes::from(data.encode())),
    };
    let bytes = cidboot_ipld::dagpb::encode(&node);
    (
        cidboot_ipld::block::cid_for(cidboot_ipld::block::CODEC_DAG_PB, &bytes),
        bytes,
    )
}

fn raw_block(data: &[u8]) -> (cid::Cid, Vec<u8>) {
    (raw_cid(data), data.to_vec())
}

#[test]
fn a_three_level_dag_sent_breadth_first_is_read_block_by_block() {
    // A layer of four leaves under two nodes under its root, published as a manifest whose
    // blobs are found by ipfs:// URLs; a real gateway serves it, and the proxy in front of it
    // sends each CAR breadth-first: root, both nodes, then the leaves.
    let work = tempfile::tempdir().unwrap();
    let leaves: Vec<_> = (0..4u64)
        .map(|i| raw_block(&noise(300_000, 100 + i)))
        .collect();
    let len = 300_000u64;
    let n1 = file_node(&[(leaves[0].0, len), (leaves[1].0, len)]);
    let n2 = file_node(&[(leaves[2].0, len), (leaves[3].0, len)]);
    let root = file_node(&[(n1.0, 2 * len), (n2.0, 2 * len)]);
    let blob: Vec<u8> = leaves.iter().flat_map(|l| l.1.clone()).collect();
    let config = raw_block(
        &serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha256_hex(&blob))]},
        }))
        .unwrap(),
    );
    let manifest = raw_block(
        &serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": MT_MANIFEST,
            "config": {
                "mediaType": MT_CONFIG, "digest": format!("sha256:{}", sha256_hex(&config.1)),
                "size": config.1.len(), "urls": [format!("ipfs://{}", config.0)],
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{}", sha256_hex(&blob)),
                "size": blob.len(), "urls": [format!("ipfs://{}", root.0)],
            }],
        }))
        .unwrap(),
    );
    let car_path = work.path().join("dag.car");
    let mut car = encode_header(&manifest.0);
    for (c, b) in [&manifest, &config, &root, &n1, &leaves[0], &leaves[1], &n2]
        .into_iter()
        .chain(&leaves[2..])
    {
        write_section(&mut car, c, b).unwrap();
    }
    std::fs::write(&car_path, car).unwrap();
    let gateway = Gateway::start(&[car_path], work.path());
    let (url, ca, log) = start_proxy(&gateway, Attack::BreadthFirst, work.path());
    let out_dir = work.path().join("out");
    let out = run(&[
        "pull",
        &format!("ipfs://{}", manifest.0),
        "--gateway",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("the gateway sent a CAR's blocks in another order than depth-first"),
        "{}",
        out.stderr
    );
    // The blob in the layout is the layer, byte for byte.
    assert_eq!(
        std::fs::read(out_dir.join("blobs/sha256").join(sha256_hex(&blob))).unwrap(),
        blob
    );
    let log = log.lock().unwrap();
    assert!(
        log.iter()
            .any(|p| p.contains(&format!("{}?format=raw", leaves[3].0))),
        "{log:?}"
    );
}

/// `cidboot check` over three real gateways at once: one that has the image, one that does not
/// (404), and one that tampers with what it relays; each is fetched whole and verified, and
/// reported by what it did.
#[test]
fn check_tells_a_serving_a_missing_and_a_tampering_gateway_apart() {
    let f = fixture();
    let work = f.work.path();
    let (tampering, mitm_ca, _) = start_proxy(&f.gateway, Attack::FlipByte, work);
    let dir = work.join("other-layout");
    let other = image("amd64", &[vec![("etc/other", b"y".to_vec())]]);
    write_layout(&dir, &[("amd64", &other)]);
    let other_car = work.join("other.car");
    ipfs_car_pack(&dir, &other_car, false);
    let without = Gateway::start(&[other_car], work);
    let ca = work.join("cas.pem");
    let pems: Vec<u8> = [&f.gateway.ca, &without.ca, &mitm_ca]
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    std::fs::write(&ca, pems).unwrap();
    let reference = format!("ipfs://{}", f.root);
    let check = |extra: &[&str]| {
        let mut args = vec![
            "check",
            &reference,
            "--gateway",
            &f.gateway.url,
            "--gateway",
            &without.url,
            "--gateway",
            &tampering,
            "--ca",
            ca.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = cidboot()
            .args(&args)
            .env("CIDBOOT_LOG", "error")
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };

    let (code, stdout, stderr) = check(&["--json"]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert_documented(&stdout, "`check`", 0);
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let mut keys: Vec<String> = j["gateways"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut documented = documented_fields("`check`", 1);
    keys.sort();
    documented.sort();
    assert_eq!(keys, documented);
    assert_eq!(j["cid"], f.root.as_str());
    assert_eq!(
        (j["verified"].as_u64(), j["min"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(j["ok"], false);
    let g = j["gateways"].as_array().unwrap();
    assert_eq!(g.len(), 3, "{j:#}");

    let good = &g[0];
    assert_eq!(good["result"], "verified", "{good:#}");
    assert_eq!(good["gateway"].as_str(), Some(f.gateway.url.as_str()));
    // Both layers, whole: the big one is 2.5 MB of noise (gzip cannot shrink it).
    assert_eq!(good["blobs"], 2, "{good:#}");
    assert!(good["bytes"].as_u64().unwrap() > 2_500_000, "{good:#}");
    assert!(good["bytes_per_sec"].as_u64().unwrap() > 0, "{good:#}");
    assert!(good["ttfb_ms"].is_u64(), "{good:#}");
    assert_eq!(good["formats"]["raw"], "served", "{good:#}");
    assert_eq!(good["formats"]["car"], "served", "{good:#}");
    assert_eq!(good["formats"]["ranges"], "served", "{good:#}");
    assert_eq!(good["errors"], serde_json::json!([]), "{good:#}");

    let missing = &g[1];
    assert_eq!(missing["result"], "missing", "{missing:#}");
    assert_eq!(missing["bytes"], 0);
    // It answered, quickly, and said it has not got the CID.
    assert!(missing["ttfb_ms"].is_u64(), "{missing:#}");
    let e = missing["errors"][0].as_str().unwrap();
    assert!(e.contains("does not have") && e.contains("HTTP 404"), "{e}");
    assert!(e.contains(&f.root), "{e}");

    let bad = &g[2];
    assert_eq!(bad["result"], "tampered", "{bad:#}");
    assert_eq!(bad["bytes_per_sec"], serde_json::Value::Null);
    let e = bad["errors"][0].as_str().unwrap();
    assert!(
        e.contains("fails verification") && e.contains("does not hash to its CID"),
        "{e}"
    );

    // One gateway suffices if the publisher says so; the words say which is which.
    let (code, stdout, stderr) = check(&["--min", "1"]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("  VERIFIED  first byte "), "{stdout}");
    assert!(stdout.contains("  MISSING  "), "{stdout}");
    assert!(stdout.contains("  TAMPERED  "), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "1 of 3 gateway(s) serve ipfs://{}, verified (1 required): ok",
            f.root
        )),
        "{stdout}"
    );
    let (code, _, stderr) = check(&["--min", "4"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--min 4"), "{stderr}");
}
