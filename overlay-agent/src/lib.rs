//! The node agent's library. Data flows one way: registry records → [`peers::PeerSet`]
//! (validated) → [`desired::DesiredState`] (pure) → [`desired::Plan`] against what the
//! kernel has → [`datapath::Datapath::apply`] (minimal netlink changes).

pub mod agent;
pub mod datapath;
pub mod desired;
pub mod firewall;
pub mod host;
pub mod http;
pub mod kube_client;
pub mod metrics;
pub mod peers;
pub mod pod_ports;
pub mod policy;
pub mod record;
pub mod registry;
pub mod status;
pub mod subnets;
pub mod underlay;
