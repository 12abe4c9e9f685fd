//! A `tracing` layer that writes each closed span as one OTLP/JSON line.
//!
//! The file is opened, appended to and closed for every span, so no process
//! holds it open: the foreground `ferry upgrade` is checkpointed with the
//! session and must not carry an open file of the run directory across the
//! reboot.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::ids;
use super::names;

/// What every span of the run shares.
#[derive(Debug, Clone)]
pub struct TraceContext {
    pub trace_id: String,
    /// Spans with no parent span hang under this one (the run's root).
    pub root_span_id: String,
    /// The job's `TRACESTATE`, passed on to child processes.
    pub tracestate: Option<String>,
    pub resource: Vec<(String, String)>,
}

/// Where the spans go; `None` until a run directory exists.
#[derive(Clone, Default)]
pub struct SpanSink {
    inner: Arc<Mutex<SinkState>>,
}

#[derive(Default)]
struct SinkState {
    ctx: Option<TraceContext>,
    path: Option<PathBuf>,
    /// Spans closed before a run existed: written on attach, under its trace.
    pending: Vec<Value>,
}

impl SpanSink {
    /// Attach the run: from now on spans are written to `path` under `ctx`.
    /// Spans that closed before the run existed are written first.
    pub fn attach(&self, ctx: TraceContext, path: PathBuf) {
        let mut st = self.lock();
        st.ctx = Some(ctx);
        st.path = Some(path);
        let pending = std::mem::take(&mut st.pending);
        for mut span in pending {
            if let Some(ctx) = &st.ctx {
                span["traceId"] = Value::String(ctx.trace_id.clone());
                if span.get("parentSpanId").is_none() {
                    span["parentSpanId"] = Value::String(ctx.root_span_id.clone());
                }
            }
            let line = wrap_resource(st.ctx.as_ref(), &span).to_string();
            write_line(&st, &line);
        }
    }

    pub fn context(&self) -> Option<TraceContext> {
        self.lock().ctx.clone()
    }

    /// Set the context without a file (spans are kept in memory).
    pub fn set_context(&self, ctx: TraceContext) {
        self.lock().ctx = Some(ctx);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, span: Value) {
        let mut st = self.lock();
        if st.path.is_some() {
            let line = wrap_resource(st.ctx.as_ref(), &span).to_string();
            write_line(&st, &line);
        } else {
            st.pending.push(span);
        }
    }

    /// Write a span that `tracing` never saw (the run's root, whose start
    /// lies in an earlier process or boot).
    pub fn emit_raw(&self, span: Value) {
        self.emit(span);
    }

    /// [`SpanSink::emit_raw`] for a span of another process, whose resource
    /// differs from this one's in `overrides` (its boot id and kernel).
    pub fn emit_raw_as(&self, span: Value, overrides: &[(&str, &str)]) {
        let mut st = self.lock();
        let Some(mut ctx) = st.ctx.clone() else {
            st.pending.push(span);
            return;
        };
        for (k, v) in overrides {
            match ctx.resource.iter_mut().find(|(rk, _)| rk == k) {
                Some(slot) => slot.1 = v.to_string(),
                None => ctx.resource.push((k.to_string(), v.to_string())),
            }
        }
        if st.path.is_some() {
            let line = wrap_resource(Some(&ctx), &span).to_string();
            write_line(&st, &line);
        } else {
            st.pending.push(span);
        }
    }
}

fn write_line(st: &SinkState, line: &str) {
    let Some(path) = &st.path else { return };
    // A span that cannot be written is not worth failing the trip for; the
    // error goes to stderr, which the journal keeps.
    let result = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = result {
        eprintln!("ferry: cannot write span to {}: {e}", path.display());
    }
}

fn wrap_resource(ctx: Option<&TraceContext>, span: &Value) -> Value {
    let resource: Vec<Value> = ctx
        .map(|c| c.resource.iter().map(|(k, v)| attr(k, v)).collect())
        .unwrap_or_default();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": resource },
            "scopeSpans": [{
                "scope": { "name": "ferry", "version": env!("CARGO_PKG_VERSION") },
                "spans": [span]
            }]
        }]
    })
}

pub fn attr(key: &str, value: &str) -> Value {
    json!({ "key": key, "value": { "stringValue": value } })
}

fn attr_value(key: &str, value: &FieldValue) -> Value {
    match value {
        FieldValue::Str(s) => attr(key, s),
        FieldValue::Int(i) => json!({ "key": key, "value": { "intValue": i.to_string() } }),
        FieldValue::Bool(b) => json!({ "key": key, "value": { "boolValue": b } }),
        FieldValue::Float(f) => json!({ "key": key, "value": { "doubleValue": f } }),
    }
}

#[derive(Debug, Clone)]
enum FieldValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Float(f64),
}

#[derive(Default)]
struct Fields(Vec<(String, FieldValue)>);

impl Fields {
    fn set(&mut self, key: &str, value: FieldValue) {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.0.push((key.to_string(), value));
        }
    }
    fn get_str(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| match v {
                FieldValue::Str(s) => Some(s.as_str()),
                _ => None,
            })
    }
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.set(field.name(), FieldValue::Str(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), FieldValue::Str(value.to_string()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), FieldValue::Int(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), FieldValue::Int(value as i64));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), FieldValue::Bool(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), FieldValue::Float(value));
    }
}

/// Per-span data kept in the registry's extensions.
pub struct SpanData {
    pub span_id: String,
    parent_span_id: Option<String>,
    name: String,
    start_unix_nano: u64,
    fields: Fields,
    events: Vec<Value>,
}

/// The layer. Build with [`OtlpFileLayer::new`] and keep the [`SpanSink`].
pub struct OtlpFileLayer {
    sink: SpanSink,
}

impl OtlpFileLayer {
    pub fn new(sink: SpanSink) -> Self {
        OtlpFileLayer { sink }
    }
}

impl<S> Layer<S> for OtlpFileLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent_span_id = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanData>().map(|d| d.span_id.clone()))
            .or_else(|| self.sink.context().map(|c| c.root_span_id));
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let name = fields
            .get_str("otel.name")
            .map(str::to_string)
            .unwrap_or_else(|| attrs.metadata().name().to_string());
        span.extensions_mut().insert(SpanData {
            span_id: ids::span_id(),
            parent_span_id,
            name,
            start_unix_nano: ids::now_unix_nano(),
            fields,
            events: Vec::new(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(data) = span.extensions_mut().get_mut::<SpanData>()
        {
            values.record(&mut data.fields);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let name = fields
            .get_str("event.name")
            .or(fields.get_str("message"))
            .unwrap_or("event")
            .to_string();
        let attributes: Vec<Value> = fields
            .0
            .iter()
            .filter(|(k, _)| k != "message" && k != "event.name")
            .map(|(k, v)| attr_value(k, v))
            .collect();
        let mut ext = span.extensions_mut();
        if let Some(data) = ext.get_mut::<SpanData>() {
            // A runaway loop of events must not grow one span without bound.
            if data.events.len() < 256 {
                data.events.push(json!({
                    "timeUnixNano": ids::now_unix_nano().to_string(),
                    "name": name,
                    "attributes": attributes,
                }));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        let trace_id = self.sink.context().map(|c| c.trace_id).unwrap_or_default();
        self.sink
            .emit(span_json(&trace_id, data, ids::now_unix_nano()));
    }
}

fn span_json(trace_id: &str, data: SpanData, end: u64) -> Value {
    let failed = data.fields.get_str(names::ATTR_ERROR_TYPE).is_some()
        || data.fields.get_str("otel.status_code") == Some("ERROR");
    let message = data
        .fields
        .get_str("otel.status_message")
        .unwrap_or("")
        .to_string();
    let mut attributes: Vec<Value> = data
        .fields
        .0
        .iter()
        .filter(|(k, _)| !k.starts_with("otel."))
        .map(|(k, v)| attr_value(k, v))
        .collect();
    // A task span (a phase) carries its run id, as the CI/CD conventions
    // require: the span id is unique within the run.
    if data.fields.get_str(names::ATTR_TASK_NAME).is_some()
        && data.fields.get_str(names::ATTR_TASK_RUN_ID).is_none()
    {
        attributes.push(attr(names::ATTR_TASK_RUN_ID, &data.span_id));
    }
    let mut span = json!({
        "traceId": trace_id,
        "spanId": data.span_id,
        "name": data.name,
        "kind": 1,
        "startTimeUnixNano": data.start_unix_nano.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attributes,
        "events": data.events,
        "status": if failed { json!({"code": 2, "message": message}) } else { json!({"code": 1}) },
    });
    if let Some(parent) = data.parent_span_id {
        span["parentSpanId"] = Value::String(parent);
    }
    span
}

/// The span id of the innermost span `ferry` has open, for `TRACEPARENT`.
pub fn current_span_id() -> Option<String> {
    tracing::Span::current().with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
        let span = registry.span(id)?;
        let ext = span.extensions();
        ext.get::<SpanData>().map(|d| d.span_id.clone())
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::prelude::*;

    #[test]
    fn spans_nest_under_the_root_and_record_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trace.jsonl");
        let sink = SpanSink::default();
        let subscriber = tracing_subscriber::registry().with(OtlpFileLayer::new(sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // A span closed before the file exists is kept and written on attach.
            tracing::info_span!("early").in_scope(|| {});
            sink.attach(
                TraceContext {
                    trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                    root_span_id: "b7ad6b7169203331".into(),
                    tracestate: None,
                    resource: vec![("service.name".into(), "ferry".into())],
                },
                path.clone(),
            );
            let phase = tracing::info_span!("phase", otel.name = "dump", error.type = tracing::field::Empty);
            phase.in_scope(|| {
                let inner = tracing::info_span!("exec", otel.name = "exec criu");
                let inner_id = inner.in_scope(current_span_id).unwrap();
                assert_eq!(inner_id.len(), 16);
                tracing::error!(
                    event.name = "criu.error",
                    line = "Error (x): y",
                    "criu error"
                );
            });
            phase.record("error.type", "criu_dump_failed");
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let spans: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["resourceSpans"][0]["scopeSpans"][0]["spans"][0].clone())
            .collect();
        let names: Vec<&str> = spans.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, vec!["early", "exec criu", "dump"]);
        let dump = &spans[2];
        let exec = &spans[1];
        assert_eq!(exec["parentSpanId"], dump["spanId"]);
        assert_eq!(dump["parentSpanId"], "b7ad6b7169203331");
        assert_eq!(dump["status"]["code"], 2);
        assert_eq!(dump["events"][0]["name"], "criu.error");
        assert_eq!(exec["status"]["code"], 1);
        // The early span closed before the run existed: it lands under the root.
        assert_eq!(spans[0]["parentSpanId"], "b7ad6b7169203331");
        assert!(
            spans
                .iter()
                .all(|s| s["traceId"] == "0af7651916cd43dd8448eb211c80319c")
        );
    }
}
