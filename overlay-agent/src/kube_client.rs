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
