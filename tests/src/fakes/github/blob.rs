//! The blob store behind the signed URLs, with Azure block blob rules:
//!
//! * every request carries a valid, unexpired SAS for its path, allowing
//!   what it does (`w` to write, `r` to read), and no `Authorization`
//!   header (a bearer token meant for GitHub is refused);
//! * a write without `Content-Length` is `411 MissingContentLengthHeader`;
//! * Put Blob (`x-ms-blob-type: BlockBlob`) replaces the blob and drops
//!   staged blocks;
//! * Put Block (`comp=block&blockid=…`) takes base64 ids of at most 64
//!   bytes, all of one length per blob;
//! * Put Block List (`comp=blocklist`) commits, in list order, blocks
//!   that were staged (`Latest`/`Uncommitted`) or committed before, and
//!   refuses an id it does not have.

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Blob, State, lock};
use crate::http_fake::{Request, Response};

/// Largest block and Put Blob of the service version the URLs name.
const MAX_BLOCK: usize = 4000 << 20;

pub(crate) fn azure_error(status: u16, code: &str, message: &str) -> Response {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>{message}\nRequestId:00000000-0000-0000-0000-000000000000\nTime:2026-01-01T00:00:00.0000000Z</Message></Error>"
    );
    Response::new(status)
        .header("Content-Type", "application/xml")
        .header("x-ms-error-code", code)
        .body(xml.into_bytes())
}

pub(crate) fn handle(state: &Mutex<State>, r: &Request) -> Response {
    if r.header("authorization").is_some() {
        return azure_error(
            400,
            "InvalidAuthenticationInfo",
            "Authentication information is not given in the correct format. Check the value of Authorization header.",
        );
    }
    let path = r.path().to_string();
    let mut st = lock(state);
    let sp = match st.check_sas(
        &path,
        r.query("sp"),
        r.query("se"),
        r.query("sig"),
        r.query("sv"),
    ) {
        Ok(sp) => sp,
        Err(e) => return e,
    };
    match r.method.as_str() {
        "PUT" => {
            if !sp.contains('w') {
                return azure_error(
                    403,
                    "AuthorizationPermissionMismatch",
                    "This request is not authorized to perform this operation using this permission.",
                );
            }
            if r.chunked || r.header("content-length").is_none() {
                return azure_error(
                    411,
                    "MissingContentLengthHeader",
                    "Content-Length HTTP header is missing.",
                );
            }
            match r.query("comp").as_deref() {
                None => put_blob(&mut st, &path, r),
                Some("block") => put_block(&mut st, &path, r),
                Some("blocklist") => put_block_list(&mut st, &path, r),
                Some(other) => azure_error(
                    400,
                    "InvalidQueryParameterValue",
                    &format!(
                        "Value for one of the query parameters specified in the request URI is invalid: comp={other}"
                    ),
                ),
            }
        }
        "GET" => {
            if !sp.contains('r') {
                return azure_error(
                    403,
                    "AuthorizationPermissionMismatch",
                    "This request is not authorized to perform this operation using this permission.",
                );
            }
            match st
                .blobs
                .get(&path)
                .and_then(|b| b.data.clone().map(|d| (d, b.content_type.clone())))
            {
                Some((data, ct)) => {
                    let name = path.rsplit('/').next().unwrap_or("blob").to_string();
                    Response::new(200)
                        .header(
                            "Content-Type",
                            ct.as_deref().unwrap_or("application/octet-stream"),
                        )
                        .header("x-ms-blob-type", "BlockBlob")
                        .header(
                            "Content-Disposition",
                            &format!("attachment; filename={name}"),
                        )
                        .body(data)
                }
                None => azure_error(404, "BlobNotFound", "The specified blob does not exist."),
            }
        }
        _ => azure_error(
            405,
            "UnsupportedHttpVerb",
            "The resource doesn't support specified Http Verb.",
        ),
    }
}

fn put_blob(st: &mut State, path: &str, r: &Request) -> Response {
    match r.header("x-ms-blob-type") {
        Some("BlockBlob") => {}
        Some(_) => {
            return azure_error(
                400,
                "InvalidHeaderValue",
                "The value for one of the HTTP headers is not in the correct format.",
            );
        }
        None => {
            return azure_error(
                400,
                "MissingRequiredHeader",
                "An HTTP header that's mandatory for this request is not specified: x-ms-blob-type.",
            );
        }
    }
    if r.body.len() > MAX_BLOCK {
        return azure_error(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
        );
    }
    let ct = r
        .header("x-ms-blob-content-type")
        .or(r.header("content-type"))
        .map(str::to_string);
    st.blobs.insert(
        path.to_string(),
        Blob {
            data: Some(r.body.clone()),
            content_type: ct,
            ..Blob::default()
        },
    );
    Response::new(201)
}

fn put_block(st: &mut State, path: &str, r: &Request) -> Response {
    let Some(id) = r.query("blockid") else {
        return azure_error(
            400,
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified: blockid.",
        );
    };
    let decoded = match STANDARD.decode(&id) {
        Ok(d) => d,
        Err(_) => {
            return azure_error(
                400,
                "InvalidQueryParameterValue",
                "Value for one of the query parameters specified in the request URI is invalid: blockid.",
            );
        }
    };
    if decoded.is_empty() || decoded.len() > 64 {
        return azure_error(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid: blockid.",
        );
    }
    if r.body.len() > MAX_BLOCK {
        return azure_error(
            413,
            "RequestBodyTooLarge",
            "The request body is too large and exceeds the maximum permissible limit.",
        );
    }
    let blob = st.blobs.entry(path.to_string()).or_default();
    if blob.block_id_len.is_some_and(|n| n != id.len()) {
        return azure_error(
            400,
            "InvalidBlobOrBlock",
            "The specified blob or block content is invalid.",
        );
    }
    blob.block_id_len = Some(id.len());
    blob.uncommitted.insert(id, r.body.clone());
    Response::new(201)
}

/// The ids of a `<BlockList>` body with the list each comes from.
fn parse_block_list(body: &[u8]) -> Option<Vec<(String, String)>> {
    let text = std::str::from_utf8(body).ok()?.trim();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>")?.1.trim(),
        None => text,
    };
    let inner = text
        .strip_prefix("<BlockList>")?
        .strip_suffix("</BlockList>")?;
    let mut out = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let tag_end = rest.find('>')?;
        let tag = rest.strip_prefix('<')?.get(..tag_end - 1)?;
        if !matches!(tag, "Latest" | "Committed" | "Uncommitted") {
            return None;
        }
        let close = format!("</{tag}>");
        let after = &rest[tag_end + 1..];
        let end = after.find(&close)?;
        out.push((tag.to_string(), after[..end].trim().to_string()));
        rest = after[end + close.len()..].trim();
    }
    Some(out)
}

fn put_block_list(st: &mut State, path: &str, r: &Request) -> Response {
    let Some(list) = parse_block_list(&r.body) else {
        return azure_error(
            400,
            "InvalidXmlDocument",
            "XML specified is not syntactically valid.",
        );
    };
    let blob = st.blobs.entry(path.to_string()).or_default();
    let mut blocks = Vec::with_capacity(list.len());
    for (from, id) in &list {
        let staged = blob.uncommitted.get(id);
        let committed = blob
            .committed_blocks
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, d)| d);
        let found = match from.as_str() {
            "Uncommitted" => staged,
            "Committed" => committed,
            _ => staged.or(committed),
        };
        match found {
            Some(d) => blocks.push((id.clone(), d.clone())),
            None => {
                return azure_error(
                    400,
                    "InvalidBlockList",
                    "The specified block list is invalid.",
                );
            }
        }
    }
    blob.data = Some(blocks.iter().flat_map(|(_, d)| d.iter().copied()).collect());
    blob.committed_blocks = blocks;
    blob.uncommitted.clear();
    blob.content_type = r.header("x-ms-blob-content-type").map(str::to_string);
    Response::new(201)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_parse_strictly() {
        assert_eq!(
            parse_block_list(
                br#"<?xml version="1.0" encoding="utf-8"?><BlockList><Latest>QQ==</Latest> <Committed>Qg==</Committed></BlockList>"#
            ),
            Some(vec![
                ("Latest".into(), "QQ==".into()),
                ("Committed".into(), "Qg==".into())
            ])
        );
        assert_eq!(parse_block_list(b"<BlockList></BlockList>"), Some(vec![]));
        for bad in [
            &b"<BlockList><Oldest>QQ==</Oldest></BlockList>"[..],
            b"<BlockList><Latest>QQ==</BlockList>",
            b"<Blocks></Blocks>",
            b"",
        ] {
            assert_eq!(
                parse_block_list(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
