//! The two rtnetlink requests the workload's network namespace needs: `lo` up, and a local
//! route (AnyIP) for each range whose connections cidboot takes. Written by hand: each is one
//! fixed-shape message and one acknowledgement, which no crate makes shorter to check.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

use super::TransparentError;

const NLMSG_HDR: usize = 16;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWROUTE: u16 = 24;
const IFF_UP: u32 = 1;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

/// A route socket of the calling thread's network namespace.
pub struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

fn err(what: &str, e: impl std::fmt::Display) -> TransparentError {
    TransparentError::Netns(format!("{what}: {e}"))
}

fn header(body: &[u8], kind: u16, flags: u16, seq: u32) -> Vec<u8> {
    let len = u32::try_from(NLMSG_HDR + body.len()).unwrap_or(u32::MAX);
    let mut m = Vec::with_capacity(NLMSG_HDR + body.len());
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

fn attr(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    // Every attribute here is 4 or 8 bytes long: no padding is needed.
    let len = u16::try_from(4 + data.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
}

impl Rtnl {
    /// Opens the socket in the calling thread's namespace.
    pub fn open() -> Result<Rtnl, TransparentError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| err("a netlink route socket", e))?;
        Ok(Rtnl { fd, seq: 0 })
    }

    fn request(
        &mut self,
        what: &str,
        kind: u16,
        flags: u16,
        body: &[u8],
    ) -> Result<(), TransparentError> {
        self.seq += 1;
        let msg = header(body, kind, flags | NLM_F_REQUEST | NLM_F_ACK, self.seq);
        sendto(
            self.fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| err(what, e))?;
        let mut buf = [0u8; 1024];
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| err(what, e))?;
        let reply = buf.get(..n).unwrap_or(&[]);
        // The acknowledgement: nlmsghdr of type NLMSG_ERROR, then the error number (0: done).
        let kind_ok = reply.get(4..6) == Some(&NLMSG_ERROR.to_ne_bytes()[..]);
        let code = reply
            .get(NLMSG_HDR..NLMSG_HDR + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(i32::from_ne_bytes);
        match (kind_ok, code) {
            (true, Some(0)) => Ok(()),
            (true, Some(c)) => Err(err(what, std::io::Error::from_raw_os_error(-c))),
            _ => Err(err(what, "the kernel's answer is not an acknowledgement")),
        }
    }

    /// Sets interface `index` up.
    pub fn link_up(&mut self, index: u32) -> Result<(), TransparentError> {
        // struct ifinfomsg: family, pad, type, index, flags, change.
        let mut b = vec![0u8; 4];
        b.extend_from_slice(&i32::try_from(index).unwrap_or(i32::MAX).to_ne_bytes());
        b.extend_from_slice(&IFF_UP.to_ne_bytes());
        b.extend_from_slice(&IFF_UP.to_ne_bytes());
        self.request("setting lo up", RTM_NEWLINK, 0, &b)
    }

    /// Adds `net/len` as local to interface `index`: the kernel then takes every connection
    /// to an address of it as one to this host, for a listener on the port to accept.
    pub fn add_local(
        &mut self,
        net: Ipv4Addr,
        len: u8,
        index: u32,
    ) -> Result<(), TransparentError> {
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
        let family = u8::try_from(libc::AF_INET).unwrap_or(2);
        let mut b = vec![
            family,
            len,
            0,
            0,
            RT_TABLE_LOCAL,
            RTPROT_STATIC,
            RT_SCOPE_HOST,
            RTN_LOCAL,
        ];
        b.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut b, RTA_DST, &net.octets());
        attr(&mut b, RTA_OIF, &index.to_ne_bytes());
        self.request(
            &format!("the local route {net}/{len} on lo"),
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_EXCL,
            &b,
        )
    }
}
