//! PID 1's way out: whatever fails, the boot ends in a status that names it, the status
//! reaches the parent's sink (a real one, on a unix socket) when one answers, and a sink
//! that never acknowledges costs only the patience. The machine is a stand-in; the heartbeat
//! peer, the sink and the NSM (software) are real.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cidboot::host::{HEARTBEAT, HEARTBEAT_PORT, LOGS_PORT};
use cidboot::init::system::{System, SystemError};
use cidboot::nsm::software::{SoftwareNsm, TestCa};
use cidboot::nsm::{Nsm, NsmError};
use cidboot::relay::logs::{Sink, SinkConfig};
use cidboot::transport::addr::Addr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Fake {
    dir: PathBuf,
    modules: Result<(), String>,
    baked: Option<PathBuf>,
    calls: Mutex<Vec<String>>,
}

impl Fake {
    fn new(dir: &Path) -> Fake {
        Fake {
            dir: dir.to_path_buf(),
            modules: Ok(()),
            baked: None,
            calls: Mutex::new(Vec::new()),
        }
    }
    fn call(&self, what: &str) {
        self.calls.lock().unwrap().push(what.to_string());
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

fn failed(what: &str) -> SystemError {
    SystemError::Sys {
        what: what.into(),
        source: std::io::Error::other("refused by the test machine"),
    }
}

impl System for Fake {
    fn load_modules(&self) -> Result<Vec<String>, SystemError> {
        self.call("load_modules");
        match &self.modules {
            Ok(()) => Ok(vec!["vsock".into(), "nsm".into()]),
            Err(m) => Err(failed(m)),
        }
    }
    fn loopback_up(&self) -> Result<(), SystemError> {
        self.call("loopback_up");
        Ok(())
    }
    fn hostname(&self, _name: &str) -> Result<(), SystemError> {
        self.call("hostname");
        Ok(())
    }
    fn open_nsm(&self) -> Result<Arc<dyn Nsm>, NsmError> {
        self.call("open_nsm");
        Ok(Arc::new(SoftwareNsm::new(&TestCa::generate()?, &[])?))
    }
    fn add_entropy(&self, seed: &[u8]) -> Result<(), SystemError> {
        self.call(&format!("add_entropy {}", seed.len()));
        Ok(())
    }
    fn parent(&self, port: u32) -> Addr {
        Addr::Unix(self.dir.join(format!("parent-{port}.sock")))
    }
    fn baked_config(&self) -> Option<PathBuf> {
        self.baked.clone()
    }
    fn tmpfs(&self, dir: &Path) -> Result<(), SystemError> {
        self.call(&format!("tmpfs {}", dir.display()));
        Err(failed(&format!("tmpfs on {}", dir.display())))
    }
    fn status_patience(&self) -> Duration {
        Duration::from_secs(3)
    }
    fn workload_limits(
        &self,
        _: Option<&cidboot::config::Limits>,
    ) -> Result<Option<cidboot::launch::cgroup::Cgroup>, SystemError> {
        self.call("workload_limits");
        Err(failed("workload_limits"))
    }
}

/// A parent heartbeat service that answers `answer` to every heartbeat.
async fn heartbeat(fake: &Fake, answer: u8) {
    let l = fake.parent(HEARTBEAT_PORT).bind().await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = l.accept().await {
            let mut b = [0u8; 1];
            if io.read_exact(&mut b).await.is_ok() && b[0] == HEARTBEAT {
                let _ = io.write_all(&[answer]).await;
            }
        }
    });
}

/// The parent's real log sink, writing to `log`.
async fn sink(fake: &Fake, log: &Path) -> tokio::sync::watch::Sender<bool> {
    let sink = Arc::new(
        Sink::open(SinkConfig {
            file: Some(log.to_path_buf()),
            ..SinkConfig::default()
        })
        .unwrap(),
    );
    let l = fake.parent(LOGS_PORT).bind().await.unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(sink.serve(l, rx));
    tx
}

fn reason(status: &serde_json::Value) -> String {
    assert!(status["exit_code"].is_null(), "{status}");
    status["reason"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_failure_before_the_parent_is_reached_ends_in_a_status_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = Fake::new(dir.path());
    fake.modules = Err("finit_module vsock.ko".into());
    let status = cidboot::init::lifecycle(&fake).await;
    let r = reason(&status);
    assert!(r.starts_with("fatal: "), "{r}");
    assert!(r.contains("finit_module vsock.ko"), "{r}");
    assert_eq!(
        fake.calls(),
        ["load_modules"],
        "nothing after the failure ran"
    );
}

#[tokio::test]
async fn a_wrong_heartbeat_answer_stops_the_boot_before_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::new(dir.path());
    heartbeat(&fake, 0x00).await;
    let log = dir.path().join("enclave.log");
    let _sink = sink(&fake, &log).await;
    let r = reason(&cidboot::init::lifecycle(&fake).await);
    assert!(r.contains("heartbeat to the parent"), "{r}");
    assert!(r.contains("answered 0x00"), "{r}");
    let calls = fake.calls();
    assert!(calls.iter().any(|c| c == "add_entropy 256"), "{calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("tmpfs")), "{calls:?}");
    // The sink is reached only after the heartbeat: nothing was logged there.
    assert!(std::fs::read_to_string(&log).unwrap_or_default().is_empty());
}

#[tokio::test]
async fn a_fatal_error_after_the_configuration_reaches_the_sink_as_the_final_status() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = Fake::new(dir.path());
    let baked = dir.path().join("config.toml");
    std::fs::write(&baked, "").unwrap();
    fake.baked = Some(baked);
    heartbeat(&fake, HEARTBEAT).await;
    let log = dir.path().join("enclave.log");
    let _sink = sink(&fake, &log).await;
    let started = Instant::now();
    let status = cidboot::init::lifecycle(&fake).await;
    let r = reason(&status);
    assert!(r.contains("tmpfs on /mnt/root"), "{r}");
    // Acknowledged, so well within the patience.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[init] configuration from")),
        "{text}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.contains("[status] "),
        "the status is the last record: {text}"
    );
    assert!(last.contains("tmpfs on /mnt/root"), "{last}");
}

#[tokio::test]
async fn a_sink_that_never_acknowledges_costs_only_the_patience() {
    let dir = tempfile::tempdir().unwrap();
    let mut fake = Fake::new(dir.path());
    let baked = dir.path().join("config.toml");
    std::fs::write(&baked, "this is not toml").unwrap();
    fake.baked = Some(baked);
    heartbeat(&fake, HEARTBEAT).await;
    // Accepts, holds every connection, reads nothing.
    let l = fake.parent(LOGS_PORT).bind().await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((io, _)) = l.accept().await {
            held.push(io);
        }
    });
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(30), cidboot::init::lifecycle(&fake))
        .await
        .expect("the lifecycle must end within its patience");
    let r = reason(&status);
    assert!(r.contains("configuration"), "{r}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "waited for the patience: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "{took:?}");
}
