//! `ship.dropbox`: where and how bundles go to Dropbox. Credentials are
//! not here: they come only from the environment (see [`super::auth`]).

use serde::{Deserialize, Serialize};

use super::content_hash::BLOCK;
use crate::backends::{BackendError, ErrorKind};

/// The largest body one Dropbox request may carry, in MiB.
pub const MAX_REQUEST_MIB: u64 = 150;

/// The Dropbox backend's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DropboxConfig {
    /// The Dropbox folder keys live under (`""` = the root of what the app
    /// sees: the whole Dropbox, or the app's own folder).
    pub folder: String,
    /// Bundles up to this size go in one `files/upload`; larger ones in an
    /// upload session. At most 150.
    pub upload_cutoff_mib: u64,
    /// Size of one upload-session request: a multiple of 4, 4 to 148.
    pub chunk_mib: u64,
    /// Create (or reuse) a shared link for each bundle shipped.
    pub share: bool,
    /// Base URL of the RPC routes.
    pub api_url: String,
    /// Base URL of the content (upload and download) routes.
    pub content_url: String,
    /// Seconds a request without a large body may take; uploads and
    /// downloads get one more second per 256 KiB.
    pub timeout_secs: u64,
}

impl Default for DropboxConfig {
    fn default() -> Self {
        DropboxConfig {
            folder: "/ferry".into(),
            // rclone's measured sweet spot: 91 % of the throughput of the
            // largest chunks, and a failed request resends at most 48 MiB.
            upload_cutoff_mib: 48,
            chunk_mib: 48,
            share: true,
            api_url: "https://api.dropboxapi.com".into(),
            content_url: "https://content.dropboxapi.com".into(),
            timeout_secs: 60,
        }
    }
}

impl DropboxConfig {
    /// Checks every value; the error names the key and the fix.
    pub fn validate(&self) -> Result<(), BackendError> {
        let bad = |key: &str, why: String| {
            let var = format!("FERRY_SHIP_DROPBOX_{}", key.to_ascii_uppercase());
            BackendError::new(
                super::NAME,
                ErrorKind::Config,
                format!("ship.dropbox.{key} ({var}) {why}"),
                format!("set ship.dropbox.{key} in ferry.toml or {var} (docs/backends/dropbox.md)"),
            )
        };
        let block_mib = BLOCK >> 20;
        if self.chunk_mib < block_mib
            || !self.chunk_mib.is_multiple_of(block_mib)
            || self.chunk_mib > MAX_REQUEST_MIB - 2
        {
            return Err(bad(
                "chunk_mib",
                format!(
                    "is {}: it must be a multiple of {block_mib} from {block_mib} to {}",
                    self.chunk_mib,
                    MAX_REQUEST_MIB - 2
                ),
            ));
        }
        if self.upload_cutoff_mib > MAX_REQUEST_MIB {
            return Err(bad(
                "upload_cutoff_mib",
                format!(
                    "is {}: one request carries at most {MAX_REQUEST_MIB} MiB",
                    self.upload_cutoff_mib
                ),
            ));
        }
        if !self.folder.is_empty()
            && (!self.folder.starts_with('/')
                || self.folder.ends_with('/')
                || self
                    .folder
                    .split('/')
                    .skip(1)
                    .any(|c| c.is_empty() || c == "." || c == ".."))
        {
            return Err(bad(
                "folder",
                format!(
                    "is {:?}: use an absolute Dropbox path such as \"/ferry\" (no trailing `/`), or \"\" for the root",
                    self.folder
                ),
            ));
        }
        for (key, url) in [
            ("api_url", &self.api_url),
            ("content_url", &self.content_url),
        ] {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && reqwest::Url::parse(url).is_ok_and(|u| u.host_str().is_some());
            if !ok {
                return Err(bad(key, format!("is {url:?}: it must be an http(s) URL")));
            }
        }
        if self.timeout_secs == 0 {
            return Err(bad("timeout_secs", "is 0: give a number of seconds".into()));
        }
        Ok(())
    }

    pub(super) fn chunk_bytes(&self) -> u64 {
        self.chunk_mib << 20
    }

    pub(super) fn cutoff_bytes(&self) -> u64 {
        self.upload_cutoff_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        DropboxConfig::default().validate().unwrap();
        for (cfg, key) in [
            (
                DropboxConfig {
                    chunk_mib: 6,
                    ..Default::default()
                },
                "chunk_mib",
            ),
            (
                DropboxConfig {
                    chunk_mib: 152,
                    ..Default::default()
                },
                "chunk_mib",
            ),
            (
                DropboxConfig {
                    chunk_mib: 0,
                    ..Default::default()
                },
                "chunk_mib",
            ),
            (
                DropboxConfig {
                    upload_cutoff_mib: 151,
                    ..Default::default()
                },
                "upload_cutoff_mib",
            ),
            (
                DropboxConfig {
                    folder: "ferry".into(),
                    ..Default::default()
                },
                "folder",
            ),
            (
                DropboxConfig {
                    folder: "/a//b".into(),
                    ..Default::default()
                },
                "folder",
            ),
            (
                DropboxConfig {
                    folder: "/a/".into(),
                    ..Default::default()
                },
                "folder",
            ),
            (
                DropboxConfig {
                    api_url: "ftp://x".into(),
                    ..Default::default()
                },
                "api_url",
            ),
            (
                DropboxConfig {
                    content_url: "nonsense".into(),
                    ..Default::default()
                },
                "content_url",
            ),
            (
                DropboxConfig {
                    timeout_secs: 0,
                    ..Default::default()
                },
                "timeout_secs",
            ),
        ] {
            let e = cfg.validate().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            let s = e.to_string();
            assert!(s.contains(&format!("ship.dropbox.{key}")), "{s}");
            assert!(
                s.contains(&format!("FERRY_SHIP_DROPBOX_{}", key.to_uppercase())),
                "{s}"
            );
        }
        DropboxConfig {
            folder: String::new(),
            upload_cutoff_mib: 0,
            chunk_mib: 148,
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
