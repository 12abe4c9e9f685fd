//! Telemetry: spans to the run's OTLP/JSON-lines file, logs to stderr and
//! to the run's `ferry.log`, each a layer; metrics computed when the run
//! ends; both shipped over OTLP/HTTP protobuf by [`export`], from the files.
//!
//! Why ferry does not run the OpenTelemetry SDK's exporter in-process: the
//! foreground is checkpointed with the session and must hold no connection,
//! every span has to be on disk before the kexec anyway, and spans whose
//! export failed must be re-sent later without duplicates. All three are
//! one design: the file is the source of truth and the exporter is a
//! cursor over it, run by whichever process may use the network.

pub mod export;
pub mod ids;
pub mod jaeger;
pub mod metrics;
pub mod names;
pub mod otlp_file;
pub mod proto;
pub mod reference;

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::json;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;

pub use otlp_file::{SpanSink, TraceContext, current_span_id};

use crate::state::{RunDir, RunState};

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
    // Escape codes only for a person at a terminal: a CI log or a file
    // gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
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
            otlp_file::attr(names::ATTR_PIPELINE_NAME, names::PIPELINE_NAME),
            otlp_file::attr(names::ATTR_PIPELINE_ACTION, names::PIPELINE_ACTION),
            otlp_file::attr(names::ATTR_PIPELINE_RUN_ID, &state.run_id),
            otlp_file::attr(
                names::ATTR_PIPELINE_RESULT,
                metrics::pipeline_result(result),
            ),
            otlp_file::attr(names::ATTR_RUN_OUTCOME, result),
            otlp_file::attr(names::ATTR_KERNEL_BEFORE, &state.kernel_before),
        ];
        if let Some(after) = &state.kernel_after {
            attributes.push(otlp_file::attr(names::ATTR_KERNEL_AFTER, after));
        }
        if let Some(e) = error_type {
            attributes.push(otlp_file::attr(names::ATTR_ERROR_TYPE, e));
        }
        let mut span = json!({
            "traceId": state.trace_id,
            "spanId": state.root_span_id,
            "name": names::SPAN_RUN,
            "kind": 2,
            "startTimeUnixNano": state.start_unix_nano.to_string(),
            "endTimeUnixNano": ids::now_unix_nano().to_string(),
            "attributes": attributes,
            "events": [],
            "status": if error_type.is_some() { json!({"code": 2, "message": result}) } else { json!({"code": 1}) },
        });
        if let Some(parent) = &state.parent_span_id {
            span["parentSpanId"] = json!(parent);
        }
        if let Some(ts) = &state.tracestate {
            span["traceState"] = json!(ts);
        }
        self.spans.emit_raw(span);
    }

    /// Ship what the run's files hold and the collector has not accepted
    /// yet, within `budget`. Never fails: what is not sent stays on disk
    /// for the next process of the run or `ferry ship-telemetry`.
    pub fn export(
        &self,
        run: &RunDir,
        state: &RunState,
        budget: std::time::Duration,
    ) -> export::ExportReport {
        self.export_with(
            run,
            &export::ExportConfig::for_run(run, &state.otel),
            budget,
        )
    }

    /// [`Telemetry::export`] with settings resolved earlier.
    pub fn export_with(
        &self,
        run: &RunDir,
        cfg: &export::ExportConfig,
        budget: std::time::Duration,
    ) -> export::ExportReport {
        for p in &cfg.problems {
            tracing::warn!("telemetry export: {p}");
        }
        let report = export::export_run(run, cfg, &export::HttpTransport, budget);
        if report.pending || report.lines_rejected > 0 {
            tracing::warn!(
                sent = report.spans_sent,
                "telemetry export incomplete ({}); the rest is kept in {} and re-sent later",
                report.last_error.as_deref().unwrap_or("no answer"),
                run.root.display()
            );
        } else if report.requests > 0 {
            tracing::debug!(
                spans = report.spans_sent,
                metrics = report.metric_lines_sent,
                "telemetry exported"
            );
        }
        report
    }

    /// Record the run's metrics (when it ends): written to the run's
    /// `metrics.jsonl`, shipped by the next [`Telemetry::export`].
    pub fn record_run_metrics(
        &self,
        run: &RunDir,
        state: &RunState,
        result: &str,
        error_type: Option<&str>,
        shipped: &[(String, u64)],
    ) {
        let doc = metrics::run_metrics(state, result, error_type, shipped, ids::now_unix_nano());
        if let Err(e) = metrics::record(run, &doc) {
            tracing::warn!("cannot write the run's metrics: {e}");
        }
    }
}

/// The resource and ids every span of this process carries.
pub fn context_of(state: &RunState) -> TraceContext {
    // OTEL_RESOURCE_ATTRIBUTES first, so ferry's own keys win on a clash.
    let mut resource: Vec<(String, String)> = state
        .otel
        .get("OTEL_RESOURCE_ATTRIBUTES")
        .map(|s| resource_attributes(s))
        .unwrap_or_default();
    let own = vec![
        (names::ATTR_SERVICE_NAME.into(), service_name(state)),
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
    ];
    resource.retain(|(k, _)| !own.iter().any(|(o, _)| o == k));
    resource.extend(own);
    TraceContext {
        trace_id: state.trace_id.clone(),
        root_span_id: state.root_span_id.clone(),
        tracestate: state.tracestate.clone(),
        resource,
    }
}

/// `OTEL_SERVICE_NAME` of the job, else `service.name` from its
/// `OTEL_RESOURCE_ATTRIBUTES`, else `ferry`.
pub fn service_name(state: &RunState) -> String {
    state
        .otel
        .get("OTEL_SERVICE_NAME")
        .filter(|s| !s.trim().is_empty())
        .cloned()
        .or_else(|| {
            state.otel.get("OTEL_RESOURCE_ATTRIBUTES").and_then(|s| {
                resource_attributes(s)
                    .into_iter()
                    .find(|(k, _)| k == names::ATTR_SERVICE_NAME)
                    .map(|(_, v)| v)
            })
        })
        .unwrap_or_else(|| "ferry".into())
}

/// `k1=v1,k2=v2` with percent-encoded values (the SDK environment spec).
pub fn resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = export::percent_decode(k.trim());
            (!k.is_empty()).then(|| (k, export::percent_decode(v.trim())))
        })
        .collect()
}

/// `TRACEPARENT` for a child process: the current span as its parent.
pub fn child_traceparent(sink: &SpanSink) -> Option<String> {
    let ctx = sink.context()?;
    let span = current_span_id().unwrap_or(ctx.root_span_id);
    Some(ids::TraceParent::format(&ctx.trace_id, &span))
}

/// `TRACESTATE` for a child process: the job's, passed on unchanged
/// (ferry adds no entry of its own).
pub fn child_tracestate(sink: &SpanSink) -> Option<String> {
    sink.context()?.tracestate.filter(|t| !t.is_empty())
}

/// Ship what every run under `runs_dir` still holds (for `ferry ship` and
/// the boot-time janitor): each run with its own saved settings, within
/// one overall `budget`.
pub fn ship_all(
    runs_dir: &std::path::Path,
    budget: std::time::Duration,
) -> Vec<(std::path::PathBuf, export::ExportReport)> {
    ship_all_except(runs_dir, None, budget)
}

/// [`ship_all`] but for `except` (a run whose own processes export it).
pub fn ship_all_except(
    runs_dir: &std::path::Path,
    except: Option<&std::path::Path>,
    budget: std::time::Duration,
) -> Vec<(std::path::PathBuf, export::ExportReport)> {
    let deadline = std::time::Instant::now() + budget;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(runs_dir) else {
        return out;
    };
    let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for dir in dirs.into_iter().filter(|d| Some(d.as_path()) != except) {
        let run = RunDir::new(&dir);
        let Ok(state) = run.load() else { continue };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let cfg = export::ExportConfig::for_run(&run, &state.otel);
        out.push((
            dir,
            export::export_run(&run, &cfg, &export::HttpTransport, left),
        ));
    }
    out
}
