//! The GlobalServicePolicy controller: a change to a policy, or to any
//! Service in its namespace, resolves every policy of that namespace again
//! ([`crate::gsp::resolve_policies`]) and patches the statuses that changed.
//! An unchanged status is never written, so status updates do not loop.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use knit_crds::GlobalServicePolicy;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use crate::gsp::{PolicyInput, ServiceLabels, resolve_policies};
use crate::kube::Applier;
use crate::{Error, Result};

/// Resolves and patches one namespace. Returns how many statuses were written.
pub async fn reconcile_namespace(
    applier: &Applier,
    ns: &str,
    policies: &[Arc<GlobalServicePolicy>],
) -> Result<usize> {
    let services: Api<Service> = Api::namespaced(applier.client().clone(), ns);
    let list = services
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Kube {
            action: format!("listing Services in {ns}"),
            source,
        })?;
    let services: Vec<ServiceLabels> = list
        .items
        .iter()
        .map(|s| ServiceLabels {
            name: s.name_any(),
            labels: s.labels().clone(),
        })
        .collect();
    let inputs: Vec<PolicyInput> = policies
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .map(|p| PolicyInput {
            name: p.name_any(),
            generation: p.metadata.generation,
            created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
            spec: p.spec.clone(),
            status: p.status.clone(),
        })
        .collect();
    let mut written = 0;
    for (name, status) in resolve_policies(&services, &inputs, jiff::Timestamp::now()) {
        let current = inputs
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.status.as_ref());
        if current != Some(&status) {
            applier.patch_policy_status(ns, &name, &status).await?;
            written += 1;
        }
    }
    Ok(written)
}

struct Ctx {
    applier: Applier,
    store: Store<GlobalServicePolicy>,
}

/// Runs the controller until the process stops.
pub async fn run(applier: Applier) {
    let client = applier.client().clone();
    let policies: Api<GlobalServicePolicy> = Api::all(client.clone());
    let services: Api<Service> = Api::all(client);
    let controller = Controller::new(policies, watcher::Config::default());
    let store = controller.store();
    let mapper_store = store.clone();
    controller
        .watches(services, watcher::Config::default(), move |svc: Service| {
            let ns = svc.namespace();
            mapper_store
                .state()
                .into_iter()
                .filter(move |p| p.namespace() == ns)
                .map(|p| ObjectRef::from_obj(&*p))
        })
        .run(reconcile, error_policy, Arc::new(Ctx { applier, store }))
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "policy reconcile did not complete");
            }
        })
        .await;
}

#[tracing::instrument(name = "reconcile_policies", skip_all, fields(namespace = tracing::field::Empty, trace_id = tracing::field::Empty))]
async fn reconcile(policy: Arc<GlobalServicePolicy>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = policy.namespace().unwrap_or_default();
    let span = tracing::Span::current();
    span.record("namespace", ns.as_str());
    if let Some(id) = knit_telemetry::trace_id() {
        span.record("trace_id", id.as_str());
    }
    let written = reconcile_namespace(&ctx.applier, &ns, &ctx.store.state()).await?;
    tracing::debug!(namespace = %ns, written, "policies resolved");
    Ok(Action::await_change())
}

fn error_policy(_policy: Arc<GlobalServicePolicy>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %knit_telemetry::error_chain(error), "policy reconcile failed; retrying in 15s");
    Action::requeue(Duration::from_secs(15))
}
