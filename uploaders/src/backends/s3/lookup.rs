//! Looking objects and the bucket up: HEAD, and the GET that explains a
//! bodyless refusal.

use std::sync::atomic::Ordering;

use base64::Engine;
use reqwest::{Method, StatusCode};

use super::request::Call;
use super::{B64, NAME, S3Backend, errors};
use crate::backends::{BackendError, ErrorKind};
use crate::retry::RetryPolicy;

/// What a HEAD says about an object.
#[derive(Debug, Clone)]
pub(super) struct ObjectInfo {
    pub(super) size: u64,
    /// `x-amz-meta-sha256`: the whole object's SHA-256 (hex) ferry stored.
    pub(super) sha256: Option<String>,
    /// `x-amz-checksum-sha256` when it covers the whole object (not a
    /// multipart composite), as hex.
    pub(super) checksum_sha256: Option<String>,
    pub(super) etag: Option<String>,
}

impl ObjectInfo {
    /// The object's whole-content SHA-256, if the service can say.
    pub(super) fn content_sha256(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.checksum_sha256.as_deref())
    }
}

impl S3Backend {
    /// HEAD of `full`: `None` when there is no such object.
    pub(super) fn head(&self, full: &str) -> Result<Option<ObjectInfo>, BackendError> {
        self.head_with(full, &self.retry)
    }

    /// Before a body is sent again: a broken connection may hide an answer
    /// the service gave early (an expired token, a refused write) while
    /// the body was still going out. One bodyless look-up brings such a
    /// lasting error to light instead of resending the body into it;
    /// transient trouble is left to the retry itself.
    pub(super) fn probe(&self, full: &str) -> Result<Option<ObjectInfo>, BackendError> {
        match self.head_with(full, &RetryPolicy::once()) {
            Err(e) if e.is_transient() => Ok(None),
            r => r,
        }
    }

    fn head_with(
        &self,
        full: &str,
        retry: &RetryPolicy,
    ) -> Result<Option<ObjectInfo>, BackendError> {
        let what = format!("look up {full}");
        retry.run(&what, |_| {
            let call = Call::new(Method::HEAD, Some(full)).header("x-amz-checksum-mode", "ENABLED");
            let resp = self.send(&what, call)?;
            let status = resp.status();
            if status == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            if !status.is_success() {
                // A HEAD answer has no body; ask again with a GET of one
                // byte, whose error answer says which S3 error it is.
                drop(resp);
                return Err(self.explain(&what, full, status));
            }
            let h = resp.headers();
            let text = |name: &str| {
                h.get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let size = text("content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    BackendError::new(
                        NAME,
                        ErrorKind::Other,
                        format!("{what}: the answer has no Content-Length"),
                        "the endpoint does not behave like S3; check ship.s3.endpoint",
                    )
                })?;
            let checksum_sha256 = text("x-amz-checksum-sha256")
                .filter(|v| !v.contains('-'))
                .and_then(|v| B64.decode(v.trim()).ok())
                .filter(|raw| raw.len() == 32)
                .map(hex::encode);
            Ok(Some(ObjectInfo {
                size,
                sha256: text("x-amz-meta-sha256").map(|v| v.trim().to_ascii_lowercase()),
                checksum_sha256,
                etag: text("etag"),
            }))
        })
    }

    /// Fails with a clear error when the bucket does not exist or lives
    /// in another region; other answers (403 for keys without
    /// s3:ListBucket) are left to the requests that follow.
    pub(super) fn check_bucket(&self) -> Result<(), BackendError> {
        if self.bucket_seen.load(Ordering::Relaxed) {
            return Ok(());
        }
        let what = format!("look up bucket {:?}", self.cfg.bucket);
        self.retry.run(&what, |_| {
            let resp = self.send(&what, Call::new(Method::HEAD, None))?;
            let status = resp.status();
            let region = resp
                .headers()
                .get("x-amz-bucket-region")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if let Some(r) = region.filter(|r| *r != self.cfg.region) {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Config,
                    format!(
                        "{what}: HTTP {} the bucket is in region {r}, not {}",
                        status.as_u16(),
                        self.cfg.region
                    ),
                    format!("set ship.s3.region (or AWS_REGION) to {r}"),
                ));
            }
            if status == StatusCode::NOT_FOUND {
                let (kind, fix) = errors::classify("NoSuchBucket", None, &self.context())
                    .unwrap_or((ErrorKind::Config, String::new()));
                return Err(BackendError::new(
                    NAME,
                    kind,
                    format!("{what}: HTTP 404 NoSuchBucket"),
                    fix,
                ));
            }
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(errors::from_answer(
                    &what,
                    status,
                    resp.headers(),
                    b"",
                    &self.context(),
                ));
            }
            if status.is_success() {
                self.bucket_seen.store(true, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// The error behind a bodyless answer `status` to a request on `full`.
    fn explain(&self, what: &str, full: &str, status: StatusCode) -> BackendError {
        let call = Call::new(Method::GET, Some(full)).header("range", "bytes=0-0");
        match self.send(what, call) {
            Ok(resp) if !resp.status().is_success() => self.error_of(what, resp),
            _ => errors::from_answer(what, status, &Default::default(), b"", &self.context()),
        }
    }
}
