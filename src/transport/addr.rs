//! Listen and connect addresses: `vsock:CID:PORT`, `unix:PATH` and `tcp:HOST:PORT`, so that
//! tests (tcp, unix), the emulated enclave (whose vsock backend exposes Unix sockets) and real
//! Nitro (vsock) run the same code.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;

use super::BoxIo;

/// The address forms, as error messages name them.
pub const FORMS: &str = "tcp:HOST:PORT (or just HOST:PORT), unix:PATH or vsock:CID:PORT";

/// The parent instance's vsock CID on Nitro.
pub const DEFAULT_PARENT_CID: u32 = 3;
/// Kernel command-line key that overrides it (the emulated enclave reaches its host at CID 2).
pub const PARENT_CID_PARAM: &str = "cidboot.parent_cid";

/// A place to listen on or connect to, in one of the [`FORMS`] (which is how it parses and
/// prints, and how configuration files spell it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// `vsock:CID:PORT`; `any` as the CID listens on every CID, `parent` means the parent's.
    Vsock {
        /// The VM's context ID; `VMADDR_CID_ANY` when parsed from `any`.
        cid: u32,
        /// A vsock port, 32 bits wide unlike TCP's.
        port: u32,
    },
    /// `unix:PATH`: a Unix socket, as in tests and the emulated enclave's vsock backend.
    Unix(PathBuf),
    /// `tcp:HOST:PORT` or a bare `HOST:PORT`.
    Tcp {
        /// A name or IP literal; an IPv6 literal is kept without its brackets.
        host: String,
        /// 0 on a listen address picks a free port ([`Listener::local_addr`] says which).
        port: u16,
    },
}

/// A string that is not an address in one of the [`FORMS`].
#[derive(Debug, thiserror::Error)]
#[error("address {input:?}: {reason} (use {FORMS})")]
pub struct AddrError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The parent's CID: `cidboot.parent_cid=N` on the kernel command line, or 3.
pub fn parent_cid() -> u32 {
    std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| parent_cid_from(&c))
        .unwrap_or(DEFAULT_PARENT_CID)
}

/// The `cidboot.parent_cid=N` value in a kernel command line, if there is one and it is a
/// number.
pub fn parent_cid_from(cmdline: &str) -> Option<u32> {
    cmdline.split_whitespace().find_map(|kv| {
        kv.strip_prefix(PARENT_CID_PARAM)?
            .strip_prefix('=')?
            .parse()
            .ok()
    })
}

impl FromStr for Addr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Addr, AddrError> {
        let bad = |reason: &str| AddrError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest.split_once(':').ok_or_else(|| bad("missing :PORT"))?;
            let cid = match cid {
                "any" => tokio_vsock::VMADDR_CID_ANY,
                "parent" => parent_cid(),
                c => c
                    .parse()
                    .map_err(|_| bad("CID is not a number, any or parent"))?,
            };
            let port = port.parse().map_err(|_| bad("port is not a number"))?;
            return Ok(Addr::Vsock { cid, port });
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty path"));
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("missing :PORT"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            let port = port.parse().map_err(|_| bad("port is not a number"))?;
            return Ok(Addr::Tcp {
                host: host.to_string(),
                port,
            });
        }
        // A bare HOST:PORT is TCP; anything else with a colon is an unknown scheme.
        match s.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !s.contains('/') && port.parse::<u16>().is_ok() =>
            {
                format!("tcp:{s}").parse()
            }
            _ => Err(bad("unknown scheme")),
        }
    }
}

impl Addr {
    /// Parses an address that must be TCP (`tcp:HOST:PORT` or `HOST:PORT`) and returns it as
    /// `HOST:PORT`, ready for a socket bind.
    pub fn tcp_only(s: &str) -> Result<String, AddrError> {
        match s.parse()? {
            Addr::Tcp { host, port } if host.contains(':') => Ok(format!("[{host}]:{port}")),
            Addr::Tcp { host, port } => Ok(format!("{host}:{port}")),
            _ => Err(AddrError {
                input: s.to_string(),
                reason: "only TCP is possible here".into(),
            }),
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Vsock { cid, port } if *cid == tokio_vsock::VMADDR_CID_ANY => {
                write!(f, "vsock:any:{port}")
            }
            Addr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
            Addr::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Addr::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Addr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Addr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl Addr {
    /// Opens a stream to the address (with Nagle's algorithm off for TCP).
    pub async fn connect(&self) -> io::Result<BoxIo> {
        Ok(match self {
            Addr::Vsock { cid, port } => Box::new(
                tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port)).await?,
            ),
            Addr::Unix(p) => Box::new(tokio::net::UnixStream::connect(p).await?),
            Addr::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                s.set_nodelay(true)?;
                Box::new(s)
            }
        })
    }

    /// Listens on the address; a Unix socket admits only this process's user
    /// ([`SocketPerms::default`]). A Unix socket file left by an earlier run is replaced, so
    /// that a restart does not fail on it.
    pub async fn bind(&self) -> io::Result<Listener> {
        self.bind_with(&SocketPerms::default()).await
    }

    /// [`Addr::bind`], with a Unix socket's mode and group given.
    pub async fn bind_with(&self, perms: &SocketPerms) -> io::Result<Listener> {
        Ok(match self {
            Addr::Vsock { cid, port } => Listener::Vsock(tokio_vsock::VsockListener::bind(
                tokio_vsock::VsockAddr::new(*cid, *port),
            )?),
            Addr::Unix(p) => Listener::Unix(bind_unix(p, perms)?, p.clone()),
            Addr::Tcp { host, port } => {
                Listener::Tcp(tokio::net::TcpListener::bind((host.as_str(), *port)).await?)
            }
        })
    }
}

/// Who may connect to a Unix socket the process listens on: its mode and, optionally, its
/// group. The default, `0600` and the process's own group, admits only the process's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPerms {
    /// Permission bits (`0o600` to `0o777`).
    pub mode: u32,
    /// A group to give the socket, so that `0o660` admits its members.
    pub group: Option<u32>,
}

impl Default for SocketPerms {
    fn default() -> SocketPerms {
        SocketPerms {
            mode: 0o600,
            group: None,
        }
    }
}

/// Binds a Unix socket that has its mode and group from the instant it is reachable: it is
/// bound inside a fresh `0700` directory beside `path` (so nobody else can reach it while
/// its mode is set), then renamed into place. A socket left at `path` by an earlier run is
/// replaced; anything else there is an error.
fn bind_unix(path: &std::path::Path, perms: &SocketPerms) -> io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let named = |e: io::Error, what: &str| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    if perms.mode & !0o777 != 0 || perms.mode & 0o600 != 0o600 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket mode {:o}: use 600 to 777", perms.mode),
        ));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        _ => {}
    }
    // tempfile creates the directory 0700. Short names keep the staged path within the 108
    // bytes a socket address holds whenever the final one is.
    let staging = tempfile::Builder::new()
        .prefix(".s")
        .rand_bytes(6)
        .tempdir_in(dir)
        .map_err(|e| named(e, "staging a socket beside"))?;
    let staged = staging.path().join("s");
    let listener = tokio::net::UnixListener::bind(&staged).map_err(|e| named(e, "binding"))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(perms.mode))
        .map_err(|e| named(e, "setting the mode of"))?;
    if let Some(gid) = perms.group {
        std::os::unix::fs::chown(&staged, None, Some(gid))
            .map_err(|e| named(e, &format!("giving group {gid}")))?;
    }
    // A stale socket from an earlier run is replaced; a file that appeared meanwhile is not.
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        &staged,
        rustix::fs::CWD,
        path,
        rustix::fs::RenameFlags::NOREPLACE,
    )
    .map_err(|e| named(e.into(), "placing the socket at"))?;
    Ok(listener)
}

/// How a Unix peer is printed: the socket's path, and the peer's process and user as the
/// kernel reports them (`SO_PEERCRED`), which [`unix_peer_pid`] reads back.
fn unix_peer(path: &std::path::Path, cred: Option<tokio::net::unix::UCred>) -> String {
    match cred {
        Some(c) => match c.pid() {
            Some(pid) => format!("unix:{} (pid {pid}, uid {})", path.display(), c.uid()),
            None => format!("unix:{} (uid {})", path.display(), c.uid()),
        },
        None => format!("unix:{}", path.display()),
    }
}

/// The process id of a Unix peer as [`Listener::accept`] prints it.
pub fn unix_peer_pid(peer: &str) -> Option<u32> {
    if !peer.starts_with("unix:") {
        return None;
    }
    let (_, tail) = peer.rsplit_once(" (pid ")?;
    tail.split(',').next()?.parse().ok()
}

/// A bound listener of any of the three kinds.
pub enum Listener {
    /// On a vsock port.
    Vsock(tokio_vsock::VsockListener),
    /// On a Unix socket, with its path: Unix peers have no address, so the path is what
    /// names them, and what [`Listener::local_addr`] reports.
    Unix(tokio::net::UnixListener, PathBuf),
    /// On a TCP port.
    Tcp(tokio::net::TcpListener),
}

/// The pause after a failed accept, so that a listener whose accept keeps failing (out of
/// descriptors) does not spin.
pub const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(50);

/// How long [`accept_shedding`] waits, with the reserve descriptor let go, for the client it
/// refuses.
pub const SHED_ACCEPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A listener the accept loops share one back-off policy over: [`Listener`], and tokio's
/// `TcpListener` for the HTTP services that only ever listen on TCP.
pub trait Accept {
    /// What one accept yields: the stream and its peer's address.
    type Conn: Send;
    /// One accept, as the listener's own `accept`.
    fn accept_one(&self) -> impl std::future::Future<Output = io::Result<Self::Conn>> + Send;
}

impl Accept for Listener {
    type Conn = (BoxIo, String);
    fn accept_one(&self) -> impl std::future::Future<Output = io::Result<Self::Conn>> + Send {
        self.accept()
    }
}

impl Accept for tokio::net::TcpListener {
    type Conn = (tokio::net::TcpStream, std::net::SocketAddr);
    fn accept_one(&self) -> impl std::future::Future<Output = io::Result<Self::Conn>> + Send {
        self.accept()
    }
}

/// The next connection. A failed accept is logged under `service` and retried after
/// [`ACCEPT_BACKOFF`]: a listener never spins and never stops.
pub async fn accept_retrying<L: Accept>(listener: &L, service: &str) -> L::Conn {
    loop {
        match listener.accept_one().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "{service} accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One descriptor held back for when the process runs out of them (EMFILE, ENFILE): let go, it
/// lets an accept loop take a waiting client to answer and close, so that the client is
/// neither left in the backlog nor accepted in a busy loop.
pub struct FdReserve(Option<std::fs::File>);

impl FdReserve {
    /// Holds one descriptor (on /dev/null). If none can be opened now, [`accept_shedding`]
    /// tries again before each accept.
    pub fn new() -> FdReserve {
        FdReserve(Self::open())
    }

    fn open() -> Option<std::fs::File> {
        std::fs::File::open("/dev/null").ok()
    }
}

impl Default for FdReserve {
    fn default() -> FdReserve {
        FdReserve::new()
    }
}

/// What [`accept_shedding`] took.
pub enum Accepted<C> {
    /// A connection to serve.
    Serve(C),
    /// A client accepted on the reserve's descriptor while the process is out of them: answer
    /// it briefly and drop it before the next accept, which takes the reserve back.
    Shed(C),
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// [`accept_retrying`] for a service that answers every client: out of descriptors, the
/// reserve is let go to accept one waiting client (within [`SHED_ACCEPT_TIMEOUT`]), handed back
/// as [`Accepted::Shed`]; with no reserve to let go, the accept backs off as any other failure.
pub async fn accept_shedding<L: Accept>(
    listener: &L,
    service: &str,
    reserve: &mut FdReserve,
) -> Accepted<L::Conn> {
    loop {
        if reserve.0.is_none() {
            reserve.0 = FdReserve::open();
        }
        match listener.accept_one().await {
            Ok(c) => return Accepted::Serve(c),
            Err(e) if out_of_descriptors(&e) => {
                tracing::warn!(error = %e, "{service}: out of file descriptors: refusing a client (raise LimitNOFILE, or lower max_connections)");
                if reserve.0.take().is_some() {
                    if let Ok(Ok(c)) =
                        tokio::time::timeout(SHED_ACCEPT_TIMEOUT, listener.accept_one()).await
                    {
                        return Accepted::Shed(c);
                    }
                } else {
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "{service} accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

impl Listener {
    /// The next connection, by [`accept_retrying`].
    pub async fn accept_retrying(&self, service: &str) -> (BoxIo, String) {
        accept_retrying(self, service).await
    }

    /// Accepts one connection, with a printable peer.
    pub async fn accept(&self) -> io::Result<(BoxIo, String)> {
        Ok(match self {
            Listener::Vsock(l) => {
                let (s, a) = l.accept().await?;
                (Box::new(s), format!("vsock:{}:{}", a.cid(), a.port()))
            }
            Listener::Unix(l, p) => {
                let (s, _) = l.accept().await?;
                let peer = unix_peer(p, s.peer_cred().ok());
                (Box::new(s), peer)
            }
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                (Box::new(s), format!("tcp:{a}"))
            }
        })
    }

    /// The address actually bound (a tcp port 0 becomes the real port).
    pub fn local_addr(&self) -> io::Result<Addr> {
        Ok(match self {
            Listener::Vsock(l) => {
                let a = l.local_addr()?;
                Addr::Vsock {
                    cid: a.cid(),
                    port: a.port(),
                }
            }
            Listener::Unix(_, p) => Addr::Unix(p.clone()),
            Listener::Tcp(l) => {
                let a = l.local_addr()?;
                Addr::Tcp {
                    host: a.ip().to_string(),
                    port: a.port(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "vsock:3:8000".parse::<Addr>().unwrap(),
            Addr::Vsock { cid: 3, port: 8000 }
        );
        assert_eq!(
            "unix:/run/x.sock".parse::<Addr>().unwrap(),
            Addr::Unix("/run/x.sock".into())
        );
        assert_eq!(
            "tcp:[::1]:80".parse::<Addr>().unwrap(),
            Addr::Tcp {
                host: "::1".into(),
                port: 80
            }
        );
        assert_eq!(
            "tcp:[::1]:80".parse::<Addr>().unwrap().to_string(),
            "tcp:[::1]:80"
        );
        for bad in ["vsock:x:1", "tcp:host", "unix:", "http://x", "tcp::80"] {
            assert!(bad.parse::<Addr>().is_err(), "{bad}");
        }
        assert_eq!(
            parent_cid_from("console=ttyS0 cidboot.parent_cid=2 quiet"),
            Some(2)
        );
        assert_eq!(parent_cid_from("console=ttyS0"), None);
    }

    #[test]
    fn a_bare_host_port_is_tcp_and_a_wrong_address_names_the_forms() {
        for (bare, host) in [
            ("127.0.0.1:9393", "127.0.0.1"),
            ("[::1]:80", "::1"),
            ("localhost:0", "localhost"),
        ] {
            match bare.parse::<Addr>().unwrap() {
                Addr::Tcp { host: h, .. } => assert_eq!(h, host),
                other => panic!("{bare} parsed as {other}"),
            }
        }
        assert_eq!(Addr::tcp_only("tcp:[::1]:80").unwrap(), "[::1]:80");
        assert_eq!(Addr::tcp_only("127.0.0.1:0").unwrap(), "127.0.0.1:0");
        for bad in [
            "localhost",
            "http://x:80",
            "/run/x.sock:1",
            ":80",
            "x:99999",
        ] {
            let e = bad.parse::<Addr>().unwrap_err().to_string();
            assert!(
                e.contains("tcp:HOST:PORT (or just HOST:PORT), unix:PATH or vsock:CID:PORT"),
                "{e}"
            );
        }
        let e = Addr::tcp_only("unix:/x").unwrap_err().to_string();
        assert!(e.contains("only TCP") && e.contains("tcp:HOST:PORT"), "{e}");
    }

    #[tokio::test]
    async fn unix_sockets_admit_only_their_user_and_name_the_peer_process() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.sock");
        let a = Addr::Unix(p.clone());
        let l = a.bind().await.unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing of the staging is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        let _c = a.connect().await.unwrap();
        let (_, peer) = l.accept().await.unwrap();
        assert_eq!(unix_peer_pid(&peer), Some(std::process::id()), "{peer}");
        assert!(
            peer.starts_with(&format!("unix:{} (pid ", p.display())),
            "{peer}"
        );
        // Bound again over the stale socket, with a wider mode.
        drop(l);
        let wide = SocketPerms {
            mode: 0o660,
            group: None,
        };
        let _l = a.bind_with(&wide).await.unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        // A file that is not a socket is never replaced; nor is a mode below 600 taken.
        let f = dir.path().join("file");
        std::fs::write(&f, b"keep").unwrap();
        let e = Addr::Unix(f.clone()).bind().await.err().unwrap();
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"keep");
        let e = Addr::Unix(dir.path().join("y.sock"))
            .bind_with(&SocketPerms {
                mode: 0o400,
                group: None,
            })
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("600 to 777"), "{e}");
        assert_eq!(unix_peer_pid("tcp:1.2.3.4:5 (pid 7, uid 0)"), None);
        assert_eq!(unix_peer_pid("unix:/a (pid 7) (pid 9, uid 0)"), Some(9));
    }
}
