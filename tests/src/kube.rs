//! A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager
//! v1.20.2, built by `prepare.sh`) started by `up.sh` inside a test namespace, so node
//! namespaces reach it over the underlay. Each control plane gets its own state
//! directory (`K8S_HOME`) whose `bin` points at the prepared binaries; `down.sh` runs on
//! drop.

use crate::fixture::TempDir;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Where `prepare.sh` puts the binaries (its default `K8S_HOME`), overridable with
/// `TWILL_K8S_HOME`.
pub fn prepared_home() -> PathBuf {
    std::env::var("TWILL_K8S_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/tmp/twill-k8s"))
}

/// The control-plane scripts: `TWILL_K8S_SCRIPTS`, else the environment's shared copy
/// (`../shared/k8s` beside the checkout), else the copy in `tests/k8s`.
pub fn scripts_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TWILL_K8S_SCRIPTS") {
        return PathBuf::from(d);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo.join("../shared/k8s");
    if shared.join("up.sh").exists() {
        return shared;
    }
    repo.join("tests/k8s")
}

/// The repository's Kubernetes manifests.
pub fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/kubernetes")
}

pub struct ControlPlane {
    home: TempDir,
    netns: String,
    pub addr: String,
    /// kube-apiserver's command line, kept while it is stopped.
    apiserver_argv: Option<Vec<String>>,
}

impl ControlPlane {
    /// Starts the control plane inside `netns`, serving on `addr:6443`, with node-ipam
    /// carving `cluster_cidr` into `/node_mask` podCIDRs.
    pub fn start_in(netns: &str, addr: &str, cluster_cidr: &str, node_mask: u8) -> ControlPlane {
        let bin = prepared_home().join("bin");
        assert!(
            bin.join("kube-apiserver").exists() && bin.join("kube-controller-manager").exists(),
            "the Kubernetes control plane is not built: run {}/prepare.sh (or `make k8s`)",
            scripts_dir().display()
        );
        let home = TempDir::new("k8s");
        std::os::unix::fs::symlink(&bin, home.path().join("bin")).expect("linking the binaries");
        let out = Command::new("bash")
            .arg(scripts_dir().join("up.sh"))
            .env("K8S_HOME", home.path())
            .env("K8S_NETNS", netns)
            .env("K8S_ADDR", addr)
            .env("K8S_CLUSTER_CIDR", cluster_cidr)
            .env("K8S_NODE_MASK", node_mask.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("running up.sh");
        let cp = ControlPlane {
            home,
            netns: netns.to_string(),
            addr: addr.to_string(),
            apiserver_argv: None,
        };
        assert!(
            out.status.success(),
            "up.sh failed: {}\n{}\napiserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            crate::cluster::tail(&cp.log("kube-apiserver"), 30)
        );
        cp
    }

    /// A control plane for `cluster` (built with `RegistryKind::Kubernetes`): started
    /// in its underlay namespace at the router's first address, the RBAC of
    /// `conf/kubernetes/twill.yaml` applied, the agents' kubeconfig (the `twill`
    /// ServiceAccount, not admin) written, and a Node object per node registered and
    /// given a podCIDR. Agents are not started.
    pub fn for_cluster(cluster: &crate::cluster::Cluster) -> Result<ControlPlane, String> {
        let cp = ControlPlane::start_in(
            cluster.underlay.ns.name(),
            &cluster.underlay.router_ip(0),
            &cluster.spec.network,
            cluster.spec.subnet_len,
        );
        cp.twill_agent_kubeconfig(&cluster.kubeconfig_path())?;
        for n in &cluster.nodes {
            cp.create_node(&n.name, &n.ip);
        }
        let assigned = crate::cluster::wait_until(Duration::from_secs(30), || {
            cluster.nodes.iter().all(|n| cp.pod_cidr(&n.name).is_some())
        });
        if !assigned {
            return Err(format!(
                "node-ipam did not assign podCIDRs:\n{}",
                crate::cluster::tail(&cp.log("kube-controller-manager"), 20)
            ));
        }
        Ok(cp)
    }

    /// A Node's `spec.podCIDR`.
    pub fn pod_cidr(&self, name: &str) -> Option<String> {
        self.node(name)?["spec"]["podCIDR"]
            .as_str()
            .map(str::to_string)
    }

    /// The network namespace the control plane serves in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The admin kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.home().join("kubeconfig")
    }

    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.home().join("logs").join(format!("{component}.log")))
            .unwrap_or_default()
    }

    /// `kubectl` as admin, run inside the control plane's namespace.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None)
    }

    /// `kubectl` as admin with `input` on stdin.
    pub fn kubectl_with(&self, args: &[&str], input: Option<&str>) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "kubectl", "--kubeconfig"])
            .arg(self.admin_kubeconfig())
            .args(["--request-timeout", "10s"])
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running kubectl");
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            let _ = stdin.write_all(text.as_bytes());
        }
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// `kubectl` that must succeed; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str], input: Option<&str>) -> String {
        let out = self.kubectl_with(args, input);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            stderr_without_skew_warning(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl` as admin; stdout, or an error naming the command and kubectl's words.
    pub fn kubectl_result(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let out = self.kubectl_with(args, input);
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        Err(format!(
            "kubectl {} failed: {}",
            args.join(" "),
            stderr_without_skew_warning(&out)
        ))
    }

    /// Creates Pod `namespace/name` bound to `node` as the API server holds it before the
    /// kubelet starts it: `labels`, and one container with `ports` (API JSON, may be
    /// empty).
    pub fn create_pod(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
        labels: &Value,
        ports: &Value,
    ) -> Result<(), String> {
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": namespace, "name": name, "labels": labels},
            "spec": {"nodeName": node,
                     "containers": [{"name": "c", "image": "busybox", "ports": ports}]},
        });
        self.kubectl_result(&["create", "-f", "-"], Some(&doc.to_string()))
            .map(drop)
    }

    /// Sets a Pod's IPs (and phase Running) through the status subresource, as the
    /// kubelet reports them after the runtime's ADD.
    pub fn set_pod_ips(&self, namespace: &str, name: &str, ips: &[&str]) -> Result<(), String> {
        let listed: Vec<Value> = ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        let status = serde_json::json!({"status": {
            "phase": "Running", "podIP": ips.first(), "podIPs": listed}});
        let patch = status.to_string();
        let args = [
            "-n",
            namespace,
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ];
        self.kubectl_result(&args, None).map(drop)
    }

    /// A Node as JSON, or `None` when it does not exist.
    pub fn node(&self, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Creates a Node as a kubelet would register it (no kubelet exists here).
    pub fn create_node(&self, name: &str, internal_ip: &str) {
        let doc = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "status": {"addresses": [
                {"type": "InternalIP", "address": internal_ip},
                {"type": "Hostname", "address": name},
            ]},
        });
        self.kubectl_ok(&["create", "-f", "-"], Some(&doc.to_string()));
    }

    /// The token of `namespace/service_account` (v1.20 creates a token Secret per
    /// ServiceAccount; waits up to 30 s for it).
    pub fn service_account_token(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<String, String> {
        let mut token = None;
        let found = crate::cluster::wait_until(Duration::from_secs(30), || {
            let out = self.kubectl(&["-n", namespace, "get", "secrets", "-o", "json"]);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            token = v["items"].as_array().and_then(|items| {
                items.iter().find_map(|s| {
                    let sa = &s["metadata"]["annotations"]["kubernetes.io/service-account.name"];
                    (s["type"] == "kubernetes.io/service-account-token" && sa == service_account)
                        .then(|| s["data"]["token"].as_str().map(str::to_string))
                        .flatten()
                })
            });
            token.is_some()
        });
        let token = token
            .filter(|_| found)
            .ok_or("no token Secret for the ServiceAccount after 30 s")?;
        let token = base64_decode(&token).ok_or("token is not base64")?;
        String::from_utf8(token).map_err(|_| "token is not text".to_string())
    }

    /// The cluster CA (base64 PEM, as in a kubeconfig).
    fn ca_data(&self) -> Result<String, String> {
        let admin = std::fs::read_to_string(self.admin_kubeconfig()).map_err(|e| e.to_string())?;
        Ok(admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
            .ok_or("admin kubeconfig has no CA")?
            .trim()
            .to_string())
    }

    /// The agent's ServiceAccount and RBAC as `conf/kubernetes/twill.yaml` declares
    /// them, applied, and a kubeconfig at `path` that logs in as that ServiceAccount:
    /// what a test's agent gets, so that a missing permission fails the test.
    pub fn twill_agent_kubeconfig(&self, path: &Path) -> Result<(), String> {
        let manifest = std::fs::read_to_string(manifests_dir().join("twill.yaml"))
            .map_err(|e| format!("conf/kubernetes/twill.yaml: {e}"))?;
        let kinds = [
            "Namespace",
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
        ];
        let rbac = yaml_documents(&manifest, &kinds);
        self.kubectl_ok(&["apply", "-f", "-"], Some(&rbac));
        self.service_account_kubeconfig("twill-system", "twill", path)
    }

    /// A kubeconfig for `namespace/service_account`, authenticated by its token.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
        path: &Path,
    ) -> Result<(), String> {
        let token = self.service_account_token(namespace, service_account)?;
        let ca = self.ca_data()?;
        let kc = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://{}:6443\n    certificate-authority-data: {ca}\nusers:\n- name: {service_account}\n  user:\n    token: {token}\ncontexts:\n- name: sa\n  context: {{cluster: test, user: {service_account}}}\ncurrent-context: sa\n",
            self.addr,
        );
        std::fs::write(path, kc).map_err(|e| e.to_string())
    }

    /// What a pod of `namespace/service_account` finds in
    /// `/var/run/secrets/kubernetes.io/serviceaccount` (token, ca.crt, namespace),
    /// written into `dir`.
    pub fn service_account_mount(
        &self,
        namespace: &str,
        service_account: &str,
        dir: &Path,
    ) -> Result<(), String> {
        let token = self.service_account_token(namespace, service_account)?;
        let ca = base64_decode(&self.ca_data()?).ok_or("CA is not base64")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        for (name, bytes) in [
            ("token", token.as_bytes()),
            ("ca.crt", &ca[..]),
            ("namespace", namespace.as_bytes()),
        ] {
            std::fs::write(dir.join(name), bytes).map_err(|e| format!("{name}: {e}"))?;
        }
        Ok(())
    }

    fn pid_of(&self, component: &str) -> Option<i32> {
        let pids = std::fs::read_to_string(self.home().join("pids")).ok()?;
        pids.lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(name, _)| *name == component)
            .filter_map(|(_, pid)| pid.trim().parse().ok())
            .next_back()
    }

    /// Sends `signal` to a component (e.g. SIGSTOP/SIGCONT to kube-controller-manager).
    pub fn signal(&self, component: &str, signal: i32) {
        let pid = self
            .pid_of(component)
            .unwrap_or_else(|| panic!("{component} is not running"));
        // SAFETY: a signal to a process this control plane started.
        unsafe { libc::kill(pid, signal) };
    }

    /// Kills kube-apiserver (etcd keeps the cluster's state) and waits for it to exit.
    pub fn stop_apiserver(&mut self) {
        let pid = self.pid_of("kube-apiserver").expect("kube-apiserver pid");
        let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
            .expect("kube-apiserver's command line")
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // SAFETY: a process this control plane started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let gone = crate::cluster::wait_until(Duration::from_secs(10), || {
            !Path::new(&format!("/proc/{pid}/cmdline")).exists()
                || std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
        });
        assert!(gone, "kube-apiserver did not exit");
        self.apiserver_argv = Some(argv);
    }

    /// Starts kube-apiserver again with the same command line and waits until it is
    /// ready.
    pub fn start_apiserver(&mut self) {
        let argv = self
            .apiserver_argv
            .take()
            .expect("start_apiserver after stop_apiserver");
        // Detached like up.sh starts it (its own session, not our child), so down.sh
        // can stop it through the pid file.
        let log = self.home().join("logs/kube-apiserver.log");
        let out = Command::new("bash")
            .arg("-c")
            .arg(r#"log=$1; shift; setsid "$@" >>"$log" 2>&1 </dev/null & echo $!"#)
            .arg("bash")
            .arg(&log)
            .args(["ip", "netns", "exec", &self.netns])
            .args(&argv)
            .output()
            .expect("restarting kube-apiserver");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut pids = std::fs::OpenOptions::new()
            .append(true)
            .open(self.home().join("pids"))
            .expect("pid file");
        let _ = writeln!(pids, "kube-apiserver {pid}");
        let ready = crate::cluster::wait_until(Duration::from_secs(90), || {
            self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        assert!(
            ready,
            "kube-apiserver not ready after a restart:\n{}",
            crate::cluster::tail(&self.log("kube-apiserver"), 20)
        );
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(scripts_dir().join("down.sh"))
            .env("K8S_HOME", self.home())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// kubectl's stderr without the version-skew warning this old server causes.
pub fn stderr_without_skew_warning(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("Warning: version difference"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The documents of a multi-document YAML file whose `kind:` is one of `kinds`.
pub fn yaml_documents(text: &str, kinds: &[&str]) -> String {
    text.split("\n---")
        .filter(|doc| {
            doc.lines()
                .filter_map(|l| l.strip_prefix("kind: "))
                .any(|k| kinds.contains(&k.trim()))
        })
        .collect::<Vec<_>>()
        .join("\n---")
}

/// Standard base64 (Secret data), without padding checks.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
