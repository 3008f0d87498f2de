//! Raw rtnetlink route sockets bound to a node namespace: a dump of the IPv4 routes, and
//! a subscription to IPv4 route notifications (RTNLGRP_IPV4_ROUTE). The kernel sends a
//! notification from inside the request that inserts a route, so its arrival time is
//! when the route became usable, without polling a 5,000-route table (and taking CPU
//! from the agent under test on a 2-core machine).
//!
//! The socket is opened by a thread that entered the namespace (through
//! `twill_netlink::NetNs::run`) and stays bound to it; this thread never moves.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

const NETLINK_ROUTE: libc::c_int = 0;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_TABLE: u16 = 15;
pub const RT_TABLE_MAIN: u32 = 254;
/// Receive buffer asked for (SO_RCVBUFFORCE, as root): thousands of notifications can
/// arrive in a burst while the reader sleeps.
const RCVBUF: libc::c_int = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMsg {
    /// RTM_NEWROUTE (true) or RTM_DELROUTE.
    pub new: bool,
    pub dst: Prefix,
    pub protocol: u8,
    pub table: u32,
}

/// Notifications read in one wake-up, with the time they were read.
pub struct Batch {
    pub at: Instant,
    pub routes: Vec<RouteMsg>,
    /// The socket overflowed (ENOBUFS): notifications were lost; dump to recover.
    pub overflow: bool,
}

pub struct RouteSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl RouteSocket {
    /// A socket for dumps in the namespace at `ns` (e.g. /run/netns/x).
    pub fn dump_in(ns: &Path) -> Result<Self> {
        Self::open_in(ns, 0)
    }

    /// A socket that receives the namespace's IPv4 route notifications.
    pub fn monitor_in(ns: &Path) -> Result<Self> {
        Self::open_in(ns, RTMGRP_IPV4_ROUTE)
    }

    fn open_in(ns: &Path, groups: u32) -> Result<Self> {
        let handle = twill_netlink::NetNs::open(ns)?;
        let fd = handle.run(move || open(groups))??;
        Ok(RouteSocket {
            fd,
            buf: vec![0; 1 << 20],
            seq: 0,
        })
    }

    /// Every IPv4 route of every table.
    pub fn dump(&mut self) -> Result<Vec<RouteMsg>> {
        self.seq = self.seq.wrapping_add(1);
        let mut req = [0u8; 28];
        req[0..4].copy_from_slice(&28u32.to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        req[16] = libc::AF_INET as u8;
        // SAFETY: sending a buffer we own on a socket we own.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a route dump request");
        }
        let mut out = Vec::new();
        loop {
            let n = self.recv(0)?.context("route dump: socket closed")?;
            if parse(&self.buf[..n], Some(self.seq), &mut out)? {
                return Ok(out);
            }
        }
    }

    /// Routes of the main table with `protocol`.
    pub fn count_protocol(&mut self, protocol: u8) -> Result<usize> {
        Ok(self
            .dump()?
            .iter()
            .filter(|r| r.protocol == protocol && r.table == RT_TABLE_MAIN)
            .count())
    }

    /// Waits up to `timeout` for notifications and reads all that are queued.
    pub fn wait(&mut self, timeout: Duration) -> Result<Batch> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        let at = Instant::now();
        let mut batch = Batch {
            at,
            routes: Vec::new(),
            overflow: false,
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                return Ok(batch);
            }
            return Err(e).context("poll on the route monitor");
        }
        if rc == 0 {
            return Ok(batch);
        }
        self.drain_into(&mut batch)?;
        Ok(batch)
    }

    /// Reads and discards what is queued (stale notifications before a new trial).
    pub fn drain(&mut self) -> Result<bool> {
        let mut batch = Batch {
            at: Instant::now(),
            routes: Vec::new(),
            overflow: false,
        };
        self.drain_into(&mut batch)?;
        Ok(batch.overflow)
    }

    fn drain_into(&mut self, batch: &mut Batch) -> Result<()> {
        loop {
            match self.recv(libc::MSG_DONTWAIT) {
                Ok(Some(n)) => {
                    let mut msgs = Vec::new();
                    parse(&self.buf[..n], None, &mut msgs)?;
                    batch.routes.extend(msgs);
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let io = e.downcast_ref::<std::io::Error>();
                    match io.and_then(|e| e.raw_os_error()) {
                        Some(libc::EAGAIN) => return Ok(()),
                        Some(libc::ENOBUFS) => batch.overflow = true,
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    /// One datagram; `None` at end of file.
    fn recv(&mut self, flags: libc::c_int) -> Result<Option<usize>> {
        loop {
            // SAFETY: receiving into a buffer we own.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    flags,
                )
            };
            if n > 0 {
                return Ok(Some(n as usize));
            }
            if n == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e.into());
            }
        }
    }
}

fn open(groups: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket calls; the descriptor is owned at once.
    unsafe {
        let raw = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_ROUTE,
        );
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let size = RCVBUF;
        let p = (&size as *const libc::c_int).cast();
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, p, len) != 0 {
            libc::setsockopt(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, p, len);
        }
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = groups;
        let rc = libc::bind(
            raw,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        );
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Appends the IPv4 route messages of one datagram to `out`; true when it held
/// NLMSG_DONE. With `seq`, messages of other sequence numbers are skipped.
fn parse(mut b: &[u8], seq: Option<u32>, out: &mut Vec<RouteMsg>) -> Result<bool> {
    const HDR: usize = 16;
    const RTMSG: usize = 12;
    let mut done = false;
    while b.len() >= HDR {
        let len = u32_at(b, 0) as usize;
        if len < HDR || len > b.len() {
            bail!("malformed netlink message (length {len} of {})", b.len());
        }
        let kind = u16_at(b, 4);
        let msg = &b[..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        if seq.is_some_and(|s| s != u32_at(msg, 8)) {
            continue;
        }
        match kind {
            NLMSG_DONE => done = true,
            NLMSG_ERROR if msg.len() >= HDR + 4 => {
                let errno = -(u32_at(msg, HDR) as i32);
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(errno))
                        .context("route dump refused");
                }
            }
            RTM_NEWROUTE | RTM_DELROUTE if msg.len() >= HDR + RTMSG => {
                let rt = &msg[HDR..];
                if rt[0] != libc::AF_INET as u8 {
                    continue;
                }
                let mut r = RouteMsg {
                    new: kind == RTM_NEWROUTE,
                    dst: Prefix {
                        addr: Ipv4Addr::UNSPECIFIED,
                        len: rt[1],
                    },
                    protocol: rt[5],
                    table: u32::from(rt[4]),
                };
                let mut attrs = &rt[RTMSG..];
                while attrs.len() >= 4 {
                    let alen = u16_at(attrs, 0) as usize;
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    let data = &attrs[4..alen];
                    match u16_at(attrs, 2) {
                        RTA_DST if data.len() == 4 => {
                            r.dst.addr = Ipv4Addr::new(data[0], data[1], data[2], data[3])
                        }
                        RTA_TABLE if data.len() == 4 => r.table = u32_at(data, 0),
                        _ => {}
                    }
                    attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
                }
                out.push(r);
            }
            _ => {}
        }
    }
    Ok(done)
}
