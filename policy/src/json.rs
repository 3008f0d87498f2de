//! Reading fields of a `serde_json::Value` with errors that name the field.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{FieldPath, ModelError};

/// What a JSON value is, for "expected X, found Y" messages.
fn wrong_type(path: &FieldPath, expected: &'static str, found: &Value) -> ModelError {
    ModelError::WrongType {
        path: path.clone(),
        expected,
        found: found.to_string(),
    }
}

/// `value` as an object.
pub fn object<'a>(
    value: &'a Value,
    path: &FieldPath,
) -> Result<&'a Map<String, Value>, ModelError> {
    value
        .as_object()
        .ok_or_else(|| wrong_type(path, "an object", value))
}

/// Field `name` of `object`; JSON `null` counts as absent, as the API server treats it.
pub fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.get(name).filter(|value| !value.is_null())
}

/// Optional object field `name`.
pub fn opt_object<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<Option<&'a Map<String, Value>>, ModelError> {
    field(object, name)
        .map(|value| self::object(value, &path.field(name)))
        .transpose()
}

/// Optional string field `name`.
pub fn opt_str<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<Option<&'a str>, ModelError> {
    field(object, name)
        .map(|value| {
            value
                .as_str()
                .ok_or_else(|| wrong_type(&path.field(name), "a string", value))
        })
        .transpose()
}

/// Required string field `name`.
pub fn req_str<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<&'a str, ModelError> {
    opt_str(object, name, path)?.ok_or_else(|| ModelError::Missing {
        path: path.field(name),
    })
}

/// Optional list field `name`, its elements with their paths; absent is `None`.
pub fn opt_list<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<Option<Vec<(&'a Value, FieldPath)>>, ModelError> {
    let Some(value) = field(object, name) else {
        return Ok(None);
    };
    let list_path = path.field(name);
    let items = value
        .as_array()
        .ok_or_else(|| wrong_type(&list_path, "a list", value))?;
    Ok(Some(
        items
            .iter()
            .enumerate()
            .map(|(i, item)| (item, list_path.index(i)))
            .collect(),
    ))
}

/// Optional list field `name`, where absent and empty mean the same.
pub fn list<'a>(
    object: &'a Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<Vec<(&'a Value, FieldPath)>, ModelError> {
    Ok(opt_list(object, name, path)?.unwrap_or_default())
}

/// A list of strings, as `matchExpressions[].values`.
pub fn str_list(
    object: &Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<Vec<String>, ModelError> {
    list(object, name, path)?
        .into_iter()
        .map(|(value, path)| {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| wrong_type(&path, "a string", value))
        })
        .collect()
}

/// A map of string to string, as `metadata.labels` or `matchLabels`.
pub fn labels(
    object: &Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<BTreeMap<String, String>, ModelError> {
    let Some(map) = opt_object(object, name, path)? else {
        return Ok(BTreeMap::new());
    };
    let map_path = path.field(name);
    map.iter()
        .map(|(key, value)| {
            value
                .as_str()
                .map(|text| (key.clone(), text.to_string()))
                .ok_or_else(|| wrong_type(&map_path.field(key), "a string", value))
        })
        .collect()
}

/// Optional port-number field `name` (1..=65535).
pub fn opt_port(
    object: &Map<String, Value>,
    name: &str,
    path: &FieldPath,
) -> Result<Option<u16>, ModelError> {
    field(object, name)
        .map(|value| port_number(value, &path.field(name)))
        .transpose()
}

/// A port number (1..=65535).
pub fn port_number(value: &Value, path: &FieldPath) -> Result<u16, ModelError> {
    value
        .as_u64()
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n != 0)
        .ok_or_else(|| ModelError::BadValue {
            path: path.clone(),
            value: value.to_string(),
            what: "a port number (1-65535)",
        })
}
