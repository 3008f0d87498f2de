//! The contents of the named sets: peer prefixes and port ranges made disjoint, since
//! interval sets refuse overlapping elements.

use std::collections::BTreeSet;

use ipnet::IpNet;
use twill_policy::ruleset::PortRange;
use twill_policy::Protocol;

/// `cidr` minus every prefix in `except`, as disjoint prefixes in address order.
pub fn cidr_minus(cidr: IpNet, except: &BTreeSet<IpNet>) -> Vec<IpNet> {
    let mut parts = vec![cidr.trunc()];
    for hole in except.iter().map(IpNet::trunc) {
        let mut next = Vec::new();
        for part in parts {
            if hole.contains(&part) {
                continue;
            }
            if !part.contains(&hole) {
                next.push(part);
                continue;
            }
            // Halve down to the hole, keeping the halves beside it.
            let mut rest = part;
            while rest != hole {
                let Ok(halves) = rest.subnets(rest.prefix_len() + 1) else {
                    break;
                };
                for half in halves {
                    if half.contains(&hole) {
                        rest = half;
                    } else {
                        next.push(half);
                    }
                }
            }
        }
        parts = next;
    }
    parts.sort();
    parts
}

/// Overlapping or adjacent ranges of one protocol joined, in order.
pub(super) fn merge_ranges(ranges: &BTreeSet<PortRange>) -> Vec<(Protocol, u16, u16)> {
    let mut out: Vec<(Protocol, u16, u16)> = Vec::new();
    for range in ranges {
        match out.last_mut() {
            Some(last)
                if last.0 == range.protocol && u32::from(range.start) <= u32::from(last.2) + 1 =>
            {
                last.2 = last.2.max(range.end);
            }
            _ => out.push((range.protocol, range.start, range.end)),
        }
    }
    out
}
