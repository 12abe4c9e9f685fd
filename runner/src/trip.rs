//! The trip before the reboot: the foreground `ferry upgrade` and the
//! detached worker it starts.
//!
//! The foreground stays in the session and is checkpointed with it, so it
//! keeps nothing open that cannot cross a reboot: no socket to the worker,
//! no file of the run directory (it reads `state.json` only until the dump
//! begins, then only `stat`s `outcome.json`). The worker runs outside the
//! session's tree and cgroup, as a transient systemd unit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::exec::{CommandSpec, Runner, SystemRunner};
use crate::phases::{self, Ctx, PhaseError, run_phase, skip_phase};
use crate::state::{Handoff, Outcome, PhaseRecord, PhaseResult, RunDir, RunState, STATE_FORMAT};
use crate::telemetry::{Telemetry, ids};
use crate::{finishing, host, units};

/// Why `ferry upgrade` stopped without a trip.
#[derive(Debug, thiserror::Error)]
pub enum TripError {
    #[error("preflight failed, nothing was touched: {0}")]
    Preflight(String),
    #[error("{0}")]
    Phase(#[from] PhaseError),
    #[error("{0}")]
    State(#[from] crate::state::StateError),
    #[error(
        "the worker (unit {unit}) stopped without a result: see `journalctl -u {unit}` and {log}"
    )]
    WorkerLost { unit: String, log: PathBuf },
}

/// Flags of `ferry upgrade` that are not config keys.
#[derive(Debug, Clone, Default)]
pub struct UpgradeOptions {
    pub pid: Option<i32>,
}

/// Run the trip from the session; returns the run's outcome.
pub fn upgrade(
    config: &Config,
    opts: &UpgradeOptions,
    telemetry: &Telemetry,
) -> Result<Outcome, TripError> {
    let secrets = crate::secrets::Secrets::from_env(&|k| std::env::var(k).ok()).values();
    let runner = SystemRunner::new(telemetry.spans.clone(), secrets);
    let pre = preflight(config, &runner, telemetry);
    phases::preflight::into_result(pre.problems.clone())
        .map_err(|e| TripError::Preflight(e.message))?;
    tracing::info!("preflight: ok");

    let (run, state) = open_run(config, &config.runs_dir(), pre, telemetry, &runner)?;
    let run_id = state.run_id.clone();
    // Earlier runs that died get their root span and bundle now.
    crate::janitor::start_beside(&run, &run_id, &runner);
    let mut ctx = Ctx::new(config, &run, state, &runner, telemetry);
    if let Err((phase, e)) = locate_and_assess(&mut ctx, opts.pid) {
        return Ok(finishing::end_before_dump(&mut ctx, &phase, &e));
    }

    let (unit, spec) = units::transient("worker", &run_id, &run.bin(), "__worker", &run.root);
    let spawn = runner.run(&spec);
    if let Err(e) = spawn
        .map_err(PhaseError::from)
        .and_then(|o| o.check().map_err(PhaseError::from))
    {
        return Ok(finishing::end_before_dump(&mut ctx, "locate", &e));
    }
    drop(ctx);
    wait_for_outcome(&run, &unit)
}

/// What the preflight found, with its span, for the run's first record.
pub struct Preflight {
    pub problems: Vec<phases::preflight::Problem>,
    pub span_id: String,
    pub start_unix_nano: u64,
    pub trace_id: String,
    pub root_span_id: String,
    pub parent: Option<String>,
    pub tracestate: Option<String>,
    pub run_start_unix_nano: u64,
}

/// The preflight checks, as the run's first span; before the run
/// directory exists, so a failure touches nothing.
pub fn preflight(config: &Config, runner: &SystemRunner, telemetry: &Telemetry) -> Preflight {
    let (trace_id, parent, tracestate) = match std::env::var("TRACEPARENT")
        .ok()
        .as_deref()
        .and_then(ids::TraceParent::parse)
    {
        Some(tp) => (
            tp.trace_id,
            Some(tp.span_id),
            std::env::var("TRACESTATE").ok(),
        ),
        None => (ids::trace_id(), None, None),
    };
    let run_start_unix_nano = ids::now_unix_nano();
    let root_span_id = ids::span_id();
    telemetry.spans.set_context(crate::telemetry::TraceContext {
        trace_id: trace_id.clone(),
        root_span_id: root_span_id.clone(),
        tracestate: tracestate.clone(),
        resource: Vec::new(),
    });
    let pre_span = tracing::info_span!("phase", otel.name = "preflight", cicd.pipeline.task.name = "preflight", error.type = tracing::field::Empty);
    let start_unix_nano = ids::now_unix_nano();
    let (problems, span_id) = pre_span.in_scope(|| {
        let p = phases::preflight::check(
            config,
            runner,
            Path::new("/proc/sys/kernel/kexec_load_disabled"),
            Path::new("/boot"),
            &|k| std::env::var(k).ok(),
        );
        (p, crate::telemetry::current_span_id().unwrap_or_default())
    });
    if let Some(first) = problems.first() {
        pre_span.record("error.type", format!("preflight_{}", first.check).as_str());
    }
    drop(pre_span);
    Preflight {
        problems,
        span_id,
        start_unix_nano,
        trace_id,
        root_span_id,
        parent,
        tracestate,
        run_start_unix_nano,
    }
}

/// Create the run directory under `runs_dir` and its first state: the
/// preflight's record, the plan, the secrets the later units need, a copy
/// of this binary; spans and logs go there from now on.
pub fn open_run(
    config: &Config,
    runs_dir: &Path,
    pre: Preflight,
    telemetry: &Telemetry,
    runner: &SystemRunner,
) -> Result<(RunDir, RunState), TripError> {
    let run_id = new_run_id();
    let run = RunDir::new(runs_dir.join(&run_id));
    run.create()?;
    let state = RunState {
        format: STATE_FORMAT,
        run_id: run_id.clone(),
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        host: host::hostname(),
        trace_id: pre.trace_id,
        root_span_id: pre.root_span_id,
        parent_span_id: pre.parent,
        tracestate: pre.tracestate,
        start_unix_nano: pre.run_start_unix_nano,
        boot_ids: vec![host::boot_id()],
        kernel_before: host::kernel_release(),
        kernel_after: None,
        kernel: None,
        phases: vec![PhaseRecord {
            name: "preflight".into(),
            span_id: pre.span_id,
            boot_id: host::boot_id(),
            start_unix_nano: pre.start_unix_nano,
            end_unix_nano: Some(ids::now_unix_nano()),
            result: if pre.problems.is_empty() {
                PhaseResult::Ok
            } else {
                PhaseResult::Failed
            },
            error: phases::preflight::into_result(pre.problems)
                .err()
                .map(|e| e.message),
            error_type: None,
        }],
        session: None,
        plan: serde_json::to_value(config).map_err(|e| {
            TripError::Phase(PhaseError::new(
                "state",
                format!("cannot record the configuration: {e}"),
            ))
        })?,
        handoff: Handoff::default(),
        worker_pid: None,
        outcome: None,
        otel: crate::telemetry::export::capture_env(&|k| std::env::var(k).ok()),
        notes: Vec::new(),
    };
    run.save(&state)?;
    crate::secrets::Secrets::from_env(&|k| std::env::var(k).ok())
        .save(&run)
        .map_err(|source| crate::state::StateError::Write {
            path: run.root.join("secrets.json"),
            source,
        })?;
    copy_self(&run.bin())?;
    telemetry.attach(&state, run.trace_file(), run.logs().join("ferry.log"));
    runner.set_logs_dir(run.logs());
    tracing::info!(run = %run_id, dir = %run.root.display(), "run started");
    Ok((run, state))
}

/// `locate` then `assess`, both read-only; the failing phase's name with
/// its error.
pub fn locate_and_assess(ctx: &mut Ctx<'_>, pid: Option<i32>) -> Result<(), (String, PhaseError)> {
    let start_at = match pid {
        Some(p) => phases::locate::Start::Pid(p),
        None => phases::locate::Start::Invoker(std::process::id() as i32),
    };
    run_phase(ctx, "locate", |ctx| {
        let session = phases::locate::locate(start_at)
            .map_err(|e| PhaseError::new("locate", e.to_string()))?;
        tracing::info!(root = session.root_pid, how = %session.how_found, tasks = session.tasks.len(), "session located");
        ctx.state.session = Some(session);
        Ok(())
    })
    .map_err(|e| ("locate".to_string(), e))?;
    run_phase(ctx, phases::assess::PHASE, phases::assess::run)
        .map_err(|e| (phases::assess::PHASE.to_string(), e))
}

/// Follow the worker's progress until the run ends, on either kernel.
pub fn wait_for_outcome(run: &RunDir, unit: &str) -> Result<Outcome, TripError> {
    // Phases this process ran were reported as they ended; report the
    // worker's as they end.
    let first = run.load()?;
    let mut printed: Vec<(String, PhaseResult)> = first
        .phases
        .iter()
        .map(|p| (p.name.clone(), p.result))
        .collect();
    let mut notes_printed = first.notes.len();
    let mut frozen_soon = false;
    let mut missing_worker = 0;
    let waiting_since = std::time::Instant::now();
    loop {
        if std::fs::metadata(run.outcome_file()).is_ok()
            && let Some(outcome) = run.load_outcome()?
        {
            return Ok(outcome);
        }
        if !frozen_soon {
            let state = run.load()?;
            for p in state
                .phases
                .iter()
                .filter(|p| p.result != PhaseResult::Running)
            {
                if !printed.iter().any(|(n, r)| n == &p.name && *r == p.result) {
                    printed.push((p.name.clone(), p.result));
                    eprintln!("{}", phase_line(p));
                }
            }
            for n in state.notes.iter().skip(notes_printed) {
                eprintln!("ferry: {}", n.line());
            }
            notes_printed = notes_printed.max(state.notes.len());
            // From here on the session may be frozen at any moment: read
            // nothing more from the run directory (see module docs).
            if state.phase("dump").is_some() {
                frozen_soon = true;
                let _ = std::fs::create_dir(run.foreground_ack());
                eprintln!("ferry: dump: checkpointing the session; it goes on after the reboot");
            } else if state.worker_pid.is_none()
                && waiting_since.elapsed() > Duration::from_secs(120)
            {
                return Err(TripError::WorkerLost {
                    unit: unit.into(),
                    log: run.logs().join("ferry.log"),
                });
            } else if let Some(pid) = state.worker_pid
                && std::fs::metadata(format!("/proc/{pid}")).is_err()
            {
                missing_worker += 1;
                if missing_worker > 10 {
                    return Err(TripError::WorkerLost {
                        unit: unit.into(),
                        log: run.logs().join("ferry.log"),
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn phase_line(p: &PhaseRecord) -> String {
    let secs = p
        .end_unix_nano
        .map(|e| e.saturating_sub(p.start_unix_nano) as f64 / 1e9)
        .unwrap_or(0.0);
    match p.result {
        PhaseResult::Ok => format!("ferry: {}: ok ({secs:.1} s)", p.name),
        PhaseResult::Skipped => format!("ferry: {}: skipped", p.name),
        _ => format!(
            "ferry: {}: failed after {secs:.1} s: {}",
            p.name,
            p.error.as_deref().unwrap_or("")
        ),
    }
}

fn new_run_id() -> String {
    let secs = ids::now_unix_nano() / 1_000_000_000;
    let (y, mo, d, h, mi, s) = ferry_uploaders::utc::civil_from_unix(secs as i64);
    format!(
        "{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z-{}",
        &ids::span_id()[..6]
    )
}

/// Keep a copy of this binary in the run: the units of the next boot run
/// it, whatever the upgrade does to the installed one.
fn copy_self(dest: &Path) -> Result<(), TripError> {
    let err = |e: std::io::Error| {
        TripError::State(crate::state::StateError::Write {
            path: dest.to_path_buf(),
            source: e,
        })
    };
    let me = std::fs::read_link("/proc/self/exe").map_err(err)?;
    std::fs::copy(&me, dest).map_err(err)?;
    crate::state::set_mode(dest, 0o755).map_err(err)?;
    Ok(())
}

/// The configuration a run was started with, from its state.
pub fn plan_of(run: &RunDir, state: &RunState) -> Result<Config, TripError> {
    serde_json::from_value(state.plan.clone()).map_err(|source| {
        TripError::State(crate::state::StateError::Parse {
            path: run.state_file(),
            source,
        })
    })
}

/// The detached worker: upgrade, kernel, dump, prepare-restore, handoff.
pub fn worker(run: &RunDir, telemetry: &Telemetry) -> Result<(), TripError> {
    let _working = crate::janitor::RunLock::working(run);
    let (config, state, runner) = crate::resume::load(run, telemetry)?;
    let mut ctx = Ctx::new(&config, run, state, &runner, telemetry);
    ctx.state.worker_pid = Some(std::process::id() as i32);
    ctx.save()?;

    let before_dump = (|| -> Result<(), (String, PhaseError)> {
        if config.upgrade.enabled {
            run_phase(&mut ctx, "upgrade", phases::upgrade::run)
                .map_err(|e| ("upgrade".into(), e))?;
        } else {
            skip_phase(&mut ctx, "upgrade", "upgrade disabled")
                .map_err(|e| ("upgrade".into(), e))?;
        }
        run_phase(&mut ctx, "kernel", |c| phases::kernel::run(c).map(|_| ()))
            .map_err(|e| ("kernel".into(), e))?;
        run_phase(&mut ctx, "dump", phases::dump::run).map_err(|e| ("dump".into(), e))?;
        Ok(())
    })();
    if let Err((phase, e)) = before_dump {
        let root = ctx.state.session.as_ref().map(|s| s.root_pid);
        let root_gone =
            phase == "dump" && root.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists());
        if root_gone && ctx.run.images().join("inventory.img").exists() {
            // criu failed after it had killed the tree: bring it back.
            restore_in_place(
                &mut ctx,
                &format!(
                    "the dump failed after the session was stopped: {}",
                    e.message
                ),
            );
            return Ok(());
        }
        unload_kernel(&runner);
        finishing::end_before_dump(&mut ctx, &phase, &e);
        return Ok(());
    }

    // The session is frozen and killed now: any failure from here on must
    // end with the session restored in place on this kernel.
    let after_dump = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_phase(&mut ctx, "prepare-restore", |c| {
            if c.config.testing.fail_after_dump {
                return Err(PhaseError::new("testing", "testing.fail_after_dump is set"));
            }
            phases::prepare_restore::run(c)
        })
        .and_then(|_| {
            // The last chance to ship this boot's spans: bounded, and
            // whatever is not accepted stays on disk for the next boot.
            ctx.telemetry.export(
                ctx.run,
                &ctx.state,
                crate::telemetry::export::FLUSH_BEFORE_REBOOT,
            );
            run_phase(&mut ctx, "handoff", phases::handoff::run)
        })
    }));
    let failure = match after_dump {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.message),
        Err(_) => Some("ferry panicked".to_string()),
    };
    if let Some(message) = failure {
        restore_in_place(
            &mut ctx,
            &format!("the trip was called off after the dump: {message}"),
        );
        return Ok(());
    }
    // systemd is taking the machine down; if it has not within a few
    // minutes, the reboot is not coming: bring the session back here.
    std::thread::sleep(Duration::from_secs(300));
    restore_in_place(
        &mut ctx,
        "the reboot into the new kernel did not happen within 300 s",
    );
    Ok(())
}

fn unload_kernel(runner: &dyn Runner) {
    let _ = runner.run(&CommandSpec::new("kexec").arg("-u").log_name("kexec-unload"));
}

/// Start the resume unit now, on this kernel, from the same images and with
/// the same lock rules; it ends the run as `called_off`.
fn restore_in_place(ctx: &mut Ctx<'_>, reason: &str) {
    tracing::error!("{reason}; restoring the session in place");
    unload_kernel(ctx.runner);
    ctx.state.handoff.called_off = Some(reason.to_string());
    let _ = ctx.save();
    // A kexec queued by handoff must not fire later as a plain reboot.
    let _ = ctx.runner.run(&CommandSpec::new("systemctl").arg("cancel"));
    if Path::new(units::UNIT_DIR).join(units::RESUME_UNIT).exists() {
        let _ = ctx.runner.run(&CommandSpec::new("systemctl").args([
            "disable",
            units::RESUME_UNIT,
            units::NETFILTER_UNIT,
        ]));
    }
    // A transient unit of this run's own: it cannot collide with the
    // resume unit of another, still restored, session.
    let (unit, spec) = units::transient(
        "resume-in-place",
        &ctx.state.run_id,
        &ctx.run.bin(),
        "resume",
        &ctx.run.root,
    );
    match ctx.runner.run(&spec).and_then(|o| o.check()) {
        Ok(_) => tracing::info!(unit = %unit, "in-place restore started"),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the in-place restore; the images are in {}", ctx.run.images().display())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_sort_by_time() {
        let id = new_run_id();
        assert_eq!(id.len(), "20261203T192857Z-abcdef".len());
        assert!(id.contains('T') && id.contains("Z-"));
    }
}
