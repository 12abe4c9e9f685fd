//! Protocol-faithful fakes of services the tests cannot reach, built on
//! [`crate::http_fake`]: strict about what the real service refuses, with
//! state kept in memory so tests compare bytes.

pub mod dropbox;
