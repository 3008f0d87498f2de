use std::path::PathBuf;

/// A configuration that cannot be used. Every variant names the offending key or file,
/// because the operator has to find it in a conflist shared with other plugins.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("network configuration is not valid JSON: {0}")]
    Decode(String),
    #[error("network configuration must be a JSON object")]
    NotAnObject,
    #[error("missing required key {key:?}")]
    Missing { key: &'static str },
    #[error("key {key:?}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("subnet file {path}: {reason}")]
    SubnetFile { path: PathBuf, reason: String },
}

impl ConfError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The key the error is about, when it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfError::Missing { key } => Some(key),
            ConfError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}
