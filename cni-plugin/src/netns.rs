//! The pod's network namespace, as CNI_NETNS names it.

use crate::cni::error::{CniError, INVALID_ENV, UNKNOWN_CONTAINER};
use crate::cni::Env;
use twill_netlink::{NetNs, NetnsError};

/// Opens CNI_NETNS; a namespace that is gone is an unknown container (code 3).
pub fn open(env: &Env) -> Result<NetNs, CniError> {
    let path = env
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(INVALID_ENV, "CNI_NETNS is not set"))?;
    NetNs::open(path).map_err(|e| match e {
        e if e.is_gone() => CniError::new(
            UNKNOWN_CONTAINER,
            format!("CNI_NETNS {}: no such network namespace", path.display()),
        ),
        NetnsError::NotNetns { .. } => CniError::new(
            INVALID_ENV,
            format!("CNI_NETNS {} is not a network namespace", path.display()),
        ),
        other => CniError::new(INVALID_ENV, format!("CNI_NETNS: {other}")),
    })
}
