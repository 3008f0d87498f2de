//! The agent's Prometheus metrics (`/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    pub table: String,
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// A policy's denials in one direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabel {
    pub namespace: String,
    pub policy: String,
    pub direction: String,
}

pub struct Metrics {
    registry: Registry,
    /// Peers by state: programmed, pending, rejected.
    pub peers: Family<StateLabel, Gauge>,
    /// From a registry change (or resync) to its kernel entries programmed.
    pub programming_latency: Histogram,
    pub reconcile_errors: Counter,
    /// Records rejected by validation (or unparsable), counted once per new rejection.
    pub rejected_records: Counter,
    pub kernel_changes: Family<ChangeLabel, Counter>,
    pub resyncs: Counter,
    pub ready: Gauge,
    /// 1 while Twill's firewall table is in place as wanted.
    pub firewall_ok: Gauge,
    /// Times the table was found deleted or changed at a resync, and put back.
    pub firewall_repairs: Counter,
    /// Address stores found missing, unreadable or inconsistent and rebuilt from the
    /// node's pod interfaces.
    pub store_rebuilds: Counter,
    /// NetworkPolicies in the last snapshot.
    pub policies: Gauge,
    /// Allow entries compiled for this node's pods.
    pub policy_rules: Gauge,
    /// Compile and render of one snapshot.
    pub policy_compile_seconds: Histogram,
    /// From the arrival of a watch event that changed the policy table to that table
    /// applied by nft.
    pub policy_enforce_latency: Histogram,
    /// Policies, pods and namespaces the compile left out.
    pub policy_rejected_objects: Gauge,
    pub policy_applies: Family<ResultLabel, Counter>,
    /// Packets of new connections dropped, per isolating policy and direction.
    pub policy_denied: Family<DenyLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("twill");
        let m = Metrics {
            peers: Family::default(),
            // 0.5 ms .. ~16 s
            programming_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconcile_errors: Counter::default(),
            rejected_records: Counter::default(),
            kernel_changes: Family::default(),
            resyncs: Counter::default(),
            ready: Gauge::default(),
            firewall_ok: Gauge::default(),
            firewall_repairs: Counter::default(),
            store_rebuilds: Counter::default(),
            policies: Gauge::default(),
            policy_rules: Gauge::default(),
            // 0.1 ms .. ~3 s
            policy_compile_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 ms .. ~33 s
            policy_enforce_latency: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            policy_rejected_objects: Gauge::default(),
            policy_applies: Family::default(),
            policy_denied: Family::default(),
            registry: Registry::default(),
        };
        // One line per metric: its name (twill_ is the registry's prefix), its help and
        // the field that holds it.
        macro_rules! register {
            ($($name:literal, $help:literal, $field:ident;)*) => {
                $(registry.register($name, $help, m.$field.clone());)*
            };
        }
        register! {
            "peers", "Peers by state (programmed, pending, rejected)", peers;
            "programming_latency_seconds", "Time from a registry change or resync to its kernel entries programmed", programming_latency;
            "reconcile_errors", "Kernel changes or reconcile passes that failed", reconcile_errors;
            "rejected_records", "Registry records rejected by validation, once per new rejection", rejected_records;
            "kernel_changes", "Routes, neighbour and FDB entries put or removed", kernel_changes;
            "resyncs", "Full resyncs against the kernel", resyncs;
            "ready", "1 when the agent is ready", ready;
            "firewall_ok", "1 while Twill's nftables table (masquerade, forward) is in place as wanted", firewall_ok;
            "firewall_repairs", "Times Twill's nftables table was found deleted or changed at a resync and put back", firewall_repairs;
            "store_rebuilds", "Address stores found missing, unreadable or inconsistent at start and rebuilt from the node's pod interfaces (the damaged copy is kept as db.damaged-<unix time>)", store_rebuilds;
            "policies", "NetworkPolicies in the cluster", policies;
            "policy_rules", "Allow entries compiled for this node's pods", policy_rules;
            "policy_compile_seconds", "Compiling and rendering the policy table of one snapshot", policy_compile_seconds;
            "policy_enforce_latency_seconds", "From a watch event that changed the policy table (NetworkPolicy, Pod, Namespace) arriving to that table applied by nft", policy_enforce_latency;
            "policy_rejected_objects", "Policies, pods and namespaces the policy compile left out", policy_rejected_objects;
            "policy_applies", "Policy table transactions, by result (ok, error)", policy_applies;
            "policy_denied_packets", "Packets dropped by NetworkPolicy, per isolating policy and direction", policy_denied;
        }
        Metrics { registry, ..m }
    }

    pub fn set_peers(&self, programmed: usize, pending: usize, rejected: usize) {
        for (state, n) in [
            ("programmed", programmed),
            ("pending", pending),
            ("rejected", rejected),
        ] {
            self.peers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
    }

    pub fn count_changes(&self, table: &str, put: usize, removed: usize) {
        for (op, n) in [("put", put), ("remove", removed)] {
            if n > 0 {
                self.kernel_changes
                    .get_or_create(&ChangeLabel {
                        table: table.into(),
                        op: op.into(),
                    })
                    .inc_by(n as u64);
            }
        }
    }

    pub fn count_policy_apply(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.policy_applies
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
    }

    /// The Prometheus text format (0.0.4), which every Prometheus scrapes and
    /// `promtool check metrics` lints.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        text_format(&out)
    }
}

/// The `Content-Type` of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics (what prometheus-client writes) as the Prometheus text format: a
/// counter's HELP and TYPE name its samples' `_total` name, `unknown` is `untyped`, and
/// there is no `# UNIT` or `# EOF` line. Samples are the same in both.
fn text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                let text = if p == "# TYPE " && text == "unknown" {
                    "untyped"
                } else {
                    text
                };
                out.push_str(&format!("{p}{name}{suffix} {text}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_exposition_has_every_metric() {
        let m = Metrics::new();
        m.set_peers(2, 1, 3);
        m.programming_latency.observe(0.002);
        m.rejected_records.inc();
        m.count_changes("route", 2, 0);
        m.count_policy_apply(true);
        m.policy_compile_seconds.observe(0.001);
        m.policy_enforce_latency.observe(0.02);
        let t = m.encode();
        for needle in [
            "twill_peers{state=\"rejected\"} 3",
            "twill_programming_latency_seconds_count 1",
            "twill_reconcile_errors_total 0",
            "twill_rejected_records_total 1",
            "twill_kernel_changes_total{table=\"route\",op=\"put\"} 2",
            "twill_ready 0",
            "twill_store_rebuilds_total 0",
            "twill_policies 0",
            "twill_policy_rules 0",
            "twill_policy_compile_seconds_count 1",
            "twill_policy_enforce_latency_seconds_count 1",
            "twill_policy_rejected_objects 0",
            "twill_policy_applies_total{result=\"ok\"} 1",
        ] {
            assert!(t.contains(needle), "{needle} missing in\n{t}");
        }
        for needle in [
            "# HELP twill_reconcile_errors_total ",
            "# TYPE twill_reconcile_errors_total counter",
            "# TYPE twill_policy_applies_total counter",
            "# TYPE twill_peers gauge",
        ] {
            assert!(t.contains(needle), "{needle} missing in\n{t}");
        }
        assert!(!t.contains("# EOF"), "{t}");
    }
}
