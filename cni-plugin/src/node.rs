//! What the plugin knows about the node: its pod ranges and the pod MTU.

use crate::cni::error::{CniError, TRY_AGAIN_LATER};
use twill_conf::{PluginConf, PodRange, SubnetFile};

pub struct NodeNetwork {
    pub ranges: Vec<PodRange>,
    /// MTU from the config or the subnet file; `None` means "ask the uplink".
    pub mtu: Option<u32>,
}

impl NodeNetwork {
    /// The inline subnet wins; otherwise the agent's subnet file must exist.
    pub fn resolve(conf: &PluginConf) -> Result<Self, CniError> {
        if let Some(range) = &conf.range {
            // The subnet file may still say what MTU the overlay needs.
            let file_mtu = match conf.mtu {
                Some(_) => None,
                None => SubnetFile::read(&conf.subnet_file).ok().and_then(|f| f.mtu),
            };
            return Ok(NodeNetwork {
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
        let file = SubnetFile::read(&conf.subnet_file)?;
        let ranges = file.ranges().map_err(|reason| {
            CniError::from(twill_conf::ConfError::SubnetFile {
                path: conf.subnet_file.clone(),
                reason,
            })
        })?;
        Ok(NodeNetwork {
            ranges,
            mtu: conf.mtu.or(file.mtu),
        })
    }
}
