//! DEL: remove the host veth (its pod end goes with it) and release the address.
//! Succeeds whenever there is nothing left to do.
//!
//! Deleting a veth blocks 10–30 ms in the kernel (RCU grace periods). The pod is cut off
//! first by setting its host veth down, which takes microseconds; from then on it cannot
//! use its address, so the address is released while the deletion runs.

use crate::bridge::kernel_err;
use crate::cni::{CniError, Env};
use crate::store;
use twill_conf::host_veth;
use twill_conf::PluginConf;
use twill_ipam::service::Op;
use twill_netlink::Netlink;

pub fn run(env: &Env, conf: &PluginConf, rt: &tokio::runtime::Runtime) -> Result<(), CniError> {
    let host_name = host_veth::name(&env.container_id, &env.ifname);
    let _guard = rt.enter();
    let nl = Netlink::connect().map_err(kernel_err)?;
    let host = rt
        .block_on(nl.link_by_name(&host_name))
        .map_err(kernel_err)?;
    if let Some(h) = &host {
        match rt.block_on(nl.set_down(h.index)) {
            Ok(()) => {}
            // Gone in between (its namespace was deleted): nothing to cut off.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(kernel_err(e)),
        }
    }
    let op = Op::Release {
        owner: store::owner(env),
    };
    let (deleted, released) = store::alongside(conf, op, || match &host {
        Some(h) => rt.block_on(nl.delete_link(h.index)).map_err(kernel_err),
        None => Ok(false),
    });
    let (deleted, released) = (deleted?, released?);
    tracing::info!(container = %env.container_id, ifname = %env.ifname, veth_deleted = deleted, released = ?released, "deleted");
    Ok(())
}
