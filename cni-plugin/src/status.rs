//! STATUS: can an ADD be served right now?

use crate::cni::error::PLUGIN_NOT_AVAILABLE;
use crate::cni::CniError;
use crate::node;
use twill_conf::PluginConf;

pub fn run(conf: &PluginConf) -> Result<(), CniError> {
    let unavailable = |e: CniError| CniError::new(PLUGIN_NOT_AVAILABLE, e.msg);
    node::resolve(conf).map_err(unavailable)?;
    crate::store::with_store(conf, |s| s.verify()).map_err(unavailable)?;
    Ok(())
}
