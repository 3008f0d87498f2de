//! The plugin's commands end to end, each run the way a runtime runs it: inside a node
//! namespace, for pods that are namespaces of their own.

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use twill_tests::fixture::{
    assert_cni_error, assert_result_json, assert_silent_success, in_subnet, ip_of, reaches,
    result_address, routes, wait_for, ALL_VERSIONS, DEFAULT_BRIDGE, DEFAULT_SUBNET,
};
use twill_tests::{sh, CniCall, ConfExt, Node, Pod};

/// The gateway of an ADD result (ips[0].gateway).
fn gateway(result: &Value) -> String {
    result["ips"][0]["gateway"]
        .as_str()
        .unwrap_or_else(|| panic!("result without a gateway: {result}"))
        .to_string()
}

/// The prefix length of a CIDR.
fn prefix_len(cidr: &str) -> &str {
    cidr.split_once('/').map(|(_, l)| l).unwrap_or("")
}

#[test]
fn add_check_del_round_trip() {
    let node = Node::new("rt-node");
    let conf = node.conf("1.0.0");
    let p1 = Pod::new("rt-a");
    let p2 = Pod::new("rt-b");

    let r1 = node.add_ok(&conf, &p1);
    let r2 = node.add_ok(&conf, &p2);
    let (a1, a2) = (result_address(&r1), result_address(&r2));
    assert_ne!(a1, a2, "two pods got the same address");
    assert!(in_subnet(ip_of(&a1), DEFAULT_SUBNET) && in_subnet(ip_of(&a2), DEFAULT_SUBNET));

    // What the result says is what the kernel and the store hold.
    assert_eq!(p1.ipv4(), vec![a1.clone()]);
    assert_eq!(p2.ipv4(), vec![a2.clone()]);
    assert_eq!(node.lookup(&p1), vec![ip_of(&a1)]);
    assert_eq!(node.lookup(&p2), vec![ip_of(&a2)]);
    let mut veths = vec![p1.host_veth(), p2.host_veth()];
    veths.sort();
    assert_eq!(node.host_veths(), veths);
    assert_eq!(r1["interfaces"][0]["name"], p1.host_veth());
    // The host veth says whose it is, for an operator reading `ip -d link`.
    let shown = node.ns.ip(&["-d", "link", "show", &p1.host_veth()]);
    assert!(
        shown.contains(&format!("alias twill:{}:eth0", p1.id)),
        "{shown}"
    );
    let gw = gateway(&r1);
    assert_eq!(gateway(&r2), gw);
    assert_eq!(
        node.bridge_ipv4(DEFAULT_BRIDGE),
        vec![format!("{gw}/{}", prefix_len(&a1))],
        "the bridge carries the gateway"
    );
    assert!(
        routes(&p1.ns).contains(&format!("default via {gw} dev eth0")),
        "{}",
        routes(&p1.ns)
    );

    // Node to pods, pods to each other, pods to their gateway.
    let (ip1, ip2) = (ip_of(&a1).to_string(), ip_of(&a2).to_string());
    assert!(reaches(&node.ns, &ip1), "node cannot ping pod 1 ({ip1})");
    assert!(reaches(&node.ns, &ip2), "node cannot ping pod 2 ({ip2})");
    assert!(reaches(&p1.ns, &ip2), "pod 1 cannot ping pod 2");
    assert!(reaches(&p2.ns, &ip1), "pod 2 cannot ping pod 1");
    assert!(reaches(&p1.ns, &gw), "pod 1 cannot ping its gateway");

    // CHECK with the ADD result as prevResult.
    assert_silent_success(&node.check(&conf, &p1, &r1), "CHECK of pod 1");
    assert_silent_success(&node.check(&conf, &p2, &r2), "CHECK of pod 2");

    // Drift: pod 1 loses its default route; pod 2 is not affected; repair heals.
    p1.ns.ip(&["route", "del", "default"]);
    assert_cni_error(&node.check(&conf, &p1, &r1), 101, "route to 0.0.0.0/0");
    assert_silent_success(&node.check(&conf, &p2, &r2), "CHECK of the untouched pod 2");
    p1.ns.ip(&["route", "add", "default", "via", &gw]);
    assert_silent_success(&node.check(&conf, &p1, &r1), "CHECK after the repair");

    // Drift: pod 1 loses its address.
    p1.ns.ip(&["addr", "del", &a1, "dev", "eth0"]);
    let err = assert_cni_error(&node.check(&conf, &p1, &r1), 101, &a1);
    assert!(err["msg"].as_str().unwrap().contains("eth0"), "{err}");

    // Drift: pod 2's interface goes down (IPv4 routes through it go with it).
    p2.ns.ip(&["link", "set", "eth0", "down"]);
    assert_cni_error(&node.check(&conf, &p2, &r2), 101, "down");
    p2.ns.ip(&["link", "set", "eth0", "up"]);
    assert_cni_error(&node.check(&conf, &p2, &r2), 101, "route to 0.0.0.0/0");
    p2.ns.ip(&["route", "add", "default", "via", &gw]);
    assert_silent_success(&node.check(&conf, &p2, &r2), "CHECK after the repair");

    // Drift: the host veth leaves the bridge.
    node.ns.ip(&["link", "set", &p2.host_veth(), "nomaster"]);
    assert_cni_error(&node.check(&conf, &p2, &r2), 101, &p2.host_veth());

    // Drift: the store no longer holds pod 2's address.
    node.with_store(|s| s.release(&p2.owner()).expect("release"));
    assert_cni_error(&node.check(&conf, &p2, &r2), 101, "address store");

    node.del_ok(&conf, &p1);
    node.del_ok(&conf, &p2);
    node.assert_empty();
    assert_eq!(p1.ns.links(), vec!["lo"]);
    assert_eq!(p2.ns.links(), vec!["lo"]);
}

#[test]
fn add_result_has_the_shape_of_each_cni_version() {
    let node = Node::new("ver-node");
    for v in ALL_VERSIONS {
        let pod = Pod::new("ver");
        let conf = node.conf(v);
        let r = node.add_ok(&conf, &pod);
        assert_eq!(r["cniVersion"], v, "{r}");

        let ifs = r["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifs.len(), 2, "{r}");
        let host = ifs
            .iter()
            .find(|i| i.get("sandbox").is_none())
            .unwrap_or_else(|| panic!("no host interface in {r}"));
        assert_eq!(host["name"], pod.host_veth(), "{r}");
        let host_link = node.ns.ip(&["-j", "link", "show", "dev", &pod.host_veth()]);
        let host_link: Value = serde_json::from_str(&host_link).unwrap();
        assert_eq!(host["mac"], host_link[0]["address"], "{r}");

        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "{r}");
        let ip = &ips[0];
        if v.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{v}: {r}");
        } else {
            assert!(ip.get("version").is_none(), "{v}: {r}");
        }
        let idx = ip["interface"]
            .as_u64()
            .unwrap_or_else(|| panic!("ips[0].interface missing: {r}")) as usize;
        let pod_if = &ifs[idx];
        assert_eq!(pod_if["name"], pod.ifname.as_str(), "{r}");
        assert_eq!(pod_if["sandbox"], pod.path(), "{r}");
        let link = pod.link().expect("the pod interface exists");
        assert_eq!(pod_if["mac"], link["address"], "{r}");

        for i in ifs {
            if v == "1.1.0" {
                let want = if i.get("sandbox").is_some() {
                    link["mtu"].clone()
                } else {
                    host_link[0]["mtu"].clone()
                };
                assert_eq!(i["mtu"], want, "{v}: {r}");
            } else {
                assert!(i.get("mtu").is_none(), "{v}: {r}");
            }
        }

        let addr = result_address(&r);
        assert_eq!(pod.ipv4(), vec![addr.clone()]);
        let gw = gateway(&r);
        assert_eq!(
            node.bridge_ipv4(DEFAULT_BRIDGE),
            vec![format!("{gw}/{}", prefix_len(&addr))]
        );
        let routes_in_result = r["routes"].as_array().expect("routes");
        assert!(
            routes_in_result.contains(&json!({"dst": "0.0.0.0/0", "gw": gw})),
            "{v}: no default route via {gw} in {r}"
        );
        assert!(routes(&pod.ns).contains(&format!("default via {gw} dev eth0")));

        node.del_ok(&conf, &pod);
    }
    node.assert_empty();
}

#[test]
fn version_lists_every_supported_version_and_touches_nothing() {
    let node = Node::new("vv-node");
    let before = node.ns.snapshot();
    let all: BTreeSet<&str> = ALL_VERSIONS.into_iter().collect();
    let mut requests: Vec<(Vec<u8>, Option<&str>)> = vec![(Vec::new(), None)];
    for v in ALL_VERSIONS {
        requests.push((json!({"cniVersion": v}).to_string().into_bytes(), Some(v)));
    }
    for (stdin, asked) in requests {
        let out = node.call(&CniCall::new("VERSION", &json!({})).stdin(&stdin));
        let info = assert_result_json(&out);
        let supported: BTreeSet<&str> = info["supportedVersions"]
            .as_array()
            .unwrap_or_else(|| panic!("no supportedVersions: {info}"))
            .iter()
            .map(|v| v.as_str().expect("a version string"))
            .collect();
        assert_eq!(supported, all, "{info}");
        let echoed = info["cniVersion"].as_str().expect("cniVersion");
        match asked {
            Some(v) => assert_eq!(echoed, v),
            None => assert!(all.contains(echoed), "{info}"),
        }
    }
    assert_eq!(node.ns.snapshot(), before, "VERSION changed the node");
    assert!(!node.data_dir().exists(), "VERSION created the data dir");
}

#[test]
fn del_succeeds_when_there_is_nothing_to_do() {
    let node = Node::new("del-node");
    let conf = node.conf("1.0.0");
    let keep = Pod::new("del-keep");
    let kept = result_address(&node.add_ok(&conf, &keep));

    // The runtime deleted the netns before DEL.
    let gone = Pod::new("del-gone");
    node.add_ok(&conf, &gone);
    gone.ns.delete();
    node.del_ok(&conf, &gone);
    assert_eq!(
        node.lookup(&gone),
        Vec::<std::net::IpAddr>::new(),
        "DEL after netns removal kept the address"
    );
    assert!(
        wait_for(Duration::from_secs(5), || !node
            .host_veths()
            .contains(&gone.host_veth())),
        "host veth of a deleted pod stays"
    );

    // containerd passes an empty CNI_NETNS once the sandbox is gone; an unset one too.
    for (label, value) in [("del-empty", Some("")), ("del-unset", None)] {
        let pod = Pod::new(label);
        node.add_ok(&conf, &pod);
        let out = node.call(&pod.call("DEL", &conf).env("CNI_NETNS", value));
        assert_silent_success(&out, &format!("DEL with CNI_NETNS {value:?}"));
        assert_eq!(
            node.lookup(&pod),
            Vec::<std::net::IpAddr>::new(),
            "{label}: address not released"
        );
        assert!(!node.host_veths().contains(&pod.host_veth()), "{label}");
        assert_eq!(pod.ns.links(), vec!["lo"], "{label}: pod interface stays");
    }

    // A container the plugin never saw.
    let before = node.reservations();
    let unknown = Pod::new("del-unknown");
    node.del_ok(&conf, &unknown);
    assert_eq!(node.reservations(), before);

    // DEL twice.
    let twice = Pod::new("del-twice");
    node.add_ok(&conf, &twice);
    node.del_ok(&conf, &twice);
    node.del_ok(&conf, &twice);
    assert_eq!(node.lookup(&twice), Vec::<std::net::IpAddr>::new());

    // Nothing of the others was touched.
    let res = node.reservations();
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!(res[0].owner, keep.owner());
    assert_eq!(res[0].address, ip_of(&kept));
    assert_eq!(node.host_veths(), vec![keep.host_veth()]);
    assert!(reaches(&node.ns, &ip_of(&kept).to_string()));
    node.verify_store();

    node.del_ok(&conf, &keep);
    node.assert_empty();
}

#[test]
fn gc_releases_everything_but_the_valid_attachments() {
    let node = Node::new("gc-node");
    let conf = node.conf("1.1.0");
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new("gc")).collect();
    let results: Vec<Value> = pods.iter().map(|p| node.add_ok(&conf, p)).collect();
    assert_eq!(node.reservations().len(), 3);
    assert_eq!(node.host_veths().len(), 3);

    let kept = &pods[1];
    let kept_addr = ip_of(&result_address(&results[1]));
    assert_silent_success(&node.gc(&conf, &[kept]), "GC");

    let res = node.reservations();
    assert_eq!(res.len(), 1, "GC left {res:?}");
    assert_eq!((&res[0].owner, res[0].address), (&kept.owner(), kept_addr));
    assert_eq!(node.host_veths(), vec![kept.host_veth()]);
    assert_eq!(pods[0].ns.links(), vec!["lo"]);
    assert_eq!(pods[2].ns.links(), vec!["lo"]);
    node.verify_store();
    assert!(
        reaches(&node.ns, &kept_addr.to_string()),
        "the kept pod lost connectivity"
    );
    assert!(reaches(&kept.ns, &gateway(&results[1])));
    assert_silent_success(
        &node.check(&conf, kept, &results[1]),
        "CHECK of the kept pod",
    );

    // Idempotent; then an empty list removes the rest.
    assert_silent_success(&node.gc(&conf, &[kept]), "second GC");
    assert_eq!(node.reservations().len(), 1);
    assert_silent_success(&node.gc(&conf, &[]), "GC of everything");
    node.assert_empty();
}

#[test]
fn status_reports_whether_a_subnet_is_known() {
    let node = Node::new("st-node");
    let conf = node.conf("1.1.0").without("subnet");
    let file = node.subnet_file().display().to_string();

    assert_cni_error(&node.status(&conf), 50, &file);
    // ADD agrees: try again later.
    let pod = Pod::new("st");
    assert_cni_error(&node.add(&conf, &pod), 11, &file);

    node.write_subnet_file(&["10.244.0.0/16"], &["10.244.3.0/24"], Some(1450));
    assert_silent_success(&node.status(&conf), "STATUS with a subnet file");
    // An inline subnet is enough without a file.
    let inline = Node::new("st-inline");
    assert_silent_success(
        &inline.status(&inline.conf("1.1.0")),
        "STATUS, inline subnet",
    );

    let r = node.add_ok(&conf, &pod);
    assert!(
        in_subnet(ip_of(&result_address(&r)), "10.244.3.0/24"),
        "{r}"
    );
    node.del_ok(&conf, &pod);
    node.assert_empty();
}

#[test]
fn a_new_node_subnet_replaces_the_old_one() {
    let node = Node::new("sc-node");
    let (a, b) = ("10.244.1.0/24", "10.244.7.0/24");
    let conf_a = node.conf("1.0.0").with("subnet", json!(a));
    let conf_b = node.conf("1.0.0").with("subnet", json!(b));

    let p = Pod::new("sc-a");
    let ra = node.add_ok(&conf_a, &p);
    assert!(in_subnet(ip_of(&result_address(&ra)), a), "{ra}");
    assert_eq!(
        node.bridge_ipv4(DEFAULT_BRIDGE),
        vec![format!("{}/24", gateway(&ra))]
    );
    node.del_ok(&conf_a, &p);

    let q = Pod::new("sc-b");
    let rb = node.add_ok(&conf_b, &q);
    let addr = result_address(&rb);
    assert!(in_subnet(ip_of(&addr), b), "{rb}");
    assert!(in_subnet(gateway(&rb).parse().unwrap(), b), "{rb}");
    assert_eq!(q.ipv4(), vec![addr.clone()]);
    assert_eq!(
        node.bridge_ipv4(DEFAULT_BRIDGE),
        vec![format!("{}/24", gateway(&rb))],
        "the bridge must carry only the new gateway"
    );
    assert!(reaches(&node.ns, &ip_of(&addr).to_string()));
    assert!(reaches(&q.ns, &gateway(&rb)));
    node.verify_store();

    node.del_ok(&conf_b, &q);
    node.assert_empty();
}

#[test]
fn a_reservation_in_the_old_subnet_is_never_served() {
    // The subnet changes through the subnet file, as when the agent gets a new lease.
    let node = Node::new("so-node");
    let (a, b) = ("10.244.1.0/24", "10.244.8.0/24");
    let conf = node.conf("1.0.0").without("subnet");

    node.write_subnet_file(&["10.244.0.0/16"], &[a], None);
    let p = Pod::new("so");
    let ra = node.add_ok(&conf, &p);
    let old = ip_of(&result_address(&ra));
    assert!(in_subnet(old, a));

    node.write_subnet_file(&["10.244.0.0/16"], &[b], None);
    // Same container, no DEL in between.
    let rb = node.add_ok(&conf, &p);
    let new = result_address(&rb);
    assert!(
        in_subnet(ip_of(&new), b),
        "old reservation served again: {rb}"
    );
    assert_eq!(node.lookup(&p), vec![ip_of(&new)]);
    assert_eq!(
        p.ipv4(),
        vec![new.clone()],
        "the pod still carries the old address"
    );
    assert_eq!(
        node.bridge_ipv4(DEFAULT_BRIDGE),
        vec![format!("{}/24", gateway(&rb))]
    );
    let other = Pod::new("so-other");
    let ro = node.add_ok(&conf, &other);
    assert!(in_subnet(ip_of(&result_address(&ro)), b));
    assert_ne!(result_address(&ro), new);
    for r in node.reservations() {
        assert!(in_subnet(r.address, b), "reservation {r:?} outside {b}");
        assert_ne!(r.address, old);
    }
    node.verify_store();
    assert!(reaches(&node.ns, &ip_of(&new).to_string()));
    assert!(reaches(&other.ns, &ip_of(&new).to_string()));

    node.del_ok(&conf, &p);
    node.del_ok(&conf, &other);
    node.assert_empty();
}

#[test]
fn subnet_file_mode_uses_the_file_subnet_and_mtu() {
    let node = Node::new("sf-node");
    let subnet = "10.244.5.0/24";
    node.write_subnet_file(&["10.244.0.0/16"], &[subnet], Some(1400));
    let conf = node.conf("1.1.0").without("subnet");

    let pod = Pod::new("sf");
    let r = node.add_ok(&conf, &pod);
    let addr = result_address(&r);
    assert!(in_subnet(ip_of(&addr), subnet), "{r}");
    assert_eq!(pod.ipv4(), vec![addr.clone()]);
    assert_eq!(pod.mtu(), 1400, "pod MTU is not the subnet file's");
    let host: Value =
        serde_json::from_str(&node.ns.ip(&["-j", "link", "show", "dev", &pod.host_veth()]))
            .unwrap();
    assert_eq!(
        host[0]["mtu"], 1400,
        "host veth MTU is not the subnet file's"
    );
    for i in r["interfaces"].as_array().unwrap() {
        assert_eq!(i["mtu"], 1400, "{r}");
    }
    assert_eq!(
        node.bridge_ipv4(DEFAULT_BRIDGE),
        vec![format!("{}/24", gateway(&r))]
    );
    assert!(reaches(&node.ns, &ip_of(&addr).to_string()));

    // An inline subnet still takes the MTU from the file, unless the config sets one.
    let inline = node.conf("1.1.0").with("subnet", json!(subnet));
    let p2 = Pod::new("sf-inline");
    node.add_ok(&inline, &p2);
    assert_eq!(p2.mtu(), 1400);
    let p3 = Pod::new("sf-mtu");
    node.add_ok(&inline.with("mtu", json!(1300)), &p3);
    assert_eq!(p3.mtu(), 1300, "the config's mtu must win over the file's");

    for p in [&pod, &p2, &p3] {
        node.del_ok(&conf, p);
    }
    node.assert_empty();
}

#[test]
fn a_replaced_pod_gets_a_new_address() {
    let node = Node::new("rp-node");
    let conf = node.conf("1.0.0");
    let mut pod = Pod::new("rp");
    let ip1 = result_address(&node.add_ok(&conf, &pod));
    node.del_ok(&conf, &pod);

    // The sandbox is re-created under the same name, with a new container ID.
    pod.ns.delete();
    sh(&["ip", "netns", "add", pod.ns.name()]);
    pod.ns.ip(&["link", "set", "lo", "up"]);
    pod.id = format!("{}-replacement", pod.id);

    let ip2 = result_address(&node.add_ok(&conf, &pod));
    assert_ne!(
        ip1, ip2,
        "the replacement pod got the address of the pod it replaced"
    );
    assert_eq!(pod.ipv4(), vec![ip2.clone()]);
    let res = node.reservations();
    assert_eq!(res.len(), 1, "{res:?}");
    assert_eq!((&res[0].owner, res[0].address), (&pod.owner(), ip_of(&ip2)));
    assert!(reaches(&node.ns, &ip_of(&ip2).to_string()));

    node.del_ok(&conf, &pod);
    node.assert_empty();
}

#[test]
fn bridge_routes_and_hairpin_settings_are_applied() {
    let node = Node::new("knob-node");
    let extra_gw = "10.244.1.254";
    let conf = node.conf("1.1.0").with("bridge", json!("cbr0")).with(
        "routes",
        json!([{"dst": "10.96.0.0/12"}, {"dst": "192.168.50.0/24", "gw": extra_gw}]),
    );

    // A container ID as long as a real runtime's.
    let p = Pod::with_runtime_id("knob");
    assert_eq!(p.id.len(), 64);
    let r = node.add_ok(&conf, &p);
    let gw = gateway(&r);
    assert_eq!(node.bridge_ipv4("cbr0"), vec![format!("{gw}/24")]);
    assert!(
        !node.ns.links().contains(&DEFAULT_BRIDGE.to_string()),
        "the default bridge was created although the config names another"
    );
    let host = node.link_details(&p.host_veth());
    assert_eq!(host["master"], "cbr0", "{host}");
    assert_eq!(
        host["linkinfo"]["info_slave_data"]["hairpin"], true,
        "hairpin is on by default: {host}"
    );

    let in_result = r["routes"].as_array().unwrap();
    for want in [
        json!({"dst": "0.0.0.0/0", "gw": gw}),
        json!({"dst": "10.96.0.0/12", "gw": gw}),
        json!({"dst": "192.168.50.0/24", "gw": extra_gw}),
    ] {
        assert!(in_result.contains(&want), "{want} missing in {r}");
    }
    let table = routes(&p.ns);
    assert!(
        table.contains(&format!("10.96.0.0/12 via {gw} dev eth0")),
        "{table}"
    );
    assert!(
        table.contains(&format!("192.168.50.0/24 via {extra_gw} dev eth0")),
        "{table}"
    );

    assert_silent_success(&node.check(&conf, &p, &r), "CHECK");
    p.ns.ip(&["route", "del", "10.96.0.0/12"]);
    assert_cni_error(&node.check(&conf, &p, &r), 101, "10.96.0.0/12");

    let q = Pod::new("knob-nohp");
    node.add_ok(&conf.with("hairpinMode", json!(false)), &q);
    let host = node.link_details(&q.host_veth());
    assert_eq!(
        host["linkinfo"]["info_slave_data"]["hairpin"], false,
        "{host}"
    );

    node.del_ok(&conf, &p);
    node.del_ok(&conf, &q);
    node.assert_empty();
}

#[test]
fn dual_stack_pods_from_the_subnet_file() {
    let node = Node::new("ds-node");
    let (v4, v6) = ("10.244.1.0/24", "fd00:10:244:1::/64");
    node.write_subnet_file(
        &["10.244.0.0/16", "fd00:10:244::/48"],
        &[v4, v6],
        Some(1450),
    );
    let conf = node.conf("1.0.0").without("subnet");

    let pods = [Pod::new("ds-a"), Pod::new("ds-b")];
    let mut six = Vec::new();
    for p in &pods {
        let r = node.add_ok(&conf, p);
        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{r}");
        let a4 = ips[0]["address"].as_str().unwrap().to_string();
        let a6 = ips[1]["address"].as_str().unwrap().to_string();
        assert!(in_subnet(ip_of(&a4), v4), "{r}");
        assert!(in_subnet(ip_of(&a6), v6), "{r}");
        let gw6 = ips[1]["gateway"]
            .as_str()
            .expect("an IPv6 gateway")
            .to_string();
        assert!(in_subnet(gw6.parse().unwrap(), v6), "{r}");
        assert_eq!(p.ipv4(), vec![a4]);
        assert_eq!(p.ipv6(), vec![a6.clone()]);
        assert!(
            r["routes"]
                .as_array()
                .unwrap()
                .contains(&json!({"dst": "::/0", "gw": gw6})),
            "{r}"
        );
        let table = p.ns.ip(&["-6", "route", "show"]);
        assert!(
            table.contains(&format!("default via {gw6} dev eth0")),
            "{table}"
        );
        let bridge6 = twill_tests::fixture::ipv6_of(&node.ns, DEFAULT_BRIDGE);
        assert!(bridge6.contains(&format!("{gw6}/64")), "{bridge6:?}");
        // Usable the moment ADD returns: neither the gateway nor the pod's address is left
        // in duplicate address detection.
        for (ns, dev, addr) in [(&node.ns, DEFAULT_BRIDGE, &gw6), (&p.ns, "eth0", &a6)] {
            let shown = ns.ip(&["-6", "-o", "addr", "show", "dev", dev]);
            let line = shown.lines().find(|l| l.contains(addr.as_str()));
            assert!(
                line.is_some_and(|l| !l.contains("tentative")),
                "{dev}: {shown}"
            );
        }
        let mut held = node.lookup(p);
        held.sort();
        let mut want = vec![ip_of(&p.ipv4()[0]), ip_of(&a6)];
        want.sort();
        assert_eq!(held, want);
        assert_silent_success(&node.check(&conf, p, &r), "CHECK of a dual-stack pod");
        six.push(ip_of(&a6).to_string());
    }
    assert_ne!(six[0], six[1]);
    assert!(
        reaches(&node.ns, &six[0]),
        "node cannot reach {} over IPv6",
        six[0]
    );
    assert!(
        reaches(&pods[0].ns, &six[1]),
        "pod cannot reach pod over IPv6"
    );
    assert!(
        reaches(&pods[1].ns, &six[0]),
        "pod cannot reach pod over IPv6"
    );

    for p in &pods {
        node.del_ok(&conf, p);
    }
    node.assert_empty();
}

/// The spec puts no limit on container IDs; the kernel limits link aliases to 255 bytes.
#[test]
fn a_very_long_container_id_is_served() {
    let node = Node::new("long-node");
    let conf = node.conf("1.0.0");
    let mut pod = Pod::new("long-a");
    pod.id = format!("{}-{}", pod.id, "x".repeat(400));
    let r = node.add_ok(&conf, &pod);
    assert_eq!(pod.ipv4(), vec![result_address(&r)]);
    let shown = node.ns.ip(&["-d", "link", "show", &pod.host_veth()]);
    assert!(shown.contains("alias twill:long-a"), "{shown}");
    node.del_ok(&conf, &pod);
    node.assert_empty();
}
