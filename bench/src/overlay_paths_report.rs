//! The rows, text and JSON of the paths part of `overlay-bench`: throughput and latency
//! per path, and the subject/reference ratios the issue sets targets on.

use crate::overlay_paths::{PathId, PathResults, PathSpec, ALL};
use crate::overlay_report::{median, Row, Target, Unit};
use serde_json::{json, Value};

/// Targets from the issue: (b)/(cf) and (d)/(e).
const VXLAN_MIN_RATIO: f64 = 0.98;
const DIRECT_MIN_RATIO: f64 = 0.98;

fn gbps(p: &PathResults, id: PathId) -> f64 {
    median(&p.get(id).gbps)
}

/// Median of the per-round average RTTs, in microseconds.
fn rtt_us(p: &PathResults, id: PathId) -> f64 {
    let v: Vec<f64> = p.get(id).ping.iter().map(|s| s.avg_ms * 1e3).collect();
    median(&v)
}

/// Per-round ratios x/y of a path pair, throughput or average RTT.
fn round_ratios(p: &PathResults, x: PathId, y: PathId, rtt: bool) -> Vec<f64> {
    let v = |id: PathId| -> Vec<f64> {
        if rtt {
            p.get(id).ping.iter().map(|s| s.avg_ms).collect()
        } else {
            p.get(id).gbps.clone()
        }
    };
    v(x).iter().zip(v(y)).map(|(a, b)| a / b).collect()
}

pub fn path_rows(p: &PathResults) -> Vec<Row> {
    use PathId::*;
    let tp = |metric: &str, s: PathId, r: PathId, target| Row {
        metric: format!("throughput {metric}"),
        twill: gbps(p, s),
        reference: Some(gbps(p, r)),
        unit: Unit::Gbps,
        target,
        paired_ratio: Some(median(&round_ratios(p, s, r, false))),
    };
    let lat = |metric: &str, s: PathId, r: PathId| Row {
        metric: format!("ping RTT avg {metric}"),
        twill: rtt_us(p, s),
        reference: Some(rtt_us(p, r)),
        unit: Unit::Us,
        target: Target::None,
        paired_ratio: Some(median(&round_ratios(p, s, r, true))),
    };
    vec![
        tp(
            "(b) Twill VXLAN pods / (cf) hand-built VXLAN, flannel's rules",
            B,
            Cf,
            Target::MinRatio(VXLAN_MIN_RATIO),
        ),
        tp(
            "(d) Twill direct-routed pods / (e) hand-built direct",
            D,
            E,
            Target::MinRatio(DIRECT_MIN_RATIO),
        ),
        tp(
            "(b) Twill VXLAN pods / (c) hand-built, no nftables",
            B,
            C,
            Target::None,
        ),
        tp(
            "(cf) flannel's rules / (c) no nftables",
            Cf,
            C,
            Target::None,
        ),
        tp(
            "(cr) flannel's rules + vxlan_notrack / (cf)",
            Cr,
            Cf,
            Target::None,
        ),
        tp("(b0) Twill VXLAN, ipMasq false / (c)", B0, C, Target::None),
        tp(
            "(d) Twill direct / (ef) hand-built direct, flannel's rules",
            D,
            Ef,
            Target::None,
        ),
        tp("(d0) Twill direct, ipMasq false / (e)", D0, E, Target::None),
        tp(
            "(ef) flannel's rules / (e) no nftables, direct",
            Ef,
            E,
            Target::None,
        ),
        tp("(d) Twill direct / (a) underlay", D, A, Target::None),
        tp("(e) hand-built direct / (a) underlay", E, A, Target::None),
        tp("(c) hand-built VXLAN / (a) underlay", C, A, Target::None),
        tp(
            "(a') underlay of a Twill node / (a) underlay",
            A2,
            A,
            Target::None,
        ),
        lat(
            "(b) Twill VXLAN / (cf) hand-built VXLAN, flannel's rules",
            B,
            Cf,
        ),
        lat("(b) Twill VXLAN / (c) hand-built VXLAN, no nftables", B, C),
        lat("(d) Twill direct / (e) hand-built direct", D, E),
        lat("(d) Twill direct / (a) underlay", D, A),
        lat("(c) hand-built VXLAN / (a) underlay", C, A),
    ]
}

fn list(v: &[f64], prec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.prec$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn paths_text(p: &PathResults, spec: &PathSpec, sockperf: bool) -> String {
    let mut out = format!(
        "\npaths: iperf3 -t {} (one TCP stream), {} interleaved rounds (ratios in the table: median of the per-round ratios); latency: ping -c {} -i {}{}; every VXLAN device: tx checksum offload {}, outer UDP checksum {}\n",
        spec.secs,
        spec.reps,
        spec.pings,
        spec.ping_interval,
        if sockperf {
            " (sockperf is installed; ping used for every path alike)"
        } else {
            " (sockperf is not installed)"
        },
        on_off(p.vxlan_settings.0),
        on_off(p.vxlan_settings.1),
    );
    for id in ALL {
        let s = p.get(id);
        let avg: Vec<f64> = s.ping.iter().map(|x| x.avg_ms * 1e3).collect();
        let mdev: Vec<f64> = s.ping.iter().map(|x| x.mdev_ms * 1e3).collect();
        let min: Vec<f64> = s.ping.iter().map(|x| x.min_ms * 1e3).collect();
        out.push_str(&format!(
            "  {:<48} Gbit/s [{}] median {:.2}; RTT avg us [{}] median {:.1}, mdev median {:.1}, min median {:.1}\n",
            id.describe(),
            list(&s.gbps, 2),
            median(&s.gbps),
            list(&avg, 1),
            median(&avg),
            median(&mdev),
            median(&min),
        ));
    }
    // Each round measured a subject and its reference within seconds of each other.
    for (x, y) in [
        (PathId::B, PathId::Cf),
        (PathId::B, PathId::C),
        (PathId::Cf, PathId::C),
        (PathId::Cr, PathId::Cf),
        (PathId::B0, PathId::C),
        (PathId::D, PathId::E),
        (PathId::D, PathId::Ef),
        (PathId::D0, PathId::E),
        (PathId::Ef, PathId::E),
        (PathId::D, PathId::A),
        (PathId::E, PathId::A),
        (PathId::A2, PathId::A),
    ] {
        let r = round_ratios(p, x, y, false);
        let l = round_ratios(p, x, y, true);
        out.push_str(&format!(
            "  per-round ratio {}/{}: throughput [{}] median {:.3} (ratio of medians {:.3}); RTT [{}] median {:.3}\n",
            x.key(),
            y.key(),
            list(&r, 3),
            median(&r),
            gbps(p, x) / gbps(p, y),
            list(&l, 2),
            median(&l)
        ));
    }
    out
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub fn paths_json(p: &PathResults) -> Value {
    let mut m = serde_json::Map::new();
    for id in ALL {
        let s = p.get(id);
        m.insert(
            id.key().to_string(),
            json!({
                "path": id.describe(),
                "gbps": s.gbps,
                "rtt_avg_us": s.ping.iter().map(|x| x.avg_ms * 1e3).collect::<Vec<_>>(),
                "rtt_mdev_us": s.ping.iter().map(|x| x.mdev_ms * 1e3).collect::<Vec<_>>(),
                "rtt_min_us": s.ping.iter().map(|x| x.min_ms * 1e3).collect::<Vec<_>>(),
            }),
        );
    }
    json!({
        "samples": m,
        "vxlan_tx_checksum_offload": p.vxlan_settings.0,
        "vxlan_udp_checksum": p.vxlan_settings.1,
        "twill_node_nft_ruleset": p.twill_nft,
        "twill_node_nft_ruleset_ipmasq_false": p.twill_nft_nomasq,
    })
}
