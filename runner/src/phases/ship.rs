//! `ship`: the run's evidence as one tar.gz bundle, written straight into
//! the spool (so a crash from here on loses nothing), then shipped to every
//! configured destination. A destination that fails leaves the bundle
//! waiting in the spool for `ferry ship`; the phase fails only when the
//! bundle could not be made durable.

use ferry_uploaders::spool::Origin;
use ferry_uploaders::{BundleOptions, bundle_name, write_bundle_into};
use serde_json::json;

use super::{Ctx, PhaseError};
use crate::destinations::EntryDestinations;
use crate::secrets::Secrets;
use crate::shipping;
use crate::state::{ShipRecord, ShippedTo, WaitingFor};

/// Spool the bundle, then put it into every configured destination.
pub fn run(ctx: &mut Ctx<'_>, result: &str) -> Result<ShipRecord, PhaseError> {
    let stage = ctx
        .state
        .phases
        .iter()
        .rev()
        .find(|p| !["collect", "finish", "ship"].contains(&p.name.as_str()))
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "run".into());
    let name = bundle_name(&ctx.state.host, &ctx.state.run_id, &stage, result);
    let start = crate::telemetry::ids::now_unix_nano();
    if ctx.config.ship.backends.is_empty() {
        return Err(PhaseError::new(
            "ship_config",
            crate::destinations::DestinationError::None.to_string(),
        ));
    }
    let spool = shipping::open(ctx.config).map_err(|e| PhaseError::new("spool", e.to_string()))?;
    let secrets = Secrets::for_run(ctx.run);
    let options = BundleOptions {
        secrets: secrets.values(),
        max_file_bytes: Some(ctx.config.ship.max_file_mib * 1024 * 1024),
        ..BundleOptions::default()
    };
    let origin = Origin {
        run_id: Some(ctx.state.run_id.clone()),
        run_dir: Some(ctx.run.root.clone()),
    };
    let mut entry = spool
        .writer(&name, &ctx.config.ship.backends, origin)
        .map_err(|e| PhaseError::new("spool", e.to_string()))?;
    let meta = run_meta(ctx, result);
    let written = write_bundle_into(&mut entry, options, meta, |w| fill(ctx, result, w));
    let manifest = match written {
        Ok((_, m)) => m,
        // The spool's own words (full disk, permissions) say more than
        // the bundle writer's; dropping the entry removes what was written.
        Err(e) => {
            let msg = entry
                .take_error()
                .map_or_else(|| e.to_string(), |s| s.to_string());
            return Err(PhaseError::new("spool_write", msg));
        }
    };
    tracing::debug!(files = manifest.files.len(), "bundle written");
    let committed = entry
        .commit()
        .map_err(|e| PhaseError::new("spool_write", e.to_string()))?;
    let mut tally = shipping::SpoolTally::default();
    tally.add_evicted(&committed.evicted);
    let mut record = ShipRecord {
        key: name.clone(),
        size: committed.entry.meta.size,
        sha256: committed.entry.meta.sha256.clone(),
        spool_dir: spool.root().to_path_buf(),
        spool_entry: Some(committed.entry.meta.id.clone()),
        ..ShipRecord::default()
    };
    let retry = shipping::run_end_retry(ctx.config);
    let destinations = EntryDestinations::fixed(ctx.config, secrets, retry);
    let opts = shipping::drain_options(ctx.config, retry);
    let report = spool
        .drain_committed(committed, &opts, &|m, d| destinations.resolve(m, d))
        .map_err(|e| PhaseError::new("spool", e.to_string()))?;
    for a in &report.shipped {
        if let Some(link) = a.link.as_deref().filter(|l| *l != a.receipt.location) {
            tracing::info!("bundle link ({}): {link}", a.destination);
        }
        record.shipped.push(ShippedTo {
            destination: a.destination.clone(),
            location: a.receipt.location.clone(),
            link: a.link.clone(),
        });
    }
    for f in &report.failed {
        record.waiting.push(WaitingFor {
            destination: f.destination.clone(),
            error: f.error.clone(),
            parked: f.permanent,
        });
    }
    if report.removed {
        record.spool_entry = None;
    }
    tally.depth = spool.depth().unwrap_or(0);
    let doc = crate::telemetry::metrics::spool_metrics(
        &crate::telemetry::service_name(&ctx.state),
        &ctx.state.host,
        // What the run shipped is in its own metrics.
        &tally,
        start,
        crate::telemetry::ids::now_unix_nano(),
    );
    if let Err(e) = crate::telemetry::metrics::record(ctx.run, &doc) {
        tracing::warn!("cannot write the spool's metrics: {e}");
    }
    if let Some(line) = shipping::waiting_line(&record) {
        tracing::warn!(event.name = "ferry.spool.waiting", "{line}");
    }
    Ok(record)
}

fn fill<W: std::io::Write>(
    ctx: &Ctx<'_>,
    result: &str,
    w: &mut ferry_uploaders::BundleWriter<W>,
) -> ferry_uploaders::bundle::Result<()> {
    let diagnosis = crate::diagnose::load_run_diagnosis(ctx.run);
    let mut timeline =
        crate::report::Timeline::from_json(&serde_json::to_value(&ctx.state).unwrap_or_default());
    timeline.result = result.to_string();
    let report_html = crate::report::html(&timeline, diagnosis.as_ref());
    let diagnosis_file = ctx.run.root.join(crate::diagnose::RUN_FILE);
    w.add_bytes("report.html", report_html.as_bytes())?;
    if diagnosis_file.exists() {
        w.add_path("diagnosis.json", &diagnosis_file)?;
    }
    w.add_path("state.json", &ctx.run.state_file())?;
    w.add_dir("logs", &ctx.run.logs())?;
    w.add_dir("firewall", &ctx.run.firewall())?;
    if ctx.run.trace_file().exists() {
        w.add_path("trace/otlp.jsonl", &ctx.run.trace_file())?;
        // The same spans in Jaeger's own JSON: the UI opens it with no
        // backend ("JSON File" on the search page).
        let text = std::fs::read_to_string(ctx.run.trace_file()).unwrap_or_default();
        let jaeger = crate::telemetry::jaeger::from_otlp_lines(&text);
        w.add_bytes("trace/jaeger.json", jaeger.to_string().as_bytes())?;
    }
    Ok(())
}

/// What the manifest says about the run.
fn run_meta(ctx: &Ctx<'_>, result: &str) -> serde_json::Value {
    let phases: Vec<_> = ctx
        .state
        .phases
        .iter()
        .map(|p| {
            json!({"name": p.name, "result": p.result, "boot_id": p.boot_id,
                   "start_unix_nano": p.start_unix_nano, "end_unix_nano": p.end_unix_nano,
                   "error": p.error, "error_type": p.error_type})
        })
        .collect();
    json!({
        "run_id": ctx.state.run_id,
        "host": ctx.state.host,
        "result": result,
        "trace_id": ctx.state.trace_id,
        "kernel_before": ctx.state.kernel_before,
        "kernel_after": ctx.state.kernel_after,
        "boot_ids": ctx.state.boot_ids,
        "phases": phases,
        "diagnosis": crate::diagnose::load_run_diagnosis(ctx.run),
    })
}
