//! The trip after the reboot: `ferry resume` (the unit's main process) and
//! the finisher it hands the bookkeeping to.
//!
//! `ferry resume` restores the session and then only waits: criu is pid 1
//! of the new pid namespace and a child of this process tree, so this
//! process must live as long as the session. Everything that ends (verify,
//! collect, bundle, ship) runs in a separate transient unit, so a failure
//! there can never take the session down.

use crate::config::Config;
use crate::exec::{Runner, SystemRunner};
use crate::phases::{self, Ctx, run_phase};
use crate::procfs::Procfs;
use crate::state::RunDir;
use crate::telemetry::Telemetry;
use crate::trip::TripError;
use crate::{finishing, units};

fn load(
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
    let mut ctx = Ctx {
        config: &config,
        run,
        state,
        runner: &runner,
        telemetry,
    };
    if ctx.state.outcome.is_some() {
        tracing::warn!(
            "run {} has already ended; nothing to resume",
            ctx.state.run_id
        );
        return Ok(0);
    }
    let restored = run_phase(&mut ctx, "netfilter", phases::netfilter::run)
        .and_then(|_| run_phase(&mut ctx, "fixups", phases::fixups::run))
        .and_then(|inherited| {
            run_phase(&mut ctx, "restore", |c| phases::restore::run(c, &inherited))
        });
    let mut handle = match restored {
        Ok(h) => h,
        Err(e) => {
            // Images and lock rules stay: the client waits, and a retry can
            // still bring the session back.
            let phase = ctx.state.phases.last().map(|p| p.name.clone());
            finishing::conclude(
                &mut ctx,
                "failed",
                phase.as_deref(),
                Some(e.message.clone()),
                Some(&e.kind),
            );
            return Ok(1);
        }
    };
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

/// The finisher: verify, collect, finish, ship.
pub fn finish(run: &RunDir, telemetry: &Telemetry) -> Result<i32, TripError> {
    let _working = crate::janitor::RunLock::working(run);
    let (config, state, runner) = load(run, telemetry)?;
    let mut ctx = Ctx {
        config: &config,
        run,
        state,
        runner: &runner,
        telemetry,
    };
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
