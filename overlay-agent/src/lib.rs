//! The node agent's library. Data flows one way: registry records → [`peers::PeerSet`]
//! (validated) → [`desired::DesiredState`] (pure) → diff against what the kernel has →
//! minimal netlink changes.

pub mod desired;
pub mod peers;
pub mod record;
