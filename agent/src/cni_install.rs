//! `knit-agent install-cni`, the DaemonSet's init container: puts the CNI
//! plugins on the node and Knit into the node's CNI config.
//!
//! 1. Copies `knit-cni` into the node's plugin directory as `knit`, and
//!    every reference plugin the default conflist needs (`ptp`,
//!    `host-local`, `portmap`, `loopback`) that the node lacks, from the
//!    image's `/usr/lib/cni`. A plugin the node already has is left alone.
//! 2. Chains `knit` into the node's active config, or writes the default
//!    conflist over the node's pod CIDRs ([`knit_cni::conflist::install`]),
//!    its pods at the node's underlay MTU less the tunnel's overhead
//!    ([`node_pod_mtu`]: the MTU of the default route's interface).
//!
//! `knit-agent uninstall-cni` restores the node's previous config. What to
//! copy is decided by [`plugins_to_copy`], a pure function.

use std::path::{Path, PathBuf};

use knit_cni::conflist::{self, Installed};

use crate::{Error, Result};

/// Reference plugins the default conflist uses.
pub const REFERENCE_PLUGINS: [&str; 4] = ["ptp", "host-local", "portmap", "loopback"];

/// The copies to make: `(source, destination)`. `knit` is always
/// replaced (it is ours, and may be a new version); a reference plugin is
/// copied only where the node has none and the image has one.
pub fn plugins_to_copy(
    knit_cni: &Path,
    image_plugins: &Path,
    node_bin_dir: &Path,
    node_has: impl Fn(&Path) -> bool,
) -> Vec<(PathBuf, PathBuf)> {
    let mut out = vec![(knit_cni.to_owned(), node_bin_dir.join(conflist::PLUGIN_TYPE))];
    for p in REFERENCE_PLUGINS {
        let dst = node_bin_dir.join(p);
        let src = image_plugins.join(p);
        if !node_has(&dst) && node_has(&src) {
            out.push((src, dst));
        }
    }
    out
}

fn copy(src: &Path, dst: &Path) -> Result<()> {
    // Copy beside, then rename: a runtime running the plugin meanwhile
    // never sees half a binary.
    let tmp = dst.with_extension("knit-new");
    std::fs::copy(src, &tmp)
        .and_then(|_| std::fs::rename(&tmp, dst))
        .map_err(|source| Error::Pin {
            action: format!("copy {} to {}", src.display(), dst.display()),
            source,
        })
}

/// Installs plugins and config; `pod_cidrs` are used only when the node
/// has no CNI config.
pub fn install(
    knit_cni: &Path,
    image_plugins: &Path,
    bin_dir: &Path,
    conf_dir: &Path,
    state_dir: &Path,
    pod_cidrs: &[String],
    pod_mtu: Option<u32>,
) -> Result<Installed> {
    std::fs::create_dir_all(bin_dir).map_err(|source| Error::Pin {
        action: format!("create {}", bin_dir.display()),
        source,
    })?;
    for (src, dst) in plugins_to_copy(knit_cni, image_plugins, bin_dir, |p| p.exists()) {
        copy(&src, &dst)?;
    }
    conflist::install_with_mtu(conf_dir, pod_cidrs, state_dir, pod_mtu).map_err(Error::Cni)
}

/// The interface of the IPv4 default route in a `/proc/net/route` table.
pub fn default_route_interface(table: &str) -> Option<String> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        (cols.get(1) == Some(&"00000000") && cols.get(7) == Some(&"00000000")).then(|| cols[0].to_owned())
    })
}

/// The pods' MTU on this node: the default route interface's MTU less
/// [`conflist::TUNNEL_OVERHEAD`]; `None` when the node has no default
/// route (then `ptp` keeps its own default).
pub fn node_pod_mtu() -> Option<u32> {
    underlay_mtu().map(conflist::pod_mtu)
}

/// The MTU of the node's underlay: its default route interface's.
pub fn underlay_mtu() -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let dev = default_route_interface(&table)?;
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether the node's config directory still needs the pod CIDRs (it has
/// no config to chain into).
pub fn needs_pod_cidrs(conf_dir: &Path) -> Result<bool> {
    Ok(conflist::active_config(conf_dir).map_err(Error::Cni)?.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_names_the_underlay() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
ens5\t0010A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
ens5\t00000000\t0110A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
";
        assert_eq!(default_route_interface(table).as_deref(), Some("ens5"));
        assert_eq!(default_route_interface("Iface\tDestination\n"), None);
    }

    #[test]
    fn copies_knit_always_and_reference_plugins_only_when_missing() {
        let node_has = |p: &Path| {
            let s = p.to_string_lossy();
            s == "/opt/cni/bin/ptp" || s.starts_with("/usr/lib/cni/")
        };
        let copies = plugins_to_copy(
            Path::new("/usr/local/bin/knit-cni"),
            Path::new("/usr/lib/cni"),
            Path::new("/opt/cni/bin"),
            node_has,
        );
        let dsts: Vec<String> = copies.iter().map(|(_, d)| d.display().to_string()).collect();
        assert_eq!(
            dsts,
            [
                "/opt/cni/bin/knit",
                "/opt/cni/bin/host-local",
                "/opt/cni/bin/portmap",
                "/opt/cni/bin/loopback"
            ],
            "the node's own ptp is kept"
        );
    }
}
