//! What an entry holds on disk: `entry.json` (what the data is and where it
//! must go), `data`, and per destination `ack-<dest>.json` (it is there) or
//! `fail-<dest>.json` (the last failure; a permanent one parks the
//! destination until `ferry spool retry`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backends::Receipt;

/// `entry.json`'s format; a newer one is left alone for a newer ferry.
pub const ENTRY_FORMAT: u32 = 1;

pub(crate) const META: &str = "entry.json";
pub(crate) const DATA: &str = "data";
const ACK_PREFIX: &str = "ack-";
const FAIL_PREFIX: &str = "fail-";

/// Where an entry came from, so a later drain can use the run's settings
/// and credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<PathBuf>,
}

/// `entry.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryMeta {
    pub format: u32,
    pub id: String,
    /// The key every destination stores the data under (idempotent: a
    /// second put of the same bytes is a no-op).
    pub key: String,
    pub size: u64,
    /// SHA-256 of `data`, lowercase hex; checked before every upload and
    /// against every receipt.
    pub sha256: String,
    pub created_unix_nano: u64,
    /// Every destination that must acknowledge it before it is removed.
    pub destinations: Vec<String>,
    #[serde(default)]
    pub origin: Origin,
    /// A copy of what another entry holds (a bundle's report page): the
    /// size cap removes it before any other entry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub expendable: bool,
}

/// `ack-<dest>.json`: the destination has the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub destination: String,
    pub receipt: Receipt,
    /// What [`crate::Backend::share`] gave, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub acked_unix_nano: u64,
}

/// `fail-<dest>.json`: the last failure to put the data there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub destination: String,
    /// Attempts so far, over all drains.
    pub attempts: u32,
    pub error: String,
    pub fix: String,
    /// The backend's error kind (`Unavailable`, `Auth`, …).
    pub kind: String,
    /// A permanent failure parks the destination: drains skip it until
    /// `ferry spool retry`.
    pub permanent: bool,
    pub last_unix_nano: u64,
}

/// A published entry as read from disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryStatus {
    pub meta: EntryMeta,
    /// The entry's directory.
    pub path: PathBuf,
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
}

impl EntryStatus {
    /// The file to upload.
    pub fn data_path(&self) -> PathBuf {
        self.path.join(DATA)
    }

    pub fn ack(&self, dest: &str) -> Option<&Ack> {
        self.acks.iter().find(|a| a.destination == dest)
    }

    pub fn failure(&self, dest: &str) -> Option<&Failure> {
        self.failures.iter().find(|f| f.destination == dest)
    }

    /// Destinations that have not acknowledged the entry yet.
    pub fn pending(&self) -> Vec<&str> {
        self.meta
            .destinations
            .iter()
            .map(String::as_str)
            .filter(|d| self.ack(d).is_none())
            .collect()
    }

    /// Destinations parked by a permanent failure.
    pub fn parked(&self) -> Vec<&str> {
        self.pending()
            .into_iter()
            .filter(|d| self.failure(d).is_some_and(|f| f.permanent))
            .collect()
    }

    /// `waiting`, `parked` (some destination needs `ferry spool retry`) or
    /// `done` (every destination has it; removal pending).
    pub fn state(&self) -> &'static str {
        if self.pending().is_empty() {
            "done"
        } else if !self.parked().is_empty() {
            "parked"
        } else {
            "waiting"
        }
    }
}

/// Why an entry directory cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Damaged or unreadable: quarantine it.
    Corrupt(String),
    /// Written by a newer ferry: leave it alone.
    Newer(u32),
}

pub(crate) fn ack_name(dest: &str) -> String {
    format!("{ACK_PREFIX}{dest}.json")
}

pub(crate) fn fail_name(dest: &str) -> String {
    format!("{FAIL_PREFIX}{dest}.json")
}

/// Destination names become file names: keep them plain.
pub fn valid_destination(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Entry ids are plain names made by [`super::new_id`].
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Bad> {
    let bytes =
        fs::read(path).map_err(|e| Bad::Corrupt(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Bad::Corrupt(format!("{} is damaged: {e}", path.display())))
}

/// Reads and checks the entry in `dir` (its name must be its id).
pub(crate) fn load(dir: &Path) -> Result<EntryStatus, Bad> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let md = fs::symlink_metadata(dir)
        .map_err(|e| Bad::Corrupt(format!("cannot inspect {}: {e}", dir.display())))?;
    if !md.is_dir() {
        return Err(Bad::Corrupt(format!(
            "{} is not an entry directory",
            dir.display()
        )));
    }
    let raw: serde_json::Value = read_json(&dir.join(META))?;
    let format = raw.get("format").and_then(|f| f.as_u64()).unwrap_or(0);
    if format > u64::from(ENTRY_FORMAT) {
        return Err(Bad::Newer(u32::try_from(format).unwrap_or(u32::MAX)));
    }
    let meta: EntryMeta = serde_json::from_value(raw)
        .map_err(|e| Bad::Corrupt(format!("{} is damaged: {e}", dir.join(META).display())))?;
    let problem = if meta.id != name {
        Some(format!("its id {:?} is not its directory's name", meta.id))
    } else if meta.sha256.len() != 64 || !meta.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        Some("its sha256 is not 64 hex digits".to_string())
    } else if meta.destinations.is_empty()
        || !meta.destinations.iter().all(|d| valid_destination(d))
    {
        Some(format!(
            "its destinations {:?} are not usable",
            meta.destinations
        ))
    } else if crate::backends::validate_key("spool", &meta.key).is_err() {
        Some(format!("its key {:?} is not a valid key", meta.key))
    } else {
        None
    };
    if let Some(p) = problem {
        return Err(Bad::Corrupt(format!("{}: {p}", dir.join(META).display())));
    }
    let data = dir.join(DATA);
    match fs::symlink_metadata(&data) {
        Ok(m) if m.is_file() && m.len() == meta.size => {}
        Ok(m) if m.is_file() => {
            return Err(Bad::Corrupt(format!(
                "{} has {} bytes, its entry.json says {}",
                data.display(),
                m.len(),
                meta.size
            )));
        }
        Ok(_) => {
            return Err(Bad::Corrupt(format!(
                "{} is not a regular file",
                data.display()
            )));
        }
        Err(e) => {
            return Err(Bad::Corrupt(format!(
                "cannot inspect {}: {e}",
                data.display()
            )));
        }
    }
    let mut acks = Vec::new();
    let mut failures = Vec::new();
    for dest in &meta.destinations {
        match fs::metadata(dir.join(ack_name(dest))) {
            Ok(_) => acks.push(read_json::<Ack>(&dir.join(ack_name(dest)))?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Bad::Corrupt(format!(
                    "cannot inspect an ack of {}: {e}",
                    dir.display()
                )));
            }
        }
        // A damaged failure record only loses history: the upload is
        // simply tried again.
        if let Ok(f) = read_json::<Failure>(&dir.join(fail_name(dest))) {
            failures.push(f);
        }
    }
    Ok(EntryStatus {
        meta,
        path: dir.to_path_buf(),
        acks,
        failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(
            valid_destination("dir") && valid_destination("s3") && valid_destination("github-2")
        );
        for bad in ["", "S3", "a/b", "../x", "a.b", &"x".repeat(33)] {
            assert!(!valid_destination(bad), "{bad}");
        }
        assert!(valid_id("20261203T120000Z-0a1b2c3d"));
        for bad in ["", ".x", "a/b", "..", "a b"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
