//! The spool from the runner's side: opened from the configuration, the
//! whole-spool drain of `ferry ship` (lock, drain, the spans runs could not
//! export, the spool's metrics), and what a CI log says about a bundle that
//! waits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_uploaders::RetryPolicy;
use ferry_uploaders::spool::{DrainOptions, DrainReport, Evicted, Spool, SpoolError, Wait};

use crate::config::Config;
use crate::destinations::EntryDestinations;
use crate::state::{RunDir, ShipRecord};
use crate::telemetry::{self, export, ids, metrics};

/// How long `ferry ship` may spend on the runs' unexported spans.
pub const SPAN_BUDGET: Duration = Duration::from_secs(30);
/// How often the timer `ferry install` sets up drains the spool.
pub const TIMER_INTERVAL: &str = "15min";

/// The spool `config` names.
pub fn open(config: &Config) -> Result<Spool, SpoolError> {
    Spool::open(&config.spool.dir, config.spool.limits())
}

/// Drain settings for `config`, with `retry` for every put.
pub fn drain_options(config: &Config, retry: RetryPolicy) -> DrainOptions {
    DrainOptions {
        concurrency: usize::try_from(config.spool.concurrency).unwrap_or(1),
        retry,
        include_parked: false,
    }
}

/// The retry policy of the end of a run: the usual backoff, but no longer
/// than `ship.retry_budget_secs`, since the CI job waits for the outcome.
pub fn run_end_retry(config: &Config) -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(config.ship.retry_budget_secs),
        ..RetryPolicy::default()
    }
}

/// What the spool's metrics count at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolTally {
    /// What waits in the spool, bundles and report pages apart.
    pub waiting: ferry_uploaders::spool::Waiting,
    /// Evictions by reason.
    pub evicted: BTreeMap<String, u64>,
    pub quarantined: u64,
    /// Bytes shipped by destination.
    pub shipped: BTreeMap<String, u64>,
}

impl SpoolTally {
    pub fn add_evicted(&mut self, evicted: &[Evicted]) {
        for e in evicted {
            *self
                .evicted
                .entry(e.reason.as_str().to_string())
                .or_default() += 1;
        }
    }

    pub fn from_report(report: &DrainReport) -> Self {
        let mut t = SpoolTally {
            waiting: ferry_uploaders::spool::Waiting {
                bundles: report.depth.saturating_sub(report.pages_waiting),
                pages: report.pages_waiting,
            },
            quarantined: report.quarantined.len() as u64,
            ..SpoolTally::default()
        };
        t.add_evicted(&report.evicted);
        for e in &report.entries {
            for a in &e.shipped {
                *t.shipped.entry(a.destination.clone()).or_default() += a.receipt.size;
            }
        }
        t
    }
}

/// The CI log's line for a bundle some destination does not have yet.
pub fn waiting_line(record: &ShipRecord) -> Option<String> {
    if record.waiting.is_empty() {
        return None;
    }
    let entry = record.spool_entry.as_deref().unwrap_or("?");
    let why: Vec<String> = record
        .waiting
        .iter()
        .map(|w| format!("{}: {}", w.destination, w.error))
        .collect();
    let how = if record.waiting.iter().any(|w| w.parked) {
        format!("fix that, then run `sudo ferry spool retry {entry} && sudo ferry ship`")
    } else {
        format!(
            "ferry-ship.timer sends it at the next boot and every {TIMER_INTERVAL} (`sudo ferry install` sets the timer up), or run `sudo ferry ship`"
        )
    };
    Some(format!(
        "the bundle {} waits in the spool {} (entry {entry}) because {}; {how}",
        record.key,
        record.spool_dir.display(),
        why.join("; ")
    ))
}

/// `pid 42 (ferry ship) since 2026-12-04T03:30:00Z`: who holds the lock.
pub fn holder(what: &str) -> String {
    let secs = i64::try_from(ids::now_unix_nano() / 1_000_000_000).unwrap_or(0);
    format!(
        "pid {} ({what}) since {}",
        std::process::id(),
        ferry_uploaders::utc::rfc3339_secs(secs)
    )
}

/// What `ferry ship` did.
#[derive(Debug)]
pub struct ShipSummary {
    pub report: DrainReport,
    /// Runs whose unexported spans were sent (or tried).
    pub spans: Vec<(PathBuf, export::ExportReport)>,
    /// Runs whose saved credentials were deleted: nothing of theirs waits.
    pub forgotten: Vec<PathBuf>,
}

/// `ferry ship`: drains the whole spool under its lock with the backends'
/// full retry policy, sends what runs could not export, records and
/// exports the spool's metrics.
pub fn ship_all(
    config: &Config,
    wait: Wait,
    include_parked: bool,
    on_wait: &mut dyn FnMut(&str),
) -> Result<ShipSummary, SpoolError> {
    let spool = open(config)?;
    let _lock = spool.lock_drain(&holder("ferry ship"), wait, on_wait)?;
    let retry = RetryPolicy {
        budget: Duration::from_secs(config.spool.retry_budget_secs),
        ..RetryPolicy::default()
    };
    let destinations = EntryDestinations::per_run(config, retry);
    let mut opts = drain_options(config, retry);
    opts.include_parked = include_parked;
    let start = ids::now_unix_nano();
    let origins = run_dirs_of(&spool);
    let report = spool.drain(&opts, &|m, d| destinations.resolve(m, d))?;
    let forgotten = forget_finished_runs(&spool, origins, &config.runs_dir());
    let spans = telemetry::ship_all(&config.runs_dir(), SPAN_BUDGET);
    record_metrics(config, &SpoolTally::from_report(&report), start);
    Ok(ShipSummary {
        report,
        spans,
        forgotten,
    })
}

/// Whether an entry of the run at `run_root` waits in the spool (or the
/// spool cannot be read, when the answer must be "maybe": yes).
pub fn spool_holds_run(config: &Config, run_root: &std::path::Path) -> bool {
    match open(config).and_then(|s| s.entries()) {
        Ok(entries) => entries
            .iter()
            .any(|e| e.meta.origin.run_dir.as_deref() == Some(run_root)),
        Err(_) => true,
    }
}

/// The run directories spool entries came from.
fn run_dirs_of(spool: &Spool) -> BTreeSet<PathBuf> {
    spool
        .entries()
        .map(|es| {
            es.into_iter()
                .filter_map(|e| e.meta.origin.run_dir)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes the saved credentials of ended runs (those whose entries were
/// waiting, and any under `runs_dir`) that no spool entry needs any more:
/// the run could not delete them while its bundle was waiting.
fn forget_finished_runs(
    spool: &Spool,
    mut candidates: BTreeSet<PathBuf>,
    runs_dir: &Path,
) -> Vec<PathBuf> {
    if spool.entries().is_err() {
        return Vec::new();
    }
    let needed = run_dirs_of(spool);
    if let Ok(rd) = std::fs::read_dir(runs_dir) {
        candidates.extend(rd.flatten().map(|e| e.path()));
    }
    let mut out = Vec::new();
    for dir in candidates {
        let run = RunDir::new(&dir);
        if needed.contains(&dir) || !crate::secrets::Secrets::saved(&run) {
            continue;
        }
        if matches!(run.load_outcome(), Ok(Some(_))) {
            crate::secrets::Secrets::forget(&run);
            out.push(dir);
        }
    }
    out
}

/// Where `ferry ship` keeps its metrics and their export cursor.
pub fn ship_telemetry_dir(config: &Config) -> RunDir {
    RunDir::new(config.state_dir.join("ship"))
}

/// Writes the spool's metrics for this moment and exports them with the
/// process's `OTEL_*` settings, else those the newest run saved.
fn record_metrics(config: &Config, tally: &SpoolTally, start: u64) {
    let dir = ship_telemetry_dir(config);
    if std::fs::create_dir_all(&dir.root).is_err() {
        return;
    }
    let doc = metrics::spool_metrics(
        "ferry",
        &crate::host::hostname(),
        tally,
        start,
        ids::now_unix_nano(),
    );
    if let Err(e) = metrics::record(&dir, &doc) {
        tracing::warn!("cannot write the spool's metrics: {e}");
        return;
    }
    let mut cfg = export::ExportConfig::from_env(&|k| std::env::var(k).ok());
    if !cfg.enabled()
        && let Some((run, otel)) = newest_run_otel(&config.runs_dir())
    {
        cfg = export::ExportConfig::for_run(&run, &otel);
    }
    let r = export::export_run(&dir, &cfg, &export::HttpTransport, SPAN_BUDGET);
    if r.pending {
        tracing::warn!(
            "the spool's metrics were not exported ({}); they are kept in {} for the next `ferry ship`",
            r.last_error.as_deref().unwrap_or("no answer"),
            dir.root.display()
        );
    }
}

fn newest_run_otel(runs_dir: &Path) -> Option<(RunDir, BTreeMap<String, String>)> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(runs_dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|d| {
        let run = RunDir::new(&d);
        let state = run.load().ok()?;
        (!state.otel.is_empty()).then_some((run, state.otel))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::WaitingFor;

    #[test]
    fn the_waiting_line_says_where_why_and_how() {
        let mut r = ShipRecord {
            key: "h-r-ship-failed.tar.gz".into(),
            spool_dir: "/var/spool/ferry".into(),
            spool_entry: Some("20261203T120000Z-0a1b2c3d".into()),
            waiting: vec![WaitingFor {
                destination: "s3".into(),
                error: "s3 backend: connection refused (transient); retry later".into(),
                parked: false,
            }],
            ..ShipRecord::default()
        };
        let line = waiting_line(&r).unwrap();
        for needle in [
            "h-r-ship-failed.tar.gz",
            "/var/spool/ferry",
            "20261203T120000Z-0a1b2c3d",
            "connection refused",
            "ferry-ship.timer",
            "sudo ferry ship",
        ] {
            assert!(line.contains(needle), "{needle}: {line}");
        }
        r.waiting[0].parked = true;
        assert!(
            waiting_line(&r)
                .unwrap()
                .contains("sudo ferry spool retry 20261203T120000Z-0a1b2c3d")
        );
        r.waiting.clear();
        assert_eq!(waiting_line(&r), None);
    }
}
