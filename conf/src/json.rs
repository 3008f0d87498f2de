//! Decoding a JSON document into a typed struct with an error that names the field:
//! `subnets[1]: invalid IP address syntax` rather than serde's bare reason, so that an
//! operator finds the bad value in a file another program wrote.

use serde::de::DeserializeOwned;

/// A document that does not decode; `field` is the path of the offending value
/// (`subnets[1]`, `publicIP`), or empty when the document as a whole is at fault (not
/// JSON, or a key missing or unknown, which the reason names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct JsonError {
    pub field: String,
    pub reason: String,
}

/// Decodes `bytes` as `T`, accepting exactly what `serde_json::from_slice` accepts.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let known = e
            .path()
            .iter()
            .any(|s| !matches!(s, serde_path_to_error::Segment::Unknown));
        let field = if known {
            e.path().to_string()
        } else {
            String::new()
        };
        JsonError {
            field,
            reason: e.into_inner().to_string(),
        }
    })?;
    // As from_slice: nothing but whitespace may follow the document.
    de.end().map_err(|e| JsonError {
        field: String::new(),
        reason: e.to_string(),
    })?;
    Ok(value)
}
