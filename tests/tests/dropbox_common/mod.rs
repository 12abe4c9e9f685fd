//! What the Dropbox tests share: the backend set up against the fake,
//! with small chunks and quick retries, and bundles of random bytes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_tests::fakes::dropbox::FakeDropbox;
use ferry_tests::http_fake::Request;
use ferry_uploaders::backends::dropbox::Secret;
use ferry_uploaders::{DropboxBackend, DropboxConfig, DropboxCredentials, RetryPolicy};

pub const TOKEN: &str = "sl.TEST-ACCESS-TOKEN-d41d8cd98f00";
pub const REFRESH: &str = "REFRESH-TOKEN-9e107d9d372bb6826bd81d3542a419d6";
pub const APP_KEY: &str = "fakeappkey";
pub const APP_SECRET: &str = "APP-SECRET-e4d909c290d0fb1ca068ffaddf22cbd0";
pub const MIB: usize = 1 << 20;

pub fn config(fake: &FakeDropbox) -> DropboxConfig {
    DropboxConfig {
        folder: "/ferry".into(),
        // Small, so a session happens with a few MiB.
        upload_cutoff_mib: 4,
        chunk_mib: 4,
        share: true,
        api_url: fake.api_url(),
        content_url: fake.content_url(),
        timeout_secs: 2,
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(100),
        budget: Duration::from_secs(60),
        deadline: None,
    }
}

pub fn with_token(fake: &FakeDropbox, cfg: DropboxConfig) -> DropboxBackend {
    fake.add_token(TOKEN);
    DropboxBackend::new(cfg, DropboxCredentials::Token(Secret::new(TOKEN)))
        .unwrap()
        .with_retry(fast_retry())
}

pub fn with_refresh(fake: &FakeDropbox, cfg: DropboxConfig) -> DropboxBackend {
    fake.set_app(APP_KEY, Some(APP_SECRET), REFRESH);
    DropboxBackend::new(cfg, refresh_creds(REFRESH, APP_SECRET))
        .unwrap()
        .with_retry(fast_retry())
}

pub fn refresh_creds(rt: &str, secret: &str) -> DropboxCredentials {
    DropboxCredentials::Refresh {
        refresh_token: Secret::new(rt),
        app_key: APP_KEY.into(),
        app_secret: Some(Secret::new(secret)),
    }
}

/// A file of `len` bytes that differ by `seed` (and do not compress).
pub fn bundle(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

pub fn is_route(r: &Request, route: &str) -> bool {
    r.path() == format!("/2/{route}")
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
