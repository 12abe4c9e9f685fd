//! The spool's error: every variant names the path or entry it is about and
//! says what to do.

use std::io;
use std::path::{Path, PathBuf};

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A filesystem operation on the spool failed.
    // The cause is part of the message, not a `source`: `{:#}` at the
    // binary's edge would print it twice.
    #[error("spool: cannot {action} {path}: {cause}; {fix}", path = path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
        fix: &'static str,
    },
    /// Another process drains the spool and we were told not to wait.
    #[error(
        "spool {root} is being drained by {holder}; wait for it to end (or run `ferry ship` without --no-wait to queue behind it)",
        root = root.display()
    )]
    Busy { root: PathBuf, holder: String },
    /// Another process drained the spool for all of the time we waited.
    #[error(
        "spool {root} was still being drained by {holder} after {secs} s of waiting; run `ferry ship` again later, or with a longer --wait-secs",
        root = root.display()
    )]
    StillBusy {
        root: PathBuf,
        holder: String,
        secs: u64,
    },
    /// No entry with that id.
    #[error(
        "spool {root} has no entry {id:?}; `ferry spool list` shows the ids",
        root = root.display()
    )]
    NotFound { id: String, root: PathBuf },
    /// Somebody works on the entry right now.
    #[error(
        "spool entry {id} is in use by another ferry process (a drain or a writer); try again when it is done"
    )]
    InUse { id: String },
    /// The file to spool could not be read: the fault is the argument's,
    /// not the spool's.
    #[error("cannot read {path} to spool it: {cause}; give a readable bundle file", path = path.display())]
    Source { path: PathBuf, cause: io::Error },
    /// An argument cannot be used (a key, a destination name, an id).
    #[error("spool: {0}")]
    Invalid(String),
}

impl SpoolError {
    /// Classifies an I/O error of `action` on `path`, with the fix that
    /// applies to the spool.
    pub fn io(action: &'static str, path: &Path, cause: io::Error) -> Self {
        let fix = fix_for(&cause);
        SpoolError::Io {
            action,
            path: path.to_path_buf(),
            cause,
            fix,
        }
    }

    /// Whether the filesystem (or quota) was full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, SpoolError::Io { cause, .. } if is_no_space(cause))
    }

    /// Whether access was refused.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, SpoolError::Io { cause, .. } if cause.kind() == io::ErrorKind::PermissionDenied)
    }
}

pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.kind() == io::ErrorKind::StorageFull
}

fn fix_for(e: &io::Error) -> &'static str {
    if is_no_space(e) {
        return "the spool's filesystem is full: free space there, lower spool.max_mib (FERRY_SPOOL_MAX_MIB), or move spool.dir (FERRY_SPOOL_DIR) to a larger disk; nothing half-written was left in the spool";
    }
    match e.raw_os_error() {
        Some(libc::EROFS) => {
            return "the spool's filesystem is read-only: remount it read-write or move spool.dir (FERRY_SPOOL_DIR)";
        }
        Some(libc::EIO) => return "the disk reported an I/O error: check dmesg and the disk",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "ferry must own the spool: run it as root (sudo), or point spool.dir (FERRY_SPOOL_DIR) at a directory this user owns"
        }
        io::ErrorKind::NotFound => "the spool changed under ferry; run the command again",
        _ => "check spool.dir (FERRY_SPOOL_DIR) and the filesystem it is on",
    }
}
