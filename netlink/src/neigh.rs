//! Neighbour (ARP/NDP) entries and FDB entries: both are RTM_*NEIGH objects, FDB
//! entries in the AF_BRIDGE family.

use crate::connection::{Ask, Netlink};
use crate::error::Result;
use crate::mac;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The neighbour entry for `ip` on `link_index`, as a delete names it.
fn neighbour_message(link_index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = link_index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg
}

/// The permanent FDB entry `mac` → `dst` that the VXLAN device itself holds (`self`),
/// as both a replace and a delete name it.
fn fdb_message(link_index: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = link_index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
    msg
}

impl Netlink {
    /// Dumps the entries `query` asks for (its family: neighbours or FDB) and keeps
    /// those of `link_index`.
    async fn entries_on(
        &self,
        query: NeighbourMessage,
        link_index: u32,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>> {
        let query = RouteNetlinkMessage::GetNeighbour(query);
        let op = || format!("list {what} of link {link_index}");
        let msgs: Vec<NeighbourMessage> = self.dump(query, op).await?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.ifindex == link_index)
            .collect())
    }

    /// Neighbour entries on `link_index` in NUD_PERMANENT state, both families: (ip, mac).
    pub async fn permanent_neighbours(&self, link_index: u32) -> Result<Vec<(IpAddr, [u8; 6])>> {
        // The kernel filters a neighbour dump on NDA_IFINDEX (with or without strict
        // checking); `entries_on` filters again in case it does not.
        let mut query = NeighbourMessage::default();
        query
            .attributes
            .push(NeighbourAttribute::IfIndex(link_index));
        let entries = self.entries_on(query, link_index, "neighbours").await?;
        Ok(entries
            .iter()
            .filter(|m| {
                m.header.state == NeighbourState::Permanent
                    && matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
            })
            .filter_map(|m| {
                let (ip, mac) = ip_and_mac(m);
                Some((ip?, mac?))
            })
            .collect())
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <link> nud permanent`
    pub async fn replace_neighbour(&self, link_index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut msg = neighbour_message(link_index, ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let op = || {
            let mac = mac::format(&mac);
            format!("replace neighbour {ip} lladdr {mac} on link {link_index}")
        };
        self.change(Ask::Replace, RouteNetlinkMessage::NewNeighbour(msg), op)
            .await
    }

    /// Deletes the neighbour entry for `ip` on `link_index`; `Ok(())` when it is
    /// already gone (or the link is).
    pub async fn delete_neighbour(&self, link_index: u32, ip: IpAddr) -> Result<()> {
        let msg = RouteNetlinkMessage::DelNeighbour(neighbour_message(link_index, ip));
        let op = || format!("delete neighbour {ip} on link {link_index}");
        self.delete(msg, op).await.map(drop)
    }

    /// FDB entries of the VXLAN device `link_index` that have a destination IP:
    /// (mac, dst), one per remote. Entries without NDA_DST and the all-zero MAC are
    /// skipped.
    ///
    /// Without strict checking on the socket the kernel cannot filter an AF_BRIDGE dump
    /// by an ndmsg's ifindex, so this dumps the whole FDB of the namespace (bridges
    /// included) once and filters here.
    pub async fn fdb_entries(&self, link_index: u32) -> Result<Vec<([u8; 6], IpAddr)>> {
        let mut query = NeighbourMessage::default();
        query.header.family = AddressFamily::Bridge;
        let entries = self.entries_on(query, link_index, "FDB entries").await?;
        Ok(entries
            .iter()
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
    pub async fn replace_fdb(&self, link_index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let msg = RouteNetlinkMessage::NewNeighbour(fdb_message(link_index, mac, dst));
        let op = || {
            let mac = mac::format(&mac);
            format!("replace FDB entry {mac} dst {dst} on link {link_index}")
        };
        self.change(Ask::Replace, msg, op).await
    }

    /// `bridge fdb del <mac> dev <link> dst <ip> self`; `Ok(())` when already gone
    /// (including when `mac` is there with other destinations only, which stay).
    pub async fn delete_fdb(&self, link_index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
        let msg = RouteNetlinkMessage::DelNeighbour(fdb_message(link_index, mac, dst));
        let op = || {
            let mac = mac::format(&mac);
            format!("delete FDB entry {mac} dst {dst} on link {link_index}")
        };
        self.delete(msg, op).await.map(drop)
    }
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

/// The IP (NDA_DST) and MAC (NDA_LLADDR) of a neighbour or FDB message.
fn ip_and_mac(m: &NeighbourMessage) -> (Option<IpAddr>, Option<[u8; 6]>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &m.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = mac::from_bytes(l),
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
}
