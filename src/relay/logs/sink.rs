//! The parent side: every record becomes one line on stdout and, optionally, in a file.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tracing::{info, warn};

use super::state::{Claim, Live, State};
use super::{
    boot_key, escape, json_line, printable, published_id, read_frame, secret_hash, write_frame,
    Frame, Hello, Kind, LogError, ACK_BATCH, ACK_BATCH_BYTES, DEFAULT_IDLE_TIMEOUT, DRAIN_TIMEOUT,
    FRAME_TIMEOUT, HELLO_TIMEOUT, MAX_CONNECTIONS, SENDER_BUFFER, TAKEOVER_TIMEOUT,
};
use crate::transport::addr::Listener;
use crate::transport::BoxIo;

/// How the sink writes records.
#[derive(Debug, Clone, Default)]
pub struct SinkConfig {
    /// Also append every record here.
    pub file: Option<PathBuf>,
    /// Where the last sequence written per boot is kept (default: next to `file`).
    pub state: Option<PathBuf>,
    /// One JSON object per record instead of text lines.
    pub json: bool,
    /// After its hello, a connection that sends nothing for this long is closed (default
    /// [`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Option<Duration>,
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

    fn idle(&self) -> Duration {
        self.idle_timeout.unwrap_or(DEFAULT_IDLE_TIMEOUT)
    }
}

struct Output {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
}

/// A new log file is readable by the daemon's group at most: the workload's output is its own,
/// not every local user's. An existing file keeps the mode its operator gave it.
fn open_log(path: &Path) -> Result<std::fs::File, LogError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
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
    pub records: AtomicU64,
    /// Boots seen (one per hello with a new boot id).
    pub boots: AtomicU64,
    /// Final statuses written, by the exit code they report (`null` for a boot that failed
    /// before its workload ran, `other` for a status without a numeric one); at most 256
    /// distinct codes are kept.
    pub statuses: Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The parent's sink: every record becomes one line on stdout and, optionally, in a file.
pub struct Sink {
    cfg: SinkConfig,
    out: tokio::sync::Mutex<Output>,
    state: Mutex<State>,
    conns: Arc<Semaphore>,
    next_conn: AtomicU64,
    /// What `/metrics` reports of this sink.
    pub counters: SinkCounters,
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "-".into())
}

/// The enclave a connection speaks for: its vsock CID (which the enclave cannot choose), or
/// the name its hello carries (already checked), or its published boot id.
fn enclave_tag(peer: &str, name: Option<&str>, published: &str) -> String {
    if let Some(cid) = peer
        .strip_prefix("vsock:")
        .and_then(|r| r.split(':').next())
    {
        return format!("cid:{cid}");
    }
    match name {
        Some(n) => n.to_string(),
        None => format!("boot:{published}"),
    }
}

/// The exit code a status reports, as `/metrics` labels it: a number, `null`, or `other`.
fn exit_code_label(payload: &[u8]) -> String {
    let code = serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("exit_code").cloned());
    match code {
        Some(serde_json::Value::Null) => "null".into(),
        Some(serde_json::Value::Number(n)) if n.as_i64().is_some() => n.to_string(),
        _ => "other".into(),
    }
}

/// A claimed boot: how, the turn to wait for, and what says when a newer connection
/// replaces this one.
type Claimed = (Claim, Arc<tokio::sync::Mutex<()>>, watch::Receiver<bool>);

/// One connection's boot, once its hello is accepted.
struct Boot {
    key: String,
    published: String,
    enclave: String,
}

impl Sink {
    /// Opens the log file and the state file: errors name the key and the path.
    pub fn open(cfg: SinkConfig) -> Result<Sink, LogError> {
        let file = cfg.file.as_deref().map(open_log).transpose()?;
        let state = State::load(cfg.state_path())?;
        if state.dropped > 0 {
            warn!(
                entries = state.dropped,
                "log sink: the state file held boots of an older release, which no sender can resume; they were dropped"
            );
        }
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

    fn line(&self, b: &Boot, seq: u64, label: &str, text: &[u8], out: &mut Vec<u8>) {
        let ts = timestamp();
        if self.cfg.json {
            let v = serde_json::json!({
                "ts": ts, "enclave": b.enclave, "boot": b.published, "seq": seq, "kind": label,
                "text": String::from_utf8_lossy(text),
            });
            out.extend_from_slice(json_line(&v).as_bytes());
        } else {
            out.extend_from_slice(format!("{ts} {} {seq} [{label}] ", b.enclave).as_bytes());
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
            let idx = self.next_conn.fetch_add(1, Ordering::Relaxed);
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

    /// Reads and checks the hello; every refusal is logged without quoting the peer raw.
    async fn hello<R: tokio::io::AsyncRead + Unpin>(&self, r: &mut R, peer: &str) -> Option<Hello> {
        let f = match tokio::time::timeout(HELLO_TIMEOUT, read_frame(r)).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return None,
            Ok(Err(e)) => {
                warn!(client = %peer, error = %e, "log sink: bad input; closing this connection");
                return None;
            }
            Err(_) => {
                warn!(client = %peer, "log sink: no hello within {}s; closing this connection", HELLO_TIMEOUT.as_secs());
                return None;
            }
        };
        if f.kind != Kind::Hello {
            warn!(client = %peer, "log sink: a {} record before the hello; closing this connection", f.kind.label());
            return None;
        }
        let hello = match serde_json::from_slice::<Hello>(&f.payload) {
            Ok(h) => h,
            Err(e) => {
                let e = printable(e.to_string().as_bytes());
                warn!(client = %peer, "log sink: a malformed hello ({e}); closing this connection");
                return None;
            }
        };
        if let Err(why) = hello.check() {
            warn!(client = %peer, "log sink: a hello refused: {why}; closing this connection");
            return None;
        }
        Some(hello)
    }

    async fn connection(&self, io: BoxIo, peer: &str, idx: u64, shutdown: watch::Receiver<bool>) {
        let (r, mut w) = tokio::io::split(io);
        let mut r = BufReader::with_capacity(256 * 1024, r);
        let Some(hello) = self.hello(&mut r, peer).await else {
            return;
        };
        let key = boot_key(&hello.boot);
        let published = published_id(&key).to_string();
        let enclave = enclave_tag(peer, hello.name.as_deref(), &published);
        let boot = Boot {
            key,
            published,
            enclave,
        };
        let (claim, turn, replaced) = match self.claim(&boot, &hello, idx) {
            Ok(c) => c,
            Err(why) => {
                warn!(enclave = %boot.enclave, boot = %boot.published, client = %peer, "log sink: {why}; closing this connection");
                return;
            }
        };
        let Ok(turn) = tokio::time::timeout(TAKEOVER_TIMEOUT, turn.lock_owned()).await else {
            warn!(enclave = %boot.enclave, boot = %boot.published, client = %peer, "log sink: the boot's previous connection did not let go within {}s; closing this one", TAKEOVER_TIMEOUT.as_secs());
            self.release(&boot.key, idx);
            return;
        };
        let (records, why) = self
            .serve_boot(
                &mut r, &mut w, &boot, claim, &hello, peer, replaced, shutdown,
            )
            .await;
        let _ = w.shutdown().await;
        self.release(&boot.key, idx);
        drop(turn);
        info!(enclave = %boot.enclave, boot = %boot.published, client = %peer, conn = idx, records, reason = %why, "log sink disconnected");
    }

    /// Claims the hello's boot for connection `idx` and makes it the boot's live connection,
    /// asking the one before (if any) to let go. Returns the claim, the turn to wait for, and
    /// what tells this connection when a newer one replaces it.
    fn claim(&self, boot: &Boot, hello: &Hello, idx: u64) -> Result<Claimed, String> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| "the state lock".to_string())?;
        let claim = match s.claim(
            &boot.key,
            &boot.enclave,
            &secret_hash(&hello.secret),
            Instant::now(),
        ) {
            Ok(Claim::Refused(why)) => return Err(format!("a hello refused: {why}")),
            Err(e) => return Err(format!("the state file was not written: {e}")),
            Ok(c) => c,
        };
        let (stop, replaced) = watch::channel(false);
        let turn = match s.live.get(&boot.key) {
            Some(old) => {
                let _ = old.stop.send(true);
                old.turn.clone()
            }
            None => Arc::default(),
        };
        s.live.insert(
            boot.key.clone(),
            Live {
                conn: idx,
                stop,
                turn: turn.clone(),
            },
        );
        Ok((claim, turn, replaced))
    }

    /// Lets go of a boot's live slot, if this connection still holds it.
    fn release(&self, key: &str, idx: u64) {
        if let Ok(mut s) = self.state.lock() {
            if s.live.get(key).is_some_and(|l| l.conn == idx) {
                s.live.remove(key);
            }
            s.touch(key);
        }
    }

    /// The connection's boot, once it holds it: answers the hello, then writes and
    /// acknowledges records until the connection ends. Returns the records written and why
    /// it ended.
    #[allow(clippy::too_many_arguments)]
    async fn serve_boot<R: tokio::io::AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        r: &mut BufReader<R>,
        w: &mut W,
        boot: &Boot,
        claim: Claim,
        hello: &Hello,
        peer: &str,
        mut replaced: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) -> (u64, String) {
        let last = {
            let Ok(mut s) = self.state.lock() else {
                return (0, "state lock".into());
            };
            let mut last = s.last(&boot.key);
            if hello.acked > last {
                warn!(enclave = %boot.enclave, boot = %boot.published, acked = hello.acked, last, "log sink: the sender saw records acknowledged that this sink has no trace of (its state was lost or replaced); going on from there");
                if let Err(e) = s.set(&boot.key, hello.acked, false) {
                    return (0, e.to_string());
                }
                last = hello.acked;
            }
            last
        };
        if claim == Claim::New {
            self.counters.boots.fetch_add(1, Ordering::Relaxed);
            let marker =
                serde_json::json!({"boot": boot.published, "name": hello.name, "client": peer});
            let mut text = Vec::new();
            self.line(boot, 0, "boot", marker.to_string().as_bytes(), &mut text);
            if let Err(e) = self.out.lock().await.write(&text) {
                return (0, format!("writing failed: {e}"));
            }
            let boots = self.state.lock().map(|s| s.len()).unwrap_or(0);
            info!(enclave = %boot.enclave, boot = %boot.published, client = %peer, boots, "a new boot connected to the log sink");
        } else {
            info!(enclave = %boot.enclave, boot = %boot.published, client = %peer, last, "a boot reconnected to the log sink");
        }
        if let Err(e) = ack(w, last).await {
            return (0, e.to_string());
        }
        let idle = self.cfg.idle();
        let mut batch: Vec<Frame> = Vec::new();
        // The payload bytes in `batch`: a batch is written once it reaches ACK_BATCH_BYTES, so
        // a peer that keeps the read buffer full cannot make the sink hold more.
        let mut batch_bytes = 0usize;
        let mut records = 0u64;
        let why = loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => break "the sink is stopping".to_string(),
                _ = replaced.wait_for(|s| *s) => break "a new connection of the same boot replaced it".to_string(),
                f = read_timed(r, idle) => f,
            };
            match next {
                Ok(Some(f)) if f.kind == Kind::Keepalive => {
                    if f.seq != 0 || !f.payload.is_empty() {
                        break "a malformed keepalive".into();
                    }
                }
                Ok(Some(f)) if matches!(f.kind, Kind::Hello | Kind::Ack) => {
                    break format!("an unexpected {} frame", f.kind.label())
                }
                Ok(Some(f)) => {
                    batch_bytes += f.payload.len();
                    batch.push(f);
                }
                Ok(None) => break "the enclave closed the connection".into(),
                Err(e) => break e.to_string(),
            }
            if !batch.is_empty()
                && (r.buffer().is_empty()
                    || batch.len() >= ACK_BATCH
                    || batch_bytes >= ACK_BATCH_BYTES)
            {
                batch_bytes = 0;
                match self.flush(boot, peer, &mut batch, w).await {
                    Ok(n) => records += n,
                    Err(e) => break e.to_string(),
                }
            }
        };
        if !batch.is_empty() {
            match self.flush(boot, peer, &mut batch, w).await {
                Ok(n) => records += n,
                Err(e) => {
                    warn!(enclave = %boot.enclave, boot = %boot.published, error = %e, "log sink: the last records of this connection were not written")
                }
            }
        }
        (records, why)
    }

    /// Writes the records of `batch` not yet written for this boot, persists the last
    /// sequence, and acknowledges it. Returns how many records were written. A record
    /// numbered beyond what the sender can hold fails the whole batch before anything of it
    /// is written.
    async fn flush<W: AsyncWrite + Unpin>(
        &self,
        boot: &Boot,
        peer: &str,
        batch: &mut Vec<Frame>,
        w: &mut W,
    ) -> io::Result<u64> {
        let mut out = self.out.lock().await;
        let mut last = self
            .state
            .lock()
            .map_err(|_| io::Error::other("state lock"))?
            .last(&boot.key);
        let limit = last.saturating_add(SENDER_BUFFER as u64);
        if let Some(f) = batch.iter().find(|f| f.seq > limit || f.seq == 0) {
            let seq = f.seq;
            batch.clear();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {seq} is not between 1 and {SENDER_BUFFER} past the last one written ({last}), which no sender can hold; nothing of its batch was written"),
            ));
        }
        let mut text = Vec::new();
        let mut n = 0;
        let mut statuses = Vec::new();
        for f in batch.drain(..) {
            if f.seq <= last {
                continue;
            }
            if f.seq != last + 1 {
                warn!(
                    enclave = %boot.enclave,
                    boot = %boot.published,
                    from = last + 1,
                    to = f.seq - 1,
                    "log sink: records missing (the sink's state was lost?)"
                );
            }
            last = f.seq;
            n += 1;
            self.line(boot, f.seq, f.kind.label(), &f.payload, &mut text);
            if f.kind == Kind::Status {
                info!(enclave = %boot.enclave, boot = %boot.published, client = %peer, status = %printable(&f.payload), "enclave reported its status");
                if let Ok(mut s) = self.counters.statuses.lock() {
                    let code = exit_code_label(&f.payload);
                    if s.len() < 256 || s.contains_key(&code) {
                        *s.entry(code).or_default() += 1;
                    }
                }
                statuses.push(f.payload);
            }
        }
        if n > 0 {
            out.write(&text)?;
            self.state
                .lock()
                .map_err(|_| io::Error::other("state lock"))?
                .set(&boot.key, last, !statuses.is_empty())
                .map_err(io::Error::other)?;
            // Written: now the enclave's supervisor may learn how the boot ended, and decide
            // by the peer (its CID, or its process) whether it was its enclave that said so.
            for payload in &statuses {
                crate::host::status::publish(peer, payload);
            }
            self.counters.records.fetch_add(n, Ordering::Relaxed);
        }
        drop(out);
        ack(w, last).await?;
        Ok(n)
    }
}

/// Acknowledges everything up to `seq`. A peer that takes no acknowledgement for
/// [`FRAME_TIMEOUT`] loses its connection, so it cannot keep its boot's turn by not reading.
async fn ack<W: AsyncWrite + Unpin>(w: &mut W, seq: u64) -> io::Result<()> {
    let sent = async {
        write_frame(w, Kind::Ack, seq, &[]).await?;
        w.flush().await
    };
    tokio::time::timeout(FRAME_TIMEOUT, sent)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the peer took no acknowledgement for {}s",
                    FRAME_TIMEOUT.as_secs()
                ),
            ))
        })
}

/// Waits up to `idle` for a frame to start (a quiet sender sends keepalives), then gives the
/// rest of it [`FRAME_TIMEOUT`].
async fn read_timed<R: AsyncBufReadExt + Unpin>(
    r: &mut R,
    idle: Duration,
) -> io::Result<Option<Frame>> {
    match tokio::time::timeout(idle, r.fill_buf()).await {
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "nothing for {}s after the hello, not even a keepalive",
                    idle.as_secs()
                ),
            ))
        }
        Ok(buf) => {
            if buf?.is_empty() {
                return Ok(None);
            }
        }
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

    #[test]
    fn tags_prefer_the_vsock_cid_then_the_name() {
        assert_eq!(enclave_tag("vsock:16:1023", Some("x"), "0123"), "cid:16");
        assert_eq!(enclave_tag("unix:/s", Some("web-1"), "0123"), "web-1");
        assert_eq!(enclave_tag("tcp:1.2.3.4:5", None, "0123"), "boot:0123");
    }

    #[test]
    fn exit_codes_are_labelled_only_by_numbers() {
        assert_eq!(exit_code_label(br#"{"exit_code":3}"#), "3");
        assert_eq!(exit_code_label(br#"{"exit_code":null}"#), "null");
        assert_eq!(exit_code_label(br#"{"exit_code":"a\"}\n"}"#), "other");
        assert_eq!(exit_code_label(b"junk"), "other");
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
