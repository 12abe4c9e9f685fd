//! `ship`: the run's evidence as one tar.gz bundle, written straight into
//! the spool (so a crash from here on loses nothing), then shipped to every
//! configured destination. A destination that fails leaves the bundle
//! waiting in the spool for `ferry ship`; the phase fails only when the
//! bundle could not be made durable. The run's report page then follows
//! as an entry of its own to the destinations that can serve it to a
//! browser, so it is one click from the CI log.

use std::io::Write;

use ferry_uploaders::backends::ErrorKind;
use ferry_uploaders::spool::{DrainOptions, EntryReport, Origin};
use ferry_uploaders::{
    BackendError, BundleOptions, Spool, bundle_name, report_key, write_bundle_into,
};
use serde_json::json;

use super::{Ctx, PhaseError};
use crate::destinations::EntryDestinations;
use crate::secrets::Secrets;
use crate::shipping;
use crate::state::{PageRecord, ShipRecord, ShippedTo, WaitingFor};

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
    let secret_values = secrets.values();
    let options = BundleOptions {
        secrets: secret_values.clone(),
        max_file_bytes: Some(ctx.config.ship.max_file_mib * 1024 * 1024),
        ..BundleOptions::default()
    };
    let origin = Origin {
        run_id: Some(ctx.state.run_id.clone()),
        run_dir: Some(ctx.run.root.clone()),
    };
    let mut entry = spool
        .writer(&name, &ctx.config.ship.backends, origin.clone())
        .map_err(|e| PhaseError::new("spool", e.to_string()))?;
    let meta = run_meta(ctx, result);
    let page = report_page(ctx, result);
    let written = write_bundle_into(&mut entry, options, meta, |w| fill(ctx, &page, w));
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
    }
    (record.shipped, record.waiting) = outcome_of(&report);
    if report.removed {
        record.spool_entry = None;
    }
    let page_to = PageShipment {
        spool: &spool,
        origin,
        destinations: &destinations,
        opts: &opts,
        took_bundle: record
            .shipped
            .iter()
            .map(|s| s.destination.clone())
            .collect(),
    };
    record.report = page_to.ship(ctx.config, &name, &page, &secret_values, &mut tally);
    tally.waiting = spool.waiting().unwrap_or_default();
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

/// Destinations that hold the bundle and those still waiting for it.
fn outcome_of(report: &EntryReport) -> (Vec<ShippedTo>, Vec<WaitingFor>) {
    let shipped = report
        .shipped
        .iter()
        .map(|a| ShippedTo {
            destination: a.destination.clone(),
            location: a.receipt.location.clone(),
            link: a.link.clone(),
        })
        .collect();
    let waiting = report
        .failed
        .iter()
        .map(|f| WaitingFor {
            destination: f.destination.clone(),
            error: f.error.clone(),
            parked: f.permanent,
        })
        .collect();
    (shipped, waiting)
}

/// Where the report page goes and how, once the bundle is on its way.
struct PageShipment<'a> {
    spool: &'a Spool,
    origin: Origin,
    destinations: &'a EntryDestinations,
    opts: &'a DrainOptions,
    /// Destinations that took the bundle just now: only these are tried
    /// now, so a store that is down does not hold the job up twice.
    took_bundle: Vec<String>,
}

impl PageShipment<'_> {
    /// Spools the page (redacted like its copy in the bundle) for the
    /// destinations that serve pages, and ships it. The page only repeats
    /// what the bundle holds, so any failure here is a warning: the run's
    /// result never depends on it.
    fn ship(
        &self,
        config: &crate::config::Config,
        bundle_key: &str,
        page: &str,
        secrets: &[String],
        tally: &mut shipping::SpoolTally,
    ) -> Option<PageRecord> {
        let to: Vec<String> = config
            .ship
            .backends
            .iter()
            .filter(|b| crate::destinations::serves_pages(b))
            .cloned()
            .collect();
        if to.is_empty() {
            return None;
        }
        let key = report_key(bundle_key);
        let page = match ferry_uploaders::bundle::redact_text(secrets, page) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("the report page was not shipped: {e}");
                return None;
            }
        };
        let committed = self
            .spool
            .writer(&key, &to, self.origin.clone())
            .map_err(|e| e.to_string())
            .and_then(|mut w| {
                // The bundle holds the same page: never evict a bundle for it.
                w.expendable();
                match w.write_all(page.as_bytes()) {
                    Ok(()) => w.commit().map_err(|e| e.to_string()),
                    // The spool's own words (full disk) say more.
                    Err(e) => Err(w
                        .take_error()
                        .map_or_else(|| e.to_string(), |s| s.to_string())),
                }
            });
        let committed = match committed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("the report page was not spooled: {e}");
                return None;
            }
        };
        tally.add_evicted(&committed.evicted);
        let mut record = PageRecord {
            key: key.clone(),
            spool_entry: Some(committed.entry.meta.id.clone()),
            ..PageRecord::default()
        };
        let resolve = |m: &ferry_uploaders::spool::EntryMeta, d: &str| {
            if self.took_bundle.iter().any(|t| t == d) {
                return self.destinations.resolve(m, d);
            }
            Err(BackendError::new(
                d,
                ErrorKind::Unavailable,
                format!("{d} did not take the bundle just now; the page waits with it"),
                "`ferry ship` (the ship timer) sends both once the store is back",
            ))
        };
        let report = match self.spool.drain_committed(committed, self.opts, &resolve) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("the report page waits in the spool: {e}");
                return Some(record);
            }
        };
        (record.shipped, record.waiting) = outcome_of(&report);
        if report.removed {
            record.spool_entry = None;
        }
        for s in &record.shipped {
            let at = s.link.as_deref().unwrap_or(&s.location);
            tracing::info!("report page ({}): {at}", s.destination);
        }
        Some(record)
    }
}

/// The run's report page: its timeline across both boots and, for a
/// failed run, the diagnosis.
fn report_page(ctx: &Ctx<'_>, result: &str) -> String {
    let diagnosis = crate::diagnose::load_run_diagnosis(ctx.run);
    let mut timeline =
        crate::report::Timeline::from_json(&serde_json::to_value(&ctx.state).unwrap_or_default());
    timeline.result = result.to_string();
    crate::report::html(&timeline, diagnosis.as_ref())
}

fn fill<W: std::io::Write>(
    ctx: &Ctx<'_>,
    report_html: &str,
    w: &mut ferry_uploaders::BundleWriter<W>,
) -> ferry_uploaders::bundle::Result<()> {
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
