//! The peer table behind `/status`: pure, from one pass's inputs and outcome.

use crate::desired::{DesiredState, NextHop};
use crate::peers::{PeerSet, Rejected};
use crate::registry::Snapshot;
use crate::status::{Mode, PeerStatus};

/// The rows and the counts behind the peer metrics.
pub(super) struct PeerTable {
    pub(super) rows: Vec<PeerStatus>,
    pub(super) programmed: usize,
    pub(super) pending: usize,
    pub(super) rejected: usize,
}

impl PeerTable {
    /// A peer counts as programmed when `programmed` (what the kernel holds) has every
    /// route, neighbour and FDB entry `want` has for it.
    pub(super) fn build(
        snap: &Snapshot,
        peers: &PeerSet,
        rejected: &[Rejected],
        want: &DesiredState,
        programmed: Option<&DesiredState>,
    ) -> PeerTable {
        let mut rows = Vec::new();
        let (mut n_ok, mut n_pending) = (0, 0);
        for p in peers.peers.values() {
            let direct = p
                .subnets
                .iter()
                .all(|s| matches!(want.routes.get(s), Some(NextHop::Direct { .. })));
            let done = programmed.is_some_and(|have| {
                p.subnets.iter().all(|s| {
                    let r = want.routes.get(s);
                    r.is_some() && have.routes.get(s) == r && {
                        let vtep = s.network();
                        match want.neighbours.get(&vtep) {
                            None => true,
                            Some(mac) => {
                                have.neighbours.get(&vtep) == Some(mac)
                                    && have.fdb.get(mac) == want.fdb.get(mac)
                            }
                        }
                    }
                })
            });
            if done {
                n_ok += 1;
            } else {
                n_pending += 1;
            }
            rows.push(PeerStatus {
                node: p.node.clone(),
                subnets: p.subnets.clone(),
                public_ip: Some(p.public_ip),
                mode: if direct { Mode::Direct } else { Mode::Vxlan },
                programmed: done,
                reason: None,
            });
        }
        for r in rejected {
            let rec = snap.records.iter().find(|x| x.node == r.node);
            rows.push(PeerStatus {
                node: r.node.clone(),
                subnets: rec.map(|x| x.subnets.clone()).unwrap_or_default(),
                public_ip: rec.map(|x| x.public_ip),
                mode: Mode::Rejected,
                programmed: false,
                reason: Some(r.reason.clone()),
            });
        }
        for m in &snap.malformed {
            rows.push(PeerStatus {
                node: m.source.clone(),
                subnets: Vec::new(),
                public_ip: None,
                mode: Mode::Rejected,
                programmed: false,
                reason: Some(m.reason.clone()),
            });
        }
        PeerTable {
            rows,
            programmed: n_ok,
            pending: n_pending,
            rejected: rejected.len() + snap.malformed.len(),
        }
    }
}
