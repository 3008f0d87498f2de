//! The one way the agent connects to the API server, shared by the kubernetes registry
//! and the NetworkPolicy source (which then use the same client).

use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KubeConnectError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no in-cluster service account and no kubeconfig: {0}")]
    NoConfig(String),
    #[error("Kubernetes client: {0}")]
    Client(String),
}

/// A client from `kubeconfig`, else `KUBECONFIG`, else the in-cluster service account;
/// with the API server's URL, for status output.
pub async fn connect(
    kubeconfig: Option<&Path>,
) -> Result<(kube::Client, String), KubeConnectError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| KubeConnectError::Kubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(&e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| bad(&e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeConnectError::NoConfig(e.to_string()))?,
    };
    // A partitioned API server must not stall a patch for long; watches carry their
    // own server-side timeout below the read timeout.
    config.connect_timeout = Some(Duration::from_secs(5));
    let server = config.cluster_url.to_string();
    let client =
        kube::Client::try_from(config).map_err(|e| KubeConnectError::Client(e.to_string()))?;
    Ok((client, server))
}

/// The retry schedule of every watch: 0.2 s doubling to 2.5 s, plus up to 100 % jitter,
/// so a watch is back at most 5 s after the API server is. kube-runtime's default
/// grows to 30 s (60 s with jitter) and resets only after 120 s; after a 36 s outage
/// the Node watch came back 46 s and 75 s late. Jitter keeps thousands of agents from
/// reconnecting in step.
pub fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(WATCH_BACKOFF_MAX / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// The longest pause between two attempts of [`watch_backoff`], jitter included.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Since when one watch has been failing, so that an outage is logged twice: once
/// when it starts and once, with its length, when the watch is back.
#[derive(Debug, Default)]
pub struct Outage(Option<std::time::Instant>);

impl Outage {
    /// True for the first failure of an outage: the one to log.
    pub fn lost(&mut self) -> bool {
        let first = self.0.is_none();
        self.0.get_or_insert_with(std::time::Instant::now);
        first
    }

    /// The outage's length, formatted in seconds, when the watch was failing until now.
    pub fn back(&mut self) -> Option<String> {
        self.0
            .take()
            .map(|since| format!("{:.1}", since.elapsed().as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wait within the cap, never giving up, backing off to at least the base.
    fn capped(waits: impl Iterator<Item = Duration>) -> Result<(), String> {
        let waits: Vec<Duration> = waits.take(200).collect();
        if waits.len() < 200 {
            return Err(format!("gave up after {} attempts", waits.len()));
        }
        if let Some(w) = waits.iter().find(|w| **w > WATCH_BACKOFF_MAX) {
            return Err(format!("waited {w:?}"));
        }
        if waits[100..].iter().any(|w| *w < WATCH_BACKOFF_MAX / 2) {
            return Err(format!("does not back off: {waits:?}"));
        }
        Ok(())
    }

    #[test]
    fn an_outage_is_reported_once_lost_and_once_back() {
        let mut o = Outage::default();
        assert_eq!(o.back(), None, "never lost");
        assert!(o.lost());
        assert!(!o.lost(), "the same outage");
        assert!(o.back().is_some());
        assert_eq!(o.back(), None, "reported once");
        assert!(o.lost(), "a new outage");
    }

    #[test]
    fn watch_backoff_never_waits_longer_than_its_cap() {
        assert_eq!(capped(watch_backoff()), Ok(()));
        assert!(watch_backoff().next() < Some(Duration::from_millis(500)));
        // What it replaces fails the same check: after a 30 s outage a watch could
        // stay away for up to a minute.
        assert!(capped(kube::runtime::watcher::DefaultBackoff::default()).is_err());
    }
}
