//! The few filesystem steps the spool's guarantees rest on: durable
//! renames (fsync of the file, then of both directories), atomic small
//! files, and `flock` on directories.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::failpoint;

/// fsyncs a directory, so the names created or removed in it survive a
/// power cut.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Opens a directory (for `flock` and fsync).
pub(crate) fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
}

/// Writes `bytes` as `dir/name`, replacing any older file whole: a
/// temporary file, fsynced, renamed, and the directory fsynced.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp-{name}"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        failpoint::hit("spool.file.synced");
        fs::rename(&tmp, dir.join(name))?;
        failpoint::hit("spool.file.renamed");
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another open file holds it.
pub(crate) fn try_lock(f: &File) -> io::Result<bool> {
    flock(f, libc::LOCK_EX | libc::LOCK_NB)
}

/// `flock` with `op`; `Ok(false)` only for a non-blocking attempt that
/// would block.
pub(crate) fn flock(f: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Removes a directory tree that may already be (partly) gone.
pub(crate) fn remove_tree(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Bytes used by the regular files directly in `dir` (entries are flat).
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else {
        return fs::metadata(dir).map(|m| m.len()).unwrap_or(0);
    };
    rd.flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
