//! The nodes' WireGuard keys, as their agents report them.
//!
//! An agent with encryption on puts its public key and port in its status
//! record (`knit/v1/agent-status/<node>` in the local etcd). The exporter
//! watches those records, and [`NodeKeys`] keeps each node's latest, so
//! the node's record can carry it to every peer, and which nodes reported
//! at all ([`NodeReports`]). A report that is not readable, or that names
//! another node than its key, is skipped. A lost watch keeps what is known
//! (the next list corrects it), so a restart of etcd never strips keys
//! from node records.
//!
//! An etcd that starts empty (a new mesh apiserver replica, a restarted
//! pod) holds no report until the agents write theirs again, a few
//! seconds later. With encryption on, the exporter's first export waits
//! for them ([`reports_settled`], bounded by `--node-report-wait`): node
//! records without keys would strip the keys from every reader that moves
//! to this replica.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::Client;
use knit_kvstore::keys::{Key, agent_status_prefix};
use knit_kvstore::records::{AgentStatusRecord, NodeWireguard};
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use tokio::sync::{mpsc, watch};

/// Each node's WireGuard key and port, by node name.
pub type NodeWireguards = BTreeMap<String, NodeWireguard>;

/// What the agents reported, as the exporter uses it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeReports {
    /// Each node's WireGuard key and port.
    pub keys: NodeWireguards,
    /// The nodes with a readable report under their own key.
    pub reported: BTreeSet<String>,
}

/// Whether every node of `nodes` has reported: the first export of an
/// encrypting cluster may go out.
pub fn reports_settled<'a>(nodes: impl IntoIterator<Item = &'a str>, reports: &NodeReports) -> bool {
    nodes.into_iter().all(|n| reports.reported.contains(n))
}

/// The reports of the agents, kept from the status watch's events.
#[derive(Clone, Debug, Default)]
pub struct NodeKeys {
    reports: NodeReports,
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
        let report = value
            .and_then(|v| serde_json::from_slice::<AgentStatusRecord>(v).ok())
            .filter(|r| r.node == node);
        let reported_changed = if report.is_some() {
            self.reports.reported.insert(node.clone())
        } else {
            self.reports.reported.remove(&node)
        };
        let keys = &mut self.reports.keys;
        let key_changed = match report.and_then(|r| r.wireguard) {
            Some(w) => keys.insert(node, w.clone()) != Some(w),
            None => keys.remove(&node).is_some(),
        };
        reported_changed || key_changed
    }

    /// The keys known now.
    pub fn keys(&self) -> &NodeWireguards {
        &self.reports.keys
    }

    /// Everything known now.
    pub fn reports(&self) -> &NodeReports {
        &self.reports
    }
}

/// Watches the agents' status records in `local` until `tx` is dropped,
/// publishing the keys on every change.
pub async fn watch_node_keys(local: Client, tx: watch::Sender<NodeReports>) {
    let connect = move || {
        let client = local.clone();
        async move { Ok(client) }
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let watching = tokio::spawn(watch_prefix(connect, agent_status_prefix(), events_tx));
    let mut keys = NodeKeys::default();
    while let Some(event) = events.recv().await {
        if keys.apply(&event) && tx.send(keys.reports().clone()).is_err() {
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
        assert!(
            keys.apply(&report("n1", None)),
            "a report without a key still counts as reported"
        );
        assert!(keys.keys().is_empty());
        assert!(!keys.apply(&report("n1", None)));
    }

    #[test]
    fn reports_settle_once_every_node_reported_under_its_own_key() {
        let mut keys = NodeKeys::default();
        let nodes = ["n1", "n2"];
        assert!(!reports_settled(nodes, keys.reports()));
        assert!(keys.apply(&report("n1", Some(KEY))));
        assert!(!reports_settled(nodes, keys.reports()));
        // n2's report under n1's key does not count for n2.
        assert!(keys.apply(&report("n2", None)));
        assert!(!reports_settled(nodes, keys.reports()));
        let own = WatchEvent::Upsert {
            key: agent_status_key("n2"),
            value: serde_json::to_vec(&AgentStatusRecord {
                node: "n2".into(),
                peers: BTreeMap::new(),
                rejected_policies: Vec::new(),
                wireguard: None,
                wireguard_tunnels: BTreeMap::new(),
            })
            .expect("json"),
        };
        assert!(keys.apply(&own));
        assert!(keys.apply(&report("n1", Some(KEY))));
        assert!(reports_settled(nodes, keys.reports()));
        assert!(
            reports_settled([], &NodeReports::default()),
            "no nodes: nothing to wait for"
        );
    }
}
