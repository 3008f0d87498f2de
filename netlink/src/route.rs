//! Routes of the main table: the pod's (plugin) and the overlay's (agent).

use crate::connection::{Ask, Netlink};
use crate::error::{NetlinkError, Result};
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::RouteMessageBuilder;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The main routing table (RT_TABLE_MAIN).
const MAIN_TABLE: u32 = 254;

/// A route as Twill reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    /// RTA_GATEWAY; `None` for a route straight onto the link.
    pub gw: Option<IpAddr>,
    /// RTA_OIF, the output interface.
    pub oif: Option<u32>,
    /// Who installed the route (RTPROT_*); the agent tags its own with a number.
    pub protocol: u8,
    pub table: u32,
    /// The route carries the `onlink` flag (its gateway is not checked against the
    /// link's prefixes).
    pub onlink: bool,
    /// RTA_PRIORITY (`metric`); 0 when absent. The kernel stores IPv6 routes asked for
    /// with 0 at 1024.
    pub metric: u32,
}

/// A route to `dst`, of `dst`'s family.
fn route_to(dst: IpNet) -> Result<RouteMessageBuilder<IpAddr>> {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .map_err(|e| NetlinkError::InvalidRoute(format!("route to {dst}: {e}")))
}

/// A route to `dst` out of `oif`, via `gw` or, without one, straight onto the link.
fn route_via(dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<RouteMessageBuilder<IpAddr>> {
    let builder = route_to(dst)?.output_interface(oif);
    match gw {
        Some(gw) => builder
            .gateway(gw)
            .map_err(|e| NetlinkError::InvalidRoute(format!("route to {dst} via {gw}: {e}"))),
        None => Ok(builder.scope(RouteScope::Link)),
    }
}

impl Netlink {
    /// Adds (or replaces) a route in the main table.
    pub async fn replace_route(
        &self,
        dst: IpNet,
        gw: Option<IpAddr>,
        oif: u32,
        protocol: Option<u8>,
    ) -> Result<()> {
        let mut builder = route_via(dst, gw, oif)?;
        if let Some(p) = protocol {
            builder = builder.protocol(RouteProtocol::from(p));
        }
        let op = || match gw {
            Some(gw) => format!("add route {dst} via {gw} (link {oif})"),
            None => format!("add route {dst} (link {oif})"),
        };
        let msg = RouteNetlinkMessage::NewRoute(builder.build());
        self.change(Ask::Replace, msg, op).await
    }

    /// `ip route replace <dst> via <gw> dev <oif> onlink` in the main table: the gateway
    /// is on the link even where no route to its prefix exists.
    pub async fn replace_route_onlink(&self, dst: IpNet, gw: IpAddr, oif: u32) -> Result<()> {
        let builder = route_via(dst, Some(gw), oif)?.onlink();
        let op = || format!("add route {dst} via {gw} (link {oif}, onlink)");
        let msg = RouteNetlinkMessage::NewRoute(builder.build());
        self.change(Ask::Replace, msg, op).await
    }

    /// `ip route replace <dst> via <via> dev <oif> [onlink] proto <protocol> metric
    /// <metric>` in the main table. `dst` is truncated to its network address. The
    /// kernel tells routes to one destination apart by metric: a replace with another
    /// metric adds a second route.
    pub async fn replace_route_via(
        &self,
        dst: IpNet,
        via: IpAddr,
        oif: u32,
        onlink: bool,
        protocol: u8,
        metric: u32,
    ) -> Result<()> {
        let dst = dst.trunc();
        let mut builder = route_via(dst, Some(via), oif)?
            .protocol(RouteProtocol::from(protocol))
            .priority(metric);
        if onlink {
            builder = builder.onlink();
        }
        let op = || {
            let onlink = if onlink { ", onlink" } else { "" };
            format!(
                "replace route {dst} via {via} (link {oif}{onlink}, proto {protocol}, metric {metric})"
            )
        };
        let msg = RouteNetlinkMessage::NewRoute(builder.build());
        self.change(Ask::Replace, msg, op).await
    }

    /// Routes of the main table for one family (`v6 = false` for IPv4).
    pub async fn routes(&self, v6: bool) -> Result<Vec<Route>> {
        let query = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        let query = RouteNetlinkMessage::GetRoute(query);
        let msgs: Vec<RouteMessage> = self.dump(query, || "list routes".into()).await?;
        Ok(msgs.iter().filter_map(route_of).collect())
    }

    /// Routes of the main table, both families, whose protocol is `protocol`.
    pub async fn routes_by_protocol(&self, protocol: u8) -> Result<Vec<Route>> {
        // One after the other: a socket runs one dump at a time.
        let v4 = self.routes(false).await?;
        let v6 = self.routes(true).await?;
        Ok(v4
            .into_iter()
            .chain(v6)
            .filter(|r| r.protocol == protocol && r.table == MAIN_TABLE)
            .collect())
    }

    /// Deletes the route to `dst` with this protocol and `metric` from the main table
    /// (metric 0: the one with the lowest metric); `Ok(())` when already gone (a route
    /// to `dst` with another protocol is left alone).
    pub async fn delete_route(&self, dst: IpNet, protocol: u8, metric: u32) -> Result<()> {
        let dst = dst.trunc();
        // As `ip route del`: scope "nowhere" and no type match any route to `dst`; the
        // protocol narrows it to ours.
        let mut builder = route_to(dst)?
            .protocol(RouteProtocol::from(protocol))
            .scope(RouteScope::NoWhere)
            .kind(RouteType::Unspec);
        if metric != 0 {
            builder = builder.priority(metric);
        }
        let msg = builder.build();
        let op = || format!("delete route {dst} proto {protocol} metric {metric}");
        self.delete(RouteNetlinkMessage::DelRoute(msg), op)
            .await
            .map(drop)
    }
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
    let mut metric = 0;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::Destination(a) => dst = route_addr(a),
            RouteAttribute::Gateway(a) => gw = route_addr(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    let dst = dst.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    Some(Route {
        dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        oif,
        protocol: u8::from(m.header.protocol),
        table,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        metric,
    })
}
