//! Property tests of the store's byte codec (issue 14 §4): keys and values read back from
//! sled are outside input once a disk or an operator has touched them. Decoding any
//! bytes never panics and takes bounded time; what decodes is the one canonical encoding
//! of its value (so a corrupted entry cannot pass for another); every value round-trips.
//! The store turns a `None` into `StoreError::Corrupt` naming the tree.

use crate::codec::{
    decode_addrs, decode_interval, decode_owner, decode_u64, encode_addrs, encode_u64, owner_key,
    Addr, Family,
};
use crate::span::{decode_spans, encode_spans, Span};
use ipnet::IpNet;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use twill_conf::strategies::{bounded, config, hostile_string, raw_bytes};
use twill_conf::{Attachment, PodRange};

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

fn any_addr() -> impl Strategy<Value = Addr> {
    any_ip().prop_map(Addr::from_ip)
}

fn any_owner() -> impl Strategy<Value = Attachment> {
    (hostile_string(), hostile_string()).prop_map(|(id, ifname)| Attachment::new(id, ifname))
}

/// Ranges the store accepts: a subnet with room for a pod, a gateway inside it.
fn any_span() -> impl Strategy<Value = Span> {
    prop_oneof![
        (any::<u32>(), 0u8..=30, any::<u32>()).prop_map(|(a, l, g)| (
            IpAddr::V4(a.into()),
            l,
            u128::from(g)
        )),
        (any::<u128>(), 0u8..=126, any::<u128>()).prop_map(|(a, l, g)| (
            IpAddr::V6(a.into()),
            l,
            g
        )),
    ]
    .prop_filter_map("a range the store accepts", |(addr, len, gw)| {
        let subnet = IpNet::new(addr, len).ok()?.trunc();
        let family = Family::of(addr);
        let host_bits = u32::from(if family == Family::V4 {
            32 - len
        } else {
            128 - len
        });
        let network = Addr::from_ip(subnet.network()).value;
        let offset = gw
            .checked_rem(1u128.checked_shl(host_bits).unwrap_or(0))
            .unwrap_or(gw);
        let gateway = Addr::new(family, network | offset).ip();
        Span::new(&PodRange { subnet, gateway }).ok()
    })
}

fn addr_list_bytes() -> BoxedStrategy<Vec<u8>> {
    let sample = encode_addrs(&[
        Addr::from_ip(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2))),
        Addr::from_ip(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7))),
    ]);
    raw_bytes(sample)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn address_keys_round_trip_and_sort_numerically(a in any_addr(), b in any_addr()) {
        prop_assert_eq!(Addr::from_key(&a.key()), Some(a));
        prop_assert_eq!(Addr::from_key(&a.key()).map(Addr::ip), Some(a.ip()));
        prop_assert_eq!(a.key().cmp(&b.key()), a.cmp(&b));
    }

    #[test]
    fn any_key_decodes_only_as_its_canonical_encoding(bytes in addr_list_bytes()) {
        if let Some(a) = bounded("Addr::from_key", || Addr::from_key(&bytes)) {
            prop_assert_eq!(a.key(), bytes);
        }
    }

    #[test]
    fn address_lists_round_trip(list in prop::collection::vec(any_addr(), 0..8)) {
        prop_assert_eq!(decode_addrs(&encode_addrs(&list)), Some(list));
    }

    #[test]
    fn any_address_list_decodes_only_as_its_canonical_encoding(bytes in addr_list_bytes()) {
        if let Some(list) = bounded("decode_addrs", || decode_addrs(&bytes)) {
            prop_assert_eq!(encode_addrs(&list), bytes);
        }
    }

    #[test]
    fn owner_keys_round_trip(owner in any_owner()) {
        prop_assert_eq!(decode_owner(&owner_key(&owner)), Some(owner));
    }

    #[test]
    fn any_owner_key_decodes_only_as_its_canonical_encoding(
        bytes in raw_bytes(owner_key(&Attachment::new("0123456789abcdef", "eth0"))),
    ) {
        if let Some(owner) = bounded("decode_owner", || decode_owner(&bytes)) {
            prop_assert_eq!(owner_key(&owner), bytes);
        }
    }

    #[test]
    fn any_interval_decodes_to_an_ordered_pair_of_one_family(
        key in addr_list_bytes(),
        value in addr_list_bytes(),
    ) {
        if let Some((start, end)) = bounded("decode_interval", || decode_interval(&key, &value)) {
            prop_assert_eq!(start.family, end.family);
            prop_assert!(start.value <= end.value);
            prop_assert_eq!((start.key(), end.key()), (key, value));
        }
    }

    #[test]
    fn counters_round_trip_and_need_eight_bytes(n in any::<u64>(), bytes in prop::collection::vec(any::<u8>(), 0..12)) {
        prop_assert_eq!(decode_u64(&encode_u64(n)), Some(n));
        prop_assert_eq!(decode_u64(&bytes).is_some(), bytes.len() == 8);
    }

    #[test]
    fn ranges_round_trip(spans in prop::collection::vec(any_span(), 0..3)) {
        prop_assert_eq!(decode_spans(&encode_spans(&spans)), Some(spans));
    }

    /// Ranges decode to spans the store accepts, and decoding is stable: what decodes
    /// encodes to bytes that decode to the same spans.
    #[test]
    fn any_ranges_decode_to_valid_spans(bytes in raw_bytes(encode_spans(&[
        Span::new(&crate::testing::range("10.244.1.0/24", "10.244.1.1")).expect("valid"),
        Span::new(&crate::testing::range("fd00::/64", "fd00::1")).expect("valid"),
    ]))) {
        if let Some(spans) = bounded("decode_spans", || decode_spans(&bytes)) {
            for s in &spans {
                prop_assert!(s.usable() > 0);
                prop_assert!(s.subnet.contains(&s.gateway.ip()));
                let again = Span::new(&s.range()).ok();
                prop_assert_eq!(again.as_ref(), Some(s));
            }
            prop_assert_eq!(decode_spans(&encode_spans(&spans)), Some(spans));
        }
    }
}
