//! The subnet file: what the agent knows about this node that the plugin needs.
//!
//! ```json
//! {"networks": ["10.244.0.0/16"], "subnets": ["10.244.1.0/24"], "mtu": 1450, "ipMasq": true}
//! ```
//! `subnets` holds at most one subnet per address family, and so does `networks` (the
//! cluster networks they are carved from). The gateway of each subnet is its first host
//! address.

use crate::{ConfError, PodRange};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetFile {
    /// The cluster networks (one per family) the pod subnets are carved from.
    #[serde(default)]
    pub networks: Vec<IpNet>,
    /// This node's pod subnets.
    pub subnets: Vec<IpNet>,
    /// MTU for pod interfaces (underlay MTU minus encapsulation).
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ip_masq: bool,
}

/// What a valid subnet file tells the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The node's pod ranges, gateways included, at most one per family.
    pub ranges: Vec<PodRange>,
    /// MTU for pod interfaces; `None` when the file does not say.
    pub mtu: Option<u32>,
}

impl SubnetFile {
    /// Reads the file as written, without judging its content (the agent compares it with
    /// what it would write); [`SubnetFile::load`] also validates it.
    pub fn read(path: &Path) -> Result<Self, ConfError> {
        let bytes = std::fs::read(path).map_err(|e| file_error(path, e.to_string()))?;
        Self::parse(&bytes).map_err(|e| file_error(path, e.to_string()))
    }

    /// Decodes the file's content; the error names the field at fault.
    pub fn parse(bytes: &[u8]) -> Result<Self, crate::json::JsonError> {
        crate::json::decode(bytes)
    }

    /// Reads and validates the file, once: what the plugin needs from it.
    pub fn load(path: &Path) -> Result<PodNetwork, ConfError> {
        Self::read(path)?
            .network()
            .map_err(|reason| file_error(path, reason))
    }

    /// What a valid file tells the plugin: its ranges, and an MTU a link can have (the
    /// range the network config's `mtu` has).
    pub fn network(&self) -> Result<PodNetwork, String> {
        let ranges = self.ranges()?;
        if let Some(mtu) = self.mtu.filter(|m| !(68..=65535).contains(m)) {
            return Err(format!("\"mtu\": {mtu} is out of range 68..=65535"));
        }
        Ok(PodNetwork {
            ranges,
            mtu: self.mtu,
        })
    }

    /// The pod ranges of this node, gateways included.
    pub fn ranges(&self) -> Result<Vec<PodRange>, String> {
        if self.subnets.is_empty() {
            return Err("\"subnets\" is empty".into());
        }
        let mut seen = (false, false);
        let mut out = Vec::with_capacity(self.subnets.len());
        for s in &self.subnets {
            let slot = if s.addr().is_ipv4() {
                &mut seen.0
            } else {
                &mut seen.1
            };
            if std::mem::replace(slot, true) {
                return Err(format!("\"subnets\" has two subnets of the family of {s}"));
            }
            let nets: Vec<&IpNet> = self
                .networks
                .iter()
                .filter(|n| n.addr().is_ipv4() == s.addr().is_ipv4())
                .collect();
            if !nets.is_empty() && !nets.iter().any(|n| n.contains(s)) {
                return Err(format!("subnet {s} lies outside the network {}", nets[0]));
            }
            out.push(PodRange::with_first_host_gateway(*s)?);
        }
        Ok(out)
    }

    /// Writes the file atomically (temp file, fsync, rename), so the plugin never reads a
    /// half-written file. Returns whether the content changed.
    pub fn write_atomic(&self, path: &Path) -> std::io::Result<bool> {
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::atomic::write_if_changed(path, &body, 0o644)
    }
}

fn file_error(path: &Path, reason: String) -> ConfError {
    ConfError::SubnetFile {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read() {
        let dir = std::env::temp_dir().join(format!("twill-conf-test-{}", std::process::id()));
        let path = dir.join("subnet.json");
        let f = SubnetFile {
            networks: vec!["10.244.0.0/16".parse().unwrap()],
            subnets: vec!["10.244.3.0/24".parse().unwrap()],
            mtu: Some(1450),
            ip_masq: true,
        };
        f.write_atomic(&path).unwrap();
        assert_eq!(SubnetFile::read(&path).unwrap(), f);
        let network = SubnetFile::load(&path).unwrap();
        assert_eq!(network.ranges[0].gateway.to_string(), "10.244.3.1");
        assert_eq!(network.mtu, Some(1450));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// serde's own reasons ("invalid IP address syntax") do not say where; a file the
    /// agent wrote and an operator edited must.
    #[test]
    fn decode_errors_name_the_field() {
        for (doc, field) in [
            (
                r#"{"subnets": ["10.244.1.0/24", "10.244.2.0/33"]}"#,
                "subnets[1]",
            ),
            (r#"{"subnets": [], "networks": [7]}"#, "networks[0]"),
            (r#"{"subnets": [], "mtu": -1}"#, "mtu"),
            (r#"{"subnets": [], "mtu": 4294967296}"#, "mtu"),
            (r#"{"subnets": [], "ipMasq": "yes"}"#, "ipMasq"),
        ] {
            let e = SubnetFile::parse(doc.as_bytes()).expect_err(doc);
            assert_eq!(e.field, field, "{doc}: {e}");
            assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
        }
        for (doc, key) in [
            (r#"{"networks": []}"#, "subnets"),
            (r#"{"subnets": [], "subnet": "10.0.0.0/24"}"#, "subnet"),
        ] {
            let e = SubnetFile::parse(doc.as_bytes()).expect_err(doc);
            assert!(e.reason.contains(key), "{doc}: {e}");
        }
    }

    /// Found writing the property tests: an MTU no link can have (0, 4294967295) was handed
    /// to the kernel, which refused it with a netlink error (999) that did not name the
    /// subnet file.
    #[test]
    fn an_mtu_out_of_range_is_refused_naming_mtu() {
        for mtu in [0, 67, 65536, u32::MAX] {
            let f = SubnetFile {
                networks: vec![],
                subnets: vec!["10.244.3.0/24".parse().unwrap()],
                mtu: Some(mtu),
                ip_masq: false,
            };
            assert!(f.network().unwrap_err().contains("\"mtu\""), "{mtu}");
        }
    }

    #[test]
    fn rejects_subnet_outside_network_and_two_of_a_family() {
        let f = SubnetFile {
            networks: vec!["10.244.0.0/16".parse().unwrap()],
            subnets: vec!["10.245.3.0/24".parse().unwrap()],
            mtu: None,
            ip_masq: false,
        };
        assert!(f.ranges().unwrap_err().contains("outside"));
        let f = SubnetFile {
            networks: vec![],
            subnets: vec![
                "10.244.3.0/24".parse().unwrap(),
                "10.244.4.0/24".parse().unwrap(),
            ],
            mtu: None,
            ip_masq: false,
        };
        assert!(f.ranges().unwrap_err().contains("two subnets"));
    }

    #[test]
    fn dual_stack_networks_check_each_family() {
        let f = SubnetFile {
            networks: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/48".parse().unwrap(),
            ],
            subnets: vec![
                "10.244.3.0/24".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            ],
            mtu: None,
            ip_masq: true,
        };
        assert_eq!(f.ranges().unwrap().len(), 2);
        let f = SubnetFile {
            networks: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/48".parse().unwrap(),
            ],
            subnets: vec!["fd00:10:245:3::/64".parse().unwrap()],
            mtu: None,
            ip_masq: true,
        };
        assert!(f.ranges().unwrap_err().contains("outside"));
    }
}
