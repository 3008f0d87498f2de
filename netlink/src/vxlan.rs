//! The overlay's VXLAN device: created, left alone, fixed in place or recreated.

use crate::connection::{Ask, Netlink};
use crate::error::{NetlinkError, Result};
use crate::link::{Link, VxlanInfo};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{LinkUnspec, LinkVxlan};
use std::net::IpAddr;

/// What the agent wants its VXLAN device to be.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    pub vni: u32,
    /// UDP destination port, e.g. 8472.
    pub port: u16,
    /// Underlay source address.
    pub local: IpAddr,
    /// Ifindex of the underlay device (`dev`).
    pub underlay_index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// True when a device with these parameters is the one `spec` asks for (MAC, MTU and
/// up-state aside, which can be fixed in place).
fn info_matches(info: &VxlanInfo, spec: &VxlanSpec<'_>) -> bool {
    info.vni == spec.vni
        && info.port == spec.port
        && info.local == Some(spec.local)
        && info.underlay_index == Some(spec.underlay_index)
        && !info.learning
}

fn vxlan_matches(link: &Link, spec: &VxlanSpec<'_>) -> bool {
    link.kind.as_deref() == Some("vxlan")
        && link.vxlan.as_ref().is_some_and(|v| info_matches(v, spec))
}

impl Netlink {
    /// Creates the VXLAN device if missing (learning off, given MAC and MTU, up). If a
    /// link with that name exists but is not a VXLAN device, or has another VNI, port,
    /// local address or underlay device, or has learning on, deletes and recreates it.
    /// If it exists and matches, only fixes MAC, MTU and up-state where they differ, in
    /// one request (none when nothing differs). Returns the link (read after the
    /// changes) and whether it was (re)created.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<(Link, bool)> {
        let mut created = false;
        let link = match self.link_by_name(spec.name).await? {
            Some(link) if vxlan_matches(&link, spec) => link,
            existing => {
                if let Some(old) = existing {
                    tracing::info!(
                        name = spec.name,
                        index = old.index,
                        kind = ?old.kind,
                        vxlan = ?old.vxlan,
                        "recreating VXLAN device with other parameters"
                    );
                    self.delete_link(old.index).await?;
                }
                match self.create_vxlan(spec).await {
                    Ok(()) => created = true,
                    // Someone created it in between: judged below.
                    Err(e) if e.is_exists() => {}
                    Err(e) => return Err(e),
                }
                let link = self.link_by_name(spec.name).await?.ok_or_else(|| {
                    NetlinkError::failed(format!(
                        "VXLAN device {} vanished right after creation",
                        spec.name
                    ))
                })?;
                if !vxlan_matches(&link, spec) {
                    return Err(NetlinkError::failed(format!(
                        "VXLAN device {} was created with other parameters: {:?}",
                        spec.name, link.vxlan
                    )));
                }
                link
            }
        };

        let mut msg = LinkUnspec::new_with_index(link.index);
        let mut drift = false;
        if link.mac != Some(spec.mac) {
            msg = msg.address(spec.mac.to_vec());
            drift = true;
        }
        if link.mtu != spec.mtu {
            msg = msg.mtu(spec.mtu);
            drift = true;
        }
        if !link.up {
            msg = msg.up();
            drift = true;
        }
        if !drift {
            return Ok((link, created));
        }
        self.set_link(msg, || {
            format!("fix MAC/MTU/up-state of VXLAN device {}", spec.name)
        })
        .await?;
        let link = self.link_by_index(link.index).await?.ok_or_else(|| {
            NetlinkError::failed(format!(
                "VXLAN device {} vanished while being configured",
                spec.name
            ))
        })?;
        Ok((link, created))
    }

    async fn create_vxlan(&self, spec: &VxlanSpec<'_>) -> Result<()> {
        let mut builder = LinkVxlan::new(spec.name, spec.vni)
            .dev(spec.underlay_index)
            .port(spec.port)
            .learning(false);
        builder = match spec.local {
            IpAddr::V4(a) => builder.local(a),
            IpAddr::V6(a) => builder.local6(a),
        };
        let msg = builder
            .address(spec.mac.to_vec())
            .mtu(spec.mtu)
            .up()
            .build();
        let op = || {
            format!(
                "create VXLAN device {} (vni {}, port {}, local {}, dev {})",
                spec.name, spec.vni, spec.port, spec.local, spec.underlay_index
            )
        };
        self.change(Ask::Create, RouteNetlinkMessage::NewLink(msg), op)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::InfoVxlan;

    #[test]
    fn vxlan_info_matches_spec() {
        let spec = VxlanSpec {
            name: "twill.1",
            vni: 1,
            port: 8472,
            local: "10.0.0.1".parse().unwrap(),
            underlay_index: 2,
            mac: [2, 0, 0, 0, 0, 1],
            mtu: 1450,
        };
        let info = VxlanInfo::from_info_data(&[
            InfoVxlan::Id(1),
            InfoVxlan::Local("10.0.0.1".parse().unwrap()),
            InfoVxlan::Link(2),
            InfoVxlan::Port(8472),
            InfoVxlan::Learning(false),
        ]);
        assert!(info_matches(&info, &spec));
        let differs = |other: VxlanInfo| !info_matches(&other, &spec);
        assert!(differs(VxlanInfo {
            vni: 2,
            ..info.clone()
        }));
        assert!(differs(VxlanInfo {
            learning: true,
            ..info.clone()
        }));
        assert!(differs(VxlanInfo {
            underlay_index: None,
            ..info.clone()
        }));
        assert!(differs(VxlanInfo { port: 4789, ..info }));
    }
}
