//! GetObject into a local file: streamed to a temporary file beside the
//! destination, resumed with `Range: bytes=<got>-` after a broken
//! connection (`If-Match` on the ETag, so a replaced object is never
//! spliced onto the old one's start), verified against the SHA-256 the
//! object was stored with, then renamed into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};

use super::lookup::ObjectInfo;
use super::request::Call;
use super::{BUF, NAME, S3Backend};
use crate::backends::http;
use crate::backends::{BackendError, ErrorKind};
use crate::progress::Progress;

/// Fetches `full` into `dest` (replaced atomically).
pub(super) fn get(b: &S3Backend, full: &str, dest: &Path) -> Result<(), BackendError> {
    let Some(info) = b.head(full)? else {
        b.check_bucket()?;
        return Err(not_found(b, full));
    };
    let tmp = crate::backends::tmp_beside(dest);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(|e| BackendError::from_io(NAME, format!("cannot create {}", tmp.display()), e))?;
    let progress = Progress::new(format!("s3 get {full}"), info.size);
    let mut state = State {
        file,
        hasher: Sha256::new(),
        got: 0,
        info,
        stale: false,
    };
    let result = fetch(b, full, &mut state, &progress).and_then(|()| finish(state, &tmp, dest));
    progress.finish();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn not_found(b: &S3Backend, full: &str) -> BackendError {
    BackendError::new(
        NAME,
        ErrorKind::NotFound,
        format!("no object under key {full:?} in bucket {:?}", b.cfg.bucket),
        "list the bundles with `ferry pull` and check the key (and ship.s3.bucket / ship.s3.prefix)",
    )
}

struct State {
    file: File,
    hasher: Sha256,
    /// Bytes written to the file so far.
    got: u64,
    /// What the object was when this download (re)started.
    info: ObjectInfo,
    /// The object changed under us: look it up again and start over.
    stale: bool,
}

impl State {
    fn restart(&mut self, progress: &Progress) -> io::Result<()> {
        progress.rewind(self.got);
        self.got = 0;
        self.hasher = Sha256::new();
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok(())
    }
}

fn fetch(
    b: &S3Backend,
    full: &str,
    st: &mut State,
    progress: &Progress,
) -> Result<(), BackendError> {
    let what = format!("get {full}");
    let local = |e: io::Error| BackendError::from_io(NAME, "cannot write the download", e);
    b.retry.run(&what, |_| {
        if st.stale {
            st.info = b.head(full)?.ok_or_else(|| not_found(b, full))?;
            st.restart(progress).map_err(local)?;
            st.stale = false;
        }
        if st.got == st.info.size && st.got > 0 {
            return verify(st, full, progress);
        }
        let mut call = Call::new(Method::GET, Some(full));
        if st.got > 0 {
            call = call.header("range", &format!("bytes={}-", st.got));
        }
        if let Some(etag) = &st.info.etag {
            call = call.header("if-match", etag);
        }
        call.timeout = http::transfer_timeout(b.timeouts, st.info.size - st.got);
        let resp = b.send(&what, call)?;
        match resp.status() {
            StatusCode::OK if st.got > 0 => {
                // The service ignored the range: take the whole again.
                st.restart(progress).map_err(local)?;
            }
            StatusCode::PARTIAL_CONTENT if range_start(&resp) != Some(st.got) => {
                st.stale = true;
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: the service sent another range than bytes={}-",
                        st.got
                    ),
                    "downloading again from the start",
                ));
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
            StatusCode::PRECONDITION_FAILED => {
                st.stale = true;
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!("{what}: the object was replaced during the download"),
                    "downloading the new object from the start",
                ));
            }
            _ => return Err(b.error_of(&what, resp)),
        }
        let mut body = resp;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!(
                            "{what}: the connection broke after {} of {} bytes: {e}",
                            st.got, st.info.size
                        ),
                        "resuming from there",
                    ));
                }
            };
            if st.got + n as u64 > st.info.size {
                st.stale = true;
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: more bytes than the object's {} arrived",
                        st.info.size
                    ),
                    "downloading again from the start",
                ));
            }
            st.file.write_all(&buf[..n]).map_err(local)?;
            st.hasher.update(&buf[..n]);
            st.got += n as u64;
            progress.advance(n as u64);
        }
        if st.got < st.info.size {
            return Err(BackendError::new(
                NAME,
                ErrorKind::Unavailable,
                format!(
                    "{what}: the answer ended after {} of {} bytes",
                    st.got, st.info.size
                ),
                "resuming from there",
            ));
        }
        verify(st, full, progress)
    })
}

/// The first byte of a 206 answer's `Content-Range: bytes A-B/T`.
fn range_start(resp: &reqwest::blocking::Response) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// Compares what arrived with the SHA-256 the object was stored with.
fn verify(st: &mut State, full: &str, progress: &Progress) -> Result<(), BackendError> {
    let Some(want) = st.info.content_sha256().map(str::to_string) else {
        tracing::debug!(target: "ferry::s3", key = full, "no stored SHA-256 to verify against; size checked only");
        return Ok(());
    };
    let have = hex::encode(std::mem::take(&mut st.hasher).finalize());
    if have == want {
        return Ok(());
    }
    st.restart(progress)
        .map_err(|e| BackendError::from_io(NAME, "cannot write the download", e))?;
    Err(BackendError::new(
        NAME,
        ErrorKind::Unavailable,
        format!("get {full}: the downloaded bytes hash to {have}, not the stored {want}"),
        "downloading again; if it persists the object is damaged in the bucket",
    ))
}

/// Makes the download durable and puts it in place.
fn finish(st: State, tmp: &Path, dest: &Path) -> Result<(), BackendError> {
    st.file
        .sync_all()
        .map_err(|e| BackendError::from_io(NAME, format!("cannot fsync {}", tmp.display()), e))?;
    drop(st);
    fs::rename(tmp, dest).map_err(|e| {
        BackendError::from_io(
            NAME,
            format!("cannot rename {} to {}", tmp.display(), dest.display()),
            e,
        )
    })?;
    let parent = crate::paths::dir_of(dest);
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackendError::from_io(NAME, format!("cannot fsync {}", parent.display()), e))
}
