//! The overlay operations of twill-netlink (VXLAN device, neighbours, FDB, routes)
//! against the real kernel, each test in a namespace of its own with a veth pair as the
//! underlay. Every result is checked with `ip`/`bridge` as well as read back through
//! the crate.

use serde_json::Value;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use twill_netlink::{NetNs, Netlink, VxlanSpec};
use twill_tests::{require_root, Netns};

/// Our route protocol in these tests (the agent picks its own).
const PROTO: u8 = 77;
const OTHER_PROTO: u8 = 78;
/// A metric that is neither 0 nor the kernel's IPv6 default (1024).
const METRIC: u32 = 7;

const VX: &str = "vx0";
const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x01];
const MAC_STR: &str = "02:42:0a:00:00:01";
/// VTEP MACs of two peers.
const PEER_MAC1: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x00];
const PEER_MAC2: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x02, 0x00];

/// A namespace whose veth pair `u0`/`u1` is the underlay (`u0` holds 10.99.0.1/24 and
/// fd00:99::1/64), and a netlink connection inside it.
struct Env {
    ns: Netns,
    nl: Netlink,
    rt: tokio::runtime::Runtime,
    underlay: u32,
}

impl Env {
    fn new(label: &str) -> Env {
        require_root();
        let ns = Netns::new(label);
        ns.ip(&["link", "add", "u0", "type", "veth", "peer", "name", "u1"]);
        ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "u0"]);
        ns.ip(&["addr", "add", "fd00:99::1/64", "dev", "u0", "nodad"]);
        ns.ip(&["link", "set", "u0", "up"]);
        ns.ip(&["link", "set", "u1", "up"]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let netns = NetNs::open(Path::new(&ns.path())).unwrap();
        let nl = rt.block_on(async { Netlink::connect_in(&netns) }).unwrap();
        let mut env = Env {
            ns,
            nl,
            rt,
            underlay: 0,
        };
        env.underlay = env.index_of("u0");
        env
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn spec(&self) -> VxlanSpec<'static> {
        VxlanSpec {
            name: VX,
            vni: 1,
            port: 8472,
            local: "10.99.0.1".parse().unwrap(),
            underlay_index: self.underlay,
            mac: MAC,
            mtu: 1450,
        }
    }

    /// `ensure_vxlan(spec)`, which must have recreated the device: a new index, the one
    /// the kernel shows under the name.
    fn recreated(&self, spec: &VxlanSpec<'_>, old_index: u32) -> twill_netlink::Link {
        let (link, created) = self.block_on(self.nl.ensure_vxlan(spec)).unwrap();
        assert!(created);
        assert_ne!(link.index, old_index);
        assert_eq!(self.index_of(spec.name), link.index);
        link
    }

    /// The VXLAN parameters of `vx0` as `ip -d -j link show` sees them.
    fn info_data(&self) -> Value {
        self.link_json(VX)["linkinfo"]["info_data"].clone()
    }

    /// The index of `vx0` as [`Env::spec`] makes it.
    fn vxlan(&self) -> u32 {
        self.block_on(self.nl.ensure_vxlan(&self.spec()))
            .unwrap()
            .0
            .index
    }

    /// `ip -j <args>` in the namespace, parsed.
    fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        parse(&self.ns.ip(&full))
    }

    /// The one link `name` as `ip -d -j link show` sees it.
    fn link_json(&self, name: &str) -> Value {
        let v = self.ip_json(&["-d", "link", "show", "dev", name]);
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
        v[0].clone()
    }

    fn index_of(&self, name: &str) -> u32 {
        self.link_json(name)["ifindex"].as_u64().unwrap() as u32
    }

    /// `bridge -j fdb show dev <dev>` in the namespace, parsed.
    fn fdb_json(&self, dev: &str) -> Vec<Value> {
        array(parse(
            &self.ns.sh(&["bridge", "-j", "fdb", "show", "dev", dev]),
        ))
    }

    /// `ip -j neigh show dev <dev>` in the namespace, parsed.
    fn neigh_json(&self, dev: &str) -> Vec<Value> {
        array(self.ip_json(&["neigh", "show", "dev", dev]))
    }

    /// Routes of the main table with protocol `proto`, both families.
    fn routes_json(&self, proto: u8) -> Vec<Value> {
        let p = proto.to_string();
        let mut v = array(self.ip_json(&["-4", "route", "show", "proto", &p]));
        v.extend(array(self.ip_json(&["-6", "route", "show", "proto", &p])));
        v
    }
}

fn parse(s: &str) -> Value {
    if s.trim().is_empty() {
        return Value::Array(vec![]);
    }
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a JSON array: {other}"),
    }
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac_string(m: &[u8; 6]) -> String {
    twill_netlink::mac::format(m)
}

#[test]
fn vxlan_is_created_left_alone_fixed_in_place_or_recreated() {
    let env = Env::new("ovl-vxlan");
    let spec = env.spec();

    // Created.
    let (link, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(created);
    let k = env.link_json(VX);
    assert_eq!(k["ifindex"].as_u64(), Some(u64::from(link.index)));
    assert_eq!(k["linkinfo"]["info_kind"], "vxlan");
    let data = &k["linkinfo"]["info_data"];
    assert_eq!(data["id"], 1, "{k}");
    assert_eq!(data["port"], 8472, "{k}");
    assert_eq!(data["local"], "10.99.0.1", "{k}");
    assert_eq!(data["link"], "u0", "{k}");
    assert_eq!(data["learning"], false, "{k}");
    assert_eq!(k["address"], MAC_STR);
    assert_eq!(k["mtu"], 1450);
    assert!(has_flag(&k, "UP"), "{k}");
    // The returned link is a fresh read that carries the VXLAN parameters.
    assert_eq!(link.name, VX);
    assert_eq!(link.mac, Some(MAC));
    assert_eq!(link.mtu, 1450);
    assert!(link.up);
    assert_eq!(link.kind.as_deref(), Some("vxlan"));
    let info = link.vxlan.clone().expect("vxlan info");
    assert_eq!(info.vni, 1);
    assert_eq!(info.port, 8472);
    assert_eq!(info.local, Some(ip("10.99.0.1")));
    assert_eq!(info.underlay_index, Some(env.underlay));
    assert!(!info.learning);

    // Again: nothing to do.
    let (again, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(!created);
    assert_eq!(again, link);
    assert_eq!(env.index_of(VX), link.index);

    // MAC, MTU and up-state drift is fixed in place.
    env.ns.ip(&[
        "link",
        "set",
        VX,
        "down",
        "address",
        "02:00:00:00:00:99",
        "mtu",
        "1300",
    ]);
    assert!(!has_flag(&env.link_json(VX), "UP"));
    let (fixed, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(!created);
    assert_eq!(fixed.index, link.index);
    let k = env.link_json(VX);
    assert_eq!(k["ifindex"].as_u64(), Some(u64::from(link.index)));
    assert_eq!(k["address"], MAC_STR);
    assert_eq!(k["mtu"], 1450);
    assert!(has_flag(&k, "UP"), "{k}");
    assert_eq!(fixed, link);

    // set_mac
    let other_mac = [0x02, 0, 0, 0, 0, 0x42];
    env.block_on(env.nl.set_mac(link.index, other_mac)).unwrap();
    assert_eq!(env.link_json(VX)["address"], "02:00:00:00:00:42");
    let (fixed, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(!created);
    assert_eq!(fixed.mac, Some(MAC));
    assert_eq!(env.link_json(VX)["address"], MAC_STR);

    // Another VNI: recreated.
    let spec2 = VxlanSpec { vni: 2, ..spec };
    let link2 = env.recreated(&spec2, link.index);
    let k = env.link_json(VX);
    assert_eq!(k["ifindex"].as_u64(), Some(u64::from(link2.index)));
    assert_eq!(k["linkinfo"]["info_data"]["id"], 2, "{k}");
    assert_eq!(k["address"], MAC_STR);
    assert_eq!(k["mtu"], 1450);
    assert!(has_flag(&k, "UP"), "{k}");
    assert_eq!(link2.vxlan.as_ref().map(|v| v.vni), Some(2));

    // Another port: recreated.
    let spec3 = VxlanSpec {
        port: 4789,
        ..spec2.clone()
    };
    let link3 = env.recreated(&spec3, link2.index);
    assert_eq!(env.info_data()["port"], 4789);

    // Another local address: recreated.
    env.ns.ip(&["addr", "add", "10.99.0.9/24", "dev", "u0"]);
    let spec4 = VxlanSpec {
        local: ip("10.99.0.9"),
        ..spec3.clone()
    };
    let link4 = env.recreated(&spec4, link3.index);
    assert_eq!(env.info_data()["local"], "10.99.0.9");

    // Another underlay device: recreated.
    let u1 = env.index_of("u1");
    let spec5 = VxlanSpec {
        underlay_index: u1,
        ..spec4.clone()
    };
    let link5 = env.recreated(&spec5, link4.index);
    assert_eq!(env.info_data()["link"], "u1");
    assert_eq!(link5.vxlan.as_ref().unwrap().underlay_index, Some(u1));

    // Learning switched on behind our back: recreated with learning off.
    env.ns.ip(&["link", "del", VX]);
    env.ns.ip(&[
        "link",
        "add",
        VX,
        "type",
        "vxlan",
        "id",
        "2",
        "dstport",
        "4789",
        "local",
        "10.99.0.9",
        "dev",
        "u1",
        "learning",
    ]);
    assert_eq!(env.info_data()["learning"], true);
    let (link6, created) = env.block_on(env.nl.ensure_vxlan(&spec5)).unwrap();
    assert!(created);
    let k = env.link_json(VX);
    assert_eq!(k["ifindex"].as_u64(), Some(u64::from(link6.index)));
    assert_eq!(k["linkinfo"]["info_data"]["learning"], false, "{k}");

    // Not a VXLAN device at all: recreated.
    env.ns.ip(&["link", "del", VX]);
    env.ns
        .ip(&["link", "add", VX, "type", "veth", "peer", "name", "vx0peer"]);
    let (link7, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(created);
    let k = env.link_json(VX);
    assert_eq!(k["ifindex"].as_u64(), Some(u64::from(link7.index)));
    assert_eq!(k["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(k["linkinfo"]["info_data"]["id"], 1);
    assert_eq!(k["linkinfo"]["info_data"]["link"], "u0");
    assert!(!env.ns.links().contains(&"vx0peer".to_string()));

    // Only one VXLAN device was ever left behind.
    let vxlans: Vec<_> = array(env.ip_json(&["-d", "link", "show", "type", "vxlan"]));
    assert_eq!(vxlans.len(), 1, "{vxlans:?}");
}

#[test]
fn vxlan_with_ipv6_underlay() {
    let env = Env::new("ovl-vx6");
    let spec = VxlanSpec {
        local: ip("fd00:99::1"),
        mtu: 1430,
        ..env.spec()
    };
    let (link, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(created);
    let k = env.link_json(VX);
    let data = &k["linkinfo"]["info_data"];
    assert_eq!(data["local6"], "fd00:99::1", "{k}");
    assert_eq!(data["id"], 1, "{k}");
    assert_eq!(data["link"], "u0", "{k}");
    assert_eq!(data["learning"], false, "{k}");
    assert_eq!(k["mtu"], 1430);
    assert_eq!(link.vxlan.as_ref().unwrap().local, Some(ip("fd00:99::1")));

    let (again, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(!created);
    assert_eq!(again.index, link.index);

    // Switching the underlay to IPv4 recreates.
    let spec4 = VxlanSpec {
        local: ip("10.99.0.1"),
        ..spec.clone()
    };
    env.recreated(&spec4, link.index);
    assert_eq!(env.info_data()["local"], "10.99.0.1");
    // ... and back.
    let (link6, created) = env.block_on(env.nl.ensure_vxlan(&spec)).unwrap();
    assert!(created);

    // FDB entries with IPv6 destinations (a 16-byte NDA_DST).
    let peer = [0x02, 0x42, 0x0a, 0, 0, 0x02];
    env.block_on(env.nl.replace_fdb(link6.index, peer, ip("fd00:99::2")))
        .unwrap();
    let fdb = env.fdb_json(VX);
    assert_eq!(fdb.len(), 1, "{fdb:?}");
    assert_eq!(fdb[0]["mac"], "02:42:0a:00:00:02");
    assert_eq!(fdb[0]["dst"], "fd00:99::2");
    assert_eq!(
        env.block_on(env.nl.fdb_entries(link6.index)).unwrap(),
        vec![(peer, ip("fd00:99::2"))]
    );
    env.block_on(env.nl.delete_fdb(link6.index, peer, ip("fd00:99::2")))
        .unwrap();
    assert!(env.fdb_json(VX).is_empty());
}

#[test]
fn neighbours_are_replaced_listed_and_deleted() {
    let env = Env::new("ovl-neigh");
    let vx = env.vxlan();
    let (mac1, mac2) = (PEER_MAC1, PEER_MAC2);
    let v4 = ip("10.244.1.0");
    let v6 = ip("fd00:244:1::");

    for _ in 0..2 {
        env.block_on(env.nl.replace_neighbour(vx, v4, mac1))
            .unwrap();
        env.block_on(env.nl.replace_neighbour(vx, v6, mac1))
            .unwrap();
    }
    let kernel = env.neigh_json(VX);
    assert_eq!(kernel.len(), 2, "{kernel:?}");
    for n in &kernel {
        assert_eq!(n["lladdr"], mac_string(&mac1), "{n}");
        assert_eq!(n["state"], serde_json::json!(["PERMANENT"]), "{n}");
    }
    let mut ours = env.block_on(env.nl.permanent_neighbours(vx)).unwrap();
    ours.sort();
    assert_eq!(ours, vec![(v4, mac1), (v6, mac1)]);

    // A new MAC replaces the entry.
    env.block_on(env.nl.replace_neighbour(vx, v4, mac2))
        .unwrap();
    let kernel = env.neigh_json(VX);
    assert_eq!(kernel.len(), 2, "{kernel:?}");
    let e = kernel.iter().find(|n| n["dst"] == "10.244.1.0").unwrap();
    assert_eq!(e["lladdr"], mac_string(&mac2));

    // Entries that are not permanent, or on another link, are not listed.
    env.ns.ip(&[
        "neigh",
        "add",
        "10.244.9.0",
        "lladdr",
        "02:00:00:00:09:00",
        "dev",
        VX,
        "nud",
        "reachable",
    ]);
    env.ns.ip(&[
        "neigh",
        "add",
        "10.99.0.7",
        "lladdr",
        "02:00:00:00:07:00",
        "dev",
        "u0",
        "nud",
        "permanent",
    ]);
    let mut ours = env.block_on(env.nl.permanent_neighbours(vx)).unwrap();
    ours.sort();
    assert_eq!(ours, vec![(v4, mac2), (v6, mac1)]);
    let on_u0 = env
        .block_on(env.nl.permanent_neighbours(env.underlay))
        .unwrap();
    assert_eq!(on_u0, vec![(ip("10.99.0.7"), [2, 0, 0, 0, 7, 0])]);

    // Delete; deleting again (or on a link that does not exist) is fine.
    env.block_on(env.nl.delete_neighbour(vx, v4)).unwrap();
    env.block_on(env.nl.delete_neighbour(vx, v6)).unwrap();
    env.block_on(env.nl.delete_neighbour(vx, v4)).unwrap();
    env.block_on(env.nl.delete_neighbour(vx, v6)).unwrap();
    env.block_on(env.nl.delete_neighbour(999_999, v4)).unwrap();
    let kernel = env.neigh_json(VX);
    assert!(
        kernel.iter().all(|n| n["dst"] == "10.244.9.0"),
        "{kernel:?}"
    );
    assert!(env
        .block_on(env.nl.permanent_neighbours(vx))
        .unwrap()
        .is_empty());
}

#[test]
fn fdb_entries_are_replaced_listed_and_deleted() {
    let env = Env::new("ovl-fdb");
    let vx = env.vxlan();
    let (mac1, mac2) = (PEER_MAC1, PEER_MAC2);

    for _ in 0..2 {
        env.block_on(env.nl.replace_fdb(vx, mac1, ip("10.99.0.2")))
            .unwrap();
        env.block_on(env.nl.replace_fdb(vx, mac2, ip("10.99.0.3")))
            .unwrap();
    }
    let kernel = env.fdb_json(VX);
    assert_eq!(kernel.len(), 2, "{kernel:?}");
    for e in &kernel {
        assert_eq!(e["state"], "permanent", "{e}");
        assert_eq!(e["flags"], serde_json::json!(["self"]), "{e}");
    }
    let mut ours = env.block_on(env.nl.fdb_entries(vx)).unwrap();
    ours.sort();
    assert_eq!(ours, vec![(mac1, ip("10.99.0.2")), (mac2, ip("10.99.0.3"))]);

    // A new destination replaces the old one (no second remote).
    env.block_on(env.nl.replace_fdb(vx, mac1, ip("10.99.0.4")))
        .unwrap();
    let kernel = env.fdb_json(VX);
    assert_eq!(kernel.len(), 2, "{kernel:?}");
    let e = kernel
        .iter()
        .find(|e| e["mac"] == mac_string(&mac1))
        .unwrap();
    assert_eq!(e["dst"], "10.99.0.4");

    // The all-zero MAC is not listed, nor entries without a destination: those the
    // bridge keeps for the VXLAN device once it is a bridge port (same ifindex, no
    // NDA_DST). Entries of other devices (the bridge's other port) are not listed
    // either.
    env.ns.sh(&[
        "bridge",
        "fdb",
        "append",
        "00:00:00:00:00:00",
        "dev",
        VX,
        "dst",
        "10.99.0.5",
        "self",
        "permanent",
    ]);
    env.ns.ip(&["link", "add", "brx", "type", "bridge"]);
    env.ns.ip(&["link", "set", VX, "master", "brx"]);
    env.ns.ip(&["link", "set", "u1", "master", "brx"]);
    env.ns.sh(&[
        "bridge",
        "fdb",
        "add",
        "02:00:00:00:00:07",
        "dev",
        VX,
        "master",
        "static",
    ]);
    let kernel = env.fdb_json(VX);
    assert!(
        kernel.iter().any(|e| e.get("dst").is_none()),
        "no entry without dst: {kernel:?}"
    );
    assert_eq!(
        kernel_fdb(&env),
        vec![
            ("00:00:00:00:00:00".to_string(), "10.99.0.5".to_string()),
            (mac_string(&mac1), "10.99.0.4".to_string()),
            (mac_string(&mac2), "10.99.0.3".to_string()),
        ]
    );
    assert!(!env.fdb_json("u1").is_empty());
    let mut ours = env.block_on(env.nl.fdb_entries(vx)).unwrap();
    ours.sort();
    assert_eq!(ours, vec![(mac1, ip("10.99.0.4")), (mac2, ip("10.99.0.3"))]);

    // Deleting with another destination deletes nothing (and is not an error).
    env.block_on(env.nl.delete_fdb(vx, mac2, ip("10.99.0.9")))
        .unwrap();
    assert_eq!(kernel_fdb(&env).len(), 3);

    env.block_on(env.nl.delete_fdb(vx, mac1, ip("10.99.0.4")))
        .unwrap();
    env.block_on(env.nl.delete_fdb(vx, mac2, ip("10.99.0.3")))
        .unwrap();
    // Already gone, and on a link that does not exist: fine.
    env.block_on(env.nl.delete_fdb(vx, mac1, ip("10.99.0.4")))
        .unwrap();
    env.block_on(env.nl.delete_fdb(999_999, mac1, ip("10.99.0.4")))
        .unwrap();
    assert_eq!(
        kernel_fdb(&env),
        vec![("00:00:00:00:00:00".to_string(), "10.99.0.5".to_string())]
    );
    assert!(env.block_on(env.nl.fdb_entries(vx)).unwrap().is_empty());
}

/// The FDB entries of the VXLAN device that have a destination, as (mac, dst), sorted.
fn kernel_fdb(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<_> = env
        .fdb_json(VX)
        .into_iter()
        .filter_map(|e| {
            Some((
                e["mac"].as_str()?.to_string(),
                e.get("dst")?.as_str()?.to_string(),
            ))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn routes_are_replaced_listed_and_deleted() {
    let env = Env::new("ovl-route");
    let vx = env.vxlan();
    let net4 = "10.244.1.0/24".parse().unwrap();
    let net6 = "fd00:244:1::/64".parse().unwrap();
    let via = |net, gw: &str| {
        env.block_on(
            env.nl
                .replace_route_via(net, ip(gw), vx, true, PROTO, METRIC),
        )
        .unwrap()
    };
    // Both routes, with exactly these gateways.
    let expect = |want: &[(&str, &str)]| {
        let kernel = env.routes_json(PROTO);
        assert_eq!(kernel.len(), want.len(), "{kernel:?}");
        for (dst, gw) in want {
            assert!(
                kernel
                    .iter()
                    .any(|r| r["dst"] == *dst && r["gateway"] == *gw),
                "no {dst} via {gw}: {kernel:?}"
            );
        }
        kernel
    };

    for _ in 0..2 {
        via(net4, "10.244.1.0");
        via(net6, "fd00:244:1::");
    }
    let kernel = expect(&[
        ("10.244.1.0/24", "10.244.1.0"),
        ("fd00:244:1::/64", "fd00:244:1::"),
    ]);
    for r in &kernel {
        assert_eq!(r["dev"], VX, "{r}");
        assert_eq!(r["flags"], serde_json::json!(["onlink"]), "{r}");
    }

    // A new gateway replaces the route.
    via(net4, "10.244.1.1");
    expect(&[
        ("10.244.1.0/24", "10.244.1.1"),
        ("fd00:244:1::/64", "fd00:244:1::"),
    ]);

    // A route without onlink, via the underlay's subnet.
    let net_u = "10.250.0.0/16".parse().unwrap();
    env.block_on(env.nl.replace_route_via(
        net_u,
        ip("10.99.0.2"),
        env.underlay,
        false,
        PROTO,
        METRIC,
    ))
    .unwrap();
    // Routes of other protocols and other tables.
    env.ns.ip(&[
        "route",
        "add",
        "10.251.0.0/16",
        "via",
        "10.99.0.2",
        "proto",
        &OTHER_PROTO.to_string(),
    ]);
    env.ns.ip(&[
        "route",
        "add",
        "10.252.0.0/16",
        "via",
        "10.99.0.2",
        "table",
        "100",
        "proto",
        &PROTO.to_string(),
    ]);

    let mut ours = env.block_on(env.nl.routes_by_protocol(PROTO)).unwrap();
    ours.sort_by_key(|r| r.dst);
    assert_eq!(ours.len(), 3, "{ours:?}");
    let r = &ours[0];
    assert_eq!(r.dst, net4);
    assert_eq!(r.gw, Some(ip("10.244.1.1")));
    assert_eq!(r.oif, Some(vx));
    assert_eq!(
        (r.protocol, r.table, r.onlink, r.metric),
        (PROTO, 254, true, METRIC)
    );
    let r = &ours[1];
    assert_eq!(r.dst, net_u);
    assert_eq!(r.gw, Some(ip("10.99.0.2")));
    assert_eq!(r.oif, Some(env.underlay));
    assert_eq!(
        (r.protocol, r.table, r.onlink, r.metric),
        (PROTO, 254, false, METRIC)
    );
    let r = &ours[2];
    assert_eq!(r.dst, net6);
    assert_eq!(r.gw, Some(ip("fd00:244:1::")));
    assert_eq!(r.oif, Some(vx));
    assert_eq!(
        (r.protocol, r.table, r.onlink, r.metric),
        (PROTO, 254, true, METRIC)
    );

    // Another metric is another route to the same destination; a delete naming a
    // metric takes only that one.
    env.block_on(
        env.nl
            .replace_route_via(net4, ip("10.244.1.0"), vx, true, PROTO, METRIC + 1),
    )
    .unwrap();
    assert_eq!(env.routes_json(PROTO).len(), 4);
    env.block_on(env.nl.delete_route(net4, PROTO, METRIC + 1))
        .unwrap();
    let left = env.block_on(env.nl.routes_by_protocol(PROTO)).unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().any(|r| r.dst == net4 && r.metric == METRIC));

    // Deleting with another protocol leaves the route; deleting with ours removes it;
    // deleting again is fine.
    let other = "10.251.0.0/16".parse().unwrap();
    env.block_on(env.nl.delete_route(other, PROTO, 0)).unwrap();
    assert_eq!(env.routes_json(OTHER_PROTO).len(), 1);
    env.block_on(env.nl.delete_route(net4, OTHER_PROTO, 0))
        .unwrap();
    assert_eq!(env.routes_json(PROTO).len(), 3);
    for _ in 0..2 {
        env.block_on(env.nl.delete_route(net4, PROTO, 0)).unwrap();
        env.block_on(env.nl.delete_route(net6, PROTO, METRIC))
            .unwrap();
        env.block_on(env.nl.delete_route(net_u, PROTO, 0)).unwrap();
    }
    assert!(env.routes_json(PROTO).is_empty());
    assert_eq!(env.routes_json(OTHER_PROTO).len(), 1);
    assert!(env
        .block_on(env.nl.routes_by_protocol(PROTO))
        .unwrap()
        .is_empty());
    // The route in table 100 is still there.
    assert!(env
        .ns
        .ip(&["route", "show", "table", "100"])
        .contains("10.252.0.0/16"));
}

/// As the agent runs them: 5,000 peers' worth of operations in flight at once on one
/// connection, with dumps running alongside, and a deadline (a lost kernel answer shows
/// as a request that never completes). Before the crate bounded the requests in flight,
/// about one run in three hung; before dumps took turns, some failed with EBUSY.
#[test]
fn many_concurrent_operations_on_one_connection() {
    const N: u32 = 5000;
    const DEADLINE: Duration = Duration::from_secs(120);
    let env = Env::new("ovl-many");
    let vx = env.vxlan();
    let peer = |i: u32| {
        let [_, _, a, b] = i.to_be_bytes();
        let mac = [0x02, 0x42, 0x0a, 0xf4, a, b];
        let vtep: IpAddr = IpAddr::V4([10, 99, a, b].into());
        let subnet: ipnet::IpNet = format!("10.{}.{b}.0/24", 100 + a).parse().unwrap();
        let gw = subnet.addr();
        (mac, vtep, subnet, gw)
    };
    // Dumps of all three kinds, concurrently with each other and with the writes.
    let dumps = |set: &mut tokio::task::JoinSet<Result<(), twill_netlink::NetlinkError>>| {
        for _ in 0..3 {
            let nl = env.nl.clone();
            set.spawn(async move {
                nl.fdb_entries(vx).await?;
                nl.permanent_neighbours(vx).await?;
                nl.routes_by_protocol(PROTO).await?;
                Ok(())
            });
        }
    };

    // Neighbours, FDB entries and routes, as the kernel and the crate see them.
    let expect_entries = |n: usize| {
        assert_eq!(env.neigh_json(VX).len(), n);
        assert_eq!(env.fdb_json(VX).len(), n);
        assert_eq!(env.routes_json(PROTO).len(), n);
        env.block_on(async {
            assert_eq!(env.nl.permanent_neighbours(vx).await.unwrap().len(), n);
            assert_eq!(env.nl.fdb_entries(vx).await.unwrap().len(), n);
            assert_eq!(env.nl.routes_by_protocol(PROTO).await.unwrap().len(), n);
        });
    };

    env.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let nl = env.nl.clone();
            let (mac, vtep, subnet, gw) = peer(i);
            set.spawn(async move {
                nl.replace_neighbour(vx, gw, mac).await?;
                nl.replace_fdb(vx, mac, vtep).await?;
                nl.replace_route_via(subnet, gw, vx, true, PROTO, i + 1)
                    .await
            });
        }
        dumps(&mut set);
        join_all_by(&mut set, DEADLINE).await;
    });
    expect_entries(N as usize);

    env.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..N {
            let nl = env.nl.clone();
            let (mac, vtep, subnet, gw) = peer(i);
            set.spawn(async move {
                nl.delete_route(subnet, PROTO, i + 1).await?;
                nl.delete_fdb(vx, mac, vtep).await?;
                nl.delete_neighbour(vx, gw).await
            });
        }
        dumps(&mut set);
        join_all_by(&mut set, DEADLINE).await;
    });
    expect_entries(0);
}

/// Waits for every task of `set`, each of which must succeed, all within `deadline`.
async fn join_all_by(
    set: &mut tokio::task::JoinSet<Result<(), twill_netlink::NetlinkError>>,
    deadline: Duration,
) {
    tokio::time::timeout(deadline, async {
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
    })
    .await
    .expect("requests still unanswered at the deadline");
}
