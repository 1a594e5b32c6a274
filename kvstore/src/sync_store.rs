//! SyncStore: the writer side. The owner states what should be in etcd
//! ([`SyncStore::set`], [`SyncStore::replace_prefix`]); [`SyncStore::flush`]
//! writes only the difference to what it last wrote, in transactions, with
//! every key attached to one lease kept alive in the background.
//!
//! Per key it keeps one entry: the fingerprints of the desired value and of
//! what etcd holds. Values are kept only until written, unless the owner
//! asks otherwise ([`SyncStore::keep_values`]): a writer that states its
//! whole desired set on every pass (the exporter) needs no copy of it, and
//! after a lost lease or a failed write [`SyncStore::needs_values`] asks it
//! for everything again. A writer that learns its state event by event (the
//! KVStoreMesh) keeps the values, so a new lease is filled without it.
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

/// A value's fingerprint, never zero, so an absent one takes no room.
type Fingerprint = std::num::NonZeroU64;

fn fingerprint_of(value: &[u8]) -> Fingerprint {
    Fingerprint::new(fingerprint(value)).unwrap_or(Fingerprint::MIN)
}

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
    /// Every key desired or written.
    entries: BTreeMap<String, Entry>,
    /// Values not written yet (with `keep_values`, every desired one).
    values: BTreeMap<String, Vec<u8>>,
    keep_values: bool,
    /// Keys whose desired state may differ from what was written.
    dirty: BTreeSet<String>,
    cleaned: bool,
}

/// One key: what is desired and what etcd holds, as fingerprints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    desired: Option<Fingerprint>,
    written: Option<Fingerprint>,
    /// Stated since the last [`SyncStore::begin_restate`] of its prefix.
    stated: bool,
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
            entries: BTreeMap::new(),
            values: BTreeMap::new(),
            keep_values: false,
            dirty: BTreeSet::new(),
            cleaned: false,
        })
    }

    /// Keeps every desired value after it is written, so a lost lease is
    /// made good without the owner (who sets keys one event at a time).
    pub fn keep_values(mut self) -> Self {
        self.keep_values = true;
        self
    }

    /// Whether some desired key has no value to write (a lost lease or a
    /// failed write dropped it): the owner states its keys again
    /// ([`SyncStore::set`], [`SyncStore::replace_prefix`]).
    pub fn needs_values(&self) -> bool {
        self.dirty.iter().any(|k| self.lacks_value(k))
    }

    fn lacks_value(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.desired.is_some() && e.written != e.desired)
            && !self.values.contains_key(key)
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
        let fp = fingerprint_of(&value);
        let entry = match self.entries.get_mut(key.as_str()) {
            Some(entry) => entry,
            None => self.entries.entry(key.clone()).or_default(),
        };
        entry.desired = Some(fp);
        entry.stated = true;
        if entry.written != Some(fp) {
            self.dirty.insert(key.clone());
            self.values.insert(key, value);
        } else if self.keep_values {
            self.values.insert(key, value);
        } else {
            self.values.remove(&key);
        }
    }

    /// Desires `key` absent.
    pub fn remove(&mut self, key: &str) {
        self.values.remove(key);
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.desired = None;
        if entry.written.is_some() {
            self.dirty.insert(key.to_owned());
        } else {
            self.entries.remove(key);
            self.dirty.remove(key);
        }
    }

    /// Desires exactly `entries` under `prefix`.
    pub fn replace_prefix(&mut self, prefix: &str, entries: BTreeMap<String, Vec<u8>>) {
        self.begin_restate(prefix);
        for (key, value) in entries {
            self.set(key, value);
        }
        self.end_restate(prefix);
    }

    /// Starts stating everything under `prefix` anew, in as many
    /// [`SyncStore::set`]s (and [`SyncStore::flush_puts`]) as the owner
    /// likes: [`SyncStore::end_restate`] then gives up the keys under it
    /// that were not stated. Nothing is deleted in between, so a reader
    /// never sees a true key vanish and come back.
    pub fn begin_restate(&mut self, prefix: &str) {
        for (_, entry) in self.under_mut(prefix) {
            entry.stated = false;
        }
    }

    /// Ends a restate begun by [`SyncStore::begin_restate`]: keys under
    /// `prefix` not stated since are desired absent.
    pub fn end_restate(&mut self, prefix: &str) {
        let stale: Vec<String> = self
            .under_mut(prefix)
            .filter(|(_, e)| e.desired.is_some() && !e.stated)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.remove(&key);
        }
    }

    fn under_mut<'s>(
        &'s mut self,
        prefix: &'s str,
    ) -> impl Iterator<Item = (&'s String, &'s mut Entry)> + 's {
        self.entries
            .range_mut::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Values stated and not written yet: an owner stating a large set
    /// calls [`SyncStore::flush_puts`] when this grows, so the values never
    /// pile up.
    pub fn pending_values(&self) -> usize {
        if self.keep_values {
            self.dirty.len()
        } else {
            self.values.len()
        }
    }

    /// Whether `key` is desired.
    pub fn contains(&self, key: &str) -> bool {
        self.entries.get(key).is_some_and(|e| e.desired.is_some())
    }

    /// Whether `key` is desired and etcd holds its desired value (a flush
    /// wrote it).
    pub fn is_written(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.desired.is_some() && e.written == e.desired)
    }

    /// Number of keys desired.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| e.desired.is_some()).count()
    }

    /// Whether nothing is desired.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether everything desired has been written.
    pub fn is_flushed(&self) -> bool {
        self.dirty.is_empty() && !self.lease_lost.load(Ordering::Relaxed)
    }

    /// Writes the difference. On error, what was written stays recorded and
    /// the rest is retried by the next flush.
    pub async fn flush(&mut self) -> Result<FlushReport> {
        self.renew_lost_lease().await?;
        if !self.cleaned {
            for prefix in self.owned.clone() {
                for key in self.backend.keys(&prefix).await? {
                    let entry = self.entries.entry(key.clone()).or_default();
                    if entry.written.is_none() {
                        // Leftovers sit under an old lease: rewrite or delete every one.
                        entry.written = Some(Fingerprint::MAX);
                        self.dirty.insert(key);
                    }
                }
            }
            self.cleaned = true;
        }
        let mut report = self.write_phase(false, true).await?;
        // A canary promises everything before it: not while a key waits
        // for its value.
        if !self.needs_values() {
            let r = self.write_phase(true, true).await?;
            report.puts += r.puts;
            report.deletes += r.deletes;
        }
        Ok(report)
    }

    /// Writes the values stated so far, and nothing else: no deletes, no
    /// canaries, no leftovers. The middle of a restate
    /// ([`SyncStore::begin_restate`]) calls it to bound
    /// [`SyncStore::pending_values`].
    pub async fn flush_puts(&mut self) -> Result<FlushReport> {
        self.renew_lost_lease().await?;
        self.write_phase(false, false).await
    }

    async fn renew_lost_lease(&mut self) -> Result<()> {
        if self.lease_lost.swap(false, Ordering::Relaxed) {
            tracing::warn!("etcd lease lost; writing everything again under a new lease");
            self.keeper.abort();
            let (lease, keeper) = self
                .backend
                .grant(self.lease_ttl, self.lease_lost.clone())
                .await?;
            self.lease = lease;
            self.keeper = keeper;
            self.entries.retain(|_, e| {
                e.written = None;
                e.desired.is_some()
            });
            self.dirty = self.entries.keys().cloned().collect();
        }
        Ok(())
    }

    /// Writes the dirty canaries, or the dirty other keys; deletes too
    /// when `deletes`.
    async fn write_phase(&mut self, canaries: bool, deletes: bool) -> Result<FlushReport> {
        let keep = self.keep_values;
        let mut ops: Vec<Op> = Vec::new();
        for k in self.dirty.iter().filter(|k| is_canary(k) == canaries) {
            let Some(e) = self.entries.get(k) else { continue };
            match e.desired {
                // Without kept values the value moves into the write.
                Some(fp) if e.written != Some(fp) => {
                    let value = if keep {
                        self.values.get(k).cloned()
                    } else {
                        self.values.remove(k)
                    };
                    if let Some(v) = value {
                        ops.push((k.clone(), Some(v)));
                    }
                }
                Some(_) => {}
                None if deletes && e.written.is_some() => ops.push((k.clone(), None)),
                None => {}
            }
        }
        let report = self.apply(ops).await?;
        let entries = &self.entries;
        let values = &self.values;
        self.dirty.retain(|k| {
            is_canary(k) != canaries
                || entries.get(k.as_str()).is_some_and(|e| {
                    (e.desired.is_some() && e.written != e.desired && !values.contains_key(k.as_str()))
                        || (!deletes && e.desired.is_none() && e.written.is_some())
                })
        });
        Ok(report)
    }

    async fn apply(&mut self, ops: Vec<Op>) -> Result<FlushReport> {
        let lease = self.lease;
        let mut chunks: Vec<Vec<Op>> = Vec::new();
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            chunks.push(ops.by_ref().take(OPS_PER_TXN).collect());
        }
        let backend = self.backend.clone();
        let mut results = futures::stream::iter(chunks.into_iter().map(|chunk| {
            let backend = backend.clone();
            async move {
                let done: Vec<(String, Option<Fingerprint>)> = chunk
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_deref().map(fingerprint_of)))
                    .collect();
                (done, backend.apply(chunk, lease).await)
            }
        }))
        .buffer_unordered(TXNS_IN_FLIGHT);
        let mut report = FlushReport::default();
        let mut first_error = None;
        while let Some((done, outcome)) = results.next().await {
            match outcome {
                Ok(()) => {
                    for (k, fp) in done {
                        match fp {
                            Some(fp) => {
                                report.puts += 1;
                                if let Some(e) = self.entries.get_mut(&k) {
                                    e.written = Some(fp);
                                }
                            }
                            None => {
                                report.deletes += 1;
                                if self.entries.get(&k).is_some_and(|e| e.desired.is_none()) {
                                    self.entries.remove(&k);
                                }
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

        // The exporter keeps no values: after a lost lease the store asks
        // for them, writes no canary without them, then everything again.
        memory.lose_leases();
        assert!(memory.dump().is_empty());
        assert!(!store.is_flushed());
        store.flush().await.unwrap();
        assert!(store.needs_values());
        assert!(memory.dump().is_empty(), "no canary before its records");
        store.replace_prefix(P, desired(250, "v"));
        assert!(!store.needs_values());
        store.flush().await.unwrap();
        assert_eq!(
            memory.dump().len(),
            251,
            "everything is written again under a new lease"
        );
    }

    #[tokio::test]
    async fn kept_values_refill_a_new_lease_without_the_owner() {
        let memory = MemoryBackend::new();
        let mut store = SyncStore::with_backend(memory.clone(), Vec::new(), 10)
            .await
            .unwrap()
            .keep_values();
        store.replace_prefix(P, desired(20, "v"));
        store.flush().await.unwrap();
        memory.lose_leases();
        store.flush().await.unwrap();
        assert!(!store.needs_values());
        assert_eq!(memory.dump(), desired(20, "v"));
    }

    #[tokio::test]
    async fn written_values_are_not_kept() {
        let memory = MemoryBackend::new();
        let mut store = SyncStore::with_backend(memory.clone(), Vec::new(), 10)
            .await
            .unwrap();
        store.replace_prefix(P, desired(20, "v"));
        assert_eq!(store.values.len(), 21);
        store.flush().await.unwrap();
        assert!(store.values.is_empty(), "only fingerprints stay");
        assert_eq!(store.len(), 21);
        // A changed value is written; an unchanged one is not.
        let mut next = desired(20, "v");
        next.insert(format!("{P}nodes/n005"), b"changed".to_vec());
        store.replace_prefix(P, next.clone());
        assert_eq!(store.flush().await.unwrap().puts, 1);
        assert_eq!(memory.dump(), next);
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
    async fn a_restate_in_parts_writes_as_it_goes_and_deletes_only_at_the_end() {
        let memory = MemoryBackend::new();
        let mut store = SyncStore::with_backend(memory.clone(), Vec::new(), 10)
            .await
            .unwrap();
        store.replace_prefix(P, desired(10, "v"));
        store.flush().await.unwrap();

        // Restate n000..n004 changed, in two parts; n005..n009 are gone.
        store.begin_restate(P);
        for i in 0..3 {
            store.set(format!("{P}nodes/n{i:03}"), b"w".to_vec());
        }
        assert_eq!(store.pending_values(), 3);
        let report = store.flush_puts().await.unwrap();
        assert_eq!((report.puts, report.deletes), (3, 0));
        assert_eq!(store.pending_values(), 0, "written values are let go");
        assert_eq!(memory.dump().len(), 11, "nothing deleted mid-restate");
        for i in 3..5 {
            store.set(format!("{P}nodes/n{i:03}"), b"w".to_vec());
        }
        store.set(format!("{P}synced/nodes"), b"1".to_vec());
        store.end_restate(P);
        let report = store.flush().await.unwrap();
        assert_eq!((report.puts, report.deletes), (2, 5));
        let expected: BTreeMap<String, Vec<u8>> = (0..5)
            .map(|i| (format!("{P}nodes/n{i:03}"), b"w".to_vec()))
            .chain([(format!("{P}synced/nodes"), b"1".to_vec())])
            .collect();
        assert_eq!(memory.dump(), expected);
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
        // The values went with the failed write: the owner states them again.
        assert!(store.needs_values());
        store.replace_prefix(P, desired(3, "v"));
        assert_eq!(store.flush().await.unwrap().puts, 4);
        assert_eq!(memory.dump(), desired(3, "v"));
    }
}
