//! The underlay and the nodes on it: a node's namespace, its files, its agent, and
//! what the agent reports.

use crate::netns::Netns;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Child;

/// The underlay: bridges `ul<s>` in one namespace that also routes between segments.
pub struct Underlay {
    pub ns: Netns,
    pub segments: usize,
}

impl Underlay {
    pub fn new(segments: usize, mtu: u32) -> Underlay {
        let ns = Netns::new("underlay");
        let mtu = mtu.to_string();
        for s in 0..segments {
            let br = format!("ul{s}");
            // A fixed MAC: a bridge without one takes its lowest port's, and changes it
            // when a port joins, leaving every node's neighbour entry for the router
            // pointing nowhere.
            let mac = format!("02:00:00:00:fe:{s:02x}");
            ns.ip(&[
                "link", "add", &br, "address", &mac, "mtu", &mtu, "type", "bridge",
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("192.168.{}.254/24", s + 1),
                "dev",
                &br,
            ]);
            ns.ip(&["link", "set", &br, "up"]);
        }
        ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        Underlay { ns, segments }
    }

    /// The router's (and the outside world's) address on segment `s`.
    pub fn router_ip(&self, segment: usize) -> String {
        format!("192.168.{}.254", segment + 1)
    }
}

/// Where a node keeps its files, under its directory.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// The agent writes its conflist here; `install-cni` too.
    pub cni_conf_dir: PathBuf,
    /// `install-cni` puts the plugin here.
    pub cni_bin_dir: PathBuf,
    pub subnet_file: PathBuf,
    /// The address store is `<data dir>/<network name>`.
    pub data_dir: PathBuf,
    /// Where the agent serves the address store (well under the 108-byte limit of a
    /// unix socket path: node dirs are short temp dirs).
    pub store_socket: PathBuf,
    /// The agent's stderr.
    pub log_file: PathBuf,
}

impl NodeFiles {
    pub(super) fn under(dir: &Path) -> NodeFiles {
        NodeFiles {
            cni_conf_dir: dir.join("net.d"),
            cni_bin_dir: dir.join("bin"),
            subnet_file: dir.join("run/subnet.json"),
            data_dir: dir.join("data"),
            store_socket: dir.join("run/store.sock"),
            log_file: dir.join("agent.log"),
        }
    }

    /// The agent's flags that name them.
    pub(super) fn agent_args(&self) -> [(&'static str, &Path); 5] {
        [
            ("--cni-conf-dir", &self.cni_conf_dir),
            ("--cni-bin-dir", &self.cni_bin_dir),
            ("--subnet-file", &self.subnet_file),
            ("--data-dir", &self.data_dir),
            ("--store-socket", &self.store_socket),
        ]
    }
}

/// One node: a namespace with `eth0` on the underlay, its directories, and its agent.
pub struct ClusterNode {
    pub name: String,
    pub ns: Netns,
    pub ip: String,
    pub segment: usize,
    pub dir: PathBuf,
    pub files: NodeFiles,
    pub agent: Option<Child>,
}

impl ClusterNode {
    /// The agent's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.files.log_file).unwrap_or_default()
    }

    /// The conflist the agent wrote, if any.
    pub fn conflist(&self) -> Option<Value> {
        let bytes = std::fs::read(self.files.cni_conf_dir.join("10-twill.conflist")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The node's pod subnet (IPv4) from the subnet file.
    pub fn subnet(&self) -> Option<String> {
        let v: Value =
            serde_json::from_slice(&std::fs::read(&self.files.subnet_file).ok()?).ok()?;
        v["subnets"][0].as_str().map(str::to_string)
    }

    /// `twill-agent status --json` run inside the node.
    pub fn status(&self) -> Option<Value> {
        let bin = crate::workspace_bin("twill-agent");
        let out = self.ns.run(&[
            bin.to_str()?,
            "status",
            "--json",
            "--listen",
            "127.0.0.1:9473",
        ]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A GET against the agent's HTTP endpoint, from inside the node (bash's
    /// /dev/tcp: no HTTP client needed on the machine).
    pub fn http_get(&self, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/9473 && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = self.ns.run(&["bash", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Destinations of the agent's routes (protocol 71) in the node.
    pub fn agent_routes(&self) -> Vec<String> {
        let out = self.ns.ip(&["-j", "route", "show", "proto", "71"]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["dst"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Peer rows of the agent's status, by node name.
    pub fn peer_rows(&self) -> Vec<Value> {
        self.status()
            .and_then(|s| s["peers"].as_array().cloned())
            .unwrap_or_default()
    }

    pub fn ready(&self) -> bool {
        self.status().is_some_and(|s| s["ready"] == json!(true))
    }

    /// Kills the agent with `signal` (e.g. libc::SIGKILL) and reaps it.
    pub fn stop_agent(&mut self, signal: i32) {
        if let Some(mut child) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let _ = child.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.stop_agent(libc::SIGKILL);
    }
}
