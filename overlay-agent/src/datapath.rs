//! The kernel side of the overlay: the VXLAN device, and reading and writing the
//! routes, neighbour and FDB entries the agent owns. No decisions are made here; the
//! [`Plan`] says what to change.

use crate::desired::{route_metric, DesiredState, NextHop, Plan};
use crate::record::Mac;
use futures::StreamExt;
use ipnet::IpNet;
use std::future::Future;
use std::net::IpAddr;
use twill_netlink::{Netlink, NetlinkError, VxlanSpec};

/// The route protocol number on every route the agent installs (`ip route show proto
/// 71`): how it tells its routes from everyone else's without keeping state.
pub const ROUTE_PROTOCOL: u8 = 71;

/// Requests in flight at once on the netlink socket while applying a plan.
const PARALLEL: usize = 128;

/// The device prefix: `twill.<vni>`.
pub fn device_name(vni: u32) -> String {
    format!("twill.{vni}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConf {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mac: Mac,
    pub mtu: u32,
    /// Transmit checksum offload on the device (see `twill_netlink::ethtool`).
    pub checksum_offload: bool,
    /// This node's pod subnets; each one's network address goes on the device (as
    /// flannel does), so traffic from the node itself into the overlay has a source
    /// address peers route back through the overlay.
    pub own_subnets: Vec<IpNet>,
}

/// What one [`Datapath::apply`] did.
#[derive(Debug, Default)]
pub struct Applied {
    pub changes: usize,
    pub errors: Vec<NetlinkError>,
}

pub struct Datapath {
    nl: Netlink,
    conf: DeviceConf,
}

impl Datapath {
    pub fn new(nl: Netlink, conf: DeviceConf) -> Self {
        Datapath { nl, conf }
    }

    pub fn conf(&self) -> &DeviceConf {
        &self.conf
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Creates or repairs the VXLAN device and its addresses. Returns its index and
    /// whether it was (re)created, in which case the kernel dropped every entry on it.
    pub async fn ensure_device(&self) -> Result<(u32, bool), NetlinkError> {
        let c = &self.conf;
        let (link, created) = self
            .nl
            .ensure_vxlan(&VxlanSpec {
                name: &c.name,
                vni: c.vni,
                port: c.port,
                local: c.local,
                underlay_index: c.underlay_index,
                mac: c.mac.0,
                mtu: c.mtu,
            })
            .await?;
        // Every pass, both ways: the configured state wins over a hand-made change.
        twill_netlink::ethtool::set_tx_checksum(&c.name, c.checksum_offload).map_err(|e| {
            NetlinkError::InvalidRoute(format!(
                "turning tx checksum offload {} on {}: {e}",
                if c.checksum_offload { "on" } else { "off" },
                c.name
            ))
        })?;
        let want: Vec<IpNet> = c
            .own_subnets
            .iter()
            .map(|s| IpNet::new(s.network(), s.max_prefix_len()).unwrap_or(*s))
            .collect();
        let have = self.nl.addresses(link.index).await?;
        for a in &want {
            if !have.contains(a) {
                self.nl.add_address(link.index, *a).await.or_else(|e| {
                    if e.is_exists() {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
        }
        for a in have {
            let link_local =
                matches!(a.addr(), IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !want.contains(&a) && !link_local {
                self.nl.del_address(link.index, a).await?;
            }
        }
        Ok((link.index, created))
    }

    /// Reads what the agent owns in the kernel, in the shape of a [`DesiredState`].
    pub async fn observe(&self, device: u32) -> Result<DesiredState, NetlinkError> {
        let mut have = DesiredState::default();
        for r in self.nl.routes_by_protocol(ROUTE_PROTOCOL).await? {
            if r.metric != route_metric(r.dst) || have.routes.contains_key(&r.dst) {
                have.stray_routes.insert((r.dst, r.metric));
                continue;
            }
            let hop = match (r.gw, r.oif) {
                (Some(via), Some(oif)) if oif == device => NextHop::Vxlan { via },
                (Some(via), Some(oif)) if oif == self.conf.underlay_index => {
                    NextHop::Direct { via }
                }
                _ => NextHop::Foreign,
            };
            have.routes.insert(r.dst, hop);
        }
        for (ip, mac) in self.nl.permanent_neighbours(device).await? {
            have.neighbours.insert(ip, Mac(mac));
        }
        for (mac, dst) in self.nl.fdb_entries(device).await? {
            have.fdb.insert(Mac(mac), dst);
        }
        Ok(have)
    }

    /// Applies `plan`: FDB and neighbour entries before the routes that use them, and
    /// routes out before the entries they used. Many requests are in flight at once;
    /// failures are collected, not fatal, so one bad entry does not block the rest.
    pub async fn apply(&self, device: u32, plan: &Plan) -> Applied {
        let nl = &self.nl;
        let underlay = self.conf.underlay_index;
        let mut out = Applied::default();

        run(&mut out, plan.fdb.put.iter(), |(mac, dst)| {
            nl.replace_fdb(device, mac.0, *dst)
        })
        .await;
        run(&mut out, plan.neighbours.put.iter(), |(ip, mac)| {
            nl.replace_neighbour(device, *ip, mac.0)
        })
        .await;
        run(&mut out, plan.routes.put.iter(), |(dst, hop)| async move {
            let (via, oif, onlink) = match *hop {
                NextHop::Vxlan { via } => (via, device, true),
                NextHop::Direct { via } => (via, underlay, false),
                NextHop::Foreign => return Ok(()),
            };
            nl.replace_route_via(*dst, via, oif, onlink, ROUTE_PROTOCOL, route_metric(*dst))
                .await
        })
        .await;
        let removed = plan
            .routes
            .remove
            .keys()
            .map(|dst| (*dst, route_metric(*dst)));
        run(
            &mut out,
            removed.chain(plan.stray_routes.iter().copied()),
            |(dst, metric)| nl.delete_route(dst, ROUTE_PROTOCOL, metric),
        )
        .await;
        run(&mut out, plan.neighbours.remove.keys(), |ip| {
            nl.delete_neighbour(device, *ip)
        })
        .await;
        run(&mut out, plan.fdb.remove.iter(), |(mac, dst)| {
            nl.delete_fdb(device, mac.0, *dst)
        })
        .await;
        out
    }

    /// Removes everything the agent owns: the device (and with it its neighbour and
    /// FDB entries and the routes through it), then its remaining routes.
    pub async fn remove_all(&self) -> Result<(), NetlinkError> {
        self.nl.delete_link_by_name(&self.conf.name).await?;
        for r in self.nl.routes_by_protocol(ROUTE_PROTOCOL).await? {
            self.nl
                .delete_route(r.dst, ROUTE_PROTOCOL, r.metric)
                .await?;
        }
        Ok(())
    }
}

async fn run<'a, T, I, F, Fut>(out: &mut Applied, items: I, op: F)
where
    I: Iterator<Item = T>,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), NetlinkError>> + 'a,
{
    let results: Vec<Result<(), NetlinkError>> = futures::stream::iter(items.map(op))
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(()) => out.changes += 1,
            Err(e) => out.errors.push(e),
        }
    }
}
