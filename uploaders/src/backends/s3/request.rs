//! One S3 request: built as a [`Call`], signed, sent over the shared
//! client; answers read into bodies or errors. No URL or header ever goes
//! into an error (presigned URLs and signatures are credentials).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::blocking::Response;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use super::{NAME, S3Backend, SMALL_BODY, errors, sigv4, xml};
use crate::backends::BackendError;
use crate::backends::http;
use crate::progress::Progress;

/// A request body.
pub(super) enum Payload<'a> {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of `path` from `offset`, whose SHA-256 is known.
    File {
        path: &'a Path,
        offset: u64,
        len: u64,
        progress: Option<Progress>,
        /// Bytes of this attempt read so far (see [`with_progress`]).
        sent: Arc<AtomicU64>,
    },
}

/// One request before signing.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    /// The full object key (prefix included), or `None` for the bucket.
    pub(super) key: Option<&'a str>,
    pub(super) query: Vec<(String, String)>,
    pub(super) headers: Vec<(String, String)>,
    pub(super) payload: Payload<'a>,
    /// Lowercase hex SHA-256 of the payload.
    pub(super) payload_sha256: String,
    /// Zero: the client's request timeout.
    pub(super) timeout: Duration,
}

impl<'a> Call<'a> {
    pub(super) fn new(method: Method, key: Option<&'a str>) -> Self {
        Call {
            method,
            key,
            query: Vec::new(),
            headers: Vec::new(),
            payload: Payload::Empty,
            payload_sha256: sigv4::EMPTY_SHA256.to_string(),
            timeout: Duration::ZERO,
        }
    }

    pub(super) fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.to_string(), v.to_string()));
        self
    }

    pub(super) fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub(super) fn bytes(mut self, body: Vec<u8>) -> Self {
        self.payload_sha256 = hex::encode(Sha256::digest(&body));
        self.payload = Payload::Bytes(body);
        self
    }
}

impl S3Backend {
    /// Signs and sends one request; any HTTP answer is `Ok`.
    pub(super) fn send(&self, what: &str, call: Call<'_>) -> Result<Response, BackendError> {
        let path = self.path_of(call.key);
        let mut headers = vec![("host".to_string(), self.cfg.host.clone())];
        headers.extend(call.headers);
        let auth = self.signer.authorize(
            call.method.as_str(),
            &path,
            &call.query,
            &mut headers,
            &call.payload_sha256,
            SystemTime::now(),
        );
        let query = call
            .query
            .iter()
            .map(|(k, v)| format!("{}={}", sigv4::encode_query(k), sigv4::encode_query(v)))
            .collect::<Vec<_>>()
            .join("&");
        let url = format!(
            "{}://{}{path}{}{query}",
            self.cfg.base.scheme(),
            self.cfg.host,
            if query.is_empty() { "" } else { "?" }
        );
        let timeout = if call.timeout.is_zero() {
            self.timeouts.request
        } else {
            call.timeout
        };
        let mut req = self
            .client
            .request(call.method.clone(), &url)
            .timeout(timeout)
            .header(reqwest::header::AUTHORIZATION, auth);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        req = match call.payload {
            Payload::Empty if matches!(call.method, Method::PUT | Method::POST) => {
                req.body(Vec::new())
            }
            Payload::Empty => req,
            Payload::Bytes(b) => req.body(b),
            Payload::File {
                path,
                offset,
                len,
                progress,
                sent,
            } => req.body(http::file_body_into(
                NAME,
                path,
                offset,
                len,
                progress,
                http::Sent::from(sent),
            )?),
        };
        tracing::debug!(target: "ferry::s3", method = %call.method, what, "request");
        req.send().map_err(|e| http::transport_error(NAME, what, e))
    }

    /// The answer's body when it is a success, else its error.
    pub(super) fn ok_body(&self, what: &str, resp: Response) -> Result<Vec<u8>, BackendError> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = http::read_body(NAME, what, resp, SMALL_BODY)?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(errors::from_answer(
                what,
                status,
                &headers,
                &body,
                &self.context(),
            ))
        }
    }

    /// The error an unsuccessful answer stands for.
    pub(super) fn error_of(&self, what: &str, resp: Response) -> BackendError {
        self.failure(what, resp).1
    }

    /// [`error_of`](Self::error_of), with the S3 error code when the
    /// answer had one.
    pub(super) fn failure(&self, what: &str, resp: Response) -> (Option<String>, BackendError) {
        let status = resp.status();
        let headers = resp.headers().clone();
        match http::read_body(NAME, what, resp, SMALL_BODY) {
            Ok(body) => (
                xml::error(&body).map(|e| e.code),
                errors::from_answer(what, status, &headers, &body, &self.context()),
            ),
            Err(e) => (None, e),
        }
    }

    /// Runs one write; when the service says it does not implement
    /// `If-None-Match`, remembers that and runs it once more without.
    pub(super) fn conditional_write(
        &self,
        what: &str,
        mut make: impl FnMut(bool) -> Result<Response, BackendError>,
    ) -> Result<Response, BackendError> {
        let cond = self.conditional.load(Ordering::Relaxed);
        let resp = make(cond)?;
        if cond && resp.status() == StatusCode::NOT_IMPLEMENTED {
            let e = self.error_of(what, resp);
            tracing::info!(target: "ferry::s3", "{e}; writing without If-None-Match from now on");
            self.conditional.store(false, Ordering::Relaxed);
            return make(false);
        }
        Ok(resp)
    }
}

/// Runs one attempt of a transfer counted in `progress`; when it fails,
/// the bytes it had sent are taken back so the retry counts them again.
pub(super) fn with_progress<T>(
    progress: &Progress,
    attempt: impl FnOnce(&Arc<AtomicU64>) -> Result<T, BackendError>,
) -> Result<T, BackendError> {
    let sent = Arc::new(AtomicU64::new(0));
    let r = attempt(&sent);
    if r.is_err() {
        progress.rewind(sent.load(Ordering::Relaxed));
    }
    r
}
