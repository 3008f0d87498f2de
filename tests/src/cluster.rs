//! A whole cluster on one machine: an underlay namespace (bridges per segment, and the
//! router between them, which also stands for "the outside"), node namespaces each with
//! a `twill-agent`, and pods wired by the real `twill` plugin with the conflist the
//! agent wrote. The lab, the end-to-end tests and the benchmarks all build on this, so
//! a scenario is written once.
//!
//! Addresses: segment `s` is `192.168.<s+1>.0/24` with the router at `.254`; node `i`
//! gets `192.168.<s+1>.<i+1>`. Nodes are spread over segments round-robin.

mod nodes;
mod ping;

pub use nodes::{ClusterNode, NodeFiles, Underlay};
pub use ping::{ping_matrix, ping_rtt, unanswered};

use crate::cni::{CniCall, Plugin};
use crate::fixture::{poll, TempDir};
use crate::netns::{next_id, Netns};
use crate::require_root;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How nodes find each other.
#[derive(Debug, Clone)]
pub enum RegistryKind {
    /// A directory under the cluster's temp dir.
    File,
    /// An etcd at this endpoint (reachable from every node namespace: loopback does not
    /// work across namespaces, so it must listen on an underlay address).
    Etcd { endpoint: String },
    /// Node objects of a Kubernetes API server, through the kubeconfig at
    /// [`Cluster::kubeconfig_path`] (written by the test before the agents start).
    Kubernetes,
    /// Like `Kubernetes`, with `records: twillnodes`: each agent publishes a TwillNode
    /// and watches those instead of every Node.
    KubernetesTwillNodes,
}

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub segments: usize,
    pub network: String,
    pub subnet_len: u8,
    pub direct_routing: bool,
    pub registry: RegistryKind,
    /// Seconds between the agents' full resyncs.
    pub resync_secs: f64,
    pub ip_masq: bool,
    /// `backend.checksumOffload`; `None` leaves the key out (the agent's default).
    pub checksum_offload: Option<bool>,
    /// Underlay MTU.
    pub mtu: u32,
    /// Agents die with the thread that started them (PR_SET_PDEATHSIG), so a killed
    /// test leaves no orphan; the lab's `--keep` turns this off.
    pub agents_die_with_parent: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            segments: 1,
            network: "10.244.0.0/16".into(),
            subnet_len: 24,
            direct_routing: false,
            registry: RegistryKind::File,
            resync_secs: 2.0,
            ip_masq: true,
            checksum_offload: None,
            mtu: 1500,
            agents_die_with_parent: true,
        }
    }
}

impl ClusterSpec {
    /// The default spec with `nodes` nodes.
    pub fn with_nodes(nodes: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            ..ClusterSpec::default()
        }
    }
}

pub struct Cluster {
    pub spec: ClusterSpec,
    pub dir: TempDir,
    pub conf_path: PathBuf,
    pub nodes: Vec<ClusterNode>,
    // Dropped last: nodes' veths hang off its bridges.
    pub underlay: Underlay,
}

/// A pod made by the plugin on one node.
pub struct ClusterPod {
    pub name: String,
    pub node: usize,
    pub ns: Netns,
    pub id: String,
    pub ip: String,
    pub conf: Value,
}

impl Cluster {
    /// Builds the underlay and the nodes; agents are not started yet.
    pub fn new(spec: ClusterSpec) -> Cluster {
        require_root();
        let dir = TempDir::new("cluster");
        let underlay = Underlay::new(spec.segments.max(1), spec.mtu);
        let registry = match &spec.registry {
            RegistryKind::File => json!({"kind": "file", "dir": dir.path().join("registry")}),
            RegistryKind::Etcd { endpoint } => {
                json!({"kind": "etcd", "endpoints": [endpoint], "prefix": format!("/twill-test-{}", next_id()), "leaseTtl": 5})
            }
            RegistryKind::Kubernetes => {
                json!({"kind": "kubernetes", "kubeconfig": dir.path().join("kubeconfig")})
            }
            RegistryKind::KubernetesTwillNodes => {
                json!({"kind": "kubernetes", "kubeconfig": dir.path().join("kubeconfig"),
                       "records": "twillnodes"})
            }
        };
        let mut backend = json!({"type": "vxlan", "directRouting": if spec.direct_routing { "auto" } else { "never" }});
        if let Some(on) = spec.checksum_offload {
            backend["checksumOffload"] = json!(on);
        }
        let conf = json!({
            "network": spec.network,
            "subnetLen": spec.subnet_len,
            "backend": backend,
            "ipMasq": spec.ip_masq,
            "registry": registry,
        });
        let conf_path = dir.path().join("net-conf.json");
        std::fs::write(&conf_path, serde_json::to_vec_pretty(&conf).unwrap()).unwrap();
        let mut c = Cluster {
            spec,
            dir,
            conf_path,
            nodes: Vec::new(),
            underlay,
        };
        for _ in 0..c.spec.nodes {
            c.add_node();
        }
        c
    }

    /// A cluster with every agent started and ready; panics with the agents' status and
    /// logs when they are not ready within 30 s.
    pub fn up(spec: ClusterSpec) -> Cluster {
        let mut c = Cluster::new(spec);
        c.start_all();
        c.expect_ready(Duration::from_secs(30));
        c
    }

    /// Adds a node namespace wired to the underlay (no agent yet); returns its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let segment = i % self.underlay.segments;
        let name = format!("node-{}", i + 1);
        let ns = Netns::new(&format!("n{}", i + 1));
        let ip = format!("192.168.{}.{}", segment + 1, i + 1);
        let host_end = format!("ul{}n{}", segment, i + 1);
        let mtu = self.spec.mtu.to_string();
        // The node end is created in the node namespace, then the other end is moved
        // into the underlay: names never meet the root namespace's.
        ns.ip(&[
            "link", "add", "eth0", "mtu", &mtu, "type", "veth", "peer", "name", &host_end, "mtu",
            &mtu,
        ]);
        ns.ip(&["link", "set", &host_end, "netns", self.underlay.ns.name()]);
        self.underlay.ns.ip(&[
            "link",
            "set",
            &host_end,
            "master",
            &format!("ul{segment}"),
            "up",
        ]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.underlay.router_ip(segment),
        ]);
        let dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        self.nodes.push(ClusterNode {
            name,
            ns,
            ip,
            segment,
            files: NodeFiles::under(&dir),
            dir,
            agent: None,
        });
        i
    }

    /// One pod per node, `sleep-1` on the first; panics when the plugin fails.
    pub fn pod_on_each_node(&self) -> Vec<ClusterPod> {
        (0..self.nodes.len())
            .map(|i| {
                self.add_pod(i, &format!("sleep-{}", i + 1))
                    .unwrap_or_else(|e| panic!("pod on {}: {e}", self.nodes[i].name))
            })
            .collect()
    }

    /// `ip netns exec <node> twill-agent [sub] <node's flags>`.
    pub fn agent_command(&self, i: usize, sub: Option<&str>) -> Command {
        let node = &self.nodes[i];
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node.ns.name()])
            .arg(crate::workspace_bin("twill-agent"));
        if let Some(sub) = sub {
            cmd.arg(sub);
        }
        cmd.arg("--conf")
            .arg(&self.conf_path)
            .args(["--node-name", &node.name]);
        for (flag, path) in node.files.agent_args() {
            cmd.arg(flag).arg(path);
        }
        cmd.args(["--listen", "127.0.0.1:9473"])
            .args(["--resync", &self.spec.resync_secs.to_string()]);
        cmd
    }

    /// Starts (or restarts) node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) {
        let cmd = self.agent_command(i, None);
        self.spawn_agent(i, cmd);
    }

    /// Starts node `i`'s agent the way the DaemonSet runs it: the registry is
    /// `{"kind": "kubernetes"}` with no kubeconfig, so the agent uses the in-cluster
    /// service account: `KUBERNETES_SERVICE_HOST`/`_PORT` and the files of
    /// `service_account_dir` (token, ca.crt, namespace) at
    /// `/var/run/secrets/kubernetes.io/serviceaccount`, mounted in a private mount
    /// namespace (nothing changes outside it).
    pub fn start_agent_as_pod(
        &mut self,
        i: usize,
        service_account_dir: &Path,
        api_host: &str,
        api_port: u16,
    ) {
        let mut conf: Value =
            serde_json::from_slice(&std::fs::read(&self.conf_path).unwrap()).unwrap();
        conf["registry"] = json!({"kind": "kubernetes"});
        let pod_conf = self.nodes[i].dir.join("net-conf-pod.json");
        std::fs::write(&pod_conf, conf.to_string()).unwrap();
        let base = self.agent_command(i, None);
        let mut args: Vec<std::ffi::OsString> = base.get_args().map(|a| a.to_os_string()).collect();
        if let Some(k) = args.iter().position(|a| a == "--conf") {
            args[k + 1] = pod_conf.into_os_string();
        }
        let script = "mount -t tmpfs tmpfs /run \
            && mkdir -p /run/secrets/kubernetes.io/serviceaccount \
            && cp \"$0\"/* /run/secrets/kubernetes.io/serviceaccount/ && exec \"$@\"";
        let mut cmd = Command::new("ip");
        cmd.args(&args[..3])
            .args([
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ])
            .arg(service_account_dir)
            .args(&args[3..])
            .env("KUBERNETES_SERVICE_HOST", api_host)
            .env("KUBERNETES_SERVICE_PORT", api_port.to_string())
            .env_remove("KUBECONFIG")
            .env_remove("TWILL_KUBECONFIG")
            // A pod has no ~/.kube/config; the agent must not find the host's.
            .env("HOME", &self.nodes[i].dir);
        self.spawn_agent(i, cmd);
    }

    /// Starts node `i`'s agent with `cmd` (from [`Cluster::agent_command`], perhaps changed).
    pub fn spawn_agent(&mut self, i: usize, mut cmd: Command) {
        self.nodes[i].stop_agent(libc::SIGKILL);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].files.log_file)
            .unwrap();
        if self.spec.agents_die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start twill-agent");
        self.nodes[i].agent = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_agent(i);
        }
    }

    /// [`Cluster::wait_ready`], panicking with the agents' status and logs on time-out.
    pub fn expect_ready(&self, timeout: Duration) {
        if let Err(e) = self.wait_ready(timeout) {
            panic!("{e}");
        }
    }

    /// Waits until every running agent reports ready and knows all the others.
    /// The last `lines` lines of every agent's log, node by node, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, tail(&n.log(), lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let running: Vec<&ClusterNode> = self.nodes.iter().filter(|n| n.agent.is_some()).collect();
        let ready = wait_until(timeout, || {
            running.iter().all(|n| {
                n.status().is_some_and(|s| {
                    s["ready"] == json!(true)
                        && s["peers"].as_array().is_some_and(|p| {
                            p.iter().filter(|p| p["programmed"] == json!(true)).count() + 1
                                >= running.len()
                        })
                })
            })
        });
        if ready {
            return Ok(());
        }
        let mut msg = String::from("agents not ready in time:\n");
        for n in &running {
            msg.push_str(&format!(
                "--- {} status: {}\n--- {} log (tail):\n{}\n",
                n.name,
                n.status().map(|s| s.to_string()).unwrap_or("none".into()),
                n.name,
                tail(&n.log(), 15)
            ));
        }
        Err(msg)
    }

    /// What a runtime hands the plugin on node `i`: the conflist's plugin entry with the
    /// list's `cniVersion` and `name`.
    pub fn plugin_conf(&self, i: usize) -> Result<Value, String> {
        let node = &self.nodes[i];
        let list = node
            .conflist()
            .ok_or_else(|| format!("{} has no conflist yet", node.name))?;
        let mut conf = list["plugins"][0].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        Ok(conf)
    }

    /// Runs ADD for a new pod on node `i` with the conflist the agent wrote, as a runtime
    /// does (plugin entry + the list's `cniVersion` and `name`).
    pub fn add_pod(&self, i: usize, name: &str) -> Result<ClusterPod, String> {
        let node = &self.nodes[i];
        let conf = self.plugin_conf(i)?;
        let ns = Netns::new(&format!("p{}", next_id()));
        let id = format!("{name}-{}", next_id());
        let out = Plugin::new(&node.ns).call(&CniCall::new("ADD", &conf).container(
            &id,
            &ns.path(),
            "eth0",
        ));
        if !out.success() {
            return Err(format!(
                "ADD of {name} on {} failed: {} {}",
                node.name, out.stdout, out.stderr
            ));
        }
        let result = out.json();
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .ok_or_else(|| format!("ADD result without an address: {result}"))?
            .to_string();
        Ok(ClusterPod {
            name: name.to_string(),
            node: i,
            ns,
            id,
            ip,
            conf,
        })
    }

    /// Runs DEL for `pod` (its namespace is kept).
    pub fn del_pod(&self, pod: &ClusterPod) -> Result<(), String> {
        let node = &self.nodes[pod.node];
        let out = Plugin::new(&node.ns).call(&CniCall::new("DEL", &pod.conf).container(
            &pod.id,
            &pod.ns.path(),
            "eth0",
        ));
        if out.success() {
            Ok(())
        } else {
            Err(format!("DEL of {} failed: {}", pod.name, out.stdout))
        }
    }

    /// The agent binary's path (for tests that run subcommands).
    pub fn agent_bin() -> PathBuf {
        crate::workspace_bin("twill-agent")
    }

    /// The kubeconfig the agents use with [`RegistryKind::Kubernetes`].
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn conf_path(&self) -> &Path {
        &self.conf_path
    }
}

/// Polls `f` every 50 ms (slower than [`crate::fixture::wait_for`]: a poll here often
/// starts processes, `twill-agent status` or `ip`) until it holds (true) or `timeout`
/// passes (false).
#[must_use]
pub fn wait_until(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll(timeout, Duration::from_millis(50), f)
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
