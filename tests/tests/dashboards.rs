//! `dashboards/` checked without Docker, Grafana or Prometheus: each
//! dashboard is valid for its schema version and queries only names from
//! `ferry::telemetry::names`; the compose stack's files agree with each
//! other. The checkers are tested on broken copies too, so a check that
//! cannot fail shows up here.

#[path = "dashboards/grafana.rs"]
mod grafana;
#[path = "dashboards/names.rs"]
mod names;
#[path = "dashboards/stack.rs"]
mod stack;

use std::path::{Path, PathBuf};

use ferry::telemetry::names as ferry_names;
use serde_json::{Value, json};

use names::Catalog;
use stack::Stack;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn stack() -> Stack {
    Stack::load(&dir()).unwrap()
}

fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(dir().join("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn dashboard(file: &str) -> Value {
    dashboards()
        .into_iter()
        .find(|(f, _)| f == file)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no dashboard {file}"))
}

fn problems(d: &Value) -> Vec<String> {
    grafana::check(d, &stack().data_sources(), &Catalog::new())
}

#[test]
fn every_dashboard_is_valid_and_queries_only_ferrys_names() {
    let all = dashboards();
    let files: Vec<&str> = all.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(files, ["ferry-overview.json", "ferry-run.json"]);
    let mut uids = std::collections::BTreeSet::new();
    for (file, d) in &all {
        let p = problems(d);
        assert!(p.is_empty(), "{file}:\n{}", p.join("\n"));
        assert!(
            uids.insert(d["uid"].as_str().unwrap().to_string()),
            "{file}: uid reused"
        );
    }
}

#[test]
fn the_overview_shows_every_metric_ferry_emits() {
    let d = dashboard("ferry-overview.json");
    let reached = Catalog::new().metrics_in(&grafana::exprs(&d));
    for m in ferry_names::ALL_METRICS {
        assert!(reached.contains(m.name), "no panel shows {}", m.name);
    }
    let titles: Vec<&str> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["title"].as_str())
        .collect();
    for t in [
        "Runs by result",
        "Phase duration p50",
        "Phase duration p95",
        "Failures by kind",
        "Bytes shipped",
        "Spool depth",
    ] {
        assert!(titles.contains(&t), "no panel {t:?}: {titles:?}");
    }
}

#[test]
fn the_run_dashboard_finds_a_trace_by_run_id() {
    let d = dashboard("ferry-run.json");
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        vars.contains(&"run_id") && vars.contains(&"trace_id"),
        "{vars:?}"
    );
    let panels = d["panels"].as_array().unwrap();
    let trace = panels
        .iter()
        .find(|p| p["type"] == "traces")
        .expect("a traces panel");
    assert_eq!(trace["targets"][0]["query"], "$trace_id");
    let by_run = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .any(|t| {
            t["tags"].as_str().is_some_and(|s| {
                s.contains(&format!(
                    "{}=\"$run_id\"",
                    ferry_names::ATTR_PIPELINE_RUN_ID
                ))
            })
        });
    assert!(
        by_run,
        "no query finds the run by {}",
        ferry_names::ATTR_PIPELINE_RUN_ID
    );
}

#[test]
fn the_compose_stack_fits_together() {
    let p = stack().check();
    assert!(p.is_empty(), "{}", p.join("\n"));
}

// The checkers themselves: each broken copy must be caught, by name.

fn overview() -> Value {
    dashboard("ferry-overview.json")
}

/// The first target of the first panel with a Prometheus query.
fn first_prom_target(d: &mut Value) -> &mut Value {
    d["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|p| p["datasource"]["type"] == "prometheus")
        .map(|p| &mut p["targets"][0])
        .unwrap()
}

fn assert_caught(d: &Value, needle: &str) {
    let p = problems(d);
    assert!(
        p.iter().any(|l| l.contains(needle)),
        "expected a problem naming {needle:?}, got: {p:#?}"
    );
}

#[test]
fn an_unknown_metric_fails() {
    let mut d = overview();
    first_prom_target(&mut d)["expr"] =
        json!("sum(increase(ferry_phase_duration_secs_bucket[$__range]))");
    assert_caught(&d, "ferry_phase_duration_secs_bucket");
    // The OTLP name is not the Prometheus one either.
    let mut d = overview();
    first_prom_target(&mut d)["expr"] = json!("sum(ferry.spool.depth)");
    assert!(!problems(&d).is_empty());
    // A histogram has no bare series.
    let mut d = overview();
    first_prom_target(&mut d)["expr"] = json!("sum(ferry_phase_duration_seconds)");
    assert_caught(&d, "ferry_phase_duration_seconds");
}

#[test]
fn an_unknown_label_fails_in_grouping_matchers_and_legends() {
    let mut d = overview();
    first_prom_target(&mut d)["expr"] =
        json!("sum by (phase) (increase(ferry_phase_duration_seconds_count[$__range]))");
    assert_caught(&d, "grouping label phase");
    let mut d = overview();
    first_prom_target(&mut d)["expr"] =
        json!(r#"sum(increase(cicd_pipeline_run_errors_total{result="failure"}[$__range]))"#);
    assert_caught(&d, "label result");
    // A label of another metric.
    let mut d = overview();
    first_prom_target(&mut d)["expr"] = json!(
        "sum by (cicd_pipeline_task_name) (increase(cicd_pipeline_run_errors_total[$__range]))"
    );
    assert_caught(&d, "grouping label cicd_pipeline_task_name");
    let mut d = overview();
    let t = first_prom_target(&mut d);
    t["expr"] = json!("sum by (error_type) (increase(cicd_pipeline_run_errors_total[$__range]))");
    t["legendFormat"] = json!("{{cicd_pipeline_result}}");
    assert_caught(&d, "legend {{cicd_pipeline_result}}");
    // histogram_quantile needs `le`.
    let mut d = overview();
    first_prom_target(&mut d)["expr"] = json!(
        "histogram_quantile(0.9, sum by (cicd_pipeline_task_name) (rate(ferry_phase_duration_seconds_bucket[5m])))"
    );
    assert_caught(&d, "histogram_quantile");
}

#[test]
fn bad_promql_and_undefined_variables_fail() {
    let mut d = overview();
    first_prom_target(&mut d)["expr"] = json!("sum(rate(ferry_ship_bytes_total[5m])");
    assert_caught(&d, "does not parse");
    let mut d = overview();
    first_prom_target(&mut d)["expr"] = json!(r#"sum(ferry_spool_depth{host_name=~"$hots"})"#);
    assert_caught(&d, "undefined variable $hots");
}

#[test]
fn unknown_span_and_attribute_names_fail_in_jaeger_queries() {
    let mut d = dashboard("ferry-run.json");
    jaeger_search(&mut d)["operation"] = json!("ferry.runs");
    assert_caught(&d, "operation \"ferry.runs\"");
    let mut d = dashboard("ferry-run.json");
    jaeger_search(&mut d)["tags"] = json!("cicd.pipeline.run_id=\"$run_id\"");
    assert_caught(&d, "tag cicd.pipeline.run_id");
    let mut d = dashboard("ferry-run.json");
    jaeger_search(&mut d)["servce"] = json!("ferry");
    assert_caught(&d, "unknown key \"servce\"");
}

/// The first Jaeger search target of a dashboard.
fn jaeger_search(d: &mut Value) -> &mut Value {
    d["panels"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .flat_map(|p| p["targets"].as_array_mut().into_iter().flatten())
        .find(|t| t["queryType"] == "search")
        .unwrap()
}

#[test]
fn structural_mistakes_fail() {
    let mut d = overview();
    d["schemaVersion"] = json!(27);
    assert_caught(&d, "schemaVersion 27");

    let mut d = overview();
    let id = d["panels"][0]["id"].clone();
    d["panels"][1]["id"] = id;
    assert_caught(&d, "reuses id");

    let mut d = overview();
    d["panels"][1]["gridPos"] = d["panels"][0]["gridPos"].clone();
    assert_caught(&d, "overlap");

    let mut d = overview();
    d["panels"][0]["gridPos"]["w"] = json!(20);
    d["panels"][0]["gridPos"]["x"] = json!(10);
    assert_caught(&d, "gridPos");

    let mut d = overview();
    d["panels"][0]["datasource"]["uid"] = json!("my-prometheus");
    assert_caught(&d, "\"my-prometheus\" is not provisioned");

    let mut d = overview();
    d["panels"][0]["datasource"] = json!("Prometheus");
    assert_caught(&d, "is not a {type, uid} reference");

    let mut d = overview();
    d["panels"][0]["targets"] = json!([]);
    assert_caught(&d, "has no targets");

    let mut d = overview();
    d["panels"][0]["type"] = json!("graph");
    assert_caught(&d, "unknown type \"graph\"");

    let mut d = overview();
    d["templating"]["list"][0]["query"]["query"] =
        json!("label_values(cicd_pipeline_run_duration_seconds_count, hostname)");
    assert_caught(&d, "label hostname");
}

#[test]
fn stack_mismatches_fail() {
    let caught = |s: &Stack, needle: &str| {
        let p = s.check();
        assert!(
            p.iter().any(|l| l.contains(needle)),
            "expected {needle:?}, got {p:#?}"
        );
    };
    let mut s = stack();
    s.otelcol["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = json!("0.0.0.0:4319");
    caught(&s, "not port 4318");

    let mut s = stack();
    s.prometheus["scrape_configs"][0]["static_configs"][0]["targets"] = json!(["collector:8889"]);
    caught(&s, "Prometheus scrapes");

    let mut s = stack();
    s.otelcol["service"]["pipelines"]["metrics"]["processors"] = json!(["batch"]);
    caught(&s, "deltatocumulative");

    let mut s = stack();
    s.otelcol["service"]["pipelines"]["traces"]["exporters"] = json!(["otlp/tempo"]);
    caught(&s, "undefined exporters otlp/tempo");

    let mut s = stack();
    s.providers["providers"][0]["options"]["path"] = json!("/etc/dashboards");
    caught(&s, "reads Some(\"/etc/dashboards\")");

    let mut s = stack();
    s.datasources["datasources"][1]["url"] = json!("http://jaeger:14268");
    caught(&s, "not the jaeger service's port 16686");

    let mut s = stack();
    s.compose["services"]["grafana"]["image"] = json!("grafana/grafana:latest");
    caught(&s, "no pinned version");

    let mut s = stack();
    s.compose["services"]["otel-collector"]["volumes"] =
        json!(["./otelcol.yml:/etc/otelcol/config.yaml:ro"]);
    caught(&s, "mounts ./otelcol.yml, which does not exist");
}
