//! Secrets that must outlive the job's environment.
//!
//! The units that run after `ferry upgrade` (worker, resume, finisher)
//! inherit nothing from the CI job, yet need the secret values: to redact
//! them from logs and bundles, and for the backends that ship. They are
//! kept in a root-only 0600 file of the (0700) run directory, never in argv
//! or in a unit's environment, and deleted when the run has ended.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::config::{BACKEND_VARS, SECRET_VARS};
use crate::state::RunDir;

const FILE: &str = "secrets.json";

/// Shorter header values (`1`, `on`) are not secrets worth masking
/// everywhere they would match.
const MIN_REDACTED_LEN: usize = 6;

#[derive(Default, Clone)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({:?} set)", self.0.keys().collect::<Vec<_>>())
    }
}

impl Secrets {
    /// The secret variables set in `env`, and the backends' other
    /// variables ([`BACKEND_VARS`]) beside them.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        Secrets(
            SECRET_VARS
                .iter()
                .chain(BACKEND_VARS)
                .filter_map(|k| env(k).filter(|v| !v.is_empty()).map(|v| (k.to_string(), v)))
                .collect(),
        )
    }

    /// This process's environment, completed by what the run saved.
    pub fn for_run(run: &RunDir) -> Self {
        let mut s = Secrets::from_env(&|k| std::env::var(k).ok());
        if let Ok(bytes) = std::fs::read(run.root.join(FILE))
            && let Ok(saved) = serde_json::from_slice::<BTreeMap<String, String>>(&bytes)
        {
            for (k, v) in saved {
                s.0.entry(k).or_insert(v);
            }
        }
        s
    }

    /// For a run's spool entries: the credentials the run saved, and only
    /// those when it saved any (a later job's token would be another run's,
    /// or another account's); this process's environment otherwise.
    pub fn saved_first(run: &RunDir) -> Self {
        match std::fs::read(run.root.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok())
        {
            Some(saved) => Secrets(saved),
            None => Secrets::from_env(&|k| std::env::var(k).ok()),
        }
    }

    /// The secret values to redact, in every form they may travel in: as
    /// set, trimmed (the backends send them trimmed), and for OTLP header
    /// variables each header's decoded value (the real API key). The
    /// backends' plain variables are not among them.
    pub fn values(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in self
            .0
            .iter()
            .filter(|(k, _)| SECRET_VARS.contains(&k.as_str()))
        {
            out.push(v.clone());
            let t = v.trim();
            if t != v && !t.is_empty() {
                out.push(t.to_string());
            }
            if k.starts_with("OTEL_EXPORTER_OTLP_") {
                for (_, value) in crate::telemetry::export::parse_headers(v) {
                    if value.len() >= MIN_REDACTED_LEN && !out.contains(&value) {
                        out.push(value);
                    }
                }
            }
        }
        out
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Keep the values for the run's later processes (nothing is written
    /// when no secret is set).
    pub fn save(&self, run: &RunDir) -> std::io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let path = run.root.join(FILE);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(&serde_json::to_vec(&self.0).map_err(std::io::Error::other)?)?;
        f.sync_all()
    }

    /// Whether the run still keeps values on disk.
    pub fn saved(run: &RunDir) -> bool {
        run.root.join(FILE).exists()
    }

    /// The run has ended and its bundle is shipped: the values are no
    /// longer needed on disk.
    pub fn forget(run: &RunDir) {
        let _ = std::fs::remove_file(run.root.join(FILE));
    }
}

/// `text` with the user and password of every URL (`scheme://user:pw@host`)
/// replaced by `***`: a password written into an endpoint is a secret no
/// variable names.
pub fn mask_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn url_userinfo_is_masked() {
        assert_eq!(
            mask_userinfo("endpoint \"http://u:pw@127.0.0.1:9/b\" and https://h/x@y"),
            "endpoint \"http://***@127.0.0.1:9/b\" and https://h/x@y"
        );
        assert_eq!(mask_userinfo("no url here @ all"), "no url here @ all");
        assert_eq!(mask_userinfo("s3://a@b"), "s3://***@b");
        assert_eq!(mask_userinfo("x://"), "x://");
    }
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn saved_secrets_are_private_and_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let s =
            Secrets::from_env(&|k| (k == "DROPBOX_TOKEN").then(|| "sl.secret-token".to_string()));
        s.save(&run).unwrap();
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Secrets::for_run(&run);
        assert_eq!(back.get("DROPBOX_TOKEN"), Some("sl.secret-token"));
        assert!(!format!("{back:?}").contains("sl.secret-token"));
        Secrets::forget(&run);
        assert!(!dir.path().join(FILE).exists());
    }

    #[test]
    fn backend_variables_travel_but_are_not_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        let s = Secrets::from_env(&|k| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKIAPLAIN".into()),
            "AWS_SECRET_ACCESS_KEY" => Some("s3cr3t".into()),
            _ => None,
        });
        s.save(&run).unwrap();
        let back = Secrets::for_run(&run);
        assert_eq!(back.get("AWS_ACCESS_KEY_ID"), Some("AKIAPLAIN"));
        assert_eq!(back.values(), ["s3cr3t"]);
    }

    /// Regression: only the raw values were redacted, but backends send
    /// them trimmed and OTLP headers travel decoded.
    #[test]
    fn secrets_are_redacted_trimmed_and_header_values_decoded() {
        let s = Secrets::from_env(&|k| match k {
            "DROPBOX_TOKEN" => Some("sl.tok-123\n".into()),
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("x-honeycomb-team=hc%2Bkey-987,x-flag=on".into()),
            _ => None,
        });
        let v = s.values();
        assert!(v.contains(&"sl.tok-123".to_string()), "{v:?}");
        assert!(v.contains(&"sl.tok-123\n".to_string()), "{v:?}");
        assert!(v.contains(&"hc+key-987".to_string()), "{v:?}");
        assert!(!v.contains(&"on".to_string()), "{v:?}");
    }

    /// Regression: `ferry ship` paired a run's entry with the credentials
    /// of whatever job ran it.
    #[test]
    fn a_runs_saved_credentials_win_over_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        Secrets::from_env(&|k| (k == "GITHUB_TOKEN").then(|| "ghp_saved_for_run".to_string()))
            .save(&run)
            .unwrap();
        let s = Secrets::saved_first(&run);
        assert_eq!(s.get("GITHUB_TOKEN"), Some("ghp_saved_for_run"));
        assert_eq!(s.get("PATH"), None);
        // Nothing saved: this process's environment.
        let other = tempfile::tempdir().unwrap();
        let none = Secrets::saved_first(&RunDir::new(other.path()));
        assert_eq!(
            none.get("GITHUB_TOKEN").map(str::to_string),
            std::env::var("GITHUB_TOKEN").ok().filter(|v| !v.is_empty())
        );
    }

    #[test]
    fn nothing_is_written_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::new(dir.path());
        Secrets::from_env(&|_| None).save(&run).unwrap();
        assert!(!dir.path().join(FILE).exists());
    }
}
