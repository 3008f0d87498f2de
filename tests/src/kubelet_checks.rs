//! What the DaemonSet test reads off the kubelet cluster: pods, Nodes, and what of Twill
//! is left in a node's namespaces.

use crate::kubelet_cluster::KubeletCluster;
use serde_json::Value;

/// The one running, not terminating pod of Deployment `app`: its name and address.
pub fn running_pod(k: &KubeletCluster, app: &str) -> Result<(String, String), String> {
    let out = k.kubectl(
        &["get", "pods", "-l", &format!("app={app}"), "-o", "json"],
        None,
    )?;
    let list: Value = serde_json::from_str(&out).map_err(|e| format!("pod list: {e}"))?;
    let running: Vec<(String, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .filter_map(|p| {
            let name = p["metadata"]["name"].as_str()?;
            let ip = p["status"]["podIP"].as_str()?;
            Some((name.to_string(), ip.to_string()))
        })
        .collect();
    match running.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(format!("{app}: {} running pods", other.len())),
    }
}

/// Every Node's podCIDR.
pub fn pod_cidrs(k: &KubeletCluster) -> Result<Vec<String>, String> {
    let out = k.kubectl(
        &["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"],
        None,
    )?;
    Ok(out.split_whitespace().map(str::to_string).collect())
}

/// What of Twill is on `node`: links named twill*, nftables tables, routes to pod
/// subnets, the conflist, the plugin, the subnet file and the store socket.
pub fn twill_leftovers(
    k: &KubeletCluster,
    node: &str,
    cidrs: &[String],
) -> Result<Vec<String>, String> {
    let mut left = Vec::new();
    for line in k.on_node_ok(node, &["ip", "-o", "link", "show"])?.lines() {
        let name = line
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with("twill") {
            left.push(format!("link {name}"));
        }
    }
    for line in k.on_node_ok(node, &["nft", "list", "tables"])?.lines() {
        if line.contains("twill") {
            left.push(line.to_string());
        }
    }
    for line in k.on_node_ok(node, &["ip", "route", "show"])?.lines() {
        if cidrs.iter().any(|c| line.starts_with(&format!("{c} "))) {
            left.push(format!("route {line}"));
        }
    }
    for path in [
        "/etc/cni/net.d/10-twill.conflist",
        "/opt/cni/bin/twill",
        "/run/twill/subnet.json",
        "/run/twill/store.sock",
    ] {
        if k.on_node(node, &["test", "-e", path])?.status.success() {
            left.push(path.to_string());
        }
    }
    Ok(left)
}

/// A Node's NetworkUnavailable condition: status and reason.
pub fn network_condition(k: &KubeletCluster, node: &str) -> Result<(String, String), String> {
    let out = k.kubectl(&["get", "node", node, "-o", "json"], None)?;
    let n: Value = serde_json::from_str(&out).map_err(|e| format!("Node {node}: {e}"))?;
    n["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "NetworkUnavailable")
        .map(|c| {
            let s = |f: &str| c[f].as_str().unwrap_or("").to_string();
            (s("status"), s("reason"))
        })
        .ok_or_else(|| format!("Node {node} has no NetworkUnavailable condition"))
}
