//! ListObjectsV2, every page, keys relative to the prefix.

use std::time::SystemTime;

use reqwest::Method;

use super::request::Call;
use super::{NAME, S3Backend, xml};
use crate::backends::http;
use crate::backends::{BackendError, ErrorKind, RemoteObject, validate_key};

/// The objects under the prefix whose keys start with `prefix`, sorted.
pub(super) fn list(b: &S3Backend, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
    if prefix.chars().any(|c| c.is_control() || c == '\\') {
        validate_key(NAME, prefix)?;
    }
    let full_prefix = b.full_key(prefix);
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let page_keys = b.cfg.list_page_keys.to_string();
    loop {
        let what = format!("list {full_prefix:?}");
        let page: xml::ListBucketResult = b.retry.run(&what, |_| {
            let mut call = Call::new(Method::GET, None)
                .query("list-type", "2")
                .query("max-keys", &page_keys);
            if !full_prefix.is_empty() {
                call = call.query("prefix", &full_prefix);
            }
            if let Some(t) = &token {
                call = call.query("continuation-token", t);
            }
            let resp = b.send(&what, call)?;
            let body = b.ok_body(&what, resp)?;
            xml::parse(&body, "ListBucketResult").ok_or_else(|| {
                BackendError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "{what}: the answer is not a ListBucketResult: {}",
                        http::snippet(&body)
                    ),
                    "retry later; if it persists check that ship.s3.endpoint is an S3 service",
                )
            })
        })?;
        for c in page.contents {
            let Some(key) = c.key.strip_prefix(&b.cfg.prefix) else {
                continue;
            };
            if key.is_empty() || key.ends_with('/') {
                continue;
            }
            let modified = humantime::parse_rfc3339_weak(c.last_modified.trim())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            out.push(RemoteObject {
                key: key.to_string(),
                size: c.size,
                modified,
            });
        }
        match (page.is_truncated, page.next_continuation_token) {
            (true, Some(t)) if Some(&t) != token.as_ref() => token = Some(t),
            (true, _) => {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Other,
                    format!(
                        "list {full_prefix:?}: the listing is truncated but gives no new continuation token"
                    ),
                    "the endpoint's ListObjectsV2 is broken; check ship.s3.endpoint",
                ));
            }
            (false, _) => break,
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}
