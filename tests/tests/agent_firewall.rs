//! The agent's nftables rules ([`twill_agent::firewall::Nft`]) against the real kernel and
//! the real `nft`, inside test namespaces only: `nft` runs on a thread that entered the
//! node namespace, so the root namespace's firewall is never touched.
//!
//! Topology (one set of namespaces per test):
//!
//! ```text
//!   pod      10.244.1.2    fd10:244:0:1::2  eth0 ══ vpod ── twbr0  10.244.1.1    fd10:244:0:1::1  ┐
//!   remote   10.244.2.2    fd10:244:0:2::2  eth0 ══ vremote         10.244.2.1    fd10:244:0:2::1  ├ node
//!   outside  192.168.100.2 fd00:100::2      eth0 ══ underlay        192.168.100.1 fd00:100::1      ┘
//! ```
//!
//! The node forwards (in its namespace only). The outside namespace has no route back to
//! the cluster network, so pod → outside works only when masqueraded, and the address the
//! outside sees tells which.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};
use twill_agent::firewall::{Firewall, FirewallError, FirewallRules, IpNet, Nft, VxlanTraffic};
use twill_netlink::NetNs;
use twill_tests::{require_root, Netns};

const POD4: &str = "10.244.1.2";
const POD6: &str = "fd10:244:0:1::2";
const REMOTE4: &str = "10.244.2.2";
const REMOTE6: &str = "fd10:244:0:2::2";
const OUTSIDE4: &str = "192.168.100.2";
const OUTSIDE6: &str = "fd00:100::2";
const NODE4: &str = "192.168.100.1";
const NODE6: &str = "fd00:100::1";

/// How long one connection attempt may take before it counts as failed.
const ATTEMPT: Duration = Duration::from_secs(1);
/// How long a path that must work may take to start working.
const SETTLE: Duration = Duration::from_secs(10);

const VXLAN: VxlanTraffic = VxlanTraffic { port: 8472, vni: 1 };

fn cluster(ip_masq: bool) -> FirewallRules {
    FirewallRules {
        cluster_networks: vec![net("10.244.0.0/16"), net("fd10:244::/56")],
        ip_masq,
        vxlan: Some(VXLAN),
    }
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

struct Topology {
    node: Netns,
    pod: Netns,
    remote: Netns,
    outside: Netns,
}

impl Topology {
    fn new() -> Topology {
        require_root();
        let t = Topology {
            node: Netns::new("fw-node"),
            pod: Netns::new("fw-pod"),
            remote: Netns::new("fw-remote"),
            outside: Netns::new("fw-out"),
        };
        let (node, pod, remote, outside) = (&t.node, &t.pod, &t.remote, &t.outside);
        node.ip(&["link", "add", "twbr0", "type", "bridge"]);
        addr(node, "twbr0", "10.244.1.1/24");
        addr(node, "twbr0", "fd10:244:0:1::1/64");
        node.ip(&["link", "set", "twbr0", "up"]);

        veth(node, "vpod", pod);
        node.ip(&["link", "set", "vpod", "master", "twbr0"]);
        addr(pod, "eth0", &format!("{POD4}/24"));
        addr(pod, "eth0", &format!("{POD6}/64"));
        default_routes(pod, "10.244.1.1", "fd10:244:0:1::1");

        veth(node, "vremote", remote);
        addr(node, "vremote", "10.244.2.1/24");
        addr(node, "vremote", "fd10:244:0:2::1/64");
        addr(remote, "eth0", &format!("{REMOTE4}/24"));
        addr(remote, "eth0", &format!("{REMOTE6}/64"));
        default_routes(remote, "10.244.2.1", "fd10:244:0:2::1");

        // The outside gets no route to the cluster network.
        veth(node, "underlay", outside);
        addr(node, "underlay", &format!("{NODE4}/24"));
        addr(node, "underlay", &format!("{NODE6}/64"));
        addr(outside, "eth0", &format!("{OUTSIDE4}/24"));
        addr(outside, "eth0", &format!("{OUTSIDE6}/64"));

        t.node.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        t.node
            .sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        t
    }

    /// Runs `f` on a thread inside the node namespace (where the agent runs).
    fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_ns(&self.node, f)
    }

    fn apply(&self, nft: &Nft, rules: &FirewallRules) {
        self.in_node(|| nft.apply(rules))
            .unwrap_or_else(|e| panic!("apply {rules:?}: {e}"));
    }

    fn remove(&self, nft: &Nft) {
        self.in_node(|| nft.remove())
            .unwrap_or_else(|e| panic!("remove: {e}"));
    }

    /// `nft <args>` in the node namespace.
    fn nft(&self, args: &[&str]) -> String {
        let mut argv = vec!["nft"];
        argv.extend_from_slice(args);
        self.node.sh(&argv)
    }

    /// `nft -f -` in the node namespace with `script`.
    fn nft_script(&self, script: &str) {
        let out = self.in_node(|| {
            use std::io::Write;
            let mut child = std::process::Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn nft");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(script.as_bytes())
                .expect("write script");
            child.wait_with_output().expect("wait nft")
        });
        assert!(
            out.status.success(),
            "nft -f - failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Docker's (iptables-nft) forward chains with their drop policy, and a rule of their
    /// own that must survive us.
    fn add_docker_chains(&self) {
        for family in ["ip", "ip6"] {
            self.nft_script(&format!(
                "table {family} filter {{
                    chain FORWARD {{
                        type filter hook forward priority filter; policy drop;
                        oifname \"docker0\" ct state established,related counter accept
                    }}
                }}\n"
            ));
        }
    }

    /// Docker's chains, with handles, without counters.
    fn docker_chains(&self) -> String {
        let mut s = String::new();
        for family in ["ip", "ip6"] {
            s.push_str(&self.nft(&["-a", "list", "chain", family, "filter", "FORWARD"]));
        }
        // Counters move with traffic: leave out the value after `packets` and `bytes`.
        s.lines()
            .map(|l| {
                let mut out = Vec::new();
                let mut skip = false;
                for w in l.split_whitespace() {
                    if skip {
                        skip = false;
                    } else if w == "packets" || w == "bytes" {
                        skip = true;
                    } else {
                        out.push(w);
                    }
                }
                out.join(" ")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn tables(&self) -> String {
        self.nft(&["list", "tables"])
    }
}

/// A veth pair `host` (in `node`, up) ↔ `eth0` (in `peer`, up).
fn veth(node: &Netns, host: &str, peer: &Netns) {
    node.ip(&[
        "link",
        "add",
        host,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        peer.name(),
    ]);
    node.ip(&["link", "set", host, "up"]);
    peer.ip(&["link", "set", "eth0", "up"]);
}

/// Adds an address; IPv6 ones without duplicate address detection, usable at once.
fn addr(ns: &Netns, dev: &str, cidr: &str) {
    if cidr.contains(':') {
        ns.ip(&["addr", "add", cidr, "dev", dev, "nodad"]);
    } else {
        ns.ip(&["addr", "add", cidr, "dev", dev]);
    }
}

fn default_routes(ns: &Netns, gw4: &str, gw6: &str) {
    ns.ip(&["route", "add", "default", "via", gw4]);
    ns.ip(&["-6", "route", "add", "default", "via", gw6]);
}

fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let handle =
        NetNs::open(Path::new(&ns.path())).unwrap_or_else(|e| panic!("open {}: {e}", ns.path()));
    handle
        .run(f)
        .unwrap_or_else(|e| panic!("run in {}: {e}", ns.path()))
}

/// A TCP listener inside a namespace; the address it sees a connection come from is
/// what the tests check.
struct Server {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Server {
    fn start(ns: &Netns, addr: &str) -> Server {
        let bind = SocketAddr::new(ip(addr), 0);
        let listener = in_ns(ns, || TcpListener::bind(bind))
            .unwrap_or_else(|e| panic!("bind {bind} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        Server { listener, addr }
    }

    /// Waits up to `timeout` for a connection and returns its peer address.
    fn accept(&self, timeout: Duration) -> Option<IpAddr> {
        let mut pfd = libc::pollfd {
            fd: self.listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n <= 0 {
            return None;
        }
        self.listener.accept().ok().map(|(_, peer)| peer.ip())
    }

    /// Drops connections a previous attempt left queued.
    fn drain(&self) {
        while self.listener.accept().is_ok() {}
    }
}

/// One connection from `client` to `server`: the source address the server saw, or
/// `None` when it did not get through within [`ATTEMPT`].
fn source_seen(client: &Netns, server: &Server) -> Option<IpAddr> {
    server.drain();
    let to = server.addr;
    let conn: io::Result<TcpStream> = in_ns(client, || TcpStream::connect_timeout(&to, ATTEMPT));
    let _stream = conn.ok()?;
    // The client is connected: the server's side completes within a moment.
    server.accept(ATTEMPT)
}

/// The source address the server sees, waiting up to [`SETTLE`] for the path to work.
fn source_when_up(client: &Netns, server: &Server) -> IpAddr {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(src) = source_seen(client, server) {
            return src;
        }
        assert!(
            Instant::now() < deadline,
            "{} → {} did not get through within {SETTLE:?}",
            client.name(),
            server.addr
        );
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn masquerades_pod_to_outside_but_not_pod_to_pod() {
    let t = Topology::new();
    let nft = Nft::new();
    let out4 = Server::start(&t.outside, OUTSIDE4);
    let out6 = Server::start(&t.outside, OUTSIDE6);
    let rem4 = Server::start(&t.remote, REMOTE4);
    let rem6 = Server::start(&t.remote, REMOTE6);

    // Without rules: pod to pod works with the pod's address; the outside cannot answer.
    assert_eq!(source_when_up(&t.pod, &rem4), ip(POD4));
    assert_eq!(source_when_up(&t.pod, &rem6), ip(POD6));
    assert_eq!(
        source_seen(&t.pod, &out4),
        None,
        "outside reached unmasqueraded"
    );
    assert_eq!(
        source_seen(&t.pod, &out6),
        None,
        "outside reached unmasqueraded"
    );

    t.apply(&nft, &cluster(true));
    assert_eq!(source_when_up(&t.pod, &out4), ip(NODE4));
    assert_eq!(source_when_up(&t.pod, &out6), ip(NODE6));
    assert_eq!(source_when_up(&t.pod, &rem4), ip(POD4));
    assert_eq!(source_when_up(&t.pod, &rem6), ip(POD6));
    // The node's own traffic to the outside is not from the cluster network: untouched.
    assert_eq!(source_when_up(&t.node, &out4), ip(NODE4));

    t.remove(&nft);
    assert!(!t.tables().contains("twill"), "{}", t.tables());
    assert_eq!(
        source_seen(&t.pod, &out4),
        None,
        "still masqueraded after remove"
    );
    assert_eq!(
        source_seen(&t.pod, &out6),
        None,
        "still masqueraded after remove"
    );
    assert_eq!(source_when_up(&t.pod, &rem4), ip(POD4));
}

#[test]
fn accepts_cluster_forwarding_through_docker_drop_policy() {
    let t = Topology::new();
    let nft = Nft::new();
    let rem4 = Server::start(&t.remote, REMOTE4);
    let rem6 = Server::start(&t.remote, REMOTE6);
    let out4 = Server::start(&t.outside, OUTSIDE4);
    // The path works, until Docker's chains drop it.
    assert_eq!(source_when_up(&t.pod, &rem4), ip(POD4));
    t.add_docker_chains();
    let docker_before = t.docker_chains();
    assert_eq!(
        source_seen(&t.pod, &rem4),
        None,
        "Docker's drop policy had no effect"
    );
    assert_eq!(
        source_seen(&t.pod, &rem6),
        None,
        "Docker's drop policy had no effect"
    );

    t.apply(&nft, &cluster(true));
    assert_eq!(source_when_up(&t.pod, &rem4), ip(POD4));
    assert_eq!(source_when_up(&t.pod, &rem6), ip(POD6));
    // Forwarding out of the cluster network is accepted too (and masqueraded).
    assert_eq!(source_when_up(&t.pod, &out4), ip(NODE4));
    for family in ["ip", "ip6"] {
        let chain = t.nft(&["list", "chain", family, "filter", "FORWARD"]);
        assert_eq!(count(&chain, "comment \"twill\""), 2, "{chain}");
        // Ours come first, before Docker's own rule.
        let first = chain
            .lines()
            .map(str::trim)
            .find(|l| l.contains("accept"))
            .unwrap_or("");
        assert!(first.ends_with("comment \"twill\""), "{chain}");
    }
    let ip_chain = t.nft(&["list", "chain", "ip", "filter", "FORWARD"]);
    assert!(
        ip_chain.contains("ip saddr 10.244.0.0/16 counter"),
        "{ip_chain}"
    );
    assert!(
        ip_chain.contains("ip daddr 10.244.0.0/16 counter"),
        "{ip_chain}"
    );
    let ip6_chain = t.nft(&["list", "chain", "ip6", "filter", "FORWARD"]);
    assert!(
        ip6_chain.contains("ip6 saddr fd10:244::/56 counter"),
        "{ip6_chain}"
    );

    t.remove(&nft);
    assert_eq!(
        source_seen(&t.pod, &rem4),
        None,
        "still accepted after remove"
    );
    assert_eq!(
        source_seen(&t.pod, &rem6),
        None,
        "still accepted after remove"
    );
    assert_eq!(t.docker_chains(), docker_before, "Docker's chains changed");
    assert!(!t.tables().contains("inet twill"), "{}", t.tables());
}

#[test]
fn apply_is_idempotent_and_follows_changes() {
    let t = Topology::new();
    let nft = Nft::new();
    t.add_docker_chains();
    let rules = cluster(true);

    t.apply(&nft, &rules);
    let table = t.nft(&["list", "table", "inet", "twill"]);
    let docker = t.docker_chains();
    t.apply(&nft, &rules);
    assert_eq!(t.nft(&["list", "table", "inet", "twill"]), table);
    // Not even replaced: the same handles.
    assert_eq!(t.docker_chains(), docker);
    assert_eq!(count(&table, "masquerade fully-random"), 2, "{table}");
    assert_eq!(count(&table, "ip saddr 10.244.0.0/16 accept"), 1, "{table}");
    assert_eq!(
        count(&table, "ip6 daddr fd10:244::/56 accept"),
        1,
        "{table}"
    );
    assert_eq!(count(&docker, "comment \"twill\""), 4, "{docker}");

    // How long one apply takes, Docker's chains present (list chains, two chain
    // listings, one transaction).
    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let start = Instant::now();
            t.apply(&nft, &rules);
            start.elapsed()
        })
        .collect();
    times.sort();
    eprintln!(
        "apply with Docker chains: min {:?}, median {:?}, max {:?}",
        times[0], times[10], times[19]
    );
    assert_eq!(t.docker_chains(), docker);

    // A changed cluster network: the table follows, stale FORWARD rules go.
    let changed = FirewallRules {
        cluster_networks: vec![net("10.245.0.0/16")],
        ip_masq: false,
        vxlan: None,
    };
    t.apply(&nft, &changed);
    let table = t.nft(&["list", "table", "inet", "twill"]);
    assert!(!table.contains("masquerade"), "{table}");
    assert!(!table.contains("postrouting"), "{table}");
    assert!(!table.contains("notrack"), "{table}");
    assert!(!table.contains("10.244."), "{table}");
    assert!(table.contains("ip saddr 10.245.0.0/16 accept"), "{table}");
    let docker = t.docker_chains();
    assert!(!docker.contains("10.244."), "{docker}");
    assert!(!docker.contains("fd10:244"), "{docker}");
    assert_eq!(count(&docker, "comment \"twill\""), 2, "{docker}");

    // A rule of ours someone deleted comes back; a copy someone added goes.
    let handle_of_saddr = docker
        .lines()
        .find(|l| l.contains("ip saddr 10.245.0.0/16"))
        .and_then(|l| l.rsplit("# handle ").next())
        .expect("our saddr rule")
        .trim()
        .to_string();
    t.nft(&[
        "delete",
        "rule",
        "ip",
        "filter",
        "FORWARD",
        "handle",
        &handle_of_saddr,
    ]);
    t.nft(&[
        "add",
        "rule",
        "ip",
        "filter",
        "FORWARD",
        "ip",
        "daddr",
        "10.245.0.0/16",
        "counter",
        "accept",
        "comment",
        "\"twill\"",
    ]);
    t.apply(&nft, &changed);
    let docker = t.docker_chains();
    assert_eq!(
        count(
            &docker,
            "ip saddr 10.245.0.0/16 counter accept comment \"twill\""
        ),
        1,
        "{docker}"
    );
    assert_eq!(
        count(
            &docker,
            "ip daddr 10.245.0.0/16 counter accept comment \"twill\""
        ),
        1,
        "{docker}"
    );
}

#[test]
fn ip_masq_off_keeps_pod_addresses() {
    let t = Topology::new();
    let nft = Nft::new();
    let out4 = Server::start(&t.outside, OUTSIDE4);
    let rem4 = Server::start(&t.remote, REMOTE4);
    t.apply(&nft, &cluster(false));
    assert_eq!(source_when_up(&t.pod, &rem4), ip(POD4));
    assert_eq!(
        source_seen(&t.pod, &out4),
        None,
        "masqueraded with ip_masq off"
    );
    // Switching it on takes effect for new connections.
    t.apply(&nft, &cluster(true));
    assert_eq!(source_when_up(&t.pod, &out4), ip(NODE4));
    t.remove(&nft);
}

#[test]
fn without_docker_nothing_else_is_created_and_remove_is_idempotent() {
    let t = Topology::new();
    let nft = Nft::new();
    // Remove with nothing there.
    t.remove(&nft);
    assert_eq!(t.tables().trim(), "");

    let mut times: Vec<Duration> = (0..20)
        .map(|_| {
            let start = Instant::now();
            t.apply(&nft, &cluster(true));
            start.elapsed()
        })
        .collect();
    times.sort();
    eprintln!(
        "apply without Docker chains: min {:?}, median {:?}, max {:?}",
        times[0], times[10], times[19]
    );
    // Only our table: no `ip filter` created.
    assert_eq!(t.tables().trim(), "table inet twill");

    t.remove(&nft);
    t.remove(&nft);
    assert_eq!(t.tables().trim(), "");
}

#[test]
fn tables_of_other_names_are_independent() {
    let t = Topology::new();
    t.add_docker_chains();
    let a = Nft::with_table("twill_a");
    let b = Nft::with_table("twill_b");
    t.apply(&a, &cluster(true));
    t.apply(&b, &cluster(false));
    t.remove(&a);
    let tables = t.tables();
    assert!(
        tables.contains("inet twill_b") && !tables.contains("twill_a"),
        "{tables}"
    );
    let docker = t.docker_chains();
    assert_eq!(count(&docker, "comment \"twill_b\""), 4, "{docker}");
    assert_eq!(count(&docker, "comment \"twill_a\""), 0, "{docker}");
    // A name nft would misread is refused before anything runs.
    let bad = Nft::with_table("x; flush ruleset");
    let refused = t.in_node(|| bad.apply(&cluster(true)));
    assert!(
        matches!(refused, Err(FirewallError::TableName(_))),
        "{refused:?}"
    );
    assert!(t.tables().contains("inet twill_b"));
}

/// The packets counted by the rule of `chain` (in table `inet probe`) whose text
/// contains `what`.
fn probe_count(t: &Topology, chain: &str, what: &str) -> u64 {
    let listing = t.nft(&["list", "chain", "inet", "probe", chain]);
    let line = listing
        .lines()
        .find(|l| l.contains(what) && l.contains("counter"))
        .unwrap_or_else(|| panic!("no counted rule with {what:?} in\n{listing}"));
    let mut words = line.split_whitespace();
    words
        .find(|w| *w == "packets")
        .and_then(|_| words.next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {line:?}"))
}

/// The node's own VXLAN packets leave untracked, so no nat chain sees them, over an
/// IPv4 and an IPv6 underlay; other UDP to the VXLAN port stays tracked. A probe
/// table counts what conntrack and the nat hook see; without Twill's table the same
/// VXLAN packets are tracked and reach the masquerade rule (the probe can fail).
#[test]
fn own_vxlan_packets_leave_untracked_over_ipv4_and_ipv6_underlays() {
    let t = Topology::new();
    let nft = Nft::new();
    t.nft_script(
        "table inet probe {
            chain seen {
                type filter hook output priority filter; policy accept;
                udp dport 8472 ct state untracked counter
                udp dport 8472 ct state != untracked counter
            }
            chain post {
                type nat hook postrouting priority srcnat; policy accept;
                udp dport 8472 counter masquerade fully-random
            }
        }\n",
    );
    // (device, local address, remote VTEP, an address in the overlay to send to)
    let underlays = [
        ("vx4", NODE4, OUTSIDE4, "10.99.4.2", "10.99.4.1/24"),
        ("vx6", NODE6, OUTSIDE6, "fd99:6::2", "fd99:6::1/64"),
    ];
    let mut sent = 0;
    // Sends `n` datagrams through each VXLAN device and to the VXLAN port directly.
    let send = |n: usize, plain: bool| {
        for (_, _, remote, inner, _) in underlays {
            let to: SocketAddr = if plain {
                SocketAddr::new(ip(remote), 8472)
            } else {
                SocketAddr::new(ip(inner), 9)
            };
            t.in_node(|| {
                let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let sock = std::net::UdpSocket::bind(bind).expect("udp socket");
                for _ in 0..n {
                    sock.send_to(b"not vxlan", to).expect("send");
                }
            });
        }
    };
    for (dev, local, remote, inner, own) in underlays {
        t.node.ip(&[
            "link",
            "add",
            dev,
            "type",
            "vxlan",
            "id",
            "1",
            "local",
            local,
            "dev",
            "underlay",
            "dstport",
            "8472",
            "nolearning",
        ]);
        t.node.ip(&["link", "set", dev, "up"]);
        addr(&t.node, dev, own);
        t.node.ip(&[
            "neigh",
            "replace",
            inner,
            "lladdr",
            "0a:00:00:00:00:02",
            "dev",
            dev,
            "nud",
            "permanent",
        ]);
        t.node.sh(&[
            "bridge",
            "fdb",
            "append",
            "0a:00:00:00:00:02",
            "dev",
            dev,
            "dst",
            remote,
            "self",
            "permanent",
        ]);
    }

    // Without Twill's table: tracked, and masqueraded by a rule matching them.
    send(3, false);
    sent += 6;
    let tracked = probe_count(&t, "seen", "!= untracked");
    assert_eq!(
        tracked, sent,
        "VXLAN packets not tracked before Twill's table"
    );
    assert!(probe_count(&t, "post", "masquerade") > 0);

    t.apply(&nft, &cluster(true));
    let natted = probe_count(&t, "post", "masquerade");
    send(5, false);
    assert_eq!(
        probe_count(&t, "seen", "ct state untracked"),
        10,
        "the node's VXLAN packets over IPv4 and IPv6 must leave untracked"
    );
    assert_eq!(probe_count(&t, "seen", "!= untracked"), tracked);
    assert_eq!(probe_count(&t, "post", "masquerade"), natted);

    // Plain UDP to the VXLAN port (a Service on that port, say) keeps its NAT.
    send(2, true);
    assert_eq!(probe_count(&t, "seen", "!= untracked"), tracked + 4);
    assert!(probe_count(&t, "post", "masquerade") > natted);

    // Gone with the table.
    t.remove(&nft);
    let before = probe_count(&t, "seen", "!= untracked");
    send(1, false);
    assert_eq!(probe_count(&t, "seen", "!= untracked"), before + 2);
}
