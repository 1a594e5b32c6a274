//! `knitctl status`: the mesh apiserver's per-peer reports as a table, in
//! the spirit of `cilium clustermesh status`, or as one machine-readable
//! [`StatusReport`] (`-o json|yaml`). Pure: reports and the current time
//! in, text out.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use knit_kvstore::keys::Kind;
use knit_kvstore::records::{AgentStatusRecord, PeerStatusRecord};

/// `knitctl status -o json|yaml`: the cluster, every peer report and every
/// agent's view of the peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    /// This cluster's name.
    pub cluster: String,
    /// One report per peer, sorted by name.
    pub peers: Vec<PeerStatusRecord>,
    /// One report per agent (node), sorted by node.
    #[serde(default)]
    pub nodes: Vec<AgentStatusRecord>,
}

/// How this cluster's agents reach one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentsReaching {
    /// Agents that reach the peer.
    pub connected: u32,
    /// Agents reporting.
    pub total: u32,
    /// Nodes that do not reach it, each with why.
    pub not_connected: Vec<(String, String)>,
}

/// Counts the agents among `nodes` that reach `peer`. A node whose report
/// does not name the peer has no data of it yet and does not reach it.
pub fn agents_reaching(nodes: &[AgentStatusRecord], peer: &str) -> AgentsReaching {
    let mut out = AgentsReaching::default();
    for node in nodes {
        out.total += 1;
        match node.peers.get(peer) {
            Some(view) if view.connected => out.connected += 1,
            Some(view) => out.not_connected.push((
                node.node.clone(),
                view.problem.clone().unwrap_or_else(|| "not connected".into()),
            )),
            None => out
                .not_connected
                .push((node.node.clone(), "has no data of this peer yet".into())),
        }
    }
    out
}

impl StatusReport {
    /// Peers that are connected and synced.
    pub fn ready_peers(&self) -> Vec<&str> {
        self.peers
            .iter()
            .filter(|p| p.connected && p.synced)
            .map(|p| p.peer.as_str())
            .collect()
    }
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn ago(now: i64, then: Option<i64>) -> String {
    match then {
        Some(t) => format!("{}s ago", (now - t).max(0)),
        None => "never".into(),
    }
}

/// The per-node view: for every agent, whether it reaches each peer; then,
/// for agents that encrypt, each WireGuard tunnel and its last handshake
/// (`now` in Unix seconds).
pub fn render_nodes(report: &StatusReport, now: i64) -> String {
    let mut out = String::new();
    let peers: Vec<&str> = report.peers.iter().map(|p| p.peer.as_str()).collect();
    let _ = write!(out, "{:<24}", "NODE");
    for p in &peers {
        let _ = write!(out, " {p:<14}");
    }
    out.push('\n');
    for node in &report.nodes {
        let _ = write!(out, "{:<24}", node.node);
        for p in &peers {
            let cell = match node.peers.get(*p) {
                Some(v) if v.connected => "yes",
                Some(_) => "no",
                None => "no data",
            };
            let _ = write!(out, " {cell:<14}");
        }
        out.push('\n');
        for (p, view) in &node.peers {
            if let Some(problem) = &view.problem {
                let _ = writeln!(out, "  {p}: {problem}");
            }
        }
    }
    let encrypting: Vec<&AgentStatusRecord> = report.nodes.iter().filter(|n| n.wireguard.is_some()).collect();
    if !encrypting.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:<32} {:<6} LAST HANDSHAKE",
            "WIREGUARD NODE", "REMOTE NODE", "UP"
        );
        for node in encrypting {
            if node.wireguard_tunnels.is_empty() {
                let _ = writeln!(out, "{:<24} (no peers yet)", node.node);
            }
            for (remote, tunnel) in &node.wireguard_tunnels {
                let _ = writeln!(
                    out,
                    "{:<24} {remote:<32} {:<6} {}",
                    node.node,
                    yes_no(tunnel.up),
                    ago(now, tunnel.last_handshake)
                );
            }
        }
    }
    out
}

/// Policies an agent rejected, each once, with the nodes reporting it.
fn rejected_policies(nodes: &[AgentStatusRecord]) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in nodes {
        for p in &n.rejected_policies {
            out.entry(p.as_str()).or_default().push(n.node.as_str());
        }
    }
    out
}

/// Renders the status of `cluster` from its peer and agent reports.
pub fn render_status(
    cluster: &str,
    reports: &[PeerStatusRecord],
    nodes: &[AgentStatusRecord],
    now_unix: i64,
) -> String {
    let mut out = String::new();
    let ready = reports.iter().filter(|r| r.connected && r.synced).count();
    let _ = writeln!(
        out,
        "cluster {cluster}: {ready}/{} peers connected and synced",
        reports.len()
    );
    let _ = writeln!(
        out,
        "{:<14} {:<9} {:<6} {:>6} {:>5} {:>9} {:>10} {:>8} {:>8} {:<10} {:<10}",
        "PEER",
        "CONNECTED",
        "AGENTS",
        "SYNCED",
        "NODES",
        "ENDPOINTS",
        "IDENTITIES",
        "SERVICES",
        "REJECTED",
        "LAST SYNC",
        "WITHDRAWN"
    );
    for r in reports {
        let count = |k: Kind| r.counts.get(&k).copied().unwrap_or(0);
        let agents = agents_reaching(nodes, &r.peer);
        let _ = writeln!(
            out,
            "{:<14} {:<9} {:<6} {:>6} {:>5} {:>9} {:>10} {:>8} {:>8} {:<10} {:<10}",
            r.peer,
            yes_no(r.connected),
            yes_no(r.synced),
            format!("{}/{}", agents.connected, agents.total),
            count(Kind::Nodes),
            count(Kind::Endpoints),
            count(Kind::Identities),
            count(Kind::Services),
            r.rejected.values().sum::<u64>(),
            ago(now_unix, r.last_sync_unix),
            yes_no(r.withdrawn),
        );
        if let Some(e) = &r.last_error {
            let _ = writeln!(out, "  {}: {e}", r.peer);
        }
        for (reason, n) in &r.rejected {
            let _ = writeln!(out, "  {}: rejected {n} record(s): {reason}", r.peer);
        }
        for (node, why) in &agents.not_connected {
            let _ = writeln!(out, "  {}: node {node} does not reach it: {why}", r.peer);
        }
    }
    for (policy, nodes) in rejected_policies(nodes) {
        let _ = writeln!(out, "{policy} (reported by {})", nodes.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use knit_kvstore::records::{NodeWireguard, WireguardKey, WireguardTunnel};

    #[test]
    fn table_shows_counts_and_problems_per_peer() {
        let mut b = PeerStatusRecord {
            peer: "cluster-b".into(),
            connected: true,
            synced: true,
            last_sync_unix: Some(90),
            ..Default::default()
        };
        b.counts.insert(Kind::Endpoints, 12);
        b.rejected.insert("outside_pod_cidrs".into(), 3);
        let c = PeerStatusRecord {
            peer: "cluster-c".into(),
            last_error: Some("connection refused".into()),
            ..Default::default()
        };
        let nodes = [
            AgentStatusRecord {
                node: "a-n1".into(),
                peers: [(
                    "cluster-b".to_owned(),
                    knit_kvstore::records::AgentPeerView {
                        connected: true,
                        problem: None,
                        tunnel_port_mismatch: None,
                        encryption_mismatch: None,
                    },
                )]
                .into(),
                rejected_policies: vec![
                    "CiliumNetworkPolicy shop/l7 not applied: field rules is not supported".into(),
                ],
                wireguard: None,
                wireguard_tunnels: Default::default(),
            },
            AgentStatusRecord {
                node: "a-n2".into(),
                peers: [(
                    "cluster-b".to_owned(),
                    knit_kvstore::records::AgentPeerView {
                        connected: false,
                        problem: Some("none of its 2 nodes answers".into()),
                        tunnel_port_mismatch: None,
                        encryption_mismatch: None,
                    },
                )]
                .into(),
                rejected_policies: vec![
                    "CiliumNetworkPolicy shop/l7 not applied: field rules is not supported".into(),
                ],
                wireguard: None,
                wireguard_tunnels: Default::default(),
            },
        ];
        let t = render_status("cluster-a", &[b, c], &nodes, 100);
        assert!(
            t.contains("CiliumNetworkPolicy shop/l7 not applied: field rules is not supported (reported by a-n1, a-n2)"),
            "{t}"
        );
        assert!(t.contains("   1/2 "), "{t}");
        assert!(
            t.contains("cluster-b: node a-n2 does not reach it: none of its 2 nodes answers"),
            "{t}"
        );
        assert!(
            t.contains("cluster-c: node a-n1 does not reach it: has no data of this peer yet"),
            "{t}"
        );
        assert!(
            t.starts_with("cluster cluster-a: 1/2 peers connected and synced"),
            "{t}"
        );
        assert!(t.contains("cluster-b      yes       yes"), "{t}");
        let report = StatusReport {
            cluster: "cluster-a".into(),
            peers: vec![PeerStatusRecord {
                peer: "cluster-b".into(),
                ..Default::default()
            }],
            nodes: nodes.to_vec(),
        };
        let per_node = render_nodes(&report, 100);
        assert!(per_node.contains("a-n1                     yes"), "{per_node}");
        assert!(per_node.contains("a-n2                     no"), "{per_node}");
        assert!(!per_node.contains("WIREGUARD"), "no node encrypts: {per_node}");
        assert!(t.contains("       12 "), "{t}");
        assert!(t.contains("10s ago"), "{t}");
        assert!(
            t.contains("cluster-b: rejected 3 record(s): outside_pod_cidrs"),
            "{t}"
        );
        assert!(t.contains("cluster-c: connection refused"), "{t}");
    }

    #[test]
    fn per_node_view_shows_each_wireguard_tunnel_and_its_last_handshake() {
        let key = WireguardKey::try_from("A".repeat(43) + "=").expect("key");
        let wireguard = Some(NodeWireguard {
            public_key: key,
            port: 51871,
            next: None,
        });
        let tunnels = [
            (
                "cluster-a/a-n2",
                WireguardTunnel {
                    up: true,
                    last_handshake: Some(70),
                },
            ),
            (
                "cluster-b/b-n1",
                WireguardTunnel {
                    up: false,
                    last_handshake: None,
                },
            ),
        ];
        let report = StatusReport {
            cluster: "cluster-a".into(),
            peers: Vec::new(),
            nodes: vec![
                AgentStatusRecord {
                    node: "a-n1".into(),
                    wireguard: wireguard.clone(),
                    wireguard_tunnels: tunnels
                        .iter()
                        .map(|(n, t)| ((*n).to_owned(), t.clone()))
                        .collect(),
                    ..Default::default()
                },
                AgentStatusRecord {
                    node: "a-n2".into(),
                    wireguard,
                    ..Default::default()
                },
                AgentStatusRecord {
                    node: "a-n3".into(),
                    ..Default::default()
                },
            ],
        };
        let t = render_nodes(&report, 100);
        let lines: Vec<&str> = t
            .lines()
            .skip_while(|l| !l.starts_with("WIREGUARD NODE"))
            .collect();
        assert_eq!(
            lines,
            [
                "WIREGUARD NODE           REMOTE NODE                      UP     LAST HANDSHAKE",
                "a-n1                     cluster-a/a-n2                   yes    30s ago",
                "a-n1                     cluster-b/b-n1                   no     never",
                "a-n2                     (no peers yet)",
            ],
            "{t}"
        );
    }

    #[test]
    fn the_machine_readable_report_round_trips_through_json_and_yaml() {
        let mut b = PeerStatusRecord {
            peer: "cluster-b".into(),
            connected: true,
            synced: true,
            ..Default::default()
        };
        b.counts.insert(Kind::Endpoints, 12);
        let report = StatusReport {
            cluster: "cluster-a".into(),
            peers: vec![
                b,
                PeerStatusRecord {
                    peer: "cluster-c".into(),
                    ..Default::default()
                },
            ],
            nodes: vec![AgentStatusRecord {
                node: "a-n1".into(),
                peers: Default::default(),
                rejected_policies: Vec::new(),
                wireguard: None,
                wireguard_tunnels: Default::default(),
            }],
        };
        let json: StatusReport = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(json, report);
        let yaml: StatusReport = serde_saphyr::from_str(&serde_saphyr::to_string(&report).unwrap()).unwrap();
        assert_eq!(yaml, report);
        assert_eq!(report.ready_peers(), ["cluster-b"]);
        assert!(
            serde_json::to_string(&report)
                .unwrap()
                .contains("\"endpoints\":12")
        );
    }
}
