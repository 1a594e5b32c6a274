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

use std::collections::BTreeMap;
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

/// Backends per service frontend, grouped by the cluster owning each
/// address (for status output and tests).
pub fn backends_by_cluster(
    index: &MeshIndex,
    state: &DatapathState,
) -> BTreeMap<Frontend, BTreeMap<String, usize>> {
    let owner = |ip: Ipv4Addr| -> String {
        std::iter::once((index.local_cluster(), &index.local))
            .chain(index.peers.iter().map(|(n, v)| (n.as_str(), v)))
            .find(|(_, v)| v.endpoints.contains_key(&ip.to_string()))
            .map(|(n, _)| n.to_owned())
            .unwrap_or_else(|| "unknown".into())
    };
    state
        .services
        .iter()
        .map(|(f, backends)| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for b in backends {
                *counts.entry(owner(*b.ip())).or_default() += 1;
            }
            (*f, counts)
        })
        .collect()
}
