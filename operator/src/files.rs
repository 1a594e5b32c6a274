//! `knitctl render`: the operator's plan applied to a directory instead of
//! the Kubernetes API, for sites without Kubernetes and the local mesh.
//!
//! Each Secret and ConfigMap of the [`MeshPlan`](crate::render::MeshPlan)
//! becomes a directory named after it with one file per key — the layout a
//! Kubernetes volume mount gives, so the apiserver and agents read the same
//! paths either way. Existing certificates in the directory are read back
//! first, so rendering again keeps them until they are due for renewal.
//! Keys that are no longer in the plan (a removed peer) are deleted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use knit_crds::ClusterMeshPeer;

use crate::config::ClusterConfig;
use crate::render::{self, MeshInputs, MeshPlan, PeerInput, StoredSecrets};
use crate::{Error, Result};

/// Renders and writes the plan under `dir`; returns the plan for reporting.
pub fn render_to_dir(
    config: &ClusterConfig,
    peers: &[ClusterMeshPeer],
    dir: &Path,
    now: Timestamp,
) -> Result<MeshPlan> {
    let stored = read_dir_secrets(dir)?;
    let inputs: Vec<PeerInput> = peers.iter().map(offline_peer_input).collect();
    let plan = render::render_mesh(&MeshInputs {
        node_sources: &[],
        config,
        peers: &inputs,
        stored: &stored,
        load_balancer_ingress: &[],
        now,
    })?;
    for secret in &plan.secrets {
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        write_object_dir(
            &dir.join(secret.metadata.name.as_deref().unwrap_or_default()),
            &data,
            true,
        )?;
    }
    for cm in &plan.config_maps {
        let data = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        write_object_dir(
            &dir.join(cm.metadata.name.as_deref().unwrap_or_default()),
            &data,
            false,
        )?;
    }
    Ok(plan)
}

/// A ClusterMeshPeer read from a file, as render input. Offline there is no
/// Secret store, so `caSecretRef` is reported as a problem in status.
pub fn offline_peer_input(peer: &ClusterMeshPeer) -> PeerInput {
    let ca = match (&peer.spec.ca_bundle, &peer.spec.ca_secret_ref) {
        (Some(pem), _) => Ok(pem.clone()),
        (None, Some(r)) => Err(format!(
            "spec.caSecretRef ({}) cannot be read without Kubernetes; put the CA PEM in spec.caBundle",
            r.name
        )),
        (None, None) => Err("set spec.caBundle to the peer's CA certificate".into()),
    };
    PeerInput::from_peer(peer, ca)
}

/// Reads every `<dir>/<secret>/<key>` written earlier.
pub fn read_dir_secrets(dir: &Path) -> Result<StoredSecrets> {
    let mut stored = BTreeMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(stored),
        Err(source) => return Err(file_err("reading directory", dir, source)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let mut data = BTreeMap::new();
        for file in std::fs::read_dir(&path)
            .map_err(|e| file_err("reading directory", &path, e))?
            .flatten()
        {
            let fp = file.path();
            if !file.file_name().to_string_lossy().starts_with('.')
                && fp.is_file()
                && let Ok(text) = std::fs::read_to_string(&fp)
            {
                data.insert(file.file_name().to_string_lossy().into_owned(), text);
            }
        }
        stored.insert(entry.file_name().to_string_lossy().into_owned(), data);
    }
    Ok(stored)
}

/// Writes `data` as one version, the way the kubelet updates a Secret or
/// ConfigMap volume: the files go into a fresh `..<version>` directory, the
/// `..data` symlink is swapped to it by a rename, and each key is a symlink
/// through `..data`. A reader (etcd, the front, a KVStoreMesh reconnecting)
/// therefore sees every key of one version, never a new certificate beside
/// an old key. Nothing is written when nothing changed.
fn write_object_dir(dir: &Path, data: &BTreeMap<String, Vec<u8>>, secret: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err("creating directory", dir, e))?;
    let current = visible_keys(dir)?;
    let unchanged = current.len() == data.len()
        && data
            .iter()
            .all(|(key, value)| std::fs::read(dir.join(key)).ok().as_deref() == Some(value.as_slice()));
    if unchanged {
        return Ok(());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let version_name = format!("..{stamp}_{}", std::process::id());
    let version = dir.join(&version_name);
    // A Secret's keys are never readable by others, not even for the
    // moment between writing and restricting: its directory is made 0700
    // and each key created 0600.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(if secret { 0o700 } else { 0o755 })
            .create(&version)
            .map_err(|e| file_err("creating directory", &version, e))?;
    }
    for (key, value) in data {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = version.join(key);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if secret { 0o600 } else { 0o644 })
            .open(&path)
            .and_then(|mut f| f.write_all(value))
            .map_err(|e| file_err("writing", &path, e))?;
    }
    swap_symlink(dir, &version_name, "..data")?;
    for key in data.keys() {
        let target = format!("..data/{key}");
        if std::fs::read_link(dir.join(key)).ok().as_deref() != Some(Path::new(&target)) {
            swap_symlink(dir, &target, key)?;
        }
    }
    for key in current.difference(&data.keys().cloned().collect()) {
        let path = dir.join(key);
        std::fs::remove_file(&path).map_err(|e| file_err("removing", &path, e))?;
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| file_err("reading directory", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if name.starts_with("..") && name != version_name && is_dir {
            std::fs::remove_dir_all(entry.path()).map_err(|e| file_err("removing", &entry.path(), e))?;
        }
    }
    Ok(())
}

/// The keys of an object directory (every entry not starting with `.`).
fn visible_keys(dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| file_err("reading directory", dir, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect())
}

/// Points `dir/name` at `target`, replacing whatever is there in one rename.
fn swap_symlink(dir: &Path, target: &str, name: &str) -> Result<()> {
    let tmp = dir.join(format!("..tmp-{name}"));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(|e| file_err("linking", &tmp, e))?;
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(|e| file_err("replacing", &path, e))
}

fn file_err(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::File {
        action,
        path: PathBuf::from(path),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_keys_are_never_readable_by_others() {
        let dir = std::env::temp_dir().join(format!("knit-files-{}", std::process::id()));
        let data = BTreeMap::from([("tls.key".to_owned(), b"KEY".to_vec())]);
        write_object_dir(&dir.join("secret"), &data, true).unwrap();
        write_object_dir(&dir.join("cm"), &data, false).unwrap();
        let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let version = |d: &str| std::fs::canonicalize(dir.join(d).join("..data")).unwrap();
        // The directory a Secret's keys are created in is closed first, so
        // no key is ever open to others, even before its own mode is set.
        assert_eq!(mode(version("secret")), 0o700);
        assert_eq!(mode(version("secret").join("tls.key")), 0o600);
        assert_eq!(
            mode(version("cm").join("tls.key")) & 0o044,
            0o044,
            "a ConfigMap stays readable"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
