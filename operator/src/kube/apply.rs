//! Server-side apply of a [`MeshPlan`], pruning of leftovers, status patches
//! and Events.
//!
//! Every write is a server-side apply with field manager `knit-operator`
//! and `force`, so the operator owns exactly the fields it renders and a
//! second apply of the same plan changes nothing on the server.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret, Service};
use knit_crds::{ClusterMeshPeer, ClusterMeshPeerStatus, GlobalServicePolicy, GlobalServicePolicyStatus};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::render::{EventTarget, MeshPlan, PlanEvent};
use crate::{Error, Result, names};

/// Writes plans and statuses for one operator namespace.
#[derive(Clone)]
pub struct Applier {
    client: Client,
    namespace: String,
    recorder: Recorder,
}

impl Applier {
    /// An applier writing into `namespace`; Events name `instance` as reporter.
    pub fn new(client: Client, namespace: &str, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: names::FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespace: namespace.to_owned(),
        }
    }

    /// The client, for readers that share it.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Lists the Secrets the operator manages in its namespace.
    pub async fn managed_secrets(&self) -> Result<Vec<Secret>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().labels(&managed_selector());
        let list = api.list(&lp).await.map_err(kube_err("listing managed Secrets"))?;
        Ok(list.items)
    }

    /// The peers Service's LoadBalancer ingress: one host name or IP per
    /// entry, empty while the Service has none (or does not exist).
    pub async fn load_balancer_ingress(&self) -> Result<Vec<String>> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &self.namespace);
        let service = api
            .get_opt(names::PEERS_SERVICE)
            .await
            .map_err(kube_err("reading the peers Service"))?;
        Ok(service.map(|s| ingress_addresses(&s)).unwrap_or_default())
    }

    /// Reads one key of a Secret in the operator's namespace.
    pub async fn secret_key(&self, name: &str, key: &str) -> Result<Option<String>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.get_opt(name).await {
            Err(e) => Err(format!("reading Secret {}/{name}: {e}", self.namespace)),
            Ok(None) => Ok(None),
            Ok(Some(secret)) => Ok(secret
                .data
                .and_then(|d| d.get(key).cloned())
                .and_then(|v| String::from_utf8(v.0).ok())),
        }
    }

    /// Applies every object of the plan, then deletes managed Secrets and
    /// ConfigMaps the plan no longer contains (`existing_secrets` is the
    /// list read before rendering).
    /// Returns the applied Deployment's UID, which its Events name.
    pub async fn apply_plan(&self, plan: &MeshPlan, existing_secrets: &[Secret]) -> Result<Option<String>> {
        for secret in &plan.secrets {
            self.apply_namespaced(secret).await?;
        }
        for cm in &plan.config_maps {
            self.apply_namespaced(cm).await?;
        }
        self.apply_namespaced(&plan.service).await?;
        self.apply_namespaced(&plan.replicas_service).await?;
        self.apply_namespaced(&plan.peer_service).await?;
        self.apply_namespaced(&plan.network_policy).await?;
        self.apply_namespaced(&plan.disruption_budget).await?;
        let deployment = self.apply_namespaced(&plan.deployment).await?;
        self.prune(plan, existing_secrets).await?;
        Ok(deployment.metadata.uid)
    }

    async fn prune(&self, plan: &MeshPlan, existing_secrets: &[Secret]) -> Result<()> {
        let keep: BTreeSet<&str> = plan
            .secrets
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        for stale in existing_secrets
            .iter()
            .filter(|s| !keep.contains(s.name_any().as_str()))
        {
            let name = stale.name_any();
            tracing::info!(secret = %name, "deleting Secret no longer in the plan");
            secrets
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(kube_err(format!("deleting stale Secret {name}")))?;
        }
        let keep: BTreeSet<&str> = plan
            .config_maps
            .iter()
            .filter_map(|c| c.metadata.name.as_deref())
            .collect();
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let lp = ListParams::default().labels(&managed_selector());
        let existing = cms
            .list(&lp)
            .await
            .map_err(kube_err("listing managed ConfigMaps"))?;
        for stale in existing
            .items
            .iter()
            .filter(|c| !keep.contains(c.name_any().as_str()))
        {
            let name = stale.name_any();
            tracing::info!(configmap = %name, "deleting ConfigMap no longer in the plan");
            cms.delete(&name, &DeleteParams::default())
                .await
                .map_err(kube_err(format!("deleting stale ConfigMap {name}")))?;
        }
        Ok(())
    }

    async fn apply_namespaced<K>(&self, object: &K) -> Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = object.meta().name.clone().unwrap_or_default();
        api.patch(&name, &apply_params(), &Patch::Apply(object))
            .await
            .map_err(kube_err(format!(
                "applying {} {name}",
                K::kind(&Default::default())
            )))
    }

    /// Writes a ClusterMeshPeer's status (server-side apply on `/status`).
    pub async fn patch_peer_status(&self, name: &str, status: &ClusterMeshPeerStatus) -> Result<()> {
        let api: Api<ClusterMeshPeer> = Api::all(self.client.clone());
        let body = json!({ "apiVersion": "knit.dev/v1alpha1", "kind": "ClusterMeshPeer", "status": status });
        api.patch_status(name, &apply_params(), &Patch::Apply(body))
            .await
            .map_err(kube_err(format!("patching status of ClusterMeshPeer {name}")))?;
        Ok(())
    }

    /// Writes a GlobalServicePolicy's status.
    pub async fn patch_policy_status(
        &self,
        ns: &str,
        name: &str,
        status: &GlobalServicePolicyStatus,
    ) -> Result<()> {
        let api: Api<GlobalServicePolicy> = Api::namespaced(self.client.clone(), ns);
        let body =
            json!({ "apiVersion": "knit.dev/v1alpha1", "kind": "GlobalServicePolicy", "status": status });
        api.patch_status(name, &apply_params(), &Patch::Apply(body))
            .await
            .map_err(kube_err(format!(
                "patching status of GlobalServicePolicy {ns}/{name}"
            )))?;
        Ok(())
    }

    /// Records plan Events; a failure is logged, never fatal.
    /// `trace_id` (of the reconcile that decided them) is appended to each
    /// note, so an Event leads to its trace.
    ///
    /// Each Event names its object's UID (`kubectl describe` selects Events
    /// by UID): a peer's from its metadata, the mesh apiserver
    /// Deployment's as `apiserver_uid` (from its apply). Events about a
    /// ClusterMeshPeer, which is cluster-scoped, go to namespace `default`:
    /// the only one the API server accepts for them, and where
    /// `kubectl describe` finds them.
    pub async fn publish(&self, events: &[PlanEvent], apiserver_uid: Option<&str>, trace_id: Option<&str>) {
        for ev in events {
            let reference = match &ev.target {
                EventTarget::Peer { name, uid } => ObjectReference {
                    api_version: Some("knit.dev/v1alpha1".into()),
                    kind: Some("ClusterMeshPeer".into()),
                    name: Some(name.clone()),
                    uid: uid.clone(),
                    ..ObjectReference::default()
                },
                EventTarget::MeshApiserver => ObjectReference {
                    api_version: Some("apps/v1".into()),
                    kind: Some("Deployment".into()),
                    name: Some(names::APISERVER.into()),
                    namespace: Some(self.namespace.clone()),
                    uid: apiserver_uid.map(str::to_owned),
                    ..ObjectReference::default()
                },
            };
            let event = Event {
                type_: if ev.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: ev.reason.clone(),
                note: Some(crate::render::event_note(&ev.note, trace_id)),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, reason = %ev.reason, "recording Event failed");
            }
        }
    }
}

/// What the exported endpoints need of the peers Service: its ingress and
/// the node port allocated to its `peers` port.
pub fn peers_service_view(service: &Service) -> crate::config::PeersServiceView {
    let node_port = service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("peers"))
        .and_then(|p| p.node_port)
        .and_then(|p| u16::try_from(p).ok());
    crate::config::PeersServiceView {
        ingress: ingress_addresses(service),
        node_port,
    }
}

/// Host name (preferred) or IP of each LoadBalancer ingress entry of `service`.
pub fn ingress_addresses(service: &Service) -> Vec<String> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
        .collect()
}

fn apply_params() -> PatchParams {
    PatchParams::apply(names::FIELD_MANAGER).force()
}

fn managed_selector() -> String {
    format!("{}={}", names::MANAGED_BY_LABEL, names::FIELD_MANAGER)
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}
