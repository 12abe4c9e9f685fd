//! A fake Dropbox API v2: the RPC host and the content host as two
//! servers on 127.0.0.1, sharing one in-memory account.
//!
//! Built from the published protocol (`shared/research/protocols.md`
//! Part A, Part D) and strict where the service is: a `Dropbox-API-Arg`
//! holding raw non-ASCII (400, plain text), unknown argument fields (400),
//! a route on the wrong host (400), a missing or wrong `Content-Type`
//! (400), an upload body without `Content-Length` (411), a body whose
//! `content_hash` differs (409 `content_hash_mismatch`), a session offset
//! other than the bytes held (409 `incorrect_offset` with
//! `correct_offset`), an unknown or expired token (401
//! `invalid_access_token` / `expired_access_token`), wrong refresh
//! credentials (400 `invalid_grant` / `invalid_client`), a commit onto a
//! different file (409 `path/conflict/file`).
//!
//! One rule is stricter than the service on purpose: a session request
//! that does not close the session must carry a multiple of 4 MiB. The
//! service demands it of concurrent sessions only; ferry's client keeps it
//! for sequential ones too (its per-request hashes come from the 4 MiB
//! block digests), so breaking it is a client bug the fake should catch.
//!
//! Faults (429 with `Retry-After`, resets, truncated answers, …) are
//! injected through [`HttpFake::inject`] on [`FakeDropbox::api`] or
//! [`FakeDropbox::content`]; helpers here build the service's own error
//! answers for them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::http_fake::{HttpFake, Request, Response};

const BLOCK: usize = 4 * 1024 * 1024;
/// Largest body of one request (Dropbox: 150 MiB).
const MAX_REQUEST: usize = 150 * 1024 * 1024;

/// Dropbox's `content_hash`, written here from the published algorithm
/// rather than borrowed from the client under test.
pub fn content_hash(data: &[u8]) -> String {
    let mut outer = Sha256::new();
    for block in data.chunks(BLOCK) {
        outer.update(Sha256::digest(block));
    }
    hex::encode(outer.finalize())
}

/// A stored file.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub path_display: String,
    pub bytes: Vec<u8>,
    pub id: String,
    pub rev: String,
    pub server_modified: SystemTime,
    /// How many times content was written to this path (a commit of
    /// identical content writes nothing).
    pub writes: u32,
}

struct Session {
    data: Vec<u8>,
    closed: bool,
}

struct Token {
    expires: Instant,
    expired: bool,
}

struct App {
    key: String,
    secret: Option<String>,
    refresh_token: String,
}

#[derive(Default)]
struct Counters {
    refreshes: u32,
    links_created: u32,
    sessions_started: u32,
    uploads: u32,
}

struct State {
    files: BTreeMap<String, FakeFile>,
    sessions: HashMap<String, Session>,
    tokens: HashMap<String, Token>,
    app: Option<App>,
    token_life: Duration,
    issued_expired: bool,
    links: BTreeMap<String, Value>,
    cursors: HashMap<String, Vec<Value>>,
    page_size: usize,
    corrupt_next: bool,
    next_id: u64,
    counters: Counters,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The fake: an API host and a content host.
pub struct FakeDropbox {
    api: HttpFake,
    content: HttpFake,
    state: Arc<Mutex<State>>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeDropbox {
    /// Both hosts on free ports of 127.0.0.1, an empty account, no token.
    pub fn start() -> Result<Self> {
        let state = Arc::new(Mutex::new(State {
            files: BTreeMap::new(),
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            app: None,
            token_life: Duration::from_secs(14_400),
            issued_expired: false,
            links: BTreeMap::new(),
            cursors: HashMap::new(),
            page_size: 500,
            corrupt_next: false,
            next_id: 0,
            counters: Counters::default(),
        }));
        let s = state.clone();
        let api = HttpFake::start(move |r| serve(&s, Host::Api, r))?;
        let s = state.clone();
        let content = HttpFake::start(move |r| serve(&s, Host::Content, r))?;
        Ok(FakeDropbox {
            api,
            content,
            state,
        })
    }

    /// The RPC host (and `/oauth2/token`), for faults and what it saw.
    pub fn api(&self) -> &HttpFake {
        &self.api
    }

    /// The content host (uploads and downloads).
    pub fn content(&self) -> &HttpFake {
        &self.content
    }

    pub fn api_url(&self) -> String {
        self.api.url()
    }

    pub fn content_url(&self) -> String {
        self.content.url()
    }

    /// Accepts `token` as an access token (a plain `DROPBOX_TOKEN`).
    pub fn add_token(&self, token: &str) {
        let mut s = lock(&self.state);
        let expires = Instant::now() + s.token_life;
        s.tokens.insert(
            token.to_string(),
            Token {
                expires,
                expired: false,
            },
        );
    }

    /// Registers the app and the refresh token `/oauth2/token` accepts
    /// (`secret` `None`: a PKCE app).
    pub fn set_app(&self, key: &str, secret: Option<&str>, refresh_token: &str) {
        lock(&self.state).app = Some(App {
            key: key.into(),
            secret: secret.map(str::to_string),
            refresh_token: refresh_token.into(),
        });
    }

    /// Lifetime of the access tokens issued from now on.
    pub fn set_token_life(&self, life: Duration) {
        lock(&self.state).token_life = life;
    }

    /// Every access token known so far answers `expired_access_token`.
    pub fn expire_tokens(&self) {
        for t in lock(&self.state).tokens.values_mut() {
            t.expired = true;
        }
    }

    /// Tokens issued by `/oauth2/token` are expired from the start (a
    /// clock or account fault no refresh can fix).
    pub fn issue_expired_tokens(&self, yes: bool) {
        lock(&self.state).issued_expired = yes;
    }

    /// How many access tokens `/oauth2/token` issued.
    pub fn refreshes(&self) -> u32 {
        lock(&self.state).counters.refreshes
    }

    /// How many shared links were created.
    pub fn links_created(&self) -> u32 {
        lock(&self.state).counters.links_created
    }

    /// How many upload sessions were started.
    pub fn sessions_started(&self) -> u32 {
        lock(&self.state).counters.sessions_started
    }

    /// How many `files/upload` calls were accepted.
    pub fn uploads(&self) -> u32 {
        lock(&self.state).counters.uploads
    }

    /// Most entries a `list_folder` page holds (the client's `limit` may
    /// ask for fewer).
    pub fn set_page_size(&self, n: usize) {
        lock(&self.state).page_size = n.max(1);
    }

    /// Forgets every `list_folder` cursor: `continue` answers `reset`.
    pub fn reset_cursors(&self) {
        lock(&self.state).cursors.clear();
    }

    /// The next upload body is damaged on the way (one byte flipped
    /// before the server hashes and stores it).
    pub fn corrupt_next_upload(&self) {
        lock(&self.state).corrupt_next = true;
    }

    /// Stores a file as if another client had put it there.
    pub fn put_file(&self, path: &str, bytes: &[u8]) {
        let mut s = lock(&self.state);
        write_file(&mut s, path, bytes.to_vec());
    }

    /// The file at `path` (case-insensitive), if any.
    pub fn file(&self, path: &str) -> Option<FakeFile> {
        lock(&self.state).files.get(&path.to_lowercase()).cloned()
    }

    /// Every stored file, by lowercased path.
    pub fn files(&self) -> BTreeMap<String, FakeFile> {
        lock(&self.state).files.clone()
    }

    /// The shared link of `path`, if one was created.
    pub fn link(&self, path: &str) -> Option<String> {
        lock(&self.state)
            .links
            .get(&path.to_lowercase())
            .and_then(|l| l["url"].as_str().map(str::to_string))
    }
}

// ------------------------------------------------------------ error answers

/// A route error (409) the way Dropbox writes it.
pub fn route_error(error: Value) -> Response {
    Response::json(
        409,
        &json!({"error_summary": format!("{}/..", summary(&error)), "error": error}),
    )
}

/// 429 with a JSON body and `Retry-After` (`reason` is `too_many_requests`
/// or `too_many_write_operations`).
pub fn rate_limited(reason: &str, retry_after: u64) -> Response {
    Response::json(
        429,
        &json!({"error_summary": format!("{reason}/.."),
                "error": {"reason": {".tag": reason}, "retry_after": retry_after}}),
    )
    .header("Retry-After", &retry_after.to_string())
}

/// 429 with the plain-text body Dropbox also sends.
pub fn rate_limited_text(retry_after: u64) -> Response {
    Response::text(429, "Too many requests").header("Retry-After", &retry_after.to_string())
}

/// 409 lock contention on a commit (`path/too_many_write_operations`).
pub fn write_contention() -> Response {
    route_error(json!({".tag": "path", "path": {".tag": "too_many_write_operations"}}))
}

/// 401 `expired_access_token`.
pub fn expired_token() -> Response {
    auth_error("expired_access_token")
}

fn auth_error(tag: &str) -> Response {
    Response::json(
        401,
        &json!({"error_summary": format!("{tag}/"), "error": {".tag": tag}}),
    )
}

fn bad_request(route: &str, msg: &str) -> Response {
    Response::text(
        400,
        &format!("Error in call to API function \"{route}\": {msg}"),
    )
}

fn summary(v: &Value) -> String {
    let mut tags = Vec::new();
    let mut cur = v;
    while let Some(t) = cur.get(".tag").and_then(Value::as_str) {
        tags.push(t.to_string());
        match cur.get(t).or_else(|| cur.get("reason")) {
            Some(n) if n.is_object() => cur = n,
            Some(Value::String(s)) => {
                tags.push(s.clone());
                break;
            }
            _ => break,
        }
    }
    tags.join("/")
}

// ------------------------------------------------------------ serving

#[derive(Clone, Copy, PartialEq)]
enum Host {
    Api,
    Content,
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    Rpc,
    Upload,
    Download,
}

fn route_style(route: &str) -> Option<Style> {
    Some(match route {
        "files/get_metadata"
        | "files/list_folder"
        | "files/list_folder/continue"
        | "sharing/create_shared_link_with_settings"
        | "sharing/list_shared_links" => Style::Rpc,
        "files/upload"
        | "files/upload_session/start"
        | "files/upload_session/append_v2"
        | "files/upload_session/finish" => Style::Upload,
        "files/download" => Style::Download,
        _ => return None,
    })
}

fn serve(state: &Shared, host: Host, r: &Request) -> Response {
    if r.path() == "/oauth2/token" {
        if host != Host::Api {
            return Response::text(404, "not found");
        }
        return oauth_token(state, r);
    }
    let Some(route) = r.path().strip_prefix("/2/") else {
        return Response::text(404, "not found");
    };
    let Some(style) = route_style(route) else {
        return Response::text(404, &format!("Unknown API function: \"{route}\""));
    };
    let want_host = if style == Style::Rpc {
        Host::Api
    } else {
        Host::Content
    };
    if host != want_host {
        return bad_request(
            route,
            "Request to the wrong host: RPC routes go to api.dropboxapi.com, content routes to content.dropboxapi.com",
        );
    }
    if r.method != "POST" && !(style == Style::Download && r.method == "GET") {
        return Response::text(405, "Method not allowed");
    }
    if let Err(resp) = check_token(state, route, r) {
        return resp;
    }
    let arg = match style {
        Style::Rpc => rpc_arg(route, r),
        Style::Upload => upload_arg(route, r),
        Style::Download => download_arg(route, r),
    };
    let arg = match arg {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let result = match route {
        "files/get_metadata" => get_metadata(state, &arg),
        "files/list_folder" => list_folder(state, &arg),
        "files/list_folder/continue" => list_continue(state, &arg),
        "sharing/create_shared_link_with_settings" => create_link(state, &arg),
        "sharing/list_shared_links" => list_links(state, &arg),
        "files/upload" => upload(state, &arg, r),
        "files/upload_session/start" => session_start(state, &arg, r),
        "files/upload_session/append_v2" => session_append(state, &arg, r),
        "files/upload_session/finish" => session_finish(state, &arg, r),
        "files/download" => download(state, &arg),
        _ => Err(Response::text(404, "not found")),
    };
    result.unwrap_or_else(|e| e)
}

type Answer = std::result::Result<Response, Response>;

fn check_token(state: &Shared, route: &str, r: &Request) -> std::result::Result<(), Response> {
    let Some(auth) = r.header("authorization") else {
        return Err(bad_request(
            route,
            "Must provide HTTP header \"Authorization\" or URL parameter \"authorization\".",
        ));
    };
    let Some(token) = auth.strip_prefix("Bearer ") else {
        return Err(bad_request(
            route,
            "Invalid authorization value in HTTP header \"Authorization\": expected \"Bearer <token>\".",
        ));
    };
    let s = lock(state);
    match s.tokens.get(token) {
        None => Err(auth_error("invalid_access_token")),
        Some(t) if t.expired || Instant::now() >= t.expires => Err(expired_token()),
        Some(_) => Ok(()),
    }
}

fn rpc_arg(route: &str, r: &Request) -> std::result::Result<Value, Response> {
    let ct = r.header("content-type").unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    if base != "application/json" {
        return Err(bad_request(
            route,
            &format!(
                "Bad HTTP \"Content-Type\" header: {ct:?}. Expecting one of \"application/json\", \"application/json; charset=utf-8\", \"text/plain; charset=dropbox-cors-hack\"."
            ),
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| {
        bad_request(
            route,
            &format!("request body: could not decode input as JSON: {e}"),
        )
    })
}

/// The argument of a content route: the header (which must be ASCII: the
/// JSON's non-ASCII written as `\u` escapes), or the `arg` URL parameter.
fn header_or_query_arg(route: &str, r: &Request) -> std::result::Result<Value, Response> {
    let raw = match (r.header("dropbox-api-arg"), r.query("arg")) {
        (Some(h), _) => {
            if h.bytes().any(|b| b >= 0x7f) {
                return Err(bad_request(
                    route,
                    "HTTP header \"Dropbox-API-Arg\": could not decode input as JSON: the header must be ASCII (write non-ASCII characters as \\u escapes)",
                ));
            }
            h.to_string()
        }
        (None, Some(q)) => q,
        (None, None) => {
            return Err(bad_request(
                route,
                "Must provide HTTP header \"Dropbox-API-Arg\" or URL parameter \"arg\".",
            ));
        }
    };
    serde_json::from_str(&raw).map_err(|e| {
        bad_request(
            route,
            &format!("HTTP header \"Dropbox-API-Arg\": could not decode input as JSON: {e}"),
        )
    })
}

fn upload_arg(route: &str, r: &Request) -> std::result::Result<Value, Response> {
    let ct = r.header("content-type").unwrap_or("");
    if ct != "application/octet-stream" && ct != "text/plain; charset=dropbox-cors-hack" {
        return Err(bad_request(
            route,
            &format!(
                "Bad HTTP \"Content-Type\" header: {ct:?}. Expecting one of \"application/octet-stream\", \"text/plain; charset=dropbox-cors-hack\"."
            ),
        ));
    }
    if r.chunked || r.header("content-length").is_none() {
        return Err(Response::text(
            411,
            "Length Required: send the body with a Content-Length",
        ));
    }
    if r.body.len() > MAX_REQUEST {
        return Err(route_error(json!({".tag": "payload_too_large"})));
    }
    header_or_query_arg(route, r)
}

fn download_arg(route: &str, r: &Request) -> std::result::Result<Value, Response> {
    if let Some(ct) = r.header("content-type").filter(|c| !c.is_empty()) {
        return Err(bad_request(
            route,
            &format!(
                "Bad HTTP \"Content-Type\" header: {ct:?}. Expecting one of \"\", \"text/plain; charset=dropbox-cors-hack\"."
            ),
        ));
    }
    if !r.body.is_empty() {
        return Err(bad_request(route, "a download takes no request body"));
    }
    header_or_query_arg(route, r)
}

/// The argument's fields, refusing any the route does not define (the
/// service does the same, which catches misspelled fields).
fn fields<'a>(
    route: &str,
    arg: &'a Value,
    allowed: &[&str],
) -> std::result::Result<&'a Map<String, Value>, Response> {
    let Some(map) = arg.as_object() else {
        return Err(bad_request(route, "request body: expected an object"));
    };
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad_request(
            route,
            &format!("request body: unknown field '{k}'"),
        ));
    }
    Ok(map)
}

fn str_field<'a>(
    route: &str,
    m: &'a Map<String, Value>,
    k: &str,
) -> std::result::Result<&'a str, Response> {
    m.get(k).and_then(Value::as_str).ok_or_else(|| {
        bad_request(
            route,
            &format!("request body: missing or invalid field '{k}'"),
        )
    })
}

fn bool_field(route: &str, m: &Map<String, Value>, k: &str) -> std::result::Result<bool, Response> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_request(
            route,
            &format!("request body: {k}: expected a boolean"),
        )),
    }
}

/// A Dropbox path: absolute, no empty, `.` or `..` component, no trailing
/// `/`. `Err` is the `malformed_path` tag.
fn valid_path(p: &str) -> bool {
    p.starts_with('/')
        && !p.ends_with('/')
        && p[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

// ------------------------------------------------------------ oauth

fn oauth_token(state: &Shared, r: &Request) -> Response {
    let oauth_error = |code: &str, desc: &str| {
        Response::json(400, &json!({"error": code, "error_description": desc}))
    };
    if r.method != "POST" {
        return Response::text(405, "Method not allowed");
    }
    if r.header("content-type") != Some("application/x-www-form-urlencoded") {
        return oauth_error(
            "invalid_request",
            "Content-Type must be application/x-www-form-urlencoded",
        );
    }
    if r.header("authorization").is_some() {
        return oauth_error(
            "invalid_request",
            "the fake takes client credentials as form fields only",
        );
    }
    let form: HashMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
    let get = |k: &str| form.get(k).map(String::as_str);
    if get("grant_type") != Some("refresh_token") {
        return oauth_error(
            "unsupported_grant_type",
            "the fake models grant_type=refresh_token only",
        );
    }
    let mut s = lock(state);
    let Some(app) = &s.app else {
        return oauth_error("invalid_client", "Invalid client_id or client_secret");
    };
    if get("client_id") != Some(app.key.as_str()) || get("client_secret") != app.secret.as_deref() {
        return oauth_error("invalid_client", "Invalid client_id or client_secret");
    }
    if get("refresh_token") != Some(app.refresh_token.as_str()) {
        return oauth_error("invalid_grant", "refresh token is invalid or revoked");
    }
    let n = s.id();
    let token = format!("sl.fake-{n}-{:016x}", pseudo_random(n));
    let life = s.token_life;
    let expired = s.issued_expired;
    s.tokens.insert(
        token.clone(),
        Token {
            expires: Instant::now() + life,
            expired,
        },
    );
    s.counters.refreshes += 1;
    Response::json(
        200,
        &json!({"access_token": token, "token_type": "bearer", "expires_in": life.as_secs(),
                "scope": "files.content.read files.content.write files.metadata.read sharing.read sharing.write"}),
    )
}

/// A value that looks random enough for ids, without a dependency.
fn pseudo_random(n: u64) -> u64 {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = Sha256::new();
    h.update(t.to_le_bytes());
    h.update(n.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

// ------------------------------------------------------------ files

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn file_meta(f: &FakeFile, tagged: bool) -> Value {
    let name = f.path_display.rsplit('/').next().unwrap_or("");
    let mut m = json!({
        "name": name, "id": f.id, "path_lower": f.path_display.to_lowercase(),
        "path_display": f.path_display, "rev": f.rev, "size": f.bytes.len(),
        "client_modified": rfc3339(f.server_modified), "server_modified": rfc3339(f.server_modified),
        "is_downloadable": true, "content_hash": content_hash(&f.bytes),
    });
    if tagged {
        m[".tag"] = json!("file");
    }
    m
}

fn folder_meta(display: &str) -> Value {
    let name = display.rsplit('/').next().unwrap_or("");
    json!({".tag": "folder", "name": name, "path_lower": display.to_lowercase(),
           "path_display": display, "id": format!("id:folder{}", display.len())})
}

/// The display path of the folder `lower`, if any file lies below it.
fn folder_display(s: &State, lower: &str) -> Option<String> {
    let prefix = format!("{lower}/");
    s.files
        .iter()
        .find(|(k, _)| k.starts_with(&prefix))
        .map(|(_, f)| {
            let depth = lower.matches('/').count();
            f.path_display
                .split('/')
                .take(depth + 1)
                .collect::<Vec<_>>()
                .join("/")
        })
}

fn write_file(s: &mut State, path: &str, bytes: Vec<u8>) -> FakeFile {
    let lower = path.to_lowercase();
    let n = s.id();
    let writes = s.files.get(&lower).map_or(0, |f| f.writes);
    let f = FakeFile {
        path_display: path.to_string(),
        bytes,
        id: format!("id:fake{n:08}"),
        rev: format!("{n:012x}"),
        server_modified: SystemTime::now(),
        writes: writes + 1,
    };
    s.files.insert(lower, f.clone());
    f
}

/// `CommitInfo`, read strictly.
struct Commit {
    path: String,
    overwrite: bool,
    autorename: bool,
    strict_conflict: bool,
}

const COMMIT_FIELDS: &[&str] = &[
    "path",
    "mode",
    "autorename",
    "client_modified",
    "mute",
    "property_groups",
    "strict_conflict",
];

fn commit_of(route: &str, m: &Map<String, Value>) -> std::result::Result<Commit, Response> {
    let path = str_field(route, m, "path")?.to_string();
    let mode = match m.get("mode") {
        None => "add".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v
            .get(".tag")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    };
    let overwrite = match mode.as_str() {
        "add" => false,
        "overwrite" => true,
        other => {
            return Err(bad_request(
                route,
                &format!("commit mode {other:?}: the fake models add and overwrite"),
            ));
        }
    };
    Ok(Commit {
        path,
        overwrite,
        autorename: bool_field(route, m, "autorename")?,
        strict_conflict: bool_field(route, m, "strict_conflict")?,
    })
}

/// Commits `data` at the commit's path with Dropbox's write rules: an
/// identical file is a success that writes nothing, a different one a
/// conflict (or a `name (2)` copy with autorename). `Err` is the
/// `WriteError` value.
fn commit(s: &mut State, c: &Commit, data: Vec<u8>) -> std::result::Result<Value, Value> {
    if !valid_path(&c.path) {
        return Err(json!({".tag": "malformed_path"}));
    }
    let conflict = |what: &str| json!({".tag": "conflict", "conflict": {".tag": what}});
    let lower = c.path.to_lowercase();
    let mut path = c.path.clone();
    // A file where a parent folder should be.
    let comps: Vec<&str> = lower.split('/').skip(1).collect();
    let mut parent = String::new();
    for comp in &comps[..comps.len().saturating_sub(1)] {
        parent.push('/');
        parent.push_str(comp);
        if s.files.contains_key(&parent) {
            return Err(conflict("file"));
        }
    }
    if folder_display(s, &lower).is_some() {
        return Err(conflict("folder"));
    }
    if let Some(f) = s.files.get(&lower) {
        if f.bytes == data && !c.strict_conflict {
            return Ok(file_meta(f, false));
        }
        if !c.overwrite {
            if !c.autorename {
                return Err(conflict("file"));
            }
            let (stem, ext) = match c.path.rsplit_once('.') {
                Some((a, b)) if !a.ends_with('/') => (a.to_string(), format!(".{b}")),
                _ => (c.path.clone(), String::new()),
            };
            let mut n = 2;
            loop {
                path = format!("{stem} ({n}){ext}");
                if !s.files.contains_key(&path.to_lowercase()) {
                    break;
                }
                n += 1;
            }
        }
    }
    Ok(file_meta(&write_file(s, &path, data), false))
}

/// The body as the server received it: damaged once when asked to be.
fn received(s: &mut State, body: &[u8]) -> Vec<u8> {
    let mut data = body.to_vec();
    if s.corrupt_next && !data.is_empty() {
        s.corrupt_next = false;
        let mid = data.len() / 2;
        data[mid] ^= 0x55;
    }
    data
}

fn hash_matches(m: &Map<String, Value>, data: &[u8]) -> bool {
    match m.get("content_hash").and_then(Value::as_str) {
        Some(h) => h == content_hash(data),
        None => true,
    }
}

fn upload(state: &Shared, arg: &Value, r: &Request) -> Answer {
    let route = "files/upload";
    let mut allowed = COMMIT_FIELDS.to_vec();
    allowed.push("content_hash");
    let m = fields(route, arg, &allowed)?;
    let c = commit_of(route, m)?;
    let mut s = lock(state);
    let data = received(&mut s, &r.body);
    if !hash_matches(m, &data) {
        return Err(route_error(json!({".tag": "content_hash_mismatch"})));
    }
    s.counters.uploads += 1;
    match commit(&mut s, &c, data) {
        Ok(meta) => Ok(Response::json(200, &meta)),
        Err(reason) => {
            let id = format!("pid_upload_session:fake{}", s.id());
            Err(route_error(
                json!({".tag": "path", "reason": reason, "upload_session_id": id}),
            ))
        }
    }
}

/// A session request's body must be whole 4 MiB blocks unless it closes.
fn block_rule(close: bool, data: &[u8]) -> std::result::Result<(), Response> {
    if !close && !data.len().is_multiple_of(BLOCK) {
        return Err(route_error(
            json!({".tag": "concurrent_session_invalid_data_size"}),
        ));
    }
    Ok(())
}

fn session_start(state: &Shared, arg: &Value, r: &Request) -> Answer {
    let route = "files/upload_session/start";
    let m = fields(route, arg, &["close", "session_type", "content_hash"])?;
    match m.get("session_type") {
        None | Some(Value::Null) => {}
        Some(t) if t == "sequential" || t.get(".tag") == Some(&json!("sequential")) => {}
        Some(_) => {
            return Err(bad_request(
                route,
                "the fake models sequential sessions only",
            ));
        }
    }
    let close = bool_field(route, m, "close")?;
    let mut s = lock(state);
    let data = received(&mut s, &r.body);
    if !hash_matches(m, &data) {
        return Err(route_error(json!({".tag": "content_hash_mismatch"})));
    }
    block_rule(close, &data)?;
    let id = format!("pid_upload_session:fake{:08}", s.id());
    s.sessions.insert(
        id.clone(),
        Session {
            data,
            closed: close,
        },
    );
    s.counters.sessions_started += 1;
    Ok(Response::json(200, &json!({"session_id": id})))
}

/// The session of a cursor, checked: `Err` is the `UploadSessionLookupError`.
fn cursor_of(route: &str, m: &Map<String, Value>) -> std::result::Result<(String, u64), Response> {
    let c = m
        .get("cursor")
        .and_then(Value::as_object)
        .ok_or_else(|| bad_request(route, "request body: missing field 'cursor'"))?;
    if let Some(k) = c.keys().find(|k| *k != "session_id" && *k != "offset") {
        return Err(bad_request(
            route,
            &format!("request body: cursor: unknown field '{k}'"),
        ));
    }
    let id = str_field(route, c, "session_id")?.to_string();
    let offset = c.get("offset").and_then(Value::as_u64).ok_or_else(|| {
        bad_request(
            route,
            "request body: cursor: missing or invalid field 'offset'",
        )
    })?;
    Ok((id, offset))
}

fn lookup(s: &State, id: &str, offset: u64, body_len: usize) -> std::result::Result<(), Value> {
    let Some(sess) = s.sessions.get(id) else {
        return Err(json!({".tag": "not_found"}));
    };
    let held = sess.data.len() as u64;
    if offset != held {
        return Err(json!({".tag": "incorrect_offset", "correct_offset": held}));
    }
    if sess.closed && body_len > 0 {
        return Err(json!({".tag": "closed"}));
    }
    Ok(())
}

fn session_append(state: &Shared, arg: &Value, r: &Request) -> Answer {
    let route = "files/upload_session/append_v2";
    let m = fields(route, arg, &["cursor", "close", "content_hash"])?;
    let (id, offset) = cursor_of(route, m)?;
    let close = bool_field(route, m, "close")?;
    let mut s = lock(state);
    lookup(&s, &id, offset, r.body.len()).map_err(route_error)?;
    if s.sessions.get(&id).is_some_and(|x| x.closed) {
        return Err(route_error(json!({".tag": "closed"})));
    }
    let data = received(&mut s, &r.body);
    if !hash_matches(m, &data) {
        return Err(route_error(json!({".tag": "content_hash_mismatch"})));
    }
    block_rule(close, &data)?;
    if let Some(sess) = s.sessions.get_mut(&id) {
        sess.data.extend_from_slice(&data);
        sess.closed = close;
    }
    Ok(Response::json(200, &Value::Null))
}

fn session_finish(state: &Shared, arg: &Value, r: &Request) -> Answer {
    let route = "files/upload_session/finish";
    let m = fields(route, arg, &["cursor", "commit", "content_hash"])?;
    let (id, offset) = cursor_of(route, m)?;
    let commit_arg = m
        .get("commit")
        .ok_or_else(|| bad_request(route, "request body: missing field 'commit'"))?;
    let c = commit_of(route, fields(route, commit_arg, COMMIT_FIELDS)?)?;
    let mut s = lock(state);
    if let Err(e) = lookup(&s, &id, offset, r.body.len()) {
        return Err(route_error(
            json!({".tag": "lookup_failed", "lookup_failed": e}),
        ));
    }
    let data = received(&mut s, &r.body);
    if !hash_matches(m, &data) {
        return Err(route_error(json!({".tag": "content_hash_mismatch"})));
    }
    let mut whole = s
        .sessions
        .get(&id)
        .map(|x| x.data.clone())
        .unwrap_or_default();
    whole.extend_from_slice(&data);
    match commit(&mut s, &c, whole.clone()) {
        Ok(meta) => {
            s.sessions.remove(&id);
            Ok(Response::json(200, &meta))
        }
        Err(reason) => {
            // The data stays in the session, as with the service, so a
            // finish with an empty body may commit it elsewhere.
            if let Some(sess) = s.sessions.get_mut(&id) {
                sess.data = whole;
            }
            Err(route_error(json!({".tag": "path", "path": reason})))
        }
    }
}

fn download(state: &Shared, arg: &Value) -> Answer {
    let route = "files/download";
    let m = fields(route, arg, &["path", "rev"])?;
    let path = str_field(route, m, "path")?;
    let s = lock(state);
    let lower = path.to_lowercase();
    let Some(f) = s.files.get(&lower) else {
        let tag = if folder_display(&s, &lower).is_some() {
            "not_file"
        } else {
            "not_found"
        };
        return Err(route_error(json!({".tag": "path", "path": {".tag": tag}})));
    };
    let meta = escape_header(&file_meta(f, false).to_string());
    Ok(Response::new(200)
        .header("Content-Type", "application/octet-stream")
        .header("Dropbox-API-Result", &meta)
        .body(f.bytes.clone()))
}

/// `Dropbox-API-Result` is header-safe JSON too: non-ASCII as `\u` escapes.
fn escape_header(json: &str) -> String {
    let mut out = String::new();
    let mut buf = [0u16; 2];
    for c in json.chars() {
        if (c as u32) < 0x7f {
            out.push(c);
        } else {
            for u in c.encode_utf16(&mut buf) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

fn get_metadata(state: &Shared, arg: &Value) -> Answer {
    let route = "files/get_metadata";
    let m = fields(
        route,
        arg,
        &[
            "path",
            "include_media_info",
            "include_deleted",
            "include_has_explicit_shared_members",
            "include_property_groups",
        ],
    )?;
    let path = str_field(route, m, "path")?;
    if !valid_path(path) {
        return Err(route_error(
            json!({".tag": "path", "path": {".tag": "malformed_path"}}),
        ));
    }
    let s = lock(state);
    let lower = path.to_lowercase();
    if let Some(f) = s.files.get(&lower) {
        return Ok(Response::json(200, &file_meta(f, true)));
    }
    if let Some(d) = folder_display(&s, &lower) {
        return Ok(Response::json(200, &folder_meta(&d)));
    }
    Err(route_error(
        json!({".tag": "path", "path": {".tag": "not_found"}}),
    ))
}

fn list_folder(state: &Shared, arg: &Value) -> Answer {
    let route = "files/list_folder";
    let m = fields(
        route,
        arg,
        &[
            "path",
            "recursive",
            "include_media_info",
            "include_deleted",
            "include_has_explicit_shared_members",
            "include_mounted_folders",
            "limit",
            "shared_link",
            "include_property_groups",
            "include_non_downloadable_files",
        ],
    )?;
    let path = str_field(route, m, "path")?;
    let recursive = bool_field(route, m, "recursive")?;
    let limit = match m.get("limit") {
        None | Some(Value::Null) => usize::MAX,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=2000) => n as usize,
            _ => return Err(bad_request(route, "request body: limit: must be 1 to 2000")),
        },
    };
    let mut s = lock(state);
    let lower = path.to_lowercase();
    if !path.is_empty() {
        if !valid_path(path) {
            return Err(route_error(
                json!({".tag": "path", "path": {".tag": "malformed_path"}}),
            ));
        }
        if s.files.contains_key(&lower) {
            return Err(route_error(
                json!({".tag": "path", "path": {".tag": "not_folder"}}),
            ));
        }
        if folder_display(&s, &lower).is_none() {
            return Err(route_error(
                json!({".tag": "path", "path": {".tag": "not_found"}}),
            ));
        }
    }
    let prefix = format!("{lower}/");
    let mut entries = Vec::new();
    let mut folders = std::collections::BTreeSet::new();
    for (k, f) in &s.files {
        let Some(rest) = k.strip_prefix(&prefix) else {
            continue;
        };
        if recursive || !rest.contains('/') {
            entries.push(file_meta(f, true));
        }
        // The folders between the listed one and the file.
        let comps: Vec<&str> = f.path_display.split('/').collect();
        let base = lower.matches('/').count() + 1;
        let deepest = if recursive {
            comps.len() - 1
        } else {
            (base + 1).min(comps.len() - 1)
        };
        for end in (base + 1)..=deepest {
            folders.insert(comps[..end].join("/"));
        }
    }
    for d in folders {
        entries.push(folder_meta(&d));
    }
    let page = limit.min(s.page_size);
    let rest = entries.split_off(page.min(entries.len()));
    Ok(Response::json(200, &page_answer(&mut s, entries, rest)))
}

fn page_answer(s: &mut State, page: Vec<Value>, rest: Vec<Value>) -> Value {
    let cursor = format!("AAfake-cursor-{}", s.id());
    let has_more = !rest.is_empty();
    s.cursors.insert(cursor.clone(), rest);
    json!({"entries": page, "cursor": cursor, "has_more": has_more})
}

fn list_continue(state: &Shared, arg: &Value) -> Answer {
    let route = "files/list_folder/continue";
    let m = fields(route, arg, &["cursor"])?;
    let cursor = str_field(route, m, "cursor")?;
    let mut s = lock(state);
    let Some(mut remaining) = s.cursors.remove(cursor) else {
        return Err(route_error(json!({".tag": "reset"})));
    };
    let size = s.page_size;
    let rest = remaining.split_off(size.min(remaining.len()));
    Ok(Response::json(200, &page_answer(&mut s, remaining, rest)))
}

fn create_link(state: &Shared, arg: &Value) -> Answer {
    let route = "sharing/create_shared_link_with_settings";
    let m = fields(route, arg, &["path", "settings"])?;
    let path = str_field(route, m, "path")?;
    let has_settings = m.get("settings").is_some_and(|v| !v.is_null());
    let mut s = lock(state);
    let lower = path.to_lowercase();
    if let Some(link) = s.links.get(&lower) {
        // With settings the existing link may not satisfy them, and the
        // service leaves the metadata out.
        let exists = if has_settings {
            json!({".tag": "shared_link_already_exists"})
        } else {
            json!({".tag": "shared_link_already_exists",
                   "shared_link_already_exists": {".tag": "metadata", "metadata": link}})
        };
        return Err(route_error(exists));
    }
    let Some(f) = s.files.get(&lower).cloned() else {
        return Err(route_error(
            json!({".tag": "path", "path": {".tag": "not_found"}}),
        ));
    };
    let n = s.id();
    let name = f.path_display.rsplit('/').next().unwrap_or("");
    let mut link = file_meta(&f, true);
    link["url"] = json!(format!(
        "https://www.dropbox.com/scl/fi/fake{n:06}/{}?rlkey={:012x}&dl=0",
        form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>(),
        pseudo_random(n) & 0xffff_ffff_ffff
    ));
    link["link_permissions"] =
        json!({"resolved_visibility": {".tag": "public"}, "can_revoke": true});
    s.links.insert(lower, link.clone());
    s.counters.links_created += 1;
    Ok(Response::json(200, &link))
}

fn list_links(state: &Shared, arg: &Value) -> Answer {
    let route = "sharing/list_shared_links";
    let m = fields(route, arg, &["path", "cursor", "direct_only"])?;
    let s = lock(state);
    let links: Vec<Value> = match m.get("path").and_then(Value::as_str) {
        Some(p) => s
            .links
            .get(&p.to_lowercase())
            .cloned()
            .into_iter()
            .collect(),
        None => s.links.values().cloned().collect(),
    };
    Ok(Response::json(
        200,
        &json!({"links": links, "has_more": false}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_matches_the_published_vectors() {
        assert_eq!(
            content_hash(b"hello\n"),
            "ecb65bb98f9d905b70458986c39fcbad7715e5f2fcc3b1f07767d7c83e2438cc"
        );
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            content_hash(&vec![0u8; 4_194_305]),
            "14a4d47f23a30177885d9820122f17d2d3a55fe63f7f5c27b95f689e0b2accd6"
        );
    }

    #[test]
    fn summaries_follow_the_tag_chain() {
        let e = json!({".tag": "path", "path": {".tag": "conflict", "conflict": {".tag": "file"}}});
        assert_eq!(summary(&e), "path/conflict/file");
        assert_eq!(
            summary(&json!({".tag": "path", "path": "not_found"})),
            "path/not_found"
        );
    }
}
