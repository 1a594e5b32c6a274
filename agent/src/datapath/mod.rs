//! The node's eBPF datapath: programs in `ebpf/knit.bpf.c`, maps laid out
//! as in [`knit_datapath_common`], desired contents in [`state`], loading and attaching in
//! [`loader`], difference writes in [`writer`], partial renders as entries
//! in [`patch`]. [`Datapath`] ties them together for the agent: one call
//! per change with the desired state and the current interface indexes, or
//! with a patch.

pub mod features;
pub mod loader;
pub mod patch;
pub mod state;
pub mod tc;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use aya::maps::{Array, MapData, RingBuf};
use aya::programs::TcAttachType;
use knit_datapath_common::{
    MAP_EVENTS, MAP_EVENTS_LOST, MAP_OBSERVE, ObserveConfig, PROG_FROM_NETDEV, PROG_FROM_POD,
    PROG_FROM_TUNNEL, PROG_FROM_WIREGUARD, PROG_TO_POD, REQUIRE_DECRYPTED_ALWAYS,
    REQUIRE_DECRYPTED_FROM_KEYED, REQUIRE_DECRYPTED_NEVER,
};
use loader::Loaded;
use patch::{ServiceIds, StatePatch, patch_entries};
use state::{DatapathState, Link, Unplaced, to_map_contents};
use tc::{TcAttach, TcMode};
use writer::{ApplyReport, MapWriter};

use crate::{Error, Result};

/// Prefix of the pinned tc ingress links on pod interfaces (`from_pod`).
const POD_LINK_PREFIX: &str = "pod-";
/// Prefix of the pinned tc egress links on pod interfaces (`to_pod`).
const POD_EGRESS_LINK_PREFIX: &str = "podout-";
/// Name of the pinned tc link on the tunnel device.
const TUNNEL_LINK: &str = "tunnel";
/// Name of the pinned tc link on the WireGuard interface.
const WIREGUARD_LINK: &str = "wireguard";
/// Name of the pinned tc link on the underlay interface (native routing).
const NETDEV_LINK: &str = "netdev";

/// The loaded, attached datapath of one node.
pub struct Datapath {
    loaded: Loaded,
    writer: MapWriter,
    /// Service IDs free for patches (rebuilt after every full apply).
    ids: ServiceIds,
    /// Pod interfaces with a pinned link, and the ifindex it was made for
    /// (0: found pinned at start, not yet refreshed).
    attached_pods: BTreeMap<String, u32>,
}

impl Datapath {
    /// Loads the programs (reusing pinned maps and links under `pin_dir`),
    /// attaching tc programs as `tc_attach` resolves on this kernel,
    /// attaches the tunnel program to `tunnel` (ifindex `tunnel_ifindex`)
    /// and, when given, the socket programs to the cgroup v2 directory
    /// `cgroup`.
    pub fn start(
        pin_dir: &Path,
        tc_attach: TcAttach,
        tunnel: &str,
        tunnel_ifindex: u32,
        cgroup: Option<&Path>,
    ) -> Result<Self> {
        let mut loaded = loader::load(pin_dir, tc_attach)?;
        let mut writer = MapWriter::new(&mut loaded)?;
        writer.set_tunnel(tunnel_ifindex)?;
        loaded.attach_tc(PROG_FROM_TUNNEL, tunnel, TcAttachType::Ingress, TUNNEL_LINK)?;
        if let Some(cgroup) = cgroup {
            loaded.attach_cgroup(cgroup)?;
        }
        let attached_pods = loaded
            .pinned_links()?
            .into_iter()
            .filter_map(|n| n.strip_prefix(POD_LINK_PREFIX).map(|i| (i.to_owned(), 0)))
            .collect();
        let ids = ServiceIds::of(&writer.current().services);
        Ok(Self {
            loaded,
            writer,
            ids,
            attached_pods,
        })
    }

    /// Makes the maps hold `desired` and the pod program sit on every local
    /// endpoint's interface. `interfaces` maps names to indexes.
    pub fn apply(
        &mut self,
        desired: &DatapathState,
        interfaces: &HashMap<String, Link>,
    ) -> Result<(ApplyReport, Unplaced)> {
        let (contents, unplaced) = to_map_contents(desired, interfaces, &self.writer.current().services);
        let wanted: BTreeMap<&str, u32> = desired
            .endpoints
            .values()
            .filter(|e| e.mac.is_some())
            .filter_map(|e| Some((e.interface.as_str(), interfaces.get(&e.interface)?.index)))
            .collect();
        // Entries first, so the program finds its endpoint when it starts
        // seeing the pod's packets.
        let report = self.writer.apply(&contents);
        self.ids = ServiceIds::of(&self.writer.current().services);
        // A pod re-created under the same interface name has a new ifindex
        // and its old link is defunct: attach again.
        for (iface, ifindex) in &wanted {
            if self.attached_pods.get(*iface) != Some(ifindex) {
                self.loaded.attach_tc(
                    PROG_FROM_POD,
                    iface,
                    TcAttachType::Ingress,
                    &format!("{POD_LINK_PREFIX}{iface}"),
                )?;
                self.loaded.attach_tc(
                    PROG_TO_POD,
                    iface,
                    TcAttachType::Egress,
                    &format!("{POD_EGRESS_LINK_PREFIX}{iface}"),
                )?;
                self.attached_pods.insert((*iface).to_owned(), *ifindex);
            }
        }
        let stale: Vec<String> = self
            .attached_pods
            .keys()
            .filter(|i| !wanted.contains_key(i.as_str()))
            .cloned()
            .collect();
        for iface in stale {
            self.loaded.detach(&format!("{POD_LINK_PREFIX}{iface}"))?;
            self.loaded.detach(&format!("{POD_EGRESS_LINK_PREFIX}{iface}"))?;
            self.attached_pods.remove(&iface);
        }
        Ok((report, unplaced))
    }

    /// With `Some(interface)` (encryption on), marks what the WireGuard
    /// `interface` decrypted and has the tunnel program take nothing else:
    /// from any sender when `strict`, else from the nodes with a key
    /// ([`Self::set_wireguard_nodes`]). With `None`, takes every sender the
    /// ipcache places again. The program goes on before the requirement,
    /// so no decrypted packet is dropped in between.
    pub fn require_decrypted_tunnel(&mut self, wireguard: Option<&str>, strict: bool) -> Result<()> {
        match wireguard {
            Some(interface) => {
                self.loaded.attach_tc(
                    PROG_FROM_WIREGUARD,
                    interface,
                    TcAttachType::Ingress,
                    WIREGUARD_LINK,
                )?;
                self.writer.set_require_decrypted(if strict {
                    REQUIRE_DECRYPTED_ALWAYS
                } else {
                    REQUIRE_DECRYPTED_FROM_KEYED
                })
            }
            None => {
                self.writer.set_require_decrypted(REQUIRE_DECRYPTED_NEVER)?;
                self.writer.set_wireguard_nodes(&Default::default())?;
                self.loaded.detach(WIREGUARD_LINK)
            }
        }
    }

    /// The nodes (tunnel endpoints) with a WireGuard key: outside strict
    /// mode, the tunnel program takes their packets only decrypted.
    pub fn set_wireguard_nodes(
        &mut self,
        nodes: &std::collections::BTreeSet<std::net::Ipv4Addr>,
    ) -> Result<()> {
        self.writer.set_wireguard_nodes(nodes)
    }

    /// With `Some(interface)` (native or hybrid routing), delivers what
    /// pods of other nodes send natively to the underlay `interface`
    /// straight to the local pod; with `None`, takes the program off.
    pub fn receive_natively(&mut self, interface: Option<&str>) -> Result<()> {
        match interface {
            Some(interface) => {
                self.loaded
                    .attach_tc(PROG_FROM_NETDEV, interface, TcAttachType::Ingress, NETDEV_LINK)
            }
            None => self.loaded.detach(NETDEV_LINK),
        }
    }

    /// The nodes reached without the tunnel (tunnel endpoint →
    /// `NATIVE_PATH_*`), [`crate::routing::native_paths`].
    pub fn set_native_paths(&mut self, paths: &BTreeMap<std::net::Ipv4Addr, u32>) -> Result<()> {
        self.writer.set_native_paths(paths)
    }

    /// Writes what a partial render changed (routes and frontends only;
    /// pod interfaces are the full apply's).
    pub fn apply_patch(&mut self, patch: &StatePatch) -> ApplyReport {
        let diffs = patch_entries(patch, self.writer.current(), &mut self.ids);
        self.writer.write(diffs)
    }

    /// The way tc programs are attached on this node.
    pub fn tc_mode(&self) -> TcMode {
        self.loaded.tc_mode()
    }

    /// Entries per map.
    pub fn map_sizes(&self) -> [(&'static str, usize); 6] {
        self.writer.current().sizes()
    }

    /// Tuples the connection tracking holds now ([`MapWriter::conntrack_entries`]).
    pub fn conntrack_entries(&self) -> usize {
        self.writer.conntrack_entries()
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        self.writer.drops()
    }

    /// Makes the programs emit flow events of `kinds` (`EVENT_*`; none
    /// for an empty list).
    pub fn observe(&mut self, kinds: &[u8]) -> Result<()> {
        let map = self
            .loaded
            .ebpf
            .map_mut(MAP_OBSERVE)
            .ok_or_else(|| Error::MissingMap(MAP_OBSERVE.to_owned()))?;
        let mut config: Array<&mut MapData, ObserveConfig> =
            Array::try_from(map).map_err(|e| Error::map(MAP_OBSERVE, e))?;
        let events = kinds.iter().fold(0u32, |m, k| m | (1 << k));
        config
            .set(0, ObserveConfig { events }, 0)
            .map_err(|e| Error::map(MAP_OBSERVE, e))
    }

    /// The ring buffer of flow events and the count of those it lost,
    /// taken out for the reader (once).
    pub fn take_events(&mut self) -> Result<(RingBuf<MapData>, Array<MapData, u64>)> {
        let mut take = |name: &str| {
            self.loaded
                .ebpf
                .take_map(name)
                .ok_or_else(|| Error::MissingMap(name.to_owned()))
        };
        let ring = RingBuf::try_from(take(MAP_EVENTS)?).map_err(|e| Error::map(MAP_EVENTS, e))?;
        let lost = Array::try_from(take(MAP_EVENTS_LOST)?).map_err(|e| Error::map(MAP_EVENTS_LOST, e))?;
        Ok((ring, lost))
    }

    /// What the agent last wrote to the maps.
    pub fn rendered(&self) -> &state::MapContents {
        self.writer.current()
    }
}
