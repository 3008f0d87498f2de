//! 64-bit FNV-1a: the one hash behind names and addresses that must be derived the same
//! way by every part, with no state (host veth names, VTEP MACs, test IDs).

/// The standard offset basis; [`fnv1a_from`] takes another one to salt the hash.
pub const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a of `bytes`.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    fnv1a_from(OFFSET_BASIS, bytes)
}

/// FNV-1a of `bytes`, starting from `basis` instead of [`OFFSET_BASIS`].
pub fn fnv1a_from(basis: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(basis, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vectors() {
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(*b"foobar"), 0x8594_4171_f739_67e8);
    }
}
