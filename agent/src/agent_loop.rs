//! The agent's loop as a value: one method per event source, and one step
//! that decides whether to write the datapath and how.
//!
//! [`crate::run::run`] sets the node up and owns the channels; each event it
//! receives goes to one method here, which updates the loop's view (the
//! kvstore index, interfaces, knit-cni's attachments, failing nodes) and
//! marks the [`Gate`] dirty. After every event, [`AgentLoop::apply_if_due`]
//! asks the gate whether a write may happen (fail static: not before the
//! first complete kvstore list, attachment read and policy read) and then
//! patches endpoint and service changes alone or renders the whole node
//! ([`crate::incremental`]). The gate is pure and unit-tested; the rest
//! talks to the kernel through [`Datapath`] and [`NetDevices`].

mod routes;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use knit_cni::attachment::{Attachment, AttachmentStore};
use knit_kvstore::records::AgentStatusRecord;
use knit_kvstore::watch_store::WatchEvent;
use knit_sources::Source;
use knit_telemetry::Health;

use crate::datapath::Datapath;
use crate::datapath::state::{Link, Unplaced};
use crate::encryption::node::NodeEncryption;
use crate::encryption::status::PlaintextCount;
use crate::incremental::IncrementalRender;
use crate::index::{IndexChange, MeshIndex};
use crate::metrics::{Metrics, Name, RenderPath};
use crate::netdev::NetDevices;
use crate::render::RenderOptions;
use crate::run::{
    AgentSettings, check_pod_mtus, mark_attached, read_attachments, render_options, report_sizes,
    translate_cilium_policies,
};

/// When the datapath may be written: fail static until every input has
/// been read completely once, then whenever something changed since the
/// last successful write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    /// The first complete kvstore list arrived.
    pub listed: bool,
    /// knit-cni's attachments were read once.
    pub attachments_read: bool,
    /// Since when the datapath lags behind what the loop knows.
    dirty_since: Option<Instant>,
}

impl Gate {
    /// Something the datapath shows changed at `now` (the first such
    /// moment since the last write is kept: it measures the sync lag).
    pub fn dirty(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// The change to write now, as the moment it began, taken: none before
    /// the kvstore list, the attachments and the policy source
    /// (`source_ready`) are complete, nor when nothing changed.
    pub fn due(&mut self, source_ready: bool) -> Option<Instant> {
        if !(self.listed && self.attachments_read && source_ready) {
            return None;
        }
        self.dirty_since.take()
    }

    /// A write of the change that began at `since` failed: it is due again,
    /// from that moment.
    pub fn retry(&mut self, since: Instant) {
        self.dirty_since = Some(since);
    }

    /// Something besides the maps (the node routes) is still to do for the
    /// change that began at `since`.
    pub fn still_due(&mut self, since: Instant) {
        self.dirty_since.get_or_insert(since);
    }
}

/// How often the kernel's routes are read again outside tunnel mode: a
/// route the underlay adds (BGP, an operator) makes a node reachable
/// natively within this.
const ROUTES_RECHECK: Duration = Duration::from_secs(5);

/// Where the loop sends what other tasks derive from its view.
pub struct Outputs {
    /// Remote nodes the health prober probes.
    pub health_targets: tokio::sync::watch::Sender<BTreeSet<IpAddr>>,
    /// This agent's report of every peer, published under its lease.
    pub report: tokio::sync::watch::Sender<AgentStatusRecord>,
}

/// The agent's state between events.
pub struct AgentLoop<S> {
    pub(crate) settings: AgentSettings,
    pub(crate) source: S,
    pub(crate) metrics: Metrics,
    pub(crate) health: Health,
    pub(crate) net: NetDevices,
    pub(crate) datapath: Datapath,
    pub(crate) attachments_store: AttachmentStore,
    pub(crate) outputs: Outputs,
    pub(crate) index: MeshIndex,
    renderer: IncrementalRender,
    gate: Gate,
    /// Whether what the health targets and the peer report derive from
    /// (nodes, canaries, peer configs, the set of peers, failing nodes) may
    /// have changed: endpoint and service changes leave it as it is, and
    /// recomputing it walks every node of every peer (50,900 at 511
    /// clusters: three quarters of the agent's CPU under endpoint churn).
    nodes_changed: bool,
    node_routes_due: bool,
    /// When the routes were last checked (outside tunnel mode the kernel's
    /// routes decide the native paths, and they change on their own).
    routes_checked: Option<Instant>,
    /// Nodes last reported unroutable (`cluster/node`).
    unroutable_nodes: Vec<String>,
    /// The interface `from_netdev` sits on.
    underlay_program: Option<String>,
    /// Whether a leftover `from_netdev` was removed (tunnel mode).
    underlay_program_checked: bool,
    /// Each pod's routes with the tunnel's MTU, by network namespace: the
    /// pod CIDRs and the MTU.
    pod_routes: std::collections::BTreeMap<String, (BTreeSet<ipnet::Ipv4Net>, u32)>,
    encryption: Option<NodeEncryption>,
    /// WireGuard's peers and routes may lag the node records.
    wireguard_due: bool,
    /// The tunnel device's carrier errors last read.
    tunnel_carrier_errors: u64,
    /// Tunnelled packets sent outside WireGuard.
    plaintext: PlaintextCount,
    mtu_check_due: bool,
    interfaces: HashMap<String, Link>,
    attachments: Vec<Attachment>,
    conntrack_counted: Option<Instant>,
}

impl<S: Source> AgentLoop<S> {
    /// Answers a question of the local API with the loop's view.
    pub fn on_query(&self, query: crate::observe::Query) {
        query(&crate::observe::LoopView {
            node: &self.settings.node,
            index: &self.index,
            state: self.source.state(),
            rendered: self.datapath.rendered(),
            policy_default_local_cluster: self.settings.policy_default_local_cluster,
        });
    }

    /// A loop that has read nothing yet, over a loaded datapath.
    pub fn new(parts: AgentParts<S>, cluster: String, outputs: Outputs) -> Self {
        Self {
            settings: parts.settings,
            source: parts.source,
            metrics: parts.metrics,
            health: parts.health,
            net: parts.net,
            datapath: parts.datapath,
            attachments_store: parts.attachments_store,
            outputs,
            index: MeshIndex::new(cluster),
            renderer: IncrementalRender::new(),
            gate: Gate::default(),
            nodes_changed: true,
            node_routes_due: true,
            routes_checked: None,
            unroutable_nodes: Vec::new(),
            underlay_program: None,
            underlay_program_checked: false,
            pod_routes: Default::default(),
            encryption: parts.encryption,
            wireguard_due: true,
            tunnel_carrier_errors: 0,
            plaintext: PlaintextCount::default(),
            mtu_check_due: true,
            interfaces: HashMap::new(),
            attachments: Vec::new(),
            conntrack_counted: None,
        }
    }

    /// A batch of kvstore events, applied to the index.
    pub fn on_kvstore(&mut self, batch: &[WatchEvent]) {
        let peers_before = self.index.peers.len();
        for event in batch {
            match event {
                WatchEvent::ListDone => {
                    self.gate.listed = true;
                    self.metrics.kvstore_connected.set(1);
                }
                WatchEvent::Disconnected { error } => {
                    self.metrics.kvstore_connected.set(0);
                    tracing::warn!(%error, "kvstore connection lost; datapath kept as is");
                }
                _ => {}
            }
            if let Some(change) = self.index.apply_change(event) {
                self.nodes_changed |= change == IndexChange::Other;
                self.renderer.note(&change);
                self.gate.dirty(Instant::now());
            }
        }
        // A peer's first or last record may be a service or an endpoint:
        // the report lists peers.
        self.nodes_changed |= self.index.peers.len() != peers_before;
    }

    /// The health prober's set of failing remote nodes changed.
    pub fn on_failing(&mut self, failing: &BTreeSet<IpAddr>) {
        self.metrics.failing_nodes.set(failing.len() as i64);
        tracing::info!(?failing, "remote nodes failing their health probes changed");
        self.nodes_changed = true;
        self.everything_changed();
    }

    /// The policy source reported a change (or none).
    pub fn on_source(&mut self, changed: bool) {
        if changed {
            self.everything_changed();
        }
    }

    /// The refresh tick: interfaces, attachments, the node's CNI config,
    /// pod MTUs, drop and conntrack counters.
    pub async fn on_tick(&mut self) {
        if self.encryption.is_some() {
            self.rotate_wireguard_keys().await;
            self.count_unencryptable();
            self.report_tunnels();
        }
        match self.net.interfaces().await {
            Ok(now) if now != self.interfaces => {
                self.interfaces = now;
                self.mtu_check_due = true;
                self.everything_changed();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %knit_telemetry::error_chain(&e), "listing interfaces failed"),
        }
        if let Some(now) = read_attachments(&self.attachments_store, &self.metrics) {
            self.gate.attachments_read = true;
            if now != self.attachments {
                self.attachments = now;
                self.mtu_check_due = true;
                self.everything_changed();
            }
        }
        if let Some(dir) = &self.settings.cni_conf_dir {
            match knit_cni::conflist::keep_chained(dir, &self.settings.cni_state_dir) {
                Ok(Some(file)) => {
                    self.metrics.cni_config_rechained.inc();
                    tracing::warn!(file = %file.display(), "the node's CNI config lost Knit (rewritten by its CNI); chained Knit again");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %knit_telemetry::error_chain(&e), "checking the node's CNI config failed")
                }
            }
        }
        if self.mtu_check_due {
            self.mtu_check_due = false;
            check_pod_mtus(
                &self.net,
                &self.attachments,
                &self.metrics,
                self.encryption.is_some(),
                self.settings.routing_mode != crate::routing::RoutingMode::Tunnel,
            )
            .await;
        }
        for (reason, n) in self.datapath.drops() {
            self.metrics
                .drops
                .get_or_create(&Name { name: reason.into() })
                .set(n as i64);
        }
        if self.settings.routing_mode != crate::routing::RoutingMode::Tunnel
            && self
                .routes_checked
                .is_some_and(|at| at.elapsed() >= ROUTES_RECHECK)
        {
            self.node_routes_due = true;
            self.gate.dirty(Instant::now());
        }
        if self
            .conntrack_counted
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(10))
        {
            self.conntrack_counted = Some(Instant::now());
            self.metrics
                .conntrack_entries
                .set(self.datapath.conntrack_entries() as i64);
        }
    }

    /// A change no patch can carry: the next write renders the whole node.
    fn everything_changed(&mut self) {
        self.renderer.invalidate();
        self.gate.dirty(Instant::now());
    }

    /// Writes the datapath if the gate says a change is due: a patch when
    /// only endpoints and services changed, else a full render; then the
    /// node routes, the outputs and the size metrics.
    pub async fn apply_if_due(&mut self, failing: BTreeSet<IpAddr>) {
        let Some(since) = self.gate.due(self.source.is_ready()) else {
            return;
        };
        let options = render_options(&self.settings, failing, self.source.state());
        if self.nodes_changed {
            self.nodes_changed = false;
            self.wireguard_due = true;
            self.publish_node_views(&options);
        }
        let span = tracing::info_span!(
            "agent_apply",
            node = %self.settings.node,
            full = tracing::field::Empty,
            written = tracing::field::Empty,
            deleted = tracing::field::Empty,
            failed = tracing::field::Empty
        );
        let applied = span.in_scope(|| {
            match self
                .renderer
                .try_patch(&self.index, &self.settings.node, &options)
            {
                Some(patch) => Ok((self.datapath.apply_patch(&patch), None)),
                None => self.apply_full(&options),
            }
        });
        match applied {
            Ok((report, unplaced)) => {
                let path = if unplaced.is_some() { "full" } else { "patch" };
                self.metrics.applies.get_or_create(&RenderPath { path }).inc();
                span.record("full", unplaced.is_some())
                    .record("written", report.written)
                    .record("deleted", report.deleted)
                    .record("failed", report.failed);
                if report.written + report.deleted > 0 {
                    tracing::debug!(?report, "datapath updated");
                }
                if report.failed > 0 {
                    self.metrics.write_failures.inc_by(report.failed as u64);
                    self.renderer.invalidate();
                    self.gate.retry(since);
                }
                if let Some(unplaced) = unplaced {
                    self.metrics
                        .pending_endpoints
                        .set(unplaced.missing_interfaces.len() as i64);
                    if report.failed == 0 {
                        mark_attached(&self.attachments_store, &self.attachments, &unplaced);
                    }
                }
                self.metrics.sync_lag_ms.set(since.elapsed().as_millis() as i64);
                self.health.set_ready(true);
            }
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "datapath update failed; retrying");
                self.renderer.invalidate();
                self.gate.retry(since);
            }
        }
        if self.node_routes_due {
            self.routes_checked = Some(Instant::now());
            self.node_routes_due = !self.sync_routing().await;
            if self.node_routes_due {
                self.gate.still_due(since);
            }
        }
        if self.wireguard_due && !self.sync_wireguard().await {
            self.gate.still_due(since);
        }
        report_sizes(&self.datapath, &self.index, &self.metrics);
    }

    /// The next moment (Unix ms) a key rotation needs the loop, if any.
    pub fn wireguard_deadline(&self) -> Option<i64> {
        self.encryption.as_ref().and_then(NodeEncryption::deadline)
    }

    /// A rotation's moment: keys switched where due, and peers without a
    /// handshake since their switch set again.
    pub async fn on_wireguard_deadline(&mut self) {
        self.rotate_wireguard_keys().await;
        if let Some(encryption) = &mut self.encryption
            && let Err(e) = encryption.recheck_switched(unix_ms())
        {
            tracing::warn!(error = %knit_telemetry::error_chain(&e), "rechecking WireGuard peers after a key switch failed");
        }
    }

    /// Puts WireGuard's peers and routes in step with the index; false when
    /// that failed (retried).
    async fn sync_wireguard(&mut self) -> bool {
        let Some(encryption) = &mut self.encryption else {
            return true;
        };
        match encryption
            .sync(&self.index, &self.settings.node, &self.net, unix_ms())
            .await
        {
            Ok(plan) => {
                let keyed = plan.routes.iter().map(|r| r.addr()).collect();
                if let Err(e) = self.datapath.set_wireguard_nodes(&keyed) {
                    tracing::warn!(error = %knit_telemetry::error_chain(&e), "the nodes with a WireGuard key are not in the datapath; retrying");
                    return false;
                }
                self.wireguard_due = false;
                self.metrics.wireguard_peers.set(plan.peers.len() as i64);
                for node in &plan.conflicts {
                    tracing::warn!(%node, "a node's WireGuard key or address is another node's: not a peer");
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "WireGuard peers not in step; retrying");
                false
            }
        }
    }

    /// Key rotation at the tick: this node's own (announce, then take the
    /// next key at its moment) and the peers' (a peer's announced switch
    /// has come: its key in WireGuard is replaced now).
    async fn rotate_wireguard_keys(&mut self) {
        let now = unix_ms();
        let Some(encryption) = &mut self.encryption else {
            return;
        };
        match encryption.rotate_if_due(now) {
            Ok(true) => {
                let report = encryption.report();
                self.outputs.report.send_modify(|r| r.wireguard = Some(report));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "WireGuard key rotation failed; retrying")
            }
        }
        // Only a switch a past sync planned: the first sync waits for the
        // gate (every input read once), as every datapath write does.
        if encryption.peer_switch_due(now) {
            self.wireguard_due = true;
            self.sync_wireguard().await;
        }
    }

    /// Tunnelled packets the kernel could not route: with WireGuard, the
    /// strict mode's drops (a node without a key). The tunnel device counts
    /// them as carrier errors; the metric follows its counter.
    fn count_unencryptable(&mut self) {
        let path = format!(
            "/sys/class/net/{}/statistics/tx_carrier_errors",
            self.settings.tunnel_interface
        );
        let Some(now) = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        else {
            return;
        };
        self.metrics
            .unencrypted_drops
            .inc_by(now.saturating_sub(self.tunnel_carrier_errors));
        self.tunnel_carrier_errors = now;
    }

    /// Per peer node, the WireGuard tunnel up or down and its last
    /// handshake, into the report and the metrics; and the tunnelled packets
    /// that left outside WireGuard.
    fn report_tunnels(&mut self) {
        let Some(encryption) = &self.encryption else {
            return;
        };
        let statistic = |device: &str, name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/sys/class/net/{device}/statistics/{name}"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        };
        let wireguard = encryption.interface();
        if let (Some(sent), Some(took), Some(dropped)) = (
            statistic(&self.settings.tunnel_interface, "tx_packets"),
            statistic(wireguard, "tx_packets"),
            statistic(wireguard, "tx_dropped"),
        ) {
            self.metrics
                .plaintext_packets
                .inc_by(self.plaintext.observe(sent, took + dropped));
        }
        let now = unix_ms() / 1000;
        let previous = self.outputs.report.borrow().wireguard_tunnels.clone();
        match encryption.tunnels(now, &previous) {
            Ok(tunnels) => {
                self.metrics
                    .wireguard_peers_without_handshake
                    .set(tunnels.values().filter(|t| !t.up).count() as i64);
                self.outputs.report.send_if_modified(|r| {
                    let changed = r.wireguard_tunnels != tunnels;
                    r.wireguard_tunnels = tunnels;
                    changed
                });
            }
            Err(e) => {
                tracing::warn!(error = %knit_telemetry::error_chain(&e), "reading WireGuard's state failed")
            }
        }
    }

    /// The health targets and the peer report, sent where they changed.
    fn publish_node_views(&self, options: &RenderOptions) {
        let targets = crate::health::targets(&self.index, &self.settings.node);
        self.outputs.health_targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
        let peers = crate::peer_report::views(
            &self.index,
            &options.failing,
            self.settings.tunnel_port,
            self.encryption.is_some(),
        );
        self.outputs.report.send_if_modified(|r| {
            let changed = r.peers != peers;
            r.peers = peers;
            changed
        });
    }

    /// Renders the whole node (NetworkPolicies, Cilium's policies as far as
    /// they translate, every endpoint and service) and applies it.
    fn apply_full(
        &mut self,
        options: &RenderOptions,
    ) -> crate::Result<(crate::datapath::writer::ApplyReport, Option<Unplaced>)> {
        let (cilium, rejected) = translate_cilium_policies(self.source.state(), &self.index);
        self.metrics.rejected_cilium_policies.set(rejected.len() as i64);
        for r in &rejected {
            tracing::warn!(policy = %r.policy, reason = %r.reason, "a CiliumNetworkPolicy is not applied");
        }
        let rejected: Vec<String> = rejected.iter().map(ToString::to_string).collect();
        self.outputs.report.send_if_modified(|r| {
            let changed = r.rejected_policies != rejected;
            r.rejected_policies = rejected;
            changed
        });
        let policies: Vec<crate::policy::PolicyRules<'_>> = self
            .source
            .state()
            .network_policies
            .values()
            .map(crate::policy::PolicyRules::network_policy)
            .chain(cilium.iter().map(crate::cilium_policy::Translated::rules))
            .collect();
        let desired = self.renderer.render_full(
            &self.index,
            &policies,
            &self.settings.node,
            &self.attachments,
            options,
        );
        self.metrics
            .unsupported_policy_ports
            .set(desired.unsupported_policy_ports.len() as i64);
        for why in &desired.unsupported_policy_ports {
            tracing::warn!(%why, "a NetworkPolicy port allows nothing");
        }
        self.metrics
            .policy_overflow
            .set(desired.policy_overflow.len() as i64);
        self.metrics
            .awaiting_identity
            .set(desired.awaiting_identity.len() as i64);
        for ip in &desired.policy_overflow {
            let pod = self
                .index
                .local
                .endpoints
                .values()
                .find(|e| e.ip == IpAddr::V4(*ip))
                .map(|e| format!("{}/{}", e.namespace, e.pod))
                .unwrap_or_default();
            tracing::error!(%ip, %pod, "the policy maps are full: this pod's policy entries are not written and it stays isolated; reduce the policies' peers or ports");
        }
        self.node_routes_due = true;
        self.datapath
            .apply(desired, &self.interfaces)
            .map(|(report, unplaced)| (report, Some(unplaced)))
    }
}

/// What the loop is built from: the node as `run` set it up.
pub struct AgentParts<S> {
    /// The agent's settings.
    pub settings: AgentSettings,
    /// The policy source (NetworkPolicies, Cilium's policies, nodes).
    pub source: S,
    /// The agent's metrics.
    pub metrics: Metrics,
    /// The readiness the agent reports.
    pub health: Health,
    /// Netlink.
    pub net: NetDevices,
    /// The loaded datapath.
    pub datapath: Datapath,
    /// knit-cni's state directory.
    pub attachments_store: AttachmentStore,
    /// WireGuard, when the node encrypts.
    pub encryption: Option<NodeEncryption>,
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_written_before_every_input_was_read_once() {
        let now = Instant::now();
        for (listed, attachments_read, source_ready) in [
            (false, true, true),
            (true, false, true),
            (true, true, false),
            (false, false, false),
        ] {
            let mut gate = Gate {
                listed,
                attachments_read,
                ..Gate::default()
            };
            gate.dirty(now);
            assert_eq!(
                gate.due(source_ready),
                None,
                "{listed} {attachments_read} {source_ready}"
            );
            // The change is kept for when they are.
            gate.listed = true;
            gate.attachments_read = true;
            assert_eq!(gate.due(true), Some(now));
        }
    }

    #[test]
    fn a_change_is_due_once_from_its_first_moment_and_again_after_a_failure() {
        let first = Instant::now();
        let later = first + Duration::from_millis(5);
        let mut gate = Gate {
            listed: true,
            attachments_read: true,
            ..Gate::default()
        };
        assert_eq!(gate.due(true), None, "nothing changed");
        gate.dirty(first);
        gate.dirty(later);
        assert_eq!(
            gate.due(true),
            Some(first),
            "the lag counts from the first change"
        );
        assert_eq!(gate.due(true), None, "taken");
        gate.retry(first);
        gate.dirty(later);
        assert_eq!(gate.due(true), Some(first), "a failed write keeps its moment");
        gate.dirty(later);
        gate.still_due(first);
        assert_eq!(gate.due(true), Some(later), "a change already due is kept");
    }
}
