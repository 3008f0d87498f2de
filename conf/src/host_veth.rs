//! Host-side veth names, derived from (container ID, ifname) so that DEL and GC find the
//! link without any saved state.

/// Every host veth of Twill starts with this; GC only touches links with it.
pub const PREFIX: &str = "tw";

/// `tw` + 12 hex digits of a 64-bit FNV-1a hash: 14 bytes, within IFNAMSIZ.
pub fn name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{PREFIX}{:012x}", h >> 16)
}

/// What the host veth's alias says, for an operator reading `ip -d link`.
pub fn alias(container_id: &str, ifname: &str) -> String {
    format!("twill:{container_id}:{ifname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_short() {
        let a = name("abc", "eth0");
        assert_eq!(a, name("abc", "eth0"));
        assert_ne!(a, name("abc", "eth1"));
        assert_ne!(a, name("abce", "th0"));
        assert_eq!(a.len(), 14);
        assert!(crate::valid_ifname(&a).is_ok());
    }
}
