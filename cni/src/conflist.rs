//! Putting Knit into a node's CNI configuration, and taking it out again.
//!
//! The runtime uses the first file of its config directory in lexical
//! order (`*.conflist`, `*.conf`, `*.json`). [`install`]:
//! - when that file exists and is not Knit's, saves it as
//!   `<file>.knit-backup` (runtimes ignore that extension) and rewrites it
//!   with `knit` appended to its plugins ([`chain`]), so the cluster keeps
//!   its own CNI and Knit joins after it;
//! - when the directory has no config, writes [`DEFAULT_CONFLIST`]:
//!   `ptp` + `host-local` over the node's pod CIDRs, `portmap`, `knit`;
//! - is idempotent: a config that already chains Knit is left alone.
//!
//! [`keep_chained`], run by the agent on every refresh, puts Knit back when
//! the cluster's own CNI agent rewrites its file (kindnet, flannel and
//! Calico all do on restart). [`uninstall`] restores every backup and
//! removes the default conflist.
//! The functions that compute configs take and return values.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::attachment::DEFAULT_STATE_DIR;
use crate::{Error, Result};

/// File name of the conflist Knit writes on nodes without a CNI.
pub const DEFAULT_CONFLIST: &str = "10-knit.conflist";
/// Suffix of the saved original of a config Knit chained into.
pub const BACKUP_SUFFIX: &str = "knit-backup";
/// cniVersion of the default conflist: the newest version the reference
/// plugins of Debian bookworm (1.1.1) and containerd 1.6 speak. Runtimes
/// that speak 1.1 still send STATUS and GC to knit-cni with a 1.1.0 config.
pub const DEFAULT_CONFLIST_VERSION: &str = "1.0.0";
/// The plugin `type` of Knit.
pub const PLUGIN_TYPE: &str = "knit";

/// Knit's entry in a conflist's `plugins`.
pub fn knit_plugin(state_dir: &Path) -> Value {
    let mut p = json!({"type": PLUGIN_TYPE});
    if state_dir != Path::new(DEFAULT_STATE_DIR) {
        p["stateDir"] = json!(state_dir);
    }
    p
}

/// The conflist for a node without a CNI: `ptp` with `host-local` IPAM over
/// `pod_cidrs` (one range set per CIDR, so dual-stack works), masquerading
/// what leaves the pod network, then `portmap` (hostPort), then `knit`.
/// `ipam_data_dir` overrides host-local's `/var/lib/cni/networks`.
pub fn default_conflist(pod_cidrs: &[String], state_dir: &Path, ipam_data_dir: Option<&Path>) -> Value {
    let ranges: Vec<Value> = pod_cidrs.iter().map(|c| json!([{"subnet": c}])).collect();
    let mut ipam = json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": [{"dst": "0.0.0.0/0"}],
    });
    if let Some(dir) = ipam_data_dir {
        ipam["dataDir"] = json!(dir);
    }
    json!({
        "cniVersion": DEFAULT_CONFLIST_VERSION,
        "name": "knit",
        "plugins": [
            {"type": "ptp", "ipMasq": true, "ipam": ipam},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            knit_plugin(state_dir),
        ],
    })
}

/// Whether a conflist already runs Knit.
pub fn chains_knit(conf: &Value) -> bool {
    conf["plugins"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["type"] == PLUGIN_TYPE))
}

/// `conf` (a conflist, or a single-plugin `.conf`) with Knit appended to
/// its plugins. Errs with what is wrong when the config is not a CNI
/// config.
pub fn chain(conf: &Value, state_dir: &Path) -> std::result::Result<Value, String> {
    let Some(obj) = conf.as_object() else {
        return Err("is not a JSON object".into());
    };
    if chains_knit(conf) {
        return Ok(conf.clone());
    }
    if let Some(plugins) = obj.get("plugins") {
        let Some(plugins) = plugins.as_array() else {
            return Err("\"plugins\" is not a list".into());
        };
        let mut out = conf.clone();
        let mut plugins = plugins.clone();
        plugins.push(knit_plugin(state_dir));
        out["plugins"] = Value::Array(plugins);
        return Ok(out);
    }
    if !obj.contains_key("type") {
        return Err("has neither \"plugins\" (a conflist) nor \"type\" (a single plugin)".into());
    }
    // A single-plugin config: its network-level fields move up.
    let mut plugin = conf.clone();
    let plugin_obj = plugin.as_object_mut().expect("an object");
    let name = plugin_obj.remove("name").unwrap_or(json!("knit"));
    let version = plugin_obj
        .remove("cniVersion")
        .unwrap_or(json!(crate::protocol::CNI_VERSION));
    Ok(json!({
        "cniVersion": version,
        "name": name,
        "plugins": [plugin, knit_plugin(state_dir)],
    }))
}

/// What [`install`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Installed {
    /// Knit was appended to this existing config (original saved).
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

/// The config the runtime uses: the first CNI config file by name.
pub fn active_config(conf_dir: &Path) -> Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(conf_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
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
    Ok(files.into_iter().next())
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

/// Chains Knit into the node's active config, or writes the default one
/// over `pod_cidrs` (which must then be non-empty).
pub fn install(conf_dir: &Path, pod_cidrs: &[String], state_dir: &Path) -> Result<Installed> {
    std::fs::create_dir_all(conf_dir).map_err(|source| Error::File {
        action: "create",
        path: conf_dir.to_owned(),
        source,
    })?;
    let Some(active) = active_config(conf_dir)? else {
        if pod_cidrs.is_empty() {
            return Err(Error::Config {
                path: conf_dir.to_owned(),
                reason: "holds no CNI config and the node has no podCIDR: give the node a podCIDR (kube-controller-manager --allocate-node-cidrs) or install a CNI first".into(),
            });
        }
        let path = conf_dir.join(DEFAULT_CONFLIST);
        write(&path, &default_conflist(pod_cidrs, state_dir, None))?;
        return Ok(Installed::Default(path));
    };
    let text = std::fs::read(&active).map_err(|source| Error::File {
        action: "read",
        path: active.clone(),
        source,
    })?;
    let conf: Value = serde_json::from_slice(&text).map_err(|source| Error::Parse {
        path: active.clone(),
        source,
    })?;
    if chains_knit(&conf) {
        return Ok(Installed::AlreadyChained(active));
    }
    let chained = chain(&conf, state_dir).map_err(|reason| Error::Config {
        path: active.clone(),
        reason: format!("{reason}; fix the node's CNI config or remove it to get Knit's default"),
    })?;
    let backup = backup_path(&active);
    std::fs::write(&backup, &text).map_err(|source| Error::File {
        action: "save the original config as",
        path: backup.clone(),
        source,
    })?;
    write(&active, &chained)?;
    Ok(Installed::Chained(active))
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

fn backup_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().expect("a file").to_os_string();
    name.push(".");
    name.push(BACKUP_SUFFIX);
    config.with_file_name(name)
}

/// Restores every config Knit chained into and removes the default
/// conflist. Returns the files restored or removed.
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
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(original) = name.strip_suffix(&format!(".{BACKUP_SUFFIX}")) {
            let target = conf_dir.join(original);
            std::fs::rename(&path, &target).map_err(|source| Error::File {
                action: "restore",
                path: target.clone(),
                source,
            })?;
            done.push(target);
        } else if name == DEFAULT_CONFLIST {
            std::fs::remove_file(&path).map_err(|source| Error::File {
                action: "remove",
                path: path.clone(),
                source,
            })?;
            done.push(path);
        }
    }
    done.sort();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PathBuf {
        PathBuf::from(DEFAULT_STATE_DIR)
    }

    #[test]
    fn chains_after_a_conflist_and_a_single_conf() {
        let kindnet = json!({"cniVersion": "0.4.0", "name": "kindnet", "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local"}}, {"type": "portmap"}]});
        let out = chain(&kindnet, &state()).unwrap();
        assert_eq!(out["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(out["plugins"][2], json!({"type": "knit"}));
        assert_eq!(out["name"], "kindnet");
        assert_eq!(chain(&out, &state()).unwrap(), out, "idempotent");

        let single = json!({"cniVersion": "1.0.0", "name": "br", "type": "bridge", "bridge": "cni0"});
        let out = chain(&single, &state()).unwrap();
        assert_eq!(out["name"], "br");
        assert_eq!(out["cniVersion"], "1.0.0");
        assert_eq!(out["plugins"][0], json!({"type": "bridge", "bridge": "cni0"}));
        assert_eq!(out["plugins"][1]["type"], "knit");

        assert!(
            chain(&json!({"name": "x"}), &state())
                .unwrap_err()
                .contains("neither")
        );
        assert!(chain(&json!([1]), &state()).is_err());
    }

    #[test]
    fn default_conflist_is_ptp_host_local_portmap_knit() {
        let c = default_conflist(&["10.1.1.0/24".into()], Path::new("/tmp/s"), None);
        let types: Vec<&str> = c["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ptp", "portmap", "knit"]);
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"],
            json!([[{"subnet": "10.1.1.0/24"}]])
        );
        assert_eq!(c["plugins"][0]["ipMasq"], true);
        assert_eq!(c["plugins"][2]["stateDir"], "/tmp/s");
    }
}
