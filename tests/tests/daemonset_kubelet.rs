//! The operator's path on a real cluster: the DaemonSet of `conf/kubernetes/twill.yaml`
//! on two kubelet + containerd nodes (`tests/k8s-node`, `make k8s-node`), with an image
//! of the binaries this workspace just built. The seeds' commands: pods on two nodes
//! ping each other, a replaced pod gets a new address, `rollout restart` loses no ping,
//! and `kubectl delete -f` plus `twill-agent uninstall` leave nothing of Twill behind.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twill_tests::kube::manifests_dir;
use twill_tests::kubelet_checks::{network_condition, pod_cidrs, running_pod, twill_leftovers};
use twill_tests::kubelet_cluster::{wait_for, KubeletCluster, NODES};
use twill_tests::{require_root, test_image, workspace_bin, TempDir};

/// The image the manifest names.
const IMAGE: &str = "ghcr.io/twill-net/twill:0.1.0";

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
    let lost = ping_across_restart(&k, &new_ip)?;
    if lost != 0 {
        return Err(format!("rollout restart lost {lost} ping replies"));
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
        let left = twill_leftovers(&k, node, &cidrs)?;
        // Else the checks after `uninstall` could not fail.
        if left.len() < 5 {
            return Err(format!(
                "{node}: kubectl delete removed the data path: {left:?}"
            ));
        }
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

/// `conf/kubernetes/twill.yaml` with `imagePullPolicy: Never` under each of its images.
fn test_manifest() -> Result<String, String> {
    let path = manifests_dir().join("twill.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    let mut images = 0;
    for line in text.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim() == format!("image: {IMAGE}") {
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!("{indent}imagePullPolicy: Never\n"));
            images += 1;
        }
    }
    if images != 2 {
        return Err(format!(
            "{} names {IMAGE} {images} times, not twice",
            path.display()
        ));
    }
    Ok(out)
}

/// Deployments `sleep-1` and `sleep-2` (busybox, `sleep 3600`) pinned to node-1 and node-2.
fn sleep_deployments() -> String {
    let mut yaml = String::new();
    for (i, node) in NODES.iter().enumerate() {
        let name = format!("sleep-{}", i + 1);
        yaml.push_str(&format!(
            "---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      terminationGracePeriodSeconds: 1
      containers:
        - name: sleep
          image: busybox:local
          imagePullPolicy: Never
          command: [sleep, \"3600\"]
"
        ));
    }
    yaml
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

/// Restarts the DaemonSet while sleep-1 pings `ip` every 200 ms; counts the replies
/// missing between the first and the last one received, the last one coming at least 5 s
/// after the rollout finished.
fn ping_across_restart(k: &KubeletCluster, ip: &str) -> Result<u64, String> {
    let before = agent_pods(k)?;
    let mut pinger = k
        .kubectl_command(&[
            "exec",
            "deploy/sleep-1",
            "--",
            "ping",
            "-i",
            "0.2",
            "-w",
            "600",
            ip,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("kubectl exec ping: {e}"))?;
    let replies: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
    let stdout = pinger.stdout.take().ok_or("ping has no stdout")?;
    let sink = replies.clone();
    let reader = std::thread::spawn(move || {
        // "64 bytes from 10.244.1.3: seq=12 ttl=63 time=0.180 ms"
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let seq = line.split("seq=").nth(1).and_then(|s| s.split(' ').next());
            if let (Some(seq), Ok(mut r)) = (seq.and_then(|s| s.parse().ok()), sink.lock()) {
                r.push((Instant::now(), seq));
            }
        }
    });
    let count = || replies.lock().map(|r| r.len()).unwrap_or(0);
    let result = (|| {
        wait_for("the first ping replies", Duration::from_secs(20), || {
            count() >= 5
        })?;
        k.kubectl(
            &["-n", "twill-system", "rollout", "restart", "ds/twill"],
            None,
        )?;
        let t = Instant::now();
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
        )?;
        let done = Instant::now();
        eprintln!("rollout restart done in {:.1?}", done - t);
        let last_after = |d: Duration| {
            replies
                .lock()
                .is_ok_and(|r| r.last().is_some_and(|(at, _)| *at >= done + d))
        };
        wait_for(
            "ping replies 5 s after the rollout",
            Duration::from_secs(30),
            || last_after(Duration::from_secs(5)),
        )
    })();
    let _ = pinger.kill();
    let _ = pinger.wait();
    let _ = reader.join();
    result?;
    let after = agent_pods(k)?;
    if before.iter().any(|p| after.contains(p)) {
        return Err(format!(
            "the rollout did not replace the agents: {before:?} -> {after:?}"
        ));
    }
    let r = replies.lock().map_err(|_| "ping replies poisoned")?;
    let seqs: std::collections::BTreeSet<u64> = r.iter().map(|(_, s)| *s).collect();
    let (first, last) = match (seqs.first(), seqs.last()) {
        (Some(f), Some(l)) => (*f, *l),
        _ => return Err("no ping replies".into()),
    };
    let lost = (last - first + 1) - seqs.len() as u64;
    eprintln!(
        "ping across rollout restart: {} replies (seq {first}..={last}), {lost} lost",
        seqs.len()
    );
    Ok(lost)
}

fn agent_pods(k: &KubeletCluster) -> Result<Vec<String>, String> {
    let out = k.kubectl(&["-n", "twill-system", "get", "pods", "-o", "name"], None)?;
    Ok(out.lines().map(str::to_string).collect())
}
