//! Bad inputs: every one fails with its CNI error code and a message naming what is
//! wrong, prints nothing but the error object on stdout, and leaves the node, the pods
//! and the address store exactly as they were.

use serde_json::{json, Value};
use twill_ipam::Reservation;
use twill_tests::fixture::{
    assert_cni_error, in_subnet, ip_of, result_address, ALL_VERSIONS, DEFAULT_SUBNET,
};
use twill_tests::{CniCall, ConfExt, Node, Pod};

struct Case {
    name: &'static str,
    call: CniCall,
    code: u64,
    /// What the message must mention (the variable, the key, the file...).
    needle: String,
}

fn case(name: &'static str, call: CniCall, code: u64, needle: impl Into<String>) -> Case {
    Case {
        name,
        call,
        code,
        needle: needle.into(),
    }
}

/// A node with one live pod (so that the bridge, a host veth and a reservation exist and
/// must survive every bad call), and a fresh pod namespace the bad calls aim at.
struct Bench {
    node: Node,
    conf: Value,
    bystander: Pod,
    prev: Value,
    victim: Pod,
}

impl Bench {
    fn new(label: &str) -> Bench {
        let node = Node::new(label);
        // Debug logging: whatever the plugin logs must go to stderr, never stdout.
        let conf = node.conf("1.1.0").with("logLevel", json!("debug"));
        let bystander = Pod::new("bystander");
        let prev = node.add_ok(&conf, &bystander);
        let victim = Pod::new("victim");
        Bench {
            node,
            conf,
            bystander,
            prev,
            victim,
        }
    }

    /// A call on the victim pod.
    fn call(&self, command: &str, conf: &Value) -> CniCall {
        self.victim.call(command, conf)
    }

    /// What no bad call may change: the node, both pods and the store.
    fn state(&self) -> (String, String, String, Vec<Reservation>) {
        (
            self.node.ns.snapshot(),
            self.victim.ns.snapshot(),
            self.bystander.ns.snapshot(),
            self.node.reservations(),
        )
    }

    fn run(&self, cases: Vec<Case>) {
        let before = self.state();
        assert_eq!(
            before.3.len(),
            1,
            "the bystander's reservation: {:?}",
            before.3
        );
        let mut names = std::collections::BTreeSet::new();
        for c in &cases {
            assert!(names.insert(c.name), "two cases named {}", c.name);
            let out = self.node.call(&c.call);
            let err = std::panic::catch_unwind(|| assert_cni_error(&out, c.code, &c.needle))
                .unwrap_or_else(|_| panic!("case {:?}: wrong failure (see above)", c.name));
            // The error speaks the version the runtime asked for, when it is one we speak.
            if let Ok(conf) = serde_json::from_slice::<Value>(&c.call.stdin) {
                if let Some(v) = conf["cniVersion"].as_str() {
                    if ALL_VERSIONS.contains(&v) {
                        assert_eq!(err["cniVersion"], v, "case {:?}: {err}", c.name);
                    }
                }
            }
            let after = self.state();
            assert_eq!(after.0, before.0, "case {:?} changed the node", c.name);
            assert_eq!(after.1, before.1, "case {:?} changed the pod", c.name);
            assert_eq!(after.2, before.2, "case {:?} changed the live pod", c.name);
            assert_eq!(after.3, before.3, "case {:?} changed the store", c.name);
        }
        self.node.verify_store();
        // The live pod is still fine.
        assert_eq!(
            self.node
                .check(&self.conf, &self.bystander, &self.prev)
                .code,
            Some(0),
            "the live pod drifted"
        );
        eprintln!("{} bad inputs rejected cleanly", cases.len());
    }
}

#[test]
fn bad_environment_is_rejected_and_changes_nothing() {
    let b = Bench::new("errenv");
    let conf = &b.conf;
    let add = || b.call("ADD", conf);
    // ADD with one variable changed: code 4, and the message names the variable.
    let bad_var = |name, var: &str, value: Option<&str>| case(name, add().env(var, value), 4, var);
    let missing_netns = b.node.dir.path().join("no-such-netns");
    let regular_file = b.node.dir.path().join("regular-file");
    std::fs::write(&regular_file, "not a namespace").unwrap();
    let check_conf = conf.with("prevResult", b.prev.clone());

    let cases = vec![
        bad_var("missing CNI_COMMAND", "CNI_COMMAND", None),
        case("unknown CNI_COMMAND", b.call("PUT", conf), 4, "CNI_COMMAND"),
        case(
            "lower-case CNI_COMMAND",
            b.call("add", conf),
            4,
            "CNI_COMMAND",
        ),
        bad_var("missing CNI_CONTAINERID", "CNI_CONTAINERID", None),
        bad_var("empty CNI_CONTAINERID", "CNI_CONTAINERID", Some("")),
        bad_var(
            "CNI_CONTAINERID starting with '-'",
            "CNI_CONTAINERID",
            Some("-abc"),
        ),
        bad_var(
            "CNI_CONTAINERID with '/'",
            "CNI_CONTAINERID",
            Some("a/../b"),
        ),
        case(
            "DEL without CNI_CONTAINERID",
            b.call("DEL", conf).env("CNI_CONTAINERID", None),
            4,
            "CNI_CONTAINERID",
        ),
        bad_var("missing CNI_IFNAME", "CNI_IFNAME", None),
        bad_var(
            "CNI_IFNAME of 16 bytes",
            "CNI_IFNAME",
            Some("eth0123456789012"),
        ),
        bad_var("CNI_IFNAME with '/'", "CNI_IFNAME", Some("et/h0")),
        bad_var("CNI_IFNAME '..'", "CNI_IFNAME", Some("..")),
        bad_var("CNI_IFNAME with a space", "CNI_IFNAME", Some("eth 0")),
        bad_var("missing CNI_NETNS on ADD", "CNI_NETNS", None),
        bad_var("empty CNI_NETNS on ADD", "CNI_NETNS", Some("")),
        case(
            "missing CNI_NETNS on CHECK",
            b.call("CHECK", &check_conf).env("CNI_NETNS", None),
            4,
            "CNI_NETNS",
        ),
        bad_var("relative CNI_NETNS", "CNI_NETNS", Some("run/netns/x")),
        case(
            "CNI_NETNS that does not exist",
            add().env("CNI_NETNS", Some(missing_netns.to_str().unwrap())),
            3,
            "CNI_NETNS",
        ),
        bad_var(
            "CNI_NETNS that is a regular file",
            "CNI_NETNS",
            Some(regular_file.to_str().unwrap()),
        ),
        bad_var(
            "CNI_NETNS that is a directory",
            "CNI_NETNS",
            Some(b.node.dir.path().to_str().unwrap()),
        ),
        bad_var("CNI_ARGS without '='", "CNI_ARGS", Some("K8S_POD_NAME")),
        bad_var(
            "CNI_ARGS with an empty key",
            "CNI_ARGS",
            Some("IgnoreUnknown=1;=x"),
        ),
    ];
    b.run(cases);
}

#[test]
fn bad_config_is_rejected_and_changes_nothing() {
    let b = Bench::new("errconf");
    let conf = &b.conf;
    let add = |c: &Value| b.call("ADD", c);
    // ADD with one key changed: code 7, and the message names the key.
    let bad_key = |name, key: &str, value: Value| case(name, add(&conf.with(key, value)), 7, key);
    let raw = |bytes: &str| b.call("ADD", conf).stdin(bytes.as_bytes());
    let no_file = conf.without("subnet");
    let file = b.node.subnet_file().display().to_string();
    let garbage = b.node.dir.path().join("garbage-subnet.json");
    std::fs::write(&garbage, "{\"subnets\": [").unwrap();
    let garbage_conf = no_file.with("subnetFile", json!(garbage));
    let check_conf = conf.with("prevResult", b.prev.clone());
    let gc_conf = conf.clone();
    let gc = |c: &Value| CniCall::new("GC", c);

    let cases = vec![
        case(
            "broken JSON",
            raw("{\"cniVersion\": \"1.1.0\", \"name\":"),
            6,
            "JSON",
        ),
        case("empty stdin", raw(""), 6, "JSON"),
        case("config is a list", raw("[1, 2]"), 7, "object"),
        case("config is a string", raw("\"twill\""), 7, "object"),
        case(
            "missing cniVersion",
            add(&conf.without("cniVersion")),
            7,
            "cniVersion",
        ),
        bad_key("cniVersion is a number", "cniVersion", json!(1)),
        case(
            "cniVersion 0.2.0",
            add(&conf.with("cniVersion", json!("0.2.0"))),
            1,
            "0.2.0",
        ),
        case(
            "cniVersion 9.9.9",
            add(&conf.with("cniVersion", json!("9.9.9"))),
            1,
            "9.9.9",
        ),
        case(
            "cniVersions with 0.2.0",
            add(&conf.with("cniVersions", json!(["1.1.0", "0.2.0"]))),
            1,
            "cniVersions",
        ),
        case("missing name", add(&conf.without("name")), 7, "name"),
        bad_key("name with '/'", "name", json!("a/b")),
        bad_key("mtu as a string", "mtu", json!("1500")),
        bad_key("mtu too small", "mtu", json!(20)),
        bad_key("mtu too large", "mtu", json!(70000)),
        bad_key("negative mtu", "mtu", json!(-1)),
        bad_key("hairpinMode as a string", "hairpinMode", json!("yes")),
        bad_key("isolatePorts as a string", "isolatePorts", json!("true")),
        bad_key("subnet as a number", "subnet", json!(42)),
        bad_key("subnet /33", "subnet", json!("10.244.1.0/33")),
        bad_key("subnet not a CIDR", "subnet", json!("10.244.1.0")),
        bad_key("subnet with host bits", "subnet", json!("10.244.1.5/24")),
        bad_key(
            "subnet too small for a pod",
            "subnet",
            json!("10.244.1.0/31"),
        ),
        bad_key("gateway outside the subnet", "gateway", json!("10.9.0.1")),
        bad_key(
            "gateway is the broadcast address",
            "gateway",
            json!("10.244.1.255"),
        ),
        case(
            "gateway without subnet",
            add(&no_file.with("gateway", json!("10.244.1.1"))),
            7,
            "gateway",
        ),
        bad_key(
            "bridge name too long",
            "bridge",
            json!("a-very-long-bridge-name"),
        ),
        bad_key("bridge name with '/'", "bridge", json!("br/0")),
        case(
            "routes entry with a bad dst",
            add(&conf.with("routes", json!([{"dst": "nope"}]))),
            7,
            "routes[0].dst",
        ),
        case(
            "routes entry without dst",
            add(&conf.with(
                "routes",
                json!([{"dst": "10.96.0.0/12"}, {"gw": "10.244.1.1"}]),
            )),
            7,
            "routes[1].dst",
        ),
        case(
            "routes entry of mixed families",
            add(&conf.with("routes", json!([{"dst": "fd00::/64", "gw": "10.244.1.1"}]))),
            7,
            "routes[0].gw",
        ),
        bad_key("routes not a list", "routes", json!("10.96.0.0/12")),
        bad_key("empty dataDir", "dataDir", json!("")),
        bad_key("unknown logLevel", "logLevel", json!("loud")),
        case(
            "no subnet and no subnet file",
            add(&no_file),
            11,
            file.as_str(),
        ),
        case(
            "unreadable subnet file",
            add(&garbage_conf),
            7,
            garbage.display().to_string(),
        ),
        case(
            "CHECK with 0.3.1",
            b.call("CHECK", &check_conf.with("cniVersion", json!("0.3.1"))),
            1,
            "CHECK",
        ),
        case(
            "CHECK with 0.3.0",
            b.call("CHECK", &check_conf.with("cniVersion", json!("0.3.0"))),
            1,
            "CHECK",
        ),
        case(
            "CHECK without prevResult",
            b.call("CHECK", conf),
            7,
            "prevResult",
        ),
        case(
            "CHECK with a prevResult that is not an object",
            b.call("CHECK", &conf.with("prevResult", json!([1]))),
            7,
            "prevResult",
        ),
        case(
            "CHECK with a prevResult of a bad address",
            b.call(
                "CHECK",
                &conf.with(
                    "prevResult",
                    json!({"cniVersion": "1.1.0", "ips": [{"address": "x"}]}),
                ),
            ),
            6,
            "ips[0].address",
        ),
        case(
            "GC without the attachments key",
            gc(&gc_conf),
            7,
            "cni.dev/valid-attachments",
        ),
        case(
            "GC with attachments not a list",
            gc(&gc_conf.with("cni.dev/valid-attachments", json!({}))),
            7,
            "cni.dev/valid-attachments",
        ),
        case(
            "GC attachment without containerID",
            gc(&gc_conf.with("cni.dev/valid-attachments", json!([{"ifname": "eth0"}]))),
            7,
            "containerID",
        ),
        case(
            "GC with 1.0.0",
            gc(&gc_conf.with("cniVersion", json!("1.0.0"))),
            1,
            "GC",
        ),
        case(
            "STATUS with 0.4.0",
            CniCall::new("STATUS", &conf.with("cniVersion", json!("0.4.0"))),
            1,
            "STATUS",
        ),
    ];
    b.run(cases);
}

#[test]
fn kernel_failures_after_the_reservation_are_rolled_back() {
    // These fail only once the address is reserved (and, for the route, once the veth
    // exists and the pod has its address): ADD must undo all of it.
    let b = Bench::new("errkern");
    let cases = vec![
        // The pod has `lo`: the pod end of the veth cannot get that name.
        case(
            "CNI_IFNAME the pod already has",
            b.call("ADD", &b.conf).env("CNI_IFNAME", Some("lo")),
            999,
            "lo",
        ),
        // A route whose gateway the pod cannot reach.
        case(
            "route via an unreachable gateway",
            b.call(
                "ADD",
                &b.conf.with(
                    "routes",
                    json!([{"dst": "10.96.0.0/12", "gw": "192.168.99.1"}]),
                ),
            ),
            999,
            "10.96.0.0/12",
        ),
    ];
    b.run(cases);
}

#[test]
fn an_exhausted_subnet_fails_with_100_and_changes_nothing() {
    // A /30 has one address for pods.
    let node = Node::new("full-node");
    let subnet = "10.244.9.0/30";
    let conf = node.conf("1.0.0").with("subnet", json!(subnet));
    let first = Pod::new("full-a");
    let r = node.add_ok(&conf, &first);
    let taken = ip_of(&result_address(&r));
    assert!(in_subnet(taken, subnet));
    assert!(!in_subnet(taken, DEFAULT_SUBNET));

    let second = Pod::new("full-b");
    let before = (
        node.ns.snapshot(),
        second.ns.snapshot(),
        node.reservations(),
    );
    let out = node.add(&conf, &second);
    let err = assert_cni_error(&out, 100, subnet);
    let msg = err["msg"].as_str().unwrap();
    assert!(
        msg.contains("1 of 1"),
        "the message must give the count: {msg}"
    );
    assert_eq!(err["cniVersion"], "1.0.0");
    assert_eq!(node.ns.snapshot(), before.0, "failed ADD changed the node");
    assert_eq!(second.ns.snapshot(), before.1, "failed ADD changed the pod");
    assert_eq!(
        node.reservations(),
        before.2,
        "failed ADD changed the store"
    );
    node.verify_store();

    // Once the first pod is gone, its address serves the second.
    node.del_ok(&conf, &first);
    let r2 = node.add_ok(&conf, &second);
    assert_eq!(ip_of(&result_address(&r2)), taken);
    node.del_ok(&conf, &second);
    node.assert_empty();
}
