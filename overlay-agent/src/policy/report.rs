//! What `/status` and `twill-agent status` say about NetworkPolicy, built from a
//! compiled rule set. Pure; the document's types are in `crate::status::policy`.

use crate::status::policy::PodPolicyStatus;
use std::collections::BTreeSet;
use twill_policy::ruleset::Direction;
use twill_policy::RuleSet;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::policy::PolicyStatus;
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
