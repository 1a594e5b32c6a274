//! Pure render: the [`MeshIndex`] and the NetworkPolicies become this
//! node's [`DatapathState`].
//!
//! - Routes: every endpoint of this cluster and of every synced peer, `/32`
//!   to its identity and its node's tunnel endpoint (none on this node),
//!   plus every node's pod CIDRs (identity 0) so a pod that is not yet
//!   announced still routes. Precedence is by origin, not by render order:
//!   a route of this cluster is never replaced by a peer's, a peer's route
//!   inside or around this cluster's pod CIDRs is not installed (it would
//!   shadow local pods), and between peers the first by name keeps a
//!   prefix.
//! - Endpoints: this node's pods as knit-cni recorded them (host-side
//!   interface, MACs, addresses), with the identity the kvstore gives their
//!   IP (0 until the apiserver has exported the pod).
//! - Services: for every global service of this cluster with a ClusterIP,
//!   one frontend per TCP/UDP port; backends are this cluster's ready ones
//!   plus, when the service imports, every synced, non-withdrawn peer's
//!   exported ready ones, narrowed by affinity, cluster preference and
//!   failover threshold ([`crate::preference`]). A withdrawn peer's ready
//!   backends are used only when nothing else is ready.
//! - Allow entries: [`crate::policy::compile`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net};
use knit_cni::attachment::Attachment;
use knit_kvstore::keys::Kind;
use knit_kvstore::records::{Backend, PortSpec, Protocol, ServicePort, ServiceRecord};

use crate::datapath::state::{DatapathState, Frontend, LocalEndpoint, PROTO_TCP, PROTO_UDP, Route};
use crate::index::{ClusterView, MeshIndex};
use crate::policy::{PolicyRules, PolicyTarget, compile};
use crate::preference::{ClusterPortBackends, Preference, choose};

/// A MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

/// What a render depends on besides the index and the policies.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Tunnel endpoints of nodes whose data path does not answer probes
    /// ([`crate::health`]).
    pub failing: BTreeSet<IpAddr>,
    /// A policy peer that names no cluster selects only this cluster
    /// (`--policy-default-local-cluster`).
    pub policy_default_local_cluster: bool,
    /// Knit's control-plane namespace (`--control-plane-namespace`): its
    /// pods are not isolated while their identity is unknown.
    pub control_plane_namespace: Option<String>,
    /// Some CiliumClusterwideNetworkPolicy exists: it may select a pod of
    /// any namespace.
    pub clusterwide_policies: bool,
}

/// Every identity of the mesh with its labels.
pub type IdentityLabels<'a> = BTreeMap<u32, &'a BTreeMap<String, String>>;
/// The named container ports of each identity's pods.
pub type PeerPorts = BTreeMap<u32, BTreeMap<String, PortSpec>>;

/// What policies select peers among: every identity of the mesh with its
/// labels, and the named container ports of each identity's pods.
pub fn policy_universe(index: &MeshIndex) -> (IdentityLabels<'_>, PeerPorts) {
    let identities = std::iter::once(&index.local)
        .chain(index.peers.values())
        .flat_map(|v| v.identities.values())
        .map(|r| (r.id, &r.labels))
        .collect();
    let mut peer_ports: BTreeMap<u32, BTreeMap<String, PortSpec>> = BTreeMap::new();
    for ep in std::iter::once(&index.local)
        .chain(index.peers.values())
        .flat_map(|v| v.endpoints.values())
        .filter(|ep| !ep.named_ports.is_empty())
    {
        peer_ports
            .entry(ep.identity)
            .or_default()
            .extend(ep.named_ports.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    (identities, peer_ports)
}

/// Renders the desired datapath of node `node`, whose pods are
/// `attachments` (what knit-cni recorded).
pub fn render(
    index: &MeshIndex,
    policies: &[PolicyRules<'_>],
    node: &str,
    attachments: &[Attachment],
    options: &RenderOptions,
) -> DatapathState {
    let failing = &options.failing;
    let mut out = DatapathState::default();
    let peers = index.peers.values().filter(|p| p.config.is_some());
    let local_cidrs = local_pod_cidrs(&index.local);
    for (view, local) in std::iter::once((&index.local, true)).chain(peers.map(|p| (p, false))) {
        add_routes(&mut out, view, local, node, &local_cidrs);
    }

    let mut targets = Vec::new();
    for a in attachments {
        for ip in a.ips.iter().filter_map(|ip| v4(*ip)) {
            let known = index.local.endpoints.get(&ip.to_string());
            out.endpoints.insert(
                ip,
                LocalEndpoint {
                    interface: a.host_interface.clone(),
                    mac: a.pod_mac.as_deref().and_then(parse_mac),
                    node_mac: a.host_mac.as_deref().and_then(parse_mac),
                    identity: known.map_or(0, |ep| ep.identity),
                    policy_enforced: false,
                    egress_enforced: false,
                },
            );
            let identity =
                known.and_then(|ep| Some((ep, index.local.identities.get(&ep.identity.to_string())?)));
            let Some((ep, id)) = identity else {
                if may_be_selected(a.pod_namespace.as_deref(), policies, options) {
                    out.awaiting_identity.push(ip);
                }
                continue;
            };
            targets.push(PolicyTarget {
                ip,
                namespace: &ep.namespace,
                labels: &id.labels,
                named_ports: &ep.named_ports,
            });
        }
    }
    let (identities, peer_ports) = policy_universe(index);
    let local_only = options
        .policy_default_local_cluster
        .then_some(index.local_cluster());
    let compiled = compile(policies, &targets, &identities, &peer_ports, local_only);
    for ip in &compiled.enforced {
        if let Some(ep) = out.endpoints.get_mut(ip) {
            ep.policy_enforced = true;
        }
    }
    for ip in &compiled.egress_enforced {
        if let Some(ep) = out.endpoints.get_mut(ip) {
            ep.egress_enforced = true;
        }
    }
    // Fail closed: a pod whose labels are not known yet cannot be matched
    // against the policies that may select it, so it is isolated both ways
    // (as Cilium's `reserved:init` identity is) until its endpoint and
    // identity arrive.
    for ip in &out.awaiting_identity {
        if let Some(ep) = out.endpoints.get_mut(ip) {
            ep.policy_enforced = true;
            ep.egress_enforced = true;
        }
    }
    out.allow = compiled.allow;
    out.cidr_allow = compiled.cidr_allow;
    out.deny = compiled.deny;
    out.cidr_deny = compiled.cidr_deny;
    out.unsupported_policy_ports = compiled.unsupported_ports;
    out.policy_overflow = crate::datapath::state::fit_policy(
        &mut out,
        knit_datapath_common::POLICY_CAPACITY,
        knit_datapath_common::POLICY_CIDR_CAPACITY,
    );

    let on_failing_nodes = backends_on(index, failing);
    for name in index.local_services.keys() {
        out.services
            .extend(service_frontends(index, name, &on_failing_nodes));
    }
    out
}

/// Whether some policy may select a pod of `namespace` whose labels are not
/// known yet: one of its namespace, a clusterwide one, or any policy at all
/// when the namespace is unknown too. Never a pod of Knit's control plane,
/// through which identities arrive (isolating it would wait forever).
fn may_be_selected(namespace: Option<&str>, policies: &[PolicyRules<'_>], options: &RenderOptions) -> bool {
    match namespace {
        Some(ns) if options.control_plane_namespace.as_deref() == Some(ns) => false,
        Some(ns) => {
            options.clusterwide_policies
                || policies
                    .iter()
                    .any(|p| p.policy.metadata.namespace.as_deref() == Some(ns))
        }
        None => options.clusterwide_policies || !policies.is_empty(),
    }
}

/// This cluster's IPv4 pod CIDRs (its nodes' and its config's), merged.
pub(crate) fn local_pod_cidrs(local: &ClusterView) -> Vec<Ipv4Net> {
    let nets: Vec<Ipv4Net> = local
        .nodes
        .values()
        .flat_map(|n| n.pod_cidrs.iter())
        .chain(local.config.iter().flat_map(|c| c.pod_cidrs.iter()))
        .filter_map(|c| match c {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        })
        .collect();
    Ipv4Net::aggregate(&nets)
}

/// Whether a peer's `net` overlaps this cluster's pod CIDRs `local`
/// (either way round): it would shadow or swallow local pods.
pub(crate) fn shadows_local(local: &[Ipv4Net], net: Ipv4Net) -> bool {
    local.iter().any(|l| l.contains(&net) || net.contains(l))
}

/// Routes of one cluster. The local cluster is rendered first, and a
/// peer's route is installed only where it takes nothing from this cluster
/// (`local_cidrs`) or from a peer rendered before it. A peer's routes stop
/// at the ipcache's capacity, so a peer that publishes too much (beyond
/// what its limits let through) can never evict a local route.
fn add_routes(out: &mut DatapathState, view: &ClusterView, local: bool, node: &str, local_cidrs: &[Ipv4Net]) {
    let full = |out: &DatapathState| !local && out.routes.len() >= knit_datapath_common::IPCACHE_CAPACITY;
    let refused = |out: &DatapathState, net: Ipv4Net| {
        !local && (out.routes.contains_key(&net) || shadows_local(local_cidrs, net))
    };
    let tunnel_of = |node_name: &str| -> Option<Option<Ipv4Addr>> {
        if local && node_name == node {
            return Some(None);
        }
        view.nodes
            .get(node_name)
            .and_then(|n| v4(n.tunnel_endpoint))
            .map(Some)
    };
    for n in view.nodes.values() {
        let Some(tunnel) = tunnel_of(&n.name) else {
            continue;
        };
        for cidr in &n.pod_cidrs {
            if let IpNet::V4(net) = cidr
                && !full(out)
                && !refused(out, net.trunc())
            {
                out.routes.insert(net.trunc(), Route { identity: 0, tunnel });
            }
        }
    }
    if !local && !view.is_synced(Kind::Endpoints) {
        return;
    }
    for ep in view.endpoints.values() {
        let (Some(ip), Some(tunnel)) = (v4(ep.ip), tunnel_of(&ep.node)) else {
            continue;
        };
        if full(out) {
            break;
        }
        let net = Ipv4Net::new(ip, 32).expect("/32 is a valid prefix");
        if refused(out, net) {
            continue;
        }
        out.routes.insert(
            net,
            Route {
                identity: ep.identity,
                tunnel,
            },
        );
    }
}

/// The frontends of global service `name` (`namespace/name`) of this
/// cluster and the backends each may use; none when this cluster has no
/// such global service.
pub(crate) fn service_frontends(
    index: &MeshIndex,
    name: &str,
    on_failing_nodes: &BTreeSet<Ipv4Addr>,
) -> Vec<(Frontend, Vec<SocketAddrV4>)> {
    let Some(own) = index.local_services.get(name) else {
        return Vec::new();
    };
    let remote: Vec<&ServiceRecord> = if own.import {
        index
            .peers
            .values()
            .filter(|p| p.is_synced(Kind::Services))
            .filter_map(|p| p.services.get(name))
            .filter(|r| r.export)
            .filter(|r| {
                own.import_clusters
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(&r.cluster))
            })
            .collect()
    } else {
        Vec::new()
    };
    let (withdrawn, live): (Vec<&ServiceRecord>, Vec<&ServiceRecord>) =
        remote.into_iter().partition(|r| r.withdrawn);
    add_service(own, &live, &withdrawn, on_failing_nodes)
}

/// The frontends a service record renders to, whatever its backends:
/// every IPv4 ClusterIP with every TCP or UDP port.
pub(crate) fn frontends_of(own: &ServiceRecord) -> Vec<Frontend> {
    let mut out = Vec::new();
    for port in &own.ports {
        let proto = match port.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp | Protocol::Other => continue,
        };
        out.extend(
            own.cluster_ips
                .iter()
                .filter_map(|ip| v4(*ip))
                .map(|vip| Frontend {
                    vip,
                    port: port.port,
                    proto,
                }),
        );
    }
    out
}

/// The route a full render gives `ip` as an endpoint's `/32`: that of the
/// first cluster (this one, then peers by name) whose endpoint record named
/// by `ip` places it on a known node; a peer's never inside this cluster's
/// pod CIDRs. Capacity aside (the caller checks), this is what
/// [`add_routes`] writes for it.
pub(crate) fn endpoint_route(index: &MeshIndex, node: &str, ip: Ipv4Addr) -> Option<Route> {
    let name = ip.to_string();
    let peers = index
        .peers
        .values()
        .filter(|p| p.config.is_some() && p.is_synced(Kind::Endpoints));
    let net = Ipv4Net::new(ip, 32).expect("/32 is a valid prefix");
    let mut local_cidrs = None;
    std::iter::once((&index.local, true))
        .chain(peers.map(|p| (p, false)))
        .find_map(|(view, local)| {
            if !local
                && shadows_local(
                    local_cidrs.get_or_insert_with(|| local_pod_cidrs(&index.local)),
                    net,
                )
            {
                return None;
            }
            let ep = view.endpoints.get(&name)?;
            if v4(ep.ip) != Some(ip) {
                return None;
            }
            let tunnel = if local && ep.node == node {
                None
            } else {
                Some(v4(view.nodes.get(&ep.node)?.tunnel_endpoint)?)
            };
            Some(Route {
                identity: ep.identity,
                tunnel,
            })
        })
}

fn target_port(backend: &Backend, port: &ServicePort) -> Option<u16> {
    backend.ports.get(&port.name).copied().or_else(|| {
        (backend.ports.len() == 1)
            .then(|| backend.ports.values().next().copied())
            .flatten()
    })
}

fn ready(records: &[&ServiceRecord], port: &ServicePort) -> Vec<SocketAddrV4> {
    let mut out: Vec<SocketAddrV4> = records
        .iter()
        .flat_map(|r| r.backends.iter())
        .filter(|b| b.ready)
        .filter_map(|b| Some(SocketAddrV4::new(v4(b.ip)?, target_port(b, port)?)))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Pod IPs of every cluster whose node's tunnel endpoint is in `failing`.
pub(crate) fn backends_on(index: &MeshIndex, failing: &BTreeSet<IpAddr>) -> BTreeSet<Ipv4Addr> {
    if failing.is_empty() {
        return BTreeSet::new();
    }
    std::iter::once(&index.local)
        .chain(index.peers.values())
        .flat_map(|view| {
            view.endpoints.values().filter(|ep| {
                view.nodes
                    .get(&ep.node)
                    .is_some_and(|n| failing.contains(&n.tunnel_endpoint))
            })
        })
        .filter_map(|ep| v4(ep.ip))
        .collect()
}

/// Frontends of one global service. Two fallbacks keep a service up while
/// any backend may still answer: backends of peers withdrawn by the
/// KVStoreMesh (control plane unreachable past the grace period) are used
/// only when no other backend is ready, and backends on nodes that fail
/// their probes (`on_failing_nodes`) are dropped only when others remain.
fn add_service(
    own: &ServiceRecord,
    remote: &[&ServiceRecord],
    withdrawn: &[&ServiceRecord],
    on_failing_nodes: &BTreeSet<Ipv4Addr>,
) -> Vec<(Frontend, Vec<SocketAddrV4>)> {
    let mut out = Vec::new();
    let vips: Vec<Ipv4Addr> = own.cluster_ips.iter().filter_map(|ip| v4(*ip)).collect();
    for port in &own.ports {
        let proto = match port.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp | Protocol::Other => continue,
        };
        let pick = |skip_failing: bool| {
            let keep = |v: Vec<SocketAddrV4>| -> Vec<SocketAddrV4> {
                v.into_iter()
                    .filter(|a| !skip_failing || !on_failing_nodes.contains(a.ip()))
                    .collect()
            };
            let clusters: Vec<ClusterPortBackends> = std::iter::once(own)
                .chain(remote.iter().copied())
                .map(|r| ClusterPortBackends {
                    cluster: r.cluster.clone(),
                    ready: keep(ready(&[r], port)),
                    total: r
                        .backends
                        .iter()
                        .filter(|b| target_port(b, port).is_some())
                        .count(),
                })
                .collect();
            let preference = Preference {
                local: &own.cluster,
                affinity: own.affinity,
                preferred: &own.preferred_clusters,
                failover: own.failover.unwrap_or_default(),
            };
            let chosen = choose(&preference, &clusters);
            if chosen.is_empty() {
                keep(ready(withdrawn, port))
            } else {
                chosen
            }
        };
        let mut chosen = pick(true);
        if chosen.is_empty() {
            chosen = pick(false);
        }
        for vip in &vips {
            out.push((
                Frontend {
                    vip: *vip,
                    port: port.port,
                    proto,
                },
                chosen.clone(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::put;
    use knit_kvstore::watch_store::WatchEvent;

    fn service(
        cluster: &str,
        backends: &[(&str, bool)],
        affinity: &str,
        withdrawn: bool,
    ) -> serde_json::Value {
        let backends: Vec<_> = backends
            .iter()
            .map(|(ip, ready)| serde_json::json!({"ip": ip, "ports": {"http": 8080}, "ready": ready}))
            .collect();
        serde_json::json!({
            "cluster": cluster, "namespace": "shop", "name": "web",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "clusterIPs": ["10.96.0.10"], "backends": backends,
            "export": true, "import": true, "affinity": affinity, "withdrawn": withdrawn,
        })
    }

    fn mesh(local: &[(&str, bool)], affinity: &str, peer_withdrawn: bool, peer_synced: bool) -> MeshIndex {
        let mut index = MeshIndex::new("a");
        put(
            &mut index,
            "local/services/shop/web",
            service("a", local, affinity, false),
        );
        put(
            &mut index,
            "cache/b/config",
            serde_json::json!({"name": "b", "id": 2, "podCIDRs": ["10.2.0.0/16"]}),
        );
        put(
            &mut index,
            "cache/b/services/shop/web",
            service(
                "b",
                &[("10.2.1.5", true), ("10.2.1.6", false)],
                "none",
                peer_withdrawn,
            ),
        );
        if peer_synced {
            put(&mut index, "cache/b/synced/services", serde_json::json!(1));
        }
        index
    }

    fn backends(index: &MeshIndex) -> Vec<String> {
        backends_with(index, &BTreeSet::new())
    }

    fn backends_with(index: &MeshIndex, failing: &BTreeSet<IpAddr>) -> Vec<String> {
        let options = RenderOptions {
            failing: failing.clone(),
            ..RenderOptions::default()
        };
        let state = render(index, &[], "a-node1", &[], &options);
        let f = Frontend {
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            proto: PROTO_TCP,
        };
        state
            .services
            .get(&f)
            .map(|b| b.iter().map(|a| a.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn affinity_prefers_a_side_and_falls_back() {
        let both = vec!["10.1.1.5:8080".to_string(), "10.2.1.5:8080".to_string()];
        assert_eq!(backends(&mesh(&[("10.1.1.5", true)], "none", false, true)), both);
        assert_eq!(
            backends(&mesh(&[("10.1.1.5", true)], "local", false, true)),
            vec!["10.1.1.5:8080"]
        );
        assert_eq!(
            backends(&mesh(&[("10.1.1.5", false)], "local", false, true)),
            vec!["10.2.1.5:8080"],
            "no ready local backend: fall back to the peer's ready ones"
        );
        assert_eq!(
            backends(&mesh(&[("10.1.1.5", true)], "remote", false, true)),
            vec!["10.2.1.5:8080"]
        );
    }

    #[test]
    fn withdrawn_or_unsynced_peers_contribute_nothing() {
        assert_eq!(
            backends(&mesh(&[("10.1.1.5", true)], "none", true, true)),
            vec!["10.1.1.5:8080"]
        );
        assert_eq!(
            backends(&mesh(&[("10.1.1.5", true)], "none", false, false)),
            vec!["10.1.1.5:8080"]
        );
    }

    #[test]
    fn a_withdrawn_peer_still_serves_a_service_nothing_else_serves() {
        assert_eq!(
            backends(&mesh(&[], "none", true, true)),
            vec!["10.2.1.5:8080"],
            "no local backend at all: the withdrawn peer's ready pods still answer"
        );
        assert_eq!(
            backends(&mesh(&[("10.1.1.5", false)], "local", true, true)),
            vec!["10.2.1.5:8080"],
            "no ready local backend"
        );
        assert_eq!(
            backends(&mesh(&[], "none", true, false)),
            Vec::<String>::new(),
            "an unsynced peer is never used"
        );
    }

    #[test]
    fn backends_on_nodes_failing_probes_are_dropped_while_others_remain() {
        let mut index = mesh(&[("10.1.1.5", true)], "none", false, true);
        put(
            &mut index,
            "cache/b/nodes/b1",
            serde_json::json!({"name": "b1", "cluster": "b", "underlayIps": ["192.168.50.21"],
                "podCIDRs": ["10.2.1.0/24"], "tunnelEndpoint": "192.168.50.21"}),
        );
        put(
            &mut index,
            "cache/b/endpoints/10.2.1.5",
            serde_json::json!({"ip": "10.2.1.5", "cluster": "b", "identity": 65537, "node": "b1",
                "namespace": "shop", "pod": "web"}),
        );
        put(&mut index, "cache/b/synced/endpoints", serde_json::json!(1));
        let failing = BTreeSet::from(["192.168.50.21".parse().unwrap()]);
        assert_eq!(backends_with(&index, &failing), vec!["10.1.1.5:8080"]);
        let only_b = mesh(&[], "none", false, true);
        let mut only_b = only_b;
        put(
            &mut only_b,
            "cache/b/nodes/b1",
            serde_json::json!({"name": "b1", "cluster": "b", "underlayIps": ["192.168.50.21"],
                "podCIDRs": ["10.2.1.0/24"], "tunnelEndpoint": "192.168.50.21"}),
        );
        put(
            &mut only_b,
            "cache/b/endpoints/10.2.1.5",
            serde_json::json!({"ip": "10.2.1.5", "cluster": "b", "identity": 65537, "node": "b1",
                "namespace": "shop", "pod": "web"}),
        );
        assert_eq!(
            backends_with(&only_b, &failing),
            vec!["10.2.1.5:8080"],
            "the only backend is kept even on a failing node"
        );
    }

    #[test]
    fn cilium_cluster_label_selects_by_verified_cluster_and_cannot_be_spoofed() {
        // The Cilium user's policy, as a NetworkPolicy: frontends of
        // cluster-a, selected with Cilium's cluster label.
        let mut index = MeshIndex::new("cluster-a");
        let identity = |id: u32, cluster: &str, labels: serde_json::Value| {
            let mut labels = labels;
            labels["io.kubernetes.pod.namespace"] = serde_json::json!("production");
            labels["knit.dev/cluster"] = serde_json::json!(cluster);
            serde_json::json!({"id": id, "cluster": cluster, "labels": labels})
        };
        put(
            &mut index,
            "clusters/cluster-a/identities/32769",
            identity(32769, "cluster-a", serde_json::json!({"app": "backend"})),
        );
        put(
            &mut index,
            "clusters/cluster-a/identities/32770",
            identity(32770, "cluster-a", serde_json::json!({"app": "frontend"})),
        );
        put(
            &mut index,
            "cache/cluster-b/config",
            serde_json::json!({"name": "cluster-b", "id": 2, "podCIDRs": ["10.2.0.0/16"]}),
        );
        // cluster-b labels its pods as if they were cluster-a's.
        put(
            &mut index,
            "cache/cluster-b/identities/65537",
            identity(
                65537,
                "cluster-b",
                serde_json::json!({"app": "frontend", "io.cilium.k8s.policy.cluster": "cluster-a"}),
            ),
        );
        put(
            &mut index,
            "clusters/cluster-a/endpoints/10.1.1.5",
            serde_json::json!({"ip": "10.1.1.5", "cluster": "cluster-a", "identity": 32769, "node": "a-node1", "namespace": "production", "pod": "backend"}),
        );
        let policy: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-cross-cluster", "namespace": "production"},
            "spec": {"podSelector": {"matchLabels": {"app": "backend"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend", "io.cilium.k8s.policy.cluster": "cluster-a"}}}]}]}
        }))
        .unwrap();
        let attachment = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod_namespace: Some("production".into()),
            pod_name: Some("backend".into()),
            host_interface: "veth1".into(),
            host_mac: None,
            pod_mac: None,
            ips: vec!["10.1.1.5".parse().unwrap()],
        };
        let all = render(
            &index,
            &[PolicyRules::network_policy(&policy)],
            "a-node1",
            std::slice::from_ref(&attachment),
            &RenderOptions::default(),
        );
        let local = RenderOptions {
            policy_default_local_cluster: true,
            ..RenderOptions::default()
        };
        assert_eq!(
            render(
                &index,
                &[PolicyRules::network_policy(&policy)],
                "a-node1",
                &[attachment],
                &local
            )
            .allow,
            all.allow,
            "a selector naming its cluster is not narrowed by the local-cluster default"
        );
        let state = all;
        let allowed: BTreeSet<u32> = state.allow.iter().map(|a| a.identity).collect();
        assert_eq!(
            allowed,
            BTreeSet::from([32770]),
            "only cluster-a's frontend; not b's spoof"
        );
    }

    #[test]
    fn malformed_values_are_counted_and_skipped() {
        let mut index = mesh(&[("10.1.1.5", true)], "none", false, true);
        index.apply(&WatchEvent::Upsert {
            key: "knit/v1/cache/b/endpoints/10.2.1.9".into(),
            value: b"{not json".to_vec(),
        });
        assert_eq!(index.rejected.get("malformed_value"), Some(&1));
        assert_eq!(backends(&index).len(), 2, "the rest of the view is intact");
    }

    #[test]
    fn local_endpoints_come_from_cni_attachments() {
        let mut index = mesh(&[("10.1.1.5", true)], "none", false, true);
        put(
            &mut index,
            "clusters/a/endpoints/10.1.1.5",
            serde_json::json!({"ip": "10.1.1.5", "cluster": "a", "identity": 70000, "node": "a-node1", "namespace": "shop", "pod": "web"}),
        );
        put(
            &mut index,
            "clusters/a/identities/70000",
            serde_json::json!({"id": 70000, "cluster": "a", "labels": {"app": "web", "knit.dev/cluster": "a"}}),
        );
        let attachment = |ip: &str, mac: Option<&str>| Attachment {
            container_id: format!("c-{ip}"),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod_namespace: Some("shop".into()),
            pod_name: Some("web".into()),
            host_interface: format!("veth-{ip}"),
            host_mac: Some("02:00:00:00:00:01".into()),
            pod_mac: mac.map(str::to_owned),
            ips: vec![ip.parse().unwrap()],
        };
        let state = render(
            &index,
            &[],
            "a-node1",
            &[
                attachment("10.1.1.5", Some("0a:00:00:00:00:05")),
                attachment("10.1.1.6", None),
            ],
            &RenderOptions::default(),
        );
        let known = &state.endpoints[&Ipv4Addr::new(10, 1, 1, 5)];
        assert_eq!(known.interface, "veth-10.1.1.5");
        assert_eq!(known.identity, 70000, "identity from the kvstore");
        assert_eq!(known.mac, Some([0x0a, 0, 0, 0, 0, 5]));
        assert_eq!(known.node_mac, Some([2, 0, 0, 0, 0, 1]));
        let new = &state.endpoints[&Ipv4Addr::new(10, 1, 1, 6)];
        assert_eq!(new.identity, 0, "not exported yet: no identity, still attached");
        assert_eq!(new.mac, None);
        assert!(
            !new.policy_enforced && !new.egress_enforced,
            "no policy of its namespace could select it"
        );
        assert!(state.awaiting_identity.is_empty());
        assert_eq!(
            state.endpoints.len(),
            2,
            "kvstore endpoints without an attachment are not local pods"
        );
    }

    #[test]
    fn a_pod_whose_labels_are_unknown_is_isolated_while_a_policy_may_select_it() {
        let index = mesh(&[], "none", false, true);
        let attachment = |ip: &str, namespace: Option<&str>| Attachment {
            container_id: format!("c-{ip}"),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            pod_namespace: namespace.map(str::to_owned),
            pod_name: Some("p".into()),
            host_interface: format!("veth-{ip}"),
            host_mac: None,
            pod_mac: None,
            ips: vec![ip.parse().unwrap()],
        };
        let attachments = [
            attachment("10.1.1.6", Some("shop")),
            attachment("10.1.1.7", Some("other")),
            attachment("10.1.1.8", None),
            attachment("10.1.1.9", Some("knit-system")),
        ];
        let policy: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "only-web", "namespace": "shop"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
            }))
            .unwrap();
        let policies = [PolicyRules::network_policy(&policy)];
        let options = RenderOptions {
            control_plane_namespace: Some("knit-system".into()),
            ..RenderOptions::default()
        };
        let isolated = |state: &DatapathState| -> Vec<String> {
            state
                .endpoints
                .iter()
                .filter(|(_, e)| e.policy_enforced && e.egress_enforced)
                .map(|(ip, _)| ip.to_string())
                .collect()
        };
        let state = render(&index, &policies, "a-node1", &attachments, &options);
        assert_eq!(
            isolated(&state),
            ["10.1.1.6", "10.1.1.8"],
            "shop has a policy, the unknown namespace may be any; other has none, knit-system brings identities"
        );
        assert_eq!(state.awaiting_identity.len(), 2);
        let clusterwide = RenderOptions {
            clusterwide_policies: true,
            ..options.clone()
        };
        let state = render(&index, &[], "a-node1", &attachments, &clusterwide);
        assert_eq!(isolated(&state), ["10.1.1.6", "10.1.1.7", "10.1.1.8"]);
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("0a:58:0A:01:01:05"), Some([0x0a, 0x58, 0x0a, 1, 1, 5]));
        assert_eq!(parse_mac("0a:58:0a:01:01"), None);
        assert_eq!(parse_mac("0a:58:0a:01:01:05:07"), None);
        assert_eq!(parse_mac("zz:58:0a:01:01:05"), None);
    }
}
