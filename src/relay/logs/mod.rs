//! The log and status channel from the enclave to the parent.
//!
//! Every frame is `kind (1 byte) || seq (8 bytes, big-endian) || length (4 bytes, big-endian)
//! || payload`. A connection starts with a [`Kind::Hello`] from the sender: its boot id and the
//! boot's secret (both random per boot, made by [`Identity::generate`]), optionally the
//! enclave's name, and the last sequence number it saw acknowledged. The sink answers with an
//! [`Kind::Ack`] carrying the last sequence number it has written for that boot, and
//! acknowledges again whenever it has written more. The sender numbers its records 1, 2, … and
//! keeps every record until it is acknowledged; after a lost connection it reconnects with
//! backoff and sends again what was not acknowledged. The sink writes a record only if its
//! number is above the last one written for that boot, and persists that number, so each record
//! is written once and in order across reconnects and sink restarts. A quiet sender sends a
//! [`Kind::Keepalive`] every [`KEEPALIVE`], so the sink can drop a peer that sends nothing.
//!
//! Only the sender can write to its boot: the sink keeps a hash of the boot id and of the secret
//! from the boot's first hello, and refuses a later hello for that boot whose secret does not
//! hash the same. It shows only the first digits of the boot id's hash (in the log and its own
//! log; the state file keeps the hash), never the id, and the secret never leaves the sender. A
//! boot has one live connection: a new one that proves the secret replaces the old (the sender
//! lost its connection and the sink has not noticed yet). A record numbered more than
//! [`SENDER_BUFFER`] past the last one written cannot come from a sender, which holds no more:
//! it ends the connection and nothing of its batch is written.
//!
//! The policy, for a chatty workload or an absent sink: nothing is dropped and the workload is
//! never killed. The sender holds at most [`SENDER_BUFFER`] records ([`SENDER_BYTES`] bytes);
//! when that is full, reading the workload's pipes pauses, the pipes fill, and the workload's
//! writes block until the sink acknowledges.

mod sender;
mod sink;
mod state;

pub use sender::LogSender;
pub use sink::{Sink, SinkConfig, SinkCounters};

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload of one record; longer lines are split.
pub const MAX_RECORD: usize = 64 * 1024;
/// Records the sender holds (queued or sent and not yet acknowledged) before it applies
/// backpressure; a record numbered further than this past the last one written is refused.
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
/// A sender that has sent nothing for this long sends a keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// Once a frame has started, the rest of it must arrive within this (a silent peer holding
/// half a frame loses its connection, and only its own).
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The hello must arrive this soon after the connection.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// After its hello, a connection that sends nothing (not even a keepalive) for this long is
/// closed (`[logs] idle_timeout_secs`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The shortest idle timeout: three keepalives.
pub const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest idle timeout.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Log connections served at once (several enclaves, each reconnecting).
pub const MAX_CONNECTIONS: usize = 64;
/// The sink acknowledges at least every this many records.
pub const ACK_BATCH: usize = 256;
/// ... and at least every this many bytes of records: what one connection holds read and not
/// yet written, whatever its peer sends and however fast (256 records of 64 KiB would be 16
/// MiB, and four to six times that once escaped).
pub const ACK_BATCH_BYTES: usize = 1024 * 1024;
/// Boots remembered in the sink's state file. A boot is forgotten only when it is not
/// connected and either finished [`FORGET_FINISHED`] ago or idle for [`FORGET_IDLE`]; when every
/// remembered boot may still be live, a new boot is refused rather than one of them forgotten.
pub const MAX_BOOTS: usize = 1024;
/// A boot whose status was written and that has not been connected since for this long may be
/// forgotten (its sender stopped resending long before).
pub const FORGET_FINISHED: Duration = Duration::from_secs(300);
/// A boot that has not been connected for this long, while the sink ran, may be forgotten (a
/// live sender reconnects every few seconds).
pub const FORGET_IDLE: Duration = Duration::from_secs(3600);
/// Longest enclave name a hello may carry.
pub const MAX_NAME: usize = 64;
/// On SIGTERM, how long the sink lets its connections finish writing and acknowledging.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new connection of a boot waits for the one it replaces to let go.
pub const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// Hex digits of a boot id's hash that the sink publishes.
pub const PUBLISHED_ID: usize = 12;

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
    /// Sender to sink, first frame: JSON `{"boot": "<32 hex>", "secret": "<64 hex>", "name":
    /// "...", "acked": N}`; seq 0.
    Hello = 5,
    /// Sink to sender: every record up to `seq` is written; empty payload.
    Ack = 6,
    /// Sender to sink, when it has sent nothing for [`KEEPALIVE`]: seq 0, empty payload.
    Keepalive = 7,
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
            7 => Kind::Keepalive,
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
            Kind::Keepalive => "keepalive",
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

/// Longest text a peer sent that goes into one line of the daemon's own log.
pub const MAX_PRINTED: usize = 1024;

/// What a peer sent, fit for the daemon's own log: [`escape`]d, and cut after
/// [`MAX_PRINTED`] bytes (marked with `…`).
pub fn printable(text: &[u8]) -> String {
    let cut = &text[..text.len().min(MAX_PRINTED)];
    let mut out = Vec::with_capacity(cut.len());
    escape(cut, &mut out);
    let mut s = String::from_utf8_lossy(&out).into_owned();
    if text.len() > MAX_PRINTED {
        s.push('…');
    }
    s
}

/// A JSON value as one line in which nothing a terminal or a line reader could act on is left
/// raw: serde_json escapes the C0 controls; the C1 controls and the Unicode line and
/// paragraph separators, which it keeps, become `\uXXXX` too (they can only be inside
/// strings, where that escape means the same character).
pub fn json_line(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let raw = v.to_string();
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `name` may name an enclave in the log: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The first frame of a connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Hello {
    boot: String,
    secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default)]
    acked: u64,
}

fn hex_of_len(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Hello {
    /// What is wrong with a hello, named by its field (never quoting what the peer sent).
    fn check(&self) -> Result<(), String> {
        if !hex_of_len(&self.boot, 32) {
            return Err("its boot is not 32 hex digits".into());
        }
        if !hex_of_len(&self.secret, 64) {
            return Err("its secret is not 64 hex digits".into());
        }
        if self.name.as_deref().is_some_and(|n| !valid_name(n)) {
            return Err(format!(
                "its name is not 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -"
            ));
        }
        Ok(())
    }
}

fn digest(domain: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(domain.as_bytes());
    h.update([0]);
    h.update(value.to_ascii_lowercase().as_bytes());
    hex::encode(h.finalize())
}

/// The hash by which the sink keeps a boot: sha256 of the boot id, domain-separated.
pub fn boot_key(boot: &str) -> String {
    digest("cidboot log boot", boot)
}

/// The hash of a boot's secret that the sink keeps to recognise its sender.
fn secret_hash(secret: &str) -> String {
    digest("cidboot log secret", secret)
}

/// What the sink publishes of a boot: the first [`PUBLISHED_ID`] digits of its key.
pub fn published_id(key: &str) -> &str {
    key.get(..PUBLISHED_ID).unwrap_or(key)
}

/// Who a sender is: a boot id and a secret, both random per boot. The sink keeps only their
/// hashes; the secret leaves the sender only in its own hellos.
#[derive(Clone)]
pub struct Identity {
    boot: String,
    secret: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("published", &self.published())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new boot: 128 random bits of id and 256 of secret from the system's generator (in an
    /// enclave, seeded from the NSM before the sender starts). There is no fallback: a secret
    /// that could be guessed would let anyone write into the boot.
    pub fn generate() -> io::Result<Identity> {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut boot = [0u8; 16];
        let mut secret = [0u8; 32];
        rng.fill(&mut boot)
            .and_then(|()| rng.fill(&mut secret))
            .map_err(|_| io::Error::other("the system's random number generator failed"))?;
        Ok(Identity {
            boot: hex::encode(boot),
            secret: hex::encode(secret),
        })
    }

    /// The boot id in full (32 hex digits), which only the sender knows.
    pub fn boot_id(&self) -> &str {
        &self.boot
    }

    /// The boot id as the sink publishes it ([`published_id`] of [`boot_key`]).
    pub fn published(&self) -> String {
        published_id(&boot_key(&self.boot)).to_string()
    }

    /// The payload of this sender's hello.
    pub fn hello(&self, name: Option<&str>, acked: u64) -> Vec<u8> {
        let h = Hello {
            boot: self.boot.clone(),
            secret: self.secret.clone(),
            name: name.map(str::to_string),
            acked,
        };
        // Strings and a number: serializing cannot fail.
        serde_json::to_vec(&h).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let long = vec![b'\n'; MAX_PRINTED + 5];
        let p = printable(&long);
        assert!(p.ends_with('…') && p.len() < 3 * MAX_PRINTED, "{}", p.len());
    }

    #[test]
    fn json_lines_keep_no_raw_control_or_separator() {
        let v = serde_json::json!({"text": "a\n\u{1b}[2J\u{9b}31m\u{2028}b"});
        let line = json_line(&v);
        assert!(!line.chars().any(|c| c.is_control() || c == '\u{2028}'));
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn hellos_are_checked_field_by_field_without_quoting_them() {
        let id = Identity::generate().unwrap();
        let ok: Hello = serde_json::from_slice(&id.hello(Some("web-1"), 7)).unwrap();
        assert_eq!(ok.acked, 7);
        ok.check().unwrap();
        let mut bad = ok;
        bad.name = Some("x".repeat(65));
        assert!(bad.check().unwrap_err().contains("name"));
        bad.name = Some("a\nb".into());
        assert!(!bad.check().unwrap_err().contains('\n'));
        bad.name = None;
        bad.secret = "00".into();
        assert!(bad.check().unwrap_err().contains("secret"));
        bad.boot = id.published();
        assert!(bad.check().unwrap_err().contains("boot"));
        assert!(serde_json::from_slice::<Hello>(br#"{"boot":"00"}"#).is_err());
        // The published id is a prefix of the key, which is a hash of the id, not the id.
        assert_eq!(id.published().len(), PUBLISHED_ID);
        assert!(boot_key(id.boot_id()).starts_with(&id.published()));
        assert!(!boot_key(id.boot_id()).contains(id.boot_id()));
        assert!(!format!("{id:?}").contains(id.boot_id()));
    }
}
