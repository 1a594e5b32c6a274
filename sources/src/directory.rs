//! The directory source: Kubernetes objects as YAML files (multi-document,
//! any `*.yaml` / `*.yml` below a directory). The [`ClusterState`] is kept
//! up to date file by file: [`DirectorySource::reload`] re-reads the files
//! inotify reported ([`watch_changes`]); [`DirectorySource::poll`] rescans
//! everything as a safety net. Pods and Nodes are kept as [`PodInfo`] /
//! [`NodeInfo`], only what the export reads.
//!
//! A file that fails to parse keeps its last good contents and is reported
//! in [`DirectorySource::errors`]; an object of a kind Knit does not read is
//! skipped and counted. If two files define the same object, the one read
//! last wins, and removing either removes the object.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::{
    CiliumPolicy, ClusterState, EndpointSliceInfo, Interner, NodeInfo, PodInfo, ServiceExportInfo,
    ServiceInfo, object_key,
};

/// What one file contributed.
#[derive(Clone, Debug, Default)]
struct FileEntry {
    stamp: Option<(u64, SystemTime, u64)>,
    keys: ObjectKeys,
}

/// The objects one file contributed, in one string (`<slot><key>\n` per
/// object): a file of a thousand pods would otherwise keep a thousand
/// small allocations beside the pods themselves.
#[derive(Clone, Debug, Default)]
struct ObjectKeys(String);

impl ObjectKeys {
    fn push(&mut self, (slot, key): (Slot, String)) {
        self.0.push(char::from(b'a' + slot as u8));
        self.0.push_str(&key);
        self.0.push('\n');
    }

    fn iter(&self) -> impl Iterator<Item = (Slot, &str)> {
        self.0.lines().filter_map(|line| {
            let slot = *SLOTS.get(usize::from(line.as_bytes().first()?.checked_sub(b'a')?))?;
            Some((slot, &line[1..]))
        })
    }
}

/// Every [`Slot`], in declaration order.
const SLOTS: [Slot; 9] = [
    Slot::Node,
    Slot::Pod,
    Slot::Namespace,
    Slot::Service,
    Slot::EndpointSlice,
    Slot::NetworkPolicy,
    Slot::Policy,
    Slot::ServiceExport,
    Slot::CiliumPolicy,
];

/// Which map of the state an object lives in (names cannot hold a newline).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Node,
    Pod,
    Namespace,
    Service,
    EndpointSlice,
    NetworkPolicy,
    Policy,
    ServiceExport,
    CiliumPolicy,
}

#[derive(Clone, Debug)]
enum Object {
    Node(Box<NodeInfo>),
    Pod(Box<PodInfo>),
    Namespace(Box<k8s_openapi::api::core::v1::Namespace>),
    Service(Box<ServiceInfo>),
    EndpointSlice(Box<EndpointSliceInfo>),
    NetworkPolicy(Box<k8s_openapi::api::networking::v1::NetworkPolicy>),
    Policy(Box<knit_crds::GlobalServicePolicy>),
    ServiceExport(Box<ServiceExportInfo>),
    CiliumPolicy(Box<(String, CiliumPolicy)>),
}

/// Reads a directory of manifests into a [`ClusterState`].
pub struct DirectorySource {
    root: PathBuf,
    poll_every: std::time::Duration,
    changes: Option<(
        notify::RecommendedWatcher,
        tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
    )>,
    polled: bool,
    files: BTreeMap<PathBuf, FileEntry>,
    state: ClusterState,
    interner: Interner,
    /// Files that failed to parse, with the problem (kept until fixed).
    pub errors: BTreeMap<PathBuf, String>,
    /// Documents of kinds Knit does not read.
    pub skipped: u64,
}

impl DirectorySource {
    /// A source over `root` (nothing read yet), rescanned every `poll_every`
    /// and, where inotify works, as soon as a file changes.
    pub fn new(root: impl Into<PathBuf>, poll_every: std::time::Duration) -> Self {
        let root = root.into();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let changes = match watch_changes(&root, tx) {
            Ok(watcher) => Some((watcher, rx)),
            Err(e) => {
                tracing::warn!(dir = %root.display(), error = %e, "no inotify on the source directory; polling only");
                None
            }
        };
        Self {
            root,
            poll_every,
            changes,
            polled: false,
            files: BTreeMap::new(),
            state: ClusterState::default(),
            interner: Interner::default(),
            errors: BTreeMap::new(),
            skipped: 0,
        }
    }

    /// The directory read.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Rescans the whole directory; returns whether anything changed.
    pub fn poll(&mut self) -> bool {
        let mut found = BTreeSet::new();
        collect_yaml(&self.root, &mut found);
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !found.contains(*p))
            .cloned()
            .collect();
        let mut changed = !gone.is_empty();
        for path in gone {
            self.forget(&path);
        }
        for path in found {
            changed |= self.read(&path);
        }
        self.interner.prune();
        changed
    }

    /// Re-reads the given paths (files created, changed or removed);
    /// returns whether anything changed.
    pub fn reload(&mut self, paths: &[PathBuf]) -> bool {
        let mut changed = false;
        for path in paths {
            if path.is_dir() {
                changed |= self.poll();
            } else if is_manifest(path) {
                if path.exists() {
                    changed |= self.read(path);
                } else if self.files.contains_key(path) {
                    self.forget(path);
                    changed = true;
                }
            }
        }
        changed
    }

    fn read(&mut self, path: &Path) -> bool {
        let stamp = stamp(path);
        if stamp.is_some() && self.files.get(path).is_some_and(|f| f.stamp == stamp) {
            return false;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            return false;
        };
        match parse_documents(&text, &mut self.skipped, &mut self.interner) {
            Ok(objects) => {
                self.errors.remove(path);
                self.forget(path);
                let mut keys = ObjectKeys::default();
                for object in objects {
                    keys.push(insert(&mut self.state, object));
                }
                keys.0.shrink_to_fit();
                self.files.insert(path.to_owned(), FileEntry { stamp, keys });
                true
            }
            Err(problem) => {
                if self.errors.insert(path.to_owned(), problem.clone()).as_ref() != Some(&problem) {
                    tracing::warn!(file = %path.display(), %problem, "keeping the last good contents of a manifest that does not parse");
                }
                // Remember the stamp so a broken file is not re-read every poll.
                self.files.entry(path.to_owned()).or_default().stamp = stamp;
                false
            }
        }
    }

    fn forget(&mut self, path: &Path) {
        let Some(entry) = self.files.remove(path) else {
            return;
        };
        for (slot, key) in entry.keys.iter() {
            let s = &mut self.state;
            match slot {
                Slot::Node => drop(s.nodes.remove(key)),
                Slot::Pod => drop(s.pods.remove(key)),
                Slot::Namespace => drop(s.namespaces.remove(key)),
                Slot::Service => drop(s.services.remove(key)),
                Slot::EndpointSlice => drop(s.endpoint_slices.remove(key)),
                Slot::NetworkPolicy => drop(s.network_policies.remove(key)),
                Slot::Policy => drop(s.policies.remove(key)),
                Slot::ServiceExport => drop(s.service_exports.remove(key)),
                Slot::CiliumPolicy => drop(s.cilium_policies.remove(key)),
            }
        }
    }
}

impl crate::Source for DirectorySource {
    async fn next_change(&mut self) -> bool {
        if !self.polled {
            self.polled = true;
            return self.poll();
        }
        let poll_every = self.poll_every;
        let paths = match &mut self.changes {
            Some((_, rx)) => tokio::select! {
                Some(path) = rx.recv() => {
                    let mut paths = vec![path];
                    while let Ok(p) = rx.try_recv() {
                        paths.push(p);
                    }
                    Some(paths)
                }
                () = tokio::time::sleep(poll_every) => None,
            },
            None => {
                tokio::time::sleep(poll_every).await;
                None
            }
        };
        match paths {
            Some(paths) => self.reload(&paths),
            None => self.poll(),
        }
    }

    fn state(&self) -> &ClusterState {
        &self.state
    }

    fn is_ready(&self) -> bool {
        self.polled
    }
}

fn insert(state: &mut ClusterState, object: Object) -> (Slot, String) {
    macro_rules! put {
        ($map:ident, $slot:expr, $obj:expr) => {{
            let o = *$obj;
            let key = object_key(
                o.metadata.namespace.as_deref(),
                o.metadata.name.as_deref().unwrap_or_default(),
            );
            state.$map.insert(key.clone(), o);
            ($slot, key)
        }};
    }
    match object {
        Object::Node(o) => {
            let key = o.name.clone();
            state.nodes.insert(key.clone(), *o);
            (Slot::Node, key)
        }
        Object::Pod(o) => {
            let key = object_key(Some(&o.namespace), &o.name);
            state.pods.insert(key.clone(), *o);
            (Slot::Pod, key)
        }
        Object::Namespace(o) => put!(namespaces, Slot::Namespace, o),
        Object::Service(o) => {
            let key = object_key(Some(&o.namespace), &o.name);
            state.services.insert(key.clone(), *o);
            (Slot::Service, key)
        }
        Object::EndpointSlice(o) => {
            let key = object_key(Some(&o.namespace), &o.name);
            state.endpoint_slices.insert(key.clone(), *o);
            (Slot::EndpointSlice, key)
        }
        Object::NetworkPolicy(o) => put!(network_policies, Slot::NetworkPolicy, o),
        Object::Policy(o) => put!(policies, Slot::Policy, o),
        Object::ServiceExport(o) => {
            let key = object_key(Some(&o.namespace), &o.name);
            state.service_exports.insert(key.clone(), *o);
            (Slot::ServiceExport, key)
        }
        Object::CiliumPolicy(o) => {
            let (key, policy) = *o;
            state.cilium_policies.insert(key.clone(), policy);
            (Slot::CiliumPolicy, key)
        }
    }
}

fn parse_documents(text: &str, skipped: &mut u64, interner: &mut Interner) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    // One document at a time: a whole cluster's manifests as generic values
    // at once would take several times the memory of what is kept.
    let mut reader = text.as_bytes();
    let documents = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut reader, large_manifests());
    for (i, value) in documents.enumerate() {
        let value = value.map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let parsed = match kind.as_str() {
            "Node" => serde_json::from_value::<Node>(value).map(|o| Object::Node(Box::new(o.into()))),
            "Pod" => serde_json::from_value::<Pod>(value)
                .map(|o| Object::Pod(Box::new(PodInfo::from_pod(o, interner)))),
            "Namespace" => serde_json::from_value(value).map(|o| Object::Namespace(Box::new(o))),
            "Service" => {
                serde_json::from_value::<Service>(value).map(|o| Object::Service(Box::new(o.into())))
            }
            "EndpointSlice" => serde_json::from_value::<EndpointSlice>(value)
                .map(|o| Object::EndpointSlice(Box::new(o.into()))),
            "NetworkPolicy" => serde_json::from_value(value).map(|o| Object::NetworkPolicy(Box::new(o))),
            "GlobalServicePolicy" => serde_json::from_value(value).map(|o| Object::Policy(Box::new(o))),
            "CiliumNetworkPolicy" | "CiliumClusterwideNetworkPolicy" => {
                Ok(Object::CiliumPolicy(Box::new(CiliumPolicy::from_object(value))))
            }
            "ServiceExport" => serde_json::from_value(value.get("metadata").cloned().unwrap_or_default())
                .map(|m| Object::ServiceExport(Box::new(ServiceExportInfo::from_metadata(m)))),
            _ => {
                *skipped += 1;
                continue;
            }
        };
        out.push(parsed.map_err(|e| format!("document {} ({kind}): {e}", i + 1))?);
    }
    Ok(out)
}

/// Parser limits for a manifest file: a site's whole cluster can be one
/// file of tens of thousands of documents, far beyond the parser's defaults
/// (1,024 documents), which guard against hostile input; these files are
/// the operator's own.
fn large_manifests() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 10_000_000;
    budget.max_nodes = 500_000_000;
    budget.max_events = 1_000_000_000;
    budget.max_total_scalar_bytes = 1 << 32;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

fn is_manifest(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn collect_yaml(dir: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if is_manifest(&path) {
            out.insert(path);
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Sends the paths of whatever changes below `root` on `tx` (inotify).
/// Keep the returned watcher alive for as long as notifications are wanted.
pub fn watch_changes(
    root: &Path,
    tx: tokio::sync::mpsc::UnboundedSender<PathBuf>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::event::ModifyKind;
    use notify::{EventKind, Watcher as _};
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) raise access events; only changes matter.
        if let Ok(event) = event
            && matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            )
            && !matches!(event.kind, EventKind::Modify(ModifyKind::Metadata(_)))
        {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}
