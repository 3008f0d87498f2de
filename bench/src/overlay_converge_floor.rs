//! The reference of the convergence figure: the same FDB, neighbour and route entries
//! the agent programs for N peers (its routes' metrics included), installed by `bridge -batch` and `ip -batch` into a
//! fresh namespace with the same VXLAN device (the kernel's own cost plus the thinnest
//! userspace).

use crate::overlay_proc::check_stop;
use crate::overlay_rtnl::RouteSocket;
use crate::overlay_sim_peers::{endpoint, subnet, PROTO};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};
use twill_agent::desired::route_metric;
use twill_tests::Netns;

/// The reference: `n` peers' FDB entries, neighbours and routes, as the agent programs
/// them, through `bridge -batch` and `ip -batch` in a fresh namespace with the same VXLAN
/// device.
pub fn kernel_floor(n: usize, dir: &std::path::Path) -> Result<Duration> {
    let ns = Netns::new("floor");
    let name = ns.name().to_string();
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ip(&["addr", "add", "192.168.1.1/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth1", "up"]);
    ns.ip(&["route", "add", "default", "via", "192.168.1.254"]);
    ns.ip(&[
        "link",
        "add",
        "twill.1",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "192.168.1.1",
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ]);
    ns.ip(&["link", "set", "twill.1", "mtu", "1450", "up"]);
    let (mut fdb, mut ipb) = (String::new(), String::new());
    for i in 1..=n as u32 {
        let (ip, mac) = endpoint(i);
        let net = subnet(i);
        fdb.push_str(&format!(
            "fdb append {mac} dev twill.1 dst {ip} self permanent\n"
        ));
        ipb.push_str(&format!(
            "neigh replace {} lladdr {mac} dev twill.1 nud permanent\n",
            net.addr
        ));
    }
    for i in 1..=n as u32 {
        let net = subnet(i);
        ipb.push_str(&format!(
            "route replace {net} via {} dev twill.1 onlink proto {PROTO} metric {}\n",
            net.addr,
            route_metric(net.to_string().parse()?)
        ));
    }
    let (f1, f2) = (dir.join("floor-fdb.batch"), dir.join("floor-ip.batch"));
    std::fs::write(&f1, fdb)?;
    std::fs::write(&f2, ipb)?;
    let f1s = f1.to_string_lossy().into_owned();
    let f2s = f2.to_string_lossy().into_owned();
    check_stop()?;
    let t0 = Instant::now();
    twill_tests::sh(&["bridge", "-n", &name, "-batch", &f1s]);
    twill_tests::sh(&["ip", "-n", &name, "-batch", &f2s]);
    let took = t0.elapsed();
    let have = RouteSocket::dump_in(std::path::Path::new(&ns.path()))?.count_protocol(PROTO)?;
    if have != n {
        bail!("the reference batch left {have} routes, not {n}");
    }
    Ok(took)
}
