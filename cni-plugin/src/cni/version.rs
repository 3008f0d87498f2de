use crate::cni::error::{CniError, INCOMPATIBLE_VERSION};
use std::fmt;

/// The spec versions Twill speaks. Results differ between 0.x and 1.x (the `version`
/// field of an IP) and 1.1 adds interface MTU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

pub const SUPPORTED: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    pub fn parse(s: &str) -> Result<Self, CniError> {
        SUPPORTED
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    INCOMPATIBLE_VERSION,
                    format!(
                        "incompatible CNI version {s:?}: twill supports {}",
                        SUPPORTED.map(|v| v.as_str()).join(", ")
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK came with 0.4.0.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// GC and STATUS came with 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= CniVersion::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_supported_and_rejects_others() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()).unwrap(), v);
        }
        for bad in ["0.2.0", "0.1.0", "2.0.0", "1.0", "", "latest"] {
            assert_eq!(CniVersion::parse(bad).unwrap_err().code, 1, "{bad}");
        }
    }
}
