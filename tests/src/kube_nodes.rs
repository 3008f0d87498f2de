//! Node objects of realistic weight, for `kube-registry-bench` and the registry's memory
//! test: what a kubelet on a cloud VM registers (labels, annotations, addresses, capacity, conditions, node info,
//! 40 images in `status.images`) plus Twill's annotations, about 12 KB of JSON before
//! the API server adds its managed fields.

use crate::kube::ControlPlane;
use serde_json::{json, Value};
use std::process::{Command, Stdio};

/// Peer `i`: podCIDR `10.<1 + i/256>.<i%256>.0/24`, tunnel endpoint `172.16.<i/250>.<i%250+1>`.
pub fn pod_cidr(i: usize) -> String {
    format!("10.{}.{}.0/24", 1 + i / 256, i % 256)
}

pub fn name(i: usize) -> String {
    format!("peer-{i:05}")
}

pub fn heavy_node(i: usize) -> Value {
    let name = name(i);
    let cidr = pod_cidr(i);
    let ip = format!("172.16.{}.{}", i / 250, i % 250 + 1);
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": "2026-11-24T10:00:00Z",
               "lastTransitionTime": "2026-11-20T08:00:00Z"})
    };
    let images: Vec<Value> = (0..40)
        .map(|k| {
            let repo = format!("registry.example.com/team-{}/service-{k}", k % 7);
            json!({"names": [
                format!("{repo}@sha256:{:064x}", (i as u128 + 1) * 7919 + k as u128),
                format!("{repo}:v1.{k}.{}", i % 10),
            ], "sizeBytes": 20_000_000 + k * 1_234_567})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": "m5.2xlarge",
                "topology.kubernetes.io/region": "eu-west-1",
                "topology.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
                "failure-domain.beta.kubernetes.io/region": "eu-west-1",
                "failure-domain.beta.kubernetes.io/zone": format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
                "node-pool": format!("pool-{}", i % 8),
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "/run/containerd/containerd.sock",
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "twill.io/public-ip": ip,
                "twill.io/vtep-mac": format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", (i >> 24) & 0xff, (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff),
                "twill.io/backend-type": "vxlan",
            },
        },
        "spec": {
            "podCIDR": cidr, "podCIDRs": [cidr],
            "providerID": format!("aws:///eu-west-1a/i-{:017x}", i as u64 * 104729),
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
                {"type": "InternalDNS", "address": format!("{name}.eu-west-1.compute.internal")},
            ],
            "capacity": {"cpu": "8", "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0",
                         "hugepages-2Mi": "0", "memory": "32408180Ki", "pods": "110"},
            "allocatable": {"cpu": "7910m", "ephemeral-storage": "95551679124", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "31391348Ki", "pods": "110"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status. AppArmor enabled"),
                condition("NetworkUnavailable", "False", "TwillIsUp", "Twill programmed this node's pod network"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", i as u128 * 15485863),
                "systemUUID": format!("ec2{:029x}", i as u128 * 32452843),
                "bootID": format!("{:08x}-1111-2222-3333-{:012x}", i, i * 7),
                "kernelVersion": "6.1.0-27-cloud-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)",
                "containerRuntimeVersion": "containerd://1.6.20", "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
            },
            "images": images,
        },
    })
}

/// The TwillNode that peer `i`'s agent would publish with `records: twillnodes`
/// (no owner reference: the bench never deletes its Nodes).
pub fn twill_node(i: usize) -> Value {
    let node = heavy_node(i);
    let a = &node["metadata"]["annotations"];
    json!({
        "apiVersion": "twill.io/v1", "kind": "TwillNode",
        "metadata": {"name": name(i)},
        "spec": {"podCIDRs": [pod_cidr(i)], "publicIP": a["twill.io/public-ip"],
                 "vtepMAC": a["twill.io/vtep-mac"], "backend": "vxlan"},
    })
}

/// A heartbeat-like status change: new heartbeat times and a changed image list.
pub fn status_patch(round: usize) -> Value {
    let t = format!("2026-11-24T11:{:02}:{:02}Z", round / 60 % 60, round % 60);
    let cond = |ty: &str| json!({"type": ty, "lastHeartbeatTime": t});
    json!({"status": {
        "conditions": [cond("MemoryPressure"), cond("DiskPressure"), cond("PIDPressure"), cond("Ready")],
        "images": (0..40).map(|k| json!({
            "names": [format!("registry.example.com/churn/service-{k}:r{round}")],
            "sizeBytes": 10_000_000 + k * 1000 + round,
        })).collect::<Vec<_>>(),
    }})
}

/// Creates Nodes `range` ([`heavy_node`]) with kubectl, a List of 250 per call.
pub fn create_nodes(cp: &ControlPlane, range: std::ops::Range<usize>) -> Result<(), String> {
    create_objects(cp, range, heavy_node)
}

/// Creates the TwillNodes ([`twill_node`]) of peers `range`, as [`create_nodes`].
pub fn create_twill_nodes(cp: &ControlPlane, range: std::ops::Range<usize>) -> Result<(), String> {
    create_objects(cp, range, twill_node)
}

fn create_objects(
    cp: &ControlPlane,
    range: std::ops::Range<usize>,
    object: fn(usize) -> Value,
) -> Result<(), String> {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(250) {
        let list = json!({"apiVersion": "v1", "kind": "List",
            "items": chunk.iter().map(|&i| object(i)).collect::<Vec<_>>()});
        cp.kubectl_result(&["create", "-f", "-"], Some(&list.to_string()))?;
    }
    Ok(())
}

/// One node whose agent uses the kubernetes registry, with room in its cluster network
/// (10.0.0.0/8) for the peers' /24s beside node-ipam's own, and the agent's default
/// resync.
pub fn one_node_spec() -> crate::cluster::ClusterSpec {
    crate::cluster::ClusterSpec {
        nodes: 1,
        registry: crate::cluster::RegistryKind::Kubernetes,
        network: "10.0.0.0/8".into(),
        resync_secs: 30.0,
        ..crate::cluster::ClusterSpec::default()
    }
}

/// Merge-patches the status of every Node in `names` with `body`, in one curl over one
/// connection (admin client certificate): a kubelet heartbeat round in a second or
/// two, where a kubectl per Node would take a minute.
pub fn patch_node_status(cp: &ControlPlane, names: &[String], body: &Value) -> Result<(), String> {
    let dir = crate::fixture::TempDir::new("status-patch");
    let file = dir.path().join("patch.json");
    std::fs::write(&file, body.to_string()).map_err(|e| format!("writing the patch: {e}"))?;
    let pki = |f: &str| cp.home().join("pki").join(f).display().to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", cp.netns(), "curl", "-sS", "--fail"])
        .args(["--cacert", &pki("ca.crt"), "--cert", &pki("admin.crt")])
        .args(["--key", &pki("admin.key"), "-X", "PATCH"])
        .args(["-H", "Content-Type: application/merge-patch+json"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(
            names
                .iter()
                .map(|n| format!("https://{}:6443/api/v1/nodes/{n}/status", cp.addr)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running curl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "patching Node status: curl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}
