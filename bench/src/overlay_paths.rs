//! Throughput (iperf3, one TCP stream) and latency (ping) over ten data paths that
//! exist at the same time, measured in interleaved rounds:
//!
//! - `b`  Twill: pod to pod across two nodes through VXLAN (directRouting never), with
//!   the agent's defaults (checksum offload on, masquerade, its VXLAN packets untracked);
//! - `cf` the hand-built VXLAN pod path with the same firewall state: flannel's
//!   masquerade and forward rules, the same offload and outer UDP checksum (reference
//!   for `b`);
//! - `d`  Twill: pod to pod across two nodes on one segment, directly routed
//!   (directRouting auto);
//! - `e`  a hand-built direct-routed pod path: veth, bridge, route via the peer
//!   (reference for `d`);
//! - `a`  node to node over the underlay (the physical anchor).
//!
//! And, to tell what the figures above are made of:
//!
//! - `c`  as `cf` with no nftables at all: connection tracking off;
//! - `cr` as `cf` plus Twill's `vxlan_notrack` chain: what untracking the VXLAN
//!   packets recovers of connection tracking's cost;
//! - `b0` as `b`, in a cluster with ipMasq false: no nat chain in the agent's table, so
//!   connection tracking is not active in the node namespaces;
//! - `d0` as `d`, in a cluster with ipMasq false (no connection tracking);
//! - `ef` as `e` with flannel's rules (the same firewall state as `d`);
//! - `a'` node to node over the underlay of the Twill VXLAN cluster.

use crate::overlay_manual::{flannel_table, Manual};
use crate::overlay_proc::{self, check_stop, iperf3_server, Guarded, PingStats};
use anyhow::{bail, Context, Result};
use std::time::Duration;
use twill_tests::cluster::{Cluster, ClusterPod, ClusterSpec};
use twill_tests::Netns;

pub struct PathSpec {
    pub reps: usize,
    pub secs: u32,
    pub pings: u32,
    pub ping_interval: String,
    pub resync_secs: f64,
    /// Seconds to wait after setup, with the namespaces printed, for inspection.
    pub hold_secs: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathId {
    A,
    A2,
    B,
    B0,
    C,
    Cf,
    Cr,
    D,
    D0,
    E,
    Ef,
}

/// Every path, in the order of one round: each subject sits next to its reference
/// (cr|cf, cf|b, b|c, c|b0, d0|e, e|d, d|ef, ef|a, a|a'), so a ratio within a round
/// compares measurements taken seconds apart. Odd rounds run backwards, so subjects and
/// references take turns going first.
pub const ALL: [PathId; 11] = [
    PathId::Cr,
    PathId::Cf,
    PathId::B,
    PathId::C,
    PathId::B0,
    PathId::D0,
    PathId::E,
    PathId::D,
    PathId::Ef,
    PathId::A,
    PathId::A2,
];

impl PathId {
    pub fn key(self) -> &'static str {
        match self {
            PathId::A => "a",
            PathId::A2 => "a'",
            PathId::B => "b",
            PathId::B0 => "b0",
            PathId::C => "c",
            PathId::Cf => "cf",
            PathId::Cr => "cr",
            PathId::D => "d",
            PathId::D0 => "d0",
            PathId::E => "e",
            PathId::Ef => "ef",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PathId::A => "(a) underlay node->node, hand-built",
            PathId::A2 => "(a') underlay node->node, Twill VXLAN cluster",
            PathId::B => "(b) Twill pod->pod, VXLAN",
            PathId::B0 => "(b0) Twill pod->pod, VXLAN, ipMasq false",
            PathId::C => "(c) hand-built pod->pod, VXLAN, no nftables",
            PathId::Cf => "(cf) hand-built pod->pod, VXLAN, flannel's rules",
            PathId::Cr => "(cr) as (cf) + Twill's vxlan_notrack",
            PathId::D => "(d) Twill pod->pod, direct routing",
            PathId::D0 => "(d0) Twill pod->pod, direct, ipMasq false",
            PathId::E => "(e) hand-built pod->pod, direct routing",
            PathId::Ef => "(ef) as (e) + flannel's rules",
        }
    }
}

/// Samples of one path.
#[derive(Default, Clone)]
pub struct PathSamples {
    pub gbps: Vec<f64>,
    pub ping: Vec<PingStats>,
}

pub struct PathResults {
    pub samples: Vec<(PathId, PathSamples)>,
    /// The Twill nodes' nftables rulesets (ipMasq true, false), for the report.
    pub twill_nft: String,
    pub twill_nft_nomasq: String,
    /// (tx checksum offload, outer UDP checksum) of every VXLAN device measured.
    pub vxlan_settings: (bool, bool),
}

impl PathResults {
    pub fn get(&self, id: PathId) -> &PathSamples {
        &self
            .samples
            .iter()
            .find(|(p, _)| *p == id)
            .expect("every path is measured")
            .1
    }
}

/// Where a path's client and server are.
struct Ends<'a> {
    client: &'a Netns,
    server: &'a Netns,
    server_ip: String,
}

/// Everything measured over; field order is drop order (pods before their clusters).
struct Topologies {
    vx_pods: Vec<ClusterPod>,
    nm_pods: Vec<ClusterPod>,
    dn_pods: Vec<ClusterPod>,
    dr_pods: Vec<ClusterPod>,
    vx: Cluster,
    nm: Cluster,
    dn: Cluster,
    dr: Cluster,
    manual: Manual,
    manual_flannel: Manual,
    manual_remedy: Manual,
    manual_direct: Manual,
    manual_direct_flannel: Manual,
}

impl Topologies {
    fn ends(&self, id: PathId) -> Ends<'_> {
        match id {
            PathId::A => Ends {
                client: &self.manual.nodes[1],
                server: &self.manual.nodes[0],
                server_ip: Manual::node_ip(0),
            },
            PathId::A2 => Ends {
                client: &self.vx.nodes[1].ns,
                server: &self.vx.nodes[0].ns,
                server_ip: self.vx.nodes[0].ip.clone(),
            },
            PathId::B => Ends {
                client: &self.vx_pods[1].ns,
                server: &self.vx_pods[0].ns,
                server_ip: self.vx_pods[0].ip.clone(),
            },
            PathId::B0 => Ends {
                client: &self.nm_pods[1].ns,
                server: &self.nm_pods[0].ns,
                server_ip: self.nm_pods[0].ip.clone(),
            },
            PathId::D0 => Ends {
                client: &self.dn_pods[1].ns,
                server: &self.dn_pods[0].ns,
                server_ip: self.dn_pods[0].ip.clone(),
            },
            PathId::C => Manual::pod_ends(&self.manual),
            PathId::Cf => Manual::pod_ends(&self.manual_flannel),
            PathId::Cr => Manual::pod_ends(&self.manual_remedy),
            PathId::E => Manual::pod_ends(&self.manual_direct),
            PathId::Ef => Manual::pod_ends(&self.manual_direct_flannel),
            PathId::D => Ends {
                client: &self.dr_pods[1].ns,
                server: &self.dr_pods[0].ns,
                server_ip: self.dr_pods[0].ip.clone(),
            },
        }
    }
}

impl Manual {
    fn pod_ends(&self) -> Ends<'_> {
        Ends {
            client: &self.pods[1],
            server: &self.pods[0],
            server_ip: Manual::pod_ip(0),
        }
    }
}

/// Transmit checksum offload and outer UDP checksum of a VXLAN device: the two settings
/// the VXLAN paths must share for their comparison to be fair.
fn vxlan_settings(node: &Netns, dev: &str) -> Result<(bool, bool)> {
    let ns = twill_netlink::NetNs::open(std::path::Path::new(&node.path()))?;
    let offload = ns
        .run(|| twill_netlink::ethtool::tx_checksum(dev))?
        .with_context(|| format!("tx checksum offload of {dev} in {}", node.name()))?;
    let details = node.ip(&["-d", "link", "show", dev]);
    Ok((offload, details.contains(" udpcsum")))
}

fn twill_cluster(
    direct: bool,
    ip_masq: bool,
    resync_secs: f64,
) -> Result<(Cluster, Vec<ClusterPod>)> {
    let mut c = Cluster::new(ClusterSpec {
        nodes: 2,
        segments: 1,
        direct_routing: direct,
        ip_masq,
        resync_secs,
        ..ClusterSpec::default()
    });
    c.start_all();
    c.wait_ready(Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    let pods = vec![
        c.add_pod(0, "srv").map_err(anyhow::Error::msg)?,
        c.add_pod(1, "cli").map_err(anyhow::Error::msg)?,
    ];
    // Make sure the path is the one claimed: the route to the server pod's subnet on
    // the client node goes through eth0 (direct) or the VXLAN device.
    let subnet = c.nodes[0].subnet().context("node-1 has no subnet file")?;
    let route = c.nodes[1].ns.ip(&["route", "show", &subnet, "proto", "71"]);
    let want = if direct { "dev eth0" } else { "dev twill." };
    if !route.contains(want) {
        bail!(
            "node-2's route to {subnet} is {:?}, expected one with {want:?}",
            route.trim()
        );
    }
    Ok((c, pods))
}

pub fn measure(spec: &PathSpec) -> Result<PathResults> {
    eprintln!("overlay-bench: building the hand-built references...");
    let manual = Manual::build(false)?;
    let manual_flannel = Manual::build(false)?;
    manual_flannel.install_nft(flannel_table)?;
    let manual_remedy = Manual::build(false)?;
    manual_remedy.install_nft(|i| {
        let remedy =
            twill_agent::firewall::render_vxlan_chain(&twill_agent::firewall::VxlanTraffic {
                port: 8472,
                vni: 1,
            });
        format!("{}table inet twill {{\n{remedy}}}\n", flannel_table(i))
    })?;
    let manual_direct = Manual::build(true)?;
    let manual_direct_flannel = Manual::build(true)?;
    manual_direct_flannel.install_nft(flannel_table)?;
    check_stop()?;
    eprintln!("overlay-bench: starting a 2-node Twill cluster, VXLAN...");
    let (vx, vx_pods) = twill_cluster(false, true, spec.resync_secs)?;
    check_stop()?;
    eprintln!("overlay-bench: starting a 2-node Twill cluster, VXLAN, ipMasq false...");
    let (nm, nm_pods) = twill_cluster(false, false, spec.resync_secs)?;
    check_stop()?;
    eprintln!("overlay-bench: starting a 2-node Twill cluster, direct routing...");
    let (dr, dr_pods) = twill_cluster(true, true, spec.resync_secs)?;
    check_stop()?;
    eprintln!("overlay-bench: starting a 2-node Twill cluster, direct routing, ipMasq false...");
    let (dn, dn_pods) = twill_cluster(true, false, spec.resync_secs)?;
    let topo = Topologies {
        vx_pods,
        nm_pods,
        dn_pods,
        dr_pods,
        vx,
        nm,
        dn,
        dr,
        manual,
        manual_flannel,
        manual_remedy,
        manual_direct,
        manual_direct_flannel,
    };
    let twill_vxlan = vxlan_settings(&topo.vx.nodes[0].ns, "twill.1")?;
    let manual_vxlan = vxlan_settings(&topo.manual_flannel.nodes[0], "vxlan0")?;
    if twill_vxlan != manual_vxlan {
        bail!(
            "Twill's twill.1 (tx offload, udpcsum) = {twill_vxlan:?} but the hand-built vxlan0 has {manual_vxlan:?}: the VXLAN comparison would not be like for like"
        );
    }
    let twill_nft = topo.vx.nodes[0].ns.sh(&["nft", "list", "ruleset"]);
    let twill_nft_nomasq = topo.nm.nodes[0].ns.sh(&["nft", "list", "ruleset"]);

    // Every path answers before anything is timed (this also resolves neighbours).
    for id in ALL {
        let e = topo.ends(id);
        overlay_proc::ping(e.client, &e.server_ip, 3, "0.05")
            .with_context(|| format!("{} does not work", id.describe()))?;
    }
    if spec.hold_secs > 0.0 {
        for id in ALL {
            let e = topo.ends(id);
            eprintln!(
                "overlay-bench: {}: client {} -> server {} ({})",
                id.describe(),
                e.client.name(),
                e.server.name(),
                e.server_ip
            );
        }
        for (what, c) in [
            ("VXLAN", &topo.vx),
            ("VXLAN ipMasq false", &topo.nm),
            ("direct ipMasq false", &topo.dn),
            ("direct", &topo.dr),
        ] {
            for n in &c.nodes {
                eprintln!("overlay-bench: Twill {what} cluster node {}", n.ns.name());
            }
        }
        for n in [
            &topo.manual,
            &topo.manual_flannel,
            &topo.manual_remedy,
            &topo.manual_direct,
            &topo.manual_direct_flannel,
        ]
        .iter()
        .flat_map(|m| &m.nodes)
        {
            eprintln!("overlay-bench: hand-built node {}", n.name());
        }
        eprintln!("overlay-bench: holding for {} s...", spec.hold_secs);
        overlay_proc::sleep(Duration::from_secs_f64(spec.hold_secs))?;
    }
    // Declared after the topologies: the servers are killed before the namespaces go.
    let _servers: Vec<Guarded> = ALL
        .iter()
        .map(|id| iperf3_server(topo.ends(*id).server))
        .collect::<Result<_>>()?;

    let mut samples: Vec<(PathId, PathSamples)> =
        ALL.iter().map(|id| (*id, PathSamples::default())).collect();
    let order = |r: usize| -> Vec<usize> {
        let mut o: Vec<usize> = (0..ALL.len()).collect();
        if r % 2 == 1 {
            o.reverse();
        }
        o
    };
    // Warm-up: one short stream per path, not recorded.
    for id in ALL {
        let e = topo.ends(id);
        overlay_proc::iperf3(e.client, &e.server_ip, 1)?;
    }
    for r in 0..spec.reps {
        eprintln!(
            "overlay-bench: throughput round {}/{} ({} s per path)...",
            r + 1,
            spec.reps,
            spec.secs
        );
        for k in order(r) {
            let id = ALL[k];
            let e = topo.ends(id);
            let g = overlay_proc::iperf3(e.client, &e.server_ip, spec.secs)
                .with_context(|| id.describe())?;
            samples[k].1.gbps.push(g);
        }
    }
    for r in 0..spec.reps {
        eprintln!(
            "overlay-bench: latency round {}/{} ({} pings per path)...",
            r + 1,
            spec.reps,
            spec.pings
        );
        for k in order(r) {
            let id = ALL[k];
            let e = topo.ends(id);
            let p = overlay_proc::ping(e.client, &e.server_ip, spec.pings, &spec.ping_interval)
                .with_context(|| id.describe())?;
            samples[k].1.ping.push(p);
        }
    }
    eprintln!("overlay-bench: removing the path topologies...");
    Ok(PathResults {
        samples,
        twill_nft,
        twill_nft_nomasq,
        vxlan_settings: twill_vxlan,
    })
}
