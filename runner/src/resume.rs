//! The trip after the reboot: `ferry resume` (the unit's main process) and
//! the finisher it hands the bookkeeping to.
//!
//! `ferry resume` restores the session and then only waits: criu is pid 1
//! of the new pid namespace and a child of this process tree, so this
//! process must live as long as the session. Everything that ends (verify,
//! collect, bundle, ship) runs in a separate transient unit, so a failure
//! there can never take the session down.

use crate::config::Config;
use crate::exec::{CommandSpec, Runner, SystemRunner};
use crate::phases::{self, Ctx, run_phase};
use crate::procfs::Procfs;
use crate::state::RunDir;
use crate::telemetry::{Telemetry, ids};
use crate::trip::TripError;
use crate::{finishing, units};

/// A later process of a run: its state (this boot's id added), its plan,
/// a command runner logging into it, telemetry attached.
pub fn load(
    run: &RunDir,
    telemetry: &Telemetry,
) -> Result<(Config, crate::state::RunState, SystemRunner), TripError> {
    let mut state = run.load()?;
    let config = crate::trip::plan_of(run, &state)?;
    let boot = crate::host::boot_id();
    if !state.boot_ids.contains(&boot) {
        state.boot_ids.push(boot);
        run.save(&state)?;
    }
    let runner = SystemRunner::new(
        telemetry.spans.clone(),
        crate::secrets::Secrets::for_run(run).values(),
    );
    runner.set_logs_dir(run.logs());
    telemetry.attach(&state, run.trace_file(), run.logs().join("ferry.log"));
    Ok((config, state, runner))
}

/// The unit's main process. Returns the exit code for the unit.
pub fn resume(run: &RunDir, telemetry: &Telemetry) -> Result<i32, TripError> {
    // Held as long as this process lives (as long as the session).
    let _working = crate::janitor::RunLock::working(run);
    let (config, state, runner) = load(run, telemetry)?;
    let mut ctx = Ctx::new(&config, run, state, &runner, telemetry);
    if ctx.state.outcome.is_some() || ctx.state.handoff.gave_up.is_some() {
        tracing::warn!(
            "run {} has already ended; nothing to resume",
            ctx.state.run_id
        );
        return Ok(0);
    }
    let number = ctx.state.handoff.restore_attempts.len() as u32 + 1;
    let limit = config.criu.restore_attempts.max(1);
    if number > limit {
        give_up(
            &mut ctx,
            &format!("all {limit} restore attempts (criu.restore_attempts) were used"),
        );
        return Ok(1);
    }
    // The attempt starts here, not when criu runs: one that fails in
    // netfilter or fixups is an attempt too (counted, retried, given up).
    ctx.state
        .handoff
        .restore_attempts
        .push(crate::state::Attempt {
            number,
            boot_id: crate::host::boot_id(),
            start_unix_nano: ids::now_unix_nano(),
            end_unix_nano: None,
            error: None,
            log: phases::restore::RESTORE_LOG.into(),
        });
    ctx.save()?;
    let restored = run_phase(&mut ctx, "netfilter", phases::netfilter::run)
        .and_then(|_| run_phase(&mut ctx, "fixups", phases::fixups::run))
        .and_then(|inherited| {
            run_phase(&mut ctx, "restore", |c| phases::restore::run(c, &inherited))
        });
    let mut handle = match restored {
        Ok(h) => h,
        Err(e) => {
            if let Some(a) = ctx.state.handoff.restore_attempts.last_mut()
                && a.end_unix_nano.is_none()
            {
                a.end_unix_nano = Some(ids::now_unix_nano());
                a.error = Some(e.message.clone());
            }
            let _ = ctx.save();
            attempt_failed(&mut ctx, number, limit, &e);
            return Ok(1);
        }
    };
    // A later attempt made it: the deadline no longer applies.
    if number > 1 {
        let _ = runner.run(
            &CommandSpec::new("systemctl")
                .args([
                    "stop",
                    &format!("{}.timer", give_up_unit(&ctx.state.run_id)),
                ])
                .log_name("give-up-timer-stop"),
        );
    }
    tracing::info!(
        root = handle.root,
        init = handle.namespace_init,
        "session restored; enter its namespaces with: nsenter -t {} -a",
        handle.root
    );

    let (_, spec) = units::transient(
        "finish",
        &ctx.state.run_id,
        &run.bin(),
        "__finish",
        &run.root,
    );
    let started = runner.run(&spec).and_then(|o| o.check());
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the finisher unit; finishing in this process");
        drop(ctx);
        // This process is the session's lifeline: whatever the finisher
        // does, it must come back here and wait.
        let finished =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| finish(run, telemetry)));
        if !matches!(finished, Ok(Ok(_))) {
            tracing::error!(
                "finishing the run failed; the session lives on, its bundle is missing"
            );
        }
    }
    // Live as long as the session does.
    let status = handle
        .child
        .wait()
        .map(|s| s.code().unwrap_or(0))
        .unwrap_or(0);
    tracing::info!(status, "the restored session has ended");
    Ok(0)
}

/// The transient unit (timer and service) that gives up once the retry
/// window has passed.
fn give_up_unit(run_id: &str) -> String {
    format!("ferry-give-up-{run_id}")
}

/// A restore attempt failed. Below the limit and inside the window the
/// images and lock rules stay, so the client waits and `ferry resume
/// --retry` can still bring the session back; the attempt's evidence is
/// shipped now. Otherwise ferry gives up.
fn attempt_failed(ctx: &mut Ctx<'_>, number: u32, limit: u32, e: &phases::PhaseError) {
    let window = ctx.config.criu.retry_window_secs;
    let first_failure = ctx
        .state
        .handoff
        .restore_attempts
        .iter()
        .find(|a| a.error.is_some())
        .and_then(|a| a.end_unix_nano)
        .unwrap_or_else(ids::now_unix_nano);
    let elapsed = ids::now_unix_nano().saturating_sub(first_failure) / 1_000_000_000;
    let left = match after_failure(number, limit, elapsed, window) {
        AfterFailure::GiveUp(why) => {
            give_up(ctx, &format!("{why}: {}", e.message));
            return;
        }
        AfterFailure::Wait { left } => left,
    };
    let diagnosis = finishing::report_attempt(ctx, number);
    let message = format!(
        "restore attempt {number} of {limit} failed: {}{}. The images and CRIU's lock rules are kept, so the client waits: fix the cause and run `ferry resume --retry` within {left} s; after that, or after {limit} attempts, ferry gives up and the client's connection is reset",
        e.message,
        diagnosis
            .map(|d| format!(" (diagnosis: {d})"))
            .unwrap_or_default()
    );
    tracing::error!("{message}");
    ctx.state.notes.push(crate::notes::Note::new(
        "restore",
        "restore-attempt-failed",
        crate::notes::Level::Warning,
        message,
    ));
    let _ = ctx.save();
    if number == 1 {
        // The deadline: a failed restore must not hold the client forever.
        let unit = give_up_unit(&ctx.state.run_id);
        let spec = CommandSpec::new("systemd-run")
            .args([
                "--unit",
                &unit,
                "--collect",
                "--quiet",
                &format!("--on-active={left}s"),
                "--timer-property=AccuracySec=1s",
            ])
            .arg(ctx.run.bin().display().to_string())
            .args(["resume", "--give-up", "--run-dir"])
            .arg(ctx.run.root.display().to_string())
            .log_name("give-up-timer");
        if let Err(e) = ctx.runner.run(&spec).and_then(|o| o.check()) {
            tracing::warn!(error = %e, "cannot set the give-up timer; give up by hand with `ferry resume --give-up`");
        }
    }
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// Keep the images and rules; a retry may come within `left` seconds.
    Wait { left: u64 },
    /// Give up, for this reason.
    GiveUp(String),
}

/// The stated limit: `limit` attempts in all, and no attempt later than
/// `window` seconds after the first failure.
pub fn after_failure(number: u32, limit: u32, elapsed: u64, window: u64) -> AfterFailure {
    if number >= limit {
        return AfterFailure::GiveUp(format!(
            "restore attempt {number} of {limit} (criu.restore_attempts) failed"
        ));
    }
    if elapsed > window {
        return AfterFailure::GiveUp(format!(
            "restore attempt {number} failed {elapsed} s after the first failure, past criu.retry_window_secs = {window}"
        ));
    }
    AfterFailure::Wait {
        left: window - elapsed,
    }
}

/// Stop trying: remove the lock rules (the client is reset rather than
/// left hanging), disable the units, end the run `failed`.
pub fn give_up(ctx: &mut Ctx<'_>, reason: &str) {
    tracing::error!("giving up the restore: {reason}");
    let removed = phases::netfilter::unlock(ctx).unwrap_or_else(|e| {
        tracing::error!("cannot remove CRIU's lock rules: {}", e.message);
        0
    });
    let reason = format!(
        "{reason}; gave up: {removed} CRIU lock rule(s) removed, so the client's connection is reset; the images stay in {}",
        ctx.run.images().display()
    );
    ctx.state.handoff.gave_up = Some(reason.clone());
    let _ = ctx.save();
    let _ = ctx.runner.run(
        &CommandSpec::new("systemctl")
            .args([
                "stop",
                &format!("{}.timer", give_up_unit(&ctx.state.run_id)),
            ])
            .log_name("give-up-timer-stop"),
    );
    finishing::conclude(
        ctx,
        "failed",
        Some("restore"),
        Some(reason),
        Some("restore_gave_up"),
    );
}

/// `ferry resume --give-up`: the retry window passed (the timer), or a
/// person decided. An attempt still running decides for itself.
pub fn give_up_now(run: &RunDir, telemetry: &Telemetry, why: &str) -> Result<i32, TripError> {
    let _working = crate::janitor::RunLock::working(run);
    let (config, state, runner) = load(run, telemetry)?;
    let mut ctx = Ctx::new(&config, run, state, &runner, telemetry);
    if ctx.state.outcome.is_some() {
        tracing::info!("run {} has ended already", ctx.state.run_id);
        return Ok(0);
    }
    if ctx
        .state
        .handoff
        .restore_attempts
        .last()
        .is_some_and(|a| a.end_unix_nano.is_none())
    {
        tracing::warn!("a restore attempt is running; it decides");
        return Ok(0);
    }
    give_up(&mut ctx, why);
    Ok(1)
}

/// `ferry resume --retry`: start the next restore attempt of `run` as a
/// transient unit (its main process must outlive the session) and follow
/// it to its end. Returns the exit code: 0 restored, 1 failed.
pub fn retry(run: &RunDir) -> Result<i32, TripError> {
    let state = run.load()?;
    let config = crate::trip::plan_of(run, &state)?;
    if let Some(o) = &state.outcome {
        return Err(TripError::Phase(phases::PhaseError::new(
            "retry",
            format!(
                "run {} has ended ({}): nothing to retry",
                state.run_id, o.result
            ),
        )));
    }
    let attempts = &state.handoff.restore_attempts;
    match attempts.last() {
        None => {
            return Err(TripError::Phase(phases::PhaseError::new(
                "retry",
                format!("run {} has not tried to restore yet", state.run_id),
            )));
        }
        Some(a) if a.end_unix_nano.is_none() => {
            return Err(TripError::Phase(phases::PhaseError::new(
                "retry",
                format!(
                    "restore attempt {} of run {} is still running",
                    a.number, state.run_id
                ),
            )));
        }
        // A second restore of a live session would load the saved rules
        // over its connection and restore the same images again.
        Some(a) if a.error.is_none() => {
            return Err(TripError::Phase(phases::PhaseError::new(
                "retry",
                format!(
                    "restore attempt {} of run {} succeeded: the session runs, nothing to retry",
                    a.number, state.run_id
                ),
            )));
        }
        Some(_) => {}
    }
    if let Some(reason) = &state.handoff.gave_up {
        return Err(TripError::Phase(phases::PhaseError::new(
            "retry",
            format!("run {} gave up: {reason}", state.run_id),
        )));
    }
    let number = attempts.len() as u32 + 1;
    let limit = config.criu.restore_attempts.max(1);
    eprintln!(
        "ferry: run {}: restore attempt {number} of {limit}",
        state.run_id
    );
    let (unit, spec) = units::transient(
        &format!("resume-attempt-{number}"),
        &state.run_id,
        &run.bin(),
        "resume",
        &run.root,
    );
    let runner = crate::exec::SystemRunner::new(Default::default(), Vec::new());
    runner
        .run(&spec)
        .and_then(|o| o.check())
        .map_err(|e| TripError::Phase(e.into()))?;
    let deadline = std::time::Instant::now()
        + std::time::Duration::from_secs(config.criu.restore_timeout_secs.max(10) + 180);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let now = run.load()?;
        let this = now
            .handoff
            .restore_attempts
            .iter()
            .find(|a| a.number == number);
        match this {
            Some(a) if a.end_unix_nano.is_some() => {
                return Ok(match &a.error {
                    None => {
                        eprintln!(
                            "ferry: restore attempt {number} succeeded; the session runs again (unit {unit})"
                        );
                        if let Some(pid) = now.handoff.restored_root_pid {
                            eprintln!("ferry: enter its namespaces with: nsenter -t {pid} -a");
                        }
                        0
                    }
                    Some(err) => {
                        eprintln!("ferry: restore attempt {number} failed: {err}");
                        if let Some(reason) = &now.handoff.gave_up {
                            eprintln!("ferry: {reason}");
                        } else {
                            eprintln!("ferry: `ferry resume --retry` may try again");
                        }
                        1
                    }
                });
            }
            _ if now.handoff.gave_up.is_some() => {
                eprintln!(
                    "ferry: {}",
                    now.handoff.gave_up.as_deref().unwrap_or_default()
                );
                return Ok(1);
            }
            _ if std::time::Instant::now() > deadline => {
                return Err(TripError::WorkerLost {
                    unit: unit.clone(),
                    log: run.logs().join("ferry.log"),
                });
            }
            _ => {}
        }
    }
}

/// The run that waits for a retry: the newest under `runs_dir` whose last
/// restore attempt failed and that has not ended.
pub fn waiting_run(runs_dir: &std::path::Path) -> Result<RunDir, TripError> {
    let mut ids: Vec<String> = std::fs::read_dir(runs_dir)
        .map_err(|source| {
            TripError::State(crate::state::StateError::Read {
                path: runs_dir.to_path_buf(),
                source,
            })
        })?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    ids.sort();
    for id in ids.iter().rev() {
        let run = RunDir::new(runs_dir.join(id));
        let Ok(state) = run.load() else { continue };
        let failed_last = state
            .handoff
            .restore_attempts
            .last()
            .is_some_and(|a| a.error.is_some());
        if state.outcome.is_none() && state.handoff.gave_up.is_none() && failed_last {
            return Ok(run);
        }
    }
    Err(TripError::Phase(phases::PhaseError::new(
        "retry",
        format!(
            "no run under {} waits for a retry (none has a failed restore and is still open); name one with --run-dir",
            runs_dir.display()
        ),
    )))
}

/// The finisher: verify, collect, finish, ship.
pub fn finish(run: &RunDir, telemetry: &Telemetry) -> Result<i32, TripError> {
    let _working = crate::janitor::RunLock::working(run);
    let (config, state, runner) = load(run, telemetry)?;
    let mut ctx = Ctx::new(&config, run, state, &runner, telemetry);
    let verified = run_phase(&mut ctx, "verify", |c| {
        phases::verify::run(c, &Procfs::host())
    });
    let outcome = match (verified, ctx.state.handoff.called_off.clone()) {
        (Err(e), _) => finishing::conclude(
            &mut ctx,
            "failed",
            Some("verify"),
            Some(e.message.clone()),
            Some(&e.kind),
        ),
        (Ok(()), Some(reason)) => {
            // The phase that called the trip off, for the summary line.
            let phase = ctx
                .state
                .phases
                .iter()
                .rev()
                .find(|p| p.result == crate::state::PhaseResult::Failed)
                .map_or_else(|| "handoff".to_string(), |p| p.name.clone());
            finishing::conclude(
                &mut ctx,
                "called_off",
                Some(&phase),
                Some(reason),
                Some("called_off"),
            )
        }
        (Ok(()), None) => finishing::conclude(&mut ctx, "succeeded", None, None, None),
    };
    Ok(if outcome.result == "succeeded" { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_attempts_and_a_window() {
        assert_eq!(
            after_failure(1, 3, 0, 1800),
            AfterFailure::Wait { left: 1800 }
        );
        assert_eq!(
            after_failure(2, 3, 600, 1800),
            AfterFailure::Wait { left: 1200 }
        );
        match after_failure(3, 3, 10, 1800) {
            AfterFailure::GiveUp(why) => assert!(why.contains("attempt 3 of 3"), "{why}"),
            other => panic!("{other:?}"),
        }
        match after_failure(2, 3, 1801, 1800) {
            AfterFailure::GiveUp(why) => assert!(why.contains("criu.retry_window_secs"), "{why}"),
            other => panic!("{other:?}"),
        }
        // One attempt allowed: its failure ends it.
        assert!(matches!(
            after_failure(1, 1, 0, 1800),
            AfterFailure::GiveUp(_)
        ));
    }

    fn run_with(dir: &std::path::Path, id: &str, edit: impl FnOnce(&mut serde_json::Value)) {
        let run = RunDir::new(dir.join(id));
        std::fs::create_dir_all(&run.root).unwrap();
        let mut v = serde_json::json!({
            "format": 1, "run_id": id, "ferry_version": "0", "host": "h",
            "trace_id": "t", "root_span_id": "r", "parent_span_id": null,
            "tracestate": null, "start_unix_nano": 1, "boot_ids": [],
            "kernel_before": "k", "kernel_after": null, "kernel": null,
            "phases": [], "session": null, "plan": {},
            "handoff": crate::state::Handoff::default(),
            "worker_pid": null, "outcome": null
        });
        edit(&mut v);
        std::fs::write(run.state_file(), v.to_string()).unwrap();
    }

    /// Regression: `--retry` after a restore that worked restored the same
    /// images again and loaded the saved rules over the live connection.
    #[test]
    fn retry_refuses_a_run_whose_last_attempt_worked_or_that_gave_up() {
        let dir = tempfile::tempdir().unwrap();
        let attempt = |error: serde_json::Value| {
            serde_json::json!([
                {"number": 1, "boot_id": "b", "start_unix_nano": 1, "end_unix_nano": 2,
                 "error": error, "log": "restore.log"}
            ])
        };
        let id = "20260101T000000Z-aaaaaa";
        run_with(dir.path(), id, |v| {
            v["handoff"]["restore_attempts"] = attempt(serde_json::Value::Null);
        });
        let e = retry(&RunDir::new(dir.path().join(id)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("attempt 1") && e.contains("succeeded"), "{e}");

        let id = "20260102T000000Z-bbbbbb";
        run_with(dir.path(), id, |v| {
            v["handoff"]["restore_attempts"] = attempt("criu restore failed".into());
            v["handoff"]["gave_up"] = "all 1 restore attempts were used".into();
        });
        let e = retry(&RunDir::new(dir.path().join(id)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gave up: all 1 restore attempts"), "{e}");
    }

    #[test]
    fn the_waiting_run_is_the_newest_open_one_with_a_failed_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let failed = |v: &mut serde_json::Value| {
            v["handoff"]["restore_attempts"] = serde_json::json!([
                {"number": 1, "boot_id": "b", "start_unix_nano": 1, "end_unix_nano": 2,
                 "error": "criu restore failed", "log": "restore.log"}
            ]);
        };
        run_with(dir.path(), "20260101T000000Z-aaaaaa", failed);
        run_with(dir.path(), "20260102T000000Z-bbbbbb", |v| {
            failed(v);
            v["handoff"]["gave_up"] = serde_json::json!("gave up");
        });
        run_with(dir.path(), "20260103T000000Z-cccccc", |_| {});
        let run = waiting_run(dir.path()).unwrap();
        assert!(
            run.root.ends_with("20260101T000000Z-aaaaaa"),
            "{}",
            run.root.display()
        );
        let empty = tempfile::tempdir().unwrap();
        let msg = waiting_run(empty.path()).unwrap_err().to_string();
        assert!(
            msg.contains("no run under") && msg.contains("--run-dir"),
            "{msg}"
        );
    }
}
