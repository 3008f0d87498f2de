//! Fixtures the scenarios share: a node (its namespace, a temporary data directory, the
//! plugin running inside it and a config builder) and pods (a namespace plus the
//! container ID and interface name a runtime would pass).
//!
//! A scenario is written once against these and runs on any number of nodes; the
//! multi-node lab reuses them.

mod checks;

pub use checks::{
    assert_cni_error, assert_result_json, assert_silent_success, in_subnet, ip_of, one_json_object,
    poll, reaches, result_address, routes, wait_for,
};

use crate::netns::{left_by_dead_run, next_id, run, run_prefix};
use crate::{require_root, CniCall, CniOutcome, Netns, Plugin};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Once;
use twill_conf::Attachment;
use twill_ipam::{Reservation, StoreClient, StoreService};

/// The pod subnet of [`Node::conf`] unless a test sets another.
pub const DEFAULT_SUBNET: &str = "10.244.1.0/24";
/// The network name of [`Node::conf`]; the store is `<dataDir>/<NETWORK>`.
pub const NETWORK: &str = "twill-e2e";
/// The bridge the plugin creates when the config names none.
pub const DEFAULT_BRIDGE: &str = "twill0";
/// Every CNI version the plugin claims to speak.
pub const ALL_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

// ---------------------------------------------------------------------------------------
// Temporary directories

static SWEEP_DIRS: Once = Once::new();

/// A directory under the system temp dir named `<run prefix><n>-<label>`, removed on
/// drop. Leftovers of dead runs are swept like namespaces.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        SWEEP_DIRS.call_once(sweep_dead_dirs);
        let path = std::env::temp_dir().join(format!("{}{}-{label}", run_prefix(), next_id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn sweep_dead_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        if left_by_dead_run(&e.file_name().to_string_lossy()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Config helpers

/// Edits of a network configuration in builder style.
pub trait ConfExt {
    /// The config with `key` set to `value`.
    fn with(&self, key: &str, value: Value) -> Value;
    /// The config without `key`.
    fn without(&self, key: &str) -> Value;
}

impl ConfExt for Value {
    fn with(&self, key: &str, value: Value) -> Value {
        let mut v = self.clone();
        v.as_object_mut()
            .expect("a network configuration is a JSON object")
            .insert(key.to_string(), value);
        v
    }

    fn without(&self, key: &str) -> Value {
        let mut v = self.clone();
        v.as_object_mut()
            .expect("a network configuration is a JSON object")
            .remove(key);
        v
    }
}

// ---------------------------------------------------------------------------------------
// Pods

/// A pod as the runtime sees it: a network namespace, a container ID and the name its
/// interface gets.
pub struct Pod {
    pub ns: Netns,
    pub id: String,
    pub ifname: String,
}

impl Pod {
    /// `label` must be usable in a container ID (letters, digits, `-`).
    pub fn new(label: &str) -> Pod {
        let ns = Netns::new(label);
        Pod {
            id: format!("{label}-{}", next_id()),
            ns,
            ifname: "eth0".to_string(),
        }
    }

    /// A pod whose container ID looks like a real runtime's: 64 hex digits.
    pub fn with_runtime_id(label: &str) -> Pod {
        let mut pod = Pod::new(label);
        let seed = format!("{}{}", run_prefix(), pod.id);
        pod.id = (0..4u64)
            .map(|i| format!("{:016x}", host_hash(&seed, i)))
            .collect();
        pod
    }

    /// CNI_NETNS of this pod.
    pub fn path(&self) -> String {
        self.ns.path()
    }

    /// A call for this pod (container ID, netns, ifname set).
    pub fn call(&self, command: &str, conf: &Value) -> CniCall {
        CniCall::new(command, conf).container(&self.id, &self.path(), &self.ifname)
    }

    /// The store owner of this pod's interface.
    pub fn owner(&self) -> Attachment {
        Attachment::new(&self.id, &self.ifname)
    }

    /// The host end of this pod's veth, as the plugin names it.
    pub fn host_veth(&self) -> String {
        host_veth_name(&self.id, &self.ifname)
    }

    /// `ip -j link show` of the pod's interface, `None` when it does not exist.
    pub fn link(&self) -> Option<Value> {
        let out = run(&[
            "ip",
            "-j",
            "-n",
            self.ns.name(),
            "link",
            "show",
            "dev",
            &self.ifname,
        ]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output is JSON");
        v.as_array().and_then(|a| a.first().cloned())
    }

    /// The IPv4 addresses (CIDR) on the pod's interface; empty when it has none or does
    /// not exist.
    pub fn ipv4(&self) -> Vec<String> {
        ipv4_of(&self.ns, &self.ifname)
    }

    /// The global IPv6 addresses (CIDR) on the pod's interface.
    pub fn ipv6(&self) -> Vec<String> {
        ipv6_of(&self.ns, &self.ifname)
    }

    /// The pod's interface MTU.
    pub fn mtu(&self) -> u64 {
        self.link()
            .and_then(|l| l["mtu"].as_u64())
            .unwrap_or_else(|| panic!("{} has no {}", self.ns.name(), self.ifname))
    }
}

/// IPv4 addresses (CIDR) of `dev` in `ns`; empty when the link does not exist.
pub fn ipv4_of(ns: &Netns, dev: &str) -> Vec<String> {
    addrs_of(ns, dev, "-4")
}

/// Global IPv6 addresses (CIDR) of `dev` in `ns` (link-local ones left out).
pub fn ipv6_of(ns: &Netns, dev: &str) -> Vec<String> {
    addrs_of(ns, dev, "-6")
}

fn addrs_of(ns: &Netns, dev: &str, family: &str) -> Vec<String> {
    let out = run(&[
        "ip",
        "-j",
        "-n",
        ns.name(),
        family,
        "addr",
        "show",
        "dev",
        dev,
    ]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip -j output is JSON");
    let mut addrs = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                addrs.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                ));
            }
        }
    }
    addrs
}

/// FNV-1a of `seed` and `salt`, for IDs that look random but are reproducible.
fn host_hash(seed: &str, salt: u64) -> u64 {
    twill_conf::fnv::fnv1a_from(twill_conf::fnv::OFFSET_BASIS ^ salt, seed.bytes())
}

/// The host veth name for (container, ifname): `tw` + 12 hex digits of the 64-bit
/// FNV-1a hash of `container \0 ifname` (the plugin's contract, so that DEL and GC need
/// no state; re-derived here to check it).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    Attachment::new(container_id, ifname).host_veth_name()
}

// ---------------------------------------------------------------------------------------
// Nodes

/// A node: its network namespace (where the plugin runs and the bridge lives), a data
/// directory for the address store and the subnet file, and the plugin.
pub struct Node {
    pub ns: Netns,
    pub plugin: Plugin,
    pub dir: TempDir,
}

impl Node {
    pub fn new(label: &str) -> Node {
        require_root();
        let ns = Netns::new(label);
        let plugin = Plugin::new(&ns);
        let dir = TempDir::new(label);
        Node { ns, plugin, dir }
    }

    /// dataDir of the configs.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The address store of [`NETWORK`].
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir().join(NETWORK)
    }

    /// storeSocket of the configs; nothing listens there unless [`Node::serve_store`].
    pub fn store_socket(&self) -> PathBuf {
        self.dir.path().join("store.sock")
    }

    /// Serves this node's store on [`Node::store_socket`] from a thread of the test
    /// process, as twill-agent does on a node, until the test process exits.
    pub fn serve_store(&self) {
        let service = StoreService::start(&self.store_dir(), &self.store_socket())
            .unwrap_or_else(|e| panic!("cannot serve {}: {e}", self.store_dir().display()));
        std::thread::spawn(move || service.serve());
    }

    /// The store's reservations as sorted (owner, address) pairs.
    pub fn reservation_pairs(&self) -> Vec<(Attachment, std::net::IpAddr)> {
        let mut pairs: Vec<_> = self
            .reservations()
            .into_iter()
            .map(|r| (r.owner, r.address))
            .collect();
        pairs.sort();
        pairs
    }

    /// subnetFile of the configs (absent until [`Node::write_subnet_file`]).
    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("run").join("subnet.json")
    }

    /// Writes the subnet file as the agent does (whole file at once, by rename).
    pub fn write_subnet_file(&self, networks: &[&str], subnets: &[&str], mtu: Option<u32>) {
        let path = self.subnet_file();
        let dir = path.parent().expect("the subnet file has a directory");
        std::fs::create_dir_all(dir).expect("cannot create the subnet file's directory");
        let mut body = json!({"subnets": subnets, "ipMasq": true});
        if !networks.is_empty() {
            body["networks"] = json!(networks);
        }
        if let Some(mtu) = mtu {
            body["mtu"] = json!(mtu);
        }
        let tmp = dir.join(".subnet.json.tmp");
        std::fs::write(&tmp, body.to_string()).expect("cannot write the subnet file");
        std::fs::rename(&tmp, &path).expect("cannot rename the subnet file into place");
    }

    /// A valid config of `version` with the inline subnet [`DEFAULT_SUBNET`], this node's
    /// dataDir and subnetFile and the default bridge.
    pub fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "twill",
            "subnet": DEFAULT_SUBNET,
            "dataDir": self.data_dir(),
            "subnetFile": self.subnet_file(),
            "storeSocket": self.store_socket(),
        })
    }

    pub fn call(&self, call: &CniCall) -> CniOutcome {
        self.plugin.call(call)
    }

    pub fn spawn(&self, call: &CniCall) -> Child {
        self.plugin.spawn(call)
    }

    pub fn add(&self, conf: &Value, pod: &Pod) -> CniOutcome {
        self.call(&pod.call("ADD", conf))
    }

    /// ADD that must succeed; returns its result.
    pub fn add_ok(&self, conf: &Value, pod: &Pod) -> Value {
        let out = self.add(conf, pod);
        assert_eq!(
            out.code,
            Some(0),
            "ADD of {} failed: {} {}",
            pod.id,
            out.stdout,
            out.stderr
        );
        assert_result_json(&out)
    }

    pub fn del(&self, conf: &Value, pod: &Pod) -> CniOutcome {
        self.call(&pod.call("DEL", conf))
    }

    /// DEL that must succeed with empty stdout.
    pub fn del_ok(&self, conf: &Value, pod: &Pod) {
        let out = self.del(conf, pod);
        assert_silent_success(&out, &format!("DEL of {}", pod.id));
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(&self, conf: &Value, pod: &Pod, prev: &Value) -> CniOutcome {
        self.call(&pod.call("CHECK", &conf.with("prevResult", prev.clone())))
    }

    /// GC keeping the attachments of `keep`.
    pub fn gc(&self, conf: &Value, keep: &[&Pod]) -> CniOutcome {
        let valid: Vec<Value> = keep
            .iter()
            .map(|p| json!({"containerID": p.id, "ifname": p.ifname}))
            .collect();
        self.call(&CniCall::new(
            "GC",
            &conf.with("cni.dev/valid-attachments", Value::Array(valid)),
        ))
    }

    pub fn status(&self, conf: &Value) -> CniOutcome {
        self.call(&CniCall::new("STATUS", conf))
    }

    /// Runs `f` on the store: through the socket when [`Node::serve_store`] serves it,
    /// else opened for each call. (The plugin and these tests must be built from the
    /// same twill-ipam: `cargo build -p twill-cni` right before `cargo test`.)
    pub fn with_store<T>(&self, f: impl FnOnce(&StoreClient) -> T) -> T {
        f(&StoreClient::new(
            self.store_dir(),
            Some(self.store_socket()),
        ))
    }

    /// Every reservation of the store (empty when the store was never created).
    pub fn reservations(&self) -> Vec<Reservation> {
        if !self.store_dir().exists() {
            return Vec::new();
        }
        self.with_store(|s| s.reservations().expect("cannot list the reservations"))
    }

    /// Panics unless the store passes its consistency check.
    pub fn verify_store(&self) {
        self.with_store(|s| {
            s.verify().unwrap_or_else(|e| {
                panic!("store {} fails verify: {e}", self.store_dir().display())
            })
        })
    }

    /// The addresses the store holds for `pod`.
    pub fn lookup(&self, pod: &Pod) -> Vec<IpAddr> {
        self.with_store(|s| s.lookup(&pod.owner()).expect("cannot look up an owner"))
    }

    /// Names of the veth links in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        let out = self.ns.ip(&["-j", "link", "show", "type", "veth"]);
        let v: Value = serde_json::from_str(&out).expect("ip -j output is JSON");
        let mut names: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// `ip -j -d link show` of one link in the node namespace.
    pub fn link_details(&self, name: &str) -> Value {
        let out = self.ns.ip(&["-j", "-d", "link", "show", "dev", name]);
        let v: Value = serde_json::from_str(&out).expect("ip -j output is JSON");
        v[0].clone()
    }

    /// IPv4 addresses (CIDR) of `bridge` in the node namespace.
    pub fn bridge_ipv4(&self, bridge: &str) -> Vec<String> {
        ipv4_of(&self.ns, bridge)
    }

    /// No veth on the node, no reservation in the store, and a consistent store.
    pub fn assert_empty(&self) {
        assert_eq!(
            self.host_veths(),
            Vec::<String>::new(),
            "veths left on the node"
        );
        assert_eq!(
            self.reservations(),
            Vec::new(),
            "reservations left in the store"
        );
        self.verify_store();
    }
}
