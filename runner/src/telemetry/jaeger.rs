//! OTLP/JSON lines to Jaeger's native JSON (`{"data": [trace…]}`), the
//! format the Jaeger UI's "JSON File" upload reads in the browser, without
//! a backend and with any Jaeger version (its OTLP upload needs a query
//! service new enough to convert).
//!
//! Times are microseconds; span kind, status and the instrumentation scope
//! become the tags Jaeger's own OTLP receiver gives them (`span.kind`,
//! `error`, `otel.status_code`, `otel.status_description`,
//! `otel.scope.name`), and each distinct resource (one per boot: the boot
//! id and kernel differ) becomes one process.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::names;

fn u64_of(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn tag(key: &str, v: &Value) -> Value {
    if let Some(s) = v.get("stringValue") {
        json!({"key": key, "type": "string", "value": s.as_str().unwrap_or("")})
    } else if let Some(b) = v.get("boolValue") {
        json!({"key": key, "type": "bool", "value": b.as_bool().unwrap_or(false)})
    } else if let Some(i) = v.get("intValue") {
        let n = match i {
            Value::String(s) => s.parse::<i64>().unwrap_or(0),
            other => other.as_i64().unwrap_or(0),
        };
        json!({"key": key, "type": "int64", "value": n})
    } else if let Some(d) = v.get("doubleValue") {
        json!({"key": key, "type": "float64", "value": d.as_f64().unwrap_or(0.0)})
    } else {
        json!({"key": key, "type": "string", "value": v.to_string()})
    }
}

fn tags(attrs: &Value) -> Vec<Value> {
    attrs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some(tag(a["key"].as_str()?, &a["value"])))
        .collect()
}

fn string_tag(key: &str, value: &str) -> Value {
    json!({"key": key, "type": "string", "value": value})
}

fn kind_name(kind: u64) -> Option<&'static str> {
    match kind {
        1 => Some("internal"),
        2 => Some("server"),
        3 => Some("client"),
        4 => Some("producer"),
        5 => Some("consumer"),
        _ => None,
    }
}

/// Convert the text of an OTLP/JSON-lines file. Lines that are not
/// OTLP/JSON are skipped (the bundle keeps the original next to it).
pub fn from_otlp_lines(text: &str) -> Value {
    let mut processes: Vec<(Value, String)> = Vec::new(); // (resource attrs, id)
    let mut process_json = serde_json::Map::new();
    let mut traces: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for line in text.lines() {
        let Ok(doc) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            let attrs = rs["resource"]["attributes"].clone();
            let pid = match processes.iter().find(|(a, _)| *a == attrs) {
                Some((_, id)) => id.clone(),
                None => {
                    let id = format!("p{}", processes.len() + 1);
                    let mut ptags = tags(&attrs);
                    let service = ptags
                        .iter()
                        .position(|t| t["key"] == names::ATTR_SERVICE_NAME)
                        .map(|i| ptags.remove(i)["value"].as_str().unwrap_or("").to_string())
                        .unwrap_or_else(|| "unknown_service".into());
                    process_json.insert(id.clone(), json!({"serviceName": service, "tags": ptags}));
                    processes.push((attrs, id.clone()));
                    id
                }
            };
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                let scope = ss["scope"]["name"].as_str().unwrap_or("").to_string();
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let Some(trace_id) = s["traceId"].as_str() else {
                        continue;
                    };
                    traces
                        .entry(trace_id.to_string())
                        .or_default()
                        .push(span(s, trace_id, &pid, &scope));
                }
            }
        }
    }
    let data: Vec<Value> = traces
        .into_iter()
        .map(|(trace_id, mut spans)| {
            spans.sort_by_key(|s| s["startTime"].as_u64().unwrap_or(0));
            json!({
                "traceID": trace_id,
                "spans": spans,
                "processes": Value::Object(process_json.clone()),
                "warnings": null,
            })
        })
        .collect();
    json!({ "data": data, "total": 0, "limit": 0, "offset": 0, "errors": null })
}

fn span(s: &Value, trace_id: &str, pid: &str, scope: &str) -> Value {
    let start = u64_of(&s["startTimeUnixNano"]);
    let end = u64_of(&s["endTimeUnixNano"]).max(start);
    let mut t = tags(&s["attributes"]);
    if let Some(k) = kind_name(s["kind"].as_u64().unwrap_or(0)) {
        t.push(string_tag(names::JAEGER_TAG_SPAN_KIND, k));
    }
    if !scope.is_empty() {
        t.push(string_tag(names::JAEGER_TAG_SCOPE_NAME, scope));
    }
    match s["status"]["code"].as_u64() {
        Some(2) => {
            t.push(json!({"key": names::JAEGER_TAG_ERROR, "type": "bool", "value": true}));
            t.push(string_tag(names::JAEGER_TAG_STATUS_CODE, "ERROR"));
            if let Some(m) = s["status"]["message"].as_str().filter(|m| !m.is_empty()) {
                t.push(string_tag(names::JAEGER_TAG_STATUS_DESCRIPTION, m));
            }
        }
        Some(1) => t.push(string_tag(names::JAEGER_TAG_STATUS_CODE, "OK")),
        _ => {}
    }
    let references: Vec<Value> = s["parentSpanId"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(|p| vec![json!({"refType": "CHILD_OF", "traceID": trace_id, "spanID": p})])
        .unwrap_or_default();
    let logs: Vec<Value> = s["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut fields = vec![string_tag("event", e["name"].as_str().unwrap_or(""))];
            fields.extend(tags(&e["attributes"]));
            json!({"timestamp": u64_of(&e["timeUnixNano"]) / 1000, "fields": fields})
        })
        .collect();
    json!({
        "traceID": trace_id,
        "spanID": s["spanId"].as_str().unwrap_or(""),
        "operationName": s["name"].as_str().unwrap_or(""),
        "references": references,
        "startTime": start / 1000,
        "duration": (end - start) / 1000,
        "tags": t,
        "logs": logs,
        "processID": pid,
        "warnings": null,
        "flags": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_boots_two_processes_one_trace() {
        let line = |boot: &str, id: &str, parent: Option<&str>, name: &str, code: u64| {
            let mut s = json!({"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": id, "name": name,
                "kind": 1, "startTimeUnixNano": "1700000000000001000", "endTimeUnixNano": "1700000000500001000",
                "attributes": [{"key": "process.exit.code", "value": {"intValue": "3"}}],
                "events": [{"timeUnixNano": "1700000000000002000", "name": "criu.error", "attributes": []}],
                "status": {"code": code, "message": "boom"}});
            if let Some(p) = parent {
                s["parentSpanId"] = json!(p);
            }
            json!({"resourceSpans": [{"resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "ferry"}},
                {"key": "ferry.boot.id", "value": {"stringValue": boot}}]},
                "scopeSpans": [{"scope": {"name": "ferry"}, "spans": [s]}]}]})
            .to_string()
        };
        let text = [
            line("a", "1111111111111111", Some("0000000000000009"), "dump", 2),
            "not json".to_string(),
            line(
                "b",
                "2222222222222222",
                Some("0000000000000009"),
                "restore",
                1,
            ),
        ]
        .join("\n");
        let j = from_otlp_lines(&text);
        let trace = &j["data"][0];
        assert_eq!(j["data"].as_array().unwrap().len(), 1);
        assert_eq!(trace["processes"].as_object().unwrap().len(), 2);
        assert_eq!(trace["processes"]["p1"]["serviceName"], "ferry");
        let dump = &trace["spans"][0];
        assert_eq!(dump["startTime"], 1_700_000_000_000_001u64);
        assert_eq!(dump["duration"], 500_000);
        assert_eq!(dump["references"][0]["spanID"], "0000000000000009");
        assert!(
            dump["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "error" && t["value"] == true)
        );
        assert!(
            dump["tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["key"] == "process.exit.code" && t["value"] == 3)
        );
        assert_eq!(dump["logs"][0]["fields"][0]["value"], "criu.error");
        assert_eq!(trace["spans"][1]["processID"], "p2");
    }
}
