//! `cidboot host` over tcp and unix addresses: the egress allowlist and its bounds, many
//! concurrent tunnels, ingress, the log sink under 100k lines, the boot configuration, and
//! bad input that must not stop the daemon.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

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

/// A running `cidboot host`, its stdout collected line by line.
struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn start(config: &str, work: &Path) -> Host {
        let path = work.join(format!("host-{}.toml", fastrand::u32(..)));
        std::fs::write(&path, config).unwrap();
        let mut child = cidboot()
            .args(["host", "--config"])
            .arg(&path)
            .env("CIDBOOT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap().push(line);
            }
        });
        let h = Host { child, lines };
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
        let (sender, task) = LogSender::connect(&addr, Duration::from_secs(5))
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
        task.await.unwrap().unwrap();
    });
    host.wait_for("log sink disconnected", Duration::from_secs(30));
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100_001);
    for (i, l) in lines[..100_000].iter().enumerate() {
        assert_eq!(*l, format!("[stdout] {}", i + 1));
    }
    assert_eq!(
        lines[100_000],
        r#"[status] {"exit_code":0,"reason":"exited"}"#
    );
    // Garbage on the channel closes that connection only.
    let mut g = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    g.write_all(&[9, 0, 0, 0, 1, b'x']).unwrap();
    host.wait_for("unknown record kind 9", Duration::from_secs(5));
    let mut ok = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    ok.write_all(&[1, 0, 0, 0, 5]).unwrap();
    ok.write_all(b"after").unwrap();
    drop(ok);
    host.wait_for("[stdout] after", Duration::from_secs(5));
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
    assert_eq!(got, body.as_bytes());
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
