//! Pure render: the [`MeshIndex`] and the NetworkPolicies become this
//! node's [`DatapathState`].
//!
//! - Routes: every endpoint of this cluster and of every synced peer, `/32`
//!   to its identity and its node's tunnel endpoint (none on this node),
//!   plus every node's pod CIDRs (identity 0) so a pod that is not yet
//!   announced still routes.
//! - Endpoints: this node's pods, found by the host-side interface name the
//!   CNI gives them ([`host_interface`]).
//! - Services: for every global service of this cluster with a ClusterIP,
//!   one frontend per TCP/UDP port; backends are this cluster's ready ones
//!   plus, when the service imports, every synced, non-withdrawn peer's
//!   exported ready ones, narrowed by affinity (`local`: local unless none
//!   is ready; `remote`: the mirror; `none`: all).
//! - Allow entries: [`crate::policy::compile`].

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use knit_kvstore::keys::Kind;
use knit_kvstore::records::{Affinity, Backend, Protocol, ServicePort, ServiceRecord};

use crate::datapath::state::{DatapathState, Frontend, LocalEndpoint, PROTO_TCP, PROTO_UDP, Route};
use crate::index::{ClusterView, MeshIndex};
use crate::policy::{PolicyTarget, compile};

/// Name of the host side of a pod's veth: `kn` and 12 hex digits of a
/// hash of `namespace/name` (fits the 15-byte interface name limit). The
/// CNI (or the local harness playing it) must create it under this name.
pub fn host_interface(namespace: &str, pod: &str) -> String {
    // FNV-1a, 64 bit: stable across versions and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in namespace.bytes().chain([b'/']).chain(pod.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("kn{:012x}", h >> 16)
}

fn v4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    }
}

/// Renders the desired datapath of node `node`.
pub fn render(index: &MeshIndex, policies: &[&NetworkPolicy], node: &str) -> DatapathState {
    let mut out = DatapathState::default();
    let peers = index.peers.values().filter(|p| p.config.is_some());
    for (view, local) in std::iter::once((&index.local, true)).chain(peers.map(|p| (p, false))) {
        add_routes(&mut out, view, local, node);
    }

    let mut targets = Vec::new();
    for ep in index.local.endpoints.values() {
        let Some(ip) = v4(ep.ip) else { continue };
        if ep.node != node {
            continue;
        }
        out.endpoints.insert(
            ip,
            LocalEndpoint {
                interface: host_interface(&ep.namespace, &ep.pod),
                identity: ep.identity,
                policy_enforced: false,
            },
        );
        if let Some(id) = index.local.identities.get(&ep.identity.to_string()) {
            targets.push(PolicyTarget {
                ip,
                namespace: &ep.namespace,
                labels: &id.labels,
            });
        }
    }
    let identities = std::iter::once(&index.local)
        .chain(index.peers.values())
        .flat_map(|v| v.identities.values())
        .map(|r| (r.id, &r.labels))
        .collect();
    let compiled = compile(policies, &targets, &identities);
    for ip in &compiled.enforced {
        if let Some(ep) = out.endpoints.get_mut(ip) {
            ep.policy_enforced = true;
        }
    }
    out.allow = compiled.allow;

    for (name, own) in &index.local_services {
        let remote: Vec<&ServiceRecord> = if own.import {
            index
                .peers
                .values()
                .filter(|p| p.is_synced(Kind::Services))
                .filter_map(|p| p.services.get(name))
                .filter(|r| r.export && !r.withdrawn)
                .collect()
        } else {
            Vec::new()
        };
        add_service(&mut out, own, &remote);
    }
    out
}

fn add_routes(out: &mut DatapathState, view: &ClusterView, local: bool, node: &str) {
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
            if let IpNet::V4(net) = cidr {
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
        let net = Ipv4Net::new(ip, 32).expect("/32 is a valid prefix");
        out.routes.insert(
            net,
            Route {
                identity: ep.identity,
                tunnel,
            },
        );
    }
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

fn add_service(out: &mut DatapathState, own: &ServiceRecord, remote: &[&ServiceRecord]) {
    let vips: Vec<Ipv4Addr> = own.cluster_ips.iter().filter_map(|ip| v4(*ip)).collect();
    for port in &own.ports {
        let proto = match port.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Sctp => continue,
        };
        let local = ready(&[own], port);
        let remote = ready(remote, port);
        let chosen = match own.affinity {
            Affinity::Local if !local.is_empty() => local,
            Affinity::Remote if !remote.is_empty() => remote,
            _ => {
                let mut all = local;
                all.extend(remote);
                all
            }
        };
        for vip in &vips {
            out.services.insert(
                Frontend {
                    vip: *vip,
                    port: port.port,
                    proto,
                },
                chosen.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use knit_kvstore::watch_store::WatchEvent;

    use super::*;

    fn put(index: &mut MeshIndex, key: &str, value: serde_json::Value) {
        index.apply(&WatchEvent::Upsert {
            key: format!("knit/v1/{key}"),
            value: serde_json::to_vec(&value).unwrap(),
        });
    }

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
        let state = render(index, &[], "a-node1");
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
    fn malformed_values_are_counted_and_skipped() {
        let mut index = mesh(&[("10.1.1.5", true)], "none", false, true);
        index.apply(&WatchEvent::Upsert {
            key: "knit/v1/cache/b/endpoints/10.2.1.9".into(),
            value: b"{not json".to_vec(),
        });
        assert_eq!(index.rejected.get("malformed-value"), Some(&1));
        assert_eq!(backends(&index).len(), 2, "the rest of the view is intact");
    }

    #[test]
    fn interface_names_are_stable_and_short() {
        let name = host_interface("shop", "web-0");
        assert_eq!(name, host_interface("shop", "web-0"));
        assert_ne!(name, host_interface("shop", "web-1"));
        assert!(name.len() <= 15 && name.starts_with("kn"), "{name}");
    }
}
