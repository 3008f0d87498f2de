//! CHECK: the pod's interface, addresses and routes, and the store's reservation, must
//! still be what the previous result says.

use crate::cni::error::{CHECK_DRIFT, INVALID_CONFIG};
use crate::cni::{CniError, CniResult, Env};
use crate::{netns, store};
use twill_conf::PluginConf;
use twill_netlink::Netlink;

fn drift(msg: String) -> CniError {
    CniError::new(CHECK_DRIFT, msg)
}

pub async fn run(env: &Env, conf: &PluginConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(INVALID_CONFIG, "prevResult is required for CHECK"))?;
    let prev = CniResult::decode(prev)?;
    let netns = netns::open(env)?;
    let ifname = &env.attachment.ifname;

    let mut held = store::with_store(conf, |s| s.lookup(&env.attachment))?;
    let mut expected: Vec<_> = prev.ips.iter().map(|i| i.address.addr()).collect();
    held.sort();
    expected.sort();
    if held != expected {
        return Err(drift(format!(
            "address store: {} holds {held:?} for {ifname}, prevResult says {expected:?}",
            conf.store_dir().display(),
        )));
    }

    let nl = Netlink::connect()?;
    let host_name = env.attachment.host_veth_name();
    match nl.link_by_name(&host_name).await? {
        None => return Err(drift(format!("host veth {host_name} is missing"))),
        Some(l) => {
            let bridge = nl.link_by_name(&conf.bridge).await?;
            if bridge.is_none() || l.master != bridge.map(|b| b.index) {
                return Err(drift(format!(
                    "host veth {host_name} is not a port of bridge {}",
                    conf.bridge
                )));
            }
        }
    }

    let pod_nl = Netlink::connect_in(&netns)?;
    let pod = pod_nl
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| drift(format!("interface {ifname} is missing in the pod")))?;
    if let Some(want) = prev
        .interfaces
        .iter()
        .find(|i| &i.name == ifname && i.sandbox.is_some())
    {
        if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&pod.mac_string()) {
            return Err(drift(format!(
                "interface {ifname}: MAC is {}, prevResult says {}",
                pod.mac_string(),
                want.mac
            )));
        }
    }
    if !pod.up {
        return Err(drift(format!("interface {ifname} is down")));
    }
    let have = pod_nl.addresses(pod.index).await?;
    for ip in &prev.ips {
        if !have.contains(&ip.address) {
            return Err(drift(format!(
                "interface {ifname}: address {} is missing (has {have:?})",
                ip.address
            )));
        }
    }
    let v4 = pod_nl.routes(false).await?;
    let v6 = if prev.routes.iter().any(|r| r.dst.addr().is_ipv6()) {
        pod_nl.routes(true).await?
    } else {
        Vec::new()
    };
    for r in &prev.routes {
        let found = v4.iter().chain(v6.iter()).any(|k| {
            k.dst == r.dst && k.oif == Some(pod.index) && (r.gw.is_none() || k.gw == r.gw)
        });
        if !found {
            return Err(drift(format!(
                "route to {}{} is missing in the pod",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}
