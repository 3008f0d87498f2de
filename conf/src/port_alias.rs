//! The host veth's alias: what the kernel keeps about a pod interface, enough to rebuild
//! the address store's reservations without entering any pod.
//!
//! Formats, all starting with `twill:`; the plugin writes the newest, the parser reads
//! every one:
//! - v1: `twill:<container>:<ifname>:ip=<addr>[,<addr>]`. When the whole would not fit in
//!   a link alias, the container ID is cut and ends with `~` (no container ID holds
//!   `~` or `:`): the addresses are always recorded, the owner then only partly.
//! - v0 (plugins before v1): `twill:<container>:<ifname>`, no addresses.

use std::net::IpAddr;

use crate::Attachment;

/// The longest alias the kernel keeps: IFALIASZ (256) minus the NUL netlink adds, minus
/// one more because `IFLA_IFALIAS` is validated against IFALIASZ - 1.
pub const MAX_ALIAS_LEN: usize = 254;

const PREFIX: &str = "twill:";
const ADDRS_KEY: &str = "ip=";
const CUT_MARK: char = '~';

/// Who holds the pod interface, as far as the alias says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AliasOwner {
    /// The whole container ID was recorded.
    Whole(Attachment),
    /// The container ID was too long and only its start was recorded.
    Cut {
        container_prefix: String,
        ifname: String,
    },
}

/// A parsed alias of a Twill host veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAlias {
    pub owner: AliasOwner,
    /// The pod's addresses; empty for a v0 alias.
    pub addrs: Vec<IpAddr>,
}

/// Why an alias is not one of Twill's, or not readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AliasError {
    #[error("alias does not start with {PREFIX:?}")]
    NotTwill,
    #[error("alias {alias:?}: {reason}")]
    Malformed { alias: String, reason: String },
}

/// The alias of `attachment` holding `addrs`, at most [`MAX_ALIAS_LEN`] bytes as long
/// as the addresses fit (two addresses always do).
pub fn encode(attachment: &Attachment, addrs: &[IpAddr]) -> String {
    let tail = tail(&attachment.ifname, addrs);
    let whole = format!("{PREFIX}{}{tail}", attachment.container_id);
    if whole.len() <= MAX_ALIAS_LEN {
        return whole;
    }
    let room = MAX_ALIAS_LEN.saturating_sub(PREFIX.len() + tail.len() + CUT_MARK.len_utf8());
    let mut end = room.min(attachment.container_id.len());
    while !attachment.container_id.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{PREFIX}{}{CUT_MARK}{tail}",
        &attachment.container_id[..end]
    )
}

/// Whether `attachment`'s alias may have had its container ID cut: it is long enough
/// that a dual-stack pair of the longest addresses would not fit beside it. Only then
/// can a rebuilt store hold its reservation under [`Attachment::stand_in`].
pub fn may_be_cut(attachment: &Attachment) -> bool {
    let longest = [
        IpAddr::from([255, 255, 255, 255]),
        IpAddr::from([0xffff_u16; 8]),
    ];
    PREFIX.len() + attachment.container_id.len() + tail(&attachment.ifname, &longest).len()
        > MAX_ALIAS_LEN
}

/// What follows the container ID: `:<ifname>:ip=<addr>[,<addr>]`.
fn tail(ifname: &str, addrs: &[IpAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(IpAddr::to_string).collect();
    format!(":{ifname}:{ADDRS_KEY}{}", list.join(","))
}

/// Reads an alias written by any version of the plugin.
pub fn parse(alias: &str) -> Result<PortAlias, AliasError> {
    let rest = alias.strip_prefix(PREFIX).ok_or(AliasError::NotTwill)?;
    let bad = |reason: &str| AliasError::Malformed {
        alias: alias.to_string(),
        reason: reason.to_string(),
    };
    // IPv6 addresses hold ':', so the address list is whatever follows the third ':'.
    let mut fields = rest.splitn(3, ':');
    let container = fields.next().unwrap_or_default();
    let ifname = fields.next().ok_or_else(|| bad("no interface name"))?;
    if container.is_empty() || container == CUT_MARK.to_string() {
        return Err(bad("empty container ID"));
    }
    crate::valid_ifname(ifname).map_err(|e| bad(&e))?;
    let addrs = match fields.next() {
        None => Vec::new(),
        Some(list) => {
            let list = list
                .strip_prefix(ADDRS_KEY)
                .ok_or_else(|| bad("the address list does not start with \"ip=\""))?;
            list.split(',')
                .map(|a| a.parse::<IpAddr>().map_err(|_| bad("unreadable address")))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let owner = match container.strip_suffix(CUT_MARK) {
        Some(prefix) => AliasOwner::Cut {
            container_prefix: prefix.to_string(),
            ifname: ifname.to_string(),
        },
        None => AliasOwner::Whole(Attachment::new(container, ifname)),
    };
    Ok(PortAlias { owner, addrs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn v1_records_owner_and_addresses_and_reads_back() {
        let a = Attachment::new("abc", "eth0");
        let addrs = ips(&["10.244.1.7", "fd00:1:2::7"]);
        let alias = encode(&a, &addrs);
        assert_eq!(alias, "twill:abc:eth0:ip=10.244.1.7,fd00:1:2::7");
        assert_eq!(
            parse(&alias),
            Ok(PortAlias {
                owner: AliasOwner::Whole(a),
                addrs
            })
        );
    }

    #[test]
    fn v0_aliases_of_older_plugins_stay_readable() {
        assert_eq!(
            parse("twill:abc:eth0"),
            Ok(PortAlias {
                owner: AliasOwner::Whole(Attachment::new("abc", "eth0")),
                addrs: vec![]
            })
        );
    }

    #[test]
    fn a_container_id_too_long_is_cut_but_the_addresses_are_kept() {
        let long = format!("k8s.io-{}", "f".repeat(400));
        let addrs = ips(&["10.244.1.250", "fd00:1:2:3:4:5:6:7"]);
        let alias = encode(&Attachment::new(long.as_str(), "eth0"), &addrs);
        assert_eq!(alias.len(), MAX_ALIAS_LEN);
        let parsed = parse(&alias).unwrap();
        assert_eq!(parsed.addrs, addrs);
        match parsed.owner {
            AliasOwner::Cut {
                container_prefix,
                ifname,
            } => {
                assert!(long.starts_with(&container_prefix));
                assert!(container_prefix.len() > 100);
                assert_eq!(ifname, "eth0");
            }
            other => panic!("expected a cut owner, got {other:?}"),
        }
    }

    #[test]
    fn only_long_container_ids_may_be_cut() {
        assert!(!may_be_cut(&Attachment::new(
            "k8s.io-".to_string() + &"f".repeat(64),
            "eth0"
        )));
        assert!(may_be_cut(&Attachment::new("f".repeat(200), "eth0")));
    }

    #[test]
    fn the_longest_id_that_fits_is_not_cut() {
        let addrs = ips(&["10.0.0.2"]);
        let tail = ":eth0:ip=10.0.0.2".len();
        let id = "a".repeat(MAX_ALIAS_LEN - PREFIX.len() - tail);
        let alias = encode(&Attachment::new(id.as_str(), "eth0"), &addrs);
        assert_eq!(alias.len(), MAX_ALIAS_LEN);
        assert!(matches!(parse(&alias).unwrap().owner, AliasOwner::Whole(_)));
    }

    #[test]
    fn foreign_and_broken_aliases_are_refused() {
        assert_eq!(parse("uplink to rack 3"), Err(AliasError::NotTwill));
        for bad in [
            "twill:",
            "twill:abc",
            "twill::eth0",
            "twill:~:eth0:ip=10.0.0.1",
            "twill:abc:eth0:10.0.0.1",
            "twill:abc:eth0:ip=10.0.0.256",
            "twill:abc:eth0:ip=",
            "twill:abc:a/b:ip=10.0.0.1",
        ] {
            assert!(
                matches!(parse(bad), Err(AliasError::Malformed { .. })),
                "{bad:?} was accepted"
            );
        }
    }
}
