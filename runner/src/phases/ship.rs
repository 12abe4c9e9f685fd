//! `ship`: the run's evidence as one tar.gz bundle, put into the backend.

use ferry_uploaders::{BundleOptions, bundle_name, write_bundle};
use serde_json::json;

use super::{Ctx, PhaseError};

/// Write the bundle into the run directory, then put it into every
/// configured destination; returns where it landed (the first
/// destination's location).
pub fn run(ctx: &mut Ctx<'_>, result: &str) -> Result<String, PhaseError> {
    let stage = ctx
        .state
        .phases
        .iter()
        .rev()
        .find(|p| !["collect", "finish", "ship"].contains(&p.name.as_str()))
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "run".into());
    let name = bundle_name(&ctx.state.host, &ctx.state.run_id, &stage, result);
    let local_dir = ctx.run.root.join("bundle");
    std::fs::create_dir_all(&local_dir).map_err(|e| {
        PhaseError::new(
            "bundle",
            format!("cannot create {}: {e}", local_dir.display()),
        )
    })?;
    let path = local_dir.join(&name);
    let options = BundleOptions {
        secrets: crate::secrets::Secrets::for_run(ctx.run).values(),
        max_file_bytes: Some(ctx.config.ship.max_file_mib * 1024 * 1024),
        ..BundleOptions::default()
    };
    let diagnosis = crate::diagnose::load_run_diagnosis(ctx.run);
    let mut timeline =
        crate::report::Timeline::from_json(&serde_json::to_value(&ctx.state).unwrap_or_default());
    timeline.result = result.to_string();
    let report_html = crate::report::html(&timeline, diagnosis.as_ref());
    let diagnosis_file = ctx.run.root.join(crate::diagnose::RUN_FILE);
    let manifest = write_bundle(&path, options, run_meta(ctx, result), |w| {
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
    })
    .map_err(|e| PhaseError::new("bundle", e.to_string()))?;
    tracing::debug!(files = manifest.files.len(), "bundle written");
    let secrets = crate::secrets::Secrets::for_run(ctx.run);
    let env = |k: &str| secrets.get(k).map(str::to_string);
    let backends = crate::destinations::open_all(ctx.config, &env)
        .map_err(|e| PhaseError::new("ship_config", e.to_string()))?;
    let mut first = None;
    for backend in &backends {
        let receipt = backend
            .put(&name, &path)
            .map_err(|e| PhaseError::new(format!("ship_{}", backend.name()), e.to_string()))?;
        tracing::info!(backend = backend.name(), bundle = %receipt.location, size = receipt.size, "bundle shipped");
        first.get_or_insert(receipt.location);
    }
    first.ok_or_else(|| PhaseError::new("ship_config", "no destination configured"))
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
