//! The phases of a run, one file each, and the machinery that records them.
//!
//! Every phase is a span and a record in `state.json`, written before the
//! phase starts and again when it ends, so a crash at any point leaves a
//! state the next `ferry` can report.

pub mod assess;
pub mod collect;
pub mod compat;
pub mod dump;
pub mod dump_plan;
pub mod finish;
pub mod fixups;
pub mod handoff;
pub mod kernel;
pub mod locate;
pub mod netfilter;
pub mod preflight;
pub mod prepare_restore;
pub mod restore;
pub mod ship;
pub mod upgrade;
pub mod verify;

use tracing::field::Empty;

use crate::config::Config;
use crate::exec::{ExecError, Runner};
use crate::state::{PhaseRecord, PhaseResult, RunDir, RunState, StateError};
use crate::telemetry::{self, Telemetry, ids, names};

/// Why a phase failed: `kind` becomes the span's `error.type`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PhaseError {
    pub kind: String,
    pub message: String,
}

impl PhaseError {
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        PhaseError {
            kind: kind.into(),
            message: message.into(),
        }
    }
}

impl From<ExecError> for PhaseError {
    fn from(e: ExecError) -> Self {
        let kind = match &e {
            ExecError::NotFound { .. } => "command_missing",
            ExecError::Spawn { .. } => "command_spawn",
            ExecError::Timeout { .. } => "command_timeout",
            ExecError::Failed { .. } => "command_failed",
        };
        PhaseError::new(kind, e.to_string())
    }
}

impl From<StateError> for PhaseError {
    fn from(e: StateError) -> Self {
        PhaseError::new("state", e.to_string())
    }
}

/// What every phase may use.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub run: &'a RunDir,
    pub state: RunState,
    pub runner: &'a dyn Runner,
    pub telemetry: &'a Telemetry,
}

impl<'a> Ctx<'a> {
    pub fn new(
        config: &'a Config,
        run: &'a RunDir,
        state: RunState,
        runner: &'a dyn Runner,
        telemetry: &'a Telemetry,
    ) -> Ctx<'a> {
        Ctx {
            config,
            run,
            state,
            runner,
            telemetry,
        }
    }

    pub fn save(&self) -> Result<(), PhaseError> {
        self.run.save(&self.state).map_err(PhaseError::from)
    }

    /// The session `locate` recorded.
    pub fn session(&self) -> Result<crate::session::Session, PhaseError> {
        self.state
            .session
            .clone()
            .ok_or_else(|| PhaseError::new("state", "no located session in the run state"))
    }
}

/// Run one phase as a span and a state record.
pub fn run_phase<T>(
    ctx: &mut Ctx<'_>,
    name: &str,
    f: impl FnOnce(&mut Ctx<'_>) -> Result<T, PhaseError>,
) -> Result<T, PhaseError> {
    let span = tracing::info_span!(
        "phase",
        otel.name = %name,
        cicd.pipeline.task.name = %name,
        cicd.pipeline.task.run.result = Empty,
        error.type = Empty,
        otel.status_message = Empty,
    );
    let _enter = span.enter();
    let span_id = telemetry::current_span_id().unwrap_or_default();
    ctx.state.phases.push(PhaseRecord {
        name: name.to_string(),
        span_id,
        boot_id: crate::host::boot_id(),
        start_unix_nano: ids::now_unix_nano(),
        end_unix_nano: None,
        result: PhaseResult::Running,
        error: None,
        error_type: None,
    });
    ctx.save()?;
    let started = std::time::Instant::now();
    let result = f(ctx);
    let end = ids::now_unix_nano();
    let secs = started.elapsed().as_secs_f64();
    if let Some(rec) = ctx.state.phase_mut(name) {
        rec.end_unix_nano = Some(end);
        match &result {
            Ok(_) => rec.result = PhaseResult::Ok,
            Err(e) => {
                rec.result = PhaseResult::Failed;
                rec.error = Some(e.message.clone());
                rec.error_type = Some(e.kind.clone());
            }
        }
    }
    match &result {
        Ok(_) => {
            span.record(names::ATTR_TASK_RUN_RESULT, "success");
            tracing::info!("{name}: ok ({secs:.1} s)");
        }
        Err(e) => {
            span.record(names::ATTR_TASK_RUN_RESULT, "failure");
            span.record(names::ATTR_ERROR_TYPE, e.kind.as_str());
            span.record("otel.status_message", e.message.as_str());
            tracing::error!("{name}: failed after {secs:.1} s: {}", e.message);
        }
    }
    // A failure to save is reported, but the phase's own error wins.
    let saved = ctx.save();
    let value = result?;
    saved?;
    Ok(value)
}

/// Mark a phase as skipped (recorded, no span of its own work).
pub fn skip_phase(ctx: &mut Ctx<'_>, name: &str, why: &str) -> Result<(), PhaseError> {
    let now = ids::now_unix_nano();
    ctx.state.phases.push(PhaseRecord {
        name: name.to_string(),
        span_id: String::new(),
        boot_id: crate::host::boot_id(),
        start_unix_nano: now,
        end_unix_nano: Some(now),
        result: PhaseResult::Skipped,
        error: Some(why.to_string()),
        error_type: None,
    });
    tracing::info!("{name}: skipped ({why})");
    ctx.save()
}

/// Lines of a CRIU log that start an error, for span events and messages.
pub fn criu_error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .map(|l| l.chars().take(512).collect())
        .collect()
}

/// The error line that says why: the first one the failure catalog does
/// not call a follow-up (`exited, status=`, `Restoring FAILED`) or
/// harmless; else the first one.
pub fn first_cause(lines: &[String]) -> Option<String> {
    let catalog = crate::diagnose::catalog::Catalog::builtin();
    lines
        .iter()
        .find(|l| {
            let msg = crate::diagnose::parse::parse(l).msg;
            !catalog.is_followup(msg) && !catalog.is_harmless(msg)
        })
        .or_else(|| lines.first())
        .cloned()
}

/// Record CRIU's error lines as events on the current span.
pub fn emit_criu_errors(lines: &[String]) {
    for line in lines.iter().take(50) {
        tracing::warn!(event.name = names::EVENT_CRIU_ERROR, ferry.criu.line = %line, "criu error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restore that fails on a missing file after a helper's noise: the
    /// cause is the missing file, not the helper's exit status.
    #[test]
    fn the_first_cause_skips_follow_ups() {
        let log = "(00.762160) Error (criu/util.c:642): exited, status=2\n\
(01.368286)    380: Error (criu/files-reg.c:2185): Can't open file var/tmp/ferry-victim on restore: No such file or directory\n\
(01.368499)    380: Error (criu/files.c:1213): Unable to open fd=9 id=0x31\n\
(01.369365) Error (criu/cr-restore.c:2537): Restoring FAILED.\n";
        let lines = criu_error_lines(log);
        assert_eq!(lines.len(), 4);
        assert!(first_cause(&lines).unwrap().contains("ferry-victim"));
        let only_noise = criu_error_lines("Error (criu/cr-restore.c:1): Restoring FAILED.\n");
        assert!(
            first_cause(&only_noise)
                .unwrap()
                .contains("Restoring FAILED")
        );
        assert_eq!(first_cause(&[]), None);
    }
}
