//! The Dropbox backend against the fake Dropbox: uploads small and in
//! sessions, non-ASCII keys, both token setups, shared links, listing with
//! `continue`, downloads, and the faults a real network brings. After
//! every fault the bundle is stored exactly once and byte for byte.
//!
//! The second half checks the fake itself: it must refuse what Dropbox
//! refuses, or the first half proves nothing.

mod dropbox_common;

use std::path::Path;
use std::time::{Duration, Instant};

use dropbox_common::*;
use ferry_tests::fakes::dropbox::{
    FakeDropbox, content_hash, expired_token, rate_limited, rate_limited_text, route_error,
    write_contention,
};
use ferry_tests::http_fake::{Fault, HttpFake, Response, Seen};
use ferry_uploaders::backends::ErrorKind;
use ferry_uploaders::{Backend, DropboxBackend, DropboxConfig};
use serde_json::json;

/// The key is in the fake exactly once, written once, byte for byte, and
/// no renamed copy of it exists.
fn landed_once(fake: &FakeDropbox, key: &str, src: &Path) {
    let path = format!("/ferry/{key}");
    let f = fake
        .file(&path)
        .unwrap_or_else(|| panic!("{path} not stored"));
    assert!(
        f.bytes == std::fs::read(src).unwrap(),
        "{path}: stored bytes differ"
    );
    assert_eq!(f.writes, 1, "{path} written {} times", f.writes);
    let stem = path.trim_end_matches(".tar.gz").to_lowercase();
    let copies: Vec<String> = fake
        .files()
        .into_keys()
        .filter(|k| k.starts_with(&stem) && *k != path.to_lowercase())
        .collect();
    assert!(copies.is_empty(), "copies of {path}: {copies:?}");
}

/// Arms `fault` for the next request to `route` on `host`.
fn arm(host: &HttpFake, route: &'static str, fault: Fault) {
    host.inject(move |r| is_route(r, route), fault);
}

/// How many requests `host` saw that `pred` accepts.
fn count(host: &HttpFake, pred: impl Fn(&Seen) -> bool) -> usize {
    host.seen().iter().filter(|s| pred(s)).count()
}

fn arg_of(headers: &[(String, String)]) -> serde_json::Value {
    let h = headers
        .iter()
        .find(|(k, _)| k == "dropbox-api-arg")
        .map(|(_, v)| v.as_str())
        .unwrap_or("null");
    serde_json::from_str(h).unwrap()
}

fn content_calls(fake: &FakeDropbox, route: &str) -> Vec<Seen> {
    fake.content()
        .seen()
        .into_iter()
        .filter(|s| s.target == format!("/2/{route}"))
        .collect()
}

// ------------------------------------------------------------ uploads

#[test]
fn small_bundle_is_one_upload_and_a_second_put_sends_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let src = bundle(tmp.path(), "a.tar.gz", MIB + 17, 1);
    let key = "ci-7/ci-7-20261203T120000Z-abc123-finish-succeeded.tar.gz";
    let r = b.put(key, &src).unwrap();
    assert_eq!(r.backend, "dropbox");
    assert_eq!(r.key, key);
    assert_eq!(r.size, (MIB + 17) as u64);
    assert_eq!(r.location, format!("dropbox:/ferry/{key}"));
    landed_once(&fake, key, &src);
    let uploads = content_calls(&fake, "files/upload");
    assert_eq!(uploads.len(), 1);
    let arg = arg_of(&uploads[0].headers);
    assert_eq!(arg["mode"], "add");
    assert_eq!(arg["autorename"], false);
    assert_eq!(
        arg["content_hash"],
        content_hash(&std::fs::read(&src).unwrap())
    );

    // Idempotent: the same content under the same key is not sent again.
    let again = b.put(key, &src).unwrap();
    assert_eq!(again, r);
    assert_eq!(content_calls(&fake, "files/upload").len(), 1);
    landed_once(&fake, key, &src);
}

#[test]
fn large_bundles_go_in_sessions_with_offsets_on_the_chunk_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    for (i, len) in [10 * MIB + 123, 8 * MIB].into_iter().enumerate() {
        let src = bundle(tmp.path(), &format!("s{i}.tar.gz"), len, 10 + i as u64);
        let key = format!("s{i}.tar.gz");
        b.put(&key, &src).unwrap();
        landed_once(&fake, &key, &src);
    }
    assert_eq!(fake.sessions_started(), 2);
    assert_eq!(fake.uploads(), 0);
    let starts = content_calls(&fake, "files/upload_session/start");
    let appends = content_calls(&fake, "files/upload_session/append_v2");
    let finishes = content_calls(&fake, "files/upload_session/finish");
    // 10 MiB + 123: start 4, append 4 at 4, finish the rest at 8.
    // 8 MiB: start 4, finish 4 at 4.
    assert_eq!(
        starts.iter().map(|s| s.body_len).collect::<Vec<_>>(),
        [4 * MIB, 4 * MIB]
    );
    assert_eq!(appends.len(), 1);
    assert_eq!(appends[0].body_len, 4 * MIB);
    assert_eq!(arg_of(&appends[0].headers)["cursor"]["offset"], 4 * MIB);
    assert_eq!(
        finishes.iter().map(|s| s.body_len).collect::<Vec<_>>(),
        [2 * MIB + 123, 4 * MIB]
    );
    let offsets: Vec<_> = finishes
        .iter()
        .map(|s| arg_of(&s.headers)["cursor"]["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [8 * MIB as u64, 4 * MIB as u64]);
    for f in &finishes {
        let arg = arg_of(&f.headers);
        assert_eq!(arg["commit"]["mode"], "add");
        assert_eq!(arg["commit"]["autorename"], false);
    }
}

#[test]
fn a_bundle_between_cutoff_and_chunk_closes_the_session_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(
        &fake,
        DropboxConfig {
            chunk_mib: 8,
            ..config(&fake)
        },
    );
    let src = bundle(tmp.path(), "m.tar.gz", 6 * MIB + 5, 3);
    b.put("m.tar.gz", &src).unwrap();
    landed_once(&fake, "m.tar.gz", &src);
    let start = &content_calls(&fake, "files/upload_session/start")[0];
    assert_eq!(arg_of(&start.headers)["close"], true);
    assert_eq!(
        content_calls(&fake, "files/upload_session/finish")[0].body_len,
        0
    );
}

#[test]
fn non_ascii_keys_are_escaped_in_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let small = bundle(tmp.path(), "u.tar.gz", 1000, 4);
    let large = bundle(tmp.path(), "v.tar.gz", 5 * MIB, 5);
    let k1 = "höst/ünïcødé-日本-😀.tar.gz";
    let k2 = "höst/große-session.tar.gz";
    b.put(k1, &small).unwrap();
    b.put(k2, &large).unwrap();
    landed_once(&fake, k1, &small);
    landed_once(&fake, k2, &large);
    for s in fake.content().seen() {
        let arg = s
            .headers
            .iter()
            .find(|(k, _)| k == "dropbox-api-arg")
            .unwrap();
        assert!(arg.1.is_ascii(), "{}", arg.1);
        assert_eq!(s.status, Some(200), "{}", s.target);
    }
    assert!(
        fake.content()
            .seen()
            .iter()
            .any(|s| s.headers.iter().any(|(_, v)| v.contains(r"\ud83d\ude00")))
    );
    let keys: Vec<String> = b.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(keys, [k2, k1]);
    let out = tmp.path().join("back");
    b.get(k1, &out).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&small).unwrap());
    assert!(b.share(k1).unwrap().is_some());
}

// ------------------------------------------------------------ tokens

#[test]
fn refresh_flow_fetches_a_token_once_and_again_when_it_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_refresh(&fake, config(&fake));
    let a = bundle(tmp.path(), "a.tar.gz", 1000, 1);
    b.put("a.tar.gz", &a).unwrap();
    b.put("b.tar.gz", &a).unwrap();
    assert_eq!(fake.refreshes(), 1, "the token is kept between calls");
    assert_eq!(b.token_refreshes(), 1);

    // Expired mid-session: refreshed once, the session continues.
    let big = bundle(tmp.path(), "big.tar.gz", 9 * MIB, 2);
    arm(
        fake.content(),
        "files/upload_session/append_v2",
        Fault::Respond(expired_token()),
    );
    b.put("big.tar.gz", &big).unwrap();
    assert_eq!(fake.refreshes(), 2);
    landed_once(&fake, "big.tar.gz", &big);
    assert_eq!(fake.sessions_started(), 1);

    // The account expires every token: one refresh, then on.
    fake.expire_tokens();
    assert_eq!(b.list("").unwrap().len(), 3);
    assert_eq!(fake.refreshes(), 3);
    let expired_answers = count(fake.api(), |s| s.status == Some(401));
    assert_eq!(expired_answers, 1);
}

#[test]
fn an_expired_token_is_refreshed_only_once() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_refresh(&fake, config(&fake));
    fake.issue_expired_tokens(true);
    let a = bundle(tmp.path(), "a.tar.gz", 1000, 1);
    let e = b.put("a.tar.gz", &a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    // One token to start with, one more after expired_access_token; no loop.
    assert_eq!(fake.refreshes(), 2);
    let s = e.to_string();
    assert!(
        s.contains("dropbox backend") && s.contains("expired_access_token"),
        "{s}"
    );
    assert!(fake.files().is_empty());
}

#[test]
fn a_plain_token_that_expires_names_the_refresh_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    fake.expire_tokens();
    let a = bundle(tmp.path(), "a.tar.gz", 1000, 1);
    let e = b.put("a.tar.gz", &a).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth);
    assert!(!e.is_transient());
    let s = e.to_string();
    assert!(s.contains("Dropbox token expired"), "{s}");
    assert!(
        s.contains("set DROPBOX_REFRESH_TOKEN, DROPBOX_APP_KEY, DROPBOX_APP_SECRET"),
        "{s}"
    );
    assert!(!s.contains(TOKEN), "{s}");
    assert_eq!(fake.refreshes(), 0);
}

#[test]
fn a_token_is_renewed_before_it_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    fake.set_token_life(Duration::from_secs(4));
    let b = with_refresh(&fake, config(&fake));
    let a = bundle(tmp.path(), "a.tar.gz", 1000, 1);
    b.put("a.tar.gz", &a).unwrap();
    assert_eq!(fake.refreshes(), 1);
    // Past half the token's life: renewed before use, never refused.
    std::thread::sleep(Duration::from_millis(2100));
    b.list("").unwrap();
    assert_eq!(fake.refreshes(), 2);
    assert!(fake.api().seen().iter().all(|s| s.status != Some(401)));
}

#[test]
fn bad_refresh_credentials_are_named_and_not_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    fake.set_app(APP_KEY, Some(APP_SECRET), REFRESH);
    let a = bundle(tmp.path(), "a.tar.gz", 1000, 1);
    for (creds, expect, var) in [
        (
            refresh_creds("REVOKED-REFRESH-TOKEN", APP_SECRET),
            "invalid_grant",
            "DROPBOX_REFRESH_TOKEN",
        ),
        (
            refresh_creds(REFRESH, "WRONG-APP-SECRET"),
            "invalid_client",
            "DROPBOX_APP_SECRET",
        ),
    ] {
        let before = fake.api().seen().len();
        let b = DropboxBackend::new(config(&fake), creds)
            .unwrap()
            .with_retry(fast_retry());
        let e = b.put("a.tar.gz", &a).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Auth);
        let s = e.to_string();
        assert!(s.contains(expect) && s.contains(var), "{s}");
        assert!(!s.contains("REVOKED-REFRESH-TOKEN") && !s.contains("WRONG-APP-SECRET"));
        assert_eq!(fake.api().seen().len(), before + 1, "not retried");
    }
    assert_eq!(fake.refreshes(), 0);
}

// ------------------------------------------------------------ links, lists, downloads

#[test]
fn a_shared_link_is_created_once_and_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let a = bundle(tmp.path(), "a.tar.gz", 1000, 1);
    b.put("h/a.tar.gz", &a).unwrap();
    let url = b.share("h/a.tar.gz").unwrap().unwrap();
    assert!(url.starts_with("https://www.dropbox.com/scl/fi/"), "{url}");
    assert_eq!(Some(url.clone()), fake.link("/ferry/h/a.tar.gz"));
    // Again: shared_link_already_exists with its metadata.
    assert_eq!(
        b.share("h/a.tar.gz").unwrap().as_deref(),
        Some(url.as_str())
    );
    // Without the metadata: found with list_shared_links.
    arm(
        fake.api(),
        "sharing/create_shared_link_with_settings",
        Fault::Respond(route_error(json!({".tag": "shared_link_already_exists"}))),
    );
    assert_eq!(
        b.share("h/a.tar.gz").unwrap().as_deref(),
        Some(url.as_str())
    );
    assert!(
        fake.api()
            .seen()
            .iter()
            .any(|s| s.target == "/2/sharing/list_shared_links")
    );
    assert_eq!(fake.links_created(), 1);
    // A missing bundle is not found, and share off means no link.
    assert_eq!(
        b.share("h/missing.tar.gz").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let off = with_token(
        &fake,
        DropboxConfig {
            share: false,
            ..config(&fake)
        },
    );
    assert_eq!(off.share("h/a.tar.gz").unwrap(), None);
}

#[test]
fn list_pages_with_continue_and_survives_a_reset_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    assert!(b.list("").unwrap().is_empty(), "no folder yet: empty");
    fake.set_page_size(2);
    let mut keys = Vec::new();
    for (i, k) in [
        "h2/z.tar.gz",
        "h1/b.tar.gz",
        "h1/a.tar.gz",
        "top.tar.gz",
        "h1/deep/c.tar.gz",
    ]
    .into_iter()
    .enumerate()
    {
        let src = bundle(tmp.path(), &format!("{i}"), 100 + i, i as u64);
        b.put(k, &src).unwrap();
        keys.push(k.to_string());
    }
    fake.put_file("/elsewhere/x.tar.gz", b"not ours");
    keys.sort();
    let listed = b.list("").unwrap();
    assert_eq!(
        listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        keys
    );
    assert_eq!(listed[0].size, 102);
    assert!(listed[0].modified > std::time::SystemTime::UNIX_EPOCH);
    let continues = count(fake.api(), |s| s.target == "/2/files/list_folder/continue");
    assert!(continues >= 3, "{continues}");
    let h1: Vec<String> = b.list("h1/").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(h1, ["h1/a.tar.gz", "h1/b.tar.gz", "h1/deep/c.tar.gz"]);

    // The cursor expires mid-listing: listed again from the start, no
    // entry twice.
    arm(
        fake.api(),
        "files/list_folder/continue",
        Fault::Respond(route_error(json!({".tag": "reset"}))),
    );
    let again: Vec<String> = b.list("").unwrap().into_iter().map(|o| o.key).collect();
    assert_eq!(again, keys);
}

#[test]
fn downloads_are_byte_identical_and_verified() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let src = bundle(tmp.path(), "d.tar.gz", 9 * MIB + 1, 7);
    b.put("d.tar.gz", &src).unwrap();
    let out = tmp.path().join("out.tar.gz");
    b.get("d.tar.gz", &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap());
    // Cut short: retried, still identical, no temporary file left behind.
    std::fs::remove_file(&out).unwrap();
    arm(fake.content(), "files/download", Fault::Truncate);
    b.get("d.tar.gz", &out).unwrap();
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap());
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let e = b.get("nope.tar.gz", &out).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("nope.tar.gz"), "{e}");
}

#[test]
fn a_download_whose_bytes_differ_from_the_metadata_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let src = bundle(tmp.path(), "d.tar.gz", 1000, 7);
    b.put("d.tar.gz", &src).unwrap();
    let meta = json!({"name": "d.tar.gz", "size": 1000, "content_hash": content_hash(b"other"),
                      "path_display": "/ferry/d.tar.gz"});
    for _ in 0..6 {
        arm(
            fake.content(),
            "files/download",
            Fault::Respond(
                Response::new(200)
                    .header("Dropbox-API-Result", &meta.to_string())
                    .body(std::fs::read(&src).unwrap()),
            ),
        );
    }
    let out = tmp.path().join("out.tar.gz");
    let e = b.get("d.tar.gz", &out).unwrap_err();
    assert!(e.to_string().contains("content_hash"), "{e}");
    assert!(!out.exists());
}

// ------------------------------------------------------------ faults

/// Puts `key` (sized to need a session when `session`) with `arm` run on
/// the fake first; the bundle must land exactly once.
fn survives(arm: impl FnOnce(&FakeDropbox), session: bool) -> (FakeDropbox, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let len = if session { 10 * MIB + 3 } else { 100_000 };
    let src = bundle(tmp.path(), "f.tar.gz", len, 42);
    arm(&fake);
    let t = Instant::now();
    b.put("f.tar.gz", &src)
        .unwrap_or_else(|e| panic!("put failed: {e}"));
    let took = t.elapsed();
    landed_once(&fake, "f.tar.gz", &src);
    assert_eq!(
        fake.content().pending_faults() + fake.api().pending_faults(),
        0,
        "every fault was met"
    );
    (fake, took)
}

#[test]
fn rate_limits_are_waited_out_as_asked() {
    let (_, took) = survives(
        |f| {
            arm(
                f.content(),
                "files/upload",
                Fault::Respond(rate_limited("too_many_requests", 1)),
            )
        },
        false,
    );
    assert!(
        took >= Duration::from_secs(1),
        "Retry-After honoured: {took:?}"
    );
    let (_, took) = survives(
        |f| {
            arm(
                f.content(),
                "files/upload_session/append_v2",
                Fault::Respond(rate_limited_text(1)),
            )
        },
        true,
    );
    assert!(took >= Duration::from_secs(1), "{took:?}");
    survives(
        |f| {
            arm(
                f.content(),
                "files/upload_session/finish",
                Fault::Respond(rate_limited("too_many_write_operations", 0)),
            );
            arm(
                f.content(),
                "files/upload_session/finish",
                Fault::Respond(write_contention()),
            );
        },
        true,
    );
}

#[test]
fn server_errors_are_retried() {
    survives(
        |f| {
            arm(
                f.content(),
                "files/upload_session/append_v2",
                Fault::Respond(Response::text(500, "Internal Server Error")),
            );
            arm(
                f.content(),
                "files/upload_session/start",
                Fault::Respond(Response::text(503, "Service Unavailable")),
            );
            arm(
                f.api(),
                "files/get_metadata",
                Fault::Respond(Response::text(503, "Service Unavailable")),
            );
        },
        true,
    );
}

#[test]
fn connection_resets_are_retried() {
    survives(
        |f| {
            arm(f.content(), "files/upload", Fault::ResetMidBody);
            arm(f.content(), "files/upload", Fault::Reset);
        },
        false,
    );
    survives(
        |f| {
            arm(
                f.content(),
                "files/upload_session/append_v2",
                Fault::ResetMidBody,
            );
            arm(f.content(), "files/upload_session/finish", Fault::Reset);
        },
        true,
    );
}

#[test]
fn a_lost_append_answer_is_recovered_from_incorrect_offset() {
    let (fake, _) = survives(
        |f| {
            arm(
                f.content(),
                "files/upload_session/append_v2",
                Fault::Truncate,
            )
        },
        true,
    );
    // The append landed, its answer did not: the replay got
    // incorrect_offset, and the upload went on from correct_offset.
    let appends = content_calls(&fake, "files/upload_session/append_v2");
    assert_eq!(
        appends.iter().map(|s| s.status).collect::<Vec<_>>(),
        [Some(200), Some(409)]
    );
    let finish = &content_calls(&fake, "files/upload_session/finish")[0];
    assert_eq!(arg_of(&finish.headers)["cursor"]["offset"], 8 * MIB);
}

#[test]
fn a_lost_commit_answer_does_not_make_a_second_copy() {
    // The single upload committed, its answer was cut: the replay commits
    // identical content, which writes nothing.
    survives(|f| arm(f.content(), "files/upload", Fault::Truncate), false);
    // The finish committed, its answer was cut: the session is gone, and
    // the file is there with our content.
    survives(
        |f| arm(f.content(), "files/upload_session/finish", Fault::Truncate),
        true,
    );
}

#[test]
fn timeouts_and_slow_answers() {
    // timeout_secs = 2: a call that never answers is given up and sent again.
    let (fake, took) = survives(
        |f| {
            arm(
                f.api(),
                "files/get_metadata",
                Fault::Hang(Duration::from_secs(8)),
            )
        },
        true,
    );
    assert!(
        took < Duration::from_secs(8),
        "gave up before the server did: {took:?}"
    );
    let looked = count(fake.api(), |s| s.target == "/2/files/get_metadata");
    assert_eq!(looked, 2);
    survives(
        |f| {
            arm(
                f.content(),
                "files/upload_session/finish",
                Fault::SlowBody(Duration::from_millis(40)),
            );
            arm(
                f.api(),
                "files/get_metadata",
                Fault::SlowBody(Duration::from_millis(40)),
            );
        },
        true,
    );
}

#[test]
fn damaged_bodies_are_sent_again() {
    // content_hash on every request: the server refuses damaged bytes.
    for session in [false, true] {
        let (fake, _) = survives(|f| f.corrupt_next_upload(), session);
        let refused = count(fake.content(), |s| s.status == Some(409));
        assert_eq!(refused, 1);
    }
}

#[test]
fn a_different_file_under_the_key_is_a_conflict_never_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    fake.put_file("/ferry/x.tar.gz", b"someone else's");
    for (name, len) in [("small", 1000), ("large", 6 * MIB)] {
        let src = bundle(tmp.path(), name, len, 9);
        let e = b.put("x.tar.gz", &src).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(!e.is_transient());
        let s = e.to_string();
        assert!(
            s.contains("x.tar.gz") && s.contains("never overwrites"),
            "{s}"
        );
    }
    assert_eq!(
        fake.file("/ferry/x.tar.gz").unwrap().bytes,
        b"someone else's"
    );
    assert_eq!(fake.files().len(), 1);
    // The pre-check saw it: nothing was uploaded.
    assert!(content_calls(&fake, "files/upload").is_empty());

    // A file appearing between the check and the commit: the commit's
    // 409 path/conflict, still not overwritten.
    let src = bundle(tmp.path(), "race", 1000, 10);
    arm(
        fake.api(),
        "files/get_metadata",
        Fault::Respond(route_error(
            json!({".tag": "path", "path": {".tag": "not_found"}}),
        )),
    );
    let e = b.put("x.tar.gz", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert_eq!(
        fake.file("/ferry/x.tar.gz").unwrap().bytes,
        b"someone else's"
    );
    let c = content_calls(&fake, "files/upload");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].status, Some(409));

    // The same content already there (put by another run): a receipt, no upload.
    let same = bundle(tmp.path(), "same", 2000, 11);
    fake.put_file("/ferry/y.tar.gz", &std::fs::read(&same).unwrap());
    b.put("y.tar.gz", &same).unwrap();
    assert_eq!(content_calls(&fake, "files/upload").len(), 1);
}

#[test]
fn permanent_errors_are_not_retried_and_name_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    let src = bundle(tmp.path(), "a", 1000, 1);
    arm(
        fake.content(),
        "files/upload",
        Fault::Respond(route_error(
            json!({".tag": "path", "reason": {".tag": "insufficient_space"}, "upload_session_id": "x"}),
        )),
    );
    let e = b.put("a.tar.gz", &src).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(e.to_string().contains("path/insufficient_space"), "{e}");
    assert_eq!(content_calls(&fake, "files/upload").len(), 1);
    arm(
        fake.api(),
        "files/get_metadata",
        Fault::Respond(Response::json(
            401,
            &json!({"error": {".tag": "missing_scope", "required_scope": "files.metadata.read"}}),
        )),
    );
    let e = b.put("a.tar.gz", &src).unwrap_err();
    assert!(
        e.to_string().contains("files.metadata.read") && e.to_string().contains("Permissions"),
        "{e}"
    );
}

// ------------------------------------------------------------ the fake is strict

/// A hand-made request to `route` on the host at `base`.
fn call(base: &str, route: &str, token: &str) -> reqwest::blocking::RequestBuilder {
    raw().post(format!("{base}/2/{route}")).bearer_auth(token)
}

fn raw() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

fn post_upload(
    fake: &FakeDropbox,
    route: &str,
    arg: &[u8],
    body: Vec<u8>,
) -> reqwest::blocking::Response {
    call(&fake.content_url(), route, TOKEN)
        .header(
            "Dropbox-API-Arg",
            reqwest::header::HeaderValue::from_bytes(arg).unwrap(),
        )
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .unwrap()
}

fn json(resp: reqwest::blocking::Response) -> serde_json::Value {
    serde_json::from_slice(&resp.bytes().unwrap()).unwrap_or(serde_json::Value::Null)
}

fn tag_of(resp: reqwest::blocking::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    (status, json(resp)["error"].clone())
}

#[test]
fn the_fake_refuses_what_dropbox_refuses() {
    let fake = FakeDropbox::start().unwrap();
    fake.add_token(TOKEN);

    // Raw UTF-8 in Dropbox-API-Arg: 400 plain text.
    let r = post_upload(
        &fake,
        "files/upload",
        "{\"path\":\"/ü.txt\"}".as_bytes(),
        b"x".to_vec(),
    );
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("Dropbox-API-Arg"));
    // Escaped, it goes through.
    let r = post_upload(
        &fake,
        "files/upload",
        br#"{"path":"/\u00fc.txt"}"#,
        b"x".to_vec(),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert!(fake.file("/ü.txt").is_some());

    // Unknown argument fields.
    let r = post_upload(
        &fake,
        "files/upload",
        br#"{"path":"/a","modee":"add"}"#,
        vec![],
    );
    assert_eq!(r.status().as_u16(), 400);

    // Wrong content hash.
    let r = post_upload(
        &fake,
        "files/upload",
        format!(r#"{{"path":"/h","content_hash":"{}"}}"#, content_hash(b"y")).as_bytes(),
        b"x".to_vec(),
    );
    let (s, e) = tag_of(r);
    assert_eq!(
        (s, e[".tag"].as_str()),
        (409, Some("content_hash_mismatch"))
    );

    // A different file under the path, mode add: conflict; identical: fine.
    let r = post_upload(
        &fake,
        "files/upload",
        br#"{"path":"/\u00fc.txt"}"#,
        b"z".to_vec(),
    );
    let (s, e) = tag_of(r);
    assert_eq!(s, 409);
    assert_eq!(e["reason"]["conflict"][".tag"], "file");
    let r = post_upload(
        &fake,
        "files/upload",
        br#"{"path":"/\u00fc.txt"}"#,
        b"x".to_vec(),
    );
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(fake.file("/ü.txt").unwrap().writes, 1);

    // Missing or wrong Content-Type.
    let r = call(&fake.content_url(), "files/upload", TOKEN)
        .header("Dropbox-API-Arg", r#"{"path":"/a"}"#)
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = call(&fake.api_url(), "files/list_folder", TOKEN)
        .header("Content-Type", "text/plain")
        .body(r#"{"path":""}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // No Content-Length (a chunked body): 411.
    let r = call(&fake.content_url(), "files/upload", TOKEN)
        .header("Dropbox-API-Arg", r#"{"path":"/c"}"#)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::blocking::Body::new(std::io::Cursor::new(
            b"x".to_vec(),
        )))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 411);

    // A route on the wrong host.
    let r = call(&fake.api_url(), "files/upload", TOKEN)
        .header("Dropbox-API-Arg", r#"{"path":"/c"}"#)
        .header("Content-Type", "application/octet-stream")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Tokens: unknown, then expired.
    let r = call(&fake.api_url(), "files/list_folder", "sl.unknown")
        .json_body(&json!({"path": ""}))
        .send()
        .unwrap();
    let (s, e) = tag_of(r);
    assert_eq!((s, e[".tag"].as_str()), (401, Some("invalid_access_token")));

    // Sessions: offsets and the 4 MiB rule.
    let r = post_upload(
        &fake,
        "files/upload_session/start",
        br#"{"close":false}"#,
        vec![1; 4 * MIB],
    );
    let id = json(r)["session_id"].as_str().unwrap().to_string();
    let append = |offset: usize, len: usize, close: bool| {
        post_upload(
            &fake,
            "files/upload_session/append_v2",
            format!(r#"{{"cursor":{{"session_id":"{id}","offset":{offset}}},"close":{close}}}"#)
                .as_bytes(),
            vec![2; len],
        )
    };
    let (s, e) = tag_of(append(0, 4 * MIB, false));
    assert_eq!((s, e[".tag"].as_str()), (409, Some("incorrect_offset")));
    assert_eq!(e["correct_offset"], 4 * MIB);
    let (s, e) = tag_of(append(4 * MIB, MIB, false));
    assert_eq!(
        (s, e[".tag"].as_str()),
        (409, Some("concurrent_session_invalid_data_size"))
    );
    assert_eq!(append(4 * MIB, MIB, true).status().as_u16(), 200);
    let (s, e) = tag_of(append(5 * MIB, 0, false));
    assert_eq!((s, e[".tag"].as_str()), (409, Some("closed")));
    let finish = |offset: usize| {
        post_upload(
            &fake,
            "files/upload_session/finish",
            format!(
                r#"{{"cursor":{{"session_id":"{id}","offset":{offset}}},"commit":{{"path":"/s.bin","mode":"add"}}}}"#
            )
            .as_bytes(),
            vec![],
        )
    };
    let (s, e) = tag_of(finish(3));
    assert_eq!(s, 409);
    assert_eq!(e["lookup_failed"][".tag"], "incorrect_offset");
    assert_eq!(finish(5 * MIB).status().as_u16(), 200);
    assert_eq!(fake.file("/s.bin").unwrap().bytes.len(), 5 * MIB);
    let (s, e) = tag_of(finish(5 * MIB));
    assert_eq!(s, 409);
    assert_eq!(e["lookup_failed"][".tag"], "not_found");

    // Refresh credentials.
    fake.set_app(APP_KEY, Some(APP_SECRET), REFRESH);
    let token = |form: &[(&str, &str)]| {
        let body = form_body(form);
        let r = raw()
            .post(format!("{}/oauth2/token", fake.api_url()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap();
        let s = r.status().as_u16();
        (s, json(r))
    };
    let base = [
        ("grant_type", "refresh_token"),
        ("client_id", APP_KEY),
        ("client_secret", APP_SECRET),
    ];
    let (s, v) = token(&[&base[..], &[("refresh_token", "nope")]].concat());
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_grant")));
    let (s, v) = token(&[
        ("grant_type", "refresh_token"),
        ("client_id", APP_KEY),
        ("client_secret", "wrong"),
        ("refresh_token", REFRESH),
    ]);
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_client")));
    let (s, v) = token(&[&base[..], &[("refresh_token", REFRESH)]].concat());
    assert_eq!(s, 200);
    assert_eq!(v["expires_in"], 14_400);
    assert!(
        v.get("refresh_token").is_none(),
        "refresh tokens do not rotate"
    );
    assert_eq!(fake.refreshes(), 1);
    fake.expire_tokens();
    let r = call(
        &fake.api_url(),
        "files/list_folder",
        v["access_token"].as_str().unwrap(),
    )
    .json_body(&json!({"path": ""}))
    .send()
    .unwrap();
    let (s, e) = tag_of(r);
    assert_eq!((s, e[".tag"].as_str()), (401, Some("expired_access_token")));
}

fn form_body(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

trait JsonBody {
    fn json_body(self, v: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::blocking::RequestBuilder {
    fn json_body(self, v: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(v.to_string())
    }
}

#[test]
fn a_lost_session_and_a_missing_source_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let b = with_token(&fake, config(&fake));
    // Sessions live 7 days; after that Dropbox answers not_found.
    let src = bundle(tmp.path(), "s", 9 * MIB, 3);
    arm(
        fake.content(),
        "files/upload_session/append_v2",
        Fault::Respond(route_error(json!({".tag": "not_found"}))),
    );
    let e = b.put("s.tar.gz", &src).unwrap_err();
    assert!(e.is_transient(), "a later ship starts a new session: {e}");
    assert!(
        e.to_string().contains("no longer knows the upload session"),
        "{e}"
    );
    assert!(fake.files().is_empty());
    // A source that is not there: nothing is sent.
    let before = fake.content().seen().len() + fake.api().seen().len();
    let e = b.put("x.tar.gz", &tmp.path().join("missing")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("missing"), "{e}");
    assert_eq!(
        fake.content().seen().len() + fake.api().seen().len(),
        before
    );
    // And a bad key never reaches the wire either.
    assert_eq!(
        b.put("../x", &src).unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
}
