//! Addresses on links.

use crate::connection::{Ask, Netlink};
use crate::error::Result;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::AddressMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

impl Netlink {
    /// The addresses on a link (all families).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        // The kernel filters an address dump by link only under strict checking: this
        // dumps all and filters here.
        let query = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let op = || format!("list addresses of link {index}");
        let msgs: Vec<AddressMessage> = self.dump(query, op).await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(address_of)
            .collect())
    }

    /// Every address of every link (all families).
    pub async fn all_addresses(&self) -> Result<Vec<IpNet>> {
        let query = RouteNetlinkMessage::GetAddress(AddressMessage::default());
        let op = || "list addresses".to_string();
        let msgs: Vec<AddressMessage> = self.dump(query, op).await?;
        Ok(msgs.iter().filter_map(address_of).collect())
    }

    /// Adds an address (replacing one that exists), with its prefix route.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        self.put_address(index, addr, true).await
    }

    /// Adds an address without the route to its prefix (`noprefixroute`): the link
    /// then reaches its neighbours in that prefix only through routes set apart.
    pub async fn add_address_without_prefix_route(&self, index: u32, addr: IpNet) -> Result<()> {
        self.put_address(index, addr, false).await
    }

    async fn put_address(&self, index: u32, addr: IpNet, prefix_route: bool) -> Result<()> {
        let mut msg = match addr.addr() {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, addr.prefix_len())
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, addr.prefix_len())
                .build(),
        };
        let mut flags = AddressFlags::empty();
        if addr.addr().is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        if !prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            msg.attributes.push(AddressAttribute::Flags(flags));
        }
        let op = || format!("add address {addr} to link {index}");
        self.change(Ask::Replace, RouteNetlinkMessage::NewAddress(msg), op)
            .await
    }

    /// Deletes an address; one already gone is not an error.
    pub async fn del_address(&self, index: u32, addr: IpNet) -> Result<()> {
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
        let op = || format!("delete address {addr} from link {index}");
        self.delete(RouteNetlinkMessage::DelAddress(msg), op)
            .await
            .map(drop)
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
