//! The cluster of the matrix suite: two nodes whose agents enforce NetworkPolicy from a
//! real API server, namespaces x, y, z and their pods, each pod wired by the real plugin,
//! registered as a Pod object (labels, named container ports, `status.podIPs`) and
//! serving every port the suite probes.

use super::probe::{Probe, Proto, UdpEcho};
use crate::cluster::{Cluster, ClusterPod, ClusterSpec, RegistryKind};
use crate::kube::ControlPlane;
use crate::scenarios::TcpServer;
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The namespaces and the pods in each, as in the upstream e2e suite.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];

/// What every pod serves (and names in its container ports, `serve-<port>-<proto>`).
pub const SERVED: [Probe; 4] = [
    Probe::tcp(80),
    Probe::tcp(81),
    Probe::udp(80),
    Probe::udp(53),
];

/// One pod of the suite, `namespace/name`, with its servers (stopped before the pod's
/// namespace goes: fields drop in order).
pub struct MatrixPod {
    _tcp: Vec<TcpServer>,
    _udp: Vec<UdpEcho>,
    pub namespace: String,
    pub name: String,
    pub pod: ClusterPod,
}

impl MatrixPod {
    /// `namespace/name`, the pod's row and column name.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn ip(&self) -> IpAddr {
        self.pod
            .ip
            .parse()
            .expect("the plugin returned an IP address")
    }
}

/// The name of a served port in the Pod spec.
pub fn port_name(probe: Probe) -> String {
    let proto = match probe.proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
    format!("serve-{}-{proto}", probe.port)
}

/// The labels every namespace carries between cases (no
/// `kubernetes.io/metadata.name` on the v1.20 server: `ns=<name>` stands for it).
pub fn namespace_labels(ns: &str) -> Value {
    json!({ "ns": ns })
}

/// The labels every pod carries between cases.
pub fn pod_labels(name: &str) -> Value {
    json!({ "pod": name })
}

/// Two nodes with agents in kubernetes mode, ready, and the control plane. Node 1 has
/// `bridge-nf-call-ip(6)tables` off, so its pods get isolated bridge ports and same-node
/// traffic is routed by the node; node 2 keeps br_netfilter on (this machine's default),
/// so its same-node traffic is bridged and reaches the forward hook through it: one
/// suite covers both paths.
pub fn start_cluster() -> Result<(Cluster, ControlPlane), String> {
    let mut c = Cluster::new(ClusterSpec {
        nodes: 2,
        segments: 1,
        registry: RegistryKind::Kubernetes,
        ..ClusterSpec::default()
    });
    let cp = ControlPlane::for_cluster(&c)?;
    c.nodes[0].ns.sh(&[
        "sysctl",
        "-qw",
        "net.bridge.bridge-nf-call-iptables=0",
        "net.bridge.bridge-nf-call-ip6tables=0",
    ]);
    c.start_all();
    c.wait_ready(Duration::from_secs(60))?;
    for n in &c.nodes {
        let status = n.status().ok_or_else(|| format!("{}: no status", n.name))?;
        if status["networkPolicy"]["synced"] != json!(true) {
            return Err(format!("{}: NetworkPolicy not synced: {status}", n.name));
        }
    }
    for ns in NAMESPACES {
        let doc = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": namespace_labels(ns)},
        });
        cp.kubectl_ok(&["create", "-f", "-"], Some(&doc.to_string()));
    }
    Ok((c, cp))
}

/// Wires pod `namespace/name` on node `node`, starts its servers and registers its Pod
/// object with its IP, as the kubelet would after the runtime's ADD.
pub fn start_pod(
    c: &Cluster,
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    node: usize,
) -> Result<MatrixPod, String> {
    let pod = c.add_pod(node, &format!("{namespace}-{name}"))?;
    // The path the suite means each node to take: no prefix route (same-node traffic
    // routed by the node) exactly where br_netfilter is off.
    let prefix_route = !pod
        .ns
        .ip(&["-4", "route", "show", "proto", "kernel"])
        .trim()
        .is_empty();
    if prefix_route != (node != 0) {
        return Err(format!(
            "{namespace}/{name} on {}: prefix route {prefix_route}, want {}",
            c.nodes[node].name,
            node != 0
        ));
    }
    let netns = pod.ns.path();
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    for probe in SERVED {
        let bind: SocketAddr = ([0, 0, 0, 0], probe.port).into();
        match probe.proto {
            Proto::Tcp => tcp.push(TcpServer::start(&pod.ns, name, bind)?),
            Proto::Udp => udp.push(UdpEcho::start(&netns, bind)?),
        }
    }
    let pod = MatrixPod {
        _tcp: tcp,
        _udp: udp,
        namespace: namespace.to_string(),
        name: name.to_string(),
        pod,
    };
    register_pod(cp, &pod, &c.nodes[node].name)?;
    Ok(pod)
}

/// The Pod object: labels, one container whose ports are [`SERVED`] under their
/// names, the node; then its IP through the status subresource.
fn register_pod(cp: &ControlPlane, pod: &MatrixPod, node: &str) -> Result<(), String> {
    let ports: Vec<Value> = SERVED
        .iter()
        .map(|p| {
            let proto = match p.proto {
                Proto::Tcp => "TCP",
                Proto::Udp => "UDP",
            };
            json!({"name": port_name(*p), "containerPort": p.port, "protocol": proto})
        })
        .collect();
    let labels = pod_labels(&pod.name);
    cp.create_pod(&pod.namespace, &pod.name, node, &labels, &json!(ports))?;
    cp.set_pod_ips(&pod.namespace, &pod.name, &[&pod.pod.ip])
}

/// `kubectl` that must succeed, as a `Result`.
pub fn kubectl(cp: &ControlPlane, args: &[&str], input: Option<&str>) -> Result<(), String> {
    cp.kubectl_result(args, input).map(drop)
}
