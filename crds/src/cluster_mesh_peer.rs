//! `ClusterMeshPeer`: one remote cluster this cluster meshes with.
//!
//! The spec is what a user commits to git (usually the output of
//! `knitctl peer export` run in the other cluster); the status is written only
//! by the operator. Schema rules reject bad input at the API server with a
//! message naming the field; the cross-field rules are CEL.

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as duplication.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest cluster name the mesh accepts (it becomes part of etcd user names
/// and identity labels).
pub const MAX_CLUSTER_NAME_LEN: usize = 32;
/// Highest cluster ID: identities are 24-bit with the cluster ID in the top 9 bits.
pub const MAX_CLUSTER_ID: u16 = 511;
/// Pattern every cluster name must match: a lower-case RFC 1123 DNS label.
pub const CLUSTER_NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Desired state of a peer cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "knit.dev",
    version = "v1alpha1",
    kind = "ClusterMeshPeer",
    doc = "A remote cluster this cluster meshes with: its name, ID, mesh apiserver endpoints and CA.",
    plural = "clustermeshpeers",
    shortname = "cmp",
    category = "knit",
    status = "ClusterMeshPeerStatus",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.clusterName"),
    printcolumn(name = "ID", type_ = "integer", json_path = ".spec.clusterID"),
    printcolumn(name = "Connected", type_ = "string", json_path = ".status.connected"),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Synced\")].status"
    ),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.remoteEndpoints"),
    printcolumn(name = "Services", type_ = "integer", json_path = ".status.remoteServices"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.caBundle) != has(self.caSecretRef)")
    .message("exactly one of spec.caBundle (the peer's CA certificate as PEM) or spec.caSecretRef (a Secret holding it) must be set"))]
#[serde(rename_all = "camelCase")]
pub struct ClusterMeshPeerSpec {
    /// Name of the peer cluster: a lower-case DNS label of at most 32
    /// characters, the same as the peer's own configured cluster name.
    #[schemars(length(min = 1, max = 32), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cluster_name: String,

    /// Numeric ID of the peer cluster (1–511), unique in the mesh. It forms
    /// the high bits of every identity the peer announces.
    #[serde(rename = "clusterID")]
    #[schemars(range(min = 1, max = 511))]
    pub cluster_id: u16,

    /// URLs of the peer's mesh apiserver (its peer front, port 2480 unless
    /// the peer chose another), e.g. `https://mesh.b.example.com:2480`.
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = "^https://[^/\\s]+(/.*)?$")))]
    pub endpoints: Vec<String>,

    /// PEM of the peer's mesh CA certificate. Public, safe to commit to git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub ca_bundle: Option<String>,

    /// A Secret holding the peer's mesh CA certificate, instead of `caBundle`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// Pod CIDRs the peer may announce (required: `knitctl peer export` in
    /// the peer writes them); records with IPs outside them are rejected.
    /// The operator refuses CIDRs that overlap this cluster's or another
    /// peer's, or that are shorter than /8 (IPv4) or /32 (IPv6).
    // Required in the CRD schema (`crate::crd_manifests`); defaulted when
    // read, so a peer stored before it was required still deserialises and
    // is reported in status instead of breaking the operator's list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(min = 1, max = 64),
        inner(regex(pattern = "^(([0-9]{1,3}\\.){3}[0-9]{1,3}/[0-9]{1,2}|[0-9a-fA-F:]+/[0-9]{1,3})$"))
    )]
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// Caps on what the peer may publish, per kind and in bytes; records
    /// beyond a cap are rejected and counted (`status.recordsOverLimit`). Defaults fit the datapath's
    /// maps many times over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PeerLimits>,
}

/// Caps on the records one peer may publish, per kind.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerLimits {
    /// Endpoints (pod IPs).
    #[serde(default = "default_endpoints_limit")]
    #[schemars(range(min = 1, max = 1048576))]
    pub endpoints: u32,
    /// Global services.
    #[serde(default = "default_services_limit")]
    #[schemars(range(min = 1, max = 262144))]
    pub services: u32,
    /// Identities (a cluster has at most 32,767).
    #[serde(default = "default_identities_limit")]
    #[schemars(range(min = 1, max = 32767))]
    pub identities: u32,
    /// Nodes.
    #[serde(default = "default_nodes_limit")]
    #[schemars(range(min = 1, max = 65536))]
    pub nodes: u32,
    /// Bytes (keys and values) of the peer's records of each kind
    /// together, so a peer with few but large records cannot fill the
    /// local etcd's quota (768 MiB), and a flood of one kind never crowds
    /// out another: a peer holds at most four times this. A record that
    /// would go past it is rejected and counted (`over_byte_budget`).
    #[serde(default = "default_bytes_limit")]
    #[schemars(range(min = 65536, max = 201326592))]
    pub bytes: u64,
}

fn default_endpoints_limit() -> u32 {
    131_072
}
fn default_services_limit() -> u32 {
    16_384
}
fn default_identities_limit() -> u32 {
    32_767
}
fn default_nodes_limit() -> u32 {
    5_000
}
/// 32 MiB: the default endpoint cap at about 200 bytes a record is 26 MiB.
fn default_bytes_limit() -> u64 {
    32 << 20
}

impl Default for PeerLimits {
    /// A peer may fill at most an eighth of the ipcache (2^20 entries) with
    /// endpoints, so the local cluster and other peers keep room.
    fn default() -> Self {
        Self {
            endpoints: default_endpoints_limit(),
            services: default_services_limit(),
            identities: default_identities_limit(),
            nodes: default_nodes_limit(),
            bytes: default_bytes_limit(),
        }
    }
}

/// Reference to one key of a Secret in the operator's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the namespace the operator runs in.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret; defaults to `ca.crt`.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// Observed state of a peer, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMeshPeerStatus {
    /// `CertificateReady`, `Connected`, `Synced` and `Ready`, keyed by type.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Agents of this cluster that reach the peer (its data synced, the
    /// data path to one of its nodes answering), of all agents, as `n/m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<String>,
    /// Nodes whose agent does not reach the peer, each with why (at most 20
    /// named; `knitctl status --nodes` lists all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes_not_connected: Vec<String>,
    /// Nodes the peer announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_nodes: Option<u64>,
    /// Endpoints (pod IPs) the peer announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_endpoints: Option<u64>,
    /// Global services the peer exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_services: Option<u64>,
    /// Security identities the peer announces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_identities: Option<u64>,
    /// When the mirror of the peer last completed a sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// When the client certificate used to reach the peer expires (it is
    /// renewed well before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_expiry: Option<Time>,
    /// Fingerprints of the peer's CAs this cluster trusts (from
    /// `spec.caBundle`): during the peer's CA roll, compare with the
    /// peer's `status.meshCA.published`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[serde(rename = "peerCAs")]
    pub peer_cas: Vec<String>,
    /// This cluster's own mesh CA, as peers see it, and where its roll stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "meshCA")]
    pub mesh_ca: Option<MeshCaStatus>,
    /// Records of the peer rejected for exceeding `spec.limits`, since the
    /// mesh apiserver started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_over_limit: Option<u64>,
    /// The last problem, in words a person can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// This cluster's mesh CA as peers see it: what `knitctl peer export`
/// publishes, which CA issues the certificates peers verify, and the roll's
/// step (`certificates.meshCARotation` in the operator's config).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MeshCaStatus {
    /// `Prepare`, `Switch` or `Complete`; unset when no roll is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<String>,
    /// Fingerprints of the published CAs (current, then next).
    #[serde(default)]
    pub published: Vec<String>,
    /// Fingerprint of the CA issuing the front's server certificate and the
    /// client certificates presented to peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuing: Option<String>,
    /// What to do next, in words.
    #[serde(default)]
    pub next_step: String,
}
