//! What `cidboot host` needs from the machine, checked without creating or binding anything
//! (`cidboot host --check`, and before a start): the programs the launcher runs, the EIF, the
//! directories the Unix sockets go in, the listen addresses. Each check returns every problem
//! it finds, worded with the configuration's keys, so that one run names all of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use super::enclave::{EnclaveConfig, LauncherKind};
use super::HostConfig;
use crate::transport::addr::Addr;

/// Files QEMU's nitro-enclave machine loads from its `-L` directory.
pub const QEMU_FIRMWARE: [&str; 2] = ["bios-microvm.bin", "linuxboot_dma.bin"];

/// Every listen address in the configuration, with the key that sets it.
fn listen_addrs(cfg: &HostConfig) -> Vec<(String, Addr)> {
    let mut out = Vec::new();
    let mut add = |key: &str, a: &Addr| out.push((key.to_string(), a.clone()));
    if let Some(e) = &cfg.egress {
        add("egress.listen", &e.listen);
    }
    if let Some(b) = &cfg.boot {
        add("boot.listen", &b.listen);
    }
    if let Some(c) = &cfg.credentials {
        add("credentials.listen", &c.listen);
    }
    if let Some(l) = &cfg.logs {
        add("logs.listen", &l.listen);
    }
    for (i, ing) in cfg.ingress.iter().enumerate() {
        add(&format!("ingress[{i}].listen"), &ing.listen);
    }
    if let Some(h) = &cfg.heartbeat {
        add("heartbeat.listen", &h.listen);
    }
    if let Some(c) = &cfg.cache {
        add("cache.listen", &c.listen);
    }
    out
}

/// The listen addresses: no two services on one address, a Unix socket's directory there
/// and writable (and nothing but a stale socket at its path), a TCP host that is one of this
/// machine's addresses (or resolves), a privileged port only with the right to bind it, and
/// the vsock address family present.
pub fn listeners(cfg: &HostConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let addrs = listen_addrs(cfg);
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let metrics = cfg.metrics.as_ref().map(|m| m.listen.clone());
    for (key, a) in &addrs {
        // Port 0 picks a free port: two of them never collide.
        let shared = !matches!(a, Addr::Tcp { port: 0, .. });
        if shared {
            if let Some(first) = seen.get(&a.to_string()) {
                problems.push(format!(
                    "{key} {a}: {first} listens there too; give each service its own address"
                ));
                continue;
            }
            seen.insert(a.to_string(), key);
        }
        match a {
            Addr::Unix(p) => problems.extend(unix_socket(key, p)),
            Addr::Tcp { host, port } => problems.extend(tcp(key, host, *port)),
            Addr::Vsock { .. } => problems.extend(vsock(key)),
        }
    }
    if let Some(Ok(a)) = metrics.as_deref().map(super::metrics::loopback) {
        let key = "metrics.listen";
        let addr = Addr::Tcp {
            host: a.ip().to_string(),
            port: a.port(),
        };
        if a.port() != 0 {
            if let Some(first) = seen.get(&addr.to_string()) {
                problems.push(format!(
                    "{key} {a}: {first} listens there too; give each service its own address"
                ));
            }
        }
        problems.extend(tcp(key, &a.ip().to_string(), a.port()));
    }
    problems
}

fn unix_socket(key: &str, p: &Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let mut problems = Vec::new();
    let dir = parent(p);
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => problems.push(format!(
            "{key} unix:{}: {} is not a directory",
            p.display(),
            dir.display()
        )),
        Ok(_) => {
            if let Err(e) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
                problems.push(format!(
                    "{key} unix:{}: its directory {} is not writable: {e}",
                    p.display(),
                    dir.display()
                ));
            }
        }
        Err(e) => problems.push(format!(
            "{key} unix:{}: its directory {}: {e} (create it, or let systemd's RuntimeDirectory= do so)",
            p.display(),
            dir.display()
        )),
    }
    if let Ok(m) = std::fs::symlink_metadata(p) {
        if !m.file_type().is_socket() {
            problems.push(format!(
                "{key} unix:{}: exists and is not a socket",
                p.display()
            ));
        }
    }
    problems
}

fn tcp(key: &str, host: &str, port: u16) -> Vec<String> {
    use std::net::ToSocketAddrs;
    let mut problems = Vec::new();
    let ips: Vec<std::net::IpAddr> = match (host, port).to_socket_addrs() {
        Ok(a) => a.map(|a| a.ip()).collect(),
        Err(e) => {
            problems.push(format!(
                "{key} {host}:{port}: {host:?} does not resolve: {e}"
            ));
            Vec::new()
        }
    };
    let local = local_ips();
    if !ips.is_empty() && !local.is_empty() {
        let ours =
            |ip: &std::net::IpAddr| ip.is_unspecified() || ip.is_loopback() || local.contains(ip);
        if !ips.iter().any(ours) {
            problems.push(format!(
                "{key} {host}:{port}: not an address of this machine (its interfaces have {})",
                local
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if port != 0 && port < unprivileged_port_start() && !can_bind_privileged() {
        problems.push(format!(
            "{key} {host}:{port}: a port below {} needs root or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)",
            unprivileged_port_start()
        ));
    }
    problems
}

/// A vsock listener needs the address family (the vsock modules on a Nitro parent).
fn vsock(key: &str) -> Vec<String> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    match socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) {
        Ok(_fd) => Vec::new(),
        Err(e) => vec![format!(
            "{key}: this machine has no vsock ({e}); a Nitro parent has it once the nitro_enclaves and vsock modules are loaded"
        )],
    }
}

/// This machine's interface addresses; empty if they cannot be listed (then nothing is
/// refused for it).
fn local_ips() -> Vec<std::net::IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|s| {
            if let Some(v4) = s.as_sockaddr_in() {
                Some(std::net::IpAddr::V4(v4.ip()))
            } else {
                s.as_sockaddr_in6().map(|v6| std::net::IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// Whether the process holds CAP_NET_BIND_SERVICE (bit 10 of its effective set).
fn can_bind_privileged() -> bool {
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_NET_BIND_SERVICE) != 0)
}

fn parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Where a program the daemon runs is: a path as given, a bare name on `PATH`.
fn find_program(p: &Path) -> Result<PathBuf, String> {
    let name = p.as_os_str();
    if p.components().count() > 1 || name.as_encoded_bytes().contains(&b'/') {
        return executable(p).map(|()| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let c = dir.join(p);
        if executable(&c).is_ok() {
            return Ok(c);
        }
    }
    Err(format!(
        "not found on PATH ({}); give its full path",
        std::env::split_paths(&path)
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    ))
}

fn executable(p: &Path) -> Result<(), String> {
    let m = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if !m.is_file() {
        return Err("not a regular file".into());
    }
    access(p, AccessFlags::X_OK).map_err(|e| format!("not executable: {e}"))
}

/// `[enclave]`: the EIF a readable file, and every program and file its launcher uses.
pub fn enclave(c: &EnclaveConfig) -> Vec<String> {
    let mut problems = Vec::new();
    match std::fs::metadata(&c.eif) {
        Ok(m) if !m.is_file() => problems.push(format!(
            "[enclave] eif {}: not a regular file",
            c.eif.display()
        )),
        Ok(_) => {
            if let Err(e) = std::fs::File::open(&c.eif) {
                problems.push(format!("[enclave] eif {}: {e}", c.eif.display()));
            }
        }
        Err(e) => problems.push(format!("[enclave] eif {}: {e}", c.eif.display())),
    }
    let program = |key: &str, p: &Path, problems: &mut Vec<String>| {
        if let Err(e) = find_program(p) {
            problems.push(format!("[enclave] {key} {}: {e}", p.display()));
        }
    };
    match (c.launcher, &c.qemu) {
        (LauncherKind::NitroCli, _) => program("nitro_cli", &c.nitro_cli, &mut problems),
        (LauncherKind::Qemu, Some(q)) => {
            program("qemu.qemu", &q.qemu, &mut problems);
            program(
                "qemu.vhost_device_vsock",
                &q.vhost_device_vsock,
                &mut problems,
            );
            match std::fs::metadata(&q.firmware) {
                Ok(m) if m.is_dir() => {
                    for f in QEMU_FIRMWARE {
                        if !q.firmware.join(f).is_file() {
                            problems.push(format!(
                                "[enclave] qemu.firmware {}: has no {f}",
                                q.firmware.display()
                            ));
                        }
                    }
                }
                Ok(_) => problems.push(format!(
                    "[enclave] qemu.firmware {}: not a directory",
                    q.firmware.display()
                )),
                Err(e) => problems.push(format!(
                    "[enclave] qemu.firmware {}: {e}",
                    q.firmware.display()
                )),
            }
            // vhost-device-vsock creates its vhost-user socket beside `uds_path`.
            let socket = q.socket.clone().unwrap_or_else(|| {
                let mut s = q.uds_path.clone().into_os_string();
                s.push(".vhost");
                PathBuf::from(s)
            });
            let mut dirs: Vec<&Path> = Vec::new();
            for (key, p) in [("qemu.uds_path", &q.uds_path), ("qemu.socket", &socket)] {
                let dir = parent(p);
                if dirs.contains(&dir) {
                    continue;
                }
                dirs.push(dir);
                match std::fs::metadata(dir) {
                    Ok(m) if m.is_dir() => {
                        if let Err(e) = access(dir, AccessFlags::W_OK | AccessFlags::X_OK) {
                            problems.push(format!(
                                "[enclave] {key} {}: its directory {} is not writable: {e}",
                                p.display(),
                                dir.display()
                            ));
                        }
                    }
                    Ok(_) => problems.push(format!(
                        "[enclave] {key} {}: {} is not a directory",
                        p.display(),
                        dir.display()
                    )),
                    Err(e) => problems.push(format!(
                        "[enclave] {key} {}: its directory {}: {e}",
                        p.display(),
                        dir.display()
                    )),
                }
            }
        }
        // Refused by the section's own checks.
        (LauncherKind::Qemu, None) => {}
    }
    problems
}
