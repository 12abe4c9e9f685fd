//! The results service: Twirp JSON over `POST /twirp/<service>/<method>`.
//!
//! Strict where the client must be right: POST with `Content-Type:
//! application/json`, the runtime token as a bearer token, the proto field
//! names only (an unknown field is `malformed`), the backend ids of the
//! token's own run and job. `int64` is taken as a string or a number, as
//! protojson does; answers carry `int64` as strings.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Artifact, State, bad_name, lock, rfc3339};
use crate::http_fake::{Request, Response};

const PREFIX: &str = "/twirp/github.actions.results.api.v1.ArtifactService/";

/// A Twirp error answer.
pub(crate) fn error(code: &str, msg: &str) -> Response {
    let status = match code {
        "bad_route" | "not_found" => 404,
        "unauthenticated" => 401,
        "permission_denied" => 403,
        "already_exists" | "aborted" => 409,
        "failed_precondition" => 412,
        "resource_exhausted" => 429,
        "internal" | "unknown" => 500,
        "unavailable" => 503,
        _ => 400,
    };
    Response::json(status, &json!({"code": code, "msg": msg}))
}

type Fields = Map<String, Value>;

/// Fields of `body` when it is an object holding only `allowed` ones.
fn fields(body: &[u8], allowed: &[&str]) -> Result<Fields, Response> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        error(
            "malformed",
            &format!("the json request could not be decoded: {e}"),
        )
    })?;
    let Value::Object(m) = v else {
        return Err(error("malformed", "the json request is not an object"));
    };
    if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(error(
            "malformed",
            &format!("the json request could not be decoded: unknown field {k:?}"),
        ));
    }
    Ok(m)
}

fn string(m: &Fields, k: &str) -> Result<Option<String>, Response> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(error("malformed", &format!("{k} must be a string"))),
    }
}

fn int64(m: &Fields, k: &str) -> Result<Option<i64>, Response> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| error("malformed", &format!("{k} is not an int64"))),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| error("malformed", &format!("{k} is not an int64"))),
        Some(_) => Err(error("malformed", &format!("{k} is not an int64"))),
    }
}

/// The request's run and job ids, which must be the token's run.
fn ids(st: &State, m: &Fields) -> Result<(String, String), Response> {
    let run = string(m, "workflow_run_backend_id")?.unwrap_or_default();
    let job = string(m, "workflow_job_run_backend_id")?.unwrap_or_default();
    if run.is_empty() || job.is_empty() {
        return Err(error(
            "invalid_argument",
            "workflow_run_backend_id and workflow_job_run_backend_id are required",
        ));
    }
    if run != st.run_backend_id {
        return Err(error(
            "permission_denied",
            "the token is not valid for this workflow run",
        ));
    }
    Ok((run, job))
}

fn listed(a: &Artifact) -> Value {
    let mut v = json!({
        "workflow_run_backend_id": a.run_backend_id,
        "workflow_job_run_backend_id": a.job_backend_id,
        "database_id": a.id.to_string(),
        "name": a.name,
        "size": a.size.to_string(),
        "created_at": rfc3339(a.created_at),
    });
    if let Some(d) = &a.digest {
        v["digest"] = json!(d);
    }
    v
}

pub(crate) fn handle(state: &Mutex<State>, r: &Request) -> Response {
    let Some(method) = r.path().strip_prefix(PREFIX) else {
        return error("bad_route", &format!("no handler for path {:?}", r.path()));
    };
    if r.method != "POST" {
        return error(
            "bad_route",
            &format!("unsupported method {:?} (only POST is allowed)", r.method),
        );
    }
    let ct = r.header("content-type").unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some("application/json") {
        return error("bad_route", &format!("unexpected Content-Type: {ct:?}"));
    }
    let mut st = lock(state);
    let want = format!("Bearer {}", st.runtime_token);
    match r.header("authorization") {
        None => return error("unauthenticated", "no authorization header"),
        Some(a) if a != want => return error("unauthenticated", "token is not valid"),
        Some(_) if st.runtime_expired => return error("unauthenticated", "token expired"),
        Some(_) => {}
    }
    let result = match method {
        "CreateArtifact" => create(&mut st, &r.body),
        "FinalizeArtifact" => finalize(&mut st, &r.body),
        "ListArtifacts" => list(&st, &r.body),
        "GetSignedArtifactURL" => signed_url(&st, &r.body),
        "DeleteArtifact" => delete(&mut st, &r.body),
        other => Err(error("bad_route", &format!("no such method {other:?}"))),
    };
    result.unwrap_or_else(|e| e)
}

const IDS: [&str; 2] = ["workflow_run_backend_id", "workflow_job_run_backend_id"];

fn with_ids(more: &[&'static str]) -> Vec<&'static str> {
    IDS.iter().chain(more).copied().collect()
}

fn create(st: &mut State, body: &[u8]) -> Result<Response, Response> {
    let m = fields(
        body,
        &with_ids(&["name", "expires_at", "version", "mime_type"]),
    )?;
    let (run, job) = ids(st, &m)?;
    let name = string(&m, "name")?.unwrap_or_default();
    if name.is_empty() {
        return Err(error("invalid_argument", "name is required"));
    }
    if let Some(c) = bad_name(&name) {
        return Err(error(
            "invalid_argument",
            &format!("artifact name contains an invalid character {c:?}"),
        ));
    }
    let version = int64(&m, "version")?.unwrap_or(0);
    if version != 4 && version != 7 {
        return Err(error(
            "invalid_argument",
            &format!("unsupported artifact version {version}"),
        ));
    }
    let expires_at = string(&m, "expires_at")?;
    if let Some(e) = &expires_at {
        let at = humantime::parse_rfc3339(e)
            .map_err(|_| error("malformed", "expires_at is not an RFC 3339 timestamp"))?;
        let now = SystemTime::now();
        if at <= now || at > now + Duration::from_secs(400 * 86_400) {
            return Err(error(
                "invalid_argument",
                "expires_at must be in the future and at most 400 days away",
            ));
        }
    }
    if st
        .artifacts
        .iter()
        .any(|a| a.run_backend_id == run && a.name == name)
    {
        return Err(error(
            "already_exists",
            "an artifact with this name already exists on the workflow run",
        ));
    }
    let id = st.next_id();
    let blob_path = format!("/actions-results/{run}/{job}/{id}");
    let expired = st.expired_uploads > 0;
    st.expired_uploads = st.expired_uploads.saturating_sub(1);
    let url = st.signed_url(&blob_path, "cw", st.upload_ttl, expired);
    let run_id = st.run_id;
    st.artifacts.push(Artifact {
        id,
        run_backend_id: run,
        job_backend_id: job,
        run_id,
        name,
        version,
        mime_type: string(&m, "mime_type")?,
        expires_at,
        finalized: false,
        size: 0,
        digest: None,
        created_at: SystemTime::now(),
        expired: false,
        blob_path,
    });
    Ok(Response::json(
        200,
        &json!({"ok": true, "signed_upload_url": url}),
    ))
}

fn finalize(st: &mut State, body: &[u8]) -> Result<Response, Response> {
    let m = fields(body, &with_ids(&["name", "size", "hash"]))?;
    let (run, job) = ids(st, &m)?;
    let name = string(&m, "name")?.unwrap_or_default();
    let size = int64(&m, "size")?.unwrap_or(0);
    let hash = string(&m, "hash")?;
    let Some(a) = st.find_mut(&run, &name).filter(|a| a.job_backend_id == job) else {
        return Err(error("not_found", "artifact not found"));
    };
    if a.finalized {
        return Err(error(
            "failed_precondition",
            "artifact is already finalized",
        ));
    }
    let path = a.blob_path.clone();
    let Some(data) = st.blobs.get(&path).and_then(|b| b.data.clone()) else {
        return Err(error(
            "failed_precondition",
            "no upload was committed to the artifact's blob",
        ));
    };
    if size != data.len() as i64 {
        return Err(error(
            "invalid_argument",
            &format!(
                "size {size} does not match the {} bytes uploaded",
                data.len()
            ),
        ));
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if let Some(h) = &hash {
        let well_formed = h
            .strip_prefix("sha256:")
            .is_some_and(|x| x.len() == 64 && x.bytes().all(|b| b.is_ascii_hexdigit()));
        if !well_formed {
            return Err(error(
                "invalid_argument",
                "hash must be sha256:<64 hex digits>",
            ));
        }
        if !h.eq_ignore_ascii_case(&actual) {
            return Err(error(
                "invalid_argument",
                "hash does not match the uploaded content",
            ));
        }
    }
    let Some(a) = st.find_mut(&run, &name) else {
        return Err(error("not_found", "artifact not found"));
    };
    a.finalized = true;
    a.size = size as u64;
    a.digest = Some(hash.unwrap_or(actual));
    let id = a.id;
    Ok(Response::json(
        200,
        &json!({"ok": true, "artifact_id": id.to_string()}),
    ))
}

fn list(st: &State, body: &[u8]) -> Result<Response, Response> {
    let m = fields(body, &with_ids(&["name_filter", "id_filter"]))?;
    let (run, _) = ids(st, &m)?;
    let name = string(&m, "name_filter")?;
    let id = int64(&m, "id_filter")?;
    let artifacts: Vec<Value> = st
        .artifacts
        .iter()
        .filter(|a| a.run_backend_id == run && a.finalized)
        .filter(|a| name.as_ref().is_none_or(|n| *n == a.name))
        .filter(|a| id.is_none_or(|i| i == a.id as i64))
        .map(listed)
        .collect();
    // Empty repeated fields are left out, like every default.
    let body = if artifacts.is_empty() {
        json!({})
    } else {
        json!({"artifacts": artifacts})
    };
    Ok(Response::json(200, &body))
}

fn signed_url(st: &State, body: &[u8]) -> Result<Response, Response> {
    let m = fields(body, &with_ids(&["name"]))?;
    let (run, job) = ids(st, &m)?;
    let name = string(&m, "name")?.unwrap_or_default();
    let Some(a) = st.artifacts.iter().find(|a| {
        a.run_backend_id == run && a.job_backend_id == job && a.name == name && a.finalized
    }) else {
        return Err(error("not_found", "artifact not found"));
    };
    let url = st.signed_url(&a.blob_path, "r", st.download_ttl, false);
    Ok(Response::json(200, &json!({"signed_url": url})))
}

fn delete(st: &mut State, body: &[u8]) -> Result<Response, Response> {
    let m = fields(body, &with_ids(&["name"]))?;
    let (run, _) = ids(st, &m)?;
    let name = string(&m, "name")?.unwrap_or_default();
    let Some(i) = st
        .artifacts
        .iter()
        .position(|a| a.run_backend_id == run && a.name == name && a.finalized)
    else {
        return Err(error("not_found", "artifact not found"));
    };
    let a = st.artifacts.remove(i);
    st.blobs.remove(&a.blob_path);
    Ok(Response::json(
        200,
        &json!({"ok": true, "artifact_id": a.id.to_string()}),
    ))
}
