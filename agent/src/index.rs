//! The agent's view of the mesh, built from the local etcd's keys: its own
//! cluster (`clusters/<own>/`), its non-exported services (`local/services/`)
//! and every peer the KVStoreMesh mirrors (`cache/<peer>/`).
//!
//! [`MeshIndex::apply`] takes one watch event at a time and never does I/O,
//! and says what it changed ([`IndexChange`]) so the render can redo only
//! that part;
//! a value that does not parse is counted per reason and skipped, and the
//! previous value of its key is dropped (it is no longer trustworthy).
//! A peer's endpoints and services are used only after its `synced`
//! canaries arrive, so a half-mirrored peer never shrinks a service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use knit_kvstore::keys::{Key, Kind, RelativeKey, Scope};
use knit_kvstore::records::{
    ClusterConfigRecord, EndpointRecord, IdentityRecord, NodeRecord, PortSpec, ServiceRecord,
};
use knit_kvstore::validate::Rejection;
use knit_kvstore::watch_store::WatchEvent;
use serde::de::DeserializeOwned;

/// Everything known about one cluster (this one or a peer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// `config`.
    pub config: Option<ClusterConfigRecord>,
    /// Kinds whose canary has been seen.
    pub synced: BTreeSet<Kind>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Endpoints by IP.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// Identities by number.
    pub identities: BTreeMap<String, IdentityRecord>,
    /// Exported services by `namespace/name`.
    pub services: BTreeMap<String, ServiceRecord>,
}

impl ClusterView {
    /// Whether `kind` has completed its initial sync.
    pub fn is_synced(&self, kind: Kind) -> bool {
        self.synced.contains(&kind)
    }
}

/// The mesh as this node's agent knows it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MeshIndex {
    local_cluster: String,
    /// This cluster.
    pub local: ClusterView,
    /// Peers by name.
    pub peers: BTreeMap<String, ClusterView>,
    /// Every global service of this cluster, exported or not, by `namespace/name`.
    pub local_services: BTreeMap<String, ServiceRecord>,
    /// Values skipped, per reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// This cluster's endpoints per namespace (what a clusterwide policy
    /// spans), kept so no pass has to count them.
    local_namespaces: BTreeMap<String, usize>,
}

/// What one event changed, as narrowly as the render can use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexChange {
    /// An endpoint (of any cluster) whose record name is its IP changed,
    /// and nothing a policy reads (named ports, the namespaces this
    /// cluster's endpoints use) changed with it: only the route of `ip`.
    EndpointRoute(IpAddr),
    /// A service record (this cluster's or a peer's) of `namespace/name`.
    Service(String),
    /// Anything else: the render starts over.
    Other,
}

enum Target {
    Cluster(Option<String>, RelativeKey),
    LocalService(String),
}

impl MeshIndex {
    /// An empty index for the agent of cluster `local_cluster`.
    pub fn new(local_cluster: impl Into<String>) -> Self {
        Self {
            local_cluster: local_cluster.into(),
            ..Self::default()
        }
    }

    /// This cluster's name.
    pub fn local_cluster(&self) -> &str {
        &self.local_cluster
    }

    fn target(&self, key: &str) -> Option<Target> {
        match Key::parse(key)? {
            Key::LocalService(name) => Some(Target::LocalService(name)),
            Key::Scoped(Scope::Cluster(c), rel) => {
                (c == self.local_cluster).then_some(Target::Cluster(None, rel))
            }
            Key::Scoped(Scope::Cache(p), rel) => {
                (p != self.local_cluster).then_some(Target::Cluster(Some(p), rel))
            }
            Key::Heartbeat | Key::MeshStatus(_) | Key::AgentStatus(_) => None,
        }
    }

    /// Applies one watch event; `true` when the view changed.
    pub fn apply(&mut self, event: &WatchEvent) -> bool {
        self.apply_change(event).is_some()
    }

    /// Every pod CIDR (IPv4) and node address of the mesh, this cluster's
    /// and every peer's, as CIDR strings: what Cilium's `world` is not.
    pub fn mesh_prefixes(&self) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for view in std::iter::once(&self.local).chain(self.peers.values()) {
            for node in view.nodes.values() {
                for cidr in &node.pod_cidrs {
                    if let ipnet::IpNet::V4(net) = cidr {
                        out.insert(net.trunc().to_string());
                    }
                }
                if let std::net::IpAddr::V4(addr) = node.tunnel_endpoint
                    && !addr.is_unspecified()
                {
                    out.insert(format!("{addr}/32"));
                }
            }
        }
        out.into_iter().collect()
    }

    /// This cluster's namespaces that have endpoints.
    pub fn local_namespaces(&self) -> impl Iterator<Item = &str> {
        self.local_namespaces.keys().map(String::as_str)
    }

    /// Applies one watch event and says what changed (`None`: nothing).
    pub fn apply_change(&mut self, event: &WatchEvent) -> Option<IndexChange> {
        let (key, value) = match event {
            WatchEvent::Upsert { key, value } => (key, Some(value.as_slice())),
            WatchEvent::Delete { key } => (key, None),
            WatchEvent::ListDone | WatchEvent::Disconnected { .. } => return None,
        };
        match self.target(key)? {
            Target::LocalService(name) => {
                let parsed = value.map(|v| parse::<ServiceRecord>(v, &mut self.rejected));
                set(&mut self.local_services, name.clone(), parsed).then_some(IndexChange::Service(name))
            }
            Target::Cluster(peer, RelativeKey::Record(Kind::Endpoints, name)) => {
                self.apply_endpoint(peer, name, value)
            }
            Target::Cluster(peer, RelativeKey::Record(Kind::Services, name)) => {
                let view = match &peer {
                    None => &mut self.local,
                    Some(p) => self.peers.entry(p.clone()).or_default(),
                };
                let parsed = value.map(|v| parse(v, &mut self.rejected));
                let changed = set(&mut view.services, name.clone(), parsed);
                if value.is_none() {
                    self.drop_empty_peer(peer.as_deref());
                }
                changed.then_some(IndexChange::Service(name))
            }
            Target::Cluster(peer, rel) => {
                let view = match &peer {
                    None => &mut self.local,
                    Some(p) => self.peers.entry(p.clone()).or_default(),
                };
                let rejected = &mut self.rejected;
                let cluster = peer.as_deref().unwrap_or(&self.local_cluster);
                let changed = apply_to_view(view, cluster, rel, value, rejected);
                if value.is_none() {
                    self.drop_empty_peer(peer.as_deref());
                }
                changed.then_some(IndexChange::Other)
            }
        }
    }

    /// An endpoint record of this cluster (`peer` = `None`) or a peer.
    fn apply_endpoint(
        &mut self,
        peer: Option<String>,
        name: String,
        value: Option<&[u8]>,
    ) -> Option<IndexChange> {
        let view = match &peer {
            None => &mut self.local,
            Some(p) => self.peers.entry(p.clone()).or_default(),
        };
        let parsed = value.map(|v| parse::<EndpointRecord>(v, &mut self.rejected));
        let old = view.endpoints.get(&name).cloned();
        let changed = set(&mut view.endpoints, name.clone(), parsed);
        let new = view.endpoints.get(&name).cloned();
        if value.is_none() {
            self.drop_empty_peer(peer.as_deref());
        }
        if !changed {
            return None;
        }
        let mut namespaces_changed = false;
        if peer.is_none() {
            if let Some(old) = &old {
                namespaces_changed |= self.count_namespace(&old.namespace, false);
            }
            if let Some(new) = &new {
                namespaces_changed |= self.count_namespace(&new.namespace, true);
            }
        }
        fn ports(e: &Option<EndpointRecord>) -> Option<&BTreeMap<String, PortSpec>> {
            e.as_ref().map(|e| &e.named_ports).filter(|p| !p.is_empty())
        }
        let named_by_ip = |e: &Option<EndpointRecord>| e.as_ref().is_none_or(|e| e.ip.to_string() == name);
        let ip = name.parse::<IpAddr>().ok();
        match ip {
            Some(ip)
                if !namespaces_changed
                    && ports(&old) == ports(&new)
                    && named_by_ip(&old)
                    && named_by_ip(&new) =>
            {
                Some(IndexChange::EndpointRoute(ip))
            }
            _ => Some(IndexChange::Other),
        }
    }

    /// Counts one local endpoint in or out of `namespace`; `true` when the
    /// namespace appeared or disappeared.
    fn count_namespace(&mut self, namespace: &str, add: bool) -> bool {
        if add {
            let n = self.local_namespaces.entry(namespace.to_owned()).or_default();
            *n += 1;
            *n == 1
        } else {
            let Some(n) = self.local_namespaces.get_mut(namespace) else {
                return false;
            };
            *n -= 1;
            if *n == 0 {
                self.local_namespaces.remove(namespace);
                return true;
            }
            false
        }
    }

    /// Forgets a peer none of whose records is left.
    fn drop_empty_peer(&mut self, peer: Option<&str>) {
        if let Some(p) = peer
            && self.peers.get(p).is_some_and(|v| *v == ClusterView::default())
        {
            self.peers.remove(p);
        }
    }
}

/// An identity's labels name its cluster in both spellings
/// (`knit.dev/cluster`, Cilium's `io.cilium.k8s.policy.cluster`), set from
/// the cluster the record was verified to come from: a value the writer
/// put there (a pod label, say) is never trusted.
fn with_cluster(mut record: IdentityRecord, cluster: &str) -> IdentityRecord {
    for label in [knit_crds::CLUSTER_LABEL, knit_crds::CILIUM_CLUSTER_LABEL] {
        record.labels.insert(label.to_owned(), cluster.to_owned());
    }
    record
}

fn parse<T: DeserializeOwned>(value: &[u8], rejected: &mut BTreeMap<&'static str, u64>) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            *rejected.entry(Rejection::MalformedValue.as_str()).or_default() += 1;
            tracing::warn!(error = %e, "skipping a malformed kvstore value");
            None
        }
    }
}

/// Stores (`Some(Some(v))`), drops (`Some(None)`: unparsable) or deletes
/// (`None`) one entry.
fn set<T: PartialEq>(map: &mut BTreeMap<String, T>, name: String, value: Option<Option<T>>) -> bool {
    match value {
        Some(Some(v)) if map.get(&name) == Some(&v) => false,
        Some(Some(v)) => {
            map.insert(name, v);
            true
        }
        _ => map.remove(&name).is_some(),
    }
}

/// Applies one record to the view of `cluster` (the local cluster's name,
/// or the peer whose mirror the key is in: verified by the KVStoreMesh).
fn apply_to_view(
    view: &mut ClusterView,
    cluster: &str,
    rel: RelativeKey,
    value: Option<&[u8]>,
    rejected: &mut BTreeMap<&'static str, u64>,
) -> bool {
    match rel {
        RelativeKey::Config => {
            let new = value.and_then(|v| parse::<ClusterConfigRecord>(v, rejected));
            let changed = view.config != new;
            view.config = new;
            changed
        }
        RelativeKey::Synced(kind) => match value {
            Some(_) => view.synced.insert(kind),
            None => view.synced.remove(&kind),
        },
        RelativeKey::Record(kind, name) => match kind {
            Kind::Nodes => set(&mut view.nodes, name, value.map(|v| parse(v, rejected))),
            Kind::Endpoints => set(&mut view.endpoints, name, value.map(|v| parse(v, rejected))),
            Kind::Identities => {
                let record =
                    value.map(|v| parse::<IdentityRecord>(v, rejected).map(|r| with_cluster(r, cluster)));
                set(&mut view.identities, name, record)
            }
            Kind::Services => set(&mut view.services, name, value.map(|v| parse(v, rejected))),
        },
    }
}

/// Test helper: applies `value` at `knit/v1/<key>` as the watch would.
#[cfg(test)]
pub(crate) fn put(index: &mut MeshIndex, key: &str, value: serde_json::Value) {
    index.apply(&WatchEvent::Upsert {
        key: format!("knit/v1/{key}"),
        value: serde_json::to_vec(&value).unwrap(),
    });
}
