//! `ship.github`: the settings of the GitHub Actions artifacts backend.
//! Tokens are never here: they come from the environment only.

use serde::{Deserialize, Serialize};

/// The longest retention GitHub accepts (private repositories of an
/// organisation that allows it; public ones stop at 90).
pub const MAX_RETENTION_DAYS: u32 = 400;

/// `ship.github` in `ferry.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GithubConfig {
    /// Put before every artifact name, so ferry's artifacts stand apart
    /// from the workflow's other ones in a listing.
    pub name_prefix: String,
    /// Days GitHub keeps the artifacts; 0 leaves it to the repository's
    /// setting (90 days unless changed). `GITHUB_RETENTION_DAYS`, when the
    /// runner sets it, caps it.
    pub retention_days: u32,
    /// `owner/name` whose artifacts `list` and `get` read through the REST
    /// API; empty means `GITHUB_REPOSITORY`.
    pub repository: String,
    /// REST API base; empty means `GITHUB_API_URL`, else
    /// `https://api.github.com`.
    pub api_url: String,
    /// Bundles up to this size go up in one request; larger ones in blocks
    /// of this size (raised when a bundle would need more than Azure's
    /// 50,000 blocks).
    pub block_kib: u64,
    /// Blocks sent at the same time.
    pub upload_concurrency: u32,
}

impl Default for GithubConfig {
    fn default() -> Self {
        GithubConfig {
            name_prefix: "ferry-".into(),
            retention_days: 0,
            repository: String::new(),
            api_url: String::new(),
            block_kib: 8 * 1024,
            upload_concurrency: 4,
        }
    }
}

impl GithubConfig {
    /// What is wrong with these settings, as `(key, why and fix)`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(c) = self
            .name_prefix
            .chars()
            .find(|c| super::names::reserved(*c))
        {
            out.push((
                "ship.github.name_prefix",
                format!(
                    "{:?} holds {c:?}, which artifact names may not contain (nor ferry's own `%` and `~`); use letters, digits, `-`, `_` or `.`",
                    self.name_prefix
                ),
            ));
        }
        if self.retention_days > MAX_RETENTION_DAYS {
            out.push((
                "ship.github.retention_days",
                format!(
                    "{} is more than GitHub's maximum of {MAX_RETENTION_DAYS} days; use 1-{MAX_RETENTION_DAYS}, or 0 for the repository's default",
                    self.retention_days
                ),
            ));
        }
        if !self.repository.is_empty() && !valid_repository(&self.repository) {
            out.push((
                "ship.github.repository",
                format!("{:?} is not `owner/name`", self.repository),
            ));
        }
        if self.block_kib == 0 {
            out.push((
                "ship.github.block_kib",
                "0 is not a block size; use e.g. 8192 (8 MiB)".into(),
            ));
        }
        if self.upload_concurrency == 0 || self.upload_concurrency > 32 {
            out.push((
                "ship.github.upload_concurrency",
                format!("{} is not in 1-32", self.upload_concurrency),
            ));
        }
        out
    }
}

/// `owner/name` with GitHub's characters.
pub fn valid_repository(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((o, n)) if ok(o) && ok(n) && n != "." && n != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(GithubConfig::default().problems().is_empty());
        let bad = GithubConfig {
            name_prefix: "a/b".into(),
            retention_days: 401,
            repository: "just-a-name".into(),
            block_kib: 0,
            upload_concurrency: 0,
            ..GithubConfig::default()
        };
        let keys: Vec<_> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "ship.github.name_prefix",
                "ship.github.retention_days",
                "ship.github.repository",
                "ship.github.block_kib",
                "ship.github.upload_concurrency"
            ]
        );
    }

    #[test]
    fn repositories() {
        for good in ["o/r", "my-org/ferry.rs", "a_b/c-d"] {
            assert!(valid_repository(good), "{good}");
        }
        for bad in ["", "o", "o/", "/r", "o/r/x", "o/..", "o r/x", "ö/r"] {
            assert!(!valid_repository(bad), "{bad}");
        }
    }
}
