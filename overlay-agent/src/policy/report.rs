//! What `/status` and `twill-agent status` say about NetworkPolicy, built from a
//! compiled rule set. Pure; the document's types are in `crate::status::policy`.

use crate::status::policy::PodPolicyStatus;
use std::collections::BTreeSet;
use twill_policy::ruleset::{Direction, PolicyRef};
use twill_policy::{Kind, RuleSet};

/// The isolating policies of one direction: the compile's `by`, plus the policies of
/// the allow entries. A rejected policy, which isolates through its stand-in, is
/// marked `(rejected)`.
fn isolated_by(direction: &Direction, rejected: &BTreeSet<PolicyRef>) -> Option<Vec<String>> {
    match direction {
        Direction::NotIsolated => None,
        Direction::Isolated { by, entries } => {
            let names: BTreeSet<String> = by
                .iter()
                .chain(entries.iter().map(|e| &e.policy))
                .map(|p| {
                    let mark = if rejected.contains(p) {
                        "(rejected)"
                    } else {
                        ""
                    };
                    format!("{}/{}{mark}", p.namespace, p.name)
                })
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
    let rejected: BTreeSet<PolicyRef> = rules
        .rejected
        .iter()
        .filter(|r| r.kind == Kind::NetworkPolicy && r.isolating.is_some())
        .map(|r| PolicyRef {
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        })
        .collect();
    rules
        .pods
        .iter()
        .map(|(ip, p)| PodPolicyStatus {
            ip: *ip,
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            ingress: isolated_by(&p.ingress, &rejected),
            egress: isolated_by(&p.egress, &rejected),
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

    #[test]
    fn rows_and_rejections_show_a_rejected_policy_isolating() {
        let db = json!({"metadata": {"namespace": "a", "name": "db", "labels": {"app": "db"}},
                        "spec": {"nodeName": "n1"},
                        "status": {"podIPs": [{"ip": "10.0.0.2"}]}});
        let bad = json!({"metadata": {"namespace": "a", "name": "bad"},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                     "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}});
        let cluster = Cluster::from_json(
            &[bad],
            &[db],
            &[json!({"metadata": {"name": "a"}})],
            Default::default(),
        );
        let rules = compile(&cluster, "n1");
        let rows = pod_rows(&rules);
        assert_eq!(rows[0].ingress, Some(vec!["a/bad(rejected)".to_string()]));
        assert_eq!(rows[0].egress, None);
        let status = PolicyStatus {
            table: "twill_policy".into(),
            synced: true,
            applied: true,
            policies: cluster.policies.len(),
            rules: rule_count(&rules),
            rejected: rules.rejected.iter().map(ToString::to_string).collect(),
            pods: rows,
            ..PolicyStatus::default()
        };
        let text = status.render();
        assert!(
            text.contains(
                "rejected: NetworkPolicy a/bad: spec.ingress[0].from[0].ipBlock.cidr: \
                 \"10.0.0.0/33\" is not a CIDR (fails closed: isolates ingress of the pods \
                 it selects, allows nothing)"
            ),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("10.0.0.2") && l.contains("isolated by a/bad(rejected)")),
            "{text}"
        );
    }
}
