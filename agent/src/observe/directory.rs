//! The agent's [`Directory`]: names for a flow's ends from the kvstore
//! index (pods, identities, clusters, services of the whole mesh) and the
//! cluster's own NetworkPolicies (which ones select a local pod). Built on
//! request inside the agent's loop, where the index lives.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use knit_kvstore::records::ServiceRecord;
use knit_sources::ClusterState;

use super::describe::{Directory, PodName};
use crate::datapath::state::Direction;
use crate::index::{ClusterView, MeshIndex};

/// Names from the index and the cluster's state.
pub struct IndexDirectory<'a> {
    /// The mesh as the agent knows it.
    pub index: &'a MeshIndex,
    /// This cluster's Kubernetes objects (NetworkPolicies, pods).
    pub state: &'a ClusterState,
}

impl IndexDirectory<'_> {
    fn clusters(&self) -> impl Iterator<Item = &ClusterView> {
        std::iter::once(&self.index.local).chain(self.index.peers.values())
    }
}

impl Directory for IndexDirectory<'_> {
    fn cluster_name(&self, cluster_id: u32) -> Option<String> {
        self.clusters()
            .filter_map(|c| c.config.as_ref())
            .find(|c| u32::from(c.id) == cluster_id)
            .map(|c| c.name.clone())
    }

    fn identity_labels(&self, identity: u32) -> BTreeMap<String, String> {
        let key = identity.to_string();
        self.clusters()
            .find_map(|c| c.identities.get(&key))
            .map(|r| r.labels.clone())
            .unwrap_or_default()
    }

    fn pod_at(&self, ip: Ipv4Addr) -> Option<PodName> {
        let key = ip.to_string();
        self.clusters()
            .find_map(|c| c.endpoints.get(&key))
            .map(|e| PodName {
                cluster: e.cluster.clone(),
                namespace: e.namespace.clone(),
                name: e.pod.clone(),
            })
    }

    fn policies_selecting(&self, ip: Ipv4Addr, direction: Direction) -> Vec<String> {
        let Some(pod) = self.state.pods.values().find(|p| p.ips.contains(&IpAddr::V4(ip))) else {
            return Vec::new();
        };
        self.state
            .network_policies
            .values()
            .filter(|p| p.metadata.namespace.as_deref().unwrap_or("default") == &*pod.namespace)
            .filter(|p| {
                p.spec.as_ref().is_some_and(|spec| {
                    let (ingress, egress) = crate::policy::directions(spec);
                    let applies = match direction {
                        Direction::Ingress => ingress,
                        Direction::Egress => egress,
                    };
                    applies
                        && spec
                            .pod_selector
                            .as_ref()
                            .is_none_or(|s| crate::policy::selector_matches(s, &pod.labels))
                })
            })
            .map(|p| format!("{}/{}", pod.namespace, p.metadata.name.as_deref().unwrap_or("")))
            .collect()
    }

    fn service_at(&self, vip: Ipv4Addr, port: u16) -> Option<String> {
        self.service(vip, port)
            .map(|s| format!("{}/{}", s.namespace, s.name))
    }

    fn affinity_at(&self, vip: Ipv4Addr, port: u16) -> Option<String> {
        let s = self.service(vip, port)?;
        serde_json::to_value(s.affinity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
    }

    fn node_at(&self, tunnel_endpoint: Ipv4Addr) -> Option<String> {
        let ip = IpAddr::V4(tunnel_endpoint);
        self.clusters()
            .flat_map(|c| c.nodes.values())
            .find(|n| n.tunnel_endpoint == ip)
            .map(|n| format!("{}/{}", n.cluster, n.name))
    }
}

impl IndexDirectory<'_> {
    fn service(&self, vip: Ipv4Addr, port: u16) -> Option<&ServiceRecord> {
        let vip = IpAddr::V4(vip);
        self.index
            .local_services
            .values()
            .chain(self.clusters().flat_map(|c| c.services.values()))
            .find(|s| s.cluster_ips.contains(&vip) && s.ports.iter().any(|p| p.port == port))
    }
}
