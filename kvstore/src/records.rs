//! Typed records stored as JSON values under the keys of [`crate::keys`].
//!
//! **Forward compatible within `v1`**: a reader ignores fields it does not
//! know, an unknown protocol marks just that port as unusable
//! ([`Protocol::Other`]) and an unknown affinity reads as `none`. So a peer
//! one version newer, which may only add fields and values, is mirrored
//! and used; a change that removes or reinterprets a field needs a new key
//! version. Knit supports peers one minor version apart (as Cilium does).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::keys::Kind;

/// Bits of an identity that hold the cluster-local number; the cluster ID
/// sits above them, so identities of different clusters never collide.
pub const LOCAL_IDENTITY_BITS: u32 = 15;
/// Largest cluster-local identity number.
pub const MAX_LOCAL_IDENTITY: u32 = (1 << LOCAL_IDENTITY_BITS) - 1;

/// The 24-bit identity of `local` in cluster `cluster_id`.
pub fn identity(cluster_id: u16, local: u32) -> u32 {
    (u32::from(cluster_id) << LOCAL_IDENTITY_BITS) | (local & MAX_LOCAL_IDENTITY)
}

/// The cluster ID an identity belongs to.
pub fn identity_cluster(identity: u32) -> u32 {
    identity >> LOCAL_IDENTITY_BITS
}

/// `clusters/<c>/config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfigRecord {
    /// Cluster name.
    pub name: String,
    /// Cluster ID.
    pub id: u16,
    /// Pod CIDRs the cluster announces.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Optional features the writer supports.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// UDP port of the cluster's VXLAN tunnel; every cluster of a mesh
    /// must use the same (absent from writers before it was added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_port: Option<u16>,
    /// How the cluster's nodes reach pods of other nodes (`tunnel`,
    /// `native`, `hybrid`; [`RoutingMode`]); absent from writers before it
    /// was added, which tunnel. Kept as text so a mode a newer peer names
    /// does not make the whole record unreadable: [`Self::routing_mode`]
    /// reads anything unknown as `tunnel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_mode: Option<String>,
}

impl ClusterConfigRecord {
    /// The cluster's routing mode; `tunnel` when absent or unknown.
    pub fn routing_mode(&self) -> RoutingMode {
        self.routing_mode
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or_default()
    }
}

/// How a cluster's nodes reach the pods of other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RoutingMode {
    /// Through the VXLAN tunnel, to every node.
    #[default]
    Tunnel,
    /// Unencapsulated to every node of this cluster and of other `native`
    /// clusters; the tunnel to the nodes of other clusters.
    Native,
    /// Unencapsulated to the nodes of this cluster the underlay routes; the
    /// tunnel to every other node.
    Hybrid,
}

impl RoutingMode {
    /// `tunnel`, `native` or `hybrid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Native => "native",
            Self::Hybrid => "hybrid",
        }
    }
}

impl std::fmt::Display for RoutingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for RoutingMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "tunnel" => Ok(Self::Tunnel),
            "native" => Ok(Self::Native),
            "hybrid" => Ok(Self::Hybrid),
            other => Err(format!(
                "unknown routing mode {other:?}: routingMode is one of tunnel, native, hybrid"
            )),
        }
    }
}

/// `clusters/<c>/nodes/<node>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Node name.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Addresses on the underlay network.
    pub underlay_ips: Vec<IpAddr>,
    /// Pod CIDRs assigned to the node.
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<ipnet::IpNet>,
    /// Where VXLAN packets for this node's pods go.
    pub tunnel_endpoint: IpAddr,
    /// Changes when the node reboots.
    #[serde(default)]
    pub boot_id: String,
    /// The node's WireGuard key and port, when it encrypts (absent from
    /// writers before it was added, and from nodes without encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguard>,
}

/// A named container port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
}

/// L4 protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// A protocol a newer writer added; ports with it are skipped.
    #[serde(other)]
    Other,
}

impl Protocol {
    /// A Kubernetes `protocol` field: absent means TCP, as the API defaults
    /// it; a value Kubernetes does not define is [`Protocol::Other`].
    pub fn from_kubernetes(field: Option<&str>) -> Self {
        match field {
            None | Some("TCP") => Self::Tcp,
            Some("UDP") => Self::Udp,
            Some("SCTP") => Self::Sctp,
            Some(_) => Self::Other,
        }
    }

    /// The Kubernetes spelling (`unknown` for [`Protocol::Other`]).
    pub fn as_kubernetes(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Other => "unknown",
        }
    }
}

/// `clusters/<c>/endpoints/<ip>`: one pod IP (ipcache entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointRecord {
    /// Pod IP.
    pub ip: IpAddr,
    /// Cluster name.
    pub cluster: String,
    /// Security identity.
    pub identity: u32,
    /// Node hosting the pod.
    pub node: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Named container ports.
    #[serde(default)]
    pub named_ports: BTreeMap<String, PortSpec>,
}

/// `clusters/<c>/identities/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    /// Identity number.
    pub id: u32,
    /// Cluster name.
    pub cluster: String,
    /// Labels, including `knit.dev/cluster` and the pod's namespace.
    pub labels: BTreeMap<String, String>,
}

pub use crate::wire_encryption::{NextWireguardKey, NodeWireguard, WireguardKey, WireguardTunnel};
pub use crate::wire_policy::{Affinity, Failover};

/// An affinity, `none` when a newer writer sent one this version lacks.
fn affinity_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Affinity, D::Error> {
    let text = String::deserialize(d)?;
    Ok(serde_json::from_value(serde_json::Value::String(text)).unwrap_or_default())
}

/// A Service port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port name (may be empty for a single-port Service).
    #[serde(default)]
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// One backend address with its ports by Service port name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Backend (pod) IP.
    pub ip: IpAddr,
    /// Target port per Service port name.
    pub ports: BTreeMap<String, u16>,
    /// Ready to receive traffic.
    pub ready: bool,
}

/// `clusters/<c>/services/<ns>/<name>`: a global service as one cluster sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRecord {
    /// Cluster name.
    pub cluster: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Service ports.
    pub ports: Vec<ServicePort>,
    /// The Service's ClusterIPs in this cluster: the VIPs local clients
    /// connect to.
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// This cluster's backends (empty when not exported).
    pub backends: Vec<Backend>,
    /// Backends are shared with peers.
    pub export: bool,
    /// Peers' backends are used here.
    pub import: bool,
    /// Preferred side.
    #[serde(deserialize_with = "affinity_or_none")]
    pub affinity: Affinity,
    /// Clusters in order of preference after the affinity's side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_clusters: Vec<String>,
    /// The only peer clusters whose backends this cluster imports (the
    /// GlobalServicePolicy's `clusters`); unset means every peer. Read by
    /// this cluster's agents from the local record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import_clusters: Option<Vec<String>>,
    /// When traffic moves on from the preferred clusters; unset is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,
    /// Set when a `ServiceExport` (Multi-Cluster Services API) exports the
    /// Service: what KEP-1645's conflict resolution compares.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_export: Option<ServiceExportFacts>,
    /// Set by the KVStoreMesh when the peer has been unreachable for longer
    /// than its grace period: agents must stop sending new connections here.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
}

/// `agent-status/<node>`: one agent's view of every peer, under the
/// agent's lease (it vanishes when the agent is gone).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusRecord {
    /// The agent's node.
    pub node: String,
    /// Per peer cluster: whether this node reaches it.
    #[serde(default)]
    pub peers: BTreeMap<String, AgentPeerView>,
    /// Policies this agent does not apply, each naming the policy and the
    /// field outside what Knit supports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_policies: Vec<String>,
    /// The node's WireGuard key and port, when it encrypts; the exporter
    /// copies them into the node's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<NodeWireguard>,
    /// Per remote node (`cluster/node`) this node has a WireGuard peer for:
    /// whether the tunnel is up and its last handshake.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub wireguard_tunnels: BTreeMap<String, WireguardTunnel>,
}

/// Whether one node reaches one peer: its data is synced in the local
/// kvstore and the data path to at least one of its nodes answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentPeerView {
    /// Data synced and data path answering.
    pub connected: bool,
    /// Why not, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// The peer's tunnel port, when it differs from this node's (the
    /// peer is then unreachable; its ClusterMeshPeer says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_port_mismatch: Option<u16>,
    /// The peer's encryption (`wireguard` or `none`, from its nodes' keys),
    /// when it differs from this node's (its ClusterMeshPeer says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_mismatch: Option<String>,
}

/// What a cluster's `ServiceExport` says of its Service, for KEP-1645:
/// the oldest export decides the type and session affinity of the
/// clusterset service, and the ports of every export are merged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportFacts {
    /// When the `ServiceExport` was created (Unix seconds).
    pub created_unix: i64,
    /// The Service has no ClusterIP (`ServiceImport` type `Headless`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// `ClientIP` or `None`.
    #[serde(default = "no_affinity")]
    pub session_affinity: String,
}

fn no_affinity() -> String {
    "None".to_owned()
}

/// `mesh-status/<peer>`: the KVStoreMesh's report on one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatusRecord {
    /// Peer cluster name.
    pub peer: String,
    /// A watch on the peer's etcd is established.
    pub connected: bool,
    /// Every kind's canary has been seen since the last connect.
    pub synced: bool,
    /// Mirrored records per kind (kinds this version does not know are
    /// skipped when reading a newer writer's report).
    #[serde(deserialize_with = "known_kinds")]
    pub counts: BTreeMap<Kind, u64>,
    /// Records rejected since start, per reason.
    pub rejected: BTreeMap<String, u64>,
    /// Unix seconds of the last completed initial sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_unix: Option<i64>,
    /// Unix seconds since which the peer has been unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since_unix: Option<i64>,
    /// Services are withdrawn (grace period exceeded).
    #[serde(default)]
    pub withdrawn: bool,
    /// Last problem, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Counts per kind, without the kinds this version does not know.
fn known_kinds<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<Kind, u64>, D::Error> {
    let all = BTreeMap::<String, u64>::deserialize(d)?;
    Ok(all
        .into_iter()
        .filter_map(|(k, n)| Some((Kind::parse(&k)?, n)))
        .collect())
}
