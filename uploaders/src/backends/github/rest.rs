//! The REST API, for `list` and `get` outside the job that uploaded: a
//! repository's artifacts (pages of 100) and the `/zip` redirect to a
//! short-lived blob URL, which is fetched without the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::Url;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, LOCATION};
use serde::Deserialize;

use super::{NAME, Token};
use crate::backends::http::{self, Timeouts};
use crate::backends::{BackendError, ErrorKind};
use crate::retry::RetryPolicy;

const PER_PAGE: usize = 100;
/// 100,000 artifacts: beyond that a listing is more likely a loop.
const MAX_PAGES: u32 = 1000;
const API_VERSION: &str = "2022-11-28";
const MAX_ANSWER: u64 = 16 << 20;

/// A client of one repository's artifacts.
pub struct Rest {
    client: Client,
    /// The API base without a trailing `/`.
    api: String,
    /// `owner/name`.
    pub repo: String,
    token: Token,
    retry: RetryPolicy,
    timeouts: Timeouts,
}

/// An artifact as the REST API lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct Artifact {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub size_in_bytes: u64,
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub workflow_run: Option<WorkflowRun>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WorkflowRun {
    #[serde(default)]
    pub id: Option<u64>,
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    total_count: u64,
    #[serde(default)]
    artifacts: Vec<Artifact>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    message: String,
}

impl Rest {
    pub fn new(
        client: Client,
        api: String,
        repo: String,
        token: Token,
        retry: RetryPolicy,
        timeouts: Timeouts,
    ) -> Self {
        Rest {
            client,
            api: api.trim_end_matches('/').to_string(),
            repo,
            token,
            retry,
            timeouts,
        }
    }

    /// Every artifact of the repository, or those called `name`, newest
    /// first (expired ones included: the caller decides).
    pub fn artifacts(&self, name: Option<&str>) -> Result<Vec<Artifact>, BackendError> {
        let base = self.url(&format!("/repos/{}/actions/artifacts", self.repo))?;
        let what = match name {
            Some(n) => format!("list artifacts {n} of {}", self.repo),
            None => format!("list artifacts of {}", self.repo),
        };
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let mut url = base.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("per_page", &PER_PAGE.to_string())
                    .append_pair("page", &page.to_string());
                if let Some(n) = name {
                    q.append_pair("name", n);
                }
            }
            let p: Page = self.retry.run(&what, |_| {
                let resp = self.send(&url, &what)?;
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = http::read_body(NAME, &what, resp, MAX_ANSWER)?;
                if status != StatusCode::OK {
                    return Err(self.error(&what, status, &headers, &body));
                }
                serde_json::from_slice(&body).map_err(|e| {
                    BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!("{what}: the answer is not the expected JSON: {e}"),
                        "retry later; if it persists, check ship.github.api_url points at the GitHub API",
                    )
                })
            })?;
            let n = p.artifacts.len();
            out.extend(p.artifacts);
            if n < PER_PAGE || out.len() as u64 >= p.total_count {
                break;
            }
        }
        Ok(out)
    }

    /// Where artifact `id`'s bytes are: the `Location` of the `/zip`
    /// redirect (valid for about a minute). One attempt: the caller
    /// retries it together with the download.
    pub fn download_url(&self, id: u64, name: &str) -> Result<Url, BackendError> {
        let url = self.url(&format!("/repos/{}/actions/artifacts/{id}/zip", self.repo))?;
        let what = format!("download artifact {name} (id {id})");
        let resp = self.send(&url, &what)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_redirection() {
            let loc = headers
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!("{what}: HTTP {} without a Location", status.as_u16()),
                        "retry later",
                    )
                })?;
            return url.join(loc).map_err(|_| {
                BackendError::new(
                    NAME,
                    ErrorKind::Other,
                    format!("{what}: the redirect's Location is not a URL"),
                    "retry later; if it persists, report it with the message above",
                )
            });
        }
        let body = http::read_body(NAME, &what, resp, 64 << 10)?;
        Err(self.error(&what, status, &headers, &body))
    }

    fn url(&self, path: &str) -> Result<Url, BackendError> {
        Url::parse(&format!("{}{path}", self.api)).map_err(|_| {
            BackendError::new(
                NAME,
                ErrorKind::Config,
                format!("the API URL {:?} is not a URL", self.api),
                "fix ship.github.api_url (FERRY_SHIP_GITHUB_API_URL) or GITHUB_API_URL, e.g. https://api.github.com",
            )
        })
    }

    fn send(&self, url: &Url, what: &str) -> Result<Response, BackendError> {
        self.client
            .get(url.clone())
            .header(AUTHORIZATION, self.token.bearer())
            .header(ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
            .timeout(self.timeouts.request)
            .send()
            .map_err(|e| http::transport_error(NAME, what, e))
    }

    fn error(
        &self,
        what: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> BackendError {
        let msg = serde_json::from_slice::<Message>(body)
            .map(|m| m.message)
            .unwrap_or_else(|_| http::snippet(body));
        let limited = headers
            .get("x-ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            == Some("0");
        let mut retry_after = http::retry_after(headers);
        let (kind, fix) = match status.as_u16() {
            403 | 429 if limited || retry_after.is_some() => {
                if retry_after.is_none() {
                    retry_after = rate_limit_reset(headers);
                }
                (
                    ErrorKind::RateLimited,
                    "GitHub's API rate limit is reached; wait for it to reset (a GITHUB_TOKEN has 1,000 requests an hour per repository, a personal token 5,000)".to_string(),
                )
            }
            401 => (
                ErrorKind::Auth,
                "GITHUB_TOKEN was refused: check it is valid and not expired".to_string(),
            ),
            403 => (
                ErrorKind::PermissionDenied,
                format!(
                    "the token may not read {}'s artifacts: a fine-grained token or GitHub App needs Actions: read, a classic token the repo scope, a workflow's GITHUB_TOKEN `permissions: actions: read`",
                    self.repo
                ),
            ),
            404 => (
                ErrorKind::NotFound,
                format!(
                    "check the repository {} (ship.github.repository or GITHUB_REPOSITORY) and that the token can see it",
                    self.repo
                ),
            ),
            410 => (
                ErrorKind::NotFound,
                "the artifact expired (its retention ended); nothing is left to download"
                    .to_string(),
            ),
            _ => {
                let kind = http::kind_of_status(status);
                (kind, http::generic_fix(kind).to_string())
            }
        };
        let mut message = format!("{what}: HTTP {}", status.as_u16());
        if !msg.is_empty() {
            message.push_str(&format!(": {}", http::snippet(msg.as_bytes())));
        }
        let mut e = BackendError::new(NAME, kind, message, fix);
        if let Some(d) = retry_after {
            e = e.with_retry_after(d);
        }
        e
    }
}

/// How long until `x-ratelimit-reset` (Unix seconds).
fn rate_limit_reset(headers: &HeaderMap) -> Option<Duration> {
    let reset: u64 = headers
        .get("x-ratelimit-reset")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    // A header's number: an absurd one must not overflow the clock.
    UNIX_EPOCH
        .checked_add(Duration::from_secs(reset))?
        .duration_since(SystemTime::now())
        .ok()
        .map(|d| d.min(Duration::from_secs(24 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn rest() -> Rest {
        Rest::new(
            http::client(NAME, Timeouts::default()).unwrap(),
            "https://api.github.com/".into(),
            "o/r".into(),
            Token::new("t").unwrap(),
            RetryPolicy::once(),
            Timeouts::default(),
        )
    }

    /// Regression: a huge `x-ratelimit-reset` overflowed the clock (panic).
    #[test]
    fn an_absurd_rate_limit_reset_is_ignored_or_capped() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_static("18446744073709551615"),
        );
        assert_eq!(rate_limit_reset(&h), None);
        let far = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 10 * 24 * 3600;
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&far.to_string()).unwrap(),
        );
        assert_eq!(rate_limit_reset(&h), Some(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn errors_name_the_fix() {
        let r = rest();
        let e = r.error(
            "list",
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            br#"{"message":"Bad credentials"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::Auth);
        assert!(e.to_string().contains("HTTP 401: Bad credentials"), "{e}");
        let e = r.error("list", StatusCode::FORBIDDEN, &HeaderMap::new(), b"{}");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("Actions: read"), "{e}");
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        let reset = SystemTime::now() + Duration::from_secs(90);
        let secs = reset.duration_since(UNIX_EPOCH).unwrap().as_secs();
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&secs.to_string()).unwrap(),
        );
        let e = r.error("list", StatusCode::FORBIDDEN, &h, b"{}");
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert!(e.retry_after().is_some_and(|d| d > Duration::from_secs(60)));
        let e = r.error("get", StatusCode::GONE, &HeaderMap::new(), b"{}");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("expired"));
    }
}
