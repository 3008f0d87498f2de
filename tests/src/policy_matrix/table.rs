//! The truth table of one probe (TCP/80, UDP/80, ...): clients in rows, targets in
//! columns, printed like the upstream e2e tests print theirs (`.` reached, `X` not).

use std::fmt::Write as _;

/// Verdicts of every client (row) towards every target (column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    /// Row-major: `cells[r * cols.len() + c]`.
    pub cells: Vec<bool>,
}

impl Table {
    /// The table whose cell (row, col) is `verdict(row, col)`.
    pub fn from_fn(
        rows: &[String],
        cols: &[String],
        mut verdict: impl FnMut(&str, &str) -> bool,
    ) -> Table {
        let cells = rows
            .iter()
            .flat_map(|r| cols.iter().map(move |c| (r, c)))
            .map(|(r, c)| verdict(r, c))
            .collect();
        Table {
            rows: rows.to_vec(),
            cols: cols.to_vec(),
            cells,
        }
    }

    pub fn get(&self, row: usize, col: usize) -> bool {
        self.cells[row * self.cols.len() + col]
    }

    /// The cells where `self` and `other` differ, as `from -> to: want .., got ..`.
    pub fn differences(&self, got: &Table) -> Vec<String> {
        let mut out = Vec::new();
        for (r, row) in self.rows.iter().enumerate() {
            for (c, col) in self.cols.iter().enumerate() {
                let (want, seen) = (self.get(r, c), got.get(r, c));
                if want != seen {
                    out.push(format!(
                        "{row} -> {col}: want {}, got {}",
                        word(want),
                        word(seen)
                    ));
                }
            }
        }
        out
    }

    /// The table as text lines: a header of column names, then one line per row.
    fn lines(&self) -> Vec<String> {
        let width = self.rows.iter().map(String::len).max().unwrap_or(0);
        let cell = self.cols.iter().map(String::len).max().unwrap_or(1);
        let mut out = Vec::new();
        let mut header = format!("{:width$}", "");
        for col in &self.cols {
            let _ = write!(header, " {col:>cell$}");
        }
        out.push(header);
        for (r, row) in self.rows.iter().enumerate() {
            let mut line = format!("{row:width$}");
            for c in 0..self.cols.len() {
                let mark = if self.get(r, c) { "." } else { "X" };
                let _ = write!(line, " {mark:>cell$}");
            }
            out.push(line);
        }
        out
    }
}

fn word(reached: bool) -> &'static str {
    if reached {
        "reached"
    } else {
        "blocked"
    }
}

/// `expected` and `observed` side by side, with a title, then the differing cells.
pub fn side_by_side(title: &str, expected: &Table, observed: &Table) -> String {
    let left = expected.lines();
    let right = observed.lines();
    let width = left.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut s = format!("{title}\n{:width$}    observed\n", "expected");
    for (l, r) in left.iter().zip(&right) {
        let _ = writeln!(s, "{l:width$}    {r}");
    }
    for d in expected.differences(observed) {
        let _ = writeln!(s, "  {d}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_the_cells_and_the_print_shows_both_tables() {
        let names: Vec<String> = ["x/a", "x/b"].iter().map(|s| s.to_string()).collect();
        let want = Table::from_fn(&names, &names, |_, _| true);
        let got = Table::from_fn(&names, &names, |r, c| r == c);
        assert_eq!(
            want.differences(&got),
            vec![
                "x/a -> x/b: want reached, got blocked",
                "x/b -> x/a: want reached, got blocked"
            ]
        );
        let text = side_by_side("TCP/80", &want, &got);
        assert!(text.contains("x/a   .   .    x/a   .   X"), "{text}");
    }
}
