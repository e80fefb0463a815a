//! The log and status channel from the enclave to the parent.
//!
//! Frames are `kind (1 byte) || length (4 bytes, big-endian) || payload`. The policy, for a
//! chatty workload or a slow sink: nothing is dropped. The sender holds at most
//! [`SENDER_BUFFER`] records; when that is full, reading the workload's pipes pauses, the pipes
//! fill, and the workload's writes block until the sink catches up.

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::transport::addr::{Addr, Listener};

/// Largest payload of one record; longer lines are split.
pub const MAX_RECORD: usize = 64 * 1024;
/// Records the sender buffers before it applies backpressure.
pub const SENDER_BUFFER: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stdout = 1,
    Stderr = 2,
    /// JSON: `{"exit_code": N, "reason": "..."}`, the last record of a boot.
    Status = 3,
    /// cidboot's own messages.
    Init = 4,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Status,
            4 => Kind::Init,
            _ => return None,
        })
    }
    pub fn label(self) -> &'static str {
        match self {
            Kind::Stdout => "stdout",
            Kind::Stderr => "stderr",
            Kind::Status => "status",
            Kind::Init => "init",
        }
    }
}

pub async fn write_record<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    payload: &[u8],
) -> io::Result<()> {
    for chunk in payload
        .chunks(MAX_RECORD)
        .chain(payload.is_empty().then_some(&[][..]))
    {
        let mut frame = Vec::with_capacity(5 + chunk.len());
        frame.push(kind as u8);
        frame.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        frame.extend_from_slice(chunk);
        w.write_all(&frame).await?;
    }
    Ok(())
}

/// Reads one record; `None` at a clean end of stream.
pub async fn read_record<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let kind = match r.read_u8().await {
        Ok(k) => k,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    let kind = Kind::from_u8(kind).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown record kind {kind}"),
        )
    })?;
    let len = r.read_u32().await? as usize;
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record of {len} bytes (at most {MAX_RECORD})"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// The parent's sink: every record becomes one line on stdout and, optionally, in a file.
pub async fn sink(listener: Listener, file: Option<&Path>) -> io::Result<()> {
    let mut out = match file {
        Some(p) => Some(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .await?,
        ),
        None => None,
    };
    let mut stdout = tokio::io::stdout();
    // One enclave at a time: records of a connection are written in order, and the sink reads
    // the next record only once the previous one is written (backpressure to the sender).
    loop {
        let (mut io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "log sink accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        info!(client = %peer, "log sink connected");
        let mut records = 0u64;
        loop {
            match read_record(&mut io).await {
                Ok(Some((kind, payload))) => {
                    records += 1;
                    let mut line = format!("[{}] ", kind.label()).into_bytes();
                    line.extend_from_slice(&payload);
                    line.push(b'\n');
                    if let Some(f) = out.as_mut() {
                        f.write_all(&line).await?;
                    }
                    stdout.write_all(&line).await?;
                    if kind == Kind::Status {
                        crate::host::status::publish(&peer, &payload);
                        info!(client = %peer, status = %String::from_utf8_lossy(&payload), "enclave reported its status");
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(client = %peer, error = %e, "log sink: bad input; closing this connection");
                    break;
                }
            }
        }
        if let Some(f) = out.as_mut() {
            f.flush().await?;
        }
        stdout.flush().await?;
        info!(client = %peer, records, "log sink disconnected");
    }
}

/// The enclave side: a bounded queue drained to the sink by one task.
#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::Sender<(Kind, Vec<u8>)>,
}

impl LogSender {
    /// Connects to `addr` (retrying for `patience`) and starts the writer task; the returned
    /// handle ends when every sender is dropped and the queue is drained.
    pub async fn connect(
        addr: &Addr,
        patience: Duration,
    ) -> io::Result<(LogSender, tokio::task::JoinHandle<io::Result<()>>)> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut io = loop {
            match addr.connect().await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (tx, mut rx) = mpsc::channel::<(Kind, Vec<u8>)>(SENDER_BUFFER);
        let task = tokio::spawn(async move {
            while let Some((kind, payload)) = rx.recv().await {
                write_record(&mut io, kind, &payload).await?;
            }
            io.flush().await?;
            io.shutdown().await
        });
        Ok((LogSender { tx }, task))
    }

    /// Queues a record, waiting while the queue is full.
    pub async fn send(&self, kind: Kind, payload: Vec<u8>) -> io::Result<()> {
        self.tx
            .send((kind, payload))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the log sink connection ended"))
    }

    /// Forwards every line of `r` (a workload pipe) as records of `kind`.
    pub async fn pump<R: AsyncRead + Unpin>(&self, r: R, kind: Kind) -> io::Result<u64> {
        let mut r = BufReader::with_capacity(64 * 1024, r);
        let mut n = 0;
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = (&mut r)
                .take(MAX_RECORD as u64)
                .read_until(b'\n', &mut line)
                .await?;
            if read == 0 {
                return Ok(n);
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            self.send(kind, line.clone()).await?;
            n += 1;
        }
    }
}
