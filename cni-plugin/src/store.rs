//! The address store as the plugin uses it: open for one critical section, errors mapped
//! to CNI codes.

use crate::cni::error::{CniError, INVALID_CONFIG, IO_FAILURE, NO_FREE_ADDRESS};
use crate::cni::Env;
use twill_conf::{PluginConf, PodRange};
use twill_ipam::{Owner, Range, Store, StoreError};

pub fn owner(env: &Env) -> Owner {
    Owner {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

pub fn ranges(pod_ranges: &[PodRange]) -> Vec<Range> {
    pod_ranges
        .iter()
        .map(|r| Range {
            subnet: r.subnet,
            gateway: r.gateway,
        })
        .collect()
}

/// Runs `f` with the store open (and its lock held), and closes it right after.
pub fn with_store<T>(
    conf: &PluginConf,
    f: impl FnOnce(&Store) -> Result<T, StoreError>,
) -> Result<T, CniError> {
    let dir = conf.store_dir();
    let store = Store::open(&dir).map_err(|e| map_err(e, conf))?;
    f(&store).map_err(|e| map_err(e, conf))
}

fn map_err(e: StoreError, conf: &PluginConf) -> CniError {
    let code = match &e {
        StoreError::Exhausted { .. } => NO_FREE_ADDRESS,
        StoreError::InvalidRange(_) => INVALID_CONFIG,
        _ => IO_FAILURE,
    };
    CniError::new(
        code,
        format!("address store {}: {e}", conf.store_dir().display()),
    )
}
