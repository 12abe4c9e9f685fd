//! Bundles and the backends that carry them off the machine.
//!
//! * [`bundle`] writes, reads, verifies and extracts the `tar.gz` bundles a
//!   run's logs travel in, redacting secrets and capping sizes on the way.
//! * [`backends`] is the seam to the stores bundles are shipped to
//!   ([`backends::Backend`]): a local directory, and S3-compatible stores.
//! * [`retry`] and [`progress`] are what every remote transfer shares:
//!   backoff with full jitter, and a bar or plain progress lines.

pub mod backends;
pub mod bundle;
pub mod progress;
pub mod retry;

pub use backends::{Backend, BackendError, DirBackend, Receipt, RemoteObject, S3Backend, S3Config};
pub use bundle::{
    BundleError, BundleOptions, BundleReader, BundleWriter, Manifest, bundle_name, write_bundle,
};
pub use retry::RetryPolicy;
