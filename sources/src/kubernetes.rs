//! The Kubernetes source: one watcher per kind the reader asked for
//! ([`Kinds`]: Nodes, Pods, Namespaces, Services, EndpointSlices,
//! NetworkPolicies, GlobalServicePolicies, ServiceExports), merged into one
//! stream that updates a [`ClusterState`] in place. Kinds not asked for stay
//! empty and count as listed. ServiceExports are optional: while their CRD
//! is not installed (the list answers 404) they count as listed and empty,
//! and the watch keeps retrying, so installing the CRD later just works.
//!
//! A (re)list is buffered and swapped in whole on `InitDone`, so a relist
//! never shows a half-empty state. Pods and Nodes are kept as
//! [`PodInfo`] / [`NodeInfo`], like the directory source does.

use std::collections::BTreeMap;

use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use knit_crds::GlobalServicePolicy;
use knit_crds::mcs::ServiceExport;
use kube::api::{Api, ApiResource, DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use crate::{
    CiliumPolicy, ClusterState, EndpointSliceInfo, Interner, Kinds, NodeInfo, PodInfo, ServiceExportInfo,
    ServiceInfo, Source, object_key,
};

// Boxing each event would cost an allocation per object for nothing: the
// stream hands them over one at a time.
#[allow(clippy::large_enum_variant)]
enum Change {
    Node(Event<Node>),
    Pod(Event<Pod>),
    Namespace(Event<Namespace>),
    Service(Event<Service>),
    EndpointSlice(Event<EndpointSlice>),
    NetworkPolicy(Event<NetworkPolicy>),
    Policy(Event<GlobalServicePolicy>),
    ServiceExport(Event<PartialObjectMeta<ServiceExport>>),
    /// The ServiceExport CRD is not installed.
    ServiceExportsAbsent,
    /// A CiliumNetworkPolicy (0) or CiliumClusterwideNetworkPolicy (1) event.
    Cilium(usize, Event<DynamicObject>),
    /// That Cilium CRD is not installed.
    CiliumAbsent(usize),
}

/// Relist buffers and readiness per kind.
#[derive(Default)]
struct Buffers {
    nodes: Option<BTreeMap<String, NodeInfo>>,
    pods: Option<BTreeMap<String, PodInfo>>,
    namespaces: Option<BTreeMap<String, Namespace>>,
    services: Option<BTreeMap<String, ServiceInfo>>,
    endpoint_slices: Option<BTreeMap<String, EndpointSliceInfo>>,
    network_policies: Option<BTreeMap<String, NetworkPolicy>>,
    policies: Option<BTreeMap<String, GlobalServicePolicy>>,
    service_exports: Option<BTreeMap<String, ServiceExportInfo>>,
    /// Per Cilium kind: its policies (merged into the state's one map) and
    /// its relist buffer.
    cilium: [BTreeMap<String, CiliumPolicy>; 2],
    cilium_buffers: [Option<BTreeMap<String, CiliumPolicy>>; 2],
}

/// Watches the cluster through the Kubernetes API.
pub struct KubernetesSource {
    state: ClusterState,
    interner: Interner,
    buffers: Buffers,
    listed: [bool; 10],
    changes: SelectAll<BoxStream<'static, Change>>,
}

impl KubernetesSource {
    /// Starts one cluster-wide watcher per kind in `kinds`.
    pub fn new(client: Client, kinds: Kinds) -> Self {
        fn stream<K>(client: &Client, wrap: fn(Event<K>) -> Change) -> BoxStream<'static, Change>
        where
            K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        {
            watcher(Api::<K>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .filter_map(move |r| async move {
                    r.map_err(|e| tracing::warn!(error = %e, "Kubernetes watch error; retrying"))
                        .ok()
                        .map(wrap)
                })
                .boxed()
        }
        use kube::runtime::watcher::watcher;
        let wanted = [
            kinds.nodes,
            kinds.pods,
            kinds.namespaces,
            kinds.services,
            kinds.endpoint_slices,
            kinds.network_policies,
            kinds.policies,
            kinds.service_exports,
            kinds.cilium_policies,
            kinds.cilium_policies,
        ];
        let streams = [
            kinds.nodes.then(|| stream::<Node>(&client, Change::Node)),
            kinds.pods.then(|| stream::<Pod>(&client, Change::Pod)),
            kinds
                .namespaces
                .then(|| stream::<Namespace>(&client, Change::Namespace)),
            kinds
                .services
                .then(|| stream::<Service>(&client, Change::Service)),
            kinds
                .endpoint_slices
                .then(|| stream::<EndpointSlice>(&client, Change::EndpointSlice)),
            kinds
                .network_policies
                .then(|| stream::<NetworkPolicy>(&client, Change::NetworkPolicy)),
            kinds
                .policies
                .then(|| stream::<GlobalServicePolicy>(&client, Change::Policy)),
            kinds.service_exports.then(|| optional_service_exports(&client)),
            kinds.cilium_policies.then(|| {
                optional_cilium_policies(
                    &client,
                    0,
                    "CiliumNetworkPolicy",
                    "ciliumnetworkpolicies",
                    "ciliumnetworkpolicies.cilium.io",
                )
            }),
            kinds.cilium_policies.then(|| {
                optional_cilium_policies(
                    &client,
                    1,
                    "CiliumClusterwideNetworkPolicy",
                    "ciliumclusterwidenetworkpolicies",
                    "ciliumclusterwidenetworkpolicies.cilium.io",
                )
            }),
        ];
        Self {
            state: ClusterState::default(),
            interner: Interner::default(),
            buffers: Buffers::default(),
            listed: wanted.map(|w| !w),
            changes: futures::stream::select_all(streams.into_iter().flatten()),
        }
    }

    fn apply(&mut self, change: Change) -> bool {
        let (s, b, i) = (&mut self.state, &mut self.buffers, &mut self.interner);
        let (kind, applied) = match change {
            Change::Node(e) => (0, apply(&mut s.nodes, &mut b.nodes, e, &mut NodeInfo::from)),
            Change::Pod(e) => (
                1,
                apply(&mut s.pods, &mut b.pods, e, &mut |p| PodInfo::from_pod(p, i)),
            ),
            Change::Namespace(e) => (2, apply(&mut s.namespaces, &mut b.namespaces, e, &mut |o| o)),
            Change::Service(e) => (
                3,
                apply(&mut s.services, &mut b.services, e, &mut ServiceInfo::from),
            ),
            Change::EndpointSlice(e) => (
                4,
                apply(
                    &mut s.endpoint_slices,
                    &mut b.endpoint_slices,
                    e,
                    &mut EndpointSliceInfo::from,
                ),
            ),
            Change::NetworkPolicy(e) => (
                5,
                apply(&mut s.network_policies, &mut b.network_policies, e, &mut |o| o),
            ),
            Change::Policy(e) => (6, apply(&mut s.policies, &mut b.policies, e, &mut |o| o)),
            Change::ServiceExport(e) => (
                7,
                apply(&mut s.service_exports, &mut b.service_exports, e, &mut |o| {
                    ServiceExportInfo::from_metadata(o.metadata)
                }),
            ),
            Change::ServiceExportsAbsent => {
                let had = !s.service_exports.is_empty();
                s.service_exports.clear();
                (7, if had { Applied::Changed } else { Applied::ListDone })
            }
            Change::Cilium(i, e) => {
                let applied = apply(&mut b.cilium[i], &mut b.cilium_buffers[i], e, &mut |o| {
                    CiliumPolicy::from_object(serde_json::to_value(o).unwrap_or_default()).1
                });
                s.cilium_policies = b.cilium.iter().flat_map(|m| m.clone()).collect();
                (8 + i, applied)
            }
            Change::CiliumAbsent(i) => {
                let had = !b.cilium[i].is_empty();
                b.cilium[i].clear();
                s.cilium_policies = b.cilium.iter().flat_map(|m| m.clone()).collect();
                (8 + i, if had { Applied::Changed } else { Applied::ListDone })
            }
        };
        if applied == Applied::ListDone {
            self.listed[kind] = true;
            self.interner.prune();
        }
        applied != Applied::Buffered
    }
}

/// The ServiceExport watch, of metadata only (all the export reads); a 404
/// on the list (no CRD) becomes [`Change::ServiceExportsAbsent`] instead of
/// an endless wait.
fn optional_service_exports(client: &Client) -> BoxStream<'static, Change> {
    use kube::runtime::watcher::watcher;
    watcher(
        Api::<PartialObjectMeta<ServiceExport>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .filter_map(|r| async move {
        match r {
            Ok(e) => Some(Change::ServiceExport(e)),
            Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) if status.code == 404 => {
                tracing::debug!("ServiceExport CRD not installed; no MCS exports");
                Some(Change::ServiceExportsAbsent)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Kubernetes watch error; retrying");
                None
            }
        }
    })
    .boxed()
}

/// A watch of one of Cilium's policy kinds (`cilium.io/v2`), read as
/// dynamic objects (the agent reads the subset it supports), running only
/// while its CRD is installed ([`crate::crd_gate`]); without the CRD the
/// kind counts as listed and empty.
fn optional_cilium_policies(
    client: &Client,
    index: usize,
    kind: &'static str,
    plural: &'static str,
    crd: &'static str,
) -> BoxStream<'static, Change> {
    let resource = ApiResource {
        group: "cilium.io".into(),
        version: "v2".into(),
        api_version: "cilium.io/v2".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let client_for_watch = client.clone();
    crate::crd_gate::while_crd_exists(
        client,
        crd,
        move || {
            use kube::runtime::watcher::watcher;
            watcher(
                Api::<DynamicObject>::all_with(client_for_watch.clone(), &resource),
                watcher::Config::default(),
            )
            .default_backoff()
            .filter_map(move |r| async move {
                match r {
                    Ok(e) => Some(Change::Cilium(index, e)),
                    Err(e) => {
                        tracing::warn!(error = %e, "Kubernetes watch error; retrying");
                        None
                    }
                }
            })
            .boxed()
        },
        move || Change::CiliumAbsent(index),
    )
}

#[derive(PartialEq, Eq)]
enum Applied {
    Changed,
    Buffered,
    ListDone,
}

fn apply<K: Resource, V>(
    map: &mut BTreeMap<String, V>,
    buffer: &mut Option<BTreeMap<String, V>>,
    event: Event<K>,
    convert: &mut dyn FnMut(K) -> V,
) -> Applied {
    let key = |o: &K| {
        object_key(
            o.meta().namespace.as_deref(),
            o.meta().name.as_deref().unwrap_or_default(),
        )
    };
    match event {
        Event::Apply(o) => {
            map.insert(key(&o), convert(o));
            Applied::Changed
        }
        Event::Delete(o) => {
            map.remove(&key(&o));
            Applied::Changed
        }
        Event::Init => {
            *buffer = Some(BTreeMap::new());
            Applied::Buffered
        }
        Event::InitApply(o) => {
            buffer.get_or_insert_default().insert(key(&o), convert(o));
            Applied::Buffered
        }
        Event::InitDone => {
            *map = buffer.take().unwrap_or_default();
            Applied::ListDone
        }
    }
}

impl Source for KubernetesSource {
    async fn next_change(&mut self) -> bool {
        match self.changes.next().await {
            Some(change) => {
                let mut changed = self.apply(change);
                while let Some(Some(change)) = futures::FutureExt::now_or_never(self.changes.next()) {
                    changed |= self.apply(change);
                }
                changed
            }
            None => {
                std::future::pending::<()>().await;
                false
            }
        }
    }

    fn state(&self) -> &ClusterState {
        &self.state
    }

    fn is_ready(&self) -> bool {
        self.listed.iter().all(|l| *l)
    }
}
