//! How every run ends, on either kernel: collect, finish (the root span is
//! emitted, so the trace is complete), bundle and ship, then `outcome.json`,
//! which the waiting foreground reads.

use crate::phases::{self, Ctx, PhaseError, run_phase};
use crate::state::Outcome;
use crate::telemetry::ids;

/// The run stopped before anything was frozen: the session never stopped.
pub fn end_before_dump(ctx: &mut Ctx<'_>, phase: &str, error: &PhaseError) -> Outcome {
    conclude(
        ctx,
        "called_off",
        Some(phase),
        Some(error.message.clone()),
        Some(&error.kind),
    )
}

/// A restore attempt failed and another may follow: collect the evidence,
/// name the failure, ship a bundle of this attempt now (nobody may come to
/// retry). The run goes on: no finish, no root span, no outcome. Returns
/// the diagnosis headline.
pub fn report_attempt(ctx: &mut Ctx<'_>, number: u32) -> Option<String> {
    let _ = run_phase(ctx, "collect", phases::collect::run);
    let d = crate::diagnose::diagnose_run_logs(&ctx.run.logs());
    let path = ctx.run.root.join(crate::diagnose::RUN_FILE);
    if let Err(e) = crate::state::save_json(&path, &d) {
        tracing::warn!("the diagnosis was not saved: {e}");
    }
    let result = format!("attempt-{number}-failed");
    match run_phase(ctx, "ship", |c| phases::ship::run(c, &result)) {
        Ok(record) => match record.shipped.first() {
            Some(s) => {
                tracing::info!(bundle = %s.location, "evidence of the failed attempt shipped")
            }
            None => tracing::info!(
                bundle = %record.key,
                "evidence of the failed attempt waits in the spool"
            ),
        },
        Err(e) => tracing::error!(
            "the bundle of the failed attempt was not shipped: {}",
            e.message
        ),
    }
    (d.verdict != crate::diagnose::Verdict::NoFailure).then(|| d.headline())
}

/// Collect, finish, ship, and record the outcome. Never fails: whatever
/// cannot be done is logged and the outcome says what is known.
pub fn conclude(
    ctx: &mut Ctx<'_>,
    result: &str,
    phase: Option<&str>,
    reason: Option<String>,
    error_type: Option<&str>,
) -> Outcome {
    let _ = run_phase(ctx, "collect", phases::collect::run);
    // Name the failure from the logs while the evidence is fresh: the
    // findings go into the bundle (and its manifest) and the outcome.
    let diagnosis = (result != "succeeded").then(|| {
        let d = crate::diagnose::diagnose_run_logs(&ctx.run.logs());
        let path = ctx.run.root.join(crate::diagnose::RUN_FILE);
        if let Err(e) = crate::state::save_json(&path, &d) {
            tracing::warn!("the diagnosis was not saved: {e}");
        }
        d
    });
    let mut reason = reason;
    if let Err(e) = run_phase(ctx, "finish", phases::finish::run) {
        reason = Some(match reason {
            Some(r) => format!("{r}; also: {}", e.message),
            None => e.message,
        });
    }
    ctx.telemetry.emit_root(&ctx.state, result, error_type);
    let ship = match run_phase(ctx, "ship", |c| phases::ship::run(c, result)) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::error!(
                "the bundle was not written: {}; the run's logs are still in {}",
                e.message,
                ctx.run.root.display()
            );
            None
        }
    };
    let bundle = ship
        .as_ref()
        .and_then(|r| r.shipped.first())
        .map(|s| s.location.clone());
    let downtime_ms = match (
        ctx.state.handoff.dump_start_unix_nano,
        ctx.state.handoff.restored_unix_nano,
    ) {
        (Some(a), Some(b)) if b > a => Some((b - a) / 1_000_000),
        _ => None,
    };
    let outcome = Outcome {
        result: result.to_string(),
        phase: phase.map(str::to_string),
        reason,
        bundle,
        trace_file: Some(ctx.run.trace_file().display().to_string()),
        trace_id: Some(ctx.state.trace_id.clone()),
        kernel_before: ctx.state.kernel_before.clone(),
        kernel_after: (result == "succeeded").then(crate::host::kernel_release),
        downtime_ms,
        restored_root_pid: ctx.state.handoff.restored_root_pid,
        end_unix_nano: ids::now_unix_nano(),
        diagnosis: diagnosis.as_ref().map(|d| d.summary()),
        ship: ship.clone(),
        notes: ctx
            .state
            .notes
            .iter()
            .skip(
                ctx.state
                    .handoff
                    .notes_seen
                    .unwrap_or(ctx.state.notes.len()),
            )
            .filter(|n| n.level >= crate::notes::Level::Handled)
            .map(|n| n.line())
            .fold(Vec::new(), |mut lines, l| {
                // A later attempt repeats some notes of the first.
                if !lines.contains(&l) {
                    lines.push(l);
                }
                lines
            }),
    };
    ctx.state.outcome = Some(outcome.clone());
    if let Err(e) = ctx.save() {
        tracing::error!("{e}");
    }
    // Metrics of the run, and the exporter's settings read before the
    // secrets (its headers) are forgotten.
    let shipped: Vec<(String, u64)> = ship
        .iter()
        .flat_map(|r| r.shipped.iter().map(|s| (s.destination.clone(), r.size)))
        .collect();
    ctx.telemetry
        .record_run_metrics(ctx.run, &ctx.state, result, error_type, &shipped);
    let export = crate::telemetry::export::ExportConfig::for_run(ctx.run, &ctx.state.otel);
    // A bundle that waits in the spool needs the credentials for
    // `ferry ship`, which deletes them once it is out.
    // The spool is asked, not the record: an entry published by a ship
    // phase that then failed still waits and needs them.
    if ship.as_ref().is_none_or(|r| r.waiting.is_empty())
        && !crate::shipping::spool_holds_run(ctx.config, &ctx.run.root)
    {
        crate::secrets::Secrets::forget(ctx.run);
    }
    if let Err(e) = ctx.run.save_outcome(&outcome) {
        tracing::error!("{e}");
    }
    // The last export, after the outcome so the waiting foreground is not
    // held up: bounded, and what the collector did not take stays on disk.
    ctx.telemetry
        .export_with(ctx.run, &export, crate::telemetry::export::FLUSH_AT_END);
    outcome
}
