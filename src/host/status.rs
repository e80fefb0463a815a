//! The boot statuses the log sink receives, delivered to whoever supervises the enclave.
//!
//! The sink publishes every `[status]` record it writes, with the peer that sent it. The
//! enclave supervisor watches before each launch ([`watch`]) and is handed only the statuses
//! whose peer is its enclave (the vsock CID, or one of the enclave's processes on the parent
//! for a Unix socket); any other is logged and ignored as it is published. So no number of
//! statuses from other peers can push the enclave's own out of the supervisor's way, however
//! busy it is when they come.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::warn;

use crate::relay::logs::printable;
use crate::transport::addr::unix_peer_pid;

/// Statuses of its enclave kept for a supervisor that has not taken them yet (the first one
/// decides the boot; an enclave sends one).
pub const CAPACITY: usize = 16;
/// Statuses from Unix peers kept while the launcher has not yet named the enclave's own
/// processes (they are told apart once it has).
pub const PENDING: usize = 64;

/// One final status record, as the log sink received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// The sink's peer: `vsock:CID:PORT` on Nitro, `unix:PATH (pid N, uid N)` or `tcp:…`
    /// otherwise.
    pub peer: String,
    /// The workload's exit code; `None` when the record had none (a fatal error before or
    /// instead of the workload) or did not parse.
    pub exit_code: Option<i64>,
    /// The record's `reason`, or the record itself when it is not the expected JSON; escaped
    /// and cut as [`printable`] does, ready for the daemon's log.
    pub reason: String,
}

impl StatusEvent {
    /// Parses a status payload (`{"exit_code": N|null, "reason": "..."}`); anything else is
    /// kept as a status without an exit code, so that it counts as a failure.
    pub fn parse(peer: &str, payload: &[u8]) -> StatusEvent {
        #[derive(Deserialize)]
        struct Record {
            exit_code: Option<i64>,
            #[serde(default)]
            reason: String,
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(r) => StatusEvent {
                peer: peer.to_string(),
                exit_code: r.exit_code,
                reason: printable(r.reason.as_bytes()),
            },
            Err(_) => StatusEvent {
                peer: peer.to_string(),
                exit_code: None,
                reason: printable(payload),
            },
        }
    }

    /// The enclave CID of a vsock peer.
    pub fn cid(&self) -> Option<u32> {
        let rest = self.peer.strip_prefix("vsock:")?;
        rest.split(':').next()?.parse().ok()
    }

    /// The process id of a Unix peer.
    pub fn pid(&self) -> Option<u32> {
        unix_peer_pid(&self.peer)
    }
}

/// What one supervisor waits for: the statuses of the enclave with vsock CID `cid`, or of its
/// processes `pids` once the launcher has named them.
struct Filter {
    cid: u32,
    pids: Option<Vec<u32>>,
    /// Statuses of Unix peers that came before `pids` was known.
    pending: VecDeque<StatusEvent>,
    tx: mpsc::Sender<StatusEvent>,
}

/// Whether a status came from the watched enclave: over vsock, from its CID (which nothing
/// else can use); over a Unix socket, from one of the enclave's own processes on the parent
/// (`pids`: the vsock backend of a QEMU enclave); never over tcp, and never from any other
/// local process, which can connect to the sink but cannot be those processes. `None` while
/// that cannot be told yet (a Unix peer, before the launcher named the processes).
fn ours(e: &StatusEvent, cid: u32, pids: Option<&[u32]>) -> Option<bool> {
    match (e.cid(), e.pid()) {
        (Some(c), _) => Some(c == cid),
        (None, Some(p)) => pids.map(|pids| pids.contains(&p)),
        (None, None) => Some(false),
    }
}

impl Filter {
    fn offer(&mut self, e: StatusEvent) {
        match ours(&e, self.cid, self.pids.as_deref()) {
            // A full queue already holds the status that decides the boot.
            Some(true) => drop(self.tx.try_send(e)),
            Some(false) => warn!(
                client = %e.peer,
                exit_code = ?e.exit_code,
                reason = %e.reason,
                "a status from a peer that is not the supervised enclave: ignored"
            ),
            None => {
                if self.pending.len() >= PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(e);
            }
        }
    }
}

static WATCHES: Mutex<Vec<Weak<Mutex<Filter>>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing holding these locks leaves its data half-changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Called by the log sink for each status record it has written: handed to each supervisor
/// whose enclave sent it, logged and ignored by the others.
pub fn publish(peer: &str, payload: &[u8]) {
    let watches: Vec<Arc<Mutex<Filter>>> = {
        let mut all = lock(&WATCHES);
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    };
    if watches.is_empty() {
        // No [enclave] section: nobody acts on statuses.
        return;
    }
    let e = StatusEvent::parse(peer, payload);
    for w in watches {
        lock(&w).offer(e.clone());
    }
}

/// The statuses of one launch of the enclave with vsock CID `cid`, from now on (a status
/// published before belongs to an earlier boot).
pub fn watch(cid: u32) -> Watch {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let filter = Arc::new(Mutex::new(Filter {
        cid,
        pids: None,
        pending: VecDeque::new(),
        tx,
    }));
    lock(&WATCHES).push(Arc::downgrade(&filter));
    Watch { filter, rx }
}

/// A supervisor's view of its enclave's statuses ([`watch`]); it stops watching when dropped.
pub struct Watch {
    filter: Arc<Mutex<Filter>>,
    rx: mpsc::Receiver<StatusEvent>,
}

impl Watch {
    /// The enclave's own processes on the parent (the launcher knows them once it has
    /// launched): Unix peers among them speak for it, any other does not. Statuses that came
    /// before are told apart now.
    pub fn set_pids(&self, pids: &[u32]) {
        let mut f = lock(&self.filter);
        f.pids = Some(pids.to_vec());
        let pending = std::mem::take(&mut f.pending);
        for e in pending {
            f.offer(e);
        }
    }

    /// The next status of the enclave.
    pub async fn next(&mut self) -> StatusEvent {
        match self.rx.recv().await {
            Some(e) => e,
            // The sender lives in the filter, which lives as long as this.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_records_the_enclave_sends() {
        let e = StatusEvent::parse(
            "vsock:16:1234",
            br#"{"exit_code":0,"reason":"the workload exited"}"#,
        );
        assert_eq!(e.exit_code, Some(0));
        assert_eq!(e.reason, "the workload exited");
        assert_eq!(e.cid(), Some(16));
        let e = StatusEvent::parse("unix:/x", br#"{"exit_code":null,"reason":"fatal: x"}"#);
        assert_eq!(e.exit_code, None);
        assert_eq!(e.cid(), None);
        let e = StatusEvent::parse("unix:/x", b"not json");
        assert_eq!((e.exit_code, e.reason.as_str()), (None, "not json"));
        assert_eq!(e.pid(), None);
        let e = StatusEvent::parse(
            "unix:/x (pid 42, uid 0)",
            b"{\"exit_code\":0,\"reason\":\"a\\nb\\u001b[2J\"}",
        );
        assert_eq!((e.pid(), e.cid()), (Some(42), None));
        assert_eq!(e.reason, "a\\nb\\x1b[2J");
    }

    #[test]
    fn only_the_enclaves_cid_or_its_own_processes_decide_its_status() {
        let ev = |peer: &str| StatusEvent::parse(peer, br#"{"exit_code":0}"#);
        assert_eq!(ours(&ev("vsock:16:1023"), 16, Some(&[])), Some(true));
        assert_eq!(ours(&ev("vsock:17:1023"), 16, Some(&[77])), Some(false));
        let unix = ev("unix:/run/vsock_8002 (pid 77, uid 0)");
        assert_eq!(ours(&unix, 16, Some(&[77])), Some(true));
        assert_eq!(ours(&unix, 16, None), None);
        let other = ev("unix:/run/vsock_8002 (pid 78, uid 0)");
        assert_eq!(ours(&other, 16, Some(&[77])), Some(false));
        assert_eq!(ours(&ev("unix:/run/vsock_8002"), 16, None), Some(false));
        assert_eq!(ours(&ev("tcp:127.0.0.1:5000"), 16, None), Some(false));
    }

    #[tokio::test]
    async fn a_watch_gets_its_enclaves_statuses_only_and_from_now_on() {
        publish("vsock:21:1", br#"{"exit_code":3}"#);
        let mut w = watch(21);
        let mut other = watch(22);
        // Another enclave's, a tcp peer's and a Unix peer's before the enclave's processes
        // are known; many of each.
        for _ in 0..1000 {
            publish("vsock:23:1", br#"{"exit_code":1}"#);
            publish("tcp:127.0.0.1:9", br#"{"exit_code":1}"#);
            publish("unix:/s (pid 4000000, uid 0)", br#"{"exit_code":1}"#);
        }
        publish("unix:/s (pid 77, uid 0)", br#"{"exit_code":5}"#);
        publish("vsock:21:1", br#"{"exit_code":4}"#);
        for _ in 0..1000 {
            publish("vsock:23:1", br#"{"exit_code":1}"#);
        }
        let e = w.next().await;
        assert_eq!((e.peer.as_str(), e.exit_code), ("vsock:21:1", Some(4)));
        w.set_pids(&[77]);
        let e = w.next().await;
        assert_eq!(e.exit_code, Some(5), "a pending status of its own process");
        assert!(w.rx.try_recv().is_err(), "nothing else");
        assert!(other.rx.try_recv().is_err());
        drop(w);
        publish("vsock:22:1", br#"{"exit_code":0}"#);
        assert_eq!(other.next().await.exit_code, Some(0));
    }
}
