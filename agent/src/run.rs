//! The agent loop: kvstore events, policy changes, interface changes and
//! knit-cni's attachments (re-read every refresh) mark the datapath dirty;
//! a dirty datapath is rendered and applied by difference. Endpoint and
//! service records are patched alone ([`crate::incremental`]): one such
//! change costs map writes and render time independent of the mesh's size;
//! anything else renders the whole node again (and re-checks the node's
//! direct routes).
//!
//! Fail static: nothing is written before the first complete kvstore list
//! (and the first complete read of the policy source and of the CNI
//! attachments), so a restarted agent
//! never replaces good pinned maps with an empty view; a lost kvstore
//! connection leaves the maps as they are until the watch reconnects and
//! its re-list has drained whatever was deleted meanwhile.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use knit_kvstore::KEY_PREFIX;
use knit_kvstore::etcd::{connect, load_client_config};
use knit_kvstore::records::AgentStatusRecord;
use knit_kvstore::watch_store::{WatchEvent, watch_prefix};
use knit_sources::Source;
use knit_telemetry::Health;
use tokio::sync::mpsc;

use knit_cni::attachment::{Attachment, AttachmentStore};

use crate::datapath::Datapath;
use crate::datapath::state::Link;
use crate::incremental::IncrementalRender;
use crate::index::{IndexChange, MeshIndex};
use crate::metrics::{Metrics, Name, RenderPath};
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
}

/// Runs the agent until the kvstore watch ends.
pub async fn run<S: Source>(
    settings: AgentSettings,
    mut source: S,
    metrics: Metrics,
    health: Health,
) -> Result<()> {
    let net = NetDevices::connect()?;
    let tunnel_ifindex = net
        .ensure_vxlan(&settings.tunnel_interface, settings.tunnel_port)
        .await?;
    let mut datapath = Datapath::start(
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
    let (report_tx, report_rx) = tokio::sync::watch::channel(AgentStatusRecord {
        node: settings.node.clone(),
        peers: Default::default(),
        rejected_policies: Vec::new(),
    });
    let _report = AbortOnDrop(tokio::spawn(crate::peer_report::publish(
        client_config.clone(),
        settings.node.clone(),
        report_rx,
    )));
    let (tx, mut rx) = mpsc::channel(4096);
    let watch = tokio::spawn(watch_prefix(
        move || {
            let c = client_config.clone();
            async move { connect(&c).await }
        },
        format!("{KEY_PREFIX}/"),
        tx,
    ));

    let (targets_tx, targets_rx) = tokio::sync::watch::channel(BTreeSet::new());
    let (failing_tx, mut failing_rx) = tokio::sync::watch::channel(BTreeSet::new());
    let _health = AbortOnDrop(tokio::spawn(crate::health::run(
        settings.health_port,
        settings.health_interval,
        targets_rx,
        failing_tx,
    )));

    let mut index = MeshIndex::new(cluster);
    let mut renderer = IncrementalRender::new();
    let mut node_routes_due = true;
    let mut listed = false;
    let mut dirty_since: Option<Instant> = None;
    // Whether what the health targets and the peer report derive from
    // (nodes, canaries, peer configs, the set of peers, failing nodes) may
    // have changed: endpoint and service changes leave it as it is, and
    // recomputing it walks every node of every peer (50,900 at 511
    // clusters: three quarters of the agent's CPU under endpoint churn).
    let mut nodes_changed = true;
    let mut interfaces: HashMap<String, Link> = HashMap::new();
    let mut attachments: Vec<Attachment> = Vec::new();
    let mut attachments_read = false;
    let mut mtu_check_due = true;
    let mut tick = tokio::time::interval(settings.refresh);
    let (_added_watch, mut added_rx) = watch_attachments(&attachments_store);
    let mut conntrack_counted: Option<Instant> = None;
    metrics
        .conntrack_capacity
        .set(knit_datapath_common::CT_CAPACITY as i64);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let mut batch = vec![event];
                while batch.len() < 10_000 && let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                let peers_before = index.peers.len();
                for event in &batch {
                    match event {
                        WatchEvent::ListDone => {
                            listed = true;
                            metrics.kvstore_connected.set(1);
                        }
                        WatchEvent::Disconnected { error } => {
                            metrics.kvstore_connected.set(0);
                            tracing::warn!(%error, "kvstore connection lost; datapath kept as is");
                        }
                        _ => {}
                    }
                    if let Some(change) = index.apply_change(event) {
                        nodes_changed |= change == IndexChange::Other;
                        renderer.note(&change);
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                }
                // A peer's first or last record may be a service or an
                // endpoint: the report lists peers.
                nodes_changed |= index.peers.len() != peers_before;
            }
            Ok(()) = failing_rx.changed() => {
                let failing = failing_rx.borrow().clone();
                metrics.failing_nodes.set(failing.len() as i64);
                tracing::info!(?failing, "remote nodes failing their health probes changed");
                nodes_changed = true;
                renderer.invalidate();
                dirty_since.get_or_insert_with(Instant::now);
            }
            changed = source.next_change() => {
                if changed {
                    renderer.invalidate();
                    dirty_since.get_or_insert_with(Instant::now);
                }
            }
            Some(_) = added_rx.recv() => {
                while added_rx.try_recv().is_ok() {}
                tick.reset_immediately();
            }
            _ = tick.tick() => {
                match net.interfaces().await {
                    Ok(now) if now != interfaces => {
                        interfaces = now;
                        mtu_check_due = true;
                        renderer.invalidate();
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %knit_telemetry::error_chain(&e), "listing interfaces failed"),
                }
                if let Some(now) = read_attachments(&attachments_store, &metrics) {
                    attachments_read = true;
                    if now != attachments {
                        attachments = now;
                        mtu_check_due = true;
                        renderer.invalidate();
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                }
                if let Some(dir) = &settings.cni_conf_dir {
                    match knit_cni::conflist::keep_chained(dir, &settings.cni_state_dir) {
                        Ok(Some(file)) => {
                            metrics.cni_config_rechained.inc();
                            tracing::warn!(file = %file.display(), "the node's CNI config lost Knit (rewritten by its CNI); chained Knit again");
                        }
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %knit_telemetry::error_chain(&e), "checking the node's CNI config failed"),
                    }
                }
                if mtu_check_due {
                    mtu_check_due = false;
                    check_pod_mtus(&net, &attachments, &metrics).await;
                }
                for (reason, n) in datapath.drops() {
                    metrics.drops.get_or_create(&Name { name: reason.into() }).set(n as i64);
                }
                if conntrack_counted.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    conntrack_counted = Some(Instant::now());
                    metrics.conntrack_entries.set(datapath.conntrack_entries() as i64);
                }
            }
        }
        if !(listed && attachments_read && source.is_ready()) {
            continue;
        }
        let Some(since) = dirty_since.take() else { continue };
        let options = render_options(&settings, failing_rx.borrow().clone(), source.state());
        if nodes_changed {
            nodes_changed = false;
            let targets = crate::health::targets(&index, &settings.node);
            targets_tx.send_if_modified(|t| {
                let changed = *t != targets;
                *t = targets;
                changed
            });
            let peers = crate::peer_report::views(&index, &options.failing, settings.tunnel_port);
            report_tx.send_if_modified(|r| {
                let changed = r.peers != peers;
                r.peers = peers;
                changed
            });
        }
        let span = tracing::info_span!(
            "agent_apply",
            node = %settings.node,
            full = tracing::field::Empty,
            written = tracing::field::Empty,
            deleted = tracing::field::Empty,
            failed = tracing::field::Empty
        );
        let applied = span.in_scope(|| match renderer.try_patch(&index, &settings.node, &options) {
            Some(patch) => Ok((datapath.apply_patch(&patch), None)),
            None => {
                let (cilium, rejected) = translate_cilium_policies(source.state(), &index);
                metrics.rejected_cilium_policies.set(rejected.len() as i64);
                for r in &rejected {
                    tracing::warn!(policy = %r.policy, reason = %r.reason, "a CiliumNetworkPolicy is not applied");
                }
                let rejected: Vec<String> = rejected.iter().map(ToString::to_string).collect();
                report_tx.send_if_modified(|r| {
                    let changed = r.rejected_policies != rejected;
                    r.rejected_policies = rejected;
                    changed
                });
                let policies: Vec<crate::policy::PolicyRules<'_>> = source
                    .state()
                    .network_policies
                    .values()
                    .map(crate::policy::PolicyRules::network_policy)
                    .chain(cilium.iter().map(crate::cilium_policy::Translated::rules))
                    .collect();
                let desired = renderer.render_full(&index, &policies, &settings.node, &attachments, &options);
                metrics
                    .unsupported_policy_ports
                    .set(desired.unsupported_policy_ports.len() as i64);
                for why in &desired.unsupported_policy_ports {
                    tracing::warn!(%why, "a NetworkPolicy port allows nothing");
                }
                metrics.policy_overflow.set(desired.policy_overflow.len() as i64);
                metrics.awaiting_identity.set(desired.awaiting_identity.len() as i64);
                for ip in &desired.policy_overflow {
                    let pod = index
                        .local
                        .endpoints
                        .values()
                        .find(|e| e.ip == std::net::IpAddr::V4(*ip))
                        .map(|e| format!("{}/{}", e.namespace, e.pod))
                        .unwrap_or_default();
                    tracing::error!(%ip, %pod, "the policy maps are full: this pod's policy entries are not written and it stays isolated; reduce the policies' peers or ports");
                }
                node_routes_due = true;
                datapath
                    .apply(desired, &interfaces)
                    .map(|(report, unplaced)| (report, Some(unplaced)))
            }
        });
        match applied {
            Ok((report, unplaced)) => {
                let path = if unplaced.is_some() { "full" } else { "patch" };
                metrics.applies.get_or_create(&RenderPath { path }).inc();
                span.record("full", unplaced.is_some())
                    .record("written", report.written)
                    .record("deleted", report.deleted)
                    .record("failed", report.failed);
                if report.written + report.deleted > 0 {
                    tracing::debug!(?report, "datapath updated");
                }
                if report.failed > 0 {
                    metrics.write_failures.inc_by(report.failed as u64);
                    renderer.invalidate();
                    dirty_since = Some(since);
                }
                if let Some(unplaced) = unplaced {
                    metrics
                        .pending_endpoints
                        .set(unplaced.missing_interfaces.len() as i64);
                    if report.failed == 0 {
                        mark_attached(&attachments_store, &attachments, &unplaced);
                    }
                }
                metrics.sync_lag_ms.set(since.elapsed().as_millis() as i64);
                health.set_ready(true);
            }
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "datapath update failed; retrying");
                renderer.invalidate();
                dirty_since = Some(since);
            }
        }
        if settings.direct_node_routes && node_routes_due {
            node_routes_due =
                !sync_node_routes(&net, &index, &source.state().nodes, &settings.node, &metrics).await;
            if node_routes_due {
                dirty_since.get_or_insert(since);
            }
        }
        report_sizes(&datapath, &index, &metrics);
    }
    watch.abort();
    Ok(())
}

/// Cilium's policies in the subset Knit supports, as NetworkPolicies, and
/// the ones rejected as a whole (which isolate the pods they select). A clusterwide policy applies in every
/// namespace this cluster's endpoints use.
fn translate_cilium_policies(
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
    index: &MeshIndex,
    api_nodes: &std::collections::BTreeMap<String, knit_sources::NodeInfo>,
    node: &str,
    metrics: &Metrics,
) -> bool {
    let want = crate::node_routes::desired(index, api_nodes, node);
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
fn report_sizes(datapath: &Datapath, index: &MeshIndex, metrics: &Metrics) {
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
fn render_options(
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
) -> (Option<impl Sized>, mpsc::UnboundedReceiver<std::path::PathBuf>) {
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
fn read_attachments(store: &AttachmentStore, metrics: &Metrics) -> Option<Vec<Attachment>> {
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
fn mark_attached(
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
/// take the underlay's MTU from.
async fn check_pod_mtus(net: &NetDevices, attachments: &[Attachment], metrics: &Metrics) {
    let Some(limit) = crate::cni_install::node_pod_mtu() else {
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
            "pods have an MTU above the underlay's less the tunnel's 50 bytes: their full-size packets will fragment across nodes; set the cluster CNI's MTU to {limit} or less"
        );
    }
}
