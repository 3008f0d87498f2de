use serde_json::json;
use std::fmt;

// Well-known codes of the spec.
pub const INCOMPATIBLE_VERSION: u32 = 1;
pub const UNKNOWN_CONTAINER: u32 = 3;
pub const INVALID_ENV: u32 = 4;
pub const IO_FAILURE: u32 = 5;
pub const DECODE_FAILURE: u32 = 6;
pub const INVALID_CONFIG: u32 = 7;
pub const TRY_AGAIN_LATER: u32 = 11;
pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
// Twill's own codes (the spec leaves 100 and up to plugins).
/// The node's pod subnet has no free address.
pub const NO_FREE_ADDRESS: u32 = 100;
/// CHECK found the pod's network different from its previous result.
pub const CHECK_DRIFT: u32 = 101;
/// A kernel operation failed; Go plugins use the same number for internal errors.
pub const INTERNAL: u32 = 999;

/// The error a runtime receives on stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = json!(self.details);
        }
        v
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<twill_conf::ConfError> for CniError {
    fn from(e: twill_conf::ConfError) -> Self {
        let code = match e {
            twill_conf::ConfError::Decode(_) => DECODE_FAILURE,
            _ => INVALID_CONFIG,
        };
        CniError::new(code, e.to_string())
    }
}

/// Every kernel operation the plugin does fails the same way: internal, with the
/// operation and the kernel's reason in the message.
impl From<twill_netlink::NetlinkError> for CniError {
    fn from(e: twill_netlink::NetlinkError) -> Self {
        CniError::new(INTERNAL, e.to_string())
    }
}
