//! `ship.s3`: where the bucket is and how to talk to it. Credentials are
//! not here: they come only from the environment.

use std::fmt;
use std::time::Duration;

use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::sigv4::Credentials;
use crate::backends::{BackendError, ErrorKind};

use super::NAME;

const MIB: u64 = 1024 * 1024;
/// S3's smallest non-final part.
pub const MIN_PART_MIB: u64 = 5;
/// S3's largest part, and its largest single PUT.
pub const MAX_PART_MIB: u64 = 5 * 1024;
/// S3's most parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// The longest a presigned URL may live (SigV4's limit).
pub const MAX_SHARE_SECS: u64 = 604_800;

/// The `[ship.s3]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// `https://host[:port]` of an S3-compatible service; empty for AWS
    /// (`https://s3.<region>.amazonaws.com`).
    pub endpoint: String,
    /// Signing region; empty takes `AWS_REGION`, then `AWS_DEFAULT_REGION`,
    /// then `us-east-1`.
    pub region: String,
    /// The bucket (required).
    pub bucket: String,
    /// A folder inside the bucket that every key goes under (`ci/bundles`).
    pub prefix: String,
    /// `auto` (path style for a custom endpoint, virtual-hosted for AWS),
    /// `true` or `false`.
    pub path_style: PathStyle,
    /// Bundles of this size or more go up as a multipart upload.
    pub multipart_threshold_mib: u64,
    /// Size of one part (raised for huge bundles to stay within 10,000 parts).
    pub part_size_mib: u64,
    /// Parts in flight at once.
    pub concurrency: u32,
    /// Seconds a request without a large body may take; uploads and
    /// downloads get one more second per 256 KiB.
    pub timeout_secs: u64,
    /// Lifetime of the presigned URL `share` returns; 0 returns none.
    pub share_expiry_secs: u64,
    /// Keys per ListObjectsV2 page (1–1000).
    pub list_page_keys: u32,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: String::new(),
            bucket: String::new(),
            prefix: String::new(),
            path_style: PathStyle::Auto,
            multipart_threshold_mib: 128,
            part_size_mib: 16,
            concurrency: 4,
            timeout_secs: 60,
            share_expiry_secs: 86_400,
            list_page_keys: 1000,
        }
    }
}

/// Path-style (`host/bucket/key`) or virtual-hosted (`bucket.host/key`)
/// addressing. Written as `"auto"`, `true` or `false` (also `"true"`,
/// `"false"` as an environment variable gives them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathStyle {
    #[default]
    Auto,
    Always,
    Never,
}

impl Serialize for PathStyle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PathStyle::Auto => s.serialize_str("auto"),
            PathStyle::Always => s.serialize_bool(true),
            PathStyle::Never => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for PathStyle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PathStyle;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<PathStyle, E> {
                Ok(if v {
                    PathStyle::Always
                } else {
                    PathStyle::Never
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PathStyle, E> {
                match v.trim().to_ascii_lowercase().as_str() {
                    "auto" | "" => Ok(PathStyle::Auto),
                    "true" | "yes" | "1" | "on" => Ok(PathStyle::Always),
                    "false" | "no" | "0" | "off" => Ok(PathStyle::Never),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// The environment a backend reads its credentials from.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A checked configuration: URLs worked out, sizes in bytes.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Scheme, host and port of the requests (with the bucket for
    /// virtual-hosted style), and any base path of the endpoint.
    pub base: Url,
    /// The `Host` header value: host, and port when not the default.
    pub host: String,
    /// The path before the key: `/<bucket>` (path style) or empty.
    pub bucket_path: String,
    pub bucket: String,
    pub region: String,
    /// The key prefix with a trailing `/`, or empty.
    pub prefix: String,
    pub multipart_threshold: u64,
    pub part_size: u64,
    pub concurrency: usize,
    pub timeout: Duration,
    pub share_expiry_secs: u64,
    pub list_page_keys: u32,
}

fn config_error(message: String, fix: &str) -> BackendError {
    BackendError::new(NAME, ErrorKind::Config, message, fix)
}

fn nonempty(env: Env<'_>, var: &str) -> Option<String> {
    env(var).filter(|v| !v.trim().is_empty())
}

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and the
/// optional `AWS_SESSION_TOKEN`.
pub fn credentials(env: Env<'_>) -> Result<Credentials, BackendError> {
    let missing = |var: &str| {
        config_error(
            format!("{var} is not set"),
            &format!(
                "export {var} in the job's environment (a CI secret; see docs/backends/s3.md)"
            ),
        )
    };
    let access_key_id =
        nonempty(env, "AWS_ACCESS_KEY_ID").ok_or_else(|| missing("AWS_ACCESS_KEY_ID"))?;
    let secret_access_key =
        nonempty(env, "AWS_SECRET_ACCESS_KEY").ok_or_else(|| missing("AWS_SECRET_ACCESS_KEY"))?;
    Ok(Credentials {
        access_key_id: access_key_id.trim().to_string(),
        secret_access_key: secret_access_key.trim().to_string(),
        session_token: nonempty(env, "AWS_SESSION_TOKEN").map(|t| t.trim().to_string()),
    })
}

impl S3Config {
    /// Checks the settings and works out the addresses; `env` supplies
    /// the region when `region` is empty.
    pub fn resolve(&self, env: Env<'_>) -> Result<Resolved, BackendError> {
        let bucket = self.bucket.trim();
        if bucket.is_empty() {
            return Err(config_error(
                "no bucket configured".into(),
                "set ship.s3.bucket in ferry.toml or FERRY_SHIP_S3_BUCKET",
            ));
        }
        if bucket.len() > 255
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        {
            return Err(config_error(
                format!("bucket name {bucket:?} is not valid"),
                "ship.s3.bucket takes a bucket name only (letters, digits, `-`, `.`, `_`); put folders in ship.s3.prefix",
            ));
        }
        let region = [
            Some(self.region.clone()),
            env("AWS_REGION"),
            env("AWS_DEFAULT_REGION"),
        ]
        .into_iter()
        .flatten()
        .map(|r| r.trim().to_string())
        .find(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".to_string());
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(config_error(
                format!("region {region:?} is not valid"),
                "set ship.s3.region (or AWS_REGION) to a region name like eu-west-1",
            ));
        }
        let custom = !self.endpoint.trim().is_empty();
        let endpoint = if custom {
            self.endpoint.trim().to_string()
        } else {
            format!("https://s3.{region}.amazonaws.com")
        };
        let mut base = Url::parse(&endpoint).map_err(|e| {
            config_error(
                format!("endpoint {endpoint:?} is not a URL: {e}"),
                "set ship.s3.endpoint to http(s)://host[:port], e.g. https://s3.example.com",
            )
        })?;
        if !matches!(base.scheme(), "http" | "https")
            || base.host_str().is_none()
            || base.query().is_some()
            || !base.username().is_empty()
            || base.password().is_some()
        {
            return Err(config_error(
                format!("endpoint {endpoint:?} is not usable"),
                "set ship.s3.endpoint to http(s)://host[:port] without credentials or query",
            ));
        }
        let path_style = match self.path_style {
            PathStyle::Always => true,
            PathStyle::Never => false,
            PathStyle::Auto => custom,
        };
        if !path_style {
            if bucket.contains('.') && base.scheme() == "https" {
                return Err(config_error(
                    format!("bucket {bucket:?} has dots, which break TLS in virtual-hosted style"),
                    "set ship.s3.path_style = true",
                ));
            }
            let host = base.host_str().unwrap_or_default().to_string();
            base.set_host(Some(&format!("{bucket}.{host}")))
                .map_err(|e| {
                    config_error(
                        format!("cannot address bucket {bucket:?} as a host name: {e}"),
                        "set ship.s3.path_style = true",
                    )
                })?;
        }
        let host = match (base.host_str(), base.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let base_path = base.path().trim_end_matches('/').to_string();
        let bucket_path = if path_style {
            format!("{base_path}/{}", super::sigv4::encode_path(bucket))
        } else {
            base_path
        };
        let prefix = self.prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == ".." || c == ".") || prefix.contains("//") {
            return Err(config_error(
                format!("prefix {:?} is not valid", self.prefix),
                "set ship.s3.prefix to plain folder names like ci/bundles",
            ));
        }
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        if !(MIN_PART_MIB..=MAX_PART_MIB).contains(&self.part_size_mib) {
            return Err(config_error(
                format!("part_size_mib = {} is out of range", self.part_size_mib),
                "set ship.s3.part_size_mib between 5 and 5120 (S3's part limits)",
            ));
        }
        if !(1..=MAX_PART_MIB).contains(&self.multipart_threshold_mib) {
            return Err(config_error(
                format!(
                    "multipart_threshold_mib = {} is out of range",
                    self.multipart_threshold_mib
                ),
                "set ship.s3.multipart_threshold_mib between 1 and 5120 (a single PUT holds at most 5 GiB)",
            ));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(config_error(
                format!("concurrency = {} is out of range", self.concurrency),
                "set ship.s3.concurrency between 1 and 64",
            ));
        }
        if self.timeout_secs == 0 {
            return Err(config_error(
                "timeout_secs = 0".into(),
                "set ship.s3.timeout_secs to a number of seconds (60 is a good start)",
            ));
        }
        if self.share_expiry_secs > MAX_SHARE_SECS {
            return Err(config_error(
                format!("share_expiry_secs = {} is too long", self.share_expiry_secs),
                "presigned URLs live at most 604800 s (7 days); set ship.s3.share_expiry_secs lower",
            ));
        }
        if !(1..=1000).contains(&self.list_page_keys) {
            return Err(config_error(
                format!("list_page_keys = {} is out of range", self.list_page_keys),
                "set ship.s3.list_page_keys between 1 and 1000",
            ));
        }
        Ok(Resolved {
            base,
            host,
            bucket_path,
            bucket: bucket.to_string(),
            region,
            prefix,
            multipart_threshold: self.multipart_threshold_mib * MIB,
            part_size: self.part_size_mib * MIB,
            concurrency: self.concurrency as usize,
            timeout: Duration::from_secs(self.timeout_secs),
            share_expiry_secs: self.share_expiry_secs,
            list_page_keys: self.list_page_keys,
        })
    }
}

impl Resolved {
    /// The part size for an object of `size` bytes: the configured one,
    /// raised to a whole MiB that keeps the upload within 10,000 parts.
    pub fn part_size_for(&self, size: u64) -> u64 {
        let needed = size.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        self.part_size.max(needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn with_bucket() -> S3Config {
        S3Config {
            bucket: "bundles".into(),
            ..S3Config::default()
        }
    }

    #[test]
    fn aws_defaults_are_virtual_hosted_with_the_env_region() {
        let r = with_bucket()
            .resolve(&env_of(&[("AWS_DEFAULT_REGION", "eu-west-3")]))
            .unwrap();
        assert_eq!(
            r.base.as_str(),
            "https://bundles.s3.eu-west-3.amazonaws.com/"
        );
        assert_eq!(r.host, "bundles.s3.eu-west-3.amazonaws.com");
        assert_eq!(r.bucket_path, "");
        assert_eq!(r.region, "eu-west-3");
        let r = with_bucket()
            .resolve(&env_of(&[
                ("AWS_REGION", "us-west-2"),
                ("AWS_DEFAULT_REGION", "x"),
            ]))
            .unwrap();
        assert_eq!(r.region, "us-west-2");
        assert_eq!(
            with_bucket().resolve(&env_of(&[])).unwrap().region,
            "us-east-1"
        );
    }

    #[test]
    fn custom_endpoints_default_to_path_style() {
        let c = S3Config {
            endpoint: "http://127.0.0.1:8014/".into(),
            prefix: "/ci/bundles/".into(),
            region: "auto".into(),
            ..with_bucket()
        };
        let r = c.resolve(&env_of(&[("AWS_REGION", "ignored")])).unwrap();
        assert_eq!(r.host, "127.0.0.1:8014");
        assert_eq!(r.bucket_path, "/bundles");
        assert_eq!(r.prefix, "ci/bundles/");
        assert_eq!(r.region, "auto");
        let v = S3Config {
            path_style: PathStyle::Never,
            endpoint: "https://minio.example:9000".into(),
            ..c
        };
        assert_eq!(
            v.resolve(&env_of(&[])).unwrap().host,
            "bundles.minio.example:9000"
        );
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases: Vec<(S3Config, &str)> = vec![
            (S3Config::default(), "FERRY_SHIP_S3_BUCKET"),
            (
                S3Config {
                    bucket: "a/b".into(),
                    ..S3Config::default()
                },
                "ship.s3.prefix",
            ),
            (
                S3Config {
                    endpoint: "ftp://x".into(),
                    ..with_bucket()
                },
                "ship.s3.endpoint",
            ),
            (
                S3Config {
                    endpoint: "not a url".into(),
                    ..with_bucket()
                },
                "ship.s3.endpoint",
            ),
            (
                S3Config {
                    part_size_mib: 4,
                    ..with_bucket()
                },
                "ship.s3.part_size_mib",
            ),
            (
                S3Config {
                    concurrency: 0,
                    ..with_bucket()
                },
                "ship.s3.concurrency",
            ),
            (
                S3Config {
                    share_expiry_secs: 604_801,
                    ..with_bucket()
                },
                "share_expiry_secs",
            ),
            (
                S3Config {
                    prefix: "a/../b".into(),
                    ..with_bucket()
                },
                "ship.s3.prefix",
            ),
            (
                S3Config {
                    bucket: "a.b".into(),
                    path_style: PathStyle::Never,
                    ..S3Config::default()
                },
                "path_style",
            ),
        ];
        for (c, needle) in cases {
            let e = c.resolve(&env_of(&[])).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        }
    }

    #[test]
    fn missing_credentials_name_the_variable() {
        let e = credentials(&env_of(&[])).unwrap_err();
        assert!(e.to_string().contains("AWS_ACCESS_KEY_ID"), "{e}");
        let e = credentials(&env_of(&[("AWS_ACCESS_KEY_ID", "AK")])).unwrap_err();
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let c = credentials(&env_of(&[
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_SESSION_TOKEN", ""),
        ]))
        .unwrap();
        assert_eq!(c.session_token, None);
    }

    #[test]
    fn part_size_grows_for_huge_objects() {
        let r = with_bucket().resolve(&env_of(&[])).unwrap();
        assert_eq!(r.part_size_for(100 * MIB), 16 * MIB);
        // 1 TiB in 10,000 parts needs 105 MiB parts (104.9 rounded up).
        assert_eq!(r.part_size_for(1 << 40), 105 * MIB);
        assert!((1u64 << 40).div_ceil(r.part_size_for(1 << 40)) <= MAX_PARTS);
    }

    #[test]
    fn path_style_reads_bools_and_strings() {
        #[derive(Deserialize)]
        struct T {
            p: PathStyle,
        }
        for (text, want) in [
            ("p = true", PathStyle::Always),
            ("p = false", PathStyle::Never),
            ("p = \"auto\"", PathStyle::Auto),
            ("p = \"true\"", PathStyle::Always),
        ] {
            let t: T = toml_from(text);
            assert_eq!(t.p, want, "{text}");
        }
    }

    /// The run's plan stores the config as JSON and reads it back after
    /// the reboot.
    #[test]
    fn config_survives_the_plan_round_trip() {
        for path_style in [PathStyle::Auto, PathStyle::Always, PathStyle::Never] {
            let c = S3Config {
                path_style,
                prefix: "p".into(),
                ..with_bucket()
            };
            let back: S3Config = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
            assert_eq!(back, c);
        }
    }

    fn toml_from<T: serde::de::DeserializeOwned>(s: &str) -> T {
        // The uploaders crate has no TOML parser; JSON exercises the same
        // visitor paths (bool and string).
        let (k, v) = s.split_once(" = ").unwrap();
        serde_json::from_str(&format!("{{\"{k}\": {v}}}")).unwrap()
    }
}
