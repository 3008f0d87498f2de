//! A change to the policy table as one `nft -f -` transaction of element and chain
//! updates instead of a replacement: new counters, sets and chains are added, changed
//! chains flushed and refilled, map and set elements added and deleted, and what is no
//! longer used deleted last (after the rules and elements that named it are gone).
//! Counters that stay are not touched, so they keep counting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::table::{PolicyTable, SetDecl};

/// A transaction that turns the applied table into another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDiff {
    pub script: String,
    /// Counters it deletes: read them before applying.
    pub deletes_counters: bool,
}

/// The key of an element: a map's before ` : `, a set's whole.
fn element_key(element: &str) -> &str {
    element.split(" : ").next().unwrap_or(element)
}

/// The diff from `old` (in the kernel) to `new` for table `inet <table>`; `None` when
/// only a replacement will do (no table before or after, or the log limit changed).
pub fn render_diff(table: &str, old: &PolicyTable, new: &PolicyTable) -> Option<TableDiff> {
    if old.is_empty() || new.is_empty() || old.log_rate != new.log_rate {
        return None;
    }
    let t = format!("inet {table}");
    let mut s = String::new();
    let old_counters: BTreeSet<&str> = old.counters.iter().map(|c| c.name.as_str()).collect();
    let new_counters: BTreeSet<&str> = new.counters.iter().map(|c| c.name.as_str()).collect();
    for name in new_counters.difference(&old_counters) {
        let _ = writeln!(s, "add counter {t} {name}");
    }
    let old_sets: BTreeMap<&str, &SetDecl> =
        old.sets.iter().map(|d| (d.name.as_str(), d)).collect();
    // Sets first, maps after the chains their verdicts jump to.
    let mut maps: Vec<(SetDecl, &SetDecl)> = Vec::new();
    for set in &new.sets {
        match old_sets.get(set.name.as_str()) {
            Some(before) if before.spec != set.spec => return None,
            Some(before) if set.kind == "map" => maps.push(((*before).clone(), set)),
            Some(before) => update_elements(&mut s, &t, before, set),
            None => {
                let _ = writeln!(
                    s,
                    "add {} {t} {} {{ {}; }}",
                    set.kind,
                    set.name,
                    set.spec.join("; ")
                );
                if set.kind == "map" {
                    maps.push((empty_like(set), set));
                } else {
                    add_elements(&mut s, &t, &set.name, set.elements.iter());
                }
            }
        }
    }
    let old_chains: BTreeMap<&str, &Vec<String>> = old
        .chains
        .iter()
        .map(|c| (c.name.as_str(), &c.rules))
        .collect();
    for chain in &new.chains {
        match old_chains.get(chain.name.as_str()) {
            Some(rules) if **rules == chain.rules => continue,
            Some(_) => {
                let _ = writeln!(s, "flush chain {t} {}", chain.name);
            }
            None => {
                let _ = writeln!(s, "add chain {t} {}", chain.name);
            }
        }
        for rule in &chain.rules {
            let _ = writeln!(s, "add rule {t} {} {rule}", chain.name);
        }
    }
    for (before, map) in maps {
        update_elements(&mut s, &t, &before, map);
    }
    let new_chains: BTreeSet<&str> = new.chains.iter().map(|c| c.name.as_str()).collect();
    for chain in old
        .chains
        .iter()
        .filter(|c| !new_chains.contains(c.name.as_str()))
    {
        let _ = writeln!(s, "delete chain {t} {}", chain.name);
    }
    let new_sets: BTreeSet<&str> = new.sets.iter().map(|d| d.name.as_str()).collect();
    for set in old
        .sets
        .iter()
        .filter(|d| !new_sets.contains(d.name.as_str()))
    {
        let _ = writeln!(s, "delete {} {t} {}", set.kind, set.name);
    }
    let removed: Vec<&&str> = old_counters.difference(&new_counters).collect();
    for name in &removed {
        let _ = writeln!(s, "delete counter {t} {name}");
    }
    Some(TableDiff {
        script: s,
        deletes_counters: !removed.is_empty(),
    })
}

fn empty_like(set: &SetDecl) -> SetDecl {
    SetDecl {
        elements: Vec::new(),
        ..set.clone()
    }
}

/// Deletes the elements whose key went or whose value changed, then adds the new ones.
fn update_elements(s: &mut String, t: &str, before: &SetDecl, after: &SetDecl) {
    if before.elements == after.elements {
        return;
    }
    let old: BTreeMap<&str, &str> = before
        .elements
        .iter()
        .map(|e| (element_key(e), e.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = after
        .elements
        .iter()
        .map(|e| (element_key(e), e.as_str()))
        .collect();
    let gone: Vec<&str> = old
        .iter()
        .filter(|(key, element)| new.get(*key) != Some(*element))
        .map(|(key, _)| *key)
        .collect();
    if !gone.is_empty() {
        let _ = writeln!(
            s,
            "delete element {t} {} {{ {} }}",
            after.name,
            gone.join(", ")
        );
    }
    let added = new
        .iter()
        .filter(|(key, element)| old.get(*key) != Some(*element))
        .map(|(_, element)| element);
    add_elements(s, t, &after.name, added);
}

fn add_elements<'a>(
    s: &mut String,
    t: &str,
    name: &str,
    elements: impl Iterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>,
) {
    let elements: Vec<&str> = elements.map(AsRef::as_ref).collect();
    if !elements.is_empty() {
        let _ = writeln!(s, "add element {t} {name} {{ {} }}", elements.join(", "));
    }
}
