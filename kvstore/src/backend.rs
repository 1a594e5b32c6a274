//! What a [`SyncStore`](crate::sync_store::SyncStore) needs from a key-value
//! store, and nothing more (as Cilium's `SyncStoreBackend`): leases, one
//! transaction of puts and deletes under a lease, the keys under a prefix.
//!
//! [`EtcdBackend`] is the real one. [`MemoryBackend`] keeps keys in memory
//! and records every transaction, so the writer logic built on SyncStore
//! (the exporter, the KVStoreMesh mirror) gets fast unit tests beside the
//! real-etcd ones; it can also lose a lease on demand.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp};

use crate::etcd::prefix_end;
use crate::{Error, Result};

/// One write: `Some(value)` puts, `None` deletes.
pub type Op = (String, Option<Vec<u8>>);

/// The store a SyncStore writes to.
pub trait SyncBackend: Clone + Send + Sync + 'static {
    /// Grants a lease of `ttl` seconds and keeps it alive in the background
    /// until the returned task is aborted; sets `lost` once the lease is
    /// gone for good (expired, revoked, the store restarted).
    fn grant(
        &self,
        ttl: i64,
        lost: Arc<AtomicBool>,
    ) -> impl Future<Output = Result<(i64, tokio::task::JoinHandle<()>)>> + Send;
    /// Applies `ops` in one transaction, puts attached to `lease`.
    fn apply(&self, ops: Vec<Op>, lease: i64) -> impl Future<Output = Result<()>> + Send;
    /// Every key under `prefix`.
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Revokes `lease`: its keys disappear.
    fn revoke(&self, lease: i64) -> impl Future<Output = Result<()>> + Send;
}

/// etcd, through one client.
#[derive(Clone)]
pub struct EtcdBackend(pub Client);

/// Keys per page when listing owned keys: one response stays far below
/// gRPC's 4 MiB message limit (100,000 endpoint keys are about 6 MB).
const KEYS_PAGE: i64 = 10_000;

impl EtcdBackend {
    /// Every key under `prefix`, listed `page` keys at a time at one
    /// revision.
    pub async fn keys_paged(&self, prefix: &str, page: i64) -> Result<Vec<String>> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut keys = Vec::new();
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_keys_only()
                .with_limit(page);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let resp = self
                .0
                .kv_client()
                .get(from.clone(), Some(options))
                .await
                .map_err(etcd("listing owned keys"))?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            }
            keys.extend(
                resp.kvs()
                    .iter()
                    .filter_map(|kv| kv.key_str().ok().map(str::to_owned)),
            );
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(keys),
            }
        }
    }
}

impl SyncBackend for EtcdBackend {
    async fn grant(&self, ttl: i64, lost: Arc<AtomicBool>) -> Result<(i64, tokio::task::JoinHandle<()>)> {
        let mut leases = self.0.lease_client();
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

    async fn apply(&self, ops: Vec<Op>, lease: i64) -> Result<()> {
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(k.as_str(), v.clone(), Some(PutOptions::new().with_lease(lease))),
                None => TxnOp::delete(k.as_str(), None::<DeleteOptions>),
            })
            .collect();
        self.0
            .kv_client()
            .txn(Txn::new().and_then(txn_ops))
            .await
            .map_err(etcd("writing to etcd"))?;
        Ok(())
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.keys_paged(prefix, KEYS_PAGE).await
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        self.0
            .lease_client()
            .revoke(lease)
            .await
            .map_err(etcd("revoking lease"))?;
        Ok(())
    }
}

fn etcd(action: &'static str) -> impl Fn(etcd_client::Error) -> Error {
    move |source| Error::Etcd {
        action: action.into(),
        source,
    }
}

/// An in-memory store for unit tests: keys with their lease, the
/// transactions applied (in order), and leases that can be lost on demand.
#[derive(Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Memory>>,
    next_lease: Arc<AtomicI64>,
}

#[derive(Default)]
struct Memory {
    keys: BTreeMap<String, (Vec<u8>, i64)>,
    transactions: Vec<Vec<Op>>,
    leases: BTreeMap<i64, Arc<AtomicBool>>,
    failing: bool,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every key and value.
    pub fn dump(&self) -> BTreeMap<String, Vec<u8>> {
        let inner = self.lock();
        inner
            .keys
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// The transactions applied so far, oldest first.
    pub fn transactions(&self) -> Vec<Vec<Op>> {
        self.lock().transactions.clone()
    }

    /// Forgets the transaction log.
    pub fn clear_transactions(&self) {
        self.lock().transactions.clear();
    }

    /// Loses every lease, as an etcd restart does: their keys vanish and
    /// their holders are told.
    pub fn lose_leases(&self) {
        let mut inner = self.lock();
        let leases: BTreeSet<i64> = inner.leases.keys().copied().collect();
        inner.keys.retain(|_, (_, lease)| !leases.contains(lease));
        for (_, lost) in std::mem::take(&mut inner.leases) {
            lost.store(true, Ordering::Relaxed);
        }
    }

    /// Makes every following write fail (`true`) or succeed again.
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Writes `key` outside any lease, as an earlier run's leftover.
    pub fn put_leftover(&self, key: &str, value: &[u8]) {
        self.lock().keys.insert(key.to_owned(), (value.to_vec(), 0));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SyncBackend for MemoryBackend {
    async fn grant(&self, _ttl: i64, lost: Arc<AtomicBool>) -> Result<(i64, tokio::task::JoinHandle<()>)> {
        let lease = self.next_lease.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().leases.insert(lease, lost);
        Ok((lease, tokio::spawn(async {})))
    }

    async fn apply(&self, ops: Vec<Op>, lease: i64) -> Result<()> {
        let mut inner = self.lock();
        if inner.failing {
            return Err(Error::Backend("the in-memory store is set to fail".into()));
        }
        for (k, v) in &ops {
            match v {
                Some(v) => {
                    inner.keys.insert(k.clone(), (v.clone(), lease));
                }
                None => {
                    inner.keys.remove(k);
                }
            }
        }
        inner.transactions.push(ops);
        Ok(())
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn revoke(&self, lease: i64) -> Result<()> {
        let mut inner = self.lock();
        inner.keys.retain(|_, (_, l)| *l != lease);
        inner.leases.remove(&lease);
        Ok(())
    }
}
