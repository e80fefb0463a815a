//! Transparent egress under `cidboot run`: a workload with no proxy settings reaches the
//! measured allowlist by name (real curl over TLS, real redis-cli to a real redis-server, raw
//! TCP), and nothing else. The parent's egress is a CONNECT proxy here that records what it was
//! asked and reaches every name on 127.0.0.1 (the test names resolve nowhere on this machine),
//! or a real `cidboot host`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

/// Copies both ways until both ends close.
fn pipe(a: TcpStream, b: TcpStream) {
    let (mut ar, mut bw) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut ar, &mut bw);
        let _ = bw.shutdown(std::net::Shutdown::Write);
    });
    let (mut br, mut aw) = (b, a);
    let _ = std::io::copy(&mut br, &mut aw);
    let _ = aw.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
}

/// The parent's egress as far as the enclave sees it: HTTP CONNECT. Every `host:port` asked is
/// recorded, and reached at 127.0.0.1:port.
fn recording_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("tcp:{}", l.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if c.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let line = String::from_utf8_lossy(&head)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let target = line.split(' ').nth(1).unwrap_or("").to_string();
                seen.lock().unwrap().push(target.clone());
                let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(up) => {
                        c.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .unwrap();
                        pipe(c, up);
                    }
                    Err(_) => {
                        let _ =
                            c.write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n");
                    }
                }
            });
        }
    });
    (addr, asked)
}

/// A TCP echo server on 127.0.0.1.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// `openssl s_server -www` for `web.test`, with its CA's certificate.
fn https_server(work: &Path) -> (KillOnDrop, u16, Vec<u8>) {
    let (key, cert) = (work.join("web.key"), work.join("web.pem"));
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=web.test",
            "-addext",
            "subjectAltName=DNS:web.test",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let port = free_port();
    let child = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
        ])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    wait_for_port(port);
    (child, port, std::fs::read(&cert).unwrap())
}

fn redis_server(work: &Path) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(work)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup-tools.sh installs it)");
    let child = KillOnDrop(child);
    wait_for_port(port);
    (child, port)
}

/// The programs, as this machine has them, with every library `ldd` names: a layer in
/// which a dynamically linked client runs as it does here.
fn host_programs(programs: &[(&str, &str)]) -> Vec<u8> {
    let mut files: Vec<(String, PathBuf, u32)> = Vec::new();
    for (at, from) in programs {
        files.push((
            at.trim_start_matches('/').to_string(),
            PathBuf::from(from),
            0o755,
        ));
        let o = Command::new("ldd").arg(from).output().unwrap();
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            let path = match line.split("=>").nth(1) {
                Some(r) => r.split_whitespace().next().unwrap_or(""),
                None => line.split_whitespace().next().unwrap_or(""),
            };
            if path.starts_with('/') {
                let rel = path.trim_start_matches('/').to_string();
                if !files.iter().any(|(r, _, _)| *r == rel) {
                    files.push((rel, PathBuf::from(path), 0o755));
                }
            }
        }
    }
    let mut dirs: Vec<String> = Vec::new();
    for (rel, _, _) in &files {
        for d in Path::new(rel).ancestors().skip(1) {
            let d = d.to_str().unwrap().to_string();
            if !d.is_empty() && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs.sort_by_key(|d| d.matches('/').count());
    let data: Vec<(String, Vec<u8>, u32)> = files
        .iter()
        .map(|(rel, from, mode)| (rel.clone(), std::fs::read(from).unwrap(), *mode))
        .collect();
    let mut entries: Vec<TarEntry> = dirs
        .iter()
        .map(|d| TarEntry::Dir {
            path: d,
            mode: 0o755,
            uid: 0,
        })
        .collect();
    for (rel, bytes, mode) in &data {
        entries.push(TarEntry::File {
            path: rel,
            data: bytes.clone(),
            mode: *mode,
        });
    }
    tar_entries(&entries)
}

fn which(p: &str) -> String {
    let o = Command::new("sh")
        .args(["-c", &format!("command -v {p}")])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        !s.is_empty(),
        "{p} is not installed (scripts/setup-tools.sh installs it)"
    );
    std::fs::canonicalize(s)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

fn client_image(script: &str, ca: &[u8]) -> Image {
    let progs = host_programs(&[
        ("/bin/sh", &which("dash")),
        ("/usr/bin/curl", &which("curl")),
        ("/usr/bin/redis-cli", &which("redis-cli")),
    ]);
    let ca = tar_entries(&[TarEntry::File {
        path: "etc/web-ca.pem",
        data: ca.to_vec(),
        mode: 0o644,
    }]);
    image_from_tars(
        &[base_layer(), progs, ca],
        json!({ "Entrypoint": ["/bin/sh", "-c", script], "Env": ["PATH=/usr/bin:/bin"] }),
    )
}

fn transparent_config(allow: &[String], extra: &str) -> String {
    let list: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[egress]\ntransparent = true\nlisten = \"127.0.0.1:0\"\nallow = [{}]\n{extra}",
        list.join(", ")
    )
}

#[test]
fn a_workload_without_proxy_settings_reaches_the_allowlist_by_name_and_nothing_else() {
    let work = tempfile::tempdir().unwrap();
    let (_web, web_port, ca) = https_server(work.path());
    let (_redis, redis_port) = redis_server(work.path());
    let echo = echo_server();
    let (parent, asked) = recording_proxy();
    let script = format!(
        r#"unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy NO_PROXY no_proxy
while read l; do echo "resolv: $l"; done < /etc/resolv.conf
/bin/probe connect echo.test:{echo}
/bin/probe echo-many echo.test:{echo} 200 65536
/bin/probe connect other.test:{echo}
echo "curl-other: $(curl -sS --noproxy '*' --max-time 20 https://other.test:{web_port}/ 2>&1)"
/bin/probe connect echo.test:{redis_port}
/bin/probe connect echo.test:9
/bin/probe connect 10.200.0.1:{echo}
/bin/probe connect 10.201.0.1:{echo}
/bin/probe connect 198.18.1.1:{echo}
page=$(curl -sS --noproxy '*' --max-time 20 --cacert /etc/web-ca.pem https://web.test:{web_port}/ 2>&1)
case "$page" in *s_server*) echo "curl-web: ok" ;; *) echo "curl-web: $page" ;; esac
echo "redis-set: $(redis-cli -h redis.test -p {redis_port} SET cidboot transparent)"
echo "redis-get: $(redis-cli -h redis.test -p {redis_port} GET cidboot)"
"#
    );
    let img = client_image(&script, &ca);
    let cfg = transparent_config(
        &[
            format!("web.test:{web_port}"),
            format!("redis.test:{redis_port}"),
            format!("echo.test:{echo}"),
            format!("10.200.0.0/16:{echo}"),
        ],
        // 200 clients resolving at once ask A and AAAA each: over the default rate.
        "dns_queries_per_sec = 1000\n",
    );
    let r = run_image(&img, Some(&cfg), None, &["--parent-egress", &parent]);
    let all = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    // The probe prints its environment: no proxy variable reached it.
    assert!(
        !r.lines("probe: env ")
            .iter()
            .any(|e| e.to_ascii_lowercase().contains("proxy")),
        "{all}"
    );
    assert_eq!(r.line("resolv: "), "nameserver 127.0.0.1");
    let ip = r.line(&format!("probe: connected echo.test:{echo} "));
    assert!(ip.starts_with("198.18."), "{ip}: {all}");
    // Raw TCP by name, and 200 connections at once, every byte back.
    assert_eq!(
        r.line(&format!("probe: connect echo.test:{echo} ")),
        "data PING"
    );
    assert_eq!(
        r.line(&format!("probe: echo-many echo.test:{echo} ")),
        format!("ok=200 of 200 bytes={}", 200 * 65536)
    );
    // Not on the list: no address at all, and the refusal is logged with the name.
    assert!(
        r.line(&format!("probe: connect other.test:{echo} "))
            .contains("failed to lookup"),
        "{all}"
    );
    assert!(
        r.line("curl-other: ").contains("Could not resolve host"),
        "{all}"
    );
    assert!(
        r.stderr.contains("other.test") && r.stderr.contains("NXDOMAIN"),
        "{}",
        r.stderr
    );
    // An allowlisted name on another allowlisted port, and on a port no pattern has.
    assert_eq!(
        r.line(&format!("probe: connect echo.test:{redis_port} ")),
        "reset"
    );
    assert_eq!(r.line("probe: connect echo.test:9 "), "refused");
    // A listed block reaches its address; one outside it has no route; an address of the
    // resolver's range it never handed out is refused.
    assert_eq!(
        r.line(&format!("probe: connect 10.200.0.1:{echo} ")),
        "data PING"
    );
    assert!(
        r.line(&format!("probe: connect 10.201.0.1:{echo} "))
            .contains("unreachable"),
        "{all}"
    );
    assert_eq!(
        r.line(&format!("probe: connect 198.18.1.1:{echo} ")),
        "reset"
    );
    // TLS to the name, by a client that ignores proxies.
    assert_eq!(r.line("curl-web: "), "ok", "{all}");
    // A real Redis, by name.
    assert_eq!(r.line("redis-set: "), "OK");
    assert_eq!(r.line("redis-get: "), "transparent");
    let o = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "GET", "cidboot"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "transparent");
    // What reached the parent: names and the listed literal, never a resolver address.
    let asked = asked.lock().unwrap().clone();
    assert!(asked.contains(&format!("web.test:{web_port}")), "{asked:?}");
    assert!(
        asked.contains(&format!("redis.test:{redis_port}")),
        "{asked:?}"
    );
    assert!(asked.contains(&format!("10.200.0.1:{echo}")), "{asked:?}");
    assert_eq!(
        asked
            .iter()
            .filter(|a| **a == format!("echo.test:{echo}"))
            .count(),
        201,
        "{asked:?}"
    );
    assert!(
        !asked.iter().any(|a| a.starts_with("198.18.")
            || a.contains("other.test")
            || a.starts_with("10.201.")),
        "{asked:?}"
    );
    for refusal in [
        format!("198.18.1.1:{echo}"),
        format!("echo.test:{redis_port} matches no allowlist pattern"),
    ] {
        assert!(
            r.stderr.contains(&refusal),
            "no refusal {refusal:?} logged: {}",
            r.stderr
        );
    }
}

/// A `cidboot host` with only an egress proxy (internal destinations refused, its default);
/// returns it and the proxy's address.
fn parent_host(allow: &str, work: &Path) -> (KillOnDrop, String, Arc<Mutex<String>>) {
    let cfg = work.join("host.toml");
    // The gateway the run fetches from is on 127.0.0.1, a literal the parent connects to as
    // given.
    std::fs::write(
        &cfg,
        format!("[egress]\nlisten = \"tcp:127.0.0.1:0\"\nallow = [\"{allow}\", \"127.0.0.1:*\"]\n"),
    )
    .unwrap();
    let mut child = cidboot()
        .args(["host", "--config"])
        .arg(&cfg)
        .env("CIDBOOT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let keep = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if let Some(a) = line.split("egress proxy listening on ").nth(1) {
                let _ = tx.send(a.trim().to_string());
            }
            keep.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("cidboot host announces its egress proxy");
    (child, addr, log)
}

#[test]
fn a_name_the_parent_resolves_to_an_internal_address_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let echo = echo_server();
    let (_host, parent, host_log) = parent_host(&format!("localhost:{echo}"), work.path());
    // The workload's resolver hands `localhost` (an allowlisted name) an address of its own
    // range; the parent resolves it to 127.0.0.1 and refuses.
    let img = client_image(&format!("/bin/probe connect localhost:{echo}\n"), b"");
    let cfg = transparent_config(&[format!("localhost:{echo}")], "");
    let r = run_image(&img, Some(&cfg), None, &["--parent-egress", &parent]);
    let all = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    assert!(
        r.stderr
            .contains("dns: answered name=localhost address=198.18."),
        "{all}"
    );
    assert_eq!(
        r.line(&format!("probe: connect localhost:{echo} ")),
        "reset",
        "{all}"
    );
    assert!(
        r.stderr.contains("egress connect failed")
            && r.stderr.contains(&format!("localhost:{echo}")),
        "{}",
        r.stderr
    );
    let host_log = host_log.lock().unwrap().clone();
    assert!(
        host_log.contains(&format!("localhost:{echo}")) && host_log.contains("internal"),
        "{host_log}"
    );
}

#[test]
fn the_resolver_rate_and_the_connection_limit_are_enforced() {
    let echo = echo_server();
    let (parent, _asked) = recording_proxy();
    let img = client_image(
        &format!(
            "/bin/probe echo-many echo.test:{echo} 40 1\n/bin/probe echo-many 10.200.0.1:{echo} 10 1\n"
        ),
        b"",
    );
    let cfg = transparent_config(
        &[format!("echo.test:{echo}"), format!("10.200.0.0/16:{echo}")],
        "dns_queries_per_sec = 5\nmax_connections = 2\n",
    );
    let r = run_image(&img, Some(&cfg), None, &["--parent-egress", &parent]);
    let all = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{all}");
    // 40 clients resolving at once ask 80 questions, 5 a second are answered: most fail.
    let named = r.line(&format!("probe: echo-many echo.test:{echo} "));
    let ok: usize = named[3..].split(' ').next().unwrap().parse().unwrap();
    assert!(ok < 40, "{named}: {all}");
    assert!(
        r.stderr.contains("dns: over the query rate"),
        "{}",
        r.stderr
    );
    // 10 connections at once, each waiting for all to be open: 2 are carried at a time, and
    // those over the limit are reset.
    let literal = r.line(&format!("probe: echo-many 10.200.0.1:{echo} "));
    let ok: usize = literal[3..].split(' ').next().unwrap().parse().unwrap();
    assert!(ok < 10, "{literal}: {all}");
    assert!(
        r.stderr.contains("reason=\"connection limit\""),
        "{}",
        r.stderr
    );
}

#[test]
fn ingress_reaches_a_workload_listening_in_its_own_namespace() {
    let work = tempfile::tempdir().unwrap();
    let progs = host_programs(&[("/usr/bin/redis-server", &which("redis-server"))]);
    let tmp = tar_entries(&[TarEntry::Dir {
        path: "tmp",
        mode: 0o1777,
        uid: 0,
    }]);
    let img = image_from_tars(
        &[base_layer(), progs, tmp],
        json!({
            "Entrypoint": ["/usr/bin/redis-server", "--port", "6390", "--bind", "127.0.0.1",
                           "--save", "", "--appendonly", "no", "--dir", "/tmp"],
        }),
    );
    let (reference, gw) = publish(&img, work.path());
    let port = free_port();
    let cfg = work.path().join("cidboot.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[[ingress]]\nlisten = \"tcp:127.0.0.1:{port}\"\nport = 6390\n",
            transparent_config(&[], "")
        ),
    )
    .unwrap();
    let mut child = cidboot()
        .args([
            "run",
            &reference,
            "--gateway",
            &gw.url,
            "--ca",
            gw.ca.to_str().unwrap(),
        ])
        .arg("--config")
        .arg(&cfg)
        .args(["--attestation-listen", "127.0.0.1:0"])
        .env("CIDBOOT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pong = String::new();
    for _ in 0..300 {
        let o = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .unwrap();
        pong = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if pong == "PONG" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The workload listens on 127.0.0.1 of its own namespace: nothing of it on the host's.
    let direct = TcpStream::connect(("127.0.0.1", 6390)).is_ok();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert_eq!(pong, "PONG");
    assert!(
        !direct,
        "the workload's port is open on the host's loopback"
    );
}
