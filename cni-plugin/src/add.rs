//! ADD: address from the store, then bridge, veth pair, NetworkPolicy admission, pod
//! address and routes. Any failure after the address was reserved undoes what was done
//! before it returns. A repeated ADD of an attachment that exists keeps its veth pair
//! and repairs only what drifted (`repair.rs`).

use crate::bridge;
use crate::cni::error::{CniError, INTERNAL};
use crate::cni::{CniResult, CniVersion, Env, Interface, IpConfig};
use crate::pod_routes::{gateway_for, pod_routes};
use crate::repair::{self, Found, Repair, Wanted};
use crate::{admit, netns, node, store};
use ipnet::IpNet;
use std::net::IpAddr;
use twill_conf::{PluginConf, PodNetwork, PodRange};
use twill_ipam::service::Op;
use twill_netlink::{sysctl, NetNs, Netlink, VethSpec};

/// The allocation runs in the store (the agent's, or one opened on a second thread)
/// while this thread does the netlink work that does not need the address (bridge,
/// veth pair, pod link); the two meet before the address and routes are set.
pub fn run(
    env: &Env,
    conf: &PluginConf,
    version: CniVersion,
    rt: &tokio::runtime::Runtime,
) -> Result<serde_json::Value, CniError> {
    let node = node::resolve(conf)?;
    let conf = &isolation_decided(conf, &node.ranges);
    let netns = netns::open(env)?;
    let host_name = env.attachment.host_veth_name();
    let _guard = rt.enter();
    let nl = Netlink::connect()?;

    let op = Op::Allocate {
        owner: env.attachment.clone(),
        ranges: node.ranges.clone(),
    };
    let (links, reserved) = store::alongside(conf, op, || {
        rt.block_on(prepare(&nl, env, conf, &node, &netns, &host_name))
    });
    let reserved = reserved.and_then(|outcome| {
        outcome
            .allocated()
            .map_err(|e| CniError::new(INTERNAL, format!("address store: {e}")))
    });

    // A failed repeated ADD leaves the pod as it found it; only what this ADD created
    // is undone.
    let reused = links.as_ref().is_ok_and(|l| l.reused);
    let result = match (links, &reserved) {
        (Ok(links), Ok(addrs)) => {
            tracing::info!(container = %env.attachment.container_id, ifname = %env.attachment.ifname, addresses = ?addrs, "reserved");
            // Before the pod's interface gets its address: from then on it can be reached.
            admit::run(env, conf, addrs)
                .and_then(|()| rt.block_on(finish(links, &nl, env, &node, conf, &netns, addrs)))
        }
        // An address problem is what the operator has to act on first.
        (_, Err(e)) => Err(e.clone()),
        (Err(e), Ok(_)) => Err(e),
    };
    result.map(|r| r.encode(version)).inspect_err(|e| {
        if reused {
            tracing::warn!(container = %env.attachment.container_id, error = %e, "ADD of an existing attachment failed; left in place");
            return;
        }
        tracing::warn!(container = %env.attachment.container_id, error = %e, "ADD failed; rolling back");
        if let Err(del) = rt.block_on(nl.delete_link_by_name(&host_name)) {
            tracing::warn!(link = %host_name, error = %del, "rollback: cannot delete host veth");
        }
        if reserved.is_ok() {
            release(conf, env);
        }
    })
}

/// Releases after the interface is gone, never before: an address must not be free
/// while a pod still carries it.
fn release(conf: &PluginConf, env: &Env) {
    if let Err(e) = store::with_store(conf, |s| s.release(&env.attachment)) {
        tracing::warn!(error = %e, "rollback: cannot release the address");
    }
}

/// The links of a pod before it has an address.
struct PodLinks {
    host: twill_netlink::Link,
    pod: twill_netlink::Link,
    pod_nl: Netlink,
    mtu: u32,
    bridge: u32,
    /// The pair existed before this ADD (a repeated ADD): kept, repaired in `finish`.
    reused: bool,
}

async fn prepare(
    nl: &Netlink,
    env: &Env,
    conf: &PluginConf,
    node: &PodNetwork,
    netns: &NetNs,
    host_name: &str,
) -> Result<PodLinks, CniError> {
    let mtu = match node.mtu {
        Some(m) => m,
        None => bridge::uplink_mtu(nl).await?,
    };
    let br = bridge::ensure(nl, &conf.bridge, &node.ranges, mtu).await?;
    enable_forwarding(&node.ranges)?;

    let ifname = &env.attachment.ifname;
    let mut pod_sysctls = vec![format!("net/ipv6/conf/{ifname}/accept_dad")];
    if conf.isolate_ports {
        // The node forwards pod-to-pod traffic back out of the bridge and so sends ICMP
        // redirects ("go direct"); a pod that took one would then ARP for a pod its
        // isolated port cannot reach.
        pod_sysctls.extend([
            "net/ipv4/conf/all/accept_redirects".to_string(),
            format!("net/ipv4/conf/{ifname}/accept_redirects"),
            "net/ipv6/conf/all/accept_redirects".to_string(),
            format!("net/ipv6/conf/{ifname}/accept_redirects"),
        ]);
    }
    // No DAD on the pod's IPv6 link-local address either. Best effort: a family the
    // pod's kernel lacks has no such keys.
    let pod_sysctls_set = || {
        for key in &pod_sysctls {
            let _ = sysctl::ensure(key, "0");
        }
    };

    let spec = VethSpec {
        name: host_name,
        mtu,
        master: Some(br.index),
        peer_name: ifname,
        peer_netns: netns,
    };
    // The common case first: a new pair costs no lookup. Only an ADD that finds its
    // names taken looks at what holds them.
    if let Err(e) = nl.add_veth(&spec).await {
        if !e.is_exists() {
            return Err(e.into());
        }
        let Some(host) = nl.link_by_name(host_name).await? else {
            return Err(CniError::new(
                INTERNAL,
                format!("the pod already has an interface named {ifname} (CNI_IFNAME)"),
            ));
        };
        let (pod_nl, ()) = Netlink::connect_in_here_with(netns, pod_sysctls_set)?;
        match pod_nl.link_by_name(ifname).await? {
            // A repeated ADD of this attachment: kept, repaired in `finish`.
            Some(pod) if repair::is_pair(&host, &pod) => {
                return Ok(PodLinks {
                    host,
                    pod,
                    pod_nl,
                    mtu,
                    bridge: br.index,
                    reused: true,
                });
            }
            // A leftover of an earlier ADD of this same (container, ifname), e.g. one
            // that was killed before the pod end got its place: replace it.
            _ => {
                tracing::warn!(link = %host_name, ifname = %ifname, "repair: host veth without its pod end; re-creating the pair");
                nl.delete_link(host.index).await?;
            }
        }
        if let Err(e) = nl.add_veth(&spec).await {
            if !e.is_exists() {
                return Err(e.into());
            }
            // Ours was just deleted: either a concurrent ADD of this same attachment
            // made it again, or the pod has an interface of that name.
            let msg = if nl.link_by_name(host_name).await?.is_some() {
                format!("host veth {host_name} appeared during this ADD (a concurrent ADD of the same attachment?)")
            } else {
                format!("the pod already has an interface named {ifname} (CNI_IFNAME)")
            };
            return Err(CniError::new(INTERNAL, msg));
        }
    }
    let host = nl.link_by_name(host_name).await?.ok_or_else(|| {
        CniError::new(
            INTERNAL,
            format!("host veth {host_name} vanished after creation"),
        )
    })?;
    let (pod_nl, ()) = Netlink::connect_in_here_with(netns, pod_sysctls_set)?;
    let pod = pod_nl
        .link_by_name(ifname)
        .await?
        .ok_or_else(|| CniError::new(INTERNAL, format!("{ifname} did not appear in the pod")))?;
    pod_nl.set_up(pod.index).await?;
    Ok(PodLinks {
        host,
        pod,
        pod_nl,
        mtu,
        bridge: br.index,
        reused: false,
    })
}

/// Hairpin, isolation and the alias that records the pod's addresses (what a lost
/// address store is rebuilt from), in one request.
async fn configure_port(
    nl: &Netlink,
    env: &Env,
    conf: &PluginConf,
    index: u32,
    addrs: &[IpNet],
) -> Result<(), CniError> {
    let addrs: Vec<IpAddr> = addrs.iter().map(IpNet::addr).collect();
    let alias = env.attachment.alias(&addrs);
    nl.configure_port(index, conf.hairpin_mode, conf.isolate_ports, Some(&alias))
        .await?;
    Ok(())
}

async fn finish(
    links: PodLinks,
    nl: &Netlink,
    env: &Env,
    node: &PodNetwork,
    conf: &PluginConf,
    netns: &NetNs,
    addrs: &[IpNet],
) -> Result<CniResult, CniError> {
    let routes = pod_routes(&node.ranges, conf);
    let repairs = if links.reused {
        let found = found(&links, addrs).await?;
        let wanted = Wanted {
            bridge: links.bridge,
            addrs,
            routes: &routes,
        };
        repair::plan(&found, &wanted)
    } else {
        let adds = addrs.iter().map(|a| Repair::AddAddress(*a));
        adds.chain(routes.iter().cloned().map(Repair::SetRoute))
            .collect()
    };
    if !links.reused {
        // The kernel records the address before the pod can use it.
        configure_port(nl, env, conf, links.host.index, addrs).await?;
    }
    for r in &repairs {
        if links.reused {
            tracing::warn!(pod_ifname = %links.pod.name, host = %links.host.name, "repair: {r}");
        }
        apply(r, &links, nl, conf).await?;
    }
    if links.reused {
        // isolatePorts is decided per ADD; hairpin and alias are set again as they are
        // (no change to a running pod; an alias of an older plugin gains the addresses).
        // Only a bridge port has these: after JoinBridge.
        configure_port(nl, env, conf, links.host.index, addrs).await?;
    }
    let PodLinks { host, pod, mtu, .. } = links;
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: host.name.clone(),
                mac: host.mac_string(),
                mtu: Some(mtu),
                sandbox: None,
            },
            Interface {
                name: pod.name.clone(),
                mac: pod.mac_string(),
                mtu: Some(mtu),
                sandbox: Some(netns.path().display().to_string()),
            },
        ],
        ips: addrs
            .iter()
            .map(|a| IpConfig {
                address: *a,
                gateway: gateway_for(&node.ranges, a.addr()),
                interface: Some(1),
            })
            .collect(),
        routes,
    })
}

/// What the kernel holds for an existing pair.
async fn found(links: &PodLinks, addrs: &[IpNet]) -> Result<Found, CniError> {
    let pod_nl = &links.pod_nl;
    let mut pod_routes = pod_nl.routes(false).await?;
    if addrs.iter().any(|a| a.addr().is_ipv6()) {
        pod_routes.extend(pod_nl.routes(true).await?);
    }
    Ok(Found {
        host_master: links.host.master,
        host_up: links.host.up,
        pod_index: links.pod.index,
        pod_up: links.pod.up,
        pod_addrs: pod_nl.addresses(links.pod.index).await?,
        pod_routes: pod_routes
            .into_iter()
            .map(|r| (r.dst, r.gw, r.oif))
            .collect(),
    })
}

/// One change to the pair; `nl` is the node's namespace, where the host veth lives.
async fn apply(
    change: &Repair,
    links: &PodLinks,
    nl: &Netlink,
    conf: &PluginConf,
) -> Result<(), CniError> {
    let (pod_nl, pod) = (&links.pod_nl, links.pod.index);
    match change {
        Repair::JoinBridge => nl.set_master(links.host.index, links.bridge).await?,
        Repair::HostUp => nl.set_up(links.host.index).await?,
        Repair::PodUp => pod_nl.set_up(pod).await?,
        Repair::AddAddress(a) if conf.isolate_ports => {
            pod_nl.add_address_without_prefix_route(pod, *a).await?
        }
        Repair::AddAddress(a) => pod_nl.add_address(pod, *a).await?,
        Repair::RemoveAddress(a) => pod_nl.del_address(pod, *a).await?,
        // Without prefix routes the gateway is reachable only as "onlink".
        Repair::SetRoute(r) => match r.gw {
            Some(gw) if conf.isolate_ports => pod_nl.replace_route_onlink(r.dst, gw, pod).await?,
            _ => pod_nl.replace_route(r.dst, r.gw, pod, None).await?,
        },
    }
    Ok(())
}

fn enable_forwarding(ranges: &[PodRange]) -> Result<(), CniError> {
    let families = ranges.iter().map(|r| sysctl::IpFamily::of(r.gateway));
    match sysctl::enable_forwarding(families).into_iter().next() {
        Some(e) => Err(CniError::new(INTERNAL, e.to_string())),
        None => Ok(()),
    }
}

/// `isolatePorts` routes pod-to-pod traffic of one node through the node so that its
/// `forward` hook sees it. Where br_netfilter already hands bridged frames to that hook
/// (`net.bridge.bridge-nf-call-ip(6)tables` = 1 for every family of the ranges), ports
/// stay as they are: isolating them there would break a Service whose backend is on the
/// client's node, because br_netfilter delivers the DNATed frame by bridging it, port to
/// port, which isolation forbids.
fn isolation_decided(conf: &PluginConf, ranges: &[PodRange]) -> PluginConf {
    let mut conf = conf.clone();
    if conf.isolate_ports {
        let hooked = ranges.iter().all(|r| {
            let key = if r.gateway.is_ipv4() {
                "net/bridge/bridge-nf-call-iptables"
            } else {
                "net/bridge/bridge-nf-call-ip6tables"
            };
            sysctl::read(key).is_ok_and(|v| v.trim() == "1")
        });
        if hooked {
            tracing::debug!(
                "br_netfilter hands bridged frames to the IP hooks: ports not isolated"
            );
            conf.isolate_ports = false;
        }
    }
    conf
}
