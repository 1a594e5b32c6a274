//! Before the kvstore: the agent on a node whose kvstore client config is
//! not mounted yet.
//!
//! The client config is Secret `knit-local-client-cert`, which knit-operator
//! creates. The DaemonSet mounts it `optional`, so the kubelet starts the
//! agent (and, before it, the init container that installs the CNI) without
//! it and fills the volume in when the Secret appears. Until then the agent
//! reports on `/readyz` what it waits for and, when it owns the node's
//! direct routes (a cluster without another CNI), installs them from the
//! Node objects: the mesh apiserver is a pod, possibly on another node, and
//! the agents reach it only once those routes exist.
//!
//! [`until_client_config`] returns as soon as the file is there;
//! [`discover_cluster`] then waits for the kvstore to name the cluster, and
//! the agent's loop ([`crate::run`]) takes over the same routes.

use std::path::Path;
use std::time::Duration;

use knit_kvstore::EtcdClientConfig;
use knit_sources::Source;
use knit_telemetry::Health;

use crate::index::MeshIndex;
use crate::metrics::Metrics;
use crate::netdev::NetDevices;

/// What the agent waits for, as `/readyz` says it.
pub const WAITING_FOR_CLIENT_CONFIG: &str =
    "the kvstore client config (Secret knit-local-client-cert, which knit-operator creates)";

/// Waits until `client_config` exists, keeping the direct routes of node
/// `node_routes.1` from the Node objects of `source` meanwhile when
/// `node_routes` is set.
pub async fn until_client_config<S: Source>(
    client_config: &Path,
    source: &mut S,
    node_routes: Option<(&NetDevices, &str)>,
    metrics: &Metrics,
    health: &Health,
) {
    if client_config.exists() {
        return;
    }
    tracing::info!(path = %client_config.display(), "waiting for {WAITING_FOR_CLIENT_CONFIG}");
    health.set_waiting_for(WAITING_FOR_CLIENT_CONFIG);
    let empty = MeshIndex::default();
    let mut routes_due = true;
    while !client_config.exists() {
        if let Some((net, node)) = node_routes
            && routes_due
            && source.is_ready()
        {
            routes_due = !crate::run::sync_node_routes(
                net,
                crate::node_routes::desired(&empty, &source.state().nodes, node),
                metrics,
            )
            .await;
            if !routes_due {
                tracing::info!(
                    routes = metrics.node_routes.get(),
                    "direct node routes installed from the Node objects"
                );
            }
        }
        tokio::select! {
            changed = source.next_change() => routes_due |= changed,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    tracing::info!(path = %client_config.display(), "kvstore client config mounted");
}

/// Waits until the local kvstore names its cluster.
pub async fn discover_cluster(config: &EtcdClientConfig) -> String {
    loop {
        let found = async {
            let mut client = knit_kvstore::etcd::connect(config).await?;
            knit_kvstore::etcd::local_cluster_name(&mut client).await
        }
        .await;
        match found {
            Ok(Some(name)) => return name,
            Ok(None) => tracing::info!("the local kvstore has no cluster yet; waiting"),
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "cannot read the cluster name; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
