//! The tables `knitctl services`, `identities`, `ipcache` and `endpoints`
//! show, made from what the kernel holds ([`super::pinned`]) and compared
//! with what the agent rendered from the kvstore (the writer's contents).
//! Pure: both map contents and a [`Directory`] in, a table out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use knit_agent_api::{
    Backend, EndpointEntry, EndpointTable, IdentityEntry, IdentityTable, IpcacheEntry, IpcacheTable,
    ServiceEntry, ServiceTable,
};
use knit_datapath_common::{
    BackendKey, BackendValue, ENDPOINT_F_EGRESS, ENDPOINT_F_POLICY, ServiceKey, ServiceValue, addr_from_be,
    port_from_be,
};

use super::describe::{Directory, protocol_name};
use crate::datapath::state::MapContents;

/// Differences listed at most per table; the rest are counted.
pub const MAX_DIFFERENCES: usize = 100;

fn capped(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > MAX_DIFFERENCES {
        let more = lines.len() - MAX_DIFFERENCES;
        lines.truncate(MAX_DIFFERENCES);
        lines.push(format!("... and {more} more"));
    }
    lines
}

type Frontend = (Ipv4Addr, u16, u8);

/// Each frontend's distinct backends, in slot order.
fn frontends(
    services: &HashMap<ServiceKey, ServiceValue>,
    backends: &HashMap<BackendKey, BackendValue>,
) -> BTreeMap<Frontend, Vec<(Ipv4Addr, u16)>> {
    services
        .iter()
        .map(|(k, v)| {
            let mut seen = BTreeSet::new();
            let list = (0..v.count)
                .filter_map(|slot| {
                    backends.get(&BackendKey {
                        service_id: v.service_id,
                        slot,
                    })
                })
                .map(|b| (addr_from_be(b.addr), port_from_be(b.port)))
                .filter(|b| seen.insert(*b))
                .collect();
            ((addr_from_be(k.vip), port_from_be(k.port), k.proto), list)
        })
        .collect()
}

fn frontend_name((vip, port, proto): Frontend) -> String {
    format!("{vip}:{port}/{}", protocol_name(proto))
}

/// `knitctl services`.
pub fn services(
    node: &str,
    kernel: &MapContents,
    rendered: &MapContents,
    dir: &impl Directory,
) -> ServiceTable {
    let held = frontends(&kernel.services, &kernel.backends);
    let wanted = frontends(&rendered.services, &rendered.backends);
    let mut differences = Vec::new();
    for f in wanted.keys().filter(|f| !held.contains_key(f)) {
        differences.push(format!(
            "frontend {} is in the kvstore's services but not in the datapath",
            frontend_name(*f)
        ));
    }
    let mut out = Vec::new();
    for (f, list) in &held {
        let want = wanted.get(f);
        match want {
            None => differences.push(format!(
                "frontend {} is in the datapath but in none of the kvstore's services",
                frontend_name(*f)
            )),
            Some(want) => {
                for b in list.iter().filter(|b| !want.contains(b)) {
                    differences.push(format!(
                        "frontend {}: backend {}:{} is in the datapath but not in the kvstore's endpoints",
                        frontend_name(*f),
                        b.0,
                        b.1
                    ));
                }
                for b in want.iter().filter(|b| !list.contains(b)) {
                    differences.push(format!(
                        "frontend {}: backend {}:{} is in the kvstore's endpoints but not in the datapath",
                        frontend_name(*f),
                        b.0,
                        b.1
                    ));
                }
            }
        }
        let missing = want.into_iter().flatten().filter(|b| !list.contains(b));
        let backends = list
            .iter()
            .map(|b| (b, true))
            .chain(missing.map(|b| (b, false)))
            .map(|(b, in_datapath)| {
                let pod = dir.pod_at(b.0);
                Backend {
                    ip: b.0,
                    port: b.1,
                    cluster: pod.as_ref().map(|p| p.cluster.clone()),
                    pod: pod.map(|p| format!("{}/{}", p.namespace, p.name)),
                    in_datapath,
                }
            })
            .collect();
        out.push(ServiceEntry {
            vip: f.0,
            port: f.1,
            protocol: protocol_name(f.2),
            name: dir.service_at(f.0, f.1),
            affinity: dir.affinity_at(f.0, f.1),
            backends,
        });
    }
    ServiceTable {
        node: node.to_owned(),
        services: out,
        differences: capped(differences),
    }
}

/// `knitctl ipcache`.
pub fn ipcache(
    node: &str,
    kernel: &MapContents,
    rendered: &MapContents,
    dir: &impl Directory,
) -> IpcacheTable {
    let prefix = |(len, addr): (u32, u32)| format!("{}/{len}", addr_from_be(addr));
    let mut differences = Vec::new();
    let mut keys: Vec<&(u32, u32)> = kernel.ipcache.keys().collect();
    keys.sort_by_key(|(len, addr)| (addr_from_be(*addr), *len));
    let entries = keys
        .into_iter()
        .map(|k| {
            let v = kernel.ipcache[k];
            match rendered.ipcache.get(k) {
                None => differences.push(format!(
                    "{} is in the datapath but not in the kvstore's endpoints or nodes",
                    prefix(*k)
                )),
                Some(w) if *w != v => differences.push(format!(
                    "{}: the datapath has identity {} via {}, the kvstore says identity {} via {}",
                    prefix(*k),
                    v.identity,
                    addr_from_be(v.tunnel_endpoint),
                    w.identity,
                    addr_from_be(w.tunnel_endpoint)
                )),
                Some(_) => {}
            }
            let tunnel = (v.tunnel_endpoint != 0).then(|| addr_from_be(v.tunnel_endpoint));
            let origin = if k.0 == 32 {
                dir.pod_at(addr_from_be(k.1))
                    .map(|p| format!("{} {}/{}", p.cluster, p.namespace, p.name))
            } else {
                None
            }
            .or_else(|| tunnel.and_then(|t| dir.node_at(t)));
            IpcacheEntry {
                prefix: prefix(*k),
                identity: v.identity,
                tunnel_endpoint: tunnel,
                origin,
            }
        })
        .collect();
    for k in rendered
        .ipcache
        .keys()
        .filter(|k| !kernel.ipcache.contains_key(k))
    {
        differences.push(format!(
            "{} is in the kvstore but not in the datapath",
            prefix(*k)
        ));
    }
    differences.sort();
    IpcacheTable {
        node: node.to_owned(),
        entries,
        differences: capped(differences),
    }
}

/// `knitctl identities`: every identity the datapath maps an address to.
pub fn identities(node: &str, kernel: &MapContents, dir: &impl Directory) -> IdentityTable {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for v in kernel.ipcache.values() {
        *counts.entry(v.identity).or_default() += 1;
    }
    for v in kernel.endpoints.values() {
        counts.entry(v.identity).or_default();
    }
    let mut differences = Vec::new();
    let identities = counts
        .into_iter()
        .filter(|(id, _)| *id != 0)
        .map(|(identity, addresses)| {
            let labels = dir.identity_labels(identity);
            let cluster = dir.cluster_name(knit_kvstore::records::identity_cluster(identity));
            if labels.is_empty() && identity > knit_kvstore::records::MAX_LOCAL_IDENTITY {
                differences.push(format!(
                    "identity {identity} is in the datapath but the kvstore has no labels for it"
                ));
            }
            IdentityEntry {
                identity,
                cluster,
                labels,
                addresses,
            }
        })
        .collect();
    IdentityTable {
        node: node.to_owned(),
        identities,
        differences: capped(differences),
    }
}

/// `knitctl endpoints`: the pods attached on this node.
pub fn endpoints(
    node: &str,
    kernel: &MapContents,
    rendered: &MapContents,
    dir: &impl Directory,
) -> EndpointTable {
    let mut differences = Vec::new();
    let mut list: Vec<EndpointEntry> = kernel
        .endpoints
        .iter()
        .map(|(addr, v)| {
            let ip = addr_from_be(*addr);
            match rendered.endpoints.get(addr) {
                None => differences.push(format!("pod {ip} is in the datapath but not attached in the agent's view")),
                Some(w) if w.identity != v.identity || w.flags != v.flags || w.ifindex != v.ifindex => {
                    differences.push(format!(
                        "pod {ip}: the datapath has identity {} flags {} on ifindex {}, the agent rendered identity {} flags {} on ifindex {}",
                        v.identity, v.flags, v.ifindex, w.identity, w.flags, w.ifindex
                    ))
                }
                Some(_) => {}
            }
            EndpointEntry {
                ip,
                ifindex: v.ifindex,
                identity: v.identity,
                pod: dir.pod_at(ip).map(|p| format!("{}/{}", p.namespace, p.name)),
                ingress_enforced: v.flags & ENDPOINT_F_POLICY != 0,
                egress_enforced: v.flags & ENDPOINT_F_EGRESS != 0,
            }
        })
        .collect();
    for addr in rendered
        .endpoints
        .keys()
        .filter(|a| !kernel.endpoints.contains_key(a))
    {
        differences.push(format!(
            "pod {} is rendered but not in the datapath",
            addr_from_be(*addr)
        ));
    }
    list.sort_by_key(|e| e.ip);
    differences.sort();
    EndpointTable {
        node: node.to_owned(),
        endpoints: list,
        differences: capped(differences),
    }
}

#[cfg(test)]
mod tests;
