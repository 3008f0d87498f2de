//! The reference data paths, built by hand with `ip` and `bridge` in namespaces of their
//! own, in the same shape as a Twill cluster of two nodes on one segment:
//!
//! - an underlay namespace with a bridge; each node's `eth0` is a veth whose other end is
//!   a port of that bridge (MTU 1500), node `i` at 192.168.1.<i+1>/24;
//! - in each node, flannel's VXLAN scheme: a VXLAN device (VNI 1, port 8472, `local`
//!   the node address, `dev eth0`, `nolearning`, MTU 1450) carrying the network address
//!   of the node's pod subnet; a pod bridge holding the gateway .1 (MTU 1450); and, per
//!   peer, a permanent neighbour (peer VTEP address → peer VTEP MAC), an FDB entry (peer
//!   VTEP MAC → peer node address) and an onlink route to the peer's subnet via its
//!   VTEP address;
//! - a pod namespace per node, its `eth0` a veth (MTU 1450) into the pod bridge, at .2,
//!   default route via the gateway.
//!
//! The direct-routed variant has no VXLAN device: each node routes the other's pod
//! subnet via the other's node address on `eth0`, as Twill does for a peer on the same
//! segment; its pods keep MTU 1450, as Twill's do (the subnet file's MTU).
//!
//! No agent, and no firewall rules until [`Manual::install_nft`] adds some: bare, the
//! fastest this shape goes on this kernel; with [`flannel_table`], what flannel's own
//! rules cost (masquerade and forward accept, which switch connection tracking on).
//! VXLAN devices keep `ip link`'s defaults, as Twill's do: transmit checksum offload on,
//! outer UDP checksum (`udpcsum`) on. The pod subnets are those a Twill cluster's first
//! two nodes get from the default network (10.244.1.0/24, 10.244.2.0/24).

use crate::overlay_proc::check_stop;
use anyhow::{anyhow, Result};
use twill_tests::Netns;

const VXLAN_MTU: &str = "1450";

/// Field order is drop order: pods, then nodes, then the underlay.
pub struct Manual {
    pub pods: Vec<Netns>,
    pub nodes: Vec<Netns>,
    pub underlay: Netns,
}

impl Manual {
    pub fn node_ip(i: usize) -> String {
        format!("192.168.1.{}", i + 1)
    }

    pub fn pod_ip(i: usize) -> String {
        format!("10.244.{}.2", i + 1)
    }

    fn subnet(i: usize) -> String {
        format!("10.244.{}.0/24", i + 1)
    }

    fn vtep_ip(i: usize) -> String {
        format!("10.244.{}.0", i + 1)
    }

    fn vtep_mac(i: usize) -> String {
        format!("0a:72:65:66:00:{:02x}", i + 1)
    }

    /// Two nodes with one pod each; nodes route to each other's pods through VXLAN, or
    /// directly over the underlay.
    pub fn build(direct: bool) -> Result<Manual> {
        let tag = if direct { "rdr" } else { "ref" };
        let underlay = Netns::new(&format!("{tag}-ul"));
        underlay.ip(&["link", "add", "ulbr", "mtu", "1500", "type", "bridge"]);
        underlay.ip(&["addr", "add", "192.168.1.254/24", "dev", "ulbr"]);
        underlay.ip(&["link", "set", "ulbr", "up"]);
        let mut m = Manual {
            pods: Vec::new(),
            nodes: Vec::new(),
            underlay,
        };
        for i in 0..2 {
            check_stop()?;
            let n = Netns::new(&format!("{tag}-n{}", i + 1));
            let host_end = format!("refn{}", i + 1);
            n.ip(&[
                "link", "add", "eth0", "mtu", "1500", "type", "veth", "peer", "name", &host_end,
                "mtu", "1500",
            ]);
            n.ip(&["link", "set", &host_end, "netns", m.underlay.name()]);
            m.underlay
                .ip(&["link", "set", &host_end, "master", "ulbr", "up"]);
            let ip = Self::node_ip(i);
            n.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            n.ip(&["link", "set", "eth0", "up"]);
            n.ip(&["route", "add", "default", "via", "192.168.1.254"]);
            n.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

            n.ip(&[
                "link",
                "add",
                "vxlan0",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &ip,
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ]);
            n.ip(&[
                "link",
                "set",
                "vxlan0",
                "address",
                &Self::vtep_mac(i),
                "mtu",
                VXLAN_MTU,
                "up",
            ]);
            n.ip(&[
                "addr",
                "add",
                &format!("{}/32", Self::vtep_ip(i)),
                "dev",
                "vxlan0",
            ]);

            n.ip(&["link", "add", "cni0", "mtu", VXLAN_MTU, "type", "bridge"]);
            n.ip(&[
                "addr",
                "add",
                &format!("10.244.{}.1/24", i + 1),
                "dev",
                "cni0",
            ]);
            n.ip(&["link", "set", "cni0", "up"]);

            let p = Netns::new(&format!("{tag}-p{}", i + 1));
            n.ip(&[
                "link",
                "add",
                "veth0",
                "mtu",
                VXLAN_MTU,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "mtu",
                VXLAN_MTU,
                "netns",
                p.name(),
            ]);
            n.ip(&["link", "set", "veth0", "master", "cni0", "up"]);
            p.ip(&[
                "addr",
                "add",
                &format!("{}/24", Self::pod_ip(i)),
                "dev",
                "eth0",
            ]);
            p.ip(&["link", "set", "eth0", "up"]);
            p.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{}.1", i + 1),
            ]);
            m.nodes.push(n);
            m.pods.push(p);
        }
        for (i, n) in m.nodes.iter().enumerate() {
            for j in (0..2).filter(|j| *j != i) {
                if direct {
                    n.ip(&[
                        "route",
                        "replace",
                        &Self::subnet(j),
                        "via",
                        &Self::node_ip(j),
                        "dev",
                        "eth0",
                    ]);
                    continue;
                }
                let (vtep, mac) = (Self::vtep_ip(j), Self::vtep_mac(j));
                n.ip(&[
                    "neigh",
                    "replace",
                    &vtep,
                    "lladdr",
                    &mac,
                    "dev",
                    "vxlan0",
                    "nud",
                    "permanent",
                ]);
                n.sh(&[
                    "bridge",
                    "fdb",
                    "append",
                    &mac,
                    "dev",
                    "vxlan0",
                    "dst",
                    &Self::node_ip(j),
                    "self",
                    "permanent",
                ]);
                n.ip(&[
                    "route",
                    "replace",
                    &Self::subnet(j),
                    "via",
                    &vtep,
                    "dev",
                    "vxlan0",
                    "onlink",
                ]);
            }
        }
        Ok(m)
    }

    /// Loads `script(i)` (an `nft -f` script) into node `i`, for both nodes.
    pub fn install_nft(&self, script: impl Fn(usize) -> String) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            twill_tests::scenarios::nft_script(n, &script(i)).map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }
}

/// flannel's rules for node `i` (its iptables chains FLANNEL-POSTRTG and FLANNEL-FWD:
/// kube-proxy's marked packets returned, pod to pod kept, everything else from or to the
/// pod network masqueraded with `--random-fully`; forwarding of the pod network
/// accepted), written as one nftables table.
pub fn flannel_table(i: usize) -> String {
    let subnet = Manual::subnet(i);
    format!(
        "table ip flannel {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x4000 == 0x4000 return
        ip saddr {subnet} ip daddr 10.244.0.0/16 return
        ip saddr 10.244.0.0/16 ip daddr {subnet} return
        ip saddr != 10.244.0.0/16 ip daddr {subnet} return
        ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
        ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip saddr 10.244.0.0/16 accept
        ip daddr 10.244.0.0/16 accept
    }}
}}
"
    )
}
