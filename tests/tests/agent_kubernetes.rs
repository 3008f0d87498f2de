//! Kubernetes mode against a real control plane (kube-apiserver and
//! kube-controller-manager v1.20.2 from `tests/k8s/prepare.sh`), running in the
//! underlay namespace. No kubelet exists: the test registers the Node objects itself,
//! node-ipam gives them podCIDRs, and one agent per lab node runs with the kubernetes
//! registry and a ServiceAccount bound to exactly the ClusterRole in
//! `conf/kubernetes/twill.yaml`.
//!
//! One control plane serves the whole story (it takes ~20 s to start), told in steps.

use serde_json::Value;
use std::time::{Duration, Instant};
use twill_tests::cluster::{
    tail, unanswered, wait_until, Cluster, ClusterPod, ClusterSpec, RegistryKind,
};
use twill_tests::kube::{manifests_dir, stderr_without_skew_warning, ControlPlane};
use twill_tests::require_root;

const SA: &str = "system:serviceaccount:twill-system:twill";

fn annotation(node: &Value, key: &str) -> Option<String> {
    node["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

fn network_condition(node: &Value) -> Option<(String, String)> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find_map(|c| {
            (c["type"] == "NetworkUnavailable").then(|| {
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                )
            })
        })
}

fn logs(c: &Cluster) -> String {
    c.log_tails(15)
}

/// The peer row `peer` in node `i`'s status.
fn peer_row(c: &Cluster, i: usize, peer: &str) -> Option<Value> {
    c.nodes[i]
        .peer_rows()
        .into_iter()
        .find(|r| r["node"] == peer)
}

/// FDB destinations on node `i`'s VXLAN device.
fn fdb_destinations(c: &Cluster, i: usize) -> Vec<String> {
    let out = c.nodes[i]
        .ns
        .run(&["bridge", "-j", "fdb", "show", "dev", "twill.1"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["dst"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `count` pings from `from` to `to`, one every 0.2 s, in the background (`-c`:
/// ping waits for the last replies, so every loss is a real one).
fn start_ping(from: &ClusterPod, to: &ClusterPod, count: u32) -> std::process::Child {
    std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            from.ns.name(),
            "ping",
            "-n",
            "-q",
            "-i",
            "0.2",
        ])
        .args(["-c", &count.to_string(), &to.ip])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ping")
}

/// (transmitted, received) from ping's summary.
fn ping_counts(out: &str) -> Option<(u32, u32)> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let nums: Vec<u32> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    Some((*nums.first()?, *nums.get(1)?))
}

#[test]
fn kubernetes_registry_against_a_real_api_server() {
    require_root();
    let mut c = Cluster::new(ClusterSpec {
        nodes: 3,
        segments: 2,
        direct_routing: true,
        registry: RegistryKind::Kubernetes,
        ..ClusterSpec::default()
    });
    // 1. The control plane, the RBAC from conf/ applied for real, the agents'
    // ServiceAccount kubeconfig, and Nodes registered as a kubelet would (node-ipam
    // gives them podCIDRs).
    let mut cp = ControlPlane::for_cluster(&c).unwrap_or_else(|e| panic!("{e}"));

    // 2. Every manifest passes a server-side dry run; the role is least privilege.
    let dir = manifests_dir();
    let dry = cp.kubectl(&["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
    assert!(
        dry.status.success(),
        "server dry run of conf/kubernetes failed: {}",
        stderr_without_skew_warning(&dry)
    );
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    for kind in [
        "daemonset.apps/twill",
        "configmap/twill-config",
        "clusterrole.rbac.authorization.k8s.io/twill",
        "customresourcedefinition.apiextensions.k8s.io/twillnodes.twill.io",
    ] {
        assert!(
            dry_out.contains(kind),
            "dry run did not cover {kind}: {dry_out}"
        );
    }
    for (verb, resource, allowed) in [
        ("watch", "nodes", true),
        ("list", "nodes", true),
        ("patch", "nodes --subresource=status", true),
        ("update", "nodes --subresource=status", false),
        ("patch", "nodes", false),
        ("update", "nodes", false),
        ("delete", "nodes", false),
        ("get", "pods", true),
        ("list", "pods", true),
        ("watch", "pods", true),
        ("patch", "pods", false),
        ("watch", "namespaces", true),
        ("update", "namespaces", false),
        ("list", "networkpolicies.networking.k8s.io", true),
        ("watch", "networkpolicies.networking.k8s.io", true),
        ("create", "networkpolicies.networking.k8s.io", false),
        ("get", "secrets", false),
        ("watch", "twillnodes.twill.io", true),
        ("patch", "twillnodes.twill.io", true),
        ("update", "twillnodes.twill.io", false),
    ] {
        let mut args = vec!["auth", "can-i", verb];
        args.extend(resource.split(' '));
        args.extend(["--as", SA]);
        let out = cp.kubectl(&args);
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            answer,
            if allowed { "yes" } else { "no" },
            "can the agent {verb} {resource}?"
        );
    }

    // 3. Agents with the ServiceAccount's kubeconfig; pods on every node reach each other.
    c.start_all();
    if let Err(e) = c.wait_ready(Duration::from_secs(60)) {
        panic!("{e}\n{}", logs(&c));
    }
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(
            n.subnet(),
            cp.pod_cidr(&n.name),
            "node {i} must use its Node's podCIDR"
        );
    }
    let pods = c.pod_on_each_node();
    let failed = unanswered(&pods);
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", logs(&c));

    // 4. Each agent annotated its own Node and set NetworkUnavailable=False.
    for n in &c.nodes {
        let status = n.status().expect("agent status");
        assert!(
            wait_until(Duration::from_secs(15), || cp
                .node(&n.name)
                .and_then(|v| network_condition(&v))
                == Some(("False".into(), "TwillIsUp".into()))),
            "{}: NetworkUnavailable is not False: {:?}",
            n.name,
            cp.node(&n.name).map(|v| v["status"]["conditions"].clone())
        );
        let node = cp.node(&n.name).unwrap();
        assert_eq!(annotation(&node, "twill.io/public-ip"), Some(n.ip.clone()));
        assert_eq!(
            annotation(&node, "twill.io/vtep-mac").as_deref(),
            status["vtepMac"].as_str()
        );
        assert_eq!(
            annotation(&node, "twill.io/backend-type").as_deref(),
            Some("vxlan")
        );
        // Its TwillNode is published too, so the cluster can switch to watching them.
        let tn: Value = serde_json::from_str(
            &cp.kubectl_ok(&["get", "twillnode", &n.name, "-o", "json"], None),
        )
        .expect("TwillNode JSON");
        assert_eq!(tn["spec"]["vtepMAC"], status["vtepMac"]);
    }

    // 5. A user override of node-2's public IP (a node behind NAT): peers send there.
    // node-2 sits on the other segment, so node-1 reaches it through VXLAN.
    let alias = "192.168.2.102";
    c.nodes[1]
        .ns
        .ip(&["addr", "add", &format!("{alias}/24"), "dev", "eth0"]);
    assert!(!fdb_destinations(&c, 0).contains(&alias.to_string()));
    cp.kubectl_ok(
        &[
            "annotate",
            "node",
            "node-2",
            &format!("twill.io/public-ip-overwrite={alias}"),
        ],
        None,
    );
    assert!(
        wait_until(Duration::from_secs(15), || {
            fdb_destinations(&c, 0).contains(&alias.to_string())
                && !fdb_destinations(&c, 0).contains(&c.nodes[1].ip)
                && peer_row(&c, 0, "node-2").is_some_and(|r| r["publicIP"] == alias)
        }),
        "node-1 does not send to node-2's override: fdb {:?}\n{}",
        fdb_destinations(&c, 0),
        logs(&c)
    );
    assert!(
        pods[0].ns.ping(&pods[1].ip),
        "pod on node-1 cannot reach node-2's pod through the override"
    );

    // 6. A Node deleted through the API leaves every other node's routes.
    let gone = cp.pod_cidr("node-3").unwrap();
    assert!(c.nodes[0].agent_routes().contains(&gone));
    cp.kubectl_ok(&["delete", "node", "node-3"], None);
    assert!(
        wait_until(Duration::from_secs(10), || {
            !c.nodes[0].agent_routes().contains(&gone) && !c.nodes[1].agent_routes().contains(&gone)
        }),
        "node-3's subnet {gone} is still routed: {:?} / {:?}",
        c.nodes[0].agent_routes(),
        c.nodes[1].agent_routes()
    );
    c.nodes[2].stop_agent(libc::SIGTERM);

    // 7. The API server stopped for 30 s: pod-to-pod traffic goes on, zero lost replies.
    // The server is started again at once but refuses the nodes (a TCP reset, as from a
    // dead server) until the 30 s are over: the outage ends at a known instant, with a
    // server that is ready, so step 7b times the agents' reconnection alone.
    let ping = start_ping(&pods[0], &pods[1], 225);
    let outage = Instant::now();
    cp.stop_apiserver();
    let gate = "table inet twt_apiserver_gate {\n chain input {\n \
                type filter hook input priority 0;\n \
                iifname != \"lo\" tcp dport 6443 reject with tcp reset\n }\n}\n";
    c.underlay
        .ns
        .nft_script(gate)
        .expect("gating the API server");
    cp.start_apiserver();
    std::thread::sleep(Duration::from_secs(30).saturating_sub(outage.elapsed()));
    c.underlay
        .ns
        .nft_script("delete table inet twt_apiserver_gate")
        .expect("opening the API server");
    let back = Instant::now();

    // 7b. A Node created right after the API server is back is programmed on every
    // agent within 10 s: the watches retry at most 5 s apart (kube-runtime's default
    // backoff grows to 60 s). Its record is what an agent would have annotated; its
    // podCIDR is set here, clear of node-ipam's range, so the controller manager's own
    // reconnect does not count.
    let late = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-late", "annotations": {
            "twill.io/public-ip": "192.168.1.250",
            "twill.io/vtep-mac": "02:00:00:00:02:50",
            "twill.io/backend-type": "vxlan",
        }},
        "spec": {"podCIDR": "10.244.250.0/24", "podCIDRs": ["10.244.250.0/24"]},
    });
    cp.kubectl_ok(&["create", "-f", "-"], Some(&late.to_string()));
    let programmed = wait_until(Duration::from_secs(10), || {
        [0, 1]
            .iter()
            .all(|&k| peer_row(&c, k, "node-late").is_some_and(|r| r["programmed"] == true))
    });
    assert!(
        programmed,
        "a Node created after the outage was not programmed within 10 s of the API \
         server's return ({:.1} s)\n{}",
        back.elapsed().as_secs_f64(),
        logs(&c)
    );
    eprintln!(
        "node-late programmed on both agents {:.1} s after the API server was back",
        back.elapsed().as_secs_f64()
    );
    let out = ping.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = ping_counts(&summary).unwrap_or_else(|| panic!("ping said: {summary}"));
    assert_eq!(sent, 225, "ping did not run to the end: {summary}");
    assert_eq!(
        sent, received,
        "pings lost while the API server was away: {summary}"
    );
    for n in &c.nodes[..2] {
        assert!(
            n.ready(),
            "{} is not ready after the outage\n{}",
            n.name,
            tail(&n.log(), 20)
        );
    }

    // One warning when the watch was lost, one info with the outage's length when it
    // was back; no line per failed reconnect from the client library.
    for n in &c.nodes[..2] {
        let log = n.log();
        let lost = log.matches("lost the Node watch").count();
        assert_eq!(
            lost,
            1,
            "{}: {lost} 'lost' warnings\n{}",
            n.name,
            tail(&log, 30)
        );
        assert!(
            log.lines()
                .any(|l| l.contains("the Node watch is back") && l.contains("outage_s")),
            "{}: no 'back' line with the outage's length\n{}",
            n.name,
            tail(&log, 30)
        );
        for noise in ["failed with error", "eof in poll"] {
            assert!(
                !log.contains(noise),
                "{}: log has {noise:?}\n{}",
                n.name,
                tail(&log, 30)
            );
        }
    }
    cp.kubectl_ok(&["delete", "node", "node-late"], None);

    // 8. A node added afterwards, its agent run as in a pod (in-cluster config): it says
    // clearly that it has no podCIDR while none is assigned (node-ipam paused), then it
    // is learned by the others.
    let i = c.add_node();
    let name = c.nodes[i].name.clone();
    cp.signal("kube-controller-manager", libc::SIGSTOP);
    cp.create_node(&name, &c.nodes[i].ip.clone());
    // This one runs as in a pod: in-cluster config, the ServiceAccount's mounted token.
    let sa_dir = c.dir.path().join("serviceaccount");
    cp.service_account_mount("twill-system", "twill", &sa_dir)
        .expect("service account files");
    c.start_agent_as_pod(i, &sa_dir, &cp.addr.clone(), 6443);
    let mut said = String::new();
    let explained = wait_until(Duration::from_secs(20), || {
        said = c.nodes[i].http_get("/readyz");
        said.contains("no spec.podCIDR")
    });
    cp.signal("kube-controller-manager", libc::SIGCONT);
    assert!(
        explained,
        "an agent without a podCIDR must say so: {said}\n{}",
        tail(&c.nodes[i].log(), 10)
    );
    assert!(
        !said.starts_with("HTTP/1.0 200") && !said.starts_with("HTTP/1.1 200"),
        "{said}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || cp.pod_cidr(&name).is_some()),
        "node-ipam did not assign {name} a podCIDR"
    );
    let running = [0, 1, i];
    assert!(
        wait_until(Duration::from_secs(60), || running
            .iter()
            .all(|&k| c.nodes[k].ready())
            && [0, 1].iter().all(
                |&k| peer_row(&c, k, &name).is_some_and(|r| r["programmed"] == true)
            )),
        "{name} was not learned after the API server came back\n{}",
        logs(&c)
    );
    let newcomer = c.add_pod(i, "sleep-4").unwrap();
    for p in &pods[..2] {
        assert!(
            newcomer.ns.ping(&p.ip),
            "{name}'s pod cannot reach {}",
            p.ip
        );
        assert!(
            p.ns.ping(&newcomer.ip),
            "{} cannot reach {name}'s pod",
            p.ip
        );
    }
}
