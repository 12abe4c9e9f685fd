//! The plan: `ferry.toml`, then `FERRY_*` environment variables, then flags.
//!
//! Every key has one environment variable (listed in [`ENV_KEYS`]); secrets
//! never live in the file or in argv, only in the environment.

use std::path::{Path, PathBuf};

use ferry_uploaders::DropboxConfig;
use ferry_uploaders::GithubConfig;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/ferry/ferry.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read config {path}: {source} (fix the path given with --config or FERRY_CONFIG, or create the file)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {message} (see docs/configuration.md for the keys)")]
    Invalid { path: String, message: String },
    #[error("environment variable {var}={value:?} is not valid for {key}: {message}")]
    Env {
        var: String,
        key: String,
        value: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where runs live: `<state_dir>/runs/<run-id>/`.
    pub state_dir: PathBuf,
    pub upgrade: UpgradeConfig,
    pub kernel: KernelConfig,
    pub criu: CriuConfig,
    pub ship: ShipConfig,
    pub spool: SpoolConfig,
    pub testing: TestingConfig,
}

/// Switches that break a trip on purpose, for ferry's own tests.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TestingConfig {
    /// Dump without the `--external` entries `locate` found, so a session
    /// holding logind's FIFO fails to dump (lab trap F1).
    pub skip_externals: bool,
    /// Call the trip off right after a successful dump, so the session is
    /// restored in place on the old kernel.
    pub fail_after_dump: bool,
    /// Destinations whose every put fails as unavailable (a store that
    /// stays down), so bundles wait in the spool.
    pub backend_down: Vec<String>,
    /// A shell command `ferry resume` runs just before `criu restore`, to
    /// break a restore on purpose at a moment a test cannot catch from
    /// outside (the in-place restore starts right after the dump).
    pub before_restore: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    pub enabled: bool,
    /// Run through `sh -c`; empty means the default apt upgrade.
    pub command: String,
    /// Switch the apt sources to this release before upgrading.
    pub release: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KernelConfig {
    /// A kernel image to boot instead of the newest in /boot.
    pub path: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// Boot the running kernel again when nothing newer is installed (tests).
    pub allow_same: bool,
    /// Kernel command line; empty reuses the running one.
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CriuConfig {
    pub path: PathBuf,
    /// Free space the images need, in MiB, beyond the session's memory.
    pub min_free_mib: u64,
    /// Seconds `criu restore` may take before the restore counts as failed.
    pub restore_timeout_secs: u64,
    /// Largest file deleted while in use (an upgraded library, a replaced
    /// executable) criu may copy into the images, in MiB.
    pub ghost_limit_mib: u64,
    /// Largest file on tmpfs ferry saves across the reboot, in MiB.
    pub tmpfs_copy_max_mib: u64,
    /// Restore attempts (the first included) before ferry gives up and
    /// removes the lock rules, so the client is reset instead of waiting.
    pub restore_attempts: u32,
    /// After a failed restore, how long `ferry resume --retry` may still
    /// bring the session back before ferry gives up, in seconds.
    pub retry_window_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShipConfig {
    /// Where bundles go, in order: `dir`, `s3`, `dropbox`, `github`.
    pub backends: Vec<String>,
    /// The `dir` backend's directory.
    pub dir: PathBuf,
    /// Largest size of one file in a bundle; bigger logs keep head and tail.
    pub max_file_mib: u64,
    /// The `github` backend (GitHub Actions artifacts).
    pub github: GithubConfig,
    /// The `dropbox` backend (credentials come from the environment only).
    pub dropbox: DropboxConfig,
    /// The `s3` backend (see docs/backends/s3.md).
    pub s3: ferry_uploaders::S3Config,
    /// How long the end of a run may spend retrying one destination before
    /// the bundle is left in the spool for `ferry ship` (the waiting CI job
    /// is held up that long at most).
    pub retry_budget_secs: u64,
}

/// The spool: where bundles wait until every destination has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// On persistent storage (not tmpfs): it must outlive reboots.
    pub dir: PathBuf,
    /// Size cap; past it entries are evicted (see docs/spool.md).
    pub max_mib: u64,
    /// Entry count cap.
    pub max_entries: u64,
    /// Entries uploaded at once by `ferry ship`.
    pub concurrency: u64,
    /// How long `ferry ship` may retry one put (backoff with full jitter)
    /// before it leaves the entry for the next drain.
    pub retry_budget_secs: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: PathBuf::from(ferry_uploaders::spool::DEFAULT_DIR),
            max_mib: 2048,
            max_entries: 1000,
            concurrency: 2,
            retry_budget_secs: 300,
        }
    }
}

impl SpoolConfig {
    pub fn limits(&self) -> ferry_uploaders::spool::Limits {
        ferry_uploaders::spool::Limits {
            max_bytes: self.max_mib.saturating_mul(1 << 20),
            max_entries: usize::try_from(self.max_entries).unwrap_or(usize::MAX),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            state_dir: PathBuf::from("/var/lib/ferry"),
            upgrade: UpgradeConfig::default(),
            kernel: KernelConfig::default(),
            criu: CriuConfig::default(),
            ship: ShipConfig::default(),
            spool: SpoolConfig::default(),
            testing: TestingConfig::default(),
        }
    }
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig {
            enabled: true,
            command: String::new(),
            release: String::new(),
        }
    }
}

impl Default for CriuConfig {
    fn default() -> Self {
        CriuConfig {
            path: PathBuf::from("criu"),
            min_free_mib: 256,
            restore_timeout_secs: 300,
            ghost_limit_mib: 1024,
            tmpfs_copy_max_mib: 256,
            restore_attempts: 3,
            retry_window_secs: 1800,
        }
    }
}

impl Default for ShipConfig {
    fn default() -> Self {
        ShipConfig {
            backends: vec!["dir".into()],
            dir: PathBuf::from("/var/lib/ferry/bundles"),
            max_file_mib: 64,
            github: GithubConfig::default(),
            dropbox: DropboxConfig::default(),
            retry_budget_secs: 60,
            s3: ferry_uploaders::S3Config::default(),
        }
    }
}

/// Every config key and the environment variable that overrides it.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("state_dir", "FERRY_STATE_DIR"),
    ("upgrade.enabled", "FERRY_UPGRADE_ENABLED"),
    ("upgrade.command", "FERRY_UPGRADE_COMMAND"),
    ("upgrade.release", "FERRY_UPGRADE_RELEASE"),
    ("kernel.path", "FERRY_KERNEL_PATH"),
    ("kernel.initrd", "FERRY_KERNEL_INITRD"),
    ("kernel.allow_same", "FERRY_KERNEL_ALLOW_SAME"),
    ("kernel.cmdline", "FERRY_KERNEL_CMDLINE"),
    ("criu.path", "FERRY_CRIU_PATH"),
    ("criu.min_free_mib", "FERRY_CRIU_MIN_FREE_MIB"),
    (
        "criu.restore_timeout_secs",
        "FERRY_CRIU_RESTORE_TIMEOUT_SECS",
    ),
    ("criu.ghost_limit_mib", "FERRY_CRIU_GHOST_LIMIT_MIB"),
    ("criu.tmpfs_copy_max_mib", "FERRY_CRIU_TMPFS_COPY_MAX_MIB"),
    ("criu.restore_attempts", "FERRY_CRIU_RESTORE_ATTEMPTS"),
    ("criu.retry_window_secs", "FERRY_CRIU_RETRY_WINDOW_SECS"),
    ("ship.backends", "FERRY_SHIP_BACKENDS"),
    ("ship.dir", "FERRY_SHIP_DIR"),
    ("ship.max_file_mib", "FERRY_SHIP_MAX_FILE_MIB"),
    ("ship.github.name_prefix", "FERRY_SHIP_GITHUB_NAME_PREFIX"),
    (
        "ship.github.retention_days",
        "FERRY_SHIP_GITHUB_RETENTION_DAYS",
    ),
    ("ship.github.repository", "FERRY_SHIP_GITHUB_REPOSITORY"),
    ("ship.github.api_url", "FERRY_SHIP_GITHUB_API_URL"),
    ("ship.github.block_kib", "FERRY_SHIP_GITHUB_BLOCK_KIB"),
    (
        "ship.github.upload_concurrency",
        "FERRY_SHIP_GITHUB_UPLOAD_CONCURRENCY",
    ),
    ("ship.dropbox.folder", "FERRY_SHIP_DROPBOX_FOLDER"),
    (
        "ship.dropbox.upload_cutoff_mib",
        "FERRY_SHIP_DROPBOX_UPLOAD_CUTOFF_MIB",
    ),
    ("ship.dropbox.chunk_mib", "FERRY_SHIP_DROPBOX_CHUNK_MIB"),
    ("ship.dropbox.share", "FERRY_SHIP_DROPBOX_SHARE"),
    ("ship.dropbox.api_url", "FERRY_SHIP_DROPBOX_API_URL"),
    ("ship.dropbox.content_url", "FERRY_SHIP_DROPBOX_CONTENT_URL"),
    (
        "ship.dropbox.timeout_secs",
        "FERRY_SHIP_DROPBOX_TIMEOUT_SECS",
    ),
    ("ship.retry_budget_secs", "FERRY_SHIP_RETRY_BUDGET_SECS"),
    ("spool.dir", "FERRY_SPOOL_DIR"),
    ("spool.max_mib", "FERRY_SPOOL_MAX_MIB"),
    ("spool.max_entries", "FERRY_SPOOL_MAX_ENTRIES"),
    ("spool.concurrency", "FERRY_SPOOL_CONCURRENCY"),
    ("spool.retry_budget_secs", "FERRY_SPOOL_RETRY_BUDGET_SECS"),
    ("ship.s3.endpoint", "FERRY_SHIP_S3_ENDPOINT"),
    ("ship.s3.region", "FERRY_SHIP_S3_REGION"),
    ("ship.s3.bucket", "FERRY_SHIP_S3_BUCKET"),
    ("ship.s3.prefix", "FERRY_SHIP_S3_PREFIX"),
    ("ship.s3.path_style", "FERRY_SHIP_S3_PATH_STYLE"),
    (
        "ship.s3.multipart_threshold_mib",
        "FERRY_SHIP_S3_MULTIPART_THRESHOLD_MIB",
    ),
    ("ship.s3.part_size_mib", "FERRY_SHIP_S3_PART_SIZE_MIB"),
    ("ship.s3.concurrency", "FERRY_SHIP_S3_CONCURRENCY"),
    ("ship.s3.timeout_secs", "FERRY_SHIP_S3_TIMEOUT_SECS"),
    (
        "ship.s3.share_expiry_secs",
        "FERRY_SHIP_S3_SHARE_EXPIRY_SECS",
    ),
    ("ship.s3.list_page_keys", "FERRY_SHIP_S3_LIST_PAGE_KEYS"),
    ("testing.skip_externals", "FERRY_TESTING_SKIP_EXTERNALS"),
    ("testing.fail_after_dump", "FERRY_TESTING_FAIL_AFTER_DUMP"),
    ("testing.backend_down", "FERRY_TESTING_BACKEND_DOWN"),
    ("testing.before_restore", "FERRY_TESTING_BEFORE_RESTORE"),
];

/// Environment variables whose values are secrets: masked in every output
/// and redacted from bundles.
pub const SECRET_VARS: &[&str] = &[
    "DROPBOX_TOKEN",
    "DROPBOX_REFRESH_TOKEN",
    "DROPBOX_APP_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "ACTIONS_RUNTIME_TOKEN",
    "GITHUB_TOKEN",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
];

/// Environment variables the backends read that are not secrets but must
/// reach the units that run after the reboot (they inherit nothing from the
/// job): kept with the secrets in the run's 0600 file, never masked.
pub const BACKEND_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "DROPBOX_APP_KEY",
    "ACTIONS_RESULTS_URL",
    "GITHUB_REPOSITORY",
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_JOB",
    "GITHUB_API_URL",
    "GITHUB_ACTIONS",
    "GITHUB_SERVER_URL",
    "GITHUB_RETENTION_DAYS",
];

impl Config {
    /// Load the file (when `path` is given it must exist; the default path
    /// may be absent), then apply the environment.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match path {
            Some(p) => (
                Some(
                    std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                        path: p.to_path_buf(),
                        source,
                    })?,
                ),
                p.display().to_string(),
            ),
            None => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                match std::fs::read_to_string(p) {
                    Ok(t) => (Some(t), p.display().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        (None, "built-in defaults".into())
                    }
                    Err(source) => {
                        return Err(ConfigError::Read {
                            path: p.to_path_buf(),
                            source,
                        });
                    }
                }
            }
        };
        let mut value: toml::Table = match &text {
            // Read as a whole first: toml's own error names the line, the
            // column and the key, which a merged table no longer knows.
            Some(t) => {
                toml::from_str::<Config>(t).map_err(|e| ConfigError::Invalid {
                    path: origin.clone(),
                    message: file_error(t, &e),
                })?;
                t.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Invalid {
                        path: origin.clone(),
                        message: file_error(t, &e),
                    })?
            }
            None => toml::Table::new(),
        };
        let mut overrides = Vec::new();
        for (key, var) in ENV_KEYS {
            // Empty means unset, as for FERRY_CONFIG: CI templates set
            // every variable, and `FERRY_SPOOL_DIR=` must not become the
            // current directory.
            if let Some(raw) = env(var).filter(|v| !v.trim().is_empty()) {
                let default = toml::Table::try_from(Config::default())
                    .ok()
                    .and_then(|t| lookup(&t, key).cloned());
                let env_error = |message: String| ConfigError::Env {
                    var: var.to_string(),
                    key: key.to_string(),
                    value: raw.clone(),
                    message,
                };
                let parsed = parse_env_value(&raw, default.as_ref()).map_err(env_error)?;
                insert(&mut value, key, parsed);
                // One variable at a time, so a value out of the type's
                // range (a negative count) is blamed on its variable.
                Config::deserialize(toml::Value::Table(value.clone()))
                    .map_err(|e| env_error(without_strings(e.message())))?;
                overrides.push(*var);
            }
        }
        let config =
            Config::deserialize(toml::Value::Table(value)).map_err(|e| ConfigError::Invalid {
                path: origin.clone(),
                message: e.message().to_string(),
            })?;
        config.check().map_err(|message| ConfigError::Invalid {
            path: if overrides.is_empty() {
                origin
            } else {
                format!(
                    "{origin} with {} from the environment",
                    overrides.join(", ")
                )
            },
            message,
        })?;
        Ok(config)
    }

    /// Values the types allow but ferry cannot use; each message names the
    /// key, its variable and what to set.
    fn check(&self) -> Result<(), String> {
        for (key, var, path) in [
            ("state_dir", "FERRY_STATE_DIR", &self.state_dir),
            ("spool.dir", "FERRY_SPOOL_DIR", &self.spool.dir),
            ("ship.dir", "FERRY_SHIP_DIR", &self.ship.dir),
        ] {
            if path.to_str().is_some_and(|p| p.trim().is_empty()) {
                return Err(format!(
                    "{key} is empty ({var}); give it a directory, or leave it out for its default"
                ));
            }
        }
        if self.ship.backends.is_empty() {
            return Err(
                "ship.backends is empty (FERRY_SHIP_BACKENDS): name at least one destination, e.g. [\"dir\"]"
                    .into(),
            );
        }
        for (i, b) in self.ship.backends.iter().enumerate() {
            if !crate::destinations::KNOWN.contains(&b.as_str()) {
                return Err(format!(
                    "ship.backends names {b:?}, which is not a backend (FERRY_SHIP_BACKENDS); use {}",
                    crate::destinations::KNOWN.join(", ")
                ));
            }
            if self.ship.backends[..i].contains(b) {
                return Err(format!(
                    "ship.backends names {b:?} twice (FERRY_SHIP_BACKENDS); name each destination once"
                ));
            }
        }
        if self.spool.max_mib == 0 || self.spool.max_entries == 0 {
            return Err(
                "spool.max_mib and spool.max_entries must be at least 1 (FERRY_SPOOL_MAX_MIB, FERRY_SPOOL_MAX_ENTRIES)"
                    .into(),
            );
        }
        if !(1..=16).contains(&self.spool.concurrency) {
            return Err(format!(
                "spool.concurrency is {}; use 1 to 16 (FERRY_SPOOL_CONCURRENCY)",
                self.spool.concurrency
            ));
        }
        if self.criu.restore_attempts == 0 {
            return Err(
                "criu.restore_attempts is 0; use at least 1, the first attempt counts (FERRY_CRIU_RESTORE_ATTEMPTS)"
                    .into(),
            );
        }
        Ok(())
    }

    /// The effective config as TOML, for `ferry config check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.state_dir.join("runs")
    }
}

/// Where in the file and what: `line 4, column 20, at restore_attempts:
/// invalid value …`. Not toml's own rendering, which quotes the whole line:
/// a credential put in the file by mistake would reach the CI log.
fn file_error(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else {
        return e.message().to_string();
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    // The key of a `key = value` line names the setting; the value stays out.
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'));
    let message = without_strings(e.message());
    match key {
        Some(k) => format!("line {line_no}, column {column}, at {k}: {message}"),
        None => format!("line {line_no}, column {column}: {message}"),
    }
}

/// serde quotes a string value it could not use (`invalid type: string
/// "…", expected u64`); a string is where a secret would be.
fn without_strings(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i]);
        out.push_str("a string");
        let after = &rest[i + "string \"".len()..];
        rest = match after.rfind("\", expected") {
            Some(end) => &after[end + 1..],
            None => "",
        };
    }
    out.push_str(rest);
    // Rust's type names mean nothing to a person editing a config file.
    for (rust, plain) in [
        ("expected u32", "expected a whole number of 0 or more"),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected i64", "expected a whole number"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let first = parts.next()?;
    let mut cur = table.get(first)?;
    for p in parts {
        cur = cur.as_table()?.get(p)?;
    }
    Some(cur)
}

fn insert(table: &mut toml::Table, dotted: &str, value: toml::Value) {
    let parts: Vec<&str> = dotted.split('.').collect();
    let mut cur = table;
    for p in &parts[..parts.len() - 1] {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => cur = t,
            _ => return,
        }
    }
    if let Some(last) = parts.last() {
        cur.insert(last.to_string(), value);
    }
}

/// Read an environment value with the type of the key's default (a list
/// is comma-separated: `FERRY_SHIP_BACKENDS=dir,s3`).
fn parse_env_value(raw: &str, default: Option<&toml::Value>) -> Result<toml::Value, String> {
    match default {
        Some(toml::Value::Array(_)) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        )),
        Some(toml::Value::Boolean(_)) => match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(toml::Value::Boolean(true)),
            "0" | "false" | "no" | "off" => Ok(toml::Value::Boolean(false)),
            _ => Err("expected true or false".into()),
        },
        Some(toml::Value::Integer(_)) => {
            let t = raw.trim();
            t.parse::<i64>().map(toml::Value::Integer).map_err(|_| {
                let digits = t.strip_prefix('-').unwrap_or(t);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    format!("a whole number, but too large (at most {})", i64::MAX)
                } else {
                    "expected a whole number".into()
                }
            })
        }
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "").unwrap();
        let cfg = Config::load(Some(&path), &env_of(&[])).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn env_overrides_file_with_typed_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "state_dir = \"/srv/f\"\n[upgrade]\nenabled = true\n").unwrap();
        let cfg = Config::load(
            Some(&path),
            &env_of(&[
                ("FERRY_UPGRADE_ENABLED", "no"),
                ("FERRY_CRIU_MIN_FREE_MIB", "12"),
                ("FERRY_KERNEL_PATH", "/boot/vmlinuz-x"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/srv/f"));
        assert!(!cfg.upgrade.enabled);
        assert_eq!(cfg.criu.min_free_mib, 12);
        assert_eq!(cfg.kernel.path, Some(PathBuf::from("/boot/vmlinuz-x")));
    }

    #[test]
    fn backends_list_from_env_is_comma_separated() {
        let cfg = Config::load(
            None,
            &env_of(&[("FERRY_SHIP_BACKENDS", "dir, s3,,dropbox")]),
        )
        .unwrap();
        assert_eq!(cfg.ship.backends, ["dir", "s3", "dropbox"]);
        assert_eq!(Config::default().ship.backends, ["dir"]);
    }

    #[test]
    fn bad_env_value_names_variable_and_key() {
        let err = Config::load(None, &env_of(&[("FERRY_CRIU_MIN_FREE_MIB", "lots")])).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("FERRY_CRIU_MIN_FREE_MIB") && msg.contains("criu.min_free_mib"),
            "{msg}"
        );
    }

    /// Regression: these loaded fine; an unknown name failed only when a
    /// bundle was waiting to ship, no restore attempt at all was made.
    #[test]
    fn values_ferry_cannot_use_are_refused_at_load() {
        let cases = [
            (
                ("FERRY_SHIP_BACKENDS", "dir,ftp"),
                &["\"ftp\"", "dir, dropbox, github, s3"][..],
            ),
            (
                ("FERRY_CRIU_RESTORE_ATTEMPTS", "0"),
                &["criu.restore_attempts", "at least 1"][..],
            ),
        ];
        for (var, words) in cases {
            let msg = Config::load(None, &env_of(&[var])).unwrap_err().to_string();
            for w in words {
                assert!(msg.contains(w), "{var:?}: {msg}");
            }
            assert!(
                msg.contains(&format!("with {} from the environment", var.0)),
                "{msg}"
            );
        }
    }

    /// Regression: `FERRY_SPOOL_DIR=` made the spool in the current
    /// directory, `ship.dir = ""` was a ready destination, and an empty
    /// destination list was accepted until a bundle had nowhere to go.
    #[test]
    fn empty_variables_mean_unset_and_empty_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "").unwrap();
        let cfg = Config::load(
            Some(&path),
            &env_of(&[
                ("FERRY_SPOOL_DIR", ""),
                ("FERRY_SHIP_BACKENDS", " "),
                ("FERRY_UPGRADE_ENABLED", ""),
            ]),
        )
        .unwrap();
        assert_eq!(cfg, Config::default());
        for (text, words) in [
            ("[ship]\ndir = \"  \"\n", "ship.dir is empty"),
            ("[ship]\ndir = \"\"\n", "ship.dir is empty"),
            ("[spool]\ndir = \"\"\n", "spool.dir is empty"),
            ("state_dir = \"\"\n", "state_dir is empty"),
            ("[ship]\nbackends = []\n", "ship.backends is empty"),
        ] {
            std::fs::write(&path, text).unwrap();
            let msg = Config::load(Some(&path), &env_of(&[]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(words), "{text}: {msg}");
        }
    }

    /// Regression: a negative count in a variable was reported as an error
    /// of the config file, without the variable's name.
    #[test]
    fn value_out_of_its_types_range_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "").unwrap();
        let msg = Config::load(
            Some(&path),
            &env_of(&[("FERRY_CRIU_RESTORE_ATTEMPTS", "-1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("FERRY_CRIU_RESTORE_ATTEMPTS=\"-1\"")
                && msg.contains("criu.restore_attempts"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "[ship]\nbackends = [\"dir\"]\n[criu]\nrestore_attempts = -2\n",
        )
        .unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("ferry.toml") && msg.contains("line 4, column 20, at restore_attempts:"),
            "{msg}"
        );
    }

    /// Regression: toml's rendering of an error quotes the whole line, so
    /// a secret set in the file under a wrong key reached the CI log.
    #[test]
    fn a_file_error_never_quotes_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "[ship.s3]\nbucket = \"b\"\nsecret_access_key = \"wJalrXUtnFEMI-K7MDENG\"\n",
        )
        .unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 3, column 1") && msg.contains("secret_access_key"),
            "{msg}"
        );
        assert!(!msg.contains("wJalr"), "{msg}");
        std::fs::write(&path, "[ship]\ndir = \"/x\" extra\n").unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("line 2") && !msg.contains("extra"), "{msg}");
        // A string where a number belongs is named, not quoted.
        std::fs::write(
            &path,
            "[ship.s3]\ntimeout_secs = \"wJalrXUtnFEMI-K7MDENG\"\n",
        )
        .unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(
                "at timeout_secs: invalid type: a string, expected a whole number of 0 or more"
            ) && !msg.contains("wJalr"),
            "{msg}"
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(&path, "[criu]\npaht = \"x\"\n").unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("ferry.toml") && msg.contains("paht"), "{msg}");
    }

    #[test]
    fn spool_keys_from_env_and_bad_values_named() {
        let cfg = Config::load(
            None,
            &env_of(&[
                ("FERRY_SPOOL_DIR", "/srv/spool"),
                ("FERRY_SPOOL_MAX_MIB", "10"),
                ("FERRY_TESTING_BACKEND_DOWN", "dir"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.spool.dir, PathBuf::from("/srv/spool"));
        assert_eq!(cfg.spool.limits().max_bytes, 10 << 20);
        assert_eq!(cfg.testing.backend_down, ["dir"]);
        for (var, value, needle) in [
            ("FERRY_SPOOL_CONCURRENCY", "0", "spool.concurrency"),
            ("FERRY_SPOOL_MAX_MIB", "0", "spool.max_mib"),
            ("FERRY_SHIP_BACKENDS", "dir,dir", "twice"),
            // Regression: a number too large read "expected a whole number".
            (
                "FERRY_SHIP_MAX_FILE_MIB",
                "18446744073709551615",
                "a whole number, but too large (at most 9223372036854775807)",
            ),
            ("FERRY_SHIP_MAX_FILE_MIB", "12x", "expected a whole number"),
        ] {
            let msg = Config::load(None, &env_of(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn missing_explicit_config_is_an_error() {
        let msg = Config::load(Some(Path::new("/nonexistent/ferry.toml")), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("/nonexistent/ferry.toml"), "{msg}");
    }

    #[test]
    fn github_keys_come_from_the_environment() {
        let cfg = Config::load(
            None,
            &env_of(&[
                ("FERRY_SHIP_GITHUB_RETENTION_DAYS", "14"),
                ("FERRY_SHIP_GITHUB_REPOSITORY", "o/r"),
                ("FERRY_SHIP_GITHUB_NAME_PREFIX", "logs-"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.ship.github.retention_days, 14);
        assert_eq!(cfg.ship.github.repository, "o/r");
        assert_eq!(cfg.ship.github.name_prefix, "logs-");
        let msg = Config::load(
            None,
            &env_of(&[("FERRY_SHIP_GITHUB_RETENTION_DAYS", "a week")]),
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("ship.github.retention_days"), "{msg}");
    }

    /// The units after the reboot see only what the run kept: every
    /// variable the github backend reads must be kept, its secrets as
    /// secrets.
    #[test]
    fn the_github_backends_variables_are_kept_for_later_units() {
        use ferry_uploaders::backends::github::{ENV_VARS, SECRET_ENV_VARS};
        for v in ENV_VARS {
            assert!(
                SECRET_VARS.contains(v) || BACKEND_VARS.contains(v),
                "{v} is neither in SECRET_VARS nor BACKEND_VARS"
            );
        }
        for v in SECRET_ENV_VARS {
            assert!(SECRET_VARS.contains(v), "{v} must be masked");
        }
    }

    #[test]
    fn s3_keys_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "[ship]\nbackends = [\"s3\"]\n[ship.s3]\nbucket = \"b\"\npath_style = false\npart_size_mib = 8\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            &env_of(&[
                ("FERRY_SHIP_S3_ENDPOINT", "http://127.0.0.1:9000"),
                ("FERRY_SHIP_S3_PATH_STYLE", "true"),
                ("FERRY_SHIP_S3_CONCURRENCY", "2"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.ship.s3.bucket, "b");
        assert_eq!(cfg.ship.s3.endpoint, "http://127.0.0.1:9000");
        assert_eq!(
            cfg.ship.s3.path_style,
            ferry_uploaders::backends::PathStyle::Always
        );
        assert_eq!(cfg.ship.s3.part_size_mib, 8);
        assert_eq!(cfg.ship.s3.concurrency, 2);
        let bad = Config::load(None, &env_of(&[("FERRY_SHIP_S3_PATH_STYLE", "sometimes")]))
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("path_style") || bad.contains("sometimes"),
            "{bad}"
        );
        std::fs::write(&path, "[ship.s3]\nbuckett = \"b\"\n").unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("buckett"), "{msg}");
    }

    #[test]
    fn dropbox_settings_from_file_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ferry.toml");
        std::fs::write(
            &path,
            "[ship]\nbackends = [\"dropbox\"]\n[ship.dropbox]\nfolder = \"/ci\"\nchunk_mib = 8\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            &env_of(&[
                ("FERRY_SHIP_DROPBOX_SHARE", "no"),
                ("FERRY_SHIP_DROPBOX_API_URL", "http://127.0.0.1:1"),
                ("FERRY_SHIP_DROPBOX_UPLOAD_CUTOFF_MIB", "4"),
            ]),
        )
        .unwrap();
        let d = &cfg.ship.dropbox;
        assert_eq!(
            (d.folder.as_str(), d.chunk_mib, d.upload_cutoff_mib),
            ("/ci", 8, 4)
        );
        assert!(!d.share);
        assert_eq!(d.api_url, "http://127.0.0.1:1");
        assert_eq!(d.content_url, DropboxConfig::default().content_url);
        std::fs::write(&path, "[ship.dropbox]\nchunk = 8\n").unwrap();
        let msg = Config::load(Some(&path), &env_of(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("chunk"), "{msg}");
    }

    #[test]
    fn every_env_key_names_a_real_key() {
        let table = toml::Table::try_from(Config::default()).unwrap();
        for (key, _) in ENV_KEYS {
            // Option keys are absent from the rendered defaults; their parent must exist.
            let parent = key.rsplit_once('.').map(|(p, _)| p);
            assert!(
                lookup(&table, key).is_some()
                    || parent.is_some_and(|p| lookup(&table, p).is_some()),
                "{key}"
            );
        }
    }
}
