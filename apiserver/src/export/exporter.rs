//! The export loop: wait for the source to change, [`export`] the state, hand the result
//! to a [`SyncStore`] and flush. Canaries (`synced/<kind>`) join the
//! desired set only after the first complete flush, so a peer that sees
//! them has everything. Identities published by an earlier run are read
//! back first, so numbers survive restarts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::Client;
use knit_kvstore::backend::SyncBackend;
use knit_kvstore::keys::{HEARTBEAT_KEY, Kind, RelativeKey, cluster_prefix};
use knit_kvstore::records::IdentityRecord;
use knit_kvstore::sync_store::SyncStore;
use knit_telemetry::Health;
use tracing::Instrument as _;

use crate::export::identity::{IdentityAllocator, Labels};
use crate::export::identity_store::{IdentityStore, Update};
use crate::export::node_keys::{NodeReports, NodeWireguards, reports_settled, watch_node_keys};
use crate::export::{LocalCluster, labels_in_use, local_prefix, plan};
use crate::metrics::{Metrics, PeerDetail};
use crate::{Error, Result, unix_now};
use knit_sources::Source;

/// Values the exporter lets the store hold before writing them: the
/// initial export of a large cluster is written in parts of this size
/// instead of all at once.
const VALUES_PER_WRITE: usize = 2_000;

/// Exporter settings.
pub struct ExporterSettings {
    /// This cluster.
    pub cluster: LocalCluster,
    /// Lease TTL of published keys.
    pub lease_ttl_secs: i64,
    /// Where identity numbers are kept across restarts and writers.
    pub identities: IdentityStore,
    /// With encryption on: how long the first export waits for every
    /// node's report (its WireGuard key). None: it does not wait.
    pub node_report_wait: Option<Duration>,
}

/// Runs until the process stops; etcd errors are retried.
pub async fn run_exporter<S: Source>(
    local: Client,
    source: S,
    settings: ExporterSettings,
    metrics: Metrics,
    health: Health,
) -> Result<()> {
    let own = cluster_prefix(&settings.cluster.name);
    let mut ids = IdentityAllocator::new(settings.cluster.id);
    // etcd may refuse requests for a moment (e.g. right after auth is
    // enabled): retry instead of giving up.
    let store = loop {
        let started = async {
            restore_identities(&local, &own, &mut ids).await?;
            SyncStore::new(
                local.clone(),
                vec![own.clone(), local_prefix()],
                settings.lease_ttl_secs,
            )
            .await
            .map_err(Error::Store)
        };
        match started.await {
            Ok(store) => break store,
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "cannot start exporting yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let (keys_tx, node_keys) = tokio::sync::watch::channel(NodeReports::default());
    let _keys = knit_telemetry::AbortOnDrop(tokio::spawn(watch_node_keys(local, keys_tx)));
    export_loop(store, ids, source, node_keys, settings, metrics, health).await
}

/// The export loop over a store on any backend (etcd in production,
/// memory in the tests below): waits for the source's first complete read,
/// then exports on every change of the source or of the nodes' keys and at
/// least every 5 s, with the heartbeat.
pub async fn export_loop<B: SyncBackend, S: Source>(
    mut store: SyncStore<B>,
    ids: IdentityAllocator,
    mut source: S,
    mut node_keys: tokio::sync::watch::Receiver<NodeReports>,
    settings: ExporterSettings,
    metrics: Metrics,
    health: Health,
) -> Result<()> {
    // What etcd published before: kept for label sets the store lacks
    // (an upgrade from before the store, an apiserver restarted beside a
    // running etcd).
    let preferred = ids
        .identities()
        .map(|(id, labels)| (labels.clone(), id))
        .collect();
    let mut exporter = Exporter {
        own: cluster_prefix(&settings.cluster.name),
        settings,
        ids,
        preferred,
        metrics,
        health,
        synced: false,
        synced_at: unix_now(),
    };
    let mut pending = true;
    let mut last_heartbeat = Instant::now() - Duration::from_secs(60);
    while !source.is_ready() {
        source.next_change().await;
    }
    if let Some(wait) = exporter.settings.node_report_wait {
        wait_for_node_reports(&mut source, &mut node_keys, wait).await;
    }
    loop {
        if last_heartbeat.elapsed() >= Duration::from_secs(5) {
            pending |= store.needs_values();
            store.set(HEARTBEAT_KEY.to_owned(), unix_now().to_string().into_bytes());
            last_heartbeat = Instant::now();
            if !pending && let Err(e) = store.flush().await {
                tracing::debug!(error = %knit_telemetry::error_chain(&e), "heartbeat write failed");
            }
        }
        if pending {
            let span = tracing::info_span!(
                "export_pass",
                cluster = %exporter.settings.cluster.name,
                records = tracing::field::Empty
            );
            let keys = node_keys.borrow_and_update().keys.clone();
            pending = exporter
                .pass(&mut store, source.state(), &keys)
                .instrument(span)
                .await;
        }
        tokio::select! {
            changed = source.next_change() => pending |= changed,
            Ok(()) = node_keys.changed() => pending = true,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Waits until every node of the source has reported into this etcd, or
/// `wait` has passed: the first export of an encrypting cluster carries
/// every node's key (see [`crate::export::node_keys`]).
async fn wait_for_node_reports<S: Source>(
    source: &mut S,
    reports: &mut tokio::sync::watch::Receiver<NodeReports>,
    wait: Duration,
) {
    let started = Instant::now();
    let missing = |source: &S, reports: &NodeReports| -> Vec<String> {
        let nodes = source.state().nodes.values().map(|n| n.name.as_str());
        if reports_settled(nodes, reports) {
            return Vec::new();
        }
        source
            .state()
            .nodes
            .values()
            .filter(|n| !reports.reported.contains(&n.name))
            .map(|n| n.name.clone())
            .collect()
    };
    loop {
        let waiting_for = missing(source, &reports.borrow_and_update());
        if waiting_for.is_empty() {
            tracing::info!(after = ?started.elapsed(), "every node reported; exporting");
            return;
        }
        let Some(left) = wait.checked_sub(started.elapsed()) else {
            tracing::warn!(
                nodes = ?waiting_for,
                "exporting before these nodes reported their keys (--node-report-wait passed): their records carry no key until they do"
            );
            return;
        };
        tokio::select! {
            _ = source.next_change() => {}
            Ok(()) = reports.changed() => {}
            () = tokio::time::sleep(left) => {}
        }
    }
}

/// The exporter between passes.
struct Exporter {
    settings: ExporterSettings,
    /// `clusters/<this cluster>/`.
    own: String,
    ids: IdentityAllocator,
    /// Numbers etcd held at start, by labels.
    preferred: BTreeMap<Labels, u32>,
    metrics: Metrics,
    health: Health,
    /// The canaries are written (the first complete export is in).
    synced: bool,
    /// When this run first completed an export: the canaries' value.
    synced_at: i64,
}

impl Exporter {
    /// One export of `state` into `store`: records first, in parts of
    /// [`VALUES_PER_WRITE`], then (once) the canaries. Returns whether
    /// another pass is needed (a failed write, a lost lease).
    async fn pass<B: SyncBackend>(
        &mut self,
        store: &mut SyncStore<B>,
        state: &knit_sources::ClusterState,
        node_keys: &NodeWireguards,
    ) -> bool {
        if let Err(e) = self.number_identities(state).await {
            // Numbering on our own could give a pod another number than
            // the store: export nothing new until the store answers.
            self.metrics.export_failures.inc();
            tracing::warn!(error = %knit_telemetry::error_chain(&e), "identity store unavailable; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            return true;
        }
        let plan = plan(&self.settings.cluster, state, node_keys, &mut self.ids);
        let exported = plan.exported;
        for kind in Kind::ALL {
            let n = exported.counts.get(&kind).copied().unwrap_or_default();
            self.metrics
                .exported
                .get_or_create(&PeerDetail {
                    peer: self.settings.cluster.name.clone(),
                    detail: kind.to_string(),
                })
                .set(n as i64);
        }
        let records = exported.published.len()
            + [Kind::Endpoints, Kind::Services]
                .iter()
                .map(|k| exported.counts.get(k).copied().unwrap_or_default())
                .sum::<usize>();
        tracing::Span::current().record("records", records);
        let (local, own) = (local_prefix(), self.own.clone());
        store.begin_restate(&local);
        store.begin_restate(&own);
        for (key, value) in exported.published {
            store.set(key, value);
        }
        if self.synced {
            for (key, value) in canaries(&own, self.synced_at) {
                store.set(key, value);
            }
        }
        let mut written = Ok(());
        for (key, value) in plan.services.chain(plan.endpoints) {
            store.set(key, value);
            if store.pending_values() >= VALUES_PER_WRITE {
                written = store.flush_puts().await.map(drop);
                if written.is_err() {
                    break;
                }
            }
        }
        // A pass cut short by a failed write gives up nothing: the retry
        // states everything again.
        let flushed = match written {
            Ok(()) => {
                store.end_restate(&own);
                store.end_restate(&local);
                store.flush().await
            }
            Err(e) => Err(e),
        };
        match flushed {
            Ok(_) if !self.synced => {
                for (k, v) in canaries(&own, self.synced_at) {
                    store.set(k, v);
                }
                if store.flush().await.is_ok() {
                    self.synced = true;
                    self.health.set_ready(true);
                    tracing::info!(cluster = %self.settings.cluster.name, "initial export complete; canaries written");
                }
                !self.synced
            }
            // A lost lease (or a failed write) dropped values the store
            // does not keep: state everything again.
            Ok(_) => store.needs_values(),
            Err(e) => {
                self.metrics.export_failures.inc();
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "export write failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                true
            }
        }
    }
}

impl Exporter {
    /// Brings the identity store in line with the label sets `state`'s
    /// pods use, and numbers this pass from it.
    async fn number_identities(&mut self, state: &knit_sources::ClusterState) -> Result<()> {
        let in_use = labels_in_use(&self.settings.cluster, state);
        let cluster_id = self.settings.cluster.id;
        let update = Update {
            in_use: &in_use,
            preferred: &self.preferred,
            cluster_id,
            now: crate::unix_now(),
        };
        let allocations = self.settings.identities.update(&update).await?;
        self.ids = IdentityAllocator::from_allocations(cluster_id, &allocations);
        Ok(())
    }
}

/// Canary keys, valued with the time of this run's first complete sync.
fn canaries(own: &str, synced_at: i64) -> BTreeMap<String, Vec<u8>> {
    Kind::ALL
        .into_iter()
        .map(|k| {
            (
                RelativeKey::Synced(k).under(own),
                synced_at.to_string().into_bytes(),
            )
        })
        .collect()
}

async fn restore_identities(local: &Client, own: &str, ids: &mut IdentityAllocator) -> Result<()> {
    let prefix = RelativeKey::Record(Kind::Identities, String::new()).under(own);
    let mut client = local.clone();
    let records: Vec<IdentityRecord> = knit_kvstore::etcd::read_all(&mut client, &prefix)
        .await
        .map_err(Error::Store)?;
    for record in records {
        ids.restore(record.id, record.labels);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use knit_kvstore::backend::MemoryBackend;
    use knit_sources::directory::DirectorySource;
    use knit_telemetry::AbortOnDrop;
    use knit_testkit::manifests::{node, pod};
    use knit_testkit::process::TempDir;

    fn settings() -> ExporterSettings {
        ExporterSettings {
            cluster: LocalCluster {
                name: "a".into(),
                id: 1,
                pod_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
                tunnel_port: None,
                routing_mode: Default::default(),
            },
            lease_ttl_secs: 30,
            identities: IdentityStore::Memory(Default::default()),
            node_report_wait: None,
        }
    }

    fn endpoint_key(ip: &str) -> String {
        RelativeKey::Record(Kind::Endpoints, ip.into()).under(&cluster_prefix("a"))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn records_go_in_before_the_canaries_and_a_failed_write_loses_nothing() {
        let manifests = TempDir::new("exporter-order");
        let write = |file: &str, yaml: &str| std::fs::write(manifests.path().join(file), yaml).unwrap();
        write(
            "cluster.yaml",
            &(node("a-n1", "192.168.1.1", "10.1.1.0/24") + &pod("x", "web", "a-n1", "10.1.1.5", "web")),
        );
        let backend = MemoryBackend::new();
        let owned = vec![cluster_prefix("a"), local_prefix()];
        let store = SyncStore::with_backend(backend.clone(), owned, 30).await.unwrap();
        let source = DirectorySource::new(manifests.path(), Duration::from_millis(20));
        let (keys_tx, keys_rx) = tokio::sync::watch::channel(NodeReports::default());
        let metrics = Metrics::default();
        let exporting = export_loop(
            store,
            IdentityAllocator::new(1),
            source,
            keys_rx,
            settings(),
            metrics.clone(),
            Health::default(),
        );
        let _exporter = AbortOnDrop(tokio::spawn(async move {
            let _ = exporting.await;
        }));

        let canary = RelativeKey::Synced(Kind::Endpoints).under(&cluster_prefix("a"));
        until("the canaries", || backend.dump().contains_key(&canary)).await;
        let endpoint = endpoint_key("10.1.1.5");
        let written = backend.transactions();
        let first_with = |key: &str| {
            written
                .iter()
                .position(|ops| ops.iter().any(|(k, v)| k == key && v.is_some()))
        };
        assert!(first_with(&endpoint).is_some(), "the pod is exported");
        assert!(
            first_with(&endpoint) < first_with(&canary),
            "a peer that sees the canaries has every record"
        );

        // Writes fail while a pod is added: nothing is written, and the
        // pod is exported once writes work again.
        backend.set_failing(true);
        write("late.yaml", &pod("x", "late", "a-n1", "10.1.1.6", "web"));
        until("a failed export pass", || metrics.export_failures.get() > 0).await;
        assert!(!backend.dump().contains_key(&endpoint_key("10.1.1.6")));
        backend.set_failing(false);
        until("the late pod's export after the failure", || {
            backend.dump().contains_key(&endpoint_key("10.1.1.6"))
        })
        .await;
        assert!(
            backend.dump().contains_key(&endpoint),
            "the earlier pod is still there"
        );

        // A key the node's agent reports goes into the node's record
        // without any change in the source.
        let node = RelativeKey::Record(Kind::Nodes, "a-n1".into()).under(&cluster_prefix("a"));
        let reported = knit_kvstore::records::NodeWireguard {
            public_key: "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
                .to_owned()
                .try_into()
                .unwrap(),
            port: 51871,
            next: None,
        };
        keys_tx
            .send(NodeReports {
                keys: NodeWireguards::from([("a-n1".to_owned(), reported.clone())]),
                reported: ["a-n1".to_owned()].into(),
            })
            .unwrap();
        until("the key in the node's record", || {
            backend.dump().get(&node).is_some_and(|v| {
                serde_json::from_slice::<knit_kvstore::records::NodeRecord>(v)
                    .is_ok_and(|r| r.wireguard.as_ref() == Some(&reported))
            })
        })
        .await;
    }

    #[tokio::test]
    async fn with_encryption_the_first_export_waits_for_every_nodes_key() {
        let manifests = TempDir::new("exporter-keys");
        std::fs::write(
            manifests.path().join("cluster.yaml"),
            node("a-n1", "192.168.1.1", "10.1.1.0/24") + &node("a-n2", "192.168.1.2", "10.1.2.0/24"),
        )
        .unwrap();
        let backend = MemoryBackend::new();
        let owned = vec![cluster_prefix("a"), local_prefix()];
        let store = SyncStore::with_backend(backend.clone(), owned, 30).await.unwrap();
        let source = DirectorySource::new(manifests.path(), Duration::from_millis(20));
        let (keys_tx, keys_rx) = tokio::sync::watch::channel(NodeReports::default());
        let exporting = export_loop(
            store,
            IdentityAllocator::new(1),
            source,
            keys_rx,
            ExporterSettings {
                node_report_wait: Some(Duration::from_secs(600)),
                ..settings()
            },
            Metrics::default(),
            Health::default(),
        );
        let _exporter = AbortOnDrop(tokio::spawn(async move {
            let _ = exporting.await;
        }));
        let key = |n: u8| knit_kvstore::records::NodeWireguard {
            public_key: format!(
                "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm{}=",
                ["A", "E"][n as usize - 1]
            )
            .try_into()
            .unwrap(),
            port: 51871,
            next: None,
        };
        let node_key = |n: &str| RelativeKey::Record(Kind::Nodes, n.into()).under(&cluster_prefix("a"));
        // One node reported: still nothing exported.
        keys_tx
            .send(NodeReports {
                keys: NodeWireguards::from([("a-n1".to_owned(), key(1))]),
                reported: ["a-n1".to_owned()].into(),
            })
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            backend.transactions().is_empty(),
            "exported before a-n2 reported: {:?}",
            backend.dump().keys().collect::<Vec<_>>()
        );
        keys_tx
            .send(NodeReports {
                keys: NodeWireguards::from([("a-n1".to_owned(), key(1)), ("a-n2".to_owned(), key(2))]),
                reported: ["a-n1".to_owned(), "a-n2".to_owned()].into(),
            })
            .unwrap();
        until("the node records", || {
            backend.dump().contains_key(&node_key("a-n1")) && backend.dump().contains_key(&node_key("a-n2"))
        })
        .await;
        let written: Vec<(String, knit_kvstore::records::NodeRecord)> = backend
            .transactions()
            .iter()
            .flatten()
            .filter(|(k, _)| k.contains("/nodes/"))
            .filter_map(|(k, v)| Some((k.clone(), serde_json::from_slice(v.as_ref()?).ok()?)))
            .collect();
        assert!(written.len() >= 2, "{written:?}");
        for (key, record) in written {
            assert!(record.wireguard.is_some(), "{key} was written without its key");
        }
    }
}
