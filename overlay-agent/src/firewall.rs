//! Masquerade and forward-accept rules, with nftables.
//!
//! Everything lives in one table, `inet twill` (the name is configurable). One `inet`
//! table rather than `ip twill` + `ip6 twill`: both families then change in a single
//! transaction, there is one thing to list and one thing to delete. (`inet` nat chains
//! need Linux 5.2 or later.) The table holds:
//!
//! - `vxlan_notrack` (filter, hook output, priority raw; when the node has a VXLAN
//!   device): the node's own VXLAN packets (UDP to the VXLAN port whose header carries
//!   the VXLAN flag and this cluster's VNI) are not tracked, so no NAT rule can touch
//!   them. See [Why the VXLAN packets are not tracked](#why-the-vxlan-packets-are-not-tracked);
//! - `postrouting` (nat, priority srcnat; only when `ip_masq`): traffic from the cluster
//!   network to the cluster network returns unchanged (pod to pod keeps its address), so
//!   does traffic from the cluster network to multicast; everything else from the
//!   cluster network is masqueraded (`fully-random`, so that many pods behind one node
//!   address do not race for the same source ports);
//! - `forward` (filter, priority filter, policy accept): accepts traffic from and to the
//!   cluster network.
//!
//! The table is replaced atomically on every [`Firewall::apply`], in one `nft -f -`
//! transaction `add table …; delete table …; table … { … }`: rules never disappear in
//! between, and a re-run does not duplicate anything. Replacing does not disturb
//! established connections: conntrack keeps their NAT bindings; the nat chain is only
//! consulted for a connection's first packet.
//!
//! **Why the forward chain is not enough.** In nftables an `accept` ends the packet's
//! walk through *one* base chain only; every other base chain on the same hook still
//! sees it and can drop it. Docker (through iptables-nft) creates
//! `table ip filter { chain FORWARD { type filter hook forward priority filter; policy
//! drop; } }`, which drops pod traffic whatever our table says. So when a chain `FORWARD`
//! exists in table `ip filter` (or `ip6 filter`), two rules per cluster network are put
//! at its top: `ip saddr <net> counter accept comment "twill"` and
//! `ip daddr <net> counter accept comment "twill"` (the comment is the table name).
//! They are added only when missing (a re-run does not duplicate them), stale ones (of a
//! network no longer in the cluster) are removed, and [`Firewall::remove`] deletes
//! exactly the rules carrying the comment, by handle. `ip filter` is never created when
//! it is absent. iptables-nft reads these rules back as
//! `-A FORWARD -s <net> -m comment --comment twill -j ACCEPT`, so Docker keeps working
//! with the chain.
//!
//! **Why the VXLAN packets are not tracked.** An encapsulated packet inherits the skb
//! mark of the packet it carries. A node's own connection to a Service is marked 0x4000
//! by kube-proxy; a masquerade rule matching that mark (kube-proxy before
//! 1.16.13/1.17.9/1.18.6, `--masquerade-bit` variants, a hand-written `meta mark`
//! rule) then NATs the *outer* UDP packet too and rewrites its source port, and with
//! transmit checksum offload on, the outer UDP checksum is then wrong: the receiving
//! node counts `UdpInCsumErrors` and drops it (flannel's and Calico's "63-second"
//! delays). An untracked packet never reaches a nat chain, whatever rules exist.
//! The match is exact (VXLAN port, flag byte 0x08, VNI) so that other UDP to that port
//! (a Service on it, reached from the node) keeps its NAT. Only the sender's output is
//! exempted: on the receiving side the fault cannot occur, untracking there measured no
//! faster, and it would turn the incoming packets' `ct state` from `new` into
//! `untracked`, which a host firewall rule such as `udp dport 8472 ct state new accept`
//! no longer matches.
//!
//! Not covered: chains of iptables-legacy (a separate kernel table set that nft does not
//! see), and drop policies in other nftables tables (firewalld's `inet firewalld`,
//! Docker's native nftables backend).
//!
//! `nft` runs as a child process and inherits the caller's network namespace. One
//! `apply` runs it two to four times (`list chains`, `list chain` per FORWARD chain
//! found, one `-f -` transaction that replaces the table and, only when needed, fixes
//! the FORWARD rules): measured on a loaded 2-core machine, 15–30 ms wall time without
//! Docker's chains and 20–45 ms with both, most of it waiting for the kernel to commit;
//! about 10–20 ms CPU. Cheap enough for a 30 s resync, so the table is not diffed.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Instant;

pub use ipnet::IpNet;

/// What the firewall should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallRules {
    /// The cluster networks, IPv4 and/or IPv6. Overlapping or adjacent networks are
    /// merged; host bits are ignored.
    pub cluster_networks: Vec<IpNet>,
    /// Masquerade traffic from the cluster network to outside it.
    pub ip_masq: bool,
    /// The node's VXLAN traffic, whose packets are exempted from connection tracking;
    /// `None` when the node sends none.
    pub vxlan: Option<VxlanTraffic>,
}

/// What identifies the VXLAN packets a node sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanTraffic {
    /// The destination UDP port (`backend.port`).
    pub port: u16,
    /// The VXLAN network identifier (`backend.vni`), 24 bits.
    pub vni: u32,
}

impl FirewallRules {
    /// The cluster networks of one family, host bits cleared, merged and sorted.
    fn networks(&self, family: Family) -> Vec<IpNet> {
        let nets: Vec<IpNet> = self
            .cluster_networks
            .iter()
            .filter(|n| Family::of(n) == family)
            .map(|n| n.trunc())
            .collect();
        IpNet::aggregate(&nets)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("cannot run `{program}` (is the nftables package installed?): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Nft {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot read the output of `{command}`: {reason}")]
    Output { command: String, reason: String },
    #[error("invalid nftables table name {0:?}: use 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter")]
    TableName(String),
}

/// The agent's view of the firewall, so that it can hold a `Box<dyn Firewall>`.
pub trait Firewall: Send + Sync {
    /// Brings the rules to `rules`; cheap when already there (the agent calls it on every
    /// resync, default 30 s).
    fn apply(&self, rules: &FirewallRules) -> Result<(), FirewallError>;
    /// Removes everything Twill added (table and the FORWARD rules). Ok when nothing is
    /// there.
    fn remove(&self) -> Result<(), FirewallError>;
}

/// [`Firewall`] through the `nft` binary.
#[derive(Debug)]
pub struct Nft {
    program: PathBuf,
    table: String,
    /// The last table script applied, to log changes at info and repeats at debug.
    last: Mutex<Option<String>>,
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
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
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
    fn apply(&self, rules: &FirewallRules) -> Result<(), FirewallError> {
        self.check_table()?;
        let started = Instant::now();
        let table_script = render_table_script(&self.table, rules);
        let mut script = table_script.clone();
        let mut forward_changes = 0;
        for family in self.foreign_forward_chains()? {
            let existing = self.tagged_rules(family)?;
            let wanted = wanted_forward_rules(family, rules);
            if let Some(fix) = render_forward_fix(family, &self.table, &existing, &wanted) {
                forward_changes += 1;
                tracing::info!(
                    family = family.name(),
                    had = existing.len(),
                    want = wanted.len(),
                    "updating Twill's accept rules in the FORWARD chain of table filter"
                );
                script.push_str(&fix);
            }
        }
        self.nft(&["-f", "-"], Some(&script))?;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let changed = last.as_deref() != Some(table_script.as_str());
        if changed {
            tracing::info!(
                table = %self.table,
                networks = ?rules.cluster_networks,
                ip_masq = rules.ip_masq,
                "nftables rules installed"
            );
        } else {
            tracing::debug!(
                table = %self.table,
                forward_changes,
                elapsed_us = started.elapsed().as_micros() as u64,
                "nftables rules reapplied"
            );
        }
        *last = Some(table_script);
        Ok(())
    }

    fn remove(&self) -> Result<(), FirewallError> {
        self.check_table()?;
        let mut script = String::new();
        for family in self.foreign_forward_chains()? {
            for rule in self.tagged_rules(family)? {
                let _ = writeln!(
                    script,
                    "delete rule {} filter FORWARD handle {}",
                    family.name(),
                    rule.handle
                );
            }
        }
        script.push_str(&render_delete_table(&self.table));
        self.nft(&["-f", "-"], Some(&script))?;
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(table = %self.table, "nftables rules removed");
        Ok(())
    }
}

/// An address family as nftables names it (`ip`, `ip6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    fn of(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ip,
            IpNet::V6(_) => Family::Ip6,
        }
    }

    /// The family's name, also the payload protocol in a match (`ip saddr`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    fn multicast(self) -> &'static str {
        match self {
            Family::Ip => "224.0.0.0/4",
            Family::Ip6 => "ff00::/8",
        }
    }
}

/// Which address of a packet a FORWARD rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Saddr,
    Daddr,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Saddr => "saddr",
            Direction::Daddr => "daddr",
        }
    }
}

/// One accept rule of ours in a foreign FORWARD chain: `<family> <direction> <net>
/// counter accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ForwardRule {
    pub direction: Direction,
    pub net: IpNet,
}

/// A rule carrying our comment in a foreign FORWARD chain, as listed. `rule` is `None`
/// when the rule is not exactly one we write (it is then replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedRule {
    pub handle: u64,
    pub rule: Option<ForwardRule>,
}

/// True for names `nft` takes unquoted and we accept: a letter, then up to 63 ASCII
/// letters, digits, `_` or `-`.
fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `10.0.0.0/8` for one network, `{ 10.0.0.0/8, 172.16.0.0/12 }` for several.
fn set_of(nets: &[IpNet]) -> String {
    match nets {
        [one] => one.to_string(),
        _ => {
            let items: Vec<String> = nets.iter().map(IpNet::to_string).collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// The transaction that replaces table `inet <table>` with the one `rules` asks for,
/// atomically (input of `nft -f -`).
pub fn render_table_script(table: &str, rules: &FirewallRules) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {table}");
    let _ = writeln!(s, "delete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");
    let families: Vec<(Family, String)> = [Family::Ip, Family::Ip6]
        .into_iter()
        .filter_map(|f| {
            let nets = rules.networks(f);
            (!nets.is_empty()).then(|| (f, set_of(&nets)))
        })
        .collect();
    if let Some(v) = &rules.vxlan {
        s.push_str(&render_vxlan_chain(v));
    }
    if rules.ip_masq {
        s.push_str("    chain postrouting {\n");
        s.push_str("        type nat hook postrouting priority srcnat; policy accept;\n");
        for (f, nets) in &families {
            let ip = f.name();
            let _ = writeln!(s, "        {ip} saddr {nets} {ip} daddr {nets} return");
            let multicast = f.multicast();
            let _ = writeln!(s, "        {ip} saddr {nets} {ip} daddr {multicast} return");
            let _ = writeln!(s, "        {ip} saddr {nets} masquerade fully-random");
        }
        s.push_str("    }\n");
    }
    s.push_str("    chain forward {\n");
    s.push_str("        type filter hook forward priority filter; policy accept;\n");
    for (f, nets) in &families {
        let ip = f.name();
        let _ = writeln!(s, "        {ip} saddr {nets} accept");
        let _ = writeln!(s, "        {ip} daddr {nets} accept");
    }
    s.push_str("    }\n");
    s.push_str("}\n");
    s
}

/// Chain `vxlan_notrack` of an `inet` table: the node's own VXLAN packets skip
/// connection tracking (see the module's notes). One rule for IPv4 and IPv6 underlays.
pub fn render_vxlan_chain(v: &VxlanTraffic) -> String {
    // `@th,64,32`: the VXLAN header's first word (flags 0x08, reserved); `@th,96,24`: its VNI.
    format!(
        "    chain vxlan_notrack {{
        type filter hook output priority raw; policy accept;
        udp dport {port} @th,64,32 0x08000000 @th,96,24 {vni} notrack comment \"VXLAN VNI {vni}: never NATed\"
    }}
",
        port = v.port,
        vni = v.vni
    )
}

/// The transaction that deletes table `inet <table>`, and succeeds when it is absent.
pub fn render_delete_table(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// The accept rules `rules` asks for in `<family> filter FORWARD`, in chain order.
pub fn wanted_forward_rules(family: Family, rules: &FirewallRules) -> Vec<ForwardRule> {
    let mut out = Vec::new();
    for net in rules.networks(family) {
        for direction in [Direction::Saddr, Direction::Daddr] {
            out.push(ForwardRule { direction, net });
        }
    }
    out
}

/// The commands that turn `existing` (our tagged rules in `<family> filter FORWARD`) into
/// `wanted`, or `None` when they are already there, once each. Where and in which order
/// they sit in the chain does not matter (Docker inserts its own jumps at the top too;
/// they return or only concern Docker's bridges), so a chain that has them is left
/// alone. Otherwise all tagged rules are deleted and the wanted ones inserted at the top.
pub fn render_forward_fix(
    family: Family,
    comment: &str,
    existing: &[TaggedRule],
    wanted: &[ForwardRule],
) -> Option<String> {
    let have: Vec<Option<ForwardRule>> = existing.iter().map(|r| r.rule).collect();
    let have_set: BTreeSet<Option<ForwardRule>> = have.iter().copied().collect();
    let want_set: BTreeSet<Option<ForwardRule>> = wanted.iter().map(|r| Some(*r)).collect();
    if have.len() == have_set.len() && have_set == want_set {
        return None;
    }
    let ip = family.name();
    let mut s = String::new();
    for r in existing {
        let _ = writeln!(s, "delete rule {ip} filter FORWARD handle {}", r.handle);
    }
    // `insert` puts a rule at the top: insert in reverse to keep `wanted`'s order.
    for r in wanted.iter().rev() {
        let _ = writeln!(
            s,
            "insert rule {ip} filter FORWARD {ip} {} {} counter accept comment \"{comment}\"",
            r.direction.name(),
            r.net
        );
    }
    Some(s)
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
        match field("family") {
            Some("ip") => out.insert(Family::Ip),
            Some("ip6") => out.insert(Family::Ip6),
            _ => false,
        };
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
    let wanted_family = match family {
        "ip" => Family::Ip,
        "ip6" => Family::Ip6,
        _ => return None,
    };
    (Family::of(&net) == wanted_family).then_some(ForwardRule { direction, net })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    fn rules(nets: &[&str], ip_masq: bool) -> FirewallRules {
        FirewallRules {
            cluster_networks: nets.iter().map(|n| net(n)).collect(),
            ip_masq,
            vxlan: None,
        }
    }

    #[test]
    fn vxlan_packets_are_untracked_in_both_families_with_or_without_masquerade() {
        for ip_masq in [true, false] {
            let mut r = rules(&["10.244.0.0/16", "fd10:244::/56"], ip_masq);
            r.vxlan = Some(VxlanTraffic {
                port: 4789,
                vni: 0x00ab_cdef,
            });
            let script = render_table_script("twill", &r);
            let chain = "    chain vxlan_notrack {
        type filter hook output priority raw; policy accept;
        udp dport 4789 @th,64,32 0x08000000 @th,96,24 11259375 notrack comment \"VXLAN VNI 11259375: never NATed\"
    }
";
            assert!(script.contains(chain), "{script}");
            // One rule without an address family: IPv4 and IPv6 underlays alike.
            assert_eq!(script.matches(" notrack comment").count(), 1);
            assert_eq!(script.contains("masquerade"), ip_masq);
        }
        let script = render_table_script("twill", &rules(&["10.244.0.0/16"], true));
        assert!(!script.contains("vxlan_notrack"), "{script}");
    }

    #[test]
    fn renders_v4_table_with_masquerade() {
        let script = render_table_script("twill", &rules(&["10.244.0.0/16"], true));
        assert_eq!(
            script,
            "add table inet twill
delete table inet twill
table inet twill {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return
        ip saddr 10.244.0.0/16 ip daddr 224.0.0.0/4 return
        ip saddr 10.244.0.0/16 masquerade fully-random
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip saddr 10.244.0.0/16 accept
        ip daddr 10.244.0.0/16 accept
    }
}
"
        );
    }

    #[test]
    fn renders_dual_stack_with_sets_merged_and_truncated() {
        let script = render_table_script(
            "tw",
            &rules(
                &[
                    "fd10:244::/56",
                    "10.244.7.9/16",
                    "10.96.0.0/12",
                    "10.244.0.0/17",
                ],
                true,
            ),
        );
        assert!(script.contains(
            "ip saddr { 10.96.0.0/12, 10.244.0.0/16 } ip daddr { 10.96.0.0/12, 10.244.0.0/16 } return\n"
        ));
        assert!(script.contains("ip6 saddr fd10:244::/56 ip6 daddr fd10:244::/56 return\n"));
        assert!(script.contains("ip6 saddr fd10:244::/56 ip6 daddr ff00::/8 return\n"));
        assert!(script.contains("ip6 saddr fd10:244::/56 masquerade fully-random\n"));
        assert!(script.contains("ip6 daddr fd10:244::/56 accept\n"));
        assert!(script.starts_with("add table inet tw\ndelete table inet tw\ntable inet tw {\n"));
        // v4 rules come before v6 rules.
        let v4 = script.find("ip saddr { 10.96").unwrap_or(usize::MAX);
        let v6 = script.find("ip6 saddr").unwrap_or(0);
        assert!(v4 < v6);
    }

    #[test]
    fn no_masquerade_without_ip_masq() {
        let script = render_table_script("twill", &rules(&["10.244.0.0/16"], false));
        assert!(!script.contains("masquerade"));
        assert!(!script.contains("nat"));
        assert!(script.contains("ip saddr 10.244.0.0/16 accept"));
    }

    #[test]
    fn delete_script_tolerates_absent_table() {
        assert_eq!(
            render_delete_table("twill"),
            "add table inet twill\ndelete table inet twill\n"
        );
    }

    #[test]
    fn table_names() {
        assert!(valid_table_name("twill"));
        assert!(valid_table_name("t_1-x"));
        for bad in [
            "",
            "1twill",
            "tw ill",
            "tw;flush ruleset",
            "tw\"",
            &"a".repeat(65),
        ] {
            assert!(!valid_table_name(bad), "{bad:?}");
        }
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
    fn finds_filter_forward_chains() {
        assert_eq!(filter_forward_families(DOCKER_CHAIN), Ok(vec![Family::Ip]));
        let json = r#"{"nftables": [{"chain": {"family": "ip6", "table": "filter", "name": "FORWARD"}}, {"chain": {"family": "inet", "table": "filter", "name": "FORWARD"}}, {"chain": {"family": "ip", "table": "nat", "name": "FORWARD"}}, {"chain": {"family": "ip", "table": "filter", "name": "INPUT"}}]}"#;
        assert_eq!(filter_forward_families(json), Ok(vec![Family::Ip6]));
    }

    #[test]
    fn forward_fix_only_when_needed() {
        let r = rules(&["10.244.0.0/16", "fd10::/64"], true);
        let wanted = wanted_forward_rules(Family::Ip, &r);
        assert_eq!(wanted.len(), 2);
        let tagged = |handle, direction| TaggedRule {
            handle,
            rule: Some(ForwardRule {
                direction,
                net: net("10.244.0.0/16"),
            }),
        };
        // Already there, in any order: nothing to do.
        let there = [tagged(7, Direction::Daddr), tagged(5, Direction::Saddr)];
        assert_eq!(
            render_forward_fix(Family::Ip, "twill", &there, &wanted),
            None
        );
        // Missing: inserted, saddr ending up first.
        assert_eq!(
            render_forward_fix(Family::Ip, "twill", &[], &wanted).as_deref(),
            Some(
                "insert rule ip filter FORWARD ip daddr 10.244.0.0/16 counter accept comment \"twill\"\n\
                 insert rule ip filter FORWARD ip saddr 10.244.0.0/16 counter accept comment \"twill\"\n"
            )
        );
        // Duplicated or foreign: all replaced.
        let dup = [
            tagged(7, Direction::Daddr),
            tagged(5, Direction::Saddr),
            tagged(6, Direction::Saddr),
        ];
        let fix = render_forward_fix(Family::Ip, "twill", &dup, &wanted).expect("fix");
        assert!(fix.starts_with(
            "delete rule ip filter FORWARD handle 7\n\
             delete rule ip filter FORWARD handle 5\n\
             delete rule ip filter FORWARD handle 6\n"
        ));
        assert_eq!(fix.matches("insert rule").count(), 2);
        // A family without networks: our stale rules go.
        let v4_only = rules(&["10.244.0.0/16"], true);
        let stale = [TaggedRule {
            handle: 3,
            rule: Some(ForwardRule {
                direction: Direction::Saddr,
                net: net("fd10::/64"),
            }),
        }];
        assert_eq!(
            render_forward_fix(
                Family::Ip6,
                "twill",
                &stale,
                &wanted_forward_rules(Family::Ip6, &v4_only)
            )
            .as_deref(),
            Some("delete rule ip6 filter FORWARD handle 3\n")
        );
        assert_eq!(render_forward_fix(Family::Ip6, "twill", &[], &[]), None);
    }
}
