//! Kubernetes NetworkPolicy (ingress and egress) compiled into per-endpoint
//! allow entries over identities, and over address prefixes for ipBlock.
//!
//! A policy selects this node's pods of its namespace by `podSelector`;
//! each ingress rule's peers are matched against the labels of every
//! identity in the mesh (the pod's labels plus `knit.dev/cluster` and its
//! Cilium spelling `io.cilium.k8s.policy.cluster`, both set by the index
//! from the verified cluster, `io.kubernetes.pod.namespace` and the
//! namespace's labels), so a rule can allow `app=frontend` from one cluster
//! only. Selectors that name no cluster match pods of every cluster. A pod no policy selects
//! allows everything. Ports: numbers, names (resolved per selected pod
//! from its container ports, as kube-proxy-less implementations do: a pod
//! without that name gets nothing from the rule) and `endPort` ranges (up
//! to [`MAX_RANGE_PORTS`] ports each; a longer range allows nothing and is
//! counted). `ipBlock` peers become prefix entries with their `except`
//! ranges cut out; they match any address in range, pods included. Egress
//! rules select destinations the same ways, a named port resolving per
//! destination identity; replies of connections a peer opened always pass.
//!
//! Deny rules (Cilium's `ingressDeny` / `egressDeny`, [`Verdict::Deny`])
//! compile the same way into deny entries, which win over every allow
//! entry; an allow prefix has the deny prefixes of its port cut out. A pod
//! that only deny rules select, in a direction no policy isolates (Cilium's
//! `enableDefaultDeny: false`), gets an allow-all entry there, so only the
//! deny rules bite.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use knit_kvstore::records::{PortSpec, Protocol};

use crate::datapath::state::{CidrEntry, Direction, PROTO_TCP, PROTO_UDP, PolicyEntry};

pub use knit_crds::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};

/// Most ports one `endPort` range expands to (one allow entry each).
pub const MAX_RANGE_PORTS: u32 = 4096;

/// A local pod the compiler may select.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTarget<'a> {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Pod namespace.
    pub namespace: &'a str,
    /// Identity labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The pod's named container ports.
    pub named_ports: &'a BTreeMap<String, PortSpec>,
}

/// What a policy's rules do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Admit what they match (NetworkPolicy; Cilium's `ingress`/`egress`).
    #[default]
    Allow,
    /// Drop what they match, whatever admits it (Cilium's
    /// `ingressDeny`/`egressDeny`).
    Deny,
}

/// One policy as the compiler takes it: the selector, `policyTypes` and
/// rules of a NetworkPolicy, what its rules do, and whether selecting a pod
/// isolates it in each direction.
#[derive(Clone, Copy, Debug)]
pub struct PolicyRules<'a> {
    /// Selector, types and rules.
    pub policy: &'a NetworkPolicy,
    /// Allow or deny.
    pub verdict: Verdict,
    /// Whether the pods it selects admit, in (ingress, egress), only what
    /// some rule allows; Cilium's `enableDefaultDeny`. Always both for a
    /// Kubernetes NetworkPolicy (`policyTypes` says which directions).
    pub default_deny: (bool, bool),
}

impl<'a> PolicyRules<'a> {
    /// A Kubernetes NetworkPolicy: allow rules that isolate.
    pub fn network_policy(policy: &'a NetworkPolicy) -> Self {
        Self {
            policy,
            verdict: Verdict::Allow,
            default_deny: (true, true),
        }
    }
}

/// Compiled policy of this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Pods that only accept what the ingress entries allow.
    pub enforced: BTreeSet<Ipv4Addr>,
    /// Pods that only send what the egress entries allow.
    pub egress_enforced: BTreeSet<Ipv4Addr>,
    /// Allow entries by peer identity.
    pub allow: BTreeSet<PolicyEntry>,
    /// Allow entries by peer address (ipBlock).
    pub cidr_allow: BTreeSet<CidrEntry>,
    /// Deny entries by peer identity.
    pub deny: BTreeSet<PolicyEntry>,
    /// Deny entries by peer address.
    pub cidr_deny: BTreeSet<CidrEntry>,
    /// Ports that allow nothing, with why (a range too long, a protocol the
    /// datapath does not handle).
    pub unsupported_ports: Vec<String>,
}

/// One rule of a policy: its direction, peers and ports.
type Rule<'a> = (
    Direction,
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// Compiles `policies` for `targets`, with `identities` (number → labels)
/// as the universe of possible peers, and `peer_ports` the named container
/// ports of each identity's pods (for named ports in egress rules). With `local_cluster` set (the agent's
/// `--policy-default-local-cluster`, as Cilium 1.19's option of that name),
/// a peer selector that names no cluster selects only that cluster's pods.
///
/// `policyTypes` as Kubernetes defines it: when unset, every policy is an
/// Ingress policy, and an Egress policy too if it has egress rules. A pod
/// selected in a direction allows there only what some rule allows.
pub fn compile(
    policies: &[PolicyRules<'_>],
    targets: &[PolicyTarget<'_>],
    identities: &BTreeMap<u32, &BTreeMap<String, String>>,
    peer_ports: &BTreeMap<u32, BTreeMap<String, PortSpec>>,
    local_cluster: Option<&str>,
) -> CompiledPolicy {
    let mut compiler = Compiler {
        identities,
        peer_ports,
        local_cluster,
        out: CompiledPolicy::default(),
        deny_selected: BTreeSet::new(),
    };
    for rules in policies {
        compiler.policy(rules, targets);
    }
    compiler.finish()
}

/// A compilation in progress: the universe of peers, and what the
/// policies compiled so far produced.
struct Compiler<'c> {
    identities: &'c BTreeMap<u32, &'c BTreeMap<String, String>>,
    peer_ports: &'c BTreeMap<u32, BTreeMap<String, PortSpec>>,
    local_cluster: Option<&'c str>,
    out: CompiledPolicy,
    /// Pods, and directions, that some deny policy selects.
    deny_selected: BTreeSet<(Ipv4Addr, Direction)>,
}

/// The peers one rule matches: identities (0 for any peer) and ipBlocks.
struct RulePeers {
    identities: Vec<u32>,
    blocks: Vec<Ipv4Net>,
}

/// What one rule's entries are for: its verdict and direction, and the
/// pod it was compiled for.
#[derive(Clone, Copy)]
struct EntryScope {
    verdict: Verdict,
    direction: Direction,
    endpoint: Ipv4Addr,
}

impl Compiler<'_> {
    /// One policy: isolates the pods it selects in its directions (unless
    /// it does not default-deny) and adds its rules' entries for each.
    fn policy(&mut self, rules_of: &PolicyRules<'_>, targets: &[PolicyTarget<'_>]) {
        let policy = rules_of.policy;
        let Some(spec) = &policy.spec else { return };
        let ns = policy.metadata.namespace.as_deref().unwrap_or("default");
        let (ingress, egress) = directions(spec);
        let selected: Vec<&PolicyTarget<'_>> = targets
            .iter()
            .filter(|t| {
                t.namespace == ns
                    && spec
                        .pod_selector
                        .as_ref()
                        .is_none_or(|s| selector_matches(s, t.labels))
            })
            .collect();
        if selected.is_empty() {
            return;
        }
        if ingress && rules_of.default_deny.0 {
            self.out.enforced.extend(selected.iter().map(|t| t.ip));
        }
        if egress && rules_of.default_deny.1 {
            self.out.egress_enforced.extend(selected.iter().map(|t| t.ip));
        }
        if rules_of.verdict == Verdict::Deny {
            for (on, direction) in [(ingress, Direction::Ingress), (egress, Direction::Egress)] {
                if on {
                    self.deny_selected
                        .extend(selected.iter().map(|t| (t.ip, direction)));
                }
            }
        }
        for (direction, peers, ports) in rules(spec, ingress, egress) {
            let matched = self.rule_peers(peers, ns);
            for target in &selected {
                let scope = EntryScope {
                    verdict: rules_of.verdict,
                    direction,
                    endpoint: target.ip,
                };
                self.rule_for(scope, &matched, target, ports);
            }
        }
    }

    /// The identities and ipBlocks a rule's `peers` match; no peers means
    /// any (identity 0).
    fn rule_peers(&mut self, peers: Option<&[NetworkPolicyPeer]>, ns: &str) -> RulePeers {
        let identities = match peers {
            None | Some([]) => vec![0],
            Some(peers) => self
                .identities
                .iter()
                .filter(|(_, labels)| {
                    peers.iter().any(|p| {
                        peer_matches(p, ns, labels) && in_default_cluster(p, self.local_cluster, labels)
                    })
                })
                .map(|(id, _)| *id)
                .collect(),
        };
        let blocks = peers
            .into_iter()
            .flatten()
            .filter_map(|p| p.ip_block.as_ref())
            .flat_map(|b| ip_block_prefixes(b, &mut self.out.unsupported_ports))
            .collect();
        RulePeers { identities, blocks }
    }

    /// One rule's entries for one selected pod. A named port names a
    /// container port of the pod that receives: the selected pod for
    /// ingress, each destination for egress ([`Self::named_egress_port`]).
    fn rule_for(
        &mut self,
        scope: EntryScope,
        peers: &RulePeers,
        target: &PolicyTarget<'_>,
        rule_ports: Option<&[NetworkPolicyPort]>,
    ) {
        let (named, numbered): (Vec<&NetworkPolicyPort>, Vec<&NetworkPolicyPort>) = match rule_ports {
            Some(ports) if scope.direction == Direction::Egress => ports
                .iter()
                .partition(|p| matches!(p.port, Some(IntOrString::String(_)))),
            Some(ports) => (Vec::new(), ports.iter().collect()),
            None => (Vec::new(), Vec::new()),
        };
        let ports: Vec<(u16, u8)> = if rule_ports.is_none_or(|p| p.is_empty()) {
            vec![(0, 0)]
        } else {
            numbered
                .iter()
                .flat_map(|p| ports_of(p, target.named_ports, &mut self.out.unsupported_ports))
                .collect()
        };
        for (port, proto) in ports {
            self.port_entries(scope, peers, port, proto);
        }
        for port in named {
            self.named_egress_port(scope, peers, port);
        }
    }

    /// Entries for one port: one per peer identity and one per ipBlock.
    fn port_entries(&mut self, scope: EntryScope, peers: &RulePeers, port: u16, proto: u8) {
        let EntryScope {
            verdict,
            direction,
            endpoint,
        } = scope;
        for id in &peers.identities {
            self.out.entries(verdict).insert(PolicyEntry {
                endpoint,
                identity: *id,
                port,
                proto,
                direction,
            });
        }
        for peer in &peers.blocks {
            self.out.cidr_entries(verdict).insert(CidrEntry {
                endpoint,
                direction,
                peer: *peer,
                port,
                proto,
            });
        }
    }

    /// An egress rule's named port, resolved per destination identity: any
    /// destination (identity 0) means every identity that declares the name.
    /// An address has no port names, so the rule's ipBlocks get nothing.
    fn named_egress_port(&mut self, scope: EntryScope, peers: &RulePeers, port: &NetworkPolicyPort) {
        let destinations: Vec<u32> = if peers.identities.contains(&0) {
            self.peer_ports.keys().copied().collect()
        } else {
            peers.identities.clone()
        };
        let empty = BTreeMap::new();
        for id in destinations {
            let declared = self.peer_ports.get(&id).unwrap_or(&empty);
            for (port, proto) in ports_of(port, declared, &mut self.out.unsupported_ports) {
                self.out.entries(scope.verdict).insert(PolicyEntry {
                    endpoint: scope.endpoint,
                    identity: id,
                    port,
                    proto,
                    direction: scope.direction,
                });
            }
        }
        if !peers.blocks.is_empty() {
            self.out
                .unsupported_ports
                .push("a named port with an ipBlock peer (an address has no port names)".into());
        }
    }

    /// The result: a pod that only deny policies select in a direction no
    /// policy isolates gets an allow-all entry there, and allow prefixes
    /// have the deny prefixes cut out.
    fn finish(mut self) -> CompiledPolicy {
        let mut out = std::mem::take(&mut self.out);
        for (ip, direction) in self.deny_selected {
            let isolated = match direction {
                Direction::Ingress => &mut out.enforced,
                Direction::Egress => &mut out.egress_enforced,
            };
            if isolated.insert(ip) {
                out.allow.insert(PolicyEntry {
                    endpoint: ip,
                    identity: 0,
                    port: 0,
                    proto: 0,
                    direction,
                });
            }
        }
        out.cidr_allow = cut_denied(&out.cidr_allow, &out.cidr_deny);
        out
    }
}

/// The directions a policy isolates (`policyTypes`, or Kubernetes' default
/// when unset: Ingress, and Egress if it has egress rules).
pub(crate) fn directions(spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec) -> (bool, bool) {
    match &spec.policy_types {
        Some(types) => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        None => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// A policy's rules in the directions it isolates.
fn rules(
    spec: &k8s_openapi::api::networking::v1::NetworkPolicySpec,
    ingress: bool,
    egress: bool,
) -> Vec<Rule<'_>> {
    let from = spec
        .ingress
        .iter()
        .flatten()
        .filter(|_| ingress)
        .map(|r| (Direction::Ingress, r.from.as_deref(), r.ports.as_deref()));
    let to = spec
        .egress
        .iter()
        .flatten()
        .filter(|_| egress)
        .map(|r| (Direction::Egress, r.to.as_deref(), r.ports.as_deref()));
    from.chain(to).collect()
}

impl CompiledPolicy {
    fn entries(&mut self, verdict: Verdict) -> &mut BTreeSet<PolicyEntry> {
        match verdict {
            Verdict::Allow => &mut self.allow,
            Verdict::Deny => &mut self.deny,
        }
    }

    fn cidr_entries(&mut self, verdict: Verdict) -> &mut BTreeSet<CidrEntry> {
        match verdict {
            Verdict::Allow => &mut self.cidr_allow,
            Verdict::Deny => &mut self.cidr_deny,
        }
    }
}

/// The allow prefixes with the deny prefixes of the same pod, direction,
/// port and protocol cut out, so the datapath's longest match never finds
/// an allow prefix inside a denied one.
fn cut_denied(allow: &BTreeSet<CidrEntry>, deny: &BTreeSet<CidrEntry>) -> BTreeSet<CidrEntry> {
    let mut out = BTreeSet::new();
    for a in allow {
        let mut pieces = vec![a.peer];
        for d in deny.iter().filter(|d| {
            (d.endpoint, d.direction, d.port, d.proto) == (a.endpoint, a.direction, a.port, a.proto)
        }) {
            pieces = pieces.into_iter().flat_map(|p| subtract(p, d.peer)).collect();
        }
        out.extend(pieces.into_iter().map(|peer| CidrEntry { peer, ..*a }));
    }
    out
}

/// The prefixes an ipBlock admits: its CIDR with every `except` range cut
/// out (as the fewest disjoint prefixes). IPv6 blocks allow nothing here
/// (the datapath is IPv4) and are counted.
fn ip_block_prefixes(block: &IPBlock, unsupported: &mut Vec<String>) -> Vec<Ipv4Net> {
    let Ok(cidr) = block.cidr.parse::<Ipv4Net>() else {
        unsupported.push(format!("ipBlock {} (not an IPv4 CIDR)", block.cidr));
        return Vec::new();
    };
    let mut kept = vec![cidr.trunc()];
    for except in block.except.iter().flatten() {
        let Ok(except) = except.parse::<Ipv4Net>() else {
            continue;
        };
        kept = kept
            .into_iter()
            .flat_map(|net| subtract(net, except.trunc()))
            .collect();
    }
    Ipv4Net::aggregate(&kept)
}

/// `net` without the addresses of `hole`, as disjoint prefixes.
fn subtract(net: Ipv4Net, hole: Ipv4Net) -> Vec<Ipv4Net> {
    if !net.contains(&hole.network()) && !hole.contains(&net.network()) {
        return vec![net];
    }
    if hole.contains(&net) {
        return Vec::new();
    }
    net.subnets(net.prefix_len() + 1)
        .map(|halves| halves.flat_map(|half| subtract(half, hole)).collect())
        .unwrap_or_default()
}

/// The (port, protocol) pairs one rule port allows on a pod with
/// `named_ports`: a number, a number range (`endPort`), a name the pod
/// declares with the same protocol, or every port (`port` unset).
fn ports_of(
    p: &NetworkPolicyPort,
    named_ports: &BTreeMap<String, PortSpec>,
    unsupported: &mut Vec<String>,
) -> Vec<(u16, u8)> {
    let (proto, protocol) = match Protocol::from_kubernetes(p.protocol.as_deref()) {
        Protocol::Tcp => (PROTO_TCP, Protocol::Tcp),
        Protocol::Udp => (PROTO_UDP, Protocol::Udp),
        _ => {
            let other = p.protocol.as_deref().unwrap_or_default();
            unsupported.push(format!("protocol {other} (the datapath handles TCP and UDP)"));
            return Vec::new();
        }
    };
    match (&p.port, p.end_port) {
        (None, _) => vec![(0, proto)],
        (Some(IntOrString::Int(start)), Some(end)) => {
            let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(end)) else {
                return Vec::new();
            };
            if end < start {
                return Vec::new();
            }
            if u32::from(end - start) + 1 > MAX_RANGE_PORTS {
                unsupported.push(format!(
                    "port range {start}-{end} is longer than {MAX_RANGE_PORTS} ports"
                ));
                return Vec::new();
            }
            (start..=end).map(|port| (port, proto)).collect()
        }
        (Some(IntOrString::Int(n)), None) => u16::try_from(*n).map(|n| vec![(n, proto)]).unwrap_or_default(),
        (Some(IntOrString::String(name)), _) => named_ports
            .get(name)
            .filter(|spec| spec.protocol == protocol)
            .map(|spec| vec![(spec.port, proto)])
            .unwrap_or_default(),
    }
}

/// Cluster labels a selector may name (either spelling).
const CLUSTER_LABELS: [&str; 2] = [knit_crds::CLUSTER_LABEL, knit_crds::CILIUM_CLUSTER_LABEL];

/// Whether `labels` pass the default-local-cluster rule for `peer`: a peer
/// that names a cluster (in its pod selector) selects across clusters as
/// written; one that names none selects only `local_cluster`, when set.
fn in_default_cluster(
    peer: &NetworkPolicyPeer,
    local_cluster: Option<&str>,
    labels: &BTreeMap<String, String>,
) -> bool {
    let Some(local) = local_cluster else {
        return true;
    };
    let names_cluster = peer.pod_selector.as_ref().is_some_and(|sel| {
        sel.match_labels
            .iter()
            .flatten()
            .any(|(k, _)| CLUSTER_LABELS.contains(&k.as_str()))
            || sel
                .match_expressions
                .iter()
                .flatten()
                .any(|e| CLUSTER_LABELS.contains(&e.key.as_str()))
    });
    names_cluster || labels.get(knit_crds::CLUSTER_LABEL).map(String::as_str) == Some(local)
}

fn peer_matches(peer: &NetworkPolicyPeer, policy_ns: &str, labels: &BTreeMap<String, String>) -> bool {
    if peer.ip_block.is_some() {
        return false;
    }
    let pod_ns = labels
        .get(NAMESPACE_LABEL)
        .map(String::as_str)
        .unwrap_or_default();
    let ns_ok = match &peer.namespace_selector {
        None => pod_ns == policy_ns,
        Some(sel) => {
            let mut ns_labels: BTreeMap<String, String> = labels
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(NAMESPACE_LABELS_PREFIX)?.to_owned(), v.clone())))
                .collect();
            ns_labels.insert("kubernetes.io/metadata.name".into(), pod_ns.to_owned());
            selector_matches(sel, &ns_labels)
        }
    };
    ns_ok
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|sel| selector_matches(sel, labels))
}

/// Whether a Kubernetes label selector matches `labels` (an empty selector
/// matches everything; one kube cannot parse matches nothing). Matching is
/// kube's own ([`kube::core::Selector`]).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    use kube::core::{Selector, SelectorExt};
    Selector::try_from(sel.clone()).is_ok_and(|s| s.matches(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    static NO_PORTS: BTreeMap<String, PortSpec> = BTreeMap::new();

    /// A selected pod at `ip` with no named ports.
    fn pod<'a>(ip: Ipv4Addr, namespace: &'a str, labels: &'a BTreeMap<String, String>) -> PolicyTarget<'a> {
        PolicyTarget {
            ip,
            namespace,
            labels,
            named_ports: &NO_PORTS,
        }
    }

    #[test]
    fn egress_rules_and_ip_blocks_with_except() {
        let p = policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
  - to:
    - podSelector: {matchLabels: {app: db}}
    ports: [{port: 5432}]
  - to:
    - ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25, 192.0.2.64/27]}
  - to:
    - ipBlock: {cidr: "2001:db8::/32"}
"#,
        );
        let web = labels(&[("app", "web"), (NAMESPACE_LABEL, "shop")]);
        let db = labels(&[("app", "db"), (NAMESPACE_LABEL, "shop")]);
        let ids = BTreeMap::from([(1, &web), (2, &db)]);
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let targets = [pod(ip, "shop", &web)];
        let c = compile(
            &[PolicyRules::network_policy(&p)],
            &targets,
            &ids,
            &BTreeMap::new(),
            None,
        );
        // No policyTypes: an egress section makes it an Egress policy too.
        assert_eq!(c.egress_enforced, BTreeSet::from([ip]));
        assert_eq!(
            c.enforced,
            BTreeSet::from([ip]),
            "and an Ingress policy that allows nothing"
        );
        assert_eq!(
            c.allow,
            BTreeSet::from([PolicyEntry {
                endpoint: ip,
                identity: 2,
                port: 5432,
                proto: PROTO_TCP,
                direction: Direction::Egress,
            }])
        );
        let peers: Vec<String> = c.cidr_allow.iter().map(|a| a.peer.to_string()).collect();
        assert_eq!(peers, ["192.0.2.0/26", "192.0.2.96/27"]);
        assert!(
            c.cidr_allow
                .iter()
                .all(|a| a.direction == Direction::Egress && a.port == 0)
        );
        assert!(
            c.unsupported_ports.iter().any(|w| w.contains("2001:db8::/32")),
            "{:?}",
            c.unsupported_ports
        );

        // policyTypes: [Egress] alone leaves ingress open.
        let egress_only = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n",
        );
        let c = compile(
            &[PolicyRules::network_policy(&egress_only)],
            &targets,
            &ids,
            &BTreeMap::new(),
            None,
        );
        assert!(c.enforced.is_empty() && c.allow.is_empty() && c.cidr_allow.is_empty());
        assert_eq!(c.egress_enforced, BTreeSet::from([ip]), "deny all egress");
    }

    #[test]
    fn egress_named_ports_resolve_per_destination_identity() {
        let p = policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - ports: [{port: http}]
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: sql}]
"#,
        );
        let me = labels(&[(NAMESPACE_LABEL, "shop")]);
        let db = labels(&[("app", "db"), (NAMESPACE_LABEL, "shop")]);
        let web = labels(&[("app", "web"), (NAMESPACE_LABEL, "shop")]);
        let ids = BTreeMap::from([(2, &db), (3, &web)]);
        let spec = |port, protocol| PortSpec { port, protocol };
        let peer_ports = BTreeMap::from([
            (2, BTreeMap::from([("sql".to_owned(), spec(5432, Protocol::Tcp))])),
            (
                3,
                BTreeMap::from([
                    ("http".to_owned(), spec(8080, Protocol::Tcp)),
                    ("sql".to_owned(), spec(3306, Protocol::Tcp)),
                ]),
            ),
        ]);
        let ip = Ipv4Addr::new(10, 1, 0, 1);
        let targets = [pod(ip, "shop", &me)];
        let c = compile(
            &[PolicyRules::network_policy(&p)],
            &targets,
            &ids,
            &peer_ports,
            None,
        );
        let entries: Vec<(u32, u16)> = c.allow.iter().map(|e| (e.identity, e.port)).collect();
        // "http" to anyone: only web declares it; "sql" to db only: 5432, not web's 3306.
        assert_eq!(entries, [(2, 5432), (3, 8080)]);
        assert!(c.allow.iter().all(|e| e.direction == Direction::Egress));
    }

    #[test]
    fn named_ports_resolve_per_pod_and_ranges_expand() {
        let p = policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {}
  ingress:
  - ports:
    - {port: http}
    - {port: dns, protocol: UDP}
    - {port: 9000, endPort: 9002}
    - {port: 1, endPort: 65535}
    - {port: 5000, protocol: SCTP}
"#,
        );
        let pod = labels(&[(NAMESPACE_LABEL, "shop")]);
        let a_ports = BTreeMap::from([
            (
                "http".to_owned(),
                PortSpec {
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
            ),
            (
                "dns".to_owned(),
                PortSpec {
                    port: 5353,
                    protocol: Protocol::Udp,
                },
            ),
        ]);
        // b calls its TCP port 81 "http" and has "dns" only over TCP.
        let b_ports = BTreeMap::from([
            (
                "http".to_owned(),
                PortSpec {
                    port: 81,
                    protocol: Protocol::Tcp,
                },
            ),
            (
                "dns".to_owned(),
                PortSpec {
                    port: 53,
                    protocol: Protocol::Tcp,
                },
            ),
        ]);
        let (a, b) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2));
        let targets = [
            PolicyTarget {
                ip: a,
                namespace: "shop",
                labels: &pod,
                named_ports: &a_ports,
            },
            PolicyTarget {
                ip: b,
                namespace: "shop",
                labels: &pod,
                named_ports: &b_ports,
            },
        ];
        let out = compile(
            &[PolicyRules::network_policy(&p)],
            &targets,
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
        );
        let ports = |ip| -> Vec<(u16, u8)> {
            out.allow
                .iter()
                .filter(|e| e.endpoint == ip)
                .map(|e| (e.port, e.proto))
                .collect()
        };
        assert_eq!(
            ports(a),
            [
                (5353, PROTO_UDP),
                (8080, PROTO_TCP),
                (9000, PROTO_TCP),
                (9001, PROTO_TCP),
                (9002, PROTO_TCP)
            ]
        );
        assert_eq!(
            ports(b),
            [
                (81, PROTO_TCP),
                (9000, PROTO_TCP),
                (9001, PROTO_TCP),
                (9002, PROTO_TCP)
            ]
        );
        assert_eq!(out.unsupported_ports.len(), 4, "{:?}", out.unsupported_ports);
        assert!(out.unsupported_ports.iter().any(|w| w.contains("1-65535")));
        assert!(out.unsupported_ports.iter().any(|w| w.contains("SCTP")));
    }

    #[test]
    fn deny_rules_become_deny_entries_and_cut_allowed_prefixes() {
        let allow = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: shop}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n",
        );
        let deny = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.1.0.0/16}\n    - podSelector: {matchLabels: {app: legacy}}\n  egress:\n  - to:\n    - podSelector: {matchLabels: {app: legacy}}\n    ports: [{port: 5432}]\n",
        );
        let web = labels(&[("app", "web"), (NAMESPACE_LABEL, "shop")]);
        let legacy = labels(&[("app", "legacy"), (NAMESPACE_LABEL, "shop")]);
        let ids = BTreeMap::from([(1, &web), (2, &legacy)]);
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let targets = [pod(ip, "shop", &web)];
        let deny_rules = |egress_default_deny: bool| PolicyRules {
            policy: &deny,
            verdict: Verdict::Deny,
            default_deny: (true, egress_default_deny),
        };
        let c = compile(
            &[PolicyRules::network_policy(&allow), deny_rules(false)],
            &targets,
            &ids,
            &BTreeMap::new(),
            None,
        );
        let entry = |identity, port, proto, direction| PolicyEntry {
            endpoint: ip,
            identity,
            port,
            proto,
            direction,
        };
        assert_eq!(
            c.deny,
            BTreeSet::from([
                entry(2, 0, 0, Direction::Ingress),
                entry(2, 5432, PROTO_TCP, Direction::Egress)
            ])
        );
        let prefixes =
            |set: &BTreeSet<CidrEntry>| -> Vec<String> { set.iter().map(|e| e.peer.to_string()).collect() };
        assert_eq!(prefixes(&c.cidr_deny), ["10.1.0.0/16"]);
        assert!(
            c.cidr_allow
                .iter()
                .all(|a| !a.peer.contains(&Ipv4Addr::new(10, 1, 2, 3))),
            "the denied /16 is cut out of the allowed /8: {:?}",
            prefixes(&c.cidr_allow)
        );
        assert!(
            c.cidr_allow
                .iter()
                .any(|a| a.peer.contains(&Ipv4Addr::new(10, 2, 0, 1)))
        );
        // Egress: only deny rules select the pod, and enableDefaultDeny is
        // off there, so it allows everything else.
        assert_eq!(c.egress_enforced, BTreeSet::from([ip]));
        assert!(c.allow.contains(&entry(0, 0, 0, Direction::Egress)));
        // With default deny on, the deny policy isolates: no allow-all.
        let c = compile(&[deny_rules(true)], &targets, &ids, &BTreeMap::new(), None);
        assert_eq!(c.egress_enforced, BTreeSet::from([ip]));
        assert!(!c.allow.contains(&entry(0, 0, 0, Direction::Egress)));
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy(yaml: &str) -> NetworkPolicy {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn cluster_label_selects_peers_of_one_cluster_only() {
        let p = policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend, knit.dev/cluster: cluster-a}}
    ports: [{port: 8080}]
"#,
        );
        let web = labels(&[
            ("app", "web"),
            (NAMESPACE_LABEL, "shop"),
            ("knit.dev/cluster", "cluster-a"),
        ]);
        let other = labels(&[("app", "db"), (NAMESPACE_LABEL, "shop")]);
        let fe_a = labels(&[
            ("app", "frontend"),
            (NAMESPACE_LABEL, "shop"),
            ("knit.dev/cluster", "cluster-a"),
        ]);
        let fe_b = labels(&[
            ("app", "frontend"),
            (NAMESPACE_LABEL, "shop"),
            ("knit.dev/cluster", "cluster-b"),
        ]);
        let fe_a_other_ns = labels(&[
            ("app", "frontend"),
            (NAMESPACE_LABEL, "dev"),
            ("knit.dev/cluster", "cluster-a"),
        ]);
        let ids = BTreeMap::from([(1, &web), (2, &fe_a), (3, &fe_b), (4, &fe_a_other_ns)]);
        let web_ip = Ipv4Addr::new(10, 1, 0, 5);
        let db_ip = Ipv4Addr::new(10, 1, 0, 6);
        let targets = [pod(web_ip, "shop", &web), pod(db_ip, "shop", &other)];
        let c = compile(
            &[PolicyRules::network_policy(&p)],
            &targets,
            &ids,
            &BTreeMap::new(),
            None,
        );
        assert_eq!(c.enforced, BTreeSet::from([web_ip]));
        assert_eq!(
            c.allow,
            BTreeSet::from([PolicyEntry {
                endpoint: web_ip,
                identity: 2,
                port: 8080,
                proto: PROTO_TCP,
                direction: Direction::Ingress,
            }])
        );
    }

    #[test]
    fn empty_from_allows_any_identity_and_no_rules_deny_all() {
        let allow_all = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: ns}\nspec:\n  podSelector: {}\n  ingress: [{}]\n",
        );
        let deny_all = policy(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: d, namespace: ns}\nspec:\n  podSelector: {}\n  policyTypes: [Ingress]\n",
        );
        let l = labels(&[(NAMESPACE_LABEL, "ns")]);
        let ip = Ipv4Addr::new(10, 1, 0, 9);
        let targets = [pod(ip, "ns", &l)];
        let c = compile(
            &[PolicyRules::network_policy(&allow_all)],
            &targets,
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
        );
        assert_eq!(
            c.allow,
            BTreeSet::from([PolicyEntry {
                endpoint: ip,
                identity: 0,
                port: 0,
                proto: 0,
                direction: Direction::Ingress,
            }])
        );
        let c = compile(
            &[PolicyRules::network_policy(&deny_all)],
            &targets,
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
        );
        assert_eq!(c.enforced, BTreeSet::from([ip]));
        assert!(c.allow.is_empty());
    }

    #[test]
    fn namespace_selector_uses_namespace_labels() {
        let p = policy(
            r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: ns}
spec:
  podSelector: {}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: team, operator: In, values: [blue]}]}
"#,
        );
        let me = labels(&[(NAMESPACE_LABEL, "ns")]);
        let blue = labels(&[
            (NAMESPACE_LABEL, "x"),
            ("io.cilium.k8s.namespace.labels.team", "blue"),
        ]);
        let red = labels(&[
            (NAMESPACE_LABEL, "y"),
            ("io.cilium.k8s.namespace.labels.team", "red"),
        ]);
        let ids = BTreeMap::from([(7, &blue), (8, &red)]);
        let ip = Ipv4Addr::new(10, 1, 0, 9);
        let c = compile(
            &[PolicyRules::network_policy(&p)],
            &[pod(ip, "ns", &me)],
            &ids,
            &BTreeMap::new(),
            None,
        );
        let ids: Vec<u32> = c.allow.iter().map(|a| a.identity).collect();
        assert_eq!(ids, vec![7]);
    }

    #[test]
    fn a_peer_naming_no_cluster_selects_only_the_local_one_by_default() {
        let p = policy(
            r#"
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: frontend}}
"#,
        );
        let web = labels(&[
            ("app", "web"),
            (NAMESPACE_LABEL, "shop"),
            ("knit.dev/cluster", "cluster-a"),
        ]);
        let fe_a = labels(&[
            ("app", "frontend"),
            (NAMESPACE_LABEL, "shop"),
            ("knit.dev/cluster", "cluster-a"),
        ]);
        let fe_b = labels(&[
            ("app", "frontend"),
            (NAMESPACE_LABEL, "shop"),
            ("knit.dev/cluster", "cluster-b"),
        ]);
        let ids = BTreeMap::from([(2, &fe_a), (3, &fe_b)]);
        let targets = [pod(Ipv4Addr::new(10, 1, 0, 5), "shop", &web)];
        let sources = |local: Option<&str>| -> BTreeSet<u32> {
            compile(
                &[PolicyRules::network_policy(&p)],
                &targets,
                &ids,
                &BTreeMap::new(),
                local,
            )
            .allow
            .iter()
            .map(|a| a.identity)
            .collect()
        };
        assert_eq!(
            sources(Some("cluster-a")),
            BTreeSet::from([2]),
            "local cluster only"
        );
        assert_eq!(
            sources(None),
            BTreeSet::from([2, 3]),
            "the older meaning: every cluster"
        );
    }
}
