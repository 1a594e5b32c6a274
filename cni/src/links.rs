//! [`NodeLinks`]: the kernel's answer to what a previous plugin's result
//! leaves out (Calico's and Cilium's results name only the host side of
//! the pod's veth). It reads interfaces with `getifaddrs(3)` (netlink), in
//! the plugin's own network namespace for the host side and, for the pod
//! side, after `setns(2)` into `CNI_NETNS`, returning to the host's
//! namespace before it answers. knit-cni is single-threaded, so the switch
//! is the whole process's and lasts only the read.

use std::fs::File;
use std::net::IpAddr;

use nix::ifaddrs::getifaddrs;
use nix::sched::{CloneFlags, setns};

use crate::plugin::{LinkLookup, PodLink};

/// Looks interfaces up in the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeLinks;

/// One interface as `getifaddrs` lists it: name, MAC, addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Interface {
    name: String,
    mac: Option<String>,
    ips: Vec<IpAddr>,
}

fn interfaces() -> Result<Vec<Interface>, String> {
    let mut out: Vec<Interface> = Vec::new();
    for entry in getifaddrs().map_err(|e| format!("getifaddrs: {e}"))? {
        let idx = match out.iter().position(|i| i.name == entry.interface_name) {
            Some(i) => i,
            None => {
                out.push(Interface {
                    name: entry.interface_name.clone(),
                    ..Interface::default()
                });
                out.len() - 1
            }
        };
        let Some(addr) = entry.address else { continue };
        if let Some(link) = addr.as_link_addr() {
            if let Some(mac) = link.addr() {
                out[idx].mac = Some(format_mac(mac));
            }
        } else if let Some(v4) = addr.as_sockaddr_in() {
            out[idx].ips.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out[idx].ips.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(out)
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Runs `f` inside the network namespace at `path`, then returns to the
/// current one (also when `f` fails).
fn in_netns<T>(path: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let home =
        File::open("/proc/thread-self/ns/net").map_err(|e| format!("open /proc/thread-self/ns/net: {e}"))?;
    let target = File::open(path).map_err(|e| format!("open CNI_NETNS {path}: {e}"))?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns into {path}: {e}"))?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns back to the host's namespace: {e}"))?;
    out
}

impl LinkLookup for NodeLinks {
    fn pod_link(&self, netns: &str, ifname: &str, ips: &[IpAddr]) -> Result<Option<PodLink>, String> {
        let found = in_netns(netns, interfaces)?;
        let by_name = found.iter().find(|i| i.name == ifname);
        let by_ip = || found.iter().find(|i| i.ips.iter().any(|a| ips.contains(a)));
        Ok(by_name.or_else(by_ip).map(|i| PodLink {
            name: i.name.clone(),
            mac: i.mac.clone(),
        }))
    }

    fn host_mac(&self, name: &str) -> Result<Option<String>, String> {
        Ok(interfaces()?
            .into_iter()
            .find(|i| i.name == name)
            .and_then(|i| i.mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_print_as_the_kernel_does() {
        assert_eq!(format_mac([0xee, 0xee, 0, 1, 0x2a, 0xff]), "ee:ee:00:01:2a:ff");
    }

    #[test]
    fn loopback_is_found_in_the_plugins_own_namespace() {
        let lo = interfaces().expect("getifaddrs");
        assert!(lo.iter().any(|i| i.name == "lo"), "{lo:?}");
    }
}
