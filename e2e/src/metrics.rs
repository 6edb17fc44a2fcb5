//! Reading Prometheus' text exposition format and the chart's Grafana dashboard, for tests
//! that check what the components expose and what the dashboard asks for.

use std::collections::BTreeMap;

/// One metric family's `# TYPE` and `# HELP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    pub kind: String,
    pub help: String,
    /// The label names its samples carry.
    pub labels: Vec<String>,
}

/// The families of a `/metrics` answer, by name.
pub fn families(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    fn entry<'a>(families: &'a mut BTreeMap<String, Family>, name: &str) -> &'a mut Family {
        families.entry(name.to_owned()).or_insert(Family {
            kind: String::new(),
            help: String::new(),
            labels: Vec::new(),
        })
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            entry(&mut families, name).help = help.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            entry(&mut families, name).kind = kind.to_owned();
        } else if !line.starts_with('#') && !line.is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let sample = &line[..name_end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| sample.strip_suffix(suffix))
                .filter(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
                .unwrap_or(sample)
                .to_owned();
            let labels = line[name_end..]
                .strip_prefix('{')
                .and_then(|rest| rest.split_once('}'))
                .map(|(labels, _)| label_names(labels))
                .unwrap_or_default();
            let family = entry(&mut families, &family);
            for label in labels {
                if label != "le" && !family.labels.contains(&label) {
                    family.labels.push(label);
                }
            }
        }
    }
    families
}

/// The sum of the samples of `name` over all its label sets in a `/metrics` answer; 0 for
/// none.
pub fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Label names of `a="x",b="y, z"` (values may hold commas and escaped quotes).
fn label_names(labels: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        names.push(name.trim_start_matches(',').trim().to_owned());
        let mut escaped = false;
        let end = after
            .char_indices()
            .find(|(_, c)| {
                let closes = *c == '"' && !escaped;
                escaped = *c == '\\' && !escaped;
                closes
            })
            .map_or(after.len(), |(at, _)| at + 1);
        rest = &after[end..];
    }
    names
}

/// Every PromQL expression in a Grafana dashboard (panel targets and template queries).
pub fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut queries = Vec::new();
    collect_queries(dashboard, &mut queries);
    queries
}

fn collect_queries(value: &serde_json::Value, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr" | "query", serde_json::Value::String(query)) => {
                        into.push(query.clone());
                    }
                    _ => collect_queries(inner, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, into)),
        _ => {}
    }
}

/// The `workpool_*` metric names a PromQL expression uses, as written (`_bucket` kept).
pub fn metric_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(at) = rest.find("workpool_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_takes_every_label_set_of_the_name_and_no_other_name() {
        let text = "# TYPE a_total counter\na_total{task=\"x\"} 2\na_total{task=\"y\"} 3\na_total_more 7\nb 1\n";
        assert_eq!(sum_of(text, "a_total"), 5.0);
        assert_eq!(sum_of(text, "b"), 1.0);
        assert_eq!(sum_of(text, "c"), 0.0);
    }

    #[test]
    fn families_carry_kind_help_and_label_names() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\na_total{pool=\"p, \\\"q\\\"\",task=\"t\"} 1\n\
                    # HELP h_seconds Time.\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 0\nh_seconds_sum 0\nh_seconds_count 0\n";
        let families = families(text);
        assert_eq!(families["a_total"].kind, "counter");
        assert_eq!(families["a_total"].help, "Things.");
        assert_eq!(families["a_total"].labels, ["pool", "task"]);
        assert_eq!(families["h_seconds"].kind, "histogram");
        assert!(!families.contains_key("h_seconds_bucket"));
    }

    #[test]
    fn metric_names_are_found_in_promql() {
        assert_eq!(
            metric_names(
                "histogram_quantile(0.9, sum by (le) (rate(workpool_x_bucket{a=\"b\"}[5m]))) / workpool_y"
            ),
            ["workpool_x_bucket", "workpool_y"]
        );
    }
}
