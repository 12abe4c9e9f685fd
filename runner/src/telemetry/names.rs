//! Every span, attribute and metric name ferry emits, in one place.
//!
//! The dashboards' tests read this list, so a name used in a query and not
//! listed here fails a test instead of showing an empty panel.

/// The run's root span.
pub const SPAN_RUN: &str = "ferry.run";
/// One span per external command: `exec <program>`.
pub const SPAN_EXEC_PREFIX: &str = "exec ";

/// Phase span names, before the reboot then after it.
pub const PHASES_BEFORE: &[&str] = &[
    "preflight",
    "locate",
    "upgrade",
    "kernel",
    "dump",
    "prepare-restore",
    "handoff",
];
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
pub const ATTR_PIPELINE_RUN_ID: &str = "cicd.pipeline.run.id";
pub const ATTR_PIPELINE_RESULT: &str = "cicd.pipeline.result";
pub const ATTR_TASK_NAME: &str = "cicd.pipeline.task.name";
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
pub const ATTR_OUTPUT_TAIL: &str = "ferry.output.tail";
pub const ATTR_LOG_FILE: &str = "ferry.log.file";

/// Event name for a CRIU `Error (…)` line.
pub const EVENT_CRIU_ERROR: &str = "criu.error";

/// Every attribute name above, for the dashboards' tests.
pub const ALL_ATTRIBUTES: &[&str] = &[
    ATTR_PIPELINE_NAME,
    ATTR_PIPELINE_RUN_ID,
    ATTR_PIPELINE_RESULT,
    ATTR_TASK_NAME,
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
    ATTR_OUTPUT_TAIL,
    ATTR_LOG_FILE,
];
