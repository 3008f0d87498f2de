//! The pure store: watch events in, clusters out.

use serde_json::{json, Value};
use twill_policy::Kind;

use super::store::{ClusterStore, NodeIps, WatchEvent};

fn pod(namespace: &str, name: &str, app: &str, ip: Option<&str>) -> Value {
    let mut pod = json!({
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": app}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
    });
    if let Some(ip) = ip {
        pod["status"] = json!({"phase": "Running", "podIPs": [{"ip": ip}]});
    }
    pod
}

fn namespace(name: &str, team: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"team": team}}})
}

fn policy(namespace: &str, name: &str, cidr: &str) -> Value {
    json!({
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]},
    })
}

/// A store with each kind listed from `objects`.
fn listed(policies: &[Value], pods: &[Value], namespaces: &[Value]) -> ClusterStore {
    let mut store = ClusterStore::default();
    for (kind, objects) in [
        (Kind::NetworkPolicy, policies),
        (Kind::Pod, pods),
        (Kind::Namespace, namespaces),
    ] {
        store.apply(kind, WatchEvent::ListStart);
        for object in objects {
            store.apply(kind, WatchEvent::Listed(object.clone()));
        }
        store.apply(kind, WatchEvent::ListDone);
    }
    store
}

fn pod_names(store: &ClusterStore) -> Vec<String> {
    store
        .cluster()
        .pods
        .iter()
        .map(|p| p.name.clone())
        .collect()
}

#[test]
fn synced_only_once_all_three_kinds_are_listed() {
    let mut store = ClusterStore::default();
    assert!(!store.synced());
    store.apply(Kind::NetworkPolicy, WatchEvent::ListStart);
    assert!(store.apply(Kind::NetworkPolicy, WatchEvent::ListDone));
    store.apply(Kind::Pod, WatchEvent::ListStart);
    store.apply(Kind::Pod, WatchEvent::ListDone);
    assert!(!store.synced(), "namespaces are not listed yet");
    store.apply(Kind::Namespace, WatchEvent::ListStart);
    store.apply(
        Kind::Namespace,
        WatchEvent::Listed(namespace("default", "a")),
    );
    assert!(store.namespaces.is_empty(), "a list lands only when done");
    assert!(store.apply(Kind::Namespace, WatchEvent::ListDone));
    assert!(store.synced());
    assert_eq!(store.cluster().namespaces.len(), 1);
}

#[test]
fn updates_report_a_change_only_when_the_parsed_object_changes() {
    let mut store = listed(&[], &[pod("default", "a", "web", None)], &[]);
    let cluster = store.cluster();
    assert!(cluster.pods[0].ips.is_empty());

    let with_ip = pod("default", "a", "web", Some("10.244.1.5"));
    assert!(store.apply(Kind::Pod, WatchEvent::Applied(with_ip.clone())));
    assert_eq!(
        store.cluster().pods[0].ips,
        vec!["10.244.1.5".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(
        !store.apply(Kind::Pod, WatchEvent::Applied(with_ip.clone())),
        "the same object again"
    );
    // A field the model does not keep (an annotation) changes nothing.
    let mut annotated = with_ip;
    annotated["metadata"]["annotations"] = json!({"note": "x"});
    assert!(!store.apply(Kind::Pod, WatchEvent::Applied(annotated)));

    let relabelled = pod("default", "a", "db", Some("10.244.1.5"));
    assert!(store.apply(Kind::Pod, WatchEvent::Applied(relabelled)));
    assert_eq!(store.cluster().pods[0].labels["app"], "db");
}

#[test]
fn deletes_remove_by_key_and_unknown_keys_change_nothing() {
    let mut store = listed(
        &[policy("default", "p", "10.0.0.0/8")],
        &[
            pod("default", "a", "web", None),
            pod("other", "a", "web", None),
        ],
        &[namespace("default", "a")],
    );
    assert!(store.apply(Kind::Pod, WatchEvent::Deleted(("other".into(), "a".into()))));
    assert_eq!(pod_names(&store), ["a"]);
    assert_eq!(store.cluster().pods[0].namespace, "default");
    assert!(!store.apply(Kind::Pod, WatchEvent::Deleted(("other".into(), "a".into()))));
    assert!(store.apply(
        Kind::NetworkPolicy,
        WatchEvent::Deleted(("default".into(), "p".into()))
    ));
    assert!(store.apply(
        Kind::Namespace,
        WatchEvent::Deleted((String::new(), "default".into()))
    ));
    let cluster = store.cluster();
    assert!(cluster.policies.is_empty() && cluster.namespaces.is_empty());
}

#[test]
fn a_rejected_policy_is_reported_fails_closed_and_clears_when_fixed() {
    let mut store = listed(
        &[
            policy("default", "good", "10.0.0.0/8"),
            policy("default", "bad", "not-a-cidr"),
        ],
        &[],
        &[],
    );
    let cluster = store.cluster();
    // The bad one fails closed: its stand-in isolates ingress, allowing nothing.
    let names: Vec<&str> = cluster.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["bad", "good"]);
    let stand_in = &cluster.policies[0];
    assert!(stand_in.isolates_ingress && !stand_in.isolates_egress);
    assert!(stand_in.ingress.is_empty() && stand_in.egress.is_empty());
    assert_eq!(cluster.rejected.len(), 1);
    assert_eq!(cluster.rejected[0].isolating.as_ref(), Some(stand_in));
    let rejected = &cluster.rejected[0];
    assert_eq!(
        (
            rejected.kind,
            rejected.namespace.as_str(),
            rejected.name.as_str()
        ),
        (Kind::NetworkPolicy, "default", "bad")
    );
    assert!(
        rejected.error.to_string().contains("cidr"),
        "{}",
        rejected.error
    );

    assert!(store.apply(
        Kind::NetworkPolicy,
        WatchEvent::Applied(policy("default", "bad", "192.168.0.0/16"))
    ));
    let cluster = store.cluster();
    assert_eq!(cluster.policies.len(), 2);
    assert!(cluster.rejected.is_empty());
}

#[test]
fn a_relist_replaces_the_store_at_once_and_drops_what_is_gone() {
    let mut store = listed(
        &[],
        &[
            pod("default", "a", "web", None),
            pod("default", "b", "web", None),
        ],
        &[],
    );
    // After a lost watch: the old objects stay until the new list is complete.
    store.apply(Kind::Pod, WatchEvent::ListStart);
    store.apply(
        Kind::Pod,
        WatchEvent::Listed(pod("default", "b", "web", None)),
    );
    store.apply(
        Kind::Pod,
        WatchEvent::Listed(pod("default", "c", "web", None)),
    );
    assert_eq!(pod_names(&store), ["a", "b"]);
    assert!(store.apply(Kind::Pod, WatchEvent::ListDone));
    assert_eq!(pod_names(&store), ["b", "c"], "a was deleted meanwhile");

    // The same list again is no change.
    store.apply(Kind::Pod, WatchEvent::ListStart);
    for name in ["b", "c"] {
        store.apply(
            Kind::Pod,
            WatchEvent::Listed(pod("default", name, "web", None)),
        );
    }
    assert!(!store.apply(Kind::Pod, WatchEvent::ListDone));
}

#[test]
fn objects_without_a_name_are_ignored() {
    let mut store = listed(&[], &[], &[]);
    assert!(!store.apply(
        Kind::Namespace,
        WatchEvent::Applied(json!({"metadata": {}}))
    ));
    assert!(store.cluster().rejected.is_empty());
}

#[test]
fn node_ips_are_the_callers_and_reach_the_cluster() {
    let mut store = listed(&[], &[], &[]);
    let ips = NodeIps::from([("node-1".to_string(), vec!["192.168.1.1".parse().unwrap()])]);
    assert!(store.set_node_ips(ips.clone()));
    assert!(!store.set_node_ips(ips.clone()));
    assert_eq!(store.cluster().node_ips, ips);
}

#[test]
fn the_cluster_is_in_key_order_whatever_the_event_order() {
    let mut forward = listed(&[], &[], &[]);
    let mut backward = listed(&[], &[], &[]);
    let pods: Vec<Value> = ["c", "a", "b"]
        .iter()
        .map(|name| pod("default", name, "web", None))
        .collect();
    for p in &pods {
        forward.apply(Kind::Pod, WatchEvent::Applied(p.clone()));
    }
    for p in pods.iter().rev() {
        backward.apply(Kind::Pod, WatchEvent::Applied(p.clone()));
    }
    assert_eq!(pod_names(&forward), ["a", "b", "c"]);
    assert_eq!(pod_names(&forward), pod_names(&backward));
}
