//! The enforcer's state between applies: the compiler, the table in force and its
//! counters; an apply compiles, renders and runs nft only for what changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use twill_policy::incremental::NodeCompiler;
use twill_policy::Cluster;

use super::PolicyEnforcement;
use crate::firewall::policy::{render_diff, PolicyNames, PolicyTable};
use crate::firewall::{Drift, Nft};
use crate::metrics::DenyLabel;
use crate::policy::report::{pod_rows, rule_count};
use crate::policy::PolicyView;
use crate::status::policy::PolicyStatus;
use crate::status::Board;

/// What kind of pass [`ApplyState::apply`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resync {
    /// A change: the incremental compile, nft only if the rules moved.
    No,
    /// A periodic resync: also renders the table and replaces it if the kernel's copy
    /// drifted.
    Check,
    /// A resync that also compiles from scratch (every [`FRESH_EVERY`]th).
    Fresh,
}

/// Every how many resyncs the compile starts from scratch. At 5,000 pods and 1,000
/// policies it takes 0.3–0.6 s on the event loop, and a change arriving meanwhile
/// waits: at every resync (30 s) that is 1–2 % of the time, enough to show in a p99;
/// every tenth (5 min) 0.1–0.2 %. The incremental compile is property-tested against
/// the full one; this is the safety net, not the mechanism.
pub(super) const FRESH_EVERY: u64 = 10;

#[derive(Default)]
pub(super) struct ApplyState {
    /// Rebuilt at each resync, updated per change in between.
    compiler: Option<NodeCompiler>,
    names: PolicyNames,
    /// The table in the kernel; `None` when unknown (then it is replaced whole).
    pub(super) applied: Option<PolicyTable>,
    ever_applied: bool,
    /// The applied table's counters: name → (metric labels, packets already counted).
    counters: HashMap<String, (DenyLabel, u64)>,
    /// The source's snapshot and the admissions' revision the applied table came from.
    pub(super) source: Option<(Arc<Cluster>, u64)>,
}

impl ApplyState {
    /// Whether the table in force was made from `view` under admissions `revision`.
    pub(super) fn in_force(&self, view: &PolicyView, revision: u64) -> bool {
        self.source
            .as_ref()
            .is_some_and(|(cluster, r)| Arc::ptr_eq(cluster, &view.cluster) && *r == revision)
    }

    /// Whether nft ran: `Some(ok)`, or `None` when the table was already in force. A
    /// resync renders the table and checks the kernel's copy for drift; a fresh one
    /// also compiles from scratch.
    pub(super) async fn apply(
        &mut self,
        conf: &PolicyEnforcement,
        nft: &Arc<Nft>,
        board: &Board,
        view: &PolicyView,
        resync: Resync,
    ) -> Option<bool> {
        let started = Instant::now();
        // Some resyncs compile afresh: a bug in the incremental path cannot last.
        let (compiler, changed) = match self.compiler.take() {
            Some(mut c) if resync != Resync::Fresh => {
                let changed = c.update(&view.cluster);
                (c, !changed.is_empty())
            }
            old => {
                // Dropped first: the old and the new compiler at once would double the peak.
                drop(old);
                (NodeCompiler::new(&view.cluster, &conf.node), true)
            }
        };
        let policies = view.cluster.policies.len();
        board.metrics.policies.set(policies as i64);
        if !changed && self.applied.is_some() && resync == Resync::No {
            // Nothing of this node's rules moved: the table in force stays, and so do the
            // status rows (only the policy count may have).
            self.compiler = Some(compiler);
            board.update(|s| {
                if let Some(status) = s.network_policy.as_mut() {
                    status.policies = policies;
                }
            });
            return None;
        }
        let rules = compiler.rules();
        let table = PolicyTable::build(rules, &conf.render, &mut self.names);
        let metrics = &board.metrics;
        metrics
            .policy_compile_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.policy_rules.set(rule_count(rules) as i64);
        metrics
            .policy_rejected_objects
            .set(rules.rejected.len() as i64);
        // A resync replaces the table unless the fresh compile renders the applied table
        // and the kernel still lists what it listed after that table was applied whole:
        // someone may have removed or edited it.
        let same = self.applied.as_ref() == Some(&table);
        let resync = resync != Resync::No;
        let (error, nft_ran) = if same && (!resync || self.kernel_unchanged(nft).await) {
            (None, None)
        } else {
            let error = self.apply_table(conf, nft, board, table, resync).await;
            let ok = error.is_none();
            (error, Some(ok))
        };
        let reason = match (&error, self.ever_applied) {
            (Some(e), false) => Some(format!("the policy table is not applied: {e}")),
            _ => None,
        };
        let rows = pod_rows(rules);
        let rejected = rules.rejected.iter().map(ToString::to_string).collect();
        board.update(|s| {
            s.network_policy = Some(PolicyStatus {
                table: conf.table.clone(),
                synced: true,
                applied: error.is_none(),
                policies,
                rules: rule_count(rules),
                rejected,
                last_error: error.clone(),
                pods: rows,
            });
            s.set_policy_reason(reason);
        });
        self.compiler = Some(compiler);
        nft_ran
    }

    /// Applies `table`: as a diff from the applied one when that is known and this is
    /// no resync, else whole. The error, if it failed.
    async fn apply_table(
        &mut self,
        conf: &PolicyEnforcement,
        nft: &Arc<Nft>,
        board: &Board,
        table: PolicyTable,
        resync: bool,
    ) -> Option<String> {
        let diff = self
            .applied
            .as_ref()
            .filter(|_| !resync)
            .and_then(|old| render_diff(&conf.table, old, &table));
        let whole = diff.is_none();
        // A replacement zeroes every counter and a diff may delete some: read them first.
        if diff.as_ref().is_none_or(|d| d.deletes_counters) {
            self.read_counters(nft, board).await;
        }
        let script = match diff {
            Some(d) => d.script,
            None => table.render_full(&conf.table),
        };
        let runner = nft.clone();
        let result = tokio::task::spawn_blocking(move || runner.run_script(&script)).await;
        let result = match result {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the nft task failed: {e}")),
        };
        board.metrics.count_policy_apply(result.is_ok());
        if let Err(e) = result {
            tracing::error!(table = %conf.table, error = %e, "applying the NetworkPolicy table failed; retrying on the next change or resync");
            self.applied = None;
            nft.forget();
            return Some(e);
        }
        // Only a whole apply is listed (a listing at this scale costs more than a diff):
        // after a diff, the next resync replaces the table whole.
        if whole {
            witness(nft).await;
        } else {
            nft.forget();
        }
        if !self.ever_applied || whole {
            tracing::info!(table = %conf.table, chains = table.chains.len(),
                counters = table.counters.len(), "NetworkPolicy table applied whole");
        }
        self.ever_applied = true;
        // Counters a diff kept go on counting from what was read; new ones start at 0.
        let mut counters = HashMap::new();
        for c in &table.counters {
            let kept = self.counters.remove(&c.name).filter(|_| !whole);
            let entry = kept.unwrap_or_else(|| {
                let (namespace, policy) = c
                    .policy
                    .clone()
                    .map(|p| (p.namespace, p.name))
                    .unwrap_or_default();
                let label = DenyLabel {
                    namespace,
                    policy,
                    direction: c.direction.name().into(),
                };
                (label, 0)
            });
            counters.insert(c.name.clone(), entry);
        }
        self.counters = counters;
        self.applied = Some(table);
        None
    }

    /// Whether the kernel lists the table as it did right after the last whole apply.
    async fn kernel_unchanged(&self, nft: &Arc<Nft>) -> bool {
        let runner = nft.clone();
        let drift = match tokio::task::spawn_blocking(move || runner.drift()).await {
            Ok(Ok(drift)) => drift,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list the NetworkPolicy table");
                Drift::Unknown
            }
            Err(e) => {
                tracing::warn!(error = %e, "the nft task failed");
                Drift::Unknown
            }
        };
        if matches!(drift, Drift::Changed | Drift::Deleted) {
            tracing::info!(table = %nft.table(), ?drift, "the NetworkPolicy table in the kernel drifted; replacing it");
        }
        drift == Drift::Unchanged
    }

    /// Adds what the deny counters counted since the last read to the metrics.
    pub(super) async fn read_counters(&mut self, nft: &Arc<Nft>, board: &Board) {
        if self.counters.is_empty() || self.applied.is_none() {
            return;
        }
        let runner = nft.clone();
        let read = match tokio::task::spawn_blocking(move || runner.counters()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "the nft task failed");
                return;
            }
        };
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the NetworkPolicy deny counters");
                return;
            }
        };
        for (name, packets) in read {
            if let Some((label, seen)) = self.counters.get_mut(&name) {
                let new = packets.saturating_sub(*seen);
                if new > 0 {
                    board.metrics.policy_denied.get_or_create(label).inc_by(new);
                }
                *seen = packets.max(*seen);
            }
        }
    }
}

/// Notes the kernel's listing of the table as the applied one; forgets it when the
/// table cannot be listed (the next resync then replaces it).
async fn witness(nft: &Arc<Nft>) {
    let runner = nft.clone();
    let failed = match tokio::task::spawn_blocking(move || runner.witness()).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the nft task failed: {e}"),
    };
    tracing::warn!(error = %failed, "cannot list the NetworkPolicy table");
    nft.forget();
}
