//! The host veth's alias, read back by the store's rebuild: anything a link may carry.

use crate::port_alias::{encode, parse, AliasError, AliasOwner, MAX_ALIAS_LEN};
use crate::strategies::{bounded, config, hostile_string};
use crate::Attachment;
use proptest::prelude::*;
use std::net::IpAddr;

fn any_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::from(a.to_be_bytes())),
        any::<u128>().prop_map(|a| IpAddr::from(a.to_be_bytes())),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// What the plugin writes reads back: the addresses always, the owner whole when it
    /// fits and as a prefix of the container ID when it was cut.
    #[test]
    fn an_encoded_alias_reads_back(
        container in "[A-Za-z0-9_.-]{1,300}",
        ifname in "[a-z][a-z0-9]{0,14}",
        addrs in prop::collection::vec(any_addr(), 1..=2),
    ) {
        let att = Attachment::new(&container, &ifname);
        let alias = encode(&att, &addrs);
        prop_assert!(alias.len() <= MAX_ALIAS_LEN, "{} bytes", alias.len());
        let read = bounded("port_alias::parse", || parse(&alias));
        let read = read.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&read.addrs, &addrs);
        match read.owner {
            AliasOwner::Whole(a) => prop_assert_eq!(a, att),
            AliasOwner::Cut { container_prefix, ifname: i } => {
                prop_assert!(container.starts_with(&container_prefix));
                prop_assert!(container_prefix.len() < container.len());
                prop_assert_eq!(i, ifname);
            }
        }
    }

    /// Any other alias is refused, never panics, and a refusal of a Twill-looking one
    /// quotes the alias.
    #[test]
    fn any_alias_is_read_or_refused(tail in hostile_string(), twill in any::<bool>()) {
        let alias = if twill { format!("twill:{tail}") } else { tail };
        match bounded("port_alias::parse", || parse(&alias)) {
            Ok(_) | Err(AliasError::NotTwill) => {}
            Err(AliasError::Malformed { alias: quoted, reason }) => {
                prop_assert_eq!(quoted, alias);
                prop_assert!(!reason.is_empty());
            }
        }
    }
}
