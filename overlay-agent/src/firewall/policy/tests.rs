use super::*;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::sync::Arc;
use twill_policy::ruleset::{AllowEntry, PeerMatch, PodRules, PortMatch, PortRange};
use twill_policy::Protocol;

fn net(text: &str) -> IpNet {
    text.parse().expect("test network")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn nets(texts: &[&str]) -> Vec<IpNet> {
    texts.iter().map(|t| net(t)).collect()
}

fn policy(name: &str) -> PolicyRef {
    PolicyRef {
        namespace: "prod".to_string(),
        name: name.to_string(),
    }
}

fn entry(peer: PeerMatch, ports: &[(Protocol, u16, u16)], from: &str) -> AllowEntry {
    AllowEntry {
        peer,
        ports: if ports.is_empty() {
            PortMatch::Any
        } else {
            PortMatch::List(
                ports
                    .iter()
                    .map(|&(protocol, start, end)| PortRange {
                        protocol,
                        start,
                        end,
                    })
                    .collect(),
            )
        },
        policy: policy(from),
    }
}

fn pod(name: &str, ingress: Isolation, egress: Isolation) -> PodRules {
    PodRules {
        namespace: "prod".to_string(),
        name: name.to_string(),
        ingress,
        egress,
    }
}

/// Isolated by the entries' policies, or by a default-deny `deny-all` when none allow.
fn isolated(entries: Vec<AllowEntry>) -> Isolation {
    let mut by: BTreeSet<PolicyRef> = entries.iter().map(|e| e.policy.clone()).collect();
    if by.is_empty() {
        by.insert(policy("deny-all"));
    }
    Isolation::Isolated {
        by,
        entries: entries.into_iter().collect(),
    }
}

fn rules(pods: Vec<(&str, PodRules)>) -> RuleSet {
    RuleSet {
        node: "n1".to_string(),
        node_ips: BTreeSet::from([ip("192.168.0.1")]),
        pods: pods.into_iter().map(|(a, p)| (ip(a), p.into())).collect(),
        rejected: Vec::new(),
    }
}

#[test]
fn cidr_minus_except() {
    let none = BTreeSet::new();
    assert_eq!(cidr_minus(net("10.0.0.7/8"), &none), nets(&["10.0.0.0/8"]));
    let except = BTreeSet::from([net("10.1.0.0/16")]);
    assert_eq!(
        cidr_minus(net("10.0.0.0/14"), &except),
        nets(&["10.0.0.0/16", "10.2.0.0/15"])
    );
    // Excepts outside the CIDR do nothing; one covering it leaves nothing.
    let outside = BTreeSet::from([net("192.168.0.0/16")]);
    assert_eq!(
        cidr_minus(net("10.0.0.0/8"), &outside),
        nets(&["10.0.0.0/8"])
    );
    let covering = BTreeSet::from([net("0.0.0.0/0")]);
    assert_eq!(
        cidr_minus(net("10.0.0.0/8"), &covering),
        Vec::<IpNet>::new()
    );
    // Two holes, one inside the other's remainder, and a single address.
    let two = BTreeSet::from([net("10.0.0.0/26"), net("10.0.0.128/32")]);
    let left = cidr_minus(net("10.0.0.0/24"), &two);
    assert_eq!(
        left,
        nets(&[
            "10.0.0.64/26",
            "10.0.0.129/32",
            "10.0.0.130/31",
            "10.0.0.132/30",
            "10.0.0.136/29",
            "10.0.0.144/28",
            "10.0.0.160/27",
            "10.0.0.192/26",
        ])
    );
    let v6 = BTreeSet::from([net("fd00::/65")]);
    assert_eq!(
        cidr_minus(net("fd00::/64"), &v6),
        nets(&["fd00::8000:0:0:0/65"])
    );
}

#[test]
fn cidr_minus_matches_membership() {
    let cidr = net("10.0.0.0/24");
    let except = BTreeSet::from([
        net("10.0.0.16/28"),
        net("10.0.0.200/29"),
        net("10.0.0.5/32"),
    ]);
    let parts = cidr_minus(cidr, &except);
    for last in 0..=255u8 {
        let addr = ip(&format!("10.0.0.{last}"));
        let expected = !except.iter().any(|e| e.contains(&addr));
        let covered = parts.iter().filter(|p| p.contains(&addr)).count();
        assert_eq!(covered, usize::from(expected), "{addr}");
    }
}

#[test]
fn default_deny_pod_renders_exactly() {
    let set = rules(vec![(
        "10.0.1.2",
        pod("db", isolated(vec![]), Isolation::NotIsolated),
    )]);
    let script = render_policy_table("twp", &set, &PolicyRenderOptions::default());
    assert!(script.starts_with("add table inet twp\ndelete table inet twp\ntable inet twp {\n"));
    for part in [
        "    counter deny_ingress_0 {\n    }\n",
        "    set node_v4 {\n        type ipv4_addr\n        elements = { 192.168.0.1 }\n    }\n",
        "    map ingress_v4 {\n        type ipv4_addr : verdict\n        elements = { 10.0.1.2 : jump ingress_pod_0 }\n    }\n",
        "    map egress_v4 {\n        type ipv4_addr : verdict\n    }\n",
        // Its own address first: a pod reaching itself is never judged.
        "    chain ingress_pod_0 {\n        ip saddr 10.0.1.2 return\n        counter name \"deny_ingress_0\" drop\n    }\n",
        "        ct state established,related accept\n        ip saddr @node_v4 accept\n        ip daddr @node_v4 accept\n",
        "        ip daddr vmap @ingress_v4\n",
    ] {
        assert!(script.contains(part), "missing {part:?} in\n{script}");
    }
    assert!(!script.contains("log"), "{script}");
    assert!(!script.contains("set peers_"), "{script}");
    // Egress checks come before ingress checks.
    let egress = script.find("saddr vmap @egress_v4").unwrap_or(usize::MAX);
    let ingress = script.find("daddr vmap @ingress_v4").unwrap_or(0);
    assert!(egress < ingress, "{script}");
    assert!(script.ends_with("    }\n}\n"));
}

/// The `elements = { … }` of set `name`, split; panics if the set is absent.
fn set_elements(script: &str, name: &str) -> Vec<String> {
    let start = script
        .find(&format!("    set {name} {{\n"))
        .unwrap_or_else(|| panic!("no set {name} in\n{script}"));
    let body = &script[start..];
    let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
    body.lines()
        .find_map(|l| l.trim().strip_prefix("elements = { "))
        .map(|l| {
            l.trim_end_matches(" }")
                .split(", ")
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The body lines of chain `name`.
fn chain_rules(script: &str, name: &str) -> Vec<String> {
    let start = script
        .find(&format!("    chain {name} {{\n"))
        .unwrap_or_else(|| panic!("no chain {name} in\n{script}"));
    script[start..]
        .lines()
        .skip(1)
        .take_while(|l| *l != "    }")
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn entries_become_shared_disjoint_sets() {
    let except = BTreeSet::from([net("10.9.0.0/16")]);
    let web_peers = BTreeSet::from([ip("10.0.2.1"), ip("10.0.2.2"), ip("fd00::1")]);
    let entries = || {
        isolated(vec![
            entry(PeerMatch::Any, &[(Protocol::Tcp, 80, 90)], "a"),
            entry(
                PeerMatch::Cidr {
                    cidr: net("10.0.0.0/14"),
                    except: except.clone(),
                },
                &[
                    (Protocol::Tcp, 85, 100),
                    (Protocol::Tcp, 95, 110),
                    (Protocol::Udp, 53, 53),
                ],
                "b",
            ),
            entry(PeerMatch::Addrs(web_peers.clone().into()), &[], "b"),
            // The same peers and ports from another policy: no second rule.
            entry(PeerMatch::Addrs(web_peers.clone().into()), &[], "c"),
            // Admits nothing: no rule.
            entry(PeerMatch::Addrs(BTreeSet::new().into()), &[], "c"),
        ])
    };
    let set = rules(vec![
        ("10.0.1.2", pod("db", entries(), Isolation::NotIsolated)),
        ("10.0.1.3", pod("db2", entries(), Isolation::NotIsolated)),
    ]);
    let script = render_policy_table("twp", &set, &PolicyRenderOptions::default());
    // Two pods with the same entries share every set: declared once each.
    assert_eq!(script.matches("    set peers_").count(), 3, "{script}");
    assert_eq!(script.matches("    set ports_").count(), 2, "{script}");
    assert_eq!(
        set_elements(&script, "peers_0_v4"),
        ["10.0.2.1", "10.0.2.2"]
    );
    assert_eq!(set_elements(&script, "peers_0_v6"), ["fd00::1"]);
    assert_eq!(set_elements(&script, "peers_1_v4"), ["10.0.0.0/14"]);
    assert_eq!(set_elements(&script, "ports_0"), ["tcp . 80-90"]);
    // Overlapping ranges merged, so the interval set accepts them.
    assert_eq!(
        set_elements(&script, "ports_1"),
        ["tcp . 85-110", "udp . 53"]
    );
    let expected = [
        "ip saddr 10.0.1.2 return",
        "ip saddr @peers_0_v4 return",
        "ip saddr @peers_1_v4 meta l4proto . th dport @ports_1 return",
        "ip6 saddr @peers_0_v6 return",
        "meta l4proto . th dport @ports_0 return",
        "counter name \"deny_ingress_0\" drop",
    ];
    assert_eq!(chain_rules(&script, "ingress_pod_0"), expected);
    // Both pods count against policy "a"; each chain starts with its own pod's address.
    let mut second = expected.map(str::to_string);
    second[0] = "ip saddr 10.0.1.3 return".into();
    assert_eq!(chain_rules(&script, "ingress_pod_1"), second);
}

#[test]
fn ipblock_except_becomes_disjoint_prefixes() {
    let ingress = isolated(vec![entry(
        PeerMatch::Cidr {
            cidr: net("10.0.0.0/14"),
            except: BTreeSet::from([net("10.1.0.0/16")]),
        },
        &[],
        "b",
    )]);
    let set = rules(vec![(
        "10.0.1.2",
        pod("db", ingress, Isolation::NotIsolated),
    )]);
    let script = render_policy_table("twp", &set, &PolicyRenderOptions::default());
    assert!(
        script.contains("    set peers_0_v4 {\n        type ipv4_addr\n        flags interval\n"),
        "{script}"
    );
    assert_eq!(
        set_elements(&script, "peers_0_v4"),
        ["10.0.0.0/16", "10.2.0.0/15"]
    );
}

#[test]
fn ipv6_and_counters_per_policy() {
    let egress = isolated(vec![
        entry(PeerMatch::Any, &[(Protocol::Udp, 53, 53)], "dns"),
        entry(
            PeerMatch::Addrs(BTreeSet::from([ip("fd00::9")]).into()),
            &[],
            "api",
        ),
    ]);
    let set = rules(vec![
        (
            "10.0.1.3",
            pod("web", Isolation::NotIsolated, egress.clone()),
        ),
        ("fd00::3", pod("web", Isolation::NotIsolated, egress)),
    ]);
    let opts = PolicyRenderOptions {
        log_denied: Some(LogSettings {
            group: Some(5),
            per_second: 10,
        }),
    };
    let script = render_policy_table("twp", &set, &opts);
    for part in [
        "elements = { udp . 53 }",
        "    set peers_0_v6 {\n        type ipv6_addr\n        elements = { fd00::9 }\n",
        "elements = { 10.0.1.3 : jump egress_pod_0 }",
        "elements = { fd00::3 : jump egress_pod_0 }",
        "    limit log_denied {\n        rate 10/second\n    }\n",
        "limit name \"log_denied\" log prefix \"twill-policy deny egress prod/web: \" group 5\n",
        "counter name \"deny_egress_0\" drop",
        "        ip6 saddr vmap @egress_v6\n",
        "        ip6 daddr @peers_0_v6 return\n",
    ] {
        assert!(script.contains(part), "missing {part:?} in\n{script}");
    }
    assert!(!script.contains("set peers_0_v4"), "{script}");
    // One pod, one chain for both its addresses; counted against the first policy.
    assert_eq!(script.matches("chain egress_pod_").count(), 1);
    assert_eq!(
        deny_counters(&set),
        vec![DenyCounter {
            name: "deny_egress_0".to_string(),
            direction: PolicyDirection::Egress,
            policy: Some(policy("api")),
        }]
    );
}

#[test]
fn rendering_is_deterministic_and_log_prefix_bounded() {
    let long = "x".repeat(300);
    let make = || {
        rules(vec![
            ("10.0.1.5", pod(&long, isolated(vec![]), isolated(vec![]))),
            (
                "10.0.1.4",
                pod(
                    "b",
                    isolated(vec![entry(PeerMatch::Any, &[], "p")]),
                    Isolation::NotIsolated,
                ),
            ),
        ])
    };
    let opts = PolicyRenderOptions {
        log_denied: Some(LogSettings {
            group: None,
            per_second: 1,
        }),
    };
    let first = render_policy_table("twp", &make(), &opts);
    assert_eq!(first, render_policy_table("twp", &make(), &opts));
    for line in first.lines().filter(|l| l.contains("log prefix")) {
        let prefix = line.split('"').nth(3).unwrap_or_default();
        assert!(prefix.len() <= 127 && prefix.ends_with(": "), "{line}");
    }
    assert!(!first.contains(" group "), "{first}");
    // Per direction, one counter per isolating policy, by namespace/name; the default
    // deny has one of its own.
    let counters: Vec<(String, Option<String>)> = deny_counters(&make())
        .into_iter()
        .map(|c| (c.name, c.policy.map(|p| p.name)))
        .collect();
    let named = |n: &str, p: &str| (n.to_string(), Some(p.to_string()));
    assert_eq!(
        counters,
        [
            named("deny_ingress_0", "deny-all"),
            named("deny_ingress_1", "p"),
            named("deny_egress_0", "deny-all"),
        ]
    );
}

#[test]
fn no_isolated_pod_means_no_table() {
    let open = rules(vec![(
        "10.0.1.2",
        pod("db", Isolation::NotIsolated, Isolation::NotIsolated),
    )]);
    let script = render_policy_table("twp", &open, &PolicyRenderOptions::default());
    assert_eq!(script, render_delete_policy_table("twp"));
    assert!(deny_counters(&open).is_empty());
}

#[test]
fn delete_script_tolerates_absent_table() {
    assert_eq!(
        render_delete_policy_table("twp"),
        "add table inet twp\ndelete table inet twp\n"
    );
}

#[test]
fn entries_on_the_same_ports_become_one_rule_over_their_union() {
    let web = [(Protocol::Tcp, 80, 80)];
    let ingress = isolated(vec![
        entry(
            PeerMatch::Addrs(BTreeSet::from([ip("10.0.2.1")]).into()),
            &web,
            "a",
        ),
        entry(
            PeerMatch::Addrs(BTreeSet::from([ip("10.1.0.7"), ip("fd00::7")]).into()),
            &web,
            "b",
        ),
        // Holds 10.1.0.7: the union keeps the prefix only.
        entry(
            PeerMatch::Cidr {
                cidr: net("10.1.0.0/16"),
                except: BTreeSet::new(),
            },
            &web,
            "c",
        ),
        entry(
            PeerMatch::Addrs(BTreeSet::from([ip("10.0.9.9")]).into()),
            &[],
            "d",
        ),
    ]);
    let set = rules(vec![(
        "10.0.1.2",
        pod("db", ingress, Isolation::NotIsolated),
    )]);
    let script = render_policy_table("twp", &set, &PolicyRenderOptions::default());
    let rules = chain_rules(&script, "ingress_pod_0");
    // Own address, any port from d, port 80 from the union (v4 and v6), the drop.
    assert_eq!(rules.len(), 5, "{script}");
    let union = rules
        .iter()
        .find(|r| r.starts_with("ip saddr @peers_") && r.contains("dport"))
        .and_then(|r| r.split('@').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no union rule in {rules:?}"));
    assert_eq!(set_elements(&script, union), ["10.0.2.1", "10.1.0.0/16"]);
    assert!(
        script.contains(&format!(
            "    set {union} {{\n        type ipv4_addr\n        flags interval\n"
        )),
        "{script}"
    );
    // Anyone on port 80 swallows the group's peers.
    let mut open = set.clone();
    if let Some(pod) = open.pods.values_mut().next() {
        if let Isolation::Isolated { entries, .. } = &mut Arc::make_mut(pod).ingress {
            entries.insert(entry(PeerMatch::Any, &web, "e"));
        }
    }
    let script = render_policy_table("twp", &open, &PolicyRenderOptions::default());
    let rules = chain_rules(&script, "ingress_pod_0");
    assert!(
        rules.contains(&"meta l4proto . th dport @ports_0 return".to_string()),
        "{rules:?}"
    );
    assert_eq!(rules.len(), 4, "{rules:?}");
}
