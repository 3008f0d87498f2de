//! Links: reading them, bridges, veth pairs, bridge ports, up/down, MTU, MAC, deletion.
//! VXLAN devices, a kind of link with more to reconcile, are in `vxlan.rs`.

use crate::connection::{Answer, Ask, Netlink};
use crate::error::{found, NetlinkError, Result};
use crate::mac;
use crate::netns::NetNs;
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};
use std::net::IpAddr;

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
                LinkAttribute::Address(a) => link.mac = mac::from_bytes(a),
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
        self.mac.map(|m| mac::format(&m)).unwrap_or_default()
    }
}

/// The parameters of an existing VXLAN device, as the kernel reports them
/// (IFLA_INFO_DATA of the link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Underlay source address (`local`), if one is set.
    pub local: Option<IpAddr>,
    /// Ifindex of the underlay device (`dev`), if one is set.
    pub underlay_index: Option<u32>,
    pub learning: bool,
}

impl VxlanInfo {
    pub(crate) fn from_info_data(data: &[InfoVxlan]) -> Self {
        let mut info = VxlanInfo {
            vni: 0,
            port: 0,
            local: None,
            underlay_index: None,
            // The kernel's default when IFLA_VXLAN_LEARNING is not given; it always
            // reports the attribute anyway.
            learning: true,
        };
        for attr in data {
            match attr {
                InfoVxlan::Id(v) => info.vni = *v,
                InfoVxlan::Port(p) => info.port = *p,
                InfoVxlan::Local(a) if !a.is_unspecified() => info.local = Some(IpAddr::V4(*a)),
                InfoVxlan::Local6(a) if !a.is_unspecified() => info.local = Some(IpAddr::V6(*a)),
                InfoVxlan::Link(i) if *i != 0 => info.underlay_index = Some(*i),
                InfoVxlan::Learning(l) => info.learning = *l,
                _ => {}
            }
        }
        info
    }
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

impl Netlink {
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        self.get_link(query, || format!("get link {name}")).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut query = LinkMessage::default();
        query.header.index = index;
        self.get_link(query, || format!("get link {index}")).await
    }

    async fn get_link(
        &self,
        query: LinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Option<Link>> {
        let query = RouteNetlinkMessage::GetLink(query);
        let answer = found(self.request(Ask::Get, query, op).await)?;
        let msg = answer
            .into_iter()
            .flatten()
            .find_map(LinkMessage::from_answer);
        Ok(msg.as_ref().map(Link::from_message))
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let query = RouteNetlinkMessage::GetLink(LinkMessage::default());
        let msgs: Vec<LinkMessage> = self.dump(query, || "list links".into()).await?;
        Ok(msgs.iter().map(Link::from_message).collect())
    }

    /// The veths whose master is the bridge named `bridge` (none when it does not exist).
    pub async fn veth_ports(&self, bridge: &str) -> Result<Vec<Link>> {
        let links = self.links().await?;
        let Some(br) = links.iter().find(|l| l.name == bridge).map(|l| l.index) else {
            return Ok(Vec::new());
        };
        Ok(links
            .into_iter()
            .filter(|l| l.master == Some(br) && l.kind.as_deref() == Some("veth"))
            .collect())
    }

    /// [`Netlink::veth_ports`] for a thread without a runtime (the address store's, when
    /// it rebuilds a lost store): a connection in this thread's namespace on a runtime of
    /// its own.
    pub fn veth_ports_blocking(bridge: &str) -> Result<Vec<Link>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Socket)?;
        rt.block_on(async { Netlink::connect()?.veth_ports(bridge).await })
    }

    /// Changes what `msg` sets on the existing link of its index.
    pub(crate) async fn set_link(
        &self,
        msg: LinkMessageBuilder<LinkUnspec>,
        op: impl FnOnce() -> String,
    ) -> Result<()> {
        let msg = RouteNetlinkMessage::SetLink(msg.build());
        self.change(Ask::Change, msg, op).await
    }

    /// Creates a bridge that is up, with a fixed MAC (a bridge otherwise takes the lowest
    /// MAC of its ports, which changes as pods come and go and breaks the pods' ARP
    /// caches). Returns the existing link if another process created it first.
    pub async fn ensure_bridge(&self, name: &str, mac: [u8; 6], mtu: u32) -> Result<Link> {
        if let Some(link) = self.link_by_name(name).await? {
            return Ok(link);
        }
        let msg = LinkBridge::new(name)
            .address(mac.to_vec())
            .mtu(mtu)
            .up()
            .build();
        let op = || format!("create bridge {name}");
        match self
            .change(Ask::Create, RouteNetlinkMessage::NewLink(msg), op)
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(e),
        }
        self.link_by_name(name).await?.ok_or_else(|| {
            NetlinkError::failed(format!("bridge {name} vanished right after creation"))
        })
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up();
        self.set_link(msg, || format!("set link {index} up")).await
    }

    pub async fn set_down(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).down();
        self.set_link(msg, || format!("set link {index} down"))
            .await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu);
        self.set_link(msg, || format!("set mtu {mtu} on link {index}"))
            .await
    }

    /// Sets the link's alias (cut to what the kernel keeps).
    pub async fn set_alias(&self, index: u32, alias: &str) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).alias(truncate(alias, MAX_ALIAS_LEN));
        self.set_link(msg, || format!("set alias of link {index}"))
            .await
    }

    /// Makes the link a port of `master` (a bridge).
    pub async fn set_master(&self, index: u32, master: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(master);
        self.set_link(msg, || format!("set master {master} on link {index}"))
            .await
    }

    /// Sets the link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).address(mac.to_vec());
        self.set_link(msg, || {
            format!("set MAC {} on link {index}", mac::format(&mac))
        })
        .await
    }

    /// Creates the veth pair in one request: host end up, with MTU and master; peer in
    /// its namespace with its final name and MTU.
    pub async fn add_veth(&self, spec: &VethSpec<'_>) -> Result<()> {
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
        let op = || format!("create veth {} (peer {})", spec.name, spec.peer_name);
        self.change(Ask::Create, RouteNetlinkMessage::NewLink(msg), op)
            .await
    }

    /// Sets a bridge port's hairpin mode and isolation (an isolated port exchanges
    /// frames with the bridge and non-isolated ports only) and, optionally, the link's
    /// alias, in one request (the kernel ignores an alias given when a link is created).
    pub async fn configure_port(
        &self,
        index: u32,
        hairpin: bool,
        isolated: bool,
        alias: Option<&str>,
    ) -> Result<()> {
        let mut msg = LinkBridgePort::new(index)
            .hairpin(hairpin)
            .isolated(isolated);
        if let Some(alias) = alias {
            msg = msg.alias(truncate(alias, MAX_ALIAS_LEN));
        }
        // RTM_NEWLINK without NLM_F_CREATE: changes the existing port.
        let msg = RouteNetlinkMessage::NewLink(msg.build());
        let op = || format!("configure bridge port {index}");
        self.change(Ask::Change, msg, op).await
    }

    /// Deletes a link; `Ok(false)` when it did not exist.
    pub async fn delete_link(&self, index: u32) -> Result<bool> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let op = || format!("delete link {index}");
        self.delete(RouteNetlinkMessage::DelLink(msg), op).await
    }

    /// Deletes a link by name; `Ok(false)` when it did not exist.
    pub async fn delete_link_by_name(&self, name: &str) -> Result<bool> {
        match self.link_by_name(name).await? {
            Some(link) => self.delete_link(link.index).await,
            None => Ok(false),
        }
    }
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
