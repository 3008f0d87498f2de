//! No unprotected window for a new pod (issue 12): under a default-deny ingress policy a
//! new pod never answers a connection, from the moment its interface has an address,
//! although the kubelet writes its `status.podIPs` only after ADD returns.
//!
//! As a kubelet does it: the Pod object (labels, nodeName, no IP) exists before ADD, and
//! ADD gets `K8S_POD_NAMESPACE`/`K8S_POD_NAME` in CNI_ARGS. The pod's TCP listener is
//! bound before ADD; a watcher in the pod's namespace spots the address the moment it is
//! set, and probers in a pod of the same node and of the other node then connect in a
//! tight loop until well after ADD returned. The node itself (always allowed) probes too,
//! so that the loop is shown able to connect.

use serde_json::json;
use std::ffi::CStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twill_netlink::NetNs;
use twill_tests::cluster::{Cluster, ClusterSpec, RegistryKind};
use twill_tests::kube::ControlPlane;
use twill_tests::netns::{next_id, Netns};
use twill_tests::scenarios::TcpServer;
use twill_tests::{require_root, CniCall, Plugin};

const PORT: u16 = 8080;
/// How long the probers go on after ADD returned.
const AFTER_ADD: Duration = Duration::from_secs(2);

fn logs(c: &Cluster) -> String {
    c.log_tails(20)
}

/// The IPv4 address of `eth0` in the calling thread's namespace, if it has one.
fn eth0_address() -> Option<Ipv4Addr> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below; entries are read only before that.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return None;
        }
        let mut found = None;
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                && CStr::from_ptr(ifa.ifa_name).to_bytes() == b"eth0"
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            cur = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
        found
    }
}

/// Runs `f` on a new thread inside the namespace at `path`.
fn spawn_in<T: Send + 'static>(
    path: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::spawn(move || {
        let ns = NetNs::open(Path::new(&path)).unwrap_or_else(|e| panic!("{e}"));
        ns.run(f).unwrap_or_else(|e| panic!("{e}"))
    })
}

/// What one prober saw: attempts and the ones that connected.
#[derive(Debug, Default)]
struct Probed {
    attempts: u64,
    connected: u64,
    first_connect: Option<Duration>,
}

/// A new pod's ADD under watch: listener first, then ADD while probers connect.
struct Admitted {
    ip: Ipv4Addr,
    add_took: Duration,
    /// Per prober name.
    probed: Vec<(String, Probed)>,
}

fn add_under_probes(
    c: &Cluster,
    node: usize,
    namespace: &str,
    name: &str,
    probers: &[(&str, String)],
) -> Admitted {
    let pod_ns = Netns::new(&format!("p{}", next_id()));
    pod_ns.ip(&["link", "set", "lo", "up"]);
    let _server = TcpServer::start(&pod_ns, name, ([0, 0, 0, 0], PORT).into())
        .unwrap_or_else(|e| panic!("{e}"));
    let target: Arc<Mutex<Option<Ipv4Addr>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let watcher = {
        let (target, stop) = (target.clone(), stop.clone());
        spawn_in(pod_ns.path(), move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(ip) = eth0_address() {
                    *target.lock().expect("lock") = Some(ip);
                    return;
                }
            }
        })
    };
    let threads: Vec<(String, JoinHandle<Probed>)> = probers
        .iter()
        .map(|(who, path)| {
            let (target, stop) = (target.clone(), stop.clone());
            let handle = spawn_in(path.clone(), move || {
                let mut p = Probed::default();
                while !stop.load(Ordering::Relaxed) {
                    let Some(ip) = *target.lock().expect("lock") else {
                        std::hint::spin_loop();
                        continue;
                    };
                    p.attempts += 1;
                    let to = SocketAddr::new(IpAddr::V4(ip), PORT);
                    if TcpStream::connect_timeout(&to, Duration::from_millis(50)).is_ok() {
                        p.connected += 1;
                        p.first_connect.get_or_insert(start.elapsed());
                    }
                }
                p
            });
            (who.to_string(), handle)
        })
        .collect();

    let n = &c.nodes[node];
    let list = n.conflist().expect("conflist");
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let mut call = CniCall::new("ADD", &conf).container(
        &format!("{name}-{}", next_id()),
        &pod_ns.path(),
        "eth0",
    );
    call.args = Some(format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"
    ));
    let out = Plugin::new(&n.ns).call(&call);
    let add_took = start.elapsed();
    let added_at = Instant::now();
    while added_at.elapsed() < AFTER_ADD && out.success() {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    let probed = threads
        .into_iter()
        .map(|(who, h)| (who, h.join().expect("prober")))
        .collect();
    assert!(
        out.success(),
        "ADD of {name}: {} {}\n{}",
        out.stdout,
        out.stderr,
        logs(c)
    );
    let ip = target
        .lock()
        .expect("lock")
        .unwrap_or_else(|| panic!("the watcher never saw {name}'s address"));
    // The pod stays (its namespace is dropped with this scope: DEL is not needed for
    // the verdict; the cluster's teardown removes the node namespaces).
    Admitted {
        ip,
        add_took,
        probed,
    }
}

fn check(c: &Cluster, name: &str, a: &Admitted) {
    println!("{name} ({}): ADD took {:?}", a.ip, a.add_took);
    for (who, p) in &a.probed {
        println!(
            "  {who}: {} attempts, {} connected, first at {:?}",
            p.attempts, p.connected, p.first_connect
        );
        assert!(p.attempts > 0, "{who} never probed {name}");
    }
    let node = a.probed.iter().find(|(who, _)| who == "node");
    assert!(
        node.is_some_and(|(_, p)| p.connected > 0),
        "the node (always allowed) never reached {name}: the probe is broken\n{}",
        logs(c)
    );
    for (who, p) in a.probed.iter().filter(|(who, _)| who != "node") {
        assert_eq!(
            p.connected,
            0,
            "{who} reached {name} under default deny (first at {:?}, ADD took {:?})\n{}",
            p.first_connect,
            a.add_took,
            logs(c)
        );
    }
}

#[test]
fn a_new_pod_under_default_deny_is_never_open() {
    require_root();
    let mut c = Cluster::new(ClusterSpec {
        nodes: 2,
        segments: 1,
        registry: RegistryKind::Kubernetes,
        ..ClusterSpec::default()
    });
    let cp = ControlPlane::for_cluster(&c).unwrap_or_else(|e| panic!("{e}"));
    c.start_all();
    if let Err(e) = c.wait_ready(Duration::from_secs(60)) {
        panic!("{e}\n{}", logs(&c));
    }
    cp.kubectl_ok(&["create", "namespace", "px"], None);
    let deny = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "px", "name": "deny-ingress"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    });
    cp.kubectl_ok(&["create", "-f", "-"], Some(&deny.to_string()));
    let near = c.add_pod(0, "near").unwrap_or_else(|e| panic!("{e}"));
    let far = c.add_pod(1, "far").unwrap_or_else(|e| panic!("{e}"));
    let probers = [
        ("same-node pod", near.ns.path()),
        ("other-node pod", far.ns.path()),
        ("node", c.nodes[0].ns.path()),
    ];
    // The policy is in force once the status says so (the first table is applied).
    let applied = twill_tests::cluster::wait_until(Duration::from_secs(10), || {
        c.nodes[0]
            .status()
            .is_some_and(|s| s["networkPolicy"]["policies"] == 1)
    });
    assert!(applied, "node-1 never took the policy\n{}", logs(&c));

    // 1. A pod whose object the API server has (no IP yet), as before a kubelet's ADD.
    let labels = json!({"role": "server"});
    cp.create_pod("px", "fresh", &c.nodes[0].name, &labels, &json!([]))
        .unwrap_or_else(|e| panic!("{e}"));
    let fresh = add_under_probes(&c, 0, "px", "fresh", &probers);
    check(&c, "fresh", &fresh);

    // 2. A pod the agent never saw an object of: isolated as its namespace says.
    let ghost = add_under_probes(&c, 0, "px", "ghost", &probers);
    check(&c, "ghost", &ghost);
    let status = c.nodes[0].status().expect("status");
    let row = status["networkPolicy"]["pods"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "ghost"))
        .cloned();
    println!("ghost's status row: {row:?}");
}
