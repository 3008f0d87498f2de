//! The seeds' scenarios (the Kubernetes networking model as a user meets it), each
//! written once as a function over a running [`Cluster`] so that the end-to-end tests
//! (`tests/tests/scenarios.rs`) and the lab run the same code:
//!
//! - [`pod_replaced`]: a pod deleted and added again under its name gets a new address;
//!   the old one falls silent, the new one answers from every other node;
//! - [`cluster_ip_service`]: a ClusterIP-style service, i.e. the DNAT rules kube-proxy
//!   installs on every node, in an nftables table of ours ([`SERVICE_TABLE`]): pods and
//!   nodes reach the backends through the virtual address, a backend reaches itself
//!   (hairpin), and a ping to the virtual address gets no answer;
//! - [`node_port`]: a NodePort-style service reached from outside the cluster at any
//!   node's underlay address, masqueraded so that replies return through that node;
//! - [`pod_egress`]: a pod's traffic to the outside leaves with its node's underlay
//!   address (the agent's masquerade), while pod to pod keeps the pod's address.
//!
//! Each returns `Ok(one-line summary of what was shown)` or `Err(what failed)`. What a
//! scenario installs (nftables table, TCP servers) is removed when it returns, whether
//! it succeeded or not; the pods and the cluster belong to the caller.
//!
//! Traffic is real TCP: [`TcpServer`] listens inside a namespace and answers every
//! connection with its own name and the peer address it saw, which is what the
//! scenarios check (who answered, and which source address arrived). Nothing waits a
//! fixed time: connections are retried until a deadline.
//!
//! Beside the scenarios: `tcp` (the server and the clients inside namespaces),
//! `kube_proxy` (the rules, rendered and installed) and `topology` (addresses of nodes
//! and pods, a client outside the cluster).

mod kube_proxy;
mod tcp;
mod topology;

pub use kube_proxy::{
    kube_proxy_script, nft_script, Service, ServiceRules, MASQ_MARK, SERVICE_TABLE,
};
pub use tcp::{tcp_ask, tcp_ask_once, tcp_connect_within, Reply, TcpServer, ATTEMPT};
pub use topology::{node_addresses, outside_client};

use crate::cluster::{ping_rtt, Cluster, ClusterNode, ClusterPod};
use crate::netns::Netns;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use topology::{node_ip, pod_ip};

/// How long a path that must work may take to start working.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The service the scenarios install: `10.96.0.10:80` (NodePort 30080) → backends'
/// port 8080.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
pub const NODE_PORT: u16 = 30080;
pub const TARGET_PORT: u16 = 8080;

/// The `web` service over `backends` (target port [`TARGET_PORT`]).
fn web_service(backends: &[&ClusterPod], node_port: Option<u16>) -> Result<Service, String> {
    Ok(Service {
        name: "web".into(),
        cluster_ip: SERVICE_IP,
        port: SERVICE_PORT,
        node_port,
        endpoints: backends
            .iter()
            .map(|p| pod_ip(p).map(|ip| (ip, TARGET_PORT)))
            .collect::<Result<_, _>>()?,
    })
}

/// One [`TcpServer`] per backend, on its pod address and [`TARGET_PORT`], named after
/// the pod.
fn start_backends(backends: &[&ClusterPod]) -> Result<Vec<TcpServer>, String> {
    backends
        .iter()
        .map(|p| {
            let bind = SocketAddr::new(IpAddr::V4(pod_ip(p)?), TARGET_PORT);
            TcpServer::start(&p.ns, &p.name, bind)
        })
        .collect()
}

/// bridge-nf-call-iptables in a node (`None` without br_netfilter).
fn bridge_nf_call_iptables(node: &ClusterNode) -> Option<String> {
    let out = node
        .ns
        .run(&["cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

// ---------------------------------------------------------------------------------------
// Scenarios

/// Scenario 1, a pod replaced: DEL of `pod` (and its namespace removed, as a runtime
/// does), then ADD under the same name on the same node. The new pod (assigned to
/// `*pod`) must get a new address; the old address must no longer answer; the new one
/// must answer a ping from each of `clients` (pods on the other nodes).
pub fn pod_replaced(
    c: &Cluster,
    pod: &mut ClusterPod,
    clients: &[&ClusterPod],
) -> Result<String, String> {
    if clients.is_empty() {
        return Err("pod_replaced needs at least one client pod".into());
    }
    let node = pod.node;
    let old_ip = pod.ip.clone();
    for cl in clients {
        if ping_rtt(&cl.ns, &old_ip).is_none() {
            return Err(format!(
                "before the replacement, {} ({}) on {} does not answer {} on {}",
                pod.name, old_ip, c.nodes[node].name, cl.name, c.nodes[cl.node].name
            ));
        }
    }
    c.del_pod(pod)?;
    pod.ns.delete();
    let new = c.add_pod(node, &pod.name)?;
    let new_ip = new.ip.clone();
    *pod = new;
    if new_ip == old_ip {
        return Err(format!(
            "{} was added again with its old address {old_ip}",
            pod.name
        ));
    }
    let mut reached_from = Vec::new();
    for cl in clients {
        if let Some(rtt) = ping_rtt(&cl.ns, &old_ip) {
            return Err(format!(
                "the old address {old_ip} of {} still answers {} ({rtt} ms)",
                pod.name, cl.name
            ));
        }
        if ping_rtt(&cl.ns, &new_ip).is_none() {
            return Err(format!(
                "the new address {new_ip} of {} does not answer {} on {}",
                pod.name, cl.name, c.nodes[cl.node].name
            ));
        }
        reached_from.push(format!("{} ({})", cl.name, c.nodes[cl.node].name));
    }
    Ok(format!(
        "pod {} on {} replaced: {old_ip} -> {new_ip}; old address silent, new address answers {}",
        pod.name,
        c.nodes[node].name,
        reached_from.join(", ")
    ))
}

/// Connects from `from` to `vip` until every backend in `names` has answered (the
/// service picks one at random per connection), checking each reply with `check`.
/// Returns how many connections it took. `hint` adds to the error which backends never
/// answered.
fn reach_every_backend(
    from: &Netns,
    from_name: &str,
    vip: SocketAddr,
    names: &BTreeSet<&str>,
    check: impl Fn(&Reply) -> Result<(), String>,
    hint: impl Fn(&str) -> String,
) -> Result<usize, String> {
    let missing = |seen: &BTreeSet<String>| -> (Vec<String>, String) {
        let m: Vec<String> = names
            .iter()
            .filter(|n| !seen.contains(**n))
            .map(|n| n.to_string())
            .collect();
        let hints = m.iter().map(|n| hint(n)).collect();
        (m, hints)
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + 2 * SETTLE;
    let mut attempts = 0;
    while seen.len() < names.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = match tcp_ask(from, vip, left) {
            Ok(reply) => reply,
            Err(e) => {
                let (m, hints) = missing(&seen);
                return Err(format!(
                    "{from_name} → service {vip}: {e}; answered so far: {seen:?}, \
                     missing {m:?}{hints}"
                ));
            }
        };
        attempts += 1;
        if !names.contains(reply.server.as_str()) {
            return Err(format!("{vip} answered by a stranger: {reply:?}"));
        }
        check(&reply)?;
        seen.insert(reply.server);
        if seen.len() < names.len() && Instant::now() >= deadline {
            let (m, hints) = missing(&seen);
            return Err(format!(
                "{from_name} → service {vip}: after {attempts} connections {m:?} never \
                 answered{hints}"
            ));
        }
    }
    Ok(attempts)
}

/// Scenario 2, a ClusterIP service: kube-proxy's rules on every node for
/// `SERVICE_IP:SERVICE_PORT` → `backends` (port [`TARGET_PORT`], a [`TcpServer`] in
/// each; `client` must not be one of them). Shows:
/// - `client` reaches every backend through the virtual address (random choice: tried
///   until each has answered), and each backend sees the client's own pod address;
/// - hairpin: the first backend reaches itself through the virtual address, seen from
///   an address of its node (masqueraded, as kube-proxy does when source = endpoint);
/// - the client's node itself reaches every backend (the `output` chain), seen from one
///   of the node's addresses (masqueraded: the node is outside the cluster CIDR);
/// - a ping to the virtual address gets no answer, while a ping to a backend does.
///
/// A backend on the client's own node answers only where br_netfilter is loaded with
/// `bridge-nf-call-iptables = 1` in that node: the backend replies straight to the
/// client over the bridge (same subnet), and without br_netfilter that bridged reply
/// never passes conntrack to be un-DNATed. The error then says so.
pub fn cluster_ip_service(
    c: &Cluster,
    client: &ClusterPod,
    backends: &[&ClusterPod],
) -> Result<String, String> {
    let Some(first) = backends.first() else {
        return Err("cluster_ip_service needs at least one backend".into());
    };
    if backends.iter().any(|b| b.name == client.name) {
        return Err(format!(
            "the client {} is also a backend: give a separate client pod (a backend's own \
             connections are the hairpin check)",
            client.name
        ));
    }
    let service = web_service(backends, None)?;
    let _servers = start_backends(backends)?;
    let _rules = ServiceRules::install(c, std::slice::from_ref(&service))?;
    let vip = SocketAddr::new(IpAddr::V4(SERVICE_IP), SERVICE_PORT);
    let names: BTreeSet<&str> = backends.iter().map(|p| p.name.as_str()).collect();
    let client_ip = IpAddr::V4(pod_ip(client)?);
    let br_nf = bridge_nf_call_iptables(&c.nodes[client.node]);
    let same_node_hint = |b: &str| {
        let same = backends
            .iter()
            .any(|p| p.name == b && p.node == client.node);
        if same {
            format!(
                " ({b} is on the client's node: its reply is bridged straight to the client \
                 and is un-DNATed only with br_netfilter; bridge-nf-call-iptables there = \
                 {br_nf:?})"
            )
        } else {
            String::new()
        }
    };

    // The client reaches every backend, keeping its address.
    let attempts = reach_every_backend(
        &client.ns,
        &client.name,
        vip,
        &names,
        |reply| {
            if reply.peer.ip() == client_ip {
                Ok(())
            } else {
                Err(format!(
                    "{} saw {} connect from {}, not from its pod address {client_ip}",
                    reply.server,
                    client.name,
                    reply.peer.ip()
                ))
            }
        },
        same_node_hint,
    )?;

    // Hairpin: the first backend through the virtual address to itself.
    let first_addrs = node_addresses(&c.nodes[first.node])?;
    let first_ip = IpAddr::V4(pod_ip(first)?);
    let deadline = Instant::now() + 2 * SETTLE;
    let hairpin_peer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = tcp_ask(&first.ns, vip, left)
            .map_err(|e| format!("hairpin {} → {vip}: {e}", first.name))?;
        if reply.server == first.name {
            if reply.peer.ip() == first_ip || !first_addrs.contains(&reply.peer.ip()) {
                return Err(format!(
                    "hairpin {} → {vip} → itself arrived from {}, not masqueraded to an \
                     address of {} ({first_addrs:?})",
                    first.name,
                    reply.peer.ip(),
                    c.nodes[first.node].name
                ));
            }
            break reply.peer.ip();
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "hairpin: {} → {vip} never landed on itself",
                first.name
            ));
        }
    };

    // The client's node itself (output chain), to every backend.
    let node = &c.nodes[client.node];
    let node_addrs = node_addresses(node)?;
    let node_seen_as = std::cell::RefCell::new(BTreeSet::new());
    reach_every_backend(
        &node.ns,
        &node.name,
        vip,
        &names,
        |reply| {
            if node_addrs.contains(&reply.peer.ip()) {
                node_seen_as.borrow_mut().insert(reply.peer.ip());
                Ok(())
            } else {
                Err(format!(
                    "{} saw node {} connect from {}, not from one of its addresses \
                     {node_addrs:?}",
                    reply.server,
                    node.name,
                    reply.peer.ip()
                ))
            }
        },
        |_| String::new(),
    )?;
    let node_seen_as: Vec<String> = node_seen_as
        .into_inner()
        .iter()
        .map(IpAddr::to_string)
        .collect();

    // ICMP: the virtual address exists only in DNAT rules for a TCP port.
    if ping_rtt(&client.ns, &first.ip).is_none() {
        return Err(format!(
            "{} does not answer a ping from {}",
            first.name, client.name
        ));
    }
    if let Some(rtt) = ping_rtt(&client.ns, &SERVICE_IP.to_string()) {
        return Err(format!(
            "a ping from {} to the service address {SERVICE_IP} was answered ({rtt} ms)",
            client.name
        ));
    }

    let placed: Vec<String> = backends
        .iter()
        .map(|p| {
            format!(
                "{} {}:{TARGET_PORT} on {}",
                p.name, p.ip, c.nodes[p.node].name
            )
        })
        .collect();
    Ok(format!(
        "service {vip} -> [{}]: {} on {} reached all {} backends in {attempts} connections, \
         seen as {client_ip}; hairpin {} -> itself seen as {hairpin_peer}; node {} reached \
         all, seen as {}; ping {SERVICE_IP} unanswered (ping {} answered)",
        placed.join(", "),
        client.name,
        c.nodes[client.node].name,
        names.len(),
        first.name,
        node.name,
        node_seen_as.join(", "),
        first.name
    ))
}

/// Scenario 3, a NodePort service: kube-proxy's rules on every node for
/// `<any node address>:NODE_PORT` → `backend` (port [`TARGET_PORT`]). `client` is a
/// namespace outside the cluster (see [`outside_client`]). It connects to `entry`'s
/// underlay address and gets the backend's reply; the backend sees the connection come
/// from an address of `entry` (masqueraded: the reply must return through `entry` to be
/// un-DNATed), never from the client. Then the same through every other node.
pub fn node_port(
    c: &Cluster,
    client: &Netns,
    entry: usize,
    backend: &ClusterPod,
) -> Result<String, String> {
    if entry >= c.nodes.len() {
        return Err(format!("no node {entry}"));
    }
    let service = web_service(&[backend], Some(NODE_PORT))?;
    let _servers = start_backends(&[backend])?;
    let _rules = ServiceRules::install(c, std::slice::from_ref(&service))?;
    let mut order: Vec<usize> = vec![entry];
    order.extend((0..c.nodes.len()).filter(|&i| i != entry));
    let mut shown = Vec::new();
    for i in order {
        let node = &c.nodes[i];
        let to = SocketAddr::new(IpAddr::V4(node_ip(node)?), NODE_PORT);
        let reply = tcp_ask(client, to, SETTLE)
            .map_err(|e| format!("outside → {to} ({}): {e}", node.name))?;
        if reply.server != backend.name {
            return Err(format!("{to} answered by {reply:?}, not {}", backend.name));
        }
        let addrs = node_addresses(node)?;
        if !addrs.contains(&reply.peer.ip()) {
            return Err(format!(
                "{} saw the connection through {} come from {}, not from an address of that \
                 node {addrs:?} (not masqueraded)",
                backend.name,
                node.name,
                reply.peer.ip()
            ));
        }
        shown.push(format!("{} seen as {}", node.name, reply.peer.ip()));
    }
    Ok(format!(
        "NodePort {NODE_PORT} -> {} {}:{TARGET_PORT} on {}: the outside client reached it \
         through {}",
        backend.name,
        backend.ip,
        c.nodes[backend.node].name,
        shown.join(", ")
    ))
}

/// Scenario 4, pod to outside: `pod` connects to a server in the underlay namespace (the
/// router on the pod's node's segment, standing for the internet), which must see the
/// node's underlay address (the agent's masquerade); and to a server in `peer` (a pod
/// on another node), which must see the pod's own address.
pub fn pod_egress(c: &Cluster, pod: &ClusterPod, peer: &ClusterPod) -> Result<String, String> {
    if peer.node == pod.node {
        return Err(format!(
            "{} and {} are on the same node; pod_egress needs a peer on another node",
            pod.name, peer.name
        ));
    }
    let node = &c.nodes[pod.node];
    let node_ip = IpAddr::V4(node_ip(node)?);
    let router: Ipv4Addr = c
        .underlay
        .router_ip(node.segment)
        .parse()
        .map_err(|e| format!("router address: {e}"))?;
    let outside = TcpServer::start(
        &c.underlay.ns,
        "outside",
        SocketAddr::new(IpAddr::V4(router), 0),
    )?;
    let peer_server = TcpServer::start(
        &peer.ns,
        &peer.name,
        SocketAddr::new(IpAddr::V4(pod_ip(peer)?), 0),
    )?;
    let pod_ip = IpAddr::V4(pod_ip(pod)?);

    let out = tcp_ask(&pod.ns, outside.addr, SETTLE)
        .map_err(|e| format!("{} → outside {}: {e}", pod.name, outside.addr))?;
    if out.peer.ip() != node_ip {
        return Err(format!(
            "the outside saw {} connect from {}, not from its node's address {node_ip}",
            pod.name,
            out.peer.ip()
        ));
    }
    let across = tcp_ask(&pod.ns, peer_server.addr, SETTLE)
        .map_err(|e| format!("{} → {} {}: {e}", pod.name, peer.name, peer_server.addr))?;
    if across.peer.ip() != pod_ip {
        return Err(format!(
            "{} saw {} connect from {}, not from its pod address {pod_ip}",
            peer.name,
            pod.name,
            across.peer.ip()
        ));
    }
    Ok(format!(
        "{} ({pod_ip}) on {}: the outside {} saw {node_ip} (masqueraded); {} on {} saw {pod_ip} \
         (pod address kept)",
        pod.name, node.name, outside.addr, peer.name, c.nodes[peer.node].name
    ))
}
