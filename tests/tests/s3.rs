//! The `s3` backend against a real S3 server (s3s-fs 0.14.1, which checks
//! SigV4 signatures and body checksums), directly and through the fault
//! proxy. Every bundle must land exactly once and byte-identical: the
//! tests compare the file s3s-fs stored on disk with the source.
//!
//! Without an s3s-fs binary these tests print a loud skip line and pass,
//! except under `./lab test` (`FERRY_S3S_FS` set), where that fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::fault_proxy::{FaultProxy, ProxyFault, Rule, s3_error};
use ferry_tests::http_fake::Response;
use ferry_tests::s3s::{ACCESS_KEY, S3sFs, SECRET_KEY};
use ferry_uploaders::backends::ErrorKind;
use ferry_uploaders::{Backend, BackendError, RetryPolicy, S3Backend, S3Config};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "bundles";

/// One test's world: the server, the proxy in front of it, scratch space.
struct World {
    server: S3sFs,
    proxy: FaultProxy,
    tmp: tempfile::TempDir,
}

fn world(test: &str) -> Option<World> {
    let server = S3sFs::start_or_skip(test, &[BUCKET]).expect("start s3s-fs")?;
    let proxy = FaultProxy::start(server.addr()).expect("start the proxy");
    Some(World {
        server,
        proxy,
        tmp: tempfile::tempdir().unwrap(),
    })
}

/// Retries that are quick but otherwise the real policy.
fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        budget: Duration::from_secs(60),
        deadline: None,
    }
}

/// Small parts, so a 12 MiB bundle is a 3-part upload.
fn config(endpoint: &str) -> S3Config {
    S3Config {
        endpoint: endpoint.to_string(),
        bucket: BUCKET.into(),
        multipart_threshold_mib: 5,
        part_size_mib: 5,
        concurrency: 2,
        timeout_secs: 2,
        ..S3Config::default()
    }
}

impl World {
    /// A backend talking through the proxy.
    fn backend(&self) -> S3Backend {
        self.backend_with(config(&self.proxy.url()))
    }

    fn backend_with(&self, cfg: S3Config) -> S3Backend {
        S3Backend::from_env(&cfg, &self.server.env())
            .unwrap()
            .with_retry(fast_retry())
    }

    /// A file of `size` pseudo-random bytes (incompressible, like a bundle).
    fn file(&self, name: &str, size: usize, seed: u64) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, noise(size, seed)).unwrap();
        path
    }

    fn stored(&self, key: &str) -> PathBuf {
        self.server.object_path(BUCKET, key)
    }

    /// The object files in the bucket (s3s-fs keeps metadata elsewhere).
    fn objects(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.server.root().join(BUCKET);
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(
                        p.strip_prefix(&root)
                            .unwrap()
                            .to_string_lossy()
                            .into_owned(),
                    );
                }
            }
        }
        out.sort();
        out
    }

    /// The requests the proxy saw with `method` whose target contains `has`.
    fn count(&self, method: &str, has: &str) -> usize {
        self.proxy
            .seen()
            .iter()
            .filter(|s| s.method == method && s.target.contains(has))
            .count()
    }

    /// Asserts `key` landed once, byte-identical to `src`, and no upload
    /// is left open.
    fn assert_landed(&self, key: &str, src: &Path) {
        let stored = std::fs::read(self.stored(key)).unwrap_or_else(|e| {
            panic!("{key} not stored: {e}\n{}", self.server.log());
        });
        let want = std::fs::read(src).unwrap();
        assert!(stored == want, "{key}: stored bytes differ from the source");
        assert_eq!(
            self.objects().iter().filter(|o| o.as_str() == key).count(),
            1
        );
    }

    fn assert_no_open_uploads(&self, case: &str) {
        let left = self.server.leftover_uploads();
        assert!(
            left.is_empty(),
            "{case}: multipart uploads left open: {left:?}"
        );
    }
}

fn noise(size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(size + 8);
    while v.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(size);
    v
}

fn sha_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// No secret in an error's text, its debug form or its sources.
fn assert_no_secret(e: &BackendError) {
    let mut text = format!("{e} | {e:?}");
    let mut cur = std::error::Error::source(e);
    while let Some(s) = cur {
        text.push_str(&format!(" | {s}"));
        cur = s.source();
    }
    assert!(!text.contains(SECRET_KEY), "secret in error: {text}");
    assert!(!text.contains("Signature="), "signature in error: {text}");
}

/// A plain HTTP GET of `url` (for presigned URLs): status and body.
fn http_get(url: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (hostport, target) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(hostport).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let i = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..i]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let mut body = out[i + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let i = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..i]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + n]);
        b = &b[i + 4 + n..];
    }
}

#[test]
fn small_put_get_list_and_presigned_share() {
    let Some(w) = world("small_put_get_list_and_presigned_share") else {
        return;
    };
    let b = w.backend();
    let src = w.file("small.tar.gz", 300 * 1024, 1);
    let key = "ci-1/h-20261203T120000Z-abc123-finish-succeeded.tar.gz";
    let r = b.put(key, &src).unwrap();
    assert_eq!(r.backend, "s3");
    assert_eq!(r.key, key);
    assert_eq!(r.size, 300 * 1024);
    assert_eq!(r.sha256, sha_hex(&src));
    assert_eq!(r.location, format!("s3://{BUCKET}/{key}"));
    w.assert_landed(key, &src);
    // One PutObject, signed, with the body's checksum and the whole hash.
    let puts: Vec<_> = w
        .proxy
        .seen()
        .into_iter()
        .filter(|s| s.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1);
    let h = |n: &str| {
        puts[0]
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("x-amz-meta-sha256"), Some(r.sha256.clone()));
    assert_eq!(h("x-amz-content-sha256"), Some(r.sha256.clone()));
    assert!(h("x-amz-checksum-sha256").is_some());
    assert_eq!(h("if-none-match").as_deref(), Some("*"));
    assert!(
        h("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=")
    );

    let dest = w.tmp.path().join("back.tar.gz");
    b.get(key, &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());

    let listed = b.list("ci-1/").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, key);
    assert_eq!(listed[0].size, 300 * 1024);
    let age = std::time::SystemTime::now()
        .duration_since(listed[0].modified)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(600), "{age:?}");
    assert!(b.list("ci-2/").unwrap().is_empty());

    // The presigned URL works with no credentials at all, straight at the
    // server; it holds no secret and dies after its expiry.
    let direct = w.backend_with(config(&w.server.url()));
    let url = direct.share(key).unwrap().expect("a presigned URL");
    assert!(url.contains("X-Amz-Expires=86400"), "{url}");
    assert!(!url.contains(SECRET_KEY));
    let (status, body) = http_get(&url);
    assert_eq!(status, 200);
    assert!(body == std::fs::read(&src).unwrap());
    let (status, _) = http_get(&url.replace("X-Amz-Expires=86400", "X-Amz-Expires=86401"));
    assert_eq!(status, 403, "a tampered presigned URL must be refused");
    let e = direct.share("nope").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[test]
fn multipart_upload_in_three_parts() {
    let Some(w) = world("multipart_upload_in_three_parts") else {
        return;
    };
    let b = w.backend();
    let src = w.file("big.tar.gz", 12 * MIB + 12345, 2);
    let key = "h-20261203T120000Z-abc123-dump-failed.tar.gz";
    let r = b.put(key, &src).unwrap();
    assert_eq!(r.sha256, sha_hex(&src));
    w.assert_landed(key, &src);
    w.assert_no_open_uploads("");
    assert_eq!(w.count("POST", "uploads"), 1);
    assert_eq!(w.count("PUT", "partNumber="), 3);
    for n in 1..=3 {
        assert_eq!(w.count("PUT", &format!("partNumber={n}&")), 1, "part {n}");
    }
    assert_eq!(w.count("POST", "uploadId="), 1);
    let dest = w.tmp.path().join("back");
    b.get(key, &dest).unwrap();
    assert_eq!(sha_hex(&dest), r.sha256);
}

#[test]
fn a_second_put_of_the_same_bundle_sends_nothing_and_other_content_conflicts() {
    let Some(w) = world("a_second_put_of_the_same_bundle_sends_nothing") else {
        return;
    };
    let b = w.backend();
    for (key, size) in [("small", 1000), ("large", 11 * MIB)] {
        let src = w.file(key, size, 3);
        let r1 = b.put(key, &src).unwrap();
        w.proxy.forget();
        let r2 = b.put(key, &src).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(w.count("PUT", ""), 0, "{key}: re-put sent a body");
        assert_eq!(w.count("POST", ""), 0, "{key}: re-put started an upload");
        let other = w.file(&format!("{key}-other"), size, 4);
        let e = b.put(key, &other).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(!e.is_transient());
        assert!(e.to_string().contains("new key"), "{e}");
        w.assert_landed(key, &src);
    }
    assert_eq!(w.objects(), ["large", "small"]);
}

#[test]
fn list_follows_continuation_tokens_and_strips_the_prefix() {
    let Some(w) = world("list_follows_continuation_tokens") else {
        return;
    };
    let cfg = S3Config {
        prefix: "ci/bundles".into(),
        list_page_keys: 2,
        ..config(&w.proxy.url())
    };
    let b = w.backend_with(cfg);
    let outside = w.backend();
    let src = w.file("x", 10, 5);
    let mut want = Vec::new();
    for i in 0..5 {
        let key = format!("host-{i}/b+{i} x.tar.gz");
        b.put(&key, &src).unwrap();
        want.push(key);
    }
    outside.put("other/x.tar.gz", &src).unwrap();
    assert!(w.stored("ci/bundles/host-3/b+3 x.tar.gz").is_file());
    w.proxy.forget();
    let keys: Vec<String> = b.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, want);
    // 5 keys, 2 a page: three requests, the later two with a token.
    assert_eq!(w.count("GET", "list-type=2"), 3);
    assert_eq!(w.count("GET", "continuation-token="), 2);
    let keys: Vec<String> = b
        .list("host-1/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["host-1/b+1 x.tar.gz"]);
    assert_eq!(outside.list("").unwrap().len(), 6);
}

#[test]
fn wrong_credentials_are_named_and_never_shown() {
    let Some(w) = world("wrong_credentials_are_named_and_never_shown") else {
        return;
    };
    let src = w.file("b", 1000, 6);
    let cfg = config(&w.proxy.url());
    let wrong_secret = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(ACCESS_KEY.to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(format!("{SECRET_KEY}-wrong")),
        _ => None,
    };
    let b = S3Backend::from_env(&cfg, &wrong_secret)
        .unwrap()
        .with_retry(fast_retry());
    let e = b.put("k", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    let s = e.to_string();
    assert!(
        s.contains("SignatureDoesNotMatch") && s.contains("check AWS_SECRET_ACCESS_KEY"),
        "{s}"
    );
    assert!(!s.contains(&format!("{SECRET_KEY}-wrong")), "{s}");
    assert_no_secret(&e);
    let e = b.list("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert_no_secret(&e);

    let wrong_key = |k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some("AKIAUNKNOWN000000000".to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some(SECRET_KEY.to_string()),
        _ => None,
    };
    let b = S3Backend::from_env(&cfg, &wrong_key)
        .unwrap()
        .with_retry(fast_retry());
    let e = b.put("k", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
    assert_no_secret(&e);
    // Auth failures are not retried: one look-up of the key per put.
    assert_eq!(w.count("HEAD", "/bundles/k"), 2, "{:?}", w.proxy.seen());
    assert_eq!(w.count("GET", "list-type=2"), 1);
    assert!(w.objects().is_empty());
}

#[test]
fn a_missing_bucket_says_create_it_or_fix_the_config() {
    let Some(w) = world("a_missing_bucket_says_create_it") else {
        return;
    };
    let b = w.backend_with(S3Config {
        bucket: "nope".into(),
        ..config(&w.proxy.url())
    });
    let src = w.file("b", 1000, 7);
    for e in [
        b.put("k", &src).unwrap_err(),
        b.list("").unwrap_err(),
        b.put("big", &w.file("big", 6 * MIB, 7)).unwrap_err(),
        b.get("k", &w.tmp.path().join("o")).unwrap_err(),
    ] {
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert!(
            e.to_string().contains("NoSuchBucket")
                && e.fix()
                    .contains("create bucket \"nope\" or fix ship.s3.bucket"),
            "{e}"
        );
        assert_no_secret(&e);
    }
    // s3s-fs would create the bucket on a PUT: nothing may have been sent.
    assert!(!w.server.root().join("nope").exists());
    assert_eq!(w.count("PUT", ""), 0);
}

#[test]
fn a_corrupted_body_is_refused_by_the_server_and_sent_again() {
    let Some(w) = world("a_corrupted_body_is_refused_by_the_server") else {
        return;
    };
    let b = w.backend();
    w.proxy.inject(
        Rule::new(ProxyFault::CorruptRequestBody)
            .method("PUT")
            .target_has("partNumber=2&"),
    );
    let big = w.file("big", 12 * MIB, 8);
    b.put("big", &big).unwrap();
    w.assert_landed("big", &big);
    let part2: Vec<_> = w
        .proxy
        .seen()
        .into_iter()
        .filter(|s| s.target.contains("partNumber=2&"))
        .collect();
    assert_eq!(part2.len(), 2);
    assert!(
        !(200..300).contains(&part2[0].status.unwrap_or(0)),
        "{part2:?}"
    );
    assert_eq!(part2[1].status, Some(200));

    w.proxy
        .inject(Rule::new(ProxyFault::CorruptRequestBody).method("PUT"));
    let small = w.file("small", 4000, 9);
    b.put("small", &small).unwrap();
    w.assert_landed("small", &small);

    // Corrupted every time: the put fails after its attempts, nothing is
    // kept and the multipart upload is aborted.
    w.proxy.inject(
        Rule::new(ProxyFault::CorruptRequestBody)
            .method("PUT")
            .target_has("partNumber=1&")
            .times(u32::MAX),
    );
    let doomed = w.file("doomed", 11 * MIB, 10);
    let e = b.put("doomed", &doomed).unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert_no_secret(&e);
    assert!(!w.stored("doomed").exists());
    w.assert_no_open_uploads("");
    assert_eq!(w.count("DELETE", "uploadId="), 1);
}

#[test]
fn downloads_are_verified_and_resume_after_a_cut() {
    let Some(w) = world("downloads_are_verified_and_resume_after_a_cut") else {
        return;
    };
    let b = w.backend();
    let src = w.file("big", 7 * MIB + 3, 11);
    b.put("big", &src).unwrap();
    let want = std::fs::read(&src).unwrap();
    let dest = w.tmp.path().join("back");
    for fault in [
        ProxyFault::ResetAnswerBody,
        ProxyFault::Truncate,
        ProxyFault::CorruptAnswerBody,
        ProxyFault::Respond(s3_error(503, "SlowDown", Some(1))),
        ProxyFault::Stall(Duration::from_secs(4)),
        ProxyFault::SlowBody {
            chunk: 256 * 1024,
            pause: Duration::from_millis(2),
        },
    ] {
        let name = format!("{fault:?}");
        w.proxy.forget();
        w.proxy.inject(Rule::new(fault).method("GET"));
        b.get("big", &dest)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            std::fs::read(&dest).unwrap() == want,
            "{name}: downloaded bytes differ"
        );
        assert_eq!(w.proxy.pending(), 0, "{name}: fault not hit");
        let gets: Vec<_> = w
            .proxy
            .seen()
            .into_iter()
            .filter(|s| s.method == "GET")
            .collect();
        if name.starts_with("ResetAnswerBody") || name.starts_with("Truncate") {
            // The second request resumes where the first was cut.
            assert_eq!(gets.len(), 2, "{name}");
            let range = gets[1]
                .headers
                .iter()
                .find(|(k, _)| k == "range")
                .map(|(_, v)| v.clone());
            assert!(
                range
                    .as_deref()
                    .is_some_and(|r| r.starts_with("bytes=") && r != "bytes=0-"),
                "{name}: {range:?}"
            );
        }
    }
    // No temporary file is left beside the destination.
    let left: Vec<_> = std::fs::read_dir(w.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Every fault on every kind of request of an upload: the bundle lands
/// exactly once, byte-identical, and no upload stays open.
#[test]
fn uploads_survive_every_fault() {
    let Some(w) = world("uploads_survive_every_fault") else {
        return;
    };
    let b = w.backend();
    let hang = Duration::from_secs(8); // well past the 2 s timeout
    let cases: Vec<(&str, bool, Rule)> = vec![
        // (name, multipart?, rule)
        ("429 on PUT", false, Rule::new(ProxyFault::Respond(s3_error(429, "SlowDown", Some(1)))).method("PUT")),
        ("503 on part", true, Rule::new(ProxyFault::Respond(s3_error(503, "ServiceUnavailable", None))).target_has("partNumber=2&")),
        ("500 on create", true, Rule::new(ProxyFault::Respond(s3_error(500, "InternalError", None))).target_has("uploads")),
        ("500 on complete", true, Rule::new(ProxyFault::Respond(s3_error(500, "InternalError", None))).method("POST").target_has("uploadId=")),
        (
            "200 with <Error> on complete",
            true,
            Rule::new(ProxyFault::Respond(
                Response::new(200)
                    .header("Content-Type", "application/xml")
                    .body(b"\n \n<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>assembling failed</Message></Error>".to_vec()),
            ))
            .method("POST")
            .target_has("uploadId="),
        ),
        ("reset mid-body on PUT", false, Rule::new(ProxyFault::ResetRequestBody { after: 100_000 }).method("PUT")),
        ("reset mid-body on part", true, Rule::new(ProxyFault::ResetRequestBody { after: 3 * MIB as u64 }).target_has("partNumber=1&")),
        ("answer lost after PUT", false, Rule::new(ProxyFault::LoseAnswer).method("PUT")),
        ("answer lost after part", true, Rule::new(ProxyFault::LoseAnswer).target_has("partNumber=3&")),
        ("answer lost after complete", true, Rule::new(ProxyFault::LoseAnswer).method("POST").target_has("uploadId=")),
        ("hang after complete", true, Rule::new(ProxyFault::Hang(hang)).method("POST").target_has("uploadId=")),
        ("hang after PUT", false, Rule::new(ProxyFault::Hang(hang)).method("PUT")),
        ("stall on create", true, Rule::new(ProxyFault::Stall(hang)).target_has("uploads")),
        ("stall on HEAD", false, Rule::new(ProxyFault::Stall(hang)).method("HEAD")),
        ("truncated create answer", true, Rule::new(ProxyFault::Truncate).target_has("uploads")),
        ("answer cut after complete", true, Rule::new(ProxyFault::ResetAnswerBody).method("POST").target_has("uploadId=")),
        ("slow complete answer", true, Rule::new(ProxyFault::SlowBody { chunk: 16, pause: Duration::from_millis(20) }).method("POST").target_has("uploadId=")),
        ("no If-None-Match support", false, Rule::new(ProxyFault::Respond(s3_error(501, "NotImplemented", None))).method("PUT")),
    ];
    for (i, (name, multipart, rule)) in cases.into_iter().enumerate() {
        // A hung PUT is given up after the 2 s timeout plus a second per
        // 256 KiB: keep that one small so the timeout, not the proxy's
        // close, ends it.
        let size = match (multipart, name.starts_with("hang")) {
            (true, _) => 11 * MIB + 7,
            (false, true) => 100 * 1024,
            (false, false) => 2 * MIB + 7,
        };
        let src = w.file(&format!("src-{i}"), size, 100 + i as u64);
        let key = format!("case-{i}.tar.gz");
        w.proxy.forget();
        w.proxy.inject(rule);
        let open_before = w.server.leftover_uploads().len();
        let t = Instant::now();
        let r = b
            .put(&key, &src)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", w.server.log()));
        assert_eq!(w.proxy.pending(), 0, "{name}: the fault was never hit");
        assert_eq!(r.sha256, sha_hex(&src), "{name}");
        w.assert_landed(&key, &src);
        if name.starts_with("429") {
            assert!(
                t.elapsed() >= Duration::from_secs(1),
                "{name}: Retry-After ignored"
            );
        }
        if name.starts_with("hang") || name.starts_with("stall") {
            // The client timed out and retried before the proxy gave up.
            assert!(t.elapsed() < hang, "{name}: took {:?}", t.elapsed());
        }
        // A lost or slow create answer leaves one empty upload (no parts)
        // at the server; everything else is completed or aborted.
        let opened = w.server.leftover_uploads().len() - open_before;
        let allowed = usize::from(name.contains("create") && !name.starts_with("500"));
        assert!(opened <= allowed, "{name}: {opened} uploads left open");
        eprintln!("{name}: {:?}", t.elapsed());
        // Writes are conditional unless the service said it cannot.
        let puts: Vec<_> = w
            .proxy
            .seen()
            .into_iter()
            .filter(|s| s.method == "PUT" && !s.target.contains("partNumber"))
            .collect();
        if name.starts_with("no If-None-Match") {
            assert!(
                puts.last()
                    .unwrap()
                    .headers
                    .iter()
                    .all(|(k, _)| k != "if-none-match"),
                "{name}"
            );
        }
    }
    assert_eq!(w.objects().len(), 18);
}

#[test]
fn a_permanent_part_failure_aborts_the_upload() {
    let Some(w) = world("a_permanent_part_failure_aborts_the_upload") else {
        return;
    };
    let b = w.backend();
    w.proxy.inject(
        Rule::new(ProxyFault::Respond(s3_error(403, "AccessDenied", None)))
            .target_has("partNumber=2&"),
    );
    let src = w.file("big", 16 * MIB, 12);
    let t = Instant::now();
    let e = b.put("big", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains("AccessDenied") && e.fix().contains("s3:PutObject"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_eq!(
        w.count("PUT", "partNumber=2&"),
        1,
        "a permanent error was retried"
    );
    assert_eq!(w.count("DELETE", "uploadId="), 1);
    w.assert_no_open_uploads("");
    assert!(w.objects().is_empty());
    assert_no_secret(&e);
}

#[test]
fn a_bundle_that_changes_during_the_upload_is_not_completed() {
    let Some(w) = world("a_bundle_that_changes_during_the_upload") else {
        return;
    };
    let b = w.backend();
    // Part 3 is throttled once for a second; meanwhile the file is touched.
    w.proxy.inject(
        Rule::new(ProxyFault::Respond(s3_error(503, "SlowDown", Some(1))))
            .target_has("partNumber=3&"),
    );
    let src = w.file("big", 12 * MIB, 13);
    let e = std::thread::scope(|s| {
        s.spawn(|| {
            // Once part 3 was throttled (the file was read and hashed by
            // then), move the file's mtime.
            while w.count("PUT", "partNumber=3&") == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
            f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
                .unwrap();
        });
        b.put("big", &src).unwrap_err()
    });
    assert!(
        e.to_string()
            .contains("changed while it was being uploaded"),
        "{e}"
    );
    assert!(!e.is_transient());
    assert!(w.objects().is_empty());
    w.assert_no_open_uploads("");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the backend logs (every level, every thread, retries
/// included) while it fails, retries and succeeds holds no secret, no
/// signature and no presigned URL.
#[test]
fn logs_hold_no_secret() {
    let Some(w) = world("logs_hold_no_secret") else {
        return;
    };
    let logs = Captured::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    // Global, so the part workers' threads log here too.
    let _ = tracing::subscriber::set_global_default(subscriber);
    let b = w.backend();
    w.proxy.inject(
        Rule::new(ProxyFault::Respond(s3_error(503, "SlowDown", None))).target_has("partNumber=1&"),
    );
    w.proxy.inject(
        Rule::new(ProxyFault::LoseAnswer)
            .method("PUT")
            .target_has("small"),
    );
    let big = w.file("big", 11 * MIB, 20);
    let small = w.file("small", 1000, 21);
    b.put("big", &big).unwrap();
    b.put("small", &small).unwrap();
    b.get("big", &w.tmp.path().join("back")).unwrap();
    let url = w
        .backend_with(config(&w.server.url()))
        .share("small")
        .unwrap()
        .unwrap();
    let wrong = S3Backend::from_env(&config(&w.proxy.url()), &|k: &str| match k {
        "AWS_ACCESS_KEY_ID" => Some(ACCESS_KEY.to_string()),
        "AWS_SECRET_ACCESS_KEY" => Some("wrong-secret-0123456789".to_string()),
        _ => None,
    })
    .unwrap();
    let _ = wrong.put("k", &small).unwrap_err();
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("retrying"),
        "the retries were not logged:\n{text}"
    );
    for needle in [
        SECRET_KEY,
        "wrong-secret-0123456789",
        "Signature=",
        "X-Amz-Signature",
        url.as_str(),
    ] {
        assert!(!text.contains(needle), "{needle:?} in the logs:\n{text}");
    }
}

/// Regression: when the service refused a part early (here: the token
/// expired) while its body was still going out, the client only saw a
/// broken connection and resent the body until its attempts ran out,
/// ending with a transport error instead of the reason. A bodyless
/// look-up before a resend now surfaces the lasting error.
#[test]
fn an_early_refusal_hidden_by_a_broken_upload_is_named() {
    let Some(w) = world("an_early_refusal_hidden_by_a_broken_upload_is_named") else {
        return;
    };
    let b = w.backend();
    w.proxy.inject(
        Rule::new(ProxyFault::ResetRequestBody { after: MIB as u64 }).target_has("partNumber=2&"),
    );
    w.proxy.inject(
        Rule::new(ProxyFault::Respond(Response::new(400)))
            .method("HEAD")
            .target_has("/bundles/big")
            .skip(1),
    );
    w.proxy.inject(
        Rule::new(ProxyFault::Respond(s3_error(400, "ExpiredToken", None)))
            .method("GET")
            .target_has("/bundles/big"),
    );
    let e = b.put("big", &w.file("big", 12 * MIB, 30)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(
        e.to_string().contains("ExpiredToken") && e.fix().contains("AWS_SESSION_TOKEN"),
        "{e}"
    );
    assert_eq!(
        w.count("PUT", "partNumber=2&"),
        1,
        "the body was sent into the refusal again"
    );
    assert_eq!(w.count("DELETE", "uploadId="), 1);
    w.assert_no_open_uploads("");
}
