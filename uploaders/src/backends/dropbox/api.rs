//! One Dropbox API call: the three endpoint styles (RPC, content upload,
//! content download), the bearer token with its one refresh on
//! `expired_access_token`, and the answer sorted into a result, a route
//! error for the caller to decide on (409), or a [`BackendError`].
//!
//! Retrying is the caller's business ([`crate::retry::RetryPolicy`]
//! around these calls): only the caller knows whether a replay is safe.

use std::path::Path;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use super::NAME;
use super::api_arg;
use super::auth::{Auth, Secret};
use super::error::{Answer, RouteError};
use crate::backends::http::{self, Timeouts};
use crate::backends::{BackendError, ErrorKind};
use crate::progress::Progress;

/// The header carrying a content route's argument.
pub const ARG_HEADER: &str = "Dropbox-API-Arg";
/// The header carrying a download's metadata.
pub const RESULT_HEADER: &str = "Dropbox-API-Result";

/// Largest JSON answer read (a `list_folder` page of 2000 entries is
/// about 1.5 MiB).
const JSON_LIMIT: u64 = 16 << 20;
/// Largest error body read.
const ERROR_LIMIT: u64 = 64 << 10;

/// A call's outcome when it got an answer: the value, or the route's error.
pub type Reply<T> = Result<T, RouteError>;

/// The bytes `[start, start + len)` of a file, as an upload body.
pub struct FileRange<'a> {
    pub path: &'a Path,
    pub start: u64,
    pub len: u64,
    pub progress: Option<&'a Progress>,
}

pub(super) struct Api {
    client: Client,
    api_url: String,
    content_url: String,
    timeouts: Timeouts,
    pub auth: Auth,
}

impl Api {
    pub fn new(
        client: Client,
        api_url: &str,
        content_url: &str,
        timeouts: Timeouts,
        auth: Auth,
    ) -> Self {
        Api {
            client,
            api_url: api_url.trim_end_matches('/').to_string(),
            content_url: content_url.trim_end_matches('/').to_string(),
            timeouts,
            auth,
        }
    }

    /// An RPC route (`files/list_folder`, `sharing/…`): JSON in, JSON out.
    pub fn rpc(&self, route: &str, arg: &Value, what: &str) -> Result<Reply<Value>, BackendError> {
        let url = format!("{}/2/{route}", self.api_url);
        let body = serde_json::to_vec(arg).map_err(|e| encode_error(what, e))?;
        let reply = self.send(what, &|token| {
            Ok(self
                .authorized(self.client.post(&url), token)?
                .header(CONTENT_TYPE, "application/json")
                .timeout(self.timeouts.request)
                .body(body.clone()))
        })?;
        match reply {
            Ok(resp) => json_of(what, resp).map(Ok),
            Err(route) => Ok(Err(route)),
        }
    }

    /// A content-upload route: the argument in [`ARG_HEADER`], the file
    /// range streamed from disk as the body (re-read for every send).
    pub fn upload(
        &self,
        route: &str,
        arg: &Value,
        body: &FileRange<'_>,
        what: &str,
    ) -> Result<Reply<Value>, BackendError> {
        let url = format!("{}/2/{route}", self.content_url);
        let arg = header_arg(what, arg)?;
        let timeout = http::transfer_timeout(self.timeouts, body.len);
        let reply = self.send(what, &|token| {
            // A replay sends the range again: count it again from its start.
            if let Some(p) = body.progress {
                progress_to(p, body.start);
            }
            let file = http::file_body(
                NAME,
                body.path,
                body.start,
                body.len,
                body.progress.cloned(),
            )?;
            Ok(self
                .authorized(self.client.post(&url), token)?
                .header(ARG_HEADER, arg.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .timeout(timeout)
                .body(file))
        });
        if let (Some(p), Err(_) | Ok(Err(_))) = (body.progress, &reply) {
            progress_to(p, body.start);
        }
        match reply? {
            Ok(resp) => json_of(what, resp).map(Ok),
            Err(route) => Ok(Err(route)),
        }
    }

    /// A content-download route: the metadata from [`RESULT_HEADER`] and
    /// the answer, whose body is the content.
    pub fn download(
        &self,
        route: &str,
        arg: &Value,
        timeout: Duration,
        what: &str,
    ) -> Result<Reply<(Value, Response)>, BackendError> {
        let url = format!("{}/2/{route}", self.content_url);
        let arg = header_arg(what, arg)?;
        let reply = self.send(what, &|token| {
            Ok(self
                .authorized(self.client.post(&url), token)?
                .header(ARG_HEADER, arg.clone())
                .timeout(timeout))
        })?;
        let resp = match reply {
            Ok(r) => r,
            Err(route) => return Ok(Err(route)),
        };
        let meta = resp
            .headers()
            .get(RESULT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| {
                BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!("{what}: the answer lacks a readable {RESULT_HEADER} header"),
                    "retry later; a proxy may be stripping headers",
                )
            })?;
        Ok(Ok((meta, resp)))
    }

    fn authorized(
        &self,
        rb: RequestBuilder,
        token: &Secret,
    ) -> Result<RequestBuilder, BackendError> {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
            BackendError::new(
                NAME,
                ErrorKind::Config,
                "the Dropbox access token holds characters an HTTP header cannot carry",
                "set the token again without quotes, spaces or line breaks",
            )
        })?;
        v.set_sensitive(true);
        Ok(rb.header(AUTHORIZATION, v))
    }

    /// Sends what `make` builds with the current token; on
    /// `expired_access_token` renews the token and sends once more.
    fn send(
        &self,
        what: &str,
        make: &dyn Fn(&Secret) -> Result<RequestBuilder, BackendError>,
    ) -> Result<Reply<Response>, BackendError> {
        let mut renewed = false;
        loop {
            let token = self.auth.token()?;
            let resp = make(&token)?
                .send()
                .map_err(|e| http::transport_error(NAME, what, e))?;
            let status = resp.status();
            tracing::debug!(target: "ferry::dropbox", what, status = status.as_u16(), "dropbox call");
            if status.is_success() {
                return Ok(Ok(resp));
            }
            let headers = resp.headers().clone();
            let body = http::read_body(NAME, what, resp, ERROR_LIMIT)?;
            let answer = Answer::parse(status, &headers, &body);
            if status.as_u16() == 401
                && answer.has_tag("expired_access_token")
                && self.auth.refreshable()
                && !renewed
            {
                renewed = true;
                self.auth.renew_after(&token)?;
                continue;
            }
            if status.as_u16() == 409 && !answer.is_rate_limit() {
                return Ok(Err(answer.into_route_error()));
            }
            return Err(answer.into_error(what, self.auth.refreshable(), &|s| self.auth.scrub(s)));
        }
    }
}

/// Moves a transfer's progress to byte `pos` (back after a failed send,
/// forward past bytes the server already had).
pub fn progress_to(p: &Progress, pos: u64) {
    let done = p.done();
    if done > pos {
        p.rewind(done - pos);
    } else {
        p.advance(pos - done);
    }
}

fn header_arg(what: &str, arg: &Value) -> Result<HeaderValue, BackendError> {
    let s = api_arg::header_json(arg).map_err(|e| encode_error(what, e))?;
    HeaderValue::from_str(&s).map_err(|e| {
        BackendError::new(
            NAME,
            ErrorKind::InvalidKey,
            format!("{what}: the argument cannot be sent as a header: {e}"),
            "use a key without control characters",
        )
    })
}

fn encode_error(what: &str, e: serde_json::Error) -> BackendError {
    BackendError::new(
        NAME,
        ErrorKind::Other,
        format!("{what}: cannot encode the argument: {e}"),
        "this is a ferry bug, please report it",
    )
}

/// A success answer's JSON; a body cut short or garbled is transient (the
/// callers' replays are safe).
fn json_of(what: &str, resp: Response) -> Result<Value, BackendError> {
    let bytes = http::read_body(NAME, what, resp, JSON_LIMIT)?;
    serde_json::from_slice(&bytes).map_err(|e| {
        BackendError::new(
            NAME,
            ErrorKind::Unavailable,
            format!("{what}: Dropbox's answer is not readable JSON ({e})"),
            "the answer was cut short or garbled; ferry retries, otherwise try again later",
        )
    })
}
