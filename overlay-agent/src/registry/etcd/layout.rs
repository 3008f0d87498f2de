//! The etcd registry's key layout and the decisions made on what it lists: pure, no
//! etcd connection (the I/O is in the parent module; flannel splits the same way into
//! `registry.go` and `local_manager.go`).

use crate::record::VtepRecord;
use crate::registry::{Malformed, RegistryError, Snapshot};
use crate::subnets;
use etcd_client::{EventType, KeyValue};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use twill_conf::cluster::PodNetwork;

/// The subnet keys as watched: key → value, both raw.
pub(super) type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Where things live under the registry's prefix.
#[derive(Debug, Clone)]
pub(super) struct KeyLayout {
    /// The prefix without its trailing `/`.
    prefix: String,
}

impl KeyLayout {
    pub(super) fn new(prefix: &str) -> KeyLayout {
        KeyLayout {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub(super) fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub(super) fn subnet_key(&self, s: &IpNet) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key_suffix(s))
    }

    pub(super) fn node_key(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// A node name must be one key segment.
    pub(super) fn check_node(node: &str) -> Result<(), RegistryError> {
        if node.is_empty() || node.contains('/') {
            return Err(RegistryError::Invalid(format!(
                "node name {node:?} cannot be part of an etcd key"
            )));
        }
        Ok(())
    }

    /// One listed subnet key, with what `join` and `leave` need of it.
    pub(super) fn held(&self, key: &[u8], value: &[u8], mod_revision: i64) -> Held {
        let key = String::from_utf8_lossy(key).into_owned();
        let subnet = key
            .strip_prefix(&self.subnets_prefix())
            .and_then(|s| parse_subnet_key_suffix(s).ok());
        let node = VtepRecord::from_json(value).ok().map(|r| r.node);
        Held {
            key,
            subnet,
            node,
            mod_revision,
        }
    }

    /// The complete snapshot of what the subnet keys hold.
    pub(super) fn snapshot(&self, entries: &Entries) -> Snapshot {
        build_snapshot(&self.subnets_prefix(), entries)
    }
}

/// The value of `<prefix>/nodes/<node>`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct NodeEntry {
    pub(super) subnets: Vec<IpNet>,
}

impl NodeEntry {
    pub(super) fn encode(&self) -> Result<Vec<u8>, RegistryError> {
        serde_json::to_vec(self)
            .map_err(|e| RegistryError::Invalid(format!("cannot encode the node entry: {e}")))
    }
}

pub(super) fn encode_record(record: &VtepRecord) -> Result<Vec<u8>, RegistryError> {
    serde_json::to_vec(record)
        .map_err(|e| RegistryError::Invalid(format!("cannot encode the record: {e}")))
}

/// One subnet key as `join` and `leave` see it.
#[derive(Debug)]
pub(super) struct Held {
    pub(super) key: String,
    /// `None` when the key does not name a subnet: it holds nothing.
    pub(super) subnet: Option<IpNet>,
    /// The record's node; `None` when the value is not a record (the subnet stays taken).
    pub(super) node: Option<String>,
    pub(super) mod_revision: i64,
}

/// What one claim attempt writes, decided from one listing.
#[derive(Debug)]
pub(super) struct Claim<'a> {
    /// One subnet per network, in the order of the networks.
    pub(super) chosen: Vec<IpNet>,
    /// Per chosen subnet: the key this node already holds for it, else `None` (the key
    /// must still be absent).
    pub(super) kept: Vec<Option<&'a Held>>,
    /// Keys this node holds but no longer wants (the network changed): let go.
    pub(super) released: Vec<&'a Held>,
}

/// Picks a subnet per network for `node`: the remembered one first, then one the node
/// still holds, else the lowest free one.
pub(super) fn choose<'a>(
    networks: &[PodNetwork],
    node: &str,
    held: &'a [Held],
    remembered: &[IpNet],
) -> Result<Claim<'a>, RegistryError> {
    let mut taken: Vec<IpNet> = Vec::new();
    let mut own: Vec<(IpNet, &Held)> = Vec::new();
    for h in held {
        let Some(s) = h.subnet else { continue };
        if h.node.as_deref() == Some(node) {
            own.push((s, h));
        } else {
            taken.push(s);
        }
    }

    let mut chosen = Vec::with_capacity(networks.len());
    for net in networks {
        let candidates = remembered.iter().chain(own.iter().map(|(s, _)| s));
        let pick = candidates
            .copied()
            .find(|c| subnets::pick(net, &taken, Some(*c)) == Some(*c))
            .or_else(|| subnets::pick(net, &taken, None))
            .ok_or(RegistryError::Exhausted {
                network: net.network,
                len: net.subnet_len,
            })?;
        taken.push(pick);
        chosen.push(pick);
    }
    let kept = chosen
        .iter()
        .map(|s| own.iter().find(|(o, _)| o == s).map(|(_, h)| *h))
        .collect();
    let released = own
        .iter()
        .filter(|(s, _)| !chosen.contains(s))
        .map(|(_, h)| *h)
        .collect();
    Ok(Claim {
        chosen,
        kept,
        released,
    })
}

/// The keys `leave` deletes for `node`.
pub(super) fn held_by<'a>(held: &'a [Held], node: &str) -> Vec<&'a Held> {
    held.iter()
        .filter(|h| h.node.as_deref() == Some(node))
        .collect()
}

/// Applies one watch event to the entries.
pub(super) fn apply(entries: &mut Entries, kind: EventType, kv: &KeyValue) {
    match kind {
        EventType::Put => {
            entries.insert(kv.key().to_vec(), kv.value().to_vec());
        }
        EventType::Delete => {
            entries.remove(kv.key());
        }
    }
}

/// `10.244.1.0/24` → `10.244.1.0-24` (a `/` would make a deeper key).
fn subnet_key_suffix(s: &IpNet) -> String {
    format!("{}-{}", s.network(), s.prefix_len())
}

fn parse_subnet_key_suffix(suffix: &str) -> Result<IpNet, String> {
    let bad = || format!("{suffix:?} does not name a subnet (<address>-<length>)");
    let (addr, len) = suffix.rsplit_once('-').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let net = IpNet::new(addr, len).map_err(|_| bad())?;
    // Only the canonical spelling names a subnet, so one subnet has exactly one key.
    if net.network() != addr || subnet_key_suffix(&net) != suffix {
        return Err(bad());
    }
    Ok(net)
}

/// Turns the entries under `subnets_prefix` into a complete snapshot. A record counts
/// only when every subnet it claims has its key holding that same record; everything
/// else is reported as malformed under its key.
fn build_snapshot(subnets_prefix: &str, entries: &Entries) -> Snapshot {
    let mut malformed = Vec::new();
    let mut parsed: BTreeMap<IpNet, (String, VtepRecord)> = BTreeMap::new();
    for (key, value) in entries {
        let source = String::from_utf8_lossy(key).into_owned();
        let mut bad = |reason: String| {
            malformed.push(Malformed {
                source: source.clone(),
                reason,
            })
        };
        let subnet = match source
            .strip_prefix(subnets_prefix)
            .ok_or_else(|| "outside the subnets prefix".to_string())
            .and_then(parse_subnet_key_suffix)
        {
            Ok(s) => s,
            Err(reason) => {
                bad(reason);
                continue;
            }
        };
        let record = match VtepRecord::from_json(value) {
            Ok(r) => r,
            Err(e) => {
                bad(format!("not a record: {e}"));
                continue;
            }
        };
        if !record.subnets.contains(&subnet) {
            bad(format!(
                "the record of node {:?} does not claim the key's subnet {subnet}",
                record.node
            ));
            continue;
        }
        parsed.insert(subnet, (source, record));
    }

    let mut records: Vec<VtepRecord> = Vec::new();
    for (source, record) in parsed.values() {
        let missing = record
            .subnets
            .iter()
            .find(|s| parsed.get(s).map(|(_, r)| r) != Some(record));
        if let Some(s) = missing {
            malformed.push(Malformed {
                source: source.clone(),
                reason: format!(
                    "the record of node {:?} claims {s}, whose key does not hold this record",
                    record.node
                ),
            });
        } else if !records.contains(record) {
            records.push(record.clone());
        }
    }
    records.sort_by(|a, b| a.node.cmp(&b.node).then_with(|| a.subnets.cmp(&b.subnets)));
    malformed.sort_by(|a, b| a.source.cmp(&b.source));
    Snapshot {
        records,
        malformed,
        complete: true,
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Mac;

    const P: &str = "/twill/network/subnets/";

    fn rec(node: &str, subnets: &[&str]) -> VtepRecord {
        VtepRecord {
            node: node.into(),
            subnets: subnets.iter().map(|s| s.parse().unwrap()).collect(),
            public_ip: "192.168.0.2".parse().unwrap(),
            vtep_mac: Mac([0x0a, 0x58, 0, 0, 0, 1]),
            backend: "vxlan".into(),
        }
    }

    fn entry(suffix: &str, value: &[u8]) -> (Vec<u8>, Vec<u8>) {
        (format!("{P}{suffix}").into_bytes(), value.to_vec())
    }

    #[test]
    fn subnet_keys_round_trip_and_are_canonical() {
        for s in ["10.244.1.0/24", "fd00:10:244:1::/64"] {
            let net: IpNet = s.parse().unwrap();
            assert_eq!(parse_subnet_key_suffix(&subnet_key_suffix(&net)), Ok(net));
        }
        for bad in [
            "10.244.1.0",
            "10.244.1.1-24",
            "10.244.1.0-33",
            "010.244.1.0-24",
            "x-24",
            "10.244.1.0-+24",
        ] {
            assert!(parse_subnet_key_suffix(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn snapshot_keeps_good_records_once_and_reports_the_rest() {
        let dual = rec("a", &["10.244.1.0/24", "fd00:0:0:1::/64"]);
        let dual_json = serde_json::to_vec(&dual).unwrap();
        let lonely = rec("b", &["10.244.2.0/24", "fd00:0:0:2::/64"]);
        let entries: BTreeMap<_, _> = [
            entry("10.244.1.0-24", &dual_json),
            entry("fd00:0:0:1::-64", &dual_json),
            // Claims a v6 subnet whose key is missing.
            entry("10.244.2.0-24", &serde_json::to_vec(&lonely).unwrap()),
            // Key and record disagree.
            entry(
                "10.244.3.0-24",
                &serde_json::to_vec(&rec("c", &["10.244.4.0/24"])).unwrap(),
            ),
            entry("10.244.5.0-24", b"{not json"),
            entry(
                "junk",
                &serde_json::to_vec(&rec("d", &["10.244.6.0/24"])).unwrap(),
            ),
        ]
        .into_iter()
        .collect();
        let snap = build_snapshot(P, &entries);
        assert!(snap.complete);
        assert_eq!(snap.records, vec![dual]);
        let sources: Vec<&str> = snap.malformed.iter().map(|m| m.source.as_str()).collect();
        assert_eq!(
            sources,
            vec![
                "/twill/network/subnets/10.244.2.0-24",
                "/twill/network/subnets/10.244.3.0-24",
                "/twill/network/subnets/10.244.5.0-24",
                "/twill/network/subnets/junk",
            ]
        );
    }

    #[test]
    fn choice_keeps_remembered_then_held_and_releases_the_rest() {
        let keys = KeyLayout::new("/twill/network/");
        let v4 = crate::registry::fixtures::v4();
        let json = |r: &VtepRecord| serde_json::to_vec(r).unwrap();
        let held = vec![
            keys.held(
                b"/twill/network/subnets/10.244.1.0-24",
                &json(&rec("b", &["10.244.1.0/24"])),
                5,
            ),
            keys.held(
                b"/twill/network/subnets/10.244.2.0-24",
                &json(&rec("a", &["10.244.2.0/24"])),
                6,
            ),
            // Not a record: its subnet stays taken.
            keys.held(b"/twill/network/subnets/10.244.3.0-24", b"{", 7),
        ];

        // Nothing remembered: the subnet still held is kept, with its revision.
        let claim = choose(&v4, "a", &held, &[]).unwrap();
        assert_eq!(claim.chosen, vec!["10.244.2.0/24".parse().unwrap()]);
        assert_eq!(claim.kept[0].map(|h| h.mod_revision), Some(6));
        assert!(claim.released.is_empty());

        // A remembered free subnet wins; the held one is let go.
        let remembered: Vec<IpNet> = vec!["10.244.9.0/24".parse().unwrap()];
        let claim = choose(&v4, "a", &held, &remembered).unwrap();
        assert_eq!(claim.chosen, remembered);
        assert!(claim.kept[0].is_none());
        assert_eq!(claim.released.len(), 1);
        assert_eq!(
            claim.released[0].key,
            "/twill/network/subnets/10.244.2.0-24"
        );

        // A new node gets the lowest free subnet past the taken ones.
        let claim = choose(&v4, "c", &held, &[]).unwrap();
        assert_eq!(claim.chosen, vec!["10.244.4.0/24".parse().unwrap()]);
        // A remembered subnet someone else holds is not taken back.
        let theirs: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
        let claim = choose(&v4, "c", &held, &theirs).unwrap();
        assert_eq!(claim.chosen, vec!["10.244.4.0/24".parse().unwrap()]);

        assert!(KeyLayout::check_node("a/b").is_err());
        assert!(KeyLayout::check_node("").is_err());
    }
}
