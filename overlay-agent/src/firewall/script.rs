//! The `nft -f -` scripts: pure renderers from [`FirewallRules`] and the listed rules to
//! nftables' text syntax. Nothing here runs `nft`.

use super::{Direction, Family, FirewallRules, ForwardRule, IpNet, TaggedRule, VxlanTraffic};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// True for names `nft` takes unquoted and we accept: a letter, then up to 63 ASCII
/// letters, digits, `_` or `-`.
pub(crate) fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `10.0.0.0/8` for one network, `{ 10.0.0.0/8, 172.16.0.0/12 }` for several.
fn set_of(nets: &[IpNet]) -> String {
    match nets {
        [one] => one.to_string(),
        _ => {
            let items: Vec<String> = nets.iter().map(IpNet::to_string).collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}

/// The transaction that replaces table `inet <table>` with the one `rules` asks for,
/// atomically (input of `nft -f -`).
pub fn render_table_script(table: &str, rules: &FirewallRules) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {table}");
    let _ = writeln!(s, "delete table inet {table}");
    let _ = writeln!(s, "table inet {table} {{");
    let families: Vec<(Family, String)> = [Family::Ip, Family::Ip6]
        .into_iter()
        .filter_map(|f| {
            let nets = rules.networks(f);
            (!nets.is_empty()).then(|| (f, set_of(&nets)))
        })
        .collect();
    if let Some(v) = &rules.vxlan {
        s.push_str(&render_vxlan_chain(v));
    }
    if rules.ip_masq {
        s.push_str("    chain postrouting {\n");
        s.push_str("        type nat hook postrouting priority srcnat; policy accept;\n");
        for (f, nets) in &families {
            let ip = f.name();
            let _ = writeln!(s, "        {ip} saddr {nets} {ip} daddr {nets} return");
            let multicast = f.multicast();
            let _ = writeln!(s, "        {ip} saddr {nets} {ip} daddr {multicast} return");
            let _ = writeln!(s, "        {ip} saddr {nets} masquerade fully-random");
        }
        s.push_str("    }\n");
    }
    s.push_str("    chain forward {\n");
    s.push_str("        type filter hook forward priority filter; policy accept;\n");
    for (f, nets) in &families {
        let ip = f.name();
        let _ = writeln!(s, "        {ip} saddr {nets} accept");
        let _ = writeln!(s, "        {ip} daddr {nets} accept");
    }
    s.push_str("    }\n");
    s.push_str("}\n");
    s
}

/// Chain `vxlan_notrack` of an `inet` table: the node's own VXLAN packets skip
/// connection tracking (see the module's notes). One rule for IPv4 and IPv6 underlays.
pub fn render_vxlan_chain(v: &VxlanTraffic) -> String {
    // `@th,64,32`: the VXLAN header's first word (flags 0x08, reserved); `@th,96,24`: its VNI.
    format!(
        "    chain vxlan_notrack {{
        type filter hook output priority raw; policy accept;
        udp dport {port} @th,64,32 0x08000000 @th,96,24 {vni} notrack comment \"VXLAN VNI {vni}: never NATed\"
    }}
",
        port = v.port,
        vni = v.vni
    )
}

/// The transaction that deletes table `inet <table>`, and succeeds when it is absent.
pub fn render_delete_table(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// The accept rules `rules` asks for in `<family> filter FORWARD`, in chain order.
pub fn wanted_forward_rules(family: Family, rules: &FirewallRules) -> Vec<ForwardRule> {
    let mut out = Vec::new();
    for net in rules.networks(family) {
        for direction in [Direction::Saddr, Direction::Daddr] {
            out.push(ForwardRule { direction, net });
        }
    }
    out
}

/// The commands that turn `existing` (our tagged rules in `<family> filter FORWARD`) into
/// `wanted`, or `None` when they are already there, once each. Where and in which order
/// they sit in the chain does not matter (Docker inserts its own jumps at the top too;
/// they return or only concern Docker's bridges), so a chain that has them is left
/// alone. Otherwise all tagged rules are deleted and the wanted ones inserted at the top.
pub fn render_forward_fix(
    family: Family,
    comment: &str,
    existing: &[TaggedRule],
    wanted: &[ForwardRule],
) -> Option<String> {
    let have: Vec<Option<ForwardRule>> = existing.iter().map(|r| r.rule).collect();
    let have_set: BTreeSet<Option<ForwardRule>> = have.iter().copied().collect();
    let want_set: BTreeSet<Option<ForwardRule>> = wanted.iter().map(|r| Some(*r)).collect();
    if have.len() == have_set.len() && have_set == want_set {
        return None;
    }
    let ip = family.name();
    let mut s = render_delete_rules(family, existing);
    // `insert` puts a rule at the top: insert in reverse to keep `wanted`'s order.
    for r in wanted.iter().rev() {
        let _ = writeln!(
            s,
            "insert rule {ip} filter FORWARD {ip} {} {} counter accept comment \"{comment}\"",
            r.direction.name(),
            r.net
        );
    }
    Some(s)
}

/// Deletes `rules` (ours, listed with their handles) from `<family> filter FORWARD`.
pub(crate) fn render_delete_rules(family: Family, rules: &[TaggedRule]) -> String {
    let mut s = String::new();
    for r in rules {
        let _ = writeln!(
            s,
            "delete rule {} filter FORWARD handle {}",
            family.name(),
            r.handle
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    fn rules(nets: &[&str], ip_masq: bool) -> FirewallRules {
        FirewallRules {
            cluster_networks: nets.iter().map(|n| net(n)).collect(),
            ip_masq,
            vxlan: None,
        }
    }

    #[test]
    fn vxlan_packets_are_untracked_in_both_families_with_or_without_masquerade() {
        for ip_masq in [true, false] {
            let mut r = rules(&["10.244.0.0/16", "fd10:244::/56"], ip_masq);
            r.vxlan = Some(VxlanTraffic {
                port: 4789,
                vni: 0x00ab_cdef,
            });
            let script = render_table_script("twill", &r);
            let chain = "    chain vxlan_notrack {
        type filter hook output priority raw; policy accept;
        udp dport 4789 @th,64,32 0x08000000 @th,96,24 11259375 notrack comment \"VXLAN VNI 11259375: never NATed\"
    }
";
            assert!(script.contains(chain), "{script}");
            // One rule without an address family: IPv4 and IPv6 underlays alike.
            assert_eq!(script.matches(" notrack comment").count(), 1);
            assert_eq!(script.contains("masquerade"), ip_masq);
        }
        let script = render_table_script("twill", &rules(&["10.244.0.0/16"], true));
        assert!(!script.contains("vxlan_notrack"), "{script}");
    }

    #[test]
    fn renders_v4_table_with_masquerade() {
        let script = render_table_script("twill", &rules(&["10.244.0.0/16"], true));
        assert_eq!(
            script,
            "add table inet twill
delete table inet twill
table inet twill {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return
        ip saddr 10.244.0.0/16 ip daddr 224.0.0.0/4 return
        ip saddr 10.244.0.0/16 masquerade fully-random
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ip saddr 10.244.0.0/16 accept
        ip daddr 10.244.0.0/16 accept
    }
}
"
        );
    }

    #[test]
    fn renders_dual_stack_with_sets_merged_and_truncated() {
        let script = render_table_script(
            "tw",
            &rules(
                &[
                    "fd10:244::/56",
                    "10.244.7.9/16",
                    "10.96.0.0/12",
                    "10.244.0.0/17",
                ],
                true,
            ),
        );
        assert!(script.contains(
            "ip saddr { 10.96.0.0/12, 10.244.0.0/16 } ip daddr { 10.96.0.0/12, 10.244.0.0/16 } return\n"
        ));
        assert!(script.contains("ip6 saddr fd10:244::/56 ip6 daddr fd10:244::/56 return\n"));
        assert!(script.contains("ip6 saddr fd10:244::/56 ip6 daddr ff00::/8 return\n"));
        assert!(script.contains("ip6 saddr fd10:244::/56 masquerade fully-random\n"));
        assert!(script.contains("ip6 daddr fd10:244::/56 accept\n"));
        assert!(script.starts_with("add table inet tw\ndelete table inet tw\ntable inet tw {\n"));
        // v4 rules come before v6 rules.
        let v4 = script.find("ip saddr { 10.96").unwrap_or(usize::MAX);
        let v6 = script.find("ip6 saddr").unwrap_or(0);
        assert!(v4 < v6);
    }

    #[test]
    fn no_masquerade_without_ip_masq() {
        let script = render_table_script("twill", &rules(&["10.244.0.0/16"], false));
        assert!(!script.contains("masquerade"));
        assert!(!script.contains("nat"));
        assert!(script.contains("ip saddr 10.244.0.0/16 accept"));
    }

    #[test]
    fn delete_script_tolerates_absent_table() {
        assert_eq!(
            render_delete_table("twill"),
            "add table inet twill\ndelete table inet twill\n"
        );
    }

    #[test]
    fn table_names() {
        assert!(valid_table_name("twill"));
        assert!(valid_table_name("t_1-x"));
        for bad in [
            "",
            "1twill",
            "tw ill",
            "tw;flush ruleset",
            "tw\"",
            &"a".repeat(65),
        ] {
            assert!(!valid_table_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn forward_fix_only_when_needed() {
        let r = rules(&["10.244.0.0/16", "fd10::/64"], true);
        let wanted = wanted_forward_rules(Family::Ip, &r);
        assert_eq!(wanted.len(), 2);
        let tagged = |handle, direction| TaggedRule {
            handle,
            rule: Some(ForwardRule {
                direction,
                net: net("10.244.0.0/16"),
            }),
        };
        // Already there, in any order: nothing to do.
        let there = [tagged(7, Direction::Daddr), tagged(5, Direction::Saddr)];
        assert_eq!(
            render_forward_fix(Family::Ip, "twill", &there, &wanted),
            None
        );
        // Missing: inserted, saddr ending up first.
        assert_eq!(
            render_forward_fix(Family::Ip, "twill", &[], &wanted).as_deref(),
            Some(
                "insert rule ip filter FORWARD ip daddr 10.244.0.0/16 counter accept comment \"twill\"\n\
                 insert rule ip filter FORWARD ip saddr 10.244.0.0/16 counter accept comment \"twill\"\n"
            )
        );
        // Duplicated or foreign: all replaced.
        let dup = [
            tagged(7, Direction::Daddr),
            tagged(5, Direction::Saddr),
            tagged(6, Direction::Saddr),
        ];
        let fix = render_forward_fix(Family::Ip, "twill", &dup, &wanted).expect("fix");
        assert!(fix.starts_with(
            "delete rule ip filter FORWARD handle 7\n\
             delete rule ip filter FORWARD handle 5\n\
             delete rule ip filter FORWARD handle 6\n"
        ));
        assert_eq!(fix.matches("insert rule").count(), 2);
        // A family without networks: our stale rules go.
        let v4_only = rules(&["10.244.0.0/16"], true);
        let stale = [TaggedRule {
            handle: 3,
            rule: Some(ForwardRule {
                direction: Direction::Saddr,
                net: net("fd10::/64"),
            }),
        }];
        assert_eq!(
            render_forward_fix(
                Family::Ip6,
                "twill",
                &stale,
                &wanted_forward_rules(Family::Ip6, &v4_only)
            )
            .as_deref(),
            Some("delete rule ip6 filter FORWARD handle 3\n")
        );
        assert_eq!(render_forward_fix(Family::Ip6, "twill", &[], &[]), None);
    }
}
