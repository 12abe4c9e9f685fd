//! Protocol-faithful fakes of the services ferry ships bundles to, built
//! on [`crate::http_fake`]: strict about what they accept, stateful, and
//! open to the same socket-level faults.

pub mod github;
