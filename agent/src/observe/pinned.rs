//! What the kernel holds: the datapath's maps read through their pins
//! (`<pin dir>/maps/<name>`), into the same [`MapContents`] the agent
//! renders, so the two compare entry by entry. Read-only, and independent
//! of the agent's own handles: what this returns is what the programs see.

use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{HashMap, Map, MapData};
use knit_datapath_common::{
    BackendKey, BackendValue, EndpointValue, IpcacheValue, MAP_BACKENDS, MAP_ENDPOINTS, MAP_IPCACHE,
    MAP_POLICY, MAP_POLICY_CIDR, MAP_SERVICES, PolicyCidrKey, PolicyKey, ServiceKey, ServiceValue,
};

use crate::datapath::state::MapContents;
use crate::{Error, Result};

/// Which maps to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    /// `knit_services` and `knit_backends`.
    pub services: bool,
    /// `knit_ipcache`.
    pub ipcache: bool,
    /// `knit_endpoints`.
    pub endpoints: bool,
    /// `knit_policy` and `knit_policy_cidr`.
    pub policy: bool,
}

fn open(pin_dir: &Path, name: &str) -> Result<Map> {
    let data = MapData::from_pin(pin_dir.join("maps").join(name)).map_err(|e| Error::map(name, e))?;
    Map::from_map_data(data).map_err(|e| Error::map(name, e))
}

fn hash<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    pin_dir: &Path,
    name: &str,
) -> Result<std::collections::HashMap<K, V>> {
    let map: HashMap<MapData, K, V> = open(pin_dir, name)?.try_into().map_err(|e| Error::map(name, e))?;
    map.iter()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::map(name, e))
}

/// The maps of `tables` as the kernel holds them; the others left empty.
pub fn read(pin_dir: &Path, tables: Tables) -> Result<MapContents> {
    let mut out = MapContents::default();
    if tables.services {
        out.services = hash::<ServiceKey, ServiceValue>(pin_dir, MAP_SERVICES)?;
        out.backends = hash::<BackendKey, BackendValue>(pin_dir, MAP_BACKENDS)?;
    }
    if tables.endpoints {
        out.endpoints = hash::<u32, EndpointValue>(pin_dir, MAP_ENDPOINTS)?;
    }
    if tables.policy {
        out.policy = hash::<PolicyKey, u8>(pin_dir, MAP_POLICY)?;
        let trie: LpmTrie<MapData, PolicyCidrKey, u8> = open(pin_dir, MAP_POLICY_CIDR)?
            .try_into()
            .map_err(|e| Error::map(MAP_POLICY_CIDR, e))?;
        for entry in trie.iter() {
            let (key, value) = entry.map_err(|e| Error::map(MAP_POLICY_CIDR, e))?;
            out.policy_cidr.insert((key.prefix_len(), key.data()), value);
        }
    }
    if tables.ipcache {
        let trie: LpmTrie<MapData, u32, IpcacheValue> = open(pin_dir, MAP_IPCACHE)?
            .try_into()
            .map_err(|e| Error::map(MAP_IPCACHE, e))?;
        for entry in trie.iter() {
            let (key, value) = entry.map_err(|e| Error::map(MAP_IPCACHE, e))?;
            out.ipcache.insert((key.prefix_len(), key.data()), value);
        }
    }
    Ok(out)
}
