//! A real container runtime calls the plugin (issue 4): Debian's containerd, driven by
//! `ctr run --cni` run inside a lab node's namespace, starts a busybox container on
//! node 1 of a two-node cluster. The container gets its address from `twill`, pings a
//! pod on node 2 across the overlay, and once it exits `ctr` sends DEL (with an empty
//! `CNI_NETNS`) and the address is released.
//!
//! `ctr` reads the machine's `/etc/cni/net.d` and `/opt/cni/bin`: the tests hold
//! [`CniDirsGuard`], which serializes them across test binaries and puts those dirs
//! back byte for byte.

use serde_json::Value;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use twill_ipam::{Reservation, StoreClient};
use twill_tests::cluster::{tail, Cluster, ClusterSpec};
use twill_tests::containerd::{container_id, BusyboxRootfs, CniDirsGuard, Containerd};
use twill_tests::fixture::{in_subnet, wait_for};
use twill_tests::{require_root, workspace_bin, Netns, TempDir};

/// The name the test's conflist gets in `/etc/cni/net.d`: sorts before the agent's
/// `10-twill.conflist` and anything a machine usually has, as `ctr` reads only the first.
const CONFLIST_NAME: &str = "00-twill-test.conflist";

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

    let mut c = Cluster::new(ClusterSpec {
        nodes: 2,
        ..ClusterSpec::default()
    });
    c.start_all();
    c.wait_ready(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
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
    let store_dir = n1.data_dir().join(&network);

    let mut guard = CniDirsGuard::acquire();
    guard.install_plugin("twill", &workspace_bin("twill"));
    guard.install_conflist(CONFLIST_NAME, &conflist);

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
    let held = reservations(&store_dir, &n1.store_socket());
    assert!(
        held.iter().any(|r| r.owner.container_id == cni_id
            && r.owner.ifname == "eth0"
            && r.address == addr),
        "node-1's store does not hold {addr} for ({cni_id}, eth0): {held:?}"
    );
    let alias = format!("twill:{cni_id}:eth0");
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
    let held = reservations(&store_dir, &n1.store_socket());
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
    guard.restore();
    println!("done in {:?}", started.elapsed());
}

/// The guard itself, on temp dirs: what it found comes back byte for byte (files,
/// modes, symlinks, subdirs), what was added goes, a dir that was missing (with its
/// missing parent) is removed again; what a killed holder installed, and what was
/// added beside it, is undone by the next holder.
#[test]
fn cni_dirs_guard_puts_back_exactly_what_it_found() {
    require_root();
    let t = TempDir::new("guard");
    let conf = t.path().join("etc/cni/net.d");
    let bin = t.path().join("opt/cni/bin");
    let absent = t.path().join("var/lib/cni");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(conf.join("10-other.conflist"), b"{\"name\":\"other\"}").unwrap();
    std::fs::set_permissions(
        conf.join("10-other.conflist"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("10-other.conflist", conf.join("20-link.conflist")).unwrap();
    std::fs::create_dir(conf.join("sub")).unwrap();
    std::fs::write(conf.join("sub/x"), b"x").unwrap();
    std::fs::write(bin.join("twill"), b"old twill").unwrap();
    std::fs::set_permissions(bin.join("twill"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let snapshot = |p: &Path| {
        // `ls -laR` of the guarded trees' parents, mtimes to the nanosecond; without the
        // lines for `..` (the temp dir is not guarded, and changes when `var` comes and
        // goes), and with whether `var` exists.
        let ls = twill_tests::sh(&[
            "ls",
            "-laR",
            "--time-style=full-iso",
            p.join("etc").to_str().unwrap(),
            p.join("opt").to_str().unwrap(),
        ]);
        let mut lines: Vec<&str> = ls.lines().filter(|l| !l.ends_with(" ..")).collect();
        let var = format!("var exists: {}", p.join("var").exists());
        lines.push(&var);
        lines.join("\n")
    };
    let contents = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let ft = e.file_type().unwrap();
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    v.push((e.path(), std::fs::read(e.path()).unwrap()));
                }
            }
        }
        v.sort();
        v
    };
    let before = (snapshot(t.path()), contents(t.path()));
    let dirs = [conf.as_path(), bin.as_path(), absent.as_path()];
    // Locks, journal and backups live outside the guarded tree, so that the tree's
    // listing before and after is comparable.
    let outside = TempDir::new("guard-journal");
    let lock = |name: &str| outside.path().join(format!("{name}.lock"));
    let journal = outside.path().join("journal");
    let backup = outside.path().join("backup");

    // 1. A guard that installs and modifies, then restores (by drop, during a panic).
    let r = std::panic::catch_unwind(|| {
        let mut g = CniDirsGuard::acquire_at(&dirs, &lock("a"), &journal, &backup);
        g.install(&conf, "00-twill-test.conflist", b"{}", 0o644);
        g.install(&bin, "twill", b"new twill", 0o755);
        g.install(&absent, "results", b"cache", 0o600);
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_file(conf.join("sub/x")).unwrap();
        std::fs::write(conf.join("10-other.conflist"), b"clobbered").unwrap();
        panic!("the test fails halfway");
    });
    assert!(r.is_err());
    assert_eq!((snapshot(t.path()), contents(t.path())), before);
    assert!(!journal.exists() && !backup.exists());

    // 2. A holder killed outright (never dropped): the next guard undoes its installs.
    let mut g = CniDirsGuard::acquire_at(&dirs, &lock("b"), &journal, &backup);
    g.install(&conf, "00-twill-test.conflist", b"{}", 0o644);
    g.install(&bin, "twill", b"new twill", 0o755);
    g.install(&absent, "results", b"cache", 0o600);
    // ... and what the runtime wrote on its own (libcni's cache, say).
    std::fs::write(conf.join("sub/written-by-the-runtime"), b"c").unwrap();
    std::fs::create_dir(bin.join("new-dir")).unwrap();
    std::mem::forget(g);
    assert_ne!(contents(t.path()), before.1);
    let g = CniDirsGuard::acquire_at(&dirs, &lock("c"), &journal, &backup);
    assert_eq!((snapshot(t.path()), contents(t.path())), before);
    g.restore();
    assert_eq!((snapshot(t.path()), contents(t.path())), before);
}
