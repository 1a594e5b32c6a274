//! Putting Knit into a node's CNI config directory, and taking it out
//! again, for every file shape libcni loads.
//!
//! The runtime uses the first file of its config directory in lexical
//! order (`*.conflist`, `*.conf`, `*.json`). [`install`]:
//! - when that file exists and is not Knit's, saves it as
//!   `<file>.knit-backup` (runtimes ignore that extension) and chains Knit
//!   into it ([`crate::conflist::chain`]):
//!   - a `.conflist` is rewritten in place;
//!   - a single-plugin `.conf` / `.json` cannot hold a plugin list (libcni
//!     refuses one), so `<stem>.conflist` is written instead and the
//!     original moves to its backup; the new name sorts where the old one
//!     did, so the runtime picks it;
//!   - a Multus config stays Multus's: inline `delegates` get Knit in the
//!     first one; a `clusterNetwork` naming a file (or a network by name)
//!     in the directory has that file chained instead, and Multus's
//!     pointer follows it when it became a `.conflist`;
//! - when the directory has no config, writes the default conflist
//!   (`ptp` + `host-local` over the node's pod CIDRs, `portmap`, `knit`);
//! - is idempotent: a config that already chains Knit is left alone.
//!
//! [`keep_chained`], run by the agent on every refresh, puts Knit back when
//! the cluster's own CNI agent rewrites its file (kindnet, flannel and
//! Calico all do on restart). [`uninstall`] restores every backup byte for
//! byte and removes the files Knit wrote.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::conflist::{BACKUP_SUFFIX, DEFAULT_CONFLIST, chain, chains_knit, default_conflist, is_multus};
use crate::{Error, Result};

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Knit was chained into the config now at this path (original saved).
    Chained(PathBuf),
    /// The config already ran Knit.
    AlreadyChained(PathBuf),
    /// No config existed; the default conflist was written.
    Default(PathBuf),
}

fn is_cni_config(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("conflist" | "conf" | "json")
    )
}

fn is_single_plugin_file(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("conf" | "json"))
}

fn config_files(conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::File {
                action: "list",
                path: conf_dir.to_owned(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_cni_config(p))
        .collect();
    files.sort();
    Ok(files)
}

/// The config the runtime uses: the first CNI config file by name.
pub fn active_config(conf_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(config_files(conf_dir)?.into_iter().next())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::File {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, value: &Value) -> Result<()> {
    let tmp = path.with_extension("knit-tmp");
    let text = serde_json::to_string_pretty(value).expect("JSON serialises");
    std::fs::write(&tmp, text).map_err(|source| Error::File {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| Error::File {
        action: "rename into place",
        path: path.to_owned(),
        source,
    })
}

fn backup_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().expect("a file").to_os_string();
    name.push(".");
    name.push(BACKUP_SUFFIX);
    config.with_file_name(name)
}

fn save_backup(path: &Path, original: &[u8]) -> Result<()> {
    let backup = backup_path(path);
    std::fs::write(&backup, original).map_err(|source| Error::File {
        action: "save the original config as",
        path: backup,
        source,
    })
}

fn config_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Chains Knit into the node's active config, or writes the default one
/// over `pod_cidrs` (which must then be non-empty), with no pod MTU of its
/// own ([`install_with_mtu`]).
pub fn install(conf_dir: &Path, pod_cidrs: &[String], state_dir: &Path) -> Result<Installed> {
    install_with_mtu(conf_dir, pod_cidrs, state_dir, None)
}

/// [`install`], with the default conflist's pods at `pod_mtu`
/// ([`crate::conflist::pod_mtu`] of the node's underlay).
pub fn install_with_mtu(
    conf_dir: &Path,
    pod_cidrs: &[String],
    state_dir: &Path,
    pod_mtu: Option<u32>,
) -> Result<Installed> {
    std::fs::create_dir_all(conf_dir).map_err(|source| Error::File {
        action: "create",
        path: conf_dir.to_owned(),
        source,
    })?;
    let Some(active) = active_config(conf_dir)? else {
        if pod_cidrs.is_empty() {
            return Err(config_error(
                conf_dir,
                "holds no CNI config and the node has no podCIDR: give the node a podCIDR (kube-controller-manager --allocate-node-cidrs) or install a CNI first",
            ));
        }
        let path = conf_dir.join(DEFAULT_CONFLIST);
        write(&path, &default_conflist(pod_cidrs, state_dir, None, pod_mtu))?;
        return Ok(Installed::Default(path));
    };
    let bytes = read_bytes(&active)?;
    let conf = parse(&active, &bytes)?;
    let inline_delegates = conf["delegates"].as_array().is_some_and(|d| !d.is_empty());
    if is_multus(&conf) && !inline_delegates {
        return follow_cluster_network(conf_dir, &active, &bytes, &conf, state_dir);
    }
    chain_file(&active, &bytes, &conf, state_dir)
}

/// Chains Knit into the file `path` (holding `bytes`, parsed as `conf`).
fn chain_file(path: &Path, bytes: &[u8], conf: &Value, state_dir: &Path) -> Result<Installed> {
    if chains_knit(conf) {
        return Ok(Installed::AlreadyChained(path.to_owned()));
    }
    let chained = chain(conf, state_dir).map_err(|reason| {
        config_error(
            path,
            format!("{reason}; fix the node's CNI config or remove it to get Knit's default"),
        )
    })?;
    if !is_single_plugin_file(path) || is_multus(conf) {
        save_backup(path, bytes)?;
        write(path, &chained)?;
        return Ok(Installed::Chained(path.to_owned()));
    }
    let list = path.with_extension("conflist");
    if list.exists() && !backup_path(path).exists() {
        return Err(config_error(
            &list,
            format!(
                "exists beside the single-plugin {} that Knit must turn into a conflist of that name; remove the one the cluster does not use",
                path.display()
            ),
        ));
    }
    save_backup(path, bytes)?;
    write(&list, &chained)?;
    std::fs::remove_file(path).map_err(|source| Error::File {
        action: "remove the single-plugin config now saved as a backup",
        path: path.to_owned(),
        source,
    })?;
    Ok(Installed::Chained(list))
}

/// A Multus config without inline delegates: chains the file its
/// `clusterNetwork` names (a path whose file is in `conf_dir`, or the
/// `name` of a network there), and points Multus at the `.conflist` when
/// the file was a single-plugin one.
fn follow_cluster_network(
    conf_dir: &Path,
    multus_path: &Path,
    multus_bytes: &[u8],
    multus: &Value,
    state_dir: &Path,
) -> Result<Installed> {
    let Some(network) = multus["clusterNetwork"].as_str() else {
        return Err(config_error(
            multus_path,
            "is a Multus config with neither \"delegates\" nor \"clusterNetwork\"; set clusterNetwork to the cluster network's config file",
        ));
    };
    let target = cluster_network_file(conf_dir, multus_path, network)?;
    let bytes = read_bytes(&target)?;
    let conf = parse(&target, &bytes)?;
    let outcome = chain_file(&target, &bytes, &conf, state_dir)?;
    let Installed::Chained(now) = &outcome else {
        return Ok(outcome);
    };
    if *now != target && Path::new(network).extension().is_some() {
        let old_name = target.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let new_name = now.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let pointer = network
            .strip_suffix(old_name)
            .map(|dir| format!("{dir}{new_name}"))
            .unwrap_or_else(|| now.display().to_string());
        let mut rewritten = multus.clone();
        rewritten["clusterNetwork"] = Value::String(pointer);
        save_backup(multus_path, multus_bytes)?;
        write(multus_path, &rewritten)?;
    }
    Ok(outcome)
}

fn cluster_network_file(conf_dir: &Path, multus_path: &Path, network: &str) -> Result<PathBuf> {
    let as_path = Path::new(network);
    if is_cni_config(as_path) {
        // Multus runs in a container and often sees the host's directory
        // under another prefix (`/host/etc/cni/net.d/...`): the file name
        // is what identifies it here.
        let file = conf_dir.join(as_path.file_name().unwrap_or_default());
        if file.is_file() {
            return Ok(file);
        }
        let converted = file.with_extension("conflist");
        if is_single_plugin_file(&file) && converted.is_file() && backup_path(&file).exists() {
            return Ok(converted);
        }
        return Err(config_error(
            multus_path,
            format!(
                "names clusterNetwork {network:?}, but {} does not exist; Knit chains only into the cluster network's config in this directory",
                file.display()
            ),
        ));
    }
    for file in config_files(conf_dir)? {
        if file == multus_path {
            continue;
        }
        let conf = parse(&file, &read_bytes(&file)?)?;
        if conf["name"] == network {
            return Ok(file);
        }
    }
    Err(config_error(
        multus_path,
        format!(
            "names clusterNetwork {network:?}, and no config in {} has that name (a NetworkAttachmentDefinition cannot be chained into); point clusterNetwork at the cluster network's config file",
            conf_dir.display()
        ),
    ))
}

/// Re-chains Knit into the active config when something removed it since
/// [`install`] (the cluster's CNI agent rewrote its file). Returns the file
/// re-chained, or `None` when Knit is still there or the directory holds no
/// config at all (then there is nothing to join; the init container writes
/// the default on the next start).
pub fn keep_chained(conf_dir: &Path, state_dir: &Path) -> Result<Option<PathBuf>> {
    if active_config(conf_dir)?.is_none() {
        return Ok(None);
    }
    match install(conf_dir, &[], state_dir)? {
        Installed::Chained(path) => Ok(Some(path)),
        Installed::AlreadyChained(_) | Installed::Default(_) => Ok(None),
    }
}

/// Restores every config Knit chained into, byte for byte, and removes the
/// files Knit wrote (the default conflist, the `.conflist` that replaced a
/// single-plugin config). Returns the files restored or removed.
pub fn uninstall(conf_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut done = Vec::new();
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(source) => {
            return Err(Error::File {
                action: "list",
                path: conf_dir.to_owned(),
                source,
            });
        }
    };
    let remove = |path: &Path, done: &mut Vec<PathBuf>| -> Result<()> {
        std::fs::remove_file(path).map_err(|source| Error::File {
            action: "remove",
            path: path.to_owned(),
            source,
        })?;
        done.push(path.to_owned());
        Ok(())
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(original) = name.strip_suffix(&format!(".{BACKUP_SUFFIX}")) {
            let target = conf_dir.join(original);
            let written = target.with_extension("conflist");
            if is_single_plugin_file(&target) && written.is_file() {
                remove(&written, &mut done)?;
            }
            std::fs::rename(&path, &target).map_err(|source| Error::File {
                action: "restore",
                path: target.clone(),
                source,
            })?;
            done.push(target);
        } else if name == DEFAULT_CONFLIST {
            remove(&path, &mut done)?;
        }
    }
    done.sort();
    Ok(done)
}
