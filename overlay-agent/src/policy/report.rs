//! What `/status` and `twill-agent status` say about NetworkPolicy: per local pod IP,
//! whether each direction is isolated and by which policies. Pure.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use twill_policy::ruleset::Direction;
use twill_policy::RuleSet;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The nftables table, `inet <table>`.
    pub table: String,
    /// NetworkPolicies, Pods and Namespaces have been listed.
    pub synced: bool,
    /// The last snapshot's table is in the kernel.
    pub applied: bool,
    pub policies: usize,
    /// Allow entries compiled for this node's pods.
    pub rules: usize,
    /// Objects the compile left out, and why.
    pub rejected: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub pods: Vec<PodPolicyStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPolicyStatus {
    pub ip: IpAddr,
    pub namespace: String,
    pub name: String,
    /// The policies isolating the pod's ingress (`namespace/name`); `None`: not isolated.
    pub ingress: Option<Vec<String>>,
    pub egress: Option<Vec<String>>,
}

/// The isolating policies of one direction: the compile's `by`, plus the policies of
/// the allow entries.
fn isolated_by(direction: &Direction) -> Option<Vec<String>> {
    match direction {
        Direction::NotIsolated => None,
        Direction::Isolated { by, entries } => {
            let names: BTreeSet<String> = by
                .iter()
                .chain(entries.iter().map(|e| &e.policy))
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            Some(names.into_iter().collect())
        }
    }
}

/// Allow entries in `rules`, over every local pod IP.
pub fn rule_count(rules: &RuleSet) -> usize {
    rules
        .pods
        .values()
        .flat_map(|p| [&p.ingress, &p.egress])
        .map(|d| match d {
            Direction::NotIsolated => 0,
            Direction::Isolated { entries, .. } => entries.len(),
        })
        .sum()
}

/// One row per local pod IP, ordered by IP.
pub fn pod_rows(rules: &RuleSet) -> Vec<PodPolicyStatus> {
    rules
        .pods
        .iter()
        .map(|(ip, p)| PodPolicyStatus {
            ip: *ip,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ingress: isolated_by(&p.ingress),
            egress: isolated_by(&p.egress),
        })
        .collect()
}

impl PolicyStatus {
    /// The NetworkPolicy part of `twill-agent status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let state = match (self.synced, self.applied) {
            (false, _) => "not listed yet",
            (true, false) => "NOT APPLIED",
            (true, true) => "applied",
        };
        let _ = writeln!(
            out,
            "network policy: table inet {}, {} policies, {} allow entries, {state}",
            self.table, self.policies, self.rules
        );
        if let Some(e) = &self.last_error {
            let _ = writeln!(out, "last error: {e}");
        }
        for r in &self.rejected {
            let _ = writeln!(out, "rejected: {r}");
        }
        let side = |d: &Option<Vec<String>>| match d {
            None => "open".to_string(),
            Some(by) => format!("isolated by {}", by.join(",")),
        };
        let mut rows = vec![[
            "POD IP".to_string(),
            "POD".into(),
            "INGRESS".into(),
            "EGRESS".into(),
        ]];
        for p in &self.pods {
            rows.push([
                p.ip.to_string(),
                format!("{}/{}", p.namespace, p.name),
                side(&p.ingress),
                side(&p.egress),
            ]);
        }
        let widths: Vec<usize> = (0..4)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use twill_policy::{compile, Cluster};

    #[test]
    fn rows_name_the_isolating_policies() {
        let pod = |name: &str, ip: &str, app: &str| {
            json!({"metadata": {"namespace": "a", "name": name, "labels": {"app": app}},
                   "spec": {"nodeName": "n1"},
                   "status": {"podIPs": [{"ip": ip}]}})
        };
        let deny = json!({"metadata": {"namespace": "a", "name": "deny"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}});
        let allow = json!({"metadata": {"namespace": "a", "name": "allow"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}});
        let ns = json!({"metadata": {"name": "a"}});
        let cluster = Cluster::from_json(
            &[deny, allow],
            &[pod("db", "10.0.0.2", "db"), pod("web", "10.0.0.3", "web")],
            &[ns],
            Default::default(),
        );
        let rules = compile(&cluster, "n1");
        let rows = pod_rows(&rules);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].ingress,
            Some(vec!["a/allow".to_string(), "a/deny".to_string()])
        );
        assert_eq!(rows[0].egress, None);
        assert_eq!(rows[1].ingress, None);
        assert_eq!(rule_count(&rules), 1);
        let status = PolicyStatus {
            table: "twill_policy".into(),
            synced: true,
            applied: true,
            policies: 2,
            rules: 1,
            pods: rows,
            ..PolicyStatus::default()
        };
        let text = status.render();
        assert!(
            text.lines().any(|l| l.starts_with("10.0.0.2")
                && l.contains("a/db")
                && l.contains("isolated by a/allow,a/deny")
                && l.ends_with("open")),
            "{text}"
        );
    }
}
