//! The agent's view of the mesh, built from the local etcd's keys: its own
//! cluster (`clusters/<own>/`), its non-exported services (`local/services/`)
//! and every peer the KVStoreMesh mirrors (`cache/<peer>/`).
//!
//! [`MeshIndex::apply`] takes one watch event at a time and never does I/O;
//! a value that does not parse is counted per reason and skipped, and the
//! previous value of its key is dropped (it is no longer trustworthy).
//! A peer's endpoints and services are used only after its `synced`
//! canaries arrive, so a half-mirrored peer never shrinks a service.

use std::collections::{BTreeMap, BTreeSet};

use knit_kvstore::keys::{Key, Kind, RelativeKey, Scope};
use knit_kvstore::records::{ClusterConfigRecord, EndpointRecord, IdentityRecord, NodeRecord, ServiceRecord};
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
        let (key, value) = match event {
            WatchEvent::Upsert { key, value } => (key, Some(value.as_slice())),
            WatchEvent::Delete { key } => (key, None),
            WatchEvent::ListDone | WatchEvent::Disconnected { .. } => return false,
        };
        match self.target(key) {
            None => false,
            Some(Target::LocalService(name)) => {
                let parsed = value.map(|v| parse::<ServiceRecord>(v, &mut self.rejected));
                set(&mut self.local_services, name, parsed)
            }
            Some(Target::Cluster(peer, rel)) => {
                let view = match &peer {
                    None => &mut self.local,
                    Some(p) => self.peers.entry(p.clone()).or_default(),
                };
                let rejected = &mut self.rejected;
                let cluster = peer.as_deref().unwrap_or(&self.local_cluster);
                let changed = apply_to_view(view, cluster, rel, value, rejected);
                if let Some(p) = &peer
                    && value.is_none()
                    && self.peers.get(p).is_some_and(|v| *v == ClusterView::default())
                {
                    self.peers.remove(p);
                }
                changed
            }
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
