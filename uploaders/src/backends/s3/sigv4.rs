//! AWS Signature Version 4 for S3, header and query (presigned) forms.
//!
//! Our own ~200 lines rather than `aws-sigv4`: that crate builds on rustc
//! 1.95 but brings the smithy runtime types (its own `http` request
//! model) for one function we can check against AWS's published vectors
//! below; the wire rules that matter are few (canonical URI as sent,
//! `%20` not `+`, valueless parameters as `name=`, sorted lowercase
//! headers).

use std::fmt;
use std::time::SystemTime;

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// Everything but the unreserved characters `A-Z a-z 0-9 - . _ ~`.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// The same, keeping `/` between the segments of a key.
const PATH: &AsciiSet = &QUERY.remove(b'/');

/// The payload hash of an empty body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Percent-encodes a query name or value (space as `%20`, never `+`).
pub fn encode_query(s: &str) -> String {
    utf8_percent_encode(s, QUERY).to_string()
}

/// Percent-encodes an object key for the request path: every byte but the
/// unreserved ones and `/` (so `+` becomes `%2B`, which some servers would
/// otherwise read as a space).
pub fn encode_path(s: &str) -> String {
    utf8_percent_encode(s, PATH).to_string()
}

/// Access key, secret and optional session token. The secret and token
/// never appear in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A request to sign: the path exactly as it goes on the wire, the query
/// parameters unencoded, headers with lowercase names.
pub struct Canonical<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(String, String)],
    pub headers: &'a [(String, String)],
    pub payload_hash: &'a str,
}

/// `YYYYMMDDTHHMMSSZ` of `t` (UTC).
pub fn amz_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect()
}

/// The canonical query string: names and values encoded, sorted.
fn canonical_query(query: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (encode_query(k), encode_query(v)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Header values trimmed with inner runs of spaces collapsed.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request and the signed-headers list.
pub fn canonical_request(c: &Canonical<'_>) -> (String, String) {
    let mut headers: Vec<(String, String)> = c
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), canonical_value(v)))
        .collect();
    headers.sort();
    let signed = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let mut s = String::with_capacity(512);
    s.push_str(c.method);
    s.push('\n');
    s.push_str(c.path);
    s.push('\n');
    s.push_str(&canonical_query(c.query));
    s.push('\n');
    for (k, v) in &headers {
        s.push_str(k);
        s.push(':');
        s.push_str(v);
        s.push('\n');
    }
    s.push('\n');
    s.push_str(&signed);
    s.push('\n');
    s.push_str(c.payload_hash);
    (s, signed)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    m.update(data);
    m.finalize().into_bytes().into()
}

/// Signs requests for one region with one set of credentials.
#[derive(Debug, Clone)]
pub struct Signer {
    pub credentials: Credentials,
    pub region: String,
}

impl Signer {
    fn scope(&self, date: &str) -> String {
        format!("{date}/{}/s3/aws4_request", self.region)
    }

    fn signature(&self, amz_date: &str, canonical: &str) -> String {
        let date = &amz_date[..8.min(amz_date.len())];
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
            self.scope(date),
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k_date = hmac(
            format!("AWS4{}", self.credentials.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, b"s3");
        let k_signing = hmac(&k_service, b"aws4_request");
        hex::encode(hmac(&k_signing, to_sign.as_bytes()))
    }

    /// Adds `x-amz-date`, `x-amz-content-sha256` and (with temporary
    /// credentials) `x-amz-security-token` to `headers`, which must hold
    /// `host` and every other header that will be sent, and returns the
    /// `Authorization` value.
    pub fn authorize(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        headers: &mut Vec<(String, String)>,
        payload_hash: &str,
        now: SystemTime,
    ) -> String {
        let date = amz_date(now);
        headers.push(("x-amz-date".into(), date.clone()));
        headers.push(("x-amz-content-sha256".into(), payload_hash.to_string()));
        if let Some(t) = &self.credentials.session_token {
            headers.push(("x-amz-security-token".into(), t.clone()));
        }
        let (canonical, signed) = canonical_request(&Canonical {
            method,
            path,
            query,
            headers,
            payload_hash,
        });
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={}",
            self.credentials.access_key_id,
            self.scope(&date[..8]),
            self.signature(&date, &canonical)
        )
    }

    /// The query string of a presigned GET of `path` on `host`, valid for
    /// `expires_secs` from `now`.
    pub fn presign(
        &self,
        method: &str,
        host: &str,
        path: &str,
        expires_secs: u64,
        now: SystemTime,
    ) -> String {
        let date = amz_date(now);
        let mut query = vec![
            (
                "X-Amz-Algorithm".to_string(),
                "AWS4-HMAC-SHA256".to_string(),
            ),
            (
                "X-Amz-Credential".to_string(),
                format!(
                    "{}/{}",
                    self.credentials.access_key_id,
                    self.scope(&date[..8])
                ),
            ),
            ("X-Amz-Date".to_string(), date.clone()),
            ("X-Amz-Expires".to_string(), expires_secs.to_string()),
            ("X-Amz-SignedHeaders".to_string(), "host".to_string()),
        ];
        if let Some(t) = &self.credentials.session_token {
            query.push(("X-Amz-Security-Token".to_string(), t.clone()));
        }
        let headers = [("host".to_string(), host.to_string())];
        let (canonical, _) = canonical_request(&Canonical {
            method,
            path,
            query: &query,
            headers: &headers,
            payload_hash: "UNSIGNED-PAYLOAD",
        });
        let signature = self.signature(&date, &canonical);
        query.push(("X-Amz-Signature".to_string(), signature));
        canonical_query(&query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// 2013-05-24T00:00:00Z, the date of AWS's published examples.
    fn example_time() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_369_353_600)
    }

    fn example_signer() -> Signer {
        Signer {
            credentials: Credentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                session_token: None,
            },
            region: "us-east-1".into(),
        }
    }

    #[test]
    fn dates() {
        assert_eq!(amz_date(example_time()), "20130524T000000Z");
    }

    /// AWS's "GET object" example (protocols.md C.2): canonical request hash
    /// and signature as published.
    #[test]
    fn aws_get_object_vector() {
        let signer = example_signer();
        let mut headers = vec![
            (
                "host".to_string(),
                "examplebucket.s3.amazonaws.com".to_string(),
            ),
            ("range".to_string(), "bytes=0-9".to_string()),
        ];
        let auth = signer.authorize(
            "GET",
            "/test.txt",
            &[],
            &mut headers,
            EMPTY_SHA256,
            example_time(),
        );
        let (canonical, signed) = canonical_request(&Canonical {
            method: "GET",
            path: "/test.txt",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        });
        assert_eq!(signed, "host;range;x-amz-content-sha256;x-amz-date");
        assert_eq!(
            hex::encode(Sha256::digest(canonical.as_bytes())),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn query_is_encoded_sorted_and_valueless_params_keep_their_equals() {
        let q = vec![
            ("uploads".to_string(), String::new()),
            ("prefix".to_string(), "a b+c/ü".to_string()),
            ("list-type".to_string(), "2".to_string()),
        ];
        assert_eq!(
            canonical_query(&q),
            "list-type=2&prefix=a%20b%2Bc%2F%C3%BC&uploads="
        );
        assert_eq!(
            encode_path("h/run 1/a+b~c.tar.gz"),
            "h/run%201/a%2Bb~c.tar.gz"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed_and_session_token_is_signed() {
        let mut signer = example_signer();
        signer.credentials.session_token = Some("TOKEN".into());
        let mut headers = vec![
            ("host".into(), "h".into()),
            ("x-amz-meta-a".into(), "  a   b ".into()),
        ];
        let _ = signer.authorize(
            "PUT",
            "/b/k",
            &[],
            &mut headers,
            EMPTY_SHA256,
            example_time(),
        );
        let (canonical, signed) = canonical_request(&Canonical {
            method: "PUT",
            path: "/b/k",
            query: &[],
            headers: &headers,
            payload_hash: EMPTY_SHA256,
        });
        assert!(canonical.contains("\nx-amz-meta-a:a b\n"), "{canonical}");
        assert_eq!(
            signed,
            "host;x-amz-content-sha256;x-amz-date;x-amz-meta-a;x-amz-security-token"
        );
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let mut c = example_signer().credentials;
        c.session_token = Some("SESSIONTOKEN".into());
        let s = format!("{:?}", example_signer());
        assert!(!s.contains("EXAMPLEKEY"), "{s}");
        let s = format!("{c:?}");
        assert!(
            !s.contains("EXAMPLEKEY") && !s.contains("SESSIONTOKEN"),
            "{s}"
        );
    }

    #[test]
    fn presigned_query_carries_the_signature_last_in_sort_order() {
        let q = example_signer().presign(
            "GET",
            "examplebucket.s3.amazonaws.com",
            "/test.txt",
            86400,
            example_time(),
        );
        assert!(q.starts_with("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-Signature="), "{q}");
        assert!(q.ends_with("&X-Amz-SignedHeaders=host"), "{q}");
        // AWS's published "presigned URL" example signature.
        assert!(
            q.contains(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{q}"
        );
    }
}
