//! The address store can be lost without losing an address: every host veth's alias
//! records its pod's addresses, and a store found missing, truncated or overwritten is
//! moved aside and rebuilt from them, by the plugin alone or by the agent serving it.
//! And a full disk fails an ADD cleanly without blocking DEL.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use twill_conf::Attachment;
use twill_ipam::Store;
use twill_tests::cluster::{Cluster, ClusterNode, ClusterSpec};
use twill_tests::fixture::{
    assert_cni_error, host_veth_name, ip_of, result_address, wait_for, TempDir,
};
use twill_tests::{CniCall, Netns, Node, Plugin, Pod};

/// Running pods before the store is lost, and new pods after.
const PODS: usize = 20;

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// `rm -rf` of the store directory.
    Removed,
    /// The database file cut in the middle of what was written.
    Truncated,
    /// The database file overwritten with garbage of the same length.
    Garbage,
}

fn damage(store_dir: &Path, how: Damage) {
    let file = store_dir.join("db").join("db");
    match how {
        Damage::Removed => std::fs::remove_dir_all(store_dir).expect("rm -rf the store"),
        Damage::Truncated => {
            // sled preallocates its segments: cut in the middle of what was written, not
            // of the zeros after it.
            let bytes = std::fs::read(&file).expect("the database file");
            let written = bytes.iter().rposition(|b| *b != 0).unwrap_or(0);
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&file)
                .expect("open");
            f.set_len(written as u64 / 2).expect("truncate");
        }
        Damage::Garbage => {
            let len = std::fs::metadata(&file).expect("the database file").len();
            std::fs::write(&file, vec![0x5a; len as usize]).expect("overwrite");
        }
    }
}

/// The copies a rebuild moved aside, `db.damaged-<unix time>`.
fn moved_aside(store_dir: &Path) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(store_dir).into_iter().flatten().flatten();
    entries
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("db.damaged-"))
        })
        .collect()
}

/// One pod and the result of its ADD.
struct Running {
    ns: Netns,
    id: String,
    result: Value,
}

impl Running {
    fn call(&self, command: &str, conf: &Value) -> CniCall {
        CniCall::new(command, conf).container(&self.id, &self.ns.path(), "eth0")
    }

    fn ip(&self) -> String {
        ip_of(&result_address(&self.result)).to_string()
    }
}

/// ADDs `n` new pods with the real plugin of a node; panics when one fails.
fn add_pods(plugin: &Plugin, conf: &Value, label: &str, n: usize) -> Vec<Running> {
    (0..n)
        .map(|i| {
            let pod = Pod::new(&format!("{label}{i}"));
            let out = plugin.call(&pod.call("ADD", conf));
            assert!(
                out.success(),
                "ADD of {} failed: {} {}",
                pod.id,
                out.stdout,
                out.stderr
            );
            Running {
                result: out.result(),
                ns: pod.ns,
                id: pod.id,
            }
        })
        .collect()
}

/// The 20 new pods got 20 addresses distinct from each other and from the running
/// ones; every running pod still has its address and passes CHECK with its first result.
fn assert_no_address_lost(plugin: &Plugin, conf: &Value, running: &[Running], new: &[Running]) {
    let old: BTreeSet<String> = running.iter().map(Running::ip).collect();
    let fresh: BTreeSet<String> = new.iter().map(Running::ip).collect();
    assert_eq!(old.len(), PODS, "running pods share addresses: {old:?}");
    assert_eq!(fresh.len(), PODS, "new pods share addresses: {fresh:?}");
    let twice: Vec<&String> = old.intersection(&fresh).collect();
    assert!(twice.is_empty(), "handed out again: {twice:?}");
    for pod in running {
        let on_link = twill_tests::fixture::ipv4_of(&pod.ns, "eth0");
        assert_eq!(on_link, vec![result_address(&pod.result)], "{}", pod.id);
        let mut check = conf.clone();
        check["prevResult"] = pod.result.clone();
        let out = plugin.call(&pod.call("CHECK", &check));
        assert!(
            out.success(),
            "CHECK of {} failed: {} {}",
            pod.id,
            out.stdout,
            out.stderr
        );
    }
}

/// 20 pods, the store lost, 20 more pods: the plugin alone (no agent) rebuilds it.
fn plugin_alone(how: Damage) {
    let node = Node::new("rebuild");
    let conf = node.conf("1.0.0");
    let running = add_pods(&node.plugin, &conf, "run", PODS);
    damage(&node.store_dir(), how);

    let new = add_pods(&node.plugin, &conf, "new", PODS);
    assert_no_address_lost(&node.plugin, &conf, &running, &new);
    match how {
        Damage::Removed => assert!(moved_aside(&node.store_dir()).is_empty()),
        _ => assert_eq!(moved_aside(&node.store_dir()).len(), 1, "{how:?}"),
    }
    node.verify_store();
    assert_eq!(node.reservations().len(), 2 * PODS);
    for pod in running.iter().chain(&new) {
        let out = node.plugin.call(&pod.call("DEL", &conf));
        assert!(out.success(), "DEL of {}: {}", pod.id, out.stdout);
    }
    node.assert_empty();
}

#[test]
fn a_removed_store_is_rebuilt_by_the_plugin() {
    plugin_alone(Damage::Removed);
}

#[test]
fn a_truncated_store_is_moved_aside_and_rebuilt_by_the_plugin() {
    plugin_alone(Damage::Truncated);
}

#[test]
fn a_store_overwritten_with_garbage_is_moved_aside_and_rebuilt_by_the_plugin() {
    plugin_alone(Damage::Garbage);
}

/// A container ID too long for the alias: after a rebuild its address is held by the
/// attachment's stand-in, which GC keeps while the pod runs and its DEL releases.
#[test]
fn a_cut_container_id_keeps_its_address_until_its_del() {
    let node = Node::new("cut");
    let conf = node.conf("1.1.0");
    let mut long = Pod::new("long");
    long.id = format!("{}-{}", long.id, "x".repeat(300));
    let first = node.add_ok(&conf, &long);
    let ip = ip_of(&result_address(&first));
    damage(&node.store_dir(), Damage::Removed);

    let other = Pod::new("other");
    let second = node.add_ok(&conf, &other);
    assert_ne!(result_address(&second), result_address(&first));
    let stand_in = long.owner().stand_in();
    let held = |who: &Attachment| node.with_store(|s| s.lookup(who).expect("lookup"));
    assert_eq!(held(&stand_in), vec![ip]);
    let out = node.gc(&conf, &[&long, &other]);
    assert!(out.success(), "GC failed: {}", out.stdout);
    assert_eq!(
        held(&stand_in),
        vec![ip],
        "GC released a running pod's address"
    );

    node.del_ok(&conf, &long);
    assert!(
        held(&stand_in).is_empty(),
        "DEL left the stand-in's address"
    );
    node.del_ok(&conf, &other);
    node.assert_empty();
}

fn metric(node: &ClusterNode, name: &str) -> Option<f64> {
    let text = node.http_get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The agent, restarted on a store overwritten with garbage, rebuilds it before it
/// serves it, says so in its log and counts it.
#[test]
fn the_agent_rebuilds_a_damaged_store_before_serving_it() {
    let mut cluster = Cluster::up(ClusterSpec::with_nodes(1));
    let conf = cluster.plugin_conf(0).expect("the agent wrote a conflist");
    let plugin = Plugin::new(&cluster.nodes[0].ns);
    let running = add_pods(&plugin, &conf, "run", PODS);
    let store_dir = Path::new(conf["dataDir"].as_str().expect("dataDir"))
        .join(conf["name"].as_str().expect("name"));

    cluster.nodes[0].stop_agent(libc::SIGTERM);
    damage(&store_dir, Damage::Garbage);
    cluster.start_agent(0);
    cluster.expect_ready(Duration::from_secs(30));
    let node = &cluster.nodes[0];
    // The store is served from a thread of its own, which readiness does not wait for.
    let counted = wait_for(Duration::from_secs(10), || {
        metric(node, "twill_store_rebuilds_total") == Some(1.0)
    });
    assert!(
        counted,
        "twill_store_rebuilds_total is {:?}",
        metric(node, "twill_store_rebuilds_total")
    );
    let aside = moved_aside(&store_dir);
    assert_eq!(aside.len(), 1);
    let log = node.log();
    let line = log
        .lines()
        .find(|l| l.contains("address store rebuilt"))
        .unwrap_or_else(|| panic!("no rebuild in the agent's log:\n{log}"));
    assert!(line.contains(&aside[0].display().to_string()), "{line}");
    assert!(line.contains(&format!("restored={PODS}")), "{line}");

    let new = add_pods(&plugin, &conf, "new", PODS);
    assert_no_address_lost(&plugin, &conf, &running, &new);
    for pod in running.iter().chain(&new) {
        let out = plugin.call(&pod.call("DEL", &conf));
        assert!(out.success(), "DEL of {}: {}", pod.id, out.stdout);
    }
}

fn alias_of(ns: &Netns, link: &str) -> String {
    let out = ns.ip(&["-j", "-d", "link", "show", "dev", link]);
    let v: Value = serde_json::from_str(&out).expect("ip -j output is JSON");
    v[0]["ifalias"].as_str().unwrap_or_default().to_string()
}

/// Host veths of a plugin that did not record addresses get them in their alias at the
/// agent's next start, so a store lost later still protects those pods.
#[test]
fn the_agent_records_the_addresses_in_aliases_of_older_plugins() {
    let mut cluster = Cluster::up(ClusterSpec::with_nodes(1));
    let conf = cluster.plugin_conf(0).expect("the agent wrote a conflist");
    let plugin = Plugin::new(&cluster.nodes[0].ns);
    let pods = add_pods(&plugin, &conf, "old", 2);
    for pod in &pods {
        let veth = host_veth_name(&pod.id, "eth0");
        let old = format!("twill:{}:eth0", pod.id);
        cluster.nodes[0]
            .ns
            .ip(&["link", "set", "dev", &veth, "alias", &old]);
    }

    cluster.nodes[0].stop_agent(libc::SIGTERM);
    cluster.start_agent(0);
    let ns = &cluster.nodes[0].ns;
    for pod in &pods {
        let veth = host_veth_name(&pod.id, "eth0");
        let want = format!("twill:{}:eth0:ip={}", pod.id, pod.ip());
        let done = wait_for(Duration::from_secs(15), || alias_of(ns, &veth) == want);
        assert!(
            done,
            "{veth}: alias {:?}, want {want:?}",
            alias_of(ns, &veth)
        );
    }
    for pod in &pods {
        let out = plugin.call(&pod.call("DEL", &conf));
        assert!(out.success(), "DEL of {}: {}", pod.id, out.stdout);
    }
}

/// A tmpfs mounted under the test's temp dir, unmounted on drop (also on failure).
struct SmallDisk {
    path: PathBuf,
    _dir: TempDir,
}

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = TempDir::new("small-disk");
        let path = dir.path().join("mnt");
        std::fs::create_dir_all(&path).expect("mount point");
        let p = path.to_str().expect("utf-8 path");
        twill_tests::sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            p,
        ]);
        SmallDisk { path, _dir: dir }
    }

    /// Writes a file until not one more byte fits.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        for chunk in [1 << 16, 1] {
            let block = vec![0u8; chunk];
            while f.write_all(&block).and_then(|()| f.flush()).is_ok() {}
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Some(p) = self.path.to_str() {
            let _ = twill_tests::netns::run(&["umount", "-l", p]);
        }
    }
}

/// A full disk: ADD fails with code 5 naming the store, leaves no veth and no
/// reservation; DEL still succeeds; once there is space again ADD works, and GC
/// releases what DEL could not write.
#[test]
fn a_full_disk_fails_add_cleanly_and_does_not_block_del() {
    let node = Node::new("fulldisk");
    let disk = SmallDisk::new("4m");
    let mut conf = node.conf("1.1.0");
    conf["dataDir"] = Value::from(disk.path.to_str().expect("utf-8 path"));
    let store_dir = disk.path.join(twill_tests::fixture::NETWORK);

    let first = Pod::new("first");
    node.add_ok(&conf, &first);
    let filler = disk.fill();

    let blocked = Pod::new("blocked");
    let out = node.add(&conf, &blocked);
    assert_cni_error(&out, 5, &store_dir.display().to_string());
    assert!(
        !node.host_veths().contains(&blocked.host_veth()),
        "a failed ADD left its veth"
    );
    let out = node.del(&conf, &first);
    assert!(out.success(), "DEL on a full disk failed: {}", out.stdout);
    assert!(!node.host_veths().contains(&first.host_veth()));

    std::fs::remove_file(&filler).expect("free the space");
    let held = owners(&store_dir);
    assert!(
        !held.contains(&blocked.owner()),
        "a failed ADD left its reservation: {held:?}"
    );
    // The release DEL could not write waits for GC.
    assert_eq!(held, vec![first.owner()]);
    let after = Pod::new("after");
    node.add_ok(&conf, &after);
    let out = node.gc(&conf, &[&after]);
    assert!(out.success(), "GC failed: {}", out.stdout);
    assert_eq!(owners(&store_dir), vec![after.owner()]);
    node.del_ok(&conf, &after);
    assert_eq!(owners(&store_dir), vec![]);
    assert!(
        node.host_veths().is_empty(),
        "veths left: {:?}",
        node.host_veths()
    );
}

/// The owners of the reservations in the store in `dir`.
fn owners(dir: &Path) -> Vec<Attachment> {
    let store = Store::open(dir).unwrap_or_else(|e| panic!("cannot open {}: {e}", dir.display()));
    let all = store.reservations().expect("reservations");
    all.into_iter().map(|r| r.owner).collect()
}
