//! A real container runtime calls the plugin (issue 4): Debian's containerd, driven by
//! `ctr run --cni` run inside a lab node's namespace, starts a busybox container on
//! node 1 of a two-node cluster. The container gets its address from `twill`, pings a
//! pod on node 2 across the overlay, and once it exits `ctr` sends DEL (with an empty
//! `CNI_NETNS`) and the address is released.
//!
//! `ctr` looks for its config in `/etc/cni/net.d` and for plugins in `/opt/cni/bin`, and
//! caches results in `/var/lib/cni`: it runs in a mount namespace of its own where the
//! test's [`CniDirs`] are mounted at those paths, so the machine's are never written.

use serde_json::Value;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use twill_ipam::{Reservation, StoreClient};
use twill_tests::cluster::{tail, Cluster, ClusterSpec};
use twill_tests::containerd::{
    container_id, BusyboxRootfs, CniDirs, Containerd, CNI_BIN_DIR, CNI_CACHE_DIR, CNI_CONF_DIR,
};
use twill_tests::fixture::{in_subnet, wait_for};
use twill_tests::private_mounts::PrivateMounts;
use twill_tests::{require_root, sh, workspace_bin, Netns, TempDir};

/// The name the test's conflist gets in its config dir (`ctr` reads the first file).
const CONFLIST_NAME: &str = "00-twill-test.conflist";

/// Every entry under each of `paths` (type, mode, owner, size, mtime, and a SHA-256 of
/// each file), or that it is absent: equal before and after when nothing was written.
fn tree_listing(paths: &[&Path]) -> String {
    let mut out = String::new();
    for p in paths {
        if std::fs::symlink_metadata(p).is_err() {
            out.push_str(&format!("{}: absent\n", p.display()));
            continue;
        }
        let p = p.to_str().expect("a UTF-8 path");
        let mut lines: Vec<String> = sh(&["find", p, "-printf", "%p %y %m %U:%G %s %T@\n"])
            .lines()
            .chain(sh(&["find", p, "-type", "f", "-exec", "sha256sum", "{}", "+"]).lines())
            .map(str::to_string)
            .collect();
        lines.sort();
        out.push_str(&lines.join("\n"));
        out.push('\n');
    }
    out
}

/// The machine's CNI directories and the parents a runtime would create for them.
fn machine_cni_dirs() -> String {
    tree_listing(
        &[
            "/etc/cni",
            CNI_CONF_DIR,
            "/opt/cni",
            CNI_BIN_DIR,
            CNI_CACHE_DIR,
        ]
        .map(Path::new),
    )
}

/// Mount points of this process's mount namespace under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    sh(&["findmnt", "-rn", "-o", "TARGET"])
        .lines()
        .filter(|t| Path::new(t).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Every reservation of the store in `dir` (empty when it was never created), through
/// the agent's store socket (the agent holds the store).
fn reservations(dir: &Path, socket: &Path) -> Vec<Reservation> {
    if !dir.exists() {
        return Vec::new();
    }
    StoreClient::new(dir, Some(socket.to_path_buf()))
        .reservations()
        .unwrap_or_else(|e| panic!("cannot list the reservations of {}: {e}", dir.display()))
}

/// Names of the links of `ns` (None: this process's namespace) whose alias is `alias`.
fn links_with_alias(ns: Option<&Netns>, alias: &str) -> Vec<String> {
    let mut argv = vec!["ip"];
    if let Some(ns) = ns {
        argv.extend(["-n", ns.name()]);
    }
    argv.extend(["-j", "-d", "link", "show"]);
    let out = twill_tests::sh(&argv);
    let v: Value = serde_json::from_str(&out).expect("ip -j output is JSON");
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifalias"].as_str() == Some(alias))
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// The inode of a network namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {path}: {e}"))
        .ino()
}

#[test]
fn ctr_run_cni_on_a_node_gets_an_address_pings_another_node_and_releases_it() {
    require_root();
    twill_tests::containerd::require_tools();
    let started = Instant::now();

    let mut c = Cluster::new(ClusterSpec::with_nodes(2));
    c.start_all();
    c.expect_ready(Duration::from_secs(20));
    let target = c.add_pod(1, "sleep-2").unwrap();
    let n1 = &c.nodes[0];
    let subnet = n1.subnet().expect("node-1 has a subnet");

    // The agent's conflist, with a log file so the test sees what ctr asked for.
    let plugin_log = c.dir.path().join("plugin.log");
    let mut conflist = n1.conflist().expect("node-1's agent wrote its conflist");
    conflist["plugins"][0]["logFile"] = Value::from(plugin_log.to_str().unwrap());
    conflist["plugins"][0]["logLevel"] = Value::from("debug");
    let network = conflist["name"]
        .as_str()
        .expect("a conflist name")
        .to_string();
    let store_dir = n1.files.data_dir.join(&network);

    let cni = CniDirs::new();
    cni.install_plugin("twill", &workspace_bin("twill"));
    cni.install_conflist(CONFLIST_NAME, &conflist);
    let machine_before = machine_cni_dirs();

    let containerd = Containerd::start();
    let rootfs = BusyboxRootfs::new();
    // A bind-mounted control dir: the container reports there, and waits on a FIFO
    // until the test has looked at it from outside.
    let ctl = TempDir::new("ctl");
    twill_tests::sh(&["mkfifo", ctl.path().join("go").to_str().unwrap()]);
    let id = container_id("ping");
    let cni_id = containerd.cni_container_id(&id);
    let script = format!(
        "ip -4 addr show dev eth0 | tee /ctl/addr; \
         ping -c 3 -W 2 {ip}; rc=$?; echo ping-rc $rc; \
         echo $rc > /ctl/ready.tmp && mv /ctl/ready.tmp /ctl/ready; \
         read x < /ctl/go; exit $rc",
        ip = target.ip
    );
    let mount = format!(
        "type=bind,src={},dst=/ctl,options=rbind:rw",
        ctl.path().display()
    );
    let pid_file = ctl.path().join("pid");
    let run = containerd.spawn_run(
        n1.ns.name(),
        &cni,
        rootfs.path(),
        &id,
        &["--mount", &mount, "--pid-file", pid_file.to_str().unwrap()],
        &["/bin/sh", "-c", &script],
    );
    let mut run = Some(run);
    let ready = wait_for(Duration::from_secs(30), || {
        ctl.path().join("ready").exists() || !run.as_mut().unwrap().running()
    });
    if !ctl.path().join("ready").exists() {
        let out = run.take().unwrap().wait(Duration::from_secs(10));
        panic!(
            "the container did not get through its script (waited: {ready}): {out:?}\n\
             --- plugin log:\n{}\n--- containerd log:\n{}",
            std::fs::read_to_string(&plugin_log).unwrap_or_default(),
            tail(&containerd.log(), 30)
        );
    }

    // While it runs: its address is node-1's, held in node-1's store for it; its host
    // veth is in node-1, not in the root namespace; its own namespace is new.
    let addr_text = std::fs::read_to_string(ctl.path().join("addr")).unwrap();
    println!("ip -4 addr inside the container:\n{addr_text}");
    let cidr = addr_text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no inet address on eth0: {addr_text}"));
    let addr: std::net::IpAddr = cidr.split('/').next().unwrap().parse().unwrap();
    assert!(
        in_subnet(addr, &subnet),
        "the container got {cidr}, outside node-1's subnet {subnet}"
    );
    // ... and libcni cached the result in the test's cache dir, not the machine's.
    let cached = std::fs::read_dir(cni.cache_dir().join("results"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(
        cached.iter().any(|n| n.to_string_lossy().contains(&cni_id)),
        "no libcni result for {cni_id} in the test's cache dir: {cached:?}"
    );
    let held = reservations(&store_dir, &n1.files.store_socket);
    assert!(
        held.iter().any(|r| r.owner.container_id == cni_id
            && r.owner.ifname == "eth0"
            && r.address == addr),
        "node-1's store does not hold {addr} for ({cni_id}, eth0): {held:?}"
    );
    let alias = format!("twill:{cni_id}:eth0:ip={addr}");
    let host_veths = links_with_alias(Some(&n1.ns), &alias);
    assert_eq!(host_veths.len(), 1, "no host veth {alias:?} in node-1");
    assert!(
        links_with_alias(None, &alias).is_empty(),
        "the host veth is in the root namespace, so ctr's CNI call did not run in node-1"
    );
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let container_ns = netns_inode(&format!("/proc/{}/ns/net", pid.trim()));
    let node_ns = netns_inode(&n1.ns.path());
    let root_ns = netns_inode("/proc/self/ns/net");
    assert!(
        container_ns != node_ns && container_ns != root_ns,
        "the container does not have a network namespace of its own \
         (container {container_ns}, node-1 {node_ns}, root {root_ns})"
    );

    // Let it exit: ctr sends DEL, then removes the task and the container.
    {
        use std::io::Write;
        let mut go = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(ctl.path().join("go"))
            .expect("the container waits on its FIFO");
        let _ = go.write_all(b"go\n");
    }
    let out = run.take().unwrap().wait(Duration::from_secs(30));
    let log = std::fs::read_to_string(&plugin_log).unwrap_or_default();
    println!("--- container output:\n{}", out.stdout);
    println!("--- plugin log:\n{log}");
    assert!(
        out.success(),
        "ctr run failed: {out:?}\n--- containerd log:\n{}",
        tail(&containerd.log(), 30)
    );
    assert!(
        out.stdout.contains("ping-rc 0") && out.stdout.contains(&format!("from {}", target.ip)),
        "the container got no answer from {} on node-2: {}",
        target.ip,
        out.stdout
    );

    // After it: the address is released and the host veth is gone.
    let held = reservations(&store_dir, &n1.files.store_socket);
    assert!(
        !held.iter().any(|r| r.owner.container_id == cni_id),
        "node-1's store still holds an address for {cni_id}: {held:?}"
    );
    assert!(
        links_with_alias(Some(&n1.ns), &alias).is_empty(),
        "host veth {alias:?} is still in node-1"
    );
    let lines_for = |what: &str| {
        log.lines()
            .filter(|l| l.contains(what) && l.contains(&cni_id))
            .count()
    };
    assert_eq!(lines_for("reserved"), 1, "one ADD for {cni_id}:\n{log}");
    assert_eq!(lines_for("deleted"), 1, "one DEL for {cni_id}:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("deleted") && l.contains(&addr.to_string())),
        "DEL did not release {addr}:\n{log}"
    );

    drop(containerd);
    assert_eq!(
        machine_cni_dirs(),
        machine_before,
        "the machine's CNI directories changed"
    );
    println!("done in {:?}", started.elapsed());
}

/// The private view itself, on temp dirs standing for the machine's: a target that
/// exists (with a file), one whose parents are missing, and one whose parent exists
/// beside a file, a symlink and a directory. The child sees and writes the test's
/// directories at the targets and still sees everything else of a directory covered
/// to make a missing target; afterwards the stand-ins are exactly as before, and no
/// mount is left in the test's namespace.
#[test]
fn private_mounts_show_the_tests_dirs_and_leave_the_machines_as_they_were() {
    require_root();
    let machine = TempDir::new("machine");
    let m = machine.path();
    let conf = m.join("etc/cni/net.d");
    let bin = m.join("opt/cni/bin");
    let cache = m.join("var/lib/cni");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("10-other.conflist"), b"{\"name\":\"other\"}").unwrap();
    std::fs::create_dir_all(m.join("opt")).unwrap();
    std::fs::create_dir_all(m.join("var/lib/dpkg")).unwrap();
    std::fs::write(m.join("var/lib/dpkg/status"), b"dpkg status").unwrap();
    std::fs::write(m.join("var/lib/file"), b"a file").unwrap();
    std::os::unix::fs::symlink("dpkg", m.join("var/lib/link")).unwrap();
    let before = tree_listing(&[m]);

    let ours = TempDir::new("ours");
    let dir = |name: &str| -> PathBuf {
        let d = ours.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("mark"), name).unwrap();
        d
    };
    let (our_conf, our_bin, our_cache) = (dir("net.d"), dir("bin"), dir("cache"));
    let staging = ours.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let mounts = PrivateMounts::new(&staging)
        .bind(&our_conf, &conf)
        .bind(&our_bin, &bin)
        .bind(&our_cache, &cache);
    let var_lib = m.join("var/lib");
    let (c, b, k, l) = (
        conf.display(),
        bin.display(),
        cache.display(),
        var_lib.display(),
    );
    let script = format!(
        "set -e; cat {c}/mark {b}/mark {k}/mark; echo; ls {c}; \
         for d in {c} {b} {k}; do echo written > $d/new; done; \
         cat {l}/file; echo; readlink {l}/link; cat {l}/link/status; echo; ls {l}"
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    mounts.apply(&mut cmd).unwrap();
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "net.dbincache",
            "mark",
            "a file",
            "dpkg",
            "dpkg status",
            "cni",
            "dpkg",
            "file",
            "link"
        ],
        "what the child saw"
    );

    assert_eq!(tree_listing(&[m]), before, "the stand-ins changed");
    for d in [&our_conf, &our_bin, &our_cache] {
        assert_eq!(std::fs::read_to_string(d.join("new")).unwrap(), "written\n");
    }
    assert_eq!(mounts_under(m), Vec::<String>::new());
    assert_eq!(mounts_under(ours.path()), Vec::<String>::new());
}
