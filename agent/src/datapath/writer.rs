//! Applies desired [`MapContents`] to the pinned maps by difference.
//!
//! The writer remembers what it believes the maps hold (read back from the
//! pinned maps at start, so a restarted agent rewrites nothing that is
//! already right) and writes only the entries that differ, in an order that
//! never exposes a half-made change: allow entries before the endpoint flag
//! that enforces them, backend slots before the count that makes them
//! reachable; removals in the reverse order. A failed write is counted and
//! retried on the next apply; it never clears a map. After a write that
//! changed the policy maps it bumps the policy generation in the node
//! config, so the programs check every remembered verdict again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};

use super::loader::Loaded;
use super::state::{MapContents, MapDiffs};
use crate::{Error, Result};
use knit_datapath_common::{
    BackendKey, BackendValue, CT_GENERATION_BITS, CtKey, CtValue, DropReason, EncryptionConfig,
    EndpointValue, IpcacheValue, MAP_BACKENDS, MAP_CONFIG, MAP_CT, MAP_DROPS, MAP_ENCRYPTION, MAP_ENDPOINTS,
    MAP_IPCACHE, MAP_NATIVE_NODES, MAP_POLICY, MAP_POLICY_CIDR, MAP_SERVICES, MAP_WIREGUARD_NODES,
    NodeConfig, PolicyCidrKey, PolicyKey, ServiceKey, ServiceValue, addr_be,
};

/// The agent's handle on the datapath maps.
pub struct MapWriter {
    ipcache: LpmTrie<MapData, u32, IpcacheValue>,
    endpoints: BpfHashMap<MapData, u32, EndpointValue>,
    policy: BpfHashMap<MapData, PolicyKey, u8>,
    policy_cidr: LpmTrie<MapData, PolicyCidrKey, u8>,
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    backends: BpfHashMap<MapData, BackendKey, BackendValue>,
    config: Array<MapData, NodeConfig>,
    node_config: NodeConfig,
    encryption: Array<MapData, EncryptionConfig>,
    wireguard_nodes: BpfHashMap<MapData, u32, u32>,
    native_nodes: BpfHashMap<MapData, u32, u32>,
    /// What `native_nodes` holds (wire-order address → `NATIVE_PATH_*`).
    native_paths: BTreeMap<u32, u32>,
    /// What `wireguard_nodes` holds (wire-order addresses).
    keyed_nodes: BTreeSet<u32>,
    drops: Array<MapData, u64>,
    conntrack: BpfHashMap<MapData, CtKey, CtValue>,
    current: MapContents,
}

/// What one apply did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entries written.
    pub written: usize,
    /// Entries deleted.
    pub deleted: usize,
    /// Writes or deletes that failed (retried next time).
    pub failed: usize,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(loaded: &mut Loaded, name: &str) -> Result<T> {
    let map = loaded
        .ebpf
        .take_map(name)
        .ok_or_else(|| Error::MissingMap(name.to_owned()))?;
    T::try_from(map).map_err(|e| Error::map(name, e))
}

impl MapWriter {
    /// Takes the maps out of `loaded` and reads what they already hold.
    pub fn new(loaded: &mut Loaded) -> Result<Self> {
        let mut w = Self {
            ipcache: take(loaded, MAP_IPCACHE)?,
            endpoints: take(loaded, MAP_ENDPOINTS)?,
            policy: take(loaded, MAP_POLICY)?,
            policy_cidr: take(loaded, MAP_POLICY_CIDR)?,
            services: take(loaded, MAP_SERVICES)?,
            backends: take(loaded, MAP_BACKENDS)?,
            config: take(loaded, MAP_CONFIG)?,
            node_config: NodeConfig::default(),
            encryption: take(loaded, MAP_ENCRYPTION)?,
            wireguard_nodes: take(loaded, MAP_WIREGUARD_NODES)?,
            keyed_nodes: BTreeSet::new(),
            native_nodes: take(loaded, MAP_NATIVE_NODES)?,
            native_paths: BTreeMap::new(),
            drops: take(loaded, MAP_DROPS)?,
            conntrack: take(loaded, MAP_CT)?,
            current: MapContents::default(),
        };
        // The generation goes on from where the last agent left it: the
        // verdicts it stamped stay valid across a restart.
        w.node_config = w.config.get(&0, 0).map_err(|e| Error::map(MAP_CONFIG, e))?;
        for entry in w.ipcache.iter() {
            let (k, v) = entry.map_err(|e| Error::map(MAP_IPCACHE, e))?;
            w.current.ipcache.insert((k.prefix_len(), k.data()), v);
        }
        for entry in w.policy_cidr.iter() {
            let (k, v) = entry.map_err(|e| Error::map(MAP_POLICY_CIDR, e))?;
            w.current.policy_cidr.insert((k.prefix_len(), k.data()), v);
        }
        for key in w.wireguard_nodes.keys() {
            w.keyed_nodes
                .insert(key.map_err(|e| Error::map(MAP_WIREGUARD_NODES, e))?);
        }
        for entry in w.native_nodes.iter() {
            let (k, v) = entry.map_err(|e| Error::map(MAP_NATIVE_NODES, e))?;
            w.native_paths.insert(k, v);
        }
        w.current.endpoints = read(&w.endpoints, MAP_ENDPOINTS)?;
        w.current.policy = read(&w.policy, MAP_POLICY)?;
        w.current.services = read(&w.services, MAP_SERVICES)?;
        w.current.backends = read(&w.backends, MAP_BACKENDS)?;
        Ok(w)
    }

    /// What the maps hold, as far as the writer knows.
    pub fn current(&self) -> &MapContents {
        &self.current
    }

    /// Sets the node's tunnel device.
    pub fn set_tunnel(&mut self, tunnel_ifindex: u32) -> Result<()> {
        self.node_config.tunnel_ifindex = tunnel_ifindex;
        self.config
            .set(0, self.node_config, 0)
            .map_err(|e| Error::map(MAP_CONFIG, e))
    }

    /// What `from_tunnel` takes only decrypted (`REQUIRE_DECRYPTED_*`).
    pub fn set_require_decrypted(&mut self, require_decrypted: u32) -> Result<()> {
        let config = EncryptionConfig { require_decrypted };
        self.encryption
            .set(0, config, 0)
            .map_err(|e| Error::map(MAP_ENCRYPTION, e))
    }

    /// Puts the nodes with a WireGuard key (their tunnel endpoints) in
    /// the map, adding before removing.
    pub fn set_wireguard_nodes(&mut self, nodes: &BTreeSet<Ipv4Addr>) -> Result<()> {
        let wanted: BTreeSet<u32> = nodes.iter().map(|ip| addr_be(*ip)).collect();
        for addr in wanted.difference(&self.keyed_nodes) {
            self.wireguard_nodes
                .insert(addr, 1, 0)
                .map_err(|e| Error::map(MAP_WIREGUARD_NODES, e))?;
        }
        for addr in self.keyed_nodes.difference(&wanted) {
            self.wireguard_nodes
                .remove(addr)
                .map_err(|e| Error::map(MAP_WIREGUARD_NODES, e))?;
        }
        self.keyed_nodes = wanted;
        Ok(())
    }

    /// Makes `knit_native_nodes` hold `paths` (tunnel endpoint →
    /// `NATIVE_PATH_*`), writing before removing.
    pub fn set_native_paths(&mut self, paths: &BTreeMap<Ipv4Addr, u32>) -> Result<()> {
        let wanted: BTreeMap<u32, u32> = paths.iter().map(|(ip, p)| (addr_be(*ip), *p)).collect();
        for (addr, path) in &wanted {
            if self.native_paths.get(addr) != Some(path) {
                self.native_nodes
                    .insert(addr, path, 0)
                    .map_err(|e| Error::map(MAP_NATIVE_NODES, e))?;
            }
        }
        for addr in self.native_paths.keys().filter(|a| !wanted.contains_key(a)) {
            self.native_nodes
                .remove(addr)
                .map_err(|e| Error::map(MAP_NATIVE_NODES, e))?;
        }
        self.native_paths = wanted;
        Ok(())
    }

    /// The generation of the policy maps (bumped after every change).
    pub fn policy_generation(&self) -> u32 {
        self.node_config.policy_generation
    }

    /// Tuples the connection tracking holds now (live or not yet evicted):
    /// a walk over the map's keys, so called every 10 s, not per
    /// change.
    pub fn conntrack_entries(&self) -> usize {
        self.conntrack.keys().filter(|k| k.is_ok()).count()
    }

    /// Drop counters by reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.drops.get(&(*r as u32), 0).unwrap_or(0)))
            .collect()
    }

    /// Makes the maps hold `desired`, touching only entries that differ.
    pub fn apply(&mut self, desired: &MapContents) -> ApplyReport {
        let diffs = MapDiffs::between(&self.current, desired);
        self.write(diffs)
    }

    /// Writes `diffs` (computed against [`MapWriter::current`]) in the
    /// order that never exposes a half-made change.
    pub fn write(&mut self, diffs: MapDiffs) -> ApplyReport {
        let mut report = ApplyReport::default();
        let policy_changed = !(diffs.policy.upserts.is_empty()
            && diffs.policy.removes.is_empty()
            && diffs.policy_cidr.upserts.is_empty()
            && diffs.policy_cidr.removes.is_empty());
        let cur = &mut self.current;
        let MapDiffs {
            ipcache,
            endpoints,
            policy,
            policy_cidr,
            services,
            backends,
        } = diffs;

        let lpm = |k: &(u32, u32)| Key::new(k.0, k.1);
        upsert(&mut report, &mut cur.ipcache, ipcache.upserts, |k, v| {
            self.ipcache.insert(&lpm(k), v, 0)
        });
        upsert(&mut report, &mut cur.policy, policy.upserts, |k, v| {
            self.policy.insert(k, v, 0)
        });
        upsert(&mut report, &mut cur.policy_cidr, policy_cidr.upserts, |k, v| {
            self.policy_cidr.insert(&Key::new(k.0, k.1), v, 0)
        });
        upsert(&mut report, &mut cur.endpoints, endpoints.upserts, |k, v| {
            self.endpoints.insert(k, v, 0)
        });
        upsert(&mut report, &mut cur.backends, backends.upserts, |k, v| {
            self.backends.insert(k, v, 0)
        });
        upsert(&mut report, &mut cur.services, services.upserts, |k, v| {
            self.services.insert(k, v, 0)
        });
        remove(&mut report, &mut cur.services, services.removes, |k| {
            self.services.remove(k)
        });
        remove(&mut report, &mut cur.backends, backends.removes, |k| {
            self.backends.remove(k)
        });
        remove(&mut report, &mut cur.endpoints, endpoints.removes, |k| {
            self.endpoints.remove(k)
        });
        remove(&mut report, &mut cur.policy, policy.removes, |k| {
            self.policy.remove(k)
        });
        remove(&mut report, &mut cur.policy_cidr, policy_cidr.removes, |k| {
            self.policy_cidr.remove(&Key::new(k.0, k.1))
        });
        remove(&mut report, &mut cur.ipcache, ipcache.removes, |k| {
            self.ipcache.remove(&lpm(k))
        });
        if policy_changed {
            let mut config = self.node_config;
            config.policy_generation = (config.policy_generation + 1) & ((1 << CT_GENERATION_BITS) - 1);
            match self.config.set(0, config, 0) {
                Ok(()) => self.node_config = config,
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(error = %e, "policy generation write failed; retrying on the next change");
                }
            }
        }
        report
    }
}

fn read<K: aya::Pod + Eq + Hash, V: aya::Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &str,
) -> Result<HashMap<K, V>> {
    map.iter().map(|e| e.map_err(|e| Error::map(name, e))).collect()
}

fn upsert<K: Eq + Hash + Clone, V: Clone>(
    report: &mut ApplyReport,
    current: &mut HashMap<K, V>,
    entries: Vec<(K, V)>,
    mut write: impl FnMut(&K, V) -> std::result::Result<(), MapError>,
) {
    for (k, v) in entries {
        match write(&k, v.clone()) {
            Ok(()) => {
                current.insert(k, v);
                report.written += 1;
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(error = %e, "datapath map write failed; retrying on the next change");
            }
        }
    }
}

fn remove<K: Eq + Hash, V>(
    report: &mut ApplyReport,
    current: &mut HashMap<K, V>,
    keys: Vec<K>,
    mut delete: impl FnMut(&K) -> std::result::Result<(), MapError>,
) {
    for k in keys {
        match delete(&k) {
            Ok(()) => {
                current.remove(&k);
                report.deleted += 1;
            }
            Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
                current.remove(&k);
                report.deleted += 1;
            }
            Err(e) => {
                report.failed += 1;
                tracing::warn!(error = %e, "datapath map delete failed; retrying on the next change");
            }
        }
    }
}
