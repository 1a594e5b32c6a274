//! Multi-Cluster Services in a Kubernetes cluster: the thin layer around
//! [`crate::mcs`]. Every pass reads the exported services of the mesh from
//! the local kvstore (this cluster's, and every peer's mirror, over one
//! connection kept between passes) and the cluster's Namespaces,
//! `ServiceImport`s and `ServiceExport`s, then:
//! - applies a derived Service per clusterset service whose namespace
//!   exists here, and the `ServiceImport` carrying its ClusterIP (the
//!   clusterset VIP) and the exporting clusters;
//! - deletes the derived Services and `ServiceImport`s no longer wanted;
//! - writes the conditions (`Valid`, `Conflict`, `Ready`) of this cluster's
//!   `ServiceExport`s when they change.
//!
//! It writes only what changed since its last pass (a full re-apply every
//! [`FULL_SYNC_EVERY`] passes repairs drift), so an idle mesh of 500
//! imported services costs four lists per pass, not 1,500 applies.
//!
//! It shares the MCS API with other implementations: server-side apply
//! without `force`, so a field another controller owns is reported as a
//! conflict and left alone; a `ServiceImport` Knit did not create (no
//! managed-by label) is not touched; and without the MCS CRDs (see
//! `config/mcs`) a pass does nothing.
//!
//! `ServiceExport`s are read and patched as dynamic objects: the kind has no
//! required spec, so objects without one stay readable.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
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

/// Passes between two full re-applies of every object.
pub const FULL_SYNC_EVERY: u32 = 120;

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct McsReport {
    /// Clusterset services imported here.
    pub imported: usize,
    /// Objects applied (created or changed).
    pub applied: usize,
    /// Derived Services and ServiceImports deleted.
    pub deleted: usize,
    /// ServiceExport statuses written.
    pub statuses: usize,
    /// ServiceImports left alone because another controller made them.
    pub foreign: usize,
    /// Applies refused because another field manager owns a field.
    pub conflicts: usize,
}

/// The MCS layer's state between passes: what it applied, so an unchanged
/// object is not written again.
pub struct McsSync {
    client: Client,
    cluster: String,
    applied: BTreeMap<String, u64>,
    derived_ips: BTreeMap<(String, String), Vec<String>>,
    passes: u32,
    told_not_granted: bool,
}

fn kube_err(action: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { action, source }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(names::FIELD_MANAGER)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

fn digest(value: &impl serde::Serialize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn managed_mcs_selector() -> String {
    format!(
        "{}={},{SERVICE_NAME_LABEL}",
        names::MANAGED_BY_LABEL,
        names::FIELD_MANAGER
    )
}

/// Outcome of one apply.
enum Applied<T> {
    Unchanged,
    Written(Option<T>),
    Conflict,
}

impl McsSync {
    /// The layer for cluster `cluster`.
    pub fn new(client: Client, cluster: impl Into<String>) -> Self {
        Self {
            client,
            cluster: cluster.into(),
            applied: BTreeMap::new(),
            derived_ips: BTreeMap::new(),
            passes: 0,
            told_not_granted: false,
        }
    }

    /// Server-side applies `body` at `key` unless it is what was applied
    /// last; a conflict with another field manager is reported, not an
    /// error.
    async fn apply<T, F, Fut>(
        &mut self,
        key: String,
        body: &impl serde::Serialize,
        write: F,
    ) -> Result<Applied<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, kube::Error>>,
    {
        let d = digest(body);
        if self.applied.get(&key) == Some(&d) {
            return Ok(Applied::Unchanged);
        }
        match write().await {
            Ok(v) => {
                self.applied.insert(key, d);
                Ok(Applied::Written(Some(v)))
            }
            Err(e) if is_status(&e, 409) => {
                tracing::warn!(object = %key, error = %e, "another controller owns a field of this object; left as it is");
                Ok(Applied::Conflict)
            }
            Err(e) => Err(kube_err(format!("applying {key}"))(e)),
        }
    }

    /// One pass over the exported services `records`.
    pub async fn reconcile(&mut self, records: &[ServiceRecord]) -> Result<McsReport> {
        let mut report = McsReport::default();
        self.passes += 1;
        if self.passes > FULL_SYNC_EVERY {
            self.passes = 1;
            self.applied.clear();
        }
        let client = self.client.clone();
        let imports = match Api::<ServiceImport>::all(client.clone())
            .list_metadata(&ListParams::default())
            .await
        {
            Ok(list) => list.items,
            Err(e) if is_status(&e, 404) => {
                tracing::debug!("no ServiceImport CRD (config/mcs): nothing to import");
                return Ok(report);
            }
            Err(e) if is_status(&e, 403) => {
                if !std::mem::replace(&mut self.told_not_granted, true) {
                    tracing::info!(
                        "the MCS API is not granted to knit-operator (apply config/mcs/rbac to enable it)"
                    );
                }
                return Ok(report);
            }
            Err(e) => return Err(kube_err("listing ServiceImports".into())(e)),
        };
        let ours = |o: &kube::core::PartialObjectMeta<ServiceImport>| {
            o.labels().get(names::MANAGED_BY_LABEL).map(String::as_str) == Some(names::FIELD_MANAGER)
        };
        let foreign: BTreeSet<(String, String)> = imports
            .iter()
            .filter(|o| !ours(o))
            .map(|o| (o.namespace().unwrap_or_default(), o.name_any()))
            .collect();
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
            let id = (service.namespace.clone(), service.name.clone());
            if foreign.contains(&id) {
                report.foreign += 1;
                continue;
            }
            wanted_imports.insert(id.clone());
            report.imported += 1;
            let ips = match mcs::derived_service(service, None)? {
                Some(derived) => {
                    let name = derived.name_any();
                    wanted_derived.insert((service.namespace.clone(), name.clone()));
                    let api = Api::<Service>::namespaced(client.clone(), &service.namespace);
                    let key = format!("Service {}/{name}", service.namespace);
                    let (params, patch) = (apply_params(), Patch::Apply(&derived));
                    match self
                        .apply(key, &derived, || api.patch(&name, &params, &patch))
                        .await?
                    {
                        Applied::Written(Some(applied)) => {
                            report.applied += 1;
                            let ips: Vec<String> = applied
                                .spec
                                .and_then(|s| s.cluster_ips.or(s.cluster_ip.map(|ip| vec![ip])))
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|ip| ip != "None")
                                .take(1)
                                .collect();
                            self.derived_ips.insert(id.clone(), ips.clone());
                            ips
                        }
                        Applied::Conflict => {
                            report.conflicts += 1;
                            continue;
                        }
                        _ => self.derived_ips.get(&id).cloned().unwrap_or_default(),
                    }
                }
                None => Vec::new(),
            };
            self.apply_import(service, ips, &mut report).await?;
        }
        report.deleted += self.prune_derived(&wanted_derived).await?;
        for object in imports.iter().filter(|o| ours(o)) {
            let (ns, name) = (object.namespace().unwrap_or_default(), object.name_any());
            if wanted_imports.contains(&(ns.clone(), name.clone())) {
                continue;
            }
            Api::<ServiceImport>::namespaced(client.clone(), &ns)
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(kube_err(format!("deleting ServiceImport {ns}/{name}")))?;
            self.applied
                .retain(|k, _| !k.starts_with(&format!("ServiceImport {ns}/{name}")));
            report.deleted += 1;
        }
        let (statuses, conflicts) = self.write_export_statuses(records, &services).await?;
        report.statuses += statuses;
        report.conflicts += conflicts;
        Ok(report)
    }

    async fn apply_import(
        &mut self,
        service: &ClustersetService,
        ips: Vec<String>,
        report: &mut McsReport,
    ) -> Result<()> {
        let import = mcs::service_import(service, ips);
        let api: Api<ServiceImport> = Api::namespaced(self.client.clone(), &service.namespace);
        let name = service.name.clone();
        let mut spec_only = import.clone();
        spec_only.status = None;
        let key = format!("ServiceImport {}/{name}", service.namespace);
        let (params, patch) = (apply_params(), Patch::Apply(&spec_only));
        match self
            .apply(key.clone(), &spec_only, || api.patch(&name, &params, &patch))
            .await?
        {
            Applied::Conflict => {
                report.conflicts += 1;
                return Ok(());
            }
            Applied::Written(_) => report.applied += 1,
            Applied::Unchanged => {}
        }
        let status = json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "status": import.status,
        });
        let patch = Patch::Apply(&status);
        match self
            .apply(format!("{key} status"), &status, || {
                api.patch_status(&name, &params, &patch)
            })
            .await?
        {
            Applied::Conflict => report.conflicts += 1,
            Applied::Written(_) => report.applied += 1,
            Applied::Unchanged => {}
        }
        Ok(())
    }

    /// Deletes the derived Services Knit made that are not in `wanted`.
    async fn prune_derived(&mut self, wanted: &BTreeSet<(String, String)>) -> Result<usize> {
        let existing = Api::<Service>::all(self.client.clone())
            .list_metadata(&ListParams::default().labels(&managed_mcs_selector()))
            .await
            .map_err(kube_err("listing managed Services".into()))?;
        let mut deleted = 0;
        for object in existing.items {
            let (ns, name) = (object.namespace().unwrap_or_default(), object.name_any());
            if wanted.contains(&(ns.clone(), name.clone())) {
                continue;
            }
            Api::<Service>::namespaced(self.client.clone(), &ns)
                .delete(&name, &DeleteParams::default())
                .await
                .map_err(kube_err(format!("deleting Service {ns}/{name}")))?;
            self.applied.remove(&format!("Service {ns}/{name}"));
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Writes the conditions of this cluster's ServiceExports that changed;
    /// (written, conflicts).
    async fn write_export_statuses(
        &mut self,
        records: &[ServiceRecord],
        services: &[ClustersetService],
    ) -> Result<(usize, usize)> {
        let (client, cluster) = (self.client.clone(), self.cluster.clone());
        let resource = ApiResource::erase::<ServiceExport>(&());
        let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let exports = match all.list(&ListParams::default()).await {
            Ok(list) => list.items,
            // No MCS CRDs in this cluster: nothing to report.
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok((0, 0)),
            Err(e) => return Err(kube_err("listing ServiceExports".into())(e)),
        };
        let (mut written, mut conflicts) = (0, 0);
        for export in exports {
            let (ns, name) = (export.namespace().unwrap_or_default(), export.name_any());
            let exported = records.iter().any(|r| {
                r.cluster == *cluster && r.namespace == ns && r.name == name && r.service_export.is_some()
            });
            let clusterset = services.iter().find(|s| s.namespace == ns && s.name == name);
            let old: Vec<Condition> = export
                .data
                .pointer("/status/conditions")
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            let desired = mcs::export_conditions(&cluster, &ns, &name, exported, clusterset);
            let settled =
                conditions::settle(&old, desired, export.metadata.generation, jiff::Timestamp::now());
            if settled == old {
                continue;
            }
            let body = json!({
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceExport",
                "status": { "conditions": settled },
            });
            match Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource)
                .patch_status(&name, &apply_params(), &Patch::Apply(&body))
                .await
            {
                Ok(_) => written += 1,
                Err(e) if is_status(&e, 409) => {
                    tracing::warn!(export = %format!("{ns}/{name}"), error = %e, "another controller owns these ServiceExport conditions");
                    conflicts += 1;
                }
                Err(e) => {
                    return Err(kube_err(format!("writing status of ServiceExport {ns}/{name}"))(
                        e,
                    ));
                }
            }
        }
        Ok((written, conflicts))
    }
}

/// Runs passes every `every` until the process stops. `connect` opens the
/// local kvstore, once, and again only after a failed read.
pub async fn run<C, Fut>(client: Client, cluster: String, every: Duration, connect: C)
where
    C: Fn() -> Fut,
    Fut: std::future::Future<Output = knit_kvstore::Result<etcd_client::Client>>,
{
    let mut sync = McsSync::new(client, cluster);
    let mut etcd: Option<etcd_client::Client> = None;
    loop {
        let outcome = async {
            let conn = match etcd.as_mut() {
                Some(c) => c,
                None => etcd.insert(connect().await?),
            };
            let records = knit_kvstore::etcd::exported_services(conn).await;
            if records.is_err() {
                etcd = None;
            }
            sync.reconcile(&records?).await
        }
        .await;
        match outcome {
            Ok(report)
                if report != McsReport::default()
                    && report.applied + report.deleted + report.statuses > 0 =>
            {
                tracing::info!(?report, "multi-cluster services reconciled")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "multi-cluster services pass failed; retrying")
            }
        }
        tokio::time::sleep(every).await;
    }
}
