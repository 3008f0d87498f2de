//! The seeds' scenarios (`twill_tests::scenarios`) end to end: each test builds its own
//! cluster (agents with a file registry, pods from the real plugin), runs one scenario
//! and fails with what the scenario saw go wrong.

use twill_tests::cluster::{Cluster, ClusterPod, ClusterSpec};
use twill_tests::scenarios::{
    cluster_ip_service, kube_proxy_script, node_port, outside_client, pod_egress, pod_replaced,
    Service,
};

fn pod(c: &Cluster, node: usize, name: &str) -> ClusterPod {
    c.add_pod(node, name).unwrap_or_else(|e| panic!("{e}"))
}

/// The scenario's summary, or the test fails with its error (and the agents' log tails).
fn shown(c: &Cluster, result: Result<String, String>) -> String {
    match result {
        Ok(summary) => {
            eprintln!("{summary}");
            summary
        }
        Err(e) => {
            let logs: String = c
                .nodes
                .iter()
                .map(|n| {
                    format!(
                        "\n--- {} log (tail):\n{}",
                        n.name,
                        twill_tests::cluster::tail(&n.log(), 10)
                    )
                })
                .collect();
            panic!("{e}{logs}");
        }
    }
}

#[test]
fn replaced_pod_gets_a_new_address_that_answers_from_every_node() {
    let c = Cluster::up(ClusterSpec::with_nodes(3));
    let a = pod(&c, 0, "sleep-1");
    let mut web = pod(&c, 1, "sleep-2");
    let b = pod(&c, 2, "sleep-3");
    let old = web.ip.clone();
    shown(&c, pod_replaced(&c, &mut web, &[&a, &b]));
    assert_ne!(web.ip, old);
    assert_eq!(web.name, "sleep-2");
    assert_eq!(web.node, 1);
}

#[test]
fn cluster_ip_service_reaches_backends_on_both_nodes_hairpins_and_ignores_ping() {
    let c = Cluster::up(ClusterSpec::with_nodes(2));
    let client = pod(&c, 0, "sleep-1");
    // The first backend is across the overlay; the second shares the client's node.
    let remote = pod(&c, 1, "web-1");
    let local = pod(&c, 0, "web-2");
    let summary = shown(&c, cluster_ip_service(&c, &client, &[&remote, &local]));
    assert!(summary.contains("ping 10.96.0.10 unanswered"), "{summary}");
    // Nothing of the service is left behind.
    for n in &c.nodes {
        let tables = n.ns.sh(&["nft", "list", "tables"]);
        assert!(!tables.contains("kube-svc"), "{}: {tables}", n.name);
    }
}

#[test]
fn node_port_from_outside_reaches_a_pod_on_another_node_and_replies_through_the_entry_node() {
    let c = Cluster::up(ClusterSpec::with_nodes(2));
    let backend = pod(&c, 1, "web-1");
    let outside = outside_client(&c, 0, 200).unwrap_or_else(|e| panic!("{e}"));
    let summary = shown(&c, node_port(&c, &outside, 0, &backend));
    // The entry node comes first; the NodePort is open on every node.
    assert!(summary.contains("through node-1 seen as"), "{summary}");
    assert!(summary.contains(", node-2 seen as"), "{summary}");
}

#[test]
fn pod_to_outside_is_masqueraded_and_pod_to_pod_keeps_its_address() {
    let c = Cluster::up(ClusterSpec::with_nodes(2));
    let a = pod(&c, 0, "sleep-1");
    let b = pod(&c, 1, "sleep-2");
    let summary = shown(&c, pod_egress(&c, &a, &b));
    assert!(summary.contains(&format!("saw {} (masqueraded)", c.nodes[0].ip)));
}

/// The scenario is not a tautology: without the agent's masquerade the outside has no
/// route back to the pod network, and the scenario says so.
#[test]
fn pod_to_outside_fails_without_ip_masq() {
    let c = Cluster::up(ClusterSpec {
        ip_masq: false,
        ..ClusterSpec::with_nodes(2)
    });
    let a = pod(&c, 0, "sleep-1");
    let b = pod(&c, 1, "sleep-2");
    let err = pod_egress(&c, &a, &b).expect_err("reached the outside without masquerade");
    assert!(err.contains("outside"), "{err}");
}

#[test]
fn kube_proxy_script_has_the_dnat_hairpin_and_masquerade_rules() {
    let script = kube_proxy_script(
        "10.244.0.0/16",
        &[Service {
            name: "web".into(),
            cluster_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            node_port: Some(30080),
            endpoints: vec![
                ("10.244.1.2".parse().unwrap(), 8080),
                ("10.244.2.2".parse().unwrap(), 8080),
            ],
        }],
    );
    for line in [
        "add table ip kube-svc\ndelete table ip kube-svc\ntable ip kube-svc {",
        "type nat hook prerouting priority dstnat; policy accept;\n        jump services",
        "type nat hook output priority -100; policy accept;\n        jump services",
        "meta mark & 0x4000 == 0x4000 masquerade fully-random",
        "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
        "ip daddr 10.96.0.10 tcp dport 80 goto svc-web",
        "fib daddr type local ip daddr != 127.0.0.0/8 tcp dport 30080 goto svc-web",
        "numgen random mod 2 vmap { 0 : goto sep-web-0, 1 : goto sep-web-1 }",
        "chain sep-web-1 {\n        ip saddr 10.244.2.2 jump mark-for-masquerade\n        meta l4proto tcp dnat to 10.244.2.2:8080",
    ] {
        assert!(script.contains(line), "missing {line:?} in:\n{script}");
    }
}
