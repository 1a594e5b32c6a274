//! `knitctl policy <pod>`: the allow and deny entries the datapath holds
//! for one pod, each with the policies that produce it. Pure: the pod, the
//! policies with their names and the compiler's universe go in; the
//! policies are compiled for that pod once together (what the agent
//! writes) and once each (who produced what), and compared with the
//! kernel's entries for the pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use knit_agent_api::{PolicyLine, PolicyTable};
use knit_datapath_common::{
    ENDPOINT_F_EGRESS, ENDPOINT_F_POLICY, POLICY_DENY, POLICY_EGRESS, PolicyCidrKey, PolicyKey, addr_be,
    addr_from_be,
};
use knit_kvstore::records::PortSpec;

use super::describe::{Directory, protocol_name};
use crate::datapath::state::{DatapathState, MapContents, policy_map_entries};
use crate::policy::{CompiledPolicy, PolicyRules, PolicyTarget, compile};

/// A policy and the name it is shown by.
pub struct NamedPolicy<'a> {
    /// `namespace/name`, `(Cilium)` appended for Cilium's.
    pub name: String,
    /// As the compiler takes it.
    pub rules: PolicyRules<'a>,
}

/// What the compiler matches peers against.
pub struct Universe<'a> {
    /// Identity → labels, across the mesh.
    pub identities: &'a BTreeMap<u32, &'a BTreeMap<String, String>>,
    /// Named container ports of each identity's pods.
    pub peer_ports: &'a BTreeMap<u32, BTreeMap<String, PortSpec>>,
    /// `--policy-default-local-cluster`: the local cluster's name.
    pub local_only: Option<&'a str>,
}

/// An entry as the kernel keys it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Identity(PolicyKey),
    Prefix(u32, PolicyCidrKey),
}

fn keys_of(compiled: &CompiledPolicy) -> HashMap<Key, u8> {
    let state = DatapathState {
        allow: compiled.allow.clone(),
        deny: compiled.deny.clone(),
        cidr_allow: compiled.cidr_allow.clone(),
        cidr_deny: compiled.cidr_deny.clone(),
        ..Default::default()
    };
    let mut out = MapContents::default();
    policy_map_entries(&state, &mut out);
    out.policy
        .into_iter()
        .map(|(k, v)| (Key::Identity(k), v))
        .chain(
            out.policy_cidr
                .into_iter()
                .map(|((len, k), v)| (Key::Prefix(len, k), v)),
        )
        .collect()
}

fn line(key: Key, verdict: u8, policies: Vec<String>, in_datapath: bool, dir: &impl Directory) -> PolicyLine {
    let (direction, dport, proto) = match key {
        Key::Identity(k) => (k.direction, k.dport, k.proto),
        Key::Prefix(_, k) => (k.direction, k.dport, k.proto),
    };
    let (peer, peer_cluster, peer_labels) = match key {
        Key::Identity(k) if k.identity == 0 => ("any".to_owned(), None, BTreeMap::new()),
        Key::Identity(k) => (
            format!("identity {}", k.identity),
            dir.cluster_name(knit_kvstore::records::identity_cluster(k.identity)),
            dir.identity_labels(k.identity),
        ),
        Key::Prefix(len, k) => (
            format!("{}/{}", addr_from_be(k.addr), len - 64),
            None,
            BTreeMap::new(),
        ),
    };
    PolicyLine {
        direction: if direction == POLICY_EGRESS {
            "egress"
        } else {
            "ingress"
        }
        .to_owned(),
        verdict: if verdict == POLICY_DENY { "deny" } else { "allow" }.to_owned(),
        peer,
        peer_cluster,
        peer_labels,
        port: dport,
        protocol: if proto == 0 {
            "any".to_owned()
        } else {
            protocol_name(proto)
        },
        policies,
        in_datapath,
    }
}

/// The table of pod `name` (`namespace/name`) of `node`, whose target is
/// `target` (none: not a pod of this node the kvstore knows).
pub fn pod_policy(
    node: &str,
    name: &str,
    target: Option<PolicyTarget<'_>>,
    policies: &[NamedPolicy<'_>],
    universe: &Universe<'_>,
    kernel: &MapContents,
    dir: &impl Directory,
) -> PolicyTable {
    let Some(target) = target else {
        return PolicyTable {
            node: node.to_owned(),
            pod: name.to_owned(),
            differences: vec![format!(
                "no pod {name} with a known identity is attached on {node}: ask the agent of the pod's node"
            )],
            ..Default::default()
        };
    };
    let ip = target.ip;
    let targets = [target];
    let run = |rules: &[PolicyRules<'_>]| {
        compile(
            rules,
            &targets,
            universe.identities,
            universe.peer_ports,
            universe.local_only,
        )
    };
    let all: Vec<PolicyRules<'_>> = policies.iter().map(|p| p.rules).collect();
    let wanted = keys_of(&run(&all));
    let mut producers: HashMap<Key, BTreeSet<String>> = HashMap::new();
    for p in policies {
        for key in keys_of(&run(&[p.rules]))
            .into_keys()
            .filter(|k| wanted.contains_key(k))
        {
            producers.entry(key).or_default().insert(p.name.clone());
        }
    }
    let endpoint = addr_be(ip);
    let held: HashMap<Key, u8> = kernel
        .policy
        .iter()
        .filter(|(k, _)| k.endpoint == endpoint)
        .map(|(k, v)| (Key::Identity(*k), *v))
        .chain(
            kernel
                .policy_cidr
                .iter()
                .filter(|((_, k), _)| k.endpoint == endpoint)
                .map(|((len, k), v)| (Key::Prefix(*len, *k), *v)),
        )
        .collect();
    let mut differences = Vec::new();
    let mut entries = Vec::new();
    for (key, verdict) in &held {
        let by: Vec<String> = producers.get(key).into_iter().flatten().cloned().collect();
        let l = line(*key, *verdict, by, true, dir);
        match wanted.get(key) {
            None => differences.push(format!(
                "{} {} {} port {} {}: in the datapath, but no policy produces it",
                l.direction, l.verdict, l.peer, l.port, l.protocol
            )),
            Some(w) if w != verdict => differences.push(format!(
                "{} {} port {} {}: the datapath says {}, the policies say {}",
                l.direction,
                l.peer,
                l.port,
                l.protocol,
                l.verdict,
                if *w == POLICY_DENY { "deny" } else { "allow" }
            )),
            Some(_) => {}
        }
        entries.push(l);
    }
    for (key, verdict) in wanted.iter().filter(|(k, _)| !held.contains_key(k)) {
        let by: Vec<String> = producers.get(key).into_iter().flatten().cloned().collect();
        let l = line(*key, *verdict, by, false, dir);
        differences.push(format!(
            "{} {} {} port {} {}: produced by {} but not in the datapath",
            l.direction,
            l.verdict,
            l.peer,
            l.port,
            l.protocol,
            l.policies.join(", ")
        ));
        entries.push(l);
    }
    entries.sort_by(|a, b| {
        (&a.direction, &a.verdict, &a.peer, a.port, &a.protocol).cmp(&(
            &b.direction,
            &b.verdict,
            &b.peer,
            b.port,
            &b.protocol,
        ))
    });
    differences.sort();
    let flags = kernel.endpoints.get(&endpoint).map_or(0, |e| e.flags);
    PolicyTable {
        node: node.to_owned(),
        pod: name.to_owned(),
        ip: Some(ip),
        ingress_enforced: flags & ENDPOINT_F_POLICY != 0,
        egress_enforced: flags & ENDPOINT_F_EGRESS != 0,
        entries,
        differences,
    }
}

/// The pod `namespace/name` of this node as the compiler's target, from
/// the index (its endpoint, identity labels and named ports).
pub fn target_of<'a>(index: &'a crate::index::MeshIndex, node: &str, name: &str) -> Option<PolicyTarget<'a>> {
    let (ns, pod) = name.split_once('/')?;
    let ep = index
        .local
        .endpoints
        .values()
        .find(|e| e.namespace == ns && e.pod == pod && e.node == node)?;
    let std::net::IpAddr::V4(ip) = ep.ip else {
        return None;
    };
    let id = index.local.identities.get(&ep.identity.to_string())?;
    Some(PolicyTarget {
        ip: Ipv4Addr::from(ip.octets()),
        namespace: &ep.namespace,
        labels: &id.labels,
        named_ports: &ep.named_ports,
    })
}

#[cfg(test)]
mod tests;
