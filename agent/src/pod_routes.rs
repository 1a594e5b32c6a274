//! The MTU per path inside pods (native and hybrid routing), as Cilium's
//! route MTU does: a pod's interface keeps the underlay's full MTU, which
//! native paths (and traffic leaving the mesh) carry whole, and the pod
//! gets a route with the tunnel's smaller MTU to every pod CIDR reached
//! through the tunnel. Its TCP then sends segments the tunnel carries
//! whole, and its UDP is fragmented in the pod, never on the underlay.
//!
//! [`tunnel_cidrs`] is pure: every peer cluster the mode does not reach
//! natively (by its announced pod CIDRs, or its nodes' when it announces
//! none), and in hybrid the nodes of this cluster the underlay does not
//! route. [`sync`] writes them into one pod's namespace through a netlink
//! socket opened there: routes via the pod's default gateway, marked with
//! [`crate::netdev::ROUTE_PROTOCOL`] so nothing else is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMetric, RouteProtocol};

use crate::index::MeshIndex;
use crate::netdev::{NetDevices, ROUTE_PROTOCOL, netlink};
use crate::routing::{Candidate, RoutingMode};
use crate::{Error, Result};

/// VXLAN's overhead over IPv4 (outer IPv4 20, UDP 8, VXLAN 8, inner
/// Ethernet 14).
pub const TUNNEL_OVERHEAD: u32 = 50;

/// Pod CIDRs reached through the tunnel under `mode`, given the nodes the
/// routing plan found `unroutable`; empty in tunnel mode (there the pods'
/// interfaces have the tunnel's MTU).
pub fn tunnel_cidrs(index: &MeshIndex, mode: RoutingMode, unroutable: &[Candidate]) -> BTreeSet<Ipv4Net> {
    if mode == RoutingMode::Tunnel {
        return BTreeSet::new();
    }
    let v4 = |c: &IpNet| match c {
        IpNet::V4(v4) => Some(v4.trunc()),
        IpNet::V6(_) => None,
    };
    let mut out = BTreeSet::new();
    for view in index.peers.values() {
        let native = mode == RoutingMode::Native
            && view
                .config
                .as_ref()
                .is_some_and(|c| c.routing_mode() == RoutingMode::Native);
        if native {
            continue;
        }
        match view.config.as_ref().filter(|c| !c.pod_cidrs.is_empty()) {
            Some(config) => out.extend(config.pod_cidrs.iter().filter_map(v4)),
            None => out.extend(
                view.nodes
                    .values()
                    .flat_map(|n| n.pod_cidrs.iter().filter_map(v4)),
            ),
        }
    }
    if mode == RoutingMode::Hybrid {
        let local = index.local_cluster();
        out.extend(
            unroutable
                .iter()
                .filter(|c| c.cluster == local)
                .flat_map(|c| c.pod_cidrs.iter().copied()),
        );
    }
    out
}

/// Makes the pod whose network namespace is at `netns` route `cidrs` with
/// MTU `mtu` via its default gateway, and removes the agent's routes to
/// anything else.
pub async fn sync(netns: &str, cidrs: &BTreeSet<Ipv4Net>, mtu: u32) -> Result<()> {
    let net = NetDevices::connect_in(netns)?;
    let mut routes = net
        .handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let (mut gateway, mut current) = (None, BTreeMap::new());
    while let Some(msg) = routes.try_next().await.map_err(netlink("list a pod's routes"))? {
        let (dst, gw, oif, route_mtu) = describe(&msg);
        if msg.header.destination_prefix_length == 0 && gateway.is_none() {
            gateway = gw.zip(oif);
        }
        if msg.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
            && let Ok(net) = Ipv4Net::new(dst, msg.header.destination_prefix_length)
        {
            current.insert(net, (gw, route_mtu));
        }
    }
    let Some((gw, oif)) = gateway else {
        return Err(Error::Netlink {
            action: format!("find the default route of the pod at {netns}"),
            source: "the pod has no default route".into(),
        });
    };
    for cidr in cidrs {
        if current.get(cidr) == Some(&(Some(gw), Some(mtu))) {
            continue;
        }
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.addr(), cidr.prefix_len())
            .gateway(gw)
            .output_interface(oif)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        route
            .attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
        net.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(netlink("add a route with the tunnel's MTU in a pod"))?;
    }
    for (cidr, (gw, _)) in current.iter().filter(|(c, _)| !cidrs.contains(c)) {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(cidr.addr(), cidr.prefix_len())
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
        if let Some(gw) = gw {
            route = route.gateway(*gw);
        }
        net.handle
            .route()
            .del(route.build())
            .execute()
            .await
            .map_err(netlink("delete a pod's route"))?;
    }
    Ok(())
}

/// Destination, gateway, output interface and MTU of a route.
fn describe(
    msg: &rtnetlink::packet_route::route::RouteMessage,
) -> (Ipv4Addr, Option<Ipv4Addr>, Option<u32>, Option<u32>) {
    let (mut dst, mut gw, mut oif, mut mtu) = (Ipv4Addr::UNSPECIFIED, None, None, None);
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Metrics(ms) => {
                mtu = ms.iter().find_map(|m| match m {
                    RouteMetric::Mtu(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
    (dst, gw, oif, mtu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use knit_kvstore::records::{ClusterConfigRecord, NodeRecord};

    fn index() -> MeshIndex {
        let mut index = MeshIndex::new("cluster-a");
        for (peer, mode, cidrs) in [
            ("cluster-b", Some("native"), vec!["10.2.0.0/16"]),
            ("cluster-c", Some("tunnel"), vec!["10.3.0.0/16", "10.33.0.0/16"]),
            ("cluster-d", None, vec![]),
        ] {
            let view = index.peers.entry(peer.into()).or_default();
            view.config = Some(ClusterConfigRecord {
                name: peer.into(),
                id: 2,
                pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                capabilities: vec![],
                tunnel_port: None,
                routing_mode: mode.map(str::to_owned),
            });
            view.nodes.insert(
                "m1".into(),
                NodeRecord {
                    name: "m1".into(),
                    cluster: peer.into(),
                    underlay_ips: vec![],
                    pod_cidrs: vec!["10.4.1.0/24".parse().unwrap()],
                    tunnel_endpoint: "192.168.50.41".parse().unwrap(),
                    boot_id: String::new(),
                    wireguard: None,
                },
            );
        }
        index
    }

    fn nets(list: &[&str]) -> BTreeSet<Ipv4Net> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn the_tunnels_pod_cidrs_follow_the_mode() {
        let index = index();
        let unroutable = vec![Candidate {
            node: "n2".into(),
            cluster: "cluster-a".into(),
            endpoint: "192.168.60.12".parse().unwrap(),
            pod_cidrs: vec!["10.1.2.0/24".parse().unwrap()],
        }];
        assert!(tunnel_cidrs(&index, RoutingMode::Tunnel, &unroutable).is_empty());
        assert_eq!(
            tunnel_cidrs(&index, RoutingMode::Native, &unroutable),
            nets(&["10.3.0.0/16", "10.33.0.0/16", "10.4.1.0/24"]),
            "native: every peer that is not native (a peer announcing no CIDRs by its nodes'); an unroutable node's pods are dropped anyway"
        );
        assert_eq!(
            tunnel_cidrs(&index, RoutingMode::Hybrid, &unroutable),
            nets(&[
                "10.1.2.0/24",
                "10.2.0.0/16",
                "10.3.0.0/16",
                "10.33.0.0/16",
                "10.4.1.0/24"
            ]),
            "hybrid: every peer, and this cluster's nodes the tunnel takes over"
        );
    }
}
