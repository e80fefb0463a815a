//! The boot statuses the log sink receives, published for whoever supervises the enclave.
//!
//! The sink publishes every `[status]` record it writes, with the peer that sent it; the
//! enclave supervisor subscribes before each launch and learns from it whether a boot
//! succeeded, taking only a status whose peer is its enclave (the vsock CID, or one of the
//! enclave's processes on the parent for a Unix socket). Publishing never blocks the sink: a
//! subscriber that falls more than [`CAPACITY`] events behind loses the oldest.

use std::sync::LazyLock;

use serde::Deserialize;
use tokio::sync::broadcast;

use crate::relay::logs::printable;
use crate::transport::addr::unix_peer_pid;

/// Events kept for a slow subscriber.
pub const CAPACITY: usize = 64;

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

static BUS: LazyLock<broadcast::Sender<StatusEvent>> =
    LazyLock::new(|| broadcast::channel(CAPACITY).0);

/// Called by the log sink for each status record it has written.
pub fn publish(peer: &str, payload: &[u8]) {
    // An error only means nobody is subscribed (no [enclave] section): nothing to do.
    let _ = BUS.send(StatusEvent::parse(peer, payload));
}

/// Statuses published from now on.
pub fn subscribe() -> broadcast::Receiver<StatusEvent> {
    BUS.subscribe()
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

    #[tokio::test]
    async fn subscribers_see_what_is_published_after_they_subscribe() {
        publish("unix:/before", br#"{"exit_code":3}"#);
        let mut rx = subscribe();
        publish("unix:/after", br#"{"exit_code":4}"#);
        let e = rx.recv().await.unwrap();
        assert_eq!((e.peer.as_str(), e.exit_code), ("unix:/after", Some(4)));
    }
}
