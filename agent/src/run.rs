//! The agent's setup and event sources: [`run`] loads the datapath,
//! waits for the kvstore's client config, starts the kvstore watch, the
//! health prober and the peer report, and then hands every event to the
//! loop ([`crate::agent_loop::AgentLoop`]): kvstore events, failing
//! nodes, policy-source changes, new knit-cni attachments (inotify) and
//! the refresh tick. After each, the loop writes the datapath if a change
//! is due: endpoint and service records are patched alone
//! ([`crate::incremental`]), anything else renders the whole node again.
//!
//! Fail static: nothing is written before the first complete kvstore list
//! (and the first complete read of the policy source and of the CNI
//! attachments), so a restarted agent
//! never replaces good pinned maps with an empty view; a lost kvstore
//! connection leaves the maps as they are until the watch reconnects and
//! its re-list has drained whatever was deleted meanwhile. The helpers
//! below are the loop's I/O steps.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use knit_kvstore::EtcdClientConfig;
use knit_kvstore::KEY_PREFIX;
use knit_kvstore::etcd::{connect, load_client_config};
use knit_kvstore::records::AgentStatusRecord;
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use knit_sources::Source;
use knit_telemetry::Health;
use tokio::sync::mpsc;

use knit_cni::attachment::{Attachment, AttachmentStore};

use crate::agent_loop::{AgentLoop, AgentParts, Outputs};
use crate::datapath::Datapath;
use crate::encryption::node::NodeEncryption;
use crate::index::MeshIndex;
use crate::metrics::{Metrics, Name};
use crate::netdev::NetDevices;
use crate::render::RenderOptions;
use crate::{Error, Result};
use knit_telemetry::AbortOnDrop;

/// How the agent is set up.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// This cluster's name; read from the local kvstore when `None`.
    pub cluster: Option<String>,
    /// This node's name (as in Pod `spec.nodeName`).
    pub node: String,
    /// etcd client config of the local kvstore (the `local` certificate).
    pub etcd_config: PathBuf,
    /// The mesh apiserver's replicas, each of which gets this node's status.
    pub etcd_replicas: crate::status_publish::EtcdReplicas,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory holding this node's pods (socket LB); none
    /// disables socket-level load balancing.
    pub cgroup: Option<PathBuf>,
    /// Name of the VXLAN device.
    pub tunnel_interface: String,
    /// UDP port of the VXLAN device.
    pub tunnel_port: u16,
    /// How often interfaces, CNI attachments and drop counters are read.
    pub refresh: Duration,
    /// knit-cni's state directory: this node's pod attachments.
    pub cni_state_dir: PathBuf,
    /// The node's CNI config directory, where Knit is kept chained into the
    /// cluster's CNI config ([`knit_cni::conflist::keep_chained`]); none
    /// leaves the config alone.
    pub cni_conf_dir: Option<PathBuf>,
    /// Whether to keep direct routes to this cluster's other nodes' pod
    /// CIDRs ([`crate::node_routes`]).
    pub direct_node_routes: bool,
    /// How tc programs attach (TCX or netlink, see
    /// [`crate::datapath::tc`]).
    pub tc_attach: crate::datapath::tc::TcAttach,
    /// UDP port of data-path health probes ([`crate::health`]).
    pub health_port: u16,
    /// How often remote nodes are probed.
    pub health_interval: Duration,
    /// A policy peer that names no cluster selects only this cluster.
    pub policy_default_local_cluster: bool,
    /// Namespace of Knit's own control plane, whose pods are never
    /// isolated for lack of an identity (they bring the identities).
    pub control_plane_namespace: String,
    /// WireGuard between nodes ([`crate::encryption`]); none: plaintext.
    pub encryption: Option<crate::encryption::node::EncryptionSettings>,
    /// How pods of other nodes are reached ([`crate::routing`]).
    pub routing_mode: crate::routing::RoutingMode,
    /// Flow events and the local API ([`crate::observe`]).
    pub observe: crate::observe::ObserveSettings,
}

/// Runs the agent until the kvstore watch ends.
pub async fn run<S: Source>(
    settings: AgentSettings,
    mut source: S,
    metrics: Metrics,
    health: Health,
) -> Result<()> {
    let (net, mut datapath, attachments_store) = start_node(&settings).await?;
    let mut observation = crate::observe::start(&settings, &mut datapath, &metrics)?;

    crate::bootstrap::until_client_config(
        &settings.etcd_config,
        &mut source,
        settings
            .direct_node_routes
            .then_some((&net, settings.node.as_str())),
        &metrics,
        &health,
    )
    .await;
    let client_config = load_client_config(&settings.etcd_config).map_err(Error::Store)?;
    let cluster = match settings.cluster.clone() {
        Some(name) => name,
        None => {
            health.set_waiting_for("the local kvstore to name this cluster");
            crate::bootstrap::discover_cluster(&client_config).await
        }
    };
    health.set_waiting_for("the first complete kvstore list, policy read and CNI attachment read");
    let encryption = match &settings.encryption {
        Some(e) => {
            let mtu = crate::cni_install::underlay_mtu().unwrap_or(1500);
            Some(NodeEncryption::start(e, &net, settings.tunnel_port, mtu).await?)
        }
        None => None,
    };
    datapath.require_decrypted_tunnel(
        settings.encryption.as_ref().map(|e| e.interface.as_str()),
        settings.encryption.as_ref().is_some_and(|e| e.strict),
    )?;
    let (report_tx, report_rx) = tokio::sync::watch::channel(AgentStatusRecord {
        node: settings.node.clone(),
        peers: Default::default(),
        rejected_policies: Vec::new(),
        wireguard: encryption.as_ref().map(NodeEncryption::report),
        wireguard_tunnels: Default::default(),
    });
    let _report = AbortOnDrop(tokio::spawn(crate::status_publish::publish(
        client_config.clone(),
        settings.etcd_replicas.clone(),
        settings.node.clone(),
        report_rx,
    )));
    let (watch, mut rx) = watch_kvstore(client_config);

    let (targets_tx, targets_rx) = tokio::sync::watch::channel(BTreeSet::new());
    let (failing_tx, mut failing_rx) = tokio::sync::watch::channel(BTreeSet::new());
    let _health = AbortOnDrop(tokio::spawn(crate::health::run(
        settings.health_port,
        settings.health_interval,
        targets_rx,
        failing_tx,
    )));

    let mut tick = tokio::time::interval(settings.refresh);
    let (_added_watch, mut added_rx) = watch_attachments(&attachments_store);
    metrics
        .conntrack_capacity
        .set(knit_datapath_common::CT_CAPACITY as i64);
    let parts = AgentParts {
        settings,
        source,
        metrics,
        health,
        net,
        datapath,
        attachments_store,
        encryption,
    };
    let outputs = Outputs {
        health_targets: targets_tx,
        report: report_tx,
    };
    let mut agent = AgentLoop::new(parts, cluster, outputs);
    loop {
        let wireguard_deadline = agent.wireguard_deadline();
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let mut batch = vec![event];
                while batch.len() < 10_000 && let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                agent.on_kvstore(&batch);
                observation.publish_clusters(&agent.index);
            }
            Some(query) = observation.next_query() => agent.on_query(query),
            Ok(()) = failing_rx.changed() => {
                let failing = failing_rx.borrow().clone();
                agent.on_failing(&failing);
            }
            changed = agent.source.next_change() => agent.on_source(changed),
            Some(_) = added_rx.recv() => {
                while added_rx.try_recv().is_ok() {}
                tick.reset_immediately();
            }
            _ = tick.tick() => agent.on_tick().await,
            _ = sleep_until_unix_ms(wireguard_deadline) => agent.on_wireguard_deadline().await,
        }
        let failing = failing_rx.borrow().clone();
        agent.apply_if_due(failing).await;
    }
    watch.abort();
    Ok(())
}

/// Watches the whole mesh prefix of the local kvstore, reconnecting.
fn watch_kvstore(
    client_config: EtcdClientConfig,
) -> (tokio::task::JoinHandle<()>, mpsc::Receiver<WatchEvent>) {
    let (tx, rx) = mpsc::channel(4096);
    let watch = tokio::spawn(watch_prefix(
        move || {
            let c = client_config.clone();
            async move { connect(&c).await }
        },
        format!("{KEY_PREFIX}/"),
        tx,
    ));
    (watch, rx)
}

/// The node's datapath loaded and attached to its tunnel device, and
/// knit-cni told the datapath is ready (and which namespace's pods never
/// wait for an identity).
async fn start_node(settings: &AgentSettings) -> Result<(NetDevices, Datapath, AttachmentStore)> {
    let net = NetDevices::connect()?;
    let tunnel_ifindex = net
        .ensure_vxlan(&settings.tunnel_interface, settings.tunnel_port)
        .await?;
    let datapath = Datapath::start(
        &settings.pin_dir,
        settings.tc_attach,
        &settings.tunnel_interface,
        tunnel_ifindex,
        settings.cgroup.as_deref(),
    )?;
    let attachments_store = AttachmentStore::new(&settings.cni_state_dir);
    attachments_store
        .set_control_plane_namespace(&settings.control_plane_namespace)
        .map_err(Error::Cni)?;
    attachments_store.mark_datapath_ready().map_err(Error::Cni)?;
    tracing::info!(
        cni_state_dir = %settings.cni_state_dir.display(),
        pin_dir = %settings.pin_dir.display(),
        tunnel = %settings.tunnel_interface,
        tc_attach = %datapath.tc_mode(),
        socket_lb = settings.cgroup.is_some(),
        "datapath loaded"
    );

    Ok((net, datapath, attachments_store))
}

/// Cilium's policies in the subset Knit supports, as NetworkPolicies, and
/// the ones rejected as a whole (which isolate the pods they select). A clusterwide policy applies in every
/// namespace this cluster's endpoints use.
pub(crate) fn translate_cilium_policies(
    state: &knit_sources::ClusterState,
    index: &MeshIndex,
) -> (
    Vec<crate::cilium_policy::Translated>,
    Vec<crate::cilium_policy::Rejected>,
) {
    let namespaces: Vec<&str> = index.local_namespaces().collect();
    let mesh = index.mesh_prefixes();
    let (mut ok, mut rejected) = (Vec::new(), Vec::new());
    for policy in state.cilium_policies.values() {
        match crate::cilium_policy::translate(policy, &namespaces, &mesh) {
            Ok(policies) => ok.extend(policies),
            Err(r) => {
                ok.extend(crate::cilium_policy::isolation(policy, &namespaces));
                rejected.push(r);
            }
        }
    }
    (ok, rejected)
}

/// Brings the agent's direct node routes to what the index and the Node
/// objects say; `false` when something failed (retried on the next pass).
pub(crate) async fn sync_node_routes(
    net: &NetDevices,
    want: std::collections::BTreeMap<ipnet::Ipv4Net, std::net::Ipv4Addr>,
    metrics: &Metrics,
) -> bool {
    let have = match net.owned_routes().await {
        Ok(have) => have,
        Err(e) => {
            tracing::warn!(error = %knit_telemetry::error_chain(&e), "listing routes failed");
            return false;
        }
    };
    let plan = crate::node_routes::plan(&have, &want);
    let mut ok = true;
    for (dst, gw) in plan.replace {
        if let Err(e) = net.replace_route(dst, gw).await {
            tracing::warn!(%dst, %gw, error = %knit_telemetry::error_chain(&e), "route to a node's pod CIDR refused");
            metrics.node_route_failures.inc();
            ok = false;
        }
    }
    for (dst, gw) in plan.delete {
        if let Err(e) = net.delete_route(dst, gw).await {
            tracing::warn!(%dst, error = %knit_telemetry::error_chain(&e), "removing a stale node route failed");
            ok = false;
        }
    }
    metrics.node_routes.set(want.len() as i64);
    ok
}

/// The maps' entries and the kvstore values skipped, per map and reason.
pub(crate) fn report_sizes(datapath: &Datapath, index: &MeshIndex, metrics: &Metrics) {
    for (map, n) in datapath.map_sizes() {
        metrics
            .map_entries
            .get_or_create(&Name { name: map.into() })
            .set(n as i64);
    }
    for (reason, n) in &index.rejected {
        metrics
            .rejected
            .get_or_create(&Name {
                name: (*reason).into(),
            })
            .set(*n as i64);
    }
}

/// What a full render needs besides the index and the policies.
pub(crate) fn render_options(
    settings: &AgentSettings,
    failing: BTreeSet<std::net::IpAddr>,
    state: &knit_sources::ClusterState,
) -> RenderOptions {
    RenderOptions {
        failing,
        policy_default_local_cluster: settings.policy_default_local_cluster,
        control_plane_namespace: Some(settings.control_plane_namespace.clone()),
        clusterwide_policies: state.cilium_policies.values().any(|p| p.namespace.is_none()),
    }
}

/// knit-cni's ADD waits for this agent, so a new attachment is read at once
/// (inotify on the attachments directory), not at the next tick. Keep the
/// watcher for as long as the receiver is read.
fn watch_attachments(
    store: &AttachmentStore,
) -> (
    Option<impl Sized + use<>>,
    mpsc::UnboundedReceiver<std::path::PathBuf>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let dir = store.root().join("attachments");
    let _ = std::fs::create_dir_all(&dir);
    let watcher = knit_sources::directory::watch_changes(&dir, tx)
        .inspect_err(|e| tracing::warn!(error = %e, "no inotify on the CNI state directory; reading it every tick only"))
        .ok();
    (watcher, rx)
}

/// Every readable attachment knit-cni recorded (unreadable ones are logged
/// and counted), or `None` when the directory cannot be listed (the caller
/// keeps its last list).
pub(crate) fn read_attachments(store: &AttachmentStore, metrics: &Metrics) -> Option<Vec<Attachment>> {
    match store.list() {
        Ok((now, unreadable)) => {
            for e in &unreadable {
                tracing::warn!(error = %knit_telemetry::error_chain(e), "skipping an unreadable CNI attachment");
            }
            metrics.unreadable_attachments.set(unreadable.len() as i64);
            Some(now)
        }
        Err(e) => {
            tracing::warn!(error = %knit_telemetry::error_chain(&e), "listing CNI attachments failed; keeping the last list");
            None
        }
    }
}

/// Marks the attachments a full apply placed (their interface exists:
/// programs, endpoint and policy are in) attached for knit-cni, whose ADD
/// waits for it: a pod runs only once its policy does.
pub(crate) fn mark_attached(
    store: &AttachmentStore,
    attachments: &[Attachment],
    unplaced: &crate::datapath::state::Unplaced,
) {
    let placed = attachments
        .iter()
        .filter(|a| !unplaced.missing_interfaces.contains(&a.host_interface));
    if let Err(e) = store.sync_attached(placed) {
        tracing::warn!(error = %knit_telemetry::error_chain(&e), "marking CNI attachments attached failed");
    }
}

/// Counts and names the attached pods too large for the tunnel
/// ([`crate::pod_mtu`]); nothing when the node has no default route to
/// take the underlay's MTU from. Outside tunnel mode (`routed`) pods may
/// have the underlay's full MTU: their routes into the tunnel carry the
/// smaller one ([`crate::pod_routes`]).
pub(crate) async fn check_pod_mtus(
    net: &NetDevices,
    attachments: &[Attachment],
    metrics: &Metrics,
    encrypted: bool,
    routed: bool,
) {
    let overhead = if encrypted {
        crate::encryption::node::WIREGUARD_OVERHEAD
    } else {
        0
    };
    let limit = if routed {
        crate::cni_install::underlay_mtu()
    } else {
        crate::cni_install::node_pod_mtu()
    };
    let Some(limit) = limit.map(|m| m.saturating_sub(overhead)) else {
        return;
    };
    let mtus = match net.mtus().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %knit_telemetry::error_chain(&e), "reading interface MTUs failed");
            return;
        }
    };
    let over = crate::pod_mtu::over_tunnel_mtu(attachments, &mtus, limit);
    metrics.pods_over_tunnel_mtu.set(over.len() as i64);
    if !over.is_empty() {
        tracing::warn!(
            pods = ?over,
            limit,
            "pods have an MTU above the underlay's less the tunnel's 50 bytes (and WireGuard's 60 when encrypting): their full-size packets will fragment across nodes; set the cluster CNI's MTU to {limit} or less"
        );
    }
}

/// Sleeps until `at` (Unix ms; at least 10 ms, so a moment that stays due
/// cannot spin the loop), or forever without one.
async fn sleep_until_unix_ms(at: Option<i64>) {
    match at {
        Some(at) => {
            let wait = (at - crate::agent_loop::unix_ms()).max(10) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}
