//! Processes the overlay benchmark runs inside namespaces (iperf3, ping), the guard
//! that kills a long-lived one when dropped, and the stop flag set by SIGINT/SIGTERM so
//! that an interrupted run still unwinds and deletes its namespaces.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use twill_tests::Netns;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set the stop flag instead of killing the benchmark: the run then
/// fails at its next check and every namespace is deleted on the way out.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

pub fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps, waking early (with an error) when a stop was requested.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_stop()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

/// argv inside `ns` under `timeout -s KILL`, so a hung tool cannot hang the benchmark.
pub fn output_in(ns: &Netns, limit: Duration, argv: &[&str]) -> Result<Output> {
    check_stop()?;
    let secs = format!("{}", limit.as_secs().max(1));
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "timeout", "-s", "KILL", &secs])
        .args(argv)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", argv.join(" ")))?;
    check_stop()?;
    Ok(out)
}

/// A process started in a namespace, killed (SIGKILL) and reaped on drop.
pub struct Guarded {
    child: Child,
}

impl Guarded {
    pub fn spawn_in(ns: &Netns, argv: &[&str]) -> Result<Guarded> {
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `{}` in {}", argv.join(" "), ns.name()))?;
        Ok(Guarded { child })
    }

    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const IPERF_PORT: u16 = 5201;

/// An `iperf3 -s` in `ns`, listening when this returns.
pub fn iperf3_server(ns: &Netns) -> Result<Guarded> {
    let port = IPERF_PORT.to_string();
    let mut g = Guarded::spawn_in(ns, &["iperf3", "-s", "-p", &port])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!(":{port}");
    loop {
        let out = output_in(
            ns,
            Duration::from_secs(5),
            &["ss", "-Hltn", "sport", "=", &filter],
        )?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(g);
        }
        if g.exited() {
            bail!("iperf3 -s in {} exited at once", ns.name());
        }
        if Instant::now() > deadline {
            bail!("iperf3 -s in {} is not listening after 10 s", ns.name());
        }
        sleep(Duration::from_millis(50))?;
    }
}

/// One TCP stream for `secs` seconds from `client` to `server_ip`; the receiver's rate
/// in Gbit/s. With two CPUs or more the client runs on CPU 0 and the server on CPU 1
/// (`-A 0,1`) for every path alike: a veth delivers in the sender's context, so where
/// the two ends land decides more of a figure than the path does when left to chance.
pub fn iperf3(client: &Netns, server_ip: &str, secs: u32) -> Result<f64> {
    let t = secs.to_string();
    let port = IPERF_PORT.to_string();
    let mut argv = vec![
        "iperf3",
        "-c",
        server_ip,
        "-p",
        &port,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if std::thread::available_parallelism().map_or(1, usize::from) >= 2 {
        argv.extend(["-A", "0,1"]);
    }
    let out = output_in(client, Duration::from_secs(u64::from(secs) + 20), &argv)?;
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 to {server_ip} from {}: no JSON (status {}): {}",
            client.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 to {server_ip} from {}: {e}", client.name());
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 to {server_ip}: no end.sum_received in its JSON"))?;
    Ok(bps / 1e9)
}

#[derive(Clone, Copy, Debug)]
pub struct PingStats {
    pub avg_ms: f64,
    pub mdev_ms: f64,
    pub min_ms: f64,
}

/// `ping -q -c count -i interval`: average, deviation and minimum RTT. Fails on loss.
pub fn ping(from: &Netns, to: &str, count: u32, interval: &str) -> Result<PingStats> {
    let c = count.to_string();
    let deadline = Duration::from_secs(u64::from(count) / 50 + 10);
    let w = deadline.as_secs().to_string();
    let out = output_in(
        from,
        deadline + Duration::from_secs(5),
        &["ping", "-q", "-n", "-c", &c, "-i", interval, "-w", &w, to],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "ping {to} from {} failed: {} {}",
            from.name(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ping(&text).with_context(|| format!("cannot parse ping's summary: {text}"))
}

/// `rtt min/avg/max/mdev = 0.031/0.045/0.120/0.010 ms`, and no loss.
fn parse_ping(text: &str) -> Option<PingStats> {
    let loss_ok = text.contains(" 0% packet loss");
    let line = text.lines().find(|l| l.contains("min/avg/max"))?;
    let nums: Vec<f64> = line
        .split('=')
        .nth(1)?
        .split_whitespace()
        .next()?
        .split('/')
        .map(|x| x.parse().ok())
        .collect::<Option<Vec<f64>>>()?;
    (loss_ok && nums.len() == 4).then(|| PingStats {
        min_ms: nums[0],
        avg_ms: nums[1],
        mdev_ms: nums[3],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary() {
        let t = "--- 10.0.0.1 ping statistics ---\n200 packets transmitted, 200 received, 0% packet loss, time 598ms\nrtt min/avg/max/mdev = 0.031/0.045/0.120/0.010 ms\n";
        let s = parse_ping(t).unwrap();
        assert_eq!((s.min_ms, s.avg_ms, s.mdev_ms), (0.031, 0.045, 0.010));
        assert!(parse_ping(&t.replace(" 0% packet loss", " 10% packet loss")).is_none());
    }
}
