//! A partial render as map entries: [`StatePatch`] (routes and service
//! frontends that changed, from [`crate::incremental`]) becomes the
//! [`MapDiffs`] that bring the maps from what they hold to the patched
//! state, in time proportional to the patch, never to the maps.
//!
//! Service IDs come from [`ServiceIds`], which keeps the free IDs so a new
//! frontend gets one without scanning the ones in use. A frontend keeps its
//! ID for its lifetime, as in [`super::state::to_map_contents`]; IDs a
//! patch releases are reused only by a later patch, so no backend slot is
//! both written and deleted in one write.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddrV4;

use ipnet::Ipv4Net;
use knit_datapath_common::{
    BackendKey, BackendValue, IpcacheValue, ServiceKey, ServiceValue, addr_be, port_be,
};

use super::state::{Frontend, MapContents, MapDiffs, Route, service_key};

/// Routes and service frontends to change; `None` removes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatePatch {
    /// ipcache prefixes.
    pub routes: Vec<(Ipv4Net, Option<Route>)>,
    /// Frontends and the backends new connections may use.
    pub services: Vec<(Frontend, Option<Vec<SocketAddrV4>>)>,
}

impl StatePatch {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty() && self.services.is_empty()
    }
}

/// Service IDs not in use: released ones, then the ones above every ID
/// ever handed out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceIds {
    free: BTreeSet<u32>,
    next: u32,
}

impl ServiceIds {
    /// The free IDs given the services the maps hold.
    pub fn of(services: &HashMap<ServiceKey, ServiceValue>) -> Self {
        let used: BTreeSet<u32> = services.values().map(|v| v.service_id).collect();
        let next = used.last().map_or(1, |m| m + 1);
        Self {
            free: (1..next).filter(|id| !used.contains(id)).collect(),
            next,
        }
    }

    /// The lowest free ID.
    fn take(&mut self) -> u32 {
        self.free.pop_first().unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        })
    }

    fn give_back(&mut self, id: u32) {
        self.free.insert(id);
    }
}

/// The entries that turn `current` into `current` with `patch` applied;
/// only entries whose value changes are written.
pub fn patch_entries(patch: &StatePatch, current: &MapContents, ids: &mut ServiceIds) -> MapDiffs {
    let mut out = MapDiffs::default();
    for (net, route) in &patch.routes {
        let key = (u32::from(net.prefix_len()), addr_be(net.network()));
        match route {
            Some(r) => {
                let value = IpcacheValue {
                    identity: r.identity,
                    tunnel_endpoint: r.tunnel.map(addr_be).unwrap_or(0),
                };
                if current.ipcache.get(&key) != Some(&value) {
                    out.ipcache.upserts.push((key, value));
                }
            }
            None if current.ipcache.contains_key(&key) => out.ipcache.removes.push(key),
            None => {}
        }
    }
    let mut released = Vec::new();
    for (frontend, backends) in &patch.services {
        let key = service_key(frontend);
        let old = current.services.get(&key).copied();
        let Some(backends) = backends else {
            if let Some(old) = old {
                out.services.removes.push(key);
                out.backends.removes.extend((0..old.count).map(|slot| BackendKey {
                    service_id: old.service_id,
                    slot,
                }));
                released.push(old.service_id);
            }
            continue;
        };
        let service_id = old.map_or_else(|| ids.take(), |o| o.service_id);
        for (slot, b) in backends.iter().enumerate() {
            let k = BackendKey {
                service_id,
                slot: slot as u32,
            };
            let v = BackendValue {
                addr: addr_be(*b.ip()),
                port: port_be(b.port()),
                pad: 0,
            };
            if current.backends.get(&k) != Some(&v) {
                out.backends.upserts.push((k, v));
            }
        }
        let count = backends.len() as u32;
        if let Some(old) = old {
            out.backends
                .removes
                .extend((count..old.count).map(|slot| BackendKey { service_id, slot }));
        }
        let value = ServiceValue { service_id, count };
        if old != Some(value) {
            out.services.upserts.push((key, value));
        }
    }
    for id in released {
        ids.give_back(id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::state::{DatapathState, PROTO_TCP, to_map_contents};

    fn frontend(i: u8) -> Frontend {
        Frontend {
            vip: [10, 96, 0, i].into(),
            port: 80,
            proto: PROTO_TCP,
        }
    }

    fn backends(n: u8) -> Vec<SocketAddrV4> {
        (1..=n)
            .map(|i| SocketAddrV4::new([10, 64, 0, i].into(), 8080))
            .collect()
    }

    #[test]
    fn a_patch_writes_what_a_full_conversion_would_and_nothing_else() {
        let mut state = DatapathState::default();
        for i in 1..=3 {
            state.services.insert(frontend(i), backends(i));
        }
        let (mut maps, _) = to_map_contents(&state, &HashMap::new(), &HashMap::new());
        let mut ids = ServiceIds::of(&maps.services);

        // Service 2 loses a backend, 3 goes away, 4 appears.
        let patch = StatePatch {
            routes: Vec::new(),
            services: vec![
                (frontend(2), Some(backends(1))),
                (frontend(3), None),
                (frontend(4), Some(backends(2))),
            ],
        };
        let diffs = patch_entries(&patch, &maps, &mut ids);
        // 2: count rewritten, slot 1 deleted; 3: service and 3 slots
        // deleted; 4: service and 2 slots written.
        assert_eq!(diffs.len(), 2 + 4 + 3);
        assert!(
            diffs
                .backends
                .removes
                .iter()
                .all(|k| !diffs.backends.upserts.iter().any(|(u, _)| u == k)),
            "a released ID is not reused within the same write"
        );
        maps.apply(&diffs);

        state.services.insert(frontend(2), backends(1));
        state.services.remove(&frontend(3));
        state.services.insert(frontend(4), backends(2));
        let (full, _) = to_map_contents(&state, &HashMap::new(), &maps.services);
        assert_eq!(maps, full, "the patched maps are what a full conversion gives");

        // Service 4 took a fresh ID (4); the one service 3 released (3)
        // goes to the next new frontend.
        assert_eq!(maps.services[&service_key(&frontend(4))].service_id, 4);
        let diffs = patch_entries(
            &StatePatch {
                routes: Vec::new(),
                services: vec![(frontend(5), Some(backends(1)))],
            },
            &maps,
            &mut ids,
        );
        assert_eq!(diffs.services.upserts[0].1.service_id, 3, "{diffs:?}");
    }

    #[test]
    fn unchanged_entries_are_not_written() {
        let mut state = DatapathState::default();
        state.services.insert(frontend(1), backends(2));
        let (maps, _) = to_map_contents(&state, &HashMap::new(), &HashMap::new());
        let mut ids = ServiceIds::of(&maps.services);
        let patch = StatePatch {
            routes: Vec::new(),
            services: vec![(frontend(1), Some(backends(2)))],
        };
        assert!(patch_entries(&patch, &maps, &mut ids).is_empty());
    }
}
