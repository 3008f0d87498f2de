//! Values the unit tests of every module build the same way.

use twill_conf::{Attachment, PodRange};

/// Interface eth0 of container `id`.
pub(crate) fn owner(id: &str) -> Attachment {
    Attachment::new(id, "eth0")
}

/// A range as written, unchecked: tests hand the store invalid ones too.
pub(crate) fn range(subnet: &str, gateway: &str) -> PodRange {
    PodRange {
        subnet: subnet.parse().expect("test subnet"),
        gateway: gateway.parse().expect("test gateway"),
    }
}
