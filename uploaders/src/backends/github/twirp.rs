//! The results service's `ArtifactService`, spoken as Twirp JSON.
//!
//! Every call is `POST <origin>/twirp/github.actions.results.api.v1.ArtifactService/<Method>`
//! with the runtime token as a bearer token. Bodies use the proto3 JSON
//! mapping with proto field names: snake_case, `int64` as strings,
//! wrapper types as bare values, defaults left out (so an absent `ok` is
//! `false`). Answers are read leniently (unknown fields ignored, `int64`
//! as string or number). Errors are `{"code", "msg"}` with a matching HTTP
//! status; 429 and 5xx are retried, as the toolkit does.

use reqwest::StatusCode;
use reqwest::blocking::Client;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use super::jwt::BackendIds;
use super::{NAME, Token};
use crate::backends::http::{self, Timeouts};
use crate::backends::{BackendError, ErrorKind};
use crate::retry::RetryPolicy;

const SERVICE: &str = "github.actions.results.api.v1.ArtifactService";

/// Largest Twirp answer read (a listing of 1000 artifacts is ~400 KiB).
const MAX_ANSWER: u64 = 8 << 20;

/// A client of one job's results service.
pub struct Twirp {
    client: Client,
    /// `scheme://host[:port]` of `ACTIONS_RESULTS_URL`: its path is ignored.
    origin: String,
    token: Token,
    /// The ids from the token's claims.
    pub ids: BackendIds,
    retry: RetryPolicy,
    timeouts: Timeouts,
}

/// An artifact as `ListArtifacts` shows it (only finalized ones appear).
#[derive(Debug, Clone, Deserialize)]
pub struct Listed {
    #[serde(default)]
    pub workflow_run_backend_id: String,
    #[serde(default)]
    pub workflow_job_run_backend_id: String,
    #[serde(default, deserialize_with = "int64")]
    pub database_id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "int64")]
    pub size: u64,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub digest: Option<String>,
}

#[derive(Serialize)]
struct Ids<'a> {
    workflow_run_backend_id: &'a str,
    workflow_job_run_backend_id: &'a str,
}

#[derive(Serialize)]
struct CreateReq<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<&'a str>,
    version: i32,
    mime_type: &'a str,
}

#[derive(Deserialize)]
struct CreateResp {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    signed_upload_url: String,
}

#[derive(Serialize)]
struct FinalizeReq<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    name: &'a str,
    size: String,
    hash: String,
}

#[derive(Deserialize)]
struct FinalizeResp {
    #[serde(default)]
    ok: bool,
    #[serde(default, deserialize_with = "int64")]
    artifact_id: u64,
}

#[derive(Serialize)]
struct ListReq<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name_filter: Option<&'a str>,
}

#[derive(Deserialize)]
struct ListResp {
    #[serde(default)]
    artifacts: Vec<Listed>,
}

#[derive(Serialize)]
struct SignedUrlReq<'a> {
    #[serde(flatten)]
    ids: Ids<'a>,
    name: &'a str,
}

#[derive(Deserialize)]
struct SignedUrlResp {
    #[serde(default)]
    signed_url: String,
}

#[derive(Deserialize)]
struct TwirpError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    msg: String,
}

/// `int64` in proto3 JSON: a string, though a number is accepted too.
fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int {
        S(String),
        N(u64),
    }
    match Int::deserialize(d)? {
        Int::N(n) => Ok(n),
        Int::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl Twirp {
    pub fn new(
        client: Client,
        origin: String,
        token: Token,
        ids: BackendIds,
        retry: RetryPolicy,
        timeouts: Timeouts,
    ) -> Self {
        Twirp {
            client,
            origin,
            token,
            ids,
            retry,
            timeouts,
        }
    }

    fn ids(&self) -> Ids<'_> {
        Ids {
            workflow_run_backend_id: &self.ids.run,
            workflow_job_run_backend_id: &self.ids.job,
        }
    }

    /// Reserves `name` in this run; returns the signed upload URL (a
    /// secret: its query is a SAS signature).
    pub fn create(
        &self,
        name: &str,
        expires_at: Option<&str>,
        mime_type: &str,
    ) -> Result<String, BackendError> {
        let what = format!("CreateArtifact {name}");
        let req = CreateReq {
            ids: self.ids(),
            name,
            expires_at,
            // 7: a raw (unzipped) single file, served back as it is.
            version: 7,
            mime_type,
        };
        let resp: CreateResp = self.call("CreateArtifact", &what, &req)?;
        if !resp.ok || resp.signed_upload_url.is_empty() {
            return Err(not_ok(&what));
        }
        Ok(resp.signed_upload_url)
    }

    /// Makes the uploaded bytes the artifact; returns its id.
    pub fn finalize(&self, name: &str, size: u64, sha256: &str) -> Result<u64, BackendError> {
        let what = format!("FinalizeArtifact {name}");
        let req = FinalizeReq {
            ids: self.ids(),
            name,
            size: size.to_string(),
            hash: format!("sha256:{sha256}"),
        };
        let resp: FinalizeResp = self.call("FinalizeArtifact", &what, &req)?;
        if !resp.ok {
            return Err(not_ok(&what));
        }
        Ok(resp.artifact_id)
    }

    /// The finalized artifacts of this run, all or those called `name`.
    pub fn list(&self, name: Option<&str>) -> Result<Vec<Listed>, BackendError> {
        let what = match name {
            Some(n) => format!("ListArtifacts {n}"),
            None => "ListArtifacts".to_string(),
        };
        let req = ListReq {
            ids: self.ids(),
            name_filter: name,
        };
        let resp: ListResp = self.call("ListArtifacts", &what, &req)?;
        Ok(resp.artifacts)
    }

    /// A short-lived download URL of a listed artifact (asked with the ids
    /// of the job that made it, as the service wants).
    pub fn signed_url(&self, a: &Listed) -> Result<String, BackendError> {
        let what = format!("GetSignedArtifactURL {}", a.name);
        let req = SignedUrlReq {
            ids: Ids {
                workflow_run_backend_id: &a.workflow_run_backend_id,
                workflow_job_run_backend_id: &a.workflow_job_run_backend_id,
            },
            name: &a.name,
        };
        // One attempt: the caller retries it together with the download.
        let resp: SignedUrlResp =
            self.call_with(&RetryPolicy::once(), "GetSignedArtifactURL", &what, &req)?;
        if resp.signed_url.is_empty() {
            return Err(not_ok(&what));
        }
        Ok(resp.signed_url)
    }

    fn call<Q: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        what: &str,
        req: &Q,
    ) -> Result<R, BackendError> {
        self.call_with(&self.retry, method, what, req)
    }

    fn call_with<Q: Serialize, R: DeserializeOwned>(
        &self,
        retry: &RetryPolicy,
        method: &str,
        what: &str,
        req: &Q,
    ) -> Result<R, BackendError> {
        let url = format!("{}/twirp/{SERVICE}/{method}", self.origin);
        let body = serde_json::to_vec(req).map_err(|e| {
            BackendError::new(
                NAME,
                ErrorKind::Other,
                format!("{what}: cannot encode the request: {e}"),
                "report this as a ferry bug",
            )
        })?;
        retry.run(what, |_| {
            let resp = self
                .client
                .post(&url)
                .header(AUTHORIZATION, self.token.bearer())
                .header(CONTENT_TYPE, "application/json")
                .timeout(self.timeouts.request)
                .body(body.clone())
                .send()
                .map_err(|e| http::transport_error(NAME, what, e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let answer = http::read_body(NAME, what, resp, MAX_ANSWER)?;
            if !status.is_success() {
                return Err(twirp_error(what, status, &headers, &answer));
            }
            // An unreadable success is retried like the toolkit does: it is
            // most often a proxy's page or a cut answer.
            serde_json::from_slice(&answer).map_err(|e| {
                BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!("{what}: the answer is not the expected JSON: {e}"),
                    "retry later; if it persists, check ACTIONS_RESULTS_URL points at the results service",
                )
            })
        })
    }
}

fn not_ok(what: &str) -> BackendError {
    BackendError::new(
        NAME,
        ErrorKind::Other,
        format!("{what}: the results service answered without `ok`"),
        "GitHub refused the artifact without a reason; retry the job, and check https://www.githubstatus.com",
    )
}

/// A Twirp error answer as a [`BackendError`] naming the code and the fix.
fn twirp_error(what: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) -> BackendError {
    let parsed: Option<TwirpError> = serde_json::from_slice(body).ok();
    let (code, msg) = match &parsed {
        Some(e) => (e.code.as_str(), http::snippet(e.msg.as_bytes())),
        None => ("", http::snippet(body)),
    };
    let mut kind = http::kind_of_status(status);
    let fix = if msg.contains("insufficient usage") {
        kind = ErrorKind::NoSpace;
        "the account's artifact storage is used up: delete old artifacts, or raise the quota (Settings → Billing); the bundle stays in the spool"
    } else if code == "unauthenticated" || status == StatusCode::UNAUTHORIZED {
        kind = ErrorKind::Auth;
        "ACTIONS_RUNTIME_TOKEN was refused; it is only valid while its job runs, so ship from that job (docs/backends/github.md), or pull later with GITHUB_TOKEN"
    } else if code == "permission_denied" || status == StatusCode::FORBIDDEN {
        kind = ErrorKind::PermissionDenied;
        "the job's runtime token may not do this: check ACTIONS_RUNTIME_TOKEN and ACTIONS_RESULTS_URL come from the same job"
    } else if code == "already_exists" || status == StatusCode::CONFLICT {
        kind = ErrorKind::Conflict;
        "names are unique per workflow run; ferry tries the next name"
    } else if code == "invalid_argument" || code == "malformed" {
        kind = ErrorKind::Other;
        "the results service refused the request; report this as a ferry bug with the message above"
    } else {
        http::generic_fix(kind)
    };
    let mut message = format!("{what}: HTTP {}", status.as_u16());
    if !code.is_empty() {
        message.push_str(&format!(" twirp {code}"));
    }
    if !msg.is_empty() {
        message.push_str(&format!(": {msg}"));
    }
    let mut e = BackendError::new(NAME, kind, message, fix);
    if let Some(d) = http::retry_after(headers) {
        e = e.with_retry_after(d);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, body: &str) -> BackendError {
        twirp_error(
            "CreateArtifact x",
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn codes_map_to_kinds_and_fixes() {
        let e = err(
            409,
            r#"{"code":"already_exists","msg":"an artifact with this name already exists on the workflow run"}"#,
        );
        assert_eq!(e.kind(), ErrorKind::Conflict);
        let s = e.to_string();
        assert!(
            s.contains("HTTP 409 twirp already_exists: an artifact with this name"),
            "{s}"
        );
        assert_eq!(
            err(401, r#"{"code":"unauthenticated","msg":"token expired"}"#).kind(),
            ErrorKind::Auth
        );
        assert!(
            err(401, "{}")
                .to_string()
                .contains("ACTIONS_RUNTIME_TOKEN was refused")
        );
        let quota = err(
            403,
            r#"{"code":"resource_exhausted","msg":"Failed request: insufficient usage"}"#,
        );
        assert_eq!(quota.kind(), ErrorKind::NoSpace);
        assert!(!quota.is_transient());
        assert!(err(503, "<html>busy</html>").is_transient());
        assert!(err(429, r#"{"code":"resource_exhausted"}"#).is_transient());
        assert!(!err(400, r#"{"code":"invalid_argument","msg":"bad"}"#).is_transient());
    }

    #[test]
    fn int64_reads_strings_and_numbers() {
        let a: Listed =
            serde_json::from_str(r#"{"database_id":"12","size":34,"name":"n","extra":true}"#)
                .unwrap();
        assert_eq!((a.database_id, a.size), (12, 34));
        assert!(serde_json::from_str::<Listed>(r#"{"size":"x"}"#).is_err());
    }

    #[test]
    fn requests_use_proto_names_and_int64_strings() {
        let ids = BackendIds {
            run: "r".into(),
            job: "j".into(),
        };
        let req = FinalizeReq {
            ids: Ids {
                workflow_run_backend_id: &ids.run,
                workflow_job_run_backend_id: &ids.job,
            },
            name: "n",
            size: 5u64.to_string(),
            hash: "sha256:ab".into(),
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"workflow_run_backend_id":"r","workflow_job_run_backend_id":"j",
                               "name":"n","size":"5","hash":"sha256:ab"})
        );
        let create = CreateReq {
            ids: Ids {
                workflow_run_backend_id: "r",
                workflow_job_run_backend_id: "j",
            },
            name: "n",
            expires_at: None,
            version: 7,
            mime_type: "application/gzip",
        };
        let v = serde_json::to_value(&create).unwrap();
        assert!(v.get("expires_at").is_none());
        assert_eq!(v["version"], 7);
    }
}
