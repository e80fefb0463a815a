//! A Prometheus text-format `/metrics` endpoint on a loopback address. Counters are process
//! globals so that every service (and the enclave launcher's restarts) can count without
//! being handed a registry.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::HostError;
use crate::relay::logs::Sink;
use crate::transport::addr::accept_retrying;
use crate::transport::head::{read_head, Head, HeadError};

/// Longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a scraper gets to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// The daemon's counters.
pub struct Counters {
    /// CONNECT requests the allowlist let through.
    pub egress_allowed: AtomicU64,
    /// CONNECT requests the allowlist refused.
    pub egress_denied: AtomicU64,
    /// Refused for want of a slot (503) or a descriptor.
    pub egress_refused: AtomicU64,
    /// Client to destination, and back.
    pub egress_bytes_up: AtomicU64,
    /// Bytes from destination to client.
    pub egress_bytes_down: AtomicU64,
    /// Enclave restarts by the launcher.
    pub restarts: AtomicU64,
}

/// The process's counters, served at `/metrics`.
pub static COUNTERS: Counters = Counters {
    egress_allowed: AtomicU64::new(0),
    egress_denied: AtomicU64::new(0),
    egress_refused: AtomicU64::new(0),
    egress_bytes_up: AtomicU64::new(0),
    egress_bytes_down: AtomicU64::new(0),
    restarts: AtomicU64::new(0),
};

/// Adds one to a counter.
pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Checks that `listen` is a loopback `HOST:PORT` (the endpoint has no authentication).
pub fn loopback(listen: &str) -> Result<SocketAddr, String> {
    let hp = crate::transport::addr::Addr::tcp_only(listen).map_err(|e| e.to_string())?;
    let a: SocketAddr = hp
        .parse()
        .map_err(|_| format!("{listen:?} is not IP:PORT (for example 127.0.0.1:9464)"))?;
    if !a.ip().is_loopback() {
        return Err(format!(
            "{listen:?} is not a loopback address: /metrics has no authentication"
        ));
    }
    Ok(a)
}

/// Checks that `listen` is a loopback address and binds it; errors are [`HostError::Bind`].
pub async fn bind(listen: &str) -> Result<tokio::net::TcpListener, HostError> {
    let bad = |reason: String| HostError::Bind {
        service: "metrics",
        addr: listen.to_string(),
        source: std::io::Error::other(reason),
    };
    let a = loopback(listen).map_err(bad)?;
    let l = tokio::net::TcpListener::bind(a)
        .await
        .map_err(|source| HostError::Bind {
            service: "metrics",
            addr: listen.to_string(),
            source,
        })?;
    let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!("metrics listening on tcp:{local}");
    Ok(l)
}

/// The exposition text.
pub fn render(sink: Option<&Sink>) -> String {
    let mut out = String::new();
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut counter = |name: &str, help: &str, values: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, v) in values {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let c = &COUNTERS;
    counter(
        "cidboot_egress_requests_total",
        "Egress requests by decision.",
        &[
            ("{decision=\"allow\"}", g(&c.egress_allowed)),
            ("{decision=\"deny\"}", g(&c.egress_denied)),
            ("{decision=\"refuse\"}", g(&c.egress_refused)),
        ],
    );
    counter(
        "cidboot_egress_bytes_total",
        "Bytes carried by egress tunnels that have closed.",
        &[
            ("{direction=\"up\"}", g(&c.egress_bytes_up)),
            ("{direction=\"down\"}", g(&c.egress_bytes_down)),
        ],
    );
    counter(
        "cidboot_enclave_restarts_total",
        "Enclave restarts.",
        &[("", g(&c.restarts))],
    );
    if let Some(s) = sink {
        counter(
            "cidboot_log_records_total",
            "Enclave log records written.",
            &[("", g(&s.counters.records))],
        );
        counter(
            "cidboot_boots_total",
            "Enclave boots seen by the log sink.",
            &[("", g(&s.counters.boots))],
        );
        let statuses: Vec<(String, u64)> = s
            .counters
            .statuses
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (format!("{{exit_code=\"{}\"}}", k.replace('"', "")), *v))
                    .collect()
            })
            .unwrap_or_default();
        let refs: Vec<(&str, u64)> = statuses.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        counter(
            "cidboot_exit_statuses_total",
            "Final statuses reported by enclaves, by exit code.",
            &refs,
        );
    }
    out
}

/// Serves `GET /metrics`; anything else gets 404, a head over [`MAX_REQUEST`] 431.
pub async fn serve(listener: tokio::net::TcpListener, sink: Option<Arc<Sink>>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut io, peer) = accept_retrying(&listener, "metrics").await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let sink = sink.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let got = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut io, MAX_REQUEST)).await;
            let (status, body) = match got {
                Ok(Ok(Head { head, .. })) if head.starts_with(b"GET /metrics ") => {
                    ("200 OK", render(sink.as_deref()))
                }
                Ok(Ok(_)) => ("404 Not Found", "only GET /metrics\n".to_string()),
                Ok(Err(HeadError::TooLarge(max))) => (
                    "431 Request Header Fields Too Large",
                    format!("request head over {max} bytes\n"),
                ),
                Ok(Err(_)) | Err(_) => return,
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if let Err(e) = io.write_all(resp.as_bytes()).await {
                warn!(client = %peer, error = %e, "metrics response failed");
            }
            let _ = io.shutdown().await;
        });
    }
}
