//! The `github` backend against the protocol-faithful fake
//! (`ferry_tests::fakes::github`): uploads in one request and in blocks,
//! finalize checks, duplicate names, listing and downloading (raw and
//! zipped), every socket-level fault, and secrets kept out of every
//! message and log line. Each bundle must land exactly once, byte-identical.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ferry_tests::fakes::github::{GithubFake, REPO, REST_TOKEN, Seed, zip_holding};
use ferry_tests::http_fake::{Fault, Request, Response};
use ferry_uploaders::backends::ErrorKind;
use ferry_uploaders::backends::github::{GithubBackend, GithubConfig, Tuning};
use ferry_uploaders::backends::http::Timeouts;
use ferry_uploaders::{Backend, RetryPolicy};
use sha2::{Digest, Sha256};

const KEY: &str = "ci-7-20261203T120000Z-abc123-verify-succeeded.tar.gz";

fn tuning() -> Tuning {
    Tuning {
        retry: RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
            budget: Duration::from_secs(30),
            deadline: None,
        },
        // Long enough that a loaded CI machine does not time out a healthy
        // request (a spurious retry of CreateArtifact would spend a name),
        // short enough for the hang cases.
        timeouts: Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(5),
        },
    }
}

/// Small blocks, so a few hundred KiB make several.
fn config() -> GithubConfig {
    GithubConfig {
        block_kib: 64,
        upload_concurrency: 3,
        ..GithubConfig::default()
    }
}

fn open(vars: Vec<(String, String)>, config: &GithubConfig) -> GithubBackend {
    let env: HashMap<String, String> = vars.into_iter().collect();
    GithubBackend::with_tuning(config, &move |k| env.get(k).cloned(), tuning()).unwrap()
}

fn in_actions(fake: &GithubFake) -> GithubBackend {
    open(fake.actions_env(), &config())
}

fn outside(fake: &GithubFake) -> GithubBackend {
    open(fake.rest_env(), &config())
}

/// A file that looks like a bundle (gzip magic) with `len` bytes in all.
fn bundle(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let mut data = vec![0x1f, 0x8b, 0x08, 0x00];
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.push(x as u8);
    }
    data.truncate(len);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    p
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The one finalized artifact of the fake, checked to hold `src`'s bytes.
fn landed_once(fake: &GithubFake, src: &Path, case: &str) -> String {
    let want = std::fs::read(src).unwrap();
    let done = fake.finalized();
    assert_eq!(done.len(), 1, "{case}: {done:#?}");
    let a = &done[0];
    assert_eq!(a.data.as_deref(), Some(&want[..]), "{case}: bytes differ");
    assert_eq!(a.size, want.len() as u64, "{case}");
    assert_eq!(a.digest, Some(format!("sha256:{}", sha(&want))), "{case}");
    a.name.clone()
}

fn twirp_calls(fake: &GithubFake) -> Vec<String> {
    fake.results
        .seen()
        .iter()
        .map(|s| s.target.rsplit('/').next().unwrap_or("").to_string())
        .collect()
}

fn is_method(m: &'static str) -> impl Fn(&Request) -> bool + Send + Sync {
    move |r| r.path().ends_with(&format!("/{m}"))
}

fn is_comp(comp: Option<&'static str>) -> impl Fn(&Request) -> bool + Send + Sync {
    move |r| r.method == "PUT" && r.query("comp").as_deref() == comp
}

#[test]
fn small_bundle_goes_up_in_one_put_blob() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 10_000, 1);
    let receipt = in_actions(&fake).put(KEY, &src).unwrap();

    let name = landed_once(&fake, &src, "put blob");
    assert_eq!(name, format!("ferry-{KEY}"));
    let a = &fake.finalized()[0];
    assert_eq!(
        (a.version, a.mime_type.as_deref()),
        (7, Some("application/gzip"))
    );
    assert_eq!(a.content_type.as_deref(), Some("application/gzip"));
    assert_eq!(a.expires_at, None);
    assert_eq!(
        twirp_calls(&fake),
        ["ListArtifacts", "CreateArtifact", "FinalizeArtifact"]
    );
    let puts = fake.blob.seen();
    assert_eq!(puts.len(), 1);
    let h = |k: &str| {
        puts[0]
            .headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("x-ms-blob-type").as_deref(), Some("BlockBlob"));
    assert_eq!(h("content-length").as_deref(), Some("10000"));
    assert_eq!(h("authorization"), None);
    assert_eq!(receipt.size, 10_000);
    assert_eq!(receipt.sha256, sha(&std::fs::read(&src).unwrap()));
    assert_eq!(
        receipt.location,
        format!(
            "{}/{REPO}/actions/runs/{}/artifacts/{}",
            "https://github.com",
            fake.run_id(),
            a.id
        )
    );
}

#[test]
fn large_bundle_goes_up_in_equal_length_blocks_committed_in_order() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // 10 blocks of 64 KiB and a short eleventh (two-digit indices).
    let src = bundle(tmp.path(), "b.tar.gz", 10 * 65_536 + 4_321, 2);
    in_actions(&fake).put(KEY, &src).unwrap();
    landed_once(&fake, &src, "blocks");
    let seen = fake.blob.seen();
    let blocks: Vec<_> = seen
        .iter()
        .filter(|s| s.target.contains("comp=block&"))
        .collect();
    assert_eq!(blocks.len(), 11, "{seen:#?}");
    assert!(blocks.iter().all(|s| s.status == Some(201)));
    let mut sizes: Vec<_> = blocks.iter().map(|s| s.body_len).collect();
    sizes.sort();
    let mut want = vec![65_536; 10];
    want.insert(0, 4_321);
    assert_eq!(sizes, want);
    let ids: Vec<_> = blocks
        .iter()
        .map(|s| s.target.rsplit("blockid=").next().unwrap().to_string())
        .collect();
    assert!(ids.iter().all(|i| i.len() == ids[0].len()), "{ids:?}");
    let lists: Vec<_> = seen
        .iter()
        .filter(|s| s.target.ends_with("comp=blocklist"))
        .collect();
    assert_eq!(lists.len(), 1);
    assert_eq!(lists[0].status, Some(201));
}

#[test]
fn a_reship_is_a_no_op_and_other_bytes_are_a_conflict() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 5_000, 3);
    let b = in_actions(&fake);
    let first = b.put(KEY, &src).unwrap();
    let before = fake.results.seen().len();
    let again = b.put(KEY, &src).unwrap();
    assert_eq!(first, again);
    let calls = twirp_calls(&fake);
    assert_eq!(
        &calls[before..],
        ["ListArtifacts"],
        "nothing was uploaded again"
    );

    let other = bundle(tmp.path(), "c.tar.gz", 5_000, 4);
    let e = b.put(KEY, &other).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("other bytes"), "{e}");
    landed_once(&fake, &src, "conflict");
}

#[test]
fn a_name_held_by_an_unfinished_upload_moves_to_the_next_slot() {
    let fake = GithubFake::start().unwrap();
    fake.reserve(&format!("ferry-{KEY}"));
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 3_000, 5);
    let b = in_actions(&fake);
    b.put(KEY, &src).unwrap();
    let name = landed_once(&fake, &src, "reserved");
    assert_eq!(
        name,
        "ferry-ci-7-20261203T120000Z-abc123-verify-succeeded~1.tar.gz"
    );
    // The listing maps the slot back to the key, and a re-ship finds it.
    let listed = b.list("").unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, KEY);
    let before = fake.results.seen().len();
    b.put(KEY, &src).unwrap();
    assert_eq!(&twirp_calls(&fake)[before..], ["ListArtifacts"]);
    let out = tmp.path().join("got.tar.gz");
    b.get(KEY, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
}

#[test]
fn every_slot_held_is_a_clear_error() {
    let fake = GithubFake::start().unwrap();
    for n in ["", "~1", "~2", "~3"] {
        fake.reserve(&format!(
            "ferry-ci-7-20261203T120000Z-abc123-verify-succeeded{n}.tar.gz"
        ));
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 3_000, 5);
    let e = in_actions(&fake).put(KEY, &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict);
    assert!(e.to_string().contains("never finished"), "{e}");
    assert!(fake.finalized().is_empty());
}

#[test]
fn retention_sets_expires_at() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 100, 6);
    let cfg = GithubConfig {
        retention_days: 5,
        ..config()
    };
    open(fake.actions_env(), &cfg).put(KEY, &src).unwrap();
    let at = fake.finalized()[0].expires_at.clone().unwrap();
    let at = humantime::parse_rfc3339(&at).unwrap();
    let left = at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(4 * 86_400) && left <= Duration::from_secs(5 * 86_400),
        "{left:?}"
    );
}

/// A fault, where it strikes, and the artifact name it must end under.
struct Case {
    name: &'static str,
    size: usize,
    arm: Box<dyn Fn(&GithubFake)>,
    /// The name was spent by the fault: the next slot holds the bundle.
    next_slot: bool,
}

fn case(name: &'static str, size: usize, arm: impl Fn(&GithubFake) + 'static) -> Case {
    Case {
        name,
        size,
        arm: Box::new(arm),
        next_slot: false,
    }
}

impl Case {
    fn spends_the_name(mut self) -> Case {
        self.next_slot = true;
        self
    }
}

fn put_cases() -> Vec<Case> {
    let blocks = 3 * 65_536 + 10;
    vec![
        case("429 with Retry-After on CreateArtifact", 2_000, |f| {
            f.results.inject(
                is_method("CreateArtifact"),
                Fault::Respond(
                    Response::json(
                        429,
                        &serde_json::json!({"code":"resource_exhausted","msg":"slow down"}),
                    )
                    .header("Retry-After", "1"),
                ),
            )
        }),
        case("500 on FinalizeArtifact", 2_000, |f| {
            f.results.inject(
                is_method("FinalizeArtifact"),
                Fault::Respond(Response::json(
                    500,
                    &serde_json::json!({"code":"internal","msg":"boom"}),
                )),
            )
        }),
        case("503 ServerBusy on a Put Block", blocks, |f| {
            f.blob.inject(
                is_comp(Some("block")),
                Fault::Respond(
                    Response::new(503)
                        .header("Content-Type", "application/xml")
                        .body(
                            b"<Error><Code>ServerBusy</Code><Message>busy</Message></Error>"
                                .to_vec(),
                        ),
                ),
            )
        }),
        case("connection reset mid-body of a Put Block", blocks, |f| {
            f.blob.inject(is_comp(Some("block")), Fault::ResetMidBody)
        }),
        case("connection reset on Put Block List", blocks, |f| {
            f.blob.inject(is_comp(Some("blocklist")), Fault::Reset)
        }),
        case("connection reset mid-body of a Put Blob", 50_000, |f| {
            f.blob.inject(is_comp(None), Fault::ResetMidBody)
        }),
        case("timeout on Put Blob", 2_000, |f| {
            f.blob
                .inject(is_comp(None), Fault::Hang(Duration::from_secs(8)))
        }),
        case("timeout on CreateArtifact", 2_000, |f| {
            f.results.inject(
                is_method("CreateArtifact"),
                Fault::Hang(Duration::from_secs(8)),
            )
        }),
        case("slow answer to ListArtifacts", 2_000, |f| {
            f.results.inject(
                is_method("ListArtifacts"),
                Fault::SlowBody(Duration::from_millis(20)),
            )
        }),
        case(
            "truncated answer to CreateArtifact (created, answer lost)",
            2_000,
            |f| {
                f.results
                    .inject(is_method("CreateArtifact"), Fault::Truncate)
            },
        )
        .spends_the_name(),
        case(
            "truncated answer to FinalizeArtifact (finalized, answer lost)",
            2_000,
            |f| {
                f.results
                    .inject(is_method("FinalizeArtifact"), Fault::Truncate)
            },
        ),
        case("409 already_exists on CreateArtifact (a name taken meanwhile)", 2_000, |f| {
            f.results.inject(
                is_method("CreateArtifact"),
                Fault::Respond(Response::json(
                    409,
                    &serde_json::json!({"code":"already_exists","msg":"an artifact with this name already exists on the workflow run"}),
                )),
            )
        })
        .spends_the_name(),
        case("truncated answer to a Put Block", blocks, |f| {
            f.blob.inject(is_comp(Some("block")), Fault::Truncate)
        }),
        case("signed upload URL already expired", blocks, |f| {
            f.expire_upload_urls(1)
        })
        .spends_the_name(),
    ]
}

#[test]
fn every_fault_lands_the_bundle_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, c) in put_cases().into_iter().enumerate() {
        let fake = GithubFake::start().unwrap();
        let src = bundle(tmp.path(), &format!("b{i}.tar.gz"), c.size, i as u8);
        (c.arm)(&fake);
        let t = Instant::now();
        let r = in_actions(&fake).put(KEY, &src);
        let took = t.elapsed();
        assert!(
            r.is_ok(),
            "{}: {:?}",
            c.name,
            r.err().map(|e| e.to_string())
        );
        let name = landed_once(&fake, &src, c.name);
        let want = if c.next_slot {
            "ferry-ci-7-20261203T120000Z-abc123-verify-succeeded~1.tar.gz".to_string()
        } else {
            format!("ferry-{KEY}")
        };
        assert_eq!(name, want, "{}", c.name);
        assert_eq!(
            fake.results.pending_faults() + fake.blob.pending_faults(),
            0,
            "{}: the fault never struck",
            c.name
        );
        if c.name.starts_with("429") {
            assert!(
                took >= Duration::from_secs(1),
                "{}: Retry-After not honoured ({took:?})",
                c.name
            );
        }
    }
}

#[test]
fn an_expired_runtime_token_is_an_auth_error_naming_the_fix() {
    let fake = GithubFake::start().unwrap();
    fake.expire_runtime_token();
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 100, 7);
    let e = in_actions(&fake).put(KEY, &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(!e.is_transient());
    let s = e.to_string();
    assert!(
        s.contains("github backend")
            && s.contains("HTTP 401")
            && s.contains("ACTIONS_RUNTIME_TOKEN"),
        "{s}"
    );
    assert!(!s.contains(&fake.runtime_token()), "{s}");
    // Refused at the first call: nothing retried, nothing created.
    assert_eq!(fake.results.seen().len(), 1);
    assert!(fake.artifacts().is_empty());
}

#[test]
fn a_full_quota_is_not_retried() {
    let fake = GithubFake::start().unwrap();
    fake.results.inject(
        is_method("CreateArtifact"),
        Fault::Respond(Response::json(
            403,
            &serde_json::json!({"code":"permission_denied","msg":"Failed to CreateArtifact: insufficient usage to create artifact"}),
        )),
    );
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 100, 8);
    let e = in_actions(&fake).put(KEY, &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(e.to_string().contains("storage"), "{e}");
    assert_eq!(twirp_calls(&fake), ["ListArtifacts", "CreateArtifact"]);
}

fn seed_bundle(fake: &GithubFake, tmp: &Path, key: &str, seed: u8, how: Seed) -> Vec<u8> {
    let src = bundle(tmp, &format!("seed-{seed}.tar.gz"), 7_000, seed);
    let data = std::fs::read(src).unwrap();
    fake.seed(&format!("ferry-{key}"), &data, how);
    data
}

#[test]
fn listing_pages_through_the_repository_and_keeps_ours() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..230 {
        fake.seed(&format!("coverage-{i}"), b"x", Seed::gzip());
    }
    let keys = [
        "a-20260101T000000Z-aaaaaa-dump-failed.tar.gz",
        "b-20260102T000000Z-bbbbbb-verify-succeeded.tar.gz",
        "c-20260103T000000Z-cccccc-verify-succeeded.tar.gz",
    ];
    for (i, k) in keys.iter().enumerate() {
        seed_bundle(
            &fake,
            tmp.path(),
            k,
            i as u8,
            Seed::gzip().in_run(77 + i as u64),
        );
    }
    seed_bundle(
        &fake,
        tmp.path(),
        "old-20250101T000000Z-dddddd-dump-failed.tar.gz",
        9,
        Seed::gzip().expired(),
    );

    let b = outside(&fake);
    let all: Vec<String> = b.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(all, keys);
    let some: Vec<String> = b.list("b-").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(some, [keys[1]]);
    let pages: Vec<_> = fake
        .api
        .seen()
        .iter()
        .take(3)
        .map(|s| s.target.clone())
        .collect();
    assert_eq!(
        pages,
        [1, 2, 3].map(|p| format!("/repos/{REPO}/actions/artifacts?per_page=100&page={p}"))
    );
    for s in fake.api.seen() {
        let h = |k: &str| {
            s.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            h("authorization"),
            Some(format!("Bearer {REST_TOKEN}").as_str())
        );
        assert_eq!(h("x-github-api-version"), Some("2022-11-28"));
        assert!(h("user-agent").is_some_and(|u| u.starts_with("ferry/")));
        assert_eq!(h("accept"), Some("application/vnd.github+json"));
    }
}

#[test]
fn download_follows_the_redirect_without_the_token_raw_or_zipped() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let raw = seed_bundle(&fake, tmp.path(), KEY, 1, Seed::gzip());
    let zkey = "z-20260101T000000Z-zzzzzz-dump-failed.tar.gz";
    let zdata = bundle(tmp.path(), "z.tar.gz", 70_000, 2);
    let zbytes = std::fs::read(&zdata).unwrap();
    fake.seed(
        &format!("ferry-{zkey}"),
        &zip_holding(zkey, &zbytes),
        Seed::zip(),
    );
    let b = outside(&fake);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    b.get(KEY, &out.join("raw.tar.gz")).unwrap();
    assert_eq!(std::fs::read(out.join("raw.tar.gz")).unwrap(), raw);
    b.get(zkey, &out.join("zipped.tar.gz")).unwrap();
    assert_eq!(std::fs::read(out.join("zipped.tar.gz")).unwrap(), zbytes);
    // Nothing but the two downloads is left in the directory.
    let mut left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left, ["raw.tar.gz", "zipped.tar.gz"]);

    let zips: Vec<_> = fake
        .api
        .seen()
        .into_iter()
        .filter(|s| s.target.ends_with("/zip"))
        .collect();
    assert_eq!(zips.len(), 2);
    assert!(zips.iter().all(|s| s.status == Some(302)));
    let blob = fake.blob.seen();
    assert_eq!(blob.len(), 2);
    for s in &blob {
        assert_eq!(s.method, "GET");
        assert!(s.headers.iter().all(|(n, _)| n != "authorization"), "{s:?}");
        assert_eq!(s.status, Some(200));
    }
}

#[test]
fn a_download_that_does_not_match_its_digest_is_refused() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    seed_bundle(
        &fake,
        tmp.path(),
        KEY,
        1,
        Seed::gzip().digest(&format!("sha256:{}", "0".repeat(64))),
    );
    let dest = tmp.path().join("x.tar.gz");
    let e = outside(&fake).get(KEY, &dest).unwrap_err();
    assert!(
        e.to_string().contains("do not match the artifact's digest"),
        "{e}"
    );
    assert!(!dest.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "temporary files left behind"
    );
}

#[test]
fn expired_and_missing_artifacts_are_not_found() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    seed_bundle(&fake, tmp.path(), KEY, 1, Seed::gzip().expired());
    let b = outside(&fake);
    let e = b.get(KEY, &tmp.path().join("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("expired"), "{e}");
    let e = b.get("nope.tar.gz", &tmp.path().join("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains(REPO), "{e}");
}

#[test]
fn download_faults_are_retried_and_the_file_is_whole() {
    let tmp = tempfile::tempdir().unwrap();
    type Arm = Box<dyn Fn(&GithubFake)>;
    let cases: Vec<(&str, Arm)> = vec![
        (
            "429 with Retry-After on the listing",
            Box::new(|f: &GithubFake| {
                f.api.inject(
                    |r| r.path().ends_with("/artifacts"),
                    Fault::Respond(
                        Response::json(429, &serde_json::json!({"message":"slow"}))
                            .header("Retry-After", "1"),
                    ),
                )
            }),
        ),
        (
            "secondary rate limit (403 + Retry-After) on /zip",
            Box::new(|f: &GithubFake| {
                f.api.inject(|r| r.path().ends_with("/zip"), Fault::Respond(Response::json(403, &serde_json::json!({"message":"You have exceeded a secondary rate limit"})).header("Retry-After", "1")))
            }),
        ),
        (
            "503 on /zip",
            Box::new(|f: &GithubFake| {
                f.api.inject(
                    |r| r.path().ends_with("/zip"),
                    Fault::Respond(Response::text(503, "unavailable")),
                )
            }),
        ),
        (
            "reset on /zip",
            Box::new(|f: &GithubFake| f.api.inject(|r| r.path().ends_with("/zip"), Fault::Reset)),
        ),
        (
            "truncated blob download",
            Box::new(|f: &GithubFake| f.blob.inject(|_| true, Fault::Truncate)),
        ),
        (
            "slow blob download",
            Box::new(|f: &GithubFake| {
                f.blob
                    .inject(|_| true, Fault::SlowBody(Duration::from_millis(2)))
            }),
        ),
        (
            "blob download times out",
            Box::new(|f: &GithubFake| f.blob.inject(|_| true, Fault::Hang(Duration::from_secs(8)))),
        ),
        (
            "500 on the blob",
            Box::new(|f: &GithubFake| f.blob.inject(|_| true, Fault::Respond(Response::new(500)))),
        ),
        (
            "truncated listing",
            Box::new(|f: &GithubFake| {
                f.api
                    .inject(|r| r.path().ends_with("/artifacts"), Fault::Truncate)
            }),
        ),
    ];
    for (i, (name, arm)) in cases.into_iter().enumerate() {
        let fake = GithubFake::start().unwrap();
        let data = seed_bundle(&fake, tmp.path(), KEY, i as u8, Seed::gzip());
        arm(&fake);
        let dest = tmp.path().join(format!("d{i}.tar.gz"));
        let r = outside(&fake).get(KEY, &dest);
        assert!(r.is_ok(), "{name}: {:?}", r.err().map(|e| e.to_string()));
        assert_eq!(std::fs::read(&dest).unwrap(), data, "{name}");
        assert_eq!(
            fake.api.pending_faults() + fake.blob.pending_faults(),
            0,
            "{name}: the fault never struck"
        );
    }
}

#[test]
fn a_bad_rest_token_is_an_auth_error_without_the_token() {
    let fake = GithubFake::start().unwrap();
    let secret = "ghp_WrongButSecret123";
    let mut env = fake.rest_env();
    env[0].1 = secret.into();
    let e = open(env, &config()).list("").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    let s = e.to_string();
    assert!(
        s.contains("HTTP 401: Bad credentials") && s.contains("GITHUB_TOKEN"),
        "{s}"
    );
    assert!(!s.contains(secret), "{s}");
    assert_eq!(fake.api.seen().len(), 1, "auth errors are not retried");
}

#[test]
fn inside_actions_list_and_get_use_the_results_service() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 90_000, 3);
    let b = in_actions(&fake);
    b.put(KEY, &src).unwrap();
    let listed = b.list("").unwrap();
    assert_eq!(
        listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
        [KEY]
    );
    assert_eq!(listed[0].size, 90_000);
    let out = tmp.path().join("got.tar.gz");
    b.get(KEY, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&src).unwrap());
    assert!(twirp_calls(&fake).contains(&"GetSignedArtifactURL".to_string()));
    assert!(fake.api.seen().is_empty());
    let url = b.share(KEY).unwrap().unwrap();
    assert!(
        url.ends_with(&format!(
            "/{REPO}/actions/runs/{}/artifacts/{}",
            fake.run_id(),
            fake.finalized()[0].id
        )),
        "{url}"
    );
}

#[test]
fn share_outside_actions_names_the_artifact_page() {
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    seed_bundle(&fake, tmp.path(), KEY, 1, Seed::gzip().in_run(4242));
    let url = outside(&fake).share(KEY).unwrap().unwrap();
    let id = fake.finalized()[0].id;
    assert_eq!(
        url,
        format!("{}/{REPO}/actions/runs/4242/artifacts/{id}", fake.api_url())
    );
}

/// Everything logged while the tests of this binary run.
fn log_buffer() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let b = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Writer(b.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn tokens_and_signatures_never_reach_logs_or_errors() {
    let logs = log_buffer();
    let fake = GithubFake::start().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let src = bundle(tmp.path(), "b.tar.gz", 3 * 65_536, 4);
    // Faults that make ferry log retries and restarts.
    fake.expire_upload_urls(1);
    fake.blob.inject(
        is_comp(Some("block")),
        Fault::Respond(Response::new(503).body(b"<Error><Code>ServerBusy</Code></Error>".to_vec())),
    );
    fake.results
        .inject(is_method("FinalizeArtifact"), Fault::Truncate);
    let mut errors = Vec::new();
    let b = in_actions(&fake);
    b.put(KEY, &src).unwrap();
    let other = bundle(tmp.path(), "c.tar.gz", 100, 5);
    errors.push(b.put(KEY, &other).unwrap_err().to_string());
    let mut vars = fake.actions_env();
    vars.extend(fake.rest_env());
    let both = open(vars, &config());
    fake.api.inject(
        |r| r.path().ends_with("/zip"),
        Fault::Respond(Response::text(503, "x")),
    );
    both.get(KEY, &tmp.path().join("g.tar.gz")).unwrap();
    fake.expire_runtime_token();
    errors.push(b.put("other.tar.gz", &other).unwrap_err().to_string());
    errors.push(format!("{b:?} {both:?}"));

    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("retrying"), "the faults were logged: {logs}");
    let mut secrets = vec![fake.runtime_token(), REST_TOKEN.to_string()];
    for s in fake.blob.seen() {
        let sig = s
            .target
            .split("sig=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_string();
        secrets.push(ferry_tests::http_fake::percent_decode(&sig));
        secrets.push(sig);
    }
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret is in the logs");
        for e in &errors {
            assert!(!e.contains(secret.as_str()), "a secret is in {e}");
        }
    }
}
