//! Destinations: the backends a run ships its bundles to, opened by name
//! from the configuration and the credentials in the environment.
//!
//! This is the only place that knows which backends exist; `ship`, `pull`
//! and the spool only ever hold a `dyn Backend`.

use std::path::PathBuf;
use std::sync::Arc;

use ferry_uploaders::backends::ErrorKind;
use ferry_uploaders::backends::github::Tuning as GithubTuning;
use ferry_uploaders::spool::EntryMeta;
use ferry_uploaders::{
    Backend, BackendError, DirBackend, DropboxBackend, DropboxCredentials, Faulty, GithubBackend,
    RetryPolicy, S3Backend,
};

use crate::config::Config;
use crate::secrets::Secrets;
use crate::state::RunDir;

/// The names `ship.backends` may hold.
pub const KNOWN: &[&str] = &["dir", "dropbox", "github", "s3"];

/// Whether backend `name` can hand a stored page to a browser, so a run's
/// report.html goes there beside its bundle: a directory is opened as a
/// file, S3 serves the object with its HTML type through a presigned link.
/// Dropbox does not (its shared links never render HTML, by Dropbox's own
/// rule: the viewer shows the source), nor GitHub (an artifact only ever
/// downloads); there a page would only clutter the folder or the run.
pub fn serves_pages(name: &str) -> bool {
    matches!(name, "dir" | "s3")
}

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
/// credentials `env` holds, retrying with the default policy. Nothing is
/// sent over the network here.
pub fn open(
    name: &str,
    config: &Config,
    env: Env<'_>,
) -> Result<Box<dyn Backend>, DestinationError> {
    open_with_retry(name, config, env, RetryPolicy::default())
}

/// [`open`], the remote backends retrying each of their requests under
/// `retry` (its budget bounds how long one put may take).
pub fn open_with_retry(
    name: &str,
    config: &Config,
    env: Env<'_>,
    retry: RetryPolicy,
) -> Result<Box<dyn Backend>, DestinationError> {
    let backend: Box<dyn Backend> = match name {
        "dir" => Box::new(DirBackend::new(dir_root(config))?),
        "dropbox" => Box::new(
            DropboxBackend::new(
                config.ship.dropbox.clone(),
                DropboxCredentials::from_env(env)?,
            )?
            .with_retry(retry),
        ),
        "github" => Box::new(GithubBackend::with_tuning(
            &config.ship.github,
            env,
            GithubTuning {
                retry,
                ..GithubTuning::default()
            },
        )?),
        "s3" => Box::new(S3Backend::from_env(&config.ship.s3, env)?.with_retry(retry)),
        other => return Err(unknown(other)),
    };
    if config.testing.backend_down.iter().any(|d| d == name) {
        tracing::warn!("testing.backend_down: every put to {name} fails on purpose");
        return Ok(Box::new(Faulty::down(backend)));
    }
    Ok(backend)
}

/// Whether backend `name` can take a bundle with the settings and
/// credentials at hand, decided without sending or creating anything.
/// Preflight asks it before the trip, so a missing token is found before
/// the session is frozen, not after the reboot.
pub fn check_upload(name: &str, config: &Config, env: Env<'_>) -> Result<(), DestinationError> {
    match name {
        // Opening it creates its root, so nothing is created here: the
        // root, or the directory it would be made in, must be writable.
        "dir" => dir_writable(&config.ship.dir).map_err(DestinationError::Backend),
        // Credentials present and settings valid; nothing is sent.
        "dropbox" => {
            DropboxBackend::new(
                config.ship.dropbox.clone(),
                DropboxCredentials::from_env(env)?,
            )?;
            Ok(())
        }
        "github" => Ok(GithubBackend::from_env(&config.ship.github, env)?.check_upload()?),
        "s3" => {
            S3Backend::from_env(&config.ship.s3, env)?;
            Ok(())
        }
        other => Err(unknown(other)),
    }
}

/// `root` (or, when it does not exist yet, the nearest directory above it)
/// is a directory this process may create files in.
fn dir_writable(root: &std::path::Path) -> Result<(), BackendError> {
    use std::os::unix::ffi::OsStrExt;
    let bad = |what: String, fix: &str| BackendError::new("dir", ErrorKind::Config, what, fix);
    let mut at = root;
    let existing = loop {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => break at,
            Ok(_) => {
                return Err(bad(
                    format!("{} is not a directory", at.display()),
                    "set ship.dir (FERRY_SHIP_DIR) to a directory",
                ));
            }
            Err(_) => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => break std::path::Path::new("."),
            },
        }
    };
    let Ok(c) = std::ffi::CString::new(existing.as_os_str().as_bytes()) else {
        return Err(bad(
            format!("{} holds a NUL byte", root.display()),
            "set ship.dir (FERRY_SHIP_DIR) to a plain path",
        ));
    };
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(bad(
            format!(
                "{} is not writable by this user, so bundles cannot be stored in {}",
                existing.display(),
                root.display()
            ),
            "run ferry as root, or set ship.dir (FERRY_SHIP_DIR) to a directory you may write",
        ));
    }
    Ok(())
}

fn unknown(name: &str) -> DestinationError {
    DestinationError::Unknown {
        name: name.to_string(),
        known: KNOWN.join(", "),
    }
}

/// Opens the destinations of spool entries: an entry made by a run uses
/// that run's plan and saved credentials (the timer's `ferry ship` has
/// neither the job's environment nor its flags), any other entry this
/// process's. A backend is opened for each put (see [`Self::resolve`]).
pub struct EntryDestinations {
    fallback: Config,
    fixed: Option<(Config, Secrets)>,
    retry: RetryPolicy,
}

impl EntryDestinations {
    /// For `ferry ship`: entries of runs use their runs' settings; remote
    /// backends retry under `retry`.
    pub fn per_run(fallback: &Config, retry: RetryPolicy) -> Self {
        EntryDestinations {
            fallback: fallback.clone(),
            fixed: None,
            retry,
        }
    }

    /// For the end of a run: its own settings and credentials.
    pub fn fixed(config: &Config, secrets: Secrets, retry: RetryPolicy) -> Self {
        EntryDestinations {
            fallback: config.clone(),
            fixed: Some((config.clone(), secrets)),
            retry,
        }
    }

    fn settings(&self, meta: &EntryMeta) -> (Config, Secrets) {
        if let Some((c, s)) = &self.fixed {
            return (c.clone(), s.clone());
        }
        if let Some(dir) = &meta.origin.run_dir {
            let run = RunDir::new(dir);
            if let Ok(state) = run.load()
                && let Ok(plan) = crate::trip::plan_of(&run, &state)
            {
                // The run's own credentials, not whichever job runs
                // `ferry ship` now: its token would be another run's.
                return (plan, Secrets::saved_first(&run));
            }
        }
        (
            self.fallback.clone(),
            Secrets::from_env(&|k| std::env::var(k).ok()),
        )
    }

    /// The backend `dest` for one put of `meta`: opened for this put, so
    /// every request it makes shares one deadline, the retry budget from
    /// now (opening sends nothing).
    pub fn resolve(&self, meta: &EntryMeta, dest: &str) -> Result<Arc<dyn Backend>, BackendError> {
        let (config, secrets) = self.settings(meta);
        let env = |k: &str| secrets.get(k).map(str::to_string);
        let retry = self.retry.from_now();
        let backend: Arc<dyn Backend> = match open_with_retry(dest, &config, &env, retry) {
            Ok(b) => Arc::from(b),
            Err(DestinationError::Backend(e)) => return Err(e),
            Err(e) => {
                return Err(BackendError::new(
                    dest,
                    ErrorKind::Config,
                    e.to_string(),
                    "fix ship.backends in ferry.toml, then `ferry spool retry` the entry",
                ));
            }
        };
        Ok(backend)
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

    /// Regression: `config check` called any dir "ready".
    #[test]
    fn a_dir_destination_is_ready_only_where_it_can_be_written() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.ship.dir = tmp.path().join("not/yet/there");
        check_upload("dir", &config, &|_| None).unwrap();
        assert!(!config.ship.dir.exists(), "the check creates nothing");
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        config.ship.dir = file.join("bundles");
        let e = check_upload("dir", &config, &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not a directory") && e.contains("ship.dir"),
            "{e}"
        );
    }

    #[test]
    fn pages_go_where_a_browser_can_open_them() {
        let served: Vec<&str> = KNOWN.iter().copied().filter(|n| serves_pages(n)).collect();
        assert_eq!(served, ["dir", "s3"]);
        assert!(!serves_pages("dropbox") && !serves_pages("github"));
        assert!(!serves_pages("ftp"));
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
            e.contains("\"ftp\"") && e.contains("known: dir, dropbox, github, s3"),
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

    #[test]
    fn a_destination_down_on_purpose_fails_every_put() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.ship.dir = tmp.path().join("bundles");
        config.testing.backend_down = vec!["dir".into()];
        let b = open("dir", &config, &|_| None).unwrap();
        let src = tmp.path().join("x");
        std::fs::write(&src, b"x").unwrap();
        let e = b.put("x", &src).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(!tmp.path().join("bundles/x").exists());
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
