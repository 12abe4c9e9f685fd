//! `manifest.json`: the last entry of every bundle.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The manifest format this code writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// The name of the manifest entry.
pub const MANIFEST_NAME: &str = "manifest.json";

/// What a bundle holds. Serialised as `manifest.json`, the last entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`] for bundles written by this code.
    pub format: u32,
    /// The ferry version that wrote the bundle.
    pub ferry_version: String,
    /// When the bundle was finished, RFC 3339 UTC (`2025-01-31T12:00:00Z`).
    pub created: String,
    /// The run metadata passed to `finish`, with secrets redacted from its
    /// strings.
    pub run: serde_json::Value,
    /// Every file in the bundle except the manifest itself, in archive order.
    pub files: Vec<FileEntry>,
    /// What `add_dir` found but did not take (symlinks, sockets, unreadable
    /// files…), so a reader knows it is missing on purpose.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedEntry>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The name inside the bundle (`logs/criu-dump.log`).
    pub path: String,
    /// Bytes stored in the bundle (after redaction and capping).
    pub size: u64,
    /// SHA-256 of the stored bytes, lowercase hex; `sha256sum` of the
    /// extracted file prints the same.
    pub sha256: String,
    /// The file was larger than `max_file_bytes`: only its head and tail
    /// are stored, with a marker line between them.
    pub truncated: bool,
    /// How many secrets and credentials were replaced by `[REDACTED]`.
    pub redacted: u64,
    /// The size of the source when it was opened (for `add_bytes`, the
    /// length of the data).
    pub source_size: u64,
    /// The source changed while it was read (it shrank, or its content was
    /// rewritten in place): the stored bytes were padded with NULs or cut
    /// to keep the archive valid. Omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub changed_while_read: bool,
}

/// Something `add_dir` passed over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedEntry {
    /// The name it would have had inside the bundle.
    pub path: String,
    /// Why it was skipped (`symlink`, `socket`, `permission denied: …`).
    pub reason: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Manifest {
    /// The entry for `path`, if the bundle has one.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// `now` as RFC 3339 UTC with second precision.
pub(crate) fn rfc3339(now: SystemTime) -> String {
    let secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_767_225_599)),
            "2025-12-31T23:59:59Z"
        );
    }

    #[test]
    fn changed_while_read_is_omitted_when_false() {
        let f = FileEntry {
            path: "a".into(),
            size: 1,
            sha256: "00".into(),
            truncated: false,
            redacted: 0,
            source_size: 1,
            changed_while_read: false,
        };
        let j = serde_json::to_string(&f).expect("json");
        assert!(!j.contains("changed_while_read"), "{j}");
        let back: FileEntry = serde_json::from_str(&j).expect("parse");
        assert_eq!(back, f);
    }
}
