//! PID 1's supervision with real processes: this test process becomes a child subreaper, as PID
//! 1 is, so orphans are re-parented to it. One test only: `waitpid(-1)` reaps any child of the
//! process, so nothing else may run beside it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::process::Command;

use cidboot::init::supervise::{forward, reap_until, Processes, Real};
use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

// Reaped by `reap_until`, with every other child, as PID 1 does.
#[allow(clippy::zombie_processes)]
fn spawn(script: &str) -> Pid {
    let child = Command::new("sh").args(["-c", script]).spawn().unwrap();
    Pid::from_raw(i32::try_from(child.id()).unwrap())
}

#[test]
fn the_workload_is_reaped_with_its_status_orphans_too_and_signals_reach_it() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let mut real = Real;

    // The workload exits 3 and leaves an orphan behind, which is re-parented to us.
    let orphan_file = tempfile::NamedTempFile::new().unwrap();
    let pid = spawn(&format!(
        "sleep 0.3 & echo $! > {}; exit 3",
        orphan_file.path().display()
    ));
    let ended = reap_until(&mut real, pid);
    assert_eq!(ended.code, 3);
    assert_eq!(ended.reason, "the workload exited with status 3");
    let orphan: i32 = std::fs::read_to_string(orphan_file.path())
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(
        real.wait_any(),
        Ok(WaitStatus::Exited(Pid::from_raw(orphan), 0))
    );
    assert_eq!(
        real.wait_any(),
        Err(Errno::ECHILD),
        "nothing is left unreaped"
    );

    // A forwarded SIGTERM ends a workload that ignores nothing, and is reported as such.
    let pid = spawn("exec sleep 30");
    std::thread::sleep(std::time::Duration::from_millis(100));
    forward(&Real, pid, [15]);
    let ended = reap_until(&mut real, pid);
    assert_eq!(ended.code, 143, "{}", ended.reason);
    assert_eq!(ended.reason, "the workload was killed by SIGTERM");
}
