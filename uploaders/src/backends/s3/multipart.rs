//! Multipart upload: create, parts in parallel, complete — or abort.
//!
//! Memory stays small whatever the bundle: a worker hashes its part from
//! the file (1 MiB buffer) and then streams the same range as the body,
//! so `concurrency` parts in flight cost `concurrency` buffers, not
//! `concurrency` parts. Any part that fails for good stops the others and
//! aborts the upload so no orphaned parts stay behind (and billed).

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, StatusCode};

use super::put::{Source, hash_range, recheck};
use super::request::{Call, Payload, with_progress};
use super::xml::{self, CompletedPart};
use super::{B64, NAME, S3Backend, errors};
use crate::backends::http;
use crate::backends::{BackendError, ErrorKind};
use crate::progress::Progress;

/// How a complete ended.
enum Completed {
    Stored,
    /// The conditional write found the key taken.
    Taken,
}

/// Uploads `path` (described by `src`) as `full` in parts. `Ok(false)`
/// when a conditional write found the key taken.
pub(super) fn upload(
    b: &S3Backend,
    full: &str,
    path: &Path,
    src: &Source,
    progress: &Progress,
) -> Result<bool, BackendError> {
    let part_size = b.cfg.part_size_for(src.size);
    let count = u32::try_from(src.size.div_ceil(part_size).max(1)).map_err(|_| {
        BackendError::new(
            NAME,
            ErrorKind::Config,
            format!("{full}: too many parts"),
            "raise ship.s3.part_size_mib",
        )
    })?;
    let upload_id = create(b, full, src)?;
    tracing::debug!(target: "ferry::s3", key = full, parts = count, part_size, "multipart upload started");
    let result = upload_parts(
        b, full, path, &upload_id, part_size, count, src.size, progress,
    )
    .and_then(|parts| {
        b.unchanged(path, src)?;
        complete(b, full, src, &upload_id, parts)
    });
    match result {
        Ok(Completed::Stored) => Ok(true),
        Ok(Completed::Taken) => {
            abort(b, full, &upload_id);
            Ok(false)
        }
        Err(e) => {
            abort(b, full, &upload_id);
            Err(e)
        }
    }
}

/// CreateMultipartUpload: the upload id. A retry after a lost answer
/// leaves an empty upload behind (no parts, nothing billed but the entry).
fn create(b: &S3Backend, full: &str, src: &Source) -> Result<String, BackendError> {
    let what = format!("start the multipart upload of {full}");
    b.retry.run(&what, |_| {
        let mut call = Call::new(Method::POST, Some(full)).query("uploads", "");
        call.headers = S3Backend::object_headers(full, src);
        call.headers
            .push(("x-amz-checksum-algorithm".into(), "SHA256".into()));
        let resp = b.send(&what, call)?;
        let body = b.ok_body(&what, resp)?;
        xml::parse::<xml::InitiateResult>(&body, "InitiateMultipartUploadResult")
            .map(|r| r.upload_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: the answer holds no UploadId: {}",
                        http::snippet(&body)
                    ),
                    "retry later; if it persists check that ship.s3.endpoint is an S3 service",
                )
            })
    })
}

/// Every part, `concurrency` at a time; the first lasting failure stops
/// the others and is the result.
#[allow(clippy::too_many_arguments)]
fn upload_parts(
    b: &S3Backend,
    full: &str,
    path: &Path,
    upload_id: &str,
    part_size: u64,
    count: u32,
    size: u64,
    progress: &Progress,
) -> Result<Vec<CompletedPart>, BackendError> {
    let next = AtomicU32::new(1);
    let failed = AtomicBool::new(false);
    let done: Mutex<Vec<Option<CompletedPart>>> = Mutex::new(vec![None; count as usize]);
    let first_error: Mutex<Option<BackendError>> = Mutex::new(None);
    let workers = b.cfg.concurrency.min(count as usize).max(1);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n > count {
                        break;
                    }
                    let offset = u64::from(n - 1) * part_size;
                    let len = part_size.min(size - offset);
                    match upload_part(b, full, path, upload_id, n, offset, len, progress) {
                        Ok(part) => {
                            if let Ok(mut d) = done.lock() {
                                d[(n - 1) as usize] = Some(part);
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            if let Ok(mut f) = first_error.lock() {
                                f.get_or_insert(e);
                            }
                            break;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    let parts: Option<Vec<CompletedPart>> =
        done.into_inner().ok().and_then(|d| d.into_iter().collect());
    parts.ok_or_else(|| {
        BackendError::new(
            NAME,
            ErrorKind::Other,
            format!("upload of {full}: a part went missing"),
            "retry the upload (this is a bug in ferry if it repeats)",
        )
    })
}

/// One UploadPart with its retries: hashed first, then streamed from the
/// file with that hash as payload hash and checksum.
#[allow(clippy::too_many_arguments)]
fn upload_part(
    b: &S3Backend,
    full: &str,
    path: &Path,
    upload_id: &str,
    n: u32,
    offset: u64,
    len: u64,
    progress: &Progress,
) -> Result<CompletedPart, BackendError> {
    let what = format!("upload part {n} of {full}");
    let digest = hash_range(path, offset, len)?;
    let checksum = B64.encode(digest);
    let number = n.to_string();
    b.retry.run(&what, |attempt| {
        if attempt > 1 {
            b.probe(full)?;
        }
        with_progress(progress, |sent| {
            let mut call = Call::new(Method::PUT, Some(full))
                .query("partNumber", &number)
                .query("uploadId", upload_id)
                .header("x-amz-checksum-sha256", &checksum);
            call.payload = Payload::File {
                path,
                offset,
                len,
                progress: Some(progress.clone()),
                sent: sent.clone(),
            };
            call.payload_sha256 = hex::encode(digest);
            call.timeout = http::transfer_timeout(b.timeouts, len);
            let resp = b.send(&what, call)?;
            if !resp.status().is_success() {
                let (code, e) = b.failure(&what, resp);
                return Err(match code.as_deref() {
                    Some(c) if errors::is_digest_error(c) => recheck(path, offset, len, &digest, e),
                    _ => e,
                });
            }
            let etag = resp
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!("{what}: the answer has no ETag"),
                        "retry later; if it persists the endpoint is not S3-compatible",
                    )
                })?;
            Ok(CompletedPart {
                part_number: n,
                etag,
                checksum_sha256: checksum.clone(),
            })
        })
    })
}

/// CompleteMultipartUpload with its retries. Its answer can be a 200
/// whose body is an `<Error>`; and when an earlier attempt's answer was
/// lost the service may refuse the repeat (`NoSuchUpload`, or s3s-fs's
/// `AccessDenied`) although the object is there: then the object decides.
fn complete(
    b: &S3Backend,
    full: &str,
    src: &Source,
    upload_id: &str,
    parts: Vec<CompletedPart>,
) -> Result<Completed, BackendError> {
    let what = format!("complete the multipart upload of {full}");
    let body = xml::complete_body(parts).map_err(|e| {
        BackendError::new(
            NAME,
            ErrorKind::Other,
            format!("{what}: cannot write the part list: {e}"),
            "this is a bug in ferry",
        )
    })?;
    b.retry.run(&what, |attempt| {
        let resp = b.conditional_write(&what, |cond| {
            let mut call = Call::new(Method::POST, Some(full))
                .query("uploadId", upload_id)
                .header("content-type", "application/xml")
                .bytes(body.clone().into_bytes());
            if cond {
                call.headers.push(("if-none-match".into(), "*".into()));
            }
            // Assembling the object takes the service a while: allow a
            // server-side copy at 16 MiB/s on top of the request timeout.
            call.timeout = b.timeouts.request + Duration::from_secs(src.size >> 24);
            b.send(&what, call)
        })?;
        let status = resp.status();
        if status == StatusCode::PRECONDITION_FAILED {
            return Ok(Completed::Taken);
        }
        let headers = resp.headers().clone();
        let answer = http::read_body(NAME, &what, resp, super::SMALL_BODY)?;
        let failure = if status.is_success() {
            match xml::root_name(&answer).as_deref() {
                Some("CompleteMultipartUploadResult") => return Ok(Completed::Stored),
                Some("Error") => {
                    errors::from_answer(&what, status, &headers, &answer, &b.context())
                }
                _ => BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: HTTP {status} with an unreadable answer: {}",
                        http::snippet(&answer)
                    ),
                    "retried; if it persists check that ship.s3.endpoint is an S3 service",
                ),
            }
        } else {
            errors::from_answer(&what, status, &headers, &answer, &b.context())
        };
        if attempt > 1
            && !failure.is_transient()
            && let Some(info) = b.head(full)?
            && info.sha256.as_deref() == Some(src.hex().as_str())
            && info.size == src.size
        {
            return Ok(Completed::Stored);
        }
        Err(failure)
    })
}

/// AbortMultipartUpload, best effort: a failure is logged with the upload
/// id so it can be cleaned up by hand (or by a lifecycle rule).
fn abort(b: &S3Backend, full: &str, upload_id: &str) {
    let what = format!("abort the multipart upload of {full}");
    let r = b.retry.run(&what, |_| {
        let call = Call::new(Method::DELETE, Some(full)).query("uploadId", upload_id);
        let resp = b.send(&what, call)?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(b.error_of(&what, resp))
    });
    match r {
        Ok(()) => tracing::debug!(target: "ferry::s3", key = full, "multipart upload aborted"),
        Err(e) => tracing::warn!(
            target: "ferry::s3",
            key = full,
            upload_id,
            "{e}; the upload's parts may stay in the bucket until a lifecycle rule (AbortIncompleteMultipartUpload) removes them"
        ),
    }
}
