//! Destinations: the backends a run ships its bundles to, opened by name
//! from the configuration and the credentials in the environment.
//!
//! This is the only place that knows which backends exist; `ship`, `pull`
//! and the spool only ever hold a `dyn Backend`.

use std::path::PathBuf;

use ferry_uploaders::{Backend, BackendError, DirBackend, S3Backend};

use crate::config::Config;

/// The names `ship.backends` may hold.
pub const KNOWN: &[&str] = &["dir", "s3"];

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
        "s3" => Ok(Box::new(S3Backend::from_env(&config.ship.s3, env)?)),
        other => Err(DestinationError::Unknown {
            name: other.to_string(),
            known: KNOWN.join(", "),
        }),
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
        assert!(e.contains("\"ftp\"") && e.contains("known: dir, s3"), "{e}");
        config.ship.backends.clear();
        assert!(matches!(
            open_all(&config, &|_| None),
            Err(DestinationError::None)
        ));
    }

    #[test]
    fn s3_needs_a_bucket_and_credentials_named_in_the_error() {
        let mut config = Config::default();
        config.ship.backends = vec!["s3".into()];
        let e = open_all(&config, &|_| None).err().unwrap().to_string();
        assert!(e.contains("FERRY_SHIP_S3_BUCKET"), "{e}");
        config.ship.s3.bucket = "bundles".into();
        let e = open_all(&config, &|_| None).err().unwrap().to_string();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        let env = |k: &str| (k == "AWS_ACCESS_KEY_ID").then(|| "AK".to_string());
        let e = open_all(&config, &env).err().unwrap().to_string();
        assert!(e.contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let env = |k: &str| k.starts_with("AWS_").then(|| "x".to_string());
        let all = open_all(&config, &env).unwrap();
        assert_eq!(all[0].name(), "s3");
    }
}
