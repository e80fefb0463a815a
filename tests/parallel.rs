//! Parallel ranges across gateways: real `cidboot gateway` processes, each behind a small
//! spying proxy that logs every request and can lie about one range or stall one.
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    /// Flips one byte inside the first range response it forwards.
    LieOnce,
    /// Sends half of the first range response, then holds the connection silent.
    StallOnce,
    /// Sends half of every response over 768 KiB (every range and every whole-file stream),
    /// then holds the connection silent.
    StallLarge,
}

/// A plain-HTTP proxy in front of one gateway; logs the request paths.
struct Spy {
    url: String,
    log: Arc<Mutex<Vec<String>>>,
    /// When each request arrived.
    times: Arc<Mutex<Vec<std::time::SystemTime>>>,
    /// The path of the range it lied about or stalled.
    acted_on: Arc<Mutex<Option<String>>>,
}

impl Spy {
    fn start(upstream: &str, mode: Mode) -> Spy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::new(Mutex::new(Vec::new()));
        let acted_on = Arc::new(Mutex::new(None));
        let acted = Arc::new(AtomicBool::new(false));
        let upstream = upstream.trim_start_matches("http://").to_string();
        let (log2, acted_on2, times2) = (log.clone(), acted_on.clone(), times.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (upstream, log, acted, acted_on, times) = (
                    upstream.clone(),
                    log2.clone(),
                    acted.clone(),
                    acted_on2.clone(),
                    times2.clone(),
                );
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&req).into_owned();
                    let path = head
                        .lines()
                        .next()
                        .and_then(|l| l.split(' ').nth(1))
                        .unwrap_or("/")
                        .to_string();
                    let accept = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("accept:")
                                .then(|| l[7..].trim().to_string())
                        })
                        .unwrap_or_default();
                    log.lock().unwrap().push(path.clone());
                    times.lock().unwrap().push(std::time::SystemTime::now());
                    let Ok(mut up) = std::net::TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = write!(
                        up,
                        "GET {path} HTTP/1.1\r\nHost: {upstream}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
                    );
                    let mut resp = Vec::new();
                    let _ = up.read_to_end(&mut resp);
                    if mode == Mode::StallLarge && resp.len() > 3 << 18 {
                        let _ = conn.write_all(&resp[..resp.len() / 2]);
                        std::thread::sleep(Duration::from_secs(600));
                        return;
                    }
                    let is_range = path.contains("entity-bytes=");
                    if matches!(mode, Mode::LieOnce | Mode::StallOnce)
                        && is_range
                        && !acted.swap(true, Ordering::SeqCst)
                    {
                        *acted_on.lock().unwrap() = Some(path.clone());
                        if mode == Mode::LieOnce {
                            // Inside the last leaf's bytes (the body ends with a 1 MiB leaf
                            // and the chunked terminator).
                            let at = resp.len() - 1000;
                            resp[at] ^= 0x01;
                        } else {
                            let _ = conn.write_all(&resp[..resp.len() / 2]);
                            std::thread::sleep(Duration::from_secs(600));
                            return;
                        }
                    }
                    let _ = conn.write_all(&resp);
                });
            }
        });
        Spy {
            url,
            log,
            times,
            acted_on,
        }
    }

    fn ranges(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.contains("entity-bytes="))
            .cloned()
            .collect()
    }
}

struct Setup {
    work: tempfile::TempDir,
    root: String,
    layer: Vec<u8>,
    _gateways: Vec<Gateway>,
    spies: Vec<Spy>,
}

/// Three gateway processes serving one image with a 24 MiB layer, each behind a spy.
fn setup(modes: [Mode; 3]) -> Setup {
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", &[vec![("big", noise(24 << 20, 41))]]);
    let layer = img.layers[0].bytes.clone();
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.path().join("image.car");
    let root = ipfs_car_pack(&dir, &car, false);
    let gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start_plain(std::slice::from_ref(&car)))
        .collect();
    let spies = gateways
        .iter()
        .zip(modes)
        .map(|(g, m)| Spy::start(&g.url, m))
        .collect();
    Setup {
        work,
        root,
        layer,
        _gateways: gateways,
        spies,
    }
}

fn pull(s: &Setup, extra: &[&str]) -> (Out, PathBuf) {
    let out_dir = s.work.path().join("out");
    let reference = format!("ipfs://{}", s.root);
    let mut args = vec!["pull", &reference];
    for spy in &s.spies {
        args.push("--gateway");
        args.push(&spy.url);
    }
    args.extend_from_slice(extra);
    let out_str = out_dir.to_str().unwrap().to_string();
    args.push("--oci-layout");
    args.push(&out_str);
    (run_logged(&args), out_dir)
}

fn layer_in(out_dir: &std::path::Path, layer: &[u8]) -> Vec<u8> {
    std::fs::read(out_dir.join("blobs/sha256").join(sha256_hex(layer))).unwrap()
}

#[test]
fn ranges_from_several_gateways_reassemble_the_file() {
    let s = setup([Mode::Pass; 3]);
    let (out, dir) = pull(&s, &[]);
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_in(&dir, &s.layer) == s.layer, "the layer differs");
    assert!(
        out.stderr.contains("fetching in parallel ranges"),
        "{}",
        out.stderr
    );
    let counts: Vec<usize> = s.spies.iter().map(|sp| sp.ranges().len()).collect();
    assert!(
        counts.iter().all(|c| *c >= 1),
        "every gateway serves ranges: {counts:?}"
    );
    // Each range fetched once.
    let planned: usize = out
        .stderr
        .lines()
        .find(|l| l.contains("fetching in parallel ranges"))
        .and_then(|l| l.split("ranges=").nth(1))
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(planned >= 12, "{planned} ranges for 24 MiB");
    assert_eq!(counts.iter().sum::<usize>(), planned, "{counts:?}");
    // Each gateway was probed with the identity CID before its first range, but for the one
    // that had just served the image's documents (it has shown that it is up).
    for sp in &s.spies[1..] {
        let log = sp.log.lock().unwrap();
        let probe = log
            .iter()
            .position(|p| p.starts_with("/ipfs/bafkqaaa?format=raw"));
        let first_range = log.iter().position(|p| p.contains("entity-bytes="));
        assert!(probe.is_some() && probe < first_range, "{log:?}");
    }
}

#[test]
fn a_gateway_that_lies_about_a_range_is_quarantined_and_the_range_refetched() {
    let s = setup([Mode::LieOnce, Mode::Pass, Mode::Pass]);
    let (out, dir) = pull(&s, &[]);
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_in(&dir, &s.layer) == s.layer, "the layer differs");
    let liar = &s.spies[0];
    assert!(
        out.stderr.contains("hostile gateway") && out.stderr.contains(&liar.url[7..]),
        "{}",
        out.stderr
    );
    let lied = liar
        .acted_on
        .lock()
        .unwrap()
        .clone()
        .expect("the liar lied");
    // The range it lied about came from another gateway.
    assert!(
        s.spies[1..].iter().any(|sp| sp.ranges().contains(&lied)),
        "{lied} was not refetched elsewhere: {:?} {:?}\n{}",
        s.spies[1].ranges(),
        s.spies[2].ranges(),
        out.stderr
    );
    // Nothing was asked of it after the quarantine: its transfers in flight were cut.
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("hostile gateway"))
        .unwrap();
    let ts = line.split_whitespace().next().unwrap();
    let quarantined: std::time::SystemTime =
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .into();
    let late: Vec<String> = liar
        .times
        .lock()
        .unwrap()
        .iter()
        .zip(liar.log.lock().unwrap().iter())
        // A request sent just before may be read by the proxy just after.
        .filter(|(t, _)| **t > quarantined + Duration::from_millis(50))
        .map(|(_, p)| p.clone())
        .collect();
    assert!(late.is_empty(), "asked after the quarantine: {late:?}");
    let after = liar.log.lock().unwrap().len();
    let (out2, _) = {
        let _ = std::fs::remove_dir_all(s.work.path().join("out"));
        pull(&s, &[])
    };
    assert!(out2.ok, "{}", out2.stderr);
    // A second run starts afresh (quarantine lasts for one run): it probes the liar again.
    assert!(liar.log.lock().unwrap().len() > after);
}

#[test]
fn a_stalled_range_is_hedged_on_another_gateway() {
    let s = setup([Mode::StallOnce, Mode::Pass, Mode::Pass]);
    let t0 = Instant::now();
    // Timeouts far longer than the test: only hedging can finish the stalled range.
    let (out, dir) = pull(
        &s,
        &["--idle-timeout", "600", "--first-byte-timeout", "600"],
    );
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_in(&dir, &s.layer) == s.layer, "the layer differs");
    assert!(
        out.stderr.contains("range stalled: hedging"),
        "{}",
        out.stderr
    );
    let stalled = s.spies[0]
        .acted_on
        .lock()
        .unwrap()
        .clone()
        .expect("the gateway stalled");
    assert!(
        s.spies[1..].iter().any(|sp| sp.ranges().contains(&stalled)),
        "{stalled} was not hedged elsewhere"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "{:?}",
        t0.elapsed()
    );
}

/// `len` bytes of noise packed by ipfs-car as a bare file: the bytes, the CAR and its root.
fn packed_noise(work: &std::path::Path, len: usize, seed: u64) -> (Vec<u8>, PathBuf, cid::Cid) {
    let data = noise(len, seed);
    let file = work.join("blob");
    std::fs::write(&file, &data).unwrap();
    let car = work.join("blob.car");
    let cid = ipfs_car_pack(&file, &car, true).parse().unwrap();
    (data, car, cid)
}

/// The library's gateway client for `urls`, trusting `ca` (plain HTTP needs none).
fn client(
    urls: &[String],
    ca: Option<&std::path::Path>,
    timeouts: cidboot::transport::http::Timeouts,
    policy: cidboot::fetch::GatewayPolicy,
) -> Arc<cidboot::fetch::Gateways> {
    use cidboot::transport::{http::HttpClient, tls, TcpConnector};
    let http = HttpClient::new(
        Arc::new(TcpConnector),
        tls::client_config(ca).unwrap(),
        timeouts,
    );
    cidboot::fetch::Gateways::new(http, urls, policy).unwrap()
}

/// A sink slower than the network: the inflater of a big layer, say.
struct SlowSink {
    hasher: sha2::Sha256,
    bytes: u64,
    /// How long each write takes.
    delay: Duration,
}

impl cidboot::fetch::BlobSink for SlowSink {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        use sha2::Digest;
        tokio::time::sleep(self.delay).await;
        self.hasher.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }
}

#[test]
fn memory_stays_bounded_when_the_consumer_is_slower_than_the_gateways() {
    use cidboot::fetch::gateway::SizeRule;
    use cidboot::fetch::GatewayPolicy;
    use cidboot::transport::http::Timeouts;
    use sha2::Digest;

    let work = tempfile::tempdir().unwrap();
    let (data, car, cid) = packed_noise(work.path(), 96 << 20, 9);
    let gateways: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(std::slice::from_ref(&car), work.path()))
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (n, policy) in [(1, GatewayPolicy::default()), (3, GatewayPolicy::default())] {
        let mut pem = Vec::new();
        for g in &gateways[..n] {
            pem.extend(std::fs::read(&g.ca).unwrap());
        }
        let ca = work.path().join(format!("cas-{n}.pem"));
        std::fs::write(&ca, pem).unwrap();
        let urls: Vec<String> = gateways[..n].iter().map(|g| g.url.clone()).collect();
        let window = policy.parallel.window as u64;
        let range = policy.parallel.range_bytes;
        let gw = client(&urls, Some(&ca), Timeouts::default(), policy);
        let mut sink = SlowSink {
            hasher: sha2::Sha256::new(),
            bytes: 0,
            delay: Duration::from_millis(40),
        };
        let got = rt
            .block_on(gw.file(&cid, SizeRule::Exact(data.len() as u64), &mut sink))
            .unwrap();
        assert_eq!(got, data.len() as u64);
        assert_eq!(sink.bytes, data.len() as u64);
        assert_eq!(hex::encode(sink.hasher.finalize()), sha256_hex(&data));
        let peak = gw.peak_range_bytes();
        // The parallel path ran, and held far less than the blob: never more than the
        // window, the head's refetch and the hedges.
        assert!(peak > 0, "no ranges were fetched");
        assert!(peak <= (window + 3) * range, "{peak} bytes held");
        assert!(peak * 2 < data.len() as u64, "{peak} bytes held");
    }
}

/// The ranges a spy forwarded, as `(from, to)` with `to` exclusive.
fn spans(spy: &Spy) -> Vec<(u64, u64)> {
    spy.ranges()
        .iter()
        .filter_map(|p| {
            let (from, last) = p.split("entity-bytes=").nth(1)?.split_once(':')?;
            let last = last.split('&').next()?;
            Some((from.parse().ok()?, last.parse::<u64>().ok()? + 1))
        })
        .collect()
}

#[test]
fn the_first_and_the_last_ranges_are_cut_smaller() {
    use cidboot::fetch::gateway::SizeRule;
    use cidboot::fetch::GatewayPolicy;
    use cidboot::transport::http::Timeouts;
    use sha2::Digest;

    let work = tempfile::tempdir().unwrap();
    let (data, car, cid) = packed_noise(work.path(), 48 << 20, 17);
    let gateway = Gateway::start_plain(std::slice::from_ref(&car));
    let spy = Spy::start(&gateway.url, Mode::Pass);
    let policy = GatewayPolicy::default();
    let range = policy.parallel.range_bytes;
    // Before anything is measured every connection opens at once: the ranges they take, and
    // the ones the connections finish on, are half-size.
    let edge = policy.parallel.total as u64 * range / 2;
    let gw = client(
        std::slice::from_ref(&spy.url),
        None,
        Timeouts::default(),
        policy,
    );
    let mut sink = SlowSink {
        hasher: sha2::Sha256::new(),
        bytes: 0,
        delay: Duration::ZERO,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt
        .block_on(gw.file(&cid, SizeRule::Exact(data.len() as u64), &mut sink))
        .unwrap();
    assert_eq!(got, data.len() as u64);
    assert_eq!(hex::encode(sink.hasher.finalize()), sha256_hex(&data));
    let mut spans = spans(&spy);
    spans.sort_unstable();
    // Each range once, and together the whole file.
    let mut at = 0;
    for (from, to) in &spans {
        assert_eq!(*from, at, "{spans:?}");
        at = *to;
    }
    assert_eq!(at, data.len() as u64, "{spans:?}");
    let size = data.len() as u64;
    for (from, to) in &spans {
        let limit = if *from < edge || *from >= size - edge {
            range / 2
        } else {
            range
        };
        assert!(to - from <= limit, "{from}..{to} over {limit}: {spans:?}");
    }
    assert!(
        spans.iter().any(|(from, to)| to - from > range / 2),
        "the middle ranges are whole: {spans:?}"
    );
}

#[test]
fn ranges_and_the_stream_after_them_share_one_object_deadline() {
    use cidboot::fetch::gateway::SizeRule;
    use cidboot::fetch::{FetchError, GatewayPolicy};
    use cidboot::transport::http::Timeouts;

    let work = tempfile::tempdir().unwrap();
    let (data, car, cid) = packed_noise(work.path(), 24 << 20, 5);
    let gateway = Gateway::start_plain(std::slice::from_ref(&car));
    // Every range stalls, so the parallel fetch gives up after one idle timeout and the file
    // continues as one stream, which stalls too (after half of each response).
    let spy = Spy::start(&gateway.url, Mode::StallLarge);
    let idle = Duration::from_secs(3);
    let deadline = Duration::from_secs(6);
    let policy = GatewayPolicy {
        object_deadline: deadline,
        ..GatewayPolicy::default()
    };
    let gw = client(
        std::slice::from_ref(&spy.url),
        None,
        Timeouts {
            idle,
            ..Timeouts::default()
        },
        policy,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sink = Vec::new();
    let t0 = Instant::now();
    let err = rt
        .block_on(gw.file(&cid, SizeRule::Exact(data.len() as u64), &mut sink))
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, FetchError::Deadline { .. }), "{err}");
    // Ranges were tried first, then the stream: it delivered verified bytes before stalling.
    assert!(!spy.ranges().is_empty(), "no ranges were tried");
    assert!(!sink.is_empty(), "the stream after the ranges never ran");
    assert!(
        sink[..] == data[..sink.len()],
        "the stream delivered wrong bytes"
    );
    // Both together within the one deadline (a deadline of its own for the stream would end
    // one idle timeout later).
    assert!(took < deadline + idle / 2, "{took:?}");
}
