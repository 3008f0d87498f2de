//! Pod-to-pod reachability by ping.

use super::ClusterPod;
use crate::netns::Netns;

/// The pairs of [`ping_matrix`] that got no answer, as `a -> b (ip)`.
pub fn unanswered(pods: &[ClusterPod]) -> Vec<String> {
    ping_matrix(pods)
        .into_iter()
        .filter(|(_, _, rtt)| rtt.is_none())
        .map(|(a, b, _)| format!("{} -> {} ({})", pods[a].name, pods[b].name, pods[b].ip))
        .collect()
}

/// Pings every pod from every other pod: (from, to, Some(rtt ms) or None).
pub fn ping_matrix(pods: &[ClusterPod]) -> Vec<(usize, usize, Option<f64>)> {
    let mut out = Vec::new();
    for (a, from) in pods.iter().enumerate() {
        for (b, to) in pods.iter().enumerate() {
            if a == b {
                continue;
            }
            out.push((a, b, ping_rtt(&from.ns, &to.ip)));
        }
    }
    out
}

/// One ping (up to 3 tries, 1 s each); the RTT in ms when answered.
pub fn ping_rtt(from: &Netns, to: &str) -> Option<f64> {
    for _ in 0..3 {
        let out = from.run(&["ping", "-c", "1", "-W", "1", to]);
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            return text
                .split("time=")
                .nth(1)
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse().ok())
                .or(Some(0.0));
        }
    }
    None
}
