//! The simulated peers of the convergence benchmark: peer i (1-based) owns the i-th /24
//! of 10.0.0.0/8, as the registry would have handed them out, with a public IP on
//! 172.16.0.0/12 and a VTEP MAC derived from i; records only, no real nodes.

use crate::overlay_rtnl::Prefix;
use serde_json::json;
use std::net::Ipv4Addr;

/// The agent's route protocol (`twill_agent::datapath::ROUTE_PROTOCOL`).
pub const PROTO: u8 = 71;
pub const NETWORK: &str = "10.0.0.0/8";
/// The i-th /24 of 10.0.0.0/8 (i < 65,536).
pub fn subnet(idx: u32) -> Prefix {
    Prefix {
        addr: Ipv4Addr::from(0x0a00_0000 | ((idx & 0xffff) << 8)),
        len: 24,
    }
}

/// The public IP and VTEP MAC of endpoint `i`.
pub fn endpoint(i: u32) -> (Ipv4Addr, String) {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i + 1);
    let mac = format!(
        "0a:5e:{:02x}:{:02x}:{:02x}:{:02x}",
        (i >> 24) & 0xff,
        (i >> 16) & 0xff,
        (i >> 8) & 0xff,
        i & 0xff
    );
    (ip, mac)
}

pub fn record(node: &str, idx: u32, ip_idx: u32) -> Vec<u8> {
    let (ip, mac) = endpoint(ip_idx);
    let v = json!({
        "node": node,
        "subnets": [subnet(idx).to_string()],
        "publicIP": ip.to_string(),
        "vtepMAC": mac,
        "backend": "vxlan",
    });
    serde_json::to_vec_pretty(&v).expect("a JSON value serializes")
}

/// How the simulated peers look, for the report.
pub fn describe_records() -> String {
    format!(
        "peer i owns the i-th /24 of {NETWORK} (the node itself gets the (N+1)-th), public IP on 172.16.0.0/12 (not connected: all VXLAN)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_the_nth_slash_24() {
        assert_eq!(subnet(1).to_string(), "10.0.1.0/24");
        assert_eq!(subnet(5000).to_string(), "10.19.136.0/24");
        assert_eq!(subnet(60_000).to_string(), "10.234.96.0/24");
    }
}
