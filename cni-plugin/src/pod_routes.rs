//! The routes and gateway a pod gets from its node's ranges and the config.

use crate::cni::Route;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use twill_conf::{PluginConf, PodRange};

pub fn gateway_for(ranges: &[PodRange], addr: IpAddr) -> Option<IpAddr> {
    ranges
        .iter()
        .find(|r| r.subnet.contains(&addr))
        .map(|r| r.gateway)
}

/// With `isolatePorts`, first the pod subnets through their gateways (the pod's
/// addresses have no prefix route, so even the node's other pods are reached through the
/// node); then a default route per family through that family's gateway, then the
/// configured routes.
pub fn pod_routes(ranges: &[PodRange], conf: &PluginConf) -> Vec<Route> {
    let mut out: Vec<Route> = Vec::new();
    if conf.isolate_ports {
        out.extend(ranges.iter().map(|r| Route {
            dst: r.subnet,
            gw: Some(r.gateway),
        }));
    }
    for r in ranges {
        let any = if r.gateway.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        out.push(Route {
            dst: IpNet::new(any, 0).unwrap_or(r.subnet),
            gw: Some(r.gateway),
        });
    }
    for spec in &conf.routes {
        let gw = spec.gw.or_else(|| {
            ranges
                .iter()
                .find(|r| r.gateway.is_ipv4() == spec.dst.addr().is_ipv4())
                .map(|r| r.gateway)
        });
        let route = Route { dst: spec.dst, gw };
        if gw.is_some() && !out.iter().any(|r| r.dst == route.dst) {
            out.push(route);
        }
    }
    out
}
