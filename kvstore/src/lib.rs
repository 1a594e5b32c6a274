//! The wire contract between Knit clusters.
//!
//! For now this holds the etcd client configuration file and the etcd users
//! file, in exactly the format the operator (and `knitctl render`) writes and the apiserver, the
//! KVStoreMesh and the agents read. The key schema, typed records, sync
//! store and watch store join it with the apiserver work.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod access;
mod client_config;

pub use access::{Access, EtcdAccess, EtcdUser};
pub use client_config::{EtcdClientConfig, PeerIdentity};

/// Prefix of every key Knit writes; a breaking change bumps the version.
pub const KEY_PREFIX: &str = "knit/v1";

/// The prefix under which a cluster publishes its own state.
pub fn cluster_prefix(cluster: &str) -> String {
    format!("{KEY_PREFIX}/clusters/{cluster}/")
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A client configuration file could not be parsed.
    #[error("parsing etcd client config: {0}")]
    ParseClientConfig(#[source] serde_yaml::Error),
    /// The etcd users file could not be parsed.
    #[error("parsing etcd users file: {0}")]
    ParseAccess(#[source] serde_yaml::Error),
    /// A configuration file could not be serialised.
    #[error("writing etcd configuration")]
    WriteClientConfig(#[source] serde_yaml::Error),
    /// A client configuration is incomplete or inconsistent.
    #[error("etcd client config field {field}: {problem}")]
    InvalidClientConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
