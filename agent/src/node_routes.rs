//! Direct routes to the pod CIDRs of this cluster's other nodes, via each
//! node's underlay address: what kindnet and flannel's host-gw install, and
//! Cilium's `autoDirectNodeRoutes`. They carry what the host stack sends to
//! pods on other nodes: the node's own connections (kubelet probes,
//! hostNetwork pods) and Service traffic kube-proxy translated to a backend
//! elsewhere. Pod-to-pod traffic never takes them: the datapath
//! encapsulates it before the stack sees it. Replies come back through the
//! tunnel and are handed to the stack (`knit_stack_flows`), which undoes
//! kube-proxy's translation.
//!
//! Which nodes: a cluster CNI (kindnet, flannel, Calico) installs these
//! routes itself, so by default ([`Mode::Auto`]) the agent adds them only
//! when the node runs Knit's default conflist. Like those CNIs it needs the
//! nodes of a cluster on one L2 segment; a gateway the kernel cannot reach
//! directly is refused and counted.
//!
//! Where from: the kvstore's node records and, in Kubernetes mode, the Node
//! objects (`spec.podCIDRs` via the first IPv4 InternalIP/ExternalIP), as
//! kindnet does. The Node objects are what lets a cluster without a CNI
//! bootstrap: before the agent can reach the mesh apiserver (a pod, maybe
//! on another node) it needs the routes to that node's pods, and the API
//! server has them. Where both name a CIDR, the kvstore's record wins.
//!
//! [`desired`] and [`plan`] are pure; `run` applies the plan through
//! [`crate::netdev`], touching only routes marked as the agent's.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use knit_sources::NodeInfo;

use crate::index::MeshIndex;

/// When the agent installs direct node routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// When the node's active CNI config is Knit's default conflist.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never (the cluster's CNI or the network routes pod CIDRs).
    Never,
}

impl Mode {
    /// Whether routes are wanted on a node whose CNI config directory is
    /// `conf_dir` (unknown when none is given).
    pub fn enabled(self, conf_dir: Option<&Path>) -> bool {
        match self {
            Mode::Always => true,
            Mode::Never => false,
            Mode::Auto => conf_dir
                .and_then(|d| knit_cni::conflist::active_config(d).ok().flatten())
                .is_some_and(|f| {
                    f.file_name()
                        .is_some_and(|n| n == knit_cni::conflist::DEFAULT_CONFLIST)
                }),
        }
    }
}

/// Every IPv4 pod CIDR of this cluster's other nodes → that node's tunnel
/// endpoint (its underlay address), from the Node objects `api_nodes` and
/// the kvstore's records in `index` (which win).
pub fn desired(
    index: &MeshIndex,
    api_nodes: &BTreeMap<String, NodeInfo>,
    node: &str,
) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for n in api_nodes.values().filter(|n| n.name != node) {
        let Some(gateway) = n.underlay_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }) else {
            continue;
        };
        for cidr in &n.pod_cidrs {
            if let IpNet::V4(net) = cidr {
                out.insert(net.trunc(), gateway);
            }
        }
    }
    for n in index.local.nodes.values().filter(|n| n.name != node) {
        let IpAddr::V4(gateway) = n.tunnel_endpoint else {
            continue;
        };
        for cidr in &n.pod_cidrs {
            if let IpNet::V4(net) = cidr {
                out.insert(net.trunc(), gateway);
            }
        }
    }
    out
}

/// A route: destination and gateway.
pub type NodeRoute = (Ipv4Net, Ipv4Addr);

/// What to change in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePlan {
    /// Routes to add, or to replace (their gateway changed).
    pub replace: Vec<NodeRoute>,
    /// Routes of the agent nothing wants any more.
    pub delete: Vec<NodeRoute>,
}

/// The changes from `current` (the agent's routes in the kernel) to
/// `desired`.
pub fn plan(current: &BTreeMap<Ipv4Net, Ipv4Addr>, desired: &BTreeMap<Ipv4Net, Ipv4Addr>) -> RoutePlan {
    let replace = desired
        .iter()
        .filter(|(dst, gw)| current.get(dst) != Some(gw))
        .map(|(d, g)| (*d, *g))
        .collect();
    let delete = current
        .iter()
        .filter(|(dst, _)| !desired.contains_key(dst))
        .map(|(d, g)| (*d, *g))
        .collect();
    RoutePlan { replace, delete }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn desired_routes_are_the_other_nodes_pod_cidrs_via_their_underlay_address() {
        let mut index = MeshIndex::new("cluster-a");
        for (name, ip, cidrs) in [
            ("n1", "192.168.50.11", vec!["10.1.1.0/24"]),
            ("n2", "192.168.50.12", vec!["10.1.2.0/24", "fd00:1:2::/64"]),
            ("n3", "fd00::13", vec!["10.1.3.0/24"]),
        ] {
            index.local.nodes.insert(
                name.into(),
                knit_kvstore::records::NodeRecord {
                    name: name.into(),
                    cluster: "cluster-a".into(),
                    underlay_ips: vec![ip.parse().unwrap()],
                    pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                    tunnel_endpoint: ip.parse().unwrap(),
                    boot_id: String::new(),
                    wireguard: None,
                },
            );
        }
        assert_eq!(
            desired(&index, &BTreeMap::new(), "n1"),
            BTreeMap::from([(net("10.1.2.0/24"), "192.168.50.12".parse().unwrap())]),
            "not its own CIDR, no IPv6, no node without an IPv4 underlay address"
        );
    }

    #[test]
    fn node_objects_route_before_the_kvstore_knows_a_node_and_the_kvstore_wins() {
        let mut index = MeshIndex::new("cluster-a");
        index.local.nodes.insert(
            "n2".into(),
            knit_kvstore::records::NodeRecord {
                name: "n2".into(),
                cluster: "cluster-a".into(),
                underlay_ips: vec!["192.168.50.12".parse().unwrap()],
                pod_cidrs: vec!["10.1.2.0/24".parse().unwrap()],
                tunnel_endpoint: "192.168.50.12".parse().unwrap(),
                boot_id: String::new(),
                wireguard: None,
            },
        );
        let api_node = |name: &str, ips: &[&str], cidr: &str| {
            (
                name.to_owned(),
                NodeInfo {
                    name: name.into(),
                    underlay_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
                    pod_cidrs: vec![cidr.parse().unwrap()],
                    boot_id: String::new(),
                },
            )
        };
        let api = BTreeMap::from([
            api_node("n1", &["192.168.50.11"], "10.1.1.0/24"),
            api_node("n2", &["192.168.50.99"], "10.1.2.0/24"),
            api_node("n3", &["fd00::13", "192.168.50.13"], "10.1.3.0/24"),
            api_node("n4", &["fd00::14"], "10.1.4.0/24"),
        ]);
        assert_eq!(
            desired(&index, &api, "n1"),
            BTreeMap::from([
                (net("10.1.2.0/24"), "192.168.50.12".parse().unwrap()),
                (net("10.1.3.0/24"), "192.168.50.13".parse().unwrap()),
            ]),
            "n3 by its first IPv4 address, n2 as the kvstore says, n4 has no IPv4 underlay"
        );
        assert_eq!(
            desired(&MeshIndex::new("cluster-a"), &api, "n1").len(),
            2,
            "an agent that cannot reach the kvstore yet routes from the Node objects alone"
        );
    }

    #[test]
    fn plan_adds_changes_and_removes_only_what_differs() {
        let gw1: Ipv4Addr = "192.168.50.11".parse().unwrap();
        let gw2: Ipv4Addr = "192.168.50.12".parse().unwrap();
        let current = BTreeMap::from([(net("10.1.2.0/24"), gw1), (net("10.1.9.0/24"), gw1)]);
        let desired = BTreeMap::from([(net("10.1.2.0/24"), gw2), (net("10.1.3.0/24"), gw1)]);
        let p = plan(&current, &desired);
        assert_eq!(
            p.replace,
            vec![(net("10.1.2.0/24"), gw2), (net("10.1.3.0/24"), gw1)]
        );
        assert_eq!(p.delete, vec![(net("10.1.9.0/24"), gw1)]);
        assert_eq!(plan(&desired, &desired), RoutePlan::default());
    }
}
