//! Bundles and the backends that carry them off the machine.
//!
//! * [`bundle`] writes, reads, verifies and extracts the `tar.gz` bundles a
//!   run's logs travel in, redacting secrets and capping sizes on the way.
//! * [`backends`] is the seam to the stores bundles are shipped to
//!   ([`backends::Backend`]): a local directory, S3-compatible stores,
//!   Dropbox, GitHub Actions artifacts.
//! * [`retry`] and [`progress`] are what every remote transfer shares:
//!   backoff with full jitter, and a bar or plain progress lines.
//! * [`spool`] keeps bundles on disk until every destination has them.
//! * [`failpoint`] is where the crash tests stop ferry.
//! * [`utc`] turns Unix times into UTC dates and back; [`paths`] holds
//!   what writers of a file beside another share.

pub mod backends;
pub mod bundle;
pub mod failpoint;
pub mod paths;
pub mod progress;
pub mod retry;
pub mod spool;
pub mod utc;

pub use backends::{
    Backend, BackendError, DirBackend, DropboxBackend, DropboxConfig, DropboxCredentials, Faulty,
    GithubBackend, GithubConfig, Receipt, RemoteObject, S3Backend, S3Config,
};
pub use bundle::{
    BundleError, BundleOptions, BundleReader, BundleWriter, Manifest, bundle_name, report_key,
    write_bundle, write_bundle_into,
};
pub use retry::RetryPolicy;
pub use spool::{Spool, SpoolError};
