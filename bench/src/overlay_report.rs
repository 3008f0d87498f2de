//! The overlay benchmark's table: like `report::table` (same columns, same layout), but a
//! row's values carry a unit, since throughput, memory and CPU are not durations, and a
//! target can be a floor ("at least 0.98x of the reference") as well as a ceiling.

use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Gbit/s (higher is better).
    Gbps,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Megabytes (10^6 bytes).
    MB,
    /// Percent of one CPU.
    CpuPct,
    /// A number of things (requests, entries); kube-registry-bench's, which
    /// overlay-bench (sharing this module) does not use.
    #[allow(dead_code)]
    Count,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Gbps => "Gbit/s",
            Unit::Ms => "ms",
            Unit::Us => "us",
            Unit::MB => "MB",
            Unit::CpuPct => "% CPU",
            Unit::Count => "count",
        }
    }

    pub fn show(self, v: f64) -> String {
        match self {
            Unit::Gbps => format!("{v:.2} Gbit/s"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::Us => format!("{v:.1} us"),
            Unit::MB => format!("{v:.1} MB"),
            Unit::CpuPct => format!("{v:.2} %"),
            Unit::Count => format!("{v:.0}"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// twill / reference must be at least this (throughput).
    MinRatio(f64),
    /// twill's value must be below this (in the row's unit).
    Below(f64),
    /// twill's value must be at most this (in the row's unit).
    AtMost(f64),
    /// Shown for information.
    None,
}

pub struct Row {
    pub metric: String,
    pub twill: f64,
    /// The reference's value in the same unit, when the row compares with one.
    pub reference: Option<f64>,
    pub unit: Unit,
    pub target: Target,
    /// When set, the ratio shown and judged instead of twill / reference: the median of
    /// per-round ratios, which a drift in the machine's load between rounds moves less.
    pub paired_ratio: Option<f64>,
}

impl Row {
    /// A row without a reference: a figure and its bound (the policy and registry
    /// benches'; overlay-bench compares every row with a reference).
    #[allow(dead_code)]
    pub fn alone(metric: impl Into<String>, twill: f64, unit: Unit, target: Target) -> Row {
        Row {
            metric: metric.into(),
            twill,
            reference: None,
            unit,
            target,
            paired_ratio: None,
        }
    }

    pub fn ratio(&self) -> Option<f64> {
        self.paired_ratio
            .or_else(|| self.reference.filter(|r| *r > 0.0).map(|r| self.twill / r))
    }

    /// `None` when the row has no target.
    pub fn pass(&self) -> Option<bool> {
        match self.target {
            Target::MinRatio(min) => Some(self.ratio().is_some_and(|r| r >= min)),
            Target::Below(limit) => Some(self.twill < limit),
            Target::AtMost(limit) => Some(self.twill <= limit),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::MinRatio(min) => format!(">= {min:.2}x"),
            Target::Below(limit) => format!("< {}", self.unit.show(limit)),
            Target::AtMost(limit) => format!("<= {}", self.unit.show(limit)),
            Target::None => "-".into(),
        }
    }

    /// How far from the target, for the summary of missed ones.
    pub fn miss_text(&self) -> Option<String> {
        match (self.pass(), self.target) {
            (Some(false), Target::MinRatio(min)) => {
                let r = self.ratio().unwrap_or(0.0);
                Some(format!(
                    "{}: {r:.3}x, {:.1} points below {min:.2}x",
                    self.metric,
                    (min - r) * 100.0
                ))
            }
            (Some(false), Target::Below(limit) | Target::AtMost(limit)) => Some(format!(
                "{}: {}, {:.0}% over {}",
                self.metric,
                self.unit.show(self.twill),
                (self.twill / limit - 1.0) * 100.0,
                self.unit.show(limit)
            )),
            _ => None,
        }
    }
}

pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                r.unit.show(r.twill),
                r.reference.map_or("-".into(), |v| r.unit.show(v)),
                r.ratio().map_or("-".into(), |x| format!("{x:.3}x")),
                r.target_text(),
                crate::report::pass_text(r.pass()).to_string(),
            ]
        })
        .collect();
    crate::report::render(crate::report::HEADER, &cells)
}

pub fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "metric": r.metric,
                    "unit": r.unit.name(),
                    "twill": r.twill,
                    "reference": r.reference,
                    "ratio": r.ratio(),
                    "ratio_is_median_of_rounds": r.paired_ratio.is_some(),
                    "target": r.target_text(),
                    "pass": r.pass(),
                })
            })
            .collect(),
    )
}

/// The median of `v` (mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// A bench's end: `title` and the table, exit 0 when no target was missed, 1 when one
/// was or the run failed (`bench` names it in the error).
#[allow(dead_code)] // overlay-bench prints a summary of its own
pub fn finish(bench: &str, title: &str, rows: anyhow::Result<Vec<Row>>) -> std::process::ExitCode {
    match rows {
        Ok(rows) => {
            println!("{title}");
            println!("{}", table(&rows));
            if rows.iter().all(|r| r.pass() != Some(false)) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("{bench}: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_targets() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let row = |twill, reference, target| Row {
            metric: "m".into(),
            twill,
            reference,
            unit: Unit::Gbps,
            target,
            paired_ratio: None,
        };
        assert_eq!(
            row(9.9, Some(10.0), Target::MinRatio(0.98)).pass(),
            Some(true)
        );
        assert_eq!(
            row(9.7, Some(10.0), Target::MinRatio(0.98)).pass(),
            Some(false)
        );
        assert_eq!(row(9.7, None, Target::MinRatio(0.98)).pass(), Some(false));
        assert_eq!(row(29.0, None, Target::Below(30.0)).pass(), Some(true));
        assert_eq!(row(1.0, None, Target::None).pass(), None);
        assert!(row(9.7, Some(10.0), Target::MinRatio(0.98))
            .miss_text()
            .unwrap()
            .contains("1.0 points below"));
    }
}
