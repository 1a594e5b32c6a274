//! The export loop: wait for the source to change, [`export`] the state, hand the result
//! to a [`SyncStore`] and flush. Canaries (`synced/<kind>`) join the
//! desired set only after the first complete flush, so a peer that sees
//! them has everything. Identities published by an earlier run are read
//! back first, so numbers survive restarts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::Client;
use knit_kvstore::keys::{HEARTBEAT_KEY, Kind, RelativeKey, cluster_prefix};
use knit_kvstore::records::IdentityRecord;
use knit_kvstore::sync_store::SyncStore;
use knit_telemetry::Health;
use tracing::Instrument as _;

use crate::export::identity::IdentityAllocator;
use crate::export::{LocalCluster, local_prefix, plan};
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
}

/// Runs until the process stops; etcd errors are retried.
pub async fn run_exporter<S: Source>(
    local: Client,
    mut source: S,
    settings: ExporterSettings,
    metrics: Metrics,
    health: Health,
) -> Result<()> {
    let own = cluster_prefix(&settings.cluster.name);
    let mut ids = IdentityAllocator::new(settings.cluster.id);
    // etcd may refuse requests for a moment (e.g. right after auth is
    // enabled): retry instead of giving up.
    let mut store = loop {
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
    let mut synced = false;
    let synced_at = unix_now();
    let mut pending = true;
    let mut last_heartbeat = Instant::now() - Duration::from_secs(60);
    while !source.is_ready() {
        source.next_change().await;
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
                cluster = %settings.cluster.name,
                records = tracing::field::Empty
            );
            async {
                let plan = plan(&settings.cluster, source.state(), &mut ids);
                let exported = plan.exported;
                for kind in Kind::ALL {
                    let n = exported.counts.get(&kind).copied().unwrap_or_default();
                    metrics
                        .exported
                        .get_or_create(&PeerDetail {
                            peer: settings.cluster.name.clone(),
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
                let local = local_prefix();
                store.begin_restate(&local);
                store.begin_restate(&own);
                for (key, value) in exported.published {
                    store.set(key, value);
                }
                if synced {
                    for (key, value) in canaries(&own, synced_at) {
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
                // A pass cut short by a failed write gives up nothing: the
                // retry states everything again.
                let flushed = match written {
                    Ok(()) => {
                        store.end_restate(&own);
                        store.end_restate(&local);
                        store.flush().await
                    }
                    Err(e) => Err(e),
                };
                match flushed {
                    Ok(_) if !synced => {
                        for (k, v) in canaries(&own, synced_at) {
                            store.set(k, v);
                        }
                        if store.flush().await.is_ok() {
                            synced = true;
                            health.set_ready(true);
                            tracing::info!(cluster = %settings.cluster.name, "initial export complete; canaries written");
                        }
                        pending = !synced;
                    }
                    // A lost lease (or a failed write) dropped values the
                    // store does not keep: state everything again.
                    Ok(_) => pending = store.needs_values(),
                    Err(e) => {
                        metrics.export_failures.inc();
                        tracing::warn!(error = %knit_telemetry::error_chain(&e), "export write failed; retrying");
                        pending = true;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            .instrument(span)
            .await;
        }
        tokio::select! {
            changed = source.next_change() => pending |= changed,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
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
