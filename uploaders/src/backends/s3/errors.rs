//! What an S3 error answer means: its kind (so retries happen only where
//! they can help) and the fix to print. The code from the XML body wins
//! over the status; HEAD answers have no body, so the status decides.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::NAME;
use super::xml::S3Error;
use crate::backends::http;
use crate::backends::{BackendError, ErrorKind};

/// What the fix lines may mention.
pub struct Context<'a> {
    pub bucket: &'a str,
    pub region: &'a str,
    pub access_key_id: &'a str,
}

/// The kind and fix of S3 error `code`.
pub fn classify(
    code: &str,
    err: Option<&S3Error>,
    cx: &Context<'_>,
) -> Option<(ErrorKind, String)> {
    let bucket = cx.bucket;
    let (kind, fix) = match code {
        "SignatureDoesNotMatch" => (
            ErrorKind::Auth,
            format!(
                "check AWS_SECRET_ACCESS_KEY: it must be the secret of AWS_ACCESS_KEY_ID={} (and ship.s3.endpoint must be the service that issued it)",
                cx.access_key_id
            ),
        ),
        "InvalidAccessKeyId" | "NotSignedUp" => (
            ErrorKind::Auth,
            format!(
                "check AWS_ACCESS_KEY_ID: the service does not know {:?}",
                cx.access_key_id
            ),
        ),
        "ExpiredToken" | "TokenRefreshRequired" => (
            ErrorKind::Auth,
            "the temporary credentials expired: issue new AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN (e.g. a longer role session for the job)".into(),
        ),
        "InvalidToken" => (
            ErrorKind::Auth,
            "check AWS_SESSION_TOKEN: it must belong to AWS_ACCESS_KEY_ID (unset it for long-term keys)".into(),
        ),
        "AccessDenied" | "AllAccessDisabled" | "AccountProblem" => (
            ErrorKind::PermissionDenied,
            format!(
                "give the key s3:PutObject, s3:GetObject, s3:ListBucket and s3:AbortMultipartUpload on bucket {bucket:?}"
            ),
        ),
        "NoSuchBucket" => (
            ErrorKind::Config,
            format!(
                "create bucket {bucket:?} or fix ship.s3.bucket (FERRY_SHIP_S3_BUCKET)"
            ),
        ),
        "InvalidBucketName" => (
            ErrorKind::Config,
            format!("bucket name {bucket:?} is refused by the service; fix ship.s3.bucket"),
        ),
        "NoSuchKey" => (
            ErrorKind::NotFound,
            "list the bundles with `ferry pull` and check the key".into(),
        ),
        "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException" => {
            let want = err.and_then(|e| e.region.as_deref()).unwrap_or("the bucket's region");
            (
                ErrorKind::Config,
                format!(
                    "the bucket is not in region {:?}: set ship.s3.region (or AWS_REGION) to {want}",
                    cx.region
                ),
            )
        }
        "PermanentRedirect" | "TemporaryRedirect" => {
            let to = err
                .and_then(|e| e.endpoint.as_deref())
                .map(|e| format!(" (the service points at {e})"))
                .unwrap_or_default();
            (
                ErrorKind::Config,
                format!(
                    "bucket {bucket:?} is not served here{to}: set ship.s3.region to the bucket's region, or ship.s3.endpoint"
                ),
            )
        }
        "RequestTimeTooSkewed" => (
            ErrorKind::Unavailable,
            "this machine's clock is more than 15 minutes off the service's: sync it (timedatectl set-ntp true, chrony)".into(),
        ),
        "SlowDown" => (
            ErrorKind::RateLimited,
            "the service is throttling requests; retried with backoff".into(),
        ),
        "InternalError" | "ServiceUnavailable" | "RequestTimeout" | "OperationAborted" => (
            ErrorKind::Unavailable,
            "the service failed or timed out; retried with backoff".into(),
        ),
        "BadDigest" | "XAmzContentSHA256Mismatch" | "InvalidDigest" => (
            ErrorKind::Unavailable,
            "the body arrived different from what was sent (corrupted on the way); retried; if it persists check proxies between here and the endpoint".into(),
        ),
        "EntityTooSmall" => (
            ErrorKind::Config,
            "the service wants bigger parts: raise ship.s3.part_size_mib".into(),
        ),
        "EntityTooLarge" => (
            ErrorKind::Config,
            "the object is too big for one request: lower ship.s3.multipart_threshold_mib or ship.s3.part_size_mib".into(),
        ),
        "QuotaExceeded" | "InsufficientStorage" | "XMinioStorageFull" => (
            ErrorKind::NoSpace,
            format!("free space or raise the quota of bucket {bucket:?}"),
        ),
        "PreconditionFailed" => (
            ErrorKind::Conflict,
            "another object holds this key; bundle keys carry the run id, so remove the old object by hand if it is wrong".into(),
        ),
        "NotImplemented" => (
            ErrorKind::Other,
            "the service lacks a feature ferry uses; see docs/backends/s3.md for what is needed".into(),
        ),
        _ => return None,
    };
    Some((kind, fix))
}

/// Whether `code` says the body arrived corrupt.
pub fn is_digest_error(code: &str) -> bool {
    matches!(
        code,
        "BadDigest" | "XAmzContentSHA256Mismatch" | "InvalidDigest"
    )
}

/// An error answer as a [`BackendError`]: `what` failed with `status`
/// and (when the body holds one) the S3 error code and message.
pub fn from_answer(
    what: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    cx: &Context<'_>,
) -> BackendError {
    let parsed = super::xml::error(body);
    let Some(e) = parsed else {
        // No S3 error document (HEAD, a proxy's page): the status decides,
        // with the S3 reading of the common ones.
        let by_status = match status.as_u16() {
            403 => classify("AccessDenied", None, cx),
            404 => Some((
                ErrorKind::NotFound,
                format!("check the key, and that bucket {:?} exists", cx.bucket),
            )),
            301 | 307 => classify("PermanentRedirect", None, cx),
            _ => None,
        };
        let (kind, fix) = by_status.unzip();
        return http::status_error(NAME, what, status, headers, body, kind, fix.as_deref());
    };
    let (kind, fix) = classify(&e.code, Some(&e), cx).unwrap_or_else(|| {
        let k = http::kind_of_status(status);
        (k, http::generic_fix(k).to_string())
    });
    let mut message = format!("{what}: HTTP {} {}", status.as_u16(), e.code);
    let detail = http::snippet(e.message.as_bytes());
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(&detail);
    }
    let mut out = BackendError::new(NAME, kind, message, fix);
    if let Some(d) = http::retry_after(headers) {
        out = out.with_retry_after(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context {
            bucket: "bundles",
            region: "us-east-1",
            access_key_id: "AKIDEXAMPLE",
        }
    }

    fn answer(status: u16, body: &str) -> BackendError {
        from_answer(
            "put k",
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            &cx(),
        )
    }

    fn xml_error(code: &str) -> String {
        format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
    }

    #[test]
    fn codes_decide_kind_and_fix() {
        let e = answer(403, &xml_error("SignatureDoesNotMatch"));
        assert_eq!(e.kind(), ErrorKind::Auth);
        let s = e.to_string();
        assert!(
            s.starts_with("s3 backend: put k: HTTP 403 SignatureDoesNotMatch: m"),
            "{s}"
        );
        assert!(s.contains("check AWS_SECRET_ACCESS_KEY"), "{s}");
        let e = answer(404, &xml_error("NoSuchBucket"));
        assert_eq!(e.kind(), ErrorKind::Config);
        assert!(
            e.fix()
                .contains("create bucket \"bundles\" or fix ship.s3.bucket"),
            "{e}"
        );
        assert!(answer(503, &xml_error("SlowDown")).is_transient());
        assert!(answer(500, &xml_error("InternalError")).is_transient());
        assert!(answer(400, &xml_error("XAmzContentSHA256Mismatch")).is_transient());
        assert!(!answer(400, &xml_error("EntityTooSmall")).is_transient());
        assert_eq!(
            answer(412, &xml_error("PreconditionFailed")).kind(),
            ErrorKind::Conflict
        );
        // An unknown code falls back on the status.
        assert!(answer(503, &xml_error("Whatever")).is_transient());
        assert!(!answer(400, &xml_error("Whatever")).is_transient());
    }

    #[test]
    fn region_hint_from_the_body() {
        let body = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>m</Message><Region>eu-west-1</Region></Error>";
        let e = answer(400, body);
        assert!(e.fix().contains("to eu-west-1"), "{e}");
    }

    #[test]
    fn bodyless_answers_use_the_status() {
        let e = answer(403, "");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("HTTP 403"), "{e}");
        assert_eq!(answer(404, "").kind(), ErrorKind::NotFound);
        assert!(answer(502, "<html>bad gateway</html>").is_transient());
    }
}
