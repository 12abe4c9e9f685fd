//! `manifest.json`: the last entry of every bundle.

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

pub(crate) use crate::utc::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

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
