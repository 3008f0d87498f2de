//! Admissions over real compiles: the bound pod's rules, the fallback for unknown
//! labels, and when waiters are answered.

use super::*;
use serde_json::json;
use std::sync::mpsc::Receiver;
use twill_policy::ruleset::Direction;
use twill_policy::Namespace;

const NODE: &str = "node-1";

fn policy(value: serde_json::Value) -> Policy {
    Policy::from_json(&value).expect("policy")
}

fn cluster(policies: Vec<Policy>, pods: Vec<Pod>) -> PolicyView {
    PolicyView {
        synced: true,
        cluster: Arc::new(Cluster {
            policies,
            pods,
            namespaces: vec![Namespace {
                name: "x".into(),
                labels: Default::default(),
            }],
            ..Cluster::default()
        }),
    }
}

fn pod(name: &str, role: &str, ips: &[&str]) -> Pod {
    Pod {
        namespace: "x".into(),
        name: name.into(),
        labels: BTreeMap::from([("role".to_string(), role.to_string())]),
        node_name: Some(NODE.into()),
        ips: ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
        ports: Vec::new(),
    }
}

fn owner(id: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: "eth0".into(),
    }
}

fn admit(
    a: &mut Admissions,
    id: &str,
    name: &str,
    ip: &str,
    now: Instant,
) -> Receiver<Result<(), String>> {
    let (reply, answer) = sync_channel(1);
    let admission = Admission {
        owner: owner(id),
        namespace: "x".into(),
        name: name.into(),
        ips: vec![ip.parse().expect("ip")],
    };
    a.take(AdmitEvent::Admit { admission, reply }, now);
    answer
}

fn ingress_of(view: &PolicyView, ip: &str) -> Option<Direction> {
    let rules = twill_policy::compile(&view.cluster, NODE);
    let ip: IpAddr = ip.parse().expect("ip");
    rules.pods.get(&ip).map(|p| p.ingress.clone())
}

/// Only `role=web` pods are isolated, and from `role=client` only.
fn web_policy() -> Policy {
    policy(
        json!({"metadata": {"namespace": "x", "name": "web"}, "spec": {
        "podSelector": {"matchLabels": {"role": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}}),
    )
}

#[test]
fn a_known_pod_gets_its_own_rules_and_is_answered_at_once() {
    let mut a = Admissions::default();
    let now = Instant::now();
    let answer = admit(&mut a, "c1", "w", "10.0.0.5", now);
    let view = cluster(vec![web_policy()], vec![pod("w", "web", &[])]);
    assert_eq!(
        ingress_of(&view, "10.0.0.5"),
        None,
        "no rules without the binding"
    );
    let overlaid = a.overlay(&view, NODE);
    assert!(matches!(
        ingress_of(&overlaid.view, "10.0.0.5"),
        Some(Direction::Isolated { .. })
    ));
    a.answer(&overlaid, true, now);
    assert_eq!(answer.try_recv(), Ok(Ok(())));
    // The Pod object with the IP takes over: the binding goes.
    let view = cluster(vec![web_policy()], vec![pod("w", "web", &["10.0.0.5"])]);
    a.overlay(&view, NODE);
    assert!(a.bindings.is_empty());
}

#[test]
fn an_unknown_pod_is_isolated_by_any_policy_of_its_namespace_and_answered_after_the_wait() {
    let mut a = Admissions::default();
    let now = Instant::now();
    let answer = admit(&mut a, "c1", "w", "10.0.0.5", now);
    // Without the fallback it would match no selector and be open.
    let view = cluster(vec![web_policy()], vec![pod("cl", "client", &["10.0.0.9"])]);
    let overlaid = a.overlay(&view, NODE);
    match ingress_of(&overlaid.view, "10.0.0.5") {
        Some(Direction::Isolated { entries, .. }) => assert!(entries.is_empty(), "{entries:?}"),
        other => panic!("not isolated: {other:?}"),
    }
    a.answer(&overlaid, true, now);
    assert!(
        answer.try_recv().is_err(),
        "answered before the wait for the Pod object"
    );
    a.answer(&overlaid, true, now + WAIT_FOR_POD);
    assert_eq!(answer.try_recv(), Ok(Ok(())));
}

#[test]
fn an_unknown_pod_gets_what_policies_for_all_pods_allow() {
    let all = policy(
        json!({"metadata": {"namespace": "x", "name": "all"}, "spec": {
        "podSelector": {},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}}),
    );
    let mut a = Admissions::default();
    let _answer = admit(&mut a, "c1", "w", "10.0.0.5", Instant::now());
    let view = cluster(
        vec![all, web_policy()],
        vec![pod("cl", "client", &["10.0.0.9"])],
    );
    let overlaid = a.overlay(&view, NODE);
    match ingress_of(&overlaid.view, "10.0.0.5") {
        Some(Direction::Isolated { entries, .. }) => {
            assert!(!entries.is_empty());
            assert!(
                entries.iter().all(|e| e.policy.name == "all"),
                "{entries:?}"
            );
        }
        other => panic!("not isolated: {other:?}"),
    }
}

#[test]
fn release_drops_the_binding_and_refuses_the_waiter() {
    let mut a = Admissions::default();
    let answer = admit(&mut a, "c1", "w", "10.0.0.5", Instant::now());
    a.take(AdmitEvent::Released(owner("c1")), Instant::now());
    assert!(a.bindings.is_empty());
    assert!(matches!(answer.try_recv(), Ok(Err(_))));
}

#[test]
fn an_address_given_again_replaces_the_older_binding() {
    let mut a = Admissions::default();
    let _old = admit(&mut a, "c1", "w", "10.0.0.5", Instant::now());
    let _new = admit(&mut a, "c2", "v", "10.0.0.5", Instant::now());
    assert_eq!(
        a.bindings.keys().cloned().collect::<Vec<_>>(),
        vec![owner("c2")]
    );
}

#[test]
fn unsynced_waiters_are_refused_after_the_sync_wait() {
    let mut a = Admissions::default();
    let now = Instant::now();
    let answer = admit(&mut a, "c1", "w", "10.0.0.5", now);
    a.refuse_unsynced(now);
    assert!(answer.try_recv().is_err());
    assert_eq!(a.next_deadline(now), Some(now + WAIT_FOR_POD));
    a.refuse_unsynced(now + WAIT_FOR_SYNC);
    assert!(matches!(answer.try_recv(), Ok(Err(_))));
}

#[test]
fn the_revision_moves_with_the_bindings_only() {
    let mut a = Admissions::default();
    let now = Instant::now();
    let start = a.revision();
    let answer = admit(&mut a, "c1", "w", "10.0.0.5", now);
    let bound = a.revision();
    assert_ne!(bound, start, "a new binding");
    let view = cluster(vec![web_policy()], vec![pod("cl", "client", &["10.0.0.9"])]);
    a.overlay(&view, NODE);
    assert_eq!(a.revision(), bound, "an overlay that drops nothing");
    // The wait is over: the fallback in force answers without another overlay.
    a.answer_due(true, now);
    assert!(answer.try_recv().is_err(), "answered before its wait");
    a.answer_due(true, now + WAIT_FOR_POD);
    assert_eq!(answer.try_recv(), Ok(Ok(())));
    let view = cluster(vec![web_policy()], vec![pod("w", "web", &["10.0.0.5"])]);
    a.overlay(&view, NODE);
    let taken = a.revision();
    assert_ne!(taken, bound, "the Pod object took the binding over");
    a.take(AdmitEvent::Released(owner("c1")), now);
    assert_eq!(a.revision(), taken, "releasing what is not bound");
    let _answer = admit(&mut a, "c2", "v", "10.0.0.6", now);
    a.take(AdmitEvent::Released(owner("c2")), now);
    assert_ne!(a.revision(), taken + 1, "bound, then released");
}
