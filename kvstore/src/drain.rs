//! When a reader may forget keys its writer stopped publishing.
//!
//! After a reconnect, the reader lists the prefix again; a key it knew that
//! the list lacks is *stale*. It may be gone for good, or its writer may
//! not have written it again yet: an etcd that restarted empty (the mesh
//! apiserver's etcd lives in memory) holds nothing until the apiserver has
//! exported again. Forgetting at once would withdraw every route and
//! backend for that long (Cilium's #26462).
//!
//! The rule: a stale record of kind K below a cluster's or a mirror's
//! prefix is forgotten only once that prefix's canary `synced/K` is back,
//! in the list or later in the watch; writers put canaries after every
//! record of their kind ([`crate::sync_store`]). A stale `config` waits for
//! every kind's canary. A stale `local/services/...` key (written by the
//! local exporter with its own cluster's services) waits for the services
//! canary of a cluster's own prefix (a local etcd holds exactly one). Keys
//! with no writer canary (heartbeat, mesh reports) are forgotten when the
//! list completes. A held key that comes back, or is deleted for real,
//! stops being held.
//!
//! The same holds while connected: a writer never deletes its canaries, so
//! a revision that deletes a canary is a writer whose lease expired (a
//! mesh apiserver down longer than its lease, its etcd alive), and etcd
//! deletes every key of that lease in that one revision. The keys of that
//! revision below the canary's prefix are held like stale keys until the
//! canary is written again ([`StaleKeys::on_deleted_together`]); the
//! canary itself is never reported deleted. A writer that withdraws a
//! prefix on purpose deletes its records first and its canaries after, in
//! a later revision.

use std::collections::{BTreeMap, BTreeSet};

use crate::keys::{Key, Kind, Scope};

/// What a held key waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Awaits {
    /// The canary of one kind below a prefix.
    Canary(Scope, Kind),
    /// Every canary below a prefix.
    AllCanaries(Scope),
    /// The services canary of a cluster's own prefix.
    OwnServices,
}

/// Stale keys held until their writer's canary says it is complete again.
#[derive(Debug, Default)]
pub struct StaleKeys {
    held: BTreeMap<String, Awaits>,
    synced: BTreeSet<(Scope, Kind)>,
}

impl StaleKeys {
    /// After a complete list: `stale` are the keys known before that the
    /// list lacked, `listed` every key the list returned. Returns the stale
    /// keys to forget now and holds the others.
    pub fn after_list<'a>(
        &mut self,
        stale: impl IntoIterator<Item = String>,
        listed: impl IntoIterator<Item = &'a str>,
    ) -> Vec<String> {
        self.held.clear();
        self.synced = listed
            .into_iter()
            .filter_map(Key::parse)
            .filter_map(|k| k.canary().map(|(s, kind)| (s.clone(), kind)))
            .collect();
        let mut forget = Vec::new();
        for key in stale {
            match awaits(&key) {
                Some(a) if !self.satisfied(&a) => {
                    self.held.insert(key, a);
                }
                _ => forget.push(key),
            }
        }
        forget
    }

    /// `key` was written. It is no longer stale; if it is a canary, the
    /// held keys it releases are returned (forget them before reporting the
    /// canary, so a reader that sees the canary has seen the deletions).
    pub fn on_put(&mut self, key: &str) -> Vec<String> {
        self.held.remove(key);
        let Some(parsed) = Key::parse(key) else {
            return Vec::new();
        };
        let Some((scope, kind)) = parsed.canary() else {
            return Vec::new();
        };
        self.synced.insert((scope.clone(), kind));
        let released: Vec<String> = self
            .held
            .iter()
            .filter(|(_, a)| self.satisfied(a))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &released {
            self.held.remove(k);
        }
        released
    }

    /// `key` was deleted for real: no longer held.
    pub fn on_delete(&mut self, key: &str) {
        self.held.remove(key);
    }

    /// `keys` were deleted in one revision. If canaries are among them (a
    /// writer's lease expired), the keys that wait for those canaries are
    /// held and the canaries are neither forgotten nor reported; the rest
    /// are returned, to forget now.
    pub fn on_deleted_together(&mut self, keys: Vec<String>) -> Vec<String> {
        let lost: BTreeSet<(Scope, Kind)> = keys
            .iter()
            .filter_map(|k| Key::parse(k))
            .filter_map(|k| k.canary().map(|(s, kind)| (s.clone(), kind)))
            .collect();
        if lost.is_empty() {
            for key in &keys {
                self.held.remove(key);
            }
            return keys;
        }
        for canary in &lost {
            self.synced.remove(canary);
        }
        let mut forget = Vec::new();
        for key in keys {
            match awaits(&key) {
                Some(a) if !self.satisfied(&a) => {
                    self.held.insert(key, a);
                }
                _ => {
                    self.held.remove(&key);
                    forget.push(key);
                }
            }
        }
        forget
    }

    /// Keys held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn satisfied(&self, awaits: &Awaits) -> bool {
        match awaits {
            Awaits::Canary(scope, kind) => self.synced.contains(&(scope.clone(), *kind)),
            Awaits::AllCanaries(scope) => Kind::ALL
                .iter()
                .all(|k| self.synced.contains(&(scope.clone(), *k))),
            Awaits::OwnServices => self
                .synced
                .iter()
                .any(|(scope, kind)| matches!(scope, Scope::Cluster(_)) && *kind == Kind::Services),
        }
    }
}

fn awaits(key: &str) -> Option<Awaits> {
    match Key::parse(key)? {
        Key::Scoped(scope, rel) => Some(match rel.kind() {
            Some(kind) => Awaits::Canary(scope, kind),
            None => Awaits::AllCanaries(scope),
        }),
        Key::LocalService(_) => Some(Awaits::OwnServices),
        Key::Heartbeat | Key::MeshStatus(_) | Key::AgentStatus(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "knit/v1/cache/b/endpoints/10.2.1.5";
    const SVC: &str = "knit/v1/cache/b/services/shop/web";
    const CONFIG: &str = "knit/v1/cache/b/config";

    fn stale() -> Vec<String> {
        [EP, SVC, CONFIG, "knit/v1/mesh-status/b", "knit/v1/heartbeat"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn an_empty_relist_forgets_nothing_until_each_kind_is_synced_again() {
        let mut s = StaleKeys::default();
        let forget = s.after_list(stale(), []);
        assert_eq!(forget, ["knit/v1/mesh-status/b", "knit/v1/heartbeat"]);
        assert_eq!(s.held(), 3);

        // The writer re-exports: a record comes back, other kinds' canaries
        // release only their own kind.
        assert!(s.on_put(SVC).is_empty());
        assert!(s.on_put("knit/v1/cache/b/synced/nodes").is_empty());
        assert!(
            s.on_put("knit/v1/clusters/b/synced/endpoints").is_empty(),
            "another prefix's canary releases nothing here"
        );
        assert_eq!(s.on_put("knit/v1/cache/b/synced/endpoints"), [EP]);
        assert_eq!(s.held(), 1, "config waits for every kind");
        assert!(s.on_put("knit/v1/cache/b/synced/identities").is_empty());
        assert_eq!(s.on_put("knit/v1/cache/b/synced/services"), [CONFIG]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn local_services_wait_for_the_own_clusters_services_canary() {
        let local = "knit/v1/local/services/shop/web".to_owned();
        let mut s = StaleKeys::default();
        assert!(s.after_list(vec![local.clone()], []).is_empty());
        assert!(
            s.on_put("knit/v1/cache/b/synced/services").is_empty(),
            "a mirror's canary is not ours"
        );
        assert_eq!(s.on_put("knit/v1/clusters/a/synced/services"), [local]);
    }

    #[test]
    fn a_relist_with_the_canaries_forgets_at_once() {
        let mut s = StaleKeys::default();
        let listed = [
            "knit/v1/cache/b/synced/endpoints",
            "knit/v1/cache/b/synced/services",
        ];
        let forget = s.after_list(stale(), listed);
        assert!(forget.contains(&EP.to_owned()) && forget.contains(&SVC.to_owned()));
        assert!(
            !forget.contains(&CONFIG.to_owned()),
            "nodes and identities are not synced"
        );
        assert_eq!(s.held(), 1);
    }

    #[test]
    fn a_lost_lease_holds_the_writers_keys_until_its_canary_is_back() {
        let mut s = StaleKeys::default();
        s.after_list(
            Vec::new(),
            [
                "knit/v1/cache/b/synced/endpoints",
                "knit/v1/cache/b/synced/services",
                "knit/v1/cache/c/synced/endpoints",
            ],
        );
        let other = "knit/v1/cache/c/endpoints/10.3.1.5".to_owned();
        // An ordinary deletion is forgotten at once.
        assert_eq!(s.on_deleted_together(vec![other.clone()]), vec![other.clone()]);
        // b's lease expires: every key of it goes in one revision, its
        // canaries among them. Nothing of b is forgotten; c is unaffected.
        let expired = [
            EP,
            SVC,
            "knit/v1/cache/b/synced/endpoints",
            "knit/v1/cache/b/synced/services",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(s.on_deleted_together(expired), Vec::<String>::new());
        assert_eq!(s.held(), 4, "the records and the canaries wait");
        assert_eq!(
            s.on_deleted_together(vec![other.clone()]),
            [other],
            "c's deletions are still real"
        );
        // b is back: it writes its service again, then its canaries; the
        // endpoint it no longer has is forgotten before its canary.
        assert!(s.on_put(SVC).is_empty());
        assert!(s.on_put("knit/v1/cache/b/synced/services").is_empty());
        assert_eq!(s.on_put("knit/v1/cache/b/synced/endpoints"), [EP]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_withdrawal_deletes_records_before_canaries_and_is_forgotten() {
        let mut s = StaleKeys::default();
        s.after_list(Vec::new(), ["knit/v1/cache/b/synced/endpoints"]);
        assert_eq!(s.on_deleted_together(vec![EP.to_owned()]), [EP]);
        assert_eq!(
            s.on_deleted_together(vec!["knit/v1/cache/b/synced/endpoints".to_owned()]),
            Vec::<String>::new(),
            "a canary is never reported deleted"
        );
    }

    #[test]
    fn a_held_key_deleted_for_real_or_relisted_is_no_longer_held() {
        let mut s = StaleKeys::default();
        s.after_list(stale(), []);
        s.on_delete(EP);
        s.on_put(SVC);
        assert_eq!(s.held(), 1);
        assert_eq!(
            s.after_list(vec![EP.to_owned()], []),
            Vec::<String>::new(),
            "a new relist starts over"
        );
        assert_eq!(s.held(), 1);
    }
}
