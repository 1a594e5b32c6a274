//! The nodes' WireGuard keys, as their agents report them.
//!
//! An agent with encryption on puts its public key and port in its status
//! record (`knit/v1/status/agents/<node>` in the local etcd). The exporter
//! watches those records, and [`NodeKeys`] keeps each node's latest, so
//! the node's record can carry it to every peer. A report that is not
//! readable, or that names another node than its key, is skipped. A lost
//! watch keeps what is known (the next list corrects it), so a restart of
//! etcd never strips keys from node records.

use std::collections::BTreeMap;

use etcd_client::Client;
use knit_kvstore::keys::{Key, agent_status_prefix};
use knit_kvstore::records::{AgentStatusRecord, NodeWireguard};
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use tokio::sync::{mpsc, watch};

/// Each node's WireGuard key and port, by node name.
pub type NodeWireguards = BTreeMap<String, NodeWireguard>;

/// The keys the agents report, kept from the status watch's events.
#[derive(Clone, Debug, Default)]
pub struct NodeKeys {
    keys: NodeWireguards,
}

impl NodeKeys {
    /// Takes one event of the status watch; whether any key changed.
    pub fn apply(&mut self, event: &WatchEvent) -> bool {
        let (node, value) = match event {
            WatchEvent::Upsert { key, value } => match Key::parse(key) {
                Some(Key::AgentStatus(node)) => (node, Some(value)),
                _ => return false,
            },
            WatchEvent::Delete { key } => match Key::parse(key) {
                Some(Key::AgentStatus(node)) => (node, None),
                _ => return false,
            },
            WatchEvent::ListDone | WatchEvent::Disconnected { .. } => return false,
        };
        let reported = value
            .and_then(|v| serde_json::from_slice::<AgentStatusRecord>(v).ok())
            .filter(|r| r.node == node)
            .and_then(|r| r.wireguard);
        match reported {
            Some(w) => self.keys.insert(node, w.clone()) != Some(w),
            None => self.keys.remove(&node).is_some(),
        }
    }

    /// The keys known now.
    pub fn keys(&self) -> &NodeWireguards {
        &self.keys
    }
}

/// Watches the agents' status records in `local` until `tx` is dropped,
/// publishing the keys on every change.
pub async fn watch_node_keys(local: Client, tx: watch::Sender<NodeWireguards>) {
    let connect = move || {
        let client = local.clone();
        async move { Ok(client) }
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let watching = tokio::spawn(watch_prefix(connect, agent_status_prefix(), events_tx));
    let mut keys = NodeKeys::default();
    while let Some(event) = events.recv().await {
        if keys.apply(&event) && tx.send(keys.keys().clone()).is_err() {
            break;
        }
    }
    watching.abort();
}

#[cfg(test)]
mod tests {
    use knit_kvstore::keys::agent_status_key;
    use knit_kvstore::records::WireguardKey;

    use super::*;

    const KEY: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    fn report(node: &str, key: Option<&str>) -> WatchEvent {
        let record = AgentStatusRecord {
            node: node.to_owned(),
            peers: BTreeMap::new(),
            rejected_policies: Vec::new(),
            wireguard: key.map(|k| NodeWireguard {
                public_key: WireguardKey::try_from(k.to_owned()).expect("key"),
                port: 51871,
                next: None,
            }),
            wireguard_tunnels: BTreeMap::new(),
        };
        WatchEvent::Upsert {
            key: agent_status_key("n1"),
            value: serde_json::to_vec(&record).expect("json"),
        }
    }

    #[test]
    fn a_nodes_key_follows_its_own_report_only() {
        let mut keys = NodeKeys::default();
        assert!(keys.apply(&report("n1", Some(KEY))));
        assert_eq!(keys.keys()["n1"].public_key.as_str(), KEY);
        assert!(
            !keys.apply(&report("n1", Some(KEY))),
            "the same key again changes nothing"
        );

        let disconnected = WatchEvent::Disconnected { error: "gone".into() };
        assert!(!keys.apply(&disconnected));
        assert_eq!(keys.keys().len(), 1, "a lost watch keeps the keys");

        // n2's report under n1's key: skipped, and n1's key withdrawn.
        assert!(keys.apply(&report("n2", Some(KEY))));
        assert!(keys.keys().is_empty());

        assert!(keys.apply(&report("n1", Some(KEY))));
        let malformed = WatchEvent::Upsert {
            key: agent_status_key("n1"),
            value: br#"{"node":"n1","wireguard":{"publicKey":"short","port":1}}"#.to_vec(),
        };
        assert!(keys.apply(&malformed), "an unreadable report withdraws the key");
        assert!(keys.apply(&report("n1", Some(KEY))));
        assert!(keys.apply(&WatchEvent::Delete {
            key: agent_status_key("n1")
        }));
        assert!(keys.keys().is_empty());
        assert!(!keys.apply(&report("n1", None)));
    }
}
