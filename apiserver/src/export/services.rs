//! The service records of an export: which Services are global (a
//! GlobalServicePolicy, the Cilium annotations or a ServiceExport), their
//! backends from EndpointSlices, and the records rendered one at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use knit_crds::mcs::SERVICE_NAME_LABEL;
use knit_crds::{ServicePolicy, policy_from_annotations};
use knit_kvstore::keys::{Kind, RelativeKey, cluster_prefix, local_service_key};
use knit_kvstore::records::{Backend, ServiceExportFacts, ServiceRecord};
use knit_sources::{ClusterState, EndpointSliceInfo, ServiceInfo, object_key};

use super::{LocalCluster, Record, json};

/// The service records of an [`ExportPlan`]: for every global Service its
/// `local/services/` record and, when exported, its published record; for
/// a clusterset service this cluster has no copy of, the local record that
/// gives its VIP. Rendered as they are taken.
pub struct ServiceRecords<'a> {
    cluster: String,
    prefix: String,
    state: &'a ClusterState,
    /// Services in the mesh, with the policy governing each and whether a
    /// GlobalServicePolicy (not only a ServiceExport) made it global.
    global: std::vec::IntoIter<(&'a ServiceInfo, ServicePolicy, bool)>,
    /// Derived Services whose clusterset service has no Service here.
    clusterset_only: std::vec::IntoIter<(&'a str, &'a str, &'a ServiceInfo)>,
    clusterset: BTreeMap<(&'a str, &'a str), &'a ServiceInfo>,
    slices: BTreeMap<(&'a str, &'a str), Vec<&'a EndpointSliceInfo>>,
    /// The published record of the service just rendered, not taken yet.
    queued: Option<Record>,
    /// Published service records.
    pub exported: usize,
}

impl<'a> ServiceRecords<'a> {
    pub(super) fn new(cluster: &LocalCluster, state: &'a ClusterState) -> Self {
        let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSliceInfo>> = BTreeMap::new();
        for slice in state.endpoint_slices.values() {
            slices
                .entry((slice.namespace.as_str(), slice.service.as_str()))
                .or_default()
                .push(slice);
        }
        let clusterset = clusterset_vips(state);
        let mut global = Vec::new();
        for service in state.services.values().filter(|s| !is_derived(s)) {
            let service_export = state
                .service_exports
                .get(&object_key(Some(&service.namespace), &service.name));
            let knit_policy = service_policy(state, service);
            let by_knit = knit_policy.is_some();
            if let Some(policy) = knit_policy.or_else(|| service_export.map(|_| exported_by_service_export()))
            {
                global.push((service, policy, by_knit));
            }
        }
        let serviced: BTreeSet<(&str, &str)> = global
            .iter()
            .map(|(s, _, _)| (s.namespace.as_str(), s.name.as_str()))
            .collect();
        let clusterset_only: Vec<_> = clusterset
            .iter()
            .filter(|(key, _)| !serviced.contains(*key))
            .map(|((ns, name), derived)| (*ns, *name, *derived))
            .collect();
        Self {
            exported: global.iter().filter(|(_, p, _)| p.export).count(),
            cluster: cluster.name.clone(),
            prefix: cluster_prefix(&cluster.name),
            state,
            global: global.into_iter(),
            clusterset_only: clusterset_only.into_iter(),
            clusterset,
            slices,
            queued: None,
        }
    }

    /// The local record of a global Service, and its published record.
    fn render(
        &self,
        service: &ServiceInfo,
        policy: &ServicePolicy,
        by_knit: bool,
    ) -> (Record, Option<Record>) {
        let (ns, name) = (&service.namespace, &service.name);
        let service_export = self.state.service_exports.get(&object_key(Some(ns), name));
        let record = ServiceRecord {
            cluster: self.cluster.clone(),
            namespace: ns.clone(),
            name: name.clone(),
            ports: service.ports.clone(),
            cluster_ips: service.cluster_ips.clone(),
            backends: backends(
                self.slices
                    .get(&(ns.as_str(), name.as_str()))
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            ),
            export: policy.export,
            import: policy.import,
            affinity: policy.affinity.into(),
            preferred_clusters: policy.preferred_clusters.clone(),
            import_clusters: policy.clusters.clone(),
            failover: (policy.failover != knit_crds::Failover::default()).then(|| policy.failover.into()),
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
        let derived = self.clusterset.get(&(ns.as_str(), name.as_str()));
        let mut local = record.clone();
        if !by_knit {
            local.cluster_ips.clear();
        }
        local
            .cluster_ips
            .extend(derived.map(|d| d.cluster_ips.clone()).unwrap_or_default());
        let published = policy.export.then(|| {
            (
                RelativeKey::Record(Kind::Services, format!("{ns}/{name}")).under(&self.prefix),
                json(&record),
            )
        });
        ((local_service_key(ns, name), json(&local)), published)
    }
}

impl Iterator for ServiceRecords<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(queued) = self.queued.take() {
            return Some(queued);
        }
        if let Some((service, policy, by_knit)) = self.global.next() {
            let (local, published) = self.render(service, &policy, by_knit);
            self.queued = published;
            return Some(local);
        }
        // A consumer without the Service: the derived Service alone gives the
        // clusterset VIP, served only by other clusters' backends.
        let (ns, name, derived) = self.clusterset_only.next()?;
        let record = ServiceRecord {
            cluster: self.cluster.clone(),
            namespace: ns.to_owned(),
            name: name.to_owned(),
            ports: derived.ports.clone(),
            cluster_ips: derived.cluster_ips.clone(),
            backends: Vec::new(),
            export: false,
            import: true,
            affinity: knit_kvstore::records::Affinity::None,
            preferred_clusters: Vec::new(),
            import_clusters: None,
            failover: None,
            service_export: None,
            withdrawn: false,
        };
        Some((local_service_key(ns, name), json(&record)))
    }
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
        .min_by_key(|p| knit_crds::Seniority::of(&p.metadata));
    if let Some(p) = governing {
        return Some(ServicePolicy::from(&p.spec));
    }
    policy_from_annotations(service.annotations.iter().map(|(k, v)| (k, v))).unwrap_or_else(|e| {
        tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "ignoring bad Cilium annotation");
        None
    })
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
