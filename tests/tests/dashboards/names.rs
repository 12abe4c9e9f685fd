//! ferry's list of names (`ferry::telemetry::names`) as the dashboards'
//! queries see them: Prometheus series and labels through the collector's
//! translation, Jaeger operations and tags as Jaeger shows them.

use std::collections::BTreeSet;

use ferry::telemetry::names::{self, Instrument, Metric};
use promql_parser::parser::{self, Expr};
use serde_json::Value;

/// Grafana's own variables (`$__rate_interval`, `${__value.raw}`, …).
const BUILTIN_VARIABLES: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__all",
    "__value",
    "__field",
    "__series",
    "__data",
    "__url_time_range",
    "__dashboard",
    "__org",
    "__user",
    "__timezone",
];

/// Labels Prometheus or the collector's exporter put on every series.
const SERIES_LABELS: &[&str] = &["job", "instance"];

/// The variables a dashboard defines.
#[derive(Debug, Default, Clone)]
pub struct VarScope(BTreeSet<String>);

impl VarScope {
    pub fn insert(&mut self, name: &str) -> bool {
        self.0.insert(name.to_string())
    }

    pub fn known(&self, name: &str) -> bool {
        self.0.contains(name) || BUILTIN_VARIABLES.contains(&name)
    }

    /// `text` with every variable reference replaced by something PromQL
    /// parses in its place: a duration for Grafana's intervals, a plain
    /// word for the dashboard's own (they only appear inside strings).
    fn substitute(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in ["__rate_interval", "__interval", "__range"] {
            out = out
                .replace(&format!("${{{v}}}"), "5m")
                .replace(&format!("${v}"), "5m");
        }
        for v in &self.0 {
            out = out
                .replace(&format!("${{{v}}}"), "x")
                .replace(&format!("${v}"), "x");
        }
        out
    }
}

/// One Prometheus series name ferry's metrics give, and its metric.
struct Series {
    name: String,
    metric: Metric,
    bucket: bool,
}

pub struct Catalog {
    series: Vec<Series>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

impl Catalog {
    pub fn new() -> Catalog {
        let mut series = Vec::new();
        for m in names::ALL_METRICS {
            let base = names::prometheus_name(m);
            if m.instrument == Instrument::Histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.push(Series {
                        name: format!("{base}{suffix}"),
                        metric: *m,
                        bucket: suffix == "_bucket",
                    });
                }
            } else {
                series.push(Series {
                    name: base,
                    metric: *m,
                    bucket: false,
                });
            }
        }
        Catalog { series }
    }

    fn series(&self, name: &str) -> Option<&Series> {
        self.series.iter().find(|s| s.name == name)
    }

    /// The labels a series of ferry's carries at the Prometheus end.
    fn labels(&self, s: &Series) -> BTreeSet<String> {
        let mut l: BTreeSet<String> = s
            .metric
            .attributes
            .iter()
            .chain(names::METRIC_RESOURCE_ATTRIBUTES)
            .map(|a| names::prometheus_label(a))
            .collect();
        l.extend(SERIES_LABELS.iter().map(|s| s.to_string()));
        if s.bucket {
            l.insert("le".into());
        }
        l
    }

    /// The OTLP metric names a set of queries reach.
    pub fn metrics_in(&self, exprs: &[String]) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        for e in exprs {
            let Ok(ast) = parser::parse(&VarScope::default().substitute(e)) else {
                continue;
            };
            let mut found = Vec::new();
            selectors(&ast, &mut found);
            for name in found {
                if let Some(s) = self.series(&name) {
                    out.insert(s.metric.name);
                }
            }
        }
        out
    }

    /// Problems with one Prometheus target: its PromQL parses, every
    /// series and label it names is one of ferry's, and so is every label
    /// its legend prints.
    pub fn check_prometheus_target(&self, t: &Value, scope: &VarScope) -> Vec<String> {
        let Some(expr) = t["expr"].as_str() else {
            return vec!["no expr".into()];
        };
        let (mut problems, labels) = self.check_promql(expr, scope);
        let legend = t["legendFormat"].as_str().unwrap_or("");
        for l in legend_labels(legend) {
            if !labels.contains(&l) {
                problems.push(format!(
                    "legend {{{{{l}}}}} is not a label of the query's series"
                ));
            }
        }
        problems
    }

    /// Problems with a PromQL expression, and the labels its series carry.
    pub fn check_promql(&self, expr: &str, scope: &VarScope) -> (Vec<String>, BTreeSet<String>) {
        let mut problems = Vec::new();
        let ast = match parser::parse(&scope.substitute(expr)) {
            Ok(a) => a,
            Err(e) => {
                return (
                    vec![format!("PromQL does not parse: {e}: {expr}")],
                    BTreeSet::new(),
                );
            }
        };
        let labels = self.walk(&ast, &mut problems);
        (problems, labels.unwrap_or_default())
    }

    /// The labels the series under `e` carry (None: no series at all, a
    /// literal), with each selector, grouping and matching label checked.
    fn walk(&self, e: &Expr, problems: &mut Vec<String>) -> Option<BTreeSet<String>> {
        match e {
            Expr::VectorSelector(vs) => self.selector(vs, problems),
            Expr::MatrixSelector(ms) => self.selector(&ms.vs, problems),
            Expr::Aggregate(a) => {
                let inner = self.walk(&a.expr, problems);
                if let Some(p) = &a.param {
                    self.walk(p, problems);
                }
                let inner = inner?;
                match &a.modifier {
                    Some(m) => {
                        for l in &m.labels().labels {
                            if !inner.contains(l) {
                                problems.push(format!(
                                    "grouping label {l} is not on the aggregated series"
                                ));
                            }
                        }
                        Some(if m.is_include() {
                            m.labels().labels.iter().cloned().collect()
                        } else {
                            inner
                                .into_iter()
                                .filter(|l| !m.labels().labels.contains(l))
                                .collect()
                        })
                    }
                    None => Some(BTreeSet::new()),
                }
            }
            Expr::Binary(b) => {
                let l = self.walk(&b.lhs, problems);
                let r = self.walk(&b.rhs, problems);
                if let Some(m) = &b.modifier {
                    let both: BTreeSet<String> = l
                        .iter()
                        .flatten()
                        .chain(r.iter().flatten())
                        .cloned()
                        .collect();
                    let mut named: Vec<&String> = Vec::new();
                    if let Some(on) = &m.matching {
                        named.extend(&on.labels().labels);
                    }
                    if let Some(extra) = m.card.labels() {
                        named.extend(&extra.labels);
                    }
                    for n in named {
                        if !both.contains(n) {
                            problems.push(format!("matching label {n} is on neither side"));
                        }
                    }
                }
                match (l, r) {
                    (Some(a), Some(b)) => Some(a.intersection(&b).cloned().collect()),
                    (a, b) => a.or(b),
                }
            }
            Expr::Paren(p) => self.walk(&p.expr, problems),
            Expr::Unary(u) => self.walk(&u.expr, problems),
            Expr::Subquery(s) => self.walk(&s.expr, problems),
            Expr::Call(c) => {
                let mut out = None;
                for a in &c.args.args {
                    if let Some(l) = self.walk(a, problems) {
                        out = Some(l);
                    }
                }
                // histogram_quantile consumes `le`.
                if c.func.name == "histogram_quantile"
                    && let Some(l) = &mut out
                    && !l.remove("le")
                {
                    problems.push(
                        "histogram_quantile over series without `le` (sum by (le, …) of a _bucket)"
                            .into(),
                    );
                }
                out
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => None,
        }
    }

    fn selector(
        &self,
        vs: &promql_parser::parser::VectorSelector,
        problems: &mut Vec<String>,
    ) -> Option<BTreeSet<String>> {
        let name = vs.name.clone().or_else(|| {
            vs.matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        });
        let Some(name) = name else {
            problems.push("a selector without a metric name".into());
            return None;
        };
        let Some(series) = self.series(&name) else {
            problems.push(format!(
                "series {name} is not one of ferry's metrics (names.rs, through prometheus_name)"
            ));
            return None;
        };
        let labels = self.labels(series);
        for m in vs
            .matchers
            .matchers
            .iter()
            .chain(vs.matchers.or_matchers.iter().flatten())
        {
            if m.name != "__name__" && !labels.contains(&m.name) {
                problems.push(format!("label {} is not on {name}", m.name));
            }
        }
        Some(labels)
    }

    /// `label_values(<selector>, <label>)`, the Prometheus variable query.
    pub fn check_label_values(&self, query: &str) -> Vec<String> {
        let q = query.trim();
        let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        else {
            return vec![format!("not a label_values(metric, label) query: {q}")];
        };
        let Some((sel, label)) = args.rsplit_once(',') else {
            return vec![format!("label_values needs a metric and a label: {q}")];
        };
        let (mut problems, labels) = self.check_promql(sel.trim(), &VarScope::default());
        let label = label.trim();
        if problems.is_empty() && !labels.contains(label) {
            problems.push(format!("label {label} is not on {}", sel.trim()));
        }
        problems
    }

    /// Problems with one Jaeger target: the operation is a span ferry
    /// emits, every tag is an attribute it sets (or one Jaeger derives).
    pub fn check_jaeger_target(&self, t: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        match t["queryType"].as_str() {
            None | Some("") => {
                if t["query"].as_str().is_none_or(|q| q.trim().is_empty()) {
                    problems.push("a trace-id query without a trace id".into());
                }
            }
            Some("search") => {
                if t["service"].as_str().is_none_or(|s| s.trim().is_empty()) {
                    problems.push("a search without a service".into());
                }
                if let Some(op) = t["operation"].as_str()
                    && !names::all_span_names().contains(&op)
                    && !op.starts_with(names::SPAN_EXEC_PREFIX)
                {
                    problems.push(format!("operation {op:?} is not a span ferry emits"));
                }
                match logfmt_keys(t["tags"].as_str().unwrap_or("")) {
                    Ok(keys) => {
                        for k in keys {
                            if !names::ALL_ATTRIBUTES.contains(&k.as_str())
                                && !names::JAEGER_TAGS.contains(&k.as_str())
                            {
                                problems.push(format!("tag {k} is not an attribute ferry sets"));
                            }
                        }
                    }
                    Err(e) => problems.push(e),
                }
                if !t["limit"].is_null() && !t["limit"].is_u64() {
                    problems.push(format!("limit {} is not a number", t["limit"]));
                }
            }
            Some(other) => problems.push(format!("query type {other:?} is not checked here")),
        }
        problems
    }
}

/// The selectors (metric name, matchers) under `e`.
fn selectors(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::VectorSelector(vs) => {
            if let Some(n) = &vs.name {
                out.push(n.clone());
            }
        }
        Expr::MatrixSelector(ms) => {
            if let Some(n) = &ms.vs.name {
                out.push(n.clone());
            }
        }
        Expr::Aggregate(a) => selectors(&a.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
        _ => {}
    }
}

/// `{{label}}` placeholders of a legend.
fn legend_labels(legend: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = legend;
    while let Some(i) = rest.find("{{") {
        let Some(j) = rest[i..].find("}}") else { break };
        out.push(rest[i + 2..i + j].trim().to_string());
        rest = &rest[i + j + 2..];
    }
    out
}

/// The keys of a logfmt string (`k=v k2="v 2"`), as Jaeger's tag search
/// reads it.
fn logfmt_keys(s: &str) -> Result<Vec<String>, String> {
    let mut keys = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else {
            return Err(format!("tags {s:?}: {rest:?} has no value"));
        };
        let key = &rest[..eq];
        if key.is_empty() || key.contains([' ', '"']) {
            return Err(format!("tags {s:?}: bad key {key:?}"));
        }
        keys.push(key.to_string());
        rest = &rest[eq + 1..];
        if let Some(quoted) = rest.strip_prefix('"') {
            let Some(end) = quoted.find('"') else {
                return Err(format!("tags {s:?}: unclosed quote"));
            };
            rest = quoted[end + 1..].trim_start();
        } else {
            rest = rest.find(' ').map_or("", |i| rest[i..].trim_start());
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_keys_read_like_jaeger() {
        assert_eq!(
            logfmt_keys(r#"a=1 b.c="x y" error=true"#).unwrap(),
            vec!["a", "b.c", "error"]
        );
        assert!(logfmt_keys("novalue").is_err());
        assert!(logfmt_keys(r#"a="open"#).is_err());
    }

    #[test]
    fn legend_placeholders() {
        assert_eq!(legend_labels("{{a}} and {{ b }}"), vec!["a", "b"]);
    }
}
