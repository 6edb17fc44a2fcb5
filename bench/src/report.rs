//! The suite's figures: medians over runs, each beside its baseline and target, written
//! as one Markdown table.

use std::collections::BTreeMap;

/// Named figures of one run (or the medians over runs).
pub type Figures = BTreeMap<&'static str, f64>;

/// What a row promises: a bound on its ratio to the baseline, or on the figure itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    RatioAtLeast(f64),
    RatioAtMost(f64),
    AtMost(f64),
}

/// One row of the table: where its figure and baseline come from, and its target.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub figure: &'static str,
    pub key: &'static str,
    pub unit: &'static str,
    pub baseline: Option<(&'static str, &'static str)>,
    pub target: Option<Target>,
}

/// The median of each figure over the runs that measured it.
pub fn medians(runs: &[Figures]) -> Figures {
    let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (key, value) in run {
            values.entry(key).or_default().push(*value);
        }
    }
    values
        .into_iter()
        .map(|(key, mut all)| {
            all.sort_by(f64::total_cmp);
            let middle = all.len() / 2;
            let median = if all.len().is_multiple_of(2) {
                (all[middle - 1] + all[middle]) / 2.0
            } else {
                all[middle]
            };
            (key, median)
        })
        .collect()
}

/// Whether `value` (with `ratio` to its baseline) meets `target`.
pub fn met(target: Target, value: f64, ratio: Option<f64>) -> bool {
    match target {
        Target::RatioAtLeast(bound) => ratio.is_some_and(|r| r >= bound),
        Target::RatioAtMost(bound) => ratio.is_some_and(|r| r <= bound),
        Target::AtMost(bound) => value <= bound,
    }
}

fn number(value: f64) -> String {
    if value >= 100.0 {
        let whole = value.round() as u64;
        let digits = whole.to_string();
        let mut grouped = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        grouped
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn target_text(target: Target, unit: &str) -> String {
    match target {
        Target::RatioAtLeast(bound) => format!("≥ {bound}x"),
        Target::RatioAtMost(bound) => format!("≤ {bound}x"),
        Target::AtMost(bound) => format!("≤ {} {unit}", number(bound)),
    }
}

/// The table: one line per row, figures from `figures` (medians); a row this run did
/// not measure says so.
pub fn table(rows: &[Row], figures: &Figures, command: &str) -> String {
    let mut out = String::from(
        "| figure | measured | baseline | ratio | target | met | command |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let Some(&value) = figures.get(row.key) else {
            out.push_str(&format!(
                "| {} | not measured in this run | | | | | |\n",
                row.figure
            ));
            continue;
        };
        let baseline = row
            .baseline
            .and_then(|(key, label)| figures.get(key).map(|b| (label, *b)));
        let ratio = baseline.map(|(_, b)| value / b);
        let (target, verdict) = match row.target {
            Some(target) => (
                target_text(target, row.unit),
                if met(target, value, ratio) {
                    "yes"
                } else {
                    "**no**"
                },
            ),
            None => ("".to_owned(), ""),
        };
        out.push_str(&format!(
            "| {} | {} {} | {} | {} | {target} | {verdict} | `{command}` |\n",
            row.figure,
            number(value),
            row.unit,
            baseline.map_or(String::new(), |(label, b)| format!(
                "{label}: {}",
                number(b)
            )),
            ratio.map_or(String::new(), |r| format!("{r:.3}")),
        ));
    }
    out
}

/// Markers around the generated part of `docs/BENCHMARKS.md`.
pub const BEGIN: &str = "<!-- bench:table:begin (written by workpool-bench --write) -->";
pub const END: &str = "<!-- bench:table:end -->";

/// `document` with the text between the markers replaced by `generated` (the markers
/// are added at the end if missing).
pub fn splice(document: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{generated}{END}");
    match (document.find(BEGIN), document.find(END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{block}{}",
            &document[..begin],
            &document[end + END.len()..]
        ),
        _ => format!("{}\n{block}\n", document.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_and_an_even_count() {
        let runs: Vec<Figures> = [3.0, 1.0, 2.0]
            .iter()
            .map(|v| Figures::from([("a", *v)]))
            .collect();
        assert_eq!(medians(&runs)["a"], 2.0);
        let even: Vec<Figures> = [4.0, 1.0, 2.0, 3.0]
            .iter()
            .map(|v| Figures::from([("a", *v)]))
            .collect();
        assert_eq!(medians(&even)["a"], 2.5);
    }

    #[test]
    fn targets_bound_the_ratio_or_the_figure() {
        assert!(met(Target::RatioAtLeast(0.15), 1.0, Some(0.2)));
        assert!(!met(Target::RatioAtLeast(0.15), 1.0, Some(0.1)));
        assert!(!met(Target::RatioAtLeast(0.15), 1.0, None));
        assert!(met(Target::RatioAtMost(3.0), 1.0, Some(2.9)));
        assert!(met(Target::AtMost(20.0), 19.5, None));
        assert!(!met(Target::AtMost(20.0), 20.5, None));
    }

    #[test]
    fn a_row_shows_its_baseline_ratio_and_verdict() {
        let rows = [Row {
            figure: "end to end",
            key: "e2e",
            unit: "jobs/s",
            baseline: Some(("raw", "raw publish")),
            target: Some(Target::RatioAtLeast(0.15)),
        }];
        let figures = Figures::from([("e2e", 3556.0), ("raw", 94582.0)]);
        let text = table(&rows, &figures, "make bench");
        assert!(
            text.contains(
                "| end to end | 3,556 jobs/s | raw publish: 94,582 | 0.038 | ≥ 0.15x | **no** | `make bench` |"
            ),
            "{text}"
        );
    }

    #[test]
    fn splicing_replaces_only_the_generated_block() {
        let first = splice("# Benchmarks\n\nprose\n", "table 1\n");
        assert!(first.starts_with("# Benchmarks\n\nprose\n"));
        let second = splice(&format!("{first}\nmore prose\n"), "table 2\n");
        assert!(second.contains("table 2") && !second.contains("table 1"));
        assert!(second.contains("more prose") && second.contains("prose\n"));
    }
}
