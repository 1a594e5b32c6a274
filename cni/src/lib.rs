//! knit-cni: the CNI plugin (spec 0.3.0 to 1.1) that attaches pods to Knit's
//! datapath, and the installer that puts it into a node's CNI config.
//!
//! Data flow: the container runtime runs the node's conflist; the plugin
//! before Knit (`ptp`, `bridge`, kindnet, …) creates the pod's veth and
//! addresses and hands its result to Knit as `prevResult`. [`plugin`] turns
//! that result into an [`attachment::Attachment`] (host-side interface, pod
//! IPs and MACs, pod name) and writes it into the node's state directory
//! ([`attachment::AttachmentStore`]). knit-agent reads the directory: it is
//! the hand-over, so an agent that is down or restarting finds every pod
//! added or deleted meanwhile when it comes back. [`conflist`] computes the
//! configs with `knit` chained in, and [`install`] puts them into the
//! node's config directory (every shape libcni loads) and undoes it.
//! [`protocol`] holds the wire types of the CNI spec; [`links`] asks the
//! kernel for what a previous result leaves out.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod attachment;
// The static binary takes no workspace crate that brings tokio: it
// compiles knit-telemetry's std-only file.
pub mod conflist;
#[path = "../../telemetry/src/error_chain.rs"]
mod error_chain;
pub mod install;
pub mod links;
pub mod plugin;
pub mod protocol;

/// Errors of the installer and the state directory (the plugin's own
/// errors are [`protocol::CniError`], what the runtime reads).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {path}")]
    File {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A file's JSON could not be parsed.
    #[error("parse {path}")]
    Parse {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A CNI config cannot be chained into.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, and what to do.
        reason: String,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
