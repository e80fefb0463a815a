//! PID 1's supervision of the workload: every child is reaped (orphans are re-parented to PID
//! 1), the workload's end is kept, and the signals PID 1 receives are forwarded to it. The
//! system calls sit behind [`Processes`], so the logic runs under `cargo test` as well as in
//! the enclave.

use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

/// The process system calls supervision makes.
pub trait Processes {
    /// Waits for any child to change state (`waitpid(-1, 0)`).
    fn wait_any(&mut self) -> nix::Result<WaitStatus>;
    /// Sends `sig` to `pid`.
    fn kill(&self, pid: Pid, sig: Signal) -> nix::Result<()>;
    /// Pauses after a failed wait (no child yet, or an interrupted call) before trying again.
    fn backoff(&mut self);
}

/// The real system calls.
pub struct Real;

impl Processes for Real {
    fn wait_any(&mut self) -> nix::Result<WaitStatus> {
        nix::sys::wait::waitpid(None, None)
    }
    fn kill(&self, pid: Pid, sig: Signal) -> nix::Result<()> {
        nix::sys::signal::kill(pid, sig)
    }
    fn backoff(&mut self) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How the workload ended: its exit code (128 + the signal, as a shell reports it) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The exit code, or 128 + the number of the signal that killed it.
    pub code: i32,
    /// In words, for the status record.
    pub reason: String,
}

/// Reaps children until `workload` has ended, and returns how. Any other child is reaped and
/// forgotten; a stopped or continued workload is still running.
pub fn reap_until(p: &mut impl Processes, workload: Pid) -> Ended {
    loop {
        match p.wait_any() {
            Ok(WaitStatus::Exited(pid, code)) if pid == workload => {
                return Ended {
                    code,
                    reason: format!("the workload exited with status {code}"),
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == workload => {
                return Ended {
                    code: 128 + sig as i32,
                    reason: format!("the workload was killed by {sig}"),
                }
            }
            Ok(_) => {}
            Err(_) => p.backoff(),
        }
    }
}

/// Reaps whatever else ends, for as long as PID 1 runs.
pub fn reap_forever(p: &mut impl Processes) -> ! {
    loop {
        if p.wait_any().is_err() {
            p.backoff();
        }
    }
}

/// Forwards each signal number from `signals` to `workload`, until the source ends. A number
/// that is no signal is skipped; a failed kill (the workload already gone) does not stop it.
pub fn forward(p: &impl Processes, workload: Pid, signals: impl IntoIterator<Item = u32>) {
    for n in signals {
        if let Some(sig) = i32::try_from(n).ok().and_then(|n| Signal::try_from(n).ok()) {
            let _ = p.kill(workload, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use nix::errno::Errno;

    use super::*;

    /// Replays scripted wait results and records kills and back-offs.
    #[derive(Default)]
    struct Script {
        waits: VecDeque<nix::Result<WaitStatus>>,
        kills: RefCell<Vec<(Pid, Signal)>>,
        kill_fails: bool,
        backoffs: usize,
    }

    impl Processes for Script {
        fn wait_any(&mut self) -> nix::Result<WaitStatus> {
            self.waits.pop_front().unwrap_or(Err(Errno::ECHILD))
        }
        fn kill(&self, pid: Pid, sig: Signal) -> nix::Result<()> {
            self.kills.borrow_mut().push((pid, sig));
            if self.kill_fails {
                Err(Errno::ESRCH)
            } else {
                Ok(())
            }
        }
        fn backoff(&mut self) {
            self.backoffs += 1;
        }
    }

    const WORKLOAD: Pid = Pid::from_raw(40);
    const ORPHAN: Pid = Pid::from_raw(41);

    #[test]
    fn orphans_are_reaped_and_the_workloads_exit_code_is_kept() {
        let mut s = Script {
            waits: VecDeque::from([
                Err(Errno::ECHILD),
                Ok(WaitStatus::Exited(ORPHAN, 9)),
                Ok(WaitStatus::Signaled(ORPHAN, Signal::SIGKILL, false)),
                Ok(WaitStatus::Stopped(WORKLOAD, Signal::SIGSTOP)),
                Ok(WaitStatus::Continued(WORKLOAD)),
                Err(Errno::EINTR),
                Ok(WaitStatus::Exited(WORKLOAD, 3)),
                Ok(WaitStatus::Exited(ORPHAN, 0)),
            ]),
            ..Script::default()
        };
        let ended = reap_until(&mut s, WORKLOAD);
        assert_eq!(
            ended,
            Ended {
                code: 3,
                reason: "the workload exited with status 3".into()
            }
        );
        assert_eq!(s.backoffs, 2, "each failed wait backs off");
        assert_eq!(s.waits.len(), 1, "it returns at the workload's end");
    }

    #[test]
    fn a_killed_workload_reports_128_plus_the_signal() {
        let mut s = Script {
            waits: VecDeque::from([Ok(WaitStatus::Signaled(WORKLOAD, Signal::SIGTERM, true))]),
            ..Script::default()
        };
        let ended = reap_until(&mut s, WORKLOAD);
        assert_eq!(ended.code, 143);
        assert_eq!(ended.reason, "the workload was killed by SIGTERM");
    }

    #[test]
    fn every_signal_is_forwarded_to_the_workload_even_after_a_failed_kill() {
        let s = Script {
            kill_fails: true,
            ..Script::default()
        };
        forward(&s, WORKLOAD, [15, 2, 0, 9999, 1, u32::MAX]);
        assert_eq!(
            *s.kills.borrow(),
            vec![
                (WORKLOAD, Signal::SIGTERM),
                (WORKLOAD, Signal::SIGINT),
                (WORKLOAD, Signal::SIGHUP)
            ]
        );
    }
}
