//! Deadlines that hold while a transfer runs: a gateway that trickles one byte a second, always
//! inside the idle timeout, is cut by the throughput floor and failed over to a good one, and
//! the object deadline ends a transfer that nothing else would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cidboot::fetch::gateway::SizeRule;
use cidboot::fetch::{FetchError, GatewayPolicy, Gateways};
use cidboot::transport::http::{HttpClient, Timeouts};
use cidboot::transport::{tls, TcpConnector};
use common::*;

/// A plain-HTTP gateway that answers every request at once with `200`, the content type asked
/// for and a large length, then sends `body` one byte a second. Returns its URL and the number
/// of requests it has had.
fn trickler(body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    let body = Arc::new(body);
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let body = body.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let ct = if String::from_utf8_lossy(&head).contains("format=car") {
                    "application/vnd.ipld.car"
                } else {
                    "application/vnd.ipld.raw"
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {ct}\r\ncontent-length: 100000000\r\n\r\n"
                );
                if s.write_all(resp.as_bytes()).is_err() {
                    return;
                }
                for b in body.iter().cycle() {
                    if s.write_all(&[*b]).and_then(|_| s.flush()).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    (url, hits)
}

/// A three-chunk UnixFS file packed by ipfs-car: its root CID, its bytes, and its CAR.
fn packed_file(work: &Path) -> (cid::Cid, Vec<u8>, std::path::PathBuf) {
    let data = noise(3 * 1024 * 1024 + 17, 12);
    let file = work.join("blob");
    std::fs::write(&file, &data).unwrap();
    let car = work.join("blob.car");
    let root: cid::Cid = ipfs_car_pack(&file, &car, true).parse().unwrap();
    assert_eq!(root.codec(), 0x70, "a dag-pb root over several chunks");
    (root, data, car)
}

fn gateways(urls: &[&str], ca: &Path, timeouts: Timeouts, deadline: u64) -> Arc<Gateways> {
    let urls: Vec<String> = urls.iter().map(|u| u.to_string()).collect();
    Gateways::new(
        HttpClient::new(
            Arc::new(TcpConnector),
            tls::client_config(Some(ca)).unwrap(),
            timeouts,
        ),
        &urls,
        GatewayPolicy {
            object_deadline: Duration::from_secs(deadline),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The idle timeout never fires on one byte a second; only the floor can catch it.
fn floor_of_a_kib_per_second() -> Timeouts {
    Timeouts {
        idle: Duration::from_secs(10),
        min_rate: 1024,
        rate_window: Duration::from_secs(2),
        ..Default::default()
    }
}

#[test]
fn a_trickling_gateway_is_failed_over_by_block_and_by_file_fetches() {
    let work = tempfile::tempdir().unwrap();
    let (root, data, car) = packed_file(work.path());
    let good = Gateway::start(std::slice::from_ref(&car), work.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let car_bytes = std::fs::read(&car).unwrap();
    for by_file in [false, true] {
        // The trickler sends the real CAR's bytes, so that the reader has every reason to wait.
        let (slow, hits) = trickler(car_bytes.clone());
        let gw = gateways(
            &[&slow, &good.url],
            &good.ca,
            floor_of_a_kib_per_second(),
            20,
        );
        let started = Instant::now();
        rt.block_on(async {
            if by_file {
                let mut out = Vec::new();
                let n = gw
                    .file(&root, SizeRule::Exact(data.len() as u64), &mut out)
                    .await
                    .unwrap();
                assert_eq!(n, data.len() as u64);
                assert!(out == data, "the file arrives whole and verified");
            } else {
                let block = gw.block(&root).await.unwrap();
                cidboot::reference::verify_block(&root, &block).unwrap();
            }
        });
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(8),
            "file={by_file}: {took:?}"
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "file={by_file}: left at once, not retried"
        );
    }
}

#[test]
fn the_object_deadline_ends_a_transfer_while_it_runs() {
    let work = tempfile::tempdir().unwrap();
    let (root, data, car) = packed_file(work.path());
    let good = Gateway::start(std::slice::from_ref(&car), work.path());
    let (slow, _) = trickler(std::fs::read(&car).unwrap());
    // No floor and a long idle timeout: before the deadline held during transfers, this read
    // for a hundred million seconds.
    let timeouts = Timeouts {
        idle: Duration::from_secs(30),
        min_rate: 0,
        ..Default::default()
    };
    let gw = gateways(&[&slow, &good.url], &good.ca, timeouts, 3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for by_file in [false, true] {
        let started = Instant::now();
        let e = rt.block_on(async {
            if by_file {
                let mut out = Vec::new();
                gw.file(&root, SizeRule::Exact(data.len() as u64), &mut out)
                    .await
                    .unwrap_err()
            } else {
                gw.block(&root).await.unwrap_err()
            }
        });
        let took = started.elapsed();
        assert!(matches!(e, FetchError::Deadline { .. }), "{e}");
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(5),
            "file={by_file}: {took:?}"
        );
    }
}

#[test]
fn the_command_line_floor_fails_over_a_trickling_gateway() {
    let work = tempfile::tempdir().unwrap();
    let img = image_from_tars(
        &[tar_of(&[("hello", b"hello".to_vec())])],
        serde_json::json!({"Cmd": ["/hello"]}),
    );
    let (reference, good) = publish(&img, work.path());
    let (slow, hits) = trickler(b"\x3a".repeat(64));
    let started = Instant::now();
    let o = run(&[
        "inspect",
        &reference,
        "--gateway",
        &slow,
        "--gateway",
        &good.url,
        "--ca",
        good.ca.to_str().unwrap(),
        "--min-rate",
        "1024",
        "--rate-window",
        "2",
        "--json",
    ]);
    assert!(o.ok, "{}", o.stderr);
    assert!(
        o.stderr.contains("under the floor of 1024 bytes/s"),
        "{}",
        o.stderr
    );
    assert_eq!(
        o.json()["manifest_digest"],
        img.manifest.digest,
        "{}",
        o.stdout
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(hits.load(Ordering::SeqCst) >= 1);
}

#[test]
fn the_boot_deadline_ends_a_boot_that_nothing_else_would() {
    // No floor, no object deadline within reach: only the measured boot deadline stops it.
    let work = tempfile::tempdir().unwrap();
    let img = probe_image(serde_json::json!({"Entrypoint": ["/bin/probe"]}));
    let (reference, _good) = publish(&img, work.path());
    let (slow, hits) = trickler(b"\x3a".repeat(64));
    let cfg = work.path().join("cidboot.toml");
    std::fs::write(&cfg, "boot_deadline_secs = 3\n").unwrap();
    let started = Instant::now();
    let o = run(&[
        "run",
        &reference,
        "--gateway",
        &slow,
        "--min-rate",
        "0",
        "--config",
        cfg.to_str().unwrap(),
        "--attestation-listen",
        "127.0.0.1:0",
    ]);
    assert!(!o.ok);
    assert!(
        o.stderr
            .contains("the boot did not reach the workload within 3s (boot_deadline_secs)"),
        "{}",
        o.stderr
    );
    assert!(!o.stdout.contains("probe:"), "the workload ran");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(10),
        "{took:?}"
    );
    assert!(hits.load(Ordering::SeqCst) >= 1);
}
