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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use etcd_client::Client;
use knit_kvstore::backend::SyncBackend;
use knit_kvstore::keys::{Kind, RelativeKey, cache_prefix, cluster_prefix, mesh_status_key};
use knit_kvstore::records::{PeerStatusRecord, ServiceRecord};
use knit_kvstore::sync_store::SyncStore;
use knit_kvstore::validate::{PeerValidator, Rejection};
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use knit_kvstore::{EtcdClientConfig, etcd};
use tokio::sync::mpsc;
use tracing::Instrument as _;

use crate::metrics::{Metrics, PeerDetail, PeerLabel};
use crate::unix_now;
use knit_telemetry::AbortOnDrop;

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
    // Removed peers whose mirror is still to be deleted (retried until done).
    let mut to_delete: BTreeSet<String> = BTreeSet::new();
    loop {
        let found = peer_configs(&dir);
        let gone: Vec<PathBuf> = running
            .iter()
            .filter(|(path, (config, _))| found.get(*path) != Some(config))
            .map(|(p, _)| p.clone())
            .collect();
        for path in gone {
            if let Some((config, task)) = running.remove(&path) {
                // Wait until the mirror has stopped: a flush still running
                // would write keys again after the delete below.
                task.abort();
                let _ = task.await;
                if let Some(peer) = &config.peer
                    && !found
                        .values()
                        .any(|c| c.peer.as_ref().map(|p| &p.cluster_name) == Some(&peer.cluster_name))
                {
                    tracing::info!(peer = %peer.cluster_name, "peer removed; deleting its mirror");
                    to_delete.insert(peer.cluster_name.clone());
                }
            }
        }
        for peer in to_delete.clone() {
            match delete_mirror(&local, &peer).await {
                Ok(()) => {
                    to_delete.remove(&peer);
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "deleting a removed peer's mirror failed; retrying");
                }
            }
        }
        for (path, config) in found {
            if running.contains_key(&path) {
                continue;
            }
            if let Some(peer) = &config.peer {
                to_delete.remove(&peer.cluster_name);
            }
            let task = tokio::spawn(mirror_peer(local.clone(), config.clone(), settings.clone()));
            running.insert(path, (config, task));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Deletes a peer's mirror and its report: the records first, the
/// canaries in a later revision. Readers take a revision that deletes
/// canaries for a lost lease and hold its keys until the canaries are
/// back ([`knit_kvstore::drain`]); a withdrawal must not look like one.
async fn delete_mirror(local: &Client, peer: &str) -> Result<(), etcd_client::Error> {
    use etcd_client::{DeleteOptions, Txn, TxnOp};
    let mut c = local.clone();
    let prefix = cache_prefix(peer);
    let mut records = vec![TxnOp::delete(format!("{prefix}config"), None)];
    for kind in Kind::ALL {
        records.push(TxnOp::delete(
            format!("{prefix}{}/", kind.as_str()),
            Some(DeleteOptions::new().with_prefix()),
        ));
    }
    c.txn(Txn::new().and_then(records)).await?;
    c.delete(
        format!("{prefix}synced/"),
        Some(DeleteOptions::new().with_prefix()),
    )
    .await?;
    c.delete(mesh_status_key(peer), None).await?;
    Ok(())
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
                tracing::warn!(file = %p.display(), error = %knit_telemetry::error_chain(&e), "skipping peer config");
                None
            }
        })
        .collect()
}

/// Mirror state of one peer. Every accepted record goes straight into the
/// store; services are also kept here so they can be withdrawn and restored.
struct Mirror {
    peer: String,
    src: String,
    dst: String,
    validator: PeerValidator,
    services: BTreeMap<String, Vec<u8>>,
    counts: BTreeMap<Kind, u64>,
    status: PeerStatusRecord,
    unreachable_since: Option<Instant>,
    logged: BTreeSet<Rejection>,
    limits: knit_kvstore::PeerLimits,
    /// Bytes (key and value) of each mirrored record, by local key.
    sizes: HashMap<String, u64>,
    /// Their sum per kind, each held under `limits.bytes`.
    bytes: BTreeMap<Kind, u64>,
}

/// The cap on `kind` in `limits`.
fn limit(limits: &knit_kvstore::PeerLimits, kind: Kind) -> u32 {
    match kind {
        Kind::Nodes => limits.nodes,
        Kind::Endpoints => limits.endpoints,
        Kind::Identities => limits.identities,
        Kind::Services => limits.services,
    }
}

/// Mirrors one peer until aborted.
pub async fn mirror_peer(local: Client, config: EtcdClientConfig, settings: MeshSettings) {
    let Some(identity) = config.peer.clone() else {
        return;
    };
    let peer = identity.cluster_name.clone();
    let label = PeerLabel { peer: peer.clone() };
    let mut store = loop {
        // The cache prefix is owned (leftovers deleted) only once the peer
        // has been listed completely: until then a leftover of an earlier
        // run may still be true, and deleting it would withdraw it.
        match SyncStore::new(local.clone(), Vec::new(), settings.lease_ttl_secs).await {
            Ok(s) => break s.keep_values(),
            Err(e) => {
                tracing::warn!(%peer, error = %knit_telemetry::error_chain(&e), "local etcd not ready for the mirror");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let (tx, mut rx) = mpsc::channel(8192);
    let src = cluster_prefix(&peer);
    let watch_config = config.clone();
    let connect = move || {
        let c = watch_config.clone();
        async move { etcd::connect(&c).await }
    };
    let _watcher = AbortOnDrop(tokio::spawn(watch_prefix(connect, src.clone(), tx)));

    let mut m = Mirror::new(&identity);
    let mut dirty = true;
    // A complete list of the peer arrived since the last flush: that flush
    // is a resync (after a connect or reconnect).
    let mut resync = false;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { return };
                resync |= matches!(event, WatchEvent::ListDone);
                m.handle(event, &mut store, &settings.metrics);
                while let Ok(event) = rx.try_recv() {
                    resync |= matches!(event, WatchEvent::ListDone);
                    m.handle(event, &mut store, &settings.metrics);
                }
                dirty = true;
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        if let Some(since) = m.unreachable_since
            && since.elapsed() > settings.grace_period
            && !m.status.withdrawn
        {
            tracing::warn!(%peer, grace = ?settings.grace_period, "peer unreachable past its grace period; withdrawing its services");
            m.set_withdrawn(true, &mut store);
            dirty = true;
        }
        if !dirty {
            continue;
        }
        m.report(&mut store);
        let span = tracing::info_span!(
            "mirror_sync",
            %peer,
            resync,
            written = tracing::field::Empty,
            deleted = tracing::field::Empty
        );
        match store.flush().instrument(span.clone()).await {
            Ok(report) => {
                span.record("written", report.puts)
                    .record("deleted", report.deletes);
                resync = false;
                // The flush may have written the canaries after the status:
                // report again, and write the status once more if it changed.
                m.report(&mut store);
                dirty = !store.is_flushed();
            }
            Err(e) => {
                m.status.last_error =
                    Some(format!("writing the mirror: {}", knit_telemetry::error_chain(&e)));
                tracing::warn!(%peer, error = %knit_telemetry::error_chain(&e), "mirror write failed; retrying");
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
            let n = m.counts.get(&kind).copied().unwrap_or_default();
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
    /// The mirror of `identity`'s cluster, not yet connected.
    fn new(identity: &knit_kvstore::PeerIdentity) -> Self {
        let peer = identity.cluster_name.clone();
        Self {
            src: cluster_prefix(&peer),
            dst: cache_prefix(&peer),
            validator: PeerValidator::new(identity),
            services: BTreeMap::new(),
            counts: BTreeMap::new(),
            status: PeerStatusRecord {
                peer: peer.clone(),
                ..Default::default()
            },
            unreachable_since: Some(Instant::now()),
            logged: BTreeSet::new(),
            limits: identity.limits,
            sizes: HashMap::new(),
            bytes: BTreeMap::new(),
            peer,
        }
    }

    /// Applies one watch event to the store.
    fn handle<B: SyncBackend>(&mut self, event: WatchEvent, store: &mut SyncStore<B>, metrics: &Metrics) {
        match event {
            WatchEvent::Upsert { key, value } => {
                let Some(rel) = key.strip_prefix(&self.src) else {
                    return;
                };
                match self
                    .validator
                    .check(rel, &value)
                    .and_then(|rk| self.accept(rk, value, store))
                {
                    Ok(()) => {}
                    Err(reason) => {
                        self.drop_key(rel, store);
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
            }
            WatchEvent::Delete { key } => {
                if let Some(rel) = key.strip_prefix(&self.src) {
                    self.drop_key(rel, store);
                }
            }
            WatchEvent::ListDone => {
                store.own(self.dst.clone());
                self.status.connected = true;
                self.status.last_error = None;
                self.status.unreachable_since_unix = None;
                self.status.last_sync_unix = Some(unix_now());
                self.unreachable_since = None;
                if self.status.withdrawn {
                    tracing::info!(peer = %self.peer, "peer is back; restoring its services");
                    self.set_withdrawn(false, store);
                }
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
            }
        }
    }

    /// Stores an accepted record; a new record beyond the peer's limit for
    /// its kind, or one that would take the peer past its byte budget, is
    /// refused instead.
    fn accept<B: SyncBackend>(
        &mut self,
        key: RelativeKey,
        value: Vec<u8>,
        store: &mut SyncStore<B>,
    ) -> Result<(), Rejection> {
        let dst = key.under(&self.dst);
        if let RelativeKey::Record(kind, _) = &key {
            let size = (dst.len() + value.len()) as u64;
            let before = self.sizes.get(&dst).copied().unwrap_or_default();
            let bytes = self.bytes.get(kind).copied().unwrap_or_default() - before;
            if bytes + size > self.limits.bytes {
                return Err(Rejection::OverByteBudget);
            }
            if !store.contains(&dst) {
                let count = self.counts.entry(*kind).or_default();
                if *count >= u64::from(limit(&self.limits, *kind)) {
                    return Err(Rejection::OverLimit);
                }
                *count += 1;
            }
            self.bytes.insert(*kind, bytes + size);
            self.sizes.insert(dst.clone(), size);
            if *kind == Kind::Services {
                self.services.insert(dst.clone(), value.clone());
                store.set(dst, service_value(&value, self.status.withdrawn));
                return Ok(());
            }
        }
        store.set(dst, value);
        Ok(())
    }

    fn drop_key<B: SyncBackend>(&mut self, rel: &str, store: &mut SyncStore<B>) {
        let dst = format!("{}{rel}", self.dst);
        if store.contains(&dst) {
            if let Some(RelativeKey::Record(kind, _)) = RelativeKey::parse(rel) {
                let n = self.counts.entry(kind).or_default();
                *n = n.saturating_sub(1);
                let bytes = self.bytes.entry(kind).or_default();
                *bytes = bytes.saturating_sub(self.sizes.remove(&dst).unwrap_or_default());
            }
            store.remove(&dst);
        }
        self.services.remove(&dst);
    }

    fn set_withdrawn<B: SyncBackend>(&mut self, withdrawn: bool, store: &mut SyncStore<B>) {
        self.status.withdrawn = withdrawn;
        for (key, value) in &self.services {
            store.set(key.clone(), service_value(value, withdrawn));
        }
    }

    /// Updates the status record in the store. `synced` says the canaries
    /// are in etcd, not only stated: a flush writes them after every other
    /// key, the status included, so a reader that sees `synced` finds them.
    fn report<B: SyncBackend>(&mut self, store: &mut SyncStore<B>) {
        self.status.synced = self.status.connected
            && Kind::ALL
                .iter()
                .all(|k| store.is_written(&RelativeKey::Synced(*k).under(&self.dst)));
        self.status.counts = self.counts.clone();
        store.set(
            mesh_status_key(&self.peer),
            serde_json::to_vec(&self.status).unwrap_or_default(),
        );
    }
}

/// A mirrored service value, marked withdrawn when the peer is past its grace period.
fn service_value(value: &[u8], withdrawn: bool) -> Vec<u8> {
    if !withdrawn {
        return value.to_vec();
    }
    match serde_json::from_slice::<ServiceRecord>(value) {
        Ok(mut service) => {
            service.withdrawn = true;
            serde_json::to_vec(&service).unwrap_or_else(|_| value.to_vec())
        }
        Err(_) => value.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    //! The mirror's logic against the in-memory store: what it accepts,
    //! rejects, withdraws and restores, and when it deletes leftovers.

    use knit_kvstore::PeerIdentity;
    use knit_kvstore::backend::MemoryBackend;
    use knit_kvstore::records::identity;
    use serde_json::json;

    use super::*;

    fn upsert(rel: &str, value: serde_json::Value) -> WatchEvent {
        WatchEvent::Upsert {
            key: format!("knit/v1/clusters/b/{rel}"),
            value: serde_json::to_vec(&value).unwrap(),
        }
    }

    fn mirror() -> Mirror {
        mirror_with(Default::default())
    }

    /// The mirror of b (cluster 2, 10.2.0.0/16) under `limits`.
    fn mirror_with(limits: knit_kvstore::PeerLimits) -> Mirror {
        Mirror::new(&PeerIdentity {
            cluster_name: "b".into(),
            cluster_id: 2,
            pod_cidrs: vec!["10.2.0.0/16".into()],
            limits,
        })
    }

    /// A store over `memory` that keeps values (as the mirror's does).
    async fn store_on(memory: &MemoryBackend) -> SyncStore<MemoryBackend> {
        SyncStore::with_backend(memory.clone(), Vec::new(), 10)
            .await
            .unwrap()
            .keep_values()
    }

    /// The keys of b's endpoints in the cache.
    fn mirrored_endpoints(memory: &MemoryBackend) -> Vec<String> {
        memory
            .dump()
            .into_keys()
            .filter(|k| k.contains("/cache/b/endpoints/"))
            .collect()
    }

    fn service(withdrawn: bool) -> serde_json::Value {
        let mut v = json!({"cluster": "b", "namespace": "shop", "name": "web",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "backends": [{"ip": "10.2.1.5", "ports": {"http": 8080}, "ready": true}],
            "export": true, "import": true, "affinity": "none"});
        if withdrawn {
            v["withdrawn"] = json!(true);
        }
        v
    }

    #[tokio::test]
    async fn mirrors_good_records_rejects_bad_ones_and_withdraws_services() {
        let memory = MemoryBackend::new();
        let mut store = store_on(&memory).await;
        let metrics = Metrics::default();
        let mut m = mirror();
        let endpoint = |ip: &str| json!({"ip": ip, "cluster": "b", "identity": identity(2, 7), "node": "n1", "namespace": "shop", "pod": "p"});
        for event in [
            upsert(
                "config",
                json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"]}),
            ),
            upsert("endpoints/10.2.1.5", endpoint("10.2.1.5")),
            upsert("endpoints/10.9.1.5", endpoint("10.9.1.5")),
            upsert("services/shop/web", service(false)),
            upsert("synced/endpoints", json!(1)),
            WatchEvent::ListDone,
        ] {
            m.handle(event, &mut store, &metrics);
        }
        m.report(&mut store);
        store.flush().await.unwrap();
        let dump = memory.dump();
        assert!(dump.contains_key("knit/v1/cache/b/endpoints/10.2.1.5"));
        assert!(
            !dump.contains_key("knit/v1/cache/b/endpoints/10.9.1.5"),
            "an IP outside b's pod CIDRs is not mirrored"
        );
        assert_eq!(m.status.rejected.get("outside_pod_cidrs"), Some(&1));
        let last = memory.transactions().pop().unwrap();
        assert!(
            last.iter().all(|(k, _)| knit_kvstore::keys::is_canary(k)),
            "canaries are written last: {last:?}"
        );

        // Past the grace period the service is withdrawn; back, restored.
        m.set_withdrawn(true, &mut store);
        store.flush().await.unwrap();
        let value = |memory: &MemoryBackend| -> serde_json::Value {
            serde_json::from_slice(&memory.dump()["knit/v1/cache/b/services/shop/web"]).unwrap()
        };
        assert_eq!(value(&memory), service(true));
        m.handle(WatchEvent::ListDone, &mut store, &metrics);
        store.flush().await.unwrap();
        assert_eq!(value(&memory), service(false));
    }

    #[tokio::test]
    async fn leftovers_are_deleted_only_after_a_complete_list() {
        let memory = MemoryBackend::new();
        memory.put_leftover(
            "knit/v1/cache/b/services/shop/web",
            &serde_json::to_vec(&service(false)).unwrap(),
        );
        memory.put_leftover("knit/v1/cache/b/services/shop/gone", b"{}");
        let mut store = store_on(&memory).await;
        let metrics = Metrics::default();
        let mut m = mirror();

        // A restarted apiserver has seen part of the peer's list: nothing it
        // has not seen yet is deleted.
        m.handle(
            upsert(
                "config",
                json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"]}),
            ),
            &mut store,
            &metrics,
        );
        store.flush().await.unwrap();
        assert!(memory.dump().contains_key("knit/v1/cache/b/services/shop/web"));
        assert!(memory.dump().contains_key("knit/v1/cache/b/services/shop/gone"));

        m.handle(upsert("services/shop/web", service(false)), &mut store, &metrics);
        m.handle(WatchEvent::ListDone, &mut store, &metrics);
        store.flush().await.unwrap();
        let dump = memory.dump();
        assert!(dump.contains_key("knit/v1/cache/b/services/shop/web"));
        assert!(
            !dump.contains_key("knit/v1/cache/b/services/shop/gone"),
            "after the complete list the leftover the peer no longer has is deleted"
        );
    }

    #[tokio::test]
    async fn records_beyond_the_peers_limit_are_refused_and_counted() {
        let memory = MemoryBackend::new();
        let mut store = store_on(&memory).await;
        let metrics = Metrics::default();
        let mut m = mirror_with(knit_kvstore::PeerLimits {
            endpoints: 3,
            ..Default::default()
        });
        let endpoint = |i: u8| {
            upsert(
                &format!("endpoints/10.2.0.{i}"),
                json!({"ip": format!("10.2.0.{i}"), "cluster": "b", "identity": identity(2, 7), "node": "n1", "namespace": "shop", "pod": format!("p{i}")}),
            )
        };
        for i in 1..=5 {
            m.handle(endpoint(i), &mut store, &metrics);
        }
        m.handle(upsert("services/shop/web", service(false)), &mut store, &metrics);
        store.flush().await.unwrap();
        assert_eq!(mirrored_endpoints(&memory).len(), 3, "the limit holds");
        assert_eq!(m.status.rejected.get("over_limit"), Some(&2));
        assert!(
            memory.dump().contains_key("knit/v1/cache/b/services/shop/web"),
            "other kinds are unaffected"
        );
        // An update of a mirrored record passes; a deletion makes room.
        m.handle(endpoint(1), &mut store, &metrics);
        m.handle(
            WatchEvent::Delete {
                key: "knit/v1/clusters/b/endpoints/10.2.0.2".into(),
            },
            &mut store,
            &metrics,
        );
        m.handle(endpoint(4), &mut store, &metrics);
        store.flush().await.unwrap();
        assert_eq!(
            mirrored_endpoints(&memory),
            [
                "knit/v1/cache/b/endpoints/10.2.0.1",
                "knit/v1/cache/b/endpoints/10.2.0.3",
                "knit/v1/cache/b/endpoints/10.2.0.4"
            ]
        );
        assert_eq!(m.status.rejected.get("over_limit"), Some(&2));
    }

    #[tokio::test]
    async fn records_past_the_peers_byte_budget_for_their_kind_are_refused_and_a_deletion_makes_room() {
        let memory = MemoryBackend::new();
        let mut store = store_on(&memory).await;
        let metrics = Metrics::default();
        // Few records, each large: the record counts never bind.
        let endpoint = |i: u8, pad: usize| {
            upsert(
                &format!("endpoints/10.2.0.{i}"),
                json!({"ip": format!("10.2.0.{i}"), "cluster": "b", "identity": identity(2, 7), "node": "n1", "namespace": "shop", "pod": format!("p{i}-{}", "x".repeat(pad))}),
            )
        };
        let size = |event: &WatchEvent| match event {
            WatchEvent::Upsert { key, value } => {
                (key.len() - "clusters/b/".len() + "cache/b/".len() + value.len()) as u64
            }
            _ => 0,
        };
        let mut m = mirror_with(knit_kvstore::PeerLimits {
            bytes: size(&endpoint(1, 1000)) * 3,
            ..Default::default()
        });
        for i in 1..=5 {
            m.handle(endpoint(i, 1000), &mut store, &metrics);
        }
        store.flush().await.unwrap();
        assert_eq!(mirrored_endpoints(&memory).len(), 3, "the budget holds");
        assert_eq!(m.status.rejected.get("over_byte_budget"), Some(&2));
        assert_eq!(m.bytes[&Kind::Endpoints], size(&endpoint(1, 1000)) * 3);
        // Another kind has a budget of its own.
        m.handle(upsert("services/shop/web", service(false)), &mut store, &metrics);
        store.flush().await.unwrap();
        assert!(memory.dump().contains_key("knit/v1/cache/b/services/shop/web"));

        // A record that grows past the budget is refused (and, as any
        // refused update, no longer mirrored); one that shrinks passes.
        m.handle(endpoint(1, 2000), &mut store, &metrics);
        m.handle(endpoint(2, 10), &mut store, &metrics);
        store.flush().await.unwrap();
        assert_eq!(mirrored_endpoints(&memory).len(), 2);
        assert_eq!(m.status.rejected.get("over_byte_budget"), Some(&3));
        // The room made lets new records in.
        m.handle(endpoint(4, 1000), &mut store, &metrics);
        m.handle(endpoint(5, 10), &mut store, &metrics);
        store.flush().await.unwrap();
        assert_eq!(
            mirrored_endpoints(&memory),
            [
                "knit/v1/cache/b/endpoints/10.2.0.2",
                "knit/v1/cache/b/endpoints/10.2.0.3",
                "knit/v1/cache/b/endpoints/10.2.0.4",
                "knit/v1/cache/b/endpoints/10.2.0.5"
            ]
        );
        assert!(m.bytes[&Kind::Endpoints] <= m.limits.bytes);
    }

    proptest::proptest! {
        /// Whatever a peer publishes, in any order: the mirror never
        /// panics, and a record it rejects leaves the cache as it was.
        #[test]
        fn rejected_input_changes_nothing(
            events in proptest::collection::vec(
                (
                    proptest::prop_oneof![
                        proptest::strategy::Just("endpoints/10.2.0.5".to_owned()),
                        proptest::strategy::Just("endpoints/10.9.0.5".to_owned()),
                        proptest::strategy::Just("services/shop/web".to_owned()),
                        proptest::strategy::Just("synced/services".to_owned()),
                        proptest::strategy::Just("config".to_owned()),
                        "[a-z/.]{0,20}",
                    ],
                    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                    proptest::prelude::any::<bool>(),
                ),
                0..24,
            )
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let memory = MemoryBackend::new();
                let mut store = SyncStore::with_backend(memory.clone(), Vec::new(), 10).await.unwrap().keep_values();
                let metrics = Metrics::default();
                let mut m = mirror();
                m.handle(upsert("endpoints/10.2.0.7", json!({"ip": "10.2.0.7", "cluster": "b",
                    "identity": identity(2, 7), "node": "n1", "namespace": "shop", "pod": "p"})), &mut store, &metrics);
                store.flush().await.unwrap();
                for (rel, value, delete) in events {
                    let before = memory.dump();
                    let rejected_before: u64 = m.status.rejected.values().sum();
                    let key = format!("knit/v1/clusters/b/{rel}");
                    let event = if delete {
                        WatchEvent::Delete { key }
                    } else {
                        WatchEvent::Upsert { key, value }
                    };
                    m.handle(event, &mut store, &metrics);
                    store.flush().await.unwrap();
                    let rejected_now: u64 = m.status.rejected.values().sum();
                    if rejected_now > rejected_before {
                        let after = memory.dump();
                        let changed: Vec<&String> = after
                            .keys()
                            .chain(before.keys())
                            .filter(|k| !k.contains("/cache/b/") || after.get(*k) != before.get(*k))
                            .filter(|k| k.contains("/cache/b/"))
                            .collect();
                        assert!(
                            changed.iter().all(|k| k.ends_with(&format!("/cache/b/{rel}"))),
                            "a rejected record changed other keys: {changed:?}"
                        );
                    }
                }
            });
        }
    }
}
