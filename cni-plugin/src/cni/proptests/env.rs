//! The `CNI_*` environment variables, `CNI_ARGS` and version strings.

use crate::cni::env::{parse_args, Command, Env};
use crate::cni::error::{INCOMPATIBLE_VERSION, INVALID_ENV};
use crate::cni::version::{CniVersion, SUPPORTED};
use proptest::prelude::*;
use std::collections::HashMap;
use twill_conf::strategies::{bounded, config, hostile_string, raw_bytes};

const VARS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_IFNAME",
    "CNI_NETNS",
    "CNI_ARGS",
];

fn good(command: &str) -> HashMap<String, String> {
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "abc-1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn from_vars(vars: &HashMap<String, String>) -> Result<Env, crate::cni::CniError> {
    bounded("Env::from_vars", || {
        Env::from_vars(|k| vars.get(k).cloned())
    })
}

/// A CNI_ARGS key: anything without `;` and `=`, at least one character.
fn arg_key() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_]{1,16}", "[^;=]{1,24}"]
}

proptest! {
    #![proptest_config(config())]

    /// One variable of a good set changed or removed: accepted, or refused with code 4
    /// naming that variable.
    #[test]
    fn one_mutated_variable_is_named(
        command in prop::sample::select(vec!["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]),
        var in prop::sample::select(VARS),
        value in prop::option::of(hostile_string()),
    ) {
        let mut vars = good(command);
        match value {
            Some(v) => vars.insert(var.to_string(), v),
            None => vars.remove(var),
        };
        if let Err(e) = from_vars(&vars) {
            prop_assert_eq!(e.code, INVALID_ENV);
            prop_assert!(e.msg.contains(var), "{} changed: {}", var, e.msg);
        }
    }

    #[test]
    fn any_variables_are_accepted_or_refused_with_code_4(
        values in prop::collection::vec(prop::option::of(hostile_string()), VARS.len()),
    ) {
        let vars: HashMap<String, String> = VARS
            .iter()
            .zip(values)
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
        match from_vars(&vars) {
            Ok(env) => {
                let per_container = matches!(env.command, Command::Add | Command::Del | Command::Check);
                prop_assert!(!per_container || twill_conf::valid_ifname(&env.attachment.ifname).is_ok());
            }
            Err(e) => {
                prop_assert_eq!(e.code, INVALID_ENV);
                prop_assert!(VARS.iter().any(|v| e.msg.contains(v)), "{}", e.msg);
            }
        }
    }

    #[test]
    fn cni_args_round_trip(pairs in prop::collection::vec((arg_key(), "[^;]{0,24}"), 0..8)) {
        let raw = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let parsed = bounded("parse_args", || parse_args(&raw))
            .map_err(|e| TestCaseError::fail(format!("{raw:?}: {e}")))?;
        prop_assert_eq!(parsed, pairs);
    }

    #[test]
    fn any_cni_args_parse_or_name_the_variable(raw in prop_oneof![
        hostile_string(),
        "[a-z=;]{0,32}",
        raw_bytes(b"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p".to_vec())
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]) {
        match bounded("parse_args", || parse_args(&raw)) {
            Ok(pairs) => {
                for (k, v) in pairs {
                    prop_assert!(!k.is_empty() && !k.contains(';') && !v.contains(';'));
                    let pair = format!("{k}={v}");
                    prop_assert!(raw.contains(&pair), "{pair:?} is not in {raw:?}");
                }
            }
            Err(e) => {
                prop_assert_eq!(e.code, INVALID_ENV);
                prop_assert!(e.msg.starts_with("CNI_ARGS: "), "{}", e.msg);
            }
        }
    }

    #[test]
    fn versions_parse_only_when_supported(s in hostile_string()) {
        match bounded("CniVersion::parse", || CniVersion::parse(&s)) {
            Ok(v) => prop_assert_eq!(v.as_str(), s.as_str()),
            Err(e) => {
                prop_assert_eq!(e.code, INCOMPATIBLE_VERSION);
                prop_assert!(!SUPPORTED.iter().any(|v| v.as_str() == s));
            }
        }
    }

    /// VERSION answers whatever stdin holds, and names only a version it speaks.
    #[test]
    fn version_answers_any_stdin(stdin in raw_bytes(br#"{"cniVersion": "1.0.0", "name": "n"}"#.to_vec())) {
        let v = bounded("version_info", || crate::version_info(&stdin));
        let answered = v["cniVersion"].as_str().unwrap_or_default();
        prop_assert!(CniVersion::parse(answered).is_ok(), "{v}");
        let _ = bounded("error_version", || crate::error_version(&stdin));
    }
}
