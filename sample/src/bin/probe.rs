//! A test workload: reports what it was started with, then exits as told.
//! Usage: probe [exit N] [write PATH] [attest NONCE_HEX] [http-get URL] [escape-proc PATH]
//!              [mknod PATH MAJOR MINOR] [mount-devtmpfs DIR] [open PATH] [vsock] [reopen-stdio]
//!              [allocate-forever] [fork-forever] [kms TARGET JSON] [secret NAME|PATH]
//!              [cat PATH] [create PATH] [hold ADDR] [connect ADDR] [echo-many ADDR N BYTES]

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .unwrap_or_default()
}

/// GET through $HTTP_PROXY; returns the status code (or 0 on failure).
fn http_get(url: &str) -> u16 {
    use std::io::{Read, Write};
    let Some(proxy) = std::env::var("HTTP_PROXY").ok().and_then(|p| p.strip_prefix("http://").map(String::from)) else {
        return 0;
    };
    let Ok(mut s) = std::net::TcpStream::connect(proxy.trim_end_matches('/')) else { return 0 };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(20)));
    if s.write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
        return 0;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    String::from_utf8_lossy(&resp).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Connects to ADDR, sends a line and reports how the connection went: `refused`, `reset`,
/// `eof` or `data` (the first line read), or the connect error.
fn connect(addr: &str) -> String {
    use std::io::{ErrorKind, Read, Write};
    let mut s = match std::net::TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return "refused".into(),
        Err(e) => return format!("error {e}"),
    };
    if let Ok(peer) = s.peer_addr() {
        println!("probe: connected {addr} {}", peer.ip());
    }
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    // A reset that came before the write is reported by the write (and then gone).
    match s.write_all(b"PING\r\n") {
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => return "reset".into(),
        _ => {}
    }
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => "eof".into(),
        Ok(n) => format!("data {}", String::from_utf8_lossy(&buf[..n]).trim()),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => "reset".into(),
        Err(e) => format!("error {e}"),
    }
}

/// Opens N connections to ADDR at once; each sends BYTES bytes of its own pattern while
/// reading them back, and counts as ok only if every byte came back in order.
fn echo_many(addr: &str, n: usize, bytes: usize) -> (usize, u64) {
    use std::io::{Read, Write};
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (addr, barrier) = (addr.to_string(), barrier.clone());
            std::thread::spawn(move || -> Option<u64> {
                let s = std::net::TcpStream::connect(&addr).ok();
                // Every connection is open before any byte moves.
                barrier.wait();
                let mut s = s?;
                s.set_read_timeout(Some(std::time::Duration::from_secs(60))).ok()?;
                let data: Vec<u8> = (0..bytes).map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8).collect();
                let mut w = s.try_clone().ok()?;
                let sent = data.clone();
                let writer = std::thread::spawn(move || w.write_all(&sent).is_ok() && w.shutdown(std::net::Shutdown::Write).is_ok());
                let mut back = Vec::with_capacity(bytes);
                s.read_to_end(&mut back).ok()?;
                (writer.join().ok()? && back == data).then_some(back.len() as u64)
            })
        })
        .collect();
    let mut ok = 0;
    let mut total = 0;
    for t in threads {
        if let Ok(Some(b)) = t.join() {
            ok += 1;
            total += b;
        }
    }
    (ok, total)
}

fn main() {
    println!("probe: uid={}", status_field("Uid:"));
    println!("probe: gid={}", status_field("Gid:"));
    println!("probe: groups={}", status_field("Groups:"));
    println!("probe: cwd={}", std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default());
    let mut env: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    for e in env {
        println!("probe: env {e}");
    }
    for f in ["CapEff:", "CapPrm:", "CapBnd:", "CapInh:", "CapAmb:", "NoNewPrivs:", "Seccomp:", "PPid:"] {
        println!("probe: {f}{}", status_field(f));
    }
    println!("probe: nsm={}", if std::path::Path::new("/dev/nsm").exists() { "present" } else { "absent" });
    println!("probe: devnull={}", std::fs::write("/dev/null", b"x").is_ok());
    if let Ok(rd) = std::fs::read_dir("/eigen/bin") {
        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        println!("probe: helpers={}", names.join(","));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("probe: args={}", args.join(" "));
    let mut code = 0;
    let mut counted = 0u64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "exit" => code = it.next().and_then(|c| c.parse().ok()).unwrap_or(1),
            "attest" => match it.next().map(|n| cidboot_sample::attest(n)) {
                Some(Ok(doc)) => println!("probe: attestation={doc}"),
                Some(Err(e)) => {
                    println!("probe: attestation-error={e}");
                    code = 2;
                }
                None => code = 2,
            },
            "http-get" => {
                if let Some(url) = it.next() {
                    println!("probe: http-get {url} status={}", http_get(url));
                }
            }
            "escape-proc" => {
                // Writes PATH through every /proc/N/root this process can see.
                if let Some(p) = it.next() {
                    let mut pids: Vec<String> = std::fs::read_dir("/proc")
                        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                        .unwrap_or_default();
                    pids.retain(|n| n.bytes().all(|b| b.is_ascii_digit()));
                    pids.sort();
                    println!("probe: pids={}", pids.join(","));
                    for pid in pids {
                        let target = format!("/proc/{pid}/root{p}");
                        let r = match std::fs::write(&target, b"escaped") {
                            Ok(()) => "ok".to_string(),
                            Err(e) => cidboot_sample::errno_name(e.raw_os_error().unwrap_or(0)),
                        };
                        println!("probe: escape {target} {r}");
                    }
                }
            }
            "mknod" => {
                let (p, ma, mi) = (it.next(), it.next(), it.next());
                if let (Some(p), Some(ma), Some(mi)) = (p, ma, mi) {
                    let r = cidboot_sample::try_mknod(p, ma.parse().unwrap_or(0), mi.parse().unwrap_or(0));
                    println!("probe: mknod {p} {r}");
                }
            }
            "mount-devtmpfs" => {
                if let Some(d) = it.next() {
                    println!("probe: mount-devtmpfs {d} {}", cidboot_sample::try_mount_devtmpfs(d));
                }
            }
            "open" => {
                if let Some(p) = it.next() {
                    println!("probe: open {p} {}", cidboot_sample::try_open(p));
                }
            }
            "vsock" => println!("probe: vsock {}", cidboot_sample::try_vsock()),
            "kms" => {
                // One call to the KMS proxy: the answer's status, and a hash of its plaintext
                // (never the plaintext) or its error code.
                if let (Some(target), Some(body)) = (it.next(), it.next()) {
                    println!("probe: kms {target} {}", cidboot_sample::kms_summary(target, body));
                }
            }
            "secret" => {
                if let Some(w) = it.next() {
                    println!("probe: {}", cidboot_sample::describe_secret(w));
                }
            }
            "cat" => {
                if let Some(p) = it.next() {
                    match std::fs::read(p) {
                        Ok(b) => println!("probe: cat {p} hex={}", b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
                        Err(e) => println!("probe: cat {p} {}", cidboot_sample::errno_name(e.raw_os_error().unwrap_or(0))),
                    }
                }
            }
            "create" => {
                if let Some(p) = it.next() {
                    let r = match std::fs::OpenOptions::new().write(true).create_new(true).open(p) {
                        Ok(_) => "ok".to_string(),
                        Err(e) => cidboot_sample::errno_name(e.raw_os_error().unwrap_or(0)),
                    };
                    println!("probe: create {p} {r}");
                }
            }
            "allocate-forever" => cidboot_sample::allocate_forever(),
            "fork-forever" => std::process::exit(cidboot_sample::fork_forever()),
            "reopen-stdio" => {
                for fd in 0..3 {
                    println!("probe: reopen-stdio {fd} {}", cidboot_sample::try_reopen_setuid(fd));
                }
            }
            "count" => {
                // `line K` for the next N values of a counter that runs across `count`s.
                let n: u64 = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for _ in 0..n {
                    counted += 1;
                    let _ = writeln!(out, "line {counted}");
                }
                let _ = out.flush();
            }
            "sleep" => {
                let ms: u64 = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            "hold" => {
                // Connects to ADDR and waits until whoever listens there closes the
                // connection; goes on at once if nobody does.
                if let Some(addr) = it.next() {
                    use std::io::{Read, Write};
                    match std::net::TcpStream::connect(addr) {
                        Ok(mut s) => {
                            println!("probe: hold {addr} held");
                            let _ = std::io::stdout().flush();
                            let _ = s.read_to_end(&mut Vec::new());
                            println!("probe: hold {addr} released");
                        }
                        Err(e) => println!("probe: hold {addr} {e}"),
                    }
                }
            }
            "connect" => {
                if let Some(addr) = it.next() {
                    println!("probe: connect {addr} {}", connect(addr));
                }
            }
            "echo-many" => {
                let addr = it.next().cloned().unwrap_or_default();
                let n: usize = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let bytes: usize = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                let (ok, total) = echo_many(&addr, n, bytes);
                println!("probe: echo-many {addr} ok={ok} of {n} bytes={total}");
            }
            "print" => {
                if let Some(t) = it.next() {
                    println!("{t}");
                }
            }
            "write" => {
                if let Some(p) = it.next() {
                    let _ = std::fs::write(p, b"ran");
                }
            }
            _ => {}
        }
    }
    std::process::exit(code);
}
