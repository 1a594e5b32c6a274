//! The local cluster's own identity and how its mesh apiserver is exposed.
//!
//! Read from a YAML file (mounted from the `knit-operator-config` ConfigMap
//! in a cluster, or given to `knitctl render` elsewhere), like Cilium's
//! `cluster.name` / `cluster.id`. Validation names the field and the fix.

use std::net::IpAddr;

use knit_crds::{CLUSTER_NAME_PATTERN, MAX_CLUSTER_ID, MAX_CLUSTER_NAME_LEN};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Configuration of the operator for one cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// This cluster's name (a DNS label, at most 32 characters).
    pub cluster_name: String,
    /// This cluster's ID (1–511), unique in the mesh.
    #[serde(rename = "clusterID")]
    pub cluster_id: u16,
    /// Pod CIDRs this cluster announces.
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    /// This cluster's Service CIDRs (kube-apiserver's
    /// `--service-cluster-ip-range`): no peer may declare pod CIDRs that
    /// overlap them.
    #[serde(default, rename = "serviceCIDRs")]
    pub service_cidrs: Vec<String>,
    /// Namespace of the operator and everything it creates.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// How the mesh apiserver is exposed.
    #[serde(default)]
    pub apiserver: ApiserverExposure,
    /// Container images of the mesh apiserver Deployment.
    #[serde(default)]
    pub images: Images,
    /// Certificate lifetimes.
    #[serde(default)]
    pub certificates: CertificatePolicy,
}

/// Kubernetes Service type of the mesh apiserver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    /// Reachable inside the cluster only (peers reach it through some other path).
    ClusterIP,
    /// A port on every node.
    NodePort,
    /// A cloud load balancer.
    #[default]
    LoadBalancer,
}

/// How peers reach this cluster's mesh apiserver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiserverExposure {
    /// Service type.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Port of the etcd client endpoint (local agents).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Port of the peer front, the only endpoint peers reach (exported by
    /// `knitctl peer export`).
    #[serde(default = "default_peer_port")]
    pub peer_port: u16,
    /// Fixed node port for `NodePort` (30000–32767); chosen by Kubernetes when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// Host names and IPs peers use; they go into the server certificate and
    /// into `knitctl peer export`.
    #[serde(default)]
    pub external_addresses: Vec<String>,
    /// Sources allowed to reach etcd's port on the mesh apiserver pod
    /// (NetworkPolicy `ipBlock`s). Agents run on the host network, so these
    /// are the nodes' CIDRs. Empty: any source (etcd still accepts only
    /// certificates of the local CA).
    #[serde(default, rename = "etcdClientCIDRs", skip_serializing_if = "Vec::is_empty")]
    pub etcd_client_cidrs: Vec<String>,
    /// Replicas of the mesh apiserver, each with its own etcd (1 to 5).
    /// Agents and peers read through the Services from any one of them;
    /// agents write their status into every one (the headless Service
    /// `knit-apiserver-replicas`).
    #[serde(default = "default_replicas")]
    pub replicas: u8,
}

/// Images of the mesh apiserver Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Images {
    /// knit-apiserver image.
    #[serde(default = "default_apiserver_image")]
    pub apiserver: String,
    /// etcd sidecar image.
    #[serde(default = "default_etcd_image")]
    pub etcd: String,
}

/// Lifetimes of the certificates the operator issues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatePolicy {
    /// Validity of the mesh CA.
    #[serde(default = "default_ca_days")]
    pub ca_validity_days: u32,
    /// Validity of server and client certificates.
    #[serde(default = "default_leaf_days")]
    pub leaf_validity_days: u32,
    /// A certificate is re-issued once less than this fraction (in percent)
    /// of its lifetime remains; the old one stays valid meanwhile.
    #[serde(default = "default_renew_percent")]
    pub renew_when_remaining_percent: u8,
    /// Where a roll of the mesh CA (the CA peers trust) stands; unset when
    /// none is under way. Steps, each committed once the previous one has
    /// reached every peer: `Prepare` → `Switch` → `Complete`.
    #[serde(default, rename = "meshCARotation", skip_serializing_if = "Option::is_none")]
    pub mesh_ca_rotation: Option<CaRotationStep>,
}

/// One step of rolling the mesh CA without dropping a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CaRotationStep {
    /// Issue the next CA and publish it beside the current one: `knitctl
    /// peer export` prints both, and each peer applies that. Certificates
    /// are still issued by the current CA.
    Prepare,
    /// Issue the peer front's server certificate and the client
    /// certificates presented to peers from the next CA. Every peer must
    /// already trust it (step `Prepare` applied there).
    Switch,
    /// The next CA becomes the mesh CA and the old one is dropped from what
    /// is published; peers may then apply the export again.
    Complete,
}

impl std::fmt::Display for CaRotationStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Prepare => "Prepare",
            Self::Switch => "Switch",
            Self::Complete => "Complete",
        })
    }
}

fn default_namespace() -> String {
    "knit-system".into()
}
fn default_port() -> u16 {
    2379
}
fn default_peer_port() -> u16 {
    2480
}
fn default_replicas() -> u8 {
    2
}
fn default_apiserver_image() -> String {
    format!("ghcr.io/knit-dev/knit-apiserver:v{}", env!("CARGO_PKG_VERSION"))
}
fn default_etcd_image() -> String {
    "registry.k8s.io/etcd:3.5.21-0".into()
}
fn default_ca_days() -> u32 {
    3650
}
fn default_leaf_days() -> u32 {
    365
}
fn default_renew_percent() -> u8 {
    33
}

impl Default for ApiserverExposure {
    fn default() -> Self {
        Self {
            service_type: ServiceType::default(),
            port: default_port(),
            peer_port: default_peer_port(),
            node_port: None,
            external_addresses: Vec::new(),
            etcd_client_cidrs: Vec::new(),
            replicas: default_replicas(),
        }
    }
}

impl Default for Images {
    fn default() -> Self {
        Self {
            apiserver: default_apiserver_image(),
            etcd: default_etcd_image(),
        }
    }
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        Self {
            ca_validity_days: default_ca_days(),
            leaf_validity_days: default_leaf_days(),
            renew_when_remaining_percent: default_renew_percent(),
            mesh_ca_rotation: None,
        }
    }
}

impl ClusterConfig {
    /// Parses and validates a config file's text.
    pub fn from_yaml(text: &str) -> Result<Self> {
        let config: Self = serde_saphyr::from_str(text).map_err(Error::ParseConfig)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field, naming the first bad one and the fix.
    pub fn validate(&self) -> Result<()> {
        validate_cluster_name("clusterName", &self.cluster_name)?;
        if self.cluster_id == 0 || self.cluster_id > MAX_CLUSTER_ID {
            return invalid(
                "clusterID",
                format!("is {}; use a number from 1 to {MAX_CLUSTER_ID}", self.cluster_id),
            );
        }
        for cidr in &self.pod_cidrs {
            parse_cidr(cidr).ok_or_else(|| Error::InvalidConfig {
                field: "podCIDRs",
                problem: format!("{cidr:?} is not a CIDR such as 10.1.0.0/16"),
            })?;
        }
        for cidr in &self.service_cidrs {
            parse_cidr(cidr).ok_or_else(|| Error::InvalidConfig {
                field: "serviceCIDRs",
                problem: format!("{cidr:?} is not a CIDR such as 10.96.0.0/12"),
            })?;
        }
        for cidr in &self.apiserver.etcd_client_cidrs {
            parse_cidr(cidr).ok_or_else(|| Error::InvalidConfig {
                field: "apiserver.etcdClientCIDRs",
                problem: format!("{cidr:?} is not a CIDR such as 192.168.0.0/16"),
            })?;
        }
        if !(1..=5).contains(&self.apiserver.replicas) {
            return invalid(
                "apiserver.replicas",
                format!("is {}; use a number from 1 to 5", self.apiserver.replicas),
            );
        }
        if let Some(port) = self.apiserver.node_port
            && !(30000..=32767).contains(&port)
        {
            return invalid(
                "apiserver.nodePort",
                format!("is {port}; use 30000–32767 or leave it unset"),
            );
        }
        let c = &self.certificates;
        if c.leaf_validity_days == 0 || c.leaf_validity_days > c.ca_validity_days {
            return invalid(
                "certificates.leafValidityDays",
                "must be at least 1 and at most certificates.caValidityDays".into(),
            );
        }
        if !(1..=90).contains(&c.renew_when_remaining_percent) {
            return invalid(
                "certificates.renewWhenRemainingPercent",
                "use a value from 1 to 90".into(),
            );
        }
        Ok(())
    }

    /// In-cluster DNS names of the mesh apiserver Service, then of the
    /// headless Service naming every replica (agents check each replica's
    /// certificate for it when they write their status).
    pub fn service_dns_names(&self) -> Vec<String> {
        let ns = &self.namespace;
        [crate::names::APISERVER, crate::names::REPLICAS_SERVICE]
            .into_iter()
            .flat_map(|svc| {
                [
                    svc.to_owned(),
                    format!("{svc}.{ns}"),
                    format!("{svc}.{ns}.svc"),
                    format!("{svc}.{ns}.svc.cluster.local"),
                ]
            })
            .collect()
    }

    /// Addresses (host names or IPs) peers use to reach this cluster:
    /// `apiserver.externalAddresses` when set, otherwise the mesh apiserver
    /// Service's LoadBalancer ingress (`load_balancer_ingress`). The server
    /// certificate names every one of them, and `knitctl peer export`
    /// publishes exactly these, so the two cannot disagree.
    pub fn exported_addresses(&self, load_balancer_ingress: &[String]) -> Vec<String> {
        if self.apiserver.external_addresses.is_empty() {
            load_balancer_ingress.to_vec()
        } else {
            self.apiserver.external_addresses.clone()
        }
    }

    /// URLs peers use to reach this cluster (for `knitctl peer export`), one
    /// per [`exported_addresses`](Self::exported_addresses), on the port
    /// peers reach: for `NodePort` the fixed `apiserver.nodePort`, else the
    /// one Kubernetes allocated to the peers Service.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a `NodePort` Service without a fixed
    /// node port whose Service has none allocated (yet).
    pub fn peer_endpoints(&self, service: &PeersServiceView) -> Result<Vec<String>> {
        let port = match self.apiserver.service_type {
            ServiceType::NodePort => match self.apiserver.node_port.or(service.node_port) {
                Some(port) => port,
                None => {
                    return invalid(
                        "apiserver.nodePort",
                        "the peers Service has no node port allocated yet (is knit-operator running?); \
                         set apiserver.nodePort to a fixed port, or give the endpoints explicitly"
                            .into(),
                    );
                }
            },
            _ => self.apiserver.peer_port,
        };
        Ok(self
            .exported_addresses(&service.ingress)
            .iter()
            .map(|addr| match addr.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => format!("https://[{v6}]:{port}"),
                _ => format!("https://{addr}:{port}"),
            })
            .collect())
    }
}

/// What the exported endpoints need of the peers Service
/// (`knit-apiserver-peers`) as the API server holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeersServiceView {
    /// Its LoadBalancer ingress: a host name or IP per entry.
    pub ingress: Vec<String>,
    /// The node port Kubernetes allocated to its `peers` port.
    pub node_port: Option<u16>,
}

/// Checks a cluster name, reporting `field` when it is not a DNS label.
pub fn validate_cluster_name(field: &'static str, name: &str) -> Result<()> {
    let label_ok = !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if label_ok {
        Ok(())
    } else {
        invalid(
            field,
            format!(
                "{name:?} is not a lower-case DNS label of at most {MAX_CLUSTER_NAME_LEN} characters ({CLUSTER_NAME_PATTERN})"
            ),
        )
    }
}

/// Parses `addr/len`, checking the length fits the address family.
pub fn parse_cidr(cidr: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn invalid<T>(field: &'static str, problem: String) -> Result<T> {
    Err(Error::InvalidConfig { field, problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "clusterName: a\nclusterID: 1\npodCIDRs: [10.1.0.0/16]\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = ClusterConfig::from_yaml(MINIMAL).unwrap();
        assert_eq!(c.namespace, "knit-system");
        assert_eq!(c.apiserver.port, 2379);
        assert_eq!(c.apiserver.service_type, ServiceType::LoadBalancer);
        assert!(
            c.service_dns_names()
                .contains(&"knit-apiserver.knit-system.svc".to_owned())
        );
    }

    #[test]
    fn errors_name_the_field() {
        for (yaml, field) in [
            ("clusterName: A\nclusterID: 1\n", "clusterName"),
            ("clusterName: a\nclusterID: 0\n", "clusterID"),
            ("clusterName: a\nclusterID: 512\n", "clusterID"),
            (
                "clusterName: a\nclusterID: 1\npodCIDRs: [10.1.0.0/33]\n",
                "podCIDRs",
            ),
            (
                "clusterName: a\nclusterID: 1\napiserver: {nodePort: 80}\n",
                "apiserver.nodePort",
            ),
            (
                "clusterName: a\nclusterID: 1\napiserver: {replicas: 0}\n",
                "apiserver.replicas",
            ),
            (
                "clusterName: a\nclusterID: 1\ncertificates: {meshCARotation: Later}\n",
                "meshCARotation",
            ),
        ] {
            let err = ClusterConfig::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(field), "{yaml:?} gave {err}");
        }
        let err = ClusterConfig::from_yaml("clusterName: a\nclusterId: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("clusterId"), "unknown field must be named: {err}");
    }

    #[test]
    fn peer_endpoints_use_external_addresses_and_node_port() {
        let mut c = ClusterConfig::from_yaml(MINIMAL).unwrap();
        c.apiserver.external_addresses = vec!["mesh.a.example.com".into(), "fd00::1".into()];
        let lb = PeersServiceView {
            ingress: vec!["192.0.2.7".into()],
            node_port: None,
        };
        assert_eq!(
            c.peer_endpoints(&lb).unwrap(),
            vec!["https://mesh.a.example.com:2480", "https://[fd00::1]:2480"]
        );
        c.apiserver.service_type = ServiceType::NodePort;
        c.apiserver.node_port = Some(32379);
        assert_eq!(
            c.peer_endpoints(&lb).unwrap()[0],
            "https://mesh.a.example.com:32379"
        );
    }

    #[test]
    fn a_node_port_service_exports_the_port_kubernetes_allocated() {
        let mut c = ClusterConfig::from_yaml(MINIMAL).unwrap();
        c.apiserver.external_addresses = vec!["192.0.2.10".into()];
        c.apiserver.service_type = ServiceType::NodePort;
        let allocated = PeersServiceView {
            ingress: Vec::new(),
            node_port: Some(31234),
        };
        assert_eq!(
            c.peer_endpoints(&allocated).unwrap(),
            vec!["https://192.0.2.10:31234"]
        );
        let err = c
            .peer_endpoints(&PeersServiceView::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apiserver.nodePort") && err.contains("no node port allocated"),
            "{err}"
        );
        c.apiserver.node_port = Some(32000);
        assert_eq!(
            c.peer_endpoints(&allocated).unwrap(),
            vec!["https://192.0.2.10:32000"],
            "a fixed node port is what the Service gets"
        );
    }

    #[test]
    fn without_external_addresses_the_load_balancer_ingress_is_exported() {
        let c = ClusterConfig::from_yaml(MINIMAL).unwrap();
        assert!(c.apiserver.external_addresses.is_empty());
        assert_eq!(
            c.peer_endpoints(&PeersServiceView::default()).unwrap(),
            Vec::<String>::new()
        );
        let lb = PeersServiceView {
            ingress: vec!["192.0.2.7".into(), "mesh.lb.example.com".into()],
            node_port: None,
        };
        assert_eq!(
            c.peer_endpoints(&lb).unwrap(),
            vec!["https://192.0.2.7:2480", "https://mesh.lb.example.com:2480"]
        );
    }
}
