//! What the plugin knows about the node: its pod ranges and the pod MTU.

use crate::cni::error::{CniError, TRY_AGAIN_LATER};
use twill_conf::{PluginConf, PodNetwork, SubnetFile};

/// The inline subnet wins; otherwise the agent's subnet file must exist. The MTU of the
/// config wins over the subnet file's; `None` means "ask the uplink".
pub fn resolve(conf: &PluginConf) -> Result<PodNetwork, CniError> {
    if let Some(range) = &conf.range {
        // The subnet file may still say what MTU the overlay needs.
        let file_mtu = match conf.mtu {
            Some(_) => None,
            None => SubnetFile::load(&conf.subnet_file).ok().and_then(|f| f.mtu),
        };
        return Ok(PodNetwork {
            ranges: vec![range.clone()],
            mtu: conf.mtu.or(file_mtu),
        });
    }
    if !conf.subnet_file.exists() {
        return Err(CniError::new(
            TRY_AGAIN_LATER,
            format!(
                "no pod subnet known yet: {} does not exist (is twill-agent running on this node?)",
                conf.subnet_file.display()
            ),
        ));
    }
    let file = SubnetFile::load(&conf.subnet_file)?;
    Ok(PodNetwork {
        mtu: conf.mtu.or(file.mtu),
        ..file
    })
}
