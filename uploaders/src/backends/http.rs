//! What every HTTP backend shares: one blocking client setup, the mapping
//! from HTTP answers and transport failures to [`ErrorKind`], `Retry-After`,
//! and request bodies streamed from a file (memory bounded whatever the
//! bundle's size, re-opened for every attempt so a retry can resend).
//!
//! Errors built here never carry a URL (presigned and SAS URLs hold
//! signatures) nor a request header (tokens); a response body is cut to a
//! short snippet.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::blocking::{Body, Client};
use reqwest::header::HeaderMap;

use super::{BackendError, ErrorKind};
use crate::progress::Progress;

/// The `User-Agent` of every request (GitHub refuses requests without one).
pub const USER_AGENT: &str = concat!("ferry/", env!("CARGO_PKG_VERSION"));

/// Longest piece of a response body kept in an error message.
const SNIPPET: usize = 400;

/// Timeouts of one backend's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// A whole request without a body worth mentioning (listings, commits).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(60),
        }
    }
}

/// A blocking client for `backend`: rustls with the system's roots, our
/// user agent, bounded connect and request times. Redirects are not
/// followed: a backend that expects one follows it itself, so no header
/// meant for the API host reaches another.
pub fn client(backend: &str, timeouts: Timeouts) -> Result<Client, BackendError> {
    Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            BackendError::new(
                backend,
                ErrorKind::Config,
                format!("cannot set up the HTTP client: {}", e.without_url()),
                "check the system's TLS trust store (ca-certificates)",
            )
        })
}

/// How long to wait before a transfer of `bytes` may be called stuck: the
/// request timeout plus one second per 256 KiB (a slow 256 KiB/s link).
pub fn transfer_timeout(timeouts: Timeouts, bytes: u64) -> Duration {
    timeouts.request + Duration::from_secs(bytes / (256 * 1024))
}

/// A transport failure (no HTTP answer, or an answer cut short) of `what`.
pub fn transport_error(backend: &str, what: &str, e: reqwest::Error) -> BackendError {
    let (kind, fix) = if e.is_builder() {
        (
            ErrorKind::Config,
            "check the backend's endpoint URL in the configuration",
        )
    } else if e.is_timeout() {
        (
            ErrorKind::Unavailable,
            "the service did not answer in time; retry later or check the network",
        )
    } else if e.is_connect() {
        (
            ErrorKind::Unavailable,
            "the service cannot be reached; check the endpoint and the network",
        )
    } else {
        (
            ErrorKind::Unavailable,
            "the connection failed mid-request; retry later",
        )
    };
    let e = e.without_url();
    BackendError::new(backend, kind, format!("{what}: {}", chain(&e)), fix).with_source(e)
}

/// `e` and its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The kind an HTTP status means when the backend has nothing more
/// specific to say (its own error codes come first).
pub fn kind_of_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        401 => ErrorKind::Auth,
        403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        409 | 412 => ErrorKind::Conflict,
        408 | 425 | 500 | 502 | 503 | 504 => ErrorKind::Unavailable,
        429 => ErrorKind::RateLimited,
        507 => ErrorKind::NoSpace,
        s if s >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    }
}

/// A generic fix line for a kind, used when the backend has no better one.
pub fn generic_fix(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Auth => {
            "check the backend's credentials (token or keys) and that they are not expired"
        }
        ErrorKind::PermissionDenied => "give the credentials write/read access to the target",
        ErrorKind::NotFound => "check the bucket, folder or key",
        ErrorKind::Conflict => "another object holds this key; choose another key or remove it",
        ErrorKind::RateLimited => "the service is throttling; retry later",
        ErrorKind::Unavailable => "the service failed; retry later",
        ErrorKind::NoSpace => "free space (or quota) on the backend",
        ErrorKind::Config => "check the backend's configuration",
        ErrorKind::InvalidKey => "use a plain relative key",
        ErrorKind::Other => "see the message above",
    }
}

/// An HTTP answer that is not a success, as an error: kind from the status
/// (or `kind` when given), `Retry-After` kept, a snippet of the body.
pub fn status_error(
    backend: &str,
    what: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    kind: Option<ErrorKind>,
    fix: Option<&str>,
) -> BackendError {
    let kind = kind.unwrap_or_else(|| kind_of_status(status));
    let mut message = format!("{what}: HTTP {}", status.as_u16());
    let snippet = snippet(body);
    if !snippet.is_empty() {
        message.push_str(": ");
        message.push_str(&snippet);
    }
    let mut e = BackendError::new(
        backend,
        kind,
        message,
        fix.unwrap_or_else(|| generic_fix(kind)),
    );
    if let Some(d) = retry_after(headers) {
        e = e.with_retry_after(d);
    }
    e
}

/// The start of a response body on one line, printable characters only.
pub fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET)]);
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.len() > SNIPPET {
        s.push('…');
    }
    s
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3); an
/// unreadable or past value is ignored.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    when.duration_since(SystemTime::now()).ok()
}

/// Reads a whole response body, bounded: a server that answers a small
/// call with a huge body is cut off rather than filling memory. A body
/// that breaks off is transient: the answer was lost, not refused.
pub fn read_body(
    backend: &str,
    what: &str,
    resp: reqwest::blocking::Response,
    limit: u64,
) -> Result<Vec<u8>, BackendError> {
    let mut buf = Vec::new();
    resp.take(limit).read_to_end(&mut buf).map_err(|e| {
        BackendError::new(
            backend,
            ErrorKind::Unavailable,
            format!(
                "{what}: the answer broke off after {} bytes: {e}",
                buf.len()
            ),
            "the connection failed mid-answer; retry later",
        )
        .with_source(e)
    })?;
    Ok(buf)
}

/// `len` bytes of the file at `path` from `offset`, as a request body with
/// a `Content-Length`, read as it is sent. Opened anew for every call, so
/// each attempt of a retry sends the same bytes.
pub fn file_body(
    backend: &str,
    path: &Path,
    offset: u64,
    len: u64,
    progress: Option<Progress>,
) -> Result<Body, BackendError> {
    file_body_counted(backend, path, offset, len, progress).map(|(body, _)| body)
}

/// How many bytes of a [`file_body_counted`] body were read so far: what a
/// failed attempt takes back from the progress display before the retry.
#[derive(Debug, Clone, Default)]
pub struct Sent(Arc<AtomicU64>);

impl Sent {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter the caller already shares with its retry bookkeeping.
impl From<Arc<AtomicU64>> for Sent {
    fn from(counter: Arc<AtomicU64>) -> Self {
        Sent(counter)
    }
}

/// [`file_body`], and a counter of the bytes it has read.
pub fn file_body_counted(
    backend: &str,
    path: &Path,
    offset: u64,
    len: u64,
    progress: Option<Progress>,
) -> Result<(Body, Sent), BackendError> {
    let sent = Sent::default();
    file_body_into(backend, path, offset, len, progress, sent.clone()).map(|b| (b, sent))
}

/// [`file_body`] that adds the bytes it reads into `sent`.
pub fn file_body_into(
    backend: &str,
    path: &Path,
    offset: u64,
    len: u64,
    progress: Option<Progress>,
    sent: Sent,
) -> Result<Body, BackendError> {
    let mut f = File::open(path).map_err(|e| {
        BackendError::from_io(backend, format!("cannot open {}", path.display()), e)
    })?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| {
        BackendError::from_io(backend, format!("cannot seek in {}", path.display()), e)
    })?;
    let reader = CountingReader {
        inner: f.take(len),
        progress,
        sent,
    };
    Ok(Body::sized(reader, len))
}

/// Counts the bytes a request body has read into a progress display.
struct CountingReader<R> {
    inner: R,
    progress: Option<Progress>,
    sent: Sent,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent.0.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(p) = &self.progress {
            p.advance(n as u64);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("17"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(17)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_map_to_kinds() {
        for (code, kind) in [
            (401, ErrorKind::Auth),
            (403, ErrorKind::PermissionDenied),
            (404, ErrorKind::NotFound),
            (409, ErrorKind::Conflict),
            (429, ErrorKind::RateLimited),
            (500, ErrorKind::Unavailable),
            (503, ErrorKind::Unavailable),
            (400, ErrorKind::Other),
        ] {
            assert_eq!(
                kind_of_status(StatusCode::from_u16(code).unwrap()),
                kind,
                "{code}"
            );
        }
    }

    #[test]
    fn status_errors_keep_retry_after_and_a_short_body() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        let body = format!("too\nmany {}", "x".repeat(1000));
        let e = status_error(
            "s3",
            "put k",
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            body.as_bytes(),
            None,
            None,
        );
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let s = e.to_string();
        assert!(s.contains("HTTP 429: too many x"), "{s}");
        assert!(s.len() < 700, "{}", s.len());
    }

    /// Regression: an answer cut short of its Content-Length was a
    /// permanent error, so a lost answer was never retried.
    #[test]
    fn a_body_cut_short_is_transient() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = [0u8; 1024];
            let _ = s.read(&mut head);
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
                .unwrap();
        });
        let c = client("t", Timeouts::default()).unwrap();
        let resp = c.get(format!("http://127.0.0.1:{port}/")).send().unwrap();
        server.join().unwrap();
        let e = read_body("t", "get x", resp, 1 << 20).unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("broke off after 10 bytes"), "{e}");
    }

    #[test]
    fn transport_errors_carry_no_url() {
        let c = client("t", Timeouts::default()).unwrap();
        // Port 9 on loopback: nothing listens; the query stands for a signature.
        let e = c
            .get("http://127.0.0.1:9/obj?sig=SECRETSIG")
            .send()
            .unwrap_err();
        let be = transport_error("t", "get obj", e);
        assert!(be.is_transient());
        assert!(!be.to_string().contains("SECRETSIG"), "{be}");
    }
}
