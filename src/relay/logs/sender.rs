//! The enclave side: a bounded queue drained to the sink by one task, which reconnects and
//! resends until every record is acknowledged.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    valid_name, write_frame, Identity, Kind, ACK_TIMEOUT, BACKOFF_FIRST, BACKOFF_MAX,
    CONNECT_TIMEOUT, HEADER, KEEPALIVE, MAX_NAME, MAX_RECORD, SENDER_BUFFER, SENDER_BYTES,
    WRITE_TIMEOUT,
};
use crate::transport::addr::Addr;
use crate::transport::BoxIo;

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
    identity: Identity,
    name: Option<String>,
    unacked: VecDeque<Pending>,
    bytes: usize,
    next_seq: u64,
    /// The highest sequence number the sink has acknowledged; the hello tells it, so that a
    /// sink that lost its state goes on from there.
    acked: u64,
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
        self.acked = self.acked.max(upto);
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
    /// acknowledgements until done or the connection fails; a keepalive whenever nothing was
    /// sent for [`KEEPALIVE`].
    async fn session(&mut self, io: BoxIo) -> io::Result<()> {
        let (mut r, w) = tokio::io::split(io);
        let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, w);
        let hello = self.identity.hello(self.name.as_deref(), self.acked);
        written(write_frame(&mut w, Kind::Hello, 0, &hello)).await?;
        for p in &self.unacked {
            written(write_frame(&mut w, p.kind, p.seq, &p.payload)).await?;
        }
        written(w.flush()).await?;
        let mut sent = Instant::now();
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
                            sent = Instant::now();
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
                _ = tokio::time::sleep_until(sent + KEEPALIVE) => {
                    written(write_frame(&mut w, Kind::Keepalive, 0, &[])).await?;
                    written(w.flush()).await?;
                    sent = Instant::now();
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
    /// Connects to `addr` (retrying for `patience`) as a new boot and starts the writer task.
    /// The task reconnects for as long as it lives; it ends, returning `Ok`, when every sender
    /// is dropped and every record is acknowledged. `name` tags this enclave's records on a
    /// sink reached over unix or tcp (over vsock the sink uses the peer's CID).
    pub async fn connect(
        addr: &Addr,
        patience: Duration,
        name: Option<&str>,
    ) -> io::Result<(LogSender, tokio::task::JoinHandle<io::Result<()>>)> {
        LogSender::connect_as(addr, patience, name, Identity::generate()?).await
    }

    /// [`LogSender::connect`] for a boot whose identity the caller made.
    pub async fn connect_as(
        addr: &Addr,
        patience: Duration,
        name: Option<&str>,
        identity: Identity,
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
        let (tx, rx) = mpsc::channel::<(Kind, Vec<u8>)>(64);
        let state = SenderState {
            addr: addr.clone(),
            identity,
            name: name.map(str::to_string),
            unacked: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
            acked: 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::logs::{read_frame, Frame};

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

    /// A quiet sender sends a keepalive every few seconds, and its hello says what it saw
    /// acknowledged.
    #[tokio::test]
    async fn a_quiet_sender_keeps_its_connection_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let id = Identity::generate().unwrap();
        let (sender, _task) =
            LogSender::connect_as(&Addr::Unix(path), Duration::from_secs(5), None, id.clone())
                .await
                .unwrap();
        let (mut c, _) = listener.accept().await.unwrap();
        let hello = read_frame(&mut c).await.unwrap().unwrap();
        assert_eq!(hello.kind, Kind::Hello);
        assert_eq!(hello.payload, id.hello(None, 0));
        let started = Instant::now();
        let f = tokio::time::timeout(KEEPALIVE * 2, read_frame(&mut c))
            .await
            .expect("no keepalive")
            .unwrap()
            .unwrap();
        assert_eq!(
            f,
            Frame {
                kind: Kind::Keepalive,
                seq: 0,
                payload: vec![]
            }
        );
        assert!(started.elapsed() >= KEEPALIVE - Duration::from_millis(100));
        drop(sender);
    }
}
