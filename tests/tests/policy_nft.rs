//! The NetworkPolicy table ([`twill_agent::firewall::policy`]) in the real kernel: a
//! cluster's policies are compiled for the node, rendered, loaded with `nft -f -` inside
//! the node namespace only, and real connections must pass or fail exactly as
//! [`RuleSet::allows`] says.
//!
//! Topology (one set of namespaces per test; the node routes, in its namespace only):
//!
//! ```text
//!   web  10.0.1.2 fd00:1::2  eth0 ══ vweb  10.0.1.1 fd00:1::1  ┐
//!   db   10.0.2.2 fd00:2::2  eth0 ══ vdb   10.0.2.1 fd00:2::1  ├ node (192.168.0.1)
//!   tool 10.0.3.2 fd00:3::2  eth0 ══ vtool 10.0.3.1 fd00:3::1  ┘
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use twill_agent::firewall::policy::{
    deny_counters, render_delete_policy_table, render_policy_table, LogSettings, PolicyDirection,
    PolicyRenderOptions,
};
use twill_policy::{compile, Cluster, Connection, Protocol, RuleSet};
use twill_tests::scenarios::{tcp_ask_once, tcp_connect_within, TcpServer};
use twill_tests::{require_root, Netns};

const TABLE: &str = "twill-policy";
/// A denied connect just times out; an allowed one answers well within this.
const ATTEMPT: Duration = Duration::from_millis(300);
const PORTS: [u16; 3] = [5432, 8000, 8008];
const UDP_PORTS: [u16; 2] = [53, 54];

#[path = "policy_nft/cluster.rs"]
mod cluster;
#[path = "policy_nft/nflog.rs"]
mod nflog;
#[path = "policy_nft/udp.rs"]
mod udp;
use cluster::{pod, policies, policy};
use udp::{udp_echoed, UdpEcho};

struct Topology {
    node: Netns,
    /// (name, namespace, IPv4, IPv6) of each pod.
    pods: Vec<(&'static str, Netns, IpAddr, IpAddr)>,
}

impl Topology {
    fn new() -> Topology {
        require_root();
        let node = Netns::new("pol-node");
        node.sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        node.sh(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let mut pods = Vec::new();
        for (n, name) in ["web", "db", "tool"].into_iter().enumerate() {
            let ns = Netns::new(&format!("pol-{name}"));
            let host = format!("v{name}");
            node.ip(&["link", "add", &host, "type", "veth", "peer", "name", "eth0"]);
            node.ip(&["link", "set", "eth0", "netns", ns.name()]);
            node.ip(&["link", "set", &host, "up"]);
            ns.ip(&["link", "set", "eth0", "up"]);
            let subnet = n + 1;
            node.ip(&["addr", "add", &format!("10.0.{subnet}.1/24"), "dev", &host]);
            node.ip(&[
                "addr",
                "add",
                &format!("fd00:{subnet}::1/64"),
                "dev",
                &host,
                "nodad",
            ]);
            ns.ip(&["addr", "add", &format!("10.0.{subnet}.2/24"), "dev", "eth0"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("fd00:{subnet}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.0.{subnet}.1"),
            ]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{subnet}::1"),
            ]);
            let v4 = format!("10.0.{subnet}.2").parse().expect("pod IPv4");
            let v6 = format!("fd00:{subnet}::2").parse().expect("pod IPv6");
            pods.push((name, ns, v4, v6));
        }
        Topology { node, pods }
    }

    fn nft(&self, script: &str) {
        self.node
            .nft_script(script)
            .unwrap_or_else(|e| panic!("{e}\n{script}"));
    }

    fn load(&self, rules: &RuleSet, opts: &PolicyRenderOptions) {
        self.nft(&render_policy_table(TABLE, rules, opts));
    }

    /// The packets counted by the node's named counter `name`.
    fn counter(&self, name: &str) -> u64 {
        let text = self
            .node
            .sh(&["nft", "list", "counter", "inet", TABLE, name]);
        text.split_whitespace()
            .skip_while(|word| *word != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in {text}"))
    }
}

fn compile_for(t: &Topology, policies: &[Value]) -> RuleSet {
    let namespaces = [
        json!({"metadata": {"name": "prod"}}),
        json!({"metadata": {"name": "dev"}}),
    ];
    let apps = [("web", "prod"), ("db", "prod"), ("tool", "dev")];
    let pods: Vec<Value> = t
        .pods
        .iter()
        .zip(apps)
        .map(|((name, _, v4, v6), (app, ns))| pod(name, app, ns, *v4, *v6))
        .collect();
    let node_ips = BTreeMap::from([("n1".to_string(), vec!["192.168.0.1".parse().expect("ip")])]);
    let cluster = Cluster::from_json(policies, &pods, &namespaces, node_ips);
    assert!(cluster.rejected.is_empty(), "{:?}", cluster.rejected);
    compile(&cluster, "n1")
}

/// Every (src, dst, protocol, port) of both families, tried in parallel: (connection,
/// label, connected). A TCP connection that connects must also bring the server's reply
/// back; UDP counts as connected when the echo comes back.
fn matrix(t: &Topology) -> Vec<(Connection, String, bool)> {
    let mut cells = Vec::new();
    for (src_name, src, src4, src6) in &t.pods {
        for (dst_name, _, dst4, dst6) in &t.pods {
            if src_name == dst_name {
                continue;
            }
            for (s, d) in [(*src4, *dst4), (*src6, *dst6)] {
                for port in PORTS {
                    let label = format!("{src_name} → {dst_name} {d}:{port}");
                    cells.push((src, s, d, Protocol::Tcp, port, label));
                }
                for port in UDP_PORTS {
                    let label = format!("{src_name} → {dst_name} {d}:{port}/udp");
                    cells.push((src, s, d, Protocol::Udp, port, label));
                }
            }
        }
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = cells
            .into_iter()
            .map(|(ns, s, d, protocol, port, label)| {
                scope.spawn(move || {
                    let to = SocketAddr::new(d, port);
                    if protocol == Protocol::Udp {
                        let connection = Connection {
                            src: s,
                            dst: d,
                            protocol,
                            port,
                        };
                        return (connection, label, udp_echoed(ns, to, ATTEMPT));
                    }
                    let connected = tcp_connect_within(ns, to, ATTEMPT).is_ok();
                    if connected {
                        let reply = tcp_ask_once(ns, to).expect("an allowed connection answers");
                        assert_eq!(reply.peer.ip(), s, "{label}: the server saw another source");
                    }
                    let connection = Connection {
                        src: s,
                        dst: d,
                        protocol,
                        port,
                    };
                    (connection, label, connected)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connection thread"))
            .collect()
    })
}

/// Every cell connects exactly when `rules` allows it; returns the labels that did.
fn assert_matches(t: &Topology, rules: &RuleSet) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut passed = Vec::new();
    for (connection, label, connected) in matrix(t) {
        if connected != rules.allows(&connection) {
            wrong.push(format!("{label}: kernel {connected}, rules {}", !connected));
        }
        if connected {
            passed.push(label);
        }
    }
    assert!(
        wrong.is_empty(),
        "kernel and RuleSet disagree:\n{}",
        wrong.join("\n")
    );
    passed
}

fn servers(t: &Topology) -> (Vec<TcpServer>, Vec<UdpEcho>) {
    let (mut tcp, mut udp) = (Vec::new(), Vec::new());
    for (name, ns, v4, v6) in &t.pods {
        for addr in [v4, v6] {
            for port in PORTS {
                let bind = SocketAddr::new(*addr, port);
                tcp.push(TcpServer::start(ns, name, bind).expect("server"));
            }
            for port in UDP_PORTS {
                udp.push(UdpEcho::start(ns, SocketAddr::new(*addr, port)));
            }
        }
    }
    (tcp, udp)
}

#[test]
fn kernel_verdicts_match_the_rule_set() {
    let t = Topology::new();
    let _servers = servers(&t);
    // Without policies there is no table and everything passes: the matrix can fail.
    let none = compile_for(&t, &[]);
    t.load(&none, &PolicyRenderOptions::default());
    assert_eq!(assert_matches(&t, &none).len(), 60);

    let rules = compile_for(&t, &policies());
    t.load(&rules, &PolicyRenderOptions::default());
    let passed = assert_matches(&t, &rules);
    for must in [
        "web → db 10.0.2.2:5432",   // allowed by pod selector (and the reply passes)
        "web → db fd00:2::2:5432",  // the same over IPv6
        "tool → web 10.0.1.2:8000", // ipBlock, inside the range, egress allowed
        "db → tool 10.0.3.2:8008",  // tool is not isolated for ingress
        "web → tool fd00:3::2:5432",
        "tool → db 10.0.2.2:53/udp", // egress and ingress both admit UDP 53; the echo returns
        "web → db fd00:2::2:53/udp",
    ] {
        assert!(
            passed.iter().any(|p| p == must),
            "{must} must pass: {passed:?}"
        );
    }
    for denied in [
        "tool → db 10.0.2.2:5432", // default deny ingress
        "db → web 10.0.1.2:8000",  // the ipBlock's except
        "db → web fd00:1::2:8000",
        "tool → web 10.0.1.2:8008", // ingress allows 8008, tool's egress does not
        "web → db 10.0.2.2:8000",   // port outside the allowed one
        "tool → db 10.0.2.2:8000",  // egress deny (not to web's subnet)
        "db → web 10.0.1.2:53/udp", // web admits no UDP
        "tool → db fd00:2::2:54/udp", // db admits UDP 53 only
    ] {
        assert!(
            !passed.iter().any(|p| p == denied),
            "{denied} must be denied"
        );
    }

    // The denials were counted against their policies: a pod isolated by several
    // against the first by namespace/name (web: "default-deny", before "web-from-block").
    let counters = deny_counters(&rules);
    let name_of = |direction, policy: &str| {
        counters
            .iter()
            .find(|c| {
                c.direction == direction && c.policy.as_ref().is_some_and(|p| p.name == policy)
            })
            .map(|c| c.name.clone())
            .unwrap_or_else(|| panic!("no counter for {policy}: {counters:?}"))
    };
    assert!(t.counter(&name_of(PolicyDirection::Ingress, "db-from-web")) > 0);
    assert!(t.counter(&name_of(PolicyDirection::Ingress, "default-deny")) > 0);
    assert!(t.counter(&name_of(PolicyDirection::Egress, "tool-egress")) > 0);

    // Replacing the table (now logging to an nflog group): without the default deny and
    // db's policy, db is open.
    let fewer: Vec<Value> = policies()
        .into_iter()
        .filter(|p| {
            p["metadata"]["name"] != "default-deny" && p["metadata"]["name"] != "db-from-web"
        })
        .collect();
    let relaxed = compile_for(&t, &fewer);
    let logging = PolicyRenderOptions {
        log_denied: Some(LogSettings {
            group: Some(7),
            per_second: 5,
        }),
    };
    t.load(&relaxed, &logging);
    let listed = t.node.sh(&["nft", "list", "table", "inet", TABLE]);
    assert!(
        listed.contains("log prefix \"twill-policy deny ingress prod/web: \" group 7"),
        "{listed}"
    );
    let capture = nflog::NflogCapture::start(&t.node, 7);
    let started = std::time::Instant::now();
    let passed = assert_matches(&t, &relaxed);
    let logged = capture.stop();
    // Denied connections to web are logged with the pod's name and the packet's
    // addresses and port, and no more often than the rate (burst 5) allows.
    let (web4, web6) = (t.pods[0].2, t.pods[0].3);
    let (db4, db6) = (t.pods[1].2, t.pods[1].3);
    assert!(
        logged
            .iter()
            .any(|l| l.prefix == "twill-policy deny ingress prod/web: "
                && ((l.src, l.dst) == (db4, web4) || (l.src, l.dst) == (db6, web6))
                && PORTS.contains(&l.dport)),
        "no denied db → web connection in the log: {logged:?}"
    );
    assert!(
        logged
            .iter()
            .all(|l| l.prefix.starts_with("twill-policy deny ")),
        "{logged:?}"
    );
    let bound = 5 * (started.elapsed().as_secs() as usize + 1) + 5;
    assert!(
        logged.len() <= bound,
        "{} logged, rate allows {bound}",
        logged.len()
    );
    assert!(passed.iter().any(|p| p == "db → tool 10.0.3.2:5432"));
    assert!(passed.iter().any(|p| p == "web → db 10.0.2.2:8000"));
    assert!(!passed.iter().any(|p| p == "db → web 10.0.1.2:8000"));

    // Policies add up: one admitting anyone on any port opens web to db, UDP included;
    // tool's egress still limits tool. db's new policy has nested peers with overlapping
    // port ranges, which the interval sets take only once made disjoint.
    let mut more = fewer.clone();
    more.push(policy(
        "prod",
        "web-from-anyone",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{}]}),
    ));
    more.push(policy("prod", "db-nested", cluster::nested_peers()));
    let open_web = compile_for(&t, &more);
    t.load(&open_web, &PolicyRenderOptions::default());
    let passed = assert_matches(&t, &open_web);
    assert!(passed.iter().any(|p| p == "db → web 10.0.1.2:8000"));
    assert!(passed.iter().any(|p| p == "db → web fd00:1::2:54/udp"));
    assert!(!passed.iter().any(|p| p == "tool → web 10.0.1.2:8008"));
    assert!(passed.iter().any(|p| p == "web → db 10.0.2.2:8008"));
    assert!(passed.iter().any(|p| p == "web → db fd00:2::2:8000"));
    assert!(!passed.iter().any(|p| p == "web → db fd00:2::2:5432"));
    assert!(passed.iter().any(|p| p == "tool → db 10.0.2.2:53/udp"));

    // Removing every policy leaves nothing behind; so does the delete script, again.
    t.load(&none, &PolicyRenderOptions::default());
    assert_eq!(t.node.sh(&["nft", "list", "ruleset"]).trim(), "");
    assert_eq!(assert_matches(&t, &none).len(), 60);
    t.load(&open_web, &PolicyRenderOptions::default());
    t.nft(&render_delete_policy_table(TABLE));
    assert_eq!(t.node.sh(&["nft", "list", "ruleset"]).trim(), "");
    t.nft(&render_delete_policy_table(TABLE));
}
