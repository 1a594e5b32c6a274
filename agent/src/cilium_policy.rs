//! CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (`cilium.io/v2`)
//! in their L3/L4 subset, translated into the Kubernetes NetworkPolicies
//! [`crate::policy`] compiles, each with what its rules do
//! ([`Translated`]). Pure: a policy in, policies or the reason it is
//! rejected out.
//!
//! The subset: `endpointSelector`; `ingress` / `egress` and `ingressDeny` /
//! `egressDeny` rules with `fromEndpoints` / `toEndpoints`, `fromCIDR` /
//! `toCIDR`, `fromCIDRSet` / `toCIDRSet` (with `except`), `fromEntities` /
//! `toEntities` (`all`, `cluster`, `world`, and `host` for ingress allow
//! rules, which Knit always admits), and `toPorts` (port, protocol,
//! `endPort`); `enableDefaultDeny`. Deny rules win over every allow rule,
//! of any policy, as in Cilium. Anything else (L7 `rules`, FQDN, other
//! entities, `specs` lists) rejects the **whole** policy: it is never
//! partly applied, and the rejection names the field (logged, counted, and
//! shown by `knitctl status`). A rejected policy fails closed
//! ([`isolation`]): the pods it selects are isolated in every direction it
//! has rules for, until it is fixed or removed.
//!
//! Default deny as Cilium's: a policy isolates the pods it selects in each
//! direction it has rules for (allow or deny), unless `enableDefaultDeny`
//! says otherwise for that direction.
//!
//! Selectors: a `k8s:` or `any:` key prefix is dropped; a selector naming
//! `io.kubernetes.pod.namespace` reaches across namespaces, one that does
//! not selects the policy's own namespace (every namespace for a
//! clusterwide policy), as Cilium does.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use knit_sources::CiliumPolicy;
use serde::Deserialize;

use crate::policy::{NAMESPACE_LABEL, PolicyRules, Verdict};

/// One NetworkPolicy a Cilium policy stands for, and what its rules do.
#[derive(Clone, Debug, PartialEq)]
pub struct Translated {
    /// Selector, types and rules.
    pub policy: NetworkPolicy,
    /// Allow (`ingress`/`egress`) or deny (`ingressDeny`/`egressDeny`).
    pub verdict: Verdict,
    /// Default deny in (ingress, egress).
    pub default_deny: (bool, bool),
}

impl Translated {
    /// As the compiler takes it.
    pub fn rules(&self) -> PolicyRules<'_> {
        PolicyRules {
            policy: &self.policy,
            verdict: self.verdict,
            default_deny: self.default_deny,
        }
    }
}

/// Why a Cilium policy is not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// `namespace/name`, or `name` for a clusterwide policy.
    pub policy: String,
    /// What is outside the subset, naming the field.
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CiliumNetworkPolicy {} not applied: {}",
            self.policy, self.reason
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Object {
    #[serde(rename = "apiVersion")]
    _api_version: Option<String>,
    #[serde(rename = "kind")]
    _kind: Option<String>,
    #[serde(rename = "metadata")]
    _metadata: Option<serde_json::Value>,
    spec: Spec,
    #[serde(rename = "status")]
    _status: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    endpoint_selector: Selector,
    #[serde(default)]
    ingress: Option<Vec<Rule>>,
    #[serde(default)]
    egress: Option<Vec<Rule>>,
    #[serde(default)]
    ingress_deny: Option<Vec<Rule>>,
    #[serde(default)]
    egress_deny: Option<Vec<Rule>>,
    #[serde(default)]
    enable_default_deny: Option<DefaultDeny>,
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

/// One rule; `from*` fields in ingress, `to*` in egress (checked below).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    from_endpoints: Option<Vec<Selector>>,
    to_endpoints: Option<Vec<Selector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CidrSet>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CidrSet>>,
    from_entities: Option<Vec<String>>,
    to_entities: Option<Vec<String>>,
    to_ports: Option<Vec<PortRule>>,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<Requirement>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Requirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CidrSet {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortRule {
    ports: Vec<PortProtocol>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortProtocol {
    port: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    end_port: Option<i32>,
}

/// The NetworkPolicies `policy` stands for (one per namespace in
/// `namespaces` for a clusterwide policy, and a deny one besides when it
/// has deny rules), or why it is rejected. `mesh` lists the mesh's pod
/// CIDRs and node addresses, which the `world` entity leaves out.
pub fn translate(
    policy: &CiliumPolicy,
    namespaces: &[&str],
    mesh: &[String],
) -> Result<Vec<Translated>, Rejected> {
    let name = match &policy.namespace {
        Some(ns) => format!("{ns}/{}", policy.name),
        None => policy.name.clone(),
    };
    let reject = |reason: String| Rejected {
        policy: name.clone(),
        reason,
    };
    let object: Object = serde_json::from_value(policy.object.clone()).map_err(|e| {
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .filter(|_| text.starts_with("unknown field"))
            .map(str::to_owned);
        reject(match field {
            Some(field) => format!("field {field} is not supported (Knit supports Cilium's L3/L4 subset)"),
            None => format!("not readable: {text}"),
        })
    })?;
    let spec = object.spec;
    let scope = Scope {
        clusterwide: policy.namespace.is_none(),
        mesh,
    };
    let rules = |list: &Option<Vec<Rule>>, ingress: bool, deny: bool| {
        list.as_ref()
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| Directed::of(r, ingress, &scope, deny))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
    };
    let ingress = rules(&spec.ingress, true, false).map_err(reject)?;
    let egress = rules(&spec.egress, false, false).map_err(reject)?;
    let ingress_deny = rules(&spec.ingress_deny, true, true).map_err(reject)?;
    let egress_deny = rules(&spec.egress_deny, false, true).map_err(reject)?;
    let defaults = spec.enable_default_deny.unwrap_or_default();
    let default_deny = (defaults.ingress.unwrap_or(true), defaults.egress.unwrap_or(true));
    let selector = label_selector(&spec.endpoint_selector);
    let target_namespaces: Vec<String> = match &policy.namespace {
        Some(ns) => vec![ns.clone()],
        None => namespaces.iter().map(|s| (*s).to_owned()).collect(),
    };
    let has_ingress = ingress.is_some() || ingress_deny.is_some();
    let has_egress = egress.is_some() || egress_deny.is_some();
    let mut out = Vec::new();
    for ns in target_namespaces {
        let network_policy = |suffix: &str,
                              ingress: &Option<Vec<Directed>>,
                              egress: &Option<Vec<Directed>>,
                              types: (bool, bool)| NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("cilium-{}{suffix}", policy.name)),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(selector.clone()),
                policy_types: Some(
                    [(types.0, "Ingress"), (types.1, "Egress")]
                        .into_iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, t)| t.to_owned())
                        .collect(),
                ),
                ingress: ingress
                    .as_ref()
                    .map(|r| r.iter().filter_map(Directed::ingress).collect()),
                egress: egress
                    .as_ref()
                    .map(|r| r.iter().filter_map(Directed::egress).collect()),
            }),
        };
        out.push(Translated {
            policy: network_policy("", &ingress, &egress, (has_ingress, has_egress)),
            verdict: Verdict::Allow,
            default_deny,
        });
        if ingress_deny.is_some() || egress_deny.is_some() {
            out.push(Translated {
                policy: network_policy(
                    "-deny",
                    &ingress_deny,
                    &egress_deny,
                    (ingress_deny.is_some(), egress_deny.is_some()),
                ),
                verdict: Verdict::Deny,
                default_deny,
            });
        }
    }
    Ok(out)
}

/// What stands for a policy [`translate`] rejected: the pods each of its
/// specs selects (`spec`, and every item of `specs`) isolated in each
/// direction the spec has rules for (allow or deny), with no rule that
/// admits anything. Read leniently, since the policy is outside the
/// subset; a spec whose `endpointSelector` cannot be read isolates
/// nothing (there is no telling whom it meant).
pub fn isolation(policy: &CiliumPolicy, namespaces: &[&str]) -> Vec<Translated> {
    let object = &policy.object;
    let specs = object.get("spec").into_iter().chain(
        object
            .get("specs")
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten(),
    );
    let target_namespaces: Vec<String> = match &policy.namespace {
        Some(ns) => vec![ns.clone()],
        None => namespaces.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut out = Vec::new();
    for (i, spec) in specs.enumerate() {
        let Some(selector) = spec
            .get("endpointSelector")
            .and_then(|s| serde_json::from_value::<Selector>(s.clone()).ok())
        else {
            continue;
        };
        let has = |keys: [&str; 2]| keys.iter().any(|k| spec.get(*k).is_some());
        let types: Vec<String> = [
            (has(["ingress", "ingressDeny"]), "Ingress"),
            (has(["egress", "egressDeny"]), "Egress"),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, t)| t.to_owned())
        .collect();
        if types.is_empty() {
            continue;
        }
        for ns in &target_namespaces {
            out.push(Translated {
                policy: NetworkPolicy {
                    metadata: ObjectMeta {
                        name: Some(format!("cilium-{}-rejected-{i}", policy.name)),
                        namespace: Some(ns.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(NetworkPolicySpec {
                        pod_selector: Some(label_selector(&selector)),
                        policy_types: Some(types.clone()),
                        ingress: None,
                        egress: None,
                    }),
                },
                verdict: Verdict::Allow,
                default_deny: (true, true),
            });
        }
    }
    out
}

/// Where a policy's rules apply and what `world` leaves out.
struct Scope<'a> {
    /// A clusterwide policy: selectors reach every namespace.
    clusterwide: bool,
    /// The mesh's pod CIDRs and node addresses (`world` is everything
    /// else).
    mesh: &'a [String],
}

/// A rule translated for its direction.
#[derive(Clone)]
enum Directed {
    Ingress(NetworkPolicyIngressRule),
    Egress(NetworkPolicyEgressRule),
}

impl Directed {
    fn of(rule: &Rule, ingress: bool, scope: &Scope<'_>, deny: bool) -> Result<Self, String> {
        if ingress {
            ingress_rule(rule, scope, deny).map(Self::Ingress)
        } else {
            egress_rule(rule, scope, deny).map(Self::Egress)
        }
    }

    fn ingress(&self) -> Option<NetworkPolicyIngressRule> {
        match self {
            Self::Ingress(r) => Some(r.clone()),
            Self::Egress(_) => None,
        }
    }

    fn egress(&self) -> Option<NetworkPolicyEgressRule> {
        match self {
            Self::Egress(r) => Some(r.clone()),
            Self::Ingress(_) => None,
        }
    }
}

fn ingress_rule(rule: &Rule, scope: &Scope<'_>, deny: bool) -> Result<NetworkPolicyIngressRule, String> {
    if rule.to_endpoints.is_some()
        || rule.to_cidr.is_some()
        || rule.to_cidr_set.is_some()
        || rule.to_entities.is_some()
    {
        return Err("an ingress rule names destinations (to…); use from… fields".into());
    }
    Ok(NetworkPolicyIngressRule {
        from: peers(
            rule.from_endpoints.as_deref(),
            rule.from_cidr.as_deref(),
            rule.from_cidr_set.as_deref(),
            rule.from_entities.as_deref(),
            scope,
            true,
            deny,
        )?,
        ports: ports(rule.to_ports.as_deref())?,
    })
}

fn egress_rule(rule: &Rule, scope: &Scope<'_>, deny: bool) -> Result<NetworkPolicyEgressRule, String> {
    if rule.from_endpoints.is_some()
        || rule.from_cidr.is_some()
        || rule.from_cidr_set.is_some()
        || rule.from_entities.is_some()
    {
        return Err("an egress rule names sources (from…); use to… fields".into());
    }
    Ok(NetworkPolicyEgressRule {
        to: peers(
            rule.to_endpoints.as_deref(),
            rule.to_cidr.as_deref(),
            rule.to_cidr_set.as_deref(),
            rule.to_entities.as_deref(),
            scope,
            false,
            deny,
        )?,
        ports: ports(rule.to_ports.as_deref())?,
    })
}

/// The peers of one rule; `None` means every peer.
fn peers(
    endpoints: Option<&[Selector]>,
    cidrs: Option<&[String]>,
    cidr_sets: Option<&[CidrSet]>,
    entities: Option<&[String]>,
    scope: &Scope<'_>,
    ingress: bool,
    deny: bool,
) -> Result<Option<Vec<NetworkPolicyPeer>>, String> {
    let mut out = Vec::new();
    for sel in endpoints.into_iter().flatten() {
        let pod_selector = label_selector(sel);
        let names_namespace = pod_selector
            .match_labels
            .iter()
            .flatten()
            .any(|(k, _)| k == NAMESPACE_LABEL)
            || pod_selector
                .match_expressions
                .iter()
                .flatten()
                .any(|e| e.key == NAMESPACE_LABEL);
        out.push(NetworkPolicyPeer {
            pod_selector: Some(pod_selector),
            namespace_selector: (names_namespace || scope.clusterwide).then(LabelSelector::default),
            ip_block: None,
        });
    }
    for cidr in cidrs.into_iter().flatten() {
        out.push(block(cidr, None));
    }
    for set in cidr_sets.into_iter().flatten() {
        out.push(block(&set.cidr, set.except.clone()));
    }
    for entity in entities.into_iter().flatten() {
        match entity.as_str() {
            "all" => return Ok(None),
            "cluster" => out.push(NetworkPolicyPeer {
                pod_selector: Some(LabelSelector::default()),
                namespace_selector: Some(LabelSelector::default()),
                ip_block: None,
            }),
            // Outside the mesh, as Cilium's reserved:world: every address
            // but the mesh's pod CIDRs and node addresses.
            "world" => out.push(block(
                "0.0.0.0/0",
                (!scope.mesh.is_empty()).then(|| scope.mesh.to_vec()),
            )),
            // The node always reaches its pods in Knit (as reserved:host),
            // so it can be allowed (a no-op) but not denied.
            "host" if ingress && !deny => {}
            "host" if ingress => {
                return Err(
                    "fromEntities host in ingressDeny is not supported (the node always reaches its pods)"
                        .into(),
                );
            }
            other => {
                return Err(format!(
                    "entity {other:?}{} is not supported (all, cluster, world, and host for ingress are)",
                    if ingress { "" } else { " in egress" }
                ));
            }
        }
    }
    Ok(Some(out))
}

fn block(cidr: &str, except: Option<Vec<String>>) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except,
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn ports(rules: Option<&[PortRule]>) -> Result<Option<Vec<NetworkPolicyPort>>, String> {
    let Some(rules) = rules else { return Ok(None) };
    let mut out = Vec::new();
    for p in rules.iter().flat_map(|r| r.ports.iter()) {
        let protocol = match p.protocol.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("ANY") => None,
            Some(proto @ ("TCP" | "UDP")) => Some(proto.to_owned()),
            Some(other) => {
                return Err(format!(
                    "toPorts protocol {other} is not supported (TCP, UDP, ANY are)"
                ));
            }
        };
        let port = match p.port.parse::<i32>() {
            Ok(0) => None,
            Ok(n) => Some(IntOrString::Int(n)),
            Err(_) => Some(IntOrString::String(p.port.clone())),
        };
        let protocols = match protocol {
            Some(proto) => vec![Some(proto)],
            // ANY: both protocols Knit handles.
            None => vec![Some("TCP".to_owned()), Some("UDP".to_owned())],
        };
        for protocol in protocols {
            out.push(NetworkPolicyPort {
                port: port.clone(),
                end_port: p.end_port,
                protocol,
            });
        }
    }
    Ok(Some(out))
}

/// A Cilium selector as Kubernetes', without Cilium's `k8s:`/`any:` prefixes.
fn label_selector(sel: &Selector) -> LabelSelector {
    let key = |k: &str| {
        k.strip_prefix("k8s:")
            .or_else(|| k.strip_prefix("any:"))
            .unwrap_or(k)
            .to_owned()
    };
    LabelSelector {
        match_labels: (!sel.match_labels.is_empty()).then(|| {
            sel.match_labels
                .iter()
                .map(|(k, v)| (key(k), v.clone()))
                .collect()
        }),
        match_expressions: (!sel.match_expressions.is_empty()).then(|| {
            sel.match_expressions
                .iter()
                .map(|e| LabelSelectorRequirement {
                    key: key(&e.key),
                    operator: e.operator.clone(),
                    values: e.values.clone(),
                })
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cilium(yaml: &str) -> CiliumPolicy {
        let value: serde_json::Value = serde_saphyr::from_str(yaml).unwrap();
        knit_sources::CiliumPolicy::from_object(value).1
    }

    #[test]
    fn the_users_cross_cluster_policy_becomes_a_network_policy() {
        let p = cilium(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-cross-cluster, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: frontend, io.cilium.k8s.policy.cluster: cluster-a}
"#,
        );
        let out = translate(&p, &[], &[]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].verdict, out[0].default_deny),
            (Verdict::Allow, (true, true))
        );
        let out: Vec<NetworkPolicy> = out.into_iter().map(|t| t.policy).collect();
        let spec = out[0].spec.as_ref().unwrap();
        assert_eq!(out[0].metadata.namespace.as_deref(), Some("production"));
        assert_eq!(spec.policy_types.as_deref(), Some(&["Ingress".to_owned()][..]));
        let peer = &spec.ingress.as_ref().unwrap()[0].from.as_ref().unwrap()[0];
        let labels = peer.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap();
        assert_eq!(labels["io.cilium.k8s.policy.cluster"], "cluster-a");
        assert!(peer.namespace_selector.is_none(), "the policy's own namespace");
    }

    #[test]
    fn anything_outside_the_subset_rejects_the_whole_policy_naming_the_field() {
        for (yaml, field) in [
            (
                "spec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET}]}\n",
                "rules",
            ),
            (
                "spec:\n  endpointSelector: {}\n  ingressDeny:\n  - fromEntities: [host]\n",
                "host",
            ),
            (
                "spec:\n  endpointSelector: {}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n",
                "toFQDNs",
            ),
            (
                "spec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [kube-apiserver]\n",
                "kube-apiserver",
            ),
            ("specs:\n- endpointSelector: {}\n", "specs"),
        ] {
            let p = cilium(&format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: ns}}\n{yaml}"
            ));
            let err = translate(&p, &[], &[]).unwrap_err();
            assert_eq!(err.policy, "ns/p");
            assert!(err.reason.contains(field), "{field}: {}", err.reason);
        }
    }

    #[test]
    fn world_is_everything_outside_the_mesh() {
        let p = cilium(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [world]\n",
        );
        let mesh = [
            "10.1.0.0/16".to_owned(),
            "10.2.0.0/16".to_owned(),
            "192.168.50.2/32".to_owned(),
        ];
        let out = translate(&p, &[], &mesh).unwrap();
        let rule = &out[0].policy.spec.as_ref().unwrap().egress.as_ref().unwrap()[0];
        let block = rule.to.as_ref().unwrap()[0].ip_block.as_ref().unwrap();
        assert_eq!(block.cidr, "0.0.0.0/0");
        // Before, `world` was 0.0.0.0/0 whole: every pod of every cluster.
        assert_eq!(block.except.as_deref(), Some(&mesh[..]));
    }

    #[test]
    fn a_rejected_policy_isolates_what_it_selects_in_the_directions_it_has_rules_for() {
        for (yaml, types) in [
            (
                "spec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"80\", protocol: TCP}]\n      rules: {http: [{method: GET}]}\n",
                vec!["Ingress"],
            ),
            (
                "spec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toFQDNs: [{matchName: example.com}]\n  ingressDeny:\n  - fromEntities: [host]\n",
                vec!["Ingress", "Egress"],
            ),
            (
                "specs:\n- endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEntities: [kube-apiserver]\n",
                vec!["Egress"],
            ),
        ] {
            let p = cilium(&format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: ns}}\n{yaml}"
            ));
            assert!(translate(&p, &[], &[]).is_err());
            let stand_in = isolation(&p, &[]);
            assert_eq!(stand_in.len(), 1, "{yaml}");
            let spec = stand_in[0].policy.spec.as_ref().unwrap();
            assert_eq!(spec.policy_types.as_deref().unwrap(), &types[..], "{yaml}");
            assert!(spec.ingress.is_none() && spec.egress.is_none(), "admits nothing");
            assert_eq!(
                spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["app"],
                "web"
            );
            assert_eq!(stand_in[0].default_deny, (true, true));
        }
        // Clusterwide: in every namespace given.
        let p = cilium(
            "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [kube-apiserver]\n",
        );
        assert_eq!(isolation(&p, &["a", "b"]).len(), 2);
    }

    #[test]
    fn clusterwide_policies_apply_in_every_namespace_with_ports_cidrs_and_entities() {
        let p = cilium(
            r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: lockdown}
spec:
  endpointSelector: {matchLabels: {k8s:role: db}}
  ingress:
  - fromEntities: [cluster]
    toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "9000", endPort: 9002}]}]
  egress:
  - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
  - toEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system}}]
"#,
        );
        let out: Vec<NetworkPolicy> = translate(&p, &["a", "b"], &[])
            .unwrap()
            .into_iter()
            .map(|t| t.policy)
            .collect();
        assert_eq!(
            out.iter()
                .map(|n| n.metadata.namespace.clone().unwrap())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let spec = out[0].spec.as_ref().unwrap();
        assert_eq!(
            spec.pod_selector.as_ref().unwrap().match_labels.as_ref().unwrap()["role"],
            "db"
        );
        let ports = spec.ingress.as_ref().unwrap()[0].ports.as_ref().unwrap();
        assert_eq!(ports.len(), 3, "5432/TCP, and 9000-9002 for TCP and UDP");
        let egress = spec.egress.as_ref().unwrap();
        assert_eq!(
            egress[0].to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .except
                .as_ref()
                .unwrap()[0],
            "192.0.2.128/25"
        );
        let to_ns = &egress[1].to.as_ref().unwrap()[0];
        assert!(
            to_ns.namespace_selector.is_some(),
            "naming the namespace label reaches across namespaces"
        );
    }

    #[test]
    fn deny_rules_become_a_deny_policy_beside_the_allow_one() {
        let p = cilium(
            r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: no-legacy, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEntities: [cluster]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: legacy}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  egressDeny:
  - toCIDR: [192.0.2.0/24]
  enableDefaultDeny: {egress: false}
"#,
        );
        let out = translate(&p, &[], &[]).unwrap();
        assert_eq!(out.len(), 2);
        let (allow, deny) = (&out[0], &out[1]);
        assert_eq!(allow.verdict, Verdict::Allow);
        assert_eq!(deny.verdict, Verdict::Deny);
        assert_eq!(
            allow.default_deny,
            (true, false),
            "enableDefaultDeny.egress: false"
        );
        let types = |t: &Translated| t.policy.spec.as_ref().unwrap().policy_types.clone().unwrap();
        assert_eq!(
            types(allow),
            ["Ingress", "Egress"],
            "a direction with only deny rules is still one it has rules for"
        );
        assert_eq!(types(deny), ["Ingress", "Egress"]);
        let spec = deny.policy.spec.as_ref().unwrap();
        let from = &spec.ingress.as_ref().unwrap()[0];
        assert_eq!(
            from.from.as_ref().unwrap()[0]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app"],
            "legacy"
        );
        assert_eq!(from.ports.as_ref().unwrap().len(), 1);
        assert_eq!(
            spec.egress.as_ref().unwrap()[0].to.as_ref().unwrap()[0]
                .ip_block
                .as_ref()
                .unwrap()
                .cidr,
            "192.0.2.0/24"
        );
        assert!(
            allow.policy.spec.as_ref().unwrap().egress.is_none(),
            "no egress allow rules"
        );
    }
}
