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

use crate::cluster::{ping_rtt, Cluster, ClusterNode, ClusterPod};
use crate::netns::{next_id, run, Netns};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twill_netlink::NetNs;

/// How long one connection attempt (connect, then reading the reply) may take.
pub const ATTEMPT: Duration = Duration::from_secs(1);
/// How long a path that must work may take to start working.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The nftables table (family `ip`) that stands for kube-proxy in every node.
pub const SERVICE_TABLE: &str = "kube-svc";
/// kube-proxy's masquerade mark (`KUBE-MARK-MASQ`, `--masquerade-bit 14`).
pub const MASQ_MARK: u32 = 0x4000;

/// The service the scenarios install: `10.96.0.10:80` (NodePort 30080) → backends'
/// port 8080.
pub const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
pub const NODE_PORT: u16 = 30080;
pub const TARGET_PORT: u16 = 8080;

// ---------------------------------------------------------------------------------------
// TCP server and client inside namespaces

/// A TCP listener inside a namespace, served by a thread: every connection gets one
/// line `<name> <peer ip>:<peer port>` and is closed. Stopped (and its thread joined)
/// on drop.
pub struct TcpServer {
    pub name: String,
    /// The bound address (the real port when bound to port 0).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Binds `bind` inside `ns` (the socket stays in that namespace) and starts serving.
    pub fn start(ns: &Netns, name: &str, bind: SocketAddr) -> Result<TcpServer, String> {
        let listener = in_ns(ns, move || TcpListener::bind(bind))?
            .map_err(|e| format!("bind {bind} in {}: {e}", ns.name()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("local address of the listener in {}: {e}", ns.name()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("nonblocking listener: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let name = name.to_string();
            std::thread::Builder::new()
                .name(format!("tcp-server-{name}"))
                .spawn(move || serve(listener, &name, &stop))
                .map_err(|e| format!("cannot start a server thread: {e}"))?
        };
        Ok(TcpServer {
            name: name.to_string(),
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The accept loop: polls in short slices so that a stop request is seen promptly.
fn serve(listener: TcpListener, name: &str, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n <= 0 {
            continue;
        }
        while let Ok((mut stream, peer)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(ATTEMPT));
            let _ = writeln!(stream, "{name} {peer}");
        }
    }
}

/// What a [`TcpServer`] answered: its name and the peer address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub server: String,
    pub peer: SocketAddr,
}

/// One connection from inside `from` to `to`, within [`ATTEMPT`] for the connect and
/// again for the reply.
pub fn tcp_ask_once(from: &Netns, to: SocketAddr) -> Result<Reply, String> {
    let text = in_ns(from, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&to, ATTEMPT)?;
        s.set_read_timeout(Some(ATTEMPT))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    })?
    .map_err(|e| format!("{} → {to}: {e}", from.name()))?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(|p| p.parse().ok())) {
        (Some(server), Some(peer)) => Ok(Reply {
            server: server.to_string(),
            peer,
        }),
        _ => Err(format!("{} → {to}: unexpected reply {text:?}", from.name())),
    }
}

/// One TCP connect from inside `from` to `to` that must complete within `limit`: the
/// time it took, or the error. A `limit` under one second tells a connection whose
/// first SYN was answered from one that needed a retransmission.
pub fn tcp_connect_within(
    from: &Netns,
    to: SocketAddr,
    limit: Duration,
) -> Result<Duration, String> {
    in_ns(from, move || {
        let started = Instant::now();
        TcpStream::connect_timeout(&to, limit).map(|_| started.elapsed())
    })?
    .map_err(|e| format!("{} → {to}: {e}", from.name()))
}

/// [`tcp_ask_once`] retried until it succeeds or `timeout` passes (the last error then).
pub fn tcp_ask(from: &Netns, to: SocketAddr, timeout: Duration) -> Result<Reply, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let err = match tcp_ask_once(from, to) {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("no answer within {timeout:?}: {err}"));
        }
        // A refused or unreachable attempt fails at once: poll, do not spin.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread inside `ns`.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let handle = NetNs::open(Path::new(&ns.path())).map_err(|e| format!("{e}"))?;
    handle.run(f).map_err(|e| format!("{e}"))
}

// ---------------------------------------------------------------------------------------
// Small helpers

/// Runs argv, `Err` with its stderr when it fails.
fn try_run(argv: &[&str]) -> Result<String, String> {
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
fn try_ip(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let mut argv = vec!["ip", "-n", ns.name()];
    argv.extend_from_slice(args);
    try_run(&argv)
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

fn pod_ip(pod: &ClusterPod) -> Result<Ipv4Addr, String> {
    pod.ip
        .parse()
        .map_err(|e| format!("pod {} has no IPv4 address ({:?}): {e}", pod.name, pod.ip))
}

fn node_ip(node: &ClusterNode) -> Result<Ipv4Addr, String> {
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

// ---------------------------------------------------------------------------------------
// kube-proxy's rules

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
