//! The consistency check of the indexes, for STATUS, tests and operators.

use std::collections::BTreeMap;

use super::Store;
use crate::codec::{decode_addrs, decode_interval, decode_owner, Addr, Family};
use crate::StoreError;

impl Store {
    /// Checks internal consistency: by_addr and by_owner agree exactly, no
    /// address is both free and reserved, no address reserved twice, every
    /// usable address is either free or reserved (none leaked). Returns
    /// [`StoreError::Inconsistent`] describing the first problem found.
    pub fn verify(&self) -> Result<(), StoreError> {
        let _serial = self.serialize();
        let bad = |msg: String| Err(StoreError::Inconsistent(msg));
        let spans = self.stored_spans()?;
        self.gen()?;
        for family in [Family::V4, Family::V6] {
            self.cursor(family)?;
        }

        let mut held: BTreeMap<Addr, Vec<u8>> = BTreeMap::new();
        for entry in self.by_addr.iter() {
            let (key, value) = entry?;
            let Some(addr) = Addr::from_key(&key) else {
                return bad(format!("undecodable by_addr key {key:?}"));
            };
            if decode_owner(&value).is_none() {
                return bad(format!("{} is held by an undecodable owner", addr.ip()));
            }
            // A rebuilt store holds reservations before its first allocation sets ranges.
            if !spans.is_empty() && !spans.iter().any(|s| s.holds(addr)) {
                return bad(format!(
                    "reserved {} is not usable in the configured ranges",
                    addr.ip()
                ));
            }
            held.insert(addr, value.to_vec());
        }

        let mut listed: BTreeMap<Addr, Vec<u8>> = BTreeMap::new();
        for entry in self.by_owner.iter() {
            let (key, value) = entry?;
            let Some(owner) = decode_owner(&key) else {
                return bad(format!("undecodable by_owner key {key:?}"));
            };
            let Some(addrs) = decode_addrs(&value) else {
                return bad(format!("undecodable address list of {owner:?}"));
            };
            if addrs.is_empty() {
                return bad(format!("{owner:?} has an empty address list"));
            }
            for addr in addrs {
                if listed.insert(addr, key.to_vec()).is_some() {
                    return bad(format!("{} is listed more than once", addr.ip()));
                }
                match held.get(&addr) {
                    Some(holder) if holder[..] == key[..] => {}
                    Some(_) => {
                        return bad(format!(
                            "{} is listed by {owner:?} but by_addr names another owner",
                            addr.ip()
                        ))
                    }
                    None => {
                        return bad(format!(
                            "{} is listed by {owner:?} but missing from by_addr",
                            addr.ip()
                        ))
                    }
                }
            }
        }
        if let Some(addr) = held.keys().find(|a| !listed.contains_key(a)) {
            return bad(format!(
                "{} is in by_addr but not in its owner's list",
                addr.ip()
            ));
        }

        let mut free_count: BTreeMap<Family, u128> = BTreeMap::new();
        let mut prev_end: Option<Addr> = None;
        for entry in self.free.iter() {
            let (key, value) = entry?;
            let Some((start, end)) = decode_interval(&key, &value) else {
                return bad(format!("undecodable free interval {key:?} → {value:?}"));
            };
            let what = format!("free interval {}-{}", start.ip(), end.ip());
            let Some(span) = spans
                .iter()
                .find(|s| s.family == start.family && s.lo <= start.value && end.value <= s.hi)
            else {
                return bad(format!("{what} is outside the configured ranges"));
            };
            if (start..=end).contains(&span.gateway) {
                return bad(format!("{what} contains the gateway"));
            }
            if let Some(prev) = prev_end.filter(|p| p.family == start.family) {
                if prev.value.saturating_add(1) >= start.value {
                    return bad(format!("{what} overlaps or touches the one before"));
                }
            }
            if let Some(addr) = held.range(start..=end).next() {
                return bad(format!("{} is both free and reserved", addr.0.ip()));
            }
            *free_count.entry(start.family).or_default() += end.value - start.value + 1;
            prev_end = Some(end);
        }
        for span in &spans {
            let free = free_count.get(&span.family).copied().unwrap_or(0);
            let reserved = held.range(span.first()..=span.last()).count() as u128;
            if free.saturating_add(reserved) != span.usable() {
                return bad(format!(
                    "{}: {free} free + {reserved} reserved != {} usable",
                    span.subnet,
                    span.usable()
                ));
            }
        }
        Ok(())
    }
}
