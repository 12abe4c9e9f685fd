//! `put`: one `files/upload` for a small bundle, an upload session for a
//! large one, both streamed from disk, both idempotent.
//!
//! Idempotence: an existing file under the key with our `content_hash` is
//! the receipt (nothing sent); commits use `mode: add` without autorename,
//! so a different file under the key is a conflict, never an overwrite or
//! a `name (2)` copy. Dropbox answers a commit of identical content with
//! success, so replaying an upload whose answer was lost is safe.
//!
//! Sessions: chunks lie on a grid of `chunk_mib` (a multiple of 4 MiB);
//! `offset` is what the server holds. An `incorrect_offset` (an earlier
//! answer lost) moves it to the server's `correct_offset` and the upload
//! goes on from there, the bytes re-read from the file: no chunk is held
//! in memory.

use std::path::Path;

use serde_json::{Value, json};

use super::api::{FileRange, progress_to};
use super::content_hash::FileDigest;
use super::error::RouteError;
use super::{DropboxBackend, NAME};
use crate::backends::{BackendError, ErrorKind, Receipt};
use crate::progress::Progress;

/// Resyncs one session may take before the server is not believed.
const MAX_RESYNCS: u32 = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    Start,
    Append,
    Finish,
}

impl Step {
    fn route(self) -> &'static str {
        match self {
            Step::Start => "files/upload_session/start",
            Step::Append => "files/upload_session/append_v2",
            Step::Finish => "files/upload_session/finish",
        }
    }
}

/// One bundle being put.
struct Job<'a> {
    key: &'a str,
    path: &'a str,
    src: &'a Path,
    digest: &'a FileDigest,
    progress: &'a Progress,
}

/// The end of the request that starts at `offset`: the next line of the
/// chunk grid (so a resync in mid-chunk realigns), or the end of the file.
pub(super) fn request_end(offset: u64, size: u64, chunk: u64) -> u64 {
    ((offset / chunk + 1) * chunk).min(size)
}

impl DropboxBackend {
    pub(super) fn put_file(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        let path = self.path_of(key)?;
        let digest = FileDigest::of_file(src).map_err(|e| {
            BackendError::from_io(NAME, format!("cannot read {}", src.display()), e)
        })?;
        if let Some(meta) = self.existing(key, &path, &digest)? {
            tracing::info!(target: "ferry::dropbox", key, "already in Dropbox with the same content; not uploaded again");
            return Ok(self.receipt(key, &path, &meta, &digest));
        }
        let progress = Progress::new(format!("dropbox put {key}"), digest.size);
        let job = Job {
            key,
            path: &path,
            src,
            digest: &digest,
            progress: &progress,
        };
        let committed = if digest.size <= self.cfg.cutoff_bytes() {
            self.single(&job)
        } else {
            self.session(&job)
        };
        progress.finish();
        let meta = committed?;
        self.verify(key, &meta, &digest)?;
        Ok(self.receipt(key, &path, &meta, &digest))
    }

    fn commit_info(path: &str) -> Value {
        json!({"path": path, "mode": "add", "autorename": false, "mute": true, "strict_conflict": false})
    }

    fn single(&self, job: &Job<'_>) -> Result<Value, BackendError> {
        let mut arg = Self::commit_info(job.path);
        arg["content_hash"] = json!(job.digest.content_hash);
        let range = FileRange {
            path: job.src,
            start: 0,
            len: job.digest.size,
            progress: Some(job.progress),
        };
        let what = format!("upload {}", job.key);
        let mut hash_retried = false;
        loop {
            let reply = self.retry.run(&what, |_| {
                self.api.upload("files/upload", &arg, &range, &what)
            })?;
            match reply {
                Ok(meta) => return Ok(meta),
                Err(r) if r.has("content_hash_mismatch") && !hash_retried => {
                    hash_retried = true;
                    tracing::warn!(target: "ferry::dropbox", key = job.key, "Dropbox received damaged bytes; sending again");
                }
                Err(r) if r.has("conflict") => {
                    return self.settle_conflict(job.key, job.path, job.digest, r);
                }
                Err(r) => return Err(r.into_error(&what)),
            }
        }
    }

    fn session(&self, job: &Job<'_>) -> Result<Value, BackendError> {
        let size = job.digest.size;
        let chunk = self.cfg.chunk_bytes();
        let mut session: Option<String> = None;
        let mut offset = 0u64;
        let mut resyncs = 0u32;
        let mut hash_retried = false;
        loop {
            let step = match &session {
                None => Step::Start,
                Some(_) if size - offset <= chunk => Step::Finish,
                Some(_) => Step::Append,
            };
            let end = match step {
                Step::Finish => size,
                _ => request_end(offset, size, chunk),
            };
            let mut arg = match (&session, step) {
                // A start that holds the whole file closes the session, so
                // no request that leaves it open carries a partial block.
                (None, _) => json!({"close": end == size}),
                (Some(id), Step::Finish) => json!({
                    "cursor": {"session_id": id, "offset": offset},
                    "commit": Self::commit_info(job.path),
                }),
                (Some(id), _) => json!({
                    "cursor": {"session_id": id, "offset": offset},
                    "close": false,
                }),
            };
            // A range that does not start on a block needs the file read
            // again to hash; the final whole-file comparison covers it.
            if let Some(h) = job.digest.range_hash(offset, end) {
                arg["content_hash"] = json!(h);
            }
            let range = FileRange {
                path: job.src,
                start: offset,
                len: end - offset,
                progress: Some(job.progress),
            };
            let what = format!(
                "{} {} at byte {offset}",
                step.route().trim_start_matches("files/"),
                job.key
            );
            let reply = self.retry.run(&what, |_| {
                self.api.upload(step.route(), &arg, &range, &what)
            })?;
            let r = match reply {
                Ok(v) => match step {
                    Step::Start => {
                        let id = v.get("session_id").and_then(Value::as_str).ok_or_else(|| {
                            BackendError::new(
                                NAME,
                                ErrorKind::Unavailable,
                                format!("{what}: the answer holds no session_id"),
                                "retry later",
                            )
                        })?;
                        session = Some(id.to_string());
                        offset = end;
                        progress_to(job.progress, offset);
                        continue;
                    }
                    Step::Append => {
                        offset = end;
                        progress_to(job.progress, offset);
                        continue;
                    }
                    Step::Finish => return Ok(v),
                },
                Err(r) => r,
            };
            if r.has("content_hash_mismatch") && !hash_retried {
                hash_retried = true;
                tracing::warn!(target: "ferry::dropbox", key = job.key, offset, "Dropbox received damaged bytes; sending again");
                continue;
            }
            if let Some(correct) = r.correct_offset() {
                resyncs += 1;
                if correct > end || resyncs > MAX_RESYNCS {
                    return Err(BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!(
                            "{what}: Dropbox says the session holds {correct} bytes, which ferry cannot reconcile (sent up to {end}, {resyncs} resyncs)"
                        ),
                        "ship the bundle again; a new upload session starts from the beginning",
                    ));
                }
                tracing::info!(target: "ferry::dropbox", key = job.key, offset, correct, "upload session resynced to the server's offset");
                offset = correct;
                progress_to(job.progress, offset);
                continue;
            }
            if step == Step::Finish && r.has("conflict") {
                return self.settle_conflict(job.key, job.path, job.digest, r);
            }
            if step == Step::Finish && r.is(&["lookup_failed"]) {
                // The answer to an earlier finish may have been lost after
                // the commit: then the file is there, with our content.
                if let Some(meta) = self.existing(job.key, job.path, job.digest)? {
                    return Ok(meta);
                }
            }
            if r.has("not_found") && step != Step::Start {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: Dropbox no longer knows the upload session (HTTP 409 {})",
                        r.chain()
                    ),
                    "ship the bundle again: a new session starts from the beginning",
                ));
            }
            return Err(r.into_error(&what));
        }
    }

    /// A commit met a file already at the path: ours if its content is.
    fn settle_conflict(
        &self,
        key: &str,
        path: &str,
        digest: &FileDigest,
        r: RouteError,
    ) -> Result<Value, BackendError> {
        match self.existing(key, path, digest) {
            Ok(Some(meta)) => Ok(meta),
            Ok(None) => Err(r.into_error(&format!("upload {key}"))),
            Err(e) => Err(e),
        }
    }

    /// The file under `path` when it holds our content; `None` when there
    /// is nothing; a conflict when something else is there.
    pub(super) fn existing(
        &self,
        key: &str,
        path: &str,
        digest: &FileDigest,
    ) -> Result<Option<Value>, BackendError> {
        let Some(meta) = self.metadata(key, path)? else {
            return Ok(None);
        };
        let tag = meta.get(".tag").and_then(Value::as_str).unwrap_or("file");
        let hash = meta.get("content_hash").and_then(Value::as_str);
        if tag == "file" && hash == Some(digest.content_hash.as_str()) {
            return Ok(Some(meta));
        }
        let what = if tag == "file" {
            format!(
                "a different file ({} bytes, content_hash {}) is already stored under {key}",
                meta.get("size").and_then(Value::as_u64).unwrap_or(0),
                hash.unwrap_or("?")
            )
        } else {
            format!("a {tag} is already stored under {key}")
        };
        Err(BackendError::new(
            NAME,
            ErrorKind::Conflict,
            format!("{what} (Dropbox path {path})"),
            "ferry never overwrites: remove it from Dropbox or ship under another key",
        ))
    }

    fn verify(&self, key: &str, meta: &Value, digest: &FileDigest) -> Result<(), BackendError> {
        let hash = meta.get("content_hash").and_then(Value::as_str);
        let size = meta.get("size").and_then(Value::as_u64);
        if hash == Some(digest.content_hash.as_str()) && size == Some(digest.size) {
            return Ok(());
        }
        Err(BackendError::new(
            NAME,
            ErrorKind::Other,
            format!(
                "upload {key}: Dropbox stored {} bytes with content_hash {}, ferry sent {} bytes with {}",
                size.map_or("?".into(), |s| s.to_string()),
                hash.unwrap_or("?"),
                digest.size,
                digest.content_hash
            ),
            "the bundle changed while it was uploaded; remove the Dropbox copy and ship again",
        ))
    }

    fn receipt(&self, key: &str, path: &str, meta: &Value, digest: &FileDigest) -> Receipt {
        let shown = meta
            .get("path_display")
            .and_then(Value::as_str)
            .unwrap_or(path);
        Receipt {
            backend: NAME.to_string(),
            key: key.to_string(),
            location: format!("dropbox:{shown}"),
            size: digest.size,
            sha256: digest.sha256.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_follow_the_chunk_grid() {
        let m = 1 << 20;
        let chunk = 8 * m;
        assert_eq!(request_end(0, 100 * m, chunk), 8 * m);
        assert_eq!(request_end(8 * m, 100 * m, chunk), 16 * m);
        // A resync in mid-chunk goes only to the next grid line.
        assert_eq!(request_end(9 * m, 100 * m, chunk), 16 * m);
        assert_eq!(request_end(96 * m, 100 * m, chunk), 100 * m);
        assert_eq!(request_end(0, 3, chunk), 3);
    }
}
