//! The compiled form: per local pod IP, what its ingress and egress allow. Shaped for
//! nftables sets and maps (address sets, port ranges) and deterministic (ordered
//! collections), so two compiles of the same input compare equal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::{Serialize, Serializer};

use crate::error::Rejected;
use crate::model::Protocol;

/// A connection attempt, as a packet's first hop sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

/// The policy an entry came from, for counters and for telling the operator.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

/// Destination ports `start..=end` of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortRange {
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// Every port of `protocol`.
    pub fn all(protocol: Protocol) -> PortRange {
        PortRange {
            protocol,
            start: 0,
            end: u16::MAX,
        }
    }

    fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.start..=self.end).contains(&port)
    }
}

/// Which addresses on the far side an entry admits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PeerMatch {
    Any,
    /// Pod IPs chosen by selectors (empty while no pod matches). Shared: one selector's
    /// set sits in the entries of every pod its policies select (hundreds of MB as copies
    /// at 5,000 pods and 1,000 policies).
    Addrs(#[serde(serialize_with = "shared_addrs")] Arc<BTreeSet<IpAddr>>),
    Cidr {
        cidr: IpNet,
        except: BTreeSet<IpNet>,
    },
}

impl PeerMatch {
    pub fn matches(&self, ip: IpAddr) -> bool {
        match self {
            PeerMatch::Any => true,
            PeerMatch::Addrs(addrs) => addrs.contains(&ip),
            PeerMatch::Cidr { cidr, except } => {
                cidr.contains(&ip) && !except.iter().any(|net| net.contains(&ip))
            }
        }
    }
}

/// As the set itself (serde's `rc` feature would rebuild every crate that uses serde).
fn shared_addrs<S: Serializer>(
    addrs: &Arc<BTreeSet<IpAddr>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    addrs.as_ref().serialize(serializer)
}

/// Which destination ports an entry admits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PortMatch {
    Any,
    List(BTreeSet<PortRange>),
}

impl PortMatch {
    fn matches(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            PortMatch::Any => true,
            PortMatch::List(ranges) => ranges.iter().any(|r| r.contains(protocol, port)),
        }
    }
}

/// One allowed (peer, ports) pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AllowEntry {
    pub peer: PeerMatch,
    pub ports: PortMatch,
    pub policy: PolicyRef,
}

/// One direction of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// No policy isolates the pod this way: everything passes.
    NotIsolated,
    /// Only what some entry allows passes (no entry: nothing). `by`: the policies that
    /// isolate the pod this way, those without allow entries too (a default deny), so
    /// that a denial can be told against them.
    Isolated {
        by: BTreeSet<PolicyRef>,
        entries: BTreeSet<AllowEntry>,
    },
}

impl Direction {
    fn allows(&self, peer: IpAddr, connection: &Connection) -> bool {
        match self {
            Direction::NotIsolated => true,
            Direction::Isolated { entries, .. } => entries.iter().any(|entry| {
                entry.peer.matches(peer)
                    && entry.ports.matches(connection.protocol, connection.port)
            }),
        }
    }
}

/// The rules of one pod on this node, under each of its IPs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodRules {
    pub namespace: String,
    pub name: String,
    pub ingress: Direction,
    pub egress: Direction,
}

/// What one node enforces: ingress and egress of its own pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleSet {
    pub node: String,
    /// Traffic between these and the node's pods is always allowed.
    pub node_ips: BTreeSet<IpAddr>,
    /// Shared: a pod's rules under each of its IPs, and in the incremental compiler.
    #[serde(serialize_with = "shared_pods")]
    pub pods: BTreeMap<IpAddr, Arc<PodRules>>,
    /// Objects the compile left out, and why.
    #[serde(serialize_with = "as_messages")]
    pub rejected: Vec<Rejected>,
}

fn shared_pods<S: Serializer>(
    pods: &BTreeMap<IpAddr, Arc<PodRules>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pods.iter().map(|(ip, rules)| (ip, rules.as_ref())))
}

fn as_messages<S: Serializer>(rejected: &[Rejected], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(rejected.iter().map(ToString::to_string))
}

impl RuleSet {
    /// Whether this node lets `connection` pass: egress of its source and ingress of its
    /// destination, where those are pods of this node (other ends pass here unjudged).
    /// A pod reaching itself (e.g. through a Service whose backend it is) is always
    /// allowed, as upstream's conformance tests expect.
    pub fn allows(&self, connection: &Connection) -> bool {
        connection.src == connection.dst
            || (self.allows_egress(connection) && self.allows_ingress(connection))
    }

    pub fn allows_egress(&self, connection: &Connection) -> bool {
        self.pods.get(&connection.src).is_none_or(|pod| {
            self.node_ips.contains(&connection.dst) || pod.egress.allows(connection.dst, connection)
        })
    }

    pub fn allows_ingress(&self, connection: &Connection) -> bool {
        self.pods.get(&connection.dst).is_none_or(|pod| {
            self.node_ips.contains(&connection.src)
                || pod.ingress.allows(connection.src, connection)
        })
    }
}
