//! Property tests of the parsers of outside input in this crate (issue 14 §4): they never
//! panic, take bounded time per input, name the field of every rejection, and what
//! parses re-serializes to an equivalent value. Generators: [`crate::strategies`].

mod cluster;
mod plugin;
mod port_alias;
mod subnet_file;

use crate::ConfError;
use proptest::prelude::*;

/// A rejection of a config whose `mutated` key was changed names that key, a field
/// inside it, or the other key of one of `pairs` (keys judged together).
fn assert_names(
    err: &ConfError,
    mutated: &str,
    pairs: &[(&str, &str)],
) -> Result<(), TestCaseError> {
    let key = err
        .key()
        .ok_or_else(|| TestCaseError::fail(format!("{err} names no key")))?;
    let inside = key == mutated
        || key.starts_with(&format!("{mutated}["))
        || key.starts_with(&format!("{mutated}."));
    let pair = pairs
        .iter()
        .any(|(a, b)| (mutated, key) == (*a, *b) || (mutated, key) == (*b, *a));
    prop_assert!(
        inside || pair,
        "{mutated} changed, error names {key}: {err}"
    );
    prop_assert!(err.to_string().contains(key), "{err}");
    Ok(())
}
