//! The janitor: what the next `ferry` does for runs that died.
//!
//! A run dies when the process carrying it ends without an outcome: the
//! worker killed or crashed, the machine losing power, a kexec after which
//! `ferry-resume` never ran. Its root span was never emitted, so every span
//! it wrote hangs under a parent nobody sent (Jaeger draws them as orphans),
//! and its bundle was never made. The janitor ends such a run: the phase
//! that was running gets its span (with the id its children point to), the
//! run ends `died` through the same path as every run (collect, finish,
//! root span with an error result and the original start, bundle, ship,
//! metrics, export), and what any run still holds unexported is re-sent.
//!
//! Every process working on a run (worker, resume, finisher) holds a shared
//! lock on its `run.lock`; the janitor buries a run only under the exclusive
//! lock, and only when the run also looks quiet from outside (state not
//! written for [`QUIET`]; not a run whose kexec happened and whose resume
//! unit may still start on this boot). The foreground `ferry upgrade` holds
//! no lock (it must hold no file of the run when it is checkpointed): the
//! quiet time covers the moment between it and the worker.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::exec::Runner;
use crate::phases::Ctx;
use crate::state::{PhaseResult, RunDir, RunState};
use crate::telemetry::{Telemetry, metrics, names, otlp_file};

/// How long a run's state must be untouched before it can be dead.
pub const QUIET: Duration = Duration::from_secs(120);
/// How long after boot a handed-off run may still be resumed by its unit.
pub const RESUME_GRACE: Duration = Duration::from_secs(15 * 60);
/// Budget of the janitor's re-export of every run's unsent spans.
pub const EXPORT_BUDGET: Duration = Duration::from_secs(10);

/// ferry's outcome for a run the janitor ended.
pub const DIED: &str = "died";
/// `error.type` of a run whose process ended without a result.
pub const ERROR_DIED: &str = "run_died";
/// `error.type` of a run that was handed off to a kexec that never resumed.
pub const ERROR_NEVER_RESUMED: &str = "resume_never_ran";

/// A shared or exclusive `flock` on a run's `run.lock`, released on drop.
pub struct RunLock(#[allow(dead_code)] std::fs::File);

impl RunLock {
    fn take(run: &RunDir, exclusive: bool) -> Option<RunLock> {
        crate::state::try_flock(&run.root.join("run.lock"), exclusive).map(RunLock)
    }

    /// Held by every process working on the run, for its whole life. A
    /// janitor burying the run at that moment holds it exclusively: wait a
    /// little, then go on without (a stuck janitor must not stop a trip).
    pub fn working(run: &RunDir) -> Option<RunLock> {
        for _ in 0..50 {
            if let Some(l) = RunLock::take(run, false) {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        tracing::warn!(
            "run {} is locked by another ferry; going on",
            run.root.display()
        );
        None
    }

    /// Only when no process works on the run.
    fn exclusive(run: &RunDir) -> Option<RunLock> {
        RunLock::take(run, true)
    }
}

/// What the janitor knows about the machine now (injectable for tests).
#[derive(Debug, Clone)]
pub struct Facts {
    pub boot_id: String,
    pub uptime: Duration,
    pub now: SystemTime,
}

impl Facts {
    pub fn here() -> Facts {
        let uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::MAX);
        Facts {
            boot_id: crate::host::boot_id(),
            uptime,
            now: SystemTime::now(),
        }
    }
}

/// Why a run is not dead, or how it died.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ended,
    /// A process holds the run's lock, or its state changed lately.
    Working,
    /// Handed off to a kexec; its resume unit may still start on this boot.
    AwaitingResume,
    /// A restore attempt failed on this boot and `ferry resume --retry`
    /// may still bring the session back: the give-up timer owns the end.
    AwaitingRetry,
    Dead {
        error_type: &'static str,
        reason: String,
    },
}

/// The verdict on one run, lock aside.
pub fn verdict(state: &RunState, state_age: Duration, facts: &Facts) -> Verdict {
    if state.outcome.is_some() {
        return Verdict::Ended;
    }
    if state_age < QUIET {
        return Verdict::Working;
    }
    let attempt_failed_here = state.handoff.gave_up.is_none()
        && state
            .handoff
            .restore_attempts
            .last()
            .is_some_and(|a| a.boot_id == facts.boot_id && a.error.is_some());
    if attempt_failed_here {
        return Verdict::AwaitingRetry;
    }
    let handed_off = state
        .phase("handoff")
        .is_some_and(|p| p.result == PhaseResult::Ok)
        && state.handoff.called_off.is_none();
    let resumed_here = state.boot_ids.contains(&facts.boot_id);
    if handed_off && !resumed_here {
        if facts.uptime < RESUME_GRACE {
            return Verdict::AwaitingResume;
        }
        return Verdict::Dead {
            error_type: ERROR_NEVER_RESUMED,
            reason: format!(
                "the machine rebooted after the handoff, but ferry-resume did not run on this boot ({}) within {} min; the images are still in the run directory",
                facts.boot_id,
                RESUME_GRACE.as_secs() / 60
            ),
        };
    }
    let last = state.phases.last();
    let reason = match last {
        Some(p) if p.result == PhaseResult::Running => format!(
            "ferry stopped during phase {} on boot {} without recording a result (killed, crashed, or the machine went down)",
            p.name, p.boot_id
        ),
        Some(p) => format!(
            "ferry stopped after phase {} on boot {} without ending the run",
            p.name, p.boot_id
        ),
        None => "ferry stopped before the first phase ended".into(),
    };
    Verdict::Dead {
        error_type: ERROR_DIED,
        reason,
    }
}

/// A run the janitor ended.
#[derive(Debug, Clone)]
pub struct Buried {
    pub run: PathBuf,
    pub error_type: &'static str,
    pub reason: String,
}

/// End every dead run under `runs_dir` (but `except`, the caller's own),
/// then re-send what any run has not exported yet. `runner_for` gives the
/// command runner for a run (its secrets are redacted from every output).
pub fn sweep(
    runs_dir: &Path,
    except: Option<&Path>,
    telemetry: &Telemetry,
    facts: &Facts,
    runner_for: &dyn Fn(&RunDir) -> Box<dyn Runner>,
) -> Vec<Buried> {
    let mut buried = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    for dir in dirs {
        if except.is_some_and(|e| e == dir) || !dir.join("state.json").is_file() {
            continue;
        }
        let run = RunDir::new(&dir);
        if let Some(b) = bury_if_dead(&run, telemetry, facts, runner_for) {
            buried.push(b);
        }
    }
    // The caller's own run is exported by its own processes (the worker's
    // flush before the kexec must not find the export lock taken).
    for (dir, report) in crate::telemetry::ship_all_except(runs_dir, except, EXPORT_BUDGET) {
        if report.spans_sent > 0 || report.metric_lines_sent > 0 {
            tracing::info!(
                run = %dir.display(),
                spans = report.spans_sent,
                "re-sent the spans a run had not exported"
            );
        }
    }
    buried
}

fn bury_if_dead(
    run: &RunDir,
    telemetry: &Telemetry,
    facts: &Facts,
    runner_for: &dyn Fn(&RunDir) -> Box<dyn Runner>,
) -> Option<Buried> {
    let _lock = RunLock::exclusive(run)?;
    let state = match run.load() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("janitor: {e}");
            return None;
        }
    };
    let age = std::fs::metadata(run.state_file())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|m| facts.now.duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    let Verdict::Dead { error_type, reason } = verdict(&state, age, facts) else {
        return None;
    };
    let config = match crate::trip::plan_of(run, &state) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("janitor: run {}: {e}", state.run_id);
            return None;
        }
    };
    tracing::warn!(run = %state.run_id, "janitor: the run died: {reason}; ending it");
    let runner = runner_for(run);
    telemetry.attach(&state, run.trace_file(), run.logs().join("ferry.log"));
    let mut ctx = Ctx {
        config: &config,
        run,
        state,
        runner: runner.as_ref(),
        telemetry,
    };
    let died_in = end_running_phase(&mut ctx, error_type, &reason);
    crate::finishing::conclude(
        &mut ctx,
        DIED,
        died_in.as_deref(),
        Some(reason.clone()),
        Some(error_type),
    );
    Some(Buried {
        run: run.root.clone(),
        error_type,
        reason,
    })
}

/// The phase that was running when the run died: recorded as failed, and
/// its span written with the id its children already point to. Its end is
/// the last end among those children (on the phase's own boot), or its
/// start when it has none: the real end is unknown.
fn end_running_phase(ctx: &mut Ctx<'_>, error_type: &str, reason: &str) -> Option<String> {
    let trace = std::fs::read_to_string(ctx.run.trace_file()).unwrap_or_default();
    let rec = ctx
        .state
        .phases
        .iter_mut()
        .rev()
        .find(|p| p.result == PhaseResult::Running)?;
    let end = children_end(&trace, &rec.span_id).unwrap_or(rec.start_unix_nano);
    rec.result = PhaseResult::Failed;
    rec.error = Some(reason.to_string());
    rec.error_type = Some(error_type.to_string());
    let name = rec.name.clone();
    if !rec.span_id.is_empty() {
        let span = json!({
            "traceId": ctx.state.trace_id,
            "spanId": rec.span_id,
            "parentSpanId": ctx.state.root_span_id,
            "name": name,
            "kind": 1,
            "startTimeUnixNano": rec.start_unix_nano.to_string(),
            "endTimeUnixNano": end.max(rec.start_unix_nano).to_string(),
            "attributes": [
                otlp_file::attr(names::ATTR_TASK_NAME, &name),
                otlp_file::attr(names::ATTR_TASK_RUN_ID, &rec.span_id),
                otlp_file::attr(names::ATTR_TASK_RUN_RESULT, metrics::pipeline_result(DIED)),
                otlp_file::attr(names::ATTR_ERROR_TYPE, error_type),
            ],
            "events": [],
            "status": { "code": 2, "message": reason },
        });
        // The span claims the boot the phase ran on, not the janitor's.
        let kernel = if rec.boot_id == crate::host::boot_id() {
            crate::host::kernel_release()
        } else if ctx.state.boot_ids.first() == Some(&rec.boot_id) {
            ctx.state.kernel_before.clone()
        } else {
            ctx.state
                .kernel_after
                .clone()
                .unwrap_or_else(|| "unknown".into())
        };
        let boot = rec.boot_id.clone();
        ctx.telemetry.spans.emit_raw_as(
            span,
            &[
                (names::ATTR_BOOT_ID, boot.as_str()),
                (names::ATTR_KERNEL_RELEASE, kernel.as_str()),
            ],
        );
    }
    if let Err(e) = ctx.save() {
        tracing::error!("{e}");
    }
    Some(name)
}

/// The latest end among the spans of `trace` whose parent is `parent`.
fn children_end(trace: &str, parent: &str) -> Option<u64> {
    trace
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .flat_map(|v| {
            v["resourceSpans"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
                .flat_map(|s| s["spans"].as_array().into_iter().flatten())
                .filter(|s| s["parentSpanId"] == parent)
                .filter_map(|s| s["endTimeUnixNano"].as_str()?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .max()
}

/// Start the janitor for the runs beside `run` (`ferry __janitor`) as its
/// own transient unit: it must not hold up the trip, nor open connections
/// from a process that is about to be checkpointed.
pub fn start_beside(run: &RunDir, run_id: &str, runner: &dyn Runner) {
    let (unit, spec) =
        crate::units::transient("janitor", run_id, &run.bin(), "__janitor", &run.root);
    if let Err(e) = runner.run(&spec).and_then(|o| o.check()) {
        tracing::warn!(unit = %unit, "cannot start the janitor for earlier runs: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PhaseRecord;

    fn state(phases: &[(&str, PhaseResult, &str)]) -> RunState {
        let mut s = RunState::example();
        s.boot_ids = vec!["boot-a".into()];
        s.phases = phases
            .iter()
            .map(|(n, r, b)| PhaseRecord {
                name: n.to_string(),
                span_id: "00f067aa0ba902b7".into(),
                boot_id: b.to_string(),
                start_unix_nano: 1,
                end_unix_nano: None,
                result: *r,
                error: None,
                error_type: None,
            })
            .collect();
        s
    }

    fn facts(boot: &str, uptime_min: u64) -> Facts {
        Facts {
            boot_id: boot.into(),
            uptime: Duration::from_secs(uptime_min * 60),
            now: SystemTime::now(),
        }
    }

    const OLD: Duration = Duration::from_secs(3600);

    /// Regression: a run whose restore attempt failed, quiet while it
    /// waits for `ferry resume --retry`, was buried as died and the retry
    /// lost.
    #[test]
    fn a_run_waiting_for_a_retry_is_left_alone_until_it_gives_up() {
        let mut s = state(&[
            ("handoff", PhaseResult::Ok, "boot-a"),
            ("restore", PhaseResult::Failed, "boot-b"),
        ]);
        s.boot_ids.push("boot-b".into());
        s.handoff.restore_attempts.push(crate::state::Attempt {
            number: 1,
            boot_id: "boot-b".into(),
            start_unix_nano: 1,
            end_unix_nano: Some(2),
            error: Some("criu restore failed".into()),
            log: "restore-1.log".into(),
        });
        assert_eq!(
            verdict(&s, OLD, &facts("boot-b", 100)),
            Verdict::AwaitingRetry
        );
        // Another boot: the session is gone, the run is dead.
        assert!(matches!(
            verdict(&s, OLD, &facts("boot-c", 100)),
            Verdict::Dead { .. }
        ));
        // Given up (by the timer or by hand) without an outcome: dead.
        s.handoff.gave_up = Some("window over".into());
        assert!(matches!(
            verdict(&s, OLD, &facts("boot-b", 100)),
            Verdict::Dead { .. }
        ));
    }

    #[test]
    fn a_run_that_stopped_mid_phase_is_dead() {
        let s = state(&[("upgrade", PhaseResult::Running, "boot-a")]);
        match verdict(&s, OLD, &facts("boot-a", 100)) {
            Verdict::Dead { error_type, reason } => {
                assert_eq!(error_type, ERROR_DIED);
                assert!(reason.contains("phase upgrade on boot boot-a"), "{reason}");
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_recent_or_ended_run_is_left_alone() {
        let s = state(&[("upgrade", PhaseResult::Running, "boot-a")]);
        assert_eq!(
            verdict(&s, Duration::from_secs(5), &facts("boot-a", 100)),
            Verdict::Working
        );
        let mut ended = s.clone();
        ended.outcome = Some(crate::state::Outcome {
            result: "failed".into(),
            phase: None,
            reason: None,
            bundle: None,
            trace_file: None,
            trace_id: None,
            kernel_before: "k".into(),
            kernel_after: None,
            downtime_ms: None,
            restored_root_pid: None,
            end_unix_nano: 2,
            diagnosis: None,
            ship: None,
            notes: Vec::new(),
        });
        assert_eq!(verdict(&ended, OLD, &facts("boot-a", 100)), Verdict::Ended);
    }

    #[test]
    fn a_handed_off_run_waits_for_its_resume_unit_then_is_dead() {
        let s = state(&[("handoff", PhaseResult::Ok, "boot-a")]);
        assert_eq!(
            verdict(&s, OLD, &facts("boot-b", 3)),
            Verdict::AwaitingResume
        );
        match verdict(&s, OLD, &facts("boot-b", 60)) {
            Verdict::Dead { error_type, .. } => assert_eq!(error_type, ERROR_NEVER_RESUMED),
            v => panic!("{v:?}"),
        }
        // Resumed on this boot, then stopped: died, not "never resumed".
        let mut resumed = state(&[
            ("handoff", PhaseResult::Ok, "boot-a"),
            ("restore", PhaseResult::Running, "boot-b"),
        ]);
        resumed.boot_ids.push("boot-b".into());
        match verdict(&resumed, OLD, &facts("boot-b", 3)) {
            Verdict::Dead { error_type, .. } => assert_eq!(error_type, ERROR_DIED),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_lock_holder_keeps_the_janitor_out() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let working = RunLock::working(&run).unwrap();
        assert!(RunLock::exclusive(&run).is_none());
        // Two processes of one run (resume and its finisher) share it.
        assert!(RunLock::take(&run, false).is_some());
        drop(working);
        assert!(RunLock::exclusive(&run).is_some());
    }

    #[test]
    fn the_died_phase_ends_with_its_last_child() {
        let line = |parent: &str, end: u64| {
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"parentSpanId": parent, "endTimeUnixNano": end.to_string()}]}]}]}).to_string()
        };
        let trace = [line("p", 5), line("q", 9), line("p", 7), "torn".into()].join("\n");
        assert_eq!(children_end(&trace, "p"), Some(7));
        assert_eq!(children_end(&trace, "z"), None);
    }
}
