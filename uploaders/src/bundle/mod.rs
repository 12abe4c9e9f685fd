//! Bundles: the `tar.gz` files ferry ships a run's logs in.
//!
//! A bundle is a tar archive with deterministic headers (fixed mtime, uid,
//! gid and mode), regular files only, and `manifest.json` as its last entry,
//! compressed as a sequence of gzip members (any gzip reader that handles
//! multi-member files, which GNU gzip and tar do, reads it). See
//! `docs/bundles.md` for the layout and how to check one by hand.
//!
//! * [`BundleWriter`] writes one, redacting secrets on the way
//!   ([`BundleOptions::secrets`], bearer tokens, `Authorization` values) and
//!   capping each file ([`BundleOptions::max_file_bytes`]).
//! * [`write_bundle`] writes one to a path atomically.
//! * [`BundleReader`] lists, verifies, reads and safely extracts one.
//! * [`bundle_name`] names one.

mod error;
mod gz;
mod manifest;
mod reader;
mod redact;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use error::{BundleError, Result};
pub use gz::DEFAULT_BLOCK;
pub use manifest::{FileEntry, MANIFEST_FORMAT, MANIFEST_NAME, Manifest, SkippedEntry};
pub(crate) use reader::hash_reader;
pub use reader::{
    BundleReader, EntryInfo, EntryKind, ExtractLimits, ExtractSummary, Mismatch, VerifyReport,
};
pub use redact::{MIN_SECRET_LEN, REDACTED, redact_text};
pub use writer::{BundleWriter, DETERMINISTIC_MTIME};

/// Default per-file cap: 512 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 512 << 20;

/// How a bundle is written.
#[derive(Clone)]
pub struct BundleOptions {
    /// Exact secret values to replace with `[REDACTED]` wherever they occur
    /// (values shorter than [`MIN_SECRET_LEN`] bytes are ignored). Bearer
    /// tokens and `Authorization` values are redacted in any case.
    pub secrets: Vec<String>,
    /// Files larger than this keep only their first and last halves of it,
    /// cut at line ends, with a marker line between; `None` for no cap.
    /// Default [`DEFAULT_MAX_FILE_BYTES`].
    pub max_file_bytes: Option<u64>,
    /// Compression threads; 0 means one per available core (the default).
    pub threads: usize,
    /// gzip level 0–9, default 6 (sized like `gzip -6`).
    pub level: u32,
    /// Uncompressed bytes per gzip member, default [`DEFAULT_BLOCK`] (1 MiB);
    /// clamped to 64 KiB–64 MiB. Memory use is about
    /// `(2 * threads + 3) * block_size`.
    pub block_size: usize,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            secrets: Vec::new(),
            max_file_bytes: Some(DEFAULT_MAX_FILE_BYTES),
            threads: 0,
            level: 6,
            block_size: DEFAULT_BLOCK,
        }
    }
}

impl std::fmt::Debug for BundleOptions {
    // Never print the secrets themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleOptions")
            .field("secrets", &format_args!("[{} hidden]", self.secrets.len()))
            .field("max_file_bytes", &self.max_file_bytes)
            .field("threads", &self.threads)
            .field("level", &self.level)
            .field("block_size", &self.block_size)
            .finish()
    }
}

/// One compression thread per available core.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `<host>-<run-id>-<stage>-<result>.tar.gz`, each part reduced to
/// `[A-Za-z0-9._-]` (anything else becomes `_`), at most 56 bytes (so the name fits in 255), never
/// empty (`unknown`), and the name never starts with `.` or `-`.
pub fn bundle_name(host: &str, run_id: &str, stage: &str, result: &str) -> String {
    fn part(s: &str) -> String {
        let mut p: String = s
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .take(56)
            .collect();
        if p.is_empty() {
            p.push_str("unknown");
        }
        p
    }
    let mut host = part(host);
    if host.starts_with(['.', '-']) {
        host.replace_range(..1, "_");
    }
    format!(
        "{host}-{}-{}-{}.tar.gz",
        part(run_id),
        part(stage),
        part(result)
    )
}

/// The key of a bundle's report page, stored beside it where a backend
/// can serve it to a browser: `<bundle name without .tar.gz>.report.html`,
/// so a listing of `*.tar.gz` never takes it for a bundle.
pub fn report_key(bundle_key: &str) -> String {
    let stem = bundle_key.strip_suffix(".tar.gz").unwrap_or(bundle_key);
    format!("{stem}{REPORT_SUFFIX}")
}

/// What every report page's key ends with.
pub const REPORT_SUFFIX: &str = ".report.html";

/// The current time as `2026-12-03T12:00:00Z`.
pub(crate) fn rfc3339_now() -> String {
    manifest::rfc3339(std::time::SystemTime::now())
}

/// `dest` with `.partial` appended to its file name.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".partial");
    dest.with_file_name(name)
}

/// Writes a bundle to `dest` atomically: into `dest.partial`, which is
/// fsynced, renamed to `dest`, and the directory fsynced. `fill` adds the
/// files; on any error the partial file is removed and `dest` is untouched.
pub fn write_bundle<F>(
    dest: &Path,
    options: BundleOptions,
    run_meta: serde_json::Value,
    fill: F,
) -> Result<Manifest>
where
    F: FnOnce(&mut BundleWriter<File>) -> Result<()>,
{
    let partial = partial_path(dest);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)
        .map_err(|e| BundleError::io("create", &partial, e))?;
    let written = (|| {
        let (file, manifest) =
            write_bundle_into(file, options, run_meta, fill).map_err(|e| match e {
                BundleError::Output { source } => BundleError::io("write", &partial, source),
                other => other,
            })?;
        file.sync_all()
            .map_err(|e| BundleError::io("fsync", &partial, e))?;
        Ok(manifest)
    })();
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&partial, dest) {
        let _ = fs::remove_file(&partial);
        return Err(BundleError::io("rename into place", dest, e));
    }
    fsync_dir(crate::paths::dir_of(dest))?;
    Ok(manifest)
}

/// Writes a bundle into `out` (a spool entry, a pipe…): `fill` adds the
/// files, then the manifest ends it. Returns `out` and the manifest; on an
/// error whatever was written is incomplete, and the caller discards it.
pub fn write_bundle_into<W, F>(
    out: W,
    options: BundleOptions,
    run_meta: serde_json::Value,
    fill: F,
) -> Result<(W, Manifest)>
where
    W: std::io::Write,
    F: FnOnce(&mut BundleWriter<W>) -> Result<()>,
{
    let mut w = BundleWriter::new(out, options)?;
    fill(&mut w)?;
    w.finish(run_meta)
}

/// fsyncs a directory so a rename in it survives a crash.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BundleError::io("fsync directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_names_are_sanitised() {
        assert_eq!(
            bundle_name("ci-runner-7", "run 42", "dump", "failed"),
            "ci-runner-7-run_42-dump-failed.tar.gz"
        );
        assert_eq!(
            bundle_name("../../etc", "", "ré/sumé", "ok"),
            "_._.._etc-unknown-r__sum_-ok.tar.gz"
        );
        assert_eq!(bundle_name("-x", "1", "s", "r"), "_x-1-s-r.tar.gz");
        let long = "a".repeat(300);
        assert!(bundle_name(&long, &long, &long, &long).len() < 255);
    }

    #[test]
    fn report_pages_sit_beside_their_bundle() {
        assert_eq!(
            report_key("ci-7-run_42-dump-failed.tar.gz"),
            "ci-7-run_42-dump-failed.report.html"
        );
        assert_eq!(report_key("p/x-1-s-r.tar.gz"), "p/x-1-s-r.report.html");
        assert!(!report_key("x.tar.gz").ends_with(".tar.gz"));
    }

    #[test]
    fn partial_path_appends() {
        assert_eq!(
            partial_path(Path::new("/x/b.tar.gz")),
            PathBuf::from("/x/b.tar.gz.partial")
        );
        assert_eq!(
            partial_path(Path::new("b.tar.gz")),
            PathBuf::from("b.tar.gz.partial")
        );
    }

    #[test]
    fn debug_hides_secrets() {
        let o = BundleOptions {
            secrets: vec!["hunter22".into()],
            ..BundleOptions::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter22"), "{s}");
    }
}
