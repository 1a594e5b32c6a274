//! Multi-Cluster Services (KEP-1645), pure: the exported services of every
//! cluster (the `ServiceRecord`s a `ServiceExport` produced, read from the
//! local kvstore) in; the clusterset services, the derived Services and
//! `ServiceImport`s this cluster should hold, and its `ServiceExport`
//! conditions out.
//!
//! Conflicts resolve as the KEP says: the oldest export (then the cluster
//! name) decides the type and the session affinity; ports are merged by
//! name, and a port another export defines differently keeps the oldest
//! definition. An export that disagrees is reported in its own cluster's
//! `ServiceExport` condition `Conflict`; it is still served.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use knit_crds::mcs::{
    SERVICE_NAME_LABEL, ServiceImport, ServiceImportPorts, ServiceImportSpec, ServiceImportStatus,
    ServiceImportStatusClusters, ServiceImportType,
};
use knit_kvstore::records::{ServicePort, ServiceRecord};
use serde_json::json;

use crate::conditions::Desired;
use crate::{Error, Result, names};

/// One service of the clusterset: what every exporting cluster agrees on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClustersetService {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Exporting clusters, oldest export first.
    pub clusters: Vec<String>,
    /// Ports merged across the exports.
    pub ports: Vec<ServicePort>,
    /// The oldest export's Service has no ClusterIP.
    pub headless: bool,
    /// The oldest export's session affinity.
    pub session_affinity: String,
    /// Per exporting cluster that disagrees with the oldest export: how.
    pub conflicts: BTreeMap<String, String>,
}

/// Groups the exported services of every cluster into clusterset services,
/// sorted by namespace and name. Records without a `ServiceExport` (Knit
/// global services) take no part.
pub fn clusterset_services(records: &[ServiceRecord]) -> Vec<ClustersetService> {
    let mut groups: BTreeMap<(&str, &str), Vec<&ServiceRecord>> = BTreeMap::new();
    for r in records.iter().filter(|r| r.service_export.is_some()) {
        groups.entry((&r.namespace, &r.name)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((namespace, name), mut exports)| {
            exports.sort_by_key(|r| {
                (
                    r.service_export.as_ref().map(|f| f.created_unix),
                    r.cluster.clone(),
                )
            });
            let oldest = exports[0];
            let facts = oldest.service_export.clone().unwrap_or_default();
            let mut service = ClustersetService {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                clusters: Vec::new(),
                ports: oldest.ports.clone(),
                headless: facts.headless,
                session_affinity: facts.session_affinity.clone(),
                conflicts: BTreeMap::new(),
            };
            for r in &exports {
                if !service.clusters.contains(&r.cluster) {
                    service.clusters.push(r.cluster.clone());
                }
                if let Some(why) = merge(&mut service, r, &oldest.cluster) {
                    service.conflicts.insert(r.cluster.clone(), why);
                }
            }
            service
        })
        .collect()
}

/// Merges one export into `service`; how it conflicts with the oldest, if it does.
fn merge(service: &mut ClustersetService, export: &ServiceRecord, oldest: &str) -> Option<String> {
    let facts = export.service_export.clone().unwrap_or_default();
    let mut why = Vec::new();
    if facts.headless != service.headless {
        why.push(format!(
            "type {} differs from the oldest export's (cluster {oldest}: {})",
            import_type(facts.headless),
            import_type(service.headless)
        ));
    }
    if facts.session_affinity != service.session_affinity {
        why.push(format!(
            "sessionAffinity {} differs from the oldest export's (cluster {oldest}: {})",
            facts.session_affinity, service.session_affinity
        ));
    }
    for port in &export.ports {
        match service.ports.iter().find(|p| p.name == port.name) {
            Some(p) if (p.port, p.protocol) != (port.port, port.protocol) => why.push(format!(
                "port {:?} is {}/{} here but {}/{} in the oldest export (cluster {oldest})",
                port.name,
                port.port,
                port.protocol.as_kubernetes(),
                p.port,
                p.protocol.as_kubernetes()
            )),
            Some(_) => {}
            None => service.ports.push(port.clone()),
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn import_type(headless: bool) -> &'static str {
    if headless { "Headless" } else { "ClusterSetIP" }
}

/// Name of the derived Service of `name`: `derived-` and 10 hex digits of
/// its SHA-256, like Cilium's, so it never clashes with a user's Service.
pub fn derived_service_name(name: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hex: String = digest.as_ref()[..5].iter().map(|b| format!("{b:02x}")).collect();
    format!("derived-{hex}")
}

/// The derived Service of a ClusterSetIP service: selector-less ClusterIP
/// with the merged ports, labelled with the service's name. Its ClusterIP
/// is the clusterset VIP (`cluster_ip` fixes it, for sites without
/// Kubernetes' allocator). `None` for a headless service (no VIP).
pub fn derived_service(service: &ClustersetService, cluster_ip: Option<&str>) -> Result<Option<Service>> {
    if service.headless {
        return Ok(None);
    }
    let mut labels = names::managed_labels("mcs");
    labels.insert(SERVICE_NAME_LABEL.to_owned(), service.name.clone());
    let ports: Vec<serde_json::Value> = service
        .ports
        .iter()
        .map(|p| json!({ "name": p.name, "port": p.port, "protocol": p.protocol.as_kubernetes() }))
        .collect();
    let mut spec = json!({
        "type": "ClusterIP",
        "ports": ports,
        "sessionAffinity": service.session_affinity,
    });
    if let Some(ip) = cluster_ip {
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    }
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": derived_service_name(&service.name),
            "namespace": service.namespace,
            "labels": labels,
        },
        "spec": spec,
    });
    serde_json::from_value(value)
        .map(Some)
        .map_err(|source| Error::RenderObject {
            kind: "Service",
            source,
        })
}

/// The `ServiceImport` of a clusterset service, with the clusterset VIP
/// (`ips`, the derived Service's ClusterIP once allocated) and the
/// exporting clusters in status.
pub fn service_import(service: &ClustersetService, ips: Vec<String>) -> ServiceImport {
    let mut import = ServiceImport::new(
        &service.name,
        ServiceImportSpec {
            ips: (!ips.is_empty()).then_some(ips),
            ports: service
                .ports
                .iter()
                .map(|p| ServiceImportPorts {
                    app_protocol: None,
                    name: (!p.name.is_empty()).then(|| p.name.clone()),
                    port: i32::from(p.port),
                    protocol: Some(p.protocol.as_kubernetes().to_owned()),
                })
                .collect(),
            session_affinity: Some(service.session_affinity.clone()),
            session_affinity_config: None,
            r#type: if service.headless {
                ServiceImportType::Headless
            } else {
                ServiceImportType::ClusterSetIp
            },
        },
    );
    import.metadata.namespace = Some(service.namespace.clone());
    import.metadata.labels = Some(names::managed_labels("mcs"));
    import.status = Some(ServiceImportStatus {
        clusters: Some(
            service
                .clusters
                .iter()
                .map(|c| ServiceImportStatusClusters { cluster: c.clone() })
                .collect(),
        ),
    });
    import
}

/// The clusterset services this cluster should import: those whose
/// namespace exists here.
pub fn imported<'a>(
    services: &'a [ClustersetService],
    namespaces: &BTreeSet<String>,
) -> impl Iterator<Item = &'a ClustersetService> {
    services.iter().filter(|s| namespaces.contains(&s.namespace))
}

/// The conditions of one of this cluster's `ServiceExport`s (`Valid`,
/// `Conflict`, `Ready`), from what this cluster exported (`exported`: its
/// record reached the kvstore, which only happens when the Service exists)
/// and the clusterset service it joined. [`crate::conditions::settle`]
/// gives them times.
pub fn export_conditions(
    cluster: &str,
    namespace: &str,
    name: &str,
    exported: bool,
    clusterset: Option<&ClustersetService>,
) -> Vec<Desired> {
    let valid = if exported {
        Desired::new(
            "Valid",
            "True",
            "ServiceFound",
            format!("Service {namespace}/{name} is exported"),
        )
    } else {
        Desired::new(
            "Valid",
            "False",
            "NoService",
            format!("Service {namespace}/{name} does not exist here; create it or delete this ServiceExport"),
        )
    };
    let conflict = match clusterset.and_then(|s| s.conflicts.get(cluster)) {
        Some(why) => Desired::new("Conflict", "True", "ExportConflict", why.clone()),
        None => Desired::new(
            "Conflict",
            "False",
            "NoConflict",
            "no conflict with other exports",
        ),
    };
    let ready = match clusterset {
        Some(s) if exported && s.clusters.iter().any(|c| c == cluster) => Desired::new(
            "Ready",
            "True",
            "Exported",
            format!("exported to the clusterset with {}", s.clusters.join(", ")),
        ),
        _ => Desired::new("Ready", "False", "Pending", "not exported yet"),
    };
    vec![valid, conflict, ready]
}

/// For sites without Kubernetes (`knitctl mcs render`): the derived
/// Service and the `ServiceImport` of every clusterset service whose
/// namespace is in `namespaces`, one YAML file each (`mcs-<ns>-<name>.yaml`).
/// Clusterset VIPs come from `cidr`, each at a place its name hashes to
/// (the next free one on a clash), so a service keeps its VIP while the set
/// stays the same.
pub fn site_manifests(
    services: &[ClustersetService],
    namespaces: &BTreeSet<String>,
    cidr: ipnet::Ipv4Net,
) -> Result<BTreeMap<String, String>> {
    let hosts: Vec<std::net::Ipv4Addr> = cidr.hosts().collect();
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for service in imported(services, namespaces) {
        let mut docs = Vec::new();
        let mut ips = Vec::new();
        if !service.headless {
            let key = format!("{}/{}", service.namespace, service.name);
            let start = (knit_kvstore::fingerprint(key.as_bytes()) % hosts.len().max(1) as u64) as usize;
            let Some(ip) = (0..hosts.len())
                .map(|i| hosts[(start + i) % hosts.len()])
                .find(|ip| !taken.contains(ip))
            else {
                return Err(Error::InvalidConfig {
                    field: "--clusterset-cidr",
                    problem: format!("{cidr} has no address left for {key}; use a larger range"),
                });
            };
            taken.insert(ip);
            ips.push(ip.to_string());
            if let Some(derived) = derived_service(service, Some(&ip.to_string()))? {
                docs.push(
                    serde_saphyr::to_string(&derived).map_err(|source| Error::Serialize {
                        what: "a derived Service",
                        source,
                    })?,
                );
            }
        }
        let import = service_import(service, ips);
        docs.push(
            serde_saphyr::to_string(&import).map_err(|source| Error::Serialize {
                what: "a ServiceImport",
                source,
            })?,
        );
        out.insert(
            format!("mcs-{}-{}.yaml", service.namespace, service.name),
            docs.join("---\n"),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use knit_kvstore::records::{Protocol, ServiceExportFacts};

    use super::*;

    fn export(cluster: &str, created: i64, ports: &[(&str, u16, Protocol)], affinity: &str) -> ServiceRecord {
        ServiceRecord {
            cluster: cluster.into(),
            namespace: "shop".into(),
            name: "web".into(),
            ports: ports
                .iter()
                .map(|(n, p, proto)| ServicePort {
                    name: (*n).into(),
                    port: *p,
                    protocol: *proto,
                })
                .collect(),
            cluster_ips: vec![],
            backends: vec![],
            export: true,
            import: true,
            affinity: Default::default(),
            preferred_clusters: vec![],
            import_clusters: None,
            failover: None,
            service_export: Some(ServiceExportFacts {
                created_unix: created,
                headless: false,
                session_affinity: affinity.into(),
            }),
            withdrawn: false,
        }
    }

    #[test]
    fn the_oldest_export_wins_and_ports_merge_by_name() {
        let records = [
            export(
                "cluster-b",
                200,
                &[("http", 80, Protocol::Tcp), ("metrics", 9090, Protocol::Tcp)],
                "None",
            ),
            export("cluster-a", 100, &[("http", 80, Protocol::Tcp)], "None"),
            export("cluster-c", 300, &[("http", 8080, Protocol::Tcp)], "ClientIP"),
        ];
        let services = clusterset_services(&records);
        assert_eq!(services.len(), 1);
        let s = &services[0];
        assert_eq!(s.clusters, ["cluster-a", "cluster-b", "cluster-c"]);
        let ports: Vec<(&str, u16)> = s.ports.iter().map(|p| (p.name.as_str(), p.port)).collect();
        assert_eq!(ports, [("http", 80), ("metrics", 9090)]);
        assert_eq!(s.session_affinity, "None");
        assert_eq!(s.conflicts.keys().collect::<Vec<_>>(), ["cluster-c"]);
        let why = &s.conflicts["cluster-c"];
        assert!(
            why.contains("sessionAffinity ClientIP") && why.contains("port \"http\" is 8080/TCP"),
            "{why}"
        );

        let c = export_conditions("cluster-c", "shop", "web", true, Some(s));
        let status = |t: &str| c.iter().find(|x| x.type_ == t).map(|x| x.status).unwrap();
        assert_eq!(
            (status("Valid"), status("Conflict"), status("Ready")),
            ("True", "True", "True")
        );
        let a = export_conditions("cluster-a", "shop", "web", true, Some(s));
        assert_eq!(a.iter().find(|x| x.type_ == "Conflict").unwrap().status, "False");
        let missing = export_conditions("cluster-d", "shop", "web", false, Some(s));
        let valid = missing.iter().find(|x| x.type_ == "Valid").unwrap();
        assert_eq!((valid.status, valid.reason.as_str()), ("False", "NoService"));
    }

    #[test]
    fn the_derived_service_and_the_import_carry_the_clusterset_vip() {
        let services = clusterset_services(&[export("cluster-a", 1, &[("http", 80, Protocol::Tcp)], "None")]);
        let derived = derived_service(&services[0], Some("10.96.240.7"))
            .unwrap()
            .unwrap();
        assert_eq!(
            derived.metadata.name.as_deref(),
            Some(derived_service_name("web").as_str())
        );
        assert_eq!(
            derived.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web"
        );
        let spec = derived.spec.unwrap();
        assert!(spec.selector.is_none());
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.240.7"));
        let import = service_import(&services[0], vec!["10.96.240.7".into()]);
        assert_eq!(import.spec.ips, Some(vec!["10.96.240.7".to_owned()]));
        assert_eq!(import.spec.r#type, ServiceImportType::ClusterSetIp);
        assert_eq!(import.status.unwrap().clusters.unwrap()[0].cluster, "cluster-a");
        assert!(derived_service_name("web").len() <= 63);
        assert_ne!(derived_service_name("web"), derived_service_name("db"));
        // A site without Kubernetes gets the same objects, with a VIP from its range.
        let cidr: ipnet::Ipv4Net = "10.96.240.0/28".parse().unwrap();
        let files = site_manifests(&services, &BTreeSet::from(["shop".to_owned()]), cidr).unwrap();
        let yaml = &files["mcs-shop-web.yaml"];
        assert!(
            yaml.contains("kind: Service\n") && yaml.contains("kind: ServiceImport"),
            "{yaml}"
        );
        assert!(yaml.contains("10.96.240."), "{yaml}");
        assert_eq!(
            site_manifests(&services, &BTreeSet::from(["shop".to_owned()]), cidr).unwrap(),
            files,
            "stable"
        );
        assert!(
            site_manifests(&services, &BTreeSet::new(), cidr)
                .unwrap()
                .is_empty(),
            "no namespace, no import"
        );
        // Knit global services (no ServiceExport) are not part of the clusterset.
        let mut global = export("cluster-a", 1, &[], "None");
        global.service_export = None;
        assert!(clusterset_services(&[global]).is_empty());
    }
}
