//! `--policy-demo` (kubernetes registry): NetworkPolicy enforced by the agents, shown in
//! three ping matrices. The lab's pods get Pod objects (label `app=<pod name>`, their
//! node, their IP, as a kubelet would report them), then namespace `default` gets a
//! deny-all ingress policy, then a policy admitting `app=sleep-1`.

use anyhow::{anyhow, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use twill_tests::cluster::{Cluster, ClusterPod};
use twill_tests::kube::ControlPlane;

const NAMESPACE: &str = "default";
/// How long the agents may take to enforce a change in every cell.
const BOUND: Duration = Duration::from_secs(5);

const DENY_ALL: &str = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "deny-all", "namespace": "default"},
 "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}"#;
const ALLOW_SLEEP_1: &str = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "allow-from-sleep-1", "namespace": "default"},
 "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "sleep-1"}}}]}]}}"#;

/// Runs the demo; false when a matrix did not become what the policies say in time.
/// With `keep` the policies stay for exploring.
pub fn run(c: &Cluster, cp: &ControlPlane, pods: &[ClusterPod], keep: bool) -> Result<bool> {
    for p in pods {
        register(cp, p, &c.nodes[p.node].name)?;
    }
    let mut ok = show(pods, "no policy: every pod answers every pod", |_, _| true)?;
    kubectl(cp, &["apply", "-f", "-"], Some(DENY_ALL))?;
    ok &= show(pods, "deny-all (ingress) in namespace default", |_, _| {
        false
    })?;
    kubectl(cp, &["apply", "-f", "-"], Some(ALLOW_SLEEP_1))?;
    ok &= show(pods, "deny-all + allow-from-sleep-1", |from, _| {
        from == "sleep-1"
    })?;
    if keep {
        println!("  the policies stay (--keep): kubectl get networkpolicy; twill-agent status");
        return Ok(ok);
    }
    kubectl(
        cp,
        &["-n", NAMESPACE, "delete", "networkpolicy", "--all"],
        None,
    )?;
    ok &= show(pods, "policies deleted", |_, _| true)?;
    // No kubelet confirms a bound pod's graceful end here: without --force, kubectl
    // waits for ever.
    for p in pods {
        let args = [
            "-n",
            NAMESPACE,
            "delete",
            "pod",
            &p.name,
            "--grace-period=0",
            "--force",
        ];
        kubectl(cp, &args, None)?;
    }
    Ok(ok)
}

/// The Pod object of a lab pod, with its IP set through the status subresource.
fn register(cp: &ControlPlane, p: &ClusterPod, node: &str) -> Result<()> {
    cp.create_pod(
        NAMESPACE,
        &p.name,
        node,
        &json!({"app": p.name}),
        &json!([]),
    )
    .and_then(|()| cp.set_pod_ips(NAMESPACE, &p.name, &[&p.ip]))
    .map_err(|e| anyhow!(e))
}

fn kubectl(cp: &ControlPlane, args: &[&str], input: Option<&str>) -> Result<()> {
    cp.kubectl_result(args, input)
        .map(drop)
        .map_err(|e| anyhow!(e))
}

/// Polls the ping matrix until it is what `expect(from, to)` says or [`BOUND`] passes,
/// then prints it with the time it took; false on a timeout.
fn show(pods: &[ClusterPod], title: &str, expect: impl Fn(&str, &str) -> bool) -> Result<bool> {
    let started = Instant::now();
    let (seen, matched) = loop {
        let seen = matrix(pods);
        let matched = seen.iter().all(|(from, to, ok)| *ok == expect(from, to));
        if matched || started.elapsed() > BOUND {
            break (seen, matched);
        }
    };
    println!(
        "\n{title}: {} after {:.2}s",
        if matched {
            "as expected"
        } else {
            "NOT as expected"
        },
        started.elapsed().as_secs_f64()
    );
    print!("{:<10}", "");
    for p in pods {
        print!(" {:<8}", p.name);
    }
    println!();
    for from in pods {
        print!("{:<10}", from.name);
        for to in pods {
            let cell = match seen
                .iter()
                .find(|(f, t, _)| *f == from.name && *t == to.name)
            {
                None => "-",
                Some((_, _, true)) => "OK",
                Some((_, _, false)) if expect(&from.name, &to.name) => "FAIL",
                Some((_, _, false)) => "denied",
            };
            print!(" {cell:<8}");
        }
        println!();
    }
    Ok(matched)
}

/// One ping per ordered pair of different pods, all at once: (from, to, answered).
fn matrix(pods: &[ClusterPod]) -> Vec<(String, String, bool)> {
    std::thread::scope(|s| {
        let probes: Vec<_> = pods
            .iter()
            .flat_map(|from| pods.iter().map(move |to| (from, to)))
            .filter(|(from, to)| from.name != to.name)
            .map(|(from, to)| {
                s.spawn(move || {
                    let out = from.ns.run(&["ping", "-c", "1", "-W", "1", &to.ip]);
                    (from.name.clone(), to.name.clone(), out.status.success())
                })
            })
            .collect();
        probes
            .into_iter()
            .filter_map(|h| h.join().ok())
            .collect::<Vec<_>>()
    })
}
