//! One lease for many SyncStores: every peer mirror of a KVStoreMesh
//! writes under it, and one keepalive stream keeps it (as a Cilium etcd
//! client's session lease). With a lease per mirror, 509 simulated peers
//! kept 509 keepalive streams; under the load of their initial sync at a
//! 10 s TTL keepalives came late, leases expired, and each mirror wrote
//! everything again, which made the load worse.
//!
//! When the lease is lost every store writing under it is told (its
//! `lost` flag, as with a lease of its own); the first to ask for a new one
//! grants it, the others get the same one. No store revokes it: the keys
//! of one mirror are deleted by key (the mesh's `delete_mirror`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use etcd_client::Client;

use crate::Result;
use crate::backend::{EtcdBackend, Op, SyncBackend, etcd, keep_alive};

/// A [`SyncBackend`] writing to etcd under a lease it shares with its
/// clones.
#[derive(Clone)]
pub struct SharedLeaseBackend {
    etcd: EtcdBackend,
    current: Arc<tokio::sync::Mutex<Option<Lease>>>,
}

/// The lease being shared.
struct Lease {
    id: i64,
    ttl: i64,
    gone: Arc<AtomicBool>,
    /// The `lost` flags of the stores writing under it.
    holders: Arc<Mutex<Vec<Weak<AtomicBool>>>>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl SharedLeaseBackend {
    /// A backend writing through `client`; its clones share its lease.
    pub fn new(client: Client) -> Self {
        Self {
            etcd: EtcdBackend(client),
            current: Arc::default(),
        }
    }
}

impl SyncBackend for SharedLeaseBackend {
    async fn grant(&self, ttl: i64, lost: Arc<AtomicBool>) -> Result<(i64, tokio::task::JoinHandle<()>)> {
        let mut current = self.current.lock().await;
        let reusable = current
            .as_ref()
            .is_some_and(|l| l.ttl == ttl && !l.gone.load(Ordering::Relaxed));
        if !reusable {
            let id = self
                .etcd
                .0
                .lease_client()
                .grant(ttl, None)
                .await
                .map_err(etcd("granting the shared lease"))?
                .id();
            let gone = Arc::new(AtomicBool::new(false));
            let holders: Arc<Mutex<Vec<Weak<AtomicBool>>>> = Arc::default();
            let keeper = keep_alive(self.etcd.0.clone(), id, ttl, {
                let (gone, holders) = (gone.clone(), holders.clone());
                move || {
                    gone.store(true, Ordering::Relaxed);
                    for holder in holders.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
                        if let Some(flag) = holder.upgrade() {
                            flag.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
            *current = Some(Lease {
                id,
                ttl,
                gone,
                holders,
                keeper,
            });
        }
        let lease = current.as_ref().expect("a lease was just granted");
        {
            let mut holders = lease.holders.lock().unwrap_or_else(|e| e.into_inner());
            holders.retain(|h| h.strong_count() > 0);
            holders.push(Arc::downgrade(&lost));
        }
        // Lost between the check and the registration: tell this holder too.
        if lease.gone.load(Ordering::Relaxed) {
            lost.store(true, Ordering::Relaxed);
        }
        // Aborting a holder's keeper must not stop the others' lease.
        Ok((lease.id, tokio::spawn(async {})))
    }

    async fn apply(&self, ops: Vec<Op>, lease: i64) -> Result<()> {
        self.etcd.apply(ops, lease).await
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.etcd.keys(prefix).await
    }

    /// Does nothing: the lease holds other stores' keys too.
    async fn revoke(&self, _lease: i64) -> Result<()> {
        Ok(())
    }
}
