//! The workload's network namespace: made on a thread of its own (a namespace change is a
//! thread's, so the rest of cidboot stays where it is), kept open by its descriptor, and
//! entered the same way, on a fresh thread, to make each socket that must live in it.

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sched::{setns, unshare, CloneFlags};

use super::netlink::Rtnl;
use super::TransparentError;

/// A network namespace with `lo` up and the given local routes; nothing else.
#[derive(Debug, Clone)]
pub struct Netns {
    fd: Arc<OwnedFd>,
}

fn ns_err(what: &str, e: impl std::fmt::Display) -> TransparentError {
    TransparentError::Netns(format!("{what}: {e}"))
}

impl Netns {
    /// Makes the namespace: `lo` up, and each `(network, prefix length)` local on it.
    pub fn create(local: Vec<(Ipv4Addr, u8)>) -> Result<Netns, TransparentError> {
        let made = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || -> Result<OwnedFd, TransparentError> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| match e {
                    Errno::EPERM => ns_err(
                        "unshare(CLONE_NEWNET)",
                        "not permitted: transparent egress needs root (CAP_SYS_ADMIN)",
                    ),
                    Errno::EINVAL => ns_err(
                        "unshare(CLONE_NEWNET)",
                        "the kernel has no network namespaces (CONFIG_NET_NS)",
                    ),
                    e => ns_err("unshare(CLONE_NEWNET)", e),
                })?;
                let lo = nix::net::if_::if_nametoindex("lo")
                    .map_err(|e| ns_err("the namespace's lo", e))?;
                let mut rtnl = Rtnl::open()?;
                rtnl.link_up(lo)?;
                for (net, len) in local {
                    rtnl.add_local(net, len, lo)?;
                }
                std::fs::File::open("/proc/thread-self/ns/net")
                    .map(OwnedFd::from)
                    .map_err(|e| ns_err("/proc/thread-self/ns/net", e))
            })
            .map_err(|e| ns_err("a thread for the namespace", e))?;
        let fd = made
            .join()
            .map_err(|_| ns_err("the namespace's thread", "it panicked"))??;
        Ok(Netns { fd: Arc::new(fd) })
    }

    /// The namespace's descriptor, for a sandbox to join (`setns`) before its exec.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The descriptor, shared, for whoever must keep the namespace alive.
    pub fn shared_fd(&self) -> Arc<OwnedFd> {
        self.fd.clone()
    }

    /// Runs `f` on a fresh thread inside the namespace, so that the sockets it makes are the
    /// namespace's. Blocks for as long as `f` runs: call it off the async threads for more
    /// than making sockets.
    pub fn run<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, TransparentError> {
        let fd = self.fd.clone();
        let t = std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || -> std::io::Result<T> {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                f()
            })
            .map_err(|e| ns_err(what, e))?;
        t.join()
            .map_err(|_| ns_err(what, "its thread panicked"))?
            .map_err(|e| ns_err(what, e))
    }
}
