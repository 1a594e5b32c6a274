//! `GlobalServicePolicy`: which Services of a namespace span the mesh, and how.
//!
//! The spec selects Services by name or by label; the operator resolves the
//! selection and reports it (and conflicts with other policies) in status.
//! A Service annotated the Cilium way behaves as if a policy selected it; see
//! [`CiliumAnnotations`](crate::CiliumAnnotations).

// kube's `printcolumn(...)` repeats `type_ = ...` by design; clippy reads that as duplication.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which backends a client prefers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Local backends; remote ones only while no local backend is ready.
    Local,
    /// Remote backends; local ones only while no remote backend is ready.
    Remote,
    /// All backends of every cluster.
    #[default]
    None,
}

/// How far traffic spreads beyond the clusters it prefers (the local one
/// with affinity `local`, the remote ones with `remote`, then each of
/// `preferredClusters` in order): while the clusters preferred so far have
/// fewer ready backends than `minReadyBackends`, or a smaller share of
/// their backends ready than `minReadyPercent`, the next clusters' ready
/// backends are added. The default moves on only when none is ready.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failover {
    /// Fewest ready backends the preferred clusters must have (default 1).
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10000))]
    pub min_ready_backends: u32,
    /// Smallest share, in percent, of the preferred clusters' backends that
    /// must be ready (default 0: no share required).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    pub min_ready_percent: u8,
}

fn one() -> u32 {
    1
}

impl Default for Failover {
    fn default() -> Self {
        Self {
            min_ready_backends: 1,
            min_ready_percent: 0,
        }
    }
}

/// Desired behaviour of the selected Services.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "knit.dev",
    version = "v1alpha1",
    kind = "GlobalServicePolicy",
    doc = "Which Services of a namespace span the mesh: export, import, affinity and allowed clusters.",
    plural = "globalservicepolicies",
    shortname = "gsp",
    category = "knit",
    namespaced,
    status = "GlobalServicePolicyStatus",
    printcolumn(name = "Affinity", type_ = "string", json_path = ".spec.affinity"),
    printcolumn(name = "Export", type_ = "boolean", json_path = ".spec.export"),
    printcolumn(name = "Import", type_ = "boolean", json_path = ".spec.import"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("has(self.services) != has(self.selector)")
    .message("set exactly one of spec.services (a list of Service names) or spec.selector (a label selector)"))]
#[x_kube(validation = Rule::new("!has(self.failover) || self.affinity != 'none' || has(self.preferredClusters)")
    .message("spec.failover says when traffic leaves the preferred clusters: set spec.affinity to local or remote, or spec.preferredClusters"))]
#[serde(rename_all = "camelCase")]
pub struct GlobalServicePolicySpec {
    /// Names of Services in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        inner(length(min = 1, max = 63), regex(pattern = "^[a-z]([-a-z0-9]*[a-z0-9])?$"))
    )]
    pub services: Option<Vec<String>>,

    /// Label selector over Services in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<ServiceSelector>,

    /// Share this cluster's backends with peers.
    #[serde(default = "enabled")]
    pub export: bool,

    /// Use backends that peers export.
    #[serde(default = "enabled")]
    pub import: bool,

    /// Which side's backends clients prefer: `local`, `remote` or `none`.
    #[serde(default)]
    pub affinity: Affinity,

    /// Clusters in order of preference, after the side `affinity` prefers
    /// (the local cluster may be named). While the clusters preferred so far
    /// fall short of `failover`, the next one's backends are added; clusters
    /// not named come last, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 16),
        inner(length(min = 1, max = 32), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub preferred_clusters: Option<Vec<String>>,

    /// When traffic moves on from the preferred clusters (default: only
    /// when none of their backends is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<Failover>,

    /// Only these peer clusters' backends are imported; unset means all,
    /// an empty list none (this cluster's own backends are always used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(length(min = 1, max = 32), regex(pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")))]
    pub clusters: Option<Vec<String>>,
}

/// A label selector over Services, with the same meaning as Kubernetes'
/// `LabelSelector` but a schema that rejects unknown operators.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSelector {
    /// Labels a Service must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Further requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One requirement of a [`ServiceSelector`].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)")
    .message("values must be non-empty for operators In and NotIn, and absent for Exists and DoesNotExist"))]
#[serde(rename_all = "camelCase")]
pub struct SelectorRequirement {
    /// Label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// How the key relates to the values.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 63)))]
    pub values: Vec<String>,
}

/// Operator of a [`SelectorRequirement`].
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is not one of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl ServiceSelector {
    /// Whether a Service with these labels is selected. An empty selector
    /// selects every Service.
    /// Matching is kube's own ([`kube::core::Selector`]).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        use kube::core::{Selector, SelectorExt};
        Selector::try_from(self.to_label_selector()).is_ok_and(|s| s.matches(labels))
    }

    /// The same selector as Kubernetes' `LabelSelector`.
    pub fn to_label_selector(&self) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
        LabelSelector {
            match_labels: Some(self.match_labels.clone()),
            match_expressions: Some(
                self.match_expressions
                    .iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: format!("{:?}", r.operator),
                        values: Some(r.values.clone()),
                    })
                    .collect(),
            ),
        }
    }
}

impl GlobalServicePolicySpec {
    /// Whether this policy selects the Service `name` with `labels` (in the
    /// policy's namespace).
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        match (&self.services, &self.selector) {
            (Some(names), _) => names.iter().any(|n| n == name),
            (None, Some(selector)) => selector.matches(labels),
            (None, None) => false,
        }
    }
}

fn enabled() -> bool {
    true
}

/// Observed state of a policy, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GlobalServicePolicyStatus {
    /// `Ready` and `Conflict`, keyed by type.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Services this policy governs, sorted by name.
    #[serde(default)]
    pub matched_services: Vec<String>,
    /// Services this policy selects but an older policy already governs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["service".into()]))]
    pub conflicts: Vec<ServiceConflict>,
    /// Ready backends per cluster, as reported by the mesh apiserver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["cluster".into()]))]
    pub backends_per_cluster: Vec<ClusterBackends>,
}

/// A Service selected by more than one policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConflict {
    /// The Service both policies select.
    pub service: String,
    /// The older policy, which governs the Service.
    pub governed_by: String,
}

/// Count of ready backends one cluster contributes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBackends {
    /// Cluster name.
    pub cluster: String,
    /// Ready backends of the selected Services in that cluster.
    pub backends: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn selector_matches_labels_and_every_operator() {
        let sel = ServiceSelector {
            match_labels: labels(&[("app", "web")]),
            match_expressions: vec![
                req("tier", SelectorOperator::In, &["front", "edge"]),
                req("legacy", SelectorOperator::DoesNotExist, &[]),
                req("env", SelectorOperator::NotIn, &["dev"]),
                req("team", SelectorOperator::Exists, &[]),
            ],
        };
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "edge"), ("team", "a")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back"), ("team", "a")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("team", "a"),
            ("legacy", "")
        ])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("team", "a"),
            ("env", "dev")
        ])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!sel.matches(&labels(&[("app", "db"), ("tier", "edge"), ("team", "a")])));
        assert!(ServiceSelector::default().matches(&labels(&[])));
    }
}
