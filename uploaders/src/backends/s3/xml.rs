//! The XML documents S3 speaks: error bodies, listings, multipart
//! bookkeeping. Unknown elements are ignored, so servers that add
//! fields (or omit optional ones, like s3s-fs's listing ETags) parse.

use quick_xml::events::Event;
use serde::{Deserialize, Serialize};

/// `<Error>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct S3Error {
    pub code: String,
    pub message: String,
    /// Given with `AuthorizationHeaderMalformed` (the bucket's region).
    pub region: Option<String>,
    /// Given with `PermanentRedirect`.
    pub endpoint: Option<String>,
}

/// `<ListBucketResult>` of ListObjectsV2.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ListBucketResult {
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
    pub contents: Vec<Contents>,
}

/// One `<Contents>` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Contents {
    pub key: String,
    pub last_modified: String,
    pub size: u64,
}

/// `<InitiateMultipartUploadResult>`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InitiateResult {
    pub upload_id: String,
}

/// `<CompleteMultipartUpload>`, the body of CompleteMultipartUpload.
#[derive(Debug, Serialize)]
#[serde(rename = "CompleteMultipartUpload")]
pub struct CompleteRequest {
    #[serde(rename = "Part")]
    pub parts: Vec<CompletedPart>,
}

/// One `<Part>` of it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CompletedPart {
    pub part_number: u32,
    /// As the server sent it, quotes included.
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "ChecksumSHA256")]
    pub checksum_sha256: String,
}

/// The name of the document's root element, if it has one.
pub fn root_name(body: &[u8]) -> Option<String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                return Some(e.local_name().into_inner().to_string());
            }
            Ok(Event::Eof) | Err(_) => return None,
            Ok(_) => buf.clear(),
        }
    }
}

/// Parses `body` as `T`; `None` when it is not that document.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8], root: &str) -> Option<T> {
    if root_name(body).as_deref() != Some(root) {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    quick_xml::de::from_str(text).ok()
}

/// The `<Error>` in `body`, if there is one.
pub fn error(body: &[u8]) -> Option<S3Error> {
    parse::<S3Error>(body, "Error").filter(|e| !e.code.is_empty())
}

/// The body of CompleteMultipartUpload.
pub fn complete_body(parts: Vec<CompletedPart>) -> Result<String, quick_xml::SeError> {
    quick_xml::se::to_string(&CompleteRequest { parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_parse_and_other_documents_are_not_errors() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>AuthorizationHeaderMalformed</Code><Message>wrong region</Message><Region>eu-west-1</Region><RequestId>1</RequestId></Error>"#;
        let e = error(body).unwrap();
        assert_eq!(e.code, "AuthorizationHeaderMalformed");
        assert_eq!(e.region.as_deref(), Some("eu-west-1"));
        assert!(error(b"<ListBucketResult></ListBucketResult>").is_none());
        assert!(error(b"not xml at all").is_none());
        assert!(error(b"").is_none());
    }

    /// CompleteMultipartUpload may answer 200 with whitespace, then `<Error>`.
    #[test]
    fn an_error_after_leading_whitespace_is_found() {
        let body = b"    \n   <?xml version=\"1.0\"?><Error><Code>InternalError</Code></Error>";
        assert_eq!(root_name(body).as_deref(), Some("Error"));
        assert_eq!(error(body).unwrap().code, "InternalError");
    }

    #[test]
    fn listings_parse_with_and_without_optional_fields() {
        let body = br#"<?xml version="1.0"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/a &amp; b.tar.gz</Key><LastModified>2026-12-03T12:00:00.000Z</LastModified><ETag>"x"</ETag><Size>12</Size></Contents>
<Contents><Key>p/c</Key><LastModified>2026-12-03T12:00:01Z</LastModified><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
<NextContinuationToken>p/c</NextContinuationToken></ListBucketResult>"#;
        let l: ListBucketResult = parse(body, "ListBucketResult").unwrap();
        assert!(l.is_truncated);
        assert_eq!(l.next_continuation_token.as_deref(), Some("p/c"));
        assert_eq!(l.contents.len(), 2);
        assert_eq!(l.contents[0].key, "p/a & b.tar.gz");
        assert_eq!(l.contents[1].size, 3);
        let empty: ListBucketResult = parse(
            b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
            "ListBucketResult",
        )
        .unwrap();
        assert!(empty.contents.is_empty() && !empty.is_truncated);
    }

    #[test]
    fn complete_body_escapes_etags() {
        let s = complete_body(vec![CompletedPart {
            part_number: 1,
            etag: "\"a&b<c\"".into(),
            checksum_sha256: "q+/=".into(),
        }])
        .unwrap();
        assert_eq!(
            s,
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"a&amp;b&lt;c\"</ETag><ChecksumSHA256>q+/=</ChecksumSHA256></Part></CompleteMultipartUpload>"
        );
    }
}
