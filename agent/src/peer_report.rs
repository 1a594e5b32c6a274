//! What this node reports about each peer: [`views`] decides (pure) from
//! the index and the failing nodes; [`crate::status_publish`] keeps the
//! result at `knit/v1/agent-status/<node>` under a lease, so an agent that
//! is gone stops counting. The operator counts the reports into each
//! ClusterMeshPeer's `connected: n/m`.
//!
//! A node reaches a peer when the peer's data is synced in the local
//! kvstore (every kind's canary seen) and, if the peer announces nodes, the
//! data path to at least one of them answers its probes, and the peer's
//! tunnel is on this node's UDP port (a peer announcing another port is
//! never reachable: the VXLAN device sends every cluster's packets to its
//! own port). A peer whose nodes all publish no WireGuard key while this
//! node encrypts, or all publish one while it does not, is reported as an
//! encryption mismatch: its traffic is dropped (strict) or plaintext, and
//! the ClusterMeshPeer says which. A peer partly keyed is mid-rollout.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use knit_kvstore::keys::Kind;
use knit_kvstore::records::AgentPeerView;

use crate::index::MeshIndex;

/// This node's view of every peer in `index`, given the tunnel endpoints
/// failing their probes, this node's tunnel port and whether it encrypts.
pub fn views(
    index: &MeshIndex,
    failing: &BTreeSet<IpAddr>,
    tunnel_port: u16,
    encrypting: bool,
) -> BTreeMap<String, AgentPeerView> {
    index
        .peers
        .iter()
        .map(|(peer, view)| {
            let unsynced: Vec<&str> = Kind::ALL
                .iter()
                .filter(|k| !view.is_synced(**k))
                .map(|k| k.as_str())
                .collect();
            let answering = view
                .nodes
                .values()
                .filter(|n| !failing.contains(&n.tunnel_endpoint))
                .count();
            let peer_port = view.config.as_ref().and_then(|c| c.tunnel_port);
            let keyed = view.nodes.values().filter(|n| n.wireguard.is_some()).count();
            let encryption_mismatch = if view.nodes.is_empty() {
                None
            } else if encrypting && keyed == 0 {
                Some("none")
            } else if !encrypting && keyed == view.nodes.len() {
                Some("wireguard")
            } else {
                None
            };
            let problem = if let Some(port) = peer_port.filter(|p| *p != tunnel_port) {
                Some(format!(
                    "its tunnel is on UDP {port}, this cluster's on {tunnel_port}: set the same tunnelPort (ConfigMap knit-agent-config) in every cluster of the mesh"
                ))
            } else if let Some(theirs) = encryption_mismatch {
                Some(format!(
                    "its nodes' encryption is {theirs}, this node's is {}: set the same encryption (ConfigMap knit-agent-config) in every cluster of the mesh",
                    if encrypting { "wireguard" } else { "none" }
                ))
            } else if !unsynced.is_empty() {
                Some(format!("its {} are not synced yet", unsynced.join(", ")))
            } else if !view.nodes.is_empty() && answering == 0 {
                Some(format!(
                    "none of its {} nodes answers the data-path probe (UDP 8471)",
                    view.nodes.len()
                ))
            } else {
                None
            };
            (
                peer.clone(),
                AgentPeerView {
                    connected: problem.is_none(),
                    problem,
                    tunnel_port_mismatch: peer_port.filter(|p| *p != tunnel_port),
                    encryption_mismatch: encryption_mismatch.map(str::to_owned),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::put;

    #[test]
    fn a_peer_is_reached_when_synced_and_one_of_its_nodes_answers() {
        let mut index = MeshIndex::new("a");
        put(
            &mut index,
            "cache/b/config",
            serde_json::json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"]}),
        );
        for (node, ip) in [("b1", "192.168.2.1"), ("b2", "192.168.2.2")] {
            put(
                &mut index,
                &format!("cache/b/nodes/{node}"),
                serde_json::json!({"name": node, "cluster": "b", "underlayIps": [ip], "tunnelEndpoint": ip, "podCIDRs": []}),
            );
        }
        let not_synced = views(&index, &BTreeSet::new(), 8472, false);
        assert!(!not_synced["b"].connected);
        assert!(not_synced["b"].problem.as_deref().unwrap().contains("not synced"));

        for kind in Kind::ALL {
            put(
                &mut index,
                &format!("cache/b/synced/{kind}"),
                serde_json::json!(1),
            );
        }
        assert_eq!(
            views(&index, &BTreeSet::new(), 8472, false)["b"],
            AgentPeerView {
                connected: true,
                problem: None,
                tunnel_port_mismatch: None,
                encryption_mismatch: None,
            }
        );
        let one_down = BTreeSet::from(["192.168.2.1".parse().unwrap()]);
        assert!(views(&index, &one_down, 8472, false)["b"].connected);
        let all_down = BTreeSet::from(["192.168.2.1".parse().unwrap(), "192.168.2.2".parse().unwrap()]);
        let view = &views(&index, &all_down, 8472, false)["b"];
        assert!(!view.connected);
        assert!(
            view.problem.as_deref().unwrap().contains("none of its 2 nodes"),
            "{view:?}"
        );
    }

    #[test]
    fn a_peer_on_another_tunnel_port_is_not_reached_and_says_so() {
        let mut index = MeshIndex::new("a");
        let config = |port: Option<u16>| {
            let mut c = serde_json::json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"]});
            if let Some(p) = port {
                c["tunnelPort"] = p.into();
            }
            c
        };
        for kind in Kind::ALL {
            put(
                &mut index,
                &format!("cache/b/synced/{kind}"),
                serde_json::json!(1),
            );
        }
        put(&mut index, "cache/b/config", config(Some(8473)));
        let view = &views(&index, &BTreeSet::new(), 8472, false)["b"];
        assert!(!view.connected);
        assert_eq!(view.tunnel_port_mismatch, Some(8473));
        let problem = view.problem.as_deref().unwrap();
        assert!(
            problem.contains("UDP 8473") && problem.contains("8472") && problem.contains("tunnelPort"),
            "{problem}"
        );
        assert!(views(&index, &BTreeSet::new(), 8473, false)["b"].connected);
        // A writer from before the port was announced: nothing to compare.
        put(&mut index, "cache/b/config", config(None));
        assert!(views(&index, &BTreeSet::new(), 8472, false)["b"].connected);
    }

    #[test]
    fn a_peer_whose_nodes_encrypt_otherwise_is_not_reached_and_says_so() {
        let mut index = MeshIndex::new("a");
        for kind in Kind::ALL {
            put(
                &mut index,
                &format!("cache/b/synced/{kind}"),
                serde_json::json!(1),
            );
        }
        let key = |i: u8| format!("{}{}=", "A".repeat(42), ['A', 'E', 'I'][i as usize]);
        let node = |name: &str, ip: &str, key: Option<String>| {
            let mut n = serde_json::json!({"name": name, "cluster": "b", "underlayIps": [ip], "tunnelEndpoint": ip, "podCIDRs": []});
            if let Some(k) = key {
                n["wireguard"] = serde_json::json!({"publicKey": k, "port": 51871});
            }
            n
        };
        put(&mut index, "cache/b/nodes/b1", node("b1", "192.168.2.1", None));
        put(&mut index, "cache/b/nodes/b2", node("b2", "192.168.2.2", None));
        let view = &views(&index, &BTreeSet::new(), 8472, true)["b"];
        assert!(!view.connected);
        assert_eq!(view.encryption_mismatch.as_deref(), Some("none"));
        let problem = view.problem.as_deref().unwrap();
        assert!(
            problem.contains("encryption is none, this node's is wireguard"),
            "{problem}"
        );
        assert!(views(&index, &BTreeSet::new(), 8472, false)["b"].connected);

        // Mid-rollout (one node keyed): neither side is told off.
        put(
            &mut index,
            "cache/b/nodes/b1",
            node("b1", "192.168.2.1", Some(key(1))),
        );
        assert!(views(&index, &BTreeSet::new(), 8472, true)["b"].connected);
        assert!(views(&index, &BTreeSet::new(), 8472, false)["b"].connected);

        put(
            &mut index,
            "cache/b/nodes/b2",
            node("b2", "192.168.2.2", Some(key(2))),
        );
        assert!(views(&index, &BTreeSet::new(), 8472, true)["b"].connected);
        let view = &views(&index, &BTreeSet::new(), 8472, false)["b"];
        assert_eq!(view.encryption_mismatch.as_deref(), Some("wireguard"));
        assert!(!view.connected);
    }
}
