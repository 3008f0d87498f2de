//! The allocation policy: which address an owner gets (round-robin from the last one
//! handed out), how a reservation cuts its free interval and a release merges it back,
//! and what a change of ranges drops. Each plan reads the indexes and returns the
//! [`Changes`] to commit; nothing here writes.

use tracing::{info, warn};
use twill_conf::{Attachment, PodRange};

use super::trees::{cursor_key, Changes, META_RANGES, T};
use super::Store;
use crate::codec::{decode_addrs, decode_interval, encode_addrs, owner_key, Addr, Family};
use crate::span::{encode_spans, Span};
use crate::StoreError;

impl Store {
    // ---- allocation ----

    pub(super) fn plan_allocate(
        &self,
        owner: &Attachment,
        spans: &[Span],
    ) -> Result<(Changes, Vec<Addr>), StoreError> {
        let okey = owner_key(owner);
        let held = self.owner_addrs(&okey)?;
        let mut changes = Changes::default();
        let mut list = held.clone();
        let mut out = Vec::with_capacity(spans.len());

        for span in spans {
            // Idempotence: an owner keeps what it already holds in this range.
            if let Some(addr) = held.iter().find(|a| span.holds(**a)) {
                out.push(*addr);
                continue;
            }
            let (addr, start, end) = self.pick_free(span)?;
            // The free tree said so, but this is the one place a bug would
            // hand out an address twice: check the other index too.
            if !span.holds(addr) || self.by_addr.contains_key(addr.key())? {
                return Err(self.corrupt(&format!(
                    "free interval {}-{} contains unusable or reserved {}",
                    start.ip(),
                    end.ip(),
                    addr.ip()
                )));
            }
            // Cut `addr` out of its interval [start, end].
            let f = span.family;
            changes.del(T::Free, start.key());
            if start.value < addr.value {
                changes.put(T::Free, start.key(), Addr::new(f, addr.value - 1).key());
            }
            if addr.value < end.value {
                changes.put(T::Free, Addr::new(f, addr.value + 1).key(), end.key());
            }
            changes.put(T::ByAddr, addr.key(), okey.clone());
            changes.put(T::Meta, cursor_key(f), addr.key());
            list.push(addr);
            out.push(addr);
        }
        if list.len() != held.len() {
            changes.put(T::ByOwner, okey, encode_addrs(&list));
        }
        Ok((changes, out))
    }

    /// Round-robin: the first free address after the one last handed out in
    /// this range, wrapping to the start of the range. Returns the address
    /// and the free interval holding it.
    fn pick_free(&self, span: &Span) -> Result<(Addr, Addr, Addr), StoreError> {
        let from = match self.cursor(span.family)? {
            Some(c) if span.lo <= c.value && c.value < span.hi => {
                Addr::new(span.family, c.value + 1)
            }
            _ => span.first(),
        };
        // The interval holding `from`, if `from` is free.
        if let Some((start, end)) = self
            .free_starting_in(span.first(), from)
            .next_back()
            .transpose()?
        {
            if end >= from {
                return Ok((from, start, end));
            }
        }
        // Else the next interval above it, else wrap around.
        let next = match self
            .free_starting_in(from, span.last())
            .next()
            .transpose()?
        {
            Some(iv) => Some(iv),
            None => self
                .free_starting_in(span.first(), span.last())
                .next()
                .transpose()?,
        };
        match next {
            Some((start, end)) => Ok((start, start, end)),
            None => Err(StoreError::Exhausted {
                subnet: span.subnet,
                // Only counted on this error path.
                in_use: self
                    .by_addr
                    .range(span.first().key()..=span.last().key())
                    .count() as u128,
                usable: span.usable(),
            }),
        }
    }

    // ---- release ----

    /// Gives back the owner's first address: out of both indexes, into the free
    /// tree. Returns the address, `None` when the owner holds none.
    pub(super) fn plan_release_first(
        &self,
        okey: &[u8],
    ) -> Result<(Changes, Option<Addr>), StoreError> {
        let mut changes = Changes::default();
        let held = self.owner_addrs(okey)?;
        let Some((&addr, rest)) = held.split_first() else {
            if self.by_owner.contains_key(okey)? {
                changes.del(T::ByOwner, okey.to_vec());
            }
            return Ok((changes, None));
        };
        if rest.is_empty() {
            changes.del(T::ByOwner, okey.to_vec());
        } else {
            changes.put(T::ByOwner, okey.to_vec(), encode_addrs(rest));
        }

        // Only the holder recorded in by_addr gives the address back.
        match self.by_addr.get(addr.key())? {
            Some(holder) if holder[..] == okey[..] => {
                changes.del(T::ByAddr, addr.key());
                if let Some(span) = self.stored_spans()?.iter().find(|s| s.holds(addr)) {
                    self.plan_free(&mut changes, span, addr)?;
                }
            }
            _ => warn!(
                address = %addr.ip(),
                "owner lists an address that by_addr does not give it; dropping it from the owner only"
            ),
        }
        Ok((changes, Some(addr)))
    }

    /// Puts `addr` back into the free tree, merged with the free intervals
    /// right below and right above it.
    fn plan_free(&self, changes: &mut Changes, span: &Span, addr: Addr) -> Result<(), StoreError> {
        let f = span.family;
        let (mut start, mut end) = (addr, addr);
        if let Some((s, e)) = self
            .free_starting_in(span.first(), addr)
            .next_back()
            .transpose()?
        {
            if e >= addr {
                warn!(address = %addr.ip(), "released address was already free");
                return Ok(());
            }
            if e.value + 1 == addr.value {
                start = s;
            }
        }
        if addr.value < span.hi {
            let above = Addr::new(f, addr.value + 1);
            if let Some(value) = self.free.get(above.key())? {
                let (_, e) = decode_interval(&above.key(), &value)
                    .ok_or_else(|| self.corrupt("undecodable free interval"))?;
                changes.del(T::Free, above.key());
                end = e;
            }
        }
        changes.put(T::Free, start.key(), end.key());
        Ok(())
    }

    // ---- range changes ----

    /// Switches to `new` ranges (sorted by family): drops every reservation
    /// not usable in them from both indexes and rebuilds the free tree. O(n),
    /// only when the ranges change.
    pub(super) fn plan_set_ranges(&self, new: &[Span]) -> Result<(Changes, ()), StoreError> {
        let old = self.stored_spans()?;
        let mut changes = Changes::default();

        for key in self.free.iter().keys() {
            changes.del(T::Free, key?.to_vec());
        }

        let mut kept: Vec<Vec<u128>> = vec![Vec::new(); new.len()];
        let mut dropped = 0usize;
        for key in self.by_addr.iter().keys() {
            let key = key?;
            let addr =
                Addr::from_key(&key).ok_or_else(|| self.corrupt("undecodable address key"))?;
            match new.iter().position(|s| s.holds(addr)) {
                Some(i) => kept[i].push(addr.value),
                None => {
                    changes.del(T::ByAddr, key.to_vec());
                    dropped += 1;
                }
            }
        }
        for entry in self.by_owner.iter() {
            let (key, value) = entry?;
            let addrs =
                decode_addrs(&value).ok_or_else(|| self.corrupt("undecodable address list"))?;
            let stay: Vec<Addr> = addrs
                .iter()
                .copied()
                .filter(|a| new.iter().any(|s| s.holds(*a)))
                .collect();
            if stay.is_empty() {
                changes.del(T::ByOwner, key.to_vec());
            } else if stay.len() != addrs.len() {
                changes.put(T::ByOwner, key.to_vec(), encode_addrs(&stay));
            }
        }

        for (span, kept) in new.iter().zip(&kept) {
            for (start, end) in span.free_intervals(kept) {
                changes.put(T::Free, start.key(), end.key());
            }
        }
        // A cursor only means something in the range it walked.
        for family in [Family::V4, Family::V6] {
            let before = old.iter().find(|s| s.family == family);
            let after = new.iter().find(|s| s.family == family);
            if before != after {
                changes.del(T::Meta, cursor_key(family));
            }
        }
        changes.put(T::Meta, META_RANGES.to_vec(), encode_spans(new));

        let ranges: Vec<PodRange> = new.iter().map(Span::range).collect();
        info!(?ranges, dropped, "address ranges changed");
        Ok((changes, ()))
    }
}
