//! Reservations recovered from the kernel: every host veth records its pod's owner and
//! addresses in its alias (`twill_conf::port_alias`), so a lost store is rebuilt from
//! the node's pod interfaces without entering any pod.
//!
//! Listing the interfaces is I/O and belongs to the binaries ([`PodPorts`]); turning what
//! they list into reservations is [`recover`], pure.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;

use twill_conf::port_alias::{self, AliasError, AliasOwner};
use twill_conf::{Attachment, HOST_VETH_PREFIX};

use crate::Reservation;

/// A host veth of the node's pod bridge, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub link: String,
    pub alias: Option<String>,
}

/// Lists the node's pod interfaces (host veths on the pod bridge).
pub trait PodPorts: Send + Sync + fmt::Debug {
    fn list(&self) -> Result<Vec<PodPort>, String>;
}

/// The pod ports among a bridge's veths, given as (name, alias): Twill's host veths.
pub fn pod_ports(veths: impl IntoIterator<Item = (String, Option<String>)>) -> Vec<PodPort> {
    veths
        .into_iter()
        .filter(|(name, _)| name.starts_with(HOST_VETH_PREFIX))
        .map(|(link, alias)| PodPort { link, alias })
        .collect()
}

/// What the pod interfaces say about reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub reservations: Vec<Reservation>,
    /// Host veths whose pod's address cannot be known from the kernel alone (an alias of
    /// a plugin older than the address record, or one that is unreadable), with why.
    pub unknown: Vec<(String, String)>,
}

/// The reservations `ports` record. An address claimed twice is kept for the first
/// claimant only and the second is reported as unknown.
pub fn recover(ports: &[PodPort]) -> Recovered {
    let mut out = Recovered::default();
    let mut taken: HashSet<IpAddr> = HashSet::new();
    for port in ports {
        // No alias yet: an ADD in flight, whose pod gets its address only after the
        // alias records it.
        let Some(alias) = &port.alias else {
            continue;
        };
        let parsed = match port_alias::parse(alias) {
            Ok(p) => p,
            // Not ours: another program's veth on our bridge.
            Err(AliasError::NotTwill) => continue,
            Err(e) => {
                out.unknown.push((port.link.clone(), e.to_string()));
                continue;
            }
        };
        if parsed.addrs.is_empty() {
            out.unknown.push((
                port.link.clone(),
                format!("alias {alias:?} records no address (written by an older plugin)"),
            ));
            continue;
        }
        let owner = match parsed.owner {
            AliasOwner::Whole(a) => a,
            // The whole container ID is lost; the host veth name still identifies it.
            AliasOwner::Cut { ifname, .. } => Attachment::new(format!("~{}", port.link), ifname),
        };
        for address in parsed.addrs {
            if taken.insert(address) {
                out.reservations.push(Reservation {
                    owner: owner.clone(),
                    address,
                });
            } else {
                out.unknown.push((
                    port.link.clone(),
                    format!("{address} is recorded by another interface too"),
                ));
            }
        }
    }
    out
}

/// The aliases to write so that every pod interface records its addresses: those of
/// older plugins (no addresses) whose owner `held` has addresses for, as (link, alias).
pub fn completed_aliases(ports: &[PodPort], held: &[Reservation]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for port in ports {
        let Some(Ok(parsed)) = port.alias.as_deref().map(port_alias::parse) else {
            continue;
        };
        let AliasOwner::Whole(owner) = parsed.owner else {
            continue;
        };
        if !parsed.addrs.is_empty() {
            continue;
        }
        let addrs: Vec<IpAddr> = held
            .iter()
            .filter(|r| r.owner == owner)
            .map(|r| r.address)
            .collect();
        if !addrs.is_empty() {
            out.push((port.link.clone(), owner.alias(&addrs)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(link: &str, alias: Option<&str>) -> PodPort {
        PodPort {
            link: link.into(),
            alias: alias.map(str::to_string),
        }
    }

    fn held(r: &Recovered) -> Vec<(String, String, String)> {
        r.reservations
            .iter()
            .map(|r| {
                (
                    r.owner.container_id.clone(),
                    r.owner.ifname.clone(),
                    r.address.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn every_recorded_address_becomes_a_reservation_of_its_owner() {
        let r = recover(&[
            port("tw1", Some("twill:a:eth0:ip=10.0.0.2,fd00::2")),
            port("tw2", Some("twill:b:net1:ip=10.0.0.3")),
        ]);
        assert_eq!(
            held(&r),
            vec![
                ("a".into(), "eth0".into(), "10.0.0.2".into()),
                ("a".into(), "eth0".into(), "fd00::2".into()),
                ("b".into(), "net1".into(), "10.0.0.3".into()),
            ]
        );
        assert!(r.unknown.is_empty());
    }

    #[test]
    fn a_cut_container_id_is_held_by_the_stand_in_of_its_attachment() {
        let whole = Attachment::new(format!("k8s.io-{}", "f".repeat(300)), "eth0");
        let alias = whole.alias(&["10.0.0.9".parse().unwrap()]);
        let r = recover(&[port(&whole.host_veth_name(), Some(&alias))]);
        assert_eq!(r.reservations.len(), 1);
        assert_eq!(r.reservations[0].owner, whole.stand_in());
    }

    #[test]
    fn aliases_of_older_plugins_gain_the_addresses_the_store_holds() {
        let held = vec![
            Reservation {
                owner: Attachment::new("old", "eth0"),
                address: "10.0.0.4".parse().unwrap(),
            },
            Reservation {
                owner: Attachment::new("new", "eth0"),
                address: "10.0.0.5".parse().unwrap(),
            },
        ];
        let ports = [
            port("tw1", Some("twill:old:eth0")),
            port("tw2", Some("twill:new:eth0:ip=10.0.0.5")),
            port("tw3", Some("twill:gone:eth0")),
            port("tw4", Some("uplink")),
            port("tw5", None),
        ];
        assert_eq!(
            completed_aliases(&ports, &held),
            vec![("tw1".to_string(), "twill:old:eth0:ip=10.0.0.4".to_string())]
        );
    }

    #[test]
    fn foreign_veths_are_skipped_and_unknown_addresses_reported() {
        let r = recover(&[
            port("tw1", Some("uplink")),
            port("tw2", Some("twill:old:eth0")),
            port("tw3", None),
            port("tw4", Some("twill:x:eth0:ip=banana")),
            port("tw5", Some("twill:y:eth0:ip=10.0.0.5")),
            port("tw6", Some("twill:z:eth0:ip=10.0.0.5")),
        ]);
        assert_eq!(
            held(&r),
            vec![("y".into(), "eth0".into(), "10.0.0.5".into())]
        );
        let links: Vec<&str> = r.unknown.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(links, vec!["tw2", "tw4", "tw6"]);
    }
}
