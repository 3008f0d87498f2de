//! The overlay with the etcd registry: a real etcd inside the lab's underlay namespace.

use std::time::Duration;
use twill_tests::cluster::{unanswered, wait_until, Cluster, ClusterSpec, RegistryKind};
use twill_tests::etcd::EtcdServer;
use twill_tests::require_root;

#[test]
fn three_nodes_on_etcd_reach_each_other_and_an_expired_node_leaves() {
    require_root();
    let mut c = Cluster::new(ClusterSpec {
        registry: RegistryKind::Etcd {
            endpoint: "http://192.168.1.254:2379".into(),
        },
        ..ClusterSpec::default()
    });
    let etcd = EtcdServer::start_in(c.underlay.ns.name(), "192.168.1.254");
    c.start_all();
    c.wait_ready(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let subnets: Vec<String> = c.nodes.iter().map(|n| n.subnet().unwrap()).collect();
    let mut uniq = subnets.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 3, "{subnets:?}");

    let pods = c.pod_on_each_node();
    let failed = unanswered(&pods);
    assert!(failed.is_empty(), "unanswered: {failed:?}");

    // node-3's agent dies and never comes back: its lease (5 s) expires and its
    // entries leave the other nodes.
    c.nodes[2].stop_agent(libc::SIGKILL);
    let gone = wait_until(Duration::from_secs(20), || {
        !c.nodes[0].agent_routes().contains(&subnets[2])
            && !c.nodes[1].agent_routes().contains(&subnets[2])
    });
    assert!(gone, "node-3's routes stayed:\n{}", c.nodes[0].log());
    let fdb = c.nodes[0]
        .ns
        .sh(&["bridge", "fdb", "show", "dev", "twill.1"]);
    assert!(!fdb.contains("192.168.1.3"), "{fdb}");

    // It restarts and gets its subnet back, and is programmed again.
    c.start_agent(2);
    c.wait_ready(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.nodes[2].subnet().unwrap(), subnets[2]);
    drop(etcd);
}
