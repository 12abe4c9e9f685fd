//! The spool's locks, all `flock(2)` (released by the kernel when the
//! holder dies, so a crash never leaves the spool locked):
//!
//! * `drain.lock`: one whole-spool drain at a time; the holder writes who
//!   it is into the file, so the next one can say whom it waits for.
//! * the entry's directory: whoever works on an entry (the writer that
//!   just committed it, a drain uploading it, an eviction or a drop) holds
//!   it, so an entry is never removed under an upload.
//! * `tmp.lock`: writers hold it shared while they create their partial
//!   directory, the cleaner exclusively while it removes the partials of
//!   dead writers, so it never takes one that is being born.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::SpoolError;
use super::fsops::{self, flock};

fn open_lock_file(path: &Path) -> Result<File, SpoolError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| SpoolError::io("open the lock", path, e))
}

/// Held for the time of one whole-spool drain.
#[derive(Debug)]
pub struct DrainLock {
    _file: File,
}

/// Whether to wait for another drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once with [`SpoolError::Busy`].
    No,
    /// Wait at most this long, then [`SpoolError::StillBusy`].
    Up(Duration),
}

fn holder_of(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.take(512).read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "another ferry process".into()
    } else {
        s.to_string()
    }
}

/// Takes `path` exclusively (see [`Wait`]); `on_wait` is told once whom
/// we wait for. Then records `who` in it.
pub(crate) fn drain_lock(
    root: &Path,
    path: &Path,
    who: &str,
    wait: Wait,
    on_wait: &mut dyn FnMut(&str),
) -> Result<DrainLock, SpoolError> {
    let mut file = open_lock_file(path)?;
    let lock_err = |e| SpoolError::io("lock", path, e);
    if !fsops::try_lock(&file).map_err(lock_err)? {
        let holder = holder_of(&mut file);
        let budget = match wait {
            Wait::No => {
                return Err(SpoolError::Busy {
                    root: root.to_path_buf(),
                    holder,
                });
            }
            Wait::Up(d) => d,
        };
        on_wait(&holder);
        let deadline = Instant::now() + budget;
        // flock has no timeout: poll, gently.
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if fsops::try_lock(&file).map_err(lock_err)? {
                break;
            }
            if Instant::now() >= deadline {
                return Err(SpoolError::StillBusy {
                    root: root.to_path_buf(),
                    holder: holder_of(&mut file),
                    secs: budget.as_secs(),
                });
            }
        }
    }
    let _ = file.set_len(0);
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.write_all(who.as_bytes());
    Ok(DrainLock { _file: file })
}

/// An entry directory, locked by us.
#[derive(Debug)]
pub struct EntryLock {
    pub(crate) id: String,
    _dir: File,
}

impl EntryLock {
    /// Locks the directory `dir` of entry `id`; `Ok(None)` when someone else
    /// holds it.
    pub(crate) fn try_take(id: &str, dir: &Path) -> Result<Option<EntryLock>, SpoolError> {
        let f = fsops::open_dir(dir).map_err(|e| SpoolError::io("open", dir, e))?;
        if fsops::try_lock(&f).map_err(|e| SpoolError::io("lock", dir, e))? {
            Ok(Some(EntryLock {
                id: id.to_string(),
                _dir: f,
            }))
        } else {
            Ok(None)
        }
    }

    /// The entry's id.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// `tmp.lock`, shared or exclusive, blocking.
pub(crate) struct TmpLock(File);

impl TmpLock {
    pub(crate) fn take(path: &Path, exclusive: bool) -> Result<TmpLock, SpoolError> {
        let f = open_lock_file(path)?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        flock(&f, op).map_err(|e| SpoolError::io("lock", path, e))?;
        Ok(TmpLock(f))
    }
}

impl Drop for TmpLock {
    fn drop(&mut self) {
        let _ = flock(&self.0, libc::LOCK_UN);
    }
}
