//! NetworkPolicy as an nftables table: a pure renderer from a compiled [`RuleSet`] to an
//! `nft -f -` script. Nothing here runs `nft`.
//!
//! Per packet the work is a fixed number of map lookups plus one set lookup per allow
//! entry of the pod, whatever the number of pods or peers. Per direction (`ingress`,
//! `egress`) and family (`v4`, `v6`), a verdict map `<dir>_<f>` sends a packet of an
//! isolated pod to the pod's chain `<dir>_pod_<k>`. That chain has one rule per allow
//! entry, `<f> <peer> @peers_<n>_<f> [meta l4proto . th dport @ports_<m>] return`, and
//! then (optionally) logs, counts against the pod's policy counter and drops.
//!
//! The peer sets (pod addresses, or an ipBlock minus its excepts as an interval set) and
//! the port sets (`inet_proto . inet_service` intervals) are named once per distinct
//! content and shared by every pod and policy that uses them ([`sets`]).
//!
//! Chain `forward` (filter hook forward: after kube-proxy's DNAT, sees routed pod
//! traffic): replies pass by conntrack, node ↔ pod passes, then the egress check of an
//! isolated source, then the ingress check of an isolated destination; each returns when
//! an entry matches and drops otherwise, so a connection between two local pods needs
//! both.
//!
//! Counters: one named counter per (policy, direction), `deny_<dir>_<n>`. A pod isolated
//! by several policies is counted against the first of them by namespace/name (a rule
//! set made by hand that names none: the first allowing policy, else
//! `deny_<dir>_unattributed`). Counters count dropped packets (a retried SYN
//! counts again). [`deny_counters`] says which counter is whose.

use std::collections::BTreeMap;
use std::net::IpAddr;

use twill_policy::ruleset::{AllowEntry, Direction as Isolation, PolicyRef};
use twill_policy::RuleSet;

mod diff;
mod elements;
mod names;
mod sets;
mod table;

pub use diff::{render_diff, TableDiff};
pub use elements::cidr_minus;
pub use names::PolicyNames;
pub use table::{ChainDecl, PolicyTable, SetDecl};

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

    /// The pod's address field in a packet of this direction, and the peer's.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            PolicyDirection::Ingress => ("daddr", "saddr"),
            PolicyDirection::Egress => ("saddr", "daddr"),
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
    /// The allow entries of all its IPs. A list, not a set: entries can hold thousands
    /// of addresses, so comparing them costs; repeats render to the same rule, which the
    /// chain keeps once.
    entries: Vec<&'a AllowEntry>,
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
        let isolated = pods.entry(key).or_insert_with(|| IsolatedPod {
            namespace: &pod.namespace,
            name: &pod.name,
            ips: Vec::new(),
            entries: Vec::new(),
            // One counter per pod: the first isolating policy's. A rule set made by
            // hand may name none; then an allowing policy, else "unattributed".
            counter: by
                .iter()
                .min()
                .or_else(|| entries.iter().map(|e| &e.policy).min())
                .cloned(),
        });
        isolated.ips.push(*ip);
        isolated.entries.extend(entries);
    }
    pods.into_values().collect()
}

/// The deny counters the table for `rules` has, in a fixed order (numbered afresh).
pub fn deny_counters(rules: &RuleSet) -> Vec<DenyCounter> {
    let table = PolicyTable::build(
        rules,
        &PolicyRenderOptions::default(),
        &mut PolicyNames::default(),
    );
    table.counters
}

/// (nft payload name, set suffix, address type) of the two families.
const FAMILIES: [(&str, &str, &str); 2] = [("ip", "v4", "ipv4_addr"), ("ip6", "v6", "ipv6_addr")];

fn is_family(ip: &IpAddr, suffix: &str) -> bool {
    ip.is_ipv4() == (suffix == "v4")
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
/// (input of `nft -f -`), numbered afresh. When no pod is isolated the table is only
/// deleted: no policy, nothing left behind.
pub fn render_policy_table(table: &str, rules: &RuleSet, opts: &PolicyRenderOptions) -> String {
    PolicyTable::build(rules, opts, &mut PolicyNames::default()).render_full(table)
}

/// The transaction that deletes table `inet <table>`, and succeeds when it is absent.
pub fn render_delete_policy_table(table: &str) -> String {
    super::script::render_delete_table(table)
}

#[cfg(test)]
mod tests;
