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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use knit_crds::mcs::SERVICE_NAME_LABEL;
use knit_crds::{ServicePolicy, policy_from_annotations};
use knit_kvstore::keys::{Kind, RelativeKey, cluster_prefix, local_service_key};
use knit_kvstore::records::{
    Backend, ClusterConfigRecord, EndpointRecord, IdentityRecord, NodeRecord, ServiceExportFacts,
    ServiceRecord,
};

use crate::identity::{IdentityAllocator, Labels};
use knit_sources::{ClusterState, EndpointSliceInfo, PodInfo, ServiceInfo, object_key};

/// This cluster's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCluster {
    /// Cluster name.
    pub name: String,
    /// Cluster ID.
    pub id: u16,
    /// Pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
}

pub use knit_kvstore::keys::local_prefix;

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

/// Computes everything this cluster publishes.
pub fn export(cluster: &LocalCluster, state: &ClusterState, ids: &mut IdentityAllocator) -> Exported {
    let prefix = cluster_prefix(&cluster.name);
    let mut out = Exported::default();
    let put = |out: &mut Exported, key: RelativeKey, value: Vec<u8>| {
        if let RelativeKey::Record(kind, _) = &key {
            *out.counts.entry(*kind).or_default() += 1;
        }
        out.published.insert(key.under(&prefix), value);
    };

    // No configured pod CIDRs: the Nodes' podCIDRs are the cluster's.
    let pod_cidrs: Vec<IpNet> = if cluster.pod_cidrs.is_empty() {
        let all: BTreeSet<IpNet> = state
            .nodes
            .values()
            .flat_map(|n| n.pod_cidrs.iter().copied())
            .collect();
        all.into_iter().collect()
    } else {
        cluster.pod_cidrs.clone()
    };
    let config = ClusterConfigRecord {
        name: cluster.name.clone(),
        id: cluster.id,
        pod_cidrs: pod_cidrs.clone(),
        capabilities: vec!["services-local-prefix".into()],
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
    let mut memo: HashMap<(*const Labels, *const u8), Option<u32>> = HashMap::new();
    for pod in state.pods.values().filter(|p| !p.ips.is_empty()) {
        let memo_key = (Arc::as_ptr(&pod.labels), Arc::as_ptr(&pod.namespace).cast::<u8>());
        let id = *memo
            .entry(memo_key)
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
            let record = EndpointRecord {
                ip: *ip,
                cluster: cluster.name.clone(),
                identity: id,
                node: pod.node.to_string(),
                namespace: pod.namespace.to_string(),
                pod: pod.name.clone(),
                named_ports: pod.named_ports.clone(),
            };
            put(
                &mut out,
                RelativeKey::Record(Kind::Endpoints, ip.to_string()),
                json(&record),
            );
        }
    }
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

    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSliceInfo>> = BTreeMap::new();
    for slice in state.endpoint_slices.values() {
        slices
            .entry((slice.namespace.as_str(), slice.service.as_str()))
            .or_default()
            .push(slice);
    }
    let clusterset = clusterset_vips(state);
    let mut serviced: BTreeSet<(&str, &str)> = BTreeSet::new();
    for service in state.services.values().filter(|s| !is_derived(s)) {
        let (ns, name) = (&service.namespace, &service.name);
        let service_export = state.service_exports.get(&object_key(Some(ns), name));
        let knit_policy = service_policy(state, service);
        let Some(policy) = knit_policy
            .clone()
            .or_else(|| service_export.map(|_| exported_by_service_export()))
        else {
            continue;
        };
        serviced.insert((ns, name));
        let record = ServiceRecord {
            cluster: cluster.name.clone(),
            namespace: ns.clone(),
            name: name.clone(),
            ports: service.ports.clone(),
            cluster_ips: service.cluster_ips.clone(),
            backends: backends(
                slices
                    .get(&(ns.as_str(), name.as_str()))
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            ),
            export: policy.export,
            import: policy.import,
            affinity: policy.affinity,
            preferred_clusters: policy.preferred_clusters.clone(),
            failover: (policy.failover != knit_crds::Failover::default()).then_some(policy.failover),
            service_export: service_export.map(|e| ServiceExportFacts {
                created_unix: e.created_unix,
                headless: service.cluster_ips.is_empty(),
                session_affinity: service.session_affinity.clone(),
            }),
            withdrawn: false,
        };
        // Which VIPs local clients reach the mesh through: a Knit global
        // Service's own ClusterIP, and the clusterset VIP. A Service only a
        // ServiceExport exports keeps its ClusterIP cluster-local, as MCS
        // says (kube-proxy serves it).
        let derived = clusterset.get(&(ns.as_str(), name.as_str()));
        let mut local = record.clone();
        if knit_policy.is_none() {
            local.cluster_ips.clear();
        }
        local
            .cluster_ips
            .extend(derived.map(|d| d.cluster_ips.clone()).unwrap_or_default());
        out.local.insert(local_service_key(ns, name), json(&local));
        if policy.export {
            put(
                &mut out,
                RelativeKey::Record(Kind::Services, format!("{ns}/{name}")),
                json(&record),
            );
        }
    }
    // A consumer without the Service: the derived Service alone gives the
    // clusterset VIP, served only by other clusters' backends.
    for ((ns, name), derived) in &clusterset {
        if serviced.contains(&(*ns, *name)) {
            continue;
        }
        let record = ServiceRecord {
            cluster: cluster.name.clone(),
            namespace: (*ns).to_owned(),
            name: (*name).to_owned(),
            ports: derived.ports.clone(),
            cluster_ips: derived.cluster_ips.clone(),
            backends: Vec::new(),
            export: false,
            import: true,
            affinity: knit_crds::Affinity::None,
            preferred_clusters: Vec::new(),
            failover: None,
            service_export: None,
            withdrawn: false,
        };
        out.local.insert(local_service_key(ns, name), json(&record));
    }
    out
}

/// Whether `service` is a derived Service the operator made for a
/// clusterset service (MCS), not a Service of its own.
fn is_derived(service: &ServiceInfo) -> bool {
    service.labels.contains_key(SERVICE_NAME_LABEL)
        && service
            .labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str)
            == Some("knit-operator")
}

/// Derived Services by the clusterset service they stand for.
fn clusterset_vips(state: &ClusterState) -> BTreeMap<(&str, &str), &ServiceInfo> {
    state
        .services
        .values()
        .filter(|s| is_derived(s))
        .filter_map(|s| {
            Some((
                (s.namespace.as_str(), s.labels.get(SERVICE_NAME_LABEL)?.as_str()),
                s,
            ))
        })
        .collect()
}

/// How a Service that only a `ServiceExport` exports takes part: exported,
/// imported, no affinity (MCS has none).
fn exported_by_service_export() -> ServicePolicy {
    ServicePolicy {
        export: true,
        import: true,
        affinity: knit_crds::Affinity::None,
        clusters: None,
        preferred_clusters: Vec::new(),
        failover: knit_crds::Failover::default(),
    }
}

/// The policy governing a Service: the oldest selecting GlobalServicePolicy
/// of its namespace, else its Cilium annotations.
pub fn service_policy(state: &ClusterState, service: &ServiceInfo) -> Option<ServicePolicy> {
    let (ns, name) = (service.namespace.as_str(), service.name.as_str());
    let governing = state
        .policies
        .values()
        .filter(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == ns
                && p.spec.selects(name, &service.labels)
        })
        .min_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        });
    if let Some(p) = governing {
        return Some(ServicePolicy::from(&p.spec));
    }
    policy_from_annotations(&service.annotations).unwrap_or_else(|e| {
        tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "ignoring bad Cilium annotation");
        None
    })
}

fn identity_labels(cluster: &LocalCluster, state: &ClusterState, pod: &PodInfo) -> Labels {
    let mut labels: Labels = (*pod.labels).clone();
    labels.remove("pod-template-hash");
    labels.insert("io.kubernetes.pod.namespace".into(), pod.namespace.to_string());
    if let Some(namespace) = state.namespaces.get(&*pod.namespace) {
        for (k, v) in namespace.metadata.labels.iter().flatten() {
            labels.insert(format!("io.cilium.k8s.namespace.labels.{k}"), v.clone());
        }
    }
    labels.insert(knit_crds::CLUSTER_LABEL.into(), cluster.name.clone());
    labels
}

fn backends(slices: &[&EndpointSliceInfo]) -> Vec<Backend> {
    let mut by_ip: BTreeMap<IpAddr, Backend> = BTreeMap::new();
    for slice in slices {
        for (ip, ready) in &slice.endpoints {
            let entry = by_ip.entry(*ip).or_insert_with(|| Backend {
                ip: *ip,
                ports: BTreeMap::new(),
                ready: *ready,
            });
            entry.ports.extend(slice.ports.clone());
            entry.ready &= *ready;
        }
    }
    by_ip.into_values().collect()
}

/// The record as JSON, in an allocation of its own size (the SyncStore
/// holds every record until it is written).
fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).unwrap_or_default();
    out.shrink_to_fit();
    out
}
