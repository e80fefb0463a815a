//! `cidboot host` over tcp and unix addresses: the egress allowlist and its bounds, many
//! concurrent tunnels, ingress, the log sink under 100k lines, the boot configuration, and
//! bad input that must not stop the daemon.
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
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cidboot;

/// A tokio echo server on loopback; returns its port.
fn echo_server(rt: &tokio::runtime::Runtime) -> u16 {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A running `cidboot host`: its log (stderr) and the enclave records (stdout), collected
/// line by line into `lines`; the records alone also into `records`.
struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    records: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn start(config: &str, work: &Path) -> Host {
        let path = work.join(format!("host-{}.toml", fastrand::u32(..)));
        std::fs::write(&path, config).unwrap();
        Host::start_cmd(cidboot(), &path, &[])
    }

    /// Starts `cmd host --config PATH ARGS…` (`cmd` may wrap the binary, e.g. in prlimit).
    fn start_cmd(mut cmd: std::process::Command, path: &Path, args: &[&str]) -> Host {
        let mut child = cmd
            .args(["host", "--config"])
            .arg(path)
            .args(args)
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let records = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let (l1, r1) = (lines.clone(), records.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                r1.lock().unwrap().push(line.clone());
                l1.lock().unwrap().push(line);
            }
        });
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        let h = Host {
            child,
            lines,
            records,
        };
        h.wait_for("cidboot host ready", Duration::from_secs(20));
        h
    }

    fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} in the host's output: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address a service announced ("<service> listening on tcp:127.0.0.1:PORT").
    fn addr(&self, service: &str) -> String {
        let l = self.wait_for(&format!("{service} listening on "), Duration::from_secs(5));
        let a = l.split(" listening on ").nth(1).unwrap().trim().to_string();
        a.strip_prefix("tcp:").unwrap_or(&a).to_string()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM, and the daemon's exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "SIGTERM did not stop the host"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

fn parse_records(text: &str) -> Vec<Rec> {
    text.lines()
        .map(|l| {
            let mut f = l.splitn(5, ' ');
            let _ts = f.next().unwrap();
            let enclave = f.next().unwrap().to_string();
            let seq = f.next().unwrap().parse().unwrap_or_else(|_| panic!("{l}"));
            let kind = f.next().unwrap();
            assert!(kind.starts_with('[') && kind.ends_with(']'), "{l}");
            Rec {
                enclave,
                seq,
                kind: kind[1..kind.len() - 1].to_string(),
                text: f.next().unwrap_or("").to_string(),
            }
        })
        .collect()
}

fn read_records(file: &Path) -> Vec<Rec> {
    parse_records(&std::fs::read_to_string(file).unwrap_or_default())
}

/// Waits until `file` holds a record that `pred` accepts.
fn wait_record(file: &Path, limit: Duration, what: &str, pred: impl Fn(&[Rec]) -> bool) {
    let start = Instant::now();
    loop {
        if pred(&read_records(file)) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{what}: {:?}",
            read_records(file).last()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a request head to the proxy and returns the status line.
fn proxy_request(proxy: &str, head: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let mut b = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        resp.push(b[0]);
    }
    let status = String::from_utf8_lossy(&resp)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    (status, s)
}

fn connect_req(target: &str) -> String {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n")
}

fn egress_config(echo: u16, extra: &str) -> String {
    format!(
        "[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"localhost:{echo}\", \"*.example.invalid:{echo}\"]\nhead_timeout_secs = 1\nconnect_timeout_secs = 3\nallow_private_destinations = true\n{extra}"
    )
}

/// A daemon whose egress proxy allows an echo server, and what keeps them running.
struct EgressHost {
    rt: tokio::runtime::Runtime,
    echo: u16,
    proxy: String,
    host: Host,
    _work: tempfile::TempDir,
}

impl EgressHost {
    fn start() -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let echo = echo_server(&rt);
        let work = tempfile::tempdir().unwrap();
        let host = Host::start(&egress_config(echo, ""), work.path());
        let proxy = host.addr("egress proxy");
        EgressHost {
            rt,
            echo,
            proxy,
            host,
            _work: work,
        }
    }
}

#[test]
fn egress_allowlist_decisions() {
    let EgressHost {
        rt: _rt,
        echo,
        proxy,
        host,
        _work,
    } = EgressHost::start();

    // Allowed: the tunnel carries bytes both ways.
    let (status, mut s) = proxy_request(&proxy, &connect_req(&format!("localhost:{echo}")));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    // Denied by default, wrong port, IP literal.
    for (target, why) in [
        (
            "example.com:443".to_string(),
            "matches no allowlist pattern",
        ),
        (
            format!("localhost:{}", echo + 1),
            "matches no allowlist pattern",
        ),
        (
            format!("127.0.0.1:{echo}"),
            "IP literals are refused unless listed",
        ),
    ] {
        let (status, mut s) = proxy_request(&proxy, &connect_req(&target));
        assert!(status.starts_with("HTTP/1.1 403"), "{target}: {status}");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        assert!(body.contains(why), "{target}: {body}");
    }
    // A wildcard allows a subdomain (the dial then fails: there is no such host).
    let target = format!("deep.sub.example.invalid:{echo}");
    let (status, _) = proxy_request(&proxy, &connect_req(&target));
    assert!(
        status.starts_with("HTTP/1.1 502") || status.starts_with("HTTP/1.1 504"),
        "{status}"
    );
    host.wait_for(
        &format!("target={target} decision=\"allow\""),
        Duration::from_secs(5),
    );
    // Plain HTTP with an absolute URI is rewritten to origin form upstream.
    let (_, mut s) = {
        let mut s = TcpStream::connect(&proxy).unwrap();
        s.write_all(format!("GET http://localhost:{echo}/hello HTTP/1.1\r\nHost: localhost\r\nProxy-Connection: keep-alive\r\n\r\n").as_bytes()).unwrap();
        (String::new(), s)
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut echoed = vec![0u8; 64];
    let n = s.read(&mut echoed).unwrap();
    let echoed = String::from_utf8_lossy(&echoed[..n]).into_owned();
    assert!(
        echoed.starts_with("GET /hello HTTP/1.1\r\n") && !echoed.contains("Proxy-Connection"),
        "{echoed}"
    );
    // Every decision is logged.
    assert!(host.count("decision=\"deny\"") >= 3);
}

#[test]
fn egress_bounds_heads_and_slow_clients_and_keeps_serving() {
    let EgressHost {
        rt: _rt,
        echo,
        proxy,
        host: _host,
        _work,
    } = EgressHost::start();
    // An oversized request line.
    let long = format!("CONNECT {}:443 HTTP/1.1\r\n\r\n", "a".repeat(10_000));
    let (status, _) = proxy_request(&proxy, &long);
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    // A slowloris client gets 408 after the head timeout, while others are served meanwhile.
    let mut slow = TcpStream::connect(&proxy).unwrap();
    slow.write_all(b"CONNECT loc").unwrap();
    let (status, _) = proxy_request(&proxy, &connect_req(&format!("localhost:{echo}")));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut resp = String::new();
    let started = Instant::now();
    let _ = slow.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Garbage and unsupported requests.
    for junk in [
        "\x16\x03\x01garbage\r\n\r\n",
        "GET https://localhost/ HTTP/1.1\r\n\r\n",
        "CONNECT :443 HTTP/1.1\r\n\r\n",
    ] {
        let (status, _) = proxy_request(&proxy, junk);
        assert!(status.starts_with("HTTP/1.1 400"), "{junk:?}: {status}");
    }
    let (status, _) = proxy_request(&proxy, &connect_req(&format!("localhost:{echo}")));
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "still serving: {status}"
    );
}

#[test]
fn two_hundred_concurrent_tunnels_account_for_every_byte() {
    let EgressHost {
        rt,
        echo,
        proxy,
        host,
        _work,
    } = EgressHost::start();
    let total = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let proxy = proxy.clone();
            tasks.push(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
                let mut s = tokio::io::BufStream::new(s);
                s.write_all(connect_req(&format!("localhost:{echo}")).as_bytes())
                    .await
                    .unwrap();
                s.flush().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    head.push(s.read_u8().await.unwrap());
                }
                assert!(head.starts_with(b"HTTP/1.1 200"));
                let data: Vec<u8> = (0..64 * 1024)
                    .map(|j| ((j as u64 * 31 + i) % 251) as u8)
                    .collect();
                let (mut r, mut w) = tokio::io::split(s);
                let d2 = data.clone();
                let writer = tokio::spawn(async move {
                    w.write_all(&d2).await.unwrap();
                    w.flush().await.unwrap();
                    w.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                r.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                assert_eq!(back, data, "tunnel {i} lost or changed bytes");
                back.len() as u64
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        total
    });
    assert_eq!(total, 200 * 64 * 1024);
    host.wait_for("egress closed", Duration::from_secs(5));
}

#[test]
fn ingress_round_trip_and_heartbeat() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = echo_server(&rt);
    let work = tempfile::tempdir().unwrap();
    let hb = work.path().join("hb.sock");
    let cfg = format!(
        "[[ingress]]\nlisten = \"tcp:127.0.0.1:0\"\ntarget = \"tcp:127.0.0.1:{echo}\"\n\n[heartbeat]\nlisten = \"unix:{}\"\n",
        hb.display()
    );
    let host = Host::start(&cfg, work.path());
    let mut s = TcpStream::connect(host.addr("ingress")).unwrap();
    s.write_all(b"through the parent").unwrap();
    let mut buf = [0u8; 18];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"through the parent");
    let mut u = std::os::unix::net::UnixStream::connect(&hb).unwrap();
    u.write_all(&[0xB7]).unwrap();
    let mut b = [0u8; 1];
    u.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 0xB7);
}

#[test]
fn log_sink_keeps_100k_lines_in_order_and_the_status() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let cfg = format!(
        "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
        sock.display(),
        file.display()
    );
    let host = Host::start(&cfg, work.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use cidboot::relay::logs::{Kind, LogSender};
        let addr: cidboot::transport::addr::Addr =
            format!("unix:{}", sock.display()).parse().unwrap();
        let (sender, task) = LogSender::connect(&addr, Duration::from_secs(5), Some("seq"))
            .await
            .unwrap();
        // A chatty workload: an independent program printing 100k lines.
        let mut child = tokio::process::Command::new("seq")
            .args(["1", "100000"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let n = sender.pump(out, Kind::Stdout).await.unwrap();
        assert_eq!(n, 100_000);
        child.wait().await.unwrap();
        sender
            .send(
                Kind::Status,
                br#"{"exit_code":0,"reason":"exited"}"#.to_vec(),
            )
            .await
            .unwrap();
        drop(sender);
        // The task ends only once the sink has acknowledged everything.
        task.await.unwrap().unwrap();
    });
    host.wait_for("log sink disconnected", Duration::from_secs(30));
    let recs = read_records(&file);
    assert_eq!(
        recs.len(),
        100_002,
        "a boot marker, 100k lines and the status"
    );
    assert_eq!(recs[0].kind, "boot");
    assert!(recs.iter().all(|r| r.enclave == "seq"), "{:?}", recs[0]);
    for (i, r) in recs[1..100_001].iter().enumerate() {
        assert_eq!(
            (r.seq, r.kind.as_str(), r.text.clone()),
            (i as u64 + 1, "stdout", format!("{}", i + 1))
        );
    }
    assert_eq!(recs[100_001].kind, "status");
    assert_eq!(recs[100_001].text, r#"{"exit_code":0,"reason":"exited"}"#);
    // The records went to stdout as well, and the daemon's own log did not.
    let out = host.records.lock().unwrap().clone();
    assert_eq!(out.len(), 100_002);
    assert!(!out.iter().any(|l| l.contains("cidboot host ready")));
    // Garbage on the channel closes that connection only.
    let mut g = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    g.write_all(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'x'])
        .unwrap();
    host.wait_for("unknown record kind 9", Duration::from_secs(5));
    // A record without a hello first is refused too.
    let mut nohello = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    nohello.write_all(&frame(1, 1, b"sneaky")).unwrap();
    host.wait_for("a stdout record before the hello", Duration::from_secs(5));
    let mut ok = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    ok.write_all(&frame(
        5,
        0,
        &raw_hello("00000000000000000000000000000001", "raw"),
    ))
    .unwrap();
    ok.write_all(&frame(1, 1, b"after")).unwrap();
    host.wait_for(" raw 1 [stdout] after", Duration::from_secs(5));
    assert!(!std::fs::read_to_string(&file).unwrap().contains("sneaky"));
    // The same boot again: the hello is answered with the last record written, and what is
    // sent again is skipped.
    let mut again = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    again
        .write_all(&frame(
            5,
            0,
            &raw_hello("00000000000000000000000000000001", "raw"),
        ))
        .unwrap();
    let mut ack = [0u8; 13];
    again
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    again.read_exact(&mut ack).unwrap();
    assert_eq!(ack.to_vec(), frame(6, 1, b""));
    again.write_all(&frame(1, 1, b"after")).unwrap();
    again.write_all(&frame(1, 2, b"later")).unwrap();
    // Acknowledged up to 2 (the skipped record may be acknowledged on its own first).
    again.read_exact(&mut ack).unwrap();
    if ack.to_vec() == frame(6, 1, b"") {
        again.read_exact(&mut ack).unwrap();
    }
    assert_eq!(ack.to_vec(), frame(6, 2, b""));
    host.wait_for(" raw 2 [stdout] later", Duration::from_secs(5));
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.matches("[stdout] after").count(), 1, "written twice");
}

/// A hello for `boot` under `name`, with a secret of its own (the same for every call).
fn raw_hello(boot: &str, name: &str) -> Vec<u8> {
    let secret = format!("{:064x}", u128::from_str_radix(boot, 16).unwrap());
    format!(r#"{{"boot":"{boot}","secret":"{secret}","name":"{name}"}}"#).into_bytes()
}

/// A log frame: kind, seq, length, payload.
fn frame(kind: u8, seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An image whose workload is the probe with these arguments.
fn probe_workload(args: &[&str]) -> common::Image {
    let args: Vec<serde_json::Value> = args.iter().map(|a| serde_json::json!(a)).collect();
    common::image_from_tars(
        &[common::tar_entries(&[common::TarEntry::File {
            path: "bin/probe",
            data: std::fs::read(common::sample_bin("probe")).unwrap(),
            mode: 0o755,
        }])],
        serde_json::json!({"Entrypoint": ["/bin/probe"], "Cmd": args}),
    )
}

/// Starts `cidboot run` of `img` (published on its own gateway) with its log sink at `sock`.
fn run_to_sink(
    img: &common::Image,
    work: &Path,
    sock: &Path,
    name: &str,
) -> (Child, common::Gateway) {
    let (reference, gw) = common::publish(img, work);
    let child = cidboot()
        .args([
            "run",
            &reference,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--nsm",
            "software",
            "--attestation-listen",
            "127.0.0.1:0",
            "--log-name",
            name,
        ])
        .arg("--log-sink")
        .arg(format!("unix:{}", sock.display()))
        .env("CIDBOOT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, gw)
}

fn wait_exit(child: &mut Child, limit: Duration) -> (Option<i32>, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return (st.code(), err);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the run did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The records of one enclave's workload `line K` output must be 1..=n, once each, in order.
fn assert_lines(recs: &[Rec], enclave: &str, n: u64) {
    let mine: Vec<&Rec> = recs.iter().filter(|r| r.enclave == enclave).collect();
    let seqs: Vec<u64> = mine
        .iter()
        .filter(|r| r.kind != "boot")
        .map(|r| r.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{enclave}: sequence numbers not consecutive"
    );
    let lines: Vec<u64> = mine
        .iter()
        .filter(|r| r.kind == "stdout")
        .filter_map(|r| r.text.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(lines.len() as u64, n, "{enclave}: lines");
    assert!(
        lines.iter().enumerate().all(|(i, k)| *k == i as u64 + 1),
        "{enclave}: lines out of order or repeated"
    );
    assert_eq!(
        mine.iter().filter(|r| r.kind == "boot").count(),
        1,
        "{enclave}: one boot marker"
    );
    let status: Vec<&&Rec> = mine.iter().filter(|r| r.kind == "status").collect();
    assert_eq!(status.len(), 1, "{enclave}: one status");
    assert_eq!(
        status[0].text,
        r#"{"exit_code":0,"reason":"the workload exited"}"#
    );
    assert_eq!(
        mine.last().unwrap().kind,
        "status",
        "{enclave}: the status is last"
    );
}

#[test]
fn a_sink_restart_loses_and_repeats_nothing_and_the_workload_lives() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let cfg_path = work.path().join("host.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
            sock.display(),
            file.display()
        ),
    )
    .unwrap();
    let host = Host::start_cmd(cidboot(), &cfg_path, &[]);
    let img = probe_workload(&[
        "count", "50000", "sleep", "2000", "count", "50000", "exit", "0",
    ]);
    let (mut run, _gw) = run_to_sink(&img, work.path(), &sock, "busy");
    // Mid-stream: SIGTERM, two seconds down (the documented unit's RestartSec), restart.
    wait_record(
        &file,
        Duration::from_secs(60),
        "no lines from the workload",
        |r| r.iter().filter(|r| r.text.starts_with("line ")).count() > 2000,
    );
    let st = host.stop();
    assert!(st.success(), "SIGTERM: {st:?}");
    let written = read_records(&file).len();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        run.try_wait().unwrap().is_none(),
        "the workload died with the sink"
    );
    let host = Host::start_cmd(cidboot(), &cfg_path, &[]);
    let (code, err) = wait_exit(&mut run, Duration::from_secs(120));
    assert_eq!(code, Some(0), "{err}");
    host.wait_for("enclave reported its status", Duration::from_secs(10));
    host.wait_for("a boot reconnected to the log sink", Duration::from_secs(1));
    let recs = read_records(&file);
    assert!(recs.len() > written, "nothing after the restart");
    assert_lines(&recs, "busy", 100_000);
}

#[test]
fn two_enclaves_log_at_once_past_a_stuck_one_and_cannot_forge_a_status() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    let cfg = format!(
        "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        sock.display(),
        file.display()
    );
    let host = Host::start(&cfg, work.path());
    // A stuck peer: a hello, half a record, then silence.
    let mut stuck = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    stuck
        .write_all(&frame(
            5,
            0,
            &raw_hello("000000000000000000000000000000ff", "stuck"),
        ))
        .unwrap();
    stuck
        .write_all(&frame(1, 1, b"never finished")[..8])
        .unwrap();
    let forged = "x\n2026-01-01T00:00:00Z a 99 [status] {\"exit_code\":0,\"reason\":\"forged\"}\r[status] {}";
    // Each pauses halfway, so both are connected and writing at the same time.
    let a = probe_workload(&[
        "print", forged, "count", "10000", "sleep", "3000", "count", "10000", "exit", "0",
    ]);
    let b = probe_workload(&[
        "count", "10000", "sleep", "3000", "count", "10000", "exit", "0",
    ]);
    let (mut ra, _ga) = run_to_sink(&a, work.path(), &sock, "a");
    let (mut rb, _gb) = run_to_sink(&b, work.path(), &sock, "b");
    let (ca, ea) = wait_exit(&mut ra, Duration::from_secs(120));
    let (cb, eb) = wait_exit(&mut rb, Duration::from_secs(120));
    assert_eq!((ca, cb), (Some(0), Some(0)), "{ea}\n{eb}");
    host.wait_for(
        "reason=half a record, then nothing for 10s",
        Duration::from_secs(15),
    );
    let recs = read_records(&file);
    assert_lines(&recs, "a", 20_000);
    assert_lines(&recs, "b", 20_000);
    // Both wrote at the same time: their records interleave.
    let first_b = recs.iter().position(|r| r.enclave == "b").unwrap();
    let last_a = recs.iter().rposition(|r| r.enclave == "a").unwrap();
    assert!(
        first_b < last_a,
        "the enclaves were served one after the other"
    );
    // The forged status stayed text of a stdout record, escaped onto its line.
    let statuses: Vec<&Rec> = recs.iter().filter(|r| r.kind == "status").collect();
    assert_eq!(statuses.len(), 2);
    assert!(statuses.iter().all(|r| !r.text.contains("forged")));
    assert!(recs.iter().any(|r| r.enclave == "a"
        && r.kind == "stdout"
        && r.text
            .contains("[status] {\"exit_code\":0,\"reason\":\"forged\"}\\r[status] {}")));
    assert!(!recs
        .iter()
        .any(|r| r.enclave == "stuck" && r.kind == "stdout"));
    // /metrics: three boots (a, b and the stuck one), two statuses, every record.
    let mut m = TcpStream::connect(host.addr("metrics")).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
    let mut body = String::new();
    m.read_to_string(&mut body).unwrap();
    let written = recs.iter().filter(|r| r.kind != "boot").count();
    for want in [
        "cidboot_boots_total 3".to_string(),
        "cidboot_exit_statuses_total{exit_code=\"0\"} 2".to_string(),
        format!("cidboot_log_records_total {written}"),
    ] {
        assert!(body.contains(&want), "{want} missing from {body}");
    }
}

#[test]
fn sighup_reopens_the_log_and_rereads_the_boot_configuration() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let boot_sock = work.path().join("boot.sock");
    let file = work.path().join("enclave.log");
    let enclave = work.path().join("enclave.toml");
    let v1 = "image = \"ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy\"\n";
    std::fs::write(&enclave, v1).unwrap();
    let cfg = format!(
        "[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n\n[boot]\nlisten = \"unix:{}\"\nconfig = \"{}\"\n",
        sock.display(),
        file.display(),
        boot_sock.display(),
        enclave.display()
    );
    let host = Host::start(&cfg, work.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fetch = || {
        rt.block_on(cidboot::relay::bootcfg::fetch(
            &format!("unix:{}", boot_sock.display()).parse().unwrap(),
            Duration::from_secs(5),
        ))
        .unwrap()
        .config
        .unwrap()
    };
    assert_eq!(fetch(), v1.as_bytes());
    host.wait_for(
        &format!("sha256=sha256:{}", common::sha256_hex(v1.as_bytes())),
        Duration::from_secs(5),
    );
    let (sender, task) = rt.block_on(async {
        use cidboot::relay::logs::LogSender;
        let addr = format!("unix:{}", sock.display()).parse().unwrap();
        LogSender::connect(&addr, Duration::from_secs(5), Some("rot"))
            .await
            .unwrap()
    });
    use cidboot::relay::logs::Kind;
    for i in 0..10 {
        rt.block_on(sender.send(Kind::Stdout, format!("before {i}").into_bytes()))
            .unwrap();
    }
    wait_record(&file, Duration::from_secs(10), "before", |r| {
        r.iter().any(|r| r.text == "before 9")
    });
    // logrotate: move the file away, SIGHUP; and a new boot configuration meanwhile.
    let rotated = work.path().join("enclave.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let v2 = format!("{v1}# edited\n");
    std::fs::write(&enclave, &v2).unwrap();
    host.signal(nix::sys::signal::Signal::SIGHUP);
    host.wait_for("log file reopened", Duration::from_secs(5));
    for i in 0..10 {
        rt.block_on(sender.send(Kind::Stdout, format!("after {i}").into_bytes()))
            .unwrap();
    }
    drop(sender);
    rt.block_on(task).unwrap().unwrap();
    let old = read_records(&rotated);
    let new = read_records(&file);
    assert!(old.iter().all(|r| !r.text.starts_with("after")));
    assert_eq!(
        new.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
        (0..10).map(|i| format!("after {i}")).collect::<Vec<_>>()
    );
    assert_eq!(new[0].seq, 11, "the numbering goes on across the rotation");
    assert_eq!(fetch(), v2.as_bytes());
    host.wait_for(
        &format!("sha256=sha256:{}", common::sha256_hex(v2.as_bytes())),
        Duration::from_secs(5),
    );
    // A configuration the enclave would refuse is reported, and the last good one served.
    std::fs::write(&enclave, "gateways = []\n").unwrap();
    host.signal(nix::sys::signal::Signal::SIGHUP);
    host.wait_for(
        "still serving the previous boot configurations",
        Duration::from_secs(5),
    );
    assert_eq!(fetch(), v2.as_bytes());
    // The daemon is still there.
    assert!(host.count("cidboot host ready") == 1);
}

#[test]
fn boot_configuration_is_served_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let enclave = work.path().join("enclave.toml");
    let body = "image = \"ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy\"\n# comment kept\n";
    std::fs::write(&enclave, body).unwrap();
    let sock = work.path().join("boot.sock");
    let cfg = format!(
        "[boot]\nlisten = \"unix:{}\"\nconfig = \"{}\"\n",
        sock.display(),
        enclave.display()
    );
    let _host = Host::start(&cfg, work.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = rt
        .block_on(cidboot::relay::bootcfg::fetch(
            &format!("unix:{}", sock.display()).parse().unwrap(),
            Duration::from_secs(5),
        ))
        .unwrap();
    assert_eq!(got.config.unwrap(), body.as_bytes());
    assert_eq!(got.secrets, None);
}

fn host_fails(config: &str) -> String {
    let work = tempfile::tempdir().unwrap();
    let p = work.path().join("bad.toml");
    std::fs::write(&p, config).unwrap();
    let o = cidboot()
        .args(["host", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!o.status.success(), "accepted: {config}");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn bad_host_configurations_are_refused_clearly() {
    assert!(
        host_fails("[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"*:443\"]\n")
            .contains("allowlist pattern \"*:443\"")
    );
    assert!(host_fails("[egress]\nlisten = \"http://x\"\nallow = []\n").contains("unknown scheme"));
    assert!(host_fails("[egres]\nlisten = \"tcp:127.0.0.1:0\"\n").contains("unknown field"));
    assert!(host_fails("").contains("no service configured"));
    let e = host_fails(
        "[boot]\nlisten = \"tcp:127.0.0.1:0\"\nconfig = \"/nonexistent/enclave.toml\"\n",
    );
    assert!(
        e.contains("boot.config") && e.contains("/nonexistent/enclave.toml"),
        "{e}"
    );
    assert!(host_fails("[boot]\nlisten = \"tcp:127.0.0.1:0\"\n").contains("[boot] needs config"));
}

#[test]
fn the_enclave_side_proxy_enforces_its_own_policy_through_the_parent() {
    use cidboot::relay::allow::Allowlist;
    use cidboot::relay::proxy::{Proxy, ProxyLimits};
    use cidboot::transport::connect::ConnectProxy;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = echo_server(&rt);
    let other = echo_server(&rt);
    let work = tempfile::tempdir().unwrap();
    // The parent allows both echo servers; the enclave's measured policy allows only one.
    let cfg = format!("[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"localhost:{echo}\", \"localhost:{other}\"]\nallow_private_destinations = true\n");
    let host = Host::start(&cfg, work.path());
    let parent: cidboot::transport::addr::Addr = format!("tcp:{}", host.addr("egress proxy"))
        .parse()
        .unwrap();
    let inner = Arc::new(Proxy {
        name: "enclave",
        allow: Allowlist::new(&[format!("localhost:{echo}")]).unwrap(),
        limits: ProxyLimits::default(),
        dialer: Arc::new(ConnectProxy { proxy: parent }),
    });
    let l = rt.block_on(async {
        "tcp:127.0.0.1:0"
            .parse::<cidboot::transport::addr::Addr>()
            .unwrap()
            .bind()
            .await
            .unwrap()
    });
    let local = l.local_addr().unwrap().to_string();
    rt.spawn(inner.serve(l));
    let local = local.strip_prefix("tcp:").unwrap().to_string();
    let (status, mut s) = proxy_request(&local, &connect_req(&format!("localhost:{echo}")));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    s.write_all(b"two hops").unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two hops");
    let (status, _) = proxy_request(&local, &connect_req(&format!("localhost:{other}")));
    assert!(
        status.starts_with("HTTP/1.1 403"),
        "the enclave's policy: {status}"
    );
}

/// A minimal HTTP server answering 200 "ok" to anything.
fn http_server(rt: &tokio::runtime::Runtime) -> u16 {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = l.local_addr().unwrap().port();
    rt.spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    port
}

#[test]
fn run_goes_out_through_the_parent_and_reports_to_its_sink() {
    use serde_json::json;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let allowed = http_server(&rt);
    let denied = http_server(&rt);
    let work = tempfile::tempdir().unwrap();
    let img = common::image_from_tars(
        &[common::tar_entries(&[common::TarEntry::File {
            path: "bin/probe",
            data: std::fs::read(common::sample_bin("probe")).unwrap(),
            mode: 0o755,
        }])],
        json!({"Entrypoint": ["/bin/probe"], "Cmd": [
            "http-get", format!("http://localhost:{allowed}/"),
            "http-get", format!("http://localhost:{denied}/"),
            "exit", "3"
        ]}),
    );
    let (reference, gw) = common::publish(&img, work.path());
    let gw_port = gw.url.rsplit(':').next().unwrap().to_string();
    let sock = work.path().join("logs.sock");
    let file = work.path().join("enclave.log");
    // The parent allows the gateway and both servers; the enclave's policy only one server.
    let host_cfg = format!(
        "[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"127.0.0.1:{gw_port}\", \"localhost:{allowed}\", \"localhost:{denied}\"]\nallow_private_destinations = true\n\n[logs]\nlisten = \"unix:{}\"\nfile = \"{}\"\n",
        sock.display(),
        file.display()
    );
    let host = Host::start(&host_cfg, work.path());
    let egress = host.addr("egress proxy");
    let enclave_cfg = work.path().join("enclave.toml");
    std::fs::write(
        &enclave_cfg,
        format!("[egress]\nallow = [\"localhost:{allowed}\"]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let o = cidboot()
        .args([
            "run",
            &reference,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
            "--nsm",
            "software",
            "--attestation-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--parent-egress",
            &format!("tcp:{egress}"),
            "--log-sink",
            &format!("unix:{}", sock.display()),
        ])
        .arg("--config")
        .arg(&enclave_cfg)
        .env("CIDBOOT_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The image itself came through the parent's proxy.
    host.wait_for(
        &format!("target=127.0.0.1:{gw_port} decision=\"allow\""),
        Duration::from_secs(5),
    );
    host.wait_for("log sink disconnected", Duration::from_secs(10));
    let log = std::fs::read_to_string(&file).unwrap();
    assert!(
        log.contains(&format!(
            "[stdout] probe: http-get http://localhost:{allowed}/ status=200"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "[stdout] probe: http-get http://localhost:{denied}/ status=403"
        )),
        "{log}"
    );
    assert!(
        log.contains("[stdout] probe: env HTTPS_PROXY=http://127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains("[stdout] probe: env NO_PROXY=localhost,127.0.0.1,::1"),
        "{log}"
    );
    assert!(
        log.trim_end()
            .ends_with(r#"[status] {"exit_code":3,"reason":"the workload exited"}"#),
        "{log}"
    );
}

#[test]
fn an_allowed_name_resolving_into_the_parents_own_network_is_refused_by_default() {
    // `localhost` is allowed by name, but it resolves to loopback: the parent must not be
    // steered into its own network (its metadata service, say) by a name's DNS.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = echo_server(&rt);
    let work = tempfile::tempdir().unwrap();
    let cfg = format!("[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"localhost:{echo}\", \"127.0.0.1:{echo}\"]\n");
    let host = Host::start(&cfg, work.path());
    let proxy = host.addr("egress proxy");
    let (status, mut s) = proxy_request(&proxy, &connect_req(&format!("localhost:{echo}")));
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    assert!(!status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        body.contains("resolves only to internal addresses")
            && body.contains("allow_private_destinations"),
        "{status} {body}"
    );
    // An IP literal that the allowlist names explicitly is taken as given.
    let (status, _) = proxy_request(&proxy, &connect_req(&format!("127.0.0.1:{echo}")));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

/// `cidboot host --check` on a configuration: exit code, stdout and stderr.
fn check(work: &Path, config: &str) -> (bool, String) {
    let p = work.join(format!("check-{}.toml", fastrand::u32(..)));
    std::fs::write(&p, config).unwrap();
    let o = cidboot()
        .args(["host", "--check", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains(p.to_str().unwrap()),
        "the host configuration is named: {text}"
    );
    (o.status.success(), text)
}

#[test]
fn check_refuses_each_bad_configuration_naming_the_file_and_the_key() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let write = |name: &str, body: &str| {
        let p = w.join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let good = write(
        "good.toml",
        "image = \"ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy\"\n",
    );
    let noimage = write("noimage.toml", "gateways = [\"https://ipfs.io\"]\n");
    let placeholder = write("placeholder.toml", "image = \"ipfs://<CID>\"\n");
    let broken = write("broken.toml", "image = \"ipfs://bafybeigdyrzt\"\n");
    let unknown = write("unknown.toml", "imag = \"x\"\n");
    let boot =
        |config: &str| format!("[boot]\nlisten = \"tcp:127.0.0.1:0\"\nconfig = \"{config}\"\n");
    let ok = format!(
        "{}\n[boot.enclaves]\n16 = \"{good}\"\n\n[logs]\nlisten = \"tcp:127.0.0.1:0\"\nfile = \"{}/enclave.log\"\n\n[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"ipfs.io:443\"]\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        boot(&good),
        w.display()
    );
    let (passed, text) = check(w, &ok);
    assert!(passed, "{text}");
    assert!(
        !w.join("enclave.log").exists(),
        "--check created the log file"
    );
    let missing = format!("{}/no/such/dir/enclave.log", w.display());
    for (config, wants) in [
        (
            boot(&noimage),
            vec!["boot.config", noimage.as_str(), "no `image`"],
        ),
        (
            boot(&placeholder),
            vec!["boot.config", placeholder.as_str(), "placeholder"],
        ),
        (boot(&broken), vec!["boot.config", broken.as_str(), "image"]),
        (
            boot(&unknown),
            vec!["boot.config", unknown.as_str(), "unknown field"],
        ),
        (
            format!("{}\n[boot.enclaves]\n16 = \"{noimage}\"\n", boot(&good)),
            vec!["boot.enclaves.16", noimage.as_str(), "no `image`"],
        ),
        (
            format!("{}\n[boot.enclaves]\nweb = \"{good}\"\n", boot(&good)),
            vec!["boot.enclaves.web", "enclave CID"],
        ),
        (
            format!("[logs]\nlisten = \"tcp:127.0.0.1:0\"\nfile = \"{missing}\"\n"),
            vec!["logs.file", missing.as_str()],
        ),
        (
            "[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"https://ipfs.io:443\"]\n"
                .to_string(),
            vec![
                "egress.allow",
                "https://ipfs.io:443",
                "without a scheme",
                "\"ipfs.io:443\"",
            ],
        ),
        (
            "[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"ipfs.io/ipfs:443\"]\n".to_string(),
            vec!["egress.allow", "without a path"],
        ),
        (
            "[metrics]\nlisten = \"0.0.0.0:9464\"\n[heartbeat]\nlisten = \"tcp:127.0.0.1:0\"\n"
                .to_string(),
            vec!["metrics.listen", "not a loopback address"],
        ),
    ] {
        let (passed, text) = check(w, &config);
        assert!(!passed, "accepted: {config}");
        for want in wants {
            assert!(text.contains(want), "{want:?} missing from: {text}");
        }
    }
    // Without --check the same error comes before anything listens.
    let p = w.join("bad-log.toml");
    std::fs::write(
        &p,
        format!("[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = []\n\n[logs]\nlisten = \"tcp:127.0.0.1:0\"\nfile = \"{missing}\"\n"),
    )
    .unwrap();
    let o = cidboot()
        .args(["host", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("logs.file") && err.contains(&missing), "{err}");
    assert!(!err.contains("listening on"), "bound before failing: {err}");
}

/// `host --check` looks at the machine the way a start would need it and names every
/// problem at once: a missing launcher program, EIF, socket or log directory, a CA file, two
/// services on one address, an address that is not this machine's.
#[test]
fn check_names_every_missing_part_of_the_machine_at_once() {
    let work = tempfile::tempdir().unwrap();
    let w = w_str(work.path());
    std::fs::write(format!("{w}/a-file"), b"not a directory").unwrap();
    let config = format!(
        "[logs]\nlisten = \"unix:{w}/no-run/logs.sock\"\nfile = \"{w}/no-log/enclave.log\"\n\n\
         [heartbeat]\nlisten = \"unix:{w}/no-run/logs.sock\"\n\n\
         [egress]\nlisten = \"tcp:192.0.2.7:8000\"\nallow = []\n\n\
         [cache]\nlisten = \"tcp:127.0.0.1:0\"\ndir = \"{w}/a-file/cache\"\ngateways = [\"https://ipfs.io\"]\nca = \"{w}/no-ca.pem\"\n\n\
         [enclave]\neif = \"{w}/no.eif\"\nmemory_mib = 512\ncpu_count = 2\ncid = 16\nnitro_cli = \"{w}/no-nitro-cli\"\n"
    );
    let (passed, text) = check(work.path(), &config);
    assert!(!passed, "{text}");
    for want in [
        "problems:",
        &format!("logs.listen unix:{w}/no-run/logs.sock: its directory {w}/no-run"),
        &format!("logs.file {w}/no-log/enclave.log"),
        "heartbeat.listen",
        "logs.listen listens there too",
        "egress.listen 192.0.2.7:8000: not an address of this machine",
        &format!("{w}/a-file"),
        &format!("cache.ca: CA file {w}/no-ca.pem"),
        &format!("[enclave] eif {w}/no.eif"),
        &format!("[enclave] nitro_cli {w}/no-nitro-cli"),
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }

    // A bare program name is looked up on PATH; QEMU's programs, firmware and socket directory.
    let eif = format!("{w}/x.eif");
    std::fs::write(&eif, b"an EIF").unwrap();
    std::fs::create_dir(format!("{w}/fw")).unwrap();
    std::fs::write(format!("{w}/fw/bios-microvm.bin"), b"fw").unwrap();
    let nitro = format!(
        "[enclave]\neif = \"{eif}\"\nmemory_mib = 512\ncpu_count = 2\ncid = 16\nnitro_cli = \"cidboot-no-such-nitro-cli\"\nrestart_backoff_secs = 0\npoll_secs = 0\n"
    );
    let (passed, text) = check(work.path(), &nitro);
    assert!(!passed, "{text}");
    for want in [
        "nitro_cli cidboot-no-such-nitro-cli: not found on PATH",
        "restart_backoff_secs",
        "poll_secs",
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    let qemu = format!(
        "[enclave]\nlauncher = \"qemu\"\neif = \"{eif}\"\nmemory_mib = 256\ncpu_count = 1\ncid = 4\n\
         [enclave.qemu]\nqemu = \"{w}/no-qemu\"\nfirmware = \"{w}/fw\"\nvhost_device_vsock = \"{w}/x.eif\"\nuds_path = \"{w}/no-run/vsock\"\n"
    );
    let (passed, text) = check(work.path(), &qemu);
    assert!(!passed, "{text}");
    for want in [
        &format!("qemu.qemu {w}/no-qemu: No such file"),
        &format!("qemu.vhost_device_vsock {w}/x.eif: not executable"),
        &format!("qemu.firmware {w}/fw: has no linuxboot_dma.bin"),
        &format!("qemu.uds_path {w}/no-run/vsock: its directory {w}/no-run"),
    ] {
        assert!(text.contains(want), "{want:?} missing from: {text}");
    }
    assert!(!text.contains("bios-microvm.bin"), "{text}");

    // With every part in place the same sections pass, and nothing was created.
    std::fs::create_dir(format!("{w}/run")).unwrap();
    let program = format!("{w}/program");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(format!("{w}/fw/linuxboot_dma.bin"), b"fw").unwrap();
    let good = format!(
        "[logs]\nlisten = \"unix:{w}/run/vsock_8002\"\nfile = \"{w}/enclave.log\"\n\n\
         [enclave]\nlauncher = \"qemu\"\neif = \"{eif}\"\nmemory_mib = 256\ncpu_count = 1\ncid = 4\n\
         [enclave.qemu]\nqemu = \"{program}\"\nfirmware = \"{w}/fw\"\nvhost_device_vsock = \"{program}\"\nuds_path = \"{w}/run/vsock\"\n"
    );
    let (passed, text) = check(work.path(), &good);
    assert!(passed, "{text}");
    assert_eq!(std::fs::read_dir(format!("{w}/run")).unwrap().count(), 0);
}

fn w_str(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn six_hundred_tunnels_under_a_1024_descriptor_limit_get_512_tunnels_and_503s() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = echo_server(&rt);
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("host.toml");
    let notify = work.path().join("notify.sock");
    let notified = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    std::fs::write(
        &cfg,
        egress_config(echo, "\n[metrics]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    // systemd's default: a soft limit of 1024 under a higher hard one.
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=1024:4096")
        .arg("--")
        .arg(cidboot().get_program())
        .env("NOTIFY_SOCKET", &notify);
    let host = Host::start_cmd(cmd, &cfg, &[]);
    host.wait_for("soft=4096 hard=4096", Duration::from_secs(1));
    let mut buf = [0u8; 64];
    notified
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = notified.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let proxy = host.addr("egress proxy");
    let (ok, busy) = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        for _ in 0..600 {
            let proxy = proxy.clone();
            let mut done = done_tx.subscribe();
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
                s.write_all(connect_req(&format!("localhost:{echo}")).as_bytes())
                    .await
                    .unwrap();
                let mut head = Vec::new();
                let r = tokio::time::timeout(Duration::from_secs(20), async {
                    while !head.ends_with(b"\r\n\r\n") {
                        head.push(s.read_u8().await?);
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                let status = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let answered = matches!(r, Ok(Ok(())));
                // Tunnels stay open until every client has its answer.
                if status.starts_with("HTTP/1.1 200") {
                    let _ = done.recv().await;
                }
                (answered, status)
            }));
        }
        let start = Instant::now();
        let (mut ok, mut busy) = (0, 0);
        let mut handles = tasks.into_iter().collect::<Vec<_>>();
        // The 503s finish first; once 600 - 512 have, every tunnel is up.
        while start.elapsed() < Duration::from_secs(30) {
            let finished = handles.iter().filter(|h| h.is_finished()).count();
            if finished >= 88 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = done_tx.send(());
        for h in handles.drain(..) {
            let (answered, status) = h.await.unwrap();
            assert!(answered, "a client got no answer: {status:?}");
            if status.starts_with("HTTP/1.1 200") {
                ok += 1;
            } else if status.starts_with("HTTP/1.1 503") {
                busy += 1;
            } else {
                panic!("unexpected answer {status:?}");
            }
        }
        (ok, busy)
    });
    assert_eq!((ok, busy), (512, 88));
    assert_eq!(host.count("decision=\"refuse\""), 88);
    // /metrics counts what happened.
    let mut m = TcpStream::connect(host.addr("metrics")).unwrap();
    m.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    m.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("cidboot_egress_requests_total{decision=\"allow\"} 512"),
        "{body}"
    );
    assert!(
        body.contains("cidboot_egress_requests_total{decision=\"refuse\"} 88"),
        "{body}"
    );
}

#[test]
fn out_of_descriptors_every_tunnel_client_still_gets_an_answer() {
    // Soft and hard limit 1024: the daemon cannot raise it, and runs out before 512 tunnels.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echo = echo_server(&rt);
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("host.toml");
    std::fs::write(&cfg, egress_config(echo, "")).unwrap();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--nofile=1024:1024")
        .arg("--")
        .arg(cidboot().get_program());
    let host = Host::start_cmd(cmd, &cfg, &[]);
    host.wait_for("tunnels=480", Duration::from_secs(1));
    let proxy = host.addr("egress proxy");
    let answers = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (done_tx, _) = tokio::sync::broadcast::channel::<()>(1);
        let mut tasks = Vec::new();
        for _ in 0..600 {
            let proxy = proxy.clone();
            let mut done = done_tx.subscribe();
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(&proxy).await.unwrap();
                let _ = s
                    .write_all(connect_req(&format!("localhost:{echo}")).as_bytes())
                    .await;
                let mut head = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(20), async {
                    while !head.ends_with(b"\r\n\r\n") {
                        head.push(s.read_u8().await?);
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                let status = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                if status.starts_with("HTTP/1.1 200") {
                    let _ = done.recv().await;
                }
                status
            }));
        }
        // Everything not tunnelled is answered and finishes; once that settles, the tunnels
        // are let go.
        let start = Instant::now();
        let (mut seen, mut since) = (0, Instant::now());
        while start.elapsed() < Duration::from_secs(25) {
            let finished = tasks.iter().filter(|h| h.is_finished()).count();
            if finished != seen {
                (seen, since) = (finished, Instant::now());
            } else if finished > 0 && since.elapsed() > Duration::from_secs(3) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = done_tx.send(());
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        answers
    });
    let count = |p: &str| answers.iter().filter(|s| s.starts_with(p)).count();
    let (ok, busy, bad) = (
        count("HTTP/1.1 200"),
        count("HTTP/1.1 503"),
        count("HTTP/1.1 502"),
    );
    assert_eq!(
        ok + busy + bad,
        600,
        "unanswered: {:?}",
        answers
            .iter()
            .filter(|s| !s.starts_with("HTTP/1.1 "))
            .count()
    );
    // At most (1024 - 64) / 2 tunnels at once; the rest refused (a connect that itself finds
    // no descriptor is answered 502).
    assert!(
        ok <= 480 && busy >= 100 && ok + busy >= 590,
        "{ok} tunnels, {busy} 503s, {bad} 502s"
    );
    // And it serves again once descriptors are free.
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = proxy_request(&proxy, &connect_req(&format!("localhost:{echo}")));
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
}

#[test]
fn json_logs_and_records() {
    let work = tempfile::tempdir().unwrap();
    let sock = work.path().join("logs.sock");
    let cfg = work.path().join("host.toml");
    std::fs::write(
        &cfg,
        format!("[logs]\nlisten = \"unix:{}\"\n", sock.display()),
    )
    .unwrap();
    let host = Host::start_cmd(cidboot(), &cfg, &["--json"]);
    let ready = host.wait_for("cidboot host ready", Duration::from_secs(1));
    let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        (v["level"].as_str(), v["message"].as_str()),
        (Some("info"), Some("cidboot host ready"))
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use cidboot::relay::logs::{Kind, LogSender};
        let addr = format!("unix:{}", sock.display()).parse().unwrap();
        let (s, task) = LogSender::connect(&addr, Duration::from_secs(5), Some("j"))
            .await
            .unwrap();
        s.send(Kind::Stderr, b"two\nlines \x1b".to_vec())
            .await
            .unwrap();
        drop(s);
        task.await.unwrap().unwrap();
    });
    host.wait_for("log sink disconnected", Duration::from_secs(5));
    // The records arrive on stdout, read apart from stderr: give them the same time.
    let start = Instant::now();
    while host.records.lock().unwrap().len() < 2 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let recs: Vec<serde_json::Value> = host
        .records
        .lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!(recs[0]["kind"], "boot");
    assert_eq!(
        (
            &recs[1]["enclave"],
            &recs[1]["seq"],
            &recs[1]["kind"],
            &recs[1]["text"]
        ),
        (
            &serde_json::json!("j"),
            &serde_json::json!(1),
            &serde_json::json!("stderr"),
            &serde_json::json!("two\nlines \u{1b}")
        )
    );
}
