//! Writes this node's status record (`knit/v1/agent-status/<node>`) into
//! every replica of the local mesh apiserver.
//!
//! Each replica runs its own etcd, and each replica's exporter takes the
//! nodes' WireGuard keys from the status records in its own etcd; the
//! operator counts `connected: n/m` from whichever replica it reads. So a
//! status written through the Service (one replica) would be missing from
//! the others. `--etcd-replicas` names the replicas: in Kubernetes the
//! headless Service `knit-apiserver-replicas`, whose name resolves to every
//! replica pod, ready or not (a new replica's first export waits for the
//! agents' reports when the cluster encrypts). Every [`RESOLVE_EVERY`] the names are resolved again,
//! [`targets`] (pure) turns the addresses into the set of writers, and one
//! writer task runs per target: started when its address appears, stopped
//! when it goes. While nothing resolves (an older control plane without
//! the headless Service, or no `--etcd-replicas`), the status goes through
//! the `--etcd-config` endpoint as before. Each writer keeps the latest
//! record under its own lease in its replica, reconnecting and rewriting
//! after any failure, so a replica that restarts empty has the record
//! again within seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use knit_kvstore::EtcdClientConfig;
use knit_kvstore::backend::EtcdBackend;
use knit_kvstore::keys::agent_status_key;
use knit_kvstore::records::AgentStatusRecord;
use knit_kvstore::sync_store::SyncStore;
use knit_telemetry::AbortOnDrop;
use tokio::sync::watch;

/// Seconds a report outlives its agent.
pub const REPORT_TTL_SECS: i64 = 15;

/// How often the replicas' names are resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// The mesh apiserver's replicas, as `--etcd-replicas` names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdReplicas {
    /// `host:port` entries; a host name stands for every address it
    /// resolves to.
    pub addresses: Vec<String>,
    /// The name each replica's certificate is checked for; the first
    /// entry's host when unset.
    pub server_name: Option<String>,
}

impl EtcdReplicas {
    /// The name the replicas' certificate must carry.
    pub fn server_name(&self) -> Option<String> {
        self.server_name.clone().or_else(|| {
            let first = self.addresses.first()?;
            let host = first.rsplit_once(':').map_or(first.as_str(), |(h, _)| h);
            Some(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        })
    }
}

/// Where one writer writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusTarget {
    /// The `--etcd-config` endpoint (the Service: one replica at a time).
    Service,
    /// One replica's etcd.
    Replica(SocketAddr),
}

/// The writers to run for the replica addresses resolved now: one per
/// address, or the Service alone when none resolved.
pub fn targets(resolved: &BTreeSet<SocketAddr>) -> BTreeSet<StatusTarget> {
    if resolved.is_empty() {
        BTreeSet::from([StatusTarget::Service])
    } else {
        resolved.iter().copied().map(StatusTarget::Replica).collect()
    }
}

/// Every address the replicas' entries resolve to now; an entry that does
/// not resolve adds nothing.
pub async fn resolve(replicas: &EtcdReplicas) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    for entry in &replicas.addresses {
        match tokio::net::lookup_host(entry.as_str()).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => tracing::debug!(entry = %entry, error = %e, "etcd replicas do not resolve"),
        }
    }
    out
}

/// Keeps the latest record of `rx` written for `node` in every target
/// until the task is dropped.
pub async fn publish(
    config: EtcdClientConfig,
    replicas: EtcdReplicas,
    node: String,
    rx: watch::Receiver<AgentStatusRecord>,
) {
    let server_name = replicas.server_name();
    let mut writers: BTreeMap<StatusTarget, AbortOnDrop> = BTreeMap::new();
    loop {
        let resolved = if replicas.addresses.is_empty() {
            BTreeSet::new()
        } else {
            resolve(&replicas).await
        };
        let wanted = targets(&resolved);
        writers.retain(|target, _| wanted.contains(target));
        for target in wanted {
            writers.entry(target).or_insert_with(|| {
                tracing::info!(?target, "writing this node's status");
                AbortOnDrop(tokio::spawn(write_to(
                    target,
                    config.clone(),
                    server_name.clone(),
                    node.clone(),
                    rx.clone(),
                )))
            });
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// A store writing into `target` under a new lease, and a watch on this
/// node's key there: the watch ends the moment that etcd goes (or its
/// record is deleted), so a replaced replica gets the record again as
/// soon as it answers, not when the lease's keep-alive or the next
/// periodic flush notices.
async fn open_store(
    target: StatusTarget,
    config: &EtcdClientConfig,
    server_name: Option<&str>,
    key: &str,
) -> knit_kvstore::Result<(SyncStore<EtcdBackend>, etcd_client::WatchStream)> {
    let mut client = match target {
        StatusTarget::Replica(address) => {
            let ip = address.ip().to_string();
            knit_kvstore::etcd::connect_replica(config, address, server_name.unwrap_or(&ip)).await?
        }
        StatusTarget::Service => knit_kvstore::etcd::connect(config).await?,
    };
    let own = client
        .watch(key, None)
        .await
        .map_err(|source| knit_kvstore::Error::Etcd {
            action: format!("watching {key}"),
            source,
        })?;
    let store = SyncStore::new(client, Vec::new(), REPORT_TTL_SECS)
        .await?
        .keep_values();
    Ok((store, own))
}

/// Whether a message of the watch on this node's own key means the record
/// must be written again elsewhere or anew: the watch failed or ended, or
/// the record was deleted (its lease expired).
fn record_gone(message: &Result<Option<etcd_client::WatchResponse>, etcd_client::Error>) -> bool {
    match message {
        Ok(Some(response)) => {
            response.canceled()
                || response
                    .events()
                    .iter()
                    .any(|e| e.event_type() == etcd_client::EventType::Delete)
        }
        Ok(None) | Err(_) => true,
    }
}

/// One writer: the latest record under a lease in `target`, rewritten after
/// any failure.
async fn write_to(
    target: StatusTarget,
    config: EtcdClientConfig,
    server_name: Option<String>,
    node: String,
    mut rx: watch::Receiver<AgentStatusRecord>,
) {
    let key = agent_status_key(&node);
    loop {
        let (mut store, mut own) = match open_store(target, &config, server_name.as_deref(), &key).await {
            Ok(opened) => opened,
            Err(e) => {
                tracing::debug!(?target, error = %knit_telemetry::error_chain(&e), "status not written yet");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let report = rx.borrow_and_update().clone();
            match serde_json::to_vec(&report) {
                Ok(value) => store.set(key.clone(), value),
                Err(e) => tracing::warn!(error = %e, "encoding the status record"),
            }
            if let Err(e) = store.flush().await {
                tracing::debug!(?target, error = %knit_telemetry::error_chain(&e), "writing the status failed; reconnecting");
                break;
            }
            // A lost lease is also noticed by the store, and everything is
            // written again on the next flush.
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                message = own.message() => if record_gone(&message) {
                    tracing::debug!(?target, "this node's status record or its etcd went; writing it again");
                    break;
                },
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_per_replica_and_the_service_only_when_none_resolves() {
        let a: SocketAddr = "10.0.0.5:2379".parse().unwrap();
        let b: SocketAddr = "10.0.0.6:2379".parse().unwrap();
        assert_eq!(targets(&BTreeSet::new()), BTreeSet::from([StatusTarget::Service]));
        assert_eq!(
            targets(&BTreeSet::from([a, b])),
            BTreeSet::from([StatusTarget::Replica(a), StatusTarget::Replica(b)])
        );
    }

    #[test]
    fn the_server_name_is_the_flag_or_the_first_host() {
        let named = EtcdReplicas {
            addresses: vec!["knit-apiserver-replicas.knit-system.svc:2379".into()],
            server_name: None,
        };
        assert_eq!(
            named.server_name().as_deref(),
            Some("knit-apiserver-replicas.knit-system.svc")
        );
        let by_ip = EtcdReplicas {
            addresses: vec!["10.0.0.5:2379".into(), "10.0.0.6:2379".into()],
            server_name: Some("knit-apiserver-replicas.knit-system.svc".into()),
        };
        assert_eq!(
            by_ip.server_name().as_deref(),
            Some("knit-apiserver-replicas.knit-system.svc")
        );
        assert_eq!(EtcdReplicas::default().server_name(), None);
    }

    #[tokio::test]
    async fn every_entry_resolves_and_a_malformed_one_adds_nothing() {
        // Addresses only: a name would send a DNS query out of the test.
        let replicas = EtcdReplicas {
            addresses: vec!["10.0.0.5:2379".into(), "10.0.0.6:2379".into(), "10.0.0.7".into()],
            server_name: None,
        };
        let resolved = resolve(&replicas).await;
        assert_eq!(
            resolved,
            BTreeSet::from(["10.0.0.5:2379".parse().unwrap(), "10.0.0.6:2379".parse().unwrap()])
        );
    }
}
