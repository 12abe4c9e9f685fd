//! [`EntryWriter`]: a new entry, written as a partial directory under
//! `tmp/` (invisible to drains), published by one rename into `entries/`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::entry::{DATA, ENTRY_FORMAT, EntryMeta, EntryStatus, META, Origin};
use super::evict::Evicted;
use super::fsops::{self, fsync_dir};
use super::lock::{EntryLock, TmpLock};
use super::{Spool, SpoolError, now_unix_nano};
use crate::failpoint;

/// An entry being written. Everything written goes to `tmp/<id>/data`,
/// hashed on the way; [`EntryWriter::commit`] makes it durable and visible.
/// Dropped without a commit, it removes its partial directory; a writer
/// killed before the commit leaves one that the next drain removes.
pub struct EntryWriter {
    spool: Spool,
    id: String,
    key: String,
    destinations: Vec<String>,
    origin: Origin,
    dir: PathBuf,
    lock: Option<EntryLock>,
    file: Option<File>,
    hasher: Sha256,
    size: u64,
    error: Option<SpoolError>,
    expendable: bool,
}

/// A committed entry, still locked by the writer (so no drain takes it
/// before the writer has tried to ship it itself).
#[derive(Debug)]
pub struct Committed {
    pub entry: EntryStatus,
    pub lock: EntryLock,
    /// What the size cap made room by removing.
    pub evicted: Vec<Evicted>,
    /// What failed after the entry was published (it exists and will be
    /// drained; these are for the log, never a reason to give it up).
    pub warnings: Vec<String>,
}

impl EntryWriter {
    pub(crate) fn create(
        spool: &Spool,
        key: &str,
        destinations: &[String],
        origin: Origin,
    ) -> Result<EntryWriter, SpoolError> {
        let id = super::new_id();
        let dir = spool.tmp_dir().join(&id);
        let lock = {
            let _born = TmpLock::take(&spool.tmp_lock_path(), false)?;
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| SpoolError::io("create", &dir, e))?;
            match EntryLock::try_take(&id, &dir)? {
                Some(l) => l,
                None => {
                    return Err(SpoolError::InUse { id });
                }
            }
        };
        let data = dir.join(DATA);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&data);
        let file = match opened {
            Ok(f) => f,
            Err(e) => {
                let _ = fsops::remove_tree(&dir);
                return Err(SpoolError::io("create", &data, e));
            }
        };
        failpoint::hit("spool.write.created");
        Ok(EntryWriter {
            spool: spool.clone(),
            id,
            key: key.to_string(),
            destinations: destinations.to_vec(),
            origin,
            dir,
            lock: Some(lock),
            file: Some(file),
            hasher: Sha256::new(),
            size: 0,
            error: None,
            expendable: false,
        })
    }

    /// The new entry's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Marks the entry as a copy of what another entry holds, so the size
    /// cap removes it before any other (see [`super::EvictReason`]).
    pub fn expendable(&mut self) {
        self.expendable = true;
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first write error, with the spool's fix (for a clearer message
    /// than the one that travelled through the bundle writer).
    pub fn write_error(&self) -> Option<&SpoolError> {
        self.error.as_ref()
    }

    /// [`EntryWriter::write_error`], taken out.
    pub fn take_error(&mut self) -> Option<SpoolError> {
        self.error.take()
    }

    fn fail(&mut self, action: &'static str, path: PathBuf, e: io::Error) -> SpoolError {
        self.error
            .get_or_insert_with(|| SpoolError::io(action, &path, clone_io(&e)));
        SpoolError::io(action, &path, e)
    }

    /// Makes the entry durable and visible: fsync of the data, `entry.json`
    /// written and fsynced, the directory fsynced, renamed into `entries/`,
    /// both directories fsynced. Then the size cap is enforced (never on
    /// this entry).
    pub fn commit(mut self) -> Result<Committed, SpoolError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let data = self.dir.join(DATA);
        let Some(file) = self.file.take() else {
            return Err(SpoolError::Invalid(
                "the entry was already committed".into(),
            ));
        };
        failpoint::hit("spool.commit.begin");
        file.sync_all()
            .map_err(|e| self.fail("fsync", data.clone(), e))?;
        drop(file);
        failpoint::hit("spool.commit.data_synced");
        let meta = EntryMeta {
            format: ENTRY_FORMAT,
            id: self.id.clone(),
            key: self.key.clone(),
            size: self.size,
            sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
            created_unix_nano: now_unix_nano(),
            destinations: self.destinations.clone(),
            origin: self.origin.clone(),
            expendable: self.expendable,
        };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| SpoolError::Invalid(format!("cannot serialise entry.json: {e}")))?;
        let meta_path = self.dir.join(META);
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&meta_path)?;
            f.write_all(&json)?;
            f.sync_all()
        })();
        written.map_err(|e| self.fail("write", meta_path.clone(), e))?;
        failpoint::hit("spool.commit.meta_synced");
        fsync_dir(&self.dir).map_err(|e| self.fail("fsync", self.dir.clone(), e))?;
        failpoint::hit("spool.commit.before_rename");
        let dest = self.spool.entries_dir().join(&self.id);
        fs::rename(&self.dir, &dest).map_err(|e| self.fail("publish", dest.clone(), e))?;
        // From here the entry exists: Drop must not remove anything.
        let lock = self.lock.take();
        failpoint::hit("spool.commit.renamed");
        // Past the rename an error must not make the caller believe there
        // is no entry: it is there and will be drained.
        let mut warnings = Vec::new();
        let entries = self.spool.entries_dir();
        if let Err(e) = fsync_dir(&entries) {
            warnings.push(SpoolError::io("fsync", &entries, e).to_string());
        }
        let _ = fsync_dir(&self.spool.tmp_dir());
        failpoint::hit("spool.commit.published");
        tracing::debug!(id = %self.id, key = %self.key, size = self.size, "spooled");
        let lock = lock.ok_or_else(|| SpoolError::InUse {
            id: self.id.clone(),
        })?;
        let evicted = self.spool.enforce_cap(Some(&self.id)).unwrap_or_else(|e| {
            warnings.push(format!("the size cap could not be enforced: {e}"));
            Vec::new()
        });
        for w in &warnings {
            tracing::warn!(id = %self.id, "spool entry published, but {w}");
        }
        Ok(Committed {
            entry: EntryStatus {
                meta,
                path: dest,
                acks: Vec::new(),
                failures: Vec::new(),
            },
            lock,
            evicted,
            warnings,
        })
    }
}

fn clone_io(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Write for EntryWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        failpoint::hit("spool.write.chunk");
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("the spool entry was already committed"));
        };
        match file.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.size += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                let err = self.fail("write", self.dir.join(DATA), e);
                Err(io::Error::new(kind, err.to_string()))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for EntryWriter {
    fn drop(&mut self) {
        if self.lock.is_some() {
            self.file.take();
            let _ = fsops::remove_tree(&self.dir);
        }
    }
}
