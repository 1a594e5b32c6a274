//! Where the apiserver learns the cluster's state: Kubernetes objects as
//! one [`ClusterState`] value, kept current by a [`Source`]. The
//! [`kubernetes`] source watches the API server; the [`directory`] source
//! reads YAML files (sites without Kubernetes, the local mesh, tests).

pub mod directory;
pub mod kubernetes;

use std::future::Future;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use knit_crds::GlobalServicePolicy;

/// Every object the apiserver exports from, keyed by `namespace/name`
/// (or `name` for cluster-scoped kinds).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Nodes.
    pub nodes: BTreeMap<String, Node>,
    /// Pods.
    pub pods: BTreeMap<String, Pod>,
    /// Namespaces.
    pub namespaces: BTreeMap<String, Namespace>,
    /// Services.
    pub services: BTreeMap<String, Service>,
    /// EndpointSlices.
    pub endpoint_slices: BTreeMap<String, EndpointSlice>,
    /// NetworkPolicies.
    pub network_policies: BTreeMap<String, NetworkPolicy>,
    /// GlobalServicePolicies.
    pub policies: BTreeMap<String, GlobalServicePolicy>,
}

/// A live view of the cluster's objects.
pub trait Source: Send {
    /// Waits for the next change and applies it; `false` when the wake-up
    /// changed nothing.
    fn next_change(&mut self) -> impl Future<Output = bool> + Send;
    /// The current state.
    fn state(&self) -> &ClusterState;
    /// Whether every kind has been read completely once. Exporting before
    /// would publish a partial state and delete what peers already have.
    fn is_ready(&self) -> bool;
}

/// `namespace/name` or `name`.
pub fn object_key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}
