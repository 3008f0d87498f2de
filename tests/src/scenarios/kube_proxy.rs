//! kube-proxy's rules (nftables mode, TCP only), as an nftables table of ours in every
//! node: the services the scenarios reach go through the same DNAT, hairpin and
//! masquerade rules as in a real cluster.

use crate::cluster::Cluster;
use crate::netns::Netns;
use std::fmt::Write as _;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// The nftables table (family `ip`) that stands for kube-proxy in every node.
pub const SERVICE_TABLE: &str = "kube-svc";
/// kube-proxy's masquerade mark (`KUBE-MARK-MASQ`, `--masquerade-bit 14`).
pub const MASQ_MARK: u32 = 0x4000;

/// A service as kube-proxy sees it: a virtual address and port, optionally a NodePort,
/// and its endpoints (pod address, target port).
#[derive(Debug, Clone)]
pub struct Service {
    /// Used in chain names: letters, digits, '-'.
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// The `nft -f -` script that replaces table `ip <SERVICE_TABLE>` with the rules
/// kube-proxy (nftables mode) would install for `services`, TCP only. `cluster_cidr` is
/// kube-proxy's `--cluster-cidr`.
///
/// - `prerouting` / `output` (nat, priority dstnat = -100; nft 1.0.6 takes the name
///   `dstnat` only for prerouting): jump to `services`, for traffic from pods
///   (routed by the node: the pods' gateway is the bridge) and from the node itself;
/// - `services`: the ClusterIP match (`ip daddr <vip> tcp dport <port>`), and the
///   NodePort match (`fib daddr type local`: any address of this node, not loopback);
///   both go to the service's chain;
/// - `svc-<name>`: picks an endpoint (`numgen random mod N vmap`);
/// - `sep-<name>-<i>`: marks hairpin traffic (source = this endpoint) for masquerade,
///   then DNATs to the endpoint;
/// - `mark-for-masquerade`: sets [`MASQ_MARK`]; also jumped to for a ClusterIP reached
///   from outside the cluster CIDR (the node itself) and for every NodePort connection
///   (`externalTrafficPolicy: Cluster`), so that replies come back through this node;
/// - `postrouting` (nat, srcnat): masquerades marked packets.
pub fn kube_proxy_script(cluster_cidr: &str, services: &[Service]) -> String {
    let t = SERVICE_TABLE;
    let mut s = String::new();
    let _ = writeln!(s, "add table ip {t}");
    let _ = writeln!(s, "delete table ip {t}");
    let _ = writeln!(s, "table ip {t} {{");
    s.push_str("    chain prerouting {\n        type nat hook prerouting priority dstnat; policy accept;\n        jump services\n    }\n");
    s.push_str("    chain output {\n        type nat hook output priority -100; policy accept;\n        jump services\n    }\n");
    let _ = writeln!(
        s,
        "    chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n        meta mark & {MASQ_MARK:#x} == {MASQ_MARK:#x} masquerade fully-random\n    }}"
    );
    let _ = writeln!(
        s,
        "    chain mark-for-masquerade {{\n        meta mark set meta mark | {MASQ_MARK:#x}\n    }}"
    );
    s.push_str("    chain services {\n");
    for svc in services {
        let (vip, port, name) = (svc.cluster_ip, svc.port, &svc.name);
        let _ = writeln!(
            s,
            "        ip daddr {vip} tcp dport {port} ip saddr != {cluster_cidr} jump mark-for-masquerade"
        );
        let _ = writeln!(s, "        ip daddr {vip} tcp dport {port} goto svc-{name}");
        if let Some(np) = svc.node_port {
            let local = "fib daddr type local ip daddr != 127.0.0.0/8";
            let _ = writeln!(s, "        {local} tcp dport {np} jump mark-for-masquerade");
            let _ = writeln!(s, "        {local} tcp dport {np} goto svc-{name}");
        }
    }
    s.push_str("    }\n");
    for svc in services {
        let name = &svc.name;
        let _ = writeln!(s, "    chain svc-{name} {{");
        if svc.endpoints.is_empty() {
            // kube-proxy rejects connections to a service without endpoints.
            s.push_str("        reject with tcp reset\n");
        } else {
            let arms: Vec<String> = (0..svc.endpoints.len())
                .map(|i| format!("{i} : goto sep-{name}-{i}"))
                .collect();
            let _ = writeln!(
                s,
                "        numgen random mod {} vmap {{ {} }}",
                svc.endpoints.len(),
                arms.join(", ")
            );
        }
        s.push_str("    }\n");
        for (i, (ip, port)) in svc.endpoints.iter().enumerate() {
            let _ = writeln!(
                s,
                "    chain sep-{name}-{i} {{\n        ip saddr {ip} jump mark-for-masquerade\n        meta l4proto tcp dnat to {ip}:{port}\n    }}"
            );
        }
    }
    s.push_str("}\n");
    s
}

/// kube-proxy's table installed on every node of a cluster; deleted from every node on
/// drop.
pub struct ServiceRules<'a> {
    cluster: &'a Cluster,
}

impl<'a> ServiceRules<'a> {
    pub fn install(c: &'a Cluster, services: &[Service]) -> Result<ServiceRules<'a>, String> {
        let rules = ServiceRules { cluster: c };
        let script = kube_proxy_script(&c.spec.network, services);
        for node in &c.nodes {
            nft_script(&node.ns, &script)?;
        }
        Ok(rules)
    }
}

impl Drop for ServiceRules<'_> {
    fn drop(&mut self) {
        let t = SERVICE_TABLE;
        for node in &self.cluster.nodes {
            let _ = nft_script(
                &node.ns,
                &format!("add table ip {t}\ndelete table ip {t}\n"),
            );
        }
    }
}

/// `ip netns exec <ns> nft -f -` with `script` on stdin.
pub fn nft_script(ns: &Netns, script: &str) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error (nft exited early) shows in its status below.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f - in {} failed: {}\n{script}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
