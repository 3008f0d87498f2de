//! `--policy-deny-log`: the opt-in log of connections a NetworkPolicy denied.

use clap::Args;

use crate::firewall::policy::LogSettings;

#[derive(Args, Clone, Debug, Default)]
pub struct DenyLogArgs {
    /// Log connections that NetworkPolicy denies (rate-limited): the pod and direction
    /// in the prefix, addresses and ports in the packet. To the kernel log, or to an
    /// nflog group with `--policy-deny-log-group`.
    #[arg(long, env = "TWILL_POLICY_DENY_LOG")]
    pub policy_deny_log: bool,
    /// The nflog group that receives the log (for ulogd or `tcpdump -i nflog:<group>`).
    /// Without it the log goes to the kernel log, which the kernel writes only for the
    /// host's own network namespace.
    #[arg(long, env = "TWILL_POLICY_DENY_LOG_GROUP")]
    pub policy_deny_log_group: Option<u16>,
    /// At most this many log lines per second, for the whole node.
    #[arg(long, env = "TWILL_POLICY_DENY_LOG_RATE", default_value_t = 10)]
    pub policy_deny_log_rate: u32,
}

impl DenyLogArgs {
    /// What the policy table renders; `None` when the log is off.
    pub fn settings(&self) -> Result<Option<LogSettings>, String> {
        if !self.policy_deny_log {
            if self.policy_deny_log_group.is_some() {
                return Err("--policy-deny-log-group needs --policy-deny-log".into());
            }
            return Ok(None);
        }
        if self.policy_deny_log_rate == 0 {
            return Err("--policy-deny-log-rate must be at least 1 per second".into());
        }
        Ok(Some(LogSettings {
            group: self.policy_deny_log_group,
            per_second: self.policy_deny_log_rate,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        log: DenyLogArgs,
    }

    fn settings(args: &[&str]) -> Result<Option<LogSettings>, String> {
        let argv = std::iter::once("agent").chain(args.iter().copied());
        Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .log
            .settings()
    }

    #[test]
    fn off_by_default_and_on_with_a_rate_and_a_group() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(
            settings(&["--policy-deny-log"]),
            Ok(Some(LogSettings {
                group: None,
                per_second: 10
            }))
        );
        assert_eq!(
            settings(&[
                "--policy-deny-log",
                "--policy-deny-log-group",
                "5",
                "--policy-deny-log-rate",
                "2"
            ]),
            Ok(Some(LogSettings {
                group: Some(5),
                per_second: 2
            }))
        );
    }

    #[test]
    fn a_group_without_the_log_or_a_zero_rate_is_refused() {
        let e = settings(&["--policy-deny-log-group", "5"]).unwrap_err();
        assert!(e.contains("--policy-deny-log"), "{e}");
        let e = settings(&["--policy-deny-log", "--policy-deny-log-rate", "0"]).unwrap_err();
        assert!(e.contains("--policy-deny-log-rate"), "{e}");
    }
}
