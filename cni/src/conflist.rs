//! The CNI configs Knit writes, as values: Knit's entry in a conflist,
//! the default conflist for nodes without a CNI, and a cluster's config
//! with Knit chained into it ([`chain`]), for every shape libcni loads:
//! - a `.conflist`: Knit is appended to its `plugins`;
//! - a single-plugin `.conf` / `.json`: it becomes a conflist of that
//!   plugin and Knit (written as a `.conflist` by [`crate::install`]);
//! - a Multus config (`type: multus` or `multus-shim`) with inline
//!   `delegates`: Knit joins the first delegate, the cluster network.
//!   Multus configs that name the cluster network by path or name are
//!   followed to that file by [`crate::install`].
//!
//! Nothing here touches a file.

use std::path::Path;

use serde_json::{Value, json};

use crate::attachment::DEFAULT_STATE_DIR;
pub use crate::install::{Installed, active_config, install, install_with_mtu, keep_chained, uninstall};

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
/// Bytes VXLAN over IPv4 adds to a pod's packet: outer IPv4 (20), UDP (8),
/// VXLAN (8) and the inner Ethernet header (14).
pub const TUNNEL_OVERHEAD: u32 = 50;

/// The MTU a pod's interface may have on an underlay of `underlay_mtu`,
/// so that its packets cross the tunnel without being fragmented.
pub fn pod_mtu(underlay_mtu: u32) -> u32 {
    underlay_mtu.saturating_sub(TUNNEL_OVERHEAD)
}

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
/// `ipam_data_dir` overrides host-local's `/var/lib/cni/networks`; `mtu`
/// is the pods' interface MTU ([`pod_mtu`] of the node's underlay; `None`
/// leaves `ptp`'s default, the host's route MTU).
pub fn default_conflist(
    pod_cidrs: &[String],
    state_dir: &Path,
    ipam_data_dir: Option<&Path>,
    mtu: Option<u32>,
) -> Value {
    let ranges: Vec<Value> = pod_cidrs.iter().map(|c| json!([{"subnet": c}])).collect();
    let mut ipam = json!({
        "type": "host-local",
        "ranges": ranges,
        "routes": [{"dst": "0.0.0.0/0"}],
    });
    if let Some(dir) = ipam_data_dir {
        ipam["dataDir"] = json!(dir);
    }
    let mut ptp = json!({"type": "ptp", "ipMasq": true, "ipam": ipam});
    if let Some(mtu) = mtu {
        ptp["mtu"] = json!(mtu);
    }
    json!({
        "cniVersion": DEFAULT_CONFLIST_VERSION,
        "name": "knit",
        "plugins": [
            ptp,
            {"type": "portmap", "capabilities": {"portMappings": true}},
            knit_plugin(state_dir),
        ],
    })
}

/// Plugin types of the Multus meta-plugin (thin and thick).
pub const MULTUS_TYPES: [&str; 2] = ["multus", "multus-shim"];

/// Whether `conf` is a Multus config.
pub fn is_multus(conf: &Value) -> bool {
    conf["type"].as_str().is_some_and(|t| MULTUS_TYPES.contains(&t))
}

/// Whether a config already runs Knit: a conflist with Knit among its
/// plugins, or a Multus config whose cluster network (first inline
/// delegate) does.
pub fn chains_knit(conf: &Value) -> bool {
    if is_multus(conf) {
        return conf["delegates"]
            .as_array()
            .and_then(|d| d.first())
            .is_some_and(chains_knit);
    }
    conf["plugins"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["type"] == PLUGIN_TYPE))
}

/// `conf` with Knit chained in: appended to a conflist's plugins, a
/// single-plugin config turned into a conflist, a Multus config's first
/// delegate chained. Errs with what is wrong when the config is not a CNI
/// config, or is a Multus config without inline delegates (the caller
/// follows its `clusterNetwork`).
pub fn chain(conf: &Value, state_dir: &Path) -> std::result::Result<Value, String> {
    let Some(obj) = conf.as_object() else {
        return Err("is not a JSON object".into());
    };
    if chains_knit(conf) {
        return Ok(conf.clone());
    }
    if is_multus(conf) {
        let Some(first) = conf["delegates"].as_array().and_then(|d| d.first()) else {
            return Err("is a Multus config without \"delegates\"; its \"clusterNetwork\" names the file to chain into".into());
        };
        let mut out = conf.clone();
        out["delegates"][0] = chain(first, state_dir).map_err(|e| format!("its first delegate {e}"))?;
        return Ok(out);
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
    let list_fields: Vec<(&str, Value)> = ["disableCheck", "disableGC"]
        .into_iter()
        .filter_map(|k| plugin_obj.remove(k).map(|v| (k, v)))
        .collect();
    let mut out = json!({
        "cniVersion": version,
        "name": name,
        "plugins": [plugin, knit_plugin(state_dir)],
    });
    for (key, v) in list_fields {
        out[key] = v;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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
    fn chains_into_multus_inline_delegates() {
        let multus = json!({"cniVersion": "0.3.1", "name": "multus-cni-network", "type": "multus",
            "kubeconfig": "/etc/cni/net.d/multus.d/multus.kubeconfig",
            "delegates": [{"cniVersion": "0.3.1", "name": "k8s-pod-network",
                "plugins": [{"type": "calico"}, {"type": "portmap"}]}]});
        assert!(!chains_knit(&multus));
        let out = chain(&multus, &state()).unwrap();
        assert_eq!(out["type"], "multus", "still a Multus config");
        assert_eq!(out["delegates"][0]["plugins"][2]["type"], "knit");
        assert!(chains_knit(&out));
        assert_eq!(chain(&out, &state()).unwrap(), out, "idempotent");
        let shim = json!({"cniVersion": "0.3.1", "type": "multus-shim", "clusterNetwork": "/host/etc/cni/net.d/10-calico.conflist"});
        assert!(chain(&shim, &state()).unwrap_err().contains("clusterNetwork"));
    }

    #[test]
    fn default_conflist_is_ptp_host_local_portmap_knit() {
        let c = default_conflist(
            &["10.1.1.0/24".into()],
            Path::new("/tmp/s"),
            None,
            Some(pod_mtu(9001)),
        );
        assert_eq!(c["plugins"][0]["mtu"], 8951, "AWS's jumbo underlay less VXLAN");
        assert!(
            default_conflist(&[], Path::new("/tmp/s"), None, None)["plugins"][0]
                .get("mtu")
                .is_none()
        );
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
