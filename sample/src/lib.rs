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

/// 16 random bytes, hex, from /dev/urandom.
pub fn fresh_nonce() -> Result<String, String> {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(|e| e.to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
