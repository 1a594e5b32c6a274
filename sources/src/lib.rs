//! Where Knit learns a cluster's objects: Kubernetes objects as one
//! [`ClusterState`] value, kept current by a [`Source`]. The [`kubernetes`]
//! source watches the API server, only the kinds its reader asks for
//! ([`Kinds`]); the [`directory`] source reads YAML files (sites without
//! Kubernetes, the local mesh, tests).
//!
//! Two readers: knit-apiserver exports every kind it reads; knit-agent
//! reads only NetworkPolicies, the one kind it renders that the kvstore
//! does not carry. Both depend on this crate alone, not on each other.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod crd_gate;
pub mod directory;
pub mod kubernetes;

use std::future::Future;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use knit_crds::GlobalServicePolicy;
use knit_kvstore::records::{PortSpec, Protocol, ServicePort};

/// Every object the apiserver exports from, keyed by `namespace/name`
/// (or `name` for cluster-scoped kinds).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Nodes (what the export reads of them).
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Pods (what the export reads of them).
    pub pods: BTreeMap<String, PodInfo>,
    /// Namespaces.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Services (what the export reads of them).
    pub services: BTreeMap<String, ServiceInfo>,
    /// EndpointSlices (what the export reads of them).
    pub endpoint_slices: BTreeMap<String, EndpointSliceInfo>,
    /// NetworkPolicies.
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// GlobalServicePolicies.
    pub policies: BTreeMap<String, GlobalServicePolicy>,
    /// ServiceExports (Multi-Cluster Services API); empty when the CRD is
    /// not installed.
    pub service_exports: BTreeMap<String, ServiceExportInfo>,
    /// CiliumNetworkPolicies (by `namespace/name`) and
    /// CiliumClusterwideNetworkPolicies (by `name`, namespace `None`);
    /// empty when Cilium's CRDs are not installed.
    pub cilium_policies: BTreeMap<String, CiliumPolicy>,
}

/// A CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy as written: the
/// agent translates the subset Knit supports and reports the rest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CiliumPolicy {
    /// Namespace; `None` for a clusterwide policy.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The whole object (its `spec`, `specs` and anything else).
    pub object: serde_json::Value,
}

impl CiliumPolicy {
    /// Reads a `cilium.io/v2` policy object; the key it is stored under.
    pub fn from_object(object: serde_json::Value) -> (String, Self) {
        let meta = |k: &str| {
            object
                .pointer(&format!("/metadata/{k}"))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let clusterwide =
            object.get("kind").and_then(|k| k.as_str()) == Some("CiliumClusterwideNetworkPolicy");
        let namespace = if clusterwide {
            None
        } else {
            Some(meta("namespace").unwrap_or_else(|| "default".into()))
        };
        let name = meta("name").unwrap_or_default();
        let key = match &namespace {
            Some(ns) => object_key(Some(ns), &name),
            None => format!("clusterwide/{name}"),
        };
        (
            key,
            Self {
                namespace,
                name,
                object,
            },
        )
    }
}

impl ServiceExportInfo {
    /// Reads a ServiceExport's metadata: all the export needs of it (a
    /// ServiceExport has no required spec, and its status is ours).
    pub fn from_metadata(metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Self {
            namespace: metadata.namespace.unwrap_or_else(|| "default".into()),
            name: metadata.name.unwrap_or_default(),
            created_unix: metadata
                .creation_timestamp
                .map(|t| t.0.as_second())
                .unwrap_or_default(),
        }
    }
}

/// What the export reads of a `ServiceExport`: which Service, since when.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceExportInfo {
    /// Namespace (the Service's).
    pub namespace: String,
    /// Name (the Service's).
    pub name: String,
    /// `metadata.creationTimestamp` as Unix seconds (0 when unset).
    pub created_unix: i64,
}

/// Shares equal strings and label sets between objects: thousands of pods
/// have the same namespace, node and labels, and a label map alone takes
/// half a kilobyte.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
    labels: HashSet<Arc<BTreeMap<String, String>>>,
}

impl Interner {
    /// The shared copy of `s`.
    pub fn str(&mut self, s: String) -> Arc<str> {
        if let Some(found) = self.strings.get(s.as_str()) {
            return found.clone();
        }
        let arc: Arc<str> = Arc::from(s);
        self.strings.insert(arc.clone());
        arc
    }

    /// The shared copy of a label set.
    pub fn labels(&mut self, labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
        if let Some(found) = self.labels.get(&labels) {
            return found.clone();
        }
        let arc = Arc::new(labels);
        self.labels.insert(arc.clone());
        arc
    }

    /// Forgets values no object uses any more.
    pub fn prune(&mut self) {
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.labels.retain(|l| Arc::strong_count(l) > 1);
    }
}

/// What the export reads of a Pod: about a hundred bytes of its own, the
/// rest shared through the [`Interner`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// Node the pod runs on.
    pub node: Arc<str>,
    /// Pod IPs; empty for host-network and finished pods, which are not endpoints.
    pub ips: Vec<IpAddr>,
    /// Named container ports (what NetworkPolicy port names resolve to).
    pub named_ports: BTreeMap<String, PortSpec>,
}

impl PodInfo {
    /// Converts a Pod, sharing repeated values through `interner`.
    pub fn from_pod(pod: Pod, interner: &mut Interner) -> Self {
        let host_network = pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false);
        let status = pod.status.unwrap_or_default();
        let finished = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(status.pod_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()));
        }
        if host_network || finished {
            ips.clear();
        }
        ips.shrink_to_fit();
        let named_ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let port = u16::try_from(p.container_port).ok()?;
                let protocol = Protocol::from_kubernetes(p.protocol.as_deref());
                Some((p.name.clone()?, PortSpec { port, protocol }))
            })
            .collect();
        Self {
            named_ports,
            namespace: interner.str(pod.metadata.namespace.unwrap_or_else(|| "default".into())),
            name: pod.metadata.name.unwrap_or_default(),
            labels: interner.labels(pod.metadata.labels.unwrap_or_default()),
            node: interner.str(pod.spec.and_then(|s| s.node_name).unwrap_or_default()),
            ips,
        }
    }
}

/// What the export reads of a Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// InternalIP and ExternalIP addresses, in the order the Node lists them.
    pub underlay_ips: Vec<IpAddr>,
    /// Pod CIDRs assigned to the node.
    pub pod_cidrs: Vec<IpNet>,
    /// Boot ID.
    pub boot_id: String,
}

impl From<Node> for NodeInfo {
    fn from(node: Node) -> Self {
        let status = node.status.unwrap_or_default();
        let spec = node.spec.unwrap_or_default();
        let cidrs = spec
            .pod_cidrs
            .or_else(|| spec.pod_cidr.map(|c| vec![c]))
            .unwrap_or_default();
        Self {
            name: node.metadata.name.unwrap_or_default(),
            underlay_ips: status
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect(),
            pod_cidrs: cidrs.iter().filter_map(|c| c.parse().ok()).collect(),
            boot_id: status.node_info.map(|i| i.boot_id).unwrap_or_default(),
        }
    }
}

/// What the export reads of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels (GlobalServicePolicy selectors match them).
    pub labels: BTreeMap<String, String>,
    /// The Cilium-style annotations that make a Service global
    /// ([`knit_crds::POLICY_ANNOTATIONS`]); the others are
    /// not kept.
    pub annotations: Vec<(String, String)>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// ClusterIPs (none for headless Services).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.sessionAffinity` (`None` or `ClientIP`).
    pub session_affinity: String,
}

impl From<Service> for ServiceInfo {
    fn from(service: Service) -> Self {
        let ports = service
            .spec
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .map(|p| ServicePort {
                name: p.name.clone().unwrap_or_default(),
                port: u16::try_from(p.port).unwrap_or_default(),
                protocol: Protocol::from_kubernetes(p.protocol.as_deref()),
            })
            .collect();
        let spec = service.spec.as_ref();
        let cluster_ips = spec
            .and_then(|s| s.cluster_ips.clone())
            .or_else(|| spec.and_then(|s| s.cluster_ip.clone()).map(|ip| vec![ip]))
            .unwrap_or_default()
            .iter()
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let session_affinity = spec
            .and_then(|s| s.session_affinity.clone())
            .unwrap_or_else(|| "None".into());
        Self {
            session_affinity,
            namespace: service.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: service.metadata.name.unwrap_or_default(),
            labels: service.metadata.labels.unwrap_or_default(),
            annotations: service
                .metadata
                .annotations
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| knit_crds::POLICY_ANNOTATIONS.contains(&k.as_str()))
                .collect(),
            ports,
            cluster_ips,
        }
    }
}

/// What the export reads of an EndpointSlice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointSliceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name of the slice.
    pub name: String,
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub service: String,
    /// Target port per port name (a slice has a handful).
    pub ports: Vec<(String, u16)>,
    /// Addresses and whether each is ready.
    pub endpoints: Vec<(IpAddr, bool)>,
}

impl From<EndpointSlice> for EndpointSliceInfo {
    fn from(slice: EndpointSlice) -> Self {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name").cloned())
            .unwrap_or_default();
        let mut ports: Vec<(String, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        ports.sort();
        ports.dedup_by(|a, b| a.0 == b.0);
        ports.shrink_to_fit();
        let mut endpoints: Vec<(IpAddr, bool)> = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                e.addresses
                    .iter()
                    .filter_map(move |a| Some((a.parse().ok()?, ready)))
            })
            .collect();
        endpoints.shrink_to_fit();
        Self {
            namespace: slice.metadata.namespace.unwrap_or_else(|| "default".into()),
            name: slice.metadata.name.unwrap_or_default(),
            service,
            ports,
            endpoints,
        }
    }
}

/// Which kinds a reader needs. Watching a kind costs one cluster-wide watch
/// per reader, so per-node readers ask for as few as they can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    /// Nodes.
    pub nodes: bool,
    /// Pods.
    pub pods: bool,
    /// Namespaces.
    pub namespaces: bool,
    /// Services.
    pub services: bool,
    /// EndpointSlices.
    pub endpoint_slices: bool,
    /// NetworkPolicies.
    pub network_policies: bool,
    /// GlobalServicePolicies.
    pub policies: bool,
    /// ServiceExports (optional: a cluster without the MCS CRDs lists none).
    pub service_exports: bool,
    /// Cilium's network policies (optional, like ServiceExports).
    pub cilium_policies: bool,
}

impl Kinds {
    /// Everything knit-apiserver exports from.
    pub const ALL: Self = Self {
        nodes: true,
        pods: true,
        namespaces: true,
        services: true,
        endpoint_slices: true,
        network_policies: true,
        policies: true,
        service_exports: true,
        cilium_policies: false,
    };

    /// What knit-agent renders from the API server: NetworkPolicies (and
    /// Cilium's, where its CRDs exist).
    /// Pods, Services, namespaces' labels and nodes reach it through the
    /// kvstore, already reduced to what the datapath needs.
    pub const AGENT: Self = Self {
        nodes: false,
        pods: false,
        namespaces: false,
        services: false,
        endpoint_slices: false,
        network_policies: true,
        policies: false,
        service_exports: false,
        cilium_policies: true,
    };
}

/// A live view of the cluster's objects.
pub trait Source: Send {
    /// Waits for the next change and applies it; `false` when the wake-up
    /// changed nothing.
    fn next_change(&mut self) -> impl Future<Output = bool> + Send;
    /// The current state.
    fn state(&self) -> &ClusterState;
    /// Whether every kind has been read completely once. Exporting before
    /// would publish a partial state and delete what peers already have.
    fn is_ready(&self) -> bool;
}

/// `namespace/name` or `name`.
pub fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}
