//! Every span, attribute and metric name ferry emits, in one place.
//!
//! The dashboards' tests read this list, so a name used in a query and not
//! listed here fails a test instead of showing an empty panel.
//!
//! Names follow the OpenTelemetry CI/CD semantic conventions where they
//! have one (`cicd.pipeline.*`, `error.type`, `process.*`); ferry's own
//! are under `ferry.`.

/// The run's root span (kind SERVER, `cicd.pipeline.action.name` = `RUN`).
/// The conventions suggest `{action} {pipeline}`; the name is kept stable
/// because trace checks and saved queries already look for it.
pub const SPAN_RUN: &str = "ferry.run";
/// One span per external command: `exec <program>`.
pub const SPAN_EXEC_PREFIX: &str = "exec ";
/// One span per upload of a spooled bundle: `ship <destination>` (a
/// child of the `ship` phase, or of nothing under `ferry ship`).
pub const SPAN_SHIP_PREFIX: &str = ferry_uploaders::spool::SPAN_SHIP_PREFIX;

/// Phase span names, before the reboot then after it.
pub const PHASES_BEFORE: &[&str] = &[
    "preflight",
    "locate",
    "assess",
    "upgrade",
    "kernel",
    "dump",
    "prepare-restore",
    "handoff",
];
/// Phases only `ferry rehearse` runs (with preflight, locate, assess,
/// kernel and dump).
pub const PHASES_REHEARSAL: &[&str] = &["upgrade-preview"];
pub const PHASES_AFTER: &[&str] = &[
    "netfilter",
    "fixups",
    "restore",
    "verify",
    "collect",
    "finish",
    "ship",
];

// OpenTelemetry CI/CD semantic conventions.
pub const ATTR_PIPELINE_NAME: &str = "cicd.pipeline.name";
pub const ATTR_PIPELINE_ACTION: &str = "cicd.pipeline.action.name";
pub const ATTR_PIPELINE_RUN_ID: &str = "cicd.pipeline.run.id";
pub const ATTR_PIPELINE_RUN_STATE: &str = "cicd.pipeline.run.state";
pub const ATTR_PIPELINE_RESULT: &str = "cicd.pipeline.result";
pub const ATTR_TASK_NAME: &str = "cicd.pipeline.task.name";
pub const ATTR_TASK_RUN_ID: &str = "cicd.pipeline.task.run.id";
pub const ATTR_TASK_RUN_RESULT: &str = "cicd.pipeline.task.run.result";
pub const ATTR_ERROR_TYPE: &str = "error.type";
// Process conventions, for external commands.
pub const ATTR_PROCESS_EXECUTABLE: &str = "process.executable.name";
pub const ATTR_PROCESS_COMMAND_LINE: &str = "process.command_line";
pub const ATTR_PROCESS_EXIT_CODE: &str = "process.exit.code";
pub const ATTR_PROCESS_PID: &str = "process.pid";
// Resource and ferry's own.
pub const ATTR_SERVICE_NAME: &str = "service.name";
pub const ATTR_SERVICE_VERSION: &str = "service.version";
pub const ATTR_HOST_NAME: &str = "host.name";
pub const ATTR_BOOT_ID: &str = "ferry.boot.id";
pub const ATTR_KERNEL_RELEASE: &str = "os.kernel.release";
/// ferry's own outcome of a run (`succeeded`, `failed`, `called_off`),
/// next to the conventional `cicd.pipeline.result`.
pub const ATTR_RUN_OUTCOME: &str = "ferry.run.outcome";
pub const ATTR_KERNEL_BEFORE: &str = "ferry.kernel.before";
pub const ATTR_KERNEL_AFTER: &str = "ferry.kernel.after";
pub const ATTR_OUTPUT_TAIL: &str = "ferry.output.tail";
pub const ATTR_LOG_FILE: &str = "ferry.log.file";
/// Where a bundle went (`dir`, `s3`, `dropbox`, `github`).
pub const ATTR_SHIP_BACKEND: &str = "ferry.ship.backend";
/// The spool entry an upload span carries.
pub const ATTR_SPOOL_ENTRY: &str = ferry_uploaders::spool::ATTR_ENTRY;
/// Why the spool evicted an entry: `expendable`, `acknowledged`, `quarantined`, `oldest`.
pub const ATTR_SPOOL_REASON: &str = "ferry.spool.reason";
/// What a spool entry holds: `bundle`, or `page` (a bundle's report page).
pub const ATTR_SPOOL_KIND: &str = "ferry.spool.kind";

/// Event name for a CRIU `Error (…)` line.
pub const EVENT_CRIU_ERROR: &str = "criu.error";
/// The CRIU log line of a [`EVENT_CRIU_ERROR`] event.
pub const ATTR_CRIU_LINE: &str = "ferry.criu.line";

/// The pipeline name on spans and metrics.
pub const PIPELINE_NAME: &str = "ferry upgrade";
/// `cicd.pipeline.action.name` of the root span.
pub const PIPELINE_ACTION: &str = "RUN";

/// Every attribute name above, for the dashboards' tests.
pub const ALL_ATTRIBUTES: &[&str] = &[
    ATTR_PIPELINE_NAME,
    ATTR_PIPELINE_ACTION,
    ATTR_PIPELINE_RUN_ID,
    ATTR_PIPELINE_RUN_STATE,
    ATTR_PIPELINE_RESULT,
    ATTR_TASK_NAME,
    ATTR_TASK_RUN_ID,
    ATTR_TASK_RUN_RESULT,
    ATTR_ERROR_TYPE,
    ATTR_PROCESS_EXECUTABLE,
    ATTR_PROCESS_COMMAND_LINE,
    ATTR_PROCESS_EXIT_CODE,
    ATTR_PROCESS_PID,
    ATTR_SERVICE_NAME,
    ATTR_SERVICE_VERSION,
    ATTR_HOST_NAME,
    ATTR_BOOT_ID,
    ATTR_KERNEL_RELEASE,
    ATTR_RUN_OUTCOME,
    ATTR_KERNEL_BEFORE,
    ATTR_KERNEL_AFTER,
    ATTR_OUTPUT_TAIL,
    ATTR_LOG_FILE,
    ATTR_SHIP_BACKEND,
    ATTR_SPOOL_ENTRY,
    ATTR_SPOOL_REASON,
    ATTR_SPOOL_KIND,
    ATTR_CRIU_LINE,
];

/// The resource attributes of ferry's metrics (low cardinality: no run id).
/// The dashboards' collector turns them into labels.
pub const METRIC_RESOURCE_ATTRIBUTES: &[&str] =
    &[ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION, ATTR_HOST_NAME];

/// Tags the Jaeger model has beyond a span's attributes: what Jaeger's own
/// OTLP receiver (and [`super::jaeger`], for bundles) derive from the span
/// kind, status and scope.
pub const JAEGER_TAG_ERROR: &str = "error";
pub const JAEGER_TAG_SPAN_KIND: &str = "span.kind";
pub const JAEGER_TAG_STATUS_CODE: &str = "otel.status_code";
pub const JAEGER_TAG_STATUS_DESCRIPTION: &str = "otel.status_description";
pub const JAEGER_TAG_SCOPE_NAME: &str = "otel.scope.name";
pub const JAEGER_TAGS: &[&str] = &[
    JAEGER_TAG_ERROR,
    JAEGER_TAG_SPAN_KIND,
    JAEGER_TAG_STATUS_CODE,
    JAEGER_TAG_STATUS_DESCRIPTION,
    JAEGER_TAG_SCOPE_NAME,
];

/// Every span name ferry emits (exec spans: [`SPAN_EXEC_PREFIX`] + program).
pub fn all_span_names() -> Vec<&'static str> {
    let mut v = vec![SPAN_RUN];
    v.extend_from_slice(PHASES_BEFORE);
    v.extend_from_slice(PHASES_AFTER);
    v.extend_from_slice(PHASES_REHEARSAL);
    v
}

/// Whether `name` is a span ferry emits: a fixed name, or a command
/// ([`SPAN_EXEC_PREFIX`]) or upload ([`SPAN_SHIP_PREFIX`]) span.
pub fn is_span_name(name: &str) -> bool {
    all_span_names().contains(&name)
        || name.starts_with(SPAN_EXEC_PREFIX)
        || name.starts_with(SPAN_SHIP_PREFIX)
}

/// What kind of OTLP instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instrument {
    Histogram,
    /// A monotonic sum (a Prometheus counter).
    Counter,
    Gauge,
}

/// One metric: its OTLP name, unit (UCUM), instrument, and attributes.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub instrument: Instrument,
    pub description: &'static str,
    pub attributes: &'static [&'static str],
}

/// Duration of a run (wall clock, root span start to finish; it spans the
/// reboot), by result: the CI/CD convention's `cicd.pipeline.run.duration`.
pub const METRIC_RUN_DURATION: Metric = Metric {
    name: "cicd.pipeline.run.duration",
    unit: "s",
    instrument: Instrument::Histogram,
    description: "Duration of a ferry run, by result.",
    attributes: &[
        ATTR_PIPELINE_NAME,
        ATTR_PIPELINE_RUN_STATE,
        ATTR_PIPELINE_RESULT,
        ATTR_ERROR_TYPE,
    ],
};
/// Failed runs by kind: the convention's `cicd.pipeline.run.errors`.
pub const METRIC_RUN_ERRORS: Metric = Metric {
    name: "cicd.pipeline.run.errors",
    unit: "{error}",
    instrument: Instrument::Counter,
    description: "Failed or called-off ferry runs, by error type.",
    attributes: &[ATTR_PIPELINE_NAME, ATTR_ERROR_TYPE],
};
/// Duration of each phase, measured within one boot.
pub const METRIC_PHASE_DURATION: Metric = Metric {
    name: "ferry.phase.duration",
    unit: "s",
    instrument: Instrument::Histogram,
    description: "Duration of a phase of a ferry run (within one boot).",
    attributes: &[ATTR_TASK_NAME, ATTR_TASK_RUN_RESULT, ATTR_ERROR_TYPE],
};
/// Bytes of bundles shipped.
pub const METRIC_SHIPPED_BYTES: Metric = Metric {
    name: "ferry.ship.bytes",
    unit: "By",
    instrument: Instrument::Counter,
    description: "Size of the bundles ferry shipped.",
    attributes: &[ATTR_SHIP_BACKEND, ATTR_PIPELINE_RESULT],
};
/// Entries waiting in the spool, after the ship phase or `ferry ship`:
/// bundles and report pages apart (`ferry.spool.kind`).
pub const METRIC_SPOOL_DEPTH: Metric = Metric {
    name: "ferry.spool.depth",
    unit: "{entry}",
    instrument: Instrument::Gauge,
    description: "Entries waiting in the spool, by kind: bundle or page (a bundle's report page).",
    attributes: &[ATTR_SPOOL_KIND],
};
/// Entries the spool's size cap removed, by the rule that chose them.
pub const METRIC_SPOOL_EVICTED: Metric = Metric {
    name: "ferry.spool.evicted",
    unit: "{bundle}",
    instrument: Instrument::Counter,
    description: "Bundles the spool's size cap evicted before they were shipped everywhere.",
    attributes: &[ATTR_SPOOL_REASON],
};
/// Damaged entries moved to quarantine.
pub const METRIC_SPOOL_QUARANTINED: Metric = Metric {
    name: "ferry.spool.quarantined",
    unit: "{bundle}",
    instrument: Instrument::Counter,
    description: "Damaged spool entries moved to quarantine.",
    attributes: &[],
};

pub const ALL_METRICS: &[Metric] = &[
    METRIC_RUN_DURATION,
    METRIC_RUN_ERRORS,
    METRIC_PHASE_DURATION,
    METRIC_SHIPPED_BYTES,
    METRIC_SPOOL_DEPTH,
    METRIC_SPOOL_EVICTED,
    METRIC_SPOOL_QUARANTINED,
];

/// Histogram bucket bounds, in seconds: a phase takes from milliseconds
/// (locate) to many minutes (a dist-upgrade).
pub const DURATION_BOUNDS_S: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
];

/// The name the OpenTelemetry Collector's Prometheus exporter gives a
/// metric (dots to underscores, unit suffix, `_total` for counters), which
/// is what the dashboards' PromQL queries.
pub fn prometheus_name(m: &Metric) -> String {
    let mut name = m.name.replace(['.', '-'], "_");
    let unit = match m.unit {
        "s" => "seconds",
        "By" => "bytes",
        _ => "", // `{…}` annotations add no suffix
    };
    if !unit.is_empty() && !name.split('_').any(|t| t == unit) {
        name.push('_');
        name.push_str(unit);
    }
    if m.instrument == Instrument::Counter {
        name.push_str("_total");
    }
    name
}

/// The Prometheus label an attribute becomes.
pub fn prometheus_label(attribute: &str) -> String {
    attribute.replace(['.', '-'], "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_names_follow_the_collector() {
        assert_eq!(
            prometheus_name(&METRIC_RUN_DURATION),
            "cicd_pipeline_run_duration_seconds"
        );
        assert_eq!(
            prometheus_name(&METRIC_SHIPPED_BYTES),
            "ferry_ship_bytes_total"
        );
        assert_eq!(
            prometheus_name(&METRIC_RUN_ERRORS),
            "cicd_pipeline_run_errors_total"
        );
        assert_eq!(prometheus_name(&METRIC_SPOOL_DEPTH), "ferry_spool_depth");
        assert_eq!(
            prometheus_name(&METRIC_SPOOL_EVICTED),
            "ferry_spool_evicted_total"
        );
    }

    #[test]
    fn metric_attributes_are_listed() {
        for m in ALL_METRICS {
            for a in m.attributes {
                assert!(ALL_ATTRIBUTES.contains(a), "{} uses unlisted {a}", m.name);
            }
        }
    }
}
