//! Transparent egress (`[egress] transparent = true`): the workload runs in a network
//! namespace of its own that has only `lo`, on which the resolver's range and the
//! allowlist's IPv4 literals and blocks are local routes (AnyIP). cidboot holds, inside it, a
//! resolver on port 53 ([`resolver`]), a listener on each allowlisted port ([`intercept`]) and
//! a mirror of each of its own loopback services; every other destination has no route, so
//! a connection to it fails at once. No netfilter, TUN device or userspace TCP stack is
//! involved: the kernel's own TCP does the work, and the kernel needs only network
//! namespaces (see docs/building-eif.md).

pub mod dns;
pub mod intercept;
pub mod names;
pub mod netlink;
pub mod ns;
pub mod resolver;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::relay::allow::Allowlist;
use crate::transport::{BoxFuture, BoxIo, Connector};

/// What stopped transparent egress from starting.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's #[error] message is its documentation
pub enum TransparentError {
    #[error("the workload's network namespace: {0}")]
    Netns(String),
    #[error("transparent egress: {0}")]
    Setup(String),
}

/// The bounds of transparent egress (documented in docs/operating.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Workload connections carried at once; one more is reset.
    pub max_connections: usize,
    /// Resolver queries answered a second, all clients together; more are refused.
    pub dns_queries_per_sec: u32,
    /// Names given an address in one boot; past it the resolver answers SERVFAIL.
    pub max_names: usize,
    /// Time the dialer gets to reach an allowed destination.
    pub connect_timeout: Duration,
    /// A connection with no traffic either way for this long is closed.
    pub idle_timeout: Duration,
    /// A connection open this long is closed, busy or not.
    pub max_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 512,
            dns_queries_per_sec: 200,
            max_names: 4096,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// The resolver line the workload's `/etc/resolv.conf` holds.
pub const RESOLV_CONF: &str = "nameserver 127.0.0.1\n";

/// A running transparent egress: its namespace, for the sandboxes to join.
#[derive(Debug, Clone)]
pub struct Transparent {
    /// The workload's network namespace.
    pub netns: ns::Netns,
}

/// Makes the namespace, starts the resolver and the listeners, and mirrors `loopback` (cidboot's
/// own services on 127.0.0.1) at the same addresses inside it.
pub async fn start(
    allow: Allowlist,
    limits: Limits,
    dialer: Arc<dyn Connector>,
    loopback: &[SocketAddr],
) -> Result<Transparent, TransparentError> {
    let (ports, any_port) = allow.ports();
    let mut local: Vec<(Ipv4Addr, u8)> = vec![(names::FAKE_NET, names::FAKE_LEN)];
    for net in allow.v4_networks() {
        // Loopback is local already; a block met twice is routed once.
        if !net.0.is_loopback() && !local.contains(&net) {
            local.push(net);
        }
    }
    let netns = ns::Netns::create(local.clone())?;
    let lb: Vec<SocketAddr> = loopback.to_vec();
    let port_list: Vec<u16> = ports.iter().copied().collect();
    let (udp, tcp53, listeners, mirrors) = netns.run("the namespace's listeners", move || {
        let udp = std::net::UdpSocket::bind("127.0.0.1:53")?;
        udp.set_nonblocking(true)?;
        let tcp53 = bind_tcp(SocketAddr::from(([127, 0, 0, 1], 53)))?;
        let mut listeners = Vec::new();
        for p in port_list {
            let l = bind_tcp(SocketAddr::from(([0, 0, 0, 0], p))).map_err(|e| {
                std::io::Error::new(e.kind(), format!("port {p} of [egress] allow: {e}"))
            })?;
            listeners.push(l);
        }
        let mut mirrors = Vec::new();
        for a in lb {
            let l = bind_tcp(a).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{a}, a loopback service of cidboot (is its port also in [egress] allow?): {e}"))
            })?;
            mirrors.push((l, a));
        }
        Ok((udp, tcp53, listeners, mirrors))
    })?;
    let tokio_err = |e: std::io::Error| TransparentError::Setup(e.to_string());
    let allow = Arc::new(allow);
    let names = Arc::new(names::Names::new(limits.max_names));
    let resolver = Arc::new(resolver::Resolver::new(
        allow.clone(),
        names.clone(),
        limits.dns_queries_per_sec,
    ));
    tokio::spawn(
        resolver
            .clone()
            .serve_udp(tokio::net::UdpSocket::from_std(udp).map_err(tokio_err)?),
    );
    tokio::spawn(resolver.serve_tcp(tokio::net::TcpListener::from_std(tcp53).map_err(tokio_err)?));
    let icpt = Arc::new(intercept::Intercept {
        allow: allow.clone(),
        names,
        dialer,
        limits: limits.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
    });
    for l in listeners {
        tokio::spawn(
            icpt.clone()
                .serve(tokio::net::TcpListener::from_std(l).map_err(tokio_err)?),
        );
    }
    for (l, to) in mirrors {
        tokio::spawn(intercept::mirror(
            tokio::net::TcpListener::from_std(l).map_err(tokio_err)?,
            to,
            limits.clone(),
        ));
    }
    let routes: Vec<String> = local.iter().map(|(n, l)| format!("{n}/{l}")).collect();
    info!(
        allow = ?allow.describe(),
        ports = ?ports,
        routes = ?routes,
        resolver = "127.0.0.1:53",
        loopback = ?loopback,
        "transparent egress: the workload's network namespace is ready"
    );
    if any_port {
        info!(
            "transparent egress: patterns with port * are reachable through the CONNECT proxy only"
        );
    }
    Ok(Transparent { netns })
}

/// Connections a listener's queue holds before the kernel drops new ones (a burst of
/// workload connections is accepted faster than a client retries).
const BACKLOG: i32 = 1024;

fn bind_tcp(a: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage};
    let family = if a.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
    socket::bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(a),
    )?;
    socket::listen(&fd, Backlog::new(BACKLOG)?)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Connects to TCP addresses inside the namespace (the ingress forwarders' way to the
/// workload's own listeners). The host must be an IP address.
pub struct NetnsConnector(pub ns::Netns);

impl Connector for NetnsConnector {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, std::io::Result<BoxIo>> {
        Box::pin(async move {
            let ip: std::net::IpAddr = host.parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{host} is not an address"),
                )
            })?;
            let v4 = ip.is_ipv4();
            let ns = self.0.clone();
            let fd = tokio::task::spawn_blocking(move || {
                ns.run("a socket in the workload's namespace", move || {
                    use nix::sys::socket::AddressFamily;
                    let family = if v4 {
                        AddressFamily::Inet
                    } else {
                        AddressFamily::Inet6
                    };
                    let s = nix::sys::socket::socket(
                        family,
                        nix::sys::socket::SockType::Stream,
                        nix::sys::socket::SockFlag::SOCK_CLOEXEC
                            | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
                        None,
                    )?;
                    Ok(s)
                })
            })
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)?;
            let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
            let s = sock.connect(SocketAddr::new(ip, port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxIo)
        })
    }
}
