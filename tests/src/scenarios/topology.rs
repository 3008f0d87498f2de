//! What the scenarios read from a cluster and add to it: the addresses of nodes and
//! pods, and a client namespace outside the cluster; commands that return their failure
//! instead of panicking, since a scenario reports what went wrong.

use crate::cluster::{Cluster, ClusterNode, ClusterPod};
use crate::netns::{next_id, run, Netns};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr};

/// Runs argv, `Err` with its stderr when it fails.
pub(super) fn try_run(argv: &[&str]) -> Result<String, String> {
    let out = run(argv);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{}` failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip -n <ns> <args>`.
pub(super) fn try_ip(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["ip", "-n", ns.name()];
    argv.extend_from_slice(args);
    try_run(&argv)
}

/// Every IPv4 address a node holds (underlay, bridge gateway, VXLAN device, loopback).
pub fn node_addresses(node: &ClusterNode) -> Result<Vec<IpAddr>, String> {
    let text = try_ip(&node.ns, &["-j", "-4", "addr", "show"])?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("ip -j addr: {e}"))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
        .collect())
}

pub(super) fn pod_ip(pod: &ClusterPod) -> Result<Ipv4Addr, String> {
    pod.ip
        .parse()
        .map_err(|e| format!("pod {} has no IPv4 address ({:?}): {e}", pod.name, pod.ip))
}

pub(super) fn node_ip(node: &ClusterNode) -> Result<Ipv4Addr, String> {
    node.ip
        .parse()
        .map_err(|e| format!("node {} address {:?}: {e}", node.name, node.ip))
}

/// A namespace outside the cluster, on underlay segment `segment` at
/// `192.168.<segment+1>.<host>/24` with a default route via the router: a veth pair
/// whose other end is a port of the underlay bridge `ul<segment>`. Dropping it removes
/// both ends.
pub fn outside_client(c: &Cluster, segment: usize, host: u8) -> Result<Netns, String> {
    if segment >= c.underlay.segments {
        return Err(format!(
            "segment {segment} does not exist ({} segments)",
            c.underlay.segments
        ));
    }
    let ns = Netns::new("outside");
    let port = format!("oc{}", next_id());
    let mtu = c.spec.mtu.to_string();
    try_ip(
        &ns,
        &[
            "link", "add", "eth0", "mtu", &mtu, "type", "veth", "peer", "name", &port, "mtu", &mtu,
        ],
    )?;
    try_ip(&ns, &["link", "set", &port, "netns", c.underlay.ns.name()])?;
    try_ip(
        &c.underlay.ns,
        &[
            "link",
            "set",
            &port,
            "master",
            &format!("ul{segment}"),
            "up",
        ],
    )?;
    try_ip(
        &ns,
        &[
            "addr",
            "add",
            &format!("192.168.{}.{host}/24", segment + 1),
            "dev",
            "eth0",
        ],
    )?;
    try_ip(&ns, &["link", "set", "eth0", "up"])?;
    try_ip(
        &ns,
        &[
            "route",
            "add",
            "default",
            "via",
            &c.underlay.router_ip(segment),
        ],
    )?;
    Ok(ns)
}
