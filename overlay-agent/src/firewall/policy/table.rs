//! The policy table as data: its counters, sets, maps and per-pod chains, named by
//! [`PolicyNames`]. Rendered whole (a replacing transaction) or, against the table
//! already applied, as a diff (`diff.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use twill_policy::ruleset::PolicyRef;
use twill_policy::RuleSet;

use super::names::{index, PolicyNames};
use super::sets::NamedSets;
use super::{
    is_family, isolated_pods, log_prefix, DenyCounter, PolicyDirection, PolicyRenderOptions,
    DIRECTIONS, FAMILIES,
};

/// A set or verdict map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDecl {
    /// `set` or `map`.
    pub kind: &'static str,
    pub name: String,
    /// Declaration lines (`type …`, `flags …`).
    pub spec: Vec<String>,
    /// Elements as nft writes them; a map's are `key : verdict`.
    pub elements: Vec<String>,
}

impl SetDecl {
    pub(super) fn set(name: String, spec: Vec<String>, elements: Vec<String>) -> SetDecl {
        SetDecl {
            kind: "set",
            name,
            spec,
            elements,
        }
    }
}

/// A regular chain (a pod's) and its rules in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDecl {
    pub name: String,
    pub rules: Vec<String>,
}

/// Everything table `inet <table>` holds for one rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    pub counters: Vec<DenyCounter>,
    /// Log lines per second of the `log_denied` limit; `None`: no logging.
    pub log_rate: Option<u32>,
    /// Node sets, verdict maps, peer and port sets, in declaration order.
    pub sets: Vec<SetDecl>,
    /// The pods' chains (the `forward` chain is fixed).
    pub chains: Vec<ChainDecl>,
}

impl PolicyTable {
    /// The table for `rules`; names come from `names`, which forgets what is no longer
    /// used.
    pub fn build(
        rules: &RuleSet,
        opts: &PolicyRenderOptions,
        names: &mut PolicyNames,
    ) -> PolicyTable {
        names.begin();
        let table = PolicyTable::build_named(rules, opts, names);
        names.end();
        table
    }

    fn build_named(
        rules: &RuleSet,
        opts: &PolicyRenderOptions,
        names: &mut PolicyNames,
    ) -> PolicyTable {
        let mut counters = Vec::new();
        let mut sets = Vec::new();
        for (_, suffix, addr) in FAMILIES {
            let nodes: Vec<String> = rules
                .node_ips
                .iter()
                .filter(|ip| is_family(ip, suffix))
                .map(IpAddr::to_string)
                .collect();
            let spec = vec![format!("type {addr}")];
            sets.push(SetDecl::set(format!("node_{suffix}"), spec, nodes));
        }
        let mut pod_chains: Vec<(PolicyDirection, String, Vec<String>)> = Vec::new();
        let mut named = NamedSets::new(names);
        for direction in DIRECTIONS {
            let dir = direction.name();
            let (_, peer_field) = direction.fields();
            let pods = isolated_pods(rules, direction);
            // One counter per isolating policy, numbered in policy order.
            let policies: BTreeSet<&Option<PolicyRef>> =
                pods.iter().map(|pod| &pod.counter).collect();
            let mut counter_names = BTreeMap::new();
            for policy in policies {
                let name = match policy {
                    Some(p) => {
                        let id = named.names().counters[index(direction)].id(p);
                        format!("deny_{dir}_{id}")
                    }
                    None => format!("deny_{dir}_unattributed"),
                };
                counter_names.insert(policy.clone(), name.clone());
                counters.push(DenyCounter {
                    name,
                    direction,
                    policy: policy.clone(),
                });
            }
            let chain_ids: Vec<u64> = pods
                .iter()
                .map(|pod| {
                    let key = (pod.namespace.to_string(), pod.name.to_string());
                    named.names().pods[index(direction)].id(&key)
                })
                .collect();
            for (_, suffix, addr) in FAMILIES {
                let map: Vec<String> = pods
                    .iter()
                    .zip(&chain_ids)
                    .flat_map(|(pod, id)| {
                        pod.ips
                            .iter()
                            .filter(|ip| is_family(ip, suffix))
                            .map(move |ip| format!("{ip} : jump {dir}_pod_{id}"))
                    })
                    .collect();
                sets.push(SetDecl {
                    kind: "map",
                    name: format!("{dir}_{suffix}"),
                    spec: vec![format!("type {addr} : verdict")],
                    elements: map,
                });
            }
            for (pod, id) in pods.iter().zip(&chain_ids) {
                // Entries of several policies may match alike: one rule each.
                let matches: BTreeSet<String> = named
                    .pod_matches(&pod.entries, peer_field)
                    .into_iter()
                    .collect();
                // A pod reaching itself (through a Service whose backend it is: the
                // hairpin masquerade comes after this hook) is never judged.
                let mut chain: Vec<String> = pod
                    .ips
                    .iter()
                    .map(|ip| {
                        let kw = if ip.is_ipv4() { "ip" } else { "ip6" };
                        format!("{kw} {peer_field} {ip} return")
                    })
                    .collect();
                chain.extend(
                    matches
                        .iter()
                        .map(|m| format!("{m} return").trim_start().to_string()),
                );
                if let Some(log) = &opts.log_denied {
                    let prefix = log_prefix(direction, pod.namespace, pod.name);
                    let group = log.group.map(|g| format!(" group {g}")).unwrap_or_default();
                    chain.push(format!(
                        "limit name \"log_denied\" log prefix \"{prefix}\"{group}"
                    ));
                }
                let counter = counter_names.get(&pod.counter).map_or("", String::as_str);
                chain.push(format!("counter name \"{counter}\" drop"));
                pod_chains.push((direction, format!("{dir}_pod_{id}"), chain));
            }
        }
        named.declarations(&mut sets);
        // Ingress chains first, then egress, as the maps.
        let chains = pod_chains
            .into_iter()
            .map(|(_, name, rules)| ChainDecl { name, rules })
            .collect();
        PolicyTable {
            counters,
            log_rate: opts.log_denied.as_ref().map(|l| l.per_second),
            sets,
            chains,
        }
    }

    /// Whether no pod is isolated: then there is no table at all.
    pub fn is_empty(&self) -> bool {
        // Every isolated pod has a counter.
        self.counters.is_empty()
    }

    /// The transaction that replaces table `inet <table>` with this one (input of
    /// `nft -f -`); for an empty one, it only deletes the table.
    pub fn render_full(&self, table: &str) -> String {
        if self.is_empty() {
            return super::render_delete_policy_table(table);
        }
        let mut s =
            format!("add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
        for counter in &self.counters {
            let _ = writeln!(s, "    counter {} {{\n    }}", counter.name);
        }
        if let Some(rate) = self.log_rate {
            let _ = writeln!(
                s,
                "    limit log_denied {{\n        rate {rate}/second\n    }}"
            );
        }
        for set in &self.sets {
            let _ = writeln!(s, "    {} {} {{", set.kind, set.name);
            for line in &set.spec {
                let _ = writeln!(s, "        {line}");
            }
            if !set.elements.is_empty() {
                let _ = writeln!(s, "        elements = {{ {} }}", set.elements.join(", "));
            }
            s.push_str("    }\n");
        }
        for chain in &self.chains {
            let _ = writeln!(s, "    chain {} {{", chain.name);
            for rule in &chain.rules {
                let _ = writeln!(s, "        {rule}");
            }
            s.push_str("    }\n");
        }
        s.push_str("    chain forward {\n");
        s.push_str("        type filter hook forward priority filter; policy accept;\n");
        s.push_str("        ct state established,related accept\n");
        for (ip, suffix, _) in FAMILIES {
            let _ = writeln!(s, "        {ip} saddr @node_{suffix} accept");
            let _ = writeln!(s, "        {ip} daddr @node_{suffix} accept");
        }
        // Egress of the source first, then ingress of the destination: both must pass.
        for direction in [PolicyDirection::Egress, PolicyDirection::Ingress] {
            let dir = direction.name();
            let (pod_field, _) = direction.fields();
            for (ip, suffix, _) in FAMILIES {
                let _ = writeln!(s, "        {ip} {pod_field} vmap @{dir}_{suffix}");
            }
        }
        s.push_str("    }\n}\n");
        s
    }
}
