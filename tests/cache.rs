//! The parent's verified gateway cache (`[cache]` of `cidboot host`): a real host process in
//! front of a real HTTPS gateway process, and real pulls through it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn start(config: &str, work: &Path) -> Host {
        let path = work.join(format!("host-{}.toml", fastrand::u32(..)));
        std::fs::write(&path, config).unwrap();
        let mut cmd = cidboot();
        cmd.args(["host", "--config"]).arg(&path);
        Host::spawn(cmd, "gateway cache ready")
    }

    /// Starts the daemon as `cmd` and waits until it says `ready`.
    fn spawn(mut cmd: std::process::Command, ready: &str) -> Host {
        let mut child = cmd
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The daemon logs to stderr.
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stderr.take().unwrap();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        let start = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.contains(ready)) {
            if let Some(st) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                panic!("the host exited ({st}): {:?}", lines.lock().unwrap());
            }
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "no {ready:?} in the host's output: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Host { child, lines }
    }

    /// A figure of the daemon's memory from /proc (`VmHWM`: its peak; `VmRSS`: now), in bytes.
    fn memory(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"));
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the host's output: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        let l = self.wait_for("gateway cache listening on ", Duration::from_secs(5));
        let a = l.split(" listening on ").nth(1).unwrap().trim().to_string();
        format!("http://{}", a.strip_prefix("tcp:").unwrap_or(&a))
    }

    fn said(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    work: tempfile::TempDir,
    root: String,
    layer: Vec<u8>,
    upstream: Option<Gateway>,
}

/// An image with a 12 MiB layer (fetched in parallel ranges) served by an HTTPS gateway.
fn setup() -> Setup {
    let work = tempfile::tempdir().unwrap();
    let img = image("amd64", &[vec![("big", noise(12 << 20, 77))]]);
    let layer = img.layers[0].bytes.clone();
    let dir = work.path().join("layout");
    write_layout(&dir, &[("amd64", &img)]);
    let car = work.path().join("image.car");
    let root = ipfs_car_pack(&dir, &car, false);
    let upstream = Some(Gateway::start(&[car], work.path()));
    Setup {
        work,
        root,
        layer,
        upstream,
    }
}

fn host_config(s: &Setup, extra: &str) -> String {
    let up = s.upstream.as_ref().unwrap();
    format!(
        "[cache]\nlisten = \"tcp:127.0.0.1:0\"\ndir = \"{}\"\ngateways = [\"{}\"]\nca = \"{}\"\n{extra}",
        s.work.path().join("cache").display(),
        up.url,
        up.ca.display()
    )
}

fn pull_through(s: &Setup, cache_url: &str, name: &str) -> (Out, PathBuf) {
    let out_dir = s.work.path().join(name);
    let out = run_logged(&[
        "pull",
        &format!("ipfs://{}", s.root),
        "--gateway",
        cache_url,
        "--oci-layout",
        out_dir.to_str().unwrap(),
    ]);
    (out, out_dir)
}

fn layer_of(out_dir: &Path, layer: &[u8]) -> Vec<u8> {
    std::fs::read(out_dir.join("blobs/sha256").join(sha256_hex(layer))).unwrap()
}

fn cached_blocks(s: &Setup) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(s.work.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("CACHEDIR.TAG"))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    v
}

#[test]
fn the_cache_serves_a_second_pull_with_the_upstream_gone() {
    let mut s = setup();
    let host = Host::start(&host_config(&s, ""), s.work.path());
    let url = host.url();
    let (out, dir) = pull_through(&s, &url, "first");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
    assert!(
        out.stderr.contains("fetching in parallel ranges"),
        "{}",
        out.stderr
    );
    // The upstream goes away: the second pull needs only the cache.
    s.upstream = None;
    let (out, dir) = pull_through(&s, &url, "second");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
}

#[test]
fn prefetch_warms_the_cache_before_any_pull() {
    let mut s = setup();
    let extra = format!("prefetch = [\"ipfs://{}\"]\n", s.root);
    let host = Host::start(&host_config(&s, &extra), s.work.path());
    assert!(host.said("gateway cache prefetched"));
    s.upstream = None;
    let (out, dir) = pull_through(&s, &host.url(), "out");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
}

#[test]
fn a_corrupted_cache_entry_is_caught_on_read_and_fetched_again() {
    let s = setup();
    let host = Host::start(&host_config(&s, ""), s.work.path());
    let url = host.url();
    let (out, _) = pull_through(&s, &url, "first");
    assert!(out.ok, "{}", out.stderr);
    // Flip a byte of the largest cached block (a 1 MiB leaf of the layer).
    let victim = cached_blocks(&s)[0].clone();
    let good = std::fs::read(&victim).unwrap();
    let mut bad = good.clone();
    bad[4096] ^= 0x01;
    std::fs::write(&victim, &bad).unwrap();
    let (out, dir) = pull_through(&s, &url, "second");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
    assert!(
        host.said("corrupted cache entry"),
        "{:?}",
        host.lines.lock().unwrap()
    );
    // The entry was fetched again from upstream and is whole.
    assert_eq!(std::fs::read(&victim).unwrap(), good);
}

#[test]
fn the_cache_stays_under_its_size_cap() {
    let s = setup();
    let cap = 3u64 << 20;
    let host = Host::start(
        &host_config(&s, &format!("max_bytes = {cap}\n")),
        s.work.path(),
    );
    let (out, dir) = pull_through(&s, &host.url(), "out");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
    let total: u64 = cached_blocks(&s)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= cap && total > 0, "{total} bytes cached, cap {cap}");
}

/// The library's gateway client for `url`, trusting `ca`.
fn client(url: &str, ca: Option<&Path>) -> Arc<cidboot::fetch::Gateways> {
    use cidboot::transport::{http::HttpClient, tls, TcpConnector};
    let http = HttpClient::new(
        Arc::new(TcpConnector),
        tls::client_config(ca).unwrap(),
        cidboot::transport::http::Timeouts::default(),
    );
    cidboot::fetch::Gateways::new(http, &[url.to_string()], Default::default()).unwrap()
}

/// An image whose one layer is `len` bytes of noise (kept as is: neither the cache nor `pull`
/// looks inside a layer), as an OCI layout packed by ipfs-car and served over HTTPS; with the
/// CID of the layer's file DAG.
fn big_setup(len: usize) -> (Setup, cid::Cid) {
    let work = tempfile::tempdir().unwrap();
    let mut layer = vec![0u8; len];
    fastrand::Rng::with_seed(7).fill(&mut layer);
    let hex = sha256_hex(&layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{hex}")]},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": format!("sha256:{}", sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": MT_LAYER_GZ, "digest": format!("sha256:{hex}"), "size": len}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let dir = work.path().join("layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for b in [&layer, &config, &manifest] {
        std::fs::write(blobs.join(sha256_hex(b)), b).unwrap();
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [{
        "mediaType": MT_MANIFEST, "digest": format!("sha256:{}", sha256_hex(&manifest)),
        "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    let car = work.path().join("image.car");
    let root = ipfs_car_pack(&dir, &car, false);
    std::fs::remove_dir_all(&dir).unwrap();
    let upstream = Gateway::start(&[car], work.path());
    // The layer's file DAG, found as any client finds it: through the layout's directories.
    let gw = client(&upstream.url, Some(&upstream.ca));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let layer_cid = rt.block_on(async {
        let top = gw.directory(&root.parse().unwrap()).await.unwrap();
        let blobs = gw.directory(&top.get("blobs").unwrap()).await.unwrap();
        let sha = gw.directory(&blobs.get("sha256").unwrap()).await.unwrap();
        sha.get(&hex).unwrap()
    });
    (
        Setup {
            work,
            root,
            layer,
            upstream: Some(upstream),
        },
        layer_cid,
    )
}

const MIB: u64 = 1 << 20;

#[test]
fn a_big_image_is_prefetched_and_served_in_bounded_memory_past_clients_that_stop_reading() {
    let (mut s, layer_cid) = big_setup(256 << 20);
    let extra = format!("prefetch = [\"ipfs://{}\"]\n", s.root);
    let host = Host::start(&host_config(&s, &extra), s.work.path());
    assert!(host.said("gateway cache prefetched"));
    // The prefetch walked the 256 MiB image holding a few blocks, never the image.
    let prefetch_peak = host.memory("VmHWM");
    eprintln!("after the prefetch: peak {} MiB", prefetch_peak / MIB);
    assert!(prefetch_peak < 96 * MIB, "{} MiB", prefetch_peak / MIB);
    s.upstream = None;
    let url = host.url();
    let addr = url.trim_start_matches("http://").to_string();
    let idle = host.memory("VmRSS");

    // 64 clients ask for the whole layer as a CAR and never read a byte of it.
    let t0 = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..64 {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        nix::sys::socket::setsockopt(&c, nix::sys::socket::sockopt::RcvBuf, &(64 << 10)).unwrap();
        use std::io::Write;
        write!(
            c,
            "GET /ipfs/{layer_cid}?format=car&dag-scope=entity HTTP/1.1\r\nHost: cache\r\nAccept: application/vnd.ipld.car\r\n\r\n"
        )
        .unwrap();
        stalled.push(c);
    }
    std::thread::sleep(Duration::from_secs(3));
    let with_stalled = host.memory("VmRSS");
    // Not dropped before the stall timeout.
    assert!(!host.said("read nothing of its response"));
    eprintln!(
        "idle {} MiB, with 64 clients that stopped reading {} MiB",
        idle / MIB,
        with_stalled / MIB
    );
    // Meanwhile a client that reads is served: the whole image, in parallel ranges.
    let (out, dir) = pull_through(&s, &url, "out");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
    // Within the documented bound: the responses' 64 MiB in all, and 320 KiB per connection
    // (the 64 stalled ones and the pull's), over the idle daemon (and the allocator's slack).
    let peak = host.memory("VmHWM");
    let bound = idle + 64 * MIB + 80 * 320 * 1024 + 16 * MIB;
    eprintln!("peak {} MiB, bound {} MiB", peak / MIB, bound / MIB);
    assert!(
        peak < bound,
        "peak {} MiB over {} MiB",
        peak / MIB,
        bound / MIB
    );

    // After the stall timeout each of them was dropped, having received a fraction of it.
    let wait = Duration::from_secs(35).saturating_sub(t0.elapsed());
    std::thread::sleep(wait);
    for mut c in stalled {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("still open after the stall timeout: {e} ({got} bytes)"),
            }
        }
        assert!(got < s.layer.len() / 4, "{got} bytes");
    }
    let dropped = host
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("read nothing of its response for too long: dropped"))
        .count();
    assert_eq!(dropped, 64);
    assert!(host.said("gateway cache prefetched"));
}

fn check_host(config_path: &Path) -> Out {
    let o = cidboot()
        .args(["host", "--check", "--config"])
        .arg(config_path)
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_directory_shared_with_other_files_is_refused_and_loses_none_of_them() {
    let s = setup();
    let up = s.upstream.as_ref().unwrap();
    // The log directory: the enclave log and the sink's state file, which the log sink wrote
    // for a record, and host.toml itself.
    let logs = s.work.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let sock = s.work.path().join("logs.sock");
    let logs_only = format!(
        "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
        sock.display(),
        logs.join("enclave.log").display()
    );
    std::fs::write(logs.join("host.toml"), &logs_only).unwrap();
    let mut cmd = cidboot();
    cmd.args(["host", "--config"]).arg(logs.join("host.toml"));
    let sink = Host::spawn(cmd, "cidboot host ready");
    send_record(&sock, "a record");
    sink.wait_for("log sink disconnected", Duration::from_secs(10));
    drop(sink);
    assert!(std::fs::read_to_string(logs.join("enclave.log"))
        .unwrap()
        .contains("a record"));
    assert!(logs.join(".enclave.log.state").is_file());
    let config = |cache: &Path| {
        format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n\n[cache]\nlisten = \"tcp:127.0.0.1:0\"\ndir = \"{}\"\ngateways = [\"{}\"]\nca = \"{}\"\n",
            s.work.path().join("logs.sock").display(),
            logs.join("enclave.log").display(),
            cache.display(),
            up.url,
            up.ca.display()
        )
    };
    let path = logs.join("host.toml");
    std::fs::write(&path, config(&logs)).unwrap();
    let before = snapshot(&logs);
    let out = check_host(&path);
    assert!(!out.ok);
    for needle in [
        "cache.dir",
        logs.to_str().unwrap(),
        "\".enclave.log.state\", \"enclave.log\", \"host.toml\"",
        "that the cache did not write",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    // Started anyway, the daemon refuses in the same words, before anything is touched.
    let o = cidboot()
        .args(["host", "--config"])
        .arg(&path)
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("that the cache did not write"));
    assert_eq!(snapshot(&logs), before);

    // A directory of its own beside them: it runs, serves, and still touches nothing else.
    let cache = logs.join("cache");
    std::fs::write(&path, config(&cache)).unwrap();
    let before = snapshot(&logs);
    assert!(check_host(&path).ok);
    let mut cmd = cidboot();
    cmd.args(["host", "--config"]).arg(&path);
    let host = Host::spawn(cmd, "gateway cache ready");
    let (out, dir) = pull_through(&s, &host.url(), "out");
    assert!(out.ok, "{}", out.stderr);
    assert!(layer_of(&dir, &s.layer) == s.layer);
    drop(host);
    let after = snapshot(&logs);
    assert_eq!(
        after.iter().find(|f| f.0 == "host.toml"),
        before.iter().find(|f| f.0 == "host.toml")
    );
    assert!(after.iter().any(|f| f.0 == ".enclave.log.state"));
    let log = &after.iter().find(|f| f.0 == "enclave.log").unwrap().1;
    assert!(String::from_utf8_lossy(log).contains("a record"));
    assert!(cache.join("CACHEDIR.TAG").is_file());
    // The cache directory was created private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn check_refuses_a_cache_directory_that_cannot_be_used() {
    let s = setup();
    let file = s.work.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for (dir, said) in [
        (file.clone(), "is not a directory"),
        (file.join("cache"), "is not a directory"),
    ] {
        let cfg = host_config(&s, "").replace(
            &format!("dir = \"{}\"", s.work.path().join("cache").display()),
            &format!("dir = \"{}\"", dir.display()),
        );
        let path = s.work.path().join("host.toml");
        std::fs::write(&path, cfg).unwrap();
        let out = check_host(&path);
        assert!(!out.ok, "{}", dir.display());
        assert!(
            out.stderr.contains(&format!("cache.dir {}", dir.display())),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains(said), "{}", out.stderr);
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn a_cache_directory_of_an_earlier_version_is_adopted() {
    let s = setup();
    let cache = s.work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    // A block the upstream does not have, and the leftover of an interrupted write.
    let block = b"a block only the cache has";
    let cid = cidboot_ipld::block::raw_cid(block);
    std::fs::write(cache.join(cid.to_string()), block).unwrap();
    std::fs::write(cache.join(".tmp-1234567"), b"half a bl").unwrap();
    let host = Host::start(&host_config(&s, ""), s.work.path());
    assert!(host.said("adopted a directory of blocks"));
    assert!(cache.join("CACHEDIR.TAG").is_file());
    assert!(!cache.join(".tmp-1234567").exists());
    // The block is served from disk.
    let gw = client(&host.url(), None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt.block_on(gw.block(&cid)).unwrap();
    assert_eq!(&got.data()[..], block);
}

#[test]
fn a_cache_that_fails_at_run_time_leaves_the_log_sink_serving() {
    let s = setup();
    // The cache's directory is a tmpfs without a free inode (in a mount namespace of the
    // daemon's own): it passes the checks, and the cache cannot write its first file.
    let cache = s.work.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let sock = s.work.path().join("logs.sock");
    let file = s.work.path().join("enclave.log");
    let cfg = host_config(&s, "")
        + &format!(
            "\n[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
            sock.display(),
            file.display()
        );
    let path = s.work.path().join("host.toml");
    std::fs::write(&path, &cfg).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=1m,nr_inodes=1 cidboot-test \"$1\" && exec \"$2\" host --config \"$3\"")
        .arg("sh")
        .arg(&cache)
        .arg(env!("CARGO_BIN_EXE_cidboot"))
        .arg(&path);
    let mut host = Host::spawn(
        cmd,
        "the gateway cache stopped; the other services keep running",
    );
    assert!(
        host.said("No space left on device"),
        "{:?}",
        host.lines.lock().unwrap()
    );
    // The log sink still takes records and writes them.
    send_record(&sock, "the sink outlived the cache");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("the sink outlived the cache"), "{text}");
    assert!(
        host.child.try_wait().unwrap().is_none(),
        "the daemon stopped"
    );
}

/// Sends one stdout record to the log sink at `sock`, as the enclave does, and waits for its
/// acknowledgement.
fn send_record(sock: &Path, text: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use cidboot::relay::logs::{Kind, LogSender};
        let addr: cidboot::transport::addr::Addr =
            format!("unix:{}", sock.display()).parse().unwrap();
        let (sender, task) = LogSender::connect(&addr, Duration::from_secs(5), Some("test"))
            .await
            .unwrap();
        sender
            .send(Kind::Stdout, text.as_bytes().to_vec())
            .await
            .unwrap();
        drop(sender);
        task.await.unwrap().unwrap();
    });
}
