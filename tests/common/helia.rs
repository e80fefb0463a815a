//! The test IPFS node built on Helia (tests/publish/helia_node.mjs): kubo's `dag/import`, the
//! Pinning Service API and a trustless gateway over one Helia blockstore, in a `node` process
//! killed on drop.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// Where scripts/setup-tools.sh installs Helia's packages.
pub fn helia_modules() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = std::env::var("CIDBOOT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(home).join(".cache/cidboot"));
    let m = cache.join("tools/helia/node_modules");
    assert!(
        m.join("@helia/car/package.json").exists(),
        "Helia not found in {} (run scripts/setup-tools.sh)",
        m.display()
    );
    m
}

/// A running Helia node.
pub struct HeliaNode {
    /// `http://127.0.0.1:PORT`: the RPC, the Pinning Service API and the gateway.
    pub url: String,
    /// Every request it received, as `METHOD PATH`, in order.
    pub log: Arc<Mutex<Vec<String>>>,
    child: Child,
}

impl HeliaNode {
    /// A node that takes bearer `token` and request bodies of at most `max_body` bytes.
    pub fn start(token: &str, max_body: u64) -> HeliaNode {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/publish/helia_node.mjs");
        let mut child = Command::new("node")
            .arg(script)
            .args(["--token", token, "--max-body", &max_body.to_string()])
            .env("HELIA_MODULES", helia_modules())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("helia_node.mjs said {line:?}: {e}"));
        let url = v["url"].as_str().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(r) = v["request"].as_str() {
                        l.lock().unwrap().push(r.to_string());
                    }
                }
            }
        });
        HeliaNode { url, log, child }
    }

    /// The pins it holds (`GET /pins`, as a Pinning Service API client lists them).
    pub fn pins(&self, token: &str) -> Vec<serde_json::Value> {
        let o = Command::new("curl")
            .args(["-sf", "-H", &format!("authorization: Bearer {token}")])
            .arg(format!("{}/pins", self.url))
            .output()
            .unwrap();
        assert!(o.status.success(), "GET /pins failed");
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["results"].as_array().unwrap().clone()
    }
}

impl Drop for HeliaNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
