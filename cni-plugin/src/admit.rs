//! The admission of a new pod (NetworkPolicy): after its address is reserved and before
//! its interface carries it, the agent is told which pod gets which addresses and answers
//! once that pod's rules are in force. Only where the conflist says the agent enforces
//! NetworkPolicy (`networkPolicy`); elsewhere this costs nothing.

use crate::cni::error::{CniError, TRY_AGAIN_LATER};
use crate::cni::Env;
use crate::store;
use ipnet::IpNet;
use std::time::Instant;
use twill_conf::PluginConf;
use twill_ipam::service::Admission;

/// Returns once the agent has the pod's rules in force. An agent that does not answer
/// fails the ADD (the runtime retries it): a pod must never come up open where
/// NetworkPolicy is enforced.
pub fn run(env: &Env, conf: &PluginConf, addrs: &[IpNet]) -> Result<(), CniError> {
    if !conf.network_policy {
        return Ok(());
    }
    let arg = |key: &str| {
        env.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    let (Some(namespace), Some(name)) = (arg("K8S_POD_NAMESPACE"), arg("K8S_POD_NAME")) else {
        // Not a Kubernetes pod: no NetworkPolicy can select it.
        tracing::debug!("no K8S_POD_NAMESPACE/K8S_POD_NAME: no NetworkPolicy admission");
        return Ok(());
    };
    let admission = Admission {
        owner: env.attachment.clone(),
        namespace,
        name,
        ips: addrs.iter().map(IpNet::addr).collect(),
    };
    let pod = format!("{}/{}", admission.namespace, admission.name);
    let started = Instant::now();
    match store::client(conf).admit(admission) {
        Ok(true) => {
            tracing::info!(pod, elapsed = ?started.elapsed(), "NetworkPolicy rules in force");
            Ok(())
        }
        Ok(false) => Err(CniError::new(
            TRY_AGAIN_LATER,
            format!("NetworkPolicy is enforced on this node but the agent did not admit pod {pod}: its store service at {} does not answer", conf.store_socket.display()),
        )),
        Err(e) => Err(CniError::new(
            TRY_AGAIN_LATER,
            format!("the NetworkPolicy rules of pod {pod} are not in force: {e}"),
        )),
    }
}
