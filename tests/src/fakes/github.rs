//! A fake of GitHub's artifact services, on three loopback servers as the
//! real ones are three hosts:
//!
//! * [`GithubFake::results`]: the results service's Twirp
//!   `github.actions.results.api.v1.ArtifactService` (JSON), see
//!   [`twirp`];
//! * [`GithubFake::blob`]: the Azure block blob store behind the signed
//!   URLs it hands out, see [`blob`];
//! * [`GithubFake::api`]: the REST API's artifact routes, see [`rest`].
//!
//! It holds one repository with one workflow run (and any runs seeded),
//! and rejects what GitHub and Azure reject: a duplicate name in a run,
//! a wrong size or sha256 at finalize, an expired or foreign token, a
//! request without `Content-Length`, unequal or malformed block ids, a
//! block list naming blocks never staged, a signed URL that is expired,
//! tampered with or used for what it does not allow, credentials sent to
//! the blob host, REST calls without a `User-Agent`. As on GitHub, an
//! artifact that was created but never finalized is invisible (not listed,
//! not deletable) and keeps its name reserved for the rest of the run.

mod blob;
mod rest;
mod twirp;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::http_fake::{HttpFake, Response};

/// The repository the fake serves.
pub const REPO: &str = "octo-org/octo-repo";
/// The REST token it accepts.
pub const REST_TOKEN: &str = "ghp_FakeRestToken0123456789abcdefABCDEF";
/// The service version its signed URLs name (`sv=`).
pub const SERVICE_VERSION: &str = "2024-11-04";

/// One artifact record.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub id: u64,
    pub run_backend_id: String,
    pub job_backend_id: String,
    /// The public id of its workflow run.
    pub run_id: u64,
    pub name: String,
    pub version: i64,
    pub mime_type: Option<String>,
    pub expires_at: Option<String>,
    pub finalized: bool,
    /// As given at finalize.
    pub size: u64,
    /// `sha256:<hex>`, as given at finalize.
    pub digest: Option<String>,
    pub created_at: SystemTime,
    /// Past its retention: listed as expired, not downloadable.
    pub expired: bool,
    /// Path of its blob on the blob host.
    pub blob_path: String,
}

/// One blob of the store.
#[derive(Debug, Default, Clone)]
pub struct Blob {
    /// Staged, not yet committed blocks by id.
    pub uncommitted: BTreeMap<String, Vec<u8>>,
    /// The committed blocks, in order.
    pub committed_blocks: Vec<(String, Vec<u8>)>,
    /// The committed content.
    pub data: Option<Vec<u8>>,
    pub content_type: Option<String>,
    /// Length of the (base64) block ids this blob takes.
    pub block_id_len: Option<usize>,
}

/// The fake's whole state (tests read it through [`GithubFake`]).
pub struct State {
    pub(crate) blob_url: String,
    secret: [u8; 32],
    pub(crate) runtime_token: String,
    pub(crate) runtime_expired: bool,
    pub(crate) run_backend_id: String,
    pub(crate) job_backend_id: String,
    pub(crate) run_id: u64,
    next_id: u64,
    pub(crate) artifacts: Vec<Artifact>,
    pub(crate) blobs: BTreeMap<String, Blob>,
    /// How long upload and download URLs stay valid.
    pub(crate) upload_ttl: Duration,
    pub(crate) download_ttl: Duration,
    /// The next this many upload URLs are expired when handed out.
    pub(crate) expired_uploads: u32,
}

impl State {
    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn signature(&self, path: &str, sp: &str, se: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        for part in [path, sp, se] {
            h.update(b"\n");
            h.update(part.as_bytes());
        }
        STANDARD.encode(h.finalize())
    }

    /// A SAS URL for `path` allowing `sp` (`cw` upload, `r` read) until
    /// `expiry` from now (in the past when `expired`).
    pub(crate) fn signed_url(&self, path: &str, sp: &str, ttl: Duration, expired: bool) -> String {
        let at = if expired {
            SystemTime::now() - Duration::from_secs(60)
        } else {
            SystemTime::now() + ttl
        };
        let se = humantime::format_rfc3339_seconds(at).to_string();
        let sig = self.signature(path, sp, &se);
        format!(
            "{}{path}?sv={SERVICE_VERSION}&sr=b&sp={sp}&se={}&sig={}",
            self.blob_url,
            query_escape(&se),
            query_escape(&sig)
        )
    }

    /// Checks a request's SAS against its path: `Err` is Azure's answer.
    pub(crate) fn check_sas(
        &self,
        path: &str,
        sp: Option<String>,
        se: Option<String>,
        sig: Option<String>,
        sv: Option<String>,
    ) -> std::result::Result<String, Response> {
        let (Some(sp), Some(se), Some(sig), Some(_)) = (sp, se, sig, sv) else {
            return Err(blob::azure_error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
            ));
        };
        if sig != self.signature(path, &sp, &se) {
            return Err(blob::azure_error(
                403,
                "AuthenticationFailed",
                "Signature did not match.",
            ));
        }
        let expiry = humantime::parse_rfc3339(&se).map_err(|_| {
            blob::azure_error(
                403,
                "AuthenticationFailed",
                "Signature fields not well formed.",
            )
        })?;
        if expiry < SystemTime::now() {
            return Err(blob::azure_error(
                403,
                "AuthenticationFailed",
                "Signature not valid in the specified time frame.",
            ));
        }
        Ok(sp)
    }

    pub(crate) fn find_mut(&mut self, run: &str, name: &str) -> Option<&mut Artifact> {
        self.artifacts
            .iter_mut()
            .find(|a| a.run_backend_id == run && a.name == name)
    }
}

/// `%XX` for every byte a query value cannot hold as it is.
pub fn query_escape(s: &str) -> String {
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

/// What a test may want to know about an artifact.
#[derive(Debug, Clone)]
pub struct ArtifactView {
    pub id: u64,
    pub name: String,
    pub finalized: bool,
    pub size: u64,
    pub digest: Option<String>,
    pub version: i64,
    pub mime_type: Option<String>,
    pub expires_at: Option<String>,
    /// The blob's committed bytes.
    pub data: Option<Vec<u8>>,
    pub content_type: Option<String>,
}

/// How [`GithubFake::seed`] makes an artifact.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    /// Stored as `Content-Type` (`application/zip` for a classic one).
    pub content_type: String,
    pub expired: bool,
    /// Another workflow run (public id) than the fake's own.
    pub run_id: Option<u64>,
    /// Report this digest instead of the true one.
    pub digest: Option<String>,
}

impl Seed {
    /// A raw (v7) bundle: `application/gzip`.
    pub fn gzip() -> Seed {
        Seed {
            content_type: "application/gzip".into(),
            ..Seed::default()
        }
    }

    /// A classic artifact: a zip.
    pub fn zip() -> Seed {
        Seed {
            content_type: "application/zip".into(),
            ..Seed::default()
        }
    }

    pub fn expired(mut self) -> Seed {
        self.expired = true;
        self
    }

    pub fn in_run(mut self, run_id: u64) -> Seed {
        self.run_id = Some(run_id);
        self
    }

    pub fn digest(mut self, digest: &str) -> Seed {
        self.digest = Some(digest.to_string());
        self
    }
}

/// The running fake; its servers stop when it is dropped.
pub struct GithubFake {
    pub results: HttpFake,
    pub blob: HttpFake,
    pub api: HttpFake,
    state: Arc<Mutex<State>>,
}

fn uuid_like(n: u64) -> String {
    let h = Sha256::digest(n.to_le_bytes());
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

impl GithubFake {
    pub fn start() -> Result<Self> {
        let seed = fastrand::u64(..);
        let run = uuid_like(seed);
        let job = uuid_like(seed ^ 1);
        let mut secret = [0u8; 32];
        secret.iter_mut().for_each(|b| *b = fastrand::u8(..));
        let claims = serde_json::json!({
            "scp": format!("Actions.ExampleScope Actions.Results:{run}:{job}"),
            "iss": "https://token.actions.githubusercontent.example",
            "exp": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH)?.as_secs() + 6 * 3600,
        });
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(Sha256::digest(secret))
        );
        let state = Arc::new(Mutex::new(State {
            blob_url: String::new(),
            secret,
            runtime_token: token,
            runtime_expired: false,
            run_backend_id: run,
            job_backend_id: job,
            run_id: 1_000_000 + (seed % 1_000_000),
            next_id: 4_000,
            artifacts: Vec::new(),
            blobs: BTreeMap::new(),
            upload_ttl: Duration::from_secs(3600),
            download_ttl: Duration::from_secs(60),
            expired_uploads: 0,
        }));
        let s = state.clone();
        let blob = HttpFake::start(move |r| blob::handle(&s, r))?;
        lock(&state).blob_url = blob.url();
        let s = state.clone();
        let results = HttpFake::start(move |r| twirp::handle(&s, r))?;
        let s = state.clone();
        let api = HttpFake::start(move |r| rest::handle(&s, r))?;
        Ok(GithubFake {
            results,
            blob,
            api,
            state,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// `ACTIONS_RUNTIME_TOKEN` of the fake's job.
    pub fn runtime_token(&self) -> String {
        self.state().runtime_token.clone()
    }

    /// `ACTIONS_RESULTS_URL` (with a path, as the runner gives it).
    pub fn results_url(&self) -> String {
        format!("{}/results/", self.results.url())
    }

    pub fn api_url(&self) -> String {
        self.api.url()
    }

    /// The public id of the fake's workflow run.
    pub fn run_id(&self) -> u64 {
        self.state().run_id
    }

    /// The job's environment inside Actions.
    pub fn actions_env(&self) -> Vec<(String, String)> {
        vec![
            ("ACTIONS_RUNTIME_TOKEN".into(), self.runtime_token()),
            ("ACTIONS_RESULTS_URL".into(), self.results_url()),
            ("GITHUB_REPOSITORY".into(), REPO.into()),
            ("GITHUB_RUN_ID".into(), self.run_id().to_string()),
        ]
    }

    /// The environment of a person pulling with a token.
    pub fn rest_env(&self) -> Vec<(String, String)> {
        vec![
            ("GITHUB_TOKEN".into(), REST_TOKEN.into()),
            ("GITHUB_REPOSITORY".into(), REPO.into()),
            ("GITHUB_API_URL".into(), self.api_url()),
        ]
    }

    /// Every artifact record, finalized or not, in creation order.
    pub fn artifacts(&self) -> Vec<ArtifactView> {
        let st = self.state();
        st.artifacts
            .iter()
            .map(|a| {
                let blob = st.blobs.get(&a.blob_path);
                ArtifactView {
                    id: a.id,
                    name: a.name.clone(),
                    finalized: a.finalized,
                    size: a.size,
                    digest: a.digest.clone(),
                    version: a.version,
                    mime_type: a.mime_type.clone(),
                    expires_at: a.expires_at.clone(),
                    data: blob.and_then(|b| b.data.clone()),
                    content_type: blob.and_then(|b| b.content_type.clone()),
                }
            })
            .collect()
    }

    /// The finalized artifacts only (what GitHub shows).
    pub fn finalized(&self) -> Vec<ArtifactView> {
        self.artifacts()
            .into_iter()
            .filter(|a| a.finalized)
            .collect()
    }

    /// A finalized artifact holding `data`, as another upload made it.
    pub fn seed(&self, name: &str, data: &[u8], how: Seed) -> u64 {
        let mut st = self.state();
        let id = st.next_id();
        let path = format!("/actions-results/seeded/{id}");
        st.blobs.insert(
            path.clone(),
            Blob {
                data: Some(data.to_vec()),
                content_type: Some(how.content_type.clone()),
                ..Blob::default()
            },
        );
        let digest = how
            .digest
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(data))));
        let run_id = how.run_id.unwrap_or(st.run_id);
        let (run_b, job_b) = if run_id == st.run_id {
            (st.run_backend_id.clone(), st.job_backend_id.clone())
        } else {
            (uuid_like(run_id), uuid_like(run_id ^ 1))
        };
        st.artifacts.push(Artifact {
            id,
            run_backend_id: run_b,
            job_backend_id: job_b,
            run_id,
            name: name.to_string(),
            version: 7,
            mime_type: Some(how.content_type),
            expires_at: None,
            finalized: true,
            size: data.len() as u64,
            digest: Some(digest),
            created_at: SystemTime::now(),
            expired: how.expired,
            blob_path: path,
        });
        id
    }

    /// An artifact of this run created and never finalized (an upload that
    /// died): its name stays taken and it is never listed.
    pub fn reserve(&self, name: &str) {
        let mut st = self.state();
        let id = st.next_id();
        let (run, job, run_id) = (
            st.run_backend_id.clone(),
            st.job_backend_id.clone(),
            st.run_id,
        );
        st.artifacts.push(Artifact {
            id,
            run_backend_id: run,
            job_backend_id: job,
            run_id,
            name: name.to_string(),
            version: 7,
            mime_type: None,
            expires_at: None,
            finalized: false,
            size: 0,
            digest: None,
            created_at: SystemTime::now(),
            expired: false,
            blob_path: format!("/actions-results/reserved/{id}"),
        });
    }

    /// From now on the runtime token is refused as expired.
    pub fn expire_runtime_token(&self) {
        self.state().runtime_expired = true;
    }

    /// The next `n` upload URLs handed out are already expired.
    pub fn expire_upload_urls(&self, n: u32) {
        self.state().expired_uploads = n;
    }
}

/// The body of a classic artifact: a zip holding `data` as `name`
/// (deflated, as `upload-artifact` makes them).
pub fn zip_holding(name: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    // Writing to memory cannot fail but for a bug in the zip crate.
    if w.start_file(name, opts).is_err() || w.write_all(data).is_err() {
        return Vec::new();
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}

pub(crate) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names GitHub refuses.
pub(crate) fn bad_name(name: &str) -> Option<char> {
    name.chars().find(|c| {
        matches!(
            c,
            '"' | ':' | '<' | '>' | '|' | '*' | '?' | '\r' | '\n' | '\\' | '/'
        )
    })
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
