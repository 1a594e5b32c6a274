//! KVStoreMesh: mirrors each peer's prefix into `knit/v1/cache/<peer>/` of
//! the local etcd, so agents only ever read their own cluster's etcd.
//!
//! Per peer: a [`watch_prefix`] on the peer's etcd (with the peer's client
//! config) → [`PeerValidator`] → a [`SyncStore`] owning the cache prefix.
//! Rejected records are counted and logged once per reason; good records
//! are unaffected. Losing the peer changes nothing in the cache (fail
//! static) until the grace period ends; then its services are rewritten
//! with `withdrawn: true` so agents fail over, while nodes, endpoints and
//! identities stay. On reconnect the list restores everything, and keys
//! deleted meanwhile are drained by the watch store's stale handling.
//! A report per peer goes to `knit/v1/mesh-status/<peer>` and to metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::Client;
use knit_kvstore::keys::{Kind, RelativeKey, cache_prefix, cluster_prefix, mesh_status_key};
use knit_kvstore::records::{PeerStatusRecord, ServiceRecord};
use knit_kvstore::sync_store::SyncStore;
use knit_kvstore::validate::{PeerValidator, Rejection};
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use knit_kvstore::{EtcdClientConfig, etcd};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, PeerDetail, PeerLabel};
use crate::unix_now;

/// Settings shared by every peer mirror.
#[derive(Clone)]
pub struct MeshSettings {
    /// How long a peer may be unreachable before its services are withdrawn.
    pub grace_period: Duration,
    /// TTL of the lease holding the mirrored keys.
    pub lease_ttl_secs: i64,
    /// Metrics.
    pub metrics: Metrics,
}

/// Runs the mirrors of every peer config (`*.yaml`) in `dir`, adding and
/// removing mirrors as files appear and disappear.
pub async fn run_mesh(local: Client, dir: PathBuf, settings: MeshSettings) {
    let mut running: BTreeMap<PathBuf, (EtcdClientConfig, tokio::task::JoinHandle<()>)> = BTreeMap::new();
    loop {
        let found = peer_configs(&dir);
        let gone: Vec<PathBuf> = running
            .iter()
            .filter(|(path, (config, _))| found.get(*path) != Some(config))
            .map(|(p, _)| p.clone())
            .collect();
        for path in gone {
            if let Some((config, task)) = running.remove(&path) {
                task.abort();
                if let Some(peer) = &config.peer
                    && !found
                        .values()
                        .any(|c| c.peer.as_ref().map(|p| &p.cluster_name) == Some(&peer.cluster_name))
                {
                    tracing::info!(peer = %peer.cluster_name, "peer removed; deleting its mirror");
                    let mut c = local.clone();
                    let prefix = cache_prefix(&peer.cluster_name);
                    let _ = c
                        .delete(
                            prefix.as_str(),
                            Some(etcd_client::DeleteOptions::new().with_prefix()),
                        )
                        .await;
                    let _ = c.delete(mesh_status_key(&peer.cluster_name), None).await;
                }
            }
        }
        for (path, config) in found {
            if running.contains_key(&path) {
                continue;
            }
            let task = tokio::spawn(mirror_peer(local.clone(), config.clone(), settings.clone()));
            running.insert(path, (config, task));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn peer_configs(dir: &Path) -> BTreeMap<PathBuf, EtcdClientConfig> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter_map(|p| match etcd::load_client_config(&p) {
            Ok(c) if c.peer.is_some() => Some((p, c)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(file = %p.display(), error = %knit_kvstore::error_chain(&e), "skipping peer config");
                None
            }
        })
        .collect()
}

/// Mirror state of one peer.
struct Mirror {
    peer: String,
    src: String,
    dst: String,
    validator: PeerValidator,
    accepted: BTreeMap<String, Vec<u8>>,
    status: PeerStatusRecord,
    unreachable_since: Option<Instant>,
    logged: BTreeSet<Rejection>,
}

/// Mirrors one peer until aborted.
pub async fn mirror_peer(local: Client, config: EtcdClientConfig, settings: MeshSettings) {
    let Some(identity) = config.peer.clone() else {
        return;
    };
    let peer = identity.cluster_name.clone();
    let label = PeerLabel { peer: peer.clone() };
    let mut store = loop {
        match SyncStore::new(local.clone(), vec![cache_prefix(&peer)], settings.lease_ttl_secs).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(%peer, error = %knit_kvstore::error_chain(&e), "local etcd not ready for the mirror");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (tx, mut rx) = mpsc::channel(8192);
    let src = cluster_prefix(&peer);
    let watch_config = config.clone();
    let watcher = tokio::spawn(watch_prefix(
        move || {
            let c = watch_config.clone();
            async move { etcd::connect(&c).await }
        },
        src.clone(),
        tx,
    ));
    let _abort_watcher = AbortOnDrop(watcher);

    let mut m = Mirror {
        peer: peer.clone(),
        src,
        dst: cache_prefix(&peer),
        validator: PeerValidator::new(&identity),
        accepted: BTreeMap::new(),
        status: PeerStatusRecord {
            peer: peer.clone(),
            ..Default::default()
        },
        unreachable_since: Some(Instant::now()),
        logged: BTreeSet::new(),
    };
    let mut dirty = true;
    loop {
        let deadline = tokio::time::sleep(Duration::from_millis(250));
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                let mut list_done = m.handle(event, &settings.metrics);
                while let Ok(event) = rx.try_recv() {
                    list_done |= m.handle(event, &settings.metrics);
                }
                dirty = true;
                if list_done {
                    m.status.last_sync_unix = Some(unix_now());
                }
            }
            () = deadline => {}
        }
        if let Some(since) = m.unreachable_since
            && since.elapsed() > settings.grace_period
            && !m.status.withdrawn
        {
            tracing::warn!(%peer, grace = ?settings.grace_period, "peer unreachable past its grace period; withdrawing its services");
            m.status.withdrawn = true;
            dirty = true;
        }
        if !dirty {
            continue;
        }
        m.render(&mut store);
        match store.flush().await {
            Ok(_) => dirty = false,
            Err(e) => {
                m.status.last_error = Some(format!("writing the mirror: {}", knit_kvstore::error_chain(&e)));
                tracing::warn!(%peer, error = %knit_kvstore::error_chain(&e), "mirror write failed; retrying");
            }
        }
        let metrics = &settings.metrics;
        metrics
            .peer_connected
            .get_or_create(&label)
            .set(i64::from(m.status.connected));
        metrics
            .peer_synced
            .get_or_create(&label)
            .set(i64::from(m.status.synced));
        metrics
            .peer_withdrawn
            .get_or_create(&label)
            .set(i64::from(m.status.withdrawn));
        for kind in Kind::ALL {
            let n = m.status.counts.get(kind.as_str()).copied().unwrap_or_default();
            metrics
                .peer_records
                .get_or_create(&PeerDetail {
                    peer: peer.clone(),
                    detail: kind.to_string(),
                })
                .set(n as i64);
        }
    }
}

impl Mirror {
    /// Applies one watch event; returns whether it completed a list.
    fn handle(&mut self, event: WatchEvent, metrics: &Metrics) -> bool {
        match event {
            WatchEvent::Upsert { key, value } => {
                let Some(rel) = key.strip_prefix(&self.src) else {
                    return false;
                };
                match self.validator.check(rel, &value) {
                    Ok(rk) => {
                        self.accepted.insert(rk.under(&self.dst), value);
                    }
                    Err(reason) => {
                        self.accepted.remove(&format!("{}{rel}", self.dst));
                        *self.status.rejected.entry(reason.to_string()).or_default() += 1;
                        metrics
                            .peer_rejected
                            .get_or_create(&PeerDetail {
                                peer: self.peer.clone(),
                                detail: reason.to_string(),
                            })
                            .inc();
                        if self.logged.insert(reason) {
                            tracing::warn!(peer = %self.peer, %key, %reason, "rejected a record from a peer (logged once per reason)");
                        }
                    }
                }
                false
            }
            WatchEvent::Delete { key } => {
                if let Some(rel) = key.strip_prefix(&self.src) {
                    self.accepted.remove(&format!("{}{rel}", self.dst));
                }
                false
            }
            WatchEvent::ListDone => {
                self.status.connected = true;
                self.status.last_error = None;
                self.status.unreachable_since_unix = None;
                self.unreachable_since = None;
                if self.status.withdrawn {
                    tracing::info!(peer = %self.peer, "peer is back; restoring its services");
                }
                self.status.withdrawn = false;
                true
            }
            WatchEvent::Disconnected { error } => {
                if self.status.connected || self.status.last_error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(peer = %self.peer, %error, "lost the peer; keeping its records (fail static)");
                }
                self.status.connected = false;
                self.status.last_error = Some(error);
                if self.unreachable_since.is_none() {
                    self.unreachable_since = Some(Instant::now());
                    self.status.unreachable_since_unix = Some(unix_now());
                }
                false
            }
        }
    }

    /// Writes the desired mirror (and report) into the store.
    fn render(&mut self, store: &mut SyncStore) {
        let mut entries = BTreeMap::new();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for (key, value) in &self.accepted {
            let rel = RelativeKey::parse(&key[self.dst.len()..]);
            let mut value = value.clone();
            if let Some(RelativeKey::Record(kind, _)) = &rel {
                *counts.entry(kind.to_string()).or_default() += 1;
                if *kind == Kind::Services
                    && self.status.withdrawn
                    && let Ok(mut service) = serde_json::from_slice::<ServiceRecord>(&value)
                {
                    service.withdrawn = true;
                    value = serde_json::to_vec(&service).unwrap_or(value);
                }
            }
            entries.insert(key.clone(), value);
        }
        self.status.synced = self.status.connected
            && Kind::ALL.iter().all(|k| {
                self.accepted
                    .contains_key(&RelativeKey::Synced(*k).under(&self.dst))
            });
        self.status.counts = counts;
        store.replace_prefix(&self.dst, entries);
        store.set(
            mesh_status_key(&self.peer),
            serde_json::to_vec(&self.status).unwrap_or_default(),
        );
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
