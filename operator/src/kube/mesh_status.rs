//! Reads the mesh apiserver's per-peer reports (`knit/v1/mesh-status/<peer>`)
//! from this cluster's etcd, with the read-only `local` client certificate,
//! and every agent's view of the peers (`knit/v1/agent-status/<node>`), and
//! hands them to the mesh loop, which turns them into ClusterMeshPeer
//! status (connected, agents n/m and the nodes that do not reach the peer,
//! synced, counts, last sync, last error).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use knit_kvstore::etcd;
use knit_kvstore::keys::{Key, agent_status_prefix, mesh_status_prefix};
use knit_kvstore::records::{AgentStatusRecord, PeerStatusRecord};
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::kube::Applier;
use crate::names;
use crate::render::PeerSyncReport;
use crate::status_table::agents_reaching;

/// The latest reports, shared with the mesh loop.
pub type MeshReports = Arc<Mutex<Reports>>;

/// The latest report per peer (from the mesh apiserver) and per node (from
/// each agent).
#[derive(Clone, Debug, Default)]
pub struct Reports {
    /// Per peer cluster name.
    pub peers: BTreeMap<String, PeerStatusRecord>,
    /// Per node name.
    pub agents: BTreeMap<String, AgentStatusRecord>,
}

/// Connects to this cluster's etcd (the mesh apiserver's Service) with the
/// read-only `local` certificate, read from its Secret.
pub async fn connect_local_etcd(
    applier: &Applier,
    config: &ClusterConfig,
) -> knit_kvstore::Result<etcd_client::Client> {
    let endpoint = format!(
        "https://{}.{}.svc:{}",
        names::APISERVER,
        config.namespace,
        config.apiserver.port
    );
    let read = |key: &'static str| async move {
        applier
            .secret_key(names::LOCAL_CERT_SECRET, key)
            .await
            .ok()
            .flatten()
            .ok_or(knit_kvstore::Error::InvalidClientConfig {
                field: "knit-local-client-cert",
                problem: format!("Secret has no {key} yet"),
            })
    };
    let (ca, cert, key) = (
        read("ca.crt").await?,
        read("tls.crt").await?,
        read("tls.key").await?,
    );
    etcd::connect_pem(&[endpoint], ca.as_bytes(), cert.as_bytes(), key.as_bytes()).await
}

/// Watches the reports until the process stops; pokes `changed` on every update.
pub async fn watch_reports(
    applier: Applier,
    config: ClusterConfig,
    reports: MeshReports,
    changed: mpsc::Sender<()>,
) {
    let connect = move || {
        let (applier, config) = (applier.clone(), config.clone());
        async move { connect_local_etcd(&applier, &config).await }
    };
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(watch_prefix(connect.clone(), mesh_status_prefix(), tx.clone()));
    tokio::spawn(watch_prefix(connect, agent_status_prefix(), tx));
    while let Some(event) = rx.recv().await {
        let changed_now = match event {
            WatchEvent::Upsert { key, value } => {
                let mut map = reports.lock().unwrap_or_else(|p| p.into_inner());
                map.apply(&key, Some(&value))
            }
            WatchEvent::Delete { key } => {
                let mut map = reports.lock().unwrap_or_else(|p| p.into_inner());
                map.apply(&key, None)
            }
            WatchEvent::ListDone => false,
            WatchEvent::Disconnected { error } => {
                tracing::debug!(%error, "mesh reports unavailable; retrying");
                false
            }
        };
        if changed_now {
            let _ = changed.try_send(());
        }
    }
}

impl Reports {
    /// Applies one report key (`None`: deleted); whether anything changed.
    /// Unreadable reports are ignored.
    pub fn apply(&mut self, key: &str, value: Option<&[u8]>) -> bool {
        match Key::parse(key) {
            Some(Key::MeshStatus(peer)) => update(&mut self.peers, peer, value),
            Some(Key::AgentStatus(node)) => update(&mut self.agents, node, value),
            _ => false,
        }
    }

    /// What the render needs about `peer`: the mesh apiserver's report,
    /// with how many agents reach the peer.
    pub fn sync_report(&self, peer: &str) -> Option<PeerSyncReport> {
        let mut report = PeerSyncReport::from(self.peers.get(peer)?);
        let agents: Vec<AgentStatusRecord> = self.agents.values().cloned().collect();
        let reaching = agents_reaching(&agents, peer);
        report.tunnel_port_mismatch = agents
            .iter()
            .find_map(|a| a.peers.get(peer)?.tunnel_port_mismatch);
        report.encryption_mismatch = agents
            .iter()
            .find_map(|a| a.peers.get(peer)?.encryption_mismatch.clone());
        if reaching.total > 0 {
            report.agents = Some((reaching.connected, reaching.total));
            report.nodes_not_connected = reaching
                .not_connected
                .into_iter()
                .map(|(node, why)| format!("{node}: {why}"))
                .collect();
        }
        Some(report)
    }
}

fn update<T: serde::de::DeserializeOwned + PartialEq>(
    map: &mut BTreeMap<String, T>,
    name: String,
    value: Option<&[u8]>,
) -> bool {
    let new = match value {
        None => None,
        Some(v) => match serde_json::from_slice::<T>(v) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(%name, error = %e, "ignoring an unreadable report");
                return false;
            }
        },
    };
    let before = map.get(&name);
    if before == new.as_ref() {
        return false;
    }
    match new {
        Some(r) => map.insert(name, r),
        None => map.remove(&name),
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(node: &str, reaches_b: Option<bool>) -> Vec<u8> {
        let mut peers = BTreeMap::new();
        if let Some(connected) = reaches_b {
            peers.insert(
                "b".to_owned(),
                knit_kvstore::records::AgentPeerView {
                    connected,
                    problem: (!connected).then(|| "none of its 1 nodes answers".into()),
                    tunnel_port_mismatch: None,
                    encryption_mismatch: None,
                },
            );
        }
        serde_json::to_vec(&AgentStatusRecord {
            node: node.into(),
            peers,
            rejected_policies: Vec::new(),
            wireguard: None,
            wireguard_tunnels: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn agents_reports_become_n_of_m_with_the_nodes_that_do_not_reach_the_peer() {
        let mut reports = Reports::default();
        let mesh = serde_json::to_vec(&PeerStatusRecord {
            peer: "b".into(),
            connected: true,
            synced: true,
            ..Default::default()
        })
        .unwrap();
        assert!(reports.apply("knit/v1/mesh-status/b", Some(&mesh)));
        assert_eq!(
            reports.sync_report("b").unwrap().agents,
            None,
            "no agent reports yet"
        );
        assert!(reports.apply("knit/v1/agent-status/n1", Some(&agent("n1", Some(true)))));
        assert!(reports.apply("knit/v1/agent-status/n2", Some(&agent("n2", Some(false)))));
        assert!(reports.apply("knit/v1/agent-status/n3", Some(&agent("n3", None))));
        assert!(
            !reports.apply("knit/v1/agent-status/n3", Some(&agent("n3", None))),
            "unchanged"
        );
        assert!(!reports.apply("knit/v1/agent-status/n4", Some(b"not json")));
        let report = reports.sync_report("b").unwrap();
        assert_eq!(report.agents, Some((1, 3)));
        assert_eq!(
            report.nodes_not_connected,
            [
                "n2: none of its 1 nodes answers",
                "n3: has no data of this peer yet"
            ]
        );
        // An agent whose lease expired stops counting.
        assert!(reports.apply("knit/v1/agent-status/n2", None));
        assert_eq!(reports.sync_report("b").unwrap().agents, Some((1, 2)));
        assert_eq!(reports.sync_report("c"), None);
        assert_eq!(reports.sync_report("b").unwrap().tunnel_port_mismatch, None);
        // An agent that finds the peer on another tunnel port.
        let other_port = serde_json::json!({"node": "n5", "peers": {"b": {
            "connected": false, "problem": "its tunnel is on UDP 8473", "tunnelPortMismatch": 8473}}});
        assert!(reports.apply("knit/v1/agent-status/n5", Some(other_port.to_string().as_bytes())));
        assert_eq!(reports.sync_report("b").unwrap().tunnel_port_mismatch, Some(8473));
        // An agent that finds the peer's nodes unencrypted while it encrypts.
        assert_eq!(reports.sync_report("b").unwrap().encryption_mismatch, None);
        let plaintext_peer = serde_json::json!({"node": "n6", "peers": {"b": {
            "connected": false, "problem": "its nodes' encryption is none", "encryptionMismatch": "none"}}});
        assert!(reports.apply(
            "knit/v1/agent-status/n6",
            Some(plaintext_peer.to_string().as_bytes())
        ));
        assert_eq!(
            reports.sync_report("b").unwrap().encryption_mismatch.as_deref(),
            Some("none")
        );
    }
}
