//! The one error type of the bundle module: each variant names the file it
//! is about and says what to do about it.

use std::io;
use std::path::PathBuf;

/// Result of the bundle functions.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Why a bundle could not be written, read, verified or extracted.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An I/O operation on a named file failed.
    #[error("cannot {op} {path}: {source}; {fix}", path = path.display())]
    Io {
        /// What was being done ("open", "read", "write", "rename", …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        #[source]
        source: io::Error,
        /// What the user can do about it.
        fix: &'static str,
    },

    /// A name given for an entry inside the bundle is unusable.
    #[error(
        "invalid name {name:?} for a file in the bundle: {reason}; use a relative path of \
         non-empty components without `.` or `..`, e.g. `logs/criu-dump.log`"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// The same name was added twice.
    #[error(
        "{name:?} is already in the bundle; give each file its own name (add_dir takes a \
         prefix for that)"
    )]
    Duplicate {
        /// The repeated name.
        name: String,
    },

    /// `add_path` was given something that is not a regular file.
    #[error(
        "{path} is not a regular file ({kind}); pass a regular file to add_path, or a \
         directory to add_dir",
        path = path.display()
    )]
    NotRegularFile {
        /// The offending path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },

    /// Writing the bundle's output failed.
    #[error(
        "cannot write the bundle: {source}; check free space and permissions where the bundle \
         is being written"
    )]
    Output {
        #[source]
        source: io::Error,
    },

    /// An earlier error left the archive being written inconsistent.
    #[error("this bundle can no longer be written to: {detail}; start a new bundle")]
    Broken {
        /// What went wrong first.
        detail: String,
    },

    /// The compressor failed (never expected; a bug or memory exhaustion).
    #[error(
        "gzip compression failed while writing the bundle: {detail}; retry, and report it if it repeats"
    )]
    Compression {
        /// The compressor's own words.
        detail: String,
    },

    /// The bundle is not a complete gzip-compressed tar archive.
    #[error(
        "bundle {path} is truncated or corrupt: {detail}; fetch or copy it again (`gzip -t` \
         on it shows the damage), or rebuild it from the logs",
        path = path.display()
    )]
    Corrupt {
        /// The bundle file.
        path: PathBuf,
        /// What the decoder saw.
        detail: String,
    },

    /// The archive has no `manifest.json` entry.
    #[error(
        "bundle {path} has no manifest.json (it was not written by ferry, or its writer was \
         interrupted before finish); rebuild it with ferry",
        path = path.display()
    )]
    NoManifest {
        /// The bundle file.
        path: PathBuf,
    },

    /// A manifest of a format this ferry does not know (a newer one wrote
    /// it): its fields may mean something else, so nothing is trusted.
    #[error(
        "{path}: manifest.json has format {format}, this ferry reads format {known}; read it with a newer ferry",
        path = path.display()
    )]
    NewerFormat {
        path: PathBuf,
        format: u32,
        known: u32,
    },

    /// `manifest.json` is present but not a manifest ferry understands.
    #[error(
        "bundle {path}: manifest.json is not one ferry wrote: {source}; a bundle made by ferry \
         and left as it was always reads: if this one was made or edited by hand, \
         docs/bundles.md lists every field a manifest needs",
        path = path.display()
    )]
    BadManifest {
        /// The bundle file.
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// A requested entry is not in the bundle.
    #[error(
        "bundle {path} has no file {name:?}; list what it holds with `tar tzf {path}`",
        path = path.display()
    )]
    NoSuchEntry {
        /// The bundle file.
        path: PathBuf,
        /// The requested name.
        name: String,
    },

    /// Extraction refused an entry that could escape the target directory or
    /// is not a plain file.
    #[error(
        "refusing to extract {name:?} from {path}: {reason}; the bundle was not written by \
         ferry or has been tampered with, inspect it with `tar tvzf {path}`",
        path = path.display()
    )]
    UnsafeEntry {
        /// The bundle file.
        path: PathBuf,
        /// The entry's name as stored.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// Extraction would exceed a configured limit.
    #[error(
        "refusing to extract {path}: {what} exceeds the limit of {limit}; if the bundle is \
         trusted, raise the limit (`ferry pull --max-extract-mib`)",
        path = path.display()
    )]
    LimitExceeded {
        /// The bundle file.
        path: PathBuf,
        /// Which limit ("total size in bytes", "number of entries").
        what: &'static str,
        /// The limit in force.
        limit: u64,
    },

    /// The extraction target exists and is not an empty directory.
    #[error(
        "cannot extract into {dir}: it exists and is not an empty directory; choose a new \
         directory",
        dir = dir.display()
    )]
    TargetNotEmpty {
        /// The target directory.
        dir: PathBuf,
    },

    /// `verify` found differences between the archive and its manifest.
    #[error("bundle {path} does not match its manifest: {summary}; fetch it again or rebuild it", path = path.display())]
    Mismatch {
        /// The bundle file.
        path: PathBuf,
        /// A one-line account of the differences.
        summary: String,
    },
}

impl BundleError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let fix = match source.kind() {
            io::ErrorKind::NotFound => "check that the path exists",
            io::ErrorKind::PermissionDenied => {
                "check that ferry may access it (run as its owner or as root)"
            }
            io::ErrorKind::StorageFull => "free space on that filesystem or lower max_file_bytes",
            io::ErrorKind::AlreadyExists => "remove it first or choose another name",
            _ => "check the filesystem (dmesg may say more) and retry",
        };
        BundleError::Io {
            op,
            path: path.into(),
            source,
            fix,
        }
    }
}
