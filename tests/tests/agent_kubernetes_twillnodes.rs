//! The kubernetes registry with `records: twillnodes` against a real control plane
//! (kube-apiserver and kube-controller-manager v1.20.2, garbage collector included):
//! the CRD and RBAC of `conf/kubernetes/twill.yaml`, two agents as the `twill`
//! ServiceAccount, each publishing a TwillNode owned by its Node and watching
//! TwillNodes instead of Nodes. Told in steps, like `agent_kubernetes`.

use serde_json::{json, Value};
use std::time::Duration;
use twill_tests::cluster::{unanswered, wait_until, Cluster, ClusterSpec, RegistryKind};
use twill_tests::kube::ControlPlane;
use twill_tests::require_root;

const SA: &str = "system:serviceaccount:twill-system:twill";

fn logs(c: &Cluster) -> String {
    c.log_tails(15)
}

fn twill_node(cp: &ControlPlane, name: &str) -> Option<Value> {
    let out = cp.kubectl(&["get", "twillnode", name, "-o", "json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn uid(cp: &ControlPlane, node: &str) -> String {
    cp.node(node).expect("the Node")["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string()
}

/// A Node without an agent, once the controller manager gave it a podCIDR: that CIDR.
fn create_node(cp: &ControlPlane, node: &str, ip: &str) -> String {
    cp.create_node(node, ip);
    assert!(wait_until(Duration::from_secs(30), || cp
        .pod_cidr(node)
        .is_some()));
    cp.pod_cidr(node).expect("podCIDR")
}

/// A TwillNode written by hand (as another node's agent would), owned by its Node.
fn apply_twill_node(cp: &ControlPlane, node: &str, cidr: &str, mac: &str) {
    let doc = json!({
        "apiVersion": "twill.io/v1", "kind": "TwillNode",
        "metadata": {"name": node, "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid(cp, node)}]},
        "spec": {"podCIDRs": [cidr], "publicIP": "192.168.1.99", "vtepMAC": mac},
    });
    cp.kubectl_ok(&["apply", "-f", "-"], Some(&doc.to_string()));
}

fn wait(what: &str, c: &Cluster, cond: impl FnMut() -> bool) {
    wait_for(what, c, Duration::from_secs(20), cond)
}

fn wait_for(what: &str, c: &Cluster, within: Duration, cond: impl FnMut() -> bool) {
    assert!(wait_until(within, cond), "{what}\n{}", logs(c));
}

#[test]
fn twillnode_records_against_a_real_api_server() {
    require_root();
    let mut c = Cluster::new(ClusterSpec {
        nodes: 2,
        registry: RegistryKind::KubernetesTwillNodes,
        ..ClusterSpec::default()
    });
    let cp = ControlPlane::for_cluster(&c).unwrap_or_else(|e| panic!("{e}"));

    // 1. The ClusterRole lets the agent write TwillNodes, not update them wholesale.
    for (verb, allowed) in [
        ("watch", true),
        ("patch", true),
        ("create", true),
        ("delete", true),
        ("update", false),
    ] {
        let out = cp.kubectl(&["auth", "can-i", verb, "twillnodes.twill.io", "--as", SA]);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(answer, if allowed { "yes" } else { "no" }, "{verb}");
    }

    // 2. Each agent publishes its TwillNode, owned by its Node; pods reach each other.
    c.start_all();
    if let Err(e) = c.wait_ready(Duration::from_secs(60)) {
        panic!("{e}\n{}", logs(&c));
    }
    for n in &c.nodes {
        let tn = twill_node(&cp, &n.name).expect("a TwillNode per node");
        let status = n.status().expect("agent status");
        assert_eq!(tn["spec"]["podCIDRs"], json!([cp.pod_cidr(&n.name)]));
        assert_eq!(tn["spec"]["publicIP"], json!(n.ip));
        assert_eq!(tn["spec"]["vtepMAC"], status["vtepMac"]);
        let owner = &tn["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("Node"), Some(uid(&cp, &n.name).as_str()))
        );
    }
    let pods = c.pod_on_each_node();
    let failed = unanswered(&pods);
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", logs(&c));

    // 3. A node the agents learn from its TwillNode alone: a bad MAC is rejected and
    // never programmed; fixed, it is routed.
    let cidr = create_node(&cp, "node-x", "192.168.1.99");
    apply_twill_node(&cp, "node-x", &cidr, "0e:00");
    let n1 = &c.nodes[0];
    wait("node-x's bad TwillNode is not rejected", &c, || {
        n1.peer_rows().iter().any(|p| {
            p["mode"] == "rejected"
                && p["node"].as_str().is_some_and(|s| s.contains("node-x"))
                && p["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("spec.vtepMAC"))
        })
    });
    assert!(
        !n1.agent_routes().contains(&cidr),
        "a rejected record routed"
    );
    apply_twill_node(&cp, "node-x", &cidr, "0e:00:00:00:00:99");
    wait("node-x is not routed", &c, || {
        n1.agent_routes().contains(&cidr)
    });

    // 4. node-x's Node deleted: the garbage collector deletes its TwillNode and the
    // route goes. The collector finds a new CRD at its next discovery, every 30 s.
    cp.kubectl_ok(&["delete", "node", "node-x"], None);
    wait_for(
        "node-x's TwillNode outlived its Node",
        &c,
        Duration::from_secs(75),
        || twill_node(&cp, "node-x").is_none(),
    );
    wait("node-x is still routed", &c, || {
        !n1.agent_routes().contains(&cidr)
    });

    // 5. node-2's TwillNode deleted or changed by hand: its agent publishes it again.
    let before = twill_node(&cp, "node-2").expect("node-2's TwillNode");
    cp.kubectl_ok(&["delete", "twillnode", "node-2"], None);
    wait(
        "node-2's agent did not publish its TwillNode again",
        &c,
        || twill_node(&cp, "node-2").is_some_and(|tn| tn["spec"] == before["spec"]),
    );
    cp.kubectl_ok(
        &[
            "patch",
            "twillnode",
            "node-2",
            "--type=merge",
            "-p",
            r#"{"spec":{"publicIP":"192.168.1.250"}}"#,
        ],
        None,
    );
    wait("node-2's agent did not restore its TwillNode", &c, || {
        twill_node(&cp, "node-2").is_some_and(|tn| tn["spec"] == before["spec"])
    });
    assert!(
        pods[0].ns.ping(&pods[1].ip),
        "pods lost each other after the TwillNode was restored\n{}",
        logs(&c)
    );

    // 6. uninstall on node-2 deletes its TwillNode; node-1 stops routing there.
    c.nodes[1].stop_agent(libc::SIGTERM);
    let out = c.agent_command(1, Some("uninstall")).output().unwrap();
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(twill_node(&cp, "node-2").is_none(), "uninstall left it");
    let gone = cp.pod_cidr("node-2").expect("podCIDR");
    wait("node-2 is still routed on node-1", &c, || {
        !c.nodes[0].agent_routes().contains(&gone)
    });

    // 7. The CRD deleted under a running agent (as `kubectl delete -f twill.yaml` does
    // before the agents stop): the API server deletes every TwillNode first, and the
    // agent keeps its peers' routes instead of taking those deletions for nodes
    // leaving.
    let kept = create_node(&cp, "node-y", "192.168.1.98");
    apply_twill_node(&cp, "node-y", &kept, "0e:00:00:00:00:98");
    wait("node-y is not routed", &c, || {
        c.nodes[0].agent_routes().contains(&kept)
    });
    cp.kubectl_ok(
        &["delete", "crd", "twillnodes.twill.io", "--timeout=60s"],
        None,
    );
    wait("the agent did not say it ignores the deletions", &c, || {
        c.nodes[0].log().contains("TwillNode deletions are ignored")
    });
    assert!(
        c.nodes[0].agent_routes().contains(&kept),
        "node-y's route went with the CRD\n{}",
        logs(&c)
    );
}
