//! `[workload.limits]` under `cidboot run`: a workload that allocates without bound, and one
//! that forks without bound, each inside a cgroup of this test's own with hard limits (never
//! unbounded on the machine). cidboot must survive either, say what ended the workload, and
//! remove the cgroup it made.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use cidboot::launch::cgroup::place::Mounts;
use common::*;
use serde_json::json;

const MIB: u64 = 1 << 20;

/// A cgroup of this test's own in the v1 memory and pids hierarchies (this machine's kind:
/// its unified hierarchy has no controllers), below the test's own cgroups.
struct TestCgroup {
    memory: PathBuf,
    pids: PathBuf,
}

impl TestCgroup {
    fn new(memory: u64, pids: u64) -> TestCgroup {
        let m = Mounts::parse(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
            &std::fs::read_to_string("/proc/self/cgroup").unwrap(),
        );
        let (Some(mem), Some(pid)) = (m.memory.clone(), m.pids.clone()) else {
            panic!("this test needs the v1 memory and pids hierarchies: {m:?}");
        };
        let name = format!("cidboot-test-{}-{}", std::process::id(), fastrand::u32(..));
        let cg = TestCgroup {
            memory: mem.join(&name),
            pids: pid.join(&name),
        };
        std::fs::create_dir(&cg.memory).unwrap();
        std::fs::create_dir(&cg.pids).unwrap();
        std::fs::write(cg.memory.join("memory.limit_in_bytes"), memory.to_string()).unwrap();
        let memsw = cg.memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            std::fs::write(memsw, memory.to_string()).unwrap();
        }
        std::fs::write(cg.pids.join("pids.max"), pids.to_string()).unwrap();
        cg
    }

    /// `cmd` starts inside this cgroup.
    fn enter(&self, cmd: &mut std::process::Command) -> Vec<OwnedFd> {
        let fds: Vec<OwnedFd> = [&self.memory, &self.pids]
            .iter()
            .map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .unwrap()
                    .into()
            })
            .collect();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: only write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &raw {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        fds
    }

    fn children(&self) -> Vec<String> {
        let mut v = Vec::new();
        for d in [&self.memory, &self.pids] {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    v.push(e.path().display().to_string());
                }
            }
        }
        v
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in [&self.memory, &self.pids] {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

struct Ended {
    ran: Ran,
    pid: u32,
}

/// Boots the probe with `args` under `cidboot run --json`, inside `cg`.
fn run_in(cg: &TestCgroup, args: &[&str], config: &str) -> Ended {
    let work = tempfile::tempdir().unwrap();
    let img = probe_image(json!({"Entrypoint": ["/bin/probe"], "Cmd": args, "User": "app"}));
    let (reference, gw) = publish(&img, work.path());
    let cfg = work.path().join("cidboot.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut c = cidboot();
    c.args(["run", &reference, "--gateway", &gw.url, "--ca"])
        .arg(&gw.ca)
        .arg("--config")
        .arg(&cfg)
        .args(["--attestation-listen", "127.0.0.1:0", "--json"])
        .env("CIDBOOT_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let fds = cg.enter(&mut c);
    let child = c.spawn().unwrap();
    drop(fds);
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    Ended {
        ran: Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        },
        pid,
    }
}

fn report(r: &Ran) -> serde_json::Value {
    serde_json::from_str(r.stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}):\n{}\n{}", r.stdout, r.stderr))
}

fn gone(cg: &TestCgroup, pid: u32) {
    let name = format!("cidboot-run-{pid}");
    for d in [&cg.memory, &cg.pids] {
        assert!(
            !d.join(&name).exists(),
            "{} left behind",
            d.join(&name).display()
        );
    }
    assert_eq!(cg.children(), Vec::<String>::new());
}

#[test]
fn a_workload_that_allocates_without_bound_is_killed_and_cidboot_reports_it() {
    // cidboot's reserve is max(64 MiB, 10%): the workload may have 192 of the 256 MiB.
    let cg = TestCgroup::new(256 * MIB, 512);
    let e = run_in(&cg, &["allocate-forever"], "");
    let r = &e.ran;
    assert_eq!(r.code, Some(137), "{}\n{}", r.stdout, r.stderr);
    let rep = report(r);
    let reason = rep["reason"].as_str().unwrap();
    assert_eq!(
        reason,
        "killed: out of memory (the limit is 192 MiB); exit code 137"
    );
    assert!(
        r.stderr
            .contains("the workload ended: killed: out of memory"),
        "{}",
        r.stderr
    );
    // It got close to its limit before the kill, and no further.
    let most: u64 = r
        .lines("allocated ")
        .iter()
        .filter_map(|l| l.strip_suffix(" MiB")?.parse().ok())
        .max()
        .unwrap();
    assert!((120..192).contains(&most), "allocated {most} MiB");
    gone(&cg, e.pid);
}

#[test]
fn a_workload_that_forks_without_bound_reaches_the_pids_limit() {
    let cg = TestCgroup::new(512 * MIB, 512);
    let e = run_in(&cg, &["fork-forever"], "[workload.limits]\npids_max = 32\n");
    let r = &e.ran;
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    // Stage 1, the sandbox's PID 1 and the probe count too: the probe forks fewer than 32.
    let line = r.line("fork failed after ");
    let n: u64 = line.split(' ').next().unwrap().parse().unwrap();
    assert!((20..32).contains(&n), "{line}");
    assert!(line.ends_with("children: EAGAIN"), "{line}");
    assert_eq!(
        report(r)["reason"],
        "pids limit reached (at most 32 processes); exit code 1"
    );
    gone(&cg, e.pid);
}

#[test]
fn limits_asked_for_beyond_what_the_cgroup_has_stop_the_run_before_the_fetch() {
    let cg = TestCgroup::new(256 * MIB, 512);
    let e = run_in(&cg, &[], "[workload.limits]\nmemory_max_mib = 200\n");
    let r = &e.ran;
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("[workload.limits] memory_max_mib = 200: the workload may have at most 192 MiB here (256 MiB available, less cidboot's reserve of 64 MiB)"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("probe: uid="));
    gone(&cg, e.pid);
}

#[test]
fn an_interrupted_runs_cgroup_is_removed_by_the_next_run() {
    let cg = TestCgroup::new(512 * MIB, 512);
    // A pid no process has: as an interrupted run leaves it.
    let stale = format!("cidboot-run-{}", 4_194_303);
    for d in [&cg.memory, &cg.pids] {
        std::fs::create_dir(d.join(&stale)).unwrap();
    }
    let e = run_in(&cg, &["exit", "3"], "");
    assert_eq!(e.ran.code, Some(3), "{}", e.ran.stderr);
    assert_eq!(report(&e.ran)["reason"], "the workload exited");
    gone(&cg, e.pid);
    assert!(Path::new(&cg.memory).exists());
}
