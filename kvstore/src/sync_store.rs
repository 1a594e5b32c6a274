//! SyncStore: the writer side. The owner states what should be in etcd
//! ([`SyncStore::set`], [`SyncStore::replace_prefix`]); [`SyncStore::flush`]
//! writes only the difference to what it last wrote, in transactions, with
//! every key attached to one lease kept alive in the background.
//!
//! Canaries (`.../synced/<kind>`, recognised by [`crate::keys`], never by
//! their text) are written in a last phase, only once
//! every other pending write has succeeded, so a reader that sees a canary
//! has seen everything before it. If the lease is lost (etcd restarted, a
//! long partition) a new one is granted and everything is written again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};
use futures::StreamExt;

use crate::etcd::prefix_end;
use crate::fingerprint;
use crate::keys::is_canary;
use crate::{Error, Result};

/// Operations per etcd transaction (etcd's default limit is 128).
const OPS_PER_TXN: usize = 100;
/// Transactions in flight at once.
const TXNS_IN_FLIGHT: usize = 8;

/// What one flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Keys written.
    pub puts: usize,
    /// Keys deleted.
    pub deletes: usize,
}

/// Writes a desired key set to etcd under a lease.
pub struct SyncStore {
    client: Client,
    lease_ttl: i64,
    lease: i64,
    lease_lost: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
    owned: Vec<String>,
    desired: BTreeMap<String, Vec<u8>>,
    /// Fingerprint of what etcd holds for each key this store wrote.
    written: BTreeMap<String, u64>,
    /// Keys whose desired state may differ from what was written.
    dirty: BTreeSet<String>,
    cleaned: bool,
}

impl Drop for SyncStore {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl SyncStore {
    /// A store owning every key under `owned` prefixes: keys there that are
    /// not desired are deleted on the first flush (leftovers of an earlier run).
    pub async fn new(client: Client, owned: Vec<String>, lease_ttl_secs: i64) -> Result<Self> {
        let lease_lost = Arc::new(AtomicBool::new(false));
        let (lease, keeper) = grant(&client, lease_ttl_secs, lease_lost.clone()).await?;
        Ok(Self {
            client,
            lease_ttl: lease_ttl_secs,
            lease,
            lease_lost,
            keeper,
            owned,
            desired: BTreeMap::new(),
            written: BTreeMap::new(),
            dirty: BTreeSet::new(),
            cleaned: false,
        })
    }

    /// Takes ownership of `prefix`: on the next flush, keys under it that
    /// are not desired (leftovers of an earlier run) are deleted. A writer
    /// that learns its desired state gradually calls this once it knows all
    /// of it, so leftovers that are still true are not deleted meanwhile.
    pub fn own(&mut self, prefix: String) {
        if !self.owned.contains(&prefix) {
            self.owned.push(prefix);
            self.cleaned = false;
        }
    }

    /// Desires `key` = `value`.
    pub fn set(&mut self, key: String, value: Vec<u8>) {
        if self.written.get(&key) != Some(&fingerprint(&value)) {
            self.dirty.insert(key.clone());
        }
        self.desired.insert(key, value);
    }

    /// Desires `key` absent.
    pub fn remove(&mut self, key: &str) {
        if self.desired.remove(key).is_some() || self.written.contains_key(key) {
            self.dirty.insert(key.to_owned());
        }
    }

    /// Desires exactly `entries` under `prefix`.
    pub fn replace_prefix(&mut self, prefix: &str, entries: BTreeMap<String, Vec<u8>>) {
        let stale: Vec<String> = self
            .desired
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| !entries.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.remove(&key);
        }
        for (key, value) in entries {
            if self.desired.get(&key) != Some(&value) {
                self.set(key, value);
            }
        }
    }

    /// Whether `key` is desired.
    pub fn contains(&self, key: &str) -> bool {
        self.desired.contains_key(key)
    }

    /// Number of keys desired.
    pub fn len(&self) -> usize {
        self.desired.len()
    }

    /// Whether nothing is desired.
    pub fn is_empty(&self) -> bool {
        self.desired.is_empty()
    }

    /// Whether everything desired has been written.
    pub fn is_flushed(&self) -> bool {
        self.dirty.is_empty() && !self.lease_lost.load(Ordering::Relaxed)
    }

    /// Writes the difference. On error, what was written stays recorded and
    /// the rest is retried by the next flush.
    pub async fn flush(&mut self) -> Result<FlushReport> {
        if self.lease_lost.swap(false, Ordering::Relaxed) {
            tracing::warn!("etcd lease lost; writing everything again under a new lease");
            self.keeper.abort();
            let (lease, keeper) = grant(&self.client, self.lease_ttl, self.lease_lost.clone()).await?;
            self.lease = lease;
            self.keeper = keeper;
            self.written.clear();
            self.dirty = self.desired.keys().cloned().collect();
        }
        if !self.cleaned {
            for prefix in self.owned.clone() {
                let options = GetOptions::new().with_range(prefix_end(&prefix)).with_keys_only();
                let existing = self
                    .client
                    .kv_client()
                    .get(prefix.as_str(), Some(options))
                    .await
                    .map_err(etcd("listing owned keys"))?;
                for kv in existing.kvs() {
                    if let Ok(key) = kv.key_str()
                        && !self.written.contains_key(key)
                    {
                        // Leftovers sit under an old lease: rewrite or delete every one.
                        self.written.insert(key.to_owned(), u64::MAX);
                        self.dirty.insert(key.to_owned());
                    }
                }
            }
            self.cleaned = true;
        }
        let mut report = FlushReport::default();
        for canaries in [false, true] {
            let ops: Vec<(String, Option<Vec<u8>>)> = self
                .dirty
                .iter()
                .filter(|k| is_canary(k) == canaries)
                .filter_map(|k| match self.desired.get(k) {
                    Some(v) if self.written.get(k) != Some(&fingerprint(v)) => {
                        Some((k.clone(), Some(v.clone())))
                    }
                    Some(_) => None,
                    None => self.written.contains_key(k).then(|| (k.clone(), None)),
                })
                .collect();
            let r = self.apply(ops).await?;
            report.puts += r.puts;
            report.deletes += r.deletes;
            self.dirty.retain(|k| is_canary(k) != canaries);
        }
        Ok(report)
    }

    async fn apply(&mut self, ops: Vec<(String, Option<Vec<u8>>)>) -> Result<FlushReport> {
        let lease = self.lease;
        let chunks: Vec<Vec<(String, Option<Vec<u8>>)>> =
            ops.chunks(OPS_PER_TXN).map(<[_]>::to_vec).collect();
        let client = self.client.clone();
        let mut results = futures::stream::iter(chunks.into_iter().map(|chunk| {
            let mut kv = client.kv_client();
            async move {
                let txn_ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => {
                            TxnOp::put(k.as_str(), v.clone(), Some(PutOptions::new().with_lease(lease)))
                        }
                        None => TxnOp::delete(k.as_str(), None::<DeleteOptions>),
                    })
                    .collect();
                let outcome = kv.txn(Txn::new().and_then(txn_ops)).await;
                (chunk, outcome)
            }
        }))
        .buffer_unordered(TXNS_IN_FLIGHT);
        let mut report = FlushReport::default();
        let mut first_error = None;
        while let Some((chunk, outcome)) = results.next().await {
            match outcome {
                Ok(_) => {
                    for (k, v) in chunk {
                        match v {
                            Some(v) => {
                                report.puts += 1;
                                self.written.insert(k, fingerprint(&v));
                            }
                            None => {
                                report.deletes += 1;
                                self.written.remove(&k);
                            }
                        }
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(source) => Err(Error::Etcd {
                action: "writing to etcd".into(),
                source,
            }),
            None => Ok(report),
        }
    }

    /// Revokes the lease: every key this store wrote disappears at once.
    pub async fn revoke(self) -> Result<()> {
        self.keeper.abort();
        self.client
            .lease_client()
            .revoke(self.lease)
            .await
            .map_err(etcd("revoking lease"))?;
        Ok(())
    }
}

async fn grant(
    client: &Client,
    ttl: i64,
    lost: Arc<AtomicBool>,
) -> Result<(i64, tokio::task::JoinHandle<()>)> {
    let mut leases = client.lease_client();
    let lease = leases
        .grant(ttl, None)
        .await
        .map_err(etcd("granting lease"))?
        .id();
    let keeper = tokio::spawn(async move {
        let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(200));
        loop {
            let outcome = async {
                let (mut keeper, mut responses) = leases.keep_alive(lease).await?;
                loop {
                    keeper.keep_alive().await?;
                    match responses.message().await? {
                        Some(r) if r.ttl() > 0 => {}
                        _ => return Ok::<bool, etcd_client::Error>(true),
                    }
                    tokio::time::sleep(period).await;
                }
            }
            .await;
            match outcome {
                Ok(true) => {
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "lease keepalive failed; retrying");
                    tokio::time::sleep(period).await;
                    if let Ok(r) = leases.time_to_live(lease, None).await
                        && r.ttl() <= 0
                    {
                        lost.store(true, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    });
    Ok((lease, keeper))
}

fn etcd(action: &'static str) -> impl Fn(etcd_client::Error) -> Error {
    move |source| Error::Etcd {
        action: action.into(),
        source,
    }
}
