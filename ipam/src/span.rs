//! A validated `PodRange` in integer form: which addresses may be handed out.

use ipnet::IpNet;
use twill_conf::PodRange;

use crate::codec::{Addr, Family};
use crate::StoreError;

/// The usable part of a range: `[lo, hi]` minus the gateway.
///
/// IPv4: `lo` = network + 1, `hi` = broadcast - 1. IPv6 has no broadcast,
/// but the all-zero host is the subnet-router anycast address, so `lo` =
/// network + 1 and `hi` = last address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// Normalised (host bits cleared).
    pub(crate) subnet: IpNet,
    pub(crate) gateway: Addr,
    pub(crate) family: Family,
    pub(crate) lo: u128,
    pub(crate) hi: u128,
}

impl Span {
    pub(crate) fn new(range: &PodRange) -> Result<Span, StoreError> {
        let subnet = range.subnet.trunc();
        let family = Family::of(subnet.addr());
        if Family::of(range.gateway) != family || !subnet.contains(&range.gateway) {
            return Err(StoreError::InvalidRange(format!(
                "gateway {} is not inside {subnet}",
                range.gateway
            )));
        }
        let network = Addr::from_ip(subnet.network()).value;
        let last = Addr::from_ip(subnet.broadcast()).value;
        let lo = network.checked_add(1);
        let hi = match family {
            Family::V4 => last.checked_sub(1),
            Family::V6 => Some(last),
        };
        let span = match (lo, hi) {
            (Some(lo), Some(hi)) if lo <= hi => Span {
                subnet,
                gateway: Addr::from_ip(range.gateway),
                family,
                lo,
                hi,
            },
            _ => return Err(too_small(subnet)),
        };
        if span.usable() == 0 {
            return Err(too_small(subnet));
        }
        Ok(span)
    }

    /// Validates a whole `allocate` request: at most one range per family.
    pub(crate) fn from_ranges(ranges: &[PodRange]) -> Result<Vec<Span>, StoreError> {
        if ranges.is_empty() {
            return Err(StoreError::InvalidRange("no range given".into()));
        }
        let spans = ranges
            .iter()
            .map(Span::new)
            .collect::<Result<Vec<_>, _>>()?;
        for (i, a) in spans.iter().enumerate() {
            if let Some(b) = spans[i + 1..].iter().find(|b| b.family == a.family) {
                return Err(StoreError::InvalidRange(format!(
                    "{} and {} are of the same address family; give at most one range per family",
                    a.subnet, b.subnet
                )));
            }
        }
        Ok(spans)
    }

    pub(crate) fn range(&self) -> PodRange {
        PodRange {
            subnet: self.subnet,
            gateway: self.gateway.ip(),
        }
    }

    pub(crate) fn first(&self) -> Addr {
        Addr::new(self.family, self.lo)
    }

    pub(crate) fn last(&self) -> Addr {
        Addr::new(self.family, self.hi)
    }

    fn gateway_in_span(&self) -> bool {
        (self.lo..=self.hi).contains(&self.gateway.value)
    }

    /// How many addresses of this range may be handed out.
    pub(crate) fn usable(&self) -> u128 {
        // hi - lo + 1 cannot overflow: lo >= 1.
        self.hi - self.lo + 1 - u128::from(self.gateway_in_span())
    }

    /// Whether `addr` may be handed out from this range.
    pub(crate) fn holds(&self, addr: Addr) -> bool {
        addr.family == self.family
            && (self.lo..=self.hi).contains(&addr.value)
            && addr != self.gateway
    }

    /// The free intervals of a fresh range with `taken` (sorted ascending,
    /// all held by this range) reserved.
    pub(crate) fn free_intervals(&self, taken: &[u128]) -> Vec<(Addr, Addr)> {
        let mut holes: Vec<u128> = taken.to_vec();
        if self.gateway_in_span() {
            holes.push(self.gateway.value);
        }
        holes.sort_unstable();
        holes.dedup();

        let mut out = Vec::new();
        // `next` is None once we walked past u128::MAX.
        let mut next = Some(self.lo);
        for h in holes {
            let Some(cur) = next else { break };
            if h > cur {
                out.push((cur, h - 1));
            }
            if h >= cur {
                next = h.checked_add(1);
            }
        }
        if let Some(cur) = next {
            if cur <= self.hi {
                out.push((cur, self.hi));
            }
        }
        out.into_iter()
            .map(|(s, e)| (Addr::new(self.family, s), Addr::new(self.family, e)))
            .collect()
    }
}

fn too_small(subnet: IpNet) -> StoreError {
    StoreError::InvalidRange(format!("{subnet} has no usable address"))
}

/// Stored form of the configured ranges (meta tree): per range, the network
/// address key, the prefix length, the gateway key.
pub(crate) fn encode_spans(spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in spans {
        out.extend_from_slice(&Addr::from_ip(s.subnet.network()).key());
        out.push(s.subnet.prefix_len());
        out.extend_from_slice(&s.gateway.key());
    }
    out
}

pub(crate) fn decode_spans(mut bytes: &[u8]) -> Option<Vec<Span>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (net, rest) = take_addr(bytes)?;
        let (&prefix, rest) = rest.split_first()?;
        let (gw, rest) = take_addr(rest)?;
        let subnet = IpNet::new(net.ip(), prefix).ok()?;
        out.push(
            Span::new(&PodRange {
                subnet,
                gateway: gw.ip(),
            })
            .ok()?,
        );
        bytes = rest;
    }
    Some(out)
}

fn take_addr(bytes: &[u8]) -> Option<(Addr, &[u8])> {
    let n = match bytes.first()? {
        4 => 5,
        6 => 17,
        _ => return None,
    };
    let key = bytes.get(..n)?;
    Some((Addr::from_key(key)?, &bytes[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::range;

    #[test]
    fn usable_addresses_exclude_network_gateway_broadcast() {
        let s = Span::new(&range("10.244.1.0/29", "10.244.1.1")).expect("valid");
        assert_eq!(s.usable(), 5); // .2 ..= .6
        let ivs = s.free_intervals(&[]);
        assert_eq!(ivs.len(), 1);
        assert_eq!(ivs[0].0.ip().to_string(), "10.244.1.2");
        assert_eq!(ivs[0].1.ip().to_string(), "10.244.1.6");

        let s = Span::new(&range("fd00::/126", "fd00::1")).expect("valid");
        assert_eq!(s.usable(), 2); // ::2, ::3
    }

    #[test]
    fn free_intervals_skip_taken_and_gateway() {
        let s = Span::new(&range("10.0.0.0/28", "10.0.0.5")).expect("valid");
        let base = u128::from(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)));
        let ivs: Vec<(u128, u128)> = s
            .free_intervals(&[base + 1, base + 2, base + 9, base + 14])
            .into_iter()
            .map(|(a, b)| (a.value - base, b.value - base))
            .collect();
        assert_eq!(ivs, vec![(3, 4), (6, 8), (10, 13)]);
    }

    #[test]
    fn invalid_ranges_are_rejected() {
        assert!(Span::new(&range("10.0.0.0/24", "10.0.1.1")).is_err());
        assert!(Span::new(&range("10.0.0.0/24", "fd00::1")).is_err());
        assert!(Span::new(&range("10.0.0.0/31", "10.0.0.0")).is_err());
        assert!(Span::new(&range("10.0.0.0/32", "10.0.0.0")).is_err());
        assert!(Span::new(&range("10.0.0.0/30", "10.0.0.1")).is_ok());
        assert!(Span::new(&range("fd00::/127", "fd00::1")).is_err());
        assert!(Span::new(&range("fd00::/128", "fd00::")).is_err());
        assert!(Span::from_ranges(&[]).is_err());
        assert!(Span::from_ranges(&[
            range("10.0.0.0/24", "10.0.0.1"),
            range("10.0.1.0/24", "10.0.1.1")
        ])
        .is_err());
        assert!(Span::from_ranges(&[
            range("10.0.0.0/24", "10.0.0.1"),
            range("fd00::/120", "fd00::1")
        ])
        .is_ok());
    }

    #[test]
    fn spans_round_trip() {
        let spans = Span::from_ranges(&[
            range("10.0.0.0/24", "10.0.0.1"),
            range("fd00::/120", "fd00::1"),
        ])
        .expect("valid");
        assert_eq!(decode_spans(&encode_spans(&spans)), Some(spans));
    }
}
