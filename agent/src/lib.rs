//! knit-agent: programs this node's eBPF datapath from the local mesh
//! kvstore.
//!
//! Data flow: etcd watch (own cluster, `local/services/`, peer caches) →
//! [`index::MeshIndex`] (pure), NetworkPolicies and knit-cni's pod
//! attachments (the node's state directory) → [`render::render`]
//! (pure) → [`datapath::state::DatapathState`] → [`datapath::Datapath`]
//! (difference writes to pinned maps, links pinned in bpffs). [`netdev`]
//! creates the node's VXLAN device over rtnetlink; [`run`] is the loop.
#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]

pub mod agent_loop;
pub mod bootstrap;
pub mod cilium_policy;
pub mod cni_install;
pub mod datapath;
pub mod encryption;
pub mod health;
pub mod incremental;
pub mod index;
pub mod metrics;
pub mod netdev;
pub mod node_routes;
pub mod observe;
pub mod peer_report;
pub mod pod_mtu;
pub mod pod_routes;
pub mod policy;
pub mod preference;
pub mod render;
pub mod routing;
pub mod run;
pub mod status_publish;
pub mod tunnel_port;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object could not be loaded.
    #[error("load the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program is not in the object.
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    /// A map is not in the object.
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(String),
    /// Loading or attaching a program failed.
    #[error("load or attach program {name}")]
    Program {
        /// Program.
        name: String,
        /// Cause.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Using a map failed.
    #[error("use map {name}")]
    Map {
        /// Map.
        name: String,
        /// Cause.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Creating, pinning or reusing a link failed.
    #[error("{action}")]
    Link {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bpffs or cgroup file operation failed.
    #[error("{action}")]
    Pin {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{action}")]
    Netlink {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The tunnel's UDP port is already held by something else on the node.
    #[error(
        "UDP port {port} of the tunnel is already taken by {owner}; give Knit another port with tunnelPort (config/agent, the agent's --tunnel-port), the same on every cluster of the mesh"
    )]
    TunnelPortTaken {
        /// The port.
        port: u16,
        /// What holds it, in words.
        owner: String,
    },
    /// The kernel lacks a feature the datapath needs.
    #[error("this kernel has no {feature} (Linux {minimum} or later has it); {fix}")]
    KernelFeature {
        /// The feature.
        feature: &'static str,
        /// The first Linux version with it.
        minimum: &'static str,
        /// What to do.
        fix: &'static str,
    },
    /// The node's WireGuard key could not be read or made.
    #[error("{action}")]
    WireguardKey {
        /// What was being done.
        action: String,
        /// Cause, where there is one below the message.
        #[source]
        source: Option<std::io::Error>,
    },
    /// Starting or configuring a WireGuard interface failed.
    #[error("{action}")]
    Wireguard {
        /// What was being done.
        action: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The kvstore layer failed.
    #[error("kvstore")]
    Store(#[source] knit_kvstore::Error),
    /// knit-cni's state directory could not be used.
    #[error("CNI state directory")]
    Cni(#[source] knit_cni::Error),
}

impl Error {
    fn program(name: &str, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            name: name.to_owned(),
            source: Box::new(source),
        }
    }

    fn map(name: &str, source: aya::maps::MapError) -> Self {
        Self::Map {
            name: name.to_owned(),
            source: Box::new(source),
        }
    }
}

/// Result of the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
