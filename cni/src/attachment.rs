//! The hand-over between knit-cni and knit-agent: one JSON file per
//! attachment in the node's state directory.
//!
//! ```text
//! <state dir>/attachments/<container id>_<ifname>.json   written by ADD, removed by DEL/GC
//! <state dir>/attached/<container id>_<ifname>            written by the agent once the pod's programs,
//!                                                         endpoint and policy are in; ADD waits for it
//! <state dir>/datapath-ready                              written by the agent once its maps are pinned
//! <state dir>/control-plane-namespace                     the agent's namespace: its pods do not wait
//! ```
//!
//! Files are written to a temporary name and renamed, so a reader never
//! sees half a record. The directory outlives both processes: a pod added
//! while the agent is down is found when it starts; one deleted meanwhile
//! is missing, and the agent drops it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where the plugin and the agent meet unless configured otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/knit/cni";
/// The agent's marker: the datapath is loaded and pinned.
pub const READY_MARKER: &str = "datapath-ready";
/// The agent's namespace, written at its start.
pub const CONTROL_PLANE_FILE: &str = "control-plane-namespace";

/// A pod interface attached to Knit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// The runtime's container (sandbox) ID.
    pub container_id: String,
    /// Interface name inside the pod.
    pub ifname: String,
    /// Path of the pod's network namespace.
    pub netns: String,
    /// Kubernetes namespace of the pod, when known.
    #[serde(default)]
    pub pod_namespace: Option<String>,
    /// Kubernetes name of the pod, when known.
    #[serde(default)]
    pub pod_name: Option<String>,
    /// Host side of the pod's veth, where the datapath attaches.
    pub host_interface: String,
    /// MAC of the host side, when the previous plugin reported it.
    #[serde(default)]
    pub host_mac: Option<String>,
    /// MAC of the pod's interface, when the previous plugin reported it.
    #[serde(default)]
    pub pod_mac: Option<String>,
    /// The pod's addresses on this interface.
    pub ips: Vec<IpAddr>,
}

/// Checks a container ID and interface name the way the spec restricts
/// them, so they are safe in a file name. Returns what is wrong.
pub fn check_names(container_id: &str, ifname: &str) -> std::result::Result<(), String> {
    let id_ok = container_id
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && container_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !id_ok {
        return Err(format!(
            "CNI_CONTAINERID {container_id:?} must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"
        ));
    }
    let if_ok = !ifname.is_empty()
        && ifname.len() <= 15
        && ifname != "."
        && ifname != ".."
        && !ifname.contains(['/', ':'])
        && !ifname.chars().any(char::is_whitespace);
    if !if_ok {
        return Err(format!(
            "CNI_IFNAME {ifname:?} is not a Linux interface name (1-15 characters, no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

/// The attachments of one node.
#[derive(Clone, Debug)]
pub struct AttachmentStore {
    root: PathBuf,
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::File {
        action,
        path: path.to_owned(),
        source,
    }
}

impl AttachmentStore {
    /// The store under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            root: state_dir.into(),
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self) -> PathBuf {
        self.root.join("attachments")
    }

    fn file(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir().join(format!("{container_id}_{ifname}.json"))
    }

    fn attached_dir(&self) -> PathBuf {
        self.root.join("attached")
    }

    fn attached_file(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.attached_dir().join(format!("{container_id}_{ifname}"))
    }

    /// Whether the agent has put this attachment's datapath in place.
    pub fn is_attached(&self, container_id: &str, ifname: &str) -> bool {
        self.attached_file(container_id, ifname).exists()
    }

    /// Marks one attachment attached, as the agent does (for tools and
    /// tests that load the datapath without an agent).
    pub fn mark_attached(&self, container_id: &str, ifname: &str) -> Result<()> {
        let dir = self.attached_dir();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = self.attached_file(container_id, ifname);
        std::fs::write(&path, b"").map_err(io("write", &path))
    }

    /// The agent's side: marks exactly `placed` attached (markers of
    /// attachments no longer placed go).
    pub fn sync_attached<'a>(&self, placed: impl IntoIterator<Item = &'a Attachment>) -> Result<()> {
        let dir = self.attached_dir();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let want: std::collections::BTreeSet<String> = placed
            .into_iter()
            .map(|a| format!("{}_{}", a.container_id, a.ifname))
            .collect();
        for entry in std::fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !want.contains(&name) {
                let path = entry.path();
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("remove", &path)(e)),
                }
            }
        }
        for name in want {
            let path = dir.join(name);
            if !path.exists() {
                std::fs::write(&path, b"").map_err(io("write", &path))?;
            }
        }
        Ok(())
    }

    /// The agent's namespace, once it has started here.
    pub fn control_plane_namespace(&self) -> Option<String> {
        std::fs::read_to_string(self.root.join(CONTROL_PLANE_FILE))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    /// The agent's side: records its namespace.
    pub fn set_control_plane_namespace(&self, namespace: &str) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.root.join(CONTROL_PLANE_FILE);
        std::fs::write(&path, namespace).map_err(io("write", &path))
    }

    /// Records `a` (replacing an earlier record of the same attachment).
    pub fn put(&self, a: &Attachment) -> Result<()> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let path = self.file(&a.container_id, &a.ifname);
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(a).expect("an attachment serialises");
        std::fs::write(&tmp, json).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))
    }

    /// The record of one attachment, if there is one.
    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<Attachment>> {
        let path = self.file(container_id, ifname);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Parse { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Forgets one attachment; succeeds when it is already gone.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<bool> {
        let _ = std::fs::remove_file(self.attached_file(container_id, ifname));
        let path = self.file(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    /// Every readable record, and the files that could not be read (with
    /// why). A missing directory is an empty store.
    pub fn list(&self) -> Result<(Vec<Attachment>, Vec<Error>)> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(io("list", &dir)(e)),
        };
        let mut found = Vec::new();
        let mut bad = Vec::new();
        for entry in entries {
            let path = entry.map_err(io("list", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice::<Attachment>(&bytes) {
                    Ok(a) => found.push(a),
                    Err(source) => bad.push(Error::Parse { path, source }),
                },
                // Removed between listing and reading: a DEL raced us.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => bad.push(io("read", &path)(e)),
            }
        }
        found.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok((found, bad))
    }

    /// Whether the agent has marked the datapath ready.
    pub fn datapath_ready(&self) -> bool {
        self.root.join(READY_MARKER).exists()
    }

    /// The agent's side: marks the datapath ready.
    pub fn mark_datapath_ready(&self) -> Result<()> {
        std::fs::create_dir_all(&self.root).map_err(io("create", &self.root))?;
        let path = self.root.join(READY_MARKER);
        std::fs::write(&path, b"").map_err(io("write", &path))
    }
}
