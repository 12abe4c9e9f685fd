//! The run state: one `state.json` per run, the only thing both boots share.
//!
//! Every write goes through [`write_atomic`] (temp file, fsync, rename, fsync
//! of the directory), so a power cut leaves either the old or the new state,
//! never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::session::Session;

/// Errors reading or writing run state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot write {path}: {source} (is the state directory on a writable, non-full disk? set state_dir in ferry.toml or FERRY_STATE_DIR)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a ferry run state: {source} (the file is damaged; the run's images and logs are still in its directory)"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// How a phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhaseResult {
    Running,
    Ok,
    Failed,
    Skipped,
}

/// One phase's record: written when it starts and again when it ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub name: String,
    pub span_id: String,
    pub boot_id: String,
    /// Wall-clock start, Unix nanoseconds.
    pub start_unix_nano: u64,
    pub end_unix_nano: Option<u64>,
    pub result: PhaseResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
}

/// The end of a run, as the foreground `ferry upgrade` reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// `succeeded`, `called_off` (stopped before the reboot, session alive on
    /// the old kernel) or `failed`.
    pub result: String,
    pub phase: Option<String>,
    pub reason: Option<String>,
    pub bundle: Option<String>,
    /// The run's spans (OTLP/JSON lines) and their trace id.
    pub trace_file: Option<String>,
    pub trace_id: Option<String>,
    pub kernel_before: String,
    pub kernel_after: Option<String>,
    /// Wall-clock time the session was frozen, dump start to restore end.
    pub downtime_ms: Option<u64>,
    /// Host pid of the restored session root (it lives in a new pid
    /// namespace: `nsenter -t <pid> -a` enters it).
    #[serde(default)]
    pub restored_root_pid: Option<i32>,
    pub end_unix_nano: u64,
    /// What `ferry diagnose` found in the logs of a run that did not succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<crate::diagnose::Summary>,
    /// Where the bundle went and where it still waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ship: Option<ShipRecord>,
    /// Notes made after the foreground stopped reading the state (from the
    /// dump on), for its summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The bundle of a run: spooled first, then shipped where it could be.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShipRecord {
    /// The key every destination stores it under (the bundle's name).
    pub key: String,
    pub size: u64,
    pub sha256: String,
    pub spool_dir: PathBuf,
    /// The spool entry, while it waits for some destination.
    pub spool_entry: Option<String>,
    pub shipped: Vec<ShippedTo>,
    pub waiting: Vec<WaitingFor>,
    /// The run's report.html, stored beside the bundle where a browser can
    /// open it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<PageRecord>,
}

/// The report page beside a bundle: its own spool entry, so it waits and
/// retries like a bundle, and no destination's failure holds the other up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PageRecord {
    pub key: String,
    pub shipped: Vec<ShippedTo>,
    pub waiting: Vec<WaitingFor>,
    /// The spool entry, while it waits for some destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_entry: Option<String>,
}

/// A destination that has the bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShippedTo {
    pub destination: String,
    pub location: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// A destination that does not have it yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitingFor {
    pub destination: String,
    pub error: String,
    /// A permanent failure: `ferry spool retry` once fixed.
    pub parked: bool,
}

/// The kernel chosen for the trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelChoice {
    pub release: String,
    pub image: PathBuf,
    pub initrd: Option<PathBuf>,
}

/// What the restore side needs to know about what the dump side did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    /// Wall clock when criu started freezing the session.
    pub dump_start_unix_nano: Option<u64>,
    /// `--external` values given to `criu dump`.
    pub externals: Vec<String>,
    /// The saved firewall rules, by tool (`iptables`, `ip6tables`).
    pub firewall_files: Vec<PathBuf>,
    /// CRIU's lock rules found in the saved firewall rules.
    pub lock_rules: Vec<String>,
    /// `net.ipv4.tcp_window_scaling` before the restore touched it.
    pub window_scaling_before: Option<String>,
    /// A reason the trip was called off after the dump: the restore then
    /// happens in place on the old kernel and the run ends `called_off`.
    pub called_off: Option<String>,
    /// Wall clock when `criu restore` reported success.
    pub restored_unix_nano: Option<u64>,
    /// Host pid of the restored session root.
    pub restored_root_pid: Option<i32>,
    /// Host pid of the new pid namespace's init (criu).
    pub namespace_init_pid: Option<i32>,
    /// `--ghost-limit` the dump used, in bytes.
    #[serde(default)]
    pub ghost_limit: Option<u64>,
    /// Executables that lost their exec bits in the upgrade.
    #[serde(default)]
    pub exec_fixes: Vec<crate::phases::dump_plan::ExecFix>,
    /// `/dev/tty` fds dumped as externals, to point at their pts.
    #[serde(default)]
    pub ctty_fixes: Vec<crate::phases::dump_plan::CttyFix>,
    /// journald streams dumped as externals, to reconnect at restore.
    #[serde(default)]
    pub journal: Vec<crate::phases::dump_plan::JournalReconnect>,
    /// What was changed in the images after the dump, for people.
    #[serde(default)]
    pub image_fixes: Vec<String>,
    /// Files of the session on tmpfs, saved after the dump to be put back.
    #[serde(default)]
    pub volatile: Vec<crate::volatile::Saved>,
    /// The session's files on volatile filesystems as `dump` read them,
    /// just before the freeze (`locate`'s list is from before the upgrade).
    #[serde(default)]
    pub volatile_at_dump: Option<Vec<crate::session::UsedFile>>,
    /// `dump` found that the next boot mounts a tmpfs on the on-disk
    /// `/tmp` ([`crate::next_boot`]): what the session has there is saved
    /// as if it were on tmpfs already.
    #[serde(default)]
    pub tmp_hidden_at_next_boot: bool,
    /// How the session's terminals were restored.
    #[serde(default)]
    pub pty: Option<crate::phases::restore::PtyRecord>,
    /// Every restore attempt, in order.
    #[serde(default)]
    pub restore_attempts: Vec<Attempt>,
    /// Why ferry stopped trying to restore (the lock rules were removed).
    #[serde(default)]
    pub gave_up: Option<String>,
    /// How many notes the foreground had seen when the dump began.
    #[serde(default)]
    pub notes_seen: Option<usize>,
}

/// One `criu restore` attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub boot_id: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: Option<u64>,
    /// `None` while running or when it succeeded.
    pub error: Option<String>,
    /// Its criu log, under `logs/`.
    pub log: String,
}

/// Everything ferry remembers about one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: u32,
    pub run_id: String,
    pub ferry_version: String,
    pub host: String,
    pub trace_id: String,
    pub root_span_id: String,
    /// The span the run's root hangs under (from `TRACEPARENT`), if any.
    pub parent_span_id: Option<String>,
    pub tracestate: Option<String>,
    pub start_unix_nano: u64,
    pub boot_ids: Vec<String>,
    pub kernel_before: String,
    pub kernel_after: Option<String>,
    pub kernel: Option<KernelChoice>,
    pub phases: Vec<PhaseRecord>,
    pub session: Option<Session>,
    /// The configuration the run uses, secrets left out.
    pub plan: serde_json::Value,
    pub handoff: Handoff,
    /// The pid of the detached worker before the reboot.
    pub worker_pid: Option<i32>,
    pub outcome: Option<Outcome>,
    /// The job's `OTEL_*`, `TRACEPARENT` and `TRACESTATE` values (headers
    /// excepted: they are secrets), for the run's later processes.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub otel: std::collections::BTreeMap<String, String>,
    /// What ferry found about the session and did for it, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<crate::notes::Note>,
}

pub const STATE_FORMAT: u32 = 1;

#[cfg(test)]
impl RunState {
    /// A minimal state for unit tests.
    pub fn example() -> RunState {
        RunState {
            format: STATE_FORMAT,
            run_id: "r".into(),
            ferry_version: "t".into(),
            host: "h".into(),
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            root_span_id: "b7ad6b7169203331".into(),
            parent_span_id: None,
            tracestate: None,
            start_unix_nano: 1,
            boot_ids: vec!["b".into()],
            kernel_before: "k".into(),
            kernel_after: None,
            kernel: None,
            phases: Vec::new(),
            session: None,
            plan: serde_json::json!({}),
            handoff: Handoff::default(),
            worker_pid: None,
            outcome: None,
            otel: Default::default(),
            notes: Vec::new(),
        }
    }
}

impl RunState {
    pub fn phase(&self, name: &str) -> Option<&PhaseRecord> {
        self.phases.iter().rev().find(|p| p.name == name)
    }

    pub fn phase_mut(&mut self, name: &str) -> Option<&mut PhaseRecord> {
        self.phases.iter_mut().rev().find(|p| p.name == name)
    }
}

/// The files of one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RunDir { root: root.into() }
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    /// Written once, last, when the run has ended: the foreground only
    /// `stat`s this path while the session may be frozen, so it never holds
    /// a file of the run dir open across a dump.
    pub fn outcome_file(&self) -> PathBuf {
        self.root.join("outcome.json")
    }
    /// Created (as an empty directory, so no fd is ever held) by the
    /// foreground once it has stopped reading the run directory; the dump
    /// waits for it.
    pub fn foreground_ack(&self) -> PathBuf {
        self.root.join("foreground-quiet")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn trace_file(&self) -> PathBuf {
        self.root.join("trace.jsonl")
    }
    pub fn bin(&self) -> PathBuf {
        self.root.join("bin").join("ferry")
    }
    pub fn firewall(&self) -> PathBuf {
        self.root.join("firewall")
    }

    pub fn create(&self) -> Result<(), StateError> {
        for dir in [
            self.root.clone(),
            self.images(),
            self.logs(),
            self.root.join("bin"),
            self.firewall(),
        ] {
            fs::create_dir_all(&dir).map_err(|source| StateError::Write {
                path: dir.clone(),
                source,
            })?;
        }
        set_mode(&self.root, 0o700).map_err(|source| StateError::Write {
            path: self.root.clone(),
            source,
        })?;
        Ok(())
    }

    pub fn load(&self) -> Result<RunState, StateError> {
        load_json(&self.state_file())
    }

    pub fn save(&self, state: &RunState) -> Result<(), StateError> {
        save_json(&self.state_file(), state)
    }

    pub fn save_outcome(&self, outcome: &Outcome) -> Result<(), StateError> {
        save_json(&self.outcome_file(), outcome)
    }

    pub fn load_outcome(&self) -> Result<Option<Outcome>, StateError> {
        let path = self.outcome_file();
        match fs::metadata(&path) {
            Ok(_) => load_json(&path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Read { path, source }),
        }
    }
}

/// A `flock` (shared or exclusive) on the lock file at `path`, created if
/// missing; `None` when another process holds a conflicting one. Released
/// when the file is dropped.
pub fn try_flock(path: &Path, exclusive: bool) -> Option<File> {
    use std::os::unix::io::AsRawFd;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own.
    (unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0).then_some(f)
}

pub fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StateError> {
    let bytes = fs::read(path).map_err(|source| StateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

pub fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes).map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Write `bytes` to `path` so that readers and power cuts see the old file or
/// the new one, whole.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = ferry_uploaders::paths::dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        // Never through a link someone left at the temporary name.
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second, longer");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["state.json".to_string()]);
    }

    #[test]
    fn write_into_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("state.json");
        let err = save_json(&path, &serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("nope/state.json"), "{err}");
    }

    #[test]
    fn damaged_state_is_a_parse_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        fs::write(run.state_file(), b"{\"format\": 1, trunc").unwrap();
        let err = run.load().unwrap_err();
        assert!(matches!(err, StateError::Parse { .. }));
        assert!(err.to_string().contains("state.json"));
    }

    #[test]
    fn missing_outcome_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunDir::new(dir.path()).load_outcome().unwrap(), None);
    }
}
