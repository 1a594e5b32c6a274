//! The node agent's local API, served on a unix socket in the agent's state
//! directory (`/run/knit/agent.sock`), as Cilium's agent serves
//! `cilium.sock`: `knitctl observe`, `services`, `identities`, `ipcache`
//! and `endpoints` ask it what this node's datapath really holds.
//!
//! - [`flows`]: flow events as the agent enriches them, and the filter
//!   `knitctl observe` applies ([`FlowFilter`]).
//! - [`tables`]: the datapath's tables read from the pinned maps, each with
//!   the differences from what the agent rendered from the kvstore.
//! - [`client`]: one GET over the socket, JSON in return.
//!
//! Paths: `GET /v1/flows?since=<seq>` ([`FlowPage`]), `GET /v1/services`
//! ([`ServiceTable`]), `/v1/identities`, `/v1/ipcache`, `/v1/endpoints`,
//! `GET /v1/policy?pod=<namespace>/<name>` ([`PolicyTable`]).
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod client;
pub mod flows;
pub mod tables;

pub use flows::{Flow, FlowFilter, FlowPage, Peer, Verdict};
pub use tables::{
    Backend, EndpointEntry, EndpointTable, IdentityEntry, IdentityTable, IpcacheEntry, IpcacheTable,
    PolicyLine, PolicyTable, ServiceEntry, ServiceTable,
};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/knit/agent.sock";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting to the agent's socket failed.
    #[error("connecting to the agent at {socket} (is knit-agent running on this node? pass --agent-socket)")]
    Connect {
        /// The socket path.
        socket: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("asking the agent for {path}")]
    Request {
        /// The path asked for.
        path: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent answered with an error status.
    #[error("the agent answered {status} for {path}: {body}")]
    Status {
        /// The path asked for.
        path: String,
        /// HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("reading the agent's answer to {path}")]
    Decode {
        /// The path asked for.
        path: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
