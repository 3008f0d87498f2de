//! The address store as the plugin uses it: through the agent's store socket when it
//! answers, else opened here for one operation; errors mapped to CNI codes.

use crate::cni::error::{CniError, INVALID_CONFIG, IO_FAILURE, NO_FREE_ADDRESS, TRY_AGAIN_LATER};
use crate::pod_ports::BridgePorts;
use std::sync::Arc;
use twill_conf::PluginConf;
use twill_ipam::service::{Op, Outcome};
use twill_ipam::{StoreClient, StoreError};

/// When no agent serves the store and the plugin finds it lost or damaged, it rebuilds
/// it from the host veths on the pod bridge.
pub fn client(conf: &PluginConf) -> StoreClient {
    let ports = BridgePorts {
        bridge: conf.bridge.clone(),
    };
    StoreClient::new(conf.store_dir(), Some(conf.store_socket.clone()))
        .rebuilding_from(Arc::new(ports))
}

/// Runs `f` against this network's store.
pub fn with_store<T>(
    conf: &PluginConf,
    f: impl FnOnce(&StoreClient) -> Result<T, StoreError>,
) -> Result<T, CniError> {
    f(&client(conf)).map_err(|e| map_err(e, conf))
}

/// Runs `op` on the store while `work` runs here: with the agent's store service the
/// request is in flight meanwhile; without it the store is opened on another thread.
pub fn alongside<T: Send>(
    conf: &PluginConf,
    op: Op,
    work: impl FnOnce() -> T,
) -> (T, Result<Outcome, CniError>) {
    let client = client(conf);
    let pending = client.begin(op);
    let (out, outcome) = if pending.is_sent() {
        let out = work();
        (out, pending.finish())
    } else {
        std::thread::scope(|s| {
            let job = s.spawn(|| pending.finish());
            let out = work();
            let outcome = job
                .join()
                .unwrap_or_else(|_| Err(StoreError::Service("the store thread panicked".into())));
            (out, outcome)
        })
    };
    (out, outcome.map_err(|e| map_err(e, conf)))
}

fn map_err(e: StoreError, conf: &PluginConf) -> CniError {
    let code = match &e {
        StoreError::Exhausted { .. } => NO_FREE_ADDRESS,
        StoreError::InvalidRange(_) => INVALID_CONFIG,
        StoreError::Served { .. } => TRY_AGAIN_LATER,
        _ => IO_FAILURE,
    };
    CniError::new(
        code,
        format!("address store {}: {e}", conf.store_dir().display()),
    )
}
