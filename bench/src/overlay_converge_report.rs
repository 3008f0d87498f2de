//! The rows, text and JSON of the convergence part of `overlay-bench`: agent start to N
//! peer routes, one record to its route, memory and idle CPU.

use crate::overlay_converge::ConvResults;
use crate::overlay_report::{median, Row, Target, Unit};
use crate::overlay_sim_peers;
use crate::report;
use serde_json::{json, Value};
use std::time::Duration;

const CONVERGE_LIMITS_MS: [(usize, f64); 2] = [(1000, 1000.0), (5000, 3000.0)];
const RECORD_P99_LIMIT_MS: f64 = 100.0;
const RSS_LIMIT_MB: f64 = 30.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn conv_rows(c: &ConvResults) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut sizes: Vec<usize> = c.runs.iter().map(|r| r.peers).collect();
    sizes.sort_unstable();
    sizes.dedup();
    for n in sizes {
        let v: Vec<f64> = c
            .runs
            .iter()
            .filter(|r| r.peers == n)
            .map(|r| ms(r.elapsed))
            .collect();
        let floor: Vec<f64> = c
            .runs
            .iter()
            .filter(|r| r.peers == n)
            .map(|r| ms(r.floor))
            .collect();
        let target = CONVERGE_LIMITS_MS
            .iter()
            .find(|(p, _)| *p == n)
            .map_or(Target::None, |(_, l)| Target::AtMost(*l));
        rows.push(Row {
            metric: format!(
                "agent start -> {n} peer routes (median of {}); ref: bridge/ip -batch",
                v.len()
            ),
            twill: median(&v),
            reference: Some(median(&floor)),
            unit: Unit::Ms,
            target,
            paired_ratio: None,
        });
    }
    let t = &c.trials;
    let trial = |metric: String, v: &[Duration], p: f64, target| Row {
        metric,
        twill: ms(report::percentile(v, p)),
        reference: None,
        unit: Unit::Ms,
        target,
        paired_ratio: None,
    };
    let adds = format!("({} at {} peers)", t.add.len(), t.peers);
    rows.push(trial(
        format!("new record -> route, p50 {adds}"),
        &t.add,
        50.0,
        Target::None,
    ));
    rows.push(trial(
        format!("new record -> route, p99 {adds}"),
        &t.add,
        99.0,
        Target::Below(RECORD_P99_LIMIT_MS),
    ));
    rows.push(trial(
        format!("record removed -> route gone, p99 ({})", t.del.len()),
        &t.del,
        99.0,
        Target::None,
    ));
    let r = &c.resources;
    rows.push(Row {
        metric: format!("agent VmRSS at {} peers", r.peers),
        twill: r.rss_kib as f64 * 1024.0 / 1e6,
        reference: None,
        unit: Unit::MB,
        target: Target::Below(RSS_LIMIT_MB),
        paired_ratio: None,
    });
    rows.push(Row {
        metric: format!(
            "agent CPU idle, {} peers ({:.0} s, resync {}s)",
            r.peers,
            r.window.as_secs_f64(),
            r.resync_secs
        ),
        twill: r.cpu_pct,
        reference: None,
        unit: Unit::CpuPct,
        target: Target::None,
        paired_ratio: None,
    });
    rows
}

pub fn conv_text(c: &ConvResults) -> String {
    let mut out = format!("\nconvergence: {}\n", overlay_sim_peers::describe_records());
    for r in &c.runs {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|(what, at)| format!("{what} @{at:.0}"))
            .collect();
        out.push_str(&format!(
            "  {:>5} peers: {:.1} ms ({}), reference bridge/ip -batch {:.1} ms; agent log, ms after spawn: {}{}\n",
            r.peers,
            ms(r.elapsed),
            r.method,
            ms(r.floor),
            phases.join(", "),
            r.first_changes.map_or(String::new(), |n| format!(
                " (first pass: {n} kernel changes)"
            ))
        ));
    }
    let t = &c.trials;
    let pct = |v: &[Duration], p: f64| ms(report::percentile(v, p));
    out.push_str(&format!(
        "  record -> route at {} peers ({} adds): p50 {:.1} ms, p90 {:.1}, p99 {:.1}, max {:.1}; removal -> route gone: p50 {:.1}, p99 {:.1}, max {:.1}; timeouts (5 s): {}; agent CPU per record change: {:.1} ms\n",
        t.peers,
        t.add.len(),
        pct(&t.add, 50.0),
        pct(&t.add, 90.0),
        pct(&t.add, 99.0),
        pct(&t.add, 100.0),
        pct(&t.del, 50.0),
        pct(&t.del, 99.0),
        pct(&t.del, 100.0),
        t.timeouts,
        ms(t.cpu_per_change)
    ));
    let r = &c.resources;
    out.push_str(&format!(
        "  agent at {} peers: VmRSS {:.1} MB right after convergence, {:.1} MB after the single-record trials, peak (VmHWM) {:.1} MB, {} threads; idle CPU over {:.1} s: {:.2} % of one core (agent), {:.2} % (its reaped children, e.g. nft), resyncs in the window: {} (--resync {}s; the file registry also rescans its directory every 5 s)\n",
        r.peers,
        r.rss_kib_converged as f64 * 1024.0 / 1e6,
        r.rss_kib as f64 * 1024.0 / 1e6,
        r.hwm_kib as f64 * 1024.0 / 1e6,
        r.threads,
        r.window.as_secs_f64(),
        r.cpu_pct,
        r.children_cpu_pct,
        r.resyncs_in_window.map_or("unknown".into(), |n| n.to_string()),
        r.resync_secs,
    ));
    out
}

pub fn conv_json(c: &ConvResults) -> Value {
    let r = &c.resources;
    json!({
        "records": overlay_sim_peers::describe_records(),
        "runs": c.runs.iter().map(|r| json!({
            "peers": r.peers,
            "ms": ms(r.elapsed),
            "reference_batch_ms": ms(r.floor),
            "method": r.method,
            "phases_ms": r.phases.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
            "first_pass_changes": r.first_changes,
        })).collect::<Vec<_>>(),
        "record_to_route": {
            "peers": c.trials.peers,
            "add_ms": report::samples_ms(&c.trials.add),
            "del_ms": report::samples_ms(&c.trials.del),
            "timeouts": c.trials.timeouts,
            "agent_cpu_ms_per_change": ms(c.trials.cpu_per_change),
        },
        "resources": {
            "peers": r.peers,
            "rss_kib_converged": r.rss_kib_converged,
            "rss_kib": r.rss_kib,
            "hwm_kib": r.hwm_kib,
            "threads": r.threads,
            "idle_window_s": r.window.as_secs_f64(),
            "idle_cpu_pct": r.cpu_pct,
            "idle_children_cpu_pct": r.children_cpu_pct,
            "resyncs_in_window": r.resyncs_in_window,
            "resync_secs": r.resync_secs,
        },
    })
}
