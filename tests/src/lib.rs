//! The QEMU guest harness used by ferry's end-to-end tests.
//!
//! * [`GuestImage::ensure`] builds (or reuses) the cached Debian 12 image made
//!   by `tests/guest/build-image.sh`.
//! * [`Guest::boot`] starts a QEMU/TCG guest on a fresh overlay of it, with
//!   ssh forwarded from 127.0.0.1 only; [`Guest`] runs pty-less ssh commands.
//! * [`Session`] is the long-lived `ssh -tt` client whose output lines are
//!   stamped by the host clock, so its largest gap is the trip's downtime.
//!
//! * [`http_fake`] is the HTTP/1.1 server under the protocol fakes, with
//!   socket-level faults; [`fakes`] holds the fakes (Dropbox, GitHub artifacts);
//!   [`fault_proxy`] puts the same kinds of faults in front of any real
//!   server (s3s-fs) or fake; [`s3s`] starts s3s-fs.
//!
//! Guest tests are gated by `FERRY_GUEST_TESTS=1` (see [`guest_tests_enabled`]).

pub mod fakes;
pub mod fault_proxy;
mod guest;
pub mod http_fake;
mod image;
pub mod otlp_receiver;
pub mod s3s;
mod session;
pub mod trip;
pub mod util;

pub use guest::{
    BootOptions, DEFAULT_CMD_TIMEOUT, GUEST_IP, Guest, GuestFwd, HOST_IP, TELEMETRY_IP,
    guestfwd_proxy, strip_escapes, work_root,
};
pub use image::{GuestImage, parse_env};
pub use session::{Gap, Line, Session, Stream};

/// True when `FERRY_GUEST_TESTS=1`; otherwise prints a skip line for `test`.
pub fn guest_tests_enabled(test: &str) -> bool {
    if std::env::var("FERRY_GUEST_TESTS").as_deref() == Ok("1") {
        true
    } else {
        eprintln!("skipping {test}: set FERRY_GUEST_TESTS=1 to run QEMU guest tests");
        false
    }
}
