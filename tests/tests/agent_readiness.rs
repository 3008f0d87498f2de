//! A node that cannot do its job says so (issue 14 §1): the agent is not ready while
//! its firewall table is not in place, names what is missing and what fixes it, and
//! puts a table deleted or flushed by hand back within one resync, counting it; the
//! plugin's STATUS answers 50 with the reason meanwhile. An unwritable CNI config dir
//! is named the same way; forwarding turned off is turned on again at the next resync.

use serde_json::Value;
use std::time::Duration;
use twill_tests::cluster::{tail, wait_until, Cluster, ClusterSpec};
use twill_tests::promtool::http_body;
use twill_tests::require_root;
use twill_tests::{CniCall, CniOutcome, Plugin};

/// A sample of the agent's /metrics (no labels).
fn metric(c: &Cluster, name: &str) -> Option<f64> {
    let text = c.nodes[0].http_get("/metrics");
    http_body(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The plugin's config on node 1, as a runtime with a 1.1.0 list would send it.
fn status_conf(c: &Cluster) -> Value {
    let mut conf = c.plugin_conf(0).unwrap_or_else(|e| panic!("{e}"));
    // The agent writes a 1.0.0 conflist (what containerd 1.6's libcni reads); STATUS
    // is 1.1.0's.
    conf["cniVersion"] = "1.1.0".into();
    conf
}

fn plugin_status(c: &Cluster, conf: &Value) -> CniOutcome {
    Plugin::new(&c.nodes[0].ns).call(&CniCall::new("STATUS", conf))
}

fn has_table(c: &Cluster) -> bool {
    c.nodes[0]
        .ns
        .sh(&["nft", "list", "tables"])
        .contains("inet twill")
}

#[test]
fn without_its_firewall_a_node_is_not_ready_and_a_deleted_table_comes_back() {
    require_root();
    let mut c = Cluster::new(ClusterSpec::with_nodes(1));

    // 1. No `nft` on the agent's PATH (nftables not installed): everything else works,
    // but the node must not claim to be ready.
    let mut cmd = c.agent_command(0, None);
    cmd.env("PATH", "/usr/bin:/bin");
    c.spawn_agent(0, cmd);
    let mut said = String::new();
    let explained = wait_until(Duration::from_secs(20), || {
        said = c.nodes[0].http_get("/readyz");
        said.contains("firewall table not in place") && said.contains("nftables")
    });
    assert!(
        explained,
        "/readyz must name the missing firewall: {said}\n{}",
        tail(&c.nodes[0].log(), 10)
    );
    assert!(said.starts_with("HTTP/1.0 503"), "{said}");
    assert_eq!(metric(&c, "twill_firewall_ok"), Some(0.0));
    assert_eq!(metric(&c, "twill_ready"), Some(0.0));
    let status = c.nodes[0].status().expect("status");
    assert!(
        status.to_string().contains("firewall table not in place"),
        "{status}"
    );
    assert!(!has_table(&c));
    // The plugin's STATUS (asked through the agent's store service) says so too: 50.
    let status = plugin_status(&c, &status_conf(&c));
    assert_eq!(
        status.error_code(),
        Some(50),
        "{} {}",
        status.stdout,
        status.stderr
    );
    assert!(
        status.stdout.contains("firewall table not in place"),
        "{}",
        status.stdout
    );

    // 2. With nft: ready, table in place, STATUS fine.
    c.start_agent(0);
    c.expect_ready(Duration::from_secs(20));
    let status = plugin_status(&c, &status_conf(&c));
    assert!(status.success(), "{} {}", status.stdout, status.stderr);
    assert!(has_table(&c));
    assert_eq!(metric(&c, "twill_firewall_ok"), Some(1.0));
    assert_eq!(metric(&c, "twill_firewall_repairs_total"), Some(0.0));

    // 3. Deleted by hand, then the whole ruleset flushed: back within one resync (2 s
    // here) each time, and counted.
    let within = Duration::from_secs_f64(c.spec.resync_secs) + Duration::from_secs(3);
    let n = &c.nodes[0];
    for (k, how) in [
        &["nft", "delete", "table", "inet", "twill"][..],
        &["nft", "flush", "ruleset"][..],
    ]
    .iter()
    .enumerate()
    {
        n.ns.sh(how);
        assert!(!has_table(&c), "{how:?} left the table");
        assert!(
            wait_until(within, || has_table(&c)
                && metric(&c, "twill_firewall_repairs_total")
                    == Some(k as f64 + 1.0)),
            "after {how:?}: table {}, repairs {:?}\n{}",
            has_table(&c),
            metric(&c, "twill_firewall_repairs_total"),
            tail(&n.log(), 10)
        );
    }
    assert!(n
        .log()
        .contains("was deleted since the last apply; put back"));
    assert!(c.nodes[0].ready());

    // 4. Forwarding turned off on the node (a sysctl reload): on again within a resync.
    n.ns.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    assert!(
        wait_until(within, || n
            .ns
            .sh(&["sysctl", "-n", "net.ipv4.ip_forward"])
            .trim()
            == "1"),
        "forwarding stayed off\n{}",
        tail(&n.log(), 10)
    );

    // 5. The CNI config dir not writable (here: a file where the directory should be):
    // not ready, naming it, STATUS 50; ready again once it can be written.
    let conf = status_conf(&c);
    let conf_dir = n.files.cni_conf_dir.clone();
    std::fs::remove_dir_all(&conf_dir).expect("removing the conf dir");
    std::fs::write(&conf_dir, b"not a directory").expect("a file in its place");
    let mut said = String::new();
    let explained = wait_until(within, || {
        said = n.http_get("/readyz");
        said.contains("the CNI files are not written")
            && said.contains(&conf_dir.display().to_string())
    });
    assert!(explained, "/readyz: {said}\n{}", tail(&n.log(), 10));
    let status = plugin_status(&c, &conf);
    assert_eq!(status.error_code(), Some(50), "{}", status.stdout);
    std::fs::remove_file(&conf_dir).expect("removing the file");
    assert!(
        wait_until(within, || c.nodes[0].ready()),
        "not ready again: {}",
        c.nodes[0].http_get("/readyz")
    );
}
