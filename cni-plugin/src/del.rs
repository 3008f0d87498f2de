//! DEL: remove the host veth (its pod end goes with it) and release the address.
//! Succeeds whenever there is nothing left to do.
//!
//! Deleting a veth blocks 10–30 ms in the kernel (RCU grace periods). The pod is cut off
//! first by setting its host veth down, which takes microseconds; from then on it cannot
//! use its address, so the address is released while the deletion runs.

use crate::cni::{CniError, Env};
use crate::store;
use twill_conf::PluginConf;
use twill_ipam::service::Op;
use twill_netlink::Netlink;

pub fn run(env: &Env, conf: &PluginConf, rt: &tokio::runtime::Runtime) -> Result<(), CniError> {
    let host_name = env.attachment.host_veth_name();
    let _guard = rt.enter();
    let nl = Netlink::connect()?;
    let host = rt.block_on(nl.link_by_name(&host_name))?;
    if let Some(h) = &host {
        match rt.block_on(nl.set_down(h.index)) {
            Ok(()) => {}
            // Gone in between (its namespace was deleted): nothing to cut off.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let op = Op::Release {
        owner: env.attachment.clone(),
    };
    let (deleted, released) = store::alongside(conf, op, || match &host {
        Some(h) => rt.block_on(nl.delete_link(h.index)).map_err(CniError::from),
        None => Ok(false),
    });
    let (deleted, released) = (deleted?, released?);
    tracing::info!(container = %env.attachment.container_id, ifname = %env.attachment.ifname, veth_deleted = deleted, released = ?released, "deleted");
    Ok(())
}
