//! Percentiles, the comparison table and its JSON form.

use serde_json::{json, Value};
use std::time::Duration;

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; zero for none.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// twill / reference must be at most this.
    MaxRatio(f64),
    /// twill's value must be below this.
    TwillBelow(Duration),
    /// Shown for information.
    None,
}

pub struct Row {
    pub metric: String,
    pub twill: Duration,
    pub reference: Duration,
    pub target: Target,
}

impl Row {
    pub fn ratio(&self) -> Option<f64> {
        let r = self.reference.as_secs_f64();
        (r > 0.0).then(|| self.twill.as_secs_f64() / r)
    }

    /// `None` when the row has no target.
    pub fn pass(&self) -> Option<bool> {
        match self.target {
            Target::MaxRatio(max) => Some(self.ratio().is_some_and(|r| r <= max)),
            Target::TwillBelow(limit) => Some(self.twill < limit),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::MaxRatio(max) => format!("<= {max:.2}x"),
            Target::TwillBelow(limit) => format!("twill < {}", ms(limit)),
            Target::None => "-".into(),
        }
    }
}

/// The columns of every benchmark table.
pub const HEADER: [&str; 6] = [
    "metric",
    "twill",
    "reference",
    "ratio (twill/ref)",
    "target",
    "pass?",
];

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The verdict column.
pub fn pass_text(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "ok",
        Some(false) => "MISSED",
        None => "-",
    }
}

pub fn table(rows: &[Row]) -> String {
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.clone(),
                ms(r.twill),
                ms(r.reference),
                r.ratio().map_or("-".into(), |x| format!("{x:.2}x")),
                r.target_text(),
                pass_text(r.pass()).to_string(),
            ]
        })
        .collect();
    render(HEADER, &cells)
}

/// A Markdown table: the metric name left-aligned, figures right-aligned, target and
/// verdict left-aligned. Shared by the plugin and the overlay benchmarks.
pub fn render(header: [&str; 6], cells: &[[String; 6]]) -> String {
    let mut width = header.map(str::len);
    for row in cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| -> String {
        let parts: Vec<String> = row
            .iter()
            .zip(width)
            .enumerate()
            .map(|(i, (c, w))| {
                // Names left, numbers right.
                if i == 0 || i >= 4 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        format!("| {} |", parts.join(" | "))
    };
    let mut out = String::new();
    out.push_str(&line(&header.map(String::from)));
    out.push('\n');
    let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
    for row in cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

pub fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "metric": r.metric,
                    "twill_ms": r.twill.as_secs_f64() * 1e3,
                    "reference_ms": r.reference.as_secs_f64() * 1e3,
                    "ratio": r.ratio(),
                    "target": r.target_text(),
                    "pass": r.pass(),
                })
            })
            .collect(),
    )
}

pub fn samples_ms(samples: &[Duration]) -> Value {
    Value::Array(
        samples
            .iter()
            .map(|d| json!((d.as_secs_f64() * 1e6).round() / 1e3))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s: Vec<Duration> = (1..=50).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 50.0), Duration::from_millis(25));
        assert_eq!(percentile(&s, 95.0), Duration::from_millis(48));
        assert_eq!(percentile(&s[..1], 95.0), Duration::from_millis(50));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
