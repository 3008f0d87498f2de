//! The operator's path on a real cluster: the DaemonSet of `conf/kubernetes/twill.yaml`
//! on two kubelet + containerd nodes (`tests/k8s-node`, `make k8s-node`), with an image
//! of the binaries this workspace just built. The seeds' commands: pods on two nodes
//! ping each other, a replaced pod gets a new address, `rollout restart` loses no ping,
//! and `kubectl delete -f` plus `twill-agent uninstall` leave nothing of Twill behind.

use std::time::{Duration, Instant};
use twill_tests::kubelet_checks::{network_condition, pod_cidrs, running_pod, twill_leftovers};
use twill_tests::kubelet_cluster::{wait_for, KubeletCluster, API_SERVER, NODES};
use twill_tests::kubelet_manifests::{
    sleep_deployments, test_manifest, with_explicit_api_server, IMAGE,
};
use twill_tests::kubelet_ping::ContinuousPing;
use twill_tests::{require_root, test_image, workspace_bin, TempDir};

#[test]
fn daemonset_on_a_kubelet_cluster() {
    require_root();
    let started = Instant::now();
    if let Err(e) = daemonset_on_a_kubelet_cluster_steps() {
        panic!("{e}");
    }
    eprintln!("daemonset_kubelet: passed in {:.1?}", started.elapsed());
}

fn daemonset_on_a_kubelet_cluster_steps() -> Result<(), String> {
    let work = TempDir::new("ds-image");
    let image = work.path().join("twill-image.tar");
    let agent = workspace_bin("twill-agent");
    let plugin = workspace_bin("twill");
    test_image::build(
        IMAGE,
        &[("twill-agent", &agent), ("twill", &plugin)],
        work.path(),
        &image,
    )?;
    let k = KubeletCluster::up_for_daemonset()?;
    k.import_image(&image)?;

    // 1. The manifest as shipped, but for imagePullPolicy: the image exists only in the
    //    nodes' containerd (imported above; nothing can be pulled here), and a `:0.1.0`
    //    tag would otherwise be pulled whenever it is missing, which fails the pod.
    let manifest = test_manifest()?;
    k.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    let rollout = k.kubectl(
        &[
            "-n",
            "twill-system",
            "rollout",
            "status",
            "ds/twill",
            "--timeout=180s",
        ],
        None,
    );
    if let Err(e) = rollout {
        let pods = k.kubectl(&["-n", "twill-system", "get", "pods", "-o", "wide"], None);
        return Err(format!(
            "{e}\n{pods:?}\nkubelet node-1:\n{}",
            k.kubelet_log("node-1", 30)
        ));
    }
    k.kubectl(
        &[
            "wait",
            "--for=condition=Ready",
            "node",
            "--all",
            "--timeout=120s",
        ],
        None,
    )?;

    // 2. Two pods on two nodes, a replaced pod.
    k.kubectl(&["apply", "-f", "-"], Some(&sleep_deployments()))?;
    for d in ["sleep-1", "sleep-2"] {
        k.kubectl(
            &[
                "rollout",
                "status",
                &format!("deploy/{d}"),
                "--timeout=120s",
            ],
            None,
        )?;
    }
    let (old_pod, old_ip) = running_pod(&k, "sleep-2")?;
    ping(&k, &old_ip, 2).map_err(|e| format!("sleep-1 -> sleep-2 (cross-node): {e}"))?;
    k.kubectl(
        &["delete", "pod", &old_pod, "--wait=true", "--timeout=90s"],
        None,
    )?;
    let mut new = None;
    wait_for(
        "the replacement of sleep-2",
        Duration::from_secs(90),
        || {
            new = running_pod(&k, "sleep-2")
                .ok()
                .filter(|(n, _)| *n != old_pod);
            new.is_some()
        },
    )?;
    let (_, new_ip) = new.ok_or("no replacement pod")?;
    if new_ip == old_ip {
        return Err(format!(
            "the replacement of sleep-2 got the old address {old_ip}"
        ));
    }
    ping(&k, &new_ip, 2).map_err(|e| format!("the replacement's {new_ip}: {e}"))?;
    if ping(&k, &old_ip, 2).is_ok() {
        return Err(format!("the deleted pod's address {old_ip} still answers"));
    }

    // 3. `rollout restart` under a continuous cross-node ping (5 per second).
    let lost = ping_across(&k, &new_ip, "rollout restart", || {
        k.kubectl(
            &["-n", "twill-system", "rollout", "restart", "ds/twill"],
            None,
        )?;
        rollout_status(&k)
    })?;
    if lost != 0 {
        return Err(format!("rollout restart lost {lost} ping replies"));
    }

    // 3b. The manifest's commented-out explicit API server address, uncommented: the
    //     agents then talk to the API server itself, not through the Service.
    let explicit = with_explicit_api_server(&manifest, API_SERVER)?;
    let lost = ping_across(&k, &new_ip, "switching to an explicit API server", || {
        k.kubectl(&["apply", "-f", "-"], Some(&explicit))?;
        rollout_status(&k)
    })?;
    if lost != 0 {
        return Err(format!(
            "switching the API server address lost {lost} ping replies"
        ));
    }
    let want = format!("https://{}:{}", API_SERVER.0, API_SERVER.1);
    for pod in agent_pods(&k)? {
        let status = k.kubectl(
            &[
                "-n",
                "twill-system",
                "exec",
                &pod,
                "--",
                "twill-agent",
                "status",
                "--json",
            ],
            None,
        )?;
        if !status.contains(&want) {
            return Err(format!("{pod} does not use {want}: {status}"));
        }
    }

    // 4. Uninstall: pods first (their bridge ports go with them), then the manifest
    //    (SIGTERM leaves the data path), then `twill-agent uninstall` on each node.
    let net_conf = work.path().join("net-conf.json");
    let conf = k.kubectl(
        &[
            "-n",
            "twill-system",
            "get",
            "configmap",
            "twill-config",
            "-o",
            "jsonpath={.data.net-conf\\.json}",
        ],
        None,
    )?;
    std::fs::write(&net_conf, conf).map_err(|e| format!("{}: {e}", net_conf.display()))?;
    k.kubectl(
        &["delete", "deploy", "sleep-1", "sleep-2", "--wait=true"],
        None,
    )?;
    wait_for("the sleep pods to be gone", Duration::from_secs(90), || {
        k.kubectl(&["get", "pods", "-o", "name"], None)
            .is_ok_and(|o| o.trim().is_empty())
    })?;
    k.kubectl(
        &["delete", "-f", "-", "--wait=true", "--timeout=120s"],
        Some(&manifest),
    )?;
    let cidrs = pod_cidrs(&k)?;
    for node in NODES {
        // SIGTERM left the data path in place (and so the checks after `uninstall` can
        // fail): device, bridge, routes, tables, CNI files, socket.
        let left = twill_leftovers(&k, node, &cidrs)?;
        let expected = ["link twill.1", "link twill0", "/run/twill/store.sock"];
        let routes = left.iter().filter(|l| l.starts_with("route ")).count();
        if expected.iter().any(|e| !left.iter().any(|l| l == e)) || routes < 2 {
            return Err(format!(
                "{node}: after kubectl delete, expected {expected:?} and 2 routes: {left:?}"
            ));
        }
        eprintln!("{node} before uninstall: {left:?}");
        let conf = net_conf.display().to_string();
        let kubeconfig = k.admin_kubeconfig().display().to_string();
        let argv = [
            agent.to_str().ok_or("agent path")?,
            "uninstall",
            "--conf",
            &conf,
            "--node-name",
            node,
            "--kubeconfig",
            &kubeconfig,
        ];
        let out = k.on_node_ok(node, &argv)?;
        eprintln!("{node}: twill-agent uninstall:\n{out}");
        let left = twill_leftovers(&k, node, &cidrs)?;
        if !left.is_empty() {
            return Err(format!("{node}: uninstall left {left:?}"));
        }
        let annotations = k.kubectl(
            &[
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.metadata.annotations}",
            ],
            None,
        )?;
        if annotations.contains("twill.io/") {
            return Err(format!("{node}: uninstall left annotations {annotations}"));
        }
        let (status, reason) = network_condition(&k, node)?;
        if (status.as_str(), reason.as_str()) != ("True", "TwillIsDown") {
            return Err(format!(
                "{node}: NetworkUnavailable is {status} ({reason}), not True (TwillIsDown)"
            ));
        }
    }
    Ok(())
}

/// `ping -c count` from sleep-1 to `ip`.
fn ping(k: &KubeletCluster, ip: &str, count: u32) -> Result<(), String> {
    let n = count.to_string();
    k.kubectl(
        &[
            "exec",
            "deploy/sleep-1",
            "--",
            "ping",
            "-c",
            &n,
            "-W",
            "2",
            ip,
        ],
        None,
    )
    .map(|_| ())
}

/// Runs `change` (which returns once the DaemonSet's rollout is done) while sleep-1
/// pings `ip` every 200 ms, then counts replies until 5 s after the rollout: the replies
/// missing between the first and the last one are lost. Every agent pod must have been
/// replaced.
fn ping_across(
    k: &KubeletCluster,
    ip: &str,
    what: &str,
    change: impl FnOnce() -> Result<(), String>,
) -> Result<u64, String> {
    let before = agent_pods(k)?;
    let ping = ContinuousPing::start(k, "sleep-1", ip)?;
    wait_for("the first ping replies", Duration::from_secs(20), || {
        ping.received() >= 5
    })?;
    let t = Instant::now();
    change()?;
    let done = Instant::now();
    wait_for(
        &format!("ping replies 5 s after {what}"),
        Duration::from_secs(30),
        || {
            ping.last_reply_at()
                .is_some_and(|at| at >= done + Duration::from_secs(5))
        },
    )?;
    let count = ping.stop()?;
    eprintln!("{what}: rollout done in {:.1?}; ping {count:?}", done - t);
    let after = agent_pods(k)?;
    if before.iter().any(|p| after.contains(p)) {
        return Err(format!(
            "{what} did not replace the agents: {before:?} -> {after:?}"
        ));
    }
    Ok(count.lost)
}

/// Waits for the DaemonSet's rollout.
fn rollout_status(k: &KubeletCluster) -> Result<(), String> {
    k.kubectl(
        &[
            "-n",
            "twill-system",
            "rollout",
            "status",
            "ds/twill",
            "--timeout=240s",
        ],
        None,
    )
    .map(|_| ())
}

fn agent_pods(k: &KubeletCluster) -> Result<Vec<String>, String> {
    let out = k.kubectl(&["-n", "twill-system", "get", "pods", "-o", "name"], None)?;
    Ok(out.lines().map(str::to_string).collect())
}
