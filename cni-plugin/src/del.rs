//! DEL: remove the host veth (its pod end goes with it), then release the address.
//! Succeeds whenever there is nothing left to do.

use crate::bridge::kernel_err;
use crate::cni::{CniError, Env};
use crate::{host_veth, store};
use twill_conf::PluginConf;
use twill_netlink::Netlink;

pub async fn run(env: &Env, conf: &PluginConf) -> Result<(), CniError> {
    let host_name = host_veth::name(&env.container_id, &env.ifname);
    let nl = Netlink::connect().map_err(kernel_err)?;
    let deleted = nl
        .delete_link_by_name(&host_name)
        .await
        .map_err(kernel_err)?;
    let owner = store::owner(env);
    let released = store::with_store(conf, |s| s.release(&owner))?;
    tracing::info!(container = %env.container_id, ifname = %env.ifname, veth_deleted = deleted, released = ?released, "deleted");
    Ok(())
}
