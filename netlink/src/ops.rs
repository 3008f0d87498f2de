//! Links, addresses and routes over rtnetlink.

use crate::netns::{NetNs, NetnsError};
use crate::overlay::VxlanInfo;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{0}")]
    InvalidRoute(String),
    #[error("{op}: {source}")]
    Request {
        op: String,
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => Some(m.raw_code().abs()),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

pub(crate) trait Context<T> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T, NetlinkError>;
}

impl<T> Context<T> for Result<T, rtnetlink::Error> {
    fn op(self, op: impl FnOnce() -> String) -> Result<T, NetlinkError> {
        self.map_err(|source| NetlinkError::Request { op: op(), source })
    }
}

/// What Twill needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    /// Index of the bridge (or other controller) the link is a port of.
    pub master: Option<u32>,
    /// `veth`, `bridge`, `vxlan`, ...; `None` for devices without a kind (loopback, physical).
    pub kind: Option<String>,
    /// For a veth: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
    pub alias: Option<String>,
    /// For a VXLAN device: its parameters (from IFLA_INFO_DATA).
    pub vxlan: Option<VxlanInfo>,
}

impl Link {
    fn from_message(msg: &LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            peer_index: None,
            alias: None,
            vxlan: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(a);
                    link.mac = Some(mac);
                }
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Controller(m) => link.master = Some(*m),
                LinkAttribute::Link(p) => link.peer_index = Some(*p),
                LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::Data(InfoData::Vxlan(data)) => {
                                link.vxlan = Some(VxlanInfo::from_info_data(data))
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    pub fn mac_string(&self) -> String {
        self.mac.map(|m| format_mac(&m)).unwrap_or_default()
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A veth pair whose host end is created here and whose peer is born directly in
/// another namespace, so a peer named `eth0` never collides with the host's `eth0`.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub name: &'a str,
    pub mtu: u32,
    pub master: Option<u32>,
    pub peer_name: &'a str,
    pub peer_netns: &'a NetNs,
}

/// The kernel accepts IFLA_IFALIAS up to IFALIASZ - 1 = 255 bytes including the NUL
/// that netlink strings carry.
const MAX_ALIAS_LEN: usize = 254;

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A route as Twill reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub protocol: u8,
    pub table: u32,
    /// The route carries the `onlink` flag (its gateway is not checked against the
    /// link's prefixes).
    pub onlink: bool,
}

/// Requests of ours in flight on one socket at most. The kernel queues every answer in
/// the socket's receive buffer (an ACK takes ~1 KiB of it) and drops what does not fit;
/// netlink-proto then waits forever for the dropped answer. It writes requests as they
/// come and reads answers only when the runtime reports the socket readable, so on a
/// busy runtime hundreds of answers can pile up unread: 2,000-5,000 concurrent callers
/// with the default 208 KiB buffer hung about one run in three (the socket's `Drops` in
/// /proc/net/netlink counted the lost answers). Waiting for a slot here keeps the unread
/// answers well within even the default buffer.
const MAX_IN_FLIGHT: usize = 128;

/// Receive buffer asked for (best effort; SO_RCVBUFFORCE needs CAP_NET_ADMIN, otherwise
/// net.core.rmem_max caps it). Room for dump batches next to MAX_IN_FLIGHT answers.
const RCVBUF: libc::c_int = 4 << 20;

/// A netlink connection bound to one network namespace. Clones share the socket.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    limits: Arc<Limits>,
}

struct Limits {
    in_flight: Semaphore,
    /// The kernel runs one dump at a time per socket and answers EBUSY to a second.
    dump: Mutex<()>,
}

/// Held while a dump runs: the socket's dump turn and one in-flight slot.
pub(crate) type DumpTurn<'a> = (MutexGuard<'a, ()>, SemaphorePermit<'a>);

impl Netlink {
    fn new(
        mut conn: rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage>,
        handle: Handle,
    ) -> Self {
        use rtnetlink::sys::AsyncSocket;
        let fd = std::os::fd::AsRawFd::as_raw_fd(conn.socket_mut().socket_ref());
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: setsockopt on an open socket with a c_int option value.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&RCVBUF as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
        tokio::spawn(conn);
        Netlink {
            handle,
            limits: Arc::new(Limits {
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                dump: Mutex::new(()),
            }),
        }
    }

    /// Waits for an in-flight slot; hold it until the request's answer is read. Never
    /// take a second one while holding one.
    pub(crate) async fn slot(&self) -> SemaphorePermit<'_> {
        self.limits
            .in_flight
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Waits for the socket's dump turn; hold it until the dump is read to its end.
    pub(crate) async fn dump_turn(&self) -> DumpTurn<'_> {
        let turn = self.limits.dump.lock().await;
        (turn, self.slot().await)
    }

    /// Connects in the calling thread's namespace. Needs a tokio runtime context.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        Ok(Netlink::new(conn, handle))
    }

    /// Connects in `ns`: the socket is opened by a thread inside `ns` and stays bound
    /// to it. Needs a tokio runtime context.
    pub fn connect_in(ns: &NetNs) -> Result<Self, NetlinkError> {
        Self::connect_in_with(ns, || ()).map(|(nl, ())| nl)
    }

    /// Like [`Netlink::connect_in`], and runs `f` on the thread inside `ns` first (for
    /// namespace-local work such as sysctls), saving a second thread.
    pub fn connect_in_with<T: Send>(
        ns: &NetNs,
        f: impl FnOnce() -> T + Send,
    ) -> Result<(Self, T), NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        let (socket, out) = ns.run(move || {
            let out = f();
            let _guard = rt.enter();
            (rtnetlink::new_connection(), out)
        })?;
        let (conn, handle, _) = socket.map_err(NetlinkError::Socket)?;
        Ok((Netlink::new(conn, handle), out))
    }

    /// Like [`Netlink::connect_in_with`], on the calling thread, which enters `ns` and
    /// comes back ([`NetNs::run_here`]). For single-threaded callers (the plugin).
    pub fn connect_in_here_with<T>(
        ns: &NetNs,
        f: impl FnOnce() -> T,
    ) -> Result<(Self, T), NetlinkError> {
        let (socket, out) = ns.run_here(|| {
            let out = f();
            (rtnetlink::new_connection(), out)
        })?;
        let (conn, handle, _) = socket.map_err(NetlinkError::Socket)?;
        Ok((Netlink::new(conn, handle), out))
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let _slot = self.slot().await;
        let res = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await
            .op(|| format!("get link {name}"));
        match res {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>, NetlinkError> {
        let _slot = self.slot().await;
        let res = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .op(|| format!("get link {index}"));
        match res {
            Ok(msg) => Ok(msg.as_ref().map(Link::from_message)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let _turn = self.dump_turn().await;
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .op(|| "list links".into())?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// Creates a bridge that is up, with a fixed MAC (a bridge otherwise takes the lowest
    /// MAC of its ports, which changes as pods come and go and breaks the pods' ARP
    /// caches). Returns the existing link if another process created it first.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        mtu: u32,
    ) -> Result<Link, NetlinkError> {
        if let Some(link) = self.link_by_name(name).await? {
            return Ok(link);
        }
        let msg = LinkBridge::new(name)
            .address(mac.to_vec())
            .mtu(mtu)
            .up()
            .build();
        let slot = self.slot().await;
        let res = self
            .handle
            .link()
            .add(msg)
            .execute()
            .await
            .op(|| format!("create bridge {name}"));
        drop(slot);
        match res {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        self.link_by_name(name)
            .await?
            .ok_or_else(|| NetlinkError::Request {
                op: format!("bridge {name} vanished right after creation"),
                source: rtnetlink::Error::RequestFailed,
            })
    }

    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .op(|| format!("set link {index} up"))
    }

    pub async fn set_down(&self, index: u32) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let msg = LinkUnspec::new_with_index(index).down().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .op(|| format!("set link {index} down"))
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .op(|| format!("set mtu {mtu} on link {index}"))
    }

    /// Creates the veth pair in one request: host end up, with MTU and master; peer in
    /// its namespace with its final name and MTU.
    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let peer = LinkUnspec::new_with_name(spec.peer_name)
            .mtu(spec.mtu)
            .setns_by_fd(spec.peer_netns.fd())
            .build();
        let mut host = LinkVeth::new(spec.name, spec.peer_name).mtu(spec.mtu).up();
        if let Some(master) = spec.master {
            host = host.controller(master);
        }
        let msg = host
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .op(|| format!("create veth {} (peer {})", spec.name, spec.peer_name))
    }

    /// Sets a bridge port's hairpin mode and, optionally, the link's alias, in one
    /// request (the kernel ignores an alias given when a link is created).
    pub async fn configure_port(
        &self,
        index: u32,
        hairpin: bool,
        alias: Option<&str>,
    ) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut msg = LinkBridgePort::new(index).hairpin(hairpin);
        if let Some(alias) = alias {
            msg = msg.alias(truncate(alias, MAX_ALIAS_LEN));
        }
        self.handle
            .link()
            .set_port(msg.build())
            .execute()
            .await
            .op(|| format!("configure bridge port {index}"))
    }

    /// Deletes a link; `Ok(false)` when it did not exist.
    pub async fn delete_link(&self, index: u32) -> Result<bool, NetlinkError> {
        let _slot = self.slot().await;
        match self
            .handle
            .link()
            .del(index)
            .execute()
            .await
            .op(|| format!("delete link {index}"))
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a link by name; `Ok(false)` when it did not exist.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool, NetlinkError> {
        match self.link_by_name(name).await? {
            Some(link) => self.delete_link(link.index).await,
            None => Ok(false),
        }
    }

    /// The addresses on a link (all families).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let _turn = self.dump_turn().await;
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .op(|| format!("list addresses of link {index}"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(address_of)
            .collect())
    }

    /// Adds an address; an address already present is not an error. IPv6 addresses skip
    /// duplicate address detection: Twill's addresses are unique by construction, and
    /// DAD keeps them unusable ("tentative") for a second or more.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len())
            .replace();
        if addr.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .op(|| format!("add address {addr} to link {index}"))
    }

    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut msg = AddressMessage::default();
        msg.header.family = if addr.addr().is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        // IPv4 addresses are matched by IFA_LOCAL, IPv6 ones by IFA_ADDRESS.
        msg.attributes.push(if addr.addr().is_ipv4() {
            AddressAttribute::Local(addr.addr())
        } else {
            AddressAttribute::Address(addr.addr())
        });
        match self
            .handle
            .address()
            .del(msg)
            .execute()
            .await
            .op(|| format!("delete address {addr} from link {index}"))
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other,
        }
    }

    /// Adds (or replaces) a route in the main table.
    pub async fn replace_route(
        &self,
        dst: IpNet,
        gw: Option<IpAddr>,
        oif: u32,
        protocol: Option<u8>,
    ) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| NetlinkError::InvalidRoute(format!("route to {dst}: {e:?}")))?
            .output_interface(oif);
        if let Some(gw) = gw {
            builder = builder.gateway(gw).map_err(|e| {
                NetlinkError::InvalidRoute(format!("route to {dst} via {gw}: {e:?}"))
            })?;
        } else {
            builder = builder.scope(RouteScope::Link);
        }
        if let Some(p) = protocol {
            builder = builder.protocol(RouteProtocol::from(p));
        }
        self.handle
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .op(|| match gw {
                Some(gw) => format!("add route {dst} via {gw} (link {oif})"),
                None => format!("add route {dst} (link {oif})"),
            })
    }

    /// Routes of the main table for one family (`v6 = false` for IPv4).
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>, NetlinkError> {
        let query = if v6 {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build()
        };
        let _turn = self.dump_turn().await;
        let msgs: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .op(|| "list routes".into())?;
        Ok(msgs.iter().filter_map(route_of).collect())
    }
}

fn address_of(m: &AddressMessage) -> Option<IpNet> {
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 has only IFA_ADDRESS.
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })?;
    IpNet::new(addr, m.header.prefix_len).ok()
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_of(m: &RouteMessage) -> Option<Route> {
    let v6 = m.header.address_family == AddressFamily::Inet6;
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    let mut table = u32::from(m.header.table);
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_addr(a),
            RouteAttribute::Gateway(a) => gw = route_addr(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    });
    Some(Route {
        dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        oif,
        protocol: u8::from(m.header.protocol),
        table,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
    })
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
