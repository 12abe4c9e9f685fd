//! `Faulty`: a wrapper that makes any backend fail on purpose — for the
//! spool's tests and ferry's `testing.backend_down` switch. Only `put`
//! fails; `list`, `get` and `share` pass through.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Backend, BackendError, ErrorKind, Receipt, RemoteObject};

/// A backend whose puts fail as planned.
pub struct Faulty {
    inner: Box<dyn Backend>,
    name: String,
    /// Puts that fail before the first one goes through (`u64::MAX`:
    /// every put, the destination stays down).
    fail_first: u64,
    kind: ErrorKind,
    puts: AtomicU64,
    /// Says it retries its own requests, as the remote backends do.
    retries_itself: bool,
}

impl Faulty {
    /// Passes everything through, under `inner`'s name.
    pub fn new(inner: Box<dyn Backend>) -> Self {
        let name = inner.name().to_string();
        Faulty {
            inner,
            name,
            fail_first: 0,
            kind: ErrorKind::Unavailable,
            puts: AtomicU64::new(0),
            retries_itself: false,
        }
    }

    /// Every put fails as `Unavailable`: a destination that stays down.
    pub fn down(inner: Box<dyn Backend>) -> Self {
        Faulty::new(inner).fail_first(u64::MAX, ErrorKind::Unavailable)
    }

    /// The first `n` puts fail with `kind`.
    pub fn fail_first(mut self, n: u64, kind: ErrorKind) -> Self {
        self.fail_first = n;
        self.kind = kind;
        self
    }

    /// Goes by another name (two stores of one kind as two destinations).
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Claims to retry its own requests, like the remote backends.
    pub fn retrying_itself(mut self) -> Self {
        self.retries_itself = true;
        self
    }

    /// Puts attempted so far.
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::SeqCst)
    }
}

impl Backend for Faulty {
    fn name(&self) -> &str {
        &self.name
    }

    fn put(&self, key: &str, src: &Path) -> Result<Receipt, BackendError> {
        let n = self.puts.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(BackendError::new(
                self.name.clone(),
                self.kind,
                if self.fail_first == u64::MAX {
                    format!("put {key} failed on purpose (every put fails)")
                } else {
                    format!(
                        "put {key} failed on purpose ({} of {})",
                        n + 1,
                        self.fail_first
                    )
                },
                "this destination is broken on purpose by a test (testing.backend_down)",
            ));
        }
        let mut r = self.inner.put(key, src)?;
        r.backend = self.name.clone();
        Ok(r)
    }

    fn list(&self, prefix: &str) -> Result<Vec<RemoteObject>, BackendError> {
        self.inner.list(prefix)
    }

    fn retries_itself(&self) -> bool {
        self.retries_itself || self.inner.retries_itself()
    }

    fn get(&self, key: &str, dest: &Path) -> Result<(), BackendError> {
        self.inner.get(key, dest)
    }

    fn share(&self, key: &str) -> Result<Option<String>, BackendError> {
        self.inner.share(key)
    }
}
