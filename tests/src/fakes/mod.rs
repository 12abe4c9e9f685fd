//! Protocol-faithful fakes of the services ferry ships bundles to, built
//! on [`crate::http_fake`]: strict about what the real service refuses,
//! stateful, and open to the same socket-level faults.

pub mod dropbox;
pub mod github;
