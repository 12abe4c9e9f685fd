//! Telemetry: spans to the run's OTLP/JSON-lines file, logs to stderr and
//! to the run's `ferry.log`, each a layer.

pub mod ids;
pub mod names;
pub mod otlp_file;

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

pub use otlp_file::{SpanSink, TraceContext, current_span_id};

use crate::state::RunState;

/// Handles to the layers whose destination is known only once a run exists.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub spans: SpanSink,
    log_file: LogFile,
}

/// A `MakeWriter` that appends to a file opened per event (never held
/// open; see `otlp_file`), or writes nothing until a path is set.
#[derive(Clone, Default)]
struct LogFile(Arc<Mutex<Option<PathBuf>>>);

struct LogWriter(Option<std::fs::File>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(f) => f.write(buf),
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        let path = self.0.lock().ok().and_then(|p| p.clone());
        LogWriter(path.and_then(|p| OpenOptions::new().create(true).append(true).open(p).ok()))
    }
}

/// One plain line per event on stderr (`ferry: warning: …`): the CI log
/// is read by people, and span context is in the trace.
struct HumanFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for HumanFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = *event.metadata().level();
        write!(writer, "ferry: ")?;
        if level == tracing::Level::WARN {
            write!(writer, "warning: ")?;
        } else if level == tracing::Level::ERROR {
            write!(writer, "error: ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Install the global subscriber: human lines on stderr (`FERRY_LOG` picks
/// the level, default info), JSON lines to the run's log, spans to its trace.
pub fn init() -> Telemetry {
    let telemetry = Telemetry::default();
    let stderr_filter =
        EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(HumanFormat)
        .with_filter(stderr_filter);
    let json = tracing_subscriber::fmt::layer()
        .json()
        .with_writer(telemetry.log_file.clone())
        .with_filter(EnvFilter::new("debug"));
    let spans = otlp_file::OtlpFileLayer::new(telemetry.spans.clone());
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(json)
        .with(spans)
        .try_init();
    telemetry
}

impl Telemetry {
    /// Point spans and logs at a run directory.
    pub fn attach(&self, state: &RunState, trace_file: PathBuf, log_file: PathBuf) {
        if let Ok(mut p) = self.log_file.0.lock() {
            *p = Some(log_file);
        }
        self.spans.attach(context_of(state), trace_file);
    }

    /// Emit the run's root span, with its original start time: the last
    /// span of the run.
    pub fn emit_root(&self, state: &RunState, result: &str, error_type: Option<&str>) {
        let mut attributes = vec![
            otlp_file::attr(names::ATTR_PIPELINE_NAME, "ferry upgrade"),
            otlp_file::attr(names::ATTR_PIPELINE_RUN_ID, &state.run_id),
            otlp_file::attr(names::ATTR_PIPELINE_RESULT, result),
            otlp_file::attr("ferry.kernel.before", &state.kernel_before),
        ];
        if let Some(after) = &state.kernel_after {
            attributes.push(otlp_file::attr("ferry.kernel.after", after));
        }
        if let Some(e) = error_type {
            attributes.push(otlp_file::attr(names::ATTR_ERROR_TYPE, e));
        }
        let mut span = json!({
            "traceId": state.trace_id,
            "spanId": state.root_span_id,
            "name": names::SPAN_RUN,
            "kind": 1,
            "startTimeUnixNano": state.start_unix_nano.to_string(),
            "endTimeUnixNano": ids::now_unix_nano().to_string(),
            "attributes": attributes,
            "events": [],
            "status": if error_type.is_some() { json!({"code": 2, "message": result}) } else { json!({"code": 1}) },
        });
        if let Some(parent) = &state.parent_span_id {
            span["parentSpanId"] = json!(parent);
        }
        self.spans.emit_raw(span);
    }
}

/// The resource and ids every span of this process carries.
pub fn context_of(state: &RunState) -> TraceContext {
    TraceContext {
        trace_id: state.trace_id.clone(),
        root_span_id: state.root_span_id.clone(),
        resource: vec![
            (names::ATTR_SERVICE_NAME.into(), service_name()),
            (
                names::ATTR_SERVICE_VERSION.into(),
                env!("CARGO_PKG_VERSION").into(),
            ),
            (names::ATTR_HOST_NAME.into(), state.host.clone()),
            (names::ATTR_BOOT_ID.into(), crate::host::boot_id()),
            (
                names::ATTR_KERNEL_RELEASE.into(),
                crate::host::kernel_release(),
            ),
            (names::ATTR_PIPELINE_RUN_ID.into(), state.run_id.clone()),
        ],
    }
}

fn service_name() -> String {
    std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ferry".into())
}

/// `TRACEPARENT` for a child process: the current span as its parent.
pub fn child_traceparent(sink: &SpanSink) -> Option<String> {
    let ctx = sink.context()?;
    let span = current_span_id().unwrap_or(ctx.root_span_id);
    Some(ids::TraceParent::format(&ctx.trace_id, &span))
}
