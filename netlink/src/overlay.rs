//! VXLAN device, neighbour, FDB and route operations for the overlay agent.
//!
//! Every operation is a single netlink request (or one dump) on the shared connection,
//! and the agent runs thousands of them concurrently on it. Two limits of the
//! connection apply (see `Netlink::slot` and `Netlink::dump_turn`): at most
//! `MAX_IN_FLIGHT` requests are in flight (more would lose kernel answers), and dumps
//! take turns (the kernel answers EBUSY to a second dump on the same socket).

use crate::ops::{Context, Link, Netlink, NetlinkError, Route};
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::InfoVxlan;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope, RouteType};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkUnspec, LinkVxlan, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The main routing table (RT_TABLE_MAIN).
const MAIN_TABLE: u32 = 254;

/// What the agent wants its VXLAN device to be.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// UDP destination port, e.g. 8472.
    pub port: u16,
    /// Underlay source address.
    pub local: IpAddr,
    /// Ifindex of the underlay device (`dev`).
    pub underlay_index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
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

    /// True when a device with these parameters is the one `spec` asks for (MAC, MTU and
    /// up-state aside, which can be fixed in place).
    fn matches(&self, spec: &VxlanSpec<'_>) -> bool {
        self.vni == spec.vni
            && self.port == spec.port
            && self.local == Some(spec.local)
            && self.underlay_index == Some(spec.underlay_index)
            && !self.learning
    }
}

fn vxlan_matches(link: &Link, spec: &VxlanSpec<'_>) -> bool {
    link.kind.as_deref() == Some("vxlan") && link.vxlan.as_ref().is_some_and(|v| v.matches(spec))
}

fn mac_of(bytes: &[u8]) -> Option<[u8; 6]> {
    <[u8; 6]>::try_from(bytes).ok()
}

/// A neighbour/FDB address as an IP. In an AF_BRIDGE (FDB) message the destination is
/// not typed by the header's family, so netlink-packet-route hands it back as raw bytes:
/// 4 of them for IPv4, 16 for IPv6.
fn neighbour_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        NeighbourAddress::Other(b) => {
            if let Ok(v4) = <[u8; 4]>::try_from(b.as_slice()) {
                Some(IpAddr::V4(Ipv4Addr::from(v4)))
            } else if let Ok(v6) = <[u8; 16]>::try_from(b.as_slice()) {
                Some(IpAddr::V6(Ipv6Addr::from(v6)))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn tolerate_not_found(res: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match res {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

fn mac_str(m: &[u8; 6]) -> String {
    crate::ops::format_mac(m)
}

impl Netlink {
    /// Creates the VXLAN device if missing (learning off, given MAC and MTU, up). If a
    /// link with that name exists but is not a VXLAN device, or has another VNI, port,
    /// local address or underlay device, or has learning on, deletes and recreates it.
    /// If it exists and matches, only fixes MAC, MTU and up-state where they differ, in
    /// one request (none when nothing differs). Returns the link (read after the
    /// changes) and whether it was (re)created.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<(Link, bool), NetlinkError> {
        let mut created = false;
        let link = match self.link_by_name(spec.name).await? {
            Some(link) if vxlan_matches(&link, spec) => link,
            existing => {
                if let Some(old) = existing {
                    tracing::info!(
                        name = spec.name,
                        index = old.index,
                        kind = ?old.kind,
                        vxlan = ?old.vxlan,
                        "recreating VXLAN device with other parameters"
                    );
                    self.delete_link(old.index).await?;
                }
                match self.create_vxlan(spec).await {
                    Ok(()) => created = true,
                    // Someone created it in between: judged below.
                    Err(e) if e.is_exists() => {}
                    Err(e) => return Err(e),
                }
                let link =
                    self.link_by_name(spec.name)
                        .await?
                        .ok_or_else(|| NetlinkError::Request {
                            op: format!("VXLAN device {} vanished right after creation", spec.name),
                            source: rtnetlink::Error::RequestFailed,
                        })?;
                if !vxlan_matches(&link, spec) {
                    return Err(NetlinkError::Request {
                        op: format!(
                            "VXLAN device {} was created with other parameters: {:?}",
                            spec.name, link.vxlan
                        ),
                        source: rtnetlink::Error::RequestFailed,
                    });
                }
                link
            }
        };

        let mut msg = LinkUnspec::new_with_index(link.index);
        let mut drift = false;
        if link.mac != Some(spec.mac) {
            msg = msg.address(spec.mac.to_vec());
            drift = true;
        }
        if link.mtu != spec.mtu {
            msg = msg.mtu(spec.mtu);
            drift = true;
        }
        if !link.up {
            msg = msg.up();
            drift = true;
        }
        if !drift {
            return Ok((link, created));
        }
        let slot = self.slot().await;
        self.handle()
            .link()
            .set(msg.build())
            .execute()
            .await
            .op(|| format!("fix MAC/MTU/up-state of VXLAN device {}", spec.name))?;
        drop(slot);
        let link = self
            .link_by_index(link.index)
            .await?
            .ok_or_else(|| NetlinkError::Request {
                op: format!("VXLAN device {} vanished while being configured", spec.name),
                source: rtnetlink::Error::RequestFailed,
            })?;
        Ok((link, created))
    }

    async fn create_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut builder = LinkVxlan::new(spec.name, spec.vni)
            .dev(spec.underlay_index)
            .port(spec.port)
            .learning(false);
        builder = match spec.local {
            IpAddr::V4(a) => builder.local(a),
            IpAddr::V6(a) => builder.local6(a),
        };
        let msg = builder
            .address(spec.mac.to_vec())
            .mtu(spec.mtu)
            .up()
            .build();
        self.handle().link().add(msg).execute().await.op(|| {
            format!(
                "create VXLAN device {} (vni {}, port {}, local {}, dev {})",
                spec.name, spec.vni, spec.port, spec.local, spec.underlay_index
            )
        })
    }

    /// Neighbour entries on `link_index` in NUD_PERMANENT state, both families: (ip, mac).
    pub async fn permanent_neighbours(
        &self,
        link_index: u32,
    ) -> Result<Vec<(IpAddr, [u8; 6])>, NetlinkError> {
        let _turn = self.dump_turn().await;
        let mut req = self.handle().neighbours().get();
        // The kernel filters a neighbour dump on NDA_IFINDEX (with or without strict
        // checking); the filter below is kept in case it does not.
        req.message_mut()
            .attributes
            .push(NeighbourAttribute::IfIndex(link_index));
        let msgs: Vec<NeighbourMessage> = req
            .execute()
            .try_collect()
            .await
            .op(|| format!("list neighbours of link {link_index}"))?;
        Ok(msgs
            .iter()
            .filter(|m| {
                m.header.ifindex == link_index
                    && m.header.state == NeighbourState::Permanent
                    && matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
            })
            .filter_map(|m| {
                let (ip, mac) = ip_and_mac(m);
                Some((ip?, mac?))
            })
            .collect())
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <link> nud permanent`
    pub async fn replace_neighbour(
        &self,
        link_index: u32,
        ip: IpAddr,
        mac: [u8; 6],
    ) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        self.handle()
            .neighbours()
            .add(link_index, ip)
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .op(|| {
                format!(
                    "replace neighbour {ip} lladdr {} on link {link_index}",
                    mac_str(&mac)
                )
            })
    }

    /// Deletes the neighbour entry for `ip` on `link_index`; `Ok(())` when it is
    /// already gone (or the link is).
    pub async fn delete_neighbour(&self, link_index: u32, ip: IpAddr) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut msg = NeighbourMessage::default();
        msg.header.family = family_of(ip);
        msg.header.ifindex = link_index;
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        tolerate_not_found(
            self.handle()
                .neighbours()
                .del(msg)
                .execute()
                .await
                .op(|| format!("delete neighbour {ip} on link {link_index}")),
        )
    }

    /// FDB entries of the VXLAN device `link_index` that have a destination IP:
    /// (mac, dst), one per remote. Entries without NDA_DST and the all-zero MAC are
    /// skipped.
    ///
    /// Without strict checking on the socket the kernel cannot filter an AF_BRIDGE dump
    /// by an ndmsg's ifindex, so this dumps the whole FDB of the namespace (bridges
    /// included) once and filters here.
    pub async fn fdb_entries(
        &self,
        link_index: u32,
    ) -> Result<Vec<([u8; 6], IpAddr)>, NetlinkError> {
        let _turn = self.dump_turn().await;
        let msgs: Vec<NeighbourMessage> = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .op(|| format!("list FDB entries of link {link_index}"))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.ifindex == link_index)
            .filter_map(|m| {
                let (dst, mac) = ip_and_mac(m);
                let mac = mac.filter(|m| *m != [0; 6])?;
                Some((mac, dst?))
            })
            .collect())
    }

    /// `bridge fdb replace <mac> dev <link> dst <ip> self permanent`
    ///
    /// On a VXLAN device whose `local` is IPv6 the kernel accepts only IPv6
    /// destinations, and IPv4 ones on an IPv4 device (EAFNOSUPPORT otherwise).
    pub async fn replace_fdb(
        &self,
        link_index: u32,
        mac: [u8; 6],
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        self.handle()
            .neighbours()
            .add_bridge(link_index, &mac)
            .destination(dst)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .op(|| {
                format!(
                    "replace FDB entry {} dst {dst} on link {link_index}",
                    mac_str(&mac)
                )
            })
    }

    /// `bridge fdb del <mac> dev <link> dst <ip> self`; `Ok(())` when already gone
    /// (including when `mac` is there with other destinations only, which stay).
    pub async fn delete_fdb(
        &self,
        link_index: u32,
        mac: [u8; 6],
        dst: IpAddr,
    ) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = link_index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        tolerate_not_found(self.handle().neighbours().del(msg).execute().await.op(|| {
            format!(
                "delete FDB entry {} dst {dst} on link {link_index}",
                mac_str(&mac)
            )
        }))
    }

    /// Routes of the main table, both families, whose protocol is `protocol`.
    pub async fn routes_by_protocol(&self, protocol: u8) -> Result<Vec<Route>, NetlinkError> {
        // One after the other: a socket runs one dump at a time.
        let v4 = self.routes(false).await?;
        let v6 = self.routes(true).await?;
        Ok(v4
            .into_iter()
            .chain(v6)
            .filter(|r| r.protocol == protocol && r.table == MAIN_TABLE)
            .collect())
    }

    /// `ip route replace <dst> via <via> dev <oif> [onlink] proto <protocol>` in the
    /// main table. `dst` is truncated to its network address.
    pub async fn replace_route_via(
        &self,
        dst: IpNet,
        via: IpAddr,
        oif: u32,
        onlink: bool,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let dst = dst.trunc();
        let mut builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| NetlinkError::InvalidRoute(format!("route to {dst}: {e}")))?
            .gateway(via)
            .map_err(|e| NetlinkError::InvalidRoute(format!("route to {dst} via {via}: {e}")))?
            .output_interface(oif)
            .protocol(RouteProtocol::from(protocol));
        if onlink {
            builder = builder.onlink();
        }
        self.handle()
            .route()
            .add(builder.build())
            .replace()
            .execute()
            .await
            .op(|| {
                format!(
                    "replace route {dst} via {via} (link {oif}{}, proto {protocol})",
                    if onlink { ", onlink" } else { "" }
                )
            })
    }

    /// Deletes the route to `dst` with this protocol from the main table; `Ok(())` when
    /// already gone (a route to `dst` with another protocol is left alone).
    pub async fn delete_route(&self, dst: IpNet, protocol: u8) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let dst = dst.trunc();
        // As `ip route del`: scope "nowhere" and no type match any route to `dst`; the
        // protocol narrows it to ours.
        let msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .map_err(|e| NetlinkError::InvalidRoute(format!("route to {dst}: {e}")))?
            .protocol(RouteProtocol::from(protocol))
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec)
            .build();
        tolerate_not_found(
            self.handle()
                .route()
                .del(msg)
                .execute()
                .await
                .op(|| format!("delete route {dst} proto {protocol}")),
        )
    }

    /// Sets the link's MAC address.
    pub async fn set_mac(&self, index: u32, mac: [u8; 6]) -> Result<(), NetlinkError> {
        let _slot = self.slot().await;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .op(|| format!("set MAC {} on link {index}", mac_str(&mac)))
    }
}

/// The IP (NDA_DST) and MAC (NDA_LLADDR) of a neighbour or FDB message.
fn ip_and_mac(m: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
            _ => {}
        }
    }
    (ip, mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_destination_bytes_decode_by_length() {
        assert_eq!(
            neighbour_ip(&NeighbourAddress::Other(vec![10, 0, 0, 1])),
            Some("10.0.0.1".parse().unwrap())
        );
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        assert_eq!(
            neighbour_ip(&NeighbourAddress::Other(v6.octets().to_vec())),
            Some(IpAddr::V6(v6))
        );
        assert_eq!(neighbour_ip(&NeighbourAddress::Other(vec![1, 2])), None);
    }

    #[test]
    fn vxlan_info_matches_spec() {
        let spec = VxlanSpec {
            name: "twill.1",
            vni: 1,
            port: 8472,
            local: "10.0.0.1".parse().unwrap(),
            underlay_index: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1450,
        };
        let info = VxlanInfo::from_info_data(&[
            InfoVxlan::Id(1),
            InfoVxlan::Local("10.0.0.1".parse().unwrap()),
            InfoVxlan::Link(2),
            InfoVxlan::Port(8472),
            InfoVxlan::Learning(false),
        ]);
        assert!(info.matches(&spec));
        assert!(!VxlanInfo {
            vni: 2,
            ..info.clone()
        }
        .matches(&spec));
        assert!(!VxlanInfo {
            learning: true,
            ..info.clone()
        }
        .matches(&spec));
        assert!(!VxlanInfo {
            underlay_index: None,
            ..info.clone()
        }
        .matches(&spec));
        assert!(!VxlanInfo { port: 4789, ..info }.matches(&spec));
    }
}
