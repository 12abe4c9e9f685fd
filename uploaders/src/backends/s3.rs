//! `s3`: any S3-compatible object store (AWS, MinIO, Ceph RGW, R2,
//! s3s-fs…), spoken directly over the shared blocking HTTP client.
//!
//! * Every request is SigV4-signed with the body's real SHA-256 as the
//!   payload hash (never `UNSIGNED-PAYLOAD`, never aws-chunked), and every
//!   object or part body also carries `x-amz-checksum-sha256`: the server
//!   checks the bytes it received before it keeps them.
//! * Bodies stream from the file (`http::file_body`), re-opened for each
//!   attempt, so memory does not grow with the bundle; parts are hashed
//!   just before they are sent, in the worker that sends them.
//! * The whole bundle's SHA-256 is kept as `x-amz-meta-sha256`: it makes a
//!   put idempotent (same key and same hash: nothing is sent again; same
//!   key and another hash: a conflict) and lets `get` verify what it
//!   downloaded, also for multipart objects whose ETag is no content hash.
//! * Writes are conditional (`If-None-Match: *`) where the service
//!   supports it, so a retried or racing put never replaces an object.

mod config;
mod download;
mod errors;
mod list;
mod lookup;
mod multipart;
mod put;
mod request;
mod sigv4;
mod xml;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use reqwest::blocking::Client;

use config::Resolved;
pub use config::{Env, PathStyle, S3Config};
use sigv4::Signer;

use super::http::{self, Timeouts};
use super::{Backend, BackendError, ErrorKind, Receipt, RemoteObject, validate_key};
use crate::retry::RetryPolicy;

const NAME: &str = "s3";
/// Error and listing bodies are small; more is a misbehaving server.
const SMALL_BODY: u64 = 4 << 20;
/// Read buffer for hashing and downloads.
const BUF: usize = 1 << 20;

/// An S3 bucket (or a folder of one) used as a bundle store.
pub struct S3Backend {
    cfg: Resolved,
    signer: Signer,
    client: Client,
    timeouts: Timeouts,
    retry: RetryPolicy,
    /// Whether the service honours `If-None-Match: *` on writes (cleared
    /// the first time it answers `NotImplemented`).
    conditional: AtomicBool,
    /// Whether the bucket was seen to exist (checked once, before the
    /// first put: some services create missing buckets on PUT, others
    /// answer a PUT's body early and the reason is lost).
    bucket_seen: AtomicBool,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Backend")
            .field("endpoint", &self.cfg.base.as_str())
            .field("bucket", &self.cfg.bucket)
            .field("prefix", &self.cfg.prefix)
            .field("region", &self.cfg.region)
            .field("credentials", &self.signer.credentials)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// A backend for `config`, with credentials and region from `env`
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    /// `AWS_REGION`/`AWS_DEFAULT_REGION`). Nothing is sent yet.
    pub fn from_env(config: &S3Config, env: Env<'_>) -> Result<Self, BackendError> {
        let cfg = config.resolve(env)?;
        let credentials = config::credentials(env)?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(10).min(cfg.timeout),
            request: cfg.timeout,
        };
        let client = http::client(NAME, timeouts)?;
        Ok(S3Backend {
            signer: Signer {
                credentials,
                region: cfg.region.clone(),
            },
            cfg,
            client,
            timeouts,
            retry: RetryPolicy::default(),
            conditional: AtomicBool::new(true),
            bucket_seen: AtomicBool::new(false),
        })
    }

    /// Uses `retry` instead of the default policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.cfg.prefix)
    }

    fn location(&self, full: &str) -> String {
        format!("s3://{}/{full}", self.cfg.bucket)
    }

    fn context(&self) -> errors::Context<'_> {
        errors::Context {
            bucket: &self.cfg.bucket,
            region: &self.cfg.region,
            access_key_id: &self.signer.credentials.access_key_id,
        }
    }

    fn path_of(&self, key: Option<&str>) -> String {
        match key {
            Some(k) => format!("{}/{}", self.cfg.bucket_path, sigv4::encode_path(k)),
            None if self.cfg.bucket_path.is_empty() => "/".to_string(),
            None => self.cfg.bucket_path.clone(),
        }
    }
}

impl Backend for S3Backend {
    fn retries_itself(&self) -> bool {
        true
    }

    fn name(&self) -> &str {
        NAME
    }

    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        validate_key(NAME, key)?;
        put::put(self, key, src)
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
        list::list(self, prefix)
    }

    fn get(&self, key: &str, dest: &Path) -> Result<(), BackendError> {
        validate_key(NAME, key)?;
        download::get(self, &self.full_key(key), dest)
    }

    fn share(&self, key: &str) -> Result<Option<String>, BackendError> {
        validate_key(NAME, key)?;
        let full = self.full_key(key);
        if self.head(&full)?.is_none() {
            return Err(BackendError::new(
                NAME,
                ErrorKind::NotFound,
                format!(
                    "no object under key {full:?} in bucket {:?}",
                    self.cfg.bucket
                ),
                "put it first, or list the keys with `ferry pull`",
            ));
        }
        Ok(self.presigned_get(&full, SystemTime::now()))
    }
}

impl S3Backend {
    /// A GET URL of `full` that works without credentials for
    /// `share_expiry_secs` from `now`; none when sharing is off or the
    /// credentials are temporary (the URL would have to carry the session
    /// token, a secret, into the CI log).
    fn presigned_get(&self, full: &str, now: SystemTime) -> Option<String> {
        if self.cfg.share_expiry_secs == 0 {
            return None;
        }
        if self.signer.credentials.session_token.is_some() {
            tracing::info!(
                target: "ferry::s3",
                "no share URL for {full}: the credentials are temporary (AWS_SESSION_TOKEN) and the URL would hold the token"
            );
            return None;
        }
        let path = self.path_of(Some(full));
        let query = self.signer.presign(
            "GET",
            &self.cfg.host,
            &path,
            self.cfg.share_expiry_secs,
            now,
        );
        Some(format!(
            "{}://{}{path}?{query}",
            self.cfg.base.scheme(),
            self.cfg.host
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(prefix: &str) -> S3Backend {
        let cfg = S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "b".into(),
            prefix: prefix.into(),
            ..S3Config::default()
        };
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AKID".to_string()),
            "AWS_SECRET_ACCESS_KEY" => Some("SECRETKEY".to_string()),
            "AWS_SESSION_TOKEN" => Some("SESSIONTOKEN".to_string()),
            _ => None,
        };
        S3Backend::from_env(&cfg, &env).unwrap()
    }

    #[test]
    fn keys_go_under_the_prefix_and_are_encoded_once() {
        let b = backend("ci/x");
        assert_eq!(b.full_key("h/a+b c.tar.gz"), "ci/x/h/a+b c.tar.gz");
        assert_eq!(b.path_of(Some("ci/x/h/a+b c")), "/b/ci/x/h/a%2Bb%20c");
        assert_eq!(b.path_of(None), "/b");
        assert_eq!(b.location("ci/x/k"), "s3://b/ci/x/k");
    }

    #[test]
    fn debug_and_errors_hold_no_secret() {
        let b = backend("").with_retry(RetryPolicy::once());
        let dbg = format!("{b:?}");
        assert!(
            !dbg.contains("SECRETKEY") && !dbg.contains("SESSIONTOKEN"),
            "{dbg}"
        );
        // Port 9 refuses: a transport error, which must not carry the URL.
        let e = b.list("").unwrap_err();
        let s = format!("{e} {e:?}");
        assert!(e.is_transient(), "{s}");
        assert!(
            !s.contains("SECRETKEY") && !s.contains("SESSIONTOKEN"),
            "{s}"
        );
    }

    #[test]
    fn share_urls_hold_no_secret_and_none_with_a_session_token() {
        let mut b = backend("p");
        assert_eq!(b.presigned_get("p/k.tar.gz", SystemTime::now()), None);
        b.signer.credentials.session_token = None;
        let url = b.presigned_get("p/k.tar.gz", SystemTime::now()).unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:9/b/p/k.tar.gz?X-Amz-Algorithm="),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=86400"), "{url}");
        assert!(!url.contains("SECRETKEY"), "{url}");
        b.cfg.share_expiry_secs = 0;
        assert_eq!(b.presigned_get("p/k.tar.gz", SystemTime::now()), None);
    }
}
