//! Byte encodings of everything stored in sled.
//!
//! Address keys are `family byte (4 or 6) ++ big-endian address bytes`, so
//! sled's lexicographic key order is numeric order within a family and all
//! IPv4 keys sort before all IPv6 keys.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use twill_conf::Attachment;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn byte(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    fn from_byte(b: u8) -> Option<Family> {
        match b {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }

    fn len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    pub(crate) fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}

/// An address as family + integer, so that IPv4 and IPv6 share one
/// arithmetic (u128 holds both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Addr {
    pub(crate) family: Family,
    pub(crate) value: u128,
}

impl Addr {
    pub(crate) fn new(family: Family, value: u128) -> Addr {
        Addr { family, value }
    }

    pub(crate) fn from_ip(ip: IpAddr) -> Addr {
        match ip {
            IpAddr::V4(a) => Addr::new(Family::V4, u128::from(u32::from(a))),
            IpAddr::V6(a) => Addr::new(Family::V6, u128::from(a)),
        }
    }

    pub(crate) fn ip(self) -> IpAddr {
        match self.family {
            // Values of V4 addresses always come from a u32 or a 4-byte key.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(self.value as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(self.value)),
        }
    }

    pub(crate) fn key(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17);
        self.encode_into(&mut out);
        out
    }

    fn encode_into(self, out: &mut Vec<u8>) {
        out.push(self.family.byte());
        let be = self.value.to_be_bytes();
        out.extend_from_slice(&be[16 - self.family.len()..]);
    }

    /// Decodes one address from the front of `bytes`, returning the rest.
    fn decode_prefix(bytes: &[u8]) -> Option<(Addr, &[u8])> {
        let (&fam, rest) = bytes.split_first()?;
        let family = Family::from_byte(fam)?;
        let n = family.len();
        if rest.len() < n {
            return None;
        }
        let mut be = [0u8; 16];
        be[16 - n..].copy_from_slice(&rest[..n]);
        Some((Addr::new(family, u128::from_be_bytes(be)), &rest[n..]))
    }

    /// Decodes a key that must hold exactly one address.
    pub(crate) fn from_key(bytes: &[u8]) -> Option<Addr> {
        match Addr::decode_prefix(bytes)? {
            (a, []) => Some(a),
            _ => None,
        }
    }
}

/// The by-owner value: the owner's addresses, concatenated keys.
pub(crate) fn encode_addrs(addrs: &[Addr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(addrs.len() * 17);
    for a in addrs {
        a.encode_into(&mut out);
    }
    out
}

pub(crate) fn decode_addrs(mut bytes: &[u8]) -> Option<Vec<Addr>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (a, rest) = Addr::decode_prefix(bytes)?;
        out.push(a);
        bytes = rest;
    }
    Some(out)
}

/// Owner key: `u32 BE length of container ID ++ container ID ++ ifname`.
/// The length prefix keeps the split unambiguous whatever bytes either part
/// holds.
pub(crate) fn owner_key(owner: &Attachment) -> Vec<u8> {
    let id = owner.container_id.as_bytes();
    let mut out = Vec::with_capacity(4 + id.len() + owner.ifname.len());
    // Container IDs longer than 4 GiB cannot come from a CNI request.
    out.extend_from_slice(&(id.len() as u32).to_be_bytes());
    out.extend_from_slice(id);
    out.extend_from_slice(owner.ifname.as_bytes());
    out
}

pub(crate) fn decode_owner(bytes: &[u8]) -> Option<Attachment> {
    let len: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    let len = usize::try_from(u32::from_be_bytes(len)).ok()?;
    let rest = &bytes[4..];
    if rest.len() < len {
        return None;
    }
    let (id, ifname) = rest.split_at(len);
    Some(Attachment {
        container_id: String::from_utf8(id.to_vec()).ok()?,
        ifname: String::from_utf8(ifname.to_vec()).ok()?,
    })
}

/// A free interval `[start, end]`, both in one family.
pub(crate) fn decode_interval(key: &[u8], value: &[u8]) -> Option<(Addr, Addr)> {
    let start = Addr::from_key(key)?;
    let end = Addr::from_key(value)?;
    (start.family == end.family && start.value <= end.value).then_some((start, end))
}

pub(crate) fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_keys_sort_numerically_and_by_family() {
        let ips: Vec<IpAddr> = [
            "10.0.0.2",
            "10.0.0.10",
            "10.0.1.1",
            "255.255.255.255",
            "::1",
            "fd00::1",
            "fd00::100",
        ]
        .iter()
        .map(|s| s.parse().expect("test address"))
        .collect();
        let keys: Vec<Vec<u8>> = ips.iter().map(|ip| Addr::from_ip(*ip).key()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        for (ip, key) in ips.iter().zip(&keys) {
            assert_eq!(Addr::from_key(key).map(Addr::ip), Some(*ip));
        }
    }

    #[test]
    fn owner_keys_round_trip_and_do_not_collide() {
        let a = Attachment::new("ab", "c");
        let b = Attachment::new("a", "bc");
        assert_ne!(owner_key(&a), owner_key(&b));
        assert_eq!(decode_owner(&owner_key(&a)), Some(a));
        assert_eq!(decode_owner(&owner_key(&b)), Some(b));
        assert_eq!(decode_owner(&[0, 0, 0, 9, b'x']), None);
    }

    #[test]
    fn address_lists_round_trip() {
        let list = vec![
            Addr::from_ip("10.1.2.3".parse().expect("test address")),
            Addr::from_ip("fd00::7".parse().expect("test address")),
        ];
        assert_eq!(decode_addrs(&encode_addrs(&list)), Some(list));
        assert_eq!(decode_addrs(&[4, 1, 2]), None);
        assert_eq!(decode_addrs(&[5, 1, 2, 3, 4]), None);
    }
}
