//! The Kubernetes API of Knit (group `knit.dev`, version `v1alpha1`).
//!
//! Owns the custom resource types, the Cilium-compatible Service annotations
//! and the generated CRD manifests. `crdgen` writes [`crd_manifests`] to
//! `crds/*.yaml` and `config/crd/*.yaml`; a test fails when the committed files drift from the types.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod annotations;
mod cluster_mesh_peer;
mod global_service_policy;
pub mod mcs;
mod seniority;

pub use annotations::{
    AFFINITY, AFFINITY_LEGACY, GLOBAL, GLOBAL_LEGACY, POLICY_ANNOTATIONS, SHARED, ServicePolicy,
    policy_from_annotations,
};
pub use cluster_mesh_peer::{
    CLUSTER_NAME_PATTERN, ClusterMeshPeer, ClusterMeshPeerSpec, ClusterMeshPeerStatus, MAX_CLUSTER_ID,
    MAX_CLUSTER_NAME_LEN, MeshCaStatus, PeerLimits, SecretKeyRef,
};
pub use global_service_policy::{
    Affinity, ClusterBackends, Failover, GlobalServicePolicy, GlobalServicePolicySpec,
    GlobalServicePolicyStatus, SelectorOperator, SelectorRequirement, ServiceConflict, ServiceSelector,
};
pub use seniority::Seniority;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every Knit resource.
pub const GROUP: &str = "knit.dev";
/// Label every endpoint identity carries with its cluster's name, so policy
/// can select peers by cluster.
pub const CLUSTER_LABEL: &str = "knit.dev/cluster";
/// Cilium's spelling of [`CLUSTER_LABEL`]; selectors may use either.
pub const CILIUM_CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// Label holding a pod's namespace in identity labels (written by the
/// apiserver's export, matched by the agent's policy).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of the pod's namespace's labels in identity labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Cilium-style annotation has a value Knit cannot interpret.
    #[error("annotation {annotation} has value {value:?}; expected {expected}")]
    InvalidAnnotation {
        /// The annotation key.
        annotation: &'static str,
        /// What was found.
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// Serialising a CRD to YAML failed.
    #[error("rendering CRD {name} as YAML")]
    RenderCrd {
        /// CRD name.
        name: String,
        /// Cause.
        #[source]
        source: serde_saphyr::ser_error::Error,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every committed copy of a CRD manifest, as `(path, YAML)`: each in
/// `crds/`, and in its kustomize base: `config/crd/` for Knit's own kinds,
/// `config/mcs/crd/` for the Multi-Cluster Services API's, which
/// `config/default` does not install (a cluster may have them from another
/// implementation).
pub fn manifest_files() -> Result<Vec<(std::path::PathBuf, String)>> {
    let crate_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for (file, yaml) in crd_manifests()? {
        let base = if file.starts_with("service") {
            "../config/mcs/crd"
        } else {
            "../config/crd"
        };
        out.push((crate_dir.join(&file), yaml.clone()));
        out.push((crate_dir.join(base).join(&file), yaml));
    }
    Ok(out)
}

/// The MCS CRDs as upstream (sigs.k8s.io/mcs-api) defines them beyond what
/// the types carry: short names, printer columns, and list types, so that
/// server-side apply merges a ServiceExport's conditions per `type` and a
/// ServiceImport's clusters per `cluster` (two controllers can own entries
/// of one list) and replaces `ports` whole.
fn upstream_mcs_shape(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceColumnDefinition;
    let column =
        |name: &str, type_: &str, path: &str, description: Option<&str>| CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: path.into(),
            description: description.map(Into::into),
            ..Default::default()
        };
    let age = column("Age", "date", ".metadata.creationTimestamp", None);
    let import = crd.spec.names.kind == "ServiceImport";
    crd.spec.names.short_names = Some(vec![if import { "svcim" } else { "svcex" }.into()]);
    for version in &mut crd.spec.versions {
        version.additional_printer_columns = Some(if import {
            vec![
                column(
                    "Type",
                    "string",
                    ".spec.type",
                    Some("The type of this ServiceImport"),
                ),
                column(
                    "IP",
                    "string",
                    ".spec.ips",
                    Some("The VIP for this ServiceImport"),
                ),
                age.clone(),
            ]
        } else {
            vec![age.clone()]
        });
        let Some(root) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let mut list = |path: &[&str], keys: Option<&str>| {
            let mut node = &mut *root;
            for p in path {
                match node.properties.as_mut().and_then(|props| props.get_mut(*p)) {
                    Some(next) => node = next,
                    None => return,
                }
            }
            match keys {
                Some(key) => {
                    node.x_kubernetes_list_type = Some("map".into());
                    node.x_kubernetes_list_map_keys = Some(vec![key.into()]);
                }
                None => node.x_kubernetes_list_type = Some("atomic".into()),
            }
        };
        if import {
            list(&["spec", "ports"], None);
            list(&["status", "clusters"], Some("cluster"));
        } else {
            list(&["status", "conditions"], Some("type"));
        }
    }
    crd
}

/// Marks `field` of the spec required (a field the Rust type defaults when
/// reading, so objects stored before it was required stay readable).
fn spec_requires(mut crd: CustomResourceDefinition, field: &str) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(spec) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|p| p.get_mut("spec"))
        {
            let required = spec.required.get_or_insert_with(Vec::new);
            if !required.iter().any(|r| r == field) {
                required.push(field.to_owned());
                required.sort();
            }
        }
    }
    crd
}

/// A ServiceExport needs no spec (upstream's schema requires none, and most
/// are written without one); the derive makes every root `spec` required.
fn spec_optional(
    mut crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let required: Vec<String> = schema
                .required
                .take()
                .unwrap_or_default()
                .into_iter()
                .filter(|field| field != "spec")
                .collect();
            schema.required = (!required.is_empty()).then_some(required);
        }
    }
    crd
}

/// Every CRD manifest as `(file name, YAML)`, in a stable order.
pub fn crd_manifests() -> Result<Vec<(String, String)>> {
    [
        spec_requires(ClusterMeshPeer::crd(), "podCIDRs"),
        GlobalServicePolicy::crd(),
        upstream_mcs_shape(spec_optional(mcs::ServiceExport::crd())),
        upstream_mcs_shape(mcs::ServiceImport::crd()),
    ]
    .into_iter()
    .map(|crd| {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let body = serde_saphyr::to_string(&crd).map_err(|source| Error::RenderCrd {
            name: name.clone(),
            source,
        })?;
        let file = format!("{}.yaml", name.split('.').next().unwrap_or(&name));
        let header = "# Generated by `cargo run -p knit-crds --bin crdgen`; do not edit.\n";
        Ok((file, format!("{header}{body}")))
    })
    .collect()
}
