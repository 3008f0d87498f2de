//! A continuous ping from a pod of the kubelet cluster (`kubectl exec … ping -i 0.2`),
//! its replies counted as they arrive, to measure what a change costs the data path.

use crate::kubelet_cluster::KubeletCluster;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

pub struct ContinuousPing {
    kubectl: Child,
    reader: Option<JoinHandle<()>>,
    /// (arrival, seq) of every reply.
    replies: Arc<Mutex<Vec<(Instant, u64)>>>,
}

/// The replies between the first and the last one received.
#[derive(Debug, Clone, Copy)]
pub struct PingCount {
    pub first_seq: u64,
    pub last_seq: u64,
    pub received: u64,
    /// Sequence numbers between the first and the last reply that got no reply.
    pub lost: u64,
}

impl ContinuousPing {
    /// Pings `ip` every 200 ms from the pod of Deployment `from` (default namespace).
    pub fn start(k: &KubeletCluster, from: &str, ip: &str) -> Result<ContinuousPing, String> {
        let target = format!("deploy/{from}");
        // -w: ends the ping in the pod even if nothing stops it.
        let argv = ["exec", &target, "--", "ping", "-i", "0.2", "-w", "900", ip];
        let mut kubectl = k
            .kubectl_command(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("kubectl exec ping: {e}"))?;
        let stdout = kubectl.stdout.take().ok_or("ping has no stdout")?;
        let replies: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let sink = replies.clone();
        let reader = std::thread::spawn(move || {
            // busybox: "64 bytes from 10.244.1.3: seq=12 ttl=63 time=0.180 ms"
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let seq = line.split("seq=").nth(1).and_then(|s| s.split(' ').next());
                if let (Some(seq), Ok(mut r)) = (seq.and_then(|s| s.parse().ok()), sink.lock()) {
                    r.push((Instant::now(), seq));
                }
            }
        });
        Ok(ContinuousPing {
            kubectl,
            reader: Some(reader),
            replies,
        })
    }

    pub fn received(&self) -> usize {
        self.replies.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// When the latest reply arrived.
    pub fn last_reply_at(&self) -> Option<Instant> {
        self.replies
            .lock()
            .ok()
            .and_then(|r| r.last().map(|(at, _)| *at))
    }

    /// Stops pinging and counts.
    pub fn stop(mut self) -> Result<PingCount, String> {
        self.kill();
        let r = self.replies.lock().map_err(|_| "ping replies poisoned")?;
        let seqs: BTreeSet<u64> = r.iter().map(|(_, s)| *s).collect();
        match (seqs.first(), seqs.last()) {
            (Some(&first_seq), Some(&last_seq)) => Ok(PingCount {
                first_seq,
                last_seq,
                received: seqs.len() as u64,
                lost: (last_seq - first_seq + 1) - seqs.len() as u64,
            }),
            _ => Err("no ping replies at all".into()),
        }
    }

    fn kill(&mut self) {
        let _ = self.kubectl.kill();
        let _ = self.kubectl.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for ContinuousPing {
    fn drop(&mut self) {
        self.kill();
    }
}
