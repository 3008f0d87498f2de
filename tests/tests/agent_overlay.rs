//! Multi-node overlay: agents on node namespaces, pods from the real plugin.

use std::time::Duration;
use twill_tests::cluster::{ping_matrix, Cluster, ClusterSpec};
use twill_tests::require_root;

#[test]
fn three_nodes_file_registry_every_pod_reaches_every_pod() {
    require_root();
    let mut c = Cluster::new(ClusterSpec::default());
    c.start_all();
    c.wait_ready(Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}"));
    let mut pods = Vec::new();
    for i in 0..3 {
        for k in 0..2 {
            pods.push(c.add_pod(i, &format!("sleep-{}", i * 2 + k + 1)).unwrap());
        }
    }
    let failed: Vec<String> = ping_matrix(&pods)
        .into_iter()
        .filter(|(_, _, rtt)| rtt.is_none())
        .map(|(a, b, _)| format!("{} -> {} ({})", pods[a].name, pods[b].name, pods[b].ip))
        .collect();
    assert!(failed.is_empty(), "unanswered: {failed:?}\n{}", c.nodes[0].log());
}

