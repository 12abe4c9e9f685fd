//! The spool: bundles wait here, on disk, until every destination has
//! them — through crashes, `kill -9`, full disks and power cuts.
//!
//! ```text
//! <root>/                 0700
//!   drain.lock            one whole-spool drain at a time (holder inside)
//!   tmp.lock              guards the birth of partial entries
//!   tmp/<id>/             entries being written: invisible to drains
//!   entries/<id>/         published entries
//!     entry.json          key, size, sha256, destinations, origin
//!     data                the bytes to ship
//!     ack-<dest>.json     the destination has it (receipt, link)
//!     fail-<dest>.json    its last failure there (permanent = parked)
//!   trash/<id>/           entries being removed
//!   quarantine/<id>/      damaged entries, with <id>.reason.json beside
//! ```
//!
//! The rules (see `docs/spool.md`):
//! * an entry is written under `tmp/`, fsynced, `entry.json` written and
//!   fsynced, the directory fsynced, renamed into `entries/`, and
//!   `entries/` fsynced: a crash leaves the whole entry or no entry;
//! * acknowledgements and failures are small files written atomically;
//! * an entry is removed (renamed to `trash/`, then deleted) only once every
//!   destination has acknowledged it, after the last ack is durable;
//! * delivery is at least once; keys are idempotent at the backends, so a
//!   re-put after a crash between upload and ack stores nothing new;
//! * damaged entries go to `quarantine/` with the reason, never deleted
//!   silently; the size cap evicts by a stated rule, logged ([`evict`]).

mod drain;
mod entry;
mod error;
mod evict;
mod fsops;
mod lock;
mod writer;

use std::fs::{self, DirBuilder, File};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use drain::{DrainOptions, DrainReport, EntryError, EntryReport, Resolve, attempts_text};
pub use entry::{
    Ack, ENTRY_FORMAT, EntryMeta, EntryStatus, Failure, Origin, valid_destination, valid_id,
};
pub use error::SpoolError;
pub use evict::{EvictReason, Evicted};
pub use lock::{DrainLock, EntryLock, Wait};
pub use writer::{Committed, EntryWriter};

use entry::Bad;
use lock::TmpLock;

/// Where the spool lives unless configured otherwise.
pub const DEFAULT_DIR: &str = "/var/spool/ferry";

/// The span attribute naming the spool entry a `ship <destination>` span
/// uploads (listed with every other name in ferry's `telemetry::names`).
pub const ATTR_ENTRY: &str = "ferry.spool.entry";
/// The name of one upload's span is this prefix and the destination.
pub const SPAN_SHIP_PREFIX: &str = "ship ";

/// What waits in the spool, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Waiting {
    pub bundles: usize,
    /// Report pages: expendable copies of what a bundle holds.
    pub pages: usize,
}

/// How much the spool may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2048 << 20,
            max_entries: 1000,
        }
    }
}

/// An open spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    limits: Limits,
}

/// What a scan of `entries/` found.
#[derive(Debug, Clone)]
pub enum Scanned {
    Entry(EntryStatus),
    /// Damaged or unreadable: the next drain quarantines it.
    Bad {
        name: String,
        path: PathBuf,
        reason: String,
    },
    /// Written by a newer ferry: left alone.
    Newer {
        name: String,
        path: PathBuf,
        format: u32,
    },
}

/// A quarantined entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub name: String,
    pub path: PathBuf,
    pub reason: String,
    pub quarantined_unix_nano: u64,
    #[serde(default)]
    pub bytes: u64,
}

/// What `drop` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    pub id: String,
    pub key: Option<String>,
    pub bytes: u64,
    /// Destinations that never got it.
    pub never_shipped_to: Vec<String>,
    pub quarantined: bool,
}

/// What [`Spool::add_file`] did.
#[derive(Debug)]
pub enum Added {
    New(Committed),
    /// An entry with the same key and bytes waits already.
    AlreadySpooled(EntryStatus),
}

pub(crate) fn now_unix_nano() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `20261203T120000Z-0a1b2c3d`: sorts by time, short enough to type.
pub(crate) fn new_id() -> String {
    let stamp: String = crate::bundle::rfc3339_now()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{stamp}-{:08x}", fastrand::u32(..))
}

fn mkdir_private(dir: &Path) -> Result<(), SpoolError> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(SpoolError::io("create", dir, e)),
    }
}

const REASON_SUFFIX: &str = ".reason.json";

impl Spool {
    /// Opens (creating, mode 0700) the spool at `root`. An existing root
    /// that others may read is made private again.
    pub fn open(root: impl Into<PathBuf>, limits: Limits) -> Result<Spool, SpoolError> {
        let root = root.into();
        match fs::symlink_metadata(&root) {
            Ok(m) if m.is_dir() => {
                if m.mode() & 0o077 != 0 {
                    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))
                        .map_err(|e| SpoolError::io("make private (mode 0700)", &root, e))?;
                    tracing::info!(target: "ferry::spool", "made the spool {} private (mode 0700)", root.display());
                }
            }
            Ok(_) => {
                return Err(SpoolError::Invalid(format!(
                    "{} exists and is not a directory; point spool.dir (FERRY_SPOOL_DIR) at a directory",
                    root.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&root)
                    .map_err(|e| SpoolError::io("create", &root, e))?;
            }
            Err(e) => return Err(SpoolError::io("inspect", &root, e)),
        }
        let spool = Spool { root, limits };
        for dir in [
            spool.entries_dir(),
            spool.tmp_dir(),
            spool.trash_dir(),
            spool.quarantine_dir(),
        ] {
            mkdir_private(&dir)?;
        }
        // Writable? (root ignores modes, others learn it here, clearly.)
        let probe = spool.tmp_lock_path();
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&probe)
            .map_err(|e| SpoolError::io("open", &probe, e))?;
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn entries_dir(&self) -> PathBuf {
        self.root.join("entries")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn trash_dir(&self) -> PathBuf {
        self.root.join("trash")
    }
    pub(crate) fn quarantine_dir(&self) -> PathBuf {
        self.root.join("quarantine")
    }
    pub(crate) fn tmp_lock_path(&self) -> PathBuf {
        self.root.join("tmp.lock")
    }
    fn drain_lock_path(&self) -> PathBuf {
        self.root.join("drain.lock")
    }

    /// A new entry for `key`, to be acknowledged by every one of
    /// `destinations`.
    pub fn writer(
        &self,
        key: &str,
        destinations: &[String],
        origin: Origin,
    ) -> Result<EntryWriter, SpoolError> {
        crate::backends::validate_key("spool", key)
            .map_err(|e| SpoolError::Invalid(e.to_string()))?;
        if destinations.is_empty() {
            return Err(SpoolError::Invalid(
                "an entry needs at least one destination (ship.backends)".into(),
            ));
        }
        for (i, d) in destinations.iter().enumerate() {
            if !valid_destination(d) {
                return Err(SpoolError::Invalid(format!(
                    "destination name {d:?} is not usable: 1-32 of a-z, 0-9, `_`, `-`"
                )));
            }
            if destinations[..i].contains(d) {
                return Err(SpoolError::Invalid(format!(
                    "destination {d:?} is named twice"
                )));
            }
        }
        EntryWriter::create(self, key, destinations, origin)
    }

    /// Copies the file at `src` in as a new entry, unless an entry with the
    /// same key and the same bytes waits already.
    pub fn add_file(
        &self,
        src: &Path,
        key: &str,
        destinations: &[String],
        origin: Origin,
    ) -> Result<Added, SpoolError> {
        let source = |cause| SpoolError::Source {
            path: src.to_path_buf(),
            cause,
        };
        let mut f = File::open(src).map_err(source)?;
        let (_, sha) = hash_reader(&mut f).map_err(source)?;
        if let Some(e) = self
            .entries()?
            .into_iter()
            .find(|e| e.meta.key == key && e.meta.sha256 == sha)
        {
            return Ok(Added::AlreadySpooled(e));
        }
        let mut f = File::open(src).map_err(source)?;
        let mut w = self.writer(key, destinations, origin)?;
        if let Err(e) = io::copy(&mut f, &mut w) {
            return Err(w.take_error().unwrap_or_else(|| source(e)));
        }
        w.commit().map(Added::New)
    }

    /// Everything in `entries/`, oldest first.
    pub fn scan(&self) -> Result<Vec<Scanned>, SpoolError> {
        let dir = self.entries_dir();
        let rd = fs::read_dir(&dir).map_err(|e| SpoolError::io("list", &dir, e))?;
        let mut out = Vec::new();
        for item in rd {
            let item = item.map_err(|e| SpoolError::io("list", &dir, e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = item.path();
            out.push(match entry::load(&path) {
                Ok(s) => Scanned::Entry(s),
                Err(Bad::Corrupt(reason)) => Scanned::Bad { name, path, reason },
                Err(Bad::Newer(format)) => Scanned::Newer { name, path, format },
            });
        }
        out.sort_by_key(sort_key);
        Ok(out)
    }

    /// The usable entries, oldest first.
    pub fn entries(&self) -> Result<Vec<EntryStatus>, SpoolError> {
        Ok(self
            .scan()?
            .into_iter()
            .filter_map(|s| match s {
                Scanned::Entry(e) => Some(e),
                _ => None,
            })
            .collect())
    }

    /// Entries waiting (usable or not), the spool depth.
    pub fn depth(&self) -> Result<usize, SpoolError> {
        Ok(self.scan()?.len())
    }

    /// The entries in the spool, told apart: bundles (damaged entries and
    /// those of a newer format count as bundles) and report pages.
    pub fn waiting(&self) -> Result<Waiting, SpoolError> {
        let mut w = Waiting::default();
        for s in self.scan()? {
            match s {
                Scanned::Entry(e) if e.meta.expendable => w.pages += 1,
                _ => w.bundles += 1,
            }
        }
        Ok(w)
    }

    /// One entry.
    pub fn get(&self, id: &str) -> Result<Scanned, SpoolError> {
        let path = self.entry_path(id)?;
        if fs::symlink_metadata(&path).is_err() {
            return Err(self.not_found(id));
        }
        let name = id.to_string();
        Ok(match entry::load(&path) {
            Ok(s) => Scanned::Entry(s),
            Err(Bad::Corrupt(reason)) => Scanned::Bad { name, path, reason },
            Err(Bad::Newer(format)) => Scanned::Newer { name, path, format },
        })
    }

    fn entry_path(&self, id: &str) -> Result<PathBuf, SpoolError> {
        if !valid_id(id) {
            return Err(SpoolError::Invalid(format!(
                "{id:?} is not an entry id; `ferry spool list` shows them"
            )));
        }
        Ok(self.entries_dir().join(id))
    }

    fn not_found(&self, id: &str) -> SpoolError {
        SpoolError::NotFound {
            id: id.to_string(),
            root: self.root.clone(),
        }
    }

    /// The quarantined entries, oldest first.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, SpoolError> {
        let dir = self.quarantine_dir();
        let rd = fs::read_dir(&dir).map_err(|e| SpoolError::io("list", &dir, e))?;
        let mut out = Vec::new();
        for item in rd.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(REASON_SUFFIX) {
                continue;
            }
            let path = item.path();
            let reason_path = dir.join(format!("{name}{REASON_SUFFIX}"));
            let mut q = fs::read(&reason_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Quarantined>(&b).ok())
                .unwrap_or_else(|| Quarantined {
                    name: name.clone(),
                    path: path.clone(),
                    reason: "no reason recorded".into(),
                    quarantined_unix_nano: item
                        .metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos() as u64)
                        .unwrap_or(0),
                    bytes: 0,
                });
            q.name = name;
            q.path = path.clone();
            q.bytes = fsops::dir_bytes(&path);
            out.push(q);
        }
        out.sort_by(|a, b| {
            (a.quarantined_unix_nano, &a.name).cmp(&(b.quarantined_unix_nano, &b.name))
        });
        Ok(out)
    }

    /// Takes the whole-spool drain lock for `who` (e.g. `pid 42 (ferry
    /// ship) since …`); `on_wait` hears whom we wait for.
    pub fn lock_drain(
        &self,
        who: &str,
        wait: Wait,
        on_wait: &mut dyn FnMut(&str),
    ) -> Result<DrainLock, SpoolError> {
        lock::drain_lock(&self.root, &self.drain_lock_path(), who, wait, on_wait)
    }

    /// Removes what dead processes left: partial entries of writers that
    /// did not commit and entries half-way through removal. Returns how
    /// many.
    pub fn clean_leftovers(&self) -> Result<usize, SpoolError> {
        let mut n = 0;
        {
            let _all = TmpLock::take(&self.tmp_lock_path(), true)?;
            n += self.clean_dir(&self.tmp_dir(), "an unfinished entry of a writer that died")?;
        }
        n += self.clean_dir(&self.trash_dir(), "an entry whose removal was interrupted")?;
        Ok(n)
    }

    fn clean_dir(&self, dir: &Path, what: &str) -> Result<usize, SpoolError> {
        let rd = fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))?;
        let mut n = 0;
        for item in rd.flatten() {
            let path = item.path();
            let free = match fsops::open_dir(&path) {
                Ok(f) => fsops::try_lock(&f).map_err(|e| SpoolError::io("lock", &path, e))?,
                // Not a directory: nobody's entry.
                Err(_) => true,
            };
            if !free {
                continue;
            }
            let removed = if path.is_dir() {
                fsops::remove_tree(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| SpoolError::io("remove", &path, e))?;
            tracing::info!(target: "ferry::spool", "removed {what}: {}", path.display());
            n += 1;
        }
        if n > 0 {
            fsops::fsync_dir(dir).map_err(|e| SpoolError::io("fsync", dir, e))?;
        }
        Ok(n)
    }

    /// Moves `entries/<name>` to quarantine with `reason` (the caller holds
    /// its lock, or it is not a directory anyone could lock).
    pub(crate) fn quarantine(&self, name: &str, reason: &str) -> Result<Quarantined, SpoolError> {
        let from = self.entries_dir().join(name);
        let qdir = self.quarantine_dir();
        let to = qdir.join(name);
        let q = Quarantined {
            name: name.to_string(),
            path: to.clone(),
            reason: reason.to_string(),
            quarantined_unix_nano: now_unix_nano(),
            bytes: fsops::dir_bytes(&from),
        };
        let json = serde_json::to_vec_pretty(&q)
            .map_err(|e| SpoolError::Invalid(format!("cannot serialise a reason: {e}")))?;
        // The reason first: a crash after it leaves an entry that is
        // quarantined again by the next drain, never one without a reason.
        fsops::write_atomic(&qdir, &format!("{name}{REASON_SUFFIX}"), &json)
            .map_err(|e| SpoolError::io("write", &qdir, e))?;
        fs::rename(&from, &to).map_err(|e| SpoolError::io("quarantine", &from, e))?;
        fsops::fsync_dir(&self.entries_dir())
            .and_then(|_| fsops::fsync_dir(&qdir))
            .map_err(|e| SpoolError::io("fsync", &qdir, e))?;
        tracing::error!(
            target: "ferry::spool",
            "spool entry {name} is damaged and was moved to quarantine: {reason}; it is kept in {} for inspection (`ferry spool show {name}`, `ferry spool drop {name}`)",
            to.display()
        );
        Ok(q)
    }

    /// Removes an entry whose lock the caller holds: renamed to `trash/`
    /// (gone for every reader at once), then deleted.
    pub(crate) fn remove_locked(&self, id: &str, lock: EntryLock) -> Result<(), SpoolError> {
        crate::failpoint::hit("spool.remove.begin");
        let from = self.entries_dir().join(id);
        let to = self.trash_dir().join(id);
        fs::rename(&from, &to).map_err(|e| SpoolError::io("remove", &from, e))?;
        crate::failpoint::hit("spool.remove.renamed");
        fsops::fsync_dir(&self.entries_dir())
            .map_err(|e| SpoolError::io("fsync", &self.entries_dir(), e))?;
        crate::failpoint::hit("spool.remove.synced");
        fsops::remove_tree(&to).map_err(|e| SpoolError::io("remove", &to, e))?;
        drop(lock);
        let _ = fsops::fsync_dir(&self.trash_dir());
        crate::failpoint::hit("spool.remove.done");
        Ok(())
    }

    /// Removes entry `id` unless it is in use; `Ok(false)` if it is.
    pub(crate) fn remove_if_free(&self, id: &str) -> Result<bool, SpoolError> {
        let path = self.entries_dir().join(id);
        match EntryLock::try_take(id, &path) {
            Ok(Some(lock)) => self.remove_locked(id, lock).map(|_| true),
            Ok(None) => Ok(false),
            Err(_) if fs::symlink_metadata(&path).is_err() => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn remove_quarantined(&self, name: &str) -> Result<(), SpoolError> {
        let qdir = self.quarantine_dir();
        let path = qdir.join(name);
        let removed = if path.is_dir() {
            fsops::remove_tree(&path)
        } else {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        };
        removed.map_err(|e| SpoolError::io("remove", &path, e))?;
        let _ = fs::remove_file(qdir.join(format!("{name}{REASON_SUFFIX}")));
        fsops::fsync_dir(&qdir).map_err(|e| SpoolError::io("fsync", &qdir, e))
    }

    /// Un-parks entry `id`: its failure records are removed, so the next
    /// drain tries every destination that lacks it. Returns those.
    pub fn retry(&self, id: &str) -> Result<Vec<String>, SpoolError> {
        let path = self.entry_path(id)?;
        if fs::symlink_metadata(&path).is_err() {
            return Err(self.not_found(id));
        }
        let Some(_lock) = EntryLock::try_take(id, &path)? else {
            return Err(SpoolError::InUse { id: id.into() });
        };
        let status = match entry::load(&path) {
            Ok(s) => s,
            Err(Bad::Corrupt(r)) => {
                return Err(SpoolError::Invalid(format!(
                    "entry {id} is damaged ({r}); the next drain quarantines it"
                )));
            }
            Err(Bad::Newer(f)) => {
                return Err(SpoolError::Invalid(format!(
                    "entry {id} has format {f}, written by a newer ferry"
                )));
            }
        };
        for f in &status.failures {
            let p = path.join(entry::fail_name(&f.destination));
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(SpoolError::io("remove", &p, e));
                }
                _ => {}
            }
        }
        fsops::fsync_dir(&path).map_err(|e| SpoolError::io("fsync", &path, e))?;
        Ok(status.pending().into_iter().map(str::to_string).collect())
    }

    /// Removes entry (or quarantined entry) `id` for good.
    pub fn drop_entry(&self, id: &str) -> Result<Dropped, SpoolError> {
        let path = self.entry_path(id)?;
        if fs::symlink_metadata(&path).is_ok() {
            let Some(lock) = EntryLock::try_take(id, &path)? else {
                return Err(SpoolError::InUse { id: id.into() });
            };
            let (key, never) = match entry::load(&path) {
                Ok(s) => (
                    Some(s.meta.key.clone()),
                    s.pending().into_iter().map(str::to_string).collect(),
                ),
                Err(_) => (None, Vec::new()),
            };
            let bytes = fsops::dir_bytes(&path);
            self.remove_locked(id, lock)?;
            return Ok(Dropped {
                id: id.into(),
                key,
                bytes,
                never_shipped_to: never,
                quarantined: false,
            });
        }
        if let Some(q) = self.quarantined()?.into_iter().find(|q| q.name == id) {
            self.remove_quarantined(id)?;
            return Ok(Dropped {
                id: id.into(),
                key: None,
                bytes: q.bytes,
                never_shipped_to: Vec::new(),
                quarantined: true,
            });
        }
        Err(self.not_found(id))
    }
}

fn sort_key(s: &Scanned) -> (u64, String) {
    match s {
        Scanned::Entry(e) => (e.meta.created_unix_nano, e.meta.id.clone()),
        Scanned::Bad { name, .. } | Scanned::Newer { name, .. } => (0, name.clone()),
    }
}

/// Size and SHA-256 of everything `r` yields.
pub(crate) fn hash_reader(r: &mut impl Read) -> io::Result<(u64, String)> {
    crate::bundle::hash_reader(r, &mut vec![0u8; 256 << 10])
}

#[cfg(test)]
mod tests;
