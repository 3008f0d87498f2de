//! NetworkPolicy end to end: agents in kubernetes mode (`--network-policy auto`, so on)
//! against a real control plane, pods wired by the real plugin with the conflist the
//! agent wrote (`isolatePorts`), Pod objects created and given their IPs as a kubelet
//! would, TCP servers in the pods. Each policy change must show in new connections
//! within [`BOUND`]; the time it took is printed.
//!
//! Pods: `a` (namespace `pa`, node 1), `b` (namespace `pb`, node 1, label
//! `role=client`), `c` (namespace `pb`, node 2).

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use twill_tests::cluster::{wait_until, Cluster, ClusterPod, ClusterSpec, RegistryKind};
use twill_tests::kube::ControlPlane;
use twill_tests::netns::Netns;
use twill_tests::promtool::{check_metrics, http_body};
use twill_tests::require_root;
use twill_tests::scenarios::{tcp_ask, tcp_ask_once, TcpServer};

const BOUND: Duration = Duration::from_secs(5);
const PORT: u16 = 8080;

fn logs(c: &Cluster) -> String {
    c.log_tails(20)
}

/// The Pod object of `pod` on node `node`, with its IP set through the status
/// subresource as the kubelet does.
fn register_pod(cp: &ControlPlane, namespace: &str, pod: &ClusterPod, node: &str, role: &str) {
    cp.create_pod(
        namespace,
        &pod.name,
        node,
        &json!({"role": role}),
        &json!([]),
    )
    .and_then(|()| cp.set_pod_ips(namespace, &pod.name, &[&pod.ip]))
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Who reaches whom with a new connection, as (from, to) names.
fn reachable(
    clients: &[(&str, &Netns)],
    servers: &[(&str, SocketAddr)],
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (from, ns) in clients {
        for (to, addr) in servers {
            if from != to && tcp_ask_once(ns, *addr).is_ok() {
                out.insert((from.to_string(), to.to_string()));
            }
        }
    }
    out
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Runs `write`, then polls until the reachability is `want`; prints the delay.
fn step(
    what: &str,
    c: &Cluster,
    clients: &[(&str, &Netns)],
    servers: &[(&str, SocketAddr)],
    want: &BTreeSet<(String, String)>,
    write: impl FnOnce(),
) {
    let start = Instant::now();
    write();
    let mut last = BTreeSet::new();
    // A denied attempt takes up to a second: the bound is on when the change shows,
    // plus one round of attempts.
    let seen = wait_until(BOUND + Duration::from_secs(4), || {
        last = reachable(clients, servers);
        &last == want
    });
    assert!(
        seen,
        "{what}: reachability after {:?} is {last:?}, want {want:?}\n{}",
        start.elapsed(),
        logs(c)
    );
    let took = start.elapsed();
    println!("{what}: in force after {took:?}");
    assert!(
        took <= BOUND + Duration::from_secs(4),
        "{what} took {took:?}"
    );
}

#[test]
fn network_policy_is_enforced_from_the_api_server() {
    require_root();
    let mut c = Cluster::new(ClusterSpec {
        nodes: 2,
        segments: 1,
        registry: RegistryKind::Kubernetes,
        ..ClusterSpec::default()
    });
    let cp = ControlPlane::for_cluster(&c).unwrap_or_else(|e| panic!("{e}"));
    c.start_all();
    if let Err(e) = c.wait_ready(Duration::from_secs(60)) {
        panic!("{e}\n{}", logs(&c));
    }
    for n in &c.nodes {
        let list = n.conflist().expect("conflist");
        assert_eq!(list["plugins"][0]["isolatePorts"], true, "{}", n.name);
        let status = n.status().expect("status");
        assert_eq!(status["networkPolicy"]["synced"], true, "{status}");
    }

    for ns in ["pa", "pb"] {
        cp.kubectl_ok(&["create", "namespace", ns], None);
    }
    let (n1, n2) = (c.nodes[0].name.clone(), c.nodes[1].name.clone());
    let a = c.add_pod(0, "a").unwrap_or_else(|e| panic!("{e}"));
    let b = c.add_pod(0, "b").unwrap_or_else(|e| panic!("{e}"));
    let cc = c.add_pod(1, "c").unwrap_or_else(|e| panic!("{e}"));
    register_pod(&cp, "pa", &a, &n1, "server");
    register_pod(&cp, "pb", &b, &n1, "client");
    register_pod(&cp, "pb", &cc, &n2, "other");
    let addr =
        |p: &ClusterPod| -> SocketAddr { SocketAddr::new(p.ip.parse().expect("pod IP"), PORT) };
    let bind: SocketAddr = ([0, 0, 0, 0], PORT).into();
    let _servers: Vec<TcpServer> = [&a, &b, &cc]
        .iter()
        .map(|p| TcpServer::start(&p.ns, &p.name, bind).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let servers = [("a", addr(&a)), ("b", addr(&b)), ("c", addr(&cc))];
    let clients = [("a", &a.ns), ("b", &b.ns), ("c", &cc.ns)];
    let everyone = pairs(&[
        ("a", "b"),
        ("a", "c"),
        ("b", "a"),
        ("b", "c"),
        ("c", "a"),
        ("c", "b"),
    ]);

    // 1. No policy: every pod reaches every pod (the same-node pair through the node).
    step("no policy", &c, &clients, &servers, &everyone, || {});
    for (from, to) in [(&a, &b), (&b, &cc)] {
        tcp_ask(&from.ns, addr(to), BOUND).unwrap_or_else(|e| panic!("{e}"));
    }

    // 2. Default deny ingress in a's namespace: only a's ingress closes.
    let deny = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "pa", "name": "deny-ingress"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    })
    .to_string();
    let closed: BTreeSet<_> = everyone
        .iter()
        .filter(|(_, to)| to != "a")
        .cloned()
        .collect();
    step(
        "default deny ingress",
        &c,
        &clients,
        &servers,
        &closed,
        || {
            cp.kubectl_ok(&["create", "-f", "-"], Some(&deny));
        },
    );
    // a's own node still reaches it.
    tcp_ask(&c.nodes[0].ns, addr(&a), BOUND)
        .unwrap_or_else(|e| panic!("node-1 must reach its pod a: {e}"));
    let status = c.nodes[0].status().expect("status");
    let row = status["networkPolicy"]["pods"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "a"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(row["ingress"], json!(["pa/deny-ingress"]), "{status}");
    assert_eq!(row["egress"], Value::Null, "{status}");

    // 3. Allow from pods labelled role=client in any namespace: b, not c.
    let allow = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "pa", "name": "allow-clients"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{
            "namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}
        }]}]},
    })
    .to_string();
    let mut with_b = closed.clone();
    with_b.insert(("b".into(), "a".into()));
    step("allow role=client", &c, &clients, &servers, &with_b, || {
        cp.kubectl_ok(&["create", "-f", "-"], Some(&allow));
    });
    let metrics = c.nodes[0].http_get("/metrics");
    for needle in [
        "twill_policies 2",
        "twill_policy_rules ",
        "twill_policy_applies_total{result=\"ok\"}",
        "direction=\"ingress\"",
    ] {
        assert!(metrics.contains(needle), "{needle} missing in\n{metrics}");
    }
    // With policies, pods and denials counted: what a real Prometheus's linter accepts.
    if let Err(e) = check_metrics(http_body(&metrics)) {
        panic!("{e}\n{metrics}");
    }

    // 4. Both policies gone: open again, and the policy table is gone.
    step(
        "policies deleted",
        &c,
        &clients,
        &servers,
        &everyone,
        || {
            cp.kubectl_ok(
                &[
                    "-n",
                    "pa",
                    "delete",
                    "networkpolicy",
                    "deny-ingress",
                    "allow-clients",
                ],
                None,
            );
        },
    );
    assert!(
        wait_until(BOUND, || !c.nodes[0]
            .ns
            .run(&["nft", "list", "table", "inet", "twill_policy"])
            .status
            .success()),
        "the policy table is left behind"
    );

    // 5. A policy the API server accepts but Twill cannot parse fails closed. Go's
    // ParseCIDR takes the prefix length "0032" as 32; Twill rejects it, and isolates
    // what the policy selects rather than leaving a open. Fixed in place, it allows c.
    let typo = |cidr: String| {
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "pa", "name": "typo"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]},
        })
        .to_string()
    };
    step("rejected policy", &c, &clients, &servers, &closed, || {
        cp.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&typo(format!("{}/0032", cc.ip))),
        );
    });
    let status = c.nodes[0].status().expect("status");
    let policy = &status["networkPolicy"];
    let rejected = policy["rejected"].to_string();
    assert!(
        rejected.contains("pa/typo")
            && rejected.contains("ipBlock.cidr")
            && rejected.contains("fails closed"),
        "{status}"
    );
    let row = policy["pods"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "a"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(row["ingress"], json!(["pa/typo(rejected)"]), "{status}");
    let metrics = c.nodes[0].http_get("/metrics");
    assert!(
        metrics.contains("twill_policy_rejected_objects 1"),
        "{metrics}"
    );
    let mut with_c = closed.clone();
    with_c.insert(("c".into(), "a".into()));
    step(
        "rejected policy fixed",
        &c,
        &clients,
        &servers,
        &with_c,
        || {
            cp.kubectl_ok(&["apply", "-f", "-"], Some(&typo(format!("{}/32", cc.ip))));
        },
    );

    // 6. Uninstall removes the policy table too (made again by a new policy first).
    step(
        "default deny again",
        &c,
        &clients,
        &servers,
        &closed,
        || {
            cp.kubectl_ok(&["-n", "pa", "delete", "networkpolicy", "typo"], None);
            cp.kubectl_ok(&["create", "-f", "-"], Some(&deny));
        },
    );
    // 6b. The table edited or removed by hand: a resync finds the drift and restores it.
    for (what, edit) in [
        ("table flushed by hand", "flush"),
        ("table deleted by hand", "delete"),
    ] {
        step(what, &c, &clients, &servers, &closed, || {
            let out = c.nodes[0]
                .ns
                .run(&["nft", edit, "table", "inet", "twill_policy"]);
            assert!(out.status.success(), "nft {edit}: {out:?}");
        });
    }
    c.nodes[0].stop_agent(libc::SIGTERM);
    let out = c
        .agent_command(0, Some("uninstall"))
        .output()
        .expect("uninstall");
    assert!(
        out.status.success(),
        "uninstall: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !c.nodes[0]
            .ns
            .run(&["nft", "list", "table", "inet", "twill_policy"])
            .status
            .success(),
        "uninstall left the policy table"
    );
}
