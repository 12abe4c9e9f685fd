//! `dropbox`: Dropbox API v2, hand-written on the shared blocking client.
//!
//! Keys live under `ship.dropbox.folder`. `put` is in [`upload`] (one
//! `files/upload` up to the cutoff, an upload session above it), `list`
//! is `files/list_folder` (+ `/continue`), `get` is `files/download`
//! checked against the `content_hash`, `share` a shared link created or
//! reused. Every call goes through [`api`], which holds the token
//! ([`auth`]) and sorts answers into results, route errors and
//! [`BackendError`]s ([`error`]); retries are [`RetryPolicy`]'s.

mod api;
pub mod api_arg;
mod auth;
mod config;
pub mod content_hash;
mod error;
mod upload;

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

pub use auth::{
    APP_KEY_VAR, APP_SECRET_VAR, DropboxCredentials, REFRESH_TOKEN_VAR, Secret, TOKEN_VAR,
};
pub use config::DropboxConfig;

use self::api::{Api, progress_to};
use self::auth::Auth;
use self::content_hash::ContentHasher;
use super::http::{self, Timeouts};
use super::{Backend, BackendError, ErrorKind, Receipt, RemoteObject, validate_key};
use crate::progress::Progress;
use crate::retry::RetryPolicy;

/// The backend's name in messages, receipts and `ship.backends`.
pub const NAME: &str = "dropbox";

/// Longest name component Dropbox stores.
const MAX_COMPONENT_CHARS: usize = 255;

/// Dropbox through its HTTP API.
pub struct DropboxBackend {
    cfg: DropboxConfig,
    api: Api,
    retry: RetryPolicy,
}

impl std::fmt::Debug for DropboxBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DropboxBackend")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl DropboxBackend {
    /// A backend with `cfg`'s settings (checked) and `creds`. Sends nothing.
    pub fn new(cfg: DropboxConfig, creds: DropboxCredentials) -> Result<Self, BackendError> {
        cfg.validate()?;
        let timeouts = Timeouts {
            request: Duration::from_secs(cfg.timeout_secs),
            ..Timeouts::default()
        };
        let client = http::client(NAME, timeouts)?;
        let retry = RetryPolicy::default();
        let auth = Auth::new(creds, &cfg.api_url, client.clone(), timeouts, retry);
        let api = Api::new(client, &cfg.api_url, &cfg.content_url, timeouts, auth);
        Ok(DropboxBackend { cfg, api, retry })
    }

    /// Retries every call (and token refresh) with `retry`.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self.api.auth.set_retry(retry);
        self
    }

    /// How many access tokens were fetched with the refresh token so far.
    pub fn token_refreshes(&self) -> u32 {
        self.api.auth.refreshes()
    }

    /// The Dropbox path of `key`.
    fn path_of(&self, key: &str) -> Result<String, BackendError> {
        validate_key(NAME, key)?;
        if let Some(c) = key
            .split('/')
            .find(|c| c.chars().count() > MAX_COMPONENT_CHARS)
        {
            return Err(BackendError::new(
                NAME,
                ErrorKind::InvalidKey,
                format!(
                    "invalid key {key:?}: the name {c:?} is longer than Dropbox's {MAX_COMPONENT_CHARS} characters"
                ),
                "use shorter names",
            ));
        }
        Ok(format!("{}/{key}", self.cfg.folder))
    }

    /// The key of a listed Dropbox path: its components below the folder
    /// (Dropbox paths are case-insensitive, so they are counted, not
    /// compared).
    fn key_of(&self, path_display: &str) -> Option<String> {
        let skip = self.cfg.folder.split('/').filter(|c| !c.is_empty()).count();
        let parts: Vec<&str> = path_display.split('/').filter(|c| !c.is_empty()).collect();
        (parts.len() > skip).then(|| parts[skip..].join("/"))
    }

    /// `files/get_metadata` of `path`; `None` when nothing is there.
    fn metadata(&self, key: &str, path: &str) -> Result<Option<Value>, BackendError> {
        let what = format!("look up {key}");
        let reply = self.retry.run(&what, |_| {
            self.api
                .rpc("files/get_metadata", &json!({"path": path}), &what)
        })?;
        match reply {
            Ok(meta) => Ok(Some(meta)),
            Err(r) if r.is(&["path", "not_found"]) => Ok(None),
            Err(r) => Err(r.into_error(&what)),
        }
    }

    fn list_page(&self, first: bool, cursor: &str) -> Result<api::Reply<Value>, BackendError> {
        let what = "list the bundles";
        self.retry.run(what, |_| {
            if first {
                self.api.rpc(
                    "files/list_folder",
                    &json!({"path": self.cfg.folder, "recursive": true, "limit": 2000,
                            "include_deleted": false, "include_non_downloadable_files": false}),
                    what,
                )
            } else {
                self.api.rpc(
                    "files/list_folder/continue",
                    &json!({"cursor": cursor}),
                    what,
                )
            }
        })
    }

    fn download_to(
        &self,
        key: &str,
        path: &str,
        size: u64,
        dest: &Path,
    ) -> Result<(), BackendError> {
        let what = format!("download {key}");
        let timeout = http::transfer_timeout(
            Timeouts {
                request: Duration::from_secs(self.cfg.timeout_secs),
                ..Timeouts::default()
            },
            size,
        );
        let progress = Progress::new(format!("dropbox get {key}"), size);
        let r = self.retry.run(&what, |_| {
            progress_to(&progress, 0);
            let (meta, resp) =
                match self
                    .api
                    .download("files/download", &json!({"path": path}), timeout, &what)?
                {
                    Ok(v) => v,
                    Err(r) => return Err(r.into_error(&what)),
                };
            self.save(&what, resp, &meta, dest, &progress)
        });
        progress.finish();
        r
    }

    /// Streams a download into a temporary file beside `dest`, checks size
    /// and `content_hash` against the answer's metadata, then renames.
    fn save(
        &self,
        what: &str,
        mut body: impl Read,
        meta: &Value,
        dest: &Path,
        progress: &Progress,
    ) -> Result<(), BackendError> {
        let tmp = super::tmp_beside(dest);
        let result = (|| {
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| {
                    BackendError::from_io(NAME, format!("cannot create {}", tmp.display()), e)
                })?;
            let mut hasher = ContentHasher::new();
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0u64;
            loop {
                let k = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(BackendError::new(
                            NAME,
                            ErrorKind::Unavailable,
                            format!("{what}: the download broke off after {got} bytes: {e}"),
                            "ferry retries; otherwise check the network and try again later",
                        ));
                    }
                };
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(|e| {
                    BackendError::from_io(NAME, format!("cannot write {}", tmp.display()), e)
                })?;
                got += k as u64;
                progress.advance(k as u64);
            }
            let want_size = meta.get("size").and_then(Value::as_u64);
            let want_hash = meta.get("content_hash").and_then(Value::as_str);
            let hash = hasher.finish();
            if want_size != Some(got) || want_hash != Some(hash.as_str()) {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: got {got} bytes with content_hash {hash}, Dropbox announced {} bytes with {}",
                        want_size.map_or("?".into(), |s| s.to_string()),
                        want_hash.unwrap_or("?")
                    ),
                    "the download was damaged or cut short; ferry retries",
                ));
            }
            out.sync_all().map_err(|e| {
                BackendError::from_io(NAME, format!("cannot fsync {}", tmp.display()), e)
            })?;
            fs::rename(&tmp, dest).map_err(|e| {
                BackendError::from_io(NAME, format!("cannot rename into {}", dest.display()), e)
            })
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

impl Backend for DropboxBackend {
    fn retries_itself(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        NAME
    }

    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        self.put_file(key, src)
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        let mut first = true;
        let mut restarts = 0;
        loop {
            let page = match self.list_page(first, &cursor)? {
                Ok(p) => p,
                Err(r) if first && r.is(&["path", "not_found"]) => return Ok(Vec::new()),
                // An expired cursor: list again from the start, once.
                Err(r) if !first && r.is(&["reset"]) && restarts == 0 => {
                    restarts += 1;
                    out.clear();
                    first = true;
                    continue;
                }
                Err(r) => return Err(r.into_error("list the bundles")),
            };
            for e in page
                .get("entries")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if e.get(".tag").and_then(Value::as_str) != Some("file") {
                    continue;
                }
                let Some(key) = e
                    .get("path_display")
                    .and_then(Value::as_str)
                    .and_then(|p| self.key_of(p))
                else {
                    continue;
                };
                if !key.starts_with(prefix) {
                    continue;
                }
                let modified = e
                    .get("server_modified")
                    .and_then(Value::as_str)
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(RemoteObject {
                    key,
                    size: e.get("size").and_then(Value::as_u64).unwrap_or(0),
                    modified,
                });
            }
            if page.get("has_more").and_then(Value::as_bool) != Some(true) {
                break;
            }
            cursor = match page.get("cursor").and_then(Value::as_str) {
                Some(c) => c.to_string(),
                None => {
                    return Err(BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        "list the bundles: Dropbox said there is more but gave no cursor",
                        "retry later",
                    ));
                }
            };
            first = false;
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn get(&self, key: &str, dest: &Path) -> Result<(), BackendError> {
        let path = self.path_of(key)?;
        let meta = self.metadata(key, &path)?.ok_or_else(|| {
            BackendError::new(
                NAME,
                ErrorKind::NotFound,
                format!("no {key} in Dropbox (path {path})"),
                "check the key (`ferry pull` lists them) and ship.dropbox.folder",
            )
        })?;
        if meta
            .get(".tag")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "file")
        {
            return Err(BackendError::new(
                NAME,
                ErrorKind::NotFound,
                format!("{key} is a folder in Dropbox, not a bundle"),
                "name a file",
            ));
        }
        let size = meta.get("size").and_then(Value::as_u64).unwrap_or(0);
        self.download_to(key, &path, size, dest)
    }

    fn share(&self, key: &str) -> Result<Option<String>, BackendError> {
        if !self.cfg.share {
            return Ok(None);
        }
        let path = self.path_of(key)?;
        let what = format!("share {key}");
        let reply = self.retry.run(&what, |_| {
            self.api.rpc(
                "sharing/create_shared_link_with_settings",
                &json!({"path": path}),
                &what,
            )
        })?;
        let r = match reply {
            Ok(link) => return url_of(&what, &link).map(Some),
            Err(r) if r.is(&["shared_link_already_exists"]) => r,
            Err(r) => return Err(r.into_error(&what)),
        };
        // The existing link comes with the error, unless Dropbox left it out.
        if let Some(url) = r
            .error
            .pointer("/shared_link_already_exists/metadata/url")
            .and_then(Value::as_str)
        {
            return Ok(Some(url.to_string()));
        }
        let listed = self.retry.run(&what, |_| {
            self.api.rpc(
                "sharing/list_shared_links",
                &json!({"path": path, "direct_only": true}),
                &what,
            )
        })?;
        let links = match listed {
            Ok(v) => v,
            Err(r) => return Err(r.into_error(&what)),
        };
        let lower = path.to_lowercase();
        let all: Vec<&Value> = links
            .get("links")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        let pick = all
            .iter()
            .find(|l| l.get("path_lower").and_then(Value::as_str) == Some(lower.as_str()))
            .or(all.first());
        match pick {
            Some(l) => url_of(&what, l).map(Some),
            None => Err(BackendError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("{what}: Dropbox says a shared link exists but lists none"),
                "retry later",
            )),
        }
    }
}

fn url_of(what: &str, link: &Value) -> Result<String, BackendError> {
    link.get("url")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            BackendError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("{what}: the shared link metadata holds no url"),
                "retry later",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(folder: &str) -> DropboxBackend {
        DropboxBackend::new(
            DropboxConfig {
                folder: folder.into(),
                ..Default::default()
            },
            DropboxCredentials::Token(Secret::new("t")),
        )
        .unwrap()
    }

    #[test]
    fn keys_map_to_paths_and_back() {
        let b = backend("/CI/Ferry");
        assert_eq!(b.path_of("h/x.tar.gz").unwrap(), "/CI/Ferry/h/x.tar.gz");
        assert_eq!(
            b.key_of("/ci/ferry/h/x.tar.gz").as_deref(),
            Some("h/x.tar.gz")
        );
        assert_eq!(b.key_of("/ci/ferry").as_deref(), None);
        let root = backend("");
        assert_eq!(root.path_of("ü.tar.gz").unwrap(), "/ü.tar.gz");
        assert_eq!(root.key_of("/a/ü.tar.gz").as_deref(), Some("a/ü.tar.gz"));
        let long = "x".repeat(256);
        assert_eq!(b.path_of(&long).unwrap_err().kind(), ErrorKind::InvalidKey);
        assert_eq!(b.path_of("../x").unwrap_err().kind(), ErrorKind::InvalidKey);
    }

    #[test]
    fn a_bad_config_is_refused_before_anything_is_sent() {
        let e = DropboxBackend::new(
            DropboxConfig {
                chunk_mib: 5,
                ..Default::default()
            },
            DropboxCredentials::Token(Secret::new("t")),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ship.dropbox.chunk_mib"), "{e}");
    }
}
