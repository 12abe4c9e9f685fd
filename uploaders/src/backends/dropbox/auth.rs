//! Dropbox credentials: a plain access token, or the refresh-token flow
//! (the documented default: access tokens live 4 hours, longer than a
//! trip may last).
//!
//! With a refresh token the access token is fetched from `/oauth2/token`
//! before the first call, renewed before it expires (an upload session can
//! outlive it) and once more when a call answers `expired_access_token`.
//! Secret values live only in [`Secret`], whose `Debug` prints nothing, and
//! [`Auth::scrub`] removes them from anything a server sends back.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::CONTENT_TYPE;
use serde::Deserialize;

use super::NAME;
use crate::backends::http::{self, Timeouts};
use crate::backends::{BackendError, ErrorKind};
use crate::retry::RetryPolicy;

/// The environment variables the backend reads.
pub const TOKEN_VAR: &str = "DROPBOX_TOKEN";
pub const REFRESH_TOKEN_VAR: &str = "DROPBOX_REFRESH_TOKEN";
pub const APP_KEY_VAR: &str = "DROPBOX_APP_KEY";
pub const APP_SECRET_VAR: &str = "DROPBOX_APP_SECRET";

/// Renew this long before the access token expires (at most half its life).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How the backend authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropboxCredentials {
    /// A short-lived access token (`DROPBOX_TOKEN`): for jobs under 4 hours.
    Token(Secret),
    /// A refresh token and the app it belongs to; `app_secret` is absent for
    /// PKCE apps.
    Refresh {
        refresh_token: Secret,
        app_key: String,
        app_secret: Option<Secret>,
    },
}

impl DropboxCredentials {
    /// From the environment: the refresh setup when `DROPBOX_REFRESH_TOKEN`
    /// is set (it wins over a plain token, which would expire), else
    /// `DROPBOX_TOKEN`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, BackendError> {
        let get = |k: &str| {
            env(k)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(rt) = get(REFRESH_TOKEN_VAR) {
            let Some(app_key) = get(APP_KEY_VAR) else {
                return Err(BackendError::new(
                    NAME,
                    ErrorKind::Config,
                    format!("{REFRESH_TOKEN_VAR} is set but {APP_KEY_VAR} is not"),
                    format!(
                        "set {APP_KEY_VAR} (and {APP_SECRET_VAR} unless the app uses PKCE) to the app the refresh token was issued to"
                    ),
                ));
            };
            return Ok(DropboxCredentials::Refresh {
                refresh_token: Secret::new(rt),
                app_key,
                app_secret: get(APP_SECRET_VAR).map(Secret::new),
            });
        }
        if let Some(t) = get(TOKEN_VAR) {
            return Ok(DropboxCredentials::Token(Secret::new(t)));
        }
        Err(BackendError::new(
            NAME,
            ErrorKind::Config,
            "no Dropbox credentials in the environment",
            format!(
                "set {REFRESH_TOKEN_VAR}, {APP_KEY_VAR} and {APP_SECRET_VAR} (or {TOKEN_VAR} for jobs shorter than 4 hours); see docs/backends/dropbox.md"
            ),
        ))
    }

    fn secrets(&self) -> Vec<&str> {
        match self {
            DropboxCredentials::Token(t) => vec![t.expose()],
            DropboxCredentials::Refresh {
                refresh_token,
                app_secret,
                ..
            } => std::iter::once(refresh_token.expose())
                .chain(app_secret.as_ref().map(Secret::expose))
                .collect(),
        }
    }
}

struct Access {
    token: Secret,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OauthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The access token in use, and how to get a new one.
pub(super) struct Auth {
    creds: DropboxCredentials,
    token_url: String,
    client: Client,
    timeouts: Timeouts,
    retry: RetryPolicy,
    access: Mutex<Option<Access>>,
    refreshes: AtomicU32,
}

impl Auth {
    pub fn new(
        creds: DropboxCredentials,
        api_url: &str,
        client: Client,
        timeouts: Timeouts,
        retry: RetryPolicy,
    ) -> Self {
        Auth {
            creds,
            token_url: format!("{}/oauth2/token", api_url.trim_end_matches('/')),
            client,
            timeouts,
            retry,
            access: Mutex::new(None),
            refreshes: AtomicU32::new(0),
        }
    }

    pub fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = retry;
    }

    /// Whether a refresh can fix an expired token.
    pub fn refreshable(&self) -> bool {
        matches!(self.creds, DropboxCredentials::Refresh { .. })
    }

    /// How many times a new access token was fetched.
    pub fn refreshes(&self) -> u32 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// The token to send now, fetched or renewed first when needed.
    pub fn token(&self) -> Result<Secret, BackendError> {
        if let DropboxCredentials::Token(t) = &self.creds {
            return Ok(t.clone());
        }
        let mut access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        match &*access {
            Some(a) if Instant::now() < a.renew_at => Ok(a.token.clone()),
            _ => self.fetch(&mut access),
        }
    }

    /// A call answered `expired_access_token` for `stale`: fetch a new
    /// token unless another call already did.
    pub fn renew_after(&self, stale: &Secret) -> Result<(), BackendError> {
        let mut access = self.access.lock().unwrap_or_else(|p| p.into_inner());
        if access.as_ref().is_some_and(|a| a.token != *stale) {
            return Ok(());
        }
        self.fetch(&mut access).map(|_| ())
    }

    /// `text` without any secret value in it.
    pub fn scrub(&self, text: &str) -> String {
        let current = self
            .access
            .lock()
            .map(|a| a.as_ref().map(|a| a.token.expose().to_string()))
            .unwrap_or(None);
        redact(&self.scrub_credentials(text), current.as_deref())
    }

    /// `text` without the configured secrets. The only scrub while a
    /// token is being fetched: the access lock is held then, and the
    /// token endpoint is never sent an access token to echo.
    fn scrub_credentials(&self, text: &str) -> String {
        self.creds
            .secrets()
            .into_iter()
            .fold(text.to_string(), |s, secret| redact(&s, Some(secret)))
    }

    fn fetch(&self, slot: &mut Option<Access>) -> Result<Secret, BackendError> {
        let DropboxCredentials::Refresh {
            refresh_token,
            app_key,
            app_secret,
        } = &self.creds
        else {
            return Err(BackendError::new(
                NAME,
                ErrorKind::Auth,
                "Dropbox token expired",
                super::error::EXPIRED_FIX,
            ));
        };
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh_token.expose())
            .append_pair("client_id", app_key);
        if let Some(s) = app_secret {
            form.append_pair("client_secret", s.expose());
        }
        let body = form.finish();
        let what = "refresh the access token";
        let reply: TokenReply = self.retry.run(what, |_| {
            let resp = self
                .client
                .post(&self.token_url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .timeout(self.timeouts.request)
                .body(body.clone())
                .send()
                .map_err(|e| http::transport_error(NAME, what, e))?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = http::read_body(NAME, what, resp, 64 << 10)?;
            if status.is_success() {
                return serde_json::from_slice(&bytes).map_err(|e| {
                    BackendError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!("{what}: Dropbox answered with unreadable JSON: {e}"),
                        "retry later",
                    )
                });
            }
            Err(self.oauth_error(what, status, &headers, &bytes))
        })?;
        // The server's lifetime, within sane bounds (new tokens live 4 h).
        let life = Duration::from_secs(reply.expires_in.unwrap_or(14_400).min(30 * 24 * 3600));
        let token = Secret::new(reply.access_token);
        *slot = Some(Access {
            token: token.clone(),
            renew_at: Instant::now() + life - REFRESH_MARGIN.min(life / 2),
        });
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(target: "ferry::dropbox", expires_in = life.as_secs(), "access token refreshed");
        Ok(token)
    }

    fn oauth_error(
        &self,
        what: &str,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> BackendError {
        let e: OauthError = serde_json::from_slice(body).unwrap_or_default();
        let code = e.error.as_str();
        let fix = match code {
            "invalid_grant" => Some(format!(
                "{REFRESH_TOKEN_VAR} is revoked or not issued to {APP_KEY_VAR}: authorize the app again for a new refresh token (docs/backends/dropbox.md)"
            )),
            c if c.starts_with("invalid_client") || c == "unauthorized_client" => Some(format!(
                "check {APP_KEY_VAR} and {APP_SECRET_VAR} (the app console's App key and App secret)"
            )),
            _ => None,
        };
        match fix {
            Some(fix) => {
                let desc = self.scrub_credentials(&http::snippet(e.error_description.as_bytes()));
                BackendError::new(
                    NAME,
                    ErrorKind::Auth,
                    format!(
                        "{what}: Dropbox refused the refresh credentials (HTTP {} {code}{}{desc})",
                        status.as_u16(),
                        if desc.is_empty() { "" } else { ": " }
                    ),
                    fix,
                )
            }
            None => {
                let scrubbed = self.scrub_credentials(&String::from_utf8_lossy(body));
                http::status_error(NAME, what, status, headers, scrubbed.as_bytes(), None, None)
            }
        }
    }
}

fn redact(text: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if !s.is_empty() => text.replace(s, "[redacted]"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn credentials_from_the_environment() {
        let e = DropboxCredentials::from_env(&env(&[])).unwrap_err();
        let s = e.to_string();
        for var in [REFRESH_TOKEN_VAR, APP_KEY_VAR, APP_SECRET_VAR, TOKEN_VAR] {
            assert!(s.contains(var), "{s}");
        }
        assert_eq!(e.kind(), ErrorKind::Config);
        let c = DropboxCredentials::from_env(&env(&[(TOKEN_VAR, "sl.tok")])).unwrap();
        assert_eq!(c, DropboxCredentials::Token(Secret::new("sl.tok")));
        let c = DropboxCredentials::from_env(&env(&[
            (TOKEN_VAR, "sl.tok"),
            (REFRESH_TOKEN_VAR, "rt"),
            (APP_KEY_VAR, "key"),
        ]))
        .unwrap();
        assert!(matches!(
            c,
            DropboxCredentials::Refresh {
                app_secret: None,
                ..
            }
        ));
        let e = DropboxCredentials::from_env(&env(&[(REFRESH_TOKEN_VAR, "rt")])).unwrap_err();
        assert!(e.to_string().contains(APP_KEY_VAR), "{e}");
    }

    #[test]
    fn secrets_do_not_print() {
        let c = DropboxCredentials::Refresh {
            refresh_token: Secret::new("RT-SECRET"),
            app_key: "key".into(),
            app_secret: Some(Secret::new("APP-SECRET")),
        };
        let d = format!("{c:?}");
        assert!(!d.contains("RT-SECRET") && !d.contains("APP-SECRET"), "{d}");
        let auth = Auth::new(
            c,
            "http://127.0.0.1:9",
            Client::new(),
            Timeouts::default(),
            RetryPolicy::once(),
        );
        assert_eq!(
            auth.scrub("a RT-SECRET b APP-SECRET"),
            "a [redacted] b [redacted]"
        );
    }
}
