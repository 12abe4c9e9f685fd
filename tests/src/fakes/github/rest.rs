//! The REST API's artifact routes of one repository:
//!
//! * `GET /repos/{owner}/{repo}/actions/artifacts` (`per_page` ≤ 100,
//!   `page`, `name`), newest first, with a `Link` header;
//! * `GET /repos/{owner}/{repo}/actions/runs/{run_id}/artifacts`;
//! * `GET /repos/{owner}/{repo}/actions/artifacts/{id}`;
//! * `GET /repos/{owner}/{repo}/actions/artifacts/{id}/zip`: `302` to a
//!   one-minute signed blob URL, `410` once expired;
//! * `DELETE /repos/{owner}/{repo}/actions/artifacts/{id}`.
//!
//! Requests need a `User-Agent` and the token; only finalized artifacts
//! exist for this API.

use std::sync::Mutex;

use serde_json::{Value, json};

use super::{Artifact, REPO, REST_TOKEN, State, lock, rfc3339};
use crate::http_fake::{Request, Response};

const API_VERSIONS: &[&str] = &["2022-11-28", "2026-03-10"];

fn message(status: u16, msg: &str) -> Response {
    Response::json(
        status,
        &json!({"message": msg, "documentation_url": "https://docs.github.com/rest", "status": status.to_string()}),
    )
}

fn view(a: &Artifact, base: &str) -> Value {
    let url = format!("{base}/repos/{REPO}/actions/artifacts/{}", a.id);
    let mut v = json!({
        "id": a.id,
        "node_id": format!("MDg6QXJ0aWZhY3Q{}", a.id),
        "name": a.name,
        "size_in_bytes": a.size,
        "url": url,
        "archive_download_url": format!("{url}/zip"),
        "expired": a.expired,
        "created_at": rfc3339(a.created_at),
        "updated_at": rfc3339(a.created_at),
        "expires_at": a.expires_at,
        "workflow_run": {"id": a.run_id, "repository_id": 1, "head_repository_id": 1,
                          "head_branch": "main", "head_sha": "0".repeat(40)},
    });
    if let Some(d) = &a.digest {
        v["digest"] = json!(d);
    }
    v
}

pub(crate) fn handle(state: &Mutex<State>, r: &Request) -> Response {
    if r.header("user-agent").is_none_or(str::is_empty) {
        return Response::text(
            403,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). Check https://developer.github.com for other possible causes.",
        );
    }
    if let Some(v) = r.header("x-github-api-version")
        && !API_VERSIONS.contains(&v)
    {
        return message(400, &format!("API version {v:?} is not supported."));
    }
    match r.header("authorization") {
        None => return message(401, "Requires authentication"),
        Some(a) => {
            let token = a
                .strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("token "));
            if token != Some(REST_TOKEN) {
                return message(401, "Bad credentials");
            }
        }
    }
    let Some(rest) = r.path().strip_prefix(&format!("/repos/{REPO}/actions/")) else {
        return message(404, "Not Found");
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let mut st = lock(state);
    let base = format!("http://{}", r.header("host").unwrap_or("127.0.0.1"));
    match (r.method.as_str(), parts.as_slice()) {
        ("GET", ["artifacts"]) => list(&st, r, &base, None),
        ("GET", ["runs", run, "artifacts"]) => match run.parse::<u64>() {
            Ok(run) => list(&st, r, &base, Some(run)),
            Err(_) => message(404, "Not Found"),
        },
        ("GET", ["artifacts", id]) => match find(&st, id) {
            Some(a) => Response::json(200, &view(a, &base)),
            None => message(404, "Not Found"),
        },
        ("GET", ["artifacts", id, "zip"]) => match find(&st, id) {
            Some(a) if a.expired => message(410, "Artifact has expired"),
            Some(a) => {
                let url = st.signed_url(&a.blob_path, "r", st.download_ttl, false);
                Response::new(302).header("Location", &url)
            }
            None => message(404, "Not Found"),
        },
        ("DELETE", ["artifacts", id]) => {
            let Some(i) = id
                .parse::<u64>()
                .ok()
                .and_then(|id| st.artifacts.iter().position(|a| a.id == id && a.finalized))
            else {
                return message(404, "Not Found");
            };
            let a = st.artifacts.remove(i);
            st.blobs.remove(&a.blob_path);
            Response::new(204)
        }
        _ => message(404, "Not Found"),
    }
}

fn find<'a>(st: &'a State, id: &str) -> Option<&'a Artifact> {
    let id: u64 = id.parse().ok()?;
    st.artifacts.iter().find(|a| a.id == id && a.finalized)
}

fn list(st: &State, r: &Request, base: &str, run: Option<u64>) -> Response {
    let per_page = match r.query("per_page").map(|p| p.parse::<usize>()) {
        None => 30,
        Some(Ok(n)) => n.clamp(1, 100),
        Some(Err(_)) => return message(422, "Invalid request: per_page is not a number."),
    };
    let page = match r.query("page").map(|p| p.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) => n.max(1),
        Some(Err(_)) => return message(422, "Invalid request: page is not a number."),
    };
    let name = r.query("name");
    let mut all: Vec<&Artifact> = st
        .artifacts
        .iter()
        .filter(|a| a.finalized)
        .filter(|a| run.is_none_or(|r| a.run_id == r))
        .filter(|a| name.as_ref().is_none_or(|n| *n == a.name))
        .collect();
    all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    let total = all.len();
    let items: Vec<Value> = all
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|a| view(a, base))
        .collect();
    let mut resp = Response::json(200, &json!({"total_count": total, "artifacts": items}));
    let last = total.div_ceil(per_page).max(1);
    if page < last {
        let path = r.path();
        let link = |p: usize| {
            let mut q = format!("per_page={per_page}&page={p}");
            if let Some(n) = &name {
                q.push_str(&format!("&name={}", super::query_escape(n)));
            }
            format!("<{base}{path}?{q}>")
        };
        resp = resp.header(
            "Link",
            &format!(
                "{}; rel=\"next\", {}; rel=\"last\"",
                link(page + 1),
                link(last)
            ),
        );
    }
    resp.header("x-ratelimit-remaining", "4999")
}
