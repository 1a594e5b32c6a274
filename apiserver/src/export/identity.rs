//! Security identities: a set of labels ↦ a 24-bit number with the cluster
//! ID in the high bits ([`knit_kvstore::records::identity`]).
//!
//! Allocation is deterministic given the previous allocations: the lowest
//! free local number. Restoring the published identities on start keeps
//! numbers stable across restarts; [`IdentityAllocator::retain_used`]
//! releases labels no endpoint uses any more.

use std::collections::{BTreeMap, BTreeSet};

use knit_kvstore::records::{MAX_LOCAL_IDENTITY, identity};

/// Labels of an identity, sorted.
pub type Labels = BTreeMap<String, String>;

/// Allocates identities of one cluster.
#[derive(Clone, Debug)]
pub struct IdentityAllocator {
    cluster_id: u16,
    by_labels: BTreeMap<Labels, u32>,
    used: BTreeSet<u32>,
}

impl IdentityAllocator {
    /// An empty allocator for `cluster_id`.
    pub fn new(cluster_id: u16) -> Self {
        Self {
            cluster_id,
            by_labels: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    /// The numbering of `allocations` (an identity store's).
    pub fn from_allocations(
        cluster_id: u16,
        allocations: &crate::export::identity_store::Allocations,
    ) -> Self {
        let mut ids = Self::new(cluster_id);
        for (id, stored) in allocations {
            ids.restore(*id, stored.labels.clone());
        }
        ids
    }

    /// Adopts an identity published earlier (ignored if outside this cluster's range).
    pub fn restore(&mut self, id: u32, labels: Labels) {
        if id >> knit_kvstore::records::LOCAL_IDENTITY_BITS == u32::from(self.cluster_id)
            && !self.used.contains(&id)
        {
            self.used.insert(id);
            self.by_labels.insert(labels, id);
        }
    }

    /// The identity of `labels`, allocating one if needed. `None` when the
    /// cluster's 32,767 identities are exhausted.
    pub fn allocate(&mut self, labels: &Labels) -> Option<u32> {
        if let Some(id) = self.by_labels.get(labels) {
            return Some(*id);
        }
        let id = (1..=MAX_LOCAL_IDENTITY)
            .map(|local| identity(self.cluster_id, local))
            .find(|id| !self.used.contains(id))?;
        self.used.insert(id);
        self.by_labels.insert(labels.clone(), id);
        Some(id)
    }

    /// Releases every identity not in `in_use`.
    pub fn retain_used(&mut self, in_use: &BTreeSet<u32>) {
        self.by_labels.retain(|_, id| in_use.contains(id));
        self.used.retain(|id| in_use.contains(id));
    }

    /// Every allocated identity with its labels.
    pub fn identities(&self) -> impl Iterator<Item = (u32, &Labels)> {
        self.by_labels.iter().map(|(l, id)| (*id, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(app: &str) -> Labels {
        Labels::from([("app".into(), app.into())])
    }

    #[test]
    fn same_labels_same_identity_with_the_cluster_id_on_top() {
        let mut a = IdentityAllocator::new(3);
        let web = a.allocate(&labels("web")).unwrap();
        assert_eq!(a.allocate(&labels("web")), Some(web));
        assert_eq!(web >> 15, 3);
        assert_ne!(a.allocate(&labels("db")), Some(web));
    }

    #[test]
    fn restored_identities_are_kept_and_released_ones_reused() {
        let mut a = IdentityAllocator::new(1);
        a.restore(identity(1, 5), labels("web"));
        a.restore(identity(2, 6), labels("foreign"));
        assert_eq!(a.allocate(&labels("web")), Some(identity(1, 5)));
        let db = a.allocate(&labels("db")).unwrap();
        assert_eq!(db, identity(1, 1));
        a.retain_used(&BTreeSet::from([identity(1, 5)]));
        assert_eq!(a.identities().count(), 1);
        assert_eq!(a.allocate(&labels("cache")), Some(identity(1, 1)));
    }
}
