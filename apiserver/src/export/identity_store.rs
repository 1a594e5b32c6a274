//! Where this cluster's identity numbers are kept, so that they outlive
//! the mesh apiserver's in-memory etcd and agree between apiserver
//! processes: a pod keeps its number across an empty restart, and every
//! writer numbers a label set the same way.
//!
//! Each export pass hands the label sets in use to [`IdentityStore::update`],
//! which reads the stored allocations, brings them in line with
//! [`reconcile`] (pure) and writes them back only when they changed, as one
//! atomic step: a ConfigMap replaced with the resourceVersion it was read
//! at (Kubernetes), or a file rewritten under an exclusive lock (sites
//! without Kubernetes, the local mesh). Two writers that race both end up
//! with the one allocation that landed. The pass then numbers pods from
//! the result.
//!
//! A label set no pod uses any more keeps its number for [`GC_GRACE`]
//! before it may be given to other labels, so a peer still holding the old
//! meaning has long seen the withdrawal.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};

use knit_kvstore::records::{MAX_LOCAL_IDENTITY, identity};

use crate::Error;
use crate::export::identity::Labels;

/// How long a number no pod uses stays reserved for its labels.
pub const GC_GRACE: Duration = Duration::from_secs(600);
/// The ConfigMap's key.
pub const CONFIGMAP_KEY: &str = "identities.json";

/// One stored allocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredIdentity {
    /// The label set.
    pub labels: Labels,
    /// When no pod used it any more (Unix seconds); none while used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unused_since: Option<i64>,
}

/// Every allocation of the cluster, by number.
pub type Allocations = BTreeMap<u32, StoredIdentity>;

/// Brings `allocs` in line with the label sets `in_use` at `now`: a label
/// set without a number gets its number in `preferred` when that is free
/// (what the local etcd published before the store existed), else the
/// lowest free one; a number no longer used is marked unused, one used
/// again unmarked, and one unused for longer than `grace` forgotten.
/// Numbers of other clusters in `preferred` are ignored. Returns whether
/// anything changed.
pub fn reconcile(
    allocs: &mut Allocations,
    in_use: &BTreeSet<Labels>,
    preferred: &BTreeMap<Labels, u32>,
    cluster_id: u16,
    now: i64,
    grace: Duration,
) -> bool {
    let before = allocs.clone();
    let numbered: BTreeSet<Labels> = allocs.values().map(|s| s.labels.clone()).collect();
    for stored in allocs.values_mut() {
        let used = in_use.contains(&stored.labels);
        match (used, stored.unused_since) {
            (true, Some(_)) => stored.unused_since = None,
            (false, None) => stored.unused_since = Some(now),
            _ => {}
        }
    }
    allocs.retain(|_, s| {
        s.unused_since
            .is_none_or(|since| now - since <= grace.as_secs() as i64)
    });
    let own = |id: u32| id >> knit_kvstore::records::LOCAL_IDENTITY_BITS == u32::from(cluster_id);
    let mut free = (1..=MAX_LOCAL_IDENTITY).map(|local| identity(cluster_id, local));
    for labels in in_use.iter().filter(|l| !numbered.contains(*l)) {
        let wanted = preferred
            .get(labels)
            .copied()
            .filter(|id| own(*id) && !allocs.contains_key(id));
        let Some(id) = wanted.or_else(|| free.find(|id| !allocs.contains_key(id))) else {
            break;
        };
        allocs.insert(
            id,
            StoredIdentity {
                labels: labels.clone(),
                unused_since: None,
            },
        );
    }
    *allocs != before
}

/// Where the allocations live.
pub enum IdentityStore {
    /// Nowhere: this process numbers on its own, starting from what the
    /// local etcd held (the behaviour before the store).
    Memory(Allocations),
    /// A JSON file, locked while it is read and rewritten.
    File(PathBuf),
    /// A ConfigMap, replaced with the resourceVersion it was read at.
    ConfigMap(Box<Api<ConfigMap>>, String),
}

/// What one update is asked to do.
pub struct Update<'a> {
    /// Label sets in use now.
    pub in_use: &'a BTreeSet<Labels>,
    /// Numbers to keep for label sets the store does not hold yet.
    pub preferred: &'a BTreeMap<Labels, u32>,
    /// This cluster's ID.
    pub cluster_id: u16,
    /// Now (Unix seconds).
    pub now: i64,
}

const ATTEMPTS: usize = 8;

impl IdentityStore {
    /// Reconciles the stored allocations with `update` and returns them.
    pub async fn update(&mut self, update: &Update<'_>) -> Result<Allocations, Error> {
        let apply = |allocs: &mut Allocations| {
            reconcile(
                allocs,
                update.in_use,
                update.preferred,
                update.cluster_id,
                update.now,
                GC_GRACE,
            )
        };
        match self {
            Self::Memory(allocs) => {
                apply(allocs);
                Ok(allocs.clone())
            }
            Self::File(path) => {
                let path = path.clone();
                let (in_use, preferred) = (update.in_use.clone(), update.preferred.clone());
                let (cluster_id, now) = (update.cluster_id, update.now);
                tokio::task::spawn_blocking(move || {
                    update_file(&path, |a| {
                        reconcile(a, &in_use, &preferred, cluster_id, now, GC_GRACE)
                    })
                })
                .await
                .map_err(|e| Error::IdentityStore {
                    action: "updating the identity file".into(),
                    source: e.into(),
                })?
            }
            Self::ConfigMap(api, name) => update_configmap(api, name, apply).await,
        }
    }
}

fn file_error<'a>(
    action: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::IdentityStore {
        action: format!("{action} {}", path.display()),
        source: source.into(),
    }
}

fn parse_error(source: serde_json::Error) -> Error {
    Error::IdentityStore {
        action: "reading the stored identities".into(),
        source: source.into(),
    }
}

/// Read, reconcile and (when changed) rewrite `path` under an exclusive
/// lock of `<path>.lock`; the rewrite is a rename, so a reader never sees
/// half a file.
fn update_file(
    path: &std::path::Path,
    apply: impl FnOnce(&mut Allocations) -> bool,
) -> Result<Allocations, Error> {
    let lock_path = path.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(file_error("opening", &lock_path))?;
    lock.lock().map_err(file_error("locking", &lock_path))?;
    let mut allocs: Allocations = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(parse_error)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::new(),
        Err(e) => return Err(file_error("reading", path)(e)),
    };
    if apply(&mut allocs) {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&allocs).map_err(parse_error)?;
        std::fs::write(&tmp, bytes).map_err(file_error("writing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(file_error("renaming into", path))?;
    }
    Ok(allocs)
}

fn kube_error<'a>(action: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::IdentityStore {
        action: format!("{action} ConfigMap {name}"),
        source: source.into(),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Read, reconcile and (when changed) write ConfigMap `name`: created when
/// missing, else replaced at the resourceVersion read; a conflict (another
/// writer was first) starts over from a fresh read.
async fn update_configmap(
    api: &Api<ConfigMap>,
    name: &str,
    apply: impl Fn(&mut Allocations) -> bool,
) -> Result<Allocations, Error> {
    for _ in 0..ATTEMPTS {
        let current = api.get_opt(name).await.map_err(kube_error("reading", name))?;
        let mut allocs: Allocations = match current
            .as_ref()
            .and_then(|cm| cm.data.as_ref()?.get(CONFIGMAP_KEY))
        {
            Some(text) => serde_json::from_str(text).map_err(parse_error)?,
            None => Allocations::new(),
        };
        if !apply(&mut allocs) && current.is_some() {
            return Ok(allocs);
        }
        let text = serde_json::to_string(&allocs).map_err(parse_error)?;
        let data = BTreeMap::from([(CONFIGMAP_KEY.to_owned(), text)]);
        let written = match current {
            Some(mut cm) => {
                cm.data = Some(data);
                api.replace(name, &PostParams::default(), &cm).await
            }
            None => {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/part-of".to_owned(),
                            "knit".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(data),
                    ..ConfigMap::default()
                };
                api.create(&PostParams::default(), &cm).await
            }
        };
        match written {
            Ok(_) => return Ok(allocs),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(kube_error("writing", name)(e)),
        }
    }
    Err(Error::IdentityStore {
        action: format!("writing ConfigMap {name}"),
        source: format!("other writers changed it under each of {ATTEMPTS} attempts").into(),
    })
}

#[cfg(test)]
mod tests;
