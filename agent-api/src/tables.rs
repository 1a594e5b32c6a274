//! The datapath's tables as the agent serves them: read from the pinned
//! maps (what the kernel really holds), named from the agent's kvstore
//! index, and compared with what the agent rendered from the kvstore.
//! Every table carries its `differences`, one sentence each; an empty list
//! means the datapath holds exactly what the kvstore says.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A backend of a service frontend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Cluster of the pod at that address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `namespace/name` of the pod at that address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Whether the datapath holds it (a backend the kvstore lists but the
    /// datapath lacks is shown with `false`).
    pub in_datapath: bool,
}

/// One service frontend of the datapath.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    /// VIP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// `namespace/name` of the service, if the kvstore names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The affinity in effect (`local`, `remote`, `none`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Backends, in slot order, then those only the kvstore has.
    pub backends: Vec<Backend>,
}

impl ServiceEntry {
    /// Backends the datapath holds, per cluster (`?` for unknown).
    pub fn backends_per_cluster(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for b in self.backends.iter().filter(|b| b.in_datapath) {
            *out.entry(b.cluster.clone().unwrap_or_else(|| "?".into()))
                .or_default() += 1;
        }
        out
    }
}

/// `GET /v1/services`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceTable {
    /// Node that answered.
    pub node: String,
    /// Frontends, by VIP and port.
    pub services: Vec<ServiceEntry>,
    /// Where the datapath and the kvstore disagree.
    pub differences: Vec<String>,
}

/// An identity the datapath knows (from the ipcache and the endpoints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityEntry {
    /// The number.
    pub identity: u32,
    /// Its cluster (by the ID in its high bits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Its labels, as the kvstore has them.
    pub labels: BTreeMap<String, String>,
    /// Addresses the datapath maps to it.
    pub addresses: usize,
}

/// `GET /v1/identities`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityTable {
    /// Node that answered.
    pub node: String,
    /// Identities, by number.
    pub identities: Vec<IdentityEntry>,
    /// Where the datapath and the kvstore disagree.
    pub differences: Vec<String>,
}

/// One ipcache entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpcacheEntry {
    /// `address/length`.
    pub prefix: String,
    /// Identity of whoever sends from it.
    pub identity: u32,
    /// The node's underlay address; none on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<Ipv4Addr>,
    /// Where the entry comes from: `cluster/node` for a pod CIDR, the pod
    /// (`cluster namespace/name`) for an address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// `GET /v1/ipcache`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpcacheTable {
    /// Node that answered.
    pub node: String,
    /// Entries, by prefix.
    pub entries: Vec<IpcacheEntry>,
    /// Where the datapath and the kvstore disagree.
    pub differences: Vec<String>,
}

/// A pod attached on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointEntry {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Host side of its veth (index).
    pub ifindex: u32,
    /// Its identity.
    pub identity: u32,
    /// `namespace/name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// A NetworkPolicy selects it for ingress.
    pub ingress_enforced: bool,
    /// A NetworkPolicy selects it for egress.
    pub egress_enforced: bool,
}

/// `GET /v1/endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointTable {
    /// Node that answered.
    pub node: String,
    /// Pods, by address.
    pub endpoints: Vec<EndpointEntry>,
    /// Where the datapath and the kvstore disagree.
    pub differences: Vec<String>,
}

/// One allow or deny entry of a pod's policy, as the datapath holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLine {
    /// `ingress` (the peer is the source) or `egress` (the destination).
    pub direction: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// The peer: `identity <n>`, `any`, or a prefix.
    pub peer: String,
    /// The peer identity's cluster and labels, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_cluster: Option<String>,
    /// The peer identity's labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peer_labels: BTreeMap<String, String>,
    /// Destination port (0: any).
    pub port: u16,
    /// `TCP`, `UDP`, or `any`.
    pub protocol: String,
    /// The policies that produce it (`namespace/name`; Cilium's marked so).
    pub policies: Vec<String>,
    /// Whether the datapath holds it (an entry the policies produce but
    /// the map lacks is shown with `false`).
    pub in_datapath: bool,
}

/// `GET /v1/policy?pod=<namespace>/<name>`: what applies to one pod of
/// this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTable {
    /// Node that answered.
    pub node: String,
    /// `namespace/name`.
    pub pod: String,
    /// Its address.
    pub ip: Option<Ipv4Addr>,
    /// The datapath holds only what an entry allows, into the pod.
    pub ingress_enforced: bool,
    /// ...and out of it.
    pub egress_enforced: bool,
    /// The entries, ingress first.
    pub entries: Vec<PolicyLine>,
    /// Where the datapath and the policies disagree.
    pub differences: Vec<String>,
}
