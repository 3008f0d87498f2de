//! What the agent tells its operator: the peer table behind `/status` and
//! `twill-agent status`, and the reasons it is not ready.

pub mod policy;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Vxlan,
    Direct,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub node: String,
    pub subnets: Vec<IpNet>,
    #[serde(rename = "publicIP")]
    pub public_ip: Option<IpAddr>,
    pub mode: Mode,
    pub programmed: bool,
    /// Why a record was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub node: String,
    pub subnets: Vec<IpNet>,
    #[serde(rename = "publicIP")]
    pub public_ip: Option<IpAddr>,
    pub device: String,
    pub vtep_mac: String,
    pub mtu: u32,
    pub registry: String,
    pub ready: bool,
    /// Empty when ready.
    pub not_ready: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// NetworkPolicy enforcement; `None` when it is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<policy::PolicyStatus>,
    /// The overlay's reasons, apart from the policy's.
    #[serde(skip)]
    overlay_reasons: Vec<String>,
    /// A reconcile pass has run (before that the agent is never ready).
    #[serde(skip)]
    passed: bool,
    #[serde(skip)]
    policy_reason: Option<String>,
    /// The reasons a pod added now would not get a working network (firewall, device,
    /// CNI files): what the plugin's STATUS reports through the store service.
    #[serde(skip)]
    pod_network_problems: Vec<String>,
}

impl AgentStatus {
    /// The overlay's reasons; `pass`: they come from a reconcile pass.
    pub fn set_overlay_reasons(&mut self, reasons: Vec<String>, pass: bool) {
        self.overlay_reasons = reasons;
        self.passed |= pass;
        self.refresh_ready();
    }

    /// The reasons among the overlay's that break a new pod's network.
    pub fn set_pod_network_problems(&mut self, problems: Vec<String>) {
        self.pod_network_problems = problems;
    }

    /// Why NetworkPolicy enforcement is not ready; `None`: it is.
    pub fn set_policy_reason(&mut self, reason: Option<String>) {
        self.policy_reason = reason.map(|r| format!("network policy: {r}"));
        self.refresh_ready();
    }

    fn refresh_ready(&mut self) {
        let mut reasons = self.overlay_reasons.clone();
        reasons.extend(self.policy_reason.clone());
        self.ready = self.passed && reasons.is_empty();
        self.not_ready = reasons;
    }
}

impl AgentStatus {
    /// The peer table `twill-agent status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let subnets = join(&self.subnets);
        out.push_str(&format!(
            "node {}  subnet {}  public IP {}  device {} (MTU {}, MAC {})  registry {}\n",
            self.node,
            if subnets.is_empty() {
                "-".into()
            } else {
                subnets
            },
            self.public_ip.map(|i| i.to_string()).unwrap_or("-".into()),
            self.device,
            self.mtu,
            self.vtep_mac,
            self.registry,
        ));
        if self.ready {
            out.push_str("ready\n");
        } else {
            out.push_str(&format!("NOT READY: {}\n", self.not_ready.join("; ")));
        }
        let policy = self.network_policy.as_ref().map(|p| p.render());
        let mut rows = vec![[
            "NODE".to_string(),
            "SUBNET".into(),
            "PUBLIC IP".into(),
            "MODE".into(),
            "PROGRAMMED".into(),
        ]];
        for p in &self.peers {
            let mode = match p.mode {
                Mode::Vxlan => "vxlan".to_string(),
                Mode::Direct => "direct".to_string(),
                Mode::Rejected => format!("rejected: {}", p.reason.as_deref().unwrap_or("")),
            };
            rows.push([
                p.node.clone(),
                join(&p.subnets),
                p.public_ip.map(|i| i.to_string()).unwrap_or("-".into()),
                mode,
                if p.programmed { "yes" } else { "no" }.into(),
            ]);
        }
        out.push_str(&columns(&rows));
        out.push('\n');
        match policy {
            Some(p) => out.push_str(&p),
            None => out.push_str(POLICY_OFF),
        }
        out
    }
}

/// What `twill-agent status` says when this agent does not enforce NetworkPolicy.
const POLICY_OFF: &str = "network policy: not enforced (only with the kubernetes registry, \
     where NetworkPolicies are API objects; --network-policy auto|on)\n";

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the reconcile loop writes and the HTTP endpoints read.
pub struct Board {
    pub status: std::sync::Mutex<AgentStatus>,
    pub metrics: crate::metrics::Metrics,
    heartbeat: std::sync::Mutex<std::time::Instant>,
    /// `/healthz` fails when the loop has not beaten for this long.
    stale_after: std::time::Duration,
}

impl Board {
    pub fn new(stale_after: std::time::Duration) -> Self {
        Board {
            status: std::sync::Mutex::new(AgentStatus::default()),
            metrics: crate::metrics::Metrics::new(),
            heartbeat: std::sync::Mutex::new(std::time::Instant::now()),
            stale_after,
        }
    }

    pub fn beat(&self) {
        if let Ok(mut h) = self.heartbeat.lock() {
            *h = std::time::Instant::now();
        }
    }

    /// `Err(reason)` when the loop seems stuck.
    pub fn healthy(&self) -> Result<(), String> {
        let age = self
            .heartbeat
            .lock()
            .map(|h| h.elapsed())
            .unwrap_or_default();
        if age > self.stale_after {
            return Err(format!(
                "the reconcile loop has not run for {}s",
                age.as_secs()
            ));
        }
        Ok(())
    }

    /// `snapshot().ready` without copying the peer table.
    pub fn is_ready(&self) -> bool {
        self.status.lock().is_ok_and(|s| s.ready)
    }

    pub fn snapshot(&self) -> AgentStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn update(&self, f: impl FnOnce(&mut AgentStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
            self.metrics.ready.set(i64::from(s.ready));
        }
    }
}

impl twill_ipam::service::NodeHealth for Board {
    fn not_ready(&self) -> Option<String> {
        let s = self.status.lock().ok()?;
        if !s.passed {
            return Some("the agent has not finished its first reconcile pass".into());
        }
        (!s.pod_network_problems.is_empty()).then(|| s.pod_network_problems.join("; "))
    }
}

/// Rows as left-aligned columns two spaces apart, one line each.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_peer_with_mode_and_state() {
        let s = AgentStatus {
            node: "n1".into(),
            subnets: vec!["10.244.1.0/24".parse().unwrap()],
            public_ip: Some("192.168.0.1".parse().unwrap()),
            device: "twill.1".into(),
            vtep_mac: "0e:00:00:00:00:01".into(),
            mtu: 1450,
            registry: "file".into(),
            ready: false,
            not_ready: vec!["1 peer not programmed".into()],
            peers: vec![
                PeerStatus {
                    node: "n2".into(),
                    subnets: vec!["10.244.2.0/24".parse().unwrap()],
                    public_ip: Some("192.168.0.2".parse().unwrap()),
                    mode: Mode::Direct,
                    programmed: true,
                    reason: None,
                },
                PeerStatus {
                    node: "bad".into(),
                    subnets: vec![],
                    public_ip: None,
                    mode: Mode::Rejected,
                    programmed: false,
                    reason: Some("bad MAC".into()),
                },
            ],
            ..AgentStatus::default()
        };
        let t = s.render();
        assert!(t.contains("NOT READY: 1 peer not programmed"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.starts_with("n2") && l.contains("direct") && l.ends_with("yes")),
            "{t}"
        );
        assert!(
            t.lines()
                .any(|l| l.starts_with("bad") && l.contains("rejected: bad MAC")),
            "{t}"
        );
        let back: AgentStatus = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn policy_reason_keeps_the_agent_not_ready() {
        let mut s = AgentStatus::default();
        s.set_overlay_reasons(vec!["joining the registry".into()], false);
        s.set_policy_reason(Some("not listed yet".into()));
        assert!(!s.ready);
        assert_eq!(s.not_ready.len(), 2, "{:?}", s.not_ready);
        s.set_overlay_reasons(vec![], true);
        assert!(!s.ready);
        assert_eq!(s.not_ready, vec!["network policy: not listed yet"]);
        s.set_policy_reason(None);
        assert!(s.ready && s.not_ready.is_empty());
        s.set_overlay_reasons(vec!["1 peer(s) not programmed".into()], true);
        assert!(!s.ready);
        // Without a pass the policy alone never makes the agent ready.
        let mut fresh = AgentStatus::default();
        fresh.set_policy_reason(None);
        assert!(!fresh.ready);
    }

    #[test]
    fn status_says_when_network_policy_is_not_enforced() {
        let off = AgentStatus::default().render();
        assert!(off.contains("network policy: not enforced"), "{off}");
        let on = AgentStatus {
            network_policy: Some(policy::PolicyStatus::default()),
            ..AgentStatus::default()
        }
        .render();
        assert!(!on.contains("not enforced"), "{on}");
        assert!(on.contains("network policy: table inet"), "{on}");
    }
}
