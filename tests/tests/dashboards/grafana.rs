//! Grafana dashboard JSON (the classic model, `schemaVersion` 39) checked
//! without Grafana: the fields Grafana needs at that version, data-source
//! references that the provisioning defines, template variables that
//! exist, and every query's names against ferry's list of names.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::names::{Catalog, VarScope};

/// The schema version every dashboard is written for (Grafana 10.4–11.x
/// read it as is; later versions migrate it forward on load).
pub const SCHEMA_VERSION: u64 = 39;

/// Panel plugins the dashboards may use (all built into Grafana 11).
const PANEL_TYPES: &[&str] = &[
    "stat",
    "timeseries",
    "bargauge",
    "barchart",
    "table",
    "traces",
    "text",
    "row",
    "piechart",
    "gauge",
];

const VARIABLE_TYPES: &[&str] = &["query", "custom", "textbox", "constant", "interval"];

/// Keys a target of each data-source type may have: anything else is a
/// typo Grafana would silently ignore.
const PROMETHEUS_TARGET_KEYS: &[&str] = &[
    "refId",
    "datasource",
    "expr",
    "legendFormat",
    "instant",
    "range",
    "format",
    "interval",
    "hide",
    "exemplar",
    "editorMode",
];
const JAEGER_TARGET_KEYS: &[&str] = &[
    "refId",
    "datasource",
    "queryType",
    "service",
    "operation",
    "query",
    "tags",
    "minDuration",
    "maxDuration",
    "limit",
    "hide",
];

/// A provisioned data source: uid → type.
pub type DataSources = BTreeMap<String, String>;

/// Everything wrong with one dashboard, each naming where.
pub fn check(dash: &Value, sources: &DataSources, catalog: &Catalog) -> Vec<String> {
    let mut p = Problems::default();
    let title = dash["title"].as_str().unwrap_or("");
    p.at = format!("dashboard {:?}", dash["uid"].as_str().unwrap_or("?"));
    if title.trim().is_empty() {
        p.add("has no title");
    }
    match dash["uid"].as_str() {
        Some(uid)
            if !uid.is_empty()
                && uid.len() <= 40
                && uid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {}
        other => p.add(format!(
            "uid {other:?} is not 1-40 characters of [A-Za-z0-9_-]"
        )),
    }
    if dash["schemaVersion"].as_u64() != Some(SCHEMA_VERSION) {
        p.add(format!(
            "schemaVersion {} (the dashboards are written for {SCHEMA_VERSION})",
            dash["schemaVersion"]
        ));
    }
    if dash.get("id").is_some_and(|id| !id.is_null()) {
        p.add("carries an instance id: provisioned dashboards are matched by uid");
    }
    for key in ["from", "to"] {
        if !dash["time"][key].is_string() {
            p.add(format!("time.{key} is missing"));
        }
    }
    if !dash["tags"]
        .as_array()
        .is_some_and(|t| t.iter().all(Value::is_string))
    {
        p.add("tags is not a list of strings");
    }

    let scope = variables(dash, sources, catalog, &mut p);
    p.check_refs(title, &scope, "the title");

    let Some(panels) = dash["panels"].as_array() else {
        p.add("has no panels list");
        return p.list;
    };
    if panels.is_empty() {
        p.add("has no panels");
    }
    let mut ids = BTreeSet::new();
    let mut rects: Vec<(String, [i64; 4])> = Vec::new();
    for panel in panels {
        check_panel(
            panel, sources, catalog, &scope, &mut ids, &mut rects, &mut p,
        );
        // A collapsed row keeps its panels inside it.
        for inner in panel["panels"].as_array().into_iter().flatten() {
            check_panel(
                inner, sources, catalog, &scope, &mut ids, &mut rects, &mut p,
            );
        }
    }
    for (i, (a, ra)) in rects.iter().enumerate() {
        for (b, rb) in &rects[i + 1..] {
            if overlap(ra, rb) {
                p.add(format!("panels {a} and {b} overlap"));
            }
        }
    }
    p.list
}

#[derive(Default)]
struct Problems {
    at: String,
    list: Vec<String>,
}

impl Problems {
    fn add(&mut self, what: impl std::fmt::Display) {
        self.list.push(format!("{}: {what}", self.at));
    }

    /// `$name`, `${name}`, `${name:fmt}` and `[[name]]` must name a
    /// variable of the dashboard or one of Grafana's own.
    fn check_refs(&mut self, text: &str, scope: &VarScope, what: &str) {
        for name in variable_refs(text) {
            if !scope.known(&name) {
                self.add(format!("{what} uses undefined variable ${name}"));
            }
        }
    }
}

/// The variable names referenced in `text`.
pub fn variable_refs(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'{' {
                if let Some(end) = text[i + 2..].find('}') {
                    let inner = &text[i + 2..i + 2 + end];
                    let name = inner.split([':', '.']).next().unwrap_or("");
                    out.push(name.to_string());
                    i += end + 3;
                    continue;
                }
            } else if ident(b[i + 1]) {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && ident(b[j]) {
                    j += 1;
                }
                out.push(text[start..j].to_string());
                i = j;
                continue;
            }
        } else if b[i..].starts_with(b"[[")
            && let Some(end) = text[i + 2..].find("]]")
        {
            let name = text[i + 2..i + 2 + end].split(':').next().unwrap_or("");
            out.push(name.to_string());
            i += end + 4;
            continue;
        }
        i += 1;
    }
    out
}

fn variables(dash: &Value, sources: &DataSources, catalog: &Catalog, p: &mut Problems) -> VarScope {
    let mut scope = VarScope::default();
    let Some(list) = dash["templating"]["list"].as_array() else {
        p.add("templating.list is missing");
        return scope;
    };
    for v in list {
        let name = v["name"].as_str().unwrap_or("");
        let ty = v["type"].as_str().unwrap_or("");
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            p.add(format!("variable name {name:?} is not a plain identifier"));
        }
        if !VARIABLE_TYPES.contains(&ty) {
            p.add(format!("variable {name} has unknown type {ty:?}"));
        }
        if !scope.insert(name) {
            p.add(format!("variable {name} is defined twice"));
        }
        if ty == "query" {
            let query = v["query"]["query"]
                .as_str()
                .or(v["query"].as_str())
                .unwrap_or("");
            match datasource_ref(&v["datasource"], sources) {
                Ok(t) if t == "prometheus" => {
                    for e in catalog.check_label_values(query) {
                        p.add(format!("variable {name}: {e}"));
                    }
                }
                Ok(t) => p.add(format!(
                    "variable {name}: no check for {t} variable queries"
                )),
                Err(e) => p.add(format!("variable {name}: {e}")),
            }
        }
    }
    scope
}

/// The type of the provisioned data source `r` names, or why it is not one.
fn datasource_ref(r: &Value, sources: &DataSources) -> Result<String, String> {
    let (Some(ty), Some(uid)) = (r["type"].as_str(), r["uid"].as_str()) else {
        return Err(format!(
            "datasource {r} is not a {{type, uid}} reference (schema 33+)"
        ));
    };
    match sources.get(uid) {
        Some(t) if t == ty => Ok(ty.to_string()),
        Some(t) => Err(format!(
            "datasource {uid} is a {t}, the reference says {ty}"
        )),
        None => Err(format!("datasource uid {uid:?} is not provisioned")),
    }
}

#[allow(clippy::too_many_arguments)]
fn check_panel(
    panel: &Value,
    sources: &DataSources,
    catalog: &Catalog,
    scope: &VarScope,
    ids: &mut BTreeSet<u64>,
    rects: &mut Vec<(String, [i64; 4])>,
    p: &mut Problems,
) {
    let title = panel["title"].as_str().unwrap_or("");
    let name = format!("{:?}", title);
    let ty = panel["type"].as_str().unwrap_or("");
    match panel["id"].as_u64() {
        Some(id) if id > 0 => {
            if !ids.insert(id) {
                p.add(format!("panel {name} reuses id {id}"));
            }
        }
        _ => p.add(format!("panel {name} has no positive integer id")),
    }
    if !PANEL_TYPES.contains(&ty) {
        p.add(format!("panel {name} has unknown type {ty:?}"));
    }
    if title.trim().is_empty() {
        p.add(format!("panel of type {ty} has no title"));
    }
    p.check_refs(title, scope, &format!("panel {name}'s title"));
    let g = &panel["gridPos"];
    match (
        g["x"].as_i64(),
        g["y"].as_i64(),
        g["w"].as_i64(),
        g["h"].as_i64(),
    ) {
        (Some(x), Some(y), Some(w), Some(h))
            if (0..24).contains(&x) && y >= 0 && (1..=24).contains(&w) && h >= 1 && x + w <= 24 =>
        {
            if ty == "row" && (w != 24 || h != 1) {
                p.add(format!("row {name} is not 24 wide and 1 high"));
            }
            rects.push((name.clone(), [x, y, w, h]));
        }
        _ => p.add(format!(
            "panel {name} has no valid gridPos (x 0-23, w 1-24, x+w <= 24, h >= 1): {g}"
        )),
    }
    for (key, v) in links(panel) {
        p.check_refs(&v, scope, &format!("panel {name}'s {key}"));
    }
    match ty {
        "row" => {
            if !panel["panels"].is_array() {
                p.add(format!("row {name} has no panels list"));
            }
            return;
        }
        "text" => {
            let content = panel["options"]["content"].as_str().unwrap_or("");
            if content.trim().is_empty()
                || !matches!(panel["options"]["mode"].as_str(), Some("markdown" | "html"))
            {
                p.add(format!(
                    "text panel {name} needs options.mode and options.content"
                ));
            }
            return;
        }
        _ => {}
    }
    if !panel["options"].is_object() {
        p.add(format!("panel {name} has no options object"));
    }
    if !panel["fieldConfig"]["defaults"].is_object()
        || !panel["fieldConfig"]["overrides"].is_array()
    {
        p.add(format!(
            "panel {name} has no fieldConfig {{defaults, overrides}}"
        ));
    }
    let ds_type = match datasource_ref(&panel["datasource"], sources) {
        Ok(t) => t,
        Err(e) => {
            p.add(format!("panel {name}: {e}"));
            return;
        }
    };
    let Some(targets) = panel["targets"].as_array().filter(|t| !t.is_empty()) else {
        p.add(format!("panel {name} has no targets"));
        return;
    };
    let mut refs = BTreeSet::new();
    for t in targets {
        let r = t["refId"].as_str().unwrap_or("");
        if r.is_empty() || !refs.insert(r.to_string()) {
            p.add(format!(
                "panel {name}: target refId {r:?} is empty or repeated"
            ));
        }
        if !t["datasource"].is_null() && t["datasource"] != panel["datasource"] {
            p.add(format!(
                "panel {name}: target {r} names another data source"
            ));
        }
        let at = format!("panel {name} target {r}");
        let allowed = if ds_type == "prometheus" {
            PROMETHEUS_TARGET_KEYS
        } else {
            JAEGER_TARGET_KEYS
        };
        for key in t.as_object().into_iter().flat_map(|o| o.keys()) {
            if !allowed.contains(&key.as_str()) {
                p.add(format!("{at}: unknown key {key:?} for a {ds_type} query"));
            }
        }
        for (key, v) in t.as_object().into_iter().flatten() {
            if let Some(s) = v.as_str() {
                p.check_refs(s, scope, &format!("{at}'s {key}"));
            }
        }
        let found = match ds_type.as_str() {
            "prometheus" => catalog.check_prometheus_target(t, scope),
            "jaeger" => catalog.check_jaeger_target(t),
            other => vec![format!("no check for {other} queries")],
        };
        for e in found {
            p.add(format!("{at}: {e}"));
        }
    }
}

/// Every data-link URL and title of a panel, with where it is.
fn links(panel: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut visit = |props: &Value| {
        for prop in props.as_array().into_iter().flatten() {
            if prop["id"] == "links" {
                for l in prop["value"].as_array().into_iter().flatten() {
                    for k in ["url", "title"] {
                        if let Some(s) = l[k].as_str() {
                            out.push((format!("link {k}"), s.to_string()));
                        }
                    }
                }
            }
        }
    };
    for o in panel["fieldConfig"]["overrides"]
        .as_array()
        .into_iter()
        .flatten()
    {
        visit(&o["properties"]);
    }
    out
}

fn overlap(a: &[i64; 4], b: &[i64; 4]) -> bool {
    a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3]
}

/// Every query string of a dashboard (for coverage checks).
pub fn exprs(dash: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().into_iter().flatten() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            for k in ["expr", "operation", "tags"] {
                if let Some(s) = t[k].as_str() {
                    out.push(s.to_string());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_references_are_found_in_every_syntax() {
        assert_eq!(
            variable_refs(
                "a … $host ${svc} ${__value.raw} ${x:csv} [[old]] $__rate_interval $ 5 …"
            ),
            vec!["host", "svc", "__value", "x", "old", "__rate_interval"]
        );
    }
}
