//! Dropbox's error answers, read and turned into [`BackendError`]s that
//! name the error's tag chain and what to do about it.
//!
//! A 409 carries a route-specific union the caller decides on
//! (`incorrect_offset`, `path/conflict`, `shared_link_already_exists`, …),
//! so it comes back as a [`RouteError`]; everything else becomes a
//! [`BackendError`] at once. Matching is on the structured `error` object
//! (its `.tag` chain), never on the free-text `error_summary`.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use super::NAME;
use crate::backends::http;
use crate::backends::{BackendError, ErrorKind};

/// The fix for an access token that expired.
pub const EXPIRED_FIX: &str = "set DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY, DROPBOX_APP_SECRET (access tokens live 4 hours; see docs/backends/dropbox.md)";

/// A route's own error (HTTP 409).
#[derive(Debug, Clone)]
pub struct RouteError {
    /// The `.tag` chain, outermost first: `["path", "conflict", "file"]`.
    pub tags: Vec<String>,
    /// The `error` object as sent.
    pub error: Value,
}

impl RouteError {
    /// Whether the chain starts with `prefix`.
    pub fn is(&self, prefix: &[&str]) -> bool {
        self.tags.len() >= prefix.len() && self.tags.iter().zip(prefix).all(|(a, b)| a == b)
    }

    /// The tag chain as Dropbox writes it in summaries: `path/conflict/file`.
    pub fn chain(&self) -> String {
        self.tags.join("/")
    }

    /// Whether `tag` is anywhere in the chain.
    pub fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The error as a [`BackendError`] of operation `what`, when the caller
    /// has nothing better to do with it.
    pub fn into_error(self, what: &str) -> BackendError {
        Answer {
            status: StatusCode::CONFLICT,
            tags: self.tags,
            error: self.error,
            text: String::new(),
            retry_after: None,
        }
        .into_error(what, false, &|s| s.to_string())
    }

    /// `correct_offset` of an `incorrect_offset`, wherever it is nested
    /// (`append_v2` puts it at the top, `finish` under `lookup_failed`).
    pub fn correct_offset(&self) -> Option<u64> {
        find_field(&self.error, "incorrect_offset", "correct_offset")?.as_u64()
    }
}

/// The `.tag` chain of a Stone union value: a member's value sits under a
/// key named like the tag (unions, primitives) or beside the tag (structs,
/// whose union-typed fields such as `reason` carry the chain on).
pub fn tag_chain(v: &Value) -> Vec<String> {
    let mut tags = Vec::new();
    let mut cur = v;
    for _ in 0..16 {
        match cur {
            Value::String(s) => {
                tags.push(s.clone());
                break;
            }
            Value::Object(map) => {
                let next = match map.get(".tag").and_then(Value::as_str) {
                    Some(t) => {
                        tags.push(t.to_string());
                        map.get(t).or_else(|| nested_union(map))
                    }
                    None => nested_union(map),
                };
                match next {
                    Some(n) => cur = n,
                    None => break,
                }
            }
            _ => break,
        }
    }
    tags
}

/// The first field (other than `.tag`) that is itself a tagged union.
fn nested_union(map: &serde_json::Map<String, Value>) -> Option<&Value> {
    map.iter()
        .filter(|(k, _)| k.as_str() != ".tag")
        .map(|(_, v)| v)
        .find(|v| v.get(".tag").is_some())
}

/// Field `field` of the object tagged `tag`, anywhere below `v`.
fn find_field<'a>(v: &'a Value, tag: &str, field: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => {
            if map.get(".tag").and_then(Value::as_str) == Some(tag)
                && let Some(f) = map.get(field)
            {
                return Some(f);
            }
            map.values().find_map(|c| find_field(c, tag, field))
        }
        _ => None,
    }
}

/// A non-success answer, read.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub tags: Vec<String>,
    pub error: Value,
    /// The body when it was not JSON (400s are plain text).
    pub text: String,
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn parse(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Answer {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let error = json
            .as_ref()
            .and_then(|j| j.get("error"))
            .cloned()
            .unwrap_or(Value::Null);
        let tags = tag_chain(&error);
        let body_wait = error
            .get("retry_after")
            .and_then(Value::as_u64)
            // A server's number: capped like the header's (a day).
            .map(|s| Duration::from_secs(s.min(24 * 3600)));
        Answer {
            status,
            tags,
            error,
            text: if json.is_some() {
                String::new()
            } else {
                http::snippet(body)
            },
            retry_after: http::retry_after(headers).or(body_wait),
        }
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Lock contention or a rate limit, however it came (a 429 with a JSON
    /// or plain-text body, or a 409 `too_many_write_operations`).
    pub fn is_rate_limit(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS
            || self.has_tag("too_many_write_operations")
            || self.has_tag("too_many_requests")
    }

    /// A 409 the caller decides on.
    pub fn into_route_error(self) -> RouteError {
        RouteError {
            tags: self.tags,
            error: self.error,
        }
    }

    /// The answer as an error of operation `what`; `scrub` removes any
    /// secret a server might echo.
    pub fn into_error(
        self,
        what: &str,
        refreshable: bool,
        scrub: &dyn Fn(&str) -> String,
    ) -> BackendError {
        let chain = self.tags.join("/");
        let code = self.status.as_u16();
        let detail = if !chain.is_empty() {
            chain.clone()
        } else if !self.text.is_empty() {
            scrub(&self.text)
        } else {
            String::new()
        };
        let (kind, message, fix) = classify(code, &self, refreshable);
        let mut message = format!("{what}: {message} (HTTP {code}");
        if !detail.is_empty() {
            message.push(' ');
            message.push_str(&detail);
        }
        message.push(')');
        let mut e = BackendError::new(NAME, kind, message, fix);
        if self.is_rate_limit() {
            // Dropbox's documented default when it names no wait.
            e = e.with_retry_after(self.retry_after.unwrap_or(Duration::from_secs(1)));
        } else if let Some(d) = self.retry_after {
            e = e.with_retry_after(d);
        }
        e
    }
}

/// Kind, message and fix of an answer.
fn classify(code: u16, a: &Answer, refreshable: bool) -> (ErrorKind, String, String) {
    let t = |tag: &str| a.has_tag(tag);
    if a.is_rate_limit() {
        let what = if t("too_many_write_operations") {
            "Dropbox is busy writing to this folder (lock contention)"
        } else {
            "Dropbox is rate-limiting this app"
        };
        return (
            ErrorKind::RateLimited,
            what.into(),
            "ferry waits as asked and retries; ship fewer bundles at once into one folder".into(),
        );
    }
    match code {
        400 => (
            ErrorKind::Other,
            "Dropbox refused the request as malformed".into(),
            "check ship.dropbox.api_url and content_url (each must point at its own host); otherwise this is a ferry bug, please report it".into(),
        ),
        401 if t("expired_access_token") && refreshable => (
            ErrorKind::Auth,
            "Dropbox token expired again right after a refresh".into(),
            "check the clock of this machine and that DROPBOX_APP_KEY belongs to DROPBOX_REFRESH_TOKEN".into(),
        ),
        401 if t("expired_access_token") => (
            ErrorKind::Auth,
            "Dropbox token expired".into(),
            EXPIRED_FIX.into(),
        ),
        401 if t("missing_scope") => {
            let scope = a
                .error
                .get("required_scope")
                .and_then(Value::as_str)
                .unwrap_or("files.content.write");
            (
                ErrorKind::Auth,
                format!("the Dropbox token lacks the scope {scope}"),
                format!(
                    "enable {scope} on the app's Permissions tab, then authorize again for a new refresh token (scopes are fixed when a token is issued)"
                ),
            )
        }
        401 if t("invalid_access_token") => (
            ErrorKind::Auth,
            "Dropbox refused the access token".into(),
            "the token is revoked or mistyped: set a valid DROPBOX_TOKEN, or DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY, DROPBOX_APP_SECRET".into(),
        ),
        401 => (
            ErrorKind::Auth,
            "Dropbox refused the credentials".into(),
            "check DROPBOX_TOKEN or DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY, DROPBOX_APP_SECRET".into(),
        ),
        403 => (
            ErrorKind::PermissionDenied,
            "Dropbox denied access".into(),
            "give the app access to ship.dropbox.folder (an app-folder app sees only its own folder)".into(),
        ),
        409 => route_classify(a),
        s if s >= 500 => (
            ErrorKind::Unavailable,
            "Dropbox failed".into(),
            "a server-side error; ferry retries, otherwise try again later (status.dropbox.com)".into(),
        ),
        _ => {
            let kind = http::kind_of_status(a.status);
            (kind, "Dropbox refused the request".into(), http::generic_fix(kind).into())
        }
    }
}

fn route_classify(a: &Answer) -> (ErrorKind, String, String) {
    let t = |tag: &str| a.has_tag(tag);
    if t("insufficient_space") {
        (
            ErrorKind::NoSpace,
            "the Dropbox account is full".into(),
            "free space in the Dropbox account or upgrade its plan".into(),
        )
    } else if t("conflict") {
        (
            ErrorKind::Conflict,
            "a different object is already stored under this key".into(),
            "ferry never overwrites: remove it from Dropbox or ship under another key".into(),
        )
    } else if t("malformed_path") || t("disallowed_name") {
        (
            ErrorKind::InvalidKey,
            "Dropbox refuses this path".into(),
            "use a key without names Dropbox refuses (desktop.ini, trailing spaces, …) and a valid ship.dropbox.folder".into(),
        )
    } else if t("not_found") {
        (
            ErrorKind::NotFound,
            "not found in Dropbox".into(),
            "check the key and ship.dropbox.folder".into(),
        )
    } else if t("no_write_permission") || t("access_denied") || t("no_permission") {
        (
            ErrorKind::PermissionDenied,
            "Dropbox denied the write".into(),
            "give the app write access to ship.dropbox.folder".into(),
        )
    } else if t("content_hash_mismatch") {
        // The bytes are checked before a put (the spool verifies its
        // data), so a mismatch is damage on the way: worth another try.
        (
            ErrorKind::Unavailable,
            "Dropbox received different bytes than ferry hashed".into(),
            "the bundle changed while it was uploaded, or the network corrupts data; ship it again"
                .into(),
        )
    } else if t("payload_too_large") {
        (
            ErrorKind::Config,
            "the request body was larger than Dropbox accepts".into(),
            "lower ship.dropbox.upload_cutoff_mib and ship.dropbox.chunk_mib".into(),
        )
    } else {
        (
            ErrorKind::Other,
            "Dropbox refused the request".into(),
            "see the Dropbox error tag above".into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tag_chains_follow_stone_rules() {
        let conflict = json!({".tag":"path","reason":{".tag":"conflict","conflict":{".tag":"file"}},"upload_session_id":"x"});
        assert_eq!(tag_chain(&conflict), ["path", "conflict", "file"]);
        let lookup = json!({".tag":"lookup_failed","lookup_failed":{".tag":"incorrect_offset","correct_offset":8388608}});
        assert_eq!(tag_chain(&lookup), ["lookup_failed", "incorrect_offset"]);
        let r = RouteError {
            tags: tag_chain(&lookup),
            error: lookup,
        };
        assert_eq!(r.correct_offset(), Some(8388608));
        assert!(r.is(&["lookup_failed"]) && !r.is(&["path"]));
        let rate = json!({"reason":{".tag":"too_many_write_operations"},"retry_after":3});
        assert_eq!(tag_chain(&rate), ["too_many_write_operations"]);
        assert_eq!(
            tag_chain(&json!({".tag":"expired_access_token"})),
            ["expired_access_token"]
        );
        assert_eq!(
            tag_chain(&json!({".tag":"path","path":"not_found"})),
            ["path", "not_found"]
        );
    }

    /// Regression: a body's `retry_after` was taken uncapped, and the
    /// retry loop's clock arithmetic overflowed on it (a panic).
    #[test]
    fn an_absurd_retry_after_is_capped() {
        let body = br#"{"error":{"reason":{".tag":"too_many_requests"},"retry_after":18446744073709551615}}"#;
        let a = Answer::parse(StatusCode::TOO_MANY_REQUESTS, &HeaderMap::new(), body);
        assert_eq!(a.retry_after, Some(Duration::from_secs(24 * 3600)));
    }

    #[test]
    fn rate_limits_keep_their_wait_however_they_come() {
        let h = HeaderMap::new();
        let body = br#"{"error_summary":"too_many_write_operations/..","error":{"reason":{".tag":"too_many_write_operations"},"retry_after":3}}"#;
        let a = Answer::parse(StatusCode::TOO_MANY_REQUESTS, &h, body);
        let e = a.into_error("put k", false, &|s| s.to_string());
        assert_eq!(e.kind(), ErrorKind::RateLimited);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.to_string().contains("too_many_write_operations"), "{e}");
        // Plain text, no header: Dropbox's default of one second.
        let a = Answer::parse(StatusCode::TOO_MANY_REQUESTS, &h, b"Too many requests");
        let e = a.into_error("put k", false, &|s| s.to_string());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        // 409 path/too_many_write_operations is contention too.
        let body = br#"{"error":{".tag":"path","reason":{".tag":"too_many_write_operations"}}}"#;
        let a = Answer::parse(StatusCode::CONFLICT, &h, body);
        assert!(a.is_rate_limit());
    }

    #[test]
    fn expired_token_names_the_refresh_variables() {
        let body =
            br#"{"error_summary":"expired_access_token/","error":{".tag":"expired_access_token"}}"#;
        let a = Answer::parse(StatusCode::UNAUTHORIZED, &HeaderMap::new(), body);
        let s = a
            .into_error("upload k", false, &|s| s.to_string())
            .to_string();
        assert!(s.contains("Dropbox token expired"), "{s}");
        assert!(
            s.contains("set DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY, DROPBOX_APP_SECRET"),
            "{s}"
        );
        assert!(s.contains("expired_access_token"), "{s}");
    }
}
