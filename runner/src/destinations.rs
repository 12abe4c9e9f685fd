//! Destinations: the backends a run ships its bundles to, opened by name
//! from the configuration and the credentials in the environment.
//!
//! This is the only place that knows which backends exist; `ship`, `pull`
//! and the spool only ever hold a `dyn Backend`.

use std::path::PathBuf;

use ferry_uploaders::{
    Backend, BackendError, DirBackend, DropboxBackend, DropboxCredentials, GithubBackend,
};

use crate::config::Config;

/// The names `ship.backends` may hold.
pub const KNOWN: &[&str] = &["dir", "dropbox", "github"];

/// Why a destination could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DestinationError {
    #[error(
        "unknown backend {name:?} in ship.backends (FERRY_SHIP_BACKENDS or --backend); known: {known}"
    )]
    Unknown { name: String, known: String },
    #[error("ship.backends is empty: name at least one backend, e.g. `backends = [\"dir\"]`")]
    None,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Where the environment a backend reads comes from: the process's own
/// variables, or what a run saved for its later units.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Opens the backend called `name` with `config`'s settings and the
/// credentials `env` holds. Nothing is sent over the network here.
pub fn open(
    name: &str,
    config: &Config,
    env: Env<'_>,
) -> Result<Box<dyn Backend>, DestinationError> {
    match name {
        "dir" => Ok(Box::new(DirBackend::new(dir_root(config))?)),
        "dropbox" => Ok(Box::new(DropboxBackend::new(
            config.ship.dropbox.clone(),
            DropboxCredentials::from_env(env)?,
        )?)),
        "github" => Ok(Box::new(GithubBackend::from_env(&config.ship.github, env)?)),
        other => Err(unknown(other)),
    }
}

/// Whether backend `name` can take a bundle with the settings and
/// credentials at hand, decided without sending or creating anything.
/// Preflight asks it before the trip, so a missing token is found before
/// the session is frozen, not after the reboot.
pub fn check_upload(name: &str, config: &Config, env: Env<'_>) -> Result<(), DestinationError> {
    match name {
        // Opening it creates its root: the ship does that, and reports.
        "dir" => Ok(()),
        // Credentials present and settings valid; nothing is sent.
        "dropbox" => {
            DropboxBackend::new(
                config.ship.dropbox.clone(),
                DropboxCredentials::from_env(env)?,
            )?;
            Ok(())
        }
        "github" => Ok(GithubBackend::from_env(&config.ship.github, env)?.check_upload()?),
        other => Err(unknown(other)),
    }
}

fn unknown(name: &str) -> DestinationError {
    DestinationError::Unknown {
        name: name.to_string(),
        known: KNOWN.join(", "),
    }
}

/// Every configured destination, in the configured order; the first one
/// that cannot be opened is the error.
pub fn open_all(config: &Config, env: Env<'_>) -> Result<Vec<Box<dyn Backend>>, DestinationError> {
    if config.ship.backends.is_empty() {
        return Err(DestinationError::None);
    }
    config
        .ship
        .backends
        .iter()
        .map(|name| open(name, config, env))
        .collect()
}

fn dir_root(config: &Config) -> PathBuf {
    config.ship.dir.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropbox_needs_credentials_and_a_valid_config() {
        let config = Config::default();
        let e = open("dropbox", &config, &|_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("DROPBOX_REFRESH_TOKEN") && e.contains("DROPBOX_TOKEN"),
            "{e}"
        );
        let token = |k: &str| (k == "DROPBOX_TOKEN").then(|| "sl.secret-token".to_string());
        let b = open("dropbox", &config, &token).unwrap();
        assert_eq!(b.name(), "dropbox");
        let mut bad = Config::default();
        bad.ship.dropbox.chunk_mib = 7;
        let e = open("dropbox", &bad, &token).err().unwrap().to_string();
        assert!(
            e.contains("ship.dropbox.chunk_mib") && !e.contains("sl.secret-token"),
            "{e}"
        );
    }

    #[test]
    fn dir_is_the_default_and_unknown_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.ship.dir = tmp.path().join("bundles");
        let all = open_all(&config, &|_| None).unwrap();
        assert_eq!(
            all.iter().map(|b| b.name().to_string()).collect::<Vec<_>>(),
            ["dir"]
        );
        let e = open("ftp", &config, &|_| None).err().unwrap().to_string();
        assert!(
            e.contains("\"ftp\"") && e.contains("known: dir, dropbox, github"),
            "{e}"
        );
        config.ship.backends.clear();
        assert!(matches!(
            open_all(&config, &|_| None),
            Err(DestinationError::None)
        ));
    }

    #[test]
    fn upload_checks_need_the_runtime_inside_actions() {
        let mut config = Config::default();
        assert!(check_upload("dir", &config, &|_| None).is_ok());
        assert!(check_upload("ftp", &config, &|_| None).is_err());
        config.ship.github.repository = "o/r".into();
        let pull_only = |k: &str| (k == "GITHUB_TOKEN").then(|| "ghp_x".to_string());
        let e = check_upload("github", &config, &pull_only)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ACTIONS_RUNTIME_TOKEN and ACTIONS_RESULTS_URL not set")
                && e.contains("actions/github-script"),
            "{e}"
        );
    }

    #[test]
    fn github_without_credentials_names_them() {
        let e = open("github", &Config::default(), &|_| None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("github backend:")
                && e.contains("ACTIONS_RUNTIME_TOKEN")
                && e.contains("GITHUB_TOKEN"),
            "{e}"
        );
        let b = open("github", &Config::default(), &|k| {
            (k == "GITHUB_TOKEN" || k == "GITHUB_REPOSITORY").then(|| "o/r".to_string())
        })
        .unwrap();
        assert_eq!(b.name(), "github");
    }
}
