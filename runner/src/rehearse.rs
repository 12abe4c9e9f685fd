//! `ferry rehearse`: everything of a trip but the reboot, on the old
//! kernel, and a report of what would fail.
//!
//! The foreground (in the session, like `ferry upgrade`) runs preflight,
//! `locate` and `assess`, then starts a detached worker and waits. The
//! worker previews the upgrade (`apt-get update`, then `apt-get -s
//! dist-upgrade`: nothing is installed), loads the kernel the trip would
//! boot and unloads it again, and runs `criu dump --leave-running` into a
//! scratch directory: the session is frozen for a few seconds and goes on.
//! The images are checked with `crit` (the image fixes need it), then
//! removed; the logs stay in `<state_dir>/rehearsals/<id>/`. A check that
//! fails does not stop the others: the report lists every problem.

use crate::config::Config;
use crate::exec::{CommandSpec, Runner, SystemRunner};
use crate::notes::{Level, Note};
use crate::phases::{self, Ctx, PhaseError, run_phase, skip_phase};
use crate::state::{Outcome, PhaseResult, RunDir, RunState};
use crate::telemetry::{Telemetry, ids};
use crate::trip::{self, TripError};
use crate::{host, units};

/// What a rehearsal found.
#[derive(Debug, Clone)]
pub struct Report {
    pub dir: std::path::PathBuf,
    pub state: RunState,
    pub outcome: Outcome,
}

impl Report {
    /// No check failed and nothing was refused.
    pub fn would_work(&self) -> bool {
        self.outcome.result == "would_work"
    }

    /// The report for people: one line per phase, then every note.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "ferry rehearse: {} (kernel {}; logs in {})\n",
            if self.would_work() {
                "the trip would work"
            } else {
                "the trip would fail"
            },
            self.state.kernel_before,
            self.dir.display()
        ));
        for p in &self.state.phases {
            let (mark, detail) = match p.result {
                PhaseResult::Ok => ("ok  ", String::new()),
                PhaseResult::Skipped => ("skip", p.error.clone().unwrap_or_default()),
                PhaseResult::Failed => ("FAIL", p.error.clone().unwrap_or_default()),
                PhaseResult::Running => ("??  ", "did not finish".into()),
            };
            if detail.is_empty() {
                out.push_str(&format!("  {mark} {}\n", p.name));
            } else {
                out.push_str(&format!("  {mark} {}: {detail}\n", p.name));
            }
        }
        for n in &self.state.notes {
            if n.level >= Level::Handled {
                out.push_str(&format!("  - {}\n", n.line()));
            }
        }
        if let Some(d) = &self.outcome.diagnosis {
            for line in d.lines() {
                out.push_str(&format!("  diagnosis: {line}\n"));
            }
        }
        out
    }
}

/// The foreground: returns the report once the worker is done.
pub fn rehearse(
    config: &Config,
    pid: Option<i32>,
    telemetry: &Telemetry,
) -> Result<Report, TripError> {
    let secrets = crate::secrets::Secrets::from_env(&|k| std::env::var(k).ok()).values();
    let runner = SystemRunner::new(telemetry.spans.clone(), secrets);
    let pre = trip::preflight(config, &runner, telemetry);
    // Without these nothing else can be tried.
    let fatal: Vec<_> = pre
        .problems
        .iter()
        .filter(|p| matches!(p.check, "root" | "systemd" | "state_dir"))
        .cloned()
        .collect();
    phases::preflight::into_result(fatal).map_err(|e| TripError::Preflight(e.message))?;
    let (run, state) = trip::open_run(config, &rehearsals_dir(config), pre, telemetry, &runner)?;
    let mut ctx = Ctx::new(config, &run, state, &runner, telemetry);
    let located = trip::locate_and_assess(&mut ctx, pid);
    let go_on = match &located {
        Ok(()) => true,
        // A refusal still leaves a session to rehearse the dump of: criu's
        // own verdict belongs in the report.
        Err((phase, _)) => phase == phases::assess::PHASE,
    };
    if !go_on {
        let outcome = conclude(&mut ctx);
        return Ok(Report {
            dir: run.root.clone(),
            state: ctx.state,
            outcome,
        });
    }
    let run_id = ctx.state.run_id.clone();
    let (unit, spec) = units::transient("rehearse", &run_id, &run.bin(), "__rehearse", &run.root);
    if let Err(e) = runner
        .run(&spec)
        .map_err(PhaseError::from)
        .and_then(|o| o.check().map_err(PhaseError::from))
    {
        let _ = run_phase(&mut ctx, "rehearse", |_| Err::<(), _>(e));
        let outcome = conclude(&mut ctx);
        return Ok(Report {
            dir: run.root.clone(),
            state: ctx.state,
            outcome,
        });
    }
    drop(ctx);
    let outcome = trip::wait_for_outcome(&run, &unit)?;
    Ok(Report {
        dir: run.root.clone(),
        state: run.load()?,
        outcome,
    })
}

/// The detached worker: upgrade preview, kernel, dump.
pub fn worker(run: &RunDir, telemetry: &Telemetry) -> Result<(), TripError> {
    let (mut config, state, runner) = crate::resume::load(run, telemetry)?;
    // Before the upgrade, the running kernel may be all there is.
    config.kernel.allow_same = true;
    let mut ctx = Ctx::new(&config, run, state, &runner, telemetry);
    ctx.state.worker_pid = Some(std::process::id() as i32);
    ctx.save()?;

    if config.upgrade.enabled && config.upgrade.command.trim().is_empty() {
        let _ = run_phase(&mut ctx, "upgrade-preview", |c| {
            phases::upgrade::preview(c, "upgrade-preview")
        });
    } else {
        let _ = skip_phase(
            &mut ctx,
            "upgrade-preview",
            "upgrade disabled or upgrade.command set",
        );
    }
    let _ = run_phase(&mut ctx, "kernel", |c| {
        let k = phases::kernel::run(c);
        unload_kernel(c.runner);
        let k = k?;
        if k.release == host::kernel_release() {
            c.state.notes.push(Note::new(
                "kernel",
                "kernel-same",
                Level::Warning,
                format!(
                    "no kernel newer than the running {} is installed yet; rehearsed with it (the upgrade may install one)",
                    k.release
                ),
            ));
        }
        Ok(())
    });
    let _ = run_phase(&mut ctx, "dump", rehearse_dump);
    conclude(&mut ctx);
    Ok(())
}

/// `criu dump --leave-running` into a scratch directory, then `crit` on
/// the images, then the images go.
fn rehearse_dump(ctx: &mut Ctx<'_>) -> Result<(), PhaseError> {
    ctx.state.handoff.notes_seen = Some(ctx.state.notes.len());
    let session = ctx.session()?;
    let plan =
        phases::dump_plan::plan(&crate::procfs::Procfs::host(), &session, ctx.config, "dump")?;
    ctx.state.notes.extend(plan.notes.clone());
    let images = ctx.run.root.join("scratch-images");
    std::fs::create_dir_all(&images)
        .map_err(|e| PhaseError::new("dump", format!("cannot create {}: {e}", images.display())))?;
    let log = ctx.run.logs().join(phases::dump::DUMP_LOG);
    let spec = phases::dump::criu_dump(ctx, &session, &plan, &images, &log, true);
    phases::dump::wait_for_quiet_foreground(ctx.run);
    ctx.save()?;
    let out = ctx.runner.run(&spec);
    let result = out
        .map_err(PhaseError::from)
        .and_then(|o| phases::dump::verdict(&o, &log, "the session was left running"));
    if result.is_ok() {
        match crate::images::check_crit(ctx.runner, &images) {
            Ok(()) => {}
            Err(e) => ctx.state.notes.push(
                Note::new("dump", "crit-unusable", Level::Refusal, e.message)
                    .with_fix("install criu's crit (Debian: it comes with the criu package)"),
            ),
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&images) {
        tracing::warn!(dir = %images.display(), error = %e, "cannot remove the rehearsal's images");
    }
    result
}

fn unload_kernel(runner: &dyn Runner) {
    let _ = runner.run(&CommandSpec::new("kexec").arg("-u").log_name("kexec-unload"));
}

/// The rehearsal's outcome: `would_work` when no phase failed and no note
/// refuses; written for the waiting foreground.
fn conclude(ctx: &mut Ctx<'_>) -> Outcome {
    let failed: Vec<String> = ctx
        .state
        .phases
        .iter()
        .filter(|p| p.result == PhaseResult::Failed)
        .map(|p| format!("{}: {}", p.name, p.error.clone().unwrap_or_default()))
        .collect();
    let refused = crate::notes::refusal_message(&ctx.state.notes);
    let would_work = failed.is_empty() && refused.is_none();
    let diagnosis = (!would_work).then(|| crate::diagnose::diagnose_run_logs(&ctx.run.logs()));
    let reason = (!would_work).then(|| {
        failed
            .iter()
            .cloned()
            .chain(refused.clone())
            .collect::<Vec<_>>()
            .join("; ")
    });
    let result = if would_work {
        "would_work"
    } else {
        "would_fail"
    };
    ctx.telemetry.emit_root(
        &ctx.state,
        result,
        (!would_work).then_some("rehearsal_failed"),
    );
    let outcome = Outcome {
        result: result.into(),
        phase: ctx
            .state
            .phases
            .iter()
            .find(|p| p.result == PhaseResult::Failed)
            .map(|p| p.name.clone()),
        reason,
        bundle: None,
        trace_file: Some(ctx.run.trace_file().display().to_string()),
        trace_id: Some(ctx.state.trace_id.clone()),
        kernel_before: ctx.state.kernel_before.clone(),
        kernel_after: None,
        downtime_ms: None,
        restored_root_pid: None,
        ship: None,
        end_unix_nano: ids::now_unix_nano(),
        diagnosis: diagnosis
            .as_ref()
            .filter(|d| d.verdict != crate::diagnose::Verdict::NoFailure)
            .map(|d| d.summary()),
        notes: Vec::new(),
    };
    ctx.state.outcome = Some(outcome.clone());
    let _ = ctx.save();
    crate::secrets::Secrets::forget(ctx.run);
    if let Err(e) = ctx.run.save_outcome(&outcome) {
        tracing::error!("{e}");
    }
    outcome
}

/// Rehearsals live beside the runs, never among them: `ferry resume
/// --retry` and the janitor look at runs only.
pub fn rehearsals_dir(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("rehearsals")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Handoff, PhaseRecord};

    fn report(
        phases: &[(&str, PhaseResult, Option<&str>)],
        notes: Vec<Note>,
        result: &str,
    ) -> Report {
        let state: RunState = serde_json::from_value(serde_json::json!({
            "format": 1, "run_id": "r", "ferry_version": "0", "host": "h",
            "trace_id": "t", "root_span_id": "s", "parent_span_id": null,
            "tracestate": null, "start_unix_nano": 1, "boot_ids": [],
            "kernel_before": "6.1.0-56-cloud-amd64", "kernel_after": null, "kernel": null,
            "phases": phases.iter().map(|(n, r, e)| PhaseRecord {
                name: n.to_string(), span_id: String::new(), boot_id: String::new(),
                start_unix_nano: 1, end_unix_nano: Some(2), result: *r,
                error: e.map(str::to_string), error_type: None,
            }).collect::<Vec<_>>(),
            "session": null, "plan": {}, "handoff": Handoff::default(),
            "worker_pid": null, "outcome": null, "notes": notes,
        }))
        .unwrap();
        let outcome = Outcome {
            result: result.into(),
            phase: None,
            reason: None,
            bundle: None,
            trace_file: None,
            trace_id: None,
            kernel_before: state.kernel_before.clone(),
            kernel_after: None,
            downtime_ms: None,
            restored_root_pid: None,
            ship: None,
            end_unix_nano: 3,
            diagnosis: None,
            notes: Vec::new(),
        };
        Report {
            dir: "/var/lib/ferry/rehearsals/r".into(),
            state,
            outcome,
        }
    }

    #[test]
    fn the_report_lists_every_check_and_note() {
        let r = report(
            &[
                ("preflight", PhaseResult::Ok, None),
                (
                    "upgrade-preview",
                    PhaseResult::Skipped,
                    Some("upgrade disabled"),
                ),
                ("dump", PhaseResult::Failed, Some("criu dump failed")),
            ],
            vec![
                Note::new(
                    "assess",
                    "dbus-connection",
                    Level::Refusal,
                    "pid 9 holds D-Bus",
                )
                .with_fix("end it"),
                Note::new("assess", "x", Level::Info, "context only"),
            ],
            "would_fail",
        );
        assert!(!r.would_work());
        let text = r.render();
        assert!(text.starts_with("ferry rehearse: the trip would fail (kernel 6.1.0-56-cloud-amd64; logs in /var/lib/ferry/rehearsals/r)\n"), "{text}");
        assert!(text.contains("  ok   preflight\n"));
        assert!(text.contains("  skip upgrade-preview: upgrade disabled\n"));
        assert!(text.contains("  FAIL dump: criu dump failed\n"));
        assert!(text.contains("  - refused (dbus-connection): pid 9 holds D-Bus. Fix: end it\n"));
        assert!(
            !text.contains("context only"),
            "info notes stay out: {text}"
        );
        let ok = report(&[("dump", PhaseResult::Ok, None)], vec![], "would_work");
        assert!(ok.would_work());
        assert!(
            ok.render()
                .starts_with("ferry rehearse: the trip would work")
        );
    }
}
