//! The enclave's two ways out: HTTP CONNECT through the parent's proxy, or AWS-`vsock-proxy`
//! style fixed routes. Either way the stream returned is raw: TLS is started by cidboot itself,
//! so neither the parent nor the proxy ever sees plaintext.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::addr::Addr;
use super::head::{read_head_exact, HeadError};
use super::{BoxFuture, BoxIo, Connector};

/// Largest proxy response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Most of a refusal's body shown in the error.
const MAX_REFUSAL_BODY: usize = 1024;

/// Tunnels through an HTTP CONNECT proxy reached at `proxy` (vsock on Nitro).
#[derive(Debug, Clone)]
pub struct ConnectProxy {
    /// Where the egress proxy listens: the parent's vsock port in an enclave.
    pub proxy: Addr,
}

impl Connector for ConnectProxy {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let mut s = self.proxy.connect().await.map_err(|e| {
                io::Error::new(e.kind(), format!("egress proxy {}: {e}", self.proxy))
            })?;
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            s.write_all(
                format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes(),
            )
            .await?;
            // Nothing past the head is read: after a 200 the stream is the tunnel.
            let head = read_head_exact(&mut s, MAX_RESPONSE_HEAD)
                .await
                .map_err(|e| match e {
                    HeadError::Io(e) => e,
                    HeadError::Closed => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("egress proxy {} closed before answering", self.proxy),
                    ),
                    e @ HeadError::TooLarge(_) => io::Error::new(io::ErrorKind::InvalidData, e),
                })?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            let status = match resp.parse(&head) {
                Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "egress proxy sent a malformed response",
                    ))
                }
            };
            if status == 200 {
                return Ok(s);
            }
            let reason = resp.reason.unwrap_or("").to_string();
            // The proxy says why in a short text body (cidboot host names the rule).
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0)
                .min(MAX_REFUSAL_BODY);
            let mut body = vec![0u8; len];
            let got = s.read_exact(&mut body).await.is_ok();
            let why = String::from_utf8_lossy(if got { &body } else { &[] })
                .trim()
                .to_string();
            let kind = if status == 403 {
                io::ErrorKind::PermissionDenied
            } else {
                io::ErrorKind::ConnectionRefused
            };
            let mut msg = format!("egress proxy refused {authority}: {status} {reason}");
            if !why.is_empty() {
                msg.push_str(&format!(" ({why})"));
            }
            if status == 403 {
                msg.push_str("; allow it in the host's [egress] allow list");
            }
            Err(io::Error::new(kind, msg))
        })
    }
}

/// Fixed routes, compatible with AWS's `vsock-proxy`: each `host:port` maps to an address
/// that forwards raw bytes to that one remote.
#[derive(Debug, Clone, Default)]
pub struct DirectRoutes {
    /// `(host, port, forwarder)`: a connect to `host:port` (host case-insensitive) opens a
    /// stream to the forwarder; one to any other destination is refused.
    pub routes: Vec<(String, u16, Addr)>,
}

impl Connector for DirectRoutes {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<BoxIo>> {
        Box::pin(async move {
            let route = self
                .routes
                .iter()
                .find(|(h, p, _)| h.eq_ignore_ascii_case(host) && *p == port);
            match route {
                Some((_, _, addr)) => addr.connect().await,
                None => Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("no egress route for {host}:{port}"),
                )),
            }
        })
    }
}
