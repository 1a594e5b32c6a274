//! Pure export: a [`ClusterState`] becomes the key/value set this cluster
//! publishes. No I/O; the exporter loop hands the result to a SyncStore.
//!
//! - `clusters/<c>/config`, `nodes/<node>`, `endpoints/<ip>`,
//!   `identities/<id>` for every running pod IP inside the cluster's pod
//!   CIDRs, and `services/<ns>/<name>` for every *exported* global service;
//! - `local/services/<ns>/<name>` for every global service, exported or
//!   not, with its local backends: local agents read it, peers cannot (their
//!   etcd role covers only `clusters/<c>/`), so a non-exported service never
//!   leaves the cluster.
//!
//! A Service is global when the oldest GlobalServicePolicy of its namespace
//! selects it, or else when it carries the Cilium annotations.
//!
//! [`plan`] renders the few records eagerly and leaves the many (services,
//! [`ServiceRecords`], and endpoints, [`EndpointRecords`]) to iterators,
//! so the exporter can write a large cluster in parts; [`export`] renders
//! it all at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;
use knit_kvstore::keys::{Kind, RelativeKey, cluster_prefix};
use knit_kvstore::records::{ClusterConfigRecord, EndpointRecord, IdentityRecord, NodeRecord};

use crate::export::identity::{IdentityAllocator, Labels};
use crate::export::node_keys::NodeWireguards;
use knit_sources::{ClusterState, PodInfo};

/// This cluster's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCluster {
    /// Cluster name.
    pub name: String,
    /// Cluster ID.
    pub id: u16,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// UDP port of the cluster's tunnel, announced so peers can tell a
    /// mismatch.
    pub tunnel_port: Option<u16>,
    /// How the cluster's nodes reach other nodes' pods, announced so peers
    /// know which of its nodes they may reach without the tunnel.
    pub routing_mode: knit_kvstore::records::RoutingMode,
}

pub use knit_kvstore::keys::local_prefix;
pub use services::{ServiceRecords, service_policy};

pub mod exporter;
pub mod identity;
pub mod identity_store;
pub mod node_keys;
mod services;

/// One key and its value.
pub type Record = (String, Vec<u8>);

/// What one export produced.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exported {
    /// Keys under `clusters/<c>/` (without canaries).
    pub published: BTreeMap<String, Vec<u8>>,
    /// Keys under `local/`.
    pub local: BTreeMap<String, Vec<u8>>,
    /// Records per kind.
    pub counts: BTreeMap<Kind, usize>,
    /// Pods left out, with why (IP outside the pod CIDRs, identities exhausted).
    pub skipped_pods: Vec<String>,
}

/// One export, the service and endpoint records (nearly all of a large
/// cluster's records) still to be rendered: the exporter writes them in
/// parts, so a cluster's whole record set never sits in memory at once.
pub struct ExportPlan<'a> {
    /// Config, nodes and identities (`local` stays empty); `counts` counts
    /// the service and endpoint records too.
    pub exported: Exported,
    /// The service records, published and local, rendered as they are taken.
    pub services: ServiceRecords<'a>,
    /// The endpoint records, rendered as they are taken.
    pub endpoints: EndpointRecords<'a>,
}

/// Computes everything this cluster publishes.
pub fn export(
    cluster: &LocalCluster,
    state: &ClusterState,
    node_keys: &NodeWireguards,
    ids: &mut IdentityAllocator,
) -> Exported {
    let plan = plan(cluster, state, node_keys, ids);
    let mut out = plan.exported;
    let local = local_prefix();
    for (key, value) in plan.services {
        if key.starts_with(&local) {
            out.local.insert(key, value);
        } else {
            out.published.insert(key, value);
        }
    }
    out.published.extend(plan.endpoints);
    out
}

/// Computes everything this cluster publishes, the endpoint records lazily;
/// each node's record carries the WireGuard key its agent reports.
pub fn plan<'a>(
    cluster: &LocalCluster,
    state: &'a ClusterState,
    node_keys: &NodeWireguards,
    ids: &mut IdentityAllocator,
) -> ExportPlan<'a> {
    let prefix = cluster_prefix(&cluster.name);
    let mut out = Exported::default();
    let put = |out: &mut Exported, key: RelativeKey, value: Vec<u8>| {
        if let RelativeKey::Record(kind, _) = &key {
            *out.counts.entry(*kind).or_default() += 1;
        }
        out.published.insert(key.under(&prefix), value);
    };

    let pod_cidrs = cluster_pod_cidrs(cluster, state);
    let config = ClusterConfigRecord {
        name: cluster.name.clone(),
        id: cluster.id,
        pod_cidrs: pod_cidrs.clone(),
        capabilities: vec!["services-local-prefix".into()],
        tunnel_port: cluster.tunnel_port,
        routing_mode: Some(cluster.routing_mode.to_string()),
    };
    put(&mut out, RelativeKey::Config, json(&config));

    for node in state.nodes.values() {
        let Some(tunnel) = node.underlay_ips.first().copied() else {
            continue;
        };
        let record = NodeRecord {
            name: node.name.clone(),
            cluster: cluster.name.clone(),
            underlay_ips: node.underlay_ips.clone(),
            pod_cidrs: node.pod_cidrs.clone(),
            tunnel_endpoint: tunnel,
            boot_id: node.boot_id.clone(),
            wireguard: node_keys.get(&node.name).cloned(),
        };
        put(
            &mut out,
            RelativeKey::Record(Kind::Nodes, node.name.clone()),
            json(&record),
        );
    }

    let mut in_use = BTreeSet::new();
    // Pods with the same (interned) labels and namespace share an identity:
    // build their label set once.
    let mut memo: HashMap<SharedIdentityKey, Option<u32>> = HashMap::new();
    let mut endpoints = 0;
    for pod in state.pods.values().filter(|p| !p.ips.is_empty()) {
        let id = *memo
            .entry(shared_identity_key(pod))
            .or_insert_with(|| ids.allocate(&identity_labels(cluster, state, pod)));
        let Some(id) = id else {
            out.skipped_pods
                .push(format!("{}/{}: no free identity", pod.namespace, pod.name));
            continue;
        };
        for ip in &pod.ips {
            if !pod_cidrs.iter().any(|c| c.contains(ip)) {
                out.skipped_pods.push(format!(
                    "{}/{}: {ip} is outside the cluster's pod CIDRs",
                    pod.namespace, pod.name
                ));
                continue;
            }
            in_use.insert(id);
            endpoints += 1;
        }
    }
    out.counts.insert(Kind::Endpoints, endpoints);
    ids.retain_used(&in_use);
    for (id, labels) in ids.identities() {
        let record = IdentityRecord {
            id,
            cluster: cluster.name.clone(),
            labels: labels.clone(),
        };
        put(
            &mut out,
            RelativeKey::Record(Kind::Identities, id.to_string()),
            json(&record),
        );
    }

    let services = ServiceRecords::new(cluster, state);
    out.counts.insert(Kind::Services, services.exported);
    ExportPlan {
        exported: out,
        services,
        endpoints: EndpointRecords {
            prefix,
            cluster: cluster.name.clone(),
            pod_cidrs,
            pods: state.pods.values(),
            current: None,
            identities: memo,
        },
    }
}

/// Pods share an identity when they share their (interned) label set and
/// namespace: the two allocations' addresses.
/// The cluster's pod CIDRs: the configured ones, or when none are
/// configured the Nodes' podCIDRs.
fn cluster_pod_cidrs(cluster: &LocalCluster, state: &ClusterState) -> Vec<IpNet> {
    if cluster.pod_cidrs.is_empty() {
        let all: BTreeSet<IpNet> = state
            .nodes
            .values()
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .collect();
        all.into_iter().collect()
    } else {
        cluster.pod_cidrs.clone()
    }
}

/// The label sets of the pods [`plan`] publishes (an address inside the
/// cluster's pod CIDRs): what needs an identity number.
pub fn labels_in_use(cluster: &LocalCluster, state: &ClusterState) -> BTreeSet<Labels> {
    let pod_cidrs = cluster_pod_cidrs(cluster, state);
    let mut seen = HashMap::new();
    for pod in state.pods.values() {
        if pod.ips.iter().any(|ip| pod_cidrs.iter().any(|c| c.contains(ip))) {
            seen.entry(shared_identity_key(pod))
                .or_insert_with(|| identity_labels(cluster, state, pod));
        }
    }
    seen.into_values().collect()
}

type SharedIdentityKey = (usize, usize);

fn shared_identity_key(pod: &PodInfo) -> SharedIdentityKey {
    (
        Arc::as_ptr(&pod.labels) as usize,
        Arc::as_ptr(&pod.namespace).cast::<u8>() as usize,
    )
}

/// The endpoint records of an [`ExportPlan`], one `(key, value)` per pod IP
/// inside the cluster's pod CIDRs, rendered as they are taken.
pub struct EndpointRecords<'a> {
    prefix: String,
    cluster: String,
    pod_cidrs: Vec<IpNet>,
    pods: std::collections::btree_map::Values<'a, String, PodInfo>,
    /// The pod being rendered, its identity and its next IP.
    current: Option<(&'a PodInfo, u32, usize)>,
    identities: HashMap<SharedIdentityKey, Option<u32>>,
}

impl Iterator for EndpointRecords<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((pod, id, next)) = &mut self.current {
                while let Some(ip) = pod.ips.get(*next) {
                    *next += 1;
                    if !self.pod_cidrs.iter().any(|c| c.contains(ip)) {
                        continue;
                    }
                    let record = EndpointRecord {
                        ip: *ip,
                        cluster: self.cluster.clone(),
                        identity: *id,
                        node: pod.node.to_string(),
                        namespace: pod.namespace.to_string(),
                        pod: pod.name.clone(),
                        named_ports: pod.named_ports.clone(),
                    };
                    let key = RelativeKey::Record(Kind::Endpoints, ip.to_string()).under(&self.prefix);
                    return Some((key, json(&record)));
                }
                self.current = None;
            }
            let pod = self.pods.next()?;
            if pod.ips.is_empty() {
                continue;
            }
            if let Some(Some(id)) = self.identities.get(&shared_identity_key(pod)) {
                self.current = Some((pod, *id, 0));
            }
        }
    }
}

fn identity_labels(cluster: &LocalCluster, state: &ClusterState, pod: &PodInfo) -> Labels {
    let mut labels: Labels = (*pod.labels).clone();
    labels.remove("pod-template-hash");
    labels.insert(knit_crds::NAMESPACE_LABEL.into(), pod.namespace.to_string());
    if let Some(namespace) = state.namespaces.get(&*pod.namespace) {
        for (k, v) in namespace.metadata.labels.iter().flatten() {
            labels.insert(format!("{}{k}", knit_crds::NAMESPACE_LABELS_PREFIX), v.clone());
        }
    }
    labels.insert(knit_crds::CLUSTER_LABEL.into(), cluster.name.clone());
    labels
}

/// The record as JSON, in an allocation of its own size (the SyncStore
/// holds every record until it is written).
pub(crate) fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.shrink_to_fit();
    out
}
