//! knit-apiserver: exports this cluster's state to its etcd and mirrors
//! every peer's state into it (KVStoreMesh).
//!
//! Data flow: `knit_sources` (Kubernetes watches or a directory of YAML) → [`export`] (pure:
//! state → keys) → [`export::exporter`] (SyncStore writes, canaries) → local etcd;
//! peers' etcd → [`mirror`] (WatchStore → validation → SyncStore) → local
//! etcd under `knit/v1/cache/<peer>/`. [`bootstrap`] sets etcd's users and
//! roles from the operator's `users.yaml` before anything is written;
//! [`maintenance`] keeps that etcd writable (defragmentation, NOSPACE).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod export;
pub mod front;
pub mod maintenance;
pub mod metrics;
pub mod mirror;

/// Errors of the apiserver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An etcd request failed.
    #[error("{action}")]
    Etcd {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: etcd_client::Error,
    },
    /// The kvstore layer failed.
    #[error("kvstore")]
    Store(#[source] knit_kvstore::Error),
    /// The identity store could not be read or written.
    #[error("{action}")]
    IdentityStore {
        /// What was being done, e.g. "reading ConfigMap knit-identities".
        action: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The peer front could not serve (files, TLS, etcd upstream).
    #[error("peer front: {0}")]
    Front(String),
}

/// Result of the apiserver.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}
