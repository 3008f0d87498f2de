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
//! [`Firewall::apply`] replaces the table atomically, in one `nft -f -` transaction
//! `add table …; delete table …; table … { … }`, when its rules changed or the kernel's
//! copy no longer lists as the last apply left it (deleted, flushed, edited); otherwise
//! it leaves it alone. Rules never disappear in between, and a re-run does not
//! duplicate anything. Replacing does not disturb
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
//!
//! The module is cut as netavark's `src/firewall/`: this file holds what the agent
//! sees (the [`Firewall`] trait, [`FirewallRules`], the error) and the rule model;
//! `script` renders `nft -f -` input from it (pure); `nft` runs the binary and reads
//! its JSON listings back into the model.

mod nft;
pub mod policy;
mod script;

pub use ipnet::IpNet;
pub use nft::{filter_forward_families, parse_counters, parse_tagged_rules, Drift, Nft};
pub use script::{
    render_delete_table, render_forward_fix, render_table_script, render_vxlan_chain,
    wanted_forward_rules,
};

use std::process::ExitStatus;

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
    pub(crate) fn networks(&self, family: Family) -> Vec<IpNet> {
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

/// What an [`Firewall::apply`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Set when the table was no longer what the previous apply left (deleted by hand,
    /// `nft flush ruleset`, edited): what was wrong. It has been put back.
    pub repaired: Option<String>,
}

/// The agent's view of the firewall, so that it can hold a `Box<dyn Firewall>`.
pub trait Firewall: Send + Sync {
    /// Brings the rules to `rules`; cheap when already there (the agent calls it on every
    /// resync, default 30 s).
    fn apply(&self, rules: &FirewallRules) -> Result<Applied, FirewallError>;
    /// Removes everything Twill added (table and the FORWARD rules). Ok when nothing is
    /// there.
    fn remove(&self) -> Result<(), FirewallError>;
}

/// An address family as nftables names it (`ip`, `ip6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub(crate) fn of(net: &IpNet) -> Family {
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

    /// `ip` → [`Family::Ip`], `ip6` → [`Family::Ip6`]; other families are not ours.
    pub(crate) fn from_name(name: &str) -> Option<Family> {
        match name {
            "ip" => Some(Family::Ip),
            "ip6" => Some(Family::Ip6),
            _ => None,
        }
    }

    pub(crate) fn multicast(self) -> &'static str {
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
    pub(crate) fn name(self) -> &'static str {
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
