//! The wire contract between Knit clusters.
//!
//! - [`keys`] and [`records`]: the `knit/v1` key schema and its JSON values;
//! - [`validate`]: what a peer may publish, checked before mirroring;
//! - [`EtcdClientConfig`] / [`EtcdAccess`]: the files the operator (and
//!   `knitctl render`) writes and every etcd client reads; [`etcd`] connects
//!   with mTLS from them;
//! - [`sync_store`] (writer: leases, skip unchanged, canaries last) and
//!   [`watch_store`] (reader: list + watch, stale keys drained on reconnect
//!   once their canary is back, by the rule in [`drain`]).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod access;
pub mod backend;
mod client_config;
pub mod drain;
pub mod etcd;
pub mod keys;
pub mod records;
pub mod sync_store;
pub mod validate;
pub mod watch_store;
mod wire_encryption;
mod wire_policy;

pub use access::{Access, EtcdAccess, EtcdUser};
pub use client_config::{EtcdClientConfig, PeerIdentity};
pub use wire_policy::PeerLimits;

pub use keys::{KEY_PREFIX, Kind, RelativeKey, cache_prefix, cluster_prefix};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client configuration file could not be parsed.
    #[error("parsing etcd client config: {0}")]
    ParseClientConfig(#[source] serde_saphyr::Error),
    /// The etcd users file could not be parsed.
    #[error("parsing etcd users file: {0}")]
    ParseAccess(#[source] serde_saphyr::Error),
    /// A configuration file could not be serialised.
    #[error("writing etcd configuration")]
    WriteClientConfig(#[source] serde_saphyr::ser_error::Error),
    /// A file named in a client configuration could not be read.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// An etcd request failed.
    #[error("{action}")]
    Etcd {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: etcd_client::Error,
    },
    /// A key-value store other than etcd refused a request.
    #[error("key-value store: {0}")]
    Backend(String),
    /// etcd canceled a watch (usually: the revision was compacted).
    #[error("watch canceled by etcd: {0}")]
    WatchCanceled(String),
    /// The receiver of watch events went away.
    #[error("the watch event receiver is gone")]
    ReaderGone,
    /// A client configuration is incomplete or inconsistent.
    #[error("etcd client config field {field}: {problem}")]
    InvalidClientConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// A 64-bit fingerprint of a value (FNV-1a): what writers and readers keep
/// instead of the value to tell whether it changed.
pub fn fingerprint(value: &[u8]) -> u64 {
    value.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
