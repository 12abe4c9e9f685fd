//! Putting a bundle: hash it, look the key up (same content: done; other
//! content: conflict), then one PutObject or a multipart upload, and make
//! sure the file did not change meanwhile.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use base64::Engine;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use super::lookup::ObjectInfo;
use super::request::{Call, Payload, with_progress};
use super::{B64, BUF, NAME, S3Backend, errors, multipart};
use crate::backends::http;
use crate::backends::{BackendError, ErrorKind, Receipt};
use crate::progress::Progress;

/// Size, mtime and SHA-256 of a local file.
pub(super) struct Source {
    pub(super) size: u64,
    modified: Option<SystemTime>,
    pub(super) sha256: [u8; 32],
}

impl Source {
    pub(super) fn hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Stores `src` under `key` (the prefix not yet added).
pub(super) fn put(b: &S3Backend, key: &str, src: &Path) -> Result<Receipt, BackendError> {
    let full = b.full_key(key);
    let source = b.read_source(src)?;
    b.check_bucket()?;
    if let Some(info) = b.head(&full)? {
        tracing::info!(target: "ferry::s3", key = %full, "already stored; comparing");
        return b.settle_existing(key, &full, &info, &source);
    }
    let progress = Progress::new(format!("s3 put {full}"), source.size);
    let stored = if source.size < b.cfg.multipart_threshold {
        b.put_single(&full, src, &source, &progress)
    } else {
        multipart::upload(b, &full, src, &source, &progress)
    };
    progress.finish();
    if !stored? {
        // Taken meanwhile: by an earlier attempt of ours whose answer
        // was lost, or by someone else.
        return match b.head(&full)? {
            Some(info) => b.settle_existing(key, &full, &info, &source),
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
    b.unchanged(src, &source)?;
    Ok(b.receipt(key, &full, &source))
}

impl S3Backend {
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

    /// Fails when `src` is not what [`Self::read_source`] saw: a bundle must not
    /// change while it is uploaded.
    pub(super) fn unchanged(&self, src: &Path, seen: &Source) -> Result<(), BackendError> {
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
    pub(super) fn object_headers(full: &str, src: &Source) -> Vec<(String, String)> {
        vec![
            (
                "content-type".into(),
                super::super::content_type_of(full).into(),
            ),
            ("x-amz-meta-sha256".into(), src.hex()),
        ]
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
}

/// After the service found our bytes corrupt: if the file now hashes
/// differently it changed under us (permanent); else the bytes were
/// damaged on the way and the retry may pass.
pub(super) fn recheck(
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
pub(super) fn hash_range(path: &Path, offset: u64, len: u64) -> Result<[u8; 32], BackendError> {
    let io = |e| BackendError::from_io(NAME, format!("cannot read {}", path.display()), e);
    let mut f = File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(offset)).map_err(io)?;
    hash_reader(&mut f, len).map_err(io)
}

/// SHA-256 of the next `limit` bytes of `r` (all of it with `u64::MAX`).
pub(super) fn hash_reader(r: &mut impl Read, limit: u64) -> io::Result<[u8; 32]> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
