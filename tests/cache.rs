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
        let mut child = cidboot()
            .args(["host", "--config"])
            .arg(&path)
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
        let h = Host { child, lines };
        h.wait_for("gateway cache ready", Duration::from_secs(60));
        h
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
