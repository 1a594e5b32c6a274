//! Multi-Cluster Services in a Kubernetes cluster: the thin layer around
//! [`crate::mcs`]. Every pass reads the exported services of the mesh from
//! the local kvstore (this cluster's, and every peer's mirror) and the
//! cluster's Namespaces and `ServiceExport`s, then:
//! - applies a derived Service per clusterset service whose namespace
//!   exists here, and the `ServiceImport` carrying its ClusterIP (the
//!   clusterset VIP) and the exporting clusters;
//! - deletes the derived Services and `ServiceImport`s no longer wanted;
//! - writes the conditions (`Valid`, `Conflict`, `Ready`) of this cluster's
//!   `ServiceExport`s when they change.
//!
//! `ServiceExport`s are read and patched as dynamic objects: the kind has no
//! required spec, so objects without one stay readable.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use knit_crds::mcs::{SERVICE_NAME_LABEL, ServiceExport, ServiceImport};
use knit_kvstore::records::ServiceRecord;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::mcs::{self, ClustersetService};
use crate::{Error, Result, conditions, names};

/// What one pass wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct McsReport {
    /// Clusterset services imported here.
    pub imported: usize,
    /// Derived Services and ServiceImports deleted.
    pub deleted: usize,
    /// ServiceExport statuses written.
    pub statuses: usize,
}

fn kube_err(action: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(names::FIELD_MANAGER).force()
}

fn managed_mcs_selector() -> String {
    format!(
        "{}={},{SERVICE_NAME_LABEL}",
        names::MANAGED_BY_LABEL,
        names::FIELD_MANAGER
    )
}

/// One pass for cluster `cluster` over the exported services `records`.
pub async fn reconcile_mcs(client: &Client, cluster: &str, records: &[ServiceRecord]) -> Result<McsReport> {
    let mut report = McsReport::default();
    let namespaces: BTreeSet<String> = Api::<Namespace>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .map_err(kube_err("listing Namespaces".into()))?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let services = mcs::clusterset_services(records);
    let mut wanted_derived = BTreeSet::new();
    let mut wanted_imports = BTreeSet::new();
    for service in mcs::imported(&services, &namespaces) {
        let ips = match mcs::derived_service(service, None)? {
            Some(derived) => {
                let name = derived.name_any();
                wanted_derived.insert((service.namespace.clone(), name.clone()));
                let applied = Api::<Service>::namespaced(client.clone(), &service.namespace)
                    .patch(&name, &apply_params(), &Patch::Apply(&derived))
                    .await
                    .map_err(kube_err(format!(
                        "applying derived Service {}/{name}",
                        service.namespace
                    )))?;
                applied
                    .spec
                    .and_then(|s| s.cluster_ips.or(s.cluster_ip.map(|ip| vec![ip])))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|ip| ip != "None")
                    .take(1)
                    .collect()
            }
            None => Vec::new(),
        };
        apply_import(client, service, ips).await?;
        wanted_imports.insert((service.namespace.clone(), service.name.clone()));
        report.imported += 1;
    }
    report.deleted += prune::<Service>(client, &managed_mcs_selector(), &wanted_derived).await?;
    let import_selector = format!(
        "{}={},app.kubernetes.io/component=mcs",
        names::MANAGED_BY_LABEL,
        names::FIELD_MANAGER
    );
    report.deleted += prune::<ServiceImport>(client, &import_selector, &wanted_imports).await?;
    report.statuses += write_export_statuses(client, cluster, records, &services).await?;
    Ok(report)
}

async fn apply_import(client: &Client, service: &ClustersetService, ips: Vec<String>) -> Result<()> {
    let import = mcs::service_import(service, ips);
    let api: Api<ServiceImport> = Api::namespaced(client.clone(), &service.namespace);
    let name = &service.name;
    let mut spec_only = import.clone();
    spec_only.status = None;
    api.patch(name, &apply_params(), &Patch::Apply(&spec_only))
        .await
        .map_err(kube_err(format!(
            "applying ServiceImport {}/{name}",
            service.namespace
        )))?;
    let status = json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceImport",
        "status": import.status,
    });
    api.patch_status(name, &apply_params(), &Patch::Apply(&status))
        .await
        .map_err(kube_err(format!(
            "writing status of ServiceImport {}/{name}",
            service.namespace
        )))?;
    Ok(())
}

/// Deletes the objects matching `selector` that are not in `wanted`
/// (namespace, name); how many.
async fn prune<K>(client: &Client, selector: &str, wanted: &BTreeSet<(String, String)>) -> Result<usize>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    let all: Api<K> = Api::all(client.clone());
    let existing = all
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(kube_err(format!("listing managed {kind}s")))?;
    let mut deleted = 0;
    for object in existing.items {
        let (ns, name) = (object.namespace().unwrap_or_default(), object.name_any());
        if wanted.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        Api::<K>::namespaced(client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await
            .map_err(kube_err(format!("deleting {kind} {ns}/{name}")))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Writes the conditions of this cluster's ServiceExports that changed.
async fn write_export_statuses(
    client: &Client,
    cluster: &str,
    records: &[ServiceRecord],
    services: &[ClustersetService],
) -> Result<usize> {
    let resource = ApiResource::erase::<ServiceExport>(&());
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let exports = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        // No MCS CRDs in this cluster: nothing to report.
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(0),
        Err(e) => return Err(kube_err("listing ServiceExports".into())(e)),
    };
    let mut written = 0;
    for export in exports {
        let (ns, name) = (export.namespace().unwrap_or_default(), export.name_any());
        let exported = records.iter().any(|r| {
            r.cluster == cluster && r.namespace == ns && r.name == name && r.service_export.is_some()
        });
        let clusterset = services.iter().find(|s| s.namespace == ns && s.name == name);
        let old: Vec<Condition> = export
            .data
            .pointer("/status/conditions")
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let desired = mcs::export_conditions(cluster, &ns, &name, exported, clusterset);
        let settled = conditions::settle(&old, desired, export.metadata.generation, jiff::Timestamp::now());
        if settled == old {
            continue;
        }
        let body = json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "status": { "conditions": settled },
        });
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
            .patch_status(&name, &apply_params(), &Patch::Apply(&body))
            .await
            .map_err(kube_err(format!("writing status of ServiceExport {ns}/{name}")))?;
        written += 1;
    }
    Ok(written)
}

/// Runs passes every `every` until the process stops; `records` reads the
/// exported services of the mesh from the local kvstore.
pub async fn run<F, Fut>(client: Client, cluster: String, every: Duration, records: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<ServiceRecord>>>,
{
    loop {
        let pass = async {
            let records = records().await?;
            reconcile_mcs(&client, &cluster, &records).await
        };
        match pass.await {
            Ok(report) if report != McsReport::default() => {
                tracing::info!(?report, "multi-cluster services reconciled")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %knit_kvstore::error_chain(&e), "multi-cluster services pass failed; retrying")
            }
        }
        tokio::time::sleep(every).await;
    }
}
