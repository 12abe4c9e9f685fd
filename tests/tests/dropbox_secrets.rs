//! Tokens never reach logs or errors, whatever the server sends back.
//!
//! Alone in its test binary: `tracing` caches per call site whether anyone
//! listens, and a test on another thread without a subscriber could make
//! the capture below miss lines.

mod dropbox_common;

use std::sync::{Arc, Mutex};

use dropbox_common::*;
use ferry_tests::fakes::dropbox::{FakeDropbox, rate_limited};
use ferry_tests::http_fake::{Fault, Response};
use ferry_uploaders::{Backend, DropboxBackend};
use serde_json::json;

#[test]
fn tokens_never_reach_logs_or_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeDropbox::start().unwrap();
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || Capture(sink.clone()))
        .with_ansi(false)
        .finish();
    let mut errors = Vec::new();
    tracing::subscriber::with_default(subscriber, || {
        let a = bundle(tmp.path(), "a.tar.gz", 5 * MIB, 1);
        // Servers that echo the credentials they were sent.
        let plain = with_token(&fake, config(&fake));
        fake.content().inject(
            |r| is_route(r, "files/upload_session/start"),
            Fault::Respond(Response::text(
                400,
                &format!("bad request; you sent Bearer {TOKEN}"),
            )),
        );
        errors.push(plain.put("a.tar.gz", &a).unwrap_err().to_string());
        let b = with_refresh(&fake, config(&fake));
        fake.api().inject(
            |r| r.path() == "/oauth2/token",
            Fault::Respond(Response::json(
                400,
                &json!({"error": "invalid_grant",
                        "error_description": format!("{REFRESH} with {APP_SECRET} is revoked")}),
            )),
        );
        errors.push(b.list("").unwrap_err().to_string());
        fake.api().inject(
            |r| r.path() == "/oauth2/token",
            Fault::Respond(Response::text(500, &format!("oops {REFRESH}"))),
        );
        fake.content().inject(
            |r| is_route(r, "files/upload_session/start"),
            Fault::Respond(rate_limited("too_many_requests", 0)),
        );
        b.put("a.tar.gz", &a).unwrap();
        errors.push(format!("{b:?} {plain:?}"));
        let bad = DropboxBackend::new(config(&fake), refresh_creds(REFRESH, "WRONG-APP-SECRET"))
            .unwrap()
            .with_retry(fast_retry());
        errors.push(bad.list("").unwrap_err().to_string());
        fake.expire_tokens();
        fake.issue_expired_tokens(true);
        errors.push(b.list("").unwrap_err().to_string());
        errors.push(plain.list("").unwrap_err().to_string());
    });
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("dropbox call"),
        "debug logs were captured: {logs}"
    );
    assert!(logs.contains("retrying"), "{logs}");
    for text in errors.iter().chain(std::iter::once(&logs)) {
        for secret in [TOKEN, REFRESH, APP_SECRET, "WRONG-APP-SECRET", "sl.fake-"] {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }
    assert!(errors[0].contains("[redacted]"), "{}", errors[0]);
    assert!(
        errors[1].contains("[redacted] with [redacted]"),
        "{}",
        errors[1]
    );
}
