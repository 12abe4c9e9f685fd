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
mod multipart;
mod sigv4;
mod xml;

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use sha2::{Digest, Sha256};

use config::Resolved;
pub use config::{Env, PathStyle, S3Config};
use sigv4::Signer;

use super::http::{self, Timeouts};
use super::{Backend, BackendError, ErrorKind, Receipt, RemoteObject, validate_key};
use crate::progress::Progress;
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
    counter: AtomicU64,
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

/// A request body.
pub(crate) enum Payload<'a> {
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
pub(crate) struct Call<'a> {
    method: Method,
    /// The full object key (prefix included), or `None` for the bucket.
    key: Option<&'a str>,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    payload: Payload<'a>,
    /// Lowercase hex SHA-256 of the payload.
    payload_sha256: String,
    timeout: Duration,
}

impl<'a> Call<'a> {
    fn new(method: Method, key: Option<&'a str>) -> Self {
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

    fn query(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.to_string(), v.to_string()));
        self
    }

    fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    fn bytes(mut self, body: Vec<u8>) -> Self {
        self.payload_sha256 = hex::encode(Sha256::digest(&body));
        self.payload = Payload::Bytes(body);
        self
    }
}

/// What a HEAD says about an object.
#[derive(Debug, Clone)]
pub(crate) struct ObjectInfo {
    size: u64,
    /// `x-amz-meta-sha256`: the whole object's SHA-256 (hex) ferry stored.
    sha256: Option<String>,
    /// `x-amz-checksum-sha256` when it covers the whole object (not a
    /// multipart composite), as hex.
    checksum_sha256: Option<String>,
    etag: Option<String>,
}

impl ObjectInfo {
    /// The object's whole-content SHA-256, if the service can say.
    fn content_sha256(&self) -> Option<&str> {
        self.sha256.as_deref().or(self.checksum_sha256.as_deref())
    }
}

/// Size, mtime and SHA-256 of a local file.
pub(crate) struct Source {
    size: u64,
    modified: Option<SystemTime>,
    sha256: [u8; 32],
}

impl Source {
    fn hex(&self) -> String {
        hex::encode(self.sha256)
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
            counter: AtomicU64::new(0),
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

    /// Signs and sends one request; any HTTP answer is `Ok`.
    fn send(&self, what: &str, call: Call<'_>) -> Result<Response, BackendError> {
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
            } => req.body(http::file_body_counted(
                NAME, path, offset, len, progress, sent,
            )?),
        };
        tracing::debug!(target: "ferry::s3", method = %call.method, what, "request");
        req.send().map_err(|e| http::transport_error(NAME, what, e))
    }

    /// The answer's body when it is a success, else its error.
    fn ok_body(&self, what: &str, resp: Response) -> Result<Vec<u8>, BackendError> {
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
    fn error_of(&self, what: &str, resp: Response) -> BackendError {
        self.failure(what, resp).1
    }

    /// [`error_of`](Self::error_of), with the S3 error code when the
    /// answer had one.
    fn failure(&self, what: &str, resp: Response) -> (Option<String>, BackendError) {
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

    /// HEAD of `full`: `None` when there is no such object.
    fn head(&self, full: &str) -> Result<Option<ObjectInfo>, BackendError> {
        self.head_with(full, &self.retry)
    }

    /// Before a body is sent again: a broken connection may hide an answer
    /// the service gave early (an expired token, a refused write) while
    /// the body was still going out. One bodyless look-up brings such a
    /// lasting error to light instead of resending the body into it;
    /// transient trouble is left to the retry itself.
    fn probe(&self, full: &str) -> Result<Option<ObjectInfo>, BackendError> {
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
    fn check_bucket(&self) -> Result<(), BackendError> {
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

    /// Size, mtime and SHA-256 of `src`.
    fn read_source(&self, src: &Path) -> Result<Source, BackendError> {
        let mut f = File::open(src).map_err(|e| {
            BackendError::from_io(NAME, format!("cannot open source {}", src.display()), e)
        })?;
        let meta = f.metadata().map_err(|e| {
            BackendError::from_io(NAME, format!("cannot inspect {}", src.display()), e)
        })?;
        let sha256 = hash_reader(&mut f, u64::MAX).map_err(|e| {
            BackendError::from_io(NAME, format!("cannot read {}", src.display()), e)
        })?;
        Ok(Source {
            size: meta.len(),
            modified: meta.modified().ok(),
            sha256,
        })
    }

    /// Fails when `src` is not what [`read_source`] saw: a bundle must not
    /// change while it is uploaded.
    fn unchanged(&self, src: &Path, seen: &Source) -> Result<(), BackendError> {
        let meta = fs::metadata(src).map_err(|e| {
            BackendError::from_io(NAME, format!("cannot inspect {}", src.display()), e)
        })?;
        if meta.len() != seen.size || meta.modified().ok() != seen.modified {
            return Err(BackendError::new(
                NAME,
                ErrorKind::Other,
                format!("{} changed while it was being uploaded", src.display()),
                "ship a finished bundle: nothing may write to it during the upload",
            ));
        }
        Ok(())
    }

    /// What an existing object under `full` means for a put of `src`.
    fn settle_existing(
        &self,
        key: &str,
        full: &str,
        info: &ObjectInfo,
        src: &Source,
    ) -> Result<Receipt, BackendError> {
        let want = src.hex();
        match info.content_sha256() {
            Some(have) if have == want && info.size == src.size => Ok(self.receipt(key, full, src)),
            Some(_) => Err(BackendError::new(
                NAME,
                ErrorKind::Conflict,
                format!(
                    "key {full:?} in bucket {:?} already holds {} bytes with another SHA-256 than the {} being put",
                    self.cfg.bucket, info.size, src.size
                ),
                "put it under a new key (bundle names carry the run id), or delete the old object if it is wrong",
            )),
            None => Err(BackendError::new(
                NAME,
                ErrorKind::Conflict,
                format!(
                    "key {full:?} in bucket {:?} already holds an object without a SHA-256 (not stored by ferry)",
                    self.cfg.bucket
                ),
                "put it under a new key or prefix (ship.s3.prefix), or delete the old object",
            )),
        }
    }

    fn receipt(&self, key: &str, full: &str, src: &Source) -> Receipt {
        Receipt {
            backend: NAME.to_string(),
            key: key.to_string(),
            location: self.location(full),
            size: src.size,
            sha256: src.hex(),
        }
    }

    /// Headers that describe a new object: its type and whole SHA-256.
    fn object_headers(full: &str, src: &Source) -> Vec<(String, String)> {
        let content_type = if full.ends_with(".gz") {
            "application/gzip"
        } else {
            "application/octet-stream"
        };
        vec![
            ("content-type".into(), content_type.into()),
            ("x-amz-meta-sha256".into(), src.hex()),
        ]
    }

    /// Runs one write; when the service says it does not implement
    /// `If-None-Match`, remembers that and runs it once more without.
    fn conditional_write(
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

    /// A single PutObject of the whole of `src`. `Ok(false)` when a
    /// conditional write found the key taken.
    fn put_single(
        &self,
        full: &str,
        path: &Path,
        src: &Source,
        progress: &Progress,
    ) -> Result<bool, BackendError> {
        let what = format!("put {full}");
        let checksum = B64.encode(src.sha256);
        self.retry.run(&what, |attempt| {
            // An earlier attempt may have landed with its answer lost: a
            // look costs less than the body (see `probe`).
            if attempt > 1 && self.probe(full)?.is_some() {
                return Ok(false);
            }
            with_progress(progress, |sent| {
                let resp = self.conditional_write(&what, |cond| {
                    let mut call = Call::new(Method::PUT, Some(full));
                    call.headers = Self::object_headers(full, src);
                    call.headers
                        .push(("x-amz-checksum-sha256".into(), checksum.clone()));
                    if cond {
                        call.headers.push(("if-none-match".into(), "*".into()));
                    }
                    call.payload = Payload::File {
                        path,
                        offset: 0,
                        len: src.size,
                        progress: Some(progress.clone()),
                        sent: sent.clone(),
                    };
                    call.payload_sha256 = src.hex();
                    call.timeout = http::transfer_timeout(self.timeouts, src.size);
                    self.send(&what, call)
                })?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(true);
                }
                if status == StatusCode::PRECONDITION_FAILED {
                    // Nothing was stored: the bytes do not count.
                    progress.rewind(sent.load(Ordering::Relaxed));
                    return Ok(false);
                }
                let (code, e) = self.failure(&what, resp);
                Err(match code.as_deref() {
                    Some(c) if errors::is_digest_error(c) => {
                        recheck(path, 0, src.size, &src.sha256, e)
                    }
                    _ => e,
                })
            })
        })
    }

    fn tmp_beside(&self, dest: &Path) -> std::path::PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{n}", super::TMP_PREFIX, std::process::id());
        dest.with_file_name(name)
    }
}

/// Runs one attempt of a transfer counted in `progress`; when it fails,
/// the bytes it had sent are taken back so the retry counts them again.
fn with_progress<T>(
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

/// After the service found our bytes corrupt: if the file now hashes
/// differently it changed under us (permanent); else the bytes were
/// damaged on the way and the retry may pass.
pub(crate) fn recheck(
    path: &Path,
    offset: u64,
    len: u64,
    sent: &[u8; 32],
    e: BackendError,
) -> BackendError {
    match hash_range(path, offset, len) {
        Ok(now) if &now != sent => BackendError::new(
            NAME,
            ErrorKind::Other,
            format!(
                "{} changed while it was being uploaded ({e})",
                path.display()
            ),
            "ship a finished bundle: nothing may write to it during the upload",
        ),
        _ => e,
    }
}

/// SHA-256 of `len` bytes of `path` from `offset`.
pub(crate) fn hash_range(path: &Path, offset: u64, len: u64) -> Result<[u8; 32], BackendError> {
    let io = |e| BackendError::from_io(NAME, format!("cannot read {}", path.display()), e);
    let mut f = File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    hash_reader(&mut f, len).map_err(io)
}

/// SHA-256 of the next `limit` bytes of `r` (all of it with `u64::MAX`).
fn hash_reader(r: &mut impl Read, limit: u64) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut left = limit;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize().into())
}

impl Backend for S3Backend {
    fn name(&self) -> &str {
        NAME
    }

    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        validate_key(NAME, key)?;
        let full = self.full_key(key);
        let source = self.read_source(src)?;
        self.check_bucket()?;
        if let Some(info) = self.head(&full)? {
            tracing::info!(target: "ferry::s3", key = %full, "already stored; comparing");
            return self.settle_existing(key, &full, &info, &source);
        }
        let progress = Progress::new(format!("s3 put {full}"), source.size);
        let stored = if source.size < self.cfg.multipart_threshold {
            self.put_single(&full, src, &source, &progress)
        } else {
            multipart::upload(self, &full, src, &source, &progress)
        };
        progress.finish();
        if !stored? {
            // Taken meanwhile: by an earlier attempt of ours whose answer
            // was lost, or by someone else.
            return match self.head(&full)? {
                Some(info) => self.settle_existing(key, &full, &info, &source),
                None => Err(BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "put {full}: the service refused the write as the key exists, but it does not"
                    ),
                    "retry later",
                )),
            };
        }
        self.unchanged(src, &source)?;
        Ok(self.receipt(key, &full, &source))
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
        if prefix.chars().any(|c| c.is_control() || c == '\\') {
            validate_key(NAME, prefix)?;
        }
        let full_prefix = self.full_key(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let page_keys = self.cfg.list_page_keys.to_string();
        loop {
            let what = format!("list {full_prefix:?}");
            let page: xml::ListBucketResult = self.retry.run(&what, |_| {
                let mut call = Call::new(Method::GET, None)
                    .query("list-type", "2")
                    .query("max-keys", &page_keys);
                if !full_prefix.is_empty() {
                    call = call.query("prefix", &full_prefix);
                }
                if let Some(t) = &token {
                    call = call.query("continuation-token", t);
                }
                let resp = self.send(&what, call)?;
                let body = self.ok_body(&what, resp)?;
                xml::parse(&body, "ListBucketResult").ok_or_else(|| {
                    BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!(
                            "{what}: the answer is not a ListBucketResult: {}",
                            http::snippet(&body)
                        ),
                        "retry later; if it persists check that ship.s3.endpoint is an S3 service",
                    )
                })
            })?;
            for c in page.contents {
                let Some(key) = c.key.strip_prefix(&self.cfg.prefix) else {
                    continue;
                };
                if key.is_empty() || key.ends_with('/') {
                    continue;
                }
                let modified = humantime::parse_rfc3339_weak(c.last_modified.trim())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                out.push(RemoteObject {
                    key: key.to_string(),
                    size: c.size,
                    modified,
                });
            }
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(t)) if Some(&t) != token.as_ref() => token = Some(t),
                (true, _) => {
                    return Err(BackendError::new(
                        NAME,
                        ErrorKind::Other,
                        format!(
                            "list {full_prefix:?}: the listing is truncated but gives no new continuation token"
                        ),
                        "the endpoint's ListObjectsV2 is broken; check ship.s3.endpoint",
                    ));
                }
                (false, _) => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
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
        if self.cfg.share_expiry_secs == 0 {
            return Ok(None);
        }
        if self.signer.credentials.session_token.is_some() {
            // A presigned URL made with temporary credentials must carry
            // the session token, a secret that would end up in the CI log.
            tracing::info!(
                target: "ferry::s3",
                "no share URL for {full}: the credentials are temporary (AWS_SESSION_TOKEN) and the URL would hold the token"
            );
            return Ok(None);
        }
        let path = self.path_of(Some(&full));
        let query = self.signer.presign(
            "GET",
            &self.cfg.host,
            &path,
            self.cfg.share_expiry_secs,
            SystemTime::now(),
        );
        Ok(Some(format!(
            "{}://{}{path}?{query}",
            self.cfg.base.scheme(),
            self.cfg.host
        )))
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
    fn presigned_query_holds_no_secret_key() {
        let b = backend("p");
        let path = b.path_of(Some("p/k.tar.gz"));
        let q = b
            .signer
            .presign("GET", &b.cfg.host, &path, 3600, SystemTime::now());
        assert!(q.contains("X-Amz-Expires=3600"), "{q}");
        assert!(!q.contains("SECRETKEY"));
    }

    #[test]
    fn hashing_stops_at_the_limit() {
        let data = vec![7u8; 3 * BUF + 5];
        let mut r = &data[..];
        assert_eq!(
            hash_reader(&mut r, 2 * BUF as u64 + 1).unwrap(),
            <[u8; 32]>::from(Sha256::digest(&data[..2 * BUF + 1]))
        );
        assert_eq!(r.len(), BUF + 4);
    }
}
