//! What the benchmark reads about a running agent from outside: resident memory and CPU
//! ticks from /proc, a counter from its /metrics, and the start-up phases in its log.

use crate::overlay_proc;
use anyhow::{bail, Context, Result};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use twill_tests::Netns;

pub fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// (utime+stime, cutime+cstime) in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = s
        .rsplit_once(')')
        .map(|x| x.1)
        .context("odd /proc/pid/stat")?;
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the state: ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime.
    if f.len() < 14 {
        bail!("short /proc/{pid}/stat");
    }
    Ok((f[10] + f[11], f[12] + f[13]))
}

/// A counter from the agent's /metrics, fetched inside its namespace.
pub fn metric(ns: &Netns, name: &str) -> Option<u64> {
    let out = overlay_proc::output_in(
        ns,
        Duration::from_secs(5),
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            "http://127.0.0.1:9473/metrics",
        ],
    )
    .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|v| v as u64)
}

/// Markers in the agent's log, with the ms after `wall0` of their first line.
pub fn phases(log: &str, wall0: SystemTime) -> (Vec<(String, f64)>, Option<u64>) {
    const MARKERS: [(&str, &str); 6] = [
        ("process up, underlay found", ": starting"),
        ("subnet leased (registry join)", ": joined the registry"),
        ("CNI files written", ": wrote the CNI files"),
        ("nftables rules installed", ": nftables rules installed"),
        ("VXLAN device created", ": created the VXLAN device"),
        ("first 'programmed' (pass done)", ": programmed changes="),
    ];
    let mut out = Vec::new();
    let mut changes = None;
    for (label, marker) in MARKERS {
        let hit = log.lines().find_map(|l| {
            let ts = parse_rfc3339(l.split_whitespace().next()?)?;
            let after = ts.duration_since(wall0).ok()?;
            l.contains(marker).then_some((after, l))
        });
        if let Some((after, line)) = hit {
            out.push((label.to_string(), after.as_secs_f64() * 1e3));
            if marker.contains("programmed") {
                changes = line
                    .split("changes=")
                    .nth(1)
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok());
            }
        }
    }
    out.sort_by(|a, b| a.1.total_cmp(&b.1));
    (out, changes)
}

/// `2026-11-22T20:16:17.123456Z` (tracing-subscriber's default timestamps).
fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos: u32 = format!("{digits:0<9}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = parse_rfc3339("1970-01-02T00:00:01.5Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(86_401_500)
        );
        let t = parse_rfc3339("2024-03-01T12:00:00.000001Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_709_294_400
        );
    }
}
