//! GC: release every reservation and remove every host veth of this network that the
//! runtime no longer lists.

use crate::cni::error::INVALID_CONFIG;
use crate::cni::CniError;
use std::collections::HashSet;
use twill_conf::plugin::VALID_ATTACHMENTS_KEY;
use twill_conf::port_alias::may_be_cut;
use twill_conf::{Attachment, PluginConf, HOST_VETH_PREFIX};
use twill_netlink::Netlink;

pub async fn run(conf: &PluginConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        // Without the list everything would look stale: refuse rather than wipe the node.
        CniError::new(
            INVALID_CONFIG,
            format!("GC needs the key {VALID_ATTACHMENTS_KEY:?}"),
        )
    })?;
    let keep_links: HashSet<String> = valid.iter().map(|a| a.host_veth_name()).collect();

    // Interfaces first, addresses after, as in DEL.
    let nl = Netlink::connect()?;
    let mut removed_links = 0;
    for link in nl.veth_ports(&conf.bridge).await? {
        let ours = link.name.starts_with(HOST_VETH_PREFIX);
        if ours && !keep_links.contains(&link.name) {
            tracing::info!(link = %link.name, alias = ?link.alias, "GC: removing stale host veth");
            nl.delete_link(link.index).await?;
            removed_links += 1;
        }
    }
    // A reservation rebuilt from a cut alias is held by the attachment's stand-in.
    let stand_ins = valid
        .iter()
        .filter(|a| may_be_cut(a))
        .map(Attachment::stand_in);
    let keep: Vec<Attachment> = valid.iter().cloned().chain(stand_ins).collect();
    let released = crate::store::with_store(conf, |s| s.retain(keep))?;
    for r in &released {
        tracing::info!(container = %r.owner.container_id, ifname = %r.owner.ifname, address = %r.address, "GC: released");
    }
    tracing::info!(
        removed_links,
        released = released.len(),
        kept = valid.len(),
        "GC done"
    );
    Ok(())
}
