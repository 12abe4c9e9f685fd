//! Backends: where bundles go. One trait at the seam, one file per
//! implementation, so the code that ships a bundle never knows whether it
//! talks to a directory or an object store.

mod dir;
pub mod dropbox;
mod faulty;
pub mod github;
pub mod http;
mod s3;

use std::fmt;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use dir::DirBackend;
pub use dropbox::{DropboxBackend, DropboxConfig, DropboxCredentials};
pub use faulty::Faulty;
pub use github::{GithubBackend, GithubConfig};
pub use s3::{PathStyle, S3Backend, S3Config};

/// A store bundles are put into and fetched from. Synchronous for now.
pub trait Backend: Send + Sync {
    /// Short name used in messages and receipts: `"dir"`, `"s3"`, …
    fn name(&self) -> &str;

    /// Stores the file `src` under `key`. Idempotent: putting the same
    /// content under the same key again stores nothing new and returns an
    /// equivalent receipt; different content under an existing key is an
    /// error ([`ErrorKind::Conflict`]), never an overwrite.
    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError>;

    /// The objects whose keys start with `prefix` (a plain string prefix,
    /// `""` for all), sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError>;

    /// Fetches `key` into the local file `dest` (replaced atomically).
    fn get(&self, key: &str, dest: &Path) -> Result<(), BackendError>;

    /// A URL or path a person can open to see the object, if the backend
    /// has such a thing.
    fn share(&self, key: &str) -> Result<Option<String>, BackendError>;

    /// Whether the backend retries its own requests (each chunk or call
    /// under its [`crate::RetryPolicy`]). A caller must not wrap such a put
    /// in a retry loop of its own: the waits would multiply.
    fn retries_itself(&self) -> bool {
        false
    }
}

/// Proof that an object was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`Backend::name`] of the backend that stored it.
    pub backend: String,
    /// The key it was stored under.
    pub key: String,
    /// Where it is: a path, a URL, an object id.
    pub location: String,
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
}

/// An object as listed by [`Backend::list`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteObject {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last modified, as the backend reports it.
    pub modified: SystemTime,
}

/// How a backend operation failed, which decides whether to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The key is not acceptable (empty component, `..`, absolute, …).
    InvalidKey,
    /// No object under that key, or the local source is missing.
    NotFound,
    /// A different object already exists under that key.
    Conflict,
    /// Credentials are missing, wrong or expired.
    Auth,
    /// Access was refused.
    PermissionDenied,
    /// The store is full.
    NoSpace,
    /// The backend asked to slow down (HTTP 429, `Retry-After`).
    RateLimited,
    /// The store could not be reached or failed in a way a retry may fix
    /// (timeouts, resets, 5xx, `EIO` on a network mount).
    Unavailable,
    /// The backend is misconfigured (bad root, bad bucket…).
    Config,
    /// Anything else; not retried.
    Other,
}

impl ErrorKind {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::RateLimited | ErrorKind::Unavailable)
    }
}

/// A failed backend operation: which backend, what kind of failure, what
/// happened and what to do about it.
#[derive(Debug)]
pub struct BackendError {
    backend: String,
    kind: ErrorKind,
    message: String,
    fix: String,
    retry_after: Option<Duration>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl BackendError {
    /// A new error; `fix` tells the user what to do.
    pub fn new(
        backend: impl Into<String>,
        kind: ErrorKind,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        BackendError {
            backend: backend.into(),
            kind,
            message: message.into(),
            fix: fix.into(),
            retry_after: None,
            source: None,
        }
    }

    /// Classifies an I/O error from an operation described by `message`.
    pub fn from_io(backend: impl Into<String>, message: impl Into<String>, e: io::Error) -> Self {
        let (kind, fix) = classify_io(&e);
        BackendError::new(backend, kind, format!("{}: {e}", message.into()), fix).with_source(e)
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// Records how long the backend asked us to wait.
    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// The backend's [`Backend::name`].
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// How long to wait before retrying, if the backend said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// What the user can do about it.
    pub fn fix(&self) -> &str {
        &self.fix
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = if self.is_transient() {
            "transient"
        } else {
            "permanent"
        };
        write!(
            f,
            "{} backend: {} ({class}); {}",
            self.backend, self.message, self.fix
        )
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

fn classify_io(e: &io::Error) -> (ErrorKind, &'static str) {
    use io::ErrorKind as K;
    if let Some(code) = e.raw_os_error() {
        match code {
            libc::EAGAIN
            | libc::EINTR
            | libc::ETIMEDOUT
            | libc::EBUSY
            | libc::ESTALE
            | libc::EIO
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::EHOSTUNREACH
            | libc::ECONNRESET
            | libc::ECONNREFUSED
            | libc::ECONNABORTED
            | libc::ENOLCK => {
                return (
                    ErrorKind::Unavailable,
                    "retry later; if it persists check the mount or disk (dmesg)",
                );
            }
            libc::ENOSPC | libc::EDQUOT => {
                return (
                    ErrorKind::NoSpace,
                    "free space (or quota) on the backend's filesystem",
                );
            }
            libc::EROFS => {
                return (
                    ErrorKind::Config,
                    "the backend's filesystem is read-only; remount it read-write or choose another root",
                );
            }
            libc::ENOTDIR | libc::EISDIR | libc::ELOOP | libc::ENAMETOOLONG => {
                return (
                    ErrorKind::Config,
                    "the path does not lead where a directory or file can be: a part of it is a file, a link loop or too long; fix the root (ship.dir) or the key",
                );
            }
            _ => {}
        }
    }
    match e.kind() {
        K::NotFound => (ErrorKind::NotFound, "check the path or key"),
        K::PermissionDenied => (
            ErrorKind::PermissionDenied,
            "give the ferry user access (ownership or mode of the directory)",
        ),
        K::AlreadyExists => (ErrorKind::Conflict, "choose another key"),
        K::TimedOut
        | K::Interrupted
        | K::WouldBlock
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::ConnectionRefused
        | K::BrokenPipe => (ErrorKind::Unavailable, "retry later"),
        K::StorageFull => (ErrorKind::NoSpace, "free space on the backend's filesystem"),
        _ => (
            ErrorKind::Other,
            "check the path and the filesystem it is on",
        ),
    }
}

/// Checks a key: 1–1024 bytes of `/`-separated components, none empty,
/// `.` or `..`, none starting with `.ferry-tmp` (reserved for temporary
/// files), no leading `/`, no backslash, NUL or control characters.
/// Backends call this before anything else.
pub fn validate_key(backend: &str, key: &str) -> Result<(), BackendError> {
    let bad = |why: &str| {
        BackendError::new(
            backend,
            ErrorKind::InvalidKey,
            format!("invalid key {key:?}: {why}"),
            "use a relative key of non-empty components without `.` or `..`, e.g. `host/run-42/bundle.tar.gz`",
        )
    };
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    if key.len() > 1024 {
        return Err(bad("it is longer than 1024 bytes"));
    }
    if key.starts_with('/') {
        return Err(bad("it is absolute"));
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("it contains a control character or a backslash"));
    }
    for c in key.split('/') {
        match c {
            "" => return Err(bad("it has an empty component (`//` or a trailing `/`)")),
            "." | ".." => return Err(bad("it has a `.` or `..` component")),
            c if c.starts_with(TMP_PREFIX) => {
                return Err(bad("components starting with `.ferry-tmp` are reserved"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The media type a store that serves objects over HTTP should give `key`:
/// a report page must come back as HTML for a browser to draw it, a bundle
/// as gzip so it downloads.
pub fn content_type_of(key: &str) -> &'static str {
    if key.ends_with(".gz") {
        "application/gzip"
    } else if key.ends_with(".html") {
        "text/html; charset=utf-8"
    } else if key.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// Size and SHA-256 (lowercase hex) of the file at `path`, read once with a
/// small buffer: what a backend compares with what a store already holds.
pub fn hash_file(backend: &str, path: &Path) -> Result<(u64, String), BackendError> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        BackendError::from_io(backend, format!("cannot open {}", path.display()), e)
    })?;
    copy_hashed(&mut f, &mut io::sink(), &mut |_| {}).map_err(|e| match e {
        CopyError::Read(e) | CopyError::Write(e) => {
            BackendError::from_io(backend, format!("cannot read {}", path.display()), e)
        }
    })
}

/// Which side of a [`copy_hashed`] failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies `from` into `to` through a 256 KiB buffer, hashing what passes;
/// `each` is told every chunk's length. Returns the size and the SHA-256
/// (lowercase hex).
pub(crate) fn copy_hashed(
    from: &mut dyn io::Read,
    to: &mut dyn io::Write,
    each: &mut dyn FnMut(u64),
) -> Result<(u64, String), CopyError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        let k = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        h.update(&buf[..k]);
        to.write_all(&buf[..k]).map_err(CopyError::Write)?;
        n += k as u64;
        each(k as u64);
    }
    Ok((n, hex::encode(h.finalize())))
}

/// A temporary file beside `target` (same directory, so a rename is
/// atomic): `.ferry-tmp-<pid>-<n>-<random>`, `n` counted for the whole
/// process — two backend instances in one process (a drain opens one per
/// put) must never pick the same name — and the random part so a leftover
/// of a crashed process of an earlier boot with the same pid is not hit.
pub(crate) fn tmp_beside(target: &Path) -> std::path::PathBuf {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    target.with_file_name(format!(
        "{TMP_PREFIX}-{}-{n}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ))
}

/// Prefix of the temporary files backends write before renaming.
pub(crate) const TMP_PREFIX: &str = ".ferry-tmp";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in ["a", "host/run-42/x.tar.gz", "a b/c", ".hidden", "ü/ß"] {
            validate_key("t", good).expect(good);
        }
        for bad in [
            "",
            "/a",
            "a//b",
            "a/",
            "../a",
            "a/./b",
            "a/..",
            "a\\b",
            "a\nb",
            ".ferry-tmp-1",
        ] {
            let e = validate_key("t", bad).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidKey);
            assert!(!e.is_transient());
        }
        assert!(validate_key("t", &"a".repeat(1025)).is_err());
    }

    /// Regression: each backend instance counted its temporary names from
    /// 0, so two instances in one process (one per put in a drain) collided
    /// and the second put failed as a permanent conflict.
    #[test]
    fn temporary_names_never_repeat_in_a_process() {
        let t = Path::new("/x/bundle.tar.gz");
        let names: std::collections::BTreeSet<_> = (0..1000).map(|_| tmp_beside(t)).collect();
        assert_eq!(names.len(), 1000);
        assert!(names.iter().all(|n| {
            n.parent() == t.parent()
                && n.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(TMP_PREFIX)
        }));
    }

    #[test]
    fn served_types_follow_the_key() {
        assert_eq!(content_type_of("a/x-1-s-r.tar.gz"), "application/gzip");
        assert_eq!(
            content_type_of("a/x-1-s-r.report.html"),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type_of("m.json"), "application/json");
        assert_eq!(content_type_of("blob"), "application/octet-stream");
    }

    #[test]
    fn io_errors_are_classified() {
        let t = BackendError::from_io(
            "dir",
            "write x",
            io::Error::from_raw_os_error(libc::ETIMEDOUT),
        );
        assert!(t.is_transient());
        let p = BackendError::from_io("dir", "write x", io::Error::from_raw_os_error(libc::EACCES));
        assert!(!p.is_transient());
        assert_eq!(p.kind(), ErrorKind::PermissionDenied);
        let s = p.to_string();
        assert!(s.starts_with("dir backend: write x"), "{s}");
        assert!(s.contains("permanent"), "{s}");
    }
}
