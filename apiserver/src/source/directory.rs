//! The directory source: Kubernetes objects as YAML files (multi-document,
//! any `*.yaml` / `*.yml` below a directory). [`DirectorySource::poll`]
//! rescans; [`watch_changes`] wakes the caller through inotify as soon as
//! anything below the directory changes, so polling is only a safety net.
//!
//! Only files whose size, modification time or inode changed are parsed
//! again. A file that fails to parse keeps its last good contents and is
//! counted; an object of a kind Knit does not read is skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

use super::{ClusterState, object_key};

/// One parsed file.
#[derive(Clone, Debug, Default)]
struct FileObjects {
    stamp: Option<(u64, SystemTime, u64)>,
    objects: Vec<Object>,
}

#[derive(Clone, Debug)]
enum Object {
    Node(Box<k8s_openapi::api::core::v1::Node>),
    Pod(Box<k8s_openapi::api::core::v1::Pod>),
    Namespace(Box<k8s_openapi::api::core::v1::Namespace>),
    Service(Box<k8s_openapi::api::core::v1::Service>),
    EndpointSlice(Box<k8s_openapi::api::discovery::v1::EndpointSlice>),
    NetworkPolicy(Box<k8s_openapi::api::networking::v1::NetworkPolicy>),
    Policy(Box<knit_crds::GlobalServicePolicy>),
}

/// Reads a directory of manifests into a [`ClusterState`].
#[derive(Debug)]
pub struct DirectorySource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileObjects>,
    /// Files that failed to parse, with the problem (kept until fixed).
    pub errors: BTreeMap<PathBuf, String>,
    /// Documents of kinds Knit does not read.
    pub skipped: u64,
}

impl DirectorySource {
    /// A source over `root` (nothing read yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            errors: BTreeMap::new(),
            skipped: 0,
        }
    }

    /// The directory read.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Rescans the directory; returns whether anything changed.
    pub fn poll(&mut self) -> bool {
        let mut found = Vec::new();
        collect_yaml(&self.root, &mut found);
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| found.contains(p));
        changed |= self.files.len() != before;
        for path in found {
            let stamp = stamp(&path);
            if stamp.is_some() && self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            match parse_documents(&text, &mut self.skipped) {
                Ok(objects) => {
                    self.errors.remove(&path);
                    self.files.insert(path, FileObjects { stamp, objects });
                    changed = true;
                }
                Err(problem) => {
                    if self.errors.insert(path.clone(), problem.clone()).as_ref() != Some(&problem) {
                        tracing::warn!(file = %path.display(), %problem, "keeping the last good contents of a manifest that does not parse");
                    }
                    // Remember the stamp so a broken file is not re-read every poll.
                    if let Some(f) = self.files.get_mut(&path) {
                        f.stamp = stamp;
                    } else {
                        self.files.insert(
                            path,
                            FileObjects {
                                stamp,
                                objects: Vec::new(),
                            },
                        );
                    }
                }
            }
        }
        changed
    }

    /// The current state (later files win on duplicate keys).
    pub fn state(&self) -> ClusterState {
        let mut state = ClusterState::default();
        for file in self.files.values() {
            for object in &file.objects {
                insert(&mut state, object.clone());
            }
        }
        state
    }
}

fn insert(state: &mut ClusterState, object: Object) {
    macro_rules! put {
        ($map:ident, $obj:expr) => {{
            let o = *$obj;
            let key = object_key(
                o.metadata.namespace.as_deref(),
                o.metadata.name.as_deref().unwrap_or_default(),
            );
            state.$map.insert(key, o);
        }};
    }
    match object {
        Object::Node(o) => put!(nodes, o),
        Object::Pod(o) => put!(pods, o),
        Object::Namespace(o) => put!(namespaces, o),
        Object::Service(o) => put!(services, o),
        Object::EndpointSlice(o) => put!(endpoint_slices, o),
        Object::NetworkPolicy(o) => put!(network_policies, o),
        Object::Policy(o) => put!(policies, o),
    }
}

fn parse_documents(text: &str, skipped: &mut u64) -> Result<Vec<Object>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_owned();
        let parsed = match kind.as_str() {
            "Node" => serde_yaml::from_value(value).map(|o| Object::Node(Box::new(o))),
            "Pod" => serde_yaml::from_value(value).map(|o| Object::Pod(Box::new(o))),
            "Namespace" => serde_yaml::from_value(value).map(|o| Object::Namespace(Box::new(o))),
            "Service" => serde_yaml::from_value(value).map(|o| Object::Service(Box::new(o))),
            "EndpointSlice" => serde_yaml::from_value(value).map(|o| Object::EndpointSlice(Box::new(o))),
            "NetworkPolicy" => serde_yaml::from_value(value).map(|o| Object::NetworkPolicy(Box::new(o))),
            "GlobalServicePolicy" => serde_yaml::from_value(value).map(|o| Object::Policy(Box::new(o))),
            _ => {
                *skipped += 1;
                continue;
            }
        };
        out.push(parsed.map_err(|e| format!("document {} ({kind}): {e}", i + 1))?);
    }
    Ok(out)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            out.push(path);
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// Sends `()` on `tx` whenever something below `root` changes (inotify).
/// Keep the returned watcher alive for as long as notifications are wanted.
pub fn watch_changes(
    root: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel already holds a wake-up: coalesce.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok(watcher)
}
