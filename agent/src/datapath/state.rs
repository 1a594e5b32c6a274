//! What the datapath should hold, in two forms.
//!
//! [`DatapathState`] is the agent's desired state in its own words (routes,
//! local endpoints by interface name, service frontends with backend
//! addresses, allow and deny entries); the render produces it without I/O.
//! [`MapContents`] is the same thing as raw map entries, after interface
//! names are resolved to indexes and frontends get their stable service
//! IDs. [`diff`] compares two map contents entry by entry, so the writer only
//! touches what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use knit_datapath_common::{
    BackendKey, BackendValue, ENDPOINT_F_EGRESS, ENDPOINT_F_POLICY, EndpointValue, IpcacheValue,
    POLICY_ALLOW, POLICY_DENY, POLICY_EGRESS, POLICY_INGRESS, PolicyCidrKey, PolicyKey, ServiceKey,
    ServiceValue, addr_be, port_be,
};

/// IP protocol numbers the datapath knows.
pub const PROTO_TCP: u8 = 6;
/// UDP.
pub const PROTO_UDP: u8 = 17;

/// Where packets for a prefix go and who sends from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Security identity (0 when only the prefix's node is known).
    pub identity: u32,
    /// Underlay address of the hosting node; `None` on this node.
    pub tunnel: Option<Ipv4Addr>,
}

/// A pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// Host side of the pod's veth (from the pod's CNI result).
    pub interface: String,
    /// MAC of the pod's interface (from the pod's CNI result).
    pub mac: Option<[u8; 6]>,
    /// MAC of the host side; the interface's own when the CNI result has
    /// none.
    pub node_mac: Option<[u8; 6]>,
    /// The pod's identity.
    pub identity: u32,
    /// A NetworkPolicy selects the pod: ingress needs an allow entry.
    pub policy_enforced: bool,
    /// A NetworkPolicy selects the pod for egress: what it sends needs an
    /// allow entry.
    pub egress_enforced: bool,
}

/// Which way a policy entry applies, seen from the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Direction {
    /// What reaches the pod.
    #[default]
    Ingress,
    /// What the pod sends.
    Egress,
}

impl Direction {
    fn raw(self) -> u8 {
        match self {
            Self::Ingress => POLICY_INGRESS,
            Self::Egress => POLICY_EGRESS,
        }
    }
}

/// One policy entry by address prefix (an ipBlock, `except` ranges already
/// cut out; an allow prefix also has the deny prefixes of its port cut
/// out); zero port or protocol is a wildcard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrEntry {
    /// The selected pod.
    pub endpoint: Ipv4Addr,
    /// Ingress or egress.
    pub direction: Direction,
    /// The peer's prefix.
    pub peer: Ipv4Net,
    /// Destination port (0 = any).
    pub port: u16,
    /// Protocol (0 = any).
    pub proto: u8,
}

/// A Service address clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// ClusterIP.
    pub vip: Ipv4Addr,
    /// Service port.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
}

/// One policy entry by peer identity; zero fields are wildcards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// The selected pod.
    pub endpoint: Ipv4Addr,
    /// Peer identity (0 = any).
    pub identity: u32,
    /// Destination port (0 = any).
    pub port: u16,
    /// Protocol (0 = any).
    pub proto: u8,
    /// Ingress (the identity is the source) or egress (the destination).
    pub direction: Direction,
}

/// The desired datapath of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DatapathState {
    /// ipcache.
    pub routes: BTreeMap<Ipv4Net, Route>,
    /// Pods on this node by IP.
    pub endpoints: BTreeMap<Ipv4Addr, LocalEndpoint>,
    /// Service frontends and the backends new connections may use.
    pub services: BTreeMap<Frontend, Vec<SocketAddrV4>>,
    /// Allow entries of policy-enforced pods, by peer identity.
    pub allow: BTreeSet<PolicyEntry>,
    /// Allow entries of policy-enforced pods, by peer address (ipBlock).
    pub cidr_allow: BTreeSet<CidrEntry>,
    /// Deny entries (Cilium's `ingressDeny`/`egressDeny`), by peer
    /// identity: they win over any allow entry.
    pub deny: BTreeSet<PolicyEntry>,
    /// Deny entries by peer address.
    pub cidr_deny: BTreeSet<CidrEntry>,
    /// Policy ports that allow nothing, with why (for the log and metric;
    /// not written to any map).
    pub unsupported_policy_ports: Vec<String>,
    /// Pods whose policy entries did not fit the maps ([`fit_policy`]):
    /// isolated, with none of their entries written.
    pub policy_overflow: Vec<Ipv4Addr>,
    /// Pods attached here whose endpoint or identity the kvstore has not
    /// brought yet: isolated both ways until it does.
    pub awaiting_identity: Vec<Ipv4Addr>,
}

/// The `knit_policy` and `knit_policy_cidr` entries of `state`'s allow and
/// deny entries (deny after allow: for the same key, deny wins).
pub fn policy_map_entries(state: &DatapathState, out: &mut MapContents) {
    for (entries, verdict) in [(&state.allow, POLICY_ALLOW), (&state.deny, POLICY_DENY)] {
        for a in entries {
            let key = PolicyKey {
                endpoint: addr_be(a.endpoint),
                identity: a.identity,
                dport: a.port,
                proto: a.proto,
                direction: a.direction.raw(),
            };
            out.policy.insert(key, verdict);
        }
    }
    for (entries, verdict) in [(&state.cidr_allow, POLICY_ALLOW), (&state.cidr_deny, POLICY_DENY)] {
        for c in entries {
            let key = PolicyCidrKey {
                endpoint: addr_be(c.endpoint),
                direction: c.direction.raw(),
                proto: c.proto,
                dport: c.port,
                addr: addr_be(c.peer.network()),
            };
            out.policy_cidr
                .insert((64 + u32::from(c.peer.prefix_len()), key), verdict);
        }
    }
}

/// Makes the policy entries fit the maps (`capacity` identity entries,
/// `cidr_capacity` prefix entries) a whole pod at a time, in address
/// order: the entries of a pod that does not fit are all left out, so it
/// stays isolated in the directions its policy enforces, never half
/// written (a deny entry dropped by a full map would admit what it
/// denies). Returns those pods.
pub fn fit_policy(state: &mut DatapathState, capacity: usize, cidr_capacity: usize) -> Vec<Ipv4Addr> {
    if state.allow.len() + state.deny.len() <= capacity
        && state.cidr_allow.len() + state.cidr_deny.len() <= cidr_capacity
    {
        return Vec::new();
    }
    let mut per_pod: BTreeMap<Ipv4Addr, (usize, usize)> = BTreeMap::new();
    for e in state.allow.iter().chain(&state.deny) {
        per_pod.entry(e.endpoint).or_default().0 += 1;
    }
    for e in state.cidr_allow.iter().chain(&state.cidr_deny) {
        per_pod.entry(e.endpoint).or_default().1 += 1;
    }
    let (mut used, mut used_cidr) = (0, 0);
    let mut left_out = Vec::new();
    for (pod, (n, cidr)) in per_pod {
        if used + n <= capacity && used_cidr + cidr <= cidr_capacity {
            used += n;
            used_cidr += cidr;
        } else {
            left_out.push(pod);
        }
    }
    let out: BTreeSet<Ipv4Addr> = left_out.iter().copied().collect();
    state.allow.retain(|e| !out.contains(&e.endpoint));
    state.deny.retain(|e| !out.contains(&e.endpoint));
    state.cidr_allow.retain(|e| !out.contains(&e.endpoint));
    state.cidr_deny.retain(|e| !out.contains(&e.endpoint));
    left_out
}

/// Raw entries of every map the agent owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// `knit_ipcache`, keyed by (prefix length, wire-order address).
    pub ipcache: HashMap<(u32, u32), IpcacheValue>,
    /// `knit_endpoints`, keyed by wire-order address.
    pub endpoints: HashMap<u32, EndpointValue>,
    /// `knit_policy`.
    pub policy: HashMap<PolicyKey, u8>,
    /// `knit_policy_cidr`, keyed by (prefix length, key data).
    pub policy_cidr: HashMap<(u32, PolicyCidrKey), u8>,
    /// `knit_services`.
    pub services: HashMap<ServiceKey, ServiceValue>,
    /// `knit_backends`.
    pub backends: HashMap<BackendKey, BackendValue>,
}

impl MapContents {
    /// Entries per map, for metrics.
    pub fn sizes(&self) -> [(&'static str, usize); 6] {
        [
            ("ipcache", self.ipcache.len()),
            ("endpoints", self.endpoints.len()),
            ("policy", self.policy.len()),
            ("policy_cidr", self.policy_cidr.len()),
            ("services", self.services.len()),
            ("backends", self.backends.len()),
        ]
    }
}

/// Changes to every map the agent owns: what the writer writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiffs {
    /// `knit_ipcache`.
    pub ipcache: Diff<(u32, u32), IpcacheValue>,
    /// `knit_endpoints`.
    pub endpoints: Diff<u32, EndpointValue>,
    /// `knit_policy`.
    pub policy: Diff<PolicyKey, u8>,
    /// `knit_policy_cidr`.
    pub policy_cidr: Diff<(u32, PolicyCidrKey), u8>,
    /// `knit_services`.
    pub services: Diff<ServiceKey, ServiceValue>,
    /// `knit_backends`.
    pub backends: Diff<BackendKey, BackendValue>,
}

impl MapDiffs {
    /// Every change that turns `current` into `desired`.
    pub fn between(current: &MapContents, desired: &MapContents) -> Self {
        Self {
            ipcache: diff(&current.ipcache, &desired.ipcache),
            endpoints: diff(&current.endpoints, &desired.endpoints),
            policy: diff(&current.policy, &desired.policy),
            policy_cidr: diff(&current.policy_cidr, &desired.policy_cidr),
            services: diff(&current.services, &desired.services),
            backends: diff(&current.backends, &desired.backends),
        }
    }

    /// Entries written or deleted.
    pub fn len(&self) -> usize {
        fn n<K, V>(d: &Diff<K, V>) -> usize {
            d.upserts.len() + d.removes.len()
        }
        n(&self.ipcache)
            + n(&self.endpoints)
            + n(&self.policy)
            + n(&self.policy_cidr)
            + n(&self.services)
            + n(&self.backends)
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl MapContents {
    /// Applies `d` to these contents (what a writer whose every write
    /// succeeds ends up holding).
    pub fn apply(&mut self, d: &MapDiffs) {
        fn one<K: Eq + Hash + Clone, V: Clone>(map: &mut HashMap<K, V>, d: &Diff<K, V>) {
            map.extend(d.upserts.iter().cloned());
            for k in &d.removes {
                map.remove(k);
            }
        }
        one(&mut self.ipcache, &d.ipcache);
        one(&mut self.endpoints, &d.endpoints);
        one(&mut self.policy, &d.policy);
        one(&mut self.policy_cidr, &d.policy_cidr);
        one(&mut self.services, &d.services);
        one(&mut self.backends, &d.backends);
    }
}

/// What [`to_map_contents`] could not place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unplaced {
    /// Endpoints whose interface does not exist (yet), or whose pod MAC is
    /// unknown.
    pub missing_interfaces: Vec<String>,
}

/// A host interface as the node lists it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// Converts desired state into map entries. `interfaces` maps interface
/// names to indexes; `current` supplies the service IDs already in use, so
/// a frontend keeps its ID (and its backends' keys) for its lifetime.
pub fn to_map_contents(
    state: &DatapathState,
    interfaces: &HashMap<String, Link>,
    current: &HashMap<ServiceKey, ServiceValue>,
) -> (MapContents, Unplaced) {
    let mut out = MapContents::default();
    let mut unplaced = Unplaced::default();
    for (net, route) in &state.routes {
        out.ipcache.insert(
            (u32::from(net.prefix_len()), addr_be(net.network())),
            IpcacheValue {
                identity: route.identity,
                tunnel_endpoint: route.tunnel.map(addr_be).unwrap_or(0),
            },
        );
    }
    for (ip, ep) in &state.endpoints {
        let (Some(link), Some(mac)) = (interfaces.get(&ep.interface), ep.mac) else {
            unplaced.missing_interfaces.push(ep.interface.clone());
            continue;
        };
        out.endpoints.insert(
            addr_be(*ip),
            EndpointValue {
                ifindex: link.index,
                identity: ep.identity,
                flags: if ep.policy_enforced { ENDPOINT_F_POLICY } else { 0 }
                    | if ep.egress_enforced { ENDPOINT_F_EGRESS } else { 0 },
                mac,
                node_mac: ep.node_mac.unwrap_or(link.mac),
            },
        );
    }
    policy_map_entries(state, &mut out);
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let keys: Vec<(ServiceKey, &Vec<SocketAddrV4>)> =
        state.services.iter().map(|(f, b)| (service_key(f), b)).collect();
    for (key, _) in &keys {
        if let Some(v) = current.get(key) {
            used.insert(v.service_id);
        }
    }
    let mut next_free = 1u32;
    for (key, backends) in keys {
        let service_id = match current.get(&key) {
            Some(v) => v.service_id,
            None => {
                while used.contains(&next_free) {
                    next_free += 1;
                }
                used.insert(next_free);
                next_free
            }
        };
        for (slot, b) in backends.iter().enumerate() {
            out.backends.insert(
                BackendKey {
                    service_id,
                    slot: slot as u32,
                },
                BackendValue {
                    addr: addr_be(*b.ip()),
                    port: port_be(b.port()),
                    pad: 0,
                },
            );
        }
        out.services.insert(
            key,
            ServiceValue {
                service_id,
                count: backends.len() as u32,
            },
        );
    }
    (out, unplaced)
}

/// The map key of a frontend.
pub fn service_key(f: &Frontend) -> ServiceKey {
    ServiceKey {
        vip: addr_be(f.vip),
        port: port_be(f.port),
        proto: f.proto,
        pad: 0,
    }
}

/// Changes that turn one map's entries into another's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff<K, V> {
    /// Entries to insert or overwrite.
    pub upserts: Vec<(K, V)>,
    /// Keys to delete.
    pub removes: Vec<K>,
}

impl<K, V> Diff<K, V> {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }
}

impl<K, V> Default for Diff<K, V> {
    fn default() -> Self {
        Self {
            upserts: Vec::new(),
            removes: Vec::new(),
        }
    }
}

/// Entry-by-entry difference from `current` to `desired`.
pub fn diff<K: Eq + Hash + Clone, V: PartialEq + Clone>(
    current: &HashMap<K, V>,
    desired: &HashMap<K, V>,
) -> Diff<K, V> {
    let upserts = desired
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removes = current
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    Diff { upserts, removes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_entries_that_do_not_fit_leave_out_whole_pods_never_a_deny_entry() {
        let pod = |i: u8| Ipv4Addr::new(10, 1, 1, i);
        let entry = |i: u8, port: u16| PolicyEntry {
            endpoint: pod(i),
            identity: 7,
            port,
            proto: PROTO_TCP,
            direction: Direction::Ingress,
        };
        let mut s = DatapathState::default();
        s.allow.extend([
            entry(1, 80),
            entry(1, 81),
            entry(2, 80),
            entry(2, 81),
            entry(3, 80),
        ]);
        s.deny.insert(entry(2, 82));
        // Four fit: pod 1 (2 entries), not pod 2 (3 more), pod 3 (1).
        let left_out = fit_policy(&mut s, 4, 10);
        assert_eq!(left_out, [pod(2)]);
        assert!(
            s.allow.iter().chain(&s.deny).all(|e| e.endpoint != pod(2)),
            "none of pod 2's entries, its deny entry least of all"
        );
        assert_eq!(s.allow.len(), 3);
        // Prefix entries count against their own map.
        let mut s = DatapathState::default();
        s.allow.insert(entry(1, 80));
        s.cidr_allow.insert(CidrEntry {
            endpoint: pod(1),
            direction: Direction::Egress,
            peer: "192.0.2.0/24".parse().unwrap(),
            port: 0,
            proto: 0,
        });
        assert_eq!(fit_policy(&mut s, 4, 0), [pod(1)]);
        assert!(s.allow.is_empty() && s.cidr_allow.is_empty());
        // Everything fits: nothing changes.
        let mut s = DatapathState::default();
        s.allow.insert(entry(1, 80));
        assert!(fit_policy(&mut s, 1, 0).is_empty());
        assert_eq!(s.allow.len(), 1);
    }

    fn state_with(services: &[(u16, &[&str])]) -> DatapathState {
        let mut s = DatapathState::default();
        for (port, backends) in services {
            s.services.insert(
                Frontend {
                    vip: Ipv4Addr::new(10, 96, 0, 1),
                    port: *port,
                    proto: PROTO_TCP,
                },
                backends.iter().map(|b| b.parse().unwrap()).collect(),
            );
        }
        s
    }

    #[test]
    fn service_ids_are_stable_and_reused_only_when_free() {
        let (first, _) = to_map_contents(
            &state_with(&[(80, &["10.1.0.5:8080"]), (81, &["10.1.0.6:8080"])]),
            &HashMap::new(),
            &HashMap::new(),
        );
        let ids: BTreeSet<u32> = first.services.values().map(|v| v.service_id).collect();
        assert_eq!(ids, BTreeSet::from([1, 2]));
        // Port 80 goes away, a new port 82 arrives: 81 keeps its ID, 82 takes the free one.
        let (second, _) = to_map_contents(
            &state_with(&[
                (81, &["10.1.0.6:8080", "10.2.0.7:8080"]),
                (82, &["10.1.0.8:8080"]),
            ]),
            &HashMap::new(),
            &first.services,
        );
        let id_of = |c: &MapContents, port: u16| {
            c.services
                .iter()
                .find(|(k, _)| k.port == port_be(port))
                .map(|(_, v)| *v)
                .unwrap()
        };
        assert_eq!(id_of(&second, 81).service_id, id_of(&first, 81).service_id);
        assert_eq!(id_of(&second, 81).count, 2);
        assert_ne!(id_of(&second, 82).service_id, id_of(&second, 81).service_id);
        let d = diff(&first.backends, &second.backends);
        assert_eq!(d.upserts.len(), 2, "one new slot for 81, one for 82: {d:?}");
    }

    #[test]
    fn diff_touches_only_changes() {
        let a: HashMap<u32, u32> = HashMap::from([(1, 1), (2, 2), (3, 3)]);
        let b: HashMap<u32, u32> = HashMap::from([(1, 1), (2, 20), (4, 4)]);
        let mut d = diff(&a, &b);
        d.upserts.sort();
        assert_eq!(d.upserts, vec![(2, 20), (4, 4)]);
        assert_eq!(d.removes, vec![3]);
        assert!(diff(&b, &b).is_empty());
    }

    #[test]
    fn endpoints_without_interface_are_reported_not_written() {
        let mut s = DatapathState::default();
        s.endpoints.insert(
            Ipv4Addr::new(10, 1, 0, 5),
            LocalEndpoint {
                interface: "vethabc".into(),
                mac: Some([2, 0, 0, 0, 0, 5]),
                node_mac: None,
                identity: 7,
                policy_enforced: true,
                egress_enforced: false,
            },
        );
        let (c, u) = to_map_contents(&s, &HashMap::new(), &HashMap::new());
        assert!(c.endpoints.is_empty());
        assert_eq!(u.missing_interfaces, vec!["vethabc".to_string()]);
        let link = Link {
            index: 9,
            mac: [2, 0, 0, 0, 0, 1],
        };
        let (c, _) = to_map_contents(&s, &HashMap::from([("vethabc".into(), link)]), &HashMap::new());
        let v = c.endpoints[&addr_be(Ipv4Addr::new(10, 1, 0, 5))];
        assert_eq!((v.ifindex, v.identity, v.flags), (9, 7, ENDPOINT_F_POLICY));
        assert_eq!(
            (v.mac, v.node_mac),
            ([2, 0, 0, 0, 0, 5], link.mac),
            "MACs from the CNI result, else the link's own"
        );
    }
}
