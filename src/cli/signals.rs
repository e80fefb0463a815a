//! SIGINT, SIGTERM and SIGHUP for the commands that stage files (`run`, `unpack`, `pull`,
//! `pack`, and `expect`/`verify`, which stage helper images).
//!
//! The first of them marks the process as interrupted ([`crate::scratch::interrupt`]) and wakes
//! whoever waits in [`Interrupts::first`]: the command stops its work (`run` stops the workload
//! first), then [`super::finish_interrupted`] removes what the command made and the process
//! exits with 128 + the signal's number. The handlers stay installed until the process exits,
//! so a second signal cannot kill it halfway through the clean-up; `run` takes a second signal
//! as "stop the workload now" ([`Interrupts::another`]).

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How many interrupting signals arrived, and the first of them.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    count: u64,
    first: Option<Signal>,
}

/// The interrupting signals, as they arrive; each clone waits on its own.
#[derive(Clone)]
pub struct Interrupts {
    rx: watch::Receiver<Seen>,
    handled: u64,
}

/// Watches SIGINT, SIGTERM and SIGHUP from now on (inside the runtime).
pub fn install() -> std::io::Result<Interrupts> {
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = watch::channel(Seen::default());
    tokio::spawn(async move {
        loop {
            let got = tokio::select! {
                Some(()) = int.recv() => Signal::SIGINT,
                Some(()) = term.recv() => Signal::SIGTERM,
                Some(()) = hup.recv() => Signal::SIGHUP,
                else => return,
            };
            crate::scratch::interrupt();
            tx.send_modify(|seen| {
                seen.count += 1;
                seen.first.get_or_insert(got);
            });
        }
    });
    Ok(Interrupts { rx, handled: 0 })
}

impl Interrupts {
    /// The first interrupting signal: at once if one came already, else when one comes.
    pub async fn first(&mut self) -> Signal {
        loop {
            if let Some(s) = self.rx.borrow_and_update().first {
                self.handled = self.handled.max(1);
                return s;
            }
            if self.rx.changed().await.is_err() {
                // The watcher is gone (the runtime is shutting down): no signal will come.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Waits for a signal beyond those already taken by [`Interrupts::first`] or this.
    pub async fn another(&mut self) {
        loop {
            let count = self.rx.borrow_and_update().count;
            if count > self.handled {
                self.handled = count;
                return;
            }
            if self.rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The first signal, if one came.
    pub fn received(&self) -> Option<Signal> {
        self.rx.borrow().first
    }
}
