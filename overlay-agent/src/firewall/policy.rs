//! NetworkPolicy as an nftables table: a pure renderer from a compiled [`RuleSet`] to an
//! `nft -f -` script. Nothing here runs `nft`.
//!
//! Per packet the work is a fixed number of set lookups, whatever the number of pods,
//! policies or peers. Per direction (`ingress`, `egress`) and family (`v4`, `v6`):
//!
//! - `<dir>_isolated_<f>`: the pod IPs isolated that way;
//! - `<dir>_any_<f>`: `pod . peer-prefix` (interval), entries allowing every port;
//! - `<dir>_ports_<f>`: `pod . peer-prefix . l4proto . port-range` (interval);
//! - `<dir>_deny_<f>`: pod IP → `jump deny_<dir>_pod_<k>`, a chain per isolated pod that
//!   (optionally) logs, counts against the pod's policy counter and drops.
//!
//! Interval sets refuse overlapping elements, so each pod's elements are made disjoint
//! first (nested peer prefixes split, port ranges merged).
//!
//! Chain `forward` (filter hook forward: after kube-proxy's DNAT, sees routed pod
//! traffic): replies pass by conntrack, node ↔ pod passes, then the egress check of an
//! isolated source, then the ingress check of an isolated destination; each returns when
//! an entry matches and drops otherwise, so a connection between two local pods needs
//! both.
//!
//! Counters: one named counter per (policy, direction), `deny_<dir>_<n>`. A pod isolated
//! by several policies is counted against the first of its entries' policies by
//! namespace/name. A pod isolated only by policies without allow entries (default deny)
//! cannot be attributed: the [`RuleSet`] does not say which policies isolate it, so it is
//! counted in `deny_<dir>_unattributed`. Counters count dropped packets (a retried SYN
//! counts again). [`deny_counters`] says which counter is whose.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use twill_policy::ruleset::{Direction as Isolation, PolicyRef};
use twill_policy::{Protocol, RuleSet};

mod elements;

pub use elements::cidr_minus;
use elements::pod_elements;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRenderOptions {
    /// Log denied connections (rate-limited); `None`: no log.
    pub log_denied: Option<LogSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// The nflog group; `None`: the kernel log.
    pub group: Option<u16>,
    /// Log lines per second, for the whole table.
    pub per_second: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyDirection {
    Ingress,
    Egress,
}

impl PolicyDirection {
    pub fn name(self) -> &'static str {
        match self {
            PolicyDirection::Ingress => "ingress",
            PolicyDirection::Egress => "egress",
        }
    }

    fn isolation(self, rules: &twill_policy::ruleset::PodRules) -> &Isolation {
        match self {
            PolicyDirection::Ingress => &rules.ingress,
            PolicyDirection::Egress => &rules.egress,
        }
    }

    /// The pod's address in a packet of this direction, and the peer's.
    fn addrs(self, ip: &str) -> (String, String) {
        match self {
            PolicyDirection::Ingress => (format!("{ip} daddr"), format!("{ip} saddr")),
            PolicyDirection::Egress => (format!("{ip} saddr"), format!("{ip} daddr")),
        }
    }
}

const DIRECTIONS: [PolicyDirection; 2] = [PolicyDirection::Ingress, PolicyDirection::Egress];

/// Which named counter of the table counts the denials of which policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyCounter {
    pub name: String,
    pub direction: PolicyDirection,
    /// `None` only for a rule set that names no isolating policy (not one `compile`
    /// makes).
    pub policy: Option<PolicyRef>,
}

/// An isolated pod (all its IPs) in one direction.
struct IsolatedPod<'a> {
    namespace: &'a str,
    name: &'a str,
    ips: Vec<IpAddr>,
    counter: Option<PolicyRef>,
}

/// The pods isolated in `direction`, ordered by namespace/name.
fn isolated_pods(rules: &RuleSet, direction: PolicyDirection) -> Vec<IsolatedPod<'_>> {
    let mut pods: BTreeMap<(&str, &str), IsolatedPod> = BTreeMap::new();
    for (ip, pod) in &rules.pods {
        let Isolation::Isolated { by, entries } = direction.isolation(pod) else {
            continue;
        };
        let key = (pod.namespace.as_str(), pod.name.as_str());
        pods.entry(key)
            .or_insert_with(|| IsolatedPod {
                namespace: &pod.namespace,
                name: &pod.name,
                ips: Vec::new(),
                // One counter per pod: the first isolating policy's. A rule set made by
                // hand may name none; then an allowing policy, else "unattributed".
                counter: by
                    .iter()
                    .min()
                    .or_else(|| entries.iter().map(|e| &e.policy).min())
                    .cloned(),
            })
            .ips
            .push(*ip);
    }
    pods.into_values().collect()
}

/// The deny counters the table for `rules` has, in a fixed order.
pub fn deny_counters(rules: &RuleSet) -> Vec<DenyCounter> {
    let mut out = Vec::new();
    for direction in DIRECTIONS {
        let policies: BTreeSet<Option<PolicyRef>> = isolated_pods(rules, direction)
            .into_iter()
            .map(|pod| pod.counter)
            .collect();
        let mut n = 0;
        for policy in policies {
            let name = match &policy {
                Some(_) => {
                    n += 1;
                    format!("deny_{}_{}", direction.name(), n - 1)
                }
                None => format!("deny_{}_unattributed", direction.name()),
            };
            out.push(DenyCounter {
                name,
                direction,
                policy,
            });
        }
    }
    out
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// (nft payload name, set suffix, address type) of the two families.
const FAMILIES: [(&str, &str, &str); 2] = [("ip", "v4", "ipv4_addr"), ("ip6", "v6", "ipv6_addr")];

fn is_family(ip: &IpAddr, suffix: &str) -> bool {
    ip.is_ipv4() == (suffix == "v4")
}

fn render_set(s: &mut String, name: &str, spec: &str, elements: &[String]) {
    let _ = writeln!(s, "    {name} {{\n        {spec}");
    if !elements.is_empty() {
        let _ = writeln!(s, "        elements = {{ {} }}", elements.join(", "));
    }
    s.push_str("    }\n");
}

/// A log prefix nft accepts: the pod's name kept to DNS characters, at most 127 bytes.
fn log_prefix(direction: PolicyDirection, namespace: &str, name: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            .collect()
    };
    let mut who = format!("{}/{}", clean(namespace), clean(name));
    let fixed = format!("twill-policy deny {} : ", direction.name()).len();
    who.truncate(127 - fixed);
    format!("twill-policy deny {} {who}: ", direction.name())
}

/// The transaction that replaces table `inet <table>` with the enforcement of `rules`
/// (input of `nft -f -`). When no pod is isolated the table is only deleted: no policy,
/// nothing left behind.
pub fn render_policy_table(table: &str, rules: &RuleSet, opts: &PolicyRenderOptions) -> String {
    let counters = deny_counters(rules);
    // Every isolated pod has a counter, so no counter means no isolated pod.
    if counters.is_empty() {
        return render_delete_policy_table(table);
    }
    let counter_of = |direction: PolicyDirection, policy: &Option<PolicyRef>| {
        counters
            .iter()
            .find(|c| c.direction == direction && &c.policy == policy)
            .map_or("", |c| c.name.as_str())
    };
    let mut s =
        format!("add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n");
    for counter in &counters {
        let _ = writeln!(s, "    counter {} {{\n    }}", counter.name);
    }
    if let Some(log) = &opts.log_denied {
        let _ = writeln!(
            s,
            "    limit log_denied {{\n        rate {}/second\n    }}",
            log.per_second
        );
    }
    for (_, suffix, addr) in FAMILIES {
        let nodes: Vec<String> = rules
            .node_ips
            .iter()
            .filter(|ip| is_family(ip, suffix))
            .map(IpAddr::to_string)
            .collect();
        render_set(
            &mut s,
            &format!("set node_{suffix}"),
            &format!("type {addr}"),
            &nodes,
        );
    }
    let mut chains = String::new();
    for direction in DIRECTIONS {
        let dir = direction.name();
        let pods = isolated_pods(rules, direction);
        for (_, suffix, addr) in FAMILIES {
            let (mut isolated, mut any, mut ports, mut deny) = (vec![], vec![], vec![], vec![]);
            for (k, pod) in pods.iter().enumerate() {
                for ip in pod.ips.iter().filter(|ip| is_family(ip, suffix)) {
                    isolated.push(ip.to_string());
                    deny.push(format!("{ip} : jump deny_{dir}_pod_{k}"));
                    let Some(pod_rules) = rules.pods.get(ip) else {
                        continue;
                    };
                    let (any_nets, port_elements) =
                        pod_elements(*ip, direction.isolation(pod_rules));
                    any.extend(any_nets.iter().map(|net| format!("{ip} . {net}")));
                    ports.extend(port_elements.iter().map(|(net, p, start, end)| {
                        let range = if start == end {
                            start.to_string()
                        } else {
                            format!("{start}-{end}")
                        };
                        format!("{ip} . {net} . {} . {range}", protocol_name(*p))
                    }));
                }
            }
            let set = |kind: &str| format!("set {dir}_{kind}_{suffix}");
            render_set(&mut s, &set("isolated"), &format!("type {addr}"), &isolated);
            let any_spec = format!("type {addr} . {addr}\n        flags interval");
            render_set(&mut s, &set("any"), &any_spec, &any);
            let ports_spec =
                format!("type {addr} . {addr} . inet_proto . inet_service\n        flags interval");
            render_set(&mut s, &set("ports"), &ports_spec, &ports);
            let deny_spec = format!("type {addr} : verdict");
            render_set(
                &mut s,
                &format!("map {dir}_deny_{suffix}"),
                &deny_spec,
                &deny,
            );
        }
        for (k, pod) in pods.iter().enumerate() {
            let _ = writeln!(chains, "    chain deny_{dir}_pod_{k} {{");
            if let Some(log) = &opts.log_denied {
                let prefix = log_prefix(direction, pod.namespace, pod.name);
                let group = log.group.map(|g| format!(" group {g}")).unwrap_or_default();
                let _ = writeln!(
                    chains,
                    "        limit name \"log_denied\" log prefix \"{prefix}\"{group}"
                );
            }
            let counter = counter_of(direction, &pod.counter);
            let _ = writeln!(chains, "        counter name \"{counter}\" drop\n    }}");
        }
    }
    s.push_str(&chains);
    for direction in DIRECTIONS {
        let dir = direction.name();
        for (ip, suffix, _) in FAMILIES {
            let (pod, peer) = direction.addrs(ip);
            let _ = writeln!(s, "    chain {dir}_{suffix} {{");
            let _ = writeln!(s, "        {pod} . {peer} @{dir}_any_{suffix} return");
            let _ = writeln!(
                s,
                "        {pod} . {peer} . meta l4proto . th dport @{dir}_ports_{suffix} return"
            );
            // A pod missing from the map would fall through: drop rather than pass.
            let _ = writeln!(
                s,
                "        {pod} vmap @{dir}_deny_{suffix}\n        drop\n    }}"
            );
        }
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
        for (ip, suffix, _) in FAMILIES {
            let (pod, _) = direction.addrs(ip);
            let _ = writeln!(
                s,
                "        {pod} @{dir}_isolated_{suffix} jump {dir}_{suffix}"
            );
        }
    }
    s.push_str("    }\n}\n");
    s
}

/// The transaction that deletes table `inet <table>`, and succeeds when it is absent.
pub fn render_delete_policy_table(table: &str) -> String {
    super::script::render_delete_table(table)
}

#[cfg(test)]
mod tests;
