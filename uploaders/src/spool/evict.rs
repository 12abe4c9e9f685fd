//! The size cap. The rule, in order, never touching the entry being
//! committed nor one in use:
//!
//! 1. expendable entries (copies of what another entry holds: a bundle's
//!    report page), oldest first;
//! 2. entries some destination already acknowledged (a copy is safe
//!    elsewhere), oldest first;
//! 3. quarantined entries (they can never be shipped), oldest first;
//! 4. the oldest entries.
//!
//! An expendable entry being committed only ever makes room by removing
//! other expendable entries: a page never pushes a bundle out.
//!
//! Every eviction is logged as a warning and returned, so the caller counts
//! it in the `ferry.spool.evicted` metric.

use serde::Serialize;

use super::fsops;
use super::{Scanned, Spool, SpoolError};

/// Why an entry was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvictReason {
    /// It only repeats what another entry holds.
    Expendable,
    /// Some destination has it already.
    Acknowledged,
    /// It was in quarantine.
    Quarantined,
    /// It was the oldest.
    Oldest,
}

impl EvictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EvictReason::Expendable => "expendable",
            EvictReason::Acknowledged => "acknowledged",
            EvictReason::Quarantined => "quarantined",
            EvictReason::Oldest => "oldest",
        }
    }
}

/// One evicted entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evicted {
    pub id: String,
    pub key: Option<String>,
    pub bytes: u64,
    pub reason: EvictReason,
}

struct Candidate {
    reason: EvictReason,
    created: u64,
    id: String,
    key: Option<String>,
    bytes: u64,
    counts: bool,
}

impl Spool {
    /// Whether the spool may be over its limits (counting every file of
    /// every entry, so never less than the exact rule counts).
    fn maybe_over(&self) -> Result<bool, SpoolError> {
        let dir = self.entries_dir();
        let rd = std::fs::read_dir(&dir).map_err(|e| SpoolError::io("list", &dir, e))?;
        let mut count = 0usize;
        let mut bytes = fsops::dir_bytes(&self.quarantine_dir());
        for item in rd.flatten() {
            count += 1;
            bytes += std::fs::metadata(item.path().join("data")).map_or(0, |m| m.len());
        }
        if count > self.limits.max_entries || bytes > self.limits.max_bytes {
            return Ok(true);
        }
        // Quarantined entries are directories: their bytes are one level down.
        let q = self.quarantine_dir();
        let rd = std::fs::read_dir(&q).map_err(|e| SpoolError::io("list", &q, e))?;
        for item in rd.flatten() {
            bytes += fsops::dir_bytes(&item.path());
        }
        Ok(bytes > self.limits.max_bytes)
    }

    /// Removes entries by the rule above until the spool is within its
    /// limits; `protect` is never removed.
    pub fn enforce_cap(&self, protect: Option<&str>) -> Result<Vec<Evicted>, SpoolError> {
        // Every commit comes here: a stat per entry when within the cap,
        // the full scan only when something must go.
        if !self.maybe_over()? {
            return Ok(Vec::new());
        }
        let scanned = self.scan()?;
        let mut bytes = 0u64;
        let mut count = 0usize;
        let mut candidates = Vec::new();
        for s in &scanned {
            match s {
                Scanned::Entry(e) => {
                    bytes += e.meta.size;
                    count += 1;
                    candidates.push(Candidate {
                        reason: if e.meta.expendable {
                            EvictReason::Expendable
                        } else if e.acks.is_empty() {
                            EvictReason::Oldest
                        } else {
                            EvictReason::Acknowledged
                        },
                        created: e.meta.created_unix_nano,
                        id: e.meta.id.clone(),
                        key: Some(e.meta.key.clone()),
                        bytes: e.meta.size,
                        counts: true,
                    });
                }
                Scanned::Bad { path, .. } | Scanned::Newer { path, .. } => {
                    bytes += fsops::dir_bytes(path);
                    count += 1;
                }
            }
        }
        for q in self.quarantined()? {
            bytes += q.bytes;
            candidates.push(Candidate {
                reason: EvictReason::Quarantined,
                created: q.quarantined_unix_nano,
                id: q.name.clone(),
                key: None,
                bytes: q.bytes,
                counts: false,
            });
        }
        let over = |bytes: u64, count: usize| {
            bytes > self.limits.max_bytes || count > self.limits.max_entries
        };
        if !over(bytes, count) {
            return Ok(Vec::new());
        }
        // A page being committed may only push out other pages: were a
        // bundle in the way, the page waits over the cap until the next
        // commit or drain removes it first.
        let protect_is_expendable = scanned.iter().any(|s| {
            matches!(s, Scanned::Entry(e) if Some(e.meta.id.as_str()) == protect && e.meta.expendable)
        });
        if protect_is_expendable {
            candidates.retain(|c| c.reason == EvictReason::Expendable);
        }
        let rank = |r: EvictReason| match r {
            EvictReason::Expendable => 0,
            EvictReason::Acknowledged => 1,
            EvictReason::Quarantined => 2,
            EvictReason::Oldest => 3,
        };
        candidates.sort_by(|a, b| {
            (rank(a.reason), a.created, &a.id).cmp(&(rank(b.reason), b.created, &b.id))
        });
        let mut evicted = Vec::new();
        for c in candidates {
            if !over(bytes, count) {
                break;
            }
            // A quarantined entry frees bytes, not an entry slot.
            if Some(c.id.as_str()) == protect || (!c.counts && bytes <= self.limits.max_bytes) {
                continue;
            }
            let removed = if c.reason == EvictReason::Quarantined {
                self.remove_quarantined(&c.id)?;
                true
            } else {
                self.remove_if_free(&c.id)?
            };
            if !removed {
                continue;
            }
            tracing::warn!(
                target: "ferry::spool",
                "spool over its cap ({} of {} bytes, {} of {} entries): evicted {} {}{}",
                bytes,
                self.limits.max_bytes,
                count,
                self.limits.max_entries,
                match c.reason {
                    EvictReason::Expendable => "expendable entry",
                    EvictReason::Quarantined => "quarantined entry",
                    EvictReason::Acknowledged => "partly shipped entry",
                    EvictReason::Oldest => "the oldest entry",
                },
                c.id,
                c.key.as_deref().map(|k| format!(" ({k})")).unwrap_or_default(),
            );
            bytes = bytes.saturating_sub(c.bytes);
            if c.counts {
                count -= 1;
            }
            evicted.push(Evicted {
                id: c.id,
                key: c.key,
                bytes: c.bytes,
                reason: c.reason,
            });
        }
        if over(bytes, count) {
            tracing::warn!(
                target: "ferry::spool",
                "spool still over its cap ({bytes} of {} bytes, {count} of {} entries): what is left is in use or the newest entry",
                self.limits.max_bytes,
                self.limits.max_entries
            );
        }
        Ok(evicted)
    }
}
