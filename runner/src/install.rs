//! `ferry install`: the service and timer that drain the spool after every
//! boot and periodically; `--uninstall` takes them away again.

use std::path::{Path, PathBuf};

use crate::config::ENV_KEYS;
use crate::exec::{CommandSpec, ExecError, Runner};
use crate::units::{SHIP_TIMER, SHIP_UNIT, ship_service, ship_timer};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "cannot write {path}: {source} (run `sudo ferry install`, or give --unit-dir a writable directory)"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Systemctl(#[from] ExecError),
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub unit_dir: PathBuf,
    /// Run `systemctl` (daemon-reload, enable/disable the timer).
    pub systemctl: bool,
    /// The binary the service runs.
    pub ferry: PathBuf,
    /// Variables written into the service.
    pub env: Vec<(String, String)>,
}

/// Whether systemd runs this machine.
pub fn systemd_running() -> bool {
    Path::new("/run/systemd/system").exists()
}

/// The configuration variables set now (test switches excepted), and
/// `FERRY_CONFIG` for `config`, so the timer's `ferry ship` sees the same
/// spool and destinations as the command that installed it.
pub fn baked_env(
    env: &dyn Fn(&str) -> Option<String>,
    config: Option<&Path>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = ENV_KEYS
        .iter()
        .filter(|(key, _)| !key.starts_with("testing."))
        .filter_map(|(_, var)| env(var).map(|v| (var.to_string(), v)))
        .collect();
    if let Some(c) = config {
        let abs = std::path::absolute(c).unwrap_or_else(|_| c.to_path_buf());
        out.push(("FERRY_CONFIG".into(), abs.display().to_string()));
    }
    out
}

fn systemctl(runner: &dyn Runner, args: &[&str]) -> Result<(), InstallError> {
    runner
        .run(&CommandSpec::new("systemctl").args(args.iter().copied()))?
        .check()?;
    Ok(())
}

/// Writes both units and enables the timer. Returns what it did, for the
/// user.
pub fn install(opts: &InstallOptions, runner: &dyn Runner) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    std::fs::create_dir_all(&opts.unit_dir).map_err(|source| InstallError::Write {
        path: opts.unit_dir.clone(),
        source,
    })?;
    for (name, text) in [
        (SHIP_UNIT, ship_service(&opts.ferry, &opts.env)),
        (SHIP_TIMER, ship_timer(crate::shipping::TIMER_INTERVAL)),
    ] {
        let path = opts.unit_dir.join(name);
        crate::state::write_atomic(&path, text.as_bytes())
            .and_then(|_| crate::state::set_mode(&path, 0o644))
            .map_err(|source| InstallError::Write {
                path: path.clone(),
                source,
            })?;
        done.push(format!("wrote {}", path.display()));
    }
    if opts.systemctl {
        systemctl(runner, &["daemon-reload"])?;
        systemctl(runner, &["enable", "--now", SHIP_TIMER])?;
        done.push(format!(
            "enabled {SHIP_TIMER}: `ferry ship` runs 30 s after every boot and {} after the last drain",
            crate::shipping::TIMER_INTERVAL
        ));
    } else {
        done.push(format!(
            "systemd is not running here: enable {SHIP_TIMER} yourself when it is"
        ));
    }
    Ok(done)
}

/// Disables the timer and removes both units (a drain running now stops;
/// the spool is crash-safe, so nothing is lost).
pub fn uninstall(opts: &InstallOptions, runner: &dyn Runner) -> Result<Vec<String>, InstallError> {
    let mut done = Vec::new();
    if opts.systemctl {
        // Either may be unknown already; what matters is that neither runs.
        let _ = systemctl(runner, &["disable", "--now", SHIP_TIMER]);
        let _ = systemctl(runner, &["stop", SHIP_UNIT]);
    }
    for name in [SHIP_TIMER, SHIP_UNIT] {
        let path = opts.unit_dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => done.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(InstallError::Remove { path, source }),
        }
    }
    if opts.systemctl {
        systemctl(runner, &["daemon-reload"])?;
    }
    if done.is_empty() {
        done.push("nothing to remove: the units were not installed".into());
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_variables_are_baked_but_not_test_switches() {
        let env = |k: &str| match k {
            "FERRY_SPOOL_DIR" => Some("/srv/spool".to_string()),
            "FERRY_TESTING_BACKEND_DOWN" => Some("dir".to_string()),
            _ => None,
        };
        let baked = baked_env(&env, Some(Path::new("/etc/ferry/other.toml")));
        assert_eq!(
            baked,
            [
                ("FERRY_SPOOL_DIR".to_string(), "/srv/spool".to_string()),
                (
                    "FERRY_CONFIG".to_string(),
                    "/etc/ferry/other.toml".to_string()
                ),
            ]
        );
    }
}
