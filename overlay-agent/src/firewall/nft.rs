//! The [`Firewall`] through the `nft` binary: running it, listing the foreign FORWARD
//! chains, and reading its JSON output back into the rule model.
//!
//! `nft` runs as a child process and inherits the caller's network namespace. One
//! `apply` runs it two to four times (`list chains`, `list chain` per FORWARD chain
//! found, one `-f -` transaction that replaces the table and, only when needed, fixes
//! the FORWARD rules): measured on a loaded 2-core machine, 15–30 ms wall time without
//! Docker's chains and 20–45 ms with both, most of it waiting for the kernel to commit;
//! about 10–20 ms CPU. Cheap enough for a 30 s resync, so the table is not diffed.

use super::script::{
    render_delete_rules, render_delete_table, render_forward_fix, render_table_script,
    valid_table_name, wanted_forward_rules,
};
use super::{
    Applied, Direction, Family, Firewall, FirewallError, FirewallRules, ForwardRule, IpNet,
    TaggedRule,
};
use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// [`Firewall`] through the `nft` binary.
#[derive(Debug)]
pub struct Nft {
    program: PathBuf,
    table: String,
    /// The last table script applied, to log changes at info and repeats at debug.
    last: Mutex<Option<String>>,
    /// A hash of the table as `nft -s list` showed it when it was last put in place: a
    /// later listing that differs means someone changed or deleted it.
    witnessed: Mutex<Option<u64>>,
}

/// How the table in the kernel compares with the listing [`Nft::witness`] noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// Nothing witnessed (never applied here, or changed since in ways not listed).
    Unknown,
    Unchanged,
    Changed,
    Deleted,
}

impl Default for Nft {
    fn default() -> Self {
        Self::new()
    }
}

impl Nft {
    /// Table `inet twill`, `nft` from `PATH`.
    pub fn new() -> Self {
        Self::with_table("twill")
    }

    /// Table `inet <name>`; the FORWARD rules carry `comment "<name>"`. The name is checked
    /// by `apply` and `remove`.
    pub fn with_table(name: &str) -> Self {
        Nft {
            program: PathBuf::from("nft"),
            table: name.to_string(),
            last: Mutex::new(None),
            witnessed: Mutex::new(None),
        }
    }

    /// Uses the `nft` binary at `path` instead of the one in `PATH`.
    pub fn with_program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = path.into();
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn check_table(&self) -> Result<(), FirewallError> {
        if valid_table_name(&self.table) {
            Ok(())
        } else {
            Err(FirewallError::TableName(self.table.clone()))
        }
    }

    /// Runs `nft <args>` with `stdin` and returns its stdout.
    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, FirewallError> {
        let command = format!("{} {}", self.program.display(), args.join(" "));
        let mut child = Command::new(&self.program)
            .args(args)
            .stdin(stdin.map_or_else(Stdio::null, |_| Stdio::piped()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| FirewallError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error (nft exited early) shows up as nft's exit status below.
            if let Err(e) = pipe.write_all(text.as_bytes()) {
                tracing::debug!(%command, error = %e, "writing nft's stdin failed");
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|source| FirewallError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(FirewallError::Nft {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|e| FirewallError::Output {
            command,
            reason: e.to_string(),
        })
    }

    /// Table `inet <table>` as `nft -s list` prints it: without counter values, so two
    /// listings of an untouched table are equal. `None` when it does not exist.
    pub fn listing(&self) -> Result<Option<String>, FirewallError> {
        self.check_table()?;
        match self.nft(&["-s", "list", "table", "inet", &self.table], None) {
            Ok(text) => Ok(Some(text)),
            Err(FirewallError::Nft { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Notes the kernel's listing of the table now as the one it must keep.
    pub fn witness(&self) -> Result<(), FirewallError> {
        let listed = self.listing()?.unwrap_or_default();
        *self.witnessed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(twill_conf::fnv::fnv1a(listed.bytes()));
        Ok(())
    }

    /// Forgets the witnessed listing: the table was changed in a way not listed since.
    pub fn forget(&self) {
        *self.witnessed.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the table still lists as it did when witnessed.
    pub fn drift(&self) -> Result<Drift, FirewallError> {
        let Some(witnessed) = *self.witnessed.lock().unwrap_or_else(|p| p.into_inner()) else {
            return Ok(Drift::Unknown);
        };
        Ok(match self.listing()? {
            None => Drift::Deleted,
            Some(now) if twill_conf::fnv::fnv1a(now.bytes()) == witnessed => Drift::Unchanged,
            Some(_) => Drift::Changed,
        })
    }

    /// Runs `script` as one `nft -f -` transaction: all of it or nothing.
    pub fn run_script(&self, script: &str) -> Result<(), FirewallError> {
        self.check_table()?;
        self.nft(&["-f", "-"], Some(script)).map(drop)
    }

    /// The named counters of table `inet <table>`: (name, packets).
    pub fn counters(&self) -> Result<Vec<(String, u64)>, FirewallError> {
        self.check_table()?;
        let args = [
            "-j",
            "list",
            "counters",
            "table",
            "inet",
            self.table.as_str(),
        ];
        let json = self.nft(&args, None)?;
        parse_counters(&json).map_err(|reason| FirewallError::Output {
            command: format!("nft {}", args.join(" ")),
            reason,
        })
    }

    /// The families among `ip`, `ip6` that have a chain `FORWARD` in table `filter`.
    fn foreign_forward_chains(&self) -> Result<Vec<Family>, FirewallError> {
        let args = ["-j", "list", "chains"];
        let json = self.nft(&args, None)?;
        filter_forward_families(&json).map_err(|reason| FirewallError::Output {
            command: format!("nft {}", args.join(" ")),
            reason,
        })
    }

    /// Our tagged rules in `<family> filter FORWARD`.
    fn tagged_rules(&self, family: Family) -> Result<Vec<TaggedRule>, FirewallError> {
        let args = ["-j", "list", "chain", family.name(), "filter", "FORWARD"];
        let json = self.nft(&args, None)?;
        parse_tagged_rules(&json, &self.table).map_err(|reason| FirewallError::Output {
            command: format!("nft {}", args.join(" ")),
            reason,
        })
    }
}

impl Firewall for Nft {
    fn apply(&self, rules: &FirewallRules) -> Result<Applied, FirewallError> {
        self.check_table()?;
        let started = Instant::now();
        let table_script = render_table_script(&self.table, rules);
        let same_rules = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(table_script.as_str());
        let drift = self.drift()?;
        let repaired = match drift {
            Drift::Deleted => Some(format!("table inet {} was deleted", self.table)),
            Drift::Changed => Some(format!("table inet {} was changed", self.table)),
            Drift::Unknown | Drift::Unchanged => None,
        };
        // The table in the kernel is what the last apply left and the rules are the
        // same: nothing to replace (its counters keep counting).
        let replace = !same_rules || drift != Drift::Unchanged;
        let mut script = if replace {
            table_script.clone()
        } else {
            String::new()
        };
        for family in self.foreign_forward_chains()? {
            let existing = self.tagged_rules(family)?;
            let wanted = wanted_forward_rules(family, rules);
            if let Some(fix) = render_forward_fix(family, &self.table, &existing, &wanted) {
                tracing::info!(
                    family = family.name(),
                    had = existing.len(),
                    want = wanted.len(),
                    "updating Twill's accept rules in the FORWARD chain of table filter"
                );
                script.push_str(&fix);
            }
        }
        if !script.is_empty() {
            self.nft(&["-f", "-"], Some(&script))?;
        }
        if !replace {
            tracing::debug!(
                table = %self.table,
                elapsed_us = started.elapsed().as_micros() as u64,
                "nftables rules in place"
            );
            return Ok(Applied { repaired });
        }
        if !same_rules {
            tracing::info!(
                table = %self.table,
                networks = ?rules.cluster_networks,
                ip_masq = rules.ip_masq,
                "nftables rules installed"
            );
        }
        if let Some(what) = &repaired {
            tracing::warn!(table = %self.table, "{what} since the last apply; put back");
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(table_script);
        self.witness()?;
        Ok(Applied { repaired })
    }

    fn remove(&self) -> Result<(), FirewallError> {
        self.check_table()?;
        let mut script = String::new();
        for family in self.foreign_forward_chains()? {
            script.push_str(&render_delete_rules(family, &self.tagged_rules(family)?));
        }
        script.push_str(&render_delete_table(&self.table));
        self.nft(&["-f", "-"], Some(&script))?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.forget();
        tracing::info!(table = %self.table, "nftables rules removed");
        Ok(())
    }
}
/// The entries of `nft -j` output (`{"nftables": [...]}`); empty output has none.
fn nft_entries(json: &str) -> Result<Vec<serde_json::Value>, String> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    match v.get_mut("nftables").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(entries)) => Ok(entries),
        _ => Err("no \"nftables\" array".to_string()),
    }
}

/// From `nft -j list counters …`: each named counter's (name, packets).
pub fn parse_counters(json: &str) -> Result<Vec<(String, u64)>, String> {
    let mut out = Vec::new();
    for entry in nft_entries(json)? {
        let Some(counter) = entry.get("counter") else {
            continue;
        };
        let name = counter.get("name").and_then(serde_json::Value::as_str);
        let packets = counter.get("packets").and_then(serde_json::Value::as_u64);
        match (name, packets) {
            (Some(name), Some(packets)) => out.push((name.to_string(), packets)),
            _ => return Err(format!("a counter without name or packets: {counter}")),
        }
    }
    Ok(out)
}

/// From `nft -j list chains`: the families among `ip`, `ip6` with a chain `FORWARD` in
/// table `filter`.
pub fn filter_forward_families(json: &str) -> Result<Vec<Family>, String> {
    let mut out = BTreeSet::new();
    for entry in nft_entries(json)? {
        let Some(chain) = entry.get("chain") else {
            continue;
        };
        let field = |k: &str| chain.get(k).and_then(serde_json::Value::as_str);
        if field("table") != Some("filter") || field("name") != Some("FORWARD") {
            continue;
        }
        if let Some(family) = field("family").and_then(Family::from_name) {
            out.insert(family);
        }
    }
    Ok(out.into_iter().collect())
}

/// From `nft -j list chain <family> filter FORWARD`: the rules whose comment is `comment`.
pub fn parse_tagged_rules(json: &str, comment: &str) -> Result<Vec<TaggedRule>, String> {
    let mut out = Vec::new();
    for entry in nft_entries(json)? {
        let Some(rule) = entry.get("rule") else {
            continue;
        };
        if rule.get("comment").and_then(serde_json::Value::as_str) != Some(comment) {
            continue;
        }
        let handle = rule
            .get("handle")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| format!("a rule with comment {comment:?} has no handle"))?;
        let family = rule.get("family").and_then(serde_json::Value::as_str);
        let exprs = rule.get("expr").and_then(serde_json::Value::as_array);
        let parsed = match (family, exprs) {
            (Some(f), Some(e)) => parse_forward_rule(f, e),
            _ => None,
        };
        out.push(TaggedRule {
            handle,
            rule: parsed,
        });
    }
    Ok(out)
}

/// `[match <family> saddr|daddr == <net>, counter, accept]` → the rule; anything else
/// → `None`.
fn parse_forward_rule(family: &str, exprs: &[serde_json::Value]) -> Option<ForwardRule> {
    let [m, counter, verdict] = exprs else {
        return None;
    };
    counter.get("counter")?;
    verdict.get("accept")?;
    let m = m.get("match")?;
    if m.get("op")?.as_str()? != "==" {
        return None;
    }
    let payload = m.get("left")?.get("payload")?;
    if payload.get("protocol")?.as_str()? != family {
        return None;
    }
    let direction = match payload.get("field")?.as_str()? {
        "saddr" => Direction::Saddr,
        "daddr" => Direction::Daddr,
        _ => return None,
    };
    let right = m.get("right")?;
    let net = if let Some(addr) = right.as_str() {
        IpNet::from(addr.parse::<IpAddr>().ok()?)
    } else {
        let prefix = right.get("prefix")?;
        let addr: IpAddr = prefix.get("addr")?.as_str()?.parse().ok()?;
        let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
        IpNet::new(addr, len).ok()?
    };
    (Some(Family::of(&net)) == Family::from_name(family)).then_some(ForwardRule { direction, net })
}
#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    const DOCKER_CHAIN: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 4, "expr": [{"jump": {"target": "DOCKER-USER"}}]}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 3, "comment": "twill", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.244.0.5"}}, {"counter": {"packets": 0, "bytes": 0}}, {"accept": null}]}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 2, "comment": "twill", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"counter": {"packets": 7, "bytes": 588}}, {"accept": null}]}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 9, "comment": "twill", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}}, {"drop": null}]}}, {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 10, "comment": "other", "expr": [{"accept": null}]}}]}"#;

    #[test]
    fn parses_tagged_rules() {
        let got = parse_tagged_rules(DOCKER_CHAIN, "twill").expect("parse");
        assert_eq!(
            got,
            vec![
                TaggedRule {
                    handle: 3,
                    rule: Some(ForwardRule {
                        direction: Direction::Daddr,
                        net: net("10.244.0.5/32")
                    })
                },
                TaggedRule {
                    handle: 2,
                    rule: Some(ForwardRule {
                        direction: Direction::Saddr,
                        net: net("10.244.0.0/16")
                    })
                },
                TaggedRule {
                    handle: 9,
                    rule: None
                },
            ]
        );
        assert!(parse_tagged_rules("not json", "twill").is_err());
        assert!(parse_tagged_rules("{}", "twill").is_err());
        assert_eq!(parse_tagged_rules("", "twill"), Ok(Vec::new()));
    }

    #[test]
    fn parses_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"counter": {"family": "inet", "name": "deny_ingress_0", "table": "t", "handle": 3, "packets": 7, "bytes": 420}}]}"#;
        assert_eq!(
            parse_counters(json),
            Ok(vec![("deny_ingress_0".to_string(), 7)])
        );
        assert!(parse_counters(r#"{"nftables": [{"counter": {"name": "x"}}]}"#).is_err());
    }

    #[test]
    fn finds_filter_forward_chains() {
        assert_eq!(filter_forward_families(DOCKER_CHAIN), Ok(vec![Family::Ip]));
        let json = r#"{"nftables": [{"chain": {"family": "ip6", "table": "filter", "name": "FORWARD"}}, {"chain": {"family": "inet", "table": "filter", "name": "FORWARD"}}, {"chain": {"family": "ip", "table": "nat", "name": "FORWARD"}}, {"chain": {"family": "ip", "table": "filter", "name": "INPUT"}}]}"#;
        assert_eq!(filter_forward_families(json), Ok(vec![Family::Ip6]));
    }
}
