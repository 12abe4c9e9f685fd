//! The GitHub fake itself, spoken to with plain HTTP: it must refuse what
//! the real services refuse, or the backend's tests prove nothing.

use ferry_tests::fakes::github::{GithubFake, REPO, REST_TOKEN, Seed};
use reqwest::blocking::{Body, Client, RequestBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Twirp<'a> {
    fake: &'a GithubFake,
    c: Client,
    run: String,
    job: String,
}

impl<'a> Twirp<'a> {
    fn new(fake: &'a GithubFake) -> Self {
        use base64::Engine;
        let token = fake.runtime_token();
        let claims = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(claims)
                .unwrap(),
        )
        .unwrap();
        let scope = claims["scp"]
            .as_str()
            .unwrap()
            .split(' ')
            .find(|s| s.starts_with("Actions.Results:"))
            .unwrap()
            .to_string();
        let ids: Vec<&str> = scope.split(':').collect();
        Twirp {
            fake,
            c: client(),
            run: ids[1].into(),
            job: ids[2].into(),
        }
    }

    fn req(&self, method: &str) -> RequestBuilder {
        self.c
            .post(format!(
                "{}/twirp/github.actions.results.api.v1.ArtifactService/{method}",
                self.fake.results.url()
            ))
            .header(
                "Authorization",
                format!("Bearer {}", self.fake.runtime_token()),
            )
            .header("Content-Type", "application/json")
    }

    fn call(&self, method: &str, mut body: Value) -> (u16, Value) {
        body["workflow_run_backend_id"] = json!(self.run);
        body["workflow_job_run_backend_id"] = json!(self.job);
        let r = self.req(method).body(body.to_string()).send().unwrap();
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_slice(&r.bytes().unwrap()).unwrap_or(Value::Null),
        )
    }

    fn create(&self, name: &str) -> String {
        let (status, v) = self.call(
            "CreateArtifact",
            json!({"name": name, "version": 7, "mime_type": "application/gzip"}),
        );
        assert_eq!(status, 200, "{v}");
        v["signed_upload_url"].as_str().unwrap().to_string()
    }
}

fn status(r: RequestBuilder) -> u16 {
    r.send().unwrap().status().as_u16()
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("")
}

#[test]
fn twirp_refuses_what_the_results_service_refuses() {
    let fake = GithubFake::start().unwrap();
    let t = Twirp::new(&fake);
    // Authentication.
    let r =
        t.c.post(format!(
            "{}/twirp/github.actions.results.api.v1.ArtifactService/ListArtifacts",
            fake.results.url()
        ))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Content type, unknown methods and fields, camelCase names.
    let r =
        t.c.post(format!(
            "{}/twirp/github.actions.results.api.v1.ArtifactService/ListArtifacts",
            fake.results.url()
        ))
        .bearer_auth(fake.runtime_token())
        .header("Content-Type", "application/protobuf")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(t.call("UploadArtifact", json!({})).0, 404);
    let (s, v) = t.call("ListArtifacts", json!({"nameFilter": "x"}));
    assert_eq!((s, code(&v)), (400, "malformed"));
    // Another run's ids.
    let r = t
        .req("ListArtifacts")
        .body(
            json!({"workflow_run_backend_id": "other", "workflow_job_run_backend_id": t.job})
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    // Names and versions.
    let (s, v) = t.call("CreateArtifact", json!({"name": "a:b", "version": 7}));
    assert_eq!((s, code(&v)), (400, "invalid_argument"));
    let (s, _) = t.call("CreateArtifact", json!({"name": "a", "version": 3}));
    assert_eq!(s, 400);
    let (s, _) = t.call(
        "CreateArtifact",
        json!({"name": "a", "version": 7, "expires_at": "2001-01-01T00:00:00Z"}),
    );
    assert_eq!(s, 400);
    // Duplicates, finalized or not.
    t.create("dup");
    let (s, v) = t.call("CreateArtifact", json!({"name": "dup", "version": 7}));
    assert_eq!((s, code(&v)), (409, "already_exists"));
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("already exists on the workflow run")
    );
    // Nothing committed yet: finalize refuses, the listing is empty.
    let (s, _) = t.call("FinalizeArtifact", json!({"name": "dup", "size": "0"}));
    assert_eq!(s, 412);
    let (s, v) = t.call("ListArtifacts", json!({}));
    assert_eq!((s, v), (200, json!({})));
    // An expired token.
    fake.expire_runtime_token();
    let (s, v) = t.call("ListArtifacts", json!({}));
    assert_eq!((s, code(&v)), (401, "unauthenticated"));
}

#[test]
fn finalize_checks_size_and_hash_against_the_blob() {
    let fake = GithubFake::start().unwrap();
    let t = Twirp::new(&fake);
    let url = t.create("b.tar.gz");
    let data = b"\x1f\x8b some bundle".to_vec();
    let r =
        t.c.put(&url)
            .header("x-ms-blob-type", "BlockBlob")
            .body(data.clone())
            .send()
            .unwrap();
    assert_eq!(r.status(), 201);
    let good = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    let size = data.len().to_string();
    for (body, why) in [
        (
            json!({"name": "b.tar.gz", "size": "3", "hash": good}),
            "size",
        ),
        (
            json!({"name": "b.tar.gz", "size": size, "hash": format!("sha256:{}", "a".repeat(64))}),
            "hash",
        ),
        (
            json!({"name": "b.tar.gz", "size": size, "hash": "md5:abc"}),
            "hash form",
        ),
        (
            json!({"name": "nope", "size": size, "hash": good}),
            "unknown name",
        ),
    ] {
        let (s, v) = t.call("FinalizeArtifact", body);
        assert!(s == 400 || s == 404, "{why}: {s} {v}");
    }
    let (s, v) = t.call(
        "FinalizeArtifact",
        json!({"name": "b.tar.gz", "size": size, "hash": good}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["artifact_id"].is_string(), "int64 as a string: {v}");
    let (s, _) = t.call(
        "FinalizeArtifact",
        json!({"name": "b.tar.gz", "size": size, "hash": good}),
    );
    assert_eq!(s, 412, "finalized twice");
    let (_, v) = t.call("ListArtifacts", json!({"name_filter": "b.tar.gz"}));
    assert_eq!(v["artifacts"][0]["size"], json!(size));
    assert_eq!(v["artifacts"][0]["digest"], json!(good));
}

#[test]
fn the_blob_store_keeps_azure_rules() {
    let fake = GithubFake::start().unwrap();
    let t = Twirp::new(&fake);
    let url = t.create("x.tar.gz");
    let c = client();
    let put = |extra: &str| c.put(format!("{url}{extra}"));
    // No Content-Length (a streamed, chunked body).
    let r = put("")
        .header("x-ms-blob-type", "BlockBlob")
        .body(Body::new(std::io::Cursor::new(b"abc".to_vec())))
        .send()
        .unwrap();
    assert_eq!(r.status(), 411);
    // Put Blob without its blob type.
    assert_eq!(status(put("").body("abc")), 400);
    // Block ids: base64, at most 64 bytes, one length per blob.
    let id = |s: &str| {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(s);
        ferry_tests::fakes::github::query_escape(&b)
    };
    assert_eq!(status(put("&comp=block&blockid=%%%").body("a")), 400);
    assert_eq!(
        status(put(&format!("&comp=block&blockid={}", id(&"x".repeat(65)))).body("a")),
        400
    );
    assert_eq!(
        status(put(&format!("&comp=block&blockid={}", id("block-1"))).body("aa")),
        201
    );
    assert_eq!(
        status(put(&format!("&comp=block&blockid={}", id("block-1000"))).body("bb")),
        400
    );
    assert_eq!(
        status(put(&format!("&comp=block&blockid={}", id("block-2"))).body("cc")),
        201
    );
    // A list naming a block never staged, then a good one in list order.
    let list = |ids: &[&str]| {
        use base64::Engine;
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
        for i in ids {
            x.push_str(&format!(
                "<Latest>{}</Latest>",
                base64::engine::general_purpose::STANDARD.encode(i)
            ));
        }
        x + "</BlockList>"
    };
    assert_eq!(
        status(put("&comp=blocklist").body(list(&["block-1", "block-9"]))),
        400
    );
    assert_eq!(
        status(put("&comp=blocklist").body("<BlockList><Oldest>x</Oldest></BlockList>")),
        400
    );
    assert_eq!(
        status(put("&comp=blocklist").body(list(&["block-2", "block-1"]))),
        201
    );
    let (_, _) = t.call("FinalizeArtifact", json!({"name": "x.tar.gz", "size": "4"}));
    let a = &fake.finalized()[0];
    assert_eq!(a.data.as_deref(), Some(&b"ccaa"[..]));
    // The signature: tampered, expired, or used to read with write rights.
    let tampered = url.replace("sp=cw", "sp=rcw");
    assert_eq!(
        status(
            c.put(&tampered)
                .header("x-ms-blob-type", "BlockBlob")
                .body("a")
        ),
        403
    );
    let unsigned = url.split('?').next().unwrap().to_string();
    assert_eq!(status(c.get(&unsigned)), 403);
    assert_eq!(status(c.get(&url)), 403, "an upload URL cannot read");
    fake.expire_upload_urls(1);
    let old = t.create("y.tar.gz");
    let r = c
        .put(&old)
        .header("x-ms-blob-type", "BlockBlob")
        .body("a")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("AuthenticationFailed"));
    // Credentials meant for GitHub are refused by the blob host.
    let r = put("")
        .header("x-ms-blob-type", "BlockBlob")
        .header("Authorization", "Bearer x")
        .body("a")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn rest_refuses_what_the_api_refuses_and_redirects_downloads() {
    let fake = GithubFake::start().unwrap();
    let id = fake.seed("ferry-a.tar.gz", b"\x1f\x8bdata", Seed::gzip());
    let old = fake.seed("ferry-old.tar.gz", b"\x1f\x8bold", Seed::gzip().expired());
    let c = client();
    let get = |path: &str| c.get(format!("{}{path}", fake.api_url()));
    let list = format!("/repos/{REPO}/actions/artifacts");
    assert_eq!(get(&list).send().unwrap().status(), 403, "no User-Agent");
    let ua = |r: RequestBuilder| r.header("User-Agent", "test");
    assert_eq!(status(ua(get(&list))), 401, "no token");
    assert_eq!(status(ua(get(&list)).bearer_auth("ghp_wrong")), 401);
    let authed = |path: &str| ua(get(path)).bearer_auth(REST_TOKEN);
    assert_eq!(status(authed("/repos/other/repo/actions/artifacts")), 404);
    assert_eq!(
        status(authed(&list).header("X-GitHub-Api-Version", "1999-01-01")),
        400
    );
    let v: Value = serde_json::from_slice(
        &authed(&format!("{list}?per_page=1"))
            .send()
            .unwrap()
            .bytes()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(v["total_count"], 2);
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 1);
    let r = authed(&format!("{list}/{id}/zip")).send().unwrap();
    assert_eq!(r.status(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.starts_with(&fake.blob.url()), "{loc}");
    assert_eq!(
        status(c.get(&loc).bearer_auth(REST_TOKEN)),
        400,
        "the token must not go to the blob host"
    );
    let body = c.get(&loc).send().unwrap();
    assert_eq!(body.status(), 200);
    assert_eq!(body.bytes().unwrap().as_ref(), b"\x1f\x8bdata");
    assert_eq!(status(authed(&format!("{list}/{old}/zip"))), 410);
}
