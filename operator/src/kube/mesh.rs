//! The mesh loop: any change to a ClusterMeshPeer, to a managed Secret or to
//! the mesh apiserver Service (its LoadBalancer address), and an hourly tick for certificate renewal, triggers one render of the
//! whole control plane and its apply.
//!
//! Inputs are read fresh from the API at each reconcile (peers from the
//! reflector, Secrets by a direct list) so a render always sees the
//! certificates the previous one wrote and never issues them twice.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use knit_crds::ClusterMeshPeer;
use kube::api::Api;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};

use crate::config::ClusterConfig;
use crate::kube::Applier;
use crate::kube::mesh_status::{MeshReports, watch_reports};
use crate::render::{self, MeshInputs, MeshPlan, PeerInput};
use crate::{Result, names};

/// Shared state of the mesh loop.
pub struct MeshContext {
    /// Local config.
    pub config: ClusterConfig,
    /// Writer.
    pub applier: Applier,
    /// The mesh apiserver's latest report per peer cluster.
    pub reports: MeshReports,
    /// Where host-network agents reach etcd from, kept from the Nodes
    /// while `apiserver.etcdClientCIDRs` is set.
    pub node_sources: NodeSources,
}

/// Shared, current [`render::workloads::node_sources`].
pub type NodeSources = Arc<std::sync::Mutex<Vec<std::net::IpAddr>>>;

/// Builds render inputs for the peers in `peers`, resolving `caSecretRef`s.
pub async fn peer_inputs(applier: &Applier, peers: &[Arc<ClusterMeshPeer>]) -> Vec<PeerInput> {
    let mut out = Vec::with_capacity(peers.len());
    for peer in peers {
        let ca = match (&peer.spec.ca_bundle, &peer.spec.ca_secret_ref) {
            (Some(pem), _) => Ok(pem.clone()),
            (None, Some(r)) => match applier.secret_key(&r.name, &r.key).await {
                Ok(Some(pem)) => Ok(pem),
                Ok(None) => Err(format!(
                    "spec.caSecretRef: Secret {:?} with key {:?} not found in the operator's namespace; create it \
                     with the peer's CA certificate",
                    r.name, r.key
                )),
                Err(e) => Err(format!("spec.caSecretRef: {e}")),
            },
            (None, None) => Err("set spec.caBundle or spec.caSecretRef to the peer's CA certificate".into()),
        };
        out.push(PeerInput::from_peer(peer, ca));
    }
    out
}

/// One reconcile: read, render, apply, write changed statuses, record Events.
/// Runs in a `reconcile_mesh` span; its trace id goes into the logs and the
/// Events it records.
#[tracing::instrument(name = "reconcile_mesh", skip_all, fields(peers = peers.len(), trace_id = tracing::field::Empty))]
pub async fn reconcile_mesh(ctx: &MeshContext, peers: &[Arc<ClusterMeshPeer>]) -> Result<MeshPlan> {
    let trace_id = knit_telemetry::trace_id();
    if let Some(id) = &trace_id {
        tracing::Span::current().record("trace_id", id.as_str());
    }
    let existing = ctx.applier.managed_secrets().await?;
    let stored = render::stored_from_secrets(&existing);
    let load_balancer_ingress = ctx.applier.load_balancer_ingress().await?;
    let mut inputs = peer_inputs(&ctx.applier, peers).await;
    {
        let reports = ctx.reports.lock().unwrap_or_else(|p| p.into_inner());
        for input in &mut inputs {
            input.sync = reports.sync_report(&input.spec.cluster_name);
        }
    }
    let plan = render::render_mesh(&MeshInputs {
        config: &ctx.config,
        peers: &inputs,
        stored: &stored,
        load_balancer_ingress: &load_balancer_ingress,
        node_sources: &ctx.node_sources.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        now: jiff::Timestamp::now(),
    })?;
    let apiserver_uid = ctx.applier.apply_plan(&plan, &existing).await?;
    for peer in &inputs {
        if let Some(desired) = plan.peer_statuses.get(&peer.name)
            && peer.status.as_ref() != Some(desired)
        {
            ctx.applier.patch_peer_status(&peer.name, desired).await?;
        }
    }
    ctx.applier
        .publish(&plan.events, apiserver_uid.as_deref(), trace_id.as_deref())
        .await;
    Ok(plan)
}

/// Runs the mesh loop until the process stops. `on_reconciled` is told the
/// outcome of each pass (for metrics and readiness).
pub async fn run(ctx: MeshContext, on_reconciled: impl Fn(&Result<MeshPlan>)) {
    let client = ctx.applier.client().clone();
    let peers_api: Api<ClusterMeshPeer> = Api::all(client.clone());
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &ctx.config.namespace);
    let services_api: Api<Service> = Api::namespaced(client.clone(), &ctx.config.namespace);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);

    let (peer_store, peer_writer) = reflector::store();
    let peer_events = watcher(peers_api, watcher::Config::default())
        .default_backoff()
        .reflect(peer_writer)
        .touched_objects()
        .map(|_| ());
    let secret_cfg =
        watcher::Config::default().labels(&format!("{}={}", names::MANAGED_BY_LABEL, names::FIELD_MANAGER));
    let secret_events = watcher(secrets_api, secret_cfg)
        .default_backoff()
        .touched_objects()
        .map(|_| ());
    // The peers Service's LoadBalancer ingress goes into the server certificates.
    let service_cfg = watcher::Config::default().fields(&format!("metadata.name={}", names::PEERS_SERVICE));
    let service_events = watcher(services_api, service_cfg)
        .default_backoff()
        .touched_objects()
        .map(|_| ());
    let mut events = futures::stream::select(
        futures::stream::select(peer_events, secret_events),
        service_events,
    )
    .boxed();
    tokio::spawn(watch_reports(
        ctx.applier.clone(),
        ctx.config.clone(),
        ctx.reports.clone(),
        tx.clone(),
    ));
    if !ctx.config.apiserver.etcd_client_cidrs.is_empty() {
        tokio::spawn(watch_node_sources(
            client.clone(),
            ctx.node_sources.clone(),
            tx.clone(),
        ));
    }
    tokio::spawn(async move {
        while events.next().await.is_some() {
            // A full channel already holds a pending trigger: coalesce.
            let _ = tx.try_send(());
        }
    });

    if peer_store.wait_until_ready().await.is_err() {
        tracing::error!("ClusterMeshPeer watch ended before its first list");
        return;
    }
    loop {
        let peers = peer_store.state();
        let outcome = reconcile_mesh(&ctx, &peers).await;
        match &outcome {
            Ok(plan) => tracing::info!(
                peers = peers.len(),
                accepted = plan.accepted.len(),
                "mesh reconciled"
            ),
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(e), "mesh reconcile failed; retrying in 10s")
            }
        }
        on_reconciled(&outcome);
        let wait = if outcome.is_err() { RETRY } else { RENEWAL_CHECK };
        tokio::select! {
            trigger = rx.recv() => if trigger.is_none() { return },
            () = tokio::time::sleep(wait) => {}
        }
        // Let a burst of changes settle into one render.
        tokio::time::sleep(DEBOUNCE).await;
        while rx.try_recv().is_ok() {}
    }
}

/// Keeps `sources` equal to the Nodes' [`render::workloads::node_sources`],
/// triggering a reconcile only when they change (not on every Node status
/// update).
async fn watch_node_sources(
    client: kube::Client,
    sources: NodeSources,
    trigger: tokio::sync::mpsc::Sender<()>,
) {
    let (store, writer) = reflector::store::<Node>();
    let mut events = watcher(Api::<Node>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .boxed();
    while events.next().await.is_some() {
        if store.wait_until_ready().await.is_err() {
            return;
        }
        let nodes: Vec<Node> = store.state().iter().map(|n| (**n).clone()).collect();
        let now = render::workloads::node_sources(&nodes);
        let mut held = sources.lock().unwrap_or_else(|p| p.into_inner());
        if *held != now {
            *held = now;
            drop(held);
            let _ = trigger.try_send(());
        }
    }
}

const RETRY: Duration = Duration::from_secs(10);
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);
const DEBOUNCE: Duration = Duration::from_millis(500);
