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
            if fp.is_file()
                && let Ok(text) = std::fs::read_to_string(&fp)
            {
                data.insert(file.file_name().to_string_lossy().into_owned(), text);
            }
        }
        stored.insert(entry.file_name().to_string_lossy().into_owned(), data);
    }
    Ok(stored)
}

fn write_object_dir(dir: &Path, data: &BTreeMap<String, Vec<u8>>, secret: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err("creating directory", dir, e))?;
    for (key, value) in data {
        let path = dir.join(key);
        if std::fs::read(&path).ok().as_deref() == Some(value.as_slice()) {
            continue;
        }
        let tmp = dir.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, value).map_err(|e| file_err("writing", &tmp, e))?;
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| file_err("restricting permissions of", &tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| file_err("replacing", &path, e))?;
    }
    for entry in std::fs::read_dir(dir)
        .map_err(|e| file_err("reading directory", dir, e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !data.contains_key(&name) && entry.path().is_file() {
            std::fs::remove_file(entry.path()).map_err(|e| file_err("removing", &entry.path(), e))?;
        }
    }
    Ok(())
}

fn file_err(action: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::File {
        action,
        path: PathBuf::from(path),
        source,
    }
}
