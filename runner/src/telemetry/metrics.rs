//! The run's metrics, computed once when the run ends from its state
//! (every phase of both boots is recorded there) and written as one
//! OTLP/JSON `MetricsData` line to `metrics.jsonl`, which the exporter
//! ships like the spans.
//!
//! Points are DELTA (each run adds its own observations): ferry's
//! processes are short-lived, so cumulative series would restart with every
//! process. A collector turns them into Prometheus counters with its
//! `deltatocumulative` processor (see `dashboards/otelcol.yaml`).
//! The resource is low-cardinality (service, version, host): the run id is
//! on spans, not on metrics.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

use super::names::{self, DURATION_BOUNDS_S};
use super::otlp_file::attr;
use crate::state::{PhaseResult, RunDir, RunState};

const DELTA: u64 = 1;

/// `cicd.pipeline.result` for ferry's outcome.
pub fn pipeline_result(result: &str) -> &'static str {
    match result {
        "succeeded" => "success",
        "cancelled" => "cancellation",
        "timeout" => "timeout",
        // The run's process ended without a result: the janitor ended it.
        "died" => "error",
        _ => "failure",
    }
}

#[derive(Default)]
struct Hist {
    start: u64,
    end: u64,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    buckets: Vec<u64>,
}

impl Hist {
    fn observe(&mut self, start: u64, end: u64, secs: f64) {
        if self.count == 0 {
            self.start = start;
            self.min = secs;
            self.max = secs;
            self.buckets = vec![0; DURATION_BOUNDS_S.len() + 1];
        }
        self.start = self.start.min(start);
        self.end = self.end.max(end);
        self.count += 1;
        self.sum += secs;
        self.min = self.min.min(secs);
        self.max = self.max.max(secs);
        let i = DURATION_BOUNDS_S
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BOUNDS_S.len());
        self.buckets[i] += 1;
    }

    fn point(&self, attributes: Vec<Value>) -> Value {
        json!({
            "attributes": attributes,
            "startTimeUnixNano": self.start.to_string(),
            "timeUnixNano": self.end.to_string(),
            "count": self.count.to_string(),
            "sum": self.sum,
            "bucketCounts": self.buckets.iter().map(u64::to_string).collect::<Vec<_>>(),
            "explicitBounds": DURATION_BOUNDS_S,
            "min": self.min,
            "max": self.max,
        })
    }
}

fn histogram(m: &names::Metric, points: Vec<Value>) -> Value {
    json!({
        "name": m.name, "unit": m.unit, "description": m.description,
        "histogram": { "dataPoints": points, "aggregationTemporality": DELTA },
    })
}

fn counter(m: &names::Metric, start: u64, end: u64, value: i64, attributes: Vec<Value>) -> Value {
    json!({
        "name": m.name, "unit": m.unit, "description": m.description,
        "sum": {
            "dataPoints": [{
                "attributes": attributes,
                "startTimeUnixNano": start.to_string(),
                "timeUnixNano": end.to_string(),
                "asInt": value.to_string(),
            }],
            "aggregationTemporality": DELTA,
            "isMonotonic": true,
        },
    })
}

/// What a run adds to the metrics, as one `MetricsData` document.
pub fn run_metrics(
    state: &RunState,
    result: &str,
    error_type: Option<&str>,
    shipped: &[(String, u64)],
    now: u64,
) -> Value {
    let pipeline = pipeline_result(result);
    let mut metrics = Vec::new();

    let mut run = Hist::default();
    let start = state.start_unix_nano.min(now);
    run.observe(start, now, (now - start) as f64 / 1e9);
    let mut run_attrs = vec![
        attr(names::ATTR_PIPELINE_NAME, names::PIPELINE_NAME),
        attr(names::ATTR_PIPELINE_RUN_STATE, "executing"),
        attr(names::ATTR_PIPELINE_RESULT, pipeline),
    ];
    if let Some(e) = error_type {
        run_attrs.push(attr(names::ATTR_ERROR_TYPE, e));
    }
    metrics.push(histogram(
        &names::METRIC_RUN_DURATION,
        vec![run.point(run_attrs)],
    ));

    if pipeline != "success" {
        metrics.push(counter(
            &names::METRIC_RUN_ERRORS,
            start,
            now,
            1,
            vec![
                attr(names::ATTR_PIPELINE_NAME, names::PIPELINE_NAME),
                attr(names::ATTR_ERROR_TYPE, error_type.unwrap_or("_OTHER")),
            ],
        ));
    }

    // Phases: start and end come from one process on one boot.
    let mut phases: BTreeMap<(String, &'static str, Option<String>), Hist> = BTreeMap::new();
    for p in &state.phases {
        let Some(end) = p.end_unix_nano else { continue };
        let outcome = match p.result {
            PhaseResult::Ok => "success",
            PhaseResult::Failed => "failure",
            PhaseResult::Skipped => "skip",
            PhaseResult::Running => continue,
        };
        let secs = end.saturating_sub(p.start_unix_nano) as f64 / 1e9;
        phases
            .entry((p.name.clone(), outcome, p.error_type.clone()))
            .or_default()
            .observe(p.start_unix_nano, end.max(p.start_unix_nano), secs);
    }
    if !phases.is_empty() {
        let points = phases
            .iter()
            .map(|((name, outcome, error), h)| {
                let mut a = vec![
                    attr(names::ATTR_TASK_NAME, name),
                    attr(names::ATTR_TASK_RUN_RESULT, outcome),
                ];
                if let Some(e) = error {
                    a.push(attr(names::ATTR_ERROR_TYPE, e));
                }
                h.point(a)
            })
            .collect();
        metrics.push(histogram(&names::METRIC_PHASE_DURATION, points));
    }

    for (backend, bytes) in shipped {
        metrics.push(counter(
            &names::METRIC_SHIPPED_BYTES,
            start,
            now,
            *bytes as i64,
            vec![
                attr(names::ATTR_SHIP_BACKEND, backend),
                attr(names::ATTR_PIPELINE_RESULT, pipeline),
            ],
        ));
    }

    document(&super::service_name(state), &state.host, metrics)
}

fn document(service: &str, host: &str, metrics: Vec<Value>) -> Value {
    json!({
        "resourceMetrics": [{
            "resource": { "attributes": [
                attr(names::ATTR_SERVICE_NAME, service),
                attr(names::ATTR_SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
                attr(names::ATTR_HOST_NAME, host),
            ]},
            "scopeMetrics": [{
                "scope": { "name": "ferry", "version": env!("CARGO_PKG_VERSION") },
                "metrics": metrics,
            }],
        }]
    })
}

/// What one look at the spool adds: its depth (a gauge), the evictions
/// and quarantines of that moment, and the bytes `ferry ship` shipped
/// (by then the run that made them has ended: no pipeline result).
pub fn spool_metrics(
    service: &str,
    host: &str,
    report: &crate::shipping::SpoolTally,
    start: u64,
    now: u64,
) -> Value {
    let depth_points = [
        ("bundle", report.waiting.bundles),
        ("page", report.waiting.pages),
    ]
    .map(|(kind, n)| {
        json!({
            "attributes": [attr(names::ATTR_SPOOL_KIND, kind)],
            "timeUnixNano": now.to_string(),
            "asInt": n.to_string(),
        })
    });
    let mut metrics = vec![json!({
        "name": names::METRIC_SPOOL_DEPTH.name,
        "unit": names::METRIC_SPOOL_DEPTH.unit,
        "description": names::METRIC_SPOOL_DEPTH.description,
        "gauge": { "dataPoints": depth_points },
    })];
    for (reason, n) in &report.evicted {
        metrics.push(counter(
            &names::METRIC_SPOOL_EVICTED,
            start,
            now,
            *n as i64,
            vec![attr(names::ATTR_SPOOL_REASON, reason)],
        ));
    }
    if report.quarantined > 0 {
        metrics.push(counter(
            &names::METRIC_SPOOL_QUARANTINED,
            start,
            now,
            report.quarantined as i64,
            vec![],
        ));
    }
    for (backend, bytes) in &report.shipped {
        metrics.push(counter(
            &names::METRIC_SHIPPED_BYTES,
            start,
            now,
            *bytes as i64,
            vec![attr(names::ATTR_SHIP_BACKEND, backend)],
        ));
    }
    document(service, host, metrics)
}

/// Append the run's metrics to its `metrics.jsonl` (opened and closed
/// here, like the trace file). `run` may also be the directory `ferry ship`
/// keeps its own metrics in.
pub fn record(run: &RunDir, doc: &Value) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(super::export::metrics_file(run))?;
    f.write_all(format!("{doc}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_map_to_the_conventions() {
        assert_eq!(pipeline_result("succeeded"), "success");
        assert_eq!(pipeline_result("failed"), "failure");
        assert_eq!(pipeline_result("called_off"), "failure");
        assert_eq!(pipeline_result(crate::janitor::DIED), "error");
    }

    #[test]
    fn the_resource_is_the_listed_one() {
        let state = RunState::example();
        let doc = run_metrics(&state, "failed", Some("x"), &[("dir".into(), 3)], 2);
        let keys: Vec<&str> = doc["resourceMetrics"][0]["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, names::METRIC_RESOURCE_ATTRIBUTES);
    }

    #[test]
    fn spool_metrics_use_listed_names_and_attributes() {
        let mut tally = crate::shipping::SpoolTally {
            waiting: ferry_uploaders::spool::Waiting {
                bundles: 3,
                pages: 2,
            },
            quarantined: 1,
            ..Default::default()
        };
        tally.evicted.insert("oldest".into(), 2);
        tally.shipped.insert("dir".into(), 42);
        let doc = spool_metrics("ferry", "h", &tally, 1, 2);
        let metrics = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
            .as_array()
            .unwrap();
        let mut seen = Vec::new();
        for m in metrics {
            let name = m["name"].as_str().unwrap();
            let listed = names::ALL_METRICS.iter().find(|l| l.name == name).unwrap();
            let points = m["gauge"]["dataPoints"]
                .as_array()
                .or(m["sum"]["dataPoints"].as_array())
                .unwrap();
            for p in points {
                for a in p["attributes"].as_array().unwrap() {
                    let key = a["key"].as_str().unwrap();
                    assert!(listed.attributes.contains(&key), "{name}: {key}");
                }
            }
            for p in points {
                seen.push((name, p["asInt"].as_str().unwrap().to_string()));
            }
        }
        assert_eq!(
            seen,
            [
                ("ferry.spool.depth", "3".to_string()),
                ("ferry.spool.depth", "2".to_string()),
                ("ferry.spool.evicted", "2".to_string()),
                ("ferry.spool.quarantined", "1".to_string()),
                ("ferry.ship.bytes", "42".to_string()),
            ]
        );
    }

    #[test]
    fn histogram_buckets_add_up() {
        let mut h = Hist::default();
        h.observe(1, 2, 0.01);
        h.observe(1, 3, 7.0);
        h.observe(1, 3, 1e6);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets.iter().sum::<u64>(), 3);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(*h.buckets.last().unwrap(), 1);
        assert_eq!(h.end, 3);
    }
}
