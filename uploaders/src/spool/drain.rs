//! Draining: every waiting entry to every destination that lacks it, at
//! most `concurrency` entries at a time (the destinations of one entry in
//! parallel), each put under the backends' [`RetryPolicy`].

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tracing::field::Empty;

use super::entry::{self, Ack, EntryMeta, EntryStatus, Failure};
use super::evict::Evicted;
use super::fsops;
use super::lock::EntryLock;
use super::writer::Committed;
use super::{Quarantined, Scanned, Spool, SpoolError, now_unix_nano};
use crate::backends::{Backend, BackendError, ErrorKind};
use crate::failpoint;
use crate::retry::RetryPolicy;

/// Opens the backend called `destination` for an entry (its origin tells
/// whose settings and credentials apply).
pub type Resolve<'a> =
    &'a (dyn Fn(&EntryMeta, &str) -> Result<Arc<dyn Backend>, BackendError> + Sync);

/// How to drain.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Entries in flight at once (at least 1). With 1, everything runs in
    /// order on the calling thread.
    pub concurrency: usize,
    pub retry: RetryPolicy,
    /// Also try destinations parked by a permanent failure.
    pub include_parked: bool,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            concurrency: 2,
            retry: RetryPolicy::default(),
            include_parked: false,
        }
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EntryReport {
    pub id: String,
    pub key: String,
    pub bytes: u64,
    /// Destinations that took it during this drain.
    pub shipped: Vec<Ack>,
    /// Destinations that failed during this drain.
    pub failed: Vec<Failure>,
    /// Destinations skipped because a permanent failure parked them.
    pub parked: Vec<String>,
    /// Every destination has it: the entry is gone from the spool.
    pub removed: bool,
    /// It was found damaged and moved to quarantine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<Quarantined>,
}

/// What a drain did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainReport {
    pub entries: Vec<EntryReport>,
    /// Damaged entries moved to quarantine (also in their entry report
    /// when found at upload time).
    pub quarantined: Vec<Quarantined>,
    pub evicted: Vec<Evicted>,
    /// Leftovers of dead processes removed.
    pub cleaned: usize,
    /// Entries another process works on right now.
    pub busy: Vec<String>,
    /// Entries of a newer format, left alone.
    pub newer: Vec<String>,
    /// Entries left in the spool afterwards.
    pub depth: usize,
    /// Of those, report pages.
    pub pages_waiting: usize,
    /// Entries the drain could not handle (an I/O error on one of them):
    /// left where they are for the next drain; the others went on.
    pub errors: Vec<EntryError>,
}

/// One entry's error during a drain.
#[derive(Debug, Clone, Serialize)]
pub struct EntryError {
    pub id: String,
    pub error: String,
}

impl DrainReport {
    /// Entries that still wait for some destination.
    pub fn waiting(&self) -> impl Iterator<Item = &EntryReport> {
        self.entries
            .iter()
            .filter(|e| !e.removed && e.quarantined.is_none())
    }
}

impl Spool {
    /// Drains the whole spool: leftovers of dead processes removed,
    /// damaged entries quarantined, every other entry shipped where it is
    /// missing, then the size cap enforced. Entries in use elsewhere are
    /// skipped (and reported). Take [`Spool::lock_drain`] first so two
    /// whole-spool drains never overlap.
    pub fn drain(
        &self,
        opts: &DrainOptions,
        resolve: Resolve<'_>,
    ) -> Result<DrainReport, SpoolError> {
        let mut report = DrainReport {
            cleaned: self.clean_leftovers()?,
            ..DrainReport::default()
        };
        let mut queue = VecDeque::new();
        for s in self.scan()? {
            match s {
                Scanned::Entry(e) => queue.push_back(e.meta.id),
                Scanned::Newer { name, format, .. } => {
                    tracing::warn!(target: "ferry::spool", "spool entry {name} has format {format}, written by a newer ferry: left for it");
                    report.newer.push(name);
                }
                Scanned::Bad { name, path, .. } => {
                    let lock = match EntryLock::try_take(&name, &path) {
                        Ok(Some(l)) => Some(l),
                        Ok(None) => {
                            report.busy.push(name);
                            continue;
                        }
                        // Removed since the scan (another process shipped
                        // it), or not a directory: nothing to lock.
                        Err(_) if std::fs::symlink_metadata(&path).is_err() => continue,
                        Err(_) => None,
                    };
                    // Read again under the lock: an entry being removed by
                    // another process looks damaged for a moment.
                    match entry::load(&path) {
                        Err(entry::Bad::Corrupt(reason))
                            if std::fs::symlink_metadata(&path).is_ok() =>
                        {
                            match self.quarantine(&name, &reason) {
                                Ok(q) => report.quarantined.push(q),
                                Err(e) => report.errors.push(EntryError {
                                    id: name.clone(),
                                    error: e.to_string(),
                                }),
                            }
                        }
                        Ok(_) => queue.push_back(name),
                        Err(_) => {}
                    }
                    drop(lock);
                }
            }
        }
        let workers = opts.concurrency.max(1).min(queue.len().max(1));
        let queue = Mutex::new(queue);
        let results = Mutex::new(Vec::new());
        let parent = tracing::Span::current();
        let work = || {
            while let Some(id) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                let outcome = self.take_and_ship(&id, opts, resolve, &parent);
                if let Ok(mut r) = results.lock() {
                    r.push((id, outcome));
                }
            }
        };
        if workers == 1 {
            work();
        } else {
            std::thread::scope(|s| {
                for _ in 0..workers {
                    s.spawn(work);
                }
            });
        }
        let mut results = results.into_inner().unwrap_or_default();
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, outcome) in results {
            // One entry's I/O error must not hide what the others did.
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(entry = %id, "spool entry left for the next drain: {e}");
                    report.errors.push(EntryError {
                        id,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            match outcome {
                Taken::Busy => report.busy.push(id),
                Taken::Gone => {}
                Taken::Done(e) => {
                    if let Some(q) = &e.quarantined {
                        report.quarantined.push(q.clone());
                    }
                    report.entries.push(*e);
                }
            }
        }
        match self.enforce_cap(None) {
            Ok(ev) => report.evicted = ev,
            Err(e) => report.errors.push(EntryError {
                id: String::new(),
                error: format!("the size cap could not be enforced: {e}"),
            }),
        }
        let waiting = self.waiting()?;
        report.depth = waiting.bundles + waiting.pages;
        report.pages_waiting = waiting.pages;
        Ok(report)
    }

    /// Ships an entry the caller just committed (and still holds).
    pub fn drain_committed(
        &self,
        committed: Committed,
        opts: &DrainOptions,
        resolve: Resolve<'_>,
    ) -> Result<EntryReport, SpoolError> {
        let parent = tracing::Span::current();
        // Its bytes were hashed as they were written, moments ago.
        self.ship_entry(
            committed.entry,
            committed.lock,
            opts,
            resolve,
            &parent,
            false,
        )
    }

    fn take_and_ship(
        &self,
        id: &str,
        opts: &DrainOptions,
        resolve: Resolve<'_>,
        parent: &tracing::Span,
    ) -> Result<Taken, SpoolError> {
        let path = self.entries_dir().join(id);
        let lock = match EntryLock::try_take(id, &path) {
            Ok(Some(l)) => l,
            Ok(None) => return Ok(Taken::Busy),
            Err(_) if std::fs::symlink_metadata(&path).is_err() => return Ok(Taken::Gone),
            Err(e) => return Err(e),
        };
        // Read again under the lock: another drain may have shipped or
        // removed it since the scan.
        let status = match entry::load(&path) {
            Ok(s) => s,
            Err(_) if std::fs::symlink_metadata(&path).is_err() => return Ok(Taken::Gone),
            Err(entry::Bad::Corrupt(reason)) => {
                let q = self.quarantine(id, &reason)?;
                return Ok(Taken::Done(Box::new(EntryReport {
                    id: id.into(),
                    quarantined: Some(q),
                    ..EntryReport::default()
                })));
            }
            Err(entry::Bad::Newer(_)) => return Ok(Taken::Gone),
        };
        self.ship_entry(status, lock, opts, resolve, parent, true)
            .map(|r| Taken::Done(Box::new(r)))
    }

    fn ship_entry(
        &self,
        status: EntryStatus,
        lock: EntryLock,
        opts: &DrainOptions,
        resolve: Resolve<'_>,
        parent: &tracing::Span,
        verify: bool,
    ) -> Result<EntryReport, SpoolError> {
        let meta = &status.meta;
        let mut report = EntryReport {
            id: meta.id.clone(),
            key: meta.key.clone(),
            bytes: meta.size,
            ..EntryReport::default()
        };
        let pending = status.pending();
        let todo: Vec<&str> = pending
            .iter()
            .copied()
            .filter(|d| {
                let parked = status.failure(d).is_some_and(|f| f.permanent);
                if parked && !opts.include_parked {
                    report.parked.push(d.to_string());
                }
                opts.include_parked || !parked
            })
            .collect();
        if pending.is_empty() {
            self.remove_locked(&meta.id, lock)?;
            report.removed = true;
            return Ok(report);
        }
        if todo.is_empty() {
            return Ok(report);
        }
        if verify && let Err(reason) = verify_data(&status) {
            report.quarantined = Some(self.quarantine(&meta.id, &reason)?);
            return Ok(report);
        }
        let ship = |dest: &str| put_one(&status, dest, opts, resolve, parent);
        let outcomes: Vec<Result<Ack, Failure>> = if opts.concurrency <= 1 || todo.len() == 1 {
            todo.iter().map(|d| ship(d)).collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = todo.iter().map(|d| s.spawn(move || ship(d))).collect();
                handles
                    .into_iter()
                    .zip(&todo)
                    .map(|(h, d)| {
                        h.join().unwrap_or_else(|_| {
                            Err(failure_of(
                                &status,
                                d,
                                0,
                                &BackendError::new(
                                    d.to_string(),
                                    ErrorKind::Other,
                                    "the upload thread panicked",
                                    "report this as a bug in ferry",
                                ),
                            ))
                        })
                    })
                    .collect()
            })
        };
        for o in outcomes {
            match o {
                Ok(ack) => report.shipped.push(ack),
                Err(f) => report.failed.push(f),
            }
        }
        let acked: Vec<&str> = status
            .acks
            .iter()
            .map(|a| a.destination.as_str())
            .chain(report.shipped.iter().map(|a| a.destination.as_str()))
            .collect();
        if meta
            .destinations
            .iter()
            .all(|d| acked.contains(&d.as_str()))
        {
            self.remove_locked(&meta.id, lock)?;
            report.removed = true;
        }
        Ok(report)
    }
}

enum Taken {
    Busy,
    Gone,
    Done(Box<EntryReport>),
}

/// The data still is what `entry.json` says.
fn verify_data(status: &EntryStatus) -> Result<(), String> {
    let path = status.data_path();
    let mut f = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let (size, sha) =
        super::hash_reader(&mut f).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if size != status.meta.size || sha != status.meta.sha256 {
        return Err(format!(
            "{} does not match its entry.json (size {size}, sha256 {sha}; expected {} and {}): the file changed after it was spooled, or the disk is damaged",
            path.display(),
            status.meta.size,
            status.meta.sha256
        ));
    }
    Ok(())
}

fn failure_of(status: &EntryStatus, dest: &str, attempts: u32, e: &BackendError) -> Failure {
    let before = status.failure(dest).map_or(0, |f| f.attempts);
    Failure {
        destination: dest.to_string(),
        attempts: before.saturating_add(attempts),
        error: e.to_string(),
        fix: e.fix().to_string(),
        kind: format!("{:?}", e.kind()),
        permanent: !e.is_transient(),
        last_unix_nano: now_unix_nano(),
    }
}

fn write_record<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    fsops::write_atomic(dir, name, &json)
}

/// One put of one entry to one destination, as a span; the outcome is
/// written down (ack or failure) before it is returned.
fn put_one(
    status: &EntryStatus,
    dest: &str,
    opts: &DrainOptions,
    resolve: Resolve<'_>,
    parent: &tracing::Span,
) -> Result<Ack, Failure> {
    let meta = &status.meta;
    let span = tracing::info_span!(
        parent: parent,
        "ship",
        otel.name = %format!("{}{dest}", super::SPAN_SHIP_PREFIX),
        ferry.ship.backend = %dest,
        ferry.spool.entry = %meta.id,
        error.type = Empty,
        otel.status_message = Empty,
    );
    let _enter = span.enter();
    let mut attempts = 0u32;
    let result = (|| {
        let backend = resolve(meta, dest)?;
        failpoint::hit("drain.put.begin");
        let what = format!("put {} to {dest}", meta.key);
        // A backend that retries its own requests got the budget when it
        // was opened; retrying its whole put again would multiply the waits.
        let policy = if backend.retries_itself() {
            RetryPolicy::once()
        } else {
            opts.retry
        };
        let receipt = policy.run(&what, |n| {
            attempts = n;
            backend.put(&meta.key, &status.data_path())
        })?;
        failpoint::hit("drain.put.done");
        if receipt.size != meta.size
            || (!receipt.sha256.is_empty() && receipt.sha256 != meta.sha256)
        {
            return Err(BackendError::new(
                dest,
                ErrorKind::Other,
                format!(
                    "{dest} stored {} bytes with sha256 {} for {}, the spool holds {} bytes with sha256 {}",
                    receipt.size, receipt.sha256, meta.key, meta.size, meta.sha256
                ),
                "remove the object from the destination and run `ferry spool retry` on the entry",
            ));
        }
        let link = match backend.share(&meta.key) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("no link for {} on {dest}: {e}", meta.key);
                None
            }
        };
        Ok((receipt, link))
    })();
    match result {
        Ok((receipt, link)) => {
            let ack = Ack {
                destination: dest.to_string(),
                receipt,
                link,
                acked_unix_nano: now_unix_nano(),
            };
            if let Err(e) = write_record(&status.path, &entry::ack_name(dest), &ack) {
                // The data is there, but without a durable ack the next
                // drain puts it again (the backend recognises it).
                // Transient either way: parking would stop the drain that
                // confirms the upload once there is room again.
                let e = BackendError::new(
                    dest,
                    ErrorKind::Unavailable,
                    format!(
                        "{} reached {dest} but its acknowledgement could not be written to {}: {e}",
                        meta.key,
                        status.path.display()
                    ),
                    "free space on the spool's filesystem; the next drain confirms the upload without sending it twice",
                );
                return Err(record_failure(status, dest, attempts, &e, &span));
            }
            failpoint::hit("drain.ack.written");
            let fail = status.path.join(entry::fail_name(dest));
            if std::fs::remove_file(&fail).is_ok() {
                let _ = fsops::fsync_dir(&status.path);
            }
            tracing::info!(
                "shipped {} to {dest}: {} ({} bytes)",
                meta.key,
                ack.receipt.location,
                ack.receipt.size
            );
            Ok(ack)
        }
        Err(e) => Err(record_failure(status, dest, attempts, &e, &span)),
    }
}

fn record_failure(
    status: &EntryStatus,
    dest: &str,
    attempts: u32,
    e: &BackendError,
    span: &tracing::Span,
) -> Failure {
    let f = failure_of(status, dest, attempts.max(1), e);
    span.record("error.type", f.kind.as_str());
    span.record("otel.status_message", f.error.as_str());
    if let Err(w) = write_record(&status.path, &entry::fail_name(dest), &f) {
        tracing::warn!(
            "cannot record the failure of {} in {}: {w}",
            status.meta.id,
            status.path.display()
        );
    }
    let then = if f.permanent {
        format!(
            "parked until `ferry spool retry {}` (retrying cannot help)",
            status.meta.id
        )
    } else {
        "tried again by the next drain".to_string()
    };
    tracing::warn!(
        "{} not shipped to {dest} ({}), {then}: {}",
        status.meta.key,
        attempts_text(f.attempts),
        f.error
    );
    f
}

/// `1 attempt so far`, `3 attempts so far`.
pub fn attempts_text(n: u32) -> String {
    format!("{n} attempt{} so far", if n == 1 { "" } else { "s" })
}
