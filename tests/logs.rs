//! The log channel as a hostile local peer sees it, against a real `cidboot host` and the real
//! sender (`LogSender`, which PID 1 and `cidboot run --log-sink` use): impostors of a live
//! boot over unix and tcp, a record numbered 2^64-1, control characters in records and a
//! status, overlong names, silent peers holding every slot, a flood of boot ids, and who may
//! connect to the socket at all. Nothing of the real boot may be lost, repeated or forged.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cidboot::relay::logs::{boot_key, Identity, Kind, LogSender};
use cidboot::transport::addr::Addr;
use common::cidboot;

type Lines = Arc<Mutex<Vec<Vec<u8>>>>;

/// Keeps every line of `r` as the bytes it was, so a raw control character would show.
fn collect(r: impl Read + Send + 'static, into: Lines) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    into.lock().unwrap().push(line);
                }
            }
        }
    });
}

/// A running `cidboot host`: its stdout (the records) and its stderr (its own log).
struct Host {
    child: Child,
    out: Lines,
    err: Lines,
}

impl Host {
    fn start(config: &Path, args: &[&str]) -> Host {
        let mut child = cidboot()
            .args(["host", "--config"])
            .arg(config)
            .args(args)
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, err) = (Lines::default(), Lines::default());
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), err.clone());
        let h = Host { child, out, err };
        h.wait_log("cidboot host ready", Duration::from_secs(20));
        h
    }

    fn log(&self) -> Vec<String> {
        let err = self.err.lock().unwrap();
        err.iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    }

    fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the host's log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.log().iter().filter(|l| l.contains(needle)).count()
    }

    fn wait_count(&self, needle: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.count(needle) < n {
            assert!(
                start.elapsed() < limit,
                "{} of {n} {needle:?} in the host's log",
                self.count(needle)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log sink's address, as the daemon announced it.
    fn sink(&self) -> String {
        let l = self.wait_log("log sink listening on ", Duration::from_secs(5));
        l.split(" listening on ").nth(1).unwrap().trim().to_string()
    }

    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "{st:?}");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("host.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// A log frame: kind, seq, length, payload.
fn frame(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn rand_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
}

fn hello(boot: &str, secret: &str, name: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"boot": boot, "secret": secret, "name": name})).unwrap()
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A raw peer of the sink, speaking the frames by hand.
struct Peer(Box<dyn Stream>);

impl Peer {
    fn connect(addr: &str) -> Peer {
        let s: Box<dyn Stream> = match addr.strip_prefix("unix:") {
            Some(p) => {
                let s = std::os::unix::net::UnixStream::connect(p).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                Box::new(s)
            }
            None => {
                let s = std::net::TcpStream::connect(addr.strip_prefix("tcp:").unwrap()).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                Box::new(s)
            }
        };
        Peer(s)
    }

    /// Writes frames; a sink that already closed makes this fail, which is fine.
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.0.write_all(bytes);
    }

    /// The next acknowledgement, or `None` when the sink closed the connection.
    fn ack(&mut self) -> Option<u64> {
        let mut f = [0u8; 13];
        self.0.read_exact(&mut f).ok()?;
        assert_eq!(
            (f[0], &f[9..]),
            (6, &[0u8, 0, 0, 0][..]),
            "not an ack: {f:?}"
        );
        Some(u64::from_be_bytes(f[1..9].try_into().unwrap()))
    }

    /// The sink closed the connection without sending anything.
    fn refused(&mut self) -> bool {
        let mut b = Vec::new();
        let _ = self.0.read_to_end(&mut b);
        b.is_empty()
    }
}

/// One record line of the sink: `TIMESTAMP ENCLAVE SEQ [KIND] TEXT`.
#[derive(Debug, Clone, PartialEq)]
struct Rec {
    enclave: String,
    seq: u64,
    kind: String,
    text: String,
}

fn parse(line: &str) -> Rec {
    let mut f = line.splitn(5, ' ');
    let _ts = f.next().unwrap();
    let enclave = f.next().unwrap().to_string();
    let seq = f
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{line}"));
    let kind = f.next().unwrap();
    assert!(kind.starts_with('[') && kind.ends_with(']'), "{line}");
    Rec {
        enclave,
        seq,
        kind: kind[1..kind.len() - 1].to_string(),
        text: f.next().unwrap_or("").to_string(),
    }
}

fn records(file: &Path) -> Vec<Rec> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .map(parse)
        .collect()
}

fn wait_record(file: &Path, text: &str) {
    let start = Instant::now();
    while !records(file).iter().any(|r| r.text == text) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no record {text:?}: {:?}",
            records(file).last()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The records of `enclave`: exactly a boot marker, then `texts` numbered 1, 2, … once each.
fn assert_boot(file: &Path, enclave: &str, texts: &[String]) {
    let mine: Vec<Rec> = records(file)
        .into_iter()
        .filter(|r| r.enclave == enclave)
        .collect();
    assert_eq!(mine.len(), texts.len() + 1, "{mine:#?}");
    assert_eq!((mine[0].seq, mine[0].kind.as_str()), (0, "boot"));
    for (i, (r, t)) in mine[1..].iter().zip(texts).enumerate() {
        assert_eq!((r.seq, &r.text), (i as u64 + 1, t), "{mine:#?}");
    }
}

/// A real sender for a boot of the caller's making, in `rt`.
fn sender(
    rt: &tokio::runtime::Runtime,
    sink: &str,
    name: &str,
    id: &Identity,
) -> (LogSender, tokio::task::JoinHandle<std::io::Result<()>>) {
    let addr: Addr = sink.parse().unwrap();
    rt.block_on(LogSender::connect_as(
        &addr,
        Duration::from_secs(5),
        Some(name),
        id.clone(),
    ))
    .unwrap()
}

fn send(rt: &tokio::runtime::Runtime, s: &LogSender, kind: Kind, text: &str) {
    rt.block_on(s.send(kind, text.as_bytes().to_vec())).unwrap();
}

fn finish(
    rt: &tokio::runtime::Runtime,
    s: LogSender,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    status: &str,
) {
    rt.block_on(s.finish(
        task,
        Kind::Status,
        status.as_bytes().to_vec(),
        Duration::from_secs(30),
    ))
    .unwrap();
}

fn texts(prefix: &str, n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix} {i}")).collect()
}

#[test]
fn an_impostor_of_a_live_boot_is_refused_over_unix_and_tcp() {
    for listen in ["unix", "tcp"] {
        let work = tempfile::tempdir().unwrap();
        let file = work.path().join("enclave.log");
        let listen = match listen {
            "unix" => format!("unix:{}", work.path().join("logs.sock").display()),
            _ => "tcp:127.0.0.1:0".to_string(),
        };
        let cfg = config(
            work.path(),
            &format!(
                "[logs]\nlisten = \"{listen}\"\nfile = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
                file.display()
            ),
        );
        let host = Host::start(&cfg, &[]);
        let sink = host.sink();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let id = Identity::generate().unwrap();
        let (real, task) = sender(&rt, &sink, "real", &id);
        for t in texts("before", 3) {
            send(&rt, &real, Kind::Stdout, &t);
        }
        wait_record(&file, "before 3");
        // What a local peer can learn: the published id, in the boot marker.
        let marker = records(&file)[0].text.clone();
        let published = serde_json::from_str::<serde_json::Value>(&marker).unwrap()["boot"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(published, id.published(), "{marker}");

        let forged = |p: &mut Peer| {
            p.send(&frame(1, 4, b"forged record"));
            p.send(&frame(3, 5, br#"{"exit_code":1,"reason":"forged status"}"#));
        };
        // The published id is not a boot id.
        let mut p = Peer::connect(&sink);
        p.send(&frame(
            5,
            0,
            &hello(&published, &rand_hex(32), Some("real")),
        ));
        forged(&mut p);
        assert!(p.refused(), "{listen}: the published id was taken");
        host.wait_log("its boot is not 32 hex digits", Duration::from_secs(5));
        // Even the full id, without the boot's secret, is refused: under the same name, under
        // another, and with a record numbered 2^64-1.
        for (name, seq) in [("real", 4), ("other", 4), ("real", u64::MAX)] {
            let mut p = Peer::connect(&sink);
            p.send(&frame(
                5,
                0,
                &hello(id.boot_id(), &rand_hex(32), Some(name)),
            ));
            p.send(&frame(1, seq, b"forged record"));
            forged(&mut p);
            assert!(p.refused(), "{listen}: the full id was taken as {name}");
        }
        // The refusal reaches the peer before the daemon's log line: wait for all three.
        host.wait_count("with another secret", 3, Duration::from_secs(5));
        assert_eq!(host.count("with another secret"), 3);
        let mut p = Peer::connect(&sink);
        p.send(&frame(
            5,
            0,
            &serde_json::to_vec(&serde_json::json!({"boot": id.boot_id(), "name": "real"}))
                .unwrap(),
        ));
        forged(&mut p);
        assert!(p.refused());
        host.wait_log("a malformed hello", Duration::from_secs(5));

        // The real sender never noticed: everything it sends is written once, in order.
        for t in texts("after", 3) {
            send(&rt, &real, Kind::Stdout, &t);
        }
        finish(&rt, real, task, r#"{"exit_code":0,"reason":"done"}"#);
        let mut want = texts("before", 3);
        want.extend(texts("after", 3));
        want.push(r#"{"exit_code":0,"reason":"done"}"#.into());
        assert_boot(&file, "real", &want);
        let all = std::fs::read_to_string(&file).unwrap();
        assert!(!all.contains("forged"), "{listen}: {all}");
        assert_eq!(records(&file).len(), want.len() + 1, "{all}");
        host.wait_count("enclave reported its status", 1, Duration::from_secs(5));
        assert_eq!(host.count("enclave reported its status"), 1);

        // The full id is published nowhere: log file, records, daemon log, state, /metrics.
        let state = std::fs::read_to_string(work.path().join(".enclave.log.state")).unwrap();
        assert!(state.contains(&boot_key(id.boot_id())), "{state}");
        let mut m = std::net::TcpStream::connect(
            host.wait_log("metrics listening on tcp:", Duration::from_secs(1))
                .split("tcp:")
                .nth(1)
                .unwrap()
                .trim(),
        )
        .unwrap();
        m.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut metrics = String::new();
        m.read_to_string(&mut metrics).unwrap();
        assert!(metrics.contains("cidboot_boots_total 1"), "{metrics}");
        let out: Vec<String> = host
            .out
            .lock()
            .unwrap()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        for (what, text) in [
            ("log file", all),
            ("records", out.join("\n")),
            ("daemon log", host.log().join("\n")),
            ("state file", state),
            ("metrics", metrics),
        ] {
            assert!(
                !text.contains(id.boot_id()),
                "{listen}: the boot id in the {what}"
            );
        }
        host.stop();
    }
}

#[test]
fn a_record_numbered_2_64_minus_1_drops_its_connection_and_the_boot_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let cfg = config(
        work.path(),
        &format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
            sock.display(),
            file.display()
        ),
    );
    let host = Host::start(&cfg, &[]);
    let sink = format!("unix:{}", sock.display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = Identity::generate().unwrap();
    let (real, task) = sender(&rt, &sink, "real", &id);
    for t in texts("line", 3) {
        send(&rt, &real, Kind::Stdout, &t);
    }
    wait_record(&file, "line 3");
    // A connection that proves the boot's secret replaces the live one (as the sender's own
    // reconnection does), and then sends a record numbered 2^64-1: it is dropped, writing
    // nothing.
    let mut p = Peer::connect(&sink);
    let mut bytes = frame(5, 0, &id.hello(Some("real"), 3));
    bytes.extend(frame(1, u64::MAX, b"poison"));
    p.send(&bytes);
    assert_eq!(p.ack(), Some(3));
    assert_eq!(p.ack(), None, "the connection stayed open");
    host.wait_log(
        "record 18446744073709551615 is not between 1 and 4096 past the last one written (3)",
        Duration::from_secs(5),
    );
    host.wait_log(
        "a new connection of the same boot replaced it",
        Duration::from_secs(5),
    );
    // The real sender reconnects, and its later records and status are all written.
    for t in ["line 4", "line 5", "line 6"] {
        send(&rt, &real, Kind::Stdout, t);
    }
    finish(&rt, real, task, r#"{"exit_code":0,"reason":"done"}"#);
    let mut want = texts("line", 6);
    want.push(r#"{"exit_code":0,"reason":"done"}"#.into());
    assert_boot(&file, "real", &want);
    assert!(!std::fs::read_to_string(&file).unwrap().contains("poison"));
    host.wait_log("a boot reconnected to the log sink", Duration::from_secs(1));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o640,
        "the log file the daemon created is not 0640"
    );
}

/// A line of the daemon's output holds no control character but a tab, and no C1 control.
fn assert_clean(what: &str, line: &[u8]) {
    let s = String::from_utf8_lossy(line);
    assert!(
        !s.chars().any(|c| c.is_control() && c != '\t'),
        "{what}: a raw control character in {s:?}"
    );
}

#[test]
fn control_characters_in_records_and_a_status_are_escaped_wherever_they_are_printed() {
    // A record and a status that try to end their line and start a forged one, move the
    // terminal, set its title, and use an 8-bit CSI.
    let forge =
        "\n2026-03-01T10:00:00.000000Z  INFO cidboot host ready\r\x1b[2K\x1b]0;owned\x07\u{9b}31m";
    let record = format!("hello{forge}");
    let status = format!("{{\"exit_code\":0,\"reason\":\"ok\"}}{forge}");
    for json in [false, true] {
        let work = tempfile::tempdir().unwrap();
        let sock = work.path().join("logs.sock");
        let file = work.path().join("enclave.log");
        let cfg = config(
            work.path(),
            &format!(
                "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
                sock.display(),
                file.display()
            ),
        );
        let host = Host::start(&cfg, if json { &["--json"] } else { &[] });
        let rt = tokio::runtime::Runtime::new().unwrap();
        let id = Identity::generate().unwrap();
        let (s, task) = sender(&rt, &format!("unix:{}", sock.display()), "esc", &id);
        send(&rt, &s, Kind::Stderr, &record);
        finish(&rt, s, task, &status);
        host.wait_log("enclave reported its status", Duration::from_secs(10));
        host.stop_soon();
        let err = host.err.lock().unwrap().clone();
        let out = host.out.lock().unwrap().clone();
        let text = std::fs::read(&file).unwrap();
        let in_file: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            in_file.len(),
            3,
            "a boot marker, the record and the status: one line each"
        );
        assert_eq!(out.len(), 3, "the same three on stdout");
        for (what, lines) in [("daemon log", err.clone()), ("records", out.clone())] {
            for l in &lines {
                assert_clean(what, l);
                assert!(
                    !l.starts_with(b"2026-03-01T10:00:00.000000Z"),
                    "{what}: a forged line {}",
                    String::from_utf8_lossy(l)
                );
            }
        }
        for l in &in_file {
            assert_clean("log file", l);
        }
        let status_line = err
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .find(|l| l.contains("enclave reported its status"))
            .unwrap();
        if json {
            // Each line is one JSON object that gives back exactly what was sent.
            for l in err.iter().chain(&out) {
                serde_json::from_slice::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(l)));
            }
            let recs: Vec<serde_json::Value> = out
                .iter()
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect();
            assert_eq!(recs[1]["text"], record);
            assert_eq!(recs[2]["text"], status);
            assert_eq!(recs[2]["boot"], id.published());
            let v: serde_json::Value = serde_json::from_str(&status_line).unwrap();
            assert!(v["status"]
                .as_str()
                .unwrap()
                .contains("\\n2026-03-01T10:00:00"));
        } else {
            assert!(
                status_line.contains("\\n2026-03-01T10:00:00.000000Z  INFO cidboot host ready\\r\\x1b[2K\\x1b]0;owned\\x07\\u{009b}31m"),
                "{status_line}"
            );
            let recs = records(&file);
            assert_eq!(
                recs[1].text,
                "hello\\n2026-03-01T10:00:00.000000Z  INFO cidboot host ready\\r\\x1b[2K\\x1b]0;owned\\x07\\u{009b}31m"
            );
            assert_eq!(recs[2].kind, "status");
        }
    }
}

impl Host {
    /// SIGTERM, and the end of its output.
    fn stop_soon(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.wait_log("cidboot host stopped", Duration::from_secs(15));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_name_that_is_too_long_or_not_of_the_charset_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let cfg = config(
        work.path(),
        &format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
            sock.display(),
            file.display()
        ),
    );
    let host = Host::start(&cfg, &[]);
    let sink = format!("unix:{}", sock.display());
    let long = "n".repeat(65);
    for name in [long.as_str(), "", "a b", "web\n\u{1b}[2J1"] {
        let mut p = Peer::connect(&sink);
        p.send(&frame(
            5,
            0,
            &hello(&rand_hex(16), &rand_hex(32), Some(name)),
        ));
        p.send(&frame(1, 1, b"from a bad name"));
        assert!(p.refused(), "{name:?} was taken");
    }
    host.wait_count(
        "its name is not 1 to 64 of A-Z a-z 0-9 . _ -",
        4,
        Duration::from_secs(5),
    );
    // 64 is the most.
    let mut p = Peer::connect(&sink);
    p.send(&frame(
        5,
        0,
        &hello(&rand_hex(16), &rand_hex(32), Some(&long[1..])),
    ));
    p.send(&frame(1, 1, b"from the longest name"));
    assert_eq!(p.ack(), Some(0));
    assert_eq!(p.ack(), Some(1));
    let all = std::fs::read_to_string(&file).unwrap();
    assert!(!all.contains("from a bad name"), "{all}");
    assert!(all.contains(&format!(" {} 1 [stdout] from the longest name", &long[1..])));
    for l in host.err.lock().unwrap().iter() {
        assert_clean("daemon log", l);
    }
    // The sender refuses it before connecting: `cidboot run --log-name`.
    let out = cidboot()
        .args([
            "run",
            "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy",
            "--log-sink",
            &sink,
            "--log-name",
            &long,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-name") && err.contains("1 to 64"),
        "{err}"
    );
    assert_eq!(host.count("a new boot connected"), 1);
}

#[test]
fn silent_peers_lose_their_slots_after_the_idle_timeout_and_a_quiet_sender_keeps_its_own() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let cfg = config(
        work.path(),
        &format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\nidle_timeout_secs = 15\n",
            sock.display(),
            file.display()
        ),
    );
    let host = Host::start(&cfg, &[]);
    let sink = format!("unix:{}", sock.display());
    // Every slot taken by a peer that sends a hello and then nothing.
    let mut silent: Vec<Peer> = (0..64)
        .map(|_| {
            let mut p = Peer::connect(&sink);
            p.send(&frame(
                5,
                0,
                &hello(&rand_hex(16), &rand_hex(32), Some("silent")),
            ));
            assert_eq!(p.ack(), Some(0));
            p
        })
        .collect();
    let held = Instant::now();
    // A real sender cannot get in yet; it keeps trying, and its records wait in its buffer.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = Identity::generate().unwrap();
    let (late, task) = sender(&rt, &sink, "late", &id);
    send(&rt, &late, Kind::Stdout, "late 1");
    host.wait_log(
        "64 connections already; closing this one",
        Duration::from_secs(5),
    );
    wait_record(&file, "late 1");
    let waited = held.elapsed();
    assert!(
        waited >= Duration::from_secs(14),
        "written after {waited:?}, before the silent peers timed out"
    );
    host.wait_count(
        "nothing for 15s after the hello, not even a keepalive",
        64,
        Duration::from_secs(5),
    );
    assert!(silent[0].refused(), "a silent peer kept its connection");
    silent.clear();
    // The sender stays quiet longer than the idle timeout: its keepalives keep it connected.
    std::thread::sleep(Duration::from_secs(20));
    send(&rt, &late, Kind::Stdout, "late 2");
    finish(&rt, late, task, r#"{"exit_code":0,"reason":"done"}"#);
    host.wait_log(
        "reason=the enclave closed the connection",
        Duration::from_secs(5),
    );
    assert_eq!(
        host.log()
            .iter()
            .filter(|l| l.contains("enclave=late") && l.contains("log sink disconnected"))
            .count(),
        1,
        "the quiet sender lost its connection: {:#?}",
        host.log()
    );
    assert_eq!(host.count("a boot reconnected to the log sink"), 0);
    assert_boot(
        &file,
        "late",
        &[
            "late 1".into(),
            "late 2".into(),
            r#"{"exit_code":0,"reason":"done"}"#.into(),
        ],
    );
}

#[test]
fn a_flood_of_boot_ids_neither_evicts_a_live_boot_nor_makes_it_write_twice() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let state = work.path().join(".enclave.log.state");
    let cfg = config(
        work.path(),
        &format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
            sock.display(),
            file.display()
        ),
    );
    let host = Host::start(&cfg, &[]);
    let sink = format!("unix:{}", sock.display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = Identity::generate().unwrap();
    let (live, task) = sender(&rt, &sink, "live", &id);
    for t in texts("before", 5) {
        send(&rt, &live, Kind::Stdout, &t);
    }
    wait_record(&file, "before 5");
    // 1100 new boots, one after the other: the state takes 1023 beside the live one, and
    // refuses the rest.
    let (mut taken, mut refused) = (0, 0);
    for _ in 0..1100 {
        let mut p = Peer::connect(&sink);
        p.send(&frame(
            5,
            0,
            &hello(&rand_hex(16), &rand_hex(32), Some("flood")),
        ));
        match p.ack() {
            Some(0) => taken += 1,
            None => refused += 1,
            Some(n) => panic!("a new boot acknowledged at {n}"),
        }
    }
    assert_eq!((taken, refused), (1023, 77));
    host.wait_count(
        "a new boot is refused rather than one of them forgotten",
        77,
        Duration::from_secs(5),
    );
    let key = boot_key(id.boot_id());
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(kept["boots"].as_object().unwrap().len(), 1024);
    assert_eq!(kept["boots"][&key]["last"], 5, "the live boot was evicted");
    // The daemon restarts; the sender reconnects and goes on where it was.
    host.stop();
    let host = Host::start(&cfg, &[]);
    for t in texts("after", 3) {
        send(&rt, &live, Kind::Stdout, &t);
    }
    finish(&rt, live, task, r#"{"exit_code":0,"reason":"done"}"#);
    host.wait_log("a boot reconnected to the log sink", Duration::from_secs(5));
    // The same sender sends its first record again: acknowledged, not written again.
    let mut p = Peer::connect(&sink);
    let mut bytes = frame(5, 0, &id.hello(Some("live"), 0));
    bytes.extend(frame(1, 1, b"before 1"));
    p.send(&bytes);
    assert_eq!(p.ack(), Some(9));
    assert_eq!(p.ack(), Some(9));
    drop(p);
    let mut want = texts("before", 5);
    want.extend(texts("after", 3));
    want.push(r#"{"exit_code":0,"reason":"done"}"#.into());
    assert_boot(&file, "live", &want);
}

/// Connects to the Unix socket `path` as `uid`/`gid` (and no other group); the output says
/// whether it could.
fn connect_as(uid: u32, gid: u32, path: &Path) -> String {
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected')\nexcept OSError as e:\n print('refused', e.errno)",
        ])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn the_socket_admits_only_the_daemons_user_unless_sockets_widens_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let work = tempfile::tempdir().unwrap();
    // A directory anyone may enter: only the socket's own mode keeps them out.
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = work.path().join("logs.sock");
    let logs = format!("[logs]\nlisten = \"unix:{}\"\n", sock.display());
    let cfg = config(work.path(), &logs);
    let host = Host::start(&cfg, &[]);
    let m = std::fs::metadata(&sock).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    assert_eq!(connect_as(1000, 1000, &sock), "refused 13");
    assert!(connect_as(0, 0, &sock) == "connected");
    host.stop();
    // A group, and a mode that admits it.
    let cfg = config(
        work.path(),
        &format!("{logs}\n[sockets]\nmode = 0o660\ngroup = \"1000\"\n"),
    );
    let host = Host::start(&cfg, &[]);
    let m = std::fs::metadata(&sock).unwrap();
    assert_eq!((m.permissions().mode() & 0o777, m.gid()), (0o660, 1000));
    assert_eq!(connect_as(1000, 1000, &sock), "connected");
    assert_eq!(connect_as(1001, 1001, &sock), "refused 13");
    host.stop();
    // Modes that would lock the daemon's own user out, or a group that does not exist, are
    // refused before anything listens.
    for (extra, want) in [
        ("[sockets]\nmode = 0o400\n", "sockets.mode"),
        ("[sockets]\nmode = 0o1777\n", "sockets.mode"),
        (
            "[sockets]\ngroup = \"no-such-group-here\"\n",
            "sockets.group",
        ),
        ("idle_timeout_secs = 5\n", "logs.idle_timeout_secs"),
    ] {
        let cfg = config(work.path(), &format!("{logs}\n{extra}"));
        let out = cidboot()
            .args(["host", "--check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{extra}: {err}"
        );
    }
}

/// A figure of a process's memory from /proc (`VmHWM`: its peak), in bytes.
fn peak_memory(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Peers of boots of their own that send records of 64 KiB as fast as they can, each of
/// control characters that the escaping makes four times longer: every connection holds at
/// most its read buffer and 1 MiB of records before they are written and acknowledged, and
/// only one batch's text is built at a time, so the daemon's peak stays within a few MiB per
/// connection, whatever the peers send.
#[test]
fn peers_sending_big_records_fast_cost_the_daemon_a_bounded_amount_of_memory() {
    const PEERS: usize = 8;
    const RECORDS: u64 = 512;
    let work = tempfile::tempdir().unwrap();
    let cfg = config(work.path(), "[logs]\nlisten = \"tcp:127.0.0.1:0\"\n");
    // The records go to stdout, which nobody reads here but /dev/null.
    let mut child = cidboot()
        .args(["host", "--config"])
        .arg(&cfg)
        .env("CIDBOOT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = Lines::default();
    collect(child.stderr.take().unwrap(), err.clone());
    let mut host = Host {
        child,
        out: Lines::default(),
        err,
    };
    let sink = host.sink();
    let baseline = peak_memory(host.child.id());
    let record = frame(1, 0, &[1u8; cidboot::relay::logs::MAX_RECORD]);
    let peers: Vec<_> = (0..PEERS)
        .map(|i| {
            let sink = sink.clone();
            let record = record.clone();
            std::thread::spawn(move || {
                let s = std::net::TcpStream::connect(sink.strip_prefix("tcp:").unwrap()).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                let mut p = Peer(Box::new(s));
                let mut bytes = frame(
                    5,
                    0,
                    &hello(&rand_hex(16), &rand_hex(32), Some(&format!("big{i}"))),
                );
                for seq in 1..=RECORDS {
                    let mut f = record.clone();
                    f[1..9].copy_from_slice(&seq.to_be_bytes());
                    bytes.extend_from_slice(&f);
                }
                p.send(&bytes);
                while let Some(n) = p.ack() {
                    if n == RECORDS {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    for p in peers {
        assert!(
            p.join().unwrap(),
            "a peer's records were not all acknowledged"
        );
    }
    let grew = peak_memory(host.child.id()).saturating_sub(baseline);
    assert!(
        grew < 48 << 20,
        "{PEERS} peers sending {RECORDS} records of 64 KiB made the daemon grow by {} MiB",
        grew >> 20
    );
    host.child.kill().unwrap();
    let _ = host.child.wait();
}

/// A log directory that another user owns: they could plant a symlink where the daemon writes
/// (the state file's temporary name, say), and the daemon, run as root, overwrote the file it
/// names with its state at start. The daemon refuses such a directory, at `--check` and at
/// start, and writes nothing there.
#[test]
fn a_log_directory_another_user_can_change_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let theirs = work.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
    let victim = work.path().join("victim");
    std::fs::write(&victim, "root's\n").unwrap();
    let planted = theirs.join(".enclave.log.tmp");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(1000), Some(1000)).unwrap();
    let cfg = config(
        work.path(),
        &format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
            work.path().join("logs.sock").display(),
            theirs.join("enclave.log").display()
        ),
    );
    let checked = cidboot()
        .args(["host", "--check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(
        !checked.status.success() && err.contains("logs.file") && err.contains("owned by uid 1000"),
        "{err}"
    );
    let started = cidboot()
        .args(["host", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = started.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    });
    let out = started.wait_with_output().unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");
    assert!(
        !out.status.success(),
        "the daemon ran with its log in another user's directory"
    );
    assert_eq!(
        std::fs::read_dir(&theirs).unwrap().count(),
        1,
        "something was written there"
    );
    drop(killer);
}
