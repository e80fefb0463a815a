//! What the sample programs share: asking cidboot's attestation API for a document.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Asks `$CIDBOOT_ATTESTATION_URL` for a document bound to `nonce_hex`; returns it base64.
pub fn attest(nonce_hex: &str) -> Result<String, String> {
    let url = std::env::var("CIDBOOT_ATTESTATION_URL").map_err(|_| "CIDBOOT_ATTESTATION_URL is not set".to_string())?;
    let addr = url.strip_prefix("http://").ok_or("the URL is not http://")?.trim_end_matches('/');
    let body = format!("{{\"nonce\":\"{nonce_hex}\",\"encoding\":\"hex\"}}");
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST /v1/attestation HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{}: {body}", head.lines().next().unwrap_or("")));
    }
    let start = body.find("\"document\":\"").ok_or("no document in the response")? + 12;
    let end = body[start..].find('"').ok_or("unterminated document")?;
    Ok(body[start..start + end].to_string())
}

/// One call of the AWS KMS JSON API to `$AWS_ENDPOINT_URL_KMS` (cidboot's KMS proxy), as an
/// AWS SDK makes it but signed with nothing: the proxy signs. Returns the HTTP status and the
/// answer's body.
pub fn kms_call(target: &str, body: &str) -> Result<(u16, String), String> {
    let url = std::env::var("AWS_ENDPOINT_URL_KMS").map_err(|_| "AWS_ENDPOINT_URL_KMS is not set".to_string())?;
    let addr = url.strip_prefix("http://").ok_or("the URL is not http://")?.trim_end_matches('/');
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(90))).map_err(|e| e.to_string())?;
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nX-Amz-Target: {target}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("malformed response")?;
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    Ok((status, body.to_string()))
}

/// One KMS call through the proxy, summed up: `status=N plaintext-bytes=N plaintext-sha256=HEX`
/// (a hash, never the plaintext), or `status=N error=CODE`.
pub fn kms_summary(target: &str, body: &str) -> String {
    match kms_call(target, body) {
        Ok((status, answer)) => match json_str(&answer, "Plaintext").and_then(base64_decode) {
            Some(p) => format!("status={status} plaintext-bytes={} plaintext-sha256={}", p.len(), sha256_hex(&p)),
            None => format!("status={status} error={}", json_str(&answer, "__type").unwrap_or("?")),
        },
        Err(e) => format!("failed: {e}"),
    }
}

/// The string value of `field` in a flat JSON object (base64 and error codes: no escapes).
pub fn json_str<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\":\"");
    let start = body.find(&key)? + key.len();
    let len = body[start..].find('"')?;
    Some(&body[start..start + len])
}

/// Standard base64 (with padding) decoded, or None.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | u32::from(value(c)?);
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// SHA-256, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// 16 random bytes, hex, from /dev/urandom.
pub fn fresh_nonce() -> Result<String, String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(|e| e.to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The name of an errno value, for reports tests can match on.
pub fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENXIO => "ENXIO",
        libc::EACCES => "EACCES",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EROFS => "EROFS",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}

fn last_errno() -> String {
    errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
}

fn cpath(p: &str) -> std::ffi::CString {
    std::ffi::CString::new(p).unwrap_or_default()
}

/// `socket(AF_VSOCK, SOCK_STREAM)`: "ok" or the errno's name.
pub fn try_vsock() -> String {
    // SAFETY: plain integer arguments; the descriptor, if any, is closed right away.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return last_errno();
    }
    // SAFETY: fd was just returned by socket.
    unsafe { libc::close(fd) };
    "ok".into()
}

/// Opens `path` read-write: "ok" or the errno's name.
pub fn try_open(path: &str) -> String {
    match std::fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

/// `mknod(path, S_IFCHR | 0666, makedev(major, minor))`: "ok" or the errno's name.
pub fn try_mknod(path: &str, major: u32, minor: u32) -> String {
    let p = cpath(path);
    // SAFETY: p is a NUL-terminated path that lives across the call.
    let r = unsafe { libc::mknod(p.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(major, minor)) };
    if r == 0 { "ok".into() } else { last_errno() }
}

/// Mounts a devtmpfs on `dir` (created first): "ok" or the errno's name.
pub fn try_mount_devtmpfs(dir: &str) -> String {
    let _ = std::fs::create_dir_all(dir);
    let (src, target, fs) = (cpath("devtmpfs"), cpath(dir), cpath("devtmpfs"));
    // SAFETY: NUL-terminated strings that live across the call; no data argument.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if r == 0 { "ok".into() } else { last_errno() }
}

/// Reopens this process's descriptor `fd` through /proc/self/fd and tries to make whatever is
/// behind it setuid root: "ok" or the first errno's name.
pub fn try_reopen_setuid(fd: u32) -> String {
    let p = cpath(&format!("/proc/self/fd/{fd}"));
    // SAFETY: p is a NUL-terminated path that lives across the call.
    let f = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if f < 0 {
        return last_errno();
    }
    // SAFETY: f was just opened; plain integer arguments.
    let r = unsafe {
        if libc::fchown(f, 0, 0) != 0 || libc::fchmod(f, 0o4755) != 0 { -1 } else { 0 }
    };
    let out = if r == 0 { "ok".to_string() } else { last_errno() };
    // SAFETY: f is ours.
    unsafe { libc::close(f) };
    out
}

/// Allocates and touches memory 1 MiB at a time, without end, printing a line every 8 MiB:
/// a workload that only its memory limit stops.
pub fn allocate_forever() -> ! {
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        // Touch every page, so that each one is really charged.
        for i in (0..chunk.len()).step_by(4096) {
            chunk[i] = 1;
        }
        held.push(std::hint::black_box(chunk));
        if held.len() % 8 == 0 {
            println!("allocated {} MiB", held.len());
        }
    }
}

/// Forks children that wait forever, until a fork fails; reports how many there were and the
/// error, and returns 1 (the children end with the sandbox). A workload that only its process
/// limit stops.
pub fn fork_forever() -> i32 {
    let mut children = 0u64;
    loop {
        // SAFETY: this program is single-threaded; the child only pauses.
        match unsafe { libc::fork() } {
            -1 => {
                println!("fork failed after {children} children: {}", last_errno_name());
                return 1;
            }
            0 => loop {
                // SAFETY: pause takes no arguments.
                unsafe { libc::pause() };
            },
            _ => children += 1,
        }
    }
}

fn last_errno_name() -> String {
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => "EAGAIN".into(),
        Some(libc::ENOMEM) => "ENOMEM".into(),
        Some(c) => errno_name(c),
        None => "unknown".into(),
    }
}

/// What a workload sees of a secret, for tests to check without printing the value: an
/// environment variable (`NAME`) or a file (an absolute path), its SHA-256 and length, the
/// words of a phrase, and a file's owner and mode (the directory's too).
pub fn describe_secret(what: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let hex = |b: &[u8]| Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect::<String>();
    let words = |b: &[u8]| String::from_utf8_lossy(b).split(' ').count();
    if !what.starts_with('/') {
        return match std::env::var_os(what) {
            Some(v) => {
                let b = std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str());
                format!("secret env {what} sha256={} bytes={} words={}", hex(b), b.len(), words(b))
            }
            None => format!("secret env {what} unset"),
        };
    }
    let mode = |p: &std::path::Path| match std::fs::symlink_metadata(p) {
        Ok(m) => format!("owner={}:{} mode={:04o}", m.uid(), m.gid(), m.mode() & 0o7777),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    };
    let dir = std::path::Path::new(what).parent().map(mode).unwrap_or_default();
    match std::fs::read(what) {
        Ok(b) => format!(
            "secret file {what} sha256={} bytes={} words={} {} dir {dir}",
            hex(&b),
            b.len(),
            words(&b),
            mode(std::path::Path::new(what))
        ),
        Err(e) => format!("secret file {what} {}", errno_name(e.raw_os_error().unwrap_or(0))),
    }
}
