//! The real two-node kubelet cluster of `tests/k8s-node` (installed into `/tmp/k8s-node`
//! by `make k8s-node`): per node a containerd 1.6 and a kubelet v1.20.2 in their own
//! network and mount namespaces, a scheduler and the control plane of `tests/k8s`.
//!
//! The harness uses fixed names (`/tmp/k8s-node`, namespaces `node-1`, `node-2`,
//! `k8sn-*`), so a [`KubeletCluster`] holds an exclusive lock on [`LOCK_FILE`] from before
//! it starts the cluster until after it has taken it down again (on drop, so also when a
//! test fails).

use crate::cluster::tail;
use crate::fixture::poll;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where `install.sh` puts the harness and where it keeps its state.
pub const HOME: &str = "/tmp/k8s-node";
/// Taken by every user of the harness for as long as its cluster is up.
pub const LOCK_FILE: &str = "/tmp/k8s-node.lock";
pub const NODES: [&str; 2] = ["node-1", "node-2"];
/// How long to wait for another user of the harness (a whole DaemonSet test takes ~3 min).
const LOCK_WAIT: Duration = Duration::from_secs(15 * 60);
/// kube-apiserver's own address (host, port), reachable from the nodes and covered by
/// its serving certificate (`tests/k8s/up.sh` with `K8S_ADDR`).
pub const API_SERVER: (&str, &str) = ("10.250.0.10", "6443");

pub struct KubeletCluster {
    home: PathBuf,
    /// Held (flock) until drop, after the cluster is down.
    _lock: File,
}

impl KubeletCluster {
    /// Takes the lock (waiting for another user), takes down a cluster a killed run left
    /// up, and starts a cluster whose nodes get their pod network from a DaemonSet
    /// (`CNI_HOST_PATHS=1`: per-node `/opt/cni/bin` and `/etc/cni/net.d`).
    pub fn up_for_daemonset() -> Result<KubeletCluster, String> {
        let home = PathBuf::from(HOME);
        if !home.join("cluster-up.sh").exists() || !home.join("bin/kubelet").exists() {
            return Err(format!(
                "the kubelet cluster harness is not installed in {HOME}: run `make k8s-node`"
            ));
        }
        // Opened close-on-exec (std's default): the cluster's daemons must not inherit
        // the lock, or they would hold it after this process is gone.
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(|e| format!("{LOCK_FILE}: {e}"))?;
        // SAFETY: flock on a descriptor this function owns.
        let take = || unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !take() {
            eprintln!("waiting for {LOCK_FILE}: another user of {HOME} holds it");
            wait_for(
                &format!("{LOCK_FILE} (held by another user of {HOME})"),
                LOCK_WAIT,
                take,
            )?;
        }
        let cluster = KubeletCluster { home, _lock: lock };
        if cluster.is_up() {
            eprintln!("a cluster is still up (a killed earlier run): taking it down");
            cluster.down()?;
        }
        let started = Instant::now();
        let out = Command::new(cluster.home.join("cluster-up.sh"))
            .env("CNI_HOST_PATHS", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running cluster-up.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cluster-up.sh failed:\n{}\n{}",
                tail(&String::from_utf8_lossy(&out.stdout), 20),
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            ));
        }
        eprintln!("cluster up in {:.1?}", started.elapsed());
        Ok(cluster)
    }

    /// Whether any part of a cluster is left: its process list or its namespaces.
    fn is_up(&self) -> bool {
        let pids = std::fs::metadata(self.home.join("state/pids")).is_ok_and(|m| m.len() > 0);
        pids || ["node-1", "node-2", "k8sn-cp", "k8sn-ul"]
            .iter()
            .any(|ns| Path::new("/run/netns").join(ns).exists())
    }

    fn down(&self) -> Result<(), String> {
        let out = Command::new(self.home.join("cluster-down.sh"))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running cluster-down.sh: {e}"))?;
        if !out.status.success() || self.is_up() {
            return Err(format!(
                "cluster-down.sh left the cluster up:\n{}",
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            ));
        }
        Ok(())
    }

    /// The admin kubeconfig; its server (10.250.0.10:6443) is reachable from the nodes.
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.home.join("cp/kubeconfig")
    }

    /// `kubectl` as admin (it runs inside the control plane's namespace), with `input`
    /// on stdin; the error carries stderr.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, String> {
        let out = self.kubectl_output(args, input)?;
        if !out.status.success() {
            return Err(format!(
                "kubectl {}: {}",
                args.join(" "),
                crate::kube::stderr_without_skew_warning(&out)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn kubectl_output(&self, args: &[&str], input: Option<&str>) -> Result<Output, String> {
        let mut child = self
            .kubectl_command(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting kubectl: {e}"))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            use std::io::Write;
            stdin
                .write_all(text.as_bytes())
                .map_err(|e| format!("kubectl stdin: {e}"))?;
        }
        child
            .wait_with_output()
            .map_err(|e| format!("kubectl: {e}"))
    }

    /// A `kubectl` command to spawn (for one that streams, such as a long `exec`).
    pub fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.home.join("kubectl"));
        cmd.args(["--request-timeout", "20s"]).args(args);
        cmd
    }

    /// The PID of `node`'s containerd, whose mount and network namespaces are the node's.
    pub fn containerd_pid(&self, node: &str) -> Result<u32, String> {
        let pids = std::fs::read_to_string(self.home.join("state/pids"))
            .map_err(|e| format!("{HOME}/state/pids: {e}"))?;
        pids.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 3 && f[0] == node && f[1] == "containerd").then(|| f[2].parse().ok())
            })
            .flatten()
            .next_back()
            .ok_or_else(|| format!("no containerd of {node} in {HOME}/state/pids"))
    }

    /// Runs `argv` on `node`: inside its mount and network namespaces.
    pub fn on_node(&self, node: &str, argv: &[&str]) -> Result<Output, String> {
        let pid = self.containerd_pid(node)?.to_string();
        Command::new("nsenter")
            .args(["--target", &pid, "--mount", "--net", "--"])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("nsenter {node} {}: {e}", argv.join(" ")))
    }

    /// `on_node` that must succeed; its stdout.
    pub fn on_node_ok(&self, node: &str, argv: &[&str]) -> Result<String, String> {
        let out = self.on_node(node, argv)?;
        if !out.status.success() {
            return Err(format!(
                "{node}: {} failed: {}{}",
                argv.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Imports a docker-archive into every node's containerd (namespace `k8s.io`, the
    /// kubelet's).
    pub fn import_image(&self, tarball: &Path) -> Result<(), String> {
        for node in NODES {
            let sock = self.home.join(node).join("containerd/containerd.sock");
            let out = Command::new("ctr")
                .arg("--address")
                .arg(&sock)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(tarball)
                .output()
                .map_err(|e| format!("ctr: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{node}: ctr images import failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(())
    }

    /// A node's kubelet log, for failure messages.
    pub fn kubelet_log(&self, node: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.home.join(node).join("logs/kubelet.log"))
            .unwrap_or_default();
        tail(&log, lines)
    }
}

impl Drop for KubeletCluster {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
    }
}

/// Polls `ready` every 250 ms (most polls here run kubectl) and says what did not
/// happen in time.
pub fn wait_for(what: &str, timeout: Duration, ready: impl FnMut() -> bool) -> Result<(), String> {
    if poll(timeout, Duration::from_millis(250), ready) {
        Ok(())
    } else {
        Err(format!("timed out after {timeout:?} waiting for {what}"))
    }
}
