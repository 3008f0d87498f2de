//! The kubernetes registry's memory does not follow the Nodes' churn (issue 16): 500
//! Node objects of realistic weight (a kubelet's labels, conditions and 40 images), one
//! agent, then every Node's status patched 10 times as kubelet heartbeats and image
//! list changes would; the agent's RSS stays within 10 % of where it was once it had
//! programmed them all.

use std::time::Duration;
use twill_tests::cluster::{wait_until, Cluster};
use twill_tests::kube::ControlPlane;
use twill_tests::kube_nodes::{
    create_nodes, heavy_node, name, one_node_spec, patch_node_status, status_patch,
};
use twill_tests::require_root;

const NODES: usize = 500;
const ROUNDS: usize = 10;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no VmRSS for agent {pid}"))
}

fn programmed(c: &Cluster) -> usize {
    c.nodes[0]
        .peer_rows()
        .iter()
        .filter(|r| r["programmed"] == true)
        .count()
}

#[test]
fn node_status_churn_does_not_grow_the_agent() {
    require_root();
    let mut c = Cluster::new(one_node_spec());
    let cp = ControlPlane::for_cluster(&c).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<String> = (0..NODES).map(name).collect();
    create_nodes(&cp, 0..NODES).unwrap_or_else(|e| panic!("{e}"));
    c.start_all();
    assert!(
        wait_until(Duration::from_secs(60), || programmed(&c) == NODES),
        "{} of {NODES} peers programmed",
        programmed(&c)
    );
    let pid = c.nodes[0].agent.as_ref().map(|a| a.id()).expect("agent");
    let start = rss_kib(pid);

    for round in 0..ROUNDS {
        patch_node_status(&cp, &names, &status_patch(round)).unwrap_or_else(|e| panic!("{e}"));
    }
    // The last round reached the server...
    let last = cp.node(&names[NODES - 1]).expect("a Node");
    let image = last["status"]["images"][0]["names"][0]
        .as_str()
        .unwrap_or("");
    assert!(image.ends_with(&format!(":r{}", ROUNDS - 1)), "{image}");
    // ...and the agent has read every event before it: a Node created after them is
    // programmed only once the watch has delivered them all.
    cp.kubectl_ok(&["create", "-f", "-"], Some(&heavy_node(NODES).to_string()));
    assert!(
        wait_until(Duration::from_secs(60), || programmed(&c) == NODES + 1),
        "the Node created after the churn was not programmed"
    );
    let end = rss_kib(pid);
    eprintln!(
        "agent RSS: {start} KiB with {NODES} Nodes programmed, {end} KiB after {} status patches",
        NODES * ROUNDS
    );
    assert!(
        end * 10 <= start * 11,
        "the agent grew from {start} KiB to {end} KiB over {} Node status patches",
        NODES * ROUNDS
    );
}
