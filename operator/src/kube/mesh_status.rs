//! Reads the mesh apiserver's per-peer reports (`knit/v1/mesh-status/<peer>`)
//! from this cluster's etcd, with the read-only `local` client certificate,
//! and hands them to the mesh loop, which turns them into ClusterMeshPeer
//! status (connected, synced, counts, last sync, last error).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use knit_kvstore::etcd;
use knit_kvstore::keys::{Key, mesh_status_prefix};
use knit_kvstore::records::PeerStatusRecord;
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use tokio::sync::mpsc;

use crate::config::ClusterConfig;
use crate::kube::Applier;
use crate::names;

/// The latest report per peer cluster name.
pub type MeshReports = Arc<Mutex<BTreeMap<String, PeerStatusRecord>>>;

/// Watches the reports until the process stops; pokes `changed` on every update.
pub async fn watch_reports(
    applier: Applier,
    config: ClusterConfig,
    reports: MeshReports,
    changed: mpsc::Sender<()>,
) {
    let endpoint = format!(
        "https://{}.{}.svc:{}",
        names::APISERVER,
        config.namespace,
        config.apiserver.port
    );
    let connect = move || {
        let applier = applier.clone();
        let endpoint = endpoint.clone();
        async move {
            let read = |key: &'static str| {
                let applier = applier.clone();
                async move {
                    applier
                        .secret_key(names::LOCAL_CERT_SECRET, key)
                        .await
                        .ok()
                        .flatten()
                        .ok_or(knit_kvstore::Error::InvalidClientConfig {
                            field: "knit-local-client-cert",
                            problem: format!("Secret has no {key} yet"),
                        })
                }
            };
            let (ca, cert, key) = (
                read("ca.crt").await?,
                read("tls.crt").await?,
                read("tls.key").await?,
            );
            etcd::connect_pem(&[endpoint], ca.as_bytes(), cert.as_bytes(), key.as_bytes()).await
        }
    };
    let prefix = mesh_status_prefix();
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(watch_prefix(connect, prefix.clone(), tx));
    while let Some(event) = rx.recv().await {
        let update = match event {
            WatchEvent::Upsert { key, value } => match serde_json::from_slice::<PeerStatusRecord>(&value) {
                Ok(record) => peer_of(&key).map(|peer| (peer, Some(record))),
                Err(e) => {
                    tracing::debug!(%key, error = %e, "ignoring an unreadable mesh report");
                    None
                }
            },
            WatchEvent::Delete { key } => peer_of(&key).map(|peer| (peer, None)),
            WatchEvent::ListDone => None,
            WatchEvent::Disconnected { error } => {
                tracing::debug!(%error, "mesh reports unavailable; retrying");
                None
            }
        };
        if let Some((peer, record)) = update {
            let mut map = reports.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.get(&peer).cloned();
            match record {
                Some(r) => map.insert(peer.clone(), r),
                None => map.remove(&peer),
            };
            if map.get(&peer) != before.as_ref() {
                let _ = changed.try_send(());
            }
        }
    }
}

/// The peer a mesh report key is about.
fn peer_of(key: &str) -> Option<String> {
    match Key::parse(key)? {
        Key::MeshStatus(peer) => Some(peer),
        _ => None,
    }
}
