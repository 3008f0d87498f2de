//! The NetworkPolicy part of the status document and of `twill-agent status`: per
//! local pod IP, whether each direction is isolated and by which policies.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::net::IpAddr;

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
        out.push_str(&super::columns(&rows));
        out
    }
}
