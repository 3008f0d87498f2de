//! `twill-agent uninstall`: everything the agent put on this node goes, and its record
//! leaves the registry.

use super::logging::init_logging;
use crate::{node_name, registry_for, RunArgs};
use anyhow::{Context, Result};
use std::net::IpAddr;
use twill_agent::datapath::{device_name, Datapath, DeviceConf};
use twill_agent::firewall::policy::render_delete_policy_table;
use twill_agent::firewall::{Firewall, Nft};
use twill_agent::policy::enforce;
use twill_agent::record::Mac;
use twill_conf::ClusterConf;

pub async fn uninstall(a: RunArgs) -> Result<std::process::ExitCode> {
    init_logging(&a.log_level);
    let cluster = ClusterConf::read(&a.conf).context("cluster network configuration")?;
    let node = node_name(&a)?;
    let vni = cluster.backend.vni;
    let nl = twill_netlink::Netlink::connect()?;
    // Only the device name and route protocol matter for removal.
    let dp = Datapath::new(
        nl.clone(),
        DeviceConf {
            name: device_name(vni),
            vni,
            port: cluster.backend.port,
            local: IpAddr::from([0, 0, 0, 0]),
            underlay_index: 0,
            mac: Mac::for_node(&node, vni),
            mtu: 0,
            checksum_offload: false,
            own_subnets: Vec::new(),
        },
    );
    dp.remove_all()
        .await
        .context("removing the VXLAN device and routes")?;
    let nft = Nft::new();
    nft.remove().context("removing the firewall rules")?;
    let policy_table = enforce::policy_table(nft.table());
    Nft::with_table(&policy_table)
        .run_script(&render_delete_policy_table(&policy_table))
        .context("removing the NetworkPolicy table")?;
    let removed = a.host.paths(false).remove_all()?;
    for p in &removed {
        println!("removed {}", p.display());
    }
    match twill_agent::host::remove_idle_bridge(&nl, &a.host.bridge).await {
        Ok(true) => println!("removed bridge {}", a.host.bridge),
        Ok(false) => {}
        Err(e) => eprintln!("twill-agent: cannot remove bridge {}: {e}", a.host.bridge),
    }
    match registry_for(&cluster, &node, &a.kube).await {
        Ok((r, _, _)) => r
            .leave(&node)
            .await
            .context("removing this node's record")?,
        Err(e) => eprintln!("twill-agent: could not reach the registry to remove this node: {e:#}"),
    }
    println!(
        "removed device {}, routes, firewall rules and node record {node}",
        device_name(vni)
    );
    Ok(std::process::ExitCode::SUCCESS)
}
