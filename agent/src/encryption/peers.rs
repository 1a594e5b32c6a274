//! Which WireGuard peers and routes a node wants, from the mesh index:
//! every other node of every cluster whose record carries a key. The peer's
//! endpoint is its tunnel endpoint at its WireGuard port, and its one
//! allowed IP is its tunnel endpoint, the outer address of the VXLAN
//! packets it sends and is sent. A node that announced its next key is
//! planned with that key from the moment it named on: it switches then too,
//! so neither end waits for the other. Pure: [`super::node::NodeEncryption`]
//! applies it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};

use super::keys::PublicKeyText;
use super::uapi::WireguardPeer;
use crate::index::MeshIndex;

/// What the node wants of WireGuard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WireguardPlan {
    /// Peers by public key.
    pub peers: BTreeMap<PublicKeyText, WireguardPeer>,
    /// Tunnel endpoints routed into the WireGuard interface (/32 each).
    pub routes: BTreeSet<Ipv4Net>,
    /// The node (`cluster/node`) each peer's key belongs to.
    pub nodes: BTreeMap<PublicKeyText, String>,
    /// Nodes left out because their key is this node's own or another
    /// node's, or their tunnel endpoint is another node's (each key and
    /// address belongs to one peer).
    pub conflicts: Vec<String>,
    /// The earliest announced key switch still to come (Unix ms): the plan
    /// changes then.
    pub next_switch: Option<i64>,
}

/// The plan for node `own` (of the local cluster), whose public key is
/// `own_key`, from `index`, at `now_ms` (Unix milliseconds).
pub fn plan(index: &MeshIndex, own: &str, own_key: &str, now_ms: i64) -> WireguardPlan {
    let mut out = WireguardPlan::default();
    let local = index.local.nodes.values().filter(|n| n.name != own);
    let remote = index.peers.values().flat_map(|v| v.nodes.values());
    for node in local.chain(remote) {
        let Some(wg) = &node.wireguard else { continue };
        let IpAddr::V4(endpoint) = node.tunnel_endpoint else {
            continue;
        };
        let route = Ipv4Net::from(endpoint);
        let key = match &wg.next {
            Some(next) if next.from_unix_ms <= now_ms => next.public_key.as_str().to_owned(),
            Some(next) => {
                out.next_switch = Some(
                    out.next_switch
                        .map_or(next.from_unix_ms, |t| t.min(next.from_unix_ms)),
                );
                wg.public_key.as_str().to_owned()
            }
            None => wg.public_key.as_str().to_owned(),
        };
        if key == own_key || out.peers.contains_key(&key) || out.routes.contains(&route) {
            out.conflicts.push(format!("{}/{}", node.cluster, node.name));
            continue;
        }
        out.routes.insert(route);
        out.nodes
            .insert(key.clone(), format!("{}/{}", node.cluster, node.name));
        out.peers.insert(
            key.clone(),
            WireguardPeer {
                public_key: key,
                endpoint: SocketAddr::new(node.tunnel_endpoint, wg.port),
                allowed_ips: vec![IpNet::V4(route)],
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use knit_kvstore::records::{NextWireguardKey, NodeRecord, NodeWireguard, WireguardKey};

    use super::*;

    const KEY_1: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const KEY_2: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";
    const KEY_3: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

    fn node(cluster: &str, name: &str, ip: &str, key: Option<&str>) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            cluster: cluster.into(),
            underlay_ips: vec![ip.parse().unwrap()],
            pod_cidrs: Vec::new(),
            tunnel_endpoint: ip.parse().unwrap(),
            boot_id: String::new(),
            wireguard: key.map(|k| NodeWireguard {
                public_key: WireguardKey::try_from(k.to_owned()).unwrap(),
                port: 51871,
                next: None,
            }),
        }
    }

    #[test]
    fn every_other_node_with_a_key_is_a_peer_at_its_tunnel_endpoint() {
        let mut index = MeshIndex::new("a");
        for n in [
            node("a", "a1", "192.168.1.1", Some(KEY_1)),
            node("a", "a2", "192.168.1.2", Some(KEY_2)),
            node("a", "a3", "192.168.1.3", None),
        ] {
            index.local.nodes.insert(n.name.clone(), n);
        }
        let b = &mut index.peers.entry("b".into()).or_default().nodes;
        for n in [
            node("b", "b1", "192.168.2.1", Some(KEY_3)),
            node("b", "b2", "192.168.2.2", Some(KEY_2)),
            node("b", "b3", "192.168.2.3", Some(KEY_1)),
            node(
                "b",
                "b4",
                "192.168.1.2",
                Some("BAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiM="),
            ),
        ] {
            b.insert(n.name.clone(), n);
        }

        let plan = plan(&index, "a1", KEY_1, 0);
        assert_eq!(
            plan.peers.keys().collect::<Vec<_>>(),
            vec![KEY_2, KEY_3],
            "{plan:?}"
        );
        let a2 = &plan.peers[KEY_2];
        assert_eq!(a2.endpoint, "192.168.1.2:51871".parse().unwrap());
        assert_eq!(a2.allowed_ips, vec!["192.168.1.2/32".parse::<IpNet>().unwrap()]);
        assert_eq!(plan.peers[KEY_3].endpoint, "192.168.2.1:51871".parse().unwrap());
        assert_eq!(
            plan.routes,
            BTreeSet::from([
                "192.168.1.2/32".parse().unwrap(),
                "192.168.2.1/32".parse().unwrap()
            ])
        );
        // b2 claims a2's key, b3 this node's own, b4 a2's address.
        assert_eq!(plan.conflicts, vec!["b/b2", "b/b3", "b/b4"]);
    }

    #[test]
    fn a_nodes_next_key_is_its_key_from_the_moment_it_named() {
        let mut index = MeshIndex::new("a");
        let mut a2 = node("a", "a2", "192.168.1.2", Some(KEY_2));
        a2.wireguard.as_mut().unwrap().next = Some(NextWireguardKey {
            public_key: WireguardKey::try_from(KEY_3.to_owned()).unwrap(),
            from_unix_ms: 5_000,
        });
        index.local.nodes.insert("a2".into(), a2);
        let mut b = node("b", "b1", "192.168.2.1", Some(KEY_1));
        b.wireguard.as_mut().unwrap().next = Some(NextWireguardKey {
            public_key: WireguardKey::try_from("BAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiM=".to_owned())
                .unwrap(),
            from_unix_ms: 9_000,
        });
        index
            .peers
            .entry("b".into())
            .or_default()
            .nodes
            .insert("b1".into(), b);

        let before = plan(&index, "a1", "own", 4_999);
        assert_eq!(before.nodes.get(KEY_2).map(String::as_str), Some("a/a2"));
        assert_eq!(before.next_switch, Some(5_000));
        let at = plan(&index, "a1", "own", 5_000);
        assert_eq!(at.nodes.get(KEY_3).map(String::as_str), Some("a/a2"));
        assert!(!at.peers.contains_key(KEY_2));
        assert_eq!(at.peers[KEY_3].endpoint, "192.168.1.2:51871".parse().unwrap());
        assert_eq!(at.next_switch, Some(9_000), "b1's switch is still to come");
        assert_eq!(plan(&index, "a1", "own", 9_000).next_switch, None);
    }
}
