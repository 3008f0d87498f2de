//! The CNI_* environment variables, validated per command.

use crate::cni::error::{CniError, INVALID_ENV};
use std::path::PathBuf;
use twill_conf::Attachment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// What the runtime told us through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// CNI_CONTAINERID and CNI_IFNAME: present for ADD, DEL and CHECK, empty otherwise.
    pub attachment: Attachment,
    /// `None` when unset or empty (a DEL after the container exited).
    pub netns: Option<PathBuf>,
    pub args: Vec<(String, String)>,
}

impl Env {
    /// Reads only CNI_COMMAND: VERSION must answer without touching anything else.
    pub fn command(get: &impl Fn(&str) -> Option<String>) -> Result<Command, CniError> {
        let raw = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(INVALID_ENV, "CNI_COMMAND is not set"))?;
        Command::parse(&raw).ok_or_else(|| {
            CniError::new(
                INVALID_ENV,
                format!("CNI_COMMAND {raw:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
            )
        })
    }

    /// Reads and validates the variables `command` needs. `get` is `std::env::var` in the
    /// binary and a map in tests.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = Self::command(&get)?;
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = Env {
            command,
            attachment: Attachment::new("", ""),
            netns: None,
            args: Vec::new(),
        };
        if !per_container {
            return Ok(env);
        }
        let container_id = required(&get, "CNI_CONTAINERID")?;
        check_container_id(&container_id)?;
        let ifname = required(&get, "CNI_IFNAME")?;
        twill_conf::valid_ifname(&ifname)
            .map_err(|r| CniError::new(INVALID_ENV, format!("CNI_IFNAME: {r}")))?;
        env.attachment = Attachment::new(container_id, ifname);
        env.netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        match (&env.netns, command) {
            (None, Command::Add | Command::Check) => {
                return Err(CniError::new(INVALID_ENV, "CNI_NETNS is not set"));
            }
            (Some(p), _) if !p.is_absolute() => {
                return Err(CniError::new(
                    INVALID_ENV,
                    format!(
                        "CNI_NETNS {:?} is not an absolute path",
                        p.display().to_string()
                    ),
                ));
            }
            _ => {}
        }
        env.args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        Ok(env)
    }
}

fn required(get: &impl Fn(&str) -> Option<String>, name: &str) -> Result<String, CniError> {
    match get(name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(INVALID_ENV, format!("{name} is not set"))),
    }
}

/// The spec: alphanumeric first, then alphanumerics, `_`, `.` and `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            INVALID_ENV,
            format!(
                "CNI_CONTAINERID {id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
            ),
        ))
    }
}

pub(super) fn parse_args(raw: &str) -> Result<Vec<(String, String)>, CniError> {
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                INVALID_ENV,
                format!("CNI_ARGS: {pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| m.get(k).cloned())
    }

    const GOOD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn add_with_all_variables() {
        let e = env(&GOOD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.attachment, Attachment::new("abc-1", "eth0"));
        assert_eq!(e.netns.unwrap(), PathBuf::from("/run/netns/x"));
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (vec![], "CNI_COMMAND"),
            (vec![("CNI_COMMAND", "PUT")], "CNI_COMMAND"),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "-x"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0123456789012"),
                    ("CNI_NETNS", "/x"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "rel/x"),
                ],
                "CNI_NETNS",
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                    ("CNI_ARGS", "K8S_POD_NAME"),
                ],
                "CNI_ARGS",
            ),
        ];
        for (vars, name) in cases {
            let err = env(&vars).unwrap_err();
            assert_eq!(err.code, 4, "{vars:?}");
            assert!(err.msg.contains(name), "{vars:?}: {}", err.msg);
        }
    }

    #[test]
    fn del_accepts_empty_netns() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert_eq!(e.netns, None);
    }

    #[test]
    fn gc_needs_no_container() {
        assert_eq!(env(&[("CNI_COMMAND", "GC")]).unwrap().command, Command::Gc);
    }
}
