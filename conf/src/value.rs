//! Typed access to keys of a JSON object, with errors that name the key.

use crate::ConfError;
use serde_json::{Map, Value};
use std::str::FromStr;

pub(crate) struct Keys<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Keys<'a> {
    pub(crate) fn new(map: &'a Map<String, Value>) -> Self {
        Keys {
            map,
            prefix: String::new(),
        }
    }

    pub(crate) fn nested(map: &'a Map<String, Value>, prefix: String) -> Self {
        Keys { map, prefix }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        // An explicit null means "not set", as Go's encoding/json reads it.
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// The value of `key` when it is of the type `pick` accepts; an error saying what
    /// was `expected` when it is of another.
    fn typed<T>(
        &self,
        key: &str,
        expected: &str,
        pick: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, ConfError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => pick(v).map(Some).ok_or_else(|| {
                ConfError::invalid(
                    self.path(key),
                    format!("expected {expected}, found {}", kind(v)),
                )
            }),
        }
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&'a str>, ConfError> {
        self.typed(key, "a string", Value::as_str)
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, ConfError> {
        self.typed(key, "true or false", Value::as_bool)
    }

    pub(crate) fn u32_in(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, ConfError> {
        let number = |v: &'a Value| match v {
            Value::Number(n) => Some(n),
            _ => None,
        };
        match self.typed(key, "a number", number)? {
            None => Ok(None),
            Some(n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if range.contains(&n) => Ok(Some(n)),
                _ => Err(ConfError::invalid(
                    self.path(key),
                    format!("{n} is out of range {}..={}", range.start(), range.end()),
                )),
            },
        }
    }

    pub(crate) fn parsed<T: FromStr>(&self, key: &str, what: &str) -> Result<Option<T>, ConfError>
    where
        T::Err: std::fmt::Display,
    {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s.parse::<T>().map(Some).map_err(|e| {
                ConfError::invalid(self.path(key), format!("{s:?} is not {what}: {e}"))
            }),
        }
    }

    pub(crate) fn array(&self, key: &str) -> Result<Option<&'a Vec<Value>>, ConfError> {
        self.typed(key, "a list", Value::as_array)
    }
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ConfError> {
    v.as_object()
        .ok_or_else(|| ConfError::invalid(path, format!("expected an object, found {}", kind(v))))
}
