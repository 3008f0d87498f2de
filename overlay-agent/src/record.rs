//! What a node publishes about itself in the registry, whichever backend carries it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use twill_conf::json::JsonError;

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The VTEP MAC of `node`: derived from its name (FNV-1a), locally administered and
    /// unicast. It needs no state, so it survives restarts and reinstalls, and the
    /// neighbour entries peers hold for this node stay valid.
    pub fn for_node(node: &str, vni: u32) -> Mac {
        let h = twill_conf::fnv::fnv1a(node.bytes().chain(vni.to_be_bytes()));
        let b = h.to_be_bytes();
        Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    /// A MAC a VTEP may carry: unicast and not all zeros.
    pub fn is_valid_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&twill_netlink::mac::format(&self.0))
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        twill_netlink::mac::parse(s)
            .map(Mac)
            .ok_or_else(|| format!("{s:?} is not a MAC address"))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One node's record: `{node, subnets, publicIP, vtepMAC, backend}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VtepRecord {
    pub node: String,
    /// The node's pod subnets (one per family).
    pub subnets: Vec<IpNet>,
    /// The underlay address peers send encapsulated traffic to.
    #[serde(rename = "publicIP")]
    pub public_ip: IpAddr,
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: Mac,
    /// `vxlan` today.
    pub backend: String,
}

impl VtepRecord {
    /// Decodes a record as a registry holds it (a file, an etcd value); the error names
    /// the field at fault (`publicIP`, `subnets[1]`), so the operator can find it.
    pub fn from_json(bytes: &[u8]) -> Result<Self, JsonError> {
        twill_conf::json::decode(bytes)
    }
}

#[cfg(test)]
pub(crate) mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    /// serde's own reasons ("invalid IP address syntax") do not say where; a record in a
    /// registry must.
    #[test]
    fn decode_errors_name_the_field() {
        for (doc, field) in [
            (
                r#"{"node":"n1","subnets":["10.244.1.0/24","x"],"publicIP":"192.168.0.2","vtepMAC":"0a:58:0a:f4:01:00","backend":"vxlan"}"#,
                "subnets[1]",
            ),
            (
                r#"{"node":"n1","subnets":[],"publicIP":"192.168.0","vtepMAC":"0a:58:0a:f4:01:00","backend":"vxlan"}"#,
                "publicIP",
            ),
            (
                r#"{"node":"n1","subnets":[],"publicIP":"192.168.0.2","vtepMAC":"0a:58","backend":"vxlan"}"#,
                "vtepMAC",
            ),
            (
                r#"{"node":7,"subnets":[],"publicIP":"192.168.0.2","vtepMAC":"0a:58:0a:f4:01:00","backend":"vxlan"}"#,
                "node",
            ),
        ] {
            let e = VtepRecord::from_json(doc.as_bytes()).expect_err(doc);
            assert_eq!(e.field, field, "{doc}: {e}");
        }
    }

    #[test]
    fn record_json_round_trip() {
        let j = r#"{"node":"n1","subnets":["10.244.1.0/24"],"publicIP":"192.168.0.2",
                    "vtepMAC":"0a:58:0a:f4:01:00","backend":"vxlan"}"#;
        let r: VtepRecord = serde_json::from_str(j).unwrap();
        assert_eq!(r.vtep_mac.to_string(), "0a:58:0a:f4:01:00");
        let back: VtepRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn node_macs_are_stable_local_unicast_and_distinct() {
        let a = Mac::for_node("node-1", 1);
        assert_eq!(a, Mac::for_node("node-1", 1));
        assert_ne!(a, Mac::for_node("node-2", 1));
        assert_ne!(a, Mac::for_node("node-1", 2));
        assert!(a.is_valid_unicast());
        assert_eq!(a.0[0] & 0x03, 0x02, "locally administered, unicast");
    }

    #[test]
    fn macs_parse_strictly() {
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:00:11",
            "0a:58:0a:f4:01:zz",
            "a:58:0a:f4:01:00",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert!(!"01:00:5e:00:00:01"
            .parse::<Mac>()
            .unwrap()
            .is_valid_unicast());
        assert!(!"00:00:00:00:00:00"
            .parse::<Mac>()
            .unwrap()
            .is_valid_unicast());
    }
}
