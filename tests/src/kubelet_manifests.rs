//! The manifests the DaemonSet test applies on the kubelet cluster: the repository's
//! `conf/kubernetes/twill.yaml` with only what the test must change, and the seeds'
//! sleep Deployments.

use crate::kube::manifests_dir;
use crate::kubelet_cluster::NODES;

/// The image the manifest names.
pub const IMAGE: &str = "ghcr.io/twill-net/twill:0.1.0";

/// `conf/kubernetes/twill.yaml` with `imagePullPolicy: Never` under each of its images.
pub fn test_manifest() -> Result<String, String> {
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

/// `manifest` with the DaemonSet's commented-out `KUBERNETES_SERVICE_HOST`/`PORT`
/// uncommented and set to `(host, port)`.
pub fn with_explicit_api_server(
    manifest: &str,
    (host, port): (&str, &str),
) -> Result<String, String> {
    let mut out = String::new();
    let mut lines = manifest.lines();
    let mut set = 0;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let value = match trimmed {
            "# - name: KUBERNETES_SERVICE_HOST" => host,
            "# - name: KUBERNETES_SERVICE_PORT" => port,
            _ => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        let name = trimmed.trim_start_matches("# ");
        match lines.next().map(str::trim_start) {
            Some(v) if v.starts_with("#   value: ") => {}
            other => return Err(format!("after {name:?} the manifest has {other:?}")),
        }
        out.push_str(&format!("{indent}{name}\n{indent}  value: \"{value}\"\n"));
        set += 1;
    }
    if set != 2 {
        return Err(format!(
            "the manifest has {set} commented-out KUBERNETES_SERVICE_* entries, not 2"
        ));
    }
    Ok(out)
}

/// Deployments `sleep-1` and `sleep-2` (busybox, `sleep 3600`) pinned to node-1 and node-2.
pub fn sleep_deployments() -> String {
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
