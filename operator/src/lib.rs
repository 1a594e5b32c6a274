//! knit-operator: turns ClusterMeshPeers and GlobalServicePolicies into
//! certificates, the mesh apiserver Deployment, peer configs and status.
//!
//! Layout follows "watch → pure index → desired state → thin apply":
//! [`config`], [`pki`], [`render`], [`gsp`], [`conditions`] and
//! [`peer_export`] are pure; [`kube`] holds the watchers and the
//! server-side-apply layer; [`files`] applies the same plan to a directory
//! for `knitctl render` (sites without Kubernetes, the local mesh).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod conditions;
pub mod config;
pub mod config_files;
pub mod connectivity;
pub mod files;
pub mod gsp;
pub mod inspect;
pub mod kube;
pub mod leadership;
pub mod mcs;
pub mod names;
pub mod peer_export;
pub mod pki;
pub mod render;
pub mod status_table;

/// Errors of the operator and knitctl.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator config file is not valid YAML of the expected shape.
    #[error("parsing cluster config: {0}")]
    ParseConfig(#[source] serde_saphyr::Error),
    /// A config field has a bad value.
    #[error("cluster config field {field}: {problem}")]
    InvalidConfig {
        /// The field, as written in the file.
        field: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Generating a key or signing a certificate failed.
    #[error("issuing a certificate")]
    IssueCertificate(#[source] rcgen::Error),
    /// The stored CA could not be loaded for signing.
    #[error("loading the mesh CA for signing")]
    LoadCa(#[source] rcgen::Error),
    /// A certificate could not be parsed.
    #[error("parsing certificate: {0}")]
    ParseCertificate(String),
    /// A rendered object did not match its Kubernetes type.
    #[error("rendering {kind}")]
    RenderObject {
        /// Kind of object.
        kind: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// Serialising a manifest failed.
    #[error("serialising {what} as YAML")]
    Serialize {
        /// What was being written.
        what: &'static str,
        /// Cause.
        #[source]
        source: serde_saphyr::ser_error::Error,
    },
    /// A kvstore file could not be written.
    #[error(transparent)]
    Kvstore(#[from] knit_kvstore::Error),
    /// Reading or writing a file failed.
    #[error("{action} {path}")]
    File {
        /// What was being done.
        action: &'static str,
        /// Which file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A request to the Kubernetes API failed.
    #[error("{action}")]
    Kube {
        /// What was being done, e.g. "applying Secret knit-ca".
        action: String,
        /// Cause.
        #[source]
        source: ::kube::Error,
    },
    /// The ClusterMeshPeer to export could not be built.
    #[error("exporting this cluster as a peer: {0}")]
    Export(String),
    /// This replica led and no longer does: it must stop reconciling.
    #[error("lost the operator's leader lease: {0}")]
    LeadershipLost(String),
    /// A step of `knitctl connectivity test` failed at a site.
    #[error("connectivity test: {step}")]
    Connectivity {
        /// What was being done, e.g. "deploying the test pods".
        step: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
