//! The backend ids in `ACTIONS_RUNTIME_TOKEN`.
//!
//! The token is a JWT whose `scp` claim (space-separated scopes) holds
//! `Actions.Results:<workflow run backend id>:<job run backend id>`; the
//! results service wants both ids in every call. The signature is not
//! checked: the service does that, ferry only reads its own token.
//! Errors never quote the token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The ids every Twirp call names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendIds {
    /// `workflow_run_backend_id`.
    pub run: String,
    /// `workflow_job_run_backend_id`.
    pub job: String,
}

/// Reads the ids from the token's claims; the error says what is wrong
/// with the token without showing it.
pub fn backend_ids(token: &str) -> Result<BackendIds, String> {
    let mut parts = token.trim().split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(p), Some(_), None) => p,
        _ => return Err("it is not a JWT (three dot-separated parts)".into()),
    };
    // Some encoders pad; base64url without padding is the JWT rule.
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "its claims are not base64url".to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "its claims are not JSON".to_string())?;
    let scp = claims
        .get("scp")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "it has no `scp` claim".to_string())?;
    let scope = scp
        .split(' ')
        .find(|s| s.starts_with("Actions.Results:"))
        .ok_or_else(|| "its `scp` claim has no Actions.Results scope".to_string())?;
    let ids: Vec<&str> = scope.split(':').collect();
    match ids.as_slice() {
        [_, run, job] if !run.is_empty() && !job.is_empty() => Ok(BackendIds {
            run: run.to_string(),
            job: job.to_string(),
        }),
        _ => Err("its Actions.Results scope is not `Actions.Results:<run>:<job>`".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn ids_come_from_the_results_scope() {
        let t = jwt(
            r#"{"scp":"Actions.ExampleScope Actions.Results:ce7f54c7-61c7-4aae-887f-30da475f5f1a:ca395085-040a-526b-2ce8-bdc85f692774","exp":1}"#,
        );
        assert_eq!(
            backend_ids(&t).unwrap(),
            BackendIds {
                run: "ce7f54c7-61c7-4aae-887f-30da475f5f1a".into(),
                job: "ca395085-040a-526b-2ce8-bdc85f692774".into()
            }
        );
    }

    #[test]
    fn bad_tokens_are_explained_without_quoting_them() {
        let secret = "ghs_SECRETSECRET";
        for (token, why) in [
            (secret.to_string(), "not a JWT"),
            (format!("a.{secret}!.c"), "not base64url"),
            (jwt("[1,2]"), "no `scp`"),
            (jwt(r#"{"scp":"Actions.Other"}"#), "no Actions.Results"),
            (jwt(r#"{"scp":"Actions.Results:only-one"}"#), "not `Actions"),
            (jwt(r#"{"scp":"Actions.Results:a:b:c"}"#), "not `Actions"),
        ] {
            let e = backend_ids(&token).unwrap_err();
            assert!(e.contains(why), "{e}");
            assert!(!e.contains(secret), "{e}");
        }
    }
}
