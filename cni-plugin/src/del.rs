//! DEL: remove the host veth (its pod end goes with it) and release the address.
//! Succeeds whenever there is nothing left to do.
//!
//! Deleting a veth blocks 10–30 ms in the kernel (RCU grace periods). The pod is cut off
//! first by setting its host veth down, which takes microseconds; from then on it cannot
//! use its address, so the address is released while the deletion runs.

use crate::cni::error::IO_FAILURE;
use crate::cni::{CniError, Env};
use crate::store;
use twill_conf::port_alias::may_be_cut;
use twill_conf::PluginConf;
use twill_ipam::service::{Op, Outcome};
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
    let deleted = deleted?;
    let released = match released {
        Ok(outcome) => outcome,
        // The pod is cut off and its veth gone: a reservation left behind only wastes an
        // address, never hands it out twice. A GC that no longer lists this attachment
        // (or a repeated DEL) releases it once the store can be written again.
        Err(e) if e.code == IO_FAILURE => {
            tracing::warn!(container = %env.attachment.container_id, ifname = %env.attachment.ifname, veth_deleted = deleted, error = %e, "deleted; the release could not be written and is left for GC");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if may_be_cut(&env.attachment) && matches!(&released, Outcome::Addresses(a) if a.is_empty()) {
        // A rebuilt store may hold this pod's address under its stand-in.
        store::with_store(conf, |s| s.release(&env.attachment.stand_in()))?;
    }
    tracing::info!(container = %env.attachment.container_id, ifname = %env.attachment.ifname, veth_deleted = deleted, released = ?released, "deleted");
    Ok(())
}
