//! `github`: GitHub Actions artifacts (the current "v4" results service).
//!
//! Inside a job (`ACTIONS_RUNTIME_TOKEN` and `ACTIONS_RESULTS_URL`), `put`
//! makes one artifact per bundle: `CreateArtifact` (Twirp), the bytes to
//! the signed blob URL it returns, `FinalizeArtifact` with their size and
//! SHA-256. Anywhere with `GITHUB_TOKEN` and a repository, `list` and `get`
//! read through the REST API; inside the job without it, through the
//! results service (that run's artifacts only).
//!
//! Idempotent: before uploading, the run's artifacts are listed, and one
//! holding the same bytes under the key's name is the receipt; different
//! bytes are a [`ErrorKind::Conflict`]. A name whose upload never got
//! finalized stays reserved (and invisible) for the rest of the run, so
//! the key moves on to its next name slot (see [`names`]); a listing maps
//! every slot back to the key. There is still only one finalized artifact
//! per bundle.
//!
//! Secrets: the tokens live in [`Token`]s (sensitive header values, never
//! printed); the signed URLs' queries never reach a message.

mod blob;
mod config;
mod jwt;
mod names;
mod rest;
mod twirp;
mod unpack;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use reqwest::blocking::Client;
use reqwest::header::HeaderValue;

pub use config::{GithubConfig, MAX_RETENTION_DAYS};

use super::http::{self, Timeouts};
use super::{Backend, BackendError, ErrorKind, Receipt, RemoteObject, hash_file, validate_key};
use crate::progress::Progress;
use crate::retry::RetryPolicy;

pub(crate) const NAME: &str = "github";

/// Every environment variable this backend reads (the runner keeps them
/// for the units that run after the reboot).
pub const ENV_VARS: &[&str] = &[
    "ACTIONS_RUNTIME_TOKEN",
    "ACTIONS_RESULTS_URL",
    "GITHUB_TOKEN",
    "GITHUB_REPOSITORY",
    "GITHUB_API_URL",
    "GITHUB_SERVER_URL",
    "GITHUB_RUN_ID",
    "GITHUB_RETENTION_DAYS",
];

/// Of [`ENV_VARS`], the secrets.
pub const SECRET_ENV_VARS: &[&str] = &["ACTIONS_RUNTIME_TOKEN", "GITHUB_TOKEN"];

/// What a `run:` step lacks, and the one step that gives it.
pub const EXPOSE_STEP: &str = "GitHub gives them to JavaScript actions only, not to `run:` steps: add a step `uses: actions/github-script@v8` with `script: core.exportVariable('ACTIONS_RUNTIME_TOKEN', process.env.ACTIONS_RUNTIME_TOKEN); core.exportVariable('ACTIONS_RESULTS_URL', process.env.ACTIONS_RESULTS_URL)` before ferry's step, and keep them across sudo (sudo --preserve-env=ACTIONS_RUNTIME_TOKEN,ACTIONS_RESULTS_URL); see docs/backends/github.md";

const DEFAULT_API: &str = "https://api.github.com";

/// A token, kept as a sensitive header value so no `Debug` or log shows it.
#[derive(Clone)]
pub(crate) struct Token(HeaderValue);

impl Token {
    /// `None` when the token holds what a header cannot carry.
    pub(crate) fn new(token: &str) -> Option<Token> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
        v.set_sensitive(true);
        Some(Token(v))
    }

    pub(crate) fn bearer(&self) -> HeaderValue {
        self.0.clone()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(***)")
    }
}

/// Retries and timeouts (tests shorten them).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
}

/// The GitHub Actions artifacts backend.
pub struct GithubBackend {
    config: GithubConfig,
    client: Client,
    tuning: Tuning,
    twirp: Option<twirp::Twirp>,
    /// The runtime variables that are not set, when `twirp` is `None`.
    runtime_missing: Vec<&'static str>,
    rest: Option<rest::Rest>,
    /// Why `rest` is `None`.
    rest_missing: String,
    /// `https://github.com` or a GHE.com host: where artifacts have a page.
    server_url: String,
    /// Set when `GITHUB_SERVER_URL` names a GitHub Enterprise Server, which
    /// has no v4 artifact service.
    enterprise_server: Option<String>,
    repository: Option<String>,
    run_id: Option<u64>,
    /// `GITHUB_RETENTION_DAYS`: the most the repository allows.
    retention_cap: Option<u32>,
}

impl std::fmt::Debug for GithubBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubBackend")
            .field("in_actions", &self.twirp.is_some())
            .field("rest", &self.rest.as_ref().map(|r| r.repo.as_str()))
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>, fix: impl Into<String>) -> BackendError {
    BackendError::new(NAME, ErrorKind::Config, message, fix)
}

/// An artifact found for a key, by either API.
enum Found {
    Rest(rest::Artifact),
    Twirp(twirp::Listed),
}

impl Found {
    fn name(&self) -> &str {
        match self {
            Found::Rest(a) => &a.name,
            Found::Twirp(a) => &a.name,
        }
    }
    fn size(&self) -> u64 {
        match self {
            Found::Rest(a) => a.size_in_bytes,
            Found::Twirp(a) => a.size,
        }
    }
    fn digest(&self) -> Option<&str> {
        match self {
            Found::Rest(a) => a.digest.as_deref(),
            Found::Twirp(a) => a.digest.as_deref(),
        }
    }
}

/// How one try at an artifact name ended, when it did not succeed.
enum Attempt {
    /// The name is taken in this run.
    Taken,
    /// This name is spent (signed URL refused, finalize refused): the next
    /// name may succeed.
    Again(BackendError),
    /// Stop here.
    Fatal(BackendError),
}

impl GithubBackend {
    /// Opens the backend with `config` and the variables `env` holds
    /// ([`ENV_VARS`]). Nothing is sent over the network here.
    pub fn from_env(
        config: &GithubConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, BackendError> {
        Self::with_tuning(config, env, Tuning::default())
    }

    /// [`from_env`](Self::from_env) with other retries and timeouts.
    pub fn with_tuning(
        config: &GithubConfig,
        env: &dyn Fn(&str) -> Option<String>,
        tuning: Tuning,
    ) -> Result<Self, BackendError> {
        if let Some((key, why)) = config.problems().into_iter().next() {
            return Err(config_error(
                format!("{key}: {why}"),
                "fix it in ferry.toml or its FERRY_SHIP_GITHUB_* variable",
            ));
        }
        let var = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let client = http::client(NAME, tuning.timeouts)?;

        let (twirp, runtime_missing) =
            match (var("ACTIONS_RUNTIME_TOKEN"), var("ACTIONS_RESULTS_URL")) {
                (Some(token), Some(results)) => {
                    let ids = jwt::backend_ids(&token).map_err(|why| {
                    config_error(
                        format!("ACTIONS_RUNTIME_TOKEN is not the runner's runtime token: {why}"),
                        format!(
                            "export the token the runner gives JavaScript actions; {EXPOSE_STEP}"
                        ),
                    )
                })?;
                    let token = Token::new(&token).ok_or_else(|| {
                        config_error(
                            "ACTIONS_RUNTIME_TOKEN holds characters an HTTP header cannot carry",
                            "export it unchanged from the runner's environment",
                        )
                    })?;
                    let origin = origin_of(&results).ok_or_else(|| {
                        config_error(
                            format!("ACTIONS_RESULTS_URL {results:?} is not an http(s) URL"),
                            "export it unchanged from the runner's environment",
                        )
                    })?;
                    let t = twirp::Twirp::new(
                        client.clone(),
                        origin,
                        token,
                        ids,
                        tuning.retry,
                        tuning.timeouts,
                    );
                    (Some(t), Vec::new())
                }
                (token, results) => {
                    let mut missing = Vec::new();
                    if token.is_none() {
                        missing.push("ACTIONS_RUNTIME_TOKEN");
                    }
                    if results.is_none() {
                        missing.push("ACTIONS_RESULTS_URL");
                    }
                    (None, missing)
                }
            };

        let repository = if !config.repository.is_empty() {
            Some(config.repository.clone())
        } else {
            match var("GITHUB_REPOSITORY") {
                Some(r) if config::valid_repository(&r) => Some(r),
                Some(r) => {
                    return Err(config_error(
                        format!("GITHUB_REPOSITORY {r:?} is not `owner/name`"),
                        "set it (or ship.github.repository) to the repository, e.g. my-org/my-repo",
                    ));
                }
                None => None,
            }
        };
        let api = if !config.api_url.is_empty() {
            config.api_url.clone()
        } else {
            var("GITHUB_API_URL").unwrap_or_else(|| DEFAULT_API.to_string())
        };
        let api_url = Url::parse(&api)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                config_error(
                    format!("the API URL {api:?} is not an http(s) URL"),
                    "fix ship.github.api_url (FERRY_SHIP_GITHUB_API_URL) or GITHUB_API_URL, e.g. https://api.github.com",
                )
            })?;

        let (rest, rest_missing) = match (var("GITHUB_TOKEN"), &repository) {
            (Some(token), Some(repo)) => {
                let token = Token::new(&token).ok_or_else(|| {
                    config_error(
                        "GITHUB_TOKEN holds characters an HTTP header cannot carry",
                        "set it to the token exactly as GitHub issued it",
                    )
                })?;
                let r = rest::Rest::new(
                    client.clone(),
                    api.clone(),
                    repo.clone(),
                    token,
                    tuning.retry,
                    tuning.timeouts,
                );
                (Some(r), String::new())
            }
            (None, _) => (
                None,
                "GITHUB_TOKEN is not set (a token with Actions: read on the repository)".to_string(),
            ),
            (Some(_), None) => (
                None,
                "no repository: set ship.github.repository (FERRY_SHIP_GITHUB_REPOSITORY) or GITHUB_REPOSITORY to owner/name".to_string(),
            ),
        };

        if twirp.is_none() && rest.is_none() {
            return Err(config_error(
                format!(
                    "no credentials: {} not set, and {rest_missing}",
                    runtime_missing.join(" and ")
                ),
                format!(
                    "to ship from a GitHub Actions job, set ACTIONS_RUNTIME_TOKEN and ACTIONS_RESULTS_URL ({EXPOSE_STEP}); to list or pull elsewhere, set GITHUB_TOKEN and the repository"
                ),
            ));
        }

        let server = var("GITHUB_SERVER_URL");
        let enterprise_server = server
            .as_deref()
            .filter(|s| !is_github_cloud(s))
            .map(str::to_string);
        let server_url = match server {
            Some(s) => s.trim_end_matches('/').to_string(),
            None => web_of_api(&api_url),
        };
        let retention_cap = var("GITHUB_RETENTION_DAYS").and_then(|d| d.parse().ok());
        let run_id = var("GITHUB_RUN_ID").and_then(|r| r.parse().ok());
        Ok(GithubBackend {
            config: config.clone(),
            client,
            tuning,
            twirp,
            runtime_missing,
            rest,
            rest_missing,
            server_url,
            enterprise_server,
            repository,
            run_id,
            retention_cap,
        })
    }

    fn store(&self) -> blob::Store<'_> {
        blob::Store {
            client: &self.client,
            retry: &self.tuning.retry,
            timeouts: self.tuning.timeouts,
        }
    }

    /// The results service, or why it cannot be used.
    fn twirp(&self) -> Result<&twirp::Twirp, BackendError> {
        self.twirp.as_ref().ok_or_else(|| {
            config_error(
                format!(
                    "cannot upload: {} not set",
                    self.runtime_missing.join(" and ")
                ),
                EXPOSE_STEP,
            )
        })
    }

    /// Whether `put` can work here (inside a job, with the runtime
    /// variables, on github.com or GHE.com), decided without sending
    /// anything: what preflight asks before a trip.
    pub fn check_upload(&self) -> Result<(), BackendError> {
        self.twirp()?;
        if let Some(server) = &self.enterprise_server {
            return Err(config_error(
                format!(
                    "GITHUB_SERVER_URL {server} is a GitHub Enterprise Server, which has no v4 artifact service"
                ),
                "ship to s3 or dir from GitHub Enterprise Server",
            ));
        }
        Ok(())
    }

    /// `expires_at` for a new artifact, if a retention is configured.
    fn expires_at(&self) -> Option<String> {
        let mut days = self.config.retention_days;
        if days == 0 {
            return None;
        }
        if let Some(cap) = self.retention_cap.filter(|c| *c > 0) {
            days = days.min(cap);
        }
        let at = SystemTime::now() + Duration::from_secs(u64::from(days) * 86_400);
        Some(humantime::format_rfc3339_seconds(at).to_string())
    }

    /// The artifact's page, when the repository and run are known.
    fn web_url(&self, run: Option<u64>, id: u64) -> Option<String> {
        let repo = self.repository.as_deref()?;
        let run = run?;
        Some(format!(
            "{}/{repo}/actions/runs/{run}/artifacts/{id}",
            self.server_url
        ))
    }

    fn receipt(&self, key: &str, name: &str, id: u64, size: u64, sha256: &str) -> Receipt {
        Receipt {
            backend: NAME.to_string(),
            key: key.to_string(),
            location: self
                .web_url(self.run_id, id)
                .unwrap_or_else(|| format!("{name} (artifact {id})")),
            size,
            sha256: sha256.to_string(),
        }
    }

    /// Among listed artifacts, the one holding `key` with these bytes (a
    /// receipt), or a conflict if `key` holds other bytes.
    fn already_there(
        &self,
        key: &str,
        listed: &[twirp::Listed],
        size: u64,
        sha256: &str,
    ) -> Result<Option<Receipt>, BackendError> {
        let want = format!("sha256:{sha256}");
        let mut other = None;
        for a in listed {
            if names::key_of(&self.config.name_prefix, &a.name).map(|(k, _)| k) != Some(key.into())
            {
                continue;
            }
            if a.size == size
                && a.digest.as_deref().map(str::to_ascii_lowercase) == Some(want.clone())
            {
                tracing::info!(target: "ferry::github", artifact = %a.name, "already uploaded; nothing to do");
                return Ok(Some(self.receipt(
                    key,
                    &a.name,
                    a.database_id,
                    size,
                    sha256,
                )));
            }
            other.get_or_insert(a);
        }
        match other {
            None => Ok(None),
            Some(a) => Err(BackendError::new(
                NAME,
                ErrorKind::Conflict,
                format!(
                    "artifact {} of this run already holds {key:?} with other bytes ({} bytes, digest {}; this bundle has {size} bytes, sha256:{sha256})",
                    a.name,
                    a.size,
                    a.digest.as_deref().unwrap_or("unknown"),
                ),
                "bundle names carry the run id, so this is another bundle under the same key: ship it under a new key, or delete the artifact in the run's page",
            )),
        }
    }

    /// One try at uploading under `name`; the artifact id on success.
    fn put_as(
        &self,
        tw: &twirp::Twirp,
        key: &str,
        name: &str,
        src: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<u64, Attempt> {
        let mime = mime_type(name);
        let expires = self.expires_at();
        let url = match tw.create(name, expires.as_deref(), mime) {
            Ok(u) => u,
            Err(e) if e.kind() == ErrorKind::Conflict => return Err(Attempt::Taken),
            Err(e) => return Err(Attempt::Fatal(e)),
        };
        let url = Url::parse(&url).map_err(|_| {
            Attempt::Fatal(BackendError::new(
                NAME,
                ErrorKind::Other,
                format!("CreateArtifact {name}: the signed upload URL is not a URL"),
                "retry later; if it persists, report it with the message above",
            ))
        })?;
        let progress = Progress::new(format!("github put {name}"), size);
        let block = self.config.block_kib.saturating_mul(1024);
        let up = blob::upload(
            self.store(),
            &url,
            src,
            size,
            block,
            self.config.upload_concurrency,
            mime,
            name,
            &progress,
        );
        progress.finish();
        if let Err(e) = up {
            return Err(match e.kind() {
                ErrorKind::Auth | ErrorKind::PermissionDenied => Attempt::Again(e),
                _ => Attempt::Fatal(e),
            });
        }
        match tw.finalize(name, size, sha256) {
            Ok(id) => Ok(id),
            Err(e) => {
                // The finalize may have happened with its answer lost.
                if let Ok(listed) = tw.list(Some(name)) {
                    let ours: Vec<_> = listed.into_iter().filter(|a| a.name == name).collect();
                    match self.already_there(key, &ours, size, sha256) {
                        Ok(Some(_)) => {
                            if let Some(a) = ours.first() {
                                return Ok(a.database_id);
                            }
                        }
                        Err(conflict) => return Err(Attempt::Fatal(conflict)),
                        Ok(None) => {}
                    }
                }
                if e.is_transient() || e.kind() == ErrorKind::Auth {
                    Err(Attempt::Fatal(e))
                } else {
                    Err(Attempt::Again(e))
                }
            }
        }
    }

    /// The artifact holding `key`, newest first, through the REST API when
    /// it is set up, else the results service.
    fn find(&self, key: &str) -> Result<Found, BackendError> {
        let prefix = &self.config.name_prefix;
        let not_found = |where_: &str| {
            BackendError::new(
                NAME,
                ErrorKind::NotFound,
                format!("no artifact holds {key:?} in {where_}"),
                "list what is there with `ferry pull --backend github`",
            )
        };
        if let Some(rest) = &self.rest {
            let mut expired = None;
            for slot in 0..names::SLOTS {
                let name = names::artifact_name(prefix, key, slot);
                let mut live: Vec<_> = rest.artifacts(Some(&name))?;
                live.retain(|a| a.name == name);
                if let Some(a) = live.iter().find(|a| a.expired) {
                    expired.get_or_insert(a.name.clone());
                }
                if let Some(a) = live.into_iter().filter(|a| !a.expired).max_by_key(|a| a.id) {
                    return Ok(Found::Rest(a));
                }
            }
            return Err(match expired {
                Some(name) => BackendError::new(
                    NAME,
                    ErrorKind::NotFound,
                    format!("artifact {name} expired (its retention ended)"),
                    "nothing is left to download; raise ship.github.retention_days for later runs",
                ),
                None => not_found(&rest.repo),
            });
        }
        let tw = self.twirp.as_ref().ok_or_else(|| self.no_reader())?;
        let mut best: Option<(u32, twirp::Listed)> = None;
        for a in tw.list(None)? {
            if let Some((k, slot)) = names::key_of(prefix, &a.name)
                && k == key
                && best.as_ref().is_none_or(|(s, _)| slot < *s)
            {
                best = Some((slot, a));
            }
        }
        best.map(|(_, a)| Found::Twirp(a))
            .ok_or_else(|| not_found("this workflow run"))
    }

    fn no_reader(&self) -> BackendError {
        config_error(
            format!("cannot read artifacts: {}", self.rest_missing),
            "set GITHUB_TOKEN (Actions: read) and the repository; see docs/backends/github.md",
        )
    }

    /// Downloads `found` into the new file `tmp`, checked against its
    /// digest; retried as a whole, since a redirect's URL lives a minute.
    fn fetch(&self, found: &Found, tmp: &Path) -> Result<(), BackendError> {
        let what = format!("download {}", found.name());
        self.tuning.retry.run(&what, |_| {
            let url = match found {
                Found::Rest(a) => match &self.rest {
                    Some(rest) => rest.download_url(a.id, &a.name)?,
                    None => return Err(self.no_reader()),
                },
                Found::Twirp(a) => {
                    let tw = self.twirp()?;
                    let signed = tw.signed_url(a)?;
                    Url::parse(&signed).map_err(|_| {
                        BackendError::new(
                            NAME,
                            ErrorKind::Other,
                            format!("GetSignedArtifactURL {}: not a URL", a.name),
                            "retry later",
                        )
                    })?
                }
            };
            let progress = Progress::new(format!("github get {}", found.name()), found.size());
            let got = blob::download(self.store(), &url, tmp, found.size(), &what, &progress);
            progress.finish();
            let got = got?;
            if let Some(d) = found.digest() {
                let have = format!("sha256:{}", got.sha256);
                if !d.eq_ignore_ascii_case(&have) {
                    return Err(BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!(
                            "{what}: the {} bytes downloaded do not match the artifact's digest",
                            got.size
                        ),
                        "the transfer was corrupted; retry later",
                    ));
                }
            }
            Ok(())
        })
    }
}

/// `scheme://host[:port]` of an http(s) URL: the toolkit uses only that.
fn origin_of(url: &str) -> Option<String> {
    let u = Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return None;
    }
    Some(u.origin().ascii_serialization())
}

/// github.com, or a GHE.com tenant (data residency): the hosts with the
/// v4 artifact service.
fn is_github_cloud(server: &str) -> bool {
    Url::parse(server)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .is_some_and(|h| h == "github.com" || h.ends_with(".ghe.com"))
}

/// The web host of an API URL (`api.github.com` → `github.com`).
fn web_of_api(api: &Url) -> String {
    match api.host_str() {
        Some("api.github.com") => "https://github.com".to_string(),
        Some(h) if h.starts_with("api.") && h.ends_with(".ghe.com") => {
            format!("https://{}", &h[4..])
        }
        _ => api.origin().ascii_serialization(),
    }
}

/// The media type the toolkit would send for this file name.
fn mime_type(name: &str) -> &'static str {
    if name.ends_with(".gz") {
        "application/gzip"
    } else if name.ends_with(".tar") {
        "application/x-tar"
    } else if name.ends_with(".zip") {
        "application/zip"
    } else {
        "application/octet-stream"
    }
}

/// When a listing's RFC 3339 time is unreadable, the epoch.
fn parse_time(t: Option<&str>) -> SystemTime {
    t.and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .unwrap_or(UNIX_EPOCH)
}

impl Backend for GithubBackend {
    fn retries_itself(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        NAME
    }

    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        validate_key(NAME, key)?;
        self.check_upload()?;
        let tw = self.twirp()?;
        let (size, sha256) = hash_file(NAME, src)?;
        let _span = tracing::info_span!("github_put", key, size).entered();
        if let Some(r) = self.already_there(key, &tw.list(None)?, size, &sha256)? {
            return Ok(r);
        }
        let mut last = None;
        for slot in 0..names::SLOTS {
            let name = names::artifact_name(&self.config.name_prefix, key, slot);
            match self.put_as(tw, key, &name, src, size, &sha256) {
                Ok(id) => {
                    tracing::info!(target: "ferry::github", artifact = %name, id, size, "artifact finalized");
                    return Ok(self.receipt(key, &name, id, size, &sha256));
                }
                Err(Attempt::Taken) => {
                    if let Some(r) =
                        self.already_there(key, &tw.list(Some(&name))?, size, &sha256)?
                    {
                        return Ok(r);
                    }
                    tracing::warn!(target: "ferry::github", artifact = %name, "the name is held by an upload that never finished; trying the next name");
                }
                Err(Attempt::Again(e)) => {
                    tracing::warn!(target: "ferry::github", artifact = %name, "{e}; starting again under the next name");
                    last = Some(e);
                }
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            BackendError::new(
                NAME,
                ErrorKind::Conflict,
                format!(
                    "all {} names of {key:?} are held by uploads of this run that never finished",
                    names::SLOTS
                ),
                "the bundle stays in the spool; ship it from the next workflow run, or download it from the machine",
            )
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
        let ours = &self.config.name_prefix;
        // key → (artifact id, slot, object): the newest artifact of a key wins.
        let mut by_key: BTreeMap<String, (u64, RemoteObject)> = BTreeMap::new();
        let mut keep = |name: &str, id: u64, size: u64, created: Option<&str>| {
            let Some((key, _)) = names::key_of(ours, name) else {
                return;
            };
            if !key.starts_with(prefix) || by_key.get(&key).is_some_and(|(have, _)| *have > id) {
                return;
            }
            let obj = RemoteObject {
                key: key.clone(),
                size,
                modified: parse_time(created),
            };
            by_key.insert(key, (id, obj));
        };
        if let Some(rest) = &self.rest {
            for a in rest.artifacts(None)? {
                if !a.expired {
                    keep(&a.name, a.id, a.size_in_bytes, a.created_at.as_deref());
                }
            }
        } else if let Some(tw) = &self.twirp {
            for a in tw.list(None)? {
                keep(&a.name, a.database_id, a.size, a.created_at.as_deref());
            }
        } else {
            return Err(self.no_reader());
        }
        Ok(by_key.into_values().map(|(_, o)| o).collect())
    }

    fn get(&self, key: &str, dest: &Path) -> Result<(), BackendError> {
        validate_key(NAME, key)?;
        let found = self.find(key)?;
        let _span = tracing::info_span!("github_get", key, artifact = found.name()).entered();
        let raw = super::tmp_beside(dest);
        let unpacked = super::tmp_beside(dest);
        let result = (|| {
            self.fetch(&found, &raw)?;
            let ready = match unpack::sniff(&raw)? {
                unpack::Kind::Gzip => &raw,
                unpack::Kind::Zip => {
                    unpack::unzip(&raw, key, &unpacked)?;
                    &unpacked
                }
                unpack::Kind::Unknown(head) => {
                    return Err(BackendError::new(
                        NAME,
                        ErrorKind::Other,
                        format!(
                            "artifact {} is neither a gzip bundle nor a zip (it starts with {})",
                            found.name(),
                            hex::encode(head)
                        ),
                        "check the artifact in the run's page; it was not made by ferry",
                    ));
                }
            };
            fs::rename(ready, dest).map_err(|e| {
                BackendError::from_io(NAME, format!("cannot rename to {}", dest.display()), e)
            })?;
            if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent).and_then(|d| d.sync_all()).map_err(|e| {
                    BackendError::from_io(NAME, format!("cannot fsync {}", parent.display()), e)
                })?;
            }
            Ok(())
        })();
        let _ = fs::remove_file(&raw);
        let _ = fs::remove_file(&unpacked);
        result
    }

    fn share(&self, key: &str) -> Result<Option<String>, BackendError> {
        validate_key(NAME, key)?;
        Ok(match self.find(key)? {
            Found::Rest(a) => self.web_url(a.workflow_run.and_then(|r| r.id), a.id),
            Found::Twirp(a) => self.web_url(self.run_id, a.database_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn runtime_token() -> String {
        use base64::Engine;
        let claims = r#"{"scp":"Actions.Results:run-1:job-1"}"#;
        format!(
            "e30.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn no_credentials_names_every_variable_and_the_step() {
        let e = GithubBackend::from_env(&GithubConfig::default(), &env(&[])).unwrap_err();
        let s = e.to_string();
        for want in [
            "ACTIONS_RUNTIME_TOKEN",
            "ACTIONS_RESULTS_URL",
            "GITHUB_TOKEN",
            "actions/github-script",
            "docs/backends/github.md",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        assert_eq!(e.kind(), ErrorKind::Config);
    }

    #[test]
    fn pull_only_setup_refuses_put_naming_what_is_missing() {
        let b = GithubBackend::from_env(
            &GithubConfig::default(),
            &env(&[("GITHUB_TOKEN", "ghp_x"), ("GITHUB_REPOSITORY", "o/r")]),
        )
        .unwrap();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let e = b.put("a.tar.gz", tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("ACTIONS_RUNTIME_TOKEN and ACTIONS_RESULTS_URL not set"),
            "{e}"
        );
        let token_only = GithubBackend::from_env(
            &GithubConfig::default(),
            &env(&[
                ("ACTIONS_RUNTIME_TOKEN", &runtime_token()),
                ("GITHUB_TOKEN", "ghp_x"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            token_only.contains("ACTIONS_RESULTS_URL not set")
                && token_only.contains("no repository"),
            "{token_only}"
        );
    }

    #[test]
    fn bad_runtime_values_are_config_errors_without_the_token() {
        let e = GithubBackend::from_env(
            &GithubConfig::default(),
            &env(&[
                ("ACTIONS_RUNTIME_TOKEN", "not-a-jwt-SECRET"),
                ("ACTIONS_RESULTS_URL", "https://results.example/"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a JWT") && !e.contains("SECRET"), "{e}");
        let e = GithubBackend::from_env(
            &GithubConfig::default(),
            &env(&[
                ("ACTIONS_RUNTIME_TOKEN", &runtime_token()),
                ("ACTIONS_RESULTS_URL", "results.example"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ACTIONS_RESULTS_URL"), "{e}");
    }

    #[test]
    fn enterprise_server_is_refused_for_uploads() {
        let b = GithubBackend::from_env(
            &GithubConfig::default(),
            &env(&[
                ("ACTIONS_RUNTIME_TOKEN", &runtime_token()),
                ("ACTIONS_RESULTS_URL", "https://results.example/x"),
                ("GITHUB_SERVER_URL", "https://git.corp.example"),
            ]),
        )
        .unwrap();
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let e = b.put("a.tar.gz", tmp.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(e.to_string().contains("Enterprise Server"), "{e}");
        assert!(is_github_cloud("https://github.com"));
        assert!(is_github_cloud("https://octo.ghe.com/"));
    }

    #[test]
    fn urls_and_retention() {
        assert_eq!(
            origin_of("https://results-receiver.actions.githubusercontent.com/some/path?q=1")
                .as_deref(),
            Some("https://results-receiver.actions.githubusercontent.com")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080/").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            web_of_api(&Url::parse("https://api.github.com").unwrap()),
            "https://github.com"
        );
        assert_eq!(
            web_of_api(&Url::parse("https://api.octo.ghe.com/").unwrap()),
            "https://octo.ghe.com"
        );
        let b = GithubBackend::from_env(
            &GithubConfig {
                retention_days: 30,
                ..GithubConfig::default()
            },
            &env(&[
                ("ACTIONS_RUNTIME_TOKEN", &runtime_token()),
                ("ACTIONS_RESULTS_URL", "https://results.example/"),
                ("GITHUB_RETENTION_DAYS", "7"),
            ]),
        )
        .unwrap();
        let at = humantime::parse_rfc3339(&b.expires_at().unwrap()).unwrap();
        let days = at.duration_since(SystemTime::now()).unwrap().as_secs() / 86_400;
        assert!((6..=7).contains(&days), "{days}");
        assert_eq!(mime_type("x.tar.gz"), "application/gzip");
        assert_eq!(mime_type("x"), "application/octet-stream");
    }

    #[test]
    fn tokens_do_not_show_in_debug() {
        let t = Token::new("ghp_SECRET").unwrap();
        assert!(!format!("{t:?}").contains("SECRET"));
        assert!(Token::new("bad\ntoken").is_none());
        let b = GithubBackend::from_env(
            &GithubConfig::default(),
            &env(&[("GITHUB_TOKEN", "ghp_SECRET"), ("GITHUB_REPOSITORY", "o/r")]),
        )
        .unwrap();
        assert!(!format!("{b:?}").contains("SECRET"));
    }
}
