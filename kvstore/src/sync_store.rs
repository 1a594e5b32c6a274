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

use etcd_client::Client;
use futures::StreamExt;

use crate::backend::{EtcdBackend, Op, SyncBackend};
use crate::keys::is_canary;
use crate::{Result, fingerprint};

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

/// Writes a desired key set to etcd (or another [`SyncBackend`]) under a
/// lease.
pub struct SyncStore<B: SyncBackend = EtcdBackend> {
    backend: B,
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

impl<B: SyncBackend> Drop for SyncStore<B> {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl SyncStore<EtcdBackend> {
    /// A store writing to etcd through `client`, owning every key under
    /// `owned` prefixes: keys there that are not desired are deleted on the
    /// first flush (leftovers of an earlier run).
    pub async fn new(client: Client, owned: Vec<String>, lease_ttl_secs: i64) -> Result<Self> {
        Self::with_backend(EtcdBackend(client), owned, lease_ttl_secs).await
    }
}

impl<B: SyncBackend> SyncStore<B> {
    /// A store writing to `backend`; see [`SyncStore::new`].
    pub async fn with_backend(backend: B, owned: Vec<String>, lease_ttl_secs: i64) -> Result<Self> {
        let lease_lost = Arc::new(AtomicBool::new(false));
        let (lease, keeper) = backend.grant(lease_ttl_secs, lease_lost.clone()).await?;
        Ok(Self {
            backend,
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
            let (lease, keeper) = self
                .backend
                .grant(self.lease_ttl, self.lease_lost.clone())
                .await?;
            self.lease = lease;
            self.keeper = keeper;
            self.written.clear();
            self.dirty = self.desired.keys().cloned().collect();
        }
        if !self.cleaned {
            for prefix in self.owned.clone() {
                for key in self.backend.keys(&prefix).await? {
                    if !self.written.contains_key(&key) {
                        // Leftovers sit under an old lease: rewrite or delete every one.
                        self.written.insert(key.clone(), u64::MAX);
                        self.dirty.insert(key);
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

    async fn apply(&mut self, ops: Vec<Op>) -> Result<FlushReport> {
        let lease = self.lease;
        let chunks: Vec<Vec<Op>> = ops.chunks(OPS_PER_TXN).map(<[_]>::to_vec).collect();
        let backend = self.backend.clone();
        let mut results = futures::stream::iter(chunks.into_iter().map(|chunk| {
            let backend = backend.clone();
            async move {
                let outcome = backend.apply(chunk.clone(), lease).await;
                (chunk, outcome)
            }
        }))
        .buffer_unordered(TXNS_IN_FLIGHT);
        let mut report = FlushReport::default();
        let mut first_error = None;
        while let Some((chunk, outcome)) = results.next().await {
            match outcome {
                Ok(()) => {
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
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Revokes the lease: every key this store wrote disappears at once.
    pub async fn revoke(self) -> Result<()> {
        self.keeper.abort();
        self.backend.revoke(self.lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryBackend;

    const P: &str = "knit/v1/clusters/t/";

    fn desired(n: usize, tag: &str) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = (0..n)
            .map(|i| (format!("{P}nodes/n{i:03}"), format!("{tag}{i}").into_bytes()))
            .collect();
        out.insert(format!("{P}synced/nodes"), b"1".to_vec());
        out
    }

    #[tokio::test]
    async fn canaries_last_unchanged_skipped_and_everything_rewritten_after_a_lost_lease() {
        let memory = MemoryBackend::new();
        memory.put_leftover(&format!("{P}nodes/stale"), b"x");
        let mut store = SyncStore::with_backend(memory.clone(), vec![P.into()], 10)
            .await
            .unwrap();
        store.replace_prefix(P, desired(250, "v"));
        let report = store.flush().await.unwrap();
        assert_eq!((report.puts, report.deletes), (251, 1), "the leftover is deleted");
        let txns = memory.transactions();
        assert!(txns.last().unwrap().iter().all(|(k, _)| is_canary(k)));
        assert!(
            txns[..txns.len() - 1]
                .iter()
                .flatten()
                .all(|(k, _)| !is_canary(k))
        );
        assert!(txns.iter().all(|t| t.len() <= OPS_PER_TXN));

        memory.clear_transactions();
        store.replace_prefix(P, desired(250, "v"));
        assert_eq!(store.flush().await.unwrap(), FlushReport::default());
        assert!(memory.transactions().is_empty(), "nothing unchanged is written");

        memory.lose_leases();
        assert!(memory.dump().is_empty());
        assert!(!store.is_flushed());
        store.flush().await.unwrap();
        assert_eq!(
            memory.dump().len(),
            251,
            "everything is written again under a new lease"
        );
    }

    #[tokio::test]
    async fn a_service_in_a_namespace_named_synced_is_written_with_the_records() {
        let memory = MemoryBackend::new();
        let mut store = SyncStore::with_backend(memory.clone(), Vec::new(), 10)
            .await
            .unwrap();
        let service = format!("{P}services/synced/web");
        let canary = format!("{P}synced/services");
        store.set(service.clone(), b"{}".to_vec());
        store.set(canary.clone(), b"1".to_vec());
        store.flush().await.unwrap();
        let txns = memory.transactions();
        assert_eq!(txns.len(), 2, "records, then canaries: {txns:?}");
        assert_eq!(txns[0], vec![(service, Some(b"{}".to_vec()))]);
        assert_eq!(txns[1], vec![(canary, Some(b"1".to_vec()))]);
    }

    #[tokio::test]
    async fn a_failed_write_is_retried_by_the_next_flush() {
        let memory = MemoryBackend::new();
        let mut store = SyncStore::with_backend(memory.clone(), Vec::new(), 10)
            .await
            .unwrap();
        store.replace_prefix(P, desired(3, "v"));
        memory.set_failing(true);
        assert!(store.flush().await.is_err());
        assert!(memory.dump().is_empty());
        memory.set_failing(false);
        assert_eq!(store.flush().await.unwrap().puts, 4);
        assert_eq!(memory.dump(), desired(3, "v"));
    }
}
