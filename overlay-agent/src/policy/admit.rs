//! Admissions: new pods whose NetworkPolicy rules must be in force before their ADD
//! returns. The plugin asks through the store service ([`AdmissionHook`]); the
//! enforcement loop holds the [`Admissions`], lays their bindings over each view
//! ([`Admissions::overlay`]), applies, and then answers ([`Admissions::answer`]).
//!
//! A binding (attachment → pod namespace/name and IPs) stands in for the Pod object's
//! `status.podIPs`, which the kubelet writes only after ADD returns. It ends when the
//! attachment is released (DEL, GC, a failed ADD) or when the Pod object carries its IPs.
//!
//! A pod the agent has not seen yet (watch lag, or no Pod object at all) cannot be
//! matched by labels. It is then isolated in every direction that any policy of its
//! namespace isolates, and allowed only what the policies with an empty `podSelector`
//! allow (they select it whatever its labels are): never open. The answer waits up to
//! [`WAIT_FOR_POD`] for the Pod object, so that usually the exact rules are in force.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use twill_conf::Attachment;
use twill_ipam::service::{Admission, AdmissionHook};
use twill_policy::selector::{LabelSelector, Operator, Requirement};
use twill_policy::{Cluster, Pod, Policy};

use super::PolicyView;

/// How long an admission waits for the Pod object before the namespace fallback answers.
pub const WAIT_FOR_POD: Duration = Duration::from_secs(1);
/// How long an admission waits for a first full list of policies, pods and namespaces.
pub const WAIT_FOR_SYNC: Duration = Duration::from_secs(5);
/// The hook gives up on the enforcement loop after this (it answers well before).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// The label a pod of unknown labels carries in the overlaid cluster; no real pod has it.
const UNKNOWN_LABELS: &str = "twill.dev/unknown-labels";
/// The policy that isolates pods of unknown labels, as status and counters name it.
pub const UNKNOWN_LABELS_POLICY: &str = "twill-unknown-labels";

/// What the store service hands to the enforcement loop.
#[derive(Debug)]
pub enum AdmitEvent {
    Admit {
        admission: Admission,
        reply: SyncSender<Result<(), String>>,
    },
    Released(Attachment),
}

/// The store service's side: forwards to the enforcement loop and waits for its answer.
pub struct AdmitHook {
    tx: mpsc::UnboundedSender<AdmitEvent>,
}

/// The hook for the store service and the receiver for the enforcement loop.
pub fn channel() -> (Arc<AdmitHook>, mpsc::UnboundedReceiver<AdmitEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Arc::new(AdmitHook { tx }), rx)
}

impl AdmissionHook for AdmitHook {
    fn admit(&self, admission: &Admission) -> Result<(), String> {
        let (reply, answer) = sync_channel(1);
        let event = AdmitEvent::Admit {
            admission: admission.clone(),
            reply,
        };
        self.tx
            .send(event)
            .map_err(|_| "NetworkPolicy enforcement is not running".to_string())?;
        answer
            .recv_timeout(ANSWER_TIMEOUT)
            .map_err(|e| format!("NetworkPolicy enforcement did not answer: {e}"))?
    }

    fn released(&self, owner: &Attachment) {
        let _ = self.tx.send(AdmitEvent::Released(owner.clone()));
    }
}

#[derive(Debug, Clone)]
struct Binding {
    namespace: String,
    name: String,
    ips: Vec<IpAddr>,
}

struct Waiter {
    owner: Attachment,
    since: Instant,
    reply: SyncSender<Result<(), String>>,
}

/// The bindings and the admissions still waiting for their answer.
#[derive(Default)]
pub struct Admissions {
    bindings: BTreeMap<Attachment, Binding>,
    waiting: Vec<Waiter>,
    /// Counts changes to `bindings`: the same view under the same revision overlays the same.
    revision: u64,
}

/// A view with the bindings laid over it, and which bound pods it knew by their objects.
pub struct Overlaid {
    pub view: PolicyView,
    known: BTreeSet<Attachment>,
}

impl Admissions {
    pub fn take(&mut self, event: AdmitEvent, now: Instant) {
        match event {
            AdmitEvent::Admit { admission, reply } => {
                // An address released and given again: the older binding is stale.
                self.bindings
                    .retain(|_, b| !b.ips.iter().any(|ip| admission.ips.contains(ip)));
                self.revision += 1;
                self.bindings.insert(
                    admission.owner.clone(),
                    Binding {
                        namespace: admission.namespace,
                        name: admission.name,
                        ips: admission.ips,
                    },
                );
                self.waiting.push(Waiter {
                    owner: admission.owner,
                    since: now,
                    reply,
                });
            }
            AdmitEvent::Released(owner) => {
                if self.bindings.remove(&owner).is_some() {
                    self.revision += 1;
                }
                self.waiting.retain(|w| {
                    w.owner != owner || {
                        let _ = w.reply.send(Err("released while admitted".into()));
                        false
                    }
                });
            }
        }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// When the loop must wake up to answer a waiter that ran out of patience.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.waiting
            .iter()
            .flat_map(|w| [w.since + WAIT_FOR_POD, w.since + WAIT_FOR_SYNC])
            .filter(|d| *d > now)
            .min()
    }

    /// Before the first full list nothing can be enforced: waiters past
    /// [`WAIT_FOR_SYNC`] are refused (the runtime retries the ADD).
    pub fn refuse_unsynced(&mut self, now: Instant) {
        self.waiting.retain(|w| {
            now < w.since + WAIT_FOR_SYNC || {
                let _ = w.reply.send(Err(
                    "NetworkPolicies, Pods and Namespaces are not listed yet".into(),
                ));
                false
            }
        });
    }

    /// `view` with each bound pod given its IPs on `node`; pods the view lacks added with
    /// unknown labels (see the module). Bindings the Pod objects took over are dropped.
    pub fn overlay(&mut self, view: &PolicyView, node: &str) -> Overlaid {
        let mut known = BTreeSet::new();
        if self.bindings.is_empty() {
            return Overlaid {
                view: view.clone(),
                known,
            };
        }
        let mut cluster = Cluster::clone(&view.cluster);
        let mut taken_over = Vec::new();
        let mut unknown: Vec<(&Attachment, &Binding)> = Vec::new();
        for (owner, b) in &self.bindings {
            let found = cluster
                .pods
                .iter_mut()
                .find(|p| p.namespace == b.namespace && p.name == b.name);
            match found {
                Some(pod) => {
                    known.insert(owner.clone());
                    if b.ips.iter().all(|ip| pod.ips.contains(ip)) {
                        taken_over.push(owner.clone());
                    } else {
                        let new: Vec<IpAddr> = b
                            .ips
                            .iter()
                            .filter(|ip| !pod.ips.contains(ip))
                            .copied()
                            .collect();
                        pod.ips.extend(new);
                        pod.node_name = Some(node.to_string());
                    }
                }
                None => unknown.push((owner, b)),
            }
        }
        let namespaces: BTreeSet<String> =
            unknown.iter().map(|(_, b)| b.namespace.clone()).collect();
        for (owner, b) in unknown {
            cluster.pods.push(unknown_pod(owner, b, node));
        }
        for namespace in &namespaces {
            isolate_unknown(&mut cluster, namespace);
        }
        for owner in taken_over {
            self.bindings.remove(&owner);
            self.revision += 1;
        }
        Overlaid {
            view: PolicyView {
                synced: view.synced,
                cluster: Arc::new(cluster),
            },
            known,
        }
    }

    /// After an apply of `overlaid`: answers the waiters whose pod it knew, and those
    /// whose wait for the Pod object is over (they get the fallback). `applied` is
    /// whether the table in the kernel is the one rendered from `overlaid`.
    pub fn answer(&mut self, overlaid: &Overlaid, applied: bool, now: Instant) {
        self.answer_known(&overlaid.known, applied, now);
    }

    /// When the view and the bindings are those of the last apply: its known pods had
    /// their answer then, so only the waiters whose wait is over are due.
    pub fn answer_due(&mut self, applied: bool, now: Instant) {
        self.answer_known(&BTreeSet::new(), applied, now);
    }

    fn answer_known(&mut self, known: &BTreeSet<Attachment>, applied: bool, now: Instant) {
        self.waiting.retain(|w| {
            let due = known.contains(&w.owner) || now >= w.since + WAIT_FOR_POD;
            if !due && applied {
                return true;
            }
            let answer = if applied {
                Ok(())
            } else {
                Err("applying the NetworkPolicy table failed (see the agent's log)".into())
            };
            let _ = w.reply.send(answer);
            false
        });
    }
}

/// The bound pod with a label of its own only.
fn unknown_pod(owner: &Attachment, b: &Binding, node: &str) -> Pod {
    let tag = format!("{}.{}", owner.container_id, owner.ifname);
    Pod {
        namespace: b.namespace.clone(),
        name: b.name.clone(),
        labels: BTreeMap::from([(UNKNOWN_LABELS.to_string(), tag)]),
        node_name: Some(node.to_string()),
        ips: b.ips.clone(),
        ports: Vec::new(),
    }
}

/// Every policy of `namespace` that does not select all pods gets a requirement that
/// excludes the pods of unknown labels (their real labels may not match), and a policy
/// of their own isolates them in each direction some policy of the namespace isolates.
fn isolate_unknown(cluster: &mut Cluster, namespace: &str) {
    let (mut ingress, mut egress) = (false, false);
    for p in cluster
        .policies
        .iter_mut()
        .filter(|p| p.namespace == namespace)
    {
        ingress |= p.isolates_ingress;
        egress |= p.isolates_egress;
        if p.pod_selector != LabelSelector::default() {
            p.pod_selector.match_expressions.push(Requirement {
                key: UNKNOWN_LABELS.to_string(),
                operator: Operator::DoesNotExist,
            });
        }
    }
    if !(ingress || egress) {
        return;
    }
    cluster.policies.push(Policy {
        namespace: namespace.to_string(),
        name: UNKNOWN_LABELS_POLICY.to_string(),
        pod_selector: LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: UNKNOWN_LABELS.to_string(),
                operator: Operator::Exists,
            }],
        },
        isolates_ingress: ingress,
        isolates_egress: egress,
        ingress: Vec::new(),
        egress: Vec::new(),
    });
}

#[cfg(test)]
#[path = "admit_tests.rs"]
mod tests;
