//! The signed blob URLs: uploads with Azure block blob semantics, and
//! downloads.
//!
//! A signed URL's query is a SAS signature, so it is a secret: it is never
//! put in a message, and whatever the store says back is scrubbed of it.
//!
//! A bundle up to the block size goes in one Put Blob; a larger one is
//! staged in blocks (Put Block, a few at once, each streamed from its range
//! of the file and retried on its own) and committed by a Put Block List.
//! Block ids are base64 of equal-length strings, as Azure requires.
//! Limits follow the service version the URL's `sv=` names.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::Url;
use reqwest::blocking::{Body, Client, Response};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

use super::NAME;
use crate::backends::http::{self, Timeouts};
use crate::backends::{BackendError, CopyError, ErrorKind, copy_hashed};
use crate::progress::Progress;
use crate::retry::RetryPolicy;

const MIB: u64 = 1 << 20;
/// Most committed blocks a blob may have.
const MAX_BLOCKS: u64 = 50_000;

/// How one client talks to the blob store.
#[derive(Clone, Copy)]
pub struct Store<'a> {
    pub client: &'a Client,
    pub retry: &'a RetryPolicy,
    pub timeouts: Timeouts,
}

/// How a bundle of some size goes up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// One Put Blob.
    Single,
    /// `count` blocks of `size` bytes (the last one shorter).
    Blocks { size: u64, count: u64 },
}

/// The largest block and single Put Blob of service version `sv`
/// (`YYYY-MM-DD`; the limits grew in 2016-05-31 and 2019-12-12).
fn limits(sv: Option<&str>) -> (u64, u64) {
    match sv {
        Some(v) if v >= "2019-12-12" => (4000 * MIB, 5000 * MIB),
        Some(v) if v >= "2016-05-31" => (100 * MIB, 256 * MIB),
        _ => (4 * MIB, 64 * MIB),
    }
}

/// How `size` bytes go up in blocks of about `block`, under the limits of
/// the URL's service version.
pub fn plan(size: u64, block: u64, sv: Option<&str>) -> Result<Plan, BackendError> {
    let (max_block, max_single) = limits(sv);
    let block = block.clamp(1, max_block);
    if size <= block && size <= max_single {
        return Ok(Plan::Single);
    }
    let block = block.max(size.div_ceil(MAX_BLOCKS)).min(max_block);
    let count = size.div_ceil(block);
    if count > MAX_BLOCKS {
        return Err(BackendError::new(
            NAME,
            ErrorKind::Config,
            format!(
                "a bundle of {size} bytes is larger than one blob may be ({MAX_BLOCKS} blocks of {max_block} bytes)"
            ),
            "lower ship.max_file_mib so bundles get smaller, or ship to s3",
        ));
    }
    Ok(Plan::Blocks { size: block, count })
}

/// Block `i`'s id: base64 of a fixed-width string, so all ids of a blob
/// have one length. (16 bytes: the base64 ends in `==`, which must be
/// escaped in the query.)
pub fn block_id(i: u64) -> String {
    STANDARD.encode(format!("ferry-blk-{i:06}"))
}

/// The URL with `params` appended to its signed query.
fn with_params(url: &Url, params: &[(&str, &str)]) -> Url {
    let mut u = url.clone();
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
    }
    u
}

/// Puts the file `src` (`size` bytes) at the signed `url`.
#[allow(clippy::too_many_arguments)]
pub fn upload(
    store: Store<'_>,
    url: &Url,
    src: &Path,
    size: u64,
    block: u64,
    concurrency: u32,
    content_type: &str,
    name: &str,
    progress: &Progress,
) -> Result<(), BackendError> {
    let sv = url
        .query_pairs()
        .find(|(k, _)| k == "sv")
        .map(|(_, v)| v.into_owned());
    match plan(size, block, sv.as_deref())? {
        Plan::Single => {
            let what = format!("Put Blob {name}");
            store.retry.run(&what, |_| {
                send_range(store, url, src, 0, size, &what, progress, |req| {
                    req.header("x-ms-blob-type", "BlockBlob")
                        .header(CONTENT_TYPE, content_type)
                })
            })
        }
        Plan::Blocks { size: bsize, count } => {
            stage_blocks(
                store,
                url,
                src,
                size,
                bsize,
                count,
                concurrency,
                name,
                progress,
            )?;
            commit(store, url, count, content_type, name)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn stage_blocks(
    store: Store<'_>,
    url: &Url,
    src: &Path,
    size: u64,
    bsize: u64,
    count: u64,
    concurrency: u32,
    name: &str,
    progress: &Progress,
) -> Result<(), BackendError> {
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let failed: Mutex<Option<BackendError>> = Mutex::new(None);
    let workers = u64::from(concurrency.max(1)).min(count);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let offset = i * bsize;
                    let len = bsize.min(size - offset);
                    let id = block_id(i);
                    let block_url = with_params(url, &[("comp", "block"), ("blockid", &id)]);
                    let what = format!("Put Block {} of {count} of {name}", i + 1);
                    let r = store.retry.run(&what, |_| {
                        send_range(store, &block_url, src, offset, len, &what, progress, |r| r)
                    });
                    if let Err(e) = r {
                        stop.store(true, Ordering::Relaxed);
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    match failed.into_inner() {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(_) => Err(BackendError::new(
            NAME,
            ErrorKind::Other,
            format!("uploading {name}: a block worker panicked"),
            "report this as a ferry bug",
        )),
    }
}

/// Commits blocks `0..count` in order.
fn commit(
    store: Store<'_>,
    url: &Url,
    count: u64,
    content_type: &str,
    name: &str,
) -> Result<(), BackendError> {
    let mut xml = String::from(r#"<?xml version="1.0" encoding="utf-8"?><BlockList>"#);
    for i in 0..count {
        xml.push_str("<Latest>");
        xml.push_str(&block_id(i));
        xml.push_str("</Latest>");
    }
    xml.push_str("</BlockList>");
    let list_url = with_params(url, &[("comp", "blocklist")]);
    let what = format!("Put Block List of {name}");
    store.retry.run(&what, |_| {
        let resp = store
            .client
            .put(list_url.clone())
            .header(CONTENT_TYPE, "application/xml")
            .header("x-ms-blob-content-type", content_type)
            .timeout(http::transfer_timeout(store.timeouts, xml.len() as u64))
            .body(xml.clone())
            .send()
            .map_err(|e| http::transport_error(NAME, &what, e))?;
        expect_created(resp, &what, url)
    })
}

/// One attempt at sending `len` bytes of `src` from `offset`; the bytes of
/// a failed attempt are taken back from `progress`.
#[allow(clippy::too_many_arguments)]
fn send_range(
    store: Store<'_>,
    url: &Url,
    src: &Path,
    offset: u64,
    len: u64,
    what: &str,
    progress: &Progress,
    headers: impl FnOnce(reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder,
) -> Result<(), BackendError> {
    let (body, sent): (Body, _) =
        http::file_body_counted(NAME, src, offset, len, Some(progress.clone()))?;
    let req = store
        .client
        .put(url.clone())
        .timeout(http::transfer_timeout(store.timeouts, len))
        .body(body);
    let result = headers(req)
        .send()
        .map_err(|e| http::transport_error(NAME, what, e))
        .and_then(|resp| expect_created(resp, what, url));
    if result.is_err() {
        progress.rewind(sent.get());
    }
    result
}

fn expect_created(resp: Response, what: &str, url: &Url) -> Result<(), BackendError> {
    let status = resp.status();
    if status == StatusCode::CREATED || status == StatusCode::OK {
        return Ok(());
    }
    Err(store_error(resp, what, url))
}

/// A blob store refusal: its `<Code>` and first line of `<Message>`,
/// scrubbed of the signature.
fn store_error(resp: Response, what: &str, url: &Url) -> BackendError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = http::read_body(NAME, what, resp, 64 << 10).unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let code = xml_text(&text, "Code").unwrap_or_default();
    let msg = xml_text(&text, "Message")
        .and_then(|m| m.lines().next().map(str::to_string))
        .unwrap_or_default();
    let (kind, fix) = match (status.as_u16(), code.as_str()) {
        (403, "AuthenticationFailed") | (403, "") => (
            ErrorKind::Auth,
            "the signed blob URL expired or was refused; ferry starts the artifact again with a new one",
        ),
        (403, _) => (
            ErrorKind::PermissionDenied,
            "the signed blob URL does not allow this; ferry starts the artifact again with a new one",
        ),
        (411, _) | (400, _) | (413, _) => (
            ErrorKind::Other,
            "the blob store refused ferry's request; report this as a ferry bug with the message above",
        ),
        _ => {
            let kind = http::kind_of_status(status);
            (kind, http::generic_fix(kind))
        }
    };
    let mut message = format!("{what}: HTTP {}", status.as_u16());
    if !code.is_empty() {
        message.push_str(&format!(" {code}"));
    }
    if !msg.is_empty() {
        message.push_str(&format!(": {}", http::snippet(msg.as_bytes())));
    }
    let mut e = BackendError::new(NAME, kind, scrub(&message, url), fix);
    if let Some(d) = http::retry_after(&headers) {
        e = e.with_retry_after(d);
    }
    e
}

/// The text of the first `<tag>` element, if any.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(xml[start..end].trim().to_string())
}

/// `s` without the URL's query or signature, however they were quoted.
pub fn scrub(s: &str, url: &Url) -> String {
    let mut out = s.to_string();
    if let Some(q) = url.query().filter(|q| !q.is_empty()) {
        out = out.replace(q, "<signed query>");
    }
    for (k, v) in url.query_pairs() {
        if k == "sig" && !v.is_empty() {
            out = out.replace(v.as_ref(), "<signature>");
            out = out.replace(&percent_encode(&v), "<signature>");
        }
    }
    out
}

/// Every byte but the unreserved ones as `%XX`, as a query carries them.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What a download brought.
pub struct Fetched {
    pub size: u64,
    pub sha256: String,
}

/// Gets the signed `url` (no credentials of ours go with it) into the
/// new file `dest`, hashing as it writes; fsynced.
pub fn download(
    store: Store<'_>,
    url: &Url,
    dest: &Path,
    expect: u64,
    what: &str,
    progress: &Progress,
) -> Result<Fetched, BackendError> {
    let resp = store
        .client
        .get(url.clone())
        .timeout(http::transfer_timeout(store.timeouts, expect))
        .send()
        .map_err(|e| http::transport_error(NAME, what, e))?;
    if resp.status() != StatusCode::OK {
        return Err(store_error(resp, what, url));
    }
    let declared = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut out = File::create(dest)
        .map_err(|e| BackendError::from_io(NAME, format!("cannot create {}", dest.display()), e))?;
    let mut resp = resp;
    let (size, sha256) =
        copy_hashed(&mut resp, &mut out, &mut |n| progress.advance(n)).map_err(|e| match e {
            CopyError::Read(e) => BackendError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("{what}: the download was cut short: {e}"),
                "retry later",
            ),
            CopyError::Write(e) => {
                BackendError::from_io(NAME, format!("cannot write {}", dest.display()), e)
            }
        })?;
    out.sync_all()
        .map_err(|e| BackendError::from_io(NAME, format!("cannot fsync {}", dest.display()), e))?;
    let fetched = Fetched { size, sha256 };
    if let Some(n) = declared
        && n != fetched.size
    {
        return Err(BackendError::new(
            NAME,
            ErrorKind::Unavailable,
            format!("{what}: got {} of {n} bytes", fetched.size),
            "the download was cut short; retry later",
        ));
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bundles_go_in_one_request_and_large_ones_in_blocks() {
        let sv = Some("2024-11-04");
        assert_eq!(plan(0, 8 * MIB, sv).unwrap(), Plan::Single);
        assert_eq!(plan(8 * MIB, 8 * MIB, sv).unwrap(), Plan::Single);
        assert_eq!(
            plan(8 * MIB + 1, 8 * MIB, sv).unwrap(),
            Plan::Blocks {
                size: 8 * MIB,
                count: 2
            }
        );
        // 50,000 blocks at most: the block grows instead.
        let huge = 1024 * 1024 * MIB;
        match plan(huge, 8 * MIB, sv).unwrap() {
            Plan::Blocks { size, count } => {
                assert!(
                    count <= MAX_BLOCKS && size * count >= huge,
                    "{size} {count}"
                )
            }
            p => panic!("{p:?}"),
        }
        // Older service versions: 256 MiB single puts, 100 MiB blocks.
        assert_eq!(
            plan(300 * MIB, 512 * MIB, Some("2018-03-28")).unwrap(),
            Plan::Blocks {
                size: 100 * MIB,
                count: 3
            }
        );
        assert!(plan(u64::MAX / 2, 8 * MIB, sv).is_err());
    }

    #[test]
    fn block_ids_have_one_length_and_need_escaping() {
        let ids: Vec<String> = [0, 1, 999, 49_999].iter().map(|i| block_id(*i)).collect();
        assert!(ids.iter().all(|i| i.len() == ids[0].len()));
        assert!(ids[0].ends_with("=="));
        let u = with_params(
            &Url::parse("https://a.blob.core.windows.net/c/p?sv=2024-11-04&sig=a%2Bb").unwrap(),
            &[("comp", "block"), ("blockid", &ids[0])],
        );
        let q = u.query().unwrap();
        assert!(
            q.starts_with("sv=2024-11-04&sig=a%2Bb&comp=block&blockid="),
            "{q}"
        );
        assert!(q.ends_with("%3D%3D"), "{q}");
    }

    #[test]
    fn scrub_removes_the_signature_in_any_quoting() {
        let u = Url::parse("https://h/c/p?sv=1&se=2&sig=ab%2Bc%2Fd%3D").unwrap();
        let s = scrub(
            "bad sig ab+c/d= or ab%2Bc%2Fd%3D in sv=1&se=2&sig=ab%2Bc%2Fd%3D",
            &u,
        );
        assert!(!s.contains("ab+c/d=") && !s.contains("ab%2Bc"), "{s}");
    }

    #[test]
    fn azure_errors_are_read() {
        let x = "<?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed\nRequestId:1</Message></Error>";
        assert_eq!(xml_text(x, "Code").as_deref(), Some("AuthenticationFailed"));
        assert_eq!(
            xml_text(x, "Message").unwrap().lines().next(),
            Some("Server failed")
        );
        assert_eq!(xml_text("nothing", "Code"), None);
    }
}
