//! `isolatePorts`: pods of one node reach each other through the node (routed, one hop,
//! through its `forward` hook) rather than across the bridge, so that a firewall rule in
//! the node's `forward` hook (NetworkPolicy) sees their traffic although `br_netfilter`
//! does not hand bridged frames to it. Where it does, ports are left as they are: the
//! hook sees the bridged traffic anyway, and isolated ports would break a Service whose
//! backend is on the client's node. Without it, and with `br_netfilter`'s
//! `bridge-nf-call-ip(6)tables` off (per network namespace; the kernel's default when
//! the module is not loaded), the same traffic is bridged past that hook.

use serde_json::{json, Value};
use std::time::Duration;
use twill_tests::fixture::{assert_silent_success, ip_of, reaches};
use twill_tests::scenarios::{tcp_ask, TcpServer};
use twill_tests::{ConfExt, Netns, Node, Pod};

const V4: &str = "10.244.1.0/24";
const V6: &str = "fd00:10:244:1::/64";

/// A dual-stack node; `isolate` sets `isolatePorts`.
fn node_and_conf(label: &str, isolate: bool) -> (Node, Value) {
    let node = Node::new(label);
    node.write_subnet_file(&["10.244.0.0/16", "fd00:10:244::/48"], &[V4, V6], None);
    let mut conf = node.conf("1.1.0").without("subnet");
    if isolate {
        conf = conf.with("isolatePorts", json!(true));
    }
    (node, conf)
}

/// The pod's (IPv4, IPv6) addresses from an ADD result.
fn addresses(result: &Value) -> (String, String) {
    let ips = result["ips"].as_array().expect("ips");
    let at = |i: usize| ip_of(ips[i]["address"].as_str().expect("address")).to_string();
    (at(0), at(1))
}

/// The TTL (hop limit) of the reply to one ping from `from` to `to`.
fn reply_ttl(from: &Netns, to: &str) -> u32 {
    let out = from.sh(&["ping", "-c", "1", "-W", "2", to]);
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("ttl=").or_else(|| w.strip_prefix("hlim=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in the ping output: {out}"))
}

/// A `forward` hook chain in the node that drops new traffic to `dst` (both families),
/// as a NetworkPolicy would; returns the table's name.
fn drop_forwarded_to(node: &Node, v4: &str, v6: &str) -> &'static str {
    let script = format!(
        "table inet twt_isolation {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ip daddr {v4} counter drop\n    ip6 daddr {v6} counter drop\n  }}\n}}\n"
    );
    node.ns
        .sh(&["sh", "-c", &format!("printf '%s' '{script}' | nft -f -")]);
    "twt_isolation"
}

/// Whether bridged frames are handed to the IP hooks in the node (`br_netfilter`).
fn set_bridge_nf_call(node: &Node, on: bool) {
    let v = u8::from(on);
    node.ns.sh(&[
        "sysctl",
        "-qw",
        &format!("net.bridge.bridge-nf-call-iptables={v}"),
        &format!("net.bridge.bridge-nf-call-ip6tables={v}"),
    ]);
}

fn bridge_port_isolated(node: &Node, port: &str) -> bool {
    let out = node
        .ns
        .sh(&["bridge", "-d", "-j", "link", "show", "dev", port]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[0]["isolated"] == json!(true)
}

#[test]
fn isolated_ports_route_pod_traffic_through_the_nodes_forward_hook() {
    let (node, conf) = node_and_conf("iso-node", true);
    // Isolation is what makes the hook see the traffic where br_netfilter does not.
    set_bridge_nf_call(&node, false);
    let (a, b) = (Pod::new("iso-a"), Pod::new("iso-b"));
    let ra = node.add_ok(&conf, &a);
    let rb = node.add_ok(&conf, &b);
    let (a4, a6) = addresses(&ra);
    let (b4, b6) = addresses(&rb);
    assert!(bridge_port_isolated(&node, &a.host_veth()));
    assert!(bridge_port_isolated(&node, &b.host_veth()));

    // The pod's subnets go through the gateways, and the result says so.
    for (subnet, gw) in [(V4, "10.244.1.1"), (V6, "fd00:10:244:1::1")] {
        let route = json!({"dst": subnet, "gw": gw});
        assert!(
            ra["routes"].as_array().expect("routes").contains(&route),
            "{ra}"
        );
    }

    // Routed by the node: one hop, so the reply arrives with TTL 63 (hop limit 63).
    assert!(reaches(&a.ns, &b4) && reaches(&a.ns, &b6));
    assert_eq!(reply_ttl(&a.ns, &b4), 63);
    assert_eq!(reply_ttl(&a.ns, &b6), 63);

    // A forward-hook rule of the node now decides, whether or not br_netfilter hands
    // bridged frames to it: b is cut off from a, the node still reaches b (its own
    // traffic does not cross `forward`), and a still reaches the node.
    for bridge_nf in [false, true] {
        set_bridge_nf_call(&node, bridge_nf);
        let table = drop_forwarded_to(&node, &b4, &b6);
        assert!(!a.ns.ping(&b4), "IPv4 passed (bridge-nf-call {bridge_nf})");
        assert!(!a.ns.ping(&b6), "IPv6 passed (bridge-nf-call {bridge_nf})");
        assert!(reaches(&node.ns, &b4) && reaches(&node.ns, &b6));
        assert!(reaches(&a.ns, "10.244.1.1"));
        let counters = node.ns.sh(&["nft", "list", "table", "inet", table]);
        assert!(!counters.contains("packets 0 "), "{counters}");
        node.ns.sh(&["nft", "delete", "table", "inet", table]);
        assert!(reaches(&a.ns, &b4) && reaches(&a.ns, &b6));
        assert!(reaches(&b.ns, &a4) && reaches(&b.ns, &a6));
    }

    // CHECK accepts what ADD made; DEL leaves nothing.
    let check = node.check(&conf, &a, &ra);
    assert_silent_success(&check, "CHECK of an isolated pod");
    node.del_ok(&conf, &a);
    node.del_ok(&conf, &b);
    node.assert_empty();
}

/// The control: with the default (ports not isolated) the same pods are bridged, the
/// reply keeps TTL 64, and without br_netfilter's help the node's forward hook never
/// sees their traffic.
#[test]
fn without_isolation_pods_are_bridged_past_the_forward_hook() {
    let (node, conf) = node_and_conf("br-node", false);
    let (a, b) = (Pod::new("br-a"), Pod::new("br-b"));
    node.add_ok(&conf, &a);
    let rb = node.add_ok(&conf, &b);
    let (b4, b6) = addresses(&rb);
    assert!(!bridge_port_isolated(&node, &b.host_veth()));
    assert!(reaches(&a.ns, &b4));
    assert_eq!(reply_ttl(&a.ns, &b4), 64);
    set_bridge_nf_call(&node, false);
    drop_forwarded_to(&node, &b4, &b6);
    assert!(reaches(&a.ns, &b4), "a bridged packet met the forward hook");
    // With br_netfilter handing bridged frames over, the same rule does apply.
    set_bridge_nf_call(&node, true);
    assert!(
        !a.ns.ping(&b4),
        "br_netfilter did not hand the frame to forward"
    );
    node.del_ok(&conf, &a);
    node.del_ok(&conf, &b);
}

/// Where br_netfilter hands bridged frames to the IP hooks (this machine's default in a
/// new namespace), `isolatePorts` leaves the ports alone: the forward hook sees the
/// bridged traffic anyway, and a Service DNATed to a backend on the client's node keeps
/// working (br_netfilter delivers that frame port to port, which isolation forbids).
#[test]
fn with_br_netfilter_isolate_ports_keeps_ports_and_same_node_services_work() {
    let (node, conf) = node_and_conf("brnf-node", true);
    set_bridge_nf_call(&node, true);
    let (a, b) = (Pod::new("brnf-a"), Pod::new("brnf-b"));
    node.add_ok(&conf, &a);
    let rb = node.add_ok(&conf, &b);
    let (b4, b6) = addresses(&rb);
    assert!(!bridge_port_isolated(&node, &b.host_veth()));
    assert_eq!(reply_ttl(&a.ns, &b4), 64);

    // A ClusterIP-like DNAT in the node to b, asked from a.
    let backend: std::net::SocketAddr = format!("{b4}:8080").parse().expect("address");
    let _server = TcpServer::start(&b.ns, "b", backend).expect("server in b");
    node.ns.sh(&["nft", "add", "table", "ip", "twt_svc"]);
    node.ns.sh(&[
        "nft",
        "add chain ip twt_svc pre { type nat hook prerouting priority -100; }",
    ]);
    let dnat =
        format!("add rule ip twt_svc pre ip daddr 10.96.0.10 tcp dport 80 dnat to {b4}:8080");
    node.ns.sh(&["nft", &dnat]);
    let service: std::net::SocketAddr = "10.96.0.10:80".parse().expect("address");
    tcp_ask(&a.ns, service, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("the same-node Service did not answer: {e}"));

    // The forward hook still sees the bridged traffic.
    drop_forwarded_to(&node, &b4, &b6);
    assert!(!a.ns.ping(&b4), "a bridged packet passed the forward hook");
    node.del_ok(&conf, &a);
    node.del_ok(&conf, &b);
}
