//! The log and status channel from the enclave to the parent.
//!
//! Every frame is `kind (1 byte) || seq (8 bytes, big-endian) || length (4 bytes, big-endian)
//! || payload`. A connection starts with a [`Kind::Hello`] from the sender naming its boot (a
//! random id per boot) and, optionally, the enclave; the sink answers with an [`Kind::Ack`]
//! carrying the last sequence number it has written for that boot, and acknowledges again
//! whenever it has written more. The sender numbers its records 1, 2, … and keeps every record
//! until it is acknowledged; after a lost connection it reconnects with backoff and sends
//! again what was not acknowledged. The sink writes a record only if its number is above the
//! last one written for that boot, and persists that number, so each record is written once
//! and in order across reconnects and sink restarts.
//!
//! The policy, for a chatty workload or an absent sink: nothing is dropped and the workload is
//! never killed. The sender holds at most [`SENDER_BUFFER`] records ([`SENDER_BYTES`] bytes);
//! when that is full, reading the workload's pipes pauses, the pipes fill, and the workload's
//! writes block until the sink acknowledges.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::transport::addr::{Addr, Listener};
use crate::transport::BoxIo;

/// Largest payload of one record; longer lines are split.
pub const MAX_RECORD: usize = 64 * 1024;
/// Records the sender holds (queued or sent and not yet acknowledged) before it applies
/// backpressure.
pub const SENDER_BUFFER: usize = 4096;
/// Bytes of payload the sender holds before it applies backpressure.
pub const SENDER_BYTES: usize = 8 * 1024 * 1024;
/// A sink that leaves sent records unacknowledged this long is taken as gone: reconnect.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A write the sink does not take within this fails the connection, so a sink that accepts
/// and stops reading cannot hold the sender (and with it PID 1's power-off) forever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnection backoff: from the first to the longest pause, doubling.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between reconnections.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// One connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Once a frame has started, the rest of it must arrive within this (a silent peer holding
/// half a frame loses its connection, and only its own).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The hello must arrive this soon after the connection.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Log connections served at once (several enclaves, each reconnecting).
pub const MAX_CONNECTIONS: usize = 64;
/// The sink acknowledges at least every this many records.
pub const ACK_BATCH: usize = 256;
/// Boots remembered in the sink's state file; the least recently active is forgotten first.
pub const MAX_BOOTS: usize = 1024;
/// Longest enclave name a hello may carry.
pub const MAX_NAME: usize = 64;
/// On SIGTERM, how long the sink lets its connections finish writing and acknowledging.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const HEADER: usize = 13;

/// Why the sink could not keep its records or its state.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum LogError {
    #[error("logs.file {path}: {source}")]
    File { path: String, source: io::Error },
    #[error("logs.state {path}: {source}")]
    State { path: String, source: io::Error },
    #[error("logs.state {path}: not a state file: {reason}")]
    StateFormat { path: String, reason: String },
}

/// What a frame carries (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A line of the workload's stdout.
    Stdout = 1,
    /// A line of the workload's stderr.
    Stderr = 2,
    /// JSON: `{"exit_code": N, "reason": "..."}`, the last record of a boot.
    Status = 3,
    /// cidboot's own messages.
    Init = 4,
    /// Sender to sink, first frame: JSON `{"boot": "<32 hex>", "name": "..."}`; seq 0.
    Hello = 5,
    /// Sink to sender: every record up to `seq` is written; empty payload.
    Ack = 6,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Stdout,
            2 => Kind::Stderr,
            3 => Kind::Status,
            4 => Kind::Init,
            5 => Kind::Hello,
            6 => Kind::Ack,
            _ => return None,
        })
    }
    /// The name a record line shows in brackets, such as `[status]`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Stdout => "stdout",
            Kind::Stderr => "stderr",
            Kind::Status => "status",
            Kind::Init => "init",
            Kind::Hello => "hello",
            Kind::Ack => "ack",
        }
    }
}

/// One frame, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Its place in the boot's records, from 1 (a hello is 0; an ack names the last written).
    pub seq: u64,
    /// At most [`MAX_RECORD`] bytes.
    pub payload: Vec<u8>,
}

fn encode(kind: Kind, seq: u64, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind as u8);
    out.extend_from_slice(&seq.to_be_bytes());
    // Callers split payloads at MAX_RECORD, far below 4 GiB.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
}

/// Writes one frame; `payload` must be at most [`MAX_RECORD`] bytes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: Kind,
    seq: u64,
    payload: &[u8],
) -> io::Result<()> {
    if payload.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("record of {} bytes (at most {MAX_RECORD})", payload.len()),
        ));
    }
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    encode(kind, seq, payload, &mut frame);
    w.write_all(&frame).await
}

/// Reads one frame; `None` at a clean end of stream (before a frame starts).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
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
    let seq = r.read_u64().await?;
    let len = r.read_u32().await? as usize;
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record of {len} bytes (at most {MAX_RECORD})"),
        ));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame { kind, seq, payload }))
}

/// Escapes a record's text for the one-line-per-record log: `\` becomes `\\`, newline, carriage
/// return and tab become `\n`, `\r`, `\t`, other control characters `\xHH` (or `\u{HHHH}`),
/// and bytes that are not UTF-8 `\xHH`. The result has no control character, so a record is
/// exactly one line and its text cannot start another.
pub fn escape(text: &[u8], out: &mut Vec<u8>) {
    use std::io::Write;
    for chunk in text.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.extend_from_slice(b"\\\\"),
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                c if (c as u32) < 0x80 && c.is_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                // C1 controls, and the Unicode line and paragraph separators.
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
                    let _ = write!(out, "\\u{{{:04x}}}", c as u32);
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    boot: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// Whether `name` may name an enclave in the log: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn new_boot_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // Only uniqueness matters here, not secrecy.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // The low 64 bits of the time: only uniqueness matters.
        b[..8].copy_from_slice(&u64::try_from(t % (1u128 << 64)).unwrap_or(0).to_be_bytes());
        b[8..].copy_from_slice(&fastrand::u64(..).to_be_bytes());
    }
    hex::encode(b)
}

// ---------------------------------------------------------------------------------------------
// The enclave side.

/// Bounds one write to the sink by [`WRITE_TIMEOUT`].
async fn written<T>(f: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(WRITE_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the sink took nothing for {}s", WRITE_TIMEOUT.as_secs()),
            ))
        })
}

/// The enclave side: a bounded queue drained to the sink by one task, which reconnects and
/// resends until every record is acknowledged.
#[derive(Clone)]
pub struct LogSender {
    tx: mpsc::Sender<(Kind, Vec<u8>)>,
}

struct Pending {
    seq: u64,
    kind: Kind,
    payload: Vec<u8>,
}

struct SenderState {
    addr: Addr,
    hello: Vec<u8>,
    unacked: VecDeque<Pending>,
    bytes: usize,
    next_seq: u64,
    closed: bool,
    rx: mpsc::Receiver<(Kind, Vec<u8>)>,
}

impl SenderState {
    fn room(&self) -> bool {
        self.unacked.len() < SENDER_BUFFER && self.bytes < SENDER_BYTES
    }

    fn push(&mut self, kind: Kind, payload: Vec<u8>) -> usize {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += payload.len();
        self.unacked.push_back(Pending { seq, kind, payload });
        self.unacked.len() - 1
    }

    /// Drops what the sink has written; true if that was anything.
    fn acked(&mut self, upto: u64) -> bool {
        let before = self.unacked.len();
        while self.unacked.front().is_some_and(|p| p.seq <= upto) {
            if let Some(p) = self.unacked.pop_front() {
                self.bytes -= p.payload.len();
            }
        }
        self.unacked.len() < before
    }

    fn done(&self) -> bool {
        self.closed && self.unacked.is_empty()
    }

    /// Waits `pause`, taking records into the buffer meanwhile.
    async fn pause(&mut self, pause: Duration) {
        let until = Instant::now() + pause;
        loop {
            let room = !self.closed && self.room();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                m = self.rx.recv(), if room => match m {
                    Some((k, p)) => { self.push(k, p); }
                    None => self.closed = true,
                },
            }
        }
    }

    /// One connection: hello, resend what is unacknowledged, then send new records and take
    /// acknowledgements until done or the connection fails.
    async fn session(&mut self, io: BoxIo) -> io::Result<()> {
        let (mut r, w) = tokio::io::split(io);
        let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, w);
        written(write_frame(&mut w, Kind::Hello, 0, &self.hello)).await?;
        for p in &self.unacked {
            written(write_frame(&mut w, p.kind, p.seq, &p.payload)).await?;
        }
        written(w.flush()).await?;
        let mut acks = [0u8; HEADER * 64];
        let mut filled = 0;
        let mut progress = Instant::now();
        loop {
            if self.done() {
                written(w.shutdown()).await?;
                return Ok(());
            }
            let room = !self.closed && self.room();
            let waiting = !self.unacked.is_empty();
            tokio::select! {
                biased;
                n = r.read(&mut acks[filled..]) => {
                    let n = n?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the sink closed the connection"));
                    }
                    filled += n;
                    let mut at = 0;
                    let mut moved = false;
                    while filled - at >= HEADER {
                        let f = &acks[at..at + HEADER];
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&f[1..9]);
                        if f[0] != Kind::Ack as u8 || f[9..13] != [0, 0, 0, 0] {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, "the sink sent something other than an acknowledgement"));
                        }
                        moved |= self.acked(u64::from_be_bytes(seq));
                        at += HEADER;
                    }
                    acks.copy_within(at..filled, 0);
                    filled -= at;
                    // Only an acknowledgement of something new counts: a sink that trickles
                    // bytes or repeats old acknowledgements is still taken as gone.
                    if moved {
                        progress = Instant::now();
                    }
                }
                m = self.rx.recv(), if room => match m {
                    Some((k, p)) => {
                        if self.unacked.is_empty() {
                            progress = Instant::now();
                        }
                        let i = self.push(k, p);
                        if let Some(p) = self.unacked.get(i) {
                            written(write_frame(&mut w, p.kind, p.seq, &p.payload)).await?;
                        }
                        if self.rx.is_empty() || !self.room() {
                            written(w.flush()).await?;
                        }
                    }
                    None => {
                        self.closed = true;
                        written(w.flush()).await?;
                    }
                },
                _ = tokio::time::sleep_until(progress + ACK_TIMEOUT), if waiting => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no acknowledgement within {}s", ACK_TIMEOUT.as_secs())));
                }
            }
        }
    }

    async fn run(mut self, first: BoxIo) -> io::Result<()> {
        let mut conn = Some(first);
        let mut backoff = BACKOFF_FIRST;
        loop {
            if let Some(io) = conn.take() {
                let started = Instant::now();
                match self.session(io).await {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        warn!(sink = %self.addr, error = %e, unacknowledged = self.unacked.len(), "log sink connection lost; reconnecting")
                    }
                }
                // A connection that lasted resets the backoff.
                if started.elapsed() > BACKOFF_MAX {
                    backoff = BACKOFF_FIRST;
                }
            }
            // Jitter keeps several enclaves from reconnecting in step.
            let jitter = Duration::from_millis(fastrand::u64(
                0..=u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX) / 2,
            ));
            self.pause(backoff + jitter).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            match tokio::time::timeout(CONNECT_TIMEOUT, self.addr.connect()).await {
                Ok(Ok(io)) => {
                    info!(sink = %self.addr, "log sink reconnected");
                    conn = Some(io);
                }
                Ok(Err(e)) => debug!(sink = %self.addr, error = %e, "log sink reconnect failed"),
                Err(_) => debug!(sink = %self.addr, "log sink reconnect timed out"),
            }
        }
    }
}

impl LogSender {
    /// Connects to `addr` (retrying for `patience`) and starts the writer task. The task
    /// reconnects for as long as it lives; it ends, returning `Ok`, when every sender is
    /// dropped and every record is acknowledged. `name` tags this enclave's records on a sink
    /// reached over unix or tcp (over vsock the sink uses the peer's CID).
    pub async fn connect(
        addr: &Addr,
        patience: Duration,
        name: Option<&str>,
    ) -> io::Result<(LogSender, tokio::task::JoinHandle<io::Result<()>>)> {
        if let Some(n) = name {
            if !valid_name(n) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("log name {n:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -"),
                ));
            }
        }
        let deadline = Instant::now() + patience;
        let io = loop {
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, addr.connect())
                .await
                .unwrap_or_else(|_| {
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {}s", CONNECT_TIMEOUT.as_secs()),
                    ))
                });
            match attempt {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let hello = serde_json::to_vec(&Hello {
            boot: new_boot_id(),
            name: name.map(str::to_string),
        })
        .map_err(io::Error::other)?;
        let (tx, rx) = mpsc::channel::<(Kind, Vec<u8>)>(64);
        let state = SenderState {
            addr: addr.clone(),
            hello,
            unacked: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            closed: false,
            rx,
        };
        let task = tokio::spawn(state.run(io));
        Ok((LogSender { tx }, task))
    }

    /// Sends the final record and waits until the sink has acknowledged it and everything
    /// before it, all within `patience`: a sink that stops reading, or never acknowledges,
    /// costs at most that long.
    pub async fn finish(
        self,
        task: tokio::task::JoinHandle<io::Result<()>>,
        kind: Kind,
        payload: Vec<u8>,
        patience: Duration,
    ) -> io::Result<()> {
        let all = async move {
            self.send(kind, payload).await?;
            drop(self);
            task.await.map_err(io::Error::other)?
        };
        tokio::time::timeout(patience, all)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the sink did not acknowledge everything within {}s",
                        patience.as_secs()
                    ),
                ))
            })
    }

    /// Queues a record (split into [`MAX_RECORD`] pieces), waiting while the buffer is full.
    pub async fn send(&self, kind: Kind, payload: Vec<u8>) -> io::Result<()> {
        let pieces: Vec<Vec<u8>> = if payload.len() <= MAX_RECORD {
            vec![payload]
        } else {
            payload.chunks(MAX_RECORD).map(<[u8]>::to_vec).collect()
        };
        for p in pieces {
            self.tx.send((kind, p)).await.map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "the log sender has stopped")
            })?;
        }
        Ok(())
    }

    /// Forwards every line of `r` (a workload pipe) as records of `kind`. The pipe is read to
    /// its end whatever happens to the sink, so the workload never gets a broken pipe from it.
    pub async fn pump<R: AsyncRead + Unpin>(&self, r: R, kind: Kind) -> io::Result<u64> {
        let mut r = BufReader::with_capacity(64 * 1024, r);
        let mut n = 0;
        let mut line = Vec::new();
        let mut sending = true;
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
            if sending {
                if let Err(e) = self.send(kind, std::mem::take(&mut line)).await {
                    warn!(error = %e, "the workload's {} is no longer forwarded", kind.label());
                    sending = false;
                }
            }
            n += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The parent side.

/// How the sink writes records.
#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// Also append every record here.
    pub file: Option<PathBuf>,
    /// Where the last sequence written per boot is kept (default: next to `file`).
    pub state: Option<PathBuf>,
    /// One JSON object per record instead of text lines.
    pub json: bool,
}

impl SinkConfig {
    /// The state file: `state`, or `.NAME.state` beside `file` (hidden, so a rotation glob
    /// such as `enclave.log*` leaves it alone); none without either.
    pub fn state_path(&self) -> Option<PathBuf> {
        if let Some(s) = &self.state {
            return Some(s.clone());
        }
        let f = self.file.as_ref()?;
        let name = f.file_name()?.to_string_lossy();
        Some(f.with_file_name(format!(".{name}.state")))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct BootState {
    last: u64,
    enclave: String,
    /// A counter, for forgetting the least recently active boot first.
    touched: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    boots: HashMap<String, BootState>,
    clock: u64,
}

struct State {
    path: Option<PathBuf>,
    file: StateFile,
}

impl State {
    fn load(path: Option<PathBuf>) -> Result<State, LogError> {
        let file = match &path {
            Some(p) => match std::fs::read(p) {
                Ok(b) => serde_json::from_slice(&b).map_err(|e| LogError::StateFormat {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Written now, so a directory that will not take it fails at start.
                    let s = StateFile::default();
                    write_state(p, &s)?;
                    s
                }
                Err(source) => {
                    return Err(LogError::State {
                        path: p.display().to_string(),
                        source,
                    })
                }
            },
            None => StateFile::default(),
        };
        Ok(State { path, file })
    }

    /// The last sequence written for `boot`, and whether the boot is new.
    fn begin(&mut self, boot: &str, enclave: &str) -> (u64, bool) {
        self.file.clock += 1;
        let clock = self.file.clock;
        if let Some(b) = self.file.boots.get_mut(boot) {
            b.touched = clock;
            return (b.last, false);
        }
        if self.file.boots.len() >= MAX_BOOTS {
            if let Some(old) = self
                .file
                .boots
                .iter()
                .min_by_key(|(_, b)| b.touched)
                .map(|(k, _)| k.clone())
            {
                self.file.boots.remove(&old);
            }
        }
        self.file.boots.insert(
            boot.to_string(),
            BootState {
                last: 0,
                enclave: enclave.to_string(),
                touched: clock,
            },
        );
        (0, true)
    }

    fn last(&self, boot: &str) -> u64 {
        self.file.boots.get(boot).map_or(0, |b| b.last)
    }

    fn set(&mut self, boot: &str, last: u64) -> Result<(), LogError> {
        self.file.clock += 1;
        let clock = self.file.clock;
        if let Some(b) = self.file.boots.get_mut(boot) {
            b.last = last;
            b.touched = clock;
        }
        match &self.path {
            Some(p) => write_state(p, &self.file),
            None => Ok(()),
        }
    }
}

fn write_state(path: &Path, s: &StateFile) -> Result<(), LogError> {
    let err = |source| LogError::State {
        path: path.display().to_string(),
        source,
    };
    let bytes = serde_json::to_vec(s).map_err(|e| err(io::Error::other(e)))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

struct Output {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
}

fn open_log(path: &Path) -> Result<std::fs::File, LogError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::File {
            path: path.display().to_string(),
            source,
        })
}

impl Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes)?;
        }
        let mut out = std::io::stdout().lock();
        let r = out.write_all(bytes).and_then(|()| out.flush());
        match r {
            // With a file, a closed stdout (no journal) is not a reason to stop.
            Err(e) if self.file.is_none() => Err(e),
            _ => Ok(()),
        }
    }
}

/// Counts of what the sink has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records written.
    pub records: std::sync::atomic::AtomicU64,
    /// Boots seen (one per hello with a new boot id).
    pub boots: std::sync::atomic::AtomicU64,
    /// Final statuses written, by the exit code they report (`null` for a boot that failed
    /// before its workload ran); at most 256 distinct codes are kept.
    pub statuses: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The parent's sink: every record becomes one line on stdout and, optionally, in a file.
pub struct Sink {
    cfg: SinkConfig,
    out: tokio::sync::Mutex<Output>,
    state: Mutex<State>,
    conns: Arc<Semaphore>,
    next_conn: std::sync::atomic::AtomicU64,
    /// What `/metrics` reports of this sink.
    pub counters: SinkCounters,
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

/// The enclave a connection speaks for: its vsock CID (which the enclave cannot choose), or
/// the name its hello carries, or its boot id's first 8 digits.
fn enclave_tag(peer: &str, name: Option<&str>, boot: &str) -> String {
    if let Some(cid) = peer
        .strip_prefix("vsock:")
        .and_then(|r| r.split(':').next())
    {
        return format!("cid:{cid}");
    }
    match name {
        Some(n) if valid_name(n) => n.to_string(),
        _ => format!("boot:{}", boot.get(..8).unwrap_or(boot)),
    }
}

impl Sink {
    /// Opens the log file and the state file: errors name the key and the path.
    pub fn open(cfg: SinkConfig) -> Result<Sink, LogError> {
        let file = cfg.file.as_deref().map(open_log).transpose()?;
        let state = State::load(cfg.state_path())?;
        Ok(Sink {
            out: tokio::sync::Mutex::new(Output {
                path: cfg.file.clone(),
                file,
            }),
            cfg,
            state: Mutex::new(state),
            conns: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            next_conn: Default::default(),
            counters: SinkCounters::default(),
        })
    }

    /// Reopens the log file (after a rotation).
    pub async fn reopen(&self) -> Result<(), LogError> {
        let mut out = self.out.lock().await;
        if let Some(p) = out.path.clone() {
            out.file = Some(open_log(&p)?);
            info!(file = %p.display(), "log file reopened");
        }
        Ok(())
    }

    fn line(
        &self,
        enclave: &str,
        boot: &str,
        seq: u64,
        label: &str,
        text: &[u8],
        out: &mut Vec<u8>,
    ) {
        let ts = timestamp();
        if self.cfg.json {
            let v = serde_json::json!({
                "ts": ts, "enclave": enclave, "boot": boot, "seq": seq, "kind": label,
                "text": String::from_utf8_lossy(text),
            });
            out.extend_from_slice(v.to_string().as_bytes());
        } else {
            out.extend_from_slice(format!("{ts} {enclave} {seq} [{label}] ").as_bytes());
            escape(text, out);
        }
        out.push(b'\n');
    }

    /// Serves until `shutdown` turns true, then lets every connection write and acknowledge
    /// what it has read (bounded by [`DRAIN_TIMEOUT`]).
    pub async fn serve(self: Arc<Self>, listener: Listener, mut shutdown: watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        loop {
            let (io, peer) = tokio::select! {
                c = listener.accept_retrying("log sink") => c,
                _ = shutdown.wait_for(|s| *s) => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let Ok(permit) = self.conns.clone().try_acquire_owned() else {
                warn!(client = %peer, "log sink: {MAX_CONNECTIONS} connections already; closing this one");
                continue;
            };
            let me = self.clone();
            let stop = shutdown.clone();
            let idx = self
                .next_conn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tasks.spawn(async move {
                me.connection(io, &peer, idx, stop).await;
                drop(permit);
            });
        }
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        let mut out = self.out.lock().await;
        if let Some(f) = out.file.as_mut() {
            let _ = f.sync_all();
        }
    }

    async fn connection(
        &self,
        io: BoxIo,
        peer: &str,
        idx: u64,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (r, mut w) = tokio::io::split(io);
        let mut r = BufReader::with_capacity(256 * 1024, r);
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut r)).await {
            Ok(Ok(Some(f))) if f.kind == Kind::Hello => serde_json::from_slice::<Hello>(&f.payload)
                .ok()
                .filter(|h| h.boot.len() == 32 && h.boot.bytes().all(|b| b.is_ascii_hexdigit())),
            Ok(Ok(Some(f))) => {
                warn!(client = %peer, "log sink: a {} record before the hello; closing this connection", f.kind.label());
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                warn!(client = %peer, error = %e, "log sink: bad input; closing this connection");
                return;
            }
            Err(_) => {
                warn!(client = %peer, "log sink: no hello within {}s; closing this connection", HELLO_TIMEOUT.as_secs());
                return;
            }
        };
        let Some(hello) = hello else {
            warn!(client = %peer, "log sink: a malformed hello; closing this connection");
            return;
        };
        let boot = hello.boot.to_ascii_lowercase();
        let enclave = enclave_tag(peer, hello.name.as_deref(), &boot);
        // Kept per enclave and boot: over vsock one enclave cannot touch another's numbers
        // by naming its boot id.
        let key = format!("{enclave}/{boot}");
        let (last, new) = match self.state.lock() {
            Ok(mut s) => {
                let (last, new) = s.begin(&key, &enclave);
                // A new boot is recorded at once, so a restart does not mark it again.
                if new {
                    if let Err(e) = s.set(&key, 0) {
                        warn!(error = %e, "log sink: the state file was not written");
                    }
                }
                (last, new)
            }
            Err(_) => return,
        };
        if new {
            self.counters
                .boots
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let marker = serde_json::json!({"boot": boot, "name": hello.name, "client": peer});
            let mut text = Vec::new();
            self.line(
                &enclave,
                &boot,
                0,
                "boot",
                marker.to_string().as_bytes(),
                &mut text,
            );
            if let Err(e) = self.out.lock().await.write(&text) {
                warn!(enclave = %enclave, error = %e, "log sink: writing failed; closing this connection");
                return;
            }
            info!(enclave = %enclave, boot = %boot, client = %peer, "a new boot connected to the log sink");
        } else {
            info!(enclave = %enclave, boot = %boot, client = %peer, last, "a boot reconnected to the log sink");
        }
        if ack(&mut w, last).await.is_err() {
            return;
        }
        let mut batch: Vec<Frame> = Vec::new();
        let mut records = 0u64;
        let why = loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break "the sink is stopping".to_string(),
                f = read_timed(&mut r) => f,
            };
            match next {
                Ok(Some(f)) if matches!(f.kind, Kind::Hello | Kind::Ack) => {
                    break format!("an unexpected {} frame", f.kind.label())
                }
                Ok(Some(f)) => batch.push(f),
                Ok(None) => break "the enclave closed the connection".into(),
                Err(e) => break e.to_string(),
            }
            if r.buffer().is_empty() || batch.len() >= ACK_BATCH {
                match self.flush(&key, &boot, &enclave, &mut batch, &mut w).await {
                    Ok(n) => records += n,
                    Err(e) => break e.to_string(),
                }
            }
        };
        if !batch.is_empty() {
            match self.flush(&key, &boot, &enclave, &mut batch, &mut w).await {
                Ok(n) => records += n,
                Err(e) => {
                    warn!(enclave = %enclave, error = %e, "log sink: the last records of this connection were not written")
                }
            }
        }
        let _ = w.shutdown().await;
        info!(enclave = %enclave, client = %peer, conn = idx, records, reason = %why, "log sink disconnected");
    }

    /// Writes the records of `batch` not yet written for this boot, persists the last
    /// sequence, and acknowledges it. Returns how many records were written.
    async fn flush<W: AsyncWrite + Unpin>(
        &self,
        key: &str,
        boot: &str,
        enclave: &str,
        batch: &mut Vec<Frame>,
        w: &mut W,
    ) -> io::Result<u64> {
        let mut out = self.out.lock().await;
        let mut last = self
            .state
            .lock()
            .map_err(|_| io::Error::other("state lock"))?
            .last(key);
        let mut text = Vec::new();
        let mut n = 0;
        let mut statuses = Vec::new();
        for f in batch.drain(..) {
            if f.seq <= last {
                continue;
            }
            if f.seq != last + 1 {
                warn!(
                    enclave,
                    boot,
                    from = last + 1,
                    to = f.seq - 1,
                    "log sink: records missing (the sink's state was lost?)"
                );
            }
            last = f.seq;
            n += 1;
            self.line(enclave, boot, f.seq, f.kind.label(), &f.payload, &mut text);
            if f.kind == Kind::Status {
                let status = String::from_utf8_lossy(&f.payload).into_owned();
                info!(enclave, boot, status = %status, "enclave reported its status");
                let code = serde_json::from_str::<serde_json::Value>(&status)
                    .ok()
                    .and_then(|v| v.get("exit_code").map(|c| c.to_string()))
                    .unwrap_or_else(|| "unknown".into());
                if let Ok(mut s) = self.counters.statuses.lock() {
                    if s.len() < 256 || s.contains_key(&code) {
                        *s.entry(code).or_default() += 1;
                    }
                }
                statuses.push(f.payload.clone());
            }
        }
        if n > 0 {
            out.write(&text)?;
            self.state
                .lock()
                .map_err(|_| io::Error::other("state lock"))?
                .set(key, last)
                .map_err(io::Error::other)?;
            // Written: now the enclave's supervisor may learn how the boot ended. It matches
            // vsock peers by CID, the one tag an enclave cannot choose.
            let peer = match enclave.strip_prefix("cid:") {
                Some(cid) => format!("vsock:{cid}:0"),
                None => enclave.to_string(),
            };
            for payload in &statuses {
                crate::host::status::publish(&peer, payload);
            }
            self.counters
                .records
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
        drop(out);
        ack(w, last).await?;
        Ok(n)
    }
}

async fn ack<W: AsyncWrite + Unpin>(w: &mut W, seq: u64) -> io::Result<()> {
    write_frame(w, Kind::Ack, seq, &[]).await?;
    w.flush().await
}

/// Waits for a frame to start (as long as it takes: a quiet workload is fine), then gives
/// the rest of it [`FRAME_TIMEOUT`].
async fn read_timed<R: AsyncBufReadExt + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    if r.fill_buf().await?.is_empty() {
        return Ok(None);
    }
    tokio::time::timeout(FRAME_TIMEOUT, read_frame(r))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "half a record, then nothing for {}s",
                    FRAME_TIMEOUT.as_secs()
                ),
            )
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that accepts and never reads: the final record still returns within the
    /// patience, so PID 1 goes on to power off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_that_never_reads_costs_the_final_record_only_its_patience() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let (sender, task) = LogSender::connect(&Addr::Unix(path), Duration::from_secs(5), None)
            .await
            .unwrap();
        // More than the socket, the sender's buffer and its queue together can hold.
        let filler = sender.clone();
        tokio::spawn(async move {
            for _ in 0..1024 {
                if filler
                    .send(Kind::Stdout, vec![b'x'; MAX_RECORD])
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let done = tokio::time::timeout(
            Duration::from_secs(20),
            sender.finish(task, Kind::Status, b"{}".to_vec(), Duration::from_secs(2)),
        )
        .await
        .expect("finish must not wait past its patience");
        let e = done.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        held.abort();
    }

    #[test]
    fn escaping_leaves_one_line_with_no_control_character() {
        let mut out = Vec::new();
        escape(
            b"a\n[status] {\"x\":1}\r\t\\\x1b[31m\xff\xc3\xa9\xc2\x85",
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "a\\n[status] {\"x\":1}\\r\\t\\\\\\x1b[31m\\xffé\\u{0085}"
        );
        assert!(!s.chars().any(char::is_control));
    }

    #[test]
    fn tags_prefer_the_vsock_cid_then_a_valid_name() {
        let boot = "0123456789abcdef0123456789abcdef";
        assert_eq!(enclave_tag("vsock:16:1023", Some("x"), boot), "cid:16");
        assert_eq!(enclave_tag("unix:/s", Some("web-1"), boot), "web-1");
        assert_eq!(enclave_tag("unix:/s", Some("a b"), boot), "boot:01234567");
        assert_eq!(enclave_tag("tcp:1.2.3.4:5", None, boot), "boot:01234567");
    }

    #[test]
    fn the_state_path_is_hidden_beside_the_log() {
        let c = SinkConfig {
            file: Some("/var/log/cidboot/enclave.log".into()),
            ..Default::default()
        };
        assert_eq!(
            c.state_path().unwrap(),
            Path::new("/var/log/cidboot/.enclave.log.state")
        );
    }
}
