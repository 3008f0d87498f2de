//! The API writes of `policy-latency-bench`: curl with the admin kubeconfig's client
//! certificate inside the control plane's namespace, so a write costs one short process
//! (~20 ms here) rather than a kubectl (~100-200 ms).

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use twill_tests::kube::ControlPlane;

/// Writes to the API server with curl inside the control plane's namespace, as admin.
pub struct Api {
    netns: String,
    base: String,
    pki: std::path::PathBuf,
}

impl Api {
    pub fn new(cp: &ControlPlane, netns: &str) -> Api {
        Api {
            netns: netns.to_string(),
            base: format!("https://{}:6443", cp.addr),
            pki: cp.home().join("pki"),
        }
    }

    /// `method` on `path` with a JSON body; the response, or an error with its text.
    fn call(&self, method: &str, path: &str, content_type: &str, body: &Value) -> Result<Value> {
        let pki = |f: &str| self.pki.join(f).display().to_string();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sS",
                "--fail-with-body",
            ])
            .args(["--cacert", &pki("ca.crt"), "--cert", &pki("admin.crt")])
            .args(["--key", &pki("admin.key"), "-X", method])
            .args(["-H", &format!("Content-Type: {content_type}")])
            .args(["--data-binary", &body.to_string()])
            .arg(format!("{}{path}", self.base))
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        if !out.status.success() {
            bail!(
                "{method} {path}: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("{method} {path}: not JSON"))
    }

    /// GET `path` (the body is ignored).
    pub fn get(&self, path: &str) -> Result<Value> {
        self.call("GET", path, "application/json", &Value::Null)
    }

    fn create(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, "application/json", body)
    }

    pub fn merge(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("PATCH", path, "application/merge-patch+json", body)
    }

    pub fn namespace(&self, name: &str, labels: Value) -> Result<()> {
        let doc = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}});
        self.create("/api/v1/namespaces", &doc).map(drop)
    }

    /// A Pod bound to `node` with `labels`, then its IP through the status subresource.
    pub fn pod(&self, ns: &str, name: &str, node: &str, labels: Value, ip: &str) -> Result<()> {
        let doc = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}});
        let path = format!("/api/v1/namespaces/{ns}/pods");
        // A new namespace's default ServiceAccount comes a moment later; the server
        // says to retry until it has.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.create(&path, &doc) {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline && e.to_string().contains("retry after") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
        self.pod_ip(ns, name, ip)
    }

    pub fn pod_ip(&self, ns: &str, name: &str, ip: &str) -> Result<()> {
        let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}});
        self.merge(
            &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
            &status,
        )
        .map(drop)
    }

    /// A Node with its status (a kubelet registers Nodes with status in the create).
    pub fn node(&self, doc: &Value) -> Result<()> {
        self.create("/api/v1/nodes", doc).map(drop)
    }

    pub fn twill_node(&self, doc: &Value) -> Result<()> {
        self.create("/apis/twill.io/v1/twillnodes", doc).map(drop)
    }

    pub fn policy(&self, ns: &str, spec: Value) -> Result<()> {
        let path = format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies");
        self.create(&path, &spec).map(drop)
    }
}

pub fn policy_doc(ns: &str, name: &str, selector: Value, ingress: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"podSelector": selector, "policyTypes": ["Ingress"], "ingress": ingress}})
}
