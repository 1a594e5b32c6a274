//! Routing modes: which nodes this node reaches without the tunnel.
//!
//! The node's mode ([`RoutingMode`], the agent's `--routing-mode`) and
//! each peer cluster's (announced in its config record) give the
//! candidates ([`candidates`]): in `hybrid`, the other nodes of this
//! cluster; in `native`, those and the nodes of every peer cluster that is
//! `native` too (a `tunnel` or `hybrid` peer, or one from before modes,
//! is reached through the tunnel at both ends). The kernel's routes then
//! decide ([`plan`]): a candidate whose every pod CIDR a route other than
//! the default route covers (the agent's own direct route, a cloud or BGP
//! route) is reached natively. Otherwise the underlay cannot route it: in
//! `hybrid` the tunnel takes over; in `native` its pods are dropped as
//! `no_route` (counted, and the agent says which node and why), never sent
//! into a default route that does not know them.
//!
//! [`peer_routes`] adds the direct routes a `native` node needs towards
//! the nodes of native peer clusters it reaches on its own segment (the
//! cluster's own nodes are [`crate::node_routes`]'s).
//!
//! Everything here is pure: the agent loop dumps the routes, installs
//! what [`peer_routes`] wants, and writes [`NativePlan::paths`] into
//! `knit_native_nodes`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};

use knit_datapath_common::{NATIVE_PATH_ROUTED, NATIVE_PATH_UNROUTABLE};
pub use knit_kvstore::records::RoutingMode;

use crate::index::MeshIndex;

/// One IPv4 route of the kernel's main table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// Destination prefix (`0.0.0.0/0` for the default route).
    pub dst: Ipv4Net,
    /// Next hop; `None` for a route on-link.
    pub gateway: Option<Ipv4Addr>,
}

/// A node the routing mode would reach natively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Node name.
    pub node: String,
    /// Its cluster.
    pub cluster: String,
    /// Its underlay address (the ipcache's tunnel endpoint).
    pub endpoint: Ipv4Addr,
    /// Its IPv4 pod CIDRs.
    pub pod_cidrs: Vec<Ipv4Net>,
}

/// The nodes `mode` reaches natively where the underlay routes them
/// (every node but `node` itself with an IPv4 underlay address).
pub fn candidates(index: &MeshIndex, mode: RoutingMode, node: &str) -> Vec<Candidate> {
    let peers = index
        .peers
        .iter()
        .filter(|_| mode == RoutingMode::Native)
        .filter(|(_, view)| {
            view.config
                .as_ref()
                .is_some_and(|c| c.routing_mode() == RoutingMode::Native)
        });
    let clusters = std::iter::once((index.local_cluster(), &index.local))
        .filter(|_| mode != RoutingMode::Tunnel)
        .chain(peers.map(|(name, view)| (name.as_str(), view)));
    let mut out = Vec::new();
    for (cluster, view) in clusters {
        for record in view.nodes.values() {
            let IpAddr::V4(endpoint) = record.tunnel_endpoint else {
                continue;
            };
            if cluster == index.local_cluster() && record.name == node {
                continue;
            }
            out.push(Candidate {
                node: record.name.clone(),
                cluster: cluster.to_owned(),
                endpoint,
                pod_cidrs: record
                    .pod_cidrs
                    .iter()
                    .filter_map(|c| match c {
                        IpNet::V4(v4) => Some(v4.trunc()),
                        IpNet::V6(_) => None,
                    })
                    .collect(),
            });
        }
    }
    out
}

/// Whether `ip` is on a segment of this node: the most specific route to
/// it has no gateway.
pub fn on_link(routes: &[KernelRoute], ip: Ipv4Addr) -> bool {
    routes
        .iter()
        .filter(|r| r.dst.contains(&ip))
        .max_by_key(|r| r.dst.prefix_len())
        .is_some_and(|r| r.gateway.is_none())
}

/// Whether a route other than the default route covers all of `cidr`.
pub fn routed(routes: &[KernelRoute], cidr: Ipv4Net) -> bool {
    routes.iter().any(|r| {
        r.dst.prefix_len() > 0 && r.dst.prefix_len() <= cidr.prefix_len() && r.dst.contains(&cidr.network())
    })
}

/// Direct routes (pod CIDR → node) to the candidates of other clusters on
/// this node's segments, for a `native` node.
pub fn peer_routes(
    candidates: &[Candidate],
    local_cluster: &str,
    routes: &[KernelRoute],
) -> BTreeMap<Ipv4Net, Ipv4Addr> {
    candidates
        .iter()
        .filter(|c| c.cluster != local_cluster && on_link(routes, c.endpoint))
        .flat_map(|c| c.pod_cidrs.iter().map(|cidr| (*cidr, c.endpoint)))
        .collect()
}

/// What the datapath gets from the candidates and the kernel's routes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativePlan {
    /// Tunnel endpoint → `NATIVE_PATH_*` (`knit_native_nodes`).
    pub paths: BTreeMap<Ipv4Addr, u32>,
    /// Candidates the underlay does not route: dropped in `native`,
    /// tunnelled in `hybrid`.
    pub unroutable: Vec<Candidate>,
}

/// Which candidates are reached natively, given the kernel's `routes`
/// (after the agent's own direct routes went in).
pub fn plan(mode: RoutingMode, candidates: Vec<Candidate>, routes: &[KernelRoute]) -> NativePlan {
    let mut out = NativePlan::default();
    for c in candidates {
        let reachable = !c.pod_cidrs.is_empty() && c.pod_cidrs.iter().all(|cidr| routed(routes, *cidr));
        if reachable {
            out.paths.insert(c.endpoint, NATIVE_PATH_ROUTED);
            continue;
        }
        if mode == RoutingMode::Native {
            out.paths.insert(c.endpoint, NATIVE_PATH_UNROUTABLE);
        }
        out.unroutable.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use knit_kvstore::records::{ClusterConfigRecord, NodeRecord};

    fn node(name: &str, cluster: &str, ip: &str, cidr: &str) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            cluster: cluster.into(),
            underlay_ips: vec![ip.parse().unwrap()],
            pod_cidrs: vec![cidr.parse().unwrap()],
            tunnel_endpoint: ip.parse().unwrap(),
            boot_id: String::new(),
            wireguard: None,
        }
    }

    fn config(name: &str, mode: Option<&str>) -> ClusterConfigRecord {
        ClusterConfigRecord {
            name: name.into(),
            id: 2,
            pod_cidrs: vec![],
            capabilities: vec![],
            tunnel_port: None,
            routing_mode: mode.map(str::to_owned),
        }
    }

    /// cluster-a (n1, n2) and three peers: native, tunnel, and one from
    /// before modes.
    fn mesh() -> MeshIndex {
        let mut index = MeshIndex::new("cluster-a");
        for (n, ip, cidr) in [
            ("n1", "192.168.50.11", "10.1.1.0/24"),
            ("n2", "192.168.50.12", "10.1.2.0/24"),
        ] {
            index.local.nodes.insert(n.into(), node(n, "cluster-a", ip, cidr));
        }
        for (peer, mode, ip, cidr) in [
            ("cluster-b", Some("native"), "192.168.50.21", "10.2.1.0/24"),
            ("cluster-c", Some("tunnel"), "192.168.50.31", "10.3.1.0/24"),
            ("cluster-d", None, "192.168.50.41", "10.4.1.0/24"),
            ("cluster-e", Some("bgp-someday"), "192.168.50.51", "10.5.1.0/24"),
        ] {
            let view = index.peers.entry(peer.into()).or_default();
            view.config = Some(config(peer, mode));
            view.nodes.insert("m1".into(), node("m1", peer, ip, cidr));
        }
        index
    }

    fn endpoints(c: &[Candidate]) -> Vec<String> {
        c.iter().map(|c| c.endpoint.to_string()).collect()
    }

    #[test]
    fn candidates_follow_the_mode_and_each_peers_announced_mode() {
        let index = mesh();
        assert!(candidates(&index, RoutingMode::Tunnel, "n1").is_empty());
        assert_eq!(
            endpoints(&candidates(&index, RoutingMode::Hybrid, "n1")),
            ["192.168.50.12"],
            "hybrid: this cluster's other nodes only"
        );
        assert_eq!(
            endpoints(&candidates(&index, RoutingMode::Native, "n1")),
            ["192.168.50.12", "192.168.50.21"],
            "native: and the native peer's; not the tunnel peer, the peer from before modes or a mode unknown here"
        );
    }

    fn route(dst: &str, gw: Option<&str>) -> KernelRoute {
        KernelRoute {
            dst: dst.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
        }
    }

    #[test]
    fn only_a_route_more_specific_than_the_default_makes_a_node_reachable() {
        let routes = [
            route("0.0.0.0/0", Some("192.168.50.1")),
            route("192.168.50.0/24", None),
            route("10.1.2.0/24", Some("192.168.50.12")),
            route("10.2.0.0/16", Some("192.168.50.1")),
        ];
        assert!(routed(&routes, "10.1.2.0/24".parse().unwrap()));
        assert!(
            routed(&routes, "10.2.1.0/24".parse().unwrap()),
            "a BGP aggregate covers it"
        );
        assert!(
            !routed(&routes, "10.3.1.0/24".parse().unwrap()),
            "only the default route"
        );
        assert!(
            !routed(&routes, "10.1.0.0/16".parse().unwrap()),
            "a route covering part of it"
        );
        assert!(on_link(&routes, "192.168.50.21".parse().unwrap()));
        assert!(
            !on_link(&routes, "192.168.60.21".parse().unwrap()),
            "behind the default gateway"
        );
    }

    #[test]
    fn unroutable_nodes_are_dropped_in_native_and_tunnelled_in_hybrid() {
        let index = mesh();
        let routes = [
            route("192.168.50.0/24", None),
            route("10.1.2.0/24", Some("192.168.50.12")),
        ];
        let native = plan(
            RoutingMode::Native,
            candidates(&index, RoutingMode::Native, "n1"),
            &routes,
        );
        let n2: Ipv4Addr = "192.168.50.12".parse().unwrap();
        let b1: Ipv4Addr = "192.168.50.21".parse().unwrap();
        assert_eq!(
            native.paths,
            BTreeMap::from([(n2, NATIVE_PATH_ROUTED), (b1, NATIVE_PATH_UNROUTABLE)])
        );
        assert_eq!(endpoints(&native.unroutable), ["192.168.50.21"]);
        let hybrid = plan(
            RoutingMode::Hybrid,
            candidates(&index, RoutingMode::Hybrid, "n1"),
            &[],
        );
        assert!(hybrid.paths.is_empty(), "hybrid: the tunnel takes over");
        assert_eq!(endpoints(&hybrid.unroutable), ["192.168.50.12"]);
    }

    #[test]
    fn peer_routes_go_only_to_native_peers_on_this_segment() {
        let index = mesh();
        let mut cands = candidates(&index, RoutingMode::Native, "n1");
        cands.push(Candidate {
            node: "far".into(),
            cluster: "cluster-b".into(),
            endpoint: "192.168.60.5".parse().unwrap(),
            pod_cidrs: vec!["10.2.9.0/24".parse().unwrap()],
        });
        let routes = [
            route("192.168.50.0/24", None),
            route("0.0.0.0/0", Some("192.168.50.1")),
        ];
        assert_eq!(
            peer_routes(&cands, "cluster-a", &routes),
            BTreeMap::from([("10.2.1.0/24".parse().unwrap(), "192.168.50.21".parse().unwrap())]),
            "not this cluster's node (node_routes' job), not a node behind a gateway"
        );
    }
}
